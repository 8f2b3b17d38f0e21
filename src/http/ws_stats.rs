//! `GET /api/ws/stats`: WebSocket connections, subscriptions, traffic, drops and limits.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::routes;

use super::ApiRouter;
use crate::app::AppState;

pub fn router() -> ApiRouter {
    ApiRouter::new().public(routes!(get_ws_stats))
}

/// `GET /api/ws/stats` body. Fields in alphabetical order, as the API has always written
/// them.
#[derive(Debug, Serialize, ToSchema)]
pub struct WsStatsBody {
    pub connections: usize,
    pub connections_peak: usize,
    pub errors: u64,
    pub event_bus: EventBusStatus,
    /// `{max_connections, max_message_bytes, max_per_ip, send_queue, slow_consumer_after_ms}`.
    #[schema(value_type = Object)]
    pub limits: serde_json::Value,
    pub messages_sent: u64,
    /// Most connections one client IP holds now.
    pub per_ip_max: usize,
    /// Most connections one client IP has held since start.
    pub per_ip_peak: usize,
    pub rejected_connections: u64,
    pub slow_clients_dropped: u64,
    pub subscriptions: usize,
    pub watched_debates: usize,
}

/// The event bus debates publish on.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventBusStatus {
    /// `memory` or `redis`.
    pub backend: &'static str,
    pub connected: bool,
}

/// WebSocket server statistics.
#[utoipa::path(
    get,
    path = "/ws/stats",
    tag = "observability",
    responses((status = 200, description = "connections, per-IP max and peak, subscriptions, messages sent, slow clients dropped, errors, limits, event bus", body = WsStatsBody))
)]
pub async fn get_ws_stats(State(state): State<AppState>) -> Json<WsStatsBody> {
    let stats = state.ws.stats();
    let bus = state.debates.bus();
    Json(WsStatsBody {
        connections: stats.connections,
        connections_peak: stats.connections_peak,
        errors: stats.errors,
        event_bus: EventBusStatus {
            backend: bus.backend(),
            connected: bus.connected(),
        },
        limits: serde_json::to_value(stats.limits).unwrap_or_default(),
        messages_sent: stats.messages_sent,
        per_ip_max: stats.per_ip_max,
        per_ip_peak: stats.per_ip_peak,
        rejected_connections: stats.rejected_connections,
        slow_clients_dropped: stats.slow_clients_dropped,
        subscriptions: stats.subscriptions,
        watched_debates: stats.watched_debates,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_write_their_keys_in_alphabetical_order() {
        let limits = crate::ws::WsLimits {
            max_connections: 10,
            max_per_ip: 2,
            max_message_bytes: 1024,
            send_queue: 8,
            slow_after: std::time::Duration::from_millis(500),
        };
        let body = WsStatsBody {
            connections: 1,
            connections_peak: 2,
            errors: 0,
            event_bus: EventBusStatus {
                backend: "memory",
                connected: true,
            },
            limits: serde_json::to_value(limits).unwrap(),
            messages_sent: 3,
            per_ip_max: 1,
            per_ip_peak: 1,
            rejected_connections: 0,
            slow_clients_dropped: 0,
            subscriptions: 1,
            watched_debates: 1,
        };
        let text = serde_json::to_string(&body).unwrap();
        assert_eq!(text, serde_json::to_value(&body).unwrap().to_string());
        assert!(text.contains("\"slow_consumer_after_ms\":500"));
    }
}
