//! Agent embeddings: latency of one text at a given length, and throughput at several
//! concurrencies, against an agent that batches and one that does not (same model, same
//! thread count). The Python reference runs beside it from `bench/reference.py embed`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use edgewise_proto as pb;
use tokio::sync::Mutex;
use tonic::transport::{Channel, Endpoint};

use crate::stats::{ms, percentile};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// An agent with dynamic batching on.
    #[arg(long)]
    batched: String,
    /// The same model on an agent with `max_batch_size = 1`.
    #[arg(long)]
    unbatched: String,
    #[arg(long)]
    model: String,
    /// Texts whose latency is measured one request at a time (the first is also the
    /// throughput text).
    #[arg(long = "text", required = true)]
    texts: Vec<String>,
    #[arg(long, default_value_t = 200)]
    iters: usize,
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 4, 16])]
    concurrency: Vec<usize>,
    /// Seconds per throughput point.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
}

type Client = pb::agent_client::AgentClient<Channel>;

async fn client(url: &str) -> anyhow::Result<Client> {
    let ch = Endpoint::from_shared(url.to_string())?
        .tcp_nodelay(true)
        .connect()
        .await?;
    Ok(pb::agent_client::AgentClient::new(ch))
}

/// One Embed of `text`; the prompt tokens the agent counted.
async fn embed(c: &Client, model: &str, text: &str) -> anyhow::Result<u32> {
    let r = c
        .clone()
        .embed(pb::EmbedRequest {
            model: model.into(),
            texts: vec![text.into()],
            ..Default::default()
        })
        .await?
        .into_inner();
    anyhow::ensure!(r.embeddings.len() == 1, "expected one embedding");
    Ok(r.usage.map_or(0, |u| u.prompt_tokens))
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let agents = [
        ("batched", client(&a.batched).await?),
        ("unbatched", client(&a.unbatched).await?),
    ];
    for text in &a.texts {
        for (mode, c) in &agents {
            for _ in 0..20 {
                embed(c, &a.model, text).await?;
            }
            let mut times = Vec::with_capacity(a.iters);
            let mut tokens = 0;
            for _ in 0..a.iters {
                let t = Instant::now();
                tokens = embed(c, &a.model, text).await?;
                times.push(t.elapsed());
            }
            times.sort();
            let mean = times.iter().map(|d| ms(*d)).sum::<f64>() / times.len() as f64;
            println!(
                "{}",
                serde_json::json!({
                    "bench": "embed_latency", "agent": mode, "model": a.model, "tokens": tokens,
                    "p50_ms": percentile(&times, 50.0).map_or(f64::NAN, ms), "mean_ms": mean,
                    "iters": a.iters,
                })
            );
        }
    }
    let text = a.texts[0].clone();
    for &n in &a.concurrency {
        for (mode, c) in &agents {
            let (mut times, errors, elapsed) = closed_loop(c, &a.model, &text, n, a.seconds).await;
            times.sort();
            println!(
                "{}",
                serde_json::json!({
                    "bench": "embed_throughput", "agent": mode, "model": a.model,
                    "concurrency": n, "seconds": a.seconds,
                    "texts_per_s": times.len() as f64 / elapsed.as_secs_f64(), "errors": errors,
                    "p50_ms": percentile(&times, 50.0).map_or(f64::NAN, ms),
                    "p99_ms": percentile(&times, 99.0).map_or(f64::NAN, ms),
                })
            );
        }
    }
    Ok(())
}

/// `n` callers each sending the next request as soon as the last returns, for `seconds`.
/// Returns (latencies of the completed requests, errors, time until the last returned).
async fn closed_loop(
    c: &Client,
    model: &str,
    text: &str,
    n: usize,
    seconds: u64,
) -> (Vec<Duration>, u64, Duration) {
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let out = Arc::new(Mutex::new((Vec::new(), 0u64)));
    let workers: Vec<_> = (0..n)
        .map(|_| {
            let (c, model, text, stop, out) = (
                c.clone(),
                model.to_string(),
                text.to_string(),
                stop.clone(),
                out.clone(),
            );
            tokio::spawn(async move {
                let (mut times, mut errors) = (Vec::new(), 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    match embed(&c, &model, &text).await {
                        Ok(_) => times.push(t.elapsed()),
                        Err(_) => errors += 1,
                    }
                }
                let mut o = out.lock().await;
                o.0.extend(times);
                o.1 += errors;
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    let elapsed = started.elapsed();
    let mut o = out.lock().await;
    (std::mem::take(&mut o.0), o.1, elapsed)
}
