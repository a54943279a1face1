//! The gateway's store under contention: the budget race (40 concurrent generate requests
//! that all want the hosted model, a daily budget for 5 calls) on fresh gateway processes,
//! with two CPU-burning processes beside them — the load under which sled's concurrent
//! flushes used to freeze the gateway — and the store's fault-injection hook: a stuck writer
//! fails requests fast with UNAVAILABLE, turns health NOT_SERVING, and does not stop the
//! gateway from stopping.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use edgewise_tests::harness as common;

use common::*;

use std::path::Path;
use std::time::{Duration, Instant};

use edgewise_gateway::providers::Kind;
use edgewise_gateway::{Gateway, GatewayConfig};
use edgewise_tests::mock_provider::MockProvider;
use tonic::Code;

const KEY: &str = "sk-test-stress-0123456789";
/// Iterations of the race: the stall showed in about 1 of 4 under this load, so 40 clean
/// iterations leave it a 1-in-100,000 chance of hiding (an iteration takes about 0.1 s).
const ITERATIONS: usize = 40;
const CALLERS: usize = 40;
/// Each caller's deadline; every answer must come well inside it.
const DEADLINE: Duration = Duration::from_secs(20);

/// Prices that make the race's request cost $0.11 at worst ((46 + 32 x 2) x 1000 / 1e6):
/// a $0.60 budget holds 5 such calls, and the mock reports no usage, so each settles at its
/// worst case and no sixth call ever fits.
const BUDGET: f64 = 0.6;

fn policy() -> String {
    format!(
        "default_data_class: internal\nroutes:\n  - name: hosted\n    min_quality: 0.5\n    external:\n      allowed: true\n      provider: openai\n      model: gpt-4o-mini\n      data_classes: [public, internal]\n      when: [no_adequate_local, no_local_capacity]\n      daily_budget_usd: {BUDGET}\n"
    )
}

fn gateway_toml(dir: &Path, mock: &MockProvider) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    std::fs::write(dir.join("policies/policy.yaml"), policy()).unwrap();
    let file = dir.join("gateway.toml");
    std::fs::write(
        &file,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nid = \"gw-stress\"\n\n[tls]\nplaintext = true\n\n[policies]\npaths = [\"policies\"]\n\n[state]\ndir = \"state\"\n\n{}",
            mock.provider_toml(1000.0, 2000.0)
        ),
    )
    .unwrap();
    file
}

/// Two processes that keep both cores busy until dropped (killed with them).
struct Burners(#[allow(dead_code)] Vec<Proc>);

impl Burners {
    fn start() -> Self {
        Self(
            (0..2)
                .map(|_| {
                    Proc(
                        std::process::Command::new("sh")
                            .arg("-c")
                            .arg("while :; do :; done")
                            .spawn()
                            .unwrap(),
                    )
                })
                .collect(),
        )
    }
}

/// One caller's request with its deadline; its status code (OK when it streamed to the end),
/// or `None` when the gateway had not answered by the deadline (a frozen gateway answers
/// nothing, not even DEADLINE_EXCEEDED, so the caller keeps its own timer too).
async fn call(addr: String) -> (Option<Code>, Duration) {
    let started = Instant::now();
    let mut r = chat_request("internal", 32);
    r.set_timeout(DEADLINE);
    let answer = async {
        match gateway_client(&addr).generate(r).await {
            Ok(s) => {
                let mut s = s.into_inner();
                loop {
                    match s.message().await {
                        Ok(Some(_)) => {}
                        Ok(None) => break Code::Ok,
                        Err(e) => break e.code(),
                    }
                }
            }
            Err(e) => e.code(),
        }
    };
    let code = tokio::time::timeout(DEADLINE, answer).await.ok();
    (code, started.elapsed())
}

/// An operator read, bounded the same way.
async fn bounded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer in {DEADLINE:?}: the gateway stalled"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_race_never_stalls_the_gateway_under_cpu_load() {
    let mock = MockProvider::start(KEY).await;
    mock.state
        .report_usage
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let bin = agent_bin().with_file_name("edgewise-gateway");
    let _burners = Burners::start();
    let mut slowest = Duration::ZERO;
    for i in 0..ITERATIONS {
        let dir = tempfile::tempdir().unwrap();
        let config = gateway_toml(dir.path(), &mock);
        let (proc, mut notify) = daemon(&bin, &config, "warn", None);
        let addr = notify.serving_addr();
        let before = mock.state.requests().len();
        let answers =
            futures::future::join_all((0..CALLERS).map(|_| tokio::spawn(call(addr.clone())))).await;
        let mut codes = std::collections::BTreeMap::<String, usize>::new();
        for a in answers {
            let (code, took) = a.unwrap();
            let code = code.unwrap_or_else(|| {
                panic!("iteration {i}: a caller had no answer by its {DEADLINE:?} deadline: the gateway stalled ({codes:?} so far)")
            });
            assert!(
                took < DEADLINE / 2,
                "iteration {i}: a caller waited {took:?} of its {DEADLINE:?} deadline ({codes:?} so far)"
            );
            slowest = slowest.max(took);
            *codes.entry(format!("{code:?}")).or_default() += 1;
        }
        let calls = mock.state.requests().len() - before;
        assert_eq!(
            calls, 5,
            "iteration {i}: the provider got {calls} calls for a budget of 5 ({codes:?})"
        );
        assert_eq!(
            (codes.get("Ok"), codes.get("ResourceExhausted")),
            (Some(&5), Some(&(CALLERS - 5))),
            "iteration {i}: {codes:?}"
        );
        // the books agree: five calls at their worst case, nothing left reserved
        let spend = bounded("Spend", spend_entries(&mut gateway_client(&addr))).await;
        assert_eq!(spend.len(), 1, "{spend:?}");
        assert!((spend[0].spent_usd - 0.55).abs() < 1e-9, "{spend:?}");
        assert_eq!(spend[0].reserved_usd, 0.0, "{spend:?}");
        let audit = bounded("ExportAudit", audit_records(&mut gateway_client(&addr))).await;
        assert_eq!(
            audit.iter().filter(|r| r.kind == "external_call").count(),
            5
        );
        proc.stop();
    }
    eprintln!("{ITERATIONS} iterations of {CALLERS} callers: no stall; slowest answer {slowest:?}");
}

async fn health_of(
    addr: std::net::SocketAddr,
) -> tonic_health::pb::health_client::HealthClient<tonic::transport::Channel> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    tonic_health::pb::health_client::HealthClient::new(ch)
}

/// Watches the gateway's health until it reports `want`.
async fn wait_health(
    addr: std::net::SocketAddr,
    want: tonic_health::pb::health_check_response::ServingStatus,
) {
    let mut watch = health_of(addr)
        .await
        .watch(tonic_health::pb::HealthCheckRequest {
            service: "edgewise.v1.Gateway".into(),
        })
        .await
        .unwrap()
        .into_inner();
    while let Some(r) = watch.message().await.unwrap() {
        if r.status() == want {
            return;
        }
    }
    panic!("the health watch ended before {want:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_store_fails_requests_fast_turns_health_off_and_lets_the_gateway_stop() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let mock = MockProvider::start(KEY).await;
    let policy_dir = tempfile::tempdir().unwrap();
    std::fs::write(policy_dir.path().join("p.yaml"), policy()).unwrap();
    let state = tempfile::tempdir().unwrap();
    // the shipped bound: a shorter one can time out the first, healthy call when this test
    // shares the cores with the race above and the disk is slow to flush (CI saw it fail)
    let bound = edgewise_gateway::store::DEFAULT_WRITE_TIMEOUT;
    let mut config = GatewayConfig::new(vec![policy_dir.path().to_path_buf()], "gw-held");
    config.providers = vec![provider("openai", Kind::OpenAi, &mock, 1000.0)];
    config.state_dir = Some(state.path().to_path_buf());
    config.store_timeout = bound;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let g = Gateway::start(config, listener).await.unwrap();
    let addr = g.addr;
    let store = g.state.store.clone();

    // healthy, and a hosted call goes through
    wait_health(addr, ServingStatus::Serving).await;
    let (code, _) = call(addr.to_string()).await;
    assert_eq!(code, Some(Code::Ok));
    assert_eq!(mock.state.requests().len(), 1);

    // the writer stops (as on a stuck disk): the reservation cannot become durable
    let held = store.hold_writer();
    let started = Instant::now();
    let mut r = chat_request("internal", 32);
    r.set_timeout(DEADLINE);
    let err = gateway_client(addr).generate(r).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("the gateway's store")
            && err.message().contains("budget reservation"),
        "{}",
        err.message()
    );
    assert!(took < DEADLINE / 4, "failed after {took:?}: not fast");
    assert_eq!(
        mock.state.requests().len(),
        1,
        "fail closed: no hosted call without a durable reservation"
    );
    wait_health(addr, ServingStatus::NotServing).await;

    // the gateway still stops, within the drain and the store's bound, with the store stuck
    let running = tokio::spawn(async move {
        let _ = stop_rx.await;
        g.stop().await;
    });
    let stopping = Instant::now();
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the gateway did not stop with its store stuck")
        .unwrap();
    eprintln!("stopped in {:?} with the store held", stopping.elapsed());

    // released, the store applies the timed-out reservation and then its release, and closes
    drop(held);
    store.close(Duration::from_secs(10)).await.unwrap();
    drop(store);
    // sled's own threads let go of the database's file lock a moment after the last handle
    // is dropped: reopen once they have (a kill -9 leaves no such holder)
    let options = edgewise_gateway::store::StoreOptions {
        dir: Some(state.path().to_path_buf()),
        write_timeout: Duration::from_secs(10),
        shared: None,
    };
    let store = poll(Duration::from_secs(10), || {
        let opened = edgewise_gateway::store::Store::open(&options).map_err(|e| e.to_string());
        async move { opened }
    })
    .await;
    let entries = store.spend_entries().await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].reserved, 0, "{entries:?}");
    // only the first call's billed usage: (9 x 1000 + 6 x 2000) / 1e6
    assert!(
        (edgewise_gateway::ledger::usd(entries[0].spent) - 0.021).abs() < 1e-8,
        "{entries:?}"
    );
}
