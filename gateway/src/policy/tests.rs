use std::path::PathBuf;

use super::*;
use crate::routing::{ExternalCondition, Spill};

fn check(files: &[(&str, &str)]) -> Result<Policy, String> {
    let files: Vec<(PathBuf, String)> = files
        .iter()
        .map(|(n, t)| (PathBuf::from(n), t.to_string()))
        .collect();
    parse(&files).map_err(|d| d.to_string())
}

#[test]
fn the_shipped_default_policy_is_valid() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let p = load(&[root]).map_err(|d| d.to_string());
    let p = p.as_ref().map_err(String::as_str);
    assert!(p.is_ok(), "{p:?}");
    let p = p.unwrap_or_else(|_| unreachable!());
    assert_eq!(p.routes.len(), 2);
    let report = confidentiality_report(p);
    let by_class = |c: DataClass| {
        report
            .iter()
            .find(|(k, _)| *k == c)
            .map(|(_, v)| v.len())
            .unwrap_or(99)
    };
    assert_eq!(by_class(DataClass::Confidential), 0);
    assert_eq!(by_class(DataClass::Restricted), 0);
    assert_eq!(by_class(DataClass::Internal), 1);
}

#[test]
fn parses_a_route_with_an_external_block() -> Result<(), String> {
    let p = check(&[(
        "p.yaml",
        "default_data_class: public\nroutes:\n  - name: r\n    match: {tasks: [generate], tenants: [shop]}\n    min_quality: 0.4\n    spill: external\n    external:\n      allowed: true\n      provider: openai\n      model: m\n      data_classes: [public, confidential]\n      when: [no_local_capacity]\n      daily_budget_usd: 2.5\n",
    )])?;
    assert_eq!(p.default_data_class, DataClass::Public);
    let r = &p.routes[0];
    assert_eq!(
        (r.spill, r.min_quality, r.tenants.clone()),
        (Spill::External, 0.4, vec!["shop".to_string()])
    );
    let e = r.external.as_ref().map(|e| {
        (
            e.data_classes.clone(),
            e.conditions.clone(),
            e.daily_budget_usd,
        )
    });
    assert_eq!(
        e,
        Some((
            vec![DataClass::Public, DataClass::Confidential],
            vec![ExternalCondition::NoLocalCapacity],
            2.5
        ))
    );
    Ok(())
}

#[test]
fn every_problem_is_reported_with_file_line_and_column() {
    let err = check(&[
        (
            "policies/a.yaml",
            "routes:\n  - name: r1\n    match:\n      tasks: [generate, dance]\n      data_classes: [secret]\n    min_quality: 1.5\n    spill: sideways\n    external:\n      allowed: true\n      provider: openai\n      data_classes: [public]\n      when: [always]\n      daily_budget_usd: -1\n",
        ),
        ("policies/b.yaml", "default_data_class: internal\nroutes:\n  - name: r1\n    spill: external\n"),
    ])
    .err();
    assert_eq!(
        err.as_deref(),
        Some(
            "policies/a.yaml:4:25: routes[0].match.tasks[1]: `dance` is not a task (generate, embed, classify)\n\
             policies/a.yaml:5:22: routes[0].match.data_classes[0]: `secret` is not a data class (public, internal, confidential, restricted)\n\
             policies/a.yaml:6:18: routes[0].min_quality: 1.5 must be in 0..=1\n\
             policies/a.yaml:7:12: routes[0].spill: `sideways` is not one of larger, wait, external\n\
             policies/a.yaml:9:14: routes[0].external.model: is required when allowed: true\n\
             policies/a.yaml:12:14: routes[0].external.when[0]: `always` is not one of no_adequate_local, no_local_capacity\n\
             policies/a.yaml:13:25: routes[0].external.daily_budget_usd: -1 must be a non-negative amount\n\
             policies/b.yaml:3:11: routes[0].name: route `r1` is already defined in policies/a.yaml\n\
             policies/b.yaml:4:12: routes[0].spill: `external` needs an allowed external block"
        )
    );
}

#[test]
fn syntax_and_shape_errors_are_located() {
    let err = check(&[("p.yaml", "routes:\n  - name: r\n    min_qualty: 0.3\n")])
        .err()
        .unwrap_or_default();
    assert_eq!(
        err,
        "p.yaml:3:5: routes[0]: unknown field `min_qualty`, expected one of: name, match, min_quality, latency_target_ms, prefer, spill, external, space, label_set, adequacy, inference"
    );
    let err = check(&[("p.yaml", "routes:\n  - name: r\n    min_quality: high\n")])
        .err()
        .unwrap_or_default();
    assert!(
        err.starts_with("p.yaml:3:18: routes[0].min_quality: "),
        "{err}"
    );
    let err = check(&[("p.yaml", "routes: [\n")])
        .err()
        .unwrap_or_default();
    assert!(err.starts_with("p.yaml:2:1: YAML syntax: "), "{err}");
    let err = check(&[("p.yaml", "routes: []\nroutes: []\n")])
        .err()
        .unwrap_or_default();
    assert_eq!(err, "p.yaml:2:1: duplicate key `routes`");
}

#[test]
fn a_route_that_lists_embed_or_classify_must_pin_its_space() {
    let e = check(&[(
        "p.yaml",
        "routes:\n  - name: enc\n    match: {tasks: [embed, classify]}\n    label_set: difficulty\n",
    )])
    .unwrap_err();
    assert_eq!(
        e,
        "p.yaml:2:11: routes[0].space: the route serves embed but pins no vector space: models in different ones are not interchangeable, so name the one it serves (`space: NAME`)"
    );
    let p = check(&[(
        "p.yaml",
        "routes:\n  - name: enc\n    match: {tasks: [embed]}\n    space: all-minilm-l6-v2\n    external: {allowed: true, provider: openai, model: te3, space: openai-te3, data_classes: [internal], when: [no_adequate_local], daily_budget_usd: 1}\n",
    )])
    .unwrap();
    assert_eq!(p.routes[0].space.as_deref(), Some("all-minilm-l6-v2"));
    assert_eq!(
        p.routes[0]
            .external
            .as_ref()
            .and_then(|e| e.space.as_deref()),
        Some("openai-te3")
    );
    let e = check(&[(
        "p.yaml",
        "routes:\n  - name: enc\n    match: {tasks: [embed]}\n    space: \"not a name\"\n",
    )])
    .unwrap_err();
    assert!(
        e.starts_with("p.yaml:4:12: routes[0].space: `not a name` must be"),
        "{e}"
    );
}

#[test]
fn an_adequacy_block_is_checked_where_it_is_written() {
    let base = "routes:\n  - name: g\n    match: {tasks: [generate]}\n    adequacy:\n";
    let cases = [
        (
            "      estimator: oracle\n",
            "p.yaml:5:18: routes[0].adequacy.estimator: `oracle` is not an estimator (static, cascade, learned)",
        ),
        (
            "      estimator: cascade\n",
            "p.yaml:5:18: routes[0].adequacy.threshold: a cascade needs a threshold (a log-probability, at most 0); `edgewise eval calibrate` writes one",
        ),
        (
            "      estimator: cascade\n      threshold: 0.5\n",
            "p.yaml:6:18: routes[0].adequacy.threshold: 0.5 is not a log-probability (at most 0)",
        ),
        (
            "      estimator: cascade\n      threshold: -1\n      signal: entropy\n",
            "p.yaml:7:15: routes[0].adequacy.signal: `entropy` is not a signal (mean_logprob, min_logprob, p10_logprob)",
        ),
        (
            "      estimator: cascade\n      threshold: -1\n      max_tokens: 0\n",
            "p.yaml:7:19: routes[0].adequacy.max_tokens: must be in 1..=4096",
        ),
        (
            "      estimator: static\n      threshold: -1\n",
            "p.yaml:6:18: routes[0].adequacy.threshold: only a `cascade` takes this",
        ),
    ];
    for (block, want) in cases {
        let e = check(&[("p.yaml", &format!("{base}{block}"))]).unwrap_err();
        assert_eq!(e, want, "{block}");
    }
    let e = check(&[(
        "p.yaml",
        "routes:\n  - name: g\n    match: {tasks: [generate, classify]}\n    label_set: l\n    adequacy: {estimator: cascade, threshold: -1}\n",
    )])
    .unwrap_err();
    assert!(
        e.contains("routes[0].adequacy.estimator: a cascade judges generated answers"),
        "{e}"
    );
    let p = check(&[(
        "p.yaml",
        &format!("{base}      estimator: cascade\n      threshold: -1.25\n      calibrated: \"exact-answers\"\n"),
    )])
    .unwrap();
    assert_eq!(
        p.routes[0].adequacy,
        crate::routing::Adequacy::Cascade(crate::routing::Cascade {
            signal: crate::routing::Signal::P10Logprob,
            threshold: -1.25,
            max_tokens: 64,
            per_model: Vec::new(),
            skip: Vec::new(),
            calibrated: Some("exact-answers".into()),
        })
    );
}

#[test]
fn a_cascade_takes_a_threshold_per_model_and_models_to_skip() {
    let base = "routes:\n  - name: r\n    match: {tasks: [generate]}\n    adequacy:\n      estimator: cascade\n      threshold: -1.0\n";
    let p = check(&[(
        "p.yaml",
        &format!("{base}      thresholds:\n        b: -0.5\n        c: -2\n      skip: [a]\n"),
    )])
    .unwrap();
    let crate::routing::Adequacy::Cascade(c) = &p.routes[0].adequacy else {
        panic!("not a cascade: {:?}", p.routes[0].adequacy)
    };
    assert_eq!(c.threshold_for("a"), -1.0);
    assert_eq!(c.threshold_for("b"), -0.5);
    assert_eq!(c.threshold_for("c"), -2.0);
    assert!(c.skips("a") && !c.skips("b"));
    // a per-model threshold that is not a log-probability, at its line and column
    let e = check(&[(
        "p.yaml",
        &format!("{base}      thresholds:\n        b: 0.5\n"),
    )])
    .unwrap_err();
    assert!(
        e.contains("p.yaml:8:12: routes[0].adequacy.thresholds.b: 0.5 is not a log-probability"),
        "{e}"
    );
    // a model both skipped and given a threshold
    let e = check(&[(
        "p.yaml",
        &format!("{base}      thresholds: {{b: -0.5}}\n      skip: [b]\n"),
    )])
    .unwrap_err();
    assert!(
        e.contains("routes[0].adequacy.skip[0]: `b` also has a threshold"),
        "{e}"
    );
    // only a cascade takes them
    let e = check(&[(
        "p.yaml",
        "routes:\n  - name: r\n    adequacy:\n      estimator: static\n      skip: [a]\n",
    )])
    .unwrap_err();
    assert!(
        e.contains("routes[0].adequacy.skip: only a `cascade` takes this"),
        "{e}"
    );
}

#[test]
fn data_class_floors_are_validated_and_tenants_may_only_raise() -> Result<(), String> {
    let p = check(&[(
        "p.yaml",
        "data_class_floors:\n  email: confidential\n  jwt: restricted\ntenant_data_class_floors:\n  bank:\n    phone: confidential\nroutes:\n  - name: r\n    inference: report\n",
    )])?;
    assert_eq!(
        p.floors.floors.get("email"),
        Some(&crate::routing::DataClass::Confidential)
    );
    assert_eq!(p.routes[0].inference, crate::routing::InferenceMode::Report);
    assert_eq!(
        p.floors.tenants["bank"].get("phone"),
        Some(&crate::routing::DataClass::Confidential)
    );
    let err = check(&[(
        "p.yaml",
        "data_class_floors:\n  emial: internal\n  secret: secretive\ntenant_data_class_floors:\n  bank:\n    payment_card: internal\nroutes:\n  - name: r\n    inference: sometimes\n",
    )])
    .err()
    .unwrap_or_default();
    let lines: Vec<&str> = err.lines().collect();
    assert!(
        lines[0].starts_with("p.yaml:2:3: data_class_floors.emial: `emial` is neither a category nor a detector id (one of: email, phone"),
        "{err}"
    );
    assert_eq!(
        &lines[1..],
        [
            "p.yaml:3:11: data_class_floors.secret: `secretive` is not a data class (public, internal, confidential, restricted)",
            "p.yaml:6:5: tenant_data_class_floors.bank.payment_card: internal would lower the policy's floor for `payment_card` (confidential); a tenant's floors may only raise",
            "p.yaml:9:16: routes[0].inference: `sometimes` is not an inference mode (enforce, report, off)",
        ],
        "{err}"
    );
    Ok(())
}
