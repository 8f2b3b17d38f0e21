//! Telemetry: structured JSON logs (one object per line, split by area when a log directory
//! is set) and Prometheus metrics.

pub mod logging;
pub mod metrics;

use crate::config::Config;

/// Install the process-wide logger for `config` (JSON lines on stdout, or split files in
/// `log_dir`).
pub fn init_logging(config: &Config) -> anyhow::Result<()> {
    logging::init(&logging::LogSettings {
        dir: config.log_dir.clone(),
        filter: config.log_level.clone(),
    })
}
