//! What the outcomes of `edgewise eval run` say about routing: how well each confidence
//! signal ranks right answers above wrong ones (AUROC), what a cascade at each threshold
//! keeps and serves locally, the threshold that meets a quality target (`calibrate`), and
//! the baselines a router must beat (static manifest quality, random at matched cost, the
//! best fixed split, the oracle). Pure: outcomes in, numbers out.

use std::collections::BTreeMap;

use super::run::Outcome;
use edgewise_gateway::routing::Signal;

/// Hosted prices, per million tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prices {
    pub input_per_million_usd: f64,
    pub output_per_million_usd: f64,
}

/// What a rung's answer is judged by: one of the agent's confidence signals (a cascade), or
/// the learned estimator's P(adequate) (a learned route) — a probability, never a
/// log-probability, so the two are never calibrated as one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Score {
    Confidence(Signal),
    Adequacy,
}

impl Score {
    /// Every confidence signal.
    pub const CONFIDENCE: [Score; 3] = [
        Score::Confidence(Signal::MeanLogprob),
        Score::Confidence(Signal::MinLogprob),
        Score::Confidence(Signal::P10Logprob),
    ];

    fn index(self) -> usize {
        match self {
            Score::Confidence(Signal::MeanLogprob) => 0,
            Score::Confidence(Signal::MinLogprob) => 1,
            Score::Confidence(Signal::P10Logprob) => 2,
            Score::Adequacy => 3,
        }
    }

    /// The value of this score among a rung's.
    pub fn of(self, scores: &[f32; 4]) -> f32 {
        scores[self.index()]
    }

    /// Its name in reports and policy blocks.
    pub fn name(self) -> &'static str {
        match self {
            Score::Confidence(s) => s.as_str(),
            Score::Adequacy => "p_adequate",
        }
    }
}

/// One rung of the local ladder's answer to an item.
#[derive(Debug, Clone, PartialEq)]
pub struct Rung {
    pub correct: bool,
    /// The three confidence signals, then P(adequate) (-inf when not estimated).
    pub scores: [f32; 4],
}

/// One item: its answer at each rung (smallest first), the hosted outcome and its cost.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub rungs: Vec<Rung>,
    pub hosted_correct: bool,
    pub hosted_cost_usd: f64,
    /// The item's kind (an exact-answer kind, an MMLU subject).
    pub group: String,
}

/// The cascade's ladder and its rows, and every model's accuracy.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// The ladder a cascade climbs: one model per parameter count (the smallest in bytes,
    /// as `decide` picks), smallest first.
    pub ladder: Vec<String>,
    pub rows: Vec<Row>,
    /// Every local model's accuracy on the items, by name.
    pub accuracy: BTreeMap<String, f64>,
    /// Every model's outcomes, for the signals' AUROC.
    pub by_model: BTreeMap<String, Vec<(bool, [f32; 4])>>,
}

/// An outcome's signals as a cascade sees them: an answer cut at `max_tokens` is the least
/// confident of all (the gateway escalates it whatever its log-probabilities), so a cascade
/// never keeps it; the learned estimate is made before the answer and stays.
fn scores_of(o: &Outcome) -> [f32; 4] {
    let signal = |v: f32| if o.cut { f32::NEG_INFINITY } else { v };
    [
        signal(o.mean_logprob),
        signal(o.min_logprob),
        signal(o.p10_logprob),
        o.p_adequate.unwrap_or(f32::NEG_INFINITY),
    ]
}

/// Outcomes → a table over the items every ladder model answered.
pub fn table(outcomes: &[Outcome], prices: Prices) -> Table {
    let mut models: Vec<(u64, u64, String)> = outcomes
        .iter()
        .map(|o| (o.parameters, o.size_bytes, o.model.clone()))
        .collect();
    models.sort();
    models.dedup();
    let mut ladder: Vec<(u64, String)> = Vec::new();
    for (p, _, name) in &models {
        if ladder.last().is_none_or(|(lp, _)| lp != p) {
            ladder.push((*p, name.clone()));
        }
    }
    let mut items: BTreeMap<(String, usize), BTreeMap<String, &Outcome>> = BTreeMap::new();
    for o in outcomes {
        items
            .entry((o.set.clone(), o.line))
            .or_default()
            .insert(o.model.clone(), o);
    }
    let mut rows = Vec::new();
    for answers in items.values() {
        let rungs: Option<Vec<&Outcome>> = ladder
            .iter()
            .map(|(_, m)| answers.get(m).copied())
            .collect();
        let Some(rungs) = rungs else { continue };
        let first = rungs[0];
        let hosted_cost_usd = (f64::from(first.prompt_tokens) * prices.input_per_million_usd
            + f64::from(first.completion_tokens.max(1)) * prices.output_per_million_usd)
            / 1e6;
        rows.push(Row {
            rungs: rungs
                .iter()
                .map(|o| Rung {
                    correct: o.correct,
                    scores: scores_of(o),
                })
                .collect(),
            hosted_correct: first.hosted_correct.unwrap_or(true),
            hosted_cost_usd,
            group: first.group.clone(),
        });
    }
    let mut by_model: BTreeMap<String, Vec<(bool, [f32; 4])>> = BTreeMap::new();
    for o in outcomes {
        by_model
            .entry(o.model.clone())
            .or_default()
            .push((o.correct, scores_of(o)));
    }
    let accuracy = by_model
        .iter()
        .map(|(m, v)| {
            (
                m.clone(),
                v.iter().filter(|(c, _)| *c).count() as f64 / v.len().max(1) as f64,
            )
        })
        .collect();
    Table {
        ladder: ladder.into_iter().map(|(_, m)| m).collect(),
        rows,
        accuracy,
        by_model,
    }
}

/// The area under the ROC curve of `score` for `label` (ties count half); `None` when
/// one class is empty.
pub fn auroc(points: &[(bool, f32)]) -> Option<f64> {
    let pos = points.iter().filter(|p| p.0).count();
    let neg = points.len() - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    let mut sorted: Vec<&(bool, f32)> = points.iter().collect();
    sorted.sort_by(|a, b| a.1.total_cmp(&b.1));
    // Mann-Whitney: the rank sum of the positives, ties given their mean rank
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j + 1 < sorted.len() && sorted[j + 1].1 == sorted[i].1 {
            j += 1;
        }
        let mean_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += sorted[i..=j].iter().filter(|p| p.0).count() as f64 * mean_rank;
        i = j + 1;
    }
    let (pos, neg) = (pos as f64, neg as f64);
    Some((rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg))
}

/// What a routing plan did over the rows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Fraction answered right.
    pub quality: f64,
    /// Fraction answered by a local model.
    pub local_share: f64,
    pub cost_usd: f64,
    /// Local generations per item (rungs asked, kept or not).
    pub generations: f64,
}

/// A cascade's thresholds, one per rung (smallest first); `None`: the rung is skipped
/// (never asked). Rungs past its end are never kept.
pub type Plan = Vec<Option<f32>>;

/// One threshold for every rung of `rows`.
pub fn uniform(rows: &[Row], threshold: f32) -> Plan {
    vec![Some(threshold); rows.first().map_or(0, |r| r.rungs.len())]
}

/// One item under a cascade: (answered right, answered locally, rungs asked).
fn cascade_item(
    r: &Row,
    score: Score,
    plan: &[Option<f32>],
    external: bool,
) -> (bool, bool, usize) {
    // P(adequate) is known before any answer: only the chosen model generates
    let before = score == Score::Adequacy;
    let mut asked = 0;
    for (g, t) in r.rungs.iter().zip(plan) {
        let Some(t) = t else { continue };
        asked += usize::from(!before);
        if score.of(&g.scores) >= *t {
            return (g.correct, true, asked.max(1));
        }
    }
    if external {
        (r.hosted_correct, false, asked)
    } else {
        (r.rungs.last().is_some_and(|g| g.correct), true, asked)
    }
}

/// Per item under a cascade (hosted step allowed): (right, local) as 0/1, and the hosted
/// model's right answers, for bounds over the items.
pub fn cascade_items(rows: &[Row], score: Score, plan: &[Option<f32>]) -> [Vec<f64>; 3] {
    let one = |b: bool| f64::from(u8::from(b));
    let mut out = [Vec::new(), Vec::new(), Vec::new()];
    for r in rows {
        let (right, local, _) = cascade_item(r, score, plan, true);
        out[0].push(one(right));
        out[1].push(one(local));
        out[2].push(one(r.hosted_correct));
    }
    out
}

/// A cascade at one `threshold` for every rung: each rung answers until one is confident;
/// when none is, the hosted model answers if `external` (else the largest rung's answer
/// stands).
pub fn cascade(rows: &[Row], score: Score, threshold: f32, external: bool) -> Point {
    cascade_plan(rows, score, &uniform(rows, threshold), external)
}

/// A cascade with a threshold per rung (`plan`).
pub fn cascade_plan(rows: &[Row], score: Score, plan: &[Option<f32>], external: bool) -> Point {
    let (mut right, mut local, mut cost, mut asked) = (0usize, 0usize, 0.0, 0usize);
    for r in rows {
        let (correct, here, a) = cascade_item(r, score, plan, external);
        right += usize::from(correct);
        local += usize::from(here);
        asked += a;
        if !here {
            cost += r.hosted_cost_usd;
        }
    }
    let n = rows.len().max(1) as f64;
    Point {
        quality: right as f64 / n,
        local_share: local as f64 / n,
        cost_usd: cost,
        generations: asked as f64 / n,
    }
}

/// Every threshold that changes a decision: each rung's signal values, and one above all.
fn thresholds(rows: &[Row], score: Score) -> Vec<f32> {
    let mut t: Vec<f32> = rows
        .iter()
        .flat_map(|r| r.rungs.iter().map(move |g| score.of(&g.scores)))
        .collect();
    t.push(f32::INFINITY);
    t.sort_by(f32::total_cmp);
    t.dedup();
    t
}

/// The thresholds tried for one rung of a joint fit: its own values (at most `most` of
/// them, evenly spaced quantiles), and skipping it.
fn rung_thresholds(rows: &[Row], rung: usize, score: Score, most: usize) -> Vec<Option<f32>> {
    let mut v: Vec<f32> = rows
        .iter()
        .map(|r| score.of(&r.rungs[rung].scores))
        .filter(|x| x.is_finite())
        .collect();
    v.sort_by(f32::total_cmp);
    v.dedup();
    let picked: Vec<f32> = if v.len() <= most {
        v
    } else {
        let mut q: Vec<f32> = (0..most)
            .map(|i| v[i * (v.len() - 1) / (most - 1).max(1)])
            .collect();
        q.dedup();
        q
    };
    picked.into_iter().map(Some).chain([None]).collect()
}

/// Always the hosted model.
pub fn hosted(rows: &[Row]) -> Point {
    let n = rows.len().max(1) as f64;
    Point {
        quality: rows.iter().filter(|r| r.hosted_correct).count() as f64 / n,
        local_share: 0.0,
        cost_usd: rows.iter().map(|r| r.hosted_cost_usd).sum(),
        generations: 0.0,
    }
}

/// How a cascade's thresholds are fitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// One threshold for every rung.
    One,
    /// One per rung, fitted jointly; a rung may be skipped.
    PerRung,
}

/// A calibrated cascade: the signal and thresholds that serve the most locally while
/// keeping `target` of the hosted model's quality.
#[derive(Debug, Clone, PartialEq)]
pub struct Calibration {
    pub score: Score,
    /// With `Fit::One`, every rung's; with `Fit::PerRung`, the largest asked rung's (the
    /// default for a model the fit never saw).
    pub threshold: f32,
    pub plan: Plan,
    pub fit: Fit,
    pub point: Point,
    /// With a confidence level: (level, the kept quality's one-sided lower bound at it).
    pub lower: Option<(f64, f64)>,
    /// What the bound's bootstrap resampled (`items`, `kinds`); empty without a bound.
    pub bound_over: &'static str,
}

/// Thresholds tried per rung in a joint fit (a ladder of three tries about 50³ plans).
const JOINT_STEPS: usize = 48;

/// Every plan whose point estimate keeps `target` of the hosted quality, the most local
/// first (then the best quality, then the fewest generations).
fn candidates(rows: &[Row], target: f64, scores: &[Score], fit: Fit) -> Vec<Calibration> {
    let need = target * hosted(rows).quality;
    let mut all = Vec::new();
    let rungs = rows.first().map_or(0, |r| r.rungs.len());
    for &score in scores {
        let plans: Vec<Plan> = match fit {
            Fit::One => thresholds(rows, score)
                .into_iter()
                .map(|t| uniform(rows, t))
                .collect(),
            Fit::PerRung => {
                let per: Vec<Vec<Option<f32>>> = (0..rungs)
                    .map(|i| rung_thresholds(rows, i, score, JOINT_STEPS))
                    .collect();
                let mut plans: Vec<Plan> = vec![Vec::new()];
                for options in &per {
                    plans = plans
                        .iter()
                        .flat_map(|p| {
                            options.iter().map(move |o| {
                                let mut q = p.clone();
                                q.push(*o);
                                q
                            })
                        })
                        .collect();
                }
                plans
            }
        };
        for plan in plans {
            let point = cascade_plan(rows, score, &plan, true);
            if point.quality + 1e-12 >= need {
                let threshold = plan
                    .iter()
                    .rev()
                    .find_map(|t| *t)
                    .filter(|t| t.is_finite())
                    .unwrap_or(0.0);
                all.push(Calibration {
                    score,
                    threshold,
                    plan,
                    fit,
                    point,
                    lower: None,
                    bound_over: "",
                });
            }
        }
    }
    // stable: among equals, the first signal and threshold found stays first
    all.sort_by(|a, b| {
        (b.point.local_share, b.point.quality, a.point.generations)
            .partial_cmp(&(a.point.local_share, a.point.quality, b.point.generations))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    all
}

/// The plan that serves the most locally while its point estimate keeps `target`.
pub fn calibrate(rows: &[Row], target: f64, scores: &[Score], fit: Fit) -> Option<Calibration> {
    candidates(rows, target, scores, fit).into_iter().next()
}

/// As `calibrate`, but the kept quality (the cascade's right answers over the hosted
/// model's, on the same items) must clear `target` at its one-sided lower bound at
/// confidence `level` (a paired bootstrap over the items), not at its point estimate.
pub fn calibrate_bounded(
    rows: &[Row],
    target: f64,
    (scores, fit): (&[Score], Fit),
    level: f64,
    boots: &[super::bounds::Bootstrap],
) -> Option<Calibration> {
    // of the plans that serve as many items locally, only the best is bootstrapped
    let mut tried = std::collections::HashSet::new();
    candidates(rows, target, scores, fit)
        .into_iter()
        .filter(|c| tried.insert((c.point.local_share * 1e9) as u64))
        .find_map(|c| {
            let [right, _, hosted] = cascade_items(rows, c.score, &c.plan);
            // the lowest of the bounds
            let lower = boots
                .iter()
                .map(|b| b.lower(&right, &hosted, level))
                .fold(f64::INFINITY, f64::min);
            (lower + 1e-12 >= target).then_some(Calibration {
                lower: Some((level, lower)),
                bound_over: match boots {
                    [b] => b.over,
                    _ => "items and over kinds, the lower",
                },
                ..c
            })
        })
}

/// What a bootstrap over the rows resamples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    Items,
    /// Items, and whole groups (kinds, subjects): the lower bound of the two.
    Kinds,
}

impl Resample {
    /// The bootstraps a bound takes the lowest of: over items; for `Kinds` over whole kinds
    /// too (few kinds spread little, so the item bound stays).
    pub fn bootstraps(self, rows: &[Row]) -> Vec<super::bounds::Bootstrap> {
        use super::bounds::{Bootstrap, DRAWS, SEED};
        let items = Bootstrap::new(rows.len(), DRAWS, SEED);
        match self {
            Resample::Items => vec![items],
            Resample::Kinds => vec![items, Bootstrap::by_group(&group_index(rows), DRAWS, SEED)],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Resample::Items => "items",
            Resample::Kinds => "items and kinds",
        }
    }
}

/// Each row's group as an index (groups numbered in order of first appearance), for a
/// bootstrap over groups.
pub fn group_index(rows: &[Row]) -> Vec<usize> {
    let mut seen: Vec<&str> = Vec::new();
    rows.iter()
        .map(|r| match seen.iter().position(|g| *g == r.group) {
            Some(i) => i,
            None => {
                seen.push(&r.group);
                seen.len() - 1
            }
        })
        .collect()
}

/// Leave one group out: for each kind of item, the thresholds calibrated on every other kind
/// (`fit`), measured on the kind left out. Per item, pooled over the kinds: (right, local)
/// as 0/1 and the hosted model's right answers (as `cascade_items`, for bounds), and how
/// many kinds were left out. A kind whose fit finds no threshold is sent to the hosted model
/// whole. `None` with fewer than two kinds.
pub fn leave_one_group_out(
    rows: &[Row],
    fit: impl Fn(&[Row]) -> Option<Calibration>,
) -> Option<([Vec<f64>; 3], usize)> {
    let mut groups: Vec<&str> = rows.iter().map(|r| r.group.as_str()).collect();
    groups.sort_unstable();
    groups.dedup();
    if groups.len() < 2 {
        return None;
    }
    let mut pooled: [Vec<f64>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    for g in &groups {
        let (out, rest): (Vec<Row>, Vec<Row>) = rows.iter().cloned().partition(|r| r.group == *g);
        let items = match fit(&rest) {
            Some(c) => cascade_items(&out, c.score, &c.plan),
            None => cascade_items(&out, Score::Adequacy, &[]),
        };
        for (all, these) in pooled.iter_mut().zip(items) {
            all.extend(these);
        }
    }
    Some((pooled, groups.len()))
}

/// Local share and kept quality of per-item outcomes (as `cascade_items` gives them).
pub fn shares(items: &[Vec<f64>; 3]) -> (f64, f64) {
    let [right, local, hosted] = items;
    let n = local.len().max(1) as f64;
    (
        local.iter().sum::<f64>() / n,
        right.iter().sum::<f64>() / hosted.iter().sum::<f64>().max(1.0),
    )
}

/// The local share of a random mix of one local model (accuracy `q`) with the hosted
/// model (accuracy `qe`) that keeps `target × qe` in expectation.
fn mix_share(q: f64, qe: f64, target: f64) -> f64 {
    if q >= target * qe {
        return 1.0;
    }
    ((qe - target * qe) / (qe - q)).clamp(0.0, 1.0)
}

/// The baselines' local share at `target` of the hosted quality.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Baselines {
    /// Manifest quality: every request of the route to one model, or all hosted.
    pub static_quality: f64,
    /// A random split between the smallest rung and the hosted model.
    pub random: f64,
    /// The best random split between any one local model and the hosted model.
    pub best_split: f64,
    /// Knowing every outcome.
    pub oracle: f64,
}

pub fn baselines(t: &Table, target: f64) -> Baselines {
    baselines_weighted(t, target, &vec![1; t.rows.len()])
}

/// The baselines with each row counted `w[i]` times (a bootstrap resample).
pub fn baselines_weighted(t: &Table, target: f64, w: &[u16]) -> Baselines {
    let rows = &t.rows;
    let count = |f: &dyn Fn(&Row) -> bool| -> f64 {
        rows.iter()
            .zip(w)
            .filter(|(r, _)| f(r))
            .map(|(_, k)| f64::from(*k))
            .sum()
    };
    let n = count(&|_| true).max(1.0);
    let qe = count(&|r| r.hosted_correct) / n;
    let rung_quality = |i: usize| count(&|r| r.rungs[i].correct) / n;
    let static_quality = if (0..t.ladder.len()).any(|i| rung_quality(i) >= target * qe) {
        1.0
    } else {
        0.0
    };
    let random = if t.ladder.is_empty() {
        0.0
    } else {
        mix_share(rung_quality(0), qe, target)
    };
    let best_split = (0..t.ladder.len())
        .map(|i| mix_share(rung_quality(i), qe, target))
        .fold(0.0, f64::max);
    // the oracle serves locally every item some rung gets right or the hosted model gets
    // wrong, then as many hosted-only items as the target leaves room for
    let free = count(&|r| r.rungs.iter().any(|g| g.correct) || !r.hosted_correct);
    let best_quality = count(&|r| r.rungs.iter().any(|g| g.correct) || r.hosted_correct);
    let room = (best_quality - target * qe * n).max(0.0).floor();
    let oracle = (free + room.min(n - free)) / n;
    Baselines {
        static_quality,
        random,
        best_split,
        oracle,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_cut_at_max_tokens_is_never_kept() {
        let outcome = |model: &str, parameters: u64, correct: bool, cut: bool| Outcome {
            completion_tokens: 12,
            cut,
            p_adequate: Some(0.9),
            ..Outcome::example(1, model, parameters, correct, -0.01)
        };
        let prices = Prices {
            input_per_million_usd: 1.0,
            output_per_million_usd: 1.0,
        };
        // the small model's answer looks sure but was cut; the large one's ended by itself
        let t = table(
            &[
                outcome("small", 1, false, true),
                outcome("large", 2, true, false),
            ],
            prices,
        );
        let p = cascade(&t.rows, Score::Confidence(Signal::MeanLogprob), -0.5, true);
        assert_eq!(
            (p.local_share, p.quality),
            (1.0, 1.0),
            "the large model's answer is kept"
        );
        // both cut: nothing local is kept, the hosted model answers
        let t = table(
            &[
                outcome("small", 1, true, true),
                outcome("large", 2, true, true),
            ],
            prices,
        );
        let p = cascade(
            &t.rows,
            Score::Confidence(Signal::MeanLogprob),
            -1000.0,
            true,
        );
        assert_eq!(p.local_share, 0.0);
        // the learned estimate is made before the answer: a cut one keeps it
        assert_eq!(t.rows[0].rungs[0].scores[3], 0.9);
    }

    fn row(rungs: &[(bool, f32)], hosted_correct: bool) -> Row {
        Row {
            rungs: rungs
                .iter()
                .map(|&(correct, s)| Rung {
                    correct,
                    scores: [s, s, s, s],
                })
                .collect(),
            hosted_correct,
            hosted_cost_usd: 1.0,
            group: String::new(),
        }
    }

    #[test]
    fn auroc_counts_ordered_pairs_and_ties() {
        type Case<'a> = (&'a [(bool, f32)], Option<f64>);
        let cases: &[Case<'_>] = &[
            (&[(true, 1.0), (false, 0.0)], Some(1.0)),
            (&[(true, 0.0), (false, 1.0)], Some(0.0)),
            (&[(true, 0.5), (false, 0.5)], Some(0.5)),
            // 2 positives x 2 negatives: (0.9>0.1, 0.9>0.4, 0.3>0.1, 0.3<0.4) = 3/4
            (
                &[(true, 0.9), (true, 0.3), (false, 0.1), (false, 0.4)],
                Some(0.75),
            ),
            (&[(true, 0.9), (true, 0.3)], None),
        ];
        for (points, want) in cases {
            assert_eq!(auroc(points), *want, "{points:?}");
        }
    }

    #[test]
    fn a_cascade_climbs_until_confident_and_escalates_only_when_allowed() {
        let rows = vec![
            row(&[(true, -0.1), (true, -0.1)], true), // the first rung is sure: local
            row(&[(false, -3.0), (true, -0.2)], true), // the second rung is sure: local
            row(&[(false, -3.0), (false, -2.0)], true), // nobody is sure: hosted
        ];
        let p = cascade(&rows, Score::Confidence(Signal::MeanLogprob), -1.0, true);
        assert_eq!(
            (p.quality, p.local_share, p.cost_usd),
            (1.0, 2.0 / 3.0, 1.0)
        );
        // confidential: no hosted step; the largest rung's (wrong) answer stands
        let p = cascade(&rows, Score::Confidence(Signal::MeanLogprob), -1.0, false);
        assert_eq!(
            (p.quality, p.local_share, p.cost_usd),
            (2.0 / 3.0, 1.0, 0.0)
        );
        // an impossible threshold is always-hosted (each rung asked in vain)
        assert_eq!(
            cascade(
                &rows,
                Score::Confidence(Signal::MeanLogprob),
                f32::INFINITY,
                true
            ),
            Point {
                generations: 2.0,
                ..hosted(&rows)
            }
        );
    }

    #[test]
    fn calibration_serves_the_most_locally_within_the_target() {
        let rows = vec![
            row(&[(true, -0.1)], true),
            row(&[(true, -0.5)], true),
            row(&[(false, -0.9)], true),
            row(&[(false, -2.0)], true),
        ];
        // 100 %: only the two right answers may stay local (threshold -0.5)
        let c = calibrate(&rows, 1.0, &Score::CONFIDENCE, Fit::One).unwrap();
        assert_eq!(
            (c.threshold, c.point.local_share, c.point.quality),
            (-0.5, 0.5, 1.0)
        );
        // 75 %: one wrong local answer is allowed
        let c = calibrate(&rows, 0.75, &Score::CONFIDENCE, Fit::One).unwrap();
        assert_eq!((c.threshold, c.point.local_share), (-0.9, 0.75));
    }

    #[test]
    fn thresholds_per_model_are_fitted_jointly_and_a_useless_rung_is_skipped() {
        // the small model is sure of everything and right on a quarter; the large one is
        // right exactly when it is sure (-0.1), wrong when unsure (-3.0)
        let rows: Vec<Row> = (0..40)
            .map(|i| {
                let large_right = i % 5 != 0;
                let large = if large_right { -0.1 } else { -3.0 };
                row(&[(i % 4 == 0, -0.05), (large_right, large)], true)
            })
            .collect();
        let one = calibrate(&rows, 1.0, &Score::CONFIDENCE, Fit::One).unwrap();
        let joint = calibrate(&rows, 1.0, &Score::CONFIDENCE, Fit::PerRung).unwrap();
        // one threshold above the small model's -0.05 also passes the large model's sure
        // answers by: nothing local at 100 %
        assert_eq!(one.point.local_share, 0.0, "{one:?}");
        // per model: the small one skipped (it never asks), the large one kept when sure
        assert_eq!(joint.plan, vec![None, Some(-0.1)], "{joint:?}");
        assert_eq!(
            (
                joint.point.local_share,
                joint.point.quality,
                joint.point.generations
            ),
            (0.8, 1.0, 1.0)
        );
        // the policy block names each model (rounded down: -0.1 in f32 is below -0.1)
        let block = crate::eval::render_calibration(
            &joint,
            &["small".into(), "large".into()],
            1.0,
            16,
            "s",
        );
        assert!(
            block.contains(
                "  threshold: -0.1001\n  thresholds:\n    large: -0.1001\n  skip: [small]\n"
            ),
            "{block}"
        );
    }

    #[test]
    fn a_bounded_calibration_keeps_the_target_at_its_lower_bound() {
        // 200 items: the small model is right on the confident half and on a quarter of the
        // rest; the hosted model on all. Confidence falls with the item index.
        let rows: Vec<Row> = (0..200)
            .map(|i| {
                let right = i < 100 || i % 4 == 0;
                row(&[(right, -(i as f32) / 100.0)], true)
            })
            .collect();
        let boot = crate::eval::bounds::Bootstrap::new(rows.len(), 1000, 1);
        let point = calibrate(&rows, 0.9, &Score::CONFIDENCE, Fit::One).unwrap();
        let bounded = calibrate_bounded(
            &rows,
            0.9,
            (&Score::CONFIDENCE, Fit::One),
            0.9,
            std::slice::from_ref(&boot),
        )
        .unwrap();
        // the point estimate sits at the target; the bound needs a margin below it, so
        // fewer items stay local
        assert!(
            point.point.quality >= 0.9 && point.point.quality < 0.92,
            "{point:?}"
        );
        assert!(
            bounded.point.local_share < point.point.local_share,
            "{bounded:?}"
        );
        let (level, lower) = bounded.lower.unwrap();
        assert_eq!(level, 0.9);
        assert!(lower >= 0.9 && bounded.point.quality > lower, "{bounded:?}");
        // at 100 % only right answers stay local: no spread, so the bound and the point
        // estimate agree (the confident half and item 100)
        let exact = calibrate_bounded(
            &rows,
            1.0,
            (&Score::CONFIDENCE, Fit::One),
            0.9,
            std::slice::from_ref(&boot),
        )
        .unwrap();
        assert_eq!(exact.point.local_share, 0.505);
        assert_eq!(exact.lower, Some((0.9, 1.0)));
    }

    #[test]
    fn leaving_a_kind_out_measures_the_threshold_on_a_kind_it_never_saw() {
        // kind a: confident and right; kind b: just as confident and always wrong
        let mut rows: Vec<Row> = (0..40)
            .map(|i| Row {
                group: if i < 20 { "a" } else { "b" }.into(),
                ..row(&[(i < 20, -0.1)], true)
            })
            .collect();
        // a third kind the small model is unsure of and sometimes right on
        rows.extend((0..20).map(|i| Row {
            group: "c".into(),
            ..row(&[(i % 2 == 0, -2.0)], true)
        }));
        let fit = |r: &[Row]| calibrate(r, 0.9, &Score::CONFIDENCE, Fit::One);
        let (items, groups) = leave_one_group_out(&rows, fit).unwrap();
        let (local, kept) = shares(&items);
        assert_eq!(groups, 3);
        // calibrated without b, the threshold keeps b's confident wrong answers: the promise
        // breaks on the kind left out, which in-sample calibration hides
        let in_sample = calibrate(&rows, 0.9, &Score::CONFIDENCE, Fit::One).unwrap();
        assert!(in_sample.point.quality >= 0.9, "{in_sample:?}");
        assert!(kept < 0.9, "{local} {kept}");
        // one kind alone: nothing to leave out
        assert!(leave_one_group_out(&rows[..20], fit).is_none());
    }

    #[test]
    fn baselines_match_their_definitions() {
        let t = Table {
            ladder: vec!["small".into(), "large".into()],
            rows: vec![
                row(&[(true, 0.0), (true, 0.0)], true),
                row(&[(false, 0.0), (true, 0.0)], true),
                row(&[(false, 0.0), (false, 0.0)], false),
                row(&[(false, 0.0), (false, 0.0)], true),
            ],
            accuracy: BTreeMap::new(),
            by_model: BTreeMap::new(),
        };
        // hosted 0.75; small 0.25, large 0.5
        let b = baselines(&t, 0.95);
        assert_eq!(b.static_quality, 0.0);
        // random with small: s = (0.75 - 0.7125) / (0.75 - 0.25) = 0.075
        assert!((b.random - 0.075).abs() < 1e-9, "{b:?}");
        assert!((b.best_split - 0.15).abs() < 1e-9, "{b:?}");
        // the oracle: 3 items free (two right locally, one the hosted model gets wrong);
        // best quality 3/4 and 0.95 x 0.75 x 4 = 2.85 leaves no room for the fourth
        assert_eq!(b.oracle, 0.75);
        assert_eq!(baselines(&t, 0.6).static_quality, 1.0);
        // a resample that counts every row twice changes nothing; one without the hosted
        // model's miss (and the last row twice) has hosted 1.0 and large 0.5: the best split
        // serves (1 - 0.95) / (1 - 0.5) = 0.1 locally
        assert_eq!(baselines_weighted(&t, 0.95, &[2, 2, 2, 2]), b);
        let w = baselines_weighted(&t, 0.95, &[1, 1, 0, 2]);
        assert!((w.best_split - 0.1).abs() < 1e-9, "{w:?}");
    }
}
