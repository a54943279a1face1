//! One external call, owned here from admission to settlement: `reserve` (the checks that
//! need no money, then the worst case reserved durably before anything is sent), `stream`
//! (reaching the provider and streaming its answer), and `ExternalCall::close` (settled with
//! what the provider billed, and the audit record appended — never prompt or completion
//! text). `SettleOnDrop` closes a call whose caller left in between.

mod reserve;
pub mod stream;

pub use reserve::{NotReserved, Target, reserve};

use edgewise_proto as pb;

use crate::audit::now_ms;
use crate::ledger::{nanos_ceil, usd};
use crate::providers::{ProviderError, Usage};
use crate::routing::{DataClass, Task};
use crate::state::State;

/// An external target with its reservation made.
#[derive(Debug, Clone)]
pub struct ExternalCall {
    pub decision: pb::Decision,
    /// The decision id, also the reservation's id.
    pub id: String,
    pub tenant: String,
    pub route: String,
    pub data_class: DataClass,
    pub task: Task,
    pub provider: String,
    pub model: String,
    /// Reserved nano-USD.
    pub reserved: u64,
    /// Set by the first `close`; clones share it, so a call is settled exactly once.
    pub settled: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// Holds an external call from its reservation until its stream is handed on: if the
/// request is dropped in between (the caller left while the provider was being reached),
/// the call is closed as cancelled at once instead of staying reserved until a restart.
pub struct SettleOnDrop {
    state: std::sync::Arc<State>,
    call: Option<ExternalCall>,
}

impl SettleOnDrop {
    pub fn new(state: std::sync::Arc<State>, call: ExternalCall) -> Self {
        Self {
            state,
            call: Some(call),
        }
    }

    pub fn call(&self) -> &ExternalCall {
        self.call
            .as_ref()
            .unwrap_or_else(|| unreachable!("taken only by into_inner"))
    }

    /// The call, for whoever settles it from here on.
    pub fn into_inner(mut self) -> ExternalCall {
        self.call
            .take()
            .unwrap_or_else(|| unreachable!("taken once"))
    }
}

impl Drop for SettleOnDrop {
    fn drop(&mut self) {
        let Some(call) = self.call.take() else { return };
        if call.settled.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let state = self.state.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                call.close(&state, CallEnd::Cancelled).await;
            });
        }
    }
}

/// How a call ended, for billing.
#[derive(Debug, Clone, PartialEq)]
pub enum CallEnd {
    /// Finished; the provider reported this usage.
    Billed(Usage),
    /// Finished without usage: charged at the worst case; `estimate` goes in the audit.
    Unreported { estimate: Usage },
    /// Refused by the provider or never reached it (HTTP error, connection): nothing billed.
    NotBilled(String),
    /// Failed after the provider may have started work: charged at the worst case.
    Failed(String),
    /// The caller left mid-stream: charged at the worst case.
    Cancelled,
}

impl CallEnd {
    /// A call that failed before answering: refused or unreachable calls are not billed; any
    /// other failure may have been, so it keeps the worst case.
    pub fn from_failure(e: &ProviderError) -> Self {
        match e {
            ProviderError::Connect { .. }
            | ProviderError::Status { .. }
            | ProviderError::Unsupported { .. } => CallEnd::NotBilled(e.to_string()),
            ProviderError::Deadline { .. } | ProviderError::Protocol { .. } => {
                CallEnd::Failed(e.to_string())
            }
        }
    }
}

impl ExternalCall {
    /// Settles the reservation and appends the audit record; returns the charge in USD. Only
    /// the first close of a call (or of any of its clones) settles it; later ones return 0.
    pub async fn close(&self, state: &State, end: CallEnd) -> f64 {
        if self.settled.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return 0.0;
        }
        let price = state.providers.get(&self.provider).map(|p| p.config.price);
        let (charged, outcome, usage, reported) = match &end {
            CallEnd::Billed(u) => (
                price.map_or(self.reserved, |p| {
                    nanos_ceil(p.cost_usd(u.prompt_tokens, u.completion_tokens))
                }),
                "ok".to_string(),
                *u,
                true,
            ),
            CallEnd::Unreported { estimate } => (
                self.reserved,
                "ok (usage not reported: charged the worst case)".to_string(),
                *estimate,
                false,
            ),
            CallEnd::NotBilled(e) => (0, format!("error: {e}"), Usage::default(), false),
            CallEnd::Failed(e) => (
                self.reserved,
                format!("error: {e} (charged the worst case)"),
                Usage::default(),
                false,
            ),
            CallEnd::Cancelled => (
                self.reserved,
                "cancelled by the caller (charged the worst case)".to_string(),
                Usage::default(),
                false,
            ),
        };
        // served: the provider answered (billed by usage or at the worst case)
        let served = matches!(end, CallEnd::Billed(_) | CallEnd::Unreported { .. });
        let record = |charged: u64| pb::AuditRecord {
            unix_ms: now_ms(),
            decision_id: self.id.clone(),
            tenant: self.tenant.clone(),
            route: self.route.clone(),
            data_class: self.data_class.as_str().into(),
            kind: "external_call".into(),
            provider: self.provider.clone(),
            model: self.model.clone(),
            outcome: outcome.clone(),
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            reserved_usd: usd(self.reserved),
            cost_usd: usd(charged),
            usage_reported: reported,
            task: self.task.as_str().into(),
            declared_data_class: self.decision.declared_data_class.clone(),
            detections: self.decision.detections.clone(),
            gateway: String::new(),
            seq: 0,
        };
        // settled and audited together (in one transaction where the ledger is shared)
        let charged = match state
            .store
            .settle_audited(&self.id, charged, &|s: &crate::ledger::Settled| {
                record(s.charged)
            })
            .await
        {
            Ok(s) => s.charged,
            Err(e) => {
                tracing::error!(decision = %self.id, error = %e, "cannot settle the reservation; it stays charged at the worst case");
                if let Err(e) = state.store.append_audit(record(self.reserved)).await {
                    tracing::error!(decision = %self.id, error = %e, "cannot write the audit record");
                }
                self.reserved
            }
        };
        state.metrics.external(
            &self.provider,
            &self.tenant,
            served,
            crate::ledger::usd(charged),
            (usage.prompt_tokens, usage.completion_tokens),
        );
        tracing::info!(decision = %self.id, provider = %self.provider, model = %self.model, tenant = %self.tenant, cost_usd = usd(charged), outcome = %outcome, "external call closed");
        usd(charged)
    }
}

/// The audit record of a fallback that policy refused: the decision's classes and what the
/// text scan found come with it (never the text).
pub fn refused_record(
    decision: &pb::Decision,
    tenant: &str,
    task: Task,
    (provider, model): (&str, &str),
    reason: &str,
) -> pb::AuditRecord {
    pb::AuditRecord {
        unix_ms: now_ms(),
        decision_id: decision.decision_id.clone(),
        tenant: tenant.into(),
        route: decision.route.clone(),
        data_class: decision.data_class.clone(),
        declared_data_class: decision.declared_data_class.clone(),
        detections: decision.detections.clone(),
        kind: "refused_fallback".into(),
        provider: provider.into(),
        model: model.into(),
        outcome: reason.into(),
        task: task.as_str().into(),
        ..Default::default()
    }
}
