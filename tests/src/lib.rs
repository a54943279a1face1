//! The test harness shared by the integration and end-to-end tests in `tests/tests/`: real
//! agents and gateways (in process or as the real binaries), clients, an OTLP collector, and
//! waiting on conditions with a deadline.
//!
//! `mock_provider` stands in for a hosted closed API, the one thing that cannot run here. It
//! speaks the real wire protocols (OpenAI chat completions with SSE, OpenAI embeddings,
//! Anthropic Messages with SSE) over real HTTPS, with a certificate from its own test CA.
// a test harness: a failed set-up step is a failed test
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod harness;
pub mod mock_provider;
pub mod otlp;
pub mod postgres;
