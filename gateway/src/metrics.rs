//! The gateway's Prometheus metrics: requests by route, task, target and outcome; decisions
//! by rule; refusals; external calls and their cost; tokens; request latency and time to
//! first token (histograms); and, read at each scrape, the fleet and policy reload counts.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

// label values from outside (policy, provider and tenant names) are escaped for the text format
use edgewise_ops::metrics::openmetrics::escape;
use edgewise_proto as pb;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::fleet::Registry as FleetRegistry;

type Labels = Vec<(&'static str, String)>;

fn histogram() -> Histogram {
    Histogram::new(edgewise_ops::metrics::latency_buckets())
}

pub struct Metrics {
    requests: Family<Labels, Counter>,
    decisions: Family<Labels, Counter>,
    refusals: Family<Labels, Counter>,
    external_calls: Family<Labels, Counter>,
    external_cost_usd: Family<Labels, Counter<f64, std::sync::atomic::AtomicU64>>,
    tokens: Family<Labels, Counter>,
    latency: Family<Labels, Histogram, fn() -> Histogram>,
    ttft: Family<Labels, Histogram, fn() -> Histogram>,
    detections: Family<Labels, Counter>,
    raised: Family<Labels, Counter>,
    /// Policy reloads applied, and edits rejected (the previous policy stayed in force).
    pub reloads: std::sync::atomic::AtomicU64,
    pub reload_failures: std::sync::atomic::AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self {
            requests: Family::default(),
            decisions: Family::default(),
            refusals: Family::default(),
            external_calls: Family::default(),
            external_cost_usd: Family::default(),
            tokens: Family::default(),
            latency: Family::new_with_constructor(histogram),
            ttft: Family::new_with_constructor(histogram),
            detections: Family::default(),
            raised: Family::default(),
            reloads: Default::default(),
            reload_failures: Default::default(),
        }
    }

    /// The registry the endpoint serves: these families and the fleet read from `state`.
    pub fn registry(self: &Arc<Self>, fleet: &Arc<FleetRegistry>) -> Registry {
        let mut r = Registry::with_prefix("edgewise_gateway");
        r.register(
            "requests",
            "Requests by route, task, target and outcome (a gRPC code name)",
            self.requests.clone(),
        );
        r.register(
            "decisions",
            "Routing decisions by the rule that chose the target",
            self.decisions.clone(),
        );
        r.register(
            "refusals",
            "Requests refused by policy, by reason",
            self.refusals.clone(),
        );
        r.register(
            "data_class_detections",
            "Requests in which a data-class detector found something, by detector (never what it found)",
            self.detections.clone(),
        );
        r.register(
            "data_class_raised",
            "Requests whose data class the text scan raised above the declared one, by route and class",
            self.raised.clone(),
        );
        r.register(
            "external_calls",
            "Calls to hosted providers, by provider and outcome",
            self.external_calls.clone(),
        );
        r.register(
            "external_cost_usd",
            "Cost charged for hosted calls, by provider and tenant",
            self.external_cost_usd.clone(),
        );
        r.register(
            "tokens",
            "Tokens by target and kind (prompt, completion)",
            self.tokens.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Request latency to the last byte, by task and target",
            self.latency.clone(),
        );
        r.register(
            "time_to_first_token_seconds",
            "Generation time to the first token, by target",
            self.ttft.clone(),
        );
        r.register_collector(Box::new(Fleet {
            registry: Arc::downgrade(fleet),
            metrics: Arc::downgrade(self),
        }));
        r
    }

    /// A request's tracker: its outcome and latency are recorded when it is dropped.
    pub fn track(self: &Arc<Self>, task: &'static str) -> Tracker {
        Tracker {
            m: self.clone(),
            task,
            started: Instant::now(),
            route: String::new(),
            target: "none",
            first: None,
            outcome: "OK",
        }
    }

    /// A request the policy refused.
    /// A request's text scan as its first decision used it: each detector that fired, and
    /// whether the class was raised.
    pub fn scanned(&self, d: &pb::Decision) {
        for x in &d.detections {
            self.detections
                .get_or_create(&vec![("detector", x.detector.clone())])
                .inc();
        }
        if d.data_class != d.declared_data_class {
            self.raised
                .get_or_create(&vec![
                    ("route", escape(&d.route)),
                    ("data_class", d.data_class.clone()),
                ])
                .inc();
        }
    }

    pub fn refused(&self, r: &crate::routing::Refusal) {
        use crate::routing::Refusal::*;
        let kind = match r {
            NoAdequateModel(_) => "no_adequate_model",
            NoCapacity(_) => "no_capacity",
            Forbidden(_) => "forbidden",
            OverBudget(_) => "over_budget",
        };
        self.refusals
            .get_or_create(&vec![("reason", kind.into())])
            .inc();
    }

    /// One hosted call settled: its outcome and what it cost.
    pub fn external(
        &self,
        provider: &str,
        tenant: &str,
        ok: bool,
        cost_usd: f64,
        usage: (u32, u32),
    ) {
        let outcome = if ok { "ok" } else { "error" };
        self.external_calls
            .get_or_create(&vec![
                ("provider", escape(provider)),
                ("outcome", outcome.into()),
            ])
            .inc();
        self.external_cost_usd
            .get_or_create(&vec![
                ("provider", escape(provider)),
                ("tenant", escape(tenant)),
            ])
            .inc_by(cost_usd);
        self.count_tokens("external", usage);
    }

    fn count_tokens(&self, target: &str, (prompt, completion): (u32, u32)) {
        for (kind, n) in [("prompt", prompt), ("completion", completion)] {
            if n > 0 {
                self.tokens
                    .get_or_create(&vec![("target", target.to_string()), ("kind", kind.into())])
                    .inc_by(u64::from(n));
            }
        }
    }
}

/// One request on its way through the gateway.
pub struct Tracker {
    m: Arc<Metrics>,
    task: &'static str,
    started: Instant,
    route: String,
    target: &'static str,
    first: Option<Duration>,
    outcome: &'static str,
}

impl Tracker {
    pub fn decided(&mut self, d: &pb::Decision) {
        self.route.clone_from(&d.route);
        self.target = match d.target {
            Some(pb::decision::Target::Local(_)) => "local",
            Some(pb::decision::Target::External(_)) => "external",
            None => "none",
        };
        self.m
            .decisions
            .get_or_create(&vec![("rule", escape(&d.rule))])
            .inc();
    }

    pub fn first_token(&mut self) {
        self.first.get_or_insert_with(|| self.started.elapsed());
    }

    /// Tokens an agent reported for this request.
    pub fn local_tokens(&self, usage: (u32, u32)) {
        self.m.count_tokens("local", usage);
    }

    pub fn failed_with(&mut self, code: tonic::Code) {
        self.outcome = code_name(code);
    }
}

fn code_name(c: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match c {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.m
            .requests
            .get_or_create(&vec![
                ("route", escape(&self.route)),
                ("task", self.task.into()),
                ("target", self.target.into()),
                ("outcome", self.outcome.into()),
            ])
            .inc();
        let labels = vec![
            ("task", self.task.to_string()),
            ("target", self.target.to_string()),
        ];
        self.m
            .latency
            .get_or_create(&labels)
            .observe(self.started.elapsed().as_secs_f64());
        if let Some(t) = self.first {
            self.m
                .ttft
                .get_or_create(&vec![("target", self.target.to_string())])
                .observe(t.as_secs_f64());
        }
    }
}

/// What the registry knows at scrape time.
#[derive(Debug)]
struct Fleet {
    registry: Weak<FleetRegistry>,
    metrics: Weak<Metrics>,
}

impl Collector for Fleet {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (Some(registry), Some(metrics)) = (self.registry.upgrade(), self.metrics.upgrade())
        else {
            return Ok(());
        };
        let nodes = registry.status(Instant::now());
        let live = nodes.iter().filter(|n| n.live).count();
        let g = ConstGauge::new(live as i64);
        g.encode(encoder.encode_descriptor(
            "nodes_live",
            "Nodes in routing now",
            None,
            g.metric_type(),
        )?)?;
        let g = ConstGauge::new(nodes.len() as i64);
        g.encode(encoder.encode_descriptor(
            "nodes_known",
            "Nodes the gateway has heard from",
            None,
            g.metric_type(),
        )?)?;
        let ready = nodes
            .iter()
            .filter(|n| n.live)
            .flat_map(|n| &n.models)
            .filter(|m| m.state == pb::ModelState::Ready as i32)
            .count();
        let g = ConstGauge::new(ready as i64);
        g.encode(encoder.encode_descriptor(
            "models_ready",
            "Ready models on live nodes",
            None,
            g.metric_type(),
        )?)?;
        let queued: u64 = nodes
            .iter()
            .flat_map(|n| &n.models)
            .map(|m| u64::from(m.queue_depth))
            .sum();
        let g = ConstGauge::new(queued as i64);
        g.encode(encoder.encode_descriptor(
            "fleet_queue_depth",
            "Requests queued on agents, as last reported",
            None,
            g.metric_type(),
        )?)?;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        let c = ConstCounter::new(load(&metrics.reloads));
        c.encode(encoder.encode_descriptor(
            "policy_reloads",
            "Policy edits applied",
            None,
            c.metric_type(),
        )?)?;
        let c = ConstCounter::new(load(&metrics.reload_failures));
        c.encode(encoder.encode_descriptor(
            "policy_reload_failures",
            "Policy edits rejected (the policy in force stayed)",
            None,
            c.metric_type(),
        )?)?;
        edgewise_ops::metrics::encode_counts(&mut encoder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tenant name from a development header may hold quotes, backslashes or a line feed;
    /// the page stays well formed and the name reads back whole.
    #[test]
    fn outside_names_cannot_break_the_text_format() {
        let m = Metrics::new();
        let tenant = "shop\"} 1\nforged_total 99\\";
        m.external("openai", tenant, false, 0.5, (0, 0));
        let mut r = Registry::default();
        r.register("cost", "Cost", m.external_cost_usd.clone());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap_or_default();
        let families = edgewise_ops::metrics::openmetrics::parse(&text).unwrap_or_default();
        assert_eq!(families.len(), 1, "{text}");
        let labels = &families[0].samples[0].labels;
        assert!(
            labels.contains(&("tenant".to_string(), tenant.to_string())),
            "{text}"
        );
        assert!(!text.contains("\nforged_total"), "{text}");
    }
}
