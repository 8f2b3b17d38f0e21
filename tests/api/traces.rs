//! OpenTelemetry traces, received by a real OTLP receiver in the test (HTTP/protobuf decoded
//! with the OTLP protobuf definitions, and gRPC served with tonic): the span tree of a demo
//! debate under the caller's `traceparent`, an OpenAI-shaped agent call with the GenAI
//! attributes (and its content only when asked), a debate resumed after a restart in the
//! same trace, and a dead collector changing nothing but a counter.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use prost::Message as _;
use serde_json::{Value, json};

use crate::durable::{DEBATE, provider_env, recording_provider};
use crate::helpers::{free_port, http};
use crate::process::Server;

/// One received span, flattened.
#[derive(Debug, Clone)]
struct Got {
    name: String,
    trace: String,
    id: String,
    parent: String,
    kind: i32,
    status: i32,
    attrs: HashMap<String, String>,
    service: String,
}

type Spans = Arc<Mutex<Vec<Got>>>;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Any::StringValue(s)) => s.clone(),
        Some(Any::IntValue(i)) => i.to_string(),
        Some(Any::DoubleValue(d)) => d.to_string(),
        Some(Any::BoolValue(b)) => b.to_string(),
        Some(Any::ArrayValue(a)) => a
            .values
            .iter()
            .map(|v| text(&Some(v.clone())))
            .collect::<Vec<_>>()
            .join(","),
        _ => String::new(),
    }
}

fn collect(request: ExportTraceServiceRequest, into: &Spans) {
    let mut out = into.lock().unwrap();
    for rs in request.resource_spans {
        let service = rs
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
            .map(|a| text(&a.value))
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                out.push(Got {
                    name: s.name,
                    trace: hex(&s.trace_id),
                    id: hex(&s.span_id),
                    parent: hex(&s.parent_span_id),
                    kind: s.kind,
                    status: s.status.map_or(0, |st| st.code),
                    attrs: s
                        .attributes
                        .iter()
                        .map(|a| (a.key.clone(), text(&a.value)))
                        .collect(),
                    service: service.clone(),
                });
            }
        }
    }
}

/// An OTLP/HTTP receiver: `POST /v1/traces` with a protobuf body.
async fn http_receiver() -> (String, Spans) {
    let spans: Spans = Arc::default();
    let sink = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let sink = sink.clone();
            async move {
                let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                collect(request, &sink);
                (
                    [("content-type", "application/x-protobuf")],
                    ExportTraceServiceResponse::default().encode_to_vec(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), spans)
}

struct Grpc(Spans);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        collect(request.into_inner(), &self.0);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An OTLP/gRPC receiver (the collector's TraceService).
fn grpc_receiver() -> (String, Spans) {
    let spans: Spans = Arc::default();
    let port = free_port();
    let service = TraceServiceServer::new(Grpc(spans.clone()));
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve(([127, 0, 0, 1], port).into())
            .await
            .unwrap();
    });
    (format!("http://127.0.0.1:{port}"), spans)
}

fn otel_env(endpoint: &str, protocol: &str) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.to_owned()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.to_owned()),
        ("OTEL_SERVICE_NAME", "aragora-under-test".to_owned()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
    ]
}

fn start(dir: &std::path::Path, env: &[(&'static str, String)]) -> Server {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Server::start(dir, &env)
}

/// Wait until `done` holds for the received spans.
async fn wait_spans(spans: &Spans, what: &str, done: impl Fn(&[Got]) -> bool) -> Vec<Got> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = spans.lock().unwrap().clone();
        if done(&now) {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "{what}; received {} spans: {:#?}",
            now.len(),
            now.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_finished(base: &str, id: &str) -> Value {
    crate::durable::wait_all_finished(base, &[id.to_owned()], Duration::from_secs(30))
        .await
        .remove(0)
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_demo_debate_is_one_trace_under_the_callers_traceparent_over_http_protobuf() {
    let (endpoint, spans) = http_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path(), &otel_env(&endpoint, "http/protobuf"));
    server.wait_healthy().await;
    let base = server.url("");
    let r = http()
        .post(format!("{base}/api/debates"))
        .header("traceparent", format!("00-{TRACE}-{CALLER}-01"))
        .header("x-correlation-id", "corr-trace-test-1")
        .json(
            &json!({"task": "Trace me", "agents": ["demo", "demo"], "rounds": 2, "min_rounds": 2}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["debate_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let done = wait_finished(&base, &id).await;
    assert!(
        matches!(done["status"].as_str(), Some("completed" | "no_consensus")),
        "{done}"
    );

    let got = wait_spans(&spans, "the debate's spans", |s| {
        s.iter().any(|g| g.name == "debate" && g.trace == TRACE)
            && s.iter().filter(|g| g.name.starts_with("chat ")).count() >= 8
            && s.iter().filter(|g| g.name.starts_with("round ")).count() >= 2
    })
    .await;
    // The request: a server span, child of the caller's span, with the correlation id.
    let request = got
        .iter()
        .find(|g| g.name == "POST /api/debates")
        .expect("the request span");
    assert_eq!(request.trace, TRACE);
    assert_eq!(request.parent, CALLER);
    assert_eq!(request.kind, 2, "SPAN_KIND_SERVER");
    assert_eq!(request.attrs["correlation_id"], "corr-trace-test-1");
    assert_eq!(request.attrs["http.route"], "/api/debates");
    assert_eq!(request.attrs["http.response.status_code"], "202");
    assert_eq!(request.service, "aragora-under-test");
    // The debate run continues the request's trace, a child of the request span.
    let debate = got.iter().find(|g| g.name == "debate").unwrap();
    assert_eq!(debate.trace, TRACE);
    assert_eq!(debate.parent, request.id);
    assert_eq!(debate.attrs["aragora.debate.id"], id);
    // Rounds under the debate, phases under rounds, agent calls under phases.
    let rounds: Vec<&Got> = got
        .iter()
        .filter(|g| g.name.starts_with("round "))
        .collect();
    assert!(
        rounds
            .iter()
            .all(|r| r.parent == debate.id && r.trace == TRACE)
    );
    let phases: Vec<&Got> = got
        .iter()
        .filter(|g| g.attrs.contains_key("phase"))
        .collect();
    for name in [
        "proposal round 1",
        "critique round 1",
        "vote round 1",
        "revision round 2",
    ] {
        let phase = phases
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("phase span {name}"));
        assert!(
            rounds.iter().any(|r| r.id == phase.parent),
            "{name} under a round"
        );
    }
    let calls: Vec<&Got> = got.iter().filter(|g| g.name.starts_with("chat ")).collect();
    for call in &calls {
        assert_eq!(call.trace, TRACE);
        assert!(
            phases.iter().any(|p| p.id == call.parent),
            "call under a phase"
        );
        assert_eq!(call.kind, 3, "SPAN_KIND_CLIENT");
        assert_eq!(call.attrs["gen_ai.operation.name"], "chat");
        assert_eq!(call.attrs["gen_ai.provider.name"], "demo");
        assert!(call.attrs.contains_key("gen_ai.request.model"));
        assert!(call.attrs.contains_key("gen_ai.usage.input_tokens"));
        assert!(call.attrs.contains_key("gen_ai.usage.output_tokens"));
        assert!(
            !call.attrs.contains_key("gen_ai.input.messages"),
            "no content unless asked"
        );
    }
    // No span of the exporter's own HTTP client, and no otel.* field in any log line.
    assert!(got.iter().all(|g| !g.name.contains("v1/traces")));
    server.signal(nix::sys::signal::Signal::SIGTERM);
    let (code, out, _) = server.wait_exit(Duration::from_secs(20));
    assert_eq!(code, 0);
    assert!(!out.contains("otel."), "otel.* fields stay out of the logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_openai_agent_call_over_grpc_carries_the_gen_ai_attributes_and_content_when_asked() {
    let (endpoint, spans) = grpc_receiver();
    let provider = recording_provider(Duration::from_millis(10), 42).await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = otel_env(&endpoint, "grpc");
    env.extend(provider_env(&provider.base));
    env.push((
        "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT",
        "true".into(),
    ));
    let mut server = start(dir.path(), &env);
    server.wait_healthy().await;
    let base = server.url("");
    let id = crate::durable::post_debate(&base, &DEBATE()).await;
    assert_eq!(wait_finished(&base, &id).await["status"], "completed");
    let calls = provider.calls.load(std::sync::atomic::Ordering::SeqCst);
    assert!(calls >= 3);
    let got = wait_spans(&spans, "a span for every OpenAI call", |s| {
        s.iter()
            .filter(|g| g.attrs.get("gen_ai.provider.name").map(String::as_str) == Some("openai"))
            .count()
            >= calls
    })
    .await;
    let call = got
        .iter()
        .find(|g| g.attrs.get("gen_ai.provider.name").map(String::as_str) == Some("openai"))
        .unwrap();
    assert_eq!(call.attrs["gen_ai.operation.name"], "chat");
    let model = &call.attrs["gen_ai.request.model"];
    assert_eq!(call.name, format!("chat {model}"));
    assert_eq!(call.attrs["gen_ai.usage.input_tokens"], "42");
    assert_eq!(call.attrs["gen_ai.usage.output_tokens"], "5");
    assert_eq!(call.attrs["aragora.agent"], "gpt-4");
    let input: Value = serde_json::from_str(&call.attrs["gen_ai.input.messages"]).unwrap();
    assert_eq!(input[0]["role"], "user");
    assert!(
        input[0]["parts"][0]["content"]
            .as_str()
            .unwrap()
            .contains("Monolith or microservices?")
    );
    let output: Value = serde_json::from_str(&call.attrs["gen_ai.output.messages"]).unwrap();
    assert_eq!(output[0]["role"], "assistant");
    // Each provider request carried the W3C context of its own call span.
    let sent = provider.traceparents.lock().unwrap().clone();
    assert!(!sent.is_empty());
    for traceparent in &sent {
        let traceparent = traceparent
            .as_deref()
            .expect("a traceparent on every provider call");
        let parts: Vec<&str> = traceparent.split('-').collect();
        assert_eq!(parts.len(), 4, "{traceparent}");
        let span = got
            .iter()
            .find(|g| g.trace == parts[1] && g.id == parts[2])
            .unwrap_or_else(|| panic!("{traceparent} names a received span"));
        assert!(span.name.starts_with("chat "), "{}", span.name);
    }
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_error_marks_its_span_failed_with_the_error_type() {
    let (endpoint, spans) = http_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = otel_env(&endpoint, "http/protobuf");
    // Nothing listens there: every call of this agent fails to connect.
    env.extend(provider_env(&format!(
        "http://127.0.0.1:{}/v1",
        free_port()
    )));
    let mut server = start(dir.path(), &env);
    server.wait_healthy().await;
    let base = server.url("");
    let id = crate::durable::post_debate(&base, &DEBATE()).await;
    wait_finished(&base, &id).await;
    let got = wait_spans(&spans, "a failed call's span", |s| {
        s.iter().any(|g| g.attrs.contains_key("error.type"))
    })
    .await;
    let failed = got
        .iter()
        .find(|g| g.attrs.get("error.type").map(String::as_str) == Some("connection"))
        .expect("a call failed with error.type connection");
    assert_eq!(failed.status, 2, "STATUS_CODE_ERROR");
    assert_eq!(failed.attrs["gen_ai.provider.name"], "openai");
}

/// A debate handed back at shutdown and resumed after the restart: both runs in one trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resumed_debate_continues_the_same_trace() {
    let (endpoint, spans) = http_receiver().await;
    let provider = recording_provider(Duration::from_millis(400), 10).await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = otel_env(&endpoint, "http/protobuf");
    env.extend(provider_env(&provider.base));
    let mut server = start(dir.path(), &env);
    server.wait_healthy().await;
    let base = server.url("");
    let r = http()
        .post(format!("{base}/api/debates"))
        .header("traceparent", format!("00-{TRACE}-{CALLER}-01"))
        .json(&DEBATE())
        .send()
        .await
        .unwrap();
    let id = r.json::<Value>().await.unwrap()["debate_id"]
        .as_str()
        .unwrap()
        .to_owned();
    crate::durable::wait_progress(&base, std::slice::from_ref(&id), 6).await;
    server.signal(nix::sys::signal::Signal::SIGTERM);
    let (code, _, _) = server.wait_exit(Duration::from_secs(30));
    assert_eq!(code, 0);
    let first = wait_spans(&spans, "the first run's debate span", |s| {
        s.iter().any(|g| g.name == "debate")
    })
    .await;
    let first_run = first
        .iter()
        .find(|g| g.name == "debate")
        .unwrap()
        .id
        .clone();

    let mut server = start(dir.path(), &env);
    server.wait_healthy().await;
    let done = wait_finished(&server.url(""), &id).await;
    assert_eq!(done["status"], "completed");
    let got = wait_spans(&spans, "the resumed run's debate span", |s| {
        s.iter().filter(|g| g.name == "debate").count() >= 2
    })
    .await;
    let runs: Vec<&Got> = got.iter().filter(|g| g.name == "debate").collect();
    assert_eq!(runs.len(), 2);
    assert!(runs.iter().all(|r| r.trace == TRACE), "{runs:#?}");
    let second = runs.iter().find(|r| r.id != first_run).unwrap();
    assert_eq!(second.attrs["aragora.debate.previous_status"], "running");
    assert_eq!(second.attrs["aragora.debate.id"], id);
}

/// No collector at the endpoint: requests and debates are unaffected, and what could not be
/// sent is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_collector_changes_nothing_but_the_dropped_counter() {
    let dead = format!("http://127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    let mut env = otel_env(&dead, "http/protobuf");
    env.push(("OTEL_EXPORTER_OTLP_TIMEOUT", "500".into()));
    let mut server = start(dir.path(), &env);
    server.wait_healthy().await;
    let base = server.url("");
    for _ in 0..50 {
        let r = http()
            .get(format!("{base}/api/health/live"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let id = crate::durable::post_debate(
        &base,
        &json!({"task": "No collector", "agents": ["demo", "demo"], "rounds": 1}),
    )
    .await;
    let done = wait_finished(&base, &id).await;
    assert!(
        matches!(done["status"].as_str(), Some("completed" | "no_consensus")),
        "{done}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = http()
            .get(format!("{base}/api/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let dropped = metrics
            .lines()
            .find(|l| l.starts_with("aragora_otel_spans_dropped_total{reason=\"export_failed\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if dropped >= 50.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dropped spans not counted:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.signal(nix::sys::signal::Signal::SIGTERM);
    let (code, _, _) = server.wait_exit(Duration::from_secs(20));
    assert_eq!(code, 0, "a dead collector does not hold up the shutdown");
}

#[tokio::test]
async fn an_unknown_otlp_protocol_stops_the_start_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = crate::process::command(
        dir.path(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon"),
        ],
    )
    .args(["serve", "--api-port", "0", "--ws-port", "0"])
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("OTEL_EXPORTER_OTLP_PROTOCOL"), "{stderr}");
    assert!(stderr.contains("http/protobuf or grpc"), "{stderr}");
}
