//! Encoders: sentence embedders and classifiers, run on padded batches.
//!
//! Inputs `input_ids`, `attention_mask` and (if the graph has it) `token_type_ids`, all
//! int64 `[batch, seq]`, right-padded to the longest member. The manifest names the output:
//! `[batch, seq, hidden]` is pooled (mean over the mask, or the first token), `[batch, n]` is
//! used as is. Embeddings may be L2-normalised; classifier logits go through softmax.

use std::sync::Mutex;

use ort::session::Session;
use ort::value::Tensor;

use super::{EngineError, Result};

/// What to do with the output rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    Embed {
        pooling: Pooling,
        normalize: bool,
    },
    /// Softmax over the output row.
    Classify,
}

/// How an encoder's output becomes one vector per text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Mask-weighted mean over tokens of a `[batch, seq, hidden]` output.
    Mean,
    /// The first token's vector.
    Cls,
    /// The output is already `[batch, hidden]`.
    None,
}

pub struct Encoder {
    session: Mutex<Session>,
    output: String,
    head: Head,
    has_token_type_ids: bool,
    pad_id: u32,
}

impl Encoder {
    pub fn new(session: Session, output: &str, head: Head, pad_id: u32) -> Result<Self> {
        let inputs: Vec<&str> = session.inputs().iter().map(|o| o.name()).collect();
        let outputs: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
        for need in ["input_ids", "attention_mask"] {
            if !inputs.contains(&need) {
                return Err(EngineError(format!(
                    "encoder graph has no input `{need}` (inputs: {})",
                    inputs.join(", ")
                )));
            }
        }
        if let Some(extra) = inputs
            .iter()
            .find(|n| !["input_ids", "attention_mask", "token_type_ids"].contains(n))
        {
            return Err(EngineError(format!(
                "encoder graph has an input `{extra}` this agent cannot feed"
            )));
        }
        if !outputs.contains(&output) {
            return Err(EngineError(format!(
                "the manifest names output `{output}`, but the graph's outputs are: {}",
                outputs.join(", ")
            )));
        }
        let has_token_type_ids = inputs.contains(&"token_type_ids");
        Ok(Self {
            session: Mutex::new(session),
            output: output.to_string(),
            head,
            has_token_type_ids,
            pad_id,
        })
    }

    /// One ONNX Runtime run over all `batch` token sequences; one output vector per sequence.
    pub fn run(&self, batch: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        let b = batch.len();
        let s = batch.iter().map(Vec::len).max().unwrap_or(0);
        if b == 0 || s == 0 {
            return Err(EngineError("empty batch".into()));
        }
        let mut ids = vec![i64::from(self.pad_id); b * s];
        let mut mask = vec![0i64; b * s];
        for (r, seq) in batch.iter().enumerate() {
            for (c, &t) in seq.iter().enumerate() {
                ids[r * s + c] = i64::from(t);
                mask[r * s + c] = 1;
            }
        }
        let mut inputs = ort::inputs![
            "input_ids" => Tensor::from_array(([b, s], ids))?,
            "attention_mask" => Tensor::from_array(([b, s], mask.clone()))?,
        ];
        if self.has_token_type_ids {
            inputs.push((
                "token_type_ids".into(),
                Tensor::from_array(([b, s], vec![0i64; b * s]))?.into(),
            ));
        }
        let mut session = self
            .session
            .lock()
            .map_err(|_| EngineError("encoder session poisoned".into()))?;
        let out = session.run(inputs)?;
        let value = out
            .get(self.output.as_str())
            .ok_or_else(|| EngineError(format!("no `{}` output", self.output)))?;
        let (shape, data) = value.try_extract_tensor::<f32>()?;
        let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
        let rows: Vec<Vec<f32>> = match (dims.as_slice(), self.head) {
            ([ob, os, h], Head::Embed { pooling, .. }) if *ob == b && *os == s => (0..b)
                .map(|r| {
                    let row = &data[r * s * h..(r + 1) * s * h];
                    match pooling {
                        Pooling::Cls => row[..*h].to_vec(),
                        Pooling::Mean | Pooling::None => {
                            let mut acc = vec![0f32; *h];
                            let n = batch[r].len();
                            for t in 0..n {
                                for (a, v) in acc.iter_mut().zip(&row[t * h..(t + 1) * h]) {
                                    *a += v;
                                }
                            }
                            acc.iter_mut().for_each(|a| *a /= n as f32);
                            acc
                        }
                    }
                })
                .collect(),
            ([ob, n], _) if *ob == b => (0..b).map(|r| data[r * n..(r + 1) * n].to_vec()).collect(),
            (other, _) => {
                return Err(EngineError(format!(
                    "output `{}` has shape {other:?}, expected [{b}, {s}, hidden] or [{b}, n]",
                    self.output
                )));
            }
        };
        Ok(rows.into_iter().map(|v| self.finish(v)).collect())
    }

    fn finish(&self, mut v: Vec<f32>) -> Vec<f32> {
        match self.head {
            Head::Embed {
                normalize: true, ..
            } => {
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                if norm > 0.0 {
                    v.iter_mut().for_each(|x| *x /= norm);
                }
                v
            }
            Head::Embed { .. } => v,
            Head::Classify => {
                let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                v.iter_mut().for_each(|x| *x = (*x - max).exp());
                let sum: f32 = v.iter().sum();
                v.iter_mut().for_each(|x| *x /= sum);
                v
            }
        }
    }
}
