//! `GET /api/metrics`: Prometheus text exposition; 404 when METRICS_ENABLED=false. Gauges that
//! describe the present (pool, WebSocket connections, Redis reachability) are refreshed at each
//! scrape; the process collector is read from /proc at each scrape.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use utoipa_axum::routes;

use super::ApiRouter;
use crate::app::AppState;
use crate::error::{ErrorCode, error_response};

pub fn router() -> ApiRouter {
    ApiRouter::new().public(routes!(get_metrics))
}

/// Prometheus text exposition of the server's metrics.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "observability",
    responses(
        (status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain", body = String),
        (status = 404, description = "METRICS_ENABLED=false", body = crate::error::ErrorBody),
    )
)]
pub async fn get_metrics(State(state): State<AppState>) -> Response {
    let Some(handle) = state.metrics.as_ref() else {
        return error_response(
            ErrorCode::MetricsDisabled,
            "metrics are disabled (METRICS_ENABLED=false)",
        );
    };
    let pool = state.store.pool_status();
    crate::telemetry::metrics::db_pool_connections("idle").set(f64::from(pool.idle));
    crate::telemetry::metrics::db_pool_connections("in_use")
        .set(f64::from(pool.size.saturating_sub(pool.idle)));
    crate::telemetry::metrics::db_pool_connections("max").set(f64::from(pool.max));
    crate::telemetry::metrics::websocket_connections().set(state.ws.connections() as f64);
    crate::telemetry::metrics::active_debates().set(state.debates.active() as f64);
    match &state.redis {
        Some(redis) => {
            crate::telemetry::metrics::redis_configured().set(1.0);
            let up = tokio::time::timeout(state.config.http.health_check_timeout, redis.ping())
                .await
                .is_ok_and(|r| r.is_ok());
            crate::telemetry::metrics::redis_up().set(if up { 1.0 } else { 0.0 });
        }
        None => {
            crate::telemetry::metrics::redis_configured().set(0.0);
            crate::telemetry::metrics::redis_up().set(0.0);
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::telemetry::metrics::render(handle),
    )
        .into_response()
}
