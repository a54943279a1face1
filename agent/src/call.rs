//! `edgewise-agent call ...`: a small gRPC client for operators, to try a model on an agent.

use std::io::Write;

use edgewise_proto as pb;

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("cannot connect to {0}: {1}")]
    Connect(String, String),
    #[error("{:?}: {}", .0.code(), .0.message())]
    Status(tonic::Status),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl From<tonic::Status> for CallError {
    fn from(s: tonic::Status) -> Self {
        Self::Status(s)
    }
}

/// Which agent to call and how: over TLS (an https:// address) with the fleet CA and a
/// certificate the agent accepts, or in plain text for a development agent.
#[derive(Clone)]
pub struct Dial {
    pub addr: String,
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl Dial {
    async fn channel(&self) -> Result<tonic::transport::Channel, CallError> {
        let fail = |e: String| CallError::Connect(self.addr.clone(), e);
        let ep = tonic::transport::Endpoint::from_shared(self.addr.clone())
            .map_err(|e| fail(e.to_string()))?
            .connect_timeout(std::time::Duration::from_secs(5));
        match (&self.tls, self.addr.starts_with("https://")) {
            (Some(tls), true) => {
                edgewise_tls::net::channel(ep, edgewise_tls::net::fixed(tls.clone()))
                    .await
                    .map_err(|e| fail(format!("{e:?}")))
            }
            (None, true) => Err(fail(
                "an https:// agent needs --ca-file, --cert-file and --key-file".into(),
            )),
            (_, false) => ep.connect().await.map_err(|e| fail(e.to_string())),
        }
    }
}

async fn client(
    dial: &Dial,
) -> Result<pb::agent_client::AgentClient<tonic::transport::Channel>, CallError> {
    Ok(pb::agent_client::AgentClient::new(dial.channel().await?))
}

/// Streams a generation to stdout; returns the final chunk's summary.
pub async fn generate(
    dial: &Dial,
    model: &str,
    text: &str,
    chat: bool,
    max_tokens: u32,
) -> Result<pb::GenerateDone, CallError> {
    let input = if chat {
        pb::generate_request::Input::Chat(pb::ChatMessages {
            messages: vec![pb::ChatMessage {
                role: "user".into(),
                content: text.into(),
                ..Default::default()
            }],
        })
    } else {
        pb::generate_request::Input::Prompt(text.into())
    };
    let req = pb::GenerateRequest {
        model: model.into(),
        input: Some(input),
        max_tokens,
        ..Default::default()
    };
    let mut stream = client(dial).await?.generate(req).await?.into_inner();
    let mut out = std::io::stdout();
    let mut done = None;
    while let Some(chunk) = stream.message().await? {
        out.write_all(chunk.text.as_bytes())?;
        out.flush()?;
        done = chunk.done.or(done);
    }
    writeln!(out)?;
    done.ok_or_else(|| {
        CallError::Status(tonic::Status::internal(
            "the stream ended without a final chunk",
        ))
    })
}

pub async fn embed(
    dial: &Dial,
    model: &str,
    texts: Vec<String>,
) -> Result<pb::EmbedResponse, CallError> {
    Ok(client(dial)
        .await?
        .embed(pb::EmbedRequest {
            model: model.into(),
            texts,
            keep_alive_ms: None,
        })
        .await?
        .into_inner())
}

pub async fn classify(
    dial: &Dial,
    model: &str,
    texts: Vec<String>,
) -> Result<pb::ClassifyResponse, CallError> {
    Ok(client(dial)
        .await?
        .classify(pb::ClassifyRequest {
            model: model.into(),
            texts,
            keep_alive_ms: None,
        })
        .await?
        .into_inner())
}

/// An operator's model command.
pub enum Op {
    List,
    Load(String),
    Unload(String),
    Pin(String, bool),
}

/// Runs a model command; returns what to print: the models table after the change.
pub async fn manage(dial: &Dial, op: Op) -> Result<String, CallError> {
    let mut c = client(dial).await?;
    let changed = match op {
        Op::List => None,
        Op::Load(model) => Some(c.load_model(pb::ModelRequest { model }).await?),
        Op::Unload(model) => Some(c.unload_model(pb::ModelRequest { model }).await?),
        Op::Pin(model, pin) => Some(c.pin_model(pb::PinModelRequest { model, pin }).await?),
    };
    let list = c.list_models(pb::ListModelsRequest {}).await?.into_inner();
    let mut out = String::new();
    if let Some(m) = changed {
        let m = m.into_inner();
        out.push_str(&format!("{}: {}\n", m.name, state_name(m.state)));
    }
    out.push_str(&render_models(&list));
    Ok(out)
}

fn state_name(state: i32) -> &'static str {
    match pb::ModelState::try_from(state).unwrap_or(pb::ModelState::Unspecified) {
        pb::ModelState::Available => "available",
        pb::ModelState::Loading => "loading",
        pb::ModelState::Ready => "resident",
        pb::ModelState::Draining => "draining",
        pb::ModelState::Unloaded => "unloaded",
        pb::ModelState::Failed => "failed",
        pb::ModelState::Unspecified => "unknown",
    }
}

/// The models table: one row per model, then the budget line.
pub fn render_models(list: &pb::ListModelsResponse) -> String {
    let mib = |b: u64| format!("{:.0}", b as f64 / 1048576.0);
    let mut rows = vec![[
        "MODEL".to_string(),
        "STATE".into(),
        "BUDGET MiB".into(),
        "COLD ms".into(),
        "PIN".into(),
        "KEEP s".into(),
        "UNLOAD IN s".into(),
        "LOADS".into(),
        "EVICTED".into(),
        "IN FLIGHT".into(),
    ]];
    for m in &list.models {
        let state = match (state_name(m.state), m.reason.as_str()) {
            (s, "") => s.to_string(),
            (s, r) => format!("{s}: {r}"),
        };
        rows.push([
            m.name.clone(),
            state,
            mib(m.budget_bytes),
            match (m.cold_load_ms, m.cold_load_estimated) {
                (0, _) => "-".into(),
                (ms, true) => format!("~{ms}"),
                (ms, false) => ms.to_string(),
            },
            if m.pinned { "yes" } else { "" }.into(),
            match m.keep_alive_ms {
                0 if m.pinned => "-".into(),
                0 => "0".into(),
                ms => format!("{}", ms / 1000),
            },
            match m.unload_in_ms {
                0 => "-".into(),
                ms => format!("{:.0}", ms as f64 / 1000.0),
            },
            m.loads_total.to_string(),
            m.evictions_total.to_string(),
            (m.in_flight + m.queue_depth).to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    let mem = list.memory.unwrap_or_default();
    if mem.budget_bytes == 0 {
        out.push_str(&format!(
            "memory budget: none ({} MiB held by models)\n",
            mib(mem.used_bytes)
        ));
    } else {
        out.push_str(&format!(
            "memory budget: {} MiB, {} MiB used, {} MiB free, {} MiB not evictable now\n",
            mib(mem.budget_bytes),
            mib(mem.used_bytes),
            mib(mem.budget_bytes.saturating_sub(mem.used_bytes)),
            mib(mem.held_bytes)
        ));
    }
    out
}

/// Waits until the agent reports SERVING (every model has finished loading), up to `wait`.
pub async fn wait_ready(dial: &Dial, wait: std::time::Duration) -> Result<(), CallError> {
    use tonic_health::pb::health_check_response::ServingStatus;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let serving = match dial.channel().await {
            Ok(ch) => tonic_health::pb::health_client::HealthClient::new(ch)
                .check(tonic_health::pb::HealthCheckRequest {
                    service: "edgewise.v1.Agent".into(),
                })
                .await
                .is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32),
            Err(_) => false,
        };
        if serving {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(CallError::Connect(
                dial.addr.clone(),
                format!("not serving after {wait:?}"),
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}
