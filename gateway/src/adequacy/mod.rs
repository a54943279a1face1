//! The learned estimator of per-request adequacy: request features (`features`) and one
//! small head per local model (`heads`). The gateway computes P(adequate) for a request
//! before `decide`, which stays pure and only compares it with the route's threshold.

pub mod features;
pub mod heads;

use std::path::PathBuf;

pub use features::Features;
pub use heads::Heads;

#[derive(Debug, thiserror::Error)]
pub enum AdequacyError {
    #[error("cannot read {}: {}", .0.display(), .1)]
    Read(PathBuf, std::io::Error),
    #[error("{}: {}", .0.display(), .1)]
    Invalid(PathBuf, String),
    #[error("{}: its sha256 is {got}, and the policy pins {want}: retrain and calibrate, or pin this file", .path.display())]
    HashMismatch {
        path: PathBuf,
        got: String,
        want: String,
    },
}

/// A route's learned estimator: its request features and its heads.
#[derive(Debug)]
pub struct HeadsEstimator {
    pub heads: Heads,
    pub features: std::sync::Arc<Features>,
}

impl crate::routing::Estimator for HeadsEstimator {
    fn features_id(&self) -> usize {
        std::sync::Arc::as_ptr(&self.features) as usize
    }

    fn features(&self, text: &str) -> Vec<f32> {
        self.features.of(text)
    }

    fn predict(&self, features: &[f32]) -> Vec<(String, f32)> {
        self.heads.predict(features)
    }
}

/// P(adequate) for every learned route of `policy` and each model it has a head for, from
/// the request's last user message (what the heads were trained on).
pub fn estimate(
    policy: &crate::routing::Policy,
    messages: &[crate::providers::Message],
) -> Vec<(String, String, f32)> {
    let mut out = Vec::new();
    let text = messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .map_or("", |m| m.content.as_str());
    let mut computed: Vec<(usize, Vec<f32>)> = Vec::new();
    for r in &policy.routes {
        let crate::routing::Adequacy::Learned(l) = &r.adequacy else {
            continue;
        };
        let key = l.estimator.features_id();
        let x = match computed.iter().find(|(k, _)| *k == key) {
            Some((_, x)) => x.clone(),
            None => {
                let x = l.estimator.features(text);
                computed.push((key, x.clone()));
                x
            }
        };
        for (model, p) in l.estimator.predict(&x) {
            out.push((r.name.clone(), model, p));
        }
    }
    out
}

#[cfg(test)]
mod tests;
