//! Request validation: a caller's message → a `RouteRequest`, or an error naming what is wrong.
//! Pure (no I/O, no clock), so it is fuzzed directly (`fuzz/`, corpus replayed by `make test`).

use edgewise_proto as pb;

use crate::error::GatewayError;
use crate::providers::Message;
use crate::routing::{DataClass, OutputConstraint, RouteRequest, Task};

/// The one conversion of the wire's task into routing's.
impl TryFrom<pb::Task> for Task {
    type Error = GatewayError;

    fn try_from(t: pb::Task) -> Result<Self, GatewayError> {
        match t {
            pb::Task::Generate => Ok(Task::Generate),
            pb::Task::Embed => Ok(Task::Embed),
            pb::Task::Classify => Ok(Task::Classify),
            pb::Task::Unspecified => Err(no_task()),
        }
    }
}

fn no_task() -> GatewayError {
    GatewayError::InvalidRequest("task must be TASK_GENERATE, TASK_EMBED or TASK_CLASSIFY".into())
}

/// A task as a message field carries it (an enum's number).
pub fn task_of(t: i32) -> Result<Task, GatewayError> {
    pb::Task::try_from(t).map_err(|_| no_task())?.try_into()
}

/// What one request may ask for (`[limits]` in gateway.toml).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request message, bytes (checked before it is decoded).
    pub max_message_bytes: usize,
    /// Most texts in one embed or classify request, and most messages in one chat.
    pub max_texts: usize,
    /// Most prompt tokens (estimated, about 4 bytes a token) in one request.
    pub max_prompt_tokens: u32,
    /// Largest `max_tokens` a generation may ask for.
    pub max_tokens: u32,
    /// Most requests one tenant may have in flight at once (streams included).
    pub max_in_flight_per_tenant: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 4 << 20,
            max_texts: 256,
            max_prompt_tokens: 32_768,
            max_tokens: 4096,
            max_in_flight_per_tenant: 64,
        }
    }
}

fn invalid(m: String) -> GatewayError {
    GatewayError::InvalidRequest(m)
}

/// Tokens a text will take, estimated without the model's tokenizer (about 4 bytes a token);
/// the agent enforces the exact context length.
pub fn estimate_tokens(text: &str) -> u32 {
    u32::try_from(text.len() / 4 + 1).unwrap_or(u32::MAX)
}

/// An upper bound on a text's tokens under any byte-level tokenizer (a token covers at least
/// one byte), with room for the template tokens hosted APIs add around a message.
pub fn max_tokens_of(text: &str) -> u32 {
    u32::try_from(text.len())
        .unwrap_or(u32::MAX)
        .saturating_add(8)
}

/// The routing hints and limits every task shares.
pub fn route_request(
    tenant: String,
    task: Task,
    h: Option<&pb::RoutingHints>,
    (prompt_tokens, prompt_tokens_max): (u32, u32),
    max_tokens: u32,
    limits: &Limits,
) -> Result<RouteRequest, GatewayError> {
    if prompt_tokens > limits.max_prompt_tokens {
        return Err(invalid(format!(
            "the prompt is about {prompt_tokens} tokens; this gateway takes at most {} (limits.max_prompt_tokens)",
            limits.max_prompt_tokens
        )));
    }
    if max_tokens > limits.max_tokens {
        return Err(invalid(format!(
            "request.max_tokens {max_tokens} is more than this gateway allows ({}, limits.max_tokens)",
            limits.max_tokens
        )));
    }
    let data_class = match h.map(|h| h.data_class.as_str()).unwrap_or("") {
        "" => None,
        c => Some(DataClass::parse(c).ok_or_else(|| {
            invalid(format!(
                "routing.data_class `{}` is not one of public, internal, confidential, restricted",
                c.chars().take(64).collect::<String>()
            ))
        })?),
    };
    let min_quality = h.and_then(|h| h.min_quality);
    if let Some(q) = min_quality
        && !(0.0..=1.0).contains(&q)
    {
        return Err(invalid(format!("routing.min_quality {q} must be in 0..=1")));
    }
    let route = h.map(|h| h.route.clone()).filter(|r| !r.is_empty());
    if let Some(r) = &route
        && r.len() > 128
    {
        return Err(invalid(format!(
            "routing.route is {} bytes; route names are at most 128",
            r.len()
        )));
    }
    Ok(RouteRequest {
        tenant,
        task,
        data_class,
        min_quality,
        max_latency_ms: h.and_then(|h| h.max_latency_ms),
        route,
        prompt_tokens,
        prompt_tokens_max,
        max_tokens,
        exclude_nodes: Vec::new(),
        larger_than: None,
        p_adequate: Vec::new(),
        ignore_eos: false,
        space: None,
        findings: Default::default(),
        constraint: None,
        tools: false,
    })
}

/// A generation: its messages and route request.
pub fn generate(
    tenant: String,
    body: &pb::GatewayGenerateRequest,
    limits: &Limits,
) -> Result<(Vec<Message>, RouteRequest), GatewayError> {
    let r = body
        .request
        .as_ref()
        .ok_or_else(|| invalid("request is required".into()))?;
    let messages: Vec<Message> = match &r.input {
        Some(pb::generate_request::Input::Prompt(p)) => vec![Message {
            role: "user".into(),
            content: p.clone(),
        }],
        Some(pb::generate_request::Input::Chat(c)) => {
            if c.messages.is_empty() {
                return Err(invalid("request.chat has no messages".into()));
            }
            if c.messages.len() > limits.max_texts {
                return Err(invalid(format!(
                    "request.chat has {} messages; at most {} (limits.max_texts)",
                    c.messages.len(),
                    limits.max_texts
                )));
            }
            let mut out = Vec::with_capacity(c.messages.len());
            for (i, m) in c.messages.iter().enumerate() {
                if !matches!(m.role.as_str(), "system" | "user" | "assistant" | "tool") {
                    return Err(invalid(format!(
                        "request.chat.messages[{i}].role `{}` is not system, user, assistant or tool",
                        m.role.chars().take(32).collect::<String>()
                    )));
                }
                if m.role == "tool" && m.tool_call_id.is_empty() {
                    return Err(invalid(format!(
                        "request.chat.messages[{i}].tool_call_id is required on a tool message"
                    )));
                }
                if m.role != "assistant" && !m.tool_calls.is_empty() {
                    return Err(invalid(format!(
                        "request.chat.messages[{i}].tool_calls: only assistant messages call tools"
                    )));
                }
                out.push(Message {
                    role: m.role.clone(),
                    content: m.content.clone(),
                });
            }
            out
        }
        None => {
            return Err(invalid(
                "request.input: one of prompt or chat is required".into(),
            ));
        }
    };
    if !(r.temperature.is_finite() && (0.0..=2.0).contains(&r.temperature)) {
        return Err(invalid(format!(
            "request.temperature {} must be in 0..=2",
            r.temperature
        )));
    }
    if !(r.top_p.is_finite() && (0.0..=1.0).contains(&r.top_p)) {
        return Err(invalid(format!(
            "request.top_p {} must be in 0..=1",
            r.top_p
        )));
    }
    // the agents' limit too (one contract): nothing admitted here fails there for it
    edgewise_proto::contract::check_stops(&r.stop).map_err(|m| invalid(format!("request.{m}")))?;
    let estimate = messages.iter().fold(0u32, |a, m| {
        a.saturating_add(estimate_tokens(&m.content))
            .saturating_add(4)
    });
    let max = messages
        .iter()
        .fold(8u32, |a, m| a.saturating_add(max_tokens_of(&m.content)));
    let mut req = route_request(
        tenant,
        Task::Generate,
        body.routing.as_ref(),
        (estimate, max),
        r.max_tokens,
        limits,
    )?;
    // one local model by name (an evaluation, a pinned caller); empty: the policy chooses
    if r.model.len() > 128 {
        return Err(invalid(format!(
            "request.model is {} bytes; a model name is at most 128",
            r.model.len()
        )));
    }
    req.space = (!r.model.is_empty()).then(|| r.model.clone());
    req.ignore_eos = r.ignore_eos;
    if let Some(c) = &r.constraint {
        if r.ignore_eos {
            return Err(invalid(
                "request.ignore_eos cannot be combined with request.constraint (a constrained output ends when it is complete)".into(),
            ));
        }
        // compiled once here (cached by hash): a constraint no agent could follow is refused
        // before it is routed
        edgewise_constraint::check(c).map_err(|e| invalid(format!("request.{e}")))?;
        req.constraint = OutputConstraint::of(c);
    }
    req.tools = tools(r)?;
    Ok((messages, req))
}

/// Most tools one request may give (each is compiled into the reply's grammar).
pub const MAX_TOOLS: usize = 128;

/// OpenAI's rule for a function's (and a JSON schema's) name: 1 to 64 letters, digits, `_`
/// or `-`.
pub fn valid_name(name: &str) -> bool {
    let ok = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    !name.is_empty() && name.len() <= 64 && name.chars().all(ok)
}

/// The request's tools and tool choice, checked (names, parameter schemas the engine can
/// follow, a choice naming a given tool); whether the conversation uses tools (then only a
/// model with a tool format can serve it).
fn tools(r: &pb::GenerateRequest) -> Result<bool, GatewayError> {
    use pb::tool_choice::Kind;
    if r.tools.len() > MAX_TOOLS {
        return Err(invalid(format!(
            "request.tools has {} tools; at most {MAX_TOOLS}",
            r.tools.len()
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, t) in r.tools.iter().enumerate() {
        if !valid_name(&t.name) {
            return Err(invalid(format!(
                "request.tools[{i}].name must be 1 to 64 letters, digits, `_` or `-`"
            )));
        }
        if !seen.insert(t.name.as_str()) {
            return Err(invalid(format!(
                "request.tools[{i}].name `{}` is given twice",
                t.name
            )));
        }
        if !t.parameters.is_empty() {
            let c = pb::Constraint {
                kind: Some(pb::constraint::Kind::JsonSchema(t.parameters.clone())),
            };
            edgewise_constraint::check(&c)
                .map_err(|e| invalid(format!("request.tools[{i}].parameters: {}", e.message)))?;
        }
    }
    let choice = r.tool_choice.as_ref().and_then(|c| c.kind.as_ref());
    match choice {
        Some(Kind::Function(name)) if !r.tools.iter().any(|t| &t.name == name) => {
            return Err(invalid(format!(
                "request.tool_choice names `{}`, which is not one of request.tools",
                name.chars().take(64).collect::<String>()
            )));
        }
        Some(Kind::Auto(_) | Kind::Required(_) | Kind::Function(_)) if r.tools.is_empty() => {
            return Err(invalid("request.tool_choice needs request.tools".into()));
        }
        _ => {}
    }
    if r.constraint.is_some() && !r.tools.is_empty() && !matches!(choice, Some(Kind::None(_))) {
        return Err(invalid(
            "request.constraint and request.tools cannot be combined (send tool_choice none, or no constraint)".into(),
        ));
    }
    let history = match &r.input {
        Some(pb::generate_request::Input::Chat(c)) => c
            .messages
            .iter()
            .any(|m| m.role == "tool" || !m.tool_calls.is_empty()),
        _ => false,
    };
    if !r.tools.is_empty() && !matches!(r.input, Some(pb::generate_request::Input::Chat(_))) {
        return Err(invalid(
            "request.tools need request.chat (the model's template shows them)".into(),
        ));
    }
    Ok(!r.tools.is_empty() || history)
}

/// An embed or classify request's texts: one to `max_texts` of them.
/// An embed or classify request; `model` (the request's field) names the vector space or
/// label set it needs, or one model; empty: the route's.
pub fn texts(
    tenant: String,
    task: Task,
    model: &str,
    texts: &[String],
    routing: Option<&pb::RoutingHints>,
    limits: &Limits,
) -> Result<RouteRequest, GatewayError> {
    if model.len() > 128 {
        return Err(invalid(format!(
            "request.model is {} bytes; a vector space, label set or model name is at most 128",
            model.len()
        )));
    }
    if texts.is_empty() {
        return Err(invalid("request.texts is empty".into()));
    }
    if texts.len() > limits.max_texts {
        return Err(invalid(format!(
            "request.texts has {} texts; at most {} per request (limits.max_texts)",
            texts.len(),
            limits.max_texts
        )));
    }
    // the longest text must fit a model's context; every text counts towards an external
    // call's cost
    let longest = texts.iter().map(|t| estimate_tokens(t)).max().unwrap_or(0);
    let total = texts
        .iter()
        .fold(0u32, |a, t| a.saturating_add(max_tokens_of(t)));
    let mut req = route_request(tenant, task, routing, (longest, total), 0, limits)?;
    req.space = (!model.is_empty()).then(|| model.to_string());
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request_with(f: impl FnOnce(&mut pb::GenerateRequest)) -> pb::GatewayGenerateRequest {
        let mut r = pb::GenerateRequest {
            input: Some(pb::generate_request::Input::Prompt("hi".into())),
            max_tokens: 16,
            ..Default::default()
        };
        f(&mut r);
        pb::GatewayGenerateRequest {
            request: Some(r),
            routing: None,
        }
    }

    fn err(r: Result<impl std::fmt::Debug, GatewayError>) -> String {
        match r {
            Err(GatewayError::InvalidRequest(m)) => m,
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    #[test]
    fn tools_and_constraints_are_checked_with_the_field_named() {
        let l = Limits::default();
        let t = || "shop".to_string();
        let chat = |r: &mut pb::GenerateRequest| {
            r.input = Some(pb::generate_request::Input::Chat(pb::ChatMessages {
                messages: vec![pb::ChatMessage {
                    role: "user".into(),
                    content: "hi".into(),
                    ..Default::default()
                }],
            }));
        };
        let tool = |name: &str| pb::Tool {
            name: name.into(),
            ..Default::default()
        };
        let ok = generate(
            t(),
            &request_with(|r| {
                chat(r);
                r.tools = vec![tool("a"), tool("b")];
            }),
            &l,
        );
        assert!(ok.is_ok_and(|(_, req)| req.tools));
        let e = err(generate(
            t(),
            &request_with(|r| {
                chat(r);
                r.tools = vec![tool("a"), tool("a")];
            }),
            &l,
        ));
        assert_eq!(e, "request.tools[1].name `a` is given twice");
        let e = err(generate(
            t(),
            &request_with(|r| {
                chat(r);
                r.tools = (0..=MAX_TOOLS).map(|i| tool(&format!("t{i}"))).collect();
            }),
            &l,
        ));
        assert!(e.contains("at most 128"), "{e}");
        let e = err(generate(
            t(),
            &request_with(|r| {
                chat(r);
                r.tools = vec![tool("a b")];
            }),
            &l,
        ));
        assert!(e.starts_with("request.tools[0].name"), "{e}");
        let e = err(generate(
            t(),
            &request_with(|r| {
                r.tools = vec![tool("a")];
            }),
            &l,
        ));
        assert!(e.contains("need request.chat"), "{e}");
        let e = err(generate(
            t(),
            &request_with(|r| {
                r.constraint = Some(pb::Constraint {
                    kind: Some(pb::constraint::Kind::Regex("(".into())),
                });
            }),
            &l,
        ));
        assert!(e.starts_with("request.constraint.regex: "), "{e}");
    }

    #[test]
    fn each_limit_is_refused_with_its_reason() {
        let l = Limits {
            max_texts: 2,
            max_prompt_tokens: 10,
            max_tokens: 100,
            ..Limits::default()
        };
        let t = || "shop".to_string();
        assert!(generate(t(), &request_with(|_| {}), &l).is_ok());
        assert!(
            err(generate(t(), &request_with(|r| r.max_tokens = 101), &l))
                .contains("limits.max_tokens")
        );
        let long = "x".repeat(100);
        let m = err(generate(
            t(),
            &request_with(|r| r.input = Some(pb::generate_request::Input::Prompt(long.clone()))),
            &l,
        ));
        assert!(m.contains("limits.max_prompt_tokens"), "{m}");
        let three = vec!["a".to_string(); 3];
        let m = err(texts(t(), Task::Embed, "", &three, None, &l));
        assert!(m.contains("3 texts; at most 2"), "{m}");
        assert!(err(texts(t(), Task::Embed, "", &[], None, &l)).contains("empty"));
        let m = err(generate(
            t(),
            &request_with(|r| r.temperature = f32::NAN),
            &l,
        ));
        assert!(m.contains("temperature"), "{m}");
        let m = err(generate(
            t(),
            &request_with(|r| r.stop = vec![String::new()]),
            &l,
        ));
        assert!(m.contains("request.stop"), "{m}");
        let chat = |role: &str| {
            request_with(|r| {
                r.input = Some(pb::generate_request::Input::Chat(pb::ChatMessages {
                    messages: vec![pb::ChatMessage {
                        role: role.into(),
                        content: "x".into(),
                        ..Default::default()
                    }],
                }))
            })
        };
        assert!(generate(t(), &chat("system"), &l).is_ok());
        assert!(err(generate(t(), &chat("root"), &l)).contains("role `root`"));
    }
}
