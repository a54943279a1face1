//! Fleet scale: simulated agents in this process, each on its own connection, stream
//! capacity reports at a fixed interval into one gateway. Measured: the gateway's CPU and
//! resident memory, how long a report waits for its acknowledgement, and how stale the
//! gateway's view is — every report stamps its send time into a counter the gateway shows
//! back in `FleetStatus`, so the view's age is "now − the newest stamp it shows". With a
//! report every interval, a perfectly fresh view is between 0 and one interval old.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use edgewise_proto as pb;
use futures::StreamExt;
use tokio::sync::Mutex;
use tonic::transport::Endpoint;

use crate::stats::{ms, percentile, rss_bytes};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long)]
    gateway: String,
    #[arg(long, value_delimiter = ',', default_values_t = [1000usize, 10000])]
    agents: Vec<usize>,
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Seconds measured once every simulated agent has connected.
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// The gateway's pid, for its CPU time and memory.
    #[arg(long)]
    gateway_pid: u32,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// User + system CPU time of a process, from /proc (USER_HZ is 100 on Linux).
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // fields after the parenthesised command name; utime and stime are fields 14 and 15
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

fn report(node: &str, seq: u64, interval_ms: u64) -> pb::NodeReport {
    let now = unix_ms();
    let model = |name: &str, task: pb::Task, quality: f32| pb::ModelStatus {
        name: name.into(),
        task: task as i32,
        state: pb::ModelState::Ready as i32,
        quality,
        parameters: 134_515_008,
        size_bytes: 167_517_756,
        quantization: "int8".into(),
        context_length: 2048,
        max_concurrency: 4,
        max_queue: 16,
        ewma_latency_ms: 300.0,
        ewma_time_per_output_token_ms: 15.0,
        // the staleness stamp: the gateway shows this counter back unchanged
        requests_total: now,
        ..Default::default()
    };
    pb::NodeReport {
        node_id: node.into(),
        // a closed port: the bench sends no requests, so nothing is ever routed here
        advertise_addr: "http://127.0.0.1:9".into(),
        seq,
        sent_unix_ms: now,
        hardware: Some(pb::Hardware {
            arch: "x86_64".into(),
            cores: 4,
            memory_total_bytes: 16 << 30,
            memory_available_bytes: 8 << 30,
        }),
        models: vec![
            model("smollm2-135m-int8", pb::Task::Generate, 0.35),
            model("minilm-l6-int8", pb::Task::Embed, 0.8),
            model("minilm-task", pb::Task::Classify, 0.7),
        ],
        report_interval_ms: interval_ms as u32,
        agent_version: "bench".into(),
        draining: false,
        memory: None,
    }
}

struct Shared {
    measuring: AtomicBool,
    stop: AtomicBool,
    sent: AtomicU64,
    acks: Mutex<Vec<Duration>>,
}

/// One simulated agent: connects, then reports every interval (first report at `phase`)
/// until told to stop; records each acknowledgement's delay while measuring.
async fn agent(
    url: String,
    node: String,
    interval: Duration,
    phase: Duration,
    shared: Arc<Shared>,
    connected: tokio::sync::mpsc::Sender<()>,
) -> anyhow::Result<()> {
    let ch = Endpoint::from_shared(url)?
        .tcp_nodelay(true)
        .connect()
        .await?;
    let mut client = pb::fleet_client::FleetClient::new(ch);
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::NodeReport>(4);
    let interval_ms = interval.as_millis() as u64;
    tx.send(report(&node, 0, interval_ms)).await?;
    let mut acks = client
        .report(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    acks.next().await;
    let _ = connected.send(()).await;
    let sent_at = Arc::new(Mutex::new(
        std::collections::VecDeque::<(u64, Instant)>::new(),
    ));
    let ack_reader = {
        let (sent_at, shared) = (sent_at.clone(), shared.clone());
        tokio::spawn(async move {
            while let Some(Ok(ack)) = acks.next().await {
                let mut q = sent_at.lock().await;
                while let Some((seq, at)) = q.front().copied() {
                    if seq > ack.seq {
                        break;
                    }
                    q.pop_front();
                    if seq == ack.seq && shared.measuring.load(Ordering::Relaxed) {
                        shared.acks.lock().await.push(at.elapsed());
                    }
                }
            }
        })
    };
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + phase, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 1;
    while !shared.stop.load(Ordering::Relaxed) {
        ticks.tick().await;
        sent_at.lock().await.push_back((seq, Instant::now()));
        if tx.send(report(&node, seq, interval_ms)).await.is_err() {
            break;
        }
        shared.sent.fetch_add(1, Ordering::Relaxed);
        seq += 1;
    }
    drop(tx);
    ack_reader.abort();
    Ok(())
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let status_channel = Endpoint::from_shared(a.gateway.clone())?.connect().await?;
    let mut status =
        pb::gateway_client::GatewayClient::new(status_channel).max_decoding_message_size(256 << 20);
    let interval = Duration::from_millis(a.interval_ms);
    for (round, &n) in a.agents.iter().enumerate() {
        let shared = Arc::new(Shared {
            measuring: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            acks: Mutex::new(Vec::new()),
        });
        let (connected_tx, mut connected_rx) = tokio::sync::mpsc::channel(n);
        let prefix = format!("sim{round}-");
        let mut tasks = Vec::with_capacity(n);
        let connect_started = Instant::now();
        for i in 0..n {
            // spread the reports evenly over the interval (a deterministic phase per agent)
            let phase = interval.mul_f64(i as f64 / n as f64);
            tasks.push(tokio::spawn(agent(
                a.gateway.clone(),
                format!("{prefix}{i:05}"),
                interval,
                phase,
                shared.clone(),
                connected_tx.clone(),
            )));
            // pace the connection storm: about 2,000 new connections a second
            if i % 100 == 99 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        drop(connected_tx);
        let mut up = 0;
        while up < n {
            match tokio::time::timeout(Duration::from_secs(60), connected_rx.recv()).await {
                Ok(Some(())) => up += 1,
                _ => break,
            }
        }
        anyhow::ensure!(up == n, "only {up} of {n} simulated agents connected");
        let connect_s = connect_started.elapsed().as_secs_f64();
        // settle: two intervals after the last connection
        tokio::time::sleep(interval * 2).await;

        shared.measuring.store(true, Ordering::Relaxed);
        let (cpu0, sent0, t0) = (
            cpu_time(a.gateway_pid),
            shared.sent.load(Ordering::Relaxed),
            Instant::now(),
        );
        let mut ages = Vec::new();
        let (mut live_min, mut peak_rss, mut status_ms) = (usize::MAX, 0u64, Vec::new());
        let end = t0 + Duration::from_secs(a.seconds);
        while Instant::now() < end {
            let asked = Instant::now();
            let nodes = status
                .fleet_status(pb::FleetStatusRequest::default())
                .await?
                .into_inner()
                .nodes;
            status_ms.push(asked.elapsed());
            let now = unix_ms();
            let mine = nodes.iter().filter(|s| s.node_id.starts_with(&prefix));
            let mut live = 0;
            for s in mine {
                live += usize::from(s.live);
                if let Some(m) = s.models.first() {
                    ages.push(Duration::from_millis(now.saturating_sub(m.requests_total)));
                }
            }
            live_min = live_min.min(live);
            peak_rss = peak_rss.max(rss_bytes(a.gateway_pid).unwrap_or(0));
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let elapsed = t0.elapsed();
        let cpu = match (cpu0, cpu_time(a.gateway_pid)) {
            (Some(c0), Some(c1)) => (c1 - c0).as_secs_f64() / elapsed.as_secs_f64(),
            _ => f64::NAN,
        };
        shared.measuring.store(false, Ordering::Relaxed);
        let sent = shared.sent.load(Ordering::Relaxed) - sent0;
        shared.stop.store(true, Ordering::Relaxed);
        for t in tasks {
            let _ = t.await;
        }
        let mut acks = std::mem::take(&mut *shared.acks.lock().await);
        acks.sort();
        ages.sort();
        status_ms.sort();
        let q = |v: &[Duration], p: f64| percentile(v, p).map_or(f64::NAN, ms);
        println!(
            "{}",
            serde_json::json!({
                "bench": "fleet_scale", "agents": n, "interval_ms": a.interval_ms,
                "seconds": elapsed.as_secs_f64(), "connect_s": connect_s,
                "reports_per_s": sent as f64 / elapsed.as_secs_f64(),
                "gateway_cpu_cores": cpu,
                "gateway_cpu_us_per_report": cpu * 1e6 * elapsed.as_secs_f64() / sent.max(1) as f64,
                "gateway_rss_mb": peak_rss as f64 / 1048576.0,
                "ack_p50_ms": q(&acks, 50.0), "ack_p99_ms": q(&acks, 99.0),
                "view_age_p50_ms": q(&ages, 50.0), "view_age_p99_ms": q(&ages, 99.0),
                "view_age_max_ms": q(&ages, 100.0),
                "live_min": live_min,
                "fleet_status_p50_ms": q(&status_ms, 50.0),
            })
        );
        // the gateway forgets these nodes as their streams end; wait until it has
        for _ in 0..100 {
            let left = status
                .fleet_status(pb::FleetStatusRequest::default())
                .await?
                .into_inner()
                .nodes
                .iter()
                .filter(|s| s.node_id.starts_with(&prefix) && s.live)
                .count();
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}
