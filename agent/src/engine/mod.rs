//! Running ONNX models: decoder LMs with a K/V cache bound in place, and encoders
//! (embed / classify).
//!
//! Owns ONNX Runtime sessions and tensors. Calls here block (ONNX Runtime runs on the
//! calling thread), so async code reaches them through `spawn_blocking`. Nothing here knows
//! gRPC, queues or deadlines.

pub mod decoder;
pub mod encoder;
pub mod kv;
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

/// A session with full graph optimisation and the configured intra-op threads.
pub fn open_session(rt: &Runtime, model: &Path, intra_threads: usize) -> Result<Session> {
    let session = Session::builder(&rt.env)?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(|e| EngineError(e.to_string()))?
        .with_intra_threads(intra_threads)
        .map_err(|e| EngineError(e.to_string()))?
        // failures come back as errors and are logged by the agent, once, with context
        .with_log_level(ort::logging::LogLevel::Fatal)
        .map_err(|e| EngineError(e.to_string()))?
        .commit_from_file(model)?;
    Ok(session)
}
