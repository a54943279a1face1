//! `edgewise.v1.Fleet`: the agents' capacity report streams, into the registry.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use edgewise_proto as pb;
use futures::Stream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::error::GatewayError;
use crate::fleet::Registry;

/// `edgewise.v1.Fleet`: the receiving side of the agents' report streams.
pub struct FleetService {
    pub registry: Arc<Registry>,
    pub gateway_id: String,
    /// Cancelled when the gateway stops.
    pub stop: tokio_util::sync::CancellationToken,
    /// Mutual TLS is on: a report is accepted only over a connection whose certificate
    /// names the reporting node.
    pub node_certificates: bool,
}

type AckStream = Pin<Box<dyn Stream<Item = Result<pb::ReportAck, Status>> + Send>>;

#[tonic::async_trait]
impl pb::fleet_server::Fleet for FleetService {
    type ReportStream = AckStream;

    async fn report(
        &self,
        request: Request<Streaming<pb::NodeReport>>,
    ) -> Result<Response<Self::ReportStream>, Status> {
        let certified = match edgewise_tls::net::peer_identity(&request) {
            Some(edgewise_tls::Identity::Node(id)) => Some(id),
            Some(other) if self.node_certificates => {
                return Err(GatewayError::NotANode(other.to_string()).into());
            }
            None if self.node_certificates => {
                return Err(GatewayError::NoNodeCertificate.into());
            }
            _ => None,
        };
        let mut reports = request.into_inner();
        let registry = self.registry.clone();
        let gateway_id = self.gateway_id.clone();
        let stop = self.stop.clone();
        let stream_id = registry.new_stream();
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tokio::spawn(async move {
            let mut node = String::new();
            loop {
                let r = tokio::select! {
                    r = reports.next() => match r {
                        Some(Ok(r)) => r,
                        _ => break,
                    },
                    // a stopping gateway ends report streams, so agents go elsewhere and the
                    // server's graceful shutdown is not held up by them
                    () = stop.cancelled() => {
                        let _ = tx.send(Err(GatewayError::ShuttingDown.into())).await;
                        break;
                    }
                };
                if r.node_id.is_empty() {
                    let _ = tx
                        .send(Err(GatewayError::InvalidRequest(
                            "report without node_id".into(),
                        )
                        .into()))
                        .await;
                    break;
                }
                if let Some(id) = certified.as_deref()
                    && id != r.node_id
                {
                    tracing::warn!(certificate = %id, report = %r.node_id, "report for another node refused");
                    let _ = tx
                        .send(Err(GatewayError::OtherNode {
                            report: r.node_id.clone(),
                            certificate: id.to_string(),
                        }
                        .into()))
                        .await;
                    break;
                }
                if node.is_empty() {
                    tracing::info!(node = %r.node_id, addr = %r.advertise_addr, "agent connected");
                }
                node.clone_from(&r.node_id);
                let seq = r.seq;
                registry.record(stream_id, r, Instant::now());
                if tx
                    .send(Ok(pb::ReportAck {
                        gateway_id: gateway_id.clone(),
                        seq,
                    }))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            if !node.is_empty() {
                tracing::info!(node = %node, "agent report stream ended; node leaves routing");
                registry.closed(stream_id, &node);
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
