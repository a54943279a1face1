//! The fleet registry: what the agents last reported, and which of them are live.
//!
//! A node is live while its report stream is open, it is not draining, and its last report is
//! at most 3 of its intervals old. The gateway's own in-flight count per (node, model) is
//! kept here too, so a decision counts requests the next report has not yet seen.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use edgewise_proto as pb;
use futures::Stream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

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
    in_flight: RwLock<HashMap<(String, String), u32>>,
    streams: std::sync::atomic::AtomicU64,
}

/// Held while the gateway has a request on (node, model); counts it in decisions.
pub struct InFlight {
    registry: Arc<Registry>,
    key: (String, String),
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut m = self
            .registry
            .in_flight
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.key) {
            *n = n.saturating_sub(1);
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
        *self
            .in_flight
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_default() += 1;
        InFlight {
            registry: self.clone(),
            key,
        }
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
                live: Self::live(e, now),
                models: e
                    .report
                    .models
                    .iter()
                    .filter_map(|m| {
                        Some(ModelView {
                            name: m.name.clone(),
                            task: task(m.task)?,
                            ready: m.state == pb::ModelState::Ready as i32,
                            quality: m.quality,
                            parameters: m.parameters,
                            size_bytes: m.size_bytes,
                            context_length: m.context_length,
                            in_flight: m.in_flight,
                            queue_depth: m.queue_depth,
                            max_concurrency: m.max_concurrency,
                            max_queue: m.max_queue,
                            gateway_in_flight: in_flight
                                .get(&(e.report.node_id.clone(), m.name.clone()))
                                .copied()
                                .unwrap_or(0),
                            ewma_latency_ms: m.ewma_latency_ms,
                            ewma_time_per_output_token_ms: m.ewma_time_per_output_token_ms,
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
                live: Self::live(e, now),
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
}

type AckStream = Pin<Box<dyn Stream<Item = Result<pb::ReportAck, Status>> + Send>>;

#[tonic::async_trait]
impl pb::fleet_server::Fleet for FleetService {
    type ReportStream = AckStream;

    async fn report(
        &self,
        request: Request<Streaming<pb::NodeReport>>,
    ) -> Result<Response<Self::ReportStream>, Status> {
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
                        let _ = tx.send(Err(Status::unavailable("the gateway is shutting down"))).await;
                        break;
                    }
                };
                if r.node_id.is_empty() {
                    let _ = tx
                        .send(Err(Status::invalid_argument("report without node_id")))
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
