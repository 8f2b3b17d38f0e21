//! Cost of the durable debate queue in the store layer: the debates table is the work queue,
//! instances claim debates under a lease (`claim_debates`, `FOR UPDATE SKIP LOCKED` on
//! Postgres, one `BEGIN IMMEDIATE` writer on SQLite) and renew every lease they hold in one
//! statement (`renew_leases`).
//!
//! 1. Drain throughput on Postgres: 3,000 queued debates, 1, 2 and 3 concurrent claimers
//!    (each its own `store::connect`, one connection), each a task looping
//!    `claim_debates(name, 10, 30 s)` until it gets nothing back. Checks, not timings: every
//!    debate was claimed exactly once, as a first claim (generation 1, previously queued).
//! 2. Claim latency, Postgres and SQLite: 10,000 queued debates, 20 unmeasured then 500
//!    timed `claim_debates(name, 1, 30 s)` one after another.
//! 3. Heartbeat cost, Postgres and SQLite: one instance claims 5,000 debates, then 50 timed
//!    `renew_leases(name, 30 s)` (3 unmeasured first), each must renew all 5,000.
//! 4. Baseline: `store.ping()` (`SELECT 1`) p50, before and after the rest, so the numbers
//!    can be read as multiples of one round trip on a noisy machine.
//!
//! Postgres: ARAGORA_TEST_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/test), a
//! fresh schema `bench_<uuid>` (truncated between parts, dropped at the end). SQLite: a
//! fresh temp-dir file database per part (`sqlite://<tmpdir>/data/aragora.db`, WAL).
//! Queued debates are inserted with `create_debate` from 8 concurrent tasks, then
//! `ANALYZE debates` (Postgres) so the planner has statistics before the timing.
//!
//! Run: `cargo bench --bench debate_queue` (release build; about 20 s once built).
//! Method and recorded numbers: docs/benchmarks.md.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aragora::store::{self, DebateStatus, DynStore};

mod support;
use support::{pct, store_pool};

const DRAIN: usize = 3_000;
const CLAIMERS: &[usize] = &[1, 2, 3];
const DRAIN_BATCH: u32 = 10;
const LATENCY_QUEUE: usize = 10_000;
const LATENCY_WARMUP: usize = 20;
const LATENCY_CLAIMS: usize = 500;
const HELD: usize = 5_000;
const HELD_BATCH: u32 = 500;
const RENEW_WARMUP: usize = 3;
const RENEWALS: usize = 50;
const PINGS: usize = 500;
const TTL: Duration = Duration::from_secs(30);
/// Concurrent `create_debate` tasks filling the queue (and the filling store's pool size).
const INSERTERS: usize = 8;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mean(samples: &[Duration]) -> Duration {
    samples.iter().sum::<Duration>() / samples.len() as u32
}

fn sorted(mut samples: Vec<Duration>) -> Vec<Duration> {
    samples.sort_unstable();
    samples
}

/// `n` queued debates, created from INSERTERS concurrent tasks; their ids, in no order.
async fn fill(store: &DynStore, n: usize) -> Vec<String> {
    let started = Instant::now();
    let tasks: Vec<_> = (0..INSERTERS)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for _ in (t..n).step_by(INSERTERS) {
                    let id = uuid::Uuid::new_v4().simple().to_string();
                    store
                        .create_debate(&support::bench_debate(
                            &id,
                            "Should the queue be benchmarked?",
                        ))
                        .await
                        .unwrap();
                    ids.push(id);
                }
                ids
            })
        })
        .collect();
    let mut ids = Vec::with_capacity(n);
    for t in tasks {
        ids.extend(t.await.unwrap());
    }
    assert_eq!(store.count_queued().await.unwrap(), n as i64);
    println!(
        "  (filled {n} queued debates in {:.1} s, {:.0} inserts/s)",
        started.elapsed().as_secs_f64(),
        n as f64 / started.elapsed().as_secs_f64()
    );
    ids
}

/// `PINGS` timed `ping()`s after 50 unmeasured ones.
async fn pings(store: &DynStore) -> Vec<Duration> {
    for _ in 0..50 {
        store.ping().await.unwrap();
    }
    let mut lat = Vec::with_capacity(PINGS);
    for _ in 0..PINGS {
        let s = Instant::now();
        store.ping().await.unwrap();
        lat.push(s.elapsed());
    }
    lat
}

/// The Postgres side: an admin pool on the bench schema for truncating and analysing.
struct Pg {
    url: String,
    admin: sqlx::PgPool,
}

impl Pg {
    async fn reset(&self) {
        sqlx::query("TRUNCATE debates CASCADE")
            .execute(&self.admin)
            .await
            .unwrap();
    }

    async fn analyze(&self) {
        sqlx::query("ANALYZE debates")
            .execute(&self.admin)
            .await
            .unwrap();
    }
}

async fn open(url: &str, size: u32) -> DynStore {
    let store = store::connect(url, store_pool(size)).await.unwrap();
    store.migrate().await.unwrap();
    store
}

/// A fresh, migrated SQLite file database in its own temp dir.
async fn sqlite() -> (DynStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/data/aragora.db", dir.path().display());
    (open(&url, INSERTERS as u32).await, dir)
}

/// Part 1: `claimers` separate stores drain DRAIN queued debates.
async fn drain(pg: &Pg, claimers: usize) -> (f64, Vec<usize>, usize) {
    pg.reset().await;
    let filler = open(&pg.url, INSERTERS as u32).await;
    let created: HashSet<String> = fill(&filler, DRAIN).await.into_iter().collect();
    pg.analyze().await;
    filler.close().await;
    let mut stores = Vec::with_capacity(claimers);
    for _ in 0..claimers {
        let s = store::connect(&pg.url, store_pool(1)).await.unwrap();
        s.ping().await.unwrap();
        stores.push(s);
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(claimers));
    let started = Instant::now();
    let tasks: Vec<_> = stores
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let s = s.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                let name = format!("claimer-{i}");
                barrier.wait().await;
                let mut got = Vec::new();
                let mut calls = 0;
                loop {
                    let batch = s.claim_debates(&name, DRAIN_BATCH, TTL).await.unwrap();
                    calls += 1;
                    if batch.is_empty() {
                        break;
                    }
                    for c in batch {
                        assert_eq!(c.lease.owner, name);
                        assert_eq!(c.lease.generation, 1, "{} claimed twice", c.record.id);
                        assert_eq!(c.previous_status, DebateStatus::Queued);
                        got.push(c.record.id);
                    }
                }
                (got, calls, Instant::now())
            })
        })
        .collect();
    let mut all = Vec::with_capacity(DRAIN);
    let mut split = Vec::with_capacity(claimers);
    let mut calls = 0;
    let mut last = started;
    for t in tasks {
        let (got, c, done) = t.await.unwrap();
        split.push(got.len());
        calls += c;
        last = last.max(done);
        all.extend(got);
    }
    let elapsed = last - started;
    // Exactly once: as many claims as debates, no id twice, and the very ids created.
    let claimed: HashSet<String> = all.iter().cloned().collect();
    assert_eq!(all.len(), DRAIN, "claims != debates");
    assert_eq!(claimed.len(), DRAIN, "a debate was claimed twice");
    assert_eq!(claimed, created, "claimed ids differ from the queued ones");
    assert_eq!(stores[0].count_queued().await.unwrap(), 0);
    for s in stores {
        s.close().await;
    }
    (DRAIN as f64 / elapsed.as_secs_f64(), split, calls)
}

/// Part 2: single claims from a queue of LATENCY_QUEUE.
async fn claim_latency(store: &DynStore) -> Vec<Duration> {
    for _ in 0..LATENCY_WARMUP {
        assert_eq!(
            store.claim_debates("single", 1, TTL).await.unwrap().len(),
            1
        );
    }
    let mut lat = Vec::with_capacity(LATENCY_CLAIMS);
    for _ in 0..LATENCY_CLAIMS {
        let s = Instant::now();
        let got = store.claim_debates("single", 1, TTL).await.unwrap();
        lat.push(s.elapsed());
        assert_eq!(got.len(), 1);
    }
    lat
}

/// Part 3: one instance holds HELD debates; time `renew_leases`.
async fn heartbeat(store: &DynStore) -> (Duration, Vec<Duration>) {
    let started = Instant::now();
    let mut held = 0;
    while held < HELD {
        let got = store
            .claim_debates("holder", HELD_BATCH, TTL)
            .await
            .unwrap();
        assert!(!got.is_empty());
        held += got.len();
    }
    let claim_all = started.elapsed();
    assert_eq!(held, HELD);
    for _ in 0..RENEW_WARMUP {
        assert_eq!(store.renew_leases("holder", TTL).await.unwrap().len(), HELD);
    }
    let mut lat = Vec::with_capacity(RENEWALS);
    for _ in 0..RENEWALS {
        let s = Instant::now();
        let renewed = store.renew_leases("holder", TTL).await.unwrap();
        lat.push(s.elapsed());
        assert_eq!(renewed.len(), HELD);
    }
    (claim_all, lat)
}

fn latency_row(backend: &str, lat: Vec<Duration>, rtt: Duration) {
    let first = mean(&lat[..100]);
    let last = mean(&lat[lat.len() - 100..]);
    let lat = sorted(lat);
    println!(
        "{:<10} {:>9.3} {:>9.3} {:>9.3} {:>14.3} {:>13.3} {:>9.1}",
        backend,
        ms(pct(&lat, 0.50)),
        ms(pct(&lat, 0.99)),
        ms(mean(&lat)),
        ms(first),
        ms(last),
        ms(pct(&lat, 0.50)) / ms(rtt)
    );
}

fn heartbeat_row(backend: &str, claim_all: Duration, lat: Vec<Duration>, rtt: Duration) {
    let first = mean(&lat[..10]);
    let last = mean(&lat[lat.len() - 10..]);
    let lat = sorted(lat);
    println!(
        "{:<10} {:>9.2} {:>9.2} {:>13.2} {:>12.2} {:>11.2} {:>9.0} {:>15.0}",
        backend,
        ms(pct(&lat, 0.50)),
        ms(pct(&lat, 0.99)),
        ms(first),
        ms(last),
        pct(&lat, 0.50).as_secs_f64() * 1e6 / HELD as f64,
        ms(pct(&lat, 0.50)) / ms(rtt),
        ms(claim_all)
    );
}

async fn run(pg: Pg) {
    let started = Instant::now();
    let pg_store = open(&pg.url, INSERTERS as u32).await;
    let (sq_store, _sq_dir) = sqlite().await;

    println!(
        "4. baseline: store.ping() (SELECT 1), {PINGS} timed after 50 unmeasured, \
         at the start and again at the end"
    );
    let pg_ping_before = pings(&pg_store).await;
    let sq_ping_before = pings(&sq_store).await;

    println!();
    println!(
        "1. drain {DRAIN} queued debates on Postgres: N claimers, each its own pool \
         (1 connection) and task looping claim_debates(name, {DRAIN_BATCH}, 30 s) until empty"
    );
    let mut drains = Vec::new();
    for &n in CLAIMERS {
        drains.push((n, drain(&pg, n).await));
    }
    println!(
        "{:<9} {:>11} {:>12} {:>18}  exactly once",
        "claimers", "debates/s", "claim calls", "per claimer"
    );
    for (n, (rate, split, calls)) in &drains {
        let split = split
            .iter()
            .map(std::string::ToString::to_string)
            .collect::<Vec<_>>()
            .join("/");
        println!("{n:<9} {rate:>11.0} {calls:>12} {split:>18}  ok");
    }

    println!();
    println!(
        "2. claim latency: {LATENCY_QUEUE} queued, {LATENCY_WARMUP} unmeasured then \
         {LATENCY_CLAIMS} timed claim_debates(name, 1, 30 s), one at a time"
    );
    pg.reset().await;
    fill(&pg_store, LATENCY_QUEUE).await;
    pg.analyze().await;
    let pg_claims = claim_latency(&pg_store).await;
    let (sq_claim_store, _d) = sqlite().await;
    fill(&sq_claim_store, LATENCY_QUEUE).await;
    let sq_claims = claim_latency(&sq_claim_store).await;
    sq_claim_store.close().await;

    println!();
    println!(
        "3. heartbeat: one instance holds {HELD} running debates (claimed {HELD_BATCH} at a \
         time), {RENEW_WARMUP} unmeasured then {RENEWALS} timed renew_leases(name, 30 s)"
    );
    pg.reset().await;
    fill(&pg_store, HELD).await;
    pg.analyze().await;
    let (pg_claim_all, pg_renew) = heartbeat(&pg_store).await;
    let (sq_hb_store, _d) = sqlite().await;
    fill(&sq_hb_store, HELD).await;
    let (sq_claim_all, sq_renew) = heartbeat(&sq_hb_store).await;
    sq_hb_store.close().await;

    let pg_ping_after = pings(&pg_store).await;
    let sq_ping_after = pings(&sq_store).await;
    let both = |a: &[Duration], b: &[Duration]| sorted(a.iter().chain(b).copied().collect());
    let pg_pings = both(&pg_ping_before, &pg_ping_after);
    let sq_pings = both(&sq_ping_before, &sq_ping_after);
    let pg_rtt = pct(&pg_pings, 0.5);
    let sq_rtt = pct(&sq_pings, 0.5);

    println!();
    println!("results (RTT = p50 of all pings, before and after)");
    println!(
        "{:<10} {:>13} {:>12} {:>9} {:>9}",
        "ping", "p50 before", "p50 after", "RTT ms", "p99 ms"
    );
    for (name, before, after, all) in [
        ("postgres", pg_ping_before, pg_ping_after, &pg_pings),
        ("sqlite", sq_ping_before, sq_ping_after, &sq_pings),
    ] {
        println!(
            "{:<10} {:>13.3} {:>12.3} {:>9.3} {:>9.3}",
            name,
            ms(pct(&sorted(before), 0.5)),
            ms(pct(&sorted(after), 0.5)),
            ms(pct(all, 0.5)),
            ms(pct(all, 0.99))
        );
    }
    println!();
    println!(
        "{:<10} {:>9} {:>9} {:>9} {:>14} {:>13} {:>9}",
        "claim(1)", "p50 ms", "p99 ms", "mean ms", "first 100 ms", "last 100 ms", "p50/RTT"
    );
    latency_row("postgres", pg_claims, pg_rtt);
    latency_row("sqlite", sq_claims, sq_rtt);
    println!();
    println!(
        "{:<10} {:>9} {:>9} {:>13} {:>12} {:>11} {:>9} {:>15}",
        "renew",
        "p50 ms",
        "p99 ms",
        "first 10 ms",
        "last 10 ms",
        "µs/lease",
        "p50/RTT",
        "claim all ms"
    );
    heartbeat_row("postgres", pg_claim_all, pg_renew, pg_rtt);
    heartbeat_row("sqlite", sq_claim_all, sq_renew, sq_rtt);
    println!();
    println!(
        "drain debates/s in RTTs per debate (postgres): {}",
        drains
            .iter()
            .map(|(n, (rate, _, _))| format!("{n}: {:.2}", 1000.0 / rate / ms(pg_rtt)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("total {:.1} s", started.elapsed().as_secs_f64());
    pg_store.close().await;
    sq_store.close().await;
}

#[tokio::main]
async fn main() {
    let base = std::env::var("ARAGORA_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let admin = sqlx::PgPool::connect(&base)
        .await
        .unwrap_or_else(|e| panic!("Postgres at {base} is required for this bench: {e}"));
    let schema = format!("bench_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&admin)
        .await
        .unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
    println!(
        "aragora debate queue bench: Postgres schema {schema}, SQLite in temp dirs; \
         lease TTL 30 s"
    );
    let schema_admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap();
    // Run in a task so the schema is dropped even when a check fails.
    let outcome = tokio::spawn(run(Pg {
        url,
        admin: schema_admin.clone(),
    }))
    .await;
    schema_admin.close().await;
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}
