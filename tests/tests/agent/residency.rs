//! Models that fit the box: the memory budget, load on demand, least-recently-used eviction,
//! pins, drains, keep-alive, and a kill -9 in the middle of a load.

use edgewise_tests::harness as common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use edgewise_proto as pb;
use tonic::transport::Channel;

type Client = pb::agent_client::AgentClient<Channel>;

const EMBED: &str = "paraphrase-minilm-l3";
const LM8: &str = "smollm2-135m-int8";
const LM4: &str = "smollm2-135m-q4";

fn agent_toml(models: &Path, gw: &FakeGateway, budget: Option<u64>) -> String {
    let budget = budget.map_or(String::new(), |b| {
        format!("memory_budget = {b}\nkeep_alive_ms = 600000\n")
    });
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[tls]\nplaintext = true\n\n[models]\ndir = \"{}\"\ninclude = [\"{EMBED}\", \"{LM8}\", \"{LM4}\"]\n{budget}\n\
         [models.limits.{LM8}]\nkv_budget_mb = 16\n\n[models.limits.{LM4}]\nkv_budget_mb = 16\n\n\
         [runtime]\nintra_op_threads = 1\n\n[report]\ngateways = [\"{}\"]\ninterval_ms = 100\n\n[state]\ndir = \"state\"\n",
        models.display(),
        gw.url
    )
}

async fn list(c: &mut Client) -> pb::ListModelsResponse {
    c.list_models(pb::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner()
}

fn model<'a>(l: &'a pb::ListModelsResponse, name: &str) -> &'a pb::ModelStatus {
    l.models.iter().find(|m| m.name == name).unwrap()
}

fn state(l: &pb::ListModelsResponse, name: &str) -> pb::ModelState {
    model(l, name).state()
}

async fn use_model(c: &mut Client, name: &str) -> Result<(), tonic::Status> {
    if name == EMBED {
        c.embed(pb::EmbedRequest {
            model: name.into(),
            texts: vec!["a budget for models".into()],
            ..Default::default()
        })
        .await
        .map(drop)
    } else {
        collect(c, prompt(name, "The capital of France is", 4))
            .await
            .map(drop)
    }
}

/// A generation that holds its model (its reader stops reading), and waits until the agent
/// counts it in flight.
async fn hold(url: &str, c: &mut Client, name: &str) -> tonic::Streaming<pb::GenerateChunk> {
    let mut slow = slow_reader(url).await;
    let req = pb::GenerateRequest {
        ignore_eos: true,
        ..prompt(name, "Count: 1 2 3", 300)
    };
    let stream = slow.generate(req).await.unwrap().into_inner();
    poll(Duration::from_secs(30), || {
        let mut c = c.clone();
        async move {
            let l = list(&mut c).await;
            let m = model(&l, name);
            if m.in_flight > 0 {
                Ok(())
            } else {
                Err(format!("{name} not in flight: {m:?}"))
            }
        }
    })
    .await;
    stream
}

/// The agent binary under a budget that fits two of three real models: RSS stays within the
/// budget plus the process's own memory, the least recently used idle model goes first, a
/// pinned or busy model never goes, nothing fits when every other model is held, ten
/// requests for an unloaded model cause one load, and a kill -9 during a load leaves nothing
/// half-present after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_budget_for_two_of_three_models_is_kept_by_lru_eviction_pins_and_drains() {
    let Some(models) = real_models() else { return };
    let gw = FakeGateway::start().await;
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("agent.toml");

    // 1. no budget: every model loads and its cost is measured (kept in the state store);
    //    the first start writes the mapped copies, the second loads from them as every
    //    later start does
    std::fs::write(&config, agent_toml(&models, &gw, None)).unwrap();
    let (agent, _) = daemon(&agent_bin(), &config, "warn", None);
    gw.wait_report("all three resident, copies written", |r| {
        r.models.len() == 3 && r.models.iter().all(|m| m.state() == pb::ModelState::Ready)
    })
    .await;
    let first = gw.latest().unwrap().advertise_addr;
    agent.stop();
    let (agent, _) = daemon(&agent_bin(), &config, "warn", None);
    let r = gw
        .wait_report("all three resident again", |r| {
            r.advertise_addr != first
                && r.models.len() == 3
                && r.models.iter().all(|m| m.state() == pb::ModelState::Ready)
        })
        .await;
    let cost = |n: &str| {
        r.models
            .iter()
            .find(|m| m.name == n)
            .map(|m| m.budget_bytes)
            .unwrap()
    };
    let resident: u64 = r.models.iter().map(|m| m.resident_bytes).sum();
    // what the process holds besides its models (the runtime, tokenizers, buffers)
    let baseline = rss_of(agent.0.id()).saturating_sub(resident);
    agent.stop();
    let mut costs = [cost(EMBED), cost(LM8), cost(LM4)];
    costs.sort();
    // any two fit; the third does not
    let budget = costs[1] + costs[2] + costs[0] / 2;
    println!(
        "costs {costs:?} bytes, budget {budget}, process baseline {} MiB",
        baseline >> 20
    );

    // 2. under the budget: the first two (by name) load at start, the third waits
    std::fs::write(&config, agent_toml(&models, &gw, Some(budget))).unwrap();
    let (mut agent, _) = daemon(&agent_bin(), &config, "warn", None);
    let r = gw
        .wait_report("two resident, one available", |r| {
            r.memory.is_some_and(|m| m.budget_bytes == budget)
                && r.models
                    .iter()
                    .any(|m| m.name == LM4 && m.state() == pb::ModelState::Available)
        })
        .await;
    let url = r.advertise_addr.clone();
    let mut c = Client::connect(url.clone()).await.unwrap();
    let l = list(&mut c).await;
    assert_eq!(state(&l, EMBED), pb::ModelState::Ready);
    assert_eq!(state(&l, LM8), pb::ModelState::Ready);
    assert!(model(&l, LM4).cold_load_ms > 0 && !model(&l, LM4).cold_load_estimated);

    // RSS sampled throughout
    let pid = agent.0.id();
    let (max_rss, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let sampler = {
        let (max_rss, stop) = (max_rss.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                max_rss.fetch_max(rss_of(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };

    // 3. least recently used goes first: the embedder loaded first and was not used since
    use_model(&mut c, LM4).await.unwrap();
    let l = list(&mut c).await;
    assert_eq!(state(&l, EMBED), pb::ModelState::Unloaded);
    assert_eq!(model(&l, EMBED).evictions_total, 1);
    assert_eq!(model(&l, LM4).loads_total, 1);
    use_model(&mut c, LM8).await.unwrap();
    use_model(&mut c, EMBED).await.unwrap();
    let l = list(&mut c).await;
    assert_eq!(state(&l, LM4), pb::ModelState::Unloaded, "{l:?}");
    assert_eq!(state(&l, LM8), pb::ModelState::Ready);

    // 4. a pinned model is never evicted: the embedder goes although the pinned one is older
    c.pin_model(pb::PinModelRequest {
        model: LM8.into(),
        pin: true,
    })
    .await
    .unwrap();
    use_model(&mut c, LM4).await.unwrap();
    let l = list(&mut c).await;
    assert_eq!(state(&l, EMBED), pb::ModelState::Unloaded);
    assert_eq!(state(&l, LM8), pb::ModelState::Ready);
    // unloading a pinned model is refused with the reason
    let e = c
        .unload_model(pb::ModelRequest { model: LM8.into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(e.message().contains("unpin it first"), "{}", e.message());
    c.pin_model(pb::PinModelRequest {
        model: LM8.into(),
        pin: false,
    })
    .await
    .unwrap();

    // 5. a model with a request in flight is never evicted: LM8 is the least recently used
    //    but busy, so LM4 goes
    let held8 = hold(&url, &mut c, LM8).await;
    use_model(&mut c, EMBED).await.unwrap();
    let l = list(&mut c).await;
    assert_eq!(state(&l, LM4), pb::ModelState::Unloaded);
    assert_eq!(state(&l, LM8), pb::ModelState::Ready);
    assert_eq!(model(&l, LM8).evictions_total, 0);

    // 6. every other model held: nothing can make room, refused at once with the budget
    use_model(&mut c, LM4).await.unwrap();
    let held4 = hold(&url, &mut c, LM4).await;
    let e = use_model(&mut c, EMBED).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    for says in ["memory budget", LM8, LM4, "in flight"] {
        assert!(e.message().contains(says), "{says}: {}", e.message());
    }
    drop((held8, held4));
    poll(Duration::from_secs(30), || {
        let mut c = c.clone();
        async move {
            let l = list(&mut c).await;
            match l.models.iter().find(|m| m.in_flight > 0) {
                None => Ok(()),
                Some(m) => Err(format!("{} still in flight", m.name)),
            }
        }
    })
    .await;

    // 7. ten concurrent requests for an unloaded model: one load
    let before = model(&list(&mut c).await, EMBED).loads_total;
    assert_ne!(state(&list(&mut c).await, EMBED), pb::ModelState::Ready);
    let ten: Vec<_> = (0..10)
        .map(|_| {
            let mut c = c.clone();
            tokio::spawn(async move { use_model(&mut c, EMBED).await })
        })
        .collect();
    for t in ten {
        t.await.unwrap().unwrap();
    }
    assert_eq!(model(&list(&mut c).await, EMBED).loads_total, before + 1);

    // 8. three callers cycling over the three models at once: each request is answered or
    //    refused for the budget, nothing else
    let workers: Vec<_> = (0..3)
        .map(|w| {
            let mut c = c.clone();
            tokio::spawn(async move {
                let (mut ok, mut refused) = (0, 0);
                for i in 0..8 {
                    let name = [EMBED, LM8, LM4][(w + i) % 3];
                    match use_model(&mut c, name).await {
                        Ok(()) => ok += 1,
                        Err(e)
                            if e.code() == tonic::Code::ResourceExhausted
                                && e.message().contains("memory budget") =>
                        {
                            refused += 1
                        }
                        Err(e) => panic!("{name}: {e:?}"),
                    }
                }
                (ok, refused)
            })
        })
        .collect();
    let (mut ok, mut refused) = (0, 0);
    for w in workers {
        let (o, r) = w.await.unwrap();
        (ok, refused) = (ok + o, refused + r);
    }
    let l = list(&mut c).await;
    let mem = l.memory.unwrap();
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let max = max_rss.load(Ordering::Relaxed);
    // the margin: what the process held besides its models with no budget, plus 48 MiB of
    // allocator and runtime slack
    let margin = baseline + (48 << 20);
    println!(
        "churn: {ok} answered, {refused} refused for the budget; loads {:?}; RSS max {} MiB, budget {} MiB + margin {} MiB; used now {} MiB",
        l.models
            .iter()
            .map(|m| (&m.name, m.loads_total, m.evictions_total))
            .collect::<Vec<_>>(),
        max >> 20,
        budget >> 20,
        margin >> 20,
        mem.used_bytes >> 20
    );
    assert!(ok >= 12, "{ok} of 24 answered");
    assert!(mem.used_bytes <= budget, "{mem:?}");
    assert!(
        max <= budget + margin,
        "RSS {max} > budget {budget} + {margin}"
    );

    // 9. kill -9 while a model loads; after a restart every model is resident, available or
    //    failed with a reason, and serves
    let target = l
        .models
        .iter()
        .find(|m| m.state() != pb::ModelState::Ready)
        .map(|m| m.name.clone())
        .unwrap();
    let loading = {
        let mut c = c.clone();
        let t = target.clone();
        tokio::spawn(async move { c.load_model(pb::ModelRequest { model: t }).await })
    };
    poll(Duration::from_secs(30), || {
        let mut c = c.clone();
        let t = target.clone();
        async move {
            let l = list(&mut c).await;
            match state(&l, &t) {
                pb::ModelState::Loading => Ok(()),
                s => Err(format!("{t} is {s:?}")),
            }
        }
    })
    .await;
    agent.0.kill().unwrap();
    agent.0.wait().unwrap();
    assert!(loading.await.unwrap().is_err());
    let (_agent, _) = daemon(&agent_bin(), &config, "warn", None);
    let r = gw
        .wait_report("the restarted agent", |r| r.advertise_addr != url)
        .await;
    let mut c = Client::connect(r.advertise_addr).await.unwrap();
    let l = list(&mut c).await;
    for m in &l.models {
        assert!(
            matches!(m.state(), pb::ModelState::Ready | pb::ModelState::Available)
                || (m.state() == pb::ModelState::Failed && !m.reason.is_empty()),
            "{m:?}"
        );
    }
    use_model(&mut c, &target).await.unwrap();
}

/// Keep-alive and the operator's unload, in process with the tiny fixtures: an idle model
/// past its keep-alive is unloaded and loads again on the next request; a request may ask to
/// keep it longer; a busy model drains before it unloads.
#[tokio::test]
async fn idle_models_unload_after_their_keep_alive_and_a_busy_one_drains_first() {
    let dir = models_dir(&["tiny-embed", "tiny-lm-fp32"]);
    let gw = FakeGateway::start().await;
    let (mut cfg, state) = config(dir.path(), Some(&gw));
    cfg.memory.keep_alive = Some(Duration::ZERO);
    cfg.limits.insert(
        "tiny-lm-fp32".into(),
        edgewise_agent::config::Limits {
            keep_alive: Some(Duration::from_secs(3600)),
            ..Default::default()
        },
    );
    let mut a = TestAgent::start(cfg, state).await;
    let embed = a.slot("tiny-embed");

    // keep-alive 0: unloaded as soon as it is idle, loaded again by the next request
    gw.wait_report("tiny-embed unloaded", |r| {
        r.models
            .iter()
            .any(|m| m.name == "tiny-embed" && m.state() == pb::ModelState::Unloaded)
    })
    .await;
    let req = pb::EmbedRequest {
        model: "tiny-embed".into(),
        texts: vec!["hello".into()],
        keep_alive_ms: Some(60_000),
    };
    a.client.embed(req).await.unwrap();
    assert_eq!(embed.loads_total.load(Ordering::Relaxed), 2);
    // the request asked to keep it a minute
    let r = gw
        .wait_report("tiny-embed kept", |r| {
            r.models
                .iter()
                .any(|m| m.name == "tiny-embed" && m.unload_in_ms > 50_000)
        })
        .await;
    assert!(
        r.models
            .iter()
            .any(|m| m.name == "tiny-embed" && m.state() == pb::ModelState::Ready)
    );

    // the operator unloads a model with a generation in flight: it drains, then unloads
    let lm = a.slot("tiny-lm-fp32");
    let mut slow = slow_reader(&a.url).await;
    let held = slow
        .generate(pb::GenerateRequest {
            ignore_eos: true,
            ..prompt("tiny-lm-fp32", "hello", 400)
        })
        .await
        .unwrap()
        .into_inner();
    wait_for(
        "the generation holds the model",
        Duration::from_secs(10),
        || {
            let busy = lm.busy();
            async move { busy }
        },
    )
    .await;
    let s = a
        .client
        .unload_model(pb::ModelRequest {
            model: "tiny-lm-fp32".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.state(), pb::ModelState::Draining);
    // no new request while it drains
    let e = collect(&mut a.client, prompt("tiny-lm-fp32", "hi", 2))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable);
    assert!(e.message().contains("unloading"), "{}", e.message());
    drop(held);
    gw.wait_report("tiny-lm-fp32 unloaded after its drain", |r| {
        r.models
            .iter()
            .any(|m| m.name == "tiny-lm-fp32" && m.state() == pb::ModelState::Unloaded)
    })
    .await;
    a.stop().await;
}

/// A model loaded from its mapped copy (optimized graph, prepacked weights in a mapped file)
/// computes what its source does, and a restart loads from the copy. ONNX Runtime 1.31
/// writes the 4-bit test model's packed weights wrongly (NaN logits): that copy is refused
/// when it is written, and the model keeps loading from its source.
#[tokio::test]
async fn a_mapped_copy_generates_what_its_source_does() {
    let dir = models_dir(&["tiny-lm-q4", "tiny-lm-int8", "tiny-embed"]);
    let greedy = |a: &mut TestAgent| {
        let mut c = a.client.clone();
        async move {
            let mut lm = Vec::new();
            for m in ["tiny-lm-q4", "tiny-lm-int8"] {
                lm.push(
                    collect(&mut c, prompt(m, "hello there", 24))
                        .await
                        .unwrap()
                        .0,
                );
            }
            let e = c
                .embed(pb::EmbedRequest {
                    model: "tiny-embed".into(),
                    texts: vec!["hello there".into()],
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            (lm, e.embeddings[0].values.clone())
        }
    };
    let (cfg, state) = config(dir.path(), None);
    let mut plain = TestAgent::start(cfg, state).await;
    let expected = greedy(&mut plain).await;
    plain.stop().await;

    let (mut cfg, state) = config(dir.path(), None);
    cfg.mapped_copies = true;
    let state_dir = state.path().to_path_buf();
    let mut writing = TestAgent::start(cfg.clone(), tempfile::tempdir().unwrap()).await;
    assert_eq!(greedy(&mut writing).await, expected);
    writing.stop().await;
    let mut copies: Vec<String> = std::fs::read_dir(state_dir.join("mapped"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().into_string().unwrap())
        .collect();
    copies.sort();
    // the 8-bit LM and the embedder have copies; the 4-bit LM's was refused; no staging
    // directory is left
    assert_eq!(copies.len(), 3, "{copies:?}");
    assert!(copies.iter().all(|c| !c.starts_with('.')), "{copies:?}");
    assert!(
        copies
            .iter()
            .any(|c| c.starts_with("tiny-lm-q4-") && c.ends_with(".refused")),
        "{copies:?}"
    );
    for c in copies.iter().filter(|c| !c.ends_with(".refused")) {
        let d = state_dir.join("mapped").join(c);
        assert!(
            d.join("model.onnx").is_file() && d.join("model.data").is_file(),
            "{c}"
        );
    }
    let mut mapped = TestAgent::start(cfg, state).await;
    assert_eq!(greedy(&mut mapped).await, expected);
    mapped.stop().await;
}
