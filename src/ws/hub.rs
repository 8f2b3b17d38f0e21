//! Connection bookkeeping shared by both listeners: the limits (total and per client IP),
//! the counters behind `GET /api/ws/stats`, the fan-out of live events, and the reload token
//! (SIGUSR1 closes every connection with 1012).

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::Fanout;

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
    pub(super) next_client: AtomicU64,
    pub(super) subscriptions: AtomicUsize,
    pub(super) messages_sent: AtomicU64,
    pub(super) slow_dropped: AtomicU64,
    pub(super) rejected: AtomicU64,
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

/// A WebSocket connection refused for a connection limit.
#[derive(Debug, thiserror::Error)]
pub enum LimitReached {
    #[error("server connection limit ({0}) reached")]
    Server(usize),
    #[error("per-client connection limit ({0}) reached")]
    PerClient(usize),
}

/// Decrements the per-IP and total counts however the connection ends.
pub struct Admission {
    hub: Arc<WsHub>,
    ip: IpAddr,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.hub.connections.fetch_sub(1, Ordering::Relaxed);
        let mut per_ip = self.hub.per_ip.lock();
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
        crate::telemetry::metrics::websocket_connections().decrement(1.0);
    }
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
        let current = std::mem::replace(&mut *self.reload.lock(), next);
        current.cancel();
        tracing::info!(target: "aragora::ws", "websocket reload: closing all connections with 1012");
    }

    /// Cancelled by the next reload, or by shutdown.
    pub(super) fn reload_token(&self) -> CancellationToken {
        self.reload.lock().child_token()
    }

    /// Count a new connection, or say which limit it exceeds.
    ///
    /// The refusal is the close reason the client reads.
    pub(super) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admission, LimitReached> {
        let mut per_ip = self.per_ip.lock();
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
        crate::telemetry::metrics::websocket_connections().increment(1.0);
        Ok(Admission {
            hub: self.clone(),
            ip,
        })
    }

    pub(super) fn count_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        crate::telemetry::metrics::ws_connection_errors_total().increment(1);
    }

    pub fn stats(&self) -> WsStats {
        let per_ip_max = self.per_ip.lock().values().copied().max().unwrap_or(0);
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
