//! The request contract both fronts read the same way: the caller's deadline (`grpc-timeout`
//! or the HTTP front's `x-edgewise-timeout-ms`, capped at `contract::MAX_DEADLINE`, malformed
//! → INVALID_ARGUMENT / 400 naming the header) and headers that must not be repeated. A hint
//! sent twice fails closed: the strictest data class wins, and any other repeated header is
//! refused by name — a proxy that appends its own value never loosens a caller's.

use std::time::{Duration, Instant};

use edgewise_proto::contract;

use crate::error::GatewayError;
use crate::routing::DataClass;

/// tonic's server enforces `grpc-timeout` too, and answers CANCELLED "Timeout expired" when
/// its timer wins. The gateway's own deadline ends this much earlier, so a caller whose
/// deadline passes is told DEADLINE_EXCEEDED by the gateway, with what it was waiting for.
const DEADLINE_MARGIN: Duration = Duration::from_millis(5);

fn invalid(m: String) -> GatewayError {
    GatewayError::InvalidRequest(m)
}

/// When a request of `timeout` from now must be answered (never overflows: `timeout` is
/// capped at a day).
fn at(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout.min(contract::MAX_DEADLINE))
        .unwrap_or(now)
}

/// The gRPC front's deadline, from `grpc-timeout`.
pub fn grpc_deadline(
    metadata: &tonic::metadata::MetadataMap,
) -> Result<Option<Instant>, GatewayError> {
    once(metadata, "grpc-timeout")?;
    Ok(edgewise_proto::grpc_timeout(metadata)
        .map_err(invalid)?
        .map(|t| at(t.saturating_sub(DEADLINE_MARGIN))))
}

/// The HTTP front's deadline, from `x-edgewise-timeout-ms`.
pub fn http_deadline(headers: &axum::http::HeaderMap) -> Result<Option<Instant>, GatewayError> {
    const NAME: &str = "x-edgewise-timeout-ms";
    let Some(v) = single(headers, NAME)? else {
        return Ok(None);
    };
    contract::deadline_from_millis(v)
        .map(|t| Some(at(t)))
        .map_err(|e| invalid(format!("header {NAME}: {e}")))
}

/// Whether gRPC metadata carries `name` more than once.
pub fn sent_twice(metadata: &tonic::metadata::MetadataMap, name: &str) -> bool {
    metadata.get_all(name).iter().nth(1).is_some()
}

/// Refuses gRPC metadata that carries `name` more than once.
pub fn once(metadata: &tonic::metadata::MetadataMap, name: &str) -> Result<(), GatewayError> {
    if sent_twice(metadata, name) {
        return Err(repeated(name));
    }
    Ok(())
}

fn repeated(name: &str) -> GatewayError {
    invalid(format!(
        "header {name} was sent more than once; send it once"
    ))
}

/// A header's one value (trimmed), refusing one sent twice or not text.
pub fn single<'a>(
    headers: &'a axum::http::HeaderMap,
    name: &str,
) -> Result<Option<&'a str>, GatewayError> {
    let mut values = headers.get_all(name).iter();
    let Some(v) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(repeated(name));
    }
    v.to_str()
        .map(|s| Some(s.trim()))
        .map_err(|_| invalid(format!("header {name} is not text")))
}

/// The data class a header names; sent more than once (each value, or each comma-separated
/// item, a class), the strictest of them.
pub fn data_class_header(
    headers: &axum::http::HeaderMap,
    name: &str,
) -> Result<Option<DataClass>, GatewayError> {
    let mut strictest: Option<DataClass> = None;
    for v in headers.get_all(name) {
        let text = v
            .to_str()
            .map_err(|_| invalid(format!("header {name} is not text")))?;
        for item in text.split(',') {
            let item = item.trim();
            let class = DataClass::parse(item).ok_or_else(|| {
                invalid(format!(
                    "header {name} `{}` is not one of public, internal, confidential, restricted",
                    item.chars().take(32).collect::<String>()
                ))
            })?;
            strictest = strictest.max(Some(class));
        }
    }
    Ok(strictest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> axum::http::HeaderMap {
        let mut h = axum::http::HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, axum::http::HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn deadlines_are_capped_and_malformed_ones_name_the_header() {
        let day = contract::MAX_DEADLINE;
        for absurd in [
            "99999999999999999",
            "18446744073709551615",
            "360000000000000",
        ] {
            let d = http_deadline(&headers(&[("x-edgewise-timeout-ms", absurd)]))
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or_else(|| panic!("no deadline"));
            let left = d.saturating_duration_since(Instant::now());
            assert!(
                left <= day && left > day - Duration::from_secs(5),
                "{absurd}: {left:?}"
            );
        }
        for bad in ["-1", "0", "soon", "1.5"] {
            let e = http_deadline(&headers(&[("x-edgewise-timeout-ms", bad)]))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                e.starts_with("header x-edgewise-timeout-ms: "),
                "{bad}: {e}"
            );
        }
        let twice = headers(&[
            ("x-edgewise-timeout-ms", "100"),
            ("x-edgewise-timeout-ms", "9"),
        ]);
        assert!(
            http_deadline(&twice)
                .err()
                .is_some_and(|e| e.to_string().contains("more than once"))
        );
        assert_eq!(http_deadline(&headers(&[])).ok(), Some(None));
        let mut m = tonic::metadata::MetadataMap::new();
        m.insert(
            "grpc-timeout",
            "99999999H".parse().unwrap_or_else(|_| panic!()),
        );
        assert!(grpc_deadline(&m).is_ok_and(|d| d.is_some()));
        m.append("grpc-timeout", "1S".parse().unwrap_or_else(|_| panic!()));
        assert!(grpc_deadline(&m).is_err());
    }

    #[test]
    fn a_repeated_data_class_fails_closed() {
        let name = "x-edgewise-data-class";
        let h = headers(&[(name, "public"), (name, "confidential")]);
        assert_eq!(
            data_class_header(&h, name).ok(),
            Some(Some(DataClass::Confidential))
        );
        let h = headers(&[(name, "restricted, public")]);
        assert_eq!(
            data_class_header(&h, name).ok(),
            Some(Some(DataClass::Restricted))
        );
        let h = headers(&[(name, "public"), (name, "secret")]);
        assert!(
            data_class_header(&h, name)
                .err()
                .is_some_and(|e| e.to_string().contains("`secret` is not one of"))
        );
        assert_eq!(data_class_header(&headers(&[]), name).ok(), Some(None));
    }
}
