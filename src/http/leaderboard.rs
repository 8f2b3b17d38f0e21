//! `GET /api/leaderboard`: Elo ratings, overall or for one domain.

use axum::Json;
use axum::extract::{Query, State};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
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

/// Fields in alphabetical order, as the API has always written them.
#[derive(Debug, Serialize, ToSchema)]
pub struct Leaderboard {
    /// The domain asked for; null = overall.
    pub domain: Option<String>,
    pub ratings: Vec<RatingRow>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RatingRow {
    pub agent: String,
    pub draws: i64,
    pub games: i64,
    pub losses: i64,
    /// 1 = best.
    pub rank: usize,
    /// Elo, one decimal.
    pub rating: f64,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: chrono::DateTime<chrono::Utc>,
    pub wins: i64,
}

/// Agent ratings, best first.
#[utoipa::path(
    get,
    path = "/leaderboard",
    tag = "debates",
    params(LeaderboardParams),
    responses((status = 200, description = "ratings, best first", body = Leaderboard), (status = 400, body = ErrorBody))
)]
pub async fn get_leaderboard(
    State(state): State<AppState>,
    Query(params): Query<LeaderboardParams>,
) -> Result<Json<Leaderboard>, ApiError> {
    let limit = params.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "invalid `limit` {limit}; expected 1 to 500"
        )));
    }
    let ratings = state.store.ratings(params.domain.as_deref(), limit).await?;
    let ratings = ratings
        .into_iter()
        .enumerate()
        .map(|(i, r)| RatingRow {
            rank: i + 1,
            rating: (r.rating * 10.0).round() / 10.0,
            agent: r.agent,
            games: r.games,
            wins: r.wins,
            losses: r.losses,
            draws: r.draws,
            updated_at: r.updated_at,
        })
        .collect();
    Ok(Json(Leaderboard {
        domain: params.domain,
        ratings,
    }))
}
