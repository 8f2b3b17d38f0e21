//! Cost of running debates, on the real code paths.
//!
//! Part 1 — engine overhead: debates of 3 instant `demo` seats, 3 rounds (min_rounds 3, so
//! every round runs), threshold consensus, run one after another through
//! `debate::engine::run` with (a) an event sink that drops everything and (b) the real
//! persistence path, `manager::Recorder` over a migrated SQLite store in a temp dir (plus
//! (c) the same with many debates in flight, for the store's event throughput).
//!
//! Part 2 — concurrency: the whole server in-process (`Application::build`, SQLite in a temp
//! dir, port 0, max_concurrent_debates max(1000, N), queue 10,000), N debates of three
//! `demo:1000` seats (1 s per call), 2 rounds, submitted over HTTP, then polled until none is
//! queued or running. Wall time against the ideal, process CPU time, peak and end RSS. Each
//! level runs in a fresh child process (this binary, `DEBATE_BENCH_LEVEL=N`).
//!
//! Run: `cargo bench --bench debate_engine` (release build; about 70 s once built). Method
//! and recorded numbers: docs/benchmarks.md.

use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use aragora::agents::AgentRegistry;
use aragora::app::{Application, load_agents};
use aragora::bus::LocalBus;
use aragora::config::{Config, Flags};
use aragora::debate::manager::{Recorder, RegistryAgent};
use aragora::debate::prompts::STANCES;
use aragora::debate::{
    ConsensusMode, DebateAgent, DebateInput, DebateOutcome, DebateSettings, Event, EventSink,
    FinalStatus, Seat, SinkError,
};
use aragora::store::{DynStore, NewDebate, PoolSettings};
use aragora::telemetry::logging::{JsonLogLayer, parse_filter};

mod support;
use support::pct;

/// Part 1: sequential debates per sink, after WARMUP unmeasured ones.
const SEQUENTIAL: usize = 300;
const WARMUP: usize = 20;
/// Part 1 (c): debates in flight at once, and how many in total.
const IN_FLIGHT: usize = 32;
const CONCURRENT_TOTAL: usize = 320;
const ENGINE_ROUNDS: u32 = 3;

/// Part 2: debate counts per level (each on a fresh server; override with
/// `BENCH_LEVELS=100,2000`), seats, rounds and agent delay.
const LEVELS: &[usize] = &[100, 250, 500, 1000, 2000];
const SLOW_AGENT: &str = "demo:1000";
const AGENT_DELAY: Duration = Duration::from_secs(1);
const SLOW_ROUNDS: u32 = 2;
/// HTTP connections submitting debates.
const SUBMITTERS: usize = 32;
/// A level that has not drained by then is reported as such and the run stops.
const LEVEL_DEADLINE: Duration = Duration::from_secs(180);

/// Set in the child process that runs one part-2 level.
const CHILD_ENV: &str = "DEBATE_BENCH_LEVEL";

#[tokio::main]
async fn main() {
    aragora::agents::http::install_crypto_provider();
    // Metrics and JSON log lines are part of the production cost: record them, write the
    // log lines nowhere. Same filter as the compiled-in default.
    aragora::telemetry::metrics::install();
    {
        use tracing_subscriber::layer::SubscriberExt;
        let subscriber = tracing_subscriber::registry()
            .with(parse_filter("info,sqlx=warn,hyper=warn,tower_http=warn").unwrap())
            .with(JsonLogLayer::with_writer(
                std::io::sink as fn() -> std::io::Sink,
            ));
        tracing::subscriber::set_global_default(subscriber).unwrap();
    }
    // Part 2 runs each level in a fresh child process (this binary again), so CPU time and
    // RSS belong to that level alone and no allocator pages are carried over from earlier ones.
    if let Some(n) = std::env::var(CHILD_ENV).ok().and_then(|n| n.parse().ok()) {
        let level = run_level(n).await;
        println!("LEVEL {}", serde_json::to_string(&level).unwrap());
        return;
    }
    println!(
        "aragora debate_engine bench — load average at start: {}",
        loadavg()
    );

    // BENCH_PARTS=2 runs only part 2 (e.g. with BENCH_DATABASE_URL for Postgres).
    let parts = std::env::var("BENCH_PARTS").unwrap_or_else(|_| "1,2".into());
    if parts.split(',').any(|p| p.trim() == "1") {
        engine_overhead().await;
    }
    if parts.split(',').any(|p| p.trim() == "2") {
        concurrency().await;
    }

    println!("\nload average at end: {}", loadavg());
}

// ---------------------------------------------------------------------------------------
// Part 1: engine overhead
// ---------------------------------------------------------------------------------------

async fn engine_overhead() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_for(dir.path(), &[]);
    let agents = Arc::new(load_agents(&config).unwrap());
    let url = format!("sqlite://{}/engine.db", dir.path().display());
    let store = aragora::store::connect(
        &url,
        PoolSettings {
            size: config.database.pool_size,
            max_overflow: config.database.max_overflow,
            acquire_timeout: Duration::from_secs(10),
            intake: config.database.intake_pool_size,
        },
    )
    .await
    .unwrap();
    store.migrate().await.unwrap();
    let bus = Arc::new(LocalBus::new(4096));

    println!(
        "\n== Part 1: engine overhead — 3 instant `demo` seats, {ENGINE_ROUNDS} rounds \
         (min_rounds {ENGINE_ROUNDS}), threshold 0.6; {SEQUENTIAL} debates one after another \
         after {WARMUP} warm-up =="
    );
    println!(
        "{:<26} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "sink",
        "ev/deb",
        "round µs",
        "r p50",
        "r p99",
        "debate µs",
        "d p50",
        "d p99",
        "CPU µs/d",
        "events/s"
    );

    // (a) no-op sink.
    let null = |_: usize| {
        let sink: Arc<dyn EventSink> = Arc::new(NullSink);
        async move { sink }
    };
    for _ in 0..WARMUP {
        one_debate(&agents, null(0).await).await;
    }
    let runs = sequential(&agents, SEQUENTIAL, null).await;
    print_engine_row("(a) no-op EventSink", &runs);

    // (b) Recorder over SQLite: the debate row exists first (as the manager creates it at
    // submission); creating it is not timed.
    let recorder = |i: usize| {
        let store = store.clone();
        let bus = bus.clone();
        async move {
            let id = create_row(&store, i).await;
            Arc::new(Recorder::new(store, bus, &id)) as Arc<dyn EventSink>
        }
    };
    for i in 0..WARMUP {
        one_debate(&agents, recorder(1_000_000 + i).await).await;
    }
    let runs = sequential(&agents, SEQUENTIAL, recorder).await;
    print_engine_row("(b) Recorder + SQLite", &runs);

    // (c) the same, IN_FLIGHT debates at a time: the store's sustained event throughput.
    let started = Instant::now();
    let cpu0 = cpu_seconds();
    let mut next = 0;
    let mut running = tokio::task::JoinSet::new();
    let mut runs = Vec::new();
    while next < CONCURRENT_TOTAL || !running.is_empty() {
        while next < CONCURRENT_TOTAL && running.len() < IN_FLIGHT {
            let sink = recorder(2_000_000 + next).await;
            let agents = agents.clone();
            running.spawn(async move { one_debate(&agents, sink).await });
            next += 1;
        }
        if let Some(done) = running.join_next().await {
            runs.push(done.unwrap());
        }
    }
    let wall = started.elapsed();
    let cpu = cpu_seconds() - cpu0;
    let events: usize = runs.iter().map(|r| r.events).sum();
    let mut debate: Vec<Duration> = runs.iter().map(|r| r.total).collect();
    debate.sort_unstable();
    println!(
        "(c) Recorder + SQLite, {IN_FLIGHT} in flight: {CONCURRENT_TOTAL} debates in {:.2} s \
         = {:.0} debates/s, {:.0} events/s persisted; latency per debate p50 {} µs, \
         p99 {} µs; CPU {:.0} µs/debate",
        wall.as_secs_f64(),
        CONCURRENT_TOTAL as f64 / wall.as_secs_f64(),
        events as f64 / wall.as_secs_f64(),
        pct(&debate, 0.50).as_micros(),
        pct(&debate, 0.99).as_micros(),
        cpu * 1e6 / CONCURRENT_TOTAL as f64,
    );
    assert!(
        runs.iter().all(|r| r.status == FinalStatus::Completed),
        "every demo debate reaches consensus"
    );
    store.close().await;
}

struct Run {
    status: FinalStatus,
    rounds_used: u32,
    total: Duration,
    rounds: Vec<Duration>,
    events: usize,
}

struct Sequential {
    runs: Vec<Run>,
    wall: Duration,
    cpu_seconds: f64,
}

async fn sequential<F, Fut>(agents: &Arc<AgentRegistry>, n: usize, sink: F) -> Sequential
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Arc<dyn EventSink>>,
{
    let mut runs = Vec::with_capacity(n);
    let mut wall = Duration::ZERO;
    let mut cpu_seconds = 0.0;
    for i in 0..n {
        let sink = sink(i).await;
        let cpu0 = self::cpu_seconds();
        let run = one_debate(agents, sink).await;
        cpu_seconds += self::cpu_seconds() - cpu0;
        wall += run.total;
        runs.push(run);
    }
    for r in &runs {
        assert_eq!(r.status, FinalStatus::Completed);
        assert_eq!(r.rounds_used, ENGINE_ROUNDS);
        assert_eq!(r.rounds.len(), ENGINE_ROUNDS as usize);
    }
    Sequential {
        runs,
        wall,
        cpu_seconds,
    }
}

fn print_engine_row(label: &str, s: &Sequential) {
    let mut rounds: Vec<Duration> = s.runs.iter().flat_map(|r| r.rounds.clone()).collect();
    let mut debates: Vec<Duration> = s.runs.iter().map(|r| r.total).collect();
    rounds.sort_unstable();
    debates.sort_unstable();
    let events: usize = s.runs.iter().map(|r| r.events).sum();
    let n = s.runs.len() as f64;
    println!(
        "{:<26} {:>7.1} {:>9.0} {:>9} {:>9} {:>9.0} {:>9} {:>9} {:>9.0} {:>10.0}",
        label,
        events as f64 / n,
        mean(&rounds).as_secs_f64() * 1e6,
        pct(&rounds, 0.50).as_micros(),
        pct(&rounds, 0.99).as_micros(),
        mean(&debates).as_secs_f64() * 1e6,
        pct(&debates, 0.50).as_micros(),
        pct(&debates, 0.99).as_micros(),
        s.cpu_seconds * 1e6 / n,
        events as f64 / s.wall.as_secs_f64(),
    );
}

/// One debate through `engine::run`, seats built as the manager builds them.
async fn one_debate(agents: &AgentRegistry, sink: Arc<dyn EventSink>) -> Run {
    let seats = ["demo", "demo#2", "demo#3"]
        .iter()
        .enumerate()
        .map(|(i, seat)| Seat {
            name: (*seat).to_owned(),
            agent: Arc::new(RegistryAgent(agents.resolve("demo").unwrap())) as Arc<dyn DebateAgent>,
            stance: STANCES[i].to_owned(),
        })
        .collect();
    let input = DebateInput {
        task: "Should a small team adopt a monorepo for its three services?".into(),
        seats,
        judge: None,
        settings: DebateSettings {
            rounds: ENGINE_ROUNDS,
            min_rounds: ENGINE_ROUNDS,
            mode: ConsensusMode::Threshold,
            threshold: 0.6,
            timeout: Duration::from_secs(900),
            max_cost_usd: None,
        },
    };
    let timing = Arc::new(TimingSink::new(sink));
    let started = Instant::now();
    let outcome = aragora::debate::run(input, timing.clone(), CancellationToken::new()).await;
    let total = started.elapsed();
    let (marks, events) = timing.take();
    // Round r runs from its round_start to the next round_start (the last one to debate_end).
    let rounds = marks.windows(2).map(|w| w[1] - w[0]).collect();
    Run {
        status: outcome.status,
        rounds_used: outcome.rounds_used,
        total,
        rounds,
        events,
    }
}

async fn create_row(store: &DynStore, i: usize) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    store
        .create_debate(&NewDebate {
            id: id.clone(),
            task: format!("bench debate {i}"),
            agents: vec!["demo".into(); 3],
            rounds: ENGINE_ROUNDS as i32,
            consensus: "threshold".into(),
            owner_id: None,
            correlation_id: None,
            options: json!({"min_rounds": ENGINE_ROUNDS, "consensus_threshold": 0.6}),
        })
        .await
        .unwrap();
    id
}

/// Drops every event.
struct NullSink;

#[async_trait]
impl EventSink for NullSink {
    async fn record(&self, _events: &[Event]) -> Result<(), SinkError> {
        Ok(())
    }

    fn token_delta(&self, _round: u32, _agent: &str, _delta: &str) {}
}

/// Passes events through to the sink under test, noting when each round starts and when the
/// debate ends, and counting durable events.
struct TimingSink {
    inner: Arc<dyn EventSink>,
    marks: Mutex<(Vec<Instant>, usize)>,
}

impl TimingSink {
    fn new(inner: Arc<dyn EventSink>) -> Self {
        TimingSink {
            inner,
            marks: Mutex::new((Vec::with_capacity(8), 0)),
        }
    }

    fn take(&self) -> (Vec<Instant>, usize) {
        std::mem::take(&mut *self.marks.lock())
    }
}

#[async_trait]
impl EventSink for TimingSink {
    async fn record(&self, events: &[Event]) -> Result<(), SinkError> {
        {
            let mut marks = self.marks.lock();
            for e in events {
                if e.kind() == "round_start" {
                    marks.0.push(Instant::now());
                }
                marks.1 += 1;
            }
        }
        self.inner.record(events).await
    }

    async fn finish(&self, end: &Event, outcome: &DebateOutcome) -> Result<(), SinkError> {
        {
            let mut marks = self.marks.lock();
            marks.0.push(Instant::now());
            marks.1 += 1;
        }
        self.inner.finish(end, outcome).await
    }

    fn token_delta(&self, round: u32, agent: &str, delta: &str) {
        self.inner.token_delta(round, agent, delta);
    }
}

// ---------------------------------------------------------------------------------------
// Part 2: concurrent debates through the whole server
// ---------------------------------------------------------------------------------------

async fn concurrency() {
    let ideal = AGENT_DELAY * SLOW_ROUNDS * 3;
    println!(
        "\n== Part 2: concurrency — full server in-process, debates of 3 × `{SLOW_AGENT}`, \
         {SLOW_ROUNDS} rounds (min_rounds {SLOW_ROUNDS}), submitted over HTTP by {SUBMITTERS} \
         connections; ideal debate = {SLOW_ROUNDS} rounds × 3 phases × 1 s = {} s ==",
        ideal.as_secs()
    );
    println!(
        "{:>6} {:>8} {:>8} {:>8} {:>9} {:>8} {:>7} {:>8} {:>8} {:>8} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9}",
        "n",
        "submit s",
        "POST p50",
        "POST p99",
        "done",
        "wall s",
        "×ideal",
        "deb p50",
        "deb p99",
        "deb max",
        "CPU s",
        "CPU ms/d",
        "RSS0 MiB",
        "peak MiB",
        "end MiB",
        "KiB/deb",
        "events/s"
    );
    let levels: Vec<usize> = std::env::var("BENCH_LEVELS").ok().map_or_else(
        || LEVELS.to_vec(),
        |v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect(),
    );
    for n in levels {
        let output = tokio::process::Command::new(std::env::current_exe().unwrap())
            .env(CHILD_ENV, n.to_string())
            .stderr(std::process::Stdio::inherit())
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let Some(level) = stdout
            .lines()
            .find_map(|l| l.strip_prefix("LEVEL "))
            .and_then(|l| serde_json::from_str::<Level>(l).ok())
        else {
            println!("{n:>6} level failed ({}): {stdout}", output.status);
            break;
        };
        let durations: Vec<Duration> = level
            .durations
            .iter()
            .map(|s| Duration::from_secs_f64(*s))
            .collect();
        let ideal_s = ideal.as_secs_f64();
        println!(
            "{:>6} {:>8.2} {:>8.1} {:>8.1} {:>9} {:>8.2} {:>7.2} {:>8.2} {:>8.2} {:>8.2} {:>7.2} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>9.0}",
            n,
            level.submit,
            level.post_p50_ms,
            level.post_p99_ms,
            format!("{}/{}", level.completed, n),
            level.wall,
            level.wall / ideal_s,
            pct(&durations, 0.50).as_secs_f64(),
            pct(&durations, 0.99).as_secs_f64(),
            durations.last().copied().unwrap_or_default().as_secs_f64(),
            level.cpu_seconds,
            level.cpu_seconds * 1e3 / n as f64,
            mib(level.rss_before),
            mib(level.rss_peak),
            mib(level.rss_end),
            (level.rss_peak.saturating_sub(level.rss_before)) as f64 / 1024.0 / n as f64,
            level.events as f64 / level.wall,
        );
        if !level.notes.is_empty() {
            println!("       {}", level.notes.join("; "));
        }
        if !level.drained {
            println!("       level {n} did not drain within {LEVEL_DEADLINE:?}; stopping here");
            break;
        }
    }
    println!(
        "submit s: time to get all 202s (POST p50/p99 in ms); wall s: first POST to the last debate's finished_at; \
         deb: per-debate started_at→finished_at; CPU: process utime+stime over the level \
         (server and HTTP client); RSS0: idle server in the level's fresh process; KiB/deb: (peak − RSS0) / n"
    );
}

/// One level's figures (seconds as f64), passed from the child process as JSON.
#[derive(serde::Serialize, serde::Deserialize)]
struct Level {
    submit: f64,
    post_p50_ms: f64,
    post_p99_ms: f64,
    wall: f64,
    completed: usize,
    /// Per debate, started_at → finished_at, sorted.
    durations: Vec<f64>,
    cpu_seconds: f64,
    rss_before: u64,
    rss_peak: u64,
    rss_end: u64,
    events: i64,
    drained: bool,
    notes: Vec<String>,
}

async fn run_level(n: usize) -> Level {
    let dir = tempfile::tempdir().unwrap();
    let max = n.max(1000).to_string();
    let mut env: Vec<(&str, String)> = vec![
        ("ARAGORA_MAX_CONCURRENT_DEBATES", max),
        ("ARAGORA_DEBATE_QUEUE_SIZE", n.max(10_000).to_string()),
        // One client submits everything: the per-client debate_create limit would refuse it.
        ("ARAGORA_RATE_LIMIT_DISABLED", "1".to_owned()),
    ];
    // BENCH_DATABASE_URL=postgres://…: the level runs on Postgres, in a fresh schema.
    let schema = match std::env::var("BENCH_DATABASE_URL") {
        Ok(base) if base.starts_with("postgres") => {
            let (schema, url) = support::fresh_schema(&base).await;
            env.push(("ARAGORA_DATABASE_URL", url));
            Some((base, schema))
        }
        _ => None,
    };
    for var in [
        "ARAGORA_DB_POOL_SIZE",
        "ARAGORA_DB_MAX_OVERFLOW",
        "ARAGORA_DB_INTAKE_POOL_SIZE",
    ] {
        if let Ok(v) = std::env::var(var) {
            env.push((var, v));
        }
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let config = config_for(dir.path(), &env);
    let app = Application::build(config).await.unwrap();
    let addr = app.api_addr();
    let state = app.state().clone();
    let shutdown = app.shutdown_token();
    let server = tokio::spawn(app.run());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(SUBMITTERS)
        .build()
        .unwrap();
    let base = format!("http://{addr}/api/debates");
    // Let the workers start and the idle pool settle before measuring.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let rss_before = memory("VmRSS:");
    let hwm_reset = reset_peak_rss();
    let sampler_stop = CancellationToken::new();
    let sampler = tokio::spawn(sample_rss(sampler_stop.clone()));
    let pool_sampler = tokio::spawn(sample_pool(state.store.clone(), sampler_stop.clone()));
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let t0_utc = Utc::now();

    // Submit.
    let mut submitters = tokio::task::JoinSet::new();
    for w in 0..SUBMITTERS {
        let share = n / SUBMITTERS + usize::from(w < n % SUBMITTERS);
        let client = client.clone();
        let base = base.clone();
        submitters.spawn(async move {
            let mut ids = Vec::with_capacity(share);
            let mut errors = Vec::new();
            let mut latencies = Vec::with_capacity(share);
            for i in 0..share {
                let sent = Instant::now();
                let body = json!({
                    "task": format!("Benchmark debate {w}-{i}: should the team adopt a monorepo?"),
                    "agents": [SLOW_AGENT, SLOW_AGENT, SLOW_AGENT],
                    "rounds": SLOW_ROUNDS,
                    "min_rounds": SLOW_ROUNDS,
                });
                let response = client.post(&base).json(&body).send().await.unwrap();
                let status = response.status();
                let body: Value = response.json().await.unwrap_or_default();
                latencies.push(sent.elapsed());
                if status.as_u16() == 202 {
                    ids.push(body["debate_id"].as_str().unwrap().to_owned());
                } else {
                    errors.push(format!("{status}: {body}"));
                }
            }
            (ids, errors, latencies)
        });
    }
    let mut ids = Vec::with_capacity(n);
    let mut notes = Vec::new();
    let mut post_latencies = Vec::with_capacity(n);
    while let Some(done) = submitters.join_next().await {
        let (mut got, errors, mut latencies) = done.unwrap();
        ids.append(&mut got);
        post_latencies.append(&mut latencies);
        if let Some(first) = errors.first()
            && !notes
                .iter()
                .any(|n: &String| n.starts_with("POSTs refused"))
        {
            notes.push(format!(
                "POSTs refused (by one submitter: {}), e.g. {first}",
                errors.len()
            ));
        }
    }
    let submit = t0.elapsed();
    post_latencies.sort_unstable();

    // Wait until nothing is queued or running.
    let mut drained = false;
    while t0.elapsed() < LEVEL_DEADLINE {
        let mut busy = false;
        for status in ["queued", "running"] {
            let page: Value = client
                .get(format!("{base}?status={status}&limit=1"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            busy |= !page["debates"].as_array().unwrap().is_empty();
        }
        if !busy {
            drained = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let cpu_seconds = cpu_seconds() - cpu0;
    let rss_end = memory("VmRSS:");
    sampler_stop.cancel();
    let sampled_peak = sampler.await.unwrap();
    let (pool_max, pool_busy_share) = pool_sampler.await.unwrap();
    notes.push(format!(
        "pool: {pool_max} max connections, all in use in {:.0} % of 50-ms samples",
        pool_busy_share * 100.0
    ));
    let rss_peak = if hwm_reset {
        memory("VmHWM:").max(sampled_peak)
    } else {
        notes.push("VmHWM could not be reset; peak is sampled every 50 ms".into());
        sampled_peak
    };

    // Per-debate figures from the records (over HTTP, after the measurement).
    let mut durations = Vec::with_capacity(ids.len());
    let mut statuses: std::collections::BTreeMap<String, usize> = Default::default();
    let mut last_finish: Option<DateTime<Utc>> = None;
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{base}?limit=200");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: Value = client.get(url).send().await.unwrap().json().await.unwrap();
        for d in page["debates"].as_array().unwrap() {
            *statuses
                .entry(d["status"].as_str().unwrap_or("?").to_owned())
                .or_default() += 1;
            if let Some(s) = d["duration_seconds"].as_f64() {
                durations.push(Duration::from_secs_f64(s));
            }
            if let Some(f) = d["finished_at"]
                .as_str()
                .and_then(|f| f.parse::<DateTime<Utc>>().ok())
            {
                last_finish = Some(last_finish.map_or(f, |l| l.max(f)));
            }
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    durations.sort_unstable();
    let wall = last_finish
        .and_then(|f| (f - t0_utc).to_std().ok())
        .unwrap_or_else(|| t0.elapsed());
    let completed = statuses.get("completed").copied().unwrap_or(0);
    if completed != n {
        notes.push(format!("statuses: {statuses:?}"));
        // Say why the first failures failed.
        let mut reasons: std::collections::BTreeMap<String, usize> = Default::default();
        for id in &ids {
            if let Ok(Some(d)) = state.store.get_debate(id).await
                && let Some(e) = d.error
            {
                let key: String = e.chars().take(120).collect();
                *reasons.entry(key).or_default() += 1;
            }
        }
        for (reason, count) in reasons.iter().take(3) {
            notes.push(format!("{count}× {reason}"));
        }
    }
    let mut events = 0;
    for id in &ids {
        events += state.store.last_seq(id).await.unwrap_or(0);
    }

    shutdown.cancel();
    server.await.unwrap().unwrap();
    if let Some((base, schema)) = schema {
        support::drop_schema(&base, &schema).await;
    }
    Level {
        submit: submit.as_secs_f64(),
        post_p50_ms: pct(&post_latencies, 0.50).as_secs_f64() * 1e3,
        post_p99_ms: pct(&post_latencies, 0.99).as_secs_f64() * 1e3,
        wall: wall.as_secs_f64(),
        completed,
        durations: durations.iter().map(Duration::as_secs_f64).collect(),
        cpu_seconds,
        rss_before,
        rss_peak,
        rss_end,
        events,
        drained,
        notes,
    }
}

/// The pool's ceiling, and the share of 50-ms samples in which every connection it may open
/// was checked out (size = max, none idle).
async fn sample_pool(store: DynStore, stop: CancellationToken) -> (u32, f64) {
    let (mut samples, mut saturated) = (0u64, 0u64);
    loop {
        let status = store.pool_status();
        let max = status.max;
        samples += 1;
        if status.size >= status.max && status.idle == 0 {
            saturated += 1;
        }
        tokio::select! {
            _ = stop.cancelled() => return (max, saturated as f64 / samples as f64),
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}

/// Highest VmRSS seen every 50 ms until `stop`.
async fn sample_rss(stop: CancellationToken) -> u64 {
    let mut peak = memory("VmRSS:");
    loop {
        tokio::select! {
            _ = stop.cancelled() => return peak.max(memory("VmRSS:")),
            _ = tokio::time::sleep(Duration::from_millis(50)) => peak = peak.max(memory("VmRSS:")),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// The compiled-in defaults with data and lock dirs under `dir`, port 0, plus `extra`.
fn config_for(dir: &std::path::Path, extra: &[(&str, &str)]) -> Config {
    let data = dir.join("data").display().to_string();
    let lock = dir.display().to_string();
    let extra: Vec<(String, String)> = extra
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let flags = Flags {
        host: None,
        api_port: Some(0),
        ws_port: Some(0),
    };
    Config::load_with(None, &flags, |k| match k {
        "ARAGORA_DATA_DIR" => Some(data.clone()),
        "ARAGORA_LOCK_DIR" => Some(lock.clone()),
        _ => extra.iter().find(|(e, _)| e == k).map(|(_, v)| v.clone()),
    })
    .unwrap()
}

/// utime + stime of this whole process (all threads).
fn cpu_seconds() -> f64 {
    support::cpu_seconds_of(std::process::id())
}

/// A /proc/self/status figure in bytes (`VmRSS:`, `VmHWM:`).
fn memory(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Reset VmHWM to the current RSS (Linux ≥ 4.0: write 5 to clear_refs).
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").map_or_else(
        |_| "?".into(),
        |s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    )
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

fn mean(values: &[Duration]) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    values.iter().sum::<Duration>() / values.len() as u32
}
