//! Streaming detokenisation with stop sequences.
//!
//! `Detokenizer` turns tokens into text pieces that are final: a token that ends inside a
//! multi-byte character is held until the character completes (at most `MAX_UTF8_WAITS`
//! tokens: after that the bytes are invalid and are sent as U+FFFD). `TextStream` then holds
//! back text that could still become a stop sequence, and cuts the text at one.

/// A UTF-8 character spans at most 4 bytes, so at most 3 tokens can end inside one.
pub const MAX_UTF8_WAITS: usize = 3;

/// Incremental decoding over a sliding window (`prefix..read` was already emitted), so the
/// cost per token does not grow with the length of the generation.
#[derive(Default)]
pub struct Detokenizer {
    ids: Vec<u32>,
    prefix: usize,
    read: usize,
    waits: usize,
}

impl Detokenizer {
    /// Adds a token; returns the text that became final (possibly empty).
    pub fn push(&mut self, id: u32, decode: impl Fn(&[u32]) -> String) -> String {
        self.ids.push(id);
        let before = decode(&self.ids[self.prefix..self.read]);
        let now = decode(&self.ids[self.prefix..]);
        let complete = !now.ends_with('\u{FFFD}') || self.waits >= MAX_UTF8_WAITS;
        // `before` is normally a prefix of `now`; it is not when bytes already sent as U+FFFD
        // are completed by a later token, and then only the new characters are sent
        let common = common_prefix(&before, &now);
        if complete && now.len() > common {
            let piece = now[common..].to_string();
            self.prefix = self.read;
            self.read = self.ids.len();
            self.waits = 0;
            return piece;
        }
        self.waits += 1;
        String::new()
    }

    /// Whatever is still held when generation ends.
    pub fn finish(&mut self, decode: impl Fn(&[u32]) -> String) -> String {
        let before = decode(&self.ids[self.prefix..self.read]);
        let now = decode(&self.ids[self.prefix..]);
        self.prefix = self.ids.len();
        self.read = self.ids.len();
        now[common_prefix(&before, &now)..].to_string()
    }
}

/// Byte length of the longest common prefix of whole characters.
fn common_prefix(a: &str, b: &str) -> usize {
    a.char_indices()
        .zip(b.chars())
        .take_while(|((_, x), y)| x == y)
        .last()
        .map_or(0, |((i, c), _)| i + c.len_utf8())
}

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
    /// All final text so far (appended to, never rewritten).
    text: String,
    /// Bytes of `text` already sent.
    sent: usize,
}

impl TextStream {
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            text: String::new(),
            sent: 0,
        }
    }

    pub fn push(&mut self, piece: &str) -> Pushed {
        self.text.push_str(piece);
        // a stop may span text already sent and new text: search from just before `sent`
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        let mut from = self.sent.saturating_sub(longest);
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        let hit = self
            .stops
            .iter()
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|i| i + from))
            .min();
        if let Some(at) = hit {
            let text = self.text.get(self.sent..at).unwrap_or_default().to_string();
            self.sent = self.text.len();
            return Pushed {
                text,
                stopped: true,
            };
        }
        // hold back the longest tail that is a prefix of a stop sequence
        let pending = &self.text[self.sent..];
        let mut hold = 0;
        for s in &self.stops {
            for k in (1..s.len().min(pending.len() + 1)).rev() {
                let cut = pending.len() - k;
                if pending.is_char_boundary(cut) && s.starts_with(&pending[cut..]) {
                    hold = hold.max(k);
                    break;
                }
            }
        }
        let end = self.text.len() - hold;
        let text = self.text[self.sent..end].to_string();
        self.sent = end;
        Pushed {
            text,
            stopped: false,
        }
    }

    /// Text still held back when generation ends for another reason.
    pub fn finish(&mut self) -> String {
        let rest = self.text[self.sent..].to_string();
        self.sent = self.text.len();
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, bool, String) {
        let mut s = TextStream::new(stops.iter().map(|x| x.to_string()).collect());
        let mut out = Vec::new();
        for p in pieces {
            let r = s.push(p);
            out.push(r.text);
            if r.stopped {
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
        assert_eq!(out, vec!["the ", "Egg", " "]);
        assert!(!stopped);
        assert_eq!(rest, "E");
    }

    /// Byte tokens decoded as UTF-8, lossily (what a byte-level tokenizer does).
    fn bytes(ids: &[u32]) -> String {
        String::from_utf8_lossy(&ids.iter().map(|&i| i as u8).collect::<Vec<_>>()).into_owned()
    }

    #[test]
    fn waits_for_complete_characters() {
        let mut d = Detokenizer::default();
        let pieces: Vec<String> = "café!"
            .bytes()
            .map(|b| d.push(u32::from(b), bytes))
            .collect();
        assert_eq!(pieces, ["c", "a", "f", "", "é", "!"]);
        assert_eq!(d.finish(bytes), "");
    }

    #[test]
    fn an_invalid_byte_is_sent_after_a_bounded_wait() {
        let mut d = Detokenizer::default();
        let mut sent = String::new();
        for b in [b'a', 0xC3, 0xFF, 0xFF, 0xFF, b'b'] {
            sent.push_str(&d.push(u32::from(b), bytes));
        }
        sent.push_str(&d.finish(bytes));
        assert!(
            sent.starts_with('a') && sent.ends_with('b') && sent.contains('\u{FFFD}'),
            "{sent:?}"
        );
    }
}
