//! `edgewise eval run`: every item of a set against each local generate model of the fleet,
//! through the gateway (the model pinned by name, greedy), recording per item and model
//! whether it was right, its tokens, its latency and the agent's confidence signals.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use edgewise_proto as pb;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::EvalError;
use super::items::{self, Item};
use crate::client::Caller;

/// One item answered by one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// The set's file stem (`exact-answers`, `mmlu-200`).
    pub set: String,
    pub line: usize,
    pub group: String,
    pub model: String,
    pub parameters: u64,
    pub size_bytes: u64,
    pub correct: bool,
    /// The hosted model's recorded outcome (`None`: not recorded, taken as right).
    pub hosted_correct: Option<bool>,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub latency_ms: f64,
    pub mean_logprob: f32,
    pub min_logprob: f32,
    pub p10_logprob: f32,
    /// The answer was cut at `max_tokens` (a cascade never keeps it as confident).
    #[serde(default)]
    pub cut: bool,
    /// The learned estimator's P(adequate) for this item and model, when one was estimated
    /// (cross-fitted by `eval report` and `calibrate`; never written by `eval run`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p_adequate: Option<f32>,
    pub reply: String,
}

#[cfg(test)]
impl Outcome {
    /// An outcome of item `line` of set `s` (group `g`) for tests: hosted right, every signal
    /// `logprob`, not cut.
    pub(crate) fn example(
        line: usize,
        model: &str,
        parameters: u64,
        correct: bool,
        logprob: f32,
    ) -> Self {
        Outcome {
            set: "s".into(),
            line,
            group: "g".into(),
            model: model.into(),
            parameters,
            size_bytes: parameters,
            correct,
            hosted_correct: Some(true),
            prompt_tokens: 10,
            completion_tokens: 2,
            latency_ms: 1.0,
            mean_logprob: logprob,
            min_logprob: logprob,
            p10_logprob: logprob,
            cut: false,
            p_adequate: None,
            reply: String::new(),
        }
    }
}

/// A local generate model as the fleet reports it.
#[derive(Debug, Clone)]
pub struct LocalModel {
    pub name: String,
    pub parameters: u64,
    pub size_bytes: u64,
}

/// The fleet's ready generate models, smallest first, one entry per name.
pub async fn fleet_models(caller: &Caller) -> Result<Vec<LocalModel>, EvalError> {
    let mut client = caller.connect().await?;
    let status = client
        .fleet_status(caller.request(pb::FleetStatusRequest {})?)
        .await
        .map_err(crate::client::CliError::from)?
        .into_inner();
    let mut out: Vec<LocalModel> = Vec::new();
    for n in status.nodes.iter().filter(|n| n.live) {
        for m in &n.models {
            let ready = m.state() == pb::ModelState::Ready;
            if m.task() == pb::Task::Generate && ready && !out.iter().any(|o| o.name == m.name) {
                out.push(LocalModel {
                    name: m.name.clone(),
                    parameters: m.parameters,
                    size_bytes: m.size_bytes,
                });
            }
        }
    }
    out.sort_by(|a, b| {
        (a.parameters, a.size_bytes, &a.name).cmp(&(b.parameters, b.size_bytes, &b.name))
    });
    Ok(out)
}

/// Runs `set` against `models` and writes the outcomes to `out` (whole, or not at all).
pub async fn run(
    caller: &Caller,
    set: &Path,
    models: &[LocalModel],
    limit: Option<usize>,
    out: &Path,
) -> Result<Vec<Outcome>, EvalError> {
    let mut items = items::load(set)?;
    if let Some(n) = limit {
        items.truncate(n);
    }
    let stem = set
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    // one connection for the run (HTTP/2 carries the concurrent requests)
    let client = caller.connect().await?;
    let mut all = Vec::new();
    for m in models {
        let started = Instant::now();
        // two at a time: the agent batches them, and the order is kept
        let results: Vec<Result<Outcome, EvalError>> = futures::stream::iter(items.iter())
            .map(|item| answer(caller, client.clone(), &stem, item, m))
            .buffered(2)
            .collect()
            .await;
        let outcomes = results.into_iter().collect::<Result<Vec<_>, _>>()?;
        let right = outcomes.iter().filter(|o| o.correct).count();
        eprintln!(
            "[eval] {stem}: {} {right}/{} right ({:.1} %), {:.0} s",
            m.name,
            outcomes.len(),
            100.0 * right as f64 / outcomes.len().max(1) as f64,
            started.elapsed().as_secs_f64()
        );
        all.extend(outcomes);
    }
    write_outcomes(out, &all)?;
    Ok(all)
}

async fn answer(
    caller: &Caller,
    mut client: pb::gateway_client::GatewayClient<tonic::transport::Channel>,
    set: &str,
    item: &Item,
    m: &LocalModel,
) -> Result<Outcome, EvalError> {
    let req = pb::GatewayGenerateRequest {
        request: Some(pb::GenerateRequest {
            model: m.name.clone(),
            input: Some(pb::generate_request::Input::Chat(pb::ChatMessages {
                messages: vec![pb::ChatMessage {
                    role: "user".into(),
                    content: item.message(),
                    ..Default::default()
                }],
            })),
            max_tokens: item.max_tokens(),
            temperature: 0.0,
            constraint: item.constraint(),
            ..Default::default()
        }),
        routing: None,
    };
    let started = Instant::now();
    let mut stream = client
        .generate(caller.request(req)?)
        .await
        .map_err(crate::client::CliError::from)?
        .into_inner();
    let (mut reply, mut done, mut decision) = (String::new(), None, None);
    while let Some(msg) = stream
        .message()
        .await
        .map_err(crate::client::CliError::from)?
    {
        decision = msg.decision.or(decision);
        if let Some(c) = msg.chunk {
            reply.push_str(&c.text);
            done = c.done.or(done);
        }
    }
    let served = match decision.and_then(|d| d.target) {
        Some(pb::decision::Target::Local(t)) => t.model,
        other => format!("{other:?}"),
    };
    if served != m.name {
        return Err(EvalError::Served {
            wanted: m.name.clone(),
            served,
        });
    }
    let done = done.ok_or_else(|| EvalError::Served {
        wanted: m.name.clone(),
        served: "a stream without a final chunk".into(),
    })?;
    let usage = done.usage.unwrap_or_default();
    let c = done.confidence.unwrap_or_default();
    Ok(Outcome {
        set: set.to_string(),
        line: item.line,
        group: item.group.clone(),
        model: m.name.clone(),
        parameters: m.parameters,
        size_bytes: m.size_bytes,
        p_adequate: None,
        correct: item.is_correct(&reply),
        hosted_correct: item.hosted_correct,
        prompt_tokens: usage.prompt_tokens,
        completion_tokens: usage.completion_tokens,
        latency_ms: started.elapsed().as_secs_f64() * 1e3,
        mean_logprob: c.mean_logprob,
        min_logprob: c.min_logprob,
        p10_logprob: c.p10_logprob,
        cut: done.finish_reason() == pb::FinishReason::Length,
        reply,
    })
}

/// JSON lines, through a temporary file renamed into place.
pub fn write_outcomes(path: &Path, outcomes: &[Outcome]) -> Result<(), EvalError> {
    let io = |e| EvalError::Write(path.into(), e);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("partial");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(io)?);
    for o in outcomes {
        serde_json::to_writer(&mut f, o).map_err(|e| io(e.into()))?;
        f.write_all(b"\n").map_err(io)?;
    }
    f.into_inner()
        .map_err(|e| io(e.into_error()))?
        .sync_all()
        .map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

pub fn read_outcomes(path: &Path) -> Result<Vec<Outcome>, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|e| EvalError::Read(path.into(), e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| EvalError::Item {
                file: path.into(),
                line: i + 1,
                message: format!("column {}: {e}", e.column()),
            })
        })
        .collect()
}
