//! `edgewise-bench`: the measurements behind BENCHMARKS.md. Each one has a reference taken in
//! the same run, because this machine is shared and noisy.
//!
//! - `overhead`: the same Classify requests straight to an agent and through the gateway,
//!   interleaved, open loop at fixed rates; the gateway's added latency at p50 and p99.
//! - `footprint`: binary sizes, the agent's cold start to READY and idle memory (with no
//!   models, and with one), against Python importing onnxruntime.

mod footprint;
mod overhead;
mod stats;

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
    /// Binary sizes, cold start to READY, idle RSS.
    Footprint(footprint::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        match cli.command {
            Command::Overhead(a) => overhead::run(a).await,
            Command::Footprint(a) => footprint::run(a).await,
        }
    })
}
