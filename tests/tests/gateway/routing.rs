//! The gateway with real agents on tiny fixture models: smallest adequate model, spill to a
//! larger one under load, routing again when an agent refuses, and nodes leaving routing.

use edgewise_tests::harness as common;

use std::time::Duration;

use common::*;
use edgewise_gateway::{Gateway, GatewayConfig};
use edgewise_proto as pb;
use tonic::Request;

const POLICY: &str = "default_data_class: internal\nroutes:\n  - name: local\n    min_quality: 0.1\n    spill: larger\n";

async fn gateway(policy: &str) -> (Gateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.yaml"), policy).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = GatewayConfig::new(vec![dir.path().to_path_buf()], "gw-test");
    (Gateway::start(config, listener).await.unwrap(), dir)
}

fn client(g: &Gateway) -> GatewayClient {
    gateway_client(g.addr)
}

fn with_tenant<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("x-edgewise-tenant", "shop".parse().unwrap());
    r
}

fn gen_req(max_tokens: u32) -> pb::GatewayGenerateRequest {
    pb::GatewayGenerateRequest {
        request: Some(prompt("", "Hello, tiny LM!", max_tokens)),
        routing: None,
    }
}

/// Reads a gateway stream: (decision, text, done).
async fn run_gen(c: &mut GatewayClient, max_tokens: u32) -> (pb::Decision, String) {
    let mut s = c
        .generate(with_tenant(gen_req(max_tokens)))
        .await
        .unwrap()
        .into_inner();
    let decision = s.message().await.unwrap().unwrap().decision.unwrap();
    let mut text = String::new();
    while let Some(m) = s.message().await.unwrap() {
        text.push_str(&m.chunk.unwrap().text);
    }
    (decision, text)
}

fn local(d: &pb::Decision) -> (String, String) {
    match &d.target {
        Some(pb::decision::Target::Local(l)) => (l.node_id.clone(), l.model.clone()),
        other => panic!("not local: {other:?}"),
    }
}

async fn agent_for(g: &Gateway, models: &[&str], limits: &[(&str, u32, u32)]) -> TestAgent {
    let dir = models_dir(
        &models
            .iter()
            .copied()
            .filter(|m| *m != "tiny-lm-big")
            .collect::<Vec<_>>(),
    );
    if models.contains(&"tiny-lm-big") {
        // the fp32 test model again, declared larger: a bigger sibling for spill tests
        copy_dir(
            &fixtures().join("tiny-lm-fp32"),
            &dir.path().join("tiny-lm-big"),
        );
        let m = std::fs::read_to_string(dir.path().join("tiny-lm-big/model.toml")).unwrap();
        let m = m
            .replace("name = \"tiny-lm-fp32\"", "name = \"tiny-lm-big\"")
            .replace("parameters = 107200", "parameters = 500000");
        std::fs::write(dir.path().join("tiny-lm-big/model.toml"), m).unwrap();
    }
    let (mut cfg, state) = config(dir.path(), None);
    cfg.gateways = vec![format!("http://{}", g.addr)];
    for (m, c, q) in limits {
        limit(&mut cfg, m, *c, *q);
    }
    let a = TestAgent::start(cfg, state).await;
    std::mem::forget(dir); // the agent's models stay on disk for the test's lifetime
    a
}

async fn wait_live(c: &mut GatewayClient, nodes: usize) {
    wait_fleet(c, "the gateway sees the agents' ready models", move |s| {
        s.nodes
            .iter()
            .filter(|n| {
                n.live
                    && n.models
                        .iter()
                        .all(|m| m.state == pb::ModelState::Ready as i32)
            })
            .count()
            == nodes
    })
    .await;
}

#[tokio::test]
async fn routes_to_the_smallest_adequate_model_and_spills_when_it_is_saturated() {
    let (g, _p) = gateway(POLICY).await;
    // the fp32 test model (it never stops early, so a held request keeps its slot) and a
    // larger sibling on another node
    let small = agent_for(
        &g,
        &["tiny-lm-fp32", "tiny-embed"],
        &[("tiny-lm-fp32", 1, 0)],
    )
    .await;
    let large = agent_for(&g, &["tiny-lm-big", "tiny-classify"], &[]).await;
    let mut c = client(&g);
    wait_live(&mut c, 2).await;

    let (d, text) = run_gen(&mut c, 6).await;
    assert_eq!(local(&d).1, "tiny-lm-fp32");
    assert_eq!(
        (d.route.as_str(), d.rule.as_str(), d.data_class.as_str()),
        ("local", "smallest", "internal")
    );
    assert!(!text.is_empty());
    assert!(
        d.excluded
            .iter()
            .any(|e| e.candidate.ends_with("/tiny-lm-big")),
        "{:?}",
        d.excluded
    );

    // reports lag: wait until the gateway has heard that the first request finished
    wait_fleet(&c, "the small model is idle in the gateway's view", |s| {
        s.nodes
            .iter()
            .flat_map(|n| &n.models)
            .any(|m| m.name == "tiny-lm-fp32" && m.in_flight == 0)
    })
    .await;
    // hold the q4 model's only slot (a caller that stops reading); the next request spills
    let mut slow = pb::gateway_client::GatewayClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{}", g.addr))
            .unwrap()
            .initial_stream_window_size(Some(1024))
            .initial_connection_window_size(Some(1024))
            .connect()
            .await
            .unwrap(),
    );
    let mut held = slow
        .generate(with_tenant(gen_req(490)))
        .await
        .unwrap()
        .into_inner();
    let first = held.message().await.unwrap().unwrap().decision.unwrap();
    assert_eq!(local(&first).1, "tiny-lm-fp32");
    let (d, _) = run_gen(&mut c, 4).await;
    assert_eq!(
        (local(&d).1.as_str(), d.rule.as_str()),
        ("tiny-lm-big", "spill: larger"),
        "{:?}",
        d.excluded
    );

    // embed and classify route to the only model of their task, and say so
    let e = c
        .embed(with_tenant(pb::GatewayEmbedRequest {
            request: Some(pb::EmbedRequest {
                model: String::new(),
                texts: vec!["hello".into()],
                ..Default::default()
            }),
            routing: None,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(local(&e.decision.unwrap()).1, "tiny-embed");
    assert_eq!(e.response.unwrap().embeddings[0].values.len(), 32);

    // no tenant: refused
    let err = c.generate(gen_req(4)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    drop(held);

    // a stopped agent leaves routing when its stream ends
    let large_id = large.agent.as_ref().unwrap().node.id.clone();
    large.stop().await;
    wait_fleet(&c, "the stopped node is no longer live", |s| {
        s.nodes.iter().any(|n| n.node_id == large_id && !n.live)
    })
    .await;
    let explain = c
        .explain(with_tenant(pb::ExplainRequest {
            task: pb::Task::Classify as i32,
            routing: None,
            text: "x".into(),
            max_tokens: 0,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(explain.rule, "refused");
    assert_eq!(
        explain.refusal,
        "route `local`: no adequate local classify model (quality >= 0.1, context >= 1) and the route allows no external provider"
    );
    assert!(
        explain
            .excluded
            .iter()
            .any(|e| e.reason == "node is not live"),
        "{:?}",
        explain.excluded
    );
    let err = c
        .classify(with_tenant(pb::GatewayClassifyRequest {
            request: Some(pb::ClassifyRequest {
                model: String::new(),
                texts: vec!["x".into()],
                ..Default::default()
            }),
            routing: None,
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    small.stop().await;
    g.stop().await;
}

#[tokio::test]
async fn a_request_is_routed_again_when_its_agent_refuses_before_the_first_token() {
    let (g, _p) = gateway(POLICY).await;
    // the smallest model's agent reports rarely, so the gateway's view of it goes stale
    let dir = models_dir(&["tiny-lm-fp32"]);
    let (mut cfg, state) = config(dir.path(), None);
    cfg.gateways = vec![format!("http://{}", g.addr)];
    cfg.report_interval = Duration::from_secs(60);
    limit(&mut cfg, "tiny-lm-fp32", 1, 0);
    let a = TestAgent::start(cfg, state).await;
    let b = agent_for(&g, &["tiny-lm-big"], &[]).await;
    let mut c = client(&g);
    wait_live(&mut c, 2).await;
    // a caller holds the small model's only slot directly at the agent; the gateway cannot know
    let mut direct = slow_reader(&a.url).await;
    let mut held = direct
        .generate(prompt("tiny-lm-fp32", "Hello, tiny LM!", 490))
        .await
        .unwrap()
        .into_inner();
    assert!(held.message().await.unwrap().is_some());

    let (d, text) = run_gen(&mut c, 4).await;
    let a_id = a.agent.as_ref().unwrap().node.id.clone();
    assert_eq!(local(&d).1, "tiny-lm-big");
    assert_eq!(d.retried.len(), 1, "{:?}", d.retried);
    assert_eq!(d.retried[0].candidate, format!("{a_id}/tiny-lm-fp32"));
    assert!(
        d.retried[0]
            .reason
            .starts_with("ResourceExhausted: model `tiny-lm-fp32` is at capacity"),
        "{:?}",
        d.retried
    );
    assert!(!text.is_empty());
    drop(held);
    a.stop().await;
    b.stop().await;
    g.stop().await;
}

#[tokio::test]
async fn the_gateway_serves_reflection_and_health() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let (g, _p) = gateway(POLICY).await;
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", g.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut r = ServerReflectionClient::new(ch.clone());
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = r
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        resp.message().await.unwrap().unwrap().message_response
    else {
        panic!("not a service list")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "edgewise.v1.Gateway",
        "edgewise.v1.Fleet",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == want), "{names:?}");
    }
    let mut h = tonic_health::pb::health_client::HealthClient::new(ch);
    let st = h
        .check(tonic_health::pb::HealthCheckRequest {
            service: "edgewise.v1.Gateway".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        st.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    g.stop().await;
}

#[tokio::test]
async fn a_request_is_routed_again_when_its_agent_cannot_be_reached() {
    let (g, _p) = gateway(POLICY).await;
    // the smallest model's node advertises an address where nothing listens (a lost agent
    // whose report stream has not yet timed out, as far as the gateway can tell)
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let dir = models_dir(&["tiny-lm-fp32"]);
    let (mut cfg, state) = config(dir.path(), None);
    cfg.gateways = vec![format!("http://{}", g.addr)];
    cfg.advertise = Some(format!("http://{dead}"));
    let a = TestAgent::start(cfg, state).await;
    let b = agent_for(&g, &["tiny-lm-big"], &[]).await;
    let mut c = client(&g);
    wait_live(&mut c, 2).await;
    let (d, text) = run_gen(&mut c, 4).await;
    let a_id = a.agent.as_ref().unwrap().node.id.clone();
    assert_eq!(local(&d).1, "tiny-lm-big");
    assert_eq!(d.retried.len(), 1, "{:?}", d.retried);
    assert_eq!(d.retried[0].candidate, format!("{a_id}/tiny-lm-fp32"));
    assert!(
        d.retried[0].reason.starts_with("Unavailable: "),
        "{:?}",
        d.retried
    );
    assert!(!text.is_empty());
    // the unreachable node is out of routing for a while: the next request goes straight on
    let (d, _) = run_gen(&mut c, 4).await;
    assert_eq!(local(&d).1, "tiny-lm-big");
    assert!(d.retried.is_empty(), "{:?}", d.retried);
    assert!(
        d.excluded.iter().any(
            |e| e.candidate == format!("{a_id}/tiny-lm-fp32") && e.reason == "node is not live"
        ),
        "{:?}",
        d.excluded
    );
    a.stop().await;
    b.stop().await;
    g.stop().await;
}

#[tokio::test]
async fn the_gateway_and_its_agents_enforce_one_request_contract() {
    let (g, _p) = gateway(POLICY).await;
    let a = agent_for(&g, &["tiny-lm-fp32"], &[]).await;
    let mut c = client(&g);
    wait_live(&mut c, 1).await;
    // nine stop sequences break the agents' limit: the gateway refuses them itself, in the
    // agent's words, rather than routing a request no agent will take
    let mut req = gen_req(4);
    req.request.as_mut().unwrap().stop = vec!["zz".into(); 9];
    let err = c.generate(with_tenant(req)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message()
            .starts_with("request.stop: at most 8 sequences of 1 to 64 bytes (got 9"),
        "{}",
        err.message()
    );
    let mut direct = pb::agent_client::AgentClient::connect(a.url.clone())
        .await
        .unwrap();
    let mut at_agent = prompt("tiny-lm-fp32", "Hello", 4);
    at_agent.stop = vec!["zz".into(); 9];
    let err = direct.generate(at_agent).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message()
            .contains("stop: at most 8 sequences of 1 to 64 bytes (got 9"),
        "{}",
        err.message()
    );
    // a grpc-timeout that is not one is refused at both, never taken as no deadline
    let mut r = with_tenant(gen_req(4));
    r.metadata_mut()
        .insert("grpc-timeout", "soon".parse().unwrap());
    let err = c.generate(r).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message()
            .contains("grpc-timeout `soon` is not a gRPC timeout"),
        "{}",
        err.message()
    );
    let mut r = tonic::Request::new(prompt("tiny-lm-fp32", "Hello", 4));
    r.metadata_mut()
        .insert("grpc-timeout", "soon".parse().unwrap());
    let err = direct.generate(r).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    a.stop().await;
    g.stop().await;
}

/// An agent that answers one chunk and then holds the stream open, or (for `hang`) never
/// answers at all; registered with the gateway through the Fleet service like a real one.
struct StallingAgent;

type ChunkStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::GenerateChunk, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl pb::agent_server::Agent for StallingAgent {
    type GenerateStream = ChunkStream;

    async fn generate(
        &self,
        request: Request<pb::GenerateRequest>,
    ) -> Result<tonic::Response<ChunkStream>, tonic::Status> {
        if request.get_ref().model == "hang" {
            futures::future::pending::<()>().await;
        }
        let first = futures::stream::once(async {
            Ok(pb::GenerateChunk {
                text: "Hel".into(),
                ..Default::default()
            })
        });
        Ok(tonic::Response::new(Box::pin(futures::StreamExt::chain(
            first,
            futures::stream::pending(),
        ))))
    }

    async fn embed(
        &self,
        _: Request<pb::EmbedRequest>,
    ) -> Result<tonic::Response<pb::EmbedResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("generate only"))
    }

    async fn classify(
        &self,
        _: Request<pb::ClassifyRequest>,
    ) -> Result<tonic::Response<pb::ClassifyResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("generate only"))
    }

    async fn list_models(
        &self,
        _: Request<pb::ListModelsRequest>,
    ) -> Result<tonic::Response<pb::ListModelsResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("generate only"))
    }

    async fn load_model(
        &self,
        _: Request<pb::ModelRequest>,
    ) -> Result<tonic::Response<pb::ModelStatus>, tonic::Status> {
        Err(tonic::Status::unimplemented("generate only"))
    }

    async fn unload_model(
        &self,
        _: Request<pb::ModelRequest>,
    ) -> Result<tonic::Response<pb::ModelStatus>, tonic::Status> {
        Err(tonic::Status::unimplemented("generate only"))
    }

    async fn pin_model(
        &self,
        _: Request<pb::PinModelRequest>,
    ) -> Result<tonic::Response<pb::ModelStatus>, tonic::Status> {
        Err(tonic::Status::unimplemented("generate only"))
    }
}

/// A TCP proxy in front of an address; `cut` drops every connection through it at once.
struct Proxy {
    addr: std::net::SocketAddr,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    async fn start(upstream: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let held = conns.clone();
        tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                let task = tokio::spawn(async move {
                    if let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
                held.lock().unwrap().push(task.abort_handle());
            }
        });
        Self { addr, conns }
    }

    fn cut(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

/// The stalling agent behind a proxy, reporting `model` (quality 0.5) to the gateway.
async fn stalling_agent(g: &Gateway, model: &str) -> Proxy {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::agent_server::AgentServer::new(StallingAgent))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let proxy = Proxy::start(upstream).await;
    let report = pb::NodeReport {
        node_id: "stalling".into(),
        advertise_addr: format!("http://{}", proxy.addr),
        seq: 1,
        models: vec![pb::ModelStatus {
            name: model.into(),
            task: pb::Task::Generate as i32,
            state: pb::ModelState::Ready as i32,
            quality: 0.5,
            parameters: 1000,
            size_bytes: 1000,
            context_length: 4096,
            max_concurrency: 4,
            max_queue: 4,
            ..Default::default()
        }],
        report_interval_ms: 60_000,
        ..Default::default()
    };
    let mut fleet = pb::fleet_client::FleetClient::connect(format!("http://{}", g.addr))
        .await
        .unwrap();
    let reports = futures::StreamExt::chain(
        futures::stream::once(async move { report }),
        futures::stream::pending(),
    );
    let acks = fleet.report(reports).await.unwrap().into_inner();
    std::mem::forget(acks); // the report stream stays open for the test's lifetime
    let mut c = client(g);
    wait_live(&mut c, 1).await;
    proxy
}

#[tokio::test]
async fn an_agent_lost_mid_stream_is_unavailable_and_a_passed_deadline_is_deadline_exceeded() {
    let (g, _p) = gateway(POLICY).await;
    let proxy = stalling_agent(&g, "stalling-lm").await;
    let mut c = client(&g);
    let mut s = c
        .generate(with_tenant(gen_req(8)))
        .await
        .unwrap()
        .into_inner();
    assert!(s.message().await.unwrap().unwrap().decision.is_some());
    let first = s.message().await.unwrap().unwrap().chunk.unwrap();
    assert_eq!(first.text, "Hel");
    proxy.cut();
    let err = s.message().await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(
        err.message()
            .starts_with("the connection to agent stalling (stalling-lm) was lost"),
        "{}",
        err.message()
    );
    g.stop().await;

    // an agent that never answers: the caller's deadline, named as such
    let (g, _p) = gateway(POLICY).await;
    let _proxy = stalling_agent(&g, "hang").await;
    // the header only: this client does not enforce it itself, so what comes back is the
    // gateway's answer
    let mut r = with_tenant(gen_req(8));
    r.metadata_mut()
        .insert("grpc-timeout", "300m".parse().unwrap());
    let err = client(&g).generate(r).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
    assert!(
        err.message().starts_with("the deadline passed"),
        "{}",
        err.message()
    );
    g.stop().await;
}

#[tokio::test]
async fn embeddings_never_mix_vector_spaces() {
    let policy = "routes:\n  - name: embed\n    match: {tasks: [embed]}\n    space: tiny-space\n    spill: wait\n";
    let (g, _p) = gateway(policy).await;
    // a second embedder, smaller, declared in another space
    let dir = models_dir(&["tiny-embed"]);
    copy_dir(
        &fixtures().join("tiny-embed"),
        &dir.path().join("tiny-embed-b"),
    );
    let m = std::fs::read_to_string(dir.path().join("tiny-embed-b/model.toml")).unwrap();
    let m = m
        .replace("name = \"tiny-embed\"", "name = \"tiny-embed-b\"")
        .replace("parameters = 9504", "parameters = 5000")
        .replace("space = \"tiny-space\"", "space = \"other-space\"");
    std::fs::write(dir.path().join("tiny-embed-b/model.toml"), m).unwrap();
    let (mut cfg, state) = config(dir.path(), None);
    cfg.gateways = vec![format!("http://{}", g.addr)];
    let a = TestAgent::start(cfg, state).await;
    let mut c = client(&g);
    wait_fleet(&c, "both embedders are ready", |s| {
        s.nodes.iter().any(|n| {
            n.models.len() == 2
                && n.models
                    .iter()
                    .all(|m| m.state == pb::ModelState::Ready as i32 && !m.space.is_empty())
        })
    })
    .await;
    let embed = |model: &str| {
        with_tenant(pb::GatewayEmbedRequest {
            request: Some(pb::EmbedRequest {
                model: model.into(),
                texts: vec!["hello".into()],
                ..Default::default()
            }),
            routing: None,
        })
    };
    // the route's space, though the other embedder is smaller; every time
    for _ in 0..5 {
        let r = c.embed(embed("")).await.unwrap().into_inner();
        let (out, d) = (r.response.unwrap(), r.decision.unwrap());
        assert_eq!(
            (out.model.as_str(), out.space.as_str()),
            ("tiny-embed", "tiny-space")
        );
        assert_eq!(d.space, "tiny-space");
        assert!(
            d.excluded
                .iter()
                .any(|e| e.candidate.ends_with("/tiny-embed-b")
                    && e.reason
                        == "vector space `other-space`, and the request needs `tiny-space`"),
            "{:?}",
            d.excluded
        );
    }
    // a caller names the space it indexed with, or one model
    let r = c.embed(embed("other-space")).await.unwrap().into_inner();
    assert_eq!(r.response.unwrap().model, "tiny-embed-b");
    let r = c.embed(embed("tiny-embed-b")).await.unwrap().into_inner();
    assert_eq!(r.response.unwrap().space, "other-space");
    // a space nobody serves is refused, naming it
    let err = c.embed(embed("no-such-space")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    a.stop().await;
    g.stop().await;
}
