//! `data_class_floors:` and `tenant_data_class_floors:` → `routing::Floors`, and a route's
//! `inference:` mode. A name is a category (`secret`, `payment_card`, `iban`, `national_id`,
//! `email`, `phone`) or a detector id (`edgewise policy check` lists them); a tenant's entry
//! may only raise the floor the policy sets for that name.

use std::collections::BTreeMap;
use std::path::PathBuf;

use edgewise_diag::Diagnostic;
use marked_yaml::Spanned;

use super::raw::{RawFloors, RawPolicyFile, pos};
use crate::routing::{Category, DataClass, Floors, InferenceMode};

fn problem(
    file: &std::path::Path,
    v: &Spanned<String>,
    path: String,
    message: String,
) -> Diagnostic {
    Diagnostic {
        file: file.to_path_buf(),
        position: pos(v),
        path,
        message,
    }
}

fn known(name: &str) -> Option<Category> {
    Category::parse(name).or_else(|| {
        crate::dataclass::detectors()
            .find(|(id, _)| *id == name)
            .map(|(_, c)| c)
    })
}

fn names() -> String {
    let mut all: Vec<&str> = Category::ALL.iter().map(|c| c.as_str()).collect();
    all.extend(crate::dataclass::detectors().map(|(id, _)| id));
    all.join(", ")
}

/// One file's floors, in file order (a map's order is not the file's).
fn entries(raw: &RawFloors) -> Vec<(&Spanned<String>, &Spanned<String>)> {
    let mut v: Vec<_> = raw.iter().collect();
    v.sort_by_key(|(k, _)| pos(*k));
    v
}

/// Validated entries of one table: (name, class, the name's span).
fn table<'a>(
    file: &std::path::Path,
    path: &str,
    raw: &'a RawFloors,
    problems: &mut Vec<Diagnostic>,
) -> Vec<(&'a Spanned<String>, Category, DataClass)> {
    let mut out = Vec::new();
    for (name, class) in entries(raw) {
        let at = format!("{path}.{}", name.as_str());
        let Some(category) = known(name) else {
            problems.push(problem(
                file,
                name,
                at,
                format!(
                    "`{}` is neither a category nor a detector id (one of: {})",
                    name.as_str(),
                    names()
                ),
            ));
            continue;
        };
        match DataClass::parse(class) {
            Some(c) => out.push((name, category, c)),
            None => problems.push(problem(
                file,
                class,
                at,
                format!(
                    "`{}` is not a data class (public, internal, confidential, restricted)",
                    class.as_str()
                ),
            )),
        }
    }
    out
}

/// The floors of every file: a name set in two places is a problem, and so is a tenant entry
/// below the policy's floor for that name.
pub fn floors(files: &[(PathBuf, RawPolicyFile)], problems: &mut Vec<Diagnostic>) -> Floors {
    let mut out = Floors::default();
    let mut set_in: BTreeMap<String, PathBuf> = BTreeMap::new();
    for (file, raw) in files {
        let Some(raw) = &raw.data_class_floors else {
            continue;
        };
        for (name, _, class) in table(file, "data_class_floors", raw, problems) {
            if let Some(first) = set_in.get(name.as_str()) {
                problems.push(problem(
                    file,
                    name,
                    format!("data_class_floors.{}", name.as_str()),
                    format!("already set in {}", first.display()),
                ));
                continue;
            }
            set_in.insert(name.to_string(), file.clone());
            out.floors.insert(name.to_string(), class);
        }
    }
    for (file, raw) in files {
        let Some(tenants) = &raw.tenant_data_class_floors else {
            continue;
        };
        let mut tenants: Vec<_> = tenants.iter().collect();
        tenants.sort_by_key(|(t, _)| pos(*t));
        for (tenant, raw) in tenants {
            let path = format!("tenant_data_class_floors.{}", tenant.as_str());
            for (name, category, class) in table(file, &path, raw, problems) {
                // what the policy sets for this name (its own entry, else its category's)
                let base = out.base(name.as_str(), category);
                if class < base {
                    problems.push(problem(
                        file,
                        name,
                        format!("{path}.{}", name.as_str()),
                        format!(
                            "{class} would lower the policy's floor for `{}` ({base}); a tenant's floors may only raise",
                            name.as_str()
                        ),
                    ));
                    continue;
                }
                out.tenants
                    .entry(tenant.to_string())
                    .or_default()
                    .insert(name.to_string(), class);
            }
        }
    }
    out
}

/// A route's `inference:` (default `enforce`).
pub fn mode(raw: Option<&Spanned<String>>) -> Result<InferenceMode, String> {
    match raw.map(|s| s.as_str()) {
        None | Some("enforce") => Ok(InferenceMode::Enforce),
        Some("report") => Ok(InferenceMode::Report),
        Some("off") => Ok(InferenceMode::Off),
        Some(other) => Err(format!(
            "`{other}` is not an inference mode (enforce, report, off)"
        )),
    }
}

/// For each category, the routes through which a request holding one can still reach an
/// external provider (the category's floor is among the route's external classes, or the
/// route does not enforce inference).
pub fn leak_report(policy: &crate::routing::Policy) -> Vec<(Category, Vec<String>)> {
    Category::ALL
        .into_iter()
        .map(|category| {
            let floor = policy.floors.base(category.as_str(), category);
            let routes = policy
                .routes
                .iter()
                .filter_map(|r| {
                    let e = r.external.as_ref()?;
                    let out = match r.inference {
                        InferenceMode::Enforce => e.data_classes.iter().any(|c| *c >= floor),
                        InferenceMode::Report | InferenceMode::Off => !e.data_classes.is_empty(),
                    };
                    out.then(|| {
                        format!(
                            "route `{}` → {}/{} (inference {})",
                            r.name,
                            e.provider,
                            e.model,
                            r.inference.as_str()
                        )
                    })
                })
                .collect();
            (category, routes)
        })
        .collect()
}
