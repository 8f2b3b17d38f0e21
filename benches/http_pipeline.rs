//! End-to-end cost of the HTTP pipeline (correlation id, timeout, JSON errors, request log
//! line, metrics) on a real socket, with an in-process server on the embedded SQLite default.
//!
//! Run: `cargo bench --bench http_pipeline` (release build). Prints requests/second and
//! latency percentiles per route, and the server process's resident memory before and after.
//! Method and recorded numbers: docs/benchmarks.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aragora::app::Application;
use aragora::config::{Config, Flags};
use aragora::telemetry::logging::JsonLogLayer;
use aragora::telemetry::resident_memory_bytes;

const CONCURRENCY: usize = 32;
const REQUESTS: usize = 20_000;
const WARMUP: usize = 1_000;

#[tokio::main]
async fn main() {
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
        // One client sends every request: keep it under its limit so /api/nope stays a 404.
        "ARAGORA_RATE_LIMIT_RPM" => Some("1000000".into()),
        _ => None,
    })
    .unwrap();
    // Request log lines are part of the pipeline's cost: format them, write them nowhere.
    {
        use tracing_subscriber::layer::SubscriberExt;
        let subscriber = tracing_subscriber::registry()
            .with(tracing_subscriber::EnvFilter::new("info"))
            .with(JsonLogLayer::with_writer(
                std::io::sink as fn() -> std::io::Sink,
            ));
        tracing::subscriber::set_global_default(subscriber).unwrap();
    }
    let app = Application::build(config).await.unwrap();
    let addr = app.api_addr();
    let shutdown = app.shutdown_token();
    let server = tokio::spawn(app.run());
    let rss_idle = resident_memory_bytes();

    println!(
        "aragora http_pipeline bench: {REQUESTS} requests per route, {CONCURRENCY} keep-alive connections"
    );
    println!(
        "{:<22} {:>10} {:>10} {:>10} {:>10}",
        "route", "req/s", "p50 µs", "p99 µs", "max µs"
    );
    for route in [
        "/api/health/live",
        "/api/health",
        "/api/nope",
        "/admin",
        "/admin/app.js",
    ] {
        let url = format!("http://{addr}{route}");
        run(&url, WARMUP).await;
        let (elapsed, mut latencies) = run(&url, REQUESTS).await;
        latencies.sort_unstable();
        let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p) as usize].as_micros();
        println!(
            "{:<22} {:>10.0} {:>10} {:>10} {:>10}",
            route,
            REQUESTS as f64 / elapsed.as_secs_f64(),
            pct(0.50),
            pct(0.99),
            latencies.last().unwrap().as_micros()
        );
    }
    let weight: usize = aragora::admin::ASSETS.iter().map(|a| a.bytes.len()).sum();
    println!(
        "admin console: {} files, {:.1} KiB uncompressed ({})",
        aragora::admin::ASSETS.len(),
        weight as f64 / 1024.0,
        aragora::admin::ASSETS
            .iter()
            .map(|a| format!("{} {:.1} KiB", a.name, a.bytes.len() as f64 / 1024.0))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let rss_after = resident_memory_bytes();
    println!(
        "resident memory (server and client in one process): idle {:.1} MiB, after load {:.1} MiB",
        rss_idle as f64 / 1048576.0,
        rss_after as f64 / 1048576.0
    );
    shutdown.cancel();
    server.await.unwrap().unwrap();
}

/// `n` GETs spread over CONCURRENCY workers, each with its own keep-alive connection.
async fn run(url: &str, n: usize) -> (Duration, Vec<Duration>) {
    let url = Arc::new(url.to_owned());
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..CONCURRENCY {
        let url = url.clone();
        let share = n / CONCURRENCY + usize::from(w < n % CONCURRENCY);
        workers.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .unwrap();
            let mut latencies = Vec::with_capacity(share);
            for _ in 0..share {
                let t = Instant::now();
                let response = client.get(url.as_str()).send().await.unwrap();
                let _ = response.bytes().await.unwrap();
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut all = Vec::with_capacity(n);
    for w in workers {
        all.extend(w.await.unwrap());
    }
    (started.elapsed(), all)
}
