//! Generation: decide, then stream from the agent or the hosted API. The stream's first item
//! carries the decision; a local stream ends when the agent's does, an external one only
//! after its call is settled and audited.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgewise_proto as pb;
use futures::Stream;
use tonic::Code;
use tracing::Instrument;

use super::cascade;
use super::{Caller, with_timeout};
use crate::agents::AgentClient;
use crate::dispatch::{self, Served};
use crate::error::GatewayError;
use crate::external::SettleOnDrop;
use crate::external::stream::{Chunks, failed, provider_of};
use crate::metrics::Tracker;
use crate::providers::GenerateCall;
use crate::routing::{Adequacy, Cascade};
use crate::state::State;

/// The decision, then the text chunks; an error after the decision ends the stream.
pub type ChunkStream =
    Pin<Box<dyn Stream<Item = Result<pb::GatewayGenerateChunk, GatewayError>> + Send>>;

/// A generation, measured and traced: the tracker goes with the stream.
pub async fn generate(
    state: &Arc<State>,
    caller: Caller,
    body: pb::GatewayGenerateRequest,
) -> Result<ChunkStream, GatewayError> {
    // moved into the stream's task once there is one; records the outcome when dropped
    let mut track = Some(state.metrics.track("generate"));
    let span = tracing::info_span!("gateway.generate");
    edgewise_ops::telemetry::continue_trace(&span, &caller.headers);
    let r = tracked(state, caller, body, &mut track)
        .instrument(span)
        .await;
    if let (Err(e), Some(t)) = (&r, track.as_mut()) {
        t.failed_with(e.grpc_code());
    }
    r
}

async fn tracked(
    state: &Arc<State>,
    caller: Caller,
    body: pb::GatewayGenerateRequest,
    track: &mut Option<Tracker>,
) -> Result<ChunkStream, GatewayError> {
    let Caller {
        tenant,
        deadline,
        policy,
        ..
    } = caller;
    let slot = state.enter(&tenant)?;
    let (messages, mut route_req) = crate::validate::generate(tenant, &body, &state.limits)?;
    // every message of every role (a system prompt, an earlier turn, a tool's result leak as
    // well as the last), the arguments of earlier tool calls (as written and with their JSON
    // strings decoded: an escaped newline hides a key block's shape), the tools' own text
    let mut tool_text: Vec<String> = Vec::new();
    if let Some(r) = &body.request {
        if let Some(pb::generate_request::Input::Chat(c)) = &r.input {
            for call in c.messages.iter().flat_map(|m| &m.tool_calls) {
                tool_text.push(call.arguments.clone());
                tool_text.push(crate::dataclass::json_strings(&call.arguments));
            }
        }
        for t in &r.tools {
            tool_text.push(t.description.clone());
            tool_text.push(t.parameters.clone());
        }
    }
    route_req.findings = crate::dataclass::findings(
        &policy.policy,
        messages
            .iter()
            .map(|m| m.content.as_str())
            .chain(tool_text.iter().map(String::as_str)),
    );
    route_req.p_adequate = crate::adequacy::estimate(&policy.policy, &messages);
    let tokens = (route_req.prompt_tokens, route_req.prompt_tokens_max);
    let gen_req = body.request.unwrap_or_default();
    // routes whose cascade judges this request by its first tokens, and how many
    let judged_by_start: Vec<(String, u32)> = policy
        .policy
        .routes
        .iter()
        .filter_map(|r| match &r.adequacy {
            Adequacy::Cascade(c) if c.judges_start(&route_req) => {
                Some((r.name.clone(), c.max_tokens))
            }
            _ => None,
        })
        .collect();
    let call = |mut client: AgentClient, to: dispatch::AgentCall, timeout: Option<Duration>| {
        let mut r = gen_req.clone();
        r.model = to.model;
        r.judge_after_tokens = judged_by_start
            .iter()
            .find(|(route, _)| *route == to.route)
            .map_or(0, |(_, n)| *n);
        async move {
            let mut stream = client
                .generate(with_timeout(r, timeout))
                .await?
                .into_inner();
            // the first chunk decides whether a retry is still possible
            let first = stream.message().await?;
            Ok((first, stream))
        }
    };
    let mut served =
        dispatch::with_retries(state, &policy, route_req.clone(), deadline, &call).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    // a cascade route's answer: judged (whole, or by its first tokens), escalated while not
    // confident
    if let Served::Local(_, routed) = &served
        && let Some(c) = cascade_of(&policy, &routed.decision.route, &route_req)
        && let Some(t) = track.as_mut()
    {
        let Served::Local(opened, routed) = served else {
            unreachable!("matched above")
        };
        match cascade::run(
            state,
            (&policy, &c),
            route_req,
            deadline,
            &call,
            (opened, routed),
            t,
        )
        .await
        {
            Ok(cascade::Outcome::Local {
                decision,
                text,
                done,
            }) => {
                t.decided(&decision);
                if !text.is_empty() {
                    t.first_token();
                }
                for chunk in [
                    pb::GatewayGenerateChunk::of_decision(decision),
                    pb::GatewayGenerateChunk::of_chunk(pb::GenerateChunk {
                        text,
                        done: Some(done),
                        tool_calls: Vec::new(),
                        judged: None,
                    }),
                ] {
                    let _ = tx.send(Ok(chunk)).await;
                }
                drop(slot);
                return Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)));
            }
            Ok(cascade::Outcome::Streaming {
                held,
                stream,
                routed,
            }) => served = Served::Local((Some(held), *stream), routed),
            Ok(cascade::Outcome::External(ext)) => served = Served::External(ext),
            Err(e) => return Err(e),
        }
    }
    match served {
        Served::Local((first, stream), routed) => {
            // the stream is piped whether or not a tracker came this far
            let mut track = track
                .take()
                .unwrap_or_else(|| state.metrics.track("generate"));
            let span = tracing::Span::current();
            tokio::spawn(
                async move {
                    pipe_local(&tx, first, stream, &routed, deadline, &mut track).await;
                    // the model's slot is released before the caller sees the end of the stream
                    drop(routed);
                    drop(slot);
                    drop(tx);
                }
                .instrument(span),
            );
        }
        Served::External(ext) => {
            // from here until the stream is settled, dropping the request settles the call
            let guard = SettleOnDrop::new(state.clone(), ext);
            let ext = guard.call();
            let provider = provider_of(state, ext).await?;
            let call = GenerateCall {
                model: ext.model.clone(),
                messages,
                max_tokens: match gen_req.max_tokens {
                    0 => provider.config.default_max_tokens,
                    n => n,
                },
                temperature: gen_req.temperature,
                top_p: gen_req.top_p,
                top_k: gen_req.top_k,
                stop: gen_req.stop.clone(),
                seed: gen_req.seed,
                constraint: gen_req.constraint.clone(),
            };
            let deadline = provider.deadline(deadline.map(tokio::time::Instant::from_std));
            let external =
                tracing::info_span!("external.call", provider = %ext.provider, model = %ext.model);
            let events = match provider
                .generate(&call, deadline)
                .instrument(external.clone())
                .await
            {
                Ok(events) => events,
                Err(e) => return Err(failed(state, ext, e).await),
            };
            // the stream is piped whether or not a tracker came this far
            let mut track = track
                .take()
                .unwrap_or_else(|| state.metrics.track("generate"));
            let state = state.clone();
            tokio::spawn(async move {
                crate::external::stream::pipe(
                    &state,
                    &tx,
                    guard.call(),
                    events,
                    tokens.0,
                    &mut track,
                    call.constraint.is_some(),
                )
                .instrument(external)
                .await;
                drop(guard);
                drop(slot);
            });
        }
    }
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

/// The route's cascade, when it has one and it judges this request (whole or by its start).
fn cascade_of(
    policy: &crate::state::ActivePolicy,
    route: &str,
    req: &crate::routing::RouteRequest,
) -> Option<Cascade> {
    let r = policy.policy.routes.iter().find(|r| r.name == route)?;
    match &r.adequacy {
        Adequacy::Cascade(c) if c.judges(req) || c.judges_start(req) => Some(c.clone()),
        _ => None,
    }
}

/// Sends the decision, then the agent's chunks, to the caller; stops when either side ends.
async fn pipe_local(
    tx: &Chunks,
    first: Option<pb::GenerateChunk>,
    mut stream: tonic::Streaming<pb::GenerateChunk>,
    routed: &dispatch::LocalCall,
    deadline: Option<Instant>,
    track: &mut Tracker,
) {
    track.decided(&routed.decision);
    if tx
        .send(Ok(pb::GatewayGenerateChunk::of_decision(
            routed.decision.clone(),
        )))
        .await
        .is_err()
    {
        return;
    }
    let mut next = first;
    while let Some(chunk) = next {
        if !chunk.text.is_empty() {
            track.first_token();
        }
        if let Some(u) = chunk.done.as_ref().and_then(|d| d.usage) {
            track.local_tokens((u.prompt_tokens, u.completion_tokens));
        }
        if tx
            .send(Ok(pb::GatewayGenerateChunk::of_chunk(chunk)))
            .await
            .is_err()
        {
            track.failed_with(Code::Cancelled);
            return; // the caller left: dropping the agent stream cancels the generation
        }
        let message = stream.message();
        let message = match deadline {
            Some(d) => match tokio::time::timeout_at(d.into(), message).await {
                Ok(m) => m,
                Err(_) => {
                    let e = GatewayError::DeadlineExceeded(format!(
                        "while agent {} ({}) was generating",
                        routed.node, routed.model
                    ));
                    track.failed_with(e.grpc_code());
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            },
            None => message.await,
        };
        next = match message {
            Ok(c) => c,
            Err(s) => {
                let e = GatewayError::from_agent(&routed.node, &routed.model, s, deadline);
                track.failed_with(e.grpc_code());
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
    }
}
