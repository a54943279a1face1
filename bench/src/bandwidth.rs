//! Memory bandwidth, for the decode roofline: a 1 GiB copy split across `threads`
//! threads, best of `runs`. Reported as bytes moved (read + written) per second, and the
//! read-only rate of summing the same buffer.

use std::time::Instant;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long, default_value_t = 2)]
    threads: usize,
    #[arg(long, default_value_t = 1024)]
    mib: usize,
    #[arg(long, default_value_t = 5)]
    runs: usize,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let words = a.mib * 1024 * 1024 / 8;
    let src: Vec<u64> = (0..words as u64).collect();
    let mut dst = vec![0u64; words];
    let chunk = words.div_ceil(a.threads.max(1));
    let bytes = (words * 8) as f64;
    let (mut copy, mut read) = (0f64, 0f64);
    for _ in 0..a.runs.max(1) {
        let t = Instant::now();
        std::thread::scope(|s| {
            for (d, s_) in dst.chunks_mut(chunk).zip(src.chunks(chunk)) {
                s.spawn(move || d.copy_from_slice(s_));
            }
        });
        copy = copy.max(2.0 * bytes / t.elapsed().as_secs_f64());
        let t = Instant::now();
        let sum: u64 = std::thread::scope(|s| {
            let parts: Vec<_> = src
                .chunks(chunk)
                .map(|c| s.spawn(move || c.iter().fold(0u64, |acc, v| acc.wrapping_add(*v))))
                .collect();
            parts
                .into_iter()
                .map(|p| p.join().unwrap_or(0))
                .fold(0u64, u64::wrapping_add)
        });
        read = read.max(bytes / t.elapsed().as_secs_f64());
        std::hint::black_box(sum);
    }
    std::hint::black_box(&dst);
    println!(
        "{}",
        serde_json::json!({
            "bench": "bandwidth", "threads": a.threads, "mib": a.mib,
            "copy_gb_per_s": copy / 1e9, "read_gb_per_s": read / 1e9,
        })
    );
    Ok(())
}
