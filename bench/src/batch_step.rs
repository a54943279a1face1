//! The ceiling for batched decoding: the agent's own engine (decoder graph, K/V arena bound
//! in place) stepping `rows` sequences at once, with no server, queue or streaming around
//! it. The agent's aggregate throughput is reported against this.

use std::path::PathBuf;
use std::time::Instant;

use edgewise_agent::engine::decoder::Decoder;
use edgewise_agent::engine::kv::KvArena;
use edgewise_agent::engine::open_session;
use edgewise_agent::engine::sampling::argmax;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A model folder (model.onnx in the fused layout).
    #[arg(long)]
    model: PathBuf,
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    rows: Vec<usize>,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Cached positions per row before the timed steps (a typical chat prompt).
    #[arg(long, default_value_t = 100)]
    past: usize,
    #[arg(long, default_value_t = 64)]
    steps: usize,
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let rt = edgewise_agent::runtime::init(None)?;
    let session = open_session(rt, &a.model.join("model.onnx"), a.threads, None)?;
    let mut d = Decoder::new(session)?;
    let name = a
        .model
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // a prompt of ordinary token ids (the content does not change the cost)
    let prompt: Vec<u32> = (0..a.past as u32).map(|i| 300 + (i * 37) % 5000).collect();
    for &rows in &a.rows {
        let mut rates = Vec::new();
        for _ in 0..a.runs + 1 {
            let mut arena = KvArena::new(d.geometry, rows, a.past + a.steps + 1);
            let mut last = Vec::with_capacity(rows);
            for r in 0..rows {
                last.push(argmax(d.prefill(&mut arena, r, 0, &prompt)?));
            }
            let mut lens = vec![a.past; rows];
            let vocab = d.vocab;
            let start = Instant::now();
            for _ in 0..a.steps {
                let logits = d.decode(&mut arena, &last, &lens)?;
                for r in 0..rows {
                    last[r] = argmax(&logits[r * vocab..(r + 1) * vocab]);
                    lens[r] += 1;
                }
            }
            rates.push((rows * a.steps) as f64 / start.elapsed().as_secs_f64());
        }
        rates.remove(0); // the first run warms the session up
        rates.sort_by(f64::total_cmp);
        println!(
            "{}",
            serde_json::json!({
                "bench": "batch-step", "model": name, "rows": rows, "past": a.past,
                "tokens_per_s": rates[rates.len() / 2], "runs": a.runs,
            })
        );
    }
    Ok(())
}
