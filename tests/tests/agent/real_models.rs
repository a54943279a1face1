//! The real models from `make models`: SmolLM2 (8- and 4-bit) answers, MiniLM embeds, the classifiers classify.
//! `make test` sets EDGEWISE_TEST_REAL_MODELS=required, so there a missing models/ fails.

use edgewise_tests::harness as common;

use common::*;
use edgewise_proto as pb;

fn france(model: &str, max_tokens: u32) -> pb::GenerateRequest {
    chat(model, "What is the capital of France?", max_tokens)
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[tokio::test]
async fn smollm2_int8_and_q4_answer_and_minilm_models_agree_with_their_sources() {
    let Some(dir) = real_models() else { return };
    let (mut cfg, state) = config(&dir, None);
    cfg.include = vec![
        "smollm2-135m-int8".into(),
        "smollm2-135m-q4".into(),
        "minilm-l6-int8".into(),
        "minilm-difficulty".into(),
    ];
    cfg.intra_op_threads = 2;
    let mut a = TestAgent::start(cfg, state).await;
    for name in [
        "smollm2-135m-int8",
        "smollm2-135m-q4",
        "minilm-l6-int8",
        "minilm-difficulty",
    ] {
        assert!(
            a.slot(name).ready().is_some(),
            "{name} is not ready: {:?}",
            a.slot(name).state_name()
        );
    }

    // both encodings of the fused decoder answer (greedy)
    for model in ["smollm2-135m-int8", "smollm2-135m-q4"] {
        let req = france(model, 32);
        let (text, done) = collect(&mut a.client, req).await.unwrap();
        println!("{model}: {text:?} ({done:?})");
        assert!(text.contains("Paris"), "{model}: {text:?}");
    }

    let texts = [
        "What is the capital of France?",
        "Paris is the capital city of France.",
        "Implement a lock-free hash map in Rust.",
    ];
    let e = a
        .client
        .embed(pb::EmbedRequest {
            model: "minilm-l6-int8".into(),
            texts: texts.map(String::from).to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let v: Vec<&[f32]> = e.embeddings.iter().map(|e| e.values.as_slice()).collect();
    assert_eq!(v[0].len(), 384);
    assert!(
        cosine(v[0], v[1]) > cosine(v[0], v[2]) + 0.2,
        "{} vs {}",
        cosine(v[0], v[1]),
        cosine(v[0], v[2])
    );

    let c = a
        .client
        .classify(pb::ClassifyRequest {
            model: "minilm-difficulty".into(),
            texts: vec![
                "What is the capital of France?".into(),
                "Implement a lock-free concurrent hash map and prove it is linearizable.".into(),
            ],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let hard = |i: usize| {
        c.results[i]
            .labels
            .iter()
            .find(|l| l.label == "hard")
            .unwrap()
            .probability
    };
    assert!(
        hard(0) < 0.3 && hard(1) > 0.7,
        "P(hard) = {} and {}",
        hard(0),
        hard(1)
    );
    a.stop().await;
}

#[tokio::test]
async fn qwen_half_billion_answers_and_its_rebuilt_tokenizer_matches_llama_cpp() {
    let Some(dir) = real_models() else { return };
    let qwen = dir.join("qwen2.5-coder-0.5b-q4");
    assert!(
        qwen.join("model.onnx").exists(),
        "{} is missing: run `make models`",
        qwen.display()
    );
    // the tokenizer rebuilt from the GGUF gives the ids llama.cpp's own tokenizer gives
    // (tests/fixtures/qwen2-tokenizer-parity.json, written by tools/qwen_tokenizer_parity.py)
    let tok = tokenizers::Tokenizer::from_file(qwen.join("tokenizer.json")).unwrap();
    let parity: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("tests/fixtures/qwen2-tokenizer-parity.json"))
            .unwrap(),
    )
    .unwrap();
    let cases = parity["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let got = tok.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(got, want, "{text:?}");
    }

    let (mut cfg, state) = config(&dir, None);
    cfg.include = vec!["qwen2.5-coder-0.5b-q4".into()];
    cfg.intra_op_threads = 2;
    let mut a = TestAgent::start(cfg, state).await;
    let (text, done) = collect(&mut a.client, france("qwen2.5-coder-0.5b-q4", 24))
        .await
        .unwrap();
    println!("qwen2.5-coder-0.5b-q4: {text:?} ({done:?})");
    assert!(text.contains("Paris"), "{text:?}");
    a.stop().await;
}
