//! Evaluation item sets (JSON lines, committed under `eval/`) and how an answer is scored.
//!
//! The one implementation of how an item is asked and scored: `edgewise eval items` and
//! `eval score` expose it to the manifest quality script (tools/measure_quality.py), and
//! eval/scoring-cases.jsonl pins it. Two shapes are read:
//!
//! - short exact answers: `{"kind", "question", "answer"}`; right when the answer is the
//!   reply's first line or a whole word of it (case and a final period ignored);
//! - multiple choice (MMLU): `{"prompt", "answer": "A".."D", "subject", "gpt4_correct"}`;
//!   asked with a choice constraint (the reply is one of the four letters, the way evaluation
//!   harnesses ask a model for an option), right when it is the answer letter.
//!   `gpt4_correct` is the hosted model's recorded outcome, so the hosted fallback is scored
//!   offline.

use std::path::Path;

use serde::Deserialize;

use super::EvalError;

/// A multiple-choice item's options.
pub const LETTERS: [&str; 4] = ["A", "B", "C", "D"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scorer {
    Exact,
    Letter,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// Line number in its file (1-based): the item's id.
    pub line: usize,
    pub prompt: String,
    pub answer: String,
    /// `kind` or `subject`.
    pub group: String,
    pub scorer: Scorer,
    /// The hosted model's recorded outcome; `None`: not recorded (taken as right).
    pub hosted_correct: Option<bool>,
}

impl Item {
    /// The user message sent: a multiple-choice prompt asks for the letter alone (its
    /// trailing `Answer:` cue is for base models, and chat models answer it with prose).
    pub fn message(&self) -> String {
        match self.scorer {
            Scorer::Exact => self.prompt.clone(),
            Scorer::Letter => format!(
                "{}\nAnswer with only the letter (A, B, C or D) of the correct option.",
                self.prompt
                    .trim_end()
                    .trim_end_matches("Answer:")
                    .trim_end()
            ),
        }
    }

    /// What the reply must be: one of the letters for a multiple-choice item.
    pub fn constraint(&self) -> Option<edgewise_proto::Constraint> {
        match self.scorer {
            Scorer::Letter => Some(edgewise_proto::Constraint {
                kind: Some(edgewise_proto::constraint::Kind::Choice(
                    edgewise_proto::Choice {
                        options: LETTERS.iter().map(|l| l.to_string()).collect(),
                    },
                )),
            }),
            Scorer::Exact => None,
        }
    }

    /// New tokens a reply needs: a letter, or a short answer.
    pub fn max_tokens(&self) -> u32 {
        match self.scorer {
            Scorer::Letter => 2,
            Scorer::Exact => 12,
        }
    }

    pub fn is_correct(&self, reply: &str) -> bool {
        match self.scorer {
            Scorer::Letter => {
                letter(reply).is_some_and(|l| self.answer.eq_ignore_ascii_case(&l.to_string()))
            }
            Scorer::Exact => exact(reply, &self.answer),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawItem {
    question: Option<String>,
    prompt: Option<String>,
    answer: String,
    kind: Option<String>,
    subject: Option<String>,
    gpt4_correct: Option<bool>,
    /// Recorded in the set and not used: the hosted fallback scored is GPT-4.
    #[allow(dead_code)]
    mixtral_correct: Option<bool>,
}

pub fn load(path: &Path) -> Result<Vec<Item>, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|e| EvalError::Read(path.into(), e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |message: String| EvalError::Item {
            file: path.into(),
            line: i + 1,
            message,
        };
        let raw: RawItem = serde_json::from_str(line).map_err(|e| EvalError::Item {
            file: path.into(),
            line: i + 1,
            message: format!("column {}: {e}", e.column()),
        })?;
        let (prompt, scorer) =
            match (raw.question, raw.prompt) {
                (Some(q), None) => (q, Scorer::Exact),
                (None, Some(p)) => (p, Scorer::Letter),
                _ => return Err(bad(
                    "an item has one of `question` (exact answer) or `prompt` (multiple choice)"
                        .into(),
                )),
            };
        if scorer == Scorer::Letter && !["A", "B", "C", "D"].contains(&raw.answer.as_str()) {
            return Err(bad(format!(
                "answer `{}` is not one of A, B, C, D",
                raw.answer
            )));
        }
        if raw.answer.trim().is_empty() {
            return Err(bad("the answer is empty".into()));
        }
        out.push(Item {
            line: i + 1,
            prompt,
            answer: raw.answer,
            group: raw.kind.or(raw.subject).unwrap_or_default(),
            scorer,
            hosted_correct: raw.gpt4_correct,
        });
    }
    if out.is_empty() {
        return Err(EvalError::Item {
            file: path.into(),
            line: 1,
            message: "the set has no items".into(),
        });
    }
    Ok(out)
}

/// The answer letter a reply starts with (`B`, ` B.`, `B)`), if any.
fn letter(reply: &str) -> Option<char> {
    let t = reply.trim_start();
    let mut chars = t.chars();
    let c = chars.next()?;
    let next = chars.next();
    ("ABCDabcd".contains(c) && next.is_none_or(|n| !n.is_alphanumeric())).then_some(c)
}

fn exact(reply: &str, answer: &str) -> bool {
    let norm = |s: &str| s.trim().trim_end_matches('.').trim().to_lowercase();
    let want = norm(answer);
    let first = norm(reply.trim().lines().next().unwrap_or(""));
    first == want
        || first
            .split(|c: char| !(c.is_alphanumeric() || c == '-'))
            .any(|w| w == want)
        || (want.contains(' ') && first.contains(&want))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed cases that pin the rule (the manifest quality is measured through it).
    #[test]
    fn the_shared_scoring_cases() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let text = std::fs::read_to_string(root.join("eval/scoring-cases.jsonl")).unwrap();
        let cases: Vec<serde_json::Value> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(cases.len() > 20);
        let dir = tempfile::tempdir().unwrap();
        let set = dir.path().join("case.jsonl");
        for c in &cases {
            std::fs::write(&set, c["item"].to_string()).unwrap();
            let item = &load(&set).unwrap()[0];
            if let Some(reply) = c["reply"].as_str() {
                assert_eq!(
                    item.is_correct(reply),
                    c["correct"].as_bool().unwrap(),
                    "{c}"
                );
            }
            if let Some(message) = c["message"].as_str() {
                assert_eq!(item.message(), message, "{c}");
                assert_eq!(
                    u64::from(item.max_tokens()),
                    c["max_tokens"].as_u64().unwrap()
                );
            }
        }
    }

    #[test]
    fn a_bad_line_is_named() {
        let dir = std::env::temp_dir().join(format!("edgewise-items-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("set.jsonl");
        std::fs::write(
            &p,
            "{\"question\": \"q\", \"answer\": \"a\"}\n{\"prompt\": \"p\", \"answer\": \"E\"}\n",
        )
        .unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(e.contains("set.jsonl:2") && e.contains("`E`"), "{e}");
        std::fs::write(
            &p,
            "{\"question\": \"q\", \"answer\": \"a\", \"extra\": 1}\n",
        )
        .unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(e.contains("set.jsonl:1") && e.contains("extra"), "{e}");
    }
}
