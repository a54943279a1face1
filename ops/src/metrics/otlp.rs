//! Metrics pushed over OTLP/gRPC, beside the Prometheus endpoint, when `[telemetry]` names a
//! collector.
//!
//! Every `export_interval` a task encodes the daemon's registry (as a scrape would), reads it
//! back ([`super::openmetrics`]) and sends the families as OTLP metrics: counters as monotonic
//! cumulative sums, gauges and info as gauges, histograms with their explicit bounds. The task
//! runs beside the request path and touches only the registry's own locks, the same ones a
//! scrape takes, so a slow or absent collector costs requests nothing; each export is bounded
//! by a timeout, failures are counted and logged at debug. One last export goes out on
//! shutdown.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, metric::Data, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use super::openmetrics::{Family, Kind, Labels, Sample, Value};
use crate::otlp::{EXPORT_TIMEOUT, OtlpConfig};

static EXPORTS: AtomicU64 = AtomicU64::new(0);
static FAILURES: AtomicU64 = AtomicU64::new(0);

/// Metric exports the collector accepted, and exports that failed or timed out.
pub fn exports() -> (u64, u64) {
    (
        EXPORTS.load(Ordering::Relaxed),
        FAILURES.load(Ordering::Relaxed),
    )
}

/// Who is exporting: the resource every export carries.
#[derive(Debug, Clone)]
pub struct Source {
    /// `service.name`: `edgewise-gateway` or `edgewise-agent`.
    pub service: &'static str,
    /// `service.instance.id`: the gateway's id or the node's.
    pub instance: String,
}

/// Starts exporting `registry` to the collector in `config` every `metrics_interval` until
/// `stop`, then once more.
pub fn spawn(
    source: Source,
    registry: Registry,
    config: &OtlpConfig,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(source, registry, config.clone(), stop))
}

async fn run(source: Source, registry: Registry, config: OtlpConfig, stop: CancellationToken) {
    let (endpoint, interval) = (config.endpoint.as_str(), config.metrics_interval);
    let channel = match crate::otlp::channel(&config) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, endpoint, "metric export disabled");
            return;
        }
    };
    let mut client = MetricsServiceClient::new(channel);
    let start = unix_nanos(SystemTime::now());
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate; nothing has happened yet
    tracing::info!(
        endpoint,
        every_ms = interval.as_millis() as u64,
        "exporting metrics over OTLP"
    );
    loop {
        let last = tokio::select! {
            _ = tick.tick() => false,
            () = stop.cancelled() => true,
        };
        match export(&mut client, &source, &registry, start).await {
            Ok(()) => {
                EXPORTS.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                FAILURES.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "metric export failed");
            }
        }
        if last {
            return;
        }
    }
}

async fn export(
    client: &mut MetricsServiceClient<tonic::transport::Channel>,
    source: &Source,
    registry: &Registry,
    start: u64,
) -> Result<(), String> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry)
        .map_err(|_| "the registry could not be encoded".to_string())?;
    let families = super::openmetrics::parse(&text).map_err(|e| format!("reading metrics: {e}"))?;
    let request = ExportMetricsServiceRequest {
        resource_metrics: vec![resource_metrics(
            source,
            to_otlp(&families, start, unix_nanos(SystemTime::now())),
        )],
    };
    let sent = tokio::time::timeout(EXPORT_TIMEOUT, client.export(request))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|s| format!("{}: {}", s.code(), s.message()))?;
    match sent.into_inner().partial_success {
        Some(p) if p.rejected_data_points > 0 => Err(format!(
            "the collector rejected {} data points: {}",
            p.rejected_data_points, p.error_message
        )),
        _ => Ok(()),
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn text(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_string())),
        }),
        ..Default::default()
    }
}

fn resource_metrics(source: &Source, metrics: Vec<Metric>) -> ResourceMetrics {
    ResourceMetrics {
        resource: Some(Resource {
            attributes: vec![
                text("service.name", source.service),
                text("service.instance.id", &source.instance),
                text("service.version", env!("CARGO_PKG_VERSION")),
            ],
            ..Default::default()
        }),
        scope_metrics: vec![ScopeMetrics {
            scope: Some(InstrumentationScope {
                name: "edgewise".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                ..Default::default()
            }),
            metrics,
            schema_url: String::new(),
        }],
        schema_url: String::new(),
    }
}

/// OpenMetrics units as UCUM, which OTLP uses; others pass through.
fn unit(u: &str) -> String {
    match u {
        "seconds" => "s",
        "bytes" => "By",
        "ratio" => "1",
        other => other,
    }
    .to_string()
}

fn attributes(labels: &[(String, String)]) -> Vec<KeyValue> {
    labels.iter().map(|(k, v)| text(k, v)).collect()
}

fn number(labels: &[(String, String)], value: Value, start: u64, now: u64) -> NumberDataPoint {
    NumberDataPoint {
        attributes: attributes(labels),
        start_time_unix_nano: start,
        time_unix_nano: now,
        value: Some(match value {
            Value::Int(i) => number_data_point::Value::AsInt(i),
            Value::Float(f) => number_data_point::Value::AsDouble(f),
        }),
        ..Default::default()
    }
}

/// When a series began: its `_created` sample (seconds) if written, else the export's start.
fn created(family: &Family, labels: &[(String, String)], start: u64) -> u64 {
    let name = format!("{}_created", family.name);
    family
        .samples
        .iter()
        .find(|s| s.name == name && s.labels == labels)
        .map(|s| (s.value.as_f64() * 1e9) as u64)
        .unwrap_or(start)
}

/// The families as OTLP metrics; `start` and `now` in Unix nanoseconds.
pub fn to_otlp(families: &[Family], start: u64, now: u64) -> Vec<Metric> {
    families
        .iter()
        .filter_map(|f| {
            let data = match f.kind {
                Kind::Counter => {
                    let total = format!("{}_total", f.name);
                    Data::Sum(Sum {
                        data_points: f
                            .samples
                            .iter()
                            .filter(|s| s.name == total)
                            .map(|s| number(&s.labels, s.value, created(f, &s.labels, start), now))
                            .collect(),
                        aggregation_temporality: AggregationTemporality::Cumulative as i32,
                        is_monotonic: true,
                    })
                }
                Kind::Gauge | Kind::Unknown | Kind::Info => Data::Gauge(Gauge {
                    data_points: f
                        .samples
                        .iter()
                        .map(|s| number(&s.labels, s.value, 0, now))
                        .collect(),
                }),
                Kind::Histogram => Data::Histogram(Histogram {
                    data_points: histogram_points(f, start, now),
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                }),
                Kind::Other(_) => return None,
            };
            Some(Metric {
                name: f.name.clone(),
                description: f.help.trim_end_matches('.').to_string(),
                unit: unit(&f.unit),
                data: Some(data),
                ..Default::default()
            })
        })
        .collect()
}

/// One point per label set (without `le`): OpenMetrics buckets are cumulative, OTLP's are
/// not, and OTLP leaves the `+Inf` bound implicit.
fn histogram_points(f: &Family, start: u64, now: u64) -> Vec<HistogramDataPoint> {
    let suffix = |s: &Sample| {
        s.name
            .strip_prefix(f.name.as_str())
            .unwrap_or("")
            .to_string()
    };
    let mut series: Vec<(Labels, Vec<&Sample>)> = Vec::new();
    for s in &f.samples {
        let key: Vec<_> = s
            .labels
            .iter()
            .filter(|(k, _)| k != "le")
            .cloned()
            .collect();
        match series.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(s),
            None => series.push((key, vec![s])),
        }
    }
    series
        .into_iter()
        .map(|(labels, samples)| {
            let mut buckets: Vec<(f64, u64)> = samples
                .iter()
                .filter(|s| suffix(s) == "_bucket")
                .filter_map(|s| {
                    let le = s.labels.iter().find(|(k, _)| k == "le")?.1.parse().ok()?;
                    Some((le, s.value.as_f64() as u64))
                })
                .collect();
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            let value = |name: &str| {
                samples
                    .iter()
                    .find(|s| suffix(s) == name)
                    .map(|s| s.value.as_f64())
            };
            let count = value("_count")
                .map(|c| c as u64)
                .or_else(|| buckets.last().map(|b| b.1))
                .unwrap_or(0);
            let mut bucket_counts = Vec::with_capacity(buckets.len() + 1);
            let mut explicit_bounds = Vec::with_capacity(buckets.len());
            let mut below = 0;
            for (le, cumulative) in buckets.iter().filter(|b| b.0.is_finite()) {
                explicit_bounds.push(*le);
                bucket_counts.push(cumulative.saturating_sub(below));
                below = *cumulative;
            }
            bucket_counts.push(count.saturating_sub(below));
            HistogramDataPoint {
                attributes: attributes(&labels),
                start_time_unix_nano: created(f, &labels, start),
                time_unix_nano: now,
                count,
                sum: value("_sum"),
                bucket_counts,
                explicit_bounds,
                ..Default::default()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        use prometheus_client::metrics::counter::Counter;
        use prometheus_client::metrics::family::Family as F;
        use prometheus_client::metrics::gauge::Gauge;
        use prometheus_client::metrics::histogram::Histogram;
        let mut r = Registry::with_prefix("edgewise_test");
        let requests = F::<Vec<(&'static str, String)>, Counter>::default();
        r.register("requests", "Requests, by route", requests.clone());
        requests
            .get_or_create(&vec![("route", "a".into())])
            .inc_by(3);
        requests.get_or_create(&vec![("route", "b".into())]).inc();
        let cost = Counter::<f64, AtomicU64>::default();
        r.register("cost_usd", "Cost", cost.clone());
        cost.inc_by(0.25);
        let depth = Gauge::<i64>::default();
        r.register("queue_depth", "Queued", depth.clone());
        depth.set(4);
        let latency =
            F::<Vec<(&'static str, String)>, Histogram, fn() -> Histogram>::new_with_constructor(
                || Histogram::new([0.1, 1.0]),
            );
        r.register_with_unit(
            "latency",
            "Latency",
            prometheus_client::registry::Unit::Seconds,
            latency.clone(),
        );
        let h = latency.get_or_create(&vec![("task", "generate".into())]);
        for v in [0.05, 0.06, 0.5, 7.0] {
            h.observe(v);
        }
        r
    }

    fn metrics() -> Vec<Metric> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry()).unwrap();
        to_otlp(&super::super::openmetrics::parse(&text).unwrap(), 100, 200)
    }

    fn find<'a>(m: &'a [Metric], name: &str) -> &'a Metric {
        m.iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no {name} in {m:#?}"))
    }

    #[test]
    fn counters_are_monotonic_cumulative_sums_per_label_set() {
        let m = metrics();
        let requests = find(&m, "edgewise_test_requests");
        assert_eq!(requests.description, "Requests, by route");
        let Some(Data::Sum(sum)) = &requests.data else {
            panic!("{requests:?}")
        };
        assert!(sum.is_monotonic);
        assert_eq!(
            sum.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        let mut points: Vec<_> = sum
            .data_points
            .iter()
            .map(|p| {
                assert_eq!((p.start_time_unix_nano, p.time_unix_nano), (100, 200));
                (format!("{:?}", p.attributes[0].value), p.value)
            })
            .collect();
        points.sort_by(|a, b| a.0.cmp(&b.0));
        assert!(points[0].0.contains("\"a\""));
        assert_eq!(points[0].1, Some(number_data_point::Value::AsInt(3)));
        assert_eq!(points[1].1, Some(number_data_point::Value::AsInt(1)));
        let Some(Data::Sum(cost)) = &find(&m, "edgewise_test_cost_usd").data else {
            panic!()
        };
        assert_eq!(
            cost.data_points[0].value,
            Some(number_data_point::Value::AsDouble(0.25))
        );
    }

    #[test]
    fn gauges_stay_gauges() {
        let m = metrics();
        let Some(Data::Gauge(g)) = &find(&m, "edgewise_test_queue_depth").data else {
            panic!()
        };
        assert_eq!(
            g.data_points[0].value,
            Some(number_data_point::Value::AsInt(4))
        );
    }

    #[test]
    fn histogram_buckets_become_per_bucket_counts_with_the_infinite_one_implicit() {
        let m = metrics();
        let latency = find(&m, "edgewise_test_latency_seconds");
        assert_eq!(latency.unit, "s");
        let Some(Data::Histogram(h)) = &latency.data else {
            panic!("{latency:?}")
        };
        assert_eq!(h.data_points.len(), 1);
        let p = &h.data_points[0];
        assert_eq!(p.attributes, vec![text("task", "generate")]);
        assert_eq!(p.explicit_bounds, [0.1, 1.0]);
        // 0.05, 0.06 | 0.5 | 7.0
        assert_eq!(p.bucket_counts, [2, 1, 1]);
        assert_eq!(p.count, 4);
        assert_eq!(p.sum, Some(7.61));
    }

    #[test]
    fn created_samples_set_the_start_and_unknown_kinds_are_left_out() {
        let text = "# TYPE c counter\nc_total 5\nc_created 1700000000.5\n# TYPE s stateset\ns{s=\"a\"} 1\n# EOF\n";
        let m = to_otlp(&super::super::openmetrics::parse(text).unwrap(), 1, 2);
        assert_eq!(m.len(), 1);
        let Some(Data::Sum(sum)) = &m[0].data else {
            panic!()
        };
        assert_eq!(
            sum.data_points[0].start_time_unix_nano,
            1_700_000_000_500_000_000
        );
    }

    /// An in-process collector: the export's request is what arrives, and a collector that
    /// refuses data points makes the export fail.
    #[tokio::test]
    async fn an_export_reaches_a_collector() {
        use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
            MetricsService, MetricsServiceServer,
        };
        use opentelemetry_proto::tonic::collector::metrics::v1::{
            ExportMetricsPartialSuccess, ExportMetricsServiceResponse,
        };
        #[derive(Clone)]
        struct Collector(tokio::sync::mpsc::Sender<ExportMetricsServiceRequest>, i64);
        #[tonic::async_trait]
        impl MetricsService for Collector {
            async fn export(
                &self,
                r: tonic::Request<ExportMetricsServiceRequest>,
            ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
                let _ = self.0.send(r.into_inner()).await;
                Ok(tonic::Response::new(ExportMetricsServiceResponse {
                    partial_success: (self.1 > 0).then(|| ExportMetricsPartialSuccess {
                        rejected_data_points: self.1,
                        error_message: "too old".into(),
                    }),
                }))
            }
        }
        for rejected in [0, 2] {
            let (tx, mut rx) = tokio::sync::mpsc::channel(4);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let server = tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(MetricsServiceServer::new(Collector(tx, rejected)))
                    .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
            );
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect_lazy();
            let source = Source {
                service: "edgewise-test",
                instance: "gw-1".into(),
            };
            let sent = export(
                &mut MetricsServiceClient::new(channel),
                &source,
                &registry(),
                1,
            )
            .await;
            let got = rx.recv().await.unwrap();
            let rm = &got.resource_metrics[0];
            let attrs = &rm.resource.as_ref().unwrap().attributes;
            assert!(attrs.contains(&text("service.name", "edgewise-test")));
            assert!(attrs.contains(&text("service.instance.id", "gw-1")));
            assert_eq!(rm.scope_metrics[0].metrics.len(), 4);
            match rejected {
                0 => assert_eq!(sent, Ok(())),
                _ => assert!(
                    sent.unwrap_err()
                        .contains("rejected 2 data points: too old")
                ),
            }
            server.abort();
        }
    }
}
