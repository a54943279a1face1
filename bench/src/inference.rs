//! What the data-class scan adds to a request: the same Classify with 1 KB of text through two
//! gateways fed by one agent, one whose policy scans (`inference: enforce`, the default) and
//! one whose every route is `inference: off`, alternating, open loop (as `overhead`).

use std::time::Duration;

use edgewise_proto as pb;
use tonic::Request;
use tonic::transport::Channel;

use crate::overhead::{Path, channel, interleaved};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The gateway whose policy scans request text.
    #[arg(long)]
    on: String,
    /// The gateway whose policy does not.
    #[arg(long)]
    off: String,
    /// A JSON-lines file of `{"text": …}` items; the request's texts are the first ones, about
    /// `bytes` in all (the labelled data-class set: identifiers and secrets in sentences).
    #[arg(long)]
    texts: std::path::PathBuf,
    #[arg(long, default_value_t = 1024)]
    bytes: usize,
    /// `classify`: the whole request, the agent's work included; `explain`: the gateway's own
    /// path (scan, decide, the decision's trace) with no model behind it, so the rate can be
    /// one the agent could not serve.
    #[arg(long, value_enum, default_value_t = Rpc::Classify)]
    rpc: Rpc,
    #[arg(long, value_delimiter = ',', default_values_t = [1000u32])]
    rates: Vec<u32>,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Rpc {
    Classify,
    Explain,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let texts = request_texts(&a.texts, a.bytes)?;
    let size: usize = texts.iter().map(String::len).sum();
    let on = pb::gateway_client::GatewayClient::new(channel(&a.on).await?);
    let off = pb::gateway_client::GatewayClient::new(channel(&a.off).await?);
    // the two paths must do the same work but the scan: the scanning gateway must find
    // something (so the findings travel into the decision and audit) and both must serve
    let seen = call(&on, a.rpc, &texts).await?;
    anyhow::ensure!(
        !seen.is_empty(),
        "the scanning gateway found nothing in the text"
    );
    anyhow::ensure!(
        call(&off, a.rpc, &texts).await?.is_empty(),
        "the gateway with inference off scanned"
    );
    for _ in 0..50 {
        let _ = call(&on, a.rpc, &texts).await;
        let _ = call(&off, a.rpc, &texts).await;
    }
    for rate in &a.rates {
        let (o, s, _) = interleaved(*rate, a.seconds, None, |reference| {
            let client = if reference { off.clone() } else { on.clone() };
            let (texts, rpc) = (texts.clone(), a.rpc);
            async move { call(&client, rpc, &texts).await.is_ok() }
        })
        .await;
        let q = |p: &Path, x: f64| p.quantile_ms(x);
        println!(
            "{}",
            serde_json::json!({
                "bench": "inference_overhead",
                "rpc": format!("{:?}", a.rpc).to_lowercase(),
                "rate_rps": rate,
                "seconds": a.seconds,
                "text_bytes": size,
                "texts": texts.len(),
                "detectors": seen,
                "off": o.summary(),
                "on": s.summary(),
                "added_p50_ms": q(&s, 50.0) - q(&o, 50.0),
                "added_p99_ms": q(&s, 99.0) - q(&o, 99.0),
                "ratio_p50": q(&s, 50.0) / q(&o, 50.0),
                "ratio_p99": q(&s, 99.0) / q(&o, 99.0),
            })
        );
    }
    Ok(())
}

/// The request's texts: items of the set, whole, packed into texts of at most `PART` bytes
/// (the test classifier's context is 64 tokens, and the gateway sends a text only to a model
/// whose context holds it) until `bytes` are reached.
fn request_texts(path: &std::path::Path, bytes: usize) -> anyhow::Result<Vec<String>> {
    const PART: usize = 240;
    let raw =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut texts = vec![String::new()];
    let mut total = 0;
    for line in raw.lines() {
        if total >= bytes {
            break;
        }
        let item: serde_json::Value = serde_json::from_str(line)?;
        let Some(t) = item["text"].as_str().filter(|t| t.len() < PART) else {
            continue;
        };
        if texts.last().is_some_and(|l| l.len() + t.len() + 1 > PART) {
            texts.push(String::new());
        }
        if let Some(last) = texts.last_mut() {
            last.push_str(t);
            last.push('\n');
        }
        total += t.len() + 1;
    }
    Ok(texts)
}

/// One request through a gateway; the detector ids its decision names.
async fn call(
    gateway: &pb::gateway_client::GatewayClient<Channel>,
    rpc: Rpc,
    texts: &[String],
) -> anyhow::Result<Vec<String>> {
    let tenant = tonic::metadata::MetadataValue::from_static("bench");
    let decision = match rpc {
        Rpc::Classify => {
            let mut r = Request::new(pb::GatewayClassifyRequest {
                request: Some(pb::ClassifyRequest {
                    model: String::new(),
                    texts: texts.to_vec(),
                    ..Default::default()
                }),
                routing: None,
            });
            r.set_timeout(Duration::from_secs(5));
            r.metadata_mut().insert("x-edgewise-tenant", tenant);
            gateway.clone().classify(r).await?.into_inner().decision
        }
        Rpc::Explain => {
            // one text: the same bytes (its context need is then past the test classifier's,
            // the decision a refusal with every exclusion judged: the same on both paths)
            let mut r = Request::new(pb::ExplainRequest {
                task: pb::Task::Classify.into(),
                routing: None,
                text: texts.concat(),
                max_tokens: 0,
            });
            r.set_timeout(Duration::from_secs(5));
            r.metadata_mut().insert("x-edgewise-tenant", tenant);
            Some(gateway.clone().explain(r).await?.into_inner())
        }
    };
    Ok(decision
        .map(|d| d.detections.into_iter().map(|x| x.detector).collect())
        .unwrap_or_default())
}
