//! Health endpoints. Public, and they always answer: every dependency check has its own short
//! timeout and the checks run concurrently, so a dead database yields 503 `unhealthy` within
//! the check budget instead of a hanging request. A round of checks is shared by every call
//! within `health_cache_ms` ([`HealthProbe`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::routes;

use super::ApiRouter;
use crate::app::AppState;

pub fn router() -> ApiRouter {
    ApiRouter::new()
        .public(routes!(get_health))
        .public(routes!(get_live))
        .public(routes!(get_ready))
}

/// `GET /api/health` body: status, per-dependency checks, pool and breaker state.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthResponse {
    /// `healthy` (200), `degraded` (200) or `unhealthy` (503).
    #[schema(example = "healthy")]
    pub status: &'static str,
    pub version: &'static str,
    pub uptime_seconds: u64,
    /// When the dependency checks reported here ran: one round answers every call within
    /// `health_cache_ms`.
    #[schema(value_type = String, format = DateTime)]
    pub checked_at: chrono::DateTime<chrono::Utc>,
    pub checks: HealthChecks,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HealthChecks {
    pub database: DependencyCheck,
    pub redis: DependencyCheck,
    pub websocket: WebsocketCheck,
    pub circuit_breakers: BreakerCounts,
    /// Resident memory of the process, MiB.
    pub memory_mb: u64,
    pub active_debates: usize,
}

/// One dependency: `ok` with its latency, `error` with a public reason, or `disabled`.
#[derive(Debug, Serialize, ToSchema)]
pub struct DependencyCheck {
    #[schema(example = "ok")]
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
    /// Database only: `sqlite` or `postgres`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<&'static str>,
    /// Database only: the connection pool.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolCheck>,
    /// Database only: `ok`, or `failing` while its storage refuses writes (disk full,
    /// read-only, I/O errors) — the server is then `degraded`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub writes: Option<&'static str>,
    /// Database only, with `writes: failing`: what is wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub writes_error: Option<&'static str>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PoolCheck {
    pub size: u32,
    pub idle: u32,
    pub max: u32,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebsocketCheck {
    pub status: &'static str,
    pub connections: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BreakerCounts {
    pub open: usize,
    pub half_open: usize,
}

/// `{"status": …}` bodies of the liveness and readiness probes.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProbeResponse {
    #[schema(example = "ready")]
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
}

/// Outcome of one dependency check.
#[derive(Clone)]
enum Check {
    Ok(Duration),
    Failed(String),
    Disabled,
}

/// One round of dependency checks, shared by every health and readiness call while fresh.
#[derive(Clone)]
struct Round {
    at: Instant,
    checked_at: chrono::DateTime<chrono::Utc>,
    database: Check,
    redis: Check,
    /// The storage fault while the database refuses writes (checked only when it answers).
    writes: Option<crate::store::StorageFault>,
    memory_bytes: u64,
}

/// The dependency checks behind `/api/health` and `/api/health/ready`, single-flight with a
/// short cache: one round runs at a time, and its result answers every call for `period`.
/// A burst of probes (load balancers, dashboards, scripts) then costs one database ping,
/// one Redis ping and one /proc read per period instead of one per call.
pub struct HealthProbe {
    period: Duration,
    last: arc_swap::ArcSwapOption<Round>,
    /// Held while a round runs; callers that find the result stale wait here for it.
    running: tokio::sync::Mutex<()>,
    /// The last write probe: when, and the fault it met. At most one a second.
    write_probe: parking_lot::Mutex<Option<(Instant, Option<crate::store::StorageFault>)>>,
    /// The last `/api/health` body and what it was made of: a call that finds the same
    /// inputs answers with the same bytes instead of serialising them again.
    body: parking_lot::Mutex<Option<(BodyInputs, StatusCode, axum::body::Bytes)>>,
}

/// Everything a `/api/health` body is made of: the round (by when it ran) and the values read
/// live on each call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BodyInputs {
    round: Instant,
    writes: Option<crate::store::StorageFault>,
    limiter_off_redis: bool,
    breakers: (usize, usize),
    uptime_seconds: u64,
    pool: (u32, u32, u32),
    connections: usize,
    active_debates: usize,
}

impl HealthProbe {
    pub fn new(period: Duration) -> Self {
        HealthProbe {
            period,
            last: arc_swap::ArcSwapOption::empty(),
            running: tokio::sync::Mutex::new(()),
            write_probe: parking_lot::Mutex::new(None),
            body: parking_lot::Mutex::new(None),
        }
    }

    fn fresh(&self) -> Option<Arc<Round>> {
        self.last
            .load_full()
            .filter(|round| round.at.elapsed() < self.period)
    }

    /// The current round: the cached one while fresh, else a new one (run by the first
    /// caller, awaited by the others).
    async fn round(&self, state: &AppState) -> Arc<Round> {
        if let Some(round) = self.fresh() {
            return round;
        }
        let _running = self.running.lock().await;
        // Someone else may have finished a round while this call waited.
        if let Some(round) = self.fresh() {
            return round;
        }
        let (database, redis) = tokio::join!(check_database(state), check_redis(state));
        let writes = if matches!(database, Check::Ok(_)) {
            self.check_writes(state).await
        } else {
            None
        };
        let round = Arc::new(Round {
            at: Instant::now(),
            checked_at: chrono::Utc::now(),
            database,
            redis,
            writes,
            memory_bytes: crate::telemetry::resident_memory_bytes(),
        });
        self.last.store(Some(round.clone()));
        round
    }

    /// Whether the database takes writes: a one-row write at most once a second. A storage
    /// fault starts (or continues) a fault episode; other failures are the reachability
    /// check's job.
    async fn check_writes(&self, state: &AppState) -> Option<crate::store::StorageFault> {
        let fresh = self
            .write_probe
            .lock()
            .filter(|(at, _)| at.elapsed() < Duration::from_secs(1));
        match fresh {
            Some((_, fault)) => fault,
            None => {
                let probe = tokio::time::timeout(
                    state.config.http.health_check_timeout,
                    state.store.write_probe(),
                )
                .await;
                let fault = match probe {
                    Ok(Err(e)) => e.storage_fault().inspect(|f| {
                        crate::store::note_storage_fault(*f, &e.to_string());
                    }),
                    _ => None,
                };
                *self.write_probe.lock() = Some((Instant::now(), fault));
                fault
            }
        }
    }
}

async fn timed<F, E>(budget: Duration, fut: F) -> Check
where
    F: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let started = Instant::now();
    match tokio::time::timeout(budget, fut).await {
        Ok(Ok(())) => Check::Ok(started.elapsed()),
        Ok(Err(e)) => Check::Failed(e.to_string()),
        Err(_) => Check::Failed(format!("no answer within {} ms", budget.as_millis())),
    }
}

async fn check_database(state: &AppState) -> Check {
    let check = timed(state.config.http.health_check_timeout, state.store.ping()).await;
    if let Check::Failed(detail) = &check {
        tracing::warn!(target: "aragora::health", error = %detail, "health: database check failed");
    }
    check
}

async fn check_redis(state: &AppState) -> Check {
    let Some(redis) = &state.redis else {
        return Check::Disabled;
    };
    let mut check = timed(state.config.http.health_check_timeout, redis.ping()).await;
    // Redis answering PING is not enough while the rate limiter still decides in memory:
    // give it the chance to switch back now, and report what it actually uses.
    if matches!(check, Check::Ok(_))
        && state.ratelimit.redis_failing()
        && !state.ratelimit.probe_redis().await
    {
        check = Check::Failed("the rate limiter cannot use redis".into());
    }
    crate::telemetry::metrics::redis_up().set(if matches!(check, Check::Ok(_)) {
        1.0
    } else {
        0.0
    });
    if let Check::Failed(detail) = &check {
        tracing::warn!(target: "aragora::health", error = %detail, "health: redis check failed");
    }
    check
}

impl DependencyCheck {
    /// Details of a failure (hosts, users) go to the log, not to this public endpoint.
    fn from_check(check: &Check, public_error: &'static str) -> Self {
        let (status, latency_ms, error) = match check {
            Check::Ok(latency) => ("ok", Some(latency.as_millis() as u64), None),
            Check::Failed(_) => ("error", None, Some(public_error)),
            Check::Disabled => ("disabled", None, None),
        };
        DependencyCheck {
            status,
            latency_ms,
            error,
            backend: None,
            pool: None,
            writes: None,
            writes_error: None,
        }
    }
}

/// Service health with each dependency check.
#[utoipa::path(
    get,
    path = "/health",
    tag = "health",
    responses(
        (status = 200, description = "healthy or degraded", body = HealthResponse),
        (status = 503, description = "unhealthy: the database does not answer", body = HealthResponse),
    )
)]
pub async fn get_health(State(state): State<AppState>) -> Response {
    let round = state.health.round(&state).await;
    let Round {
        ref database,
        redis: ref checked_redis,
        writes,
        memory_bytes,
        checked_at,
        ..
    } = *round;
    // What changes between rounds without a check is read live: a storage fault met by a
    // real write (a probe that writes is no proof that larger writes succeed: the episode
    // ends with the next real write), and a rate limiter that gave up on Redis.
    let writes = if matches!(database, Check::Ok(_)) {
        writes.or_else(crate::store::storage_failing)
    } else {
        None
    };
    let limiter_off = matches!(checked_redis, Check::Ok(_)) && state.ratelimit.redis_failing();
    let (open, half_open) = state.debates.agents().breaker_counts();
    let pool = state.store.pool_status();
    let uptime_seconds = state.started_at.elapsed().as_secs();
    let connections = state.ws.connections();
    let active_debates = state.debates.active();
    let inputs = BodyInputs {
        round: round.at,
        writes,
        limiter_off_redis: limiter_off,
        breakers: (open, half_open),
        uptime_seconds,
        pool: (pool.size, pool.idle, pool.max),
        connections,
        active_debates,
    };
    if let Some((cached, code, bytes)) = &*state.health.body.lock()
        && *cached == inputs
    {
        return json_bytes(*code, bytes.clone());
    }
    let limiter_off_redis = Check::Failed("the rate limiter cannot use redis".into());
    let redis = if limiter_off {
        &limiter_off_redis
    } else {
        checked_redis
    };
    let status = if matches!(database, Check::Failed(_)) {
        "unhealthy"
    } else if matches!(redis, Check::Failed(_)) || open > 0 || writes.is_some() {
        "degraded"
    } else {
        "healthy"
    };
    let body = HealthResponse {
        status,
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds,
        checked_at,
        checks: HealthChecks {
            database: DependencyCheck {
                backend: Some(state.store.backend().as_str()),
                pool: Some(PoolCheck {
                    size: pool.size,
                    idle: pool.idle,
                    max: pool.max,
                }),
                writes: matches!(database, Check::Ok(_)).then_some(if writes.is_some() {
                    "failing"
                } else {
                    "ok"
                }),
                writes_error: writes.map(crate::store::StorageFault::describe),
                ..DependencyCheck::from_check(database, "database unreachable")
            },
            redis: DependencyCheck::from_check(redis, "redis unreachable"),
            websocket: WebsocketCheck {
                status: "ok",
                connections,
            },
            circuit_breakers: BreakerCounts { open, half_open },
            memory_mb: memory_bytes / (1024 * 1024),
            active_debates,
        },
    };
    let code = if status == "unhealthy" {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let bytes = match serde_json::to_vec(&body) {
        Ok(bytes) => axum::body::Bytes::from(bytes),
        Err(_) => return (code, Json(body)).into_response(),
    };
    *state.health.body.lock() = Some((inputs, code, bytes.clone()));
    json_bytes(code, bytes)
}

fn json_bytes(code: StatusCode, bytes: axum::body::Bytes) -> Response {
    (
        code,
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )],
        bytes,
    )
        .into_response()
}

/// Liveness: the process is up and serving; never touches a dependency.
#[utoipa::path(
    get,
    path = "/health/live",
    tag = "health",
    responses((status = 200, description = "alive", body = ProbeResponse))
)]
pub async fn get_live() -> Json<ProbeResponse> {
    Json(ProbeResponse {
        status: "alive",
        reason: None,
    })
}

/// Readiness: the database answers and the server is not draining. Load balancers stop
/// sending traffic as soon as shutdown starts.
#[utoipa::path(
    get,
    path = "/health/ready",
    tag = "health",
    responses(
        (status = 200, description = "ready", body = ProbeResponse),
        (status = 503, description = "not_ready or shutting_down", body = ProbeResponse),
    )
)]
pub async fn get_ready(State(state): State<AppState>) -> Response {
    let unavailable = |status, reason| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(ProbeResponse { status, reason }),
        )
            .into_response()
    };
    if state.shutdown.is_cancelled() {
        return unavailable("shutting_down", None);
    }
    match state.health.round(&state).await.database {
        Check::Failed(_) => unavailable("not_ready", Some("database unreachable")),
        _ => Json(ProbeResponse {
            status: "ready",
            reason: None,
        })
        .into_response(),
    }
}
