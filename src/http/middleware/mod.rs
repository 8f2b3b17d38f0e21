//! The per-route middleware of the API port: the gate ([`gate`]) resolves the caller's
//! credentials once, enforces the access the matched route declares ([`access`]) and then
//! applies the rate limits ([`ratelimit`]) — one middleware layer for all three, inside the
//! request pipeline (401s and 429s get correlation ids and the log line) and inside CORS
//! (browsers can read a 429; preflights are answered before it).

pub mod access;
pub mod ratelimit;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

pub use access::{AccessTable, ApiRouter};

use crate::auth::extractors::presented;
use crate::auth::{Access, Authenticator, CredentialError, Principal};
use crate::error::ApiError;
use crate::ratelimit::RateLimiter;

/// What the gate needs, built once with the router (the middleware's state: one reference
/// count per request, like the application state it replaces there).
pub struct Gate {
    pub auth: Arc<Authenticator>,
    pub limiter: Arc<RateLimiter>,
    /// The declared access of every route.
    pub access: AccessTable,
}

/// The middleware: resolve the principal once, check it against the route's declared
/// access, store it for the handlers (`Extension<Principal>`), then rate-limit.
pub async fn gate(State(gate): State<Arc<Gate>>, mut req: Request, next: Next) -> Response {
    let access = match req.extensions().get::<MatchedPath>() {
        Some(route) => gate.access.lookup(route.as_str(), req.method()),
        // No route matched: the JSON 404 answers whoever asks.
        None => Access::Public,
    };
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let token = presented(req.headers());
    let principal = match gate
        .auth
        .principal_for(token.as_deref(), peer, req.headers())
        .await
    {
        Ok(p) => p,
        // A bad or uncheckable credential on a public route is ignored (the caller is
        // anonymous there), so health keeps answering during a database outage.
        Err(_) if access == Access::Public => Principal::anonymous(),
        Err(CredentialError::Invalid) => {
            return ApiError::Unauthorized("invalid or expired credentials".into()).into_response();
        }
        Err(CredentialError::Unavailable(e)) => return e.into_response(),
    };
    if let Err(e) = access.check(&principal) {
        if access == Access::Deny {
            let route = req
                .extensions()
                .get::<MatchedPath>()
                .map(MatchedPath::as_str);
            tracing::error!(
                target: "aragora::http",
                route,
                "route without a declared access policy: refused (declare it in its router)"
            );
        }
        return e.into_response();
    }
    req.extensions_mut().insert(principal);
    // Rate limiting follows at once, in this same middleware; limits key on the principal.
    ratelimit::limit(&gate.limiter, req, next).await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::Router;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;
    use crate::auth::CredentialCache;
    use crate::config::{Config, Flags};

    /// A router with one declared route, one added without a declaration, and a fallback,
    /// behind the gate. Auth is off: every caller is the local owner.
    async fn app() -> Router {
        let config = Config::load_with(None, &Flags::default(), |k| {
            (k == "ARAGORA_DATABASE_URL").then(|| "sqlite::memory:".to_owned())
        })
        .expect("valid config");
        let store = crate::app::open_store(&config.database)
            .await
            .expect("store");
        let gate_state = |access| {
            Arc::new(Gate {
                auth: Arc::new(Authenticator::new(
                    &config,
                    store.clone(),
                    Arc::new(CredentialCache::new(Duration::ZERO)),
                )),
                limiter: Arc::new(RateLimiter::new(&config, None)),
                access,
            })
        };
        let (router, access) = ApiRouter::<()>::new()
            .route(Access::Public, "/declared", get(|| async { "ok" }))
            .finish();
        router
            .route("/forgotten", get(|| async { "should not be served" }))
            .fallback(|| async { StatusCode::NOT_FOUND })
            .layer(axum::middleware::from_fn_with_state(
                gate_state(access),
                gate,
            ))
    }

    async fn status(app: &Router, path: &str) -> StatusCode {
        let request = Request::get(path).body(Body::empty()).unwrap();
        app.clone().oneshot(request).await.unwrap().status()
    }

    #[tokio::test]
    async fn undeclared_routes_are_refused_even_to_the_owner() {
        let app = app().await;
        assert_eq!(status(&app, "/declared").await, StatusCode::OK);
        assert_eq!(status(&app, "/forgotten").await, StatusCode::FORBIDDEN);
        assert_eq!(status(&app, "/nowhere").await, StatusCode::NOT_FOUND);
    }
}
