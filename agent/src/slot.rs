//! One model's place on the node: its state, its leases and its residency figures.
//!
//! A request holds a [`Lease`] on a resident model from before admission until its last
//! chunk. A lease is taken under the state's read lock and a model leaves `Ready` only under
//! the write lock with no lease held, so no request ever sees a half-loaded or half-freed
//! model.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::models::LoadedModel;
use crate::models::manifest::Manifest;
use crate::scheduler::{Admission, Batcher};
use crate::stats::ModelStats;

pub enum SlotState {
    /// Found on disk with a valid manifest; not in memory.
    Available,
    Loading,
    Ready {
        model: Arc<LoadedModel>,
        batcher: Option<Batcher>,
    },
    /// No new leases; freed when the last one ends.
    Draining {
        model: Arc<LoadedModel>,
        batcher: Option<Batcher>,
    },
    /// Freed after being resident.
    Unloaded,
    Failed(String),
}

impl SlotState {
    pub fn name(&self) -> &'static str {
        match self {
            SlotState::Available => "available",
            SlotState::Loading => "loading",
            SlotState::Ready { .. } => "ready",
            SlotState::Draining { .. } => "draining",
            SlotState::Unloaded => "unloaded",
            SlotState::Failed(_) => "failed",
        }
    }

    /// Whether the model's memory counts against the budget.
    pub fn holds_memory(&self) -> bool {
        matches!(
            self,
            SlotState::Loading | SlotState::Ready { .. } | SlotState::Draining { .. }
        )
    }

    /// Whether a request may load it.
    pub fn loadable(&self) -> bool {
        matches!(self, SlotState::Available | SlotState::Unloaded)
    }
}

/// Times in a slot are kept as milliseconds since the node started (`Node::epoch`).
pub type Millis = u64;

pub struct ModelSlot {
    pub name: String,
    pub folder: PathBuf,
    /// `None` when the manifest itself failed to load.
    pub manifest: Option<Manifest>,
    pub state: RwLock<SlotState>,
    pub stats: Arc<ModelStats>,
    pub admission: Admission,
    /// Requests holding the model now (from before admission to their last chunk).
    pub leases: AtomicU32,
    /// Signalled when the last lease ends.
    pub idle: tokio::sync::Notify,
    /// Never evicted (config `pin`, or an operator's pin until restart).
    pub pinned: AtomicBool,
    /// Idle time before it may be unloaded; `None`: only for room.
    pub keep_alive: Option<Duration>,
    /// Requests may ask to keep it longer: not unloaded for idleness before this.
    pub keep_until: AtomicU64,
    /// When a lease last began or ended.
    pub last_used: AtomicU64,
    epoch: Instant,
    /// What it costs the budget: measured resident bytes (or an estimate) plus K/V budget.
    pub cost: AtomicU64,
    /// The last measured cold-load time (or an estimate), and whether it is an estimate.
    pub cold_ms: AtomicU32,
    pub cold_estimated: AtomicBool,
    pub loads_total: AtomicU64,
    pub evictions_total: AtomicU64,
}

impl ModelSlot {
    pub fn new(
        name: String,
        folder: PathBuf,
        manifest: Option<Manifest>,
        state: SlotState,
        stats: Arc<ModelStats>,
        admission: Admission,
        epoch: Instant,
    ) -> Self {
        Self {
            name,
            folder,
            manifest,
            state: RwLock::new(state),
            stats,
            admission,
            leases: AtomicU32::new(0),
            idle: tokio::sync::Notify::new(),
            pinned: AtomicBool::new(false),
            keep_alive: None,
            keep_until: AtomicU64::new(0),
            last_used: AtomicU64::new(0),
            epoch,
            cost: AtomicU64::new(0),
            cold_ms: AtomicU32::new(0),
            cold_estimated: AtomicBool::new(true),
            loads_total: AtomicU64::new(0),
            evictions_total: AtomicU64::new(0),
        }
    }

    pub fn with_residency(mut self, pinned: bool, keep_alive: Option<Duration>) -> Self {
        self.pinned = AtomicBool::new(pinned);
        self.keep_alive = keep_alive;
        self
    }

    pub fn now(&self) -> Millis {
        self.epoch.elapsed().as_millis() as Millis
    }

    pub fn ready(&self) -> Option<(Arc<LoadedModel>, Option<Batcher>)> {
        match &*self.read() {
            SlotState::Ready { model, batcher } => Some((model.clone(), batcher.clone())),
            _ => None,
        }
    }

    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, SlotState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn write(&self) -> std::sync::RwLockWriteGuard<'_, SlotState> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn state_name(&self) -> (&'static str, String) {
        match &*self.read() {
            SlotState::Failed(r) => ("failed", r.clone()),
            s => (s.name(), String::new()),
        }
    }

    /// A lease on the model if it is resident. Taken under the read lock, so an unload
    /// (under the write lock, with no lease held) never races it.
    pub fn lease(self: &Arc<Self>) -> Option<Lease> {
        let state = self.read();
        let SlotState::Ready { model, batcher } = &*state else {
            return None;
        };
        self.leases.fetch_add(1, Ordering::SeqCst);
        self.last_used.store(self.now(), Ordering::Relaxed);
        Some(Lease {
            model: model.clone(),
            batcher: batcher.clone(),
            slot: self.clone(),
        })
    }

    /// Keeps the model from being unloaded for idleness for `keep` from now.
    pub fn keep_for(&self, keep: Duration) {
        let until = self.now().saturating_add(keep.as_millis() as Millis);
        self.keep_until.fetch_max(until, Ordering::Relaxed);
    }

    /// When an idle, resident, unpinned model may be unloaded for idleness (`None`: never).
    pub fn unload_at(&self) -> Option<Millis> {
        if self.pinned.load(Ordering::Relaxed) {
            return None;
        }
        let keep = self.keep_alive?;
        let idle_end = self
            .last_used
            .load(Ordering::Relaxed)
            .saturating_add(keep.as_millis() as Millis);
        Some(idle_end.max(self.keep_until.load(Ordering::Relaxed)))
    }

    pub fn busy(&self) -> bool {
        self.leases.load(Ordering::SeqCst) > 0
    }

    pub fn is_pinned(&self) -> bool {
        self.pinned.load(Ordering::Relaxed)
    }

    pub fn cost(&self) -> u64 {
        self.cost.load(Ordering::Relaxed)
    }
}

/// A request's hold on a resident model: the model cannot be unloaded while one exists.
pub struct Lease {
    pub model: Arc<LoadedModel>,
    pub batcher: Option<Batcher>,
    pub slot: Arc<ModelSlot>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.slot
            .last_used
            .store(self.slot.now(), Ordering::Relaxed);
        if self.slot.leases.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.slot.idle.notify_waiters();
        }
    }
}
