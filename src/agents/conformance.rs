//! The provider conformance suite: one set of cases every HTTP adapter passes against a
//! local fake server speaking its vendor's wire format — a normal reply, a stream cut into
//! 3-byte chunks, 429 with Retry-After, 5xx, a hang, malformed streams, a bad key and a
//! missing key.
//!
//! Rule: a case is written once here; what differs between vendors (bodies, paths, headers,
//! the exact errors expected) is data in each adapter's [`Fixture`]. Adapters are built
//! through the catalogue ([`providers::adapter`]), as the registry builds them. Every wire
//! format of the catalogue must be in [`SUITE`]. Tests are named
//! `agents::conformance::<adapter>::<case>`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::http::testing::*;
use super::http::{Connection, ProviderClient};
use super::providers::{self, PROVIDERS, WireFormat};
use super::{AgentError, Completion, CompletionRequest, Provider};

/// What one adapter's vendor says and what the adapter must make of it.
pub(crate) struct Fixture {
    /// Catalogue id the adapter is built for.
    pub provider: &'static str,
    /// The variable a `MissingKey` names.
    pub key_env: &'static str,
    pub key: &'static str,
    pub model: &'static str,
    /// Base URL of plain calls, from the fake server's root.
    pub base: fn(&str) -> String,
    /// Another accepted form of it (version prefix, trailing slash), used for streams.
    pub alt_base: fn(&str) -> String,
    pub request: fn(bool) -> CompletionRequest,

    /// A plain call: the vendor's answer and the completion made of it.
    pub reply: Value,
    pub completion: Completion,
    /// The request it must send: path, key header (name, value), other headers, body.
    pub target: &'static str,
    pub key_header: (&'static str, String),
    pub headers: Vec<(&'static str, &'static str)>,
    pub body: Value,

    /// A complete stream of these text pieces, one string per SSE event, the terminator
    /// event last when the format has one.
    pub stream: fn(&[&str]) -> Vec<String>,
    pub terminated: bool,
    /// The completion of `stream(&UNICODE_PIECES)`.
    pub streamed: Completion,
    /// A streamed request's path and the body fields that ask for a stream.
    pub stream_target: &'static str,
    pub stream_fields: Value,
    /// A JSON document (not a stream) answering a streamed request, and its text.
    pub json_for_stream: (Value, &'static str),
    /// Error events sent after the start of a stream, and the error each must give.
    pub stream_errors: Vec<(String, AgentError)>,

    pub rate_limits: Vec<ErrorReply>,
    pub server_errors: Vec<ErrorReply>,
    /// Answers to a bad key (the vendor echoing the key); each must be `Auth`.
    pub bad_keys: Vec<ErrorReply>,
}

/// A non-2xx answer and the error it maps to.
pub(crate) struct ErrorReply {
    pub status: u16,
    pub headers: Vec<(&'static str, &'static str)>,
    pub body: Value,
    pub expect: AgentError,
}

impl ErrorReply {
    pub fn new(status: u16, body: Value, expect: AgentError) -> ErrorReply {
        ErrorReply {
            status,
            headers: Vec::new(),
            body,
            expect,
        }
    }

    pub fn with_header(mut self, name: &'static str, value: &'static str) -> ErrorReply {
        self.headers.push((name, value));
        self
    }

    fn reply(&self) -> Reply {
        json_reply_with(self.status, &self.body, &self.headers)
    }
}

impl Fixture {
    fn adapter(
        &self,
        base: String,
        key: Option<&str>,
        client: Option<ProviderClient>,
    ) -> Arc<dyn Provider> {
        let info = providers::get(self.provider).expect("fixture names a catalogue provider");
        let mut connection = Connection::new(info, &base, key.map(str::to_owned));
        if let Some(client) = client {
            connection = connection.with_client(client);
        }
        providers::adapter(connection)
    }

    fn provider(&self, server: &FakeServer) -> Arc<dyn Provider> {
        self.adapter((self.base)(&server.base), Some(self.key), None)
    }

    fn streaming_provider(&self, server: &FakeServer) -> Arc<dyn Provider> {
        self.adapter((self.alt_base)(&server.base), Some(self.key), None)
    }

    fn timing_out(&self, server: &FakeServer, after: Duration) -> Arc<dyn Provider> {
        self.adapter(
            (self.alt_base)(&server.base),
            Some(self.key),
            Some(client_with_read_timeout(after)),
        )
    }

    /// The events of a stream of `pieces` without its terminator.
    fn open_stream(&self, pieces: &[&str]) -> Vec<String> {
        let mut events = (self.stream)(pieces);
        if self.terminated {
            events.pop();
        }
        events
    }

    async fn plain_error(&self, reply: Reply) -> AgentError {
        let server = FakeServer::start(reply).await;
        self.provider(&server)
            .complete(self.model, &(self.request)(false), None)
            .await
            .unwrap_err()
    }

    async fn streamed_error(&self, reply: Reply) -> AgentError {
        let server = FakeServer::start(reply).await;
        let (sink, _rx) = sink();
        self.streaming_provider(&server)
            .complete(self.model, &(self.request)(true), Some(&sink))
            .await
            .unwrap_err()
    }

    fn assert_plain_request(&self, req: &RecordedRequest) {
        assert_eq!(req.method, "POST");
        assert_eq!(req.target, self.target);
        assert!(!req.target.contains(self.key), "key in the URL");
        let (name, value) = &self.key_header;
        assert_eq!(req.header(name), Some(value.as_str()), "{name}");
        for (name, value) in &self.headers {
            assert_eq!(req.header(name), Some(*value), "{name}");
        }
        assert_eq!(req.header("content-type"), Some("application/json"));
        assert!(req.header("user-agent").unwrap().starts_with("aragora/"));
    }

    fn assert_stream_request(&self, req: &RecordedRequest) {
        assert_eq!(req.target, self.stream_target);
        let (name, value) = &self.key_header;
        assert_eq!(req.header(name), Some(value.as_str()), "{name}");
        let body = req.json();
        for (field, value) in self.stream_fields.as_object().unwrap() {
            assert_eq!(&body[field], value, "{field}");
        }
    }
}

fn assert_malformed(err: &AgentError, what: &str) {
    assert!(matches!(err, AgentError::Malformed(_)), "{what}: {err:?}");
    assert!(err.is_retryable(), "{what}");
}

pub(crate) async fn normal_reply(f: &Fixture) {
    let server = FakeServer::start(json_reply(200, &f.reply)).await;
    let completion = f
        .provider(&server)
        .complete(f.model, &(f.request)(false), None)
        .await
        .unwrap();
    assert_eq!(completion, f.completion);
    let req = server.only_request();
    f.assert_plain_request(&req);
    assert_eq!(req.json(), f.body);
}

pub(crate) async fn streamed_reply_in_small_chunks(f: &Fixture) {
    let body = (f.stream)(&UNICODE_PIECES).concat();
    let server = FakeServer::start(sse_reply(&body, 3)).await;
    let (sink, mut rx) = sink();
    let completion = f
        .streaming_provider(&server)
        .complete(f.model, &(f.request)(true), Some(&sink))
        .await
        .unwrap();
    let deltas = drain(&mut rx);
    assert_eq!(deltas, UNICODE_PIECES);
    assert_eq!(completion.text, deltas.concat());
    assert_eq!(completion, f.streamed);
    f.assert_stream_request(&server.only_request());
}

pub(crate) async fn a_json_answer_to_a_streamed_request_is_read_whole(f: &Fixture) {
    let (answer, text) = &f.json_for_stream;
    let server = FakeServer::start(json_reply(200, answer)).await;
    let (sink, mut rx) = sink();
    let completion = f
        .streaming_provider(&server)
        .complete(f.model, &(f.request)(true), Some(&sink))
        .await
        .unwrap();
    assert_eq!(completion.text, *text);
    assert_eq!(drain(&mut rx).concat(), *text);
    assert!(!completion.usage.estimated);
    f.assert_stream_request(&server.only_request());
}

pub(crate) async fn stream_flag_without_sink_is_not_streamed(f: &Fixture) {
    let server = FakeServer::start(json_reply(200, &f.reply)).await;
    let completion = f
        .provider(&server)
        .complete(f.model, &(f.request)(true), None)
        .await
        .unwrap();
    assert_eq!(completion, f.completion);
    let req = server.only_request();
    f.assert_plain_request(&req);
    assert_eq!(req.json(), f.body, "the same request as a plain call");
}

pub(crate) async fn rate_limited_with_retry_after(f: &Fixture) {
    assert!(!f.rate_limits.is_empty());
    for case in &f.rate_limits {
        let err = f.plain_error(case.reply()).await;
        assert_eq!(err, case.expect, "{}", case.body);
        assert!(matches!(err, AgentError::RateLimited { .. }));
        assert!(err.is_retryable());
    }
}

pub(crate) async fn server_error_is_retryable(f: &Fixture) {
    assert!(!f.server_errors.is_empty());
    for case in &f.server_errors {
        let err = f.plain_error(case.reply()).await;
        assert_eq!(err, case.expect, "{}", case.body);
        assert!(matches!(err, AgentError::Server { .. }));
        assert!(err.is_retryable());
    }
}

pub(crate) async fn hang_maps_to_timeout(f: &Fixture) {
    let server = FakeServer::start(Reply::Hang).await;
    // Shared client (no timeout of its own): still pending when the caller gives up.
    let pending = tokio::time::timeout(
        Duration::from_millis(200),
        f.provider(&server)
            .complete(f.model, &(f.request)(false), None),
    )
    .await;
    assert!(pending.is_err(), "the adapter returned early: {pending:?}");
    // With a read timeout configured on the client, reqwest's timeout maps to Timeout.
    let err = f
        .timing_out(&server, Duration::from_millis(150))
        .complete(f.model, &(f.request)(false), None)
        .await
        .unwrap_err();
    assert_eq!(err, AgentError::Timeout(Duration::from_millis(150)));
    assert!(err.is_retryable());
}

pub(crate) async fn stream_stalled_mid_way_times_out(f: &Fixture) {
    // Headers and the stream's events but its end, then silence: the body never ends.
    let server = FakeServer::start(Reply::Stall {
        status: 200,
        headers: vec![("content-type".into(), "text/event-stream".into())],
        chunks: f
            .open_stream(&["partial"])
            .into_iter()
            .map(String::into_bytes)
            .collect(),
    })
    .await;
    let (sink, mut rx) = sink();
    let err = f
        .timing_out(&server, Duration::from_millis(200))
        .complete(f.model, &(f.request)(true), Some(&sink))
        .await
        .unwrap_err();
    assert_eq!(err, AgentError::Timeout(Duration::from_millis(200)));
    assert_eq!(drain(&mut rx), ["partial"]);
}

/// A format with a terminator fails without it; one without (Gemini) completes at a clean
/// end of stream.
pub(crate) async fn stream_end_without_terminator(f: &Fixture) {
    let body = f.open_stream(&["partial"]).concat();
    let server = FakeServer::start(sse_reply(&body, 5)).await;
    let (sink, _rx) = sink();
    let result = f
        .streaming_provider(&server)
        .complete(f.model, &(f.request)(true), Some(&sink))
        .await;
    if f.terminated {
        assert_malformed(&result.unwrap_err(), "no terminator");
    } else {
        assert_eq!(result.unwrap().text, "partial");
    }
}

pub(crate) async fn stream_cut_mid_event_is_malformed(f: &Fixture) {
    let whole = (f.stream)(&["one", "two"]).concat();
    let body = whole.trim_end();
    let cut = &body[..body.len() - 1];
    let err = f.streamed_error(sse_reply(cut, 11)).await;
    assert_malformed(&err, "cut mid-event");
}

pub(crate) async fn invalid_json_in_stream_is_malformed(f: &Fixture) {
    let mut events = (f.stream)(&["a", "b"]);
    events.insert(1, "data: {not json\n\n".into());
    let err = f.streamed_error(sse_reply(&events.concat(), 7)).await;
    assert_malformed(&err, "invalid JSON");
}

pub(crate) async fn invalid_utf8_in_stream_is_malformed(f: &Fixture) {
    let events = (f.stream)(&["a"]);
    let mut body = events[0].clone().into_bytes();
    body.extend_from_slice(b"data: \xff\xfe\n\n");
    for event in &events[1..] {
        body.extend_from_slice(event.as_bytes());
    }
    let err = f.streamed_error(sse_bytes_reply(&body, 5)).await;
    assert_malformed(&err, "invalid UTF-8");
}

pub(crate) async fn empty_stream_is_malformed(f: &Fixture) {
    let err = f.streamed_error(sse_reply(": nothing\n\n", 4)).await;
    assert_malformed(&err, "empty stream");
}

pub(crate) async fn error_events_mid_stream(f: &Fixture) {
    assert!(!f.stream_errors.is_empty());
    for (event, expected) in &f.stream_errors {
        let mut body = f.open_stream(&["a"]).concat();
        body.push_str(event);
        let err = f.streamed_error(sse_reply(&body, 9)).await;
        assert_eq!(&err, expected, "{event}");
    }
}

pub(crate) async fn bad_key_is_auth_without_the_key(f: &Fixture) {
    assert!(!f.bad_keys.is_empty());
    for case in &f.bad_keys {
        assert!(
            case.body.to_string().contains(f.key),
            "the vendor echoes it"
        );
        let err = f.plain_error(case.reply()).await;
        assert_auth_without_key(&err, f.key);
        assert_eq!(err, case.expect);
    }
}

pub(crate) async fn missing_key_makes_no_request(f: &Fixture) {
    let server = FakeServer::start(Reply::Hang).await;
    for key in [None, Some("  ")] {
        let provider = f.adapter((f.base)(&server.base), key, None);
        assert!(!provider.available(), "{key:?}");
        let err = provider
            .complete(f.model, &(f.request)(false), None)
            .await
            .unwrap_err();
        assert_eq!(err, AgentError::MissingKey(f.key_env.into()));
        assert!(!err.is_retryable());
    }
    assert!(server.requests().is_empty());
    let keyed = f.adapter((f.base)(&server.base), Some(f.key), None);
    assert!(keyed.available());
    assert_eq!(keyed.id(), f.provider);
}

/// The key never shows in an adapter's `Debug`.
pub(crate) async fn debug_output_hides_the_key(f: &Fixture) {
    let info = providers::get(f.provider).unwrap();
    let connection = Connection::new(info, "http://127.0.0.1:9", Some(f.key.into()));
    let shown = format!("{connection:?}");
    assert!(!shown.contains(f.key), "{shown}");
    assert!(shown.contains("has_key: true"), "{shown}");
}

/// `agents::conformance::<adapter>::<case>` for every adapter and case.
macro_rules! suite {
    ($($adapter:ident => $fixture:path),* $(,)?) => {
        /// The adapters the suite runs against.
        const SUITE: &[&str] = &[$(stringify!($adapter)),*];
        $(
            mod $adapter {
                suite!(@cases $fixture;
                    normal_reply,
                    streamed_reply_in_small_chunks,
                    a_json_answer_to_a_streamed_request_is_read_whole,
                    stream_flag_without_sink_is_not_streamed,
                    rate_limited_with_retry_after,
                    server_error_is_retryable,
                    hang_maps_to_timeout,
                    stream_stalled_mid_way_times_out,
                    stream_end_without_terminator,
                    stream_cut_mid_event_is_malformed,
                    invalid_json_in_stream_is_malformed,
                    invalid_utf8_in_stream_is_malformed,
                    empty_stream_is_malformed,
                    error_events_mid_stream,
                    bad_key_is_auth_without_the_key,
                    missing_key_makes_no_request,
                    debug_output_hides_the_key,
                );
            }
        )*
    };
    (@cases $fixture:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                super::$case(&$fixture()).await;
            }
        )*
    };
}

suite! {
    anthropic => crate::agents::anthropic::tests::conformance,
    openai => crate::agents::openai::tests::conformance,
    openai_compatible => crate::agents::openai::tests::compatible_conformance,
    gemini => crate::agents::gemini::tests::conformance,
}

#[test]
fn every_wire_format_is_in_the_suite() {
    for p in &PROVIDERS {
        let adapter = match p.wire {
            WireFormat::Anthropic => "anthropic",
            WireFormat::OpenAiChat { .. } => "openai",
            WireFormat::Gemini => "gemini",
            // No HTTP: demo.rs has its own tests.
            WireFormat::Demo => continue,
        };
        assert!(SUITE.contains(&adapter), "{} ({adapter})", p.id);
    }
}
