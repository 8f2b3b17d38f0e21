//! Embedded SQLite backend: the zero-setup default for single-node deployments.
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::str::FromStr;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous, SqliteTransactionManager,
};
use sqlx::types::Json;
use sqlx::{Connection, QueryBuilder, Sqlite, TransactionManager};

use std::sync::atomic::Ordering;

use tokio::sync::oneshot;

use super::*;

/// How long a writer waits for SQLite's single write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Every column, in the order [`DebateRow`] expects.
const DEBATE_COLUMNS: &str = "id, task, status, agents, rounds, rounds_used, consensus, owner_id, \
     correlation_id, options, result, error, created_at, started_at, finished_at, instance, receipt_id";

pub struct SqliteStore {
    /// Reads only: WAL lets them run beside the writer. Nothing here writes through it.
    readers: SqlitePool,
    /// Every write goes through this one connection: debates, events, leases, ratings,
    /// receipts, and accounts, API keys, refresh tokens and usage alike. SQLite allows one
    /// writer at a time; with writers spread over a pool they contend for the lock and sleep
    /// in the busy handler (≈10 ms naps), or fail with SQLITE_BUSY after `BUSY_TIMEOUT`, while
    /// queueing here is an async wait in arrival order. Single statements run on it in
    /// autocommit; multi-statement writes use [`WriteConn::begin`].
    writer: Arc<Writer>,
    /// Submissions waiting to be written (see [`Store::create_debate_with`]).
    intake: Arc<Gather<Submission>>,
    /// Debates' ends waiting to be written (see [`Store::finish_debate`]).
    finishes: Arc<Gather<Finish>>,
    /// Debates' match results waiting to be rated (see [`Store::apply_match_results`]).
    rates: Arc<Gather<Rate>>,
}

/// Writes that arrive while the write connection is busy, written together: each joins the
/// queue and takes the connection, and whoever gets it first writes every one waiting, in
/// one transaction, and answers the others.
struct Gather<T> {
    queue: parking_lot::Mutex<Vec<(u64, T)>>,
    tickets: std::sync::atomic::AtomicU64,
}

impl<T> Default for Gather<T> {
    fn default() -> Self {
        Gather {
            queue: parking_lot::Mutex::new(Vec::new()),
            tickets: Default::default(),
        }
    }
}

impl<T: GroupWrite> Gather<T> {
    /// Queue `item` and write it from a task of its own, which takes the write connection
    /// and, when it gets it first, writes every item waiting and answers each. The writing
    /// task is not the caller's: a caller that stops waiting (a dropped request, a debate
    /// cancelled while its end is being written) cannot abandon the others' writes halfway.
    /// An item still waiting when the connection's wait runs out is answered with that error,
    /// unwritten.
    fn submit(self: &Arc<Self>, writer: &Arc<Writer>, item: T) {
        let ticket = self.tickets.fetch_add(1, Ordering::Relaxed);
        self.queue.lock().push((ticket, item));
        let (gather, writer) = (self.clone(), writer.clone());
        tokio::spawn(async move {
            match writer.take().await {
                Ok(conn) => {
                    let batch: Vec<T> = std::mem::take(&mut *gather.queue.lock())
                        .into_iter()
                        .map(|(_, item)| item)
                        .collect();
                    if !batch.is_empty() {
                        T::write(conn, &writer, batch).await;
                    }
                }
                Err(e) => {
                    // Withdrawn while still waiting; once taken, the taker answers it.
                    let withdrawn = {
                        let mut queue = gather.queue.lock();
                        queue
                            .iter()
                            .position(|(t, _)| *t == ticket)
                            .map(|i| queue.remove(i).1)
                    };
                    if let Some(item) = withdrawn {
                        item.fail(e);
                    }
                }
            }
        });
    }
}

/// A write that is queued and written in groups (see [`Gather`]).
trait GroupWrite: Sized + Send + 'static {
    /// Write `batch` on `conn` and answer each item.
    fn write<'w>(
        conn: WriteConn<'w>,
        writer: &'w Writer,
        batch: Vec<Self>,
    ) -> impl std::future::Future<Output = ()> + Send + 'w;
    /// Answer this item with `e`, unwritten.
    fn fail(self, e: StoreError);
}

impl GroupWrite for Submission {
    fn write<'w>(
        conn: WriteConn<'w>,
        writer: &'w Writer,
        batch: Vec<Self>,
    ) -> impl std::future::Future<Output = ()> + Send + 'w {
        write_submissions(conn, writer, batch)
    }
    fn fail(self, e: StoreError) {
        self.refused(e);
    }
}

impl<T: PerDebate + 'static> GroupWrite for T {
    fn write<'w>(
        conn: WriteConn<'w>,
        writer: &'w Writer,
        batch: Vec<Self>,
    ) -> impl std::future::Future<Output = ()> + Send + 'w {
        write_each(conn, writer, batch)
    }
    fn fail(self, e: StoreError) {
        self.answer(Err(e));
    }
}

/// A debate's match results not yet applied to the ratings.
struct Rate {
    debate_id: String,
    domain: Option<String>,
    matches: Vec<MatchResult>,
    reply: oneshot::Sender<StoreResult<bool>>,
}

/// A debate's end not yet written: its last event and final state.
struct Finish {
    debate_id: String,
    lease: Option<Lease>,
    update: DebateUpdate,
    end: NewEvent,
    reply: oneshot::Sender<StoreResult<(DebateRecord, StoredEvent)>>,
}

/// A debate submitted and not yet written, with its first events.
struct Submission {
    new: NewDebate,
    events: Vec<NewEvent>,
    created_at: DateTime<Utc>,
    reply: oneshot::Sender<StoreResult<(DebateRecord, Vec<StoredEvent>)>>,
}

impl Submission {
    fn accepted(self) {
        let Submission {
            new,
            events,
            created_at,
            reply,
        } = self;
        let stored = stored_run(&new.id, 1, &events, created_at);
        let record = new.into_queued(created_at);
        let _ = reply.send(Ok((record, stored)));
    }

    fn refused(self, e: StoreError) {
        let _ = self.reply.send(Err(e));
    }

    fn conflict(self) {
        let e = StoreError::Conflict(format!("debate {} already exists", self.new.id));
        self.refused(e);
    }
}

/// The write connection. For a database file it is held by the store itself, not pooled: a
/// pool pings a connection each time it comes back, one more round trip to the connection's
/// thread per write, and with one connection the pool only queued the writers, which the
/// lock here does too, in arrival order. A shared in-memory database keeps its one pool for
/// readers and writer alike (see [`SqliteStore::connect`]).
enum Writer {
    Held {
        /// `None` only while a broken connection is being replaced.
        conn: tokio::sync::Mutex<Option<SqliteConnection>>,
        opts: Box<SqliteConnectOptions>,
        /// How long a write waits for the connection before failing, as a pool's acquire.
        wait: Duration,
    },
    Pooled(SqlitePool),
}

/// The write connection, taken for one write: deref to the connection.
enum WriteConn<'a> {
    Held(tokio::sync::MutexGuard<'a, Option<SqliteConnection>>),
    Pooled(sqlx::pool::PoolConnection<Sqlite>),
}

impl std::ops::Deref for WriteConn<'_> {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        match self {
            WriteConn::Held(g) => g.as_ref().expect("the writer holds a connection"),
            WriteConn::Pooled(c) => c,
        }
    }
}

impl std::ops::DerefMut for WriteConn<'_> {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        match self {
            WriteConn::Held(g) => g.as_mut().expect("the writer holds a connection"),
            WriteConn::Pooled(c) => c,
        }
    }
}

impl Writer {
    /// Take the write connection, waiting in arrival order (at most `wait`); a held one that
    /// was dropped after a failure is opened again here.
    async fn take(&self) -> StoreResult<WriteConn<'_>> {
        match self {
            Writer::Held { conn, opts, wait } => {
                let mut guard = tokio::time::timeout(*wait, conn.lock())
                    .await
                    .map_err(|_| sqlx::Error::PoolTimedOut)?;
                if guard.is_none() {
                    *guard = Some(
                        tokio::time::timeout(*wait, SqliteConnection::connect_with(opts))
                            .await
                            .map_err(|_| sqlx::Error::PoolTimedOut)??,
                    );
                }
                Ok(WriteConn::Held(guard))
            }
            Writer::Pooled(pool) => Ok(WriteConn::Pooled(pool.acquire().await?)),
        }
    }

    async fn close(&self) {
        match self {
            Writer::Held { conn, .. } => {
                if let Some(c) = conn.lock().await.take() {
                    let _ = sqlx::Connection::close(c).await;
                }
            }
            Writer::Pooled(pool) => pool.close().await,
        }
    }
}

impl<'a> WriteConn<'a> {
    /// A write transaction on this connection. BEGIN IMMEDIATE takes the write lock up front
    /// (waiting via busy_timeout), so nothing inside can interleave with another writer; a
    /// database still busy after that is retried a few times.
    async fn begin(mut self, writer: &'a Writer) -> StoreResult<WriteTx<'a>> {
        let mut attempts = 0u64;
        let mut reset = false;
        loop {
            match SqliteTransactionManager::begin(&mut self, Some("BEGIN IMMEDIATE".into())).await {
                Ok(()) => {
                    return Ok(WriteTx {
                        conn: self,
                        open: true,
                    });
                }
                Err(e) if is_busy(&e) && attempts < 5 => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(10 * attempts)).await;
                }
                // A commit that failed (a full disk) leaves sqlx believing the writer
                // connection is still inside a transaction, and every later BEGIN is refused:
                // replace that connection with a fresh one.
                Err(sqlx::Error::InvalidSavePointStatement) if !reset => {
                    reset = true;
                    tracing::warn!(target: "aragora::store", "the SQLite writer connection was left inside a failed transaction; reopening it");
                    self = self.reopen(writer).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// This connection closed and a fresh one in its place.
    async fn reopen(self, writer: &'a Writer) -> StoreResult<WriteConn<'a>> {
        match self {
            WriteConn::Held(mut guard) => {
                if let Some(old) = guard.take() {
                    let _ = sqlx::Connection::close(old).await;
                }
                drop(guard);
                writer.take().await
            }
            WriteConn::Pooled(conn) => {
                let _ = sqlx::Connection::close(conn.detach()).await;
                writer.take().await
            }
        }
    }
}

/// A write transaction holding the write connection: rolled back when dropped without
/// [`WriteTx::commit`] (the rollback is queued to the connection before anything else can
/// use it). Deref to the connection to run statements in it.
struct WriteTx<'a> {
    conn: WriteConn<'a>,
    open: bool,
}

impl WriteTx<'_> {
    async fn commit(mut self) -> sqlx::Result<()> {
        SqliteTransactionManager::commit(&mut self.conn).await?;
        self.open = false;
        Ok(())
    }
}

impl std::ops::Deref for WriteTx<'_> {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for WriteTx<'_> {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.conn
    }
}

impl Drop for WriteTx<'_> {
    fn drop(&mut self) {
        if self.open {
            SqliteTransactionManager::start_rollback(&mut self.conn);
        }
    }
}

#[derive(sqlx::FromRow)]
struct DebateRow {
    id: String,
    task: String,
    status: String,
    agents: Json<Vec<String>>,
    rounds: i32,
    rounds_used: i32,
    consensus: String,
    owner_id: Option<String>,
    correlation_id: Option<String>,
    options: Json<serde_json::Value>,
    result: Option<Json<serde_json::Value>>,
    error: Option<String>,
    created_at: String,
    started_at: Option<String>,
    finished_at: Option<String>,
    instance: Option<String>,
    receipt_id: Option<String>,
}

impl DebateRow {
    fn into_record(self) -> StoreResult<DebateRecord> {
        Ok(DebateRecord {
            id: self.id,
            task: self.task,
            status: parse_status(&self.status)?,
            instance: self.instance,
            agents: self.agents.0,
            rounds: self.rounds,
            rounds_used: self.rounds_used,
            consensus: self.consensus,
            owner_id: self.owner_id,
            correlation_id: self.correlation_id,
            options: self.options.0,
            result: self.result.map(|j| j.0),
            error: self.error,
            created_at: parse_ts(&self.created_at)?,
            started_at: self.started_at.as_deref().map(parse_ts).transpose()?,
            finished_at: self.finished_at.as_deref().map(parse_ts).transpose()?,
            receipt_id: self.receipt_id,
        })
    }
}

#[derive(sqlx::FromRow)]
struct EventRow {
    debate_id: String,
    seq: i64,
    kind: String,
    round: Option<i32>,
    agent: Option<String>,
    data: Json<serde_json::Value>,
    created_at: String,
}

impl EventRow {
    fn into_event(self) -> StoreResult<StoredEvent> {
        Ok(StoredEvent {
            debate_id: self.debate_id,
            seq: self.seq,
            kind: self.kind,
            round: self.round,
            agent: self.agent,
            data: self.data.0,
            timestamp: parse_ts(&self.created_at)?,
        })
    }
}

#[derive(sqlx::FromRow)]
struct RatingRow {
    agent: String,
    domain: String,
    rating: f64,
    games: i64,
    wins: i64,
    losses: i64,
    draws: i64,
    updated_at: String,
}

impl RatingRow {
    fn into_rating(self) -> StoreResult<Rating> {
        Ok(Rating {
            agent: self.agent,
            domain: domain_from_key(self.domain),
            rating: self.rating,
            games: self.games,
            wins: self.wins,
            losses: self.losses,
            draws: self.draws,
            updated_at: parse_ts(&self.updated_at)?,
        })
    }
}

const EVENT_COLUMNS: &str = "debate_id, seq, kind, round, agent, data, created_at";

fn records(rows: Vec<DebateRow>) -> StoreResult<Vec<DebateRecord>> {
    rows.into_iter().map(DebateRow::into_record).collect()
}

/// SQLITE_BUSY / SQLITE_LOCKED (and their extended codes): another writer held the lock past
/// the busy timeout; worth one more try rather than failing an append.
fn is_busy(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .and_then(sqlx::error::DatabaseError::code)
        .and_then(|c| c.parse::<i32>().ok())
        .is_some_and(|c| matches!(c & 0xff, 5 | 6))
}

/// The rows of one multi-row statement, padded with empty rows (`None`, bound as NULLs the
/// statement filters out) to the next power of two. The statement's text then takes one of a
/// few shapes, each prepared once and kept in the connection's statement cache; a text for
/// every row count was parsed and planned anew for almost every group, 12 % of the writer
/// thread's time at 3,000 debates (docs/benchmarks.md).
fn padded<T>(rows: &[T]) -> impl Iterator<Item = Option<&T>> {
    let pad = rows.len().next_power_of_two() - rows.len();
    rows.iter().map(Some).chain(std::iter::repeat_n(None, pad))
}

/// A step to append, borrowed: from a [`StepWrite`] of a group, or from the arguments of a
/// lone [`Store::append_step`].
struct StepRef<'a> {
    debate_id: &'a str,
    lease: Option<&'a Lease>,
    events: &'a [NewEvent],
    usage: &'a [NewUsage],
}

impl<'a> From<&'a StepWrite> for StepRef<'a> {
    fn from(s: &'a StepWrite) -> Self {
        StepRef {
            debate_id: &s.debate_id,
            lease: s.lease.as_ref(),
            events: &s.events,
            usage: &s.usage,
        }
    }
}

impl SqliteStore {
    /// [`Store::append_steps`] (and [`Store::append_step`], a group of one): a handful of
    /// statements for the whole group, not a few per step or one per row. The writer's
    /// transaction is held while its holder is scheduled again between statements (each is
    /// a round trip to the connection's thread), and with thousands of debates running that
    /// wait, not SQLite, was what each statement cost.
    async fn append_many(
        &self,
        steps: &[StepRef<'_>],
    ) -> StoreResult<Vec<StoreResult<Vec<StoredEvent>>>> {
        /// Rows per statement: a power of two (see [`padded`]), under SQLite's 32,766 bound
        /// parameters.
        const USAGE_PER_STATEMENT: usize = 1_024;
        let live: Vec<&StepRef<'_>> = steps.iter().filter(|s| !s.events.is_empty()).collect();
        if live.is_empty() {
            return Ok(steps.iter().map(|_| Ok(Vec::new())).collect());
        }
        let timestamp = now_micros();
        let at = format_ts(timestamp);
        let mut tx = self.begin_write().await?;
        // Each debate's last_seq, bumped by its count where its lease still holds.
        let counts: Vec<(&str, i64, Option<&Lease>)> = live
            .iter()
            .map(|s| (s.debate_id, s.events.len() as i64, s.lease))
            .collect();
        let last = bump_seqs(&mut tx, &counts).await?;
        let written: Vec<&StepRef<'_>> = live
            .iter()
            .copied()
            .filter(|s| last.contains_key(s.debate_id))
            .collect();
        let events: Vec<(&StepRef<'_>, i64, &NewEvent)> = written
            .iter()
            .flat_map(|s| {
                let first = last[s.debate_id] - s.events.len() as i64 + 1;
                s.events
                    .iter()
                    .enumerate()
                    .map(move |(i, e)| (*s, first + i as i64, e))
            })
            .collect();
        let rows: Vec<NewEventRow<'_>> = events
            .iter()
            .map(|(s, seq, e)| (s.debate_id, *seq, *e, at.as_str()))
            .collect();
        insert_event_rows(&mut tx, &rows).await?;
        let usage: Vec<&NewUsage> = written.iter().flat_map(|s| s.usage).collect();
        for chunk in usage.chunks(USAGE_PER_STATEMENT) {
            let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT INTO usage (principal_id, debate_id, agent, provider, model, \
                 input_tokens, output_tokens, estimated, cost_usd, created_at) SELECT * FROM (",
            );
            qb.push_values(padded(chunk), |mut row, u| {
                row.push_bind(u.map(|u| u.principal_id.as_str()))
                    .push_bind(u.and_then(|u| u.debate_id.as_deref()))
                    .push_bind(u.map(|u| u.agent.as_str()))
                    .push_bind(u.map(|u| u.provider.as_str()))
                    .push_bind(u.map(|u| u.model.as_str()))
                    .push_bind(u.map(|u| u.input_tokens))
                    .push_bind(u.map(|u| u.output_tokens))
                    .push_bind(u.map(|u| u.estimated))
                    .push_bind(u.map(|u| u.cost_usd))
                    .push_bind(u.map(|_| at.as_str()));
            });
            qb.push(") WHERE column1 IS NOT NULL");
            qb.build().execute(&mut *tx).await?;
        }
        // Why the others were refused: their debate is gone, or their lease moved on.
        let mut existing = HashSet::new();
        for s in live.iter().filter(|s| !last.contains_key(s.debate_id)) {
            let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM debates WHERE id = ?")
                .bind(s.debate_id)
                .fetch_optional(&mut *tx)
                .await?;
            if found.is_some() {
                existing.insert(s.debate_id);
            }
        }
        tx.commit().await?;
        Ok(steps
            .iter()
            .map(|s| {
                if s.events.is_empty() {
                    return Ok(Vec::new());
                }
                let Some(&end) = last.get(s.debate_id) else {
                    return Err(match (s.lease, existing.contains(s.debate_id)) {
                        (Some(lease), true) => StoreError::Fenced(format!(
                            "debate {} is no longer held by {} (generation {})",
                            s.debate_id, lease.owner, lease.generation
                        )),
                        _ => StoreError::NotFound(format!("debate {}", s.debate_id)),
                    });
                };
                let first = end - s.events.len() as i64 + 1;
                Ok(stored_run(s.debate_id, first, s.events, timestamp))
            })
            .collect())
    }

    /// Claim up to `max` of the oldest debates `which` selects (`INDEXED BY … WHERE …`, with
    /// one `?` for the expiry bound), for `instance`.
    async fn claim(
        &self,
        instance: &str,
        max: u32,
        ttl: Duration,
        which: &str,
    ) -> StoreResult<Vec<ClaimedDebate>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        // One writer at a time (BEGIN IMMEDIATE): the select and the updates cannot interleave
        // with another claim.
        let mut tx = self.begin_write().await?;
        let now = Utc::now();
        let candidates: Vec<(String, String, Option<String>, bool, bool)> =
            sqlx::query_as(&format!(
                "SELECT id, status, lease_owner, cancel_requested, pause_requested FROM debates \
                 {which} ORDER BY created_at, id LIMIT ?"
            ))
            .bind(format_ts(now))
            .bind(i64::from(max))
            .fetch_all(&mut *tx)
            .await?;
        let expires = format_ts(now + chrono::Duration::from_std(ttl).unwrap_or_default());
        let started = format_ts(now);
        // One statement per chunk of candidates, not one per debate: each statement is a round
        // trip to the connection's thread while the write lock is held. RETURNING gives the
        // rows after the update; what they were before comes from the select.
        const IDS_PER_STATEMENT: usize = 512;
        let mut rows: HashMap<String, ClaimRow> = HashMap::with_capacity(candidates.len());
        for chunk in candidates.chunks(IDS_PER_STATEMENT) {
            let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
                "UPDATE debates SET status = 'running', started_at = COALESCE(started_at, ",
            );
            qb.push_bind(started.as_str())
                .push("), lease_owner = ")
                .push_bind(instance)
                .push(", lease_generation = lease_generation + 1, instance = ")
                .push_bind(instance)
                .push(", lease_expires_at = ")
                .push_bind(expires.as_str())
                .push(" WHERE id IN (");
            let mut ids = qb.separated(", ");
            // Padded (see [`padded`]): a NULL id matches no debate.
            for c in padded(chunk) {
                ids.push_bind(c.map(|c| c.0.as_str()));
            }
            qb.push(format!(") RETURNING {DEBATE_COLUMNS}, lease_generation"));
            let updated: Vec<ClaimRow> = qb.build_query_as().fetch_all(&mut *tx).await?;
            rows.extend(updated.into_iter().map(|r| (r.debate.id.clone(), r)));
        }
        let mut claimed = Vec::with_capacity(candidates.len());
        for (id, previous_status, previous_owner, cancel_requested, pause_requested) in candidates {
            let row = rows.remove(&id).ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "debate {id} was selected for a claim and not updated"
                ))
            })?;
            claimed.push(ClaimedDebate {
                record: row.debate.into_record()?,
                lease: Lease {
                    owner: instance.to_owned(),
                    generation: row.lease_generation,
                },
                previous_status: parse_status(&previous_status)?,
                previous_owner,
                cancel_requested,
                pause_requested,
            });
        }
        let result = Ok(claimed);
        tx.commit().await?;
        result
    }

    /// Accepts `sqlite:///abs/path.db`, `sqlite://./rel/path.db`, `sqlite:path.db` and
    /// `sqlite::memory:`. The parent directory is created so a fresh data dir just works.
    pub async fn connect(url: &str, pool: PoolSettings) -> StoreResult<Self> {
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let mut opts = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT)
            // A grouped append's statement journal (the pages it would give back if it failed
            // alone) stays in memory instead of spilling to a temporary file past 64 KiB: at
            // 3,000 debates those writes were 15 % of the writer thread's time.
            .pragma("temp_store", "memory")
            // A checkpoint every 10,000 WAL pages (about 40 MB) instead of 1,000: the pages
            // the appends keep rewriting (the debates' rows, the indexes' ends) are copied to
            // the database file and synced once per checkpoint, so fewer checkpoints copy less.
            .pragma("wal_autocheckpoint", "10000");
        if !in_memory {
            // WAL lets readers proceed while one writer commits; NORMAL is durable in WAL mode
            // except for the last transactions on power loss, which is the usual trade-off.
            opts = opts
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal);
            if let Some(parent) = opts.get_filename().parent()
                && parent != Path::new("")
            {
                std::fs::create_dir_all(parent).map_err(|e| {
                    StoreError::Database(sqlx::Error::Configuration(
                        format!("cannot create {}: {e}", parent.display()).into(),
                    ))
                })?;
            }
        }
        let (min, max) = pool_bounds(&pool);
        // No ping before each checkout: an embedded database has no server to lose, and the
        // ping is one more round trip to the connection's thread per statement group, each of
        // which can wait behind a WebSocket fan-out (docs/benchmarks.md).
        let pool_opts = SqlitePoolOptions::new()
            .min_connections(min)
            .max_connections(max)
            .test_before_acquire(false)
            .acquire_timeout(pool.acquire_timeout);
        if in_memory {
            // A shared in-memory database lives only while a connection holds it open. Its
            // one pool serialises access and is both the readers and the writer.
            let pool = pool_opts
                .min_connections(min.max(1))
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_with(opts)
                .await?;
            return Ok(Self {
                readers: pool.clone(),
                writer: Arc::new(Writer::Pooled(pool)),
                intake: Default::default(),
                finishes: Default::default(),
                rates: Default::default(),
            });
        }
        // Local file open: bounded by acquire_timeout, and surfaces a bad path at startup. The
        // writer opens first: it creates the file and switches it to WAL.
        // Room for every write statement, the grouped appends' padded shapes included.
        let writer_opts = opts.clone().statement_cache_capacity(256);
        let conn = tokio::time::timeout(
            pool.acquire_timeout,
            SqliteConnection::connect_with(&writer_opts),
        )
        .await
        .map_err(|_| sqlx::Error::PoolTimedOut)??;
        let writer = Writer::Held {
            conn: tokio::sync::Mutex::new(Some(conn)),
            opts: Box::new(writer_opts),
            wait: pool.acquire_timeout,
        };
        // The readers are opened read-only, so a write sent to them by mistake fails at once
        // ("attempt to write a readonly database") instead of contending with the writer.
        let readers = pool_opts
            .connect_with(opts.read_only(true).create_if_missing(false))
            .await?;
        Ok(Self {
            readers,
            writer: Arc::new(writer),
            intake: Default::default(),
            finishes: Default::default(),
            rates: Default::default(),
        })
    }

    async fn fetch_debate(&self, id: &str) -> StoreResult<Option<DebateRecord>> {
        let sql = format!("SELECT {DEBATE_COLUMNS} FROM debates WHERE id = ?");
        sqlx::query_as::<_, DebateRow>(&sql)
            .bind(id)
            .fetch_optional(&self.readers)
            .await?
            .map(DebateRow::into_record)
            .transpose()
    }

    /// A write transaction on the write connection (see [`WriteConn::begin`]).
    async fn begin_write(&self) -> StoreResult<WriteTx<'_>> {
        self.writer.take().await?.begin(&self.writer).await
    }
}

#[derive(sqlx::FromRow)]
struct ClaimRow {
    #[sqlx(flatten)]
    debate: DebateRow,
    lease_generation: i64,
}

#[derive(sqlx::FromRow)]
struct ActiveRow {
    id: String,
    task: String,
    owner_id: Option<String>,
    lease_owner: Option<String>,
    round: Option<i32>,
    rounds: i32,
    started_at: Option<String>,
    lease_expires_at: Option<String>,
}

impl ActiveRow {
    fn into_active(self) -> StoreResult<ActiveDebate> {
        Ok(ActiveDebate {
            id: self.id,
            task: self.task,
            owner_id: self.owner_id,
            instance: self.lease_owner,
            round: self.round.unwrap_or(0),
            total_rounds: self.rounds,
            started_at: self.started_at.as_deref().map(parse_ts).transpose()?,
            lease_expires_at: self.lease_expires_at.as_deref().map(parse_ts).transpose()?,
        })
    }
}

/// An event row to insert: debate id, seq, the event, its created_at as stored.
type NewEventRow<'a> = (&'a str, i64, &'a NewEvent, &'a str);

/// Insert `rows` into `debate_events`: one statement per 1,024 rows, padded to a power of two
/// (see [`padded`]).
async fn insert_event_rows(
    conn: &mut SqliteConnection,
    rows: &[NewEventRow<'_>],
) -> StoreResult<()> {
    const EVENTS_PER_STATEMENT: usize = 1_024;
    for chunk in rows.chunks(EVENTS_PER_STATEMENT) {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO debate_events (debate_id, seq, kind, round, agent, data, created_at) \
             SELECT * FROM (",
        );
        qb.push_values(padded(chunk), |mut row, r| {
            row.push_bind(r.map(|(id, _, _, _)| *id))
                .push_bind(r.map(|(_, seq, _, _)| *seq))
                .push_bind(r.map(|(_, _, e, _)| e.kind.as_str()))
                .push_bind(r.and_then(|(_, _, e, _)| e.round))
                .push_bind(r.and_then(|(_, _, e, _)| e.agent.as_deref()))
                .push_bind(r.map(|(_, _, e, _)| Json(&e.data)))
                .push_bind(r.map(|(_, _, _, at)| *at));
        });
        qb.push(") WHERE column1 IS NOT NULL");
        qb.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Insert the debates of `batch` (queued, each with its first events as seqs 1..=n) in one
/// transaction; the ids inserted (an id already taken is not).
async fn insert_submissions(
    conn: WriteConn<'_>,
    writer: &Writer,
    batch: &[Submission],
) -> StoreResult<HashSet<String>> {
    const DEBATES_PER_STATEMENT: usize = 512;
    let mut tx = conn.begin(writer).await?;
    let mut inserted = HashSet::with_capacity(batch.len());
    for chunk in batch.chunks(DEBATES_PER_STATEMENT) {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO debates (id, task, status, agents, rounds, rounds_used, consensus, \
             owner_id, correlation_id, options, created_at, last_seq) SELECT * FROM (",
        );
        qb.push_values(padded(chunk), |mut row, s| {
            let n = s.map(|s| &s.new);
            row.push_bind(n.map(|n| n.id.as_str()))
                .push_bind(n.map(|n| n.task.as_str()))
                .push_bind(s.map(|_| "queued"))
                .push_bind(n.map(|n| Json(&n.agents)))
                .push_bind(n.map(|n| n.rounds))
                .push_bind(s.map(|_| 0i32))
                .push_bind(n.map(|n| n.consensus.as_str()))
                .push_bind(n.and_then(|n| n.owner_id.as_deref()))
                .push_bind(n.and_then(|n| n.correlation_id.as_deref()))
                .push_bind(n.map(|n| Json(&n.options)))
                .push_bind(s.map(|s| format_ts(s.created_at)))
                .push_bind(s.map(|s| s.events.len() as i64));
        });
        // ON CONFLICT DO NOTHING: a taken id is left out of RETURNING, not an error to parse.
        qb.push(") WHERE column1 IS NOT NULL ON CONFLICT (id) DO NOTHING RETURNING id");
        let ids: Vec<String> = qb.build_query_scalar().fetch_all(&mut *tx).await?;
        inserted.extend(ids);
    }
    // Each debate's last_seq already counts its first events.
    let at: HashMap<&str, String> = batch
        .iter()
        .map(|s| (s.new.id.as_str(), format_ts(s.created_at)))
        .collect();
    let rows: Vec<NewEventRow<'_>> = batch
        .iter()
        .filter(|s| inserted.contains(&s.new.id))
        .flat_map(|s| {
            let id = s.new.id.as_str();
            let at = at[id].as_str();
            s.events
                .iter()
                .enumerate()
                .map(move |(i, e)| (id, i as i64 + 1, e, at))
        })
        .collect();
    insert_event_rows(&mut tx, &rows).await?;
    tx.commit().await?;
    Ok(inserted)
}

/// Append `events` inside `tx` (which holds the write lock): bump `last_seq` by their number,
/// fenced by `lease` when given, and insert them with the seqs that frees.
async fn insert_usage(conn: &mut sqlx::SqliteConnection, u: &NewUsage) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO usage (principal_id, debate_id, agent, provider, model, input_tokens, \
         output_tokens, estimated, cost_usd, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&u.principal_id)
    .bind(&u.debate_id)
    .bind(&u.agent)
    .bind(&u.provider)
    .bind(&u.model)
    .bind(u.input_tokens)
    .bind(u.output_tokens)
    .bind(u.estimated)
    .bind(u.cost_usd)
    .bind(format_ts(now_micros()))
    .execute(conn)
    .await?;
    Ok(())
}

/// Write `batch` on `conn` in one transaction and answer each submission. A duplicate id
/// is refused as a conflict, within the batch as against the table. When the database
/// refuses the whole batch, each submission is written alone, so one's fault stays its own.
async fn write_submissions(conn: WriteConn<'_>, writer: &Writer, batch: Vec<Submission>) {
    let mut seen = HashSet::new();
    let (batch, twice): (Vec<Submission>, Vec<Submission>) = batch
        .into_iter()
        .partition(|s| seen.insert(s.new.id.clone()));
    twice.into_iter().for_each(Submission::conflict);
    match insert_submissions(conn, writer, &batch).await {
        Ok(inserted) => {
            for s in batch {
                if inserted.contains(&s.new.id) {
                    s.accepted();
                } else {
                    s.conflict();
                }
            }
        }
        Err(e) if batch.len() == 1 => {
            if let Some(s) = batch.into_iter().next() {
                s.refused(e);
            }
        }
        Err(_) => {
            for s in batch {
                let alone = match writer.take().await {
                    Ok(conn) => insert_submissions(conn, writer, std::slice::from_ref(&s)).await,
                    Err(e) => Err(e),
                };
                match alone {
                    Ok(inserted) if inserted.contains(&s.new.id) => s.accepted(),
                    Ok(_) => s.conflict(),
                    Err(e) => s.refused(e),
                }
            }
        }
    }
}

/// A grouped write with one outcome per debate: ends and ratings (see [`write_each`]).
trait PerDebate: Sized + Send {
    type Outcome: Send;
    fn debate_id(&self) -> &str;
    /// Write `batch` (distinct debates) in one transaction: each one's outcome, in order.
    fn group<'w>(
        conn: WriteConn<'w>,
        writer: &'w Writer,
        batch: &'w [Self],
    ) -> impl std::future::Future<Output = StoreResult<Vec<StoreResult<Self::Outcome>>>> + Send + 'w;
    fn answer(self, outcome: StoreResult<Self::Outcome>);
}

impl PerDebate for Finish {
    type Outcome = (DebateRecord, StoredEvent);
    fn debate_id(&self) -> &str {
        &self.debate_id
    }
    fn group<'w>(
        conn: WriteConn<'w>,
        writer: &'w Writer,
        batch: &'w [Self],
    ) -> impl std::future::Future<Output = StoreResult<Vec<StoreResult<Self::Outcome>>>> + Send + 'w
    {
        finish_group(conn, writer, batch)
    }
    fn answer(self, outcome: StoreResult<Self::Outcome>) {
        let _ = self.reply.send(outcome);
    }
}

impl PerDebate for Rate {
    type Outcome = bool;
    fn debate_id(&self) -> &str {
        &self.debate_id
    }
    async fn group<'w>(
        conn: WriteConn<'w>,
        writer: &'w Writer,
        batch: &'w [Self],
    ) -> StoreResult<Vec<StoreResult<bool>>> {
        Ok(rate_group(conn, writer, batch)
            .await?
            .into_iter()
            .map(Ok)
            .collect())
    }
    fn answer(self, outcome: StoreResult<bool>) {
        let _ = self.reply.send(outcome);
    }
}

/// Write `batch` on `conn` in one transaction and answer each. A debate twice in one batch
/// has its later write made after, alone; when the database refuses the batch whole, each
/// is written alone, so one's fault stays its own.
async fn write_each<T: PerDebate>(conn: WriteConn<'_>, writer: &Writer, batch: Vec<T>) {
    let mut seen = HashSet::new();
    let (batch, again): (Vec<T>, Vec<T>) = batch
        .into_iter()
        .partition(|t| seen.insert(t.debate_id().to_owned()));
    let mut alone = Vec::new();
    match T::group(conn, writer, &batch).await {
        Ok(outcomes) => {
            for (t, outcome) in batch.into_iter().zip(outcomes) {
                t.answer(outcome);
            }
        }
        Err(e) if batch.len() == 1 => {
            if let Some(t) = batch.into_iter().next() {
                t.answer(Err(e));
            }
        }
        Err(_) => alone = batch,
    }
    for t in alone.into_iter().chain(again) {
        let outcome = match writer.take().await {
            Ok(conn) => T::group(conn, writer, std::slice::from_ref(&t))
                .await
                .and_then(|mut one| {
                    one.pop().unwrap_or_else(|| {
                        Err(StoreError::NotFound(format!("debate {}", t.debate_id())))
                    })
                }),
            Err(e) => Err(e),
        };
        t.answer(outcome);
    }
}

/// Bump each debate's `last_seq` by its count where its lease (when given) still holds, in
/// one padded statement per 1,024 debates: each bumped debate's new `last_seq`. A debate
/// missing from the answer is gone or no longer held.
async fn bump_seqs(
    tx: &mut WriteTx<'_>,
    counts: &[(&str, i64, Option<&Lease>)],
) -> StoreResult<HashMap<String, i64>> {
    const DEBATES_PER_STATEMENT: usize = 1_024;
    let mut last: HashMap<String, i64> = HashMap::with_capacity(counts.len());
    for chunk in counts.chunks(DEBATES_PER_STATEMENT) {
        let mut qb: QueryBuilder<Sqlite> =
            QueryBuilder::new("WITH v(id, n, owner, generation) AS (");
        // Padding rows have no id, so they match no debate.
        qb.push_values(padded(chunk), |mut row, c| {
            row.push_bind(c.map(|c| c.0))
                .push_bind(c.map(|c| c.1))
                .push_bind(c.and_then(|c| c.2.map(|l| l.owner.as_str())))
                .push_bind(c.map(|c| c.2.map_or(0, |l| l.generation)));
        });
        qb.push(
            ") UPDATE debates SET last_seq = debates.last_seq + v.n FROM v \
             WHERE debates.id = v.id AND (v.owner IS NULL OR \
                 (debates.lease_owner = v.owner AND debates.lease_generation = v.generation)) \
             RETURNING debates.id, debates.last_seq",
        );
        let bumped: Vec<(String, i64)> = qb.build_query_as().fetch_all(&mut **tx).await?;
        last.extend(bumped);
    }
    Ok(last)
}

/// Write the ends of `batch` (distinct debates) in one transaction: each debate's last event
/// where its lease still holds, and its final state with the lease dropped. Each gets its
/// own answer; an error here means nothing was written.
async fn finish_group(
    conn: WriteConn<'_>,
    writer: &Writer,
    batch: &[Finish],
) -> StoreResult<Vec<StoreResult<(DebateRecord, StoredEvent)>>> {
    const DEBATES_PER_STATEMENT: usize = 256;
    let mut tx = conn.begin(writer).await?;
    let counts: Vec<(&str, i64, Option<&Lease>)> = batch
        .iter()
        .map(|f| (f.debate_id.as_str(), 1, f.lease.as_ref()))
        .collect();
    let last = bump_seqs(&mut tx, &counts).await?;
    let timestamp = now_micros();
    let at = format_ts(timestamp);
    let held: Vec<&Finish> = batch
        .iter()
        .filter(|f| last.contains_key(&f.debate_id))
        .collect();
    let rows: Vec<NewEventRow<'_>> = held
        .iter()
        .map(|f| {
            (
                f.debate_id.as_str(),
                last[&f.debate_id],
                &f.end,
                at.as_str(),
            )
        })
        .collect();
    insert_event_rows(&mut tx, &rows).await?;
    let mut records: HashMap<String, DebateRecord> = HashMap::with_capacity(held.len());
    for chunk in held.chunks(DEBATES_PER_STATEMENT) {
        // COALESCE keeps the stored value wherever the update carries None; padding rows
        // have no id, so they match no debate.
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
            "WITH v(f_id, f_status, f_rounds_used, f_result, f_error, f_started_at, \
             f_finished_at) AS (",
        );
        qb.push_values(padded(chunk), |mut row, f| {
            let u = f.map(|f| &f.update);
            row.push_bind(f.map(|f| f.debate_id.as_str()))
                .push_bind(u.and_then(|u| u.status.map(DebateStatus::as_str)))
                .push_bind(u.and_then(|u| u.rounds_used))
                .push_bind(u.and_then(|u| u.result.as_ref().map(Json)))
                .push_bind(u.and_then(|u| u.error.as_deref()))
                .push_bind(u.and_then(|u| u.started_at.map(format_ts)))
                .push_bind(u.and_then(|u| u.finished_at.map(format_ts)));
        });
        qb.push(format!(
            ") UPDATE debates SET status = COALESCE(v.f_status, status), \
             rounds_used = COALESCE(v.f_rounds_used, rounds_used), \
             result = COALESCE(v.f_result, result), error = COALESCE(v.f_error, error), \
             started_at = COALESCE(v.f_started_at, started_at), \
             finished_at = COALESCE(v.f_finished_at, finished_at), lease_owner = NULL, \
             lease_expires_at = NULL, cancel_requested = 0, pause_requested = 0 \
             FROM v WHERE debates.id = v.f_id RETURNING {DEBATE_COLUMNS}"
        ));
        let rows: Vec<DebateRow> = qb.build_query_as().fetch_all(&mut *tx).await?;
        for row in rows {
            let record = row.into_record()?;
            records.insert(record.id.clone(), record);
        }
    }
    // Why the others were refused: their debate is gone, or their lease moved on.
    let mut refusals: HashMap<&str, StoreError> = HashMap::new();
    for f in batch.iter().filter(|f| !last.contains_key(&f.debate_id)) {
        let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM debates WHERE id = ?")
            .bind(&f.debate_id)
            .fetch_optional(&mut *tx)
            .await?;
        refusals.insert(
            &f.debate_id,
            refused(&f.debate_id, f.lease.as_ref(), found.is_some()),
        );
    }
    tx.commit().await?;
    Ok(batch
        .iter()
        .map(|f| {
            if let Some(e) = refusals.remove(f.debate_id.as_str()) {
                return Err(e);
            }
            let record = records
                .remove(&f.debate_id)
                .ok_or_else(|| StoreError::NotFound(format!("debate {}", f.debate_id)))?;
            let seq = last[&f.debate_id];
            let event = stored_run(&f.debate_id, seq, std::slice::from_ref(&f.end), timestamp)
                .pop()
                .ok_or_else(|| StoreError::NotFound(format!("debate {}", f.debate_id)))?;
            Ok((record, event))
        })
        .collect())
}

async fn insert_events(
    tx: &mut WriteTx<'_>,
    debate_id: &str,
    lease: Option<&Lease>,
    events: &[NewEvent],
) -> StoreResult<Vec<StoredEvent>> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let n = events.len() as i64;
    let last: Option<i64> = match lease {
        None => {
            sqlx::query_scalar(
                "UPDATE debates SET last_seq = last_seq + ? WHERE id = ? RETURNING last_seq",
            )
            .bind(n)
            .bind(debate_id)
            .fetch_optional(&mut **tx)
            .await?
        }
        Some(lease) => {
            sqlx::query_scalar(
                "UPDATE debates SET last_seq = last_seq + ? WHERE id = ? \
                 AND lease_owner = ? AND lease_generation = ? RETURNING last_seq",
            )
            .bind(n)
            .bind(debate_id)
            .bind(&lease.owner)
            .bind(lease.generation)
            .fetch_optional(&mut **tx)
            .await?
        }
    };
    let Some(last) = last else {
        let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM debates WHERE id = ?")
            .bind(debate_id)
            .fetch_optional(&mut **tx)
            .await?;
        return Err(refused(debate_id, lease, exists.is_some()));
    };
    let timestamp = now_micros();
    let first = last - n + 1;
    let mut stored = Vec::with_capacity(events.len());
    for (i, e) in events.iter().enumerate() {
        let seq = first + i as i64;
        sqlx::query(
            "INSERT INTO debate_events (debate_id, seq, kind, round, agent, data, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(debate_id)
        .bind(seq)
        .bind(&e.kind)
        .bind(e.round)
        .bind(&e.agent)
        .bind(Json(&e.data))
        .bind(format_ts(timestamp))
        .execute(&mut **tx)
        .await?;
        stored.push(StoredEvent {
            debate_id: debate_id.to_owned(),
            seq,
            kind: e.kind.clone(),
            round: e.round,
            agent: e.agent.clone(),
            data: e.data.clone(),
            timestamp,
        });
    }
    Ok(stored)
}

/// Apply `update` inside `tx`; with `finish`, also drop the lease.
async fn apply_update(
    tx: &mut WriteTx<'_>,
    id: &str,
    update: &DebateUpdate,
    finish: bool,
) -> StoreResult<DebateRecord> {
    let lease = if finish {
        ", lease_owner = NULL, lease_expires_at = NULL, cancel_requested = 0, \
         pause_requested = 0"
    } else {
        ""
    };
    // COALESCE keeps the stored value wherever the update carries None.
    let sql = format!(
        "UPDATE debates SET status = COALESCE(?, status), \
         rounds_used = COALESCE(?, rounds_used), result = COALESCE(?, result), \
         error = COALESCE(?, error), started_at = COALESCE(?, started_at), \
         finished_at = COALESCE(?, finished_at){lease} WHERE id = ? RETURNING {DEBATE_COLUMNS}"
    );
    let row = sqlx::query_as::<_, DebateRow>(&sql)
        .bind(update.status.map(DebateStatus::as_str))
        .bind(update.rounds_used)
        .bind(update.result.as_ref().map(Json))
        .bind(&update.error)
        .bind(update.started_at.map(format_ts))
        .bind(update.finished_at.map(format_ts))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
    row.ok_or_else(|| StoreError::NotFound(format!("debate {id}")))?
        .into_record()
}

/// Apply the match results of `batch` (distinct debates) to the ratings in one transaction,
/// debate after debate in order: each flag says whether that debate was rated now (`false`:
/// it had been rated before). An error here means nothing was written.
async fn rate_group(
    conn: WriteConn<'_>,
    writer: &Writer,
    batch: &[Rate],
) -> StoreResult<Vec<bool>> {
    const DEBATES_PER_STATEMENT: usize = 1_024;
    let now = format_ts(now_micros());
    // BEGIN IMMEDIATE takes the database write lock before the ratings are read, so no other
    // writer can read the same rating and overwrite this update.
    let mut tx = conn.begin(writer).await?;
    let mut fresh: HashSet<String> = HashSet::with_capacity(batch.len());
    for chunk in batch.chunks(DEBATES_PER_STATEMENT) {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO rated_debates (debate_id, domain, matches, rated_at) SELECT * FROM (",
        );
        qb.push_values(padded(chunk), |mut row, r| {
            row.push_bind(r.map(|r| r.debate_id.as_str()))
                .push_bind(r.map(|r| domain_key(r.domain.as_deref())))
                .push_bind(r.map(|r| i64::try_from(r.matches.len()).unwrap_or(i64::MAX)))
                .push_bind(r.map(|_| now.as_str()));
        });
        qb.push(
            ") WHERE column1 IS NOT NULL ON CONFLICT (debate_id) DO NOTHING RETURNING debate_id",
        );
        let ids: Vec<String> = qb.build_query_scalar().fetch_all(&mut *tx).await?;
        fresh.extend(ids);
    }
    let rated: Vec<(&Rate, Vec<String>)> = batch
        .iter()
        .filter(|r| fresh.contains(&r.debate_id))
        .map(|r| (r, rating_scopes(r.domain.as_deref())))
        .collect();
    // The (scope, agent) rows the batch touches, read as they stand.
    let mut touched: HashSet<(String, String)> = HashSet::new();
    for (r, scopes) in &rated {
        for agent in match_agents(&r.matches) {
            for scope in scopes {
                touched.insert((scope.clone(), agent.clone()));
            }
        }
    }
    let mut tallies = Tallies::new();
    if !touched.is_empty() {
        let scopes: std::collections::BTreeSet<&str> =
            touched.iter().map(|(s, _)| s.as_str()).collect();
        let agents: std::collections::BTreeSet<&str> =
            touched.iter().map(|(_, a)| a.as_str()).collect();
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
            "SELECT domain, agent, rating, games, wins, losses, draws FROM ratings \
             WHERE domain IN (",
        );
        let mut list = qb.separated(", ");
        for scope in &scopes {
            list.push_bind(*scope);
        }
        qb.push(") AND agent IN (");
        let mut list = qb.separated(", ");
        for agent in &agents {
            list.push_bind(*agent);
        }
        qb.push(")");
        let rows: Vec<(String, String, f64, i64, i64, i64, i64)> =
            qb.build_query_as().fetch_all(&mut *tx).await?;
        for (domain, agent, rating, games, wins, losses, draws) in rows {
            let key = (domain, agent);
            if touched.contains(&key) {
                let tally = Tally {
                    rating,
                    games,
                    wins,
                    losses,
                    draws,
                };
                tallies.insert(key, tally);
            }
        }
    }
    for (r, scopes) in &rated {
        apply_matches(&mut tallies, scopes, &r.matches);
    }
    // Every rating in one statement (per chunk), padded like the grouped appends.
    let tallies: Vec<_> = tallies.iter().collect();
    for chunk in tallies.chunks(1_024) {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO ratings (agent, domain, rating, games, wins, losses, draws, \
             updated_at) SELECT * FROM (",
        );
        qb.push_values(padded(chunk), |mut row, r| {
            row.push_bind(r.map(|((_, agent), _)| agent.as_str()))
                .push_bind(r.map(|((domain, _), _)| domain.as_str()))
                .push_bind(r.map(|(_, t)| t.rating))
                .push_bind(r.map(|(_, t)| t.games))
                .push_bind(r.map(|(_, t)| t.wins))
                .push_bind(r.map(|(_, t)| t.losses))
                .push_bind(r.map(|(_, t)| t.draws))
                .push_bind(r.map(|_| now.as_str()));
        });
        qb.push(
            ") WHERE column1 IS NOT NULL \
             ON CONFLICT (agent, domain) DO UPDATE SET rating = excluded.rating, \
             games = excluded.games, wins = excluded.wins, losses = excluded.losses, \
             draws = excluded.draws, updated_at = excluded.updated_at",
        );
        qb.build().execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(batch.iter().map(|r| fresh.contains(&r.debate_id)).collect())
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    async fn write_probe(&self) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("UPDATE health_probe SET at = ? WHERE id = 1")
            .bind(format_ts(Utc::now()))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.readers).await?;
        Ok(())
    }

    async fn clear_statement_caches(&self) -> super::StatementCacheReport {
        super::clear_idle_statement_caches(&self.readers).await
    }

    fn pool_status(&self) -> PoolStatus {
        super::pool_status_of(&self.readers)
    }

    async fn migrate(&self) -> StoreResult<()> {
        let mut migrator = sqlx::migrate!("./migrations/sqlite");
        // Migrations are additive, so a binary older than the schema still works: applied
        // versions it does not know (a newer binary's) are not an error.
        migrator.set_ignore_missing(true);
        let mut conn = self.writer.take().await?;
        migrator.run_direct(&mut *conn).await?;
        Ok(())
    }

    async fn close(&self) {
        self.writer.close().await;
        self.readers.close().await;
    }

    async fn create_debate(&self, new: &NewDebate) -> StoreResult<DebateRecord> {
        Ok(self.create_debate_with(new, &[]).await?.0)
    }

    async fn create_debate_with(
        &self,
        new: &NewDebate,
        events: &[NewEvent],
    ) -> StoreResult<(DebateRecord, Vec<StoredEvent>)> {
        // Submissions that arrive while the write connection is busy are written together.
        let (reply, answer) = oneshot::channel();
        let submission = Submission {
            new: new.clone(),
            events: events.to_vec(),
            created_at: now_micros(),
            reply,
        };
        self.intake.submit(&self.writer, submission);
        answer
            .await
            .unwrap_or(Err(StoreError::Database(sqlx::Error::PoolClosed)))
    }

    async fn get_debate(&self, id: &str) -> StoreResult<Option<DebateRecord>> {
        self.fetch_debate(id).await
    }

    async fn update_debate(&self, id: &str, update: &DebateUpdate) -> StoreResult<DebateRecord> {
        // In a transaction so the record is returned only once the commit succeeded (a
        // failed commit, e.g. a full disk, is an error, not a stale success).
        let mut tx = self.begin_write().await?;
        let record = apply_update(&mut tx, id, update, false).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn list_debates(&self, query: &DebateQuery) -> StoreResult<DebatePage> {
        let limit = clamp_limit(query.limit);
        let cursor = query.cursor.as_deref().map(decode_cursor).transpose()?;
        let mut qb: QueryBuilder<Sqlite> =
            QueryBuilder::new(format!("SELECT {DEBATE_COLUMNS} FROM debates WHERE 1 = 1"));
        if let Some(status) = &query.status {
            qb.push(" AND status = ").push_bind(status);
        }
        if let Some(owner) = &query.owner_id {
            qb.push(" AND owner_id = ").push_bind(owner);
        }
        if let Some((created_at, id)) = cursor {
            qb.push(" AND (created_at, id) < (")
                .push_bind(format_ts(created_at))
                .push(", ")
                .push_bind(id)
                .push(")");
        }
        qb.push(" ORDER BY created_at DESC, id DESC LIMIT ")
            .push_bind(i64::from(limit) + 1)
            .push(" OFFSET ")
            .push_bind(i64::from(query.offset.unwrap_or(0)));
        let rows = qb
            .build_query_as::<DebateRow>()
            .fetch_all(&self.readers)
            .await?;
        Ok(make_page(records(rows)?, limit))
    }

    async fn append_step(
        &self,
        debate_id: &str,
        lease: Option<&Lease>,
        events: &[NewEvent],
        usage: &[NewUsage],
    ) -> StoreResult<Vec<StoredEvent>> {
        let step = StepRef {
            debate_id,
            lease,
            events,
            usage,
        };
        self.append_many(&[step])
            .await?
            .pop()
            .unwrap_or_else(|| Ok(Vec::new()))
    }

    async fn append_steps(
        &self,
        steps: &[&StepWrite],
    ) -> StoreResult<Vec<StoreResult<Vec<StoredEvent>>>> {
        let steps: Vec<StepRef<'_>> = steps.iter().map(|s| StepRef::from(*s)).collect();
        self.append_many(&steps).await
    }

    async fn finish_debate(
        &self,
        debate_id: &str,
        lease: Option<&Lease>,
        update: &DebateUpdate,
        end: &NewEvent,
    ) -> StoreResult<(DebateRecord, StoredEvent)> {
        // Ends that arrive while the write connection is busy are written together.
        let (reply, answer) = oneshot::channel();
        let finish = Finish {
            debate_id: debate_id.to_owned(),
            lease: lease.cloned(),
            update: update.clone(),
            end: end.clone(),
            reply,
        };
        self.finishes.submit(&self.writer, finish);
        answer
            .await
            .unwrap_or(Err(StoreError::Database(sqlx::Error::PoolClosed)))
    }

    async fn finish_queued(
        &self,
        debate_id: &str,
        update: &DebateUpdate,
        end: &NewEvent,
    ) -> StoreResult<Option<(DebateRecord, StoredEvent)>> {
        let mut tx = self.begin_write().await?;
        let queued: Option<String> = sqlx::query_scalar(
            "SELECT id FROM debates WHERE id = ? AND status IN ('queued', 'paused')",
        )
        .bind(debate_id)
        .fetch_optional(&mut *tx)
        .await?;
        if queued.is_none() {
            return Ok(None);
        }
        let mut stored = insert_events(&mut tx, debate_id, None, std::slice::from_ref(end)).await?;
        let record = apply_update(&mut tx, debate_id, update, true).await?;
        let result = Ok(stored.pop().map(|e| (record, e)));
        tx.commit().await?;
        result
    }

    async fn count_queued(&self) -> StoreResult<i64> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM debates WHERE status = 'queued'")
                .fetch_one(&self.readers)
                .await?,
        )
    }

    async fn claim_debates(
        &self,
        instance: &str,
        max: u32,
        ttl: Duration,
    ) -> StoreResult<Vec<ClaimedDebate>> {
        // Without statistics SQLite would read every queued row by status and sort them;
        // the partial claim index yields them in order, so LIMIT stops early.
        self.claim(
            instance,
            max,
            ttl,
            "INDEXED BY debates_claim_idx WHERE status IN ('queued', 'running') \
             AND (status = 'queued' OR lease_expires_at IS NULL OR lease_expires_at < ?)",
        )
        .await
    }

    async fn claim_queued(
        &self,
        instance: &str,
        max: u32,
        ttl: Duration,
    ) -> StoreResult<Vec<ClaimedDebate>> {
        // `?` (the expiry bound) is bound either way; this condition does not use it.
        self.claim(
            instance,
            max,
            ttl,
            "INDEXED BY debates_queued_idx WHERE status = 'queued' AND ? IS NOT NULL",
        )
        .await
    }

    async fn renew_leases(&self, instance: &str, ttl: Duration) -> StoreResult<Vec<Control>> {
        let expires = format_ts(Utc::now() + chrono::Duration::from_std(ttl).unwrap_or_default());
        let mut tx = self.begin_write().await?;
        let rows: Vec<ControlRow> = sqlx::query_as(
            "UPDATE debates SET lease_expires_at = ? \
             WHERE lease_owner = ? AND status = 'running' \
             RETURNING id, lease_generation, cancel_requested, pause_requested",
        )
        .bind(&expires)
        .bind(instance)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rows.into_iter().map(ControlRow::into_control).collect())
    }

    async fn release_lease(&self, debate_id: &str, lease: &Lease) -> StoreResult<bool> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE debates SET lease_owner = NULL, lease_expires_at = NULL \
             WHERE id = ? AND lease_owner = ? AND lease_generation = ?",
        )
        .bind(debate_id)
        .bind(&lease.owner)
        .bind(lease.generation)
        .execute(&mut *tx)
        .await?;
        let result = Ok(done.rows_affected() == 1);
        tx.commit().await?;
        result
    }

    async fn expire_leases_of(&self, instance: &str) -> StoreResult<u64> {
        let past = format_ts(Utc::now() - chrono::Duration::seconds(1));
        let mut tx = self.begin_write().await?;
        let done = sqlx::query("UPDATE debates SET lease_expires_at = ? WHERE lease_owner = ?")
            .bind(&past)
            .bind(instance)
            .execute(&mut *tx)
            .await?;
        let result = Ok(done.rows_affected());
        tx.commit().await?;
        result
    }

    async fn request_cancel(&self, debate_id: &str) -> StoreResult<bool> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE debates SET cancel_requested = 1 WHERE id = ? AND status = 'running'",
        )
        .bind(debate_id)
        .execute(&mut *tx)
        .await?;
        let result = Ok(done.rows_affected() == 1);
        tx.commit().await?;
        result
    }

    async fn request_pause(&self, debate_id: &str) -> StoreResult<bool> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE debates SET pause_requested = 1 WHERE id = ? AND status = 'running'",
        )
        .bind(debate_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    async fn control_requests(&self, instance: &str) -> StoreResult<Vec<Control>> {
        let rows: Vec<ControlRow> = sqlx::query_as(
            "SELECT id, lease_generation, cancel_requested, pause_requested FROM debates \
             WHERE lease_owner = ? AND (cancel_requested = 1 OR pause_requested = 1) \
             AND status = 'running'",
        )
        .bind(instance)
        .fetch_all(&self.readers)
        .await?;
        Ok(rows.into_iter().map(ControlRow::into_control).collect())
    }

    async fn unpause(&self, debate_id: &str) -> StoreResult<Option<DebateRecord>> {
        let sql = format!(
            "UPDATE debates SET status = 'queued' WHERE id = ? AND status = 'paused' \
             RETURNING {DEBATE_COLUMNS}"
        );
        let mut tx = self.begin_write().await?;
        let row = sqlx::query_as::<_, DebateRow>(&sql)
            .bind(debate_id)
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        row.map(DebateRow::into_record).transpose()
    }

    async fn debate_cost(&self, debate_id: &str) -> StoreResult<f64> {
        let cost: Option<f64> =
            sqlx::query_scalar("SELECT SUM(cost_usd) FROM usage WHERE debate_id = ?")
                .bind(debate_id)
                .fetch_one(&self.readers)
                .await?;
        Ok(cost.unwrap_or(0.0))
    }

    async fn active_debates(&self) -> StoreResult<Vec<ActiveDebate>> {
        let rows: Vec<ActiveRow> = sqlx::query_as(
            "SELECT d.id, d.task, d.owner_id, d.lease_owner, d.rounds, d.started_at, \
                    d.lease_expires_at, \
                    (SELECT MAX(e.round) FROM debate_events e \
                      WHERE e.debate_id = d.id AND e.kind = 'round_start') AS round \
             FROM debates d WHERE d.status = 'running' \
             ORDER BY d.created_at, d.id LIMIT 1000",
        )
        .fetch_all(&self.readers)
        .await?;
        rows.into_iter().map(ActiveRow::into_active).collect()
    }

    async fn events_since(
        &self,
        debate_id: &str,
        since: i64,
        limit: u32,
    ) -> StoreResult<Vec<StoredEvent>> {
        let rows = sqlx::query_as::<_, EventRow>(
            "SELECT debate_id, seq, kind, round, agent, data, created_at FROM debate_events \
             WHERE debate_id = ? AND seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(debate_id)
        .bind(since)
        .bind(i64::from(limit))
        .fetch_all(&self.readers)
        .await?;
        rows.into_iter().map(EventRow::into_event).collect()
    }

    async fn last_seq(&self, debate_id: &str) -> StoreResult<i64> {
        let seq: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(seq), 0) FROM debate_events WHERE debate_id = ?",
        )
        .bind(debate_id)
        .fetch_one(&self.readers)
        .await?;
        Ok(seq)
    }

    async fn unfinished_debates(&self) -> StoreResult<Vec<DebateRecord>> {
        let sql = format!(
            "SELECT {DEBATE_COLUMNS} FROM debates WHERE status IN ('queued', 'running') \
             ORDER BY created_at ASC, id ASC"
        );
        let rows = sqlx::query_as::<_, DebateRow>(&sql)
            .fetch_all(&self.readers)
            .await?;
        records(rows)
    }

    async fn apply_match_results(
        &self,
        debate_id: &str,
        domain: Option<&str>,
        matches: &[MatchResult],
    ) -> StoreResult<bool> {
        check_matches(matches)?;
        // Debates rated while the write connection is busy are rated together, in order.
        let (reply, answer) = oneshot::channel();
        let rate = Rate {
            debate_id: debate_id.to_owned(),
            domain: domain.map(str::to_owned),
            matches: matches.to_vec(),
            reply,
        };
        self.rates.submit(&self.writer, rate);
        answer
            .await
            .unwrap_or(Err(StoreError::Database(sqlx::Error::PoolClosed)))
    }

    async fn ratings(&self, domain: Option<&str>, limit: u32) -> StoreResult<Vec<Rating>> {
        let rows = sqlx::query_as::<_, RatingRow>(
            "SELECT agent, domain, rating, games, wins, losses, draws, updated_at FROM ratings \
             WHERE domain = ? ORDER BY rating DESC, agent ASC LIMIT ?",
        )
        .bind(domain_key(domain))
        .bind(i64::from(clamp_ratings_limit(limit)))
        .fetch_all(&self.readers)
        .await?;
        rows.into_iter().map(RatingRow::into_rating).collect()
    }

    async fn events_of_kinds(
        &self,
        debate_id: &str,
        kinds: &[&str],
        limit: u32,
        offset: u32,
    ) -> StoreResult<Vec<StoredEvent>> {
        if kinds.is_empty() {
            return Ok(Vec::new());
        }
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(format!(
            "SELECT {EVENT_COLUMNS} FROM debate_events WHERE debate_id = "
        ));
        qb.push_bind(debate_id).push(" AND kind IN (");
        let mut list = qb.separated(", ");
        for kind in kinds {
            list.push_bind(*kind);
        }
        qb.push(") ORDER BY seq LIMIT ")
            .push_bind(i64::from(clamp_events_limit(limit)))
            .push(" OFFSET ")
            .push_bind(i64::from(offset));
        let rows = qb
            .build_query_as::<EventRow>()
            .fetch_all(&self.readers)
            .await?;
        rows.into_iter().map(EventRow::into_event).collect()
    }

    async fn count_debates_by_status(&self) -> StoreResult<Vec<(String, i64)>> {
        let counts = sqlx::query_as::<_, (String, i64)>(
            "SELECT status, COUNT(*) FROM debates GROUP BY status ORDER BY status",
        )
        .fetch_all(&self.readers)
        .await?;
        Ok(counts)
    }

    async fn create_user(&self, new: &NewUser) -> StoreResult<User> {
        let created_at = now_micros();
        let email = new.email.to_lowercase();
        let done = sqlx::query(
            "INSERT INTO users (id, email, password_hash, role, created_at) VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&new.id)
        .bind(&email)
        .bind(&new.password_hash)
        .bind(&new.role)
        .bind(format_ts(created_at))
        .execute(&mut *self.writer.take().await?)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Conflict(
                "a user with this email already exists".into(),
            ));
        }
        Ok(User {
            id: new.id.clone(),
            email,
            password_hash: new.password_hash.clone(),
            role: new.role.clone(),
            failed_logins: 0,
            locked_until: None,
            created_at,
        })
    }

    async fn user_by_email(&self, email: &str) -> StoreResult<Option<User>> {
        let row = sqlx::query_as::<_, UserRow>(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE email = ?"
        ))
        .bind(email.to_lowercase())
        .fetch_optional(&self.readers)
        .await?;
        row.map(UserRow::into_user).transpose()
    }

    async fn user_by_id(&self, id: &str) -> StoreResult<Option<User>> {
        let row =
            sqlx::query_as::<_, UserRow>(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?"))
                .bind(id)
                .fetch_optional(&self.readers)
                .await?;
        row.map(UserRow::into_user).transpose()
    }

    async fn login_attempts(&self, email_hash: &str) -> StoreResult<(i32, Option<DateTime<Utc>>)> {
        let row: Option<(i32, Option<String>)> = sqlx::query_as(
            "SELECT failures, locked_until FROM login_attempts WHERE email_hash = ?",
        )
        .bind(email_hash)
        .fetch_optional(&self.readers)
        .await?;
        match row {
            None => Ok((0, None)),
            Some((failures, until)) => Ok((failures, until.as_deref().map(parse_ts).transpose()?)),
        }
    }

    async fn set_login_attempts(
        &self,
        email_hash: &str,
        failures: i32,
        locked_until: Option<DateTime<Utc>>,
    ) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        if failures == 0 && locked_until.is_none() {
            sqlx::query("DELETE FROM login_attempts WHERE email_hash = ?")
                .bind(email_hash)
                .execute(&mut *tx)
                .await?;
        } else {
            sqlx::query(
                "INSERT INTO login_attempts (email_hash, failures, locked_until, updated_at) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT (email_hash) DO UPDATE \
                 SET failures = ?2, locked_until = ?3, updated_at = ?4",
            )
            .bind(email_hash)
            .bind(failures)
            .bind(locked_until.map(format_ts))
            .bind(format_ts(Utc::now()))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn set_login_state(
        &self,
        user_id: &str,
        failed_logins: i32,
        locked_until: Option<DateTime<Utc>>,
    ) -> StoreResult<()> {
        sqlx::query("UPDATE users SET failed_logins = ?, locked_until = ? WHERE id = ?")
            .bind(failed_logins)
            .bind(locked_until.map(format_ts))
            .bind(user_id)
            .execute(&mut *self.writer.take().await?)
            .await?;
        Ok(())
    }

    async fn replace_api_key(
        &self,
        user_id: &str,
        id: &str,
        key_hash: &str,
        prefix: &str,
    ) -> StoreResult<ApiKeyRecord> {
        let now = now_micros();
        let mut tx = self.begin_write().await?;
        sqlx::query("UPDATE api_keys SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL")
            .bind(format_ts(now))
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO api_keys (id, user_id, key_hash, prefix, created_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(id)
        .bind(user_id)
        .bind(key_hash)
        .bind(prefix)
        .bind(format_ts(now))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(ApiKeyRecord {
            id: id.to_owned(),
            user_id: user_id.to_owned(),
            prefix: prefix.to_owned(),
            created_at: now,
            last_used_at: None,
            revoked_at: None,
        })
    }

    async fn api_key_by_hash(&self, key_hash: &str) -> StoreResult<Option<ApiKeyRecord>> {
        let row = sqlx::query_as::<_, ApiKeyRow>(&format!(
            "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE key_hash = ?"
        ))
        .bind(key_hash)
        .fetch_optional(&self.readers)
        .await?;
        row.map(ApiKeyRow::into_record).transpose()
    }

    async fn active_api_key(&self, user_id: &str) -> StoreResult<Option<ApiKeyRecord>> {
        let row = sqlx::query_as::<_, ApiKeyRow>(&format!(
            "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE user_id = ? AND revoked_at IS NULL \
             ORDER BY created_at DESC LIMIT 1"
        ))
        .bind(user_id)
        .fetch_optional(&self.readers)
        .await?;
        row.map(ApiKeyRow::into_record).transpose()
    }

    async fn revoke_api_keys(&self, user_id: &str) -> StoreResult<u64> {
        let done = sqlx::query(
            "UPDATE api_keys SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL",
        )
        .bind(format_ts(now_micros()))
        .bind(user_id)
        .execute(&mut *self.writer.take().await?)
        .await?;
        Ok(done.rows_affected())
    }

    async fn touch_api_key(&self, id: &str, at: DateTime<Utc>) -> StoreResult<()> {
        sqlx::query(
            "UPDATE api_keys SET last_used_at = ? WHERE id = ? \
             AND (last_used_at IS NULL OR last_used_at < ?)",
        )
        .bind(format_ts(at))
        .bind(id)
        .bind(format_ts(at - chrono::Duration::seconds(60)))
        .execute(&mut *self.writer.take().await?)
        .await?;
        Ok(())
    }

    async fn insert_refresh_token(&self, token: &RefreshTokenRecord) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, user_id, family_id, expires_at, used, \
             revoked, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&token.token_hash)
        .bind(&token.user_id)
        .bind(&token.family_id)
        .bind(format_ts(token.expires_at))
        .bind(token.used)
        .bind(token.revoked)
        .bind(format_ts(now_micros()))
        .execute(&mut *self.writer.take().await?)
        .await?;
        Ok(())
    }

    async fn refresh_token(&self, token_hash: &str) -> StoreResult<Option<RefreshTokenRecord>> {
        let row = sqlx::query_as::<_, (String, String, String, String, bool, bool)>(
            "SELECT token_hash, user_id, family_id, expires_at, used, revoked \
             FROM refresh_tokens WHERE token_hash = ?",
        )
        .bind(token_hash)
        .fetch_optional(&self.readers)
        .await?;
        row.map(
            |(token_hash, user_id, family_id, expires_at, used, revoked)| {
                Ok(RefreshTokenRecord {
                    token_hash,
                    user_id,
                    family_id,
                    expires_at: parse_ts(&expires_at)?,
                    used,
                    revoked,
                })
            },
        )
        .transpose()
    }

    async fn use_refresh_token(&self, token_hash: &str) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE refresh_tokens SET used = 1 WHERE token_hash = ? AND used = 0 AND revoked = 0",
        )
        .bind(token_hash)
        .execute(&mut *self.writer.take().await?)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn revoke_refresh_family(&self, family_id: &str) -> StoreResult<u64> {
        let done = sqlx::query(
            "UPDATE refresh_tokens SET revoked = 1 WHERE family_id = ? AND revoked = 0",
        )
        .bind(family_id)
        .execute(&mut *self.writer.take().await?)
        .await?;
        Ok(done.rows_affected())
    }

    async fn record_usage(&self, u: &NewUsage) -> StoreResult<()> {
        let mut conn = self.writer.take().await?;
        insert_usage(&mut conn, u).await
    }

    async fn usage_summary(
        &self,
        principal_id: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> StoreResult<UsageSummary> {
        let (from, to) = (format_ts(from), format_ts(to));
        let debates: i64 = sqlx::query_scalar(
            "SELECT COUNT(DISTINCT debate_id) FROM usage \
             WHERE principal_id = ? AND created_at >= ? AND created_at < ?",
        )
        .bind(principal_id)
        .bind(&from)
        .bind(&to)
        .fetch_one(&self.readers)
        .await?;
        let rows = sqlx::query_as::<_, (String, String, i64, i64, i64, f64, bool)>(
            "SELECT provider, model, COUNT(*), COALESCE(SUM(input_tokens), 0), \
             COALESCE(SUM(output_tokens), 0), COALESCE(SUM(cost_usd), 0.0), MAX(estimated) \
             FROM usage WHERE principal_id = ? AND created_at >= ? AND created_at < ? \
             GROUP BY provider, model ORDER BY provider, model",
        )
        .bind(principal_id)
        .bind(&from)
        .bind(&to)
        .fetch_all(&self.readers)
        .await?;
        Ok(UsageSummary {
            debates,
            lines: rows
                .into_iter()
                .map(
                    |(provider, model, calls, input_tokens, output_tokens, cost_usd, estimated)| {
                        UsageLine {
                            provider,
                            model,
                            calls,
                            input_tokens,
                            output_tokens,
                            cost_usd,
                            estimated,
                        }
                    },
                )
                .collect(),
        })
    }

    async fn insert_receipt(&self, r: &NewReceipt) -> StoreResult<bool> {
        let mut tx = self.begin_write().await?;
        let inserted = sqlx::query(
            "INSERT INTO receipts (receipt_id, debate_id, owner_id, verdict, key_id, chain_head, \
             event_count, issued_at, receipt, odr_v01, odr_v02) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) ON CONFLICT DO NOTHING",
        )
        .bind(&r.receipt_id)
        .bind(&r.debate_id)
        .bind(&r.owner_id)
        .bind(&r.verdict)
        .bind(&r.key_id)
        .bind(&r.chain_head)
        .bind(r.event_count)
        .bind(format_ts(r.issued_at))
        .bind(&r.receipt)
        .bind(&r.odr_v01)
        .bind(&r.odr_v02)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if inserted {
            sqlx::query("UPDATE debates SET receipt_id = ?1 WHERE id = ?2")
                .bind(&r.receipt_id)
                .bind(&r.debate_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(inserted)
    }

    async fn insert_receipts(&self, receipts: &[NewReceipt]) -> StoreResult<Vec<bool>> {
        // Rows per statement: 11 parameters each, padded to a power of two (see [`padded`]).
        const RECEIPTS_PER_STATEMENT: usize = 256;
        if receipts.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin_write().await?;
        let mut stored: HashSet<String> = HashSet::with_capacity(receipts.len());
        for chunk in receipts.chunks(RECEIPTS_PER_STATEMENT) {
            let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT INTO receipts (receipt_id, debate_id, owner_id, verdict, key_id, \
                 chain_head, event_count, issued_at, receipt, odr_v01, odr_v02) SELECT * FROM (",
            );
            qb.push_values(padded(chunk), |mut row, r| {
                row.push_bind(r.map(|r| r.receipt_id.as_str()))
                    .push_bind(r.map(|r| r.debate_id.as_str()))
                    .push_bind(r.and_then(|r| r.owner_id.as_deref()))
                    .push_bind(r.map(|r| r.verdict.as_str()))
                    .push_bind(r.and_then(|r| r.key_id.as_deref()))
                    .push_bind(r.map(|r| r.chain_head.as_str()))
                    .push_bind(r.map(|r| r.event_count))
                    .push_bind(r.map(|r| format_ts(r.issued_at)))
                    .push_bind(r.map(|r| r.receipt.as_str()))
                    .push_bind(r.map(|r| r.odr_v01.as_str()))
                    .push_bind(r.map(|r| r.odr_v02.as_str()));
            });
            // A debate that already has a receipt keeps it: left out of RETURNING.
            qb.push(") WHERE column1 IS NOT NULL ON CONFLICT DO NOTHING RETURNING receipt_id");
            let ids: Vec<String> = qb.build_query_scalar().fetch_all(&mut *tx).await?;
            stored.extend(ids);
        }
        let linked: Vec<&NewReceipt> = receipts
            .iter()
            .filter(|r| stored.contains(&r.receipt_id))
            .collect();
        for chunk in linked.chunks(RECEIPTS_PER_STATEMENT) {
            let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new("WITH v(id, receipt_id) AS (");
            // Padding rows have no id, so they match no debate.
            qb.push_values(padded(chunk), |mut row, r| {
                row.push_bind(r.map(|r| r.debate_id.as_str()))
                    .push_bind(r.map(|r| r.receipt_id.as_str()));
            });
            qb.push(
                ") UPDATE debates SET receipt_id = v.receipt_id FROM v WHERE debates.id = v.id",
            );
            qb.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(receipts
            .iter()
            .map(|r| stored.contains(&r.receipt_id))
            .collect())
    }

    async fn get_receipt(&self, receipt_id: &str) -> StoreResult<Option<ReceiptRow>> {
        let sql = format!("SELECT {RECEIPT_COLUMNS} FROM receipts WHERE receipt_id = ?");
        let row: Option<SqliteReceiptRow> = sqlx::query_as(&sql)
            .bind(receipt_id)
            .fetch_optional(&self.readers)
            .await?;
        row.map(SqliteReceiptRow::into_row).transpose()
    }

    async fn receipt_of_debate(&self, debate_id: &str) -> StoreResult<Option<ReceiptRow>> {
        let sql = format!("SELECT {RECEIPT_COLUMNS} FROM receipts WHERE debate_id = ?");
        let row: Option<SqliteReceiptRow> = sqlx::query_as(&sql)
            .bind(debate_id)
            .fetch_optional(&self.readers)
            .await?;
        row.map(SqliteReceiptRow::into_row).transpose()
    }

    async fn list_receipts(
        &self,
        owner_id: Option<&str>,
        limit: u32,
        offset: u32,
    ) -> StoreResult<(Vec<ReceiptRow>, i64)> {
        let sql = format!(
            "SELECT {RECEIPT_COLUMNS} FROM receipts WHERE (?1 IS NULL OR owner_id = ?1) \
             ORDER BY issued_at DESC, receipt_id LIMIT ?2 OFFSET ?3"
        );
        let rows: Vec<SqliteReceiptRow> = sqlx::query_as(&sql)
            .bind(owner_id)
            .bind(i64::from(limit))
            .bind(i64::from(offset))
            .fetch_all(&self.readers)
            .await?;
        let total: i64 =
            sqlx::query_scalar("SELECT count(*) FROM receipts WHERE (?1 IS NULL OR owner_id = ?1)")
                .bind(owner_id)
                .fetch_one(&self.readers)
                .await?;
        let rows = rows
            .into_iter()
            .map(SqliteReceiptRow::into_row)
            .collect::<StoreResult<Vec<_>>>()?;
        Ok((rows, total))
    }

    async fn debates_awaiting_receipt(&self, limit: u32) -> StoreResult<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM debates WHERE receipt_id IS NULL \
             AND status IN ('completed', 'no_consensus') ORDER BY finished_at LIMIT ?",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.readers)
        .await?)
    }

    async fn register_signing_key(&self, key_id: &str, public_key_pem: &str) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO receipt_keys (key_id, public_key_pem, first_used_at) \
             VALUES (?1, ?2, ?3) ON CONFLICT (key_id) DO NOTHING",
        )
        .bind(key_id)
        .bind(public_key_pem)
        .bind(format_ts(Utc::now()))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn signing_key(&self, key_id: &str) -> StoreResult<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT public_key_pem FROM receipt_keys WHERE key_id = ?")
                .bind(key_id)
                .fetch_optional(&self.readers)
                .await?,
        )
    }
}

const RECEIPT_COLUMNS: &str = "receipt_id, debate_id, owner_id, verdict, key_id, chain_head, \
     event_count, issued_at, receipt, odr_v01, odr_v02";

#[derive(sqlx::FromRow)]
struct SqliteReceiptRow {
    receipt_id: String,
    debate_id: String,
    owner_id: Option<String>,
    verdict: String,
    key_id: Option<String>,
    chain_head: String,
    event_count: i64,
    issued_at: String,
    receipt: String,
    odr_v01: String,
    odr_v02: String,
}

impl SqliteReceiptRow {
    fn into_row(self) -> StoreResult<ReceiptRow> {
        Ok(ReceiptRow {
            receipt_id: self.receipt_id,
            debate_id: self.debate_id,
            owner_id: self.owner_id,
            verdict: self.verdict,
            key_id: self.key_id,
            chain_head: self.chain_head,
            event_count: self.event_count,
            issued_at: parse_ts(&self.issued_at)?,
            receipt: self.receipt,
            odr_v01: self.odr_v01,
            odr_v02: self.odr_v02,
        })
    }
}

const USER_COLUMNS: &str =
    "id, email, password_hash, role, failed_logins, locked_until, created_at";

#[derive(sqlx::FromRow)]
struct UserRow {
    id: String,
    email: String,
    password_hash: String,
    role: String,
    failed_logins: i32,
    locked_until: Option<String>,
    created_at: String,
}

impl UserRow {
    fn into_user(self) -> StoreResult<User> {
        Ok(User {
            id: self.id,
            email: self.email,
            password_hash: self.password_hash,
            role: self.role,
            failed_logins: self.failed_logins,
            locked_until: self.locked_until.as_deref().map(parse_ts).transpose()?,
            created_at: parse_ts(&self.created_at)?,
        })
    }
}

const API_KEY_COLUMNS: &str = "id, user_id, prefix, created_at, last_used_at, revoked_at";

#[derive(sqlx::FromRow)]
struct ApiKeyRow {
    id: String,
    user_id: String,
    prefix: String,
    created_at: String,
    last_used_at: Option<String>,
    revoked_at: Option<String>,
}

impl ApiKeyRow {
    fn into_record(self) -> StoreResult<ApiKeyRecord> {
        Ok(ApiKeyRecord {
            id: self.id,
            user_id: self.user_id,
            prefix: self.prefix,
            created_at: parse_ts(&self.created_at)?,
            last_used_at: self.last_used_at.as_deref().map(parse_ts).transpose()?,
            revoked_at: self.revoked_at.as_deref().map(parse_ts).transpose()?,
        })
    }
}
