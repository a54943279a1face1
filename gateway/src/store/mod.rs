//! The gateway's embedded store: the budget ledger and the audit log in one sled database,
//! owned by one thread.
//!
//! Nothing on a tokio worker touches the database. A request hands its operation to the store
//! thread ([`writer`]) through a bounded queue and awaits the answer for at most the store's
//! write bound; a write is answered only after the flush that made it durable. The thread
//! takes every operation waiting in the queue at once, applies them in order and flushes once
//! for all of them (group commit), so sled never sees two flushes at the same time — sled
//! 0.34's concurrent `flush_async` can deadlock its I/O threads, which froze the gateway under
//! load — and its own periodic flusher is off for the same reason.
//!
//! Routing reads today's spend from a copy in memory that the store thread keeps current, so
//! deciding never waits for the disk.

pub(crate) mod config;
mod health;
mod outbox;
pub mod postgres;
mod shared;

pub use health::report_health;
pub use shared::SharedLedger;
pub(crate) mod writer;

pub use writer::Mirror;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use edgewise_proto as pb;
use prometheus_client::metrics::histogram::Histogram;

use crate::ledger::{LedgerError, Reservation, Settled, SpendKey, Spending};
use crate::routing::Budgets;

/// How long a request waits for the store by default before it fails with UNAVAILABLE.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Operations that may wait in the queue; past this a request fails at once.
const QUEUE: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error(
        "the gateway's store ({path}) did not complete the {what} within {bound:?}; nothing that needed it was done"
    )]
    Timeout {
        path: String,
        what: &'static str,
        bound: Duration,
    },
    #[error(
        "the gateway's store ({path}) has {QUEUE} operations waiting; the {what} was not queued"
    )]
    Full { path: String, what: &'static str },
    #[error("the gateway's store ({path}) is stopped")]
    Stopped { path: String },
    #[error("the gateway's store ({path}): {detail}")]
    Io { path: String, detail: String },
}

/// Where the store lives and how long a request may wait for it.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The state directory (`gateway.sled` inside it); `None`: a temporary database.
    pub dir: Option<std::path::PathBuf>,
    /// The longest a request waits for a durable write (or a read) before UNAVAILABLE.
    pub write_timeout: Duration,
    /// The budget ledger several gateways share; `None`: the ledger is this store's own.
    pub shared: Option<SharedLedger>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            dir: None,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            shared: None,
        }
    }
}

/// What the request side and the store thread share.
struct Shared {
    path: String,
    bound: Duration,
    origin: Instant,
    /// Today's spend + reserved per (day, tenant, provider), kept by the store thread.
    spend: writer::Mirror,
    /// Operations queued or being applied.
    pending: AtomicUsize,
    /// Milliseconds after `origin` at which the oldest operation of the batch being applied
    /// was queued (0: idle): its age is how long that operation's caller has waited.
    busy_since_ms: AtomicU64,
    /// The last flush failed (cleared by the next one that succeeds).
    failed: AtomicBool,
    /// Enqueue-to-acknowledgement time of each durable write.
    write_seconds: Histogram,
    /// Flushes done, and durable operations they covered (writes per flush = their ratio).
    flushes: AtomicU64,
    flushed_writes: AtomicU64,
    /// Set by `close`: the thread stops once its queue is empty and closes the database.
    closing: AtomicBool,
    /// True once the thread has closed the database.
    closed: tokio::sync::watch::Sender<bool>,
    /// Fault injection: while set, the store thread waits after taking its next batch,
    /// before applying it.
    held: Mutex<bool>,
    release: Condvar,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        self.ms_of(Instant::now())
    }

    fn ms_of(&self, t: Instant) -> u64 {
        // +1: 0 means idle
        t.saturating_duration_since(self.origin).as_millis() as u64 + 1
    }

    /// Blocks the store thread while a test holds it.
    fn wait_while_held(&self) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        while *held {
            held = self.release.wait(held).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// A handle on the store; clones share the one thread.
#[derive(Clone)]
pub struct Store {
    tx: tokio::sync::mpsc::Sender<writer::Job>,
    shared: Arc<Shared>,
    /// The shared ledger, when the gateway uses one.
    ledger: Option<SharedLedger>,
    /// Outbox entries seen at its last flush or write (for the gauge).
    outbox_waiting: Arc<AtomicUsize>,
}

/// Holds the store thread (fault injection) until dropped.
pub struct HeldWriter {
    shared: Arc<Shared>,
}

impl Drop for HeldWriter {
    fn drop(&mut self) {
        *self.shared.held.lock().unwrap_or_else(|p| p.into_inner()) = false;
        self.shared.release.notify_all();
    }
}

impl Store {
    /// Opens (or creates) the database and starts its thread.
    pub fn open(options: &StoreOptions) -> Result<Self, StoreError> {
        let path = options.dir.as_ref().map_or("temporary".into(), |d| {
            d.join("gateway.sled").display().to_string()
        });
        let io = |e: &dyn std::fmt::Display| StoreError::Io {
            path: path.clone(),
            detail: e.to_string(),
        };
        // no periodic flusher: the store thread is the only one that ever flushes
        let config = sled::Config::new().flush_every_ms(None);
        let config = match &options.dir {
            Some(d) => {
                std::fs::create_dir_all(d).map_err(|e| io(&e))?;
                config.path(d.join("gateway.sled"))
            }
            None => config.temporary(true),
        };
        let db = config.open().map_err(|e| io(&e))?;
        let mut tables = writer::Tables::open(db).map_err(|e| io(&e))?;
        let spend = writer::Mirror(Arc::new(RwLock::new(
            tables.ledger.totals().map_err(|e| io(&e))?,
        )));
        tables.mirror = spend.clone();
        let shared = Arc::new(Shared {
            path: path.clone(),
            bound: options.write_timeout,
            origin: Instant::now(),
            spend,
            pending: AtomicUsize::new(0),
            busy_since_ms: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            write_seconds: Histogram::new(edgewise_ops::metrics::latency_buckets()),
            flushes: AtomicU64::new(0),
            flushed_writes: AtomicU64::new(0),
            closing: AtomicBool::new(false),
            closed: tokio::sync::watch::Sender::new(false),
            held: Mutex::new(false),
            release: Condvar::new(),
        });
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("edgewise-store".into())
            .spawn(move || writer::run(rx, tables, thread_shared))
            .map_err(|e| io(&e))?;
        Ok(Self {
            tx,
            shared,
            ledger: options.shared.clone(),
            outbox_waiting: Arc::default(),
        })
    }

    /// Where the database is (for messages).
    pub fn path(&self) -> &str {
        &self.shared.path
    }

    /// The longest a request waits for the store.
    pub fn bound(&self) -> Duration {
        self.shared.bound
    }

    /// Runs `f` on the store thread; a `durable` operation is answered after its flush.
    /// Waits at most the store's bound.
    async fn call<T: Send + 'static>(
        &self,
        what: &'static str,
        durable: bool,
        f: impl FnOnce(&writer::Tables) -> T + Send + 'static,
    ) -> Result<T, StoreError> {
        self.call_within(what, durable, self.shared.bound, f).await
    }

    /// `call`, waiting at most `bound`.
    async fn call_within<T: Send + 'static>(
        &self,
        what: &'static str,
        durable: bool,
        bound: Duration,
        f: impl FnOnce(&writer::Tables) -> T + Send + 'static,
    ) -> Result<T, StoreError> {
        let rx = self.submit(what, durable, f)?;
        match tokio::time::timeout(bound, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(self.stopped()),
            Err(_) => Err(self.timed_out(what, bound)),
        }
    }

    fn timed_out(&self, what: &'static str, bound: Duration) -> StoreError {
        StoreError::Timeout {
            path: self.shared.path.clone(),
            what,
            bound,
        }
    }

    /// Queues `f` without waiting for it (never blocks: a full queue is an error).
    fn submit<T: Send + 'static>(
        &self,
        what: &'static str,
        durable: bool,
        f: impl FnOnce(&writer::Tables) -> T + Send + 'static,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<T, StoreError>>, StoreError> {
        let (job, rx) = writer::Job::new(durable, f);
        self.shared.pending.fetch_add(1, Ordering::AcqRel);
        match self.tx.try_send(job) {
            Ok(()) => Ok(rx),
            Err(e) => {
                self.shared.pending.fetch_sub(1, Ordering::AcqRel);
                Err(match e {
                    tokio::sync::mpsc::error::TrySendError::Full(_) => StoreError::Full {
                        path: self.shared.path.clone(),
                        what,
                    },
                    tokio::sync::mpsc::error::TrySendError::Closed(_) => self.stopped(),
                })
            }
        }
    }

    fn stopped(&self) -> StoreError {
        StoreError::Stopped {
            path: self.shared.path.clone(),
        }
    }

    /// Reserves `r.nanos` if spent + reserved + `r.nanos` stays within `limit` nano-USD;
    /// answered once the reservation is on disk. A reservation whose answer did not come in
    /// time, or whose flush failed, is released as soon as the store gets to it (the call it
    /// was for is not made).
    pub async fn reserve(&self, id: &str, r: &Reservation, limit: u64) -> Result<(), LedgerError> {
        if let Some(l) = &self.ledger {
            if let Some(total) = l.ledger.reserve(id, r, limit, l.lease).await? {
                self.shared
                    .spend
                    .set(SpendKey::new(&r.day, &r.tenant, &r.provider), total);
            }
            return Ok(());
        }
        let (id, r) = (id.to_string(), r.clone());
        let release_id = id.clone();
        let answer = self
            .call("budget reservation", true, move |t| {
                t.ledger.reserve(&id, &r, limit, &t.mirror)
            })
            .await;
        match answer {
            Ok(result) => result,
            Err(e) => {
                // timed out, or applied but not made durable: nothing will use it, so it is
                // released (queued behind it, this runs after it, whatever that did)
                if matches!(e, StoreError::Timeout { .. } | StoreError::Io { .. }) {
                    let _ = self.submit("reservation release", true, move |t| {
                        let _ = t.ledger.settle(&release_id, Some(0), &t.mirror);
                    });
                }
                Err(LedgerError::Store(e))
            }
        }
    }

    /// Replaces reservation `id` by the actual cost; answered once that is on disk.
    pub async fn settle(&self, id: &str, charged: u64) -> Result<Settled, LedgerError> {
        if let Some(l) = &self.ledger {
            let (settled, total) = l.ledger.settle_audited(id, Some(charged), None).await?;
            if let Some((key, total)) = total {
                self.shared.spend.set(key, total);
            }
            return Ok(settled);
        }
        let id = id.to_string();
        self.call("settlement", true, move |t| {
            t.ledger.settle(&id, Some(charged), &t.mirror)
        })
        .await
        .map_err(LedgerError::Store)?
    }

    /// Reservations whose calls never settled (the gateway stopped mid-call): charged at
    /// their worst case and closed, durably. Returns them for the audit.
    pub async fn settle_abandoned(&self) -> Result<Vec<(String, Reservation)>, LedgerError> {
        self.settle_abandoned_audited(None).await
    }

    /// As `settle_abandoned`; where the ledger is shared, each one's audit record (`audit`)
    /// is written in the same transaction as its charge.
    pub async fn settle_abandoned_audited(
        &self,
        audit: Option<&postgres::SweptRecord<'_>>,
    ) -> Result<Vec<(String, Reservation)>, LedgerError> {
        if let Some(l) = &self.ledger {
            // what waited for the ledger first: a settle after its lease ran out refunds
            match self.flush_outbox().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(sent = n, "the outbox reached the shared ledger"),
                Err(e) => tracing::warn!(error = %e, "the outbox waits for the shared ledger"),
            }
            // the audit log's partitions for the days ahead, once a day
            if let Err(e) = l.ledger.ensure_partitions_daily().await {
                tracing::warn!(error = %e, "cannot make the audit log's partitions ahead");
            }
            // any gateway's reservations whose lease ran out (this one's among them)
            let swept = l.ledger.sweep_audited(1000, audit).await?;
            self.refresh_spend().await?;
            return Ok(swept);
        }
        self.call("settlement of abandoned reservations", true, move |t| {
            t.ledger.settle_abandoned(&t.mirror)
        })
        .await
        .map_err(LedgerError::Store)?
    }

    /// Settles reservation `id` and appends the call's audit record, made from what was
    /// settled: in one transaction where the ledger is shared, else one after the other.
    pub async fn settle_audited(
        &self,
        id: &str,
        charged: u64,
        record: &postgres::SettledRecord<'_>,
    ) -> Result<Settled, LedgerError> {
        if let Some(l) = &self.ledger {
            return match l
                .ledger
                .settle_audited(id, Some(charged), Some(record))
                .await
            {
                Ok((settled, total)) => {
                    if let Some((key, total)) = total {
                        self.shared.spend.set(key, total);
                    }
                    Ok(settled)
                }
                // out of reach: kept here and sent when it answers (its lease may charge
                // the worst case meanwhile; this settle then refunds the difference)
                Err(LedgerError::Store(e)) => {
                    let template = record(&Settled {
                        reserved: charged,
                        charged,
                    });
                    self.defer(outbox::Pending::Settle {
                        id: id.to_string(),
                        charged,
                        record: prost::Message::encode_to_vec(&template),
                    })
                    .await
                    .map_err(LedgerError::Store)?;
                    tracing::warn!(decision = %id, error = %e, "the shared ledger is out of reach: the settlement is kept in this gateway's outbox until it answers");
                    Ok(Settled {
                        reserved: charged,
                        charged,
                    })
                }
                Err(e) => Err(e),
            };
        }
        let settled = self.settle(id, charged).await?;
        if let Err(e) = self.append_audit(record(&settled)).await {
            tracing::error!(decision = %id, error = %e, "cannot write the audit record");
        }
        Ok(settled)
    }

    /// Appends an audit record; answered once it is on disk. Where the audit is shared and
    /// out of reach, the record waits in this gateway's outbox (else its own log) instead.
    pub async fn append_audit(&self, record: pb::AuditRecord) -> Result<(), StoreError> {
        if let Some(l) = &self.ledger {
            match l.ledger.append_audit(&record).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::warn!(error = %e, decision = %record.decision_id, "the shared audit log is out of reach: the record waits in this gateway's outbox");
                    let pending = outbox::Pending::Audit {
                        record: prost::Message::encode_to_vec(&record),
                    };
                    if self.defer(pending).await.is_ok() {
                        return Ok(());
                    }
                }
            }
        }
        let path = self.shared.path.clone();
        self.call("audit append", true, move |t| t.audit.append(&record))
            .await?
            .map_err(|e| StoreError::Io {
                path,
                detail: e.to_string(),
            })
    }

    /// Audit records with `since_ms <= unix_ms < until_ms`, oldest first (every gateway's
    /// where the audit is shared).
    pub async fn audit_range(
        &self,
        since_ms: u64,
        until_ms: u64,
    ) -> Result<Vec<pb::AuditRecord>, StoreError> {
        if let Some(l) = &self.ledger {
            return Ok(l.ledger.audit_range(since_ms, until_ms).await?);
        }
        self.call("audit read", false, move |t| {
            t.audit.range(since_ms, until_ms)
        })
        .await
    }

    /// How many audit records there are.
    #[cfg(test)]
    async fn audit_len(&self) -> Result<usize, StoreError> {
        self.call("audit read", false, |t| t.audit.len()).await
    }

    /// Every (day, tenant, provider) with its spent + reserved and reserved-only nano-USD.
    pub async fn spend_entries(&self) -> Result<Vec<Spending>, StoreError> {
        if let Some(l) = &self.ledger {
            return l.ledger.spend_entries().await.map_err(|e| match e {
                LedgerError::Store(e) => e,
                other => StoreError::Io {
                    path: l.ledger.at().to_string(),
                    detail: other.to_string(),
                },
            });
        }
        self.call("ledger read", false, |t| t.ledger.entries())
            .await
    }

    /// Spent + reserved today per (tenant, provider) for `tenant`, in USD, for routing: from
    /// memory, never waiting for the store.
    pub fn budgets(&self, day: &str, tenant: &str) -> Budgets {
        let spend = self
            .shared
            .spend
            .0
            .read()
            .unwrap_or_else(|p| p.into_inner());
        crate::ledger::budgets_of(&spend, day, tenant)
    }

    /// Spent + reserved (nano-USD) for one key, from memory.
    #[cfg(test)]
    fn spent(&self, day: &str, tenant: &str, provider: &str) -> u64 {
        let spend = self
            .shared
            .spend
            .0
            .read()
            .unwrap_or_else(|p| p.into_inner());
        spend
            .get(&crate::ledger::SpendKey::new(day, tenant, provider))
            .copied()
            .unwrap_or(0)
    }

    /// Makes everything written so far durable and closes the database (the directory can be
    /// opened again at once), waiting at most `bound`: a stuck store is left behind, and what
    /// it had acknowledged is durable already. Later operations fail with `Stopped`.
    pub async fn close(&self, bound: Duration) -> Result<(), StoreError> {
        let deadline = tokio::time::Instant::now() + bound;
        let mut closed = self.shared.closed.subscribe();
        self.shared.closing.store(true, Ordering::Release);
        // the thread may be waiting for work: this flush wakes it, and it stops after it
        let flushed = match self.call_within("final flush", true, bound, |_| ()).await {
            // closed already
            Err(StoreError::Stopped { .. }) => Ok(()),
            Err(e @ StoreError::Timeout { .. }) => return Err(e),
            r => r,
        };
        match tokio::time::timeout_at(deadline, closed.wait_for(|c| *c)).await {
            Ok(_) => flushed,
            Err(_) => Err(self.timed_out("final flush", bound)),
        }
    }

    /// Makes everything written so far durable, waiting at most `bound`.
    #[cfg(test)]
    async fn flush(&self, bound: Duration) -> Result<(), StoreError> {
        self.call_within("flush", true, bound, |_| ()).await
    }

    /// Why the store is unhealthy, if it is: an operation being applied that was queued at
    /// least the bound ago (its caller has given up), or a failed last flush.
    pub fn unhealthy(&self) -> Option<String> {
        if self.shared.failed.load(Ordering::Acquire) {
            return Some(format!(
                "the gateway's store ({}) failed its last flush",
                self.shared.path
            ));
        }
        let since = self.shared.busy_since_ms.load(Ordering::Acquire);
        let busy = Duration::from_millis(self.shared.now_ms().saturating_sub(since));
        // a caller that timed out waited the bound: from then on the store is unhealthy
        (since != 0 && busy >= self.shared.bound).then(|| {
            format!(
                "the gateway's store ({}) has kept an operation waiting {busy:?} (bound {:?}); {} queued or being applied",
                self.shared.path,
                self.shared.bound,
                self.pending()
            )
        })
    }

    /// (flushes, durable operations they covered) since the store opened.
    pub fn flush_counts(&self) -> (u64, u64) {
        (
            self.shared.flushes.load(Ordering::Acquire),
            self.shared.flushed_writes.load(Ordering::Acquire),
        )
    }

    /// Operations queued or being applied.
    pub fn pending(&self) -> usize {
        self.shared.pending.load(Ordering::Acquire)
    }

    /// Fault injection for tests: the store thread waits with its next batch taken, unapplied,
    /// until the guard is dropped (requests then wait for it, up to the bound, as with a stuck disk).
    pub fn hold_writer(&self) -> HeldWriter {
        *self.shared.held.lock().unwrap_or_else(|p| p.into_inner()) = true;
        HeldWriter {
            shared: self.shared.clone(),
        }
    }

    /// The store's metrics: write latency, pending operations, health.
    pub fn register_metrics(&self, r: &mut prometheus_client::registry::Registry) {
        r.register(
            "store_write_seconds",
            "Time from queueing a durable write (reservation, settlement, audit record) to its acknowledgement after the flush",
            self.shared.write_seconds.clone(),
        );
        r.register_collector(Box::new(health::StoreGauges(self.clone())));
    }
}

#[cfg(test)]
mod tests;
