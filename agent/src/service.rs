//! The inference operations behind the gRPC service: validate, admit, run, account.
//!
//! Knows models, admission and the generation loop; does not know `tonic::Status` (errors
//! are `AgentError`, mapped in `grpc`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use edgewise_proto as pb;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::batch::SequenceRequest;
use crate::engine::sampling::SamplingParams;
use crate::error::AgentError;
use crate::generation::Generation;
use crate::models::manifest::{Task, TaskSpec};
use crate::models::{Engine, LoadedModel, Turn, tools};
use crate::node::{Lease, Node};

/// Bounds on what one request may ask for.
pub const MAX_BATCH_TEXTS: usize = 256;
/// Chunks buffered per generation stream: a caller that stops reading pauses generation.
const STREAM_BUFFER: usize = 8;

/// A generation's output: text chunks (the last carries `done`), or, if it ends early, the
/// error in `end`, delivered after every chunk already buffered.
pub struct GenerationStream {
    pub chunks: mpsc::Receiver<pb::GenerateChunk>,
    pub end: oneshot::Receiver<AgentError>,
}

#[derive(Clone)]
pub struct Inference {
    pub node: Arc<Node>,
}

impl Inference {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    /// A lease on the named model of the wanted task, loading it if it is not resident.
    async fn ready(
        &self,
        name: &str,
        wanted: Task,
        call: &'static str,
        deadline: Option<Instant>,
        keep_alive_ms: Option<u64>,
    ) -> Result<Lease, AgentError> {
        if self.node.is_draining() {
            return Err(AgentError::Draining);
        }
        let slot = self.node.slots.get(name).cloned().ok_or_else(|| {
            AgentError::UnknownModel(
                name.to_string(),
                self.node
                    .slots
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
            )
        })?;
        if let Some(m) = &slot.manifest
            && m.task() != wanted
        {
            return Err(AgentError::WrongTask {
                model: name.into(),
                actual: m.task().as_str(),
                wanted: wanted.as_str(),
                call,
            });
        }
        self.node
            .acquire(
                &slot,
                deadline,
                keep_alive_ms.map(std::time::Duration::from_millis),
            )
            .await
    }

    /// Validates and admits a generation; the stream carries text, then the final chunk.
    pub async fn generate(
        &self,
        req: pb::GenerateRequest,
        deadline: Option<Instant>,
    ) -> Result<GenerationStream, AgentError> {
        let arrived = Instant::now();
        let r = self
            .ready(
                &req.model,
                Task::Generate,
                "Generate",
                deadline,
                req.keep_alive_ms,
            )
            .await?;
        let (eos, default_max_tokens) = match &r.model.manifest.spec {
            TaskSpec::Generate(g) if req.ignore_eos => (Vec::new(), g.default_max_tokens),
            TaskSpec::Generate(g) => (g.eos_token_ids.clone(), g.default_max_tokens),
            _ => return Err(AgentError::InvalidRequest("not a generate model".into())),
        };
        let text = match &req.input {
            Some(pb::generate_request::Input::Prompt(p)) => p.clone(),
            Some(pb::generate_request::Input::Chat(c)) => {
                if c.messages.is_empty() {
                    return Err(AgentError::InvalidRequest("chat.messages is empty".into()));
                }
                let turns: Vec<Turn<'_>> = c
                    .messages
                    .iter()
                    .map(|m| Turn {
                        role: &m.role,
                        content: &m.content,
                        tool_calls: &m.tool_calls,
                    })
                    .collect();
                r.model.render_chat(&turns, &req.tools)?
            }
            None => {
                return Err(AgentError::InvalidRequest(
                    "one of prompt or chat is required".into(),
                ));
            }
        };
        let params = sampling_params(&req)?;
        edgewise_proto::contract::check_stops(&req.stop).map_err(AgentError::InvalidRequest)?;
        let prompt = r.model.encode_prompt(&text)?;
        if prompt.is_empty() {
            return Err(AgentError::InvalidRequest("the prompt is empty".into()));
        }
        let max_tokens = if req.max_tokens == 0 {
            default_max_tokens
        } else {
            req.max_tokens
        };
        let ctx = r.model.manifest.context_length as usize;
        if prompt.len() + max_tokens as usize > ctx {
            return Err(AgentError::InvalidRequest(format!(
                "prompt ({} tokens) + max_tokens ({max_tokens}) exceeds the context length ({ctx}) of model `{}`",
                prompt.len(),
                req.model
            )));
        }
        let Engine::Decoder(batch) = &r.model.engine else {
            return Err(AgentError::InvalidRequest(format!(
                "model `{}` is not a decoder",
                req.model
            )));
        };
        let positions = prompt.len() + max_tokens as usize;
        let (need, budget) = (batch.kv_bytes(positions), batch.kv_budget_bytes());
        if need > budget {
            return Err(AgentError::KvBudget {
                model: req.model.clone(),
                positions,
                need,
                budget,
            });
        }
        let calls = tool_calls(&req)?;
        let constrained = req.constraint.is_some() || calls != Calls::Off;
        if constrained && req.ignore_eos {
            return Err(AgentError::InvalidRequest(
                "ignore_eos cannot be combined with a constraint or tools (a constrained output ends when it is complete)".into(),
            ));
        }
        let parallel = req.parallel_tool_calls.unwrap_or(true);
        let (guide, trigger) = match (&req.constraint, &calls) {
            (Some(_), Calls::Auto | Calls::Required(_)) => {
                return Err(AgentError::InvalidRequest(
                    "a constraint and tool calls cannot be combined: send tool_choice none, or no constraint".into(),
                ));
            }
            (Some(c), Calls::Off) => (Some(self.compile(&r.model, c.clone()).await?), None),
            (None, Calls::Off) => (None, None),
            (None, Calls::Required(only)) => {
                let g =
                    tools::calls_grammar(&req.tools, only.as_deref(), parallel && only.is_none());
                (Some(self.compile(&r.model, g).await?), None)
            }
            // free text until the model opens a call; the call itself is constrained
            (None, Calls::Auto) => match r.model.tokenizer.token_to_id(tools::OPEN) {
                Some(open) => {
                    let g = tools::calls_grammar(&req.tools, None, parallel);
                    (None, Some((open, self.compile(&r.model, g).await?)))
                }
                None => (None, None),
            },
        };
        let guard = r
            .slot
            .admission
            .enter(&req.model, &r.slot.stats, deadline)
            .instrument(tracing::info_span!("queue.wait", model = %req.model))
            .await?;
        let (tx, chunks) = mpsc::channel(STREAM_BUFFER);
        let (end_tx, end) = oneshot::channel();
        let (events, events_rx) = mpsc::unbounded_channel();
        let sequence = SequenceRequest {
            prompt,
            max_tokens,
            eos,
            params,
            rng: ChaCha8Rng::seed_from_u64(req.seed.unwrap_or_else(rand::random)),
            deadline,
            events,
            guide,
            trigger,
        };
        let prompt_tokens = sequence.prompt.len() as u32;
        if batch.submit(sequence).is_err() {
            return Err(AgentError::NotReady {
                model: req.model.clone(),
                state: "failed",
                reason: "its decode thread has stopped".into(),
            });
        }
        let job = Generation {
            slot: r.slot.clone(),
            model: r.model.clone(),
            _lease: r,
            prompt_tokens,
            stops: req.stop,
            deadline,
            arrived,
            events: events_rx,
            constrained,
            calls: (calls != Calls::Off).then(tools::CallParser::default),
            judge_after: req.judge_after_tokens,
        };
        // the generation is the caller's request still: its spans stay in the caller's trace
        let span = tracing::info_span!("inference", model = %req.model, task = "generate");
        tokio::spawn(job.run(tx, end_tx, guard).instrument(span));
        Ok(GenerationStream { chunks, end })
    }

    /// A request's constraint compiled for `model`'s vocabulary (off the async threads: the
    /// first compile of a large schema takes milliseconds; later ones come from the cache).
    async fn compile(
        &self,
        model: &Arc<LoadedModel>,
        c: pb::Constraint,
    ) -> Result<edgewise_constraint::Guide, AgentError> {
        let model = model.clone();
        tokio::task::spawn_blocking(move || {
            let vocab = model
                .vocabulary()
                .map_err(|message| AgentError::Inference {
                    model: model.manifest.name.clone(),
                    message: format!("cannot compile constraints: {message}"),
                })?;
            vocab
                .compile(&c)
                .map_err(|e| AgentError::InvalidRequest(e.to_string()))
        })
        .await
        .map_err(|e| AgentError::Inference {
            model: String::new(),
            message: format!("constraint compile task failed: {e}"),
        })?
    }

    pub async fn embed(
        &self,
        req: pb::EmbedRequest,
        deadline: Option<Instant>,
    ) -> Result<pb::EmbedResponse, AgentError> {
        let (rows, tokens) = self
            .encode(
                &req.model,
                &req.texts,
                (Task::Embed, "Embed"),
                deadline,
                req.keep_alive_ms,
            )
            .await?;
        let space = self.space_of(&req.model);
        Ok(pb::EmbedResponse {
            embeddings: rows
                .into_iter()
                .map(|values| pb::Embedding { values })
                .collect(),
            usage: Some(pb::Usage {
                prompt_tokens: tokens,
                completion_tokens: 0,
            }),
            model: req.model,
            space,
        })
    }

    /// The model's vector space or label set (empty for an unknown model).
    fn space_of(&self, model: &str) -> String {
        self.node
            .slots
            .get(model)
            .and_then(|s| s.manifest.as_ref())
            .and_then(|m| m.space())
            .map(|(s, _)| s.to_string())
            .unwrap_or_default()
    }

    pub async fn classify(
        &self,
        req: pb::ClassifyRequest,
        deadline: Option<Instant>,
    ) -> Result<pb::ClassifyResponse, AgentError> {
        let labels = match self
            .node
            .slots
            .get(&req.model)
            .and_then(|s| s.manifest.as_ref())
            .map(|m| &m.spec)
        {
            Some(TaskSpec::Classify(c)) => c.labels.clone(),
            _ => Vec::new(),
        };
        let (rows, tokens) = self
            .encode(
                &req.model,
                &req.texts,
                (Task::Classify, "Classify"),
                deadline,
                req.keep_alive_ms,
            )
            .await?;
        let results = rows
            .into_iter()
            .map(|probs| {
                let mut scored: Vec<pb::LabelScore> = labels
                    .iter()
                    .zip(probs)
                    .map(|(l, p)| pb::LabelScore {
                        label: l.clone(),
                        probability: p,
                    })
                    .collect();
                scored.sort_by(|a, b| b.probability.total_cmp(&a.probability));
                pb::Classification { labels: scored }
            })
            .collect();
        Ok(pb::ClassifyResponse {
            results,
            usage: Some(pb::Usage {
                prompt_tokens: tokens,
                completion_tokens: 0,
            }),
            label_set: self.space_of(&req.model),
            model: req.model,
        })
    }

    async fn encode(
        &self,
        model: &str,
        texts: &[String],
        (task, call): (Task, &'static str),
        deadline: Option<Instant>,
        keep_alive_ms: Option<u64>,
    ) -> Result<(Vec<Vec<f32>>, u32), AgentError> {
        if texts.is_empty() {
            return Err(AgentError::InvalidRequest("texts is empty".into()));
        }
        if texts.len() > MAX_BATCH_TEXTS {
            return Err(AgentError::InvalidRequest(format!(
                "{} texts in one request; the limit is {MAX_BATCH_TEXTS}",
                texts.len()
            )));
        }
        let r = self
            .ready(model, task, call, deadline, keep_alive_ms)
            .await?;
        let ids = r.model.encode_batch(texts)?;
        let tokens = ids.iter().map(Vec::len).sum::<usize>() as u32;
        let started = Instant::now();
        let _guard = r
            .slot
            .admission
            .enter(model, &r.slot.stats, deadline)
            .instrument(tracing::info_span!("queue.wait", model = %model))
            .await?;
        let batcher = r.batcher.clone().ok_or_else(|| {
            AgentError::InvalidRequest(format!("model `{model}` is not an encoder"))
        })?;
        let stats = &r.slot.stats;
        let result = batcher
            .run(ids)
            .instrument(tracing::info_span!("inference", model = %model, task = call))
            .await;
        stats.requests_total.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(rows) => {
                stats.record_latency(started.elapsed(), None);
                Ok((rows, tokens))
            }
            Err(e) => {
                stats.errors_total.fetch_add(1, Ordering::Relaxed);
                Err(AgentError::Inference {
                    model: model.into(),
                    message: e.0,
                })
            }
        }
    }
}

fn sampling_params(req: &pb::GenerateRequest) -> Result<SamplingParams, AgentError> {
    if !req.temperature.is_finite() || !(0.0..=5.0).contains(&req.temperature) {
        return Err(AgentError::InvalidRequest(format!(
            "temperature {} must be in 0..=5",
            req.temperature
        )));
    }
    if !req.top_p.is_finite() || !(0.0..=1.0).contains(&req.top_p) {
        return Err(AgentError::InvalidRequest(format!(
            "top_p {} must be in 0..=1",
            req.top_p
        )));
    }
    Ok(SamplingParams {
        temperature: req.temperature,
        top_p: req.top_p,
        top_k: req.top_k as usize,
    })
}

/// The deadline a request's `grpc-timeout` sets (capped at a day), or INVALID_ARGUMENT for
/// a header that is not a timeout.
pub fn deadline_of(metadata: &tonic::metadata::MetadataMap) -> Result<Option<Instant>, AgentError> {
    let timeout = edgewise_proto::grpc_timeout(metadata).map_err(AgentError::InvalidRequest)?;
    Ok(timeout.map(|t| Instant::now() + t))
}

/// Whether a generation may or must call its tools.
#[derive(Debug, PartialEq)]
enum Calls {
    Off,
    Auto,
    /// Must call (one tool by name, or any).
    Required(Option<String>),
}

fn tool_calls(req: &pb::GenerateRequest) -> Result<Calls, AgentError> {
    use pb::tool_choice::Kind;
    let invalid = |m: String| Err(AgentError::InvalidRequest(m));
    let choice = req.tool_choice.as_ref().and_then(|c| c.kind.as_ref());
    if req.tools.is_empty() {
        return match choice {
            None | Some(Kind::None(_)) => Ok(Calls::Off),
            Some(_) => invalid("tool_choice needs tools".into()),
        };
    }
    if !matches!(req.input, Some(pb::generate_request::Input::Chat(_))) {
        return invalid("tools need chat messages (the model's template shows them)".into());
    }
    Ok(match choice {
        None | Some(Kind::Auto(_)) => Calls::Auto,
        Some(Kind::None(_)) => Calls::Off,
        Some(Kind::Required(_)) => Calls::Required(None),
        Some(Kind::Function(name)) => {
            if !req.tools.iter().any(|t| &t.name == name) {
                return invalid(format!(
                    "tool_choice names `{name}`, which is not one of the tools"
                ));
            }
            Calls::Required(Some(name.clone()))
        }
    })
}
