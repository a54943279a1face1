//! `Gateway/Embed` and `Gateway/Classify`: one shared path for both, the decision beside
//! the agent's answer.

use edgewise_proto as pb;
use tonic::{Request, Response};

use super::GatewayService;
use crate::error::GatewayError;
use crate::requests;

pub(super) async fn embed(
    service: &GatewayService,
    request: Request<pb::GatewayEmbedRequest>,
) -> Result<Response<pb::GatewayEmbedResponse>, GatewayError> {
    let caller = service.caller(&request)?;
    let body = request.into_inner();
    let (response, decision) =
        requests::texts(&service.state, caller, body.request, body.routing).await?;
    Ok(Response::new(pb::GatewayEmbedResponse {
        response: Some(response),
        decision: Some(decision),
    }))
}

pub(super) async fn classify(
    service: &GatewayService,
    request: Request<pb::GatewayClassifyRequest>,
) -> Result<Response<pb::GatewayClassifyResponse>, GatewayError> {
    let caller = service.caller(&request)?;
    let body = request.into_inner();
    let (response, decision) =
        requests::texts(&service.state, caller, body.request, body.routing).await?;
    Ok(Response::new(pb::GatewayClassifyResponse {
        response: Some(response),
        decision: Some(decision),
    }))
}
