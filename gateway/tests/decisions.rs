//! Data-driven decision tests: each `tests/decisions/*.yaml` holds a policy, a fleet snapshot,
//! a request and the expected decision. Add a case by adding a file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use edgewise_gateway::routing::*;
use rand::SeedableRng;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    policy: String,
    fleet: Vec<CaseNode>,
    #[serde(default)]
    spent_usd: BTreeMap<String, f64>,
    request: CaseRequest,
    expect: Expect,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseNode {
    node: String,
    #[serde(default = "yes")]
    live: bool,
    models: Vec<CaseModel>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseModel {
    name: String,
    task: String,
    quality: f32,
    parameters: u64,
    #[serde(default)]
    in_flight: u32,
    #[serde(default)]
    queue_depth: u32,
    #[serde(default = "two")]
    max_concurrency: u32,
    #[serde(default = "four")]
    max_queue: u32,
    #[serde(default = "ctx")]
    context_length: u32,
    #[serde(default)]
    ewma_latency_ms: f64,
    #[serde(default)]
    ms_per_token: f64,
    /// The agent's K/V budget has room for another sequence.
    #[serde(default = "yes")]
    kv_room: bool,
    /// Embed: the vector space; classify: the label set.
    space: Option<String>,
    #[serde(default)]
    dimensions: u32,
    /// Not resident on the node: its (measured or estimated) cold-load time; 0: resident.
    #[serde(default)]
    cold_ms: u32,
}

fn two() -> u32 {
    2
}
fn four() -> u32 {
    4
}
fn ctx() -> u32 {
    2048
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseRequest {
    task: String,
    data_class: Option<String>,
    min_quality: Option<f32>,
    route: Option<String>,
    prompt_tokens: u32,
    #[serde(default)]
    max_tokens: u32,
    max_latency_ms: Option<u32>,
    /// Embed and classify: the request's `model` field (a vector space, label set or model).
    model: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    route: Option<String>,
    rule: String,
    /// `node/model`, `external:provider/model`; absent when refused.
    target: Option<String>,
    worst_case_usd: Option<f64>,
    code: Option<String>,
    refusal: Option<String>,
    /// Entries that must be in the trace: `candidate` or `candidate: reason`.
    #[serde(default)]
    excluded: Vec<String>,
    /// The vector space or label set the decision serves from.
    space: Option<String>,
}

fn run_case(path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let case: Case = marked_yaml::from_yaml(0, &text).map_err(|e| format!("bad case file: {e}"))?;
    let policy =
        edgewise_gateway::policy::parse(&[(PathBuf::from("policy.yaml"), case.policy.clone())])
            .map_err(|d| d.to_string())?;
    let fleet = FleetSnapshot::new(
        case.fleet
            .iter()
            .map(|n| NodeView {
                id: n.node.clone(),
                addr: format!("http://{}:7300", n.node),
                live: n.live,
                models: n
                    .models
                    .iter()
                    .map(|m| ModelView {
                        name: m.name.clone(),
                        task: Task::parse(&m.task).unwrap(),
                        ready: true,
                        cold_ms: m.cold_ms,
                        quality: m.quality,
                        parameters: m.parameters,
                        size_bytes: m.parameters,
                        context_length: m.context_length,
                        in_flight: m.in_flight,
                        queue_depth: m.queue_depth,
                        max_concurrency: m.max_concurrency,
                        max_queue: m.max_queue,
                        gateway_in_flight: 0,
                        ewma_latency_ms: m.ewma_latency_ms,
                        ewma_time_per_output_token_ms: m.ms_per_token,
                        kv_room: m.kv_room,
                        space: m.space.clone().unwrap_or_default(),
                        dimensions: m.dimensions,
                        constraints: true,
                        tools: true,
                    })
                    .collect(),
            })
            .collect(),
    );
    let providers = BTreeMap::from([(
        "openai".to_string(),
        ProviderView {
            price: ProviderPrice {
                input_per_million_usd: 1.0,
                output_per_million_usd: 2.0,
            },
            tasks: vec![Task::Generate, Task::Embed],
            default_max_tokens: 256,
            constraints: vec![OutputConstraint::JsonSchema, OutputConstraint::JsonObject],
        },
    )]);
    let budgets = Budgets {
        spent_usd: case
            .spent_usd
            .iter()
            .map(|(p, v)| (("shop".to_string(), p.clone()), *v))
            .collect(),
    };
    let r = &case.request;
    let req = RouteRequest {
        data_class: r
            .data_class
            .as_deref()
            .map(|c| DataClass::parse(c).unwrap()),
        min_quality: r.min_quality,
        max_latency_ms: r.max_latency_ms,
        route: r.route.clone(),
        space: r.model.clone(),
        ..RouteRequest::new(
            "shop",
            Task::parse(&r.task).ok_or("bad task")?,
            r.prompt_tokens,
            r.max_tokens,
        )
    };
    let inputs = Inputs {
        policy: &policy,
        fleet: &fleet,
        providers: &providers,
        budgets: &budgets,
    };
    let d = decide(
        &inputs,
        &req,
        &mut rand_chacha::ChaCha8Rng::seed_from_u64(7),
    );
    let e = &case.expect;
    let mut problems = Vec::new();
    if d.rule.as_str() != e.rule {
        problems.push(format!("rule: got `{}`, want `{}`", d.rule, e.rule));
    }
    if let Some(route) = &e.route
        && &d.route != route
    {
        problems.push(format!("route: got `{}`, want `{route}`", d.route));
    }
    let (target, cost) = match &d.outcome {
        Ok(Target::Local { node, model, .. }) => (Some(format!("{node}/{model}")), None),
        Ok(Target::External {
            provider,
            model,
            worst_case_usd,
            ..
        }) => (
            Some(format!("external:{provider}/{model}")),
            Some(*worst_case_usd),
        ),
        Err(_) => (None, None),
    };
    if target != e.target {
        problems.push(format!("target: got {target:?}, want {:?}", e.target));
    }
    if let Some(want) = e.worst_case_usd
        && cost.is_none_or(|c| (c - want).abs() > 1e-9)
    {
        problems.push(format!("worst_case_usd: got {cost:?}, want {want}"));
    }
    let (code, message) = match &d.outcome {
        Err(Refusal::NoAdequateModel(m)) => (Some("failed_precondition"), Some(m.clone())),
        Err(Refusal::NoCapacity(m)) => (Some("resource_exhausted"), Some(m.clone())),
        Err(Refusal::Forbidden(m)) => (Some("permission_denied"), Some(m.clone())),
        Err(Refusal::OverBudget(m)) => (Some("resource_exhausted"), Some(m.clone())),
        Ok(_) => (None, None),
    };
    if code.map(str::to_string) != e.code {
        problems.push(format!("code: got {code:?}, want {:?}", e.code));
    }
    if e.space.is_some() && d.space != e.space {
        problems.push(format!("space: got {:?}, want {:?}", d.space, e.space));
    }
    if let Some(want) = &e.refusal
        && message.as_ref() != Some(want)
    {
        problems.push(format!("refusal: got {message:?}, want {want:?}"));
    }
    let trace: Vec<String> = d
        .excluded(&inputs, &req)
        .iter()
        .map(|x| format!("{}: {}", x.candidate, x.reason))
        .collect();
    for want in &e.excluded {
        if !trace
            .iter()
            .any(|t| t == want || t.starts_with(&format!("{want}: ")))
        {
            problems.push(format!("excluded: no `{want}` in {trace:?}"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n  "))
    }
}

#[test]
fn every_decision_case_holds() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/decisions");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 8, "the decision cases are missing");
    let failures: Vec<String> = files
        .iter()
        .filter_map(|f| {
            run_case(f)
                .err()
                .map(|e| format!("{}:\n  {e}", f.file_name().unwrap().to_string_lossy()))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}
