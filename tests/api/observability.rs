//! Observability and operations: the metrics exposition (checked with promtool), the
//! recent-errors buffer, Sentry reports (against a local stand-in for Sentry's ingest API),
//! the connectivity check, memory dumps, cache cleanup and systemd notifications.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use serde_json::Value;
use tokio::net::TcpListener;

use crate::helpers::{
    Proxy, free_port, fresh_postgres_schema, postgres_url, redis_url, spawn_app, spawn_app_with,
};
use crate::process::Server;

/// The series every scrape must show from the start (docs/operations.md, "Metrics"; labelled series that only
/// exist once used, such as per-agent or per-route ones, are checked separately).
const ALWAYS_PRESENT: &[&str] = &[
    "aragora_debates_total",
    "aragora_consensus_reached_total",
    "aragora_active_debates",
    "aragora_debates_queued",
    "aragora_circuit_breaker_state",
    "aragora_websocket_connections",
    "aragora_ws_connection_errors_total",
    "aragora_redis_up",
    "aragora_db_pool_connections",
    "aragora_build_info",
    "process_resident_memory_bytes",
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_start_time_seconds",
];

/// Every metric name the server exports, as sample names (histograms by their `_bucket`).
const CONTRACT: &[&str] = &[
    "aragora_debates_total",
    "aragora_consensus_reached_total",
    "aragora_active_debates",
    "aragora_debates_queued",
    "aragora_debate_duration_seconds_bucket",
    "aragora_agent_response_seconds_bucket",
    "aragora_agent_requests_total",
    "aragora_agent_tokens_total",
    "aragora_circuit_breaker_state",
    "aragora_websocket_connections",
    "aragora_ws_connection_errors_total",
    "aragora_rate_limit_hits_total",
    "aragora_http_requests_total",
    "aragora_http_request_duration_seconds_bucket",
    "aragora_redis_up",
    "aragora_db_pool_connections",
    "aragora_build_info",
    "process_resident_memory_bytes",
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_start_time_seconds",
];

/// A fresh server's very first scrape (the real binary, nothing else asked before) already
/// has every contract metric, with the known label values at zero: `rate()` and dashboards
/// see 0, not "no data", on a healthy server that has not yet limited, failed or run anything.
#[tokio::test]
async fn a_fresh_servers_first_scrape_has_every_contract_metric_at_zero() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let client = crate::helpers::http();
    let mut text = String::new();
    for _ in 0..200 {
        match client.get(server.url("/api/metrics")).send().await {
            Ok(r) if r.status() == 200 => {
                text = r.text().await.unwrap();
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert!(!text.is_empty(), "the server answered /api/metrics");
    let names = sample_names(&text);
    let missing: Vec<&&str> = CONTRACT.iter().filter(|n| !names.contains(**n)).collect();
    assert!(
        missing.is_empty(),
        "missing {missing:?} from the first scrape:\n{text}"
    );
    for rule in ["default", "debate_create", "login", "agent_test"] {
        assert_eq!(
            sample_value(
                &text,
                &format!("aragora_rate_limit_hits_total{{rule=\"{rule}\"}} ")
            ),
            Some(0.0),
            "rule {rule}:\n{text}"
        );
    }
    for status in [
        "completed",
        "no_consensus",
        "timeout",
        "failed",
        "cancelled",
        "budget_exceeded",
    ] {
        assert_eq!(
            sample_value(
                &text,
                &format!("aragora_debates_total{{status=\"{status}\"}} ")
            ),
            Some(0.0),
            "{status}"
        );
    }
    // Every configured agent: breaker closed, calls by outcome, tokens, latency.
    let agents: Value = client
        .get(server.url("/api/agents"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let agents = agents["agents"].as_array().expect("agents list");
    assert!(!agents.is_empty());
    for agent in agents {
        let name = agent["name"].as_str().unwrap();
        for series in [
            format!("aragora_circuit_breaker_state{{agent=\"{name}\"}} "),
            format!("aragora_agent_requests_total{{agent=\"{name}\",outcome=\"success\"}} "),
            format!("aragora_agent_requests_total{{agent=\"{name}\",outcome=\"timeout\"}} "),
            format!("aragora_agent_tokens_total{{agent=\"{name}\",direction=\"output\"}} "),
            format!("aragora_agent_response_seconds_count{{agent=\"{name}\"}} "),
        ] {
            assert_eq!(sample_value(&text, &series), Some(0.0), "{series}\n{text}");
        }
    }
    if let Some((ok, out)) = promtool(&["check", "metrics"], &text) {
        assert!(ok, "promtool check metrics failed:\n{out}\n---\n{text}");
    }
}

/// Metric names (without labels) that have a sample line in `text`.
fn sample_names(text: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let end = l.find(['{', ' ']).unwrap_or(l.len());
            l[..end].to_owned()
        })
        .collect()
}

fn sample_value(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Run promtool with `args` and `stdin`. Missing promtool fails when ARAGORA_REQUIRE_PROMTOOL=1
/// (CI sets it and installs Debian's `prometheus` package); elsewhere the check is skipped.
pub fn promtool(args: &[&str], stdin: &str) -> Option<(bool, String)> {
    let child = std::process::Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            assert!(
                std::env::var("ARAGORA_REQUIRE_PROMTOOL").as_deref() != Ok("1"),
                "promtool is required (ARAGORA_REQUIRE_PROMTOOL=1) but cannot run: {e}"
            );
            eprintln!("promtool not installed; skipping the promtool check");
            return None;
        }
    };
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success(), text))
}

#[tokio::test]
async fn metrics_have_every_contract_name_routes_by_pattern_and_pass_promtool() {
    let app = spawn_app().await;
    // Exercise a parameterised route so its pattern shows up.
    let r = app.get("/api/debates/not-a-real-debate-7f3a").await;
    assert_eq!(r.status(), 404);
    let r = app.get("/api/metrics").await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = r.text().await.unwrap();
    let names = sample_names(&text);
    for name in ALWAYS_PRESENT {
        assert!(names.contains(*name), "{name} missing from:\n{text}");
    }
    for name in [
        "aragora_http_requests_total",
        "aragora_http_request_duration_seconds_bucket",
    ] {
        assert!(names.contains(name), "{name} missing from:\n{text}");
    }
    assert!(
        text.contains(&format!(
            "aragora_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
    for state in ["idle", "in_use", "max"] {
        assert!(
            text.contains(&format!("aragora_db_pool_connections{{state=\"{state}\"}}")),
            "{text}"
        );
    }
    // Routes are labelled by pattern, never by raw path.
    assert!(text.contains("route=\"/api/debates/{id}\""), "{text}");
    assert!(!text.contains("not-a-real-debate-7f3a"), "{text}");
    // The process collector reads real values.
    let rss = sample_value(&text, "process_resident_memory_bytes ").unwrap();
    assert!(rss > 1_000_000.0, "rss {rss}");
    let fds = sample_value(&text, "process_open_fds ").unwrap();
    assert!(fds >= 3.0, "fds {fds}");
    let start = sample_value(&text, "process_start_time_seconds ").unwrap();
    let now = chrono::Utc::now().timestamp() as f64;
    assert!(start > now - 3600.0 && start <= now + 1.0, "start {start}");
    // Every line with HELP and TYPE; counters end in _total.
    assert!(
        text.contains("# TYPE aragora_debates_total counter"),
        "{text}"
    );
    assert!(text.contains("# HELP aragora_redis_up "), "{text}");

    if let Some((ok, out)) = promtool(&["check", "metrics"], &text) {
        assert!(ok, "promtool check metrics failed:\n{out}\n---\n{text}");
    }
    app.stop().await.unwrap();
}

#[tokio::test]
async fn metrics_disabled_is_404() {
    let app = spawn_app_with(&[("METRICS_ENABLED", "false")]).await;
    let r = app.get("/api/metrics").await;
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "metrics_disabled");
    let r = app.get("/api/v1/metrics").await;
    assert_eq!(r.status(), 404);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn redis_up_follows_the_real_redis() {
    let proxy = Proxy::start(
        redis_url()
            .trim_start_matches("redis://")
            .split('/')
            .next()
            .unwrap(),
    )
    .await;
    let url = format!("redis://{}/0", proxy.addr);
    let app = spawn_app_with(&[("ARAGORA_REDIS_URL", &url)]).await;
    let text = app.get("/api/metrics").await.text().await.unwrap();
    assert!(text.contains("aragora_redis_up 1"), "{text}");
    assert!(text.contains("aragora_redis_configured 1"), "{text}");
    proxy.cut();
    let text = app.get("/api/metrics").await.text().await.unwrap();
    assert!(text.contains("aragora_redis_up 0"), "{text}");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn system_circuit_breakers_lists_every_agent() {
    let app = spawn_app().await;
    let body: Value = app
        .get("/api/system/circuit-breakers")
        .await
        .json()
        .await
        .unwrap();
    // Breakers exist once an agent has been called; none has yet.
    assert!(body["circuit_breakers"].is_array(), "{body}");
    assert_eq!(body["half_open"], 0);
    let agents: Value = app
        .get("/api/agents/circuit-breakers")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body, agents);
    assert_eq!(body["open"], 0);
    let r = app.get("/api/system/errors?limit=0").await;
    assert_eq!(r.status(), 422);
    let body: Value = app
        .get("/api/system/errors?limit=5")
        .await
        .json()
        .await
        .unwrap();
    assert!(
        body["errors"].is_array() && body["capacity"] == 500,
        "{body}"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn cleanup_caches_names_what_it_cleared() {
    let app = spawn_app().await;
    // Fill the statement caches of the pooled connections.
    for _ in 0..3 {
        assert_eq!(app.get("/api/debates?limit=5").await.status(), 200);
    }
    let r = app
        .client
        .post(app.url("/api/admin/cleanup-caches"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    let caches = body["caches"].as_array().unwrap();
    let names: Vec<&str> = caches.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["db_statement_cache", "allocator_free_pages"],
        "{body}"
    );
    assert!(
        caches[0]["freed"]["statements"].as_u64().unwrap() >= 1,
        "{body}"
    );
    assert!(
        caches[0]["freed"]["connections"].as_u64().unwrap() >= 1,
        "{body}"
    );
    assert!(caches[1]["freed_bytes"].is_u64(), "{body}");
    assert!(body["rss_before_bytes"].as_u64().unwrap() > 0, "{body}");
    assert!(body["rss_after_bytes"].as_u64().unwrap() > 0, "{body}");
    // Still serving (caches are rebuilt on demand).
    assert_eq!(app.get("/api/debates?limit=5").await.status(), 200);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn memory_dump_without_profiling_is_409_saying_how_to_enable() {
    let app = spawn_app().await;
    let r = app
        .client
        .post(app.url("/api/debug/memory-dump"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "memory_profiling_disabled");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("ARAGORA_MEMORY_PROFILING=1"),
        "{body}"
    );
    app.stop().await.unwrap();
}

/// A server that answers every HTTP request with 200 (a provider's base URL).
async fn http_stub() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(|| async { "stub" });
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// Accepts TCP connections and never says anything (a hung peer).
async fn silent_tcp() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    addr
}

#[tokio::test]
async fn connectivity_check_reports_each_step_and_is_bounded() {
    let reachable = http_stub().await;
    let hung = silent_tcp().await;
    let closed = free_port();
    let openai = format!("http://{reachable}/v1");
    let anthropic = format!("http://127.0.0.1:{closed}");
    let gemini = format!("https://{hung}");
    let app = spawn_app_with(&[
        ("OPENAI_API_KEY", "sk-test-openai-key-0000"),
        ("ARAGORA_OPENAI_BASE_URL", &openai),
        ("ANTHROPIC_API_KEY", "sk-ant-test-key-0000"),
        ("ARAGORA_ANTHROPIC_BASE_URL", &anthropic),
        ("GEMINI_API_KEY", "gemini-test-key-0000"),
        ("ARAGORA_GEMINI_BASE_URL", &gemini),
        ("ARAGORA_REDIS_URL", &redis_url()),
    ])
    .await;
    let started = Instant::now();
    let r = app
        .client
        .post(app.url("/api/debug/connectivity-check?timeout_ms=500"))
        .send()
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    // Four steps of at most 500 ms each, all targets at once.
    assert!(elapsed < Duration::from_millis(2500), "{elapsed:?} {body}");
    let target = |name: &str| -> Value {
        body["targets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing: {body}"))
            .clone()
    };
    let steps = |t: &Value| -> Vec<(String, String)> {
        t["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["step"].as_str().unwrap().to_owned(),
                    s["status"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let pair = |a: &str, b: &str| (a.to_owned(), b.to_owned());

    let ok = target("openai");
    assert_eq!(ok["ok"], true, "{ok}");
    assert_eq!(
        steps(&ok),
        [
            pair("dns", "ok"),
            pair("tcp", "ok"),
            pair("tls", "skipped"),
            pair("http", "ok")
        ]
    );
    assert_eq!(ok["steps"][3]["detail"], "HTTP 200");
    assert!(
        ok["steps"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1")
    );

    let refused = target("anthropic");
    assert_eq!(refused["ok"], false);
    assert_eq!(steps(&refused), [pair("dns", "ok"), pair("tcp", "failed")]);
    assert!(
        refused["steps"][1]["error"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("refused"),
        "{refused}"
    );

    let hung = target("gemini");
    assert_eq!(
        steps(&hung),
        [pair("dns", "ok"), pair("tcp", "ok"), pair("tls", "failed")]
    );
    assert!(
        hung["steps"][2]["error"]
            .as_str()
            .unwrap()
            .contains("timed out"),
        "{hung}"
    );

    let db = target("database");
    assert_eq!(db["ok"], true, "{db}");
    assert_eq!(steps(&db), [pair("query", "ok")]);
    let redis = target("redis");
    assert_eq!(redis["ok"], true, "{redis}");
    assert_eq!(
        steps(&redis),
        [
            pair("dns", "ok"),
            pair("tcp", "ok"),
            pair("tls", "skipped"),
            pair("ping", "ok")
        ]
    );
    assert_eq!(body["ok"], false);
    // Keys never leave the server.
    let text = body.to_string();
    assert!(!text.contains("sk-test-openai-key-0000") && !text.contains("gemini-test-key"));

    let r = app
        .client
        .post(app.url("/api/debug/connectivity-check?timeout_ms=5"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    app.stop().await.unwrap();
}

/// A stand-in for Sentry's ingest API: collects every envelope POSTed to
/// `/api/<project>/envelope/`.
async fn sentry_stub() -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/api/1/envelope/",
        axum::routing::post(move |body: Bytes| {
            let sink = sink.clone();
            async move {
                sink.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&body).into_owned());
                "{}"
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, received)
}

/// The real failure used here: the database goes away under a running server, and reading a
/// debate then fails inside the request (503 `database_unavailable`, logged at ERROR in the
/// request's span, which carries the correlation id and, for debate routes, the debate id).
#[tokio::test]
async fn sentry_gets_errors_tagged_with_correlation_and_debate_ids_and_no_secrets() {
    let (ingest, envelopes) = sentry_stub().await;
    let (_schema, _) = fresh_postgres_schema().await;
    let mut upstream = url::Url::parse(&postgres_url()).unwrap();
    let upstream_addr = format!(
        "{}:{}",
        upstream.host_str().unwrap(),
        upstream.port().unwrap_or(5432)
    );
    let proxy = Proxy::start(&upstream_addr).await;
    upstream.set_host(Some("127.0.0.1")).unwrap();
    upstream.set_port(Some(proxy.addr.port())).unwrap();
    let db_url = crate::helpers::with_search_path(upstream.as_str(), &_schema);

    const JWT: &str = "jwt-secret-for-the-sentry-test-0123456789abcdef";
    const TOKEN: &str = "api-token-for-the-sentry-test-9876";
    const KEY: &str = "sk-sentry-test-provider-key-abcdef123456";
    let dsn = format!("http://publickey@{ingest}/1");
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(
        dir.path(),
        &[
            ("SENTRY_DSN", &dsn),
            ("ARAGORA_DATABASE_URL", &db_url),
            ("ARAGORA_DB_POOL_SIZE", "1"),
            ("ARAGORA_DB_MAX_OVERFLOW", "1"),
            ("ARAGORA_JWT_SECRET", JWT),
            ("ARAGORA_API_TOKEN", TOKEN),
            ("OPENAI_API_KEY", KEY),
        ],
    );
    server.wait_healthy().await;
    let client = crate::helpers::http();
    let r = client
        .post(server.url("/api/debates"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"task": "Pick a colour for the bikeshed", "rounds": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["debate_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Let the debate finish while the database is there.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let body: Value = client
            .get(server.url(&format!("/api/debates/{id}")))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if !matches!(body["status"].as_str(), Some("queued" | "running")) {
            break;
        }
        assert!(Instant::now() < deadline, "debate did not finish: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    proxy.cut();
    let r = client
        .get(server.url(&format!("/api/debates/{id}")))
        .bearer_auth(TOKEN)
        .header("X-Correlation-ID", "corr-sentry-test-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);

    // The report arrives at the ingest endpoint.
    let deadline = Instant::now() + Duration::from_secs(15);
    let event = loop {
        let found = envelopes.lock().unwrap().iter().find_map(|envelope| {
            envelope
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|item| item["tags"]["correlation_id"] == "corr-sentry-test-1")
        });
        if let Some(event) = found {
            break event;
        }
        assert!(
            Instant::now() < deadline,
            "no event with the correlation id; received: {:?}",
            envelopes.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(event["tags"]["debate_id"], id.as_str(), "{event}");
    // `level` is omitted when it is the default, "error".
    assert!(
        event["level"].is_null() || event["level"] == "error",
        "{}",
        event["level"]
    );
    assert_eq!(
        event["release"],
        concat!("aragora@", env!("CARGO_PKG_VERSION"))
    );
    for envelope in envelopes.lock().unwrap().iter() {
        for secret in [JWT, TOKEN, KEY] {
            assert!(!envelope.contains(secret), "secret in envelope: {envelope}");
        }
    }

    // The same error is in the recent-errors buffer.
    let body: Value = client
        .get(server.url("/api/system/errors?limit=50"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let errors = body["errors"].as_array().unwrap();
    let entry = errors
        .iter()
        .find(|e| e["correlation_id"] == "corr-sentry-test-1" && e["level"] == "ERROR")
        .unwrap_or_else(|| panic!("error not in the buffer: {body}"));
    assert_eq!(entry["debate_id"], id.as_str());
    assert!(entry["time"].as_str().unwrap().ends_with('Z'));
    assert!(
        entry["message"]
            .as_str()
            .unwrap()
            .contains("database unreachable"),
        "{entry}"
    );
    drop(server);
}

#[tokio::test]
async fn memory_dump_with_profiling_writes_real_allocation_sites() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[("ARAGORA_MEMORY_PROFILING", "1")]);
    server.wait_healthy().await;
    let client = crate::helpers::http();
    // Some allocation activity: debates and their transcripts.
    for _ in 0..3 {
        let r = client
            .post(server.url("/api/debates"))
            .json(&serde_json::json!({"task": "Tabs or spaces?", "rounds": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    let r = client
        .post(server.url("/api/debug/memory-dump"))
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    let file: Value =
        serde_json::from_str(&std::fs::read_to_string("/tmp/aragora_memory_dump.json").unwrap())
            .unwrap();
    assert_eq!(file["pid"], server.child.id());
    let top = file["top_allocations"].as_array().unwrap();
    assert!(!top.is_empty(), "{file}");
    let mut previous = u64::MAX;
    for site in top {
        let bytes = site["bytes"].as_u64().unwrap();
        assert!(bytes > 0 && bytes <= previous, "{site}");
        previous = bytes;
        assert!(site["count"].as_u64().unwrap() > 0, "{site}");
        assert!(!site["site"].as_str().unwrap().is_empty(), "{site}");
    }
    // Symbolised frames, not bare addresses.
    let symbolised = top
        .iter()
        .filter(|s| !s["site"].as_str().unwrap().starts_with("0x"))
        .count();
    assert!(symbolised * 2 >= top.len(), "{file}");
    assert!(
        top.iter()
            .any(|s| s["site"].as_str().unwrap().contains("::")),
        "no Rust allocation site: {file}"
    );
    let all_frames = file["top_allocations"].to_string();
    assert!(
        all_frames.contains("aragora::"),
        "no frame of this program: {all_frames}"
    );
    assert!(file["sampled_live_bytes"].as_u64().unwrap() > 0);
    assert_eq!(body["path"], "/tmp/aragora_memory_dump.json");
    drop(server);
}

#[tokio::test]
async fn systemd_gets_ready_watchdog_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let socket_env = socket_path.display().to_string();
    let mut server = Server::start(
        dir.path(),
        &[("NOTIFY_SOCKET", &socket_env), ("WATCHDOG_USEC", "400000")],
    );
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(seen.iter().any(|m: &String| m.contains("READY=1"))
        && seen.iter().any(|m| m.contains("WATCHDOG=1")))
    {
        assert!(Instant::now() < deadline, "{seen:?}");
        let n = socket.recv(&mut buf).expect("a notification");
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    // READY only once the API answers.
    server.wait_healthy().await;
    let ready_at = seen.iter().position(|m| m.contains("READY=1")).unwrap();
    assert_eq!(
        seen[..ready_at]
            .iter()
            .filter(|m| m.contains("READY"))
            .count(),
        0
    );
    // Pings keep coming at about half the interval.
    let mut pings = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(900) {
        let n = socket.recv(&mut buf).unwrap();
        if String::from_utf8_lossy(&buf[..n]).contains("WATCHDOG=1") {
            pings += 1;
        }
    }
    assert!(pings >= 2, "{pings} pings in 900 ms");
    server.signal(nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "no STOPPING=1");
        let n = socket.recv(&mut buf).unwrap();
        if String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1") {
            break;
        }
    }
    let (code, _, _) = server.wait_exit(Duration::from_secs(15));
    assert_eq!(code, 0);
}

#[tokio::test]
async fn on_a_fresh_install_unconfigured_providers_are_not_configured_not_failed() {
    let app = spawn_app_with(&[]).await;
    let body: Value = app
        .client
        .post(app.url("/api/debug/connectivity-check?timeout_ms=500"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let targets = body["targets"].as_array().unwrap();
    let ollama = targets.iter().find(|t| t["name"] == "ollama").unwrap();
    assert_eq!(ollama["status"], "not_configured", "{body}");
    assert_eq!(ollama["ok"], true);
    for name in ["openai", "anthropic", "gemini"] {
        let t = targets.iter().find(|t| t["name"] == name).unwrap();
        assert_eq!(t["status"], "not_configured", "{name}: {body}");
    }
    let db = targets.iter().find(|t| t["name"] == "database").unwrap();
    assert_eq!(db["status"], "ok");
    assert_eq!(
        body["ok"], true,
        "nothing is wrong on a fresh install: {body}"
    );
    app.stop().await.unwrap();
}
