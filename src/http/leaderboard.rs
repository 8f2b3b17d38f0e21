//! `GET /api/leaderboard`: Elo ratings, overall or for one domain.

use axum::Json;
use axum::extract::{Query, State};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::IntoParams;
use utoipa_axum::routes;

use super::ApiRouter;
use crate::app::AppState;
use crate::error::{ApiError, ErrorBody};

pub fn router() -> ApiRouter {
    ApiRouter::new().public(routes!(get_leaderboard))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct LeaderboardParams {
    /// 1–500 (default 50).
    limit: Option<u32>,
    /// A rating domain such as `security`; absent = overall.
    domain: Option<String>,
}

/// Agent ratings, best first.
#[utoipa::path(
    get,
    path = "/leaderboard",
    tag = "debates",
    params(LeaderboardParams),
    responses((status = 200, description = "`{\"domain\", \"ratings\": [...]}`"), (status = 400, body = ErrorBody))
)]
pub async fn get_leaderboard(
    State(state): State<AppState>,
    Query(params): Query<LeaderboardParams>,
) -> Result<Json<Value>, ApiError> {
    let limit = params.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "invalid `limit` {limit}; expected 1 to 500"
        )));
    }
    let ratings = state.store.ratings(params.domain.as_deref(), limit).await?;
    let rows: Vec<Value> = ratings
        .iter()
        .enumerate()
        .map(|(i, r)| {
            json!({"rank": i + 1, "agent": r.agent, "rating": (r.rating * 10.0).round() / 10.0,
                   "games": r.games, "wins": r.wins, "losses": r.losses, "draws": r.draws,
                   "updated_at": r.updated_at})
        })
        .collect();
    Ok(Json(json!({"domain": params.domain, "ratings": rows})))
}
