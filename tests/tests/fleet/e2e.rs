//! End to end with real processes: the `edgewise-gateway` binary, `edgewise-agent` binaries on
//! fixture models, and the mock hosted API over TLS. Each scenario is one an operator relies on:
//! routing and spill, refusals and paid fallback, kill -9 of an agent under load, policy
//! edits under load, and kill -9 of the gateway.

use edgewise_tests::harness as common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use edgewise_proto as pb;
use edgewise_tests::mock_provider::MockProvider;
use tonic::{Code, Request};

type Gw = GatewayClient;

/// A daemon started the way systemd starts it; killed (-9) when dropped.
struct Daemon {
    child: Child,
    notify: Notify,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    fn start(bin: &Path, config: &Path, name: &str) -> Self {
        let sock = config.with_file_name(format!("{name}.{}.notify", unique()));
        let notify = Notify::bind(&sock);
        let child = Command::new("sh")
            .arg("-c")
            .arg("WATCHDOG_PID=$$ exec \"$0\" --config \"$1\" run")
            .arg(bin)
            .arg(config)
            .env("NOTIFY_SOCKET", &sock)
            .env("WATCHDOG_USEC", "2000000")
            .env("EDGEWISE_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut d = Self { child, notify };
        d.notify.wait("READY=1");
        d
    }

    /// kill -9 now.
    fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

fn unique() -> u64 {
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::SeqCst) as u64
}

struct Gateway {
    daemon: Daemon,
    addr: String,
}

fn gateway_toml(dir: &Path, listen: &str, mock: &MockProvider) -> PathBuf {
    let file = dir.join("gateway.toml");
    std::fs::write(
        &file,
        format!(
            "[server]\nlisten = \"{listen}\"\nid = \"gw-e2e\"\n\n[tls]\nplaintext = true\n\n[policies]\npaths = [\"policies\"]\n\n[state]\ndir = \"state\"\n\n{}default_max_tokens = 16\n",
            mock.provider_toml(1000.0, 2000.0)
        ),
    )
    .unwrap();
    file
}

fn start_gateway(config: &Path) -> Gateway {
    let bin = agent_bin().with_file_name("edgewise-gateway");
    let mut daemon = Daemon::start(&bin, config, "gateway");
    daemon.notify.wait("STATUS=serving on ");
    let addr = daemon
        .notify
        .seen
        .iter()
        .flat_map(|m| m.lines())
        .find_map(|l| l.strip_prefix("STATUS=serving on "))
        .unwrap()
        .to_string();
    Gateway { daemon, addr }
}

/// An agent process on port 0 serving fixture LM copies named and sized as given.
fn start_agent(dir: &Path, gateway: &str, lms: &[(&str, u64, f32, u32)]) -> Daemon {
    let models = dir.join("models");
    let mut limits = String::new();
    for (name, params, quality, slots) in lms {
        model_as(&models, "tiny-lm-fp32", name, *params, *quality);
        limits.push_str(&format!(
            "[models.limits.{name}]\nmax_concurrency = {slots}\nmax_queue = 8\n\n"
        ));
    }
    let file = dir.join("agent.toml");
    std::fs::write(
        &file,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ndrain_timeout_ms = 5000\n\n[tls]\nplaintext = true\n\n[models]\ndir = \"models\"\n\n{limits}\
             [runtime]\nintra_op_threads = 1\n\n[report]\ngateways = [\"http://{gateway}\"]\ninterval_ms = 100\n\n[state]\ndir = \"state\"\n"
        ),
    )
    .unwrap();
    Daemon::start(&agent_bin(), &file, "agent")
}

fn policy(dir: &Path, text: &str) {
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    let tmp = dir.join("policies/.edit");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join("policies/policy.yaml")).unwrap();
}

fn chat_policy(min_quality: f32, budget: f64) -> String {
    format!(
        "default_data_class: internal\nroutes:\n  - name: chat\n    min_quality: {min_quality}\n    spill: larger\n    external:\n      allowed: true\n      provider: openai\n      model: gpt-4o-mini\n      data_classes: [public, internal]\n      when: [no_adequate_local, no_local_capacity]\n      daily_budget_usd: {budget}\n"
    )
}

/// A client that stops reading after a kilobyte: a stream it holds keeps its model's slot.
async fn holder(addr: &str) -> Gw {
    pb::gateway_client::GatewayClient::new(slow_channel(&format!("http://{addr}")).await)
}

/// How a generation ended: refused or failed before any chunk, or after the decision.
#[derive(Debug)]
enum Outcome {
    Done(pb::Decision, String),
    BeforeStreaming(tonic::Status),
    MidStream(pb::Decision, tonic::Status),
}

impl Outcome {
    fn describe(&self) -> String {
        match self {
            Outcome::Done(d, _) => format!("done by {:?}", local_model(d)),
            Outcome::BeforeStreaming(s) => format!("failed before streaming: {s:?}"),
            Outcome::MidStream(d, s) => {
                format!("broke mid-stream from {:?}: {s:?}", local_model(d))
            }
        }
    }
}

async fn generate(c: &mut Gw, r: Request<pb::GatewayGenerateRequest>) -> Outcome {
    let mut s = match c.generate(r).await {
        Ok(s) => s.into_inner(),
        Err(e) => return Outcome::BeforeStreaming(e),
    };
    let d = match s.message().await {
        Ok(Some(m)) => m.decision.unwrap(),
        Ok(None) => return Outcome::BeforeStreaming(tonic::Status::internal("empty stream")),
        Err(e) => return Outcome::BeforeStreaming(e),
    };
    let mut text = String::new();
    loop {
        match s.message().await {
            Ok(Some(m)) => text.push_str(&m.chunk.unwrap().text),
            Ok(None) => return Outcome::Done(d, text),
            Err(e) => return Outcome::MidStream(d, e),
        }
    }
}

/// Waits until the gateway sees every one of `models` ready on a live node.
async fn wait_ready(c: &Gw, models: &[&str]) {
    let models: Vec<String> = models.iter().map(|m| m.to_string()).collect();
    wait_fleet(c, "the gateway sees every model ready", move |s| {
        models.iter().all(|m| {
            s.nodes
                .iter()
                .filter(|n| n.live)
                .flat_map(|n| &n.models)
                .any(|x| &x.name == m && x.state == pb::ModelState::Ready as i32)
        })
    })
    .await;
}

fn local_model(d: &pb::Decision) -> Option<(String, String)> {
    match &d.target {
        Some(pb::decision::Target::Local(l)) => Some((l.node_id.clone(), l.model.clone())),
        _ => None,
    }
}

#[tokio::test]
async fn the_fleet_routes_spills_refuses_and_falls_back_within_budget() {
    let mock = MockProvider::start("sk-e2e-fleet").await;
    let dir = tempfile::tempdir().unwrap();
    // worst case of one call: (30 + 16) × $0.001 + 10 × $0.002 = $0.066; each costs $0.021:
    // a $0.10 budget allows two calls and refuses the third
    policy(dir.path(), &chat_policy(0.3, 0.1));
    let gw = start_gateway(&gateway_toml(dir.path(), "127.0.0.1:0", &mock));
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let _a = start_agent(da.path(), &gw.addr, &[("lm-small", 107_200, 0.3, 1)]);
    let _b = start_agent(db.path(), &gw.addr, &[("lm-large", 500_000, 0.35, 1)]);
    let mut c = gateway_client(&gw.addr);
    wait_ready(&c, &["lm-small", "lm-large"]).await;

    // the smallest adequate model
    let Outcome::Done(d, text) = generate(&mut c, chat_request("internal", 6)).await else {
        panic!()
    };
    assert_eq!(
        (local_model(&d).unwrap().1.as_str(), d.rule.as_str()),
        ("lm-small", "smallest")
    );
    assert!(!text.is_empty());

    // saturate it: the next request spills to the larger model
    let mut h1 = holder(&gw.addr).await;
    let mut held_small = h1
        .generate(chat_request("internal", 400))
        .await
        .unwrap()
        .into_inner();
    let first = held_small
        .message()
        .await
        .unwrap()
        .unwrap()
        .decision
        .unwrap();
    assert_eq!(local_model(&first).unwrap().1, "lm-small");
    let Outcome::Done(d, _) = generate(&mut c, chat_request("internal", 6)).await else {
        panic!()
    };
    assert_eq!(
        (local_model(&d).unwrap().1.as_str(), d.rule.as_str()),
        ("lm-large", "spill: larger")
    );

    // saturate the larger one too: no local capacity at all
    let mut h2 = holder(&gw.addr).await;
    let mut held_large = h2
        .generate(chat_request("internal", 400))
        .await
        .unwrap()
        .into_inner();
    let second = held_large
        .message()
        .await
        .unwrap()
        .unwrap()
        .decision
        .unwrap();
    assert_eq!(local_model(&second).unwrap().1, "lm-large");

    // confidential: refused, and the provider received nothing
    let Outcome::BeforeStreaming(e) = generate(&mut c, chat_request("confidential", 10)).await
    else {
        panic!()
    };
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(
        e.message().contains("not permitted for confidential data"),
        "{}",
        e.message()
    );
    assert_eq!(mock.state.requests().len(), 0);

    // internal: the permitted fallback, twice, each billed and audited
    for i in 1..=2 {
        let Outcome::Done(d, text) = generate(&mut c, chat_request("internal", 10)).await else {
            panic!()
        };
        assert_eq!(d.rule, "external: no_local_capacity");
        assert_eq!(text, "The capital of France is Paris.");
        let s = spend_entries(&mut c).await;
        assert!(
            (s[0].spent_usd - 0.021 * f64::from(i)).abs() < 1e-9,
            "{s:?}"
        );
    }
    // the budget is exhausted: refused, and the provider is not called
    let Outcome::BeforeStreaming(e) = generate(&mut c, chat_request("internal", 10)).await else {
        panic!()
    };
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().contains("daily budget for `openai` left"),
        "{}",
        e.message()
    );
    assert_eq!(mock.state.requests().len(), 2);
    let kinds: Vec<String> = audit_records(&mut c)
        .await
        .into_iter()
        .map(|r| r.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            "refused_fallback",
            "external_call",
            "external_call",
            "refused_fallback"
        ]
    );
    drop((held_small, held_large));
}

#[tokio::test]
async fn kill_9_of_an_agent_under_load_reroutes_what_had_not_started_streaming() {
    let mock = MockProvider::start("sk-e2e-kill").await;
    let dir = tempfile::tempdir().unwrap();
    // spill: wait — requests queue on the smallest model's node when its slot is busy
    policy(
        dir.path(),
        "routes:\n  - name: chat\n    min_quality: 0.1\n    spill: wait\n",
    );
    let gw = start_gateway(&gateway_toml(dir.path(), "127.0.0.1:0", &mock));
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = start_agent(da.path(), &gw.addr, &[("lm-small", 107_200, 0.3, 1)]);
    let _b = start_agent(db.path(), &gw.addr, &[("lm-large", 500_000, 0.35, 2)]);
    let mut c = gateway_client(&gw.addr);
    wait_ready(&c, &["lm-small", "lm-large"]).await;

    // load on node A: one generation streaming to a caller that stops reading (so it keeps
    // A's only slot), four more through the gateway queued behind it, not streaming yet
    let node_a = fleet_status(&mut c)
        .await
        .nodes
        .into_iter()
        .find(|n| n.models.iter().any(|m| m.name == "lm-small"))
        .unwrap();
    let a_id = node_a.node_id.clone();
    let mut direct = slow_reader(&node_a.addr).await;
    let mut streaming = direct
        .generate(prompt("lm-small", "Hold this slot", 400))
        .await
        .unwrap()
        .into_inner();
    assert!(streaming.message().await.unwrap().is_some());
    let queued: Vec<_> = (0..4)
        .map(|_| {
            let mut c = c.clone();
            tokio::spawn(async move { generate(&mut c, chat_request("internal", 8)).await })
        })
        .collect();
    wait_fleet(&c, "four requests queue on node A", |s| {
        s.nodes
            .iter()
            .flat_map(|n| &n.models)
            .any(|m| m.name == "lm-small" && m.queue_depth == 4)
    })
    .await;

    let killed_at = Instant::now();
    a.kill9();
    // the node leaves routing within 3 s
    poll(
        Duration::from_secs(3).saturating_sub(killed_at.elapsed()),
        || {
            let (mut c, a_id) = (c.clone(), a_id.clone());
            async move {
                let s = fleet_status(&mut c).await;
                if s.nodes.iter().any(|n| n.node_id == a_id && !n.live) {
                    Ok(())
                } else {
                    Err("the killed node is still live".to_string())
                }
            }
        },
    )
    .await;
    let left = killed_at.elapsed();

    // every queued request was routed again to the surviving node and succeeded
    for q in queued {
        match q.await.unwrap() {
            Outcome::Done(d, text) => {
                assert_eq!(local_model(&d).unwrap().1, "lm-large", "{d:?}");
                assert_eq!(d.retried.len(), 1, "{:?}", d.retried);
                assert_eq!(d.retried[0].candidate, format!("{a_id}/lm-small"));
                assert!(!text.is_empty());
            }
            other => panic!(
                "a request that had not started streaming: {}",
                other.describe()
            ),
        }
    }
    // the one that was streaming from the killed node breaks; it is not retried
    let mut broke = false;
    loop {
        match streaming.message().await {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(_) => {
                broke = true;
                break;
            }
        }
    }
    assert!(broke, "the stream from the killed node ended cleanly");
    eprintln!("node left routing {left:?} after kill -9");
    // and new requests go to the survivor
    let Outcome::Done(d, _) = generate(&mut c, chat_request("internal", 4)).await else {
        panic!()
    };
    assert_eq!(local_model(&d).unwrap().1, "lm-large");
}

#[tokio::test]
async fn policy_edits_under_load_change_routing_without_failures() {
    let mock = MockProvider::start("sk-e2e-reload").await;
    let dir = tempfile::tempdir().unwrap();
    policy(
        dir.path(),
        "routes:\n  - name: chat\n    min_quality: 0.3\n    spill: wait\n",
    );
    let gw = start_gateway(&gateway_toml(dir.path(), "127.0.0.1:0", &mock));
    let da = tempfile::tempdir().unwrap();
    let _a = start_agent(
        da.path(),
        &gw.addr,
        &[
            ("lm-small", 107_200, 0.3, 2),
            ("lm-large", 500_000, 0.35, 2),
        ],
    );
    let mut c = gateway_client(&gw.addr);
    wait_ready(&c, &["lm-small", "lm-large"]).await;
    let hash = fleet_status(&mut c).await.policy_hash;

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..3 {
        let (mut c, stop) = (c.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                outcomes.push(generate(&mut c, chat_request("internal", 8)).await);
            }
            outcomes
        }));
    }
    // raise the quality floor: the small model is no longer adequate
    policy(
        dir.path(),
        "routes:\n  - name: chat\n    min_quality: 0.33\n    spill: wait\n",
    );
    wait_for(
        "routing follows the edited policy",
        Duration::from_secs(10),
        || {
            let mut c = c.clone();
            async move {
                matches!(generate(&mut c, chat_request("internal", 4)).await,
                Outcome::Done(d, _) if local_model(&d).is_some_and(|m| m.1 == "lm-large"))
            }
        },
    )
    .await;
    let edited = fleet_status(&mut c).await;
    assert_ne!(edited.policy_hash, hash);
    assert_eq!(edited.policy_reloads, 1);

    // an invalid edit (and a SIGHUP to force it) is rejected; the edited policy stays
    policy(
        dir.path(),
        "routes:\n  - name: chat\n    spill: sometimes\n",
    );
    let ok = Command::new("kill")
        .args(["-HUP", &gw.daemon.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    wait_fleet(&c, "the invalid edit is rejected", |s| {
        s.policy_reload_failures >= 1
    })
    .await;
    let after = fleet_status(&mut c).await;
    assert_eq!(after.policy_hash, edited.policy_hash);
    let Outcome::Done(d, _) = generate(&mut c, chat_request("internal", 4)).await else {
        panic!()
    };
    assert_eq!(local_model(&d).unwrap().1, "lm-large");

    stop.store(true, Ordering::SeqCst);
    let mut outcomes = Vec::new();
    for w in workers {
        outcomes.extend(w.await.unwrap());
    }
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|o| !matches!(o, Outcome::Done(..)))
        .map(Outcome::describe)
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        outcomes.len()
    );
    assert!(outcomes.len() >= 3);
}

#[tokio::test]
async fn gateway_kill_9_and_restart_keeps_ledger_and_audit_and_agents_return() {
    let mock = MockProvider::start("sk-e2e-restart").await;
    let dir = tempfile::tempdir().unwrap();
    policy(dir.path(), &chat_policy(0.3, 5.0));
    let gw = start_gateway(&gateway_toml(dir.path(), "127.0.0.1:0", &mock));
    let da = tempfile::tempdir().unwrap();
    let _a = start_agent(da.path(), &gw.addr, &[("lm-small", 107_200, 0.3, 2)]);
    let mut c = gateway_client(&gw.addr);
    wait_ready(&c, &["lm-small"]).await;
    // one external call (nothing local is good enough), one refused fallback
    let mut r = chat_request("internal", 10);
    r.get_mut().routing.as_mut().unwrap().min_quality = Some(0.9);
    let Outcome::Done(d, _) = generate(&mut c, r).await else {
        panic!()
    };
    assert_eq!(d.rule, "external: no_adequate_local");
    let mut r = chat_request("restricted", 10);
    r.get_mut().routing.as_mut().unwrap().min_quality = Some(0.9);
    assert!(
        matches!(generate(&mut c, r).await, Outcome::BeforeStreaming(e) if e.code() == Code::PermissionDenied)
    );
    let (spent, records) = (spend_entries(&mut c).await, audit_records(&mut c).await);
    assert_eq!(records.len(), 2);

    // kill -9, and start again on the same port with the same state
    let addr = gw.addr.clone();
    gw.daemon.kill9();
    let gw = start_gateway(&gateway_toml(dir.path(), &addr, &mock));
    assert_eq!(gw.addr, addr);
    let mut c = gateway_client(&gw.addr);
    wait_ready(&c, &["lm-small"]).await;
    assert_eq!(spend_entries(&mut c).await, spent);
    let after: Vec<String> = audit_records(&mut c)
        .await
        .into_iter()
        .map(|r| r.decision_id)
        .collect();
    let before: Vec<String> = records.into_iter().map(|r| r.decision_id).collect();
    assert_eq!(after, before);
    let Outcome::Done(d, _) = generate(&mut c, chat_request("internal", 4)).await else {
        panic!()
    };
    assert_eq!(local_model(&d).unwrap().1, "lm-small");
}
