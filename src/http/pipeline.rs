//! The request pipeline every HTTP request passes through: correlation id, request timeout,
//! one structured log line and the HTTP metrics per request, and the contract's JSON error
//! body for every error response, whoever produced it (fallback, body limit, extractor
//! rejections, method not allowed).

use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use crate::app::AppState;
use crate::error::{ErrorCode, error_response, error_response_with_status};
use crate::telemetry::correlation;

/// Most request headers accepted (431 beyond).
pub const MAX_HEADERS: usize = 100;
/// Longest request target (path and query) accepted, in bytes (414 beyond).
pub const MAX_URI_BYTES: usize = 16 * 1024;

/// Longest body of a non-JSON error response that is carried into the JSON message.
const MAX_PLAIN_ERROR: usize = 4096;

pub async fn pipeline(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = correlation::from_headers(req.headers()).unwrap_or_else(correlation::generate);
    let method = req.method().clone();
    // Label by route pattern, never by raw path (bounded cardinality, no ids or tokens).
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let span = tracing::info_span!(
        "request",
        correlation_id = %id,
        method = %method,
        route = %route,
        // Recorded by handlers of one debate, so its errors carry the debate's id too.
        debate_id = tracing::field::Empty,
        otel.name = tracing::field::Empty,
        otel.kind = "server",
    );
    if crate::telemetry::traces::enabled() {
        use crate::telemetry::traces;
        span.record("otel.name", format!("{method} {route}"));
        traces::adopt_parent(&span, req.headers());
        traces::attribute(&span, "http.request.method", method.to_string());
        traces::attribute(&span, "http.route", route.clone());
        traces::attribute(&span, "url.path", req.uri().path().to_owned());
    }
    let timeout = state.config.http.request_timeout;
    // Control characters (NUL…) in the path or a query value are refused here, once, the
    // same on both backends (Postgres cannot store NUL; SQLite can).
    let too_large = request_too_large(&req);
    let bad_uri = crate::text::check_uri(req.uri().path(), req.uri().query()).err();
    let bad_type = unsupported_content_type(&req);
    let mut response = correlation::scope(id.clone(), async move {
        if let Some((code, message)) = too_large {
            return error_response(code, &message);
        }
        if let Some((field, message)) = bad_uri {
            return axum::response::IntoResponse::into_response(crate::error::ApiError::BadField {
                field,
                message,
            });
        }
        if let Some(content_type) = bad_type {
            return error_response(
                ErrorCode::UnsupportedMediaType,
                &format!(
                    "Content-Type `{content_type}` is not accepted; send JSON with \
                     Content-Type: application/json"
                ),
            );
        }
        let response = match tokio::time::timeout(timeout, next.run(req)).await {
            Ok(response) => response,
            Err(_) => error_response(
                ErrorCode::HandlerTimeout,
                &format!(
                    "the request took longer than {} s and was abandoned",
                    timeout.as_secs()
                ),
            ),
        };
        as_json_error(response).await
    })
    .instrument(span.clone())
    .await;

    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(correlation::HEADER, value);
    }
    let status = response.status().as_u16();
    if crate::telemetry::traces::enabled() {
        use crate::telemetry::traces;
        traces::attribute(&span, "http.response.status_code", i64::from(status));
        if status >= 500 {
            traces::error(&span, &status.to_string(), "server error");
        }
    }
    let elapsed = started.elapsed();
    let duration_ms = elapsed.as_millis() as u64;
    span.in_scope(|| {
        let level_is_error = status >= 500;
        if level_is_error {
            tracing::warn!(
                target: "aragora::http",
                status,
                duration_ms,
                "request {method} {route} status={status} duration_ms={duration_ms}"
            );
        } else {
            tracing::info!(
                target: "aragora::http",
                status,
                duration_ms,
                "request {method} {route} status={status} duration_ms={duration_ms}"
            );
        }
    });
    crate::telemetry::metrics::record_http_request(&method, &route, status, elapsed);
    response
}

/// Requests past the header or URI limits (hyper's own limits are set higher, so these get
/// the JSON error body instead of hyper's empty 431/414).
fn request_too_large(req: &Request) -> Option<(ErrorCode, String)> {
    let headers = req.headers().len();
    if headers > MAX_HEADERS {
        return Some((
            ErrorCode::HeaderFieldsTooLarge,
            format!("the request has {headers} headers; at most {MAX_HEADERS} are accepted"),
        ));
    }
    let uri = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if uri > MAX_URI_BYTES {
        return Some((
            ErrorCode::UriTooLong,
            format!("the request URI is {uri} bytes; at most {MAX_URI_BYTES} are accepted"),
        ));
    }
    None
}

/// A request body declared as anything but `application/json` (parameters such as
/// `charset=utf-8` allowed): every body this API reads is JSON, and vendor types such as
/// `application/vnd.x+json` are not promised anywhere (the one documented exception is
/// below). Requests without a Content-Type are
/// left to the handlers (a body they need is then refused by the JSON extractor).
fn unsupported_content_type(req: &Request) -> Option<String> {
    use axum::http::Method;
    if !matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH) {
        return None;
    }
    // The runbook's `curl …/debug/agent-test -d '{…}'` sends a form content type with a JSON
    // body: that route reads JSON whatever the label says.
    if req.uri().path().ends_with("/debug/agent-test") {
        return None;
    }
    let value = req.headers().get(header::CONTENT_TYPE)?;
    let text = value.to_str().unwrap_or("(not text)");
    let essence = text.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") {
        None
    } else {
        Some(text.chars().take(100).collect())
    }
}

/// Turn an error response that is not JSON into the contract's error body, keeping the
/// original text as the message.
async fn as_json_error(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_PLAIN_ERROR)
        .await
        .ok()
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .filter(|t| !t.is_empty());
    let code = ErrorCode::for_status(status);
    let message = match text {
        Some(t) if status != StatusCode::INTERNAL_SERVER_ERROR => t,
        _ => code.default_message().to_owned(),
    };
    let mut json = error_response_with_status(status, code, &message);
    // Keep headers that matter to the client (Allow, Retry-After, CORS…).
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            json.headers_mut().insert(name.clone(), value.clone());
        }
    }
    json
}

/// JSON 404 for unknown routes.
pub async fn not_found(req: Request<Body>) -> Response {
    error_response(
        ErrorCode::NotFound,
        &format!("no route for {} {}", req.method(), req.uri().path()),
    )
}
