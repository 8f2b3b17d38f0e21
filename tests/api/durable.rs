//! Durable debates: a debate survives a graceful restart, a killed instance and a race of
//! instances for the queue. Real binaries and in-process servers on real SQLite and Postgres;
//! agents are an OpenAI-shaped local provider that counts (and delays) its calls, so the
//! tests can prove that no recorded step is asked again.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::helpers::{fresh_postgres_schema, http, queued_debate, spawn_app_with};
use crate::process::Server;

#[derive(Clone)]
struct Counting {
    calls: Arc<AtomicUsize>,
    delay: Duration,
    /// Every call's (phase, user prompt), in arrival order.
    prompts: Arc<std::sync::Mutex<Vec<(String, String)>>>,
    /// Prompt tokens each call reports (its cost, with the pricing table).
    prompt_tokens: u64,
    /// Each call's `traceparent` header, if any.
    traceparents: Arc<std::sync::Mutex<Vec<Option<String>>>>,
}

/// A local OpenAI-shaped provider that counts and records its calls.
pub struct Provider {
    pub base: String,
    pub calls: Arc<AtomicUsize>,
    pub prompts: Arc<std::sync::Mutex<Vec<(String, String)>>>,
    /// Each call's `traceparent` header, if any.
    pub traceparents: Arc<std::sync::Mutex<Vec<Option<String>>>>,
}

/// A Chat Completions server: plain prose for answers and critiques, a parseable vote for
/// the first candidate; every call takes `delay`.
async fn chat(
    State(fake): State<Counting>,
    headers: axum::http::HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    fake.calls.fetch_add(1, Ordering::SeqCst);
    fake.traceparents.lock().unwrap().push(
        headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    );
    let system = body["messages"][0]["content"].as_str().unwrap_or_default();
    let user = body["messages"][1]["content"].as_str().unwrap_or_default();
    let phase = system
        .lines()
        .find_map(|l| l.strip_prefix("Aragora-Phase: "))
        .unwrap_or_default()
        .to_owned();
    fake.prompts.lock().unwrap().push((phase, user.to_owned()));
    tokio::time::sleep(fake.delay).await;
    let usage = json!({"prompt_tokens": fake.prompt_tokens, "completion_tokens": 5});
    let first = user
        .lines()
        .find_map(|l| l.strip_prefix("Aragora-Candidates: "))
        .and_then(|c| c.split(", ").next())
        .unwrap_or_default()
        .to_owned();
    let text = if system.contains("Aragora-Phase: vote") {
        format!(r#"{{"vote": "{first}", "confidence": 0.8, "reasoning": "clearest"}}"#)
    } else if system.contains("Aragora-Phase: critique") {
        "The other answers need numbers.".to_owned()
    } else {
        "Keep a modular monolith until the numbers say otherwise.".to_owned()
    };
    if body["stream"] == true {
        let mut sse = String::new();
        for word in text.split_inclusive(' ') {
            sse.push_str(&format!(
                "data: {}\n\n",
                json!({"choices": [{"delta": {"content": word}}]})
            ));
        }
        sse.push_str(&format!(
            "data: {}\n\ndata: [DONE]\n\n",
            json!({"choices": [], "usage": usage})
        ));
        return ([("content-type", "text/event-stream")], Body::from(sse)).into_response();
    }
    Json(json!({
        "id": "c", "model": body["model"], "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": usage
    }))
    .into_response()
}

/// The provider's base URL and its call counter.
async fn counting_provider(delay: Duration) -> (String, Arc<AtomicUsize>) {
    let p = recording_provider(delay, 10).await;
    (p.base, p.calls)
}

/// A provider whose calls each take `delay` and report `prompt_tokens` input tokens.
pub async fn recording_provider(delay: Duration, prompt_tokens: u64) -> Provider {
    let calls = Arc::new(AtomicUsize::new(0));
    let prompts = Arc::new(std::sync::Mutex::new(Vec::new()));
    let traceparents = Arc::new(std::sync::Mutex::new(Vec::new()));
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .with_state(Counting {
            calls: calls.clone(),
            delay,
            prompts: prompts.clone(),
            prompt_tokens,
            traceparents: traceparents.clone(),
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Provider {
        base: format!("http://{addr}/v1"),
        calls,
        prompts,
        traceparents,
    }
}

pub const DEBATE: fn() -> Value = || {
    json!({"task": "Monolith or microservices?", "agents": ["gpt-4", "gpt-4", "gpt-4"],
           "rounds": 2, "min_rounds": 2})
};

pub async fn get_json(url: &str) -> Value {
    http().get(url).send().await.unwrap().json().await.unwrap()
}

pub async fn post_debate(base: &str, body: &Value) -> String {
    let r = http()
        .post(format!("{base}/api/debates"))
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    r.json::<Value>().await.unwrap()["debate_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

pub async fn events(base: &str, id: &str) -> Vec<Value> {
    get_json(&format!("{base}/api/debates/{id}/events?limit=1000")).await["events"]
        .as_array()
        .unwrap()
        .clone()
}

/// Waits until every debate has ended; returns their records.
pub async fn wait_all_finished(base: &str, ids: &[String], limit: Duration) -> Vec<Value> {
    let deadline = Instant::now() + limit;
    loop {
        let mut done = Vec::new();
        for id in ids {
            let d = get_json(&format!("{base}/api/debates/{id}")).await;
            if !matches!(d["status"].as_str(), Some("queued" | "running")) {
                done.push(d);
            }
        }
        if done.len() == ids.len() {
            return done;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {} debates ended in time",
            done.len(),
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A finished debate whose log is whole: ended completed or no_consensus, seq contiguous
/// from 1, one debate_start and one debate_end.
fn assert_whole(record: &Value, log: &[Value]) {
    assert!(
        matches!(
            record["status"].as_str(),
            Some("completed" | "no_consensus")
        ),
        "{record}"
    );
    for (i, e) in log.iter().enumerate() {
        assert_eq!(e["seq"], i as i64 + 1, "seq contiguous from 1: {e}");
    }
    let count = |kind: &str| log.iter().filter(|e| e["type"] == kind).count();
    assert_eq!(count("debate_start"), 1, "one debate_start");
    assert_eq!(count("debate_end"), 1, "one debate_end");
}

/// The checks every durable run must pass: ended completed or no_consensus; seq contiguous
/// from 1; one debate_start and one debate_end (the last event); every step (agent call
/// outcome by round, phase and seat) recorded once. Returns the number of recorded steps
/// and the resume events.
pub fn check_log(record: &Value, log: &[Value]) -> (usize, Vec<Value>) {
    assert_whole(record, log);
    assert_eq!(log.last().unwrap()["type"], "debate_end");
    assert_eq!(log.last().unwrap()["data"]["status"], record["status"]);
    let mut steps = HashSet::new();
    for e in log {
        let phase = match e["type"].as_str().unwrap() {
            "agent_message" => e["data"]["role"].as_str().unwrap().to_owned(),
            "critique" | "vote" => e["type"].as_str().unwrap().to_owned(),
            _ => continue,
        };
        let key = (e["round"].clone(), phase, e["agent"].clone());
        // The provider's critiques are prose: one critique event per call.
        assert!(steps.insert(key.clone()), "step recorded twice: {key:?}");
    }
    for round in [1, 2] {
        let starts = log
            .iter()
            .filter(|e| e["type"] == "round_start" && e["round"] == round)
            .count();
        assert_eq!(starts, 1, "round {round} started once");
    }
    let resumed = log
        .iter()
        .filter(|e| e["type"] == "debate_resumed")
        .cloned()
        .collect();
    (steps.len(), resumed)
}

pub fn provider_env(base: &str) -> Vec<(&'static str, String)> {
    vec![
        ("OPENAI_API_KEY", "sk-durable-test".into()),
        ("ARAGORA_OPENAI_BASE_URL", base.into()),
        // One attempt per call: a retry would be a provider call the log cannot show.
        ("ARAGORA_AGENT_MAX_ATTEMPTS", "1".into()),
    ]
}

pub fn start(dir: &Path, env: &[(&'static str, String)]) -> Server {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Server::start(dir, &env)
}

/// Polls until each debate has recorded at least `seq` events.
pub async fn wait_progress(base: &str, ids: &[String], seq: i64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    for id in ids {
        loop {
            let e = get_json(&format!("{base}/api/debates/{id}/events?limit=1")).await;
            if e["last_seq"].as_i64().unwrap_or(0) >= seq {
                break;
            }
            assert!(Instant::now() < deadline, "debate {id} made no progress");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_mid_round_then_restart_finishes_every_debate_without_asking_again() {
    let (provider, calls) = counting_provider(Duration::from_millis(700)).await;
    let dir = tempfile::tempdir().unwrap();
    let env = provider_env(&provider);
    let mut server = start(dir.path(), &env);
    server.wait_healthy().await;
    let base = server.url("");
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(post_debate(&base, &DEBATE()).await);
    }
    // Mid round 1: proposals recorded, critiques in flight.
    wait_progress(&base, &ids, 6).await;
    server.signal(Signal::SIGTERM);
    let (code, _, err) = server.wait_exit(Duration::from_secs(30));
    assert_eq!(code, 0, "graceful stop exits 0: {err}");
    let calls_at_stop = calls.load(Ordering::SeqCst);

    let mut again = start(dir.path(), &env);
    again.wait_healthy().await;
    let base = again.url("");
    let records = wait_all_finished(&base, &ids, Duration::from_secs(60)).await;
    let mut steps = 0;
    for (id, record) in ids.iter().zip(&records) {
        let log = events(&base, id).await;
        let (n, resumed) = check_log(record, &log);
        steps += n;
        assert_eq!(resumed.len(), 1, "one seam: {resumed:?}");
        assert_eq!(
            resumed[0]["data"]["reason"], "restart",
            "handed back: {resumed:?}"
        );
        let from = resumed[0]["data"]["from_seq"].as_i64().unwrap();
        assert_eq!(resumed[0]["seq"].as_i64().unwrap(), from + 1);
        assert!(from >= 6, "the first run's steps were kept: {from}");
    }
    assert!(calls_at_stop > 0);
    // Every provider call is a recorded step: none made twice, none lost.
    assert_eq!(calls.load(Ordering::SeqCst), steps);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_one_instance_leaves_its_debates_to_the_survivor() {
    let (provider, calls) = counting_provider(Duration::from_millis(500)).await;
    let (_schema, url) = fresh_postgres_schema().await;
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let common = |instance: &str| {
        let mut env = provider_env(&provider);
        env.extend([
            ("ARAGORA_DATABASE_URL", url.clone()),
            ("ARAGORA_INSTANCE_ID", instance.to_owned()),
            ("ARAGORA_DEBATE_LEASE_SECONDS", "3".to_owned()),
            ("ARAGORA_DEBATE_CLAIM_POLL_MS", "200".to_owned()),
        ]);
        env
    };
    let mut a = start(dir_a.path(), &common("instance-a"));
    a.wait_healthy().await;
    let base_a = a.url("");
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(post_debate(&base_a, &DEBATE()).await);
    }
    wait_progress(&base_a, &ids, 4).await;
    // B starts once A runs all six.
    let mut b = start(dir_b.path(), &common("instance-b"));
    b.wait_healthy().await;
    let base_b = b.url("");
    let active = get_json(&format!("{base_b}/api/debates/active")).await;
    assert_eq!(active["count"], 6, "{active}");
    assert!(
        active["debates"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["instance"] == "instance-a" && d["total_rounds"] == 2),
        "{active}"
    );
    wait_progress(&base_a, &ids, 7).await;
    a.signal(Signal::SIGKILL);
    let _ = a.wait_exit(Duration::from_secs(5));

    // Lease (3 s) + the rest of each debate (≈ 7 phases of 0.5 s) with room for a loaded
    // machine.
    let records = wait_all_finished(&base_b, &ids, Duration::from_secs(60)).await;
    let mut steps = 0;
    for (id, record) in ids.iter().zip(&records) {
        assert_eq!(record["instance"], "instance-b", "{record}");
        let log = events(&base_b, id).await;
        let (n, resumed) = check_log(record, &log);
        steps += n;
        assert_eq!(resumed.len(), 1, "{resumed:?}");
        assert_eq!(resumed[0]["data"]["reason"], "lease_expired");
        assert_eq!(resumed[0]["data"]["instance"], "instance-b");
    }
    // Calls in flight at the kill were made again; nothing recorded was.
    let made = calls.load(Ordering::SeqCst);
    assert!(
        made >= steps && made <= steps + 6 * 3,
        "calls {made}, recorded steps {steps}"
    );
    let health = get_json(&format!("{base_b}/api/health")).await;
    assert_eq!(health["checks"]["active_debates"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_racing_for_two_hundred_queued_debates_run_each_once() {
    let (_schema, url) = fresh_postgres_schema().await;
    // The queue is filled before any instance runs.
    let store = aragora::store::connect(
        &url,
        aragora::store::PoolSettings {
            size: 2,
            max_overflow: 2,
            acquire_timeout: Duration::from_secs(10),
            intake: 1,
        },
    )
    .await
    .unwrap();
    store.migrate().await.unwrap();
    let mut ids = Vec::new();
    for i in 0..200 {
        let id = format!("race{i:03}");
        store
            .create_debate(&aragora::store::NewDebate {
                options: json!({"consensus_threshold": 0.6, "min_rounds": 1}),
                ..queued_debate(&id, "Tabs or spaces?", &["demo", "demo"])
            })
            .await
            .unwrap();
        ids.push(id);
    }
    let mut apps = Vec::new();
    for name in ["race-a", "race-b", "race-c"] {
        apps.push(
            spawn_app_with(&[
                ("ARAGORA_DATABASE_URL", url.as_str()),
                ("ARAGORA_INSTANCE_ID", name),
                ("ARAGORA_MAX_CONCURRENT_DEBATES", "20"),
                ("ARAGORA_DEBATE_CLAIM_POLL_MS", "100"),
            ])
            .await,
        );
    }
    let base = apps[0].url("");
    let records = wait_all_finished(&base, &ids, Duration::from_secs(120)).await;
    let mut by_instance: HashMap<String, usize> = HashMap::new();
    for (id, record) in ids.iter().zip(&records) {
        assert!(
            matches!(
                record["status"].as_str(),
                Some("completed" | "no_consensus")
            ),
            "{record}"
        );
        *by_instance
            .entry(record["instance"].as_str().unwrap().to_owned())
            .or_default() += 1;
        let log = store.events_since(id, 0, 1000).await.unwrap();
        let starts = log.iter().filter(|e| e.kind == "debate_start").count();
        let ends = log.iter().filter(|e| e.kind == "debate_end").count();
        let resumed = log.iter().filter(|e| e.kind == "debate_resumed").count();
        assert_eq!((starts, ends, resumed), (1, 1, 0), "debate {id} ran once");
    }
    assert_eq!(by_instance.values().sum::<usize>(), 200);
    store.close().await;
    for app in apps {
        app.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_debate_running_on_one_instance_is_cancelled_from_another() {
    let (_schema, url) = fresh_postgres_schema().await;
    let a = spawn_app_with(&[
        ("ARAGORA_DATABASE_URL", url.as_str()),
        ("ARAGORA_INSTANCE_ID", "cancel-a"),
    ])
    .await;
    let b = spawn_app_with(&[
        ("ARAGORA_DATABASE_URL", url.as_str()),
        ("ARAGORA_INSTANCE_ID", "cancel-b"),
    ])
    .await;
    let id = post_debate(
        &a.url(""),
        &json!({"task": "slow", "agents": ["demo:3000", "demo:3000"], "rounds": 3}),
    )
    .await;
    let mut runner = Value::Null;
    for _ in 0..200 {
        runner = get_json(&a.url(&format!("/api/debates/{id}"))).await;
        if runner["status"] == "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(runner["status"], "running");
    // Both instances list it, under the SDK's /api/v1 path too, with its runner.
    for app in [&a, &b] {
        let active = get_json(&app.url("/api/v1/debates/active")).await;
        let listed = active["debates"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["debate_id"] == id.as_str())
            .cloned()
            .unwrap_or_else(|| panic!("{active}"));
        assert_eq!(listed["instance"], runner["instance"]);
        assert_eq!(listed["total_rounds"], 3);
        assert!(listed["elapsed_seconds"].as_f64().unwrap() >= 0.0);
    }
    // Cancel through the instance that does not run it.
    let other = if runner["instance"] == "cancel-a" {
        &b
    } else {
        &a
    };
    let asked = Instant::now();
    let r = other
        .client
        .post(other.url(&format!("/api/debates/{id}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let mut d = Value::Null;
    while asked.elapsed() < Duration::from_secs(10) {
        d = get_json(&other.url(&format!("/api/debates/{id}"))).await;
        if d["status"] == "cancelled" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(d["status"], "cancelled", "{d}");
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

/// An OpenAI-shaped provider that always fails with 500.
async fn failing_provider() -> String {
    async fn fail() -> Response {
        (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": {"message": "upstream exploded", "type": "server_error"}})),
        )
            .into_response()
    }
    let app = Router::new().route("/v1/chat/completions", post(fail));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/v1")
}

async fn breaker_state(app: &crate::helpers::TestApp, agent: &str) -> Value {
    let all = get_json(&app.url("/api/agents/circuit-breakers")).await;
    all["circuit_breakers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["agent"] == agent || b["name"] == agent)
        .map_or(Value::Null, |b| b["state"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_open_breaker_is_shared_through_redis_and_a_redis_outage_stops_nothing() {
    let provider = failing_provider().await;
    let redis_hostport = crate::helpers::redis_url()
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let redis = crate::helpers::Proxy::start(&redis_hostport).await;
    let redis_url = format!("redis://{}/0", redis.addr);
    let channel = format!("test-breakers-{}", uuid::Uuid::new_v4().simple());
    let env = |instance: &'static str| {
        vec![
            ("ARAGORA_INSTANCE_ID", instance.to_owned()),
            ("ARAGORA_REDIS_URL", redis_url.clone()),
            ("ARAGORA_EVENT_BUS_CHANNEL", channel.clone()),
            ("OPENAI_API_KEY", "sk-breaker-test".to_owned()),
            ("ARAGORA_OPENAI_BASE_URL", provider.clone()),
            ("ARAGORA_AGENT_MAX_ATTEMPTS", "1".to_owned()),
            ("ARAGORA_BREAKER_FAILURE_THRESHOLD", "2".to_owned()),
        ]
    };
    let spawn = |vars: Vec<(&'static str, String)>| async move {
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        spawn_app_with(&vars).await
    };
    let a = spawn(env("breaker-a")).await;
    let b = spawn(env("breaker-b")).await;
    for _ in 0..2 {
        a.client
            .post(a.url("/api/debug/agent-test"))
            .json(&json!({"agent": "gpt-4", "prompt": "hello"}))
            .send()
            .await
            .unwrap();
    }
    assert_eq!(breaker_state(&a, "gpt-4").await, "open");
    // B never called the provider; it learns of A's open breaker.
    let mut seen = Value::Null;
    for _ in 0..100 {
        seen = breaker_state(&b, "gpt-4").await;
        if seen == "open" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen, "open", "A's open breaker is seen on B");

    // An operator reset on B reaches A the same way.
    let r = b
        .client
        .post(b.url("/api/agents/gpt-4/reset-circuit"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    for _ in 0..100 {
        seen = breaker_state(&a, "gpt-4").await;
        if seen == "closed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen, "closed", "B's reset is seen on A");

    // Redis goes away: both instances keep running debates with their own breakers.
    redis.cut();
    for app in [&a, &b] {
        let id = post_debate(
            &app.url(""),
            &json!({"task": "Redis is down", "agents": ["demo", "demo"], "rounds": 1}),
        )
        .await;
        let d = crate::debates::wait_finished(app, &id).await;
        assert!(
            matches!(d["status"].as_str(), Some("completed" | "no_consensus")),
            "{d}"
        );
    }
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

/// The test Postgres' `host:port`.
fn pg_host_port() -> String {
    crate::helpers::postgres_url()
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("host:port in the test database URL")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_instance_cut_from_postgres_past_its_lease_is_fenced_when_it_returns() {
    let (schema, url) = fresh_postgres_schema().await;
    let proxy = crate::helpers::Proxy::start(&pg_host_port()).await;
    let via_proxy = crate::helpers::with_search_path(
        &crate::helpers::postgres_url().replace(&pg_host_port(), &proxy.addr.to_string()),
        &schema,
    );
    let lease = [
        ("ARAGORA_DEBATE_LEASE_SECONDS", "3"),
        ("ARAGORA_DEBATE_CLAIM_POLL_MS", "200"),
        ("ARAGORA_DB_ACQUIRE_TIMEOUT_MS", "2000"),
    ];
    let mut a_env = vec![
        ("ARAGORA_DATABASE_URL", via_proxy.as_str()),
        ("ARAGORA_INSTANCE_ID", "fence-a"),
    ];
    a_env.extend(lease);
    let a = spawn_app_with(&a_env).await;
    // Long agent calls: A is still inside its first calls when it gets the database back.
    let id = post_debate(
        &a.url(""),
        &json!({"task": "fencing", "agents": ["demo:7000", "demo:7000"], "rounds": 1}),
    )
    .await;
    for _ in 0..200 {
        if get_json(&a.url(&format!("/api/debates/{id}"))).await["status"] == "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let mut b_env = vec![
        ("ARAGORA_DATABASE_URL", url.as_str()),
        ("ARAGORA_INSTANCE_ID", "fence-b"),
    ];
    b_env.extend(lease);
    let b = spawn_app_with(&b_env).await;
    proxy.blackhole();
    // B takes the debate over once A's lease has run out.
    let mut record = Value::Null;
    for _ in 0..300 {
        record = get_json(&b.url(&format!("/api/debates/{id}"))).await;
        if record["instance"] == "fence-b" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(record["instance"], "fence-b", "{record}");
    // A gets its database back while its agent calls are still running, then they end:
    // whatever it tries to write is refused.
    proxy.restore();
    let done = wait_all_finished(
        &b.url(""),
        std::slice::from_ref(&id),
        Duration::from_secs(60),
    )
    .await;
    let log = events(&b.url(""), &id).await;
    assert_eq!(done[0]["instance"], "fence-b");
    for (i, e) in log.iter().enumerate() {
        assert_eq!(e["seq"], i as i64 + 1);
    }
    let proposals = log.iter().filter(|e| e["type"] == "agent_message").count();
    assert_eq!(
        proposals, 2,
        "one proposal per seat, none from the fenced instance: {log:?}"
    );
    let resumed: Vec<&Value> = log
        .iter()
        .filter(|e| e["type"] == "debate_resumed")
        .collect();
    assert_eq!(resumed.len(), 1);
    assert_eq!(resumed[0]["data"]["reason"], "lease_expired");
    assert_eq!(resumed[0]["data"]["instance"], "fence-b");
    assert_eq!(log.iter().filter(|e| e["type"] == "debate_end").count(), 1);
    // A is running nothing any more.
    assert_eq!(a.state.debates.active(), 0);
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_of_two_instances_while_debates_stream_in_fails_none() {
    let (_schema, url) = fresh_postgres_schema().await;
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let env = |instance: &str| {
        vec![
            ("ARAGORA_DATABASE_URL", url.clone()),
            ("ARAGORA_INSTANCE_ID", instance.to_owned()),
            ("ARAGORA_DEBATE_LEASE_SECONDS", "5".to_owned()),
            ("ARAGORA_DEBATE_CLAIM_POLL_MS", "200".to_owned()),
            ("ARAGORA_MAX_CONCURRENT_DEBATES", "20".to_owned()),
        ]
    };
    let names = ["roll-a", "roll-b"];
    let mut servers = Vec::new();
    for (dir, name) in dirs.iter().zip(names) {
        let mut s = start(dir.path(), &env(name));
        s.wait_healthy().await;
        servers.push(s);
    }
    let debate = json!({"task": "rolling", "agents": ["demo:300", "demo:300"], "rounds": 2, "min_rounds": 2});
    let mut ids = Vec::new();
    // Restart each instance in turn while debates keep arriving at whichever is up.
    for turn in 0..2 {
        for i in 0..10 {
            // The first five go to the instance about to stop, so it has debates to hand back.
            let target = if i < 5 { turn } else { (turn + 1) % 2 };
            ids.push(post_debate(&servers[target].url(""), &debate).await);
            if i == 4 {
                servers[turn].signal(Signal::SIGTERM);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let old = servers.remove(turn);
        let (code, _, err) = old.wait_exit(Duration::from_secs(30));
        assert_eq!(code, 0, "{err}");
        let mut fresh = start(dirs[turn].path(), &env(names[turn]));
        fresh.wait_healthy().await;
        servers.insert(turn, fresh);
        for _ in 0..15 {
            ids.push(post_debate(&servers[turn].url(""), &debate).await);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(ids.len(), 50);
    let base = servers[0].url("");
    let records = wait_all_finished(&base, &ids, Duration::from_secs(120)).await;
    let mut resumed = 0;
    for (id, record) in ids.iter().zip(&records) {
        let log = events(&base, id).await;
        assert_whole(record, &log);
        resumed += log.iter().filter(|e| e["type"] == "debate_resumed").count();
    }
    assert!(
        resumed >= 2,
        "each stop handed running debates over: {resumed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watcher_on_another_instance_sees_every_seq_once_as_the_debate_moves() {
    use futures::StreamExt;
    let (_schema, url) = fresh_postgres_schema().await;
    let channel = format!("test-move-{}", uuid::Uuid::new_v4().simple());
    let redis = crate::helpers::redis_url();
    let env = |instance: &'static str| {
        vec![
            ("ARAGORA_DATABASE_URL", url.clone()),
            ("ARAGORA_INSTANCE_ID", instance.to_owned()),
            ("ARAGORA_REDIS_URL", redis.clone()),
            ("ARAGORA_EVENT_BUS_CHANNEL", channel.clone()),
            ("ARAGORA_DEBATE_CLAIM_POLL_MS", "200".to_owned()),
        ]
    };
    let spawn = |vars: Vec<(&'static str, String)>| async move {
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        spawn_app_with(&vars).await
    };
    let a = spawn(env("move-a")).await;
    let id = post_debate(
        &a.url(""),
        &json!({"task": "moving", "agents": ["demo:400", "demo:400"], "rounds": 2, "min_rounds": 2}),
    )
    .await;
    wait_progress(&a.url(""), std::slice::from_ref(&id), 4).await;
    let b = spawn(env("move-b")).await;
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/ws?debate_id={id}&since=0", b.ws))
            .await
            .unwrap();
    // A stops gracefully: it hands the debate back and B resumes it.
    a.stop().await.unwrap();
    let mut seqs = Vec::new();
    let mut resumed_by = Value::Null;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, ws.next())
            .await
            .expect("the debate ends in time")
            .expect("socket open")
            .unwrap();
        let tokio_tungstenite::tungstenite::Message::Text(text) = msg else {
            continue;
        };
        let v: Value = serde_json::from_str(&text).unwrap();
        let Some(seq) = v["seq"].as_i64() else {
            continue;
        };
        if v["type"] == "debate_resumed" {
            resumed_by = v["data"]["instance"].clone();
        }
        seqs.push(seq);
        if v["type"] == "debate_end" {
            break;
        }
    }
    assert_eq!(resumed_by, "move-b");
    assert_eq!(
        seqs,
        (1..=*seqs.last().unwrap()).collect::<Vec<_>>(),
        "every seq once, in order"
    );
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn debates_ride_out_a_database_blip_and_a_cut_and_finish_once_it_returns() {
    let (app, proxy) = crate::helpers::spawn_app_behind_db_proxy(&[
        ("ARAGORA_DB_ACQUIRE_TIMEOUT_MS", "1000"),
        ("ARAGORA_DEBATE_CLAIM_POLL_MS", "200"),
    ])
    .await;
    let base = app.url("");
    let body = json!({"task": "outage", "agents": ["demo:400", "demo:400", "demo:400"],
                      "rounds": 2, "min_rounds": 2});
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(post_debate(&base, &body).await);
    }
    wait_progress(&base, &ids, 3).await;
    // A one-second blip…
    proxy.blackhole();
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.restore();
    wait_progress(&base, &ids, 9).await;
    // …then a fifteen-second cut.
    proxy.blackhole();
    tokio::time::sleep(Duration::from_secs(15)).await;
    proxy.restore();
    let records = wait_all_finished(&base, &ids, Duration::from_secs(90)).await;
    for (id, record) in ids.iter().zip(&records) {
        let log = events(&base, id).await;
        assert_whole(record, &log);
        let mut steps = HashSet::new();
        for e in log
            .iter()
            .filter(|e| matches!(e["type"].as_str(), Some("agent_message" | "vote")))
        {
            assert!(
                steps.insert((e["type"].clone(), e["round"].clone(), e["agent"].clone())),
                "recorded twice: {e}"
            );
        }
    }
    app.stop().await.unwrap();
}

/// Batches of one debate that reach its recorder together are written as one append (with
/// other debates' steps, through the group commit): each batch's events stay together and in
/// order, every event lands once, and watchers see them in seq order.
async fn a_recorders_concurrent_batches_land_whole_and_in_seq_order(
    store: aragora::store::DynStore,
) {
    use aragora::bus::{EventBus, LocalBus};
    use aragora::debate::events::{EventBody, Intervention};
    use aragora::debate::manager::Recorder;
    use aragora::debate::{Event, EventSink};
    use aragora::store::GroupCommit;

    const BATCHES: usize = 40;
    const EACH: usize = 3;
    store.migrate().await.unwrap();
    store
        .create_debate(&queued_debate("rec-1", "batches", &["demo", "demo"]))
        .await
        .unwrap();
    let lease = store
        .claim_debates("i-1", 1, Duration::from_secs(30))
        .await
        .unwrap()
        .remove(0)
        .lease;
    let bus = Arc::new(LocalBus::new(4 * BATCHES * EACH));
    let mut live = bus.subscribe();
    let group = Arc::new(GroupCommit::new(store.clone(), 2));
    let recorder = Arc::new(
        Recorder::new(store.clone(), bus.clone(), "rec-1")
            .with_lease(lease)
            .with_group(group),
    );
    let note = |b: usize, k: usize| {
        Event::new(
            Some(1),
            None,
            EventBody::Intervention(Intervention {
                by: None,
                role: "moderator".into(),
                content: format!("b{b}-{k}"),
            }),
        )
    };
    let tasks: Vec<_> = (0..BATCHES)
        .map(|b| {
            let recorder = recorder.clone();
            let batch: Vec<Event> = (0..EACH).map(|k| note(b, k)).collect();
            tokio::spawn(async move { recorder.record(&batch).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().expect("every batch is recorded");
    }
    let log = store.events_since("rec-1", 0, 10_000).await.unwrap();
    assert_eq!(
        log.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=(BATCHES * EACH) as i64).collect::<Vec<_>>()
    );
    let contents: Vec<String> = log
        .iter()
        .map(|e| e.data["content"].as_str().unwrap().to_owned())
        .collect();
    for b in 0..BATCHES {
        let at = contents
            .iter()
            .position(|c| *c == format!("b{b}-0"))
            .unwrap_or_else(|| panic!("batch {b} is missing"));
        let run: Vec<String> = (0..EACH).map(|k| format!("b{b}-{k}")).collect();
        assert_eq!(
            contents[at..at + EACH],
            run[..],
            "batch {b} is whole and in order"
        );
    }
    let mut seen = Vec::new();
    while let Ok(e) = live.try_recv() {
        seen.push(e.seq.expect("a stored event has its seq"));
    }
    assert_eq!(
        seen,
        (1..=(BATCHES * EACH) as i64).collect::<Vec<_>>(),
        "watchers get every event once, in seq order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_a_recorders_concurrent_batches_land_whole_and_in_seq_order() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("a.db").display());
    let store = aragora::store::connect(&url, POOL).await.unwrap();
    a_recorders_concurrent_batches_land_whole_and_in_seq_order(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_a_recorders_concurrent_batches_land_whole_and_in_seq_order() {
    let (_schema, url) = fresh_postgres_schema().await;
    let store = aragora::store::connect(&url, POOL).await.unwrap();
    a_recorders_concurrent_batches_land_whole_and_in_seq_order(store).await;
}

const POOL: aragora::store::PoolSettings = aragora::store::PoolSettings {
    size: 4,
    max_overflow: 4,
    acquire_timeout: Duration::from_secs(10),
    intake: 1,
};
