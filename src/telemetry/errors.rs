//! Recent warnings and errors, for `GET /api/system/errors`: a tracing layer that keeps the
//! last [`CAPACITY`] WARN/ERROR events in a bounded ring buffer (oldest dropped first), each
//! with the `correlation_id` and `debate_id` of the event, of its enclosing spans or of the
//! request being served (`correlation::RequestContext`, outermost).
//!
//! The same layer records those two ids on every span ([`SpanIds`]), so the Sentry hook can
//! tag an error or a panic with the ids of the request and span it happened in.

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::OnceLock;

use chrono::{SecondsFormat, Utc};
use serde::Serialize;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::{LookupSpan, Registry};

/// How many recent warnings/errors the process keeps.
pub const CAPACITY: usize = 500;

/// One captured WARN or ERROR event.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RecentError {
    /// RFC 3339 UTC, milliseconds.
    pub time: String,
    /// `WARN` or `ERROR`.
    pub level: &'static str,
    /// The event's target (module path).
    pub logger: String,
    /// The message, followed by the event's own fields as `key=value`.
    pub message: String,
    pub correlation_id: Option<String>,
    pub debate_id: Option<String>,
}

/// A bounded ring buffer of recent errors.
#[derive(Debug)]
pub struct ErrorLog {
    capacity: usize,
    entries: Mutex<VecDeque<RecentError>>,
}

impl ErrorLog {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            entries: Mutex::new(VecDeque::with_capacity(capacity.min(64))),
        }
    }

    pub fn push(&self, entry: RecentError) {
        let mut entries = self.entries.lock();
        while entries.len() >= self.capacity {
            entries.pop_front();
        }
        entries.push_back(entry);
    }

    /// The newest `limit` entries, newest first.
    pub fn recent(&self, limit: usize) -> Vec<RecentError> {
        let entries = self.entries.lock();
        entries.iter().rev().take(limit).cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.entries.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// The process-wide buffer that the installed layer fills.
pub fn global() -> &'static ErrorLog {
    static LOG: OnceLock<ErrorLog> = OnceLock::new();
    LOG.get_or_init(|| ErrorLog::new(CAPACITY))
}

/// `correlation_id` / `debate_id` recorded on a span (kept in its extensions).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpanIds {
    pub correlation_id: Option<String>,
    pub debate_id: Option<String>,
}

impl SpanIds {
    /// Inner values win; empty strings count as absent.
    fn merge(&mut self, inner: &SpanIds) {
        if inner.correlation_id.is_some() {
            self.correlation_id.clone_from(&inner.correlation_id);
        }
        if inner.debate_id.is_some() {
            self.debate_id.clone_from(&inner.debate_id);
        }
    }
}

impl Visit for SpanIds {
    fn record_str(&mut self, field: &Field, value: &str) {
        let value = (!value.is_empty()).then(|| value.to_owned());
        match field.name() {
            "correlation_id" => self.correlation_id = value,
            "debate_id" => self.debate_id = value,
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if matches!(field.name(), "correlation_id" | "debate_id") {
            // `%id` arrives here as Display-through-Debug: no quotes.
            self.record_str(field, &format!("{value:?}"));
        }
    }
}

/// The ids of the request being served on this task (see `correlation`), if any.
fn request_ids() -> SpanIds {
    super::correlation::with_request(|request| match request {
        Some(request) => SpanIds {
            correlation_id: Some(request.id().to_owned()),
            debate_id: request.debate_id().map(str::to_owned),
        },
        None => SpanIds::default(),
    })
}

/// The ids of the request being served, then of the current span and its parents on this
/// thread (with the process-wide subscriber), e.g. for tagging a Sentry event or panic.
pub fn current_span_ids() -> SpanIds {
    let mut ids = request_ids();
    tracing::Span::current().with_subscriber(|(id, dispatch)| {
        if let Some(registry) = dispatch.downcast_ref::<Registry>()
            && let Some(span) = registry.span(id)
        {
            for span in span.scope().from_root() {
                if let Some(span_ids) = span.extensions().get::<SpanIds>() {
                    ids.merge(span_ids);
                }
            }
        }
    });
    ids
}

/// The layer filling [`global`] (or another buffer in tests).
pub struct ErrorLayer {
    log: &'static ErrorLog,
}

impl ErrorLayer {
    pub fn new(log: &'static ErrorLog) -> Self {
        Self { log }
    }
}

/// Event fields: the message and the rest as `key=value`, plus the two ids.
#[derive(Default)]
struct EventText {
    message: String,
    rest: String,
    ids: SpanIds,
}

impl Visit for EventText {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_owned(),
            "correlation_id" | "debate_id" => self.ids.record_str(field, value),
            name if name.starts_with("log.") => {}
            name => {
                let _ = write!(self.rest, " {name}={value}");
            }
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }
}

impl<S> Layer<S> for ErrorLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut ids = SpanIds::default();
        attrs.record(&mut ids);
        // Fields recorded later (`debate_id` on a request span) need the entry; a span
        // whose fields cannot hold either id does not.
        let fields = attrs.metadata().fields();
        if ids.correlation_id.is_some()
            || ids.debate_id.is_some()
            || fields.field("correlation_id").is_some()
            || fields.field("debate_id").is_some()
        {
            span.extensions_mut().insert(ids);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        if let Some(ids) = extensions.get_mut::<SpanIds>() {
            values.record(ids);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let level = *event.metadata().level();
        if level > Level::WARN {
            return;
        }
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        let mut text = EventText::default();
        event.record(&mut text);
        let mut ids = request_ids();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(span_ids) = span.extensions().get::<SpanIds>() {
                    ids.merge(span_ids);
                }
            }
        }
        ids.merge(&text.ids);
        self.log.push(RecentError {
            time: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
            level: if level == Level::ERROR {
                "ERROR"
            } else {
                "WARN"
            },
            logger: meta.target().to_owned(),
            message: format!("{}{}", text.message, text.rest).trim().to_owned(),
            correlation_id: ids.correlation_id,
            debate_id: ids.debate_id,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    fn leaked(capacity: usize) -> &'static ErrorLog {
        Box::leak(Box::new(ErrorLog::new(capacity)))
    }

    #[test]
    fn keeps_warnings_and_errors_with_span_ids_newest_first() {
        let log = leaked(10);
        let subscriber = Registry::default().with(ErrorLayer::new(log));
        tracing::subscriber::with_default(subscriber, || {
            let request = tracing::info_span!("request", correlation_id = %"corr-aaaaaaaaaaaa", debate_id = tracing::field::Empty);
            let _r = request.enter();
            tracing::info!("not kept");
            tracing::warn!(status = 503, "slow");
            request.record("debate_id", "d-1");
            let debate = tracing::info_span!("debate", debate_id = "d-2");
            debate.in_scope(|| tracing::error!(error = %"disk full", "write failed"));
            tracing::error!(debate_id = "d-3", "event field wins");
        });
        let recent = log.recent(10);
        assert_eq!(recent.len(), 3);
        assert_eq!(recent[0].message, "event field wins");
        assert_eq!(recent[0].debate_id.as_deref(), Some("d-3"));
        assert_eq!(recent[1].message, "write failed error=disk full");
        assert_eq!(recent[1].level, "ERROR");
        assert_eq!(recent[1].debate_id.as_deref(), Some("d-2"));
        assert_eq!(
            recent[1].correlation_id.as_deref(),
            Some("corr-aaaaaaaaaaaa")
        );
        assert_eq!(recent[2].message, "slow status=503");
        assert_eq!(recent[2].level, "WARN");
        assert_eq!(recent[2].debate_id, None);
        assert_eq!(log.recent(1).len(), 1);
    }

    #[test]
    fn errors_of_a_request_carry_its_context_ids_without_a_span() {
        use crate::telemetry::correlation::{self, RequestContext};
        let log = leaked(10);
        let subscriber = Registry::default().with(ErrorLayer::new(log));
        let context =
            RequestContext::new("corr-bbbbbbbbbbbb".into(), axum::http::Method::GET, None);
        tracing::subscriber::with_default(subscriber, || {
            correlation::sync_scope(context, || {
                tracing::warn!("before");
                correlation::record_debate_id("d-9");
                tracing::error!("after");
                assert_eq!(
                    current_span_ids(),
                    SpanIds {
                        correlation_id: Some("corr-bbbbbbbbbbbb".into()),
                        debate_id: Some("d-9".into()),
                    }
                );
            });
        });
        let recent = log.recent(10);
        assert_eq!(recent.len(), 2);
        assert_eq!(recent[0].message, "after");
        assert_eq!(
            recent[0].correlation_id.as_deref(),
            Some("corr-bbbbbbbbbbbb")
        );
        assert_eq!(recent[0].debate_id.as_deref(), Some("d-9"));
        assert_eq!(recent[1].debate_id, None);
        assert_eq!(
            recent[1].correlation_id.as_deref(),
            Some("corr-bbbbbbbbbbbb")
        );
    }

    #[test]
    fn the_buffer_is_bounded_and_drops_the_oldest() {
        let log = leaked(3);
        let subscriber = Registry::default().with(ErrorLayer::new(log));
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..10 {
                tracing::error!("e{i}");
            }
        });
        let messages: Vec<String> = log.recent(100).into_iter().map(|e| e.message).collect();
        assert_eq!(messages, ["e9", "e8", "e7"]);
        assert_eq!(log.len(), 3);
    }
}
