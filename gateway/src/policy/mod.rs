//! Routing policy files (`policies/*.yaml`): raw YAML with spans → a validated `Policy`.
//!
//! Every problem in every file is reported at once, as `file:line:column: path: message`.
//! Files are read in the order given (the CLI and the gateway sort a directory by name);
//! their routes are concatenated, and the first route that matches a request serves it.

mod floors;
mod raw;
mod validate;

use std::path::{Path, PathBuf};

use edgewise_diag::{Diagnostic, Diagnostics};

use crate::routing::{DataClass, Policy};

pub use floors::leak_report;
pub use validate::confidentiality_report;

/// Reads and validates policy files. A directory stands for its `*.yaml` / `*.yml` files,
/// sorted by name.
pub fn load(paths: &[PathBuf]) -> Result<Policy, Diagnostics> {
    let mut files = Vec::new();
    let mut problems = Vec::new();
    for p in expand(paths, &mut problems) {
        match std::fs::read_to_string(&p) {
            Ok(text) => files.push((p, text)),
            Err(e) => problems.push(Diagnostic {
                file: p,
                position: None,
                path: String::new(),
                message: format!("cannot read: {e}"),
            }),
        }
    }
    let policy = parse(&files);
    match policy {
        Ok(p) if problems.is_empty() => Ok(p),
        Ok(_) => Err(Diagnostics(problems)),
        Err(Diagnostics(mut more)) => {
            problems.append(&mut more);
            Err(Diagnostics(problems))
        }
    }
}

/// Validates policy text already read (file name, contents), in order.
pub fn parse(files: &[(PathBuf, String)]) -> Result<Policy, Diagnostics> {
    let mut problems = Vec::new();
    let mut parsed = Vec::new();
    for (path, text) in files {
        match raw::parse(path, text) {
            Ok(r) => parsed.push((path.clone(), r)),
            Err(d) => problems.push(d),
        }
    }
    let policy = validate::validate(&parsed, &mut problems);
    if problems.is_empty() {
        if parsed.is_empty() {
            return Err(Diagnostics(vec![Diagnostic {
                file: PathBuf::from("policies"),
                position: None,
                path: String::new(),
                message: "no policy files".into(),
            }]));
        }
        Ok(policy)
    } else {
        Err(Diagnostics(problems))
    }
}

/// The policy files that `paths` name: files as given, directories as their *.yaml / *.yml
/// files sorted by name (unreadable directories are skipped).
pub fn files(paths: &[PathBuf]) -> Vec<PathBuf> {
    expand(paths, &mut Vec::new())
}

fn expand(paths: &[PathBuf], problems: &mut Vec<Diagnostic>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            match std::fs::read_dir(p) {
                Ok(entries) => {
                    let mut found: Vec<PathBuf> = entries
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|f| f.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                        .collect();
                    found.sort();
                    out.extend(found);
                }
                Err(e) => problems.push(diag_io(p, &e)),
            }
        } else {
            out.push(p.clone());
        }
    }
    out
}

fn diag_io(p: &Path, e: &std::io::Error) -> Diagnostic {
    Diagnostic {
        file: p.to_path_buf(),
        position: None,
        path: String::new(),
        message: format!("cannot read: {e}"),
    }
}

/// The data class a request gets when it names none, when no file sets one.
pub const DEFAULT_DATA_CLASS: DataClass = DataClass::Internal;

#[cfg(test)]
mod tests;

/// Routes whose external block names a provider the gateway does not configure: they can
/// never go external (routing says so per request; this says it once, up front).
pub fn unconfigured_providers(p: &Policy, configured: &[&str]) -> Vec<String> {
    p.routes
        .iter()
        .filter_map(|r| {
            let e = r.external.as_ref()?;
            (!configured.contains(&e.provider.as_str())).then(|| {
                format!(
                    "route `{}` names provider `{}`, which the gateway config does not define: the route never goes external",
                    r.name, e.provider
                )
            })
        })
        .collect()
}
