//! Bad models and a missing ONNX Runtime: clear reasons, and the rest keeps serving.

use edgewise_tests::harness as common;

use std::process::Command;

use common::*;
use edgewise_proto as pb;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// A models directory with two good models and three broken ones.
fn broken_models() -> tempfile::TempDir {
    let dir = models_dir(&["tiny-embed", "tiny-lm-int8"]);
    // 1. corrupt ONNX file
    copy_dir(&fixtures().join("tiny-embed"), &dir.path().join("corrupt"));
    std::fs::write(
        dir.path().join("corrupt/model.onnx"),
        b"this is not an onnx graph",
    )
    .unwrap();
    let m = std::fs::read_to_string(dir.path().join("corrupt/model.toml")).unwrap();
    std::fs::write(
        dir.path().join("corrupt/model.toml"),
        m.replace("name = \"tiny-embed\"", "name = \"corrupt\""),
    )
    .unwrap();
    // 2. manifest error
    copy_dir(
        &fixtures().join("tiny-classify"),
        &dir.path().join("bad-manifest"),
    );
    let m = std::fs::read_to_string(dir.path().join("bad-manifest/model.toml")).unwrap();
    std::fs::write(
        dir.path().join("bad-manifest/model.toml"),
        m.replace("quality = 0.5", "quality = 7.0"),
    )
    .unwrap();
    // 3. an encoder graph declared as a generator: input/output names do not fit the task
    copy_dir(
        &fixtures().join("tiny-embed"),
        &dir.path().join("wrong-task"),
    );
    let lm = std::fs::read_to_string(fixtures().join("tiny-lm-fp32/model.toml")).unwrap();
    std::fs::write(
        dir.path().join("wrong-task/model.toml"),
        lm.replace("name = \"tiny-lm-fp32\"", "name = \"wrong-task\""),
    )
    .unwrap();
    // 4. a decoder whose manifest names a graph layout this agent does not drive
    copy_dir(
        &fixtures().join("tiny-lm-fp32"),
        &dir.path().join("old-layout"),
    );
    std::fs::write(
        dir.path().join("old-layout/model.toml"),
        lm.replace("name = \"tiny-lm-fp32\"", "name = \"old-layout\"")
            .replace("interface = \"fused-gqa\"", "interface = \"optimum-kv\""),
    )
    .unwrap();
    dir
}

#[tokio::test]
async fn broken_models_fail_with_reasons_while_the_others_serve() {
    let gw = FakeGateway::start().await;
    let dir = broken_models();
    let (cfg, state) = config(dir.path(), Some(&gw));
    let mut a = TestAgent::start(cfg, state).await;

    let r = gw
        .wait_report("all models settled", |r| {
            r.models.len() == 6
                && r.models
                    .iter()
                    .all(|m| m.state != pb::ModelState::Loading as i32)
        })
        .await;
    let state = |name: &str| {
        r.models
            .iter()
            .find(|m| m.name == name)
            .map(|m| (m.state, m.reason.clone()))
            .unwrap()
    };
    let failed = pb::ModelState::Failed as i32;
    let (s, reason) = state("corrupt");
    assert_eq!(s, failed);
    assert!(
        reason.contains("corrupt/model.onnx") && reason.contains("Protobuf parsing failed"),
        "{reason}"
    );
    let (s, reason) = state("bad-manifest");
    assert_eq!(s, failed);
    assert!(
        reason.ends_with("bad-manifest/model.toml:6:11: quality: 7 must be in 0..=1"),
        "{reason}"
    );
    let (s, reason) = state("wrong-task");
    assert_eq!(s, failed);
    assert_eq!(
        reason,
        "the graph is not in the `fused-gqa` layout this agent drives: no `past_key_values.0.key` input (re-prepare it with `make models` or `tools/prepare_models.py`)"
    );
    let (s, reason) = state("old-layout");
    assert_eq!(s, failed);
    assert_eq!(
        reason,
        "generate.interface `optimum-kv` is not a graph this agent drives (it drives `fused-gqa`); re-prepare the model"
    );
    assert_eq!(state("tiny-embed").0, pb::ModelState::Ready as i32);

    // the good models serve
    a.client
        .embed(pb::EmbedRequest {
            model: "tiny-embed".into(),
            texts: vec!["hello".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    collect(&mut a.client, prompt("tiny-lm-int8", "Hello", 3))
        .await
        .unwrap();
    // a failed one says why
    let err = a
        .client
        .embed(pb::EmbedRequest {
            model: "corrupt".into(),
            texts: vec!["x".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert!(
        err.message()
            .starts_with("model `corrupt` is not ready (failed): "),
        "{}",
        err.message()
    );

    // health: the agent serves; per-model services say which are up
    let mut h = HealthClient::new(
        tonic::transport::Channel::from_shared(a.url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let check = |service: &str| HealthCheckRequest {
        service: service.into(),
    };
    let st = h
        .check(check("edgewise.v1.Agent"))
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(st, ServingStatus::Serving as i32);
    let st = h
        .check(check("edgewise.v1.Agent/tiny-embed"))
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(st, ServingStatus::Serving as i32);
    let st = h
        .check(check("edgewise.v1.Agent/corrupt"))
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(st, ServingStatus::NotServing as i32);
    a.stop().await;
}

#[test]
fn models_check_prints_each_model_and_fails_on_any_failure() {
    let dir = broken_models();
    let out = Command::new(agent_bin())
        .args([
            "--config",
            "/nonexistent/agent.toml",
            "models",
            "check",
            "--json",
            "--models-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let by_name = |n: &str| rows.iter().find(|r| r["name"] == n).unwrap().clone();
    assert_eq!(rows.len(), 6);
    assert_eq!(by_name("tiny-embed")["state"], "ready");
    assert_eq!(by_name("old-layout")["state"], "failed");
    assert!(by_name("tiny-embed")["smoke_ms"].as_f64().unwrap() > 0.0);
    // its files and what loading it added to the process, measured
    let embed = by_name("tiny-embed");
    assert!(embed["size_bytes"].as_u64().unwrap() > 0, "{embed}");
    assert!(embed["resident_bytes"].as_u64().unwrap() > 0, "{embed}");
    assert_eq!(by_name("corrupt")["resident_bytes"], 0);
    assert_eq!(by_name("corrupt")["state"], "failed");
    assert_eq!(by_name("bad-manifest")["state"], "failed");

    let good = models_dir(&["tiny-embed", "tiny-lm-q4"]);
    let out = Command::new(agent_bin())
        .args(["models", "check", "--models-dir"])
        .arg(good.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("MODEL"), "{table}");
    assert!(
        table.lines().filter(|l| l.contains(" ready ")).count() == 2,
        "{table}"
    );
}

#[test]
fn a_missing_onnx_runtime_gives_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, "[runtime]\nonnxruntime_library = \"/opt/nowhere/libonnxruntime.so\"\n[state]\ndir = \"state\"\n[tls]\nplaintext = true\n").unwrap();
    let out = Command::new(agent_bin())
        .args(["--config"])
        .arg(&cfg)
        .arg("run")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ONNX Runtime library not found"), "{err}");
    assert!(
        err.contains("runtime.onnxruntime_library: /opt/nowhere/libonnxruntime.so (missing)"),
        "{err}"
    );
    assert!(err.contains("make onnxruntime"), "{err}");

    let out = Command::new(agent_bin())
        .args(["models", "check", "--models-dir"])
        .arg(dir.path())
        .env("ORT_DYLIB_PATH", "/opt/nowhere/libonnxruntime.so.1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ORT_DYLIB_PATH: /opt/nowhere/libonnxruntime.so.1 (missing)"),
        "{err}"
    );
}

#[test]
fn validate_names_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        "[server]\nlisten = \"127.0.0.1:7300\"\n\n[batching]\nmax_batch_size = 0\n",
    )
    .unwrap();
    let out = Command::new(agent_bin())
        .arg("--config")
        .arg(&cfg)
        .arg("validate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}:5:18: batching.max_batch_size: 0 is out of range 1..=1024",
            cfg.display()
        )),
        "{err}"
    );
}
