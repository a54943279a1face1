//! gRPC edge of the gateway: `edgewise.v1.Gateway`. It authenticates the caller, hands the
//! request to the shared paths (`requests`), and maps their errors through
//! `GatewayError::grpc_status`.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use edgewise_proto as pb;
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::dispatch;
use crate::error::GatewayError;
use crate::requests::{self, Caller};
use crate::routing::Task;
use crate::state::State;

/// tonic's server enforces `grpc-timeout` too, and answers CANCELLED "Timeout expired" when
/// its timer wins. The gateway's own deadline ends this much earlier, so a caller whose
/// deadline passes is told DEADLINE_EXCEEDED by the gateway, with what it was waiting for.
const DEADLINE_MARGIN: std::time::Duration = std::time::Duration::from_millis(5);

pub struct GatewayService {
    pub state: Arc<State>,
}

impl GatewayService {
    /// The tenant (from the request's credentials), its deadline and trace context.
    fn caller<T>(&self, request: &Request<T>) -> Result<Caller, GatewayError> {
        Ok(Caller {
            tenant: self.state.auth.tenant(request)?,
            deadline: edgewise_proto::grpc_timeout(request.metadata())
                .map_err(GatewayError::InvalidRequest)?
                .map(|t| Instant::now() + t.saturating_sub(DEADLINE_MARGIN)),
            headers: request.metadata().clone(),
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
        let caller = self.caller(&request)?;
        let stream = requests::generate(&self.state, caller, request.into_inner()).await?;
        Ok(Response::new(Box::pin(
            stream.map(|r| r.map_err(GatewayError::into)),
        )))
    }

    async fn embed(
        &self,
        request: Request<pb::GatewayEmbedRequest>,
    ) -> Result<Response<pb::GatewayEmbedResponse>, Status> {
        let caller = self.caller(&request)?;
        let body = request.into_inner();
        let (response, decision) =
            requests::texts(&self.state, caller, body.request, body.routing).await?;
        Ok(Response::new(pb::GatewayEmbedResponse {
            response: Some(response),
            decision: Some(decision),
        }))
    }

    async fn classify(
        &self,
        request: Request<pb::GatewayClassifyRequest>,
    ) -> Result<Response<pb::GatewayClassifyResponse>, Status> {
        let caller = self.caller(&request)?;
        let body = request.into_inner();
        let (response, decision) =
            requests::texts(&self.state, caller, body.request, body.routing).await?;
        Ok(Response::new(pb::GatewayClassifyResponse {
            response: Some(response),
            decision: Some(decision),
        }))
    }

    async fn explain(
        &self,
        request: Request<pb::ExplainRequest>,
    ) -> Result<Response<pb::Decision>, Status> {
        let tenant = self.state.auth.tenant(&request)?;
        let body = request.into_inner();
        let task = match pb::Task::try_from(body.task) {
            Ok(pb::Task::Generate) => Task::Generate,
            Ok(pb::Task::Embed) => Task::Embed,
            Ok(pb::Task::Classify) => Task::Classify,
            _ => {
                return Err(GatewayError::InvalidRequest(
                    "task must be TASK_GENERATE, TASK_EMBED or TASK_CLASSIFY".into(),
                )
                .into());
            }
        };
        let mut req = crate::validate::route_request(
            tenant,
            task,
            body.routing.as_ref(),
            (
                crate::validate::estimate_tokens(&body.text),
                crate::validate::max_tokens_of(&body.text),
            ),
            body.max_tokens,
            &self.state.limits,
        )?;
        if task == crate::routing::Task::Generate {
            let message = crate::providers::Message {
                role: "user".into(),
                content: body.text.clone(),
            };
            req.p_adequate = crate::adequacy::estimate(&self.state.policy().policy, &[message]);
        }
        let d = dispatch::decide(&self.state, &req);
        let mut proto = dispatch::to_proto(&d, &uuid::Uuid::new_v4().to_string(), &[]);
        dispatch::explain_adequacy(&self.state, &req, &mut proto);
        Ok(Response::new(proto))
    }

    async fn fleet_status(
        &self,
        request: Request<pb::FleetStatusRequest>,
    ) -> Result<Response<pb::FleetStatusResponse>, Status> {
        self.state.auth.operator(&request)?;
        Ok(Response::new(pb::FleetStatusResponse {
            gateway_id: self.state.id.clone(),
            nodes: self.state.registry.status(Instant::now()),
            policy_hash: self.state.policy().hash.clone(),
            policy_reloads: self
                .state
                .reloads
                .load(std::sync::atomic::Ordering::Relaxed),
            policy_reload_failures: self
                .state
                .reload_failures
                .load(std::sync::atomic::Ordering::Relaxed),
        }))
    }

    async fn spend(
        &self,
        request: Request<pb::SpendRequest>,
    ) -> Result<Response<pb::SpendResponse>, Status> {
        let tenant = request.get_ref().tenant.clone();
        self.state.auth.may_read_spend(&request, &tenant)?;
        let entries = self
            .state
            .ledger
            .entries()
            .into_iter()
            .filter(|e| tenant.is_empty() || e.1 == tenant)
            .map(|(day, tenant, provider, spent, reserved)| pb::SpendEntry {
                day,
                tenant,
                provider,
                spent_usd: crate::ledger::usd(spent),
                reserved_usd: crate::ledger::usd(reserved),
            })
            .collect();
        Ok(Response::new(pb::SpendResponse { entries }))
    }

    async fn export_audit(
        &self,
        request: Request<pb::ExportAuditRequest>,
    ) -> Result<Response<Self::ExportAuditStream>, Status> {
        self.state.auth.operator(&request)?;
        let r = request.into_inner();
        let until = if r.until_unix_ms == 0 {
            u64::MAX
        } else {
            r.until_unix_ms
        };
        let records: Vec<Result<pb::AuditRecord, Status>> = self
            .state
            .audit
            .range(r.since_unix_ms, until)
            .map(Ok)
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(records))))
    }
}
