//! Correlation IDs (every request and response carries one): taken from `X-Correlation-ID` or `X-Request-ID` when
//! well-formed, else generated as `corr-` + 12 hex.
//!
//! The request being served — its id, method, route and, once a handler names it, the debate
//! it is about — is kept in a task-local [`RequestContext`], so error bodies and every log line
//! written while serving it carry them without threading them through, and without a tracing
//! span per request (a span costs more than the rest of a liveness answer's own work). The
//! log layers read it as the outermost fields of a line; spans inside the request add to it.

use std::sync::{Arc, OnceLock};

use axum::http::{HeaderMap, HeaderName, Method};
use rand::Rng;

pub const HEADER: &str = "x-correlation-id";
/// [`HEADER`] as a header name, built at compile time (a `&str` name is parsed per use).
pub const HEADER_NAME: HeaderName = HeaderName::from_static(HEADER);
const REQUEST_ID_HEADER: &str = "x-request-id";

tokio::task_local! {
    static CURRENT: Arc<RequestContext>;
}

/// What identifies the request being served, for its log lines and error reports.
#[derive(Debug)]
pub struct RequestContext {
    id: String,
    method: Method,
    /// The route's pattern (`/api/debates/{id}`), never the raw path; `None` when no route
    /// matched.
    route: Option<Arc<str>>,
    debate_id: OnceLock<String>,
}

impl RequestContext {
    pub fn new(id: String, method: Method, route: Option<Arc<str>>) -> Arc<Self> {
        Arc::new(RequestContext {
            id,
            method,
            route,
            debate_id: OnceLock::new(),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn method(&self) -> &str {
        self.method.as_str()
    }

    pub fn http_method(&self) -> &Method {
        &self.method
    }

    /// The route label of logs and metrics: the pattern, or `unmatched`.
    pub fn route(&self) -> &str {
        self.route.as_deref().unwrap_or("unmatched")
    }

    /// The debate the request is about, once its handler has named it.
    pub fn debate_id(&self) -> Option<&str> {
        self.debate_id.get().map(String::as_str)
    }

    /// The fields a log line of this request carries, outermost first.
    pub fn fields(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            Some(("correlation_id", self.id())),
            Some(("method", self.method())),
            Some(("route", self.route())),
            self.debate_id().map(|id| ("debate_id", id)),
        ]
        .into_iter()
        .flatten()
    }
}

/// A fresh id: `corr-` followed by 12 lowercase hex digits.
pub fn generate() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n: u64 = rand::rng().random::<u64>();
    let mut id = String::with_capacity(17);
    id.push_str("corr-");
    for shift in (0..12).rev() {
        id.push(HEX[((n >> (shift * 4)) & 0xf) as usize] as char);
    }
    id
}

/// Accept a caller's id only if it is short and made of safe characters, so it can go into
/// logs and headers verbatim (no log injection, no header splitting).
pub fn is_well_formed(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// The caller's id from the request headers, if present and well-formed.
pub fn from_headers(headers: &HeaderMap) -> Option<String> {
    // Names built once: looking a header up by `&str` parses the name on every call.
    static NAMES: [HeaderName; 2] = [
        HeaderName::from_static(HEADER),
        HeaderName::from_static(REQUEST_ID_HEADER),
    ];
    NAMES.iter().find_map(|name| {
        crate::http::headers::first(headers, name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| is_well_formed(v))
            .map(str::to_owned)
    })
}

/// Run `fut` as the request `context` describes. The future itself, not an `async fn`
/// around it: each layer of async state would be one more copy of `fut` per request.
pub fn scope<F: Future>(
    context: Arc<RequestContext>,
    fut: F,
) -> tokio::task::futures::TaskLocalFuture<Arc<RequestContext>, F> {
    CURRENT.scope(context, fut)
}

/// Run `f` as the request `context` describes (synchronous code, such as building an error
/// response before a request's future exists).
pub fn sync_scope<R>(context: Arc<RequestContext>, f: impl FnOnce() -> R) -> R {
    CURRENT.sync_scope(context, f)
}

/// The correlation id of the request being served, if any.
pub fn current() -> Option<String> {
    CURRENT.try_with(|c| c.id.clone()).ok()
}

/// `f` with the request being served, if any.
pub fn with_request<R>(f: impl FnOnce(Option<&RequestContext>) -> R) -> R {
    let mut f = Some(f);
    let served = CURRENT.try_with(|c| (f.take().expect("called once"))(Some(c)));
    match served {
        Ok(result) => result,
        Err(_) => (f.take().expect("called once"))(None),
    }
}

/// Names the debate the request being served is about: its log lines and error reports carry
/// `debate_id` from here on (the first name given wins), and so does the current span (the
/// request's trace span when traces are exported).
pub fn record_debate_id(id: &str) {
    let _ = CURRENT.try_with(|c| c.debate_id.set(id.to_owned()));
    tracing::Span::current().record("debate_id", id);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_have_the_contract_shape() {
        for _ in 0..100 {
            let id = generate();
            assert_eq!(id.len(), 17);
            assert!(id.starts_with("corr-"));
            assert!(id[5..].bytes().all(|b| b.is_ascii_hexdigit()));
        }
    }

    #[tokio::test]
    async fn the_request_context_is_seen_inside_its_scope_only() {
        assert_eq!(current(), None);
        assert!(with_request(|c| c.is_none()));
        let context = RequestContext::new(
            "corr-0123456789ab".into(),
            Method::GET,
            Some(Arc::from("/api/debates/{id}")),
        );
        scope(context.clone(), async {
            assert_eq!(current().as_deref(), Some("corr-0123456789ab"));
            record_debate_id("d-1");
            record_debate_id("d-2");
            let fields: Vec<_> = with_request(|c| {
                c.expect("inside the scope")
                    .fields()
                    .map(|(k, v)| (k, v.to_owned()))
                    .collect()
            });
            assert_eq!(
                fields,
                [
                    ("correlation_id", "corr-0123456789ab".to_owned()),
                    ("method", "GET".to_owned()),
                    ("route", "/api/debates/{id}".to_owned()),
                    ("debate_id", "d-1".to_owned()),
                ]
            );
        })
        .await;
        assert_eq!(current(), None);
        let unmatched = RequestContext::new("corr-1".into(), Method::POST, None);
        assert_eq!(unmatched.route(), "unmatched");
        assert_eq!(unmatched.debate_id(), None);
    }

    #[test]
    fn caller_ids_are_taken_only_when_well_formed() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", "req-42".parse().unwrap());
        assert_eq!(from_headers(&h).as_deref(), Some("req-42"));
        h.insert("x-correlation-id", "corr-abc".parse().unwrap());
        assert_eq!(from_headers(&h).as_deref(), Some("corr-abc"));
        h.insert("x-correlation-id", "has space".parse().unwrap());
        h.remove("x-request-id");
        assert_eq!(from_headers(&h), None);
        assert!(!is_well_formed(&"a".repeat(129)));
        assert!(!is_well_formed(""));
    }
}
