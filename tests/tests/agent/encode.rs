//! Embeddings and classification: batching, pooling, probabilities.

use edgewise_tests::harness as common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use edgewise_agent::models::manifest::Manifest;
use edgewise_agent::models::{Engine, LoadedModel};
use edgewise_proto as pb;

const TEXTS: [&str; 3] = [
    "hello",
    "what is the capital of france?",
    "a fast red dog is free",
];

#[test]
fn a_padded_batch_equals_single_runs_fp32() {
    let rt = edgewise_agent::runtime::init(None).unwrap();
    let dir = fixtures().join("tiny-embed");
    let m = LoadedModel::load(
        &dir,
        Manifest::load(&dir.join("model.toml")).unwrap(),
        rt,
        1,
        edgewise_agent::batch::BatchConfig::default(),
        None,
    )
    .unwrap();
    let Engine::Encoder(e) = &m.engine else {
        panic!("not an encoder")
    };
    let ids = m.encode_batch(&TEXTS.map(String::from)).unwrap();
    assert!(
        ids[0].len() < ids[1].len(),
        "the batch needs padding to test anything"
    );
    let batched = e.run(&ids).unwrap();
    for (i, one) in ids.iter().enumerate() {
        let single = e.run(std::slice::from_ref(one)).unwrap().remove(0);
        let diff = single
            .iter()
            .zip(&batched[i])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(
            diff < 1e-5,
            "text {i}: batched and single embeddings differ by {diff}"
        );
        let norm: f32 = single.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "normalised per the manifest");
    }
}

#[tokio::test]
async fn concurrent_requests_share_one_onnx_run() {
    let dir = models_dir(&["tiny-embed"]);
    let (mut cfg, state) = config(dir.path(), None);
    // eight one-text requests fill a batch of eight; the long delay is never waited out
    cfg.batching.max_batch_size = 8;
    cfg.batching.max_delay = Duration::from_secs(30);
    let a = TestAgent::start(cfg, state).await;
    let slot = a.slot("tiny-embed");
    let before = slot.stats.batches_total.load(Ordering::SeqCst);
    let calls = (0..8).map(|i| {
        let mut c = a.client.clone();
        async move {
            c.embed(pb::EmbedRequest {
                model: "tiny-embed".into(),
                texts: vec![format!("text {i}")],
                ..Default::default()
            })
            .await
        }
    });
    let results = futures::future::join_all(calls).await;
    for r in &results {
        assert_eq!(r.as_ref().unwrap().get_ref().embeddings[0].values.len(), 32);
    }
    assert_eq!(slot.stats.batches_total.load(Ordering::SeqCst) - before, 1);
    // and each caller got the vector of its own text
    let mut c = a.client.clone();
    let single = c.embed(pb::EmbedRequest {
        model: "tiny-embed".into(),
        texts: vec!["text 3".into()],
        ..Default::default()
    });
    let (single, _) = futures::future::join(single, async {
        // fill the rest of the batch so the single request is not left waiting for company
        let mut c = a.client.clone();
        c.embed(pb::EmbedRequest {
            model: "tiny-embed".into(),
            texts: vec!["x".into(); 7],
            ..Default::default()
        })
        .await
    })
    .await;
    let got = &results[3].as_ref().unwrap().get_ref().embeddings[0].values;
    let want = &single.unwrap().into_inner().embeddings[0].values;
    let diff = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(diff < 1e-5);
    a.stop().await;
}

#[tokio::test]
async fn classify_returns_sorted_probabilities() {
    let dir = models_dir(&["tiny-classify", "tiny-embed"]);
    let (mut cfg, state) = config(dir.path(), None);
    cfg.batching.max_delay = Duration::ZERO;
    let mut a = TestAgent::start(cfg, state).await;
    let r = a
        .client
        .classify(pb::ClassifyRequest {
            model: "tiny-classify".into(),
            texts: TEXTS.map(String::from).to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.results.len(), 3);
    for c in &r.results {
        let mut labels: Vec<&str> = c.labels.iter().map(|l| l.label.as_str()).collect();
        assert!(
            c.labels
                .windows(2)
                .all(|w| w[0].probability >= w[1].probability)
        );
        let sum: f32 = c.labels.iter().map(|l| l.probability).sum();
        assert!((sum - 1.0).abs() < 1e-5);
        labels.sort();
        assert_eq!(labels, ["alpha", "beta", "gamma"]);
    }
    assert_eq!(r.usage.unwrap().prompt_tokens, {
        let e = a.client.embed(pb::EmbedRequest {
            model: "tiny-embed".into(),
            texts: TEXTS.map(String::from).to_vec(),
            ..Default::default()
        });
        e.await.unwrap().into_inner().usage.unwrap().prompt_tokens
    });
    // an over-long input to a model that does not truncate is refused with the reason
    let long = "hello ".repeat(100);
    let err = a
        .client
        .embed(pb::EmbedRequest {
            model: "tiny-embed".into(),
            texts: vec![long],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        err.message(),
        "texts[0] is 102 tokens; model `tiny-embed` takes at most 64"
    );
    a.stop().await;
}
