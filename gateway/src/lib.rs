//! Edgewise gateway: receives capacity reports from agents, routes each request to the
//! smallest adequate local model, and falls back to a hosted API only where policy permits.
//!
//! Not built yet: this crate holds the place in the workspace for the gateway issue, which
//! adds the policy files, the pure decision core, the fleet registry and the providers.

pub mod routing;
