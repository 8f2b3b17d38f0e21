//! The per-route middleware of the API port: the gate ([`gate`]) resolves the caller's
//! credentials once, enforces the access the matched route declares ([`access`]) and then
//! applies the rate limits ([`ratelimit`]) — one middleware layer for all three, inside the
//! request pipeline (401s and 429s get correlation ids and the log line) and inside CORS
//! (browsers can read a 429; preflights are answered before it).

pub mod access;
pub mod ratelimit;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::{ConnectInfo, Request};
use axum::response::{IntoResponse, Response};
use tower::{Service, ServiceExt};

pub use access::{AccessTable, ApiRouter, RouteMatch};

use crate::auth::extractors::presented;
use crate::auth::{Access, Authenticator, CredentialError, Principal};
use crate::error::ApiError;
use crate::ratelimit::RateLimiter;

/// What the gate needs, built once with the router.
pub struct Gate {
    pub auth: Arc<Authenticator>,
    pub limiter: Arc<RateLimiter>,
}

/// The gate as a service around the router (`S`): one per server, cloned per connection,
/// never per route. The request pipeline has already matched the route ([`RouteMatch`] in
/// the request's extensions); a request for no route is answered with the JSON 404 here
/// and never reaches the router, so a route added to the router without a declaration is
/// never served to anyone.
#[derive(Clone)]
pub struct Gated<S> {
    gate: Arc<Gate>,
    inner: S,
}

impl<S> Gated<S> {
    pub fn new(gate: Arc<Gate>, inner: S) -> Self {
        Gated { gate, inner }
    }
}

type BoxResponse = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl<S> Service<Request> for Gated<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response;
    type Error = Infallible;
    type Future = futures::future::Either<S::Future, BoxResponse>;

    /// Always ready: the router it calls is too (axum's `Router` is).
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        use futures::future::Either;
        // Taken out, not read in place: the handlers never need it, and a request's
        // extensions then stay within their first table (growing it costs more than the rest
        // of the gate).
        let route = req.extensions_mut().remove::<RouteMatch>();
        match admit_now(&self.gate, route.as_ref(), &mut req) {
            // Nothing to wait for: straight to the handlers, no future of the gate's own.
            Ok(Admitted::Unlimited) => Either::Left(self.inner.call(req)),
            Ok(Admitted::Limited) => {
                let gate = self.gate.clone();
                let inner = self.inner.clone();
                Either::Right(Box::pin(async move {
                    Ok(ratelimit::limit(&gate.limiter, req, inner).await)
                }))
            }
            Err(known) => {
                let gate = self.gate.clone();
                let inner = self.inner.clone();
                Either::Right(Box::pin(async move {
                    Ok(gate_request(&gate, req, inner, route, known).await)
                }))
            }
        }
    }
}

/// A request [`admit_now`] let through, its principal stored.
enum Admitted {
    /// No rate limit applies to its route.
    Unlimited,
    /// Its route is rate limited: the limiter decides next.
    Limited,
}

/// The gate's decision when it needs no I/O: the route matched, the principal known without
/// a lookup ([`Authenticator::principal_now`]) and allowed on the route. The principal is
/// then stored for the handlers. `Err` leaves the rest to [`gate_request`]: a credential to
/// look up (`Err(None)`), and every refusal (its answer is built inside the request's scope,
/// where its correlation id is), with the principal when it is already known.
fn admit_now(
    gate: &Gate,
    route: Option<&RouteMatch>,
    req: &mut Request,
) -> Result<Admitted, Option<Principal>> {
    let Some(route) = route else {
        return Err(None);
    };
    let access = route.access;
    if route.pattern.is_none() {
        return Err(None);
    }
    let token = presented(req.headers());
    let principal = gate
        .auth
        .principal_now(token.as_deref(), peer_ip(req), req.headers())
        .ok_or(None)?;
    if access.check(&principal).is_err() {
        return Err(Some(principal));
    }
    req.extensions_mut().insert(principal);
    Ok(
        if crate::ratelimit::rule_for(req.method(), req.uri().path()).is_some() {
            Admitted::Limited
        } else {
            Admitted::Unlimited
        },
    )
}

/// The address the request came from (the connection's peer).
fn peer_ip(req: &Request) -> Option<std::net::IpAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

/// Send `req` to `inner` and wait for its response.
pub(crate) async fn run<S>(inner: S, req: Request) -> Response
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    match inner.oneshot(req).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// Resolve the principal once (`known` when [`admit_now`] already did), check it against the
/// route's declared access, store it for the handlers (`Extension<Principal>`), then
/// rate-limit.
async fn gate_request<S>(
    gate: &Gate,
    mut req: Request,
    inner: S,
    route: Option<RouteMatch>,
    known: Option<Principal>,
) -> Response
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    let Some(route) = route else {
        return ApiError::Internal("request reached the gate without a route match".into())
            .into_response();
    };
    if route.pattern.is_none() {
        return super::pipeline::not_found(req).await;
    }
    let access = route.access;
    let resolved = match known {
        Some(principal) => Ok(principal),
        None => {
            let token = presented(req.headers());
            gate.auth
                .principal_for(token.as_deref(), peer_ip(&req), req.headers())
                .await
        }
    };
    let principal = match resolved {
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
            tracing::error!(
                target: "aragora::http",
                route = route.label(),
                "route without a declared access policy: refused (declare it in its router)"
            );
        }
        return e.into_response();
    }
    req.extensions_mut().insert(principal);
    // Rate limiting follows at once, in this same step; limits key on the principal.
    ratelimit::limit(&gate.limiter, req, inner).await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;
    use crate::auth::CredentialCache;
    use crate::config::{Config, Flags};
    use crate::http::pipeline::Pipeline;

    /// A router with one declared route, one added without a declaration, and a fallback,
    /// behind the pipeline and the gate. Auth is off: every caller is the local owner.
    async fn app() -> Pipeline<Gated<axum::Router>> {
        let config = Config::load_with(None, &Flags::default(), |k| {
            (k == "ARAGORA_DATABASE_URL").then(|| "sqlite::memory:".to_owned())
        })
        .expect("valid config");
        let store = crate::app::open_store(&config.database)
            .await
            .expect("store");
        let gate = Arc::new(Gate {
            auth: Arc::new(Authenticator::new(
                &config,
                store.clone(),
                Arc::new(CredentialCache::new(Duration::ZERO)),
            )),
            limiter: Arc::new(RateLimiter::new(&config, None)),
        });
        let (router, access) = ApiRouter::<()>::new()
            .route(Access::Public, "/declared", get(|| async { "ok" }))
            .finish();
        let router = router
            .route("/forgotten", get(|| async { "should not be served" }))
            .fallback(|| async { StatusCode::NOT_FOUND });
        Pipeline::new(
            Arc::new(access),
            Duration::from_secs(5),
            Gated::new(gate, router),
        )
    }

    async fn get_path(app: &Pipeline<Gated<axum::Router>>, path: &str) -> (StatusCode, String) {
        let request = Request::get(path).body(Body::empty()).unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn undeclared_routes_are_never_served_even_to_the_owner() {
        let app = app().await;
        assert_eq!(
            get_path(&app, "/declared").await,
            (StatusCode::OK, "ok".to_owned())
        );
        // The route exists in the router, but nobody declared who may call it: the pipeline
        // does not know it, and the gate answers as for a path without a route.
        let (status, body) = get_path(&app, "/forgotten").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains("no route for GET /forgotten"), "{body}");
        let (status, body) = get_path(&app, "/nowhere").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains("no route for GET /nowhere"), "{body}");
    }
}
