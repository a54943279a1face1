//! Model folders: `model.onnx`, `tokenizer.json` and the `model.toml` manifest.
//!
//! Owns loading one folder into a runnable model (manifest → tokenizer → ONNX session →
//! interface check → smoke inference) and finding the folders in a directory. A folder that
//! fails any step yields a reason string; it never takes the agent down.

pub mod manifest;
pub mod tools;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokenizers::Tokenizer;

use crate::batch::{BatchConfig, BatchHandle, SequenceEvent, SequenceRequest};
use crate::engine::decoder::Decoder;
use crate::engine::encoder::{Encoder, Head};
use crate::engine::kv::KvArena;
use crate::engine::open_session;
use crate::engine::sampling::{SamplingParams, argmax};
use crate::error::AgentError;
use crate::runtime::Runtime;
use manifest::{Manifest, TaskSpec};

pub enum Engine {
    /// A decoder LM, served by its batch loop.
    Decoder(BatchHandle),
    Encoder(Encoder),
}

/// A model ready to run.
pub struct LoadedModel {
    pub manifest: Manifest,
    pub tokenizer: Tokenizer,
    pub engine: Engine,
    /// Bytes of `model.onnx` (and its external data) on disk.
    pub size_bytes: u64,
    pub load_time: Duration,
    /// What loading it added to the process's resident memory (weights, runtime arenas, the
    /// smoke inference's working set), measured by the node when it loads; 0 until then.
    pub resident_bytes: u64,
    /// Generate models: the vocabulary constraints compile against, built from
    /// `tokenizer.json` the first time a constrained request comes.
    vocabulary: std::sync::OnceLock<Result<Arc<edgewise_constraint::Vocabulary>, String>>,
    tokenizer_path: PathBuf,
}

/// A chat turn as the agent sees it.
pub struct Turn<'a> {
    pub role: &'a str,
    pub content: &'a str,
    /// An assistant turn's calls (rendered in the model's tool format).
    pub tool_calls: &'a [edgewise_proto::ToolCall],
}

/// The folders under `dir` that hold a `model.toml`, sorted; `include` (if not empty) filters
/// by folder name, and a name in `include` with no folder is reported as missing.
pub fn discover(dir: &Path, include: &[String]) -> std::io::Result<(Vec<PathBuf>, Vec<String>)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if path.is_dir()
            && !hidden
            && (path.join("model.toml").exists() || path.join("model.onnx").exists())
        {
            found.push(path);
        }
    }
    found.sort();
    if include.is_empty() {
        return Ok((found, Vec::new()));
    }
    let name = |p: &PathBuf| {
        p.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string()
    };
    let missing = include
        .iter()
        .filter(|i| !found.iter().any(|p| &name(p) == *i))
        .cloned()
        .collect();
    found.retain(|p| include.contains(&name(p)));
    Ok((found, missing))
}

/// Tokens the load-time smoke generation decodes (its per-token time is measured).
const SMOKE_TOKENS: u32 = 5;

/// What the load-time smoke inference measured.
#[derive(Debug, Clone, Copy)]
pub struct Smoke {
    pub latency: Duration,
    /// Generate models: the mean time per token after the first.
    pub time_per_output_token: Option<Duration>,
}

/// Bytes of a model folder's graph: `model.onnx` and its external data (0 if missing).
pub fn file_bytes(dir: &Path) -> u64 {
    let len = |f: &str| std::fs::metadata(dir.join(f)).map_or(0, |m| m.len());
    len("model.onnx") + len("model.onnx.data")
}

impl LoadedModel {
    /// Loads and checks one folder. `Err` is the reason the model is `failed`.
    pub fn load(
        dir: &Path,
        manifest: Manifest,
        rt: &Runtime,
        intra_threads: usize,
        batch: BatchConfig,
        mapped: Option<&Path>,
    ) -> Result<Self, String> {
        let started = Instant::now();
        let onnx = dir.join("model.onnx");
        // a large graph keeps its weights beside it (ONNX external data)
        std::fs::metadata(&onnx).map_err(|e| format!("{}: {e}", onnx.display()))?;
        let size_bytes = file_bytes(dir);
        let tok_path = dir.join("tokenizer.json");
        let tokenizer =
            Tokenizer::from_file(&tok_path).map_err(|e| format!("{}: {e}", tok_path.display()))?;
        let session = open_session(rt, &onnx, intra_threads, mapped)
            .map_err(|e| format!("{}: {e}", onnx.display()))?;
        let engine = match &manifest.spec {
            TaskSpec::Generate(g) => {
                if g.interface != crate::engine::decoder::INTERFACE {
                    return Err(format!(
                        "generate.interface `{}` is not a graph this agent drives (it drives `{}`); re-prepare the model",
                        g.interface,
                        crate::engine::decoder::INTERFACE
                    ));
                }
                let mut decoder = Decoder::new(session).map_err(|e| e.0)?;
                direct_smoke(&mut decoder, &tokenizer)?;
                Engine::Decoder(
                    BatchHandle::spawn(decoder, batch, &manifest.name)
                        .map_err(|e| format!("cannot start the decode thread: {e}"))?,
                )
            }
            TaskSpec::Embed(e) => Engine::Encoder(
                Encoder::new(
                    session,
                    &e.output,
                    Head::Embed {
                        pooling: e.pooling,
                        normalize: e.normalize,
                    },
                    pad_id(&tokenizer),
                )
                .map_err(|e| e.0)?,
            ),
            TaskSpec::Classify(c) => Engine::Encoder(
                Encoder::new(session, &c.output, Head::Classify, pad_id(&tokenizer))
                    .map_err(|e| e.0)?,
            ),
        };
        Ok(Self {
            manifest,
            tokenizer,
            engine,
            size_bytes,
            load_time: started.elapsed(),
            resident_bytes: 0,
            vocabulary: std::sync::OnceLock::new(),
            tokenizer_path: tok_path,
        })
    }

    /// The vocabulary constraints compile against (generate models), built once.
    pub fn vocabulary(&self) -> Result<Arc<edgewise_constraint::Vocabulary>, String> {
        self.vocabulary
            .get_or_init(|| {
                let (Engine::Decoder(batch), TaskSpec::Generate(g)) =
                    (&self.engine, &self.manifest.spec)
                else {
                    return Err("not a generate model".into());
                };
                let json = std::fs::read(&self.tokenizer_path)
                    .map_err(|e| format!("{}: {e}", self.tokenizer_path.display()))?;
                let tokenizer = self.tokenizer.clone();
                let tokenize: edgewise_constraint::Tokenize = Arc::new(move |bytes: &[u8]| {
                    tokenizer
                        .encode_fast(String::from_utf8_lossy(bytes).as_ref(), false)
                        .map(|e| e.get_ids().to_vec())
                        .unwrap_or_default()
                });
                edgewise_constraint::Vocabulary::from_tokenizer_json(
                    &json,
                    batch.vocab,
                    &g.eos_token_ids,
                    tokenize,
                )
                .map(Arc::new)
            })
            .clone()
    }

    /// One small inference that exercises the whole path: how long it took and, for a
    /// generate model, its measured time per token after the first (the first estimate the
    /// gateway routes on, before real requests refine it).
    pub fn smoke(&self) -> Result<Smoke, String> {
        let started = Instant::now();
        let mut tpot = None;
        match &self.engine {
            Engine::Decoder(d) => {
                // a few greedy tokens through the batch loop (blocking: called off the runtime)
                let (events, mut rx) = tokio::sync::mpsc::unbounded_channel();
                let prompt = self.encode_prompt("Hello").map_err(|e| e.to_string())?;
                let seq = SequenceRequest {
                    prompt,
                    max_tokens: SMOKE_TOKENS,
                    eos: Vec::new(),
                    params: SamplingParams::greedy(),
                    rng: rand::SeedableRng::seed_from_u64(0),
                    deadline: None,
                    events,
                    guide: None,
                    trigger: None,
                };
                d.submit(seq)
                    .map_err(|_| "the decode thread has stopped".to_string())?;
                let mut first = None;
                loop {
                    match rx.blocking_recv() {
                        Some(SequenceEvent::Token { .. }) => {
                            first.get_or_insert_with(Instant::now);
                        }
                        Some(SequenceEvent::Length { .. }) => {
                            tpot = first.map(|t| t.elapsed() / (SMOKE_TOKENS - 1));
                            break;
                        }
                        Some(other) => {
                            return Err(format!("smoke generation ended with {other:?}"));
                        }
                        None => return Err("the decode thread dropped the smoke generation".into()),
                    }
                }
            }
            Engine::Encoder(e) => {
                let batch = self
                    .encode_batch(&["hello world".to_string()])
                    .map_err(|e| e.to_string())?;
                let rows = e.run(&batch).map_err(|e| e.0)?;
                let expect = match &self.manifest.spec {
                    TaskSpec::Classify(c) => Some(c.labels.len()),
                    TaskSpec::Embed(e) => e.dimensions.map(|d| d as usize),
                    TaskSpec::Generate(_) => None,
                };
                if let (Some(n), Some(row)) = (expect, rows.first())
                    && row.len() != n
                {
                    return Err(format!(
                        "the model outputs {} values per input, the manifest says {n}",
                        row.len()
                    ));
                }
                if rows.iter().flatten().any(|v| !v.is_finite()) {
                    return Err("the smoke inference produced non-finite values".into());
                }
            }
        }
        Ok(Smoke {
            latency: started.elapsed(),
            time_per_output_token: tpot,
        })
    }

    fn tokenize(&self, text: &str, special: bool) -> Result<Vec<u32>, AgentError> {
        self.tokenizer
            .encode(text, special)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| AgentError::InvalidRequest(format!("cannot tokenize the input: {e}")))
    }

    /// A raw prompt's token ids (with BOS when the manifest asks for it).
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>, AgentError> {
        let mut ids = self.tokenize(text, false)?;
        if let TaskSpec::Generate(g) = &self.manifest.spec
            && let (true, Some(bos)) = (g.add_bos, g.bos_token_id)
        {
            ids.insert(0, bos);
        }
        Ok(ids)
    }

    /// Renders chat turns with the manifest's template.
    pub fn render_chat(
        &self,
        turns: &[Turn<'_>],
        tools: &[edgewise_proto::Tool],
    ) -> Result<String, AgentError> {
        let TaskSpec::Generate(g) = &self.manifest.spec else {
            return Err(AgentError::InvalidRequest(
                "only generate models take chat messages".into(),
            ));
        };
        let Some(t) = &g.chat_template else {
            return Err(AgentError::InvalidRequest(format!(
                "model `{}` has no chat template; send a prompt instead",
                self.manifest.name
            )));
        };
        let uses_tools = !tools.is_empty()
            || turns
                .iter()
                .any(|m| m.role == "tool" || !m.tool_calls.is_empty());
        if uses_tools && t.tools.is_none() {
            return Err(AgentError::InvalidRequest(format!(
                "model `{}` has no tool format (its manifest's generate.chat_template.tools)",
                self.manifest.name
            )));
        }
        let mut out = String::new();
        let turn = |role: &str, content: &str| {
            t.message
                .replace("{role}", role)
                .replace("{content}", content)
        };
        let block = if tools.is_empty() {
            String::new()
        } else {
            tools::system_block(tools)
        };
        if !turns.iter().any(|m| m.role == "system") {
            match (&t.default_system, block.is_empty()) {
                (Some(sys), _) => out.push_str(&turn("system", &format!("{sys}{block}"))),
                (None, false) => out.push_str(&turn("system", block.trim_start())),
                (None, true) => {}
            }
        }
        let mut i = 0;
        while i < turns.len() {
            let m = &turns[i];
            match m.role {
                "system" => out.push_str(&turn("system", &format!("{}{block}", m.content))),
                "user" => out.push_str(&turn("user", m.content)),
                "assistant" => {
                    let mut content = m.content.to_string();
                    for c in m.tool_calls {
                        if !content.is_empty() {
                            content.push('\n');
                        }
                        content.push_str(&tools::call_text(c));
                    }
                    out.push_str(&turn("assistant", &content));
                }
                // consecutive results go back in one user turn, as the template does
                "tool" => {
                    let mut results = Vec::new();
                    while i < turns.len() && turns[i].role == "tool" {
                        results.push(format!(
                            "<tool_response>\n{}\n</tool_response>",
                            turns[i].content
                        ));
                        i += 1;
                    }
                    out.push_str(&turn("user", &results.join("\n")));
                    continue;
                }
                other => {
                    return Err(AgentError::InvalidRequest(format!(
                        "chat role `{other}` is not one of system, user, assistant, tool"
                    )));
                }
            }
            i += 1;
        }
        out.push_str(&t.generation_prompt);
        Ok(out)
    }

    /// Token ids for an embed/classify batch, truncated to the context or refused.
    pub fn encode_batch(&self, texts: &[String]) -> Result<Vec<Vec<u32>>, AgentError> {
        let truncate = match &self.manifest.spec {
            TaskSpec::Embed(e) => e.truncate,
            TaskSpec::Classify(c) => c.truncate,
            TaskSpec::Generate(_) => false,
        };
        let ctx = self.manifest.context_length as usize;
        let mut out = Vec::with_capacity(texts.len());
        for (i, t) in texts.iter().enumerate() {
            let mut ids = self.tokenize(t, true)?;
            if ids.len() > ctx {
                if !truncate {
                    return Err(AgentError::InvalidRequest(format!(
                        "texts[{i}] is {} tokens; model `{}` takes at most {ctx}",
                        ids.len(),
                        self.manifest.name
                    )));
                }
                // keep the closing special token (e.g. [SEP]) when there is one
                let last = ids[ids.len() - 1];
                ids.truncate(ctx);
                if self.is_special(last) {
                    ids[ctx - 1] = last;
                }
            }
            out.push(ids);
        }
        Ok(out)
    }

    fn is_special(&self, id: u32) -> bool {
        self.tokenizer
            .id_to_token(id)
            .is_some_and(|t| self.tokenizer.get_added_vocabulary().is_special_token(&t))
    }

    pub fn decode(&self, ids: &[u32]) -> String {
        self.tokenizer.decode(ids, true).unwrap_or_default()
    }
}

/// One prefill and one decode step on the decoder itself, before its batch loop starts: a
/// graph that loads but cannot run fails here with ONNX Runtime's reason.
fn direct_smoke(decoder: &mut Decoder, tokenizer: &Tokenizer) -> Result<(), String> {
    let ids: Vec<u32> = tokenizer
        .encode("Hello", false)
        .map_err(|e| format!("tokenizer: {e}"))?
        .get_ids()
        .to_vec();
    if ids.is_empty() {
        return Err("the tokenizer turns \"Hello\" into no tokens".into());
    }
    let mut arena = KvArena::new(decoder.geometry, 1, ids.len() + 1);
    let logits = decoder
        .prefill(&mut arena, 0, 0, &ids)
        .map_err(|e| format!("smoke prefill: {e}"))?;
    if logits.iter().any(|v| !v.is_finite()) {
        return Err("the smoke inference produced non-finite logits".into());
    }
    let next = argmax(logits);
    decoder
        .decode(&mut arena, &[next], &[ids.len()])
        .map_err(|e| format!("smoke decode step: {e}"))?;
    Ok(())
}

fn pad_id(tok: &Tokenizer) -> u32 {
    tok.token_to_id("[PAD]")
        .or_else(|| tok.token_to_id("<pad>"))
        .unwrap_or(0)
}
