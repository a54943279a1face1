//! With a shared ledger: what could not reach it yet. A settlement (with its audit record)
//! or an audit record that the database did not take is written durably to this gateway's
//! own store instead, and sent on each sweep once the database answers again. Sending twice
//! is safe for a settlement (idempotent by its reservation's id; one that comes after its
//! lease was swept refunds the difference, once).

use prost::Message;
use serde::{Deserialize, Serialize};

use edgewise_proto as pb;

use super::{Store, StoreError};
use crate::ledger::{LedgerError, Settled, usd};

/// One entry waiting for the shared ledger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Pending {
    /// Settle reservation `id` at `charged` nano-USD, with the call's audit record (its
    /// cost set from what the settlement charges).
    Settle {
        id: String,
        charged: u64,
        record: Vec<u8>,
    },
    /// Append an audit record.
    Audit { record: Vec<u8> },
}

impl Pending {
    fn key(&self) -> Vec<u8> {
        match self {
            Pending::Settle { id, .. } => format!("s/{id}").into_bytes(),
            Pending::Audit { record } => {
                let r = pb::AuditRecord::decode(record.as_slice()).unwrap_or_default();
                format!("a/{:020}/{}/{}", r.unix_ms, r.decision_id, r.kind).into_bytes()
            }
        }
    }
}

impl Store {
    /// Keeps `p` durably until the shared ledger takes it.
    pub(super) async fn defer(&self, p: Pending) -> Result<(), StoreError> {
        let (key, value) = (
            p.key(),
            serde_json::to_vec(&p).map_err(|e| StoreError::Io {
                path: self.shared.path.clone(),
                detail: e.to_string(),
            })?,
        );
        let path = self.shared.path.clone();
        let n = self
            .call("outbox write", true, move |t| {
                t.outbox.insert(key, value).map(|_| t.outbox.len())
            })
            .await?
            .map_err(|e| StoreError::Io {
                path,
                detail: e.to_string(),
            })?;
        self.outbox_waiting
            .store(n, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Entries still waiting for the shared ledger.
    pub async fn outbox_len(&self) -> Result<usize, StoreError> {
        self.call("outbox read", false, |t| t.outbox.len()).await
    }

    /// Sends what waits in the outbox, oldest key first, and drops each entry the shared
    /// ledger took; stops at the first one it could not reach. How many were sent.
    pub async fn flush_outbox(&self) -> Result<usize, LedgerError> {
        let Some(l) = self.ledger.clone() else {
            return Ok(0);
        };
        let entries: Vec<(Vec<u8>, Vec<u8>)> = self
            .call("outbox read", false, |t| {
                t.outbox
                    .iter()
                    .flatten()
                    .map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .collect()
            })
            .await
            .map_err(LedgerError::Store)?;
        let mut sent = 0;
        let waiting = entries.len();
        self.outbox_waiting
            .store(waiting, std::sync::atomic::Ordering::Relaxed);
        for (key, value) in entries {
            let Ok(p) = serde_json::from_slice::<Pending>(&value) else {
                tracing::error!(key = %String::from_utf8_lossy(&key), "an outbox entry does not parse; left in place");
                continue;
            };
            match &p {
                Pending::Settle {
                    id,
                    charged,
                    record,
                } => {
                    let template = pb::AuditRecord::decode(record.as_slice()).unwrap_or_default();
                    let make = |s: &Settled| pb::AuditRecord {
                        cost_usd: usd(s.charged),
                        ..template.clone()
                    };
                    match l
                        .ledger
                        .settle_audited(id, Some(*charged), Some(&make))
                        .await
                    {
                        Ok((_, total)) => {
                            if let Some((k, t)) = total {
                                self.shared.spend.set(k, t);
                            }
                        }
                        // nothing to settle (never recorded): nothing was charged either
                        Err(LedgerError::NoReservation(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
                Pending::Audit { record } => {
                    let r = pb::AuditRecord::decode(record.as_slice()).unwrap_or_default();
                    l.ledger.append_audit(&r).await?;
                }
            }
            self.call("outbox removal", true, move |t| t.outbox.remove(key))
                .await
                .map_err(LedgerError::Store)?
                .map_err(|e| LedgerError::Storage(e.to_string()))?;
            sent += 1;
            self.outbox_waiting
                .store(waiting - sent, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(sent)
    }
}
