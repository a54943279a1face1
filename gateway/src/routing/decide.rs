//! The routing decision: pure, no I/O, no clock. It takes a policy, a fleet snapshot, the
//! providers' prices, today's spend and a request, and returns the decision with a trace of
//! why every other candidate was passed over (worked out only when it is listed: `trace.rs`).
//! Randomness (power of two choices) comes from the caller's RNG, so a seeded RNG makes
//! decisions reproducible.
//!
//! In phases: match a route → the candidate rungs (the index's models of the task, checked
//! once per model) → adequacy (the smallest rung with a node that can serve) → choose (a free
//! slot there, or the route's spill rule) → fallback (the hosted provider, where permitted).
//! Only the rungs it considers are looked at node by node, and a free slot is found by
//! sampling, so a decision costs about the same at 10 nodes as at 1,000.

use std::collections::BTreeMap;
use std::fmt;

use rand::Rng;

use super::adequacy::{Wanted, wanted};
use super::fallback::{ExternalRefusal, RefusalKind, external};
use super::index::{FleetSnapshot, Rung, Slot};
use super::inference::InferenceMode;
use super::trace::{ExternalWhy, ExternalWhyView, Note, RungWhy, Trace, slot_unfit};
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

/// Which rule chose the target (or refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// The smallest adequate model, on a node with a free slot.
    Smallest,
    /// The smallest was full: the next larger adequate model with a free slot.
    SpillLarger,
    /// The smallest was full: queued on it.
    SpillWait,
    /// The route's hosted model, on this condition.
    External(ExternalCondition),
    Refused,
    NoRoute,
    TenantNotAllowed,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Smallest => "smallest",
            Rule::SpillLarger => "spill: larger",
            Rule::SpillWait => "spill: wait",
            Rule::External(ExternalCondition::NoAdequateLocal) => "external: no_adequate_local",
            Rule::External(ExternalCondition::NoLocalCapacity) => "external: no_local_capacity",
            Rule::Refused => "refused",
            Rule::NoRoute => "no route",
            Rule::TenantNotAllowed => "tenant not allowed",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The class the decision was made with: the declared one (or the policy's default),
    /// raised to what the text scan found where the route enforces inference.
    pub data_class: DataClass,
    /// The class the caller declared (or the policy's default).
    pub declared: DataClass,
    /// The class the text scan's findings set, if any (whether or not the route enforces it).
    pub inferred: Option<DataClass>,
    /// The route that matched (empty when none did).
    pub route: String,
    pub rule: Rule,
    pub outcome: Result<Target, Refusal>,
    /// Embed and classify: the vector space or label set the request is served from.
    pub space: Option<String>,
    pub(super) trace: Trace,
}

/// Everything `decide` reads besides the request.
pub struct Inputs<'a> {
    pub policy: &'a Policy,
    pub fleet: &'a FleetSnapshot,
    pub providers: &'a BTreeMap<String, ProviderView>,
    pub budgets: &'a Budgets,
}

pub fn decide(inputs: &Inputs<'_>, req: &RouteRequest, rng: &mut impl Rng) -> Decision {
    let declared = req.data_class.unwrap_or(inputs.policy.default_data_class);
    let inferred = inputs.policy.floors.inferred(&req.tenant, &req.findings);
    // 1. the route, by the declared class; then the class it decides with: what the text
    //    holds can only raise it, where the route enforces inference
    let (index, route) = match match_route(inputs.policy, req, declared) {
        Ok(r) => r,
        Err(mut d) => {
            d.inferred = inferred;
            return *d;
        }
    };
    let (data_class, inferred) = match (route.inference, inferred) {
        (InferenceMode::Enforce, Some(i)) => (declared.max(i), Some(i)),
        (InferenceMode::Report, i) => (declared, i),
        _ => (declared, None),
    };
    let mut d = Decision {
        data_class,
        declared,
        inferred,
        route: route.name.clone(),
        rule: Rule::Refused,
        outcome: Err(Refusal::NoAdequateModel(String::new())),
        space: None,
        trace: Trace {
            route: Some(index),
            ..Trace::default()
        },
    };
    // embeddings and classifications come from one vector space / label set only
    d.trace.wanted = match wanted(inputs.fleet, route, req) {
        Ok(w) => w,
        Err(why) => {
            d.outcome = Err(Refusal::NoAdequateModel(why));
            return d;
        }
    };
    let need = needs(route, req, d.trace.wanted.as_ref());
    d.trace.need_quality = need.quality;
    d.trace.need_context = need.context;
    d.trace.latency = need.latency;

    // 2. candidates: the task's rungs whose model can serve the request at all
    let fleet = inputs.fleet;
    let ladder = fleet.index().ladder(req.task);
    let mut rungs: Vec<usize> = Vec::with_capacity(ladder.len());
    for (i, rung) in ladder.iter().enumerate() {
        match rung_unfit(fleet.model_of(rung), route, req, &d.trace, &need) {
            Some(why) => d.trace.notes.push(Note::Rung {
                rung: i as u32,
                why,
            }),
            None => rungs.push(i),
        }
    }

    // 3. adequacy: the smallest rung with a node that can serve (a free one, if found on the way)
    let fit = |s: Slot| {
        let (n, m) = fleet.at(s);
        slot_unfit(n, m, req, d.trace.latency).is_none()
    };
    let mut first = None;
    for (at, &i) in rungs.iter().enumerate() {
        match pick(fleet, &ladder[i], &fit, rng) {
            Pick::Free(s) => {
                first = Some((at, Some(s)));
                break;
            }
            Pick::Full => {
                first = Some((at, None));
                break;
            }
            Pick::Unfit => {}
        }
    }
    let Some((smallest_at, free)) = first else {
        for &i in &rungs {
            d.trace.notes.push(Note::Slots { rung: i as u32 });
        }
        return fallback(
            d,
            inputs,
            route,
            req,
            ExternalCondition::NoAdequateLocal,
            &need,
        );
    };
    let smallest = fleet.model_of(&ladder[rungs[smallest_at]]);
    // one space, one dimension count: a model that declares the space with other
    // dimensions is not one of it
    for &i in &rungs {
        let m = fleet.model_of(&ladder[i]);
        let disagrees = matches!(req.task, Task::Embed | Task::Classify)
            && !(m.dimensions == smallest.dimensions
                || m.dimensions == 0
                || smallest.dimensions == 0);
        d.trace.notes.push(if disagrees {
            Note::Rung {
                rung: i as u32,
                why: RungWhy::Dimensions(smallest.dimensions),
            }
        } else {
            Note::Slots { rung: i as u32 }
        });
    }
    rungs.retain(|&i| {
        !d.trace.notes.iter().any(|n| {
            matches!(n, Note::Rung { rung, why: RungWhy::Dimensions(_) } if *rung as usize == i)
        })
    });
    d.space = d
        .trace
        .wanted
        .as_ref()
        .filter(|_| req.task != Task::Generate)
        .map(|w| match w {
            Wanted::Space(s) => s.clone(),
            Wanted::Model(_) => smallest.space.clone(),
        });

    // 4. choose: a free slot of the smallest adequate model, else the route's spill rule
    if let Some(s) = free {
        return local(d, inputs, route, Rule::Smallest, s);
    }
    // a request that names one model queues for it rather than go elsewhere
    let spill = match d.trace.wanted {
        Some(Wanted::Model(_)) => Spill::Wait,
        _ => route.spill,
    };
    let smallest_rung = rungs
        .iter()
        .position(|&i| std::ptr::eq(fleet.model_of(&ladder[i]), smallest))
        .unwrap_or(0);
    match spill {
        Spill::Larger => {
            for &i in rungs.iter().skip(smallest_rung + 1) {
                if let Pick::Free(s) = pick(fleet, &ladder[i], &fit, rng) {
                    return local(d, inputs, route, Rule::SpillLarger, s);
                }
            }
        }
        Spill::Wait => {
            let queued = ladder[rungs[smallest_rung]]
                .slots
                .iter()
                .copied()
                .filter(|&s| fit(s) && fleet.at(s).1.has_queue_room())
                .min_by(|&a, &b| {
                    let ((na, ma), (nb, mb)) = (fleet.at(a), fleet.at(b));
                    ma.load()
                        .total_cmp(&mb.load())
                        .then_with(|| na.id.cmp(&nb.id))
                });
            if let Some(s) = queued {
                return local(d, inputs, route, Rule::SpillWait, s);
            }
        }
        Spill::External => {}
    }
    // 5. fallback
    fallback(
        d,
        inputs,
        route,
        req,
        ExternalCondition::NoLocalCapacity,
        &need,
    )
}

/// What a request needs of a model beyond its task.
struct Needs<'a> {
    quality: f32,
    context: u64,
    /// The tighter of the caller's limit and the route's target, and which it is.
    latency: Option<(u32, &'static str)>,
    /// A learned route's threshold, which stands in for its static floor.
    learned: Option<f32>,
    /// A cascade that judges this request and skips some models.
    cascade: Option<&'a Cascade>,
}

fn needs<'a>(route: &'a Route, req: &RouteRequest, wanted: Option<&Wanted>) -> Needs<'a> {
    // a generation that names one model is not held to the route's target (an evaluation
    // measures the model whatever its speed); the caller's own limit still holds
    let route_target = match (req.task, &req.space) {
        (Task::Generate, Some(_)) => None,
        _ => route.latency_target_ms,
    };
    let latency = match (req.max_latency_ms, route_target) {
        (Some(a), Some(b)) if b < a => Some((b, "route latency target")),
        (Some(a), _) => Some((a, "max_latency_ms")),
        (None, Some(b)) => Some((b, "route latency target")),
        (None, None) => None,
    };
    let learned = match (&route.adequacy, wanted) {
        (Adequacy::Learned(l), None) if req.task == Task::Generate => Some(l.threshold),
        _ => None,
    };
    // a caller that names one model gets it without the route's floor (its own still holds)
    let floor = match wanted {
        Some(Wanted::Model(_)) => 0.0,
        _ if learned.is_some() => 0.0,
        _ => route.min_quality,
    };
    let cascade = match &route.adequacy {
        Adequacy::Cascade(c) if !c.skip.is_empty() && (c.judges(req) || c.judges_start(req)) => {
            Some(c)
        }
        _ => None,
    };
    Needs {
        quality: req.min_quality.unwrap_or(0.0).max(floor),
        context: u64::from(req.prompt_tokens) + u64::from(req.max_tokens),
        latency,
        learned,
        cascade,
    }
}

/// Why no node running this model can serve the request, whatever its state.
fn rung_unfit(
    model: &ModelView,
    route: &Route,
    req: &RouteRequest,
    trace: &Trace,
    need: &Needs<'_>,
) -> Option<RungWhy> {
    if trace
        .wanted
        .as_ref()
        .is_some_and(|w| w.mismatch(model).is_some())
    {
        return Some(RungWhy::Unwanted);
    }
    if let Some(p) = req.larger_than
        && model.parameters <= p
    {
        return Some(RungWhy::NotLarger(p));
    }
    if need.cascade.is_some_and(|c| c.skips(&model.name)) {
        return Some(RungWhy::Skipped);
    }
    if let Some(t) = need.learned {
        match req.p_adequate(&route.name, &model.name) {
            None => return Some(RungWhy::NoHead),
            Some(p) if p < t => return Some(RungWhy::BelowThreshold(p)),
            Some(_) => {}
        }
    }
    if model.quality < need.quality {
        return Some(RungWhy::Quality);
    }
    if u64::from(model.context_length) < need.context {
        return Some(RungWhy::Context);
    }
    if let Some(c) = req.constraint
        && !model.constraints
    {
        return Some(RungWhy::NoConstraints(c));
    }
    if req.tools && !model.tools {
        return Some(RungWhy::NoTools);
    }
    None
}

enum Pick {
    /// A slot with a free slot (power of two choices among them).
    Free(Slot),
    /// Nodes can serve, but none has a free slot.
    Full,
    /// No node of the rung can serve.
    Unfit,
}

/// Draws before a rung is scanned whole: with any free capacity to speak of, a few draws
/// find two free slots, so a large rung is not walked.
const DRAWS: usize = 8;

/// Power of two choices among the rung's free slots: two at random, the less loaded wins
/// (resident slots only, when the rung has one: a cold slot pays a load first).
/// Two are drawn by rejection (uniform over the free slots, like drawing from their list);
/// when draws keep missing, the rung is scanned.
fn pick(
    fleet: &FleetSnapshot,
    rung: &Rung,
    fit: &impl Fn(Slot) -> bool,
    rng: &mut impl Rng,
) -> Pick {
    let slots = &rung.slots;
    let free = |s: Slot| fit(s) && fleet.at(s).1.has_free_slot();
    // a resident model over a cold one; then the less loaded
    let better = |a: Slot, b: Slot| {
        let (ma, mb) = (fleet.at(a).1, fleet.at(b).1);
        if (mb.cold_ms == 0, -mb.load()) > (ma.cold_ms == 0, -ma.load()) {
            b
        } else {
            a
        }
    };
    if slots.len() > DRAWS {
        let n = slots.len();
        let first = (0..DRAWS)
            .map(|_| rng.random_range(0..n))
            .find(|&i| free(slots[i]));
        if let Some(i) = first {
            let second = (0..DRAWS)
                .map(|_| {
                    let j = rng.random_range(0..n - 1);
                    if j >= i { j + 1 } else { j }
                })
                .find(|&j| free(slots[j]));
            if let Some(j) = second {
                return Pick::Free(better(slots[i], slots[j]));
            }
        }
    }
    let mut pool: Vec<Slot> = slots.iter().copied().filter(|&s| free(s)).collect();
    // where the model is resident somewhere, a node that would have to load it is not drawn
    if pool.iter().any(|&s| fleet.at(s).1.cold_ms == 0) {
        pool.retain(|&s| fleet.at(s).1.cold_ms == 0);
    }
    match pool.len() {
        0 if slots.iter().any(|&s| fit(s)) => Pick::Full,
        0 => Pick::Unfit,
        1 => Pick::Free(pool[0]),
        n => {
            let i = rng.random_range(0..n);
            let mut j = rng.random_range(0..n - 1);
            if j >= i {
                j += 1;
            }
            Pick::Free(better(pool[i], pool[j]))
        }
    }
}

fn local(mut d: Decision, inputs: &Inputs<'_>, route: &Route, rule: Rule, s: Slot) -> Decision {
    let (node, model) = inputs.fleet.at(s);
    d.rule = rule;
    d.outcome = Ok(Target::Local {
        node: node.id.clone(),
        addr: node.addr.clone(),
        model: model.name.clone(),
    });
    // a decision always shows where the request could have gone off the box
    if let Some(ext) = &route.external {
        d.trace.notes.push(Note::External(
            if ext.data_classes.contains(&d.data_class) {
                ExternalWhy::Unused
            } else {
                ExternalWhy::UnusedClass
            },
        ));
    }
    d
}

/// Nothing local: the route's hosted model where permitted, else the refusal that says why.
fn fallback(
    mut d: Decision,
    inputs: &Inputs<'_>,
    route: &Route,
    req: &RouteRequest,
    condition: ExternalCondition,
    need: &Needs<'_>,
) -> Decision {
    match external(
        inputs,
        route,
        req,
        d.data_class,
        condition,
        d.trace.wanted.as_ref(),
    ) {
        Ok(t) => {
            d.rule = Rule::External(condition);
            d.outcome = Ok(t);
        }
        Err(ExternalRefusal { kind, why }) => {
            let why_text = match (why, &route.external) {
                (Some(w), Some(ext)) => {
                    d.trace.notes.push(Note::External(w));
                    ExternalWhyView::new(
                        w,
                        ext,
                        (d.data_class, d.declared),
                        req,
                        d.trace.wanted.as_ref(),
                    )
                    .to_string()
                }
                _ => "the route allows no external provider".to_string(),
            };
            let situation = match condition {
                ExternalCondition::NoAdequateLocal => format!(
                    "no adequate local {} model (quality >= {}, context >= {})",
                    req.task, need.quality, need.context
                ),
                ExternalCondition::NoLocalCapacity => format!(
                    "every adequate local {} model is at capacity (spill: {})",
                    req.task,
                    spill_name(route.spill, d.trace.wanted.as_ref())
                ),
            };
            let message = format!("route `{}`: {situation} and {why_text}", route.name);
            d.rule = Rule::Refused;
            d.outcome = Err(match (kind, condition) {
                (RefusalKind::Forbidden, _) => Refusal::Forbidden(message),
                (RefusalKind::OverBudget, _) => Refusal::OverBudget(message),
                (RefusalKind::NotPermitted, ExternalCondition::NoAdequateLocal) => {
                    Refusal::NoAdequateModel(message)
                }
                (RefusalKind::NotPermitted, ExternalCondition::NoLocalCapacity) => {
                    Refusal::NoCapacity(message)
                }
            });
        }
    }
    d
}

fn spill_name(s: Spill, wanted: Option<&Wanted>) -> &'static str {
    match (s, wanted) {
        (_, Some(Wanted::Model(_))) | (Spill::Wait, _) => "wait",
        (Spill::Larger, _) => "larger",
        (Spill::External, _) => "external",
    }
}

/// The first route that serves the request, or the decision that none does.
fn match_route<'p>(
    policy: &'p Policy,
    req: &RouteRequest,
    class: DataClass,
) -> Result<(usize, &'p Route), Box<Decision>> {
    if let Some(found) = policy
        .routes
        .iter()
        .enumerate()
        .find(|(_, r)| route_matches(r, req, class, true))
    {
        return Ok(found);
    }
    let refused = |route: String, rule: Rule, refusal: Refusal| {
        Box::new(Decision {
            data_class: class,
            declared: class,
            inferred: None,
            route,
            rule,
            outcome: Err(refusal),
            space: None,
            trace: Trace::default(),
        })
    };
    // a route that would serve the request for another tenant: this one may not use it
    if let Some(r) = policy
        .routes
        .iter()
        .find(|r| route_matches(r, req, class, false))
    {
        return Err(refused(
            r.name.clone(),
            Rule::TenantNotAllowed,
            Refusal::Forbidden(format!(
                "tenant `{}` may not use route `{}` (it serves {})",
                req.tenant,
                r.name,
                r.tenants
                    .iter()
                    .map(|t| format!("`{t}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        ));
    }
    let named = req
        .route
        .as_deref()
        .map(|r| format!(" named `{r}`"))
        .unwrap_or_default();
    Err(refused(
        String::new(),
        Rule::NoRoute,
        Refusal::NoAdequateModel(format!(
            "no route{named} matches tenant `{}`, task {}, data class {class}",
            req.tenant, req.task
        )),
    ))
}

/// Whether `r` serves the request; `by_tenant` false ignores the route's tenant list.
fn route_matches(r: &Route, req: &RouteRequest, class: DataClass, by_tenant: bool) -> bool {
    req.route.as_ref().is_none_or(|n| &r.name == n)
        && (!by_tenant || r.tenants.is_empty() || r.tenants.contains(&req.tenant))
        && (r.tasks.is_empty() || r.tasks.contains(&req.task))
        && (r.data_classes.is_empty() || r.data_classes.contains(&class))
}
