//! gRPC edge of the agent: the `edgewise.v1.Agent` service and the one place where
//! `AgentError` becomes a `tonic::Status`.

use std::pin::Pin;

use edgewise_proto as pb;
use futures::Stream;
use futures::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::error::AgentError;
use crate::service::{Inference, deadline_of};

/// Maps every request error to a status with a readable reason (exhaustive on purpose).
pub fn status(e: &AgentError) -> Status {
    let msg = e.to_string();
    match e {
        AgentError::UnknownModel(..)
        | AgentError::WrongTask { .. }
        | AgentError::InvalidRequest(_) => Status::invalid_argument(msg),
        AgentError::NotReady { .. } | AgentError::Draining => Status::unavailable(msg),
        AgentError::Overloaded { retry_after, .. } => {
            let mut s = Status::resource_exhausted(msg);
            if let Ok(v) = MetadataValue::try_from(retry_after.as_millis().to_string()) {
                s.metadata_mut().insert("retry-after-ms", v);
            }
            s
        }
        // no retry hint: the same request never fits; a smaller max_tokens may
        AgentError::KvBudget { .. } | AgentError::MemoryBudget { .. } => {
            Status::resource_exhausted(msg)
        }
        AgentError::ModelState { .. } => Status::failed_precondition(msg),
        AgentError::DeadlineExceeded(_) => Status::deadline_exceeded(msg),
        AgentError::CallerNotAllowed(_) => Status::permission_denied(msg),
        AgentError::Inference { .. } => Status::internal(msg),
    }
}

/// The inference RPCs, each traced under its own span name.
#[derive(Clone, Copy)]
enum Rpc {
    Generate,
    Embed,
    Classify,
}

/// A request's span, continuing the caller's trace (W3C `traceparent` in the metadata).
fn request_span<T>(rpc: Rpc, request: &Request<T>, model: &str) -> tracing::Span {
    let span = match rpc {
        Rpc::Generate => tracing::info_span!("agent.generate", model = %model),
        Rpc::Embed => tracing::info_span!("agent.embed", model = %model),
        Rpc::Classify => tracing::info_span!("agent.classify", model = %model),
    };
    edgewise_ops::telemetry::continue_trace(&span, request.metadata());
    span
}

pub struct AgentService {
    pub inference: Inference,
}

impl AgentService {
    /// Refuses callers the agent does not serve (see [`crate::callers`]).
    fn admit<T>(&self, request: &Request<T>) -> Result<(), Status> {
        self.check_caller(request, crate::callers::admit)
    }

    /// Refuses callers that may not manage the agent's models.
    fn admit_operator<T>(&self, request: &Request<T>) -> Result<(), Status> {
        self.check_caller(request, crate::callers::admit_operator)
    }

    fn check_caller<T>(
        &self,
        request: &Request<T>,
        rule: crate::callers::Rule,
    ) -> Result<(), Status> {
        let node = &self.inference.node;
        rule(
            node.tls.is_some(),
            edgewise_tls::net::peer_identity(request).as_ref(),
            &node.config.operators,
        )
        .map_err(|e| status(&e))
    }

    /// A model's status after an operator call changed it.
    fn model_status(&self, name: &str) -> Result<Response<pb::ModelStatus>, Status> {
        let node = &self.inference.node;
        node.slots
            .get(name)
            .map(|s| Response::new(node.model_status(s, std::time::Instant::now())))
            .ok_or_else(|| Status::not_found(format!("unknown model `{name}`")))
    }
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::GenerateChunk, Status>> + Send>>;

#[tonic::async_trait]
impl pb::agent_server::Agent for AgentService {
    type GenerateStream = ChunkStream;

    async fn generate(
        &self,
        request: Request<pb::GenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        self.admit(&request)?;
        let deadline = deadline_of(request.metadata()).map_err(|e| status(&e))?;
        let span = request_span(Rpc::Generate, &request, &request.get_ref().model);
        let out = self
            .inference
            .generate(request.into_inner(), deadline)
            .instrument(span)
            .await
            .map_err(|e| status(&e))?;
        let chunks = ReceiverStream::new(out.chunks).map(Ok);
        // an early end (deadline, inference error) arrives after the chunks already buffered
        let end = futures::stream::once(out.end)
            .filter_map(|r| async move { r.ok().map(|e| Err(status(&e))) });
        Ok(Response::new(Box::pin(chunks.chain(end))))
    }

    async fn embed(
        &self,
        request: Request<pb::EmbedRequest>,
    ) -> Result<Response<pb::EmbedResponse>, Status> {
        self.admit(&request)?;
        let deadline = deadline_of(request.metadata()).map_err(|e| status(&e))?;
        let span = request_span(Rpc::Embed, &request, &request.get_ref().model);
        self.inference
            .embed(request.into_inner(), deadline)
            .instrument(span)
            .await
            .map(Response::new)
            .map_err(|e| status(&e))
    }

    async fn classify(
        &self,
        request: Request<pb::ClassifyRequest>,
    ) -> Result<Response<pb::ClassifyResponse>, Status> {
        self.admit(&request)?;
        let deadline = deadline_of(request.metadata()).map_err(|e| status(&e))?;
        let span = request_span(Rpc::Classify, &request, &request.get_ref().model);
        self.inference
            .classify(request.into_inner(), deadline)
            .instrument(span)
            .await
            .map(Response::new)
            .map_err(|e| status(&e))
    }

    async fn list_models(
        &self,
        request: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        self.admit_operator(&request)?;
        let node = &self.inference.node;
        let now = std::time::Instant::now();
        Ok(Response::new(pb::ListModelsResponse {
            models: node
                .slots
                .values()
                .map(|s| node.model_status(s, now))
                .collect(),
            memory: Some(node.memory()),
        }))
    }

    async fn load_model(
        &self,
        request: Request<pb::ModelRequest>,
    ) -> Result<Response<pb::ModelStatus>, Status> {
        self.admit_operator(&request)?;
        let name = request.into_inner().model;
        let node = &self.inference.node;
        let span = tracing::info_span!("agent.load_model", model = %name);
        node.load_model(&name)
            .instrument(span)
            .await
            .map_err(|e| status(&e))?;
        self.model_status(&name)
    }

    async fn unload_model(
        &self,
        request: Request<pb::ModelRequest>,
    ) -> Result<Response<pb::ModelStatus>, Status> {
        self.admit_operator(&request)?;
        let name = request.into_inner().model;
        let node = &self.inference.node;
        node.unload_model(&name).await.map_err(|e| status(&e))?;
        self.model_status(&name)
    }

    async fn pin_model(
        &self,
        request: Request<pb::PinModelRequest>,
    ) -> Result<Response<pb::ModelStatus>, Status> {
        self.admit_operator(&request)?;
        let r = request.into_inner();
        let node = &self.inference.node;
        node.pin_model(&r.model, r.pin)
            .await
            .map_err(|e| status(&e))?;
        self.model_status(&r.model)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn overload_carries_a_retry_hint() {
        let s = status(&AgentError::Overloaded {
            model: "m".into(),
            in_flight: 1,
            queued: 2,
            max_queue: 2,
            retry_after: Duration::from_millis(250),
        });
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            s.metadata()
                .get("retry-after-ms")
                .and_then(|v| v.to_str().ok()),
            Some("250")
        );
        assert!(s.message().contains("queue limit 2"));
    }
}
