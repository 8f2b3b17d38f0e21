//! The WebSocket server (docs/websocket.md): served on the WS port at `/ws` and `/`, and at `/ws` on
//! the API port. Clients subscribe to debates and get the durable events they missed from
//! the store, then live events, in seq order, with no gap and no duplicate at the seam.
//!
//! Rules: every connection has a bounded send queue, and a client that cannot keep up is
//! closed with 4008 naming its last delivered seq — nothing is dropped silently and one slow
//! client never delays another. Every connection task is tracked so shutdown can send 1001.
//!
//! The server runs on its own [`WsContext`] (hub, store, authenticator, tasks), not on the
//! HTTP application state; [`hub`] keeps the connection limits and counters.

mod connection;
pub mod fanout;
pub mod hub;
mod subscription;
mod wave;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{Authenticator, CredentialError, Principal};
use crate::error::error_response;
use crate::store::DynStore;
pub use fanout::Fanout;
pub use hub::{WsHub, WsLimits, WsStats};

/// What the WebSocket server reaches: built once by `app::Application::build`, shared by
/// both listeners (cloning it is one reference count).
pub struct WsContext {
    pub hub: Arc<WsHub>,
    /// Catch-up reads and debate visibility.
    pub store: DynStore,
    /// The handshake's credential check (the same as the HTTP gate's).
    pub auth: Arc<Authenticator>,
    /// With auth on, credential-less clients may connect (read-only).
    pub anonymous_read: bool,
    /// Connection and catch-up tasks, waited for by shutdown.
    pub tasks: TaskTracker,
    /// Cancelled when shutdown starts.
    pub shutdown: CancellationToken,
}

/// Per-connection read buffer (messages larger than this are still read, in several reads).
const READ_BUFFER_BYTES: usize = 4 * 1024;
/// Bytes buffered before the writer flushes on its own (batches flush explicitly anyway).
const WRITE_BUFFER_BYTES: usize = 16 * 1024;

/// Largest inbound message (close 1009 beyond).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(15);
pub const PING_INTERVAL: Duration = Duration::from_secs(30);
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Subscriptions one connection may hold.
pub const MAX_SUBSCRIPTIONS: usize = 100;

pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    /// Missing or invalid credentials (auth on, `ws_anonymous_read` off).
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    /// The server could not check the credentials (database unreachable); try again.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    pub const SERVICE_RESTART: u16 = 1012;
    pub const SLOW_CONSUMER: u16 = 4008;
    pub const LIMITS: u16 = 4029;
}

/// Router for the dedicated WebSocket port.
pub fn router(ws: Arc<WsContext>) -> Router {
    Router::new()
        .route("/", get(upgrade))
        .route("/ws", get(upgrade))
        .with_state(ws)
}

/// `?debate_id=…&since=…` subscribes on connect; `token` is for auth and never logged.
#[derive(Default, Deserialize)]
pub struct ConnectQuery {
    debate_id: Option<String>,
    since: Option<i64>,
    replay_from_seq: Option<i64>,
    token: Option<crate::config::Secret>,
}

/// The subprotocol that carries a token: `Sec-WebSocket-Protocol: access_token.<token>`.
const TOKEN_PROTOCOL: &str = "access_token.";

/// Credentials of an upgrade request: the `Authorization`/`X-API-Key` header, else the
/// `access_token.<token>` subprotocol (returned too, to be echoed), else `?token=`.
fn ws_credentials(headers: &HeaderMap, query: &ConnectQuery) -> (Option<String>, Option<String>) {
    if let Some(token) = crate::auth::extractors::presented(headers) {
        return (Some(token), None);
    }
    let protocol = headers
        .get_all(axum::http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find(|p| p.starts_with(TOKEN_PROTOCOL))
        .map(str::to_owned);
    if let Some(protocol) = protocol {
        return (
            Some(protocol[TOKEN_PROTOCOL.len()..].to_owned()),
            Some(protocol),
        );
    }
    (query.token.as_ref().map(|t| t.expose().to_owned()), None)
}

pub async fn upgrade(
    State(ws_server): State<Arc<WsContext>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(query): Query<ConnectQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let (token, protocol) = ws_credentials(&headers, &query);
    let principal = ws_server
        .auth
        .principal_for(token.as_deref(), Some(peer.ip()), &headers)
        .await;
    // Refused connections are still upgraded so the client sees the 1008 close code.
    let refusal = match &principal {
        Err(CredentialError::Unavailable(_)) => Some((
            close_code::TRY_AGAIN_LATER,
            "credentials cannot be checked now (database unreachable); try again",
        )),
        Err(_) => Some((close_code::POLICY, "invalid or expired credentials")),
        Ok(p) if p.role.is_none() && !ws_server.anonymous_read => {
            Some((close_code::POLICY, "authentication required"))
        }
        Ok(_) => None,
    };
    let principal = principal.unwrap_or_else(|_| Principal::anonymous());
    let ws = match protocol {
        Some(p) => ws.protocols([p]),
        None => ws,
    };
    let initial = match query.debate_id {
        Some(id) => {
            let since = query.since.or(query.replay_from_seq).unwrap_or(0);
            if since < 0 {
                return error_response(
                    crate::error::ErrorCode::BadRequest,
                    "`since` must be a seq ≥ 0",
                );
            }
            Some((id, since))
        }
        None => None,
    };
    let tasks = ws_server.tasks.clone();
    // Small read buffer: clients mostly send a few short messages, and the library's default
    // (128 KiB, zero-filled on first read) would stay resident for every idle connection.
    ws.read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_message_size(MAX_MESSAGE_BYTES)
        .max_frame_size(MAX_MESSAGE_BYTES)
        .on_failed_upgrade(
            |err| tracing::debug!(target: "aragora::ws", error = %err, "websocket upgrade failed"),
        )
        .on_upgrade(move |socket| {
            tasks.track_future(async move {
                match refusal {
                    Some((code, reason)) => connection::refuse(socket, peer, code, reason).await,
                    None => connection::serve(socket, ws_server, peer, initial, principal).await,
                }
            })
        })
        .into_response()
}
