//! The agent: in process and as the real binary, with the tiny fixtures and the real models.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod capacity;
mod decoder_batch;
mod encode;
mod failures;
mod generate;
mod models_import;
mod process;
mod real_models;
mod residency;
