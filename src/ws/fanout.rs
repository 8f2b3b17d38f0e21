//! Per-debate fan-out. One dispatcher task reads the event bus and routes each event to the
//! broadcast channel of its debate, serialising it once for every watcher. Channels exist
//! only while someone watches.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::bus::{EventBus, LiveEvent};

/// Per-debate channel depth. A watcher further behind than this resyncs from the store.
const DEBATE_CHANNEL: usize = 1024;

/// An event ready to send: its JSON text, serialised once. Every watcher's copy shares the
/// text (cloning it is one reference-count increment), so the frame a watcher writes is the
/// value it received, with no further copy or allocation.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub seq: Option<i64>,
    pub json: Utf8Bytes,
}

#[derive(Debug, Clone)]
pub enum Fan {
    Event(Outgoing),
    /// Events may have been missed: re-read the store.
    Resync,
}

#[derive(Default)]
pub struct Fanout {
    channels: Mutex<HashMap<String, broadcast::Sender<Fan>>>,
}

impl Fanout {
    pub fn subscribe(&self, debate_id: &str) -> broadcast::Receiver<Fan> {
        let mut channels = self.channels.lock();
        channels
            .entry(debate_id.to_owned())
            .or_insert_with(|| broadcast::channel(DEBATE_CHANNEL).0)
            .subscribe()
    }

    /// Drop the debate's channel when its last watcher has gone.
    pub fn release(&self, debate_id: &str) {
        let mut channels = self.channels.lock();
        if channels
            .get(debate_id)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            channels.remove(debate_id);
        }
    }

    pub fn watched_debates(&self) -> usize {
        self.channels.lock().len()
    }

    fn route(&self, event: &LiveEvent) {
        let tx = {
            let channels = self.channels.lock();
            match channels.get(&event.debate_id) {
                Some(tx) => tx.clone(),
                None => return,
            }
        };
        let Ok(json) = serde_json::to_string(event) else {
            return;
        };
        let _ = tx.send(Fan::Event(Outgoing {
            seq: event.seq,
            json: json.into(),
        }));
    }

    fn resync_all(&self) {
        let channels = self.channels.lock();
        for tx in channels.values() {
            let _ = tx.send(Fan::Resync);
        }
    }

    /// Route bus events to debate channels until shutdown.
    pub async fn dispatch(self: Arc<Self>, bus: Arc<dyn EventBus>, shutdown: CancellationToken) {
        let mut rx = bus.subscribe();
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => return,
                n = rx.recv() => n,
            };
            match next {
                Ok(event) if event.is_resync() => self.resync_all(),
                Ok(event) => self.route(&event),
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(target: "aragora::ws", missed, "fan-out lagged behind the bus; watchers resync from the store");
                    self.resync_all();
                }
                Err(RecvError::Closed) => return,
            }
        }
    }
}
