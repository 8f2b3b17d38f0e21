//! Rate limiting end to end: headers and 429s, rules, keys, whitelist, the disabled switch,
//! the Redis backend (shared between instances, with fallback to memory while Redis is
//! down), and SIGHUP reload on the real binary.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

use crate::helpers::{TestApp, free_port, http, redis_url, spawn_app_with};

const BIN: &str = env!("CARGO_BIN_EXE_aragora");

fn prefix() -> String {
    format!("test:rl:{}:", uuid::Uuid::new_v4().simple())
}

fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

async fn statuses(app: &TestApp, path: &str, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(app.get(path).await.status().as_u16());
    }
    out
}

#[tokio::test]
async fn memory_backend_counts_down_then_answers_429_with_the_contract_body() {
    // The limited client comes through a trusted proxy, so this test can still read the
    // admin view as another client (127.0.0.1) afterwards.
    let app = spawn_app_with(&[
        ("ARAGORA_RATE_LIMIT_RPM", "3"),
        ("ARAGORA_TRUSTED_PROXIES", "127.0.0.1/32"),
    ])
    .await;
    let client = "203.0.113.50";
    for expected in ["2", "1", "0"] {
        let r = app
            .client
            .get(app.url("/api/rate-limits/config"))
            .header("X-Forwarded-For", client)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "x-ratelimit-limit").as_deref(), Some("3"));
        assert_eq!(
            header(&r, "x-ratelimit-remaining").as_deref(),
            Some(expected)
        );
        let reset: u64 = header(&r, "x-ratelimit-reset").unwrap().parse().unwrap();
        assert!((1..=60).contains(&reset), "reset {reset}");
    }
    // The /api/v1 alias shares the bucket.
    let r = app
        .client
        .get(app.url("/api/v1/rate-limits/config"))
        .header("X-Correlation-ID", "corr-ratelimit01")
        .header("X-Forwarded-For", client)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let retry: u64 = header(&r, "retry-after").unwrap().parse().unwrap();
    assert!((1..=20).contains(&retry), "Retry-After {retry}");
    assert_eq!(header(&r, "x-ratelimit-remaining").as_deref(), Some("0"));
    assert_eq!(
        header(&r, "x-correlation-id").as_deref(),
        Some("corr-ratelimit01")
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "rate_limited");
    assert_eq!(body["correlation_id"], "corr-ratelimit01");
    assert_eq!(body["retry_after"], retry);
    assert_eq!(body["rule"], "default");
    assert!(body["error"].as_str().unwrap().contains("per minute"));

    // Health and metrics are never limited and carry no rate-limit headers.
    for path in [
        "/api/health",
        "/api/health/live",
        "/api/v1/health/ready",
        "/api/metrics",
    ] {
        let r = app
            .client
            .get(app.url(path))
            .header("X-Forwarded-For", client)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert!(header(&r, "x-ratelimit-limit").is_none(), "{path}");
    }
    let metrics = app.get("/api/metrics").await.text().await.unwrap();
    let hits = metrics
        .lines()
        .find(|l| l.starts_with("aragora_rate_limit_hits_total{rule=\"default\"}"))
        .expect("hit counter exported");
    assert!(hits.split(' ').nth(1).unwrap().parse::<f64>().unwrap() >= 1.0);

    // The admin view lists the limited key, masked.
    let admin = json_of(app.get("/api/system/rate-limits").await).await;
    let top = admin["top_limited"].as_array().unwrap();
    assert_eq!(top[0]["key"], "ip:203.0.113.x");
    assert_eq!(top[0]["rule"], "default");
    assert!(top[0]["hits"].as_u64().unwrap() >= 1);
    app.stop().await.unwrap();
}

async fn json_of(r: reqwest::Response) -> Value {
    let status = r.status();
    let text = r.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status}: {text}"))
}

#[tokio::test]
async fn debate_creation_has_its_own_stricter_bucket() {
    let app = spawn_app_with(&[
        ("ARAGORA_RATE_LIMIT_RPM", "100"),
        ("ARAGORA_RATE_LIMIT_DEBATE_RPM", "2"),
    ])
    .await;
    let create = || {
        app.client
            .post(app.url("/api/debates"))
            .json(&serde_json::json!({"task": "Is a hot dog a sandwich?", "rounds": 1}))
            .send()
    };
    for _ in 0..2 {
        let r = create().await.unwrap();
        assert_eq!(r.status(), 202);
        assert_eq!(header(&r, "x-ratelimit-limit").as_deref(), Some("2"));
    }
    let r = create().await.unwrap();
    assert_eq!(r.status(), 429);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["rule"], "debate_create");
    // Reading debates uses the default bucket, which has room.
    let r = app.get("/api/debates").await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-ratelimit-limit").as_deref(), Some("100"));
    let status = json_of(app.get("/api/rate-limits/status").await).await;
    assert_eq!(status["backend"], "memory");
    assert_eq!(status["key"], "ip:127.0.0.1");
    assert_eq!(status["rules"]["debate_create"]["remaining"], 0);
    assert_eq!(status["rules"]["debate_create"]["limit"], 2);
    // In memory a request is counted once it is answered (so a refused one can cost nothing):
    // the GET /api/debates above counted, this status request not yet.
    assert_eq!(status["rules"]["default"]["remaining"], 99);
    assert_eq!(status["rules"]["login"]["remaining"], 10);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn whitelisted_ipv4_clients_are_exempt() {
    let app = spawn_app_with(&[
        ("ARAGORA_RATE_LIMIT_RPM", "1"),
        ("ARAGORA_RATE_LIMIT_WHITELIST", "10.0.0.0/8,127.0.0.0/8"),
    ])
    .await;
    assert_eq!(statuses(&app, "/api/rate-limits/config", 5).await, [200; 5]);
    let r = app.get("/api/rate-limits/status").await;
    assert!(header(&r, "x-ratelimit-limit").is_none());
    let status: Value = r.json().await.unwrap();
    assert_eq!(status["whitelisted"], true);
    let config = json_of(app.get("/api/rate-limits/config").await).await;
    assert_eq!(
        config["whitelist"],
        serde_json::json!(["10.0.0.0/8", "127.0.0.0/8"])
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn ipv6_whitelist_exempts_v6_clients_and_other_v6_clients_are_limited() {
    let exempt = spawn_app_with(&[
        ("ARAGORA_HOST", "::1"),
        ("ARAGORA_RATE_LIMIT_RPM", "1"),
        ("ARAGORA_RATE_LIMIT_WHITELIST", "::1/128"),
    ])
    .await;
    assert!(exempt.api.is_ipv6());
    assert_eq!(statuses(&exempt, "/api/leaderboard", 4).await, [200; 4]);
    exempt.stop().await.unwrap();

    let limited = spawn_app_with(&[
        ("ARAGORA_HOST", "::1"),
        ("ARAGORA_RATE_LIMIT_RPM", "1"),
        ("ARAGORA_RATE_LIMIT_WHITELIST", "fd00::/8"),
    ])
    .await;
    assert_eq!(statuses(&limited, "/api/leaderboard", 2).await, [200, 429]);
    limited.stop().await.unwrap();
}

#[tokio::test]
async fn the_disabled_switch_turns_limits_off() {
    let app = spawn_app_with(&[
        ("ARAGORA_RATE_LIMIT_RPM", "1"),
        ("ARAGORA_RATE_LIMIT_DISABLED", "1"),
    ])
    .await;
    let r = app.get("/api/leaderboard").await;
    assert!(header(&r, "x-ratelimit-limit").is_none());
    assert_eq!(statuses(&app, "/api/leaderboard", 5).await, [200; 5]);
    let status = json_of(app.get("/api/rate-limits/status").await).await;
    assert_eq!(status["disabled"], true);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn forwarded_headers_from_an_untrusted_peer_change_nothing() {
    let app = spawn_app_with(&[("ARAGORA_RATE_LIMIT_RPM", "2")]).await;
    let mut codes = Vec::new();
    for i in 0..3 {
        let r = app
            .client
            .get(app.url("/api/leaderboard"))
            .header("X-Forwarded-For", format!("198.51.100.{i}"))
            .header("X-Real-IP", format!("192.0.2.{i}"))
            .send()
            .await
            .unwrap();
        codes.push(r.status().as_u16());
    }
    assert_eq!(codes, [200, 200, 429]);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn forwarded_headers_from_a_trusted_proxy_name_the_client() {
    let app = spawn_app_with(&[
        ("ARAGORA_RATE_LIMIT_RPM", "2"),
        ("ARAGORA_TRUSTED_PROXIES", "127.0.0.1/32"),
    ])
    .await;
    let get = |xff: &'static str| {
        app.client
            .get(app.url("/api/rate-limits/status"))
            .header("X-Forwarded-For", xff)
            .send()
    };
    let mut codes = Vec::new();
    for _ in 0..3 {
        codes.push(get("198.51.100.1").await.unwrap().status().as_u16());
    }
    assert_eq!(codes, [200, 200, 429]);
    // A spoofed left-most entry does not help: the proxy appended the real address.
    let r = get("198.51.100.1, 198.51.100.2").await.unwrap();
    assert_eq!(r.status(), 200);
    let status: Value = r.json().await.unwrap();
    assert_eq!(status["key"], "ip:198.51.100.2");
    assert_eq!(status["client_ip"], "198.51.100.2");
    app.stop().await.unwrap();
}

async fn redis_conn() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("Redis at {} is required for this test: {e}", redis_url()))
}

#[tokio::test]
async fn redis_backend_limits_and_keys_expire() {
    let prefix = prefix();
    let app = spawn_app_with(&[
        ("ARAGORA_REDIS_URL", &redis_url()),
        ("ARAGORA_ENABLE_REDIS_RATE_LIMIT", "1"),
        ("ARAGORA_RATE_LIMIT_PREFIX", &prefix),
        ("ARAGORA_RATE_LIMIT_RPM", "3"),
    ])
    .await;
    let r = app.get("/api/rate-limits/config").await;
    assert_eq!(header(&r, "x-ratelimit-remaining").as_deref(), Some("2"));
    let config = json_of(r).await;
    assert_eq!(config["backend"], "redis");
    assert_eq!(config["active_backend"], "redis");
    assert_eq!(config["redis_key_prefix"], prefix.as_str());
    assert_eq!(statuses(&app, "/api/leaderboard", 3).await, [200, 200, 429]);
    let mut conn = redis_conn().await;
    let key = format!("{prefix}default:ip:127.0.0.1");
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 61_000, "key {key} has TTL {ttl}");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn two_instances_sharing_redis_enforce_one_limit() {
    let prefix = prefix();
    let env = [
        ("ARAGORA_REDIS_URL", redis_url()),
        ("ARAGORA_ENABLE_REDIS_RATE_LIMIT", "1".into()),
        ("ARAGORA_RATE_LIMIT_PREFIX", prefix.clone()),
        ("ARAGORA_RATE_LIMIT_RPM", "4".into()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let a = spawn_app_with(&env).await;
    let b = spawn_app_with(&env).await;
    let mut codes = Vec::new();
    for i in 0..6 {
        let app = if i % 2 == 0 { &a } else { &b };
        codes.push(app.get("/api/leaderboard").await.status().as_u16());
    }
    assert_eq!(codes, [200, 200, 200, 200, 429, 429]);
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

/// In the binary tests the observer (127.0.0.1) is whitelisted and trusted as a proxy; the
/// client under test is named by X-Forwarded-For.
const LIMITED_CLIENT: &str = "198.51.100.9";
const OBSERVER: [(&str, &str); 2] = [
    ("ARAGORA_TRUSTED_PROXIES", "127.0.0.1/32"),
    ("ARAGORA_RATE_LIMIT_WHITELIST", "127.0.0.1/32"),
];

/// The real binary with a clean environment; output goes to files.
struct Server {
    child: Child,
    port: u16,
    out: PathBuf,
}

impl Server {
    fn start(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let port = free_port();
        let out = dir.join(format!("out-{port}.log"));
        let mut cmd = Command::new(BIN);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("ARAGORA_DATA_DIR", dir.join("data"))
            .env("ARAGORA_LOCK_DIR", dir)
            .env("ARAGORA_SHUTDOWN_TIMEOUT_SECONDS", "5");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .args(args)
            .args([
                "serve",
                "--api-port",
                &port.to_string(),
                "--ws-port",
                &free_port().to_string(),
            ])
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(dir.join(format!("err-{port}.log"))).unwrap())
            .spawn()
            .unwrap();
        Server { child, port, out }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        http().get(self.url(path)).send().await.unwrap()
    }

    /// A request from the limited client (behind the trusted proxy at 127.0.0.1).
    async fn get_as_client(&self, path: &str) -> reqwest::Response {
        http()
            .get(self.url(path))
            .header("X-Forwarded-For", LIMITED_CLIENT)
            .send()
            .await
            .unwrap()
    }

    async fn json(&self, path: &str) -> Value {
        json_of(self.get(path).await).await
    }

    async fn wait_up(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if http()
                .get(self.url("/api/health/live"))
                .send()
                .await
                .is_ok()
            {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("server exited early with {status}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("server did not come up");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Poll `f` until it returns true (or fail after `limit`).
async fn eventually<F: AsyncFnMut() -> bool>(limit: Duration, what: &str, mut f: F) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

struct RedisServer(Child);

impl RedisServer {
    fn start(port: u16, dir: &Path) -> RedisServer {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--daemonize", "no", "--bind", "127.0.0.1"])
            .current_dir(dir)
            .stdout(std::fs::File::create(dir.join(format!("redis-{port}.log"))).unwrap())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        RedisServer(child)
    }

    async fn wait_ready(port: u16) {
        let url = format!("redis://127.0.0.1:{port}/0");
        eventually(
            Duration::from_secs(10),
            "redis-server to accept connections",
            async || match redis::Client::open(url.as_str())
                .unwrap()
                .get_multiplexed_async_connection()
                .await
            {
                Ok(mut c) => redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok(),
                Err(_) => false,
            },
        )
        .await;
    }

    fn stop(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn redis_outage_falls_back_to_memory_and_recovers_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let redis_port = free_port();
    let redis = RedisServer::start(redis_port, dir.path());
    RedisServer::wait_ready(redis_port).await;
    let url = format!("redis://127.0.0.1:{redis_port}/0");
    let mut server = Server::start(
        dir.path(),
        &[],
        &[
            ("ARAGORA_REDIS_URL", &url),
            ("ARAGORA_ENABLE_REDIS_RATE_LIMIT", "1"),
            ("ARAGORA_RATE_LIMIT_RPM", "3"),
            ("ARAGORA_RATE_LIMIT_REDIS_TIMEOUT_MS", "100"),
            OBSERVER[0],
            OBSERVER[1],
        ],
    );
    server.wait_up().await;
    assert_eq!(server.get_as_client("/api/leaderboard").await.status(), 200);
    let status: Value = server.json("/api/rate-limits/status").await;
    assert_eq!(status["backend"], "redis");
    assert_eq!(status["redis_connected"], true);
    let health: Value = server.json("/api/health").await;
    assert_eq!(health["status"], "healthy");

    redis.stop();
    // The API stays up; decisions move to memory, which still enforces the limit.
    let mut codes = Vec::new();
    for _ in 0..4 {
        codes.push(
            server
                .get_as_client("/api/leaderboard")
                .await
                .status()
                .as_u16(),
        );
    }
    assert_eq!(
        codes,
        [200, 200, 200, 429],
        "memory fallback enforces the limit"
    );
    let health: Value = server.json("/api/health").await;
    assert_eq!(health["status"], "degraded");
    assert_eq!(health["checks"]["redis"]["status"], "error");
    let metrics = server.get("/api/metrics").await.text().await.unwrap();
    assert_eq!(metric(&metrics, "aragora_redis_up"), Some(0.0), "{metrics}");
    let config: Value = server.json("/api/rate-limits/config").await;
    assert_eq!(config["backend"], "redis");
    assert_eq!(config["active_backend"], "memory");

    let redis = RedisServer::start(redis_port, dir.path());
    RedisServer::wait_ready(redis_port).await;
    // No traffic needed: the limiter probes Redis by itself.
    eventually(
        Duration::from_secs(10),
        "the limiter to return to redis",
        async || {
            let config = server.json("/api/rate-limits/config").await;
            config["active_backend"] == "redis"
        },
    )
    .await;
    // Health checks run at most once per `health_cache_ms` (100 ms): the next round sees it.
    eventually(
        Duration::from_secs(2),
        "health to be healthy again",
        async || {
            let health: Value = server.json("/api/health").await;
            health["status"] == "healthy"
        },
    )
    .await;
    let metrics = server.get("/api/metrics").await.text().await.unwrap();
    assert_eq!(metric(&metrics, "aragora_redis_up"), Some(1.0));
    // Decisions are in the new Redis again: it started empty, so the client has room again.
    assert_eq!(server.get_as_client("/api/leaderboard").await.status(), 200);
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let exists: bool = redis::cmd("EXISTS")
        .arg(format!("aragora:rl:default:ip:{LIMITED_CLIENT}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(exists);
    let log = server.log();
    assert!(log.contains("rate_limit backend: redis failed"), "{log}");
    assert!(log.contains("redis answers again"), "{log}");
    drop(server);
    drop(redis);
}

#[tokio::test]
async fn sighup_reloads_limits_and_whitelist_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("aragora.toml");
    let observer = "trusted_proxies = \"127.0.0.1/32\"\n";
    std::fs::write(
        &file,
        format!("{observer}rate_limit_rpm = 2\nrate_limit_whitelist = \"127.0.0.1\"\n"),
    )
    .unwrap();
    let mut server = Server::start(dir.path(), &["--config", file.to_str().unwrap()], &[]);
    server.wait_up().await;
    let codes: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(
                server
                    .get_as_client("/api/leaderboard")
                    .await
                    .status()
                    .as_u16(),
            );
        }
        v
    };
    assert_eq!(codes, [200, 200, 429]);

    std::fs::write(
        &file,
        format!(
            "{observer}rate_limit_rpm = 50\nrate_limit_whitelist = \"127.0.0.1,192.0.2.0/24\"\n"
        ),
    )
    .unwrap();
    kill(Pid::from_raw(server.child.id() as i32), Signal::SIGHUP).unwrap();
    eventually(Duration::from_secs(10), "the reload", async || {
        let r = server.get("/api/rate-limits/config").await;
        r.status() == 200 && json_of(r).await["last_reload"]["result"] == "ok"
    })
    .await;
    let config: Value = server.json("/api/rate-limits/config").await;
    assert_eq!(config["rules"][0]["name"], "default");
    assert_eq!(config["rules"][0]["limit"], 50);
    assert_eq!(
        config["whitelist"],
        serde_json::json!(["127.0.0.1/32", "192.0.2.0/24"])
    );
    let changes = config["last_reload"]["changes"].as_array().unwrap();
    assert!(
        changes.iter().any(|c| c == "rate_limit_rpm: 2 -> 50"),
        "{changes:?}"
    );
    let r = server.get_as_client("/api/leaderboard").await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-ratelimit-limit").as_deref(), Some("50"));

    // A bad value keeps the old settings and says why.
    std::fs::write(
        &file,
        format!("{observer}rate_limit_rpm = 5\nrate_limit_whitelist = \"10.0.0.300/8\"\n"),
    )
    .unwrap();
    kill(Pid::from_raw(server.child.id() as i32), Signal::SIGHUP).unwrap();
    eventually(Duration::from_secs(10), "the failed reload", async || {
        server.json("/api/rate-limits/config").await["last_reload"]["result"] == "error"
    })
    .await;
    let config: Value = server.json("/api/rate-limits/config").await;
    assert_eq!(config["rules"][0]["limit"], 50);
    assert!(
        config["last_reload"]["error"]
            .as_str()
            .unwrap()
            .contains("10.0.0.300/8")
    );
    assert!(server.child.try_wait().unwrap().is_none(), "still running");

    let log = server.log();
    let hit = log
        .lines()
        .find(|l| l.contains("rate_limit exceeded"))
        .expect("a rate_limit log line");
    assert!(
        hit.contains("rule=default") && hit.contains("ip:198.51.100.x"),
        "{hit}"
    );
    assert!(!hit.contains(LIMITED_CLIENT), "key not masked: {hit}");
    assert!(
        log.contains("rate_limit settings reloaded: rate_limit_rpm: 2 -> 50"),
        "{log}"
    );
    assert!(log.contains("rate_limit reload failed"), "{log}");
}

#[test]
fn a_bad_whitelist_entry_stops_the_start_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(BIN)
        .env_clear()
        .env("ARAGORA_DATA_DIR", dir.path().join("data"))
        .env("ARAGORA_LOCK_DIR", dir.path())
        .env("ARAGORA_RATE_LIMIT_WHITELIST", "10.0.0.0/8,fd00::/129")
        .args(["serve", "--api-port", "0", "--ws-port", "0"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("ARAGORA_RATE_LIMIT_WHITELIST=\"fd00::/129\""),
        "{stderr}"
    );
}
