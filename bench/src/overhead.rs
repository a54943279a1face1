//! Gateway overhead. Requests are scheduled at fixed times (open loop: a slow answer never
//! delays the next send) and alternate between the agent and the gateway, so both paths see
//! the same machine at the same moment. Latency is measured from the scheduled send time.

use std::sync::Arc;
use std::time::Duration;

use edgewise_proto as pb;
use tokio::sync::Mutex;
use tonic::Request;
use tonic::transport::{Channel, Endpoint};

use crate::stats::{ms, percentile, rss_bytes};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long)]
    agent: String,
    #[arg(long)]
    gateway: String,
    /// The classify model on the agent (a fast one, so the gateway's share dominates).
    #[arg(long)]
    model: String,
    /// Requests per second, both paths together.
    #[arg(long, value_delimiter = ',', default_values_t = [500u32, 1000, 2000])]
    rates: Vec<u32>,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// The gateway's pid, to sample its memory under load.
    #[arg(long)]
    gateway_pid: Option<u32>,
}

pub async fn channel(url: &str) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(url.to_string())?
        .tcp_nodelay(true)
        .connect()
        .await?)
}

/// What one path of an interleaved run saw.
#[derive(Default)]
pub struct Path {
    pub latencies: Vec<Duration>,
    pub errors: u64,
}

impl Path {
    pub fn quantile_ms(&self, q: f64) -> f64 {
        percentile(&self.latencies, q).map_or(f64::NAN, ms)
    }

    pub fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "n": self.latencies.len(),
            "errors": self.errors,
            "p50_ms": self.quantile_ms(50.0),
            "p99_ms": self.quantile_ms(99.0),
        })
    }
}

/// `rate` requests a second for `seconds`, alternating between two paths (`call(true)`: the
/// reference, `call(false)`: the path measured), open loop: each is timed from its scheduled
/// send. Returns both paths and the peak RSS of `pid` sampled meanwhile.
pub async fn interleaved<F, Fut>(
    rate: u32,
    seconds: u64,
    pid: Option<u32>,
    call: F,
) -> (Path, Path, u64)
where
    F: Fn(bool) -> Fut,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    let reference = Arc::new(Mutex::new(Path::default()));
    let measured = Arc::new(Mutex::new(Path::default()));
    let total = u64::from(rate) * seconds;
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::with_capacity(total as usize);
    let mut peak_rss = 0u64;
    for i in 0..total {
        let at = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(at).await;
        if i % 500 == 0
            && let Some(r) = pid.and_then(rss_bytes)
        {
            peak_rss = peak_rss.max(r);
        }
        let first = i % 2 == 0;
        let sink = if first {
            reference.clone()
        } else {
            measured.clone()
        };
        let scheduled = at.into_std();
        let fut = call(first);
        tasks.push(tokio::spawn(async move {
            let ok = fut.await;
            let took = scheduled.elapsed();
            let mut p = sink.lock().await;
            if ok {
                p.latencies.push(took);
            } else {
                p.errors += 1;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let take = |p: Arc<Mutex<Path>>| {
        let mut p = Arc::try_unwrap(p).map_or_else(|_| Path::default(), Mutex::into_inner);
        p.latencies.sort();
        p
    };
    (take(reference), take(measured), peak_rss)
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let agent = pb::agent_client::AgentClient::new(channel(&a.agent).await?);
    let gateway = pb::gateway_client::GatewayClient::new(channel(&a.gateway).await?);
    let texts = vec!["Is this request easy or hard to answer?".to_string()];
    // warm both paths (connections, the gateway's view, the model)
    for _ in 0..50 {
        let _ = call(&agent, &gateway, &a.model, &texts, true).await;
        let _ = call(&agent, &gateway, &a.model, &texts, false).await;
    }
    for rate in &a.rates {
        let (d, v, peak_rss) = interleaved(*rate, a.seconds, a.gateway_pid, |direct| {
            let (agent, gateway, model, texts) = (
                agent.clone(),
                gateway.clone(),
                a.model.clone(),
                texts.clone(),
            );
            async move { call(&agent, &gateway, &model, &texts, direct).await }
        })
        .await;
        let q = |p: &Path, x: f64| p.quantile_ms(x);
        let line = serde_json::json!({
            "bench": "gateway_overhead",
            "rate_rps": rate,
            "seconds": a.seconds,
            "direct": d.summary(),
            "gateway": v.summary(),
            "added_p50_ms": q(&v, 50.0) - q(&d, 50.0),
            "added_p99_ms": q(&v, 99.0) - q(&d, 99.0),
            "ratio_p50": q(&v, 50.0) / q(&d, 50.0),
            "ratio_p99": q(&v, 99.0) / q(&d, 99.0),
            "gateway_peak_rss_mb": peak_rss as f64 / 1048576.0,
        });
        println!("{line}");
    }
    Ok(())
}

/// One Classify, straight to the agent or through the gateway. True on success.
async fn call(
    agent: &pb::agent_client::AgentClient<Channel>,
    gateway: &pb::gateway_client::GatewayClient<Channel>,
    model: &str,
    texts: &[String],
    direct: bool,
) -> bool {
    let req = pb::ClassifyRequest {
        model: model.into(),
        texts: texts.to_vec(),
        ..Default::default()
    };
    let deadline = Duration::from_secs(5);
    if direct {
        let mut r = Request::new(req);
        r.set_timeout(deadline);
        agent.clone().classify(r).await.is_ok()
    } else {
        let mut r = Request::new(pb::GatewayClassifyRequest {
            request: Some(pb::ClassifyRequest {
                model: String::new(),
                ..req
            }),
            routing: None,
        });
        r.set_timeout(deadline);
        if let Ok(v) = "bench".parse() {
            r.metadata_mut().insert("x-edgewise-tenant", v);
        }
        gateway.clone().classify(r).await.is_ok()
    }
}
