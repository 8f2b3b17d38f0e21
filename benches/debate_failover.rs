//! Failover of running debates between two real `aragora serve` processes on one Postgres:
//! how long after instance A stops does instance B write the first (and the last)
//! `debate_resumed` of A's debates?
//!
//! - `kill -9` of A: B can only take over once A's lease has expired, so the expected time is
//!   the lease (ARAGORA_DEBATE_LEASE_SECONDS) plus up to one claim poll; measured with two
//!   lease lengths to show the relation.
//! - SIGTERM of A: A lets its agent calls in flight finish, releases its leases and exits; B
//!   resumes at its next claim poll. Expected: the longest call in flight + one poll.
//!
//! Method: A runs `DEBATES` debates of two `demo:1000` seats (each call 1 s); once each has
//! recorded its first proposals A is stopped; B's `/api/debates/{id}/events` is polled every
//! 20 ms from the moment of the signal. Every figure is a median of `REPEATS` runs, printed
//! beside the lease and the poll interval of the same run. Run: `cargo bench --bench
//! debate_failover` (Postgres from ARAGORA_TEST_DATABASE_URL, default the local test
//! database). Numbers and reading: docs/benchmarks.md.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

mod support;
use support::free_port;

const BIN: &str = env!("CARGO_BIN_EXE_aragora");
const DEBATES: usize = 5;
const REPEATS: usize = 3;
const POLL_MS: u64 = 200;

fn pg_url() -> String {
    std::env::var("ARAGORA_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

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

fn start(dir: &std::path::Path, db: &str, instance: &str, lease: u64) -> Server {
    let (api, ws) = (free_port(), free_port());
    let child = Command::new(BIN)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("ARAGORA_DATA_DIR", dir.join(instance))
        .env("ARAGORA_LOCK_DIR", dir)
        .env("ARAGORA_DATABASE_URL", db)
        .env("ARAGORA_INSTANCE_ID", instance)
        .env("ARAGORA_DEBATE_LEASE_SECONDS", lease.to_string())
        .env("ARAGORA_DEBATE_CLAIM_POLL_MS", POLL_MS.to_string())
        .env("ARAGORA_RATE_LIMIT_DISABLED", "1")
        .env("ARAGORA_LOG_LEVEL", "warn")
        .args([
            "serve",
            "--api-port",
            &api.to_string(),
            "--ws-port",
            &ws.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("aragora starts");
    Server {
        child,
        base: format!("http://127.0.0.1:{api}"),
    }
}

async fn healthy(client: &reqwest::Client, s: &Server) {
    for _ in 0..400 {
        if let Ok(r) = client
            .get(format!("{}/api/health/live", s.base))
            .send()
            .await
            && r.status().is_success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("server did not start");
}

async fn get(client: &reqwest::Client, url: String) -> Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

/// Seconds from the signal to B's first and last `debate_resumed` of A's debates.
async fn one_run(client: &reqwest::Client, signal: Signal, lease: u64) -> (f64, f64) {
    let (schema, db) = support::fresh_schema(&pg_url()).await;
    let dir = tempfile::tempdir().unwrap();
    let a = start(dir.path(), &db, "bench-a", lease);
    healthy(client, &a).await;
    let mut ids = Vec::new();
    for _ in 0..DEBATES {
        let r: Value = client
            .post(format!("{}/api/debates", a.base))
            .json(
                &json!({"task": "failover", "agents": ["demo:1000", "demo:1000"],
                          "rounds": 3, "min_rounds": 3}),
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.push(r["debate_id"].as_str().unwrap().to_owned());
    }
    // B is up before A stops, so only the takeover is measured.
    let b = start(dir.path(), &db, "bench-b", lease);
    healthy(client, &b).await;
    for id in &ids {
        loop {
            let e = get(
                client,
                format!("{}/api/debates/{id}/events?limit=1000", a.base),
            )
            .await;
            if e["events"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["type"] == "agent_message")
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let stopped = Instant::now();
    kill(Pid::from_raw(a.child.id() as i32), signal).unwrap();
    let mut first = None;
    let mut resumed = vec![false; ids.len()];
    while resumed.iter().any(|r| !r) {
        for (i, id) in ids.iter().enumerate() {
            if resumed[i] {
                continue;
            }
            let e = get(
                client,
                format!("{}/api/debates/{id}/events?limit=1000", b.base),
            )
            .await;
            if e["events"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["type"] == "debate_resumed")
            {
                resumed[i] = true;
                first.get_or_insert(stopped.elapsed());
            }
        }
        assert!(stopped.elapsed() < Duration::from_secs(120), "no takeover");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all = stopped.elapsed();
    drop(a);
    drop(b);
    support::drop_schema(&pg_url(), &schema).await;
    (first.unwrap().as_secs_f64(), all.as_secs_f64())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        aragora::agents::http::install_crypto_provider();
        let client = reqwest::Client::new();
        println!(
            "== failover: {DEBATES} running debates on A (2 × demo:1000), B polling every \
             {POLL_MS} ms; median of {REPEATS} runs =="
        );
        println!(
            "{:<10} {:>8} {:>16} {:>15}",
            "stop", "lease s", "first resumed s", "all resumed s"
        );
        for (signal, label, lease) in [
            (Signal::SIGKILL, "kill -9", 5),
            (Signal::SIGKILL, "kill -9", 10),
            (Signal::SIGTERM, "SIGTERM", 30),
        ] {
            let mut firsts = Vec::new();
            let mut alls = Vec::new();
            for _ in 0..REPEATS {
                let (f, a) = one_run(&client, signal, lease).await;
                firsts.push(f);
                alls.push(a);
            }
            println!(
                "{label:<10} {lease:>8} {:>16.2} {:>15.2}",
                median(firsts),
                median(alls)
            );
        }
    });
}
