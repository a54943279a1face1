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

/// The `n` largest logits' indices, largest first: a selection over the vocabulary (O(V)),
/// then a sort of the `n` alone — never a sort of the whole vocabulary.
fn top_n(logits: &[f32], n: usize) -> Vec<usize> {
    let by_logit_desc = |a: &usize, b: &usize| logits[*b].total_cmp(&logits[*a]).then(a.cmp(b));
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    if n < idx.len() {
        idx.select_nth_unstable_by(n, by_logit_desc);
        idx.truncate(n);
    }
    idx.sort_unstable_by(by_logit_desc);
    idx
}

/// A draw from `weights` (not normalised) over `idx`, in that order.
fn draw(idx: &[usize], weights: &[f32], rng: &mut ChaCha8Rng) -> u32 {
    let sum: f32 = weights.iter().sum();
    let r: f32 = rng.random::<f32>() * sum;
    let mut acc = 0.0;
    for (k, &w) in weights.iter().enumerate() {
        acc += w;
        if r < acc {
            return idx[k] as u32;
        }
    }
    idx[weights.len().saturating_sub(1)] as u32
}

/// Temperature sampling over the top-k tokens (all when `top_k` is off), then the smallest
/// set of the most likely whose probability reaches `top_p`. Runs in O(V) for the usual
/// settings: the head is found by selection, and top-p alone widens its head only until the
/// mass is reached.
pub fn sample(logits: &[f32], p: &SamplingParams, rng: &mut ChaCha8Rng) -> u32 {
    if p.temperature <= 0.0 || logits.len() < 2 {
        return argmax(logits);
    }
    let v = logits.len();
    let k = if p.top_k > 0 && p.top_k < v {
        p.top_k
    } else {
        v
    };
    let nucleus = p.top_p > 0.0 && p.top_p < 1.0;
    let max = logits[argmax(logits) as usize];
    let weight = |i: usize| ((logits[i] - max) / p.temperature).exp();
    if !nucleus {
        if k == v {
            // the whole vocabulary, in index order: no ordering needed
            let idx: Vec<usize> = (0..v).collect();
            let weights: Vec<f32> = (0..v).map(weight).collect();
            return draw(&idx, &weights, rng);
        }
        let idx = top_n(logits, k);
        let weights: Vec<f32> = idx.iter().map(|&i| weight(i)).collect();
        return draw(&idx, &weights, rng);
    }
    // top-p: the candidates' total mass, then the head in order until it holds top_p of it
    let total: f32 = if k == v {
        (0..v).map(weight).sum()
    } else {
        top_n(logits, k).into_iter().map(weight).sum()
    };
    let mut head = k.min(64);
    loop {
        let idx = top_n(logits, head);
        let mut acc = 0.0;
        for (n, &i) in idx.iter().enumerate() {
            acc += weight(i) / total;
            if acc >= p.top_p {
                let kept = &idx[..=n];
                let weights: Vec<f32> = kept.iter().map(|&i| weight(i)).collect();
                return draw(kept, &weights, rng);
            }
        }
        if head >= k {
            // rounding kept the sum under top_p: every candidate stays
            let weights: Vec<f32> = idx.iter().map(|&i| weight(i)).collect();
            return draw(&idx, &weights, rng);
        }
        head = (head * 4).min(k);
    }
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

    /// The set a sort-based reference keeps: top-k of the sorted logits, then the smallest
    /// prefix whose normalised mass reaches top-p.
    fn kept_by_sorting(logits: &[f32], p: &SamplingParams) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..logits.len()).collect();
        idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        if p.top_k > 0 && p.top_k < idx.len() {
            idx.truncate(p.top_k);
        }
        let max = logits[idx[0]];
        let w: Vec<f32> = idx
            .iter()
            .map(|&i| ((logits[i] - max) / p.temperature).exp())
            .collect();
        let sum: f32 = w.iter().sum();
        if p.top_p > 0.0 && p.top_p < 1.0 {
            let mut acc = 0.0;
            for (n, x) in w.iter().enumerate() {
                acc += x / sum;
                if acc >= p.top_p {
                    idx.truncate(n + 1);
                    break;
                }
            }
        }
        idx.sort_unstable();
        idx
    }

    #[test]
    fn selection_keeps_what_a_full_sort_keeps() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        // a vocabulary-sized row of logits, seeded
        let logits: Vec<f32> = (0..5000)
            .map(|_| rng.random::<f32>() * 12.0 - 6.0)
            .collect();
        for (top_k, top_p, temperature) in [
            (0, 0.9, 1.0),
            (0, 0.5, 0.7),
            (40, 0.95, 1.0),
            (40, 1.0, 1.3),
            (3000, 0.99, 2.0),
            (0, 1.0, 1.0),
        ] {
            let p = SamplingParams {
                temperature,
                top_p,
                top_k,
            };
            let allowed: std::collections::BTreeSet<usize> =
                kept_by_sorting(&logits, &p).into_iter().collect();
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..400 {
                let t = sample(&logits, &p, &mut rng) as usize;
                assert!(
                    allowed.contains(&t),
                    "{top_k} {top_p}: {t} is outside the kept set"
                );
                seen.insert(t);
            }
            assert!(seen.len() > 1, "{top_k} {top_p}: one token only");
        }
    }
}
