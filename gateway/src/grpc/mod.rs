//! gRPC edge of the gateway: `edgewise.v1.Gateway` and `edgewise.v1.Fleet`. Each handler
//! authenticates the caller, hands the request to the shared paths (`requests`), and its
//! errors become statuses through `impl From<GatewayError> for Status` — nothing here builds
//! a status of its own.
//!
//! - `generate.rs` — the streaming generation;
//! - `texts.rs` — embed and classify;
//! - `operator.rs` — explain, fleet status, spend and the audit export;
//! - `fleet.rs` — the agents' capacity report streams.

mod fleet;
mod generate;
mod operator;
mod texts;

use std::pin::Pin;
use std::sync::Arc;

use edgewise_proto as pb;
use futures::Stream;
use tonic::{Request, Response, Status};

use crate::error::GatewayError;
use crate::requests::Caller;
use crate::state::State;

pub use fleet::FleetService;

pub struct GatewayService {
    pub state: Arc<State>,
}

impl GatewayService {
    /// The tenant (from the request's credentials), its deadline and trace context.
    fn caller<T>(&self, request: &Request<T>) -> Result<Caller, GatewayError> {
        Ok(Caller {
            tenant: self.state.auth.tenant(request)?,
            deadline: crate::requests::contract::grpc_deadline(request.metadata())?,
            headers: request.metadata().clone(),
            policy: self.state.policy(),
        })
    }
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::GatewayGenerateChunk, Status>> + Send>>;
type AuditStream = Pin<Box<dyn Stream<Item = Result<pb::AuditRecord, Status>> + Send>>;

#[tonic::async_trait]
impl pb::gateway_server::Gateway for GatewayService {
    type GenerateStream = ChunkStream;
    type ExportAuditStream = AuditStream;

    async fn generate(
        &self,
        request: Request<pb::GatewayGenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        Ok(generate::generate(self, request).await?)
    }

    async fn embed(
        &self,
        request: Request<pb::GatewayEmbedRequest>,
    ) -> Result<Response<pb::GatewayEmbedResponse>, Status> {
        Ok(texts::embed(self, request).await?)
    }

    async fn classify(
        &self,
        request: Request<pb::GatewayClassifyRequest>,
    ) -> Result<Response<pb::GatewayClassifyResponse>, Status> {
        Ok(texts::classify(self, request).await?)
    }

    async fn explain(
        &self,
        request: Request<pb::ExplainRequest>,
    ) -> Result<Response<pb::Decision>, Status> {
        Ok(operator::explain(self, request)?)
    }

    async fn fleet_status(
        &self,
        request: Request<pb::FleetStatusRequest>,
    ) -> Result<Response<pb::FleetStatusResponse>, Status> {
        Ok(operator::fleet_status(self, request).await?)
    }

    async fn spend(
        &self,
        request: Request<pb::SpendRequest>,
    ) -> Result<Response<pb::SpendResponse>, Status> {
        Ok(operator::spend(self, request).await?)
    }

    async fn export_audit(
        &self,
        request: Request<pb::ExportAuditRequest>,
    ) -> Result<Response<Self::ExportAuditStream>, Status> {
        Ok(operator::export_audit(self, request).await?)
    }

    async fn verify_audit(
        &self,
        request: Request<pb::VerifyAuditRequest>,
    ) -> Result<Response<pb::VerifyAuditResponse>, Status> {
        Ok(operator::verify_audit(self, request).await?)
    }
}
