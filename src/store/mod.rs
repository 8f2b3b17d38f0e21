//! Durable storage behind one trait, with an embedded SQLite backend (the default) and a
//! Postgres backend for production.
//!
//! Rule: everything durable (debate records and the append-only event log) lives here and
//! nowhere else — Redis and in-process caches hold only what can be lost. Both backends
//! satisfy the same contract, proven by one test suite run against each.

mod group;
mod postgres;
mod sqlite;

pub use group::GroupCommit;
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Which backend a store is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// Connection pool settings (min idle = size, max = size + overflow; docs/configuration.md).
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    pub size: u32,
    pub max_overflow: u32,
    /// How long a caller waits for a free connection before the call fails.
    pub acquire_timeout: Duration,
    /// Postgres: connections of their own for accepting debates (counting the queue,
    /// inserting a debate and its first event), so submissions never wait behind the writes
    /// of running debates. 0 shares the main pool. SQLite ignores it (one writer).
    pub intake: u32,
}

/// A snapshot of the pool for health and metrics.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct PoolStatus {
    /// Open connections (idle + in use).
    pub size: u32,
    pub idle: u32,
    pub max: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0} not found")]
    NotFound(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("invalid stored data: {0}")]
    Corrupt(String),
    /// The writer's lease on the debate is gone: another instance claimed it.
    #[error("lease lost: {0}")]
    Fenced(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A fault of the storage under the database, as opposed to a bad query or bad data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum StorageFault {
    /// Disk full (SQLITE_FULL, Postgres 53100).
    Full,
    /// The database or its file system is read-only (SQLITE_READONLY, Postgres 25006).
    ReadOnly,
    /// An I/O error reading or writing the database files (SQLITE_IOERR, Postgres 58030).
    Io,
}

impl StorageFault {
    /// What an operator reads.
    pub fn describe(self) -> &'static str {
        match self {
            StorageFault::Full => "the database's disk is full",
            StorageFault::ReadOnly => "the database is read-only",
            StorageFault::Io => "the database's storage reports I/O errors",
        }
    }
}

/// The storage fault behind `err`, if it is one.
pub fn storage_fault(err: &sqlx::Error) -> Option<StorageFault> {
    let db = err.as_database_error()?;
    let code = db.code()?;
    // SQLite: primary result code in the low byte of the (extended) code.
    if let Ok(n) = code.parse::<i32>() {
        return match n & 0xff {
            13 => Some(StorageFault::Full),
            8 => Some(StorageFault::ReadOnly),
            10 => Some(StorageFault::Io),
            _ => None,
        };
    }
    match code.as_ref() {
        "53100" => Some(StorageFault::Full),
        "25006" => Some(StorageFault::ReadOnly),
        "58030" => Some(StorageFault::Io),
        _ => None,
    }
}

/// Whether `err` means "cannot reach the database" (as opposed to a bad query or bad data):
/// no connection within the acquire timeout, a closed pool, a refused or dropped
/// connection, a failed TLS handshake, or a dead SQLite worker.
pub fn is_connectivity_error(err: &sqlx::Error) -> bool {
    matches!(
        err,
        sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed
    )
}

/// The storage fault of the current episode (0: none; else `StorageFault as u8 + 1`), so a
/// fault is logged at ERROR once per episode (and its end once at INFO), not per request.
static STORAGE_FAILING: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Note a storage fault: the first of an episode is logged at ERROR.
pub fn note_storage_fault(fault: StorageFault, detail: &str) {
    let was = STORAGE_FAILING.swap(fault as u8 + 1, std::sync::atomic::Ordering::Relaxed);
    if was == 0 {
        tracing::error!(target: "aragora::store", fault = ?fault, error = %detail, "storage fault: {}; writes fail until it is fixed", fault.describe());
    }
}

/// The fault seen last, while no durable write has succeeded since.
pub fn storage_failing() -> Option<StorageFault> {
    match STORAGE_FAILING.load(std::sync::atomic::Ordering::Relaxed) {
        1 => Some(StorageFault::Full),
        2 => Some(StorageFault::ReadOnly),
        3 => Some(StorageFault::Io),
        _ => None,
    }
}

/// Note a successful durable write: ends a storage-fault episode.
pub fn note_storage_ok() {
    if STORAGE_FAILING.swap(0, std::sync::atomic::Ordering::Relaxed) != 0 {
        tracing::info!(target: "aragora::store", "storage fault over: writes succeed again");
    }
}

impl StoreError {
    /// A failure that may go away by itself (the database unreachable, or its storage
    /// faulty): worth retrying, never a reason to fail a debate.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Database(e) => is_connectivity_error(e) || storage_fault(e).is_some(),
            _ => false,
        }
    }

    pub fn storage_fault(&self) -> Option<StorageFault> {
        match self {
            StoreError::Database(e) => storage_fault(e),
            _ => None,
        }
    }

    /// The same failure for another caller that shared the attempt (the errors sqlx gives
    /// are not `Clone`): the same variant and message, and a lost connection stays a lost
    /// connection, so whoever retries transient failures still does.
    pub fn replicate(&self) -> StoreError {
        match self {
            StoreError::Database(e) => StoreError::Database(match e {
                sqlx::Error::PoolTimedOut => sqlx::Error::PoolTimedOut,
                sqlx::Error::PoolClosed => sqlx::Error::PoolClosed,
                sqlx::Error::WorkerCrashed => sqlx::Error::WorkerCrashed,
                sqlx::Error::Io(io) => {
                    sqlx::Error::Io(std::io::Error::new(io.kind(), io.to_string()))
                }
                sqlx::Error::Tls(tls) => sqlx::Error::Io(std::io::Error::other(tls.to_string())),
                other => sqlx::Error::Protocol(other.to_string()),
            }),
            StoreError::Migrate(e) => StoreError::Corrupt(e.to_string()),
            StoreError::NotFound(s) => StoreError::NotFound(s.clone()),
            StoreError::Conflict(s) => StoreError::Conflict(s.clone()),
            StoreError::Corrupt(s) => StoreError::Corrupt(s.clone()),
            StoreError::Fenced(s) => StoreError::Fenced(s.clone()),
        }
    }
}

/// A debate's lifecycle status. `queued` and `running` are unfinished; every other status is
/// final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DebateStatus {
    Queued,
    Running,
    /// Stopped between phases by its owner or an admin; resumes when asked.
    Paused,
    Completed,
    NoConsensus,
    Timeout,
    Failed,
    Cancelled,
    /// Its priced usage reached its cost cap; the transcript and partial result are kept.
    BudgetExceeded,
}

impl DebateStatus {
    pub const ALL: [DebateStatus; 9] = [
        DebateStatus::Queued,
        DebateStatus::Running,
        DebateStatus::Paused,
        DebateStatus::Completed,
        DebateStatus::NoConsensus,
        DebateStatus::Timeout,
        DebateStatus::Failed,
        DebateStatus::Cancelled,
        DebateStatus::BudgetExceeded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DebateStatus::Queued => "queued",
            DebateStatus::Running => "running",
            DebateStatus::Paused => "paused",
            DebateStatus::Completed => "completed",
            DebateStatus::NoConsensus => "no_consensus",
            DebateStatus::Timeout => "timeout",
            DebateStatus::Failed => "failed",
            DebateStatus::Cancelled => "cancelled",
            DebateStatus::BudgetExceeded => "budget_exceeded",
        }
    }

    /// Whether the debate has ended (it will never run again).
    pub fn is_final(self) -> bool {
        !matches!(
            self,
            DebateStatus::Queued | DebateStatus::Running | DebateStatus::Paused
        )
    }
}

impl std::fmt::Display for DebateStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A debate status this version does not know (the name given).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown status `{0}`; expected one of {expected}", expected = DebateStatus::names())]
pub struct UnknownStatus(pub String);

impl DebateStatus {
    /// Every status name, comma separated.
    fn names() -> String {
        let all: Vec<&str> = DebateStatus::ALL.iter().map(|s| s.as_str()).collect();
        all.join(", ")
    }
}

impl std::str::FromStr for DebateStatus {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, UnknownStatus> {
        DebateStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

impl PartialEq<&str> for DebateStatus {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

fn parse_status(s: &str) -> StoreResult<DebateStatus> {
    s.parse()
        .map_err(|e: UnknownStatus| StoreError::Corrupt(e.to_string()))
}

/// A debate as stored. JSON columns hold the request options and the result so the schema
/// stays additive as the engine grows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DebateRecord {
    pub id: String,
    pub task: String,
    pub status: DebateStatus,
    /// The instance running the debate now, or the last one that ran it.
    pub instance: Option<String>,
    /// Agent names in seat order.
    pub agents: Vec<String>,
    pub rounds: i32,
    pub rounds_used: i32,
    pub consensus: String,
    pub owner_id: Option<String>,
    pub correlation_id: Option<String>,
    /// Free-form request options (threshold, judge, domain, metadata…).
    pub options: serde_json::Value,
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The debate's signed receipt, once issued (completed and no_consensus debates).
    #[serde(default)]
    pub receipt_id: Option<String>,
}

/// What a caller supplies to create a debate; the store fills the rest
/// (status `queued`, rounds_used 0, timestamps).
#[derive(Debug, Clone)]
pub struct NewDebate {
    pub id: String,
    pub task: String,
    pub agents: Vec<String>,
    pub rounds: i32,
    pub consensus: String,
    pub owner_id: Option<String>,
    pub correlation_id: Option<String>,
    pub options: serde_json::Value,
}

impl NewDebate {
    /// The record of this debate as accepted: queued, created at `created_at`.
    pub fn into_queued(self, created_at: DateTime<Utc>) -> DebateRecord {
        DebateRecord {
            id: self.id,
            task: self.task,
            status: DebateStatus::Queued,
            instance: None,
            agents: self.agents,
            rounds: self.rounds,
            rounds_used: 0,
            consensus: self.consensus,
            owner_id: self.owner_id,
            correlation_id: self.correlation_id,
            options: self.options,
            result: None,
            error: None,
            created_at,
            started_at: None,
            finished_at: None,
            receipt_id: None,
        }
    }
}

/// A change of a debate's lifecycle fields. `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct DebateUpdate {
    pub status: Option<DebateStatus>,
    pub rounds_used: Option<i32>,
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// Listing filter, newest first. `cursor` is the opaque value returned as `next_cursor`.
#[derive(Debug, Clone, Default)]
pub struct DebateQuery {
    pub status: Option<String>,
    pub owner_id: Option<String>,
    pub limit: u32,
    pub offset: Option<u32>,
    pub cursor: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DebatePage {
    pub debates: Vec<DebateRecord>,
    pub next_cursor: Option<String>,
}

/// One entry of a debate's append-only event log. `seq` is per debate, contiguous from 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    pub debate_id: String,
    pub seq: i64,
    #[serde(rename = "type")]
    pub kind: String,
    pub round: Option<i32>,
    pub agent: Option<String>,
    pub data: serde_json::Value,
    pub timestamp: DateTime<Utc>,
}

/// An event to append; the store assigns `seq` and `timestamp`.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub kind: String,
    pub round: Option<i32>,
    pub agent: Option<String>,
    pub data: serde_json::Value,
}

/// `events` as stored for `debate_id` from seq `first` on, at `timestamp`.
pub(crate) fn stored_run(
    debate_id: &str,
    first: i64,
    events: &[NewEvent],
    timestamp: DateTime<Utc>,
) -> Vec<StoredEvent> {
    events
        .iter()
        .enumerate()
        .map(|(i, e)| StoredEvent {
            debate_id: debate_id.to_owned(),
            seq: first + i as i64,
            kind: e.kind.clone(),
            round: e.round,
            agent: e.agent.clone(),
            data: e.data.clone(),
            timestamp,
        })
        .collect()
}

/// Why an append to `debate_id` wrote nothing: the debate `exists` but `lease` has moved
/// on (`Fenced`), or it does not exist (`NotFound`).
pub(crate) fn refused(debate_id: &str, lease: Option<&Lease>, exists: bool) -> StoreError {
    match (lease, exists) {
        (Some(lease), true) => StoreError::Fenced(format!(
            "debate {debate_id} is no longer held by {} (generation {})",
            lease.owner, lease.generation
        )),
        _ => StoreError::NotFound(format!("debate {debate_id}")),
    }
}

/// One debate's step for [`Store::append_steps`]: its events and the usage rows of the
/// calls they record, fenced by `lease` like [`Store::append_step`].
#[derive(Debug, Clone)]
pub struct StepWrite {
    pub debate_id: String,
    pub lease: Option<Lease>,
    pub events: Vec<NewEvent>,
    pub usage: Vec<NewUsage>,
}

/// The fencing token of a claimed debate: every write of the debate's runner carries it, and
/// the store refuses the write (`Fenced`) once another claim has bumped the generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub owner: String,
    pub generation: i64,
}

/// A debate an instance has just claimed, with what it needs to start or resume it.
#[derive(Debug, Clone)]
pub struct ClaimedDebate {
    /// The record after the claim (status `running`, `instance` = the claimer).
    pub record: DebateRecord,
    pub lease: Lease,
    /// `queued`: a fresh start; `running`: a resume.
    pub previous_status: DebateStatus,
    /// Who held the lease before (None when it was released or never held).
    pub previous_owner: Option<String>,
    pub cancel_requested: bool,
    pub pause_requested: bool,
}

/// What the runner of a debate is asked to do, read with its lease renewal or the control
/// poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Control {
    pub debate_id: String,
    pub generation: i64,
    pub cancel: bool,
    pub pause: bool,
}

/// The row both backends read a [`Control`] from.
#[derive(sqlx::FromRow)]
pub(crate) struct ControlRow {
    id: String,
    lease_generation: i64,
    cancel_requested: bool,
    pause_requested: bool,
}

impl ControlRow {
    pub(crate) fn into_control(self) -> Control {
        Control {
            debate_id: self.id,
            generation: self.lease_generation,
            cancel: self.cancel_requested,
            pause: self.pause_requested,
        }
    }
}

/// A running debate as `GET /api/debates/active` lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActiveDebate {
    pub id: String,
    pub task: String,
    pub owner_id: Option<String>,
    /// The instance holding its lease; None while it waits to be claimed again.
    pub instance: Option<String>,
    /// The latest round started (0 before the first).
    pub round: i32,
    pub total_rounds: i32,
    pub started_at: Option<DateTime<Utc>>,
    pub lease_expires_at: Option<DateTime<Utc>>,
}

/// One row of the Elo leaderboard. `domain: None` is the agent's overall rating; a domain
/// rating is kept separately for debates tagged with that domain.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rating {
    pub agent: String,
    pub domain: Option<String>,
    pub rating: f64,
    pub games: i64,
    pub wins: i64,
    pub losses: i64,
    pub draws: i64,
    pub updated_at: DateTime<Utc>,
}

/// The outcome of one pairing inside a debate: `score_a` is 1.0 when `a` won, 0.5 for a draw
/// and 0.0 when `b` won (any value in 0..=1 is accepted by the Elo arithmetic).
#[derive(Debug, Clone, PartialEq)]
pub struct MatchResult {
    pub a: String,
    pub b: String,
    pub score_a: f64,
}

/// The storage contract every backend fulfils.
/// An account. `role` is `member`, `admin` or `owner`.
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub id: String,
    /// Lower-cased.
    pub email: String,
    /// argon2id PHC string; never leaves the server.
    pub password_hash: String,
    pub role: String,
    /// Consecutive failed logins since the last success or lock.
    pub failed_logins: i32,
    pub locked_until: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct NewUser {
    pub id: String,
    pub email: String,
    pub password_hash: String,
    pub role: String,
}

/// An API key as stored: its SHA-256 only, and a display prefix.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKeyRecord {
    pub id: String,
    pub user_id: String,
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A refresh token as stored (SHA-256 hex of the opaque token).
#[derive(Debug, Clone, PartialEq)]
pub struct RefreshTokenRecord {
    pub token_hash: String,
    pub user_id: String,
    pub family_id: String,
    pub expires_at: DateTime<Utc>,
    pub used: bool,
    pub revoked: bool,
}

/// One agent call, for billing.
#[derive(Debug, Clone, PartialEq)]
pub struct NewUsage {
    pub principal_id: String,
    pub debate_id: Option<String>,
    pub agent: String,
    pub provider: String,
    pub model: String,
    pub input_tokens: i64,
    pub output_tokens: i64,
    /// The provider reported no token counts; they were estimated from text length.
    pub estimated: bool,
    pub cost_usd: f64,
}

/// Usage of one provider/model in a period.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageLine {
    pub provider: String,
    pub model: String,
    pub calls: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_usd: f64,
    pub estimated: bool,
}

/// A principal's usage in `[from, to)`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UsageSummary {
    /// Distinct debates with at least one recorded call.
    pub debates: i64,
    pub lines: Vec<UsageLine>,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    fn backend(&self) -> Backend;

    /// Cheap round trip proving the database answers (`SELECT 1`).
    async fn ping(&self) -> StoreResult<()>;

    /// A tiny write (one row rewritten) proving the database takes writes.
    async fn write_probe(&self) -> StoreResult<()>;

    fn pool_status(&self) -> PoolStatus;

    /// Apply pending migrations for this backend. Idempotent.
    async fn migrate(&self) -> StoreResult<()>;

    /// Close the pool, waiting for connections in use to be returned.
    async fn close(&self);

    /// Drop the prepared-statement caches of the idle pooled connections (rebuilt on demand).
    /// The default (for stores without such caches) clears nothing.
    async fn clear_statement_caches(&self) -> StatementCacheReport {
        StatementCacheReport::default()
    }

    /// Insert a new debate with status `queued`. A duplicate id is `Conflict`.
    async fn create_debate(&self, new: &NewDebate) -> StoreResult<DebateRecord>;

    /// Insert a new debate with its first events, in one transaction: either the debate is
    /// accepted with its log started, or nothing is stored.
    async fn create_debate_with(
        &self,
        new: &NewDebate,
        events: &[NewEvent],
    ) -> StoreResult<(DebateRecord, Vec<StoredEvent>)>;

    async fn get_debate(&self, id: &str) -> StoreResult<Option<DebateRecord>>;

    /// Apply `update`; `NotFound` when the debate does not exist. Returns the new record.
    async fn update_debate(&self, id: &str, update: &DebateUpdate) -> StoreResult<DebateRecord>;

    /// Newest first (created_at, then id, descending). With `cursor`, continue after it;
    /// with `offset`, skip that many. `next_cursor` is set when more rows follow.
    async fn list_debates(&self, query: &DebateQuery) -> StoreResult<DebatePage>;

    /// Append one event, assigning the next seq for that debate atomically (concurrent
    /// appenders never get the same seq and never leave a gap). `NotFound` for an unknown debate.
    async fn append_event(&self, debate_id: &str, event: &NewEvent) -> StoreResult<StoredEvent> {
        self.append_events(debate_id, None, std::slice::from_ref(event))
            .await?
            .pop()
            .ok_or_else(|| StoreError::NotFound(format!("debate {debate_id}")))
    }

    /// Append `events` in order in one transaction (all or none), with contiguous seqs.
    /// With `lease`, the append is fenced: it fails with `Fenced` (writing nothing) unless
    /// the debate's lease is still that owner's at that generation.
    async fn append_events(
        &self,
        debate_id: &str,
        lease: Option<&Lease>,
        events: &[NewEvent],
    ) -> StoreResult<Vec<StoredEvent>> {
        self.append_step(debate_id, lease, events, &[]).await
    }

    /// [`append_events`](Store::append_events) with the usage rows of the agent calls the
    /// batch records, in the same transaction and fenced the same way: the rows land with
    /// the events or not at all. One round trip for a step instead of one per row.
    async fn append_step(
        &self,
        debate_id: &str,
        lease: Option<&Lease>,
        events: &[NewEvent],
        usage: &[NewUsage],
    ) -> StoreResult<Vec<StoredEvent>>;

    /// The steps of several debates (at most one per debate) written together, each as
    /// [`append_step`](Store::append_step) would: per step, its stored events or why it was
    /// refused (`Fenced`, `NotFound`), in the order given. A refused step writes nothing and
    /// does not stop the others. `Err`: the whole attempt failed; when the database answered
    /// with an error nothing was written, when the connection was lost it may have been.
    /// One transaction (and one commit) for them all is what makes many running debates
    /// cheap: the default writes them one by one.
    async fn append_steps(
        &self,
        steps: &[&StepWrite],
    ) -> StoreResult<Vec<StoreResult<Vec<StoredEvent>>>> {
        let mut out = Vec::with_capacity(steps.len());
        for s in steps {
            out.push(
                self.append_step(&s.debate_id, s.lease.as_ref(), &s.events, &s.usage)
                    .await,
            );
        }
        Ok(out)
    }

    /// Stop running a debate in one transaction: append `end` (its `debate_end`, or
    /// `debate_paused`), apply `update` (final status, result…, or `paused`) and drop the
    /// lease and any pending cancel or pause request, so the status and the log never
    /// disagree. Fenced like `append_events`.
    async fn finish_debate(
        &self,
        debate_id: &str,
        lease: Option<&Lease>,
        update: &DebateUpdate,
        end: &NewEvent,
    ) -> StoreResult<(DebateRecord, StoredEvent)>;

    /// Change a debate no instance holds — `queued` or `paused` (cancelled or paused before
    /// a claim, cancelled while paused): `update` and its event `end` in one transaction.
    /// `None` when it is neither any more (a claim won the race).
    async fn finish_queued(
        &self,
        debate_id: &str,
        update: &DebateUpdate,
        end: &NewEvent,
    ) -> StoreResult<Option<(DebateRecord, StoredEvent)>>;

    /// Debates waiting to be claimed for the first time.
    async fn count_queued(&self) -> StoreResult<i64>;

    /// Claim up to `max` debates for `instance`, oldest first: queued ones, and running ones
    /// whose lease was released or has expired. Each claim bumps the lease generation, sets
    /// status `running` (started_at when unset) and a lease of `ttl`. Concurrent claimers
    /// (in any process) never get the same debate. Lease times use the database's clock.
    async fn claim_debates(
        &self,
        instance: &str,
        max: u32,
        ttl: Duration,
    ) -> StoreResult<Vec<ClaimedDebate>>;

    /// [`claim_debates`](Store::claim_debates) restricted to `queued` debates: what a claimer
    /// does when a debate was just accepted. Its cost does not grow with the number of
    /// debates running (they are not read); running debates whose lease is gone are left to
    /// the claimer's periodic `claim_debates`.
    async fn claim_queued(
        &self,
        instance: &str,
        max: u32,
        ttl: Duration,
    ) -> StoreResult<Vec<ClaimedDebate>> {
        self.claim_debates(instance, max, ttl).await
    }

    /// Extend every lease `instance` holds by `ttl`, in one statement. Returns the debates it
    /// still holds with their generation and what their runner is asked to do.
    async fn renew_leases(&self, instance: &str, ttl: Duration) -> StoreResult<Vec<Control>>;

    /// Give a lease back (the debate stays `running` and is claimable at once). False when
    /// the lease was no longer held.
    async fn release_lease(&self, debate_id: &str, lease: &Lease) -> StoreResult<bool>;

    /// At start-up: every lease `instance` still holds is from its previous life; expire them
    /// so its debates are claimed (and resumed) at once. Returns how many.
    async fn expire_leases_of(&self, instance: &str) -> StoreResult<u64>;

    /// Ask the runner of a running debate to cancel it. False when the debate is not running.
    async fn request_cancel(&self, debate_id: &str) -> StoreResult<bool>;

    /// Ask the runner of a running debate to pause it at its next phase boundary. False when
    /// the debate is not running.
    async fn request_pause(&self, debate_id: &str) -> StoreResult<bool>;

    /// Debates held by `instance` whose cancel or pause was requested.
    async fn control_requests(&self, instance: &str) -> StoreResult<Vec<Control>>;

    /// A paused debate goes back to the queue (status `queued`; a claim resumes it from its
    /// log). `None` when it is not paused.
    async fn unpause(&self, debate_id: &str) -> StoreResult<Option<DebateRecord>>;

    /// The priced cost (USD) of every agent call recorded for the debate.
    async fn debate_cost(&self, debate_id: &str) -> StoreResult<f64>;

    /// Running debates of every instance, oldest first (at most 1000).
    async fn active_debates(&self) -> StoreResult<Vec<ActiveDebate>>;

    /// Events with seq > `since`, ascending, at most `limit`.
    async fn events_since(
        &self,
        debate_id: &str,
        since: i64,
        limit: u32,
    ) -> StoreResult<Vec<StoredEvent>>;

    /// Highest seq of the debate's log (0 when empty).
    async fn last_seq(&self, debate_id: &str) -> StoreResult<i64>;

    /// Debates in `queued` or `running` — what a restart must resume or close.
    async fn unfinished_debates(&self) -> StoreResult<Vec<DebateRecord>>;

    /// Apply a debate's match results to the Elo ratings in one transaction: every match, in
    /// order, to the overall rating and — when `domain` is given — to that domain's rating
    /// too. Agents without a rating start at [`crate::ratings::INITIAL_RATING`]. Idempotent
    /// per `debate_id`: a debate already rated changes nothing and returns `Ok(false)`;
    /// otherwise `Ok(true)` (also for an empty `matches`, which still marks the debate rated).
    /// `Some("")` means the overall rating only. A match of an agent against itself or with a
    /// score outside 0..=1 is rejected (`Database(InvalidArgument)`) before anything is written.
    async fn apply_match_results(
        &self,
        debate_id: &str,
        domain: Option<&str>,
        matches: &[MatchResult],
    ) -> StoreResult<bool>;

    /// The leaderboard of `domain` (`None` or `Some("")`: overall): highest rating first, ties
    /// by agent name (byte order on both backends). `limit` 0 means 50; at most 500.
    async fn ratings(&self, domain: Option<&str>, limit: u32) -> StoreResult<Vec<Rating>>;

    /// The debate's events whose kind is one of `kinds`, ascending by seq, skipping `offset`
    /// matching events. `limit` 0 means 100; at most 1000. Empty `kinds` matches nothing.
    async fn events_of_kinds(
        &self,
        debate_id: &str,
        kinds: &[&str],
        limit: u32,
        offset: u32,
    ) -> StoreResult<Vec<StoredEvent>>;

    /// Number of debates per status, by status name; statuses with no debates are absent.
    async fn count_debates_by_status(&self) -> StoreResult<Vec<(String, i64)>>;

    /// Conflict when the email is taken.
    async fn create_user(&self, new: &NewUser) -> StoreResult<User>;

    /// `email` is matched lower-cased.
    async fn user_by_email(&self, email: &str) -> StoreResult<Option<User>>;

    async fn user_by_id(&self, id: &str) -> StoreResult<Option<User>>;

    /// Failed logins and lock of an email (by `email_hash`), known account or not.
    async fn login_attempts(&self, email_hash: &str) -> StoreResult<(i32, Option<DateTime<Utc>>)>;

    /// Set (or, with 0 and None, clear) the failed logins and lock of an email.
    async fn set_login_attempts(
        &self,
        email_hash: &str,
        failures: i32,
        locked_until: Option<DateTime<Utc>>,
    ) -> StoreResult<()>;

    /// Record the failed-login counter and lock of a user.
    async fn set_login_state(
        &self,
        user_id: &str,
        failed_logins: i32,
        locked_until: Option<DateTime<Utc>>,
    ) -> StoreResult<()>;

    /// Store a new key for the user, revoking any active one, atomically.
    async fn replace_api_key(
        &self,
        user_id: &str,
        id: &str,
        key_hash: &str,
        prefix: &str,
    ) -> StoreResult<ApiKeyRecord>;

    /// The key with this SHA-256, revoked or not; returns its owner too.
    async fn api_key_by_hash(&self, key_hash: &str) -> StoreResult<Option<ApiKeyRecord>>;

    async fn active_api_key(&self, user_id: &str) -> StoreResult<Option<ApiKeyRecord>>;

    /// Revoke the user's active keys; returns how many.
    async fn revoke_api_keys(&self, user_id: &str) -> StoreResult<u64>;

    /// Set last_used_at = `at` unless it was set less than a minute before `at`.
    async fn touch_api_key(&self, id: &str, at: DateTime<Utc>) -> StoreResult<()>;

    async fn insert_refresh_token(&self, token: &RefreshTokenRecord) -> StoreResult<()>;

    async fn refresh_token(&self, token_hash: &str) -> StoreResult<Option<RefreshTokenRecord>>;

    /// Mark an unused, unrevoked token used; false when it already was (a reuse or a race).
    async fn use_refresh_token(&self, token_hash: &str) -> StoreResult<bool>;

    /// Revoke every token of a family; returns how many were live.
    async fn revoke_refresh_family(&self, family_id: &str) -> StoreResult<u64>;

    async fn record_usage(&self, usage: &NewUsage) -> StoreResult<()>;

    /// A principal's usage with `from <= created_at < to`, by provider and model.
    async fn usage_summary(
        &self,
        principal_id: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> StoreResult<UsageSummary>;

    /// Store a debate's receipt and set the debate's `receipt_id`, in one transaction.
    /// `false` (nothing written) when the debate already has one.
    async fn insert_receipt(&self, receipt: &NewReceipt) -> StoreResult<bool>;

    /// [`insert_receipt`](Self::insert_receipt) for several debates: each flag, in order,
    /// says whether that receipt was stored. A backend may write them in one transaction,
    /// all or none; an error means none was stored by this call.
    async fn insert_receipts(&self, receipts: &[NewReceipt]) -> StoreResult<Vec<bool>> {
        let mut stored = Vec::with_capacity(receipts.len());
        for receipt in receipts {
            stored.push(self.insert_receipt(receipt).await?);
        }
        Ok(stored)
    }

    async fn get_receipt(&self, receipt_id: &str) -> StoreResult<Option<ReceiptRow>>;

    async fn receipt_of_debate(&self, debate_id: &str) -> StoreResult<Option<ReceiptRow>>;

    /// Receipts newest first (of one owner when given) and how many there are in all.
    async fn list_receipts(
        &self,
        owner_id: Option<&str>,
        limit: u32,
        offset: u32,
    ) -> StoreResult<(Vec<ReceiptRow>, i64)>;

    /// Debates that ended `completed` or `no_consensus` and have no receipt yet, oldest first.
    async fn debates_awaiting_receipt(&self, limit: u32) -> StoreResult<Vec<String>>;

    /// Remember a public key that signs receipts (kept when already known).
    async fn register_signing_key(&self, key_id: &str, public_key_pem: &str) -> StoreResult<()>;

    /// The public key PEM of a key that has signed receipts here.
    async fn signing_key(&self, key_id: &str) -> StoreResult<Option<String>>;
}

/// A receipt to store (see [`crate::receipts`]).
#[derive(Debug, Clone)]
pub struct NewReceipt {
    pub receipt_id: String,
    pub debate_id: String,
    pub owner_id: Option<String>,
    pub verdict: String,
    pub key_id: Option<String>,
    pub chain_head: String,
    pub event_count: i64,
    pub issued_at: DateTime<Utc>,
    /// The native receipt, as served.
    pub receipt: String,
    /// The signed ODR documents, as served.
    pub odr_v01: String,
    pub odr_v02: String,
}

/// A stored receipt: the same fields.
pub type ReceiptRow = NewReceipt;

pub type DynStore = Arc<dyn Store>;

/// The pool snapshot both backends report.
fn pool_status_of<DB: sqlx::Database>(pool: &sqlx::Pool<DB>) -> PoolStatus {
    PoolStatus {
        size: pool.size(),
        idle: u32::try_from(pool.num_idle()).unwrap_or(u32::MAX),
        max: pool.options().get_max_connections(),
    }
}

/// Page size when the caller asks for 0, and the hard cap, so one request cannot pull the table.
const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 200;

fn clamp_limit(limit: u32) -> u32 {
    if limit == 0 {
        DEFAULT_PAGE
    } else {
        limit.min(MAX_PAGE)
    }
}

/// `ratings` page: 0 means 50, at most 500.
fn clamp_ratings_limit(limit: u32) -> u32 {
    if limit == 0 { 50 } else { limit.min(500) }
}

/// `events_of_kinds` page: 0 means 100, at most 1000.
fn clamp_events_limit(limit: u32) -> u32 {
    if limit == 0 { 100 } else { limit.min(1000) }
}

/// The stored key of a rating's domain: '' is the overall rating (a NOT NULL key column, so
/// the primary key (agent, domain) holds), and `Some("")` is read as overall too.
fn domain_key(domain: Option<&str>) -> &str {
    domain.unwrap_or("")
}

fn domain_from_key(key: String) -> Option<String> {
    if key.is_empty() { None } else { Some(key) }
}

/// One (agent, domain) row while a debate's matches are applied to it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Tally {
    rating: f64,
    games: i64,
    wins: i64,
    losses: i64,
    draws: i64,
}

impl Tally {
    const NEW: Tally = Tally {
        rating: crate::ratings::INITIAL_RATING,
        games: 0,
        wins: 0,
        losses: 0,
        draws: 0,
    };

    fn record(&mut self, rating: f64, score: f64) {
        self.rating = rating;
        self.games += 1;
        if score > 0.5 {
            self.wins += 1;
        } else if score < 0.5 {
            self.losses += 1;
        } else {
            self.draws += 1;
        }
    }
}

/// Rows a batch touches, keyed (domain key, agent) — sorted, which is also the order rows are
/// created and locked in, so concurrent batches cannot deadlock.
type Tallies = std::collections::BTreeMap<(String, String), Tally>;

/// Rejects what the Elo arithmetic cannot mean, before a transaction starts.
fn check_matches(matches: &[MatchResult]) -> StoreResult<()> {
    for m in matches {
        let bad = if m.a == m.b {
            Some("an agent cannot play itself")
        } else if !(0.0..=1.0).contains(&m.score_a) {
            Some("score_a must be within 0..=1")
        } else {
            None
        };
        if let Some(why) = bad {
            return Err(StoreError::Database(sqlx::Error::InvalidArgument(format!(
                "match {} vs {} (score {}): {why}",
                m.a, m.b, m.score_a
            ))));
        }
    }
    Ok(())
}

/// The domain keys a batch rates under: always overall (''), plus the domain if any.
fn rating_scopes(domain: Option<&str>) -> Vec<String> {
    let mut scopes = vec![String::new()];
    if let Some(d) = domain.filter(|d| !d.is_empty()) {
        scopes.push(d.to_owned());
    }
    scopes
}

/// Distinct agents of a batch, sorted.
fn match_agents(matches: &[MatchResult]) -> Vec<String> {
    let set: std::collections::BTreeSet<&str> = matches
        .iter()
        .flat_map(|m| [m.a.as_str(), m.b.as_str()])
        .collect();
    set.into_iter().map(str::to_owned).collect()
}

/// Applies every match, in order, under every scope. `tallies` holds the current row of each
/// (scope, agent) of the batch; a missing one starts from [`Tally::NEW`].
fn apply_matches(tallies: &mut Tallies, scopes: &[String], matches: &[MatchResult]) {
    for scope in scopes {
        for m in matches {
            let a = tallies
                .get(&(scope.clone(), m.a.clone()))
                .copied()
                .unwrap_or(Tally::NEW);
            let b = tallies
                .get(&(scope.clone(), m.b.clone()))
                .copied()
                .unwrap_or(Tally::NEW);
            let (ra, rb) =
                crate::ratings::update(a.rating, b.rating, m.score_a, crate::ratings::K_FACTOR);
            let entry = tallies.entry((scope.clone(), m.a.clone())).or_insert(a);
            entry.record(ra, m.score_a);
            let entry = tallies.entry((scope.clone(), m.b.clone())).or_insert(b);
            entry.record(rb, 1.0 - m.score_a);
        }
    }
}

/// Both backends keep microseconds (Postgres' TIMESTAMPTZ resolution), so a value read back
/// equals the value written whichever backend stored it.
fn truncate_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    let nanos = t.timestamp_subsec_nanos();
    t - chrono::Duration::nanoseconds(i64::from(nanos % 1_000))
}

fn now_micros() -> DateTime<Utc> {
    truncate_micros(Utc::now())
}

/// Fixed-width UTC text (always 6 fractional digits and `Z`), so SQLite's text ordering is
/// chronological ordering.
fn format_ts(t: DateTime<Utc>) -> String {
    truncate_micros(t)
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

fn parse_ts(s: &str) -> StoreResult<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt(format!("bad timestamp {s:?}: {e}")))
}

/// Keyset cursor: hex of `created_at|id` of the last row served. Hex keeps it URL-safe and
/// opaque without another dependency.
fn encode_cursor(created_at: DateTime<Utc>, id: &str) -> String {
    format!("{}|{id}", format_ts(created_at))
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn decode_cursor(cursor: &str) -> StoreResult<(DateTime<Utc>, String)> {
    let bad = || StoreError::Corrupt(format!("malformed cursor {cursor:?}"));
    if cursor.is_empty() || !cursor.len().is_multiple_of(2) || !cursor.is_ascii() {
        return Err(bad());
    }
    let bytes = (0..cursor.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&cursor[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let (ts, id) = text.split_once('|').ok_or_else(bad)?;
    let ts = parse_ts(ts).map_err(|_| bad())?;
    if id.is_empty() {
        return Err(bad());
    }
    Ok((ts, id.to_owned()))
}

/// Builds the page from `limit + 1` fetched rows: the extra row only signals that more follow.
fn make_page(mut rows: Vec<DebateRecord>, limit: u32) -> DebatePage {
    let limit = limit as usize;
    let next_cursor = if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(|r| encode_cursor(r.created_at, &r.id))
    } else {
        None
    };
    DebatePage {
        debates: rows,
        next_cursor,
    }
}

/// `min_connections = size`, `max = size + overflow` (at least 1, since sqlx rejects 0).
fn pool_bounds(pool: &PoolSettings) -> (u32, u32) {
    let max = pool.size.saturating_add(pool.max_overflow).max(1);
    (pool.size.min(max), max)
}

/// Open the store named by `url` (`sqlite://…` or `postgres://…`), without migrating.
/// What [`Store::clear_statement_caches`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StatementCacheReport {
    /// Idle connections whose cache was cleared.
    pub connections: u32,
    /// Prepared statements dropped.
    pub statements: usize,
}

/// Clear the statement cache of every connection idle right now (connections in use are left
/// alone; holding the idle ones while clearing makes each one visited once).
pub(crate) async fn clear_idle_statement_caches<DB>(pool: &sqlx::Pool<DB>) -> StatementCacheReport
where
    DB: sqlx::Database + sqlx::database::HasStatementCache,
{
    use sqlx::Connection as _;
    let mut held = Vec::new();
    let mut report = StatementCacheReport::default();
    for _ in 0..pool.num_idle() {
        let Some(mut conn) = pool.try_acquire() else {
            break;
        };
        let cached = conn.cached_statements_size();
        if conn.clear_cached_statements().await.is_ok() {
            report.connections += 1;
            report.statements += cached;
        }
        held.push(conn);
    }
    report
}

pub async fn connect(url: &str, pool: PoolSettings) -> StoreResult<DynStore> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PostgresStore::connect(url, pool).await?))
    } else {
        Ok(Arc::new(SqliteStore::connect(url, pool).await?))
    }
}
