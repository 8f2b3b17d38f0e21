//! `POST /api/admin/cleanup-caches`: clear what this server caches and can rebuild, and say
//! what each clearing freed. Data (debates, events, the recent-errors buffer, circuit
//! breakers) is never touched.
//!
//! * `db_statement_cache` — the prepared statements sqlx keeps per pooled connection
//!   (idle connections only; they are re-prepared on next use).
//! * `allocator_free_pages` — memory jemalloc holds for reuse (dirty and muzzy pages of every
//!   arena), returned to the OS now instead of after its decay time.
//!
//! Process RSS is read before and after.

use serde::Serialize;

use crate::app::AppState;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CacheCleared {
    pub name: &'static str,
    pub description: &'static str,
    /// Bytes returned, where measurable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub freed_bytes: Option<u64>,
    /// What was dropped, in the cache's own units.
    #[schema(value_type = Object)]
    pub freed: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CleanupReport {
    pub caches: Vec<CacheCleared>,
    pub rss_before_bytes: u64,
    pub rss_after_bytes: u64,
    /// `rss_before_bytes - rss_after_bytes` (0 if RSS grew meanwhile).
    pub rss_freed_bytes: u64,
}

pub async fn cleanup(state: &AppState) -> CleanupReport {
    let rss_before = crate::telemetry::resident_memory_bytes();
    let mut caches = Vec::new();

    let statements = state.store.clear_statement_caches().await;
    caches.push(CacheCleared {
        name: "db_statement_cache",
        description: "prepared statements cached by idle database connections",
        freed_bytes: None,
        freed: serde_json::json!({
            "connections": statements.connections,
            "statements": statements.statements,
        }),
    });

    let before = crate::telemetry::profiling::allocator_stats();
    let arenas = tokio::task::spawn_blocking(crate::telemetry::profiling::purge_arenas)
        .await
        .unwrap_or(0);
    let after = crate::telemetry::profiling::allocator_stats();
    caches.push(CacheCleared {
        name: "allocator_free_pages",
        description: "freed memory the allocator (jemalloc) kept for reuse, returned to the OS",
        freed_bytes: Some(before.resident.saturating_sub(after.resident)),
        freed: serde_json::json!({
            "arenas_purged": arenas,
            "allocator_resident_before_bytes": before.resident,
            "allocator_resident_after_bytes": after.resident,
        }),
    });

    let rss_after = crate::telemetry::resident_memory_bytes();
    tracing::info!(
        target: "aragora::ops",
        rss_before,
        rss_after,
        statements = statements.statements,
        "caches cleared"
    );
    CleanupReport {
        caches,
        rss_before_bytes: rss_before,
        rss_after_bytes: rss_after,
        rss_freed_bytes: rss_before.saturating_sub(rss_after),
    }
}
