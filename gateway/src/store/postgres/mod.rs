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
mod ledger;
pub mod migrate;
mod peers;

pub use ledger::{SettledRecord, SweptRecord};
pub use peers::Peer;

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};

use crate::ledger::LedgerError;

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
