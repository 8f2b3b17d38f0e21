//! Cost of one debate step's append in the store layer, alone (no group commit): what a
//! debate's step costs when few debates run, so no other step shares its write.
//!
//! For each backend: 200 debates are created, then `append_step` is timed 20 unmeasured and
//! 2,000 measured times one after another, round-robin over the debates. Each step is
//! three `critique` events (about 300 bytes of data each) and the three usage rows of the
//! calls they record, the shape of a critique phase of three seats. Baseline: `store.ping()`
//! (`SELECT 1`) p50 before and after, so the numbers can be read as multiples of one round
//! trip on a noisy machine. Checks, not timings: every debate's log holds exactly its events,
//! numbered 1..=n with no gap.
//!
//! Postgres: ARAGORA_TEST_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/test), a
//! fresh schema `bench_<uuid>` (dropped at the end). SQLite: a fresh temp-dir file database
//! (`sqlite://<tmpdir>/data/aragora.db`, WAL).
//!
//! Run: `cargo bench --bench store_append` (release build; a few seconds once built).
//! Method and recorded numbers: docs/benchmarks.md.

use std::time::{Duration, Instant};

use aragora::store::{self, DynStore, NewEvent, NewUsage};

mod support;
use support::{pct, store_pool};

const DEBATES: usize = 200;
const WARMUP: usize = 20;
const STEPS: usize = 2_000;
const PINGS: usize = 500;

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

async fn ping_p50(store: &DynStore) -> Duration {
    let mut t = Vec::with_capacity(PINGS);
    for _ in 0..PINGS {
        let start = Instant::now();
        store.ping().await.unwrap();
        t.push(start.elapsed());
    }
    t.sort();
    pct(&t, 0.5)
}

fn step(debate_id: &str, n: usize) -> (Vec<NewEvent>, Vec<NewUsage>) {
    let seats = ["alice", "bob", "carol"];
    let events = seats
        .iter()
        .map(|seat| NewEvent {
            kind: "critique".into(),
            round: Some(1),
            agent: Some((*seat).into()),
            data: serde_json::json!({
                "critic": seat,
                "target": "the others",
                "content": format!("step {n}: the proposal leaves the migration cost and the \
                    rollback plan unstated; both decide whether the change is worth it, and the \
                    measurements quoted were taken on a different workload."),
                "severity": 0.4,
            }),
        })
        .collect();
    let usage = seats
        .iter()
        .map(|seat| NewUsage {
            principal_id: "bench".into(),
            debate_id: Some(debate_id.to_owned()),
            agent: (*seat).into(),
            provider: "demo".into(),
            model: "demo".into(),
            input_tokens: 420,
            output_tokens: 96,
            estimated: true,
            cost_usd: 0.0,
        })
        .collect();
    (events, usage)
}

async fn run(label: &str, store: DynStore) {
    let mut ids = Vec::with_capacity(DEBATES);
    for i in 0..DEBATES {
        let id = format!("bench-append-{i:04}");
        store
            .create_debate(&support::bench_debate(
                &id,
                "Should the append path be benchmarked?",
            ))
            .await
            .unwrap();
        ids.push(id);
    }
    let ping_before = ping_p50(&store).await;
    let mut times = Vec::with_capacity(STEPS);
    for n in 0..WARMUP + STEPS {
        let id = &ids[n % DEBATES];
        let (events, usage) = step(id, n);
        let start = Instant::now();
        let stored = store.append_step(id, None, &events, &usage).await.unwrap();
        let took = start.elapsed();
        assert_eq!(stored.len(), events.len());
        if n >= WARMUP {
            times.push(took);
        }
    }
    let ping_after = ping_p50(&store).await;
    // Every log is whole: its events numbered 1..=n, nothing lost or doubled.
    for (i, id) in ids.iter().enumerate() {
        let steps = (WARMUP + STEPS - i).div_ceil(DEBATES);
        let log = store.events_since(id, 0, u32::MAX).await.unwrap();
        assert_eq!(log.len(), steps * 3, "debate {id}");
        for (k, e) in log.iter().enumerate() {
            assert_eq!(e.seq, k as i64 + 1, "debate {id}");
        }
    }
    times.sort();
    let total: Duration = times.iter().sum();
    let ping = (ping_before + ping_after) / 2;
    println!(
        "{label:<9} append_step (3 events + 3 usage rows): p50 {} p99 {} mean {} | ping p50 {} / {} | p50 = {:.1} × ping",
        ms(pct(&times, 0.5)),
        ms(pct(&times, 0.99)),
        ms(total / STEPS as u32),
        ms(ping_before),
        ms(ping_after),
        pct(&times, 0.5).as_secs_f64() / ping.as_secs_f64(),
    );
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/data/aragora.db", dir.path().display());
    let sqlite = store::connect(&url, store_pool(4)).await.unwrap();
    sqlite.migrate().await.unwrap();
    run("SQLite", sqlite).await;

    let base = std::env::var("ARAGORA_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let (schema, url) = support::fresh_schema(&base).await;
    // In a task so the schema is dropped even when a check fails.
    let outcome = tokio::spawn(async move {
        let pg = store::connect(&url, store_pool(4)).await.unwrap();
        pg.migrate().await.unwrap();
        run("Postgres", pg).await;
    })
    .await;
    support::drop_schema(&base, &schema).await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}
