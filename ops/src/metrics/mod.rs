//! The Prometheus endpoint both daemons serve when `[metrics] listen` is set: `GET /metrics`
//! in the OpenMetrics text format, plain HTTP (bind it to a local or management address).
//! The same registry is pushed over OTLP when `[telemetry]` names a collector ([`otlp`]).

pub mod openmetrics;
pub mod otlp;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Body = http_body_util_full::Full;

mod http_body_util_full {
    //! A whole-buffer response body (what http-body-util's `Full` is), to avoid a dependency
    //! for twenty lines.
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use bytes::Bytes;
    use http_body::{Body, Frame};

    pub struct Full(Option<Bytes>);

    impl Full {
        pub fn new(b: impl Into<Bytes>) -> Self {
            Self(Some(b.into()))
        }
    }

    impl Body for Full {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.take().map(|b| Ok(Frame::data(b))))
        }

        fn is_end_stream(&self) -> bool {
            self.0.is_none()
        }
    }
}

fn respond(registry: &Registry, req: &Request<Incoming>) -> Response<Body> {
    let mut r = Response::new(Body::new(Bytes::new()));
    if req.uri().path() != "/metrics" {
        *r.status_mut() = StatusCode::NOT_FOUND;
        return r;
    }
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, registry).is_err() {
        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        return r;
    }
    let mut r = Response::new(Body::new(text));
    if let Ok(v) = CONTENT_TYPE.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

/// `[metrics]` in both daemons' config files: the endpoint is off unless `listen` is set.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    pub listen: Option<String>,
}

/// Validates `[metrics]`, placing problems in the file.
pub fn validate(
    raw: RawMetrics,
    at: &edgewise_diag::Layered<()>,
    problems: &mut Vec<edgewise_diag::Diagnostic>,
) -> Option<std::net::SocketAddr> {
    let listen = raw.listen?;
    match listen.parse() {
        Ok(a) => Some(a),
        Err(e) => {
            problems.push(at.problem(
                "metrics.listen",
                format!("`{listen}` is not an address like 127.0.0.1:9400 ({e})"),
            ));
            None
        }
    }
}

/// Binds `at` and serves `registry` there until `stop`; the address it got.
pub async fn start(
    at: std::net::SocketAddr,
    registry: Registry,
    stop: CancellationToken,
) -> std::io::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind(at).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(serve(listener, Arc::new(registry), stop));
    tracing::info!(addr = %bound, "metrics at http://{bound}/metrics");
    Ok(bound)
}

/// Serves `registry` on `listener` until `stop`.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>, stop: CancellationToken) {
    loop {
        let (tcp, _) = tokio::select! {
            () = stop.cancelled() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics endpoint: accept failed");
                    continue;
                }
            },
        };
        let registry = registry.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let r = respond(&registry, &req);
                async move { Ok::<_, Infallible>(r) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service);
            tokio::select! {
                _ = conn => {}
                () = stop.cancelled() => {}
            }
        });
    }
}

/// Latency buckets, seconds: 1 ms to about a minute, doubling.
pub fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 17)
}

/// The OTLP export's own figures for a metrics endpoint: spans dropped (queue full),
/// exported, and lost in failed exports; metric exports accepted and failed.
pub fn encode_counts(
    encoder: &mut prometheus_client::encoding::DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    let (exported, failed) = crate::telemetry::exported_spans();
    let (metric_exports, metric_failures) = otlp::exports();
    for (name, help, v) in [
        (
            "trace_spans_dropped",
            "Spans dropped because the export queue was full",
            crate::telemetry::dropped_spans(),
        ),
        (
            "trace_spans_exported",
            "Spans the OTLP collector accepted",
            exported,
        ),
        (
            "trace_spans_failed",
            "Spans lost in failed or timed-out exports",
            failed,
        ),
        (
            "metric_exports",
            "Metric exports the OTLP collector accepted",
            metric_exports,
        ),
        (
            "metric_export_failures",
            "Metric exports that failed or timed out",
            metric_failures,
        ),
    ] {
        encode_counter(encoder, (name, help, v))?;
    }
    Ok(())
}

/// One counter read at scrape time: (name, help, value).
pub fn encode_counter(
    encoder: &mut prometheus_client::encoding::DescriptorEncoder,
    (name, help, value): (&str, &str, u64),
) -> Result<(), std::fmt::Error> {
    use prometheus_client::encoding::EncodeMetric;
    let c = prometheus_client::metrics::counter::ConstCounter::new(value);
    c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)
}
