//! The node: every model slot with its state, limits and live figures, and the snapshot
//! that capacity reports carry. A failed model stays in the table with its reason; it never
//! stops the others. Residency (load, unload, eviction) is `residency/`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use edgewise_proto as pb;
use tokio::sync::watch;

use crate::batch::BatchConfig;
use crate::config::{AgentConfig, Limits};
use crate::models::Engine;
use crate::models::manifest::{Manifest, Task, TaskSpec};
use crate::runtime::Runtime;
use crate::scheduler::Admission;
pub use crate::slot::{Lease, ModelSlot, SlotState};
use crate::stats::ModelStats;
use crate::store::{Counters, SavedState, Store};

/// A slot's lifetime counters, for persisting.
fn counters(slot: &ModelSlot) -> Counters {
    let s = &slot.stats;
    Counters {
        requests: s.requests_total.load(Ordering::Relaxed),
        errors: s.errors_total.load(Ordering::Relaxed),
        rejected: s.rejected_total.load(Ordering::Relaxed),
        tokens_generated: s.tokens_generated_total.load(Ordering::Relaxed),
    }
}

/// Default limits by task: generation interleaves decode steps of a few requests;
/// encoders take many requests at once because the batcher merges them.
fn limits_for(task: Option<Task>, limits: Option<&Limits>, batch: usize) -> (u32, u32) {
    let (c, q) = match task {
        // generations share decode steps: eight rows cost ~2 steps' time on 2 cores
        Some(Task::Generate) => (8, 16),
        Some(_) => (batch as u32, 8 * batch as u32),
        None => (1, 0),
    };
    let l = limits.copied().unwrap_or_default();
    (
        l.max_concurrency.unwrap_or(c).max(1),
        l.max_queue.unwrap_or(q),
    )
}

pub struct Node {
    pub id: String,
    pub advertise: String,
    pub config: AgentConfig,
    pub slots: BTreeMap<String, Arc<ModelSlot>>,
    pub store: Store,
    /// Mutual TLS (server and client side); `None` in plaintext mode.
    pub tls: Option<Arc<edgewise_tls::Tls>>,
    pub rt: &'static Runtime,
    /// Bytes the models may hold (resolved at start); `None`: no budget.
    pub budget: Option<u64>,
    /// Held across every load and unload: one at a time, so a model's measured cost is the
    /// process's growth over its load, and the budget is decided on a settled table.
    pub(crate) lifecycle: Arc<tokio::sync::Mutex<()>>,
    pub(crate) epoch: Instant,
    /// A generate model's K/V budget unless its limits name one.
    kv_default: u64,
    /// Models unloaded: evicted for room, idle past their keep-alive, by an operator.
    pub unloads_total: [std::sync::atomic::AtomicU64; 3],
    draining: AtomicBool,
    /// Bumped on every model state change and on drain, so reports go out at once.
    changes: watch::Sender<u64>,
}

impl Node {
    /// Builds the slot table from the models directory (manifests only; nothing is loaded).
    /// `id` is the node's id when its certificate names one (mutual TLS); otherwise the id
    /// kept in the state store is used (and made up on first start).
    pub fn new(
        config: AgentConfig,
        store: Store,
        advertise: String,
        id: Option<String>,
        tls: Option<Arc<edgewise_tls::Tls>>,
        rt: &'static Runtime,
    ) -> Result<Self, String> {
        let epoch = Instant::now();
        let hardware = crate::hardware::snapshot();
        let budget = config
            .memory
            .budget
            .and_then(|b| b.resolve(hardware.memory_available_bytes));
        let id = match id {
            Some(id) => id,
            None => store.node_id().map_err(|e| e.to_string())?,
        };
        let (folders, missing) = crate::models::discover(&config.models_dir, &config.include)
            .map_err(|e| format!("models directory {}: {e}", config.models_dir.display()))?;
        let mut slots = BTreeMap::new();
        let add = |slots: &mut BTreeMap<String, Arc<ModelSlot>>,
                   name: String,
                   folder: PathBuf,
                   manifest: Option<Manifest>,
                   failed: Option<String>| {
            let task = manifest.as_ref().map(Manifest::task);
            let (c, q) = limits_for(
                task,
                config.limits.get(&name),
                config.batching.max_batch_size,
            );
            let stats = Arc::new(ModelStats::default());
            if let Ok(saved) = store.counters(&name) {
                stats
                    .requests_total
                    .store(saved.requests, Ordering::Relaxed);
                stats.errors_total.store(saved.errors, Ordering::Relaxed);
                stats
                    .rejected_total
                    .store(saved.rejected, Ordering::Relaxed);
                stats
                    .tokens_generated_total
                    .store(saved.tokens_generated, Ordering::Relaxed);
            }
            let state = match failed {
                Some(r) => SlotState::Failed(r),
                None => SlotState::Available,
            };
            let limits = config.limits.get(&name).copied().unwrap_or_default();
            let slot = ModelSlot::new(
                name.clone(),
                folder,
                manifest,
                state,
                stats,
                Admission::new(c, q),
                epoch,
            )
            .with_residency(limits.pin, limits.keep_alive.or(config.memory.keep_alive));
            slots.insert(name, Arc::new(slot));
        };
        for folder in folders {
            let dir_name = folder
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("model")
                .to_string();
            match Manifest::load(&folder.join("model.toml")) {
                Ok(m) => {
                    let name = m.name.clone();
                    // a second folder claiming a name already served is refused, by folder name
                    if slots.contains_key(&name) {
                        add(
                            &mut slots,
                            dir_name,
                            folder,
                            None,
                            Some(format!("duplicate model name `{name}`")),
                        );
                    } else {
                        add(&mut slots, name, folder, Some(m), None);
                    }
                }
                Err(d) => add(
                    &mut slots,
                    dir_name,
                    folder,
                    None,
                    Some(format!("invalid manifest: {d}")),
                ),
            }
        }
        for name in missing {
            let folder = config.models_dir.join(&name);
            add(
                &mut slots,
                name,
                folder.clone(),
                None,
                Some(format!("no model folder {}", folder.display())),
            );
        }
        let generate = slots
            .values()
            .filter(|s| s.manifest.as_ref().map(Manifest::task) == Some(Task::Generate))
            .count()
            .max(1) as u64;
        // without a reading (not Linux) and no budget, 1 GiB per model
        let kv_default = match budget.unwrap_or(hardware.memory_available_bytes) {
            0 => 1 << 30,
            memory => memory / 4 / generate,
        };
        let (changes, _) = watch::channel(0);
        let node = Self {
            id,
            advertise,
            config,
            slots,
            store,
            tls,
            rt,
            budget,
            lifecycle: Arc::new(tokio::sync::Mutex::new(())),
            epoch,
            kv_default,
            unloads_total: Default::default(),
            draining: AtomicBool::new(false),
            changes,
        };
        for slot in node.slots.values() {
            node.estimate(slot);
        }
        Ok(node)
    }

    /// Applies a reloaded config's per-model limits to the running slots; returns what
    /// changed, as `model: concurrency a → b, queue c → d`. A report goes out at once.
    pub fn apply_limits(&self, config: &AgentConfig) -> Vec<String> {
        let mut changed = Vec::new();
        for slot in self.slots.values() {
            let task = slot.manifest.as_ref().map(Manifest::task);
            let (c, q) = limits_for(
                task,
                config.limits.get(&slot.name),
                config.batching.max_batch_size,
            );
            let (oc, oq) = (slot.admission.max_concurrency(), slot.admission.max_queue());
            if (c, q) != (oc, oq) {
                slot.admission.resize(c, q);
                changed.push(format!(
                    "{}: concurrency {oc} → {c}, queue {oq} → {q}",
                    slot.name
                ));
            }
        }
        if !changed.is_empty() {
            self.changed();
        }
        changed
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub(crate) fn changed(&self) {
        self.changes.send_modify(|v| *v += 1);
    }

    /// Persists and reports the state `slot` was just put in.
    pub(crate) fn state_changed(&self, slot: &ModelSlot) {
        let (name, reason) = slot.state_name();
        if let Err(e) = self.store.save_model_state(
            &slot.name,
            &SavedState {
                state: name.into(),
                reason,
            },
        ) {
            tracing::warn!(model = %slot.name, error = %e, "could not persist model state");
        }
        self.changed();
    }

    /// A generate model's batch settings. Its K/V budget is `models.limits.<name>.kv_budget_mb`,
    /// else a quarter of the memory budget (without one, of the memory available at start),
    /// shared by the node's generate models.
    pub(crate) fn batch_config(&self, name: &str) -> BatchConfig {
        let configured = self.config.limits.get(name).and_then(|l| l.kv_budget_bytes);
        let kv_budget_bytes = configured.unwrap_or(self.kv_default);
        BatchConfig {
            kv_budget_bytes,
            prefill_chunk: self.config.prefill_chunk_tokens,
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Stops admitting new work and tells the gateways at once.
    pub fn start_drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.changed();
    }

    /// Persists the lifetime counters (flushed).
    pub fn save_counters(&self) {
        let all: Vec<(String, Counters)> = self
            .slots
            .values()
            .map(|s| (s.name.clone(), counters(s)))
            .collect();
        if let Err(e) = self
            .store
            .save_counters(all.iter().map(|(n, c)| (n.as_str(), *c)))
        {
            tracing::warn!(error = %e, "could not persist counters");
        }
    }

    /// What a capacity report says about this node now.
    pub fn report(&self, seq: u64) -> pb::NodeReport {
        let now = Instant::now();
        let models = self
            .slots
            .values()
            .map(|s| self.model_status(s, now))
            .collect();
        pb::NodeReport {
            node_id: self.id.clone(),
            advertise_addr: self.advertise.clone(),
            seq,
            sent_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            hardware: Some(crate::hardware::snapshot()),
            models,
            report_interval_ms: self.config.report_interval.as_millis() as u32,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            draining: self.is_draining(),
            memory: Some(self.memory()),
        }
    }

    pub fn model_status(&self, s: &ModelSlot, now: Instant) -> pb::ModelStatus {
        let (state, reason) = s.state_name();
        let st = &s.stats;
        let m = s.manifest.as_ref();
        let size_bytes = s
            .ready()
            .map(|(m, _)| m.size_bytes)
            .unwrap_or_else(|| crate::models::file_bytes(&s.folder));
        // (in use, budget, per position) of a loaded generate model
        let kv = s.ready().and_then(|(m, _)| match &m.engine {
            Engine::Decoder(b) => Some((
                b.stats.kv_bytes_in_use.load(Ordering::Relaxed),
                b.kv_budget_bytes(),
                b.kv_bytes(1),
            )),
            Engine::Encoder(_) => None,
        });
        pb::ModelStatus {
            name: s.name.clone(),
            task: match m.map(Manifest::task) {
                Some(Task::Generate) => pb::Task::Generate,
                Some(Task::Embed) => pb::Task::Embed,
                Some(Task::Classify) => pb::Task::Classify,
                None => pb::Task::Unspecified,
            } as i32,
            state: match state {
                "available" => pb::ModelState::Available,
                "loading" => pb::ModelState::Loading,
                "ready" => pb::ModelState::Ready,
                "draining" => pb::ModelState::Draining,
                "unloaded" => pb::ModelState::Unloaded,
                _ => pb::ModelState::Failed,
            } as i32,
            reason,
            quality: m.map_or(0.0, |m| m.quality),
            parameters: m.map_or(0, |m| m.parameters),
            size_bytes,
            quantization: m.map(|m| m.quantization.clone()).unwrap_or_default(),
            context_length: m.map_or(0, |m| m.context_length),
            in_flight: st.in_flight.load(Ordering::SeqCst),
            queue_depth: st.queued.load(Ordering::SeqCst),
            max_concurrency: s.admission.max_concurrency(),
            max_queue: s.admission.max_queue(),
            ewma_latency_ms: st.ewma_latency_ms(),
            ewma_time_per_output_token_ms: st.ewma_tpot_ms(),
            tokens_per_s: st
                .tokens_per_s(now, self.config.report_interval.min(Duration::from_secs(1))),
            requests_total: st.requests_total.load(Ordering::Relaxed),
            errors_total: st.errors_total.load(Ordering::Relaxed),
            rejected_total: st.rejected_total.load(Ordering::Relaxed),
            tokens_generated_total: st.tokens_generated_total.load(Ordering::Relaxed),
            kv_bytes_in_use: kv.map_or(0, |(used, _, _)| used),
            kv_bytes_free: kv.map_or(0, |(used, budget, _)| budget.saturating_sub(used)),
            kv_bytes_per_position: kv.map_or(0, |(_, _, per)| per),
            space: m
                .and_then(|m| m.space())
                .map(|(s, _)| s.to_string())
                .unwrap_or_default(),
            dimensions: m.and_then(|m| m.space()).map_or(0, |(_, d)| d),
            // every generate model decodes under constraints (over its own tokenizer)
            constraints: kv.is_some(),
            resident_bytes: s.ready().map_or(0, |(m, _)| m.resident_bytes),
            // at least 1 when loaded: 0 means not loaded
            load_ms: s.ready().map_or(0, |(m, _)| {
                m.load_time.as_millis().clamp(1, u128::from(u32::MAX)) as u32
            }),
            tool_format: match m.map(|m| &m.spec) {
                Some(TaskSpec::Generate(g)) => g
                    .chat_template
                    .as_ref()
                    .and_then(|t| t.tools.clone())
                    .unwrap_or_default(),
                _ => String::new(),
            },
            cold_load_ms: if state == "ready" {
                0
            } else {
                s.cold_ms.load(Ordering::Relaxed)
            },
            cold_load_estimated: s.cold_estimated.load(Ordering::Relaxed),
            budget_bytes: s.cost(),
            pinned: s.is_pinned(),
            keep_alive_ms: s.keep_alive.map_or(0, |k| k.as_millis() as u64),
            unload_in_ms: match (state, s.busy(), s.unload_at()) {
                ("ready", false, Some(at)) => at.saturating_sub(s.now()).max(1),
                _ => 0,
            },
            loads_total: s.loads_total.load(Ordering::Relaxed),
            evictions_total: s.evictions_total.load(Ordering::Relaxed),
            last_used_unix_ms: match s.last_used.load(Ordering::Relaxed) {
                0 => 0,
                at => self.epoch_unix_ms() + at,
            },
        }
    }

    fn epoch_unix_ms(&self) -> u64 {
        let now_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        now_unix.saturating_sub(self.epoch.elapsed().as_millis() as u64)
    }

    /// The budget, what the models hold of it, and what cannot be evicted now.
    pub fn memory(&self) -> pb::MemoryBudget {
        let (mut used, mut held) = (0, 0);
        for s in self.slots.values() {
            let (holds, ready) = {
                let state = s.read();
                (
                    state.holds_memory(),
                    matches!(&*state, SlotState::Ready { .. }),
                )
            };
            if holds {
                used += s.cost();
                if s.is_pinned() || s.busy() || !ready {
                    held += s.cost();
                }
            }
        }
        pb::MemoryBudget {
            budget_bytes: self.budget.unwrap_or(0),
            used_bytes: used,
            held_bytes: held,
        }
    }
}
