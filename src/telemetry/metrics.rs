//! Prometheus metrics: one process-wide recorder, rendered at `GET /api/metrics` together with
//! the process collector (`telemetry::process`).
//!
//! Every metric the server exports (docs/operations.md, "Metrics") is described here (HELP/TYPE lines, so `promtool check metrics`
//! accepts the exposition) and exported from the first scrape: the unlabelled ones and every
//! label value known up front (each debate status, rate-limit rule, configured agent with
//! each call outcome, the probed routes) are registered at zero when the recorder is
//! installed. Series of other routes and statuses appear with their first request.
//!
//! Rule: a metric's name is spelled once, here, in a const that also gives its type and HELP
//! text (`ALL` describes them all); code elsewhere records through the typed handle
//! functions below (`active_debates().set(n)`), never with a name of its own. A new metric is
//! a const, an entry in `ALL`, a handle function and, where its labels are known up front,
//! a line in `register_initial`.

use std::sync::OnceLock;

use metrics::{Counter, Gauge, Histogram, describe_counter, describe_gauge, describe_histogram};
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
    /// Series handles by a hash of (method, route, status); a fast non-cryptographic hash
    /// (the keys are our own route patterns, not caller input).
    static HTTP_SERIES: std::cell::RefCell<(usize, foldhash::HashMap<u64, Vec<HttpSeries>>)> =
        std::cell::RefCell::new((0, foldhash::HashMap::default()));
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
    let requests = metrics::counter!(HTTP_REQUESTS_TOTAL.name, &labels);
    let duration = metrics::histogram!(
        HTTP_REQUEST_DURATION_SECONDS.name,
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
    use std::hash::{BuildHasher, Hash, Hasher};
    let mut hasher = foldhash::fast::FixedState::default().build_hasher();
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

/// A metric: its name, spelled here once, its type and its HELP text.
struct Metric {
    name: &'static str,
    kind: Kind,
    help: &'static str,
}

enum Kind {
    Counter,
    Gauge,
    Histogram,
}

const fn counter(name: &'static str, help: &'static str) -> Metric {
    Metric {
        name,
        kind: Kind::Counter,
        help,
    }
}

const fn gauge(name: &'static str, help: &'static str) -> Metric {
    Metric {
        name,
        kind: Kind::Gauge,
        help,
    }
}

const fn histogram(name: &'static str, help: &'static str) -> Metric {
    Metric {
        name,
        kind: Kind::Histogram,
        help,
    }
}

const DEBATES_TOTAL: Metric = counter(
    "aragora_debates_total",
    "Debates finished, by final status.",
);
const DEBATES_RESUMED_TOTAL: Metric = counter(
    "aragora_debates_resumed_total",
    "Debates this instance continued from their event log, by reason (restart, crash, lease_expired, resumed_by_user).",
);
const CONSENSUS_REACHED_TOTAL: Metric = counter(
    "aragora_consensus_reached_total",
    "Debates that ended with consensus.",
);
const ACTIVE_DEBATES: Metric = gauge("aragora_active_debates", "Debates running now.");
const DEBATES_QUEUED: Metric = gauge(
    "aragora_debates_queued",
    "Debates accepted and waiting for a worker.",
);
const DEBATE_DURATION_SECONDS: Metric = histogram(
    "aragora_debate_duration_seconds",
    "Wall time of finished debates in seconds.",
);
const AGENT_RESPONSE_SECONDS: Metric = histogram(
    "aragora_agent_response_seconds",
    "Latency of one agent call (including retries) in seconds.",
);
const AGENT_REQUESTS_TOTAL: Metric = counter(
    "aragora_agent_requests_total",
    "Agent calls, by agent and outcome.",
);
const AGENT_TOKENS_TOTAL: Metric = counter(
    "aragora_agent_tokens_total",
    "Tokens exchanged with providers, by agent and direction (input/output).",
);
const AGENT_RETRIES_TOTAL: Metric = counter(
    "aragora_agent_retries_total",
    "Agent call attempts retried, by agent and the error that caused the retry.",
);
const CIRCUIT_BREAKER_STATE: Metric = gauge(
    "aragora_circuit_breaker_state",
    "Circuit breaker per agent: 0 closed, 1 half-open, 2 open.",
);
const WEBSOCKET_CONNECTIONS: Metric = gauge(
    "aragora_websocket_connections",
    "Open WebSocket connections.",
);
const WS_CONNECTION_ERRORS_TOTAL: Metric = counter(
    "aragora_ws_connection_errors_total",
    "WebSocket connections that ended in an error or were refused.",
);
const RATE_LIMIT_HITS_TOTAL: Metric = counter(
    "aragora_rate_limit_hits_total",
    "Requests refused by a rate limit, by rule.",
);
const HTTP_REQUESTS_TOTAL: Metric = counter(
    "aragora_http_requests_total",
    "HTTP requests, by method, route pattern and status.",
);
const HTTP_REQUEST_DURATION_SECONDS: Metric = histogram(
    "aragora_http_request_duration_seconds",
    "HTTP request latency in seconds, by method and route pattern.",
);
const REDIS_UP: Metric = gauge(
    "aragora_redis_up",
    "1 when Redis answered the last check, else 0 (also 0 when Redis is not configured).",
);
const REDIS_CONFIGURED: Metric = gauge(
    "aragora_redis_configured",
    "1 when ARAGORA_REDIS_URL is set (aragora_redis_up is meaningful only then).",
);
const DB_POOL_CONNECTIONS: Metric = gauge(
    "aragora_db_pool_connections",
    "Database pool connections, by state (idle, in_use, max).",
);
const OTEL_SPANS_EXPORTED_TOTAL: Metric = counter(
    "aragora_otel_spans_exported_total",
    "Trace spans sent to the OTLP collector (0 unless OTEL_EXPORTER_OTLP_ENDPOINT is set).",
);
const OTEL_SPANS_DROPPED_TOTAL: Metric = counter(
    "aragora_otel_spans_dropped_total",
    "Trace spans dropped instead of blocking: queue_full, export_failed (collector down or slow), shutdown.",
);
const RECEIPTS_ISSUED_TOTAL: Metric = counter(
    "aragora_receipts_issued_total",
    "Decision receipts issued by this instance, by whether they are signed.",
);
const BUILD_INFO: Metric = gauge(
    "aragora_build_info",
    "Always 1; the version label names the running build.",
);

/// Every metric, described (HELP and TYPE) when the recorder is installed.
const ALL: &[&Metric] = &[
    &DEBATES_TOTAL,
    &DEBATES_RESUMED_TOTAL,
    &CONSENSUS_REACHED_TOTAL,
    &ACTIVE_DEBATES,
    &DEBATES_QUEUED,
    &DEBATE_DURATION_SECONDS,
    &AGENT_RESPONSE_SECONDS,
    &AGENT_REQUESTS_TOTAL,
    &AGENT_TOKENS_TOTAL,
    &AGENT_RETRIES_TOTAL,
    &CIRCUIT_BREAKER_STATE,
    &WEBSOCKET_CONNECTIONS,
    &WS_CONNECTION_ERRORS_TOTAL,
    &RATE_LIMIT_HITS_TOTAL,
    &HTTP_REQUESTS_TOTAL,
    &HTTP_REQUEST_DURATION_SECONDS,
    &REDIS_UP,
    &REDIS_CONFIGURED,
    &DB_POOL_CONNECTIONS,
    &OTEL_SPANS_EXPORTED_TOTAL,
    &OTEL_SPANS_DROPPED_TOTAL,
    &RECEIPTS_ISSUED_TOTAL,
    &BUILD_INFO,
];

fn describe() {
    for metric in ALL {
        match metric.kind {
            Kind::Counter => describe_counter!(metric.name, metric.help),
            Kind::Gauge => describe_gauge!(metric.name, metric.help),
            Kind::Histogram => describe_histogram!(metric.name, metric.help),
        }
    }
}

// The handles, one function per metric: the only places that name a series. Each call looks
// the series up in the recorder (a no-op before `install`), as the `metrics` macros do.

/// `aragora_debates_total{status}`: one of [`FINAL_STATUSES`].
pub fn debates_total(status: &'static str) -> Counter {
    metrics::counter!(DEBATES_TOTAL.name, "status" => status)
}

/// `aragora_debates_resumed_total{reason}`: one of [`RESUME_REASONS`].
pub fn debates_resumed_total(reason: &'static str) -> Counter {
    metrics::counter!(DEBATES_RESUMED_TOTAL.name, "reason" => reason)
}

/// `aragora_consensus_reached_total`.
pub fn consensus_reached_total() -> Counter {
    metrics::counter!(CONSENSUS_REACHED_TOTAL.name)
}

/// `aragora_active_debates`.
pub fn active_debates() -> Gauge {
    metrics::gauge!(ACTIVE_DEBATES.name)
}

/// `aragora_debates_queued`.
pub fn debates_queued() -> Gauge {
    metrics::gauge!(DEBATES_QUEUED.name)
}

/// `aragora_debate_duration_seconds`.
pub fn debate_duration_seconds() -> Histogram {
    metrics::histogram!(DEBATE_DURATION_SECONDS.name)
}

/// `aragora_agent_response_seconds{agent}`.
pub fn agent_response_seconds(agent: &str) -> Histogram {
    metrics::histogram!(AGENT_RESPONSE_SECONDS.name, "agent" => agent.to_owned())
}

/// `aragora_agent_requests_total{agent,outcome}`: `success` or an [`AgentError`] kind.
///
/// [`AgentError`]: crate::agents::AgentError
pub fn agent_requests_total(agent: &str, outcome: &'static str) -> Counter {
    metrics::counter!(AGENT_REQUESTS_TOTAL.name, "agent" => agent.to_owned(), "outcome" => outcome)
}

/// `aragora_agent_tokens_total{agent,direction}`: `input` or `output`.
pub fn agent_tokens_total(agent: &str, direction: &'static str) -> Counter {
    metrics::counter!(AGENT_TOKENS_TOTAL.name, "agent" => agent.to_owned(), "direction" => direction)
}

/// `aragora_agent_retries_total{agent,error}`: the kind of the error retried.
pub fn agent_retries_total(agent: &str, error: &'static str) -> Counter {
    metrics::counter!(AGENT_RETRIES_TOTAL.name, "agent" => agent.to_owned(), "error" => error)
}

/// `aragora_circuit_breaker_state{agent}`.
pub fn circuit_breaker_state(agent: &str) -> Gauge {
    metrics::gauge!(CIRCUIT_BREAKER_STATE.name, "agent" => agent.to_owned())
}

/// `aragora_websocket_connections`.
pub fn websocket_connections() -> Gauge {
    metrics::gauge!(WEBSOCKET_CONNECTIONS.name)
}

/// `aragora_ws_connection_errors_total`.
pub fn ws_connection_errors_total() -> Counter {
    metrics::counter!(WS_CONNECTION_ERRORS_TOTAL.name)
}

/// `aragora_rate_limit_hits_total{rule}`.
pub fn rate_limit_hits_total(rule: crate::ratelimit::Rule) -> Counter {
    metrics::counter!(RATE_LIMIT_HITS_TOTAL.name, "rule" => rule.name())
}

/// `aragora_redis_up`.
pub fn redis_up() -> Gauge {
    metrics::gauge!(REDIS_UP.name)
}

/// `aragora_redis_configured`.
pub fn redis_configured() -> Gauge {
    metrics::gauge!(REDIS_CONFIGURED.name)
}

/// `aragora_db_pool_connections{state}`: `idle`, `in_use` or `max`.
pub fn db_pool_connections(state: &'static str) -> Gauge {
    metrics::gauge!(DB_POOL_CONNECTIONS.name, "state" => state)
}

/// `aragora_otel_spans_exported_total`.
pub fn otel_spans_exported_total() -> Counter {
    metrics::counter!(OTEL_SPANS_EXPORTED_TOTAL.name)
}

/// `aragora_otel_spans_dropped_total{reason}`: one of [`SPAN_DROP_REASONS`].
pub fn otel_spans_dropped_total(reason: &'static str) -> Counter {
    metrics::counter!(OTEL_SPANS_DROPPED_TOTAL.name, "reason" => reason)
}

/// `aragora_receipts_issued_total{signed}`.
pub fn receipts_issued_total(signed: bool) -> Counter {
    metrics::counter!(RECEIPTS_ISSUED_TOTAL.name, "signed" => if signed { "true" } else { "false" })
}

/// Why a debate was resumed (`aragora_debates_resumed_total{reason}`).
pub const RESUME_REASONS: [&str; 4] = ["restart", "crash", "lease_expired", "resumed_by_user"];

/// Why trace spans were dropped (`aragora_otel_spans_dropped_total{reason}`).
pub const SPAN_DROP_REASONS: [&str; 3] = ["queue_full", "export_failed", "shutdown"];

fn register_initial() {
    metrics::gauge!(BUILD_INFO.name, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    register_http();
    for rule in crate::ratelimit::Rule::ALL {
        rate_limit_hits_total(rule).increment(0);
    }
    for status in FINAL_STATUSES {
        debates_total(status).increment(0);
    }
    for reason in RESUME_REASONS {
        debates_resumed_total(reason).increment(0);
    }
    consensus_reached_total().increment(0);
    let _ = debate_duration_seconds();
    otel_spans_exported_total().increment(0);
    for reason in SPAN_DROP_REASONS {
        otel_spans_dropped_total(reason).increment(0);
    }
    for signed in [true, false] {
        receipts_issued_total(signed).increment(0);
    }
    ws_connection_errors_total().increment(0);
    active_debates().set(0.0);
    debates_queued().set(0.0);
    websocket_connections().set(0.0);
    redis_up().set(0.0);
    redis_configured().set(0.0);
    for state in ["idle", "in_use", "max"] {
        db_pool_connections(state).set(0.0);
    }
}

/// Every configured agent's series from the start: its circuit breaker closed (0), its calls
/// by outcome (success and each failure kind), its tokens by direction and its latency
/// histogram, so dashboards and `rate()` alerts read 0 rather than "no data".
pub fn register_agents<'a>(names: impl IntoIterator<Item = &'a str>) {
    for name in names {
        circuit_breaker_state(name).set(0.0);
        for outcome in std::iter::once("success").chain(crate::agents::AgentError::KINDS) {
            agent_requests_total(name, outcome).increment(0);
        }
        for direction in ["input", "output"] {
            agent_tokens_total(name, direction).increment(0);
        }
        // Creating the handle registers the histogram (empty buckets, count 0).
        let _ = agent_response_seconds(name);
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
        metrics::counter!(HTTP_REQUESTS_TOTAL.name, "method" => "GET", "route" => route, "status" => "200")
            .increment(0);
        let _ = metrics::histogram!(HTTP_REQUEST_DURATION_SECONDS.name, "method" => "GET", "route" => route);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_named_once_with_the_suffix_its_type_needs() {
        let mut names: Vec<&str> = ALL.iter().map(|m| m.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len(), "a name is listed twice");
        for metric in ALL {
            assert!(metric.name.starts_with("aragora_"), "{}", metric.name);
            match metric.kind {
                // Prometheus convention, checked by promtool.
                Kind::Counter => assert!(metric.name.ends_with("_total"), "{}", metric.name),
                // The only histogram buckets configured are those of `_seconds` metrics.
                Kind::Histogram => assert!(metric.name.ends_with("_seconds"), "{}", metric.name),
                Kind::Gauge => assert!(!metric.name.ends_with("_total"), "{}", metric.name),
            }
        }
    }
}
