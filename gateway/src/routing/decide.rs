//! The routing decision: pure, no I/O, no clock. It takes a policy, a fleet snapshot, the
//! providers' prices, today's spend and a request, and returns the decision with a trace of
//! why every other candidate was excluded. Randomness (power of two choices) comes from the
//! caller's RNG, so a seeded RNG makes decisions reproducible.

use std::collections::BTreeMap;

use rand::Rng;

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
    let need_quality = req.min_quality.unwrap_or(0.0).max(route.min_quality);
    let need_context = u64::from(req.prompt_tokens) + u64::from(req.max_tokens);
    // the tighter of the caller's limit and the route's target
    let latency_limit = match (req.max_latency_ms, route.latency_target_ms) {
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
    let space = wanted.as_ref().map(|w| match w {
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
    match route.spill {
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
                spill_name(route.spill)
            ))),
            excluded,
        ),
        Err(ExternalRefusal::NotPermitted(why)) => decision(
            "refused".into(),
            Err(Refusal::NoCapacity(format!(
                "route `{}`: every adequate local {} model is at capacity (spill: {}) and {why}",
                route.name,
                req.task,
                spill_name(route.spill)
            ))),
            excluded,
        ),
        Err(ExternalRefusal::OverBudget(why)) => decision(
            "refused".into(),
            Err(Refusal::OverBudget(format!(
                "route `{}`: every adequate local {} model is at capacity (spill: {}) and {why}",
                route.name,
                req.task,
                spill_name(route.spill)
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

/// What an embed or classify request may be served by.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Wanted {
    /// Any model of this vector space or label set.
    Space(String),
    /// This model only (the request named it).
    Model(String),
}

impl Wanted {
    fn mismatch(&self, m: &ModelView) -> Option<String> {
        let kind = if m.task == Task::Classify {
            "label set"
        } else {
            "vector space"
        };
        match self {
            Wanted::Model(n) if &m.name != n => Some(format!("not the requested model `{n}`")),
            Wanted::Space(s) if &m.space != s => {
                Some(format!("{kind} `{}`, and the request needs `{s}`", m.space))
            }
            _ => None,
        }
    }
}

/// The space a request is served from: the one its `model` field names (or the model it
/// names), else the route's pin. A route with no pin (one that matches any task) serves a
/// request that names none only while the fleet's models of the task share one space: it
/// refuses rather than choose between spaces, so it never switches a caller's space.
fn wanted(
    fleet: &FleetSnapshot,
    route: &Route,
    req: &RouteRequest,
) -> Result<Option<Wanted>, String> {
    let (pin, kind, key) = match req.task {
        Task::Embed => (route.space.as_ref(), "vector space", "space"),
        Task::Classify => (route.label_set.as_ref(), "label set", "label_set"),
        Task::Generate => return Ok(None),
    };
    let models = || {
        fleet
            .nodes
            .iter()
            .flat_map(|n| &n.models)
            .filter(|m| m.task == req.task)
    };
    if let Some(named) = &req.space {
        return Ok(Some(if models().any(|m| &m.name == named) {
            Wanted::Model(named.clone())
        } else {
            Wanted::Space(named.clone())
        }));
    }
    if let Some(p) = pin {
        return Ok(Some(Wanted::Space(p.clone())));
    }
    let spaces: std::collections::BTreeSet<&str> = models().map(|m| m.space.as_str()).collect();
    match spaces.len() {
        0 => Ok(None),
        1 => Ok(spaces.first().map(|s| Wanted::Space((*s).to_string()))),
        _ => Err(format!(
            "route `{}` pins no {kind} and the fleet's {} models are in {} ({}): name one in the request's model field, or pin the route's `{key}`",
            route.name,
            req.task,
            spaces.len(),
            spaces
                .iter()
                .map(|s| format!("`{s}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Why `model` cannot meet a latency limit, if it cannot. A model never measured is not
/// assumed fast: its latency is estimated from the node's closest-sized measured model of the
/// same task (decode is memory-bound, so time scales with the model's bytes), and without
/// one it is excluded.
fn too_slow(
    node: &NodeView,
    model: &ModelView,
    req: &RouteRequest,
    limit: u32,
    what: &str,
) -> Option<String> {
    if let Some(expected) = model.expected_latency_ms(req.task, req.max_tokens) {
        return (expected > f64::from(limit))
            .then(|| format!("expected latency {expected:.0} ms is over the {limit} ms {what}"));
    }
    let reference = node
        .models
        .iter()
        .filter(|m| m.task == model.task && m.size_bytes > 0 && m.name != model.name)
        .filter_map(|m| Some((m, m.expected_latency_ms(req.task, req.max_tokens)?)))
        .min_by_key(|(m, _)| m.size_bytes.abs_diff(model.size_bytes));
    match reference {
        Some((r, ms)) => {
            let estimate = ms * model.size_bytes as f64 / r.size_bytes as f64;
            (estimate > f64::from(limit)).then(|| {
                format!(
                    "not measured yet; estimated {estimate:.0} ms (from {} on this node, scaled by size) is over the {limit} ms {what}",
                    r.name
                )
            })
        }
        None => Some(format!(
            "latency unknown (not measured yet, and no measured {} model on this node to estimate from) with a {limit} ms {what}",
            model.task
        )),
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

enum ExternalRefusal {
    /// Policy forbids this data class externally.
    Forbidden(String),
    /// Not allowed for another reason (no external block, condition, provider).
    NotPermitted(String),
    /// The tenant's daily budget for the provider has no room for the worst case.
    OverBudget(String),
}

/// External only when every condition holds: the route allows it, the data class is
/// permitted (sensitive classes only when named), the condition applies, the provider is
/// configured, and the tenant's budget has room for the worst case.
fn external(
    inputs: &Inputs<'_>,
    route: &Route,
    req: &RouteRequest,
    class: DataClass,
    condition: ExternalCondition,
    wanted: Option<&Wanted>,
    excluded: &mut Vec<Exclusion>,
) -> Result<Target, ExternalRefusal> {
    let Some(ext) = &route.external else {
        return Err(ExternalRefusal::NotPermitted(
            "the route allows no external provider".into(),
        ));
    };
    let candidate = format!("external:{}/{}", ext.provider, ext.model);
    let refuse = |excluded: &mut Vec<Exclusion>, r: ExternalRefusal| {
        let (ExternalRefusal::Forbidden(why)
        | ExternalRefusal::NotPermitted(why)
        | ExternalRefusal::OverBudget(why)) = &r;
        excluded.push(Exclusion {
            candidate: candidate.clone(),
            reason: why.clone(),
        });
        Err(r)
    };
    if !ext.data_classes.contains(&class) {
        return refuse(
            excluded,
            ExternalRefusal::Forbidden(format!(
                "external provider `{}` is not permitted for {class} data",
                ext.provider
            )),
        );
    }
    // a hosted embedding model serves only the vector space the policy declares it in
    match (req.task, wanted) {
        (Task::Embed | Task::Classify, Some(Wanted::Model(m))) => {
            return refuse(
                excluded,
                ExternalRefusal::NotPermitted(format!("the request names the local model `{m}`")),
            );
        }
        (Task::Embed | Task::Classify, Some(Wanted::Space(s)))
            if ext.space.as_deref() != Some(s.as_str()) =>
        {
            return refuse(
                excluded,
                ExternalRefusal::NotPermitted(match &ext.space {
                    Some(other) => format!(
                        "`{}` is declared in vector space `{other}`, and the request needs `{s}`",
                        ext.model
                    ),
                    None => format!(
                        "`{}` is declared in no vector space (external.space), and the request needs `{s}`",
                        ext.model
                    ),
                }),
            );
        }
        _ => {}
    }
    if !ext.conditions.contains(&condition) {
        return refuse(
            excluded,
            ExternalRefusal::NotPermitted(format!(
                "the route does not go external on {}",
                condition.as_str()
            )),
        );
    }
    let Some(provider) = inputs.providers.get(&ext.provider) else {
        return refuse(
            excluded,
            ExternalRefusal::NotPermitted(format!("provider `{}` is not configured", ext.provider)),
        );
    };
    if !provider.tasks.contains(&req.task) {
        return refuse(
            excluded,
            ExternalRefusal::NotPermitted(format!(
                "provider `{}` does not serve {} requests",
                ext.provider, req.task
            )),
        );
    }
    let max_tokens = match (req.task, req.max_tokens) {
        (Task::Generate, 0) => provider.default_max_tokens,
        (Task::Generate, n) => n,
        _ => 0,
    };
    let cost = provider
        .price
        .worst_case_usd(req.prompt_tokens_max, max_tokens);
    let spent = inputs
        .budgets
        .spent_usd
        .get(&(req.tenant.clone(), ext.provider.clone()))
        .copied()
        .unwrap_or(0.0);
    if spent + cost > ext.daily_budget_usd {
        return refuse(
            excluded,
            ExternalRefusal::OverBudget(format!(
                "tenant `{}` has ${:.4} of its ${} daily budget for `{}` left, and this request may cost ${cost:.4}",
                req.tenant,
                (ext.daily_budget_usd - spent).max(0.0),
                ext.daily_budget_usd,
                ext.provider
            )),
        );
    }
    Ok(Target::External {
        provider: ext.provider.clone(),
        model: ext.model.clone(),
        worst_case_usd: cost,
        daily_budget_usd: ext.daily_budget_usd,
    })
}
