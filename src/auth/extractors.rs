//! Credential resolution, once per request, and the route policy.
//!
//! The middleware reads `Authorization: Bearer <jwt | ara_key | service token>` or
//! `X-API-Key`, resolves a [`Principal`] and stores it as a request extension; handlers take
//! `Extension<Principal>`. The policy by path (public / member / admin) is enforced here,
//! so a route added later under `/api/system`, `/api/admin` or `/api/debug` is protected
//! without further code. With auth off every caller is the local owner.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{Principal, PrincipalKind, Role, keys, tokens};
use crate::app::AppState;
use crate::error::ApiError;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Public,
    Member,
    Admin,
}

/// The policy for a path (with or without the `/api` or `/api/v1` prefix); the console's
/// `/admin` files (no prefix) are public.
pub fn access_for(path: &str) -> Access {
    // The browser console's static files (outside /api) are public; the data it shows comes
    // from /api, which enforces the roles.
    if path == "/admin" || path.starts_with("/admin/") {
        return Access::Public;
    }
    let p = path
        .strip_prefix("/api/v1")
        .or_else(|| path.strip_prefix("/api"))
        .unwrap_or(path);
    let under = |prefix: &str| {
        p.strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    // Receipts are made to be checked by third parties: exporting one (by its unguessable
    // id), verifying a document and fetching the signing key need no account. Listing and
    // reading follow debate visibility.
    if p == "/v2/receipts/verify"
        || p == "/v2/receipts/signing-key"
        || (p.starts_with("/v2/receipts/") && p.ends_with("/export"))
    {
        return Access::Public;
    }
    if under("/system")
        || under("/admin")
        || under("/debug")
        || (p.starts_with("/agents/") && p.ends_with("/reset-circuit"))
    {
        Access::Admin
    } else if under("/debates")
        || under("/v2/receipts")
        || under("/billing")
        || under("/usage")
        || p == "/auth/me"
        || p == "/auth/api-key"
        || p == "/auth/api-keys"
    {
        Access::Member
    } else {
        Access::Public
    }
}

/// Credentials presented: the bearer string, if any.
pub fn presented(headers: &HeaderMap) -> Option<String> {
    if let Some(value) = headers.get(axum::http::header::AUTHORIZATION)
        && let Ok(text) = value.to_str()
    {
        let text = text.trim();
        if let Some((scheme, rest)) = text.split_once(' ')
            && scheme.eq_ignore_ascii_case("bearer")
            && !rest.trim().is_empty()
        {
            return Some(rest.trim().to_owned());
        }
        // A malformed Authorization header counts as a wrong credential.
        return Some(String::new());
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_owned())
}

/// Why presented credentials were not accepted.
#[derive(Debug)]
pub enum CredentialError {
    /// Not valid (the reason is deliberately not told).
    Invalid,
    /// They could not be checked: the store did not answer. Not the caller's fault, so it
    /// is not a 401 (a browser would otherwise drop a good session during an outage).
    Unavailable(ApiError),
}

use CredentialError::Invalid as InvalidCredentials;

fn unavailable(e: crate::store::StoreError) -> CredentialError {
    tracing::error!(target: "aragora::auth", error = %e, "credential lookup failed");
    CredentialError::Unavailable(ApiError::from(e))
}

/// Resolve a presented credential. Auth must be on.
pub async fn resolve_token(state: &AppState, token: &str) -> Result<Principal, CredentialError> {
    let config = &state.config;
    if let Some(service) = &config.auth.api_token
        && keys::ct_eq(token, service.expose())
    {
        return Ok(Principal::service());
    }
    if keys::looks_like_api_key(token) {
        let hash = keys::sha256_hex(token);
        // Reused for at most `auth_cache_ms` (≤ 1 s): a key revoked on any instance stops
        // working everywhere within that time, and at once on the instance that revoked it.
        if let Some(principal) = state.credentials.api_key(&hash) {
            return Ok(principal);
        }
        let key = state
            .store
            .api_key_by_hash(&hash)
            .await
            .map_err(unavailable)?
            .filter(|k| k.revoked_at.is_none())
            .ok_or(InvalidCredentials)?;
        let user = state
            .store
            .user_by_id(&key.user_id)
            .await
            .map_err(unavailable)?
            .ok_or(InvalidCredentials)?;
        let role = Role::parse(&user.role).ok_or(InvalidCredentials)?;
        if state.credentials.should_touch(&key.id)
            && let Err(e) = state.store.touch_api_key(&key.id, chrono::Utc::now()).await
        {
            tracing::warn!(target: "aragora::auth", error = %e, "could not record api key use");
        }
        let principal = Principal {
            id: user.id,
            email: Some(user.email),
            role: Some(role),
            kind: PrincipalKind::ApiKey,
        };
        state.credentials.put_api_key(&hash, &principal);
        return Ok(principal);
    }
    if config.auth.jwt_secret.is_some()
        && let Some(principal) = state
            .credentials
            .token(token, chrono::Utc::now().timestamp())
    {
        return Ok(principal);
    }
    if let Some(secret) = &config.auth.jwt_secret
        && tokens::looks_like_jwt(token)
        && let Some(claims) = tokens::verify_access(secret.expose().as_bytes(), token)
    {
        // The account's current role counts (a demotion applies within `auth_cache_ms`);
        // a deleted account's tokens stop working.
        let expires = claims.exp.saturating_add(tokens::LEEWAY_SECONDS as i64);
        if let Some(principal) = state.credentials.user(&claims.sub) {
            state.credentials.put_token(token, expires, &principal);
            return Ok(principal);
        }
        let user = state
            .store
            .user_by_id(&claims.sub)
            .await
            .map_err(unavailable)?
            .ok_or(InvalidCredentials)?;
        let role = Role::parse(&user.role).ok_or(InvalidCredentials)?;
        let principal = Principal {
            id: user.id,
            email: Some(user.email),
            role: Some(role),
            kind: PrincipalKind::User,
        };
        state.credentials.put_user(&claims.sub, &principal);
        state.credentials.put_token(token, expires, &principal);
        return Ok(principal);
    }
    Err(InvalidCredentials)
}

/// Whether a request comes straight from this machine: loopback peer and no proxy headers.
pub fn is_local(peer: Option<IpAddr>, headers: &HeaderMap) -> bool {
    peer.is_some_and(|ip| ip.is_loopback())
        && !headers.contains_key("x-forwarded-for")
        && !headers.contains_key("x-real-ip")
        && !headers.contains_key("forwarded")
}

/// The principal of a request: `token` is what was presented (header, subprotocol or query).
pub async fn principal_for(
    state: &AppState,
    token: Option<&str>,
    peer: Option<IpAddr>,
    headers: &HeaderMap,
) -> Result<Principal, CredentialError> {
    if !state.config.auth_enabled() {
        return Ok(Principal::local_owner());
    }
    match token {
        Some(token) => resolve_token(state, token).await,
        None if state.config.auth.local_operator && is_local(peer, headers) => {
            Ok(Principal::local_owner())
        }
        None => Ok(Principal::anonymous()),
    }
}

/// 401 for a missing/invalid credential, 403 when the role is too low.
pub fn require(principal: &Principal, role: Role) -> Result<(), ApiError> {
    if principal.has(role) {
        return Ok(());
    }
    if !principal.authenticated() && principal.role.is_none() {
        return Err(ApiError::Unauthorized(
            "authentication required: send `Authorization: Bearer <token>` or `X-API-Key`".into(),
        ));
    }
    Err(ApiError::Forbidden(format!(
        "this needs the {} role or higher; the caller is {}",
        role.as_str(),
        principal.role.map_or("without a role", Role::as_str)
    )))
}

/// The middleware: resolve once, enforce the path policy, store the principal.
pub async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let token = presented(req.headers());
    let access = access_for(req.uri().path());
    let principal = match principal_for(&state, token.as_deref(), peer, req.headers()).await {
        Ok(p) => p,
        // A bad or uncheckable credential on a public route is ignored (the caller is
        // anonymous there), so health keeps answering during a database outage.
        Err(_) if access == Access::Public => Principal::anonymous(),
        Err(CredentialError::Invalid) => {
            return ApiError::Unauthorized("invalid or expired credentials".into()).into_response();
        }
        Err(CredentialError::Unavailable(e)) => return e.into_response(),
    };
    let needed = match access {
        Access::Public => None,
        Access::Member => Some(Role::Member),
        Access::Admin => Some(Role::Admin),
    };
    if let Some(role) = needed
        && let Err(e) = require(&principal, role)
    {
        return e.into_response();
    }
    // Rate limits key on the principal rather than the IP when there is one.
    if !matches!(principal.kind, crate::auth::PrincipalKind::Anonymous) {
        req.extensions_mut()
            .insert(crate::ratelimit::Principal(principal.id.clone()));
    }
    req.extensions_mut().insert(principal);
    // Rate limiting follows at once, in this same middleware.
    crate::ratelimit::limit(&state, req, next).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_by_path() {
        assert_eq!(access_for("/api/health"), Access::Public);
        assert_eq!(access_for("/api/v1/health/ready"), Access::Public);
        assert_eq!(access_for("/api/metrics"), Access::Public);
        assert_eq!(access_for("/api/agents"), Access::Public);
        assert_eq!(access_for("/api/agents/circuit-breakers"), Access::Public);
        assert_eq!(
            access_for("/api/agents/claude/reset-circuit"),
            Access::Admin
        );
        assert_eq!(access_for("/api/v1/debug/agent-test"), Access::Admin);
        assert_eq!(access_for("/api/system/errors"), Access::Admin);
        assert_eq!(access_for("/api/admin/cleanup-caches"), Access::Admin);
        assert_eq!(access_for("/api/debates"), Access::Member);
        assert_eq!(access_for("/api/debates/x/events"), Access::Member);
        assert_eq!(access_for("/api/billing/usage"), Access::Member);
        assert_eq!(access_for("/api/auth/me"), Access::Member);
        assert_eq!(access_for("/api/auth/login"), Access::Public);
        assert_eq!(access_for("/api/auth/refresh"), Access::Public);
        assert_eq!(access_for("/api/v1/auth/logout"), Access::Public);
        assert_eq!(access_for("/admin"), Access::Public);
        assert_eq!(access_for("/admin/app.js"), Access::Public);
        assert_eq!(access_for("/api/admin"), Access::Admin);
        assert_eq!(access_for("/api/debatesx"), Access::Public);
    }

    #[test]
    fn roles_are_ordered_and_required() {
        assert!(Role::Member < Role::Admin && Role::Admin < Role::Owner);
        let member = Principal {
            id: "u".into(),
            email: None,
            role: Some(Role::Member),
            kind: PrincipalKind::User,
        };
        assert!(require(&member, Role::Member).is_ok());
        assert!(matches!(
            require(&member, Role::Admin),
            Err(ApiError::Forbidden(_))
        ));
        assert!(matches!(
            require(&Principal::anonymous(), Role::Member),
            Err(ApiError::Unauthorized(_))
        ));
        assert!(require(&Principal::local_owner(), Role::Owner).is_ok());
        assert!(require(&Principal::service(), Role::Admin).is_ok());
    }
}
