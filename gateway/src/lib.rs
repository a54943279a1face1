//! Edgewise gateway: receives capacity reports from agents, routes each request to the
//! smallest adequate local model, and falls back to a hosted API only where policy permits.
//!
//! So far: the validated policy files (`policy`) and the pure routing decision (`routing`).
//! The fleet registry, the gRPC service and the providers come with the rest of the gateway.

pub mod policy;
pub mod routing;
