//! Policy hot reload under load: a valid edit changes routing with no failed request; an
//! invalid edit is rejected and the policy in force stays.

use edgewise_tests::harness as common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use edgewise_gateway::{Gateway, GatewayConfig};
use edgewise_proto as pb;
use tonic::Request;

fn policy(route: &str) -> String {
    format!("routes:\n  - name: {route}\n    min_quality: 0.1\n    spill: wait\n")
}

/// Replaces the file at once (as `mv` does), so the watcher never sees half an edit.
fn write(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn embed_req() -> Request<pb::GatewayEmbedRequest> {
    let mut r = Request::new(pb::GatewayEmbedRequest {
        request: Some(pb::EmbedRequest {
            model: String::new(),
            texts: vec!["hello".into()],
            ..Default::default()
        }),
        routing: None,
    });
    r.metadata_mut()
        .insert("x-edgewise-tenant", "shop".parse().unwrap());
    r
}

#[tokio::test]
async fn valid_edits_apply_under_load_and_invalid_ones_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.yaml");
    write(&file, &policy("v1"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let g = Gateway::start(
        GatewayConfig::new(vec![dir.path().to_path_buf()], "gw"),
        listener,
    )
    .await
    .unwrap();
    let models = models_dir(&["tiny-embed"]);
    let (mut cfg, state) = config(models.path(), None);
    cfg.gateways = vec![format!("http://{}", g.addr)];
    let agent = TestAgent::start(cfg, state).await;
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", g.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let client = pb::gateway_client::GatewayClient::new(ch);
    let c = client.clone();
    wait_for("the agent is routable", Duration::from_secs(20), || {
        let mut c = c.clone();
        async move { c.embed(embed_req()).await.is_ok() }
    })
    .await;

    // load: embed requests back to back from 4 callers until told to stop
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let routes = Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (mut c, stop, ok, failed, routes) = (
                client.clone(),
                stop.clone(),
                ok.clone(),
                failed.clone(),
                routes.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    match c.embed(embed_req()).await {
                        Ok(r) => {
                            ok.fetch_add(1, Ordering::SeqCst);
                            routes
                                .lock()
                                .unwrap()
                                .insert(r.into_inner().decision.unwrap().route);
                        }
                        Err(s) => {
                            eprintln!("failed under reload: {s:?}");
                            failed.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            })
        })
        .collect();

    let routes1 = routes.clone();
    wait_for(
        "requests are routed by the first policy",
        Duration::from_secs(10),
        || {
            let r = routes1.clone();
            async move { r.lock().unwrap().contains("v1") }
        },
    )
    .await;
    let before = g.state.policy().hash.clone();
    write(&file, &policy("v2"));
    let routes2 = routes.clone();
    wait_for(
        "requests are routed by the edited policy",
        Duration::from_secs(10),
        || {
            let r = routes2.clone();
            async move { r.lock().unwrap().contains("v2") }
        },
    )
    .await;
    assert_ne!(g.state.policy().hash, before);
    assert_eq!(g.state.metrics.reloads.load(Ordering::SeqCst), 1);

    // an invalid edit: rejected, counted, and v2 stays in force
    write(&file, "routes:\n  - name: v3\n    min_quality: 9\n");
    let st = g.state.clone();
    wait_for(
        "the invalid edit is rejected",
        Duration::from_secs(10),
        || {
            let st = st.clone();
            async move { st.metrics.reload_failures.load(Ordering::SeqCst) == 1 }
        },
    )
    .await;
    let mut c = client.clone();
    let r = c.embed(embed_req()).await.unwrap().into_inner();
    assert_eq!(r.decision.unwrap().route, "v2");
    let status = c
        .fleet_status(pb::FleetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.policy_hash, g.state.policy().hash);

    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "requests failed during reloads"
    );
    assert!(ok.load(Ordering::SeqCst) > 0);
    assert_eq!(
        *routes.lock().unwrap(),
        ["v1".to_string(), "v2".to_string()].into_iter().collect()
    );
    agent.stop().await;
    g.stop().await;
}
