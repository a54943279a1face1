//! `make bench` part `routing`: the learned estimator's cost per decision — request features
//! (tokenise, mean of static token embeddings, lexical features) and one head per model —
//! on the committed item sets' prompts and on 512-token prompts, p50 / p99 on this machine.
//! Prints one JSON line. Needs `make models` (models/wordllama-l2-supercat-256).

use std::path::Path;
use std::time::{Duration, Instant};

use edgewise_gateway::adequacy::heads::{FORMAT, Head, Heads};
use edgewise_gateway::adequacy::{Features, features::LEXICAL};

fn percentile(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1e6
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // make models prepares it
    let features = Features::load(&root.join("models/wordllama-l2-supercat-256"))?;
    let mut prompts: Vec<String> = Vec::new();
    for set in ["eval/exact-answers.jsonl", "eval/mmlu-200.jsonl"] {
        for item in edgewise_cli::eval::items::load(&root.join(set))? {
            prompts.push(item.message());
        }
    }
    // long requests: MMLU prompts joined until past 512 tokens (the features read 512)
    let long: Vec<String> = prompts.chunks(6).map(|c| c.join("\n").repeat(2)).collect();
    // three heads, as for a three-model ladder; the weights' values do not change the cost
    let n = features.len();
    let heads = Heads {
        format: FORMAT.into(),
        embedding_sha256: features.embedding_sha256.clone(),
        lexical: LEXICAL.iter().map(|s| s.to_string()).collect(),
        features: n,
        heads: (0..3)
            .map(|k| Head {
                model: format!("m{k}"),
                weights: (0..n)
                    .map(|i| ((i * 31 + k) % 17) as f32 / 17.0 - 0.5)
                    .collect(),
                bias: 0.0,
            })
            .collect(),
        trained_on: "bench".into(),
    };
    let run = |texts: &[String], rounds: usize| {
        let mut times = Vec::with_capacity(texts.len() * rounds);
        let mut sink = 0f32;
        for _ in 0..rounds {
            for t in texts {
                let start = Instant::now();
                let x = features.of(t);
                let p = heads.predict(&x);
                times.push(start.elapsed());
                sink += p[0].1;
            }
        }
        std::hint::black_box(sink);
        times
    };
    run(&prompts, 1); // warm-up
    let mut short = run(&prompts, 20);
    let mut longs = run(&long, 20);
    println!(
        "{{\"bench\": \"adequacy\", \"prompts\": {}, \"long_prompts\": {}, \"p50_us\": {:.1}, \"p99_us\": {:.1}, \"long_p50_us\": {:.1}, \"long_p99_us\": {:.1}}}",
        prompts.len(),
        long.len(),
        percentile(&mut short, 0.5),
        percentile(&mut short, 0.99),
        percentile(&mut longs, 0.5),
        percentile(&mut longs, 0.99)
    );
    Ok(())
}
