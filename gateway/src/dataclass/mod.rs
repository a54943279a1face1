//! The text decides too: every text part of a request (each chat message of every role, a
//! prompt, each embedding or classification input) is scanned for identifiers and secrets,
//! and what is found can only raise the request's data class (`routing::inference`).
//!
//! Order of work, per part: NFKC (full-width digits and compatibility forms fold) with
//! zero-width characters removed — skipped for ASCII text, which NFKC leaves as it is; then
//! an Aho-Corasick pass over every rule's keywords picks the rules that can match; then each
//! picked rule's own byte regex, and its check on each match. One `RegexSet` over all rules
//! would be slower (the generic patterns dominate it). Nothing found is kept but the rule id
//! and a count: no matched text leaves this module.
//!
//! Fail closed: a scan that passes its time bound stops and reports itself incomplete, which
//! makes the request restricted.

mod rules;
#[cfg(test)]
mod tests;
pub mod validators;

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use aho_corasick::AhoCorasick;
use regex::bytes::Regex;
use unicode_normalization::UnicodeNormalization;

use crate::routing::{Category, Detection, Findings};

pub use rules::RULES;

/// How long one request's scan may take before it is taken as restricted.
pub const SCAN_BOUND: Duration = Duration::from_millis(50);

struct Scanner {
    regexes: Vec<Regex>,
    gate: AhoCorasick,
    /// Keyword index in `gate` → the rule it belongs to.
    keyword_rule: Vec<usize>,
    /// Rules with no keywords: they run on every part.
    always: Vec<usize>,
}

/// Compiled once; a pattern that does not compile is a bug caught by the tests (and makes
/// every scan fail closed rather than panic).
static SCANNER: LazyLock<Result<Scanner, String>> = LazyLock::new(build);

fn build() -> Result<Scanner, String> {
    let regexes = RULES
        .iter()
        .map(|r| Regex::new(r.pattern).map_err(|e| format!("detector `{}`: {e}", r.id)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut keywords = Vec::new();
    let mut keyword_rule = Vec::new();
    let mut always = Vec::new();
    for (i, r) in RULES.iter().enumerate() {
        if r.keywords.is_empty() {
            always.push(i);
        }
        for k in r.keywords {
            keywords.push(*k);
            keyword_rule.push(i);
        }
    }
    let gate = AhoCorasick::builder()
        .ascii_case_insensitive(true)
        .build(&keywords)
        .map_err(|e| format!("detector keywords: {e}"))?;
    Ok(Scanner {
        regexes,
        gate,
        keyword_rule,
        always,
    })
}

/// Whether the detectors compiled (checked at start, so a broken table is found at once).
pub fn ready() -> Result<(), String> {
    SCANNER.as_ref().map(|_| ()).map_err(Clone::clone)
}

/// The text as the detectors read it: NFKC, without zero-width characters.
pub fn normalize(text: &str) -> std::borrow::Cow<'_, str> {
    if text.is_ascii() {
        return std::borrow::Cow::Borrowed(text);
    }
    const INVISIBLE: [char; 6] = [
        '\u{200B}', '\u{200C}', '\u{200D}', '\u{2060}', '\u{FEFF}', '\u{00AD}',
    ];
    std::borrow::Cow::Owned(
        text.nfkc()
            .filter(|c| !INVISIBLE.contains(c))
            .collect::<String>(),
    )
}

/// Scans `parts` within `bound`; the findings per rule id.
pub fn scan<'a>(parts: impl IntoIterator<Item = &'a str>, bound: Duration) -> Findings {
    let started = Instant::now();
    let scanner = match SCANNER.as_ref() {
        Ok(s) => s,
        Err(_) => {
            return Findings {
                detections: Vec::new(),
                incomplete: true,
            };
        }
    };
    let mut counts = vec![0u32; RULES.len()];
    let mut run = vec![false; RULES.len()];
    let mut incomplete = false;
    'parts: for part in parts {
        let text = normalize(part);
        let bytes = text.as_bytes();
        run.iter_mut().for_each(|r| *r = false);
        for &i in &scanner.always {
            run[i] = true;
        }
        for m in scanner.gate.find_overlapping_iter(bytes) {
            run[scanner.keyword_rule[m.pattern().as_usize()]] = true;
        }
        for (i, rule) in RULES.iter().enumerate() {
            if !run[i] {
                continue;
            }
            if started.elapsed() > bound {
                incomplete = true;
                break 'parts;
            }
            for caps in scanner.regexes[i].captures_iter(bytes) {
                let value = caps.get(rule.value).map_or(&[][..], |m| m.as_bytes());
                let key = rule
                    .key
                    .and_then(|k| caps.get(k))
                    .map_or(&[][..], |m| m.as_bytes());
                if (rule.check)(value, key) {
                    counts[i] = counts[i].saturating_add(1);
                }
            }
        }
    }
    Findings {
        detections: RULES
            .iter()
            .zip(counts)
            .filter(|(_, n)| *n > 0)
            .map(|(r, count)| Detection {
                detector: r.id,
                category: r.category,
                count,
            })
            .collect(),
        incomplete,
    }
}

/// Every detector id with its category (for the policy's floors and `policy check`).
pub fn detectors() -> impl Iterator<Item = (&'static str, Category)> {
    RULES.iter().map(|r| (r.id, r.category))
}
