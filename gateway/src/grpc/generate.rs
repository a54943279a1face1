//! `Gateway/Generate`: the shared generate path, its chunks streamed back with their errors
//! as statuses.

use edgewise_proto as pb;
use futures::StreamExt;
use tonic::{Request, Response};

use super::{ChunkStream, GatewayService};
use crate::error::GatewayError;
use crate::requests;

pub(super) async fn generate(
    service: &GatewayService,
    request: Request<pb::GatewayGenerateRequest>,
) -> Result<Response<ChunkStream>, GatewayError> {
    let caller = service.caller(&request)?;
    let stream = requests::generate(&service.state, caller, request.into_inner()).await?;
    Ok(Response::new(Box::pin(
        stream.map(|r| r.map_err(GatewayError::into)),
    )))
}
