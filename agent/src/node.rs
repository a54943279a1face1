//! The node: every model slot with its state, limits and live figures.
//!
//! Owns model lifecycle (loading → ready | failed) and the snapshot that capacity reports
//! carry. A failed model stays in the table with its reason; it never stops the others.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use edgewise_proto as pb;
use tokio::sync::watch;

use crate::batch::BatchConfig;
use crate::config::{AgentConfig, Limits};
use crate::models::manifest::{Manifest, Task, TaskSpec};
use crate::models::{Engine, LoadedModel};
use crate::runtime::Runtime;
use crate::scheduler::{Admission, Batcher, EncoderRun};
use crate::stats::ModelStats;
use crate::store::{Counters, SavedState, Store};

pub enum SlotState {
    Loading,
    Ready {
        model: Arc<LoadedModel>,
        batcher: Option<Batcher>,
    },
    Failed(String),
}

pub struct ModelSlot {
    pub name: String,
    pub folder: PathBuf,
    /// `None` when the manifest itself failed to load.
    pub manifest: Option<Manifest>,
    pub state: RwLock<SlotState>,
    pub stats: Arc<ModelStats>,
    pub admission: Admission,
}

impl ModelSlot {
    pub fn ready(&self) -> Option<(Arc<LoadedModel>, Option<Batcher>)> {
        match &*self.state.read().unwrap_or_else(|p| p.into_inner()) {
            SlotState::Ready { model, batcher } => Some((model.clone(), batcher.clone())),
            _ => None,
        }
    }

    pub fn state_name(&self) -> (&'static str, String) {
        match &*self.state.read().unwrap_or_else(|p| p.into_inner()) {
            SlotState::Loading => ("loading", String::new()),
            SlotState::Ready { .. } => ("ready", String::new()),
            SlotState::Failed(r) => ("failed", r.clone()),
        }
    }

    fn counters(&self) -> Counters {
        let s = &self.stats;
        Counters {
            requests: s.requests_total.load(Ordering::Relaxed),
            errors: s.errors_total.load(Ordering::Relaxed),
            rejected: s.rejected_total.load(Ordering::Relaxed),
            tokens_generated: s.tokens_generated_total.load(Ordering::Relaxed),
        }
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
    ) -> Result<Self, String> {
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
            let state = RwLock::new(match failed {
                Some(r) => SlotState::Failed(r),
                None => SlotState::Loading,
            });
            slots.insert(
                name.clone(),
                Arc::new(ModelSlot {
                    name,
                    folder,
                    manifest,
                    state,
                    stats,
                    admission: Admission::new(c, q),
                }),
            );
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
        let (changes, _) = watch::channel(0);
        Ok(Self {
            id,
            advertise,
            config,
            slots,
            store,
            tls,
            draining: AtomicBool::new(false),
            changes,
        })
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

    fn changed(&self) {
        self.changes.send_modify(|v| *v += 1);
    }

    fn set_state(&self, slot: &ModelSlot, state: SlotState) {
        *slot.state.write().unwrap_or_else(|p| p.into_inner()) = state;
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

    /// Loads one slot (blocking: call from a blocking thread). Returns the smoke latency.
    pub fn load_slot(&self, slot: &ModelSlot, rt: &Runtime) -> Result<Duration, String> {
        let Some(manifest) = slot.manifest.clone() else {
            let (_, reason) = slot.state_name();
            self.set_state(slot, SlotState::Failed(reason.clone()));
            return Err(reason);
        };
        let batch = self.batch_config(&slot.name);
        // models load one at a time: the process's growth over the load and the smoke run is
        // this model's resident cost (the K/V arena is freed again once the smoke ends)
        let before = crate::hardware::resident_bytes();
        let loaded = LoadedModel::load(
            &slot.folder,
            manifest,
            rt,
            self.config.intra_op_threads,
            batch,
        )
        .and_then(|m| m.smoke().map(|t| (m, t)));
        match loaded {
            Ok((mut model, smoke)) => {
                model.resident_bytes = crate::hardware::resident_bytes().saturating_sub(before);
                tracing::info!(model = %slot.name, load_ms = model.load_time.as_millis() as u64, smoke_ms = smoke.latency.as_millis() as u64, resident_mb = model.resident_bytes >> 20, "model ready");
                // reports carry a measured latency from the start: a model never measured
                // is not taken to be fast by a gateway with a latency limit
                slot.stats
                    .seed_latency(smoke.latency, smoke.time_per_output_token);
                let model = Arc::new(model);
                self.install(slot, model);
                Ok(smoke.latency)
            }
            Err(reason) => {
                tracing::warn!(model = %slot.name, reason = %reason, "model failed to load");
                self.set_state(slot, SlotState::Failed(reason.clone()));
                Err(reason)
            }
        }
    }

    /// A generate model's batch settings. Its K/V budget is `models.limits.<name>.kv_budget_mb`,
    /// else a quarter of the memory available now, shared by the node's generate models.
    fn batch_config(&self, name: &str) -> BatchConfig {
        let configured = self.config.limits.get(name).and_then(|l| l.kv_budget_bytes);
        let kv_budget_bytes = configured.unwrap_or_else(|| {
            let generate = self
                .slots
                .values()
                .filter(|s| s.manifest.as_ref().map(Manifest::task) == Some(Task::Generate))
                .count()
                .max(1) as u64;
            let available = crate::hardware::snapshot().memory_available_bytes;
            // without a reading (not Linux), 1 GiB per model
            if available == 0 {
                1 << 30
            } else {
                available / 4 / generate
            }
        });
        BatchConfig {
            kv_budget_bytes,
            prefill_chunk: self.config.prefill_chunk_tokens,
        }
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
        self.set_state(slot, SlotState::Ready { model, batcher });
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
            .map(|s| (s.name.clone(), s.counters()))
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
        }
    }

    fn model_status(&self, s: &ModelSlot, now: Instant) -> pb::ModelStatus {
        let (state, reason) = s.state_name();
        let st = &s.stats;
        let m = s.manifest.as_ref();
        let size_bytes = s.ready().map(|(m, _)| m.size_bytes).unwrap_or_else(|| {
            std::fs::metadata(s.folder.join("model.onnx"))
                .map(|m| m.len())
                .unwrap_or(0)
        });
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
                "loading" => pb::ModelState::Loading,
                "ready" => pb::ModelState::Ready,
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
        }
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
