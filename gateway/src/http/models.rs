//! What a caller asked to be served by: `model` (`auto`, a route, for embeddings a vector
//! space or a model) and the routing hints from `x-edgewise-*` headers or the body's
//! `edgewise` object, checked against the policy and the fleet.

use std::time::Instant;

use axum::http::HeaderMap;
use edgewise_proto as pb;

use super::api::Front;
use super::invalid;
use super::wire::Hints;
use crate::error::GatewayError;
use crate::requests::Caller;
use crate::routing::Task;
use crate::state::ActivePolicy;

/// Routing hints from the `x-edgewise-*` headers and the body's `edgewise` object (which
/// must agree where both are set), and the route `model` names (`auto`: none).
pub(super) fn routing(
    headers: &HeaderMap,
    body: &Hints,
    model: &str,
    task: Task,
    caller: &Caller,
) -> Result<pb::RoutingHints, GatewayError> {
    // a header sent twice is refused by name (the data class: the strictest wins)
    fn header<'a>(h: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, GatewayError> {
        crate::requests::contract::single(h, name)
    }
    fn both<T: PartialEq + std::fmt::Display>(
        name: &str,
        header: Option<T>,
        body: Option<T>,
    ) -> Result<Option<T>, GatewayError> {
        match (header, body) {
            (Some(h), Some(b)) if h != b => Err(invalid(format!(
                "header x-edgewise-{} `{h}` and body edgewise.{name} `{b}` disagree; send one",
                name.replace('_', "-")
            ))),
            (h, b) => Ok(h.or(b)),
        }
    }
    fn number<T: std::str::FromStr>(
        name: &str,
        v: Option<&str>,
    ) -> Result<Option<T>, GatewayError> {
        v.map(|s| {
            s.parse()
                .map_err(|_| invalid(format!("header {name} `{s}` is not a number")))
        })
        .transpose()
    }
    let data_class = both(
        "data_class",
        crate::requests::contract::data_class_header(headers, "x-edgewise-data-class")?
            .map(|c| c.as_str().to_string()),
        body.data_class.clone(),
    )?;
    let min_quality = both(
        "min_quality",
        number(
            "x-edgewise-min-quality",
            header(headers, "x-edgewise-min-quality")?,
        )?,
        body.min_quality,
    )?;
    let max_latency_ms = both(
        "max_latency_ms",
        number(
            "x-edgewise-max-latency-ms",
            header(headers, "x-edgewise-max-latency-ms")?,
        )?,
        body.max_latency_ms,
    )?;
    let mut route = both(
        "route",
        header(headers, "x-edgewise-route")?.map(str::to_string),
        body.route.clone(),
    )?;
    if let Some(named) = model_route(&caller.policy, model, task, &caller.tenant)? {
        match &route {
            Some(r) if *r != named => {
                return Err(invalid(format!(
                    "`model` `{named}` and the route hint `{r}` disagree; send one"
                )));
            }
            _ => route = Some(named),
        }
    }
    Ok(pb::RoutingHints {
        data_class: data_class.unwrap_or_default(),
        min_quality,
        max_latency_ms,
        route: route.unwrap_or_default(),
    })
}

/// `model`: `auto` (the policy chooses) or the name of a route that serves `task`.
fn model_route(
    policy: &ActivePolicy,
    model: &str,
    task: Task,
    tenant: &str,
) -> Result<Option<String>, GatewayError> {
    if model == "auto" {
        return Ok(None);
    }
    match policy.policy.routes.iter().find(|r| r.name == model) {
        Some(r) if r.tasks.is_empty() || r.tasks.contains(&task) => Ok(Some(r.name.clone())),
        Some(r) => Err(GatewayError::UnknownModel(format!(
            "model `{model}` is a route that does not serve {task} (it serves {})",
            r.tasks
                .iter()
                .map(|t| t.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
        None => {
            let names = visible_models(&policy.policy, task, tenant);
            Err(GatewayError::UnknownModel(format!(
                "model `{}` is not served here; ask for one of: {}",
                model.chars().take(64).collect::<String>(),
                names.join(", ")
            )))
        }
    }
}

/// The fleet's vector spaces (embed) or label sets (classify), each with its models.
pub(super) fn fleet_spaces(
    front: &Front,
    task: Task,
) -> std::collections::BTreeMap<String, Vec<String>> {
    let want = match task {
        Task::Embed => pb::Task::Embed,
        Task::Classify => pb::Task::Classify,
        Task::Generate => pb::Task::Generate,
    } as i32;
    let mut out: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for n in front.state.registry.status(Instant::now()) {
        for m in n
            .models
            .into_iter()
            .filter(|m| m.task == want && !m.space.is_empty())
        {
            let models = out.entry(m.space).or_default();
            if !models.contains(&m.name) {
                models.push(m.name);
            }
        }
    }
    out
}

/// An embeddings `model`: `auto` or a route (routed as for chat), else a vector space or an
/// embedding model of the fleet (sent as the request's model: only that space serves it).
pub(super) fn embedding_model(
    front: &Front,
    model: &str,
    caller: &Caller,
) -> Result<(String, String), GatewayError> {
    let (policy, tenant) = (&caller.policy, caller.tenant.as_str());
    if model == "auto" || policy.policy.routes.iter().any(|r| r.name == model) {
        return Ok((model.to_string(), String::new()));
    }
    let spaces = fleet_spaces(front, Task::Embed);
    if spaces.contains_key(model) || spaces.values().flatten().any(|m| m == model) {
        return Ok(("auto".to_string(), model.to_string()));
    }
    let mut names = visible_models(&policy.policy, Task::Embed, tenant);
    names.extend(spaces.keys().cloned());
    Err(GatewayError::UnknownModel(format!(
        "model `{}` is not served here; ask for one of: {} (a route, or a vector space)",
        model.chars().take(64).collect::<String>(),
        names.join(", ")
    )))
}

/// `auto` and the routes a tenant may use for a task.
pub(super) fn visible_models(
    policy: &crate::routing::Policy,
    task: Task,
    tenant: &str,
) -> Vec<String> {
    std::iter::once("auto".to_string())
        .chain(
            policy
                .routes
                .iter()
                .filter(|r| r.tasks.is_empty() || r.tasks.contains(&task))
                .filter(|r| r.tenants.is_empty() || r.tenants.iter().any(|t| t == tenant))
                .map(|r| r.name.clone()),
        )
        .collect()
}
