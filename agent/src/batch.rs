//! Continuous batching: the concurrent generations of one model share decode steps.
//!
//! One thread per generate model owns its decoder and K/V arena. Each turn of its loop:
//! 1. take new sequences, and drop those whose caller left or whose deadline passed;
//! 2. admit the oldest waiting sequence to a row when the K/V budget has room for it;
//! 3. run one prefill chunk (at most `prefill_chunk` tokens) of the sequence being admitted;
//! 4. run one decode step that advances every decoding sequence by a token.
//!
//! So a sequence joins at the step after its prefill and leaves at the step it ends,
//! without disturbing the others, and a long prompt stalls running streams by one chunk at
//! a time. Rows are kept dense: decoding sequences in rows `0..n`, the one being prefilled in
//! row `n`; a leaving row is refilled by moving the last one down (one copy of its cached
//! positions, when it leaves, never per step).
//!
//! Sampling and the per-request stops that need only tokens (EOS, `max_tokens`) happen here;
//! text, stop sequences and streaming are the caller's (`crate::generation`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::Instant;

use rand_chacha::ChaCha8Rng;
use tokio::sync::mpsc;

use crate::engine::decoder::Decoder;
use crate::engine::kv::{KvArena, KvGeometry};
use crate::engine::sampling::{SamplingParams, sample};
use edgewise_constraint::Guide;

/// Tuning of one model's batch loop.
#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    /// Most K/V cache bytes the model's sequences may hold at once.
    pub kv_budget_bytes: u64,
    /// Most prompt tokens prefilled between two decode steps.
    pub prefill_chunk: usize,
}

impl Default for BatchConfig {
    /// For short-lived loads (`models check`, tests): 64 MiB of K/V, 128-token chunks. A
    /// serving agent sizes the budget from the box's memory (`node`).
    fn default() -> Self {
        Self {
            kv_budget_bytes: 64 << 20,
            prefill_chunk: 128,
        }
    }
}

/// Cache capacity is allocated in steps of this many positions.
const CAPACITY_STEP: usize = 64;

/// One generation handed to the batch loop.
pub struct SequenceRequest {
    pub prompt: Vec<u32>,
    pub max_tokens: u32,
    pub eos: Vec<u32>,
    pub params: SamplingParams,
    pub rng: ChaCha8Rng,
    pub deadline: Option<Instant>,
    /// Where tokens go; the sequence ends when its receiver is dropped.
    pub events: mpsc::UnboundedSender<SequenceEvent>,
    /// The output's constraint: tokens it does not allow are masked before sampling.
    pub guide: Option<Guide>,
    /// A constraint that starts when this token is sampled (a tool call's opening tag, when
    /// the model may answer or call): from then on it is the sequence's guide.
    pub trigger: Option<(u32, Guide)>,
}

impl SequenceRequest {
    pub fn new(
        prompt: Vec<u32>,
        max_tokens: u32,
        eos: Vec<u32>,
        params: SamplingParams,
        seed: u64,
        deadline: Option<Instant>,
        events: mpsc::UnboundedSender<SequenceEvent>,
    ) -> Self {
        Self {
            prompt,
            max_tokens,
            eos,
            params,
            rng: rand::SeedableRng::seed_from_u64(seed),
            deadline,
            events,
            guide: None,
            trigger: None,
        }
    }

    /// The same, constrained by `guide`.
    pub fn with_guide(mut self, guide: Option<Guide>) -> Self {
        self.guide = guide;
        self
    }

    /// Cache positions the sequence can use at most.
    pub fn positions(&self) -> usize {
        self.prompt.len() + self.max_tokens as usize
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum SequenceEvent {
    /// A sampled token (not EOS) and its log-probability under the model.
    Token { id: u32, logprob: f32 },
    /// The model sampled an end-of-sequence token (with its log-probability).
    Eos { logprob: f32 },
    /// `max_tokens` tokens were generated; `incomplete`: the output does not yet satisfy the
    /// sequence's constraint.
    Length { incomplete: bool },
    /// The deadline passed after this many generated tokens.
    DeadlineExceeded { generated: u32 },
    /// ONNX Runtime failed, or the sequence cannot fit the K/V budget.
    Failed(String),
}

/// What the capacity reports and metrics read of a model's batch loop.
#[derive(Debug, Default)]
pub struct BatchStats {
    pub kv_bytes_in_use: AtomicU64,
    pub kv_budget_bytes: AtomicU64,
    /// Sequences holding a row (decoding or being prefilled).
    pub active: AtomicU32,
    /// Sequences admitted by the model's limits, waiting for a row (for their turn to be
    /// prefilled, or for K/V room).
    pub waiting: AtomicU32,
    /// Sequences that had to wait because the K/V budget had no room for them.
    pub kv_waits_total: AtomicU64,
    /// The most K/V bytes ever held at once (never above the budget).
    pub kv_bytes_high_water: AtomicU64,
    /// Decode steps run, and the rows they advanced (their ratio is the mean batch size).
    pub decode_steps: AtomicU64,
    pub decode_rows: AtomicU64,
}

/// The model's side of the batch loop: submit sequences; dropping it ends the loop once the
/// sequences already submitted are done.
pub struct BatchHandle {
    tx: std_mpsc::Sender<Vec<SequenceRequest>>,
    /// Joined on drop, so the decoder and its K/V arena are freed when the model is.
    thread: Option<std::thread::JoinHandle<()>>,
    pub stats: Arc<BatchStats>,
    pub geometry: KvGeometry,
    /// Width of the model's logits (its vocabulary as the decoder sees it).
    pub vocab: usize,
}

impl BatchHandle {
    pub fn spawn(decoder: Decoder, config: BatchConfig, name: &str) -> std::io::Result<Self> {
        let (tx, rx) = std_mpsc::channel();
        let stats = Arc::new(BatchStats::default());
        stats
            .kv_budget_bytes
            .store(config.kv_budget_bytes, Ordering::Relaxed);
        let geometry = decoder.geometry;
        let vocab = decoder.vocab;
        let mut worker = Worker {
            decoder,
            config,
            rx,
            open: true,
            arena: None,
            decoding: Vec::new(),
            prefilling: None,
            waiting: VecDeque::new(),
            kv_blocked: false,
            stats: stats.clone(),
            scratch: (Vec::new(), Vec::new()),
        };
        let thread = std::thread::Builder::new()
            .name(format!("decode-{name}"))
            .spawn(move || worker.run())?;
        Ok(Self {
            tx,
            thread: Some(thread),
            stats,
            geometry,
            vocab,
        })
    }

    /// Bytes of K/V cache `positions` cached positions of one sequence take.
    pub fn kv_bytes(&self, positions: usize) -> u64 {
        self.geometry.bytes_per_position() * positions as u64
    }

    pub fn kv_budget_bytes(&self) -> u64 {
        self.stats.kv_budget_bytes.load(Ordering::Relaxed)
    }

    /// Hands a sequence to the loop; fails only when the loop has stopped.
    pub fn submit(&self, seq: SequenceRequest) -> Result<(), LoopStopped> {
        self.submit_all(vec![seq])
    }

    /// Hands several sequences to the loop at once: they join its queue together, in order,
    /// before its next step (so the first is admitted before any later one is considered).
    pub fn submit_all(&self, seqs: Vec<SequenceRequest>) -> Result<(), LoopStopped> {
        self.tx.send(seqs).map_err(|_| LoopStopped)
    }
}

impl Drop for BatchHandle {
    fn drop(&mut self) {
        // closing the channel ends the loop once its sequences are done
        let (closed, _) = std_mpsc::channel();
        drop(std::mem::replace(&mut self.tx, closed));
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::warn!("a decode thread had panicked");
        }
    }
}

/// The batch loop is gone (its model was unloaded, or its thread failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoopStopped;

struct Sequence {
    req: SequenceRequest,
    /// Positions in the cache.
    len: usize,
    /// The token the next decode step feeds.
    last: u32,
    generated: u32,
}

impl Sequence {
    fn gone(&self) -> bool {
        self.req.events.is_closed()
    }

    fn expired(&self, now: Instant) -> bool {
        self.req.deadline.is_some_and(|d| now >= d)
    }

    /// Samples from `logits` (masked by the sequence's constraint, if any), sends the token;
    /// `false` when the sequence has ended.
    fn advance(&mut self, logits: &[f32], scratch: &mut (Vec<u32>, Vec<f32>)) -> bool {
        let id = match self.req.guide.as_mut() {
            None => sample(logits, &self.req.params, &mut self.req.rng),
            Some(guide) => {
                let allowed = match guide.allowed() {
                    Ok(a) => a,
                    Err(e) => {
                        let _ = self.req.events.send(SequenceEvent::Failed(e));
                        return false;
                    }
                };
                // sampling over the allowed tokens is sampling over the masked row
                let (ids, values) = scratch;
                let kind = edgewise_constraint::candidates(&allowed, logits, ids, values);
                let k = sample(values, &self.req.params, &mut self.req.rng);
                let id = match kind {
                    edgewise_constraint::Candidates::Dense => k,
                    edgewise_constraint::Candidates::Sparse => match ids.get(k as usize) {
                        Some(&id) => id,
                        None => {
                            let _ = self.req.events.send(SequenceEvent::Failed(
                                "the constraint allows none of the model's tokens".into(),
                            ));
                            return false;
                        }
                    },
                };
                // end-of-sequence was allowed because the output is complete: nothing to follow
                if !self.req.eos.contains(&id)
                    && let Err(e) = guide.accept(id)
                {
                    let _ = self.req.events.send(SequenceEvent::Failed(e));
                    return false;
                }
                id
            }
        };
        if self.req.guide.is_none()
            && self.req.trigger.as_ref().is_some_and(|(t, _)| *t == id)
            && let Some((_, mut guide)) = self.req.trigger.take()
        {
            if let Err(e) = guide.accept(id) {
                let _ = self.req.events.send(SequenceEvent::Failed(e));
                return false;
            }
            self.req.guide = Some(guide);
        }
        if self.req.eos.contains(&id) {
            let logprob = log_probability(logits, id);
            let _ = self.req.events.send(SequenceEvent::Eos { logprob });
            return false;
        }
        self.generated += 1;
        let event = SequenceEvent::Token {
            id,
            logprob: log_probability(logits, id),
        };
        if self.req.events.send(event).is_err() {
            return false;
        }
        if self.generated >= self.req.max_tokens {
            let incomplete = self.req.guide.as_mut().is_some_and(|g| !g.complete());
            let _ = self.req.events.send(SequenceEvent::Length { incomplete });
            return false;
        }
        self.last = id;
        true
    }
}

/// log softmax(logits)[id], at temperature 1 (the model's own confidence).
fn log_probability(logits: &[f32], id: u32) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = logits.iter().map(|&v| (v - max).exp()).sum();
    logits[id as usize] - max - sum.ln()
}

struct Worker {
    decoder: Decoder,
    config: BatchConfig,
    rx: std_mpsc::Receiver<Vec<SequenceRequest>>,
    open: bool,
    arena: Option<KvArena>,
    /// Row r holds `decoding[r]`.
    decoding: Vec<Sequence>,
    /// The sequence being prefilled, in row `decoding.len()`, with its prompt tokens left.
    prefilling: Option<(Sequence, usize)>,
    waiting: VecDeque<SequenceRequest>,
    /// The oldest waiting sequence is held back by the K/V budget (counted once).
    kv_blocked: bool,
    stats: Arc<BatchStats>,
    /// A constrained row's allowed tokens and their logits.
    scratch: (Vec<u32>, Vec<f32>),
}

impl Worker {
    fn run(&mut self) {
        while self.intake() {
            self.prune(Instant::now());
            self.admit();
            self.prefill_chunk();
            self.decode_step();
            if self.decoding.is_empty() && self.prefilling.is_none() {
                // nothing cached: give the memory back until the next sequence
                self.arena = None;
            }
            self.publish();
        }
    }

    fn idle(&self) -> bool {
        self.decoding.is_empty() && self.prefilling.is_none() && self.waiting.is_empty()
    }

    /// Takes submitted sequences (waiting for one when idle); `false`: stop the loop.
    fn intake(&mut self) -> bool {
        if self.idle() {
            if !self.open {
                return false;
            }
            match self.rx.recv() {
                Ok(seqs) => self.waiting.extend(seqs),
                Err(_) => return false,
            }
        }
        loop {
            match self.rx.try_recv() {
                Ok(seqs) => self.waiting.extend(seqs),
                Err(std_mpsc::TryRecvError::Empty) => return true,
                Err(std_mpsc::TryRecvError::Disconnected) => {
                    self.open = false;
                    return true;
                }
            }
        }
    }

    /// Ends sequences whose caller left or whose deadline passed, before the next step.
    fn prune(&mut self, now: Instant) {
        self.waiting.retain(|r| {
            if r.events.is_closed() {
                return false;
            }
            if r.deadline.is_some_and(|d| now >= d) {
                let _ = r
                    .events
                    .send(SequenceEvent::DeadlineExceeded { generated: 0 });
                return false;
            }
            true
        });
        if let Some((s, _)) = &self.prefilling
            && (s.gone() || s.expired(now))
        {
            if s.expired(now) {
                let _ = s
                    .req
                    .events
                    .send(SequenceEvent::DeadlineExceeded { generated: 0 });
            }
            self.prefilling = None;
        }
        for r in (0..self.decoding.len()).rev() {
            let s = &self.decoding[r];
            if s.gone() || s.expired(now) {
                if s.expired(now) && !s.gone() {
                    let _ = s.req.events.send(SequenceEvent::DeadlineExceeded {
                        generated: s.generated,
                    });
                }
                self.remove_row(r);
            }
        }
    }

    /// Row `r` leaves: the last decoding row moves into it, the prefilling row down by one.
    fn remove_row(&mut self, r: usize) {
        let last = self.decoding.len() - 1;
        if let Some(arena) = self.arena.as_mut() {
            if r != last {
                arena.move_row(last, r, self.decoding[last].len);
            }
            if let Some((p, _)) = &self.prefilling {
                arena.move_row(last + 1, last, p.len);
            }
        }
        self.decoding.swap_remove(r);
    }

    /// Gives the oldest waiting sequence a row if the budget has room (first come, first
    /// served: a large sequence is not overtaken by smaller ones).
    fn admit(&mut self) {
        if self.prefilling.is_some() {
            return;
        }
        let Some(front) = self.waiting.front() else {
            return;
        };
        let need = front.positions();
        let budget = self.config.kv_budget_bytes;
        let per_position = self.decoder.geometry.bytes_per_position();
        let rows = self.decoding.len() + 1;
        let (have_rows, have_cap) = self
            .arena
            .as_ref()
            .map_or((0, 0), |a| (a.rows(), a.capacity()));
        if have_rows < rows || have_cap < need {
            let cap = have_cap.max(need.div_ceil(CAPACITY_STEP) * CAPACITY_STEP);
            let fits = |rows: usize, cap: usize| per_position * (rows * cap) as u64 <= budget;
            // room for doubling the rows if the budget allows it, else just enough
            let grown = [rows.next_power_of_two().max(have_rows), rows.max(have_rows)]
                .into_iter()
                .map(|r| (r, cap))
                .chain([(rows.max(have_rows), need.max(have_cap))])
                .find(|&(r, c)| fits(r, c));
            let Some((new_rows, new_cap)) = grown else {
                if self.decoding.is_empty() {
                    // alone it does not fit: it never will (the service refuses these first)
                    if let Some(r) = self.waiting.pop_front() {
                        let _ = r.events.send(SequenceEvent::Failed(format!(
                            "{need} positions need {} bytes of K/V cache; the model's budget is {budget}",
                            per_position * need as u64
                        )));
                    }
                    self.kv_blocked = false;
                } else if !self.kv_blocked {
                    self.kv_blocked = true;
                    self.stats.kv_waits_total.fetch_add(1, Ordering::Relaxed);
                }
                return; // wait for rows to leave
            };
            let lens: Vec<usize> = self.decoding.iter().map(|s| s.len).collect();
            self.arena = Some(match self.arena.take() {
                Some(a) => a.grown(new_rows, new_cap, &lens),
                None => KvArena::new(self.decoder.geometry, new_rows, new_cap),
            });
        }
        self.kv_blocked = false;
        if let Some(req) = self.waiting.pop_front() {
            let left = req.prompt.len();
            self.prefilling = Some((
                Sequence {
                    req,
                    len: 0,
                    last: 0,
                    generated: 0,
                },
                left,
            ));
        }
    }

    fn prefill_chunk(&mut self) {
        let (Some((seq, left)), Some(arena)) = (self.prefilling.as_mut(), self.arena.as_mut())
        else {
            return;
        };
        let start = seq.req.prompt.len() - *left;
        let n = (*left).min(self.config.prefill_chunk.max(1));
        let row = self.decoding.len();
        let ids = &seq.req.prompt[start..start + n];
        match self.decoder.prefill(arena, row, seq.len, ids) {
            Ok(logits) => {
                seq.len += n;
                *left -= n;
                if *left == 0 {
                    let done = self.prefilling.take();
                    if let Some((mut seq, _)) = done
                        && seq.advance(logits, &mut self.scratch)
                    {
                        self.decoding.push(seq);
                    }
                }
            }
            Err(e) => {
                let _ = seq.req.events.send(SequenceEvent::Failed(e.0));
                self.prefilling = None;
            }
        }
    }

    fn decode_step(&mut self) {
        let Some(arena) = self.arena.as_mut() else {
            return;
        };
        if self.decoding.is_empty() {
            return;
        }
        let tokens: Vec<u32> = self.decoding.iter().map(|s| s.last).collect();
        let lens: Vec<usize> = self.decoding.iter().map(|s| s.len).collect();
        let vocab = self.decoder.vocab;
        match self.decoder.decode(arena, &tokens, &lens) {
            Ok(logits) => {
                self.stats.decode_steps.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .decode_rows
                    .fetch_add(tokens.len() as u64, Ordering::Relaxed);
                let mut ended = Vec::new();
                for (r, s) in self.decoding.iter_mut().enumerate() {
                    s.len += 1;
                    if !s.advance(&logits[r * vocab..(r + 1) * vocab], &mut self.scratch) {
                        ended.push(r);
                    }
                }
                for r in ended.into_iter().rev() {
                    self.remove_row(r);
                }
            }
            Err(e) => {
                for s in self.decoding.drain(..) {
                    let _ = s.req.events.send(SequenceEvent::Failed(e.0.clone()));
                }
                if let Some((s, _)) = self.prefilling.take() {
                    let _ = s.req.events.send(SequenceEvent::Failed(e.0.clone()));
                }
                self.arena = None;
            }
        }
    }

    fn publish(&self) {
        let s = &self.stats;
        let bytes = self.arena.as_ref().map_or(0, KvArena::bytes);
        s.kv_bytes_in_use.store(bytes, Ordering::Relaxed);
        s.kv_bytes_high_water.fetch_max(bytes, Ordering::Relaxed);
        s.active.store(
            (self.decoding.len() + usize::from(self.prefilling.is_some())) as u32,
            Ordering::Relaxed,
        );
        s.waiting
            .store(self.waiting.len() as u32, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::log_probability;

    #[test]
    fn log_probability_is_log_softmax() {
        let l = [1.0f32, 2.0, 3.0];
        let z: f32 = l.iter().map(|v| v.exp()).sum();
        assert!((log_probability(&l, 2) - (3.0f32.exp() / z).ln()).abs() < 1e-6);
        let p: f32 = (0..3).map(|i| log_probability(&l, i).exp()).sum();
        assert!((p - 1.0).abs() < 1e-6);
    }
}
