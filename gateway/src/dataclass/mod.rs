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

pub use rules::{Near, RULES};

/// How long one request's scan may take before it is taken as restricted.
pub const SCAN_BOUND: Duration = Duration::from_millis(50);

struct Scanner {
    regexes: Vec<Regex>,
    gate: AhoCorasick,
    /// Keyword index in `gate` → the rule it belongs to.
    keyword_rule: Vec<usize>,
    /// One-byte keywords (found with memchr) and their rules.
    bytes: Vec<(u8, usize)>,
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
    let mut bytes = Vec::new();
    for (i, r) in RULES.iter().enumerate() {
        if r.near == Near::Keywords && r.keywords.is_empty() {
            return Err(format!("detector `{}`: no keywords", r.id));
        }
        for k in r.keywords {
            match k.as_bytes() {
                [b] => bytes.push((*b, i)),
                _ => {
                    keywords.push(*k);
                    keyword_rule.push(i);
                }
            }
        }
    }
    // leftmost-longest: `sk-ant-` is reported where `sk-` is its prefix (each keyword's rule
    // still runs wherever its own keyword is found); a DFA, since it reads every byte
    let gate = AhoCorasick::builder()
        .ascii_case_insensitive(true)
        .match_kind(aho_corasick::MatchKind::LeftmostLongest)
        .kind(Some(aho_corasick::AhoCorasickKind::DFA))
        .build(&keywords)
        .map_err(|e| format!("detector keywords: {e}"))?;
    Ok(Scanner {
        regexes,
        gate,
        keyword_rule,
        bytes,
    })
}

/// Whether the detectors compiled (checked at start, so a broken table is found at once).
pub fn ready() -> Result<(), String> {
    SCANNER.as_ref().map(|_| ()).map_err(Clone::clone)
}

const INVISIBLE: [char; 6] = [
    '\u{200B}', '\u{200C}', '\u{200D}', '\u{2060}', '\u{FEFF}', '\u{00AD}',
];

/// The text as the detectors read it: NFKC, without zero-width characters. Text that is
/// already so (all ASCII text, most other text: NFKC's quick check) is not copied; otherwise
/// only the stretches around non-ASCII characters are normalised.
pub fn normalize(text: &str) -> std::borrow::Cow<'_, str> {
    if text.is_ascii() || settled(text) {
        return std::borrow::Cow::Borrowed(text);
    }
    // NFKC never carries across the start of an ASCII character (a starter that composes
    // with nothing before it), so the text is normalised a stretch at a time: each run of
    // non-ASCII characters with the ASCII character before it (a base a combining mark may
    // join). The ASCII between stretches is copied as it is.
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    while let Some(p) = bytes[at..].iter().position(|b| !b.is_ascii()) {
        let first = at + p;
        let start = if first > at { first - 1 } else { first };
        let end = bytes[first..]
            .iter()
            .position(u8::is_ascii)
            .map_or(bytes.len(), |n| first + n);
        out.push_str(&text[at..start]);
        let stretch = &text[start..end];
        if settled(stretch) {
            out.push_str(stretch);
        } else {
            out.extend(stretch.nfkc().filter(|c| !INVISIBLE.contains(c)));
        }
        at = end;
    }
    out.push_str(&text[at..]);
    std::borrow::Cow::Owned(out)
}

/// Whether `text` is NFKC (by the quick check) without zero-width characters.
fn settled(text: &str) -> bool {
    use unicode_normalization::{IsNormalized, is_nfkc_quick};
    // ASCII characters are NFKC starters: leaving them out of the quick check can only turn
    // a Yes into a No or Maybe (then the text is normalised), never the other way
    is_nfkc_quick(text.chars().filter(|c| !c.is_ascii())) == IsNormalized::Yes
        && !text.contains(INVISIBLE)
}

/// The string values (and keys) of a JSON text, decoded, one per line; empty when it is not
/// JSON. What a detector must see of a tool call's arguments, where `\n` and `\u0041`
/// escapes would hide a value's shape.
pub fn json_strings(text: &str) -> String {
    fn walk(v: &serde_json::Value, out: &mut String) {
        match v {
            serde_json::Value::String(s) => {
                out.push_str(s);
                out.push('\n');
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            serde_json::Value::Object(o) => {
                for (k, x) in o {
                    out.push_str(k);
                    out.push('\n');
                    walk(x, out);
                }
            }
            _ => {}
        }
    }
    let mut out = String::new();
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
        walk(&v, &mut out);
    }
    out
}

/// A keyword-gated rule looks only this far before each of its keywords (a key's start, an
/// address's local part, a scheme), and its own `reach` after.
const BEFORE: usize = 96;

/// What a request's text parts hold, for `policy`: not scanned at all when no route of the
/// policy acts on or reports it (every route `inference: off`).
pub fn findings<'a>(
    policy: &crate::routing::Policy,
    parts: impl IntoIterator<Item = &'a str>,
) -> Findings {
    let wanted = policy
        .routes
        .iter()
        .any(|r| r.inference != crate::routing::InferenceMode::Off);
    if wanted {
        scan(parts, SCAN_BOUND)
    } else {
        Findings::default()
    }
}

/// Scans `parts` within `bound`; the findings per rule id. A detector that fails (panics)
/// makes the scan incomplete, as running out of time does: the request is then restricted.
pub fn scan<'a>(parts: impl IntoIterator<Item = &'a str>, bound: Duration) -> Findings {
    let parts: Vec<&str> = parts.into_iter().collect();
    std::panic::catch_unwind(|| scan_within(&parts, bound)).unwrap_or(Findings {
        detections: Vec::new(),
        incomplete: true,
    })
}

fn scan_within(parts: &[&str], bound: Duration) -> Findings {
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
    // per rule, the byte ranges to search (merged windows around its keywords)
    let mut ranges: Vec<Vec<std::ops::Range<usize>>> = vec![Vec::new(); RULES.len()];
    let mut incomplete = false;
    'parts: for &part in parts {
        if started.elapsed() > bound {
            incomplete = true;
            break;
        }
        let text = normalize(part);
        let bytes = text.as_bytes();
        ranges.iter_mut().for_each(Vec::clear);
        for m in scanner.gate.find_iter(bytes) {
            let i = scanner.keyword_rule[m.pattern().as_usize()];
            let window =
                m.start().saturating_sub(BEFORE)..(m.end() + RULES[i].reach).min(bytes.len());
            add(&mut ranges[i], window);
        }
        for &(b, i) in &scanner.bytes {
            for at in memchr::memchr_iter(b, bytes) {
                let window = at.saturating_sub(BEFORE)..(at + 1 + RULES[i].reach).min(bytes.len());
                add(&mut ranges[i], window);
            }
        }
        let digits = digit_runs(bytes);
        let codes = letters_digits(bytes);
        for (i, rule) in RULES.iter().enumerate() {
            match rule.near {
                Near::Keywords => {}
                Near::Digits(n) => {
                    for (run, count) in &digits {
                        if *count >= n {
                            // a bracket or boundary just before, a boundary just after
                            add(
                                &mut ranges[i],
                                run.start.saturating_sub(2)..(run.end + 1).min(bytes.len()),
                            );
                        }
                    }
                }
                Near::LettersDigits => {
                    for &at in &codes {
                        add(
                            &mut ranges[i],
                            at.saturating_sub(1)..(at + 64).min(bytes.len()),
                        );
                    }
                }
            }
        }
        for (i, rule) in RULES.iter().enumerate() {
            if ranges[i].is_empty() {
                continue;
            }
            if started.elapsed() > bound {
                incomplete = true;
                break 'parts;
            }
            // the DFA finds matches; captures are resolved only within a match (the slower
            // engines never run over the whole text)
            let re = &scanner.regexes[i];
            let found_in = |r: &std::ops::Range<usize>| re.find_iter(&bytes[r.clone()]);
            for m in ranges[i].iter().flat_map(found_in) {
                let found = if rule.value == 0 && rule.key.is_none() {
                    (rule.check)(m.as_bytes(), b"")
                } else {
                    re.captures(m.as_bytes()).is_some_and(|caps| {
                        let value = caps.get(rule.value).map_or(&[][..], |m| m.as_bytes());
                        let key = rule
                            .key
                            .and_then(|k| caps.get(k))
                            .map_or(&[][..], |m| m.as_bytes());
                        (rule.check)(value, key)
                    })
                };
                if found {
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

/// Adds `window` to a rule's ranges (kept sorted and merged; windows arrive in text order).
fn add(ranges: &mut Vec<std::ops::Range<usize>>, window: std::ops::Range<usize>) {
    match ranges.last_mut() {
        Some(last) if window.start <= last.end => {
            *last = last.start.min(window.start)..last.end.max(window.end);
        }
        _ => ranges.push(window),
    }
}

/// Runs of digits with the separators numbers are written with (space, dot, dash, brackets,
/// slash) between them, and how many digits each holds.
fn digit_runs(bytes: &[u8]) -> Vec<(std::ops::Range<usize>, usize)> {
    let mut out = Vec::new();
    let mut start = None;
    let (mut count, mut last_digit) = (0, 0);
    for (i, &b) in bytes.iter().enumerate() {
        if b.is_ascii_digit() {
            if start.is_none() {
                start = Some(i);
                count = 0;
            }
            count += 1;
            last_digit = i;
        } else if start.is_some() && matches!(b, b' ' | b'.' | b'-' | b'(' | b')' | b'/') {
            // a separator continues the run only if a digit follows soon
            if i - last_digit > 2
                && let Some(s) = start.take()
            {
                out.push((s..last_digit + 1, count));
            }
        } else if let Some(s) = start.take() {
            out.push((s..last_digit + 1, count));
        }
    }
    if let Some(s) = start {
        out.push((s..last_digit + 1, count));
    }
    out
}

/// Where two ASCII letters are followed by two digits (an IBAN's start), at a word start.
fn letters_digits(bytes: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    if bytes.len() < 5 {
        return out;
    }
    for i in 0..bytes.len() - 4 {
        let (a, b) = (bytes[i], bytes[i + 1]);
        // both letters in one case (`GB82…`, `gb82…`), and the account goes on after the
        // check digits
        // the rare condition first: two digits
        if bytes[i + 2].is_ascii_digit()
            && bytes[i + 3].is_ascii_digit()
            && (a.is_ascii_uppercase() && b.is_ascii_uppercase()
                || a.is_ascii_lowercase() && b.is_ascii_lowercase())
            && (bytes[i + 4].is_ascii_alphanumeric() || bytes[i + 4] == b' ')
            && (i == 0 || !bytes[i - 1].is_ascii_alphanumeric())
        {
            out.push(i);
        }
    }
    out
}

/// Every detector id with its category (for the policy's floors and `policy check`).
pub fn detectors() -> impl Iterator<Item = (&'static str, Category)> {
    RULES.iter().map(|r| (r.id, r.category))
}
