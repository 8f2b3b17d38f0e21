//! Postgres backend for production and multi-process deployments.
use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::types::Json;
use sqlx::{Postgres, QueryBuilder};

use super::*;

/// Every column, in the order [`DebateRow`] expects.
const DEBATE_COLUMNS: &str = "id, task, status, agents, rounds, rounds_used, consensus, owner_id, \
     correlation_id, options, result, error, created_at, started_at, finished_at, instance, receipt_id";

pub struct PostgresStore {
    pool: PgPool,
    /// Accepting debates (`count_queued`, `create_debate_with`): its own few connections
    /// (`PoolSettings::intake`), or the main pool again when that is 0.
    intake: PgPool,
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
    instance: Option<String>,
    receipt_id: Option<String>,
}

impl DebateRow {
    fn into_record(self) -> StoreResult<DebateRecord> {
        let r = self;
        Ok(DebateRecord {
            id: r.id,
            task: r.task,
            status: parse_status(&r.status)?,
            instance: r.instance,
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
            receipt_id: r.receipt_id,
        })
    }
}

fn records(rows: Vec<DebateRow>) -> StoreResult<Vec<DebateRecord>> {
    rows.into_iter().map(DebateRow::into_record).collect()
}

#[derive(sqlx::FromRow)]
struct ClaimRow {
    #[sqlx(flatten)]
    debate: DebateRow,
    lease_owner: String,
    lease_generation: i64,
    previous_status: String,
    previous_owner: Option<String>,
    cancel_requested: bool,
    pause_requested: bool,
}

#[derive(sqlx::FromRow)]
struct ActiveRow {
    id: String,
    task: String,
    owner_id: Option<String>,
    lease_owner: Option<String>,
    round: Option<i32>,
    rounds: i32,
    started_at: Option<DateTime<Utc>>,
    lease_expires_at: Option<DateTime<Utc>>,
}

/// A lease length as Postgres interval seconds.
fn ttl_secs(ttl: Duration) -> f64 {
    ttl.as_secs_f64()
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

#[derive(sqlx::FromRow)]
struct RatingRow {
    agent: String,
    domain: String,
    rating: f64,
    games: i64,
    wins: i64,
    losses: i64,
    draws: i64,
    updated_at: DateTime<Utc>,
}

impl From<RatingRow> for Rating {
    fn from(r: RatingRow) -> Self {
        Rating {
            agent: r.agent,
            domain: domain_from_key(r.domain),
            rating: r.rating,
            games: r.games,
            wins: r.wins,
            losses: r.losses,
            draws: r.draws,
            updated_at: r.updated_at,
        }
    }
}

/// Deadlock (40P01) or serialization failure (40001): the transaction was rolled back and is
/// safe to run again. Rows are locked in one global order, so this is a safety net only.
fn is_retryable(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .and_then(sqlx::error::DatabaseError::code)
        .is_some_and(|c| c == "40P01" || c == "40001")
}

impl ActiveRow {
    fn into_active(self) -> ActiveDebate {
        ActiveDebate {
            id: self.id,
            task: self.task,
            owner_id: self.owner_id,
            instance: self.lease_owner,
            round: self.round.unwrap_or(0),
            total_rounds: self.rounds,
            started_at: self.started_at,
            lease_expires_at: self.lease_expires_at,
        }
    }
}

/// Append `events` inside `tx`: bump `last_seq` by their number (fenced by `lease` when
/// given) and insert them with the seqs that frees. The UPDATE row-locks the debate until
/// commit, so concurrent appenders (in any process) queue here and each sees the previous
/// one's committed last_seq: no duplicates, no gaps.
async fn insert_events(
    tx: &mut sqlx::Transaction<'_, Postgres>,
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
                "UPDATE debates SET last_seq = last_seq + $2 WHERE id = $1 RETURNING last_seq",
            )
            .bind(debate_id)
            .bind(n)
            .fetch_optional(&mut **tx)
            .await?
        }
        Some(lease) => {
            sqlx::query_scalar(
                "UPDATE debates SET last_seq = last_seq + $2 WHERE id = $1 \
                 AND lease_owner = $3 AND lease_generation = $4 RETURNING last_seq",
            )
            .bind(debate_id)
            .bind(n)
            .bind(&lease.owner)
            .bind(lease.generation)
            .fetch_optional(&mut **tx)
            .await?
        }
    };
    let Some(last) = last else {
        let exists: Option<i64> = sqlx::query_scalar("SELECT 1::BIGINT FROM debates WHERE id = $1")
            .bind(debate_id)
            .fetch_optional(&mut **tx)
            .await?;
        return Err(refused(debate_id, lease, exists.is_some()));
    };
    let timestamp = now_micros();
    let first = last - n + 1;
    let mut qb: QueryBuilder<Postgres> = QueryBuilder::new(
        "INSERT INTO debate_events (debate_id, seq, kind, round, agent, data, created_at) ",
    );
    qb.push_values(events.iter().enumerate(), |mut b, (i, e)| {
        b.push_bind(debate_id)
            .push_bind(first + i as i64)
            .push_bind(&e.kind)
            .push_bind(e.round)
            .push_bind(&e.agent)
            .push_bind(Json(&e.data))
            .push_bind(timestamp);
    });
    if !events.is_empty() {
        qb.build().execute(&mut **tx).await?;
    }
    Ok(stored_run(debate_id, first, events, timestamp))
}

/// Apply `update` inside `tx`; with `finish`, also drop the lease. The commit is the
/// caller's: a row read back here is not yet durable.
async fn apply_update(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    id: &str,
    update: &DebateUpdate,
    finish: bool,
) -> StoreResult<DebateRecord> {
    let lease = if finish {
        ", lease_owner = NULL, lease_expires_at = NULL, cancel_requested = FALSE, \
         pause_requested = FALSE"
    } else {
        ""
    };
    // COALESCE keeps the stored value wherever the update carries None.
    let sql = format!(
        "UPDATE debates SET status = COALESCE($1, status), \
         rounds_used = COALESCE($2, rounds_used), result = COALESCE($3, result), \
         error = COALESCE($4, error), started_at = COALESCE($5, started_at), \
         finished_at = COALESCE($6, finished_at){lease} WHERE id = $7 RETURNING {DEBATE_COLUMNS}"
    );
    let row = sqlx::query_as::<_, DebateRow>(&sql)
        .bind(update.status.map(DebateStatus::as_str))
        .bind(update.rounds_used)
        .bind(update.result.as_ref().map(Json))
        .bind(&update.error)
        .bind(update.started_at.map(truncate_micros))
        .bind(update.finished_at.map(truncate_micros))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
    row.ok_or_else(|| StoreError::NotFound(format!("debate {id}")))?
        .into_record()
}

impl PostgresStore {
    /// Claim up to `max` of the oldest debates matching `which` (a fixed condition on
    /// `debates`), for `instance`.
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
        let columns = DEBATE_COLUMNS
            .split(", ")
            .map(|c| format!("d.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        // SKIP LOCKED: concurrent claimers each take different rows without waiting on one
        // another; the CTE keeps the values from before the claim.
        let sql = format!(
            "WITH next AS ( \
                 SELECT id, status AS previous_status, lease_owner AS previous_owner FROM debates \
                 WHERE {which} \
                 ORDER BY created_at, id LIMIT $2 FOR UPDATE SKIP LOCKED) \
             UPDATE debates d SET status = 'running', \
                 started_at = COALESCE(d.started_at, date_trunc('microseconds', now())), \
                 lease_owner = $1, lease_generation = d.lease_generation + 1, instance = $1, \
                 lease_expires_at = now() + make_interval(secs => $3) \
             FROM next WHERE d.id = next.id \
             RETURNING {columns}, d.lease_owner, d.lease_generation, next.previous_status, \
                 next.previous_owner, d.cancel_requested, d.pause_requested"
        );
        let rows = sqlx::query_as::<_, ClaimRow>(&sql)
            .bind(instance)
            .bind(i64::from(max))
            .bind(ttl_secs(ttl))
            .fetch_all(&self.pool)
            .await?;
        let mut claimed = rows
            .into_iter()
            .map(|r| {
                Ok(ClaimedDebate {
                    record: r.debate.into_record()?,
                    lease: Lease {
                        owner: r.lease_owner,
                        generation: r.lease_generation,
                    },
                    previous_status: parse_status(&r.previous_status)?,
                    previous_owner: r.previous_owner,
                    cancel_requested: r.cancel_requested,
                    pause_requested: r.pause_requested,
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        claimed.sort_by(|a, b| {
            (a.record.created_at, &a.record.id).cmp(&(b.record.created_at, &b.record.id))
        });
        Ok(claimed)
    }

    /// Accepts `postgres://` / `postgresql://` URLs as sqlx parses them; the `options` query
    /// parameter (e.g. `?options=-c%20search_path%3Dmy_schema`) is passed to the server at
    /// startup, which is how a deployment or test picks its schema.
    ///
    /// Connects lazily so startup never hangs on an unreachable server; `ping` proves it.
    #[expect(
        clippy::unused_async,
        reason = "the same signature as SqliteStore::connect, which opens its file"
    )]
    pub async fn connect(url: &str, pool: PoolSettings) -> StoreResult<Self> {
        let opts = PgConnectOptions::from_str(url)?;
        let (min, max) = pool_bounds(&pool);
        let main = PgPoolOptions::new()
            .min_connections(min)
            .max_connections(max)
            .acquire_timeout(pool.acquire_timeout)
            .connect_lazy_with(opts.clone());
        let intake = if pool.intake == 0 {
            main.clone()
        } else {
            PgPoolOptions::new()
                .min_connections(0)
                .max_connections(pool.intake)
                .acquire_timeout(pool.acquire_timeout)
                .connect_lazy_with(opts)
        };
        Ok(Self { pool: main, intake })
    }
}

impl PostgresStore {
    /// One attempt at [`Store::apply_match_results`]; `Ok(false)` when the debate was rated.
    async fn try_apply_matches(
        &self,
        debate_id: &str,
        domain: Option<&str>,
        matches: &[MatchResult],
    ) -> sqlx::Result<bool> {
        let scopes = rating_scopes(domain);
        let agents = match_agents(matches);
        let now = now_micros();
        let mut tx = self.pool.begin().await?;
        // A concurrent call for the same debate blocks on this key until the first commits,
        // then sees the conflict; a rolled-back first call leaves the key free.
        let fresh = sqlx::query(
            "INSERT INTO rated_debates (debate_id, domain, matches, rated_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (debate_id) DO NOTHING",
        )
        .bind(debate_id)
        .bind(domain_key(domain))
        .bind(i32::try_from(matches.len()).unwrap_or(i32::MAX))
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !fresh {
            tx.rollback().await?;
            return Ok(false);
        }
        if agents.is_empty() {
            tx.commit().await?;
            return Ok(true);
        }
        // Every (scope, agent) row of the batch, in byte order (= COLLATE "C"): rows are
        // created and then locked in this one global order, so batches never deadlock.
        let mut keys: Vec<(String, String)> = scopes
            .iter()
            .flat_map(|d| agents.iter().map(move |a| (d.clone(), a.clone())))
            .collect();
        keys.sort();
        let (key_domains, key_agents): (Vec<String>, Vec<String>) = keys.into_iter().unzip();
        sqlx::query(
            "INSERT INTO ratings (agent, domain, rating, games, wins, losses, draws, updated_at) \
             SELECT k.agent, k.domain, $3, 0, 0, 0, 0, $4 \
             FROM UNNEST($1::text[], $2::text[]) WITH ORDINALITY AS k(agent, domain, ord) \
             ORDER BY k.ord ON CONFLICT (agent, domain) DO NOTHING",
        )
        .bind(&key_agents)
        .bind(&key_domains)
        .bind(crate::ratings::INITIAL_RATING)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        // The rows now exist; lock them. Under READ COMMITTED a row another batch updated
        // while we waited is re-read at its committed value, so no update is lost.
        let rows: Vec<(String, String, f64, i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT domain, agent, rating, games, wins, losses, draws FROM ratings \
             WHERE domain = ANY($1) AND agent = ANY($2) \
             ORDER BY domain COLLATE \"C\", agent COLLATE \"C\" FOR UPDATE",
        )
        .bind(&scopes)
        .bind(&agents)
        .fetch_all(&mut *tx)
        .await?;
        let mut tallies: Tallies = rows
            .into_iter()
            .map(|(domain, agent, rating, games, wins, losses, draws)| {
                let tally = Tally {
                    rating,
                    games,
                    wins,
                    losses,
                    draws,
                };
                ((domain, agent), tally)
            })
            .collect();
        apply_matches(&mut tallies, &scopes, matches);
        let mut cols = (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        for ((domain, agent), t) in tallies {
            cols.0.push(agent);
            cols.1.push(domain);
            cols.2.push(t.rating);
            cols.3.push(t.games);
            cols.4.push(t.wins);
            cols.5.push(t.losses);
            cols.6.push(t.draws);
        }
        sqlx::query(
            "UPDATE ratings AS r SET rating = u.rating, games = u.games, wins = u.wins, \
             losses = u.losses, draws = u.draws, updated_at = $8 \
             FROM UNNEST($1::text[], $2::text[], $3::float8[], $4::int8[], $5::int8[], \
             $6::int8[], $7::int8[]) AS u(agent, domain, rating, games, wins, losses, draws) \
             WHERE r.agent = u.agent AND r.domain = u.domain",
        )
        .bind(&cols.0)
        .bind(&cols.1)
        .bind(&cols.2)
        .bind(&cols.3)
        .bind(&cols.4)
        .bind(&cols.5)
        .bind(&cols.6)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }
}

#[async_trait]
impl Store for PostgresStore {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    async fn write_probe(&self) -> StoreResult<()> {
        sqlx::query("UPDATE health_probe SET at = now() WHERE id = 1")
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn clear_statement_caches(&self) -> super::StatementCacheReport {
        super::clear_idle_statement_caches(&self.pool).await
    }

    fn pool_status(&self) -> PoolStatus {
        super::pool_status_of(&self.pool)
    }

    async fn migrate(&self) -> StoreResult<()> {
        let mut migrator = sqlx::migrate!("./migrations/postgres");
        // Migrations are additive, so a binary older than the schema still works: applied
        // versions it does not know (a newer binary's) are not an error.
        migrator.set_ignore_missing(true);
        migrator.run(&self.pool).await?;
        Ok(())
    }

    async fn close(&self) {
        self.pool.close().await;
        self.intake.close().await;
    }

    async fn create_debate(&self, new: &NewDebate) -> StoreResult<DebateRecord> {
        Ok(self.create_debate_with(new, &[]).await?.0)
    }

    async fn create_debate_with(
        &self,
        new: &NewDebate,
        events: &[NewEvent],
    ) -> StoreResult<(DebateRecord, Vec<StoredEvent>)> {
        let created_at = now_micros();
        // One statement, so accepting a debate is one round trip and one commit on the
        // intake connections: the debate with its last_seq already counting its first
        // events, and those events numbered from 1. ON CONFLICT DO NOTHING turns a duplicate
        // into "not created" (and no events) instead of an error to parse.
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        let rounds: Vec<Option<i32>> = events.iter().map(|e| e.round).collect();
        let agents: Vec<Option<&str>> = events.iter().map(|e| e.agent.as_deref()).collect();
        let data: Vec<Json<&serde_json::Value>> = events.iter().map(|e| Json(&e.data)).collect();
        let (created, _): (i64, i64) = sqlx::query_as(
            "WITH d AS (INSERT INTO debates (id, task, status, agents, rounds, rounds_used, \
                 consensus, owner_id, correlation_id, options, created_at, last_seq) \
                 VALUES ($1, $2, 'queued', $3, $4, 0, $5, $6, $7, $8, $9, $10) \
                 ON CONFLICT (id) DO NOTHING RETURNING id), \
             e AS (INSERT INTO debate_events (debate_id, seq, kind, round, agent, data, created_at) \
                 SELECT d.id, v.ord, v.kind, v.round, v.agent, v.data, $9 \
                 FROM d, unnest($11::TEXT[], $12::INT[], $13::TEXT[], $14::JSONB[]) \
                     WITH ORDINALITY AS v(kind, round, agent, data, ord) \
                 RETURNING seq) \
             SELECT (SELECT count(*) FROM d), (SELECT count(*) FROM e)",
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
        .bind(events.len() as i64)
        .bind(&kinds)
        .bind(&rounds)
        .bind(&agents)
        .bind(&data)
        .fetch_one(&self.intake)
        .await?;
        if created == 0 {
            return Err(StoreError::Conflict(format!(
                "debate {} already exists",
                new.id
            )));
        }
        let stored = stored_run(&new.id, 1, events, created_at);
        let record = new.clone().into_queued(created_at);
        Ok((record, stored))
    }

    async fn get_debate(&self, id: &str) -> StoreResult<Option<DebateRecord>> {
        let sql = format!("SELECT {DEBATE_COLUMNS} FROM debates WHERE id = $1");
        let row = sqlx::query_as::<_, DebateRow>(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(DebateRow::into_record).transpose()
    }

    async fn update_debate(&self, id: &str, update: &DebateUpdate) -> StoreResult<DebateRecord> {
        // In a transaction so the record is returned only once the commit succeeded.
        let mut tx = self.pool.begin().await?;
        let record = apply_update(&mut tx, id, update, false).await?;
        tx.commit().await?;
        Ok(record)
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
        Ok(make_page(records(rows)?, limit))
    }

    async fn append_step(
        &self,
        debate_id: &str,
        lease: Option<&Lease>,
        events: &[NewEvent],
        usage: &[NewUsage],
    ) -> StoreResult<Vec<StoredEvent>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        // One statement, one round trip, atomic on its own: bump the debate's last_seq
        // (fenced by the lease), insert the batch numbered from it and the usage rows of the
        // calls it records. A transaction around the same statements took four round trips
        // (BEGIN, UPDATE, INSERT, COMMIT) plus one per usage row, and appends are most of a
        // running debate's writes.
        let n = events.len() as i64;
        let timestamp = now_micros();
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        let rounds: Vec<Option<i32>> = events.iter().map(|e| e.round).collect();
        let agents: Vec<Option<&str>> = events.iter().map(|e| e.agent.as_deref()).collect();
        let data: Vec<Json<&serde_json::Value>> = events.iter().map(|e| Json(&e.data)).collect();
        let column = |f: fn(&NewUsage) -> &str| usage.iter().map(f).collect::<Vec<&str>>();
        let seqs: Vec<i64> = sqlx::query_scalar(
            "WITH d AS (UPDATE debates SET last_seq = last_seq + $2 WHERE id = $1 \
                 AND ($3::TEXT IS NULL OR (lease_owner = $3 AND lease_generation = $4)) \
                 RETURNING last_seq), \
             u AS (INSERT INTO usage (principal_id, debate_id, agent, provider, model, \
                 input_tokens, output_tokens, estimated, cost_usd, created_at) \
                 SELECT x.principal_id, $1, x.agent, x.provider, x.model, x.input_tokens, \
                     x.output_tokens, x.estimated, x.cost_usd, $5 \
                 FROM d, unnest($10::TEXT[], $11::TEXT[], $12::TEXT[], $13::TEXT[], \
                     $14::BIGINT[], $15::BIGINT[], $16::BOOLEAN[], $17::FLOAT8[]) \
                     AS x(principal_id, agent, provider, model, input_tokens, output_tokens, \
                         estimated, cost_usd)) \
             INSERT INTO debate_events (debate_id, seq, kind, round, agent, data, created_at) \
             SELECT $1, d.last_seq - $2 + v.ord, v.kind, v.round, v.agent, v.data, $5 \
             FROM d, unnest($6::TEXT[], $7::INT[], $8::TEXT[], $9::JSONB[]) \
                 WITH ORDINALITY AS v(kind, round, agent, data, ord) \
             RETURNING seq",
        )
        .bind(debate_id)
        .bind(n)
        .bind(lease.map(|l| l.owner.as_str()))
        .bind(lease.map_or(0, |l| l.generation))
        .bind(timestamp)
        .bind(&kinds)
        .bind(&rounds)
        .bind(&agents)
        .bind(&data)
        .bind(column(|u| u.principal_id.as_str()))
        .bind(column(|u| u.agent.as_str()))
        .bind(column(|u| u.provider.as_str()))
        .bind(column(|u| u.model.as_str()))
        .bind(usage.iter().map(|u| u.input_tokens).collect::<Vec<_>>())
        .bind(usage.iter().map(|u| u.output_tokens).collect::<Vec<_>>())
        .bind(usage.iter().map(|u| u.estimated).collect::<Vec<_>>())
        .bind(usage.iter().map(|u| u.cost_usd).collect::<Vec<_>>())
        .fetch_all(&self.pool)
        .await?;
        let Some(first) = seqs.iter().min().copied() else {
            let exists: Option<i64> =
                sqlx::query_scalar("SELECT 1::BIGINT FROM debates WHERE id = $1")
                    .bind(debate_id)
                    .fetch_optional(&self.pool)
                    .await?;
            return Err(refused(debate_id, lease, exists.is_some()));
        };
        Ok(stored_run(debate_id, first, events, timestamp))
    }

    async fn append_steps(
        &self,
        steps: &[&StepWrite],
    ) -> StoreResult<Vec<StoreResult<Vec<StoredEvent>>>> {
        let steps_with_events: Vec<&StepWrite> = steps
            .iter()
            .copied()
            .filter(|s| !s.events.is_empty())
            .collect();
        if steps_with_events.len() <= 1 {
            let mut out = Vec::with_capacity(steps.len());
            for s in steps {
                out.push(
                    self.append_step(&s.debate_id, s.lease.as_ref(), &s.events, &s.usage)
                        .await,
                );
            }
            return Ok(out);
        }
        // One statement for every debate of the group, as `append_step` is for one: in id
        // order (lease renewals lock their rows in the same order, so the two never
        // deadlock; migration 0009), bump each debate's last_seq by its count where its lease
        // still holds, and insert the events and usage rows of exactly those debates,
        // numbered from each one's new last_seq.
        let timestamp = now_micros();
        let ids: Vec<&str> = steps_with_events
            .iter()
            .map(|s| s.debate_id.as_str())
            .collect();
        let counts: Vec<i64> = steps_with_events
            .iter()
            .map(|s| s.events.len() as i64)
            .collect();
        let owners: Vec<Option<&str>> = steps_with_events
            .iter()
            .map(|s| s.lease.as_ref().map(|l| l.owner.as_str()))
            .collect();
        let generations: Vec<i64> = steps_with_events
            .iter()
            .map(|s| s.lease.as_ref().map_or(0, |l| l.generation))
            .collect();
        let events = || {
            steps_with_events
                .iter()
                .flat_map(|s| s.events.iter().enumerate().map(move |(i, e)| (*s, i, e)))
        };
        let ev_ids: Vec<&str> = events().map(|(s, _, _)| s.debate_id.as_str()).collect();
        let ev_ords: Vec<i64> = events().map(|(_, i, _)| i as i64 + 1).collect();
        let kinds: Vec<&str> = events().map(|(_, _, e)| e.kind.as_str()).collect();
        let rounds: Vec<Option<i32>> = events().map(|(_, _, e)| e.round).collect();
        let agents: Vec<Option<&str>> = events().map(|(_, _, e)| e.agent.as_deref()).collect();
        let data: Vec<Json<&serde_json::Value>> = events().map(|(_, _, e)| Json(&e.data)).collect();
        let usage = || {
            steps_with_events
                .iter()
                .flat_map(|s| s.usage.iter().map(move |u| (s.debate_id.as_str(), u)))
        };
        let text = |f: fn(&NewUsage) -> &str| usage().map(|(_, u)| f(u)).collect::<Vec<&str>>();
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "WITH d AS (SELECT debate_id AS id, base FROM aragora_bump_seqs($1::TEXT[], $2::BIGINT[], \
                 $3::TEXT[], $4::BIGINT[])), \
             u AS (INSERT INTO usage (principal_id, debate_id, agent, provider, model, \
                 input_tokens, output_tokens, estimated, cost_usd, created_at) \
                 SELECT x.principal_id, x.debate_id, x.agent, x.provider, x.model, \
                     x.input_tokens, x.output_tokens, x.estimated, x.cost_usd, $11 \
                 FROM unnest($12::TEXT[], $13::TEXT[], $14::TEXT[], $15::TEXT[], $16::TEXT[], \
                     $17::BIGINT[], $18::BIGINT[], $19::BOOLEAN[], $20::FLOAT8[]) \
                     AS x(debate_id, principal_id, agent, provider, model, input_tokens, \
                         output_tokens, estimated, cost_usd) \
                 JOIN d ON d.id = x.debate_id) \
             INSERT INTO debate_events (debate_id, seq, kind, round, agent, data, created_at) \
             SELECT v.debate_id, d.base + v.ord, v.kind, v.round, v.agent, v.data, $11 \
             FROM unnest($5::TEXT[], $6::BIGINT[], $7::TEXT[], $8::INT[], $9::TEXT[], \
                 $10::JSONB[]) AS v(debate_id, ord, kind, round, agent, data) \
             JOIN d ON d.id = v.debate_id \
             RETURNING debate_id, seq",
        )
        .bind(&ids)
        .bind(&counts)
        .bind(&owners)
        .bind(&generations)
        .bind(&ev_ids)
        .bind(&ev_ords)
        .bind(&kinds)
        .bind(&rounds)
        .bind(&agents)
        .bind(&data)
        .bind(timestamp)
        .bind(usage().map(|(id, _)| id).collect::<Vec<&str>>())
        .bind(text(|u| u.principal_id.as_str()))
        .bind(text(|u| u.agent.as_str()))
        .bind(text(|u| u.provider.as_str()))
        .bind(text(|u| u.model.as_str()))
        .bind(usage().map(|(_, u)| u.input_tokens).collect::<Vec<_>>())
        .bind(usage().map(|(_, u)| u.output_tokens).collect::<Vec<_>>())
        .bind(usage().map(|(_, u)| u.estimated).collect::<Vec<_>>())
        .bind(usage().map(|(_, u)| u.cost_usd).collect::<Vec<_>>())
        .fetch_all(&self.pool)
        .await?;
        let mut first: HashMap<&str, i64> = HashMap::with_capacity(steps_with_events.len());
        for (id, seq) in &rows {
            let at = first.entry(id.as_str()).or_insert(*seq);
            *at = (*at).min(*seq);
        }
        // The debates that got nothing were refused: gone, or their lease moved on.
        let missing: Vec<&str> = ids
            .iter()
            .copied()
            .filter(|id| !first.contains_key(id))
            .collect();
        let existing: HashSet<String> = if missing.is_empty() {
            HashSet::new()
        } else {
            sqlx::query_scalar("SELECT id FROM debates WHERE id = ANY($1)")
                .bind(&missing)
                .fetch_all(&self.pool)
                .await?
                .into_iter()
                .collect()
        };
        Ok(steps
            .iter()
            .map(|s| {
                if s.events.is_empty() {
                    return Ok(Vec::new());
                }
                let Some(&from) = first.get(s.debate_id.as_str()) else {
                    return Err(refused(
                        &s.debate_id,
                        s.lease.as_ref(),
                        existing.contains(&s.debate_id),
                    ));
                };
                Ok(stored_run(&s.debate_id, from, &s.events, timestamp))
            })
            .collect())
    }

    async fn finish_debate(
        &self,
        debate_id: &str,
        lease: Option<&Lease>,
        update: &DebateUpdate,
        end: &NewEvent,
    ) -> StoreResult<(DebateRecord, StoredEvent)> {
        let mut tx = self.pool.begin().await?;
        let mut stored =
            insert_events(&mut tx, debate_id, lease, std::slice::from_ref(end)).await?;
        let record = apply_update(&mut tx, debate_id, update, true).await?;
        tx.commit().await?;
        let event = stored
            .pop()
            .ok_or_else(|| StoreError::NotFound(format!("debate {debate_id}")))?;
        Ok((record, event))
    }

    async fn finish_queued(
        &self,
        debate_id: &str,
        update: &DebateUpdate,
        end: &NewEvent,
    ) -> StoreResult<Option<(DebateRecord, StoredEvent)>> {
        let mut tx = self.pool.begin().await?;
        // The row lock taken here orders this against a concurrent claim of the same debate.
        let queued: Option<String> = sqlx::query_scalar(
            "SELECT id FROM debates WHERE id = $1 AND status IN ('queued', 'paused') FOR UPDATE",
        )
        .bind(debate_id)
        .fetch_optional(&mut *tx)
        .await?;
        if queued.is_none() {
            return Ok(None);
        }
        let mut stored = insert_events(&mut tx, debate_id, None, std::slice::from_ref(end)).await?;
        let record = apply_update(&mut tx, debate_id, update, true).await?;
        tx.commit().await?;
        Ok(stored.pop().map(|e| (record, e)))
    }

    async fn count_queued(&self) -> StoreResult<i64> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM debates WHERE status = 'queued'")
                .fetch_one(&self.intake)
                .await?,
        )
    }

    async fn claim_debates(
        &self,
        instance: &str,
        max: u32,
        ttl: Duration,
    ) -> StoreResult<Vec<ClaimedDebate>> {
        self.claim(
            instance,
            max,
            ttl,
            "status IN ('queued', 'running') AND (status = 'queued' \
             OR lease_expires_at IS NULL OR lease_expires_at < now())",
        )
        .await
    }

    async fn claim_queued(
        &self,
        instance: &str,
        max: u32,
        ttl: Duration,
    ) -> StoreResult<Vec<ClaimedDebate>> {
        self.claim(instance, max, ttl, "status = 'queued'").await
    }

    async fn renew_leases(&self, instance: &str, ttl: Duration) -> StoreResult<Vec<Control>> {
        let rows: Vec<ControlRow> = sqlx::query_as(
            // Rows locked in id order, as grouped appends lock theirs: two statements that
            // each lock many debates never wait on each other in a cycle.
            "WITH l AS (SELECT id FROM debates WHERE lease_owner = $1 AND status = 'running' \
                 ORDER BY id FOR UPDATE) \
             UPDATE debates SET lease_expires_at = now() + make_interval(secs => $2) \
             FROM l WHERE debates.id = l.id AND debates.lease_owner = $1 \
             RETURNING debates.id, lease_generation, cancel_requested, pause_requested",
        )
        .bind(instance)
        .bind(ttl_secs(ttl))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(ControlRow::into_control).collect())
    }

    async fn release_lease(&self, debate_id: &str, lease: &Lease) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE debates SET lease_owner = NULL, lease_expires_at = NULL \
             WHERE id = $1 AND lease_owner = $2 AND lease_generation = $3",
        )
        .bind(debate_id)
        .bind(&lease.owner)
        .bind(lease.generation)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn expire_leases_of(&self, instance: &str) -> StoreResult<u64> {
        let done = sqlx::query(
            "UPDATE debates SET lease_expires_at = now() - interval '1 second' \
             WHERE lease_owner = $1",
        )
        .bind(instance)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn request_cancel(&self, debate_id: &str) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE debates SET cancel_requested = TRUE WHERE id = $1 AND status = 'running'",
        )
        .bind(debate_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn request_pause(&self, debate_id: &str) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE debates SET pause_requested = TRUE WHERE id = $1 AND status = 'running'",
        )
        .bind(debate_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn control_requests(&self, instance: &str) -> StoreResult<Vec<Control>> {
        let rows: Vec<ControlRow> = sqlx::query_as(
            "SELECT id, lease_generation, cancel_requested, pause_requested FROM debates \
             WHERE lease_owner = $1 AND (cancel_requested OR pause_requested) \
             AND status = 'running'",
        )
        .bind(instance)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(ControlRow::into_control).collect())
    }

    async fn unpause(&self, debate_id: &str) -> StoreResult<Option<DebateRecord>> {
        let sql = format!(
            "UPDATE debates SET status = 'queued' WHERE id = $1 AND status = 'paused' \
             RETURNING {DEBATE_COLUMNS}"
        );
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query_as::<_, DebateRow>(&sql)
            .bind(debate_id)
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        row.map(DebateRow::into_record).transpose()
    }

    async fn debate_cost(&self, debate_id: &str) -> StoreResult<f64> {
        let cost: Option<f64> =
            sqlx::query_scalar("SELECT SUM(cost_usd) FROM usage WHERE debate_id = $1")
                .bind(debate_id)
                .fetch_one(&self.pool)
                .await?;
        Ok(cost.unwrap_or(0.0))
    }

    async fn active_debates(&self) -> StoreResult<Vec<ActiveDebate>> {
        let rows = sqlx::query_as::<_, ActiveRow>(
            "SELECT d.id, d.task, d.owner_id, d.lease_owner, d.rounds, d.started_at, \
                    d.lease_expires_at, \
                    (SELECT MAX(e.round) FROM debate_events e \
                      WHERE e.debate_id = d.id AND e.kind = 'round_start') AS round \
             FROM debates d WHERE d.status = 'running' \
             ORDER BY d.created_at, d.id LIMIT 1000",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(ActiveRow::into_active).collect())
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
        records(rows)
    }

    async fn apply_match_results(
        &self,
        debate_id: &str,
        domain: Option<&str>,
        matches: &[MatchResult],
    ) -> StoreResult<bool> {
        check_matches(matches)?;
        let mut attempts = 0;
        loop {
            match self.try_apply_matches(debate_id, domain, matches).await {
                Ok(fresh) => return Ok(fresh),
                Err(e) if is_retryable(&e) && attempts < 5 => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(10 * attempts)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn ratings(&self, domain: Option<&str>, limit: u32) -> StoreResult<Vec<Rating>> {
        // COLLATE "C": ties break in byte order, as SQLite's BINARY collation does.
        let rows = sqlx::query_as::<_, RatingRow>(
            "SELECT agent, domain, rating, games, wins, losses, draws, updated_at FROM ratings \
             WHERE domain = $1 ORDER BY rating DESC, agent COLLATE \"C\" ASC LIMIT $2",
        )
        .bind(domain_key(domain))
        .bind(i64::from(clamp_ratings_limit(limit)))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(Into::into).collect())
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
        let rows = sqlx::query_as::<_, EventRow>(
            "SELECT debate_id, seq, kind, round, agent, data, created_at FROM debate_events \
             WHERE debate_id = $1 AND kind = ANY($2) ORDER BY seq LIMIT $3 OFFSET $4",
        )
        .bind(debate_id)
        .bind(kinds)
        .bind(i64::from(clamp_events_limit(limit)))
        .bind(i64::from(offset))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    async fn count_debates_by_status(&self) -> StoreResult<Vec<(String, i64)>> {
        let counts = sqlx::query_as::<_, (String, i64)>(
            "SELECT status, COUNT(*) FROM debates GROUP BY status ORDER BY status COLLATE \"C\"",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(counts)
    }

    async fn create_user(&self, new: &NewUser) -> StoreResult<User> {
        let created_at = now_micros();
        let email = new.email.to_lowercase();
        let done = sqlx::query(
            "INSERT INTO users (id, email, password_hash, role, created_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&new.id)
        .bind(&email)
        .bind(&new.password_hash)
        .bind(&new.role)
        .bind(created_at)
        .execute(&self.pool)
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
            "SELECT {USER_COLUMNS} FROM users WHERE email = $1"
        ))
        .bind(email.to_lowercase())
        .fetch_optional(&self.pool)
        .await?;
        row.map(UserRow::into_user).transpose()
    }

    async fn user_by_id(&self, id: &str) -> StoreResult<Option<User>> {
        let row = sqlx::query_as::<_, UserRow>(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(UserRow::into_user).transpose()
    }

    async fn login_attempts(&self, email_hash: &str) -> StoreResult<(i32, Option<DateTime<Utc>>)> {
        let row: Option<(i32, Option<DateTime<Utc>>)> = sqlx::query_as(
            "SELECT failures, locked_until FROM login_attempts WHERE email_hash = $1",
        )
        .bind(email_hash)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.unwrap_or((0, None)))
    }

    async fn set_login_attempts(
        &self,
        email_hash: &str,
        failures: i32,
        locked_until: Option<DateTime<Utc>>,
    ) -> StoreResult<()> {
        if failures == 0 && locked_until.is_none() {
            sqlx::query("DELETE FROM login_attempts WHERE email_hash = $1")
                .bind(email_hash)
                .execute(&self.pool)
                .await?;
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO login_attempts (email_hash, failures, locked_until, updated_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (email_hash) DO UPDATE \
             SET failures = $2, locked_until = $3, updated_at = $4",
        )
        .bind(email_hash)
        .bind(failures)
        .bind(locked_until.map(truncate_micros))
        .bind(now_micros())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn set_login_state(
        &self,
        user_id: &str,
        failed_logins: i32,
        locked_until: Option<DateTime<Utc>>,
    ) -> StoreResult<()> {
        sqlx::query("UPDATE users SET failed_logins = $1, locked_until = $2 WHERE id = $3")
            .bind(failed_logins)
            .bind(locked_until)
            .bind(user_id)
            .execute(&self.pool)
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
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE api_keys SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO api_keys (id, user_id, key_hash, prefix, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(user_id)
        .bind(key_hash)
        .bind(prefix)
        .bind(now)
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
            "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE key_hash = $1"
        ))
        .bind(key_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.map(ApiKeyRow::into_record).transpose()
    }

    async fn active_api_key(&self, user_id: &str) -> StoreResult<Option<ApiKeyRecord>> {
        let row = sqlx::query_as::<_, ApiKeyRow>(&format!(
            "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE user_id = $1 AND revoked_at IS NULL \
             ORDER BY created_at DESC LIMIT 1"
        ))
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(ApiKeyRow::into_record).transpose()
    }

    async fn revoke_api_keys(&self, user_id: &str) -> StoreResult<u64> {
        let done = sqlx::query(
            "UPDATE api_keys SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL",
        )
        .bind(now_micros())
        .bind(user_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn touch_api_key(&self, id: &str, at: DateTime<Utc>) -> StoreResult<()> {
        sqlx::query(
            "UPDATE api_keys SET last_used_at = $1 WHERE id = $2 \
             AND (last_used_at IS NULL OR last_used_at < $3)",
        )
        .bind(at)
        .bind(id)
        .bind(at - chrono::Duration::seconds(60))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn insert_refresh_token(&self, token: &RefreshTokenRecord) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, user_id, family_id, expires_at, used, \
             revoked, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&token.token_hash)
        .bind(&token.user_id)
        .bind(&token.family_id)
        .bind(token.expires_at)
        .bind(token.used)
        .bind(token.revoked)
        .bind(now_micros())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn refresh_token(&self, token_hash: &str) -> StoreResult<Option<RefreshTokenRecord>> {
        let row = sqlx::query_as::<_, (String, String, String, DateTime<Utc>, bool, bool)>(
            "SELECT token_hash, user_id, family_id, expires_at, used, revoked \
             FROM refresh_tokens WHERE token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.map(
            |(token_hash, user_id, family_id, expires_at, used, revoked)| {
                Ok(RefreshTokenRecord {
                    token_hash,
                    user_id,
                    family_id,
                    expires_at,
                    used,
                    revoked,
                })
            },
        )
        .transpose()
    }

    async fn use_refresh_token(&self, token_hash: &str) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE refresh_tokens SET used = TRUE WHERE token_hash = $1 AND used = FALSE AND revoked = FALSE",
        )
        .bind(token_hash)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn revoke_refresh_family(&self, family_id: &str) -> StoreResult<u64> {
        let done = sqlx::query(
            "UPDATE refresh_tokens SET revoked = TRUE WHERE family_id = $1 AND revoked = FALSE",
        )
        .bind(family_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn record_usage(&self, u: &NewUsage) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO usage (principal_id, debate_id, agent, provider, model, input_tokens, \
             output_tokens, estimated, cost_usd, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
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
        .bind(now_micros())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn usage_summary(
        &self,
        principal_id: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> StoreResult<UsageSummary> {
        let debates: i64 = sqlx::query_scalar(
            "SELECT COUNT(DISTINCT debate_id) FROM usage \
             WHERE principal_id = $1 AND created_at >= $2 AND created_at < $3",
        )
        .bind(principal_id)
        .bind(from)
        .bind(to)
        .fetch_one(&self.pool)
        .await?;
        let rows = sqlx::query_as::<_, (String, String, i64, i64, i64, f64, bool)>(
            "SELECT provider, model, COUNT(*), COALESCE(SUM(input_tokens), 0)::BIGINT, \
             COALESCE(SUM(output_tokens), 0)::BIGINT, COALESCE(SUM(cost_usd), 0.0)::DOUBLE PRECISION, BOOL_OR(estimated) \
             FROM usage WHERE principal_id = $1 AND created_at >= $2 AND created_at < $3 \
             GROUP BY provider, model ORDER BY provider COLLATE \"C\", model COLLATE \"C\"",
        )
        .bind(principal_id)
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
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
        // The receipt and the debate's receipt_id in one statement (one round trip, atomic);
        // nothing is written when the debate already has a receipt.
        let updated: Option<i64> = sqlx::query_scalar(
            "WITH r AS (INSERT INTO receipts (receipt_id, debate_id, owner_id, verdict, key_id, \
                 chain_head, event_count, issued_at, receipt, odr_v01, odr_v02) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
                 ON CONFLICT DO NOTHING RETURNING receipt_id, debate_id) \
             UPDATE debates SET receipt_id = r.receipt_id FROM r WHERE debates.id = r.debate_id \
             RETURNING 1::BIGINT",
        )
        .bind(&r.receipt_id)
        .bind(&r.debate_id)
        .bind(&r.owner_id)
        .bind(&r.verdict)
        .bind(&r.key_id)
        .bind(&r.chain_head)
        .bind(r.event_count)
        .bind(r.issued_at)
        .bind(&r.receipt)
        .bind(&r.odr_v01)
        .bind(&r.odr_v02)
        .fetch_optional(&self.pool)
        .await?;
        Ok(updated.is_some())
    }

    async fn insert_receipts(&self, receipts: &[NewReceipt]) -> StoreResult<Vec<bool>> {
        if receipts.is_empty() {
            return Ok(Vec::new());
        }
        fn column<'a, T>(receipts: &'a [NewReceipt], f: impl Fn(&'a NewReceipt) -> T) -> Vec<T> {
            receipts.iter().map(f).collect()
        }
        // Every receipt, and the debates' receipt_id, in one statement (one round trip,
        // atomic); a debate that already has a receipt keeps it and is left out.
        let stored: Vec<String> = sqlx::query_scalar(
            "WITH r AS (INSERT INTO receipts (receipt_id, debate_id, owner_id, verdict, key_id, \
                 chain_head, event_count, issued_at, receipt, odr_v01, odr_v02) \
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], \
                     $5::text[], $6::text[], $7::int8[], $8::timestamptz[], $9::text[], \
                     $10::text[], $11::text[]) \
                 ON CONFLICT DO NOTHING RETURNING receipt_id, debate_id), \
             linked AS (UPDATE debates SET receipt_id = r.receipt_id FROM r \
                 WHERE debates.id = r.debate_id) \
             SELECT receipt_id FROM r",
        )
        .bind(column(receipts, |r| r.receipt_id.as_str()))
        .bind(column(receipts, |r| r.debate_id.as_str()))
        .bind(column(receipts, |r| r.owner_id.as_deref()))
        .bind(column(receipts, |r| r.verdict.as_str()))
        .bind(column(receipts, |r| r.key_id.as_deref()))
        .bind(column(receipts, |r| r.chain_head.as_str()))
        .bind(column(receipts, |r| r.event_count))
        .bind(column(receipts, |r| r.issued_at))
        .bind(column(receipts, |r| r.receipt.as_str()))
        .bind(column(receipts, |r| r.odr_v01.as_str()))
        .bind(column(receipts, |r| r.odr_v02.as_str()))
        .fetch_all(&self.pool)
        .await?;
        let stored: std::collections::HashSet<String> = stored.into_iter().collect();
        Ok(receipts
            .iter()
            .map(|r| stored.contains(&r.receipt_id))
            .collect())
    }

    async fn get_receipt(&self, receipt_id: &str) -> StoreResult<Option<ReceiptRow>> {
        let sql = format!("SELECT {RECEIPT_COLUMNS} FROM receipts WHERE receipt_id = $1");
        let row: Option<PgReceiptRow> = sqlx::query_as(&sql)
            .bind(receipt_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(PgReceiptRow::into_row))
    }

    async fn receipt_of_debate(&self, debate_id: &str) -> StoreResult<Option<ReceiptRow>> {
        let sql = format!("SELECT {RECEIPT_COLUMNS} FROM receipts WHERE debate_id = $1");
        let row: Option<PgReceiptRow> = sqlx::query_as(&sql)
            .bind(debate_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(PgReceiptRow::into_row))
    }

    async fn list_receipts(
        &self,
        owner_id: Option<&str>,
        limit: u32,
        offset: u32,
    ) -> StoreResult<(Vec<ReceiptRow>, i64)> {
        let sql = format!(
            "SELECT {RECEIPT_COLUMNS} FROM receipts WHERE ($1::TEXT IS NULL OR owner_id = $1) \
             ORDER BY issued_at DESC, receipt_id LIMIT $2 OFFSET $3"
        );
        let rows: Vec<PgReceiptRow> = sqlx::query_as(&sql)
            .bind(owner_id)
            .bind(i64::from(limit))
            .bind(i64::from(offset))
            .fetch_all(&self.pool)
            .await?;
        let total: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM receipts WHERE ($1::TEXT IS NULL OR owner_id = $1)",
        )
        .bind(owner_id)
        .fetch_one(&self.pool)
        .await?;
        Ok((
            rows.into_iter().map(PgReceiptRow::into_row).collect(),
            total,
        ))
    }

    async fn debates_awaiting_receipt(&self, limit: u32) -> StoreResult<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM debates WHERE receipt_id IS NULL \
             AND status IN ('completed', 'no_consensus') ORDER BY finished_at LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?)
    }

    async fn register_signing_key(&self, key_id: &str, public_key_pem: &str) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO receipt_keys (key_id, public_key_pem, first_used_at) \
             VALUES ($1, $2, now()) ON CONFLICT (key_id) DO NOTHING",
        )
        .bind(key_id)
        .bind(public_key_pem)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn signing_key(&self, key_id: &str) -> StoreResult<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT public_key_pem FROM receipt_keys WHERE key_id = $1")
                .bind(key_id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }
}

const RECEIPT_COLUMNS: &str = "receipt_id, debate_id, owner_id, verdict, key_id, chain_head, \
     event_count, issued_at, receipt, odr_v01, odr_v02";

#[derive(sqlx::FromRow)]
struct PgReceiptRow {
    receipt_id: String,
    debate_id: String,
    owner_id: Option<String>,
    verdict: String,
    key_id: Option<String>,
    chain_head: String,
    event_count: i64,
    issued_at: DateTime<Utc>,
    receipt: String,
    odr_v01: String,
    odr_v02: String,
}

impl PgReceiptRow {
    fn into_row(self) -> ReceiptRow {
        ReceiptRow {
            receipt_id: self.receipt_id,
            debate_id: self.debate_id,
            owner_id: self.owner_id,
            verdict: self.verdict,
            key_id: self.key_id,
            chain_head: self.chain_head,
            event_count: self.event_count,
            issued_at: self.issued_at,
            receipt: self.receipt,
            odr_v01: self.odr_v01,
            odr_v02: self.odr_v02,
        }
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
    locked_until: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
}

impl UserRow {
    fn into_user(self) -> StoreResult<User> {
        Ok(User {
            id: self.id,
            email: self.email,
            password_hash: self.password_hash,
            role: self.role,
            failed_logins: self.failed_logins,
            locked_until: self.locked_until,
            created_at: self.created_at,
        })
    }
}

const API_KEY_COLUMNS: &str = "id, user_id, prefix, created_at, last_used_at, revoked_at";

#[derive(sqlx::FromRow)]
struct ApiKeyRow {
    id: String,
    user_id: String,
    prefix: String,
    created_at: DateTime<Utc>,
    last_used_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
}

impl ApiKeyRow {
    fn into_record(self) -> StoreResult<ApiKeyRecord> {
        Ok(ApiKeyRecord {
            id: self.id,
            user_id: self.user_id,
            prefix: self.prefix,
            created_at: self.created_at,
            last_used_at: self.last_used_at,
            revoked_at: self.revoked_at,
        })
    }
}
