//! The inference operations behind the gRPC service: validate, admit, run, account.
//!
//! Knows models, admission and the generation loop; does not know `tonic::Status` (errors
//! are `AgentError`, mapped in `grpc`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use edgewise_proto as pb;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::engine::sampling::{SamplingParams, sample};
use crate::engine::text::{Detokenizer, TextStream};
use crate::error::AgentError;
use crate::models::manifest::{Task, TaskSpec};
use crate::models::{Engine, LoadedModel, Turn};
use crate::node::{ModelSlot, Node};
use crate::scheduler::{Batcher, SlotGuard};

/// Bounds on what one request may ask for.
pub const MAX_BATCH_TEXTS: usize = 256;
pub const MAX_STOP_SEQUENCES: usize = 8;
pub const MAX_STOP_LEN: usize = 64;
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

struct Ready {
    slot: Arc<ModelSlot>,
    model: Arc<LoadedModel>,
    batcher: Option<Batcher>,
}

impl Inference {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    fn ready(&self, name: &str, wanted: Task, call: &'static str) -> Result<Ready, AgentError> {
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
        match slot.ready() {
            Some((model, batcher)) => Ok(Ready {
                slot,
                model,
                batcher,
            }),
            None => {
                let (state, reason) = slot.state_name();
                let reason = if reason.is_empty() {
                    "still loading".to_string()
                } else {
                    reason
                };
                Err(AgentError::NotReady {
                    model: name.into(),
                    state,
                    reason,
                })
            }
        }
    }

    /// Validates and admits a generation; the stream carries text, then the final chunk.
    pub async fn generate(
        &self,
        req: pb::GenerateRequest,
        deadline: Option<Instant>,
    ) -> Result<GenerationStream, AgentError> {
        let arrived = Instant::now();
        let r = self.ready(&req.model, Task::Generate, "Generate")?;
        let (eos, default_max_tokens) = match &r.model.manifest.spec {
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
                    })
                    .collect();
                r.model.render_chat(&turns)?
            }
            None => {
                return Err(AgentError::InvalidRequest(
                    "one of prompt or chat is required".into(),
                ));
            }
        };
        let params = sampling_params(&req)?;
        if req.stop.len() > MAX_STOP_SEQUENCES || req.stop.iter().any(|s| s.len() > MAX_STOP_LEN) {
            return Err(AgentError::InvalidRequest(format!(
                "stop: at most {MAX_STOP_SEQUENCES} sequences of at most {MAX_STOP_LEN} bytes"
            )));
        }
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
        let guard = r
            .slot
            .admission
            .enter(&req.model, &r.slot.stats, deadline)
            .instrument(tracing::info_span!("queue.wait", model = %req.model))
            .await?;
        let (tx, chunks) = mpsc::channel(STREAM_BUFFER);
        let (end_tx, end) = oneshot::channel();
        let job = Generation {
            slot: r.slot,
            model: r.model,
            eos,
            prompt,
            max_tokens,
            params,
            rng: ChaCha8Rng::seed_from_u64(req.seed.unwrap_or_else(rand::random)),
            stops: req.stop,
            deadline,
            arrived,
        };
        // the generation is the caller's request still: its spans stay in the caller's trace
        let span = tracing::info_span!("inference", model = %req.model, task = "generate");
        tokio::spawn(job.run(tx, end_tx, guard).instrument(span));
        Ok(GenerationStream { chunks, end })
    }

    pub async fn embed(
        &self,
        req: pb::EmbedRequest,
        deadline: Option<Instant>,
    ) -> Result<pb::EmbedResponse, AgentError> {
        let (rows, tokens) = self
            .encode(&req.model, &req.texts, Task::Embed, "Embed", deadline)
            .await?;
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
        })
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
            .encode(&req.model, &req.texts, Task::Classify, "Classify", deadline)
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
            model: req.model,
        })
    }

    async fn encode(
        &self,
        model: &str,
        texts: &[String],
        task: Task,
        call: &'static str,
        deadline: Option<Instant>,
    ) -> Result<(Vec<Vec<f32>>, u32), AgentError> {
        let r = self.ready(model, task, call)?;
        if texts.is_empty() {
            return Err(AgentError::InvalidRequest("texts is empty".into()));
        }
        if texts.len() > MAX_BATCH_TEXTS {
            return Err(AgentError::InvalidRequest(format!(
                "{} texts in one request; the limit is {MAX_BATCH_TEXTS}",
                texts.len()
            )));
        }
        let ids = r.model.encode_batch(texts)?;
        let tokens = ids.iter().map(Vec::len).sum::<usize>() as u32;
        let started = Instant::now();
        let _guard = r
            .slot
            .admission
            .enter(model, &r.slot.stats, deadline)
            .instrument(tracing::info_span!("queue.wait", model = %model))
            .await?;
        let batcher = r.batcher.ok_or_else(|| {
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

/// One admitted generation, run as its own task.
struct Generation {
    slot: Arc<ModelSlot>,
    model: Arc<LoadedModel>,
    eos: Vec<u32>,
    prompt: Vec<u32>,
    max_tokens: u32,
    params: SamplingParams,
    rng: ChaCha8Rng,
    stops: Vec<String>,
    deadline: Option<Instant>,
    arrived: Instant,
}

enum Stop {
    Finished(pb::FinishReason),
    /// The caller went away: nothing more to send.
    Gone,
    Failed(AgentError),
}

impl Generation {
    async fn run(
        mut self,
        tx: mpsc::Sender<pb::GenerateChunk>,
        end: oneshot::Sender<AgentError>,
        _slot: SlotGuard,
    ) {
        let stats = self.slot.stats.clone();
        let mut generated: Vec<u32> = Vec::new();
        let mut text = TextStream::new(std::mem::take(&mut self.stops));
        let mut detok = Detokenizer::default();
        let mut first_token_at = None;
        let outcome = self
            .decode_loop(
                &tx,
                &mut generated,
                &mut detok,
                &mut text,
                &mut first_token_at,
            )
            .await;
        let n = generated.len() as u32;
        stats
            .tokens_generated_total
            .fetch_add(u64::from(n), Ordering::Relaxed);
        stats.requests_total.fetch_add(1, Ordering::Relaxed);
        let ttft = first_token_at.map(|t: Instant| t.duration_since(self.arrived));
        if let Some(t) = ttft {
            stats.time_to_first_token.observe(t.as_secs_f64());
        }
        let tpot = match (first_token_at, n) {
            (Some(t), n) if n > 1 => Some(t.elapsed() / (n - 1)),
            _ => None,
        };
        match outcome {
            Stop::Finished(reason) => {
                stats.record_latency(self.arrived.elapsed(), tpot);
                let tail = if reason == pb::FinishReason::StopSequence {
                    String::new()
                } else {
                    let held = detok.finish(|ids| self.model.decode(ids));
                    let pushed = text.push(&held);
                    pushed.text + &text.finish()
                };
                let done = pb::GenerateDone {
                    finish_reason: reason as i32,
                    usage: Some(pb::Usage {
                        prompt_tokens: self.prompt.len() as u32,
                        completion_tokens: n,
                    }),
                    time_to_first_token_ms: ttft.map_or(0.0, |d| d.as_secs_f64() * 1e3),
                    time_per_output_token_ms: tpot.map_or(0.0, |d| d.as_secs_f64() * 1e3),
                };
                let _ = tx
                    .send(pb::GenerateChunk {
                        text: tail,
                        done: Some(done),
                    })
                    .await;
            }
            Stop::Gone => {
                stats.cancelled_total.fetch_add(1, Ordering::Relaxed);
            }
            Stop::Failed(e) => {
                if matches!(e, AgentError::DeadlineExceeded(_)) {
                    stats.cancelled_total.fetch_add(1, Ordering::Relaxed);
                } else {
                    stats.errors_total.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(model = %self.model.manifest.name, error = %e, "generation failed");
                }
                let _ = end.send(e);
            }
        }
    }

    fn past_deadline(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    async fn decode_loop(
        &mut self,
        tx: &mpsc::Sender<pb::GenerateChunk>,
        generated: &mut Vec<u32>,
        detok: &mut Detokenizer,
        text: &mut TextStream,
        first_token_at: &mut Option<Instant>,
    ) -> Stop {
        let name = self.model.manifest.name.clone();
        let Engine::Decoder(_) = &self.model.engine else {
            return Stop::Failed(AgentError::InvalidRequest(format!(
                "model `{name}` is not a decoder"
            )));
        };
        let mut cache = None;
        let mut feed = self.prompt.clone();
        loop {
            // checked before every step: a caller that left or a passed deadline stops here
            if tx.is_closed() {
                return Stop::Gone;
            }
            if self.past_deadline() {
                return Stop::Failed(AgentError::DeadlineExceeded(format!(
                    "after {} generated tokens",
                    generated.len()
                )));
            }
            let model = self.model.clone();
            let step_feed = std::mem::take(&mut feed);
            let mut c = cache.take();
            let result = tokio::task::spawn_blocking(move || {
                let Engine::Decoder(d) = &model.engine else {
                    return Err(crate::engine::EngineError("not a decoder".into()));
                };
                let cache = match c.as_mut() {
                    Some(c) => c,
                    None => c.insert(d.new_cache()?),
                };
                let logits = d.step(cache, &step_feed)?;
                Ok::<_, crate::engine::EngineError>((c, logits))
            })
            .await;
            let (c, logits) = match result {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => {
                    return Stop::Failed(AgentError::Inference {
                        model: name,
                        message: e.0,
                    });
                }
                Err(e) => {
                    return Stop::Failed(AgentError::Inference {
                        model: name,
                        message: format!("inference task failed: {e}"),
                    });
                }
            };
            cache = c;
            let token = sample(&logits, &self.params, &mut self.rng);
            first_token_at.get_or_insert_with(Instant::now);
            if self.eos.contains(&token) {
                return Stop::Finished(pb::FinishReason::Stop);
            }
            generated.push(token);
            let piece = detok.push(token, |ids| self.model.decode(ids));
            let pushed = text.push(&piece);
            if !pushed.text.is_empty() {
                let chunk = pb::GenerateChunk {
                    text: pushed.text,
                    done: None,
                };
                let sent = match self.deadline {
                    Some(d) => match tokio::time::timeout_at(d.into(), tx.send(chunk)).await {
                        Ok(r) => r,
                        Err(_) => {
                            return Stop::Failed(AgentError::DeadlineExceeded(format!(
                                "after {} generated tokens (the caller was not reading)",
                                generated.len()
                            )));
                        }
                    },
                    None => tx.send(chunk).await,
                };
                if sent.is_err() {
                    return Stop::Gone;
                }
            }
            if pushed.stopped {
                return Stop::Finished(pb::FinishReason::StopSequence);
            }
            if generated.len() as u32 >= self.max_tokens {
                return Stop::Finished(pb::FinishReason::Length);
            }
            feed = vec![token];
        }
    }
}

/// Deadline from a gRPC timeout, capped so that absurd values do not overflow.
pub fn deadline_from(timeout: Option<Duration>) -> Option<Instant> {
    timeout.map(|t| Instant::now() + t.min(Duration::from_secs(24 * 3600)))
}
