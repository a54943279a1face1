//! Why a decision passed over each candidate. `decide` records compact notes (a whole rung
//! for one reason, or "judge these slots"), and the reasons are worked out and formatted only
//! when a response or an explain lists them (`Decision::each_exclusion`), so a decision over
//! a large fleet costs what its choice costs, not what its trace would.

use std::fmt;
use std::ops::ControlFlow;

use super::adequacy::{Slow, Wanted, too_slow};
use super::decide::{Decision, Inputs, Target};
use super::index::FleetSnapshot;
use super::types::*;

/// A candidate a decision weighed: a model on a node, or a route's hosted model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Candidate {
    Local { node: String, model: String },
    External { provider: String, model: String },
}

impl fmt::Display for Candidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Candidate::Local { node, model } => write!(f, "{node}/{model}"),
            Candidate::External { provider, model } => write!(f, "external:{provider}/{model}"),
        }
    }
}

/// One candidate that was not chosen, and why (formatted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exclusion {
    pub candidate: Candidate,
    pub reason: String,
}

/// A candidate as the trace sees it, borrowed from the decision's inputs.
#[derive(Debug, Clone, Copy)]
pub enum Who<'a> {
    Local(&'a NodeView, &'a ModelView),
    External(&'a ExternalRule),
}

impl Who<'_> {
    pub fn candidate(&self) -> Candidate {
        match self {
            Who::Local(n, m) => Candidate::Local {
                node: n.id.clone(),
                model: m.name.clone(),
            },
            Who::External(e) => Candidate::External {
                provider: e.provider.clone(),
                model: e.model.clone(),
            },
        }
    }

    pub fn is_external(&self) -> bool {
        matches!(self, Who::External(_))
    }
}

/// Why the whole rung (every node running that model) was passed over.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum RungWhy {
    /// Not the requested model, space or label set.
    Unwanted,
    NotLarger(u64),
    NoHead,
    BelowThreshold(f32),
    /// The route's cascade skips it for a short answer.
    Skipped,
    Quality,
    Context,
    /// The request's output has a constraint the model's agent cannot follow.
    NoConstraints(OutputConstraint),
    /// The conversation uses tools and the model has no tool format.
    NoTools,
    /// Declares the space of the smallest adequate model with other dimensions.
    Dimensions(u32),
}

/// Why the route's hosted model was passed over.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum ExternalWhy {
    Class,
    NamesLocalModel,
    OtherSpace,
    Condition(ExternalCondition),
    NotConfigured,
    ProviderTask,
    /// The provider's API has no form for the request's output constraint.
    ProviderConstraint(OutputConstraint),
    /// Tool calling is served by local models only.
    ProviderTools,
    Budget {
        left_usd: f64,
        cost_usd: f64,
    },
    /// A local model served; the route goes external only on other conditions.
    Unused,
    /// A local model served; the data class may not leave anyway.
    UnusedClass,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Note {
    Rung {
        rung: u32,
        why: RungWhy,
    },
    /// Each slot of the rung is judged when listed: its node's state, else against the outcome.
    Slots {
        rung: u32,
    },
    External(ExternalWhy),
}

/// What a decision checked, kept so that its trace can be worked out later.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Trace {
    pub notes: Vec<Note>,
    pub route: Option<usize>,
    pub wanted: Option<Wanted>,
    pub need_quality: f32,
    pub need_context: u64,
    pub latency: Option<(u32, &'static str)>,
}

/// A reason, unformatted: `kind` groups reasons, `Display` gives the sentence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Why<'a> {
    OtherModel {
        wanted: &'a str,
    },
    OtherSpace {
        kind: &'static str,
        has: &'a str,
        needs: &'a str,
    },
    NotLive,
    FailedAlready,
    NotReady,
    NotLarger(u64),
    NoHead,
    BelowThreshold {
        p: f32,
        threshold: f32,
    },
    Skipped,
    Quality {
        has: f32,
        need: f32,
    },
    Context {
        has: u32,
        need: u64,
    },
    NoConstraints(OutputConstraint),
    NoTools,
    Slow(Slow<'a>),
    Dimensions {
        space: &'a str,
        has: u32,
        smallest: u32,
    },
    SmallerChosen,
    KvFull,
    NoFreeSlot {
        busy: u32,
        of: u32,
    },
    Load {
        load: f64,
        chosen: f64,
    },
    EquallySmall,
    External {
        why: ExternalWhyView<'a>,
    },
}

/// `ExternalWhy` with what its sentence names.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExternalWhyView<'a> {
    why: ExternalWhy,
    rule: &'a ExternalRule,
    class: DataClass,
    /// The class the caller declared, when the text scan raised it to `class`.
    raised_from: Option<DataClass>,
    req: &'a RouteRequest,
    space: Option<&'a Wanted>,
}

impl Why<'_> {
    /// A short label for counting reasons in a large fleet's summary.
    pub fn kind(&self) -> &'static str {
        match self {
            Why::OtherModel { .. } => "not the requested model",
            Why::OtherSpace { .. } => "another space or label set",
            Why::NotLive => "node is not live",
            Why::FailedAlready => "node already failed this request",
            Why::NotReady => "model is not ready",
            Why::NotLarger(_) => "no larger than a model that answered with too little confidence",
            Why::NoHead => "no learned head",
            Why::BelowThreshold { .. } => "P(adequate) below the threshold",
            Why::Skipped => "skipped by the cascade",
            Why::Quality { .. } => "quality below the floor",
            Why::Context { .. } => "context too short",
            Why::NoConstraints(_) => "does not decode under constraints",
            Why::NoTools => "has no tool format",
            Why::Slow(_) => "over the latency limit",
            Why::Dimensions { .. } => "other dimensions",
            Why::SmallerChosen => "a smaller adequate model was chosen",
            Why::KvFull => "its K/V cache budget is full",
            Why::NoFreeSlot { .. } => "no free slot",
            Why::Load { .. } => "more loaded (power of two choices)",
            Why::EquallySmall => "an equally small model was chosen",
            Why::External { .. } => "external",
        }
    }
}

impl fmt::Display for Why<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Why::OtherModel { wanted } => write!(f, "not the requested model `{wanted}`"),
            Why::OtherSpace { kind, has, needs } => {
                write!(f, "{kind} `{has}`, and the request needs `{needs}`")
            }
            Why::NotLive => f.write_str("node is not live"),
            Why::FailedAlready => f.write_str("node already failed this request"),
            Why::NotReady => f.write_str("model is not ready"),
            Why::NotLarger(p) => write!(
                f,
                "cascade: a model of {p} parameters answered with too little confidence, and this one is no larger"
            ),
            Why::NoHead => f.write_str("the route's learned heads have none for this model"),
            Why::BelowThreshold { p, threshold } => write!(
                f,
                "P(adequate) {p:.3} is below the route's threshold {threshold}"
            ),
            Why::Skipped => f.write_str(
                "the route's cascade skips it (`skip`: it rarely keeps an answer it judges)",
            ),
            Why::Quality { has, need } => write!(f, "quality {has} is below the required {need}"),
            Why::Context { has, need } => write!(
                f,
                "context {has} is shorter than prompt + max_tokens ({need})"
            ),
            Why::NoConstraints(c) => write!(
                f,
                "its agent does not report constrained decoding (the request's output follows a {})",
                c.as_str()
            ),
            Why::NoTools => {
                f.write_str("its chat template has no tool format (the conversation uses tools)")
            }
            Why::Slow(s) => s.fmt(f),
            Why::Dimensions {
                space,
                has,
                smallest,
            } => write!(
                f,
                "declares `{space}` with {has} dimensions, but its smallest model has {smallest}"
            ),
            Why::SmallerChosen => f.write_str("a smaller adequate model was chosen"),
            Why::KvFull => f.write_str("its K/V cache budget is full"),
            Why::NoFreeSlot { busy, of } => write!(f, "no free slot ({busy} busy of {of})"),
            Why::Load { load, chosen } => write!(
                f,
                "load {load:.2} against {chosen:.2} on the chosen node (power of two choices)"
            ),
            Why::EquallySmall => f.write_str("an equally small model was chosen"),
            Why::External { why } => why.fmt(f),
        }
    }
}

impl fmt::Display for ExternalWhyView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ext = self.rule;
        let class = self.class;
        match self.why {
            ExternalWhy::Class => {
                write!(
                    f,
                    "external provider `{}` is not permitted for {class} data",
                    ext.provider
                )?;
                self.raised(f)
            }
            ExternalWhy::NamesLocalModel => match self.space {
                Some(Wanted::Model(m) | Wanted::Space(m)) => {
                    write!(f, "the request names the local model `{m}`")
                }
                None => f.write_str("the request names a local model"),
            },
            ExternalWhy::OtherSpace => {
                let needs = match self.space {
                    Some(Wanted::Model(s) | Wanted::Space(s)) => s.as_str(),
                    None => "",
                };
                match &ext.space {
                    Some(other) => write!(
                        f,
                        "`{}` is declared in vector space `{other}`, and the request needs `{needs}`",
                        ext.model
                    ),
                    None => write!(
                        f,
                        "`{}` is declared in no vector space (external.space), and the request needs `{needs}`",
                        ext.model
                    ),
                }
            }
            ExternalWhy::Condition(c) => {
                write!(f, "the route does not go external on {}", c.as_str())
            }
            ExternalWhy::NotConfigured => {
                write!(f, "provider `{}` is not configured", ext.provider)
            }
            ExternalWhy::ProviderTask => write!(
                f,
                "provider `{}` does not serve {} requests",
                ext.provider, self.req.task
            ),
            ExternalWhy::ProviderConstraint(c) => write!(
                f,
                "provider `{}` has no form for a {} constraint on the output",
                ext.provider,
                c.as_str()
            ),
            ExternalWhy::ProviderTools => f.write_str(
                "tool calling is served by local models only (the gateway does not relay calls to a hosted API)",
            ),
            ExternalWhy::Budget { left_usd, cost_usd } => write!(
                f,
                "tenant `{}` has ${left_usd:.4} of its ${} daily budget for `{}` left, and this request may cost ${cost_usd:.4}",
                self.req.tenant, ext.daily_budget_usd, ext.provider
            ),
            ExternalWhy::Unused => {
                f.write_str("a local model can serve (the route goes external only on ")?;
                for (i, c) in ext.conditions.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    f.write_str(c.as_str())?;
                }
                f.write_str(")")
            }
            ExternalWhy::UnusedClass => {
                write!(
                    f,
                    "a local model can serve, and external provider `{}` is not permitted for {class} data",
                    ext.provider
                )?;
                self.raised(f)
            }
        }
    }
}

impl ExternalWhyView<'_> {
    /// Says that the class was raised by the text scan, when it was.
    fn raised(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.raised_from {
            Some(d) => write!(
                f,
                " (declared {d}; raised by what the request's text holds)"
            ),
            None => Ok(()),
        }
    }
}

impl<'a> ExternalWhyView<'a> {
    pub(super) fn new(
        why: ExternalWhy,
        rule: &'a ExternalRule,
        (class, declared): (DataClass, DataClass),
        req: &'a RouteRequest,
        space: Option<&'a Wanted>,
    ) -> Self {
        ExternalWhyView {
            why,
            rule,
            class,
            raised_from: (class != declared).then_some(declared),
            req,
            space,
        }
    }
}

/// Why one slot of a considered rung is not a candidate at all: its node or its latency.
pub(super) fn slot_unfit<'a>(
    node: &'a NodeView,
    model: &'a ModelView,
    req: &RouteRequest,
    latency: Option<(u32, &'static str)>,
) -> Option<Why<'a>> {
    if !node.live {
        Some(Why::NotLive)
    } else if !req.exclude_nodes.is_empty() && req.exclude_nodes.contains(&node.id) {
        Some(Why::FailedAlready)
    } else if !model.ready {
        Some(Why::NotReady)
    } else if let Some((limit, what)) = latency {
        too_slow(node, model, req, limit, what).map(Why::Slow)
    } else {
        None
    }
}

impl Decision {
    /// Every candidate this decision did not choose, with why, in the order they were
    /// weighed: reasons are worked out here, from the same inputs `decide` had.
    /// `f` may stop the walk early (`ControlFlow::Break`).
    pub fn each_exclusion<'a>(
        &'a self,
        inputs: &Inputs<'a>,
        req: &'a RouteRequest,
        mut f: impl FnMut(Who<'a>, Why<'a>) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        let t = &self.trace;
        let fleet = inputs.fleet;
        let route = t.route.and_then(|i| inputs.policy.routes.get(i));
        let ladder = fleet.index().ladder(req.task);
        let chosen = self.chosen(fleet);
        for note in &t.notes {
            match note {
                Note::Rung { rung, why } => {
                    let rung = &ladder[*rung as usize];
                    let m = fleet.model_of(rung);
                    let why = self.rung_why(*why, m, route);
                    for &s in &rung.slots {
                        let (n, m) = fleet.at(s);
                        f(Who::Local(n, m), why)?;
                    }
                }
                Note::Slots { rung } => {
                    for &s in &ladder[*rung as usize].slots {
                        let (n, m) = fleet.at(s);
                        if let Some((cn, cm)) = chosen
                            && std::ptr::eq(n, cn)
                            && std::ptr::eq(m, cm)
                        {
                            continue;
                        }
                        let why = slot_unfit(n, m, req, t.latency)
                            .unwrap_or_else(|| against(m, chosen.map(|c| c.1)));
                        f(Who::Local(n, m), why)?;
                    }
                }
                Note::External(why) => {
                    if let Some((who, why)) = self.external_why(*why, inputs, req) {
                        f(who, why)?;
                    }
                }
            }
        }
        ControlFlow::Continue(())
    }

    /// The route's hosted model and why it was passed over, if it was.
    pub fn external_exclusion<'a>(
        &'a self,
        inputs: &Inputs<'a>,
        req: &'a RouteRequest,
    ) -> Option<(Who<'a>, Why<'a>)> {
        self.trace.notes.iter().find_map(|n| match n {
            Note::External(why) => self.external_why(*why, inputs, req),
            _ => None,
        })
    }

    fn external_why<'a>(
        &'a self,
        why: ExternalWhy,
        inputs: &Inputs<'a>,
        req: &'a RouteRequest,
    ) -> Option<(Who<'a>, Why<'a>)> {
        let route = self.trace.route.and_then(|i| inputs.policy.routes.get(i))?;
        let ext = route.external.as_ref()?;
        let view = ExternalWhyView::new(
            why,
            ext,
            (self.data_class, self.declared),
            req,
            self.trace.wanted.as_ref(),
        );
        Some((Who::External(ext), Why::External { why: view }))
    }

    /// The chosen (node, model), when the decision serves locally.
    pub(super) fn chosen<'a>(
        &self,
        fleet: &'a FleetSnapshot,
    ) -> Option<(&'a NodeView, &'a ModelView)> {
        match &self.outcome {
            Ok(Target::Local { node, model, .. }) => fleet
                .node(node)
                .and_then(|n| n.models.iter().find(|m| &m.name == model).map(|m| (n, m))),
            _ => None,
        }
    }

    /// Whether the trace lists the route's hosted model.
    pub fn passes_over_external(&self) -> bool {
        self.trace
            .notes
            .iter()
            .any(|n| matches!(n, Note::External(_)))
    }

    /// Every exclusion, formatted (explain, tests). A response lists a bounded number.
    pub fn excluded(&self, inputs: &Inputs<'_>, req: &RouteRequest) -> Vec<Exclusion> {
        let mut out = Vec::new();
        let _ = self.each_exclusion(inputs, req, |who, why| {
            out.push(Exclusion {
                candidate: who.candidate(),
                reason: why.to_string(),
            });
            ControlFlow::Continue(())
        });
        out
    }

    pub(super) fn rung_why<'a>(
        &'a self,
        why: RungWhy,
        m: &'a ModelView,
        route: Option<&'a Route>,
    ) -> Why<'a> {
        let t = &self.trace;
        match why {
            RungWhy::Unwanted => match &t.wanted {
                Some(w) => w.mismatch(m).unwrap_or(Why::NotReady),
                None => Why::NotReady,
            },
            RungWhy::NotLarger(p) => Why::NotLarger(p),
            RungWhy::NoHead => Why::NoHead,
            RungWhy::Skipped => Why::Skipped,
            RungWhy::BelowThreshold(p) => Why::BelowThreshold {
                p,
                threshold: match route.map(|r| &r.adequacy) {
                    Some(Adequacy::Learned(l)) => l.threshold,
                    _ => 0.0,
                },
            },
            RungWhy::Quality => Why::Quality {
                has: m.quality,
                need: t.need_quality,
            },
            RungWhy::Context => Why::Context {
                has: m.context_length,
                need: t.need_context,
            },
            RungWhy::NoConstraints(c) => Why::NoConstraints(c),
            RungWhy::NoTools => Why::NoTools,
            RungWhy::Dimensions(smallest) => Why::Dimensions {
                space: &m.space,
                has: m.dimensions,
                smallest,
            },
        }
    }
}

/// Why an adequate slot lost to the outcome: the chosen model, or (when nothing local was
/// chosen) capacity.
fn against<'a>(m: &'a ModelView, chosen: Option<&'a ModelView>) -> Why<'a> {
    let busy = Why::NoFreeSlot {
        busy: m.busy(),
        of: m.max_concurrency,
    };
    let Some(c) = chosen else { return busy };
    if (m.parameters, m.size_bytes) > (c.parameters, c.size_bytes) {
        Why::SmallerChosen
    } else if !m.kv_room {
        Why::KvFull
    } else if !m.has_free_slot() {
        busy
    } else if m.name == c.name {
        Why::Load {
            load: m.load(),
            chosen: c.load(),
        }
    } else {
        Why::EquallySmall
    }
}
