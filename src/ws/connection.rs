//! One WebSocket connection: one task that reads the client's messages, writes frames, and
//! itself receives the live events of its subscriptions from the debates' broadcast channels
//! (one wake-up per watcher for whatever is ready, written in one batch with one flush). The
//! catch-up of a subscription from the store runs as a short task that queues its frames; see
//! `subscription`. Also the heartbeat, protocol pings and the close codes.

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::StreamMap;
use tokio_util::sync::CancellationToken;

use super::WsContext;
use super::subscription::{self, CatchUp, Frame, Live, Out, Registration, Step, Watch};
use super::{HEARTBEAT_INTERVAL, IDLE_TIMEOUT, MAX_SUBSCRIPTIONS, PING_INTERVAL, close_code};
use crate::auth::Principal;

type Sink = SplitSink<WebSocket, Message>;

/// Most frames written with one flush.
const WRITE_BATCH: usize = 64;

/// A subscription of this connection: stop it with `token`; `id` tags its frames.
struct SubHandle {
    token: CancellationToken,
    id: u64,
}

/// Why the connection ends, and the close frame it gets.
struct Close(u16, String);

/// Live subscriptions that asked to go back to a catch-up.
type Restarts = Vec<(u64, Step)>;

/// Take what is ready without waiting, until `queue` holds `limit` frames: first what the
/// catch-ups queued (when `rx` is given; a hand-over makes its subscription live), then live
/// events. Ready when a frame was added or a subscription must catch up; otherwise every
/// source has this task's waker (`queue` must have room when called).
fn poll_take(
    cx: &mut Context<'_>,
    rx: Option<&mut mpsc::Receiver<Out>>,
    live: &mut StreamMap<u64, Live>,
    subs: &HashMap<String, SubHandle>,
    queue: &mut VecDeque<Frame>,
    restarts: &mut Restarts,
    limit: usize,
) -> Poll<()> {
    let before = queue.len();
    if let Some(rx) = rx {
        while queue.len() < limit {
            let Poll::Ready(Some(out)) = rx.poll_recv(cx) else {
                break;
            };
            match out {
                Out::Event {
                    debate_id,
                    seq,
                    json,
                    sub,
                } => {
                    // Frames queued before an unsubscribe (or by an earlier subscription to
                    // the same debate) are not sent.
                    if subs.get(&*debate_id).map(|h| h.id) == Some(sub) {
                        queue.push_back(Frame {
                            text: json,
                            mark: seq.map(|s| (debate_id, s)),
                        });
                    }
                }
                Out::Control(text) => queue.push_back(Frame { text, mark: None }),
                Out::Live(handoff) => {
                    let current = subs.get(handoff.debate_id()).map(|h| h.id) == Some(handoff.id());
                    if current && !handoff.token().is_cancelled() {
                        live.insert(handoff.id(), Live::new(*handoff));
                    }
                }
            }
        }
    }
    while queue.len() < limit {
        match live.poll_next_unpin(cx) {
            Poll::Ready(Some((_, Step::Write(frame)))) => queue.push_back(frame),
            Poll::Ready(Some((id, step))) => restarts.push((id, step)),
            // No live subscription, or none has anything now.
            Poll::Ready(None) | Poll::Pending => break,
        }
    }
    if queue.len() > before || !restarts.is_empty() {
        Poll::Ready(())
    } else {
        Poll::Pending
    }
}

/// How writing a batch ended.
enum Written {
    Done,
    Gone,
    /// The queue stayed full.
    Slow,
    /// The connection's token: shutdown, reload, or a catch-up found the queue full.
    Stopped,
}

pub async fn serve(
    socket: WebSocket,
    ws_server: Arc<WsContext>,
    peer: SocketAddr,
    initial: Option<(String, i64)>,
    principal: Principal,
) {
    let hub = ws_server.hub.clone();
    let (mut sink, mut stream) = socket.split();
    let _admission = match hub.admit(peer.ip()) {
        Ok(a) => a,
        Err(reason) => {
            hub.rejected.fetch_add(1, Ordering::Relaxed);
            hub.count_error();
            tracing::warn!(target: "aragora::ws", peer = %peer.ip(), %reason, "websocket connection refused");
            let _ = close(&mut sink, Close(close_code::LIMITS, reason.to_string())).await;
            return;
        }
    };
    // The reload token is taken before the client hears anything: a SIGUSR1 that comes after
    // it has read `connection_info` always closes this connection (taken later, a reload in
    // between would hand this connection the new token and leave it open).
    let reload = hub.reload_token();
    let client_id = format!("ws-{}", hub.next_client.fetch_add(1, Ordering::Relaxed));
    let span = tracing::info_span!("ws", %client_id);
    let _enter = span.enter();
    tracing::info!(target: "aragora::ws", peer = %peer.ip(), "websocket connected");
    drop(_enter);

    let info = json!({
        "type": "connection_info",
        "data": {
            "client_id": client_id,
            "authenticated": principal.authenticated(),
            "server_version": env!("CARGO_PKG_VERSION"),
            "heartbeat_interval_s": HEARTBEAT_INTERVAL.as_secs(),
        }
    });
    if sink
        .send(Message::Text(info.to_string().into()))
        .await
        .is_err()
    {
        return;
    }

    // Frames of catch-ups (and their hand-overs), bounded: a catch-up that finds it full for
    // `slow_after` signals `slow`.
    let (tx, mut rx) = mpsc::channel::<Out>(hub.limits.send_queue);
    let ended = CancellationToken::new();
    let mut subs: HashMap<String, SubHandle> = HashMap::new();
    // Subscriptions in their live phase, by id: this task receives their events.
    let mut live: StreamMap<u64, Live> = StreamMap::new();
    // Frames taken and not yet written, in order.
    let mut queue: VecDeque<Frame> = VecDeque::new();
    let mut restarts: Restarts = Vec::new();
    let next_sub = std::sync::atomic::AtomicU64::new(0);
    let mut delivered: HashMap<Arc<str>, i64> = HashMap::new();
    // One token of this connection's own ends it: cancelled by a catch-up that found the
    // queue full (slow), and, as the descendant of the reload token, itself a child of the
    // shutdown token, by a reload or by shutdown; `stop_reason` says which. Waiting on it
    // locks only this connection's node, where waiting on the server-wide tokens would lock
    // theirs on every wake-up of every connection.
    let slow = reload.child_token();
    let catch_up = |job: CatchUp| {
        ws_server.tasks.spawn(subscription::run(
            ws_server.clone(),
            job,
            tx.clone(),
            slow.clone(),
        ));
    };
    let start = |subs: &mut HashMap<String, SubHandle>, debate_id: String, since: i64| {
        let token = ended.child_token();
        let id = next_sub.fetch_add(1, Ordering::Relaxed) + 1;
        let reg = Registration::new(
            hub.clone(),
            Arc::from(debate_id.as_str()),
            id,
            token.clone(),
        );
        subs.insert(debate_id, SubHandle { token, id });
        // The live receiver is taken here, before the catch-up reads the store.
        catch_up(CatchUp {
            watch: Watch::subscribe(reg),
            since,
            first: Some(principal.clone()),
            pending: None,
        });
    };
    if let Some((debate_id, since)) = initial {
        start(&mut subs, debate_id, since);
    }

    let mut heartbeat =
        tokio::time::interval_at(Instant::now() + HEARTBEAT_INTERVAL, HEARTBEAT_INTERVAL);
    let mut ping = tokio::time::interval_at(Instant::now() + PING_INTERVAL, PING_INTERVAL);
    let last_heard = Instant::now();
    let send_queue = hub.limits.send_queue;
    let slow_after = hub.limits.slow_after;

    let restart = |live: &mut StreamMap<u64, Live>, restarts: &mut Restarts| {
        for (id, step) in restarts.drain(..) {
            if let (Some(sub), Step::CatchUp { pending }) = (live.remove(&id), step) {
                catch_up(sub.restart(pending));
            }
        }
    };
    // Created once, not on every wake-up: each would register with (and leave) a shared
    // notifier or the timer every time the task runs.
    let slowed = slow.cancelled();
    let idle = tokio::time::sleep_until(last_heard + IDLE_TIMEOUT);
    tokio::pin!(slowed, idle);
    let stop_reason = |delivered: &HashMap<Arc<str>, i64>| {
        if ws_server.shutdown.is_cancelled() {
            Close(close_code::GOING_AWAY, "server shutting down".into())
        } else if reload.is_cancelled() {
            Close(
                close_code::SERVICE_RESTART,
                "websocket reload; reconnect and resume with since".into(),
            )
        } else {
            hub.slow_dropped.fetch_add(1, Ordering::Relaxed);
            Close(close_code::SLOW_CONSUMER, slow_reason(delivered))
        }
    };

    let reason: Option<Close> = loop {
        restart(&mut live, &mut restarts);
        if !queue.is_empty() {
            // Write what was taken in one go: frames are fed into the socket's buffer and
            // flushed once (one write for the batch, not one per frame).
            let n = queue.len().min(WRITE_BATCH);
            // Allocated per batch: a buffer kept for the next one would stay resident in
            // every idle connection.
            let mut batch: Vec<Frame> = queue.drain(..n).collect();
            let mut fed = 0u64;
            let written = {
                let write = async {
                    for Frame { text, mark } in batch.drain(..) {
                        sink.feed(Message::Text(text)).await?;
                        fed += 1;
                        // Fed frames sit in the write buffer ahead of any close frame:
                        // delivered.
                        if let Some((debate_id, seq)) = mark {
                            match delivered.get_mut(&debate_id) {
                                Some(last) => *last = seq,
                                None => {
                                    delivered.insert(debate_id, seq);
                                }
                            }
                        }
                    }
                    sink.flush().await
                };
                tokio::pin!(write);
                // A client that stops reading blocks the flush. Meanwhile live events are
                // still taken, into the queue, up to the send queue's size (with what the
                // catch-ups queued); a queue that stays full for `slow_after` means the client
                // is too slow (4008), as does a catch-up that found its queue full.
                let mut full_since: Option<Instant> = None;
                loop {
                    let full = queue.len() + rx.len() >= send_queue;
                    if !full {
                        full_since = None;
                    } else if full_since.is_none() {
                        full_since = Some(Instant::now());
                    }
                    let deadline = full_since.map(|t| t + slow_after);
                    tokio::select! {
                        biased;
                        r = &mut write => break if r.is_ok() { Written::Done } else { Written::Gone },
                        _ = &mut slowed => break Written::Stopped,
                        _ = async { tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)).await }, if deadline.is_some() => break Written::Slow,
                        _ = poll_fn(|cx| poll_take(cx, None, &mut live, &subs, &mut queue, &mut restarts, send_queue)), if !full => {
                            restart(&mut live, &mut restarts);
                        }
                    }
                }
            };
            drop(batch);
            match written {
                Written::Done => {
                    hub.messages_sent.fetch_add(fed, Ordering::Relaxed);
                    continue;
                }
                Written::Gone => break None,
                Written::Stopped => break Some(stop_reason(&delivered)),
                Written::Slow => {
                    hub.slow_dropped.fetch_add(1, Ordering::Relaxed);
                    break Some(Close(close_code::SLOW_CONSUMER, slow_reason(&delivered)));
                }
            }
        }
        tokio::select! {
            biased;
            _ = &mut slowed => break Some(stop_reason(&delivered)),
            _ = poll_fn(|cx| poll_take(cx, Some(&mut rx), &mut live, &subs, &mut queue, &mut restarts, WRITE_BATCH)) => {}
            incoming = stream.next() => {
                idle.as_mut().reset(Instant::now() + IDLE_TIMEOUT);
                match incoming {
                    Some(Ok(Message::Text(text))) => {
                        let reply = handle_text(&text, &mut subs, &start);
                        // Unsubscribed: its live events stop here.
                        let stopped: Vec<u64> = live
                            .iter()
                            .filter(|(_, sub)| sub.is_cancelled())
                            .map(|(id, _)| *id)
                            .collect();
                        for id in stopped {
                            live.remove(&id);
                        }
                        if let Some(reply) = reply {
                            if sink.send(Message::Text(reply.to_string().into())).await.is_err() {
                                break None;
                            }
                            hub.messages_sent.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        let reply = error_frame("binary_not_supported", "send JSON text frames", None);
                        if sink.send(Message::Text(reply.to_string().into())).await.is_err() {
                            break None;
                        }
                    }
                    Some(Ok(Message::Close(_))) | None => break None,
                    Some(Ok(_)) => {}
                    Some(Err(err)) => {
                        hub.count_error();
                        let text = err.to_string().to_ascii_lowercase();
                        if text.contains("too long") || text.contains("too big") || text.contains("capacity") {
                            break Some(Close(close_code::TOO_BIG, "message larger than 64 KiB".into()));
                        }
                        tracing::debug!(target: "aragora::ws", %client_id, error = %err, "websocket read error");
                        break None;
                    }
                }
            }
            _ = heartbeat.tick() => {
                let beat = json!({"type": "heartbeat", "ts": chrono::Utc::now().timestamp_millis()});
                if sink.send(Message::Text(beat.to_string().into())).await.is_err() {
                    break None;
                }
                hub.messages_sent.fetch_add(1, Ordering::Relaxed);
            }
            _ = ping.tick() => {
                if sink.send(Message::Ping(Vec::new().into())).await.is_err() {
                    break None;
                }
            }
            _ = &mut idle => {
                break Some(Close(close_code::GOING_AWAY, format!("no traffic from the client for {} s", IDLE_TIMEOUT.as_secs())));
            }
        }
    };
    ended.cancel();
    drop(live);
    if let Some(reason) = reason {
        if reason.0 == close_code::SLOW_CONSUMER {
            tracing::warn!(target: "aragora::ws", %client_id, reason = %reason.1, "slow websocket client dropped");
        }
        let _ = close(&mut sink, reason).await;
        // Give the peer a moment to answer the close handshake.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(msg)) = stream.next().await {
                if matches!(msg, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
    tracing::info!(target: "aragora::ws", %client_id, "websocket disconnected");
}

/// Close a connection whose credentials were refused (1008) or could not be checked (1013)
/// without serving it.
pub async fn refuse(socket: WebSocket, peer: SocketAddr, code: u16, reason: &str) {
    tracing::info!(target: "aragora::ws", peer = %peer.ip(), code, reason, "websocket refused: authentication");
    let (mut sink, _stream) = socket.split();
    let _ = close(&mut sink, Close(code, reason.to_owned())).await;
}

/// Send a close frame without waiting forever on a peer that stopped reading.
async fn close(sink: &mut Sink, Close(code, reason): Close) -> Result<(), ()> {
    let frame = Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from(truncate(&reason, 123)),
    }));
    match tokio::time::timeout(Duration::from_secs(1), sink.send(frame)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// The 4008 reason: the last seq delivered per debate, so the client resumes with `since`.
fn slow_reason(delivered: &HashMap<Arc<str>, i64>) -> String {
    match delivered.len() {
        0 => "slow consumer; last seq 0".to_owned(),
        1 => {
            let seq = delivered.values().next().copied().unwrap_or(0);
            format!("slow consumer; last seq {seq}")
        }
        _ => {
            let mut parts: Vec<String> =
                delivered.iter().map(|(d, s)| format!("{d}:{s}")).collect();
            parts.sort();
            truncate(&format!("slow consumer; last seq {}", parts.join(",")), 123)
        }
    }
}

pub fn error_frame(code: &str, message: &str, debate_id: Option<&str>) -> Value {
    let mut data = json!({"code": code, "message": message});
    if let Some(id) = debate_id {
        data["debate_id"] = json!(id);
    }
    json!({"type": "error", "data": data})
}

fn handle_text(
    text: &str,
    subs: &mut HashMap<String, SubHandle>,
    start: &impl Fn(&mut HashMap<String, SubHandle>, String, i64),
) -> Option<Value> {
    let Ok(msg) = serde_json::from_str::<Value>(text) else {
        return Some(error_frame(
            "invalid_json",
            "message is not valid JSON",
            None,
        ));
    };
    // Subscriptions that ended by themselves (unknown debate, slow) no longer count.
    subs.retain(|_, handle| !handle.token.is_cancelled());
    match msg.get("type").and_then(Value::as_str) {
        Some("ping") => {
            Some(json!({"type": "pong", "ts": msg.get("ts").cloned().unwrap_or(Value::Null)}))
        }
        Some("subscribe") => {
            let Some(debate_id) = msg
                .get("debate_id")
                .and_then(Value::as_str)
                .map(str::to_owned)
            else {
                return Some(error_frame(
                    "invalid_message",
                    "`subscribe` needs a `debate_id`",
                    None,
                ));
            };
            let since = match msg.get("since").or_else(|| msg.get("replay_from_seq")) {
                None | Some(Value::Null) => 0,
                Some(v) => match v.as_i64() {
                    Some(n) if n >= 0 => n,
                    _ => {
                        return Some(error_frame(
                            "invalid_message",
                            "`since` must be a seq ≥ 0",
                            Some(&debate_id),
                        ));
                    }
                },
            };
            if subs.contains_key(&debate_id) {
                return Some(error_frame(
                    "already_subscribed",
                    "already subscribed to this debate; unsubscribe first",
                    Some(&debate_id),
                ));
            }
            if subs.len() >= MAX_SUBSCRIPTIONS {
                return Some(error_frame(
                    "too_many_subscriptions",
                    &format!("at most {MAX_SUBSCRIPTIONS} subscriptions per connection"),
                    Some(&debate_id),
                ));
            }
            start(subs, debate_id, since);
            None
        }
        Some("unsubscribe") => {
            let Some(debate_id) = msg.get("debate_id").and_then(Value::as_str) else {
                return Some(error_frame(
                    "invalid_message",
                    "`unsubscribe` needs a `debate_id`",
                    None,
                ));
            };
            match subs.remove(debate_id) {
                Some(handle) => {
                    handle.token.cancel();
                    Some(json!({"type": "unsubscribed", "debate_id": debate_id}))
                }
                None => Some(error_frame(
                    "not_subscribed",
                    "not subscribed to this debate",
                    Some(debate_id),
                )),
            }
        }
        Some(other) => Some(error_frame(
            "unsupported",
            &format!("message type `{other}` is not supported"),
            None,
        )),
        None => Some(error_frame(
            "invalid_message",
            "message has no `type`",
            None,
        )),
    }
}
