//! Cost of a rate-limit decision, per backend, and what the limiter adds to a request.
//!
//! Run: `cargo bench --bench ratelimit` (release build; the Redis part needs Redis at
//! ARAGORA_TEST_REDIS_URL, default redis://127.0.0.1:6379/0, and is skipped without it).
//! Method and recorded numbers: docs/benchmarks.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aragora::app::Application;
use aragora::config::{Config, Flags};
use aragora::ratelimit::{Limiter, MemoryLimiter, Quota, RedisLimiter, Rule};

const KEYS: usize = 1_000;
const CONCURRENCY: usize = 32;

fn pct(sorted: &[Duration], p: f64) -> u128 {
    sorted[((sorted.len() as f64 - 1.0) * p) as usize].as_nanos()
}

fn report(name: &str, elapsed: Duration, mut lat: Vec<Duration>) {
    lat.sort_unstable();
    println!(
        "{:<34} {:>12.0} {:>10.2} {:>10.2}",
        name,
        lat.len() as f64 / elapsed.as_secs_f64(),
        pct(&lat, 0.50) as f64 / 1000.0,
        pct(&lat, 0.99) as f64 / 1000.0
    );
}

async fn decisions(
    limiter: Arc<dyn Limiter>,
    total: usize,
    tasks: usize,
) -> (Duration, Vec<Duration>) {
    // Large quota: every decision is a full GCRA update, never a short-circuit denial.
    let quota = Quota::per_minute(1_000_000);
    let keys: Arc<Vec<String>> = Arc::new(
        (0..KEYS)
            .map(|i| format!("ip:10.0.{}.{}", i / 256, i % 256))
            .collect(),
    );
    let started = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let limiter = limiter.clone();
            let keys = keys.clone();
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(total / tasks);
                for i in 0..total / tasks {
                    let key = &keys[(i * tasks + t) % KEYS];
                    let s = Instant::now();
                    limiter.check(Rule::Default, key, quota).await.unwrap();
                    lat.push(s.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::with_capacity(total);
    for h in handles {
        all.extend(h.await.unwrap());
    }
    (started.elapsed(), all)
}

async fn http_run(url: &str, total: usize) -> (Duration, Vec<Duration>) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENCY)
        .build()
        .unwrap();
    let started = Instant::now();
    let handles: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let client = client.clone();
            let url = url.to_owned();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                for _ in 0..total / CONCURRENCY {
                    let s = Instant::now();
                    let r = client.get(&url).send().await.unwrap();
                    assert_eq!(r.status(), 404);
                    r.bytes().await.unwrap();
                    lat.push(s.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    (started.elapsed(), all)
}

async fn app(
    disabled: bool,
) -> (
    std::net::SocketAddr,
    tokio_util::sync::CancellationToken,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").display().to_string();
    let lock = dir.path().display().to_string();
    let flags = Flags {
        host: None,
        api_port: Some(0),
        ws_port: Some(0),
    };
    let config = Config::load_with(None, &flags, |k| match k {
        "ARAGORA_DATA_DIR" => Some(data.clone()),
        "ARAGORA_LOCK_DIR" => Some(lock.clone()),
        "ARAGORA_RATE_LIMIT_RPM" => Some("1000000".into()),
        "ARAGORA_RATE_LIMIT_DISABLED" => Some(if disabled { "1" } else { "0" }.into()),
        _ => None,
    })
    .unwrap();
    let app = Application::build(config).await.unwrap();
    let addr = app.api_addr();
    let token = app.shutdown_token();
    tokio::spawn(app.run());
    (addr, token, dir)
}

#[tokio::main]
async fn main() {
    aragora::agents::http::install_crypto_provider();
    println!("aragora ratelimit bench: {KEYS} keys, quota 1,000,000/min (always allowed)");
    println!(
        "{:<34} {:>12} {:>10} {:>10}",
        "case", "decisions/s", "p50 µs", "p99 µs"
    );

    let memory: Arc<dyn Limiter> = Arc::new(MemoryLimiter::new());
    decisions(memory.clone(), 100_000, 1).await;
    let (e, l) = decisions(memory.clone(), 1_000_000, 1).await;
    report("memory, 1 task", e, l);
    let (e, l) = decisions(memory.clone(), 1_000_000, CONCURRENCY).await;
    report(&format!("memory, {CONCURRENCY} tasks"), e, l);

    let url = std::env::var("ARAGORA_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
    let prefix = format!("bench:rl:{}:", std::process::id());
    let redis = aragora::redis_client::RedisHandle::new(&url).unwrap();
    let redis = Arc::new(RedisLimiter::new(redis, &prefix, Duration::from_secs(1)));
    if redis.ping().await.is_ok() {
        let redis: Arc<dyn Limiter> = redis;
        decisions(redis.clone(), 2_000, 1).await;
        let (e, l) = decisions(redis.clone(), 20_000, 1).await;
        report("redis, 1 task (sequential)", e, l);
        let (e, l) = decisions(redis.clone(), 100_000, CONCURRENCY).await;
        report(
            &format!("redis, {CONCURRENCY} tasks (one connection)"),
            e,
            l,
        );
    } else {
        println!("redis: not reachable at {url}; skipped");
    }

    println!();
    println!(
        "end to end, GET /api/nope (404 under the default rule), {CONCURRENCY} keep-alive connections"
    );
    println!(
        "{:<34} {:>12} {:>10} {:>10}",
        "case", "req/s", "p50 µs", "p99 µs"
    );
    {
        use tracing_subscriber::layer::SubscriberExt;
        let subscriber = tracing_subscriber::registry()
            .with(tracing_subscriber::EnvFilter::new("info"))
            .with(aragora::telemetry::logging::JsonLogLayer::with_writer(
                std::io::sink as fn() -> std::io::Sink,
            ));
        tracing::subscriber::set_global_default(subscriber).unwrap();
    }
    let (on, on_token, _d1) = app(false).await;
    let (off, off_token, _d2) = app(true).await;
    for round in 0..2 {
        for (name, addr) in [
            ("limiter on (memory)", on),
            ("ARAGORA_RATE_LIMIT_DISABLED=1", off),
        ] {
            let url = format!("http://{addr}/api/nope");
            http_run(&url, 2_000).await;
            let (e, l) = http_run(&url, 20_000).await;
            report(&format!("{name} #{}", round + 1), e, l);
        }
    }
    on_token.cancel();
    off_token.cancel();
}
