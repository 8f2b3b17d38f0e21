//! The request hot path against the framework's limit, measured in one run: a bare axum
//! server answering a fixed health body (the baseline, started by this bench on its own
//! runtime) beside the real `aragora` binary, both driven by `wrk` in alternation.
//!
//! Run: `cargo bench --bench hot_path` (needs `wrk` on PATH: `apt-get install wrk`, and for
//! the Postgres and Redis rows `BENCH_DATABASE_URL=postgres://…` and `BENCH_REDIS_URL=redis://…`).
//! `BENCH_ROUNDS` (3) rounds of `BENCH_SECONDS` (5) per scenario, `wrk -t2 -c50`. Every row is
//! reported as req/s and p99 beside a run of its baseline made just before it, so a noisy
//! machine reads as ratios; the medians of the rounds close the report. Method and recorded
//! numbers: docs/benchmarks.md.
//!
//! Scenarios:
//! - `bare`: the baseline, `GET /api/health/live` on a bare axum router;
//! - `live`: `GET /api/health/live` on aragora (SQLite), JSON request log on at `info`
//!   written to a file;
//! - `health`: `GET /api/health` on SQLite, and on Postgres when `BENCH_DATABASE_URL` is set;
//! - `open`, `api_key`, `jwt`, `service`: `GET /api/ws/stats` on a server with auth on and the
//!   Redis rate limiter (when `BENCH_REDIS_URL` is set), without credentials and with each
//!   kind of credential.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::routing::get;
use serde_json::{Value, json};

mod support;
use support::free_port;

/// The server under test: this build's binary, or `BENCH_ARAGORA_BIN` (e.g. an older build,
/// for a before/after comparison against the same baseline).
fn server_binary() -> String {
    std::env::var("BENCH_ARAGORA_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_aragora").to_owned())
}
const JWT_SECRET: &str = "hot-path-bench-secret-0123456789abcdef";
const SERVICE_TOKEN: &str = "hot-path-bench-service-token";
const PASSWORD: &str = "correct horse battery staple";

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start(dir: &Path, name: &str, env: &[(&str, String)]) -> Server {
    let (api, ws) = (free_port(), free_port());
    let work = dir.join(name);
    std::fs::create_dir_all(&work).unwrap();
    let log = std::fs::File::create(work.join("stdout.log")).unwrap();
    let mut cmd = Command::new(server_binary());
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("ARAGORA_DATA_DIR", work.join("data"))
        .env("ARAGORA_LOCK_DIR", &work)
        .env("ARAGORA_API_PORT", api.to_string())
        .env("ARAGORA_WS_PORT", ws.to_string())
        .env("ARAGORA_LOG_LEVEL", "info")
        .env("ARAGORA_RATE_LIMIT_RPM", "1000000");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd
        .arg("serve")
        .stdout(Stdio::from(log))
        .stderr(Stdio::null())
        .spawn()
        .expect("start aragora");
    let server = Server {
        child,
        base: format!("http://127.0.0.1:{api}"),
    };
    let client = reqwest::Client::new();
    for _ in 0..300 {
        if let Ok(r) = client
            .get(format!("{}/api/health/live", server.base))
            .send()
            .await
            && r.status().is_success()
        {
            return server;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("aragora ({name}) did not start; see {}", work.display());
}

/// One wrk run: (req/s, p99 ms, non-2xx responses).
fn wrk(url: &str, header: Option<&str>, seconds: u64) -> (f64, f64, u64) {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t2", "-c50", &format!("-d{seconds}s"), "--latency"]);
    if let Some(h) = header {
        cmd.args(["-H", h]);
    }
    let out = cmd
        .arg(url)
        .output()
        .expect("run wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("wrk printed no rate:\n{text}"));
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map_or(f64::NAN, |v| parse_latency(v.trim()));
    let non_2xx = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    (rps, p99, non_2xx)
}

/// wrk's latency: `812.00us`, `1.23ms`, `1.02s`, in milliseconds.
fn parse_latency(v: &str) -> f64 {
    let split = v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len());
    let (n, unit) = v.split_at(split);
    let n: f64 = n.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        _ => f64::NAN,
    }
}

fn bare_router() -> Router {
    Router::new().route(
        "/api/health/live",
        get(|| async { Json(json!({"status": "alive"})) }),
    )
}

async fn bare_baseline() -> String {
    let app = bare_router();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// Register an account, log in: (access token, API key).
async fn credentials(base: &str, email: &str) -> (String, String) {
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{base}/api/auth/register"))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "register: {}", r.status());
    let v: Value = client
        .post(format!("{base}/api/auth/login"))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let access = v["access_token"].as_str().expect("access token").to_owned();
    let v: Value = client
        .post(format!("{base}/api/auth/api-key"))
        .bearer_auth(&access)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = v["api_key"].as_str().expect("api key").to_owned();
    (access, key)
}

struct Row {
    name: &'static str,
    url: String,
    header: Option<String>,
    /// The row this one is compared with (its ratio and p99 difference).
    against: &'static str,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    // BENCH_BARE_SERVE=PORT: serve only the baseline, on that port, until killed (to profile
    // it, e.g. under callgrind, the same way as the server).
    if let Ok(port) = std::env::var("BENCH_BARE_SERVE") {
        let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}"))
            .await
            .unwrap();
        axum::serve(listener, bare_router()).await.unwrap();
        return;
    }
    // The HTTP client of the set-up calls (registration, login) needs rustls' provider.
    aragora::agents::http::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let bare = bare_baseline().await;
    let sqlite = start(dir.path(), "sqlite", &[]).await;

    let mut rows = vec![
        Row {
            name: "bare",
            url: format!("{bare}/api/health/live"),
            header: None,
            against: "bare",
        },
        Row {
            name: "live",
            url: format!("{}/api/health/live", sqlite.base),
            header: None,
            against: "bare",
        },
        Row {
            name: "health (sqlite)",
            url: format!("{}/api/health", sqlite.base),
            header: None,
            against: "bare",
        },
    ];
    let mut servers = vec![sqlite];
    let pg_base = std::env::var("BENCH_DATABASE_URL").ok();
    let mut pg_schema = None;
    if let Some(base) = &pg_base {
        let (schema, url) = support::fresh_schema(base).await;
        pg_schema = Some(schema);
        let pg = start(dir.path(), "postgres", &[("ARAGORA_DATABASE_URL", url)]).await;
        rows.push(Row {
            name: "health (postgres)",
            url: format!("{}/api/health", pg.base),
            header: None,
            against: "bare",
        });
        servers.push(pg);
    }
    let mut auth_env = vec![
        ("ARAGORA_JWT_SECRET", JWT_SECRET.to_owned()),
        ("ARAGORA_API_TOKEN", SERVICE_TOKEN.to_owned()),
        ("ARAGORA_REGISTRATION_ENABLED", "1".to_owned()),
    ];
    let redis = std::env::var("BENCH_REDIS_URL").ok();
    if let Some(url) = &redis {
        auth_env.push(("ARAGORA_REDIS_URL", url.clone()));
        // Each run's own keys: the limiter's buckets start empty.
        auth_env.push((
            "ARAGORA_RATE_LIMIT_PREFIX",
            format!("bench-{}:", uuid::Uuid::new_v4().simple()),
        ));
    }
    let authed = start(dir.path(), "auth", &auth_env).await;
    let (access, _) = credentials(&authed.base, "jwt@example.com").await;
    let (_, key) = credentials(&authed.base, "key@example.com").await;
    let route = format!("{}/api/ws/stats", authed.base);
    rows.extend([
        Row {
            name: "open",
            url: route.clone(),
            header: None,
            against: "open",
        },
        Row {
            name: "api_key",
            url: route.clone(),
            header: Some(format!("X-API-Key: {key}")),
            against: "open",
        },
        Row {
            name: "jwt",
            url: route.clone(),
            header: Some(format!("Authorization: Bearer {access}")),
            against: "open",
        },
        Row {
            name: "service",
            url: route,
            header: Some(format!("Authorization: Bearer {SERVICE_TOKEN}")),
            against: "open",
        },
    ]);
    servers.push(authed);

    println!(
        "aragora hot_path bench: {}; wrk -t2 -c50 -d{seconds}s, {rounds} rounds; redis limiter: {}",
        server_binary(),
        if redis.is_some() {
            "on"
        } else {
            "off (in memory)"
        }
    );
    // Warm every route once (connections, caches, the JIT-less world's page faults).
    for row in &rows {
        wrk(&row.url, row.header.as_deref(), 1);
    }
    // Each row runs right after a fresh run of the row it is compared with, and its ratio
    // is to that run: on a shared machine the load drifts within a round, and a baseline
    // measured a minute earlier can be a different machine.
    let mut ratios: Vec<(&str, Vec<f64>)> = Vec::new();
    for round in 1..=rounds {
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        println!(
            "\nround {round} (load {})",
            load.split_whitespace().next().unwrap_or("?")
        );
        println!(
            "{:<18} {:>10} {:>9} {:>8} {:>14} {:>12} {:>10}",
            "scenario", "req/s", "p99 ms", "non-2xx", "baseline req/s", "× baseline", "Δp99 ms"
        );
        for row in rows.iter().filter(|r| r.name != r.against) {
            let baseline = rows
                .iter()
                .find(|r| r.name == row.against)
                .expect("every row's baseline is a row");
            let (base_rps, base_p99, _) = wrk(&baseline.url, baseline.header.as_deref(), seconds);
            let (rps, p99, non_2xx) = wrk(&row.url, row.header.as_deref(), seconds);
            println!(
                "{:<18} {:>10.0} {:>9.2} {:>8} {:>14.0} {:>12.2} {:>+10.2}",
                row.name,
                rps,
                p99,
                non_2xx,
                base_rps,
                rps / base_rps,
                p99 - base_p99
            );
            match ratios.iter_mut().find(|(name, _)| *name == row.name) {
                Some((_, list)) => list.push(rps / base_rps),
                None => ratios.push((row.name, vec![rps / base_rps])),
            }
        }
    }
    println!("\nmedian × baseline over {rounds} rounds");
    for (name, mut list) in ratios {
        list.sort_by(f64::total_cmp);
        let median = support::pct(&list, 0.5);
        println!(
            "{name:<18} {median:>6.2}  (range {:.2}–{:.2})",
            list[0],
            list[list.len() - 1]
        );
    }
    drop(servers);
    if let (Some(base), Some(schema)) = (&pg_base, &pg_schema) {
        support::drop_schema(base, schema).await;
    }
}
