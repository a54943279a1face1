//! From a routing request to a served call: decide, count the request against the chosen
//! model or reserve an external call's worst case, call the agent, and on an agent failure
//! before the first token decide again without that node (within the deadline and budget).

use std::time::{Duration, Instant, SystemTime};

use edgewise_proto as pb;
use tonic::{Code, Status};

use crate::agents::AgentClient;
use crate::error::GatewayError;
use crate::external::{self, ExternalCall, refused_record};
use crate::ledger::day_of;
use crate::routing::{self, Budgets, Candidate, Decision, Detail, Inputs, RouteRequest, Target};
use crate::state::{ActivePolicy, State};

/// An agent failure that happened before any token reached the caller: decide again without it.
fn retriable(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable | Code::ResourceExhausted | Code::Unknown
    )
}

/// A local target with the request counted against its model.
pub struct LocalCall {
    pub decision: pb::Decision,
    pub node: String,
    pub model: String,
    /// The model's size in the fleet snapshot the decision was made on (a cascade's next
    /// step asks only for larger ones).
    pub parameters: u64,
    pub addr: String,
    pub guard: crate::fleet::InFlight,
}

/// What an agent is asked for: the model, and the route whose decision chose it.
pub struct AgentCall {
    pub model: String,
    pub route: String,
}

pub enum Routed {
    Local(LocalCall),
    External(ExternalCall),
}

/// What serving a request came to: the agent's answer, or an external call to make.
pub enum Served<T> {
    Local(T, LocalCall),
    External(ExternalCall),
}

/// A decision with its trace as a response lists it, worked out while the inputs it was made
/// from are at hand.
pub struct Decided {
    pub decision: Decision,
    /// At most `MAX_EXCLUDED` one by one, the rest counted by reason.
    pub excluded: Vec<pb::Excluded>,
    /// The route's hosted model, if it was passed over, and why (a refusal audits it).
    pub external: Option<(Candidate, String)>,
    /// A local target's parameters, from the snapshot the decision was made on.
    pub parameters: u64,
    /// A local target's wait for its model to load (0: resident), from the same snapshot.
    pub cold_ms: u32,
    /// What the text scan found, where the route acts on it or reports it.
    pub detections: Vec<pb::Detection>,
}

pub fn to_proto(d: &Decided, id: &str, retried: &[pb::Excluded]) -> pb::Decision {
    let excluded = d.excluded.clone();
    let detections = d.detections.clone();
    let cold_ms = d.cold_ms;
    let d = &d.decision;
    let target = match &d.outcome {
        Ok(Target::Local { node, addr, model }) => {
            Some(pb::decision::Target::Local(pb::LocalTarget {
                node_id: node.clone(),
                addr: addr.clone(),
                model: model.clone(),
                cold_load_ms: cold_ms,
            }))
        }
        Ok(Target::External {
            provider,
            model,
            worst_case_usd,
            ..
        }) => Some(pb::decision::Target::External(pb::ExternalTarget {
            provider: provider.clone(),
            model: model.clone(),
            worst_case_usd: *worst_case_usd,
        })),
        Err(_) => None,
    };
    pb::Decision {
        decision_id: id.to_string(),
        route: d.route.clone(),
        rule: d.rule.to_string(),
        data_class: d.data_class.as_str().to_string(),
        target,
        excluded,
        refusal: d
            .outcome
            .as_ref()
            .err()
            .map(ToString::to_string)
            .unwrap_or_default(),
        retried: retried.to_vec(),
        space: d.space.clone().unwrap_or_default(),
        cascade: Vec::new(),
        p_adequate: Default::default(),
        declared_data_class: d.declared.as_str().to_string(),
        detections,
        inferred_data_class: d
            .inferred
            .map(|c| c.as_str().to_string())
            .unwrap_or_default(),
    }
}

/// What the text scan found, as a decision and an audit record carry it: only where the
/// route acts on it or reports it (`Decision::inferred`), never the text.
fn detections(req: &RouteRequest, d: &Decision) -> Vec<pb::Detection> {
    if d.inferred.is_none() {
        return Vec::new();
    }
    let mut out: Vec<pb::Detection> = req
        .findings
        .detections
        .iter()
        .map(|x| pb::Detection {
            detector: x.detector.to_string(),
            category: x.category.as_str().to_string(),
            count: x.count,
        })
        .collect();
    if req.findings.incomplete {
        out.push(pb::Detection {
            detector: routing::inference::SCAN_INCOMPLETE.to_string(),
            category: String::new(),
            count: 1,
        });
    }
    out
}

/// For explain: a learned route's P(adequate) per model, or a cascade's plan for the
/// chosen first answer.
pub fn explain_adequacy(policy: &ActivePolicy, req: &RouteRequest, d: &mut pb::Decision) {
    let Some(route) = policy.policy.routes.iter().find(|r| r.name == d.route) else {
        return;
    };
    match &route.adequacy {
        crate::routing::Adequacy::Learned(_) => {
            d.p_adequate = p_adequate_for(req, &route.name);
        }
        crate::routing::Adequacy::Cascade(c) => {
            let Some(pb::decision::Target::Local(t)) = &d.target else {
                return;
            };
            d.cascade.push(pb::CascadeStep {
                candidate: format!("{}/{}", t.node_id, t.model),
                confidence: None,
                signal: c.signal.as_str().to_string(),
                threshold: c.threshold_for(&t.model),
                outcome: {
                    let hosted = route
                        .external
                        .as_ref()
                        .map_or(String::new(), |e| format!(", then {}/{} where the data class permits", e.provider, e.model));
                    let judged = if c.judges(req) {
                        "answers first".to_string()
                    } else if c.judges_start(req) {
                        format!("answers first, judged by its first {} tokens (held, then streamed when kept)", c.max_tokens)
                    } else {
                        // a request that names its model
                        return;
                    };
                    format!("planned: {judged}; below the threshold a larger local model answers again{hosted}")
                },
            });
        }
        crate::routing::Adequacy::Static => {}
    }
}

/// A learned route's P(adequate) per model, as a decision carries it.
fn p_adequate_for(req: &RouteRequest, route: &str) -> std::collections::HashMap<String, f32> {
    req.p_adequate
        .iter()
        .filter(|(r, _, _)| r == route)
        .map(|(_, m, p)| (m.clone(), *p))
        .collect()
}

/// The most exclusions a response lists one by one; a large fleet's rest is summarised.
pub const MAX_EXCLUDED: usize = 24;

/// The exclusions a response carries (`Decision::listing`): a bounded list, the hosted model
/// always, one line for the rest — so a 1,000-node fleet does not put thousands in every
/// answer, and a served request does not judge every node to say so.
fn excluded_for_response(
    inputs: &Inputs<'_>,
    req: &RouteRequest,
    d: &Decision,
    detail: Detail,
) -> Decided {
    let listing = d.listing(inputs, req, MAX_EXCLUDED, detail);
    let external = d
        .external_exclusion(inputs, req)
        .map(|(who, _)| who.candidate())
        .zip(listing.external.as_ref().map(|e| e.reason.clone()));
    let excluded: Vec<pb::Excluded> = listing
        .shown
        .into_iter()
        .chain(listing.external)
        .chain(listing.rest)
        .map(|l| pb::Excluded {
            candidate: l.candidate,
            reason: l.reason,
        })
        .collect();
    let (parameters, cold_ms) = match &d.outcome {
        Ok(Target::Local { node, model, .. }) => inputs
            .fleet
            .node(node)
            .and_then(|n| n.models.iter().find(|m| m.name == *model))
            .map_or((0, 0), |m| (m.parameters, m.cold_ms)),
        _ => (0, 0),
    };
    Decided {
        decision: d.clone(),
        excluded,
        external,
        parameters,
        cold_ms,
        detections: detections(req, d),
    }
}

/// The decision for `req` now: the active policy, the fleet as last reported, today's spend.
pub fn decide(state: &State, policy: &ActivePolicy, req: &RouteRequest, detail: Detail) -> Decided {
    let span = tracing::info_span!(
        "routing.decide",
        task = req.task.as_str(),
        route = tracing::field::Empty,
        rule = tracing::field::Empty,
        target = tracing::field::Empty,
    );
    let _entered = span.enter();
    let decided = decide_now(state, policy, req, detail);
    let d = &decided.decision;
    span.record("route", d.route.as_str());
    span.record("rule", d.rule.as_str());
    span.record(
        "target",
        match &d.outcome {
            Ok(Target::Local { node, model, .. }) => format!("{node}/{model}"),
            Ok(Target::External {
                provider, model, ..
            }) => format!("external:{provider}/{model}"),
            Err(_) => "refused".into(),
        },
    );
    decided
}

fn decide_now(state: &State, policy: &ActivePolicy, req: &RouteRequest, detail: Detail) -> Decided {
    let fleet = state.registry.snapshot(Instant::now());
    // today's spend matters only to a policy that can go external
    let budgets = if policy.policy.routes.iter().any(|r| r.external.is_some()) {
        state.store.budgets(&day_of(SystemTime::now()), &req.tenant)
    } else {
        Budgets::default()
    };
    let inputs = Inputs {
        policy: &policy.policy,
        fleet: &fleet,
        providers: &state.provider_views,
        budgets: &budgets,
    };
    let d = routing::decide(&inputs, req, &mut rand::rng());
    excluded_for_response(&inputs, req, &d, detail)
}

/// Decides; a local target is counted against its model, an external one has its worst case
/// reserved (durably) first. A refused fallback is audited.
pub async fn route(
    state: &State,
    policy: &ActivePolicy,
    req: &RouteRequest,
    retried: &[pb::Excluded],
) -> Result<Routed, GatewayError> {
    // a reservation can lose a race with another request's: decide once more with the new spend
    for attempt in 0..2 {
        let decided = decide(state, policy, req, Detail::Response);
        let id = uuid::Uuid::new_v4().to_string();
        let mut proto = to_proto(&decided, &id, retried);
        // a learned route's estimates travel with the decision the caller is served by
        proto.p_adequate = p_adequate_for(req, &proto.route);
        // once per request: not again for a retry, a cascade's next step or a lost race
        if attempt == 0 && req.larger_than.is_none() && req.exclude_nodes.is_empty() {
            state.metrics.scanned(&proto);
        }
        let Decided {
            decision: d,
            external: passed_over,
            parameters,
            ..
        } = decided;
        match d.outcome.clone() {
            Ok(Target::Local { node, addr, model }) => {
                tracing::debug!(decision = %id, route = %d.route, rule = %d.rule, node = %node, model = %model, "routed");
                let guard = state.registry.track(&node, &model);
                return Ok(Routed::Local(LocalCall {
                    decision: proto,
                    node,
                    model,
                    parameters,
                    addr,
                    guard,
                }));
            }
            Ok(Target::External {
                provider,
                model,
                worst_case_usd,
                daily_budget_usd,
            }) => {
                let target = external::Target {
                    provider,
                    model,
                    worst_case_usd,
                    daily_budget_usd,
                };
                match external::reserve(state, req, &d, id, proto, target).await {
                    Ok(call) => return Ok(Routed::External(call)),
                    // another request's reservation won the race: decide again with its spend
                    Err(external::NotReserved::OverBudget(_)) if attempt == 0 => continue,
                    Err(external::NotReserved::OverBudget(e)) => {
                        let refusal =
                            routing::Refusal::OverBudget(format!("route `{}`: {e}", d.route));
                        return Err(GatewayError::Refused(refusal));
                    }
                    Err(external::NotReserved::Failed(e)) => return Err(e),
                }
            }
            Err(r) => {
                tracing::info!(decision = %id, route = %d.route, reason = %r, "refused");
                if let Some((Candidate::External { provider, model }, reason)) = &passed_over {
                    let record =
                        refused_record(&proto, &req.tenant, req.task, (provider, model), reason);
                    // every refused fallback is on record, or the caller hears that it is not
                    if let Err(err) = state.store.append_audit(record).await {
                        tracing::error!(decision = %id, error = %err, "cannot write the audit record");
                        return Err(GatewayError::Store(err));
                    }
                }
                // a cascade's escalation that nothing larger may serve is not a refused
                // request: the caller keeps the answer in hand
                if req.larger_than.is_none() {
                    state.metrics.refused(&r);
                }
                return Err(GatewayError::Refused(r));
            }
        }
    }
    Err(GatewayError::Ledger("reservation retries exhausted".into()))
}

/// Runs `call` on the routed agent; on a retriable failure decides again without that node.
/// An external decision is returned for the caller to serve.
pub async fn with_retries<T, F, Fut>(
    state: &State,
    policy: &ActivePolicy,
    mut req: RouteRequest,
    deadline: Option<Instant>,
    call: F,
) -> Result<Served<T>, GatewayError>
where
    F: Fn(AgentClient, AgentCall, Option<Duration>) -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let mut retried: Vec<pb::Excluded> = Vec::new();
    let budget = state.retry_budget;
    loop {
        let routed = match route(state, policy, &req, &retried).await? {
            Routed::Local(l) => l,
            Routed::External(e) => return Ok(Served::External(e)),
        };
        let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let result = match state.agents.client(&routed.addr) {
            Ok(client) => {
                let span =
                    tracing::info_span!("agent.call", node = %routed.node, model = %routed.model);
                let answer = tracing::Instrument::instrument(
                    call(
                        client,
                        AgentCall {
                            model: routed.model.clone(),
                            route: routed.decision.route.clone(),
                        },
                        remaining,
                    ),
                    span,
                );
                // the gateway's own timer: its deadline ends before tonic's server timer, so
                // a caller whose deadline passes hears DEADLINE_EXCEEDED, never CANCELLED
                match deadline {
                    Some(d) => match tokio::time::timeout_at(d.into(), answer).await {
                        Ok(r) => r,
                        Err(_) => {
                            return Err(GatewayError::DeadlineExceeded(format!(
                                "while waiting for agent {} ({})'s first answer",
                                routed.node, routed.model
                            )));
                        }
                    },
                    None => answer.await,
                }
            }
            Err(e) => Err(Status::unavailable(e)),
        };
        match result {
            Ok(v) => return Ok(Served::Local(v, routed)),
            Err(s)
                if retriable(&s)
                    && retried.len() < budget
                    && deadline.is_none_or(|d| Instant::now() < d) =>
            {
                tracing::info!(node = %routed.node, model = %routed.model, code = ?s.code(), "agent failed before the first token; routing again");
                if s.code() == Code::Unavailable {
                    // unreachable (or draining): spare the next requests the same detour
                    state.registry.mark_unreachable(
                        &routed.node,
                        Instant::now() + crate::fleet::UNREACHABLE_FOR,
                    );
                }
                retried.push(pb::Excluded {
                    candidate: format!("{}/{}", routed.node, routed.model),
                    reason: format!("{:?}: {}", s.code(), s.message()),
                });
                req.exclude_nodes.push(routed.node.clone());
            }
            Err(s) if retriable(&s) && !retried.is_empty() => {
                return Err(GatewayError::RetriesExhausted {
                    attempts: retried.len() + 1,
                    last: format!("{:?}: {}", s.code(), s.message()),
                });
            }
            Err(status) => {
                return Err(GatewayError::from_agent(
                    &routed.node,
                    &routed.model,
                    status,
                    deadline,
                ));
            }
        }
    }
}

/// Reservations left open by a gateway that stopped mid-call: charged at their worst case,
/// closed, and audited. With a shared ledger: any gateway's whose lease ran out.
pub async fn settle_abandoned(state: &State) {
    let shared = state.store.shared_ledger().is_some();
    let outcome = if shared {
        "its lease ran out before it was settled: its gateway stopped or lost the shared ledger mid-call (charged the worst case; a late settle refunds the difference)"
    } else {
        "interrupted by a gateway restart (charged the worst case)"
    };
    let record = |id: &str, r: &crate::ledger::Reservation| pb::AuditRecord {
        unix_ms: crate::audit::now_ms(),
        decision_id: id.to_string(),
        tenant: r.tenant.clone(),
        kind: "external_call".into(),
        provider: r.provider.clone(),
        outcome: outcome.into(),
        reserved_usd: crate::ledger::usd(r.nanos),
        cost_usd: crate::ledger::usd(r.nanos),
        ..Default::default()
    };
    // shared: each charge and its record in one transaction; own: one after the other
    let audited = shared.then_some(
        &record as &(dyn Fn(&str, &crate::ledger::Reservation) -> pb::AuditRecord + Sync),
    );
    match state.store.settle_abandoned_audited(audited).await {
        Ok(open) => {
            for (id, r) in open {
                tracing::warn!(decision = %id, tenant = %r.tenant, provider = %r.provider, "{outcome}");
                if shared {
                    continue;
                }
                if let Err(e) = state.store.append_audit(record(&id, &r)).await {
                    tracing::error!(error = %e, "cannot write the audit record");
                }
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot settle abandoned reservations"),
    }
}

/// With a shared ledger: sweeps expired leases (any gateway's) and re-reads every gateway's
/// spend for routing, every `every`, until stopped.
pub async fn sweep_shared(
    state: std::sync::Arc<State>,
    every: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        settle_abandoned(&state).await;
        if let Some(l) = state.store.shared_ledger()
            && let Err(e) = l
                .ledger
                .heartbeat(env!("CARGO_PKG_VERSION"), &state.policy().hash)
                .await
        {
            tracing::warn!(error = %e, "cannot record this gateway's heartbeat");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::*;

    fn fleet(nodes: usize) -> FleetSnapshot {
        FleetSnapshot::new(
            (0..nodes)
                .map(|i| NodeView {
                    id: format!("node-{i:03}"),
                    addr: String::new(),
                    live: i % 4 != 0,
                    models: vec![ModelView {
                        in_flight: 2,
                        max_queue: 0,
                        ..ModelView::idle("lm", Task::Generate, 1)
                    }],
                })
                .collect(),
        )
    }

    fn decided(nodes: usize) -> Decided {
        let policy = Policy {
            default_data_class: DataClass::Confidential,
            floors: Default::default(),
            routes: vec![Route {
                name: "r".into(),
                tenants: vec![],
                tasks: vec![],
                data_classes: vec![],
                min_quality: 0.0,
                latency_target_ms: None,
                spill: Spill::External,
                external: Some(ExternalRule {
                    provider: "openai".into(),
                    model: "gpt".into(),
                    data_classes: vec![DataClass::Public],
                    conditions: vec![ExternalCondition::NoLocalCapacity],
                    daily_budget_usd: 1.0,
                    space: None,
                }),
                space: None,
                label_set: None,
                inference: Default::default(),
                adequacy: Adequacy::Static,
            }],
        };
        let fleet = fleet(nodes);
        let providers = Default::default();
        let budgets = Budgets::default();
        let inputs = Inputs {
            policy: &policy,
            fleet: &fleet,
            providers: &providers,
            budgets: &budgets,
        };
        let req = RouteRequest::new("shop", Task::Generate, 10, 10);
        let d = routing::decide(&inputs, &req, &mut rand::rng());
        excluded_for_response(&inputs, &req, &d, Detail::Explain)
    }

    #[test]
    fn a_large_fleets_exclusions_are_summarised_and_external_ones_kept() {
        let d = decided(100);
        let out = &d.excluded;
        assert_eq!(out.len(), MAX_EXCLUDED + 1);
        assert_eq!(out[0].candidate, "node-000/lm");
        assert_eq!(out[0].reason, "node is not live");
        assert_eq!(out[MAX_EXCLUDED - 1].candidate, "external:openai/gpt");
        let last = &out[MAX_EXCLUDED];
        assert_eq!(last.candidate, "… 77 more candidates");
        assert_eq!(last.reason, "58 × no free slot; 19 × node is not live");
        assert!(matches!(
            &d.external,
            Some((Candidate::External { provider, .. }, why)) if provider == "openai" && why.contains("confidential")
        ));
        // a small fleet: every one listed
        assert_eq!(decided(3).excluded.len(), 4);
    }
}
