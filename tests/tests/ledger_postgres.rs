//! The shared ledger on a real PostgreSQL server: the embedded ledger's contract (reserve,
//! deny, settle once, unknown ids), several gateways racing for the last of a budget, leases
//! swept by another gateway and settled late, migrations racing on an empty database, and
//! acknowledged reservations surviving a crash of the server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use edgewise_gateway::ledger::{LedgerError, Reservation};
use edgewise_gateway::store::postgres::{PgLedger, PgOptions};
use edgewise_tests::postgres::Postgres;

/// A server of the test's own (stopped when the test ends, however it ends).
fn server() -> Option<Postgres> {
    Postgres::start()
}

fn res(tenant: &str, nanos: u64) -> Reservation {
    Reservation {
        day: "2026-12-04".into(),
        tenant: tenant.into(),
        provider: "openai".into(),
        nanos,
    }
}

async fn gateway(params: &str, id: &str) -> PgLedger {
    PgLedger::connect(&PgOptions::new(params, id), None)
        .await
        .unwrap()
}

/// (spent + reserved, reserved) of the test tenant.
async fn totals(l: &PgLedger, tenant: &str) -> (u64, u64) {
    l.spend_entries()
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.key.tenant == tenant)
        .map_or((0, 0), |s| (s.spent, s.reserved))
}

const LEASE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn reserve_deny_and_settle_once() {
    let Some(pg) = server() else { return };
    let l = gateway(&pg.database().await, "a").await;
    l.reserve("r1", &res("t", 300), 1000, LEASE).await.unwrap();
    l.reserve("r2", &res("t", 600), 1000, LEASE).await.unwrap();
    // 300 + 600 + 200 > 1000: denied, with the figures
    match l.reserve("r3", &res("t", 200), 1000, LEASE).await {
        Err(LedgerError::OverBudget {
            spent, limit, cost, ..
        }) => {
            assert_eq!((spent, limit, cost), (900, 1000, 200));
        }
        other => panic!("{other:?}"),
    }
    // a retry of a reservation whose answer was lost takes nothing twice
    l.reserve("r1", &res("t", 300), 1000, LEASE).await.unwrap();
    assert_eq!(totals(&l, "t").await, (900, 900));
    // settled for less: the rest is free again
    let s = l.settle("r1", Some(120)).await.unwrap();
    assert_eq!((s.reserved, s.charged), (300, 120));
    assert_eq!(totals(&l, "t").await, (720, 600));
    // a second settle (or ten at once) of the same id charges nothing more
    let again: Vec<_> = futures::future::join_all((0..10).map(|_| l.settle("r1", Some(999)))).await;
    for s in again {
        let s = s.unwrap();
        assert_eq!((s.reserved, s.charged), (300, 120));
    }
    assert_eq!(totals(&l, "t").await, (720, 600));
    // settled at its worst case when the bill is unknown
    let s = l.settle("r2", None).await.unwrap();
    assert_eq!(s.charged, 600);
    assert_eq!(totals(&l, "t").await, (720, 0));
    assert!(matches!(
        l.settle("nope", None).await,
        Err(LedgerError::NoReservation(id)) if id == "nope"
    ));
}

#[tokio::test]
async fn three_gateways_racing_take_exactly_the_budget() {
    let Some(pg) = server() else { return };
    let params = pg.database().await;
    let gws = [
        gateway(&params, "a").await,
        gateway(&params, "b").await,
        gateway(&params, "c").await,
    ];
    // a budget for 5 calls; 60 concurrent reservations, 20 from each gateway
    let cost = 1_000;
    let tries = (0..60).map(|i| {
        let g = gws[i % 3].clone();
        async move {
            g.reserve(&format!("r{i}"), &res("race", cost), 5 * cost, LEASE)
                .await
        }
    });
    let results = futures::future::join_all(tries).await;
    let admitted = results.iter().filter(|r| r.is_ok()).count();
    let denied = results
        .iter()
        .filter(|r| matches!(r, Err(LedgerError::OverBudget { .. })))
        .count();
    assert_eq!((admitted, denied), (5, 55), "{results:?}");
    assert_eq!(totals(&gws[0], "race").await, (5 * cost, 5 * cost));
}

#[tokio::test]
async fn a_dead_gateways_lease_is_charged_by_another_and_a_late_settle_refunds_once() {
    let Some(pg) = server() else { return };
    let params = pg.database().await;
    let (a, b) = (gateway(&params, "a").await, gateway(&params, "b").await);
    // gateway a reserves and dies: its lease runs out
    a.reserve("held", &res("lease", 400), 10_000, Duration::ZERO)
        .await
        .unwrap();
    a.reserve("alive", &res("lease", 300), 10_000, LEASE)
        .await
        .unwrap();
    // b sweeps: the expired one is charged at its worst case, the live one stays open
    let swept = b.sweep(100).await.unwrap();
    assert_eq!(swept.len(), 1, "{swept:?}");
    assert_eq!((swept[0].0.as_str(), swept[0].1.nanos), ("held", 400));
    assert_eq!(totals(&b, "lease").await, (700, 300));
    assert!(b.sweep(100).await.unwrap().is_empty(), "swept once");
    // a's settle arrives late: the bill replaces the worst case, once
    let s = a.settle("held", Some(150)).await.unwrap();
    assert_eq!((s.reserved, s.charged), (400, 150));
    assert_eq!(totals(&b, "lease").await, (450, 300));
    a.settle("held", Some(150)).await.unwrap();
    assert_eq!(totals(&b, "lease").await, (450, 300));
    // a live stream extends its lease; a settled one has none to extend
    assert!(a.extend("alive", LEASE).await.unwrap());
    assert!(!a.extend("held", LEASE).await.unwrap());
}

#[tokio::test]
async fn gateways_starting_at_once_migrate_an_empty_database_once() {
    let Some(pg) = server() else { return };
    let params = pg.database().await;
    let started = futures::future::join_all((0..3).map(|i| {
        let o = PgOptions::new(params.clone(), format!("g{i}"));
        async move { PgLedger::connect(&o, None).await }
    }))
    .await;
    for s in &started {
        assert!(s.is_ok(), "{s:?}");
    }
    let (client, conn) = tokio_postgres::connect(&params, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let rows = client
        .query("SELECT version FROM schema_version ORDER BY version", &[])
        .await
        .unwrap();
    let versions: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    let newest = edgewise_gateway::store::postgres::migrate::MIGRATIONS
        .iter()
        .map(|(v, _)| *v)
        .collect::<Vec<_>>();
    assert_eq!(versions, newest);
}

#[tokio::test]
async fn an_acknowledged_reservation_survives_a_crash_of_the_server() {
    let Some(own) = server() else { return };
    let params = own.database().await;
    let l = gateway(&params, "a").await;
    l.reserve("kept", &res("crash", 700), 10_000, LEASE)
        .await
        .unwrap();
    own.restart_immediate();
    // the pool drops its dead connections and reconnects by itself
    edgewise_tests::harness::wait_for(
        "the ledger to answer again after the restart",
        Duration::from_secs(10),
        || {
            let l = l.clone();
            async move { l.spend_entries().await.is_ok() }
        },
    )
    .await;
    assert_eq!(totals(&l, "crash").await, (700, 700));
    let s = l.settle("kept", Some(500)).await.unwrap();
    assert_eq!(s.charged, 500);
}

#[tokio::test]
async fn the_audit_is_append_only_chained_per_gateway_and_tampering_is_named() {
    let Some(pg) = server() else { return };
    let params = pg.database().await;
    let (a, b) = (gateway(&params, "a").await, gateway(&params, "b").await);
    a.ensure_partitions(1).await.unwrap();
    let record = |i: u64| edgewise_proto::AuditRecord {
        unix_ms: 1_764_806_400_000 + i, // 2025-12-04, before any partition made ahead
        decision_id: format!("d{i}"),
        tenant: "t".into(),
        kind: "external_call".into(),
        ..Default::default()
    };
    for i in 0..6 {
        a.append_audit(&record(i)).await.unwrap();
        b.append_audit(&record(100 + i)).await.unwrap();
    }
    // a settle and its record in one transaction, on a's chain
    a.reserve("r", &res("t", 500), 10_000, LEASE).await.unwrap();
    let make = |s: &edgewise_gateway::ledger::Settled| edgewise_proto::AuditRecord {
        cost_usd: s.charged as f64,
        ..record(50)
    };
    a.settle_audited("r", Some(200), Some(&make)).await.unwrap();
    // settled again: nothing charged, nothing audited twice
    a.settle_audited("r", Some(200), Some(&make)).await.unwrap();
    let all = b.audit_range(0, u64::MAX).await.unwrap();
    assert_eq!(all.len(), 13, "{all:?}");
    let of_a: Vec<u64> = all
        .iter()
        .filter(|r| r.gateway == "a")
        .map(|r| r.seq)
        .collect();
    assert_eq!(of_a, [1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(
        all.iter()
            .find(|r| r.decision_id == "d50")
            .map(|r| r.cost_usd),
        Some(200.0)
    );
    let intact = a.verify_audit().await.unwrap();
    assert_eq!(intact.len(), 2);
    assert!(intact.iter().all(|c| c.problems.is_empty()), "{intact:?}");
    // the database refuses changes
    let (client, conn) = tokio_postgres::connect(&params, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    for sql in [
        "UPDATE audit_record SET unix_ms = 0 WHERE gateway = 'a' AND seq = 2",
        "DELETE FROM audit_record WHERE gateway = 'b' AND seq = 3",
        "TRUNCATE audit_record",
    ] {
        let e = client.batch_execute(sql).await.unwrap_err();
        assert!(
            e.as_db_error()
                .is_some_and(|d| d.message().contains("append-only")),
            "{sql}: {e}"
        );
    }
    // a superuser can get past the trigger; the chains still tell
    client
        .batch_execute(
            "ALTER TABLE audit_record DISABLE TRIGGER audit_no_change;
             UPDATE audit_record SET record = record || '\\x00'::bytea WHERE gateway = 'a' AND seq = 2;
             DELETE FROM audit_record WHERE gateway = 'b' AND seq = 3;",
        )
        .await
        .unwrap();
    let report = a.verify_audit().await.unwrap();
    let problems = |g: &str| {
        report
            .iter()
            .find(|c| c.gateway == g)
            .map(|c| c.problems.clone())
            .unwrap_or_default()
    };
    assert_eq!(
        problems("a"),
        ["record 2 was edited: its hash does not match its content"]
    );
    assert_eq!(problems("b"), ["records 3..=3 are missing (deleted)"]);
}

#[tokio::test]
async fn tls_with_the_projects_rustls_config_a_custom_ca_and_a_client_certificate() {
    let Some((pg, files, _client)) = Postgres::start_tls() else {
        return;
    };
    let port = pg.tls_port().unwrap();
    // the gateway's own configuration path: [store] with ca_file, cert_file and key_file
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    let toml = |extra: &str| {
        format!(
            "[policies]\npaths = [\"policies\"]\n[tls]\nplaintext = true\n[store]\nbackend = \"postgres\"\n\
             postgres = \"host=localhost port={port} user=edgewise dbname=postgres\"\n{extra}"
        )
    };
    let load = |extra: &str| {
        let file = dir.path().join("gateway.toml");
        std::fs::write(&file, toml(extra)).unwrap();
        edgewise_gateway::config::GatewayFile::load(&file, &[])
            .unwrap()
            .gateway
            .shared_ledger
            .unwrap()
    };
    let full = format!(
        "ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        files.ca.display(),
        files.cert.display(),
        files.key.display()
    );
    let c = load(&full);
    let l = PgLedger::connect(&c.options, c.tls).await.unwrap();
    l.reserve("tls", &res("t", 100), 1000, LEASE).await.unwrap();
    assert_eq!(totals(&l, "t").await, (100, 100));
    // without the client certificate the server refuses, and says so
    let c = load(&format!("ca_file = \"{}\"\n", files.ca.display()));
    let e = PgLedger::connect(&c.options, c.tls)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("postgresql://localhost"), "{e}");
    assert!(e.contains("certificate"), "{e}");
    // without the CA the server's certificate is not trusted
    let c = load(&format!(
        "tls = true\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        files.cert.display(),
        files.key.display()
    ));
    let e = PgLedger::connect(&c.options, c.tls)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.to_lowercase().contains("certificate"), "{e}");
    // and plaintext over TCP is refused by the server (no fallback from the client either)
    let plain = PgOptions::new(
        format!("host=localhost port={port} user=edgewise dbname=postgres"),
        "g",
    );
    assert!(PgLedger::connect(&plain, None).await.is_err());
}

// ---- gateways sharing the ledger: real gateways, the mock hosted API over HTTPS ----

mod gateways {
    use super::*;
    use edgewise_gateway::providers::Kind;
    use edgewise_gateway::{Gateway, GatewayConfig, SharedLedgerConfig};
    use edgewise_proto as pb;
    use edgewise_tests::harness::{chat_request, gateway_client, provider};
    use edgewise_tests::mock_provider::MockProvider;

    const KEY: &str = "sk-test-shared-ledger-0123456789";

    /// Hosted only: every generate request may go to the mock, within `budget` a day.
    fn policy(budget: f64) -> String {
        format!(
            "default_data_class: internal\nroutes:\n  - name: hosted\n    min_quality: 0.5\n    external:\n      allowed: true\n      provider: openai\n      model: gpt-x\n      data_classes: [public, internal]\n      when: [no_adequate_local, no_local_capacity]\n      daily_budget_usd: {budget}\n"
        )
    }

    /// A gateway with its own policy folder and, when `params` is given, the shared ledger.
    async fn start(
        id: &str,
        budget: f64,
        mock: &MockProvider,
        params: Option<&str>,
    ) -> (Gateway, tempfile::TempDir) {
        start_leased(id, budget, mock, params, Duration::from_secs(60)).await
    }

    /// As `start`, its reservations leased for `lease`.
    async fn start_leased(
        id: &str,
        budget: f64,
        mock: &MockProvider,
        params: Option<&str>,
        lease: Duration,
    ) -> (Gateway, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("p.yaml"), policy(budget)).unwrap();
        let mut config = GatewayConfig::new(vec![dir.path().to_path_buf()], id);
        config.providers = vec![provider("openai", Kind::OpenAi, mock, 1.0)];
        config.shared_ledger = params.map(|p| SharedLedgerConfig {
            options: PgOptions::new(p, id),
            tls: None,
            lease,
            sweep_every: Duration::from_secs(1),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        (Gateway::start(config, listener).await.unwrap(), dir)
    }

    /// The `edgewise` command line against the gateway at `addr`, as an operator.
    async fn cli(addr: std::net::SocketAddr, args: &[&str]) -> std::process::Output {
        let args: Vec<String> = ["--gateway", &format!("http://{addr}"), "--tenant", "ops"]
            .iter()
            .map(|s| s.to_string())
            .chain(args.iter().map(|s| s.to_string()))
            .collect();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(
                edgewise_tests::harness::agent_bin().with_file_name("edgewise"),
            )
            .args(args)
            .output()
            .unwrap()
        })
        .await
        .unwrap()
    }

    /// Runs one hosted generation to its end: its decision, or the status it failed with.
    async fn hosted(g: &Gateway) -> Result<pb::Decision, tonic::Status> {
        hosted_at(g.addr).await
    }

    async fn hosted_at(addr: std::net::SocketAddr) -> Result<pb::Decision, tonic::Status> {
        let mut s = gateway_client(addr)
            .generate(chat_request("internal", 16))
            .await?
            .into_inner();
        let d = s.message().await?.unwrap().decision.unwrap();
        while s.message().await?.is_some() {}
        Ok(d)
    }

    fn worst_case(d: &pb::Decision) -> f64 {
        match &d.target {
            Some(pb::decision::Target::External(e)) => e.worst_case_usd,
            other => panic!("not hosted: {other:?}"),
        }
    }

    #[tokio::test]
    async fn three_gateways_spend_one_budget_and_never_more() {
        let Some(pg) = server() else { return };
        let mock = MockProvider::start(KEY).await;
        // one request's worst case, from a gateway of its own
        let (probe, _p) = start("probe", 1.0, &mock, None).await;
        let w = worst_case(&hosted(&probe).await.unwrap());
        drop(probe);
        let before = mock.state.requests().len();
        // a daily budget for 5 such calls, shared by three gateways
        let params = pg.database().await;
        let budget = 5.5 * w;
        let mut gws = Vec::new();
        for id in ["a", "b", "c"] {
            gws.push(start(id, budget, &mock, Some(&params)).await);
        }
        // the provider holds its answers until every request has been decided, so no
        // settlement frees budget while the others reserve
        let addrs: Vec<_> = gws.iter().map(|(g, _)| g.addr).collect();
        let results = held_round(&mock, &addrs, 60).await;
        let served = results.iter().filter(|r| r.is_ok()).count();
        let over = results
            .iter()
            .filter(|r| {
                r.as_ref().is_err_and(|s| {
                    s.code() == tonic::Code::ResourceExhausted && s.message().contains("budget")
                })
            })
            .count();
        assert_eq!(
            (served, over),
            (5, 55),
            "{:?}",
            results
                .iter()
                .filter(|r| r.is_err())
                .take(3)
                .collect::<Vec<_>>()
        );
        assert_eq!(mock.state.requests().len() - before, 5, "provider calls");
        // settled to the usage billed: spent is at most the budget, nothing left reserved
        let l = gateway(&params, "reader").await;
        let spent = l.spend_entries().await.unwrap();
        assert_eq!(spent.len(), 1, "{spent:?}");
        assert_eq!(spent[0].reserved, 0, "{spent:?}");
        assert!(spent[0].spent as f64 <= budget * 1e9, "{spent:?}");
        // one audit across the gateways: each served call once, settled in the same
        // transaction as its record, on its gateway's chain; read from any gateway
        let calls: Vec<pb::AuditRecord> = l
            .audit_range(0, u64::MAX)
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.kind == "external_call")
            .collect();
        assert_eq!(calls.len(), 5, "{calls:?}");
        let out = cli(gws[1].0.addr, &["audit", "verify"]).await;
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains(": intact"), "{text}");
        assert!(!text.contains("problem"), "{text}");
    }

    /// Runs `n` hosted calls at once, spread over `addrs`, while the provider holds its
    /// answers: released once each call is at the provider or refused. Each call's outcome.
    async fn held_round(
        mock: &MockProvider,
        addrs: &[std::net::SocketAddr],
        n: usize,
    ) -> Vec<Result<pb::Decision, tonic::Status>> {
        let before = mock.state.requests().len();
        mock.state.hold.send_replace(true);
        let failed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let calls: Vec<_> = (0..n)
            .map(|i| {
                let (addr, failed) = (addrs[i % addrs.len()], failed.clone());
                tokio::spawn(async move {
                    let r = hosted_at(addr).await;
                    if r.is_err() {
                        failed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    r
                })
            })
            .collect();
        edgewise_tests::harness::wait_for(
            "every call at the provider or refused",
            Duration::from_secs(30),
            || async {
                mock.state.requests().len() - before
                    + failed.load(std::sync::atomic::Ordering::SeqCst)
                    >= n
            },
        )
        .await;
        mock.state.hold.send_replace(false);
        let mut out = Vec::with_capacity(n);
        for c in calls {
            out.push(c.await.unwrap());
        }
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_gateway_killed_mid_call_is_charged_by_another_and_restarts_under_its_id() {
        let Some(pg) = server() else { return };
        let mock = MockProvider::start(KEY).await;
        let (probe, _p) = start("probe", 1.0, &mock, None).await;
        let w = worst_case(&hosted(&probe).await.unwrap());
        drop(probe);
        let params = pg.database().await;
        let budget = 10.5 * w;
        // gateway A: the real binary, with a 3 s lease on its reservations
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("policies")).unwrap();
        std::fs::write(d.join("policies/p.yaml"), policy(budget)).unwrap();
        std::fs::write(
            d.join("gateway.toml"),
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\nid = \"gw-a\"\n\n[policies]\npaths = [\"policies\"]\n\n\
                 [state]\ndir = \"state\"\n\n[tls]\nplaintext = true\n\n{}\n\
                 [store]\nbackend = \"postgres\"\npostgres = \"{params}\"\nlease_ms = 3000\nsweep_interval_ms = 1000\n",
                mock.provider_toml(1.0, 2.0)
            ),
        )
        .unwrap();
        let bin = edgewise_tests::harness::agent_bin().with_file_name("edgewise-gateway");
        let run_a = || {
            let (p, mut n) = edgewise_tests::harness::daemon(
                &bin,
                &d.join("gateway.toml"),
                "info",
                Some(&d.join("gateway.log")),
            );
            let addr: std::net::SocketAddr = n.serving_addr().parse().unwrap();
            (p, addr)
        };
        let (a, addr) = run_a();
        hosted_at(addr).await.unwrap();
        // four calls held at the provider, then A is killed (SIGKILL) mid-call
        let before = mock.state.requests().len();
        mock.state.hold.send_replace(true);
        let held: Vec<_> = (0..4).map(|_| tokio::spawn(hosted_at(addr))).collect();
        edgewise_tests::harness::wait_for(
            "four calls at the provider",
            Duration::from_secs(30),
            || async { mock.state.requests().len() - before >= 4 },
        )
        .await;
        drop(a);
        for h in held {
            assert!(h.await.unwrap().is_err());
        }
        mock.state.hold.send_replace(false);
        // gateway B charges A's four at their worst case once their leases run out
        let (b, _pb) = start("gw-b", budget, &mock, Some(&params)).await;
        let l = gateway(&params, "reader").await;
        let cost = (w * 1e9).ceil() as u64;
        let first = {
            let e = l.spend_entries().await.unwrap();
            e[0].spent - e[0].reserved
        };
        edgewise_tests::harness::wait_for(
            "A's four reservations charged at their worst case",
            Duration::from_secs(10),
            || async {
                l.spend_entries()
                    .await
                    .is_ok_and(|e| e[0].reserved == 0 && e[0].spent == first + 4 * cost)
            },
        )
        .await;
        let swept: Vec<_> = l
            .audit_range(0, u64::MAX)
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.outcome.starts_with("its lease ran out"))
            .collect();
        assert_eq!(swept.len(), 4, "{swept:?}");
        // A again, under its id: it serves, and its chain goes on where it stopped
        let (_a, addr) = run_a();
        hosted_at(addr).await.unwrap();
        let chains = l.verify_audit().await.unwrap();
        assert!(chains.iter().all(|c| c.problems.is_empty()), "{chains:?}");
        let a_chain = chains.iter().find(|c| c.gateway == "gw-a").unwrap();
        assert_eq!((a_chain.records, a_chain.last_seq), (2, 2), "{chains:?}");
        // what is left admits exactly that many more worst cases, at once
        let spent = l.spend_entries().await.unwrap()[0].spent;
        let room = ((budget * 1e9).floor() as u64 - spent) / cost;
        assert!(room >= 1, "{spent} of {budget}");
        let served = held_round(&mock, &[b.addr], 10)
            .await
            .iter()
            .filter(|r| r.is_ok())
            .count();
        assert_eq!(served, room as usize);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_gateway_cut_off_the_database_fails_closed_while_the_others_serve() {
        use edgewise_tests::postgres::{Link, Proxy};
        let Some(pg) = server() else { return };
        let mock = MockProvider::start(KEY).await;
        let params = pg.database().await;
        let proxy = Proxy::start(&pg).await;
        // b reaches the database through the proxy; a directly
        let (a, _pa) = start("a", 1.0, &mock, Some(&params)).await;
        let (b, _pb) = start("b", 1.0, &mock, Some(&proxy.params(&params))).await;
        hosted(&b).await.unwrap();
        for (link, what) in [
            (Link::Blackhole, "a blackhole"),
            (Link::Reset, "reset connections"),
        ] {
            proxy.set(link);
            let before = mock.state.requests().len();
            // b refuses hosted calls within its bound (1.5 s), never hanging, and sends
            // nothing to the provider
            let t = std::time::Instant::now();
            let e = hosted(&b).await.unwrap_err();
            let took = t.elapsed();
            assert_eq!(e.code(), tonic::Code::Unavailable, "{what}: {e:?}");
            assert!(took < Duration::from_secs(5), "{what}: took {took:?}");
            assert_eq!(mock.state.requests().len(), before, "{what}");
            // a is not affected
            hosted(&a).await.unwrap();
            // healed: b serves again by itself
            proxy.set(Link::Up);
            edgewise_tests::harness::wait_for(
                "b serving hosted calls again",
                Duration::from_secs(15),
                || async { hosted(&b).await.is_ok() },
            )
            .await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_settle_cut_off_waits_in_the_outbox_and_refunds_the_swept_worst_case_once() {
        use edgewise_tests::postgres::{Link, Proxy};
        let Some(pg) = server() else { return };
        let mock = MockProvider::start(KEY).await;
        let params = pg.database().await;
        let proxy = Proxy::start(&pg).await;
        let (_a, _pa) = start("a", 1.0, &mock, Some(&params)).await;
        let (b, _pb) = start_leased(
            "b",
            1.0,
            &mock,
            Some(&proxy.params(&params)),
            Duration::from_secs(2),
        )
        .await;
        let l = gateway(&params, "reader").await;
        // b's call is at the provider when b loses the database
        let before = mock.state.requests().len();
        mock.state.hold.send_replace(true);
        let call = tokio::spawn(hosted_at(b.addr));
        edgewise_tests::harness::wait_for(
            "b's call at the provider",
            Duration::from_secs(30),
            || async { mock.state.requests().len() > before },
        )
        .await;
        let reserved = l.spend_entries().await.unwrap()[0].reserved;
        proxy.set(Link::Blackhole);
        mock.state.hold.send_replace(false);
        // the caller has its answer; the settlement waits in b's outbox
        let d = call.await.unwrap().unwrap();
        assert!(matches!(d.target, Some(pb::decision::Target::External(_))));
        assert_eq!(b.state.store.outbox_len().await.unwrap(), 1);
        // a charges the reservation at its worst case once its lease runs out
        edgewise_tests::harness::wait_for(
            "a sweeping b's expired reservation",
            Duration::from_secs(15),
            || async {
                l.spend_entries()
                    .await
                    .is_ok_and(|e| e[0].reserved == 0 && e[0].spent == reserved)
            },
        )
        .await;
        // healed: b's outbox settles late, refunding the difference once
        proxy.set(Link::Up);
        edgewise_tests::harness::wait_for("b's outbox sent", Duration::from_secs(15), || async {
            b.state.store.outbox_len().await.is_ok_and(|n| n == 0)
        })
        .await;
        let spent = l.spend_entries().await.unwrap()[0].spent;
        assert!(spent < reserved, "refunded: {spent} of {reserved}");
        let records = l.audit_range(0, u64::MAX).await.unwrap();
        let of = |g: &str| records.iter().filter(|r| r.gateway == g).count();
        assert_eq!((of("a"), of("b")), (1, 1), "{records:?}");
        let billed = records.iter().find(|r| r.gateway == "b").unwrap();
        assert_eq!((billed.cost_usd * 1e9).round() as u64, spent, "{billed:?}");
        assert!(
            l.verify_audit()
                .await
                .unwrap()
                .iter()
                .all(|c| c.problems.is_empty())
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_call_longer_than_its_lease_renews_it_and_is_never_swept() {
        let Some(pg) = server() else { return };
        let mock = MockProvider::start(KEY).await;
        let params = pg.database().await;
        // 1.5 s leases, swept every second by the gateway itself
        let lease = Duration::from_millis(1500);
        let (g, _p) = start_leased("g", 1.0, &mock, Some(&params), lease).await;
        let (client, conn) = tokio_postgres::connect(&params, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        mock.state.hold.send_replace(true);
        let call = tokio::spawn(hosted_at(g.addr));
        // held at the provider until its lease has been renewed twice past its first end
        edgewise_tests::harness::wait_for(
            "the lease renewed while the call goes on",
            Duration::from_secs(20),
            || async {
                client
                    .query_opt(
                        "SELECT 1 FROM ledger_reservation WHERE state = 'open'
                         AND lease_until > created + interval '3 seconds'",
                        &[],
                    )
                    .await
                    .is_ok_and(|r| r.is_some())
            },
        )
        .await;
        mock.state.hold.send_replace(false);
        call.await.unwrap().unwrap();
        let l = gateway(&params, "reader").await;
        let e = l.spend_entries().await.unwrap();
        assert_eq!(e[0].reserved, 0);
        let states: Vec<String> = client
            .query("SELECT state FROM ledger_reservation", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(states, ["settled"], "never charged as abandoned");
        let records = l.audit_range(0, u64::MAX).await.unwrap();
        assert!(
            records
                .iter()
                .all(|r| !r.outcome.starts_with("its lease ran out")),
            "{records:?}"
        );
    }

    #[tokio::test]
    async fn fleet_status_lists_every_gateway_and_warns_when_their_policies_differ() {
        let Some(pg) = server() else { return };
        let mock = MockProvider::start(KEY).await;
        let params = pg.database().await;
        // two gateways whose policies differ (their budgets do)
        let (a, _pa) = start("gw-a", 1.0, &mock, Some(&params)).await;
        let (_b, _pb) = start("gw-b", 2.0, &mock, Some(&params)).await;
        let mut c = gateway_client(a.addr);
        edgewise_tests::harness::wait_for(
            "both gateways' heartbeats",
            Duration::from_secs(15),
            || {
                let mut c = c.clone();
                async move {
                    let mut r = tonic::Request::new(pb::FleetStatusRequest {});
                    r.metadata_mut()
                        .insert("x-edgewise-tenant", "ops".parse().unwrap());
                    c.fleet_status(r)
                        .await
                        .is_ok_and(|s| s.into_inner().gateways.len() == 2)
                }
            },
        )
        .await;
        let mut r = tonic::Request::new(pb::FleetStatusRequest {});
        r.metadata_mut()
            .insert("x-edgewise-tenant", "ops".parse().unwrap());
        let s = c.fleet_status(r).await.unwrap().into_inner();
        let ids: Vec<&str> = {
            let mut v: Vec<&str> = s.gateways.iter().map(|g| g.id.as_str()).collect();
            v.sort_unstable();
            v
        };
        assert_eq!(ids, ["gw-a", "gw-b"]);
        assert!(
            s.gateways
                .iter()
                .all(|g| !g.version.is_empty() && g.seen_ms_ago < 15_000)
        );
        let out = cli(a.addr, &["fleet", "status"]).await;
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("gw-a") && text.contains("gw-b"), "{text}");
        assert!(
            text.contains("warning: the gateways route by 2 different policies"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn without_the_ledger_hosted_calls_are_refused_at_once_and_resume_by_themselves() {
        let Some(pg) = server() else { return };
        let mock = MockProvider::start(KEY).await;
        let params = pg.database().await;
        let (g, _p) = start("a", 1.0, &mock, Some(&params)).await;
        hosted(&g).await.unwrap();
        let before = mock.state.requests().len();
        pg.stop_immediate();
        // fail closed: UNAVAILABLE naming the shared ledger, within its bound (1.5 s), and no
        // call reaches the provider
        let t = std::time::Instant::now();
        let e = hosted(&g).await.unwrap_err();
        let took = t.elapsed();
        assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
        assert!(
            e.message().contains("shared ledger") || e.message().contains("postgresql://"),
            "{e:?}"
        );
        assert!(took < Duration::from_secs(5), "took {took:?}: {e:?}");
        assert_eq!(mock.state.requests().len(), before);
        // the shared_ledger_up gauge says so
        let up = || g.state.store.shared_ledger().unwrap().ledger.is_up();
        assert!(!up());
        // the gateway itself stays healthy (its health must not follow the database)
        let mut health = tonic_health::pb::health_client::HealthClient::new(
            tonic::transport::Channel::from_shared(format!("http://{}", g.addr))
                .unwrap()
                .connect()
                .await
                .unwrap(),
        );
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
        // back: hosted calls resume without a restart of the gateway
        pg.start_again();
        edgewise_tests::harness::wait_for(
            "a hosted call to be served again",
            Duration::from_secs(15),
            || async { hosted(&g).await.is_ok() },
        )
        .await;
        assert!(mock.state.requests().len() > before);
        assert!(up());
    }
}
