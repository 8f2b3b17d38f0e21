//! The debates API end to end with the built-in demo agents (and a local OpenAI-compatible
//! server for the provider path): create, run, read back, page, cancel, validate, queue.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app, spawn_app_with};

async fn create(app: &TestApp, body: Value) -> reqwest::Response {
    app.client
        .post(app.url("/api/debates"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn create_id(app: &TestApp, body: Value) -> String {
    let r = create(app, body).await;
    assert_eq!(r.status(), 202);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "queued");
    v["debate_id"].as_str().unwrap().to_owned()
}

/// Poll every 20 ms, at most `tries` times, until the debate is `running` (then, or after the
/// last try, return: the caller's own checks say what it needed).
pub async fn wait_running(app: &TestApp, id: &str, tries: usize) {
    for _ in 0..tries {
        let d: Value = app
            .get(&format!("/api/debates/{id}"))
            .await
            .json()
            .await
            .unwrap();
        if d["status"] == "running" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Poll until the debate leaves queued/running.
pub async fn wait_finished(app: &TestApp, id: &str) -> Value {
    for _ in 0..400 {
        let d: Value = app
            .get(&format!("/api/debates/{id}"))
            .await
            .json()
            .await
            .unwrap();
        if !matches!(d["status"].as_str(), Some("queued" | "running")) {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("debate {id} did not finish");
}

#[tokio::test]
async fn a_demo_debate_runs_to_consensus_and_reads_back_whole() {
    let app = spawn_app().await;
    let id = create_id(
        &app,
        json!({"task": "Should we use microservices?", "agents": ["demo", "demo", "demo"], "rounds": 2, "domain": "architecture"}),
    )
    .await;
    let d = wait_finished(&app, &id).await;
    assert_eq!(d["status"], "completed", "{d}");
    assert_eq!(d["id"], id.as_str());
    assert_eq!(d["task"], "Should we use microservices?");
    assert_eq!(d["agents"], json!(["demo", "demo", "demo"]));
    assert_eq!(d["rounds"], 2);
    assert!(d["rounds_used"].as_i64().unwrap() >= 1);
    assert_eq!(d["consensus"], "threshold");
    assert_eq!(d["domain"], "architecture");
    assert!(d["duration_seconds"].as_f64().unwrap() >= 0.0);
    assert!(d["correlation_id"].as_str().unwrap().starts_with("corr-"));
    let result = &d["result"];
    assert_eq!(result["consensus_reached"], true);
    assert!(result["confidence"].as_f64().unwrap() >= 0.6);
    let winner = result["winner"].as_str().unwrap();
    assert!(
        result["final_answer"]
            .as_str()
            .unwrap()
            .starts_with("[demo]")
    );
    assert_eq!(result["votes"].as_array().unwrap().len(), 3);
    // The demo seats give a 2-of-3 majority: one dissenter, named with its reasoning.
    let dissent = result["dissent"].as_array().unwrap();
    assert_eq!(dissent.len(), 1);
    assert_ne!(dissent[0]["voted_for"], winner);
    assert!(result["baseline"]["winner"].is_string());
    assert!(d["usage"]["input_tokens"].as_u64().unwrap() > 0);
    assert_eq!(d["usage"]["estimated"], true);

    // The event log: contiguous seq from 1, the contract's types, same as /messages.
    let ev: Value = app
        .get(&format!("/api/debates/{id}/events"))
        .await
        .json()
        .await
        .unwrap();
    let events = ev["events"].as_array().unwrap();
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["seq"], i as i64 + 1);
        assert_eq!(e["debate_id"], id.as_str());
    }
    assert_eq!(ev["last_seq"], events.len() as i64);
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds[0], "debate_queued");
    assert_eq!(kinds[1], "debate_start");
    assert_eq!(*kinds.last().unwrap(), "debate_end");
    for k in [
        "round_start",
        "agent_message",
        "critique",
        "vote",
        "consensus",
    ] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    let since: Value = app
        .get(&format!("/api/debates/{id}/events?since=3&limit=2"))
        .await
        .json()
        .await
        .unwrap();
    let seqs: Vec<i64> = since["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, vec![4, 5]);

    let m: Value = app
        .get(&format!("/api/debates/{id}/messages"))
        .await
        .json()
        .await
        .unwrap();
    let messages = m["messages"].as_array().unwrap();
    assert_eq!(messages[0]["type"], "proposal");
    assert!(messages.iter().any(|m| m["type"] == "critique"));
    assert_eq!(
        messages.iter().filter(|m| m["type"] == "vote").count() % 3,
        0
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn list_filters_by_status_and_pages_with_cursor_and_offset() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            create_id(
                &app,
                json!({"task": format!("question {i}"), "agents": ["demo", "demo"], "rounds": 1}),
            )
            .await,
        );
    }
    for id in &ids {
        wait_finished(&app, id).await;
    }
    let page1: Value = app.get("/api/debates?limit=2").await.json().await.unwrap();
    let cursor = page1["next_cursor"].as_str().unwrap();
    let page2: Value = app
        .get(&format!("/api/debates?limit=2&cursor={cursor}"))
        .await
        .json()
        .await
        .unwrap();
    let cursor = page2["next_cursor"].as_str().unwrap();
    let page3: Value = app
        .get(&format!("/api/debates?limit=2&cursor={cursor}"))
        .await
        .json()
        .await
        .unwrap();
    assert!(page3["next_cursor"].is_null());
    let seen: Vec<String> = [&page1, &page2, &page3]
        .iter()
        .flat_map(|p| {
            p["debates"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["id"].as_str().unwrap().to_owned())
        })
        .collect();
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first, "newest first, no gap, no duplicate");

    let offset: Value = app
        .get("/api/debates?limit=2&offset=2")
        .await
        .json()
        .await
        .unwrap();
    let offset_ids: Vec<&str> = offset["debates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        offset_ids,
        vec![newest_first[2].as_str(), newest_first[3].as_str()]
    );

    // The runbook's query.
    let none: Value = app
        .get("/api/debates?status=no_consensus&limit=10")
        .await
        .json()
        .await
        .unwrap();
    assert!(
        none["debates"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["status"] == "no_consensus")
    );
    let done: Value = app
        .get("/api/debates?status=completed&limit=10")
        .await
        .json()
        .await
        .unwrap();
    let done_count = done["debates"].as_array().unwrap().len();
    let none_count = none["debates"].as_array().unwrap().len();
    assert_eq!(done_count + none_count, 5);

    let bad = app.get("/api/debates?status=finished").await;
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("status"), "{body}");
    let bad = app.get("/api/debates?cursor=zzz").await;
    assert_eq!(bad.status(), 400);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn bad_requests_name_the_field() {
    let app = spawn_app().await;
    let cases = [
        (json!({"task": "  "}), "task"),
        (json!({"task": "x", "agents": ["demo"]}), "agents"),
        (json!({"task": "x", "rounds": 0}), "rounds"),
        (
            json!({"task": "x", "rounds": 2, "min_rounds": 3}),
            "min_rounds",
        ),
        (json!({"task": "x", "consensus": "vibes"}), "consensus"),
        (
            json!({"task": "x", "consensus_threshold": 1.5}),
            "consensus_threshold",
        ),
        (
            json!({"task": "x", "judge": "nobody", "consensus": "judge"}),
            "judge",
        ),
    ];
    for (body, field) in cases {
        let r = create(&app, body.clone()).await;
        assert_eq!(r.status(), 422, "{body}");
        let err: Value = r.json().await.unwrap();
        assert_eq!(err["field"], field, "{err}");
        assert_eq!(err["code"], "validation_error");
        assert!(err["error"].as_str().unwrap().contains(field), "{err}");
    }
    // Unknown agent: 422 listing the known ones.
    let r = create(&app, json!({"task": "x", "agents": ["claude", "hal-9000"]})).await;
    assert_eq!(r.status(), 422);
    let err: Value = r.json().await.unwrap();
    let msg = err["error"].as_str().unwrap();
    assert!(
        msg.contains("hal-9000") && msg.contains("claude") && msg.contains("demo"),
        "{msg}"
    );
    // Missing task and unknown fields are named by the JSON decoder.
    let r = create(&app, json!({"agents": ["demo", "demo"]})).await;
    assert_eq!(r.status(), 422);
    let err: Value = r.json().await.unwrap();
    assert!(err["error"].as_str().unwrap().contains("task"), "{err}");
    let r = create(&app, json!({"task": "x", "rouns": 2})).await;
    assert!(
        r.json::<Value>().await.unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("rouns")
    );
    // Not JSON.
    let r = app
        .client
        .post(app.url("/api/debates"))
        .header("content-type", "application/json")
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "bad_request");
    // Nothing was created by any of these.
    let list: Value = app.get("/api/debates").await.json().await.unwrap();
    assert!(list["debates"].as_array().unwrap().is_empty());
    let r = app.get("/api/debates/does-not-exist").await;
    assert_eq!(r.status(), 404);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn cancel_a_running_and_a_queued_debate() {
    let app = spawn_app_with(&[("ARAGORA_MAX_CONCURRENT_DEBATES", "1")]).await;
    let slow = json!({"task": "slow", "agents": ["demo:3000", "demo:3000"], "rounds": 3});
    let running = create_id(&app, slow.clone()).await;
    let queued = create_id(&app, slow).await;
    // Wait until the first one runs.
    wait_running(&app, &running, 100).await;
    let q: Value = app
        .get(&format!("/api/debates/{queued}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(q["status"], "queued");
    let health: Value = app.get("/api/health").await.json().await.unwrap();
    assert_eq!(health["checks"]["active_debates"], 1);

    let r = app
        .client
        .post(app.url(&format!("/api/debates/{queued}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "cancelled");
    let started = std::time::Instant::now();
    let r = app
        .client
        .post(app.url(&format!("/api/debates/{running}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let d = wait_finished(&app, &running).await;
    assert_eq!(d["status"], "cancelled");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "cancellation is prompt"
    );
    let q = wait_finished(&app, &queued).await;
    assert_eq!(q["status"], "cancelled");
    // The queued one never started: its log is queued → end.
    let ev: Value = app
        .get(&format!("/api/debates/{queued}/events"))
        .await
        .json()
        .await
        .unwrap();
    let kinds: Vec<&str> = ev["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, vec!["debate_queued", "debate_end"]);
    // Cancelling again is a conflict.
    let r = app
        .client
        .post(app.url(&format!("/api/debates/{running}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    app.stop().await.unwrap();
}

/// A server with one debate slot, filled by a slow debate that is already running, and a
/// queue of `queue_size`; with the body of more such debates. The worker is given up to
/// 10 s to take the first one: on a loaded 2-core machine it can take a while to get
/// scheduled, and until then the queue would hold one more than the test expects.
async fn one_slot_running(queue_size: &str) -> (TestApp, Value) {
    let app = spawn_app_with(&[
        ("ARAGORA_MAX_CONCURRENT_DEBATES", "1"),
        ("ARAGORA_DEBATE_QUEUE_SIZE", queue_size),
    ])
    .await;
    let slow = json!({"task": "slow", "agents": ["demo:5000", "demo:5000"], "rounds": 1});
    let first = create_id(&app, slow.clone()).await;
    wait_running(&app, &first, 500).await;
    (app, slow)
}

/// Submissions skip the count while the queue is far from its bound, and count again near
/// it: the bound still holds exactly, for the submission that would pass it.
#[tokio::test]
async fn the_queue_bound_holds_when_submissions_stop_counting_far_from_it() {
    let (app, slow) = one_slot_running("6").await;
    for i in 0..6 {
        let r = create(&app, slow.clone()).await;
        assert_eq!(r.status(), 202, "queued debate {i} refused");
    }
    let r = create(&app, slow).await;
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("queue"), "{body}");
    let list: Value = app
        .get("/api/debates?status=queued&limit=50")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["debates"].as_array().unwrap().len(), 6);
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.lines().any(|l| l == "aragora_debates_queued 6"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("debates_queued"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after() {
    let (app, slow) = one_slot_running("1").await;
    create_id(&app, slow.clone()).await;
    let r = create(&app, slow).await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("retry-after").is_some());
    let body: Value = r.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("queue"), "{body}");
    assert!(body["retry_after"].is_u64());
    let list: Value = app.get("/api/debates").await.json().await.unwrap();
    assert_eq!(
        list["debates"].as_array().unwrap().len(),
        2,
        "the refused debate was not stored"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn agents_breakers_agent_test_and_leaderboard() {
    let app = spawn_app().await;
    let agents: Value = app.get("/api/agents").await.json().await.unwrap();
    let list = agents["agents"].as_array().unwrap();
    let claude = list.iter().find(|a| a["name"] == "claude").unwrap();
    assert_eq!(claude["provider"], "anthropic");
    assert_eq!(claude["available"], false, "no ANTHROPIC_API_KEY here");
    assert_eq!(claude["circuit"], "closed");
    let demo = list.iter().find(|a| a["name"] == "demo").unwrap();
    assert_eq!(demo["available"], true);

    // The runbook's form: curl -d sends a form content type; it must still work.
    let r = app
        .client
        .post(app.url("/api/debug/agent-test"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(r#"{"agent": "demo", "prompt": "Say hello"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let t: Value = r.json().await.unwrap();
    assert_eq!(t["ok"], true, "{t}");
    assert!(t["response"].as_str().unwrap().starts_with("[demo]"));
    assert!(t["latency_ms"].is_u64());
    assert_eq!(t["circuit_state"], "closed");
    assert!(t["tokens"]["output_tokens"].as_u64().unwrap() > 0);
    // A keyless agent fails cleanly, saying which key is missing.
    let t: Value = app
        .client
        .post(app.url("/api/debug/agent-test"))
        .body(r#"{"agent":"claude"}"#)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(t["ok"], false);
    assert!(
        t["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ANTHROPIC_API_KEY"),
        "{t}"
    );
    let r = app
        .client
        .post(app.url("/api/debug/agent-test"))
        .body(r#"{"agent":"nope"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);

    let b: Value = app
        .get("/api/agents/circuit-breakers")
        .await
        .json()
        .await
        .unwrap();
    assert!(
        b["circuit_breakers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["agent"] == "demo" && x["state"] == "closed")
    );
    let r = app
        .client
        .post(app.url("/api/agents/demo/reset-circuit"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = app
        .client
        .post(app.url("/api/agents/nobody/reset-circuit"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Ratings: two different agent names play each other.
    let id = create_id(&app, json!({"task": "pick a database", "agents": ["demo", "demo:1", "demo:2"], "rounds": 1, "domain": "databases"})).await;
    let d = wait_finished(&app, &id).await;
    assert_eq!(d["status"], "completed", "{d}");
    let board: Value = app.get("/api/leaderboard").await.json().await.unwrap();
    let ratings = board["ratings"].as_array().unwrap();
    assert_eq!(ratings.len(), 3, "{board}");
    assert_eq!(ratings[0]["rank"], 1);
    assert!(ratings[0]["rating"].as_f64().unwrap() > 1500.0);
    assert!(ratings.iter().all(|r| r["games"] == 2));
    let winner_agent = d["result"]["winner"].as_str().unwrap();
    assert_eq!(ratings[0]["agent"], winner_agent);
    let domain: Value = app
        .get("/api/leaderboard?domain=databases")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(domain["ratings"].as_array().unwrap().len(), 3);
    let other: Value = app
        .get("/api/leaderboard?domain=security")
        .await
        .json()
        .await
        .unwrap();
    assert!(other["ratings"].as_array().unwrap().is_empty());
    app.stop().await.unwrap();
}
