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
