//! A TOML config file layered with environment overrides through the `config` crate:
//! `EDGEWISE_SECTION__KEY=value` overrides `[section] key`. Problems point at the file's line
//! and column, or name the environment variable a value came from.

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::{Diagnostic, Diagnostics, TomlSource};

/// Environment variables with this prefix override config keys; `__` separates sections.
pub const ENV_PREFIX: &str = "EDGEWISE";

/// The environment variable that overrides `path` (`report.interval_ms` →
/// `EDGEWISE_REPORT__INTERVAL_MS`).
pub fn env_name(path: &str) -> String {
    format!("{ENV_PREFIX}_{}", path.replace('.', "__").to_uppercase())
}

/// `EDGEWISE_SECTION__KEY`: only names with a section separator are config overrides, so
/// unrelated `EDGEWISE_*` variables never break a config.
fn is_override(name: &str) -> bool {
    name.strip_prefix("EDGEWISE_")
        .is_some_and(|rest| rest.contains("__"))
}

/// A deserialised raw config with where it came from.
pub struct Layered<T> {
    pub raw: T,
    pub source: TomlSource,
    /// The override variables that were set.
    pub env: Vec<String>,
}

impl<T: DeserializeOwned> Layered<T> {
    /// Reads `path`, applies overrides from `env`, deserialises. `list_keys` are keys whose
    /// override is a comma-separated list.
    pub fn load(
        path: &Path,
        env: &[(String, String)],
        list_keys: &[&str],
    ) -> Result<Self, Diagnostics> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Diagnostics(vec![Diagnostic {
                file: path.to_path_buf(),
                position: None,
                path: String::new(),
                message: format!("cannot read: {e}"),
            }])
        })?;
        let source = TomlSource::new(path, text);
        // 1. The file alone, with exact spans for syntax errors and unknown or mistyped keys.
        if let Err(e) = toml::from_str::<T>(source.text()) {
            return Err(Diagnostics(vec![source.from_toml_error(&e)]));
        }
        // 2. File + environment; an error now comes from the environment.
        let overrides: config::Map<String, String> = env
            .iter()
            .filter(|(k, _)| is_override(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let names: Vec<String> = overrides.keys().cloned().collect();
        let mut environment = config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("_")
            .separator("__")
            .try_parsing(true)
            .list_separator(",");
        for key in list_keys {
            environment = environment.with_list_parse_key(key);
        }
        let raw: T = config::Config::builder()
            .add_source(config::File::from_str(
                source.text(),
                config::FileFormat::Toml,
            ))
            .add_source(environment.source(Some(overrides)))
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| {
                Diagnostics(vec![Diagnostic {
                    file: path.to_path_buf(),
                    position: None,
                    path: format!("environment ({})", names.join(", ")),
                    message: e.to_string(),
                }])
            })?;
        Ok(Self {
            raw,
            source,
            env: names,
        })
    }
}

impl<T> Layered<T> {
    /// The raw value, and the rest (for placing problems while the value is taken apart).
    pub fn split(self) -> (T, Layered<()>) {
        (
            self.raw,
            Layered {
                raw: (),
                source: self.source,
                env: self.env,
            },
        )
    }

    /// A problem with the value at `path`: placed in the file, or named by its override variable.
    pub fn problem(&self, path: &str, message: impl Into<String>) -> Diagnostic {
        let var = env_name(path);
        if self.env.iter().any(|e| e == &var) {
            Diagnostic {
                file: self.source.file().to_path_buf(),
                position: None,
                path: format!("{path} (from {var})"),
                message: message.into(),
            }
        } else {
            self.source.diag(path, message)
        }
    }

    /// The folder relative paths in the file are taken from.
    pub fn base(&self) -> &Path {
        self.source.file().parent().unwrap_or(Path::new("."))
    }
}
