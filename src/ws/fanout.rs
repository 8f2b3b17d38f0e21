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
    /// Send, then wake the watchers (a window now, the rest in turn). The wave, while some
    /// still wait for their turn.
    fn send(&self, fan: Fan) -> Option<Arc<Wave>> {
        let _ = self.tx.send(fan);
        self.wave.ring().then(|| self.wave.clone())
    }
}

/// Waves with watchers still waiting for their turn: the dispatcher checks them for a stall.
#[derive(Default)]
struct OpenWaves(Vec<Arc<Wave>>);

impl OpenWaves {
    fn add(&mut self, wave: Option<Arc<Wave>>) {
        if let Some(w) = wave
            && !self.0.iter().any(|o| Arc::ptr_eq(o, &w))
        {
            self.0.push(w);
        }
    }

    /// Release stalled windows; keep the waves that still have watchers waiting.
    fn unstick(&mut self) {
        self.0.retain(|w| w.unstick());
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

    /// The debate's wave, while some of its watchers wait for their turn.
    fn route(&self, event: &LiveEvent) -> Option<Arc<Wave>> {
        let channel = self.channels.lock().get(&event.debate_id).cloned()?;
        let json = serde_json::to_string(event).ok()?;
        channel.send(Fan::Event(Outgoing {
            seq: event.seq,
            json: json.into(),
        }))
    }

    fn resync_all(&self, open: &mut OpenWaves) {
        let channels: Vec<Channel> = self.channels.lock().values().cloned().collect();
        for c in channels {
            open.add(c.send(Fan::Resync));
        }
    }

    /// Route bus events to debate channels until shutdown.
    pub async fn dispatch(self: Arc<Self>, bus: Arc<dyn EventBus>, shutdown: CancellationToken) {
        let mut rx = bus.subscribe();
        let mut open = OpenWaves::default();
        // One deadline for the stall check, not a fresh sleep per event: events arriving
        // faster than the check period would otherwise postpone it for ever.
        let check = tokio::time::sleep(wave::STALL);
        tokio::pin!(check);
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => return,
                n = rx.recv() => n,
                () = &mut check, if !open.0.is_empty() => {
                    open.unstick();
                    check.as_mut().reset(tokio::time::Instant::now() + wave::STALL);
                    continue;
                }
            };
            let was_idle = open.0.is_empty();
            match next {
                Ok(event) if event.is_resync() => self.resync_all(&mut open),
                Ok(event) => open.add(self.route(&event)),
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(target: "aragora::ws", missed, "fan-out lagged behind the bus; watchers resync from the store");
                    self.resync_all(&mut open);
                }
                Err(RecvError::Closed) => return,
            }
            if was_idle && !open.0.is_empty() {
                check
                    .as_mut()
                    .reset(tokio::time::Instant::now() + wave::STALL);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::LocalBus;
    use std::time::Duration;

    fn event(debate_id: &str, seq: i64) -> LiveEvent {
        LiveEvent {
            kind: "agent_message".into(),
            debate_id: debate_id.into(),
            seq: Some(seq),
            timestamp: chrono::Utc::now(),
            round: Some(1),
            agent: None,
            data: serde_json::json!({"n": seq}),
            ephemeral: false,
        }
    }

    /// Through the real dispatcher, with events published faster than the stall check's
    /// period: a full window of watchers that stopped reading still holds nobody back.
    /// Each reader takes the first `EVENTS`, in order, with none missing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stuck_watchers_do_not_hold_back_the_others_while_events_keep_coming() {
        const EVENTS: i64 = 200;
        let fanout = Arc::new(Fanout::default());
        let bus = Arc::new(LocalBus::new(4096));
        let shutdown = CancellationToken::new();
        let dispatcher = tokio::spawn(fanout.clone().dispatch(bus.clone(), shutdown.clone()));
        let mut stuck = Vec::new();
        for _ in 0..wave::WINDOW {
            let (rx, wave) = fanout.subscribe("d1");
            stuck.push(wave::spawn_stuck(wave::Receiver::new(rx, &wave)));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut readers = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let (rx, wave) = fanout.subscribe("d1");
            let mut r = wave::Receiver::new(rx, &wave);
            readers.spawn(async move {
                let mut seqs = Vec::new();
                while seqs.len() < EVENTS as usize {
                    match std::future::poll_fn(|cx| r.poll_recv(cx)).await {
                        Ok(Fan::Event(e)) => seqs.push(e.seq.unwrap()),
                        other => panic!("unexpected {other:?}"),
                    }
                }
                seqs
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        // About one event per millisecond until the readers are done: the bus never stays
        // quiet for a stall period, so only a check that events do not postpone releases
        // the stuck window.
        let publishing = CancellationToken::new();
        let publisher = {
            let (bus, publishing) = (bus.clone(), publishing.clone());
            tokio::spawn(async move {
                let mut seq = 0;
                while !publishing.is_cancelled() {
                    seq += 1;
                    bus.publish(event("d1", seq));
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
        };
        let all = tokio::time::timeout(Duration::from_secs(60), readers.join_all())
            .await
            .expect("every reader gets its events while events keep coming");
        publishing.cancel();
        publisher.await.unwrap();
        for seqs in all {
            assert_eq!(seqs, (1..=EVENTS).collect::<Vec<_>>());
        }
        shutdown.cancel();
        dispatcher.await.unwrap();
        for s in stuck {
            s.abort();
        }
    }
}
