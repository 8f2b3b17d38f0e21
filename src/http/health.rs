//! Health endpoints (contract §3). Public, and they always answer: every dependency check has
//! its own short timeout and the checks run concurrently, so a dead database yields 503
//! `unhealthy` within the check budget instead of a hanging request.

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::app::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/health", get(get_health))
        .route("/health/live", get(get_live))
        .route("/health/ready", get(get_ready))
}

/// Outcome of one dependency check.
enum Check {
    Ok(Duration),
    Failed(String),
    Disabled,
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
    let check = timed(state.config.health_check_timeout, state.store.ping()).await;
    if let Check::Failed(detail) = &check {
        tracing::warn!(target: "aragora::health", error = %detail, "health: database check failed");
    }
    check
}

async fn check_redis(state: &AppState) -> Check {
    let Some(redis) = &state.redis else {
        return Check::Disabled;
    };
    let check = timed(state.config.health_check_timeout, redis.ping()).await;
    metrics::gauge!("aragora_redis_up").set(if matches!(check, Check::Ok(_)) {
        1.0
    } else {
        0.0
    });
    if let Check::Failed(detail) = &check {
        tracing::warn!(target: "aragora::health", error = %detail, "health: redis check failed");
    }
    check
}

fn render(check: &Check, public_error: &str) -> Value {
    match check {
        Check::Ok(latency) => json!({"status": "ok", "latency_ms": latency.as_millis() as u64}),
        // Details (hosts, users) go to the log, not to this public endpoint.
        Check::Failed(_) => json!({"status": "error", "error": public_error}),
        Check::Disabled => json!({"status": "disabled"}),
    }
}

pub async fn get_health(State(state): State<AppState>) -> Response {
    let (database, redis) = tokio::join!(check_database(&state), check_redis(&state));
    let (open, half_open) = state.runtime.breaker_counts();
    let status = if matches!(database, Check::Failed(_)) {
        "unhealthy"
    } else if matches!(redis, Check::Failed(_)) || open > 0 {
        "degraded"
    } else {
        "healthy"
    };
    let mut database_json = render(&database, "database unreachable");
    database_json["backend"] = json!(state.store.backend().as_str());
    let pool = state.store.pool_status();
    database_json["pool"] = json!({"size": pool.size, "idle": pool.idle, "max": pool.max});
    let body = json!({
        "status": status,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.started_at.elapsed().as_secs(),
        "checks": {
            "database": database_json,
            "redis": render(&redis, "redis unreachable"),
            "websocket": {"status": "ok", "connections": state.ws.connections()},
            "circuit_breakers": {"open": open, "half_open": half_open},
            "memory_mb": resident_memory_mb(),
            "active_debates": state.runtime.active_debates(),
        }
    });
    let code = if status == "unhealthy" {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, Json(body)).into_response()
}

/// Liveness: the process is up and serving; never touches a dependency.
async fn get_live() -> Json<Value> {
    Json(json!({"status": "alive"}))
}

/// Readiness: the database answers and the server is not draining. Load balancers stop
/// sending traffic as soon as shutdown starts.
async fn get_ready(State(state): State<AppState>) -> Response {
    if state.shutdown.is_cancelled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "shutting_down"})),
        )
            .into_response();
    }
    match check_database(&state).await {
        Check::Failed(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready", "reason": "database unreachable"})),
        )
            .into_response(),
        _ => Json(json!({"status": "ready"})).into_response(),
    }
}

/// Resident set size of this process in MiB, from /proc (0 where /proc is unavailable).
pub fn resident_memory_mb() -> u64 {
    resident_memory_bytes() / (1024 * 1024)
}

pub fn resident_memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}
