//! Wake-ups in waves. When an event reaches a debate's channel, its watchers are not all
//! woken at once: [`WINDOW`] of them are, and each one that takes the event (or parks, or
//! leaves) wakes the next in line. So at most a window of watcher tasks is ready at any time.
//!
//! Why: waking 10,000 tasks together fills the runtime's queues with them, and every task
//! woken from outside the runtime meanwhile (a database driver's reply, a timer) is queued
//! behind the whole sweep. The debate that produced the event waits for its next store round
//! trip behind its own fan-out, several times per event (docs/benchmarks.md, "Where the
//! fan-out's latency comes from"). With a wave, such a wake-up waits behind at most a window.
//!
//! A turn is never lost: a watcher that was woken and then takes the event, finds nothing,
//! or goes away hands its slot on. A woken watcher that is not polled for [`STALL`] (its
//! connection is stuck writing to a client that stopped reading) no longer holds a slot:
//! [`Wave::unstick`], called by the dispatcher while a wave is open, releases the window, and
//! the straggler still reads the event whenever its task runs.

use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;
use tokio::sync::broadcast::error::TryRecvError;

/// Watchers of one debate woken and not yet done with the event.
pub const WINDOW: usize = 64;
/// A window with no progress for this long is released.
pub const STALL: Duration = Duration::from_millis(5);

/// One debate's watchers waiting for events, and the wave in progress.
#[derive(Default)]
pub struct Wave {
    state: Mutex<State>,
    next_id: AtomicU64,
}

/// Where a registered watcher stands. A watcher not in the map is running (or has not
/// waited yet): it reads the channel itself before it waits again.
enum Turn {
    /// Found the channel empty; woken in the next wave.
    Parked(Waker),
    /// An event came: waits for its turn in the wave.
    Queued(Waker),
    /// Woken: holds a slot of the window until it takes the event, parks or leaves.
    Woken,
}

#[derive(Default)]
struct State {
    members: HashMap<u64, Turn>,
    /// Ids parked since the last ring (may hold ids that moved on since: checked on use).
    parked: Vec<u64>,
    /// The wave's order (likewise checked on use).
    queue: VecDeque<u64>,
    /// Members in `Turn::Woken`.
    woken: usize,
    /// When a slot was last handed on.
    progress: Option<Instant>,
}

impl State {
    /// Wake queued members until the window is full.
    fn advance(&mut self) {
        while self.woken < WINDOW {
            let Some(id) = self.queue.pop_front() else {
                return;
            };
            let Some(turn) = self.members.get_mut(&id) else {
                continue;
            };
            match std::mem::replace(turn, Turn::Woken) {
                Turn::Queued(waker) => {
                    self.woken += 1;
                    // Waking only schedules the task; it does not run it here, under the lock.
                    waker.wake();
                }
                // Moved on since it was queued (read early, parked again): not its turn.
                other => *turn = other,
            }
        }
    }

    /// A woken member no longer holds its slot: the next in line gets it.
    fn hand_on(&mut self) {
        self.woken -= 1;
        self.progress = Some(Instant::now());
        self.advance();
    }
}

impl Wave {
    pub fn join(self: &Arc<Self>) -> Member {
        Member {
            wave: self.clone(),
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// An event was sent: every parked watcher gets a turn, a window of them now. True
    /// while some still wait for their turn (the dispatcher then watches for a stall).
    pub fn ring(&self) -> bool {
        let mut state = self.state.lock();
        let state = &mut *state;
        for id in state.parked.drain(..) {
            let Some(turn) = state.members.get_mut(&id) else {
                continue;
            };
            match std::mem::replace(turn, Turn::Woken) {
                Turn::Parked(waker) => {
                    *turn = Turn::Queued(waker);
                    state.queue.push_back(id);
                }
                other => *turn = other,
            }
        }
        if state.woken == 0 {
            state.progress = Some(Instant::now());
        }
        state.advance();
        !state.queue.is_empty()
    }

    /// Release a window that made no progress for [`STALL`]: its members stay woken (they
    /// read the event when their tasks run) but no longer hold the others back. True while
    /// some still wait for their turn.
    pub fn unstick(&self) -> bool {
        let mut state = self.state.lock();
        if state.queue.is_empty() {
            return false;
        }
        let stalled = state.woken >= WINDOW && state.progress.is_none_or(|t| t.elapsed() >= STALL);
        if stalled {
            state.members.retain(|_, turn| !matches!(turn, Turn::Woken));
            state.woken = 0;
            state.progress = Some(Instant::now());
            state.advance();
        }
        !state.queue.is_empty()
    }

    /// Registered members (parked, queued or woken).
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.state.lock().members.len()
    }

    #[cfg(test)]
    fn woken(&self) -> usize {
        self.state.lock().woken
    }
}

/// A watcher's place in its debate's wave; leaving (drop) hands on any slot it holds.
pub struct Member {
    wave: Arc<Wave>,
    id: u64,
}

impl Member {
    /// The channel is empty: wake `waker` in the next wave. Call before reading the channel
    /// once more (an event sent in between is then either read or rings this waker).
    pub fn park(&self, waker: &Waker) {
        let mut state = self.wave.state.lock();
        let state = &mut *state;
        match state.members.get_mut(&self.id) {
            // Already waiting its turn for an event: keep the place, with this waker.
            Some(Turn::Queued(w) | Turn::Parked(w)) => {
                if !w.will_wake(waker) {
                    *w = waker.clone();
                }
            }
            Some(turn @ Turn::Woken) => {
                *turn = Turn::Parked(waker.clone());
                state.parked.push(self.id);
                state.hand_on();
            }
            None => {
                state.members.insert(self.id, Turn::Parked(waker.clone()));
                state.parked.push(self.id);
            }
        }
    }

    /// The watcher read an event after parking: it no longer waits.
    pub fn arrived(&self) {
        let mut state = self.wave.state.lock();
        if let Some(Turn::Woken) = state.members.remove(&self.id) {
            state.hand_on();
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.arrived();
    }
}

/// A broadcast receiver that waits in a wave: it reads the channel with `try_recv` only and
/// parks in the wave when it is empty, so the channel itself never wakes it. Field order
/// matters: the member leaves (handing on any slot it holds) before the receiver goes.
pub struct Receiver<T> {
    member: Member,
    rx: broadcast::Receiver<T>,
    /// Parked in the wave, until it reads an event.
    parked: bool,
}

impl<T: Clone> Receiver<T> {
    pub fn new(rx: broadcast::Receiver<T>, wave: &Arc<Wave>) -> Self {
        Receiver {
            member: wave.join(),
            rx,
            parked: false,
        }
    }

    /// The next event, or why there is none (`Closed`, `Lagged`); never `Empty`.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<T, TryRecvError>> {
        loop {
            match self.rx.try_recv() {
                Err(TryRecvError::Empty) => {
                    // Parked already, and still nothing: this may be the wake-up of a ring
                    // for an event it had read before the ring; parking again hands that
                    // turn on and waits for the next ring (keeping the place if it is still
                    // queued).
                    self.member.park(cx.waker());
                    if std::mem::replace(&mut self.parked, true) {
                        return Poll::Pending;
                    }
                    // Just parked: read once more. An event sent before the park is read
                    // now, one sent after it rings this waker.
                }
                other => {
                    if std::mem::take(&mut self.parked) {
                        self.member.arrived();
                    }
                    return Poll::Ready(other);
                }
            }
        }
    }
}

/// A watcher that stopped reading, for tests: it parks on its first poll (nothing may have
/// been sent yet), then ignores every wake-up while keeping its place.
#[cfg(test)]
pub(super) fn spawn_stuck<T: Clone + Send + 'static>(
    mut r: Receiver<T>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        std::future::poll_fn(|cx| {
            assert!(r.poll_recv(cx).is_pending());
            Poll::Ready(())
        })
        .await;
        std::future::pending::<()>().await;
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    /// A waker that counts its wake-ups.
    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn watchers(wave: &Arc<Wave>, n: usize) -> Vec<(Member, Arc<Count>, Waker)> {
        (0..n)
            .map(|_| {
                let count = Arc::new(Count(AtomicUsize::new(0)));
                let waker = Waker::from(count.clone());
                let member = wave.join();
                member.park(&waker);
                (member, count, waker)
            })
            .collect()
    }

    fn woken(ws: &[(Member, Arc<Count>, Waker)]) -> usize {
        ws.iter()
            .filter(|(_, c, _)| c.0.load(Ordering::SeqCst) > 0)
            .count()
    }

    #[test]
    fn a_ring_wakes_one_window_and_each_arrival_wakes_the_next() {
        let wave = Arc::new(Wave::default());
        let ws = watchers(&wave, 3 * WINDOW);
        assert!(wave.ring(), "watchers beyond the window still wait");
        assert_eq!(woken(&ws), WINDOW);
        // The first woken takes the event: exactly one more is woken, the next in order.
        ws[0].0.arrived();
        assert_eq!(woken(&ws), WINDOW + 1);
        assert_eq!(ws[WINDOW].1.0.load(Ordering::SeqCst), 1);
        // Everyone takes the event in turn: all are woken exactly once.
        for (m, _, _) in ws.iter().skip(1) {
            m.arrived();
        }
        assert!(
            ws.iter().all(|(_, c, _)| c.0.load(Ordering::SeqCst) == 1),
            "each watcher is woken once per event"
        );
        assert_eq!(wave.waiting(), 0);
        assert_eq!(wave.woken(), 0);
        assert!(!wave.ring(), "nobody parked: nothing to wake");
    }

    #[test]
    fn a_watcher_that_leaves_or_parks_again_hands_on_its_slot() {
        let wave = Arc::new(Wave::default());
        let mut ws = watchers(&wave, WINDOW + 2);
        wave.ring();
        assert_eq!(woken(&ws), WINDOW);
        // Dropped while woken (its connection ended): the next one gets the slot.
        let (gone, _, _) = ws.remove(0);
        drop(gone);
        assert_eq!(woken(&ws), WINDOW);
        assert_eq!(ws[WINDOW - 1].1.0.load(Ordering::SeqCst), 1);
        // Woken but found nothing (parks again): the last one gets the slot.
        let (m, _, w) = &ws[0];
        m.park(w);
        assert_eq!(woken(&ws), WINDOW + 1);
        assert_eq!(wave.woken(), WINDOW);
        // It waits for the next event again, not this one.
        assert_eq!(ws[0].1.0.load(Ordering::SeqCst), 1);
        for (m, _, _) in ws.iter().skip(1) {
            m.arrived();
        }
        assert_eq!(wave.woken(), 0);
        wave.ring();
        assert_eq!(
            ws[0].1.0.load(Ordering::SeqCst),
            2,
            "rung for the next event"
        );
    }

    #[test]
    fn a_queued_watcher_that_reads_early_is_not_woken_again() {
        let wave = Arc::new(Wave::default());
        let ws = watchers(&wave, WINDOW + 1);
        wave.ring();
        let late = &ws[WINDOW];
        assert_eq!(late.1.0.load(Ordering::SeqCst), 0);
        // Its task ran for another reason and read the event before its turn.
        late.0.arrived();
        for (m, _, _) in ws.iter().take(WINDOW) {
            m.arrived();
        }
        assert_eq!(
            late.1.0.load(Ordering::SeqCst),
            0,
            "no wake-up it no longer needs"
        );
        assert_eq!(wave.waiting(), 0);
    }

    #[test]
    fn a_stalled_window_is_released_after_the_stall_time() {
        let wave = Arc::new(Wave::default());
        let ws = watchers(&wave, 2 * WINDOW);
        wave.ring();
        assert_eq!(woken(&ws), WINDOW);
        // Nobody woken makes progress (every client stopped reading).
        assert!(wave.unstick(), "too early: still waiting");
        assert_eq!(woken(&ws), WINDOW);
        std::thread::sleep(STALL + Duration::from_millis(2));
        assert!(!wave.unstick(), "released: the rest are woken");
        assert_eq!(woken(&ws), 2 * WINDOW);
        // The stragglers' late arrivals take nothing from anyone.
        for (m, _, _) in &ws {
            m.arrived();
        }
        assert_eq!(wave.woken(), 0);
        assert_eq!(wave.waiting(), 0);
    }

    #[test]
    fn a_ring_for_an_event_already_read_does_not_cost_the_next_one() {
        let (tx, _) = broadcast::channel::<u64>(16);
        let wave = Arc::new(Wave::default());
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mut r = Receiver::new(tx.subscribe(), &wave);
        assert!(r.poll_recv(&mut cx).is_pending());
        // The event is read before the dispatcher rings for it (the task ran for another
        // reason), and the watcher parks again.
        tx.send(1).unwrap();
        assert_eq!(r.poll_recv(&mut cx), Poll::Ready(Ok(1)));
        assert!(r.poll_recv(&mut cx).is_pending());
        // The late ring wakes it for nothing: it parks again and gives the slot back.
        wave.ring();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(r.poll_recv(&mut cx).is_pending());
        assert_eq!(wave.woken(), 0);
        // And the next event wakes it.
        tx.send(2).unwrap();
        wave.ring();
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
        assert_eq!(r.poll_recv(&mut cx), Poll::Ready(Ok(2)));
        assert_eq!(wave.waiting(), 0);
    }

    /// Real tasks on a two-worker runtime: every watcher that keeps reading gets every
    /// event once and in order, whether others leave early or stop reading once woken.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_reading_watcher_gets_every_event_in_order() {
        const EVENTS: u64 = 300;
        let (tx, _) = broadcast::channel::<u64>(1024);
        let wave = Arc::new(Wave::default());
        // A full window of watchers first in line that park, are woken and never read:
        // clients that stopped reading. Only the stall release gets past them.
        let mut stuck = Vec::new();
        for _ in 0..WINDOW + 3 {
            stuck.push(spawn_stuck(Receiver::new(tx.subscribe(), &wave)));
        }
        while wave.waiting() < WINDOW + 3 {
            tokio::task::yield_now().await;
        }
        let mut readers = tokio::task::JoinSet::new();
        for i in 0..3 * WINDOW + 7 {
            let mut r = Receiver::new(tx.subscribe(), &wave);
            // Every fifth leaves after ten events (its connection closed).
            let quits_after = if i % 5 == 0 { 10 } else { EVENTS };
            readers.spawn(async move {
                let mut got = Vec::new();
                while (got.len() as u64) < quits_after {
                    match std::future::poll_fn(|cx| r.poll_recv(cx)).await {
                        Ok(v) => got.push(v),
                        Err(e) => panic!("watcher fell off the channel: {e}"),
                    }
                }
                (quits_after, got)
            });
        }
        // The dispatcher's part: the stall check while a wave is open.
        let unsticker = {
            let wave = wave.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(STALL).await;
                    wave.unstick();
                }
            })
        };
        for v in 0..EVENTS {
            tx.send(v).unwrap();
            wave.ring();
            if v % 16 == 0 {
                tokio::task::yield_now().await;
            }
        }
        let all = tokio::time::timeout(Duration::from_secs(120), readers.join_all())
            .await
            .expect("every watcher that reads finishes");
        assert_eq!(all.len(), 3 * WINDOW + 7);
        for (want, got) in all {
            assert_eq!(
                got,
                (0..want).collect::<Vec<_>>(),
                "every event, once, in order"
            );
        }
        unsticker.abort();
        for s in stuck {
            s.abort();
        }
    }
}
