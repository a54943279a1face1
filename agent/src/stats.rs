//! A model's live figures: in flight, queued, lifetime counters, latency histograms, and the
//! moving averages (latency, time per output token, tokens/s) that capacity reports carry.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::metrics::histogram::Histogram;

/// Live figures of one model, read by the capacity reports and the metrics endpoint.
pub struct ModelStats {
    pub in_flight: AtomicU32,
    pub queued: AtomicU32,
    /// The most requests ever waiting at once (the queue bound must hold it).
    pub queue_high_water: AtomicU32,
    /// Lifetime counters; start from the values kept in the state store.
    pub requests_total: AtomicU64,
    pub errors_total: AtomicU64,
    pub rejected_total: AtomicU64,
    pub tokens_generated_total: AtomicU64,
    /// Generations stopped early because the caller went away or the deadline passed.
    pub cancelled_total: AtomicU64,
    /// ONNX Runtime runs of the batcher (one per batch).
    pub batches_total: AtomicU64,
    /// Request latency and time to first token, seconds (the Prometheus histograms).
    pub latency: Histogram,
    pub time_to_first_token: Histogram,
    ewma: std::sync::Mutex<Averages>,
}

impl Default for ModelStats {
    fn default() -> Self {
        Self {
            in_flight: Default::default(),
            queued: Default::default(),
            queue_high_water: Default::default(),
            requests_total: Default::default(),
            errors_total: Default::default(),
            rejected_total: Default::default(),
            tokens_generated_total: Default::default(),
            cancelled_total: Default::default(),
            batches_total: Default::default(),
            latency: Histogram::new(edgewise_ops::metrics::latency_buckets()),
            time_to_first_token: Histogram::new(edgewise_ops::metrics::latency_buckets()),
            ewma: Default::default(),
        }
    }
}

#[derive(Default, Clone, Copy)]
struct Averages {
    latency_ms: f64,
    tpot_ms: f64,
    rate_at: Option<Instant>,
    rate_tokens: u64,
    tokens_per_s: f64,
}

const EWMA_ALPHA: f64 = 0.2;

fn ewma(old: f64, new: f64) -> f64 {
    if old == 0.0 {
        new
    } else {
        old + EWMA_ALPHA * (new - old)
    }
}

impl ModelStats {
    pub fn record_latency(&self, latency: Duration, time_per_output_token: Option<Duration>) {
        self.latency.observe(latency.as_secs_f64());
        let mut a = self.ewma.lock().unwrap_or_else(|p| p.into_inner());
        a.latency_ms = ewma(a.latency_ms, latency.as_secs_f64() * 1e3);
        if let Some(t) = time_per_output_token {
            a.tpot_ms = ewma(a.tpot_ms, t.as_secs_f64() * 1e3);
        }
    }

    /// A first measurement (the load-time smoke inference): sets the averages that have none
    /// yet, without counting a request.
    pub fn seed_latency(&self, latency: Duration, time_per_output_token: Option<Duration>) {
        let mut a = self.ewma.lock().unwrap_or_else(|p| p.into_inner());
        if a.latency_ms == 0.0 {
            a.latency_ms = latency.as_secs_f64() * 1e3;
        }
        if let Some(t) = time_per_output_token
            && a.tpot_ms == 0.0
        {
            a.tpot_ms = t.as_secs_f64() * 1e3;
        }
    }

    pub fn ewma_latency_ms(&self) -> f64 {
        self.ewma
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .latency_ms
    }

    pub fn ewma_tpot_ms(&self) -> f64 {
        self.ewma.lock().unwrap_or_else(|p| p.into_inner()).tpot_ms
    }

    /// Generated tokens per second, measured over windows of at least `window`.
    pub fn tokens_per_s(&self, now: Instant, window: Duration) -> f64 {
        let total = self.tokens_generated_total.load(Ordering::Relaxed);
        let mut a = self.ewma.lock().unwrap_or_else(|p| p.into_inner());
        match a.rate_at {
            None => {
                a.rate_at = Some(now);
                a.rate_tokens = total;
            }
            Some(at) if now.duration_since(at) >= window => {
                a.tokens_per_s = total.saturating_sub(a.rate_tokens) as f64
                    / now.duration_since(at).as_secs_f64();
                a.rate_at = Some(now);
                a.rate_tokens = total;
            }
            Some(_) => {}
        }
        a.tokens_per_s
    }
}
