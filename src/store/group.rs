//! Group commit for the appends of running debates.
//!
//! Every step of a running debate is one append, and with thousands of debates running the
//! database spends its time on the statements and commits around the rows rather than on
//! the rows: each append was its own statement, its own transaction and its own WAL flush.
//! Here the appends that arrive while a write is in flight wait in a queue and the next write
//! takes all of them, through [`Store::append_steps`](super::Store::append_steps): one
//! statement and one commit for every debate that had a step ready. Under light load a write
//! carries one step and costs what a lone append costs; under heavy load the batches grow by
//! themselves, since more steps arrive while each write runs.
//!
//! A step keeps its own outcome: a step whose lease was lost is refused alone. When the
//! database refuses the whole statement (nothing was written) each step of it is written
//! alone, so one debate's fault stays its own; when the connection was lost (the write may
//! have committed) every caller gets the transient error, and the debate's recorder, which
//! reads the log back before trying again, decides.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};

use tokio::sync::{Mutex, mpsc, oneshot};

use super::{DynStore, StepWrite, StoreError, StoreResult, StoredEvent, is_connectivity_error};

/// Most steps one write carries.
const MAX_STEPS: usize = 512;

type Reply = oneshot::Sender<StoreResult<Vec<StoredEvent>>>;

struct Item {
    step: Arc<StepWrite>,
    reply: Reply,
}

/// The queue in front of a store's appends; see the module documentation.
pub struct GroupCommit {
    store: DynStore,
    queue: mpsc::UnboundedSender<Item>,
    inbox: Arc<Mutex<mpsc::UnboundedReceiver<Item>>>,
    writers: usize,
    started: OnceLock<()>,
}

impl GroupCommit {
    /// `writers`: writes in flight at once (each holds one pool connection while it runs).
    /// The writer tasks start with the first append and end when this is dropped.
    pub fn new(store: DynStore, writers: usize) -> Self {
        let (queue, inbox) = mpsc::unbounded_channel();
        GroupCommit {
            store,
            queue,
            inbox: Arc::new(Mutex::new(inbox)),
            writers: writers.max(1),
            started: OnceLock::new(),
        }
    }

    /// Append `step` with whatever other steps are waiting; its own outcome, as
    /// [`Store::append_step`](super::Store::append_step) would give it.
    pub async fn append(&self, step: Arc<StepWrite>) -> StoreResult<Vec<StoredEvent>> {
        if step.events.is_empty() {
            return Ok(Vec::new());
        }
        self.started.get_or_init(|| {
            for _ in 0..self.writers {
                tokio::spawn(writer(self.store.clone(), self.inbox.clone()));
            }
        });
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Item { step, reply })
            .map_err(|_| StoreError::Database(sqlx::Error::PoolClosed))?;
        answer
            .await
            .unwrap_or(Err(StoreError::Database(sqlx::Error::PoolClosed)))
    }
}

/// Take what is waiting (after waiting for at least one step), write it, again.
async fn writer(store: DynStore, inbox: Arc<Mutex<mpsc::UnboundedReceiver<Item>>>) {
    loop {
        let items = {
            let mut inbox = inbox.lock().await;
            let Some(first) = inbox.recv().await else {
                return;
            };
            let mut items = vec![first];
            while items.len() < MAX_STEPS {
                match inbox.try_recv() {
                    Ok(item) => items.push(item),
                    Err(_) => break,
                }
            }
            items
        };
        write(&store, items).await;
    }
}

/// Write `items`; a debate with two steps among them (not the recorder's way, but possible)
/// gets its second in a later statement, after the first.
async fn write(store: &DynStore, mut items: Vec<Item>) {
    while !items.is_empty() {
        let mut seen = HashSet::with_capacity(items.len());
        let (now, later): (Vec<Item>, Vec<Item>) = items
            .into_iter()
            .partition(|i| seen.insert(i.step.debate_id.clone()));
        items = later;
        write_distinct(store, now).await;
    }
}

async fn write_distinct(store: &DynStore, items: Vec<Item>) {
    let steps: Vec<&StepWrite> = items.iter().map(|i| &*i.step).collect();
    let written = store.append_steps(&steps).await;
    drop(steps);
    match written {
        Ok(results) => {
            for (item, result) in items.into_iter().zip(results) {
                let _ = item.reply.send(result);
            }
        }
        Err(StoreError::Database(e)) if items.len() > 1 && !is_connectivity_error(&e) => {
            tracing::warn!(target: "aragora::store", error = %e, steps = items.len(), "a grouped append was refused; writing its steps one by one");
            let alone = futures::future::join_all(items.iter().map(|i| {
                store.append_step(
                    &i.step.debate_id,
                    i.step.lease.as_ref(),
                    &i.step.events,
                    &i.step.usage,
                )
            }))
            .await;
            for (item, result) in items.into_iter().zip(alone) {
                let _ = item.reply.send(result);
            }
        }
        Err(e) => {
            let mut items = items.into_iter();
            let first = items.next();
            for item in items {
                let _ = item.reply.send(Err(e.replicate()));
            }
            if let Some(item) = first {
                let _ = item.reply.send(Err(e));
            }
        }
    }
}
