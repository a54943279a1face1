use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

fn res(tenant: &str, nanos: u64) -> Reservation {
    Reservation {
        day: "2026-11-24".into(),
        tenant: tenant.into(),
        provider: "openai".into(),
        nanos,
    }
}

fn temporary(bound: Duration) -> Store {
    Store::open(&StoreOptions {
        dir: None,
        write_timeout: bound,
        shared: None,
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_reservations_never_overspend_and_share_flushes() {
    let store = temporary(Duration::from_secs(10));
    // 200 callers at once, each asking 7 of a budget of 500: exactly 71 fit
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.reserve(&format!("r{i}"), &res("shop", 7), 500).await })
        })
        .collect();
    let mut granted = 0;
    for t in tasks {
        match t.await.unwrap_or_else(|e| panic!("{e}")) {
            Ok(()) => granted += 1,
            Err(LedgerError::OverBudget { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(granted, 71);
    assert_eq!(store.spent("2026-11-24", "shop", "openai"), 71 * 7);
    let (flushes, writes) = store.flush_counts();
    assert_eq!(
        writes, 200,
        "every reservation, granted or not, was answered after a flush"
    );
    assert!(
        flushes < writes,
        "{flushes} flushes for {writes} writes: no group commit"
    );
    let entries = store
        .spend_entries()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(entries.len(), 1);
    assert_eq!((entries[0].spent, entries[0].reserved), (497, 497));
}

#[tokio::test]
async fn what_was_acknowledged_is_there_after_reopening() {
    let (dir, options) = on_disk();
    {
        let store = Store::open(&options).unwrap_or_else(|e| panic!("{e}"));
        store
            .reserve("a", &res("shop", 700), 1000)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        store
            .append_audit(pb::AuditRecord {
                unix_ms: 5,
                decision_id: "a".into(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        // no flush and no close: the handle is just dropped, as a killed process would
        std::mem::forget(store);
    }
    // the forgotten store still holds sled's lock on the directory: read a copy of its files
    let copy = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    copy_dir(
        &dir.path().join("gateway.sled"),
        &copy.path().join("gateway.sled"),
    );
    let store = Store::open(&StoreOptions {
        dir: Some(copy.path().to_path_buf()),
        ..options
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(store.spent("2026-11-24", "shop", "openai"), 700);
    assert_eq!(store.audit_len().await, Ok(1));
    let open = store
        .settle_abandoned()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(open.len(), 1);
    assert_eq!(store.spent("2026-11-24", "shop", "openai"), 700);
}

/// A fresh directory, and options to open a store there.
fn on_disk() -> (tempfile::TempDir, StoreOptions) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let options = StoreOptions {
        dir: Some(dir.path().to_path_buf()),
        write_timeout: Duration::from_secs(10),
        shared: None,
    };
    (dir, options)
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("{e}"));
    for entry in std::fs::read_dir(from).unwrap_or_else(|e| panic!("{e}")) {
        let entry = entry.unwrap_or_else(|e| panic!("{e}"));
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_writer_fails_requests_at_the_bound_and_releases_their_reservations() {
    // long enough that the first, healthy reservation never meets it on a busy machine
    let bound = Duration::from_secs(1);
    let store = temporary(bound);
    store
        .reserve("before", &res("shop", 100), 1000)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(store.unhealthy(), None);
    let held = store.hold_writer();
    let started = Instant::now();
    let err = store.reserve("held", &res("shop", 100), 1000).await;
    let waited = started.elapsed();
    match &err {
        Err(LedgerError::Store(StoreError::Timeout { what, bound: b, .. })) => {
            assert_eq!((*what, *b), ("budget reservation", bound));
        }
        other => panic!("{other:?}"),
    }
    assert!(
        err.as_ref()
            .map_err(|e| e.to_string())
            .err()
            .is_some_and(|m| m.contains("the gateway's store (temporary)")),
        "{err:?}"
    );
    assert!(waited >= bound && waited < bound * 10, "{waited:?}");
    assert!(store.unhealthy().is_some());
    assert!(store.pending() >= 2, "the reservation and its release wait");
    // the final flush of a stopping gateway gives up at its bound too
    assert!(matches!(
        store.flush(bound).await,
        Err(StoreError::Timeout { .. })
    ));
    drop(held);
    // once the store runs again the timed-out reservation is applied, then released
    store
        .flush(Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(store.spent("2026-11-24", "shop", "openai"), 100);
    assert_eq!(store.unhealthy(), None);
    assert_eq!(store.pending(), 0);
    let entries = store
        .spend_entries()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(entries[0].reserved, 100, "only `before` is still open");
}

#[tokio::test]
async fn budgets_for_routing_come_from_memory() {
    let store = Arc::new(temporary(Duration::from_secs(10)));
    store
        .reserve("a", &res("shop", 2_000), 1_000_000)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    store
        .reserve("b", &res("other", 5_000), 1_000_000)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let _held = store.hold_writer();
    let b = store.budgets("2026-11-24", "shop");
    assert_eq!(
        b.spent_usd.get(&("shop".into(), "openai".into())),
        Some(&2e-6)
    );
    assert_eq!(b.spent_usd.len(), 1);
}

#[tokio::test]
async fn close_makes_everything_durable_and_frees_the_directory() {
    let (_dir, options) = on_disk();
    let store = Store::open(&options).unwrap_or_else(|e| panic!("{e}"));
    store
        .reserve("a", &res("shop", 300), 1000)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    store
        .close(Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        store.settle("a", 1).await,
        Err(LedgerError::Store(StoreError::Stopped { .. }))
    ));
    // closing twice is harmless
    assert_eq!(store.close(Duration::from_secs(1)).await, Ok(()));
    let again = Store::open(&options).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again.spent("2026-11-24", "shop", "openai"), 300);
}
