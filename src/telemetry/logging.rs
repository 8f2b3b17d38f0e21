//! Structured JSON logging.
//!
//! Every log line is one JSON object, written whole (lines are buffered and written out in
//! batches at least every [`FLUSH_EVERY`], see [`Batched`]):
//!
//! ```text
//! {"timestamp":"2025-01-02T03:04:05.678Z","level":"INFO","logger":"aragora::http","message":"request done debate_id=abc123 duration_ms=5234","correlation_id":"c-1","debate_id":"abc123","duration_ms":5234,"status":200}
//! ```
//!
//! * `timestamp` is RFC 3339 UTC with millisecond precision and a `Z` suffix.
//! * `level` is upper case: `TRACE`, `DEBUG`, `INFO`, `WARN`, `ERROR`.
//! * `logger` is the event's target as written (`aragora::http`, not `aragora.http`). Records
//!   from crates that use the `log` facade carry their original target.
//! * `message` is the event's message; then come the fields of every enclosing span (root first,
//!   inner spans overriding outer ones) and finally the event's own fields (overriding all spans).
//!   Integers, floats and booleans stay JSON numbers/booleans; strings, `?Debug` and `%Display`
//!   values become strings. A span or event field named like one of the four fixed keys is
//!   written as `field_<name>` so no key appears twice.
//! * For operators who grep: when a line carries a `debate_id` or `duration_ms` field and the
//!   message does not already contain `debate_id=` / `duration_ms=`, the message gets
//!   ` debate_id=<id>` / ` duration_ms=<n>` appended (once).
//!
//! Destinations ([`LogSettings::dir`]): `None` writes every line to stdout. A directory splits
//! lines by target into four files there, opened in append mode (created if missing), so
//! logrotate's `copytruncate` and an external `tail -f` keep working:
//!
//! | target prefix (module boundary) | file            |
//! |---------------------------------|-----------------|
//! | `aragora::ws`                   | `websocket.log` |
//! | `aragora::debate`               | `debate.log`    |
//! | `aragora::agents`               | `agent.log`     |
//! | anything else                   | `api.log`       |
//!
//! Never log secrets; pass keys through [`mask`] first.

use parking_lot::{Mutex, MutexGuard};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use anyhow::Context as _;
use chrono::{SecondsFormat, Utc};
use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use super::correlation::RequestContext;

/// The filter the server uses when none is configured.
pub const DEFAULT_FILTER: &str = "info,sqlx=warn,hyper=warn,tower_http=warn";

/// Where log lines go and which ones are kept.
#[derive(Debug, Clone)]
pub struct LogSettings {
    /// `None`: every line to stdout. `Some(dir)`: split into `websocket.log`, `debate.log`,
    /// `agent.log` and `api.log` in `dir` (created if missing).
    pub dir: Option<PathBuf>,
    /// `tracing_subscriber::EnvFilter` directives, e.g. [`DEFAULT_FILTER`].
    pub filter: String,
    /// Export `aragora::*` spans as OpenTelemetry traces (see `telemetry::traces`).
    pub tracer: Option<opentelemetry_sdk::trace::Tracer>,
    /// A Sentry DSN is configured: install the layers that feed it.
    pub sentry: bool,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            dir: None,
            filter: DEFAULT_FILTER.to_owned(),
            tracer: None,
            sentry: false,
        }
    }
}

/// Installs the global subscriber: registry + `EnvFilter` + [`JsonLogLayer`] + the recent-errors
/// buffer + the Sentry layer, and bridges the
/// `log` facade into it.
///
/// Fails (without panicking) when the filter is invalid, when the log directory or files cannot
/// be created, or when a global subscriber is already installed (e.g. on a second call).
pub fn init(settings: &LogSettings) -> anyhow::Result<()> {
    let filter = parse_filter(&settings.filter)?;
    let (stdout, files) = match &settings.dir {
        None => (Some(JsonLogLayer::stdout()), None),
        Some(dir) => (None, Some(layer_for_dir(dir)?)),
    };
    // Recent WARN/ERROR lines for /api/system/errors, and ERROR events for Sentry (a no-op
    // unless SENTRY_DSN started a client).
    // Spans of aragora's own code only (not those of the libraries the exporter itself
    // uses), and no events: log lines stay logs.
    let traces = settings.tracer.clone().map(|tracer| {
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_tracked_inactivity(false)
            .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                meta.is_span() && meta.target().starts_with("aragora")
            }))
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(traces)
        .with(stdout)
        .with(files)
        .with(super::errors::ErrorLayer::new(super::errors::global()))
        // Installed only with a DSN: a filtered layer costs two lookups on every span enter
        // and exit (every poll of an instrumented future) even when it takes nothing. And
        // without a running client they would build a breadcrumb for every INFO line only
        // for it to be dropped: they see events only while reporting.
        .with(settings.sentry.then(|| {
            ::sentry::integrations::tracing::BreadcrumbLayer::new().with_filter(
                tracing_subscriber::filter::filter_fn(|meta| {
                    *meta.level() <= tracing::Level::INFO && super::sentry::reporting()
                }),
            )
        }))
        .with(settings.sentry.then(|| {
            ::sentry::integrations::tracing::ErrorLayer::new().with_filter(
                tracing_subscriber::filter::filter_fn(|meta| {
                    *meta.level() <= tracing::Level::ERROR && super::sentry::reporting()
                }),
            )
        }))
        .try_init()
        .context("cannot install the global log subscriber (logging already initialised?)")?;
    // A panic's own log lines (and those just before it) reach the sink before the process
    // can die of it.
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        flush();
    }));
    Ok(())
}

/// Parses `filter` as `EnvFilter` directives; the error names the offending value.
pub fn parse_filter(filter: &str) -> anyhow::Result<EnvFilter> {
    EnvFilter::builder()
        .parse(filter)
        .with_context(|| format!("invalid log filter {filter:?}"))
}

/// A layer writing to the four per-area files in `dir` (see the module docs), creating the
/// directory and files if missing and appending to existing ones.
pub fn layer_for_dir(dir: &Path) -> anyhow::Result<JsonLogLayer<DirWriter>> {
    Ok(JsonLogLayer::with_writer(DirWriter::open(dir)?))
}

/// Masks a secret (API key, rate-limit key) for logging: the first 4 characters followed by
/// `…***` when the secret is longer than 8 characters, otherwise just `***`. The marker does not
/// depend on the secret's length, so the output reveals neither the key nor its size.
pub fn mask(secret: &str) -> String {
    if secret.chars().count() > 8 {
        let head: String = secret.chars().take(4).collect();
        format!("{head}…***")
    } else {
        "***".to_owned()
    }
}

/// The file (within a log directory) that lines with this target go to.
pub fn file_for_target(target: &str) -> &'static str {
    let under = |prefix: &str| {
        target
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    };
    if under("aragora::ws") {
        WEBSOCKET_LOG
    } else if under("aragora::debate") {
        DEBATE_LOG
    } else if under("aragora::agents") {
        AGENT_LOG
    } else {
        API_LOG
    }
}

const WEBSOCKET_LOG: &str = "websocket.log";
const DEBATE_LOG: &str = "debate.log";
const AGENT_LOG: &str = "agent.log";
const API_LOG: &str = "api.log";

/// A `tracing_subscriber` layer that writes one JSON object per event (see the module docs).
///
/// `W` is the sink: anything implementing [`MakeWriter`]. The layer formats the whole line
/// first and hands it to the writer in one `write_all`, choosing the writer with
/// [`MakeWriter::make_writer_for`] so sinks can route by target.
#[derive(Debug, Clone)]
pub struct JsonLogLayer<W> {
    make_writer: W,
}

impl<W> JsonLogLayer<W>
where
    W: for<'a> MakeWriter<'a> + 'static,
{
    /// A layer writing to `make_writer`, e.g. a [`SharedBuffer`] in tests.
    pub fn with_writer(make_writer: W) -> Self {
        Self { make_writer }
    }
}

impl JsonLogLayer<StdoutWriter> {
    /// A layer writing every line to stdout (batched, see [`Batched`]).
    pub fn stdout() -> Self {
        Self::with_writer(StdoutWriter(Batched::new(io::stdout())))
    }
}

impl<S, W> Layer<S> for JsonLogLayer<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'a> MakeWriter<'a> + 'static,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        // Another JsonLogLayer on the same registry may already have stored the fields.
        if extensions.get_mut::<SpanFields>().is_none() {
            let mut fields = Fields::default();
            attrs.record(&mut FieldVisitor(&mut fields));
            extensions.insert(SpanFields(fields));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        match extensions.get_mut::<SpanFields>() {
            Some(SpanFields(fields)) => values.record(&mut FieldVisitor(fields)),
            None => {
                let mut fields = Fields::default();
                values.record(&mut FieldVisitor(&mut fields));
                extensions.insert(SpanFields(fields));
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let now = LogTime::now();
        // The request line, from the request's context (see `request_line`); with a span in
        // scope its fields go into the line, so the general path below writes it.
        let meta = event.metadata();
        if meta.name() == REQUEST_LINE
            && ctx.current_span().id().is_none()
            && super::correlation::with_request(|request| {
                request.is_some_and(|r| self.write_request_line(event, meta, now, r))
            })
        {
            return;
        }
        // Records bridged from the `log` crate carry their real target in `log.*` fields.
        let normalized = event.normalized_metadata();
        let meta: &Metadata<'_> = normalized.as_ref().unwrap_or_else(|| event.metadata());

        let mut event_fields = Fields::default();
        event.record(&mut FieldVisitor(&mut event_fields));
        if event.is_log() {
            event_fields.0.retain(|(name, _)| !name.starts_with("log."));
        }
        let mut message = match event_fields.remove("message") {
            Some(Value::String(text)) => text,
            Some(other) => other.to_string(),
            None => String::new(),
        };

        // The request's fields first (see `correlation`), then span fields root first, inner
        // spans overriding outer ones, then the event's own: borrowed, not copied.
        let spans: Vec<_> = ctx
            .event_scope(event)
            .map(|scope| scope.from_root().collect())
            .unwrap_or_default();
        let extensions: Vec<_> = spans.iter().map(|span| span.extensions()).collect();
        super::correlation::with_request(|request| {
            let mut fields: Vec<(&str, FieldRef<'_>)> = Vec::with_capacity(16);
            for (name, value) in request
                .into_iter()
                .flat_map(super::correlation::RequestContext::fields)
            {
                fields.push((name, FieldRef::Text(value)));
            }
            let span_fields = extensions
                .iter()
                .filter_map(|ext| ext.get::<SpanFields>())
                .flat_map(|SpanFields(f)| f.0.iter());
            for (name, value) in span_fields.chain(event_fields.0.iter()) {
                match fields.iter_mut().find(|(existing, _)| existing == name) {
                    Some((_, slot)) => *slot = FieldRef::Json(value),
                    None => fields.push((name, FieldRef::Json(value))),
                }
            }

            append_for_grep(&mut message, &fields, "debate_id");
            append_for_grep(&mut message, &fields, "duration_ms");
            self.write_line(meta, now, &message, &fields);
        });
    }
}

impl<W> JsonLogLayer<W>
where
    W: for<'a> MakeWriter<'a> + 'static,
{
    fn write_line(
        &self,
        meta: &Metadata<'_>,
        now: LogTime,
        message: &str,
        fields: &[(&str, FieldRef<'_>)],
    ) {
        self.emit(meta, now, |line| {
            line.push(b',');
            push_key(line, "message");
            push_str(line, message);
            for (name, value) in fields {
                line.push(b',');
                if RESERVED_KEYS.contains(name) {
                    push_entry(line, &format!("field_{name}"), value);
                } else {
                    push_entry(line, name, value);
                }
            }
        });
    }

    /// The request line's event written from the request's context, as [`Self::on_event`]
    /// writes it in general: the fixed keys, the message with ` debate_id=` appended when
    /// the request names a debate, the request's fields, then `status` and `duration_ms`.
    /// `false` (nothing written) when the event is not a whole request line.
    fn write_request_line(
        &self,
        event: &Event<'_>,
        meta: &Metadata<'_>,
        now: LogTime,
        request: &RequestContext,
    ) -> bool {
        let mut numbers = RequestNumbers::default();
        event.record(&mut numbers);
        let (Some(status), Some(duration_ms)) = (numbers.status, numbers.duration_ms) else {
            return false;
        };
        let (method, route, debate) = (request.method(), request.route(), request.debate_id());
        let mut status_text = itoa::Buffer::new();
        let status_text = status_text.format(status);
        let mut duration_text = itoa::Buffer::new();
        let duration_text = duration_text.format(duration_ms);
        self.emit(meta, now, |line| {
            line.extend_from_slice(b",\"message\":\"");
            let plain = !needs_escape(method.as_bytes())
                && !needs_escape(route.as_bytes())
                && debate.is_none_or(|id| !needs_escape(id.as_bytes()));
            let parts = [
                "request ",
                method,
                " ",
                route,
                " status=",
                status_text,
                " duration_ms=",
                duration_text,
                if debate.is_some() { " debate_id=" } else { "" },
                debate.unwrap_or(""),
            ];
            if plain {
                for part in parts {
                    line.extend_from_slice(part.as_bytes());
                }
                line.push(b'"');
            } else {
                line.pop();
                push_str(line, &parts.concat());
            }
            line.extend_from_slice(b",\"correlation_id\":");
            push_str(line, request.id());
            line.extend_from_slice(b",\"method\":");
            push_str(line, method);
            line.extend_from_slice(b",\"route\":");
            push_str(line, route);
            if let Some(id) = debate {
                line.extend_from_slice(b",\"debate_id\":");
                push_str(line, id);
            }
            line.extend_from_slice(b",\"status\":");
            line.extend_from_slice(status_text.as_bytes());
            line.extend_from_slice(b",\"duration_ms\":");
            line.extend_from_slice(duration_text.as_bytes());
        });
        true
    }

    /// One line: the fixed keys (timestamp, level, logger), then what `rest` writes (the
    /// message and the fields, each after a comma), then the closing brace; handed to the
    /// sink for `meta` in one write.
    fn emit(&self, meta: &Metadata<'_>, now: LogTime, rest: impl FnOnce(&mut Vec<u8>)) {
        LINE.with_borrow_mut(|line| {
            line.clear();
            line.extend_from_slice(b"{\"timestamp\":\"");
            push_timestamp(line, now);
            line.extend_from_slice(b"\",\"level\":\"");
            line.extend_from_slice(meta.level().as_str().as_bytes());
            line.extend_from_slice(b"\",\"logger\":");
            push_str(line, meta.target());
            rest(line);
            line.extend_from_slice(b"}\n");

            // One write per line; a failed write cannot be logged anywhere, so it is dropped.
            let mut writer = self.make_writer.make_writer_for(meta);
            let _ = writer.write_all(line);
            if line.capacity() > 64 * 1024 {
                *line = Vec::with_capacity(1024);
            }
        });
    }
}

/// The name of the request line's event (see [`request_line`]), by which the JSON layer
/// knows it.
const REQUEST_LINE: &str = "aragora::request_line";

/// The request log line (`request GET /api/debates status=200 duration_ms=5`, target
/// `aragora::http`, with the request's fields, `status` and `duration_ms`), written once per
/// HTTP request by the pipeline: INFO, WARN for a 5xx answer.
///
/// It is an event like any other (the filter, the recent-errors buffer and Sentry see it),
/// named [`REQUEST_LINE`]. The JSON layer writes it straight from the request's context
/// when no span is in scope, without recording its fields as JSON values or working out
/// the grep suffixes: the line is byte for byte the one the general path gives (a test
/// compares them), and the general path cost about as much as the rest of a liveness
/// answer. The message is formatted only if a layer reads it.
pub fn request_line(request: &RequestContext, status: u16, duration_ms: u64) {
    let message = RequestMessage {
        method: request.method(),
        route: request.route(),
        status,
        duration_ms,
    };
    if status >= 500 {
        tracing::warn!(name: REQUEST_LINE, target: "aragora::http", message = %message, status, duration_ms);
    } else {
        tracing::info!(name: REQUEST_LINE, target: "aragora::http", message = %message, status, duration_ms);
    }
}

/// The request line's message, formatted when a layer records it.
struct RequestMessage<'a> {
    method: &'a str,
    route: &'a str,
    status: u16,
    duration_ms: u64,
}

impl std::fmt::Display for RequestMessage<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "request {} {} status={} duration_ms={}",
            self.method, self.route, self.status, self.duration_ms
        )
    }
}

/// The two numbers of a request line's event.
#[derive(Default)]
struct RequestNumbers {
    status: Option<u64>,
    duration_ms: Option<u64>,
}

impl Visit for RequestNumbers {
    fn record_u64(&mut self, field: &Field, value: u64) {
        match field.name() {
            "status" => self.status = Some(value),
            "duration_ms" => self.duration_ms = Some(value),
            _ => {}
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if let Ok(value) = u64::try_from(value) {
            self.record_u64(field, value);
        }
    }

    /// The message: not needed, it is written from the request's context.
    fn record_debug(&mut self, _field: &Field, _value: &dyn std::fmt::Debug) {}
}

/// A field's value as the line writes it: text borrowed from the request's context, or a
/// recorded JSON value.
#[derive(Clone, Copy)]
enum FieldRef<'a> {
    Text(&'a str),
    Json(&'a Value),
}

thread_local! {
    /// The line being formatted, reused by each thread's next line.
    static LINE: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(1024));
}

const RESERVED_KEYS: [&str; 4] = ["timestamp", "level", "logger", "message"];

fn push_entry(line: &mut Vec<u8>, key: &str, value: &FieldRef<'_>) {
    push_key(line, key);
    match value {
        FieldRef::Text(text) => push_str(line, text),
        FieldRef::Json(Value::String(text)) => push_str(line, text),
        // Integers (status codes, durations, counts) written directly.
        FieldRef::Json(Value::Number(n)) if n.is_u64() || n.is_i64() => {
            let mut digits = itoa::Buffer::new();
            let text = match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => digits.format(u),
                (None, Some(i)) => digits.format(i),
                (None, None) => unreachable!("checked to be an integer"),
            };
            line.extend_from_slice(text.as_bytes());
        }
        FieldRef::Json(other) => {
            // Serializing a `Value` into a `Vec` cannot fail.
            serde_json::to_writer(&mut *line, other).expect("JSON into a Vec");
        }
    }
}

/// `"key":` — field names are identifiers, written as they are; anything else is escaped.
fn push_key(line: &mut Vec<u8>, key: &str) {
    if key.bytes().all(|b| PLAIN_KEY_BYTE[usize::from(b)]) {
        line.push(b'"');
        line.extend_from_slice(key.as_bytes());
        line.extend_from_slice(b"\":");
    } else {
        push_str(line, key);
        line.push(b':');
    }
}

/// The bytes a key may hold to be written without escaping: ASCII letters, digits, `_`, `.`
/// and `-` (one table lookup per byte instead of a chain of range checks).
static PLAIN_KEY_BYTE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || c == b'-';
        b += 1;
    }
    table
};

/// A JSON string: copied as it is when nothing in it needs escaping (the common case),
/// else through serde_json's escaping.
fn push_str(line: &mut Vec<u8>, text: &str) {
    if !needs_escape(text.as_bytes()) {
        line.push(b'"');
        line.extend_from_slice(text.as_bytes());
        line.push(b'"');
    } else {
        // Serializing a `str` into a `Vec` cannot fail.
        serde_json::to_writer(&mut *line, text).expect("JSON into a Vec");
    }
}

/// Whether `bytes` holds a control character, `"` or `\\`: eight bytes at a time (a log
/// line's strings are mostly longer than that), the tail one by one.
fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // A byte of `x` is zero ⇔ its bit 7 is set in `has_zero(x)` (no false positives once
    // bytes that are themselves ≥ 0x80 are masked out with `!x`).
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        // Bytes below 0x20: `x - 0x20` borrows into bit 7 where the byte was below 0x20
        // (bytes ≥ 0x80 excluded by `!x`).
        let control = x.wrapping_sub(ONES * 0x20) & !x & HIGH;
        let quote = has_zero(x ^ (ONES * u64::from(b'"')));
        let backslash = has_zero(x ^ (ONES * u64::from(b'\\')));
        if control | quote | backslash != 0 {
            return true;
        }
    }
    chunks
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

thread_local! {
    /// The timestamp's text up to the seconds (`2025-01-02T03:04:05`) and the second it is
    /// for: formatted once a second per thread instead of once a line.
    static SECOND: std::cell::RefCell<(i64, String)> = const {
        std::cell::RefCell::new((i64::MIN, String::new()))
    };
}

/// A log line's time: whole seconds since the epoch and the milliseconds past them, read
/// from the system clock without converting it to a calendar date (that happens once a
/// second, in [`push_timestamp`]).
#[derive(Debug, Clone, Copy)]
struct LogTime {
    secs: i64,
    millis: u32,
}

impl LogTime {
    fn now() -> Self {
        // A clock before 1970 is written as the epoch.
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        LogTime {
            secs: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
            millis: since.subsec_millis(),
        }
    }
}

impl From<chrono::DateTime<Utc>> for LogTime {
    fn from(at: chrono::DateTime<Utc>) -> Self {
        LogTime {
            secs: at.timestamp(),
            millis: at.timestamp_subsec_millis().min(999),
        }
    }
}

/// RFC 3339 UTC with milliseconds and `Z`, as `to_rfc3339_opts(Millis, true)` writes it.
fn push_timestamp(line: &mut Vec<u8>, now: LogTime) {
    SECOND.with_borrow_mut(|(cached, text)| {
        if *cached != now.secs {
            let second = chrono::DateTime::from_timestamp(now.secs, 0).unwrap_or_default();
            let full = second.to_rfc3339_opts(SecondsFormat::Secs, true);
            text.clear();
            text.push_str(full.trim_end_matches('Z'));
            *cached = now.secs;
        }
        line.extend_from_slice(text.as_bytes());
    });
    let millis = now.millis.min(999);
    line.extend_from_slice(&[
        b'.',
        b'0' + (millis / 100) as u8,
        b'0' + (millis / 10 % 10) as u8,
        b'0' + (millis % 10) as u8,
        b'Z',
    ]);
}

/// Appends ` key=<value>` to `message` when `fields` has `key` and the message has no
/// `key=` of its own (at a word boundary, so `old_debate_id=` does not count).
fn append_for_grep(message: &mut String, fields: &[(&str, FieldRef<'_>)], key: &str) {
    let Some((_, value)) = fields.iter().find(|(name, _)| *name == key) else {
        return;
    };
    // Found from each `=` back: messages have few of them, and a substring searcher's
    // set-up costs more than the search.
    let bytes = message.as_bytes();
    let already = message.match_indices('=').any(|(end, _)| {
        end >= key.len()
            && &bytes[end - key.len()..end] == key.as_bytes()
            && message[..end - key.len()]
                .chars()
                .next_back()
                .is_none_or(|c| !(c.is_alphanumeric() || c == '_'))
    });
    if already {
        return;
    }
    if !message.is_empty() {
        message.push(' ');
    }
    message.push_str(key);
    message.push('=');
    match value {
        FieldRef::Text(text) => message.push_str(text),
        FieldRef::Json(Value::String(text)) => message.push_str(text),
        FieldRef::Json(other) => message.push_str(&other.to_string()),
    }
}

/// Field name/value pairs in first-recorded order; recording a name again replaces its value
/// in place.
#[derive(Debug, Clone, Default)]
struct Fields(Vec<(&'static str, Value)>);

impl Fields {
    fn set(&mut self, name: &'static str, value: Value) {
        // `otel.name`, `otel.kind`…: instructions to the trace exporter, not log fields.
        if name.starts_with("otel.") {
            return;
        }
        match self.0.iter_mut().find(|(existing, _)| *existing == name) {
            Some((_, slot)) => *slot = value,
            None => self.0.push((name, value)),
        }
    }

    fn remove(&mut self, name: &str) -> Option<Value> {
        let at = self.0.iter().position(|(n, _)| *n == name)?;
        Some(self.0.remove(at).1)
    }
}

/// A span's recorded fields, kept in the span's extensions.
#[derive(Debug)]
struct SpanFields(Fields);

/// Records tracing field values as JSON values, keeping numbers and booleans typed.
struct FieldVisitor<'a>(&'a mut Fields);

impl Visit for FieldVisitor<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        let json = serde_json::Number::from_f64(value)
            .map_or_else(|| Value::String(value.to_string()), Value::Number);
        self.0.set(field.name(), json);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.set(field.name(), Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.set(field.name(), Value::from(value));
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        let json = if let Ok(small) = i64::try_from(value) {
            Value::from(small)
        } else if let Ok(unsigned) = u64::try_from(value) {
            Value::from(unsigned)
        } else {
            Value::String(value.to_string())
        };
        self.0.set(field.name(), json);
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        let json =
            u64::try_from(value).map_or_else(|_| Value::String(value.to_string()), Value::from);
        self.0.set(field.name(), json);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.set(field.name(), Value::Bool(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.set(field.name(), Value::from(value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.set(field.name(), Value::String(value.to_string()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .set(field.name(), Value::String(format!("{value:?}")));
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock()
}

/// How long a log line may wait in its sink's buffer before it is written out.
pub const FLUSH_EVERY: Duration = Duration::from_millis(5);
/// Buffered bytes past which the thread that logs writes its sink's lines out itself, so a
/// burst never grows the buffer without bound.
const FLUSH_AT: usize = 256 * 1024;

/// A sink that buffers whole lines and writes them out in batches: every [`FLUSH_EVERY`] by
/// one flusher thread for the whole process, at once when [`FLUSH_AT`] bytes are waiting, and
/// on [`flush`] (process exit, panics). Logging a line costs a copy into memory instead of a
/// `write` system call: at tens of thousands of requests a second, the call per line was a
/// large part of the request path's CPU. Lines stay whole and in order: a batch is written
/// by one thread at a time, with one `write_all`.
pub struct Batched<W: Write> {
    pending: Mutex<Vec<u8>>,
    /// The destination and the buffer last written (reused).
    out: Mutex<(W, Vec<u8>)>,
}

impl<W: Write + Send + 'static> Batched<W> {
    /// A sink writing to `out`, flushed by the process's flusher thread.
    pub fn new(out: W) -> Arc<Self> {
        let sink = Arc::new(Batched {
            pending: Mutex::new(Vec::new()),
            out: Mutex::new((out, Vec::new())),
        });
        let weak: Weak<dyn Flush> = Arc::downgrade(&(sink.clone() as Arc<dyn Flush>));
        let registry = sinks();
        lock(&registry.list).push(weak);
        registry.start_flusher();
        sink
    }

    fn push(&self, line: &[u8]) {
        let mut pending = lock(&self.pending);
        pending.extend_from_slice(line);
        if pending.len() >= FLUSH_AT {
            drop(pending);
            self.write_out();
        }
    }

    fn write_out(&self) {
        let mut out = lock(&self.out);
        let (writer, batch) = &mut *out;
        {
            let mut pending = lock(&self.pending);
            if pending.is_empty() {
                return;
            }
            std::mem::swap(&mut *pending, batch);
        }
        // A failed write cannot be logged anywhere, so it is dropped.
        let _ = writer.write_all(batch);
        let _ = writer.flush();
        batch.clear();
        if batch.capacity() > 4 * FLUSH_AT {
            batch.shrink_to(FLUSH_AT);
        }
    }
}

impl<W: Write> Drop for Batched<W> {
    /// A sink dropped (a subscriber replaced, a test's layer) writes out what it holds.
    fn drop(&mut self) {
        let pending = std::mem::take(self.pending.get_mut());
        if !pending.is_empty() {
            let (writer, _) = self.out.get_mut();
            let _ = writer.write_all(&pending);
            let _ = writer.flush();
        }
    }
}

trait Flush: Send + Sync {
    fn flush_now(&self);
}

impl<W: Write + Send + 'static> Flush for Batched<W> {
    fn flush_now(&self) {
        self.write_out();
    }
}

struct Sinks {
    list: Mutex<Vec<Weak<dyn Flush>>>,
    flusher: std::sync::Once,
}

impl Sinks {
    fn start_flusher(&'static self) {
        self.flusher.call_once(|| {
            let spawned = std::thread::Builder::new()
                .name("log-flush".into())
                .spawn(|| {
                    loop {
                        std::thread::sleep(FLUSH_EVERY);
                        flush();
                    }
                });
            if spawned.is_err() {
                // No thread: lines are written when the buffer fills and on `flush`.
                eprintln!("aragora: cannot start the log flusher thread");
            }
        });
    }
}

fn sinks() -> &'static Sinks {
    static SINKS: std::sync::OnceLock<Sinks> = std::sync::OnceLock::new();
    SINKS.get_or_init(|| Sinks {
        list: Mutex::new(Vec::new()),
        flusher: std::sync::Once::new(),
    })
}

/// Write out every buffered log line now (before the process exits, from the panic hook, and
/// in tests before reading a log file).
pub fn flush() {
    let live: Vec<Arc<dyn Flush>> = {
        let mut list = lock(&sinks().list);
        list.retain(|w| w.strong_count() > 0);
        list.iter().filter_map(Weak::upgrade).collect()
    };
    for sink in live {
        sink.flush_now();
    }
}

/// A writer appending one line to a [`Batched`] sink.
pub struct BatchedWriter<'a, W: Write>(&'a Batched<W>);

impl<W: Write + Send + 'static> Write for BatchedWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.push(buf);
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.push(buf);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The stdout sink, batched.
#[derive(Clone)]
pub struct StdoutWriter(Arc<Batched<io::Stdout>>);

impl<'a> MakeWriter<'a> for StdoutWriter {
    type Writer = BatchedWriter<'a, io::Stdout>;

    fn make_writer(&'a self) -> Self::Writer {
        BatchedWriter(&self.0)
    }
}

/// The file sink: four append-mode files in one directory, chosen by target
/// ([`file_for_target`]), each a [`Batched`] sink, so a line is never interleaved with
/// another from this process; `O_APPEND` keeps whole lines from other processes apart and
/// lets `copytruncate` rotation work.
pub struct DirWriter {
    websocket: Arc<Batched<File>>,
    debate: Arc<Batched<File>>,
    agent: Arc<Batched<File>>,
    api: Arc<Batched<File>>,
}

impl std::fmt::Debug for DirWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DirWriter")
    }
}

impl DirWriter {
    /// Creates `dir` if needed and opens (creating or appending to) the four log files.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create log directory {}", dir.display()))?;
        let open = |name: &str| -> anyhow::Result<Arc<Batched<File>>> {
            let path = dir.join(name);
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("cannot open log file {}", path.display()))?;
            Ok(Batched::new(file))
        };
        Ok(Self {
            websocket: open(WEBSOCKET_LOG)?,
            debate: open(DEBATE_LOG)?,
            agent: open(AGENT_LOG)?,
            api: open(API_LOG)?,
        })
    }

    fn file_for(&self, target: &str) -> &Batched<File> {
        match file_for_target(target) {
            WEBSOCKET_LOG => &self.websocket,
            DEBATE_LOG => &self.debate,
            AGENT_LOG => &self.agent,
            _ => &self.api,
        }
    }
}

impl<'a> MakeWriter<'a> for DirWriter {
    type Writer = BatchedWriter<'a, File>;

    fn make_writer(&'a self) -> Self::Writer {
        BatchedWriter(&self.api)
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        BatchedWriter(self.file_for(meta.target()))
    }
}

/// A writer holding a sink's lock for as long as it lives (one log line).
#[derive(Debug)]
pub struct LockedWriter<'a, T>(MutexGuard<'a, T>);

impl<T: Write> Write for LockedWriter<'_, T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// An in-memory sink for tests: clones share one buffer.
#[derive(Debug, Clone, Default)]
pub struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

impl SharedBuffer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Everything written so far, as text.
    pub fn contents(&self) -> String {
        String::from_utf8_lossy(&lock(&self.0)).into_owned()
    }

    /// The lines written so far, without their newlines.
    pub fn lines(&self) -> Vec<String> {
        self.contents().lines().map(str::to_owned).collect()
    }
}

impl<'a> MakeWriter<'a> for SharedBuffer {
    type Writer = LockedWriter<'a, Vec<u8>>;

    fn make_writer(&'a self) -> Self::Writer {
        LockedWriter(lock(&self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Barrier;

    use serde_json::json;
    use tracing::{debug, error, info, info_span, trace, warn};
    use tracing_subscriber::Registry;

    fn subscriber(buf: &SharedBuffer) -> impl Subscriber + Send + Sync + use<> {
        tracing_subscriber::registry().with(JsonLogLayer::with_writer(buf.clone()))
    }

    /// Runs `f` under a fresh subscriber and returns the raw lines it logged.
    fn capture_raw(f: impl FnOnce()) -> Vec<String> {
        let buf = SharedBuffer::new();
        tracing::subscriber::with_default(subscriber(&buf), f);
        let contents = buf.contents();
        assert!(
            contents.is_empty() || contents.ends_with('\n'),
            "{contents:?}"
        );
        buf.lines()
    }

    fn capture(f: impl FnOnce()) -> Vec<Value> {
        capture_raw(f)
            .iter()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect()
    }

    fn read_lines(path: &Path) -> Vec<Value> {
        flush();
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    /// A request's lines carry its fields from the request context, with no span: first
    /// in the line, a span inside the request adding to them, the debate once named.
    #[test]
    fn request_lines_carry_the_request_context_without_a_span() {
        use crate::telemetry::correlation::{self, RequestContext};
        let context = RequestContext::new(
            "corr-ctx-1".into(),
            axum::http::Method::DELETE,
            Some(std::sync::Arc::from("/api/debates/{id}")),
        );
        let raw = capture_raw(|| {
            correlation::sync_scope(context, || {
                info!(target: "aragora::http", status = 200u64, "before the debate is named");
                correlation::record_debate_id("d-ctx");
                let turn = info_span!("turn", agent = "claude");
                let _turn = turn.enter();
                warn!(target: "aragora::http", "inside a span");
            });
            info!(target: "aragora::http", "after the request");
        });
        assert_eq!(raw.len(), 3, "{raw:?}");
        assert!(
            raw[0].contains(r#""message":"before the debate is named","correlation_id":"corr-ctx-1","method":"DELETE","route":"/api/debates/{id}","status":200}"#),
            "{}",
            raw[0]
        );
        let inside: Value = serde_json::from_str(&raw[1]).unwrap();
        assert_eq!(inside["correlation_id"], "corr-ctx-1");
        assert_eq!(inside["debate_id"], "d-ctx");
        assert_eq!(inside["agent"], "claude");
        assert_eq!(inside["message"], "inside a span debate_id=d-ctx");
        let after: Value = serde_json::from_str(&raw[2]).unwrap();
        assert!(after.get("correlation_id").is_none(), "{after}");
        assert!(after.get("route").is_none(), "{after}");
    }

    /// The request line as the general path writes it: the same event without the name
    /// the JSON layer knows it by.
    fn unnamed_request_line(request: &RequestContext, status: u16, duration_ms: u64) {
        let message = RequestMessage {
            method: request.method(),
            route: request.route(),
            status,
            duration_ms,
        };
        if status >= 500 {
            warn!(target: "aragora::http", message = %message, status, duration_ms);
        } else {
            info!(target: "aragora::http", message = %message, status, duration_ms);
        }
    }

    /// The request line written from the request's context is the line the general path
    /// gives, byte for byte after the timestamp: with and without a debate, with text that
    /// needs escaping, at INFO and at WARN; and it goes to `api.log` in a log directory.
    #[test]
    fn the_request_line_from_its_context_is_the_general_one() {
        use crate::telemetry::correlation;
        let cases = [
            ("GET", Some("/api/health/live"), None, 200),
            ("DELETE", Some("/api/debates/{id}"), Some("d-1"), 404),
            ("POST", None, Some("we\"ird\\id\u{1}"), 201),
            ("GET", Some("/api/debates"), None, 503),
        ];
        for (method, route, debate, status) in cases {
            let context = RequestContext::new(
                "corr-0123456789ab".into(),
                method.parse().unwrap(),
                route.map(std::sync::Arc::from),
            );
            let raw = capture_raw(|| {
                correlation::sync_scope(context.clone(), || {
                    if let Some(id) = debate {
                        correlation::record_debate_id(id);
                    }
                    unnamed_request_line(&context, status, 7);
                    request_line(&context, status, 7);
                });
            });
            assert_eq!(raw.len(), 2, "{raw:?}");
            // `{"timestamp":"2026-01-02T03:04:05.678Z"` is 39 bytes.
            assert_eq!(raw[0][39..], raw[1][39..], "{method} {route:?} {debate:?}");
            let line: Value = serde_json::from_str(&raw[1]).unwrap();
            assert_eq!(line["status"], status);
            assert_eq!(line["duration_ms"], 7);
            assert_eq!(line["debate_id"].as_str(), debate);
            assert_eq!(line["level"], if status >= 500 { "WARN" } else { "INFO" });
        }

        let tmp = tempfile::tempdir().unwrap();
        let context = RequestContext::new("corr-dir".into(), axum::http::Method::GET, None);
        let subscriber = tracing_subscriber::registry().with(layer_for_dir(tmp.path()).unwrap());
        tracing::subscriber::with_default(subscriber, || {
            correlation::sync_scope(context.clone(), || request_line(&context, 200, 3));
        });
        let api = read_lines(&tmp.path().join(API_LOG));
        assert_eq!(api.len(), 1);
        assert_eq!(
            api[0]["message"],
            "request GET unmatched status=200 duration_ms=3"
        );
        assert_eq!(api[0]["correlation_id"], "corr-dir");
    }

    /// The request line is still an event for every layer: filtered out with the rest, seen
    /// by the recent-errors buffer at WARN, and with a span in scope written by the general
    /// path with the span's fields.
    #[test]
    fn the_request_line_is_an_event_like_any_other() {
        use crate::telemetry::correlation;
        use crate::telemetry::errors::{ErrorLayer, ErrorLog};
        let context = RequestContext::new(
            "corr-1".into(),
            axum::http::Method::GET,
            Some(std::sync::Arc::from("/api/x")),
        );
        let lines = capture(|| {
            correlation::sync_scope(context.clone(), || {
                let span = info_span!("outer", agent = "a");
                let _entered = span.enter();
                request_line(&context, 200, 2);
            });
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0]["agent"], "a");
        assert_eq!(lines[0]["correlation_id"], "corr-1");
        assert_eq!(
            lines[0]["message"],
            "request GET /api/x status=200 duration_ms=2"
        );

        let buf = SharedBuffer::new();
        let errors: &'static ErrorLog = Box::leak(Box::new(ErrorLog::new(10)));
        let quiet = tracing_subscriber::registry()
            .with(parse_filter("warn").unwrap())
            .with(JsonLogLayer::with_writer(buf.clone()))
            .with(ErrorLayer::new(errors));
        tracing::subscriber::with_default(quiet, || {
            correlation::sync_scope(context.clone(), || {
                request_line(&context, 200, 1);
                request_line(&context, 502, 1);
            });
        });
        let written = buf.lines();
        assert_eq!(written.len(), 1, "{written:?}");
        assert!(written[0].contains(r#""status":502"#), "{}", written[0]);
        let recent = errors.recent(10);
        assert_eq!(recent.len(), 1, "{recent:?}");
        assert!(
            recent[0]
                .message
                .starts_with("request GET /api/x status=502 duration_ms=1"),
            "{recent:?}"
        );
        assert_eq!(recent[0].correlation_id.as_deref(), Some("corr-1"));
    }

    /// The word-at-a-time check agrees with the byte-by-byte one: every byte value at every
    /// position of strings long enough to have whole words and a tail.
    #[test]
    fn the_escape_check_finds_every_byte_that_needs_escaping() {
        let naive = |b: &[u8]| b.iter().any(|&c| c < 0x20 || c == b'"' || c == b'\\');
        for len in [1, 7, 8, 9, 16, 17, 23] {
            for at in 0..len {
                for byte in 0..=255u8 {
                    for fill in [b'a', 0x7f, 0x80, 0xff, 0x21, 0x5d] {
                        let mut text = vec![fill; len];
                        text[at] = byte;
                        assert_eq!(
                            needs_escape(&text),
                            naive(&text),
                            "len {len}, byte {byte:#x} at {at}, fill {fill:#x}"
                        );
                    }
                }
            }
        }
        assert!(!needs_escape(b""));
        assert!(!needs_escape(
            "request GET /api/health/live status=200 – ok".as_bytes()
        ));
    }

    #[test]
    fn span_fields_appear_root_first_and_inner_spans_override() {
        let raw = capture_raw(|| {
            let outer = info_span!(
                "request",
                correlation_id = "c-42",
                agent = "outer",
                method = "POST",
                route = tracing::field::Empty
            );
            let _outer = outer.enter();
            outer.record("route", "/api/debates");
            let inner = info_span!("turn", agent = "claude", debate_id = "abc123");
            let _inner = inner.enter();
            info!(target: "aragora::debate", status = 201, "turn finished");
        });
        assert_eq!(raw.len(), 1);
        let line: Value = serde_json::from_str(&raw[0]).unwrap();
        assert_eq!(line["correlation_id"], "c-42");
        assert_eq!(line["agent"], "claude", "inner span overrides outer");
        assert_eq!(line["method"], "POST");
        assert_eq!(line["route"], "/api/debates", "recorded after creation");
        assert_eq!(line["debate_id"], "abc123");
        assert_eq!(line["status"], 201);
        // Fixed keys first, then root span fields, inner span fields, event fields.
        let order = [
            "\"timestamp\"",
            "\"level\"",
            "\"logger\"",
            "\"message\"",
            "\"correlation_id\"",
            "\"agent\"",
            "\"method\"",
            "\"route\"",
            "\"debate_id\"",
            "\"status\"",
        ];
        let positions: Vec<usize> = order.iter().map(|k| raw[0].find(k).unwrap()).collect();
        assert!(positions.is_sorted(), "{}", raw[0]);
        assert_eq!(raw[0].matches("\"agent\"").count(), 1);
    }

    #[test]
    fn event_fields_override_span_fields_and_spans_end_cleanly() {
        let lines = capture(|| {
            let span = info_span!("request", status = "pending", agent = "a");
            span.in_scope(|| warn!(status = 503, "upstream failed"));
            info!("outside any span");
        });
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["status"], 503);
        assert_eq!(lines[0]["agent"], "a");
        assert_eq!(lines[1].get("agent"), None, "span fields do not leak");
        assert_eq!(lines[1]["message"], "outside any span");
    }

    #[test]
    fn timestamps_and_strings_are_written_as_chrono_and_serde_json_write_them() {
        let base = chrono::DateTime::parse_from_rfc3339("2025-12-31T23:59:58.000Z")
            .unwrap()
            .with_timezone(&Utc);
        // Within one second, across a second, a minute, a year; every millisecond digit.
        for ms in [
            0, 1, 9, 10, 99, 100, 999, 1000, 1001, 1999, 2000, 2345, 61_789,
        ] {
            let at = base + chrono::Duration::milliseconds(ms);
            let mut line = Vec::new();
            push_timestamp(&mut line, at.into());
            assert_eq!(
                String::from_utf8(line).unwrap(),
                at.to_rfc3339_opts(SecondsFormat::Millis, true),
                "{ms}"
            );
        }
        for text in [
            "plain",
            "",
            "quote \" and backslash \\",
            "tab\tnewline\ncontrol\u{1}",
            "unicode é 漢字 \u{7f}",
        ] {
            let mut line = Vec::new();
            push_str(&mut line, text);
            assert_eq!(line, serde_json::to_vec(text).unwrap(), "{text:?}");
        }
        let mut line = Vec::new();
        push_key(&mut line, "weird key\"");
        assert_eq!(line, b"\"weird key\\\"\":");
    }

    #[test]
    fn level_logger_and_timestamp_format() {
        let raw = capture_raw(|| {
            trace!(target: "aragora::http", "t");
            debug!(target: "aragora::http", "d");
            info!(target: "aragora::ws::conn", "i");
            warn!(target: "aragora::debate::engine", "w");
            error!(target: "aragora::agents::openai", "e");
        });
        let lines: Vec<Value> = raw
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let levels: Vec<&str> = lines.iter().map(|l| l["level"].as_str().unwrap()).collect();
        assert_eq!(levels, ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"]);
        let loggers: Vec<&str> = lines
            .iter()
            .map(|l| l["logger"].as_str().unwrap())
            .collect();
        assert_eq!(
            loggers,
            [
                "aragora::http",
                "aragora::http",
                "aragora::ws::conn",
                "aragora::debate::engine",
                "aragora::agents::openai"
            ]
        );
        let messages: Vec<&str> = lines
            .iter()
            .map(|l| l["message"].as_str().unwrap())
            .collect();
        assert_eq!(messages, ["t", "d", "i", "w", "e"]);
        for (line, text) in lines.iter().zip(&raw) {
            assert!(text.starts_with("{\"timestamp\":\""), "{text}");
            let ts = line["timestamp"].as_str().unwrap();
            // e.g. 2025-01-02T03:04:05.678Z
            assert_eq!(ts.len(), 24, "{ts}");
            assert!(ts.ends_with('Z'), "{ts}");
            assert_eq!(&ts[19..20], ".", "{ts}");
            assert!(ts[20..23].bytes().all(|b| b.is_ascii_digit()), "{ts}");
            let parsed = chrono::DateTime::parse_from_rfc3339(ts).unwrap();
            assert_eq!(parsed.offset().local_minus_utc(), 0);
            let age = Utc::now() - parsed.with_timezone(&Utc);
            assert!(age.num_seconds().abs() < 60, "{ts}");
        }
        // Default target is the module path.
        let lines = capture(|| info!("x"));
        assert_eq!(lines[0]["logger"], module_path!());
    }

    #[test]
    fn debate_id_and_duration_ms_are_appended_to_the_message_once() {
        let raw = capture_raw(|| {
            let span = info_span!("debate", debate_id = "abc123");
            let _g = span.enter();
            info!(duration_ms = 5234_u64, "round complete");
            info!(
                duration_ms = 12,
                "already has debate_id=abc123 and duration_ms=12"
            );
            info!("plain");
            info!(old_debate_id = 1, "saw old_debate_id=1");
        });
        let lines: Vec<Value> = raw
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            lines[0]["message"],
            "round complete debate_id=abc123 duration_ms=5234"
        );
        assert_eq!(lines[0]["duration_ms"], 5234);
        assert_eq!(
            lines[1]["message"],
            "already has debate_id=abc123 and duration_ms=12"
        );
        assert_eq!(lines[2]["message"], "plain debate_id=abc123");
        assert_eq!(lines[3]["message"], "saw old_debate_id=1 debate_id=abc123");
        for line in &raw {
            assert!(line.contains("debate_id=abc123"), "{line}");
        }
        // What an operator's grep sees.
        let slow: Vec<&String> = raw
            .iter()
            .filter(|l| {
                l.match_indices("duration_ms=").any(|(at, n)| {
                    let digits: String = l[at + n.len()..]
                        .chars()
                        .take_while(char::is_ascii_digit)
                        .collect();
                    digits.len() == 4 && (b'5'..=b'9').contains(&digits.as_bytes()[0])
                })
            })
            .collect();
        assert_eq!(slow, [&raw[0]]);
        assert_eq!(raw[0].matches("debate_id=abc123").count(), 1);
        assert_eq!(raw[1].matches("duration_ms=12").count(), 1);

        // Field without a message: no leading space.
        let lines = capture(|| info!(debate_id = "d-1"));
        assert_eq!(lines[0]["message"], "debate_id=d-1");
    }

    #[test]
    fn field_types_are_preserved() {
        #[derive(Debug)]
        struct Opaque {
            _n: u8,
        }
        let lines = capture(|| {
            info!(
                count = -3_i64,
                big = u64::MAX,
                huge = u128::MAX,
                ratio = 0.25_f64,
                nan = f64::NAN,
                ok = true,
                name = "gpt",
                shown = %"display",
                opaque = ?Opaque { _n: 7 },
                "types"
            );
        });
        let line = &lines[0];
        assert_eq!(line["count"], json!(-3));
        assert_eq!(line["big"], json!(u64::MAX));
        assert_eq!(line["huge"], json!(u128::MAX.to_string()));
        assert_eq!(line["ratio"], json!(0.25));
        assert_eq!(line["nan"], json!("NaN"));
        assert_eq!(line["ok"], json!(true));
        assert_eq!(line["name"], json!("gpt"));
        assert_eq!(line["shown"], json!("display"));
        assert_eq!(line["opaque"], json!("Opaque { _n: 7 }"));
        assert!(line["count"].is_i64() && line["big"].is_u64() && line["ratio"].is_f64());
    }

    #[test]
    fn special_characters_stay_on_one_line_and_reserved_names_do_not_collide() {
        let raw = capture_raw(|| {
            let span = info_span!("s", level = "span-level");
            let _g = span.enter();
            info!(note = "quote \" newline \n tab \t", "multi\nline \"msg\"");
        });
        assert_eq!(raw.len(), 1);
        let line: Value = serde_json::from_str(&raw[0]).unwrap();
        assert_eq!(line["message"], "multi\nline \"msg\"");
        assert_eq!(line["note"], "quote \" newline \n tab \t");
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["field_level"], "span-level");
        assert_eq!(raw[0].matches("\"level\"").count(), 1);
    }

    #[test]
    fn dir_layer_splits_lines_into_four_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("nested/logs");
        // Existing content is kept (append mode).
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("api.log"), "{\"previous\":true}\n").unwrap();

        let layer = layer_for_dir(&dir).unwrap();
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
            info!(target: "aragora::ws::conn", "ws line");
            info!(target: "aragora::debate::engine", debate_id = "d1", "debate line");
            info!(target: "aragora::agents::openai", agent = "gpt", "agent line");
            info!(target: "aragora::http", status = 200, "api line");
            info!(target: "aragora::wsx", "not websocket");
            info!(target: "aragora::debate", "debate root");
        });

        let expect = [
            ("websocket.log", vec!["ws line"]),
            (
                "debate.log",
                vec!["debate line debate_id=d1", "debate root"],
            ),
            ("agent.log", vec!["agent line"]),
            ("api.log", vec!["api line", "not websocket"]),
        ];
        for (file, messages) in expect {
            let lines = read_lines(&dir.join(file));
            let lines: Vec<&Value> = lines
                .iter()
                .filter(|l| l.get("previous").is_none())
                .collect();
            let got: Vec<&str> = lines
                .iter()
                .map(|l| l["message"].as_str().unwrap())
                .collect();
            assert_eq!(got, messages, "{file}");
        }
        let api = read_lines(&dir.join("api.log"));
        assert_eq!(api[0], json!({"previous": true}));
        assert_eq!(api[1]["logger"], "aragora::http");
        assert_eq!(api[1]["status"], 200);
        let names: Vec<String> = {
            let mut n: Vec<String> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            n.sort();
            n
        };
        assert_eq!(
            names,
            ["agent.log", "api.log", "debate.log", "websocket.log"]
        );
    }

    #[test]
    fn file_routing_respects_module_boundaries() {
        assert_eq!(file_for_target("aragora::ws"), "websocket.log");
        assert_eq!(file_for_target("aragora::ws::conn"), "websocket.log");
        assert_eq!(file_for_target("aragora::wsx"), "api.log");
        assert_eq!(file_for_target("aragora::debate::engine"), "debate.log");
        assert_eq!(file_for_target("aragora::agents::openai"), "agent.log");
        assert_eq!(file_for_target("aragora::agent"), "api.log");
        assert_eq!(file_for_target("tower_http::trace"), "api.log");
    }

    #[test]
    fn concurrent_writers_never_interleave_lines() {
        let tmp = tempfile::tempdir().unwrap();
        let layer = layer_for_dir(tmp.path()).unwrap();
        let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(layer));
        const THREADS: usize = 8;
        const PER_THREAD: usize = 200;
        let barrier = Arc::new(Barrier::new(THREADS));
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let dispatch = dispatch.clone();
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    tracing::dispatcher::with_default(&dispatch, || {
                        barrier.wait();
                        for i in 0..PER_THREAD {
                            info!(target: "aragora::http", thread = t, i, pad = "x".repeat(500), "line");
                        }
                    });
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
        let lines = read_lines(&tmp.path().join("api.log"));
        assert_eq!(lines.len(), THREADS * PER_THREAD);
        for t in 0..THREADS {
            let count = lines.iter().filter(|l| l["thread"] == t).count();
            assert_eq!(count, PER_THREAD);
        }
    }

    #[test]
    fn copytruncate_rotation_keeps_writing_from_the_start() {
        let tmp = tempfile::tempdir().unwrap();
        let layer = layer_for_dir(tmp.path()).unwrap();
        let api = tmp.path().join("api.log");
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
            info!(target: "aragora::http", "before rotation");
            flush();
            // What logrotate's copytruncate does to the live file.
            OpenOptions::new()
                .write(true)
                .open(&api)
                .unwrap()
                .set_len(0)
                .unwrap();
            info!(target: "aragora::http", "after rotation");
        });
        flush();
        let text = std::fs::read_to_string(&api).unwrap();
        assert!(text.starts_with('{'), "no hole of NULs: {text:?}");
        let lines = read_lines(&api);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["message"], "after rotation");
    }

    #[test]
    fn invalid_filter_is_an_error_naming_the_value() {
        let settings = LogSettings {
            dir: None,
            filter: "info,sqlx=loudest".to_owned(),
            tracer: None,
            sentry: false,
        };
        let err = init(&settings).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("info,sqlx=loudest"), "{text}");
        assert!(parse_filter(DEFAULT_FILTER).is_ok());
        assert!(parse_filter("aragora::http=debug,warn").is_ok());
    }

    #[test]
    fn init_installs_the_global_subscriber_once() {
        // The only test that installs a global subscriber (others use scoped ones).
        let tmp = tempfile::tempdir().unwrap();
        let settings = LogSettings {
            dir: Some(tmp.path().join("logs")),
            filter: "info,aragora::quiet=warn".to_owned(),
            tracer: None,
            sentry: false,
        };
        init(&settings).unwrap();
        // A fresh thread has no scoped subscriber, so it uses the global one.
        std::thread::spawn(|| {
            info!(target: "aragora::debate::engine", debate_id = "g1", "global");
            info!(target: "aragora::quiet", "filtered out");
            debug!(target: "aragora::debate::engine", "below info");
        })
        .join()
        .unwrap();
        let lines = read_lines(&tmp.path().join("logs/debate.log"));
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0]["message"], "global debate_id=g1");
        assert!(read_lines(&tmp.path().join("logs/api.log")).is_empty());

        let err = init(&LogSettings::default()).unwrap_err();
        assert!(format!("{err:#}").contains("already"), "{err:#}");
    }

    #[test]
    fn mask_hides_secrets() {
        assert_eq!(mask("sk-abcdefghijklmnop"), "sk-a…***");
        assert_eq!(mask("sk-abcdefghijklmnopqrstuvwxyz0123456789"), "sk-a…***");
        assert_eq!(mask("123456789"), "1234…***");
        assert_eq!(mask("12345678"), "***");
        assert_eq!(mask(""), "***");
        assert_eq!(mask("ключ-секретный"), "ключ…***");
    }

    #[test]
    fn two_layers_on_one_registry_share_span_fields() {
        let a = SharedBuffer::new();
        let b = SharedBuffer::new();
        let subscriber = Registry::default()
            .with(JsonLogLayer::with_writer(a.clone()))
            .with(JsonLogLayer::with_writer(b.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let span = info_span!("s", correlation_id = "c");
            span.in_scope(|| info!("x"));
        });
        for buf in [a, b] {
            let lines = buf.lines();
            assert_eq!(lines.len(), 1);
            let line: Value = serde_json::from_str(&lines[0]).unwrap();
            assert_eq!(line["correlation_id"], "c");
        }
    }
}
