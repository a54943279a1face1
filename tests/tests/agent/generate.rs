//! Generation through the agent: streaming, sampling, stops, context limits and deadlines
//! (the engine itself: decoder_batch.rs).

use edgewise_tests::harness as common;

use std::time::Duration;

use common::*;
use edgewise_agent::batch::BatchConfig;
use edgewise_agent::engine::decoder::Decoder;
use edgewise_agent::engine::kv::KvArena;
use edgewise_agent::engine::open_session;
use edgewise_agent::engine::sampling::argmax;
use edgewise_agent::models::LoadedModel;
use edgewise_agent::models::manifest::Manifest;
use edgewise_proto as pb;

fn load(name: &str) -> LoadedModel {
    let rt = edgewise_agent::runtime::init(None).unwrap();
    let dir = fixtures().join(name);
    let m = Manifest::load(&dir.join("model.toml")).unwrap();
    LoadedModel::load(&dir, m, rt, 1, BatchConfig::default(), None).unwrap()
}

/// Greedy tokens straight from the decoder (no batch loop, no server).
fn greedy(name: &str, prompt: &[u32], n: usize) -> Vec<u32> {
    let rt = edgewise_agent::runtime::init(None).unwrap();
    let session = open_session(rt, &fixtures().join(name).join("model.onnx"), 1, None).unwrap();
    let mut d = Decoder::new(session).unwrap();
    let mut arena = KvArena::new(d.geometry, 1, prompt.len() + n);
    let mut t = argmax(d.prefill(&mut arena, 0, 0, prompt).unwrap());
    let mut out = vec![t];
    while out.len() < n {
        let len = prompt.len() + out.len() - 1;
        t = argmax(d.decode(&mut arena, &[t], &[len]).unwrap());
        out.push(t);
    }
    out
}

#[tokio::test]
async fn streams_the_same_greedy_text_as_the_engine() {
    let dir = models_dir(&["tiny-lm-fp32", "tiny-lm-q4"]);
    let (cfg, state) = config(dir.path(), None);
    let mut a = TestAgent::start(cfg, state).await;
    let m = load("tiny-lm-fp32");
    let prompt = m.encode_prompt("Hello, tiny LM!").unwrap();
    let tokens = greedy("tiny-lm-fp32", &prompt, 20);
    let expected = m.decode(&tokens);

    let mut stream = a
        .client
        .generate(prompt_req("tiny-lm-fp32", 20))
        .await
        .unwrap()
        .into_inner();
    let (mut text, mut chunks, mut done) = (String::new(), 0, None);
    while let Some(c) = stream.message().await.unwrap() {
        chunks += 1;
        text.push_str(&c.text);
        done = c.done.or(done);
    }
    let done = done.expect("final chunk");
    // the random model emits invalid bytes too, whose U+FFFD replacements depend on where the
    // stream splits them; every valid character must arrive, in order
    assert_eq!(valid_chars(&text), valid_chars(&expected));
    assert!(!valid_chars(&expected).is_empty());
    assert!(
        chunks > 2,
        "text arrives as it is generated, not in one message ({chunks} chunks)"
    );
    assert_eq!(done.finish_reason, pb::FinishReason::Length as i32);
    assert_eq!(
        done.usage,
        Some(pb::Usage {
            prompt_tokens: prompt.len() as u32,
            completion_tokens: 20
        })
    );

    // the 4-bit model runs too (its text is not asserted: MatMulNBits is not bit-stable)
    let (_, done) = collect(&mut a.client, prompt_req("tiny-lm-q4", 8))
        .await
        .unwrap();
    assert_eq!(done.usage.unwrap().completion_tokens, 8);
    a.stop().await;
}

fn valid_chars(s: &str) -> String {
    s.chars().filter(|&c| c != '\u{FFFD}').collect()
}

fn prompt_req(model: &str, max_tokens: u32) -> pb::GenerateRequest {
    prompt(model, "Hello, tiny LM!", max_tokens)
}

#[tokio::test]
async fn stop_sequences_cut_the_text_and_seeds_repeat() {
    let dir = models_dir(&["tiny-lm-fp32"]);
    let (cfg, state) = config(dir.path(), None);
    let mut a = TestAgent::start(cfg, state).await;
    let (full, _) = collect(&mut a.client, prompt_req("tiny-lm-fp32", 30))
        .await
        .unwrap();
    let chars: Vec<char> = full.chars().collect();
    assert!(chars.len() > 12, "{full:?}");
    let stop: String = chars[8..11].iter().collect();
    let cut = full.find(&stop).unwrap();
    let mut req = prompt_req("tiny-lm-fp32", 30);
    req.stop = vec![stop.clone()];
    let (text, done) = collect(&mut a.client, req).await.unwrap();
    assert_eq!(text, full[..cut]);
    assert_eq!(done.finish_reason, pb::FinishReason::StopSequence as i32);

    let sampled = |seed| {
        let mut r = prompt_req("tiny-lm-fp32", 24);
        r.temperature = 1.0;
        r.top_p = 0.95;
        r.seed = Some(seed);
        r
    };
    let (a1, _) = collect(&mut a.client, sampled(7)).await.unwrap();
    let (a2, _) = collect(&mut a.client, sampled(7)).await.unwrap();
    let (b1, _) = collect(&mut a.client, sampled(8)).await.unwrap();
    assert_eq!(a1, a2, "the same seed gives the same text");
    assert_ne!(a1, b1, "different seeds give different text");
    a.stop().await;
}

#[tokio::test]
async fn chat_messages_use_the_template_and_bad_requests_are_named() {
    let dir = models_dir(&["tiny-lm-fp32", "tiny-embed"]);
    let (cfg, state) = config(dir.path(), None);
    let mut a = TestAgent::start(cfg, state).await;
    let chat = pb::GenerateRequest {
        model: "tiny-lm-fp32".into(),
        input: Some(pb::generate_request::Input::Chat(pb::ChatMessages {
            messages: vec![pb::ChatMessage {
                role: "user".into(),
                content: "hi".into(),
                ..Default::default()
            }],
        })),
        max_tokens: 4,
        ..Default::default()
    };
    let (_, done) = collect(&mut a.client, chat).await.unwrap();
    // "<user>hi\n<assistant>" in the byte-level tokenizer: 20 tokens
    assert_eq!(
        done.usage.unwrap().prompt_tokens,
        "<user>hi\n<assistant>".len() as u32
    );

    let err = collect(&mut a.client, prompt_req("tiny-lm-fp32", 600))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        err.message(),
        "prompt (15 tokens) + max_tokens (600) exceeds the context length (512) of model `tiny-lm-fp32`"
    );
    let err = collect(&mut a.client, prompt_req("nope", 4))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        err.message(),
        "unknown model `nope`; this agent serves: tiny-embed, tiny-lm-fp32"
    );
    let err = collect(&mut a.client, prompt_req("tiny-embed", 4))
        .await
        .unwrap_err();
    assert_eq!(
        err.message(),
        "model `tiny-embed` is a embed model; Generate needs a generate model"
    );
    let mut bad = prompt_req("tiny-lm-fp32", 4);
    bad.temperature = f32::NAN;
    let err = collect(&mut a.client, bad).await.unwrap_err();
    assert_eq!(err.message(), "temperature NaN must be in 0..=5");
    a.stop().await;
}

#[tokio::test]
async fn a_deadline_stops_generation_and_frees_the_slot() {
    let dir = models_dir(&["tiny-lm-fp32"]);
    let (cfg, state) = config(dir.path(), None);
    let a = TestAgent::start(cfg, state).await;
    let slot = a.slot("tiny-lm-fp32");
    // The caller reads one chunk and then stops reading: generation blocks on the full
    // stream buffer, and the deadline (not the end of the text) must end it.
    let mut req = tonic::Request::new(prompt_req("tiny-lm-fp32", 490));
    req.set_timeout(Duration::from_millis(300));
    let mut slow = slow_reader(&a.url).await;
    let mut stream = slow.generate(req).await.unwrap().into_inner();
    assert!(stream.message().await.unwrap().is_some());
    wait_for(
        "the generation to stop",
        Duration::from_secs(10),
        || async {
            slot.stats
                .in_flight
                .load(std::sync::atomic::Ordering::SeqCst)
                == 0
        },
    )
    .await;
    let generated = slot
        .stats
        .tokens_generated_total
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(generated < 490, "generation ran on to {generated} tokens");
    assert_eq!(
        slot.stats
            .cancelled_total
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    // and the caller is told why
    let mut status = None;
    while status.is_none() {
        match stream.message().await {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(s) => status = Some(s),
        }
    }
    assert_eq!(
        status.map(|s| s.code()),
        Some(tonic::Code::DeadlineExceeded)
    );
    a.stop().await;
}

#[tokio::test]
async fn ignore_eos_generates_to_max_tokens_past_end_of_sequence() {
    let dir = models_dir(&["tiny-lm-fp32"]);
    // every token is end-of-sequence here: a generation ends at once unless it ignores that
    let path = dir.path().join("tiny-lm-fp32/model.toml");
    let all: Vec<String> = (0..259).map(|i| i.to_string()).collect();
    let m = std::fs::read_to_string(&path).unwrap().replace(
        "eos_token_ids = [257]",
        &format!("eos_token_ids = [{}]", all.join(", ")),
    );
    std::fs::write(&path, m).unwrap();
    let (cfg, state) = config(dir.path(), None);
    let mut a = TestAgent::start(cfg, state).await;
    let (_, done) = collect(&mut a.client, prompt_req("tiny-lm-fp32", 12))
        .await
        .unwrap();
    assert_eq!(done.finish_reason, pb::FinishReason::Stop as i32);
    assert_eq!(done.usage.unwrap().completion_tokens, 0);
    let mut req = prompt_req("tiny-lm-fp32", 12);
    req.ignore_eos = true;
    let (_, done) = collect(&mut a.client, req).await.unwrap();
    assert_eq!(done.finish_reason, pb::FinishReason::Length as i32);
    assert_eq!(done.usage.unwrap().completion_tokens, 12);
    a.stop().await;
}
