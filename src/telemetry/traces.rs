//! OpenTelemetry traces over OTLP, off unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set. The standard variables are honoured:
//! `OTEL_EXPORTER_OTLP_PROTOCOL` (`http/protobuf`, the default, or `grpc`), `_HEADERS`,
//! `_TIMEOUT`, `OTEL_SERVICE_NAME` (default `aragora`), `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_TRACES_SAMPLER` / `_ARG`, `OTEL_BSP_*`, `OTEL_SDK_DISABLED`,
//! `OTEL_TRACES_EXPORTER=none`, and `OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`.
//!
//! Spans are the `tracing` spans of `aragora::*` (bridged by `tracing-opentelemetry`): one per
//! HTTP request (a W3C `traceparent` header makes it a child of the caller's span), one per
//! debate run with a child per round and phase, one per agent call with the GenAI semantic
//! conventions. A debate stores the trace context of the request that created it, so the
//! runs of one debate on several instances (after a restart or failover) share one trace.
//!
//! The exporter never blocks a request: finished spans go into a bounded queue
//! (`OTEL_BSP_MAX_QUEUE_SIZE`, 2048) that one task drains in batches; a full queue or a
//! failed export drops spans and counts them in `aragora_otel_spans_dropped_total{reason}`.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, Span, SpanData, SpanExporter, SpanProcessor};
use tokio::sync::mpsc;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

static ENABLED: AtomicBool = AtomicBool::new(false);
static CAPTURE_CONTENT: AtomicBool = AtomicBool::new(false);
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Whether traces are exported (cheap: checked on the request path).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Whether prompts and answers go into agent-call spans
/// (`OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true`).
pub fn capture_content() -> bool {
    CAPTURE_CONTENT.load(Ordering::Relaxed)
}

/// Batching of the exporter task.
#[derive(Debug, Clone, Copy)]
struct BatchSettings {
    queue: usize,
    batch: usize,
    delay: Duration,
    timeout: Duration,
}

fn number(env: &dyn Fn(&str) -> Option<String>, name: &str, default: u64) -> anyhow::Result<u64> {
    match env(name) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                anyhow::anyhow!("{name}={v:?} is not valid: expected a positive whole number")
            }),
    }
}

/// Build the tracer when traces are configured. Must run inside the tokio runtime (the
/// export task and the gRPC channel live there). `Ok(None)`: traces are off.
pub fn init(
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<Option<opentelemetry_sdk::trace::Tracer>> {
    let set = |name: &str| env(name).is_some_and(|v| !v.trim().is_empty());
    if !(set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        || env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        || env("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim().eq_ignore_ascii_case("none"))
    {
        return Ok(None);
    }
    let protocol = env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_else(|| "http/protobuf".into());
    let exporter = match protocol.trim() {
        "http/protobuf" => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .build(),
        "grpc" => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build(),
        other => anyhow::bail!(
            "OTEL_EXPORTER_OTLP_PROTOCOL={other:?} is not supported: use http/protobuf or grpc"
        ),
    }
    .map_err(|e| anyhow::anyhow!("cannot set up the OTLP trace exporter: {e}"))?;
    let settings = BatchSettings {
        queue: number(env, "OTEL_BSP_MAX_QUEUE_SIZE", 2048)? as usize,
        batch: number(env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)? as usize,
        delay: Duration::from_millis(number(env, "OTEL_BSP_SCHEDULE_DELAY", 5000)?),
        timeout: Duration::from_millis(number(env, "OTEL_BSP_EXPORT_TIMEOUT", 30_000)?),
    };
    let has_service_name = set("OTEL_SERVICE_NAME")
        || env("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|a| {
            a.split(',')
                .any(|kv| kv.trim_start().starts_with("service.name="))
        });
    let mut resource = opentelemetry_sdk::Resource::builder().with_attribute(
        opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
    );
    if !has_service_name {
        resource = resource.with_service_name("aragora");
    }
    let resource = resource.build();
    let provider = SdkTracerProvider::builder()
        .with_resource(resource.clone())
        .with_span_processor(QueueProcessor::start(exporter, settings, &resource))
        .build();
    let tracer = provider.tracer("aragora");
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let _ = PROVIDER.set(provider);
    CAPTURE_CONTENT.store(
        env("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true")),
        Ordering::Relaxed,
    );
    ENABLED.store(true, Ordering::Relaxed);
    Ok(Some(tracer))
}

/// Export what is queued and stop the exporter (at the end of a graceful shutdown), within
/// `budget`. Blocking: call it off the async workers.
pub fn shutdown(budget: Duration) {
    if let Some(provider) = PROVIDER.get()
        && let Err(e) = provider.shutdown_with_timeout(budget)
    {
        tracing::warn!(target: "aragora::telemetry", error = %e, "trace exporter did not shut down cleanly");
    }
}

/// Make `span` a child of the W3C trace context in `headers` (`traceparent`, `tracestate`).
pub fn adopt_parent(span: &tracing::Span, headers: &axum::http::HeaderMap) {
    if !enabled() || !headers.contains_key("traceparent") {
        return;
    }
    let carrier: HashMap<String, String> = ["traceparent", "tracestate"]
        .into_iter()
        .filter_map(|k| Some((k.to_owned(), headers.get(k)?.to_str().ok()?.to_owned())))
        .collect();
    adopt(span, &carrier);
}

fn adopt(span: &tracing::Span, carrier: &HashMap<String, String>) {
    let cx = TraceContextPropagator::new().extract(carrier);
    use opentelemetry::trace::TraceContextExt as _;
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// The W3C trace context of the current span (`{"traceparent", "tracestate"?}`), to be stored
/// with a debate so every run of it joins the same trace.
pub fn current_context() -> Option<serde_json::Value> {
    if !enabled() {
        return None;
    }
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&tracing::Span::current().context(), &mut carrier);
    carrier
        .contains_key("traceparent")
        .then(|| serde_json::to_value(carrier).unwrap_or_default())
}

/// The W3C headers (`traceparent`, `tracestate`) of the current span, for an outgoing call
/// (agent requests), so a gateway or self-hosted model joins the trace. Empty when traces
/// are off.
pub fn outgoing_headers() -> Vec<(String, String)> {
    if !enabled() {
        return Vec::new();
    }
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&tracing::Span::current().context(), &mut carrier);
    carrier.into_iter().collect()
}

/// Make `span` a child of a stored context (see [`current_context`]).
pub fn adopt_stored(span: &tracing::Span, stored: &serde_json::Value) {
    if !enabled() {
        return;
    }
    let Some(obj) = stored.as_object() else {
        return;
    };
    let carrier: HashMap<String, String> = obj
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
        .collect();
    adopt(span, &carrier);
}

/// Set an attribute on `span`'s exported span only (never a log field).
pub fn attribute(span: &tracing::Span, key: &'static str, value: impl Into<opentelemetry::Value>) {
    if enabled() {
        span.set_attribute(key, value);
    }
}

/// Mark `span` failed with `error_type` (the span status and the `error.type` attribute).
pub fn error(span: &tracing::Span, error_type: &str, description: &str) {
    if enabled() {
        span.set_attribute("error.type", error_type.to_owned());
        span.set_status(opentelemetry::trace::Status::error(description.to_owned()));
    }
}

/// The GenAI semantic conventions' `gen_ai.provider.name` for one of our provider ids.
pub fn gen_ai_provider(id: &str) -> &str {
    match id {
        "gemini" => "gcp.gemini",
        "mistral" => "mistral_ai",
        "xai" => "x_ai",
        other => other,
    }
}

enum Control {
    Flush(std::sync::mpsc::SyncSender<()>),
    Shutdown(std::sync::mpsc::SyncSender<()>),
}

/// A span processor that never blocks: `on_end` puts the span in a bounded queue (or counts
/// it dropped); one task exports batches.
#[derive(Debug)]
struct QueueProcessor {
    spans: mpsc::Sender<SpanData>,
    control: mpsc::UnboundedSender<Control>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Control::Flush(_) => "Flush",
            Control::Shutdown(_) => "Shutdown",
        })
    }
}

fn dropped(reason: &'static str, n: usize) {
    super::metrics::otel_spans_dropped_total(reason).increment(n as u64);
}

impl QueueProcessor {
    fn start<E: SpanExporter + 'static>(
        mut exporter: E,
        settings: BatchSettings,
        resource: &opentelemetry_sdk::Resource,
    ) -> QueueProcessor {
        // The exporter sends the resource (service.name…) with every batch.
        exporter.set_resource(resource);
        let (spans, rx) = mpsc::channel(settings.queue);
        let (control, control_rx) = mpsc::unbounded_channel();
        tokio::spawn(export_loop(exporter, rx, control_rx, settings));
        QueueProcessor { spans, control }
    }

    fn ask(
        &self,
        make: fn(std::sync::mpsc::SyncSender<()>) -> Control,
        timeout: Duration,
    ) -> OTelSdkResult {
        let (done, wait) = std::sync::mpsc::sync_channel(1);
        if self.control.send(make(done)).is_err() {
            return Ok(());
        }
        wait.recv_timeout(timeout)
            .map_err(|_| opentelemetry_sdk::error::OTelSdkError::Timeout(timeout))
    }
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        match self.spans.try_send(span) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => dropped("queue_full", 1),
            Err(mpsc::error::TrySendError::Closed(_)) => dropped("shutdown", 1),
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.ask(Control::Flush, Duration::from_secs(5))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.ask(Control::Shutdown, timeout)
    }
}

async fn export_loop<E: SpanExporter>(
    exporter: E,
    mut spans: mpsc::Receiver<SpanData>,
    mut control: mpsc::UnboundedReceiver<Control>,
    settings: BatchSettings,
) {
    let mut batch: Vec<SpanData> = Vec::with_capacity(settings.batch);
    let mut tick = tokio::time::interval(settings.delay);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_warning: Option<Instant> = None;
    loop {
        tokio::select! {
            biased;
            c = control.recv() => {
                while let Ok(span) = spans.try_recv() {
                    batch.push(span);
                }
                for chunk in std::mem::take(&mut batch).chunks(settings.batch) {
                    export(&exporter, chunk.to_vec(), settings, &mut last_warning).await;
                }
                match c {
                    Some(Control::Flush(done)) => { let _ = done.send(()); }
                    Some(Control::Shutdown(done)) => {
                        let _ = exporter.shutdown();
                        let _ = done.send(());
                        return;
                    }
                    None => return,
                }
            }
            span = spans.recv() => match span {
                Some(span) => {
                    batch.push(span);
                    if batch.len() >= settings.batch {
                        export(&exporter, std::mem::take(&mut batch), settings, &mut last_warning).await;
                    }
                }
                None => return,
            },
            _ = tick.tick() => {
                if !batch.is_empty() {
                    export(&exporter, std::mem::take(&mut batch), settings, &mut last_warning).await;
                }
            }
        }
    }
}

/// Export one batch within the export timeout; a failure drops it (counted) and warns at most
/// once a minute, so a dead collector neither blocks nor floods the logs.
async fn export<E: SpanExporter>(
    exporter: &E,
    batch: Vec<SpanData>,
    settings: BatchSettings,
    last_warning: &mut Option<Instant>,
) {
    let n = batch.len();
    let failure = match tokio::time::timeout(settings.timeout, exporter.export(batch)).await {
        Ok(Ok(())) => {
            super::metrics::otel_spans_exported_total().increment(n as u64);
            None
        }
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!(
            "no answer within {} ms",
            settings.timeout.as_millis()
        )),
    };
    if let Some(why) = failure {
        dropped("export_failed", n);
        if last_warning.is_none_or(|at| at.elapsed() > Duration::from_secs(60)) {
            *last_warning = Some(Instant::now());
            tracing::warn!(
                target: "aragora::telemetry",
                spans = n, error = %why,
                "trace export failed; spans dropped (counted in aragora_otel_spans_dropped_total)"
            );
        }
    }
}
