//! `GET /api/openapi.json`: the OpenAPI 3.1 document, generated once from the handlers'
//! annotations (see `http::openapi_document`), never written by hand.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::OpenApi;
use utoipa_axum::routes;

use super::ApiRouter;
use crate::auth::Access;
use crate::error::ErrorCode;

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

/// The error responses the request pipeline can give an operation, whatever its handler
/// does: derived from the same rules the pipeline applies (URI and header limits, body limit
/// and content type, the route's access policy, rate-limit rule), with the code table's
/// statuses. A new route is documented by its own annotations only.
pub fn pipeline_statuses(
    method: &str,
    path: &str,
    has_body: bool,
    access: Access,
) -> Vec<(ErrorCode, &'static str)> {
    let mut out = vec![
        (
            ErrorCode::BadRequest,
            "a malformed request: a control character in the path or a query value, a bad \
             path or query parameter, or a body that is not valid JSON",
        ),
        (ErrorCode::UriTooLong, "the request target is too long"),
        (ErrorCode::HeaderFieldsTooLarge, "too many request headers"),
        (
            ErrorCode::Internal,
            "an unexpected error (the correlation id identifies it in the logs)",
        ),
        (
            ErrorCode::ServiceUnavailable,
            "the request ran past the request timeout (`request_timeout`), or the database \
             is unreachable (`database_unavailable`, with Retry-After) or cannot write \
             (`storage_unavailable`)",
        ),
    ];
    let writes = matches!(method, "post" | "put" | "patch");
    if writes {
        out.push((
            ErrorCode::PayloadTooLarge,
            "the body is larger than the configured limit",
        ));
        // The one route that reads JSON whatever the Content-Type says (the runbook's curl).
        if !path.ends_with("/debug/agent-test") {
            out.push((
                ErrorCode::UnsupportedMediaType,
                "the body is not application/json",
            ));
        }
    }
    if has_body {
        out.push((
            ErrorCode::Validation,
            "the body does not match the request schema",
        ));
    }
    if writes || method == "delete" {
        out.push((
            ErrorCode::StorageFull,
            "the database's disk is full; nothing was written",
        ));
    }
    match access {
        Access::Public => {}
        Access::Member => out.push((ErrorCode::Unauthorized, "no or invalid credentials")),
        Access::Admin => {
            out.push((ErrorCode::Unauthorized, "no or invalid credentials"));
            out.push((ErrorCode::Forbidden, "the caller's role is below admin"));
        }
        // An undeclared operation is refused to everyone.
        Access::Deny => {
            out.push((ErrorCode::Unauthorized, "no or invalid credentials"));
            out.push((ErrorCode::Forbidden, "this operation is open to no one"));
        }
    }
    let http_method = axum::http::Method::from_bytes(method.to_ascii_uppercase().as_bytes());
    if let Ok(http_method) = http_method
        && crate::ratelimit::rule_for(&http_method, path).is_some()
    {
        out.push((ErrorCode::RateLimited, "rate limited; see Retry-After"));
    }
    out
}

/// Add [`pipeline_statuses`] to every operation that does not document them itself, each
/// with the error body.
pub fn add_pipeline_responses(document: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
    for (path, item) in &mut document.paths.paths {
        let operations = [
            ("get", &mut item.get),
            ("put", &mut item.put),
            ("post", &mut item.post),
            ("delete", &mut item.delete),
            ("patch", &mut item.patch),
        ];
        for (method, operation) in operations {
            let Some(operation) = operation else { continue };
            let has_body = operation.request_body.is_some();
            let access = super::middleware::access::declared(operation).unwrap_or(Access::Deny);
            for (code, description) in pipeline_statuses(method, path, has_body, access) {
                let status = code.status().as_u16().to_string();
                operation
                    .responses
                    .responses
                    .entry(status)
                    .or_insert_with(|| {
                        RefOr::T(
                            ResponseBuilder::new()
                                .description(description)
                                .content(
                                    "application/json",
                                    ContentBuilder::new()
                                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                                        .build(),
                                )
                                .build(),
                        )
                    });
            }
        }
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
