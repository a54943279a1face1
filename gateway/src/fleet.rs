//! The fleet registry: what the agents last reported, and which of them are live.
//!
//! A node is live while its report stream is open, it is not draining, and its last report is
//! at most 3 of its intervals old. The gateway's own in-flight count per (node, model) is
//! kept here too, so a decision counts requests the next report has not yet seen, and
//! discounts requests that finished after the last report counted them.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use edgewise_proto as pb;
use futures::Stream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::error::GatewayError;
use crate::routing::{FleetSnapshot, ModelView, NodeView, Task};

/// A node is dropped from routing after this many missed report intervals.
pub const MISSED_INTERVALS: u32 = 3;

struct Entry {
    report: pb::NodeReport,
    seen: Instant,
    /// The stream this report came on (a reconnect starts a new one).
    stream: u64,
    open: bool,
}

#[derive(Default)]
pub struct Registry {
    nodes: RwLock<HashMap<String, Entry>>,
    in_flight: RwLock<HashMap<(String, String), Counts>>,
    streams: std::sync::atomic::AtomicU64,
    /// Nodes the gateway could not reach, and until when they stay out of routing (their
    /// reports say nothing about whether the gateway can reach them).
    unreachable: RwLock<HashMap<String, Instant>>,
}

/// How long a node that refused a connection stays out of routing.
pub const UNREACHABLE_FOR: Duration = Duration::from_secs(5);

/// The gateway's own view of one (node, model) between reports.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    /// Requests sent and not finished.
    running: u32,
    /// Requests that started before the node's last report and finished since: that report
    /// still counts them as in flight, so routing discounts them instead of waiting up to an
    /// interval for the next one.
    finished: u32,
    /// Reports received from the node since this entry was made.
    epoch: u64,
}

/// Held while the gateway has a request on (node, model); counts it in decisions.
pub struct InFlight {
    registry: Arc<Registry>,
    key: (String, String),
    /// The entry's epoch when the request started.
    epoch: u64,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut m = self
            .registry
            .in_flight
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.key) {
            n.running = n.running.saturating_sub(1);
            if n.epoch > self.epoch {
                n.finished = n.finished.saturating_add(1);
            }
        }
    }
}

fn task(t: i32) -> Option<Task> {
    match pb::Task::try_from(t).ok()? {
        pb::Task::Generate => Some(Task::Generate),
        pb::Task::Embed => Some(Task::Embed),
        pb::Task::Classify => Some(Task::Classify),
        pb::Task::Unspecified => None,
    }
}

impl Registry {
    pub fn record(&self, stream: u64, report: pb::NodeReport, now: Instant) {
        {
            // a fresh report counts everything that finished before it
            let mut counts = self.in_flight.write().unwrap_or_else(|p| p.into_inner());
            for ((node, _), c) in counts.iter_mut() {
                if node == &report.node_id {
                    c.finished = 0;
                    c.epoch += 1;
                }
            }
        }
        let mut nodes = self.nodes.write().unwrap_or_else(|p| p.into_inner());
        nodes.insert(
            report.node_id.clone(),
            Entry {
                report,
                seen: now,
                stream,
                open: true,
            },
        );
    }

    /// The stream ended: its node leaves routing at once (unless it already reconnected).
    pub fn closed(&self, stream: u64, node: &str) {
        let mut nodes = self.nodes.write().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = nodes.get_mut(node)
            && e.stream == stream
        {
            e.open = false;
        }
    }

    pub fn track(self: &Arc<Self>, node: &str, model: &str) -> InFlight {
        let key = (node.to_string(), model.to_string());
        let mut m = self.in_flight.write().unwrap_or_else(|p| p.into_inner());
        let c = m.entry(key.clone()).or_default();
        c.running += 1;
        let epoch = c.epoch;
        drop(m);
        InFlight {
            registry: self.clone(),
            key,
            epoch,
        }
    }

    /// The gateway could not reach `node`: leave it out of routing until `until`.
    pub fn mark_unreachable(&self, node: &str, until: Instant) {
        self.unreachable
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node.to_string(), until);
    }

    fn reachable(&self, node: &str, now: Instant) -> bool {
        self.unreachable
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(node)
            .is_none_or(|until| now >= *until)
    }

    fn live(e: &Entry, now: Instant) -> bool {
        let interval = Duration::from_millis(u64::from(e.report.report_interval_ms.max(1)));
        e.open && !e.report.draining && now.duration_since(e.seen) <= interval * MISSED_INTERVALS
    }

    /// What routing sees now.
    pub fn snapshot(&self, now: Instant) -> FleetSnapshot {
        let nodes = self.nodes.read().unwrap_or_else(|p| p.into_inner());
        let in_flight = self.in_flight.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<NodeView> = nodes
            .values()
            .map(|e| NodeView {
                id: e.report.node_id.clone(),
                addr: e.report.advertise_addr.clone(),
                live: Self::live(e, now) && self.reachable(&e.report.node_id, now),
                models: e
                    .report
                    .models
                    .iter()
                    .filter_map(|m| {
                        let own = in_flight
                            .get(&(e.report.node_id.clone(), m.name.clone()))
                            .copied()
                            .unwrap_or_default();
                        Some(ModelView {
                            name: m.name.clone(),
                            task: task(m.task)?,
                            ready: m.state == pb::ModelState::Ready as i32,
                            quality: m.quality,
                            parameters: m.parameters,
                            size_bytes: m.size_bytes,
                            context_length: m.context_length,
                            in_flight: m.in_flight.saturating_sub(own.finished),
                            queue_depth: m.queue_depth,
                            max_concurrency: m.max_concurrency,
                            max_queue: m.max_queue,
                            gateway_in_flight: own.running,
                            ewma_latency_ms: m.ewma_latency_ms,
                            ewma_time_per_output_token_ms: m.ewma_time_per_output_token_ms,
                            kv_room: m.kv_bytes_per_position == 0
                                || m.kv_bytes_free
                                    >= m.kv_bytes_per_position
                                        * crate::routing::types::KV_ALLOCATION_POSITIONS,
                            space: m.space.clone(),
                            dimensions: m.dimensions,
                        })
                    })
                    .collect(),
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        FleetSnapshot { nodes: out }
    }

    /// Every node the gateway has heard from, for `FleetStatus`.
    pub fn status(&self, now: Instant) -> Vec<pb::NodeStatus> {
        let nodes = self.nodes.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<pb::NodeStatus> = nodes
            .values()
            .map(|e| pb::NodeStatus {
                node_id: e.report.node_id.clone(),
                addr: e.report.advertise_addr.clone(),
                live: Self::live(e, now) && self.reachable(&e.report.node_id, now),
                draining: e.report.draining,
                last_report_ms_ago: now.duration_since(e.seen).as_millis() as u64,
                hardware: e.report.hardware.clone(),
                models: e.report.models.clone(),
            })
            .collect();
        out.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        out
    }
}

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
        let stream_id = registry
            .streams
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn report(in_flight: u32) -> pb::NodeReport {
        pb::NodeReport {
            node_id: "a".into(),
            report_interval_ms: 1000,
            models: vec![pb::ModelStatus {
                name: "lm".into(),
                task: pb::Task::Generate as i32,
                state: pb::ModelState::Ready as i32,
                in_flight,
                max_concurrency: 2,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn seen(r: &Arc<Registry>) -> (u32, u32) {
        let s = r.snapshot(Instant::now());
        let m = &s.nodes[0].models[0];
        (m.in_flight, m.gateway_in_flight)
    }

    #[test]
    fn a_finished_request_stops_counting_before_the_next_report() {
        let r = Arc::new(Registry::default());
        let x = r.track("a", "lm");
        r.record(0, report(1), Instant::now()); // the report counts x
        assert_eq!(seen(&r), (1, 1));
        let y = r.track("a", "lm"); // started after the report: it never counted y
        assert_eq!(seen(&r), (1, 2));
        drop(x);
        assert_eq!(
            seen(&r),
            (0, 1),
            "x finished: the report's count is discounted"
        );
        drop(y);
        assert_eq!(
            seen(&r),
            (0, 0),
            "y was never in the report: nothing to discount"
        );
        r.record(0, report(0), Instant::now());
        assert_eq!(seen(&r), (0, 0));
    }
}
