//! Per-debate fan-out. One dispatcher task reads the event bus and routes each event to the
//! broadcast channel of its debate, serialising it once for every watcher, then rings the
//! debate's [`Wave`]: the watchers are woken a window at a time, not all at once. Channels
//! exist only while someone watches.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::wave::{self, Wave};
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

/// A watched debate: its events, and the wave that wakes its watchers.
#[derive(Clone)]
struct Channel {
    tx: broadcast::Sender<Fan>,
    wave: Arc<Wave>,
}

impl Channel {
    /// Send, then wake the watchers (a window now, the rest in turn). True while some still
    /// wait for their turn.
    fn send(&self, fan: Fan) -> bool {
        let _ = self.tx.send(fan);
        self.wave.ring()
    }
}

#[derive(Default)]
pub struct Fanout {
    channels: Mutex<HashMap<String, Channel>>,
}

impl Fanout {
    /// A receiver of the debate's events and the wave its reader waits in. The receiver is
    /// read with `try_recv` only: waiting is the wave's (a receiver waiting on the channel
    /// itself would be woken with all the others at once).
    pub fn subscribe(&self, debate_id: &str) -> (broadcast::Receiver<Fan>, Arc<Wave>) {
        let mut channels = self.channels.lock();
        let channel = channels
            .entry(debate_id.to_owned())
            .or_insert_with(|| Channel {
                tx: broadcast::channel(DEBATE_CHANNEL).0,
                wave: Arc::new(Wave::default()),
            });
        (channel.tx.subscribe(), channel.wave.clone())
    }

    /// Drop the debate's channel when its last watcher has gone.
    pub fn release(&self, debate_id: &str) {
        let mut channels = self.channels.lock();
        if channels
            .get(debate_id)
            .is_some_and(|c| c.tx.receiver_count() == 0)
        {
            channels.remove(debate_id);
        }
    }

    pub fn watched_debates(&self) -> usize {
        self.channels.lock().len()
    }

    /// True while some watchers of the debate wait for their turn.
    fn route(&self, event: &LiveEvent) -> bool {
        let Some(channel) = self.channels.lock().get(&event.debate_id).cloned() else {
            return false;
        };
        let Ok(json) = serde_json::to_string(event) else {
            return false;
        };
        channel.send(Fan::Event(Outgoing {
            seq: event.seq,
            json: json.into(),
        }))
    }

    fn resync_all(&self) -> bool {
        let channels: Vec<Channel> = self.channels.lock().values().cloned().collect();
        let mut open = false;
        for c in channels {
            open |= c.send(Fan::Resync);
        }
        open
    }

    /// Release stalled windows; true while some watchers still wait for their turn.
    fn unstick_all(&self) -> bool {
        let waves: Vec<Arc<Wave>> = self
            .channels
            .lock()
            .values()
            .map(|c| c.wave.clone())
            .collect();
        let mut open = false;
        for w in waves {
            open |= w.unstick();
        }
        open
    }

    /// Route bus events to debate channels until shutdown.
    pub async fn dispatch(self: Arc<Self>, bus: Arc<dyn EventBus>, shutdown: CancellationToken) {
        let mut rx = bus.subscribe();
        // Some wave still has watchers waiting for their turn: check it for a stall.
        let mut open = false;
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => return,
                n = rx.recv() => n,
                _ = tokio::time::sleep(wave::STALL), if open => {
                    open = self.unstick_all();
                    continue;
                }
            };
            let waiting = match next {
                Ok(event) if event.is_resync() => self.resync_all(),
                Ok(event) => self.route(&event),
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(target: "aragora::ws", missed, "fan-out lagged behind the bus; watchers resync from the store");
                    self.resync_all()
                }
                Err(RecvError::Closed) => return,
            };
            open |= waiting;
        }
    }
}
