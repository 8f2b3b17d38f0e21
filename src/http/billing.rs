//! GET /api/billing/usage: the caller's agent usage for a period, by provider and model.

use axum::extract::{Query, State};
use axum::{Extension, Json};
use chrono::{DateTime, Datelike, TimeZone, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::IntoParams;
use utoipa_axum::routes;

use super::ApiRouter;
use crate::app::AppState;
use crate::auth::{Principal, Role};
use crate::error::{ApiError, ErrorBody};

pub fn router() -> ApiRouter {
    ApiRouter::new().member(routes!(usage))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
pub struct UsageParams {
    /// RFC 3339 or YYYY-MM-DD (inclusive); default: start of the current month (UTC).
    from: Option<String>,
    /// RFC 3339 or YYYY-MM-DD (exclusive; a date means the end of that day); default: now.
    to: Option<String>,
    /// Another user's id (admin or owner only).
    user_id: Option<String>,
}

impl UsageParams {
    /// The caller's own usage in `[from, to)`.
    pub fn between(from: DateTime<Utc>, to: DateTime<Utc>) -> Self {
        UsageParams {
            from: Some(from.to_rfc3339()),
            to: Some(to.to_rfc3339()),
            user_id: None,
        }
    }
}

fn parse_time(field: &str, text: &str, end_of_day: bool) -> Result<DateTime<Utc>, ApiError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        let d = if end_of_day {
            d.succ_opt().unwrap_or(d)
        } else {
            d
        };
        return Ok(Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).expect("midnight exists")));
    }
    Err(ApiError::BadRequest(format!(
        "invalid `{field}` {text:?}; expected RFC 3339 (2026-01-31T00:00:00Z) or YYYY-MM-DD"
    )))
}

/// The caller's usage (or, for admins, another user's) in a period.
#[utoipa::path(
    get,
    path = "/billing/usage",
    tag = "billing",
    params(UsageParams),
    responses(
        (status = 200, description = "`{principal_id, period: {from, to}, debates, calls, input_tokens, output_tokens, cost_usd, estimated_tokens, by_provider: [{provider, model, calls, input_tokens, output_tokens, cost_usd, estimated}]}`"),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "user_id of another user without admin", body = ErrorBody),
    )
)]
pub async fn usage(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Query(params): Query<UsageParams>,
) -> Result<Json<Value>, ApiError> {
    let subject = match params.user_id {
        Some(other) if other != principal.id => {
            crate::auth::extractors::require(&principal, Role::Admin)?;
            other
        }
        _ => principal.id.clone(),
    };
    let now = Utc::now();
    let from = match &params.from {
        Some(t) => parse_time("from", t, false)?,
        None => Utc
            .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
            .single()
            .expect("first of the month exists"),
    };
    let to = match &params.to {
        Some(t) => parse_time("to", t, true)?,
        None => now,
    };
    if to < from {
        return Err(ApiError::BadRequest("`to` is before `from`".into()));
    }
    let summary = state.store.usage_summary(&subject, from, to).await?;
    let sum = |f: fn(&crate::store::UsageLine) -> i64| summary.lines.iter().map(f).sum::<i64>();
    let cost: f64 = summary.lines.iter().map(|l| l.cost_usd).sum();
    Ok(Json(json!({
        "principal_id": subject,
        "period": {"from": from, "to": to},
        "debates": summary.debates,
        "calls": sum(|l| l.calls),
        "input_tokens": sum(|l| l.input_tokens),
        "output_tokens": sum(|l| l.output_tokens),
        "cost_usd": (cost * 1e6).round() / 1e6,
        "estimated_tokens": summary.lines.iter().any(|l| l.estimated),
        "by_provider": summary.lines,
    })))
}
