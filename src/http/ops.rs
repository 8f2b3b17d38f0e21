//! Operator actions: `POST /api/debug/connectivity-check`, `POST /api/debug/memory-dump`,
//! `POST /api/admin/cleanup-caches`. Admin or owner when auth is on.

use std::path::Path;
use std::time::Duration;

use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
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

/// A heap profile: the document written to `/tmp/aragora_memory_dump.json` and where it
/// is. Fields in alphabetical order, as the API has always written them.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemoryDumpBody {
    /// jemalloc `stats.allocated` when the profile was taken: bytes the application holds.
    pub allocated_bytes: u64,
    /// jemalloc `stats.resident`.
    pub allocator_resident_bytes: u64,
    pub generated_at: String,
    pub lg_prof_sample: u32,
    /// Where the document was written.
    pub path: &'static str,
    pub pid: u32,
    /// The raw jemalloc profile (readable with `jeprof`).
    pub raw_profile: String,
    pub resident_memory_bytes: u64,
    /// Sum of `bytes` over all sites (the profiler's estimate of the live heap).
    pub sampled_live_bytes: u64,
    pub sites: usize,
    /// Largest sites first.
    pub top_allocations: Vec<AllocationBody>,
}

/// One allocation site. Fields in alphabetical order.
#[derive(Debug, Serialize, ToSchema)]
pub struct AllocationBody {
    /// Estimated live bytes allocated from this site.
    pub bytes: u64,
    /// Estimated live allocations from this site.
    pub count: u64,
    /// The symbolised stack, innermost first (allocator frames removed), at most 12 frames.
    pub frames: Vec<String>,
    /// The first frame outside the allocator: `function (file:line)`.
    pub site: String,
}

impl MemoryDumpBody {
    fn new(dump: profiling::MemoryDump, path: &'static str) -> Self {
        MemoryDumpBody {
            allocated_bytes: dump.allocated_bytes,
            allocator_resident_bytes: dump.allocator_resident_bytes,
            generated_at: dump.generated_at,
            lg_prof_sample: dump.lg_prof_sample,
            path,
            pid: dump.pid,
            raw_profile: dump.raw_profile,
            resident_memory_bytes: dump.resident_memory_bytes,
            sampled_live_bytes: dump.sampled_live_bytes,
            sites: dump.sites,
            top_allocations: dump
                .top_allocations
                .into_iter()
                .map(|a| AllocationBody {
                    bytes: a.bytes,
                    count: a.count,
                    frames: a.frames,
                    site: a.site,
                })
                .collect(),
        }
    }
}

/// With ARAGORA_MEMORY_PROFILING=1: take a jemalloc heap profile and write
/// `/tmp/aragora_memory_dump.json` (`top_allocations`: bytes, count, site, frames); the body
/// is the same document. Off: 409 saying how to turn it on. Admin or owner when auth is on.
#[utoipa::path(
    post,
    path = "/debug/memory-dump",
    tag = "system",
    responses(
        (status = 200, description = "the dump (also written to /tmp/aragora_memory_dump.json)", body = MemoryDumpBody),
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
            Json(MemoryDumpBody::new(dump, profiling::DUMP_PATH)).into_response()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_dump_writes_its_keys_in_alphabetical_order() {
        let body = MemoryDumpBody {
            allocated_bytes: 1,
            allocator_resident_bytes: 2,
            generated_at: "2026-01-01T00:00:00Z".into(),
            lg_prof_sample: 19,
            path: profiling::DUMP_PATH,
            pid: 7,
            raw_profile: "heap".into(),
            resident_memory_bytes: 3,
            sampled_live_bytes: 4,
            sites: 1,
            top_allocations: vec![AllocationBody {
                bytes: 4,
                count: 1,
                frames: vec!["f".into()],
                site: "s".into(),
            }],
        };
        let text = serde_json::to_string(&body).unwrap();
        assert_eq!(text, serde_json::to_value(&body).unwrap().to_string());
    }
}
