//! Agent generation: time to first token and decode time per token of a greedy chat
//! completion, measured by the caller (the first streamed text, then the rest). The
//! Python and llama.cpp references run from `bench/reference.py` with the token counts
//! printed here, so every engine decodes the same number of tokens.

use std::time::Instant;

use edgewise_proto as pb;
use futures::StreamExt;
use tonic::transport::Endpoint;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long)]
    agent: String,
    /// Generation models on the agent, measured one after the other.
    #[arg(long = "model", required = true)]
    models: Vec<String>,
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value_t = 64)]
    max_tokens: u32,
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

struct Run {
    ttft_ms: f64,
    tpot_ms: f64,
    prompt_tokens: u32,
    completion_tokens: u32,
    server_ttft_ms: f64,
    server_tpot_ms: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let ch = Endpoint::from_shared(a.agent.clone())?
        .tcp_nodelay(true)
        .connect()
        .await?;
    let client = pb::agent_client::AgentClient::new(ch);
    for model in &a.models {
        once(&client, model, &a).await?; // warm-up
        let mut runs = Vec::with_capacity(a.runs);
        for _ in 0..a.runs {
            runs.push(once(&client, model, &a).await?);
        }
        let first = &runs[0];
        anyhow::ensure!(
            runs.iter()
                .all(|r| r.completion_tokens == first.completion_tokens),
            "greedy runs of {model} produced different lengths"
        );
        println!(
            "{}",
            serde_json::json!({
                "bench": "generate", "engine": "agent", "model": model,
                "prompt_tokens": first.prompt_tokens, "new_tokens": first.completion_tokens,
                "ttft_ms": median(runs.iter().map(|r| r.ttft_ms).collect()),
                "tpot_ms": median(runs.iter().map(|r| r.tpot_ms).collect()),
                "server_ttft_ms": median(runs.iter().map(|r| r.server_ttft_ms).collect()),
                "server_tpot_ms": median(runs.iter().map(|r| r.server_tpot_ms).collect()),
                "runs": a.runs,
            })
        );
    }
    Ok(())
}

async fn once(
    client: &pb::agent_client::AgentClient<tonic::transport::Channel>,
    model: &str,
    a: &Args,
) -> anyhow::Result<Run> {
    let req = pb::GenerateRequest {
        model: model.into(),
        input: Some(pb::generate_request::Input::Chat(pb::ChatMessages {
            messages: vec![pb::ChatMessage {
                role: "user".into(),
                content: a.prompt.clone(),
                ..Default::default()
            }],
        })),
        max_tokens: a.max_tokens,
        ..Default::default()
    };
    let start = Instant::now();
    let mut stream = client.clone().generate(req).await?.into_inner();
    let mut first = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if first.is_none() && !chunk.text.is_empty() {
            first = Some(start.elapsed());
        }
        if let Some(done) = chunk.done {
            let total = start.elapsed();
            let first = first.unwrap_or(total);
            let usage = done.usage.unwrap_or_default();
            let n = usage.completion_tokens.max(1);
            return Ok(Run {
                ttft_ms: first.as_secs_f64() * 1e3,
                tpot_ms: (total - first).as_secs_f64() * 1e3
                    / f64::from(n.saturating_sub(1).max(1)),
                prompt_tokens: usage.prompt_tokens,
                completion_tokens: usage.completion_tokens,
                server_ttft_ms: done.time_to_first_token_ms,
                server_tpot_ms: done.time_per_output_token_ms,
            });
        }
    }
    anyhow::bail!("the stream of {model} ended without `done`")
}
