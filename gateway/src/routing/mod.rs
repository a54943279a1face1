//! Routing: which model on which node (or which provider) serves a request.
//!
//! `decide` is pure: it takes a snapshot and returns a decision; it must not do I/O, read a
//! clock, or hold locks.

mod adequacy;
pub mod decide;
mod fallback;
pub mod types;

pub use decide::{Decision, Exclusion, Inputs, Refusal, Target, decide};
pub use types::*;

#[cfg(test)]
mod tests;
