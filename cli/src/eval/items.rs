//! Evaluation item sets (JSON lines, committed under `eval/`) and how an answer is scored.
//!
//! Two shapes are read:
//! - short exact answers: `{"kind", "question", "answer"}`; right when the answer is the
//!   reply's first line or a whole word of it (case and a final period ignored);
//! - multiple choice (MMLU): `{"prompt", "answer": "A".."D", "subject", "gpt4_correct"}`;
//!   right when the reply starts with the answer letter. `gpt4_correct` is the hosted model's
//!   recorded outcome, so the hosted fallback is scored offline.

use std::path::Path;

use serde::Deserialize;

use super::EvalError;

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

    fn item(scorer: Scorer, answer: &str) -> Item {
        Item {
            line: 1,
            prompt: String::new(),
            answer: answer.into(),
            group: String::new(),
            scorer,
            hosted_correct: None,
        }
    }

    #[test]
    fn answers_are_scored_as_written() {
        let cases = [
            (Scorer::Exact, "Helsinki", "Helsinki", true),
            (Scorer::Exact, "Helsinki", "The capital is Helsinki.", true),
            (Scorer::Exact, "Helsinki", "helsinki.\nMore text", true),
            (Scorer::Exact, "Helsinki", "Oslo\nHelsinki", false),
            (Scorer::Exact, "11", "111", false),
            (Scorer::Exact, "11", "6 + 5 = 11", true),
            (Scorer::Exact, "New Delhi", "It is New Delhi", true),
            (Scorer::Letter, "B", "B", true),
            (Scorer::Letter, "B", " B.", true),
            (Scorer::Letter, "B", "b)", true),
            (Scorer::Letter, "B", "Because", false),
            (Scorer::Letter, "B", "A", false),
            (Scorer::Letter, "B", "", false),
        ];
        for (scorer, answer, reply, want) in cases {
            assert_eq!(
                item(scorer, answer).is_correct(reply),
                want,
                "{scorer:?} {answer:?} {reply:?}"
            );
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
