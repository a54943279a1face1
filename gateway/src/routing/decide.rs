//! The routing decision: pure, no I/O, no clock. It takes a policy, a fleet snapshot, the
//! providers' prices, today's spend and a request, and returns the decision with a trace of
//! why every other candidate was excluded. Randomness (power of two choices) comes from the
//! caller's RNG, so a seeded RNG makes decisions reproducible.

use std::collections::BTreeMap;

use rand::Rng;

use super::adequacy::{Wanted, too_slow, wanted};
use super::fallback::{ExternalRefusal, external};
use super::types::*;

/// Where a request goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    Local {
        node: String,
        addr: String,
        model: String,
    },
    External {
        provider: String,
        model: String,
        worst_case_usd: f64,
        /// The route's per-tenant daily budget for this provider (what a reservation may reach).
        daily_budget_usd: f64,
    },
}

/// Why nothing may serve a request; each maps to one gRPC code at the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No route, or no adequate model and external not permitted.
    NoAdequateModel(String),
    /// Adequate models exist but none has capacity, and there is no fallback.
    NoCapacity(String),
    /// Only external could serve, and policy forbids it for this data class.
    Forbidden(String),
    /// Only external could serve, and the tenant's daily budget has no room for it.
    OverBudget(String),
}

/// One candidate that was not chosen, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exclusion {
    /// `node/model`, or `external:provider/model`.
    pub candidate: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub data_class: DataClass,
    /// The route that matched (empty when none did).
    pub route: String,
    /// Which rule chose the target, e.g. `smallest`, `spill: larger`, `external: no_adequate_local`.
    pub rule: String,
    pub outcome: Result<Target, Refusal>,
    pub excluded: Vec<Exclusion>,
    /// Embed and classify: the vector space or label set the request is served from.
    pub space: Option<String>,
}

/// Everything `decide` reads besides the request.
pub struct Inputs<'a> {
    pub policy: &'a Policy,
    pub fleet: &'a FleetSnapshot,
    pub providers: &'a BTreeMap<String, ProviderView>,
    pub budgets: &'a Budgets,
}

struct Candidate<'a> {
    node: &'a NodeView,
    model: &'a ModelView,
}

pub fn decide(inputs: &Inputs<'_>, req: &RouteRequest, rng: &mut impl Rng) -> Decision {
    let data_class = req.data_class.unwrap_or(inputs.policy.default_data_class);
    let mut excluded = Vec::new();
    let Some(route) = match_route(inputs.policy, req, data_class) else {
        // a route that would serve the request for another tenant: this one may not use it
        if let Some(r) = inputs
            .policy
            .routes
            .iter()
            .find(|r| route_matches(r, req, data_class, false))
        {
            return Decision {
                data_class,
                route: r.name.clone(),
                rule: "tenant not allowed".into(),
                outcome: Err(Refusal::Forbidden(format!(
                    "tenant `{}` may not use route `{}` (it serves {})",
                    req.tenant,
                    r.name,
                    r.tenants
                        .iter()
                        .map(|t| format!("`{t}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ))),
                excluded,
                space: None,
            };
        }
        let named = req
            .route
            .as_deref()
            .map(|r| format!(" named `{r}`"))
            .unwrap_or_default();
        return Decision {
            data_class,
            route: String::new(),
            rule: "no route".into(),
            outcome: Err(Refusal::NoAdequateModel(format!(
                "no route{named} matches tenant `{}`, task {}, data class {data_class}",
                req.tenant, req.task
            ))),
            excluded,
            space: None,
        };
    };
    let need_context = u64::from(req.prompt_tokens) + u64::from(req.max_tokens);
    // the tighter of the caller's limit and the route's target
    // a generation that names one model is not held to the route's target (an evaluation
    // measures the model whatever its speed); the caller's own limit still holds
    let route_target = match (req.task, &req.space) {
        (Task::Generate, Some(_)) => None,
        _ => route.latency_target_ms,
    };
    let latency_limit = match (req.max_latency_ms, route_target) {
        (Some(a), Some(b)) if b < a => Some((b, "route latency target")),
        (Some(a), _) => Some((a, "max_latency_ms")),
        (None, Some(b)) => Some((b, "route latency target")),
        (None, None) => None,
    };

    // 0. embeddings and classifications come from one vector space / label set only
    let wanted = match wanted(inputs.fleet, route, req) {
        Ok(w) => w,
        Err(why) => {
            return Decision {
                data_class,
                route: route.name.clone(),
                rule: "refused".into(),
                outcome: Err(Refusal::NoAdequateModel(why)),
                excluded,
                space: None,
            };
        }
    };

    // a caller that names one model gets it without the route's floor (its own still holds)
    // a learned route's threshold stands in for its static floor
    let learned = match (&route.adequacy, &wanted) {
        (Adequacy::Learned(l), None) if req.task == Task::Generate => Some(l.threshold),
        _ => None,
    };
    let floor = match wanted {
        Some(Wanted::Model(_)) => 0.0,
        _ if learned.is_some() => 0.0,
        _ => route.min_quality,
    };
    let need_quality = req.min_quality.unwrap_or(0.0).max(floor);

    // 1. adequate local candidates
    let mut adequate: Vec<Candidate<'_>> = Vec::new();
    for node in &inputs.fleet.nodes {
        for model in node.models.iter().filter(|m| m.task == req.task) {
            let why = if let Some(why) = wanted.as_ref().and_then(|w| w.mismatch(model)) {
                Some(why)
            } else if !node.live {
                Some("node is not live".to_string())
            } else if req.exclude_nodes.contains(&node.id) {
                Some("node already failed this request".to_string())
            } else if !model.ready {
                Some("model is not ready".to_string())
            } else if let Some(p) = req.larger_than
                && model.parameters <= p
            {
                Some(format!(
                    "cascade: a model of {} parameters answered with too little confidence, and this one is no larger",
                    p
                ))
            } else if let Some(t) = learned
                && let Some(why) = match req.p_adequate(&route.name, &model.name) {
                    None => Some("the route's learned heads have none for this model".to_string()),
                    Some(p) if p < t => Some(format!(
                        "P(adequate) {p:.3} is below the route's threshold {t}"
                    )),
                    Some(_) => None,
                }
            {
                Some(why)
            } else if model.quality < need_quality {
                Some(format!(
                    "quality {} is below the required {need_quality}",
                    model.quality
                ))
            } else if u64::from(model.context_length) < need_context {
                Some(format!(
                    "context {} is shorter than prompt + max_tokens ({need_context})",
                    model.context_length
                ))
            } else if let Some((limit, what)) = latency_limit
                && let Some(why) = too_slow(node, model, req, limit, what)
            {
                Some(why)
            } else {
                None
            };
            match why {
                Some(reason) => excluded.push(Exclusion {
                    candidate: format!("{}/{}", node.id, model.name),
                    reason,
                }),
                None => adequate.push(Candidate { node, model }),
            }
        }
    }
    // smallest first: parameters, then bytes, then name (a stable order for equal sizes)
    adequate.sort_by(|a, b| {
        (
            a.model.parameters,
            a.model.size_bytes,
            &a.model.name,
            &a.node.id,
        )
            .cmp(&(
                b.model.parameters,
                b.model.size_bytes,
                &b.model.name,
                &b.node.id,
            ))
    });
    // one space, one dimension count: a model that declares the space with other dimensions
    // is not one of it
    if let Some(first) = adequate.first().map(|c| c.model)
        && matches!(req.task, Task::Embed | Task::Classify)
    {
        let (space, dims) = (first.space.clone(), first.dimensions);
        adequate.retain(|c| {
            let agrees = c.model.dimensions == dims || c.model.dimensions == 0 || dims == 0;
            if !agrees {
                excluded.push(Exclusion {
                    candidate: format!("{}/{}", c.node.id, c.model.name),
                    reason: format!(
                        "declares `{space}` with {} dimensions, but its smallest model has {dims}",
                        c.model.dimensions
                    ),
                });
            }
            agrees
        });
    }
    let space = wanted
        .as_ref()
        .filter(|_| req.task != Task::Generate)
        .map(|w| match w {
            Wanted::Space(s) => s.clone(),
            Wanted::Model(m) => adequate
                .first()
                .map(|c| c.model.space.clone())
                .unwrap_or_else(|| m.clone()),
        });
    let decision = |rule: String, outcome, excluded| Decision {
        data_class,
        route: route.name.clone(),
        rule,
        outcome,
        excluded,
        space: space.clone(),
    };

    if adequate.is_empty() {
        return match external(
            inputs,
            route,
            req,
            data_class,
            ExternalCondition::NoAdequateLocal,
            wanted.as_ref(),
            &mut excluded,
        ) {
            Ok(t) => decision("external: no_adequate_local".into(), Ok(t), excluded),
            Err(ExternalRefusal::Forbidden(why)) => decision(
                "refused".into(),
                Err(Refusal::Forbidden(format!(
                    "route `{}`: no adequate local {} model (quality >= {need_quality}, context >= {need_context}) and {why}",
                    route.name, req.task
                ))),
                excluded,
            ),
            Err(ExternalRefusal::NotPermitted(why)) => decision(
                "refused".into(),
                Err(Refusal::NoAdequateModel(format!(
                    "route `{}`: no adequate local {} model (quality >= {need_quality}, context >= {need_context}) and {why}",
                    route.name, req.task
                ))),
                excluded,
            ),
            Err(ExternalRefusal::OverBudget(why)) => decision(
                "refused".into(),
                Err(Refusal::OverBudget(format!(
                    "route `{}`: no adequate local {} model (quality >= {need_quality}, context >= {need_context}) and {why}",
                    route.name, req.task
                ))),
                excluded,
            ),
        };
    }

    // 2. the smallest adequate model, on a node with a free slot
    let smallest = adequate[0].model.name.clone();
    if let Some(c) = two_choices(
        tier(&adequate, &smallest).filter(|c| c.model.has_free_slot()),
        rng,
    ) {
        note_others(&adequate, c, &mut excluded);
        note_external(route, data_class, &mut excluded);
        return decision("smallest".into(), Ok(local(c)), excluded);
    }

    // 3. the route's spill rule
    let busy = |excluded: &mut Vec<Exclusion>| {
        for c in &adequate {
            excluded.push(Exclusion {
                candidate: format!("{}/{}", c.node.id, c.model.name),
                reason: format!(
                    "no free slot ({} busy of {})",
                    c.model.busy(),
                    c.model.max_concurrency
                ),
            });
        }
    };
    // a request that names one model queues for it rather than go elsewhere
    let spill = match wanted {
        Some(Wanted::Model(_)) => Spill::Wait,
        _ => route.spill,
    };
    match spill {
        Spill::Larger => {
            let mut names: Vec<&str> = Vec::new();
            for c in &adequate {
                if !names.contains(&c.model.name.as_str()) {
                    names.push(&c.model.name);
                }
            }
            for name in names.into_iter().skip(1) {
                if let Some(c) = two_choices(
                    tier(&adequate, name).filter(|c| c.model.has_free_slot()),
                    rng,
                ) {
                    note_others(&adequate, c, &mut excluded);
                    note_external(route, data_class, &mut excluded);
                    return decision("spill: larger".into(), Ok(local(c)), excluded);
                }
            }
        }
        Spill::Wait => {
            let queued = tier(&adequate, &smallest)
                .filter(|c| c.model.has_queue_room())
                .min_by(|a, b| {
                    a.model
                        .load()
                        .total_cmp(&b.model.load())
                        .then_with(|| a.node.id.cmp(&b.node.id))
                });
            if let Some(c) = queued {
                note_others(&adequate, c, &mut excluded);
                note_external(route, data_class, &mut excluded);
                return decision("spill: wait".into(), Ok(local(c)), excluded);
            }
        }
        Spill::External => {}
    }
    busy(&mut excluded);
    match external(
        inputs,
        route,
        req,
        data_class,
        ExternalCondition::NoLocalCapacity,
        wanted.as_ref(),
        &mut excluded,
    ) {
        Ok(t) => decision("external: no_local_capacity".into(), Ok(t), excluded),
        Err(ExternalRefusal::Forbidden(why)) => decision(
            "refused".into(),
            Err(Refusal::Forbidden(format!(
                "route `{}`: every adequate local {} model is at capacity (spill: {}) and {why}",
                route.name,
                req.task,
                spill_name(spill)
            ))),
            excluded,
        ),
        Err(ExternalRefusal::NotPermitted(why)) => decision(
            "refused".into(),
            Err(Refusal::NoCapacity(format!(
                "route `{}`: every adequate local {} model is at capacity (spill: {}) and {why}",
                route.name,
                req.task,
                spill_name(spill)
            ))),
            excluded,
        ),
        Err(ExternalRefusal::OverBudget(why)) => decision(
            "refused".into(),
            Err(Refusal::OverBudget(format!(
                "route `{}`: every adequate local {} model is at capacity (spill: {}) and {why}",
                route.name,
                req.task,
                spill_name(spill)
            ))),
            excluded,
        ),
    }
}

fn spill_name(s: Spill) -> &'static str {
    match s {
        Spill::Larger => "larger",
        Spill::Wait => "wait",
        Spill::External => "external",
    }
}

fn match_route<'p>(policy: &'p Policy, req: &RouteRequest, class: DataClass) -> Option<&'p Route> {
    policy
        .routes
        .iter()
        .find(|r| route_matches(r, req, class, true))
}

/// Whether `r` serves the request; `by_tenant` false ignores the route's tenant list.
fn route_matches(r: &Route, req: &RouteRequest, class: DataClass, by_tenant: bool) -> bool {
    req.route.as_ref().is_none_or(|n| &r.name == n)
        && (!by_tenant || r.tenants.is_empty() || r.tenants.contains(&req.tenant))
        && (r.tasks.is_empty() || r.tasks.contains(&req.task))
        && (r.data_classes.is_empty() || r.data_classes.contains(&class))
}

/// The candidates that run model `name`.
fn tier<'c, 'a>(
    adequate: &'c [Candidate<'a>],
    name: &'c str,
) -> impl Iterator<Item = &'c Candidate<'a>> {
    adequate.iter().filter(move |c| c.model.name == name)
}

fn local(c: &Candidate<'_>) -> Target {
    Target::Local {
        node: c.node.id.clone(),
        addr: c.node.addr.clone(),
        model: c.model.name.clone(),
    }
}

/// Power of two choices: two candidates at random, the less loaded wins.
fn two_choices<'c, 'a>(
    candidates: impl Iterator<Item = &'c Candidate<'a>>,
    rng: &mut impl Rng,
) -> Option<&'c Candidate<'a>>
where
    'a: 'c,
{
    let pool: Vec<&Candidate<'_>> = candidates.collect();
    match pool.len() {
        0 => None,
        1 => Some(pool[0]),
        n => {
            let i = rng.random_range(0..n);
            let mut j = rng.random_range(0..n - 1);
            if j >= i {
                j += 1;
            }
            let (a, b) = (pool[i], pool[j]);
            Some(if b.model.load() < a.model.load() {
                b
            } else {
                a
            })
        }
    }
}

/// A local model won: the route's external candidate, if it has one, is listed with why it
/// was not used (so a decision always shows where the request could have gone off the box).
fn note_external(route: &Route, class: DataClass, excluded: &mut Vec<Exclusion>) {
    let Some(ext) = &route.external else { return };
    let reason = if ext.data_classes.contains(&class) {
        format!(
            "a local model can serve (the route goes external only on {})",
            ext.conditions
                .iter()
                .map(|c| c.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    } else {
        format!(
            "a local model can serve, and external provider `{}` is not permitted for {class} data",
            ext.provider
        )
    };
    excluded.push(Exclusion {
        candidate: format!("external:{}/{}", ext.provider, ext.model),
        reason,
    });
}

/// Why each adequate candidate other than `chosen` lost.
fn note_others(all: &[Candidate<'_>], chosen: &Candidate<'_>, excluded: &mut Vec<Exclusion>) {
    let size = |c: &Candidate<'_>| (c.model.parameters, c.model.size_bytes);
    for c in all {
        if std::ptr::eq(c.node, chosen.node) && std::ptr::eq(c.model, chosen.model) {
            continue;
        }
        let reason = if size(c) > size(chosen) {
            "a smaller adequate model was chosen".to_string()
        } else if !c.model.kv_room {
            "its K/V cache budget is full".to_string()
        } else if !c.model.has_free_slot() {
            format!(
                "no free slot ({} busy of {})",
                c.model.busy(),
                c.model.max_concurrency
            )
        } else if c.model.name == chosen.model.name {
            format!(
                "load {:.2} against {:.2} on the chosen node (power of two choices)",
                c.model.load(),
                chosen.model.load()
            )
        } else {
            "an equally small model was chosen".to_string()
        };
        excluded.push(Exclusion {
            candidate: format!("{}/{}", c.node.id, c.model.name),
            reason,
        });
    }
}
