//! Running ONNX models: decoder LMs with a K/V cache bound in place, and encoders
//! (embed / classify).
//!
//! Owns ONNX Runtime sessions and tensors. Calls here block (ONNX Runtime runs on the
//! calling thread), so async code reaches them through `spawn_blocking`. Nothing here knows
//! gRPC, queues or deadlines.

pub mod decoder;
pub mod encoder;
pub mod kv;
pub mod mapped;
pub mod sampling;
pub mod text;

use std::path::Path;

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;

use crate::runtime::Runtime;

/// Engine errors are strings from ONNX Runtime or shape checks; they name what failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct EngineError(pub String);

impl From<ort::Error> for EngineError {
    fn from(e: ort::Error) -> Self {
        EngineError(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, EngineError>;

/// A session with full graph optimisation and the configured intra-op threads. With
/// `mapped` (a directory for mapped copies, see `mapped.rs`), the model opens from its
/// mapped copy when there is one, and otherwise from its source while writing the copy.
pub fn open_session(
    rt: &Runtime,
    model: &Path,
    intra_threads: usize,
    mapped: Option<&Path>,
) -> Result<Session> {
    let builder = |level| -> Result<_> {
        Session::builder(&rt.env)?
            .with_optimization_level(level)
            .map_err(|e| EngineError(e.to_string()))?
            .with_intra_threads(intra_threads)
            .map_err(|e| EngineError(e.to_string()))?
            // failures come back as errors and are logged by the agent, once, with context
            .with_log_level(ort::logging::LogLevel::Fatal)
            .map_err(|e| EngineError(e.to_string()))
    };
    let Some(root) = mapped else {
        return Ok(builder(GraphOptimizationLevel::Level3)?.commit_from_file(model)?);
    };
    let dir = mapped::copy_dir(root, model, &rt.library);
    if mapped::refused_marker(&dir).exists() {
        return Ok(builder(GraphOptimizationLevel::Level3)?.commit_from_file(model)?);
    }
    if let Some(graph) = mapped::existing(&dir) {
        // already optimized and packed: nothing more to do at load
        match builder(GraphOptimizationLevel::Level3)?.commit_from_file(&graph) {
            Ok(s) => return Ok(s),
            Err(e) => {
                tracing::warn!(copy = %dir.display(), error = %e, "the mapped copy does not load; loading the source and writing it again");
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
    }
    let (tmp, graph, data) = match mapped::staging(&dir) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(copy = %dir.display(), error = %e, "cannot write a mapped copy; loading the source");
            return Ok(builder(GraphOptimizationLevel::Level3)?.commit_from_file(model)?);
        }
    };
    let fail = |e: ort::Error<_>| EngineError(e.to_string());
    let session = builder(GraphOptimizationLevel::Level3)?
        .with_optimized_model_path(&graph)
        .map_err(fail)?
        .with_config_entry(
            "session.optimized_model_external_initializers_file_name",
            data,
        )
        .map_err(fail)?
        .with_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes",
            "1024",
        )
        .map_err(fail)?
        .with_config_entry("session.save_external_prepacked_constant_initializers", "1")
        .map_err(fail)?
        .commit_from_file(model);
    let mut session = match session {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e.into());
        }
    };
    // kept only if it computes what its source does
    let checked = builder(GraphOptimizationLevel::Level3)
        .and_then(|mut b| Ok(b.commit_from_file(&graph)?))
        .map_err(|e| e.to_string())
        .and_then(|mut copy| mapped::same_outputs(&mut session, &mut copy));
    if let Err(why) = checked {
        tracing::warn!(model = %model.display(), reason = %why, "the mapped copy does not compute what its source does; loading from the source");
        let _ = std::fs::remove_dir_all(&tmp);
        let _ = std::fs::write(mapped::refused_marker(&dir), why);
        return Ok(session);
    }
    match mapped::publish(&tmp, &dir) {
        Ok(true) => {
            tracing::info!(copy = %dir.display(), "wrote the model's mapped copy: later loads map its packed weights");
            mapped::prune(root, &dir);
        }
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(copy = %dir.display(), error = %e, "could not keep the mapped copy");
            let _ = std::fs::remove_dir_all(&tmp);
        }
    }
    Ok(session)
}
