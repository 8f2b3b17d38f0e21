//! Prometheus metrics: one process-wide recorder, rendered at `GET /api/metrics` together with
//! the process collector (`telemetry::process`).
//!
//! Every metric of contract §6 is described here (HELP/TYPE lines, so `promtool check metrics`
//! accepts the exposition) and exported from the first scrape: the unlabelled ones and every
//! label value known up front (each debate status, rate-limit rule, configured agent with
//! each call outcome, the probed routes) are registered at zero when the recorder is
//! installed. Series of other routes and statuses appear with their first request.

use std::sync::OnceLock;

use metrics::{describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Latency buckets in seconds, from fast API calls to slow LLM answers.
const SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0,
];

/// Final debate statuses (`aragora_debates_total{status}` is pre-registered for each).
pub const FINAL_STATUSES: [&str; 6] = [
    "completed",
    "no_consensus",
    "timeout",
    "failed",
    "cancelled",
    "budget_exceeded",
];

/// Install the recorder once per process (later calls return the same handle, so several
/// in-process test servers share it).
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .expect("bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (e.g. by a test harness); metrics then
            // go there and this handle renders what it has.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            register_initial();
            handle
        })
        .clone()
}

/// Series handles of the HTTP request metrics, per worker thread, so a request costs a hash
/// of its method, route and status instead of building label strings and a metric key and
/// looking them up in the recorder's registry. Bounded: past [`HTTP_SERIES_CACHED`] distinct
/// series a thread goes through the registry like any other metric.
struct HttpSeries {
    method: axum::http::Method,
    route: Box<str>,
    status: u16,
    requests: metrics::Counter,
    duration: metrics::Histogram,
}

const HTTP_SERIES_CACHED: usize = 4096;

thread_local! {
    static HTTP_SERIES: std::cell::RefCell<(usize, std::collections::HashMap<u64, Vec<HttpSeries>>)> =
        std::cell::RefCell::new((0, std::collections::HashMap::new()));
}

fn http_handles(
    method: &axum::http::Method,
    route: &str,
    status: u16,
) -> (metrics::Counter, metrics::Histogram) {
    let labels = [
        ("method", method.to_string()),
        ("route", route.to_owned()),
        ("status", status.to_string()),
    ];
    let requests = metrics::counter!("aragora_http_requests_total", &labels);
    let duration = metrics::histogram!(
        "aragora_http_request_duration_seconds",
        "method" => method.to_string(),
        "route" => route.to_owned(),
    );
    (requests, duration)
}

/// Count one HTTP request (`aragora_http_requests_total{method,route,status}`) and record its
/// duration (`aragora_http_request_duration_seconds{method,route}`). `route` is the matched
/// route pattern, never a raw path.
pub fn record_http_request(
    method: &axum::http::Method,
    route: &str,
    status: u16,
    elapsed: std::time::Duration,
) {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    method.as_str().hash(&mut hasher);
    route.hash(&mut hasher);
    status.hash(&mut hasher);
    let hash = hasher.finish();
    HTTP_SERIES.with_borrow_mut(|(count, series)| {
        let found = series.get(&hash).and_then(|bucket| {
            bucket
                .iter()
                .find(|s| s.status == status && s.method == method && &*s.route == route)
        });
        if let Some(s) = found {
            s.requests.increment(1);
            s.duration.record(elapsed.as_secs_f64());
            return;
        }
        let (requests, duration) = http_handles(method, route, status);
        requests.increment(1);
        duration.record(elapsed.as_secs_f64());
        if *count < HTTP_SERIES_CACHED {
            *count += 1;
            series.entry(hash).or_default().push(HttpSeries {
                method: method.clone(),
                route: route.into(),
                status,
                requests,
                duration,
            });
        }
    });
}

/// The exposition: the recorder's metrics followed by the process collector.
pub fn render(handle: &PrometheusHandle) -> String {
    let mut text = handle.render();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&super::process::render());
    text
}

fn describe() {
    describe_counter!(
        "aragora_debates_total",
        "Debates finished, by final status."
    );
    describe_counter!(
        "aragora_debates_resumed_total",
        "Debates this instance continued from their event log, by reason (restart, crash, lease_expired, resumed_by_user)."
    );
    describe_counter!(
        "aragora_consensus_reached_total",
        "Debates that ended with consensus."
    );
    describe_gauge!("aragora_active_debates", "Debates running now.");
    describe_gauge!(
        "aragora_debates_queued",
        "Debates accepted and waiting for a worker."
    );
    describe_histogram!(
        "aragora_debate_duration_seconds",
        "Wall time of finished debates in seconds."
    );
    describe_histogram!(
        "aragora_agent_response_seconds",
        "Latency of one agent call (including retries) in seconds."
    );
    describe_counter!(
        "aragora_agent_requests_total",
        "Agent calls, by agent and outcome."
    );
    describe_counter!(
        "aragora_agent_tokens_total",
        "Tokens exchanged with providers, by agent and direction (input/output)."
    );
    describe_gauge!(
        "aragora_circuit_breaker_state",
        "Circuit breaker per agent: 0 closed, 1 half-open, 2 open."
    );
    describe_gauge!(
        "aragora_websocket_connections",
        "Open WebSocket connections."
    );
    describe_counter!(
        "aragora_ws_connection_errors_total",
        "WebSocket connections that ended in an error or were refused."
    );
    describe_counter!(
        "aragora_rate_limit_hits_total",
        "Requests refused by a rate limit, by rule."
    );
    describe_counter!(
        "aragora_http_requests_total",
        "HTTP requests, by method, route pattern and status."
    );
    describe_histogram!(
        "aragora_http_request_duration_seconds",
        "HTTP request latency in seconds, by method and route pattern."
    );
    describe_gauge!(
        "aragora_redis_up",
        "1 when Redis answered the last check, else 0 (also 0 when Redis is not configured)."
    );
    describe_gauge!(
        "aragora_redis_configured",
        "1 when ARAGORA_REDIS_URL is set (aragora_redis_up is meaningful only then)."
    );
    describe_gauge!(
        "aragora_db_pool_connections",
        "Database pool connections, by state (idle, in_use, max)."
    );
    describe_counter!(
        "aragora_otel_spans_exported_total",
        "Trace spans sent to the OTLP collector (0 unless OTEL_EXPORTER_OTLP_ENDPOINT is set)."
    );
    describe_counter!(
        "aragora_otel_spans_dropped_total",
        "Trace spans dropped instead of blocking: queue_full, export_failed (collector down or slow), shutdown."
    );
    describe_counter!(
        "aragora_receipts_issued_total",
        "Decision receipts issued by this instance, by whether they are signed."
    );
    describe_gauge!(
        "aragora_build_info",
        "Always 1; the version label names the running build."
    );
}

fn register_initial() {
    metrics::gauge!("aragora_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    register_http();
    for rule in crate::ratelimit::Rule::ALL {
        metrics::counter!("aragora_rate_limit_hits_total", "rule" => rule.name()).increment(0);
    }
    for status in FINAL_STATUSES {
        metrics::counter!("aragora_debates_total", "status" => status).increment(0);
    }
    for reason in ["restart", "crash", "lease_expired", "resumed_by_user"] {
        metrics::counter!("aragora_debates_resumed_total", "reason" => reason).increment(0);
    }
    metrics::counter!("aragora_consensus_reached_total").increment(0);
    let _ = metrics::histogram!("aragora_debate_duration_seconds");
    metrics::counter!("aragora_otel_spans_exported_total").increment(0);
    for reason in ["queue_full", "export_failed", "shutdown"] {
        metrics::counter!("aragora_otel_spans_dropped_total", "reason" => reason).increment(0);
    }
    for signed in ["true", "false"] {
        metrics::counter!("aragora_receipts_issued_total", "signed" => signed).increment(0);
    }
    metrics::counter!("aragora_ws_connection_errors_total").increment(0);
    metrics::gauge!("aragora_active_debates").set(0.0);
    metrics::gauge!("aragora_debates_queued").set(0.0);
    metrics::gauge!("aragora_websocket_connections").set(0.0);
    metrics::gauge!("aragora_redis_up").set(0.0);
    metrics::gauge!("aragora_redis_configured").set(0.0);
    for state in ["idle", "in_use", "max"] {
        metrics::gauge!("aragora_db_pool_connections", "state" => state).set(0.0);
    }
}

/// Every configured agent's series from the start: its circuit breaker closed (0), its calls
/// by outcome (success and each failure kind), its tokens by direction and its latency
/// histogram, so dashboards and `rate()` alerts read 0 rather than "no data".
pub fn register_agents<'a>(names: impl IntoIterator<Item = &'a str>) {
    for name in names {
        metrics::gauge!("aragora_circuit_breaker_state", "agent" => name.to_owned()).set(0.0);
        for outcome in std::iter::once("success").chain(crate::agents::AgentError::KINDS) {
            metrics::counter!("aragora_agent_requests_total", "agent" => name.to_owned(), "outcome" => outcome)
                .increment(0);
        }
        for direction in ["input", "output"] {
            metrics::counter!("aragora_agent_tokens_total", "agent" => name.to_owned(), "direction" => direction)
                .increment(0);
        }
        // Creating the handle registers the histogram (empty buckets, count 0).
        let _ = metrics::histogram!("aragora_agent_response_seconds", "agent" => name.to_owned());
    }
}

/// The routes every deployment's probes and scraper call, so the HTTP series exist before
/// the first request (method GET, status 200, count 0).
const PROBED_ROUTES: [&str; 4] = [
    "/api/health",
    "/api/health/live",
    "/api/health/ready",
    "/api/metrics",
];

fn register_http() {
    for route in PROBED_ROUTES {
        metrics::counter!("aragora_http_requests_total", "method" => "GET", "route" => route, "status" => "200")
            .increment(0);
        let _ = metrics::histogram!("aragora_http_request_duration_seconds", "method" => "GET", "route" => route);
    }
}
