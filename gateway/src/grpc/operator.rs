//! The operator RPCs: `Explain` (any tenant, for its own requests), and fleet status, spend
//! and the audit export (operators; a tenant may read its own spend).

use std::sync::atomic::Ordering;
use std::time::Instant;

use edgewise_proto as pb;
use tonic::{Request, Response};

use super::{AuditStream, GatewayService};
use crate::dispatch;
use crate::error::GatewayError;
use crate::routing::Task;
use crate::validate;

pub(super) fn explain(
    service: &GatewayService,
    request: Request<pb::ExplainRequest>,
) -> Result<Response<pb::Decision>, GatewayError> {
    let state = &service.state;
    let tenant = state.auth.tenant(&request)?;
    let policy = state.policy();
    let body = request.into_inner();
    let task = validate::task_of(body.task)?;
    let mut req = validate::route_request(
        tenant,
        task,
        body.routing.as_ref(),
        (
            validate::estimate_tokens(&body.text),
            validate::max_tokens_of(&body.text),
        ),
        body.max_tokens,
        &state.limits,
    )?;
    req.findings = crate::dataclass::findings(&policy.policy, [body.text.as_str()]);
    if task == Task::Generate {
        let message = crate::providers::Message {
            role: "user".into(),
            content: body.text.clone(),
        };
        req.p_adequate = crate::adequacy::estimate(&policy.policy, &[message]);
    }
    let d = dispatch::decide(state, &policy, &req, crate::routing::Detail::Explain);
    let mut proto = dispatch::to_proto(&d, &uuid::Uuid::new_v4().to_string(), &[]);
    dispatch::explain_adequacy(&policy, &req, &mut proto);
    Ok(Response::new(proto))
}

pub(super) async fn fleet_status(
    service: &GatewayService,
    request: Request<pb::FleetStatusRequest>,
) -> Result<Response<pb::FleetStatusResponse>, GatewayError> {
    let state = &service.state;
    state.auth.operator(&request)?;
    // the gateways sharing the ledger, from their heartbeats
    let (gateways, gateways_unavailable) = match state.store.shared_ledger() {
        None => (Vec::new(), String::new()),
        Some(l) => match l.ledger.peers().await {
            Ok(peers) => (
                peers
                    .into_iter()
                    .map(|p| pb::GatewayPeer {
                        id: p.id,
                        version: p.version,
                        policy_digest: p.policy_digest,
                        seen_ms_ago: p.seen_ms_ago,
                    })
                    .collect(),
                String::new(),
            ),
            Err(e) => (Vec::new(), e.to_string()),
        },
    };
    Ok(Response::new(pb::FleetStatusResponse {
        gateway_id: state.id.clone(),
        nodes: state.registry.status(Instant::now()),
        policy_hash: state.policy().hash.clone(),
        policy_reloads: state.metrics.reloads.load(Ordering::Relaxed),
        policy_reload_failures: state.metrics.reload_failures.load(Ordering::Relaxed),
        gateways,
        gateways_unavailable,
    }))
}

pub(super) async fn spend(
    service: &GatewayService,
    request: Request<pb::SpendRequest>,
) -> Result<Response<pb::SpendResponse>, GatewayError> {
    let state = &service.state;
    let tenant = request.get_ref().tenant.clone();
    state.auth.may_read_spend(&request, &tenant)?;
    let entries = state
        .store
        .spend_entries()
        .await
        .map_err(GatewayError::Store)?
        .into_iter()
        .filter(|e| tenant.is_empty() || e.key.tenant == tenant)
        .map(|e| pb::SpendEntry {
            day: e.key.day,
            tenant: e.key.tenant,
            provider: e.key.provider,
            spent_usd: crate::ledger::usd(e.spent),
            reserved_usd: crate::ledger::usd(e.reserved),
        })
        .collect();
    Ok(Response::new(pb::SpendResponse { entries }))
}

pub(super) async fn export_audit(
    service: &GatewayService,
    request: Request<pb::ExportAuditRequest>,
) -> Result<Response<AuditStream>, GatewayError> {
    let state = &service.state;
    state.auth.operator(&request)?;
    let r = request.into_inner();
    let until = if r.until_unix_ms == 0 {
        u64::MAX
    } else {
        r.until_unix_ms
    };
    let records: Vec<Result<pb::AuditRecord, tonic::Status>> = state
        .store
        .audit_range(r.since_unix_ms, until)
        .await
        .map_err(GatewayError::Store)?
        .into_iter()
        .map(Ok)
        .collect();
    Ok(Response::new(Box::pin(futures::stream::iter(records))))
}

/// Every gateway's audit chain in the shared log, verified (operators only).
pub(super) async fn verify_audit(
    service: &GatewayService,
    request: Request<pb::VerifyAuditRequest>,
) -> Result<Response<pb::VerifyAuditResponse>, GatewayError> {
    let state = &service.state;
    state.auth.operator(&request)?;
    let Some(reports) = state.store.verify_audit().await else {
        return Ok(Response::new(pb::VerifyAuditResponse {
            chains: Vec::new(),
            unavailable: format!(
                "this gateway's audit log is its own ({}), not chained: [store] backend = \"postgres\" keeps a hash chain per gateway",
                state.store.path()
            ),
        }));
    };
    let chains = reports
        .map_err(GatewayError::Store)?
        .into_iter()
        .map(|r| pb::AuditChain {
            gateway: r.gateway,
            records: r.records,
            last_seq: r.last_seq.max(0) as u64,
            problems: r.problems,
        })
        .collect();
    Ok(Response::new(pb::VerifyAuditResponse {
        chains,
        unavailable: String::new(),
    }))
}
