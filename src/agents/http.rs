//! Shared HTTP plumbing for the provider adapters: one `reqwest` client configuration, and
//! the mapping of HTTP and transport failures onto [`AgentError`].
//!
//! Policy:
//! - TLS is rustls with the `ring` backend, installed once process-wide before any client
//!   is built ([`install_crypto_provider`]).
//! - Connect timeout 10 s; no overall or read timeout by default: resilience bounds calls.
//! - Redirects are *not* followed: vendor keys travel in custom headers (`x-api-key`,
//!   `x-goog-api-key`) that reqwest would forward to another host. A 3xx is reported as
//!   `BadRequest` (a misconfigured base URL), which is not retried.
//! - Error messages carry the vendor's own message from its JSON error body, with the API
//!   key redacted if the vendor echoed it, truncated to [`MAX_ERROR_MESSAGE_CHARS`].

use std::sync::{Once, OnceLock};
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use futures::StreamExt;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::Value;

use super::providers::ProviderInfo;
use super::sse::{SseError, SseStream};
use super::{AgentError, CompletionRequest, Usage};

#[cfg(test)]
#[path = "testing.rs"]
pub(crate) mod testing;

/// `aragora/<crate version>`.
pub const USER_AGENT: &str = concat!("aragora/", env!("CARGO_PKG_VERSION"));
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Vendor error messages are cut to this many characters.
pub const MAX_ERROR_MESSAGE_CHARS: usize = 300;
/// Error bodies are read up to this size (the rest is ignored).
pub const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;
/// A non-streamed success body larger than this is rejected as malformed.
pub const MAX_RESPONSE_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Install rustls' `ring` crypto provider as the process default, once. A provider that is
/// already installed (by this function or by the embedding binary) is kept.
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err only means a default provider is already installed: fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Timeouts of a provider client. The default is what production uses: connect timeout
/// only (resilience bounds the whole call). Tests and callers that want the HTTP layer to
/// time out can set `read_timeout` (idle time between reads, including the wait for the
/// response head) or `timeout` (whole request, body included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientOptions {
    pub connect_timeout: Duration,
    pub read_timeout: Option<Duration>,
    pub timeout: Option<Duration>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            read_timeout: None,
            timeout: None,
        }
    }
}

/// A `reqwest::Client` configured for provider calls, plus the knowledge of its timeouts
/// (to report `AgentError::Timeout` with the right duration). Cheap to clone.
#[derive(Debug, Clone)]
pub struct ProviderClient {
    client: reqwest::Client,
    options: ClientOptions,
}

impl ProviderClient {
    pub fn new(options: ClientOptions) -> Result<ProviderClient, AgentError> {
        install_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(options.connect_timeout)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(read) = options.read_timeout {
            builder = builder.read_timeout(read);
        }
        if let Some(total) = options.timeout {
            builder = builder.timeout(total);
        }
        let client = builder.build().map_err(|e| {
            AgentError::Connection(format!("cannot build HTTP client: {}", chain(&e)))
        })?;
        Ok(ProviderClient { client, options })
    }

    /// The process-wide client with default options (built once; connection pools shared by
    /// all providers). A build failure is remembered and returned by every call.
    pub fn shared() -> Result<ProviderClient, AgentError> {
        static SHARED: OnceLock<Result<ProviderClient, AgentError>> = OnceLock::new();
        SHARED
            .get_or_init(|| ProviderClient::new(ClientOptions::default()))
            .clone()
    }

    pub fn inner(&self) -> &reqwest::Client {
        &self.client
    }

    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// Map a transport error: timeouts → `Timeout`, connect errors → `Connection`, body
    /// decode errors → `Malformed`, other body / request errors → `Connection`, builder
    /// errors (bad URL, bad header) → `BadRequest { status: 0 }`. `secret` is redacted.
    pub fn map_error(&self, err: &reqwest::Error, secret: Option<&str>) -> AgentError {
        let message = || clean_message(&chain(err), secret);
        if err.is_timeout() {
            AgentError::Timeout(self.timeout_hint(err.is_connect()))
        } else if err.is_connect() {
            AgentError::Connection(message())
        } else if err.is_decode() {
            AgentError::Malformed(message())
        } else if err.is_builder() {
            AgentError::BadRequest {
                status: 0,
                message: message(),
            }
        } else {
            AgentError::Connection(message())
        }
    }

    fn timeout_hint(&self, connect: bool) -> Duration {
        let configured = [self.options.read_timeout, self.options.timeout]
            .into_iter()
            .flatten()
            .min();
        match configured {
            Some(d) if !connect => d,
            Some(d) => d.min(self.options.connect_timeout),
            None => self.options.connect_timeout,
        }
    }

    /// Send a request. A non-2xx answer becomes the mapped `AgentError` (body read up to
    /// [`MAX_ERROR_BODY_BYTES`]).
    pub async fn send(
        &self,
        request: reqwest::RequestBuilder,
        secret: Option<&str>,
    ) -> Result<reqwest::Response, AgentError> {
        let mut request = request;
        for (name, value) in crate::telemetry::traces::outgoing_headers() {
            request = request.header(name, value);
        }
        let response = request
            .send()
            .await
            .map_err(|e| self.map_error(&e, secret))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let headers = response.headers().clone();
        let body = read_error_body(response).await;
        Err(error_from_response(status, &headers, &body, secret))
    }

    /// Read a success body (up to [`MAX_RESPONSE_BODY_BYTES`]) and parse it as JSON.
    pub async fn read_json(
        &self,
        response: reqwest::Response,
        secret: Option<&str>,
    ) -> Result<Value, AgentError> {
        let mut stream = response.bytes_stream();
        let mut body = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.map_error(&e, secret))?;
            if body.len() + chunk.len() > MAX_RESPONSE_BODY_BYTES {
                return Err(AgentError::Malformed(format!(
                    "response body larger than {MAX_RESPONSE_BODY_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body)
            .map_err(|e| AgentError::Malformed(format!("response is not valid JSON: {e}")))
    }

    /// Map an SSE failure: transport errors like [`ProviderClient::map_error`], everything
    /// else (invalid UTF-8, oversized line, truncated event) → `Malformed`.
    pub fn map_sse_error(
        &self,
        err: &SseError<reqwest::Error>,
        secret: Option<&str>,
    ) -> AgentError {
        match err {
            SseError::Transport(e) => self.map_error(e, secret),
            other => AgentError::Malformed(other.to_string()),
        }
    }
}

/// What every HTTP adapter holds: its catalogue entry, where it is reached, the key and the
/// client. `Debug` shows whether a key is set, never the key.
pub struct Connection {
    pub info: &'static ProviderInfo,
    base_url: String,
    api_key: Option<String>,
    client: Result<ProviderClient, AgentError>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.info.id)
            .field("base_url", &self.base_url)
            .field("has_key", &self.api_key.is_some())
            .finish()
    }
}

impl Connection {
    /// `base_url` without trailing slashes; an absent or blank `api_key` is no key. Uses the
    /// shared client.
    pub fn new(info: &'static ProviderInfo, base_url: &str, api_key: Option<String>) -> Self {
        Connection {
            info,
            base_url: normalize_base(base_url, None),
            api_key: normalize_key(api_key),
            client: ProviderClient::shared(),
        }
    }

    /// Use this client instead of the shared one (tests, custom timeouts).
    pub fn with_client(mut self, client: ProviderClient) -> Self {
        self.client = Ok(client);
        self
    }

    /// Drop a version prefix the adapter adds itself (`/v1`), so a base given with it works.
    pub(crate) fn without_base_suffix(mut self, suffix: &str) -> Self {
        self.base_url = normalize_base(&self.base_url, Some(suffix));
        self
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Credentials present, or none needed.
    pub fn available(&self) -> bool {
        self.api_key.is_some() || !self.info.key_required
    }

    /// The key for one call: `MissingKey` naming its variable when the provider requires one
    /// and none is set; None for a keyless provider without one.
    pub fn key(&self) -> Result<Option<&str>, AgentError> {
        match self.api_key.as_deref() {
            None if self.info.key_required => Err(self.missing_key()),
            key => Ok(key),
        }
    }

    /// The key, for a wire format that cannot be spoken without one.
    pub fn required_key(&self) -> Result<&str, AgentError> {
        self.api_key.as_deref().ok_or_else(|| self.missing_key())
    }

    fn missing_key(&self) -> AgentError {
        AgentError::MissingKey(self.info.key_env.unwrap_or_default().into())
    }

    /// The HTTP client (a build failure is reported on every call).
    pub fn client(&self) -> Result<&ProviderClient, AgentError> {
        self.client.as_ref().map_err(Clone::clone)
    }
}

/// A vendor JSON document (already checked for an error payload) decoded into its typed
/// form; a document that does not have the vendor's shape is `Malformed`.
pub fn decode<T: serde::de::DeserializeOwned>(value: &Value, what: &str) -> Result<T, AgentError> {
    T::deserialize(value).map_err(|e| AgentError::Malformed(format!("{what}: {e}")))
}

/// An SSE event stream over a response body.
pub type ResponseEvents = SseStream<
    std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<axum::body::Bytes, reqwest::Error>> + Send>,
    >,
>;

/// Turn a (2xx) response into an SSE event stream.
pub fn sse_events(response: reqwest::Response) -> ResponseEvents {
    SseStream::new(Box::pin(response.bytes_stream()))
}

/// A sensitive header value holding an API key. A key that cannot be a header value (e.g.
/// contains a newline) is reported as `Auth { status: 0 }` without echoing it.
pub fn key_header(prefix: &str, key: &str) -> Result<HeaderValue, AgentError> {
    let mut value =
        HeaderValue::from_str(&format!("{prefix}{key}")).map_err(|_| AgentError::Auth {
            status: 0,
            message: "the API key contains characters not allowed in an HTTP header".into(),
        })?;
    value.set_sensitive(true);
    Ok(value)
}

async fn read_error_body(mut response: reqwest::Response) -> Vec<u8> {
    let mut body = Vec::new();
    while body.len() < MAX_ERROR_BODY_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            // The status already says what happened; a broken error body is not worth more.
            Ok(None) | Err(_) => break,
        }
    }
    body.truncate(MAX_ERROR_BODY_BYTES);
    body
}

/// What a vendor's JSON error body says. Understands Anthropic
/// (`{"type":"error","error":{"type","message"}}`), OpenAI and compatibles
/// (`{"error":{"message","type","code"}}`, `{"error":"text"}`, `{"message"}`, `{"detail"}`)
/// and Google (`{"error":{"code","message","status","details":[…]}}`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VendorError {
    pub message: Option<String>,
    /// `error.type` (Anthropic, OpenAI) or `error.status` (Google).
    pub kind: Option<String>,
    /// `error.code` when it is a string (OpenAI: `insufficient_quota`, `invalid_api_key`).
    pub code: Option<String>,
    /// `error.code` when it is a number (Google, OpenRouter: an HTTP status).
    pub status: Option<u16>,
    /// Google `ErrorInfo.reason` (e.g. `API_KEY_INVALID`).
    pub reason: Option<String>,
    /// Google `RetryInfo.retryDelay`.
    pub retry_delay: Option<Duration>,
}

impl VendorError {
    pub fn parse(body: &[u8]) -> Option<VendorError> {
        let value: Value = serde_json::from_slice(body).ok()?;
        // Some services wrap the error in a one-element array (Google streaming errors).
        let value = match value {
            Value::Array(mut items) if !items.is_empty() => items.swap_remove(0),
            v => v,
        };
        VendorError::from_value(&value)
    }

    pub fn from_value(value: &Value) -> Option<VendorError> {
        let obj = value.as_object()?;
        let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
        match obj.get("error") {
            Some(Value::Object(err)) => {
                let mut out = VendorError {
                    message: text(err.get("message")),
                    kind: text(err.get("type")).or_else(|| text(err.get("status"))),
                    ..VendorError::default()
                };
                match err.get("code") {
                    Some(Value::String(code)) => out.code = Some(code.clone()),
                    Some(Value::Number(n)) => {
                        out.status = n.as_u64().and_then(|n| u16::try_from(n).ok());
                    }
                    _ => {}
                }
                for detail in err
                    .get("details")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if out.reason.is_none() {
                        out.reason = text(detail.get("reason"));
                    }
                    if out.retry_delay.is_none() {
                        out.retry_delay = detail
                            .get("retryDelay")
                            .and_then(Value::as_str)
                            .and_then(parse_proto_duration);
                    }
                }
                Some(out)
            }
            Some(Value::String(message)) => Some(VendorError {
                message: Some(message.clone()),
                ..VendorError::default()
            }),
            _ => {
                let message = text(obj.get("message")).or_else(|| text(obj.get("detail")))?;
                Some(VendorError {
                    message: Some(message),
                    ..VendorError::default()
                })
            }
        }
    }
}

/// Map a non-2xx response: 401/403 → `Auth`; 429 → `RateLimited` (from `retry-after-ms`,
/// `Retry-After` or Google's `RetryInfo`), except OpenAI's `insufficient_quota` which is a
/// billing problem and becomes a non-retried `BadRequest`; 408/409/425/5xx (incl. 529
/// overloaded) → `Server`; Google's 400 `API_KEY_INVALID` → `Auth`; other 4xx and 3xx →
/// `BadRequest`. Anything else unexpected → `Server`.
pub fn error_from_response(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    secret: Option<&str>,
) -> AgentError {
    let vendor = VendorError::parse(body);
    let code = status.as_u16();
    let message = {
        let raw = match vendor.as_ref().and_then(|v| v.message.clone()) {
            Some(m) if !m.trim().is_empty() => m,
            _ => {
                let text = String::from_utf8_lossy(body);
                if text.trim().is_empty() {
                    status.canonical_reason().unwrap_or("no message").to_owned()
                } else {
                    text.into_owned()
                }
            }
        };
        clean_message(&raw, secret)
    };
    let vendor = vendor.unwrap_or_default();
    match code {
        401 | 403 => AgentError::Auth {
            status: code,
            message,
        },
        429 if vendor.code.as_deref() == Some("insufficient_quota")
            || vendor.kind.as_deref() == Some("insufficient_quota") =>
        {
            AgentError::BadRequest {
                status: code,
                message,
            }
        }
        429 => AgentError::RateLimited {
            retry_after: parse_retry_after(headers).or(vendor.retry_delay),
        },
        408 | 409 | 425 | 500..=599 => AgentError::Server {
            status: code,
            message,
        },
        400..=499 if vendor.reason.as_deref() == Some("API_KEY_INVALID") => AgentError::Auth {
            status: code,
            message,
        },
        300..=499 => {
            let message = match headers
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
            {
                Some(location) if status.is_redirection() => clean_message(
                    &format!("unexpected redirect to {location} (check the base URL)"),
                    secret,
                ),
                _ => message,
            };
            AgentError::BadRequest {
                status: code,
                message,
            }
        }
        _ => AgentError::Server {
            status: code,
            message,
        },
    }
}

/// Map an error object received inside a 200 response or stream (OpenAI-compatible
/// `{"error":{…}}`). The numeric `code` is used as the status when it is an HTTP status.
pub fn error_from_payload(value: &Value, default_status: u16, secret: Option<&str>) -> AgentError {
    let vendor = VendorError::from_value(value).unwrap_or_default();
    let message = clean_message(
        vendor
            .message
            .as_deref()
            .unwrap_or("error reported by the provider"),
        secret,
    );
    // A numeric `code` that is an HTTP status (Google, OpenRouter) decides like a status.
    if let Some(status) = vendor.status.filter(|s| (400..=599).contains(s))
        && let Ok(code) = StatusCode::from_u16(status)
    {
        let body = serde_json::to_vec(value).unwrap_or_default();
        return error_from_response(code, &HeaderMap::new(), &body, secret);
    }
    // Otherwise the textual type and code (OpenAI: `type` + `code`, Google: `status`).
    let kind = [vendor.kind.as_deref(), vendor.code.as_deref()]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ")
        .to_ascii_lowercase();
    if kind.contains("insufficient_quota") {
        AgentError::BadRequest {
            status: 429,
            message,
        }
    } else if kind.contains("rate_limit") || kind.contains("resource_exhausted") {
        AgentError::RateLimited {
            retry_after: vendor.retry_delay,
        }
    } else if kind.contains("authentication")
        || kind.contains("invalid_api_key")
        || kind.contains("unauthenticated")
    {
        AgentError::Auth {
            status: 401,
            message,
        }
    } else if kind.contains("permission") {
        AgentError::Auth {
            status: 403,
            message,
        }
    } else if kind.contains("invalid_request") || kind.contains("invalid_argument") {
        AgentError::BadRequest {
            status: 400,
            message,
        }
    } else {
        AgentError::Server {
            status: default_status,
            message,
        }
    }
}

/// `retry-after-ms` (milliseconds, OpenAI/Anthropic) wins over `Retry-After` (delta-seconds
/// or an HTTP-date; a date in the past gives zero).
pub fn parse_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(ms) = header("retry-after-ms").and_then(|v| v.parse::<f64>().ok())
        && ms.is_finite()
        && ms >= 0.0
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    let value = header("retry-after")?;
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let at = parse_http_date(value)?;
    Some((at - Utc::now()).to_std().unwrap_or(Duration::ZERO))
}

/// IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) and the obsolete RFC 850 and asctime forms.
pub fn parse_http_date(value: &str) -> Option<DateTime<Utc>> {
    if let Ok(date) = DateTime::parse_from_rfc2822(value) {
        return Some(date.with_timezone(&Utc));
    }
    ["%A, %d-%b-%y %H:%M:%S GMT", "%a %b %e %H:%M:%S %Y"]
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(value, format).ok())
        .map(|naive| naive.and_utc())
}

/// Google's JSON form of a protobuf Duration: `"37s"`, `"1.5s"`.
fn parse_proto_duration(value: &str) -> Option<Duration> {
    let secs: f64 = value.trim().strip_suffix('s')?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

/// Redact the secret, collapse whitespace, cut to [`MAX_ERROR_MESSAGE_CHARS`].
pub fn clean_message(raw: &str, secret: Option<&str>) -> String {
    let redacted = match secret {
        Some(s) if !s.is_empty() => raw.replace(s, "[redacted]"),
        _ => raw.to_owned(),
    };
    let collapsed = redacted.split_whitespace().collect::<Vec<_>>().join(" ");
    truncate_chars(&collapsed, MAX_ERROR_MESSAGE_CHARS)
}

fn truncate_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// An error and its sources, `: `-joined (reqwest's own Display hides the cause).
fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

/// The usage estimate adapters fall back to when a provider reports none: the system prompt
/// and every message text as input.
pub fn estimate_usage(request: &CompletionRequest, output: &str) -> Usage {
    let mut input = request.system.clone();
    for message in &request.messages {
        if !input.is_empty() {
            input.push('\n');
        }
        input.push_str(&message.content);
    }
    Usage::estimate(&input, output)
}

/// `base_url` without trailing slashes (and without `strip` when it ends with it, so a
/// base given with the version prefix still works).
pub(crate) fn normalize_base(base_url: &str, strip: Option<&str>) -> String {
    let mut base = base_url.trim().trim_end_matches('/');
    if let Some(suffix) = strip
        && let Some(stripped) = base.strip_suffix(suffix)
    {
        base = stripped.trim_end_matches('/');
    }
    base.to_owned()
}

/// A key that is absent or blank counts as no key.
pub(crate) fn normalize_key(api_key: Option<String>) -> Option<String> {
    api_key
        .map(|k| k.trim().to_owned())
        .filter(|k| !k.is_empty())
}

/// Whether a response to a streaming request came back as one JSON document instead of an
/// event stream (proxies that ignore `stream: true` do this): its Content-Type says so.
pub fn is_json_body(response: &reqwest::Response) -> bool {
    response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            let essence = v.split(';').next().unwrap_or("").trim();
            essence.eq_ignore_ascii_case("application/json")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(
                reqwest::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(
            parse_retry_after(&headers(&[("retry-after", "7")])),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            parse_retry_after(&headers(&[
                ("retry-after", "7"),
                ("retry-after-ms", "1500")
            ])),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_retry_after(&headers(&[(
                "retry-after",
                "Sun, 06 Nov 1994 08:49:37 GMT"
            )])),
            Some(Duration::ZERO)
        );
        let future = (Utc::now() + chrono::Duration::seconds(120))
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        let got = parse_retry_after(&headers(&[("retry-after", &future)])).unwrap();
        assert!(
            got > Duration::from_secs(100) && got <= Duration::from_secs(120),
            "{got:?}"
        );
        assert_eq!(
            parse_retry_after(&headers(&[("retry-after", "soon")])),
            None
        );
        assert_eq!(parse_retry_after(&HeaderMap::new()), None);
    }

    #[test]
    fn http_date_obsolete_forms() {
        let expected = DateTime::parse_from_rfc2822("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(
            parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT").unwrap(),
            expected
        );
        assert_eq!(
            parse_http_date("Sun Nov  6 08:49:37 1994").unwrap(),
            expected
        );
    }

    #[test]
    fn status_mapping() {
        let map = |status: u16, body: &str| {
            error_from_response(
                StatusCode::from_u16(status).unwrap(),
                &HeaderMap::new(),
                body.as_bytes(),
                None,
            )
        };
        assert!(matches!(
            map(401, "{}"),
            AgentError::Auth { status: 401, .. }
        ));
        assert!(matches!(
            map(403, "{}"),
            AgentError::Auth { status: 403, .. }
        ));
        assert!(matches!(
            map(429, "{}"),
            AgentError::RateLimited { retry_after: None }
        ));
        for status in [408, 409, 425, 500, 502, 503, 529] {
            let err = map(status, "{}");
            assert!(
                matches!(err, AgentError::Server { .. }),
                "{status}: {err:?}"
            );
            assert!(err.is_retryable());
        }
        for status in [400, 404, 413, 422, 302] {
            let err = map(status, "{}");
            assert!(
                matches!(err, AgentError::BadRequest { .. }),
                "{status}: {err:?}"
            );
            assert!(!err.is_retryable());
        }
        let quota = map(
            429,
            r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#,
        );
        assert!(
            matches!(quota, AgentError::BadRequest { status: 429, .. }),
            "{quota:?}"
        );
        let google = map(
            400,
            r#"{"error":{"code":400,"message":"API key not valid.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID"}]}}"#,
        );
        assert!(
            matches!(google, AgentError::Auth { status: 400, .. }),
            "{google:?}"
        );
        let google_429 = map(
            429,
            r#"[{"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"37s"}]}}]"#,
        );
        assert_eq!(
            google_429,
            AgentError::RateLimited {
                retry_after: Some(Duration::from_secs(37))
            }
        );
    }

    #[test]
    fn vendor_messages_extracted_redacted_truncated() {
        let msg = |body: &str, secret: Option<&str>| match error_from_response(
            StatusCode::BAD_REQUEST,
            &HeaderMap::new(),
            body.as_bytes(),
            secret,
        ) {
            AgentError::BadRequest { message, .. } => message,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            msg(
                r#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: too big"}}"#,
                None
            ),
            "max_tokens: too big"
        );
        assert_eq!(
            msg(r#"{"error":"model not found"}"#, None),
            "model not found"
        );
        assert_eq!(msg(r#"{"message":"Unauthorized"}"#, None), "Unauthorized");
        assert_eq!(msg(r#"{"detail":"bad things"}"#, None), "bad things");
        assert_eq!(msg("<html>\n  oops\n</html>", None), "<html> oops </html>");
        assert_eq!(msg("", None), "Bad Request");
        assert_eq!(
            msg(
                r#"{"error":{"message":"Incorrect API key provided: sk-secret-123"}}"#,
                Some("sk-secret-123")
            ),
            "Incorrect API key provided: [redacted]"
        );
        let long = format!(r#"{{"error":{{"message":"{}"}}}}"#, "é".repeat(1000));
        let cut = msg(&long, None);
        assert_eq!(cut.chars().count(), MAX_ERROR_MESSAGE_CHARS + 1);
    }

    #[test]
    fn payload_errors() {
        let v: Value =
            serde_json::from_str(r#"{"error":{"message":"slow down","type":"rate_limit_error"}}"#)
                .unwrap();
        assert!(matches!(
            error_from_payload(&v, 500, None),
            AgentError::RateLimited { .. }
        ));
        let v: Value =
            serde_json::from_str(r#"{"error":{"code":502,"message":"upstream died"}}"#).unwrap();
        assert_eq!(
            error_from_payload(&v, 500, None),
            AgentError::Server {
                status: 502,
                message: "upstream died".into()
            }
        );
        let v: Value = serde_json::from_str(
            r#"{"error":{"message":"bad key","type":"invalid_request_error","code":"invalid_api_key"}}"#,
        )
        .unwrap();
        assert!(matches!(
            error_from_payload(&v, 500, None),
            AgentError::Auth { status: 401, .. }
        ));
        let v: Value = serde_json::from_str(r#"{"error":{"message":"boom"}}"#).unwrap();
        assert!(matches!(
            error_from_payload(&v, 500, None),
            AgentError::Server { status: 500, .. }
        ));
    }

    #[test]
    fn base_and_key_normalization() {
        assert_eq!(
            normalize_base("https://api.anthropic.com/", Some("/v1")),
            "https://api.anthropic.com"
        );
        assert_eq!(
            normalize_base("https://api.anthropic.com/v1/", Some("/v1")),
            "https://api.anthropic.com"
        );
        assert_eq!(
            normalize_base("http://localhost:11434/v1/", None),
            "http://localhost:11434/v1"
        );
        assert_eq!(normalize_key(Some("  ".into())), None);
        assert_eq!(normalize_key(Some(" k \n".into())), Some("k".into()));
    }

    #[tokio::test]
    async fn connection_refused_maps_to_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let client = ProviderClient::new(ClientOptions::default()).unwrap();
        let err = client
            .send(client.inner().get(format!("http://{addr}/")), None)
            .await
            .unwrap_err();
        assert!(matches!(err, AgentError::Connection(_)), "{err:?}");
        assert!(err.is_retryable());
    }

    #[test]
    fn shared_client_builds() {
        let client = ProviderClient::shared().unwrap();
        assert_eq!(client.options(), &ClientOptions::default());
    }
}
