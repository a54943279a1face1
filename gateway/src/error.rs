//! The gateway's request errors, and the one place they become a gRPC status
//! (`GatewayError::grpc_status`) or an HTTP answer of the OpenAI-compatible front
//! (`GatewayError::http`). Both mappings are exhaustive on purpose: a new error kind must say
//! what each front answers.

use tonic::{Code, Status};

use crate::providers::ProviderError;
use crate::routing::Refusal;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("no tenant: send the `x-edgewise-tenant` metadata header")]
    NoTenant,
    #[error("unauthenticated: {0}")]
    Unauthenticated(&'static str),
    #[error("callers present tenant certificates; this connection's certificate names {0}")]
    WrongIdentity(String),
    #[error("tenant `{0}` is not an operator of this gateway (auth.operators)")]
    NotOperator(String),
    #[error(
        "without TLS or auth.tokens, operator calls (fleet status, audit export, other tenants' spend) are served only to callers on this box; {0} is not loopback"
    )]
    NotLoopback(String),
    #[error(
        "tenant `{tenant}` already has {limit} requests in flight (limits.max_in_flight_per_tenant); retry when one ends"
    )]
    TenantBusy { tenant: String, limit: u32 },
    #[error("{0}")]
    InvalidRequest(String),
    /// A body larger than `limits.max_message_bytes`.
    #[error("the request body is more than {limit} bytes (limits.max_message_bytes)")]
    TooLarge { limit: usize },
    /// The caller named a model (an OpenAI `model`) this gateway does not serve to it.
    #[error("{0}")]
    UnknownModel(String),
    /// Fleet: a report stream over a connection whose certificate is not a node's.
    #[error("capacity reports come from nodes; this connection's certificate names {0}")]
    NotANode(String),
    #[error("capacity reports need a node certificate from the fleet CA")]
    NoNodeCertificate,
    #[error(
        "report for node `{report}` over a connection whose certificate names node `{certificate}`"
    )]
    OtherNode { report: String, certificate: String },
    #[error("the gateway is shutting down")]
    ShuttingDown,
    /// An HTTP path the OpenAI-compatible front does not serve.
    #[error("{0}")]
    NoEndpoint(String),
    /// The caller did not send its request in time.
    #[error("{0}")]
    ClientTimeout(String),
    #[error("{0}")]
    Refused(Refusal),
    #[error("provider `{0}` is not configured")]
    ProviderNotConfigured(String),
    #[error("{0}")]
    Provider(ProviderError),
    #[error("the budget ledger failed, so no external call was made: {0}")]
    Ledger(String),
    /// The store did not answer in time (or failed): nothing that needed it was done.
    #[error("{0}")]
    Store(crate::store::StoreError),
    /// The agent answered with this status (its code is passed on).
    #[error("agent {node} ({model}): {}", .status.message())]
    Agent {
        node: String,
        model: String,
        status: tonic::Status,
    },
    /// The connection to the agent broke (not a status it sent).
    #[error("the connection to agent {node} ({model}) was lost: {detail}")]
    AgentLost {
        node: String,
        model: String,
        detail: String,
    },
    /// The caller's deadline passed (wherever that was noticed).
    #[error("the deadline passed {0}")]
    DeadlineExceeded(String),
    #[error("no agent could serve the request after {attempts} attempts; last: {last}")]
    RetriesExhausted { attempts: usize, last: String },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NoAdequateModel(m)
            | Refusal::NoCapacity(m)
            | Refusal::Forbidden(m)
            | Refusal::OverBudget(m) => f.write_str(m),
        }
    }
}

/// What the HTTP front answers for an error: status, OpenAI's error `type` and `code`, and
/// for refusals a caller may retry soon, `Retry-After` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpError {
    pub status: u16,
    pub kind: &'static str,
    pub code: &'static str,
    pub retry_after_s: Option<u32>,
}

const fn http(status: u16, kind: &'static str, code: &'static str) -> HttpError {
    HttpError {
        status,
        kind,
        code,
        retry_after_s: None,
    }
}

const fn retry(status: u16, kind: &'static str, code: &'static str) -> HttpError {
    HttpError {
        status,
        kind,
        code,
        retry_after_s: Some(1),
    }
}

impl GatewayError {
    /// The gRPC code, with the error's message as the status's reason.
    pub fn grpc_status(&self) -> Status {
        Status::new(self.grpc_code(), self.to_string())
    }

    pub fn grpc_code(&self) -> Code {
        match self {
            GatewayError::NoTenant
            | GatewayError::Unauthenticated(_)
            | GatewayError::NoNodeCertificate => Code::Unauthenticated,
            GatewayError::NotANode(_) | GatewayError::OtherNode { .. } => Code::PermissionDenied,
            GatewayError::ShuttingDown => Code::Unavailable,
            GatewayError::WrongIdentity(_)
            | GatewayError::NotOperator(_)
            | GatewayError::NotLoopback(_) => Code::PermissionDenied,
            GatewayError::TenantBusy { .. } | GatewayError::TooLarge { .. } => {
                Code::ResourceExhausted
            }
            GatewayError::InvalidRequest(_) => Code::InvalidArgument,
            GatewayError::UnknownModel(_) | GatewayError::NoEndpoint(_) => Code::NotFound,
            GatewayError::ClientTimeout(_) => Code::DeadlineExceeded,
            GatewayError::Refused(Refusal::NoAdequateModel(_)) => Code::FailedPrecondition,
            GatewayError::Refused(Refusal::NoCapacity(_) | Refusal::OverBudget(_)) => {
                Code::ResourceExhausted
            }
            GatewayError::Refused(Refusal::Forbidden(_)) => Code::PermissionDenied,
            GatewayError::ProviderNotConfigured(_) => Code::FailedPrecondition,
            GatewayError::Provider(p) => provider_code(p),
            GatewayError::Ledger(_) => Code::Internal,
            GatewayError::Store(_) => Code::Unavailable,
            GatewayError::Agent { status, .. } => status.code(),
            GatewayError::AgentLost { .. } | GatewayError::RetriesExhausted { .. } => {
                Code::Unavailable
            }
            GatewayError::DeadlineExceeded(_) => Code::DeadlineExceeded,
        }
    }

    /// The HTTP answer of the OpenAI-compatible front.
    pub fn http(&self) -> HttpError {
        match self {
            GatewayError::NoTenant
            | GatewayError::Unauthenticated(_)
            | GatewayError::NoNodeCertificate => {
                http(401, "authentication_error", "invalid_api_key")
            }
            GatewayError::NotANode(_) | GatewayError::OtherNode { .. } => {
                http(403, "permission_error", "permission_denied")
            }
            GatewayError::ShuttingDown => retry(503, "server_error", "shutting_down"),
            GatewayError::WrongIdentity(_)
            | GatewayError::NotOperator(_)
            | GatewayError::NotLoopback(_) => http(403, "permission_error", "permission_denied"),
            GatewayError::TenantBusy { .. } => {
                retry(429, "rate_limit_error", "tenant_requests_in_flight")
            }
            GatewayError::InvalidRequest(_) => {
                http(400, "invalid_request_error", "invalid_request")
            }
            GatewayError::TooLarge { .. } => {
                http(413, "invalid_request_error", "request_too_large")
            }
            GatewayError::UnknownModel(_) => http(404, "invalid_request_error", "model_not_found"),
            GatewayError::NoEndpoint(_) => http(404, "invalid_request_error", "unknown_url"),
            GatewayError::ClientTimeout(_) => http(408, "invalid_request_error", "request_timeout"),
            GatewayError::Refused(Refusal::NoAdequateModel(_)) => {
                http(503, "server_error", "no_adequate_model")
            }
            GatewayError::Refused(Refusal::NoCapacity(_)) => {
                retry(429, "rate_limit_error", "no_capacity")
            }
            GatewayError::Refused(Refusal::Forbidden(_)) => {
                http(403, "permission_error", "forbidden_by_policy")
            }
            // budgets are per UTC day: come back when the next one starts
            GatewayError::Refused(Refusal::OverBudget(_)) => HttpError {
                status: 429,
                kind: "insufficient_quota",
                code: "daily_budget_exhausted",
                retry_after_s: Some(seconds_to_next_utc_day()),
            },
            GatewayError::ProviderNotConfigured(_) => {
                http(503, "server_error", "provider_not_configured")
            }
            GatewayError::Provider(p) => match p {
                ProviderError::Deadline { .. } => http(504, "server_error", "timeout"),
                ProviderError::Status { status: 429, .. } => {
                    retry(429, "rate_limit_error", "provider_rate_limited")
                }
                // the hosted API refused what the gateway sent: a bad gateway, not a bad caller
                ProviderError::Status {
                    status: 400 | 413 | 422,
                    ..
                } => http(502, "server_error", "provider_refused"),
                ProviderError::Connect { .. }
                | ProviderError::Status { .. }
                | ProviderError::Protocol { .. }
                | ProviderError::Unsupported { .. } => http(502, "server_error", "provider_error"),
            },
            GatewayError::Ledger(_) => http(500, "server_error", "ledger_failed"),
            GatewayError::Store(_) => retry(503, "server_error", "store_unavailable"),
            GatewayError::Agent { status, .. } => match status.code() {
                Code::DeadlineExceeded => http(504, "server_error", "timeout"),
                Code::ResourceExhausted => retry(429, "rate_limit_error", "no_capacity"),
                Code::InvalidArgument | Code::OutOfRange => {
                    http(400, "invalid_request_error", "invalid_request")
                }
                Code::Unavailable => retry(503, "server_error", "agent_unavailable"),
                _ => http(502, "server_error", "agent_error"),
            },
            GatewayError::AgentLost { .. } | GatewayError::RetriesExhausted { .. } => {
                retry(503, "server_error", "agent_unavailable")
            }
            GatewayError::DeadlineExceeded(_) => http(504, "server_error", "timeout"),
        }
    }
}

fn seconds_to_next_utc_day() -> u32 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    (86_400 - now % 86_400) as u32
}

impl GatewayError {
    /// What an agent call's failure means for the caller: its deadline passed (tonic's own
    /// timeout says CANCELLED "Timeout expired"), the connection broke (a transport error, not
    /// a status the agent sent: UNAVAILABLE), or the agent's status, passed on.
    pub fn from_agent(
        node: &str,
        model: &str,
        status: tonic::Status,
        deadline: Option<std::time::Instant>,
    ) -> Self {
        let mut source = std::error::Error::source(&status);
        let mut transport = false;
        while let Some(e) = source {
            if e.is::<tonic::TimeoutExpired>() {
                return GatewayError::DeadlineExceeded(format!(
                    "while waiting for agent {node} ({model})"
                ));
            }
            transport = true;
            source = e.source();
        }
        if deadline.is_some_and(|d| std::time::Instant::now() >= d)
            && matches!(status.code(), Code::Cancelled | Code::DeadlineExceeded)
        {
            return GatewayError::DeadlineExceeded(format!(
                "while agent {node} ({model}) was serving the request"
            ));
        }
        if transport
            && matches!(
                status.code(),
                Code::Unknown | Code::Internal | Code::Cancelled | Code::Unavailable
            )
        {
            return GatewayError::AgentLost {
                node: node.to_string(),
                model: model.to_string(),
                detail: status.message().to_string(),
            };
        }
        GatewayError::Agent {
            node: node.to_string(),
            model: model.to_string(),
            status,
        }
    }
}

impl From<GatewayError> for Status {
    fn from(e: GatewayError) -> Self {
        e.grpc_status()
    }
}

fn provider_code(e: &ProviderError) -> Code {
    match e {
        ProviderError::Deadline { .. } => Code::DeadlineExceeded,
        ProviderError::Connect { .. } => Code::Unavailable,
        ProviderError::Status { status, .. } => match status {
            429 => Code::ResourceExhausted,
            401 | 403 | 404 => Code::FailedPrecondition,
            // the hosted API refused or failed what the gateway sent: never the caller's fault
            _ => Code::Unavailable,
        },
        ProviderError::Protocol { .. } => Code::Unavailable,
        ProviderError::Unsupported { .. } => Code::FailedPrecondition,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_refusal_kind_has_its_grpc_code_and_http_status() {
        let cases = [
            (GatewayError::NoTenant, Code::Unauthenticated, 401),
            (
                GatewayError::Refused(Refusal::Forbidden("no".into())),
                Code::PermissionDenied,
                403,
            ),
            (
                GatewayError::Refused(Refusal::NoCapacity("busy".into())),
                Code::ResourceExhausted,
                429,
            ),
            (
                GatewayError::Refused(Refusal::NoAdequateModel("none".into())),
                Code::FailedPrecondition,
                503,
            ),
            (
                GatewayError::InvalidRequest("bad".into()),
                Code::InvalidArgument,
                400,
            ),
            (
                GatewayError::TooLarge { limit: 1 },
                Code::ResourceExhausted,
                413,
            ),
            (GatewayError::UnknownModel("m".into()), Code::NotFound, 404),
            (
                GatewayError::ClientTimeout("slow".into()),
                Code::DeadlineExceeded,
                408,
            ),
            (
                GatewayError::Agent {
                    node: "n".into(),
                    model: "m".into(),
                    status: Status::deadline_exceeded("late"),
                },
                Code::DeadlineExceeded,
                504,
            ),
        ];
        for (e, code, http) in cases {
            assert_eq!((e.grpc_code(), e.http().status), (code, http), "{e}");
        }
        // a caller told to slow down is told when to come back
        let busy = GatewayError::Refused(Refusal::NoCapacity("busy".into())).http();
        assert_eq!(busy.retry_after_s, Some(1));
        assert_eq!(GatewayError::NoTenant.http().retry_after_s, None);
        let broke = GatewayError::Refused(Refusal::OverBudget("budget".into()));
        assert_eq!(broke.grpc_code(), Code::ResourceExhausted);
        let h = broke.http();
        assert_eq!((h.status, h.kind), (429, "insufficient_quota"));
        assert!(h.retry_after_s.is_some_and(|s| (1..=86_400).contains(&s)));
    }
}
