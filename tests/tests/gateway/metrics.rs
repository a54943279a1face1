//! The Prometheus endpoints of the gateway and the agent, scraped by a real Prometheus server
//! (Debian's package, fetched by `tools/fetch_prometheus.sh`, which `make test` runs): after a
//! few routed requests, Prometheus reports both targets up and answers queries for the
//! gateway's and the agent's request counters and latency histograms.

use edgewise_tests::harness as common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use edgewise_gateway::{Gateway, GatewayConfig};
use edgewise_proto as pb;
use tonic::Request;

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_gateway_and_the_agent() {
    let prometheus = repo_root().join("build/prometheus/prometheus");
    assert!(
        prometheus.exists(),
        "Prometheus is not installed at {}: `make test` fetches Debian's prometheus package \
         (tools/fetch_prometheus.sh); that fetch failed or was not run, so this test cannot scrape",
        prometheus.display()
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.yaml"),
        "routes:\n  - name: all\n    min_quality: 0\n    spill: wait\n",
    )
    .unwrap();
    let mut gc = GatewayConfig::new(vec![dir.path().to_path_buf()], "gw-metrics");
    gc.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = Gateway::start(gc, listener).await.unwrap();

    let models = models_dir(&["tiny-classify", "tiny-lm-fp32"]);
    let (mut ac, state) = config(models.path(), None);
    ac.gateways = vec![format!("http://{}", gw.addr)];
    ac.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let agent = TestAgent::start(ac, state).await;
    let agent_metrics = agent.agent.as_ref().unwrap().metrics_addr.unwrap();
    let gw_metrics = gw.metrics_addr.unwrap();

    let mut c = gateway_client(gw.addr);
    wait_fleet(&c, "the agent's models ready", |s| {
        s.nodes.iter().any(|n| n.live && n.models.len() == 2)
    })
    .await;
    for _ in 0..3 {
        let mut r = Request::new(pb::GatewayClassifyRequest {
            request: Some(pb::ClassifyRequest {
                model: String::new(),
                texts: vec!["is this hard?".into()],
                ..Default::default()
            }),
            routing: None,
        });
        r.metadata_mut()
            .insert("x-edgewise-tenant", "shop".parse().unwrap());
        c.classify(r).await.unwrap();
    }
    let mut r = Request::new(pb::GatewayGenerateRequest {
        request: Some(prompt("", "hello", 8)),
        routing: None,
    });
    r.metadata_mut()
        .insert("x-edgewise-tenant", "shop".parse().unwrap());
    let mut s = c.generate(r).await.unwrap().into_inner();
    while s.message().await.unwrap().is_some() {}

    // what the endpoints say themselves
    let text = http_get(gw_metrics, "/metrics").await;
    assert!(
        text.lines().any(|l| l == "edgewise_gateway_requests_total{route=\"all\",task=\"classify\",target=\"local\",outcome=\"OK\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("edgewise_gateway_time_to_first_token_seconds_bucket"),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l == "edgewise_gateway_nodes_live 1"),
        "{text}"
    );
    // the store: healthy, nothing waiting, and its write-latency histogram and flush counts
    for line in [
        "edgewise_gateway_store_healthy 1",
        "edgewise_gateway_store_pending_operations 0",
    ] {
        assert!(text.lines().any(|l| l == line), "{line}: {text}");
    }
    for family in [
        "edgewise_gateway_store_write_seconds_bucket",
        "edgewise_gateway_store_flushes_total",
        "edgewise_gateway_store_flushed_writes_total",
    ] {
        assert!(text.contains(family), "{family}: {text}");
    }
    let text = http_get(agent_metrics, "/metrics").await;
    assert!(
        text.lines()
            .any(|l| l == "edgewise_agent_requests_total{model=\"tiny-classify\"} 3"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l
                == "edgewise_agent_time_to_first_token_seconds_count{model=\"tiny-lm-fp32\"} 1"),
        "{text}"
    );
    // the generate model's batch loop: steps ran, and nothing is cached once it is idle
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}{{model=\"tiny-lm-fp32\"}} ")))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {name} for tiny-lm-fp32 in:\n{text}"))
    };
    assert!(value("edgewise_agent_decode_steps_total") > 0.0, "{text}");
    assert!(
        value("edgewise_agent_decode_rows_total") >= value("edgewise_agent_decode_steps_total")
    );
    assert_eq!(value("edgewise_agent_kv_cache_bytes"), 0.0, "{text}");
    assert!(value("edgewise_agent_kv_budget_bytes") > 0.0, "{text}");

    // a real Prometheus scrapes both
    let web = free_port();
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: gateway\n    static_configs:\n      - targets: ['{gw_metrics}']\n  - job_name: agent\n    static_configs:\n      - targets: ['{agent_metrics}']\n"
        ),
    )
    .unwrap();
    let mut prom = Command::new(&prometheus)
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
        .spawn()
        .unwrap();
    let query = |q: &str| {
        let path = format!("/api/v1/query?query={}", encode(q));
        async move {
            match tokio::net::TcpStream::connect(web).await {
                Ok(_) => http_get(web, &path).await,
                Err(_) => String::new(),
            }
        }
    };
    for (q, want) in [
        ("up{job=\"gateway\"}", "\"1\"]"),
        ("up{job=\"agent\"}", "\"1\"]"),
        (
            "edgewise_gateway_requests_total{task=\"classify\",outcome=\"OK\"}",
            "\"3\"]",
        ),
        (
            "edgewise_agent_requests_total{model=\"tiny-classify\"}",
            "\"3\"]",
        ),
        (
            "edgewise_gateway_request_duration_seconds_count{task=\"generate\"}",
            "\"1\"]",
        ),
    ] {
        wait_for(
            &format!("Prometheus to answer {q} with {want}"),
            Duration::from_secs(60),
            || {
                let r = query(q);
                async move { r.await.contains(want) }
            },
        )
        .await;
    }
    let _ = prom.kill();
    let _ = prom.wait();
    agent.stop().await;
    gw.stop().await;
}
