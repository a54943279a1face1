//! The K/V cache of a batch of sequences: one buffer per layer and kind, bound in place.
//!
//! Buffer layout `[rows, kv_heads, capacity, head_dim]`: row `r` is one sequence, holding its
//! cached positions `0..len` of every head. `GroupQueryAttention` shares past and present
//! when they are the same memory, so each step binds one view of the buffer as both the
//! `past_key_values.*` input and the `present.*` output and the new positions are written in
//! place: no per-step allocation, no copy of the cache. A step binds only the rows it runs
//! (a leading slice for a decode step, one row for a prefill chunk), so idle rows cost nothing.
//!
//! This is the one module of the agent with `unsafe` code: `ort`'s safe binding API copies a
//! borrowed input and refuses a borrowed output, so the views are made with
//! `TensorRefMut::from_raw` and bound through the C API's `BindInput` / `BindOutput`.
//! Invariant that keeps it sound: a view lives in a cached binding owned by the arena, the
//! buffers are never resized in place, and every cached binding is dropped before the buffers
//! are replaced or freed.
#![allow(unsafe_code)]

use std::ffi::CString;

use ort::AsPointer;
use ort::memory::{Allocator, MemoryInfo};
use ort::session::{IoBinding, Session};
use ort::value::{Shape, Tensor, TensorRefMut};

use super::{EngineError, Result};

/// The cache geometry of a decoder graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvGeometry {
    pub layers: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl KvGeometry {
    /// Bytes one cached position of one sequence takes (keys and values of every layer).
    pub fn bytes_per_position(&self) -> u64 {
        (self.layers * 2 * self.kv_heads * self.head_dim * std::mem::size_of::<f32>()) as u64
    }
}

/// A binding of rows `start..start + rows`, reused while the arena's buffers stay the same.
struct RowBinding {
    start: usize,
    rows: usize,
    binding: IoBinding,
    /// The logits output `[rows, 1, vocab]`, written by each run.
    logits: Tensor<f32>,
    /// The K/V views bound in `binding`; they must outlive it (declared after it: dropped after).
    _views: Vec<TensorRefMut<'static, f32>>,
}

pub struct KvArena {
    // field order is drop order: the bindings (and their views) go before the buffers
    bindings: Vec<RowBinding>,
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    geometry: KvGeometry,
    rows: usize,
    capacity: usize,
}

impl KvArena {
    /// Buffers for `rows` sequences of up to `capacity` positions each. The memory is
    /// zero-filled lazily by the OS, but it is counted whole (`bytes`).
    pub fn new(geometry: KvGeometry, rows: usize, capacity: usize) -> Self {
        let per_layer = rows * geometry.kv_heads * capacity * geometry.head_dim;
        Self {
            bindings: Vec::new(),
            keys: (0..geometry.layers).map(|_| vec![0.0; per_layer]).collect(),
            values: (0..geometry.layers).map(|_| vec![0.0; per_layer]).collect(),
            geometry,
            rows,
            capacity,
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn bytes(&self) -> u64 {
        self.geometry.bytes_per_position() * (self.rows * self.capacity) as u64
    }

    fn row_len(&self) -> usize {
        self.geometry.kv_heads * self.capacity * self.geometry.head_dim
    }

    /// Copies the first `len` positions of row `from` into row `to` (every layer and head).
    pub fn move_row(&mut self, from: usize, to: usize, len: usize) {
        if from == to {
            return;
        }
        let (heads, cap, hd) = (
            self.geometry.kv_heads,
            self.capacity,
            self.geometry.head_dim,
        );
        let row = self.row_len();
        for buf in self.keys.iter_mut().chain(self.values.iter_mut()) {
            for h in 0..heads {
                let src = from * row + h * cap * hd;
                let dst = to * row + h * cap * hd;
                buf.copy_within(src..src + len * hd, dst);
            }
        }
    }

    /// A new arena of at least this size holding the same rows (their first `lens[r]`
    /// positions); this arena's bindings and buffers are released.
    pub fn grown(self, rows: usize, capacity: usize, lens: &[usize]) -> Self {
        let mut next = KvArena::new(
            self.geometry,
            rows.max(self.rows),
            capacity.max(self.capacity),
        );
        let (heads, hd) = (self.geometry.kv_heads, self.geometry.head_dim);
        let (old_row, new_row) = (self.row_len(), next.row_len());
        for (old, new) in self
            .keys
            .iter()
            .zip(next.keys.iter_mut())
            .chain(self.values.iter().zip(next.values.iter_mut()))
        {
            for (r, &len) in lens.iter().enumerate() {
                for h in 0..heads {
                    let src = r * old_row + h * self.capacity * hd;
                    let dst = r * new_row + h * next.capacity * hd;
                    new[dst..dst + len * hd].copy_from_slice(&old[src..src + len * hd]);
                }
            }
        }
        next
    }

    /// The binding for rows `start..start + rows`, made on first use. At most two are kept
    /// (the decode slice and the prefilling row), so changing batches do not pile them up.
    pub(super) fn binding(
        &mut self,
        session: &Session,
        start: usize,
        rows: usize,
        vocab: usize,
    ) -> Result<(&mut IoBinding, &Tensor<f32>)> {
        if start + rows > self.rows {
            return Err(EngineError(format!(
                "rows {start}..{} are outside the cache's {} rows",
                start + rows,
                self.rows
            )));
        }
        let found = self
            .bindings
            .iter()
            .position(|b| b.start == start && b.rows == rows);
        let i = match found {
            Some(i) => i,
            None => {
                if self.bindings.len() >= 2 {
                    self.bindings.remove(0);
                }
                let made = self.bind(session, start, rows, vocab)?;
                self.bindings.push(made);
                self.bindings.len() - 1
            }
        };
        let b = &mut self.bindings[i];
        Ok((&mut b.binding, &b.logits))
    }

    fn bind(
        &mut self,
        session: &Session,
        start: usize,
        rows: usize,
        vocab: usize,
    ) -> Result<RowBinding> {
        let mut binding = session.create_binding()?;
        let shape = Shape::new([
            rows as i64,
            self.geometry.kv_heads as i64,
            self.capacity as i64,
            self.geometry.head_dim as i64,
        ]);
        let offset = start * self.row_len();
        let count = rows * self.row_len();
        let mut views = Vec::with_capacity(2 * self.geometry.layers);
        for layer in 0..self.geometry.layers {
            for (kind, bufs) in [("key", &mut self.keys), ("value", &mut self.values)] {
                let data = &mut bufs[layer][offset..offset + count];
                // SAFETY: `data` is `count` f32s of a buffer this arena owns and never resizes;
                // the view is kept in the binding, and every binding is dropped before the
                // buffers (field order; `grown` consumes the arena).
                let view: TensorRefMut<'static, f32> = unsafe {
                    TensorRefMut::from_raw(
                        MemoryInfo::default(),
                        data.as_mut_ptr().cast(),
                        shape.clone(),
                    )?
                };
                bind_raw(
                    &mut binding,
                    &format!("past_key_values.{layer}.{kind}"),
                    &*view,
                    Direction::Input,
                )?;
                bind_raw(
                    &mut binding,
                    &format!("present.{layer}.{kind}"),
                    &*view,
                    Direction::Output,
                )?;
                views.push(view);
            }
        }
        let logits = Tensor::<f32>::new(&Allocator::default(), [rows, 1, vocab])?;
        bind_raw(&mut binding, "logits", &logits, Direction::Output)?;
        Ok(RowBinding {
            start,
            rows,
            binding,
            logits,
            _views: views,
        })
    }
}

enum Direction {
    Input,
    Output,
}

/// Binds `value` by reference, without the copy `IoBinding::bind_input` makes of borrowed data.
/// The caller keeps `value` alive for as long as `binding` is used.
fn bind_raw<V: AsPointer<Sys = ort::sys::OrtValue>>(
    binding: &mut IoBinding,
    name: &str,
    value: &V,
    direction: Direction,
) -> Result<()> {
    let cname = CString::new(name).map_err(|_| EngineError(format!("bad name {name:?}")))?;
    let api = ort::api();
    // SAFETY: both pointers come from live `ort` objects; ONNX Runtime copies the name and
    // keeps its own reference to the value's OrtValue (not to its data, which we own).
    let status = unsafe {
        match direction {
            Direction::Input => (api.BindInput)(binding.ptr_mut(), cname.as_ptr(), value.ptr()),
            Direction::Output => (api.BindOutput)(binding.ptr_mut(), cname.as_ptr(), value.ptr()),
        }
    };
    if status.0.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null status is an OrtStatus we own and release once.
    let message = unsafe {
        let text = std::ffi::CStr::from_ptr((api.GetErrorMessage)(status.0))
            .to_string_lossy()
            .into_owned();
        (api.ReleaseStatus)(status.0);
        text
    };
    Err(EngineError(format!("binding `{name}`: {message}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry() -> KvGeometry {
        KvGeometry {
            layers: 2,
            kv_heads: 2,
            head_dim: 3,
        }
    }

    #[test]
    fn rows_move_and_grow_with_their_positions() {
        let g = geometry();
        let mut a = KvArena::new(g, 2, 4);
        assert_eq!(a.bytes(), g.bytes_per_position() * 8);
        // row 1, head 1, positions 0..2 of layer 0's keys
        let row = a.row_len();
        for i in 0..6 {
            a.keys[0][row + 4 * 3 + i] = 1.0 + i as f32;
        }
        a.move_row(1, 0, 2);
        assert_eq!(
            &a.keys[0][4 * 3..4 * 3 + 6],
            &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
        );
        let b = a.grown(3, 8, &[2]);
        assert_eq!((b.rows(), b.capacity()), (3, 8));
        // head 1 of row 0 now starts at 8 positions in
        assert_eq!(
            &b.keys[0][8 * 3..8 * 3 + 6],
            &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
        );
        assert!(b.keys[0][..8 * 3].iter().all(|&v| v == 0.0));
    }
}
