//! The K/V cache of a batch of sequences: one buffer per layer and kind, bound in place.
//!
//! Buffer layout `[rows, kv_heads, capacity, head_dim]`: row `r` is one sequence, holding its
//! cached positions `0..len` of every head. `GroupQueryAttention` shares past and present
//! when they are the same memory, so each step binds one view of the buffer as both the
//! `past_key_values.*` input and the `present.*` output and the new positions are written in
//! place: no per-step allocation, no copy of the cache. A step binds only the rows it runs
//! (a leading slice for a decode step, one row for a prefill chunk), so idle rows cost nothing.
//!
//! This is the one module of the agent with `unsafe` code (besides one `malloc_trim` call in
//! `residency`): `ort`'s safe binding API copies a
//! borrowed input and refuses a borrowed output, so the views are made with
//! `TensorRefMut::from_raw` and bound through the C API's `BindInput` / `BindOutput`.
//! What keeps it sound, by construction:
//! - a buffer (`KvBuffer`) is allocated once and reached only through the raw pointer it was
//!   allocated with — no `&` or `&mut` to its memory is ever made — so the views ONNX Runtime
//!   writes through stay valid while the arena moves rows (a new unique borrow of the memory
//!   would end them under Rust's aliasing rules; Miri's check of the old `Vec` design failed
//!   exactly there, `make miri` runs this module's tests under Miri);
//! - a view lives in a cached binding owned by the arena, and every cached binding is dropped
//!   before the buffers are freed (field order; `grown` consumes the arena).
#![allow(unsafe_code)]

use std::ffi::CString;
use std::ptr::NonNull;

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

/// One K/V buffer of `len` zero-initialised f32s, owned like a `Box<[f32]>` but reached only
/// through its raw pointer: copies within it and views into it never create a reference to
/// its memory, so no view is ever invalidated by another access.
struct KvBuffer {
    ptr: NonNull<f32>,
    len: usize,
}

// SAFETY: the buffer owns its allocation exclusively, as a `Box<[f32]>` would.
unsafe impl Send for KvBuffer {}

impl KvBuffer {
    fn zeroed(len: usize) -> Self {
        let raw = Box::into_raw(vec![0.0f32; len].into_boxed_slice());
        Self {
            // a box's pointer is never null (an empty one is dangling but non-null)
            ptr: NonNull::new(raw.cast::<f32>()).unwrap_or(NonNull::dangling()),
            len,
        }
    }

    /// A pointer to `count` values from `offset`, for a view.
    fn span(&self, offset: usize, count: usize) -> *mut f32 {
        assert!(offset + count <= self.len, "span outside the buffer");
        // SAFETY: in bounds (checked above) of the allocation `ptr` points into.
        unsafe { self.ptr.as_ptr().add(offset) }
    }

    /// Copies `count` values from `src` to `dst` (the ranges may overlap).
    fn copy_within(&mut self, src: usize, dst: usize, count: usize) {
        let (from, to) = (self.span(src, count), self.span(dst, count));
        // SAFETY: both ranges are in bounds (`span`); `copy` allows overlap.
        unsafe { std::ptr::copy(from, to, count) }
    }

    /// Copies `count` values from `src` in this buffer to `dst` in `other`.
    fn copy_to(&self, other: &mut KvBuffer, src: usize, dst: usize, count: usize) {
        let (from, to) = (self.span(src, count), other.span(dst, count));
        // SAFETY: in bounds (`span`) of two distinct allocations.
        unsafe { std::ptr::copy_nonoverlapping(from, to, count) }
    }

    #[cfg(test)]
    fn get(&self, i: usize) -> f32 {
        // SAFETY: in bounds (`span`).
        unsafe { self.span(i, 1).read() }
    }

    #[cfg(test)]
    fn set(&mut self, i: usize, v: f32) {
        // SAFETY: in bounds (`span`).
        unsafe { self.span(i, 1).write(v) }
    }
}

impl Drop for KvBuffer {
    fn drop(&mut self) {
        // SAFETY: `ptr` and `len` are the box made in `zeroed`, freed once, here.
        drop(unsafe {
            Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                self.ptr.as_ptr(),
                self.len,
            ))
        });
    }
}

/// Which half of a layer's cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Key,
    Value,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Key => "key",
            Kind::Value => "value",
        }
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
    keys: Vec<KvBuffer>,
    values: Vec<KvBuffer>,
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
            keys: (0..geometry.layers)
                .map(|_| KvBuffer::zeroed(per_layer))
                .collect(),
            values: (0..geometry.layers)
                .map(|_| KvBuffer::zeroed(per_layer))
                .collect(),
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

    /// Where rows `start..start + rows` of one layer's keys or values begin: what a binding's
    /// view points at.
    fn span(&self, kind: Kind, layer: usize, start: usize, rows: usize) -> *mut f32 {
        let bufs = match kind {
            Kind::Key => &self.keys,
            Kind::Value => &self.values,
        };
        bufs[layer].span(start * self.row_len(), rows * self.row_len())
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
                buf.copy_within(src, dst, len * hd);
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
                    old.copy_to(new, src, dst, len * hd);
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
        let mut views = Vec::with_capacity(2 * self.geometry.layers);
        for layer in 0..self.geometry.layers {
            for kind in [Kind::Key, Kind::Value] {
                let data = self.span(kind, layer, start, rows);
                // SAFETY: `data` starts `rows` whole rows (the shape) of a buffer this arena
                // owns, never resizes and reaches only through raw pointers (`KvBuffer`); the
                // view is kept in the binding, and every binding is dropped before the buffers
                // (field order; `grown` consumes the arena).
                let view: TensorRefMut<'static, f32> = unsafe {
                    TensorRefMut::from_raw(MemoryInfo::default(), data.cast(), shape.clone())?
                };
                let kind = kind.name();
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
            a.keys[0].set(row + 4 * 3 + i, 1.0 + i as f32);
        }
        a.move_row(1, 0, 2);
        let got: Vec<f32> = (4 * 3..4 * 3 + 6).map(|i| a.keys[0].get(i)).collect();
        assert_eq!(got, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let b = a.grown(3, 8, &[2]);
        assert_eq!((b.rows(), b.capacity()), (3, 8));
        // head 1 of row 0 now starts at 8 positions in
        let got: Vec<f32> = (8 * 3..8 * 3 + 6).map(|i| b.keys[0].get(i)).collect();
        assert_eq!(got, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert!((0..8 * 3).all(|i| b.keys[0].get(i) == 0.0));
    }

    /// What the engine does between steps, with the pointers a binding's views hold: the arena
    /// moves rows (a finished sequence's row refilled) while the views live, then ONNX Runtime
    /// reads and writes through them. The old `Vec` buffers failed this under Miri (the move
    /// made a unique borrow of the memory, ending the views); `make miri` runs it so.
    #[test]
    fn views_stay_valid_while_the_arena_moves_rows() {
        let g = geometry();
        let mut a = KvArena::new(g, 2, 4);
        let row = a.row_len();
        let decode = a.span(Kind::Key, 1, 0, 2);
        let prefill = a.span(Kind::Value, 1, 1, 1);
        a.keys[1].set(row, 5.0);
        a.move_row(1, 0, 1);
        a.values[1].set(row + 1, 3.0);
        a.move_row(1, 0, 1);
        // SAFETY: both spans are in bounds of live buffers (the probe of the invariant)
        unsafe {
            assert_eq!(decode.read(), 5.0, "the move is seen through the view");
            decode.add(row - 1).write(9.0);
            assert_eq!(prefill.add(1).read(), 3.0);
            prefill.write(2.0);
        }
        assert_eq!(a.keys[1].get(row - 1), 9.0);
        assert_eq!(a.values[1].get(row), 2.0);
        assert_eq!(a.values[1].get(1), 3.0, "row 1 moved to row 0");
        // growing copies into new buffers and frees these (no view outlives them)
        let b = a.grown(2, 8, &[1, 1]);
        assert_eq!(b.keys[1].get(0), 5.0);
    }
}
