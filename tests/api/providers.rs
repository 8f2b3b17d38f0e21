//! Debates through a real provider adapter: a local server speaking OpenAI's Chat
//! Completions wire format stands in for the vendor (streaming included), selected with
//! ARAGORA_OPENAI_BASE_URL exactly as an operator would point at a proxy.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use crate::debates::wait_finished;
use crate::helpers::spawn_app_with;

#[derive(Clone)]
struct Fake {
    calls: Arc<AtomicUsize>,
    fail: bool,
}

/// Answers by the phase header of the system prompt; streams when asked to.
async fn chat(State(fake): State<Fake>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    fake.calls.fetch_add(1, Ordering::SeqCst);
    assert_eq!(headers["authorization"], "Bearer sk-test-key-123");
    if fake.fail {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": {"message": "upstream exploded", "type": "server_error"}})),
        )
            .into_response();
    }
    let system = body["messages"][0]["content"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let user = body["messages"][1]["content"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let candidates: Vec<String> = user
        .lines()
        .find_map(|l| l.strip_prefix("Aragora-Candidates: "))
        .map(|c| c.split(", ").map(str::to_owned).collect())
        .unwrap_or_default();
    let text = if system.contains("Aragora-Phase: vote") {
        let pick = candidates
            .iter()
            .find(|c| c.starts_with("demo"))
            .cloned()
            .unwrap_or_default();
        format!(
            "I choose carefully.\n```json\n{{\"vote\": \"{pick}\", \"confidence\": 0.9, \"reasoning\": \"most concrete\"}}\n```"
        )
    } else if system.contains("Aragora-Phase: critique") {
        let items: Vec<Value> = candidates
            .iter()
            .map(|c| json!({"target": c, "severity": 0.4, "text": "needs numbers"}))
            .collect();
        json!({"critiques": items}).to_string()
    } else {
        "[gpt] Use a modular monolith and measure before splitting.".to_owned()
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
            json!({"choices": [], "usage": {"prompt_tokens": 120, "completion_tokens": 12}})
        ));
        return ([("content-type", "text/event-stream")], Body::from(sse)).into_response();
    }
    Json(json!({
        "id": "chatcmpl-1", "model": body["model"], "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 20}
    }))
    .into_response()
}

async fn start_fake(fail: bool) -> (String, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .with_state(Fake {
            calls: calls.clone(),
            fail,
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/v1"), calls)
}

#[tokio::test]
async fn a_debate_with_an_openai_agent_uses_the_wire_format_and_real_usage() {
    let (base, calls) = start_fake(false).await;
    let app = spawn_app_with(&[
        ("OPENAI_API_KEY", "sk-test-key-123"),
        ("ARAGORA_OPENAI_BASE_URL", base.as_str()),
    ])
    .await;
    let agents: Value = app.get("/api/agents").await.json().await.unwrap();
    let gpt = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "gpt-4")
        .unwrap()
        .clone();
    assert_eq!(gpt["available"], true);

    let r = app.client.post(app.url("/api/debates"))
        .json(&json!({"task": "monolith or microservices?", "agents": ["gpt-4", "demo"], "rounds": 1}))
        .send().await.unwrap();
    let id = r.json::<Value>().await.unwrap()["debate_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let d = wait_finished(&app, &id).await;
    assert!(
        matches!(d["status"].as_str(), Some("completed" | "no_consensus")),
        "{d}"
    );
    // proposal (streamed), critique, vote.
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let m: Value = app
        .get(&format!("/api/debates/{id}/messages"))
        .await
        .json()
        .await
        .unwrap();
    let proposal = m["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["agent"] == "gpt-4" && m["type"] == "proposal")
        .unwrap()
        .clone();
    assert_eq!(
        proposal["data"]["content"],
        "[gpt] Use a modular monolith and measure before splitting."
    );
    assert_eq!(proposal["data"]["provider"], "openai");
    // Usage from the stream's final chunk, not estimated.
    assert_eq!(proposal["data"]["usage"]["input_tokens"], 120);
    assert_eq!(proposal["data"]["usage"]["estimated"], false);
    let vote = m["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["agent"] == "gpt-4" && m["type"] == "vote")
        .unwrap()
        .clone();
    assert_eq!(
        vote["data"]["choice"], "demo",
        "the fenced JSON vote was parsed: {vote}"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_failing_provider_opens_its_breaker_and_the_debate_says_so() {
    let (base, calls) = start_fake(true).await;
    let app = spawn_app_with(&[
        ("OPENAI_API_KEY", "sk-test-key-123"),
        ("ARAGORA_OPENAI_BASE_URL", base.as_str()),
        ("ARAGORA_AGENT_MAX_ATTEMPTS", "1"),
        ("ARAGORA_BREAKER_FAILURE_THRESHOLD", "2"),
    ])
    .await;
    let r = app.client.post(app.url("/api/debates"))
        .json(&json!({"task": "t", "agents": ["gpt-4", "demo", "demo:1"], "rounds": 3, "min_rounds": 3}))
        .send().await.unwrap();
    let id = r.json::<Value>().await.unwrap()["debate_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let d = wait_finished(&app, &id).await;
    // The two demo seats carry the debate on.
    assert!(
        matches!(d["status"].as_str(), Some("completed" | "no_consensus")),
        "{d}"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "after two failures the breaker fails fast"
    );
    let ev: Value = app
        .get(&format!("/api/debates/{id}/events"))
        .await
        .json()
        .await
        .unwrap();
    let events = ev["events"].as_array().unwrap();
    let errors: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "agent_error")
        .collect();
    assert_eq!(errors.len(), 2);
    assert_eq!(errors[0]["agent"], "gpt-4");
    assert_eq!(errors[0]["data"]["kind"], "server_error");
    assert!(
        !errors[0]["data"]["error"]
            .as_str()
            .unwrap()
            .contains("sk-test"),
        "no key in events"
    );
    let open: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "circuit_open")
        .collect();
    assert_eq!(
        open.len(),
        1,
        "round 3 skips the agent and says so: {open:?}"
    );
    assert_eq!(open[0]["round"], 3);

    let b: Value = app
        .get("/api/agents/circuit-breakers")
        .await
        .json()
        .await
        .unwrap();
    let gpt = b["circuit_breakers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["agent"] == "gpt-4")
        .unwrap()
        .clone();
    assert_eq!(gpt["state"], "open");
    assert!(gpt["next_probe_at"].is_string());
    let health: Value = app.get("/api/health").await.json().await.unwrap();
    assert_eq!(health["status"], "degraded");
    assert_eq!(health["checks"]["circuit_breakers"]["open"], 1);

    let r = app
        .client
        .post(app.url("/api/agents/gpt-4/reset-circuit"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let health: Value = app.get("/api/health").await.json().await.unwrap();
    assert_eq!(health["status"], "healthy");
    app.stop().await.unwrap();
}

/// A proxy in front of OpenAI: `json` answers every request (streamed or not) with one JSON
/// document; otherwise streamed requests get an event stream cut in the middle of an event.
async fn start_proxy(json_always: bool) -> String {
    let app = Router::new()
        .route(
            "/v1/chat/completions",
            post(move |Json(body): Json<Value>| async move {
                let whole = json!({
                    "id": "c", "model": body["model"], "object": "chat.completion",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "[proxy] fine"}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 2}
                });
                if json_always || body["stream"] != true {
                    return Json(whole).into_response();
                }
                let broken = "data: {\"choices\": [{\"delta\": {\"content\": \"par";
                ([("content-type", "text/event-stream")], Body::from(broken)).into_response()
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/v1")
}

#[tokio::test]
async fn agent_test_takes_the_streaming_path_a_debate_takes() {
    for (json_always, ok) in [(false, false), (true, true)] {
        let base = start_proxy(json_always).await;
        let app = spawn_app_with(&[
            ("OPENAI_API_KEY", "sk-test-key-123"),
            ("ARAGORA_OPENAI_BASE_URL", base.as_str()),
            ("ARAGORA_AGENT_MAX_ATTEMPTS", "1"),
        ])
        .await;
        let t: Value = app
            .client
            .post(app.url("/api/debug/agent-test"))
            .json(&json!({"agent": "gpt-4", "prompt": "hello"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(t["ok"], ok, "json_always={json_always}: {t}");
        if ok {
            // A proxy answering `stream: true` with one JSON document works, streamed.
            assert_eq!(t["response"], "[proxy] fine");
            assert_eq!(t["streamed"], true);
            assert_eq!(t["deltas"], 1);
        } else {
            // A broken stream is found by the diagnostic, not first by a debate.
            assert_eq!(t["error"]["kind"], "malformed", "{t}");
        }
        app.stop().await.unwrap();
    }
}

/// Every variable of the provider catalogue reaches the running server through the config:
/// a key for keyless Ollama (for an authenticating proxy in front of it) is sent as a bearer
/// token, to the address ARAGORA_OLLAMA_BASE_URL names.
#[tokio::test]
async fn an_ollama_key_set_in_the_environment_reaches_the_provider() {
    let seen: Arc<std::sync::Mutex<Vec<Option<String>>>> = Arc::default();
    let recorded = seen.clone();
    let app = Router::new().route(
        "/v1/chat/completions",
        post(move |headers: HeaderMap, Json(body): Json<Value>| {
            let recorded = recorded.clone();
            async move {
                let auth = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                recorded.lock().unwrap().push(auth);
                Json(json!({
                    "model": body["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "[ollama] hi"}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 2}
                }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let base = format!("http://{addr}/v1");

    let app = spawn_app_with(&[
        ("ARAGORA_OLLAMA_BASE_URL", base.as_str()),
        ("OLLAMA_API_KEY", "ollama-proxy-key-42"),
        ("ARAGORA_AGENT_MAX_ATTEMPTS", "1"),
    ])
    .await;
    let t: Value = app
        .client
        .post(app.url("/api/debug/agent-test"))
        .json(&json!({"agent": "ollama:llama3.2", "prompt": "hello"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(t["ok"], true, "{t}");
    assert_eq!(t["response"], "[ollama] hi");
    assert_eq!(
        *seen.lock().unwrap(),
        [Some("Bearer ollama-proxy-key-42".to_owned())]
    );
    app.stop().await.unwrap();
}
