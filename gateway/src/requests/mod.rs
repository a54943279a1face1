//! The request paths both fronts share — the gRPC service (`grpc`) and the OpenAI-compatible
//! HTTP API (`http`): once a front has authenticated the caller and decoded its message, it
//! hands a [`Caller`] and the request here. Limits, `decide`, retries, the ledger
//! reservation, audit, metrics and traces all happen below this line, so they cannot differ
//! between fronts. Errors are `GatewayError`s; each front maps them in `error.rs`.

mod cascade;
pub mod contract;
mod generate;
mod texts;

use std::time::{Duration, Instant};

pub use cascade::signal_of;
pub use generate::{ChunkStream, generate};
pub use texts::{TextsCall, texts};

/// Who asked, by when, under which policy, and the trace it belongs to.
#[derive(Clone)]
pub struct Caller {
    pub tenant: String,
    pub deadline: Option<Instant>,
    /// The policy this request is decided on from start to end: taken once, when the
    /// request arrives, so a reload in the middle never mixes two policies in one request.
    pub policy: std::sync::Arc<crate::state::ActivePolicy>,
    /// The caller's headers, for the W3C trace context (`traceparent`).
    pub headers: tonic::metadata::MetadataMap,
}

/// An agent request: the remaining deadline, and the trace context of the current span.
fn with_timeout<T>(msg: T, t: Option<Duration>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(t) = t {
        r.set_timeout(t);
    }
    edgewise_ops::telemetry::inject(r.metadata_mut());
    r
}
