//! The request pipeline every HTTP request passes through: correlation id, request timeout,
//! one structured log line and the HTTP metrics per request, and the contract's JSON error
//! body for every error response, whoever produced it (fallback, body limit, extractor
//! rejections, method not allowed).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use tokio::task::futures::TaskLocalFuture;
use tower::Service;

use super::middleware::AccessTable;
use crate::error::{ErrorCode, error_response, error_response_with_status};
use crate::telemetry::correlation::{self, RequestContext};

/// Most request headers accepted (the JSON 431 beyond). Below hyper's own limit (100, its
/// default, see `server::serve`), so the JSON answer comes first.
pub const MAX_HEADERS: usize = 64;
/// Longest request target (path and query) accepted, in bytes (414 beyond).
pub const MAX_URI_BYTES: usize = 16 * 1024;

/// Longest body of a non-JSON error response that is carried into the JSON message.
const MAX_PLAIN_ERROR: usize = 4096;

/// The pipeline as the outermost service of the API port, around CORS, the gate and the
/// router (`S`). It wraps the router once: axum's `Router::layer` would wrap every route
/// and clone the whole stack for every request. It matches the request's route itself
/// ([`AccessTable::resolve`]: axum's matcher over the router's own patterns) and hands the
/// match on to the gate in the request's extensions.
#[derive(Clone)]
pub struct Pipeline<S> {
    routes: Arc<AccessTable>,
    timeout: Duration,
    inner: S,
}

impl<S> Pipeline<S> {
    pub fn new(routes: Arc<AccessTable>, timeout: Duration, inner: S) -> Self {
        Pipeline {
            routes,
            timeout,
            inner,
        }
    }
}

impl<S> Service<Request> for Pipeline<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = TaskLocalFuture<Arc<RequestContext>, Answer<S::Future>>;

    /// Always ready: what it wraps (CORS around the gate) is.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let started = Instant::now();
        let id = correlation::from_headers(req.headers()).unwrap_or_else(correlation::generate);
        let method = req.method().clone();
        // Label by route pattern, never by raw path (bounded cardinality, no ids or tokens).
        let route = self.routes.resolve(req.uri().path(), &method);
        let context = RequestContext::new(id, method, route.pattern.clone());
        // A span only for the trace exporter: log lines take the request's fields from the
        // context.
        let span = crate::telemetry::traces::enabled().then(|| request_span(&context, &req));
        // Control characters (NUL…) in the path or a query value are refused here, the
        // same on both backends (Postgres cannot store NUL; SQLite can).
        // Checked outside the request's scope (entering it costs more than the checks); a
        // refusal is built again inside it, so its body carries the correlation id.
        let refused =
            refusal(&req).and_then(|_| correlation::sync_scope(context.clone(), || refusal(&req)));
        let stage = match refused {
            Some(response) => Stage::Answered {
                response: Some(response),
            },
            None => {
                req.extensions_mut().insert(route);
                Stage::Handler {
                    inner: self.inner.call(req),
                }
            }
        };
        correlation::scope(
            context.clone(),
            Answer {
                stage,
                timer: None,
                timeout: self.timeout,
                context,
                span,
                started,
            },
        )
    }
}

pin_project_lite::pin_project! {
    /// A request's answer: the handlers' future under the request timeout, a non-JSON error
    /// turned into the contract's body, then [`finish`]. Written out rather than as an
    /// `async` block, whose state (every await point's, the handlers' future among them)
    /// would be copied whole at each move and boxed; this one is the size of the handlers'
    /// future plus a few words, and its timer exists only once the handlers have had to wait.
    pub struct Answer<F> {
        #[pin]
        stage: Stage<F>,
        #[pin]
        timer: Option<tokio::time::Sleep>,
        timeout: Duration,
        context: Arc<RequestContext>,
        span: Option<tracing::Span>,
        started: Instant,
    }
}

pin_project_lite::pin_project! {
    #[project = StageProj]
    enum Stage<F> {
        /// The handlers (through CORS and the gate) are at work.
        Handler { #[pin] inner: F },
        /// A non-JSON error response whose body is being read into the JSON error.
        Converting { future: Pin<Box<dyn Future<Output = Response> + Send>> },
        /// The answer is known; taken once.
        Answered { response: Option<Response> },
    }
}

impl<F> Future for Answer<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let next = match this.stage.as_mut().project() {
                StageProj::Handler { inner } => {
                    let polled = {
                        let _entered = this.span.as_ref().map(tracing::Span::enter);
                        inner.poll(cx)
                    };
                    let response = match polled {
                        Poll::Ready(Ok(response)) => response,
                        Poll::Ready(Err(never)) => match never {},
                        Poll::Pending => {
                            if this.timer.is_none() {
                                let deadline = *this.started + *this.timeout;
                                this.timer
                                    .set(Some(tokio::time::sleep_until(deadline.into())));
                            }
                            let expired = this
                                .timer
                                .as_mut()
                                .as_pin_mut()
                                .is_some_and(|timer| timer.poll(cx).is_ready());
                            if !expired {
                                return Poll::Pending;
                            }
                            error_response(
                                ErrorCode::HandlerTimeout,
                                &format!(
                                    "the request took longer than {} s and was abandoned",
                                    this.timeout.as_secs()
                                ),
                            )
                        }
                    };
                    if needs_json_body(&response) {
                        Stage::Converting {
                            future: Box::pin(as_json_error(response)),
                        }
                    } else {
                        Stage::Answered {
                            response: Some(response),
                        }
                    }
                }
                StageProj::Converting { future } => {
                    let _entered = this.span.as_ref().map(tracing::Span::enter);
                    match future.as_mut().poll(cx) {
                        Poll::Ready(response) => Stage::Answered {
                            response: Some(response),
                        },
                        Poll::Pending => return Poll::Pending,
                    }
                }
                StageProj::Answered { response } => {
                    let response = response
                        .take()
                        .expect("an answer is polled to the end once");
                    return Poll::Ready(Ok(finish(
                        response,
                        this.context,
                        this.span.as_ref(),
                        *this.started,
                    )));
                }
            };
            this.stage.set(next);
        }
    }
}

/// The request's trace span (only when traces are exported).
fn request_span(context: &RequestContext, req: &Request) -> tracing::Span {
    use crate::telemetry::traces;
    let span = tracing::info_span!(
        "request",
        correlation_id = context.id(),
        method = context.method(),
        route = context.route(),
        // Recorded by handlers of one debate.
        debate_id = tracing::field::Empty,
        otel.name = tracing::field::Empty,
        otel.kind = "server",
    );
    span.record(
        "otel.name",
        format!("{} {}", context.method(), context.route()),
    );
    traces::adopt_parent(&span, req.headers());
    traces::attribute(&span, "http.request.method", context.method().to_owned());
    traces::attribute(&span, "http.route", context.route().to_owned());
    traces::attribute(&span, "url.path", req.uri().path().to_owned());
    span
}

/// The answer to a request refused before it is routed: too many headers, too long a URI,
/// control characters in the path or query, a body that is not JSON.
fn refusal(req: &Request) -> Option<Response> {
    if let Some((code, message)) = request_too_large(req) {
        return Some(error_response(code, &message));
    }
    if let Err((field, message)) = crate::text::check_uri(req.uri().path(), req.uri().query()) {
        return Some(axum::response::IntoResponse::into_response(
            crate::error::ApiError::BadField { field, message },
        ));
    }
    unsupported_content_type(req).map(|content_type| {
        error_response(
            ErrorCode::UnsupportedMediaType,
            &format!(
                "Content-Type `{content_type}` is not accepted; send JSON with \
                 Content-Type: application/json"
            ),
        )
    })
}

/// The correlation id on the response, the request's log line and its metrics.
fn finish(
    mut response: Response,
    context: &RequestContext,
    span: Option<&tracing::Span>,
    started: Instant,
) -> Response {
    if let Ok(value) = HeaderValue::from_str(context.id()) {
        response
            .headers_mut()
            .insert(correlation::HEADER_NAME, value);
    }
    let status = response.status().as_u16();
    if let Some(span) = span {
        use crate::telemetry::traces;
        traces::attribute(span, "http.response.status_code", i64::from(status));
        if status >= 500 {
            traces::error(span, &status.to_string(), "server error");
        }
    }
    // CORS's `Vary`, on every response (tower-http's layer would build it per response).
    response
        .headers_mut()
        .append(header::VARY, HeaderValue::from_static(super::CORS_VARY));
    let elapsed = started.elapsed();
    crate::telemetry::logging::request_line(context, status, elapsed.as_millis() as u64);
    crate::telemetry::metrics::record_http_request(
        context.http_method(),
        context.route(),
        status,
        elapsed,
    );
    response
}

/// Requests past the header or URI limits (hyper's own limits are higher, so these get
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

/// Whether `response` is an error whose body is not JSON (it then becomes the contract's
/// error body, [`as_json_error`]).
fn needs_json_body(response: &Response) -> bool {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return false;
    }
    !response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// Turn an error response that is not JSON into the contract's error body, keeping the
/// original text as the message.
async fn as_json_error(response: Response) -> Response {
    let status = response.status();
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
