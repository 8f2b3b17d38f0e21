//! One subscription: `subscribed`, then the durable events after `since` from the store,
//! then live events. The live receiver is taken *before* the store is read, and every durable
//! event is placed by its seq: anything at or below the last one sent is a duplicate and
//! skipped, anything beyond the next one means a gap that is filled from the store first. So
//! the seam between replay and live has no gap and no duplicate, whatever the debate is doing
//! meanwhile.
//!
//! The work is split in two phases. The *catch-up* (this module's [`run`], a short-lived task)
//! reads the store after the cursor and queues those events for the connection's writer, while
//! it holds the live receiver without reading it; when the store has nothing more it hands the
//! receiver and its cursor to the connection ([`Out::Live`], queued behind its last event).
//! From then on the connection task itself reads the receiver and writes each live event to
//! the socket ([`Live`] applies the seq rules), one wake-up per watcher per batch of events.
//! It waits for events in the debate's wave (see `wave`), which wakes the watchers a window
//! at a time.
//! A gap, a lagging receiver or a resync signal sends the subscription back to a catch-up
//! with a fresh receiver (taken before that store read) and the same cursor.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};

use axum::extract::ws::Utf8Bytes;
use futures::Stream;
use serde_json::json;
use tokio::sync::broadcast::error::TryRecvError;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::connection::error_frame;
use super::fanout::{Fan, Outgoing};
use super::wave::{self, Wave};
use super::{WsContext, WsHub};
use crate::auth::Principal;
use crate::bus::LiveEvent;

/// Events read from the store per query while replaying or filling a gap.
const PAGE: u32 = 500;

/// What a catch-up queues for the connection's writer.
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
    /// The catch-up is done: the connection delivers live events after the cursor from here on.
    Live(Box<Handoff>),
}

/// A subscription's registration: counted in the stats while it exists, and when it is
/// dropped (the subscription ended, whichever phase it was in) its token is cancelled and the
/// debate's channel released if nobody else watches it.
pub struct Registration {
    hub: Arc<WsHub>,
    debate_id: Arc<str>,
    id: u64,
    token: CancellationToken,
}

impl Registration {
    pub fn new(hub: Arc<WsHub>, debate_id: Arc<str>, id: u64, token: CancellationToken) -> Self {
        hub.subscriptions.fetch_add(1, Ordering::Relaxed);
        Registration {
            hub,
            debate_id,
            id,
            token,
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.token.cancel();
        self.hub.fanout.release(&self.debate_id);
        self.hub.subscriptions.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A live receiver with the registration it belongs to. Field order matters: the receiver is
/// dropped before the registration releases the channel.
pub struct Watch {
    rx: broadcast::Receiver<Fan>,
    wave: Arc<Wave>,
    reg: Registration,
}

impl Watch {
    /// Take the debate's live receiver now (before any store read that relies on it).
    pub fn subscribe(reg: Registration) -> Self {
        let (rx, wave) = reg.hub.fanout.subscribe(&reg.debate_id);
        Watch { rx, wave, reg }
    }

    pub fn id(&self) -> u64 {
        self.reg.id
    }

    pub fn token(&self) -> &CancellationToken {
        &self.reg.token
    }
}

/// A caught-up subscription, ready for live delivery after `cursor`.
pub struct Handoff {
    watch: Watch,
    cursor: i64,
}

impl Handoff {
    pub fn id(&self) -> u64 {
        self.watch.id()
    }

    pub fn debate_id(&self) -> &str {
        &self.watch.reg.debate_id
    }

    pub fn token(&self) -> &CancellationToken {
        self.watch.token()
    }
}

/// A frame taken for the socket: its text and, for a durable event, the debate and seq it
/// delivers (the 4008 reason names the last delivered seq per debate).
pub struct Frame {
    pub text: Utf8Bytes,
    pub mark: Option<(Arc<str>, i64)>,
}

/// What a live subscription yields to the connection.
pub enum Step {
    /// The next event to write.
    Write(Frame),
    /// Events may be missing (a gap before this event, a lagging receiver, a resync): the
    /// subscription goes back to a catch-up, which delivers `pending` in its place.
    CatchUp { pending: Option<Outgoing> },
}

/// The live phase of a subscription, polled by its connection task: the debate's receiver and
/// the last durable seq handed to the writer. Field order matters: the receiver is dropped
/// before the registration releases the channel.
pub struct Live {
    events: wave::Receiver<Fan>,
    debate_id: Arc<str>,
    cursor: i64,
    /// Set once it asked for a catch-up; it yields nothing more (the connection removes it).
    halted: bool,
    reg: Registration,
}

impl Live {
    pub fn new(handoff: Handoff) -> Self {
        let Handoff {
            watch: Watch { rx, wave, reg },
            cursor,
        } = handoff;
        Live {
            events: wave::Receiver::new(rx, &wave),
            debate_id: reg.debate_id.clone(),
            cursor,
            halted: false,
            reg,
        }
    }

    /// Unsubscribed (or its connection ended).
    pub fn is_cancelled(&self) -> bool {
        self.reg.token.is_cancelled()
    }

    /// Back to a catch-up: a fresh receiver is taken now, before the catch-up reads the
    /// store, and this one is dropped (what it still holds is in the store too).
    pub fn restart(self, pending: Option<Outgoing>) -> CatchUp {
        let Live {
            events,
            cursor,
            reg,
            ..
        } = self;
        let watch = Watch::subscribe(reg);
        drop(events);
        CatchUp {
            watch,
            since: cursor,
            first: None,
            pending,
        }
    }
}

impl Stream for Live {
    type Item = Step;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Step>> {
        let this = &mut *self;
        if this.halted {
            return Poll::Pending;
        }
        loop {
            let fan = match ready!(this.events.poll_recv(cx)) {
                Ok(fan) => fan,
                // The channel is gone: the subscription ends.
                Err(TryRecvError::Closed) => return Poll::Ready(None),
                // Fell behind the channel (the missed events are in the store).
                Err(_) => Fan::Resync,
            };
            let step = match fan {
                Fan::Event(event) => match event.seq {
                    Some(seq) if seq <= this.cursor => continue,
                    Some(seq) if seq == this.cursor + 1 => {
                        this.cursor = seq;
                        Step::Write(Frame {
                            text: event.json,
                            mark: Some((this.debate_id.clone(), seq)),
                        })
                    }
                    Some(_) => Step::CatchUp {
                        pending: Some(event),
                    },
                    // Ephemeral (token deltas): live only.
                    None => Step::Write(Frame {
                        text: event.json,
                        mark: None,
                    }),
                },
                Fan::Resync => Step::CatchUp { pending: None },
            };
            if matches!(step, Step::CatchUp { .. }) {
                this.halted = true;
            }
            return Poll::Ready(Some(step));
        }
    }
}

/// A catch-up to run: deliver the stored events after `since` (first checking the debate and
/// sending `subscribed` when `first` carries the subscriber), then hand `watch` to the
/// connection.
pub struct CatchUp {
    pub watch: Watch,
    pub since: i64,
    pub first: Option<Principal>,
    /// The live event that revealed a gap: delivered in its place if the store lacks it.
    pub pending: Option<Outgoing>,
}

struct Sub {
    ws_server: Arc<WsContext>,
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
        let wait = self.ws_server.hub.limits.slow_after;
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
                .ws_server
                .store
                .events_since(&self.tag, self.cursor, PAGE)
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

/// Run a catch-up; on success the subscription continues live in the connection task.
pub async fn run(
    ws_server: Arc<WsContext>,
    CatchUp {
        watch,
        since,
        first,
        pending,
    }: CatchUp,
    tx: mpsc::Sender<Out>,
    slow: CancellationToken,
) {
    let cancel = watch.token().clone();
    let debate_id = watch.reg.debate_id.clone();
    let mut sub = Sub {
        ws_server,
        tag: debate_id.clone(),
        id: watch.id(),
        tx,
        slow,
        cursor: since,
    };
    let result = tokio::select! {
        r = deliver(&mut sub, first, pending) => r,
        _ = cancel.cancelled() => return,
    };
    match result {
        Ok(true) => {
            let handoff = Out::Live(Box::new(Handoff {
                watch,
                cursor: sub.cursor,
            }));
            // Queued behind the events just sent, so the connection goes live after them. If
            // it cannot be queued the subscription ends with it (the watch is dropped).
            tokio::select! {
                _ = sub.push(handoff) => {}
                _ = cancel.cancelled() => {}
            }
        }
        Ok(false) | Err(Stop::Client) => {}
        Err(Stop::Store(err)) => {
            tracing::error!(target: "aragora::ws", debate_id = %debate_id, error = %err, "subscription stopped: store unavailable");
            sub.ws_server.hub.count_error();
            let frame = error_frame(
                "store_unavailable",
                "events could not be read; resubscribe with since",
                Some(&debate_id),
            );
            let _ = sub.tx.try_send(Out::Control(frame.to_string().into()));
        }
    }
    // Unless handed over, the watch is dropped here: the subscription ends.
}

/// Deliver the stored events; `Ok(true)` when the subscription should go live.
async fn deliver(
    sub: &mut Sub,
    first: Option<Principal>,
    pending: Option<Outgoing>,
) -> Result<bool, Stop> {
    if let Some(principal) = first {
        let record = sub
            .ws_server
            .store
            .get_debate(&sub.tag)
            .await
            .map_err(|e| Stop::Store(e.to_string()))?;
        // A debate the caller may not see over HTTP is "not found" here too. Anonymous
        // readers (`ws_anonymous_read`) see only debates nobody owns.
        let visible = |r: &crate::store::DebateRecord| {
            principal.can_see(r) || (principal.role.is_none() && r.owner_id.is_none())
        };
        let Some(record) = record.filter(visible) else {
            let frame = error_frame(
                "debate_not_found",
                &format!("debate {} not found", sub.tag),
                Some(&sub.tag),
            );
            sub.push(Out::Control(frame.to_string().into())).await?;
            return Ok(false);
        };
        let last_seq = sub
            .ws_server
            .store
            .last_seq(&sub.tag)
            .await
            .map_err(|e| Stop::Store(e.to_string()))?;
        let subscribed = json!({
            "type": "subscribed",
            "debate_id": &*sub.tag,
            "status": record.status,
            "last_seq": last_seq,
            "since": sub.cursor,
        });
        sub.push(Out::Control(subscribed.to_string().into()))
            .await?;
    }
    if let Some(Outgoing {
        seq: Some(seq),
        json,
    }) = pending
    {
        // A gap before `seq`: fill it from the store, then this event (unless the store
        // already had it too).
        if seq > sub.cursor + 1 {
            sub.catch_up(Some(seq - 1)).await?;
        }
        if seq == sub.cursor + 1 {
            sub.push_event(Some(seq), json).await?;
        }
    }
    // Everything stored after the cursor: the fresh receiver has whatever comes later.
    sub.catch_up(None).await?;
    Ok(true)
}
