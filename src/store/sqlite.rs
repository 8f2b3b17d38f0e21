//! Embedded SQLite backend: the zero-setup default for single-node deployments.
use std::path::Path;
use std::str::FromStr;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::types::Json;
use sqlx::{QueryBuilder, Sqlite};

use super::*;

/// How long a writer waits for SQLite's single write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Every column, in the order [`DebateRow`] expects.
const DEBATE_COLUMNS: &str = "id, task, status, agents, rounds, rounds_used, consensus, owner_id, \
     correlation_id, options, result, error, created_at, started_at, finished_at";

pub struct SqliteStore {
    pool: SqlitePool,
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
}

impl DebateRow {
    fn into_record(self) -> StoreResult<DebateRecord> {
        Ok(DebateRecord {
            id: self.id,
            task: self.task,
            status: self.status,
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

fn records(rows: Vec<DebateRow>) -> StoreResult<Vec<DebateRecord>> {
    rows.into_iter().map(DebateRow::into_record).collect()
}

/// SQLITE_BUSY / SQLITE_LOCKED (and their extended codes): another writer held the lock past
/// the busy timeout; worth one more try rather than failing an append.
fn is_busy(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .and_then(|e| e.code())
        .and_then(|c| c.parse::<i32>().ok())
        .is_some_and(|c| matches!(c & 0xff, 5 | 6))
}

impl SqliteStore {
    /// Accepts `sqlite:///abs/path.db`, `sqlite://./rel/path.db`, `sqlite:path.db` and
    /// `sqlite::memory:`. The parent directory is created so a fresh data dir just works.
    pub async fn connect(url: &str, pool: PoolSettings) -> StoreResult<Self> {
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let mut opts = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
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
        let mut pool_opts = SqlitePoolOptions::new()
            .min_connections(min)
            .max_connections(max)
            .acquire_timeout(pool.acquire_timeout);
        if in_memory {
            // A shared in-memory database lives only while a connection holds it open.
            pool_opts = pool_opts
                .min_connections(min.max(1))
                .idle_timeout(None)
                .max_lifetime(None);
        }
        // Local file open: bounded by acquire_timeout, and surfaces a bad path at startup.
        let pool = pool_opts.connect_with(opts).await?;
        Ok(Self { pool })
    }

    async fn fetch_debate(&self, id: &str) -> StoreResult<Option<DebateRecord>> {
        let sql = format!("SELECT {DEBATE_COLUMNS} FROM debates WHERE id = ?");
        sqlx::query_as::<_, DebateRow>(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .map(DebateRow::into_record)
            .transpose()
    }

    async fn try_append(
        &self,
        debate_id: &str,
        event: &NewEvent,
    ) -> sqlx::Result<Option<StoredEvent>> {
        // BEGIN IMMEDIATE takes the write lock up front (waiting via busy_timeout), so the
        // read-increment-insert below cannot interleave with another appender.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let seq: Option<i64> = sqlx::query_scalar(
            "UPDATE debates SET last_seq = last_seq + 1 WHERE id = ? RETURNING last_seq",
        )
        .bind(debate_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(seq) = seq else {
            return Ok(None);
        };
        let timestamp = now_micros();
        sqlx::query(
            "INSERT INTO debate_events (debate_id, seq, kind, round, agent, data, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(debate_id)
        .bind(seq)
        .bind(&event.kind)
        .bind(event.round)
        .bind(&event.agent)
        .bind(Json(&event.data))
        .bind(format_ts(timestamp))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(StoredEvent {
            debate_id: debate_id.to_owned(),
            seq,
            kind: event.kind.clone(),
            round: event.round,
            agent: event.agent.clone(),
            data: event.data.clone(),
            timestamp,
        }))
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    fn pool_status(&self) -> PoolStatus {
        PoolStatus {
            size: self.pool.size(),
            idle: u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX),
            max: self.pool.options().get_max_connections(),
        }
    }

    async fn migrate(&self) -> StoreResult<()> {
        sqlx::migrate!("./migrations/sqlite")
            .run(&self.pool)
            .await?;
        Ok(())
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    async fn create_debate(&self, new: &NewDebate) -> StoreResult<DebateRecord> {
        let created_at = now_micros();
        // ON CONFLICT DO NOTHING turns a duplicate into "0 rows" instead of an error to parse.
        let done = sqlx::query(
            "INSERT INTO debates (id, task, status, agents, rounds, rounds_used, consensus, \
             owner_id, correlation_id, options, created_at) \
             VALUES (?, ?, 'queued', ?, ?, 0, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&new.id)
        .bind(&new.task)
        .bind(Json(&new.agents))
        .bind(new.rounds)
        .bind(&new.consensus)
        .bind(&new.owner_id)
        .bind(&new.correlation_id)
        .bind(Json(&new.options))
        .bind(format_ts(created_at))
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!(
                "debate {} already exists",
                new.id
            )));
        }
        Ok(DebateRecord {
            id: new.id.clone(),
            task: new.task.clone(),
            status: "queued".into(),
            agents: new.agents.clone(),
            rounds: new.rounds,
            rounds_used: 0,
            consensus: new.consensus.clone(),
            owner_id: new.owner_id.clone(),
            correlation_id: new.correlation_id.clone(),
            options: new.options.clone(),
            result: None,
            error: None,
            created_at,
            started_at: None,
            finished_at: None,
        })
    }

    async fn get_debate(&self, id: &str) -> StoreResult<Option<DebateRecord>> {
        self.fetch_debate(id).await
    }

    async fn update_debate(&self, id: &str, update: &DebateUpdate) -> StoreResult<DebateRecord> {
        // COALESCE keeps the stored value wherever the update carries None.
        let sql = format!(
            "UPDATE debates SET status = COALESCE(?, status), \
             rounds_used = COALESCE(?, rounds_used), result = COALESCE(?, result), \
             error = COALESCE(?, error), started_at = COALESCE(?, started_at), \
             finished_at = COALESCE(?, finished_at) WHERE id = ? RETURNING {DEBATE_COLUMNS}"
        );
        let row = sqlx::query_as::<_, DebateRow>(&sql)
            .bind(&update.status)
            .bind(update.rounds_used)
            .bind(update.result.as_ref().map(Json))
            .bind(&update.error)
            .bind(update.started_at.map(format_ts))
            .bind(update.finished_at.map(format_ts))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.ok_or_else(|| StoreError::NotFound(format!("debate {id}")))?
            .into_record()
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
            .fetch_all(&self.pool)
            .await?;
        Ok(make_page(records(rows)?, limit))
    }

    async fn append_event(&self, debate_id: &str, event: &NewEvent) -> StoreResult<StoredEvent> {
        let mut attempts = 0;
        loop {
            match self.try_append(debate_id, event).await {
                Ok(Some(stored)) => return Ok(stored),
                Ok(None) => return Err(StoreError::NotFound(format!("debate {debate_id}"))),
                Err(e) if is_busy(&e) && attempts < 5 => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(10 * attempts)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
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
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(EventRow::into_event).collect()
    }

    async fn last_seq(&self, debate_id: &str) -> StoreResult<i64> {
        let seq: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(seq), 0) FROM debate_events WHERE debate_id = ?",
        )
        .bind(debate_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(seq)
    }

    async fn unfinished_debates(&self) -> StoreResult<Vec<DebateRecord>> {
        let sql = format!(
            "SELECT {DEBATE_COLUMNS} FROM debates WHERE status IN ('queued', 'running') \
             ORDER BY created_at ASC, id ASC"
        );
        let rows = sqlx::query_as::<_, DebateRow>(&sql)
            .fetch_all(&self.pool)
            .await?;
        records(rows)
    }
}
