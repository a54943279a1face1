//! Test support shared by the integration and end-to-end tests (the harness for agents and
//! gateways lives in tests/tests/common).
//!
//! `mock_provider` stands in for a hosted closed API, the one thing that cannot run here. It
//! speaks the real wire protocols (OpenAI chat completions with SSE, OpenAI embeddings,
//! Anthropic Messages with SSE) over real HTTPS, with a certificate from its own test CA.

pub mod mock_provider;
