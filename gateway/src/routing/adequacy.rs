//! What makes a local model adequate beyond quality and context: the vector space or label
//! set a request must be served from, and whether a model can meet a latency limit (measured,
//! or estimated when it has not been measured yet). Pure, like `decide`.

use std::fmt;

use super::index::FleetSnapshot;
use super::trace::Why;
use super::types::*;

/// What an embed or classify request may be served by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Wanted {
    /// Any model of this vector space or label set.
    Space(String),
    /// This model only (the request named it).
    Model(String),
}

impl Wanted {
    pub(super) fn mismatch<'a>(&'a self, m: &'a ModelView) -> Option<Why<'a>> {
        let kind = if m.task == Task::Classify {
            "label set"
        } else {
            "vector space"
        };
        match self {
            Wanted::Model(n) if &m.name != n => Some(Why::OtherModel { wanted: n }),
            Wanted::Space(s) if &m.space != s => Some(Why::OtherSpace {
                kind,
                has: &m.space,
                needs: s,
            }),
            _ => None,
        }
    }
}

/// The space a request is served from: the one its `model` field names (or the model it
/// names), else the route's pin. A route with no pin (one that matches any task) serves a
/// request that names none only while the fleet's models of the task share one space: it
/// refuses rather than choose between spaces, so it never switches a caller's space.
pub(super) fn wanted(
    fleet: &FleetSnapshot,
    route: &Route,
    req: &RouteRequest,
) -> Result<Option<Wanted>, String> {
    let (pin, kind, key) = match req.task {
        Task::Embed => (route.space.as_ref(), "vector space", "space"),
        Task::Classify => (route.label_set.as_ref(), "label set", "label_set"),
        // a generation names one model or none
        Task::Generate => return Ok(req.space.clone().map(Wanted::Model)),
    };
    // one model per rung: the index already grouped the fleet's models
    let models = || {
        fleet
            .index()
            .ladder(req.task)
            .iter()
            .map(|r| fleet.model_of(r))
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

/// Why a model cannot meet a latency limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Slow<'a> {
    /// `expected_ms` includes `cold_ms`, the wait for the model to load (0: resident).
    Measured {
        expected_ms: f64,
        cold_ms: u32,
        limit: u32,
        what: &'static str,
    },
    Estimated {
        estimate_ms: f64,
        cold_ms: u32,
        from: &'a str,
        limit: u32,
        what: &'static str,
    },
    Unknown {
        task: Task,
        limit: u32,
        what: &'static str,
    },
}

impl fmt::Display for Slow<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Slow::Measured {
                expected_ms,
                cold_ms,
                limit,
                what,
            } => write!(
                f,
                "expected latency {expected_ms:.0} ms{} is over the {limit} ms {what}",
                Cold(*cold_ms)
            ),
            Slow::Estimated {
                estimate_ms,
                cold_ms,
                from,
                limit,
                what,
            } => write!(
                f,
                "not measured yet; estimated {estimate_ms:.0} ms (from {from} on this node, scaled by size){} is over the {limit} ms {what}",
                Cold(*cold_ms)
            ),
            Slow::Unknown { task, limit, what } => write!(
                f,
                "latency unknown (not measured yet, and no measured {task} model on this node to estimate from) with a {limit} ms {what}"
            ),
        }
    }
}

/// ` (cold: +N ms to load)` for a model that is not resident; nothing for one that is.
pub struct Cold(pub u32);

impl fmt::Display for Cold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => Ok(()),
            ms => write!(f, " (cold: +{ms} ms to load)"),
        }
    }
}

/// Why `model` cannot meet a latency limit, if it cannot. A model that is not resident pays
/// its load first (`cold_ms`). A model never measured is not
/// assumed fast: its latency is estimated from the node's closest-sized measured model of the
/// same task (decode is memory-bound, so time scales with the model's bytes), and without
/// one it is excluded.
pub(super) fn too_slow<'a>(
    node: &'a NodeView,
    model: &'a ModelView,
    req: &RouteRequest,
    limit: u32,
    what: &'static str,
) -> Option<Slow<'a>> {
    let cold_ms = model.cold_ms;
    let cold = f64::from(cold_ms);
    if let Some(expected_ms) = model.expected_latency_ms(req.task, req.max_tokens) {
        let expected_ms = expected_ms + cold;
        return (expected_ms > f64::from(limit)).then_some(Slow::Measured {
            expected_ms,
            cold_ms,
            limit,
            what,
        });
    }
    let reference = node
        .models
        .iter()
        .filter(|m| m.task == model.task && m.size_bytes > 0 && m.name != model.name)
        .filter_map(|m| Some((m, m.expected_latency_ms(req.task, req.max_tokens)?)))
        .min_by_key(|(m, _)| m.size_bytes.abs_diff(model.size_bytes));
    match reference {
        Some((r, ms)) => {
            let estimate_ms = ms * model.size_bytes as f64 / r.size_bytes as f64 + cold;
            (estimate_ms > f64::from(limit)).then_some(Slow::Estimated {
                estimate_ms,
                cold_ms,
                from: &r.name,
                limit,
                what,
            })
        }
        None => Some(Slow::Unknown {
            task: model.task,
            limit,
            what,
        }),
    }
}
