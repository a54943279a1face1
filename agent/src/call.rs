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

async fn client(
    addr: &str,
) -> Result<pb::agent_client::AgentClient<tonic::transport::Channel>, CallError> {
    pb::agent_client::AgentClient::connect(addr.to_string())
        .await
        .map_err(|e| CallError::Connect(addr.to_string(), e.to_string()))
}

/// Streams a generation to stdout; returns the final chunk's summary.
pub async fn generate(
    addr: &str,
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
    let mut stream = client(addr).await?.generate(req).await?.into_inner();
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
    addr: &str,
    model: &str,
    texts: Vec<String>,
) -> Result<pb::EmbedResponse, CallError> {
    Ok(client(addr)
        .await?
        .embed(pb::EmbedRequest {
            model: model.into(),
            texts,
        })
        .await?
        .into_inner())
}

pub async fn classify(
    addr: &str,
    model: &str,
    texts: Vec<String>,
) -> Result<pb::ClassifyResponse, CallError> {
    Ok(client(addr)
        .await?
        .classify(pb::ClassifyRequest {
            model: model.into(),
            texts,
        })
        .await?
        .into_inner())
}

/// Waits until the agent reports SERVING (every model has finished loading), up to `wait`.
pub async fn wait_ready(addr: &str, wait: std::time::Duration) -> Result<(), CallError> {
    use tonic_health::pb::health_check_response::ServingStatus;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let serving = match tonic::transport::Endpoint::from_shared(addr.to_string()) {
            Ok(ep) => match ep.connect().await {
                Ok(ch) => tonic_health::pb::health_client::HealthClient::new(ch)
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: "edgewise.v1.Agent".into(),
                    })
                    .await
                    .is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32),
                Err(_) => false,
            },
            Err(e) => return Err(CallError::Connect(addr.to_string(), e.to_string())),
        };
        if serving {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(CallError::Connect(
                addr.to_string(),
                format!("not serving after {wait:?}"),
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}
