//! The OpenAI-compatible front's cost: the same one-text embedding through the gateway's
//! gRPC `Embed` and its HTTP `POST /v1/embeddings`, interleaved, open loop (`overhead`'s
//! driver), so both see the same machine at the same moment. What differs is the front:
//! HTTP/1.1 + JSON against HTTP/2 + protobuf, both over keep-alive connections.

use std::time::Duration;

use edgewise_proto as pb;
use tonic::Request;

use crate::overhead::{Path, channel, interleaved};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The gateway's gRPC address.
    #[arg(long)]
    grpc: String,
    /// The gateway's HTTP API (`http://host:port`, without `/v1`).
    #[arg(long)]
    http: String,
    /// Requests per second, both paths together.
    #[arg(long, value_delimiter = ',', default_values_t = [500u32, 1000])]
    rates: Vec<u32>,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

const TEXT: &str = "edge inference keeps requests on their own hardware";

pub async fn run(a: Args) -> anyhow::Result<()> {
    let gateway = pb::gateway_client::GatewayClient::new(channel(&a.grpc).await?);
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(256)
        .build()?;
    let url = format!("{}/v1/embeddings", a.http.trim_end_matches('/'));
    let body = serde_json::to_vec(&serde_json::json!({"model": "auto", "input": TEXT}))?;
    for _ in 0..100 {
        anyhow::ensure!(grpc(&gateway).await, "the gRPC embed failed during warm-up");
        anyhow::ensure!(
            post(&http, &url, &body).await,
            "POST {url} failed during warm-up"
        );
    }
    for rate in &a.rates {
        let (g, h, _) = interleaved(*rate, a.seconds, None, |reference| {
            let (gateway, http, url, body) =
                (gateway.clone(), http.clone(), url.clone(), body.clone());
            async move {
                if reference {
                    grpc(&gateway).await
                } else {
                    post(&http, &url, &body).await
                }
            }
        })
        .await;
        let q = |p: &Path, x: f64| p.quantile_ms(x);
        println!(
            "{}",
            serde_json::json!({
                "bench": "http_front",
                "rate_rps": rate,
                "seconds": a.seconds,
                "grpc": g.summary(),
                "http": h.summary(),
                "added_p50_ms": q(&h, 50.0) - q(&g, 50.0),
                "added_p99_ms": q(&h, 99.0) - q(&g, 99.0),
                "ratio_p50": q(&h, 50.0) / q(&g, 50.0),
            })
        );
    }
    Ok(())
}

fn deadline() -> Duration {
    Duration::from_secs(5)
}

async fn grpc(gateway: &pb::gateway_client::GatewayClient<tonic::transport::Channel>) -> bool {
    let mut r = Request::new(pb::GatewayEmbedRequest {
        request: Some(pb::EmbedRequest {
            model: String::new(),
            texts: vec![TEXT.to_string()],
            ..Default::default()
        }),
        routing: None,
    });
    r.set_timeout(deadline());
    if let Ok(v) = "bench".parse() {
        r.metadata_mut().insert("x-edgewise-tenant", v);
    }
    gateway.clone().embed(r).await.is_ok()
}

async fn post(http: &reqwest::Client, url: &str, body: &[u8]) -> bool {
    let r = http
        .post(url)
        .header("content-type", "application/json")
        .header("x-edgewise-tenant", "bench")
        .timeout(deadline())
        .body(body.to_vec())
        .send()
        .await;
    match r {
        // read the whole answer, as a caller would
        Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
        _ => false,
    }
}
