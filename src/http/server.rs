//! The accept loop for both listeners: hyper's HTTP/1 and HTTP/2 with upgrades (WebSocket),
//! the peer address as `ConnectInfo`, and a graceful stop (stop accepting, let every open
//! connection finish its requests). hyper answers a request with too many headers (431) or
//! too long a URI (414) itself, with an empty body; its limits (100 headers, its default;
//! 64 KiB of URI) are above the server's own (64 headers, 16 KiB), so the request pipeline
//! answers those first, with the JSON error body and a correlation id like every other
//! error.

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
    // hyper's own header limit stays at its default (100): with a limit set, hyper
    // allocates and fills two scratch arrays of that size for every request (about 1.5k
    // instructions, a twentieth of a liveness answer); with the default they are on the
    // stack, uninitialised. The pipeline refuses more than `pipeline::MAX_HEADERS` (64)
    // with the JSON 431 first; only past 100 does hyper answer its bare 431.
    let mut builder = Builder::new(TokioExecutor::new());
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
