//! Secrets never leave their files: a gateway and an agent (the real binaries, debug logging,
//! mutual TLS) are driven down the failure paths — a provider answering 401 (and echoing part
//! of the key, as real APIs do), an unknown bearer token, a refused TLS peer, broken config
//! files — and every log line, CLI output, audit record, metric and exported trace span is
//! searched for the canary provider key, the tokens and the TLS private keys. None may appear
//! anywhere.

use edgewise_tests::harness as common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use edgewise_tests::mock_provider::MockProvider;

const PROVIDER_KEY: &str = "sk-EDGEWISECANARYprovider0123456789abcdef";
const UNKNOWN_TOKEN: &str = "ew_CANARYTOKENunknown0123456789abcdef";

fn edgewise() -> PathBuf {
    agent_bin().with_file_name("edgewise")
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The base64 lines of a PEM private key: what would show if key material leaked.
fn key_lines(pem: &Path) -> Vec<String> {
    std::fs::read_to_string(pem)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .map(str::to_string)
        .collect()
}

// the CLI runs as blocking child processes while the mock provider serves on another worker
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_canary_key_tokens_and_tls_keys_are_found_nowhere() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tls = d.join("tls");
    assert!(
        run(Command::new(edgewise())
            .args(["certs", "init", "--out"])
            .arg(&tls)
            .args(["gateway:gw", "node:edge-a", "tenant:ops"]))
        .status
        .success()
    );
    let token_lines = run(Command::new(edgewise())
        .args(["token", "new", "shop", "--out"])
        .arg(d.join("shop.token")));
    assert!(token_lines.status.success());
    let token = std::fs::read_to_string(d.join("shop.token"))
        .unwrap()
        .trim()
        .to_string();
    std::fs::write(d.join("unknown.token"), UNKNOWN_TOKEN).unwrap();
    std::fs::write(d.join("openai.key"), PROVIDER_KEY).unwrap();
    // the provider accepts another key: every call gets a 401 that echoes part of ours
    let mock = MockProvider::start("sk-the-right-key").await;
    let (otlp, collector, _otlp_server) = OtlpReceiver::start().await;
    let (gw_metrics, agent_metrics) = (free_port(), free_port());

    std::fs::create_dir_all(d.join("policies")).unwrap();
    std::fs::write(
        d.join("policies/p.yaml"),
        "default_data_class: public\nroutes:\n  - name: chat\n    match: {tasks: [generate]}\n    min_quality: 0.9\n    spill: larger\n    external:\n      allowed: true\n      provider: openai\n      model: gpt-4o-mini\n      data_classes: [public]\n      when: [no_adequate_local]\n      daily_budget_usd: 5\n  - name: rest\n    min_quality: 0\n    spill: wait\n",
    )
    .unwrap();
    let gateway_toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nid = \"gw\"\n\n[policies]\npaths = [\"policies\"]\n\n[state]\ndir = \"state\"\n\n\
         [tls]\nca_file = \"tls/ca.pem\"\ncert_file = \"tls/gateway-gw.pem\"\nkey_file = \"tls/gateway-gw.key\"\n\n\
         [auth]\noperators = [\"ops\"]\n{}\n\
         [providers.openai]\nkind = \"openai\"\nbase_url = \"{}\"\nkey_file = \"openai.key\"\nca_file = \"{}\"\n\
         input_usd_per_million = 1\noutput_usd_per_million = 2\nmax_retries = 0\n\n\
         [metrics]\nlisten = \"{gw_metrics}\"\n\n[telemetry]\notlp_endpoint = \"http://{otlp}\"\nexport_interval_ms = 100\n",
        String::from_utf8_lossy(&token_lines.stdout),
        mock.base_url,
        mock.ca_file.display()
    );
    std::fs::write(d.join("gateway.toml"), &gateway_toml).unwrap();
    let gw_bin = agent_bin().with_file_name("edgewise-gateway");
    let (gw, mut notify) = daemon(
        &gw_bin,
        &d.join("gateway.toml"),
        "debug",
        Some(&d.join("gateway.log")),
    );
    let addr = notify.serving_addr();
    let url = format!("https://{addr}");

    copy_dir(
        &fixtures().join("tiny-classify"),
        &d.join("models/tiny-classify"),
    );
    std::fs::write(
        d.join("agent.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[models]\ndir = \"models\"\n\n[report]\ngateways = [\"{url}\"]\ninterval_ms = 100\n\n\
             [state]\ndir = \"agent-state\"\n\n[tls]\nca_file = \"tls/ca.pem\"\ncert_file = \"tls/node-edge-a.pem\"\nkey_file = \"tls/node-edge-a.key\"\n\n\
             [metrics]\nlisten = \"{agent_metrics}\"\n\n[telemetry]\notlp_endpoint = \"http://{otlp}\"\nexport_interval_ms = 100\n"
        ),
    )
    .unwrap();
    let (agent, _) = daemon(
        &agent_bin(),
        &d.join("agent.toml"),
        "debug",
        Some(&d.join("agent.log")),
    );

    let cli = |args: &[&str]| {
        let mut c = Command::new(edgewise());
        c.args(["--gateway", &url, "--ca-file"])
            .arg(tls.join("ca.pem"));
        c.args(args);
        c
    };
    let ops = |args: &[&str]| {
        let mut c = cli(args);
        c.arg("--cert-file")
            .arg(tls.join("tenant-ops.pem"))
            .arg("--key-file")
            .arg(tls.join("tenant-ops.key"));
        c
    };
    let mut outputs = Vec::new();
    // the fleet sees the node (its report went over TLS)
    wait_for(
        "the node in the fleet",
        std::time::Duration::from_secs(30),
        || {
            let o = run(&mut ops(&["fleet", "status"]));
            async move { text(&o).contains("edge-a") && text(&o).contains("ready") }
        },
    )
    .await;
    outputs.push(("fleet status", text(&run(&mut ops(&["fleet", "status"])))));

    // 1. the provider refuses our key (401 echoing part of it)
    let mut c = cli(&["generate", "--data-class", "public", "hello"]);
    c.arg("--token-file").arg(d.join("shop.token"));
    let o = run(&mut c);
    assert!(!o.status.success());
    let failed = text(&o);
    assert!(failed.contains("401"), "{failed}");
    outputs.push(("generate with a rejected provider key", failed));
    assert_eq!(
        mock.state.requests().len(),
        1,
        "the provider was called once"
    );

    // 2. an unknown bearer token
    let mut c = cli(&["generate", "hello"]);
    c.arg("--token-file").arg(d.join("unknown.token"));
    let o = run(&mut c);
    let unauth = text(&o);
    assert!(unauth.contains("Unauthenticated"), "{unauth}");
    outputs.push(("unknown token", unauth));

    // 3. a TLS peer the gateway refuses (a certificate from another CA)
    let other = d.join("other");
    run(Command::new(edgewise())
        .args(["certs", "init", "--out"])
        .arg(&other)
        .args(["tenant:ops"]));
    let mut c = cli(&["fleet", "status"]);
    c.arg("--cert-file")
        .arg(other.join("tenant-ops.pem"))
        .arg("--key-file")
        .arg(other.join("tenant-ops.key"));
    let o = run(&mut c);
    assert!(!o.status.success());
    outputs.push(("foreign certificate", text(&o)));

    // 4. the audit log of the failed external call
    let o = run(&mut ops(&["audit", "export", "--since", "1h"]));
    assert!(o.status.success(), "{}", text(&o));
    let audit = text(&o);
    assert!(audit.contains("\"provider\":\"openai\""), "{audit}");
    outputs.push(("audit export", audit));

    // 5. broken configs: a TLS key file that is not a key (holding the canary), a provider
    //    key credential without CREDENTIALS_DIRECTORY
    std::fs::write(d.join("bad.key"), PROVIDER_KEY).unwrap();
    let bad = gateway_toml.replace(
        "key_file = \"tls/gateway-gw.key\"",
        "key_file = \"bad.key\"",
    );
    std::fs::write(d.join("bad.toml"), &bad).unwrap();
    let o = run(Command::new(&gw_bin)
        .arg("--config")
        .arg(d.join("bad.toml"))
        .arg("validate"));
    assert!(!o.status.success());
    let invalid = text(&o);
    assert!(invalid.contains("bad.key"), "{invalid}");
    outputs.push(("validate with a broken key file", invalid));
    let bad = gateway_toml.replace(
        "key_file = \"openai.key\"",
        "key_credential = \"openai.key\"",
    );
    std::fs::write(d.join("bad2.toml"), &bad).unwrap();
    let o = run(Command::new(&gw_bin)
        .arg("--config")
        .arg(d.join("bad2.toml"))
        .arg("validate"));
    assert!(!o.status.success());
    outputs.push(("validate with a missing credential", text(&o)));

    outputs.push(("gateway metrics", http_get(gw_metrics, "/metrics").await));
    outputs.push(("agent metrics", http_get(agent_metrics, "/metrics").await));
    agent.stop();
    gw.stop(); // flushes the spans still queued, and exports the metrics once more
    let exported = collector.spans();
    assert!(
        exported.iter().any(|s| s.name == "external.call"),
        "the failed external call was traced"
    );
    outputs.push(("trace spans", format!("{exported:?}")));
    let metrics = collector.metrics();
    assert!(
        metrics
            .iter()
            .any(|m| m.metric.name == "edgewise_gateway_external_calls"),
        "the failed external call was counted in the exported metrics"
    );
    outputs.push(("OTLP metrics", format!("{metrics:?}")));
    let gw_log = std::fs::read_to_string(d.join("gateway.log")).unwrap();
    let agent_log = std::fs::read_to_string(d.join("agent.log")).unwrap();
    // the logs are at debug and did see the failures (so the search means something)
    assert!(gw_log.contains("DEBUG"), "gateway log not at debug level");
    assert!(gw_log.contains("TLS handshake refused"), "{gw_log}");
    assert!(agent_log.contains("reporting to gateway"), "{agent_log}");
    outputs.push(("gateway log", gw_log));
    outputs.push(("agent log", agent_log));
    let audit_db: String = walk(&d.join("state"));
    outputs.push(("gateway state files", audit_db));

    let mut secrets: Vec<(String, String)> = vec![
        ("provider key".into(), "EDGEWISECANARY".into()),
        ("unknown token".into(), "CANARYTOKEN".into()),
        ("shop's token".into(), token.clone()),
    ];
    for key in [
        "gateway-gw.key",
        "node-edge-a.key",
        "tenant-ops.key",
        "ca.key",
    ] {
        for line in key_lines(&tls.join(key)) {
            secrets.push((format!("{key} material"), line));
        }
    }
    for (what, out) in &outputs {
        for (name, secret) in &secrets {
            assert!(
                !out.contains(secret.as_str()),
                "{name} found in {what}:\n{out}"
            );
        }
    }
}

/// Every file under `dir`, lossily as text (sled's files: the ledger and the audit log).
fn walk(dir: &Path) -> String {
    let mut out = String::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.push_str(&walk(&p));
            } else if let Ok(bytes) = std::fs::read(&p) {
                out.push_str(&String::from_utf8_lossy(&bytes));
            }
        }
    }
    out
}
