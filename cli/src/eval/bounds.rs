//! Confidence bounds on routing figures from a paired bootstrap over items.
//!
//! Every figure the evaluation reports is a ratio of sums over the same items (right answers
//! over items, kept quality over the hosted model's): resampling the items with replacement
//! and recomputing the ratio on each resample gives its sampling spread. The resamples are
//! drawn once per table with a fixed seed, so a report or a calibration is reproducible, and
//! every figure of one table is bounded over the same resamples.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Resamples used by default: enough for the 5 % and 95 % quantiles to settle within a
/// fraction of a point on a few hundred items.
pub const DRAWS: usize = 1000;
/// The seed every report and calibration draws from.
pub const SEED: u64 = 0x5eed_ed9e;

/// The multiplicity of each item in each resample.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    weights: Vec<Vec<u16>>,
    /// What a resample draws: `items` or `kinds`.
    pub over: &'static str,
}

impl Bootstrap {
    /// `draws` resamples of `n` items, each `n` items drawn with replacement.
    pub fn new(n: usize, draws: usize, seed: u64) -> Self {
        let each: Vec<usize> = (0..n).collect();
        Self::resample(&each, draws, seed, "items")
    }

    /// `draws` resamples of whole groups: each draws as many groups as there are, with
    /// replacement, and takes every item of each (`group[i]` is item i's group). Kinds of
    /// request differ more than items of one kind, and traffic brings kinds calibration
    /// never saw: resampling kinds bounds what a new kind may do, which resampling items
    /// (all of the same kinds) does not.
    pub fn by_group(group: &[usize], draws: usize, seed: u64) -> Self {
        Self::resample(group, draws, seed, "kinds")
    }

    /// Items resampled by their groups (an item its own group: a plain bootstrap).
    fn resample(group: &[usize], draws: usize, seed: u64, over: &'static str) -> Self {
        let g = group.iter().max().map_or(0, |m| m + 1);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let weights = (0..draws)
            .map(|_| {
                let mut times = vec![0u16; g];
                for _ in 0..g {
                    let k = rng.random_range(0..g);
                    times[k] = times[k].saturating_add(1);
                }
                group.iter().map(|&k| times[k]).collect()
            })
            .collect();
        Self { weights, over }
    }

    /// The ratio Σ num / Σ den on every resample (a resample whose denominator is 0 counts
    /// as ratio 1), sorted.
    fn ratios(&self, num: &[f64], den: &[f64]) -> Vec<f64> {
        let mut r: Vec<f64> = self
            .weights
            .iter()
            .map(|w| {
                let (mut a, mut b) = (0.0, 0.0);
                for ((&k, &x), &y) in w.iter().zip(num).zip(den) {
                    let k = f64::from(k);
                    a += k * x;
                    b += k * y;
                }
                if b > 0.0 { a / b } else { 1.0 }
            })
            .collect();
        r.sort_by(f64::total_cmp);
        r
    }

    /// The central interval at `level` of any statistic of a resample, given its items'
    /// multiplicities.
    pub fn interval_with(&self, stat: impl Fn(&[u16]) -> f64, level: f64) -> (f64, f64) {
        let mut r: Vec<f64> = self.weights.iter().map(|w| stat(w)).collect();
        r.sort_by(f64::total_cmp);
        (
            quantile(&r, (1.0 - level) / 2.0),
            quantile(&r, (1.0 + level) / 2.0),
        )
    }

    /// The one-sided lower bound of Σ num / Σ den at confidence `level` (0.5..1): the
    /// (1 − level) quantile of the resampled ratios.
    pub fn lower(&self, num: &[f64], den: &[f64], level: f64) -> f64 {
        quantile(&self.ratios(num, den), 1.0 - level)
    }

    /// The central interval of Σ num / Σ den at `level`: the (1 − level)/2 and (1 + level)/2
    /// quantiles.
    pub fn interval(&self, num: &[f64], den: &[f64], level: f64) -> (f64, f64) {
        let r = self.ratios(num, den);
        (
            quantile(&r, (1.0 - level) / 2.0),
            quantile(&r, (1.0 + level) / 2.0),
        )
    }
}

/// The `q` quantile (0..=1) of sorted values, by nearest rank (0 for none).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = (q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_bracket_the_estimate_and_narrow_with_more_items() {
        // 70 % right, as a ratio over ones
        let width = |n: usize| {
            let num: Vec<f64> = (0..n).map(|i| f64::from(u8::from(i % 10 < 7))).collect();
            let den = vec![1.0; n];
            let b = Bootstrap::new(n, DRAWS, SEED);
            let (lo, hi) = b.interval(&num, &den, 0.9);
            assert!(lo < 0.7 && 0.7 < hi, "{n}: {lo}..{hi}");
            assert!(b.lower(&num, &den, 0.9) < 0.7);
            // one-sided at 90 % sits above the two-sided interval's lower end
            assert!(b.lower(&num, &den, 0.9) >= lo);
            hi - lo
        };
        let (small, large) = (width(100), width(1600));
        // the standard error falls with the square root of n: 4× narrower for 16× the items
        assert!(
            large < small / 3.0 && large > small / 5.0,
            "{small} {large}"
        );
        // ~ 2 × 1.645 × sqrt(0.21 / 100) = 0.151 at 100 items
        assert!((small - 0.151).abs() < 0.03, "{small}");
    }

    #[test]
    fn a_bootstrap_over_kinds_spreads_as_the_kinds_differ() {
        // 10 kinds of 40 items: right on all of the even kinds, none of the odd ones
        let group: Vec<usize> = (0..400).map(|i| i / 40).collect();
        let num: Vec<f64> = group
            .iter()
            .map(|g| f64::from(u8::from(g % 2 == 0)))
            .collect();
        let den = vec![1.0; 400];
        let items = Bootstrap::new(400, DRAWS, SEED).interval(&num, &den, 0.9);
        let kinds = Bootstrap::by_group(&group, DRAWS, SEED).interval(&num, &den, 0.9);
        // items: ~ 2 × 1.645 × sqrt(0.25 / 400) = 0.08 wide; kinds: ~ 2 × 1.645 × sqrt(0.25
        // / 10) = 0.52 wide
        assert!(items.1 - items.0 < 0.12, "{items:?}");
        assert!(kinds.1 - kinds.0 > 0.35, "{kinds:?}");
        // kinds that agree spread no more than their items
        let same: Vec<f64> = (0..400).map(|i| f64::from(u8::from(i % 2 == 0))).collect();
        let k = Bootstrap::by_group(&group, DRAWS, SEED).interval(&same, &den, 0.9);
        assert!(k.1 - k.0 < 0.01, "{k:?}");
    }

    #[test]
    fn the_same_seed_draws_the_same_resamples() {
        let num = [1.0, 0.0, 1.0, 1.0, 0.0];
        let den = [1.0; 5];
        let a = Bootstrap::new(5, 200, 7).interval(&num, &den, 0.9);
        let b = Bootstrap::new(5, 200, 7).interval(&num, &den, 0.9);
        assert_eq!(a, b);
        // all right: no spread
        assert_eq!(
            Bootstrap::new(5, 200, 7).interval(&[1.0; 5], &den, 0.9),
            (1.0, 1.0)
        );
    }
}
