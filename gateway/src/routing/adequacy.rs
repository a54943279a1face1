//! What makes a local model adequate beyond quality and context: the vector space or label
//! set a request must be served from, and whether a model can meet a latency limit (measured,
//! or estimated when it has not been measured yet). Pure, like `decide`.

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
    pub(super) fn mismatch(&self, m: &ModelView) -> Option<String> {
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
pub(super) fn too_slow(
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
