//! Anthropic Messages (streamed).

use serde_json::{Value, json};
use tokio::time::Instant;

use super::{Decoder, Event, EventStream, Finish, GenerateCall, Step, Usage, decode, json, sse};

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
    if let Some(schema) = output_schema(call) {
        // structured output the Messages API's way: one tool the model must call, whose
        // input is the output (streamed as `input_json_delta`)
        body["tools"] = json!([{
            "name": OUTPUT_TOOL,
            "description": "Give your answer as this tool's input.",
            "input_schema": schema,
        }]);
        body["tool_choice"] = json!({"type": "tool", "name": OUTPUT_TOOL});
    }
    body
}

const OUTPUT_TOOL: &str = "output";

fn output_schema(call: &GenerateCall) -> Option<Value> {
    use edgewise_proto::constraint::Kind;
    match call.constraint.as_ref()?.kind.as_ref()? {
        Kind::JsonSchema(s) => serde_json::from_str::<Value>(s).ok(),
        Kind::JsonObject(_) => Some(json!({"type": "object"})),
        _ => None,
    }
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
    decode(provider, response, deadline, Messages::default())
}

#[derive(Default)]
struct Messages {
    finish: Option<Finish>,
    usage: Usage,
}

impl Decoder for Messages {
    fn event(&mut self, e: &sse::Event) -> Step {
        let v = match json(&e.data) {
            Ok(v) => v,
            Err(step) => return step,
        };
        match v.get("type").and_then(Value::as_str).unwrap_or(&e.event) {
            "message_start" => {
                if let Some(t) = v
                    .pointer("/message/usage/input_tokens")
                    .and_then(Value::as_u64)
                {
                    self.usage.prompt_tokens = t as u32;
                }
                Step::Skip
            }
            // text, or the output tool's input as it is written
            "content_block_delta" => match v
                .pointer("/delta/text")
                .or_else(|| v.pointer("/delta/partial_json"))
                .and_then(Value::as_str)
            {
                Some(t) if !t.is_empty() => Step::Emit(Event::Text(t.to_string())),
                _ => Step::Skip,
            },
            "message_delta" => {
                if let Some(r) = v.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    self.finish = Some(finish(r));
                }
                if let Some(t) = v.pointer("/usage/output_tokens").and_then(Value::as_u64) {
                    self.usage.completion_tokens = t as u32;
                }
                Step::Skip
            }
            "message_stop" => Step::End(Event::Done {
                finish: self.finish.unwrap_or(Finish::Stop),
                usage: Some(self.usage),
            }),
            _ => Step::Skip, // ping, content_block_start/stop
        }
    }

    fn eof(&mut self) -> Step {
        Step::Fail("the stream ended before message_stop".into())
    }
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
            constraint: None,
        };
        let b = messages_body(&call);
        assert_eq!(b["system"], "Be brief.");
        assert_eq!(b["messages"], json!([{"role": "user", "content": "Hi"}]));
        assert_eq!(b["stop_sequences"], json!(["\n"]));
        assert_eq!(b["max_tokens"], 10);
    }
}
