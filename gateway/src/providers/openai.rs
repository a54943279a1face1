//! OpenAI-compatible chat completions (streamed) and embeddings.

use serde_json::{Value, json};
use tokio::time::Instant;

use super::{
    Decoder, Embeddings, Event, EventStream, Finish, GenerateCall, ProviderError, Step, Usage,
    decode, json, sse,
};

pub fn chat_body(call: &GenerateCall) -> Value {
    let messages: Vec<Value> = call
        .messages
        .iter()
        .map(|m| json!({"role": m.role, "content": m.content}))
        .collect();
    let mut body = json!({
        "model": call.model,
        "messages": messages,
        "max_tokens": call.max_tokens,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if call.temperature > 0.0 {
        body["temperature"] = json!(call.temperature);
    } else {
        body["temperature"] = json!(0.0);
    }
    if call.top_p > 0.0 && call.top_p < 1.0 {
        body["top_p"] = json!(call.top_p);
    }
    if !call.stop.is_empty() {
        body["stop"] = json!(call.stop);
    }
    if let Some(seed) = call.seed {
        body["seed"] = json!(seed);
    }
    if let Some(format) = response_format(call) {
        body["response_format"] = format;
    }
    body
}

/// OpenAI's `response_format` for the call's constraint: a strict JSON schema, or any JSON
/// object (the other kinds never reach a provider: routing leaves it out for them).
fn response_format(call: &GenerateCall) -> Option<Value> {
    use edgewise_proto::constraint::Kind;
    match call.constraint.as_ref()?.kind.as_ref()? {
        Kind::JsonSchema(s) => Some(json!({
            "type": "json_schema",
            "json_schema": {
                "name": "output",
                "schema": serde_json::from_str::<Value>(s).ok()?,
                "strict": true,
            },
        })),
        Kind::JsonObject(_) => Some(json!({"type": "json_object"})),
        _ => None,
    }
}

fn finish(reason: &str) -> Finish {
    match reason {
        "length" => Finish::Length,
        _ => Finish::Stop,
    }
}

fn usage(v: &Value) -> Option<Usage> {
    let u = v.get("usage").filter(|u| !u.is_null())?;
    Some(Usage {
        prompt_tokens: u.get("prompt_tokens")?.as_u64()? as u32,
        completion_tokens: u.get("completion_tokens")?.as_u64()? as u32,
    })
}

/// `data: {chunk}` events until `data: [DONE]`; usage comes in a final chunk with no choices.
pub fn chat_events(
    provider: String,
    response: reqwest::Response,
    deadline: Instant,
) -> EventStream {
    decode(provider, response, deadline, Chat::default())
}

#[derive(Default)]
struct Chat {
    finish: Option<Finish>,
    usage: Option<Usage>,
}

impl Decoder for Chat {
    fn event(&mut self, e: &sse::Event) -> Step {
        if e.data.trim() == "[DONE]" {
            return Step::End(Event::Done {
                finish: self.finish.unwrap_or(Finish::Stop),
                usage: self.usage,
            });
        }
        let v = match json(&e.data) {
            Ok(v) => v,
            Err(step) => return step,
        };
        if let Some(u) = usage(&v) {
            self.usage = Some(u);
        }
        let choice = v.pointer("/choices/0");
        if let Some(r) = choice
            .and_then(|c| c.get("finish_reason"))
            .and_then(Value::as_str)
        {
            self.finish = Some(finish(r));
        }
        match choice
            .and_then(|c| c.pointer("/delta/content"))
            .and_then(Value::as_str)
        {
            Some(t) if !t.is_empty() => Step::Emit(Event::Text(t.to_string())),
            _ => Step::Skip,
        }
    }

    /// Without `[DONE]`, the stream is complete only if a finish reason came.
    fn eof(&mut self) -> Step {
        match self.finish {
            Some(finish) => Step::End(Event::Done {
                finish,
                usage: self.usage,
            }),
            None => Step::Fail("the stream ended without a finish reason".into()),
        }
    }
}

pub fn embeddings_body(model: &str, texts: &[String]) -> Value {
    json!({"model": model, "input": texts, "encoding_format": "float"})
}

pub fn parse_embeddings(
    provider: &str,
    body: &[u8],
    expected: usize,
) -> Result<Embeddings, ProviderError> {
    let protocol = |detail: String| ProviderError::Protocol {
        provider: provider.into(),
        detail,
    };
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| protocol(format!("the embeddings response is not JSON: {e}")))?;
    let data = v
        .get("data")
        .and_then(Value::as_array)
        .ok_or_else(|| protocol("the embeddings response has no `data` list".into()))?;
    let mut vectors: Vec<Option<Vec<f32>>> = vec![None; expected];
    for (i, item) in data.iter().enumerate() {
        let index = item
            .get("index")
            .and_then(Value::as_u64)
            .map_or(i, |x| x as usize);
        let values = item
            .get("embedding")
            .and_then(Value::as_array)
            .ok_or_else(|| protocol(format!("data[{i}] has no `embedding` list")))?
            .iter()
            .map(|x| x.as_f64().map(|f| f as f32))
            .collect::<Option<Vec<f32>>>()
            .ok_or_else(|| protocol(format!("data[{i}].embedding holds a non-number")))?;
        match vectors.get_mut(index) {
            Some(slot) => *slot = Some(values),
            None => return Err(protocol(format!("data[{i}].index {index} is out of range"))),
        }
    }
    let vectors = vectors
        .into_iter()
        .enumerate()
        .map(|(i, v)| v.ok_or_else(|| protocol(format!("no embedding for input {i}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let prompt_tokens = v
        .pointer("/usage/prompt_tokens")
        .and_then(Value::as_u64)
        .map(|t| t as u32);
    Ok(Embeddings {
        vectors,
        prompt_tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embeddings_are_put_back_in_input_order() {
        let body = br#"{"data":[{"index":1,"embedding":[0.5]},{"index":0,"embedding":[1,2]}],"usage":{"prompt_tokens":7}}"#;
        let e = parse_embeddings("p", body, 2).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(e.vectors, vec![vec![1.0, 2.0], vec![0.5]]);
        assert_eq!(e.prompt_tokens, Some(7));
        let missing = parse_embeddings("p", br#"{"data":[{"index":0,"embedding":[1]}]}"#, 2);
        assert_eq!(
            missing.err().map(|e| e.to_string()),
            Some("provider `p`: no embedding for input 1".into())
        );
    }
}
