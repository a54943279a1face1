//! Policy hot reload: on a file change (polled) or on request (SIGHUP), load → validate →
//! one atomic swap. An invalid edit is logged and counted, and the policy in force stays.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::state::{ActivePolicy, State, hash_files};

/// How often the policy files are checked for edits.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(250);

pub async fn watch(
    state: Arc<State>,
    paths: Vec<PathBuf>,
    now: Arc<Notify>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // the hash last tried, so a rejected edit is reported once, not on every tick
    let mut tried = state.policy().hash.clone();
    loop {
        let forced = tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => false,
            _ = now.notified() => true,
        };
        if forced && let Some(tls) = state.tls.clone() {
            match tokio::task::spawn_blocking(move || tls.reload()).await {
                Ok(Ok(())) => tracing::info!("TLS certificates reloaded"),
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "TLS reload rejected; the certificates in use stay");
                }
                Err(e) => tracing::error!(error = %e, "TLS reload task failed"),
            }
        }
        let p = paths.clone();
        let Ok((_, hash)) = tokio::task::spawn_blocking(move || hash_files(&p)).await else {
            continue;
        };
        if hash == tried && !forced {
            continue;
        }
        tried.clone_from(&hash);
        let p = paths.clone();
        match tokio::task::spawn_blocking(move || ActivePolicy::load(&p)).await {
            Ok(Ok(next)) if next.hash == state.policy().hash => {}
            Ok(Ok(next)) => {
                tracing::info!(policy = %next.hash, routes = next.policy.routes.len(), "policy reloaded");
                let names: Vec<&str> = state.providers.by_name.keys().map(String::as_str).collect();
                for w in crate::policy::unconfigured_providers(&next.policy, &names) {
                    tracing::warn!("{w}");
                }
                state.swap_policy(next);
                state.metrics.reloads.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(problems)) => {
                state
                    .metrics
                    .reload_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!(policy = %state.policy().hash, "policy edit rejected; the previous policy stays in force:\n{problems}");
            }
            Err(e) => tracing::error!(error = %e, "policy reload task failed"),
        }
    }
}
