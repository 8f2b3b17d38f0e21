//! Routes the published Python SDK (`aragora-sdk` 2.x) calls under other names: small views
//! of what the API already has, so a user of the original server's SDK finds them. Each is
//! described here and lives beside the route it mirrors in behaviour and access.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{Datelike, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;

use super::ApiRouter;
use crate::app::AppState;
use crate::auth::Principal;
use crate::error::{ApiError, ErrorBody};

pub fn router() -> ApiRouter {
    ApiRouter::new()
        .public(routes!(health_detailed))
        .public(routes!(circuit_breakers))
        .public(routes!(agent_elo))
        .member(routes!(usage_summary))
        .member(routes!(create_api_key))
}

/// The full health report (the SDK's `health.detailed`): the same body as `GET /health`.
#[utoipa::path(
    get,
    path = "/health/detailed",
    tag = "health",
    responses(
        (status = 200, description = "healthy or degraded", body = super::health::HealthResponse),
        (status = 503, description = "unhealthy", body = super::health::HealthResponse),
    )
)]
pub async fn health_detailed(state: State<AppState>) -> Response {
    super::health::get_health(state).await
}

/// Circuit breakers (the SDK's `system.get_circuit_breakers`): as
/// `GET /agents/circuit-breakers`.
#[utoipa::path(
    get,
    path = "/circuit-breakers",
    tag = "agents",
    responses((status = 200, description = "every agent's breaker", body = super::agents::BreakerList))
)]
pub async fn circuit_breakers(state: State<AppState>) -> Json<super::agents::BreakerList> {
    super::agents::list_circuit_breakers(state).await
}

/// One agent's overall rating. Fields in alphabetical order, as the API has always written
/// them.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentElo {
    pub agent: String,
    pub draws: i64,
    /// Elo, one decimal.
    pub elo: f64,
    pub games: i64,
    pub losses: i64,
    /// Null when the agent has played no rated debate.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub updated_at: Option<chrono::DateTime<Utc>>,
    pub wins: i64,
}

/// One agent's overall Elo rating (the SDK's `agents.get_elo`); an agent that has played no
/// rated debate has the initial rating.
#[utoipa::path(
    get,
    path = "/agents/{name}/elo",
    tag = "agents",
    params(("name" = String, Path, description = "agent name")),
    responses(
        (status = 200, description = "the rating", body = AgentElo),
        (status = 404, description = "no such agent", body = ErrorBody),
    )
)]
pub async fn agent_elo(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<AgentElo>, ApiError> {
    let rated = state
        .store
        .ratings(None, 500)
        .await?
        .into_iter()
        .find(|r| r.agent == name);
    if rated.is_none() && state.debates.agents().resolve(&name).is_err() {
        return Err(ApiError::NotFound(format!("agent {name} not found")));
    }
    Ok(Json(match rated {
        Some(r) => AgentElo {
            agent: r.agent,
            draws: r.draws,
            elo: (r.rating * 10.0).round() / 10.0,
            games: r.games,
            losses: r.losses,
            updated_at: Some(r.updated_at),
            wins: r.wins,
        },
        None => AgentElo {
            agent: name,
            draws: 0,
            elo: crate::ratings::INITIAL_RATING,
            games: 0,
            losses: 0,
            updated_at: None,
            wins: 0,
        },
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct SummaryParams {
    /// day, week, month (default), quarter or year: the current one, up to now (UTC).
    period: Option<String>,
    /// Accepted for the SDK; this server has no organisations (ignored).
    organization_id: Option<String>,
}

/// The caller's usage for the current day, week, month, quarter or year (the SDK's
/// `usage.get_summary`): the body of `GET /billing/usage` for that period.
#[utoipa::path(
    get,
    path = "/usage/summary",
    tag = "billing",
    params(SummaryParams),
    responses(
        (status = 200, description = "as `GET /billing/usage`, plus `period_name`", body = super::billing::UsageBody),
        (status = 400, description = "unknown period", body = ErrorBody),
        (status = 401, body = ErrorBody),
    )
)]
pub async fn usage_summary(
    state: State<AppState>,
    principal: Extension<Principal>,
    Query(params): Query<SummaryParams>,
) -> Result<Json<super::billing::UsageBody>, ApiError> {
    if let Some(org) = &params.organization_id {
        tracing::debug!(target: "aragora::http", organization_id = %org, "usage summary: organisations do not apply here");
    }
    let now = Utc::now();
    let today = now.date_naive();
    let period = params.period.as_deref().unwrap_or("month");
    let start = match period {
        "day" => today,
        "week" => today - chrono::Duration::days(i64::from(today.weekday().num_days_from_monday())),
        "month" => today.with_day(1).unwrap_or(today),
        "quarter" => chrono::NaiveDate::from_ymd_opt(today.year(), (today.month0() / 3) * 3 + 1, 1)
            .unwrap_or(today),
        "year" => chrono::NaiveDate::from_ymd_opt(today.year(), 1, 1).unwrap_or(today),
        other => {
            return Err(ApiError::BadRequest(format!(
                "invalid `period` `{other}`; expected day, week, month, quarter or year"
            )));
        }
    };
    let from = Utc.from_utc_datetime(&start.and_hms_opt(0, 0, 0).unwrap_or_default());
    let Json(mut body) = super::billing::usage(
        state,
        principal,
        Query(super::billing::UsageParams::between(from, now)),
    )
    .await?;
    body.period_name = Some(period.to_owned());
    Ok(Json(body))
}

/// `POST /auth/api-keys` body (the SDK's `auth.create_api_key`).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct ApiKeyRequest {
    /// A label (accepted; a user has one key at a time here, so it is not stored).
    pub name: Option<String>,
    /// Accepted for the SDK; keys carry their user's role.
    pub scopes: Option<Vec<String>>,
    /// Accepted for the SDK; keys last until revoked or replaced.
    pub expires_at: Option<String>,
}

/// Create an API key (the SDK's `auth.create_api_key`): as `POST /auth/api-key`, which
/// replaces the caller's previous key.
#[utoipa::path(
    post,
    path = "/auth/api-keys",
    tag = "auth",
    request_body = ApiKeyRequest,
    responses(
        (status = 201, description = "`{\"api_key\", \"prefix\", \"created_at\"}`: shown once"),
        (status = 401, body = ErrorBody),
    )
)]
pub async fn create_api_key(
    state: State<AppState>,
    principal: Extension<Principal>,
    body: Option<Json<ApiKeyRequest>>,
) -> Result<Response, ApiError> {
    if let Some(Json(request)) = body {
        tracing::info!(
            target: "aragora::auth",
            label = request.name.as_deref().unwrap_or(""),
            scopes = ?request.scopes,
            expires_at = request.expires_at.as_deref().unwrap_or(""),
            "api key requested through /auth/api-keys (one key per user, the user's role, no expiry)"
        );
    }
    super::auth::create_api_key(state, principal).await
}

/// `GET /metrics` outside `/api`: Prometheus text for scrapers using the default path; a
/// client that asks for JSON (the SDK's `system.get_prometheus_metrics`) gets the same text
/// in `{"format": "prometheus", "metrics": "…"}`.
pub async fn root_metrics(state: State<AppState>, headers: HeaderMap) -> Response {
    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json") && !v.contains("text/plain"));
    let response = super::metrics_route::get_metrics(state).await;
    if !wants_json || !response.status().is_success() {
        return response;
    }
    let bytes = axum::body::to_bytes(response.into_body(), 64 << 20)
        .await
        .unwrap_or_default();
    Json(serde_json::json!({"format": "prometheus", "metrics": String::from_utf8_lossy(&bytes)}))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elo_writes_its_keys_in_alphabetical_order_and_a_null_date() {
        let body = AgentElo {
            agent: "a".into(),
            draws: 0,
            elo: crate::ratings::INITIAL_RATING,
            games: 0,
            losses: 0,
            updated_at: None,
            wins: 0,
        };
        let text = serde_json::to_string(&body).unwrap();
        assert_eq!(text, serde_json::to_value(&body).unwrap().to_string());
        assert!(text.contains("\"updated_at\":null"));
    }
}
