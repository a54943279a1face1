//! The store's health as the gateway reports it, and its gauges for `/metrics`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::Store;

/// Keeps the gateway's health (the `Gateway` service and the server as a whole) in step with
/// the store's: NOT_SERVING while an operation is stuck past the bound or the last flush
/// failed. Checks four times per bound until `stop`.
pub async fn report_health(
    store: Store,
    health: tonic_health::server::HealthReporter,
    service: &'static str,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval((store.bound() / 4).max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut healthy = true;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let why = store.unhealthy();
        if why.is_some() == healthy {
            healthy = why.is_none();
            let status = if healthy {
                tracing::info!(store = %store.path(), "the store is healthy again");
                tonic_health::ServingStatus::Serving
            } else {
                tracing::warn!(
                    reason = why.as_deref().unwrap_or_default(),
                    "the store is unhealthy"
                );
                tonic_health::ServingStatus::NotServing
            };
            for name in ["", service] {
                health.set_service_status(name, status).await;
            }
        }
    }
}

/// The store's gauges, read at each scrape.
#[derive(Clone)]
pub(super) struct StoreGauges(pub(super) Store);

impl std::fmt::Debug for StoreGauges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreGauges")
    }
}

impl prometheus_client::collector::Collector for StoreGauges {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::gauge::ConstGauge;
        let pending = ConstGauge::new(self.0.pending() as i64);
        pending.encode(encoder.encode_descriptor(
            "store_pending_operations",
            "Store operations (writes and reads) queued or being applied",
            None,
            pending.metric_type(),
        )?)?;
        let healthy = ConstGauge::new(i64::from(self.0.unhealthy().is_none()));
        let (flushes, writes) = self.0.flush_counts();
        for (name, help, n) in [
            (
                "store_flushes",
                "Flushes of the store (each covers every durable write queued before it)",
                flushes,
            ),
            (
                "store_flushed_writes",
                "Durable writes made durable by those flushes",
                writes,
            ),
        ] {
            edgewise_ops::metrics::encode_counter(&mut encoder, (name, help, n))?;
        }
        healthy.encode(encoder.encode_descriptor(
            "store_healthy",
            "1 while the store completes its operations within the bound",
            None,
            healthy.metric_type(),
        )?)?;
        if let Some(l) = &self.0.ledger {
            // the gateway stays up while the shared ledger is down (local routing goes
            // on): this says whether hosted calls can be reserved
            let up = ConstGauge::new(i64::from(l.ledger.is_up()));
            up.encode(encoder.encode_descriptor(
                "shared_ledger_up",
                "1 while the shared ledger (PostgreSQL) answered its last operation; hosted calls are refused while 0",
                None,
                up.metric_type(),
            )?)?;
            let waiting = ConstGauge::new(self.0.outbox_waiting.load(Ordering::Relaxed) as i64);
            waiting.encode(encoder.encode_descriptor(
                "shared_ledger_outbox",
                "Settlements and audit records waiting in this gateway's outbox for the shared ledger",
                None,
                waiting.metric_type(),
            )?)?;
        }
        Ok(())
    }
}
