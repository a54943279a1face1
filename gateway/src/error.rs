//! The gateway's request errors, mapped to `tonic::Status` in one place (`grpc::status`).

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
        "tenant `{tenant}` already has {limit} requests in flight (limits.max_in_flight_per_tenant); retry when one ends"
    )]
    TenantBusy { tenant: String, limit: u32 },
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    Refused(Refusal),
    #[error("{0}")]
    Provider(crate::providers::ProviderError),
    #[error("the budget ledger failed, so no external call was made: {0}")]
    Ledger(String),
    #[error("agent {node} ({model}): {status}")]
    Agent {
        node: String,
        model: String,
        status: tonic::Status,
    },
    #[error("no agent could serve the request after {attempts} attempts; last: {last}")]
    RetriesExhausted { attempts: usize, last: String },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NoAdequateModel(m) | Refusal::NoCapacity(m) | Refusal::Forbidden(m) => {
                f.write_str(m)
            }
        }
    }
}
