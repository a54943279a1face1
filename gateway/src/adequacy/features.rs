//! Cheap request features for the learned estimator: the mean of WordLlama's static token
//! embeddings (256 dimensions, L2-normalised) over the request's first 512 tokens, and a few
//! lexical features. No model runs: one tokenisation and a table look-up per token.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::AdequacyError;

/// Tokens of a request the features read.
pub const MAX_TOKENS: usize = 512;

/// The lexical features, in order, after the embedding.
pub const LEXICAL: [&str; 6] = [
    "log_chars",
    "log_words",
    "digit_fraction",
    "has_choices",
    "has_arithmetic",
    "question_marks",
];

/// The folder `make models` prepares (`models/wordllama-l2-supercat-256`).
pub struct Features {
    tokenizer: tokenizers::Tokenizer,
    /// vocab × dims, row-major.
    table: Vec<f32>,
    dims: usize,
    vocab: usize,
    /// SHA-256 of the embedding file: a heads file names the one it was trained with.
    pub embedding_sha256: String,
}

impl std::fmt::Debug for Features {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Features({} x {}, sha256 {})",
            self.vocab, self.dims, self.embedding_sha256
        )
    }
}

/// The same embedding file is the same features.
impl PartialEq for Features {
    fn eq(&self, other: &Self) -> bool {
        self.embedding_sha256 == other.embedding_sha256
    }
}

impl Features {
    pub fn load(dir: &Path) -> Result<Self, AdequacyError> {
        let read = |p: PathBuf| std::fs::read(&p).map_err(|e| AdequacyError::Read(p, e));
        let tok_path = dir.join("tokenizer.json");
        let tokenizer = tokenizers::Tokenizer::from_bytes(read(tok_path.clone())?)
            .map_err(|e| AdequacyError::Invalid(tok_path, e.to_string()))?;
        let emb_path = dir.join("embedding.safetensors");
        let bytes = read(emb_path.clone())?;
        let embedding_sha256 = hex(&Sha256::digest(&bytes));
        let (table, vocab, dims) =
            fp16_matrix(&bytes).map_err(|m| AdequacyError::Invalid(emb_path, m))?;
        Ok(Self {
            tokenizer,
            table,
            dims,
            vocab,
            embedding_sha256,
        })
    }

    /// Embedding dimensions plus the lexical features.
    pub fn len(&self) -> usize {
        self.dims + LEXICAL.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The feature vector of a request's text.
    pub fn of(&self, text: &str) -> Vec<f32> {
        let mut out = vec![0f32; self.len()];
        // 512 tokens of ordinary text fit in 6 bytes a token (this tokenizer averages under
        // four): tokenising a long request's rest would be waste
        let mut cut = text.len().min(MAX_TOKENS * 6);
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        let ids = self
            .tokenizer
            .encode_fast(&text[..cut], false)
            .map(|e| e.get_ids().to_vec())
            .unwrap_or_default();
        let mut n = 0usize;
        for &id in ids.iter().take(MAX_TOKENS) {
            let id = id as usize;
            if id < self.vocab {
                let row = &self.table[id * self.dims..(id + 1) * self.dims];
                for (o, v) in out.iter_mut().zip(row) {
                    *o += v;
                }
                n += 1;
            }
        }
        let norm = out[..self.dims].iter().map(|v| v * v).sum::<f32>().sqrt();
        if n > 0 && norm > 0.0 {
            out[..self.dims].iter_mut().for_each(|v| *v /= norm);
        }
        lexical(text, &mut out[self.dims..]);
        out
    }
}

/// Features of the text itself, each about 0..1.
fn lexical(text: &str, out: &mut [f32]) {
    let chars = text.chars().count() as f32;
    let words = text.split_whitespace().count() as f32;
    let digits = text.chars().filter(char::is_ascii_digit).count() as f32;
    let choices = ["\nA.", "\nB.", "\nC.", "\nD."]
        .iter()
        .filter(|c| text.contains(*c))
        .count();
    let arithmetic = [" + ", " - ", " times ", " * ", " / ", "divided"]
        .iter()
        .any(|o| text.contains(o));
    let values = [
        (1.0 + chars).ln() / 8.0,
        (1.0 + words).ln() / 6.0,
        digits / chars.max(1.0),
        f32::from(u8::from(choices >= 3)),
        f32::from(u8::from(arithmetic)),
        (text.matches('?').count() as f32).min(3.0) / 3.0,
    ];
    out.copy_from_slice(&values);
}

/// The one fp16 matrix of a safetensors file, as f32: (values, rows, columns).
fn fp16_matrix(bytes: &[u8]) -> Result<(Vec<f32>, usize, usize), String> {
    let n = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()) as usize)
        .ok_or("shorter than a safetensors header")?;
    let header = bytes.get(8..8 + n).ok_or("the header runs past the file")?;
    let header: serde_json::Value =
        serde_json::from_slice(header).map_err(|e| format!("header: {e}"))?;
    let (name, t) = header
        .as_object()
        .and_then(|o| o.iter().find(|(k, _)| *k != "__metadata__"))
        .ok_or("no tensor in the file")?;
    if t["dtype"] != "F16" {
        return Err(format!("`{name}` is {}, expected F16", t["dtype"]));
    }
    let shape = usizes(&t["shape"]);
    let [rows, cols] = shape[..] else {
        return Err(format!(
            "`{name}` has shape {shape:?}, expected [vocab, dims]"
        ));
    };
    let offsets = usizes(&t["data_offsets"]);
    let [start, end] = offsets[..] else {
        return Err(format!("`{name}` has no data_offsets"));
    };
    let data = bytes
        .get(8 + n + start..8 + n + end)
        .filter(|d| d.len() == rows * cols * 2)
        .ok_or_else(|| format!("`{name}`: the data does not match its shape {shape:?}"))?;
    let values = data
        .chunks_exact(2)
        .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
        .collect();
    Ok((values, rows, cols))
}

/// A header's list of integers (`shape`, `data_offsets`); empty when it is not one.
fn usizes(v: &serde_json::Value) -> Vec<usize> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_u64())
                .map(|v| v as usize)
                .collect()
        })
        .unwrap_or_default()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_safetensors_matrix_is_read_and_a_bad_one_named() {
        let header = br#"{"w":{"dtype":"F16","shape":[2,2],"data_offsets":[0,8]}}"#;
        let mut file = (header.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(header);
        for v in [1.0f32, -2.0, 0.5, 0.0] {
            file.extend_from_slice(&half::f16::from_f32(v).to_le_bytes());
        }
        assert_eq!(
            fp16_matrix(&file).unwrap(),
            (vec![1.0, -2.0, 0.5, 0.0], 2, 2)
        );
        file.truncate(file.len() - 2);
        assert!(
            fp16_matrix(&file)
                .unwrap_err()
                .contains("does not match its shape")
        );
        assert!(fp16_matrix(b"abc").is_err());
    }

    #[test]
    fn lexical_features_see_choices_and_arithmetic() {
        let mut out = [0f32; 6];
        lexical("What is 6 + 5?", &mut out);
        assert_eq!((out[3], out[4]), (0.0, 1.0));
        assert!(out[2] > 0.1 && out[5] > 0.0);
        lexical("Q\nA. x\nB. y\nC. z\nD. w\nAnswer:", &mut out);
        assert_eq!((out[3], out[4], out[5]), (1.0, 0.0, 0.0));
    }
}
