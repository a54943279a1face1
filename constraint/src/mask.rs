//! Applying an allowed-token set to a row of logits.

use llguidance::toktrie::SimpleVob;

/// Sets the logit of every token `allowed` does not hold to −∞, a 32-token word at a time
/// (most words of a JSON mask are all-allowed or all-denied).
pub fn apply(allowed: &SimpleVob, logits: &mut [f32]) {
    for (w, &word) in allowed.as_slice().iter().enumerate() {
        let start = w * 32;
        if start >= logits.len() {
            break;
        }
        let end = (start + 32).min(logits.len());
        if word == u32::MAX {
            continue;
        }
        let row = &mut logits[start..end];
        if word == 0 {
            row.fill(f32::NEG_INFINITY);
            continue;
        }
        for (b, v) in row.iter_mut().enumerate() {
            if word & (1 << b) == 0 {
                *v = f32::NEG_INFINITY;
            }
        }
    }
    // ids past the mask's end (none when it is as wide as the logits) are never allowed
    let covered = allowed.as_slice().len() * 32;
    if covered < logits.len() {
        logits[covered..].fill(f32::NEG_INFINITY);
    }
}

/// What sampling under a constraint draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Candidates {
    /// `ids[k]` is the token of `values[k]`: the allowed tokens alone.
    Sparse,
    /// `values` is the whole row, the tokens not allowed at −∞: `k` is the token.
    Dense,
}

/// The row as sampling under `allowed` sees it, in `ids` and `values`: the allowed tokens
/// alone when they are few (most of a JSON step: all-denied words are skipped whole), else
/// the whole row copied with the rest at −∞ (inside a string nearly every token is allowed,
/// and one copy is cheaper than gathering them one by one).
pub fn candidates(
    allowed: &SimpleVob,
    logits: &[f32],
    ids: &mut Vec<u32>,
    values: &mut Vec<f32>,
) -> Candidates {
    // the set's size by words: a dense one has most words non-zero
    let words = allowed.as_slice();
    let live = words.iter().filter(|&&w| w != 0).count();
    if live * 4 > words.len() {
        values.clear();
        values.extend_from_slice(logits);
        apply(allowed, values);
        return Candidates::Dense;
    }
    gather(allowed, logits, ids, values);
    Candidates::Sparse
}

/// The allowed tokens' ids and logits, in id order, into `ids` and `values` (cleared first).
pub fn gather(allowed: &SimpleVob, logits: &[f32], ids: &mut Vec<u32>, values: &mut Vec<f32>) {
    ids.clear();
    values.clear();
    for (w, &word) in allowed.as_slice().iter().enumerate() {
        if word == 0 {
            continue;
        }
        let start = w * 32;
        let mut bits = word;
        while bits != 0 {
            let b = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            let id = start + b;
            if let Some(&v) = logits.get(id) {
                ids.push(id as u32);
                values.push(v);
            }
        }
    }
}
