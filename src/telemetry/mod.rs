//! Telemetry: structured logs and metrics.

pub mod metrics;

use crate::config::Config;

/// Install the process-wide logger for `config` (JSON lines on stdout, or split files in
/// `log_dir`).
pub fn init_logging(config: &Config) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&config.log_level)?)
        .try_init()
        .map_err(|e| anyhow::anyhow!("{e}"))
}
