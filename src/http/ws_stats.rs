//! `GET /api/ws/stats`: WebSocket connections, subscriptions, traffic, drops and limits.

use axum::Json;
use axum::extract::State;
use utoipa_axum::routes;

use super::ApiRouter;
use crate::app::AppState;
use crate::ws::WsStats;

pub fn router() -> ApiRouter {
    ApiRouter::new().public(routes!(get_ws_stats))
}

/// WebSocket server statistics.
#[utoipa::path(
    get,
    path = "/ws/stats",
    tag = "observability",
    responses((status = 200, description = "connections, per-IP max and peak, subscriptions, messages sent, slow clients dropped, errors, limits, event bus", body = WsStats))
)]
pub async fn get_ws_stats(State(state): State<AppState>) -> Json<serde_json::Value> {
    let mut body = serde_json::to_value(state.ws.stats()).unwrap_or_default();
    let bus = state.debates.bus();
    body["event_bus"] = serde_json::json!({"backend": bus.backend(), "connected": bus.connected()});
    Json(body)
}
