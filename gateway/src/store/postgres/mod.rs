//! The budget ledger on PostgreSQL, shared by every gateway that names the same database.
//!
//! The promise is the embedded store's — reserve a hosted call's worst case before it is
//! made, settle it to what was billed, never overspend, lose nothing acknowledged — held
//! across gateways by one authoritative row per (day, tenant, provider):
//!
//! - **reserve** is one statement: a conditional `UPDATE … WHERE spent + reserved + cost <=
//!   limit` and the insert of a reservation row whose id the gateway made, so two gateways
//!   can never both take the last of a budget (PostgreSQL re-checks the condition on the
//!   row's newest version when a concurrent update commits first);
//! - **settle** is one transaction keyed by that id and idempotent: a second settle of the
//!   same id changes nothing and answers what the first one charged;
//! - each reservation holds a **lease** on the database's clock (no gateway clock matters);
//!   any gateway **sweeps** expired leases (`FOR UPDATE SKIP LOCKED`, so sweepers never wait
//!   on each other) and charges them at their worst case, as the embedded store charges a
//!   reservation it finds open at start; a settle that arrives after that **refunds** the
//!   difference, once.
//!
//! Limits stay parameters (the policy's), so budgets need no configuration in the database.

pub mod audit;
pub mod migrate;

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::error::SqlState;

use edgewise_proto as pb;

use crate::ledger::{LedgerError, Reservation, Settled, SpendKey, Spending};

/// How to reach the shared ledger.
#[derive(Clone)]
pub struct PgOptions {
    /// libpq-style connection parameters (`host=… port=… user=… dbname=…`); a `host` that
    /// starts with `/` is a unix socket directory.
    pub params: String,
    /// Connections per gateway: one hot row gains nothing from more.
    pub pool_size: usize,
    /// This gateway's id, recorded on its reservations.
    pub gateway: String,
    /// Read from a file or credential; never printed (`Debug` hides it).
    pub password: Option<String>,
    /// The longest any one ledger operation may take, connecting included: past it the
    /// operation fails (fail closed: no hosted call without its reservation).
    pub timeout: Duration,
}

impl PgOptions {
    pub fn new(params: impl Into<String>, gateway: impl Into<String>) -> Self {
        Self {
            params: params.into(),
            pool_size: 8,
            gateway: gateway.into(),
            password: None,
            timeout: Duration::from_millis(1500),
        }
    }
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            .field("params", &self.params)
            .field("pool_size", &self.pool_size)
            .field("gateway", &self.gateway)
            .field("password", &self.password.as_ref().map(|_| "(hidden)"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The ledger's failures, named for the operator: where the database is (never its
/// password) and what was not done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PgError {
    #[error("the shared ledger ({at}): {detail}")]
    Unavailable { at: String, detail: String },
    #[error(
        "the shared ledger ({at}) did not answer the {what} within {bound:?}; nothing that needed it was done"
    )]
    Timeout {
        at: String,
        what: &'static str,
        bound: Duration,
    },
    #[error("the shared ledger's connection parameters: {0}")]
    Config(String),
}

impl From<PgError> for super::StoreError {
    fn from(e: PgError) -> Self {
        match e {
            PgError::Timeout { at, what, bound } => super::StoreError::Timeout {
                path: at,
                what,
                bound,
            },
            PgError::Unavailable { at, detail } => super::StoreError::Io { path: at, detail },
            PgError::Config(detail) => super::StoreError::Io {
                path: "the shared ledger".into(),
                detail,
            },
        }
    }
}

impl From<PgError> for LedgerError {
    fn from(e: PgError) -> Self {
        LedgerError::Store(e.into())
    }
}

/// The shared ledger: a pool of connections to one PostgreSQL database.
#[derive(Clone)]
pub struct PgLedger {
    pool: Pool,
    at: String,
    gateway: String,
    timeout: Duration,
    /// Set once the schema is migrated (retried by the next operation until then, so a
    /// gateway starts while the database is down).
    migrated: std::sync::Arc<tokio::sync::OnceCell<i32>>,
    /// The head of this gateway's audit chain (`None` until read from the database); held
    /// while a record is appended, so the chain has one writer.
    chain: std::sync::Arc<tokio::sync::Mutex<Option<audit::Head>>>,
    /// The UTC day the audit partitions ahead were last made.
    partitioned: std::sync::Arc<tokio::sync::Mutex<Option<String>>>,
    /// Whether the database answered the last operation (for the gauge).
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for PgLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgLedger")
            .field("at", &self.at)
            .field("gateway", &self.gateway)
            .finish()
    }
}

/// `host/dbname` of a connection config, for messages (never the password).
fn describe(c: &tokio_postgres::Config) -> String {
    let host = c
        .get_hosts()
        .iter()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .collect::<Vec<_>>()
        .join(",");
    format!(
        "postgresql://{host}:{}/{}",
        c.get_ports().first().copied().unwrap_or(5432),
        c.get_dbname().unwrap_or("")
    )
}

impl PgLedger {
    /// A pool over `options.params` (TLS through `tls` when given, else plaintext), with
    /// the schema migrated to the newest version.
    pub async fn connect(
        options: &PgOptions,
        tls: Option<rustls::ClientConfig>,
    ) -> Result<Self, PgError> {
        let ledger = Self::new(options, tls)?;
        ledger.migrate().await?;
        Ok(ledger)
    }

    /// A pool over `options.params`, connecting (and migrating) at its first use.
    pub fn new(options: &PgOptions, tls: Option<rustls::ClientConfig>) -> Result<Self, PgError> {
        let mut config: tokio_postgres::Config = options
            .params
            .parse()
            .map_err(|e: tokio_postgres::Error| PgError::Config(e.to_string()))?;
        if let Some(p) = &options.password {
            config.password(p);
        }
        // a dead peer is noticed by the timeouts, not after the kernel's retries
        config
            .connect_timeout(options.timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10));
        let at = describe(&config);
        // a connection is checked before each use (and dropped if it does not answer in
        // time): one cut mid-answer by a partition would otherwise hang every later use
        // with TLS configured, never fall back to plaintext
        if tls.is_some() {
            config.ssl_mode(tokio_postgres::config::SslMode::Require);
        }
        let mcfg = ManagerConfig {
            recycling_method: RecyclingMethod::Verified,
        };
        let manager = match tls {
            Some(tls) => Manager::from_config(
                config,
                tokio_postgres_rustls::MakeRustlsConnect::new(tls),
                mcfg,
            ),
            None => Manager::from_config(config, tokio_postgres::NoTls, mcfg),
        };
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .timeouts(deadpool_postgres::Timeouts {
                wait: Some(options.timeout),
                create: Some(options.timeout),
                recycle: Some(options.timeout),
            })
            .build()
            .map_err(|e| PgError::Config(e.to_string()))?;
        Ok(Self {
            pool,
            at,
            gateway: options.gateway.clone(),
            timeout: options.timeout,
            migrated: Default::default(),
            chain: Default::default(),
            partitioned: Default::default(),
            up: Default::default(),
        })
    }

    /// Where the database is (for messages; never the password).
    pub fn at(&self) -> &str {
        &self.at
    }

    /// Brings the schema to the newest version (safe when several gateways start at once).
    pub async fn migrate(&self) -> Result<i32, PgError> {
        self.bounded("migration", async {
            self.migrated
                .get_or_try_init(|| async {
                    let mut c = self.connection().await?;
                    migrate::migrate(&mut c).await.map_err(|e| self.failed(&e))
                })
                .await
                .copied()
        })
        .await
    }

    /// A pooled connection to a migrated database.
    async fn client(&self) -> Result<deadpool_postgres::Object, PgError> {
        if self.migrated.get().is_none() {
            self.migrated
                .get_or_try_init(|| async {
                    let mut c = self.connection().await?;
                    migrate::migrate(&mut c).await.map_err(|e| self.failed(&e))
                })
                .await?;
        }
        self.connection().await
    }

    async fn connection(&self) -> Result<deadpool_postgres::Object, PgError> {
        self.pool.get().await.map_err(|e| PgError::Unavailable {
            at: self.at.clone(),
            detail: chain(&e),
        })
    }

    fn failed(&self, e: &tokio_postgres::Error) -> PgError {
        PgError::Unavailable {
            at: self.at.clone(),
            detail: chain(e),
        }
    }

    /// Runs `op` within the ledger's bound, noting whether the database answered.
    async fn bounded<T>(
        &self,
        what: &'static str,
        op: impl std::future::Future<Output = Result<T, PgError>>,
    ) -> Result<T, PgError> {
        let r = tokio::time::timeout(self.timeout, op)
            .await
            .map_err(|_| PgError::Timeout {
                at: self.at.clone(),
                what,
                bound: self.timeout,
            })
            .and_then(|r| r);
        let answered = !matches!(
            r,
            Err(PgError::Timeout { .. } | PgError::Unavailable { .. })
        );
        self.up
            .store(answered, std::sync::atomic::Ordering::Relaxed);
        r
    }

    /// Whether the database answered the last operation.
    pub fn is_up(&self) -> bool {
        self.up.load(std::sync::atomic::Ordering::Relaxed)
    }

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

/// Makes a settled call's audit record from what was settled.
pub type SettledRecord<'a> = dyn Fn(&Settled) -> pb::AuditRecord + Sync + 'a;
/// Makes the audit record of a reservation a sweep charged (its id and reservation).
pub type SweptRecord<'a> = dyn Fn(&str, &Reservation) -> pb::AuditRecord + Sync + 'a;

/// A gateway sharing the ledger, as its last heartbeat recorded it.
#[derive(Debug, Clone, PartialEq)]
pub struct Peer {
    pub id: String,
    pub version: String,
    pub policy_digest: String,
    /// Milliseconds since its last heartbeat, on the database's clock.
    pub seen_ms_ago: u64,
}

impl PgLedger {
    /// Records this gateway as alive now (database clock), with its version and the digest
    /// of the policy it routes by.
    pub async fn heartbeat(&self, version: &str, policy_digest: &str) -> Result<(), PgError> {
        self.bounded("heartbeat", async {
            let c = self.client().await?;
            c.execute(
                "INSERT INTO gateway (id, version, policy_digest, started, last_seen)
                 VALUES ($1, $2, $3, now(), now())
                 ON CONFLICT (id) DO UPDATE
                 SET version = $2, policy_digest = $3, last_seen = now()",
                &[&self.gateway, &version, &policy_digest],
            )
            .await
            .map_err(|e| self.failed(&e))?;
            Ok(())
        })
        .await
    }

    /// Every gateway that has sent a heartbeat, most recently seen first.
    pub async fn peers(&self) -> Result<Vec<Peer>, PgError> {
        self.bounded("read", async {
            let c = self.client().await?;
            let rows = c
                .query(
                    "SELECT id, version, policy_digest,
                            (extract(epoch FROM now() - last_seen) * 1000)::bigint
                     FROM gateway ORDER BY last_seen DESC, id",
                    &[],
                )
                .await
                .map_err(|e| self.failed(&e))?;
            Ok(rows
                .iter()
                .map(|r| Peer {
                    id: r.get(0),
                    version: r.get(1),
                    policy_digest: r.get(2),
                    seen_ms_ago: r.get::<_, i64>(3).max(0) as u64,
                })
                .collect())
        })
        .await
    }
}

/// An error with its causes (`db error` alone says nothing; the server's message is below
/// it).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        let m = s.to_string();
        if !out.contains(&m) {
            out.push_str(": ");
            out.push_str(&m);
        }
        next = s.source();
    }
    out
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
