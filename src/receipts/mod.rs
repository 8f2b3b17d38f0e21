//! Signed decision receipts. Every debate that ends `completed` or `no_consensus` gets one,
//! issued once right after its end (and by a sweeper for any debate whose instance died in
//! between) and stored immutably: the native receipt and its Open Decision Receipt
//! documents (profiles 0.1 and 0.2) are kept as the exact bytes served, so exporting twice
//! gives identical JSON and a later key change never alters an issued receipt.
//!
//! The receipt binds the whole transcript through [`chain`]; the signature covers the
//! receipt; anyone verifies both offline (`aragora-verify`, `aragora receipt verify`).

pub mod chain;
pub mod cli;
pub mod document;
pub mod keys;
pub mod verify;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use ed25519_dalek::VerifyingKey;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::store::{DebateRecord, DebateStatus, DynStore, NewReceipt, ReceiptRow, StoreError};
use document::{Facts, FoldedLog, LogSummary, OdrVersion};
pub use keys::Signer;

/// Resolves a judge agent's (provider, model) by name.
pub type ModelLookup = Box<dyn Fn(&str) -> Option<(String, String)> + Send + Sync>;

/// How often finished debates still without a receipt are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// The most queued debates the worker takes at once.
const GROUP_MAX: usize = 64;

/// Whether `record` is owed a receipt it does not have yet: it ended with a decision
/// (`completed` or `no_consensus`) and none was issued.
fn due(record: &DebateRecord) -> bool {
    record.receipt_id.is_none()
        && matches!(
            record.status,
            DebateStatus::Completed | DebateStatus::NoConsensus
        )
}

pub struct Receipts {
    store: DynStore,
    signer: Option<Arc<Signer>>,
    issuer: String,
    judge_model: ModelLookup,
    /// Public keys by key id: this instance's, and every key that signed a stored receipt
    /// (read from the store once asked for).
    keys: parking_lot::RwLock<HashMap<String, VerifyingKey>>,
    /// Debates handed to [`Receipts::enqueue`] whose receipt the worker has not issued yet
    /// (the sweeper leaves them to it), and the queue itself.
    queued: parking_lot::Mutex<std::collections::HashSet<String>>,
    /// Receipts this instance issued from a folded log.
    folded: std::sync::atomic::AtomicU64,
    queue: tokio::sync::mpsc::UnboundedSender<Queued>,
    next: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<Queued>>,
}

/// A debate queued for its receipt, with its final record and folded log when the instance
/// that ran it saw the whole log written ([`Receipts::enqueue_decided`]): that receipt is
/// issued without reading either back.
type Queued = (String, Option<(DebateRecord, FoldedLog)>);

impl Receipts {
    /// Register this instance's public key (so every instance, and receipts signed before a
    /// key rotation, can be verified by the server) and build the service.
    pub async fn start(
        store: DynStore,
        signer: Option<Arc<Signer>>,
        issuer: String,
        judge_model: ModelLookup,
    ) -> Result<Arc<Receipts>, StoreError> {
        let (queue, next) = tokio::sync::mpsc::unbounded_channel();
        let mut keys = HashMap::new();
        if let Some(signer) = &signer {
            store
                .register_signing_key(signer.key_id(), signer.public_pem())
                .await?;
            keys.insert(signer.key_id().to_owned(), signer.verifying_key());
        }
        Ok(Arc::new(Receipts {
            store,
            signer,
            issuer,
            judge_model,
            keys: parking_lot::RwLock::new(keys),
            queued: parking_lot::Mutex::default(),
            folded: std::sync::atomic::AtomicU64::new(0),
            queue,
            next: tokio::sync::Mutex::new(next),
        }))
    }

    pub fn signer(&self) -> Option<&Signer> {
        self.signer.as_deref()
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The receipt of a finished debate, issuing it now if it has none yet. `None` when the
    /// debate does not exist or did not end `completed` / `no_consensus`.
    pub async fn issue(&self, debate_id: &str) -> Result<Option<ReceiptRow>, StoreError> {
        match self.store.get_debate(debate_id).await? {
            Some(record) => self.issue_for(&record).await,
            None => Ok(None),
        }
    }

    /// [`issue`](Self::issue) for a debate record the caller has already read.
    pub async fn issue_for(&self, record: &DebateRecord) -> Result<Option<ReceiptRow>, StoreError> {
        if let Some(done) = self.issued_or_not_due(record).await? {
            return Ok(done);
        }
        let events = self.store.events_since(&record.id, 0, u32::MAX).await?;
        self.issue_with(record, &LogSummary::of(&events)).await
    }

    /// How many receipts this instance issued from a log folded as it was written (the
    /// rest read the log back).
    pub fn issued_from_folded_logs(&self) -> u64 {
        self.folded.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `Some` when `record` needs no new receipt: the one it has, or `None` when it did not
    /// end `completed` / `no_consensus`.
    async fn issued_or_not_due(
        &self,
        record: &DebateRecord,
    ) -> Result<Option<Option<ReceiptRow>>, StoreError> {
        if let Some(receipt_id) = &record.receipt_id {
            return self.store.get_receipt(receipt_id).await.map(Some);
        }
        if !due(record) {
            return Ok(Some(None));
        }
        Ok(None)
    }

    async fn issue_with(
        &self,
        record: &DebateRecord,
        log: &LogSummary<'_>,
    ) -> Result<Option<ReceiptRow>, StoreError> {
        let new = self.build(record, log);
        // One receipt per debate: when another instance issued it first, theirs stands.
        let inserted = self.store.insert_receipt(&new).await?;
        self.settle(new, inserted).await
    }

    /// The receipt of `record` with its transcript summed up in `log`: gathered, rendered in
    /// every profile and signed, not stored yet.
    fn build(&self, record: &DebateRecord, log: &LogSummary<'_>) -> NewReceipt {
        let issued = Utc::now();
        let issued_at = issued.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
        let facts = Facts::gather_from(
            record,
            log,
            format!("rcpt-{}", uuid::Uuid::new_v4()),
            issued_at.clone(),
            &self.judge_model,
        );
        let key_id = self.signer.as_ref().map(|s| s.key_id().to_owned());
        let documents = [OdrVersion::V01, OdrVersion::V02].map(|v| {
            let mut doc = facts.odr(v);
            if let Some(signer) = &self.signer {
                document::sign(&mut doc, v, signer, &self.issuer, &issued_at);
            }
            chain::canonical(&doc)
        });
        let [odr_v01, odr_v02] =
            documents.map(|bytes| String::from_utf8(bytes).unwrap_or_default());
        NewReceipt {
            receipt_id: facts.receipt_id.clone(),
            debate_id: record.id.clone(),
            owner_id: record.owner_id.clone(),
            verdict: facts.verdict.to_owned(),
            key_id: key_id.clone(),
            chain_head: facts.chain_head.clone(),
            event_count: facts.event_count as i64,
            issued_at: issued,
            receipt: facts.native(key_id.as_deref(), &self.issuer).to_string(),
            odr_v01,
            odr_v02,
        }
    }

    /// After the store's answer for `new`: counted and logged when it was stored, else the
    /// receipt that stands (issued first, by another instance or an earlier call).
    async fn settle(
        &self,
        new: NewReceipt,
        inserted: bool,
    ) -> Result<Option<ReceiptRow>, StoreError> {
        if inserted {
            let signed = new.key_id.is_some();
            crate::telemetry::metrics::receipts_issued_total(signed).increment(1);
            tracing::info!(
                target: "aragora::receipts",
                debate_id = %new.debate_id, receipt_id = %new.receipt_id,
                key_id = new.key_id.as_deref().unwrap_or("unsigned"),
                "receipt issued for debate {}", new.debate_id
            );
            return Ok(Some(new));
        }
        self.store.receipt_of_debate(&new.debate_id).await
    }

    /// Issue the receipts of debates carried to their end with their folded logs, stored
    /// together ([`Store::insert_receipts`](crate::store::Store::insert_receipts): one
    /// transaction on SQLite). When the store refuses the group, each is tried alone, so one
    /// bad receipt holds up no other. Returns each debate's outcome, in order.
    async fn issue_folded_group(
        &self,
        decided: &[(DebateRecord, FoldedLog)],
    ) -> Vec<(String, Result<Option<ReceiptRow>, StoreError>)> {
        let new: Vec<NewReceipt> = decided
            .iter()
            .map(|(record, log)| self.build(record, &log.summary()))
            .collect();
        let stored = match self.store.insert_receipts(&new).await {
            Ok(flags) if flags.len() == new.len() => flags.into_iter().map(Ok).collect(),
            Ok(_) | Err(_) => {
                let mut one_by_one = Vec::with_capacity(new.len());
                for receipt in &new {
                    one_by_one.push(self.store.insert_receipt(receipt).await);
                }
                one_by_one
            }
        };
        let mut outcomes = Vec::with_capacity(new.len());
        for (receipt, inserted) in new.into_iter().zip(stored) {
            let debate_id = receipt.debate_id.clone();
            let issued = match inserted {
                Ok(inserted) => self.settle(receipt, inserted).await,
                Err(e) => Err(e),
            };
            if matches!(issued, Ok(Some(_))) {
                self.folded
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            outcomes.push((debate_id, issued));
        }
        outcomes
    }

    /// Queue `debate_id` (just decided) for [`Receipts::run_worker`]: one worker issues
    /// receipts in the order debates end, so a burst of endings queues ids (a few bytes
    /// each) instead of running thousands of issues at once beside the debates still
    /// running. `GET …/receipt` issues on demand meanwhile.
    pub fn enqueue(&self, debate_id: String) {
        self.enqueue_decided(debate_id, None);
    }

    /// [`enqueue`](Self::enqueue) with what the instance that ran the debate carried to its
    /// end, when it saw the whole log written: its final record and folded log. A debate
    /// already queued stays queued as it was.
    pub fn enqueue_decided(&self, debate_id: String, carried: Option<(DebateRecord, FoldedLog)>) {
        if self.queued.lock().insert(debate_id.clone()) {
            let _ = self.queue.send((debate_id, carried));
        }
    }

    /// Issue the receipts of queued debates until `shutdown`, in the order they were queued.
    /// What has queued up meanwhile (up to [`GROUP_MAX`]) is taken at once: the debates
    /// carried with their folded logs are stored together, the others one at a time. A
    /// failure, or a shutdown first, is made good by the sweeper.
    pub async fn run_worker(self: Arc<Self>, shutdown: CancellationToken) {
        let mut next = self.next.lock().await;
        let mut taken = Vec::with_capacity(GROUP_MAX);
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => return,
                queued = next.recv() => match queued {
                    Some(queued) => queued,
                    None => return,
                },
            };
            taken.push(first);
            while taken.len() < GROUP_MAX {
                match next.try_recv() {
                    Ok(queued) => taken.push(queued),
                    Err(_) => break,
                }
            }
            let mut decided = Vec::new();
            let mut others = Vec::new();
            for (debate_id, carried) in taken.drain(..) {
                match carried {
                    Some((record, log)) if due(&record) => decided.push((record, log)),
                    // Nothing to issue: it has a receipt, or did not end with a decision.
                    Some(_) => {
                        self.queued.lock().remove(&debate_id);
                    }
                    None => others.push(debate_id),
                }
            }
            let work = async {
                let mut outcomes = self.issue_folded_group(&decided).await;
                for debate_id in others {
                    let issued = self.issue(&debate_id).await;
                    outcomes.push((debate_id, issued));
                }
                outcomes
            };
            let outcomes = tokio::select! {
                _ = shutdown.cancelled() => return,
                outcomes = work => outcomes,
            };
            for (debate_id, issued) in outcomes {
                self.queued.lock().remove(&debate_id);
                if let Err(e) = issued {
                    tracing::warn!(target: "aragora::receipts", debate_id, error = %e, "receipt not issued yet; the sweeper retries");
                }
            }
        }
    }

    /// Issue the receipts of finished debates that have none (their instance stopped between
    /// the end and the receipt, or they ended before receipts existed). Returns how many.
    pub async fn sweep(&self) -> Result<usize, StoreError> {
        let mut issued = 0;
        loop {
            let pending = self.store.debates_awaiting_receipt(100).await?;
            if pending.is_empty() {
                return Ok(issued);
            }
            let batch = pending.len();
            // Debates the worker has queued are its to issue.
            let pending: Vec<String> = {
                let queued = self.queued.lock();
                pending
                    .into_iter()
                    .filter(|id| !queued.contains(id))
                    .collect()
            };
            if pending.is_empty() {
                return Ok(issued);
            }
            for id in pending {
                if self.issue(&id).await?.is_some() {
                    issued += 1;
                }
            }
            if batch < 100 {
                return Ok(issued);
            }
        }
    }

    /// Sweep at start and then every [`SWEEP_EVERY`] until shutdown.
    pub async fn run_sweeper(self: Arc<Self>, shutdown: CancellationToken) {
        let mut every = tokio::time::interval(SWEEP_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = every.tick() => {}
            }
            // Cancellable: a sweep stuck on an unanswering database must not hold up a
            // graceful shutdown (the next start sweeps again).
            let swept = tokio::select! {
                _ = shutdown.cancelled() => return,
                swept = self.sweep() => swept,
            };
            match swept {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(target: "aragora::receipts", issued = n, "issued {n} pending receipt(s)");
                }
                Err(e) => {
                    tracing::warn!(target: "aragora::receipts", error = %e, "receipt sweep failed; retrying later");
                }
            }
        }
    }

    /// A trusted public key by id: this instance's or one registered in the store.
    pub async fn key(&self, key_id: &str) -> Result<Option<VerifyingKey>, StoreError> {
        if let Some(key) = self.keys.read().get(key_id) {
            return Ok(Some(*key));
        }
        let Some(pem) = self.store.signing_key(key_id).await? else {
            return Ok(None);
        };
        let Some(key) = keys::public_key_from_pem(&pem).filter(|k| keys::key_id(k) == key_id)
        else {
            return Ok(None);
        };
        self.keys.write().insert(key_id.to_owned(), key);
        Ok(Some(key))
    }

    /// The public key PEM of a key id.
    pub async fn key_pem(&self, key_id: &str) -> Result<Option<String>, StoreError> {
        if let Some(signer) = &self.signer
            && signer.key_id() == key_id
        {
            return Ok(Some(signer.public_pem().to_owned()));
        }
        self.store.signing_key(key_id).await
    }

    /// Verify a document against every key this deployment has signed with.
    pub async fn verify(&self, doc: &Value) -> Result<verify::Verification, StoreError> {
        let mut trusted = HashMap::new();
        for entry in doc["signatures"].as_array().into_iter().flatten() {
            if let Some(id) = entry["key_id"].as_str()
                && let Some(key) = self.key(id).await?
            {
                trusted.insert(id.to_owned(), key);
            }
        }
        Ok(verify::verify(doc, &|id| trusted.get(id).copied()))
    }
}

/// The ODR document of `row` in `version`, as stored.
pub fn odr_text(row: &ReceiptRow, version: OdrVersion) -> &str {
    match version {
        OdrVersion::V01 => &row.odr_v01,
        OdrVersion::V02 => &row.odr_v02,
    }
}

/// The native receipt of `row` with the fields the row tracks.
pub fn native_json(row: &ReceiptRow) -> Value {
    serde_json::from_str(&row.receipt).unwrap_or(Value::Null)
}
