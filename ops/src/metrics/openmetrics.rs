//! Reading the OpenMetrics text format back into families and samples.
//!
//! The registry both daemons keep (prometheus-client) is the one source of truth for their
//! metrics; it can be read only by encoding it. The OTLP export encodes it as the scrape does
//! and reads the text here, so a Prometheus scrape and an OTLP collector always see the same
//! figures. The reader follows the OpenMetrics 1.0 text format (metric and label names, label
//! value escapes, optional timestamps and exemplars); it is lenient where the Prometheus 0.0.4
//! format differs (no `# EOF`, a trailing comma in a label set).

use std::fmt;

/// What a family's `# TYPE` line says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
    Info,
    Unknown,
    /// A type the export does not carry (stateset, summary, gaugehistogram).
    Other(String),
}

/// A sample's value as written: integers stay integers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Int(i64),
    Float(f64),
}

impl Value {
    pub fn as_f64(self) -> f64 {
        match self {
            Value::Int(i) => i as f64,
            Value::Float(f) => f,
        }
    }
}

/// A sample's labels, (name, value) in the order written.
pub type Labels = Vec<(String, String)>;

/// One line of samples: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Labels,
    pub value: Value,
}

/// A metric family: its metadata and its samples, in the order written.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub name: String,
    pub kind: Kind,
    pub help: String,
    pub unit: String,
    pub samples: Vec<Sample>,
}

/// A line the reader could not make sense of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based.
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ParseError {}

/// The suffixes a family's samples may carry, by kind.
fn suffixes(kind: &Kind) -> &'static [&'static str] {
    match kind {
        Kind::Counter => &["_total", "_created"],
        Kind::Histogram => &["_bucket", "_sum", "_count", "_created"],
        Kind::Info => &["_info"],
        _ => &[""],
    }
}

fn belongs(family: &Family, sample: &str) -> bool {
    sample
        .strip_prefix(family.name.as_str())
        .is_some_and(|rest| rest.is_empty() || suffixes(&family.kind).contains(&rest))
}

/// Reads an exposition into its families. A sample with no `# TYPE` before it is a family of
/// its own, of unknown type.
pub fn parse(text: &str) -> Result<Vec<Family>, ParseError> {
    let mut families: Vec<Family> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let at = |message: String| ParseError {
            line: i + 1,
            message,
        };
        if line.trim().is_empty() {
            continue;
        }
        if let Some(meta) = line.strip_prefix('#') {
            let meta = meta.trim_start();
            if meta == "EOF" {
                break;
            }
            let mut parts = meta.splitn(3, ' ');
            let (Some(word), Some(name)) = (parts.next(), parts.next()) else {
                continue; // a comment
            };
            let rest = parts.next().unwrap_or("").trim_end();
            if !matches!(word, "TYPE" | "HELP" | "UNIT") {
                continue;
            }
            metric_name(name).map_err(at)?;
            if families.last().is_none_or(|f| f.name != name) {
                families.push(Family {
                    name: name.to_string(),
                    kind: Kind::Unknown,
                    help: String::new(),
                    unit: String::new(),
                    samples: Vec::new(),
                });
            }
            let Some(f) = families.last_mut() else {
                continue;
            };
            match word {
                "TYPE" => {
                    f.kind = match rest {
                        "counter" => Kind::Counter,
                        "gauge" => Kind::Gauge,
                        "histogram" => Kind::Histogram,
                        "info" => Kind::Info,
                        "unknown" | "untyped" => Kind::Unknown,
                        other => Kind::Other(other.to_string()),
                    }
                }
                "HELP" => f.help = unescape(rest),
                _ => f.unit = rest.to_string(),
            }
            continue;
        }
        let sample = sample(line).map_err(at)?;
        if !families.last().is_some_and(|f| belongs(f, &sample.name)) {
            families.push(Family {
                name: sample.name.clone(),
                kind: Kind::Unknown,
                help: String::new(),
                unit: String::new(),
                samples: Vec::new(),
            });
        }
        if let Some(f) = families.last_mut() {
            f.samples.push(sample);
        }
    }
    Ok(families)
}

fn metric_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
    if ok {
        Ok(())
    } else {
        Err(format!("`{name}` is not a metric name"))
    }
}

fn sample(line: &str) -> Result<Sample, String> {
    let end = line.find(['{', ' ']).unwrap_or(line.len());
    let name = &line[..end];
    metric_name(name)?;
    let mut rest = &line[end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        rest = inner;
        loop {
            rest = rest.trim_start();
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = rest
                .find('=')
                .ok_or_else(|| format!("`{name}`: a label without `=`"))?;
            let key = rest[..eq].trim();
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("`{name}`: `{key}` is not a label name"));
            }
            let quoted = rest[eq + 1..]
                .trim_start()
                .strip_prefix('"')
                .ok_or_else(|| format!("`{name}`: label `{key}` has no quoted value"))?;
            let (value, after) = quoted_value(quoted)
                .ok_or_else(|| format!("`{name}`: label `{key}`'s value is not closed"))?;
            labels.push((key.to_string(), value));
            rest = after.trim_start();
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
    }
    // value, then an optional timestamp and an optional exemplar (`# {...} v`)
    let text = rest
        .split_whitespace()
        .next()
        .ok_or_else(|| format!("`{name}` has no value"))?;
    let value = if let Ok(i) = text.parse::<i64>() {
        Value::Int(i)
    } else {
        Value::Float(
            text.parse::<f64>()
                .map_err(|_| format!("`{name}`: `{text}` is not a number"))?,
        )
    };
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// A label value up to its closing quote, unescaped, and what follows the quote.
fn quoted_value(s: &str) -> Option<(String, &str)> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match (escaped, c) {
            (true, _) => escaped = false,
            (false, '\\') => escaped = true,
            (false, '"') => return Some((unescape(&s[..i]), &s[i + 1..])),
            _ => {}
        }
    }
    None
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some(c @ ('\\' | '"')) => out.push(c),
            Some(c) => {
                out.push('\\');
                out.push(c);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// A label value written so that the text format keeps it whole: `\`, `"` and line feeds
/// escaped. prometheus-client writes label values as given, so values from outside (tenant
/// names, policy names) go through this before they become labels.
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_prometheus_client_writes() {
        use prometheus_client::metrics::counter::Counter;
        use prometheus_client::metrics::family::Family as F;
        use prometheus_client::metrics::gauge::Gauge;
        use prometheus_client::metrics::histogram::Histogram;
        use prometheus_client::registry::{Registry, Unit};
        let mut r = Registry::with_prefix("edgewise_test");
        let requests = F::<Vec<(&'static str, String)>, Counter>::default();
        r.register("requests", "Requests, by tenant", requests.clone());
        let depth = Gauge::<i64>::default();
        r.register("queue_depth", "Queued", depth.clone());
        let latency = Histogram::new([0.1, 1.0]);
        r.register_with_unit("latency", "Latency", Unit::Seconds, latency.clone());
        requests
            .get_or_create(&vec![("tenant", escape("a \"quoted\\\" one\nx"))])
            .inc_by(3);
        depth.set(-2);
        latency.observe(0.05);
        latency.observe(0.5);
        latency.observe(7.0);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap();

        let families = parse(&text).unwrap();
        let names: Vec<_> = families.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "edgewise_test_requests",
                "edgewise_test_queue_depth",
                "edgewise_test_latency_seconds"
            ]
        );
        let c = &families[0];
        assert_eq!(c.kind, Kind::Counter);
        assert_eq!(c.help, "Requests, by tenant.");
        assert_eq!(c.samples[0].name, "edgewise_test_requests_total");
        assert_eq!(
            c.samples[0].labels,
            [("tenant".to_string(), "a \"quoted\\\" one\nx".to_string())]
        );
        assert_eq!(c.samples[0].value, Value::Int(3));
        assert_eq!(families[1].kind, Kind::Gauge);
        assert_eq!(families[1].samples[0].value, Value::Int(-2));
        let h = &families[2];
        assert_eq!(
            (h.kind.clone(), h.unit.as_str()),
            (Kind::Histogram, "seconds")
        );
        let buckets: Vec<_> = h
            .samples
            .iter()
            .filter(|s| s.name.ends_with("_bucket"))
            .map(|s| (s.labels[0].1.as_str(), s.value.as_f64()))
            .collect();
        assert_eq!(buckets, [("0.1", 1.0), ("1.0", 2.0), ("+Inf", 3.0)]);
        let sum = h.samples.iter().find(|s| s.name.ends_with("_sum")).unwrap();
        assert_eq!(sum.value.as_f64(), 7.55);
    }

    #[test]
    fn untyped_samples_timestamps_and_exemplars() {
        let text = "# a comment\nup 1 1700000000\nx_total{a=\"b\",} 2.5 # {trace_id=\"abc\"} 1.0\n# EOF\nafter 9\n";
        let f = parse(text).unwrap();
        assert_eq!(f.len(), 2, "{f:?}");
        assert_eq!(
            (f[0].name.as_str(), f[0].kind.clone()),
            ("up", Kind::Unknown)
        );
        assert_eq!(f[0].samples[0].value, Value::Int(1));
        assert_eq!(f[1].samples[0].labels, [("a".into(), "b".into())]);
        assert_eq!(f[1].samples[0].value, Value::Float(2.5));
    }

    #[test]
    fn broken_lines_are_named_with_their_line() {
        for (text, line, says) in [
            ("ok 1\n9lives 1\n", 2, "not a metric name"),
            ("x{a=\"b} 1\n", 1, "not closed"),
            ("x{a=b} 1\n", 1, "no quoted value"),
            ("x{a} 1\n", 1, "without `=`"),
            ("x{} one\n", 1, "`one` is not a number"),
            ("\n\nx\n", 3, "has no value"),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e.message.contains(says), "{text:?}: {e}");
        }
    }
}
