//! What both daemons share with the system they run on: systemd notifications (`systemd`),
//! log setup, serving a router over TLS or plain TCP (`serve`), and the signals that stop
//! them.

pub mod message_limit;
pub mod metrics;
pub mod otlp;
pub mod serve;
pub mod systemd;
pub mod telemetry;

pub use serve::{shutdown_signal, until_stopped};
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
