//! Rate-limit endpoints: the caller's own view, the effective configuration, and the admin
//! view of the most-limited keys. Keys other than the caller's own are always masked.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::collections::BTreeMap;
use utoipa::ToSchema;
use utoipa_axum::routes;

use super::ApiRouter;
use crate::app::AppState;
use crate::ratelimit::{Backend, ClientIdentity, HitSummary, PERIOD, ReloadReport, Rule};

pub fn router() -> ApiRouter {
    ApiRouter::new()
        .public(routes!(get_rate_limit_status))
        .public(routes!(get_rate_limit_config))
        .admin(routes!(get_system_rate_limits))
}

/// One rule's bucket for the caller.
#[derive(Debug, Serialize, ToSchema)]
pub struct RuleStatus {
    /// Requests per minute.
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the bucket is full again.
    pub reset: u64,
}

/// `GET /api/rate-limits/status`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RateLimitStatus {
    /// Where decisions are made right now (`memory` while Redis is down).
    pub backend: Backend,
    /// Configured backend.
    pub configured_backend: Backend,
    pub redis_connected: bool,
    pub disabled: bool,
    /// The caller's bucket key (`ip:…` or `user:…`).
    pub key: String,
    pub client_ip: String,
    pub whitelisted: bool,
    pub rules: BTreeMap<String, RuleStatus>,
}

/// The caller's own rate-limit state (this request already counted).
#[utoipa::path(
    get,
    path = "/rate-limits/status",
    tag = "rate-limits",
    responses((status = 200, description = "the caller's buckets", body = RateLimitStatus))
)]
pub async fn get_rate_limit_status(
    State(state): State<AppState>,
    identity: Option<axum::Extension<ClientIdentity>>,
) -> Response {
    let limiter = &state.ratelimit;
    let settings = limiter.settings();
    let Some(axum::Extension(identity)) = identity else {
        return crate::error::error_response(
            crate::error::ErrorCode::Internal,
            "the rate limiter did not identify this request",
        );
    };
    let mut rules = BTreeMap::new();
    for rule in Rule::ALL {
        // Login is per IP even for authenticated callers.
        let key = if rule == Rule::Login && identity.key.starts_with("user:") {
            crate::ratelimit::client_key(rule, None, identity.ip)
        } else {
            identity.key.clone()
        };
        let d = limiter.peek(rule, &key).await;
        rules.insert(
            rule.name().to_owned(),
            RuleStatus {
                limit: d.limit,
                remaining: d.remaining,
                reset: d.reset_after.as_secs_f64().ceil() as u64,
            },
        );
    }
    Json(RateLimitStatus {
        backend: limiter.active_backend(),
        configured_backend: limiter.configured_backend(),
        redis_connected: limiter.active_backend() == Backend::Redis,
        disabled: settings.disabled,
        key: identity.key,
        client_ip: identity.ip.to_string(),
        whitelisted: identity.whitelisted,
        rules,
    })
    .into_response()
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RuleConfig {
    pub name: Rule,
    /// Requests per `period_seconds`.
    pub limit: u32,
    pub period_seconds: u64,
    pub applies_to: &'static str,
}

/// `GET /api/rate-limits/config`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RateLimitConfig {
    pub backend: Backend,
    pub active_backend: Backend,
    pub redis_connected: bool,
    pub disabled: bool,
    pub rules: Vec<RuleConfig>,
    pub whitelist: Vec<String>,
    pub trusted_proxies: Vec<String>,
    /// Paths never limited (also under /api/v1).
    pub exempt: Vec<&'static str>,
    /// Redis key prefix (Redis backend only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_key_prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_timeout_ms: Option<u64>,
    /// The last SIGHUP reload; `null` before the first.
    pub last_reload: Option<ReloadReport>,
}

/// The effective rate-limit configuration (no secrets), including the last SIGHUP reload.
#[utoipa::path(
    get,
    path = "/rate-limits/config",
    tag = "rate-limits",
    responses((status = 200, description = "rules, whitelist, backend", body = RateLimitConfig))
)]
pub async fn get_rate_limit_config(State(state): State<AppState>) -> Json<RateLimitConfig> {
    let limiter = &state.ratelimit;
    let s = limiter.settings();
    let nets = |n: &[ipnet::IpNet]| n.iter().map(ToString::to_string).collect();
    Json(RateLimitConfig {
        backend: limiter.configured_backend(),
        active_backend: limiter.active_backend(),
        redis_connected: limiter.active_backend() == Backend::Redis,
        disabled: s.disabled,
        rules: Rule::ALL
            .iter()
            .map(|&rule| RuleConfig {
                name: rule,
                limit: s.quota(rule).limit,
                period_seconds: PERIOD.as_secs(),
                applies_to: rule.applies_to(),
            })
            .collect(),
        whitelist: nets(&s.whitelist),
        trusted_proxies: nets(&s.trusted_proxies),
        exempt: vec![
            "/api/health",
            "/api/health/live",
            "/api/health/ready",
            "/api/metrics",
        ],
        redis_key_prefix: limiter.redis_limiter().map(|r| r.prefix().to_owned()),
        redis_timeout_ms: limiter
            .redis_limiter()
            .map(|r| r.timeout().as_millis() as u64),
        last_reload: limiter.last_reload(),
    })
}

/// `GET /api/system/rate-limits`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SystemRateLimits {
    pub backend: Backend,
    pub active_backend: Backend,
    /// Seconds a limited key stays listed after its last 429.
    pub window_seconds: u64,
    /// Most-limited keys (masked), most hits first.
    pub top_limited: Vec<HitSummary>,
}

/// Admin console: the most-limited keys of the last hour (masked). Becomes admin-only
/// (401/403) when authentication lands.
#[utoipa::path(
    get,
    path = "/system/rate-limits",
    tag = "rate-limits",
    responses((status = 200, description = "most-limited keys", body = SystemRateLimits))
)]
pub async fn get_system_rate_limits(State(state): State<AppState>) -> Json<SystemRateLimits> {
    let limiter = &state.ratelimit;
    Json(SystemRateLimits {
        backend: limiter.configured_backend(),
        active_backend: limiter.active_backend(),
        window_seconds: crate::ratelimit::HITS_WINDOW.as_secs(),
        top_limited: limiter.top_hits(50),
    })
}
