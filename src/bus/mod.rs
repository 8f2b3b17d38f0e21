//! The event bus: live fan-out of debate events to watchers (WebSocket clients), within one
//! process (`LocalBus`) or across instances sharing Redis (`RedisBus`).
//!
//! Rule: the bus is best effort and holds nothing durable. Durable events carry their store
//! seq, and watchers fill any gap (lag, a Redis outage, an event produced on another instance
//! while they were connecting) from the store; token deltas are ephemeral.

pub mod breakers;
mod redis;

pub use self::redis::RedisBus;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::broadcast;

use crate::store::StoredEvent;

/// The WebSocket envelope (docs/websocket.md).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct LiveEvent {
    #[serde(rename = "type")]
    pub kind: String,
    pub debate_id: String,
    /// Per-debate seq of durable events; absent for ephemeral ones.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<i64>,
    pub timestamp: DateTime<Utc>,
    pub round: Option<i32>,
    pub agent: Option<String>,
    pub data: Value,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ephemeral: bool,
}

/// A stored event handed over whole: its strings and data are moved, not copied.
impl From<StoredEvent> for LiveEvent {
    fn from(e: StoredEvent) -> Self {
        LiveEvent {
            kind: e.kind,
            debate_id: e.debate_id,
            seq: Some(e.seq),
            timestamp: e.timestamp,
            round: e.round,
            agent: e.agent,
            data: e.data,
            ephemeral: false,
        }
    }
}

impl From<&StoredEvent> for LiveEvent {
    fn from(e: &StoredEvent) -> Self {
        LiveEvent {
            kind: e.kind.clone(),
            debate_id: e.debate_id.clone(),
            seq: Some(e.seq),
            timestamp: e.timestamp,
            round: e.round,
            agent: e.agent.clone(),
            data: e.data.clone(),
            ephemeral: false,
        }
    }
}

/// The `kind` of a marker event telling watchers that events may have been missed (Redis
/// reconnected): they re-read the store from their last seq. Never stored, never sent.
pub const RESYNC: &str = "__resync";

impl LiveEvent {
    pub fn resync() -> LiveEvent {
        LiveEvent {
            kind: RESYNC.into(),
            debate_id: String::new(),
            seq: None,
            timestamp: chrono::Utc::now(),
            round: None,
            agent: None,
            data: Value::Null,
            ephemeral: true,
        }
    }

    pub fn is_resync(&self) -> bool {
        self.kind == RESYNC
    }
}

/// Publish/subscribe for live events.
pub trait EventBus: Send + Sync + 'static {
    fn publish(&self, event: LiveEvent);
    fn subscribe(&self) -> broadcast::Receiver<Arc<LiveEvent>>;
    /// `local` or `redis`.
    fn backend(&self) -> &'static str;
    /// Whether the cross-instance link is up (always true for the local bus).
    fn connected(&self) -> bool {
        true
    }
}

/// In-process bus: one broadcast channel for all debates.
pub struct LocalBus {
    tx: broadcast::Sender<Arc<LiveEvent>>,
}

impl LocalBus {
    pub fn new(capacity: usize) -> Self {
        LocalBus {
            tx: broadcast::channel(capacity).0,
        }
    }
}

impl EventBus for LocalBus {
    fn publish(&self, event: LiveEvent) {
        // No receivers is fine: nobody is watching.
        let _ = self.tx.send(Arc::new(event));
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<LiveEvent>> {
        self.tx.subscribe()
    }

    fn backend(&self) -> &'static str {
        "local"
    }
}
