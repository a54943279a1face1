//! Anthropic Messages (streamed).

use futures::StreamExt;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::{Event, EventStream, Finish, GenerateCall, ProviderError, Usage, sse_events};

pub fn messages_body(call: &GenerateCall) -> Value {
    let system: Vec<&str> = call
        .messages
        .iter()
        .filter(|m| m.role == "system")
        .map(|m| m.content.as_str())
        .collect();
    let messages: Vec<Value> = call
        .messages
        .iter()
        .filter(|m| m.role != "system")
        .map(|m| json!({"role": m.role, "content": m.content}))
        .collect();
    let mut body = json!({
        "model": call.model,
        "messages": messages,
        "max_tokens": call.max_tokens,
        "stream": true,
        "temperature": call.temperature.clamp(0.0, 1.0),
    });
    if !system.is_empty() {
        body["system"] = json!(system.join("\n\n"));
    }
    if call.top_p > 0.0 && call.top_p < 1.0 {
        body["top_p"] = json!(call.top_p);
    }
    if call.top_k > 0 {
        body["top_k"] = json!(call.top_k);
    }
    if !call.stop.is_empty() {
        body["stop_sequences"] = json!(call.stop);
    }
    body
}

fn finish(reason: &str) -> Finish {
    match reason {
        "max_tokens" => Finish::Length,
        "stop_sequence" => Finish::StopSequence,
        _ => Finish::Stop,
    }
}

/// `message_start` (input tokens), `content_block_delta` (text), `message_delta` (stop reason,
/// output tokens), `message_stop`; `error` events end the stream with an error.
pub fn message_events(
    provider: String,
    response: reqwest::Response,
    deadline: Instant,
) -> EventStream {
    let events = sse_events(provider.clone(), response, deadline);
    let state = (Box::pin(events), None::<Finish>, Usage::default(), false);
    Box::pin(futures::stream::unfold(
        state,
        move |(mut events, mut fin, mut usage, done)| {
            let provider = provider.clone();
            async move {
                if done {
                    return None;
                }
                let protocol = |detail: String| ProviderError::Protocol {
                    provider: provider.clone(),
                    detail,
                };
                loop {
                    let e = match events.next().await {
                        Some(Ok(e)) => e,
                        Some(Err(err)) => return Some((Err(err), (events, fin, usage, true))),
                        None => {
                            return Some((
                                Err(protocol("the stream ended before message_stop".into())),
                                (events, fin, usage, true),
                            ));
                        }
                    };
                    let v: Value = match serde_json::from_str(&e.data) {
                        Ok(v) => v,
                        Err(err) => {
                            return Some((
                                Err(protocol(format!("a stream event is not JSON: {err}"))),
                                (events, fin, usage, true),
                            ));
                        }
                    };
                    let kind = v.get("type").and_then(Value::as_str).unwrap_or(&e.event);
                    match kind {
                        "message_start" => {
                            if let Some(t) = v
                                .pointer("/message/usage/input_tokens")
                                .and_then(Value::as_u64)
                            {
                                usage.prompt_tokens = t as u32;
                            }
                        }
                        "content_block_delta" => {
                            if let Some(t) = v.pointer("/delta/text").and_then(Value::as_str)
                                && !t.is_empty()
                            {
                                return Some((
                                    Ok(Event::Text(t.to_string())),
                                    (events, fin, usage, false),
                                ));
                            }
                        }
                        "message_delta" => {
                            if let Some(r) = v.pointer("/delta/stop_reason").and_then(Value::as_str)
                            {
                                fin = Some(finish(r));
                            }
                            if let Some(t) =
                                v.pointer("/usage/output_tokens").and_then(Value::as_u64)
                            {
                                usage.completion_tokens = t as u32;
                            }
                        }
                        "message_stop" => {
                            let done = Event::Done {
                                finish: fin.unwrap_or(Finish::Stop),
                                usage: Some(usage),
                            };
                            return Some((Ok(done), (events, fin, usage, true)));
                        }
                        "error" => {
                            let m = v
                                .pointer("/error/message")
                                .and_then(Value::as_str)
                                .unwrap_or("unknown error");
                            let m: String = m.chars().take(300).collect();
                            return Some((
                                Err(protocol(format!("error while streaming: {m}"))),
                                (events, fin, usage, true),
                            ));
                        }
                        _ => {} // ping, content_block_start/stop
                    }
                }
            }
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::Message;

    #[test]
    fn system_messages_move_to_the_top_level() {
        let call = GenerateCall {
            model: "claude".into(),
            messages: vec![
                Message {
                    role: "system".into(),
                    content: "Be brief.".into(),
                },
                Message {
                    role: "user".into(),
                    content: "Hi".into(),
                },
            ],
            max_tokens: 10,
            temperature: 0.0,
            top_p: 0.0,
            top_k: 0,
            stop: vec!["\n".into()],
            seed: None,
        };
        let b = messages_body(&call);
        assert_eq!(b["system"], "Be brief.");
        assert_eq!(b["messages"], json!([{"role": "user", "content": "Hi"}]));
        assert_eq!(b["stop_sequences"], json!(["\n"]));
        assert_eq!(b["max_tokens"], 10);
    }
}
