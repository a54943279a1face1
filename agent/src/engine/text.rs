//! Streaming detokenisation with stop sequences.
//!
//! Text is emitted only once it is final: a token that ends inside a multi-byte character is
//! held until the character completes, and text that could be the start of a stop sequence
//! is held until it is known not to be one.

/// What `TextStream::push` produced.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pushed {
    /// New text that is safe to send.
    pub text: String,
    /// A stop sequence matched; generation ends and the stop text is not sent.
    pub stopped: bool,
}

pub struct TextStream {
    stops: Vec<String>,
    /// Everything decoded so far.
    decoded: String,
    /// Bytes of `decoded` already sent.
    sent: usize,
}

impl TextStream {
    pub fn new(stops: Vec<String>) -> Self {
        Self { stops: stops.into_iter().filter(|s| !s.is_empty()).collect(), decoded: String::new(), sent: 0 }
    }

    /// `decoded` is the detokenised text of all generated tokens so far.
    pub fn push(&mut self, decoded: String) -> Pushed {
        self.decoded = decoded;
        if self.decoded.ends_with('\u{FFFD}') {
            return Pushed::default(); // an incomplete UTF-8 sequence: wait for the next token
        }
        let pending = &self.decoded[self.sent.min(self.decoded.len())..];
        // a stop may span text already sent and new text; search from just before `sent`
        let search_from = self.sent.saturating_sub(self.stops.iter().map(String::len).max().unwrap_or(0));
        let search_from = (0..=search_from).rev().find(|&i| self.decoded.is_char_boundary(i)).unwrap_or(0);
        let hit = self.stops.iter().filter_map(|s| self.decoded[search_from..].find(s.as_str()).map(|i| i + search_from)).min();
        if let Some(at) = hit {
            let text = if at > self.sent { self.decoded[self.sent..at].to_string() } else { String::new() };
            self.sent = self.decoded.len();
            return Pushed { text, stopped: true };
        }
        // hold back the longest tail that is a prefix of a stop sequence
        let mut hold = 0;
        for s in &self.stops {
            for k in (1..s.len()).rev() {
                if k <= pending.len() && pending.is_char_boundary(pending.len() - k) && s.starts_with(&pending[pending.len() - k..]) {
                    hold = hold.max(k);
                    break;
                }
            }
        }
        let end = self.decoded.len() - hold;
        let text = self.decoded[self.sent..end].to_string();
        self.sent = end;
        Pushed { text, stopped: false }
    }

    /// Text still held back when generation ends for another reason.
    pub fn finish(&mut self) -> String {
        if self.decoded.ends_with('\u{FFFD}') {
            self.decoded.truncate(self.decoded.trim_end_matches('\u{FFFD}').len());
        }
        let rest = self.decoded.get(self.sent..).unwrap_or_default().to_string();
        self.sent = self.decoded.len();
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], steps: &[&str]) -> (Vec<String>, bool, String) {
        let mut s = TextStream::new(stops.iter().map(|x| x.to_string()).collect());
        let mut acc = String::new();
        let mut out = Vec::new();
        for step in steps {
            acc.push_str(step);
            let p = s.push(acc.clone());
            out.push(p.text);
            if p.stopped {
                return (out, true, String::new());
            }
        }
        let rest = s.finish();
        (out, false, rest)
    }

    #[test]
    fn holds_a_possible_stop_prefix_and_cuts_at_the_stop() {
        let (out, stopped, _) = run(&["\nUser:"], &["Paris", ".\n", "Us", "er: hi"]);
        assert_eq!(out, vec!["Paris", ".", "", ""]);
        assert!(stopped);
    }

    #[test]
    fn releases_held_text_when_it_is_not_a_stop() {
        let (out, stopped, rest) = run(&["END"], &["the E", "ND"]);
        assert_eq!(out, vec!["the ", ""]);
        assert!(stopped);
        assert_eq!(rest, "");
        let (out, stopped, rest) = run(&["END"], &["the E", "gg", " E"]);
        assert_eq!(out, vec!["the ", "Egg", ""]);
        assert!(!stopped);
        assert_eq!(rest, " E");
    }

    #[test]
    fn waits_for_complete_characters() {
        let mut s = TextStream::new(Vec::new());
        assert_eq!(s.push("caf".into()).text, "caf");
        // a token ending inside a multi-byte character decodes to U+FFFD: nothing is sent
        assert_eq!(s.push("caf\u{FFFD}".into()).text, "");
        assert_eq!(s.push("caf\u{e9}".into()).text, "\u{e9}");
        assert_eq!(s.finish(), "");
    }
}
