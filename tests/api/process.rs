//! The real `aragora` binary: start-up, signals, lock file, configuration errors, the
//! `config`, `migrate` and `health` subcommands, and the log files.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::free_port;

const BIN: &str = env!("CARGO_BIN_EXE_aragora");

pub struct Server {
    pub child: Child,
    pub api_port: u16,
    pub ws_port: u16,
    /// stdout/stderr go to files: a pipe nobody drains would fill up and block the server.
    pub out: std::path::PathBuf,
    pub err: std::path::PathBuf,
}

impl Server {
    pub fn start(dir: &Path, extra_env: &[(&str, &str)]) -> Server {
        let (api_port, ws_port) = (free_port(), free_port());
        let out = dir.join(format!("stdout-{api_port}.log"));
        let err = dir.join(format!("stderr-{api_port}.log"));
        let child = command(dir, extra_env)
            .args([
                "serve",
                "--api-port",
                &api_port.to_string(),
                "--ws-port",
                &ws_port.to_string(),
            ])
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .expect("binary starts");
        Server {
            child,
            api_port,
            ws_port,
            out,
            err,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.api_port)
    }

    pub async fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(r) = crate::helpers::http()
                .get(self.url("/api/health"))
                .send()
                .await
                && r.status() == 200
            {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                let said = std::fs::read_to_string(&self.err).unwrap_or_default();
                let from = said.char_indices().rev().nth(2000).map_or(0, |(i, _)| i);
                let tail = &said[from..];
                panic!("server exited early with {status}; its stderr ends:\n{tail}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("server did not become healthy");
    }

    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    /// Wait for exit; returns (exit code, stdout, stderr).
    pub fn wait_exit(mut self, limit: Duration) -> (i32, String, String) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let out = std::fs::read_to_string(&self.out).unwrap_or_default();
                let err = std::fs::read_to_string(&self.err).unwrap_or_default();
                return (status.code().unwrap_or(-1), out, err);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("server did not exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A command with a clean, test-local environment (no inherited ARAGORA_* settings).
pub fn command(dir: &Path, extra_env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("ARAGORA_DATA_DIR", dir.join("data"))
        .env("ARAGORA_LOCK_DIR", dir)
        .env("ARAGORA_SHUTDOWN_TIMEOUT_SECONDS", "10")
        // Polling loops must never meet a rate limit (tests/api/ratelimit.rs covers them).
        .env("ARAGORA_RATE_LIMIT_DISABLED", "1");
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd
}

#[tokio::test]
async fn sigterm_drains_closes_websockets_with_1001_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    server.wait_healthy().await;
    let lock = dir.path().join(format!("aragora_{}.lock", server.api_port));
    assert_eq!(
        std::fs::read_to_string(&lock).unwrap().trim(),
        server.child.id().to_string()
    );
    let r = crate::helpers::http()
        .get(server.url("/api/health"))
        .header("X-Correlation-ID", "corr-proc-test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/ws", server.ws_port))
            .await
            .unwrap();
    ws.next().await.unwrap().unwrap(); // connection_info

    let started = Instant::now();
    server.signal(Signal::SIGTERM);
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Close(frame))) => break frame.unwrap(),
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(u16::from(close.code), 1001);
    drop(ws);
    let (code, stdout, _) = server.wait_exit(Duration::from_secs(12));
    assert_eq!(code, 0, "graceful shutdown exits 0");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!lock.exists(), "lock file removed on exit");

    // Logs: JSON lines; the request line has the correlation id and duration_ms=.
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let request = lines
        .iter()
        .find(|l| l["correlation_id"] == "corr-proc-test")
        .expect("request line with the caller's correlation id");
    assert!(
        request["message"]
            .as_str()
            .unwrap()
            .contains("duration_ms="),
        "{request}"
    );
    assert_eq!(request["route"], "/api/health");
    assert_eq!(request["status"], 200);
    assert!(request["timestamp"].as_str().unwrap().ends_with('Z'));
    assert!(lines.iter().any(|l| {
        l["message"]
            .as_str()
            .unwrap_or("")
            .contains("shutdown complete")
    }));
}

#[tokio::test]
async fn a_second_server_on_the_same_port_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = Server::start(dir.path(), &[]);
    first.wait_healthy().await;
    let second = command(dir.path(), &[])
        .args([
            "serve",
            "--api-port",
            &first.api_port.to_string(),
            "--ws-port",
            &free_port().to_string(),
        ])
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains(&format!(
            "another aragora server (pid {})",
            first.child.id()
        )),
        "{stderr}"
    );
    // The first one is unharmed and still holds its lock.
    assert_eq!(
        crate::helpers::http()
            .get(first.url("/api/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert!(
        dir.path()
            .join(format!("aragora_{}.lock", first.api_port))
            .exists()
    );
}

#[tokio::test]
async fn a_stale_lock_from_a_dead_process_is_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let api_port = free_port();
    std::fs::write(
        dir.path().join(format!("aragora_{api_port}.lock")),
        "999999999\n",
    )
    .unwrap();
    let child = command(dir.path(), &[])
        .args([
            "serve",
            "--api-port",
            &api_port.to_string(),
            "--ws-port",
            &free_port().to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut server = Server {
        child,
        api_port,
        ws_port: 0,
        out: dir.path().join("unused.out"),
        err: dir.path().join("unused.err"),
    };
    server.wait_healthy().await;
    let lock =
        std::fs::read_to_string(dir.path().join(format!("aragora_{api_port}.lock"))).unwrap();
    assert_eq!(lock.trim(), server.child.id().to_string());
}

#[tokio::test]
async fn bad_configuration_stops_the_start_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "ARAGORA_DB_POOL_SIZE",
            "lots",
            "ARAGORA_DB_POOL_SIZE=\"lots\" is not valid: expected a whole number from 1 to 1000",
        ),
        (
            "ARAGORA_RATE_LIMIT_WHITELIST",
            "10.0.0.0/33",
            "ARAGORA_RATE_LIMIT_WHITELIST=\"10.0.0.0/33\"",
        ),
        ("ARAGORA_ENV", "production", "ARAGORA_JWT_SECRET"),
        (
            "SUPABASE_URL",
            "https://abc.supabase.co",
            "Supabase is Postgres",
        ),
    ];
    for (var, value, expected) in cases {
        let out = command(dir.path(), &[(var, value)])
            .args(["serve", "--api-port", "0", "--ws-port", "0"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(expected), "{var}: {stderr}");
    }
    // Nothing was half-started: no database, no lock.
    assert!(!dir.path().join("data").exists());
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
}

#[tokio::test]
async fn config_command_shows_sources_and_redacts_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("aragora.toml");
    std::fs::write(&file, "rate_limit_rpm = 300\n").unwrap();
    let out = command(
        dir.path(),
        &[
            ("ARAGORA_JWT_SECRET", "s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t"),
            ("ARAGORA_API_TOKEN", "tok-0123456789abcdef"),
            (
                "ARAGORA_DATABASE_URL",
                "postgres://app:hunter2@db.internal:5432/aragora",
            ),
            ("ARAGORA_REDIS_URL", "redis://:redispw@cache:6379/0"),
        ],
    )
    .args(["config", "--config", file.to_str().unwrap()])
    .output()
    .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for secret in ["s3cr3t", "tok-0123", "hunter2", "redispw"] {
        assert!(!text.contains(secret), "{secret} leaked:\n{text}");
    }
    assert!(text.contains("rate_limit_rpm = \"300\"  # "), "{text}");
    assert!(text.contains("db.internal:5432/aragora"), "{text}");
    assert!(
        text.contains("jwt_secret = \"[redacted]\"  # ARAGORA_JWT_SECRET"),
        "{text}"
    );
}

#[tokio::test]
async fn migrate_command_creates_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    let out = command(dir.path(), &[]).arg("migrate").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("data/aragora.db").exists());
    // Idempotent.
    let again = command(dir.path(), &[]).arg("migrate").output().unwrap();
    assert!(again.status.success());
}

#[tokio::test]
async fn health_command_exit_codes_follow_the_runbook_script() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    server.wait_healthy().await;
    let healthy = command(dir.path(), &[])
        .args(["health", "--url", &server.url("/api/health")])
        .output()
        .unwrap();
    assert_eq!(healthy.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&healthy.stdout).contains("OK"));

    let unreachable = command(dir.path(), &[])
        .args([
            "health",
            "--url",
            &format!("http://127.0.0.1:{}/api/health", free_port()),
        ])
        .output()
        .unwrap();
    assert_eq!(unreachable.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unreachable.stdout).contains("CRITICAL"));

    // Redis configured but dead: degraded → 1.
    let dir2 = tempfile::tempdir().unwrap();
    let dead_redis = format!("redis://127.0.0.1:{}/0", free_port());
    let mut degraded = Server::start(dir2.path(), &[("ARAGORA_REDIS_URL", dead_redis.as_str())]);
    degraded.wait_healthy().await;
    let out = command(dir2.path(), &[])
        .args(["health", "--url", &degraded.url("/api/health")])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test]
async fn log_dir_splits_api_and_websocket_logs() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let mut server = Server::start(dir.path(), &[("ARAGORA_LOG_DIR", logs.to_str().unwrap())]);
    server.wait_healthy().await;
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/ws", server.ws_port))
            .await
            .unwrap();
    ws.next().await.unwrap().unwrap();
    drop(ws);
    server.signal(Signal::SIGTERM);
    let (code, stdout, _) = server.wait_exit(Duration::from_secs(12));
    assert_eq!(code, 0);
    assert!(
        stdout.trim().is_empty(),
        "with a log dir nothing goes to stdout: {stdout}"
    );
    let api = std::fs::read_to_string(logs.join("api.log")).unwrap();
    assert!(
        api.contains("/api/health") && api.contains("duration_ms="),
        "{api}"
    );
    let websocket = std::fs::read_to_string(logs.join("websocket.log")).unwrap();
    assert!(websocket.contains("websocket connected"), "{websocket}");
    assert!(!api.contains("websocket connected"));
    for line in api.lines().chain(websocket.lines()) {
        serde_json::from_str::<serde_json::Value>(line).unwrap();
    }
}

#[tokio::test]
async fn kill_9_loses_no_accepted_debate() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("ARAGORA_INSTANCE_ID", "test-instance"),
        ("ARAGORA_MAX_CONCURRENT_DEBATES", "1"),
    ];
    let mut server = Server::start(dir.path(), &env);
    server.wait_healthy().await;
    let client = crate::helpers::http();
    let post = |body: serde_json::Value| client.post(server.url("/api/debates")).json(&body).send();
    let running: serde_json::Value = post(
        serde_json::json!({"task": "slow", "agents": ["demo:1000", "demo:1000"], "rounds": 2, "min_rounds": 2}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let running = running["debate_id"].as_str().unwrap().to_owned();
    let queued: serde_json::Value =
        post(serde_json::json!({"task": "fast", "agents": ["demo", "demo"], "rounds": 1}))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    let queued = queued["debate_id"].as_str().unwrap().to_owned();
    let get = |id: String, url: String| {
        let c = client.clone();
        async move {
            c.get(format!("{url}/api/debates/{id}"))
                .send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };
    let base = format!("http://127.0.0.1:{}", server.api_port);
    // Up to 10 s: a loaded 2-core machine (the whole suite at once) can be slow to start it.
    for _ in 0..500 {
        if get(running.clone(), base.clone()).await["status"] == "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Wait until the debate has written part of round 1 (queued, start, round_start…).
    let mut seq_before = 0;
    for _ in 0..200 {
        let events: serde_json::Value = client
            .get(format!("{base}/api/debates/{running}/events"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        seq_before = events["last_seq"].as_i64().unwrap();
        if seq_before >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(seq_before >= 3);

    server.signal(Signal::SIGKILL);
    let _ = server.wait_exit(Duration::from_secs(5));

    // Same data dir and instance id; the stale lock file is taken over.
    let mut again = Server::start(dir.path(), &env);
    again.wait_healthy().await;
    let base = format!("http://127.0.0.1:{}", again.api_port);
    let mut resumed = serde_json::Value::Null;
    let mut finished = serde_json::Value::Null;
    for _ in 0..600 {
        resumed = get(running.clone(), base.clone()).await;
        finished = get(queued.clone(), base.clone()).await;
        let done = |d: &serde_json::Value| {
            matches!(d["status"].as_str(), Some("completed" | "no_consensus"))
        };
        if done(&resumed) && done(&finished) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        matches!(
            resumed["status"].as_str(),
            Some("completed" | "no_consensus")
        ),
        "the killed debate was resumed and finished: {resumed}"
    );
    assert!(
        matches!(
            finished["status"].as_str(),
            Some("completed" | "no_consensus")
        ),
        "the queued debate ran after the restart: {finished}"
    );
    // The transcript written before the crash is all there, continued after one seam.
    let events: serde_json::Value = client
        .get(format!("{base}/api/debates/{running}/events"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let list = events["events"].as_array().unwrap();
    for (i, e) in list.iter().enumerate() {
        assert_eq!(e["seq"], i as i64 + 1);
    }
    let seam: Vec<&serde_json::Value> = list
        .iter()
        .filter(|e| e["type"] == "debate_resumed")
        .collect();
    assert_eq!(seam.len(), 1, "{list:?}");
    // Same instance id, killed: a crash; resumed at once (not after the lease).
    assert_eq!(seam[0]["data"]["reason"], "crash");
    assert!(seam[0]["data"]["from_seq"].as_i64().unwrap() >= seq_before);
    assert_eq!(list.iter().filter(|e| e["type"] == "debate_end").count(), 1);
    assert_eq!(list.last().unwrap()["type"], "debate_end");
}

async fn ws_connect(
    port: u16,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws"))
        .await
        .unwrap();
    ws.next().await.unwrap().unwrap(); // connection_info
    ws
}

async fn ws_send(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    v: serde_json::Value,
) {
    use futures::SinkExt;
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

#[tokio::test]
async fn a_client_on_instance_b_sees_a_debate_running_on_instance_a() {
    // Two `aragora serve` processes sharing one Postgres schema and one Redis channel.
    let (schema, db_url) = crate::helpers::fresh_postgres_schema().await;
    let channel = format!("aragora:test:{schema}");
    let redis = crate::helpers::redis_url();
    let shared = |id: &'static str| {
        vec![
            ("ARAGORA_DATABASE_URL", db_url.clone()),
            ("ARAGORA_REDIS_URL", redis.clone()),
            ("ARAGORA_EVENT_BUS_CHANNEL", channel.clone()),
            ("ARAGORA_INSTANCE_ID", id.to_owned()),
        ]
    };
    let env_a = shared("instance-a");
    let env_b = shared("instance-b");

    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let refs_a: Vec<(&str, &str)> = env_a.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let refs_b: Vec<(&str, &str)> = env_b.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut a = Server::start(dir_a.path(), &refs_a);
    let mut b = Server::start(dir_b.path(), &refs_b);
    a.wait_healthy().await;
    b.wait_healthy().await;
    let stats: serde_json::Value = crate::helpers::http()
        .get(b.url("/api/ws/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["event_bus"]["backend"], "redis");

    // The debate runs on A; it is slow enough that B's client joins while it is live.
    let created: serde_json::Value = crate::helpers::http()
        .post(a.url("/api/debates"))
        .json(&serde_json::json!({"task": "cross-instance", "agents": ["demo:40", "demo:40", "demo:40"], "rounds": 3, "min_rounds": 3}))
        .send().await.unwrap().json().await.unwrap();
    let id = created["debate_id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut ws = ws_connect(b.ws_port).await;
    ws_send(
        &mut ws,
        serde_json::json!({"type": "subscribe", "debate_id": id, "since": 0}),
    )
    .await;
    let mut seqs = Vec::new();
    let mut live_deltas = 0;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let Message::Text(t) = msg else { continue };
        let v: serde_json::Value = serde_json::from_str(&t).unwrap();
        if v["type"] == "token_delta" {
            live_deltas += 1;
        }
        if let Some(seq) = v["seq"].as_i64() {
            seqs.push(seq);
            if v["type"] == "debate_end" {
                break;
            }
        }
    }
    assert_eq!(
        seqs,
        (1..=*seqs.last().unwrap()).collect::<Vec<_>>(),
        "complete and in order"
    );
    assert!(seqs.len() > 30);
    assert!(
        live_deltas > 0,
        "token deltas from A reached B live through Redis"
    );
    let events: serde_json::Value = crate::helpers::http()
        .get(a.url(&format!("/api/debates/{id}/events?limit=1000")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(events["last_seq"], *seqs.last().unwrap());
}

#[tokio::test]
async fn sigusr1_closes_websockets_with_1012_while_rest_and_debates_carry_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    server.wait_healthy().await;
    let client = crate::helpers::http();
    let created: serde_json::Value = client
        .post(server.url("/api/debates"))
        .json(&serde_json::json!({"task": "t", "agents": ["demo:100", "demo:100"], "rounds": 2, "min_rounds": 2}))
        .send().await.unwrap().json().await.unwrap();
    let id = created["debate_id"].as_str().unwrap().to_owned();
    let mut ws = ws_connect(server.ws_port).await;
    server.signal(Signal::SIGUSR1);
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Close(frame))) => break frame.unwrap(),
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(u16::from(close.code), 1012);
    assert_eq!(
        client
            .get(server.url("/api/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // Reconnecting works and the debate finished normally.
    let _again = ws_connect(server.ws_port).await;
    let mut status = serde_json::Value::Null;
    for _ in 0..100 {
        let d: serde_json::Value = client
            .get(server.url(&format!("/api/debates/{id}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        status = d["status"].clone();
        if status != "running" && status != "queued" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        matches!(status.as_str(), Some("completed" | "no_consensus")),
        "{status}"
    );
    server.signal(Signal::SIGTERM);
    let (code, _, _) = server.wait_exit(Duration::from_secs(12));
    assert_eq!(code, 0);
}

#[tokio::test]
async fn watch_survives_a_server_restart_without_gap_or_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("ARAGORA_INSTANCE_ID", "watch-test")];
    let mut server = Server::start(dir.path(), &env);
    server.wait_healthy().await;
    let (api_port, ws_port) = (server.api_port, server.ws_port);
    let created: serde_json::Value = crate::helpers::http()
        .post(server.url("/api/debates"))
        .json(&serde_json::json!({"task": "watched", "agents": ["demo:150", "demo:150"], "rounds": 4, "min_rounds": 4}))
        .send().await.unwrap().json().await.unwrap();
    let id = created["debate_id"].as_str().unwrap().to_owned();

    let out_path = dir.path().join("watch.out");
    let mut watch = Command::new(BIN)
        .args([
            "watch",
            &id,
            "--server",
            &format!("ws://127.0.0.1:{ws_port}/ws"),
        ])
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(dir.path().join("watch.err")).unwrap())
        .spawn()
        .unwrap();
    // Let it print some events, then restart the server on the same ports.
    for _ in 0..100 {
        if std::fs::read_to_string(&out_path)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with('#'))
            .count()
            >= 5
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.signal(Signal::SIGTERM);
    let (code, _, _) = server.wait_exit(Duration::from_secs(12));
    assert_eq!(code, 0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let out = dir.path().join("second.out");
    let child = command(dir.path(), &env)
        .args([
            "serve",
            "--api-port",
            &api_port.to_string(),
            "--ws-port",
            &ws_port.to_string(),
        ])
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(dir.path().join("second.err")).unwrap())
        .spawn()
        .unwrap();
    let mut again = Server {
        child,
        api_port,
        ws_port,
        out,
        err: dir.path().join("second.err"),
    };
    again.wait_healthy().await;

    // The interrupted debate is closed on restart; watch prints through debate_end and exits.
    let mut exited = None;
    for _ in 0..300 {
        if let Some(status) = watch.try_wait().unwrap() {
            exited = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = exited.unwrap_or_else(|| {
        let _ = watch.kill();
        panic!(
            "watch did not finish: {}",
            std::fs::read_to_string(&out_path).unwrap_or_default()
        )
    });
    assert!(status.success());
    let printed = std::fs::read_to_string(&out_path).unwrap();
    let seqs: Vec<i64> = printed
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    let events: serde_json::Value = crate::helpers::http()
        .get(again.url(&format!("/api/debates/{id}/events?limit=1000")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let last = events["last_seq"].as_i64().unwrap();
    assert_eq!(
        seqs,
        (1..=last).collect::<Vec<_>>(),
        "no gap, no duplicate:\n{printed}"
    );
    let err = std::fs::read_to_string(dir.path().join("watch.err")).unwrap();
    assert!(
        err.contains("resuming after seq"),
        "watch reconnected: {err}"
    );
}
