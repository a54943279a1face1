//! The store's side of a shared ledger: which one it is, every gateway's spend for routing,
//! lease renewal while a call goes on, and the shared audit's verification.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::{Store, StoreError, postgres};
use crate::ledger::LedgerError;

/// The budget ledger several gateways share (PostgreSQL): reservations and settlements go
/// there, every gateway's; the audit stays in this gateway's own store.
#[derive(Debug, Clone)]
pub struct SharedLedger {
    pub ledger: postgres::PgLedger,
    /// How long a reservation is held for its call before any gateway may charge it at its
    /// worst case (a settle that comes later refunds the difference).
    pub lease: Duration,
}

impl Store {
    /// Every gateway's hash chain in the shared audit log, verified; `None` where the audit
    /// log is this gateway's own.
    pub async fn verify_audit(
        &self,
    ) -> Option<Result<Vec<postgres::audit::ChainReport>, StoreError>> {
        let l = self.ledger.as_ref()?;
        Some(l.ledger.verify_audit().await.map_err(StoreError::from))
    }

    /// The shared ledger's spend (every gateway's) into the copy routing reads.
    pub async fn refresh_spend(&self) -> Result<(), LedgerError> {
        if let Some(l) = &self.ledger {
            for e in l.ledger.spend_entries().await? {
                self.shared.spend.set(e.key, e.spent);
            }
        }
        Ok(())
    }

    /// Renews reservation `id`'s lease on the shared ledger while its call goes on; false
    /// once it is no longer open (settled, or charged after its lease ran out).
    pub async fn extend_lease(&self, id: &str) -> bool {
        let Some(l) = &self.ledger else {
            return false;
        };
        match l.ledger.extend(id, l.lease).await {
            Ok(open) => open,
            Err(e) => {
                tracing::warn!(decision = %id, error = %e, "cannot renew the reservation's lease");
                true
            }
        }
    }

    /// With a shared ledger: renews reservation `id`'s lease every third of it until
    /// `settled` is set (or it is no longer open), so a long call is never charged as
    /// abandoned while its gateway is alive.
    pub fn keep_leased(&self, id: &str, settled: Arc<AtomicBool>) {
        let Some(every) = self.ledger.as_ref().map(|l| l.lease / 3) else {
            return;
        };
        let (store, id) = (self.clone(), id.to_string());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tick.tick().await;
                if settled.load(Ordering::Acquire) || !store.extend_lease(&id).await {
                    return;
                }
            }
        });
    }

    /// Whether the ledger is shared with other gateways (and where).
    pub fn shared_ledger(&self) -> Option<&SharedLedger> {
        self.ledger.as_ref()
    }
}
