//! Hosted ("closed") model APIs the gateway falls back to when policy permits: OpenAI-compatible
//! chat completions and embeddings, and Anthropic Messages, over HTTPS with rustls.
//!
//! Every call runs within a deadline (the caller's, capped by the provider's timeout). Failures
//! before a response starts — connection errors, 429 and 5xx — are retried with exponential
//! backoff, honouring `Retry-After`, but never past the deadline. Once a stream has started
//! nothing is retried. Keys are never logged or put in an error message.

mod anthropic;
mod openai;
pub mod sse;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use rand::Rng;
use tokio::time::Instant;

use crate::routing::{ProviderPrice, ProviderView, Task};

/// Which wire protocol a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    OpenAi,
    Anthropic,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "openai" => Some(Kind::OpenAi),
            "anthropic" => Some(Kind::Anthropic),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::OpenAi => "openai",
            Kind::Anthropic => "anthropic",
        }
    }

    /// The output constraints this API has a form for: OpenAI's `response_format`, and for
    /// Anthropic a tool the model is made to call (its input is the JSON).
    pub fn constraints(self) -> Vec<crate::routing::OutputConstraint> {
        use crate::routing::OutputConstraint::*;
        vec![JsonSchema, JsonObject]
    }

    /// The tasks this API serves.
    pub fn tasks(self) -> Vec<Task> {
        match self {
            Kind::OpenAi => vec![Task::Generate, Task::Embed],
            Kind::Anthropic => vec![Task::Generate],
        }
    }
}

/// A secret read from a file; its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// A validated `[providers.NAME]` block.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub name: String,
    pub kind: Kind,
    /// e.g. `https://api.openai.com/v1`; paths like `/chat/completions` are appended.
    pub base_url: reqwest::Url,
    pub key: Secret,
    /// An extra CA (PEM) trusted besides the system roots.
    pub ca_file: Option<PathBuf>,
    pub price: ProviderPrice,
    /// The longest a call may take when the caller set no deadline.
    pub timeout: Duration,
    /// Retries after the first attempt, on connection errors, 429 and 5xx.
    pub max_retries: u32,
    /// `max_tokens` sent when a request leaves it at 0 (hosted APIs need a bound; so does the
    /// worst-case cost).
    pub default_max_tokens: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("provider `{provider}`: the deadline passed {when}")]
    Deadline {
        provider: String,
        when: &'static str,
    },
    #[error("provider `{provider}`: cannot connect after {attempts} attempt(s): {detail}")]
    Connect {
        provider: String,
        attempts: u32,
        detail: String,
    },
    #[error("provider `{provider}`: HTTP {status} after {attempts} attempt(s): {message}")]
    Status {
        provider: String,
        status: u16,
        attempts: u32,
        message: String,
    },
    #[error("provider `{provider}`: {detail}")]
    Protocol { provider: String, detail: String },
    #[error("provider `{provider}` ({kind}) does not serve {task} requests")]
    Unsupported {
        provider: String,
        kind: &'static str,
        task: Task,
    },
}

impl ProviderError {
    /// The status the provider answered with, if it answered.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            ProviderError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// One message of a chat; a plain prompt is one `user` message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// A generation as hosted APIs take it.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateCall {
    pub model: String,
    pub messages: Vec<Message>,
    pub max_tokens: u32,
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: u32,
    pub stop: Vec<String>,
    pub seed: Option<u64>,
    /// Structured output, in the provider's own form (routing sends here only the kinds the
    /// provider has one for).
    pub constraint: Option<edgewise_proto::Constraint>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    Stop,
    Length,
    StopSequence,
}

/// Token counts the provider reported (what it bills).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Text(String),
    /// The end of the stream; `usage` is `None` when the provider did not report it.
    Done {
        finish: Finish,
        usage: Option<Usage>,
    },
}

pub type EventStream = Pin<Box<dyn Stream<Item = Result<Event, ProviderError>> + Send>>;

/// Embeddings, in input order, and the provider's token count if it reported one.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    pub vectors: Vec<Vec<f32>>,
    pub prompt_tokens: Option<u32>,
}

/// A configured provider with its HTTPS client.
pub struct Provider {
    pub config: ProviderConfig,
    client: reqwest::Client,
}

impl fmt::Debug for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Provider")
            .field("config", &self.config)
            .finish()
    }
}

impl Provider {
    pub fn new(config: ProviderConfig) -> Result<Self, String> {
        let mut tls = edgewise_tls::public_client_config(config.ca_file.as_deref(), "providers")?;
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("edgewise-gateway/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("HTTPS client: {}", chain(&e)))?;
        Ok(Self { config, client })
    }

    pub fn view(&self) -> ProviderView {
        ProviderView {
            price: self.config.price,
            tasks: self.config.kind.tasks(),
            default_max_tokens: self.config.default_max_tokens,
            constraints: self.config.kind.constraints(),
        }
    }

    /// When a call that starts now must end: the caller's deadline, capped by the timeout.
    pub fn deadline(&self, caller: Option<Instant>) -> Instant {
        let cap = Instant::now() + self.config.timeout;
        caller.map_or(cap, |d| d.min(cap))
    }

    /// Starts a streamed generation; retries happen before the first event, never after.
    pub async fn generate(
        &self,
        call: &GenerateCall,
        deadline: Instant,
    ) -> Result<EventStream, ProviderError> {
        let (path, body) = match self.config.kind {
            Kind::OpenAi => ("chat/completions", openai::chat_body(call)),
            Kind::Anthropic => ("messages", anthropic::messages_body(call)),
        };
        let response = self.post(path, &body, deadline).await?;
        let provider = self.config.name.clone();
        Ok(match self.config.kind {
            Kind::OpenAi => openai::chat_events(provider, response, deadline),
            Kind::Anthropic => anthropic::message_events(provider, response, deadline),
        })
    }

    pub async fn embed(
        &self,
        model: &str,
        texts: &[String],
        deadline: Instant,
    ) -> Result<Embeddings, ProviderError> {
        if self.config.kind != Kind::OpenAi {
            return Err(ProviderError::Unsupported {
                provider: self.config.name.clone(),
                kind: self.config.kind.as_str(),
                task: Task::Embed,
            });
        }
        let response = self
            .post(
                "embeddings",
                &openai::embeddings_body(model, texts),
                deadline,
            )
            .await?;
        let body = read_body(&self.config.name, response, deadline).await?;
        openai::parse_embeddings(&self.config.name, &body, texts.len())
    }

    fn url(&self, path: &str) -> reqwest::Url {
        let mut url = self.config.base_url.clone();
        if !url.path().ends_with('/') {
            url.set_path(&format!("{}/", url.path()));
        }
        url.join(path)
            .unwrap_or_else(|_| self.config.base_url.clone())
    }

    fn headers(&self) -> reqwest::header::HeaderMap {
        use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
        let mut h = HeaderMap::new();
        let key = self.config.key.expose();
        let (name, value) = match self.config.kind {
            Kind::OpenAi => (AUTHORIZATION.as_str(), format!("Bearer {key}")),
            Kind::Anthropic => ("x-api-key", key.to_string()),
        };
        if let (Ok(name), Ok(mut value)) = (
            reqwest::header::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            value.set_sensitive(true);
            h.insert(name, value);
        }
        if self.config.kind == Kind::Anthropic {
            h.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
        }
        h
    }

    /// POSTs `body`, retrying connection errors, 429 and 5xx with backoff (honouring
    /// `Retry-After`) while the deadline allows. Returns the first successful response.
    async fn post(
        &self,
        path: &str,
        body: &serde_json::Value,
        deadline: Instant,
    ) -> Result<reqwest::Response, ProviderError> {
        let name = &self.config.name;
        let url = self.url(path);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let now = Instant::now();
            if now >= deadline {
                return Err(ProviderError::Deadline {
                    provider: name.clone(),
                    when: "before the request could be sent",
                });
            }
            let send = self
                .client
                .post(url.clone())
                .headers(self.headers())
                .json(body)
                .timeout(deadline - now)
                .send();
            let (retry_in, error) = match tokio::time::timeout_at(deadline, send).await {
                Err(_) => {
                    return Err(ProviderError::Deadline {
                        provider: name.clone(),
                        when: "waiting for the response",
                    });
                }
                Ok(Ok(r)) if r.status().is_success() => return Ok(r),
                Ok(Ok(r)) => {
                    let status = r.status().as_u16();
                    let wait = retry_after(r.headers());
                    let message = error_message(status, r, deadline).await;
                    let err = ProviderError::Status {
                        provider: name.clone(),
                        status,
                        attempts,
                        message,
                    };
                    if !retriable_status(status) {
                        return Err(err);
                    }
                    (wait.unwrap_or_else(|| backoff(attempts)), err)
                }
                Ok(Err(e)) if e.is_timeout() => {
                    return Err(ProviderError::Deadline {
                        provider: name.clone(),
                        when: "waiting for the response",
                    });
                }
                Ok(Err(e)) => (
                    backoff(attempts),
                    ProviderError::Connect {
                        provider: name.clone(),
                        attempts,
                        detail: chain(&e),
                    },
                ),
            };
            if attempts > self.config.max_retries || Instant::now() + retry_in >= deadline {
                return Err(error);
            }
            tracing::info!(provider = %name, attempt = attempts, retry_in_ms = retry_in.as_millis() as u64, error = %error, "retrying the provider");
            tokio::time::sleep(retry_in).await;
        }
    }
}

fn retriable_status(status: u16) -> bool {
    // 529 is Anthropic's "overloaded"
    status == 408 || status == 409 || status == 429 || status >= 500
}

/// Exponential backoff with jitter: 250 ms, 500 ms, 1 s, ... up to 8 s, each × [0.5, 1).
fn backoff(attempt: u32) -> Duration {
    let base = 250u64.saturating_mul(1 << attempt.saturating_sub(1).min(5));
    let ms = base.min(8_000) as f64 * rand::rng().random_range(0.5..1.0);
    Duration::from_millis(ms as u64)
}

/// `retry-after-ms` (OpenAI), else `Retry-After` as seconds or an HTTP date.
pub fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(ms) = get("retry-after-ms").and_then(|v| v.parse::<f64>().ok())
        && ms.is_finite()
        && ms >= 0.0
    {
        return Some(Duration::from_millis(ms as u64));
    }
    let v = get("retry-after")?;
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

/// A short, safe description of an error response: the API's `error.message` for client
/// errors, nothing from the body for authentication failures (some APIs echo part of the key).
async fn error_message(status: u16, r: reqwest::Response, deadline: Instant) -> String {
    if status == 401 || status == 403 {
        return "the provider rejected the gateway's API key (check the provider's key file)"
            .into();
    }
    let body = match tokio::time::timeout_at(deadline, r.bytes()).await {
        Ok(Ok(b)) => b,
        _ => return "no error body".into(),
    };
    let parsed: Option<String> = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .and_then(|m| m.as_str())
                .map(str::to_string)
        });
    let text = parsed.unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
    let text: String = text.chars().take(300).collect();
    if text.trim().is_empty() {
        "no error body".into()
    } else {
        text
    }
}

/// Reads a whole (bounded) response body within the deadline.
async fn read_body(
    provider: &str,
    r: reqwest::Response,
    deadline: Instant,
) -> Result<bytes::Bytes, ProviderError> {
    const MAX: u64 = 64 << 20;
    if r.content_length().is_some_and(|l| l > MAX) {
        return Err(ProviderError::Protocol {
            provider: provider.into(),
            detail: format!("response larger than {MAX} bytes"),
        });
    }
    match tokio::time::timeout_at(deadline, r.bytes()).await {
        Err(_) => Err(ProviderError::Deadline {
            provider: provider.into(),
            when: "reading the response",
        }),
        Ok(Err(e)) => Err(ProviderError::Protocol {
            provider: provider.into(),
            detail: format!("reading the response: {}", chain(&e)),
        }),
        Ok(Ok(b)) => Ok(b),
    }
}

/// A response body as server-sent events, each read within the deadline.
fn sse_events(
    provider: String,
    response: reqwest::Response,
    deadline: Instant,
) -> impl Stream<Item = Result<sse::Event, ProviderError>> + Send {
    let state = (
        response,
        sse::Parser::default(),
        std::collections::VecDeque::new(),
        false,
    );
    futures::stream::unfold(state, move |(mut r, mut parser, mut queue, ended)| {
        let provider = provider.clone();
        async move {
            loop {
                if let Some(e) = queue.pop_front() {
                    return Some((Ok(e), (r, parser, queue, ended)));
                }
                if ended {
                    return None;
                }
                let chunk = match tokio::time::timeout_at(deadline, r.chunk()).await {
                    Err(_) => Err(ProviderError::Deadline {
                        provider: provider.clone(),
                        when: "while streaming",
                    }),
                    Ok(Err(e)) => Err(ProviderError::Protocol {
                        provider: provider.clone(),
                        detail: format!("stream broken: {}", chain(&e)),
                    }),
                    Ok(Ok(c)) => Ok(c),
                };
                match chunk {
                    Err(e) => return Some((Err(e), (r, parser, queue, true))),
                    Ok(None) => {
                        // a final event without its blank line still counts
                        let tail = parser.push(b"\n\n").unwrap_or_default();
                        queue.extend(tail);
                        if queue.is_empty() {
                            return None;
                        }
                        return queue.pop_front().map(|e| (Ok(e), (r, parser, queue, true)));
                    }
                    Ok(Some(bytes)) => match parser.push(&bytes) {
                        Ok(events) => queue.extend(events),
                        Err(e) => {
                            let err = ProviderError::Protocol {
                                provider: provider.clone(),
                                detail: e.to_string(),
                            };
                            return Some((Err(err), (r, parser, queue, true)));
                        }
                    },
                }
            }
        }
    })
}

/// What a wire protocol makes of one server-sent event.
enum Step {
    /// Nothing for the caller (pings, bookkeeping events).
    Skip,
    Emit(Event),
    /// The last event of the stream.
    End(Event),
    Fail(String),
}

/// One protocol's reading of an event stream (OpenAI chat chunks, Anthropic message events).
trait Decoder: Send + 'static {
    fn event(&mut self, e: &sse::Event) -> Step;
    /// The body ended without the protocol's final event.
    fn eof(&mut self) -> Step;
}

/// An event's JSON, or the step that ends the stream: not JSON, or an error event.
fn json(data: &str) -> Result<serde_json::Value, Step> {
    let v: serde_json::Value = serde_json::from_str(data)
        .map_err(|e| Step::Fail(format!("a stream event is not JSON: {e}")))?;
    match v.pointer("/error/message").and_then(|m| m.as_str()) {
        Some(m) => Err(Step::Fail(format!(
            "error while streaming: {}",
            m.chars().take(300).collect::<String>()
        ))),
        None => Ok(v),
    }
}

/// A response's event stream decoded by `decoder` into text and a final event.
fn decode(
    provider: String,
    response: reqwest::Response,
    deadline: Instant,
    decoder: impl Decoder,
) -> EventStream {
    use futures::StreamExt;
    let events = Box::pin(sse_events(provider.clone(), response, deadline));
    Box::pin(futures::stream::unfold(
        Some((events, decoder)),
        move |state| {
            let provider = provider.clone();
            async move {
                let (mut events, mut decoder) = state?;
                loop {
                    let step = match events.next().await {
                        Some(Ok(e)) => decoder.event(&e),
                        Some(Err(err)) => return Some((Err(err), None)),
                        None => decoder.eof(),
                    };
                    return match step {
                        Step::Skip => continue,
                        Step::Emit(e) => Some((Ok(e), Some((events, decoder)))),
                        Step::End(e) => Some((Ok(e), None)),
                        Step::Fail(detail) => {
                            Some((Err(ProviderError::Protocol { provider, detail }), None))
                        }
                    };
                }
            }
        },
    ))
}

/// An error and its sources on one line (reqwest hides the TLS reason in a source).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// The configured providers, by name.
#[derive(Debug, Default)]
pub struct Providers {
    pub by_name: BTreeMap<String, Provider>,
}

impl Providers {
    pub fn new(configs: Vec<ProviderConfig>) -> Result<Self, String> {
        let mut by_name = BTreeMap::new();
        for c in configs {
            let name = c.name.clone();
            let p = Provider::new(c).map_err(|e| format!("provider `{name}`: {e}"))?;
            by_name.insert(name, p);
        }
        Ok(Self { by_name })
    }

    pub fn get(&self, name: &str) -> Option<&Provider> {
        self.by_name.get(name)
    }

    /// What routing needs to know: prices and tasks.
    pub fn views(&self) -> BTreeMap<String, ProviderView> {
        self.by_name
            .iter()
            .map(|(n, p)| (n.clone(), p.view()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue};

    #[test]
    fn retry_after_in_each_form() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", HeaderValue::from_static("150"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(150)));
        let mut h = HeaderMap::new();
        let later = std::time::SystemTime::now() + Duration::from_secs(30);
        h.insert(
            "retry-after",
            HeaderValue::from_str(&httpdate::fmt_http_date(later))
                .unwrap_or_else(|_| HeaderValue::from_static("x")),
        );
        let d = retry_after(&h).unwrap_or_default();
        assert!(
            d > Duration::from_secs(27) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        h.insert("retry-after", HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(1) < Duration::from_millis(250));
        assert!(backoff(3) >= Duration::from_millis(500));
        assert!(backoff(30) < Duration::from_secs(8));
    }

    #[test]
    fn a_secret_is_never_formatted() {
        let s = Secret::new("sk-canary");
        assert_eq!(format!("{s:?}"), "Secret([redacted])");
    }
}
