//! Unit and property tests of the pure decision core.

use std::collections::BTreeMap;

use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::*;

fn model(name: &str, task: Task, params: u64, quality: f32) -> ModelView {
    ModelView {
        quality,
        ..ModelView::idle(name, task, params)
    }
}

fn node(id: &str, models: Vec<ModelView>) -> NodeView {
    NodeView {
        id: id.into(),
        addr: format!("http://{id}:7300"),
        live: true,
        models,
    }
}

fn route(name: &str, spill: Spill, external: Option<ExternalRule>) -> Route {
    Route {
        name: name.into(),
        tenants: vec![],
        tasks: vec![],
        data_classes: vec![],
        min_quality: 0.3,
        latency_target_ms: None,
        spill,
        external,
        space: None,
        label_set: None,
        inference: Default::default(),
        adequacy: Adequacy::Static,
    }
}

fn ext(classes: &[DataClass], conditions: &[ExternalCondition], budget: f64) -> ExternalRule {
    ExternalRule {
        provider: "openai".into(),
        model: "gpt-x".into(),
        data_classes: classes.to_vec(),
        conditions: conditions.to_vec(),
        daily_budget_usd: budget,
        space: None,
    }
}

fn request(task: Task, class: DataClass) -> RouteRequest {
    RouteRequest {
        data_class: Some(class),
        ..RouteRequest::new("shop", task, 100, 100)
    }
}

fn prices() -> BTreeMap<String, ProviderView> {
    BTreeMap::from([(
        "openai".to_string(),
        ProviderView {
            price: ProviderPrice {
                input_per_million_usd: 1.0,
                output_per_million_usd: 2.0,
            },
            tasks: vec![Task::Generate, Task::Embed],
            default_max_tokens: 256,
            constraints: vec![OutputConstraint::JsonSchema, OutputConstraint::JsonObject],
        },
    )])
}

fn run(policy: &Policy, fleet: &FleetSnapshot, budgets: &Budgets, req: &RouteRequest) -> Decision {
    traced(policy, fleet, budgets, req).0
}

/// The decision and its trace, formatted.
fn traced(
    policy: &Policy,
    fleet: &FleetSnapshot,
    budgets: &Budgets,
    req: &RouteRequest,
) -> (Decision, Vec<Exclusion>) {
    let providers = prices();
    let inputs = Inputs {
        policy,
        fleet,
        providers: &providers,
        budgets,
    };
    let d = decide(&inputs, req, &mut ChaCha8Rng::seed_from_u64(1));
    let excluded = d.excluded(&inputs, req);
    (d, excluded)
}

fn two_lms() -> FleetSnapshot {
    FleetSnapshot::new(two_lm_nodes())
}

fn two_lm_nodes() -> Vec<NodeView> {
    vec![
        node(
            "a",
            vec![
                model("lm-small", Task::Generate, 135, 0.3),
                model("embed", Task::Embed, 22, 0.8),
            ],
        ),
        node("b", vec![model("lm-large", Task::Generate, 360, 0.5)]),
    ]
}

fn policy(routes: Vec<Route>) -> Policy {
    Policy {
        default_data_class: DataClass::Internal,
        floors: Default::default(),
        routes,
    }
}

fn local_model(d: &Decision) -> Option<&str> {
    match &d.outcome {
        Ok(Target::Local { model, .. }) => Some(model),
        _ => None,
    }
}

#[test]
fn chooses_the_smallest_adequate_model() {
    let p = policy(vec![route("default", Spill::Larger, None)]);
    let (d, excluded) = traced(
        &p,
        &two_lms(),
        &Budgets::default(),
        &request(Task::Generate, DataClass::Internal),
    );
    assert_eq!(local_model(&d), Some("lm-small"));
    assert_eq!(d.rule, Rule::Smallest);
    assert_eq!(d.route, "default");
    assert!(
        excluded
            .iter()
            .any(|e| e.candidate.to_string() == "b/lm-large")
    );
    // a higher quality floor skips it, and says why
    let mut req = request(Task::Generate, DataClass::Internal);
    req.min_quality = Some(0.4);
    let (d, excluded) = traced(&p, &two_lms(), &Budgets::default(), &req);
    assert_eq!(local_model(&d), Some("lm-large"));
    let why = excluded
        .iter()
        .find(|e| e.candidate.to_string() == "a/lm-small")
        .map(|e| e.reason.as_str());
    assert_eq!(why, Some("quality 0.3 is below the required 0.4"));
}

#[test]
fn a_saturated_smallest_model_spills_by_the_route_rule() {
    let mut nodes = two_lm_nodes();
    nodes[0].models[0].in_flight = 2;
    let fleet = FleetSnapshot::new(nodes);
    let req = request(Task::Generate, DataClass::Internal);
    let d = run(
        &policy(vec![route("r", Spill::Larger, None)]),
        &fleet,
        &Budgets::default(),
        &req,
    );
    assert_eq!(
        (local_model(&d), d.rule.as_str()),
        (Some("lm-large"), "spill: larger")
    );
    let d = run(
        &policy(vec![route("r", Spill::Wait, None)]),
        &fleet,
        &Budgets::default(),
        &req,
    );
    assert_eq!(
        (local_model(&d), d.rule.as_str()),
        (Some("lm-small"), "spill: wait")
    );
    let d = run(
        &policy(vec![route("r", Spill::External, None)]),
        &fleet,
        &Budgets::default(),
        &req,
    );
    assert_eq!(
        d.outcome,
        Err(Refusal::NoCapacity(
            "route `r`: every adequate local generate model is at capacity (spill: external) and the route allows no external provider"
                .into()
        ))
    );
    // the gateway's own in-flight count counts before the next report does
    let mut nodes = two_lm_nodes();
    nodes[0].models[0].gateway_in_flight = 2;
    let fleet = FleetSnapshot::new(nodes);
    let d = run(
        &policy(vec![route("r", Spill::Larger, None)]),
        &fleet,
        &Budgets::default(),
        &req,
    );
    assert_eq!(local_model(&d), Some("lm-large"));
}

#[test]
fn confidential_data_never_leaves_unless_a_route_names_it() {
    let fleet = FleetSnapshot::default();
    let all = [
        ExternalCondition::NoAdequateLocal,
        ExternalCondition::NoLocalCapacity,
    ];
    let p = policy(vec![route(
        "r",
        Spill::External,
        Some(ext(&[DataClass::Public, DataClass::Internal], &all, 10.0)),
    )]);
    let d = run(
        &p,
        &fleet,
        &Budgets::default(),
        &request(Task::Generate, DataClass::Confidential),
    );
    assert_eq!(
        d.outcome,
        Err(Refusal::Forbidden(
            "route `r`: no adequate local generate model (quality >= 0.3, context >= 200) and external provider `openai` is not permitted for confidential data".into()
        ))
    );
    let d = run(
        &p,
        &fleet,
        &Budgets::default(),
        &request(Task::Generate, DataClass::Internal),
    );
    assert_eq!(d.rule, Rule::External(ExternalCondition::NoAdequateLocal));
    assert!(matches!(d.outcome, Ok(Target::External { ref provider, .. }) if provider == "openai"));
}

#[test]
fn the_budget_bounds_external_calls() {
    let p = policy(vec![route(
        "r",
        Spill::External,
        Some(ext(
            &[DataClass::Internal],
            &[ExternalCondition::NoAdequateLocal],
            0.001,
        )),
    )]);
    let req = request(Task::Generate, DataClass::Internal); // worst case 100*1 + 100*2 per million = $0.0003
    let mut budgets = Budgets::default();
    assert!(
        run(&p, &FleetSnapshot::default(), &budgets, &req)
            .outcome
            .is_ok()
    );
    budgets
        .spent_usd
        .insert(("shop".into(), "openai".into()), 0.0008);
    let d = run(&p, &FleetSnapshot::default(), &budgets, &req);
    assert!(
        matches!(&d.outcome, Err(Refusal::OverBudget(m)) if m.contains("has $0.0002 of its $0.001 daily budget")),
        "{d:?}"
    );
}

#[test]
fn no_route_and_excluded_nodes() {
    let mut r = route("only-embed", Spill::Larger, None);
    r.tasks = vec![Task::Embed];
    let p = policy(vec![r]);
    let d = run(
        &p,
        &two_lms(),
        &Budgets::default(),
        &request(Task::Generate, DataClass::Public),
    );
    assert_eq!(
        d.outcome,
        Err(Refusal::NoAdequateModel(
            "no route matches tenant `shop`, task generate, data class public".into()
        ))
    );
    let p = policy(vec![route("r", Spill::Larger, None)]);
    let mut req = request(Task::Generate, DataClass::Public);
    req.exclude_nodes = vec!["a".into()];
    let d = run(&p, &two_lms(), &Budgets::default(), &req);
    assert_eq!(local_model(&d), Some("lm-large"));
}

#[test]
fn a_tenant_outside_a_routes_list_is_forbidden_not_unrouted() {
    let mut r = route("billing-only", Spill::Larger, None);
    r.tenants = vec!["billing".into()];
    let p = policy(vec![r]);
    let d = run(
        &p,
        &two_lms(),
        &Budgets::default(),
        &request(Task::Generate, DataClass::Public),
    );
    assert_eq!(d.route, "billing-only");
    assert_eq!(
        d.outcome,
        Err(Refusal::Forbidden(
            "tenant `shop` may not use route `billing-only` (it serves `billing`)".into()
        ))
    );
    // the listed tenant is served
    let mut req = request(Task::Generate, DataClass::Public);
    req.tenant = "billing".into();
    let d = run(&p, &two_lms(), &Budgets::default(), &req);
    assert_eq!(local_model(&d), Some("lm-small"));
}

fn arb_model() -> impl Strategy<Value = ModelView> {
    (
        0u8..3,
        1u64..1000,
        0u8..=10,
        0u32..4,
        1u32..4,
        any::<bool>(),
        1u32..4096,
    )
        .prop_map(|(t, params, q, in_flight, max_concurrency, ready, ctx)| {
            let task = [Task::Generate, Task::Embed, Task::Classify][t as usize];
            ModelView {
                name: format!("m{params}"),
                task,
                ready,
                // a third of the models not resident (their load takes up to a second)
                cold_ms: if params % 3 == 0 {
                    (params % 1000) as u32 + 1
                } else {
                    0
                },
                quality: f32::from(q) / 10.0,
                parameters: params,
                size_bytes: params * 2,
                context_length: ctx,
                in_flight,
                queue_depth: 0,
                max_concurrency,
                max_queue: 2,
                gateway_in_flight: 0,
                ewma_latency_ms: 0.0,
                ewma_time_per_output_token_ms: 0.0,
                kv_room: true,
                space: String::new(),
                dimensions: 0,
                constraints: task == Task::Generate,
                tools: task == Task::Generate,
            }
        })
}

fn arb_fleet() -> impl Strategy<Value = FleetSnapshot> {
    prop::collection::vec(
        (prop::collection::vec(arb_model(), 0..4), any::<bool>()),
        0..5,
    )
    .prop_map(|nodes| {
        FleetSnapshot::new(
            nodes
                .into_iter()
                .enumerate()
                .map(|(i, (mut models, live))| {
                    // an agent's models are a table keyed by name: one entry per name on a node
                    let mut seen = std::collections::BTreeSet::new();
                    models.retain(|m| seen.insert(m.name.clone()));
                    NodeView {
                        id: format!("n{i}"),
                        addr: String::new(),
                        live,
                        models,
                    }
                })
                .collect(),
        )
    })
}

fn arb_class() -> impl Strategy<Value = DataClass> {
    prop::sample::select(DataClass::ALL.to_vec())
}

/// Fixed seeds: a run is reproducible, and CI explores what a developer's run explored.
fn seeded(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x6564_6765),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(seeded(512))]
    /// Sensitive data goes external only through a route whose external block names its class.
    #[test]
    fn sensitive_data_goes_external_only_when_named(
        fleet in arb_fleet(),
        class in arb_class(),
        allowed in prop::collection::vec(arb_class(), 0..4),
        spill in prop::sample::select(vec![Spill::Larger, Spill::Wait, Spill::External]),
        seed in any::<u64>(),
    ) {
        let all = [ExternalCondition::NoAdequateLocal, ExternalCondition::NoLocalCapacity];
        let p = policy(vec![route("r", spill, Some(ext(&allowed, &all, 1e9)))]);
        let providers = prices();
        let budgets = Budgets::default();
        let inputs = Inputs { policy: &p, fleet: &fleet, providers: &providers, budgets: &budgets };
        let d = decide(&inputs, &request(Task::Generate, class), &mut ChaCha8Rng::seed_from_u64(seed));
        if let Ok(Target::External { .. }) = d.outcome {
            prop_assert!(allowed.contains(&class));
        }
    }

    /// A cascade: every step after the first decides with `larger_than` the last answer's
    /// size. Whatever the fleet and however many steps, sensitive data never reaches the
    /// hosted model unless the route names its class, and a step never picks a model no
    /// larger than the one before.
    #[test]
    fn a_cascade_never_sends_sensitive_data_out_and_only_climbs(
        fleet in arb_fleet(),
        class in arb_class(),
        allowed in prop::collection::vec(arb_class(), 0..4),
        seed in any::<u64>(),
    ) {
        let all = [ExternalCondition::NoAdequateLocal, ExternalCondition::NoLocalCapacity];
        let mut r = route("r", Spill::Larger, Some(ext(&allowed, &all, 1e9)));
        r.adequacy = Adequacy::Cascade(Cascade { signal: Signal::P10Logprob, threshold: -1.0, max_tokens: 64, per_model: Vec::new(), skip: Vec::new(), calibrated: None });
        let p = policy(vec![r]);
        let providers = prices();
        let budgets = Budgets::default();
        let inputs = Inputs { policy: &p, fleet: &fleet, providers: &providers, budgets: &budgets };
        let mut req = request(Task::Generate, class);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        // escalate as if every answer were below the threshold, until nothing larger answers
        for _ in 0..16 {
            let d = decide(&inputs, &req, &mut rng);
            match d.outcome {
                Ok(Target::Local { node, model, .. }) => {
                    let m = fleet.nodes().iter().find(|n| n.id == node).and_then(|n| n.models.iter().find(|m| m.name == model)).unwrap();
                    prop_assert!(req.larger_than.is_none_or(|p| m.parameters > p), "{:?} after {:?}", m, req.larger_than);
                    req.larger_than = Some(m.parameters);
                }
                Ok(Target::External { .. }) => {
                    prop_assert!(allowed.contains(&class));
                    break;
                }
                Err(_) => break,
            }
        }
    }

    /// A local choice is adequate, has a free slot (or the route waits), and no smaller
    /// adequate model had a free slot.
    #[test]
    fn the_choice_is_the_smallest_adequate_with_capacity(fleet in arb_fleet(), q in 0u8..=10, seed in any::<u64>()) {
        let mut r = route("r", Spill::Larger, None);
        r.min_quality = f32::from(q) / 10.0;
        let p = policy(vec![r]);
        let providers = prices();
        let budgets = Budgets::default();
        let inputs = Inputs { policy: &p, fleet: &fleet, providers: &providers, budgets: &budgets };
        let req = request(Task::Generate, DataClass::Internal);
        let d = decide(&inputs, &req, &mut ChaCha8Rng::seed_from_u64(seed));
        let adequate = |n: &NodeView, m: &ModelView| n.live && m.ready && m.task == Task::Generate
            && m.quality >= f32::from(q) / 10.0 && u64::from(m.context_length) >= 200;
        if let Ok(Target::Local { node, model, .. }) = &d.outcome {
            let n = fleet.nodes().iter().find(|n| &n.id == node).unwrap();
            let m = n.models.iter().find(|m| &m.name == model).unwrap();
            prop_assert!(adequate(n, m) && m.has_free_slot());
            for n2 in fleet.nodes() {
                for m2 in &n2.models {
                    if adequate(n2, m2) && m2.has_free_slot() {
                        prop_assert!((m.parameters, m.size_bytes) <= (m2.parameters, m2.size_bytes));
                    }
                }
            }
        } else {
            // nothing local was chosen: then no adequate model had a free slot
            let any_free = fleet.nodes().iter().any(|n| n.models.iter().any(|m| adequate(n, m) && m.has_free_slot()));
            prop_assert!(!any_free, "{:?}", d);
        }
    }
}

/// The number in a listing's "… N more candidates" line.
fn rest_of(l: &Listing) -> usize {
    l.rest.as_ref().map_or(0, |r| {
        r.candidate
            .trim_start_matches("… ")
            .trim_end_matches(" more candidates")
            .parse()
            .unwrap_or_else(|e| panic!("{r:?}: {e}"))
    })
}

#[test]
fn a_served_response_counts_the_rest_per_rung_and_explain_judges_each_node() {
    // three rungs: small (adequate, on 30 nodes, 10 of them down), large (on 30), and one
    // below the quality floor (on 30)
    let nodes: Vec<NodeView> = (0..30)
        .map(|i| {
            let mut n = node(
                &format!("n{i:02}"),
                vec![
                    model("weak", Task::Generate, 50, 0.1),
                    model("small", Task::Generate, 135, 0.5),
                    model("large", Task::Generate, 360, 0.6),
                ],
            );
            n.live = i % 3 != 0;
            n
        })
        .collect();
    let fleet = FleetSnapshot::new(nodes);
    let p = policy(vec![route("r", Spill::Larger, None)]);
    let providers = prices();
    let budgets = Budgets::default();
    let inputs = Inputs {
        policy: &p,
        fleet: &fleet,
        providers: &providers,
        budgets: &budgets,
    };
    let req = request(Task::Generate, DataClass::Internal);
    let d = decide(&inputs, &req, &mut ChaCha8Rng::seed_from_u64(3));
    assert_eq!(local_model(&d), Some("small"));
    let response = d.listing(&inputs, &req, 10, Detail::Response);
    assert_eq!(response.shown.len(), 10);
    // the weak rung comes first, whole
    assert!(
        response
            .shown
            .iter()
            .all(|l| l.reason.contains("quality 0.1")),
        "{response:?}"
    );
    assert_eq!(
        response.rest,
        Some(Listed {
            candidate: "… 79 more candidates".into(),
            reason: format!(
                "30 × a smaller adequate model was chosen; 29 × {}; 20 × quality below the floor",
                listing::UNJUDGED
            ),
        })
    );
    let explain = d.listing(&inputs, &req, 10, Detail::Explain);
    assert_eq!(explain.shown, response.shown);
    let reason = explain.rest.map(|r| r.reason).unwrap_or_default();
    // the down nodes of the small and large rungs are named for what they are
    assert!(reason.contains("20 × node is not live"), "{reason}");
    assert!(
        reason.contains("20 × a smaller adequate model was chosen"),
        "{reason}"
    );
}

proptest! {
    #![proptest_config(seeded(256))]
    /// Whatever the fleet and the detail, a listing accounts for every candidate the decision
    /// passed over once: its first lines are the trace's first, the hosted model is listed
    /// when it was passed over, and the rest's count is what is left.
    #[test]
    fn a_listing_accounts_for_every_exclusion_once(
        fleet in arb_fleet(),
        class in arb_class(),
        max in 0usize..12,
        seed in any::<u64>(),
    ) {
        let all = [ExternalCondition::NoAdequateLocal, ExternalCondition::NoLocalCapacity];
        let p = policy(vec![route("r", Spill::Larger, Some(ext(&[DataClass::Public], &all, 1e9)))]);
        let providers = prices();
        let budgets = Budgets::default();
        let inputs = Inputs { policy: &p, fleet: &fleet, providers: &providers, budgets: &budgets };
        let req = request(Task::Generate, class);
        let d = decide(&inputs, &req, &mut ChaCha8Rng::seed_from_u64(seed));
        let every = d.excluded(&inputs, &req);
        let (external, local): (Vec<_>, Vec<_>) = every.iter().partition(|e| matches!(e.candidate, Candidate::External { .. }));
        for detail in [Detail::Response, Detail::Explain] {
            let l = d.listing(&inputs, &req, max, detail);
            prop_assert_eq!(l.external.is_some(), !external.is_empty());
            prop_assert!(l.shown.len() + usize::from(l.external.is_some()) <= max.max(1));
            for (shown, e) in l.shown.iter().zip(&local) {
                prop_assert_eq!(&shown.candidate, &e.candidate.to_string());
                prop_assert_eq!(&shown.reason, &e.reason);
            }
            prop_assert_eq!(l.shown.len() + rest_of(&l), local.len(), "{:?}", l);
        }
    }
}

fn with_findings(mut req: RouteRequest, found: &[(&'static str, Category)]) -> RouteRequest {
    req.findings.detections = found
        .iter()
        .map(|&(detector, category)| Detection {
            detector,
            category,
            count: 1,
        })
        .collect();
    req
}

#[test]
fn what_the_text_holds_raises_the_class_where_the_route_enforces_it() {
    let all = [ExternalCondition::NoAdequateLocal];
    // no local model good enough: only the hosted one, for public data
    let mut r = route(
        "r",
        Spill::Larger,
        Some(ext(&[DataClass::Public], &all, 1e9)),
    );
    r.min_quality = 0.99;
    let req = with_findings(
        request(Task::Generate, DataClass::Public),
        &[("payment-card", Category::Card)],
    );
    let (d, excluded) = traced(
        &policy(vec![r.clone()]),
        &two_lms(),
        &Budgets::default(),
        &req,
    );
    assert_eq!(
        (d.declared, d.data_class),
        (DataClass::Public, DataClass::Confidential)
    );
    assert_eq!(d.inferred, Some(DataClass::Confidential));
    assert!(
        matches!(d.outcome, Err(Refusal::Forbidden(_))),
        "{:?}",
        d.outcome
    );
    let why = excluded
        .iter()
        .find(|e| matches!(e.candidate, Candidate::External { .. }))
        .map(|e| e.reason.clone())
        .unwrap_or_default();
    assert!(
        why.contains("declared public; raised by what the request's text holds"),
        "{why}"
    );

    // report: recorded, not acted on; off: not even recorded
    r.inference = InferenceMode::Report;
    let d = run(
        &policy(vec![r.clone()]),
        &two_lms(),
        &Budgets::default(),
        &req,
    );
    assert_eq!(
        (d.data_class, d.inferred),
        (DataClass::Public, Some(DataClass::Confidential))
    );
    assert!(matches!(d.outcome, Ok(Target::External { .. })));
    r.inference = InferenceMode::Off;
    let d = run(&policy(vec![r]), &two_lms(), &Budgets::default(), &req);
    assert_eq!((d.data_class, d.inferred), (DataClass::Public, None));

    // an email sets internal, which this route does not send out either; a policy may lower it
    let mut r = route(
        "r",
        Spill::Larger,
        Some(ext(&[DataClass::Public], &all, 1e9)),
    );
    r.min_quality = 0.99;
    let email = with_findings(
        request(Task::Generate, DataClass::Public),
        &[("email", Category::Email)],
    );
    let mut p = policy(vec![r]);
    assert_eq!(
        run(&p, &two_lms(), &Budgets::default(), &email).data_class,
        DataClass::Internal
    );
    p.floors.floors.insert("email".into(), DataClass::Public);
    assert!(matches!(
        run(&p, &two_lms(), &Budgets::default(), &email).outcome,
        Ok(Target::External { .. })
    ));
    // an unfinished scan is restricted
    let mut incomplete = request(Task::Generate, DataClass::Public);
    incomplete.findings.incomplete = true;
    assert_eq!(
        run(&p, &two_lms(), &Budgets::default(), &incomplete).data_class,
        DataClass::Restricted
    );
}

fn arb_category() -> impl Strategy<Value = Category> {
    prop::sample::select(Category::ALL.to_vec())
}

proptest! {
    #![proptest_config(seeded(256))]
    /// Whatever the declared class, the findings, the floors (a policy may set any) and the
    /// route's mode, the class decided with is never below the declared one, and under
    /// `enforce` never below any finding's floor.
    #[test]
    fn inference_never_lowers_a_class(
        fleet in arb_fleet(),
        declared in arb_class(),
        found in prop::collection::vec(arb_category(), 0..4),
        floors in prop::collection::vec((arb_category(), arb_class()), 0..4),
        mode in prop::sample::select(vec![InferenceMode::Enforce, InferenceMode::Report, InferenceMode::Off]),
        incomplete in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let all = [ExternalCondition::NoAdequateLocal, ExternalCondition::NoLocalCapacity];
        let mut r = route("r", Spill::Larger, Some(ext(&[DataClass::Public, DataClass::Internal], &all, 1e9)));
        r.inference = mode;
        let mut p = policy(vec![r]);
        for (c, f) in &floors {
            p.floors.floors.insert(c.as_str().into(), *f);
        }
        let mut req = request(Task::Generate, declared);
        req.findings = Findings {
            detections: found.iter().map(|&category| Detection { detector: "x", category, count: 1 }).collect(),
            incomplete,
        };
        let providers = prices();
        let budgets = Budgets::default();
        let inputs = Inputs { policy: &p, fleet: &fleet, providers: &providers, budgets: &budgets };
        let d = decide(&inputs, &req, &mut ChaCha8Rng::seed_from_u64(seed));
        prop_assert!(d.data_class >= declared);
        if mode == InferenceMode::Enforce {
            if let Some(i) = p.floors.inferred("shop", &req.findings) {
                prop_assert!(d.data_class >= i);
            }
            if let Ok(Target::External { .. }) = d.outcome {
                prop_assert!(d.data_class <= DataClass::Internal);
            }
        }
    }
}
