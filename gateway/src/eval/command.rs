//! `edgewise eval run | report | calibrate`.

use std::path::PathBuf;

use clap::Subcommand;

use super::analysis::{self, Prices};
use super::{EvalError, run};
use crate::cli::Caller;
use crate::routing::Signal;

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
    /// The routing report (Markdown) from outcome files, one section per file.
    Report {
        #[arg(long = "outcomes", required = true)]
        outcomes: Vec<PathBuf>,
        #[command(flatten)]
        prices: PriceArgs,
    },
    /// The cascade threshold that keeps --target of the hosted quality over the outcome
    /// files together, printed as a policy block; with --write, put into --policy's --route.
    Calibrate {
        #[arg(long = "outcomes", required = true)]
        outcomes: Vec<PathBuf>,
        #[arg(long, default_value_t = 0.95)]
        target: f64,
        /// The longest answer the cascade judges (a request's max_tokens).
        #[arg(long, default_value_t = 16)]
        max_tokens: u32,
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
        EvalCommand::Report { outcomes, prices } => {
            for path in outcomes {
                let o = run::read_outcomes(path)?;
                let set = o.first().map(|o| o.set.clone()).unwrap_or_default();
                print!("{}", super::render(&set, &o, prices.prices()));
            }
            Ok(())
        }
        EvalCommand::Calibrate {
            outcomes,
            target,
            max_tokens,
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
            let mut all = Vec::new();
            let mut sources = Vec::new();
            for path in outcomes {
                let o = run::read_outcomes(path)?;
                if let Some(first) = o.first() {
                    sources.push(format!("{} ({} outcomes)", first.set, o.len()));
                }
                all.extend(o);
            }
            let t = analysis::table(&all, prices.prices());
            let c = analysis::calibrate(&t.rows, *target, &Signal::ALL).ok_or_else(|| {
                EvalError::Usage(format!("no threshold keeps {target} of the hosted quality"))
            })?;
            let block = super::render_calibration(&c, *target, *max_tokens, &sources.join(" + "));
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
