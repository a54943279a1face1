//! OpenTelemetry over OTLP/gRPC from the real gateway and agent binaries to a collector in
//! this test: traces and metrics.
//!
//! Traces: the binaries export spans to the receiver. One generation through the gateway yields one trace holding the
//! gateway's spans (request, decision, agent call) and the agent's (request, queue wait,
//! inference), the agent's request span a child of the gateway's agent call — the W3C trace
//! context crossed the process boundary in the gRPC metadata. A collector that never answers
//! slows nothing: requests succeed and the dropped spans are counted.
//!
//! Metrics: both daemons push their registries on an interval; the requests the gateway served
//! arrive as a monotonic cumulative sum with route, task, target and outcome, its latency as a
//! histogram, and the agent's per-model figures under its node id.

use edgewise_tests::harness as common;

use std::path::Path;
use std::time::Duration;

use common::*;
use edgewise_proto as pb;
use opentelemetry_proto::tonic::metrics::v1::{AggregationTemporality, metric::Data};
use tonic::{Request, Status};

/// A gateway and an agent exporting to `endpoint`; returns them and the gateway's address.
fn fleet(
    dir: &Path,
    endpoint: &str,
    queue: usize,
    metrics: Option<std::net::SocketAddr>,
) -> (Proc, Proc, String) {
    fleet_with(dir, endpoint, "", queue, metrics)
}

/// [`fleet`], with more `[telemetry]` lines.
fn fleet_with(
    dir: &Path,
    endpoint: &str,
    more: &str,
    queue: usize,
    metrics: Option<std::net::SocketAddr>,
) -> (Proc, Proc, String) {
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    std::fs::write(
        dir.join("policies/p.yaml"),
        "routes:\n  - name: all\n    min_quality: 0\n    spill: wait\n",
    )
    .unwrap();
    let telemetry = format!(
        "[telemetry]\notlp_endpoint = \"{endpoint}\"\nqueue = {queue}\nexport_interval_ms = 100\nmetrics_interval_ms = 200\n{more}"
    );
    let metrics = metrics
        .map(|m| format!("[metrics]\nlisten = \"{m}\"\n"))
        .unwrap_or_default();
    std::fs::write(
        dir.join("gateway.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nid = \"gw-traces\"\n[tls]\nplaintext = true\n[policies]\npaths = [\"policies\"]\n[state]\ndir = \"state\"\n{telemetry}{metrics}"
        ),
    )
    .unwrap();
    let gw_bin = agent_bin().with_file_name("edgewise-gateway");
    let (gw, mut notify) = daemon(&gw_bin, &dir.join("gateway.toml"), "warn", None);
    let addr = notify.serving_addr();
    copy_dir(
        &fixtures().join("tiny-lm-fp32"),
        &dir.join("models/tiny-lm-fp32"),
    );
    std::fs::write(
        dir.join("agent.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[tls]\nplaintext = true\n[models]\ndir = \"models\"\n[runtime]\nintra_op_threads = 1\n[report]\ngateways = [\"http://{addr}\"]\ninterval_ms = 100\n[state]\ndir = \"agent-state\"\n{telemetry}"
        ),
    )
    .unwrap();
    let (agent, _) = daemon(&agent_bin(), &dir.join("agent.toml"), "warn", None);
    (gw, agent, addr)
}

async fn agent_ready(c: &GatewayClient) {
    wait_fleet(c, "the agent ready", |s| {
        s.nodes.iter().any(|n| {
            n.live
                && n.models
                    .iter()
                    .any(|m| m.state == pb::ModelState::Ready as i32)
        })
    })
    .await;
}

async fn generate(c: &mut GatewayClient) -> Result<(), Status> {
    let mut r = Request::new(pb::GatewayGenerateRequest {
        request: Some(prompt("", "hello", 8)),
        routing: None,
    });
    r.metadata_mut()
        .insert("x-edgewise-tenant", "shop".parse().unwrap());
    let mut s = c.generate(r).await?.into_inner();
    while s.message().await?.is_some() {}
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_is_one_trace_across_gateway_and_agent() {
    let (otlp, receiver, server) = OtlpReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (gw, agent, addr) = fleet(dir.path(), &format!("http://{otlp}"), 2048, None);
    let mut c = gateway_client(&addr);
    agent_ready(&c).await;
    generate(&mut c).await.unwrap();

    // the generation's trace: find the gateway's request span, then everything under its id
    let spans = || receiver.spans();
    let want = [
        ("edgewise-gateway", "gateway.generate"),
        ("edgewise-gateway", "routing.decide"),
        ("edgewise-gateway", "agent.call"),
        ("edgewise-agent", "agent.generate"),
        ("edgewise-agent", "queue.wait"),
        ("edgewise-agent", "inference"),
    ];
    let complete = |all: &[ReceivedSpan]| {
        let Some(root) = all.iter().find(|s| s.name == "gateway.generate") else {
            return false;
        };
        want.iter().all(|(svc, name)| {
            all.iter()
                .any(|s| s.trace == root.trace && s.name == *name && s.service.contains(svc))
        })
    };
    poll(Duration::from_secs(30), || {
        let all = spans();
        async move {
            if complete(&all) {
                Ok(())
            } else {
                Err(format!(
                    "the trace is incomplete; received: {:#?}",
                    all.iter()
                        .map(|s| (s.service.clone(), s.name.clone()))
                        .collect::<Vec<_>>()
                ))
            }
        }
    })
    .await;
    let all = spans();
    let root = all.iter().find(|s| s.name == "gateway.generate").unwrap();
    let in_trace = |name: &str| {
        all.iter()
            .find(|s| s.trace == root.trace && s.name == name)
            .unwrap()
    };
    assert!(root.parent.is_empty(), "the gateway starts the trace");
    assert_eq!(in_trace("routing.decide").parent, root.id);
    assert_eq!(in_trace("agent.call").parent, root.id);
    // across the process boundary: the agent's request span hangs under the gateway's call
    assert_eq!(in_trace("agent.generate").parent, in_trace("agent.call").id);
    assert_eq!(in_trace("queue.wait").parent, in_trace("agent.generate").id);
    assert_eq!(in_trace("inference").parent, in_trace("agent.generate").id);
    agent.stop();
    gw.stop();
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_never_answers_slows_nothing_and_drops_are_counted() {
    // accepts connections and never says a word
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", hole.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let metrics = free_port();
    let (gw, agent, addr) = fleet(dir.path(), &endpoint, 4, Some(metrics));
    let mut c = gateway_client(&addr);
    agent_ready(&c).await;
    // every request succeeds while the exporter is stuck on the silent collector, and what
    // does not fit the queue of 4 is dropped and counted. Requests go on until a drop shows
    // (bounded): how many it takes depends on how fast they are next to the export interval.
    let started = std::time::Instant::now();
    let (mut dropped, mut text) = (0u64, String::new());
    for _ in 0..500 {
        for _ in 0..10 {
            generate(&mut c).await.unwrap();
        }
        text = http_get(metrics, "/metrics").await;
        dropped = text
            .lines()
            .find_map(|l| l.strip_prefix("edgewise_gateway_trace_spans_dropped_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no dropped-spans counter in:\n{text}"));
        if dropped > 0 || started.elapsed() > Duration::from_secs(20) {
            break;
        }
    }
    assert!(dropped > 0, "{text}");
    agent.stop();
    gw.stop();
    drop(hole);
}

/// The attributes of a data point, as (key, text value) pairs.
fn attrs(a: &[opentelemetry_proto::tonic::common::v1::KeyValue]) -> Vec<(String, String)> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    a.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

fn has(a: &[(String, String)], key: &str, value: &str) -> bool {
    a.iter().any(|(k, v)| k == key && v == value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_reach_the_collector_over_otlp() {
    let (otlp, receiver, server) = OtlpReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (gw, agent, addr) = fleet(dir.path(), &format!("http://{otlp}"), 2048, None);
    let mut c = gateway_client(&addr);
    agent_ready(&c).await;
    for _ in 0..3 {
        generate(&mut c).await.unwrap();
    }

    // the gateway's request counter, once an export after the three requests has arrived
    let requests = |all: &[ReceivedMetric]| -> Option<i64> {
        use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value;
        all.iter()
            .rev()
            .filter(|m| m.service == "edgewise-gateway")
            .find(|m| m.metric.name == "edgewise_gateway_requests")
            .and_then(|m| match &m.metric.data {
                Some(Data::Sum(s)) => s.data_points.iter().find_map(|p| {
                    let a = attrs(&p.attributes);
                    let ok = has(&a, "route", "all")
                        && has(&a, "task", "generate")
                        && has(&a, "target", "local")
                        && has(&a, "outcome", "OK");
                    match (ok, p.value) {
                        (true, Some(Value::AsInt(n))) => Some(n),
                        _ => None,
                    }
                }),
                _ => None,
            })
    };
    let agent_exported = |all: &[ReceivedMetric]| {
        all.iter()
            .any(|m| m.service == "edgewise-agent" && m.metric.name == "edgewise_agent_requests")
    };
    poll(Duration::from_secs(30), || {
        let all = receiver.metrics();
        let done = requests(&all) == Some(3) && agent_exported(&all);
        async move {
            if done {
                Ok(())
            } else {
                Err(format!(
                    "no export with the three requests; received: {:?}",
                    all.iter()
                        .map(|m| (m.service.clone(), m.metric.name.clone()))
                        .collect::<std::collections::BTreeSet<_>>()
                ))
            }
        }
    })
    .await;
    let all = receiver.metrics();
    let latest = |service: &str, name: &str| {
        all.iter()
            .rev()
            .find(|m| m.service == service && m.metric.name == name)
            .unwrap_or_else(|| panic!("{service} exported no {name}"))
    };

    let requests = latest("edgewise-gateway", "edgewise_gateway_requests");
    assert_eq!(requests.instance, "gw-traces");
    let Some(Data::Sum(sum)) = &requests.metric.data else {
        panic!("{requests:?}")
    };
    assert!(sum.is_monotonic);
    assert_eq!(
        sum.aggregation_temporality,
        AggregationTemporality::Cumulative as i32
    );

    // latency: a histogram whose buckets add up to its count
    let latency = latest(
        "edgewise-gateway",
        "edgewise_gateway_request_duration_seconds",
    );
    let Some(Data::Histogram(h)) = &latency.metric.data else {
        panic!("{latency:?}")
    };
    let p = h
        .data_points
        .iter()
        .find(|p| has(&attrs(&p.attributes), "task", "generate"))
        .expect("a generate latency point");
    assert_eq!(p.count, 3);
    assert_eq!(p.bucket_counts.iter().sum::<u64>(), 3);
    assert_eq!(p.bucket_counts.len(), p.explicit_bounds.len() + 1);
    assert!(p.sum.is_some_and(|s| s > 0.0));

    // the agent's per-model figures, under the node's id, and a gauge stays a gauge
    let served = latest("edgewise-agent", "edgewise_agent_requests");
    assert!(!served.instance.is_empty());
    let Some(Data::Sum(s)) = &served.metric.data else {
        panic!("{served:?}")
    };
    assert!(
        s.data_points
            .iter()
            .any(|p| has(&attrs(&p.attributes), "model", "tiny-lm-fp32")),
        "{served:?}"
    );
    let live = latest("edgewise-gateway", "edgewise_gateway_nodes_live");
    assert!(matches!(live.metric.data, Some(Data::Gauge(_))), "{live:?}");
    agent.stop();
    gw.stop();
    server.abort();
}

/// The collector's certificate, from the fleet tooling (`edgewise certs init`): its CA is no
/// system root, so a daemon trusts it only through `[telemetry] ca_file`.
fn collector_tls(dir: &Path) -> std::sync::Arc<edgewise_tls::Tls> {
    let out = dir.join("collector-tls");
    let status = std::process::Command::new(agent_bin().with_file_name("edgewise"))
        .args(["certs", "init", "--out"])
        .arg(&out)
        .args(["gateway:collector", "--host", "127.0.0.1"])
        .status()
        .unwrap();
    assert!(status.success());
    let files = edgewise_tls::TlsFiles {
        ca: out.join("ca.pem"),
        cert: out.join("gateway-collector.pem"),
        key: out.join("gateway-collector.key"),
    };
    edgewise_tls::Tls::load(files, edgewise_tls::ClientAuth::Optional).unwrap()
}

fn counter(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_collector_is_reached_when_its_ca_is_trusted_and_refused_when_not() {
    let dir = tempfile::tempdir().unwrap();
    let tls = collector_tls(dir.path());
    let ca = dir.path().join("collector-tls/ca.pem");

    // trusted through ca_file: the spans and the metrics arrive over TLS
    let (otlp, receiver, server) = OtlpReceiver::start_tls(tls.clone()).await;
    let trusted = dir.path().join("trusted");
    let (gw, agent, addr) = fleet_with(
        &trusted,
        &format!("https://127.0.0.1:{}", otlp.port()),
        &format!("ca_file = \"{}\"\n", ca.display()),
        2048,
        None,
    );
    let mut c = gateway_client(&addr);
    agent_ready(&c).await;
    generate(&mut c).await.unwrap();
    poll(Duration::from_secs(30), || {
        let spans = receiver.spans();
        let metrics = receiver.metrics();
        let arrived = spans.iter().any(|s| s.name == "gateway.generate")
            && spans.iter().any(|s| s.name == "agent.generate")
            && metrics
                .iter()
                .any(|m| m.metric.name == "edgewise_gateway_requests")
            && metrics
                .iter()
                .any(|m| m.metric.name == "edgewise_agent_requests");
        let seen = format!("over TLS: {} spans, {} metrics", spans.len(), metrics.len());
        async move { if arrived { Ok(()) } else { Err(seen) } }
    })
    .await;
    agent.stop();
    gw.stop();
    server.abort();

    // the same collector without ca_file: its certificate is not trusted, nothing is sent,
    // requests still succeed and the failures are counted
    let (otlp, receiver, server) = OtlpReceiver::start_tls(tls).await;
    let metrics = free_port();
    let (gw, agent, addr) = fleet_with(
        &dir.path().join("untrusted"),
        &format!("https://127.0.0.1:{}", otlp.port()),
        "",
        2048,
        Some(metrics),
    );
    let mut c = gateway_client(&addr);
    agent_ready(&c).await;
    generate(&mut c).await.unwrap();
    let text = poll(Duration::from_secs(30), || async move {
        let text = http_get(metrics, "/metrics").await;
        let failed = counter(&text, "edgewise_gateway_metric_export_failures_total");
        let spans_failed = counter(&text, "edgewise_gateway_trace_spans_failed_total");
        if failed > 0 && spans_failed > 0 {
            Ok(text)
        } else {
            Err(format!("no failed exports counted:\n{text}"))
        }
    })
    .await;
    assert_eq!(
        counter(&text, "edgewise_gateway_metric_exports_total"),
        0,
        "{text}"
    );
    assert!(receiver.spans().is_empty() && receiver.metrics().is_empty());
    agent.stop();
    gw.stop();
    server.abort();
}
