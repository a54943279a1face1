//! The learned estimator's heads: one logistic regression per local model over the request
//! features, P(adequate | request, model). Trained by `edgewise eval train` into a small
//! JSON file a policy names by path and SHA-256.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::AdequacyError;
use super::features::{LEXICAL, hex};

pub const FORMAT: &str = "edgewise-adequacy-heads/1";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Head {
    pub model: String,
    pub weights: Vec<f32>,
    pub bias: f32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heads {
    pub format: String,
    /// SHA-256 of the token-embedding file the features come from.
    pub embedding_sha256: String,
    pub lexical: Vec<String>,
    /// The features' length (embedding dimensions + lexical).
    pub features: usize,
    pub heads: Vec<Head>,
    /// The evaluation outcomes it was trained on.
    pub trained_on: String,
}

impl Heads {
    /// Reads and checks a heads file; `sha256` (when given) must be the file's.
    pub fn load(path: &Path, sha256: Option<&str>) -> Result<(Self, String), AdequacyError> {
        let bytes = std::fs::read(path).map_err(|e| AdequacyError::Read(path.into(), e))?;
        let got = hex(&Sha256::digest(&bytes));
        if let Some(want) = sha256
            && want != got
        {
            return Err(AdequacyError::HashMismatch {
                path: path.into(),
                got,
                want: want.to_string(),
            });
        }
        let heads: Heads = serde_json::from_slice(&bytes)
            .map_err(|e| AdequacyError::Invalid(path.into(), e.to_string()))?;
        heads
            .check()
            .map_err(|m| AdequacyError::Invalid(path.into(), m))?;
        Ok((heads, got))
    }

    /// Writes the file whole (a partial file, then a rename) and returns its sha256, the hash
    /// a policy pins it by.
    pub fn write(&self, path: &Path) -> std::io::Result<String> {
        let text = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        let tmp = path.with_extension("partial");
        std::fs::write(&tmp, &text)?;
        std::fs::rename(&tmp, path)?;
        Ok(hex(&Sha256::digest(&text)))
    }

    fn check(&self) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!("format `{}`, expected `{FORMAT}`", self.format));
        }
        if self.lexical != LEXICAL {
            return Err(format!(
                "lexical features {:?}, this gateway computes {LEXICAL:?}",
                self.lexical
            ));
        }
        for h in &self.heads {
            if h.weights.len() != self.features || !h.weights.iter().all(|w| w.is_finite()) {
                return Err(format!(
                    "the head for `{}` has {} weights (or a non-finite one), expected {}",
                    h.model,
                    h.weights.len(),
                    self.features
                ));
            }
        }
        Ok(())
    }

    pub fn models(&self) -> Vec<&str> {
        self.heads.iter().map(|h| h.model.as_str()).collect()
    }

    /// P(adequate) for each model, from a request's features.
    pub fn predict(&self, x: &[f32]) -> Vec<(String, f32)> {
        self.heads
            .iter()
            .map(|h| (h.model.clone(), sigmoid(dot(&h.weights, x) + h.bias)))
            .collect()
    }
}

pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

pub fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

/// A logistic regression by full-batch gradient descent with an L2 penalty: deterministic
/// (no sampling), so the same outcomes train the same file.
pub fn fit(x: &[Vec<f32>], y: &[bool], l2: f32, steps: usize) -> (Vec<f32>, f32) {
    let d = x.first().map_or(0, Vec::len);
    let n = x.len().max(1) as f32;
    let mut w = vec![0f32; d];
    // start at the base rate, so a head with no signal predicts it
    let rate = (y.iter().filter(|v| **v).count() as f32 / n).clamp(0.01, 0.99);
    let mut b = (rate / (1.0 - rate)).ln();
    let lr = 0.5;
    let mut grad = vec![0f32; d];
    for _ in 0..steps {
        grad.iter_mut().for_each(|g| *g = 0.0);
        let mut gb = 0f32;
        for (xi, &yi) in x.iter().zip(y) {
            let err = sigmoid(dot(&w, xi) + b) - f32::from(u8::from(yi));
            for (g, v) in grad.iter_mut().zip(xi) {
                *g += err * v;
            }
            gb += err;
        }
        for (wj, g) in w.iter_mut().zip(&grad) {
            *wj -= lr * (g / n + l2 * *wj);
        }
        b -= lr * gb / n;
    }
    (w, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fitted_head_separates_what_its_features_separate() {
        // y = (x0 > 0); x1 is noise
        let x: Vec<Vec<f32>> = (0..40)
            .map(|i| {
                vec![
                    if i % 2 == 0 { 1.0 } else { -1.0 },
                    ((i * 7) % 5) as f32 / 5.0,
                ]
            })
            .collect();
        let y: Vec<bool> = (0..40).map(|i| i % 2 == 0).collect();
        let (w, b) = fit(&x, &y, 1e-3, 500);
        assert!(w[0] > 1.0 && w[0].abs() > 5.0 * w[1].abs(), "{w:?}");
        assert!(sigmoid(dot(&w, &[1.0, 0.5]) + b) > 0.9);
        assert!(sigmoid(dot(&w, &[-1.0, 0.5]) + b) < 0.1);
        // the same data trains the same head
        assert_eq!(fit(&x, &y, 1e-3, 500), (w, b));
        // no signal: the base rate
        let (w, b) = fit(
            &vec![vec![0.0]; 10],
            &[
                true, true, false, false, false, false, false, false, false, false,
            ],
            1e-3,
            100,
        );
        assert!((sigmoid(dot(&w, &[0.0]) + b) - 0.2).abs() < 1e-3);
    }

    #[test]
    fn a_heads_file_round_trips_and_a_changed_one_is_refused() {
        let dir = std::env::temp_dir().join(format!("edgewise-heads-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let heads = Heads {
            format: FORMAT.into(),
            embedding_sha256: "e".into(),
            lexical: LEXICAL.iter().map(|s| s.to_string()).collect(),
            features: 2,
            heads: vec![Head {
                model: "m".into(),
                weights: vec![0.5, -0.5],
                bias: 0.1,
            }],
            trained_on: "t".into(),
        };
        let p = dir.join("heads.json");
        std::fs::write(&p, serde_json::to_vec(&heads).unwrap()).unwrap();
        let (back, sha) = Heads::load(&p, None).unwrap();
        assert_eq!(back, heads);
        assert!(Heads::load(&p, Some(&sha)).is_ok());
        let e = Heads::load(&p, Some("00")).unwrap_err().to_string();
        assert!(
            e.contains("heads.json") && e.contains("the policy pins 00"),
            "{e}"
        );
        let mut bad = heads.clone();
        bad.heads[0].weights.pop();
        std::fs::write(&p, serde_json::to_vec(&bad).unwrap()).unwrap();
        assert!(
            Heads::load(&p, None)
                .unwrap_err()
                .to_string()
                .contains("has 1 weights")
        );
    }
}
