//! The shipped default policy with two agents and a hosted provider (the mock over TLS),
//! driven through the `edgewise` command line as an operator would: the smallest adequate
//! model, a larger one when it is saturated, a confidential request refused without reaching
//! the provider, and an internal one served by the provider with its cost in the ledger and
//! the audit export.

use edgewise_tests::harness as common;

use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use edgewise_gateway::providers::{Kind, ProviderConfig, Secret};
use edgewise_gateway::routing::ProviderPrice;
use edgewise_gateway::{Gateway, GatewayConfig};
use edgewise_proto as pb;
use edgewise_tests::mock_provider::MockProvider;

async fn run(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(agent_bin().with_file_name("edgewise"))
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn ok(out: &Output) -> (String, String) {
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "stdout:\n{o}\nstderr:\n{e}");
    (o, e)
}

async fn agent(
    g: &Gateway,
    models: &[(&str, &str, u64, f32)],
    limits: &[(&str, u32, u32)],
) -> TestAgent {
    let dir = tempfile::tempdir().unwrap();
    for (from, name, params, quality) in models {
        model_as(dir.path(), from, name, *params, *quality);
    }
    let (mut cfg, state) = config(dir.path(), None);
    cfg.gateways = vec![format!("http://{}", g.addr)];
    for (m, c, q) in limits {
        limit(&mut cfg, m, *c, *q);
    }
    let a = TestAgent::start(cfg, state).await;
    std::mem::forget(dir); // the models stay on disk for the test's lifetime
    a
}

fn model_busy(s: &pb::FleetStatusResponse, name: &str) -> Option<u32> {
    s.nodes
        .iter()
        .filter(|n| n.live)
        .flat_map(|n| &n.models)
        .find(|m| m.name == name && m.state == pb::ModelState::Ready as i32)
        .map(|m| m.in_flight)
}

#[tokio::test]
async fn the_default_policy_routes_spills_refuses_and_falls_back_as_documented() {
    let mock = MockProvider::start("sk-default-policy-test").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = GatewayConfig::new(vec![repo_root().join("policies")], "gw-default");
    config.providers = vec![ProviderConfig {
        name: "openai".into(),
        kind: Kind::OpenAi,
        base_url: mock.base_url.parse().unwrap(),
        key: Secret::new("sk-default-policy-test"),
        ca_file: Some(mock.ca_file.clone()),
        price: ProviderPrice {
            input_per_million_usd: 0.15,
            output_per_million_usd: 0.6,
        },
        timeout: Duration::from_secs(30),
        max_retries: 2,
        default_max_tokens: 256,
    }];
    let g = Gateway::start(config, listener).await.unwrap();
    // two nodes: a small LM (one slot) with the embedder, a larger LM with the classifier
    let a = agent(
        &g,
        &[
            ("tiny-lm-fp32", "lm-small", 107_200, 0.3),
            ("tiny-embed", "embedder", 9_504, 0.5),
        ],
        &[("lm-small", 1, 0)],
    )
    .await;
    let _b = agent(
        &g,
        &[
            ("tiny-lm-fp32", "lm-large", 500_000, 0.35),
            ("tiny-classify", "classifier", 9_600, 0.5),
        ],
        &[],
    )
    .await;
    wait_fleet(
        &gateway_client(g.addr),
        "both LMs are ready at the gateway",
        |s| model_busy(s, "lm-small") == Some(0) && model_busy(s, "lm-large") == Some(0),
    )
    .await;
    let url = format!("http://{}", g.addr);
    let cli = |args: &[&str]| -> Vec<String> {
        ["--gateway", &url, "--tenant", "shop"]
            .iter()
            .chain(args)
            .map(|s| s.to_string())
            .collect()
    };

    // 1. the smallest adequate model
    let (o, _) = ok(&run(cli(&["route", "explain", "What is the capital of France?"])).await);
    assert!(
        o.contains("route: generate  rule: smallest  data class: internal"),
        "{o}"
    );
    assert!(o.contains("target: local lm-small on node "), "{o}");
    // a long answer is judged by its first 16 tokens: the tiny random-weight models are
    // never that confident, and confidential data may not leave, so the larger model's
    // answer is kept below the threshold and streams on
    let (o, _) = ok(&run(cli(&["route", "explain", "--max-tokens", "24", "Hello"])).await);
    assert!(
        o.contains("/lm-small — planned: answers first, judged by its first 16 tokens"),
        "{o}"
    );
    let long = ["generate", "--raw", "--data-class", "confidential"];
    let (o, e) = ok(&run(cli(&[&long[..], &["--max-tokens", "24", "Hello"]].concat())).await);
    assert!(!o.trim().is_empty(), "{o}");
    assert!(e.contains("target: local lm-large"), "{e}");
    assert!(e.contains("lm-small") && e.contains("escalated"), "{e}");
    assert!(e.contains("kept below the threshold"), "{e}");
    // a short answer goes through the route's cascade whole (run in 5.)
    let (o, _) = ok(&run(cli(&["route", "explain", "--max-tokens", "4", "Hello"])).await);
    assert!(o.contains("/lm-small — planned: answers first;"), "{o}");

    // 2. saturated: hold lm-small's only slot; the next request spills to lm-large
    let mut slow = slow_reader(&a.url).await;
    let mut held = slow
        .generate(prompt("lm-small", "Hold", 490))
        .await
        .unwrap()
        .into_inner();
    held.message().await.unwrap();
    wait_fleet(
        &gateway_client(g.addr),
        "the gateway sees lm-small busy",
        |s| model_busy(s, "lm-small") == Some(1),
    )
    .await;
    let (o, _) = ok(&run(cli(&["route", "explain", "Hello"])).await);
    assert!(o.contains("rule: spill: larger"), "{o}");
    assert!(o.contains("target: local lm-large on node "), "{o}");
    assert!(o.contains("/lm-small — no free slot (1 busy of 1)"), "{o}");
    let (_, e) = ok(&run(cli(&[&long[..], &["--max-tokens", "24", "Hello"]].concat())).await);
    assert!(
        e.contains("rule: spill: larger") && e.contains("target: local lm-large"),
        "{e}"
    );
    drop(held);

    // 3. confidential, and only the provider could serve it: refused; nothing left the box
    let args = cli(&[
        "generate",
        "--data-class",
        "confidential",
        "--min-quality",
        "0.9",
        "Secret plans",
    ]);
    let out = run(args).await;
    assert_eq!(out.status.code(), Some(1));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("PermissionDenied") && e.contains("not permitted for confidential data"),
        "{e}"
    );
    let (o, _) = ok(&run(cli(&[
        "route",
        "explain",
        "--data-class",
        "confidential",
        "--min-quality",
        "0.9",
        "x",
    ]))
    .await);
    assert!(
        o.contains("target: refused: route `generate`: no adequate local generate model"),
        "{o}"
    );
    assert_eq!(mock.state.requests().len(), 0);

    // 4. internal, nothing local adequate: the provider serves it, billed and audited
    let (o, e) = ok(&run(cli(&[
        "generate",
        "--min-quality",
        "0.9",
        "What is the capital of France?",
    ]))
    .await);
    assert_eq!(o.trim(), "The capital of France is Paris.");
    assert!(
        e.contains("rule: external: no_adequate_local")
            && e.contains("target: external openai/gpt-4o-mini"),
        "{e}"
    );
    assert_eq!(mock.state.requests().len(), 1);
    let (o, _) = ok(&run(cli(&["spend"])).await);
    let cost = (9.0 * 0.15 + 6.0 * 0.6) / 1e6;
    assert!(
        o.lines().any(|l| l.contains("shop")
            && l.contains("openai")
            && l.contains(&format!("{cost:.6}"))),
        "{o}"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.jsonl");
    ok(&run(cli(&[
        "audit",
        "export",
        "--since",
        "1h",
        "--out",
        file.to_str().unwrap(),
    ]))
    .await);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = lines.iter().map(|l| l["kind"].as_str().unwrap()).collect();
    // the two long confidential answers' cascades were refused the hosted step too
    assert_eq!(
        kinds,
        [
            "refused_fallback",
            "refused_fallback",
            "refused_fallback",
            "external_call"
        ],
        "{lines:?}"
    );
    assert!(lines[..3].iter().all(|l| l["data_class"] == "confidential"));
    assert!((lines[3]["cost_usd"].as_f64().unwrap() - cost).abs() < 1e-12);
    assert_eq!(lines[3]["prompt_tokens"], 9);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        !text.contains("France") && !text.contains("Secret plans"),
        "{text}"
    );

    // 5. a short answer goes through the route's cascade: lm-small answers first, and the
    // decision lists each step with its confidence (the tiny models are never confident
    // enough, so it climbs to lm-large and then to the hosted model)
    wait_fleet(
        &gateway_client(g.addr),
        "lm-small's held slot is free again",
        |s| model_busy(s, "lm-small") == Some(0),
    )
    .await;
    let (_, e) = ok(&run(cli(&["generate", "--raw", "--max-tokens", "4", "Hello"])).await);
    assert!(
        e.contains("/lm-small (mean ")
            && e.contains("/lm-large (mean ")
            && e.contains("— escalated"),
        "{e}"
    );
    assert!(e.contains("target: external openai/gpt-4o-mini"), "{e}");
    assert_eq!(mock.state.requests().len(), 2);
    g.stop().await;
}
