//! Picking the next token from logits: greedy, or temperature with top-k and top-p.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

#[derive(Debug, Clone, Copy)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// 0 or >= 1 means off.
    pub top_p: f32,
    /// 0 means off.
    pub top_k: usize,
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
        }
    }
}

/// Index of the largest logit (the first on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

pub fn sample(logits: &[f32], p: &SamplingParams, rng: &mut ChaCha8Rng) -> u32 {
    if p.temperature <= 0.0 || logits.len() < 2 {
        return argmax(logits);
    }
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    // sort descending by logit; only the head matters when top-k or top-p are set
    idx.sort_unstable_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if p.top_k > 0 && p.top_k < idx.len() {
        idx.truncate(p.top_k);
    }
    let max = logits[idx[0]];
    let mut probs: Vec<f32> = idx
        .iter()
        .map(|&i| ((logits[i] - max) / p.temperature).exp())
        .collect();
    let sum: f32 = probs.iter().sum();
    probs.iter_mut().for_each(|x| *x /= sum);
    if p.top_p > 0.0 && p.top_p < 1.0 {
        let mut acc = 0.0;
        let mut keep = probs.len();
        for (i, &x) in probs.iter().enumerate() {
            acc += x;
            if acc >= p.top_p {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep);
        idx.truncate(keep);
        let s: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= s);
    }
    let r: f32 = rng.random();
    let mut acc = 0.0;
    for (k, &x) in probs.iter().enumerate() {
        acc += x;
        if r < acc {
            return idx[k] as u32;
        }
    }
    idx[probs.len() - 1] as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn greedy_takes_the_largest() {
        assert_eq!(argmax(&[0.1, 3.0, 2.9]), 1);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        assert_eq!(
            sample(&[0.1, 3.0, 2.9], &SamplingParams::greedy(), &mut rng),
            1
        );
    }

    #[test]
    fn top_k_one_is_greedy_and_seeds_repeat() {
        let logits = [1.0, 2.0, 1.5, 0.3];
        let p = SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 1,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        assert!((0..50).all(|_| sample(&logits, &p, &mut rng) == 1));
        let p = SamplingParams {
            temperature: 1.0,
            top_p: 0.9,
            top_k: 0,
        };
        let draw = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            (0..20)
                .map(|_| sample(&logits, &p, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(42), draw(42));
        // top-p 0.9 drops the least likely token (index 3, p ~ 0.07)
        assert!(draw(42).iter().all(|&t| t != 3));
    }
}
