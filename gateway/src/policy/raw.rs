//! The raw shape of a policy file, as written, with the span of every value.

use std::collections::HashMap;
use std::path::Path;

use edgewise_diag::Diagnostic;
use marked_yaml::Spanned;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicyFile {
    pub default_data_class: Option<Spanned<String>>,
    /// Category or detector id → the class a request holding one is raised to.
    pub data_class_floors: Option<RawFloors>,
    /// Tenant → floors that apply to its requests (they may only raise).
    pub tenant_data_class_floors: Option<HashMap<Spanned<String>, RawFloors>>,
    #[serde(default)]
    pub routes: Vec<Spanned<RawRoute>>,
}

/// Category or detector id → data class.
pub type RawFloors = HashMap<Spanned<String>, Spanned<String>>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Spanned<String>,
    #[serde(default, rename = "match")]
    pub matcher: Option<RawMatch>,
    pub min_quality: Option<Spanned<f64>>,
    pub latency_target_ms: Option<Spanned<u32>>,
    pub prefer: Option<Spanned<String>>,
    pub spill: Option<Spanned<String>>,
    pub external: Option<Spanned<RawExternal>>,
    /// The vector space embeddings come from (required when the route lists `embed`).
    pub space: Option<Spanned<String>>,
    /// The label set classifications come from (required when the route lists `classify`).
    pub label_set: Option<Spanned<String>>,
    /// How a local model is judged adequate per request (default: `static`).
    pub adequacy: Option<Spanned<RawAdequacy>>,
    /// `enforce` (default), `report` or `off`: whether the text scan raises the class.
    pub inference: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdequacy {
    pub estimator: Spanned<String>,
    pub signal: Option<Spanned<String>>,
    pub threshold: Option<Spanned<f64>>,
    pub max_tokens: Option<Spanned<u32>>,
    /// `cascade`: a threshold per model (rung), over `threshold` for the models named.
    pub thresholds: Option<Spanned<HashMap<Spanned<String>, Spanned<f64>>>>,
    /// `cascade`: models a judged request never starts on (they rarely keep an answer).
    #[serde(default)]
    pub skip: Vec<Spanned<String>>,
    /// Provenance written by `edgewise eval calibrate` (set, hash, target).
    pub calibrated: Option<Spanned<String>>,
    /// `learned`: the heads file (relative to this policy file), its SHA-256, the models
    /// it has heads for, and the request-feature folder (relative to this policy file).
    pub heads: Option<Spanned<String>>,
    pub sha256: Option<Spanned<String>>,
    #[serde(default)]
    pub models: Vec<Spanned<String>>,
    pub features: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    #[serde(default)]
    pub tenants: Vec<Spanned<String>>,
    #[serde(default)]
    pub tasks: Vec<Spanned<String>>,
    #[serde(default)]
    pub data_classes: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExternal {
    pub allowed: Spanned<bool>,
    pub provider: Option<Spanned<String>>,
    pub model: Option<Spanned<String>>,
    #[serde(default)]
    pub data_classes: Vec<Spanned<String>>,
    #[serde(default)]
    pub when: Vec<Spanned<String>>,
    pub daily_budget_usd: Option<Spanned<f64>>,
    /// The vector space the provider's model is in (it serves embeddings only for that space).
    pub space: Option<Spanned<String>>,
}

/// Line and column (1-based) where a spanned value starts.
pub fn pos<T>(v: &Spanned<T>) -> Option<(usize, usize)> {
    v.span().start().map(|m| (m.line(), m.column()))
}

pub fn parse(path: &Path, text: &str) -> Result<RawPolicyFile, Diagnostic> {
    let diag = |position, path_in_file: String, message: String| Diagnostic {
        file: path.to_path_buf(),
        position,
        path: path_in_file,
        message,
    };
    if text.trim().is_empty() {
        return Ok(RawPolicyFile {
            default_data_class: None,
            data_class_floors: None,
            tenant_data_class_floors: None,
            routes: Vec::new(),
        });
    }
    let options = marked_yaml::LoaderOptions::default()
        .error_on_duplicate_keys(true)
        .prevent_coercion(true);
    let node = marked_yaml::parse_yaml_with_options(0, text, options).map_err(|e| {
        diag(
            load_error_position(&e),
            String::new(),
            load_error_message(&e),
        )
    })?;
    marked_yaml::from_node(&node).map_err(|e| {
        let path_in_file = e.path().map(clean_path).unwrap_or_default();
        match &*e {
            marked_yaml::Error::UnknownFieldError(field, expected, _) => {
                // point at the unknown key itself, named by the path of its mapping
                let parent = path_in_file
                    .rsplit_once('.')
                    .map_or("", |(p, _)| p)
                    .to_string();
                let position = key_position(&node, &path_in_file)
                    .or_else(|| e.start_mark().map(|m| (m.line(), m.column())));
                diag(
                    position,
                    parent,
                    format!(
                        "unknown field `{field}`, expected one of: {}",
                        expected.join(", ")
                    ),
                )
            }
            other => diag(
                e.start_mark().map(|m| (m.line(), m.column())),
                path_in_file,
                other.to_string(),
            ),
        }
    })
}

/// Where the key at the end of `path` (`routes[0].min_qualty`) is written.
fn key_position(root: &marked_yaml::Node, path: &str) -> Option<(usize, usize)> {
    let segs: Vec<&str> = path.split('.').collect();
    let (last, parents) = segs.split_last()?;
    let mut node = root;
    for seg in parents {
        let (key, index) = match seg.split_once('[') {
            Some((k, i)) => (k, Some(i.trim_end_matches(']').parse::<usize>().ok()?)),
            None => (*seg, None),
        };
        node = node.as_mapping()?.get_node(key)?;
        if let Some(i) = index {
            node = node.as_sequence()?.get_node(i)?;
        }
    }
    let (k, _) = node
        .as_mapping()?
        .iter()
        .find(|(k, _)| k.as_str() == *last)?;
    k.span().start().map(|m| (m.line(), m.column()))
}

/// `routes[0].external.when` rather than serde_path_to_error's `routes[0].external.when`
/// with `.inner`-style wrapper segments.
fn clean_path(p: &str) -> String {
    p.split('.')
        .filter(|s| !s.is_empty() && *s != "?")
        .collect::<Vec<_>>()
        .join(".")
}

fn load_error_position(e: &marked_yaml::LoadError) -> Option<(usize, usize)> {
    use marked_yaml::LoadError::*;
    let m = match e {
        TopLevelMustBeMapping(m)
        | TopLevelMustBeSequence(m)
        | UnexpectedAnchor(m)
        | MappingKeyMustBeScalar(m)
        | UnexpectedTag(m) => m,
        ScanError(m, _) => m,
        DuplicateKey(inner) => return inner.key.span().start().map(|m| (m.line(), m.column())),
    };
    Some((m.line(), m.column()))
}

fn load_error_message(e: &marked_yaml::LoadError) -> String {
    use marked_yaml::LoadError::*;
    match e {
        TopLevelMustBeMapping(_) => {
            "the file must be a mapping (default_data_class, routes)".into()
        }
        TopLevelMustBeSequence(_) => "unexpected top-level sequence".into(),
        UnexpectedAnchor(_) => "YAML anchors and aliases are not supported".into(),
        MappingKeyMustBeScalar(_) => "mapping keys must be plain strings".into(),
        UnexpectedTag(_) => "YAML tags are not supported".into(),
        ScanError(_, e) => format!("YAML syntax: {}", e.info()),
        DuplicateKey(inner) => format!("duplicate key `{}`", inner.key.as_str()),
    }
}
