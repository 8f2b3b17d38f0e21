//! GET /api/billing/usage: the caller's agent usage for a period, by provider and model.

use axum::extract::{Query, State};
use axum::{Extension, Json};
use chrono::{DateTime, Datelike, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
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

/// A principal's usage in a period. Fields in alphabetical order, as the API has always
/// written them.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageBody {
    /// By provider and model.
    pub by_provider: Vec<UsageLineBody>,
    pub calls: i64,
    /// USD, six decimals.
    pub cost_usd: f64,
    /// Distinct debates with at least one recorded call.
    pub debates: i64,
    /// True when some token counts were estimated (the provider reported none).
    pub estimated_tokens: bool,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub period: Period,
    /// `GET /usage/summary` only: the period asked for (`day`, `week`, `month`, `quarter`
    /// or `year`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period_name: Option<String>,
    pub principal_id: String,
}

/// `[from, to)`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Period {
    #[schema(value_type = String, format = DateTime)]
    pub from: DateTime<Utc>,
    #[schema(value_type = String, format = DateTime)]
    pub to: DateTime<Utc>,
}

/// Usage of one provider/model. Fields in alphabetical order.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageLineBody {
    pub calls: i64,
    pub cost_usd: f64,
    /// True when some token counts were estimated.
    pub estimated: bool,
    pub input_tokens: i64,
    pub model: String,
    pub output_tokens: i64,
    pub provider: String,
}

impl From<crate::store::UsageLine> for UsageLineBody {
    fn from(l: crate::store::UsageLine) -> Self {
        UsageLineBody {
            calls: l.calls,
            cost_usd: l.cost_usd,
            estimated: l.estimated,
            input_tokens: l.input_tokens,
            model: l.model,
            output_tokens: l.output_tokens,
            provider: l.provider,
        }
    }
}

/// The caller's usage (or, for admins, another user's) in a period.
#[utoipa::path(
    get,
    path = "/billing/usage",
    tag = "billing",
    params(UsageParams),
    responses(
        (status = 200, description = "the usage in the period", body = UsageBody),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "user_id of another user without admin", body = ErrorBody),
    )
)]
pub async fn usage(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Query(params): Query<UsageParams>,
) -> Result<Json<UsageBody>, ApiError> {
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
    Ok(Json(UsageBody {
        calls: sum(|l| l.calls),
        cost_usd: (cost * 1e6).round() / 1e6,
        debates: summary.debates,
        estimated_tokens: summary.lines.iter().any(|l| l.estimated),
        input_tokens: sum(|l| l.input_tokens),
        output_tokens: sum(|l| l.output_tokens),
        by_provider: summary.lines.into_iter().map(UsageLineBody::from).collect(),
        period: Period { from, to },
        period_name: None,
        principal_id: subject,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_writes_its_keys_in_alphabetical_order() {
        let now = Utc::now();
        for period_name in [None, Some("week".to_owned())] {
            let body = UsageBody {
                by_provider: vec![UsageLineBody {
                    calls: 2,
                    cost_usd: 0.25,
                    estimated: true,
                    input_tokens: 10,
                    model: "m".into(),
                    output_tokens: 20,
                    provider: "p".into(),
                }],
                calls: 2,
                cost_usd: 0.25,
                debates: 1,
                estimated_tokens: true,
                input_tokens: 10,
                output_tokens: 20,
                period: Period { from: now, to: now },
                period_name: period_name.clone(),
                principal_id: "u1".into(),
            };
            let text = serde_json::to_string(&body).unwrap();
            assert_eq!(text, serde_json::to_value(&body).unwrap().to_string());
            assert_eq!(text.contains("period_name"), period_name.is_some());
        }
    }
}
