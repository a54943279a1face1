//! Evaluation: answer committed item sets with each local model of the real fleet
//! (`run`), then measure routing on the outcomes (`analysis`): signals, cascades, the
//! calibrated threshold written into a policy (`calibrate`), and the routing report.

pub mod analysis;
pub mod bounds;
mod command;
pub mod items;
mod policy_edit;
mod report;
pub mod run;
pub mod train;

use std::path::PathBuf;

pub use command::{EvalCommand, main};
pub use policy_edit::write_adequacy;
pub use report::{render, render_calibration, render_held_out, render_learned};

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("cannot read {}: {}", .0.display(), .1)]
    Read(PathBuf, std::io::Error),
    #[error("cannot write {}: {}", .0.display(), .1)]
    Write(PathBuf, std::io::Error),
    #[error("{}:{line}: {message}", .file.display())]
    Item {
        file: PathBuf,
        line: usize,
        message: String,
    },
    #[error("the gateway served `{served}` when the evaluation pinned `{wanted}`")]
    Served { wanted: String, served: String },
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Cli(#[from] crate::client::CliError),
}
