//! The OpenAI-compatible endpoints: each reads its body (`wire`), authenticates the caller
//! as the gRPC front does, and runs the shared request path (`requests`). Errors leave in
//! OpenAI's shape with the status `GatewayError::http` gives them.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use edgewise_proto as pb;
use futures::StreamExt;
use serde_json::{Value, json};

use super::invalid;
use super::models::{embedding_model, fleet_spaces, routing, visible_models};
use super::wire::{Chat, Embeddings};
use crate::error::GatewayError;
use crate::requests::{self, Caller};
use crate::routing::Task;

/// What the endpoints share: the gateway's state and how long a client may take to send.
pub struct Front {
    pub state: Arc<crate::state::State>,
    pub client_timeout: Duration,
}

/// An error as OpenAI's clients expect it: `{"error": {"message", "type", "code"}}`.
pub struct ApiError(pub GatewayError);

impl From<GatewayError> for ApiError {
    fn from(e: GatewayError) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let h = self.0.http();
        let mut r = (
            StatusCode::from_u16(h.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            axum::Json(error_body(&self.0)),
        )
            .into_response();
        if let Some(s) = h.retry_after_s {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

fn error_body(e: &GatewayError) -> Value {
    let h = e.http();
    json!({"error": {"message": e.to_string(), "type": h.kind, "code": h.code, "param": null}})
}

/// The body, whole: refused past `limits.max_message_bytes` (413) or when it does not arrive
/// within the client timeout (408).
async fn read_body(front: &Front, headers: &HeaderMap, body: Body) -> Result<Bytes, GatewayError> {
    let limit = front.state.limits.max_message_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(GatewayError::TooLarge { limit });
    }
    match tokio::time::timeout(front.client_timeout, axum::body::to_bytes(body, limit)).await {
        Err(_) => Err(GatewayError::ClientTimeout(format!(
            "the request body did not arrive within {} ms (http.client_timeout_ms)",
            front.client_timeout.as_millis()
        ))),
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => {
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(s) = source {
                if s.is::<http_body_util::LengthLimitError>() {
                    return Err(GatewayError::TooLarge { limit });
                }
                source = s.source();
            }
            Err(invalid(format!("reading the request body failed: {e}")))
        }
    }
}

/// The tenant (bearer token, tenant certificate, or in development the `x-edgewise-tenant`
/// header), the deadline (`x-edgewise-timeout-ms`) and the trace context.
fn caller(front: &Front, parts: &axum::http::request::Parts) -> Result<Caller, GatewayError> {
    let headers = tonic::metadata::MetadataMap::from_headers(parts.headers.clone());
    let mut extensions = tonic::Extensions::new();
    if let Some(peer) = parts.extensions.get::<edgewise_tls::net::PeerInfo>() {
        extensions.insert(peer.clone());
    }
    let request = tonic::Request::from_parts(headers.clone(), extensions, ());
    let tenant = front.state.auth.tenant(&request)?;
    let deadline = crate::requests::contract::http_deadline(&parts.headers)?;
    Ok(Caller {
        tenant,
        deadline,
        headers,
        policy: front.state.policy(),
    })
}

/// `local:node/model` or `external:provider/model`.
fn target(d: &pb::Decision) -> (String, String) {
    match &d.target {
        Some(pb::decision::Target::Local(l)) => {
            (format!("local:{}/{}", l.node_id, l.model), l.model.clone())
        }
        Some(pb::decision::Target::External(e)) => (
            format!("external:{}/{}", e.provider, e.model),
            e.model.clone(),
        ),
        None => ("none".into(), String::new()),
    }
}

/// The decision, as the non-streaming answers' `edgewise` field.
fn decision_json(d: &pb::Decision) -> Value {
    let list = |v: &[pb::Excluded]| {
        v.iter()
            .map(|e| json!({"candidate": e.candidate, "reason": e.reason}))
            .collect::<Vec<_>>()
    };
    json!({
        "decision_id": d.decision_id,
        "route": d.route,
        "rule": d.rule,
        "data_class": d.data_class,
        "declared_data_class": d.declared_data_class,
        "inferred_data_class": d.inferred_data_class,
        "detections": d.detections.iter().map(|x| json!({
            "detector": x.detector,
            "category": x.category,
            "count": x.count,
        })).collect::<Vec<_>>(),
        "target": target(d).0,
        // the serving model was not resident: the wait for its load, in ms
        "cold_load_ms": match &d.target {
            Some(pb::decision::Target::Local(l)) => l.cold_load_ms,
            _ => 0,
        },
        "excluded": list(&d.excluded),
        "retried": list(&d.retried),
        "space": d.space,
        "cascade": d.cascade.iter().map(|c| json!({
            "candidate": c.candidate,
            "confidence": c.confidence.map(|v| json!({
                "mean_logprob": v.mean_logprob,
                "min_logprob": v.min_logprob,
                "p10_logprob": v.p10_logprob,
                "tokens": v.tokens,
            })),
            "signal": c.signal,
            "threshold": c.threshold,
            "outcome": c.outcome,
        })).collect::<Vec<_>>(),
        "p_adequate": d.p_adequate,
    })
}

fn decision_headers(r: &mut Response, d: &pb::Decision) {
    let h = r.headers_mut();
    for (name, value) in [
        ("x-edgewise-decision-id", d.decision_id.clone()),
        ("x-edgewise-target", target(d).0),
        ("x-edgewise-rule", d.rule.clone()),
        ("x-edgewise-route", d.route.clone()),
        ("x-edgewise-space", d.space.clone()),
        ("x-edgewise-data-class", d.data_class.clone()),
        (
            "x-edgewise-detections",
            d.detections
                .iter()
                .map(|x| format!("{}={}", x.detector, x.count))
                .collect::<Vec<_>>()
                .join(","),
        ),
    ] {
        if value.is_empty() {
            continue;
        }
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn finish_reason(done: &pb::GenerateDone) -> &'static str {
    match pb::FinishReason::try_from(done.finish_reason) {
        Ok(pb::FinishReason::Length) => "length",
        Ok(pb::FinishReason::ToolCalls) => "tool_calls",
        _ => "stop",
    }
}

fn usage_json(u: Option<pb::Usage>) -> Value {
    let u = u.unwrap_or_default();
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    })
}

/// `POST /v1/chat/completions`.
pub async fn chat(State(front): State<Arc<Front>>, request: Request) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let caller = caller(&front, &parts)?;
    let bytes = read_body(&front, &parts.headers, body).await?;
    let chat = Chat::parse(&bytes)?;
    let hints = routing(
        &parts.headers,
        &chat.hints,
        &chat.model,
        Task::Generate,
        &caller,
    )?;
    let request = pb::GatewayGenerateRequest {
        request: Some(pb::GenerateRequest {
            model: String::new(),
            input: Some(pb::generate_request::Input::Chat(pb::ChatMessages {
                messages: chat
                    .messages
                    .iter()
                    .map(|m| pb::ChatMessage {
                        role: m.role.clone(),
                        content: m.content.clone(),
                        tool_calls: m.tool_calls.clone(),
                        tool_call_id: m.tool_call_id.clone(),
                    })
                    .collect(),
            })),
            max_tokens: chat.max_tokens,
            temperature: chat.temperature,
            top_p: chat.top_p,
            top_k: chat.top_k,
            ignore_eos: chat.ignore_eos,
            seed: chat.seed,
            stop: chat.stop.clone(),
            constraint: chat.constraint.clone(),
            tools: chat.tools.clone(),
            tool_choice: chat.tool_choice.clone(),
            parallel_tool_calls: chat.parallel_tool_calls,
            keep_alive_ms: chat.hints.keep_alive_ms,
            judge_after_tokens: 0,
        }),
        routing: Some(hints),
    };
    let mut stream = requests::generate(&front.state, caller, request).await?;
    // the first item is the decision; a failure before it is the whole answer
    let decision = match stream.next().await {
        Some(Ok(pb::GatewayGenerateChunk {
            decision: Some(d), ..
        })) => d,
        Some(Err(e)) => return Err(e.into()),
        _ => {
            return Err(invalid("the generation ended before its decision").into());
        }
    };
    let id = format!("chatcmpl-{}", decision.decision_id);
    let (_, model) = target(&decision);
    let created = unix_now();
    let mut response = if chat.stream {
        sse(stream, id, model, created, chat.include_usage)
    } else {
        let mut text = String::new();
        let mut calls = Vec::new();
        let mut done = None;
        while let Some(item) = stream.next().await {
            let chunk = item?.chunk.unwrap_or_default();
            text.push_str(&chunk.text);
            calls.extend(chunk.tool_calls);
            if chunk.done.is_some() {
                done = chunk.done;
            }
        }
        let done = done.ok_or_else(|| invalid("the generation ended without its final chunk"))?;
        let mut message = json!({"role": "assistant", "content": text});
        if !calls.is_empty() {
            // OpenAI's shape: no content beside the calls when the reply was only calls
            if text.is_empty() {
                message["content"] = Value::Null;
            }
            message["tool_calls"] = calls
                .iter()
                .map(|c| super::tools::call_json(c, None))
                .collect();
        }
        axum::Json(json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": message,
                "finish_reason": finish_reason(&done),
                "logprobs": null,
            }],
            "usage": usage_json(done.usage),
            "edgewise": decision_json(&decision),
        }))
        .into_response()
    };
    decision_headers(&mut response, &decision);
    Ok(response)
}

/// Server-sent events: a role chunk, content deltas, the finish chunk, usage when asked for,
/// and `data: [DONE]`. A failure mid-stream is sent as an `error` event and ends it.
fn sse(
    stream: requests::ChunkStream,
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
) -> Response {
    let chunk = move |delta: Value, finish: Option<&str>| {
        json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}],
        })
    };
    let event = |v: &Value| Bytes::from(format!("data: {v}\n\n"));
    let first = futures::stream::once({
        let e = event(&chunk(json!({"role": "assistant", "content": ""}), None));
        async move { e }
    });
    // each call is one delta with its whole arguments, numbered across the reply
    let mut calls = 0usize;
    let rest = stream
        .map(move |item| match item {
            Ok(c) => {
                let c = c.chunk.unwrap_or_default();
                let mut out = Vec::new();
                if !c.text.is_empty() {
                    out.push(event(&chunk(json!({"content": c.text}), None)));
                }
                for call in &c.tool_calls {
                    let delta = json!({"tool_calls": [super::tools::call_json(call, Some(calls))]});
                    calls += 1;
                    out.push(event(&chunk(delta, None)));
                }
                if let Some(done) = c.done {
                    out.push(event(&chunk(json!({}), Some(finish_reason(&done)))));
                    if include_usage {
                        let mut u = chunk(json!({}), None);
                        u["choices"] = json!([]);
                        u["usage"] = usage_json(done.usage);
                        out.push(event(&u));
                    }
                    out.push(Bytes::from_static(b"data: [DONE]\n\n"));
                }
                futures::stream::iter(out)
            }
            Err(e) => futures::stream::iter(vec![event(&error_body(&e))]),
        })
        .flatten();
    let body = first.chain(rest).map(Ok::<_, std::convert::Infallible>);
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// The embeddings answer, serialized straight from the vectors (as f32: a `Value` would
/// widen each to f64 and print 17 digits).
#[derive(serde::Serialize)]
struct EmbeddingsOut<'a> {
    object: &'static str,
    data: Vec<EmbeddingOut<'a>>,
    model: &'a str,
    /// The vector space the vectors are in (compare only vectors of one space).
    space: &'a str,
    usage: Value,
    edgewise: Value,
}

#[derive(serde::Serialize)]
struct EmbeddingOut<'a> {
    object: &'static str,
    index: usize,
    embedding: Vector<'a>,
}

#[derive(serde::Serialize)]
#[serde(untagged)]
enum Vector<'a> {
    Floats(&'a [f32]),
    Base64(String),
}

/// `POST /v1/embeddings`.
pub async fn embeddings(
    State(front): State<Arc<Front>>,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let caller = caller(&front, &parts)?;
    let bytes = read_body(&front, &parts.headers, body).await?;
    let e = Embeddings::parse(&bytes)?;
    // `model`: auto, a route, or a vector space (or one embedding model) of the fleet
    let (route_model, space) = embedding_model(&front, &e.model, &caller)?;
    let hints = routing(&parts.headers, &e.hints, &route_model, Task::Embed, &caller)?;
    let inner = pb::EmbedRequest {
        model: space,
        texts: e.input,
        keep_alive_ms: e.hints.keep_alive_ms,
    };
    let (out, decision) = requests::texts(&front.state, caller, Some(inner), Some(hints)).await?;
    let prompt = out.usage.map_or(0, |u| u.prompt_tokens);
    let data = out
        .embeddings
        .iter()
        .enumerate()
        .map(|(index, v)| EmbeddingOut {
            object: "embedding",
            index,
            embedding: if e.base64 {
                let bytes: Vec<u8> = v.values.iter().flat_map(|f| f.to_le_bytes()).collect();
                Vector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                Vector::Floats(&v.values)
            },
        })
        .collect();
    let mut response = axum::Json(EmbeddingsOut {
        object: "list",
        data,
        model: &out.model,
        space: &out.space,
        usage: json!({"prompt_tokens": prompt, "total_tokens": prompt}),
        edgewise: decision_json(&decision),
    })
    .into_response();
    decision_headers(&mut response, &decision);
    Ok(response)
}

/// `GET /v1/models`: what this caller may ask for — `auto` and the policy's routes it may use.
pub async fn models(
    State(front): State<Arc<Front>>,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, _) = request.into_parts();
    let caller = caller(&front, &parts)?;
    let policy = caller.policy.clone();
    let mut seen = std::collections::BTreeSet::new();
    let mut data = Vec::new();
    for task in [Task::Generate, Task::Embed, Task::Classify] {
        for name in visible_models(&policy.policy, task, &caller.tenant) {
            if seen.insert(name.clone()) {
                let tasks: Vec<&str> = if name == "auto" {
                    vec!["generate", "embed", "classify"]
                } else {
                    policy
                        .policy
                        .routes
                        .iter()
                        .find(|r| r.name == name)
                        .map(|r| {
                            if r.tasks.is_empty() {
                                vec!["generate", "embed", "classify"]
                            } else {
                                r.tasks.iter().map(|t| t.as_str()).collect()
                            }
                        })
                        .unwrap_or_default()
                };
                data.push(json!({
                    "id": name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "edgewise",
                    "edgewise": {"tasks": tasks},
                }));
            }
        }
    }
    // embedding spaces: a caller that indexed with one asks for it by name
    for (space, models) in fleet_spaces(&front, Task::Embed) {
        if seen.insert(space.clone()) {
            data.push(json!({
                "id": space,
                "object": "model",
                "created": 0,
                "owned_by": "edgewise",
                "edgewise": {"tasks": ["embed"], "vector_space": true, "models": models},
            }));
        }
    }
    Ok(axum::Json(json!({"object": "list", "data": data})).into_response())
}

/// Anything else under this listener.
pub async fn not_found(request: Request) -> ApiError {
    ApiError(GatewayError::NoEndpoint(format!(
        "no endpoint {} {}: this gateway serves POST /v1/chat/completions, POST /v1/embeddings and GET /v1/models",
        request.method(),
        request.uri().path()
    )))
}
