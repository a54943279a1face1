//! The learned estimator end to end in the gateway's pure parts: a heads file a policy pins
//! (and the mismatches `policy check` refuses, with file:line:column), the probabilities a
//! request gets, and `decide` choosing the smallest model whose probability clears the
//! threshold.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::features::LEXICAL;
use super::heads::{FORMAT, Head, Heads};
use crate::routing::*;

/// A features folder (the tiny LM's tokenizer, an 8-dim table) and a heads file for
/// `small` and `large`; returns the folder, the heads file's sha256 and the features' length.
/// A head: its model, (feature index, weight) pairs, its bias.
type HeadSpec<'a> = (&'a str, Vec<(usize, f32)>, f32);

fn setup(dir: &Path, heads: &[HeadSpec<'_>]) -> String {
    let features = dir.join("features");
    std::fs::create_dir_all(&features).unwrap();
    let fixtures =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/tiny-lm-q4");
    std::fs::copy(
        fixtures.join("tokenizer.json"),
        features.join("tokenizer.json"),
    )
    .unwrap();
    let (vocab, dims) = (64usize, 8usize);
    let header = format!(
        r#"{{"embedding.weight":{{"dtype":"F16","shape":[{vocab},{dims}],"data_offsets":[0,{}]}}}}"#,
        vocab * dims * 2
    );
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header.as_bytes());
    for i in 0..vocab * dims {
        file.extend_from_slice(
            &half::f16::from_f32(((i * 37) % 11) as f32 / 11.0 - 0.5).to_le_bytes(),
        );
    }
    std::fs::write(features.join("embedding.safetensors"), file).unwrap();
    let f = super::Features::load(&features).unwrap();
    let n = f.len();
    let h = Heads {
        format: FORMAT.into(),
        embedding_sha256: f.embedding_sha256.clone(),
        lexical: LEXICAL.iter().map(|s| s.to_string()).collect(),
        features: n,
        heads: heads
            .iter()
            .map(|(m, w, b)| {
                let mut weights = vec![0.0; n];
                for &(i, v) in w {
                    weights[i] = v;
                }
                Head {
                    model: m.to_string(),
                    weights,
                    bias: *b,
                }
            })
            .collect(),
        trained_on: "test".into(),
    };
    h.write(&dir.join("heads.json")).unwrap()
}

fn policy_text(sha: &str, models: &str, threshold: f32) -> String {
    format!(
        "routes:\n  - name: g\n    match: {{tasks: [generate]}}\n    adequacy:\n      estimator: learned\n      heads: heads.json\n      sha256: {sha}\n      features: features\n      models: [{models}]\n      threshold: {threshold}\n"
    )
}

fn parse(dir: &Path, text: &str) -> Result<Policy, String> {
    let p: PathBuf = dir.join("p.yaml");
    crate::policy::parse(&[(p, text.to_string())]).map_err(|d| d.to_string())
}

fn model(name: &str, params: u64) -> ModelView {
    ModelView {
        quality: 0.1,
        context_length: 4096,
        max_queue: 2,
        ..ModelView::idle(name, Task::Generate, params)
    }
}

/// The decision and its trace, formatted.
fn route_of(policy: &Policy, text: &str) -> (Decision, Vec<Exclusion>) {
    let fleet = FleetSnapshot::new(vec![NodeView {
        id: "n".into(),
        addr: "http://n".into(),
        live: true,
        models: vec![model("small", 100), model("large", 500)],
    }]);
    let messages = [crate::providers::Message {
        role: "user".into(),
        content: text.into(),
    }];
    let req = RouteRequest {
        prompt_tokens_max: 40,
        p_adequate: super::estimate(policy, &messages),
        ..RouteRequest::new("t", Task::Generate, 10, 8)
    };
    let inputs = Inputs {
        policy,
        fleet: &fleet,
        providers: &BTreeMap::new(),
        budgets: &Budgets::default(),
    };
    let d = decide(&inputs, &req, &mut ChaCha8Rng::seed_from_u64(3));
    let excluded = d.excluded(&inputs, &req);
    (d, excluded)
}

fn chosen(d: &(Decision, Vec<Exclusion>)) -> &str {
    match &d.0.outcome {
        Ok(Target::Local { model, .. }) => model,
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_smallest_model_whose_probability_clears_the_threshold_serves_each_request() {
    let dir = tempfile::tempdir().unwrap();
    // `small` is adequate for arithmetic only (the has_arithmetic feature), `large` always
    let arithmetic = 8 + 4;
    let sha = setup(
        dir.path(),
        &[
            ("small", vec![(arithmetic, 6.0)], -3.0),
            ("large", vec![], 2.0),
        ],
    );
    let p = parse(dir.path(), &policy_text(&sha, "small, large", 0.5)).unwrap();
    let d = route_of(&p, "What is 6 + 5?");
    assert_eq!(chosen(&d), "small");
    let d = route_of(&p, "Explain the causes of the French revolution.");
    assert_eq!(chosen(&d), "large");
    let why =
        &d.1.iter()
            .find(|e| e.candidate.to_string() == "n/small")
            .unwrap()
            .reason;
    assert_eq!(why, "P(adequate) 0.047 is below the route's threshold 0.5");
    // a threshold nothing clears: no adequate local model
    let p = parse(dir.path(), &policy_text(&sha, "small, large", 0.99)).unwrap();
    assert!(matches!(
        route_of(&p, "What is 6 + 5?").0.outcome,
        Err(Refusal::NoAdequateModel(_))
    ));
}

#[test]
fn a_heads_file_that_does_not_match_its_policy_is_refused_where_the_policy_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let sha = setup(
        dir.path(),
        &[("small", vec![], 0.0), ("large", vec![], 0.0)],
    );
    assert!(parse(dir.path(), &policy_text(&sha, "small, large", 0.5)).is_ok());
    // a changed file: the pinned hash is not its hash
    let e = parse(
        dir.path(),
        &policy_text(&"0".repeat(64), "small, large", 0.5),
    )
    .unwrap_err();
    assert!(
        e.contains("p.yaml:7:15: routes[0].adequacy.sha256: ") && e.contains("the policy pins 000"),
        "{e}"
    );
    // other models than the file has heads for
    let e = parse(dir.path(), &policy_text(&sha, "small, medium", 0.5)).unwrap_err();
    assert!(
        e.contains("p.yaml:9:16: routes[0].adequacy.models: ")
            && e.contains("[\"small\", \"large\"]"),
        "{e}"
    );
    // features from another embedding than the heads were trained on
    let other = tempfile::tempdir().unwrap();
    setup(other.path(), &[]);
    let mut bytes = std::fs::read(other.path().join("features/embedding.safetensors")).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(dir.path().join("features/embedding.safetensors"), bytes).unwrap();
    let e = parse(dir.path(), &policy_text(&sha, "small, large", 0.5)).unwrap_err();
    assert!(
        e.contains("p.yaml:8:17: routes[0].adequacy.features: ")
            && e.contains("not the ones heads.json was trained on"),
        "{e}"
    );
    // a missing file
    std::fs::remove_file(dir.path().join("heads.json")).unwrap();
    let e = parse(dir.path(), &policy_text(&sha, "small, large", 0.5)).unwrap_err();
    assert!(
        e.contains("p.yaml:6:14: routes[0].adequacy.heads: cannot read "),
        "{e}"
    );
}
