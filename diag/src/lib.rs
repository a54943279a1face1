//! Diagnostics that point at the input: `file:line:column: path: message`.
//!
//! Owns turning parse errors and validation problems into located messages, shared by the
//! agent's and the gateway's config and policy files. Validation code collects every problem
//! (it does not stop at the first) and this crate places each one in the file it came from.

use std::fmt;
use std::path::{Path, PathBuf};

mod layered;

pub use layered::{ENV_PREFIX, Layered, env_name};

/// One problem in an input file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// 1-based line and column; `None` when the value did not come from the file (a default,
    /// or an environment override, which `path` then names).
    pub position: Option<(usize, usize)>,
    pub path: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, col)) => write!(f, "{}:{line}:{col}: ", self.file.display())?,
            None => write!(f, "{}: ", self.file.display())?,
        }
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in one or more files, reported together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// A TOML document kept with its spans, to place dotted paths (`runtime.intra_op_threads`,
/// `classify.labels[2]`) at a line and column.
pub struct TomlSource {
    file: PathBuf,
    text: String,
    /// Parsed on first use: only a document the `toml` crate accepted has paths to place
    /// (toml_edit 0.23 panics on some malformed inputs — "all items have spans", found by
    /// fuzzing — so it never sees a document that failed to parse).
    doc: std::sync::OnceLock<Option<toml_edit::Document<String>>>,
}

impl TomlSource {
    pub fn new(file: &Path, text: String) -> Self {
        Self {
            file: file.to_path_buf(),
            text,
            doc: std::sync::OnceLock::new(),
        }
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    /// 1-based (line, column) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, col)
    }

    /// Where the value at `path` starts, or where its closest present parent starts.
    pub fn locate(&self, path: &str) -> Option<(usize, usize)> {
        let doc = self
            .doc
            .get_or_init(|| {
                // and should it panic anyway, that costs a position, never the process
                std::panic::catch_unwind(|| toml_edit::Document::parse(self.text.clone()).ok())
                    .ok()
                    .flatten()
            })
            .as_ref()?;
        let mut item: &toml_edit::Item = doc.as_item();
        let mut best = None;
        for seg in split_path(path) {
            let next = match seg {
                Seg::Key(k) => item.get(k),
                Seg::Index(i) => item.get(i),
            };
            match next {
                Some(n) => {
                    item = n;
                    if let Some(span) = item_span(item) {
                        best = Some(span);
                    }
                }
                None => break,
            }
        }
        best.map(|s| self.line_col(s))
    }

    /// A diagnostic for `path`, placed in this file.
    pub fn diag(&self, path: &str, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            file: self.file.clone(),
            position: self.locate(path),
            path: path.to_string(),
            message: message.into(),
        }
    }

    /// A TOML syntax or shape error (from the `toml` deserializer), placed at its span.
    pub fn from_toml_error(&self, err: &toml::de::Error) -> Diagnostic {
        let position = err.span().map(|s| self.line_col(s.start));
        Diagnostic {
            file: self.file.clone(),
            position,
            path: String::new(),
            message: err.message().trim().to_string(),
        }
    }
}

fn item_span(item: &toml_edit::Item) -> Option<usize> {
    match item {
        toml_edit::Item::Value(v) => v.span().map(|s| s.start),
        toml_edit::Item::Table(t) => t.span().map(|s| s.start),
        toml_edit::Item::ArrayOfTables(a) => a.span().map(|s| s.start),
        toml_edit::Item::None => None,
    }
}

enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

fn split_path(path: &str) -> Vec<Seg<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Seg::Key(key));
        }
        for idx in rest.split('[').filter(|s| !s.is_empty()) {
            if let Ok(i) = idx.trim_end_matches(']').parse() {
                out.push(Seg::Index(i));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_nested_keys_and_array_items() {
        let src = TomlSource::new(
            Path::new("m.toml"),
            "name = \"x\"\n\n[classify]\nlabels = [\"a\", \"b\", \"\"]\n".to_string(),
        );
        assert_eq!(src.locate("name"), Some((1, 8)));
        assert_eq!(src.locate("classify.labels[2]"), Some((4, 21)));
        // missing leaf: its closest parent
        assert_eq!(src.locate("classify.output"), Some((3, 1)));
        let d = src.diag("classify.labels[2]", "must not be empty");
        assert_eq!(
            d.to_string(),
            "m.toml:4:21: classify.labels[2]: must not be empty"
        );
    }
}
