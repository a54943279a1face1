//! Server-sent events (the `text/event-stream` framing both OpenAI and Anthropic stream in):
//! bytes in, `(event, data)` pairs out. Bounded: an event larger than `MAX_EVENT_BYTES` is an
//! error rather than unbounded buffering.

/// The largest event a provider may send (a streamed delta is a few hundred bytes).
pub const MAX_EVENT_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The `event:` field; empty when the stream does not name its events.
    pub event: String,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

#[derive(Debug, Default)]
pub struct Parser {
    buf: Vec<u8>,
    event: String,
    data: String,
    has_data: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an event is larger than {MAX_EVENT_BYTES} bytes")]
pub struct TooLarge;

impl Parser {
    /// Feeds bytes; returns the events they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Event>, TooLarge> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut start = 0;
        while let Some(nl) = self.buf[start..].iter().position(|&b| b == b'\n') {
            let end = start + nl;
            let line = &self.buf[start..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let line = String::from_utf8_lossy(line).into_owned();
            start = end + 1;
            if let Some(e) = self.line(&line) {
                out.push(e);
            }
        }
        self.buf.drain(..start);
        if self.buf.len() + self.data.len() > MAX_EVENT_BYTES {
            return Err(TooLarge);
        }
        Ok(out)
    }

    fn line(&mut self, line: &str) -> Option<Event> {
        if line.is_empty() {
            let e = self.has_data.then(|| Event {
                event: std::mem::take(&mut self.event),
                data: std::mem::take(&mut self.data),
            });
            self.event.clear();
            self.has_data = false;
            return e;
        }
        if line.starts_with(':') {
            return None; // a comment (keep-alive)
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = value.to_string(),
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            _ => {} // id, retry and unknown fields do not matter here
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(event: &str, data: &str) -> Event {
        Event {
            event: event.into(),
            data: data.into(),
        }
    }

    #[test]
    fn events_split_across_reads_and_line_endings() {
        let mut p = Parser::default();
        let text = b": keep-alive\r\nevent: message_start\r\ndata: {\"a\":1}\r\n\r\ndata: x\ndata: y\n\ndata:[DONE]\n\n";
        let mut all = Vec::new();
        for chunk in text.chunks(3) {
            all.extend(p.push(chunk).unwrap());
        }
        assert_eq!(
            all,
            vec![
                ev("message_start", "{\"a\":1}"),
                ev("", "x\ny"),
                ev("", "[DONE]")
            ]
        );
    }

    #[test]
    fn an_endless_event_is_refused() {
        let mut p = Parser::default();
        let big = vec![b'a'; 64 * 1024];
        let mut r = Ok(vec![]);
        for _ in 0..20 {
            r = p.push(b"data: ").and_then(|_| p.push(&big));
            if r.is_err() {
                break;
            }
        }
        assert_eq!(r, Err(TooLarge));
    }
}
