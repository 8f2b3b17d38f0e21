//! Accounts over HTTP (README.md, "HTTP API"): login, refresh (rotating, reuse revokes the family),
//! logout, me, API keys, and registration when enabled. The account rules themselves
//! (lockout, rotation, reuse detection, revocation, email validation) are
//! `crate::auth::accounts`; this module keeps what is HTTP: cookies, the Origin check and
//! the JSON bodies.
//!
//! Bad credentials always get the same 401 whether or not the email exists; a locked
//! account gets 423 with Retry-After. No token, key, cookie or password is ever logged.
//!
//! Browser sessions (the admin console): `POST /api/auth/login` with `"use_cookie": true`
//! puts the refresh token in an HttpOnly cookie (`aragora_refresh`, `SameSite=Strict`,
//! `Path=/api/auth`) instead of the body; `/refresh` and `/logout` with no `refresh_token`
//! in the body use that cookie. Cookie-based calls also refuse a foreign `Origin` (403), in
//! addition to SameSite, as a CSRF defence. The access token stays in the page's memory.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::routes;

use super::ApiRouter;
use crate::app::AppState;
use crate::auth::accounts::{AccountError, Session};
use crate::auth::{Principal, PrincipalKind, Role};
use crate::error::{ApiError, ErrorBody, error_response};

pub fn router() -> ApiRouter {
    ApiRouter::new()
        .public(routes!(login))
        .public(routes!(refresh))
        .public(routes!(logout))
        .member(routes!(me))
        .member(routes!(create_api_key, revoke_api_key))
        .public(routes!(register))
}

#[derive(Deserialize, ToSchema)]
pub struct LoginRequest {
    email: String,
    password: String,
    /// Browser sessions: put the refresh token in the HttpOnly cookie `aragora_refresh`
    /// (`SameSite=Strict; Path=/api/auth`, `Secure` over HTTPS) instead of the body.
    #[serde(default)]
    use_cookie: bool,
}

#[derive(Deserialize, ToSchema)]
pub struct RegisterRequest {
    email: String,
    password: String,
}

#[derive(Deserialize, ToSchema, Default)]
pub struct RefreshRequest {
    /// The refresh token. Omit it (or send no body at all) to use the `aragora_refresh`
    /// cookie set by a `use_cookie` login.
    #[serde(default)]
    refresh_token: Option<String>,
}

/// The cookie that carries a browser session's refresh token.
pub const REFRESH_COOKIE: &str = "aragora_refresh";

/// Where the cookie is sent: only to /api/auth/* (login, refresh, logout).
const COOKIE_PATH: &str = "/api/auth";

/// Whether the client reached us over HTTPS: the browser says so in `Origin`, or a trusted
/// proxy (ARAGORA_TRUSTED_PROXIES, as for client addresses) sent `X-Forwarded-Proto: https`.
fn is_https(state: &AppState, peer: SocketAddr, headers: &HeaderMap) -> bool {
    let origin_https = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|o| o.trim().to_ascii_lowercase().starts_with("https://"));
    if origin_https {
        return true;
    }
    state.auth.from_trusted_proxy(peer)
        && headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

/// `Set-Cookie` for a session's refresh token (`Max-Age=0` with an empty value clears it).
fn session_cookie(value: &str, max_age: u64, secure: bool) -> HeaderValue {
    let mut cookie = format!(
        "{REFRESH_COOKIE}={value}; HttpOnly; SameSite=Strict; Path={COOKIE_PATH}; Max-Age={max_age}"
    );
    if secure {
        cookie.push_str("; Secure");
    }
    HeaderValue::from_str(&cookie).expect("refresh tokens are cookie-safe")
}

fn clearing_cookie(secure: bool) -> HeaderValue {
    session_cookie("", 0, secure)
}

/// The `aragora_refresh` cookie of the request, if any.
fn refresh_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == REFRESH_COOKIE)
        .map(|(_, value)| value.trim().trim_matches('"').to_owned())
        .filter(|value| !value.is_empty())
}

/// CSRF defence for cookie-based calls: an `Origin` header, when present, must be this
/// server's own origin (scheme as in [`is_https`]; host from the Host header or the request
/// URI, or X-Forwarded-Host from a trusted proxy) or an allowed origin
/// (ARAGORA_ALLOWED_ORIGINS).
fn check_origin(
    state: &AppState,
    peer: SocketAddr,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("").trim().trim_end_matches('/');
    let scheme = if is_https(state, peer, headers) {
        "https"
    } else {
        "http"
    };
    let header_text = |name: &str| {
        headers
            .get(name)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.split(',').next())
            .map(|h| h.trim().to_owned())
    };
    let mut hosts = vec![
        header_text(header::HOST.as_str()),
        uri.authority().map(|a| a.as_str().to_owned()),
    ];
    if state.auth.from_trusted_proxy(peer) {
        hosts.push(header_text("x-forwarded-host"));
    }
    let same = hosts
        .into_iter()
        .flatten()
        .any(|host| format!("{scheme}://{host}").eq_ignore_ascii_case(origin));
    let allowed = state
        .config
        .http
        .allowed_origins
        .iter()
        .any(|o| o.eq_ignore_ascii_case(origin));
    if same || allowed {
        return Ok(());
    }
    let shown: String = origin.chars().take(200).collect();
    Err(ApiError::Forbidden(format!(
        "cross-site request refused: origin `{shown}` is neither this server nor in \
         ARAGORA_ALLOWED_ORIGINS, so the session cookie is not used"
    )))
}

/// Parse an optional JSON body: none (or only whitespace) is the default value; otherwise
/// it must be JSON (415) that parses (400) into `T` (422), as with axum's `Json`.
fn optional_json<T: serde::de::DeserializeOwned + Default>(
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<T, Box<Response>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .is_some_and(|v| {
            v == "application/json" || (v.starts_with("application/") && v.ends_with("+json"))
        });
    if !is_json {
        return Err(Box::new(error_response(
            crate::error::ErrorCode::UnsupportedMediaType,
            "send JSON with Content-Type: application/json (or no body to use the session cookie)",
        )));
    }
    Json::<T>::from_bytes(body)
        .map(|Json(v)| v)
        .map_err(|rejection| Box::new(rejection.into_response()))
}

/// A session: the token pair and its user. Fields in alphabetical order, as the API has
/// always written them.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionBody {
    pub access_token: String,
    /// Seconds the access token is valid.
    pub expires_in: u64,
    /// Seconds the refresh token is valid.
    pub refresh_expires_in: u64,
    /// Absent for browser sessions: the token is in the `aragora_refresh` cookie.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// Always `Bearer`.
    pub token_type: &'static str,
    pub user: AccountBody,
}

/// An account: id, email and role (`member`, `admin` or `owner`).
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountBody {
    pub email: String,
    pub id: String,
    pub role: String,
}

fn session_body(session: Session) -> SessionBody {
    SessionBody {
        access_token: session.access_token,
        expires_in: session.expires_in,
        refresh_expires_in: session.refresh_expires_in,
        refresh_token: Some(session.refresh_token),
        token_type: "Bearer",
        user: AccountBody {
            email: session.user.email,
            id: session.user.id,
            role: session.user.role,
        },
    }
}

/// `GET /auth/me`. Fields in alphabetical order.
#[derive(Debug, Serialize, ToSchema)]
pub struct MeBody {
    /// The caller's current API key; null when it has none.
    pub api_key: Option<ApiKeyInfo>,
    /// Null for principals without an account (the service token).
    #[schema(value_type = Option<String>, format = DateTime)]
    pub created_at: Option<DateTime<Utc>>,
    pub email: Option<String>,
    pub id: String,
    /// `user`, `api_key` or `service_token`.
    #[schema(value_type = String)]
    pub kind: PrincipalKind,
    /// `member`, `admin` or `owner`; null = no rights.
    pub role: Option<&'static str>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyInfo {
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_used_at: Option<DateTime<Utc>>,
    pub prefix: String,
}

/// A new API key, shown this once. Fields in alphabetical order.
#[derive(Debug, Serialize, ToSchema)]
pub struct NewApiKeyBody {
    /// The key (`ara_…`); it is not shown again.
    pub api_key: String,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
    pub note: &'static str,
    pub prefix: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RevokedBody {
    /// How many keys were revoked.
    pub revoked: u64,
}

/// Exchange email and password for an access token and a refresh token.
#[utoipa::path(
    post,
    path = "/auth/login",
    tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "the session; with `use_cookie: true` the body has no `refresh_token` and the token is set as the HttpOnly cookie `aragora_refresh`",
            body = SessionBody,
            headers(("Set-Cookie" = String, description = "only with `use_cookie: true`: `aragora_refresh=<token>; HttpOnly; SameSite=Strict; Path=/api/auth; Max-Age=<refresh lifetime>` (+ `Secure` over HTTPS)"))),
        (status = 401, description = "invalid email or password", body = ErrorBody),
        (status = 404, description = "password login is not configured (no ARAGORA_JWT_SECRET)", body = ErrorBody),
        (status = 423, description = "account locked; see Retry-After", body = ErrorBody),
        (status = 429, description = "too many failed logins from this client", body = ErrorBody),
    )
)]
pub async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Json(body): Json<LoginRequest>,
) -> Result<Response, ApiError> {
    let ip = state.auth.client_ip(peer, &headers);
    let session = state.accounts.login(&body.email, body.password, ip).await?;
    tracing::info!(target: "aragora::auth", user_id = %session.user.id, cookie = body.use_cookie, "login");
    let tokens = session_body(session);
    if body.use_cookie {
        let secure = is_https(&state, peer, &headers);
        return Ok(with_cookie(&state, tokens, secure));
    }
    Ok(Json(tokens).into_response())
}

/// A token response for a browser session: the refresh token moves from the body into the
/// cookie.
fn with_cookie(state: &AppState, mut tokens: SessionBody, secure: bool) -> Response {
    let refresh = tokens.refresh_token.take().unwrap_or_default();
    let mut response = Json(tokens).into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        session_cookie(
            &refresh,
            state.config.auth.refresh_token_ttl.as_secs(),
            secure,
        ),
    );
    response
}

/// Rotate a refresh token: the old one is spent, a new pair is issued. Presenting a spent
/// token again revokes its whole family (a stolen token was used).
///
/// The token comes from the body, or, when the body has none (or there is no body), from
/// the `aragora_refresh` cookie; a cookie refresh sets the rotated cookie and leaves
/// `refresh_token` out of the body.
#[utoipa::path(
    post,
    path = "/auth/refresh",
    tag = "auth",
    request_body(content = Option<RefreshRequest>, description = "optional: without `refresh_token` (or without a body) the `aragora_refresh` cookie is used"),
    responses(
        (status = 200, description = "a new token pair, same shape as login (without `refresh_token` when the cookie was used)",
            body = SessionBody,
            headers(("Set-Cookie" = String, description = "cookie sessions: the rotated `aragora_refresh` cookie"))),
        (status = 401, description = "invalid, expired, revoked or reused refresh token (cookie sessions: the cookie is cleared)", body = ErrorBody),
        (status = 404, description = "password login is not configured (no ARAGORA_JWT_SECRET)", body = ErrorBody),
        (status = 403, description = "cookie session called from a foreign `Origin`", body = ErrorBody),
    )
)]
pub async fn refresh(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    state.accounts.configured()?;
    let cookie = match presented_refresh(&state, peer, &uri, &headers, &body)? {
        Ok(RefreshFrom::Body(token)) => {
            let session = state.accounts.refresh(&token).await?;
            return Ok(Json(session_body(session)).into_response());
        }
        Ok(RefreshFrom::Cookie(cookie)) => cookie,
        Err(rejection) => return Ok(*rejection),
    };
    let secure = is_https(&state, peer, &headers);
    let Some(token) = cookie else {
        return Err(ApiError::Unauthorized(
            "no refresh token: send `{\"refresh_token\": …}` or the aragora_refresh cookie".into(),
        ));
    };
    match state.accounts.refresh(&token).await {
        Ok(session) => Ok(with_cookie(&state, session_body(session), secure)),
        Err(e @ AccountError::InvalidRefresh) => {
            let mut response = ApiError::from(e).into_response();
            response
                .headers_mut()
                .append(header::SET_COOKIE, clearing_cookie(secure));
            Ok(response)
        }
        Err(e) => Err(e.into()),
    }
}

/// Where the refresh token of a refresh or logout came from.
enum RefreshFrom {
    /// `{"refresh_token": …}` in the body.
    Body(String),
    /// No token in the body: the `aragora_refresh` cookie, if any (the Origin was checked).
    Cookie(Option<String>),
}

/// The refresh token a refresh or logout presents: from the (optional) JSON body, else from
/// the session cookie after the CSRF origin check. The inner `Err` is the body's rejection
/// (415/400/422) as a ready response.
fn presented_refresh(
    state: &AppState,
    peer: SocketAddr,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Result<RefreshFrom, Box<Response>>, ApiError> {
    let body: RefreshRequest = match optional_json(headers, body) {
        Ok(body) => body,
        Err(rejection) => return Ok(Err(rejection)),
    };
    if let Some(token) = body.refresh_token {
        return Ok(Ok(RefreshFrom::Body(token)));
    }
    check_origin(state, peer, uri, headers)?;
    Ok(Ok(RefreshFrom::Cookie(refresh_cookie(headers))))
}

/// Revoke the refresh token's family. The access token expires on its own (short-lived).
/// Without `refresh_token` in the body (or without a body) the `aragora_refresh` cookie's
/// family is revoked and the cookie cleared.
#[utoipa::path(
    post,
    path = "/auth/logout",
    tag = "auth",
    request_body(content = Option<RefreshRequest>, description = "optional: without `refresh_token` (or without a body) the `aragora_refresh` cookie is used"),
    responses(
        (status = 204, description = "logged out (also when the token was unknown)",
            headers(("Set-Cookie" = String, description = "cookie sessions: clears `aragora_refresh`"))),
        (status = 403, description = "cookie session called from a foreign `Origin`", body = ErrorBody),
    )
)]
pub async fn logout(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (token, from_cookie) = match presented_refresh(&state, peer, &uri, &headers, &body)? {
        Ok(RefreshFrom::Body(token)) => (Some(token), false),
        Ok(RefreshFrom::Cookie(cookie)) => (cookie, true),
        Err(rejection) => return Ok(*rejection),
    };
    if let Some(token) = token
        && let Some(user_id) = state.accounts.logout(&token).await?
    {
        tracing::info!(target: "aragora::auth", user_id = %user_id, cookie = from_cookie, "logout");
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    if from_cookie {
        let secure = is_https(&state, peer, &headers);
        response
            .headers_mut()
            .append(header::SET_COOKIE, clearing_cookie(secure));
    }
    Ok(response)
}

/// The caller: id, email, role, created_at, and the API key's prefix and last use.
#[utoipa::path(
    get,
    path = "/auth/me",
    tag = "auth",
    responses(
        (status = 200, description = "the caller", body = MeBody),
        (status = 401, body = ErrorBody),
    )
)]
pub async fn me(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<MeBody>, ApiError> {
    let profile = state.accounts.profile(&principal).await?;
    Ok(Json(MeBody {
        api_key: profile.api_key.map(|key| ApiKeyInfo {
            created_at: key.created_at,
            last_used_at: key.last_used_at,
            prefix: key.prefix,
        }),
        created_at: profile.created_at,
        email: principal.email,
        id: principal.id,
        kind: principal.kind,
        role: principal.role.map(Role::as_str),
    }))
}

/// Create an API key (`ara_…`), shown this once; any previous key of the caller is revoked.
#[utoipa::path(
    post,
    path = "/auth/api-key",
    tag = "auth",
    responses(
        (status = 201, description = "the new key; it is not shown again", body = NewApiKeyBody),
        (status = 401, body = ErrorBody),
    )
)]
pub async fn create_api_key(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Result<Response, ApiError> {
    let crate::auth::accounts::NewApiKey { key, record } =
        state.accounts.create_api_key(&principal).await?;
    Ok((
        StatusCode::CREATED,
        Json(NewApiKeyBody {
            api_key: key,
            created_at: record.created_at,
            note: "store this key now: it is not shown again",
            prefix: record.prefix,
        }),
    )
        .into_response())
}

/// Revoke the caller's API key: at once on this instance, within `auth_cache_ms` (≤ 1 s) on
/// every other.
#[utoipa::path(
    delete,
    path = "/auth/api-key",
    tag = "auth",
    responses((status = 200, description = "how many keys were revoked", body = RevokedBody), (status = 401, body = ErrorBody))
)]
pub async fn revoke_api_key(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<RevokedBody>, ApiError> {
    let revoked = state.accounts.revoke_api_keys(&principal).await?;
    Ok(Json(RevokedBody { revoked }))
}

/// Create a member account (only when `registration_enabled`; 404 otherwise).
#[utoipa::path(
    post,
    path = "/auth/register",
    tag = "auth",
    request_body = RegisterRequest,
    responses(
        (status = 201, description = "the account (role `member`)", body = AccountBody),
        (status = 404, description = "registration is disabled", body = ErrorBody),
        (status = 409, description = "email taken", body = ErrorBody),
        (status = 422, description = "bad email or password", body = ErrorBody),
    )
)]
pub async fn register(
    State(state): State<AppState>,
    Json(body): Json<RegisterRequest>,
) -> Result<Response, ApiError> {
    let user = state.accounts.register(&body.email, body.password).await?;
    Ok((
        StatusCode::CREATED,
        Json(AccountBody {
            email: user.email,
            id: user.id,
            role: user.role,
        }),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes a `json!` object of the same fields would have had (keys sorted).
    fn as_value_text<T: Serialize>(body: &T) -> String {
        serde_json::to_value(body).unwrap().to_string()
    }

    #[test]
    fn bodies_write_their_keys_in_alphabetical_order() {
        let now = Utc::now();
        let session = SessionBody {
            access_token: "a".into(),
            expires_in: 900,
            refresh_expires_in: 86_400,
            refresh_token: Some("r".into()),
            token_type: "Bearer",
            user: AccountBody {
                email: "e@x.org".into(),
                id: "u1".into(),
                role: "member".into(),
            },
        };
        let text = serde_json::to_string(&session).unwrap();
        assert_eq!(text, as_value_text(&session));
        assert!(text.contains("\"refresh_token\":\"r\""));
        let cookie_session = SessionBody {
            refresh_token: None,
            ..session
        };
        let text = serde_json::to_string(&cookie_session).unwrap();
        assert_eq!(text, as_value_text(&cookie_session));
        assert!(!text.contains("refresh_token\""));

        for me in [
            MeBody {
                api_key: None,
                created_at: None,
                email: None,
                id: "service".into(),
                kind: PrincipalKind::ServiceToken,
                role: Some("owner"),
            },
            MeBody {
                api_key: Some(ApiKeyInfo {
                    created_at: now,
                    last_used_at: None,
                    prefix: "ara_1234".into(),
                }),
                created_at: Some(now),
                email: Some("e@x.org".into()),
                id: "u1".into(),
                kind: PrincipalKind::ApiKey,
                role: None,
            },
        ] {
            let text = serde_json::to_string(&me).unwrap();
            assert_eq!(text, as_value_text(&me));
            assert!(text.contains("\"api_key\":") && text.contains("\"created_at\":"));
        }
        let key = NewApiKeyBody {
            api_key: "ara_x".into(),
            created_at: now,
            note: "n",
            prefix: "ara_".into(),
        };
        assert_eq!(serde_json::to_string(&key).unwrap(), as_value_text(&key));
    }
}
