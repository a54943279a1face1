//! `edgewise-bench`: the measurements behind BENCHMARKS.md. Each one has a reference taken in
//! the same run, because this machine is shared and noisy.
//!
//! - `overhead`: the same Classify requests straight to an agent and through the gateway,
//!   interleaved, open loop at fixed rates; the gateway's added latency at p50 and p99.
//! - `http-front`: the same embedding through the gateway's gRPC and its OpenAI-compatible
//!   HTTP API, interleaved, open loop; what the HTTP front adds at p50 and p99.
//! - `footprint`: binary sizes, the agent's cold start to READY and idle memory (with no
//!   models, and with one), against Python importing onnxruntime.
//! - `embed`: embedding latency per text length and throughput per concurrency, with and
//!   without dynamic batching (the Python reference is `bench/reference.py embed`).
//! - `generate`: time to first token and decode time per token through the agent (the
//!   references are `bench/reference.py generate` and `llama`).
//! - `concurrency`: aggregate tokens/s of 1, 2, 4, 8 concurrent generations through the agent,
//!   against `batch-step` (the agent's engine stepping the same rows with no server) and
//!   llama.cpp's batch API (`bench/reference.py llama-batch`).
//! - `prefill-stall`: inter-token gaps of running streams while a long prompt arrives.
//! - `bandwidth`: memory copy bandwidth, the decode roofline's numerator.
//! - `fleet`: simulated agents streaming reports into one gateway.
//! - `cold-start`, `churn`: a request that must load its model against one on a resident
//!   model; callers cycling over three models under a budget for two.

mod bandwidth;
mod batch_step;
mod concurrency;
mod embed;
mod fleet;
mod footprint;
mod generate;
mod http_front;
mod inference;
mod overhead;
mod residency;
mod stats;
mod structured;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "edgewise-bench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Gateway overhead: direct vs through the gateway, interleaved, open loop.
    Overhead(overhead::Args),
    /// The data-class scan's share: a gateway that scans against one that does not.
    Inference(inference::Args),
    /// Structured output: the mask's cost per token, and decoding with a schema against without.
    Structured(structured::Args),
    /// The HTTP front against the gRPC front for the same request.
    HttpFront(http_front::Args),
    /// Binary sizes, cold start to READY, idle RSS.
    Footprint(footprint::Args),
    /// Embedding latency and throughput, batched and unbatched.
    Embed(embed::Args),
    /// Time to first token and decode time per token through the agent.
    Generate(generate::Args),
    /// Aggregate tokens/s of concurrent generations through the agent.
    Concurrency(concurrency::Args),
    /// Running streams' inter-token gaps while a long prompt arrives.
    PrefillStall(concurrency::StallArgs),
    /// The engine's batched decode step, no server (the ceiling for `concurrency`).
    BatchStep(batch_step::Args),
    /// Memory copy and read bandwidth.
    Bandwidth(bandwidth::Args),
    /// Simulated agents reporting into one gateway.
    Fleet(fleet::Args),
    /// First token with the model resident against right after an unload.
    ColdStart(residency::ColdArgs),
    /// Callers cycling over models under a memory budget.
    Churn(residency::ChurnArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        match cli.command {
            Command::Overhead(a) => overhead::run(a).await,
            Command::Inference(a) => inference::run(a).await,
            Command::Structured(a) => structured::run(a).await,
            Command::HttpFront(a) => http_front::run(a).await,
            Command::Footprint(a) => footprint::run(a).await,
            Command::Embed(a) => embed::run(a).await,
            Command::Generate(a) => generate::run(a).await,
            Command::Concurrency(a) => concurrency::run(a).await,
            Command::PrefillStall(a) => concurrency::stall(a).await,
            Command::BatchStep(a) => {
                tokio::task::spawn_blocking(move || batch_step::run(a)).await?
            }
            Command::Bandwidth(a) => tokio::task::spawn_blocking(move || bandwidth::run(a)).await?,
            Command::Fleet(a) => fleet::run(a).await,
            Command::ColdStart(a) => residency::cold_start(a).await,
            Command::Churn(a) => residency::churn(a).await,
        }
    })
}
