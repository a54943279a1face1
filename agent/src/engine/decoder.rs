//! Decoder-only LMs in the fused layout (manifest `interface = "fused-gqa"`).
//!
//! Inputs `input_ids` [batch, seq] and `attention_mask` [batch, total] (row b: total_b ones,
//! then zeros), `past_key_values.{i}.key/.value` [batch, kv_heads, capacity, head_dim] bound as
//! the same memory as `present.{i}.key/.value`; output `logits` [batch, 1, vocab] (the last
//! position). `GroupQueryAttention` takes each row's length from the mask, so rows of
//! different lengths share a decode step. A multi-token feed (prefill) runs one row at a
//! time: the kernel refuses it at batch > 1 with a past.
//!
//! Calls block; the decoder is driven by one thread per model (`crate::batch`).

use ort::session::Session;
use ort::value::{Tensor, ValueType};

use super::kv::{KvArena, KvGeometry};
use super::{EngineError, Result};

/// The graph interface this engine drives (the manifest's `generate.interface`).
pub const INTERFACE: &str = "fused-gqa";

pub struct Decoder {
    session: Session,
    pub geometry: KvGeometry,
    pub vocab: usize,
}

fn dims(t: &ValueType) -> Option<Vec<i64>> {
    t.tensor_shape().map(|s| s.iter().copied().collect())
}

impl Decoder {
    /// Checks the graph's inputs and outputs against the fused interface.
    pub fn new(session: Session) -> Result<Self> {
        let inputs: Vec<&str> = session.inputs().iter().map(|o| o.name()).collect();
        let outputs: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
        let refuse = |what: String| {
            Err(EngineError(format!(
                "the graph is not in the `{INTERFACE}` layout this agent drives: {what} (re-prepare it with `make models` or `tools/prepare_models.py`)"
            )))
        };
        for need in ["input_ids", "attention_mask"] {
            if !inputs.contains(&need) {
                return refuse(format!("no input `{need}` (inputs: {})", inputs.join(", ")));
            }
        }
        if inputs.contains(&"position_ids") {
            return refuse("it takes `position_ids` (an Optimum-style graph)".into());
        }
        let mut layers = 0;
        while inputs.contains(&format!("past_key_values.{layers}.key").as_str()) {
            for (name, list) in [
                (format!("past_key_values.{layers}.value"), &inputs),
                (format!("present.{layers}.key"), &outputs),
                (format!("present.{layers}.value"), &outputs),
            ] {
                if !list.contains(&name.as_str()) {
                    return refuse(format!("`past_key_values.{layers}.key` but no `{name}`"));
                }
            }
            layers += 1;
        }
        if layers == 0 {
            return refuse("no `past_key_values.0.key` input".into());
        }
        let past0 = session
            .inputs()
            .iter()
            .find(|o| o.name() == "past_key_values.0.key")
            .and_then(|o| dims(o.dtype()));
        let (kv_heads, head_dim) = match past0.as_deref() {
            Some([_, h, _, d]) if *h > 0 && *d > 0 => (*h as usize, *d as usize),
            other => {
                return refuse(format!(
                    "`past_key_values.0.key` must be [batch, kv_heads, capacity, head_dim] with fixed heads and head_dim, got {other:?}"
                ));
            }
        };
        let logits = session
            .outputs()
            .iter()
            .find(|o| o.name() == "logits")
            .and_then(|o| dims(o.dtype()));
        let vocab = match logits.as_deref() {
            Some([_, 1, v]) if *v > 0 => *v as usize,
            other => {
                return refuse(format!(
                    "`logits` must be [batch, 1, vocab] (last position only), got {other:?}"
                ));
            }
        };
        Ok(Self {
            session,
            geometry: KvGeometry {
                layers,
                kv_heads,
                head_dim,
            },
            vocab,
        })
    }

    /// Feeds `ids` into `row` after its `len` cached positions; returns the logits of the
    /// last one. The row must have room for `len + ids.len()` positions.
    pub fn prefill<'a>(
        &mut self,
        arena: &'a mut KvArena,
        row: usize,
        len: usize,
        ids: &[u32],
    ) -> Result<&'a [f32]> {
        if ids.is_empty() {
            return Err(EngineError("a prefill with no tokens".into()));
        }
        let total = len + ids.len();
        self.check_room(arena, total)?;
        let ids: Vec<i64> = ids.iter().map(|&t| i64::from(t)).collect();
        let input_ids = Tensor::from_array(([1usize, ids.len()], ids))?;
        let mask = Tensor::from_array(([1usize, total], vec![1i64; total]))?;
        self.run(arena, row, 1, input_ids, mask)
    }

    /// One decode step for rows `0..tokens.len()`: row r feeds `tokens[r]` after its `lens[r]`
    /// cached positions. Returns the logits, `vocab` values per row.
    pub fn decode<'a>(
        &mut self,
        arena: &'a mut KvArena,
        tokens: &[u32],
        lens: &[usize],
    ) -> Result<&'a [f32]> {
        let rows = tokens.len();
        if rows == 0 || lens.len() != rows {
            return Err(EngineError(format!(
                "a decode step of {rows} tokens for {} rows",
                lens.len()
            )));
        }
        let width = lens.iter().max().copied().unwrap_or(0) + 1;
        self.check_room(arena, width)?;
        let ids: Vec<i64> = tokens.iter().map(|&t| i64::from(t)).collect();
        let input_ids = Tensor::from_array(([rows, 1usize], ids))?;
        let mut mask = vec![0i64; rows * width];
        for (r, &len) in lens.iter().enumerate() {
            mask[r * width..r * width + len + 1].fill(1);
        }
        let mask = Tensor::from_array(([rows, width], mask))?;
        self.run(arena, 0, rows, input_ids, mask)
    }

    fn check_room(&self, arena: &KvArena, positions: usize) -> Result<()> {
        if positions > arena.capacity() {
            return Err(EngineError(format!(
                "{positions} positions do not fit the cache's capacity of {}",
                arena.capacity()
            )));
        }
        Ok(())
    }

    fn run<'a>(
        &mut self,
        arena: &'a mut KvArena,
        start: usize,
        rows: usize,
        input_ids: Tensor<i64>,
        mask: Tensor<i64>,
    ) -> Result<&'a [f32]> {
        let vocab = self.vocab;
        let (binding, _) = arena.binding(&self.session, start, rows, vocab)?;
        binding.bind_input("input_ids", &input_ids)?;
        binding.bind_input("attention_mask", &mask)?;
        self.session.run_binding(binding)?;
        let (_, logits) = arena.binding(&self.session, start, rows, vocab)?;
        let (_, data) = logits.try_extract_tensor()?;
        if data.len() != rows * vocab {
            return Err(EngineError(format!(
                "logits hold {} values, expected {rows} × {vocab}",
                data.len()
            )));
        }
        Ok(data)
    }
}
