//! One error type for the HTTP API, and the one table of the error codes it answers with
//! ([`ErrorCode`]): the server, the OpenAPI document and the tests read the status and the
//! wire code from there. Internal details are logged once here and never sent to the client.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::store::StoreError;
use crate::telemetry::correlation;

/// Every `code` an HTTP error body can carry, with its status. A wire code may appear with
/// more than one status (`request_timeout`: 408 from the client, 503 when the server gave
/// up; `storage_unavailable`: 503, or 507 when the disk is full), so each (status, code) pair
/// is one variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    /// `GET /api/metrics` with METRICS_ENABLED=false.
    MetricsDisabled,
    MethodNotAllowed,
    /// The client was too slow sending its request.
    RequestTimeout,
    Conflict,
    /// `POST /api/debug/memory-dump` with profiling off.
    MemoryProfilingDisabled,
    /// `POST /api/debug/memory-dump`: profiling asked for, but jemalloc's profiler is not on.
    MemoryProfilerUnavailable,
    PayloadTooLarge,
    UriTooLong,
    UnsupportedMediaType,
    Validation,
    AccountLocked,
    /// Too many requests from this client, whichever limit refused it (the per-rule limiter
    /// or the failed-login throttle).
    RateLimited,
    HeaderFieldsTooLarge,
    Internal,
    ServiceUnavailable,
    DatabaseUnavailable,
    StorageUnavailable,
    /// The database's disk is full (507, same wire code as [`ErrorCode::StorageUnavailable`]).
    StorageFull,
    /// The server abandoned a request that ran past ARAGORA_REQUEST_TIMEOUT (503).
    HandlerTimeout,
    /// A client error of a status this table does not name (the pipeline's fallback).
    Other,
}

impl ErrorCode {
    /// The table, in status order.
    pub const ALL: [ErrorCode; 24] = [
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::MetricsDisabled,
        ErrorCode::MethodNotAllowed,
        ErrorCode::RequestTimeout,
        ErrorCode::Conflict,
        ErrorCode::MemoryProfilingDisabled,
        ErrorCode::MemoryProfilerUnavailable,
        ErrorCode::PayloadTooLarge,
        ErrorCode::UriTooLong,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::Validation,
        ErrorCode::AccountLocked,
        ErrorCode::RateLimited,
        ErrorCode::HeaderFieldsTooLarge,
        ErrorCode::Internal,
        ErrorCode::ServiceUnavailable,
        ErrorCode::DatabaseUnavailable,
        ErrorCode::StorageUnavailable,
        ErrorCode::StorageFull,
        ErrorCode::HandlerTimeout,
        ErrorCode::Other,
    ];

    /// (status, wire code, the message used when nothing more specific is known).
    const fn row(self) -> (u16, &'static str, &'static str) {
        match self {
            ErrorCode::BadRequest => (400, "bad_request", "the request is malformed"),
            ErrorCode::Unauthorized => (401, "unauthorized", "authentication is required"),
            ErrorCode::Forbidden => (403, "forbidden", "you are not allowed to do this"),
            ErrorCode::NotFound => (404, "not_found", "no such route"),
            ErrorCode::MetricsDisabled => (404, "metrics_disabled", "metrics are disabled"),
            ErrorCode::MethodNotAllowed => (
                405,
                "method_not_allowed",
                "this method is not allowed on this route",
            ),
            ErrorCode::RequestTimeout => (408, "request_timeout", "the request took too long"),
            ErrorCode::Conflict => (
                409,
                "conflict",
                "the request conflicts with the current state",
            ),
            ErrorCode::MemoryProfilingDisabled => {
                (409, "memory_profiling_disabled", "memory profiling is off")
            }
            ErrorCode::MemoryProfilerUnavailable => (
                409,
                "memory_profiler_unavailable",
                "jemalloc's heap profiler is not running",
            ),
            ErrorCode::PayloadTooLarge => {
                (413, "payload_too_large", "the request body is too large")
            }
            ErrorCode::UriTooLong => (414, "uri_too_long", "the request URI is too long"),
            ErrorCode::UnsupportedMediaType => (
                415,
                "unsupported_media_type",
                "send JSON with Content-Type: application/json",
            ),
            ErrorCode::Validation => (422, "validation_error", "the request body is not valid"),
            ErrorCode::AccountLocked => (423, "account_locked", "the account is locked"),
            ErrorCode::RateLimited => (429, "rate_limited", "too many requests"),
            ErrorCode::HeaderFieldsTooLarge => (
                431,
                "request_header_fields_too_large",
                "the request has too many headers",
            ),
            ErrorCode::Internal => (500, "internal_error", "the server hit an internal error"),
            ErrorCode::ServiceUnavailable => (
                503,
                "service_unavailable",
                "the service is temporarily unavailable",
            ),
            ErrorCode::DatabaseUnavailable => {
                (503, "database_unavailable", "the database is unreachable")
            }
            ErrorCode::StorageUnavailable => {
                (503, "storage_unavailable", "the database cannot write")
            }
            ErrorCode::StorageFull => (507, "storage_unavailable", "the database's disk is full"),
            ErrorCode::HandlerTimeout => (503, "request_timeout", "the request took too long"),
            ErrorCode::Other => (400, "error", "the request failed"),
        }
    }

    pub fn status(self) -> StatusCode {
        StatusCode::from_u16(self.row().0).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The wire code (`"code"` of the error body).
    pub const fn as_str(self) -> &'static str {
        self.row().1
    }

    /// The message of an error response that came without one.
    pub const fn default_message(self) -> &'static str {
        self.row().2
    }

    /// The code for an error response of `status` produced outside this table (a framework
    /// rejection, a layer): the first row with that status; any other 5xx is
    /// `internal_error`, any other 4xx `error`.
    pub fn for_status(status: StatusCode) -> ErrorCode {
        // Rows that share a status with a more general one are never the default.
        const GENERAL: [ErrorCode; 11] = [
            ErrorCode::BadRequest,
            ErrorCode::Unauthorized,
            ErrorCode::Forbidden,
            ErrorCode::NotFound,
            ErrorCode::MethodNotAllowed,
            ErrorCode::RequestTimeout,
            ErrorCode::PayloadTooLarge,
            ErrorCode::UnsupportedMediaType,
            ErrorCode::Validation,
            ErrorCode::RateLimited,
            ErrorCode::ServiceUnavailable,
        ];
        GENERAL
            .into_iter()
            .find(|code| code.status() == status)
            .unwrap_or(if status.is_server_error() {
                ErrorCode::Internal
            } else {
                ErrorCode::Other
            })
    }
}

/// The error body every failed request gets (`{"error", "code", "correlation_id"}`). Extra fields appear when they
/// help.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// A human sentence.
    pub error: String,
    /// Stable snake_case code for programs.
    #[schema(example = "not_found")]
    pub code: String,
    #[schema(example = "corr-0123456789ab")]
    pub correlation_id: Option<String>,
    /// The offending field, path segment or query parameter (400/422).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "task")]
    pub field: Option<String>,
    /// Seconds to wait before retrying (also the Retry-After header): 423, 429, 503, 507.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    /// The debate's final status when it has already ended (409).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// The rate-limit rule that refused the request (429 from the limiter).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// That rule's requests per minute (429 from the limiter).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    /// A malformed value (e.g. a control character) in a named field, path or query
    /// parameter: 400 with `field`.
    #[error("{message}")]
    BadField { field: String, message: String },
    /// A field failed validation; `field` names it.
    #[error("{message}")]
    Validation { field: String, message: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The debate has already ended (409 `conflict`, with its final `status`).
    #[error("{message}")]
    DebateEnded { message: String, status: String },
    /// No or invalid credentials (401).
    #[error("{0}")]
    Unauthorized(String),
    /// Authenticated, but the role is too low (403).
    #[error("{0}")]
    Forbidden(String),
    /// The account is temporarily locked after repeated failed logins (423).
    #[error("{message}")]
    Locked { message: String, retry_after: u64 },
    /// Too many attempts from this client (429).
    #[error("{message}")]
    TooManyRequests { message: String, retry_after: u64 },
    #[error("{message}")]
    Unavailable {
        message: String,
        retry_after: Option<u64>,
    },
    /// The database cannot be reached (pool timeout, refused/dropped connection, TLS): 503
    /// with Retry-After, so clients retry instead of reporting a server bug. The detail is
    /// logged at ERROR (an outage is worth an alert), never sent.
    #[error(
        "the database is unreachable; the server is up but cannot serve this request (see /api/health)"
    )]
    DatabaseUnavailable(String),
    /// The database's storage is faulty (disk full: 507; read-only or I/O errors: 503):
    /// nothing was written.
    #[error("{}; nothing was written — retry once it is fixed (see /api/health)", .0.describe())]
    StorageUnavailable(crate::store::StorageFault),
    /// Anything unexpected: the message is logged, the client sees a generic sentence.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// The row of the error-code table this error answers with.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            ApiError::BadRequest(_) | ApiError::BadField { .. } => ErrorCode::BadRequest,
            ApiError::Validation { .. } => ErrorCode::Validation,
            ApiError::NotFound(_) => ErrorCode::NotFound,
            ApiError::Conflict(_) | ApiError::DebateEnded { .. } => ErrorCode::Conflict,
            ApiError::Unauthorized(_) => ErrorCode::Unauthorized,
            ApiError::Forbidden(_) => ErrorCode::Forbidden,
            ApiError::Locked { .. } => ErrorCode::AccountLocked,
            ApiError::TooManyRequests { .. } => ErrorCode::RateLimited,
            ApiError::Unavailable { .. } => ErrorCode::ServiceUnavailable,
            ApiError::DatabaseUnavailable(_) => ErrorCode::DatabaseUnavailable,
            ApiError::StorageUnavailable(crate::store::StorageFault::Full) => {
                ErrorCode::StorageFull
            }
            ApiError::StorageUnavailable(_) => ErrorCode::StorageUnavailable,
            ApiError::Internal(_) => ErrorCode::Internal,
        }
    }

    pub fn status(&self) -> StatusCode {
        self.error_code().status()
    }

    pub fn code(&self) -> &'static str {
        self.error_code().as_str()
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound(what) => ApiError::NotFound(format!("{what} not found")),
            StoreError::Conflict(what) => ApiError::Conflict(what),
            StoreError::Database(e) if is_connectivity_error(&e) => {
                ApiError::DatabaseUnavailable(e.to_string())
            }
            StoreError::Database(e) if crate::store::storage_fault(&e).is_some() => {
                let fault =
                    crate::store::storage_fault(&e).unwrap_or(crate::store::StorageFault::Io);
                crate::store::note_storage_fault(fault, &e.to_string());
                ApiError::StorageUnavailable(fault)
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<crate::auth::passwords::HashError> for ApiError {
    fn from(err: crate::auth::passwords::HashError) -> Self {
        ApiError::Internal(err.to_string())
    }
}

impl From<crate::auth::tokens::SignError> for ApiError {
    fn from(err: crate::auth::tokens::SignError) -> Self {
        ApiError::Internal(err.to_string())
    }
}

/// Seconds a client is told to wait after `database_unavailable`.
pub const DATABASE_RETRY_AFTER_SECS: u64 = 5;

pub use crate::store::is_connectivity_error;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = match &self {
            ApiError::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                "the server hit an internal error; the correlation id identifies it in the logs"
                    .to_owned()
            }
            ApiError::DatabaseUnavailable(detail) => {
                tracing::error!(error = %detail, "database unreachable");
                self.to_string()
            }
            other => other.to_string(),
        };
        let mut body = json!({
            "error": message,
            "code": self.code(),
            "correlation_id": correlation::current(),
        });
        if let ApiError::Validation { field, .. } | ApiError::BadField { field, .. } = &self {
            body["field"] = json!(field);
        }
        if let ApiError::DebateEnded { status, .. } = &self {
            body["status"] = json!(status);
        }
        let retry_after = match &self {
            ApiError::Unavailable { retry_after, .. } => *retry_after,
            ApiError::DatabaseUnavailable(_) | ApiError::StorageUnavailable(_) => {
                Some(DATABASE_RETRY_AFTER_SECS)
            }
            ApiError::Locked { retry_after, .. }
            | ApiError::TooManyRequests { retry_after, .. } => Some(*retry_after),
            _ => None,
        };
        if let Some(secs) = retry_after {
            body["retry_after"] = json!(secs);
        }
        let mut response = (status, axum::Json(body)).into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Build the contract's error body for an error produced outside a handler (404 fallback,
/// body limit, timeout, extractor rejections), with the code's status.
pub fn error_response(code: ErrorCode, message: &str) -> Response {
    error_response_with_status(code.status(), code, message)
}

/// As [`error_response`], for a status the code is the pipeline's fallback for
/// ([`ErrorCode::for_status`]).
pub fn error_response_with_status(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    let body = json!({
        "error": message,
        "code": code.as_str(),
        "correlation_id": correlation::current(),
    });
    (status, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_code_table_is_consistent() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            let wire = code.as_str();
            assert!(
                wire.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{wire} is snake_case"
            );
            assert!(
                seen.insert((code.status(), wire)),
                "{code:?} repeats another row"
            );
            assert!(code.status().is_client_error() || code.status().is_server_error());
        }
        // The pipeline's fallback for bodies produced outside the table (framework
        // rejections, layers): the same codes and messages as always.
        for (status, wire, message) in [
            (400, "bad_request", "the request is malformed"),
            (401, "unauthorized", "authentication is required"),
            (403, "forbidden", "you are not allowed to do this"),
            (404, "not_found", "no such route"),
            (
                405,
                "method_not_allowed",
                "this method is not allowed on this route",
            ),
            (408, "request_timeout", "the request took too long"),
            (409, "error", "the request failed"),
            (413, "payload_too_large", "the request body is too large"),
            (
                415,
                "unsupported_media_type",
                "send JSON with Content-Type: application/json",
            ),
            (422, "validation_error", "the request body is not valid"),
            (429, "rate_limited", "too many requests"),
            (500, "internal_error", "the server hit an internal error"),
            (502, "internal_error", "the server hit an internal error"),
            (
                503,
                "service_unavailable",
                "the service is temporarily unavailable",
            ),
        ] {
            let code = ErrorCode::for_status(StatusCode::from_u16(status).unwrap());
            assert_eq!(
                (code.as_str(), code.default_message()),
                (wire, message),
                "{status}"
            );
        }
        // One 429 code, whichever limit refused.
        let too_many = ApiError::TooManyRequests {
            message: "x".into(),
            retry_after: 1,
        };
        assert_eq!(too_many.code(), "rate_limited");
        assert_eq!(
            ErrorCode::for_status(StatusCode::TOO_MANY_REQUESTS),
            ErrorCode::RateLimited
        );
        assert_eq!(
            ErrorCode::for_status(StatusCode::BAD_GATEWAY),
            ErrorCode::Internal
        );
        assert_eq!(ErrorCode::for_status(StatusCode::GONE).as_str(), "error");
    }

    #[test]
    fn unreachable_database_is_503_database_unavailable() {
        for err in [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            sqlx::Error::WorkerCrashed,
            sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
        ] {
            let api = ApiError::from(StoreError::Database(err));
            assert!(matches!(api, ApiError::DatabaseUnavailable(_)), "{api:?}");
            assert_eq!(api.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(api.code(), "database_unavailable");
            let response = api.into_response();
            assert_eq!(response.headers()[header::RETRY_AFTER], "5");
        }
        let other = ApiError::from(StoreError::Database(sqlx::Error::RowNotFound));
        assert_eq!(other.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(other.code(), "internal_error");
    }
}
