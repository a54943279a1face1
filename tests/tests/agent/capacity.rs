//! Admission under load and what the capacity reports say about it.

use edgewise_tests::harness as common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use edgewise_proto as pb;

#[tokio::test]
async fn a_full_queue_is_refused_at_once_and_reports_show_the_load() {
    let gw = FakeGateway::start().await;
    let dir = models_dir(&["tiny-lm-fp32", "tiny-embed"]);
    let (mut cfg, state) = config(dir.path(), Some(&gw));
    limit(&mut cfg, "tiny-lm-fp32", 1, 2);
    let a = TestAgent::start(cfg, state).await;

    let first = gw
        .wait_report("every model is ready", |r| {
            r.models
                .iter()
                .all(|m| m.state == pb::ModelState::Ready as i32)
        })
        .await;
    let hw = first.hardware.clone().unwrap();
    assert!(hw.cores >= 1 && hw.memory_total_bytes > 0 && !hw.arch.is_empty());
    let lm = first
        .models
        .iter()
        .find(|m| m.name == "tiny-lm-fp32")
        .unwrap();
    assert_eq!(
        (lm.task, lm.max_concurrency, lm.max_queue),
        (pb::Task::Generate as i32, 1, 2)
    );
    assert_eq!(lm.context_length, 512);
    assert!(lm.size_bytes > 400_000 && lm.parameters > 0 && (lm.quality - 0.2).abs() < 1e-6);

    // A holds the only slot: it reads one chunk and then stops reading, so it stays in flight.
    let mut c = slow_reader(&a.url).await;
    let mut holder = c
        .generate(prompt("tiny-lm-fp32", "Hello, tiny LM!", 490))
        .await
        .unwrap()
        .into_inner();
    assert!(holder.message().await.unwrap().is_some());
    // B and C wait in the queue.
    let queued: Vec<_> = (0..2)
        .map(|_| {
            let mut c = a.client.clone();
            tokio::spawn(async move { collect(&mut c, prompt("tiny-lm-fp32", "Hi", 4)).await })
        })
        .collect();
    let r = gw
        .wait_report("one running and two queued", |r| {
            r.models
                .iter()
                .any(|m| m.name == "tiny-lm-fp32" && m.in_flight == 1 && m.queue_depth == 2)
        })
        .await;
    assert!(r.seq > first.seq);
    // D finds the queue full: refused at once, with a retry hint.
    let mut c = a.client.clone();
    let err = c
        .generate(prompt("tiny-lm-fp32", "Hi", 4))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    assert!(
        err.message().starts_with(
            "model `tiny-lm-fp32` is at capacity: 1 running and 2 queued (queue limit 2)"
        ),
        "{}",
        err.message()
    );
    let hint: u64 = err
        .metadata()
        .get("retry-after-ms")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(hint >= 50);
    // the other model is not affected
    let mut c = a.client.clone();
    c.embed(pb::EmbedRequest {
        model: "tiny-embed".into(),
        texts: vec!["hello".into()],
        ..Default::default()
    })
    .await
    .unwrap();

    // A goes away: its generation stops and B and C run.
    drop(holder);
    for q in queued {
        let (_, done) = q.await.unwrap().unwrap();
        assert_eq!(done.usage.unwrap().completion_tokens, 4);
    }
    let slot = a.slot("tiny-lm-fp32");
    assert_eq!(
        slot.stats.queue_high_water.load(Ordering::SeqCst),
        2,
        "the queue never exceeded its bound"
    );
    let r = gw
        .wait_report("the load is gone and counted", |r| {
            r.models.iter().any(|m| {
                m.name == "tiny-lm-fp32"
                    && m.in_flight == 0
                    && m.queue_depth == 0
                    && m.requests_total == 3
            })
        })
        .await;
    let lm = r.models.iter().find(|m| m.name == "tiny-lm-fp32").unwrap();
    assert_eq!(lm.rejected_total, 1);
    assert!(lm.tokens_generated_total >= 8);
    assert!(lm.ewma_latency_ms > 0.0 && lm.ewma_time_per_output_token_ms > 0.0);
    a.stop().await;
}

#[tokio::test]
async fn reports_go_out_at_once_on_drain_and_reconnect_after_the_gateway_returns() {
    // no gateway yet: the agent serves anyway
    let gw_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gw_addr = gw_listener.local_addr().unwrap();
    drop(gw_listener);
    let dir = models_dir(&["tiny-embed"]);
    let (mut cfg, state) = config(dir.path(), None);
    cfg.gateways = vec![format!("http://{gw_addr}")];
    cfg.report_interval = Duration::from_secs(30); // only connect and state changes send reports
    let mut a = TestAgent::start(cfg, state).await;
    a.client
        .embed(pb::EmbedRequest {
            model: "tiny-embed".into(),
            texts: vec!["hello".into()],
            ..Default::default()
        })
        .await
        .unwrap();

    let gw = FakeGateway::start_on(gw_addr).await;
    let r = gw
        .wait_report("the agent found the gateway", |r| !r.draining)
        .await;
    assert_eq!(r.models[0].requests_total, 1);
    let agent = a.agent.take().unwrap();
    let node_id = agent.node.id.clone();
    let stopping = tokio::spawn(agent.stop());
    let r = gw
        .wait_report("the drain was reported", |r| r.draining)
        .await;
    assert_eq!(r.node_id, node_id);
    stopping.await.unwrap().unwrap();
}

#[tokio::test]
async fn the_kv_budget_is_reported_and_a_request_that_cannot_fit_is_refused() {
    let gw = FakeGateway::start().await;
    let dir = models_dir(&["tiny-lm-fp32"]);
    let (mut cfg, state) = config(dir.path(), Some(&gw));
    // tiny-lm-fp32: 2 layers × (K + V) × 2 heads × 16 dims × 4 bytes = 512 bytes a position
    let budget = 1u64 << 20;
    cfg.limits.insert(
        "tiny-lm-fp32".into(),
        edgewise_agent::config::Limits {
            kv_budget_bytes: Some(budget),
            ..Default::default()
        },
    );
    let mut a = TestAgent::start(cfg, state).await;
    let r = gw
        .wait_report("the model is ready", |r| {
            r.models
                .iter()
                .any(|m| m.state == pb::ModelState::Ready as i32)
        })
        .await;
    let lm = &r.models[0];
    assert_eq!(
        (
            lm.kv_bytes_per_position,
            lm.kv_bytes_in_use,
            lm.kv_bytes_free
        ),
        (512, 0, budget)
    );
    // 1 MiB holds 2048 positions: 15 prompt tokens + 500 fit, the context (512) allows 497
    let (_, done) = collect(
        &mut a.client,
        prompt("tiny-lm-fp32", "Hello, tiny LM!", 497),
    )
    .await
    .unwrap();
    assert!(done.usage.unwrap().completion_tokens > 0);
    a.stop().await;

    // a budget smaller than one request: refused before it is admitted, naming the budget
    let dir = models_dir(&["tiny-lm-fp32"]);
    let (mut cfg, state) = config(dir.path(), None);
    cfg.limits.insert(
        "tiny-lm-fp32".into(),
        edgewise_agent::config::Limits {
            kv_budget_bytes: Some(64 * 512),
            ..Default::default()
        },
    );
    let mut a = TestAgent::start(cfg, state).await;
    let err = collect(
        &mut a.client,
        prompt("tiny-lm-fp32", "Hello, tiny LM!", 100),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    assert_eq!(
        err.message(),
        "model `tiny-lm-fp32`: 115 positions (prompt + max_tokens) need 58880 bytes of K/V cache, more than its budget of 32768 bytes; ask for fewer tokens"
    );
    a.stop().await;
}

#[tokio::test]
async fn a_model_reports_a_measured_latency_before_its_first_request() {
    let gw = FakeGateway::start().await;
    let dir = models_dir(&["tiny-lm-fp32", "tiny-embed"]);
    let (cfg, state) = config(dir.path(), Some(&gw));
    let a = TestAgent::start(cfg, state).await;
    let r = gw
        .wait_report("both models are ready", |r| {
            r.models.len() == 2
                && r.models
                    .iter()
                    .all(|m| m.state == pb::ModelState::Ready as i32)
        })
        .await;
    // the load-time smoke inference is the first measurement: a gateway with a latency
    // limit routes on it, rather than on nothing
    for m in &r.models {
        assert_eq!(
            m.requests_total, 0,
            "{}: a smoke run is not a request",
            m.name
        );
        assert!(m.ewma_latency_ms > 0.0, "{}: no latency measured", m.name);
    }
    let lm = r.models.iter().find(|m| m.name == "tiny-lm-fp32").unwrap();
    assert!(
        lm.ewma_time_per_output_token_ms > 0.0
            && lm.ewma_time_per_output_token_ms < lm.ewma_latency_ms,
        "{lm:?}"
    );
    a.stop().await;
}
