//! Data-class inference, measured (`bench/run.sh dataclass`), one core, JSON lines:
//! - `quality`: per category, precision and recall on the committed labelled sets
//!   (`eval/dataclass/{dev,held-out}.jsonl`, document level: a text's categories found vs
//!   labelled), and texts with nothing labelled that were flagged;
//! - `prose`: 1 KB chunks of ordinary prose (`build/prose`, `tools/fetch_prose.sh`) flagged at
//!   the confidential floor, per 10 MB, and per category;
//! - `cost`: the scan's time per request at 1 KB and 64 KB over documentation, PII-dense text
//!   and prose, p50 / p99 against the same run's copy of the text (`memchr`-free byte sum: a
//!   floor for any scan that reads every byte).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use edgewise_gateway::dataclass;
use edgewise_gateway::routing::{Category, DataClass, Floors};

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn load(set: &str) -> Vec<(String, Vec<String>)> {
    let text = std::fs::read_to_string(root().join(format!("eval/dataclass/{set}.jsonl")))
        .unwrap_or_else(|e| panic!("{set}: {e}"));
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}"));
            let types = v["types"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|t| t.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            (v["text"].as_str().unwrap_or_default().to_string(), types)
        })
        .collect()
}

fn categories(text: &str) -> Vec<&'static str> {
    let f = dataclass::scan([text], Duration::from_secs(5));
    let mut c: Vec<&str> = f.detections.iter().map(|d| d.category.as_str()).collect();
    c.sort_unstable();
    c.dedup();
    c
}

fn quality(set: &str) {
    let rows = load(set);
    let mut counts: BTreeMap<&str, (u32, u32, u32)> = BTreeMap::new(); // tp, fp, fn
    let mut clean_flagged = 0;
    let mut clean = 0;
    for (text, gold) in &rows {
        let found = categories(text);
        for c in Category::ALL.iter().map(|c| c.as_str()) {
            let (g, f) = (gold.iter().any(|x| x == c), found.contains(&c));
            let e = counts.entry(c).or_default();
            match (g, f) {
                (true, true) => e.0 += 1,
                (false, true) => e.1 += 1,
                (true, false) => e.2 += 1,
                _ => {}
            }
            // EDGEWISE_BENCH_MISSES=1: each miss and false positive, for tuning on `dev`
            if g != f && std::env::var_os("EDGEWISE_BENCH_MISSES").is_some() {
                eprintln!(
                    "{set} {c} {}: {text:?}",
                    if g { "missed" } else { "false positive" }
                );
            }
        }
        if gold.is_empty() {
            clean += 1;
            clean_flagged += u32::from(!found.is_empty());
        }
    }
    for (c, (tp, fp, fn_)) in counts {
        println!(
            "{}",
            serde_json::json!({"bench": "dataclass-quality", "set": set, "category": c,
                "labelled": tp + fn_, "found": tp, "false_positives": fp,
                "recall": f64::from(tp) / f64::from((tp + fn_).max(1)),
                "precision": f64::from(tp) / f64::from((tp + fp).max(1))})
        );
    }
    println!(
        "{}",
        serde_json::json!({"bench": "dataclass-quality", "set": set, "category": "none",
            "texts": clean, "flagged": clean_flagged})
    );
}

/// `text` cut into chunks of about `size` bytes at line ends.
fn chunks(text: &str, size: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < text.len() {
        let mut end = (start + size).min(text.len());
        while !text.is_char_boundary(end) {
            end += 1;
        }
        if let Some(nl) = text[end..].find('\n').filter(|n| *n < 256) {
            end += nl + 1;
        }
        out.push(&text[start..end]);
        start = end;
    }
    out
}

fn prose(name: &str, text: &str) {
    let floors = Floors::default();
    let parts = chunks(text, 1024);
    let mut confidential = 0;
    let mut by: BTreeMap<&str, u32> = BTreeMap::new();
    for c in &parts {
        let f = dataclass::scan([*c], Duration::from_secs(5));
        if floors.inferred("", &f) >= Some(DataClass::Confidential) {
            confidential += 1;
        }
        for d in &f.detections {
            *by.entry(d.detector).or_default() += 1;
        }
    }
    let mb10 = text.len() as f64 / 10e6;
    println!(
        "{}",
        serde_json::json!({"bench": "dataclass-prose", "corpus": name, "bytes": text.len(),
            "chunks": parts.len(), "confidential_chunks": confidential,
            "confidential_per_10mb": f64::from(confidential) / mb10, "by_detector": by})
    );
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn cost(name: &str, text: &str) {
    for size in [1024usize, 65536] {
        let parts = chunks(text, size);
        let n = if size == 1024 { 4000 } else { 300 };
        let (mut scan, mut reference) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for i in 0..n {
            let part = parts[i % parts.len()];
            let t = Instant::now();
            std::hint::black_box(dataclass::scan([part], Duration::from_secs(5)));
            scan.push(t.elapsed().as_secs_f64() * 1e6);
            // the reference: reading every byte once
            let t = Instant::now();
            std::hint::black_box(part.bytes().fold(0u64, |a, b| a.wrapping_add(u64::from(b))));
            reference.push(t.elapsed().as_secs_f64() * 1e6);
        }
        println!(
            "{}",
            serde_json::json!({"bench": "dataclass-cost", "text": name, "bytes": size,
                "p50_us": percentile(&mut scan, 0.5), "p99_us": percentile(&mut scan, 0.99),
                "reference_p50_us": percentile(&mut reference, 0.5)})
        );
    }
}

fn main() {
    // criterion's arguments (`--bench`) are not ours
    if std::env::args().any(|a| a == "--test") {
        return;
    }
    dataclass::ready().unwrap_or_else(|e| panic!("{e}"));
    for set in ["dev", "held-out"] {
        quality(set);
    }
    let prose_dir = root().join("build/prose");
    let kjv = std::fs::read_to_string(prose_dir.join("kjv.txt")).ok();
    let docs = std::fs::read_to_string(prose_dir.join("python-docs.txt")).ok();
    if let (Some(kjv), Some(docs)) = (&kjv, &docs) {
        prose("kjv", kjv);
        prose("python-docs", docs);
    } else {
        eprintln!("build/prose is missing (tools/fetch_prose.sh): no prose measurements");
    }
    let dense: String = load("held-out")
        .into_iter()
        .chain(load("dev"))
        .map(|(t, _)| t + "\n")
        .collect();
    cost("pii-dense", &dense.repeat(3));
    if let (Some(kjv), Some(docs)) = (&kjv, &docs) {
        cost("python-docs", docs);
        cost("kjv", kjv);
    }
}
