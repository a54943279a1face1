//! Replays every checked-in fuzz corpus (`fuzz/corpus/<target>/`) through the same entry
//! points the libFuzzer targets call: no input may panic. The corpora are the seeds written by
//! `fuzz/seeds.py` plus what `cargo +nightly fuzz run` found, minimised.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{}: the corpus is missing", dir.display());
    for f in &files {
        let data = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        if std::panic::catch_unwind(|| run(&data)).is_err() {
            panic!("{target}: {} makes the target panic", f.display());
        }
    }
}

#[test]
fn policy_parser_corpus() {
    replay("policy_parser", edgewise_gateway::fuzzing::policy);
}

#[test]
fn manifest_parser_corpus() {
    replay("manifest_parser", edgewise_agent::fuzzing::manifest);
}

#[test]
fn request_validation_corpus() {
    replay("request_validation", edgewise_gateway::fuzzing::request);
}
