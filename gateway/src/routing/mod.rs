//! Routing: which model on which node (or which provider) serves a request.
//!
//! `decide` is pure: it takes a snapshot and returns a decision; it must not do I/O, read a
//! clock, or hold locks.

mod adequacy;
pub mod decide;
mod fallback;
mod index;
pub mod inference;
mod listing;
mod trace;
pub mod types;

pub use adequacy::Slow;
pub use decide::{Decision, Inputs, Refusal, Rule, Target, decide};
pub use index::FleetSnapshot;
pub use inference::{Category, Detection, Findings, Floors, InferenceMode};
pub use listing::{Detail, Listed, Listing};
pub use trace::{Candidate, Exclusion, Who, Why};
pub use types::*;

#[cfg(test)]
mod tests;
