//! OpenAI's request bodies, read strictly: every field this gateway cannot honour is refused
//! with its name (never dropped), and a malformed body names the line and column or the field
//! path that is wrong. Pure (no I/O), so it is tested directly.

use edgewise_proto as pb;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::invalid;
use super::tools::{call, tool, tool_choice};
use crate::error::GatewayError;

/// Routing hints from an `edgewise` object in the body (the same as the `x-edgewise-*`
/// headers).
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hints {
    pub data_class: Option<String>,
    pub min_quality: Option<f32>,
    pub max_latency_ms: Option<u32>,
    pub route: Option<String>,
    /// Keep the serving model resident at least this long after the request (bounded by
    /// the agent), as Ollama's `keep_alive`.
    pub keep_alive_ms: Option<u64>,
}

/// One chat message as the model sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: String,
    pub content: String,
    /// An assistant turn's calls.
    pub tool_calls: Vec<pb::ToolCall>,
    /// A tool turn: the call it answers.
    pub tool_call_id: String,
}

/// `POST /v1/chat/completions`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Chat {
    pub model: String,
    pub messages: Vec<Message>,
    pub stream: bool,
    pub include_usage: bool,
    /// 0: the model's default.
    pub max_tokens: u32,
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: u32,
    /// vLLM's extension: generate past end-of-sequence (local models only).
    pub ignore_eos: bool,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub hints: Hints,
    /// `response_format`: what the output must follow (structured output).
    pub constraint: Option<pb::Constraint>,
    pub tools: Vec<pb::Tool>,
    pub tool_choice: Option<pb::ToolChoice>,
    pub parallel_tool_calls: Option<bool>,
}

/// `POST /v1/embeddings`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    pub model: String,
    pub input: Vec<String>,
    pub base64: bool,
    pub hints: Hints,
}

/// Fields of a chat request this gateway reads. Anything else is refused by name.
const CHAT_FIELDS: &[&str] = &[
    "model",
    "messages",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "ignore_eos",
    "seed",
    "stop",
    "n",
    "user",
    "edgewise",
    "frequency_penalty",
    "presence_penalty",
    "logprobs",
    "response_format",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
];

const EMBEDDING_FIELDS: &[&str] = &["model", "input", "encoding_format", "user", "edgewise"];

/// Why a known OpenAI field that is not in the lists above is refused.
fn unsupported(field: &str) -> String {
    let why = match field {
        "functions" | "function_call" => {
            "the legacy function fields are not supported; send `tools`"
        }
        "top_logprobs" => "log probabilities are not supported",
        "logit_bias" => "logit bias is not supported",
        "audio" | "modalities" => "only text is supported",
        "dimensions" => "embeddings come in their model's own dimensions",
        _ => "this gateway does not read it",
    };
    format!("unsupported field `{field}`: {why}; remove it")
}

/// The body as a JSON object, or an error naming where it stops being one.
fn object(body: &[u8]) -> Result<Map<String, Value>, GatewayError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        invalid(format!(
            "the body is not valid JSON: {e} (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    match value {
        Value::Object(m) => Ok(m),
        other => Err(invalid(format!(
            "the body must be a JSON object, not {}",
            kind(&other)
        ))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Refuses fields outside `known`; drops JSON nulls (what "not given" looks like).
fn known_fields(
    mut m: Map<String, Value>,
    known: &[&str],
) -> Result<Map<String, Value>, GatewayError> {
    m.retain(|_, v| !v.is_null());
    if let Some(k) = m.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(invalid(unsupported(k)));
    }
    Ok(m)
}

/// Reads `m` into `T`, naming the field path of a wrong type.
fn typed<T: serde::de::DeserializeOwned>(m: Map<String, Value>) -> Result<T, GatewayError> {
    serde_path_to_error::deserialize(Value::Object(m)).map_err(|e| {
        let path = e.path().to_string();
        invalid(format!("`{path}`: {}", e.into_inner()))
    })
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Deserialize)]
struct RawChat {
    model: String,
    messages: Vec<Map<String, Value>>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<u32>,
    ignore_eos: Option<bool>,
    seed: Option<i64>,
    stop: Option<OneOrMany>,
    n: Option<u32>,
    #[allow(dead_code)] // accepted: OpenAI's end-user id, for abuse monitoring there
    user: Option<String>,
    edgewise: Option<Hints>,
    frequency_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    logprobs: Option<bool>,
    response_format: Option<Map<String, Value>>,
    tools: Option<Vec<Value>>,
    tool_choice: Option<Value>,
    parallel_tool_calls: Option<bool>,
}

impl Chat {
    pub fn parse(body: &[u8]) -> Result<Self, GatewayError> {
        let m = known_fields(object(body)?, CHAT_FIELDS)?;
        for required in ["model", "messages"] {
            if !m.contains_key(required) {
                return Err(invalid(format!("`{required}` is required")));
            }
        }
        let r: RawChat = typed(m)?;
        if let Some(n) = r.n
            && n != 1
        {
            return Err(invalid(format!(
                "`n` {n}: this gateway returns one choice per request; send n = 1 or leave it out"
            )));
        }
        for (name, v) in [
            ("frequency_penalty", r.frequency_penalty),
            ("presence_penalty", r.presence_penalty),
        ] {
            if let Some(v) = v
                && v != 0.0
            {
                return Err(invalid(format!(
                    "`{name}` {v}: repetition penalties are not supported; send 0 or leave it out"
                )));
            }
        }
        if r.logprobs == Some(true) {
            return Err(invalid(
                "`logprobs`: log probabilities are not supported; send false or leave it out",
            ));
        }
        let max_tokens = match (r.max_tokens, r.max_completion_tokens) {
            (Some(a), Some(b)) if a != b => {
                return Err(invalid(format!(
                    "`max_tokens` {a} and `max_completion_tokens` {b} disagree; send one"
                )));
            }
            (a, b) => a.or(b).unwrap_or(0),
        };
        let seed = match r.seed {
            Some(s) => Some(
                u64::try_from(s).map_err(|_| invalid(format!("`seed` {s}: must be 0 or more")))?,
            ),
            None => None,
        };
        if r.messages.is_empty() {
            return Err(invalid("`messages` is empty: send at least one message"));
        }
        let messages = r
            .messages
            .into_iter()
            .enumerate()
            .map(|(i, m)| message(i, m))
            .collect::<Result<Vec<_>, _>>()?;
        let tools = r
            .tools
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, t)| tool(i, t))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Chat {
            model: r.model,
            messages,
            stream: r.stream.unwrap_or(false),
            include_usage: r.stream_options.is_some_and(|o| o.include_usage),
            max_tokens,
            // OpenAI's defaults when a field is left out
            temperature: r.temperature.unwrap_or(1.0),
            top_p: r.top_p.unwrap_or(1.0),
            top_k: r.top_k.unwrap_or(0),
            ignore_eos: r.ignore_eos.unwrap_or(false),
            seed,
            stop: match r.stop {
                None => Vec::new(),
                Some(OneOrMany::One(s)) => vec![s],
                Some(OneOrMany::Many(v)) => v,
            },
            hints: r.edgewise.unwrap_or_default(),
            constraint: r
                .response_format
                .map(response_format)
                .transpose()?
                .flatten(),
            tool_choice: r.tool_choice.map(|c| tool_choice(&c, &tools)).transpose()?,
            tools,
            parallel_tool_calls: r.parallel_tool_calls,
        })
    }
}

/// `response_format`: OpenAI's `text`, `json_object` and `json_schema`, and this gateway's
/// `regex`, `choice` and `grammar` (Lark) for the local models; checked here (compiled once,
/// then cached) so an error names the HTTP field.
fn response_format(m: Map<String, Value>) -> Result<Option<pb::Constraint>, GatewayError> {
    use pb::constraint::Kind;
    let text = |key: &str| {
        m.get(key)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| {
                invalid(format!(
                    "`response_format.{key}` (a string) is required for this type"
                ))
            })
    };
    let ty = m.get("type").and_then(Value::as_str).ok_or_else(|| {
        invalid("`response_format.type` is required: text, json_object or json_schema")
    })?;
    let (kind, field) = match ty {
        "text" => return Ok(None),
        "json_object" => (Kind::JsonObject(true), "response_format"),
        "json_schema" => {
            let js = m.get("json_schema").and_then(Value::as_object).ok_or_else(|| {
                invalid("`response_format.json_schema` (an object) is required for type json_schema")
            })?;
            let name = js.get("name").and_then(Value::as_str).unwrap_or_default();
            if !crate::validate::valid_name(name) {
                return Err(invalid(
                    "`response_format.json_schema.name` is required: 1 to 64 letters, digits, `_` or `-`",
                ));
            }
            let schema = js
                .get("schema")
                .ok_or_else(|| invalid("`response_format.json_schema.schema` is required"))?;
            (
                Kind::JsonSchema(schema.to_string()),
                "response_format.json_schema.schema",
            )
        }
        "regex" => (Kind::Regex(text("regex")?), "response_format.regex"),
        "grammar" => (Kind::Lark(text("grammar")?), "response_format.grammar"),
        "choice" => {
            let options = m
                .get("choice")
                .and_then(Value::as_array)
                .and_then(|a| a.iter().map(|v| v.as_str().map(str::to_string)).collect::<Option<Vec<_>>>())
                .ok_or_else(|| {
                    invalid("`response_format.choice` (an array of strings) is required for type choice")
                })?;
            (
                Kind::Choice(pb::Choice { options }),
                "response_format.choice",
            )
        }
        other => {
            return Err(invalid(format!(
                "`response_format.type` `{}`: one of text, json_object, json_schema (OpenAI's), regex, choice, grammar",
                other.chars().take(32).collect::<String>()
            )));
        }
    };
    let c = pb::Constraint { kind: Some(kind) };
    edgewise_constraint::check(&c).map_err(|e| invalid(format!("`{field}`: {}", e.message)))?;
    Ok(Some(c))
}

/// One message: a role the chat template knows, and text content (a string, or text parts);
/// an assistant's tool calls, a tool's result with the id of the call it answers.
fn message(i: usize, mut m: Map<String, Value>) -> Result<Message, GatewayError> {
    m.retain(|_, v| !v.is_null());
    if let Some(k) = m.keys().find(|k| {
        !matches!(
            k.as_str(),
            "role" | "content" | "tool_calls" | "tool_call_id"
        )
    }) {
        return Err(invalid(format!(
            "unsupported field `messages[{i}].{k}`: messages carry a role, text content, tool calls and a tool call id only"
        )));
    }
    let role = match m.get("role") {
        Some(Value::String(r)) => match r.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            "tool" => "tool",
            other => {
                return Err(invalid(format!(
                    "`messages[{i}].role` `{}` is not supported: use system, developer, user, assistant or tool",
                    other.chars().take(32).collect::<String>()
                )));
            }
        },
        Some(other) => {
            return Err(invalid(format!(
                "`messages[{i}].role` must be a string, not {}",
                kind(other)
            )));
        }
        None => return Err(invalid(format!("`messages[{i}].role` is required"))),
    };
    let content = match m.remove("content") {
        Some(Value::String(s)) => s,
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, p) in parts.iter().enumerate() {
                let ty = p.get("type").and_then(Value::as_str).unwrap_or("");
                match (ty, p.get("text").and_then(Value::as_str)) {
                    ("text", Some(t)) => text.push_str(t),
                    ("text", None) => {
                        return Err(invalid(format!(
                            "`messages[{i}].content[{j}].text` is required"
                        )));
                    }
                    (other, _) => {
                        return Err(invalid(format!(
                            "unsupported content part `messages[{i}].content[{j}]` of type `{}`: only text is supported",
                            other.chars().take(32).collect::<String>()
                        )));
                    }
                }
            }
            text
        }
        Some(other) => {
            return Err(invalid(format!(
                "`messages[{i}].content` must be a string or a list of text parts, not {}",
                kind(&other)
            )));
        }
        // an assistant turn that only calls tools has no content
        None if role == "assistant" && m.contains_key("tool_calls") => String::new(),
        None => return Err(invalid(format!("`messages[{i}].content` is required"))),
    };
    let tool_calls = match m.get("tool_calls") {
        None => Vec::new(),
        Some(Value::Array(calls)) if role == "assistant" => calls
            .iter()
            .enumerate()
            .map(|(j, c)| call(i, j, c))
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(invalid(format!(
                "`messages[{i}].tool_calls` is a list, on assistant messages only"
            )));
        }
    };
    let tool_call_id = match (role, m.get("tool_call_id")) {
        ("tool", Some(Value::String(id))) => id.clone(),
        ("tool", _) => {
            return Err(invalid(format!(
                "`messages[{i}].tool_call_id` (a string) is required on tool messages"
            )));
        }
        (_, Some(_)) => {
            return Err(invalid(format!(
                "`messages[{i}].tool_call_id` is for tool messages only"
            )));
        }
        (_, None) => String::new(),
    };
    Ok(Message {
        role: role.to_string(),
        content,
        tool_calls,
        tool_call_id,
    })
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Input {
    One(String),
    Many(Vec<String>),
    /// Token ids (one list, or a list of lists): refused with its reason.
    Tokens(serde::de::IgnoredAny),
}

#[derive(Deserialize)]
struct RawEmbeddings {
    model: String,
    input: Input,
    encoding_format: Option<String>,
    #[allow(dead_code)] // accepted: OpenAI's end-user id
    user: Option<String>,
    edgewise: Option<Hints>,
}

impl Embeddings {
    pub fn parse(body: &[u8]) -> Result<Self, GatewayError> {
        let m = known_fields(object(body)?, EMBEDDING_FIELDS)?;
        for required in ["model", "input"] {
            if !m.contains_key(required) {
                return Err(invalid(format!("`{required}` is required")));
            }
        }
        let r: RawEmbeddings = typed(m)?;
        let input = match r.input {
            Input::One(s) => vec![s],
            Input::Many(v) if v.is_empty() => {
                return Err(invalid("`input` is empty: send at least one text"));
            }
            Input::Many(v) => v,
            Input::Tokens(_) => {
                return Err(invalid(
                    "`input` as token ids is not supported: send text (a string or a list of strings)",
                ));
            }
        };
        let base64 = match r.encoding_format.as_deref() {
            None | Some("float") => false,
            Some("base64") => true,
            Some(other) => {
                return Err(invalid(format!(
                    "`encoding_format` `{}` is not float or base64",
                    other.chars().take(32).collect::<String>()
                )));
            }
        };
        Ok(Embeddings {
            model: r.model,
            input,
            base64,
            hints: r.edgewise.unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(r: Result<impl std::fmt::Debug, GatewayError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn a_chat_request_reads_openais_fields_and_defaults() {
        let c = Chat::parse(
            br#"{"model":"auto","messages":[{"role":"developer","content":"Be brief."},
                {"role":"user","content":[{"type":"text","text":"Hi "},{"type":"text","text":"there"}]}],
                "max_completion_tokens":12,"stop":"\n","seed":7,"stream":true,
                "stream_options":{"include_usage":true},"n":1,"user":"u1","tool_choice":null,
                "edgewise":{"data_class":"confidential"}}"#,
        )
        .unwrap();
        assert_eq!(c.messages[0].role, "system");
        assert_eq!(c.messages[1].content, "Hi there");
        assert_eq!(
            (c.max_tokens, c.seed, c.stop.clone()),
            (12, Some(7), vec!["\n".into()])
        );
        assert!(c.stream && c.include_usage);
        assert_eq!((c.temperature, c.top_p), (1.0, 1.0));
        assert_eq!(c.hints.data_class.as_deref(), Some("confidential"));
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_by_name() {
        let base = r#""model":"auto","messages":[{"role":"user","content":"x"}]"#;
        let case = |extra: &str| err(Chat::parse(format!("{{{base},{extra}}}").as_bytes()));
        assert!(case(r#""functions":[]"#).contains("unsupported field `functions`"));
        assert!(
            case(r#""tools":[{"type":"function","function":{}}]"#)
                .contains("`tools[0].function.name` is required")
        );
        assert!(case(r#""tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":{"type":"function","function":{"name":"g"}}"#).contains("`tool_choice` names `g`, which is not one of `tools`"));
        assert!(case(r#""tool_choice":"required""#).contains("`tool_choice` needs `tools`"));
        assert!(case(r#""tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object","not":{}}}}]"#).contains("`tools[0].function.parameters`: `not` at / is not supported"));
        assert!(case(r#""n":2"#).contains("`n` 2"));
        assert!(case(r#""logprobs":true"#).contains("`logprobs`"));
        assert!(case(r#""presence_penalty":0.5"#).contains("`presence_penalty` 0.5"));
        assert!(case(r#""max_tokens":3,"max_completion_tokens":4"#).contains("disagree"));
        assert!(case(r#""temperature":"hot""#).contains("`temperature`: invalid type"));
        let image = r#"{"model":"auto","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}"#;
        assert!(
            err(Chat::parse(image.as_bytes()))
                .contains("`messages[0].content[0]` of type `image_url`")
        );
        let tool = r#"{"model":"auto","messages":[{"role":"tool","content":"x"}]}"#;
        assert!(
            err(Chat::parse(tool.as_bytes()))
                .contains("`messages[0].tool_call_id` (a string) is required")
        );
        let name = r#"{"model":"auto","messages":[{"role":"user","content":"x","name":"bob"}]}"#;
        assert!(err(Chat::parse(name.as_bytes())).contains("`messages[0].name`"));
    }

    #[test]
    fn malformed_bodies_say_where() {
        let e = err(Chat::parse(b"{\"model\": \"auto\",\n \"messages\": [}"));
        assert!(e.contains("line 2, column"), "{e}");
        assert!(err(Chat::parse(b"[1]")).contains("JSON object, not an array"));
        assert!(err(Chat::parse(b"{\"model\":\"auto\"}")).contains("`messages` is required"));
    }

    #[test]
    fn embeddings_take_text_in_either_encoding_and_refuse_token_ids() {
        let e = Embeddings::parse(br#"{"model":"auto","input":"hi","encoding_format":"base64"}"#)
            .unwrap();
        assert_eq!((e.input, e.base64), (vec!["hi".to_string()], true));
        let e = Embeddings::parse(br#"{"model":"auto","input":["a","b"]}"#).unwrap();
        assert_eq!((e.input.len(), e.base64), (2, false));
        assert!(err(Embeddings::parse(br#"{"model":"auto","input":[1,2]}"#)).contains("token ids"));
        assert!(err(Embeddings::parse(br#"{"model":"auto","input":[]}"#)).contains("empty"));
        assert!(
            err(Embeddings::parse(
                br#"{"model":"auto","input":"x","dimensions":8}"#
            ))
            .contains("unsupported field `dimensions`")
        );
    }
}
