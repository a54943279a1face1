//! An external call's admission: the checks that need no money (a request only local models
//! can serve), then its worst case reserved in the ledger and made durable — before anything
//! is sent to a provider.

use std::time::SystemTime;

use edgewise_proto as pb;

use super::ExternalCall;
use crate::error::GatewayError;
use crate::ledger::{LedgerError, NANOS_PER_USD, Reservation, day_of, nanos_ceil};
use crate::routing::{Decision, RouteRequest};
use crate::state::State;

/// The hosted model a decision chose, and what it may cost.
pub struct Target {
    pub provider: String,
    pub model: String,
    pub worst_case_usd: f64,
    pub daily_budget_usd: f64,
}

/// Why an external call was not reserved.
pub enum NotReserved {
    /// The tenant's budget for the provider has no room (another request may have just
    /// taken it: the caller decides again once).
    OverBudget(LedgerError),
    /// Refused before any reservation, or the store failed: nothing was reserved or sent.
    Failed(GatewayError),
}

/// Admits and reserves the call `d` decided on; its reservation id is the decision id.
pub async fn reserve(
    state: &State,
    req: &RouteRequest,
    d: &Decision,
    id: String,
    decision: pb::Decision,
    target: Target,
) -> Result<ExternalCall, NotReserved> {
    let Target {
        provider,
        model,
        worst_case_usd,
        daily_budget_usd,
    } = target;
    // refused before anything is reserved or audited: no call will be made
    if req.ignore_eos {
        return Err(NotReserved::Failed(GatewayError::InvalidRequest(format!(
            "request.ignore_eos: only local models can ignore end-of-sequence, and this request was routed to the hosted `{provider}` (rule `{}`)",
            d.rule
        ))));
    }
    let reservation = Reservation {
        day: day_of(SystemTime::now()),
        tenant: req.tenant.clone(),
        provider: provider.clone(),
        nanos: nanos_ceil(worst_case_usd),
    };
    let limit = (daily_budget_usd * NANOS_PER_USD).floor() as u64;
    match state.store.reserve(&id, &reservation, limit).await {
        Ok(()) => {
            tracing::info!(decision = %id, route = %d.route, rule = %d.rule, provider = %provider, model = %model, worst_case_usd, "routed to an external provider");
            let settled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            state.store.keep_leased(&id, settled.clone());
            Ok(ExternalCall {
                decision,
                id,
                tenant: req.tenant.clone(),
                route: d.route.clone(),
                data_class: d.data_class,
                task: req.task,
                provider,
                model,
                reserved: reservation.nanos,
                settled,
            })
        }
        Err(e @ LedgerError::OverBudget { .. }) => Err(NotReserved::OverBudget(e)),
        Err(LedgerError::Store(e)) => Err(NotReserved::Failed(GatewayError::Store(e))),
        Err(e) => Err(NotReserved::Failed(GatewayError::Ledger(e.to_string()))),
    }
}
