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
