//! The accept loop for both listeners: hyper's HTTP/1 and HTTP/2 with upgrades (WebSocket),
//! the peer address as `ConnectInfo`, and a graceful stop (stop accepting, let every open
//! connection finish its requests). It replaces `axum::serve` for one reason: hyper answers
//! a request with too many headers (431) or too long a URI (414) itself, with an empty body;
//! here hyper's limits are set above the server's own, so the request pipeline answers
//! those with the JSON error body and a correlation id like every other error.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::{Service, ServiceExt};

/// Headers hyper parses before refusing a request (431 without a body). The pipeline refuses
/// more than [`super::pipeline::MAX_HEADERS`] with a JSON 431 first. Kept close to that limit:
/// hyper sizes two per-request scratch arrays by it, and at 1,024 their allocation and
/// initialisation was about a tenth of the instructions of a whole request (callgrind).
const HYPER_MAX_HEADERS: usize = 128;

/// Serve `app` on `listener` until `shutdown`, then wait for open connections to finish.
pub async fn serve<S>(
    listener: TcpListener,
    app: S,
    shutdown: CancellationToken,
) -> std::io::Result<()>
where
    S: Service<axum::http::Request<Body>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().max_headers(HYPER_MAX_HEADERS);
    // CONNECT protocol for WebSockets over HTTP/2, as axum enables it.
    builder.http2().enable_connect_protocol();
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = app
            .clone()
            .map_request(move |mut req: axum::http::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                req.map(Body::new)
            })
            .map_err(|e: Infallible| match e {});
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(service))
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(err) = conn.await {
                tracing::trace!(error = %err, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
