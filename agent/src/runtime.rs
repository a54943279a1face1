//! ONNX Runtime: finding the shared library and owning the one environment of the process.
//!
//! The library is found by, in order: the config's `runtime.onnxruntime_library`, the
//! `ORT_DYLIB_PATH` environment variable, the checkout's `build/onnxruntime/` (what
//! `make onnxruntime` writes) and `/usr/lib/edgewise/` (what `deploy/install.sh` writes).
//! ONNX Runtime allows one environment per process, so it lives in a process-wide cell.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;

/// The file `make onnxruntime` extracts from the pinned wheel.
pub const LIBRARY_FILE: &str = "libonnxruntime.so.1.31.1";

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "ONNX Runtime library not found. Looked in:\n{searched}\nRun `make onnxruntime` in the Edgewise checkout, \
         install it with deploy/install.sh, or set runtime.onnxruntime_library in agent.toml (or ORT_DYLIB_PATH)."
    )]
    NotFound { searched: String },
    #[error("cannot load ONNX Runtime from {path}: {message}")]
    Load { path: PathBuf, message: String },
    #[error("ONNX Runtime was already initialised from {0}; one library per process")]
    Conflict(PathBuf),
}

/// The process's ONNX Runtime environment and the library it was loaded from.
pub struct Runtime {
    pub env: Environment,
    pub library: PathBuf,
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();
static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The candidate places, in lookup order, each with where it came from.
pub fn candidates(configured: Option<&Path>) -> Vec<(String, Option<PathBuf>)> {
    let env = std::env::var_os("ORT_DYLIB_PATH")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let checkout = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("build")
        .join("onnxruntime")
        .join(LIBRARY_FILE);
    vec![
        (
            "runtime.onnxruntime_library".into(),
            configured.map(Path::to_path_buf),
        ),
        ("ORT_DYLIB_PATH".into(), env),
        (
            "build/onnxruntime in the working directory".into(),
            Some(Path::new("build/onnxruntime").join(LIBRARY_FILE)),
        ),
        ("build/onnxruntime in the checkout".into(), Some(checkout)),
        (
            "system install".into(),
            Some(Path::new("/usr/lib/edgewise").join(LIBRARY_FILE)),
        ),
    ]
}

/// The library to load: the first candidate that is set. An explicitly configured path that
/// does not exist is an error, not a reason to fall through to another library.
pub fn find_library(configured: Option<&Path>) -> Result<PathBuf, RuntimeError> {
    let mut searched = String::new();
    for (i, (origin, path)) in candidates(configured).into_iter().enumerate() {
        match path {
            None => searched.push_str(&format!("  - {origin}: not set\n")),
            Some(p) if p.is_file() => return Ok(p),
            Some(p) => {
                searched.push_str(&format!("  - {origin}: {} (missing)\n", p.display()));
                if i < 2 {
                    // configured explicitly: stop here, with what was asked for named
                    return Err(RuntimeError::NotFound {
                        searched: searched.trim_end().to_string(),
                    });
                }
            }
        }
    }
    Err(RuntimeError::NotFound {
        searched: searched.trim_end().to_string(),
    })
}

/// Loads ONNX Runtime once per process (telemetry off) and returns it.
pub fn init(configured: Option<&Path>) -> Result<&'static Runtime, RuntimeError> {
    let _guard = INIT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let library = find_library(configured)?;
    let load_err = |message: String| RuntimeError::Load {
        path: library.clone(),
        message,
    };
    let env = ort::init_from(&library)
        .map_err(|e| load_err(e.to_string()))?
        .with_name("edgewise-agent")
        .with_telemetry(false)
        .build()
        .map_err(|e| load_err(e.to_string()))?;
    let _ = RUNTIME.set(Runtime {
        env,
        library: library.clone(),
    });
    RUNTIME.get().ok_or(RuntimeError::Conflict(library))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_path_that_is_missing_is_named() {
        let err = find_library(Some(Path::new("/nonexistent/libonnxruntime.so")))
            .err()
            .map(|e| e.to_string());
        let msg = err.unwrap_or_default();
        assert!(
            msg.contains("runtime.onnxruntime_library: /nonexistent/libonnxruntime.so (missing)"),
            "{msg}"
        );
        assert!(msg.contains("make onnxruntime"), "{msg}");
    }
}
