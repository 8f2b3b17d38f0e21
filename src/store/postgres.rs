//! Postgres backend for production and multi-process deployments.
use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::types::Json;
use sqlx::{Postgres, QueryBuilder};

use super::*;

/// Every column, in the order [`DebateRow`] expects.
const DEBATE_COLUMNS: &str = "id, task, status, agents, rounds, rounds_used, consensus, owner_id, \
     correlation_id, options, result, error, created_at, started_at, finished_at";

pub struct PostgresStore {
    pool: PgPool,
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
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
}

impl From<DebateRow> for DebateRecord {
    fn from(r: DebateRow) -> Self {
        DebateRecord {
            id: r.id,
            task: r.task,
            status: r.status,
            agents: r.agents.0,
            rounds: r.rounds,
            rounds_used: r.rounds_used,
            consensus: r.consensus,
            owner_id: r.owner_id,
            correlation_id: r.correlation_id,
            options: r.options.0,
            result: r.result.map(|j| j.0),
            error: r.error,
            created_at: r.created_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
        }
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
    created_at: DateTime<Utc>,
}

impl From<EventRow> for StoredEvent {
    fn from(r: EventRow) -> Self {
        StoredEvent {
            debate_id: r.debate_id,
            seq: r.seq,
            kind: r.kind,
            round: r.round,
            agent: r.agent,
            data: r.data.0,
            timestamp: r.created_at,
        }
    }
}

impl PostgresStore {
    /// Accepts `postgres://` / `postgresql://` URLs as sqlx parses them; the `options` query
    /// parameter (e.g. `?options=-c%20search_path%3Dmy_schema`) is passed to the server at
    /// startup, which is how a deployment or test picks its schema.
    ///
    /// Connects lazily so startup never hangs on an unreachable server; `ping` proves it.
    pub async fn connect(url: &str, pool: PoolSettings) -> StoreResult<Self> {
        let opts = PgConnectOptions::from_str(url)?;
        let (min, max) = pool_bounds(&pool);
        let pool = PgPoolOptions::new()
            .min_connections(min)
            .max_connections(max)
            .acquire_timeout(pool.acquire_timeout)
            .connect_lazy_with(opts);
        Ok(Self { pool })
    }
}

#[async_trait]
impl Store for PostgresStore {
    fn backend(&self) -> Backend {
        Backend::Postgres
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
        sqlx::migrate!("./migrations/postgres")
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
             VALUES ($1, $2, 'queued', $3, $4, 0, $5, $6, $7, $8, $9) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&new.id)
        .bind(&new.task)
        .bind(Json(&new.agents))
        .bind(new.rounds)
        .bind(&new.consensus)
        .bind(&new.owner_id)
        .bind(&new.correlation_id)
        .bind(Json(&new.options))
        .bind(created_at)
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
        let sql = format!("SELECT {DEBATE_COLUMNS} FROM debates WHERE id = $1");
        let row = sqlx::query_as::<_, DebateRow>(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(Into::into))
    }

    async fn update_debate(&self, id: &str, update: &DebateUpdate) -> StoreResult<DebateRecord> {
        // COALESCE keeps the stored value wherever the update carries None.
        let sql = format!(
            "UPDATE debates SET status = COALESCE($1, status), \
             rounds_used = COALESCE($2, rounds_used), result = COALESCE($3, result), \
             error = COALESCE($4, error), started_at = COALESCE($5, started_at), \
             finished_at = COALESCE($6, finished_at) WHERE id = $7 RETURNING {DEBATE_COLUMNS}"
        );
        let row = sqlx::query_as::<_, DebateRow>(&sql)
            .bind(&update.status)
            .bind(update.rounds_used)
            .bind(update.result.as_ref().map(Json))
            .bind(&update.error)
            .bind(update.started_at.map(truncate_micros))
            .bind(update.finished_at.map(truncate_micros))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(Into::into)
            .ok_or_else(|| StoreError::NotFound(format!("debate {id}")))
    }

    async fn list_debates(&self, query: &DebateQuery) -> StoreResult<DebatePage> {
        let limit = clamp_limit(query.limit);
        let cursor = query.cursor.as_deref().map(decode_cursor).transpose()?;
        let mut qb: QueryBuilder<Postgres> =
            QueryBuilder::new(format!("SELECT {DEBATE_COLUMNS} FROM debates WHERE TRUE"));
        if let Some(status) = &query.status {
            qb.push(" AND status = ").push_bind(status);
        }
        if let Some(owner) = &query.owner_id {
            qb.push(" AND owner_id = ").push_bind(owner);
        }
        if let Some((created_at, id)) = cursor {
            qb.push(" AND (created_at, id) < (")
                .push_bind(created_at)
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
        Ok(make_page(rows.into_iter().map(Into::into).collect(), limit))
    }

    async fn append_event(&self, debate_id: &str, event: &NewEvent) -> StoreResult<StoredEvent> {
        let mut tx = self.pool.begin().await?;
        // The UPDATE row-locks the debate until commit, so concurrent appenders (in any process)
        // queue here and each sees the previous one's committed last_seq: no duplicates, no gaps.
        let seq: Option<i64> = sqlx::query_scalar(
            "UPDATE debates SET last_seq = last_seq + 1 WHERE id = $1 RETURNING last_seq",
        )
        .bind(debate_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(seq) = seq else {
            return Err(StoreError::NotFound(format!("debate {debate_id}")));
        };
        let timestamp = now_micros();
        sqlx::query(
            "INSERT INTO debate_events (debate_id, seq, kind, round, agent, data, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(debate_id)
        .bind(seq)
        .bind(&event.kind)
        .bind(event.round)
        .bind(&event.agent)
        .bind(Json(&event.data))
        .bind(timestamp)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(StoredEvent {
            debate_id: debate_id.to_owned(),
            seq,
            kind: event.kind.clone(),
            round: event.round,
            agent: event.agent.clone(),
            data: event.data.clone(),
            timestamp,
        })
    }

    async fn events_since(
        &self,
        debate_id: &str,
        since: i64,
        limit: u32,
    ) -> StoreResult<Vec<StoredEvent>> {
        let rows = sqlx::query_as::<_, EventRow>(
            "SELECT debate_id, seq, kind, round, agent, data, created_at FROM debate_events \
             WHERE debate_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(debate_id)
        .bind(since)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    async fn last_seq(&self, debate_id: &str) -> StoreResult<i64> {
        let seq: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(seq), 0)::BIGINT FROM debate_events WHERE debate_id = $1",
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
        Ok(rows.into_iter().map(Into::into).collect())
    }
}
