//! One admitted generation, from its sequence in the model's batch loop to the caller's
//! stream: tokens become text (whole characters), stop sequences cut it, chunks are sent
//! with the caller's deadline, and the final chunk carries usage and timings.
//!
//! Holds the request's admission slot until the caller has its last chunk (or is gone), so
//! a caller that stops reading keeps counting against the model's concurrency. Dropping
//! the token receiver ends the sequence in the batch loop at its next step.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use edgewise_proto as pb;
use tokio::sync::{mpsc, oneshot};

use crate::batch::SequenceEvent;
use crate::engine::text::{Detokenizer, TextStream};
use crate::error::AgentError;
use crate::models::LoadedModel;
use crate::models::tools::{CallParser, Piece};
use crate::node::ModelSlot;
use crate::scheduler::SlotGuard;

pub struct Generation {
    pub slot: Arc<ModelSlot>,
    pub model: Arc<LoadedModel>,
    /// Holds the model resident until the generation ends.
    pub _lease: crate::slot::Lease,
    pub prompt_tokens: u32,
    pub stops: Vec<String>,
    pub deadline: Option<Instant>,
    pub arrived: Instant,
    pub events: mpsc::UnboundedReceiver<SequenceEvent>,
    /// The output has a constraint (a stop sequence that cuts it leaves it incomplete).
    pub constrained: bool,
    /// The request has tools: the reply is read for calls, which are sent whole.
    pub calls: Option<CallParser>,
    /// Report the confidence over the first this many tokens when they are out (0: never).
    pub judge_after: u32,
}

enum Stop {
    /// With whether a constrained output was left incomplete.
    Finished(pb::FinishReason, bool),
    /// The caller went away: nothing more to send.
    Gone,
    Failed(AgentError),
}

/// What the stream loop saw, for the final chunk and the stats.
#[derive(Default)]
struct Progress {
    generated: u32,
    first_token_at: Option<Instant>,
    /// Each sampled token's log-probability, end-of-sequence included.
    logprobs: Vec<f32>,
}

/// The summary a cascade escalates on: mean, minimum and 10th percentile (nearest rank) of
/// the generated tokens' log-probabilities. `None` when nothing was generated.
pub fn confidence(logprobs: &[f32]) -> Option<pb::Confidence> {
    if logprobs.is_empty() {
        return None;
    }
    let mut sorted = logprobs.to_vec();
    sorted.sort_by(f32::total_cmp);
    let n = sorted.len();
    // nearest rank: the smallest value with at least 10 % of the values at or below it
    let rank = (n as f64 * 0.1).ceil().max(1.0) as usize;
    Some(pb::Confidence {
        mean_logprob: (sorted.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64) as f32,
        min_logprob: sorted[0],
        p10_logprob: sorted[rank - 1],
        tokens: n as u32,
    })
}

impl Generation {
    pub async fn run(
        mut self,
        tx: mpsc::Sender<pb::GenerateChunk>,
        end: oneshot::Sender<AgentError>,
        _slot: SlotGuard,
    ) {
        let stats = self.slot.stats.clone();
        let mut text = TextStream::new(std::mem::take(&mut self.stops));
        let mut detok = Detokenizer::default();
        let mut progress = Progress::default();
        let outcome = self.stream(&tx, &mut detok, &mut text, &mut progress).await;
        // the sequence ends in the batch loop at its next step (if it has not already)
        self.events.close();
        let n = progress.generated;
        stats
            .tokens_generated_total
            .fetch_add(u64::from(n), Ordering::Relaxed);
        stats.requests_total.fetch_add(1, Ordering::Relaxed);
        let ttft = progress
            .first_token_at
            .map(|t: Instant| t.duration_since(self.arrived));
        if let Some(t) = ttft {
            stats.time_to_first_token.observe(t.as_secs_f64());
        }
        let tpot = match (progress.first_token_at, n) {
            (Some(t), n) if n > 1 => Some(t.elapsed() / (n - 1)),
            _ => None,
        };
        match outcome {
            Stop::Finished(reason, incomplete) => {
                stats.record_latency(self.arrived.elapsed(), tpot);
                let tail = if reason == pb::FinishReason::StopSequence {
                    String::new()
                } else {
                    let held = detok.finish(|ids| self.model.decode(ids));
                    let pushed = text.push(&held);
                    pushed.text + &text.finish()
                };
                // the reply's last calls, and what was held back while it might have been one
                let (tail, tool_calls) = match self.calls.as_mut() {
                    None => (tail, Vec::new()),
                    Some(p) => {
                        let pieces: Vec<Piece> =
                            p.push(&tail).into_iter().chain(p.finish()).collect();
                        split(pieces)
                    }
                };
                let called = self.calls.as_ref().is_some_and(|p| p.calls() > 0);
                let reason = if called && reason == pb::FinishReason::Stop {
                    pb::FinishReason::ToolCalls
                } else {
                    reason
                };
                let done = pb::GenerateDone {
                    finish_reason: reason as i32,
                    usage: Some(pb::Usage {
                        prompt_tokens: self.prompt_tokens,
                        completion_tokens: n,
                    }),
                    time_to_first_token_ms: ttft.map_or(0.0, |d| d.as_secs_f64() * 1e3),
                    time_per_output_token_ms: tpot.map_or(0.0, |d| d.as_secs_f64() * 1e3),
                    confidence: confidence(&progress.logprobs),
                    incomplete,
                };
                let _ = tx
                    .send(pb::GenerateChunk {
                        text: tail,
                        done: Some(done),
                        tool_calls,
                        judged: None,
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

    fn deadline_error(&self, generated: u32, why: &str) -> Stop {
        Stop::Failed(AgentError::DeadlineExceeded(format!(
            "after {generated} generated tokens{why}"
        )))
    }

    async fn stream(
        &mut self,
        tx: &mpsc::Sender<pb::GenerateChunk>,
        detok: &mut Detokenizer,
        text: &mut TextStream,
        progress: &mut Progress,
    ) -> Stop {
        let name = self.model.manifest.name.clone();
        loop {
            let event = tokio::select! {
                e = self.events.recv() => e,
                // a caller that leaves while waiting for a token ends the sequence now
                () = tx.closed() => return Stop::Gone,
            };
            let id = match event {
                Some(SequenceEvent::Token { id, logprob }) => {
                    progress.logprobs.push(logprob);
                    id
                }
                Some(SequenceEvent::Eos { logprob }) => {
                    progress.logprobs.push(logprob);
                    return Stop::Finished(pb::FinishReason::Stop, false);
                }
                Some(SequenceEvent::Length { incomplete }) => {
                    return Stop::Finished(pb::FinishReason::Length, incomplete);
                }
                Some(SequenceEvent::DeadlineExceeded { generated }) => {
                    return self.deadline_error(generated, "");
                }
                Some(SequenceEvent::Failed(message)) => {
                    return Stop::Failed(AgentError::Inference {
                        model: name,
                        message,
                    });
                }
                None => {
                    return Stop::Failed(AgentError::Inference {
                        model: name,
                        message: "the decode thread stopped".into(),
                    });
                }
            };
            progress.first_token_at.get_or_insert_with(Instant::now);
            progress.generated += 1;
            // tokens the batch loop made ahead of a slow reader are not sent past the deadline
            if self.deadline.is_some_and(|d| Instant::now() >= d) {
                return self.deadline_error(progress.generated - 1, "");
            }
            let piece = detok.push(id, |ids| self.model.decode(ids));
            let pushed = text.push(&piece);
            let (out, tool_calls) = match self.calls.as_mut() {
                None => (pushed.text, Vec::new()),
                Some(p) => split(p.push(&pushed.text)),
            };
            // a cascade judges a long answer by its first tokens: their confidence goes out
            // with the chunk that carries the last of them, even an empty one
            let judged = (self.judge_after > 0 && progress.generated == self.judge_after)
                .then(|| confidence(&progress.logprobs))
                .flatten();
            if !out.is_empty() || !tool_calls.is_empty() || judged.is_some() {
                let chunk = pb::GenerateChunk {
                    text: out,
                    done: None,
                    tool_calls,
                    judged,
                };
                let sent = match self.deadline {
                    Some(d) => match tokio::time::timeout_at(d.into(), tx.send(chunk)).await {
                        Ok(r) => r,
                        Err(_) => {
                            return self.deadline_error(
                                progress.generated,
                                " (the caller was not reading)",
                            );
                        }
                    },
                    None => tx.send(chunk).await,
                };
                if sent.is_err() {
                    return Stop::Gone;
                }
            }
            if pushed.stopped {
                // a stop sequence cuts where the constraint did not ask it to: what is left
                // is not known to match
                return Stop::Finished(pb::FinishReason::StopSequence, self.constrained);
            }
        }
    }
}

/// Pieces of a reply as one chunk's text and calls.
fn split(pieces: Vec<Piece>) -> (String, Vec<pb::ToolCall>) {
    let (mut text, mut calls) = (String::new(), Vec::new());
    for p in pieces {
        match p {
            Piece::Text(t) => text.push_str(&t),
            Piece::Call(c) => calls.push(c),
        }
    }
    (text, calls)
}

#[cfg(test)]
mod tests {
    use super::confidence;

    #[test]
    fn confidence_is_mean_min_and_the_lower_tail() {
        assert_eq!(confidence(&[]), None);
        let one = confidence(&[-0.5]).unwrap();
        assert_eq!(
            (
                one.mean_logprob,
                one.min_logprob,
                one.p10_logprob,
                one.tokens
            ),
            (-0.5, -0.5, -0.5, 1)
        );
        // 20 values -0.1 .. -2.0: the 10th percentile by nearest rank is the 2nd smallest
        let v: Vec<f32> = (1..=20).map(|i| -0.1 * i as f32).collect();
        let c = confidence(&v).unwrap();
        assert!((c.mean_logprob + 1.05).abs() < 1e-5, "{c:?}");
        assert!((c.min_logprob + 2.0).abs() < 1e-6);
        assert!((c.p10_logprob + 1.9).abs() < 1e-6);
        assert_eq!(c.tokens, 20);
    }
}
