//! Which models are in memory: loading on demand under the memory budget, evicting the
//! least recently used idle model for room, unloading after an idle keep-alive, pins, and
//! the operator's load and unload.
//!
//! Every load and unload happens under `Node::lifecycle`, one at a time: a model's cost is
//! measured as the process's growth over its load, and a decision to evict is taken on a
//! table nothing else is changing. A request for a model that is not resident waits on that
//! lock (within its deadline); the first to get it loads, the rest find the model resident,
//! so any number of requests cause one load. A model leaves memory only with no lease held
//! (`slot.rs`): an idle one at once, a busy one (operator unload) after it drains.
//! `schedule.rs`: what loads at start and the keep-alive reaper; `operator.rs`: the
//! operator's load, unload (with its drain) and pin.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::budget::show;
use crate::error::AgentError;
use crate::models::manifest::Task;
use crate::models::{Engine, LoadedModel};
use crate::node::Node;
use crate::scheduler::{Batcher, EncoderRun};
use crate::slot::{Lease, ModelSlot, SlotState};
use crate::store::Measured;

mod operator;
mod schedule;

/// A model never loaded here is estimated to take this many times its file size in memory
/// (its first load holds the prepacked weights on the heap: Qwen2.5 0.5B 4-bit measured
/// 990 MB for a 520 MB file; loads from its mapped copy then measure 583 MB).
const RESIDENT_PER_FILE_BYTE: f64 = 1.7;
/// Load rates for estimates, file in the page cache (BENCHMARKS.md, "Model lifecycle"): from
/// the source (Qwen2.5 0.5B: 1.7 s for 520 MB), writing the mapped copy on a first load
/// (7.7 s), and mapping the copy (0.94 s with the smoke run).
const SOURCE_BYTES_PER_MS: u64 = 300_000;
const WRITING_BYTES_PER_MS: u64 = 70_000;
const MAPPED_BYTES_PER_MS: u64 = 550_000;
/// How long an unload waits for the last holder of a model to let go before leaving it to
/// be freed by that holder.
const FREE_WAIT: Duration = Duration::from_secs(10);

/// A load time estimated from the file size at `rate` bytes per ms.
fn estimated_load_ms(file_bytes: u64, rate: u64) -> u32 {
    (file_bytes / rate).clamp(1, u64::from(u32::MAX)) as u32
}

/// Why a model left memory (metrics and logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unload {
    /// Least recently used, for another model's room.
    Evicted,
    /// Idle past its keep-alive.
    Idle,
    /// An operator's unload.
    Operator,
}

impl Unload {
    pub fn as_str(self) -> &'static str {
        match self {
            Unload::Evicted => "evicted",
            Unload::Idle => "idle",
            Unload::Operator => "operator",
        }
    }
}

impl Node {
    /// Sets a slot's cost and cold-load time from its last measured load (kept in the state
    /// store) or, never loaded with these files, from its file size.
    pub(crate) fn estimate(&self, slot: &ModelSlot) {
        let file = crate::models::file_bytes(&slot.folder);
        let kv = self.kv_cost(slot);
        let measured = self.store.measured(&slot.name).ok().flatten();
        let (resident, cold, estimated) = match measured {
            Some(m) if m.file_bytes == file => (m.resident_bytes, m.cold_load_ms, false),
            _ => (
                (file as f64 * RESIDENT_PER_FILE_BYTE) as u64,
                // with mapped copies on, a first load writes one
                estimated_load_ms(
                    file,
                    if self.config.mapped_copies {
                        WRITING_BYTES_PER_MS
                    } else {
                        SOURCE_BYTES_PER_MS
                    },
                ),
                true,
            ),
        };
        slot.cost.store(resident + kv, Ordering::Relaxed);
        slot.cold_ms.store(cold, Ordering::Relaxed);
        slot.cold_estimated.store(estimated, Ordering::Relaxed);
    }

    /// A generate model's K/V budget (counted in full: its arena may grow to it).
    fn kv_cost(&self, slot: &ModelSlot) -> u64 {
        match slot.manifest.as_ref().map(|m| m.task()) {
            Some(Task::Generate) => self.batch_config(&slot.name).kv_budget_bytes,
            _ => 0,
        }
    }

    /// What the models in memory hold of the budget.
    pub fn used_bytes(&self) -> u64 {
        self.slots
            .values()
            .filter(|s| s.read().holds_memory())
            .map(|s| s.cost())
            .sum()
    }

    /// A lease on the model, loading it first when it is not resident (waiting, within the
    /// deadline, for a load already under way). `keep`: the request's keep-alive.
    pub async fn acquire(
        self: &Arc<Self>,
        slot: &Arc<ModelSlot>,
        deadline: Option<Instant>,
        keep: Option<Duration>,
    ) -> Result<Lease, AgentError> {
        let lease = match slot.lease() {
            Some(l) => l,
            None => self.load_for_request(slot, deadline).await?,
        };
        if let Some(k) = keep {
            slot.keep_for(k.min(self.config.memory.max_keep_alive));
        }
        Ok(lease)
    }

    async fn load_for_request(
        self: &Arc<Self>,
        slot: &Arc<ModelSlot>,
        deadline: Option<Instant>,
    ) -> Result<Lease, AgentError> {
        usable(slot)?;
        if self.is_draining() {
            return Err(AgentError::Draining);
        }
        let waiting = || {
            AgentError::DeadlineExceeded(format!(
                "waiting for model `{}` to load (cold load ~{} ms)",
                slot.name,
                slot.cold_ms.load(Ordering::Relaxed)
            ))
        };
        let lock = self.lifecycle.clone().lock_owned();
        let guard = match deadline {
            Some(d) => tokio::time::timeout_at(d.into(), lock)
                .await
                .map_err(|_| waiting())?,
            None => lock.await,
        };
        if let Some(l) = slot.lease() {
            return Ok(l);
        }
        usable(slot)?;
        // the load goes on if this request gives up: the others waiting need it too
        let (node, s) = (self.clone(), slot.clone());
        let load = tokio::spawn(async move {
            let _held = guard;
            node.load_locked(&s).await
        });
        let done = match deadline {
            Some(d) => tokio::time::timeout_at(d.into(), load)
                .await
                .map_err(|_| waiting())?,
            None => load.await,
        };
        done.map_err(|e| AgentError::Inference {
            model: slot.name.clone(),
            message: format!("the load task failed: {e}"),
        })?
    }

    /// Loads `slot`, evicting for room. The caller holds `lifecycle`.
    pub(super) async fn load_locked(
        self: &Arc<Self>,
        slot: &Arc<ModelSlot>,
    ) -> Result<Lease, AgentError> {
        if let Some(l) = slot.lease() {
            return Ok(l);
        }
        self.make_room(slot).await?;
        *slot.write() = SlotState::Loading;
        self.state_changed(slot);
        let started = Instant::now();
        let (node, s) = (self.clone(), slot.clone());
        let loaded = tokio::task::spawn_blocking(move || node.load_blocking(&s))
            .await
            .unwrap_or_else(|e| Err(format!("the load task failed: {e}")));
        match loaded {
            Ok((model, wrote_copy)) => {
                let measured_ms = started.elapsed().as_millis().clamp(1, u32::MAX as u128) as u32;
                // a load that wrote the mapped copy is no guide to the next ones, which map
                // it: until one of those is measured, the estimate from the file size stands
                let cold_ms = if wrote_copy {
                    let previous = self.store.measured(&slot.name).ok().flatten();
                    match previous {
                        Some(m) if m.file_bytes == model.size_bytes => m.cold_load_ms,
                        _ => estimated_load_ms(model.size_bytes, MAPPED_BYTES_PER_MS),
                    }
                } else {
                    measured_ms
                };
                let resident = self.settled_cost(slot, &model);
                let measured = Measured {
                    file_bytes: model.size_bytes,
                    resident_bytes: resident,
                    cold_load_ms: cold_ms,
                };
                if let Err(e) = self.store.save_measured(&slot.name, &measured) {
                    tracing::warn!(model = %slot.name, error = %e, "could not record the load's measurements");
                }
                slot.cost
                    .store(resident + self.kv_cost(slot), Ordering::Relaxed);
                slot.cold_ms.store(cold_ms, Ordering::Relaxed);
                slot.cold_estimated.store(wrote_copy, Ordering::Relaxed);
                slot.loads_total.fetch_add(1, Ordering::Relaxed);
                slot.last_used.store(slot.now(), Ordering::Relaxed);
                self.install(slot, Arc::new(model));
                // the measured cost may be above the estimate the room was made for
                self.settle_over_budget(slot).await;
                slot.lease().ok_or_else(|| AgentError::NotReady {
                    model: slot.name.clone(),
                    state: "unloaded",
                    reason: "unloaded as soon as it loaded".into(),
                })
            }
            Err(reason) => {
                tracing::warn!(model = %slot.name, reason = %reason, "model failed to load");
                *slot.write() = SlotState::Failed(reason.clone());
                self.state_changed(slot);
                Err(AgentError::NotReady {
                    model: slot.name.clone(),
                    state: "failed",
                    reason,
                })
            }
        }
    }

    /// The resident cost to keep for `slot` after a load: the least this model has measured
    /// with these files, and never less than the files. A reload measures high: the heap
    /// the last unload gave back to the system (and whatever other models allocate during
    /// the load) grows again inside it; the first load in a process measured the model
    /// alone (BENCHMARKS.md has the figures).
    fn settled_cost(&self, slot: &ModelSlot, model: &LoadedModel) -> u64 {
        let now = model.resident_bytes.max(model.size_bytes);
        match self.store.measured(&slot.name).ok().flatten() {
            Some(m) if m.file_bytes == model.size_bytes => now.min(m.resident_bytes),
            _ => now,
        }
    }

    /// Reads the files, creates the session, runs the smoke inference, and measures what
    /// that added to the process's resident memory (loads run one at a time).
    /// Also says whether the load wrote the model's mapped copy.
    fn load_blocking(&self, slot: &ModelSlot) -> Result<(LoadedModel, bool), String> {
        let Some(manifest) = slot.manifest.clone() else {
            return Err(slot.state_name().1);
        };
        let mapped = self
            .config
            .mapped_copies
            .then(|| self.config.state_dir.join("mapped"));
        let copy = mapped.as_deref().map(|root| {
            crate::engine::mapped::copy_dir(root, &slot.folder.join("model.onnx"), &self.rt.library)
        });
        let had_copy = copy
            .as_deref()
            .is_some_and(|c| crate::engine::mapped::existing(c).is_some());
        let before = crate::hardware::resident_bytes();
        let mut model = LoadedModel::load(
            &slot.folder,
            manifest,
            self.rt,
            self.config.intra_op_threads,
            self.batch_config(&slot.name),
            mapped.as_deref(),
        )?;
        let wrote_copy = !had_copy
            && copy
                .as_deref()
                .is_some_and(|c| crate::engine::mapped::existing(c).is_some());
        let smoke = model.smoke()?;
        model.resident_bytes = crate::hardware::resident_bytes().saturating_sub(before);
        tracing::info!(model = %slot.name, load_ms = model.load_time.as_millis() as u64, smoke_ms = smoke.latency.as_millis() as u64, resident_mb = model.resident_bytes >> 20, "model ready");
        // reports carry a measured latency from the start: a model never measured is not
        // taken to be fast by a gateway with a latency limit
        slot.stats
            .seed_latency(smoke.latency, smoke.time_per_output_token);
        Ok((model, wrote_copy))
    }

    fn install(&self, slot: &ModelSlot, model: Arc<LoadedModel>) {
        let batcher = match &model.engine {
            Engine::Encoder(_) => {
                let run: Arc<dyn EncoderRun> = Arc::new(EncoderHandle(model.clone()));
                Some(Batcher::start(
                    run,
                    self.config.batching,
                    slot.stats.clone(),
                ))
            }
            Engine::Decoder(_) => None,
        };
        *slot.write() = SlotState::Ready { model, batcher };
        self.state_changed(slot);
    }

    /// Evicts idle, unpinned models, least recently used first, until `slot` fits; refuses
    /// at once, evicting nothing, when even all of them would not make room.
    async fn make_room(&self, slot: &Arc<ModelSlot>) -> Result<(), AgentError> {
        let Some(budget) = self.budget else {
            return Ok(());
        };
        let need = slot.cost();
        loop {
            let used = self.used_bytes();
            if used + need <= budget {
                return Ok(());
            }
            let mut idle: Vec<&Arc<ModelSlot>> = self
                .slots
                .values()
                .filter(|s| !Arc::ptr_eq(s, slot) && evictable(s))
                .collect();
            let freeable: u64 = idle.iter().map(|s| s.cost()).sum();
            if used - freeable + need > budget {
                return Err(self.no_room(slot, budget, used));
            }
            idle.sort_by_key(|s| s.last_used.load(Ordering::Relaxed));
            let mut evicted = false;
            for victim in idle {
                if self.used_bytes() + need <= budget {
                    break;
                }
                evicted |= self.unload_idle(victim, Unload::Evicted).await;
            }
            if !evicted {
                // every candidate became busy: look again (it refuses if nothing is left)
                tokio::task::yield_now().await;
            }
        }
    }

    /// After a load measured more than its estimate: evicts idle models until the budget
    /// holds again (never `loaded` itself).
    async fn settle_over_budget(&self, loaded: &Arc<ModelSlot>) {
        let Some(budget) = self.budget else {
            return;
        };
        let mut idle: Vec<&Arc<ModelSlot>> = self
            .slots
            .values()
            .filter(|s| !Arc::ptr_eq(s, loaded) && evictable(s))
            .collect();
        idle.sort_by_key(|s| s.last_used.load(Ordering::Relaxed));
        for victim in idle {
            if self.used_bytes() <= budget {
                return;
            }
            self.unload_idle(victim, Unload::Evicted).await;
        }
        if self.used_bytes() > budget {
            tracing::warn!(
                model = %loaded.name,
                budget = %show(budget),
                used = %show(self.used_bytes()),
                "the model measured more than estimated and nothing idle is left to evict: over the budget until a model goes idle"
            );
        }
    }

    pub(super) fn no_room(&self, slot: &ModelSlot, budget: u64, used: u64) -> AgentError {
        let held: Vec<String> = self
            .slots
            .values()
            .filter(|s| !std::ptr::eq(s.as_ref(), slot) && s.read().holds_memory())
            .map(|s| {
                let why = if s.is_pinned() {
                    "pinned".to_string()
                } else if s.busy() {
                    format!("{} requests in flight", s.leases.load(Ordering::Relaxed))
                } else {
                    s.state_name().0.to_string()
                };
                format!("{} {} ({why})", s.name, show(s.cost()))
            })
            .collect();
        AgentError::MemoryBudget {
            model: slot.name.clone(),
            need: show(slot.cost()),
            budget: show(budget),
            free: show(budget.saturating_sub(used)),
            held: if held.is_empty() {
                "it is larger than the whole budget".into()
            } else {
                format!("held and not evictable now: {}", held.join(", "))
            },
        }
    }

    /// Unloads `slot` if it is resident and idle (the caller holds `lifecycle`). Returns
    /// whether it did.
    pub(super) async fn unload_idle(&self, slot: &ModelSlot, why: Unload) -> bool {
        let taken = {
            let mut state = slot.write();
            // leases are taken under the read lock: none can start while this is held
            if slot.busy() {
                None
            } else {
                match std::mem::replace(&mut *state, SlotState::Unloaded) {
                    SlotState::Ready { model, batcher } => Some((model, batcher)),
                    other => {
                        *state = other;
                        None
                    }
                }
            }
        };
        let Some((model, batcher)) = taken else {
            return false;
        };
        self.finish_unload(slot, model, batcher, why).await;
        true
    }

    pub(super) async fn finish_unload(
        &self,
        slot: &ModelSlot,
        model: Arc<LoadedModel>,
        batcher: Option<Batcher>,
        why: Unload,
    ) {
        let bytes = slot.cost();
        if why == Unload::Evicted {
            slot.evictions_total.fetch_add(1, Ordering::Relaxed);
        }
        self.unloads(why);
        let _ = tokio::task::spawn_blocking(move || free(model, batcher)).await;
        tracing::info!(model = %slot.name, reason = why.as_str(), freed = %show(bytes), "model unloaded");
        *slot.write() = SlotState::Unloaded;
        self.state_changed(slot);
    }

    fn unloads(&self, why: Unload) {
        let i = match why {
            Unload::Evicted => 0,
            Unload::Idle => 1,
            Unload::Operator => 2,
        };
        self.unloads_total[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// Whether a request may use (or load) the model in its state.
pub(super) fn usable(slot: &ModelSlot) -> Result<(), AgentError> {
    match &*slot.read() {
        SlotState::Failed(reason) => Err(AgentError::NotReady {
            model: slot.name.clone(),
            state: "failed",
            reason: reason.clone(),
        }),
        SlotState::Draining { .. } => Err(AgentError::NotReady {
            model: slot.name.clone(),
            state: "draining",
            reason: "an operator is unloading it".into(),
        }),
        _ => Ok(()),
    }
}

/// Resident, idle and unpinned: may be evicted for room.
fn evictable(slot: &ModelSlot) -> bool {
    !slot.is_pinned() && !slot.busy() && matches!(&*slot.read(), SlotState::Ready { .. })
}

/// Frees a model (blocking): its batcher first (an encoder's batching task holds the model
/// too), then the model once nothing else holds it, then returns freed heap to the system.
fn free(model: Arc<LoadedModel>, batcher: Option<Batcher>) {
    drop(batcher);
    let until = Instant::now() + FREE_WAIT;
    let mut model = model;
    loop {
        match Arc::try_unwrap(model) {
            Ok(m) => {
                drop(m);
                break;
            }
            Err(still) if Instant::now() < until => {
                model = still;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(still) => {
                tracing::warn!(
                    model = %still.manifest.name,
                    "still held after {FREE_WAIT:?}; it is freed when its last holder ends"
                );
                break;
            }
        }
    }
    trim_heap();
}

/// Returns free heap pages to the system, so the process's resident memory falls when a
/// model is unloaded (glibc keeps freed arenas otherwise).
#[allow(unsafe_code)]
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory at the top of glibc's heaps; it reads no
    // pointer of ours and is safe to call from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Lets the batcher run a loaded encoder without knowing about manifests.
struct EncoderHandle(Arc<LoadedModel>);

impl EncoderRun for EncoderHandle {
    fn run_batch(&self, batch: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, crate::engine::EngineError> {
        match &self.0.engine {
            Engine::Encoder(e) => e.run(batch),
            Engine::Decoder(_) => Err(crate::engine::EngineError("not an encoder".into())),
        }
    }
}
