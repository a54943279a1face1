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

impl GatewayGenerateChunk {
    /// The stream's first message: the routing decision.
    pub fn of_decision(decision: Decision) -> Self {
        Self {
            chunk: None,
            decision: Some(decision),
        }
    }

    /// Generated text (or the final chunk), as the agent or a hosted API sent it.
    pub fn of_chunk(chunk: GenerateChunk) -> Self {
        Self {
            chunk: Some(chunk),
            decision: None,
        }
    }
}

/// The encoded descriptor set of every `edgewise.v1` file, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/edgewise_descriptor.bin"));

/// The limits a request must meet wherever it arrives. The gateway checks them before
/// routing and the agent again on receipt, with the same message, so nothing the gateway
/// admits is refused by an agent for breaking them.
pub mod contract {
    use std::time::Duration;

    /// Most stop sequences a generation may name, and the longest, in bytes.
    pub const MAX_STOP_SEQUENCES: usize = 8;
    pub const MAX_STOP_BYTES: usize = 64;
    /// The longest deadline honoured; a longer `grpc-timeout` is capped to it.
    pub const MAX_DEADLINE: Duration = Duration::from_secs(24 * 3600);

    /// A deadline in whole milliseconds (the HTTP front's `x-edgewise-timeout-ms`): digits only,
    /// at least 1; a longer one than [`MAX_DEADLINE`] (however many digits) is capped to it,
    /// as `grpc-timeout` is. Negative, fractional, empty or non-numeric values are errors.
    pub fn deadline_from_millis(raw: &str) -> Result<Duration, String> {
        let v = raw.trim();
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) || v.bytes().all(|b| b == b'0') {
            return Err(format!(
                "`{}` is not a whole number of milliseconds of at least 1",
                v.chars().take(32).collect::<String>()
            ));
        }
        // more digits than a u64 holds is still only "longer than the cap"
        let ms = v.parse::<u64>().unwrap_or(u64::MAX);
        Ok(Duration::from_millis(ms).min(MAX_DEADLINE))
    }

    /// Stop sequences within the limits, or why not.
    pub fn check_stops(stop: &[String]) -> Result<(), String> {
        if stop.len() > MAX_STOP_SEQUENCES
            || stop
                .iter()
                .any(|s| s.is_empty() || s.len() > MAX_STOP_BYTES)
        {
            return Err(format!(
                "stop: at most {MAX_STOP_SEQUENCES} sequences of 1 to {MAX_STOP_BYTES} bytes (got {}{})",
                stop.len(),
                stop.iter()
                    .map(String::len)
                    .max()
                    .map(|m| format!(", the longest {m} bytes"))
                    .unwrap_or_default()
            ));
        }
        Ok(())
    }
}

/// The caller's deadline from the `grpc-timeout` header (`500m`, `2S`, ...), which the agent
/// and the gateway both honour for streams (tonic enforces it only up to the first message),
/// capped at [`contract::MAX_DEADLINE`]. A header that is not a gRPC timeout is an error
/// (never silently no deadline).
pub fn grpc_timeout(
    metadata: &tonic::metadata::MetadataMap,
) -> Result<Option<std::time::Duration>, String> {
    use std::time::Duration;
    let Some(raw) = metadata.get("grpc-timeout") else {
        return Ok(None);
    };
    let bad = || {
        format!(
            "grpc-timeout `{}` is not a gRPC timeout (up to 8 digits and a unit H, M, S, m, u or n)",
            String::from_utf8_lossy(raw.as_bytes())
                .chars()
                .take(32)
                .collect::<String>()
        )
    };
    let v = raw.to_str().map_err(|_| bad())?;
    let Some(split) = v.len().checked_sub(1) else {
        return Err(bad());
    };
    let (num, unit) = v.split_at(split);
    if num.is_empty() || num.len() > 8 || !num.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = num.parse().map_err(|_| bad())?;
    let t = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return Err(bad()),
    };
    Ok(Some(t.min(contract::MAX_DEADLINE)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn millisecond_deadlines_are_capped_and_garbage_is_refused() {
        use super::contract::{MAX_DEADLINE, deadline_from_millis};
        use std::time::Duration;
        assert_eq!(deadline_from_millis("250"), Ok(Duration::from_millis(250)));
        assert_eq!(deadline_from_millis(" 10 "), Ok(Duration::from_millis(10)));
        for absurd in [
            "99999999999999999",
            "18446744073709551615",
            "360000000000000",
            "123456789012345678901234567890",
        ] {
            assert_eq!(deadline_from_millis(absurd), Ok(MAX_DEADLINE), "{absurd}");
        }
        for bad in ["", "0", "000", "-5", "1.5", "1e3", "soon", "+7", "0x10"] {
            let e = deadline_from_millis(bad).unwrap_err();
            assert!(
                e.contains("not a whole number of milliseconds"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn parses_grpc_timeouts() {
        let mut m = tonic::metadata::MetadataMap::new();
        m.insert(
            "grpc-timeout",
            tonic::metadata::MetadataValue::from_static("1500m"),
        );
        assert_eq!(
            super::grpc_timeout(&m),
            Ok(Some(std::time::Duration::from_millis(1500)))
        );
        m.insert(
            "grpc-timeout",
            tonic::metadata::MetadataValue::from_static("2S"),
        );
        assert_eq!(
            super::grpc_timeout(&m),
            Ok(Some(std::time::Duration::from_secs(2)))
        );
        m.insert(
            "grpc-timeout",
            tonic::metadata::MetadataValue::from_static("x"),
        );
        assert!(
            super::grpc_timeout(&m)
                .unwrap_err()
                .contains("`x` is not a gRPC timeout")
        );
        // a week is capped at a day
        m.insert(
            "grpc-timeout",
            tonic::metadata::MetadataValue::from_static("168H"),
        );
        assert_eq!(
            super::grpc_timeout(&m),
            Ok(Some(super::contract::MAX_DEADLINE))
        );
        assert_eq!(
            super::grpc_timeout(&tonic::metadata::MetadataMap::new()),
            Ok(None)
        );
        m.insert(
            "grpc-timeout",
            tonic::metadata::MetadataValue::from_static("99999999H"),
        );
        assert_eq!(
            super::grpc_timeout(&m),
            Ok(Some(super::contract::MAX_DEADLINE))
        );
        assert!(
            super::contract::check_stops(&vec!["x".into(); 9])
                .unwrap_err()
                .contains("at most 8")
        );
        assert!(super::contract::check_stops(&["x".repeat(65)]).is_err());
        assert!(super::contract::check_stops(&["\n".into()]).is_ok());
    }
}
