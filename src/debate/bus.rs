//! Live fan-out of debate events to watchers (WebSocket clients). Durable events carry their
//! store seq; token deltas are ephemeral. The in-process backend is a broadcast channel; the
//! WebSocket layer replays from the store, so a lagging receiver loses nothing durable.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::broadcast;

use crate::store::StoredEvent;

/// The WebSocket envelope (contract §5).
#[derive(Debug, Clone, PartialEq, Serialize)]
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
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub ephemeral: bool,
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

/// Publish/subscribe for live events.
pub trait EventBus: Send + Sync + 'static {
    fn publish(&self, event: LiveEvent);
    fn subscribe(&self) -> broadcast::Receiver<Arc<LiveEvent>>;
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
}
