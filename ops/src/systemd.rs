//! systemd integration: readiness, status, start-timeout extension (model loading), watchdog.
//! Every call is a no-op when the daemon is not started by systemd (no `NOTIFY_SOCKET`).

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

pub fn ready() {
    let _ = sd_notify::notify(false, &[NotifyState::Ready, NotifyState::Status("serving")]);
}

pub fn status(text: &str) {
    let _ = sd_notify::notify(false, &[NotifyState::Status(text)]);
}

/// Asks systemd for more start-up time (model loading can be slow on a small box).
pub fn extend_start_timeout(by: Duration) {
    let _ = sd_notify::notify(
        false,
        &[NotifyState::ExtendTimeoutUsec(
            by.as_micros().min(u128::from(u32::MAX)) as u32,
        )],
    );
}

pub fn stopping() {
    let _ = sd_notify::notify(
        false,
        &[NotifyState::Stopping, NotifyState::Status("draining")],
    );
}

/// Pings the watchdog at half the unit's `WatchdogSec` until `stop`, when it is enabled.
pub fn spawn_watchdog(stop: CancellationToken) -> Option<tokio::task::JoinHandle<()>> {
    let mut usec = 0u64;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return None;
    }
    let period = Duration::from_micros(usec / 2);
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => { let _ = sd_notify::notify(false, &[NotifyState::Watchdog]); }
            }
        }
    }))
}
