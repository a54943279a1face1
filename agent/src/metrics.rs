//! The agent's Prometheus metrics, read from the models' live figures at each scrape:
//! requests, errors, refusals, tokens and batches (counters), requests running and queued and
//! readiness (gauges), request latency and time to first token (histograms), per model; for
//! generate models also K/V cache bytes and budget, decode steps and the rows they advanced;
//! residency: loads, evictions and unloads by reason, cold-load time, the memory budget.

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
        let counter = |f: &dyn Fn(&crate::stats::ModelStats) -> u64| {
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
        family(
            &mut encoder,
            "model_loads",
            "Loads of the model (at start, on demand, by an operator), by model",
            &slot_counter(&slots, &|s| s.loads_total.load(Ordering::Relaxed)),
        )?;
        family(
            &mut encoder,
            "model_evictions",
            "Unloads of the idle model to make room for another, by model",
            &slot_counter(&slots, &|s| s.evictions_total.load(Ordering::Relaxed)),
        )?;
        family(
            &mut encoder,
            "model_cold_load_milliseconds",
            "The model's last measured load time (files, session, smoke run), or an estimate before its first load",
            &gauge(&|s| i64::from(s.cold_ms.load(Ordering::Relaxed))),
        )?;
        family(
            &mut encoder,
            "model_budget_bytes",
            "What the model costs the memory budget when resident (measured resident bytes plus K/V budget)",
            &gauge(&|s| i64::try_from(s.cost()).unwrap_or(i64::MAX)),
        )?;
        let unloads: Vec<(Labels, ConstCounter)> = ["evicted", "idle", "operator"]
            .iter()
            .zip(&node.unloads_total)
            .map(|(why, n)| ([("reason", why.to_string())], ConstCounter::new(load(n))))
            .collect();
        family(
            &mut encoder,
            "model_unloads",
            "Models unloaded, by reason: evicted for room, idle past their keep-alive, by an operator",
            &unloads,
        )?;
        let memory = node.memory();
        for (name, help, value) in [
            (
                "memory_budget_bytes",
                "The memory budget for models (0: none)",
                memory.budget_bytes,
            ),
            (
                "memory_used_bytes",
                "What resident and loading models hold of the budget",
                memory.used_bytes,
            ),
        ] {
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        family(
            &mut encoder,
            "model_resident_bytes",
            "What loading the model added to the agent's resident memory (0 when not loaded)",
            &gauge(&|s| {
                s.ready().map_or(0, |(m, _)| {
                    i64::try_from(m.resident_bytes).unwrap_or(i64::MAX)
                })
            }),
        )?;
        // generate models' batch loops (loaded ones only)
        let loops: Vec<_> = slots
            .iter()
            .filter_map(|s| match s.ready() {
                Some((m, _)) => match &m.engine {
                    crate::models::Engine::Decoder(b) => Some((label(&s.name), b.stats.clone())),
                    crate::models::Engine::Encoder(_) => None,
                },
                None => None,
            })
            .collect();
        let per_loop_gauge = |f: &dyn Fn(&crate::batch::BatchStats) -> u64| {
            loops
                .iter()
                .map(|(l, b)| (l.clone(), ConstGauge::new(f(b) as i64)))
                .collect::<Vec<_>>()
        };
        let per_loop_counter = |f: &dyn Fn(&crate::batch::BatchStats) -> u64| {
            loops
                .iter()
                .map(|(l, b)| (l.clone(), ConstCounter::new(f(b))))
                .collect::<Vec<_>>()
        };
        family(
            &mut encoder,
            "kv_cache_bytes",
            "K/V cache memory held by a generate model's running sequences",
            &per_loop_gauge(&|b| load(&b.kv_bytes_in_use)),
        )?;
        family(
            &mut encoder,
            "kv_budget_bytes",
            "The most K/V cache memory a generate model's sequences may hold",
            &per_loop_gauge(&|b| load(&b.kv_budget_bytes)),
        )?;
        family(
            &mut encoder,
            "decode_steps",
            "Batched decode steps run, by model",
            &per_loop_counter(&|b| load(&b.decode_steps)),
        )?;
        family(
            &mut encoder,
            "decode_rows",
            "Sequences advanced by decode steps (÷ decode_steps = mean batch size), by model",
            &per_loop_counter(&|b| load(&b.decode_rows)),
        )?;
        family(
            &mut encoder,
            "kv_waits",
            "Sequences that waited because the K/V budget had no room, by model",
            &per_loop_counter(&|b| load(&b.kv_waits_total)),
        )?;
        let histograms = |f: &dyn Fn(
            &crate::stats::ModelStats,
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
        edgewise_ops::metrics::encode_counts(&mut encoder)
    }
}

fn slot_counter(
    slots: &[&Arc<crate::node::ModelSlot>],
    f: &dyn Fn(&crate::node::ModelSlot) -> u64,
) -> Vec<(Labels, ConstCounter)> {
    slots
        .iter()
        .map(|s| ([("model", s.name.clone())], ConstCounter::new(f(s))))
        .collect()
}

/// A registry with the node's metrics (held weakly: the node owns the registry's server).
pub fn registry(node: &Arc<Node>) -> Registry {
    let mut r = Registry::with_prefix("edgewise_agent");
    r.register_collector(Box::new(Models(Arc::downgrade(node))));
    r
}
