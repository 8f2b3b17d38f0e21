//! The REST API. One module per resource, each owning its `router()` in which every route
//! declares who may call it (`ApiRouter::public`, `member`, `admin`); this module composes
//! them under `/api` and the `/api/v1` alias and wraps them in the request pipeline and the
//! gate (`middleware`), which enforces those declarations.

mod agents;
mod auth;
mod billing;
mod compat;
mod debates;
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

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::routing::get;
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
        .nest("/api", api_only_routes().into_openapi_router())
        .split_for_parts();
    openapi::add_pipeline_responses(&mut document);
    document
}

/// The whole HTTP application for the API port.
pub fn router(state: AppState) -> Router {
    let config = state.config.clone();
    let (routes, access) = ApiRouter::new()
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
        .merge(receipts::well_known())
        // The browser console's files: outside /api (not rate limited, not in the OpenAPI
        // document), public; the data it shows comes from /api, which enforces the roles.
        .merge_under(Access::Public, "/admin", crate::admin::router(&config))
        .finish();
    let gate = Arc::new(middleware::Gate {
        auth: state.auth.clone(),
        limiter: state.ratelimit.clone(),
        access,
    });
    routes
        .fallback(pipeline::not_found)
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(DefaultBodyLimit::max(config.http.max_body_bytes))
        .layer(RequestBodyLimitLayer::new(config.http.max_body_bytes))
        // Credentials are resolved once here, checked against the route's declared access,
        // then rate limits applied in the same layer, so limits key on the authenticated
        // principal. Inside the pipeline (401s and 429s get correlation ids and the log
        // line) and inside CORS (browsers can read a 429; preflights are answered before it).
        .layer(axum::middleware::from_fn_with_state(gate, middleware::gate))
        .layer(cors(&config))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            pipeline::pipeline,
        ))
        .with_state(state)
}

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
}

fn panic_response(_panic: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    tracing::error!(target: "aragora::http", "handler panicked");
    crate::error::error_response(
        crate::error::ErrorCode::Internal,
        "the server hit an internal error; the correlation id identifies it in the logs",
    )
}
