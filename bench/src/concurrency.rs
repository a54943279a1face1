//! Concurrent generations through the agent.
//!
//! - `concurrency`: N greedy generations of one model started together; aggregate generated
//!   tokens per second from the first request to the last final chunk (prefills included), and
//!   while all N are decoding (the figure comparable with the engine's batched step).
//! - `prefill-stall`: running streams' inter-token gaps before and while a long prompt arrives
//!   (chunked prefill bounds the stall to one chunk per decode step).

use std::time::{Duration, Instant};

use edgewise_proto as pb;
use futures::StreamExt;
use tonic::transport::{Channel, Endpoint};

use crate::stats::{ms, percentile};

/// The agent, model and prompt both measurements use.
#[derive(Debug, clap::Args)]
pub struct Target {
    #[arg(long)]
    agent: String,
    #[arg(long)]
    model: String,
    #[arg(long)]
    prompt: String,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: Target,
    #[arg(long, default_value_t = 96)]
    max_tokens: u32,
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    concurrency: Vec<usize>,
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

#[derive(Debug, clap::Args)]
pub struct StallArgs {
    #[command(flatten)]
    target: Target,
    /// A text that is repeated to make the long prompt.
    #[arg(long)]
    filler: String,
    /// Tokens the long prompt should have (about; the agent reports the exact count).
    #[arg(long, default_value_t = 1000)]
    long_tokens: usize,
    #[arg(long, default_value_t = 4)]
    streams: usize,
    /// Names the agent's configuration in the output (e.g. its prefill chunk).
    #[arg(long)]
    label: String,
}

async fn client(url: &str) -> anyhow::Result<pb::agent_client::AgentClient<Channel>> {
    let ch = Endpoint::from_shared(url.to_string())?
        .tcp_nodelay(true)
        .connect()
        .await?;
    Ok(pb::agent_client::AgentClient::new(ch))
}

fn request(model: &str, prompt: &str, max_tokens: u32) -> pb::GenerateRequest {
    pb::GenerateRequest {
        model: model.into(),
        input: Some(pb::generate_request::Input::Chat(pb::ChatMessages {
            messages: vec![pb::ChatMessage {
                role: "user".into(),
                content: prompt.into(),
                ..Default::default()
            }],
        })),
        max_tokens,
        ..Default::default()
    }
}

/// One stream to its end: arrival times of the chunks with text, and the usage.
async fn stream(
    mut c: pb::agent_client::AgentClient<Channel>,
    req: pb::GenerateRequest,
) -> anyhow::Result<(Vec<Instant>, pb::Usage)> {
    let mut s = c.generate(req).await?.into_inner();
    let mut times = Vec::new();
    while let Some(chunk) = s.next().await {
        let chunk = chunk?;
        if !chunk.text.is_empty() {
            times.push(Instant::now());
        }
        if let Some(done) = chunk.done {
            return Ok((times, done.usage.unwrap_or_default()));
        }
    }
    anyhow::bail!("the stream ended without `done`")
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let c = client(&a.target.agent).await?;
    stream(c.clone(), request(&a.target.model, &a.target.prompt, 8)).await?; // warm-up
    for &n in &a.concurrency {
        let mut rates = Vec::new();
        let mut steady = Vec::new();
        let mut tokens = 0;
        for _ in 0..a.runs {
            let start = Instant::now();
            let all = futures::future::try_join_all((0..n).map(|_| {
                stream(
                    c.clone(),
                    request(&a.target.model, &a.target.prompt, a.max_tokens),
                )
            }))
            .await?;
            let elapsed = start.elapsed().as_secs_f64();
            tokens = all.iter().map(|(_, u)| u.completion_tokens).sum::<u32>();
            rates.push(f64::from(tokens) / elapsed);
            steady.extend(steady_rate(&all));
        }
        rates.sort_by(f64::total_cmp);
        steady.sort_by(f64::total_cmp);
        println!(
            "{}",
            serde_json::json!({
                "bench": "concurrency", "model": a.target.model, "streams": n,
                "tokens": tokens, "tokens_per_s": rates[rates.len() / 2],
                "steady_tokens_per_s": steady.get(steady.len() / 2).copied().unwrap_or(f64::NAN),
                "runs": a.runs,
            })
        );
    }
    Ok(())
}

/// Gaps between successive chunks that end after `from` and start before `to` (the gap in
/// which `from` falls counts: it is the one a stall at `from` stretches).
fn gaps(times: &[Instant], from: Instant, to: Instant) -> Vec<Duration> {
    times
        .windows(2)
        .filter(|w| w[1] > from && w[0] < to)
        .map(|w| w[1] - w[0])
        .collect()
}

/// Tokens per second while every stream is decoding: from the last stream's first chunk to
/// the first stream's last, each stream's chunks in that window scaled by its tokens per chunk.
fn steady_rate(all: &[(Vec<Instant>, pb::Usage)]) -> Option<f64> {
    let from = all.iter().filter_map(|(t, _)| t.first()).max()?;
    let to = all.iter().filter_map(|(t, _)| t.last()).min()?;
    let window = to.checked_duration_since(*from)?.as_secs_f64();
    if window <= 0.0 {
        return None;
    }
    let tokens: f64 = all
        .iter()
        .map(|(t, u)| {
            let inside = t.iter().filter(|&&x| x > *from && x <= *to).count() as f64;
            inside * f64::from(u.completion_tokens) / t.len().max(1) as f64
        })
        .sum();
    Some(tokens / window)
}

pub async fn stall(a: StallArgs) -> anyhow::Result<()> {
    let c = client(&a.target.agent).await?;
    stream(c.clone(), request(&a.target.model, &a.target.prompt, 8)).await?; // warm-up
    // a long prompt: the filler repeated to about `long_tokens` (4 characters a token)
    let mut long = String::new();
    while long.len() < a.long_tokens * 4 {
        long.push_str(&a.filler);
        long.push(' ');
    }
    long.push_str("\nSummarise the text above in one sentence.");
    let running: Vec<_> = (0..a.streams)
        .map(|_| {
            tokio::spawn(stream(
                c.clone(),
                request(&a.target.model, &a.target.prompt, 200),
            ))
        })
        .collect();
    // let the streams reach steady decoding, then the long prompt arrives
    tokio::time::sleep(Duration::from_millis(400)).await;
    let sent = Instant::now();
    let (long_times, long_usage) = stream(c.clone(), request(&a.target.model, &long, 4)).await?;
    let first = long_times.first().copied().unwrap_or_else(Instant::now);
    let mut before = Vec::new();
    let mut during = Vec::new();
    for h in running {
        let (times, _) = h.await??;
        // before: gaps wholly before the long prompt was sent
        before.extend(
            times
                .windows(2)
                .filter(|w| w[1] <= sent)
                .map(|w| w[1] - w[0]),
        );
        during.extend(gaps(&times, sent, first));
    }
    before.sort();
    during.sort();
    let p = |v: &[Duration], q| percentile(v, q).map_or(f64::NAN, ms);
    println!(
        "{}",
        serde_json::json!({
            "bench": "prefill-stall", "label": a.label, "model": a.target.model, "streams": a.streams,
            "long_prompt_tokens": long_usage.prompt_tokens,
            "long_ttft_ms": ms(first - sent),
            "itl_before_p50_ms": p(&before, 50.0), "itl_before_p99_ms": p(&before, 99.0),
            "itl_during_p50_ms": p(&during, 50.0), "itl_during_p99_ms": p(&during, 99.0),
            "itl_during_max_ms": during.last().map_or(f64::NAN, |d| ms(*d)),
            "gaps_during": during.len(),
        })
    );
    Ok(())
}
