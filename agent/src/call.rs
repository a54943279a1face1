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
        })
        .await?
        .into_inner())
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
