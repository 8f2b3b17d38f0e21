//! Admin console data: `GET /api/system/errors?limit=` (recent warnings and errors from the
//! in-process ring buffer) and `GET /api/system/circuit-breakers`. Admin or owner when auth
//! is on.

use axum::Json;
use axum::extract::{Query, State};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;

use super::ApiRouter;
use crate::app::AppState;
use crate::error::ApiError;
use crate::telemetry::errors::{self, RecentError};

pub fn router() -> ApiRouter {
    ApiRouter::new()
        .admin(routes!(list_errors))
        .admin(routes!(list_system_circuit_breakers))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ErrorsQuery {
    /// How many, newest first: 1..=500, default 50.
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorsResponse {
    pub errors: Vec<RecentError>,
    /// Entries held now.
    pub total: usize,
    /// The buffer's size; older entries are dropped.
    pub capacity: usize,
}

/// Recent WARN and ERROR log events, newest first. Admin or owner when auth is on.
#[utoipa::path(
    get,
    path = "/system/errors",
    tag = "system",
    params(ErrorsQuery),
    responses(
        (status = 200, description = "recent errors", body = ErrorsResponse),
        (status = 422, description = "limit out of range", body = crate::error::ErrorBody),
    )
)]
pub async fn list_errors(
    Query(query): Query<ErrorsQuery>,
) -> Result<Json<ErrorsResponse>, ApiError> {
    let limit = query.limit.unwrap_or(50);
    if !(1..=errors::CAPACITY).contains(&limit) {
        return Err(ApiError::Validation {
            field: "limit".into(),
            message: format!("limit must be between 1 and {}", errors::CAPACITY),
        });
    }
    let log = errors::global();
    Ok(Json(ErrorsResponse {
        errors: log.recent(limit),
        total: log.len(),
        capacity: log.capacity(),
    }))
}

/// Every agent's circuit breaker (as `/api/agents/circuit-breakers`), for the admin console.
/// Admin or owner when auth is on.
#[utoipa::path(
    get,
    path = "/system/circuit-breakers",
    tag = "system",
    responses((status = 200, description = "every agent's breaker", body = super::agents::BreakerList))
)]
pub async fn list_system_circuit_breakers(
    State(state): State<AppState>,
) -> Json<super::agents::BreakerList> {
    super::agents::breakers_json(&state)
}
