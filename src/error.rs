//! One error type for the HTTP API. Each variant has a stable `code`; internal details are
//! logged once here and never sent to the client.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::http::correlation;
use crate::store::StoreError;

/// The error body every failed request gets (`{"error", "code", "correlation_id"}`). Extra fields (`field`,
/// `retry_after`) appear when they help.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// A human sentence.
    pub error: String,
    /// Stable snake_case code for programs.
    #[schema(example = "not_found")]
    pub code: String,
    #[schema(example = "corr-0123456789ab")]
    pub correlation_id: Option<String>,
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
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) | ApiError::BadField { .. } => StatusCode::BAD_REQUEST,
            ApiError::Validation { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) | ApiError::DebateEnded { .. } => StatusCode::CONFLICT,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Locked { .. } => StatusCode::LOCKED,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable { .. } | ApiError::DatabaseUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::StorageUnavailable(crate::store::StorageFault::Full) => {
                StatusCode::INSUFFICIENT_STORAGE
            }
            ApiError::StorageUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) | ApiError::BadField { .. } => "bad_request",
            ApiError::Validation { .. } => "validation_error",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) | ApiError::DebateEnded { .. } => "conflict",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::Locked { .. } => "account_locked",
            ApiError::TooManyRequests { .. } => "too_many_requests",
            ApiError::Unavailable { .. } => "service_unavailable",
            ApiError::DatabaseUnavailable(_) => "database_unavailable",
            ApiError::StorageUnavailable(_) => "storage_unavailable",
            ApiError::Internal(_) => "internal_error",
        }
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

/// Build the contract's error body for a status produced outside a handler (404 fallback,
/// body limit, timeout, extractor rejections).
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({
        "error": message,
        "code": code,
        "correlation_id": correlation::current(),
    });
    (status, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

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
