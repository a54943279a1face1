//! The fleet registry: what the agents last reported, and which of them are live.
//!
//! A node is live while its report stream is open, it is not draining, and its last report is
//! at most 3 of its intervals old. The gateway's own in-flight count per (node, model) is
//! kept here too, so a decision counts requests the next report has not yet seen, and
//! discounts requests that finished after the last report counted them.
//!
//! Routing reads a snapshot the registry keeps up to date: a report, a stream's end, a
//! request starting or ending each swap in the one node they change (the candidate index is
//! rebuilt only when a node's models change), and liveness is re-checked when the earliest
//! node could lapse. A decision takes an `Arc` of it, not a copy of the fleet.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use edgewise_proto as pb;

use crate::routing::{FleetSnapshot, ModelView, NodeView};
use crate::validate::task_of;

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
    /// What routing reads, kept up to date by every change above.
    view: RwLock<View>,
}

#[derive(Default)]
struct View {
    snapshot: Arc<FleetSnapshot>,
    /// The first moment a node's liveness may change without an event (a report going
    /// stale, an unreachable node's time out ending); `None`: nothing pending.
    recheck_at: Option<Instant>,
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
        drop(m);
        self.registry.refresh(&self.key.0, Instant::now());
    }
}

impl Registry {
    /// A number for a new report stream (a reconnect is told apart from the stream it replaces).
    pub fn new_stream(&self) -> u64 {
        self.streams
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

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
        let id = report.node_id.clone();
        let mut nodes = self.nodes.write().unwrap_or_else(|p| p.into_inner());
        nodes.insert(
            id.clone(),
            Entry {
                report,
                seen: now,
                stream,
                open: true,
            },
        );
        drop(nodes);
        self.refresh(&id, now);
    }

    /// The stream ended: its node leaves routing at once (unless it already reconnected).
    pub fn closed(&self, stream: u64, node: &str) {
        let mut nodes = self.nodes.write().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = nodes.get_mut(node)
            && e.stream == stream
        {
            e.open = false;
        }
        drop(nodes);
        self.refresh(node, Instant::now());
    }

    pub fn track(self: &Arc<Self>, node: &str, model: &str) -> InFlight {
        let key = (node.to_string(), model.to_string());
        let mut m = self.in_flight.write().unwrap_or_else(|p| p.into_inner());
        let c = m.entry(key.clone()).or_default();
        c.running += 1;
        let epoch = c.epoch;
        drop(m);
        self.refresh(node, Instant::now());
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
        self.refresh(node, Instant::now());
    }

    fn reachable(&self, node: &str, now: Instant) -> bool {
        reachable(
            &self.unreachable.read().unwrap_or_else(|p| p.into_inner()),
            node,
            now,
        )
    }

    /// What routing sees now: the kept snapshot, re-checked for liveness when a node may
    /// have lapsed since.
    pub fn snapshot(&self, now: Instant) -> Arc<FleetSnapshot> {
        {
            let view = self.view.read().unwrap_or_else(|p| p.into_inner());
            if view.recheck_at.is_none_or(|t| now < t) {
                return view.snapshot.clone();
            }
        }
        self.rebuild(now)
    }

    /// The whole snapshot again (liveness moves with the clock).
    fn rebuild(&self, now: Instant) -> Arc<FleetSnapshot> {
        let nodes = self.nodes.read().unwrap_or_else(|p| p.into_inner());
        let in_flight = self.in_flight.read().unwrap_or_else(|p| p.into_inner());
        let unreachable = self.unreachable.read().unwrap_or_else(|p| p.into_inner());
        let views = nodes
            .values()
            .map(|e| view_of(e, &in_flight, &unreachable, now))
            .collect();
        let recheck_at = recheck(nodes.values(), &unreachable, now);
        let snapshot = Arc::new(FleetSnapshot::new(views));
        // written under the read locks, so a change made meanwhile is not overwritten
        let mut view = self.view.write().unwrap_or_else(|p| p.into_inner());
        *view = View {
            snapshot: snapshot.clone(),
            recheck_at,
        };
        snapshot
    }

    /// Node `id` changed: swap it into the kept snapshot.
    fn refresh(&self, id: &str, now: Instant) {
        let nodes = self.nodes.read().unwrap_or_else(|p| p.into_inner());
        let Some(e) = nodes.get(id) else { return };
        let in_flight = self.in_flight.read().unwrap_or_else(|p| p.into_inner());
        let unreachable = self.unreachable.read().unwrap_or_else(|p| p.into_inner());
        let node = view_of(e, &in_flight, &unreachable, now);
        let lapse = lapses_at(e, &unreachable, now);
        // the view is updated under the registry's read locks, so two changes to one node
        // land in the order they were made
        let mut view = self.view.write().unwrap_or_else(|p| p.into_inner());
        view.snapshot = Arc::new(view.snapshot.with_node(node));
        view.recheck_at = match (view.recheck_at, lapse) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    /// Every node the gateway has heard from, for `FleetStatus`.
    pub fn status(&self, now: Instant) -> Vec<pb::NodeStatus> {
        let nodes = self.nodes.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<pb::NodeStatus> = nodes
            .values()
            .map(|e| pb::NodeStatus {
                node_id: e.report.node_id.clone(),
                addr: e.report.advertise_addr.clone(),
                live: live(e, now) && self.reachable(&e.report.node_id, now),
                draining: e.report.draining,
                last_report_ms_ago: now.duration_since(e.seen).as_millis() as u64,
                hardware: e.report.hardware.clone(),
                models: e.report.models.clone(),
                memory: e.report.memory,
            })
            .collect();
        out.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        out
    }
}

fn reachable(unreachable: &HashMap<String, Instant>, node: &str, now: Instant) -> bool {
    unreachable.get(node).is_none_or(|until| now >= *until)
}

/// The moment a report goes stale.
fn stale_at(e: &Entry) -> Instant {
    let interval = Duration::from_millis(u64::from(e.report.report_interval_ms.max(1)));
    e.seen + interval * MISSED_INTERVALS
}

fn live(e: &Entry, now: Instant) -> bool {
    e.open && !e.report.draining && now <= stale_at(e)
}

/// When this node's liveness next changes with no event: its report goes stale, or its time
/// out of routing ends.
fn lapses_at(e: &Entry, unreachable: &HashMap<String, Instant>, now: Instant) -> Option<Instant> {
    let stale = (e.open && !e.report.draining)
        .then(|| stale_at(e) + Duration::from_nanos(1))
        .filter(|t| *t > now);
    let back = unreachable
        .get(&e.report.node_id)
        .copied()
        .filter(|t| *t > now);
    match (stale, back) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn recheck<'a>(
    entries: impl Iterator<Item = &'a Entry>,
    unreachable: &HashMap<String, Instant>,
    now: Instant,
) -> Option<Instant> {
    entries.filter_map(|e| lapses_at(e, unreachable, now)).min()
}

/// One node as routing sees it: its last report, discounted and topped up by this gateway's
/// own requests.
fn view_of(
    e: &Entry,
    in_flight: &HashMap<(String, String), Counts>,
    unreachable: &HashMap<String, Instant>,
    now: Instant,
) -> NodeView {
    let id = &e.report.node_id;
    NodeView {
        id: id.clone(),
        addr: e.report.advertise_addr.clone(),
        live: live(e, now) && reachable(unreachable, id, now),
        models: e
            .report
            .models
            .iter()
            .filter_map(|m| {
                let own = in_flight
                    .get(&(id.clone(), m.name.clone()))
                    .copied()
                    .unwrap_or_default();
                Some(ModelView {
                    name: m.name.clone(),
                    task: task_of(m.task).ok()?,
                    ready: routable(m.state),
                    cold_ms: cold_ms(m),
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
                    constraints: m.constraints,
                    tools: !m.tool_format.is_empty(),
                })
            })
            .collect(),
    }
}

/// Whether a model may be routed to: resident, or loading or loadable on demand (a draining
/// or failed one is not).
fn routable(state: i32) -> bool {
    use pb::ModelState as S;
    matches!(
        S::try_from(state),
        Ok(S::Ready | S::Loading | S::Available | S::Unloaded)
    )
}

/// What a request waits for the model to load: 0 when resident; at least 1 otherwise.
fn cold_ms(m: &pb::ModelStatus) -> u32 {
    if m.state == pb::ModelState::Ready as i32 {
        0
    } else {
        m.cold_load_ms.max(1)
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
        let m = &s.nodes()[0].models[0];
        (m.in_flight, m.gateway_in_flight)
    }

    #[test]
    fn the_kept_snapshot_follows_reports_closes_and_the_clock() {
        let r = Arc::new(Registry::default());
        let t0 = Instant::now();
        r.record(0, report(0), t0);
        let live = |at: Instant| r.snapshot(at).node("a").map(|n| n.live);
        assert_eq!(live(t0), Some(true));
        // no event: the report goes stale after 3 intervals, and the next decision sees it
        assert_eq!(live(t0 + Duration::from_millis(3000)), Some(true));
        assert_eq!(live(t0 + Duration::from_millis(3001)), Some(false));
        // a fresh report brings it back, a closed stream takes it out at once
        r.record(0, report(0), t0 + Duration::from_millis(3002));
        assert_eq!(live(t0 + Duration::from_millis(3003)), Some(true));
        r.closed(0, "a");
        assert_eq!(live(t0 + Duration::from_millis(3004)), Some(false));
        // unreachable for a while, then back without a report
        let t1 = Instant::now();
        r.record(1, report(0), t1);
        r.mark_unreachable("a", t1 + Duration::from_millis(500));
        assert_eq!(live(t1 + Duration::from_millis(499)), Some(false));
        assert_eq!(live(t1 + Duration::from_millis(500)), Some(true));
        // a load change keeps the candidate index
        let before = r.snapshot(t1 + Duration::from_millis(501));
        r.record(1, report(1), t1 + Duration::from_millis(502));
        let after = r.snapshot(t1 + Duration::from_millis(503));
        assert_eq!(after.node("a").map(|n| n.models[0].in_flight), Some(1));
        assert!(std::ptr::eq(before.index(), after.index()));
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
