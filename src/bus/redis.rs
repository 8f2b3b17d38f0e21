//! Cross-instance fan-out over Redis pub/sub. Every event is delivered to this process's
//! watchers directly and published on one Redis channel; each instance re-publishes what the
//! others sent. While Redis is unreachable, local delivery goes on; when the subscription
//! comes back, watchers are told to resync from the store, so nothing durable is missed.
//!
//! Publishing goes through the process's shared Redis connection ([`RedisHandle`]); the
//! subscriber holds a connection of its own, since a subscribed connection runs no other
//! command, and makes it again (with backoff) whenever it is lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{EventBus, LiveEvent, LocalBus};
use crate::redis_client::RedisHandle;

/// Events waiting to be published to Redis; beyond this they are dropped from the
/// cross-instance path only (remote watchers recover durable ones from the store).
const PUBLISH_QUEUE: usize = 10_000;
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// One publication (connection included), or one attempt to subscribe.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Serialize, Deserialize)]
struct Envelope {
    origin: String,
    event: LiveEvent,
}

pub struct RedisBus {
    local: Arc<LocalBus>,
    out: mpsc::Sender<LiveEvent>,
    connected: Arc<AtomicBool>,
}

impl RedisBus {
    /// Start the publisher and subscriber tasks (tracked, stopped by `shutdown`).
    pub fn start(
        redis: RedisHandle,
        channel: String,
        origin: String,
        capacity: usize,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Arc<RedisBus> {
        let local = Arc::new(LocalBus::new(capacity));
        let (out, rx) = mpsc::channel(PUBLISH_QUEUE);
        let connected = Arc::new(AtomicBool::new(false));
        tasks.spawn(publisher(
            redis.clone(),
            channel.clone(),
            origin.clone(),
            rx,
            shutdown.clone(),
        ));
        tasks.spawn(subscriber(
            redis.client().clone(),
            channel,
            origin,
            local.clone(),
            connected.clone(),
            shutdown,
        ));
        Arc::new(RedisBus {
            local,
            out,
            connected,
        })
    }
}

impl EventBus for RedisBus {
    fn publish(&self, event: LiveEvent) {
        if self.out.try_send(event.clone()).is_err() {
            tracing::warn!(target: "aragora::ws", "redis bus publish queue full; remote watchers will resync from the store");
        }
        self.local.publish(event);
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<LiveEvent>> {
        self.local.subscribe()
    }

    fn backend(&self) -> &'static str {
        "redis"
    }

    fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
}

async fn publisher(
    redis: RedisHandle,
    channel: String,
    origin: String,
    mut rx: mpsc::Receiver<LiveEvent>,
    shutdown: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            e = rx.recv() => match e { Some(e) => e, None => return },
        };
        let Ok(payload) = serde_json::to_string(&Envelope {
            origin: origin.clone(),
            event,
        }) else {
            continue;
        };
        // A failure drops the event from the cross-instance path only; the shared
        // connection reconnects by itself for the next one.
        let _ = tokio::time::timeout(ATTEMPT_TIMEOUT, async {
            let mut conn = redis.connection().await?;
            redis::cmd("PUBLISH")
                .arg(&channel)
                .arg(payload)
                .query_async::<i64>(&mut conn)
                .await
        })
        .await;
    }
}

async fn subscriber(
    client: redis::Client,
    channel: String,
    origin: String,
    local: Arc<LocalBus>,
    connected: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let attempt = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = tokio::time::timeout(ATTEMPT_TIMEOUT, client.get_async_pubsub()) => r,
        };
        match attempt {
            Ok(Ok(mut pubsub)) => {
                if pubsub.subscribe(&channel).await.is_err() {
                    connected.store(false, Ordering::Relaxed);
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
                backoff = Duration::from_millis(100);
                connected.store(true, Ordering::Relaxed);
                tracing::info!(target: "aragora::ws", "redis event bus subscribed");
                // Anything published while we were away is in the store.
                local.publish(LiveEvent::resync());
                let mut messages = pubsub.on_message();
                loop {
                    let msg = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        m = messages.next() => m,
                    };
                    let Some(msg) = msg else { break };
                    let Ok(payload) = msg.get_payload::<String>() else {
                        continue;
                    };
                    match serde_json::from_str::<Envelope>(&payload) {
                        Ok(env) if env.origin != origin => local.publish(env.event),
                        Ok(_) => {}
                        Err(err) => {
                            tracing::warn!(target: "aragora::ws", error = %err, "unreadable message on the redis event bus");
                        }
                    }
                }
                connected.store(false, Ordering::Relaxed);
                tracing::warn!(target: "aragora::ws", "redis event bus subscription lost; reconnecting");
            }
            _ => {
                connected.store(false, Ordering::Relaxed);
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
