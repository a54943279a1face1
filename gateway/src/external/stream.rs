//! An external call's answer: reaching its provider, streaming a generation to the caller as
//! agent-shaped chunks, and closing the call (settled and audited) before the caller's last
//! chunk, however the stream ends.

use std::time::Instant;

use edgewise_proto as pb;
use futures::StreamExt;

use super::{CallEnd, ExternalCall};
use crate::error::GatewayError;
use crate::metrics::Tracker;
use crate::providers::{self, Event, Finish, ProviderError, Usage};
use crate::state::State;

/// Where a generation's chunks go, the decision first.
pub type Chunks = tokio::sync::mpsc::Sender<Result<pb::GatewayGenerateChunk, GatewayError>>;

/// The provider an external decision named (a gone one closes the call unbilled).
pub async fn provider_of<'a>(
    state: &'a State,
    ext: &ExternalCall,
) -> Result<&'a providers::Provider, GatewayError> {
    match state.providers.get(&ext.provider) {
        Some(p) => Ok(p),
        None => {
            ext.close(state, CallEnd::NotBilled("not configured".into()))
                .await;
            Err(GatewayError::ProviderNotConfigured(ext.provider.clone()))
        }
    }
}

/// Closes an external call that failed before answering.
pub async fn failed(state: &State, ext: &ExternalCall, e: ProviderError) -> GatewayError {
    ext.close(state, CallEnd::from_failure(&e)).await;
    GatewayError::Provider(e)
}

/// Streams a hosted API's answer to the caller as agent-shaped chunks, then settles and
/// audits the call before the final chunk (so an acknowledged answer is always accounted).
pub async fn pipe(
    state: &State,
    tx: &Chunks,
    ext: &ExternalCall,
    mut events: providers::EventStream,
    estimate_prompt: u32,
    track: &mut Tracker,
    constrained: bool,
) {
    track.decided(&ext.decision);
    let started = Instant::now();
    let mut first_token: Option<Instant> = None;
    let mut pieces = 0u32;
    if tx
        .send(Ok(pb::GatewayGenerateChunk::of_decision(
            ext.decision.clone(),
        )))
        .await
        .is_err()
    {
        ext.close(state, CallEnd::Cancelled).await;
        return;
    }
    loop {
        match events.next().await {
            Some(Ok(Event::Text(text))) => {
                first_token.get_or_insert_with(Instant::now);
                track.first_token();
                pieces += 1;
                let chunk = pb::GenerateChunk {
                    text,
                    done: None,
                    tool_calls: Vec::new(),
                    judged: None,
                };
                if tx
                    .send(Ok(pb::GatewayGenerateChunk::of_chunk(chunk)))
                    .await
                    .is_err()
                {
                    ext.close(state, CallEnd::Cancelled).await;
                    return;
                }
            }
            Some(Ok(Event::Done { finish, usage })) => {
                let end = match usage {
                    Some(u) => CallEnd::Billed(u),
                    None => CallEnd::Unreported {
                        estimate: Usage {
                            prompt_tokens: estimate_prompt,
                            completion_tokens: pieces,
                        },
                    },
                };
                let shown = match &end {
                    CallEnd::Billed(u) | CallEnd::Unreported { estimate: u } => *u,
                    _ => Usage::default(),
                };
                ext.close(state, end).await;
                let ttft = first_token.map_or(0.0, |t| (t - started).as_secs_f64() * 1e3);
                let decode_ms = first_token.map_or(0.0, |t| t.elapsed().as_secs_f64() * 1e3);
                let done = pb::GenerateDone {
                    finish_reason: match finish {
                        Finish::Stop => pb::FinishReason::Stop,
                        Finish::Length => pb::FinishReason::Length,
                        Finish::StopSequence => pb::FinishReason::StopSequence,
                    } as i32,
                    usage: Some(pb::Usage {
                        prompt_tokens: shown.prompt_tokens,
                        completion_tokens: shown.completion_tokens,
                    }),
                    time_to_first_token_ms: ttft,
                    time_per_output_token_ms: decode_ms
                        / f64::from(shown.completion_tokens.saturating_sub(1).max(1)),
                    confidence: None,
                    // a provider's structured output is complete unless it was cut short
                    incomplete: constrained && finish != Finish::Stop,
                };
                let chunk = pb::GenerateChunk {
                    text: String::new(),
                    done: Some(done),
                    tool_calls: Vec::new(),
                    judged: None,
                };
                let _ = tx.send(Ok(pb::GatewayGenerateChunk::of_chunk(chunk))).await;
                return;
            }
            Some(Err(e)) => {
                ext.close(state, CallEnd::Failed(e.to_string())).await;
                let _ = tx.send(Err(GatewayError::Provider(e))).await;
                return;
            }
            None => {
                let e = ProviderError::Protocol {
                    provider: ext.provider.clone(),
                    detail: "the stream ended without a final event".into(),
                };
                ext.close(state, CallEnd::Failed(e.to_string())).await;
                let _ = tx.send(Err(GatewayError::Provider(e))).await;
                return;
            }
        }
    }
}
