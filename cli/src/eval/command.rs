//! `edgewise eval run | report | calibrate`.

use std::io::Write;
use std::path::PathBuf;

use clap::Subcommand;

use super::analysis::{self, Fit, Prices, Resample, Score};
use super::{EvalError, run, train};
use crate::client::Caller;
use edgewise_gateway::adequacy::Features;

#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// Answer an item set with each local generate model of the fleet (through the gateway,
    /// greedy, the model pinned) and write the outcomes as JSON lines.
    Run {
        /// An item set (eval/exact-answers.jsonl, eval/mmlu-200.jsonl).
        #[arg(long)]
        set: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Only these models (comma-separated); default: every ready generate model.
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
        /// Only the first N items.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// How each item of a set is asked, as JSON lines: `line`, `message` (the user message),
    /// `max_tokens`, and `choice` (the options a constrained reply is one of, or null). The
    /// manifest quality script asks the items this way too.
    Items {
        #[arg(long)]
        set: PathBuf,
    },
    /// Score replies by the evaluation's one rule: reads `{"line", "reply"}` JSON lines on
    /// standard input, writes `{"line", "correct"}` lines.
    Score {
        #[arg(long)]
        set: PathBuf,
    },
    /// The routing report (Markdown) from outcome files, one section per file; with
    /// --set and --features, the learned estimator too (heads cross-fitted on halves).
    Report {
        #[arg(long = "outcomes", required = true)]
        outcomes: Vec<PathBuf>,
        #[command(flatten)]
        learned: LearnedArgs,
        /// Outcomes on kinds calibration never saw: the cascade is calibrated on all of
        /// --outcomes together and measured on these (a section of its own).
        #[arg(long = "held-out")]
        held_out: Vec<PathBuf>,
        #[command(flatten)]
        prices: PriceArgs,
    },
    /// Train the learned estimator's heads (one per local model) from outcome files.
    Train {
        #[arg(long = "outcomes", required = true)]
        outcomes: Vec<PathBuf>,
        #[command(flatten)]
        learned: LearnedArgs,
        /// The heads file to write (JSON; a policy pins it by path and sha256).
        #[arg(long)]
        out: PathBuf,
    },
    /// The threshold that keeps --target of the hosted quality over the outcome files
    /// together, printed as a policy block; with --write, put into --policy's --route.
    Calibrate {
        #[arg(long = "outcomes", required = true)]
        outcomes: Vec<PathBuf>,
        #[arg(long, default_value_t = 0.95)]
        target: f64,
        /// The target must hold at this confidence: the kept quality's one-sided lower bound
        /// (a paired bootstrap over the items, fixed seed) clears it. 0: the point estimate.
        #[arg(long, default_value_t = 0.9)]
        confidence: f64,
        /// cascade (confidence signals) or learned (P(adequate) from --heads).
        #[arg(long, default_value = "cascade")]
        estimator: String,
        /// The longest answer a cascade judges (a request's max_tokens).
        #[arg(long, default_value_t = 16)]
        max_tokens: u32,
        /// cascade: `per-rung` (a threshold per model, fitted jointly; a model may be
        /// skipped) or `one` (one threshold for every model).
        #[arg(long, default_value = "per-rung")]
        fit: String,
        /// What the bootstrap resamples: `kinds` (whole groups of items — a kind or an MMLU
        /// subject — so the bound covers kinds that differ as the sets' kinds do) or `items`.
        #[arg(long, default_value = "kinds")]
        resample: String,
        /// learned: the heads file `train` wrote.
        #[arg(long)]
        heads: Option<PathBuf>,
        #[command(flatten)]
        learned: LearnedArgs,
        #[arg(long, default_value = "policies/default.yaml")]
        policy: PathBuf,
        #[arg(long, default_value = "generate")]
        route: String,
        #[arg(long)]
        write: bool,
        #[command(flatten)]
        prices: PriceArgs,
    },
}

/// A reply to score (`eval score`'s input).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Reply {
    line: usize,
    reply: String,
}

/// The item sets the outcomes came from and the request-feature folder.
#[derive(Debug, clap::Args)]
pub struct LearnedArgs {
    /// An item set the outcomes answer (by file stem), for the learned estimator.
    #[arg(long = "set")]
    sets: Vec<PathBuf>,
    #[arg(long)]
    features: Option<PathBuf>,
}

impl LearnedArgs {
    /// Features of every item, or `None` without --features.
    fn load(&self) -> Result<Option<(Features, FeatureMap)>, EvalError> {
        let Some(dir) = &self.features else {
            return Ok(None);
        };
        if self.sets.is_empty() {
            return Err(EvalError::Usage(
                "--features needs the item sets (--set)".into(),
            ));
        }
        let f = Features::load(dir).map_err(|e| EvalError::Usage(e.to_string()))?;
        let mut sets = Vec::new();
        for p in &self.sets {
            let stem = p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            sets.push((stem, super::items::load(p)?));
        }
        let x = train::features_of(&f, &sets);
        Ok(Some((f, x)))
    }
}

type FeatureMap = std::collections::BTreeMap<(String, usize), Vec<f32>>;

fn read_all(paths: &[PathBuf]) -> Result<(Vec<run::Outcome>, String), EvalError> {
    let mut all = Vec::new();
    let mut sources = Vec::new();
    for path in paths {
        let o = run::read_outcomes(path)?;
        if let Some(first) = o.first() {
            sources.push(format!("{} ({} outcomes)", first.set, o.len()));
        }
        all.extend(o);
    }
    Ok((all, sources.join(" + ")))
}

/// The hosted model's prices (default: gpt-4o-mini's, as in deploy/gateway.toml).
#[derive(Debug, clap::Args)]
pub struct PriceArgs {
    #[arg(long, default_value_t = 0.15)]
    input_usd_per_million: f64,
    #[arg(long, default_value_t = 0.60)]
    output_usd_per_million: f64,
}

impl PriceArgs {
    fn prices(&self) -> Prices {
        Prices {
            input_per_million_usd: self.input_usd_per_million,
            output_per_million_usd: self.output_usd_per_million,
        }
    }
}

pub async fn main(caller: &Caller, cmd: &EvalCommand) -> Result<(), EvalError> {
    match cmd {
        EvalCommand::Items { set } => {
            let mut out = std::io::stdout().lock();
            for item in super::items::load(set)? {
                let choice = item.constraint().and_then(|c| match c.kind {
                    Some(edgewise_proto::constraint::Kind::Choice(c)) => Some(c.options),
                    _ => None,
                });
                let line = serde_json::json!({
                    "line": item.line,
                    "message": item.message(),
                    "max_tokens": item.max_tokens(),
                    "choice": choice,
                });
                writeln!(out, "{line}").map_err(|e| EvalError::Write("stdout".into(), e))?;
            }
            Ok(())
        }
        EvalCommand::Score { set } => {
            let items = super::items::load(set)?;
            let mut out = std::io::stdout().lock();
            for (i, line) in std::io::stdin().lines().enumerate() {
                let line = line.map_err(|e| EvalError::Read("stdin".into(), e))?;
                if line.trim().is_empty() {
                    continue;
                }
                let bad = |message: String| EvalError::Item {
                    file: "stdin".into(),
                    line: i + 1,
                    message,
                };
                let r: Reply = serde_json::from_str(&line)
                    .map_err(|e| bad(format!("column {}: {e}", e.column())))?;
                let item = items.iter().find(|it| it.line == r.line).ok_or_else(|| {
                    bad(format!("{} has no item at line {}", set.display(), r.line))
                })?;
                let v = serde_json::json!({"line": r.line, "correct": item.is_correct(&r.reply)});
                writeln!(out, "{v}").map_err(|e| EvalError::Write("stdout".into(), e))?;
            }
            Ok(())
        }
        EvalCommand::Run {
            set,
            out,
            models,
            limit,
        } => {
            let mut fleet = run::fleet_models(caller).await?;
            if !models.is_empty() {
                if let Some(m) = models.iter().find(|m| !fleet.iter().any(|f| &f.name == *m)) {
                    return Err(EvalError::Usage(format!(
                        "`{m}` is not a ready generate model of the fleet ({})",
                        fleet
                            .iter()
                            .map(|f| f.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
                fleet.retain(|f| models.contains(&f.name));
            }
            if fleet.is_empty() {
                return Err(EvalError::Usage(
                    "the fleet has no ready generate model".into(),
                ));
            }
            let n = run::run(caller, set, &fleet, *limit, out).await?.len();
            eprintln!("[eval] {n} outcomes written to {}", out.display());
            Ok(())
        }
        EvalCommand::Report {
            outcomes,
            learned,
            held_out,
            prices,
        } => {
            let fx = learned.load()?;
            for path in outcomes {
                let o = run::read_outcomes(path)?;
                let set = o.first().map(|o| o.set.clone()).unwrap_or_default();
                let cv = match &fx {
                    Some((_, x)) => Some(train::cross_fitted(&o, x)?),
                    None => None,
                };
                print!(
                    "{}",
                    super::render(&set, &o, cv.as_deref(), prices.prices())
                );
            }
            if !held_out.is_empty() {
                let (fit_on, sources) = read_all(outcomes)?;
                let (measured, held) = read_all(held_out)?;
                // the learned estimator: its threshold from heads cross-fitted on the
                // calibration sets, measured with heads trained on all of them
                let learned = match &fx {
                    Some((f, x)) => {
                        let heads = train::train(f, &fit_on, x, sources.clone())?;
                        Some((
                            train::cross_fitted(&fit_on, x)?,
                            train::predicted(&heads, &measured, x)?,
                        ))
                    }
                    None => None,
                };
                print!(
                    "{}",
                    super::render_held_out(
                        (&fit_on, &sources),
                        (&measured, &held),
                        learned.as_ref().map(|(a, b)| (a.as_slice(), b.as_slice())),
                        prices.prices()
                    )?
                );
            }
            Ok(())
        }
        EvalCommand::Train {
            outcomes,
            learned,
            out,
        } => {
            let (all, sources) = read_all(outcomes)?;
            let (f, x) = learned
                .load()?
                .ok_or_else(|| EvalError::Usage("train needs --features and --set".into()))?;
            let heads = train::train(&f, &all, &x, sources)?;
            let sha = train::write_heads(out, &heads)?;
            eprintln!(
                "[eval] heads for {} written to {} (sha256 {sha})",
                heads.models().join(", "),
                out.display()
            );
            Ok(())
        }
        EvalCommand::Calibrate {
            outcomes,
            target,
            confidence,
            estimator,
            max_tokens,
            fit: fit_name,
            resample,
            heads,
            learned,
            policy,
            route,
            write,
            prices,
        } => {
            if !(0.0..=1.0).contains(target) {
                return Err(EvalError::Usage(format!(
                    "--target {target} must be in 0..=1"
                )));
            }
            if !(*confidence == 0.0 || (0.5..1.0).contains(confidence)) {
                return Err(EvalError::Usage(format!(
                    "--confidence {confidence} must be 0 (the point estimate) or in 0.5..1"
                )));
            }
            let (all, sources) = read_all(outcomes)?;
            let none =
                || EvalError::Usage(format!("no threshold keeps {target} of the hosted quality"));
            let per_rung = match fit_name.as_str() {
                "per-rung" => Fit::PerRung,
                "one" => Fit::One,
                other => {
                    return Err(EvalError::Usage(format!(
                        "--fit `{other}`: expected per-rung or one"
                    )));
                }
            };
            let resample = match resample.as_str() {
                "kinds" => Resample::Kinds,
                "items" => Resample::Items,
                other => {
                    return Err(EvalError::Usage(format!(
                        "--resample `{other}`: expected kinds or items"
                    )));
                }
            };
            let fit = |rows: &[analysis::Row], scores: &[Score], how: Fit| {
                if *confidence == 0.0 {
                    analysis::calibrate(rows, *target, scores, how)
                } else {
                    let boots = resample.bootstraps(rows);
                    analysis::calibrate_bounded(rows, *target, (scores, how), *confidence, &boots)
                }
            };
            let block = match estimator.as_str() {
                "cascade" => {
                    let t = analysis::table(&all, prices.prices());
                    let c = fit(&t.rows, &Score::CONFIDENCE, per_rung).ok_or_else(none)?;
                    super::render_calibration(&c, &t.ladder, *target, *max_tokens, &sources)
                }
                "learned" => {
                    let heads_path = heads.as_ref().ok_or_else(|| {
                        EvalError::Usage("--estimator learned needs --heads".into())
                    })?;
                    let (h, sha) = edgewise_gateway::adequacy::Heads::load(heads_path, None)
                        .map_err(|e| EvalError::Usage(e.to_string()))?;
                    let (_, x) = learned.load()?.ok_or_else(|| {
                        EvalError::Usage("--estimator learned needs --features and --set".into())
                    })?;
                    let cv = train::cross_fitted(&all, &x)?;
                    let t = analysis::table(&cv, prices.prices());
                    let c = fit(&t.rows, &[Score::Adequacy], Fit::One).ok_or_else(none)?;
                    let base = policy.parent().unwrap_or(std::path::Path::new("."));
                    let rel = |p: &std::path::Path| relative(p, base);
                    let models: Vec<String> = h.models().iter().map(|m| m.to_string()).collect();
                    let dir = learned.features.clone().unwrap_or_default();
                    super::render_learned(
                        &c,
                        *target,
                        (&rel(heads_path), &sha, &models),
                        &rel(&dir),
                        &sources,
                    )
                }
                other => {
                    return Err(EvalError::Usage(format!(
                        "--estimator `{other}`: expected cascade or learned"
                    )));
                }
            };
            print!("{block}");
            if *write {
                super::write_adequacy(policy, route, &block)?;
                eprintln!(
                    "[eval] written into route `{route}` of {}",
                    policy.display()
                );
            }
            Ok(())
        }
    }
}

/// `path` as the policy file at `base` should name it: relative when both are.
fn relative(path: &std::path::Path, base: &std::path::Path) -> String {
    let abs = |p: &std::path::Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let (p, b) = (abs(path), abs(base));
    let common = p
        .components()
        .zip(b.components())
        .take_while(|(x, y)| x == y)
        .count();
    if common == 0 {
        return p.display().to_string();
    }
    let ups = b.components().count() - common;
    let mut out = std::path::PathBuf::new();
    for _ in 0..ups {
        out.push("..");
    }
    for c in p.components().skip(common) {
        out.push(c);
    }
    out.display().to_string()
}
