//! The audit log in the shared database: append-only (the database rejects UPDATE, DELETE
//! and TRUNCATE), partitioned by UTC day, and one hash chain per gateway.
//!
//! Each gateway is the single writer of its chain: record n carries its sequence number, the
//! hash of record n − 1 and its own hash over (previous hash, gateway, sequence number, the
//! record's bytes), so a deleted record shows as a gap and an edited one as a hash that does
//! not match. Chaining costs a SHA-256 and no coordination between gateways. Honest limit: a
//! database superuser can rewrite a whole chain's tail and hash it again; the chain catches
//! edits by anyone less.

use prost::Message;
use sha2::{Digest, Sha256};

use edgewise_proto as pb;

/// The hash before a chain's first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The last record of this gateway's chain: its sequence number and hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub seq: i64,
    pub hash: String,
}

impl Default for Head {
    fn default() -> Self {
        Self {
            seq: 0,
            hash: GENESIS.to_string(),
        }
    }
}

/// A record's bytes as stored and hashed (its protobuf encoding: fields in tag order).
pub fn bytes_of(record: &pb::AuditRecord) -> Vec<u8> {
    let mut r = record.clone();
    // where it is in the chain is the row's, not the record's
    r.gateway.clear();
    r.seq = 0;
    r.encode_to_vec()
}

/// hash(n) = sha256(hash(n − 1) ‖ gateway ‖ n ‖ record bytes), hex.
pub fn link(prev: &str, gateway: &str, seq: i64, record: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update([0]);
    h.update(gateway.as_bytes());
    h.update([0]);
    h.update(seq.to_be_bytes());
    h.update(record);
    h.finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
}

/// The UTC day of a time in milliseconds since the epoch, as PostgreSQL's `date` reads it.
pub fn day_of_ms(unix_ms: u64) -> String {
    crate::ledger::day_of(std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms))
}

/// One gateway's chain, as verification saw it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChainReport {
    pub gateway: String,
    pub records: u64,
    pub last_seq: i64,
    /// What is wrong, one line each: a gap (records deleted), a record whose hash does not
    /// match its content (edited), a link that does not match the record before it.
    pub problems: Vec<String>,
}

/// Verifies chains from rows in (gateway, seq) order: (gateway, seq, prev_hash, hash,
/// record bytes).
pub fn verify(
    rows: impl IntoIterator<Item = (String, i64, String, String, Vec<u8>)>,
) -> Vec<ChainReport> {
    let mut out: Vec<ChainReport> = Vec::new();
    let mut prev = Head::default();
    for (gateway, seq, prev_hash, hash, bytes) in rows {
        if out.last().is_none_or(|r| r.gateway != gateway) {
            out.push(ChainReport {
                gateway: gateway.clone(),
                ..Default::default()
            });
            prev = Head::default();
        }
        let Some(report) = out.last_mut() else {
            continue;
        };
        report.records += 1;
        report.last_seq = seq;
        if seq != prev.seq + 1 {
            report.problems.push(if seq > prev.seq + 1 {
                format!(
                    "records {}..={} are missing (deleted)",
                    prev.seq + 1,
                    seq - 1
                )
            } else {
                format!("record {seq} appears out of order")
            });
        } else if prev_hash != prev.hash {
            report
                .problems
                .push(format!("record {seq} does not link to record {}", prev.seq));
        }
        if link(&prev_hash, &gateway, seq, &bytes) != hash {
            report.problems.push(format!(
                "record {seq} was edited: its hash does not match its content"
            ));
        }
        prev = Head { seq, hash };
    }
    out
}

impl super::PgLedger {
    /// The head of this gateway's chain as the database has it.
    pub(super) async fn load_head(
        &self,
        c: &impl tokio_postgres::GenericClient,
    ) -> Result<Head, super::PgError> {
        let row = c
            .query_opt(
                "SELECT seq, hash FROM audit_record WHERE gateway = $1
                 ORDER BY seq DESC LIMIT 1",
                &[&self.gateway],
            )
            .await
            .map_err(|e| self.failed(&e))?;
        Ok(row.map_or_else(Head::default, |r| Head {
            seq: r.get(0),
            hash: r.get(1),
        }))
    }

    /// Inserts `record` after `head` in this gateway's chain (inside the caller's
    /// transaction); the new head.
    pub(super) async fn insert_audit(
        &self,
        c: &impl tokio_postgres::GenericClient,
        head: &Head,
        record: &pb::AuditRecord,
    ) -> Result<Head, super::PgError> {
        let bytes = bytes_of(record);
        let seq = head.seq + 1;
        let hash = link(&head.hash, &self.gateway, seq, &bytes);
        let day = day_of_ms(record.unix_ms);
        let unix_ms = i64::try_from(record.unix_ms).unwrap_or(i64::MAX);
        c.execute(
            "INSERT INTO audit_record (day, gateway, seq, unix_ms, record, prev_hash, hash)
             VALUES ($1::text::date, $2, $3, $4, $5, $6, $7)",
            &[
                &day,
                &self.gateway,
                &seq,
                &unix_ms,
                &bytes,
                &head.hash,
                &hash,
            ],
        )
        .await
        .map_err(|e| self.failed(&e))?;
        Ok(Head { seq, hash })
    }

    /// Appends `record` to this gateway's chain, durably. A head that another process under
    /// the same id moved on (or an insert whose answer was lost) is read again once.
    pub async fn append_audit(&self, record: &pb::AuditRecord) -> Result<(), super::PgError> {
        self.bounded("audit append", async {
            let mut chain = self.chain.lock().await;
            let c = self.client().await?;
            let head = match chain.as_ref() {
                Some(h) => h.clone(),
                None => self.load_head(&**c).await?,
            };
            let next = match self.insert_audit(&**c, &head, record).await {
                Ok(h) => h,
                Err(_) => {
                    let head = self.load_head(&**c).await?;
                    self.insert_audit(&**c, &head, record).await?
                }
            };
            *chain = Some(next);
            Ok(())
        })
        .await
    }

    /// Every gateway's records with `since_ms <= unix_ms < until_ms`, oldest first, each
    /// with its gateway and place in that gateway's chain.
    pub async fn audit_range(
        &self,
        since_ms: u64,
        until_ms: u64,
    ) -> Result<Vec<pb::AuditRecord>, super::PgError> {
        let (since, until) = (
            i64::try_from(since_ms).unwrap_or(i64::MAX),
            i64::try_from(until_ms).unwrap_or(i64::MAX),
        );
        self.bounded("audit read", async {
            let c = self.client().await?;
            let rows = c
                .query(
                    "SELECT gateway, seq, record FROM audit_record
                     WHERE unix_ms >= $1 AND unix_ms < $2
                     ORDER BY unix_ms, gateway, seq",
                    &[&since, &until],
                )
                .await
                .map_err(|e| self.failed(&e))?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                let bytes: Vec<u8> = row.get(2);
                let mut r = pb::AuditRecord::decode(bytes.as_slice()).map_err(|e| {
                    super::PgError::Unavailable {
                        at: self.at.clone(),
                        detail: format!("an audit record does not decode: {e}"),
                    }
                })?;
                r.gateway = row.get(0);
                r.seq = row.get::<_, i64>(1).max(0) as u64;
                out.push(r);
            }
            Ok(out)
        })
        .await
    }

    /// Verifies every gateway's chain (reads the whole log; an operator's check, not a
    /// request's, so bounded by ten times the ledger's bound).
    pub async fn verify_audit(&self) -> Result<Vec<ChainReport>, super::PgError> {
        let bound = self.timeout * 10;
        tokio::time::timeout(bound, async {
            let c = self.client().await?;
            let rows = c
                .query(
                    "SELECT gateway, seq, prev_hash, hash, record FROM audit_record
                     ORDER BY gateway, seq",
                    &[],
                )
                .await
                .map_err(|e| self.failed(&e))?;
            Ok(verify(rows.into_iter().map(|r| {
                (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))
            })))
        })
        .await
        .map_err(|_| super::PgError::Timeout {
            at: self.at.clone(),
            what: "audit verification",
            bound,
        })?
    }

    /// `ensure_partitions(7)` at most once per UTC day.
    pub async fn ensure_partitions_daily(&self) -> Result<(), super::PgError> {
        let today = crate::ledger::day_of(std::time::SystemTime::now());
        let mut done = self.partitioned.lock().await;
        if done.as_deref() == Some(today.as_str()) {
            return Ok(());
        }
        self.ensure_partitions(7).await?;
        *done = Some(today);
        Ok(())
    }

    /// Makes the audit log's daily partitions for today and the next `days` (under a
    /// transaction-scoped advisory lock, so gateways do not race the DDL). A day whose
    /// records already went to the default partition keeps them there.
    pub async fn ensure_partitions(&self, days: u32) -> Result<(), super::PgError> {
        self.bounded("audit partitions", async {
            let mut c = self.client().await?;
            let mut tx = c.transaction().await.map_err(|e| self.failed(&e))?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&super::migrate::LOCK])
                .await
                .map_err(|e| self.failed(&e))?;
            let today = std::time::SystemTime::now();
            for d in 0..=days {
                let from = crate::ledger::day_of(today + std::time::Duration::from_secs(86_400 * u64::from(d)));
                let to = crate::ledger::day_of(today + std::time::Duration::from_secs(86_400 * (u64::from(d) + 1)));
                let name = format!("audit_record_{}", from.replace('-', ""));
                let exists = tx
                    .query_opt("SELECT 1 FROM pg_class WHERE relname = $1", &[&name])
                    .await
                    .map_err(|e| self.failed(&e))?
                    .is_some();
                if exists {
                    continue;
                }
                // a savepoint: a day already in the default partition must not undo the rest
                let sp = tx.savepoint(format!("p{d}")).await.map_err(|e| self.failed(&e))?;
                let made = sp
                    .batch_execute(&format!(
                        "CREATE TABLE {name} PARTITION OF audit_record FOR VALUES FROM ('{from}') TO ('{to}');
                         CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON {name}
                             FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();"
                    ))
                    .await;
                match made {
                    Ok(()) => sp.commit().await.map_err(|e| self.failed(&e))?,
                    Err(e) => {
                        tracing::warn!(day = %from, error = %e, "the audit partition for this day was not made; its records stay in the default partition");
                        sp.rollback().await.map_err(|e| self.failed(&e))?;
                    }
                }
            }
            tx.commit().await.map_err(|e| self.failed(&e))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: i64) -> Vec<(String, i64, String, String, Vec<u8>)> {
        let mut prev = GENESIS.to_string();
        (1..=n)
            .map(|seq| {
                let bytes = bytes_of(&pb::AuditRecord {
                    unix_ms: seq as u64,
                    tenant: "t".into(),
                    ..Default::default()
                });
                let hash = link(&prev, "g", seq, &bytes);
                let row = ("g".to_string(), seq, prev.clone(), hash.clone(), bytes);
                prev = hash;
                row
            })
            .collect()
    }

    #[test]
    fn an_intact_chain_verifies_and_edits_and_gaps_are_named() {
        let ok = verify(chain(5));
        assert_eq!(ok.len(), 1);
        assert_eq!((ok[0].records, ok[0].last_seq), (5, 5));
        assert!(ok[0].problems.is_empty(), "{ok:?}");
        // record 3's content changed
        let mut edited = chain(5);
        edited[2].4 = bytes_of(&pb::AuditRecord {
            unix_ms: 3,
            tenant: "someone else".into(),
            ..Default::default()
        });
        assert_eq!(
            verify(edited)[0].problems,
            ["record 3 was edited: its hash does not match its content"]
        );
        // record 2 deleted
        let mut gap = chain(5);
        gap.remove(1);
        assert_eq!(
            verify(gap)[0].problems,
            ["records 2..=2 are missing (deleted)"]
        );
    }
}
