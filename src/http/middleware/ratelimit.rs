//! The rate-limit step of a request: identify the client, decide, add the X-RateLimit-*
//! headers or answer 429 with Retry-After. The gate ([`super::gate`]) runs it once the
//! credentials are resolved, in the same middleware layer (one layer instead of two on
//! every route, so a request clones and boxes the inner service stack once less). The
//! limiter itself (rules, keys, backends, reload) is `crate::ratelimit`.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tower::Service;

use crate::auth::Principal;
use crate::ratelimit::{
    ClientIdentity, Decision, RateLimiter, Rule, client_ip, client_key, rule_for,
};

/// Limit one request on its way to `inner`; the principal (if the gate stored one) keys it.
pub async fn limit<S>(limiter: &RateLimiter, mut req: Request, inner: S) -> Response
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    let Some(rule) = rule_for(req.method(), req.uri().path()) else {
        return super::run(inner, req).await;
    };
    let settings = limiter.settings();
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
    let ip = client_ip(peer, req.headers(), &settings.trusted_proxies);
    let key = client_key(rule, req.extensions().get::<Principal>(), ip);
    let whitelisted = settings.is_whitelisted(ip);
    req.extensions_mut().insert(ClientIdentity {
        ip,
        key: key.clone(),
        whitelisted,
    });
    if settings.disabled || whitelisted {
        return super::run(inner, req).await;
    }
    // A request refused for what it is — bad input, an unknown route or debate, a debate not
    // accepted — does not use up the caller's budget. Refused credentials (401/403) do: they
    // are what a guesser sends.
    // The limiter's futures (Redis round trips) are boxed: a request that is not limited
    // does not carry their state.
    let admission = Box::pin(limiter.admit(rule, &key)).await;
    if !admission.decision.allowed {
        limiter.record_hit(rule, &key, &admission.decision);
        return too_many_requests(rule, &admission.decision);
    }
    let mut response = super::run(inner, req).await;
    let status = response.status();
    let refused = if rule == Rule::DebateCreate {
        // Spent only by debates actually accepted.
        !status.is_success()
    } else {
        status.is_client_error() && !matches!(status.as_u16(), 401 | 403 | 429)
    };
    let decision = Box::pin(limiter.settle(rule, &key, admission, refused)).await;
    set_headers(response.headers_mut(), &decision);
    response
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_micros().div_ceil(1_000_000) as u64
}

fn set_headers(headers: &mut HeaderMap, decision: &Decision) {
    // Names built once: inserting by `&str` parses the name on every call.
    static LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
    static REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
    static RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
    headers.insert(&LIMIT, HeaderValue::from(decision.limit));
    headers.insert(&REMAINING, HeaderValue::from(decision.remaining));
    headers.insert(&RESET, HeaderValue::from(ceil_secs(decision.reset_after)));
}

fn too_many_requests(rule: Rule, decision: &Decision) -> Response {
    let retry_after = ceil_secs(decision.retry_after).max(1);
    let body = serde_json::json!({
        "error": format!(
            "too many requests: the {} limit is {} per minute; retry in {retry_after} s",
            rule.name(),
            decision.limit
        ),
        "code": crate::error::ErrorCode::RateLimited.as_str(),
        "correlation_id": crate::telemetry::correlation::current(),
        "retry_after": retry_after,
        "rule": rule.name(),
        "limit": decision.limit,
    });
    let mut response = (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
    set_headers(response.headers_mut(), decision);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    response
}
