//! The pure routing decision at fleet sizes of 10, 100 and 1,000 nodes with 10 models each
//! (`bench/run.sh decide`). Half the models are busy, so decisions exercise the spill path too.
//! `decide` is the decision alone; `decide_and_trace` adds what a response carries: the
//! trace worked out, its first entries formatted and the rest counted.
//! `served_mixed` is what a served request pays on a less uniform fleet: the decision and its
//! trace where models differ per node (three model sets over 20 names) and half the nodes are
//! full (every slot and queue place taken).

use std::collections::BTreeMap;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use edgewise_gateway::dispatch::MAX_EXCLUDED;
use edgewise_gateway::routing::*;
use rand::SeedableRng;

/// Model `k` of the benchmark's catalogue (three generate models in every five, sizes and
/// quality growing with `k`), with `in_flight` of its 2 slots and `queued` of its 8 places taken.
fn model(k: usize, scale: (f32, u64), in_flight: u32, queued: u32) -> ModelView {
    const TASKS: [Task; 5] = [
        Task::Generate,
        Task::Generate,
        Task::Generate,
        Task::Embed,
        Task::Classify,
    ];
    let (quality_step, parameters_step) = scale;
    ModelView {
        name: format!("model-{k}"),
        task: TASKS[k % TASKS.len()],
        ready: true,
        cold_ms: 0,
        quality: 0.2 + quality_step * k as f32,
        parameters: parameters_step * (k as u64 + 1),
        size_bytes: parameters_step / 2 * (k as u64 + 1),
        context_length: 2048,
        in_flight,
        queue_depth: queued,
        max_concurrency: 2,
        max_queue: 8,
        gateway_in_flight: 0,
        ewma_latency_ms: 40.0,
        ewma_time_per_output_token_ms: 15.0,
        kv_room: queued < 8,
        space: format!("space-{k}"),
        dimensions: 384,
        constraints: true,
        tools: true,
    }
}

/// Every node with the same ten models, about half of them busy; one node in 17 down.
fn fleet(nodes: usize) -> FleetSnapshot {
    FleetSnapshot::new(
        (0..nodes)
            .map(|n| NodeView {
                id: format!("node-{n:05}"),
                addr: format!("http://10.0.{}.{}:7300", n / 256, n % 256),
                live: n % 17 != 0,
                models: (0..10)
                    .map(|m| model(m, (0.07, 100_000_000), ((n + m) % 4) as u32, 0))
                    .collect(),
            })
            .collect(),
    )
}

/// Nodes with one of three model sets (20 names in all); the even nodes full.
fn mixed_fleet(nodes: usize) -> FleetSnapshot {
    FleetSnapshot::new(
        (0..nodes)
            .map(|n| {
                let (busy, queued) = if n % 2 == 0 { (2, 8) } else { (0, 0) };
                NodeView {
                    id: format!("node-{n:05}"),
                    addr: format!("http://10.1.{}.{}:7300", n / 256, n % 256),
                    live: true,
                    models: (0..10)
                        .map(|m| model(m + 5 * (n % 3), (0.035, 50_000_000), busy, queued))
                        .collect(),
                }
            })
            .collect(),
    )
}

/// A fleet of `n` nodes.
type MakeFleet = fn(usize) -> FleetSnapshot;

/// What a served request pays: the decision, then the trace its response carries (the
/// gateway's own `listing`: the first exclusions formatted, the rest counted).
fn decide_and_trace(
    inputs: &Inputs<'_>,
    req: &RouteRequest,
    rng: &mut rand_chacha::ChaCha8Rng,
) -> (Decision, Listing) {
    let d = decide(inputs, req, rng);
    let listing = d.listing(inputs, req, MAX_EXCLUDED, Detail::Response);
    (d, listing)
}

fn policy() -> Policy {
    Policy {
        default_data_class: DataClass::Internal,
        floors: Default::default(),
        routes: vec![Route {
            name: "chat".into(),
            tenants: vec![],
            tasks: vec![],
            data_classes: vec![],
            min_quality: 0.3,
            latency_target_ms: Some(5000),
            adequacy: Default::default(),
            spill: Spill::Larger,
            external: Some(ExternalRule {
                provider: "openai".into(),
                model: "gpt-4o-mini".into(),
                data_classes: vec![DataClass::Public, DataClass::Internal],
                conditions: vec![
                    ExternalCondition::NoAdequateLocal,
                    ExternalCondition::NoLocalCapacity,
                ],
                daily_budget_usd: 5.0,
                space: None,
            }),
            space: None,
            label_set: None,
            inference: Default::default(),
        }],
    }
}

fn bench(c: &mut Criterion) {
    let policy = policy();
    let providers = BTreeMap::from([(
        "openai".to_string(),
        ProviderView {
            price: ProviderPrice {
                input_per_million_usd: 0.15,
                output_per_million_usd: 0.6,
            },
            tasks: vec![Task::Generate, Task::Embed],
            default_max_tokens: 256,
            constraints: vec![OutputConstraint::JsonSchema, OutputConstraint::JsonObject],
        },
    )]);
    let budgets = Budgets::default();
    let req = RouteRequest {
        prompt_tokens_max: 160,
        ..RouteRequest::new("shop", Task::Generate, 40, 128)
    };
    // (group, fleet, whether the response trace is built too)
    let groups: [(&str, MakeFleet, bool); 3] = [
        ("decide", fleet, false),
        ("decide_and_trace", fleet, true),
        ("served_mixed", mixed_fleet, true),
    ];
    for (name, make, trace) in groups {
        let mut group = c.benchmark_group(name);
        for nodes in [10, 100, 1000] {
            let fleet = make(nodes);
            let inputs = Inputs {
                policy: &policy,
                fleet: &fleet,
                providers: &providers,
                budgets: &budgets,
            };
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
            group.bench_with_input(
                BenchmarkId::new("nodes_x10_models", nodes),
                &nodes,
                |b, _| {
                    b.iter(|| {
                        if trace {
                            std::hint::black_box(decide_and_trace(&inputs, &req, &mut rng));
                        } else {
                            std::hint::black_box(decide(&inputs, &req, &mut rng));
                        }
                    })
                },
            );
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
