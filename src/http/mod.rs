//! The REST API. One module per resource, each owning its `router()` in which every route
//! declares who may call it (`ApiRouter::public`, `member`, `admin`); this module composes
//! them under `/api` and the `/api/v1` alias and wraps them in the request pipeline and the
//! gate (`middleware`), which enforces those declarations.

mod agents;
mod auth;
mod billing;
mod compat;
mod debates;
pub(crate) mod headers;
mod health;
mod leaderboard;
mod metrics_route;
pub mod middleware;
mod openapi;
mod ops;
mod pipeline;
mod rate_limits;
mod receipts;
pub mod server;
mod system;
mod ws_stats;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::routing::get;
use tower::{Layer, ServiceBuilder};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::app::AppState;
use crate::auth::Access;
use crate::config::Config;
use crate::telemetry::correlation;

pub use health::HealthProbe;
pub use middleware::ApiRouter;

/// Routes below `/api`, mounted at both `/api` and `/api/v1`. Every handler registered
/// here with `routes!` is described in the OpenAPI document from its own annotations, with
/// the access its router declares.
fn api_routes() -> ApiRouter {
    ApiRouter::new()
        .merge(health::router())
        .merge(metrics_route::router())
        .merge(openapi::router())
        .merge(debates::router())
        .merge(agents::router())
        .merge(leaderboard::router())
        .merge(ws_stats::router())
        .merge(rate_limits::router())
        .merge(auth::router())
        .merge(billing::router())
        .merge(system::router())
        .merge(ops::router())
        .merge(compat::router())
        .merge(receipts::debate_router())
}

/// Routes mounted under `/api` only: the receipts API lives at `/api/v2/receipts`.
fn api_only_routes() -> ApiRouter {
    api_routes().merge(receipts::v2_router())
}

/// The OpenAPI document of the whole API, generated from the handlers.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    let (_, mut document) = OpenApiRouter::<AppState>::with_openapi(openapi::ApiDoc::openapi())
        .merge(
            ApiRouter::new()
                .nest("/api", api_only_routes())
                .into_openapi_router(),
        )
        .split_for_parts();
    openapi::add_pipeline_responses(&mut document);
    document
}

/// The whole HTTP application for the API port: the request pipeline around CORS around the
/// gate around the router. The middleware wraps the router once, not each route (axum's
/// `Router::layer` would clone every layer's service for every request), so it is built
/// with tower here and not with `Router::layer`.
pub fn router(
    state: AppState,
) -> impl tower::Service<
    axum::extract::Request,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future: Send + 'static,
> + Clone
+ Send
+ 'static {
    let config = state.config.clone();
    let mut api = ApiRouter::new()
        .nest("/api", api_only_routes())
        .nest("/api/v1", api_routes())
        // One base URL reaches the WebSocket too (docs/websocket.md); the handshake checks the
        // credentials itself (1008, `ws_anonymous_read`).
        .route(
            Access::Public,
            "/ws",
            get(crate::ws::upgrade).with_state(state.ws_server.clone()),
        )
        // Prometheus' default scrape path, and the SDK's `system.get_prometheus_metrics`.
        .route(Access::Public, "/metrics", get(compat::root_metrics))
        // The receipts' trust anchor, where verifiers look for it.
        .merge(receipts::well_known());
    // The browser console's files: outside /api (not rate limited, not in the OpenAPI
    // document), public; the data it shows comes from /api, which enforces the roles.
    for (path, methods) in crate::admin::routes(&config) {
        api = api.route(Access::Public, path, methods);
    }
    let (routes, access) = api.finish();
    let gate = Arc::new(middleware::Gate {
        auth: state.auth.clone(),
        limiter: state.ratelimit.clone(),
    });
    let timeout = config.http.request_timeout;
    let handlers = ServiceBuilder::new()
        .map_response(|response: axum::http::Response<_>| response.map(Body::new))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(RequestBodyLimitLayer::new(config.http.max_body_bytes))
        // axum's body extractors stop at their own default (2 MiB); up to that, the body
        // limit above stops a body first, so their limit is raised (an extension inserted
        // into every request) only for a larger `max_body_bytes`.
        .option_layer(
            (config.http.max_body_bytes > AXUM_BODY_LIMIT)
                .then(|| DefaultBodyLimit::max(config.http.max_body_bytes)),
        )
        .service(routes.fallback(pipeline::not_found).with_state(state));
    // Credentials are resolved once in the gate, checked against the route's declared
    // access, then rate limits applied in the same step, so limits key on the authenticated
    // principal. Inside the pipeline (401s and 429s get correlation ids and the log line)
    // and inside CORS (browsers can read a 429; preflights are answered before it).
    let gated = middleware::Gated::new(gate, handlers);
    let cors = cors(&config);
    // tower-http checks the rules (no credentials with a wildcard) when it wraps a
    // service: once here, at start-up, before any browser request.
    let _ = cors.layer(());
    pipeline::Pipeline::new(
        Arc::new(access),
        timeout,
        BrowserCors {
            cors: Arc::new(cors),
            inner: gated,
        },
    )
}

/// The body limit of axum's extractors when none is set (`DefaultBodyLimit`).
const AXUM_BODY_LIMIT: usize = 2 * 1024 * 1024;

/// CORS for the requests it concerns: those with an `Origin` (browsers send one on every
/// cross-origin request, and on same-origin ones that are not GET or HEAD) and every
/// `OPTIONS` (preflights, answered by the CORS layer). Any other request goes straight to
/// the gate: the CORS layer would build its response headers (credentials, exposed headers)
/// for a caller that reads none of them, which was about 1.5k instructions of a liveness
/// request. `Vary` is on every response either way (the pipeline adds it).
#[derive(Clone)]
struct BrowserCors<S> {
    /// Shared: hyper clones the whole service stack for every request, and the layer's
    /// settings (origins, methods, headers) are several allocations to clone.
    cors: Arc<CorsLayer>,
    inner: S,
}

impl<S> tower::Service<axum::extract::Request> for BrowserCors<S>
where
    S: tower::Service<
            axum::extract::Request,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone,
{
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = futures::future::Either<tower_http::cors::ResponseFuture<S::Future>, S::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: axum::extract::Request) -> Self::Future {
        use futures::future::Either;
        if req.method() == Method::OPTIONS
            || headers::first(req.headers(), &header::ORIGIN).is_some()
        {
            // The inner service was made ready above; the clone's readiness is the same
            // (the gate is always ready).
            Either::Left(self.cors.layer(self.inner.clone()).call(req))
        } else {
            Either::Right(self.inner.call(req))
        }
    }
}

/// The `Vary` of every API response: what CORS answers depend on. The pipeline adds it
/// ([`pipeline::Pipeline`]); the CORS layer is told to add none.
pub(crate) const CORS_VARY: &str =
    "origin, access-control-request-method, access-control-request-headers";

fn cors(config: &Config) -> CorsLayer {
    let origins: Vec<HeaderValue> = config
        .http
        .allowed_origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::OPTIONS])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("x-api-key"),
            HeaderName::from_static(correlation::HEADER),
        ])
        .expose_headers([
            HeaderName::from_static(correlation::HEADER),
            header::RETRY_AFTER,
            HeaderName::from_static("x-ratelimit-limit"),
            HeaderName::from_static("x-ratelimit-remaining"),
            HeaderName::from_static("x-ratelimit-reset"),
        ])
        .allow_credentials(true)
        .max_age(std::time::Duration::from_secs(600))
        .vary([])
}

fn panic_response(_panic: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    tracing::error!(target: "aragora::http", "handler panicked");
    crate::error::error_response(
        crate::error::ErrorCode::Internal,
        "the server hit an internal error; the correlation id identifies it in the logs",
    )
}

#[cfg(test)]
mod tests {
    use axum::http::Method;

    use super::*;

    /// The pipeline finds a request's route with its own matcher: every documented route
    /// must resolve to its own pattern, or its requests would be labelled `unmatched` and
    /// answered 404 before reaching the router.
    #[test]
    fn every_documented_route_resolves_to_itself() {
        let (_, table) = ApiRouter::new()
            .nest("/api", api_only_routes())
            .nest("/api/v1", api_routes())
            .finish();
        let document = openapi_document();
        assert!(document.paths.paths.len() > 20);
        for pattern in document.paths.paths.keys() {
            // A concrete path for the pattern: each `{param}` becomes a value.
            let path: String = pattern
                .split('/')
                .map(|segment| {
                    if segment.starts_with('{') {
                        "value-1"
                    } else {
                        segment
                    }
                })
                .collect::<Vec<_>>()
                .join("/");
            let found = table.resolve(&path, &Method::GET);
            assert_eq!(found.label(), pattern, "{path}");
        }
    }
}
