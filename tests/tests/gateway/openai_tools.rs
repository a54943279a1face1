//! Tool calling through the gateway's OpenAI-compatible API on a real model: the `openai`
//! SDK (tests/openai/sdk_tools.py) against a gateway and an agent serving Qwen2.5-Coder 0.5B
//! from `make models` (its chat template's Hermes tool format). A required call, a named
//! call streamed, the result sent back as a tool message, and `auto`.

use edgewise_tests::harness as common;

use std::time::Duration;

use common::*;
use edgewise_gateway::{Gateway, GatewayConfig};
use edgewise_proto as pb;

const TOKEN: &str = "ew_test_tools_token";
const QWEN: &str = "qwen2.5-coder-0.5b-q4";

fn qwen() -> Option<std::path::PathBuf> {
    let dir = repo_root().join("models");
    if dir.join(QWEN).join("model.onnx").exists() {
        return Some(dir);
    }
    assert_ne!(
        std::env::var("EDGEWISE_TEST_REAL_MODELS").as_deref(),
        Ok("required"),
        "models/{QWEN} is missing: run `make models`"
    );
    eprintln!("skipping: models/{QWEN} is missing (run `make models`)");
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_calls_tools_on_a_real_model_and_gets_its_answer_back() {
    let Some(models) = qwen() else { return };
    let Some(python) = sdk_python() else { return };
    let policy = tempfile::tempdir().unwrap();
    std::fs::write(
        policy.path().join("p.yaml"),
        "routes:\n  - name: chat\n    min_quality: 0\n    spill: wait\n",
    )
    .unwrap();
    let mut gw = GatewayConfig::new(vec![policy.path().to_path_buf()], "gw-tools");
    gw.tokens = edgewise_gateway::auth::Tokens::new([(
        edgewise_gateway::auth::hash(TOKEN),
        "shop".to_string(),
    )]);
    gw.http = Some(edgewise_gateway::http::HttpConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        client_timeout: Duration::from_secs(60),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway = Gateway::start(gw, listener).await.unwrap();
    let (mut cfg, state) = config(&models, None);
    cfg.include = vec![QWEN.into()];
    cfg.intra_op_threads = 2;
    cfg.gateways = vec![format!("http://{}", gateway.addr)];
    let _agent = TestAgent::start(cfg, state).await;
    wait_for_node(
        &gateway,
        "the gateway sees the model ready, with its tool format",
        Duration::from_secs(120),
        |models| {
            models
                .iter()
                .any(|m| m.state == pb::ModelState::Ready as i32 && m.tool_format == "hermes")
        },
    )
    .await;
    let args = [
        format!("http://{}/v1", gateway.http_addr.unwrap()),
        TOKEN.into(),
    ];
    run_sdk_script(&python, "sdk_tools.py", &args, "all tool checks passed").await;
}
