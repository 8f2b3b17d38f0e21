//! Steering a running debate: pause and resume at phase boundaries, a moderator's message in
//! every later prompt, a cost cap, and who may do it. A local OpenAI-shaped provider counts
//! and records every call, so "no call while paused" and "the prompt carries the message"
//! are read off the provider itself.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::durable::{
    DEBATE, Provider, check_log, events, get_json, post_debate, provider_env, recording_provider,
    start, wait_all_finished, wait_progress,
};
use crate::helpers::{TestApp, fresh_postgres_schema, http, spawn_app_with};

async fn post_path(base: &str, path: &str, body: Option<Value>) -> reqwest::Response {
    let mut r = http().post(format!("{base}{path}"));
    if let Some(b) = body {
        r = r.json(&b);
    }
    r.send().await.unwrap()
}

async fn wait_status(base: &str, id: &str, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let d = get_json(&format!("{base}/api/debates/{id}")).await;
        if d["status"] == status {
            return d;
        }
        assert!(Instant::now() < deadline, "never {status}: {d}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The (phase, prompt) of every call after the proposals of a 3-seat, 2-round debate: the
/// critiques and votes of both rounds and the revisions, 3 seats × 5 phases.
fn prompts_after_the_proposals(provider: &Provider) -> Vec<(String, String)> {
    let prompts = provider.prompts.lock().unwrap().clone();
    let later: Vec<(String, String)> = prompts
        .iter()
        .filter(|(phase, _)| phase != "proposal")
        .cloned()
        .collect();
    assert_eq!(later.len(), 15, "{prompts:?}");
    later
}

async fn spawn_with_provider(base: &str, extra: &[(&str, &str)]) -> TestApp {
    let env = provider_env(base);
    let mut vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    vars.extend_from_slice(extra);
    spawn_app_with(&vars).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_debate_calls_no_agent_until_resumed_then_completes() {
    let provider = recording_provider(Duration::from_millis(400), 10).await;
    let app = spawn_with_provider(&provider.base, &[]).await;
    let base = app.url("");
    let id = post_debate(&base, &DEBATE()).await;
    // Mid round 1: the proposals are recorded; the pause lands at the next boundary.
    wait_progress(&base, std::slice::from_ref(&id), 5).await;
    let r = post_path(&base, &format!("/api/debates/{id}/pause"), None).await;
    assert_eq!(r.status(), 202);
    let paused = wait_status(&base, &id, "paused").await;
    assert_eq!(paused["instance"], app.state.debates.instance_id());
    assert_eq!(app.state.debates.active(), 0, "the slot is released");
    let active = get_json(&format!("{base}/api/debates/active")).await;
    assert_eq!(active["count"], 0, "no lease, not running: {active}");
    let calls = provider.calls.load(Ordering::SeqCst);
    let seq = events(&base, &id).await.len();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        provider.calls.load(Ordering::SeqCst),
        calls,
        "no agent is called while paused"
    );
    assert_eq!(
        events(&base, &id).await.len(),
        seq,
        "nothing recorded while paused"
    );
    // Pausing again is harmless; resuming something not paused is a conflict.
    let again = post_path(
        &base,
        &format!("/api/debates/{id}/intervention/pause"),
        None,
    )
    .await;
    assert_eq!(again.status(), 202);

    let r = post_path(
        &base,
        &format!("/api/debates/{id}/intervention/resume"),
        None,
    )
    .await;
    assert_eq!(r.status(), 202);
    let r = post_path(&base, &format!("/api/debates/{id}/resume"), None).await;
    assert!(
        matches!(r.status().as_u16(), 202 | 409),
        "a second resume is queued-or-running, never an error page"
    );
    let done = wait_all_finished(&base, std::slice::from_ref(&id), Duration::from_secs(60)).await;
    let log = events(&base, &id).await;
    let (steps, resumed) = check_log(&done[0], &log);
    assert_eq!(resumed.len(), 1, "{resumed:?}");
    assert_eq!(resumed[0]["data"]["reason"], "resumed_by_user");
    let pauses: Vec<&Value> = log
        .iter()
        .filter(|e| e["type"] == "debate_paused")
        .collect();
    assert_eq!(pauses.len(), 1);
    assert_eq!(
        pauses[0]["seq"].as_i64().unwrap() + 1,
        resumed[0]["seq"].as_i64().unwrap()
    );
    assert_eq!(
        provider.calls.load(Ordering::SeqCst),
        steps,
        "every call recorded once"
    );

    // A finished debate cannot be paused: 409 naming its status.
    let r = post_path(&base, &format!("/api/debates/{id}/pause"), None).await;
    assert_eq!(r.status(), 409);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], done[0]["status"]);
    let r = post_path(&base, &format!("/api/debates/{id}/resume"), None).await;
    assert_eq!(r.status(), 409);
    app.stop().await.unwrap();
}

/// The instance running a debate reads the moderator's messages only when one may have
/// arrived; a message added through another instance (which cannot tell it directly) is
/// noticed from the gap it leaves in the running instance's seqs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_injected_through_another_instance_reaches_the_running_one() {
    let provider = recording_provider(Duration::from_millis(600), 10).await;
    let (_schema, url) = fresh_postgres_schema().await;
    let a = spawn_with_provider(
        &provider.base,
        &[
            ("ARAGORA_DATABASE_URL", url.as_str()),
            ("ARAGORA_INSTANCE_ID", "steer-a"),
        ],
    )
    .await;
    let b = spawn_with_provider(
        &provider.base,
        &[
            ("ARAGORA_DATABASE_URL", url.as_str()),
            ("ARAGORA_INSTANCE_ID", "steer-b"),
        ],
    )
    .await;
    let id = post_debate(&a.url(""), &DEBATE()).await;
    // While the proposals are in flight, through the instance that does not run it.
    wait_progress(&a.url(""), std::slice::from_ref(&id), 3).await;
    let runner = get_json(&a.url(&format!("/api/debates/{id}"))).await;
    let (running, other) = if runner["instance"] == "steer-a" {
        (&a, &b)
    } else {
        (&b, &a)
    };
    let note = "Budget is frozen until next year.";
    let r = post_path(
        &other.url(""),
        &format!("/api/debates/{id}/intervention/inject"),
        Some(json!({"content": note})),
    )
    .await;
    assert_eq!(r.status(), 201);
    assert_eq!(
        other.state.debates.active(),
        0,
        "the other instance runs nothing"
    );
    let done = wait_all_finished(
        &a.url(""),
        std::slice::from_ref(&id),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(done[0]["instance"], runner["instance"], "{}", done[0]);
    assert_eq!(running.state.debates.active(), 0);
    assert!(matches!(
        done[0]["status"].as_str(),
        Some("completed" | "no_consensus")
    ));
    for (phase, prompt) in prompts_after_the_proposals(&provider) {
        assert!(
            prompt.contains(note),
            "{phase} prompt lacks the message injected through the other instance: {prompt}"
        );
    }
    b.stop().await.unwrap();
    a.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_moderators_message_reaches_every_later_prompt() {
    let provider = recording_provider(Duration::from_millis(600), 10).await;
    let app = spawn_with_provider(&provider.base, &[]).await;
    let base = app.url("");
    let id = post_debate(&base, &DEBATE()).await;
    // While the proposals are in flight.
    wait_progress(&base, std::slice::from_ref(&id), 3).await;
    let note = "Assume the team has only three engineers.";
    let r = post_path(
        &base,
        &format!("/api/debates/{id}/intervention/inject"),
        Some(json!({"content": note, "role": "moderator"})),
    )
    .await;
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    assert_eq!(created["type"], "intervention");
    let done = wait_all_finished(&base, std::slice::from_ref(&id), Duration::from_secs(60)).await;
    assert!(matches!(
        done[0]["status"].as_str(),
        Some("completed" | "no_consensus")
    ));
    let log = events(&base, &id).await;
    let intervention = log.iter().find(|e| e["type"] == "intervention").unwrap();
    assert_eq!(intervention["data"]["content"], note);
    assert_eq!(intervention["data"]["role"], "moderator");
    for (phase, prompt) in prompts_after_the_proposals(&provider) {
        assert!(
            prompt.contains(note) && prompt.contains("Moderator's messages"),
            "{phase} prompt lacks the moderator's message: {prompt}"
        );
    }
    // Validation: empty, too long, wrong role — named before anything else.
    for (body, field) in [
        (json!({"content": "  "}), "content"),
        (json!({"content": "x".repeat(4001)}), "content"),
        (json!({"content": "hi", "role": "agent"}), "role"),
    ] {
        let r = post_path(
            &base,
            &format!("/api/debates/{id}/intervention/inject"),
            Some(body),
        )
        .await;
        assert_eq!(r.status(), 422);
        assert_eq!(r.json::<Value>().await.unwrap()["field"], field);
    }
    // A finished debate takes none.
    let r = post_path(
        &base,
        &format!("/api/debates/{id}/intervention/inject"),
        Some(json!({"content": "too late"})),
    )
    .await;
    assert_eq!(r.status(), 409);
    let running = post_debate(&base, &DEBATE()).await;
    let r = post_path(
        &base,
        &format!("/api/debates/{running}/intervention/inject"),
        Some(json!({"content": "x".repeat(4001)})),
    )
    .await;
    assert_eq!(r.status(), 422);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["field"], "content");
    assert!(v["error"].as_str().unwrap().contains("4000"), "{v}");
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pause_survives_a_restart_and_the_debate_resumes_afterwards() {
    let provider = recording_provider(Duration::from_millis(300), 10).await;
    let dir = tempfile::tempdir().unwrap();
    let env = provider_env(&provider.base);
    let mut server = start(dir.path(), &env);
    server.wait_healthy().await;
    let base = server.url("");
    let id = post_debate(&base, &DEBATE()).await;
    wait_progress(&base, std::slice::from_ref(&id), 5).await;
    assert_eq!(
        post_path(&base, &format!("/api/debates/{id}/pause"), None)
            .await
            .status(),
        202
    );
    wait_status(&base, &id, "paused").await;
    server.signal(Signal::SIGTERM);
    let (code, _, _) = server.wait_exit(Duration::from_secs(30));
    assert_eq!(code, 0);

    let mut again = start(dir.path(), &env);
    again.wait_healthy().await;
    let base = again.url("");
    let calls = provider.calls.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        get_json(&format!("{base}/api/debates/{id}")).await["status"],
        "paused"
    );
    assert_eq!(
        provider.calls.load(Ordering::SeqCst),
        calls,
        "still paused after the restart"
    );
    assert_eq!(
        post_path(&base, &format!("/api/debates/{id}/resume"), None)
            .await
            .status(),
        202
    );
    let done = wait_all_finished(&base, std::slice::from_ref(&id), Duration::from_secs(60)).await;
    let log = events(&base, &id).await;
    let (steps, resumed) = check_log(&done[0], &log);
    assert_eq!(resumed.len(), 1);
    assert_eq!(resumed[0]["data"]["reason"], "resumed_by_user");
    assert_eq!(provider.calls.load(Ordering::SeqCst), steps);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_the_owner_or_an_admin_steers_a_debate() {
    use crate::auth::{SERVICE, add_user, auth_app, post_as, tokens};
    let app = auth_app(&[]).await;
    add_user(&app, "owner@example.com", "member").await;
    add_user(&app, "other@example.com", "member").await;
    add_user(&app, "admin@example.com", "admin").await;
    let (owner, _) = tokens(&app, "owner@example.com").await;
    let (other, _) = tokens(&app, "other@example.com").await;
    let (admin, _) = tokens(&app, "admin@example.com").await;
    let r = post_as(
        &app,
        "/api/debates",
        &owner,
        json!({"task": "steer me", "agents": ["demo:2000", "demo:2000"], "rounds": 3}),
    )
    .await;
    let id = r.json::<Value>().await.unwrap()["debate_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for path in [
        "pause",
        "intervention/pause",
        "resume",
        "intervention/resume",
    ] {
        let r = post_as(
            &app,
            &format!("/api/debates/{id}/{path}"),
            &other,
            json!({}),
        )
        .await;
        assert_eq!(r.status(), 404, "another member cannot {path} it");
    }
    let r = post_as(
        &app,
        &format!("/api/debates/{id}/intervention/inject"),
        &other,
        json!({"content": "hijack"}),
    )
    .await;
    assert_eq!(r.status(), 404);
    let anonymous = http()
        .post(app.url(&format!("/api/debates/{id}/pause")))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    // The admin may; then the owner resumes it.
    let r = post_as(&app, &format!("/api/debates/{id}/pause"), &admin, json!({})).await;
    assert_eq!(r.status(), 202);
    let mut d = Value::Null;
    for _ in 0..200 {
        d = crate::auth::get_json_as(&app, &format!("/api/debates/{id}"), SERVICE).await;
        if d["status"] == "paused" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(d["status"], "paused", "{d}");
    let log = crate::auth::get_json_as(&app, &format!("/api/debates/{id}/events"), &owner).await;
    let paused = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "debate_paused")
        .cloned()
        .unwrap();
    assert!(paused["data"]["by"].is_string(), "{paused}");
    let r = post_as(
        &app,
        &format!("/api/debates/{id}/cancel"),
        &owner,
        json!({}),
    )
    .await;
    assert_eq!(r.status(), 202, "a paused debate can be cancelled");
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cost_cap_ends_the_debate_as_budget_exceeded_within_one_phase() {
    // gpt-4o costs $2.50 per million input tokens: 100,000 tokens make each call $0.25
    // (plus a little output), a phase of three seats ≈ $0.75.
    let provider = recording_provider(Duration::from_millis(50), 100_000).await;
    let app = spawn_with_provider(&provider.base, &[]).await;
    let base = app.url("");
    let cap = 1.0;
    let mut request = DEBATE();
    request["max_cost_usd"] = json!(cap);
    let id = post_debate(&base, &request).await;
    let done = wait_all_finished(&base, std::slice::from_ref(&id), Duration::from_secs(60)).await;
    let d = &done[0];
    assert_eq!(d["status"], "budget_exceeded", "{d}");
    assert!(d["error"].as_str().unwrap().contains("cost cap"), "{d}");
    let cost = app.state.store.debate_cost(&id).await.unwrap();
    let phase = 3.0 * (100_000.0 * 2.5 + 5.0 * 10.0) / 1e6;
    assert!(cost >= cap, "stopped only once the cap was reached: {cost}");
    assert!(
        cost < cap + phase,
        "stopped within one phase of the cap: {cost}"
    );
    // The transcript and the partial result are kept.
    let log = events(&base, &id).await;
    assert!(log.iter().any(|e| e["type"] == "agent_message"));
    assert_eq!(log.last().unwrap()["data"]["status"], "budget_exceeded");
    assert!(d["result"].is_object());
    // A bad cap is refused naming the field.
    let mut bad = DEBATE();
    bad["max_cost_usd"] = json!(-1);
    let r = http()
        .post(format!("{base}/api/debates"))
        .json(&bad)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(r.json::<Value>().await.unwrap()["field"], "max_cost_usd");
    let metrics = app.get("/api/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("aragora_debates_total{status=\"budget_exceeded\"}"),
        "the status is in the metric's label set"
    );
    app.stop().await.unwrap();
}
