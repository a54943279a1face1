//! The OpenAI chat fields of tool calling: `tools`, `tool_choice`, and the tool calls of an
//! assistant message, read into the gRPC contract's types with errors that name the field.

use edgewise_proto as pb;
use serde_json::Value;

use super::invalid;
use crate::error::GatewayError;

/// `tools[i]`: `{"type": "function", "function": {"name", "description", "parameters"}}`,
/// the parameters a JSON schema the engine can follow.
pub fn tool(i: usize, t: &Value) -> Result<pb::Tool, GatewayError> {
    if t.get("type").and_then(Value::as_str) != Some("function") {
        return Err(invalid(format!("`tools[{i}].type` must be \"function\"")));
    }
    let f = t
        .get("function")
        .and_then(Value::as_object)
        .ok_or_else(|| invalid(format!("`tools[{i}].function` (an object) is required")))?;
    let name = f.get("name").and_then(Value::as_str).unwrap_or_default();
    if !crate::validate::valid_name(name) {
        return Err(invalid(format!(
            "`tools[{i}].function.name` is required: 1 to 64 letters, digits, `_` or `-`"
        )));
    }
    let parameters = match f.get("parameters") {
        None | Some(Value::Null) => String::new(),
        Some(p) => {
            let c = pb::Constraint {
                kind: Some(pb::constraint::Kind::JsonSchema(p.to_string())),
            };
            edgewise_constraint::check(&c)
                .map_err(|e| invalid(format!("`tools[{i}].function.parameters`: {}", e.message)))?;
            p.to_string()
        }
    };
    Ok(pb::Tool {
        name: name.to_string(),
        description: f
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        parameters,
    })
}

/// `tool_choice`: `none`, `auto`, `required`, or `{"type": "function", "function": {"name"}}`
/// naming one of `tools`.
pub fn tool_choice(c: &Value, tools: &[pb::Tool]) -> Result<pb::ToolChoice, GatewayError> {
    use pb::tool_choice::Kind;
    let kind = match c {
        Value::String(s) if s == "none" => Kind::None(true),
        Value::String(s) if s == "auto" => Kind::Auto(true),
        Value::String(s) if s == "required" => Kind::Required(true),
        Value::Object(o) => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("`tool_choice.function.name` is required"))?;
            if !tools.iter().any(|t| t.name == name) {
                return Err(invalid(format!(
                    "`tool_choice` names `{}`, which is not one of `tools`",
                    name.chars().take(64).collect::<String>()
                )));
            }
            Kind::Function(name.to_string())
        }
        _ => {
            return Err(invalid(
                "`tool_choice` must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": ...}}",
            ));
        }
    };
    if tools.is_empty() && !matches!(kind, Kind::None(_)) {
        return Err(invalid("`tool_choice` needs `tools`"));
    }
    Ok(pb::ToolChoice { kind: Some(kind) })
}

/// `messages[i].tool_calls[j]` of an assistant message.
pub fn call(i: usize, j: usize, c: &Value) -> Result<pb::ToolCall, GatewayError> {
    let at = |k: &str| format!("`messages[{i}].tool_calls[{j}].{k}`");
    let f = c
        .get("function")
        .and_then(Value::as_object)
        .ok_or_else(|| invalid(format!("{} (an object) is required", at("function"))))?;
    let name = f
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("{} is required", at("function.name"))))?;
    let arguments = match f.get("arguments") {
        Some(Value::String(s)) => s.clone(),
        None => "{}".into(),
        Some(_) => {
            return Err(invalid(format!(
                "{} must be a string (JSON text)",
                at("function.arguments")
            )));
        }
    };
    Ok(pb::ToolCall {
        id: c
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        name: name.to_string(),
        arguments,
    })
}

/// A call as OpenAI returns it (`index` for a streamed delta).
pub fn call_json(c: &pb::ToolCall, index: Option<usize>) -> Value {
    let mut v = serde_json::json!({
        "id": c.id,
        "type": "function",
        "function": {"name": c.name, "arguments": c.arguments},
    });
    if let Some(i) = index {
        v["index"] = serde_json::json!(i);
    }
    v
}
