//! Capacity reports: one long-lived `Fleet/Report` stream to every configured gateway.
//!
//! A report goes out when a stream opens, every interval, and at once when a model changes
//! state or the agent starts draining. A lost gateway is redialled with jittered exponential
//! backoff. Reporting never blocks serving: the agent serves whether or not a gateway is up.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use edgewise_proto as pb;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::node::Node;

/// Reports to one gateway until `stop` is cancelled.
pub async fn report_to(node: Arc<Node>, gateway: String, stop: CancellationToken) {
    // never wait longer than one report interval: a restarted gateway hears from every agent
    // within an interval of coming back, so its view is rebuilt within two
    let max_delay = node
        .config
        .report_interval
        .clamp(Duration::from_millis(100), Duration::from_secs(10));
    let backoff = || {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(50).min(max_delay / 2))
            // jitter adds up to as much again: delays stay under `max_delay`, still spread
            .with_max_delay(max_delay / 2)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build()
    };
    let mut delays = backoff();
    loop {
        match stream_once(&node, &gateway, &stop).await {
            Ok(Outcome::Stopped) => return,
            Ok(Outcome::Healthy) => {
                delays = backoff(); // the stream worked: start over from the shortest delay
            }
            Err(e) => {
                tracing::debug!(gateway = %gateway, error = %e, "report stream failed; redialling")
            }
        }
        let delay = delays.next().unwrap_or(max_delay).min(max_delay);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

enum Outcome {
    /// Shut down on request.
    Stopped,
    /// The stream carried reports and then ended.
    Healthy,
}

async fn stream_once(
    node: &Arc<Node>,
    gateway: &str,
    stop: &CancellationToken,
) -> Result<Outcome, String> {
    let endpoint = tonic::transport::Endpoint::from_shared(gateway.to_string())
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true);
    let channel = match &node.tls {
        Some(tls) => edgewise_tls::net::channel(endpoint, edgewise_tls::net::source(tls)).await,
        None => endpoint.connect().await,
    }
    .map_err(|e| edgewise_ops::error_chain(&e))?;
    let mut client = pb::fleet_client::FleetClient::new(channel);
    let (tx, rx) = mpsc::channel::<pb::NodeReport>(4);
    let mut changes: watch::Receiver<u64> = node.subscribe();
    let mut seq = 0u64;
    // the first report is queued before the call, so the gateway hears from us at once
    node.save_counters();
    tx.send(node.report(seq)).await.map_err(|e| e.to_string())?;
    let mut acks = client
        .report(ReceiverStream::new(rx))
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    tracing::info!(gateway = %gateway, node = %node.id, "reporting to gateway");
    let mut tick = tokio::time::interval(node.config.report_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick fires at once; the report above covered it
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                // A last report, then a clean end of stream; waiting (briefly) for its ack keeps
                // the report from being lost in a stream reset when the process exits.
                seq += 1;
                node.save_counters();
                let _ = tx.send(node.report(seq)).await;
                drop(tx);
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    while let Ok(Some(ack)) = acks.message().await {
                        if ack.seq >= seq {
                            break;
                        }
                    }
                })
                .await;
                return Ok(Outcome::Stopped);
            }
            _ = tick.tick() => {}
            r = changes.changed() => if r.is_err() { return Ok(Outcome::Stopped) },
            ack = acks.message() => match ack {
                Ok(Some(_)) => continue,
                Ok(None) => return Ok(Outcome::Healthy),
                Err(e) => return Err(e.to_string()),
            },
        }
        seq += 1;
        // counters are flushed before the report that carries them
        node.save_counters();
        if tx.send(node.report(seq)).await.is_err() {
            return Ok(Outcome::Healthy);
        }
    }
}
