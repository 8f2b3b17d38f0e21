//! One subscription: `subscribed`, then the durable events after `since` from the store,
//! then live events. The live receiver is taken *before* the store is read, and every durable
//! event is placed by its seq: anything at or below the last one sent is a duplicate and
//! skipped, anything beyond the next one means a gap that is filled from the store first. So
//! the seam between replay and live has no gap and no duplicate, whatever the debate is doing
//! meanwhile.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::ws::Utf8Bytes;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::connection::error_frame;
use super::fanout::Fan;
use crate::app::AppState;
use crate::auth::Principal;
use crate::bus::LiveEvent;

/// Events read from the store per query while replaying or filling a gap.
const PAGE: u32 = 500;

/// A frame for the connection's writer.
pub enum Out {
    /// A debate event; durable ones carry their seq (the writer tracks the last delivered).
    Event {
        debate_id: Arc<str>,
        seq: Option<i64>,
        json: Utf8Bytes,
        /// The subscription that produced it (the writer drops frames of ended ones).
        sub: u64,
    },
    Control(Utf8Bytes),
}

struct Sub {
    state: AppState,
    debate_id: String,
    tag: Arc<str>,
    id: u64,
    tx: mpsc::Sender<Out>,
    slow: CancellationToken,
    /// Last durable seq handed to the writer.
    cursor: i64,
}

/// Why delivery stopped.
enum Stop {
    /// The client is too slow or gone.
    Client,
    Store(String),
}

impl Sub {
    async fn push(&self, out: Out) -> Result<(), Stop> {
        let wait = self.state.ws.limits.slow_after;
        match self.tx.send_timeout(out, wait).await {
            Ok(()) => Ok(()),
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
                // The queue stayed full: the connection closes with 4008 and the last seq.
                self.slow.cancel();
                Err(Stop::Client)
            }
            Err(mpsc::error::SendTimeoutError::Closed(_)) => Err(Stop::Client),
        }
    }

    async fn push_event(&mut self, seq: Option<i64>, json: Utf8Bytes) -> Result<(), Stop> {
        self.push(Out::Event {
            sub: self.id,
            debate_id: self.tag.clone(),
            seq,
            json,
        })
        .await?;
        if let Some(seq) = seq {
            self.cursor = seq;
        }
        Ok(())
    }

    /// Send every stored event after the cursor (up to `until` when given).
    async fn catch_up(&mut self, until: Option<i64>) -> Result<(), Stop> {
        loop {
            let page = self
                .state
                .store
                .events_since(&self.debate_id, self.cursor, PAGE)
                .await
                .map_err(|e| Stop::Store(e.to_string()))?;
            let full = page.len() as u32 == PAGE;
            for event in &page {
                if until.is_some_and(|u| event.seq > u) {
                    return Ok(());
                }
                let json = serde_json::to_string(&LiveEvent::from(event)).unwrap_or_default();
                self.push_event(Some(event.seq), json.into()).await?;
            }
            if !full {
                return Ok(());
            }
        }
    }
}

/// What to deliver: a debate from `since` on, tagged with the subscription's `id`.
pub struct Target {
    pub debate_id: String,
    pub since: i64,
    pub id: u64,
}

pub async fn run(
    state: AppState,
    principal: Principal,
    Target {
        debate_id,
        since,
        id,
    }: Target,
    tx: mpsc::Sender<Out>,
    slow: CancellationToken,
    cancel: CancellationToken,
) {
    let hub = state.ws.clone();
    // Subscribe first: whatever is published from now on is seen live or found in the store.
    let mut live = hub.fanout.subscribe(&debate_id);
    hub.subscriptions.fetch_add(1, Ordering::Relaxed);
    let mut sub = Sub {
        state: state.clone(),
        tag: Arc::from(debate_id.as_str()),
        id,
        debate_id: debate_id.clone(),
        tx,
        slow,
        cursor: since,
    };
    let result = tokio::select! {
        r = deliver(&mut sub, &principal, &mut live) => r,
        _ = cancel.cancelled() => Ok(()),
    };
    if let Err(Stop::Store(err)) = result {
        tracing::error!(target: "aragora::ws", debate_id = %debate_id, error = %err, "subscription stopped: store unavailable");
        hub.count_error();
        let frame = error_frame(
            "store_unavailable",
            "events could not be read; resubscribe with since",
            Some(&debate_id),
        );
        let _ = sub.tx.try_send(Out::Control(frame.to_string().into()));
    }
    cancel.cancel();
    drop(live);
    hub.fanout.release(&debate_id);
    hub.subscriptions.fetch_sub(1, Ordering::Relaxed);
}

async fn deliver(
    sub: &mut Sub,
    principal: &Principal,
    live: &mut tokio::sync::broadcast::Receiver<Fan>,
) -> Result<(), Stop> {
    let record = sub
        .state
        .store
        .get_debate(&sub.debate_id)
        .await
        .map_err(|e| Stop::Store(e.to_string()))?;
    // A debate the caller may not see over HTTP is "not found" here too. Anonymous readers
    // (`ws_anonymous_read`) see only debates nobody owns.
    let visible = |r: &crate::store::DebateRecord| {
        principal.can_see(r) || (principal.role.is_none() && r.owner_id.is_none())
    };
    let Some(record) = record.filter(visible) else {
        let frame = error_frame(
            "debate_not_found",
            &format!("debate {} not found", sub.debate_id),
            Some(&sub.debate_id),
        );
        sub.push(Out::Control(frame.to_string().into())).await?;
        return Ok(());
    };
    let last_seq = sub
        .state
        .store
        .last_seq(&sub.debate_id)
        .await
        .map_err(|e| Stop::Store(e.to_string()))?;
    let subscribed = json!({
        "type": "subscribed",
        "debate_id": sub.debate_id,
        "status": record.status,
        "last_seq": last_seq,
        "since": sub.cursor,
    });
    sub.push(Out::Control(subscribed.to_string().into()))
        .await?;
    sub.catch_up(None).await?;

    loop {
        match live.recv().await {
            Ok(Fan::Event(event)) => match event.seq {
                Some(seq) if seq <= sub.cursor => {}
                Some(seq) => {
                    if seq > sub.cursor + 1 {
                        sub.catch_up(Some(seq - 1)).await?;
                    }
                    if seq == sub.cursor + 1 {
                        sub.push_event(Some(seq), event.json.clone()).await?;
                    } else if seq > sub.cursor {
                        // The store did not have the missing events yet: read through this one.
                        sub.catch_up(Some(seq)).await?;
                    }
                }
                None => {
                    // Ephemeral (token deltas): live only.
                    sub.push_event(None, event.json.clone()).await?;
                }
            },
            Ok(Fan::Resync) | Err(RecvError::Lagged(_)) => sub.catch_up(None).await?,
            Err(RecvError::Closed) => return Ok(()),
        }
    }
}
