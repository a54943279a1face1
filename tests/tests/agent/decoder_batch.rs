//! The decoder engine: the K/V cache bound in place equals full recomputation, batched decode
//! steps equal each sequence decoded alone, and the batch loop's joins, cancellations,
//! deadlines and K/V budget leave the other sequences untouched.

use edgewise_tests::harness as common;

use std::time::{Duration, Instant};

use common::*;
use edgewise_agent::batch::{BatchConfig, BatchHandle, SequenceEvent, SequenceRequest};
use edgewise_agent::engine::decoder::Decoder;
use edgewise_agent::engine::kv::KvArena;
use edgewise_agent::engine::open_session;
use edgewise_agent::engine::sampling::{SamplingParams, argmax};
use tokio::sync::mpsc;

fn decoder(name: &str) -> Decoder {
    let rt = edgewise_agent::runtime::init(None).unwrap();
    let session = open_session(rt, &fixtures().join(name).join("model.onnx"), 1, None).unwrap();
    Decoder::new(session).unwrap()
}

/// Byte-level fixture tokenizer: ids 0..255 are the bytes.
fn bytes(s: &str) -> Vec<u32> {
    s.bytes().map(u32::from).collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Greedy decoding of one prompt alone: the tokens and the logits that chose each.
fn alone(d: &mut Decoder, prompt: &[u32], n: usize) -> (Vec<u32>, Vec<Vec<f32>>) {
    let mut arena = KvArena::new(d.geometry, 1, prompt.len() + n);
    let mut logits = d.prefill(&mut arena, 0, 0, prompt).unwrap().to_vec();
    let (mut tokens, mut all) = (Vec::new(), Vec::new());
    for i in 0..n {
        let t = argmax(&logits);
        tokens.push(t);
        all.push(logits.clone());
        if i + 1 < n {
            logits = d
                .decode(&mut arena, &[t], &[prompt.len() + i])
                .unwrap()
                .to_vec();
        }
    }
    (tokens, all)
}

fn cached_equals_full(name: &str) -> (Vec<u32>, Vec<u32>, f32) {
    let mut d = decoder(name);
    let prompt = bytes("Hello, tiny LM!");
    let (cached, logits) = alone(&mut d, &prompt, 24);
    let (mut full, mut worst) = (Vec::new(), 0f32);
    let mut seq = prompt.clone();
    for (t, l) in cached.iter().zip(&logits) {
        // from scratch: the whole sequence in one prefill of a fresh cache
        let mut arena = KvArena::new(d.geometry, 1, seq.len());
        let f = d.prefill(&mut arena, 0, 0, &seq).unwrap();
        worst = worst.max(max_diff(l, f));
        full.push(argmax(f));
        seq.push(*t);
    }
    (cached, full, worst)
}

#[test]
fn kv_cache_equals_full_recompute_fp32_exactly() {
    let (cached, full, worst) = cached_equals_full("tiny-lm-fp32");
    assert_eq!(cached, full);
    assert!(
        worst < 1e-4,
        "cached and recomputed logits differ by {worst}"
    );
}

#[test]
fn kv_cache_equals_full_recompute_8_and_4_bit_by_tokens() {
    for name in ["tiny-lm-int8", "tiny-lm-q4"] {
        let (cached, full, _) = cached_equals_full(name);
        assert_eq!(cached, full, "{name}");
    }
}

#[test]
fn a_prompt_prefilled_in_chunks_equals_one_prefill() {
    let mut d = decoder("tiny-lm-fp32");
    let prompt = bytes("A longer prompt, prefilled in chunks of five tokens.");
    let mut arena = KvArena::new(d.geometry, 1, prompt.len());
    let whole = d.prefill(&mut arena, 0, 0, &prompt).unwrap().to_vec();
    let mut arena = KvArena::new(d.geometry, 1, prompt.len());
    let mut last = Vec::new();
    for (i, chunk) in prompt.chunks(5).enumerate() {
        last = d.prefill(&mut arena, 0, i * 5, chunk).unwrap().to_vec();
    }
    assert!(max_diff(&whole, &last) < 1e-4);
}

/// Four prompts of different lengths join a shared batch at different steps (row r joins
/// after r decode steps of the others); every row's logits equal its own decoding alone.
fn batched_vs_alone(name: &str) -> (Vec<Vec<u32>>, Vec<Vec<u32>>, f32) {
    let mut d = decoder(name);
    let prompts: Vec<Vec<u32>> = ["Hi", "Hello, tiny LM!", "The quick brown fox jumps", "x"]
        .iter()
        .map(|s| bytes(s))
        .collect();
    let n = 12;
    let solo: Vec<(Vec<u32>, Vec<Vec<f32>>)> =
        prompts.iter().map(|p| alone(&mut d, p, n)).collect();
    let cap = prompts.iter().map(Vec::len).max().unwrap() + n;
    let mut arena = KvArena::new(d.geometry, prompts.len(), cap);
    // per row: cached positions, tokens so far, logits seen
    let mut lens: Vec<usize> = Vec::new();
    let mut got: Vec<Vec<u32>> = Vec::new();
    let mut worst = 0f32;
    let vocab = d.vocab;
    for step in 0..n + prompts.len() {
        if step < prompts.len() {
            let r = step;
            let l = d.prefill(&mut arena, r, 0, &prompts[r]).unwrap().to_vec();
            worst = worst.max(max_diff(&l, &solo[r].1[0]));
            lens.push(prompts[r].len());
            got.push(vec![argmax(&l)]);
        }
        let live: Vec<usize> = (0..got.len()).filter(|&r| got[r].len() < n).collect();
        if live.len() < got.len() {
            // rows that finished stay in the slice (only the leading slice is bound); they are
            // fed a token and their results ignored
        }
        if live.is_empty() {
            break;
        }
        let tokens: Vec<u32> = got.iter().map(|g| *g.last().unwrap()).collect();
        let logits = d.decode(&mut arena, &tokens, &lens).unwrap().to_vec();
        for r in 0..got.len() {
            lens[r] += 1;
            if got[r].len() < n {
                let l = &logits[r * vocab..(r + 1) * vocab];
                worst = worst.max(max_diff(l, &solo[r].1[got[r].len()]));
                got[r].push(argmax(l));
            }
        }
    }
    let solo_tokens = solo.into_iter().map(|(t, _)| t).collect();
    (got, solo_tokens, worst)
}

#[test]
fn batched_decode_equals_each_sequence_alone_fp32_within_1e4() {
    for name in ["tiny-lm-fp32", "tiny-qwen2-fp32"] {
        let (batched, solo, worst) = batched_vs_alone(name);
        assert_eq!(batched, solo, "{name}");
        assert!(
            worst < 1e-4,
            "{name}: batched and single logits differ by {worst}"
        );
    }
}

#[test]
fn batched_decode_equals_each_sequence_alone_4_and_8_bit_by_tokens() {
    // the int8-compute kernels round differently per batch shape: compare tokens
    for name in ["tiny-lm-q4", "tiny-lm-int8", "tiny-qwen2-q4"] {
        let (batched, solo, _) = batched_vs_alone(name);
        assert_eq!(batched, solo, "{name}");
    }
}

// ---------------------------------------------------------------- the batch loop

fn handle(name: &str, kv_budget_bytes: u64, prefill_chunk: usize) -> BatchHandle {
    BatchHandle::spawn(
        decoder(name),
        BatchConfig {
            kv_budget_bytes,
            prefill_chunk,
        },
        name,
    )
    .unwrap()
}

fn sequence(
    prompt: &str,
    max_tokens: u32,
    deadline: Option<Instant>,
) -> (SequenceRequest, mpsc::UnboundedReceiver<SequenceEvent>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let seq = SequenceRequest::new(
        bytes(prompt),
        max_tokens,
        Vec::new(),
        SamplingParams::greedy(),
        0,
        deadline,
        tx,
    );
    (seq, rx)
}

fn submit(
    h: &BatchHandle,
    prompt: &str,
    max_tokens: u32,
    deadline: Option<Instant>,
) -> mpsc::UnboundedReceiver<SequenceEvent> {
    let (seq, rx) = sequence(prompt, max_tokens, deadline);
    assert!(h.submit(seq).is_ok());
    rx
}

/// Every prompt, submitted at once: they share the loop's steps however the threads are
/// scheduled.
fn submit_together(
    h: &BatchHandle,
    max_tokens: u32,
) -> Vec<mpsc::UnboundedReceiver<SequenceEvent>> {
    let (seqs, rxs): (Vec<_>, Vec<_>) = PROMPTS
        .iter()
        .map(|p| sequence(p, max_tokens, None))
        .unzip();
    assert!(h.submit_all(seqs).is_ok());
    rxs
}

/// Every token until the sequence ends, and how it ended.
fn drain(rx: &mut mpsc::UnboundedReceiver<SequenceEvent>) -> (Vec<u32>, SequenceEvent) {
    let mut tokens = Vec::new();
    loop {
        match rx.blocking_recv().expect("the loop dropped the sequence") {
            SequenceEvent::Token { id, .. } => tokens.push(id),
            end => return (tokens, end),
        }
    }
}

const PROMPTS: [&str; 4] = [
    "Hi",
    "Hello, tiny LM!",
    "The quick brown fox jumps over the lazy dog",
    "x",
];

fn solo_tokens(name: &str, n: usize) -> Vec<Vec<u32>> {
    let mut d = decoder(name);
    PROMPTS
        .iter()
        .map(|p| alone(&mut d, &bytes(p), n).0)
        .collect()
}

#[test]
fn concurrent_sequences_get_the_tokens_they_get_alone() {
    let solo = solo_tokens("tiny-lm-fp32", 40);
    // prefill chunks of 7 tokens: the long prompt joins over several steps
    let h = handle("tiny-lm-fp32", 64 << 20, 7);
    let mut rxs = submit_together(&h, 40);
    for (r, rx) in rxs.iter_mut().enumerate() {
        let (tokens, end) = drain(rx);
        assert_eq!(end, SequenceEvent::Length { incomplete: false });
        assert_eq!(tokens, solo[r], "sequence {r}");
    }
    let stats = &h.stats;
    let (steps, rows) = (
        stats
            .decode_steps
            .load(std::sync::atomic::Ordering::Relaxed),
        stats.decode_rows.load(std::sync::atomic::Ordering::Relaxed),
    );
    assert!(
        rows > steps,
        "no decode step ran more than one row ({rows} rows in {steps} steps)"
    );
}

#[test]
fn a_cancelled_sequence_leaves_the_others_unchanged() {
    let solo = solo_tokens("tiny-lm-fp32", 60);
    let h = handle("tiny-lm-fp32", 64 << 20, 128);
    let mut rxs = submit_together(&h, 60);
    // sequence 1 leaves after 5 tokens: its row is refilled by moving the last row down
    let mut gone = rxs.remove(1);
    for _ in 0..5 {
        assert!(matches!(
            gone.blocking_recv(),
            Some(SequenceEvent::Token { .. })
        ));
    }
    drop(gone);
    for (i, rx) in rxs.iter_mut().enumerate() {
        let r = if i == 0 { 0 } else { i + 1 };
        let (tokens, end) = drain(rx);
        assert_eq!(end, SequenceEvent::Length { incomplete: false });
        assert_eq!(tokens, solo[r], "sequence {r}");
    }
}

#[test]
fn a_deadline_ends_its_own_sequence_only() {
    let solo = solo_tokens("tiny-lm-fp32", 200);
    let long = {
        let mut d = decoder("tiny-lm-fp32");
        alone(&mut d, &bytes(PROMPTS[1]), 480).0
    };
    let h = handle("tiny-lm-fp32", 64 << 20, 128);
    let mut others: Vec<_> = [0, 2, 3]
        .iter()
        .map(|&r| submit(&h, PROMPTS[r], 200, None))
        .collect();
    // an already-passed deadline: ended before its first step, no token
    let mut late = submit(&h, PROMPTS[1], 200, Some(Instant::now()));
    assert_eq!(
        drain(&mut late),
        (Vec::new(), SequenceEvent::DeadlineExceeded { generated: 0 })
    );
    // one that passes mid-stream (480 steps take far longer than 5 ms): the tokens it got,
    // each the one it gets alone, then the deadline, and nothing after
    let mut mid = submit(
        &h,
        PROMPTS[1],
        480,
        Some(Instant::now() + Duration::from_millis(5)),
    );
    let (tokens, end) = drain(&mut mid);
    match end {
        SequenceEvent::DeadlineExceeded { generated } => {
            assert_eq!(generated as usize, tokens.len());
            assert!(tokens.len() < 480);
            assert_eq!(tokens[..], long[..tokens.len()]);
        }
        other => panic!("ended with {other:?}"),
    }
    assert!(mid.blocking_recv().is_none(), "a token after the deadline");
    for (rx, r) in others.iter_mut().zip([0, 2, 3]) {
        let (tokens, end) = drain(rx);
        assert_eq!(end, SequenceEvent::Length { incomplete: false });
        assert_eq!(tokens, solo[r], "sequence {r}");
    }
}

#[test]
fn the_kv_budget_queues_what_does_not_fit_and_never_overcommits() {
    let d = decoder("tiny-lm-fp32");
    let per_position = d.geometry.bytes_per_position();
    drop(d);
    // room for one sequence of up to 128 positions (the loop allocates in steps of 64)
    let budget = per_position * 128;
    let h = handle("tiny-lm-fp32", budget, 128);
    let solo = solo_tokens("tiny-lm-fp32", 100);
    // submitted together, so the second is in the queue while the first holds the budget
    // (one after the other, the first could finish before the second arrives)
    let (a, mut first) = sequence(PROMPTS[0], 100, None);
    let (b, mut second) = sequence(PROMPTS[2], 60, None);
    assert!(h.submit_all(vec![a, b]).is_ok());
    // the second waits for the first to leave
    let (tokens, end) = drain(&mut first);
    assert_eq!(
        (tokens, end),
        (solo[0].clone(), SequenceEvent::Length { incomplete: false })
    );
    let waited = h
        .stats
        .kv_waits_total
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(waited, 1, "the second sequence never waited for K/V room");
    let (tokens, end) = drain(&mut second);
    assert_eq!(end, SequenceEvent::Length { incomplete: false });
    assert_eq!(tokens[..], solo[2][..60]);
    let peak = h
        .stats
        .kv_bytes_high_water
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        peak > 0 && peak <= budget,
        "{peak} bytes held at once, budget {budget}"
    );
    // one that cannot fit even alone is refused with the reason
    let mut huge = submit(&h, PROMPTS[0], 400, None);
    match drain(&mut huge) {
        (t, SequenceEvent::Failed(why)) if t.is_empty() => {
            assert!(
                why.contains("K/V cache") && why.contains(&budget.to_string()),
                "{why}"
            )
        }
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------- constrained decoding

fn vocabulary(name: &str, logits: usize) -> edgewise_constraint::Vocabulary {
    let json = std::fs::read(fixtures().join(name).join("tokenizer.json")).unwrap();
    let tokenize: edgewise_constraint::Tokenize =
        std::sync::Arc::new(|s: &[u8]| bytes(&String::from_utf8_lossy(s)));
    edgewise_constraint::Vocabulary::from_tokenizer_json(&json, logits, &[257], tokenize).unwrap()
}

const SCHEMA: &str = r#"{"type":"object","properties":{"n":{"type":"integer","minimum":0,"maximum":99},
    "pick":{"enum":["red","green"]}},"required":["n","pick"],"additionalProperties":false}"#;

fn constraint(i: usize) -> Option<edgewise_proto::Constraint> {
    use edgewise_proto::constraint::Kind;
    let kind = match i {
        0 => Kind::JsonSchema(SCHEMA.into()),
        2 => Kind::Choice(edgewise_proto::Choice {
            options: vec!["alpha".into(), "beta".into(), "gamma delta".into()],
        }),
        _ => return None,
    };
    Some(edgewise_proto::Constraint { kind: Some(kind) })
}

/// Prompts 0 and 2 constrained, 1 and 3 free, greedy, with end-of-sequence 257.
fn constrained_sequences(
    vocab: &edgewise_constraint::Vocabulary,
) -> (
    Vec<SequenceRequest>,
    Vec<mpsc::UnboundedReceiver<SequenceEvent>>,
) {
    PROMPTS
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let (tx, rx) = mpsc::unbounded_channel();
            let guide = constraint(i).map(|c| vocab.compile(&c).unwrap());
            let seq = SequenceRequest::new(
                bytes(p),
                48,
                vec![257],
                SamplingParams::greedy(),
                0,
                None,
                tx,
            )
            .with_guide(guide);
            (seq, rx)
        })
        .unzip()
}

#[test]
fn constrained_and_free_sequences_in_one_batch_get_what_they_get_alone() {
    let h = handle("tiny-lm-fp32", 64 << 20, 128);
    let vocab = vocabulary("tiny-lm-fp32", h.vocab);
    // alone: one sequence at a time through the same loop
    let (seqs, mut rxs) = constrained_sequences(&vocab);
    let mut solo = Vec::new();
    for (seq, rx) in seqs.into_iter().zip(rxs.iter_mut()) {
        assert!(h.submit(seq).is_ok());
        solo.push(drain(rx));
    }
    // together: one batch
    let (seqs, mut rxs) = constrained_sequences(&vocab);
    assert!(h.submit_all(seqs).is_ok());
    for (r, rx) in rxs.iter_mut().enumerate() {
        assert_eq!(drain(rx), solo[r], "sequence {r}");
    }
    // the constrained outputs completed and match their constraints; the free ones did not
    // happen to (the random model left alone writes neither)
    let text = |t: &[u32]| {
        String::from_utf8_lossy(&t.iter().map(|&b| b as u8).collect::<Vec<u8>>()).into_owned()
    };
    let (json, end) = (&solo[0].0, &solo[0].1);
    assert!(
        matches!(end, SequenceEvent::Eos { .. }),
        "{end:?}: {}",
        text(json)
    );
    let v: serde_json::Value = serde_json::from_str(&text(json)).unwrap();
    assert!(v["n"].as_u64().is_some_and(|n| n <= 99), "{v}");
    assert!(
        ["red", "green"].contains(&v["pick"].as_str().unwrap_or("")),
        "{v}"
    );
    assert!(matches!(solo[2].1, SequenceEvent::Eos { .. }));
    assert!(["alpha", "beta", "gamma delta"].contains(&text(&solo[2].0).as_str()));
    assert!(serde_json::from_str::<serde_json::Value>(&text(&solo[1].0)).is_err());
}

#[test]
fn a_constrained_sequence_cut_by_max_tokens_is_marked_incomplete() {
    let h = handle("tiny-lm-fp32", 64 << 20, 128);
    let vocab = vocabulary("tiny-lm-fp32", h.vocab);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let guide = vocab.compile(&constraint(0).unwrap()).unwrap();
    let seq = SequenceRequest::new(
        bytes("x"),
        5,
        vec![257],
        SamplingParams::greedy(),
        0,
        None,
        tx,
    )
    .with_guide(Some(guide));
    assert!(h.submit(seq).is_ok());
    let (tokens, end) = drain(&mut rx);
    assert_eq!(tokens.len(), 5);
    assert_eq!(end, SequenceEvent::Length { incomplete: true });
}
