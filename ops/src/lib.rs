//! What both daemons share with the system they run on: systemd notifications (`systemd`),
//! log setup, and the signals that stop them.

pub mod message_limit;
pub mod metrics;
pub mod systemd;
pub mod telemetry;

pub use telemetry::init_logging;

/// An error and what caused it, one after another ("transport error: ...: certificate expired").
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// Resolves on SIGTERM (systemd stop) or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutdown requested; draining");
}
