//! The whole fleet end to end, the installer, the operator CLI and the fuzz corpus.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod deploy;
mod e2e;
mod edgewise_cli;
mod fuzz_corpus;
