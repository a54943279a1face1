//! Mutual TLS and caller identity: certificates made by the real `edgewise certs init`, a
//! gateway and an agent on port-0 listeners talking over TLS, callers proving their tenant
//! with a certificate or a bearer token, peers with missing, foreign, expired or mismatched
//! certificates refused, and certificates replaced while a request is in flight.

use edgewise_tests::harness as common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use edgewise_agent::Agent;
use edgewise_gateway::{Gateway, GatewayConfig};
use edgewise_proto as pb;
use edgewise_tls::issue::{Ca, Validity};
use edgewise_tls::{Identity, TlsFiles, TlsMode};
use tokio::net::TcpListener;
use tonic::transport::Endpoint;
use tonic::{Code, Request};

const TOKEN: &str = "ew_test-token-for-shop";

/// `edgewise certs init` (the real binary): a CA, a gateway, two nodes, two tenants.
fn certs(dir: &Path) -> PathBuf {
    let out = dir.join("tls");
    let status = Command::new(agent_bin().with_file_name("edgewise"))
        .args(["certs", "init", "--out"])
        .arg(&out)
        .args([
            "gateway:gw",
            "node:edge-a",
            "node:edge-b",
            "tenant:shop",
            "tenant:ops",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    out
}

fn files(tls: &Path, stem: &str) -> TlsFiles {
    TlsFiles {
        ca: tls.join("ca.pem"),
        cert: tls.join(format!("{stem}.pem")),
        key: tls.join(format!("{stem}.key")),
    }
}

const POLICY: &str = "\
routes:
  - name: billing-only
    match: {tenants: [billing], tasks: [classify]}
    label_set: greek
    min_quality: 0
    spill: wait
  - name: all
    min_quality: 0
    spill: wait
";

async fn start_gateway(dir: &Path, tls: &Path) -> Gateway {
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(policies.join("p.yaml"), POLICY).unwrap();
    let mut config = GatewayConfig::new(vec![policies], "gw");
    config.tls = TlsMode::Mutual(files(tls, "gateway-gw"));
    config.tokens = edgewise_gateway::auth::Tokens::new([(
        edgewise_gateway::auth::hash(TOKEN),
        "shop".to_string(),
    )]);
    config.operators = vec!["ops".into()];
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    Gateway::start(config, listener).await.unwrap()
}

async fn start_agent(tls: &Path, node: &str, gateway: &Gateway) -> (Agent, tempfile::TempDir) {
    let models = models_dir(&["tiny-classify", "tiny-lm-fp32"]);
    let (mut c, state) = config(models.path(), None);
    // the models folder lives as long as the state folder: keep it inside
    let kept = state.path().join("models");
    copy_dir(
        &models.path().join("tiny-classify"),
        &kept.join("tiny-classify"),
    );
    copy_dir(
        &models.path().join("tiny-lm-fp32"),
        &kept.join("tiny-lm-fp32"),
    );
    c.models_dir = kept;
    c.gateways = vec![format!("https://{}", gateway.addr)];
    c.tls = TlsMode::Mutual(files(tls, &format!("node-{node}")));
    // besides gateways, the `ops` tenant may call the agent directly
    c.operators = vec!["ops".into()];
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut agent = Agent::start(c, listener).await.unwrap();
    agent.loaded().await;
    (agent, state)
}

/// A gateway client over TLS presenting `identity`'s certificate (or none).
async fn tls_client(
    tls: &Path,
    identity: Option<&str>,
    addr: impl std::fmt::Display,
) -> GatewayClient {
    let f = identity.map(|s| files(tls, s));
    let config = edgewise_tls::client_config(
        &tls.join("ca.pem"),
        f.as_ref().map(|f| (f.cert.as_path(), f.key.as_path())),
    )
    .unwrap();
    let endpoint = Endpoint::from_shared(format!("https://{addr}")).unwrap();
    let ch = edgewise_tls::net::channel(endpoint, edgewise_tls::net::fixed(config))
        .await
        .unwrap();
    pb::gateway_client::GatewayClient::new(ch)
}

fn classify(route: &str) -> pb::GatewayClassifyRequest {
    pb::GatewayClassifyRequest {
        request: Some(pb::ClassifyRequest {
            model: String::new(),
            texts: vec!["is this easy?".into()],
            ..Default::default()
        }),
        routing: Some(pb::RoutingHints {
            route: route.into(),
            ..Default::default()
        }),
    }
}

fn bearer<T>(msg: T, token: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

async fn wait_node(ops: &GatewayClient, node: &str) {
    let node = node.to_string();
    wait_fleet(ops, "the node to report over TLS", move |s| {
        s.nodes.iter().any(|n| {
            n.node_id == node
                && n.live
                && n.models
                    .iter()
                    .all(|m| m.state == pb::ModelState::Ready as i32)
        })
    })
    .await;
}

// the operator's CLI runs as a blocking child process while the agent serves on another worker
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_report_and_serve_over_mutual_tls_and_callers_prove_their_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let tls = certs(dir.path());
    let gw = start_gateway(dir.path(), &tls).await;
    let (agent, _state) = start_agent(&tls, "edge-a", &gw).await;
    // the node's id is the one its certificate names
    assert_eq!(agent.node.id, "edge-a");
    let ops = tls_client(&tls, Some("tenant-ops"), gw.addr).await;
    wait_node(&ops, "edge-a").await;

    // a tenant certificate: served by the agent (the gateway dials it over TLS too)
    let mut shop = tls_client(&tls, Some("tenant-shop"), gw.addr).await;
    let r = shop.classify(classify("")).await.unwrap().into_inner();
    let d = r.decision.unwrap();
    assert!(
        matches!(d.target, Some(pb::decision::Target::Local(ref l)) if l.node_id == "edge-a" && l.addr.starts_with("https://")),
        "{d:?}"
    );
    // a bearer token over TLS without a client certificate; the tenant header is ignored
    let mut anon = tls_client(&tls, None, gw.addr).await;
    let mut req = bearer(classify(""), TOKEN);
    req.metadata_mut()
        .insert("x-edgewise-tenant", "ops".parse().unwrap());
    assert!(anon.classify(req).await.is_ok());
    // the token's tenant is shop, not the header's ops: operator calls are refused
    let mut req = bearer(pb::FleetStatusRequest {}, TOKEN);
    req.metadata_mut()
        .insert("x-edgewise-tenant", "ops".parse().unwrap());
    let e = anon.fleet_status(req).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    // no credentials, or a token the gateway does not know: UNAUTHENTICATED, token not echoed
    let e = anon.classify(classify("")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("no credentials"), "{}", e.message());
    let e = anon
        .classify(bearer(classify(""), "ew_not-a-known-token"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(!e.message().contains("ew_not"), "{}", e.message());

    // a route the tenant may not use: PERMISSION_DENIED with the reason
    let e = shop.classify(classify("billing-only")).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(
        e.message()
            .contains("tenant `shop` may not use route `billing-only`"),
        "{}",
        e.message()
    );

    // a node certificate is not a caller credential
    let mut node = tls_client(&tls, Some("node-edge-b"), gw.addr).await;
    let e = node.classify(classify("")).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    // plain text to a TLS gateway does not get through
    let mut plain = gateway_client(gw.addr);
    assert!(plain.classify(chat_free_classify()).await.is_err());

    // the agent refuses callers without a certificate from the fleet CA, in the handshake.
    // Under TLS 1.3 the client's side of the handshake ends before the agent has judged its
    // (missing) certificate, so the verdict is the first thing the client reads: the alert
    let no_cert = edgewise_tls::client_config(&tls.join("ca.pem"), None).unwrap();
    let tcp = tokio::net::TcpStream::connect(agent.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut conn = tokio_rustls::TlsConnector::from(no_cert)
        .connect(name, tcp)
        .await
        .unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::io::AsyncReadExt::read(&mut conn, &mut byte);
    let e = tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("no verdict within 10 s: the agent let the caller in")
        .expect_err("an agent let in a caller without a certificate");
    assert!(
        e.to_string()
            .contains("received fatal alert: CertificateRequired"),
        "{e:?}"
    );

    // a tenant service going around the gateway (and its policy, budget and audit) is refused
    // by the agent, though its certificate is the fleet's; so is another node
    for who in ["tenant-shop", "node-edge-b"] {
        let f = files(&tls, who);
        let with_cert =
            edgewise_tls::client_config(&f.ca, Some((f.cert.as_path(), f.key.as_path()))).unwrap();
        let ch = edgewise_tls::net::channel_lazy(
            Endpoint::from_shared(format!("https://{}", agent.addr)).unwrap(),
            edgewise_tls::net::fixed(with_cert),
        );
        let e = pb::agent_client::AgentClient::new(ch)
            .classify(pb::ClassifyRequest {
                model: "tiny-classify".into(),
                texts: vec!["x".into()],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{who}: {e:?}");
        assert!(
            e.message()
                .contains("may not call this agent: agents serve gateways"),
            "{who}: {}",
            e.message()
        );
    }

    // the operator's client reaches a TLS agent with an operator's certificate, and only with one
    let call = |with_cert: bool| {
        let mut c = Command::new(agent_bin());
        c.args(["call", "--addr"])
            .arg(format!("https://{}", agent.addr))
            .arg("--ca-file")
            .arg(tls.join("ca.pem"));
        if with_cert {
            c.arg("--cert-file")
                .arg(tls.join("tenant-ops.pem"))
                .arg("--key-file")
                .arg(tls.join("tenant-ops.key"));
        }
        c.args(["classify", "--model", "tiny-classify", "is this easy?"]);
        c.output().unwrap()
    };
    let ok = call(true);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(!call(false).status.success());
    agent.stop().await.unwrap();
    gw.stop().await;
}

fn chat_free_classify() -> Request<pb::GatewayClassifyRequest> {
    let mut r = Request::new(classify(""));
    r.metadata_mut()
        .insert("x-edgewise-tenant", "shop".parse().unwrap());
    r
}

/// One report over a TLS connection presenting `client` (cert, key) and trusting `ca`.
async fn report_as(
    gw: &Gateway,
    ca: &Path,
    client: Option<(&Path, &Path)>,
    node_id: &str,
) -> Result<(), tonic::Status> {
    let config = edgewise_tls::client_config(ca, client).unwrap();
    let endpoint = Endpoint::from_shared(format!("https://{}", gw.addr)).unwrap();
    let ch = match edgewise_tls::net::channel(endpoint, edgewise_tls::net::fixed(config)).await {
        Ok(ch) => ch,
        Err(e) => return Err(tonic::Status::unavailable(format!("{e:?}"))),
    };
    let report = pb::NodeReport {
        node_id: node_id.into(),
        advertise_addr: "https://127.0.0.1:9".into(),
        report_interval_ms: 1000,
        ..Default::default()
    };
    let mut acks = pb::fleet_client::FleetClient::new(ch)
        .report(tokio_stream::iter(vec![report]))
        .await?
        .into_inner();
    match acks.message().await? {
        Some(_) => Ok(()),
        None => Err(tonic::Status::unknown("no ack")),
    }
}

#[tokio::test]
async fn peers_with_missing_foreign_expired_or_mismatched_certificates_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tls = certs(dir.path());
    let gw = start_gateway(dir.path(), &tls).await;
    let ca = tls.join("ca.pem");
    let node_a = files(&tls, "node-edge-a");
    let pair = |f: &TlsFiles| (f.cert.clone(), f.key.clone());
    let (cert, key) = pair(&node_a);

    // the real thing works
    report_as(&gw, &ca, Some((&cert, &key)), "edge-a")
        .await
        .unwrap();

    // no certificate
    let e = report_as(&gw, &ca, None, "edge-a").await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");

    // a certificate for node edge-a reporting as edge-b
    let e = report_as(&gw, &ca, Some((&cert, &key)), "edge-b")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(
        e.message().contains("certificate names node `edge-a`"),
        "{}",
        e.message()
    );

    // a tenant's certificate is not a node's
    let shop = files(&tls, "tenant-shop");
    let e = report_as(&gw, &ca, Some((&shop.cert, &shop.key)), "shop")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    // a certificate from another CA: the handshake is refused
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let foreign = Ca::generate(Validity::days(1)).unwrap();
    let issued = foreign
        .issue(
            &Identity::Node("edge-a".into()),
            &["127.0.0.1".into()],
            Validity::days(1),
        )
        .unwrap();
    std::fs::write(other.join("f.pem"), &issued.cert_pem).unwrap();
    std::fs::write(other.join("f.key"), &issued.key_pem).unwrap();
    let e = report_as(
        &gw,
        &ca,
        Some((&other.join("f.pem"), &other.join("f.key"))),
        "edge-a",
    )
    .await
    .unwrap_err();
    // the gateway's TLS alert: the signature does not verify against the fleet CA
    assert!(
        format!("{e:?}").contains("received fatal alert: DecryptError"),
        "{e:?}"
    );

    // an expired certificate from the fleet CA: refused too
    let ours = Ca::from_pem(
        &std::fs::read_to_string(tls.join("ca.pem")).unwrap(),
        &std::fs::read_to_string(tls.join("ca.key")).unwrap(),
    )
    .unwrap();
    let past = time::OffsetDateTime::now_utc() - time::Duration::days(3);
    let expired = ours
        .issue(
            &Identity::Node("edge-a".into()),
            &["127.0.0.1".into()],
            Validity {
                not_before: past,
                not_after: past + time::Duration::days(1),
            },
        )
        .unwrap();
    std::fs::write(other.join("x.pem"), &expired.cert_pem).unwrap();
    std::fs::write(other.join("x.key"), &expired.key_pem).unwrap();
    let e = report_as(
        &gw,
        &ca,
        Some((&other.join("x.pem"), &other.join("x.key"))),
        "edge-a",
    )
    .await
    .unwrap_err();
    assert!(
        format!("{e:?}").contains("received fatal alert: CertificateExpired"),
        "{e:?}"
    );

    // and none of the refused ones reached the fleet view
    let mut ops = tls_client(&tls, Some("tenant-ops"), gw.addr).await;
    let nodes: Vec<String> = fleet_status_as(&mut ops)
        .await
        .nodes
        .into_iter()
        .map(|n| n.node_id)
        .collect();
    assert_eq!(nodes, vec!["edge-a".to_string()]);
    gw.stop().await;
}

async fn fleet_status_as(c: &mut GatewayClient) -> pb::FleetStatusResponse {
    c.fleet_status(pb::FleetStatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// The certificate the server at `addr` presents to a new connection.
async fn presented(ca: &Path, addr: std::net::SocketAddr) -> Vec<u8> {
    let config = edgewise_tls::client_config(ca, None).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    conn.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn der_of(pem_file: &Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_file(pem_file)
        .unwrap()
        .to_vec()
}

#[tokio::test]
async fn certificates_are_replaced_on_reload_without_failing_requests_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let tls = certs(dir.path());
    let gw = start_gateway(dir.path(), &tls).await;
    let (agent, _state) = start_agent(&tls, "edge-a", &gw).await;
    let ops = tls_client(&tls, Some("tenant-ops"), gw.addr).await;
    wait_node(&ops, "edge-a").await;
    let ca = tls.join("ca.pem");
    let old = der_of(&tls.join("gateway-gw.pem"));
    assert_eq!(presented(&ca, gw.addr).await, old);

    // a long generation in flight through the gateway, read slowly
    let mut shop = tls_client(&tls, Some("tenant-shop"), gw.addr).await;
    let mut req = pb::GatewayGenerateRequest {
        request: Some(pb::GenerateRequest {
            input: Some(pb::generate_request::Input::Prompt(
                "once upon a time".into(),
            )),
            max_tokens: 200,
            ..Default::default()
        }),
        routing: None,
    };
    req.request.as_mut().unwrap().stop.clear();
    let mut stream = shop.generate(req).await.unwrap().into_inner();
    let first = stream.message().await.unwrap();
    assert!(first.is_some());

    // renewed certificates for the gateway and the node, written over the old files
    let renewed = dir.path().join("renewed");
    let status = Command::new(agent_bin().with_file_name("edgewise"))
        .args(["certs", "issue", "--ca-dir"])
        .arg(&tls)
        .arg("--out")
        .arg(&renewed)
        .args(["gateway:gw", "node:edge-a", "--days", "30"])
        .status()
        .unwrap();
    assert!(status.success());
    for stem in ["gateway-gw", "node-edge-a"] {
        for ext in ["pem", "key"] {
            let name = format!("{stem}.{ext}");
            let tmp = tls.join(format!(".{name}"));
            std::fs::copy(renewed.join(&name), &tmp).unwrap();
            std::fs::rename(&tmp, tls.join(&name)).unwrap();
        }
    }
    let new = der_of(&tls.join("gateway-gw.pem"));
    assert_ne!(new, old);
    gw.reload.notify_one(); // what SIGHUP does
    agent.reload(&agent.node.config.clone()).unwrap(); // what SIGHUP does
    wait_for(
        "new connections to get the renewed certificate",
        Duration::from_secs(10),
        || {
            let ca = ca.clone();
            let new = new.clone();
            async move { presented(&ca, gw.addr).await == new }
        },
    )
    .await;
    assert_eq!(
        presented(&ca, agent.addr).await,
        der_of(&tls.join("node-edge-a.pem"))
    );

    // the generation that started before the swap finishes normally
    let mut done = None;
    while let Some(m) = stream.message().await.unwrap() {
        if let Some(c) = m.chunk
            && c.done.is_some()
        {
            done = c.done;
        }
    }
    assert!(done.is_some(), "the stream in flight ended without `done`");
    // the connection opened before the swap keeps working
    assert!(shop.classify(classify("")).await.is_ok());

    // and new requests are served over the renewed certificates
    let mut fresh = tls_client(&tls, Some("tenant-shop"), gw.addr).await;
    assert!(fresh.classify(classify("")).await.is_ok());
    agent.stop().await.unwrap();
    gw.stop().await;
}
