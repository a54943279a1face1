//! The store thread: takes every queued operation at once, applies them in order, flushes
//! once if any of them wrote, then answers each (group commit). It is the only code that
//! touches the database, and the only one that ever flushes it.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use super::{Shared, StoreError};
use crate::audit::AuditLog;
use crate::ledger::{LedgerTrees, SpendKey};

/// Most operations applied under one flush.
const MAX_BATCH: usize = 512;

/// The database's trees, and the in-memory spend the store thread keeps current.
pub struct Tables {
    pub db: sled::Db,
    pub ledger: LedgerTrees,
    pub audit: AuditLog,
    /// With a shared ledger: settlements and audit records that could not reach it yet,
    /// kept durably here and sent when it answers again.
    pub outbox: sled::Tree,
    pub mirror: Mirror,
}

/// The request side's copy of the spend tree: (day, tenant, provider) → spent + reserved.
#[derive(Clone, Default)]
pub struct Mirror(pub(super) Arc<RwLock<BTreeMap<SpendKey, u64>>>);

impl Mirror {
    /// Records the new spend + reserved of `key` for routing.
    pub fn set(&self, key: SpendKey, nanos: u64) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, nanos);
    }

    /// A copy of the whole map.
    pub fn snapshot(&self) -> BTreeMap<SpendKey, u64> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Tables {
    pub fn open(db: sled::Db) -> Result<Self, sled::Error> {
        Ok(Self {
            ledger: LedgerTrees::open(&db)?,
            audit: AuditLog::open(&db)?,
            outbox: db.open_tree("outbox")?,
            db,
            mirror: Mirror::default(),
        })
    }
}

/// Answers an operation once its batch is flushed (or with the flush's error).
type Ack = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// One queued operation.
pub struct Job {
    durable: bool,
    queued: Instant,
    run: Box<dyn FnOnce(&Tables) -> Ack + Send>,
}

impl Job {
    pub fn new<T: Send + 'static>(
        durable: bool,
        f: impl FnOnce(&Tables) -> T + Send + 'static,
    ) -> (Self, tokio::sync::oneshot::Receiver<Result<T, StoreError>>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = Job {
            durable,
            queued: Instant::now(),
            run: Box::new(move |tables| {
                let value = f(tables);
                Box::new(move |flushed: Result<(), StoreError>| {
                    // the caller may have given up waiting: nothing to answer then
                    let _ = tx.send(flushed.map(|()| value));
                })
            }),
        };
        (job, rx)
    }
}

/// The thread's loop; ends when every handle is gone.
pub(super) fn run(mut rx: tokio::sync::mpsc::Receiver<Job>, tables: Tables, shared: Arc<Shared>) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        // the batch's first operation is its oldest
        shared
            .busy_since_ms
            .store(shared.ms_of(batch[0].queued), Ordering::Release);
        shared.wait_while_held();
        let durable = batch.iter().any(|j| j.durable);
        let acks: Vec<(bool, Instant, Ack)> = batch
            .drain(..)
            .map(|j| (j.durable, j.queued, (j.run)(&tables)))
            .collect();
        let flushed = if durable {
            tables.db.flush().map(drop).map_err(|e| StoreError::Io {
                path: shared.path.clone(),
                detail: format!("flush: {e}"),
            })
        } else {
            Ok(())
        };
        if durable {
            shared.failed.store(flushed.is_err(), Ordering::Release);
            let writes = acks.iter().filter(|(d, ..)| *d).count() as u64;
            shared.flushes.fetch_add(1, Ordering::AcqRel);
            shared.flushed_writes.fetch_add(writes, Ordering::AcqRel);
        }
        if let Err(e) = &flushed {
            tracing::error!(error = %e, "the store could not make writes durable");
        }
        shared.busy_since_ms.store(0, Ordering::Release);
        for (durable, queued, ack) in acks {
            if durable {
                shared.write_seconds.observe(queued.elapsed().as_secs_f64());
            }
            // counted out before the answer: whoever hears it sees the queue without it
            shared.pending.fetch_sub(1, Ordering::AcqRel);
            ack(flushed.clone());
        }
        // closing: stop once nothing is left queued (a release queued behind a timed-out
        // reservation still runs)
        if shared.closing.load(Ordering::Acquire) && rx.is_empty() {
            break;
        }
    }
    // operations still queued are answered `Stopped` as the queue drops
    drop(rx);
    if let Err(e) = tables.db.flush() {
        tracing::error!(error = %e, "the store's last flush failed");
    }
    drop(tables);
    shared.closed.send_replace(true);
}
