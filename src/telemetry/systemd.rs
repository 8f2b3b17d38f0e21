//! systemd integration for `Type=notify` units: `READY=1` once both listeners are bound,
//! `STOPPING=1` when shutdown starts, and `WATCHDOG=1` every half `WatchdogSec` while the
//! runtime is alive. Outside systemd (`NOTIFY_SOCKET` unset) every call is a no-op.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub fn ready() {
    if let Err(err) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %err, "cannot notify systemd (READY=1)");
    }
}

pub fn stopping() {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
}

/// The watchdog interval systemd asked for (`WATCHDOG_USEC`), if any.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|d| !d.is_zero())
}

/// Ping the watchdog at half its interval until `stop` fires. The pings come from the async
/// runtime, so a wedged runtime stops them and systemd restarts the service.
pub async fn watchdog(stop: CancellationToken) {
    let Some(interval) = watchdog_interval() else {
        return;
    };
    let mut ticker = tokio::time::interval(interval / 2);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            }
        }
    }
}
