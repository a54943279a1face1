//! The gateway's OpenAI-compatible HTTP API: the real `openai` Python SDK (pinned, in
//! build/test-venv) against a real gateway, an agent on the tiny fixtures and a mock hosted
//! API over TLS; and raw HTTP for what an SDK never sends (malformed JSON, oversized
//! bodies, slow clients).

use edgewise_tests::harness as common;

use std::time::{Duration, Instant};

use common::*;
use edgewise_gateway::providers::{Kind, ProviderConfig, Secret};
use edgewise_gateway::routing::ProviderPrice;
use edgewise_gateway::{Gateway, GatewayConfig};
use edgewise_proto as pb;
use edgewise_tests::mock_provider::MockProvider;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "ew_test_shop_token";
const PROVIDER_KEY: &str = "sk-test-openai-front";
const LOCAL_MODEL: &str = "tiny-lm-fp32";
const EXTERNAL_MODEL: &str = "gpt-test";

/// Generation may go to the mock only for public and internal data, within a budget a
/// 4,000-token answer would break; embeddings stay local.
const POLICY: &str = "default_data_class: internal
routes:
  - name: chat
    match:
      tasks: [generate]
    min_quality: 0.1
    spill: larger
    external:
      allowed: true
      provider: mock
      model: gpt-test
      data_classes: [public, internal]
      when: [no_adequate_local, no_local_capacity]
      daily_budget_usd: 0.02
  - name: encoders
    match:
      tasks: [embed, classify]
    space: tiny-space
    label_set: greek
    min_quality: 0.1
    spill: wait
";

struct Fleet {
    gateway: Gateway,
    _agent: TestAgent,
    _mock: MockProvider,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

impl Fleet {
    fn http(&self) -> std::net::SocketAddr {
        self.gateway.http_addr.unwrap()
    }
}

async fn fleet(client_timeout: Duration, max_message_bytes: usize) -> Fleet {
    let mock = MockProvider::start(PROVIDER_KEY).await;
    let policy = tempfile::tempdir().unwrap();
    std::fs::write(policy.path().join("p.yaml"), POLICY).unwrap();
    let mut gw = GatewayConfig::new(vec![policy.path().to_path_buf()], "gw-openai");
    gw.tokens = edgewise_gateway::auth::Tokens::new([(
        edgewise_gateway::auth::hash(TOKEN),
        "shop".to_string(),
    )]);
    gw.limits.max_message_bytes = max_message_bytes;
    gw.http = Some(edgewise_gateway::http::HttpConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        client_timeout,
    });
    gw.providers = vec![ProviderConfig {
        name: "mock".into(),
        kind: Kind::OpenAi,
        base_url: mock.base_url.parse().unwrap(),
        key: Secret::new(std::fs::read_to_string(&mock.key_file).unwrap().trim()),
        ca_file: Some(mock.ca_file.clone()),
        price: ProviderPrice {
            input_per_million_usd: 5.0,
            output_per_million_usd: 10.0,
        },
        timeout: Duration::from_secs(30),
        max_retries: 0,
        default_max_tokens: 64,
    }];
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway = Gateway::start(gw, listener).await.unwrap();
    let models = models_dir(&[LOCAL_MODEL, "tiny-embed"]);
    let (mut cfg, state) = config(models.path(), None);
    cfg.gateways = vec![format!("http://{}", gateway.addr)];
    let agent = TestAgent::start(cfg, state).await;
    wait_for_node(
        &gateway,
        "the gateway sees the agent's ready models",
        Duration::from_secs(30),
        |models| {
            models.len() == 2
                && models
                    .iter()
                    .all(|m| m.state == pb::ModelState::Ready as i32)
        },
    )
    .await;
    Fleet {
        gateway,
        _agent: agent,
        _mock: mock,
        _dirs: (policy, models),
    }
}

/// One raw HTTP/1.1 exchange (`Connection: close`): (status, headers, body).
async fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    parse_response(&out)
}

fn parse_response(out: &[u8]) -> (u16, String, String) {
    let text = String::from_utf8_lossy(out).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_string())
}

fn post(path: &str, body: &str, extra: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn error_of(body: &str) -> (String, String, String) {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let e = &v["error"];
    (
        e["message"].as_str().unwrap_or_default().to_string(),
        e["type"].as_str().unwrap_or_default().to_string(),
        e["code"].as_str().unwrap_or_default().to_string(),
    )
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .map(str::trim)
}

#[tokio::test]
async fn the_openai_python_sdk_gets_answers_decisions_and_refusals() {
    let Some(python) = sdk_python() else { return };
    let f = fleet(Duration::from_secs(10), 4 << 20).await;
    // what the hosted model answers: an object the structured-output checks' schema accepts
    if let Ok(mut a) = f._mock.state.answer.lock() {
        *a = r#"{"n": 7, "color": "green"}"#.into();
    }
    let args = [
        format!("http://{}/v1", f.http()),
        TOKEN.into(),
        LOCAL_MODEL.into(),
        EXTERNAL_MODEL.into(),
    ];
    run_sdk_script(&python, "sdk_check.py", &args, "all SDK checks passed").await;
    // the structured-output request reached the hosted API in OpenAI's own form
    let formats: Vec<serde_json::Value> = f
        ._mock
        .state
        .requests()
        .into_iter()
        .filter_map(|r| r.body.get("response_format").cloned())
        .collect();
    assert_eq!(formats.len(), 1, "{formats:?}");
    assert_eq!(formats[0]["type"], "json_schema");
    assert_eq!(formats[0]["json_schema"]["strict"], true);
    assert_eq!(
        formats[0]["json_schema"]["schema"]["properties"]["color"]["enum"],
        serde_json::json!(["red", "green"])
    );
    // the hosted call and the budget refusal went through the same ledger and audit as gRPC
    let records = f
        .gateway
        .state
        .store
        .audit_range(0, u64::MAX)
        .await
        .unwrap();
    assert!(
        records
            .iter()
            .any(|r| r.kind == "external_call" && r.outcome == "ok" && r.tenant == "shop"),
        "{records:#?}"
    );
    assert!(
        records
            .iter()
            .any(|r| r.kind == "refused_fallback" && r.outcome.contains("daily budget")),
        "{records:#?}"
    );
}

#[tokio::test]
async fn curl_sees_the_decision_in_headers_and_a_stream_that_ends_in_done() {
    let f = fleet(Duration::from_secs(10), 4 << 20).await;
    let body = r#"{"model":"auto","messages":[{"role":"user","content":"Hello, tiny LM!"}],"max_tokens":6,"temperature":0}"#;
    let (status, head, text) = exchange(f.http(), &post("/v1/chat/completions", body, "")).await;
    assert_eq!(status, 200, "{head}\n{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let id = header(&head, "x-edgewise-decision-id").unwrap();
    assert_eq!(v["edgewise"]["decision_id"], id);
    assert_eq!(v["id"], format!("chatcmpl-{id}"));
    let target = header(&head, "x-edgewise-target").unwrap();
    assert!(
        target.starts_with("local:") && target.ends_with("/tiny-lm-fp32"),
        "{target}"
    );
    assert_eq!(v["edgewise"]["target"], target);
    // a static route: no cascade steps, no learned estimates
    assert_eq!(v["edgewise"]["cascade"], serde_json::json!([]));
    assert_eq!(v["edgewise"]["p_adequate"], serde_json::json!({}));
    assert_eq!(header(&head, "x-edgewise-rule"), Some("smallest"));
    assert_eq!(v["model"], LOCAL_MODEL);

    let streamed = body.replace("\"temperature\":0", "\"temperature\":0,\"stream\":true");
    let (status, head, events) =
        exchange(f.http(), &post("/v1/chat/completions", &streamed, "")).await;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert!(header(&head, "x-edgewise-decision-id").is_some());
    // chunked transfer: the events are in the body, the last one is [DONE]
    let datas: Vec<&str> = events
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(datas.last(), Some(&"[DONE]"), "{events}");
    let content: String = datas[..datas.len() - 1]
        .iter()
        .map(|d| serde_json::from_str::<serde_json::Value>(d).unwrap())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(
        content,
        v["choices"][0]["message"]["content"].as_str().unwrap()
    );
}

#[tokio::test]
async fn bad_requests_are_refused_in_openais_shape_with_the_reason() {
    let f = fleet(Duration::from_secs(10), 64 << 10).await;
    let addr = f.http();
    // malformed JSON: where it breaks
    let (status, _, body) = exchange(
        addr,
        &post(
            "/v1/chat/completions",
            "{\"model\": \"auto\",\n \"messages\": [}",
            "",
        ),
    )
    .await;
    let (message, kind, _) = error_of(&body);
    assert_eq!((status, kind.as_str()), (400, "invalid_request_error"));
    assert!(
        message.contains("not valid JSON") && message.contains("line 2"),
        "{message}"
    );
    // no credentials, and a wrong token
    let no_auth = "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}";
    let (status, _, body) = exchange(addr, no_auth.as_bytes()).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(error_of(&body).1, "authentication_error");
    // a body over limits.max_message_bytes, declared and chunked
    let big = format!(
        "{{\"model\":\"auto\",\"input\":\"{}\"}}",
        "x".repeat(100 << 10)
    );
    let (status, _, body) = exchange(addr, &post("/v1/embeddings", &big, "")).await;
    assert_eq!(status, 413, "{body}");
    assert!(error_of(&body).0.contains("limits.max_message_bytes"));
    let chunked = format!(
        "POST /v1/embeddings HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{big}\r\n0\r\n\r\n",
        big.len()
    );
    let (status, _, _) = exchange(addr, chunked.as_bytes()).await;
    assert_eq!(status, 413);
    // an unknown model, an unknown path, n > 1
    let (status, _, body) = exchange(
        addr,
        &post(
            "/v1/embeddings",
            r#"{"model":"text-embedding-3-small","input":"x"}"#,
            "",
        ),
    )
    .await;
    assert_eq!(
        (status, error_of(&body).2.as_str()),
        (404, "model_not_found"),
        "{body}"
    );
    assert!(
        error_of(&body).0.contains("ask for one of: auto, encoders"),
        "{body}"
    );
    let (status, _, body) = exchange(addr, &post("/v1/completions", "{}", "")).await;
    assert_eq!((status, error_of(&body).2.as_str()), (404, "unknown_url"));
    let (status, _, body) = exchange(
        addr,
        &post(
            "/v1/chat/completions",
            r#"{"model":"auto","n":2,"messages":[{"role":"user","content":"x"}]}"#,
            "",
        ),
    )
    .await;
    assert_eq!(status, 400);
    assert!(error_of(&body).0.contains("`n` 2"), "{body}");
    // hints that disagree
    let (status, _, body) = exchange(
        addr,
        &post(
            "/v1/chat/completions",
            r#"{"model":"auto","messages":[{"role":"user","content":"x"}],"edgewise":{"data_class":"public"}}"#,
            "x-edgewise-data-class: confidential\r\n",
        ),
    )
    .await;
    assert_eq!(status, 400);
    assert!(error_of(&body).0.contains("disagree"), "{body}");
}

#[tokio::test]
async fn slow_clients_are_cut_off_at_the_client_timeout() {
    let f = fleet(Duration::from_millis(300), 4 << 20).await;
    let addr = f.http();
    // headers that never finish: the connection is closed
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut buf)).await;
    assert!(
        closed.is_ok(),
        "the connection stayed open for a client that never sent its headers"
    );
    // a body that stops half way: 408, naming the setting
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 100\r\n\r\n{{\"model\":"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // read until the response's JSON body is complete (the connection stays open)
    let answered = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let n = s.read(&mut chunk).await.unwrap();
            buf.extend_from_slice(&chunk[..n]);
            if n == 0 || String::from_utf8_lossy(&buf).trim_end().ends_with('}') {
                break;
            }
        }
    })
    .await;
    assert!(answered.is_ok(), "no answer to a body that stopped");
    let (status, _, body) = parse_response(&buf);
    assert_eq!(status, 408, "{body}");
    assert!(
        error_of(&body).0.contains("http.client_timeout_ms"),
        "{body}"
    );
}

/// A short local chat, with extra header lines.
async fn chat_with(addr: std::net::SocketAddr, extra: &str, body: &str) -> (u16, String) {
    let (status, _, body) = exchange(addr, &post("/v1/chat/completions", body, extra)).await;
    (status, body)
}

const SHORT: &str =
    r#"{"model":"auto","max_tokens":4,"messages":[{"role":"user","content":"hi"}]}"#;

#[tokio::test]
async fn deadlines_and_repeated_hints_follow_one_contract_at_both_fronts() {
    let f = fleet(Duration::from_secs(10), 4 << 20).await;
    let addr = f.http();
    // absurd deadlines are capped (one used to panic in the gateway), not refused
    for absurd in [
        "99999999999999999",
        "18446744073709551615",
        "360000000000000",
    ] {
        let (status, body) =
            chat_with(addr, &format!("x-edgewise-timeout-ms: {absurd}\r\n"), SHORT).await;
        assert_eq!(status, 200, "{absurd}: {body}");
    }
    // negative, zero and garbage: 400 naming the header
    for bad in ["-5", "0", "soon", "1.5"] {
        let (status, body) =
            chat_with(addr, &format!("x-edgewise-timeout-ms: {bad}\r\n"), SHORT).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(
            error_of(&body).0.contains("header x-edgewise-timeout-ms"),
            "{bad}: {body}"
        );
    }
    // a deadline of 10-20 ms on a generation that takes several times that (470 tokens, about
    // 120 ms on an idle box): 504, however short
    let long = r#"{"model":"auto","max_tokens":470,"ignore_eos":true,"messages":[{"role":"user","content":"Tell a long story"}]}"#;
    for ms in [10, 20] {
        let started = Instant::now();
        let (status, body) =
            chat_with(addr, &format!("x-edgewise-timeout-ms: {ms}\r\n"), long).await;
        assert_eq!(status, 504, "{ms} ms: {body}");
        assert!(started.elapsed() < Duration::from_secs(5), "{ms} ms");
    }
    // a repeated data class fails closed: public then confidential (as a proxy appending its
    // own would send) is confidential, so the request that must go external is refused and
    // nothing reaches the hosted API
    let before = f._mock.state.requests().len();
    let (status, body) = chat_with(
        addr,
        "x-edgewise-min-quality: 0.99\r\nx-edgewise-data-class: public\r\nx-edgewise-data-class: confidential\r\n",
        SHORT,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(error_of(&body).0.contains("confidential"), "{body}");
    assert_eq!(
        f._mock.state.requests().len(),
        before,
        "nothing left the box"
    );
    // the same with the data class once goes to the hosted API, so the refusal was the class
    let (status, body) = chat_with(
        addr,
        "x-edgewise-min-quality: 0.99\r\nx-edgewise-data-class: public\r\n",
        SHORT,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(f._mock.state.requests().len(), before + 1);
    // any other hint twice is refused by name
    let (status, body) = chat_with(
        addr,
        "x-edgewise-route: chat\r\nx-edgewise-route: encoders\r\n",
        SHORT,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        error_of(&body)
            .0
            .contains("x-edgewise-route was sent more than once")
    );

    // the gRPC front: the same deadline rules through grpc-timeout
    let mut grpc = gateway_client(f.gateway.addr);
    let request = |timeout: &'static str, max_tokens: u32| {
        let mut r = tonic::Request::new(pb::GatewayGenerateRequest {
            request: Some(pb::GenerateRequest {
                ignore_eos: true,
                ..chat("", "Tell a long story", max_tokens)
            }),
            routing: None,
        });
        r.metadata_mut()
            .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
        r.metadata_mut()
            .insert("grpc-timeout", timeout.parse().unwrap());
        r
    };
    drain(&mut grpc, request("99999999H", 4)).await.unwrap();
    let bad = drain(&mut grpc, request("soon", 4)).await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");
    assert!(bad.message().contains("grpc-timeout"), "{bad:?}");
    for t in ["10m", "20m"] {
        let e = drain(&mut grpc, request(t, 470)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::DeadlineExceeded, "{t}: {e:?}");
    }
    // and the gateway still serves both fronts
    drain(&mut grpc, request("30S", 4)).await.unwrap();
    assert_eq!(chat_with(addr, "", SHORT).await.0, 200);
}
