//! Residency: what a request pays when its model must load first, and a churn run under a
//! memory budget that holds two of three models.
//!
//! - `cold-start`: the same generation on a resident model and right after an operator
//!   unload (so the request loads it), interleaved; time to first token of each.
//! - `churn`: callers cycling over three models for a fixed time against an agent whose
//!   budget fits two; RSS sampled, loads and evictions counted, latency per request.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use edgewise_proto as pb;
use serde_json::json;
use tonic::transport::Channel;

use crate::stats::{ms, percentile, rss_bytes};

type Client = pb::agent_client::AgentClient<Channel>;

#[derive(clap::Args)]
pub struct ColdArgs {
    #[arg(long, default_value = "http://127.0.0.1:7520")]
    agent: String,
    #[arg(long)]
    model: String,
    #[arg(long, default_value_t = 5)]
    runs: usize,
}

#[derive(clap::Args)]
pub struct ChurnArgs {
    #[arg(long, default_value = "http://127.0.0.1:7520")]
    agent: String,
    /// The agent's pid, for its RSS.
    #[arg(long)]
    pid: u32,
    /// Models to cycle over (a generate model answers 4 tokens; others embed one text).
    #[arg(long, num_args = 1.., required = true)]
    models: Vec<String>,
    #[arg(long, default_value_t = 3)]
    callers: usize,
    #[arg(long, default_value_t = 120)]
    secs: u64,
}

/// One request; returns the time to its first token (generate) or its answer.
async fn request(c: &mut Client, model: &str, generate: bool) -> Result<Duration, tonic::Status> {
    let t = Instant::now();
    if generate {
        let req = pb::GenerateRequest {
            model: model.into(),
            input: Some(pb::generate_request::Input::Prompt(
                "The capital of France is".into(),
            )),
            max_tokens: 4,
            seed: Some(1),
            ..Default::default()
        };
        let mut s = c.generate(req).await?.into_inner();
        let mut first = None;
        while let Some(chunk) = s.message().await? {
            if first.is_none() && !chunk.text.is_empty() {
                first = Some(t.elapsed());
            }
        }
        Ok(first.unwrap_or_else(|| t.elapsed()))
    } else {
        c.embed(pb::EmbedRequest {
            model: model.into(),
            texts: vec!["a budget for models".into()],
            ..Default::default()
        })
        .await?;
        Ok(t.elapsed())
    }
}

async fn tasks(c: &mut Client) -> anyhow::Result<Vec<(String, bool, u32)>> {
    let l = c.list_models(pb::ListModelsRequest {}).await?.into_inner();
    Ok(l.models
        .iter()
        .map(|m| {
            (
                m.name.clone(),
                m.task == pb::Task::Generate as i32,
                m.cold_load_ms,
            )
        })
        .collect())
}

pub async fn cold_start(a: ColdArgs) -> anyhow::Result<()> {
    let mut c = Client::connect(a.agent.clone()).await?;
    let generate = tasks(&mut c)
        .await?
        .iter()
        .any(|(n, g, _)| *n == a.model && *g);
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for _ in 0..a.runs {
        c.unload_model(pb::ModelRequest {
            model: a.model.clone(),
        })
        .await?;
        cold.push(request(&mut c, &a.model, generate).await?);
        warm.push(request(&mut c, &a.model, generate).await?);
    }
    cold.sort();
    warm.sort();
    let (c50, w50) = (
        percentile(&cold, 50.0).unwrap_or_default(),
        percentile(&warm, 50.0).unwrap_or_default(),
    );
    println!(
        "{}",
        json!({
            "bench": "cold-start", "model": a.model, "runs": a.runs,
            "first_token_cold_ms": {"p50": ms(c50), "min": ms(cold[0]), "max": ms(cold[cold.len() - 1])},
            "first_token_resident_ms": {"p50": ms(w50), "min": ms(warm[0]), "max": ms(warm[warm.len() - 1])},
            "cold_over_resident": ms(c50) / ms(w50).max(1e-6),
        })
    );
    Ok(())
}

pub async fn churn(a: ChurnArgs) -> anyhow::Result<()> {
    let mut c = Client::connect(a.agent.clone()).await?;
    let kinds = tasks(&mut c).await?;
    let generate = |m: &str| kinds.iter().any(|(n, g, _)| n == m && *g);
    let budget = c
        .list_models(pb::ListModelsRequest {})
        .await?
        .into_inner()
        .memory
        .map_or(0, |m| m.budget_bytes);
    let (max_rss, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let sampler = {
        let (max_rss, stop, pid) = (max_rss.clone(), stop.clone(), a.pid);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                max_rss.fetch_max(rss_bytes(pid).unwrap_or(0), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let until = Instant::now() + Duration::from_secs(a.secs);
    let workers: Vec<_> = (0..a.callers)
        .map(|w| {
            let mut c = c.clone();
            let models: Vec<(String, bool)> =
                a.models.iter().map(|m| (m.clone(), generate(m))).collect();
            tokio::spawn(async move {
                let (mut lat, mut refused, mut errors) = (Vec::new(), 0u64, Vec::new());
                let mut i = w;
                while Instant::now() < until {
                    let (m, g) = &models[i % models.len()];
                    i += 1;
                    let t = Instant::now();
                    match request(&mut c, m, *g).await {
                        Ok(_) => lat.push(t.elapsed()),
                        Err(e)
                            if e.code() == tonic::Code::ResourceExhausted
                                && e.message().contains("memory budget") =>
                        {
                            refused += 1
                        }
                        Err(e) => errors.push(format!("{m}: {e}")),
                    }
                }
                (lat, refused, errors)
            })
        })
        .collect();
    let (mut lat, mut refused, mut errors) = (Vec::new(), 0, Vec::new());
    for w in workers {
        let (l, r, e) = w.await?;
        lat.extend(l);
        refused += r;
        errors.extend(e);
    }
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    lat.sort();
    let l = c.list_models(pb::ListModelsRequest {}).await?.into_inner();
    let loads: u64 = l.models.iter().map(|m| m.loads_total).sum();
    let evictions: u64 = l.models.iter().map(|m| m.evictions_total).sum();
    let rss = max_rss.load(Ordering::Relaxed);
    println!(
        "{}",
        json!({
            "bench": "churn", "secs": a.secs, "callers": a.callers, "models": a.models,
            "answered": lat.len(), "refused_budget": refused, "errors": errors.len(),
            "first_errors": errors.iter().take(3).collect::<Vec<_>>(),
            "loads": loads, "evictions": evictions,
            "latency_ms": {
                "p50": percentile(&lat, 50.0).map(ms), "p99": percentile(&lat, 99.0).map(ms),
                "max": lat.last().map(|d| ms(*d)),
            },
            "rss_max_mib": rss >> 20, "budget_mib": budget >> 20,
            "rss_over_budget": rss as f64 / budget.max(1) as f64,
        })
    );
    Ok(())
}
