//! The agent's Prometheus metrics, read from the models' live figures at each scrape:
//! requests, errors, refusals, tokens and batches (counters), requests running and queued and
//! readiness (gauges), request latency and time to first token (histograms), per model.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::node::Node;

#[derive(Debug)]
struct Models(Weak<Node>);

type Labels = [(&'static str, String); 1];

fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, M)],
) -> Result<(), std::fmt::Error> {
    let Some((_, first)) = rows.first() else {
        return Ok(());
    };
    let mut m = encoder.encode_descriptor(name, help, None, first.metric_type())?;
    for (labels, metric) in rows {
        metric.encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for Models {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(node) = self.0.upgrade() else {
            return Ok(());
        };
        let slots: Vec<_> = node.slots.values().collect();
        let label = |name: &str| [("model", name.to_string())];
        let counter = |f: &dyn Fn(&crate::scheduler::ModelStats) -> u64| {
            slots
                .iter()
                .map(|s| (label(&s.name), ConstCounter::new(f(&s.stats))))
                .collect::<Vec<_>>()
        };
        let gauge = |f: &dyn Fn(&crate::node::ModelSlot) -> i64| {
            slots
                .iter()
                .map(|s| (label(&s.name), ConstGauge::new(f(s))))
                .collect::<Vec<_>>()
        };
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        family(
            &mut encoder,
            "requests",
            "Requests served (finished), by model",
            &counter(&|s| load(&s.requests_total)),
        )?;
        family(
            &mut encoder,
            "errors",
            "Requests that failed in inference, by model",
            &counter(&|s| load(&s.errors_total)),
        )?;
        family(
            &mut encoder,
            "rejected",
            "Requests refused because the model's queue was full",
            &counter(&|s| load(&s.rejected_total)),
        )?;
        family(
            &mut encoder,
            "cancelled",
            "Generations stopped because the caller left or the deadline passed",
            &counter(&|s| load(&s.cancelled_total)),
        )?;
        family(
            &mut encoder,
            "tokens_generated",
            "Tokens generated, by model",
            &counter(&|s| load(&s.tokens_generated_total)),
        )?;
        family(
            &mut encoder,
            "batches",
            "ONNX Runtime runs of the encoder batcher, by model",
            &counter(&|s| load(&s.batches_total)),
        )?;
        family(
            &mut encoder,
            "in_flight",
            "Requests running now, by model",
            &gauge(&|s| i64::from(s.stats.in_flight.load(Ordering::Relaxed))),
        )?;
        family(
            &mut encoder,
            "queue_depth",
            "Requests admitted and waiting for a slot, by model",
            &gauge(&|s| i64::from(s.stats.queued.load(Ordering::Relaxed))),
        )?;
        family(
            &mut encoder,
            "model_ready",
            "1 when the model is loaded and serving",
            &gauge(&|s| i64::from(s.ready().is_some())),
        )?;
        let histograms = |f: &dyn Fn(
            &crate::scheduler::ModelStats,
        )
            -> &prometheus_client::metrics::histogram::Histogram| {
            slots
                .iter()
                .map(|s| (label(&s.name), f(&s.stats).clone()))
                .collect::<Vec<_>>()
        };
        family(
            &mut encoder,
            "request_duration_seconds",
            "Request latency from arrival to the last byte, by model",
            &histograms(&|s| &s.latency),
        )?;
        family(
            &mut encoder,
            "time_to_first_token_seconds",
            "Generation time from arrival to the first token, by model",
            &histograms(&|s| &s.time_to_first_token),
        )?;
        edgewise_ops::telemetry::encode_counts(&mut encoder)
    }
}

/// A registry with the node's metrics (held weakly: the node owns the registry's server).
pub fn registry(node: &Arc<Node>) -> Registry {
    let mut r = Registry::with_prefix("edgewise_agent");
    r.register_collector(Box::new(Models(Arc::downgrade(node))));
    r
}
