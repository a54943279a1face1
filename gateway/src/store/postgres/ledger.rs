//! The shared ledger's reservations: reserve, settle (with its audit record), lease
//! renewal, the sweep of expired leases, and every gateway's spend.

use std::time::Duration;

use tokio_postgres::error::SqlState;

use edgewise_proto as pb;

use super::{PgError, PgLedger};
use crate::ledger::{LedgerError, Reservation, Settled, SpendKey, Spending};

/// Makes a settled call's audit record from what was settled.
pub type SettledRecord<'a> = dyn Fn(&Settled) -> pb::AuditRecord + Sync + 'a;
/// Makes the audit record of a reservation a sweep charged (its id and reservation).
pub type SweptRecord<'a> = dyn Fn(&str, &Reservation) -> pb::AuditRecord + Sync + 'a;

impl PgLedger {
    /// Reserves `r.nanos` under reservation `id` if spent + reserved + `r.nanos` stays within
    /// `limit`, with a lease of `lease` on the database's clock; answers the key's spent +
    /// reserved after it (`None` for a retry). Retrying with the same id after a lost answer
    /// is safe: a reservation that committed is found, not taken twice.
    pub async fn reserve(
        &self,
        id: &str,
        r: &Reservation,
        limit: u64,
        lease: Duration,
    ) -> Result<Option<u64>, LedgerError> {
        // a limit past what the database holds is no limit
        let (nanos, limit) = (signed(r.nanos)?, i64::try_from(limit).unwrap_or(i64::MAX));
        let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        let taken = self
            .bounded("reservation", async {
                let c = self.client().await?;
                c.execute(
                    "INSERT INTO ledger_budget (day, tenant, provider) VALUES ($1, $2, $3)
                     ON CONFLICT DO NOTHING",
                    &[&r.day, &r.tenant, &r.provider],
                )
                .await
                .map_err(|e| self.failed(&e))?;
                let inserted = c
                    .query_opt(
                        "WITH b AS (
                             UPDATE ledger_budget SET reserved = reserved + $4
                             WHERE day = $1 AND tenant = $2 AND provider = $3
                               AND spent + reserved + $4 <= $5
                             RETURNING spent + reserved AS total),
                         i AS (
                             INSERT INTO ledger_reservation
                                 (id, day, tenant, provider, nanos, gateway, lease_until, state)
                             SELECT $6, $1, $2, $3, $4, $7,
                                    now() + $8::float8 * interval '1 millisecond', 'open'
                             FROM b
                             RETURNING 1)
                         SELECT b.total FROM b, i",
                        &[
                            &r.day,
                            &r.tenant,
                            &r.provider,
                            &nanos,
                            &limit,
                            &id,
                            &self.gateway,
                            &(lease_ms as f64),
                        ],
                    )
                    .await;
                match inserted {
                    Ok(Some(row)) => Ok(Taken::Now(row.get::<_, i64>(0).max(0) as u64)),
                    // not admitted — unless this id was (a retry after a lost answer, when
                    // the budget has no room for it a second time)
                    Ok(None) => {
                        let found = c
                            .query_opt("SELECT 1 FROM ledger_reservation WHERE id = $1", &[&id])
                            .await
                            .map_err(|e| self.failed(&e))?;
                        Ok(found.map_or(Taken::No, |_| Taken::Before))
                    }
                    // the same id committed before (its answer was lost): already reserved
                    Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => Ok(Taken::Before),
                    Err(e) => Err(self.failed(&e)),
                }
            })
            .await?;
        match taken {
            Taken::Now(total) => Ok(Some(total)),
            Taken::Before => Ok(None),
            Taken::No => {
                let spent = self
                    .total(&SpendKey::new(&r.day, &r.tenant, &r.provider))
                    .await?;
                Err(LedgerError::OverBudget {
                    tenant: r.tenant.clone(),
                    provider: r.provider.clone(),
                    spent,
                    limit: limit as u64,
                    cost: r.nanos,
                })
            }
        }
    }

    /// Spent + reserved of one key.
    async fn total(&self, k: &SpendKey) -> Result<u64, PgError> {
        self.bounded("read", async {
            let c = self.client().await?;
            let row = c
                .query_opt(
                    "SELECT spent + reserved FROM ledger_budget
                     WHERE day = $1 AND tenant = $2 AND provider = $3",
                    &[&k.day, &k.tenant, &k.provider],
                )
                .await
                .map_err(|e| self.failed(&e))?;
            Ok(row.map_or(0, |r| r.get::<_, i64>(0).max(0) as u64))
        })
        .await
    }

    /// Replaces reservation `id` by what was billed (`None`: its worst case). Idempotent: a
    /// second settle of the id charges nothing more and answers the first one's figures. A
    /// reservation a sweep already charged at its worst case is settled late: the
    /// difference is refunded, once.
    pub async fn settle(&self, id: &str, charged: Option<u64>) -> Result<Settled, LedgerError> {
        self.settle_audited(id, charged, None).await.map(|(s, _)| s)
    }

    /// As `settle`, with the key's spent + reserved after it when this settle changed it, and
    /// (`audit`) the call's audit record, made from what was settled, appended to this
    /// gateway's chain in the same transaction: the ledger and the audit never disagree.
    pub async fn settle_audited(
        &self,
        id: &str,
        charged: Option<u64>,
        audit: Option<&SettledRecord<'_>>,
    ) -> Result<(Settled, Option<(SpendKey, u64)>), LedgerError> {
        let charged = charged.map(signed).transpose()?;
        let out = self
            .bounded("settlement", async {
                // this gateway's chain is written by one transaction at a time
                let mut chain = match audit {
                    Some(_) => Some(self.chain.lock().await),
                    None => None,
                };
                let mut c = self.client().await?;
                let tx = c.transaction().await.map_err(|e| self.failed(&e))?;
                // open → settled: the reservation leaves `reserved`, the charge enters `spent`
                let mut rows = tx
                    .query(
                        "WITH r AS (
                             UPDATE ledger_reservation SET state = 'settled',
                                    charged = coalesce($2, nanos)
                             WHERE id = $1 AND state = 'open'
                             RETURNING day, tenant, provider, nanos, charged)
                         UPDATE ledger_budget b
                         SET reserved = b.reserved - r.nanos, spent = b.spent + r.charged
                         FROM r
                         WHERE b.day = r.day AND b.tenant = r.tenant AND b.provider = r.provider
                         RETURNING r.nanos, r.charged, b.day, b.tenant, b.provider,
                                   b.spent + b.reserved",
                        &[&id, &charged],
                    )
                    .await
                    .map_err(|e| self.failed(&e))?;
                if rows.is_empty() {
                    // expired → settled: the sweep charged the worst case; charge the bill
                    rows = tx
                        .query(
                            "WITH r AS (
                                 UPDATE ledger_reservation SET state = 'settled',
                                        charged = coalesce($2, nanos)
                                 WHERE id = $1 AND state = 'expired'
                                 RETURNING day, tenant, provider, nanos, charged)
                             UPDATE ledger_budget b
                             SET spent = greatest(b.spent - r.nanos + r.charged, 0)
                             FROM r
                             WHERE b.day = r.day AND b.tenant = r.tenant
                               AND b.provider = r.provider
                             RETURNING r.nanos, r.charged, b.day, b.tenant, b.provider,
                                       b.spent + b.reserved",
                            &[&id, &charged],
                        )
                        .await
                        .map_err(|e| self.failed(&e))?;
                }
                let changed = !rows.is_empty();
                if rows.is_empty() {
                    // settled before: answer what it came to
                    rows = tx
                        .query(
                            "SELECT nanos, charged FROM ledger_reservation
                             WHERE id = $1 AND state = 'settled'",
                            &[&id],
                        )
                        .await
                        .map_err(|e| self.failed(&e))?;
                }
                let out = rows.first().map(|row| {
                    let settled = Settled {
                        reserved: row.get::<_, i64>(0).max(0) as u64,
                        charged: row.get::<_, i64>(1).max(0) as u64,
                    };
                    // a settle that changed the budget row says what it is now
                    let total = (row.len() > 2).then(|| {
                        (
                            SpendKey::new(row.get(2), row.get(3), row.get(4)),
                            row.get::<_, i64>(5).max(0) as u64,
                        )
                    });
                    (settled, total)
                });
                // audited once: by the settle that changed the ledger
                let mut next_head = None;
                if let (Some(make), Some(chain), Some((settled, _)), true) =
                    (audit, chain.as_mut(), out.as_ref(), changed)
                {
                    let head = match chain.as_ref() {
                        Some(h) => h.clone(),
                        None => self.load_head(&*tx).await?,
                    };
                    next_head = Some(self.insert_audit(&*tx, &head, &make(settled)).await?);
                }
                tx.commit().await.map_err(|e| self.failed(&e))?;
                if let (Some(chain), Some(h)) = (chain.as_mut(), next_head) {
                    **chain = Some(h);
                }
                Ok(out)
            })
            .await?;
        out.ok_or_else(|| LedgerError::NoReservation(id.to_string()))
    }

    /// Extends an open reservation's lease (a stream that is still going), to `lease` from
    /// now on the database's clock. False when it is no longer open.
    pub async fn extend(&self, id: &str, lease: Duration) -> Result<bool, LedgerError> {
        let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX) as f64;
        Ok(self
            .bounded("lease extension", async {
                let c = self.client().await?;
                c.execute(
                    "UPDATE ledger_reservation
                     SET lease_until = now() + $2::float8 * interval '1 millisecond'
                     WHERE id = $1 AND state = 'open'",
                    &[&id, &lease_ms],
                )
                .await
                .map_err(|e| self.failed(&e))
            })
            .await?
            == 1)
    }

    /// Charges at their worst case up to `most` open reservations whose lease has passed
    /// (their gateway died, or lost the database, mid-call), and returns them for the audit.
    /// Any gateway may sweep; sweepers skip the rows another holds.
    pub async fn sweep(&self, most: i64) -> Result<Vec<(String, Reservation)>, LedgerError> {
        self.sweep_audited(most, None).await
    }

    /// As `sweep`, with each charged reservation's audit record (`audit`) appended to this
    /// gateway's chain in the same transaction.
    pub async fn sweep_audited(
        &self,
        most: i64,
        audit: Option<&SweptRecord<'_>>,
    ) -> Result<Vec<(String, Reservation)>, LedgerError> {
        Ok(self
            .bounded("sweep", async {
                let mut chain = match audit {
                    Some(_) => Some(self.chain.lock().await),
                    None => None,
                };
                let mut c = self.client().await?;
                let tx = c.transaction().await.map_err(|e| self.failed(&e))?;
                let rows = tx
                    .query(
                        "WITH x AS (
                             SELECT id FROM ledger_reservation
                             WHERE state = 'open' AND lease_until < now()
                             ORDER BY lease_until LIMIT $1
                             FOR UPDATE SKIP LOCKED),
                         r AS (
                             UPDATE ledger_reservation t SET state = 'expired', charged = t.nanos
                             FROM x WHERE t.id = x.id
                             RETURNING t.id, t.day, t.tenant, t.provider, t.nanos),
                         total AS (
                             SELECT day, tenant, provider, sum(nanos)::bigint AS n
                             FROM r GROUP BY day, tenant, provider),
                         u AS (
                             UPDATE ledger_budget b
                             SET reserved = b.reserved - total.n, spent = b.spent + total.n
                             FROM total
                             WHERE b.day = total.day AND b.tenant = total.tenant
                               AND b.provider = total.provider)
                         SELECT id, day, tenant, provider, nanos FROM r",
                        &[&most],
                    )
                    .await
                    .map_err(|e| self.failed(&e))?;
                let swept: Vec<(String, Reservation)> = rows
                    .iter()
                    .map(|row| {
                        (
                            row.get::<_, String>(0),
                            Reservation {
                                day: row.get(1),
                                tenant: row.get(2),
                                provider: row.get(3),
                                nanos: row.get::<_, i64>(4).max(0) as u64,
                            },
                        )
                    })
                    .collect();
                let mut next_head = None;
                if let (Some(make), Some(chain)) = (audit, chain.as_mut())
                    && !swept.is_empty()
                {
                    let mut head = match chain.as_ref() {
                        Some(h) => h.clone(),
                        None => self.load_head(&*tx).await?,
                    };
                    for (id, r) in &swept {
                        head = self.insert_audit(&*tx, &head, &make(id, r)).await?;
                    }
                    next_head = Some(head);
                }
                tx.commit().await.map_err(|e| self.failed(&e))?;
                if let (Some(chain), Some(h)) = (chain.as_mut(), next_head) {
                    **chain = Some(h);
                }
                Ok(swept)
            })
            .await?)
    }

    /// Every (day, tenant, provider) with its spent + reserved and reserved, across gateways.
    pub async fn spend_entries(&self) -> Result<Vec<Spending>, LedgerError> {
        Ok(self
            .bounded("read", async {
                let c = self.client().await?;
                let rows = c
                    .query(
                        "SELECT day, tenant, provider, spent + reserved, reserved
                         FROM ledger_budget ORDER BY day, tenant, provider",
                        &[],
                    )
                    .await
                    .map_err(|e| self.failed(&e))?;
                Ok(rows
                    .iter()
                    .map(|row| Spending {
                        key: SpendKey::new(row.get(0), row.get(1), row.get(2)),
                        spent: row.get::<_, i64>(3).max(0) as u64,
                        reserved: row.get::<_, i64>(4).max(0) as u64,
                    })
                    .collect())
            })
            .await?)
    }
}

/// What a reservation attempt found.
enum Taken {
    /// Admitted now: the key's spent + reserved after it.
    Now(u64),
    /// Admitted by an earlier attempt with the same id.
    Before,
    /// No room in the budget.
    No,
}

/// A nano-USD amount as PostgreSQL's bigint.
fn signed(v: u64) -> Result<i64, LedgerError> {
    i64::try_from(v)
        .map_err(|_| LedgerError::Storage(format!("{v} nano-USD is past the ledger's range")))
}
