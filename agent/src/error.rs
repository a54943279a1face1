//! The agent's request errors. Mapped to `tonic::Status` in one place, `grpc::status`.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("unknown model `{0}`; this agent serves: {1}")]
    UnknownModel(String, String),
    #[error("model `{model}` is a {actual} model; {call} needs a {wanted} model")]
    WrongTask {
        model: String,
        actual: &'static str,
        wanted: &'static str,
        call: &'static str,
    },
    #[error("model `{model}` is not ready ({state}): {reason}")]
    NotReady {
        model: String,
        state: &'static str,
        reason: String,
    },
    #[error("{0}")]
    InvalidRequest(String),
    #[error(
        "model `{model}` is at capacity: {in_flight} running and {queued} queued (queue limit {max_queue}); retry in {retry_after:?}"
    )]
    Overloaded {
        model: String,
        in_flight: u32,
        queued: u32,
        max_queue: u32,
        retry_after: Duration,
    },
    #[error(
        "model `{model}`: {positions} positions (prompt + max_tokens) need {need} bytes of K/V cache, more than its budget of {budget} bytes; ask for fewer tokens"
    )]
    KvBudget {
        model: String,
        positions: usize,
        need: u64,
        budget: u64,
    },
    #[error("deadline exceeded {0}")]
    DeadlineExceeded(String),
    #[error("the agent is draining for shutdown; send new requests elsewhere")]
    Draining,
    #[error("{0}")]
    CallerNotAllowed(String),
    #[error("inference failed in model `{model}`: {message}")]
    Inference { model: String, message: String },
    /// Nothing can make room for a load: the budget, and what holds it.
    #[error("model `{model}` needs {need} of the memory budget ({budget}, {free} free); {held}")]
    MemoryBudget {
        model: String,
        need: String,
        budget: String,
        free: String,
        held: String,
    },
    /// An operator's change that the model's state does not allow.
    #[error("model `{model}` is {state}: {why}")]
    ModelState {
        model: String,
        state: &'static str,
        why: String,
    },
}
