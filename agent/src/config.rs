//! The agent's own configuration (`agent.toml`): a raw serde shape, then a validated type.
//!
//! Loaded with the `config` crate so that `EDGEWISE_SECTION__KEY` environment variables
//! override the file (`EDGEWISE_REPORT__INTERVAL_MS=500`). Every problem is reported at once,
//! as `file:line:column: path: message`. This module does no I/O beyond reading the file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use edgewise_diag::{Diagnostics, Layered};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAgentConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub models: RawModels,
    #[serde(default)]
    pub batching: RawBatching,
    #[serde(default)]
    pub runtime: RawRuntime,
    #[serde(default)]
    pub report: RawReport,
    #[serde(default)]
    pub state: RawState,
    pub tls: Option<edgewise_tls::RawTls>,
    #[serde(default)]
    pub metrics: edgewise_ops::metrics::RawMetrics,
    #[serde(default)]
    pub telemetry: edgewise_ops::otlp::RawTelemetry,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<String>,
    pub advertise: Option<String>,
    pub drain_timeout_ms: Option<u64>,
    pub max_message_bytes: Option<usize>,
    /// Tenants whose certificates may call this agent directly (`edgewise-agent call`).
    #[serde(default)]
    pub operators: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModels {
    pub dir: Option<PathBuf>,
    /// Folder names to load; unset or empty loads every folder in `dir`.
    #[serde(default)]
    pub include: Vec<String>,
    #[serde(default)]
    pub limits: BTreeMap<String, RawLimits>,
    /// Memory the models may hold: bytes (an integer, or text like "6 GiB") or a share of
    /// the memory available at start ("60%"). Unset: no budget.
    pub memory_budget: Option<crate::budget::RawSize>,
    /// Idle time before a resident, unpinned model may be unloaded.
    pub keep_alive_ms: Option<u64>,
    /// The longest keep-alive a request may ask for.
    pub max_keep_alive_ms: Option<u64>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_concurrency: Option<u32>,
    pub max_queue: Option<u32>,
    /// Generate models: most K/V cache memory its sequences hold at once.
    pub kv_budget_mb: Option<u64>,
    /// Loaded at start and never evicted.
    pub pin: Option<bool>,
    /// This model's idle time before it may be unloaded.
    pub keep_alive_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBatching {
    pub max_batch_size: Option<u32>,
    pub max_delay_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRuntime {
    pub onnxruntime_library: Option<PathBuf>,
    /// 0 or unset: one per core.
    pub intra_op_threads: Option<u32>,
    /// Most prompt tokens a generate model prefills between two decode steps.
    pub prefill_chunk_tokens: Option<u32>,
    /// Keep each model's optimized graph with its prepacked weights under the state
    /// directory (`mapped/`) and load from it: faster loads, weights in reclaimable pages.
    pub mapped_copies: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReport {
    #[serde(default)]
    pub gateways: Vec<String>,
    pub interval_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawState {
    pub dir: Option<PathBuf>,
}

/// Validated configuration: everything past this point is typed and in range.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub listen: SocketAddr,
    /// Where gateways reach this agent; defaults to `http://{listen}`.
    pub advertise: Option<String>,
    pub drain_timeout: Duration,
    pub max_message_bytes: usize,
    pub models_dir: PathBuf,
    pub include: Vec<String>,
    pub limits: BTreeMap<String, Limits>,
    /// The memory budget and keep-alive rules (`[models]`).
    pub memory: crate::budget::MemoryConfig,
    pub batching: BatchingConfig,
    pub onnxruntime_library: Option<PathBuf>,
    pub intra_op_threads: usize,
    pub prefill_chunk_tokens: usize,
    /// Load models from mapped copies under `state_dir/mapped` (written on first load).
    pub mapped_copies: bool,
    pub gateways: Vec<String>,
    pub report_interval: Duration,
    pub state_dir: PathBuf,
    /// Mutual TLS with gateways, or plain text for development.
    pub tls: edgewise_tls::TlsMode,
    /// Where `GET /metrics` is served (plain HTTP); `None`: not served.
    pub metrics_listen: Option<SocketAddr>,
    /// Where traces and metrics are exported (OTLP); `None`: not exported.
    pub otlp: Option<edgewise_ops::otlp::OtlpConfig>,
    /// Tenants (besides gateways) whose certificates may call this agent under mutual TLS.
    pub operators: Vec<String>,
}

/// Per-model admission limits. Unset fields take the task's defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub max_concurrency: Option<u32>,
    pub max_queue: Option<u32>,
    /// Unset: a share of the memory budget, or of the memory available at start (`node`).
    pub kv_budget_bytes: Option<u64>,
    pub pin: bool,
    /// Unset: `models.keep_alive_ms`.
    pub keep_alive: Option<Duration>,
}

#[derive(Debug, Clone, Copy)]
pub struct BatchingConfig {
    /// Most texts in one ONNX Runtime run of an embedder or classifier.
    pub max_batch_size: usize,
    /// How long the first request of a batch waits for company.
    pub max_delay: Duration,
}

impl Default for BatchingConfig {
    fn default() -> Self {
        Self {
            max_batch_size: 32,
            max_delay: Duration::from_millis(2),
        }
    }
}

impl AgentConfig {
    /// Defaults for running from a checkout (`models/`, state under `build/state`).
    pub fn for_models_dir(models_dir: PathBuf) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7300)),
            advertise: None,
            drain_timeout: Duration::from_secs(10),
            max_message_bytes: 4 << 20,
            models_dir,
            include: Vec::new(),
            limits: BTreeMap::new(),
            memory: crate::budget::MemoryConfig::default(),
            batching: BatchingConfig::default(),
            onnxruntime_library: None,
            intra_op_threads: default_threads(),
            prefill_chunk_tokens: 128,
            mapped_copies: true,
            gateways: Vec::new(),
            report_interval: Duration::from_secs(1),
            state_dir: PathBuf::from("build/state/agent"),
            tls: edgewise_tls::TlsMode::Plaintext,
            metrics_listen: None,
            otlp: None,
            operators: Vec::new(),
        }
    }

    /// Reads `path`, applies `EDGEWISE_*__*` overrides from `env`, validates.
    pub fn load(path: &Path, env: &[(String, String)]) -> Result<Self, Diagnostics> {
        let layered = Layered::<RawAgentConfig>::load(
            path,
            env,
            &["report.gateways", "models.include", "server.operators"],
        )?;
        let credentials = env
            .iter()
            .find(|(k, _)| k == "CREDENTIALS_DIRECTORY")
            .map(|(_, v)| PathBuf::from(v));
        // a budget is checked against the machine it will run on
        let machine = crate::hardware::snapshot().memory_total_bytes;
        validate(layered, credentials.as_deref(), machine)
    }
}

fn tls_said(scheme: &str) -> &'static str {
    if scheme == "https" {
        "mutual TLS is on"
    } else {
        "tls.plaintext = true"
    }
}

pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// `machine`: the box's total memory (0: unknown, no check against it).
fn validate(
    layered: Layered<RawAgentConfig>,
    credentials: Option<&Path>,
    machine: u64,
) -> Result<AgentConfig, Diagnostics> {
    let (raw, at) = layered.split();
    let mut problems = Vec::new();
    let tls = edgewise_tls::validate(raw.tls, &at, credentials, &mut problems);
    let otlp = edgewise_ops::otlp::validate(raw.telemetry, &at, &mut problems);
    let metrics_listen = edgewise_ops::metrics::validate(raw.metrics, &at, &mut problems);
    // peers are dialled over TLS exactly when it is on
    let scheme = if tls.is_plaintext() { "http" } else { "https" };
    let mut problem = |path: &str, msg: String| problems.push(at.problem(path, msg));
    let base = at.base();
    let mut cfg = AgentConfig::for_models_dir(PathBuf::from("models"));
    cfg.tls = tls;
    cfg.otlp = otlp;
    cfg.metrics_listen = metrics_listen;

    if let Some(listen) = raw.server.listen {
        match listen.parse::<SocketAddr>() {
            Ok(a) => cfg.listen = a,
            Err(e) => problem(
                "server.listen",
                format!("`{listen}` is not an address like 127.0.0.1:7300 ({e})"),
            ),
        }
    }
    if let Some(adv) = raw.server.advertise {
        if adv.starts_with(&format!("{scheme}://")) {
            cfg.advertise = Some(adv);
        } else {
            problem(
                "server.advertise",
                format!(
                    "`{adv}` must be a URL starting with {scheme}:// ({})",
                    tls_said(scheme)
                ),
            );
        }
    }
    if let Some(ms) = raw.server.drain_timeout_ms {
        cfg.drain_timeout = Duration::from_millis(ms);
    }
    if let Some(bytes) = raw.server.max_message_bytes {
        if bytes < 1024 {
            problem(
                "server.max_message_bytes",
                format!("{bytes} is too small (at least 1024)"),
            );
        } else {
            cfg.max_message_bytes = bytes;
        }
    }
    for (i, o) in raw.server.operators.iter().enumerate() {
        if !edgewise_tls::valid_name(o) {
            problem(
                &format!("server.operators[{i}]"),
                format!("`{o}` is not a tenant name"),
            );
        }
    }
    cfg.operators = raw.server.operators;
    if let Some(dir) = raw.models.dir {
        cfg.models_dir = base.join(dir);
    } else {
        cfg.models_dir = base.join("models");
    }
    for (i, name) in raw.models.include.iter().enumerate() {
        if name.is_empty() || name.contains('/') {
            problem(
                &format!("models.include[{i}]"),
                format!("`{name}` is not a model folder name"),
            );
        }
    }
    cfg.include = raw.models.include;
    for (name, l) in raw.models.limits {
        if l.max_concurrency == Some(0) {
            problem(
                &format!("models.limits.{name}.max_concurrency"),
                "must be at least 1".into(),
            );
        }
        if l.kv_budget_mb == Some(0) || l.kv_budget_mb.is_some_and(|mb| mb > 1 << 30) {
            problem(
                &format!("models.limits.{name}.kv_budget_mb"),
                "must be in 1..=1073741824".into(),
            );
        }
        if let Some(ms) = l.keep_alive_ms {
            crate::budget::check_keep_alive(ms)
                .unwrap_or_else(|m| problem(&format!("models.limits.{name}.keep_alive_ms"), m));
        }
        cfg.limits.insert(
            name,
            Limits {
                max_concurrency: l.max_concurrency,
                max_queue: l.max_queue,
                kv_budget_bytes: l.kv_budget_mb.map(|mb| mb << 20),
                pin: l.pin.unwrap_or(false),
                keep_alive: l.keep_alive_ms.map(Duration::from_millis),
            },
        );
    }
    cfg.memory = crate::budget::validate(
        raw.models.memory_budget,
        raw.models.keep_alive_ms,
        raw.models.max_keep_alive_ms,
        machine,
        &mut problem,
    );
    if let Some(n) = raw.batching.max_batch_size {
        if n == 0 || n > 1024 {
            problem(
                "batching.max_batch_size",
                format!("{n} is out of range 1..=1024"),
            );
        } else {
            cfg.batching.max_batch_size = n as usize;
        }
    }
    if let Some(ms) = raw.batching.max_delay_ms {
        if ms > 1000 {
            problem(
                "batching.max_delay_ms",
                format!("{ms} ms is more than 1000 ms"),
            );
        } else {
            cfg.batching.max_delay = Duration::from_millis(ms);
        }
    }
    cfg.onnxruntime_library = raw.runtime.onnxruntime_library.map(|p| base.join(p));
    match raw.runtime.intra_op_threads {
        None | Some(0) => {}
        Some(n) if n > 256 => problem("runtime.intra_op_threads", format!("{n} is more than 256")),
        Some(n) => cfg.intra_op_threads = n as usize,
    }
    if let Some(m) = raw.runtime.mapped_copies {
        cfg.mapped_copies = m;
    }
    match raw.runtime.prefill_chunk_tokens {
        None => {}
        Some(n) if n == 0 || n > 8192 => problem(
            "runtime.prefill_chunk_tokens",
            format!("{n} is out of range 1..=8192"),
        ),
        Some(n) => cfg.prefill_chunk_tokens = n as usize,
    }
    for (i, g) in raw.report.gateways.iter().enumerate() {
        if !g.starts_with(&format!("{scheme}://")) {
            problem(
                &format!("report.gateways[{i}]"),
                format!(
                    "`{g}` must be a URL starting with {scheme}:// ({})",
                    tls_said(scheme)
                ),
            );
        }
    }
    cfg.gateways = raw.report.gateways;
    if let Some(ms) = raw.report.interval_ms {
        if !(50..=60_000).contains(&ms) {
            problem(
                "report.interval_ms",
                format!("{ms} is out of range 50..=60000"),
            );
        } else {
            cfg.report_interval = Duration::from_millis(ms);
        }
    }
    cfg.state_dir = match raw.state.dir {
        Some(d) => base.join(d),
        None => PathBuf::from("/var/lib/edgewise/agent"),
    };
    if problems.is_empty() {
        Ok(cfg)
    } else {
        Err(Diagnostics(problems))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<AgentConfig, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, text).map_err(|e| e.to_string())?;
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        AgentConfig::load(&path, &env).map_err(|d| {
            d.to_string()
                .replace(&format!("{}/", dir.path().display()), "")
        })
    }

    #[test]
    fn reports_every_problem_with_its_position() {
        let err = load(
            "[server]\nlisten = \"nowhere\"\noperators = [\"ops\", \"ops team\"]\n\n[report]\ninterval_ms = 5\ngateways = [\"127.0.0.1:1\"]\n\n[tls]\nplaintext = true\n",
            &[],
        )
        .err();
        assert_eq!(
            err.as_deref(),
            Some(
                "agent.toml:2:10: server.listen: `nowhere` is not an address like 127.0.0.1:7300 (invalid socket address syntax)\n\
                 agent.toml:3:21: server.operators[1]: `ops team` is not a tenant name\n\
                 agent.toml:7:13: report.gateways[0]: `127.0.0.1:1` must be a URL starting with http:// (tls.plaintext = true)\n\
                 agent.toml:6:15: report.interval_ms: 5 is out of range 50..=60000"
            )
        );
    }

    #[test]
    fn a_bad_memory_budget_is_refused_with_its_position() {
        for (budget, says) in [
            (
                "\"lots\"",
                "agent.toml:2:17: models.memory_budget: `lots` is not a size",
            ),
            (
                "0",
                "agent.toml:2:17: models.memory_budget: must be more than 0",
            ),
            (
                "\"64 TiB\"",
                "agent.toml:2:17: models.memory_budget: 64.0 TiB is more than this machine's memory",
            ),
            (
                "\"0%\"",
                "agent.toml:2:17: models.memory_budget: 0% must be more than 0%",
            ),
            ("-5", "agent.toml:2:17: -5 must be more than 0"),
            (
                "true",
                "agent.toml:2:17: invalid type: boolean `true`, expected a size",
            ),
        ] {
            let err = load(
                &format!("[models]\nmemory_budget = {budget}\n[tls]\nplaintext = true\n"),
                &[],
            )
            .err()
            .unwrap_or_default();
            assert!(err.starts_with(says), "{budget}: {err}");
        }
        let cfg = load(
            "[models]\nmemory_budget = \"2 GiB\"\n[models.limits.m]\npin = true\nkeep_alive_ms = 1000\n[tls]\nplaintext = true\n",
            &[],
        );
        let cfg = cfg.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            cfg.memory.budget,
            Some(crate::budget::Budget::Bytes(2 << 30))
        );
        let m = cfg.limits.get("m").copied().unwrap_or_default();
        assert!(m.pin);
        assert_eq!(m.keep_alive, Some(Duration::from_millis(1000)));
    }

    #[test]
    fn unknown_keys_and_wrong_types_point_at_the_file() {
        let err = load("[runtime]\nintra_op_thread = 2\n", &[])
            .err()
            .unwrap_or_default();
        assert!(
            err.starts_with("agent.toml:2:1: unknown field `intra_op_thread`"),
            "{err}"
        );
        let err = load("[runtime]\nintra_op_threads = \"two\"\n", &[])
            .err()
            .unwrap_or_default();
        assert!(
            err.starts_with("agent.toml:2:20: invalid type: string \"two\""),
            "{err}"
        );
    }

    #[test]
    fn environment_overrides_the_file_and_is_named_in_errors() -> Result<(), String> {
        let cfg = load(
            "[report]\ninterval_ms = 1000\n[tls]\nplaintext = true\n",
            &[
                ("EDGEWISE_REPORT__INTERVAL_MS", "250"),
                ("EDGEWISE_UNRELATED", "x"),
            ],
        )?;
        assert_eq!(cfg.report_interval, Duration::from_millis(250));
        let err = load(
            "[tls]\nplaintext = true\n",
            &[("EDGEWISE_REPORT__INTERVAL_MS", "1")],
        )
        .err();
        assert_eq!(
            err.as_deref(),
            Some(
                "agent.toml: report.interval_ms (from EDGEWISE_REPORT__INTERVAL_MS): 1 is out of range 50..=60000"
            )
        );
        Ok(())
    }
}
