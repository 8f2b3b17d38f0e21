//! Retry and circuit-breaker policy for agent calls. Providers make exactly one attempt;
//! everything about "try again", "give up" and "stop calling a sick provider" lives here.
//!
//! - [`RetryPolicy`]: exponential backoff with full jitter, only for
//!   [`AgentError::is_retryable`] errors, honouring `Retry-After`.
//! - [`CircuitBreaker`]: one per agent name, closed → open after consecutive counted
//!   failures, open → half-open after `open_for`, half-open → closed after enough
//!   successful probes (or back to open on a failed probe).
//! - [`call_with_resilience`]: one agent call under both, bounded by one timeout for the
//!   whole call (attempts, backoff and all) and cancellable at any point.
//!
//! Time comes from `tokio::time::Instant`, so tests run the state machine under tokio's
//! paused clock (`start_paused`, `advance`) instead of sleeping.

use parking_lot::{Mutex, MutexGuard};
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use super::{AgentError, Completion, CompletionRequest, DeltaSink, Provider};

const TARGET: &str = "aragora::agents::resilience";

// ---------------------------------------------------------------------------------------
// Retry policy
// ---------------------------------------------------------------------------------------

/// How often and how patiently a failed attempt is repeated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included (1 = no retries).
    pub max_attempts: u32,
    /// Backoff cap of the first retry; doubles with every further retry.
    pub base_delay: Duration,
    /// Largest backoff cap.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(20),
        }
    }
}

impl RetryPolicy {
    /// No retries at all (one attempt).
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// Upper bound of the backoff after failed attempt number `attempt` (1-based):
    /// `min(max_delay, base_delay * 2^(attempt-1))`.
    pub fn backoff_cap(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(31));
        self.base_delay
            .checked_mul(factor)
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }

    /// Full-jitter backoff after failed attempt number `attempt`: uniform in
    /// `[0, backoff_cap(attempt)]`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let cap = self.backoff_cap(attempt).as_millis() as u64;
        Duration::from_millis(rand::rng().random_range(0..=cap))
    }
}

// ---------------------------------------------------------------------------------------
// Circuit breaker
// ---------------------------------------------------------------------------------------

/// Circuit breaker tuning (the same for every agent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive counted failures that open a closed breaker.
    pub failure_threshold: u32,
    /// How long an open breaker fails fast before letting probes through.
    pub open_for: Duration,
    /// Probes allowed at the same time while half-open.
    pub half_open_max_probes: u32,
    /// Successful probes that close a half-open breaker.
    pub success_threshold: u32,
}

impl From<&crate::config::BreakerConfig> for BreakerConfig {
    /// The operator's `breaker` section; the rest of the policy keeps its defaults.
    fn from(section: &crate::config::BreakerConfig) -> Self {
        BreakerConfig {
            failure_threshold: section.failure_threshold,
            open_for: section.open,
            success_threshold: section.success_threshold,
            ..BreakerConfig::default()
        }
    }
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            open_for: Duration::from_secs(60),
            half_open_max_probes: 1,
            success_threshold: 2,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls fail fast with `CircuitOpen` until the next probe time.
    Open,
    /// A limited number of probe calls go through; their outcome decides.
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    /// Value of the `aragora_circuit_breaker_state` gauge.
    pub fn gauge_value(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        }
    }
}

impl std::fmt::Display for BreakerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The most recent counted failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FailureRecord {
    /// RFC 3339 wall-clock time.
    pub at: String,
    /// `AgentError::kind()`, e.g. `timeout`, `server_error`.
    pub kind: String,
}

/// A breaker's state for the API (`GET /api/agents`, health).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct BreakerSnapshot {
    pub state: BreakerState,
    pub consecutive_failures: u32,
    pub last_failure: Option<FailureRecord>,
    /// RFC 3339; set while open or half-open.
    pub opened_at: Option<String>,
    /// RFC 3339; when an open breaker lets the next probe through.
    pub next_probe_at: Option<String>,
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    consecutive_failures: u32,
    last_failure: Option<FailureRecord>,
    opened_at: Option<Instant>,
    opened_at_wall: Option<chrono::DateTime<Utc>>,
    probes_in_flight: u32,
    probe_successes: u32,
    /// Wall time of the last transition (None: never left closed). Orders transitions shared
    /// between instances.
    changed_at_wall: Option<chrono::DateTime<Utc>>,
    /// Bumped on every transition, so outcomes of calls admitted in an earlier state
    /// (e.g. a slow call that started while closed and ends after the breaker opened)
    /// do not move the new state.
    generation: u64,
}

/// Per-agent circuit breaker. Thread-safe; share it through an `Arc`.
#[derive(Debug)]
pub struct CircuitBreaker {
    name: String,
    config: BreakerConfig,
    inner: Mutex<Inner>,
}

/// Admission to make one call, returned by [`CircuitBreaker::try_acquire`]. Report the
/// outcome with [`record_success`](BreakerPermit::record_success) or
/// [`record_failure`](BreakerPermit::record_failure); dropping it unreported (cancelled
/// call) frees a probe slot without counting either way.
#[derive(Debug)]
#[must_use = "report the call's outcome on the permit"]
pub struct BreakerPermit<'a> {
    breaker: &'a CircuitBreaker,
    generation: u64,
    probe: bool,
    done: bool,
}

impl BreakerPermit<'_> {
    /// Whether this call is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    pub fn record_success(mut self) {
        self.done = true;
        self.breaker.on_success(self.generation, self.probe);
    }

    /// Counts only if `error.counts_for_breaker()`; otherwise the call is neutral.
    pub fn record_failure(mut self, error: &AgentError) {
        self.done = true;
        self.breaker.on_failure(self.generation, self.probe, error);
    }
}

impl Drop for BreakerPermit<'_> {
    fn drop(&mut self) {
        if !self.done && self.probe {
            self.breaker.release_probe(self.generation);
        }
    }
}

impl CircuitBreaker {
    pub fn new(name: impl Into<String>, config: BreakerConfig) -> Self {
        let breaker = CircuitBreaker {
            name: name.into(),
            config,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                consecutive_failures: 0,
                last_failure: None,
                opened_at: None,
                opened_at_wall: None,
                probes_in_flight: 0,
                probe_successes: 0,
                changed_at_wall: None,
                generation: 0,
            }),
        };
        breaker.set_gauge(BreakerState::Closed);
        breaker
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// Current state (an open breaker whose `open_for` has passed reports half-open).
    pub fn state(&self) -> BreakerState {
        let mut inner = self.lock();
        self.refresh(&mut inner, Instant::now());
        inner.state
    }

    pub fn snapshot(&self) -> BreakerSnapshot {
        let mut inner = self.lock();
        self.refresh(&mut inner, Instant::now());
        let open_for =
            chrono::Duration::from_std(self.config.open_for).unwrap_or(chrono::Duration::MAX);
        BreakerSnapshot {
            state: inner.state,
            consecutive_failures: inner.consecutive_failures,
            last_failure: inner.last_failure.clone(),
            opened_at: inner.opened_at_wall.map(rfc3339),
            next_probe_at: match inner.state {
                BreakerState::Open => inner
                    .opened_at_wall
                    .and_then(|t| t.checked_add_signed(open_for))
                    .map(rfc3339),
                _ => None,
            },
        }
    }

    /// Ask to make one call. Closed: always admitted. Open: `CircuitOpen(time until the
    /// next probe)`. Half-open: admitted as a probe while fewer than
    /// `half_open_max_probes` probes are in flight, else `CircuitOpen(0)`.
    pub fn try_acquire(&self) -> Result<BreakerPermit<'_>, AgentError> {
        let now = Instant::now();
        let mut inner = self.lock();
        self.refresh(&mut inner, now);
        let probe = match inner.state {
            BreakerState::Closed => false,
            BreakerState::Open => {
                let until = inner.opened_at.map(|t| t + self.config.open_for);
                let wait = until.map_or(Duration::ZERO, |t| t.saturating_duration_since(now));
                return Err(AgentError::CircuitOpen(wait));
            }
            BreakerState::HalfOpen => {
                if inner.probes_in_flight >= self.config.half_open_max_probes.max(1) {
                    return Err(AgentError::CircuitOpen(Duration::ZERO));
                }
                inner.probes_in_flight += 1;
                true
            }
        };
        Ok(BreakerPermit {
            breaker: self,
            generation: inner.generation,
            probe,
            done: false,
        })
    }

    /// Operator action: close the breaker and forget the failure count.
    pub fn reset(&self) {
        let mut inner = self.lock();
        inner.consecutive_failures = 0;
        if inner.state != BreakerState::Closed {
            let from = inner.state;
            self.transition(&mut inner, BreakerState::Closed, Instant::now());
            tracing::warn!(
                target: TARGET,
                agent = %self.name,
                from = from.as_str(),
                to = "closed",
                "circuit_breaker {} {} -> closed: reset by operator",
                self.name,
                from
            );
        }
    }

    /// The state and the wall time it was entered (None: never left closed). A lazy
    /// open → half-open step is not reported: it is local timing, not news.
    pub fn last_transition(&self) -> (BreakerState, Option<chrono::DateTime<Utc>>) {
        let inner = self.lock();
        (inner.state, inner.changed_at_wall)
    }

    /// Another instance opened this agent's breaker at `opened_at`: fail fast here too until
    /// the same probe time. Ignored when that open period is already over.
    pub fn open_from_peer(&self, opened_at: chrono::DateTime<Utc>, peer: &str) {
        let elapsed = (Utc::now() - opened_at).to_std().unwrap_or_default();
        if elapsed >= self.config.open_for {
            return;
        }
        let mut inner = self.lock();
        if inner.state == BreakerState::Open {
            return;
        }
        let from = inner.state;
        let now = Instant::now();
        self.transition(&mut inner, BreakerState::Open, now);
        inner.opened_at = Some(now.checked_sub(elapsed).unwrap_or(now));
        inner.opened_at_wall = Some(opened_at);
        inner.changed_at_wall = Some(opened_at);
        tracing::warn!(
            target: TARGET,
            agent = %self.name,
            from = from.as_str(),
            to = "open",
            peer,
            "circuit_breaker {} {} -> open: opened on instance {}",
            self.name,
            from,
            peer
        );
    }

    /// Another instance closed this agent's breaker at `closed_at` (its probes succeeded, or
    /// an operator reset it).
    pub fn close_from_peer(&self, closed_at: chrono::DateTime<Utc>, peer: &str) {
        let mut inner = self.lock();
        if inner.state == BreakerState::Closed {
            inner.changed_at_wall = inner.changed_at_wall.max(Some(closed_at));
            return;
        }
        let from = inner.state;
        self.transition(&mut inner, BreakerState::Closed, Instant::now());
        inner.changed_at_wall = Some(closed_at);
        tracing::info!(
            target: TARGET,
            agent = %self.name,
            from = from.as_str(),
            to = "closed",
            peer,
            "circuit_breaker {} {} -> closed: closed on instance {}",
            self.name,
            from,
            peer
        );
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the state inconsistent in a way
        // that matters more than refusing all further calls would.
        self.inner.lock()
    }

    fn set_gauge(&self, state: BreakerState) {
        crate::telemetry::metrics::circuit_breaker_state(&self.name).set(state.gauge_value());
    }

    /// Open → half-open once `open_for` has passed.
    fn refresh(&self, inner: &mut Inner, now: Instant) {
        if inner.state != BreakerState::Open {
            return;
        }
        let due = inner
            .opened_at
            .is_none_or(|t| now >= t + self.config.open_for);
        if due {
            self.transition(inner, BreakerState::HalfOpen, now);
            tracing::info!(
                target: TARGET,
                agent = %self.name,
                from = "open",
                to = "half_open",
                "circuit_breaker {} open -> half_open after {:?}; allowing {} probe(s)",
                self.name,
                self.config.open_for,
                self.config.half_open_max_probes.max(1)
            );
        }
    }

    fn transition(&self, inner: &mut Inner, to: BreakerState, now: Instant) {
        inner.state = to;
        inner.changed_at_wall = Some(Utc::now());
        inner.generation += 1;
        inner.probes_in_flight = 0;
        inner.probe_successes = 0;
        match to {
            BreakerState::Open => {
                inner.opened_at = Some(now);
                inner.opened_at_wall = Some(Utc::now());
            }
            BreakerState::HalfOpen => {}
            BreakerState::Closed => {
                inner.opened_at = None;
                inner.opened_at_wall = None;
                inner.consecutive_failures = 0;
            }
        }
        self.set_gauge(to);
    }

    fn on_success(&self, generation: u64, probe: bool) {
        let mut inner = self.lock();
        if inner.generation != generation {
            return;
        }
        match inner.state {
            BreakerState::Closed => inner.consecutive_failures = 0,
            BreakerState::HalfOpen if probe => {
                inner.probes_in_flight = inner.probes_in_flight.saturating_sub(1);
                inner.probe_successes += 1;
                if inner.probe_successes >= self.config.success_threshold.max(1) {
                    let probes = inner.probe_successes;
                    self.transition(&mut inner, BreakerState::Closed, Instant::now());
                    tracing::info!(
                        target: TARGET,
                        agent = %self.name,
                        from = "half_open",
                        to = "closed",
                        "circuit_breaker {} half_open -> closed after {} successful probes",
                        self.name,
                        probes
                    );
                }
            }
            _ => {}
        }
    }

    fn on_failure(&self, generation: u64, probe: bool, error: &AgentError) {
        if !error.counts_for_breaker() {
            if probe {
                self.release_probe(generation);
            }
            return;
        }
        let mut inner = self.lock();
        inner.last_failure = Some(FailureRecord {
            at: rfc3339(Utc::now()),
            kind: error.kind().to_owned(),
        });
        if inner.generation != generation {
            return;
        }
        inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
        match inner.state {
            BreakerState::Closed
                if inner.consecutive_failures >= self.config.failure_threshold.max(1) =>
            {
                let failures = inner.consecutive_failures;
                self.transition(&mut inner, BreakerState::Open, Instant::now());
                tracing::warn!(
                    target: TARGET,
                    agent = %self.name,
                    from = "closed",
                    to = "open",
                    error_kind = error.kind(),
                    "circuit_breaker {} closed -> open after {} consecutive failures; \
                     failing fast for {:?}",
                    self.name,
                    failures,
                    self.config.open_for
                );
            }
            BreakerState::HalfOpen if probe => {
                self.transition(&mut inner, BreakerState::Open, Instant::now());
                tracing::warn!(
                    target: TARGET,
                    agent = %self.name,
                    from = "half_open",
                    to = "open",
                    error_kind = error.kind(),
                    "circuit_breaker {} half_open -> open: probe failed ({}); next probe in {:?}",
                    self.name,
                    error.kind(),
                    self.config.open_for
                );
            }
            _ => {}
        }
    }

    fn release_probe(&self, generation: u64) {
        let mut inner = self.lock();
        if inner.generation == generation && inner.state == BreakerState::HalfOpen {
            inner.probes_in_flight = inner.probes_in_flight.saturating_sub(1);
        }
    }
}

fn rfc3339(t: chrono::DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

// ---------------------------------------------------------------------------------------
// One call under the whole policy
// ---------------------------------------------------------------------------------------

/// A successful call.
#[derive(Debug, Clone, PartialEq)]
pub struct CallOutcome {
    pub completion: Completion,
    /// Wall time of the whole call, retries and backoff included.
    pub latency: Duration,
    /// Attempts made (1 = first try succeeded).
    pub attempts: u32,
}

/// Run one agent call with retries, the agent's circuit breaker, a timeout for the whole
/// call and cancellation.
///
/// - Every attempt asks the breaker first; an open breaker fails fast with
///   `CircuitOpen` (if it opens between attempts, the previous attempt's error is
///   returned instead). Each attempt's outcome is reported to the breaker.
/// - Only `is_retryable()` errors are retried, at most `policy.max_attempts` attempts,
///   with full-jitter exponential backoff; `RateLimited { retry_after: Some(d) }` waits
///   at least `d`. A backoff that would not leave time for another attempt before the
///   deadline ends the call with the last error instead of sleeping.
/// - `timeout` bounds everything; each attempt gets what is left. On expiry:
///   `Timeout(timeout)`.
/// - `cancel` returns `Cancelled` promptly, mid-attempt or mid-backoff.
///
/// The request side of an agent call's span, by the OpenTelemetry GenAI conventions; the
/// prompt only with `OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true`.
fn gen_ai_request(
    span: &tracing::Span,
    agent: &str,
    provider: &str,
    model: &str,
    request: &CompletionRequest,
) {
    use crate::telemetry::traces::{self, attribute};
    span.record("otel.name", format!("chat {model}"));
    attribute(span, "gen_ai.operation.name", "chat");
    attribute(
        span,
        "gen_ai.provider.name",
        traces::gen_ai_provider(provider).to_owned(),
    );
    attribute(span, "gen_ai.request.model", model.to_owned());
    attribute(
        span,
        "gen_ai.request.max_tokens",
        i64::from(request.max_tokens),
    );
    if let Some(t) = request.temperature {
        attribute(span, "gen_ai.request.temperature", f64::from(t));
    }
    attribute(span, "aragora.agent", agent.to_owned());
    if traces::capture_content() {
        let messages: Vec<serde_json::Value> = request
            .messages
            .iter()
            .map(|m| {
                serde_json::json!({
                    "role": m.role,
                    "parts": [{"type": "text", "content": m.content}],
                })
            })
            .collect();
        attribute(
            span,
            "gen_ai.system_instructions",
            serde_json::json!([{"type": "text", "content": request.system}]).to_string(),
        );
        attribute(
            span,
            "gen_ai.input.messages",
            serde_json::Value::Array(messages).to_string(),
        );
    }
}

/// The outcome side of an agent call's span: usage, response model and finish reason, or
/// the error type.
fn gen_ai_response(span: &tracing::Span, result: &Result<(Completion, u32), AgentError>) {
    use crate::telemetry::traces::{self, attribute};
    match result {
        Ok((completion, attempts)) => {
            attribute(
                span,
                "gen_ai.usage.input_tokens",
                completion.usage.input_tokens as i64,
            );
            attribute(
                span,
                "gen_ai.usage.output_tokens",
                completion.usage.output_tokens as i64,
            );
            attribute(span, "gen_ai.response.model", completion.model.clone());
            if let Some(reason) = &completion.finish_reason {
                attribute(
                    span,
                    "gen_ai.response.finish_reasons",
                    opentelemetry::Value::Array(
                        vec![opentelemetry::StringValue::from(reason.clone())].into(),
                    ),
                );
            }
            attribute(span, "aragora.attempts", i64::from(*attempts));
            if traces::capture_content() {
                attribute(
                    span,
                    "gen_ai.output.messages",
                    serde_json::json!([{
                        "role": "assistant",
                        "parts": [{"type": "text", "content": completion.text}],
                        "finish_reason": completion.finish_reason,
                    }])
                    .to_string(),
                );
            }
        }
        Err(error) => traces::error(span, error.kind(), &error.to_string()),
    }
}

/// Metrics: `aragora_agent_requests_total{agent,outcome}` (once per call; outcome
/// `success` or the error kind), `aragora_agent_retries_total{agent,error}`,
/// `aragora_agent_response_seconds{agent}` and `aragora_agent_tokens_total{agent,direction}`
/// for successful calls.
#[allow(clippy::too_many_arguments)]
pub async fn call_with_resilience(
    name: &str,
    provider: &dyn Provider,
    model: &str,
    request: &CompletionRequest,
    deltas: Option<&DeltaSink>,
    breaker: &CircuitBreaker,
    policy: &RetryPolicy,
    timeout: Duration,
    cancel: &CancellationToken,
) -> Result<CallOutcome, AgentError> {
    let started = Instant::now();
    // The GenAI client span of this call (its attributes reach the trace only, never a log).
    let span = tracing::info_span!("chat", agent = %name, otel.name = tracing::field::Empty, otel.kind = "client");
    if crate::telemetry::traces::enabled() {
        gen_ai_request(&span, name, provider.id(), model, request);
    }
    let result = tracing::Instrument::instrument(
        attempts_loop(
            name, provider, model, request, deltas, breaker, policy, timeout, cancel, started,
        ),
        span.clone(),
    )
    .await;
    let latency = started.elapsed();
    if crate::telemetry::traces::enabled() {
        gen_ai_response(&span, &result);
    }
    match result {
        Ok((completion, attempts)) => {
            crate::telemetry::metrics::agent_requests_total(name, "success").increment(1);
            crate::telemetry::metrics::agent_response_seconds(name).record(latency.as_secs_f64());
            crate::telemetry::metrics::agent_tokens_total(name, "input")
                .increment(completion.usage.input_tokens);
            crate::telemetry::metrics::agent_tokens_total(name, "output")
                .increment(completion.usage.output_tokens);
            tracing::debug!(
                target: TARGET,
                agent = %name,
                model = %model,
                attempts,
                latency_ms = latency.as_millis() as u64,
                "agent call succeeded"
            );
            Ok(CallOutcome {
                completion,
                latency,
                attempts,
            })
        }
        Err(error) => {
            crate::telemetry::metrics::agent_requests_total(name, error.kind()).increment(1);
            if !matches!(error, AgentError::Cancelled | AgentError::CircuitOpen(_)) {
                tracing::warn!(
                    target: TARGET,
                    agent = %name,
                    model = %model,
                    error_kind = error.kind(),
                    error = %error,
                    latency_ms = latency.as_millis() as u64,
                    "agent call failed"
                );
            }
            Err(error)
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn attempts_loop(
    name: &str,
    provider: &dyn Provider,
    model: &str,
    request: &CompletionRequest,
    deltas: Option<&DeltaSink>,
    breaker: &CircuitBreaker,
    policy: &RetryPolicy,
    timeout: Duration,
    cancel: &CancellationToken,
    started: Instant,
) -> Result<(Completion, u32), AgentError> {
    let deadline = started + timeout;
    let max_attempts = policy.max_attempts.max(1);
    let mut previous: Option<AgentError> = None;
    let mut attempt = 0;
    loop {
        attempt += 1;
        if cancel.is_cancelled() {
            return Err(AgentError::Cancelled);
        }
        if Instant::now() >= deadline {
            return Err(AgentError::Timeout(timeout));
        }
        let permit = match breaker.try_acquire() {
            Ok(permit) => permit,
            Err(open) => return Err(previous.unwrap_or(open)),
        };
        let outcome = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(AgentError::Cancelled),
            r = tokio::time::timeout_at(deadline, provider.complete(model, request, deltas)) => r,
        };
        let error = match outcome {
            Ok(Ok(completion)) => {
                permit.record_success();
                return Ok((completion, attempt));
            }
            Ok(Err(error)) => error,
            Err(_elapsed) => {
                let error = AgentError::Timeout(timeout);
                permit.record_failure(&error);
                return Err(error);
            }
        };
        permit.record_failure(&error);
        if !error.is_retryable() || attempt >= max_attempts {
            return Err(error);
        }

        let remaining = deadline.saturating_duration_since(Instant::now());
        let jittered = policy.backoff(attempt);
        let delay = match &error {
            AgentError::RateLimited {
                retry_after: Some(at_least),
            } => {
                if *at_least >= remaining {
                    tracing::info!(
                        target: TARGET,
                        agent = %name,
                        attempt,
                        retry_after_ms = at_least.as_millis() as u64,
                        remaining_ms = remaining.as_millis() as u64,
                        "giving up: Retry-After exceeds the remaining call budget"
                    );
                    return Err(error);
                }
                let delay = jittered.max(*at_least);
                if delay >= remaining { *at_least } else { delay }
            }
            _ => {
                if jittered >= remaining {
                    return Err(error);
                }
                jittered
            }
        };
        tracing::info!(
            target: TARGET,
            agent = %name,
            attempt,
            delay_ms = delay.as_millis() as u64,
            error_kind = error.kind(),
            error = %error,
            "retrying agent call"
        );
        crate::telemetry::metrics::agent_retries_total(name, error.kind()).increment(1);
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(AgentError::Cancelled),
            _ = tokio::time::sleep(delay) => {}
        }
        previous = Some(error);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::agents::Usage;

    /// A provider that answers from a script (one entry per call; the last entry repeats),
    /// optionally after a delay, and counts its calls.
    struct Scripted {
        script: Mutex<VecDeque<Result<&'static str, AgentError>>>,
        last: Mutex<Option<Result<&'static str, AgentError>>>,
        delay: Duration,
        calls: AtomicU32,
    }

    impl Scripted {
        fn new(script: Vec<Result<&'static str, AgentError>>) -> Arc<Self> {
            Self::slow(script, Duration::ZERO)
        }

        fn slow(script: Vec<Result<&'static str, AgentError>>, delay: Duration) -> Arc<Self> {
            Arc::new(Scripted {
                script: Mutex::new(script.into()),
                last: Mutex::new(None),
                delay,
                calls: AtomicU32::new(0),
            })
        }

        fn calls(&self) -> u32 {
            self.calls.load(Ordering::SeqCst)
        }
    }

    #[async_trait]
    impl Provider for Scripted {
        fn id(&self) -> &str {
            "scripted"
        }
        fn available(&self) -> bool {
            true
        }
        async fn complete(
            &self,
            model: &str,
            _request: &CompletionRequest,
            _deltas: Option<&DeltaSink>,
        ) -> Result<Completion, AgentError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let next = {
                let mut script = self.script.lock();
                let mut last = self.last.lock();
                match script.pop_front() {
                    Some(entry) => {
                        *last = Some(entry.clone());
                        entry
                    }
                    None => last.clone().expect("empty script"),
                }
            };
            if !self.delay.is_zero() {
                tokio::time::sleep(self.delay).await;
            }
            next.map(|text| Completion {
                text: text.to_owned(),
                usage: Usage::estimate("prompt", text),
                model: model.to_owned(),
                finish_reason: Some("stop".into()),
            })
        }
    }

    fn server_error() -> AgentError {
        AgentError::Server {
            status: 503,
            message: "overloaded".into(),
        }
    }

    fn bad_request() -> AgentError {
        AgentError::BadRequest {
            status: 400,
            message: "bad".into(),
        }
    }

    fn cfg() -> BreakerConfig {
        BreakerConfig::default()
    }

    async fn call(
        provider: &Scripted,
        breaker: &CircuitBreaker,
        policy: &RetryPolicy,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<CallOutcome, AgentError> {
        let request = CompletionRequest::single("system", "prompt");
        call_with_resilience(
            "test", provider, "m", &request, None, breaker, policy, timeout, cancel,
        )
        .await
    }

    fn fail_n(breaker: &CircuitBreaker, n: u32, error: &AgentError) {
        for _ in 0..n {
            breaker.try_acquire().unwrap().record_failure(error);
        }
    }

    // --- breaker state machine -----------------------------------------------------

    #[tokio::test(start_paused = true)]
    async fn breaker_opens_after_threshold_consecutive_counted_failures() {
        let b = CircuitBreaker::new("a", cfg());
        fail_n(&b, 4, &server_error());
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.snapshot().consecutive_failures, 4);
        // A success resets the streak.
        b.try_acquire().unwrap().record_success();
        assert_eq!(b.snapshot().consecutive_failures, 0);
        fail_n(&b, 4, &server_error());
        assert_eq!(b.state(), BreakerState::Closed);
        fail_n(
            &b,
            1,
            &AgentError::Auth {
                status: 401,
                message: "no".into(),
            },
        );
        assert_eq!(b.state(), BreakerState::Open);
        let snap = b.snapshot();
        assert_eq!(snap.state, BreakerState::Open);
        assert_eq!(snap.consecutive_failures, 5);
        assert_eq!(snap.last_failure.as_ref().unwrap().kind, "auth");
        let opened = chrono::DateTime::parse_from_rfc3339(snap.opened_at.as_ref().unwrap())
            .expect("rfc3339");
        let next = chrono::DateTime::parse_from_rfc3339(snap.next_probe_at.as_ref().unwrap())
            .expect("rfc3339");
        assert_eq!((next - opened).num_seconds(), 60);
        assert_eq!(
            serde_json::to_value(&snap).unwrap()["state"],
            serde_json::json!("open")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn non_counted_errors_do_not_trip_the_breaker() {
        let b = CircuitBreaker::new("a", cfg());
        for e in [
            bad_request(),
            AgentError::Cancelled,
            AgentError::MissingKey("X_API_KEY".into()),
        ] {
            fail_n(&b, 10, &e);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        let snap = b.snapshot();
        assert_eq!(snap.consecutive_failures, 0);
        assert!(snap.last_failure.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn open_breaker_fails_fast_without_calling_the_provider() {
        let b = CircuitBreaker::new("a", cfg());
        fail_n(&b, 5, &server_error());
        tokio::time::advance(Duration::from_secs(15)).await;
        let provider = Scripted::new(vec![Ok("hi")]);
        let err = call(
            &provider,
            &b,
            &RetryPolicy::default(),
            Duration::from_secs(30),
            &CancellationToken::new(),
        )
        .await
        .unwrap_err();
        assert_eq!(err, AgentError::CircuitOpen(Duration::from_secs(45)));
        assert_eq!(provider.calls(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_admits_limited_concurrent_probes_and_closes_after_successes() {
        let b = CircuitBreaker::new("a", cfg());
        fail_n(&b, 5, &server_error());
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(b.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(b.snapshot().next_probe_at, None);

        let probe = b.try_acquire().expect("first probe admitted");
        assert!(probe.is_probe());
        // Only one concurrent probe.
        assert!(matches!(b.try_acquire(), Err(AgentError::CircuitOpen(_))));
        probe.record_success();
        // One success is not enough (threshold 2).
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let probe = b.try_acquire().expect("second probe admitted");
        probe.record_success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.snapshot().consecutive_failures, 0);
        assert!(!b.try_acquire().unwrap().is_probe());
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_probe_limit_is_configurable() {
        let b = CircuitBreaker::new(
            "a",
            BreakerConfig {
                half_open_max_probes: 2,
                ..cfg()
            },
        );
        fail_n(&b, 5, &server_error());
        tokio::time::advance(Duration::from_secs(60)).await;
        let p1 = b.try_acquire().unwrap();
        let p2 = b.try_acquire().unwrap();
        assert!(b.try_acquire().is_err());
        // A dropped (cancelled) probe frees its slot without deciding anything.
        drop(p1);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let p3 = b.try_acquire().expect("slot freed");
        p2.record_success();
        p3.record_success();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probe_reopens_for_another_period() {
        let b = CircuitBreaker::new("a", cfg());
        fail_n(&b, 5, &server_error());
        tokio::time::advance(Duration::from_secs(60)).await;
        let probe = b.try_acquire().unwrap();
        probe.record_failure(&AgentError::Timeout(Duration::from_secs(1)));
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(
            b.try_acquire().unwrap_err(),
            AgentError::CircuitOpen(Duration::from_secs(60))
        );
        assert_eq!(b.snapshot().last_failure.unwrap().kind, "timeout");
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(b.state(), BreakerState::HalfOpen);
        // A non-counted probe failure neither closes nor reopens, and frees the slot.
        b.try_acquire().unwrap().record_failure(&bad_request());
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.try_acquire().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn stale_outcomes_from_before_a_transition_are_ignored() {
        let b = CircuitBreaker::new("a", cfg());
        let slow = b.try_acquire().unwrap(); // admitted while closed
        fail_n(&b, 5, &server_error());
        assert_eq!(b.state(), BreakerState::Open);
        slow.record_success(); // must not close an open breaker
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn reset_closes_the_breaker() {
        let b = CircuitBreaker::new("a", cfg());
        fail_n(&b, 5, &server_error());
        assert_eq!(b.state(), BreakerState::Open);
        b.reset();
        assert_eq!(b.state(), BreakerState::Closed);
        let snap = b.snapshot();
        assert_eq!(snap.consecutive_failures, 0);
        assert_eq!(snap.opened_at, None);
        assert!(!b.try_acquire().unwrap().is_probe());
        // It takes the full threshold again to reopen.
        fail_n(&b, 4, &server_error());
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn breaker_state_serializes_snake_case() {
        assert_eq!(
            serde_json::to_string(&BreakerState::HalfOpen).unwrap(),
            "\"half_open\""
        );
        assert_eq!(BreakerState::Open.gauge_value(), 2.0);
        assert_eq!(BreakerState::HalfOpen.gauge_value(), 1.0);
        assert_eq!(BreakerState::Closed.gauge_value(), 0.0);
    }

    // --- retry policy ----------------------------------------------------------------

    #[test]
    fn backoff_is_exponential_capped_and_jittered() {
        let p = RetryPolicy::default();
        assert_eq!(p.backoff_cap(1), Duration::from_millis(500));
        assert_eq!(p.backoff_cap(2), Duration::from_secs(1));
        assert_eq!(p.backoff_cap(3), Duration::from_secs(2));
        assert_eq!(p.backoff_cap(10), Duration::from_secs(20));
        assert_eq!(p.backoff_cap(200), Duration::from_secs(20));
        let samples: Vec<Duration> = (0..200).map(|_| p.backoff(2)).collect();
        assert!(samples.iter().all(|d| *d <= Duration::from_secs(1)));
        let distinct: std::collections::HashSet<_> = samples.iter().collect();
        assert!(distinct.len() > 10, "full jitter spreads delays");
    }

    #[tokio::test(start_paused = true)]
    async fn retries_retryable_errors_until_success() {
        let provider = Scripted::new(vec![
            Err(server_error()),
            Err(AgentError::Connection("reset".into())),
            Ok("done"),
        ]);
        let b = CircuitBreaker::new("a", cfg());
        let out = call(
            &provider,
            &b,
            &RetryPolicy::default(),
            Duration::from_secs(60),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
        assert_eq!(out.completion.text, "done");
        assert_eq!(out.attempts, 3);
        assert_eq!(provider.calls(), 3);
        // Backoff: at most 0.5 s + 1 s of (virtual) sleeping.
        assert!(out.latency <= Duration::from_millis(1500));
        // The success reset the breaker's streak.
        assert_eq!(b.snapshot().consecutive_failures, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn stops_at_max_attempts_with_the_last_error() {
        let provider = Scripted::new(vec![Err(server_error())]);
        let b = CircuitBreaker::new("a", cfg());
        let err = call(
            &provider,
            &b,
            &RetryPolicy::default(),
            Duration::from_secs(60),
            &CancellationToken::new(),
        )
        .await
        .unwrap_err();
        assert_eq!(err, server_error());
        assert_eq!(provider.calls(), 3);
        // Every attempt counted against the breaker.
        assert_eq!(b.snapshot().consecutive_failures, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn non_retryable_errors_are_not_retried() {
        for error in [
            AgentError::Auth {
                status: 401,
                message: "invalid x-api-key".into(),
            },
            bad_request(),
            AgentError::MissingKey("ANTHROPIC_API_KEY".into()),
        ] {
            let provider = Scripted::new(vec![Err(error.clone()), Ok("never")]);
            let b = CircuitBreaker::new("a", cfg());
            let err = call(
                &provider,
                &b,
                &RetryPolicy::default(),
                Duration::from_secs(60),
                &CancellationToken::new(),
            )
            .await
            .unwrap_err();
            assert_eq!(err, error);
            assert_eq!(provider.calls(), 1, "{error:?} must not be retried");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn honours_retry_after() {
        let provider = Scripted::new(vec![
            Err(AgentError::RateLimited {
                retry_after: Some(Duration::from_secs(7)),
            }),
            Ok("ok"),
        ]);
        let b = CircuitBreaker::new("a", cfg());
        let started = Instant::now();
        let out = call(
            &provider,
            &b,
            &RetryPolicy::default(),
            Duration::from_secs(60),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
        assert_eq!(out.attempts, 2);
        assert!(started.elapsed() >= Duration::from_secs(7));
        assert!(out.latency >= Duration::from_secs(7));
        assert!(out.latency < Duration::from_secs(8));
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_when_retry_after_exceeds_the_budget() {
        let limited = AgentError::RateLimited {
            retry_after: Some(Duration::from_secs(120)),
        };
        let provider = Scripted::new(vec![Err(limited.clone()), Ok("ok")]);
        let b = CircuitBreaker::new("a", cfg());
        let started = Instant::now();
        let err = call(
            &provider,
            &b,
            &RetryPolicy::default(),
            Duration::from_secs(30),
            &CancellationToken::new(),
        )
        .await
        .unwrap_err();
        assert_eq!(err, limited);
        assert_eq!(provider.calls(), 1);
        assert!(started.elapsed() < Duration::from_millis(1), "no sleeping");
    }

    #[tokio::test(start_paused = true)]
    async fn whole_call_timeout_bounds_attempts_and_backoff() {
        // Every attempt takes 4 s and fails; with 10 attempts allowed and a 10 s budget,
        // the call must end at the deadline with Timeout(10 s), not after 40 s.
        let provider = Scripted::slow(vec![Err(server_error())], Duration::from_secs(4));
        let b = CircuitBreaker::new("a", cfg());
        let policy = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(100),
        };
        let started = Instant::now();
        let err = call(
            &provider,
            &b,
            &policy,
            Duration::from_secs(10),
            &CancellationToken::new(),
        )
        .await
        .unwrap_err();
        assert_eq!(err, AgentError::Timeout(Duration::from_secs(10)));
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        assert_eq!(provider.calls(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_single_hanging_attempt_is_cut_at_the_deadline() {
        let provider = Scripted::slow(vec![Ok("late")], Duration::from_secs(3600));
        let b = CircuitBreaker::new("a", cfg());
        let started = Instant::now();
        let err = call(
            &provider,
            &b,
            &RetryPolicy::default(),
            Duration::from_secs(5),
            &CancellationToken::new(),
        )
        .await
        .unwrap_err();
        assert_eq!(err, AgentError::Timeout(Duration::from_secs(5)));
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert_eq!(provider.calls(), 1);
        assert_eq!(b.snapshot().last_failure.unwrap().kind, "timeout");
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_mid_backoff_returns_cancelled_promptly() {
        let provider = Scripted::new(vec![Err(AgentError::RateLimited {
            retry_after: Some(Duration::from_secs(20)),
        })]);
        let b = CircuitBreaker::new("a", cfg());
        let cancel = CancellationToken::new();
        let canceller = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            canceller.cancel();
        });
        let started = Instant::now();
        let err = call(
            &provider,
            &b,
            &RetryPolicy::default(),
            Duration::from_secs(60),
            &cancel,
        )
        .await
        .unwrap_err();
        assert_eq!(err, AgentError::Cancelled);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert_eq!(provider.calls(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_mid_attempt_frees_the_probe_slot() {
        let b = CircuitBreaker::new("a", cfg());
        fail_n(&b, 5, &server_error());
        tokio::time::advance(Duration::from_secs(60)).await;
        let provider = Scripted::slow(vec![Ok("slow")], Duration::from_secs(30));
        let cancel = CancellationToken::new();
        let canceller = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            canceller.cancel();
        });
        let err = call(
            &provider,
            &b,
            &RetryPolicy::default(),
            Duration::from_secs(60),
            &cancel,
        )
        .await
        .unwrap_err();
        assert_eq!(err, AgentError::Cancelled);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.try_acquire().unwrap().is_probe(), "probe slot released");
    }

    #[tokio::test(start_paused = true)]
    async fn already_cancelled_never_calls_the_provider() {
        let provider = Scripted::new(vec![Ok("x")]);
        let b = CircuitBreaker::new("a", cfg());
        let cancel = CancellationToken::new();
        cancel.cancel();
        let err = call(
            &provider,
            &b,
            &RetryPolicy::default(),
            Duration::from_secs(5),
            &cancel,
        )
        .await
        .unwrap_err();
        assert_eq!(err, AgentError::Cancelled);
        assert_eq!(provider.calls(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn breaker_opening_mid_call_stops_retries_with_the_real_error() {
        let b = CircuitBreaker::new(
            "a",
            BreakerConfig {
                failure_threshold: 2,
                ..cfg()
            },
        );
        let provider = Scripted::new(vec![Err(server_error())]);
        let err = call(
            &provider,
            &b,
            &RetryPolicy {
                max_attempts: 5,
                ..RetryPolicy::default()
            },
            Duration::from_secs(60),
            &CancellationToken::new(),
        )
        .await
        .unwrap_err();
        assert_eq!(err, server_error());
        assert_eq!(provider.calls(), 2);
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn five_failing_calls_open_then_probes_close_end_to_end() {
        let b = CircuitBreaker::new("a", cfg());
        let provider = Scripted::new(vec![
            Err(server_error()),
            Err(server_error()),
            Err(server_error()),
            Err(server_error()),
            Err(server_error()),
            Ok("back"),
        ]);
        let cancel = CancellationToken::new();
        let timeout = Duration::from_secs(30);
        let none = RetryPolicy::none();
        for _ in 0..5 {
            assert_eq!(
                call(&provider, &b, &none, timeout, &cancel)
                    .await
                    .unwrap_err(),
                server_error()
            );
        }
        assert!(matches!(
            call(&provider, &b, &none, timeout, &cancel).await,
            Err(AgentError::CircuitOpen(_))
        ));
        assert_eq!(provider.calls(), 5);
        tokio::time::advance(Duration::from_secs(60)).await;
        call(&provider, &b, &none, timeout, &cancel).await.unwrap();
        assert_eq!(b.state(), BreakerState::HalfOpen);
        call(&provider, &b, &none, timeout, &cancel).await.unwrap();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    /// Captures formatted log lines.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().clone()).unwrap()
        }
    }

    /// Hit every log callsite of this module once without a subscriber, so that no
    /// callsite is still being registered (with a cached "never" interest computed by
    /// another test's thread) when a capturing subscriber is installed.
    fn warm_up_callsites() {
        paused_runtime().block_on(async {
            let b = CircuitBreaker::new("warm-up", cfg());
            fail_n(&b, 5, &server_error());
            tokio::time::advance(Duration::from_secs(60)).await;
            b.try_acquire().unwrap().record_failure(&server_error());
            tokio::time::advance(Duration::from_secs(60)).await;
            b.try_acquire().unwrap().record_success();
            b.try_acquire().unwrap().record_success();
            fail_n(&b, 5, &server_error());
            b.reset();
            let p = Scripted::new(vec![Err(server_error()), Ok("x"), Err(bad_request())]);
            let limited = Scripted::new(vec![Err(AgentError::RateLimited {
                retry_after: Some(Duration::from_secs(3600)),
            })]);
            let policy = RetryPolicy::default();
            let t = Duration::from_secs(30);
            let c = CancellationToken::new();
            let b = CircuitBreaker::new("warm-up", cfg());
            for provider in [&p, &p, &limited] {
                let _ = call(provider, &b, &policy, t, &c).await;
            }
        });
        // Let a registration in progress on another thread finish.
        std::thread::sleep(Duration::from_millis(20));
    }

    fn capture_logs<T>(f: impl FnOnce() -> T) -> (T, String) {
        warm_up_callsites();
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        let out = tracing::subscriber::with_default(subscriber, || {
            // Callsites first hit by a concurrently running test (with no subscriber) may
            // have cached "never" in a race with this subscriber's registration; recompute.
            tracing::callsite::rebuild_interest_cache();
            f()
        });
        (out, captured.text())
    }

    fn paused_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
    }

    #[test]
    fn transitions_log_circuit_breaker_lines_and_set_the_gauge() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let rt = paused_runtime();
        let gauge = |name: &str| -> f64 {
            let text = handle.render();
            let prefix = format!("aragora_circuit_breaker_state{{agent=\"{name}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .unwrap_or_else(|| panic!("no gauge for {name} in {text}"))
                .trim()
                .parse()
                .unwrap()
        };
        let ((), logs) = capture_logs(|| {
            metrics::with_local_recorder(&recorder, || {
                rt.block_on(async {
                    let b = CircuitBreaker::new("gauge-agent", cfg());
                    assert_eq!(gauge("gauge-agent"), 0.0);
                    fail_n(&b, 5, &server_error());
                    assert_eq!(gauge("gauge-agent"), 2.0);
                    tokio::time::advance(Duration::from_secs(60)).await;
                    assert_eq!(b.state(), BreakerState::HalfOpen);
                    assert_eq!(gauge("gauge-agent"), 1.0);
                    b.try_acquire().unwrap().record_failure(&server_error());
                    assert_eq!(gauge("gauge-agent"), 2.0);
                    tokio::time::advance(Duration::from_secs(60)).await;
                    b.try_acquire().unwrap().record_success();
                    b.try_acquire().unwrap().record_success();
                    assert_eq!(gauge("gauge-agent"), 0.0);
                    fail_n(&b, 5, &server_error());
                    b.reset();
                    assert_eq!(gauge("gauge-agent"), 0.0);
                });
            });
        });
        let lines: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains("circuit_breaker"))
            .collect();
        let expected = [
            "circuit_breaker gauge-agent closed -> open after 5 consecutive failures",
            "circuit_breaker gauge-agent open -> half_open",
            "circuit_breaker gauge-agent half_open -> open: probe failed (server_error)",
            "circuit_breaker gauge-agent open -> half_open",
            "circuit_breaker gauge-agent half_open -> closed after 2 successful probes",
            "circuit_breaker gauge-agent closed -> open after 5 consecutive failures",
            "circuit_breaker gauge-agent open -> closed: reset by operator",
        ];
        assert_eq!(
            lines.len(),
            expected.len(),
            "one line per transition:\n{logs}"
        );
        for (line, want) in lines.iter().zip(expected) {
            assert!(line.contains(want), "{line:?} lacks {want:?}");
            assert!(line.contains("aragora::agents::resilience"), "{line}");
        }
    }

    #[test]
    fn calls_record_request_latency_token_metrics_and_log_retries() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let rt = paused_runtime();
        let (_, logs) = capture_logs(|| {
            metrics::with_local_recorder(&recorder, || {
                rt.block_on(async {
                    let b = CircuitBreaker::new("metered", cfg());
                    let ok = Scripted::new(vec![Err(server_error()), Ok("answer text")]);
                    let request = CompletionRequest::single("system", "prompt");
                    let cancel = CancellationToken::new();
                    let policy = RetryPolicy::default();
                    let t = Duration::from_secs(30);
                    call_with_resilience(
                        "metered", &*ok, "m", &request, None, &b, &policy, t, &cancel,
                    )
                    .await
                    .unwrap();
                    let bad = Scripted::new(vec![Err(bad_request())]);
                    call_with_resilience(
                        "metered", &*bad, "m", &request, None, &b, &policy, t, &cancel,
                    )
                    .await
                    .unwrap_err();
                });
            });
        });
        let text = handle.render();
        let usage = Usage::estimate("prompt", "answer text");
        for want in [
            "aragora_agent_requests_total{agent=\"metered\",outcome=\"success\"} 1".to_owned(),
            "aragora_agent_requests_total{agent=\"metered\",outcome=\"bad_request\"} 1".to_owned(),
            format!(
                "aragora_agent_tokens_total{{agent=\"metered\",direction=\"input\"}} {}",
                usage.input_tokens
            ),
            format!(
                "aragora_agent_tokens_total{{agent=\"metered\",direction=\"output\"}} {}",
                usage.output_tokens
            ),
            "aragora_agent_response_seconds_count{agent=\"metered\"} 1".to_owned(),
            "aragora_agent_retries_total{agent=\"metered\",error=\"server_error\"} 1".to_owned(),
        ] {
            assert!(text.contains(&want), "missing {want} in\n{text}");
        }
        let retry = logs
            .lines()
            .find(|l| l.contains("retrying agent call"))
            .unwrap_or_else(|| panic!("no retry log in {logs}"));
        for field in [
            "attempt=1",
            "delay_ms=",
            "error_kind=\"server_error\"",
            "agent=metered",
        ] {
            assert!(retry.contains(field), "{retry} lacks {field}");
        }
    }
}
