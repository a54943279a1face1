//! The pure routing decision at fleet sizes of 10, 100 and 1,000 nodes with 10 models each
//! (`bench/run.sh decide`). Half the models are busy, so decisions exercise the spill path too.
//! `decide` is the decision alone; `decide_and_trace` adds what a response carries: the
//! trace worked out, its first entries formatted and the rest counted by reason.

use std::collections::BTreeMap;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use edgewise_gateway::routing::*;
use rand::SeedableRng;

fn fleet(nodes: usize) -> FleetSnapshot {
    let tasks = [
        Task::Generate,
        Task::Generate,
        Task::Generate,
        Task::Embed,
        Task::Classify,
    ];
    FleetSnapshot::new(
        (0..nodes)
            .map(|n| NodeView {
                id: format!("node-{n:05}"),
                addr: format!("http://10.0.{}.{}:7300", n / 256, n % 256),
                live: n % 17 != 0,
                models: (0..10)
                    .map(|m| ModelView {
                        name: format!("model-{m}"),
                        task: tasks[m % tasks.len()],
                        ready: true,
                        quality: 0.2 + 0.07 * m as f32,
                        parameters: 100_000_000 * (m as u64 + 1),
                        size_bytes: 50_000_000 * (m as u64 + 1),
                        context_length: 2048,
                        in_flight: ((n + m) % 4) as u32,
                        queue_depth: 0,
                        max_concurrency: 2,
                        max_queue: 8,
                        gateway_in_flight: 0,
                        ewma_latency_ms: 40.0,
                        ewma_time_per_output_token_ms: 15.0,
                        kv_room: true,
                        space: format!("space-{m}"),
                        dimensions: 384,
                    })
                    .collect(),
            })
            .collect(),
    )
}

fn policy() -> Policy {
    Policy {
        default_data_class: DataClass::Internal,
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
        },
    )]);
    let budgets = Budgets::default();
    let req = RouteRequest {
        tenant: "shop".into(),
        task: Task::Generate,
        data_class: None,
        min_quality: None,
        max_latency_ms: None,
        route: None,
        prompt_tokens: 40,
        prompt_tokens_max: 160,
        max_tokens: 128,
        exclude_nodes: vec![],
        larger_than: None,
        p_adequate: Vec::new(),
        ignore_eos: false,
        space: None,
    };
    let mut group = c.benchmark_group("decide");
    for nodes in [10, 100, 1000] {
        let fleet = fleet(nodes);
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
            |b, _| b.iter(|| decide(&inputs, &req, &mut rng)),
        );
    }
    group.finish();
    let mut group = c.benchmark_group("decide_and_trace");
    for nodes in [10, 100, 1000] {
        let fleet = fleet(nodes);
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
                    let d = decide(&inputs, &req, &mut rng);
                    let (mut shown, mut counted) = (Vec::new(), 0usize);
                    d.each_exclusion(&inputs, &req, |who, why| {
                        if shown.len() < 24 {
                            shown.push((who.candidate().to_string(), why.to_string()));
                        } else {
                            counted += usize::from(!why.kind().is_empty());
                        }
                    });
                    (d, shown, counted)
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
