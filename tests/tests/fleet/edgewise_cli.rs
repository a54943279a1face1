//! The `edgewise` command line as an operator runs it.

use edgewise_tests::harness as common;

use std::process::Command;

fn edgewise() -> Command {
    Command::new(common::agent_bin().with_file_name("edgewise"))
}

#[test]
fn the_default_policy_checks_and_reports_external_paths() {
    let out = edgewise()
        .args(["policy", "check"])
        .arg(common::repo_root().join("policies"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("policy ok: 2 route(s), default data class internal\n"),
        "{text}"
    );
    assert!(
        text.contains("  internal      route `generate` → openai/gpt-4o-mini\n"),
        "{text}"
    );
    assert!(
        text.contains("  confidential  never leaves the box\n"),
        "{text}"
    );
    assert!(
        text.contains("  restricted    never leaves the box\n"),
        "{text}"
    );
}

#[test]
fn a_bad_policy_fails_with_every_problem_located() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shop.yaml");
    std::fs::write(
        &file,
        "routes:\n  - name: shop\n    min_quality: 2\n    spill: never\n",
    )
    .unwrap();
    let out = edgewise()
        .args(["policy", "check"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let f = file.display();
    assert_eq!(
        err,
        format!(
            "{f}:3:18: routes[0].min_quality: 2 must be in 0..=1\n{f}:4:12: routes[0].spill: `never` is not one of larger, wait, external\npolicy check: 2 problem(s)\n"
        )
    );
}

/// `route explain`, `generate` and `fleet status` against a real gateway and agent.
#[tokio::test]
async fn explain_generate_and_fleet_status_against_a_gateway() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.yaml"),
        "routes:\n  - name: sensitive\n    match: {data_classes: [confidential]}\n    spill: wait\n  - name: chat\n    min_quality: 0.1\n    spill: larger\n",
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = edgewise_gateway::GatewayConfig::new(vec![dir.path().to_path_buf()], "gw-cli");
    let g = edgewise_gateway::Gateway::start(config, listener)
        .await
        .unwrap();
    let models = common::models_dir(&["tiny-lm-fp32"]);
    let (mut cfg, state) = common::config(models.path(), None);
    cfg.gateways = vec![format!("http://{}", g.addr)];
    let agent = common::TestAgent::start(cfg, state).await;
    let url = format!("http://{}", g.addr);
    let cli = |args: &[&str]| {
        let mut c = edgewise();
        c.args(["--gateway", &url, "--tenant", "shop"]).args(args);
        c
    };
    let u = url.clone();
    common::wait_for(
        "the agent is live at the gateway",
        std::time::Duration::from_secs(20),
        || {
            let mut c = edgewise();
            c.args(["--gateway", &u, "fleet", "status"]);
            async move {
                let out = tokio::task::spawn_blocking(move || c.output().unwrap())
                    .await
                    .unwrap();
                String::from_utf8_lossy(&out.stdout).contains(" ready ")
            }
        },
    )
    .await;

    let out = tokio::task::spawn_blocking({
        let mut c = cli(&["route", "explain", "--data-class", "confidential", "Hello"]);
        move || c.output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("route: sensitive  rule: smallest  data class: confidential"),
        "{text}"
    );
    assert!(
        text.contains("target: local tiny-lm-fp32 on node "),
        "{text}"
    );

    let out = tokio::task::spawn_blocking({
        let mut c = cli(&["generate", "--raw", "--max-tokens", "5", "Hello"]);
        move || c.output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("completion tokens") && err.contains("route: chat  rule: smallest"),
        "{err}"
    );

    let out = tokio::task::spawn_blocking({
        let mut c = cli(&["fleet", "status"]);
        move || c.output().unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("gateway gw-cli  policy "), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("tiny-lm-fp32") && l.contains("generate") && l.contains("ready")),
        "{text}"
    );
    agent.stop().await;
    g.stop().await;
}

#[test]
fn edgewise_gateway_validate_checks_config_and_policies() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.toml");
    let policies = common::repo_root().join("policies");
    std::fs::write(
        &cfg,
        format!(
            "[policies]\npaths = [\"{}\"]\n[tls]\nplaintext = true\n",
            policies.display()
        ),
    )
    .unwrap();
    let gw = common::agent_bin().with_file_name("edgewise-gateway");
    let out = Command::new(&gw)
        .arg("--config")
        .arg(&cfg)
        .arg("validate")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).ends_with("ok; policy ok: 2 route(s)\n"));

    std::fs::write(
        dir.path().join("bad.yaml"),
        "routes:\n  - name: x\n    spill: sometimes\n",
    )
    .unwrap();
    std::fs::write(
        &cfg,
        "[policies]\npaths = [\"bad.yaml\"]\n[tls]\nplaintext = true\n",
    )
    .unwrap();
    let out = Command::new(&gw)
        .arg("--config")
        .arg(&cfg)
        .arg("validate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "bad.yaml:3:12: routes[0].spill: `sometimes` is not one of larger, wait, external"
        ),
        "{err}"
    );
}
