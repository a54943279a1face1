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

/// The encoded descriptor set of every `edgewise.v1` file, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/edgewise_descriptor.bin"));

/// The caller's deadline from the `grpc-timeout` header (`500m`, `2S`, ...), which the agent
/// and the gateway both honour for streams (tonic enforces it only up to the first message).
pub fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<std::time::Duration> {
    use std::time::Duration;
    let v = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (num, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_grpc_timeouts() {
        let mut m = tonic::metadata::MetadataMap::new();
        m.insert(
            "grpc-timeout",
            tonic::metadata::MetadataValue::from_static("1500m"),
        );
        assert_eq!(
            super::grpc_timeout(&m),
            Some(std::time::Duration::from_millis(1500))
        );
        m.insert(
            "grpc-timeout",
            tonic::metadata::MetadataValue::from_static("2S"),
        );
        assert_eq!(
            super::grpc_timeout(&m),
            Some(std::time::Duration::from_secs(2))
        );
        m.insert(
            "grpc-timeout",
            tonic::metadata::MetadataValue::from_static("x"),
        );
        assert_eq!(super::grpc_timeout(&m), None);
    }
}
