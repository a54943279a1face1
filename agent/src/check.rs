//! `edgewise-agent models check`: load every model folder, run one smoke inference, report.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::batch::BatchConfig;
use crate::models::manifest::Manifest;
use crate::models::{LoadedModel, discover};
use crate::runtime::Runtime;

/// Whether a model folder loaded and answered its smoke inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckState {
    Ready,
    Failed,
}

impl CheckState {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckState::Ready => "ready",
            CheckState::Failed => "failed",
        }
    }
}

#[derive(Debug, Serialize)]
pub struct CheckResult {
    pub folder: String,
    pub name: String,
    pub task: String,
    pub quantization: String,
    pub state: CheckState,
    pub reason: String,
    pub load_ms: f64,
    pub smoke_ms: f64,
    /// The model's files (`model.onnx` and its external data).
    pub size_bytes: u64,
    /// What loading it and its smoke run added to this process's resident memory (the
    /// figure an agent reports; exact for the first model a process loads).
    pub resident_bytes: u64,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

/// Checks every model folder under `dir`; never stops at a failure.
/// `mapped`: load from mapped copies kept there (written by the first check), as agents do.
pub fn check_dir(
    dir: &Path,
    rt: &Runtime,
    intra_threads: usize,
    mapped: Option<&Path>,
) -> std::io::Result<Vec<CheckResult>> {
    let (folders, _) = discover(dir, &[])?;
    Ok(folders
        .iter()
        .map(|f| check_folder(f, rt, intra_threads, mapped))
        .collect())
}

/// Loads one model folder and runs its smoke inference.
pub fn check_folder(
    folder: &Path,
    rt: &Runtime,
    intra_threads: usize,
    mapped: Option<&Path>,
) -> CheckResult {
    let folder_name = folder
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    let mut r = CheckResult {
        folder: folder.display().to_string(),
        name: folder_name,
        task: String::new(),
        quantization: String::new(),
        state: CheckState::Failed,
        reason: String::new(),
        load_ms: 0.0,
        smoke_ms: 0.0,
        size_bytes: 0,
        resident_bytes: 0,
    };
    let manifest = match Manifest::load(&folder.join("model.toml")) {
        Ok(m) => m,
        Err(d) => {
            r.reason = format!("invalid manifest: {d}");
            return r;
        }
    };
    r.name = manifest.name.clone();
    r.task = manifest.task().to_string();
    r.quantization = manifest.quantization.clone();
    // a check holds one short sequence at a time: the small default budget is plenty
    let before = crate::hardware::resident_bytes();
    match LoadedModel::load(
        folder,
        manifest,
        rt,
        intra_threads,
        BatchConfig::default(),
        mapped,
    ) {
        Err(e) => r.reason = e,
        Ok(m) => {
            r.load_ms = ms(m.load_time);
            r.size_bytes = m.size_bytes;
            match m.smoke() {
                Ok(t) => {
                    r.smoke_ms = ms(t.latency);
                    r.state = CheckState::Ready;
                    r.resident_bytes = crate::hardware::resident_bytes().saturating_sub(before);
                }
                Err(e) => r.reason = e,
            }
        }
    }
    r
}

/// A table for people.
pub fn render_table(results: &[CheckResult]) -> String {
    let mut out = format!(
        "{:<24} {:<9} {:<6} {:<7} {:>9} {:>9}  {}\n",
        "MODEL", "TASK", "QUANT", "STATE", "LOAD ms", "SMOKE ms", "REASON"
    );
    for r in results {
        out.push_str(&format!(
            "{:<24} {:<9} {:<6} {:<7} {:>9.1} {:>9.1}  {}\n",
            r.name,
            r.task,
            r.quantization,
            r.state.as_str(),
            r.load_ms,
            r.smoke_ms,
            r.reason
        ));
    }
    out
}
