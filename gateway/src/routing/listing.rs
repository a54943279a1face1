//! What a response carries of a decision's trace: the first exclusions one by one, the route's
//! hosted model always (it explains a refusal or a fallback), and one line for the rest.
//!
//! A served request must not pay for its trace what its decision did not: on a 1,000-node
//! fleet the decision looks at a handful of slots, while judging every other slot would look
//! at all ten thousand. So a served request's rest is counted per rung, from the notes
//! `decide` left — a rung passed over whole by its reason, a larger model's rung as "a smaller
//! adequate model was chosen", and the other nodes of the chosen model (or of one as small) as
//! such, unjudged. `Detail::Explain`, and any decision that serves nothing locally (it goes to a
//! hosted provider or is refused, and each node's reason is the explanation), judge every slot
//! and count the rest by reason.

use std::fmt::Write as _;
use std::ops::ControlFlow;

use super::decide::{Decision, Inputs};
use super::index::same_rung;
use super::trace::{Note, Who, Why};
use super::types::RouteRequest;

/// How much of the rest of a trace is worked out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    /// A request's response: the rest of a local decision counted per rung.
    Response,
    /// The Explain RPC: every candidate judged, the rest counted by reason.
    Explain,
}

/// One line of a listing: a candidate (`node/model`, `external:provider/model`, or the count
/// of the rest) and why it was not chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub candidate: String,
    pub reason: String,
}

/// A decision's trace as a response carries it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// Local candidates, in the order they were weighed, at most the limit given.
    pub shown: Vec<Listed>,
    /// The route's hosted model, when it was passed over.
    pub external: Option<Listed>,
    /// The rest of the local candidates, counted.
    pub rest: Option<Listed>,
}

/// The kind of reason for the other nodes of the chosen model, or of one as small, in a
/// response (Explain judges each of them).
pub const UNJUDGED: &str =
    "the chosen model or one as small, on another node (Explain judges each)";

/// The most kinds of reason the rest's line names.
const KINDS_SHOWN: usize = 5;

fn label(who: Who<'_>) -> String {
    let (a, b, prefix) = match who {
        Who::Local(n, m) => (n.id.as_str(), m.name.as_str(), ""),
        Who::External(e) => (e.provider.as_str(), e.model.as_str(), "external:"),
    };
    let mut s = String::with_capacity(prefix.len() + a.len() + 1 + b.len());
    s.push_str(prefix);
    s.push_str(a);
    s.push('/');
    s.push_str(b);
    s
}

fn reason(why: Why<'_>) -> String {
    let mut s = String::with_capacity(96);
    let _ = write!(s, "{why}");
    s
}

fn listed(who: Who<'_>, why: Why<'_>) -> Listed {
    Listed {
        candidate: label(who),
        reason: reason(why),
    }
}

impl Decision {
    /// The trace as a response carries it: at most `max` local candidates one by one (less one
    /// when the hosted model is listed too), the hosted model, and the rest counted.
    pub fn listing(
        &self,
        inputs: &Inputs<'_>,
        req: &RouteRequest,
        max: usize,
        detail: Detail,
    ) -> Listing {
        let external = self
            .external_exclusion(inputs, req)
            .map(|(who, why)| listed(who, why));
        let room = max.saturating_sub(usize::from(external.is_some()));
        let per_rung = detail == Detail::Response && self.chosen(inputs.fleet).is_some();
        let mut shown = Vec::with_capacity(room.min(64));
        let mut kinds: Vec<(&'static str, usize)> = Vec::new();
        let mut last: Option<(Why<'_>, String)> = None;
        let _ = self.each_exclusion(inputs, req, |who, why| {
            if who.is_external() {
                ControlFlow::Continue(())
            } else if shown.len() < room {
                // a rung passed over whole gives each of its nodes one reason: formatted once
                let reason = match &last {
                    Some((w, r)) if *w == why => r.clone(),
                    _ => reason(why),
                };
                last = Some((why, reason.clone()));
                shown.push(Listed {
                    candidate: label(who),
                    reason,
                });
                ControlFlow::Continue(())
            } else if per_rung {
                ControlFlow::Break(())
            } else {
                count(&mut kinds, why.kind(), 1);
                ControlFlow::Continue(())
            }
        });
        if per_rung {
            kinds = self.rest_per_rung(inputs, req, shown.len());
        }
        Listing {
            shown,
            external,
            rest: rest_line(kinds),
        }
    }

    /// The local exclusions after the first `skip`, counted per note: what each rung is as a
    /// whole, without judging its slots. Only for a decision with a local target.
    fn rest_per_rung(
        &self,
        inputs: &Inputs<'_>,
        req: &RouteRequest,
        mut skip: usize,
    ) -> Vec<(&'static str, usize)> {
        let fleet = inputs.fleet;
        let ladder = fleet.index().ladder(req.task);
        let route = self.trace.route.and_then(|i| inputs.policy.routes.get(i));
        let chosen = self.chosen(fleet).map(|(_, m)| m);
        let mut kinds = Vec::new();
        for note in &self.trace.notes {
            let (n, kind) = match note {
                Note::Rung { rung, why } => {
                    let rung = &ladder[*rung as usize];
                    let why = self.rung_why(*why, fleet.model_of(rung), route);
                    (rung.slots.len(), why.kind())
                }
                Note::Slots { rung } => {
                    let rung = &ladder[*rung as usize];
                    let m = fleet.model_of(rung);
                    match chosen {
                        Some(c) if (m.parameters, m.size_bytes) > (c.parameters, c.size_bytes) => {
                            (rung.slots.len(), Why::SmallerChosen.kind())
                        }
                        // the chosen slot is no exclusion
                        Some(c) if same_rung(m, c) => (rung.slots.len() - 1, UNJUDGED),
                        _ => (rung.slots.len(), UNJUDGED),
                    }
                }
                Note::External(_) => continue,
            };
            let listed = n.min(skip);
            skip -= listed;
            count(&mut kinds, kind, n - listed);
        }
        kinds
    }
}

fn count(kinds: &mut Vec<(&'static str, usize)>, kind: &'static str, n: usize) {
    if n == 0 {
        return;
    }
    match kinds.iter_mut().find(|(k, _)| *k == kind) {
        Some((_, c)) => *c += n,
        None => kinds.push((kind, n)),
    }
}

/// "… N more candidates" with the commonest kinds of reason.
fn rest_line(mut kinds: Vec<(&'static str, usize)>) -> Option<Listed> {
    let total: usize = kinds.iter().map(|(_, n)| n).sum();
    if total == 0 {
        return None;
    }
    kinds.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let mut reason = String::new();
    for (i, (kind, n)) in kinds.iter().take(KINDS_SHOWN).enumerate() {
        if i > 0 {
            reason.push_str("; ");
        }
        let _ = write!(reason, "{n} × {kind}");
    }
    if kinds.len() > KINDS_SHOWN {
        let _ = write!(reason, "; {} other reasons", kinds.len() - KINDS_SHOWN);
    }
    Some(Listed {
        candidate: format!("… {total} more candidates"),
        reason,
    })
}
