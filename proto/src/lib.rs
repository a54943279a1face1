//! The Edgewise gRPC contract, package `edgewise.v1`.
//!
//! This crate owns the wire types only: generated code plus a few conversions that every
//! side needs. It must not hold behaviour of the agent or the gateway.

#![allow(clippy::doc_markdown)]

/// `edgewise.v1`: the agent's inference service, the fleet report stream and shared types.
pub mod v1 {
    tonic::include_proto!("edgewise.v1");
}

pub use v1::*;
