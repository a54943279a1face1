//! The routing report as Markdown: per set, each signal's AUROC per model, then each
//! estimator against the baselines at 99 / 95 / 90 % of the hosted model's quality.

use std::fmt::Write;

use super::analysis::{self, Calibration, Fit, Prices, Resample, Score, Table};
use edgewise_gateway::routing::Signal;

pub const TARGETS: [f64; 3] = [0.99, 0.95, 0.90];

/// The report for one set's outcomes.
pub fn render(
    set: &str,
    outcomes: &[super::run::Outcome],
    learned: Option<&[super::run::Outcome]>,
    prices: Prices,
) -> String {
    let t = analysis::table(outcomes, prices);
    let lt = learned.map(|l| analysis::table(l, prices));
    let mut out = String::new();
    let hosted = analysis::hosted(&t.rows);
    let _ = writeln!(
        out,
        "### {set} ({} items; hosted quality {:.1} %, always-hosted cost ${:.4})\n",
        t.rows.len(),
        100.0 * hosted.quality,
        hosted.cost_usd
    );
    let _ = writeln!(
        out,
        "| model | accuracy | AUROC mean_logprob | AUROC min_logprob | AUROC p10_logprob |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|");
    for (m, v) in &t.by_model {
        let a = |s: Signal| {
            let pts: Vec<(bool, f32)> = v
                .iter()
                .map(|(c, x)| (*c, Score::Confidence(s).of(x)))
                .collect();
            analysis::auroc(&pts).map_or("—".to_string(), |x| format!("{x:.3}"))
        };
        let _ = writeln!(
            out,
            "| {m}{} | {:.1} % | {} | {} | {} |",
            if t.ladder.contains(m) {
                " (ladder)"
            } else {
                ""
            },
            100.0 * t.accuracy[m],
            a(Signal::MeanLogprob),
            a(Signal::MinLogprob),
            a(Signal::P10Logprob)
        );
    }
    let _ = writeln!(
        out,
        "\nServed locally at ≥ X % of the hosted quality, with 90 % intervals over resampled items (cascade: smallest first, in-sample threshold; held-out: threshold from the other half of the items, odd/even):\n"
    );
    let _ = writeln!(
        out,
        "| target | cascade (signal, threshold) | cascade quality / cost saved | cascade held-out local / kept | learned (threshold) | learned quality / cost saved | static | random | best fixed split | oracle |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");
    let boot = Resample::Items.bootstraps(&t.rows).remove(0);
    let ones = vec![1.0; t.rows.len()];
    // the local share's interval with the thresholds fixed
    let spread = |c: &Calibration, rows: &[analysis::Row]| {
        let [_, local, _] = analysis::cascade_items(rows, c.score, &c.plan);
        let (lo, hi) = boot.interval(&local, &ones, LEVEL);
        format!("[{}, {}]", pct(lo), pct(hi))
    };
    let cell = |c: Option<Calibration>, rows: &[analysis::Row], named: bool| match c {
        Some(c) => (
            if named {
                format!(
                    "**{:.1} %** {} ({}, {:.3})",
                    100.0 * c.point.local_share,
                    spread(&c, rows),
                    c.score.name(),
                    c.threshold
                )
            } else {
                format!(
                    "**{:.1} %** {} ({:.3})",
                    100.0 * c.point.local_share,
                    spread(&c, rows),
                    c.threshold
                )
            },
            format!(
                "{:.1} % / {:.0} %",
                100.0 * c.point.quality / hosted.quality.max(1e-9),
                100.0 * (1.0 - c.point.cost_usd / hosted.cost_usd.max(1e-12))
            ),
        ),
        None => ("—".into(), "—".into()),
    };
    for target in TARGETS {
        let b = analysis::baselines(&t, target);
        let (c, q) = cell(
            analysis::calibrate(&t.rows, target, &Score::CONFIDENCE, Fit::One),
            &t.rows,
            true,
        );
        let (lc, lq) = match &lt {
            Some(lt) => cell(
                analysis::calibrate(&lt.rows, target, &[Score::Adequacy], Fit::One),
                &lt.rows,
                false,
            ),
            None => ("—".into(), "—".into()),
        };
        // each baseline with its interval over resampled items
        let base = |f: fn(&analysis::Baselines) -> f64| {
            let (lo, hi) =
                boot.interval_with(|w| f(&analysis::baselines_weighted(&t, target, w)), LEVEL);
            format!("{} % [{}, {}]", pct(f(&b)), pct(lo), pct(hi))
        };
        let held = held_out(&t, target).map_or("—".into(), |(s, k)| {
            format!("{:.1} % / {:.1} %", 100.0 * s, 100.0 * k)
        });
        let _ = writeln!(
            out,
            "| {:.0} % | {c} | {q} | {held} | {lc} | {lq} | {:.1} % | {} | {} | {} |",
            100.0 * target,
            100.0 * b.static_quality,
            base(|b| b.random),
            base(|b| b.best_split),
            base(|b| b.oracle)
        );
    }
    intervals(&mut out, &t);
    if let Some(lt) = &lt {
        let _ = writeln!(
            out,
            "\nLearned estimator, AUROC of P(adequate) (heads trained on the other half of the items):\n"
        );
        for (m, v) in &lt.by_model {
            let pts: Vec<(bool, f32)> =
                v.iter().map(|(c, x)| (*c, Score::Adequacy.of(x))).collect();
            let _ = writeln!(
                out,
                "- {m}: {}",
                analysis::auroc(&pts).map_or("—".to_string(), |x| format!("{x:.3}"))
            );
        }
    }
    // confidential requests may not leave the box: the cascade ends at the largest rung
    if let Some(c) = analysis::calibrate(&t.rows, 0.95, &Score::CONFIDENCE, Fit::One) {
        let local = analysis::cascade_plan(&t.rows, c.score, &c.plan, false);
        let best_local = t.ladder.iter().map(|m| t.accuracy[m]).fold(0.0, f64::max);
        let _ = writeln!(
            out,
            "\nConfidential (no hosted step), at the 95 % threshold: quality {:.1} % against {:.1} % hosted (lost {:.1} points) and {:.1} % for the best local model alone.\n",
            100.0 * local.quality,
            100.0 * hosted.quality,
            100.0 * (hosted.quality - local.quality),
            100.0 * best_local
        );
    }
    out
}

/// The confidence level of the report's intervals and bounded calibrations.
const LEVEL: f64 = 0.9;

/// The cascade's figures with their 90 % intervals (a paired bootstrap over the items), and
/// the thresholds chosen so that the kept quality's lower bound, not its point estimate,
/// clears the target; for one threshold and for one per rung.
fn intervals(out: &mut String, t: &Table) {
    let kinds = Resample::Kinds.bootstraps(&t.rows);
    let boot = &kinds[0];
    let _ = writeln!(
        out,
        "\nThe cascade with {:.0} % intervals (bootstrap over the items, {} resamples); bounded: calibrated so that the kept quality's one-sided {:.0} % lower bound (the lower of a bootstrap over the items and one over whole kinds, as `eval calibrate` takes it) clears the target; leave-one-group-out: bounded the same way on every kind of item but one, measured on that one, pooled. One threshold for every model, or one per model fitted jointly (a model may be skipped):\n",
        100.0 * LEVEL,
        super::bounds::DRAWS,
        100.0 * LEVEL
    );
    let _ = writeln!(
        out,
        "| target | thresholds | in-sample local [interval] | kept quality [interval] | bounded: local / kept (lower bound) | local generations per item | leave-one-group-out: local / kept [intervals] (kinds) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for target in TARGETS {
        for fit in [Fit::One, Fit::PerRung] {
            let point = analysis::calibrate(&t.rows, target, &Score::CONFIDENCE, fit)
                .map(|c| measured(&c, &t.rows, boot));
            let bounded = analysis::calibrate_bounded(
                &t.rows,
                target,
                (&Score::CONFIDENCE, fit),
                LEVEL,
                &kinds,
            );
            let bounded_cell = bounded.as_ref().map_or("—".into(), |c| {
                let kept = c.point.quality / analysis::hosted(&t.rows).quality.max(1e-9);
                let lower = c.lower.map_or(0.0, |(_, l)| l);
                format!(
                    "{} % / {} % ({} %) {}",
                    pct(c.point.local_share),
                    pct(kept),
                    pct(lower),
                    plan_text(c, &t.ladder)
                )
            });
            let generations = bounded
                .as_ref()
                .map_or("—".into(), |c| format!("{:.2}", c.point.generations));
            // calibrated as the policy is (bounded over kinds) on every kind but one,
            // measured on the one left out
            let logo = analysis::leave_one_group_out(&t.rows, |rows| {
                let boots = Resample::Kinds.bootstraps(rows);
                analysis::calibrate_bounded(rows, target, (&Score::CONFIDENCE, fit), LEVEL, &boots)
            })
            .map_or("—".into(), |(items, kinds)| {
                // intervals over the pooled items
                let b = super::bounds::Bootstrap::new(
                    items[0].len(),
                    super::bounds::DRAWS,
                    super::bounds::SEED,
                );
                let (local, kept) = analysis::shares(&items);
                let (ll, lh) = b.interval(&items[1], &vec![1.0; items[1].len()], LEVEL);
                let (kl, kh) = b.interval(&items[0], &items[2], LEVEL);
                format!(
                    "{} % [{}, {}] / {} % [{}, {}] ({kinds})",
                    pct(local),
                    pct(ll),
                    pct(lh),
                    pct(kept),
                    pct(kl),
                    pct(kh)
                )
            });
            let _ = writeln!(
                out,
                "| {:.0} % | {} | {} | {bounded_cell} | {generations} | {logo} |",
                100.0 * target,
                fit_name(fit),
                point.unwrap_or_else(|| "— | —".into()),
            );
        }
    }
}

fn pct(x: f64) -> String {
    format!("{:.1}", 100.0 * x)
}

fn fit_name(fit: Fit) -> &'static str {
    match fit {
        Fit::One => "one",
        Fit::PerRung => "per model",
    }
}

/// `local % [interval] | kept % [interval]` of a calibration on `rows`.
fn measured(c: &Calibration, rows: &[analysis::Row], boot: &super::bounds::Bootstrap) -> String {
    let ones = vec![1.0; rows.len()];
    let [right, local, hosted] = analysis::cascade_items(rows, c.score, &c.plan);
    let (ll, lh) = boot.interval(&local, &ones, LEVEL);
    let (kl, kh) = boot.interval(&right, &hosted, LEVEL);
    let share = local.iter().sum::<f64>() / rows.len().max(1) as f64;
    let kept = right.iter().sum::<f64>() / hosted.iter().sum::<f64>().max(1.0);
    format!(
        "{} % [{}, {}] | {} % [{}, {}]",
        pct(share),
        pct(ll),
        pct(lh),
        pct(kept),
        pct(kl),
        pct(kh)
    )
}

/// `(p10_logprob: smollm2 skip, qwen −0.52)`.
fn plan_text(c: &Calibration, ladder: &[String]) -> String {
    let rungs: Vec<String> = ladder
        .iter()
        .zip(&c.plan)
        .map(|(m, t)| match t {
            Some(t) if t.is_finite() => format!("{m} {t:.3}"),
            Some(_) => format!("{m} never kept"),
            None => format!("{m} skipped"),
        })
        .collect();
    format!("({}: {})", c.score.name(), rungs.join(", "))
}

/// The cascade calibrated on every outcome of `fit_on` (its sets' names in `sources`) and
/// measured on `measured`, outcomes on kinds of item the calibration never saw: the figure
/// a new user's traffic is promised. With the baselines on the held-out items themselves
/// (in-sample there, so generous to them).
pub fn render_held_out(
    (fit_on, sources): (&[super::run::Outcome], &str),
    (measured_on, held): (&[super::run::Outcome], &str),
    learned: Option<(&[super::run::Outcome], &[super::run::Outcome])>,
    prices: Prices,
) -> Result<String, super::EvalError> {
    let ft = analysis::table(fit_on, prices);
    let ht = analysis::table(measured_on, prices);
    if ft.ladder != ht.ladder {
        return Err(super::EvalError::Usage(format!(
            "the held-out outcomes were answered by {:?} and the calibration's by {:?}: run both on one fleet",
            ht.ladder, ft.ladder
        )));
    }
    let hboot =
        super::bounds::Bootstrap::new(ht.rows.len(), super::bounds::DRAWS, super::bounds::SEED);
    let mut groups: Vec<&str> = ht.rows.iter().map(|r| r.group.as_str()).collect();
    groups.sort_unstable();
    groups.dedup();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### Held out: {held}: {} items of {} kinds calibration never saw ({})\n",
        ht.rows.len(),
        groups.len(),
        groups.join(", ")
    );
    let _ = writeln!(
        out,
        "Calibrated on {sources} ({} items) at the kept quality's one-sided {:.0} % lower bound, then measured here with {:.0} % intervals:\n",
        ft.rows.len(),
        100.0 * LEVEL,
        100.0 * LEVEL
    );
    let _ = writeln!(
        out,
        "| target | thresholds | local [interval] | kept quality [interval] | local generations per item | random at matched cost | best fixed split | oracle |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    let boots = [Resample::Items, Resample::Kinds].map(|r| (r, r.bootstraps(&ft.rows)));
    for target in TARGETS {
        let b = analysis::baselines(&ht, target);
        // each baseline with its interval over resampled held-out items
        let base = |f: fn(&analysis::Baselines) -> f64| {
            let (lo, hi) =
                hboot.interval_with(|w| f(&analysis::baselines_weighted(&ht, target, w)), LEVEL);
            format!("{} % [{}, {}]", pct(f(&b)), pct(lo), pct(hi))
        };
        let (random, best_split, oracle) = (
            base(|b| b.random),
            base(|b| b.best_split),
            base(|b| b.oracle),
        );
        for (fit, (resample, fboot)) in [Fit::One, Fit::PerRung]
            .into_iter()
            .flat_map(|f| boots.iter().map(move |b| (f, b)))
        {
            let Some(c) = analysis::calibrate_bounded(
                &ft.rows,
                target,
                (&Score::CONFIDENCE, fit),
                LEVEL,
                fboot,
            ) else {
                continue;
            };
            let p = analysis::cascade_plan(&ht.rows, c.score, &c.plan, true);
            let _ = writeln!(
                out,
                "| {:.0} % | {}, bound over {} {} | {} | {:.2} | {} | {} | {} |",
                100.0 * target,
                fit_name(fit),
                resample.name(),
                plan_text(&c, &ft.ladder),
                measured(&c, &ht.rows, &hboot),
                p.generations,
                random,
                best_split,
                oracle
            );
        }
        // hindsight: the most one threshold could serve here, chosen on these very items
        if let Some(c) = analysis::calibrate(&ht.rows, target, &Score::CONFIDENCE, Fit::One) {
            let _ = writeln!(
                out,
                "| {:.0} % | hindsight: one threshold chosen on these items {} | {} | {:.2} | {} | {} | {} |",
                100.0 * target,
                plan_text(&c, &ht.ladder),
                measured(&c, &ht.rows, &hboot),
                c.point.generations,
                random,
                best_split,
                oracle
            );
        }
        // the learned estimator: the smallest model whose P(adequate) clears the threshold
        if let Some((lf, lh)) = &learned {
            let (lft, lht) = (analysis::table(lf, prices), analysis::table(lh, prices));
            let boots = Resample::Kinds.bootstraps(&lft.rows);
            if let Some(c) = analysis::calibrate_bounded(
                &lft.rows,
                target,
                (&[Score::Adequacy], Fit::One),
                LEVEL,
                &boots,
            ) {
                let p = analysis::cascade_plan(&lht.rows, c.score, &c.plan, true);
                let _ = writeln!(
                    out,
                    "| {:.0} % | learned, bound over items and kinds (P(adequate) ≥ {:.3}) | {} | {:.2} | {} | {} | {} |",
                    100.0 * target,
                    c.threshold,
                    measured(&c, &lht.rows, &hboot),
                    p.generations,
                    random,
                    best_split,
                    oracle
                );
            }
        }
    }
    Ok(out)
}

/// Held-out: calibrate on the odd lines, measure on the even ones, and the other way
/// round; the mean local share and quality kept.
fn held_out(t: &Table, target: f64) -> Option<(f64, f64)> {
    let halves: [Vec<analysis::Row>; 2] = [0, 1].map(|k| {
        t.rows
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 2 == k)
            .map(|(_, r)| r.clone())
            .collect()
    });
    let mut share = 0.0;
    let mut kept = 0.0;
    for (fit, test) in [(&halves[0], &halves[1]), (&halves[1], &halves[0])] {
        let c = analysis::calibrate(fit, target, &Score::CONFIDENCE, Fit::One)?;
        let p = analysis::cascade_plan(test, c.score, &c.plan, true);
        share += p.local_share / 2.0;
        kept += p.quality / analysis::hosted(test).quality.max(1e-9) / 2.0;
    }
    Some((share, kept))
}

/// The policy block `calibrate --estimator learned` writes.
pub fn render_learned(
    c: &Calibration,
    target: f64,
    heads: (&str, &str, &[String]),
    features: &str,
    source: &str,
) -> String {
    let (path, sha, models) = heads;
    format!(
        "adequacy:\n  estimator: learned\n  heads: {path}\n  sha256: {sha}\n  features: {features}\n  models: [{}]\n  threshold: {:.4}\n  calibrated: \"{source}; target {target}{}: {:.1} % local, quality {:.3} (held-out heads)\"\n",
        models.join(", "),
        (f64::from(c.threshold) * 1e4).floor() / 1e4,
        confidence(c),
        100.0 * c.point.local_share,
        c.point.quality
    )
}

/// ` at 90 % confidence (kept-quality lower bound 0.951)` for a bounded calibration.
fn confidence(c: &Calibration) -> String {
    c.lower.map_or(String::new(), |(level, lower)| {
        format!(
            " at {:.0} % confidence (kept-quality lower bound {lower:.3}, bootstrap over {})",
            100.0 * level,
            c.bound_over
        )
    })
}

/// The policy block `calibrate` writes, with where it came from. A per-model fit names each
/// model of `ladder` with its threshold, or in `skip`.
pub fn render_calibration(
    c: &Calibration,
    ladder: &[String],
    target: f64,
    max_tokens: u32,
    source: &str,
) -> String {
    // rounded down, so the calibrated boundary answer stays on its side
    let round = |t: f32| (f64::from(t) * 1e4).floor() / 1e4;
    let mut rungs = String::new();
    if c.fit == Fit::PerRung {
        let (mut named, mut skipped) = (Vec::new(), Vec::new());
        for (m, t) in ladder.iter().zip(&c.plan) {
            match t {
                Some(t) if t.is_finite() => named.push(format!("    {m}: {:.4}\n", round(*t))),
                _ => skipped.push(m.as_str()),
            }
        }
        if !named.is_empty() {
            rungs.push_str("  thresholds:\n");
            rungs.push_str(&named.concat());
        }
        if !skipped.is_empty() {
            rungs.push_str(&format!("  skip: [{}]\n", skipped.join(", ")));
        }
    }
    format!(
        "adequacy:\n  estimator: cascade\n  signal: {}\n  threshold: {:.4}\n{rungs}  max_tokens: {max_tokens}\n  calibrated: \"{source}; target {target}{}: {:.1} % local, quality {:.3}\"\n",
        c.score.name(),
        round(c.threshold),
        confidence(c),
        100.0 * c.point.local_share,
        c.point.quality
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::run::Outcome;

    #[test]
    fn the_report_bounds_the_cascade_and_calibrates_on_the_lower_bound() {
        // one local model, right on its confident items and on a third of the rest
        let outcomes: Vec<Outcome> = (0..300)
            .map(|i| Outcome::example(i, "lm", 100, i < 150 || i % 3 == 0, -(i as f32) / 100.0))
            .collect();
        let prices = Prices {
            input_per_million_usd: 1.0,
            output_per_million_usd: 2.0,
        };
        let md = render("s", &outcomes, None, prices);
        let table = md
            .split("| target | thresholds |")
            .nth(1)
            .unwrap_or_else(|| panic!("{md}"));
        let row = table
            .lines()
            .find(|l| l.starts_with("| 90 % | one |"))
            .unwrap_or_else(|| panic!("{table}"));
        // seed fixed: | 90 % | one | 65.3 % [60.7, 70.0] | 90.0 % [87.0, 92.7] | 62.3 % / 92.0 % (90.0 %) …
        let nums: Vec<f64> = row
            .split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter_map(|s| s.parse().ok())
            .collect();
        let (local, lo, hi, kept, klo, khi) =
            (nums[1], nums[2], nums[3], nums[4], nums[5], nums[6]);
        assert!(
            lo < local && local < hi && klo < kept && kept < khi,
            "{row}"
        );
        assert!(kept >= 90.0, "{row}");
        // bounded: less local, and its lower bound clears the target
        let (b_local, b_lower) = (nums[7], nums[9]);
        assert!(b_local < local && b_lower >= 90.0, "{row}");
    }
}
