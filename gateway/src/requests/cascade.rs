//! A confidence cascade (a route's `adequacy: cascade`): the smallest adequate local model
//! answers; when the agent's confidence signal for that answer is below the route's
//! threshold, the request is decided again for a larger model only, then for the route's
//! hosted model where its data class permits. The caller receives one answer, and the
//! decision lists every step with its confidence.
//!
//! A short answer (`max_tokens` within the route's bound) is judged whole. A longer one, or
//! one that leaves `max_tokens` unset, is judged by its first `max_tokens`-bound tokens (the
//! agent reports their confidence on the chunk that carries the last of them): those are
//! held, and a kept answer streams on from where they end.
//!
//! Each rung's answer is judged against its own threshold when the route fits one per model
//! (`thresholds`); a model the route `skip`s is never asked first (`decide` passes it over).
//! An answer cut at `max_tokens` is never kept as confident: it escalates whatever its signal.
//!
//! The decisions are `decide`'s, with `larger_than` set: data class, budget and capacity
//! rules hold at every step exactly as for any request. A step that finds nothing larger it
//! may use keeps the last local answer and says why.

use std::time::{Duration, Instant};

use edgewise_proto as pb;

use crate::agents::AgentClient;
use crate::dispatch::{self, Served};
use crate::error::GatewayError;
use crate::external::ExternalCall;
use crate::metrics::Tracker;
use crate::routing::{Cascade, RouteRequest, Signal};
use crate::state::{ActivePolicy, State};

/// The agent's first chunk and the rest of its stream.
pub(super) type Opened = (
    Option<pb::GenerateChunk>,
    tonic::Streaming<pb::GenerateChunk>,
);

pub(super) enum Outcome {
    /// A local answer, whole: the decision that served it (with the steps), its text and
    /// its final chunk.
    Local {
        decision: pb::Decision,
        text: String,
        done: pb::GenerateDone,
    },
    /// A local answer kept by its first tokens: what was held (as one chunk), then the rest
    /// of the agent's stream; the call's decision lists the steps.
    Streaming {
        held: pb::GenerateChunk,
        stream: Box<tonic::Streaming<pb::GenerateChunk>>,
        routed: dispatch::LocalCall,
    },
    /// Escalated to the hosted model: its reservation is made and the decision lists the
    /// local steps before it.
    External(ExternalCall),
}

/// A rung's answer as far as the cascade reads it before judging.
enum Answer {
    Whole(String, pb::GenerateDone),
    /// The first tokens (one chunk), their confidence, and the stream that goes on.
    Begun(
        pb::GenerateChunk,
        pb::Confidence,
        Box<tonic::Streaming<pb::GenerateChunk>>,
    ),
}

impl Answer {
    /// The signal the rung is judged by (`None`: nothing to judge), and whether the answer
    /// was cut at `max_tokens`.
    fn judged(&self, signal: Signal) -> (Option<pb::Confidence>, Option<f32>, bool) {
        match self {
            Answer::Whole(_, done) => {
                // an answer cut at max_tokens is unfinished however sure each token was
                // ("The square root of 144 is approximately equal to"): never kept
                let cut = done.finish_reason() == pb::FinishReason::Length;
                let score = done.confidence.as_ref().map(|v| {
                    if cut {
                        f32::NEG_INFINITY
                    } else {
                        signal_of(v, signal)
                    }
                });
                (done.confidence, score, cut)
            }
            Answer::Begun(_, c, _) => (Some(*c), Some(signal_of(c, signal)), false),
        }
    }
}

/// The signal's value in a confidence report.
pub fn signal_of(c: &pb::Confidence, s: Signal) -> f32 {
    match s {
        Signal::MeanLogprob => c.mean_logprob,
        Signal::MinLogprob => c.min_logprob,
        Signal::P10Logprob => c.p10_logprob,
    }
}

pub(super) async fn run<F, Fut>(
    state: &State,
    (policy, c): (&ActivePolicy, &Cascade),
    mut req: RouteRequest,
    deadline: Option<Instant>,
    call: &F,
    (opened, routed): (Opened, dispatch::LocalCall),
    track: &mut Tracker,
) -> Result<Outcome, GatewayError>
where
    F: Fn(AgentClient, dispatch::AgentCall, Option<Duration>) -> Fut,
    Fut: std::future::Future<Output = Result<Opened, tonic::Status>>,
{
    let whole = c.judges(&req);
    let mut steps: Vec<pb::CascadeStep> = Vec::new();
    let mut answer = read(opened, &routed, whole, deadline, track).await?;
    let mut routed = routed;
    loop {
        let candidate = format!("{}/{}", routed.node, routed.model);
        // this rung's own threshold when the route fits one per model
        let threshold = c.threshold_for(&routed.model);
        let step = |confidence: Option<pb::Confidence>, outcome: String| pb::CascadeStep {
            candidate: candidate.clone(),
            confidence,
            signal: c.signal.as_str().to_string(),
            threshold,
            outcome,
        };
        let (confidence, score, cut) = answer.judged(c.signal);
        let went_up = if cut {
            "escalated: cut at max_tokens"
        } else {
            "escalated"
        };
        let keep_as_is = match score {
            Some(s) if s >= threshold => Some("kept".to_string()),
            Some(_) => None,
            // nothing generated (or an agent that reports no confidence): nothing to judge
            None => Some("kept: the agent reported no confidence for this answer".to_string()),
        };
        if let Some(outcome) = keep_as_is {
            steps.push(step(confidence, outcome));
            return Ok(kept(answer, routed, steps));
        }
        // a larger model only: this one's size, as its decision saw it
        req.larger_than = Some(req.larger_than.unwrap_or(0).max(routed.parameters));
        // a whole answer's slot is free before the next model is asked; a begun one is held
        // (and its stream unread) until a larger model answers, in case none may
        let held = match answer {
            Answer::Whole(..) => {
                let whole = answer;
                let decision = routed.decision.clone();
                drop(routed);
                Held::Whole(whole, decision)
            }
            Answer::Begun(..) => Held::Begun(answer, routed),
        };
        let escalated = dispatch::with_retries(state, policy, req.clone(), deadline, call).await;
        // nothing larger may answer (data class, budget, capacity, none in the fleet), or
        // the larger model failed: the answer in hand stays, with why
        let keep = |why: String, mut steps: Vec<pb::CascadeStep>, held: Held| {
            steps.push(step(confidence, why));
            Ok(match held {
                Held::Whole(answer, decision) => {
                    let Answer::Whole(text, done) = answer else {
                        unreachable!("held whole")
                    };
                    let mut decision = decision;
                    decision.cascade = steps;
                    Outcome::Local {
                        decision,
                        text,
                        done,
                    }
                }
                Held::Begun(answer, routed) => kept(answer, routed, steps),
            })
        };
        match escalated {
            Ok(Served::Local(opened, next)) => {
                match read(opened, &next, whole, deadline, track).await {
                    Ok(a) => {
                        // the held stream (if any) is dropped here: its generation ends
                        drop(held);
                        steps.push(step(confidence, went_up.into()));
                        answer = a;
                        routed = next;
                    }
                    Err(e) => {
                        return keep(
                            format!("kept below the threshold: the larger model failed ({e})"),
                            steps,
                            held,
                        );
                    }
                }
            }
            Ok(Served::External(mut ext)) => {
                drop(held);
                steps.push(step(confidence, went_up.into()));
                ext.decision.cascade = steps;
                return Ok(Outcome::External(ext));
            }
            Err(GatewayError::Refused(why)) => {
                return keep(
                    format!("kept below the threshold: nothing larger may answer ({why})"),
                    steps,
                    held,
                );
            }
            Err(e) => {
                return keep(
                    format!("kept below the threshold: escalating failed ({e})"),
                    steps,
                    held,
                );
            }
        }
    }
}

/// A rung's answer kept while a larger one is asked.
enum Held {
    Whole(Answer, pb::Decision),
    Begun(Answer, dispatch::LocalCall),
}

/// The outcome of keeping `answer`, with the steps so far in its decision.
fn kept(answer: Answer, mut routed: dispatch::LocalCall, steps: Vec<pb::CascadeStep>) -> Outcome {
    match answer {
        Answer::Whole(text, done) => {
            let mut decision = routed.decision.clone();
            decision.cascade = steps;
            Outcome::Local {
                decision,
                text,
                done,
            }
        }
        Answer::Begun(held, _, stream) => {
            routed.decision.cascade = steps;
            Outcome::Streaming {
                held,
                stream,
                routed,
            }
        }
    }
}

/// Reads a rung's answer: whole, or (`whole` false) until the agent reports the confidence
/// of its first tokens — an answer that ends before that is whole.
async fn read(
    (first, mut stream): Opened,
    routed: &dispatch::LocalCall,
    whole: bool,
    deadline: Option<Instant>,
    track: &mut Tracker,
) -> Result<Answer, GatewayError> {
    let mut held = pb::GenerateChunk::default();
    let mut next = first;
    while let Some(chunk) = next {
        held.text.push_str(&chunk.text);
        held.tool_calls.extend(chunk.tool_calls);
        if let Some(done) = chunk.done {
            if let Some(u) = done.usage {
                track.local_tokens((u.prompt_tokens, u.completion_tokens));
            }
            return Ok(Answer::Whole(held.text, done));
        }
        if !whole && let Some(c) = chunk.judged {
            held.judged = Some(c);
            return Ok(Answer::Begun(held, c, Box::new(stream)));
        }
        let message = stream.message();
        let message = match deadline {
            Some(d) => tokio::time::timeout_at(d.into(), message)
                .await
                .map_err(|_| {
                    GatewayError::DeadlineExceeded(format!(
                        "while agent {} ({}) was generating",
                        routed.node, routed.model
                    ))
                })?,
            None => message.await,
        };
        next = message
            .map_err(|s| GatewayError::from_agent(&routed.node, &routed.model, s, deadline))?;
    }
    Err(GatewayError::AgentLost {
        node: routed.node.clone(),
        model: routed.model.clone(),
        detail: "the stream ended without a final chunk".into(),
    })
}
