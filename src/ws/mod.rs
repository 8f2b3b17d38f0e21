//! The WebSocket server (contract §5): served on the WS port at `/ws` and `/`, and at `/ws` on
//! the API port. Clients subscribe to debates and get the durable events they missed from
//! the store, then live events, in seq order, with no gap and no duplicate at the seam.
//!
//! Rules: every connection has a bounded send queue, and a client that cannot keep up is
//! closed with 4008 naming its last delivered seq — nothing is dropped silently and one slow
//! client never delays another. Every connection task is tracked so shutdown can send 1001.

mod connection;
pub mod fanout;
mod subscription;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::app::AppState;
use crate::error::error_response;
pub use fanout::Fanout;

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

/// Connection limits and back-pressure settings.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct WsLimits {
    pub max_connections: usize,
    pub max_per_ip: usize,
    pub max_message_bytes: usize,
    /// Frames one connection may have waiting to be written.
    pub send_queue: usize,
    /// How long a full send queue may stay full before the client counts as too slow.
    #[serde(rename = "slow_consumer_after_ms", serialize_with = "as_millis")]
    pub slow_after: Duration,
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

/// Connection bookkeeping and counters shared by both listeners.
pub struct WsHub {
    pub limits: WsLimits,
    pub fanout: Arc<Fanout>,
    connections: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    per_ip_peak: AtomicUsize,
    connections_peak: AtomicUsize,
    next_client: AtomicU64,
    subscriptions: AtomicUsize,
    messages_sent: AtomicU64,
    slow_dropped: AtomicU64,
    rejected: AtomicU64,
    errors: AtomicU64,
    /// Cancelled (and replaced) by SIGUSR1: every live connection closes with 1012. A child
    /// of the server's shutdown token, so it is cancelled by shutdown too; each connection
    /// waits on a descendant of its own.
    reload: Mutex<CancellationToken>,
    shutdown: CancellationToken,
}

/// `GET /api/ws/stats` body.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WsStats {
    pub connections: usize,
    pub connections_peak: usize,
    /// Most connections one client IP holds now.
    pub per_ip_max: usize,
    /// Most connections one client IP has held since start.
    pub per_ip_peak: usize,
    pub subscriptions: usize,
    pub watched_debates: usize,
    pub messages_sent: u64,
    pub slow_clients_dropped: u64,
    pub rejected_connections: u64,
    pub errors: u64,
    #[schema(value_type = Object)]
    pub limits: WsLimits,
}

/// Decrements the per-IP and total counts however the connection ends.
pub struct Admission {
    hub: Arc<WsHub>,
    ip: IpAddr,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.hub.connections.fetch_sub(1, Ordering::Relaxed);
        let mut per_ip = self.hub.per_ip.lock().expect("per-ip lock");
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
        metrics::gauge!("aragora_websocket_connections").decrement(1.0);
    }
}

/// A WebSocket connection refused for a connection limit.
#[derive(Debug, thiserror::Error)]
pub enum LimitReached {
    #[error("server connection limit ({0}) reached")]
    Server(usize),
    #[error("per-client connection limit ({0}) reached")]
    PerClient(usize),
}

impl WsHub {
    pub fn new(limits: WsLimits, shutdown: &CancellationToken) -> Self {
        WsHub {
            limits,
            fanout: Arc::new(Fanout::default()),
            connections: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            per_ip_peak: AtomicUsize::new(0),
            connections_peak: AtomicUsize::new(0),
            next_client: AtomicU64::new(1),
            subscriptions: AtomicUsize::new(0),
            messages_sent: AtomicU64::new(0),
            slow_dropped: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            reload: Mutex::new(shutdown.child_token()),
            shutdown: shutdown.clone(),
        }
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Close every WebSocket with 1012; REST and debates are untouched.
    pub fn reload(&self) {
        let next = self.shutdown.child_token();
        let current = std::mem::replace(&mut *self.reload.lock().expect("reload lock"), next);
        current.cancel();
        tracing::info!(target: "aragora::ws", "websocket reload: closing all connections with 1012");
    }

    /// Cancelled by the next reload, or by shutdown.
    fn reload_token(&self) -> CancellationToken {
        self.reload.lock().expect("reload lock").child_token()
    }

    /// Count a new connection, or say which limit it exceeds.
    ///
    /// The refusal is the close reason the client reads.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admission, LimitReached> {
        let mut per_ip = self.per_ip.lock().expect("per-ip lock");
        let total = self.connections.load(Ordering::Relaxed);
        if total >= self.limits.max_connections {
            return Err(LimitReached::Server(self.limits.max_connections));
        }
        let mine = per_ip.entry(ip).or_default();
        if *mine >= self.limits.max_per_ip {
            return Err(LimitReached::PerClient(self.limits.max_per_ip));
        }
        *mine += 1;
        self.per_ip_peak.fetch_max(*mine, Ordering::Relaxed);
        let now = self.connections.fetch_add(1, Ordering::Relaxed) + 1;
        self.connections_peak.fetch_max(now, Ordering::Relaxed);
        metrics::gauge!("aragora_websocket_connections").increment(1.0);
        Ok(Admission {
            hub: self.clone(),
            ip,
        })
    }

    fn count_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("aragora_ws_connection_errors_total").increment(1);
    }

    pub fn stats(&self) -> WsStats {
        let per_ip_max = self
            .per_ip
            .lock()
            .expect("per-ip lock")
            .values()
            .copied()
            .max()
            .unwrap_or(0);
        WsStats {
            connections: self.connections(),
            connections_peak: self.connections_peak.load(Ordering::Relaxed),
            per_ip_max,
            per_ip_peak: self.per_ip_peak.load(Ordering::Relaxed),
            subscriptions: self.subscriptions.load(Ordering::Relaxed),
            watched_debates: self.fanout.watched_debates(),
            messages_sent: self.messages_sent.load(Ordering::Relaxed),
            slow_clients_dropped: self.slow_dropped.load(Ordering::Relaxed),
            rejected_connections: self.rejected.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            limits: self.limits,
        }
    }
}

/// Router for the dedicated WebSocket port.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(upgrade))
        .route("/ws", get(upgrade))
        .with_state(state)
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
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(query): Query<ConnectQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let (token, protocol) = ws_credentials(&headers, &query);
    let principal =
        crate::auth::extractors::principal_for(&state, token.as_deref(), Some(peer.ip()), &headers)
            .await;
    // Refused connections are still upgraded so the client sees the 1008 close code.
    let refusal = match &principal {
        Err(crate::auth::extractors::CredentialError::Unavailable(_)) => Some((
            close_code::TRY_AGAIN_LATER,
            "credentials cannot be checked now (database unreachable); try again",
        )),
        Err(_) => Some((close_code::POLICY, "invalid or expired credentials")),
        Ok(p) if p.role.is_none() && !state.config.ws_anonymous_read => {
            Some((close_code::POLICY, "authentication required"))
        }
        Ok(_) => None,
    };
    let principal = principal.unwrap_or_else(|_| crate::auth::Principal::anonymous());
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
    let tasks = state.tasks.clone();
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
                    None => connection::serve(socket, state, peer, initial, principal).await,
                }
            })
        })
        .into_response()
}
