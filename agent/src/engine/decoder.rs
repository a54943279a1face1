//! Decoder-only LMs with the Optimum KV-cache interface.
//!
//! Inputs `input_ids`, `attention_mask`, `position_ids` (optional) and
//! `past_key_values.{i}.key/.value`; outputs `logits` and `present.{i}.key/.value`. The cache
//! of a request holds exactly its own tokens (prompt + generated so far): it grows by one
//! position per step and is never sized for the model's whole context. The `present` values
//! ONNX Runtime returns are moved back in as the next step's `past` without copying.

use std::borrow::Cow;
use std::sync::Mutex;

use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor, ValueType};

use super::{EngineError, Result};

/// The shape facts of a decoder graph, read from its inputs.
#[derive(Debug, Clone)]
pub struct DecoderShape {
    pub layers: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub has_position_ids: bool,
}

pub struct Decoder {
    session: Mutex<Session>,
    pub shape: DecoderShape,
}

/// One request's cache: the `past` tensors and how many positions they hold.
pub struct KvCache {
    past: Vec<DynValue>,
    pub len: usize,
}

fn dims(t: &ValueType) -> Option<Vec<i64>> {
    t.tensor_shape().map(|s| s.iter().copied().collect())
}

impl Decoder {
    /// Checks the graph's input and output names against the decoder interface.
    pub fn new(session: Session) -> Result<Self> {
        let inputs: Vec<&str> = session.inputs().iter().map(|o| o.name()).collect();
        let outputs: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
        for need in ["input_ids", "attention_mask"] {
            if !inputs.contains(&need) {
                return Err(EngineError(format!(
                    "decoder graph has no input `{need}` (inputs: {})",
                    inputs.join(", ")
                )));
            }
        }
        if !outputs.contains(&"logits") {
            return Err(EngineError(format!(
                "decoder graph has no output `logits` (outputs: {})",
                outputs.join(", ")
            )));
        }
        let mut layers = 0;
        while inputs.contains(&format!("past_key_values.{layers}.key").as_str()) {
            for name in [
                format!("past_key_values.{layers}.value"),
                format!("present.{layers}.key"),
                format!("present.{layers}.value"),
            ] {
                if !inputs.contains(&name.as_str()) && !outputs.contains(&name.as_str()) {
                    return Err(EngineError(format!(
                        "decoder graph has `past_key_values.{layers}.key` but no `{name}`"
                    )));
                }
            }
            layers += 1;
        }
        if layers == 0 {
            return Err(EngineError(
                "decoder graph has no `past_key_values.0.key` input (KV cache required)".into(),
            ));
        }
        let past0 = session
            .inputs()
            .iter()
            .find(|o| o.name() == "past_key_values.0.key")
            .and_then(|o| dims(o.dtype()));
        let (kv_heads, head_dim) = match past0.as_deref() {
            Some([_, h, _, d]) if *h > 0 && *d > 0 => (*h as usize, *d as usize),
            other => {
                return Err(EngineError(format!(
                    "`past_key_values.0.key` must be [batch, kv_heads, past, head_dim] with fixed heads and head_dim, got {other:?}"
                )));
            }
        };
        let has_position_ids = inputs.contains(&"position_ids");
        Ok(Self {
            session: Mutex::new(session),
            shape: DecoderShape {
                layers,
                kv_heads,
                head_dim,
                has_position_ids,
            },
        })
    }

    /// An empty cache (zero past positions).
    pub fn new_cache(&self) -> Result<KvCache> {
        let s = &self.shape;
        let mut past = Vec::with_capacity(2 * s.layers);
        for _ in 0..2 * s.layers {
            let t = Tensor::<f32>::from_array((
                [1usize, s.kv_heads, 0, s.head_dim],
                Vec::<f32>::new(),
            ))?;
            past.push(t.into_dyn());
        }
        Ok(KvCache { past, len: 0 })
    }

    /// Feeds `ids` after the cached positions; returns the logits of the last position.
    pub fn step(&self, cache: &mut KvCache, ids: &[u32]) -> Result<Vec<f32>> {
        let n = ids.len();
        if n == 0 {
            return Err(EngineError("decoder step with no tokens".into()));
        }
        let total = cache.len + n;
        let input_ids: Vec<i64> = ids.iter().map(|&t| i64::from(t)).collect();
        let mut inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> =
            Vec::with_capacity(3 + cache.past.len());
        inputs.push((
            "input_ids".into(),
            Tensor::from_array(([1usize, n], input_ids))?.into(),
        ));
        inputs.push((
            "attention_mask".into(),
            Tensor::from_array(([1usize, total], vec![1i64; total]))?.into(),
        ));
        if self.shape.has_position_ids {
            let pos: Vec<i64> = (cache.len as i64..total as i64).collect();
            inputs.push((
                "position_ids".into(),
                Tensor::from_array(([1usize, n], pos))?.into(),
            ));
        }
        let past = std::mem::take(&mut cache.past);
        for (i, v) in past.into_iter().enumerate() {
            let kind = if i % 2 == 0 { "key" } else { "value" };
            inputs.push((format!("past_key_values.{}.{kind}", i / 2).into(), v.into()));
        }
        let mut session = self
            .session
            .lock()
            .map_err(|_| EngineError("decoder session poisoned".into()))?;
        let mut out = session.run(inputs)?;
        let logits = out
            .get("logits")
            .ok_or_else(|| EngineError("no logits output".into()))?;
        let (shape, data) = logits.try_extract_tensor::<f32>()?;
        let vocab = *shape
            .last()
            .ok_or_else(|| EngineError("logits has no dimensions".into()))?
            as usize;
        if vocab == 0 || data.len() < vocab {
            return Err(EngineError(format!("logits shape {shape:?} is empty")));
        }
        let last = data[data.len() - vocab..].to_vec();
        let mut present = Vec::with_capacity(2 * self.shape.layers);
        for layer in 0..self.shape.layers {
            for kind in ["key", "value"] {
                let name = format!("present.{layer}.{kind}");
                present.push(
                    out.remove(name.as_str())
                        .ok_or_else(|| EngineError(format!("no `{name}` output")))?,
                );
            }
        }
        cache.past = present;
        cache.len = total;
        Ok(last)
    }

    /// Logits of every position of `ids` computed from scratch (no cache): the reference the
    /// cached path is tested against.
    pub fn full_logits(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let mut cache = self.new_cache()?;
        self.step(&mut cache, ids)
    }
}
