//! Operator actions: `POST /api/debug/connectivity-check`, `POST /api/debug/memory-dump`,
//! `POST /api/admin/cleanup-caches`. Admin or owner when auth is on.

use std::path::Path;
use std::time::Duration;

use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use utoipa::IntoParams;
use utoipa_axum::routes;

use super::ApiRouter;
use crate::app::AppState;
use crate::error::{ApiError, ErrorCode, error_response};
use crate::ops::caches::{self, CleanupReport};
use crate::ops::connectivity::{self, ConnectivityReport};
use crate::telemetry::profiling;

pub fn router() -> ApiRouter {
    ApiRouter::new()
        .admin(routes!(connectivity_check))
        .admin(routes!(memory_dump))
        .admin(routes!(cleanup_caches))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ConnectivityQuery {
    /// Timeout of each step (DNS, TCP, TLS, HTTP) in ms: 100..=10000, default 3000.
    pub timeout_ms: Option<u64>,
    /// Also check providers whose credentials are not set (default false).
    pub all: Option<bool>,
}

/// DNS, TCP, TLS and HTTP reachability of each configured provider, the database and Redis,
/// with the time of each step and the error of the one that failed. Bounded: every step has
/// its own timeout and the targets are checked concurrently. Admin or owner when auth is on.
#[utoipa::path(
    post,
    path = "/debug/connectivity-check",
    tag = "system",
    params(ConnectivityQuery),
    responses(
        (status = 200, description = "per-target steps", body = ConnectivityReport),
        (status = 422, description = "timeout_ms out of range", body = crate::error::ErrorBody),
    )
)]
pub async fn connectivity_check(
    State(state): State<AppState>,
    Query(query): Query<ConnectivityQuery>,
) -> Result<Json<ConnectivityReport>, ApiError> {
    let timeout_ms = query.timeout_ms.unwrap_or(3000);
    if !(100..=10_000).contains(&timeout_ms) {
        return Err(ApiError::Validation {
            field: "timeout_ms".into(),
            message: "timeout_ms must be between 100 and 10000".into(),
        });
    }
    let report = connectivity::check(
        &state,
        Duration::from_millis(timeout_ms),
        query.all.unwrap_or(false),
    )
    .await;
    for target in report.targets.iter().filter(|t| !t.ok) {
        let failed = target.steps.iter().find(|s| s.status == "failed");
        tracing::warn!(
            target: "aragora::ops",
            dependency = %target.name,
            step = failed.map_or("", |s| s.step),
            error = failed.and_then(|s| s.error.as_deref()).unwrap_or(""),
            "connectivity check failed"
        );
    }
    Ok(Json(report))
}

/// With ARAGORA_MEMORY_PROFILING=1: take a jemalloc heap profile and write
/// `/tmp/aragora_memory_dump.json` (`top_allocations`: bytes, count, site, frames); the body
/// is the same document. Off: 409 saying how to turn it on. Admin or owner when auth is on.
#[utoipa::path(
    post,
    path = "/debug/memory-dump",
    tag = "system",
    responses(
        (status = 200, description = "the dump (also written to /tmp/aragora_memory_dump.json)"),
        (status = 409, description = "profiling is off", body = crate::error::ErrorBody),
    )
)]
pub async fn memory_dump(State(state): State<AppState>) -> Response {
    if !state.config.logging.memory_profiling {
        return error_response(
            ErrorCode::MemoryProfilingDisabled,
            "memory profiling is off: set ARAGORA_MEMORY_PROFILING=1 (e.g. in \
             /etc/aragora/aragora.env) and restart the server (systemctl restart aragora)",
        );
    }
    if !profiling::profiler_enabled() {
        return error_response(
            ErrorCode::MemoryProfilerUnavailable,
            "ARAGORA_MEMORY_PROFILING=1 but jemalloc's heap profiler is not running in this \
             process: start it with `aragora serve` (which enables it at start-up) or set \
             MALLOC_CONF=prof:true",
        );
    }
    let result =
        tokio::task::spawn_blocking(|| profiling::dump(Path::new(profiling::DUMP_PATH), 50)).await;
    match result {
        Ok(Ok(dump)) => {
            tracing::info!(
                target: "aragora::ops",
                sites = dump.sites,
                sampled_live_bytes = dump.sampled_live_bytes,
                path = profiling::DUMP_PATH,
                "memory dump written"
            );
            let mut body = serde_json::to_value(&dump).unwrap_or_default();
            body["path"] = json!(profiling::DUMP_PATH);
            Json(body).into_response()
        }
        Ok(Err(detail)) => {
            ApiError::Internal(format!("memory dump failed: {detail}")).into_response()
        }
        Err(join) => ApiError::Internal(format!("memory dump task failed: {join}")).into_response(),
    }
}

/// Clear the server's rebuildable caches (database statement caches, allocator free pages)
/// and report what each freed, with RSS before and after. Admin or owner when auth is on.
#[utoipa::path(
    post,
    path = "/admin/cleanup-caches",
    tag = "system",
    responses((status = 200, description = "what was cleared", body = CleanupReport))
)]
pub async fn cleanup_caches(State(state): State<AppState>) -> Json<CleanupReport> {
    Json(caches::cleanup(&state).await)
}
