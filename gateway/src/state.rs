//! What the gateway's request handlers share: the fleet registry, the active policy (swapped
//! atomically as a whole), provider prices and agent connections.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use sha2::{Digest, Sha256};

use crate::agents::AgentPool;
use crate::fleet::Registry;
use crate::providers::Providers;
use crate::routing::{Policy, ProviderView};
use crate::store::Store;

/// A validated policy and the hash of the files it came from.
pub struct ActivePolicy {
    pub policy: Policy,
    pub hash: String,
    pub files: Vec<PathBuf>,
}

impl ActivePolicy {
    /// Loads and validates the policy files (a directory: its *.yaml files, by name).
    pub fn load(paths: &[PathBuf]) -> Result<Self, edgewise_diag::Diagnostics> {
        let policy = crate::policy::load(paths)?;
        let (files, hash) = hash_files(paths);
        Ok(Self {
            policy,
            hash,
            files,
        })
    }
}

/// The policy files named by `paths`, and a hash of their names and contents (what the
/// watcher compares to notice an edit).
pub fn hash_files(paths: &[PathBuf]) -> (Vec<PathBuf>, String) {
    let files = crate::policy::files(paths);
    let mut h = Sha256::new();
    for f in &files {
        h.update(f.to_string_lossy().as_bytes());
        h.update([0]);
        h.update(std::fs::read(f).unwrap_or_default());
        h.update([0]);
    }
    let hash = h
        .finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    (files, hash)
}

pub struct State {
    pub id: String,
    pub registry: Arc<Registry>,
    policy: RwLock<Arc<ActivePolicy>>,
    pub providers: Providers,
    /// The providers as routing sees them (prices, tasks).
    pub provider_views: BTreeMap<String, ProviderView>,
    /// The budget ledger and the audit log (one database, one thread).
    pub store: Store,
    pub agents: AgentPool,
    /// How many other nodes a request may try after an agent fails before its first token.
    pub retry_budget: usize,
    /// Mutual TLS (reloaded with the policy on SIGHUP); `None` in plaintext mode.
    pub tls: Option<Arc<edgewise_tls::Tls>>,
    /// How callers prove which tenant they are.
    pub auth: crate::auth::CallerAuth,
    /// What one request may ask for.
    pub limits: crate::validate::Limits,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Requests in flight per tenant (streams until their end), against
    /// `limits.max_in_flight_per_tenant`.
    tenant_in_flight: std::sync::Mutex<std::collections::HashMap<String, u32>>,
}

/// One of a tenant's requests in flight; dropping it (the request ends) frees the place.
pub struct TenantSlot {
    state: Arc<State>,
    tenant: String,
}

impl Drop for TenantSlot {
    fn drop(&mut self) {
        let mut m = self
            .state
            .tenant_in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.tenant);
            }
        }
    }
}

impl State {
    /// A place for one more of `tenant`'s requests, or RESOURCE_EXHAUSTED at the limit.
    pub fn enter(self: &Arc<Self>, tenant: &str) -> Result<TenantSlot, crate::error::GatewayError> {
        let limit = self.limits.max_in_flight_per_tenant;
        let mut m = self
            .tenant_in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let n = m.entry(tenant.to_string()).or_default();
        if *n >= limit {
            return Err(crate::error::GatewayError::TenantBusy {
                tenant: tenant.to_string(),
                limit,
            });
        }
        *n += 1;
        Ok(TenantSlot {
            state: self.clone(),
            tenant: tenant.to_string(),
        })
    }
}

/// What a `State` is made from: the validated configuration and what was loaded for it.
pub struct Setup {
    pub id: String,
    pub policy: ActivePolicy,
    pub providers: Providers,
    pub retry_budget: usize,
    pub limits: crate::validate::Limits,
    /// Mutual TLS; `None` in plaintext mode.
    pub tls: Option<Arc<edgewise_tls::Tls>>,
    pub auth: crate::auth::CallerAuth,
}

impl State {
    /// The whole state at once: the ledger and audit in `store`, agent connections over
    /// the setup's TLS.
    pub fn new(setup: Setup, store: Store) -> Self {
        let Setup {
            id,
            policy,
            providers,
            retry_budget,
            limits,
            tls,
            auth,
        } = setup;
        Self {
            id,
            registry: Arc::new(Registry::default()),
            policy: RwLock::new(Arc::new(policy)),
            provider_views: providers.views(),
            providers,
            store,
            agents: AgentPool::new(tls.as_ref().map(edgewise_tls::net::source)),
            retry_budget,
            tls,
            auth,
            limits,
            metrics: Arc::new(crate::metrics::Metrics::new()),
            tenant_in_flight: Default::default(),
        }
    }

    /// The policy in force now (a cheap clone of an `Arc`; a reload swaps it whole).
    pub fn policy(&self) -> Arc<ActivePolicy> {
        self.policy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn swap_policy(&self, next: ActivePolicy) {
        *self.policy.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
    }
}
