//! A confidence cascade (a route's `adequacy: cascade`): the smallest adequate local model
//! answers in full; when the agent's confidence signal for that answer is below the route's
//! threshold, the request is decided again for a larger model only, then for the route's
//! hosted model where its data class permits. The caller receives one answer, and the
//! decision lists every step with its confidence.
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
    /// Escalated to the hosted model: its reservation is made and the decision lists the
    /// local steps before it.
    External(ExternalCall),
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
    F: Fn(AgentClient, String, Option<Duration>) -> Fut,
    Fut: std::future::Future<Output = Result<Opened, tonic::Status>>,
{
    let mut steps: Vec<pb::CascadeStep> = Vec::new();
    let (mut text, mut done) = collect(opened, &routed, deadline, track).await?;
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
        let confidence = done.confidence;
        // an answer cut at max_tokens is unfinished however sure each token was ("The square
        // root of 144 is approximately equal to"): never kept as confident
        let cut = done.finish_reason() == pb::FinishReason::Length;
        let score = confidence.as_ref().map(|v| {
            if cut {
                f32::NEG_INFINITY
            } else {
                signal_of(v, c.signal)
            }
        });
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
            let mut decision = routed.decision.clone();
            decision.cascade = steps;
            return Ok(Outcome::Local {
                decision,
                text,
                done,
            });
        }
        // a larger model only: this one's size, as its decision saw it
        req.larger_than = Some(req.larger_than.unwrap_or(0).max(routed.parameters));
        let kept_decision = routed.decision.clone();
        // this model's slot is free before the next one is asked
        drop(routed);
        let escalated = dispatch::with_retries(state, policy, req.clone(), deadline, call).await;
        // nothing larger may answer (data class, budget, capacity, none in the fleet), or
        // the larger model failed: the answer in hand stays, with why
        let keep = |why: String, steps: Vec<pb::CascadeStep>, text: String, done| {
            let mut decision = kept_decision.clone();
            decision.cascade = steps;
            decision.cascade.push(step(confidence, why));
            Ok(Outcome::Local {
                decision,
                text,
                done,
            })
        };
        match escalated {
            Ok(Served::Local(opened, next)) => {
                match collect(opened, &next, deadline, track).await {
                    Ok(answer) => {
                        steps.push(step(confidence, went_up.into()));
                        (text, done) = answer;
                        routed = next;
                    }
                    Err(e) => {
                        return keep(
                            format!("kept below the threshold: the larger model failed ({e})"),
                            steps,
                            text,
                            done,
                        );
                    }
                }
            }
            Ok(Served::External(mut ext)) => {
                steps.push(step(confidence, went_up.into()));
                ext.decision.cascade = steps;
                return Ok(Outcome::External(ext));
            }
            Err(GatewayError::Refused(why)) => {
                return keep(
                    format!("kept below the threshold: nothing larger may answer ({why})"),
                    steps,
                    text,
                    done,
                );
            }
            Err(e) => {
                return keep(
                    format!("kept below the threshold: escalating failed ({e})"),
                    steps,
                    text,
                    done,
                );
            }
        }
    }
}

/// The agent's whole answer: its text and its final chunk.
async fn collect(
    (first, mut stream): Opened,
    routed: &dispatch::LocalCall,
    deadline: Option<Instant>,
    track: &mut Tracker,
) -> Result<(String, pb::GenerateDone), GatewayError> {
    let mut text = String::new();
    let mut next = first;
    while let Some(chunk) = next {
        text.push_str(&chunk.text);
        if let Some(done) = chunk.done {
            if let Some(u) = done.usage {
                track.local_tokens((u.prompt_tokens, u.completion_tokens));
            }
            return Ok((text, done));
        }
        next = stream
            .message()
            .await
            .map_err(|s| GatewayError::from_agent(&routed.node, &routed.model, s, deadline))?;
    }
    Err(GatewayError::AgentLost {
        node: routed.node.clone(),
        model: routed.model.clone(),
        detail: "the stream ended without a final chunk".into(),
    })
}
