//! Telemetry: the correlation id of the request being served, structured JSON logs (one
//! object per line, split by area when a log directory is set), Prometheus metrics with a
//! process collector (the /proc reader), the recent-errors buffer, Sentry error reporting,
//! jemalloc heap profiling and systemd notifications.

pub mod correlation;
pub mod errors;
pub mod logging;
pub mod metrics;
pub mod process;
pub mod profiling;
pub mod sentry;
pub mod systemd;
pub mod traces;

pub use process::resident_memory_bytes;

use crate::config::LoggingConfig;

/// Install the process-wide logger of the `logging` section (JSON lines on stdout, or split
/// files in its `dir`), and OpenTelemetry traces when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
/// Must run inside the tokio runtime.
pub fn init_logging(section: &LoggingConfig) -> anyhow::Result<()> {
    let tracer = traces::init(&|name| std::env::var(name).ok())?;
    logging::init(&logging::LogSettings {
        dir: section.dir.clone(),
        filter: section.level.clone(),
        tracer,
        sentry: section.sentry_dsn.is_some(),
    })
}
