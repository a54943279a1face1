//! `edgewise eval train`: the learned estimator's heads from evaluation outcomes — one
//! logistic regression per local model over the request features, labelled by whether that
//! model answered the item right. Also the cross-fitted probabilities the report and
//! calibration use, so a threshold is never chosen on predictions for items a head saw.

use std::collections::BTreeMap;
use std::path::Path;

use super::EvalError;
use super::items::Item;
use super::run::Outcome;
use edgewise_gateway::adequacy::features::{Features, LEXICAL};
use edgewise_gateway::adequacy::heads::{self, FORMAT, Head, Heads};

/// L2 penalty and steps: fixed, so the same outcomes train the same file.
const L2: f32 = 1e-3;
const STEPS: usize = 400;

/// Each outcome's request features, keyed by (set, line).
pub fn features_of(
    features: &Features,
    sets: &[(String, Vec<Item>)],
) -> BTreeMap<(String, usize), Vec<f32>> {
    let mut out = BTreeMap::new();
    for (stem, items) in sets {
        for item in items {
            out.insert((stem.clone(), item.line), features.of(&item.message()));
        }
    }
    out
}

/// Models in ladder order (parameters, then bytes).
fn models(outcomes: &[Outcome]) -> Vec<String> {
    let mut m: Vec<(u64, u64, String)> = outcomes
        .iter()
        .map(|o| (o.parameters, o.size_bytes, o.model.clone()))
        .collect();
    m.sort();
    m.dedup();
    m.into_iter().map(|(_, _, n)| n).collect()
}

fn fit_heads(
    outcomes: &[&Outcome],
    x: &BTreeMap<(String, usize), Vec<f32>>,
    names: &[String],
) -> Result<Vec<Head>, EvalError> {
    let mut out = Vec::new();
    for name in names {
        let mut xs = Vec::new();
        let mut ys = Vec::new();
        for o in outcomes.iter().filter(|o| &o.model == name) {
            let f = item_features(x, o)?;
            xs.push(f.clone());
            ys.push(o.correct);
        }
        let (weights, bias) = heads::fit(&xs, &ys, L2, STEPS);
        out.push(Head {
            model: name.clone(),
            weights,
            bias,
        });
    }
    Ok(out)
}

/// Heads trained on every outcome.
pub fn train(
    features: &Features,
    outcomes: &[Outcome],
    x: &BTreeMap<(String, usize), Vec<f32>>,
    trained_on: String,
) -> Result<Heads, EvalError> {
    let all: Vec<&Outcome> = outcomes.iter().collect();
    Ok(Heads {
        format: FORMAT.into(),
        embedding_sha256: features.embedding_sha256.clone(),
        lexical: LEXICAL.iter().map(|s| s.to_string()).collect(),
        features: features.len(),
        heads: fit_heads(&all, x, &models(outcomes))?,
        trained_on,
    })
}

/// The outcomes with their three signals replaced by P(adequate) from heads trained on the
/// other half of the items (odd and even lines): what the learned estimator would have said
/// about items it never saw.
pub fn cross_fitted(
    outcomes: &[Outcome],
    x: &BTreeMap<(String, usize), Vec<f32>>,
) -> Result<Vec<Outcome>, EvalError> {
    let names = models(outcomes);
    let mut out = outcomes.to_vec();
    for fold in [0, 1] {
        let train: Vec<&Outcome> = outcomes.iter().filter(|o| o.line % 2 != fold).collect();
        let heads = fit_heads(&train, x, &names)?;
        for o in out.iter_mut().filter(|o| o.line % 2 == fold) {
            let Some(h) = heads.iter().find(|h| h.model == o.model) else {
                continue;
            };
            let f = item_features(x, o)?;
            let p = heads::sigmoid(heads::dot(&h.weights, f) + h.bias);
            o.p_adequate = Some(p);
        }
    }
    Ok(out)
}

/// The outcomes with P(adequate) from `heads` (trained on other items): what the estimator
/// says about items it never saw, as a policy carrying these heads would.
pub fn predicted(
    heads: &Heads,
    outcomes: &[Outcome],
    x: &BTreeMap<(String, usize), Vec<f32>>,
) -> Result<Vec<Outcome>, EvalError> {
    let mut out = outcomes.to_vec();
    for o in &mut out {
        let Some(h) = heads.heads.iter().find(|h| h.model == o.model) else {
            continue;
        };
        let f = item_features(x, o)?;
        o.p_adequate = Some(heads::sigmoid(heads::dot(&h.weights, f) + h.bias));
    }
    Ok(out)
}

/// An outcome's item features, or which item no `--set` had.
fn item_features<'a>(
    x: &'a BTreeMap<(String, usize), Vec<f32>>,
    o: &Outcome,
) -> Result<&'a Vec<f32>, EvalError> {
    x.get(&(o.set.clone(), o.line)).ok_or_else(|| {
        EvalError::Usage(format!(
            "an outcome names item {}:{} and no --set has it",
            o.set, o.line
        ))
    })
}

pub fn write_heads(path: &Path, heads: &Heads) -> Result<String, EvalError> {
    heads
        .write(path)
        .map_err(|e| EvalError::Write(path.into(), e))
}
