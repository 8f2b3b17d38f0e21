//! The WebSocket server (contract §5): served on the WS port at `/ws` and `/`, and at `/ws` on
//! the API port. Each connection gets `connection_info`, answers `ping` with `pong`, sends a
//! heartbeat, and is closed with 1001 on shutdown and 1012 on a SIGUSR1 reload.
//!
//! Rule: every connection task is tracked, so shutdown can wait for the close frames to go out.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::response::Response;
use axum::routing::get;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::app::AppState;

/// Largest inbound message (close 1009 beyond).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(15);

pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const TOO_BIG: u16 = 1009;
    pub const SERVICE_RESTART: u16 = 1012;
}

/// Connection bookkeeping shared by both listeners.
pub struct WsHub {
    connections: AtomicUsize,
    next_client: AtomicU64,
    /// Bumped by SIGUSR1: every live connection closes with 1012.
    reload: watch::Sender<u64>,
}

impl Default for WsHub {
    fn default() -> Self {
        Self::new()
    }
}

impl WsHub {
    pub fn new() -> Self {
        WsHub {
            connections: AtomicUsize::new(0),
            next_client: AtomicU64::new(1),
            reload: watch::channel(0).0,
        }
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Close every WebSocket with 1012; REST and debates are untouched.
    pub fn reload(&self) {
        self.reload.send_modify(|generation| *generation += 1);
        tracing::info!(target: "aragora::ws", "websocket reload: closing all connections with 1012");
    }
}

/// Router for the dedicated WebSocket port.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(upgrade))
        .route("/ws", get(upgrade))
        .with_state(state)
}

pub async fn upgrade(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ws: WebSocketUpgrade,
) -> Response {
    let tasks = state.tasks.clone();
    ws.max_message_size(MAX_MESSAGE_BYTES)
        .max_frame_size(MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| tasks.track_future(serve_connection(socket, state, peer)))
}

/// Decrements the live-connection count however the connection ends.
struct ConnectionGuard<'a>(&'a WsHub);

impl Drop for ConnectionGuard<'_> {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!("aragora_websocket_connections").decrement(1.0);
    }
}

async fn serve_connection(mut socket: WebSocket, state: AppState, peer: SocketAddr) {
    let hub = &state.ws;
    hub.connections.fetch_add(1, Ordering::Relaxed);
    metrics::gauge!("aragora_websocket_connections").increment(1.0);
    let _guard = ConnectionGuard(hub);
    let client_id = format!("ws-{}", hub.next_client.fetch_add(1, Ordering::Relaxed));
    let mut reload = hub.reload.subscribe();
    tracing::info!(target: "aragora::ws", %client_id, peer = %peer.ip(), "websocket connected");

    let info = json!({
        "type": "connection_info",
        "data": {
            "client_id": client_id,
            "authenticated": false,
            "server_version": env!("CARGO_PKG_VERSION"),
            "heartbeat_interval_s": HEARTBEAT_INTERVAL.as_secs(),
        }
    });
    if send_json(&mut socket, &info).await.is_err() {
        return;
    }
    let mut heartbeat = tokio::time::interval(HEARTBEAT_INTERVAL);
    heartbeat.tick().await;

    let close = loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => break Some((close_code::GOING_AWAY, "server shutting down")),
            _ = reload.changed() => break Some((close_code::SERVICE_RESTART, "websocket reload; reconnect")),
            _ = heartbeat.tick() => {
                let beat = json!({"type": "heartbeat", "ts": now_millis()});
                if send_json(&mut socket, &beat).await.is_err() {
                    break None;
                }
            }
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    if let Some(reply) = handle_text(&text) && send_json(&mut socket, &reply).await.is_err() {
                        break None;
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    let reply = error_frame("binary_not_supported", "send JSON text frames");
                    if send_json(&mut socket, &reply).await.is_err() {
                        break None;
                    }
                }
                Some(Ok(Message::Close(_))) | None => break None,
                Some(Ok(_)) => {}
                Some(Err(err)) => {
                    tracing::debug!(target: "aragora::ws", %client_id, error = %err, "websocket read error");
                    let too_big = err.to_string().to_ascii_lowercase().contains("too long")
                        || err.to_string().to_ascii_lowercase().contains("too big");
                    if too_big {
                        break Some((close_code::TOO_BIG, "message larger than 64 KiB"));
                    }
                    break None;
                }
            }
        }
    };
    if let Some((code, reason)) = close {
        let _ = socket
            .send(Message::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            })))
            .await;
        // Give the peer a moment to answer the close handshake.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(msg)) = socket.recv().await {
                if matches!(msg, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
    tracing::info!(target: "aragora::ws", %client_id, "websocket disconnected");
}

fn handle_text(text: &str) -> Option<Value> {
    let Ok(msg) = serde_json::from_str::<Value>(text) else {
        return Some(error_frame("invalid_json", "message is not valid JSON"));
    };
    match msg.get("type").and_then(Value::as_str) {
        Some("ping") => {
            Some(json!({"type": "pong", "ts": msg.get("ts").cloned().unwrap_or(Value::Null)}))
        }
        Some(other) => Some(error_frame(
            "unsupported",
            &format!("message type `{other}` is not supported by this server"),
        )),
        None => Some(error_frame("invalid_message", "message has no `type`")),
    }
}

fn error_frame(code: &str, message: &str) -> Value {
    json!({"type": "error", "data": {"code": code, "message": message}})
}

async fn send_json(socket: &mut WebSocket, value: &Value) -> Result<(), axum::Error> {
    socket.send(Message::Text(value.to_string().into())).await
}

fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
