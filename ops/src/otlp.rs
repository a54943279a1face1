//! The OTLP collector both exports go to — spans (`telemetry`) and metrics
//! (`metrics::otlp`) — and the connection to it.

use std::time::Duration;

/// Where spans and metrics go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpConfig {
    /// The collector's OTLP/gRPC endpoint, e.g. `http://127.0.0.1:4317`, or `https://…` (the
    /// collector's certificate checked against the system's roots and `ca_file`).
    pub endpoint: String,
    /// A CA trusted for an `https://` collector besides the system's roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// Spans waiting for export at most; beyond, new spans are dropped and counted.
    pub queue: usize,
    /// How long spans may wait before a batch goes out.
    pub export_interval: Duration,
    /// How often the metrics go out.
    pub metrics_interval: Duration,
}

/// How long one export (spans or metrics) may take.
pub(crate) const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// A channel to the collector, connecting on first use: plain for `http://`, TLS (system
/// roots and `ca_file`) for `https://`. Needs a runtime.
pub fn channel(config: &OtlpConfig) -> Result<tonic::transport::Channel, String> {
    let endpoint = tonic::transport::Endpoint::from_shared(config.endpoint.clone())
        .map_err(|e| format!("`{}`: {e}", config.endpoint))?
        .connect_timeout(EXPORT_TIMEOUT)
        .timeout(EXPORT_TIMEOUT);
    if !config.endpoint.starts_with("https://") {
        return Ok(endpoint.connect_lazy());
    }
    let mut tls =
        edgewise_tls::public_client_config(config.ca_file.as_deref(), "the OTLP collector")?;
    tls.alpn_protocols = vec![b"h2".to_vec()];
    Ok(edgewise_tls::net::channel_lazy(
        endpoint,
        edgewise_tls::net::fixed(std::sync::Arc::new(tls)),
    ))
}

/// `[telemetry]` in both daemons' config files.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    /// An OTLP/gRPC collector, e.g. `http://127.0.0.1:4317`; unset: no traces or metrics
    /// exported.
    pub otlp_endpoint: Option<String>,
    /// For an `https://` collector: a CA trusted besides the system's roots.
    pub ca_file: Option<std::path::PathBuf>,
    pub queue: Option<usize>,
    pub export_interval_ms: Option<u64>,
    pub metrics_interval_ms: Option<u64>,
}

/// Validates `[telemetry]`, placing problems in the file.
pub fn validate(
    raw: RawTelemetry,
    at: &edgewise_diag::Layered<()>,
    problems: &mut Vec<edgewise_diag::Diagnostic>,
) -> Option<OtlpConfig> {
    let Some(endpoint) = raw.otlp_endpoint else {
        if raw.ca_file.is_some() {
            problems.push(at.problem(
                "telemetry.ca_file",
                "is set but otlp_endpoint is not (nothing is exported)".to_string(),
            ));
        }
        return None;
    };
    let tls = endpoint.starts_with("https://");
    if !(tls || endpoint.starts_with("http://")) {
        problems.push(at.problem(
            "telemetry.otlp_endpoint",
            format!(
                "`{endpoint}` must be a URL like http://127.0.0.1:4317 or https://collector:4317"
            ),
        ));
        return None;
    }
    let ca_file = raw.ca_file.map(|p| at.base().join(p));
    match &ca_file {
        Some(_) if !tls => problems.push(at.problem(
            "telemetry.ca_file",
            format!("applies to https:// collectors; `{endpoint}` is plain"),
        )),
        Some(p) if !p.is_file() => problems.push(at.problem(
            "telemetry.ca_file",
            format!("{} is not a file", p.display()),
        )),
        _ => {}
    }
    let queue = raw.queue.unwrap_or(2048);
    if !(1..=1_000_000).contains(&queue) {
        problems.push(at.problem(
            "telemetry.queue",
            format!("{queue} is out of range 1..=1000000"),
        ));
    }
    let ms = raw.export_interval_ms.unwrap_or(1000);
    if !(10..=60_000).contains(&ms) {
        problems.push(at.problem(
            "telemetry.export_interval_ms",
            format!("{ms} is out of range 10..=60000"),
        ));
    }
    let metrics_ms = raw.metrics_interval_ms.unwrap_or(10_000);
    if !(100..=3_600_000).contains(&metrics_ms) {
        problems.push(at.problem(
            "telemetry.metrics_interval_ms",
            format!("{metrics_ms} is out of range 100..=3600000"),
        ));
    }
    Some(OtlpConfig {
        endpoint,
        ca_file,
        queue,
        export_interval: Duration::from_millis(ms),
        metrics_interval: Duration::from_millis(metrics_ms),
    })
}
