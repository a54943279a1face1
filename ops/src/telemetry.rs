//! OpenTelemetry traces, exported over OTLP/gRPC when a config names a collector (off by
//! default; the collector and its connection are in [`crate::otlp`], and the same collector
//! receives the metrics, see `metrics::otlp`). Spans come from `tracing` through tracing-opentelemetry; W3C trace context
//! travels in gRPC metadata (`traceparent`), so a request's gateway and agent spans share one
//! trace id.
//!
//! A slow or absent collector never slows requests: a finished span is handed to a bounded
//! queue without waiting; when the queue is full the span is dropped and counted
//! ([`dropped_spans`]). One exporter thread drains the queue in batches, each export bounded
//! by a timeout.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter, SpanProcessor};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::otlp::{EXPORT_TIMEOUT, OtlpConfig, channel};

static DROPPED: AtomicU64 = AtomicU64::new(0);
static EXPORTED: AtomicU64 = AtomicU64::new(0);
static FAILED: AtomicU64 = AtomicU64::new(0);

/// Spans dropped because the export queue was full (collector slow or absent).
pub fn dropped_spans() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Spans the collector accepted, and spans lost in failed exports.
pub fn exported_spans() -> (u64, u64) {
    (
        EXPORTED.load(Ordering::Relaxed),
        FAILED.load(Ordering::Relaxed),
    )
}

#[derive(Debug)]
struct BoundedProcessor {
    tx: Mutex<Option<SyncSender<SpanData>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl SpanProcessor for BoundedProcessor {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = tx.as_ref()
            && let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = tx.try_send(span)
        {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        // closing the queue lets the exporter thread send what is left, then end
        drop(self.tx.lock().unwrap_or_else(|p| p.into_inner()).take());
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let until = Instant::now() + timeout;
            while !t.is_finished() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
        Ok(())
    }
}

const BATCH: usize = 512;

/// The exporter thread: its own small runtime for the tonic exporter; batches by size or age.
fn export_loop(rx: Receiver<SpanData>, config: OtlpConfig, service: &'static str) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "trace export disabled: no runtime");
            return;
        }
    };
    let exporter = rt.block_on(async {
        let channel = channel(&config)?;
        opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_channel(channel)
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| e.to_string())
    });
    let mut exporter = match exporter {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, endpoint = %config.endpoint, "trace export disabled");
            return;
        }
    };
    exporter.set_resource(
        &opentelemetry_sdk::Resource::builder()
            .with_service_name(service)
            .build(),
    );
    let mut batch = Vec::with_capacity(BATCH);
    let mut open = true;
    while open {
        let deadline = Instant::now() + config.export_interval;
        while batch.len() < BATCH {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(s) => batch.push(s),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        if batch.is_empty() {
            continue;
        }
        let n = batch.len() as u64;
        let sent = rt.block_on(async {
            tokio::time::timeout(EXPORT_TIMEOUT, exporter.export(std::mem::take(&mut batch))).await
        });
        match sent {
            Ok(Ok(())) => {
                EXPORTED.fetch_add(n, Ordering::Relaxed);
            }
            Ok(Err(e)) => {
                FAILED.fetch_add(n, Ordering::Relaxed);
                tracing::debug!(error = %e, spans = n, "trace export failed");
            }
            Err(_) => {
                FAILED.fetch_add(n, Ordering::Relaxed);
                tracing::debug!(spans = n, "trace export timed out");
            }
        }
    }
}

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Logging to stderr at the `EDGEWISE_LOG` filter (`info` by default), no traces.
pub fn init_logging() {
    init(None);
}

/// Logging as [`init_logging`], and, with `traces`, spans exported as the named service.
/// The log level filters the log only: traces keep Edgewise's own spans at info and above.
pub fn init(traces: Option<(&'static str, &OtlpConfig)>) {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let otel = traces.map(|(service, config)| {
        let tracer = start_traces(service, config);
        tracing_opentelemetry::layer().with_tracer(tracer)
    });
    let filter = tracing_subscriber::EnvFilter::try_from_env("EDGEWISE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::registry()
        .with(otel.with_filter(tracing_subscriber::filter::filter_fn(|m| {
            m.is_span() && m.target().starts_with("edgewise") && *m.level() <= tracing::Level::INFO
        })))
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                // colours only for a person at a terminal: journald and files get plain text
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_filter(filter),
        )
        .try_init();
    if let Some((_, config)) = traces {
        tracing::info!(endpoint = %config.endpoint, queue = config.queue, "exporting traces over OTLP");
    }
}

/// The tracer provider exporting as `service` to the collector in `config`.
fn start_traces(service: &'static str, config: &OtlpConfig) -> opentelemetry_sdk::trace::SdkTracer {
    let (tx, rx) = std::sync::mpsc::sync_channel(config.queue.max(1));
    let cfg = config.clone();
    let thread = std::thread::Builder::new()
        .name("otlp-export".into())
        .spawn(move || export_loop(rx, cfg, service))
        .ok();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(BoundedProcessor {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(thread),
        })
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service)
                .build(),
        )
        .build();
    let tracer = provider.tracer(service);
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let _ = PROVIDER.set(provider);
    tracer
}

/// Sends the spans still queued (at most `timeout`); called on shutdown.
pub fn shutdown_traces(timeout: Duration) {
    if let Some(p) = PROVIDER.get() {
        let _ = p.shutdown_with_timeout(timeout);
    }
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            value.parse(),
        ) {
            self.0.insert(k, v);
        }
    }
}

struct MetadataExtractor<'a>(&'a tonic::metadata::MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// Puts the current span's trace context into outgoing metadata (W3C `traceparent`).
pub fn inject(metadata: &mut tonic::metadata::MetadataMap) {
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut MetadataInjector(metadata));
}

/// Makes `span` a child of the trace context a caller sent, if any.
pub fn continue_trace(span: &tracing::Span, metadata: &tonic::metadata::MetadataMap) {
    let cx = TraceContextPropagator::new().extract(&MetadataExtractor(metadata));
    let _ = span.set_parent(cx);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_context_round_trips_through_metadata() {
        use opentelemetry::trace::{
            SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
        };
        let sc = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap_or(TraceId::INVALID),
            SpanId::from_hex("00f067aa0ba902b7").unwrap_or(SpanId::INVALID),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let cx = opentelemetry::Context::new().with_remote_span_context(sc);
        let mut md = tonic::metadata::MetadataMap::new();
        TraceContextPropagator::new().inject_context(&cx, &mut MetadataInjector(&mut md));
        assert_eq!(
            md.get("traceparent").and_then(|v| v.to_str().ok()),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        let back = TraceContextPropagator::new().extract(&MetadataExtractor(&md));
        assert_eq!(
            back.span().span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }
}
