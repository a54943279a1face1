//! The budget ledger: external spend per tenant, provider and UTC day, in two sled trees.
//!
//! Before an external call the worst-case cost is reserved — checked against the budget and
//! written in one transaction, made durable by the store before the call starts. After the
//! call the reservation is settled with the cost of the provider's reported usage. Only the
//! store thread (`store::writer`) runs these operations, one after another, so concurrent
//! requests can never reserve past a budget; a reservation left by a crash stays charged at
//! its worst case (settled as such on the next start).
//!
//! Amounts are integer nano-dollars, so sums never drift.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use crate::routing::Budgets;
use crate::store::StoreError;
use crate::store::writer::Mirror;

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
    #[error("{0}")]
    Store(StoreError),
}

/// What a settled reservation came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    pub reserved: u64,
    pub charged: u64,
}

/// A spend key: (UTC day, tenant, provider).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SpendKey {
    pub day: String,
    pub tenant: String,
    pub provider: String,
}

impl SpendKey {
    pub fn new(day: &str, tenant: &str, provider: &str) -> Self {
        Self {
            day: day.into(),
            tenant: tenant.into(),
            provider: provider.into(),
        }
    }

    fn of(r: &Reservation) -> Self {
        Self::new(&r.day, &r.tenant, &r.provider)
    }

    /// `day \0 tenant \0 provider`, the key on disk.
    fn bytes(&self) -> Vec<u8> {
        key(&self.day, &self.tenant, &self.provider)
    }

    fn parse(k: &[u8]) -> Option<Self> {
        let mut parts = k
            .split(|b| *b == 0)
            .map(|p| String::from_utf8_lossy(p).into_owned());
        Some(Self {
            day: parts.next()?,
            tenant: parts.next()?,
            provider: parts.next()?,
        })
    }
}

/// One (day, tenant, provider) of the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spending {
    pub key: SpendKey,
    /// Spent + reserved nano-USD.
    pub spent: u64,
    /// Of which reserved for calls not yet settled.
    pub reserved: u64,
}

/// Spent + reserved today per (tenant, provider) for `tenant`, in USD, for routing.
pub fn budgets_of(spend: &BTreeMap<SpendKey, u64>, day: &str, tenant: &str) -> Budgets {
    let from = SpendKey::new(day, tenant, "");
    let spent_usd = spend
        .range(from..)
        .take_while(|(k, _)| k.day == day && k.tenant == tenant)
        .map(|(k, v)| ((tenant.to_string(), k.provider.clone()), usd(*v)))
        .collect();
    Budgets { spent_usd }
}

/// The ledger's two trees. Used by the store thread only.
pub struct LedgerTrees {
    /// `day \0 tenant \0 provider` → spent + reserved nano-USD (u64 BE).
    spend: sled::Tree,
    /// reservation id → `Reservation` (JSON); also counted in `spend` until settled.
    reserved: sled::Tree,
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

impl LedgerTrees {
    pub fn open(db: &sled::Db) -> Result<Self, sled::Error> {
        Ok(Self {
            spend: db.open_tree("ledger.spend")?,
            reserved: db.open_tree("ledger.reserved")?,
        })
    }

    /// Every key's spent + reserved, for the in-memory copy routing reads.
    pub fn totals(&self) -> Result<BTreeMap<SpendKey, u64>, sled::Error> {
        let mut out = BTreeMap::new();
        for kv in self.spend.iter() {
            let (k, v) = kv?;
            if let Some(key) = SpendKey::parse(&k) {
                out.insert(key, read_u64(Some(v)));
            }
        }
        Ok(out)
    }

    /// Every (day, tenant, provider) with its spent + reserved and reserved-only nano-USD.
    pub fn entries(&self) -> Vec<Spending> {
        let mut reserved: BTreeMap<SpendKey, u64> = BTreeMap::new();
        for (_, v) in self.reserved.iter().flatten() {
            if let Ok(r) = serde_json::from_slice::<Reservation>(&v) {
                *reserved.entry(SpendKey::of(&r)).or_default() += r.nanos;
            }
        }
        self.spend
            .iter()
            .flatten()
            .filter_map(|(k, v)| {
                let key = SpendKey::parse(&k)?;
                let r = reserved.get(&key).copied().unwrap_or(0);
                Some(Spending {
                    key,
                    spent: read_u64(Some(v)),
                    reserved: r,
                })
            })
            .collect()
    }

    /// Reserves `r.nanos` if spent + reserved + `r.nanos` stays within `limit` nano-USD.
    /// Durable once the store flushes.
    pub fn reserve(
        &self,
        id: &str,
        r: &Reservation,
        limit: u64,
        mirror: &Mirror,
    ) -> Result<(), LedgerError> {
        let k = SpendKey::of(r);
        let kb = k.bytes();
        let value = serde_json::to_vec(r).map_err(storage)?;
        let next = (&self.spend, &self.reserved)
            .transaction(|(spend, reserved)| {
                let spent = read_u64(spend.get(&kb)?);
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
                spend.insert(kb.as_slice(), &next.to_be_bytes())?;
                reserved.insert(id.as_bytes(), value.as_slice())?;
                Ok(next)
            })
            .map_err(abort)?;
        mirror.set(k, next);
        Ok(())
    }

    /// Replaces reservation `id` by the actual cost (`None`: its worst case), which may be
    /// more than reserved if a provider reports more tokens than asked for: the ledger
    /// records what was billed.
    pub fn settle(
        &self,
        id: &str,
        charged: Option<u64>,
        mirror: &Mirror,
    ) -> Result<Settled, LedgerError> {
        let (settled, k, next) = (&self.spend, &self.reserved)
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
                let k = SpendKey::of(&r);
                let kb = k.bytes();
                let spent = read_u64(spend.get(&kb)?);
                let next = spent.saturating_sub(r.nanos).saturating_add(charged);
                spend.insert(kb.as_slice(), &next.to_be_bytes())?;
                Ok((
                    Settled {
                        reserved: r.nanos,
                        charged,
                    },
                    k,
                    next,
                ))
            })
            .map_err(abort)?;
        mirror.set(k, next);
        Ok(settled)
    }

    /// Reservations whose calls never settled (the gateway stopped mid-call): charged at their
    /// worst case and closed. Returns them for the audit.
    pub fn settle_abandoned(
        &self,
        mirror: &Mirror,
    ) -> Result<Vec<(String, Reservation)>, LedgerError> {
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
            self.settle(id, None, mirror)?;
        }
        Ok(open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn trees() -> (LedgerTrees, Mirror, sled::Db) {
        let db = sled::Config::new()
            .temporary(true)
            .open()
            .unwrap_or_else(|e| panic!("{e}"));
        let t = LedgerTrees::open(&db).unwrap_or_else(|e| panic!("{e}"));
        (t, Mirror::default(), db)
    }

    fn res(nanos: u64) -> Reservation {
        Reservation {
            day: "2026-11-24".into(),
            tenant: "shop".into(),
            provider: "openai".into(),
            nanos,
        }
    }

    fn spent(m: &Mirror) -> u64 {
        m.snapshot()
            .get(&SpendKey::new("2026-11-24", "shop", "openai"))
            .copied()
            .unwrap_or(0)
    }

    #[test]
    fn days_are_utc_dates() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_795_478_400 + 86_399);
        assert_eq!(day_of(t), "2026-11-24");
    }

    #[test]
    fn reserve_settle_and_refuse_over_budget() {
        let (l, m, _db) = trees();
        l.reserve("a", &res(600), 1000, &m)
            .unwrap_or_else(|e| panic!("{e}"));
        let over = l.reserve("b", &res(500), 1000, &m);
        assert!(
            matches!(over, Err(LedgerError::OverBudget { spent: 600, .. })),
            "{over:?}"
        );
        let s = l
            .settle("a", Some(100), &m)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            s,
            Settled {
                reserved: 600,
                charged: 100
            }
        );
        assert_eq!(spent(&m), 100);
        l.reserve("b", &res(500), 1000, &m)
            .unwrap_or_else(|e| panic!("{e}"));
        let key = SpendKey::new("2026-11-24", "shop", "openai");
        assert_eq!(
            l.entries(),
            vec![Spending {
                key: key.clone(),
                spent: 600,
                reserved: 500
            }]
        );
        let map = m.snapshot();
        assert_eq!(l.totals().ok(), Some(map.clone()));
        let budgets = budgets_of(&map, "2026-11-24", "shop");
        assert_eq!(
            budgets.spent_usd.get(&("shop".into(), "openai".into())),
            Some(&6e-7)
        );
        assert!(budgets_of(&map, "2026-11-24", "sho").spent_usd.is_empty());
        assert!(matches!(
            l.settle("a", Some(1), &m),
            Err(LedgerError::NoReservation(_))
        ));
        let abandoned = l.settle_abandoned(&m).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(abandoned.len(), 1);
        assert_eq!(spent(&m), 600);
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 32,
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x6c65_6467),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]
        /// Reservations never take the total past the budget, what is recorded equals what
        /// was granted, and settling every one at its worst case leaves the total unchanged.
        #[test]
        fn reservations_never_overspend(
            costs in proptest::collection::vec(1u64..400, 8..48),
            limit in 200u64..4000,
        ) {
            let (l, m, _db) = trees();
            let mut granted = 0;
            for (i, c) in costs.iter().enumerate() {
                if l.reserve(&format!("r{i}"), &res(*c), limit, &m).is_ok() {
                    granted += c;
                }
            }
            prop_assert!(spent(&m) <= limit);
            prop_assert_eq!(spent(&m), granted);
            let total: u64 = costs.iter().sum();
            if total <= limit {
                prop_assert_eq!(spent(&m), total);
            }
            l.settle_abandoned(&m).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(spent(&m), granted);
            prop_assert!(l.entries().iter().all(|e| e.reserved == 0));
        }
    }
}
