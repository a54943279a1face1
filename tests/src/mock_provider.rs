//! A hosted-API stand-in over real TLS: OpenAI `POST /v1/chat/completions` (streamed SSE or
//! JSON), `POST /v1/embeddings`, and Anthropic `POST /v1/messages` (streamed SSE). It checks
//! the API key, can be told to fail the next requests (e.g. 429 with `Retry-After`), and
//! records what it was asked (paths and JSON bodies) so tests can assert what left the box.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// A scripted failure for the next request.
#[derive(Debug, Clone)]
pub struct Failure {
    pub status: u16,
    /// The `Retry-After` header value, if any (seconds or an HTTP date).
    pub retry_after: Option<String>,
}

/// One request the mock received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub authorized: bool,
    pub body: Value,
    pub at: std::time::Instant,
}

pub struct MockState {
    pub key: String,
    /// What every generation answers (split into one streamed piece per word).
    pub answer: Mutex<String>,
    pub failures: Mutex<VecDeque<Failure>>,
    /// Whether streamed answers end with a usage report.
    pub report_usage: std::sync::atomic::AtomicBool,
    pub seen: Mutex<Vec<Seen>>,
    /// When set, the next request is received (and seen) but never answered.
    pub stall_next: std::sync::atomic::AtomicBool,
    /// While true, requests are received (and seen) and wait to be answered until it is
    /// false again.
    pub hold: tokio::sync::watch::Sender<bool>,
}

impl MockState {
    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn fail_next(&self, f: Failure) {
        if let Ok(mut q) = self.failures.lock() {
            q.push_back(f);
        }
    }
}

pub struct MockProvider {
    pub addr: SocketAddr,
    /// The OpenAI/Anthropic-style base URL, `https://localhost:PORT/v1`.
    pub base_url: String,
    /// The test CA's certificate (PEM): what the gateway must trust to reach the mock.
    pub ca_file: PathBuf,
    /// A file holding the API key the mock accepts.
    pub key_file: PathBuf,
    pub state: Arc<MockState>,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The words of the answer, each a streamed piece (`"Paris"`, `" is"`, ...).
fn pieces(answer: &str) -> Vec<String> {
    answer
        .split(' ')
        .enumerate()
        .map(|(i, w)| {
            if i == 0 {
                w.to_string()
            } else {
                format!(" {w}")
            }
        })
        .collect()
}

/// A deterministic token count for billing: words, plus 3 per message.
fn prompt_tokens(body: &Value) -> u64 {
    let mut n = 0;
    if let Some(ms) = body.get("messages").and_then(Value::as_array) {
        for m in ms {
            n += 3 + m
                .get("content")
                .and_then(Value::as_str)
                .map_or(0, |c| c.split_whitespace().count() as u64);
        }
    }
    if let Some(s) = body.get("system").and_then(Value::as_str) {
        n += s.split_whitespace().count() as u64;
    }
    n
}

type Body = BoxBody<Bytes, Infallible>;

fn full(status: StatusCode, v: Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        "content-type",
        "application/json"
            .parse()
            .unwrap_or_else(|_| unreachable!()),
    );
    r
}

/// A streamed `text/event-stream` body, one frame per event.
fn sse(events: Vec<String>) -> Response<Body> {
    let frames = futures::stream::iter(
        events
            .into_iter()
            .map(|e| Ok::<_, Infallible>(Frame::data(Bytes::from(e)))),
    );
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(frames)));
    r.headers_mut().insert(
        "content-type",
        "text/event-stream"
            .parse()
            .unwrap_or_else(|_| unreachable!()),
    );
    r
}

fn openai_chat(state: &MockState, body: &Value) -> Response<Body> {
    let answer = state.answer.lock().map(|a| a.clone()).unwrap_or_default();
    let max = body
        .get("max_tokens")
        .and_then(Value::as_u64)
        .unwrap_or(u64::MAX);
    let all = pieces(&answer);
    let sent: Vec<String> = all.iter().take(max as usize).cloned().collect();
    let finish = if sent.len() < all.len() {
        "length"
    } else {
        "stop"
    };
    let model = body.get("model").cloned().unwrap_or(Value::Null);
    let usage = json!({"prompt_tokens": prompt_tokens(body), "completion_tokens": sent.len(), "total_tokens": prompt_tokens(body) + sent.len() as u64});
    if body.get("stream").and_then(Value::as_bool) != Some(true) {
        return full(
            StatusCode::OK,
            json!({"id": "chatcmpl-mock", "object": "chat.completion", "model": model,
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": sent.concat()}, "finish_reason": finish}],
                   "usage": usage}),
        );
    }
    let chunk = |delta: Value, finish: Value| {
        format!(
            "data: {}\n\n",
            json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "model": model,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        )
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    events.extend(
        sent.iter()
            .map(|p| chunk(json!({"content": p}), Value::Null)),
    );
    events.push(chunk(json!({}), json!(finish)));
    let include = body
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        == Some(true);
    if include && state.report_usage.load(std::sync::atomic::Ordering::SeqCst) {
        events.push(format!(
            "data: {}\n\n",
            json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "model": model, "choices": [], "usage": usage})
        ));
    }
    events.push("data: [DONE]\n\n".into());
    sse(events)
}

fn anthropic_messages(state: &MockState, body: &Value) -> Response<Body> {
    let answer = state.answer.lock().map(|a| a.clone()).unwrap_or_default();
    let max = body.get("max_tokens").and_then(Value::as_u64).unwrap_or(0);
    let all = pieces(&answer);
    let sent: Vec<String> = all.iter().take(max as usize).cloned().collect();
    // a forced tool (structured output the Messages API's way): the answer is the tool's
    // input, streamed as `input_json_delta`, and the turn stops for `tool_use`
    let tool = body
        .pointer("/tool_choice/type")
        .and_then(Value::as_str)
        .filter(|t| *t == "tool")
        .and_then(|_| body.pointer("/tool_choice/name"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let stop = match (sent.len() < all.len(), &tool) {
        (true, _) => "max_tokens",
        (false, Some(_)) => "tool_use",
        (false, None) => "end_turn",
    };
    let ev = |name: &str, v: Value| format!("event: {name}\ndata: {v}\n\n");
    let block = match &tool {
        Some(name) => json!({"type": "tool_use", "id": "toolu_mock", "name": name, "input": {}}),
        None => json!({"type": "text", "text": ""}),
    };
    let mut events = vec![
        ev(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_mock", "type": "message", "role": "assistant", "content": [], "model": body.get("model"), "usage": {"input_tokens": prompt_tokens(body), "output_tokens": 1}}}),
        ),
        ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": block}),
        ),
        ev("ping", json!({"type": "ping"})),
    ];
    events.extend(sent.iter().map(|p| {
        let delta = match &tool {
            Some(_) => json!({"type": "input_json_delta", "partial_json": p}),
            None => json!({"type": "text_delta", "text": p}),
        };
        ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": delta}),
        )
    }));
    events.push(ev(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    events.push(ev("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": sent.len()}})));
    events.push(ev("message_stop", json!({"type": "message_stop"})));
    sse(events)
}

fn embeddings(body: &Value) -> Response<Body> {
    let inputs: Vec<String> = match body.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => vec![],
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            // 8 dimensions from the text's bytes: deterministic, different per text
            let mut v = [0f32; 8];
            for (j, b) in t.bytes().enumerate() {
                v[j % 8] += f32::from(b) / 255.0;
            }
            json!({"object": "embedding", "index": i, "embedding": v})
        })
        .collect();
    let tokens: usize = inputs.iter().map(|t| t.split_whitespace().count()).sum();
    full(
        StatusCode::OK,
        json!({"object": "list", "data": data, "model": body.get("model"), "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}),
    )
}

async fn handle(state: Arc<MockState>, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let headers = req.headers().clone();
    let bytes = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let anthropic = path.ends_with("/messages");
    let presented = if anthropic {
        headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    } else {
        headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_string)
    };
    let authorized = presented.as_deref() == Some(state.key.as_str())
        && (!anthropic || headers.contains_key("anthropic-version"));
    if let Ok(mut s) = state.seen.lock() {
        s.push(Seen {
            path: path.clone(),
            authorized,
            body: body.clone(),
            at: std::time::Instant::now(),
        });
    }
    if !authorized {
        // like the real API, the message echoes part of the key it was given
        let shown: String = presented.unwrap_or_default().chars().take(12).collect();
        return full(
            StatusCode::UNAUTHORIZED,
            json!({"error": {"message": format!("Incorrect API key provided: {shown}***"), "type": "invalid_request_error", "code": "invalid_api_key"}}),
        );
    }
    if state
        .stall_next
        .swap(false, std::sync::atomic::Ordering::SeqCst)
    {
        futures::future::pending::<()>().await;
    }
    let _ = state.hold.subscribe().wait_for(|held| !held).await;
    let failure = state.failures.lock().ok().and_then(|mut q| q.pop_front());
    if let Some(f) = failure {
        let mut r = full(
            StatusCode::from_u16(f.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            json!({"error": {"message": format!("mock failure {}", f.status), "type": "rate_limit_error"}}),
        );
        if let Some(ra) = f.retry_after
            && let Ok(v) = ra.parse()
        {
            r.headers_mut().insert("retry-after", v);
        }
        return r;
    }
    match path.as_str() {
        "/v1/chat/completions" => openai_chat(&state, &body),
        "/v1/embeddings" => embeddings(&body),
        "/v1/messages" => anthropic_messages(&state, &body),
        _ => full(
            StatusCode::NOT_FOUND,
            json!({"error": {"message": format!("no route {path}")}}),
        ),
    }
}

impl MockProvider {
    /// The `[providers.openai]` block of a gateway.toml that reaches this mock over TLS, at
    /// these prices (USD per million tokens), with one retry.
    pub fn provider_toml(&self, input_usd: f64, output_usd: f64) -> String {
        format!(
            "[providers.openai]\nkind = \"openai\"\nbase_url = \"{}\"\nkey_file = \"{}\"\nca_file = \"{}\"\n\
             input_usd_per_million = {input_usd}\noutput_usd_per_million = {output_usd}\nmax_retries = 1\n",
            self.base_url,
            self.key_file.display(),
            self.ca_file.display()
        )
    }

    /// Starts the mock on 127.0.0.1 (port 0) with a fresh CA and a `localhost` certificate.
    pub async fn start(key: &str) -> Self {
        Self::start_on(
            "127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!()),
            key,
        )
        .await
    }

    pub async fn start_on(addr: SocketAddr, key: &str) -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let (ca_pem, chain, leaf_key) = certificates();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca_pem).unwrap_or_else(|e| panic!("ca.pem: {e}"));
        let key_file = dir.path().join("api.key");
        std::fs::write(&key_file, format!("{key}\n")).unwrap_or_else(|e| panic!("key: {e}"));
        let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|e| panic!("tls: {e}"))
        .with_no_client_auth()
        .with_single_cert(chain, leaf_key)
        .unwrap_or_else(|e| panic!("tls: {e}"));
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("addr: {e}"));
        let state = Arc::new(MockState {
            key: key.to_string(),
            answer: Mutex::new("The capital of France is Paris.".into()),
            failures: Mutex::new(VecDeque::new()),
            report_usage: std::sync::atomic::AtomicBool::new(true),
            seen: Mutex::new(Vec::new()),
            stall_next: std::sync::atomic::AtomicBool::new(false),
            hold: tokio::sync::watch::Sender::new(false),
        });
        let s = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, s) = (acceptor.clone(), s.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, Infallible>(handle(s, req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
                });
            }
        });
        Self {
            addr,
            base_url: format!("https://localhost:{}/v1", addr.port()),
            ca_file,
            key_file,
            state,
            _dir: dir,
            task,
        }
    }
}

type Chain = Vec<rustls::pki_types::CertificateDer<'static>>;

/// A test CA (PEM) and a `localhost` / 127.0.0.1 certificate chain and key signed by it.
fn certificates() -> (String, Chain, rustls::pki_types::PrivateKeyDer<'static>) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let fail = |e: rcgen::Error| -> ! { panic!("rcgen: {e}") };
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|e| fail(e));
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "Edgewise mock provider CA");
    let ca_key = KeyPair::generate().unwrap_or_else(|e| fail(e));
    let issuer = CertifiedIssuer::self_signed(ca, ca_key).unwrap_or_else(|e| fail(e));
    let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap_or_else(|e| fail(e));
    let leaf_key = KeyPair::generate().unwrap_or_else(|e| fail(e));
    let cert = leaf
        .signed_by(&leaf_key, &issuer)
        .unwrap_or_else(|e| fail(e));
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    (issuer.pem(), vec![cert.der().clone()], key)
}
