//! Tool calling in the Hermes format (Qwen2.5's chat template, and the models trained on
//! it): the tools' signatures in the system turn, each call as
//! `<tool_call>\n{"name": …, "arguments": {…}}\n</tool_call>` in the assistant's reply, and
//! results back as `<tool_response>` blocks in a user turn.
//!
//! Everything that knows the format is here: the prompt, the grammar a call is constrained
//! to, and the parser that turns the reply back into calls.

use edgewise_proto as pb;
use serde_json::{Value, json};

/// The manifest's name for this format (`generate.chat_template.tools`).
pub const HERMES: &str = "hermes";

pub const OPEN: &str = "<tool_call>";
pub const CLOSE: &str = "</tool_call>";

fn parameters(t: &pb::Tool) -> Value {
    if t.parameters.is_empty() {
        json!({"type": "object"})
    } else {
        serde_json::from_str(&t.parameters).unwrap_or_else(|_| json!({"type": "object"}))
    }
}

/// What the system turn gains: the signatures and how to call them (Qwen2.5's wording).
pub fn system_block(tools: &[pb::Tool]) -> String {
    let mut out = String::from(
        "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
         You are provided with function signatures within <tools></tools> XML tags:\n<tools>",
    );
    for t in tools {
        let mut f = json!({"name": t.name, "parameters": parameters(t)});
        if !t.description.is_empty() {
            f["description"] = json!(t.description);
        }
        out.push('\n');
        out.push_str(&json!({"type": "function", "function": f}).to_string());
    }
    out.push_str(
        "\n</tools>\n\nFor each function call, return a json object with function name and \
         arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n\
         {\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>",
    );
    out
}

/// One call as the model writes it.
pub fn call_text(c: &pb::ToolCall) -> String {
    let arguments: Value =
        serde_json::from_str(&c.arguments).unwrap_or_else(|_| json!(c.arguments.clone()));
    // the template's own spelling: name first, `, ` and `: ` between
    format!(
        "{OPEN}\n{{\"name\": {}, \"arguments\": {}}}\n{CLOSE}",
        json!(c.name),
        arguments
    )
}

/// The reply a call constraint allows: one call (`parallel`: one or more, a newline
/// apart), each `{"name": N, "arguments": A}` with A following N's schema; `only`: that
/// tool alone.
pub fn calls_grammar(tools: &[pb::Tool], only: Option<&str>, parallel: bool) -> pb::Constraint {
    let mut bodies = Vec::new();
    for (i, t) in tools.iter().enumerate() {
        if only.is_some_and(|n| n != t.name) {
            continue;
        }
        let schema = json!({
            "type": "object",
            "properties": {"name": {"const": t.name}, "arguments": parameters(t)},
            "required": ["name", "arguments"],
            "additionalProperties": false,
            "x-guidance": {"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "},
        });
        bodies.push((format!("tool{i}"), schema));
    }
    let mut g = String::new();
    g.push_str(if parallel {
        "start: call (\"\\n\" call)*\n"
    } else {
        "start: call\n"
    });
    g.push_str(&format!(
        "call: {} body {}\n",
        lark_string(&format!("{OPEN}\n")),
        lark_string(&format!("\n{CLOSE}"))
    ));
    let names: Vec<&str> = bodies.iter().map(|(n, _)| n.as_str()).collect();
    g.push_str(&format!("body: {}\n", names.join(" | ")));
    for (name, schema) in &bodies {
        g.push_str(&format!("{name}: %json {schema}\n"));
    }
    pb::Constraint {
        kind: Some(pb::constraint::Kind::Lark(g)),
    }
}

/// A Lark string literal (JSON's escapes are Lark's).
fn lark_string(s: &str) -> String {
    json!(s).to_string()
}

/// What the reply stream becomes: text for the caller, or whole calls.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Text(String),
    Call(pb::ToolCall),
}

/// Reads a reply as it streams. A reply that starts with `<tool_call>` (after white space) is
/// calls: nothing of it is text, and each call is given whole when its closing tag comes.
/// Any other reply is text, passed on as it comes.
#[derive(Debug, Default)]
pub struct CallParser {
    held: String,
    mode: Mode,
    calls: u32,
}

#[derive(Debug, Default, PartialEq)]
enum Mode {
    /// Not yet known (only white space, or a prefix of `<tool_call>`, so far).
    #[default]
    Undecided,
    Text,
    Calls,
}

impl CallParser {
    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        if self.mode == Mode::Text {
            return if text.is_empty() {
                Vec::new()
            } else {
                vec![Piece::Text(text.to_string())]
            };
        }
        self.held.push_str(text);
        if self.mode == Mode::Undecided {
            let start = self.held.trim_start();
            if start.starts_with(OPEN) {
                self.mode = Mode::Calls;
            } else if start.is_empty() || OPEN.starts_with(start) {
                return Vec::new();
            } else {
                self.mode = Mode::Text;
                return vec![Piece::Text(std::mem::take(&mut self.held))];
            }
        }
        let mut out = Vec::new();
        while let Some(end) = self.held.find(CLOSE) {
            let block: String = self.held.drain(..end + CLOSE.len()).collect();
            // a block that is not a call (an unconstrained model's malformed JSON) is kept as
            // text: nothing the model wrote is lost
            match self.parse(&block) {
                Some(call) => out.push(Piece::Call(call)),
                None => out.push(Piece::Text(block)),
            }
        }
        out
    }

    /// The end of the reply: what was held back (an unfinished call is given as text, so
    /// nothing the model wrote is lost).
    pub fn finish(&mut self) -> Vec<Piece> {
        let rest = std::mem::take(&mut self.held);
        if rest.trim().is_empty() {
            Vec::new()
        } else {
            vec![Piece::Text(rest)]
        }
    }

    pub fn calls(&self) -> u32 {
        self.calls
    }

    fn parse(&mut self, block: &str) -> Option<pb::ToolCall> {
        let inner = block.trim().strip_prefix(OPEN)?.strip_suffix(CLOSE)?;
        let v: Value = serde_json::from_str(inner.trim()).ok()?;
        let name = v.get("name")?.as_str()?.to_string();
        let arguments = match v.get("arguments") {
            Some(Value::String(s)) => s.clone(),
            Some(a) => a.to_string(),
            None => "{}".into(),
        };
        self.calls += 1;
        Some(pb::ToolCall {
            id: call_id(),
            name,
            arguments,
        })
    }
}

/// `call_` and 24 random letters and digits, as OpenAI's ids look.
fn call_id() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let tail: String = (0..24)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect();
    format!("call_{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(name: &str, parameters: &str) -> pb::Tool {
        pb::Tool {
            name: name.into(),
            description: format!("{name} things"),
            parameters: parameters.into(),
        }
    }

    #[test]
    fn a_reply_of_calls_gives_each_call_whole_and_no_text() {
        let mut p = CallParser::default();
        let reply = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"now\", \"arguments\": {}}\n</tool_call>";
        let mut pieces = Vec::new();
        // streamed a few bytes at a time
        for chunk in reply.as_bytes().chunks(5) {
            pieces.extend(p.push(std::str::from_utf8(chunk).unwrap_or_default()));
        }
        pieces.extend(p.finish());
        let calls: Vec<_> = pieces
            .iter()
            .map(|x| match x {
                Piece::Call(c) => (c.name.as_str(), c.arguments.as_str()),
                Piece::Text(t) => panic!("text {t:?}"),
            })
            .collect();
        assert_eq!(
            calls,
            vec![("get_weather", "{\"city\":\"Oslo\"}"), ("now", "{}")]
        );
        assert_eq!(p.calls(), 2);
    }

    #[test]
    fn a_text_reply_passes_through() {
        let mut p = CallParser::default();
        let mut text = String::new();
        for c in [" ", "<to", "day is", " fine"] {
            for piece in p.push(c) {
                match piece {
                    Piece::Text(t) => text.push_str(&t),
                    Piece::Call(c) => panic!("{c:?}"),
                }
            }
        }
        assert_eq!(text, " <today is fine");
        assert_eq!(p.calls(), 0);
    }

    #[test]
    fn a_malformed_call_is_kept_as_text() {
        let mut p = CallParser::default();
        let block = "<tool_call>\n{\"name\": get_weather}\n</tool_call>";
        assert_eq!(p.push(block), vec![Piece::Text(block.into())]);
        assert_eq!(p.calls(), 0);
    }

    #[test]
    fn an_unfinished_call_is_kept_as_text() {
        let mut p = CallParser::default();
        assert!(p.push("<tool_call>\n{\"name\": \"f\", \"argu").is_empty());
        assert_eq!(
            p.finish(),
            vec![Piece::Text("<tool_call>\n{\"name\": \"f\", \"argu".into())]
        );
    }

    #[test]
    fn the_grammar_names_each_tool_and_its_schema() {
        let tools = [
            tool(
                "get_weather",
                r#"{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}"#,
            ),
            tool("now", ""),
        ];
        let Some(pb::constraint::Kind::Lark(g)) = calls_grammar(&tools, None, true).kind else {
            panic!("not a grammar");
        };
        assert!(g.starts_with("start: call (\"\\n\" call)*\n"), "{g}");
        assert!(g.contains("body: tool0 | tool1"), "{g}");
        assert!(g.contains(r#""const":"get_weather""#), "{g}");
        let Some(pb::constraint::Kind::Lark(one)) = calls_grammar(&tools, Some("now"), false).kind
        else {
            panic!("not a grammar");
        };
        assert!(
            one.contains("body: tool1\n") && !one.contains("tool0"),
            "{one}"
        );
        assert!(system_block(&tools).contains(r#""name":"get_weather""#));
        let call = pb::ToolCall {
            id: "x".into(),
            name: "now".into(),
            arguments: "{}".into(),
        };
        assert_eq!(
            call_text(&call),
            "<tool_call>\n{\"name\": \"now\", \"arguments\": {}}\n</tool_call>"
        );
    }
}
