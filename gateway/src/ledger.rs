//! The budget ledger (sled): external spend per tenant, provider and UTC day.
//!
//! Before an external call the worst-case cost is reserved — checked against the budget and
//! written in one transaction, then flushed to disk before the call starts. After the call the
//! reservation is settled with the cost of the provider's reported usage. Reservations are
//! serialised, so concurrent requests can never reserve past a budget; a reservation left by a
//! crash stays charged at its worst case (settled as such on the next start).
//!
//! Amounts are integer nano-dollars, so sums never drift.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use crate::routing::Budgets;

pub const NANOS_PER_USD: f64 = 1e9;

/// USD → nano-USD, rounded up (a reservation never under-counts).
pub fn nanos_ceil(usd: f64) -> u64 {
    if usd.is_finite() && usd > 0.0 {
        (usd * NANOS_PER_USD).ceil() as u64
    } else {
        0
    }
}

pub fn usd(nanos: u64) -> f64 {
    nanos as f64 / NANOS_PER_USD
}

/// The UTC day (`YYYY-MM-DD`) of a time.
pub fn day_of(t: std::time::SystemTime) -> String {
    let s = humantime::format_rfc3339_seconds(t).to_string();
    s.get(..10).unwrap_or("1970-01-01").to_string()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub day: String,
    pub tenant: String,
    pub provider: String,
    pub nanos: u64,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LedgerError {
    #[error(
        "tenant `{tenant}` has ${:.6} of its ${:.2} daily budget for `{provider}` left, and this request may cost ${:.6}",
        usd(limit.saturating_sub(*spent)), usd(*limit), usd(*cost)
    )]
    OverBudget {
        tenant: String,
        provider: String,
        spent: u64,
        limit: u64,
        cost: u64,
    },
    #[error("no reservation `{0}`")]
    NoReservation(String),
    #[error("ledger storage: {0}")]
    Storage(String),
}

/// What a settled reservation came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    pub reserved: u64,
    pub charged: u64,
}

pub struct Ledger {
    db: sled::Db,
    /// `day \0 tenant \0 provider` → spent + reserved nano-USD (u64 BE).
    spend: sled::Tree,
    /// reservation id → `Reservation` (JSON); also counted in `spend` until settled.
    reserved: sled::Tree,
    /// Serialises check-and-reserve; sled's transaction makes each one atomic on disk.
    lock: Mutex<()>,
}

fn key(day: &str, tenant: &str, provider: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(day.len() + tenant.len() + provider.len() + 2);
    k.extend_from_slice(day.as_bytes());
    k.push(0);
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k.extend_from_slice(provider.as_bytes());
    k
}

fn read_u64(v: Option<sled::IVec>) -> u64 {
    v.and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

fn storage<E: std::fmt::Display>(e: E) -> LedgerError {
    LedgerError::Storage(e.to_string())
}

fn abort(e: TransactionError<LedgerError>) -> LedgerError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => storage(e),
    }
}

impl Ledger {
    /// The store's writes on disk (each reservation and settlement already waited for its own).
    pub async fn flush(&self) -> Result<(), LedgerError> {
        self.db.flush_async().await.map_err(storage)?;
        Ok(())
    }

    pub fn open(db: &sled::Db) -> Result<Self, LedgerError> {
        Ok(Self {
            db: db.clone(),
            spend: db.open_tree("ledger.spend").map_err(storage)?,
            reserved: db.open_tree("ledger.reserved").map_err(storage)?,
            lock: Mutex::new(()),
        })
    }

    /// Spent + reserved today per (tenant, provider) for `tenant`, in USD, for routing.
    pub fn budgets(&self, day: &str, tenant: &str) -> Budgets {
        let mut prefix = day.as_bytes().to_vec();
        prefix.push(0);
        prefix.extend_from_slice(tenant.as_bytes());
        prefix.push(0);
        let mut spent_usd = BTreeMap::new();
        for (k, v) in self.spend.scan_prefix(&prefix).flatten() {
            let provider = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            spent_usd.insert((tenant.to_string(), provider), usd(read_u64(Some(v))));
        }
        Budgets { spent_usd }
    }

    /// Spent + reserved (nano-USD) for one key.
    pub fn spent(&self, day: &str, tenant: &str, provider: &str) -> u64 {
        read_u64(self.spend.get(key(day, tenant, provider)).ok().flatten())
    }

    /// Every (day, tenant, provider) with its spent + reserved and reserved-only nano-USD.
    pub fn entries(&self) -> Vec<(String, String, String, u64, u64)> {
        let mut reserved: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
        for (_, v) in self.reserved.iter().flatten() {
            if let Ok(r) = serde_json::from_slice::<Reservation>(&v) {
                *reserved
                    .entry(key(&r.day, &r.tenant, &r.provider))
                    .or_default() += r.nanos;
            }
        }
        self.spend
            .iter()
            .flatten()
            .filter_map(|(k, v)| {
                let mut parts = k
                    .split(|b| *b == 0)
                    .map(|p| String::from_utf8_lossy(p).into_owned());
                let (day, tenant, provider) = (parts.next()?, parts.next()?, parts.next()?);
                let r = reserved.get(k.as_ref()).copied().unwrap_or(0);
                Some((day, tenant, provider, read_u64(Some(v)), r))
            })
            .collect()
    }

    /// Reserves `r.nanos` if spent + reserved + `r.nanos` stays within `limit` nano-USD, and
    /// makes it durable before returning.
    pub async fn reserve(&self, id: &str, r: &Reservation, limit: u64) -> Result<(), LedgerError> {
        self.reserve_now(id, r, limit)?;
        self.db.flush_async().await.map_err(storage)?;
        Ok(())
    }

    fn reserve_now(&self, id: &str, r: &Reservation, limit: u64) -> Result<(), LedgerError> {
        let _serial = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let k = key(&r.day, &r.tenant, &r.provider);
        let value = serde_json::to_vec(r).map_err(storage)?;
        (&self.spend, &self.reserved)
            .transaction(|(spend, reserved)| {
                let spent = read_u64(spend.get(&k)?);
                let next = spent.saturating_add(r.nanos);
                if next > limit {
                    return Err(ConflictableTransactionError::Abort(
                        LedgerError::OverBudget {
                            tenant: r.tenant.clone(),
                            provider: r.provider.clone(),
                            spent,
                            limit,
                            cost: r.nanos,
                        },
                    ));
                }
                spend.insert(k.as_slice(), &next.to_be_bytes())?;
                reserved.insert(id.as_bytes(), value.as_slice())?;
                Ok(())
            })
            .map_err(abort)
    }

    /// Replaces reservation `id` by the actual cost (which may be more than reserved, if a
    /// provider reports more tokens than asked for: the ledger records what was billed).
    pub async fn settle(&self, id: &str, charged: u64) -> Result<Settled, LedgerError> {
        let s = self.settle_now(id, Some(charged))?;
        self.db.flush_async().await.map_err(storage)?;
        Ok(s)
    }

    fn settle_now(&self, id: &str, charged: Option<u64>) -> Result<Settled, LedgerError> {
        let _serial = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        (&self.spend, &self.reserved)
            .transaction(|(spend, reserved)| {
                let Some(v) = reserved.remove(id.as_bytes())? else {
                    return Err(ConflictableTransactionError::Abort(
                        LedgerError::NoReservation(id.to_string()),
                    ));
                };
                let r: Reservation = serde_json::from_slice(&v).map_err(|e| {
                    ConflictableTransactionError::Abort(LedgerError::Storage(e.to_string()))
                })?;
                let charged = charged.unwrap_or(r.nanos);
                let k = key(&r.day, &r.tenant, &r.provider);
                let spent = read_u64(spend.get(&k)?);
                let next = spent.saturating_sub(r.nanos).saturating_add(charged);
                spend.insert(k.as_slice(), &next.to_be_bytes())?;
                Ok(Settled {
                    reserved: r.nanos,
                    charged,
                })
            })
            .map_err(abort)
    }

    /// Reservations whose calls never settled (the gateway stopped mid-call): charged at their
    /// worst case and closed. Returns them for the audit.
    pub async fn settle_abandoned(&self) -> Result<Vec<(String, Reservation)>, LedgerError> {
        let open: Vec<(String, Reservation)> = self
            .reserved
            .iter()
            .flatten()
            .filter_map(|(k, v)| {
                Some((
                    String::from_utf8_lossy(&k).into_owned(),
                    serde_json::from_slice(&v).ok()?,
                ))
            })
            .collect();
        for (id, _) in &open {
            self.settle_now(id, None)?;
        }
        self.db.flush_async().await.map_err(storage)?;
        Ok(open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    fn ledger() -> (Ledger, sled::Db) {
        let db = sled::Config::new()
            .temporary(true)
            .open()
            .unwrap_or_else(|e| panic!("{e}"));
        (Ledger::open(&db).unwrap_or_else(|e| panic!("{e}")), db)
    }

    fn res(nanos: u64) -> Reservation {
        Reservation {
            day: "2026-11-24".into(),
            tenant: "shop".into(),
            provider: "openai".into(),
            nanos,
        }
    }

    #[test]
    fn days_are_utc_dates() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_795_478_400 + 86_399);
        assert_eq!(day_of(t), "2026-11-24");
    }

    #[tokio::test]
    async fn reserve_settle_and_refuse_over_budget() {
        let (l, _db) = ledger();
        l.reserve("a", &res(600), 1000)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let over = l.reserve("b", &res(500), 1000).await;
        assert!(
            matches!(over, Err(LedgerError::OverBudget { spent: 600, .. })),
            "{over:?}"
        );
        let s = l.settle("a", 100).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            s,
            Settled {
                reserved: 600,
                charged: 100
            }
        );
        assert_eq!(l.spent("2026-11-24", "shop", "openai"), 100);
        l.reserve("b", &res(500), 1000)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            l.entries(),
            vec![(
                "2026-11-24".into(),
                "shop".into(),
                "openai".into(),
                600,
                500
            )]
        );
        let budgets = l.budgets("2026-11-24", "shop");
        assert_eq!(
            budgets.spent_usd.get(&("shop".into(), "openai".into())),
            Some(&6e-7)
        );
        assert!(matches!(
            l.settle("a", 1).await,
            Err(LedgerError::NoReservation(_))
        ));
        let abandoned = l.settle_abandoned().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(abandoned.len(), 1);
        assert_eq!(l.spent("2026-11-24", "shop", "openai"), 600);
    }

    #[tokio::test]
    async fn a_reservation_survives_reopening() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        {
            let db = sled::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
            let l = Ledger::open(&db).unwrap_or_else(|e| panic!("{e}"));
            l.reserve("a", &res(700), 1000)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let db = sled::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let l = Ledger::open(&db).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(l.spent("2026-11-24", "shop", "openai"), 700);
        assert_eq!(l.settle_abandoned().await.map(|v| v.len()), Ok(1));
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 32,
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x6c65_6467),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]
        /// Threads racing to reserve never take the total past the budget, and what is
        /// recorded equals what was granted.
        #[test]
        fn concurrent_reservations_never_overspend(
            costs in proptest::collection::vec(1u64..400, 8..48),
            limit in 200u64..4000,
        ) {
            let (l, _db) = ledger();
            let l = Arc::new(l);
            let granted = Arc::new(std::sync::atomic::AtomicU64::new(0));
            std::thread::scope(|s| {
                for chunk in costs.chunks(costs.len().div_ceil(4)) {
                    let (l, granted) = (l.clone(), granted.clone());
                    s.spawn(move || {
                        for (i, c) in chunk.iter().enumerate() {
                            let id = format!("{:?}-{i}", std::thread::current().id());
                            if l.reserve_now(&id, &res(*c), limit).is_ok() {
                                granted.fetch_add(*c, std::sync::atomic::Ordering::SeqCst);
                            }
                        }
                    });
                }
            });
            let spent = l.spent("2026-11-24", "shop", "openai");
            prop_assert!(spent <= limit);
            prop_assert_eq!(spent, granted.load(std::sync::atomic::Ordering::SeqCst));
            let total: u64 = costs.iter().sum();
            if total <= limit {
                prop_assert_eq!(spent, total);
            }
        }
    }
}
