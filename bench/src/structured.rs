//! Structured output's cost.
//!
//! - `mask`: in process, the allowed-token set for each step of a nested JSON document over a
//!   model's vocabulary (Qwen2.5's 151,936 ids), and applying it to a row of logits: p50 / p99
//!   per token. The document's own tokens are fed back, so every step is one a decode makes.
//! - `decode`: through the agent, the same prompt greedy with and without a JSON schema, one
//!   stream and eight at once: the agent's time per output token (its `GenerateDone`), and the
//!   ratio. The reference is the unconstrained run in the same process, alternating.

use std::time::Instant;

use edgewise_proto as pb;
use futures::StreamExt;
use tonic::transport::Endpoint;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A model folder (its tokenizer.json) for the mask measurement.
    #[arg(long)]
    model_dir: std::path::PathBuf,
    /// The model's logits width (its vocabulary as the decoder sees it).
    #[arg(long, default_value_t = 151_936)]
    logits: usize,
    #[arg(long, value_delimiter = ',', default_values_t = [151_645u32, 151_643])]
    eos: Vec<u32>,
    /// The agent serving the model, for the decode measurement (skipped when absent).
    #[arg(long)]
    agent: Option<String>,
    #[arg(long)]
    model: Option<String>,
    #[arg(long, default_value_t = 5)]
    runs: usize,
}

/// A nested schema of the kind an extraction service sends: objects in an array, enums,
/// bounded numbers, optional fields.
const SCHEMA: &str = r#"{"type": "object", "properties": {
  "customer": {"type": "object", "properties": {
     "name": {"type": "string"}, "tier": {"enum": ["free", "pro", "enterprise"]},
     "since": {"type": "integer", "minimum": 1990, "maximum": 2030}},
     "required": ["name", "tier", "since"], "additionalProperties": false},
  "items": {"type": "array", "items": {"type": "object", "properties": {
     "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
     "qty": {"type": "integer", "minimum": 1},
     "price": {"type": "number"},
     "note": {"type": "string"}},
     "required": ["sku", "qty", "price"], "additionalProperties": false}, "maxItems": 8},
  "urgent": {"type": "boolean"}},
 "required": ["customer", "items", "urgent"], "additionalProperties": false}"#;

/// Documents the schema accepts, in the compact form the engine writes.
const DOCS: [&str; 3] = [
    r#"{"customer": {"name": "Ada Lovelace", "tier": "pro", "since": 2019}, "items": [{"sku": "ABC-1234", "qty": 2, "price": 19.99}, {"sku": "XYZ-0042", "qty": 1, "price": 250, "note": "gift wrap, please"}], "urgent": false}"#,
    r#"{"customer": {"name": "Grace Hopper", "tier": "enterprise", "since": 1995}, "items": [{"sku": "QQQ-0001", "qty": 12, "price": 3.5, "note": "the blue ones"}], "urgent": true}"#,
    r#"{"customer": {"name": "Edsger", "tier": "free", "since": 2024}, "items": [], "urgent": false}"#,
];

const PROMPT: &str = "Extract the order as JSON: Ada Lovelace (pro customer since 2019) wants two ABC-1234 at 19.99 and one XYZ-0042 at 250, gift wrapped; not urgent. Then list three more orders like it.";

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    mask(&a)?;
    if let (Some(agent), Some(model)) = (&a.agent, &a.model) {
        decode(agent, model, a.runs).await?;
    }
    Ok(())
}

fn mask(a: &Args) -> anyhow::Result<()> {
    let path = a.model_dir.join("tokenizer.json");
    let json = std::fs::read(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let tokenizer = tokenizers_from(&json)?;
    let tok = tokenizer.clone();
    let tokenize: edgewise_constraint::Tokenize = std::sync::Arc::new(move |b: &[u8]| {
        tok.encode_fast(String::from_utf8_lossy(b).as_ref(), false)
            .map(|e| e.get_ids().to_vec())
            .unwrap_or_default()
    });
    let started = Instant::now();
    let vocab =
        edgewise_constraint::Vocabulary::from_tokenizer_json(&json, a.logits, &a.eos, tokenize)
            .map_err(|e| anyhow::anyhow!(e))?;
    let vocab_ms = started.elapsed().as_secs_f64() * 1e3;
    let c = pb::Constraint {
        kind: Some(pb::constraint::Kind::JsonSchema(SCHEMA.into())),
    };
    let started = Instant::now();
    vocab.compile(&c).map_err(|e| anyhow::anyhow!("{e}"))?;
    let compile_ms = started.elapsed().as_secs_f64() * 1e3;
    let logits: Vec<f32> = (0..a.logits).map(|i| (i % 97) as f32 / 10.0).collect();
    let (mut ids_buf, mut values) = (Vec::new(), Vec::new());
    let (mut allowed_us, mut apply_us) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        for doc in DOCS {
            let ids = tokenizer
                .encode_fast(doc, false)
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .get_ids()
                .to_vec();
            let mut g = vocab.compile(&c).map_err(|e| anyhow::anyhow!("{e}"))?;
            for &id in &ids {
                let t = Instant::now();
                let allowed = g.allowed().map_err(|e| anyhow::anyhow!(e))?;
                allowed_us.push(t.elapsed().as_secs_f64() * 1e6);
                // what the batch loop does with it: the allowed ids and their logits
                let t = Instant::now();
                let kind =
                    edgewise_constraint::candidates(&allowed, &logits, &mut ids_buf, &mut values);
                apply_us.push(t.elapsed().as_secs_f64() * 1e6);
                let kept = match kind {
                    edgewise_constraint::Candidates::Dense => values[id as usize].is_finite(),
                    edgewise_constraint::Candidates::Sparse => ids_buf.binary_search(&id).is_ok(),
                };
                anyhow::ensure!(kept, "the document's token {id} was masked");
                g.accept(id).map_err(|e| anyhow::anyhow!(e))?;
            }
            anyhow::ensure!(g.complete(), "the document did not complete the schema");
        }
    }
    let steps = allowed_us.len();
    let mut total: Vec<f64> = allowed_us
        .iter()
        .zip(&apply_us)
        .map(|(a, b)| a + b)
        .collect();
    println!(
        "{}",
        serde_json::json!({
            "bench": "structured_mask", "vocab": a.logits, "steps": steps,
            "vocabulary_build_ms": vocab_ms, "first_compile_ms": compile_ms,
            "allowed_p50_us": percentile(&mut allowed_us, 0.5),
            "allowed_p99_us": percentile(&mut allowed_us, 0.99),
            "apply_p50_us": percentile(&mut apply_us, 0.5),
            "apply_p99_us": percentile(&mut apply_us, 0.99),
            "p50_us": percentile(&mut total, 0.5),
            "p90_us": percentile(&mut total, 0.9),
            "allowed_p90_us": percentile(&mut allowed_us, 0.9),
            "p99_us": percentile(&mut total, 0.99),
        })
    );
    Ok(())
}

fn tokenizers_from(json: &[u8]) -> anyhow::Result<tokenizers::Tokenizer> {
    tokenizers::Tokenizer::from_bytes(json).map_err(|e| anyhow::anyhow!("tokenizer.json: {e}"))
}

/// The agent's own time per output token for `streams` concurrent greedy generations.
async fn tpot(
    client: &pb::agent_client::AgentClient<tonic::transport::Channel>,
    model: &str,
    streams: usize,
    schema: bool,
) -> anyhow::Result<(f64, u32)> {
    let one = |i: usize| {
        let mut client = client.clone();
        let req = pb::GenerateRequest {
            model: model.into(),
            input: Some(pb::generate_request::Input::Chat(pb::ChatMessages {
                messages: vec![pb::ChatMessage {
                    role: "user".into(),
                    // the same prompt for every stream (a number keeps them apart in logs)
                    content: format!("{PROMPT} ({i})"),
                    ..Default::default()
                }],
            })),
            max_tokens: 64,
            constraint: schema.then(|| pb::Constraint {
                kind: Some(pb::constraint::Kind::JsonSchema(
                    // room to write 64 tokens: up to eight items
                    SCHEMA.into(),
                )),
            }),
            ..Default::default()
        };
        async move {
            let mut s = client.generate(req).await?.into_inner();
            while let Some(chunk) = s.next().await {
                if let Some(done) = chunk?.done {
                    let n = done.usage.map_or(0, |u| u.completion_tokens);
                    return Ok::<_, anyhow::Error>((done.time_per_output_token_ms, n));
                }
            }
            anyhow::bail!("the stream ended without `done`")
        }
    };
    let all = futures::future::join_all((0..streams).map(one)).await;
    let (mut ms, mut tokens) = (0.0, 0);
    for r in all {
        let (t, n) = r?;
        ms += t;
        tokens += n;
    }
    Ok((ms / streams as f64, tokens))
}

async fn decode(agent: &str, model: &str, runs: usize) -> anyhow::Result<()> {
    let ch = Endpoint::from_shared(agent.to_string())?
        .tcp_nodelay(true)
        .connect()
        .await?;
    let client = pb::agent_client::AgentClient::new(ch);
    for streams in [1usize, 8] {
        // warm both (the schema's first compile is cached after this)
        tpot(&client, model, streams, false).await?;
        tpot(&client, model, streams, true).await?;
        let (mut free, mut constrained) = (Vec::new(), Vec::new());
        let (mut free_tokens, mut constrained_tokens) = (0, 0);
        for _ in 0..runs {
            let (t, n) = tpot(&client, model, streams, false).await?;
            free.push(t);
            free_tokens += n;
            let (t, n) = tpot(&client, model, streams, true).await?;
            constrained.push(t);
            constrained_tokens += n;
        }
        let f = percentile(&mut free, 0.5);
        let c = percentile(&mut constrained, 0.5);
        println!(
            "{}",
            serde_json::json!({
                "bench": "structured_decode", "model": model, "streams": streams, "runs": runs,
                "free_tpot_ms": f, "schema_tpot_ms": c, "ratio": c / f,
                "free_tokens": free_tokens, "schema_tokens": constrained_tokens,
            })
        );
    }
    Ok(())
}
