//! `GET /api/openapi.json`: the OpenAPI 3.1 document, generated once from the handlers'
//! annotations (see `http::openapi_document`), never written by hand.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::OpenApi;
use utoipa_axum::routes;

use super::ApiRouter;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Aragora API",
        description = "Structured debates between LLM agents, streamed live. Every path except /api/v2/… (receipts) is also served under /api/v1. Errors share one body: ErrorBody."
    ),
    components(schemas(
        crate::error::ErrorBody,
        crate::debate::EventBody,
        crate::store::DebateStatus
    )),
    modifiers(&Credentials),
    tags(
        (name = "health", description = "Liveness, readiness and dependency checks"),
        (name = "observability", description = "Metrics and the API description"),
        (name = "debates", description = "Debates, their transcripts and the leaderboard"),
        (name = "agents", description = "Agents, circuit breakers and test calls"),
        (name = "auth", description = "Login, token refresh, the caller, API keys"),
        (name = "billing", description = "Usage and cost"),
        (name = "receipts", description = "Signed decision receipts (Open Decision Receipt 0.1 / 0.2) \
                                            and their verification"),
        (name = "system", description = "Operator endpoints (/api/system, /api/debug, /api/admin): \
                                          admin or owner when auth is on"),
    )
)]
pub struct ApiDoc;

/// The credentials the API accepts: `Authorization: Bearer` with an access
/// token, an `ara_` API key or the service token; or `X-API-Key`.
struct Credentials;

impl utoipa::Modify for Credentials {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT access token, ara_ API key or service token")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
    }
}

pub fn router() -> ApiRouter {
    ApiRouter::new().public(routes!(get_openapi))
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "observability",
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json"))
)]
pub async fn get_openapi() -> Response {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    let json = DOCUMENT.get_or_init(|| {
        super::openapi_document()
            .to_json()
            .expect("the OpenAPI document serialises")
    });
    ([(header::CONTENT_TYPE, "application/json")], json.clone()).into_response()
}
