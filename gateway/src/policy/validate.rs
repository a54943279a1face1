//! Raw policy files → one validated `Policy`, collecting every problem.

use std::path::{Path, PathBuf};

use edgewise_diag::Diagnostic;
use marked_yaml::Spanned;

use super::raw::{RawExternal, RawPolicyFile, RawRoute, pos};
use crate::routing::{
    Adequacy, Cascade, DataClass, ExternalCondition, ExternalRule, Learned, Policy, Route, Signal,
    Spill, Task,
};

struct Ctx<'a> {
    file: &'a Path,
    problems: &'a mut Vec<Diagnostic>,
}

impl Ctx<'_> {
    fn at<T>(&mut self, v: &Spanned<T>, path: String, message: impl Into<String>) {
        self.problems.push(Diagnostic {
            file: self.file.to_path_buf(),
            position: pos(v),
            path,
            message: message.into(),
        });
    }
}

pub fn validate(files: &[(PathBuf, RawPolicyFile)], problems: &mut Vec<Diagnostic>) -> Policy {
    let mut policy = Policy {
        default_data_class: super::DEFAULT_DATA_CLASS,
        routes: Vec::new(),
        floors: super::floors::floors(files, problems),
    };
    let mut default_set: Option<PathBuf> = None;
    let mut names: Vec<(String, PathBuf)> = Vec::new();
    for (file, raw) in files {
        let mut cx = Ctx { file, problems };
        if let Some(d) = &raw.default_data_class {
            match DataClass::parse(d) {
                Some(c) => match &default_set {
                    Some(first) => cx.at(
                        d,
                        "default_data_class".into(),
                        format!("already set in {}", first.display()),
                    ),
                    None => {
                        policy.default_data_class = c;
                        default_set = Some(file.clone());
                    }
                },
                None => cx.at(d, "default_data_class".into(), bad_class(d)),
            }
        }
        for (i, r) in raw.routes.iter().enumerate() {
            let path = format!("routes[{i}]");
            if let Some((_, first)) = names.iter().find(|(n, _)| n == r.name.as_str()) {
                let first = first.display().to_string();
                cx.at(
                    &r.name,
                    format!("{path}.name"),
                    format!("route `{}` is already defined in {first}", r.name.as_str()),
                );
            } else {
                names.push((r.name.to_string(), file.clone()));
            }
            if let Some(route) = route(&mut cx, &path, r) {
                policy.routes.push(route);
            }
        }
    }
    policy
}

fn bad_class(v: &str) -> String {
    format!("`{v}` is not a data class (public, internal, confidential, restricted)")
}

fn route(cx: &mut Ctx<'_>, path: &str, r: &RawRoute) -> Option<Route> {
    let before = cx.problems.len();
    if r.name.is_empty()
        || !r
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        cx.at(
            &r.name,
            format!("{path}.name"),
            "must be non-empty and use only letters, digits, `-`, `_` and `.`",
        );
    }
    let m = r.matcher.as_ref();
    let tenants: Vec<String> = m
        .map(|m| m.tenants.iter().map(|t| t.to_string()).collect())
        .unwrap_or_default();
    let mut tasks = Vec::new();
    for (i, t) in m
        .map(|m| m.tasks.as_slice())
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        match Task::parse(t) {
            Some(t) => tasks.push(t),
            None => cx.at(
                t,
                format!("{path}.match.tasks[{i}]"),
                format!("`{}` is not a task (generate, embed, classify)", t.as_str()),
            ),
        }
    }
    let data_classes = classes(
        cx,
        &format!("{path}.match.data_classes"),
        m.map(|m| m.data_classes.as_slice()).unwrap_or_default(),
    );
    let min_quality = match &r.min_quality {
        Some(q) if !(0.0..=1.0).contains(&**q) => {
            cx.at(
                q,
                format!("{path}.min_quality"),
                format!("{} must be in 0..=1", **q),
            );
            0.0
        }
        Some(q) => **q as f32,
        None => 0.0,
    };
    if let Some(p) = &r.prefer
        && p.as_str() != "smallest"
    {
        cx.at(
            p,
            format!("{path}.prefer"),
            format!("`{}` is not supported (smallest)", p.as_str()),
        );
    }
    let spill = match r.spill.as_ref().map(|s| (s, s.as_str())) {
        None | Some((_, "larger")) => Spill::Larger,
        Some((_, "wait")) => Spill::Wait,
        Some((_, "external")) => Spill::External,
        Some((s, other)) => {
            cx.at(
                s,
                format!("{path}.spill"),
                format!("`{other}` is not one of larger, wait, external"),
            );
            Spill::Larger
        }
    };
    if let Some(t) = &r.latency_target_ms
        && **t == 0
    {
        cx.at(t, format!("{path}.latency_target_ms"), "must be at least 1");
    }
    let external = match &r.external {
        Some(e) if *e.allowed => external(cx, &format!("{path}.external"), e),
        _ => None,
    };
    if spill == Spill::External && external.is_none() {
        let at = Spanned::new(*r.spill.as_ref().map_or(r.name.span(), |s| s.span()), ());
        cx.at(
            &at,
            format!("{path}.spill"),
            "`external` needs an allowed external block",
        );
    }
    // embeddings from two vector spaces (or scores over two label sets) are not
    // interchangeable: a route that lists the task names the one it serves
    let space = compat(cx, &format!("{path}.space"), r.space.as_ref());
    let label_set = compat(cx, &format!("{path}.label_set"), r.label_set.as_ref());
    for (task, pin, key) in [
        (Task::Embed, &space, "space"),
        (Task::Classify, &label_set, "label_set"),
    ] {
        if tasks.contains(&task) && pin.is_none() {
            let what = if task == Task::Embed {
                "vector space"
            } else {
                "label set"
            };
            cx.at(
                &r.name,
                format!("{path}.{key}"),
                format!(
                    "the route serves {task} but pins no {what}: models in different ones are not interchangeable, so name the one it serves (`{key}: NAME`)"
                ),
            );
        }
    }
    let adequacy = adequacy(cx, &format!("{path}.adequacy"), r, &tasks);
    let inference = match super::floors::mode(r.inference.as_ref()) {
        Ok(m) => m,
        Err(message) => {
            if let Some(v) = &r.inference {
                cx.at(v, format!("{path}.inference"), message);
            }
            crate::routing::InferenceMode::Enforce
        }
    };
    (cx.problems.len() == before).then(|| Route {
        name: r.name.to_string(),
        tenants,
        tasks,
        data_classes,
        min_quality,
        latency_target_ms: r.latency_target_ms.as_ref().map(|t| **t),
        spill,
        external,
        space,
        label_set,
        adequacy,
        inference,
    })
}

/// `adequacy:`: `static` (the default), or a `cascade` with its signal, threshold and the
/// short answers it applies to.
fn adequacy(cx: &mut Ctx<'_>, path: &str, r: &RawRoute, tasks: &[Task]) -> Adequacy {
    let Some(a) = &r.adequacy else {
        return Adequacy::Static;
    };
    match a.estimator.as_str() {
        "static" => {
            for (v, key) in [
                (
                    a.signal.as_ref().map(|v| Spanned::new(*v.span(), ())),
                    "signal",
                ),
                (
                    a.threshold.as_ref().map(|v| Spanned::new(*v.span(), ())),
                    "threshold",
                ),
                (
                    a.max_tokens.as_ref().map(|v| Spanned::new(*v.span(), ())),
                    "max_tokens",
                ),
                (
                    a.thresholds.as_ref().map(|v| Spanned::new(*v.span(), ())),
                    "thresholds",
                ),
                (a.skip.first().map(|v| Spanned::new(*v.span(), ())), "skip"),
            ] {
                if let Some(v) = v {
                    cx.at(&v, format!("{path}.{key}"), "only a `cascade` takes this");
                }
            }
            Adequacy::Static
        }
        "cascade" => {
            if !tasks.is_empty() && tasks != [Task::Generate] {
                cx.at(
                    &a.estimator,
                    format!("{path}.estimator"),
                    "a cascade judges generated answers: the route must serve only generate (`match: {tasks: [generate]}`)",
                );
            }
            let signal = match &a.signal {
                None => Signal::P10Logprob,
                Some(s) => Signal::parse(s).unwrap_or_else(|| {
                    cx.at(
                        s,
                        format!("{path}.signal"),
                        format!(
                            "`{}` is not a signal (mean_logprob, min_logprob, p10_logprob)",
                            s.as_str()
                        ),
                    );
                    Signal::P10Logprob
                }),
            };
            let threshold = match &a.threshold {
                None => {
                    cx.at(
                        &a.estimator,
                        format!("{path}.threshold"),
                        "a cascade needs a threshold (a log-probability, at most 0); `edgewise eval calibrate` writes one",
                    );
                    0.0
                }
                Some(t) if !(t.is_finite() && **t <= 0.0) => {
                    cx.at(
                        t,
                        format!("{path}.threshold"),
                        format!("{} is not a log-probability (at most 0)", **t),
                    );
                    0.0
                }
                Some(t) => **t as f32,
            };
            let max_tokens = match &a.max_tokens {
                Some(m) if **m == 0 || **m > 4096 => {
                    cx.at(m, format!("{path}.max_tokens"), "must be in 1..=4096");
                    0
                }
                Some(m) => **m,
                None => 64,
            };
            let (per_model, skip) = rungs(cx, path, a);
            Adequacy::Cascade(Cascade {
                signal,
                threshold,
                max_tokens,
                per_model,
                skip,
                calibrated: a.calibrated.as_ref().map(|c| c.to_string()),
            })
        }
        "learned" => learned(cx, path, a, tasks).map_or(Adequacy::Static, Adequacy::Learned),
        other => {
            cx.at(
                &a.estimator,
                format!("{path}.estimator"),
                format!("`{other}` is not an estimator (static, cascade, learned)"),
            );
            Adequacy::Static
        }
    }
}

/// A cascade's `thresholds` (per model, each a log-probability) and `skip` (models a judged
/// request never starts on); a model in both is refused.
fn rungs(
    cx: &mut Ctx<'_>,
    path: &str,
    a: &super::raw::RawAdequacy,
) -> (Vec<(String, f32)>, Vec<String>) {
    let mut per_model = Vec::new();
    // in file order, so problems are reported in it
    let mut listed: Vec<_> = a.thresholds.iter().flat_map(|t| t.iter()).collect();
    listed.sort_by_key(|(m, _)| super::raw::pos(m));
    for (m, t) in listed {
        if !(t.is_finite() && **t <= 0.0) {
            cx.at(
                t,
                format!("{path}.thresholds.{}", m.as_str()),
                format!("{} is not a log-probability (at most 0)", **t),
            );
            continue;
        }
        per_model.push((m.to_string(), **t as f32));
    }
    let mut skip: Vec<String> = Vec::new();
    for (i, m) in a.skip.iter().enumerate() {
        if per_model.iter().any(|(p, _)| p == m.as_str()) {
            cx.at(
                m,
                format!("{path}.skip[{i}]"),
                format!(
                    "`{}` also has a threshold: a skipped model never answers, so give it one or the other",
                    m.as_str()
                ),
            );
        } else if skip.iter().any(|s| s == m.as_str()) {
            cx.at(
                m,
                format!("{path}.skip[{i}]"),
                format!("`{}` is listed twice", m.as_str()),
            );
        } else {
            skip.push(m.to_string());
        }
    }
    (per_model, skip)
}

/// `estimator: learned`: the heads file (its hash pinned, its models those listed), the
/// request features it was trained on, and a probability threshold.
fn learned(
    cx: &mut Ctx<'_>,
    path: &str,
    a: &super::raw::RawAdequacy,
    tasks: &[Task],
) -> Option<Learned> {
    if tasks != [Task::Generate] {
        cx.at(
            &a.estimator,
            format!("{path}.estimator"),
            "the learned estimator judges generations: the route must serve only generate (`match: {tasks: [generate]}`)",
        );
    }
    let need = |cx: &mut Ctx<'_>, key: &str, what: &str| {
        cx.at(
            &a.estimator,
            format!("{path}.{key}"),
            format!("a learned estimator needs `{key}` ({what}); `edgewise eval train` and `calibrate` write it"),
        );
    };
    let base = cx.file.parent().unwrap_or(Path::new(".")).to_path_buf();
    let threshold = match &a.threshold {
        Some(t) if (0.0..=1.0).contains(&**t) => Some(**t as f32),
        Some(t) => {
            cx.at(
                t,
                format!("{path}.threshold"),
                format!("{} is not a probability (0..=1)", **t),
            );
            None
        }
        None => {
            need(cx, "threshold", "a probability");
            None
        }
    };
    let (Some(heads_path), Some(sha)) = (&a.heads, &a.sha256) else {
        if a.heads.is_none() {
            need(cx, "heads", "the trained file");
        }
        if a.sha256.is_none() {
            need(cx, "sha256", "the trained file's hash");
        }
        return None;
    };
    let heads = match crate::adequacy::Heads::load(&base.join(heads_path.as_str()), Some(sha)) {
        Ok((h, _)) => h,
        Err(e) => {
            // a changed file is the pinned hash's fault; anything else, the path's
            let (v, key) = match e {
                crate::adequacy::AdequacyError::HashMismatch { .. } => {
                    (Spanned::new(*sha.span(), ()), "sha256")
                }
                _ => (Spanned::new(*heads_path.span(), ()), "heads"),
            };
            cx.at(&v, format!("{path}.{key}"), e.to_string());
            return None;
        }
    };
    let listed: Vec<&str> = a.models.iter().map(|m| m.as_str()).collect();
    if listed != heads.models() {
        let at = a
            .models
            .first()
            .map_or(Spanned::new(*a.estimator.span(), ()), |m| {
                Spanned::new(*m.span(), ())
            });
        cx.at(
            &at,
            format!("{path}.models"),
            format!(
                "the route lists models {listed:?}, and {} has heads for {:?}",
                heads_path.as_str(),
                heads.models()
            ),
        );
        return None;
    }
    let Some(fdir) = &a.features else {
        need(
            cx,
            "features",
            "the request-feature folder, models/wordllama-l2-supercat-256",
        );
        return None;
    };
    let features = match crate::adequacy::Features::load(&base.join(fdir.as_str())) {
        Ok(f) => f,
        Err(e) => {
            cx.at(fdir, format!("{path}.features"), e.to_string());
            return None;
        }
    };
    if features.embedding_sha256 != heads.embedding_sha256 || features.len() != heads.features {
        cx.at(
            fdir,
            format!("{path}.features"),
            format!(
                "these features (embedding sha256 {}) are not the ones {} was trained on ({})",
                features.embedding_sha256,
                heads_path.as_str(),
                heads.embedding_sha256
            ),
        );
        return None;
    }
    Some(Learned {
        estimator: std::sync::Arc::new(crate::adequacy::HeadsEstimator {
            heads,
            features: std::sync::Arc::new(features),
        }),
        threshold: threshold?,
        calibrated: a.calibrated.as_ref().map(|c| c.to_string()),
    })
}

/// A vector space or label set name.
fn compat(cx: &mut Ctx<'_>, path: &str, raw: Option<&Spanned<String>>) -> Option<String> {
    let v = raw?;
    let ok = !v.is_empty()
        && v.len() <= 128
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !ok {
        cx.at(
            v,
            path.to_string(),
            format!(
                "`{}` must be 1 to 128 letters, digits, `-`, `_` or `.`",
                v.as_str()
            ),
        );
        return None;
    }
    Some(v.to_string())
}

fn classes(cx: &mut Ctx<'_>, path: &str, raw: &[Spanned<String>]) -> Vec<DataClass> {
    let mut out = Vec::new();
    for (i, c) in raw.iter().enumerate() {
        match DataClass::parse(c) {
            Some(c) => out.push(c),
            None => cx.at(c, format!("{path}[{i}]"), bad_class(c)),
        }
    }
    out
}

fn external(cx: &mut Ctx<'_>, path: &str, e: &Spanned<RawExternal>) -> Option<ExternalRule> {
    let missing = |cx: &mut Ctx<'_>, key: &str| {
        cx.at(e, format!("{path}.{key}"), "is required when allowed: true")
    };
    let provider = e.provider.as_ref().map(|p| p.to_string());
    let model = e.model.as_ref().map(|m| m.to_string());
    if provider.is_none() {
        missing(cx, "provider");
    }
    if model.is_none() {
        missing(cx, "model");
    }
    // sensitive classes leave the box only when listed here by name: there is no wildcard
    let data_classes = classes(cx, &format!("{path}.data_classes"), &e.data_classes);
    if e.data_classes.is_empty() {
        cx.at(
            e,
            format!("{path}.data_classes"),
            "must list the data classes that may go external",
        );
    }
    let mut conditions = Vec::new();
    for (i, w) in e.when.iter().enumerate() {
        match w.as_str() {
            "no_adequate_local" => conditions.push(ExternalCondition::NoAdequateLocal),
            "no_local_capacity" => conditions.push(ExternalCondition::NoLocalCapacity),
            other => cx.at(
                w,
                format!("{path}.when[{i}]"),
                format!("`{other}` is not one of no_adequate_local, no_local_capacity"),
            ),
        }
    }
    if e.when.is_empty() {
        cx.at(
            e,
            format!("{path}.when"),
            "must list when to go external (no_adequate_local, no_local_capacity)",
        );
    }
    let budget = match &e.daily_budget_usd {
        Some(b) if !(**b >= 0.0 && b.is_finite()) => {
            cx.at(
                b,
                format!("{path}.daily_budget_usd"),
                format!("{} must be a non-negative amount", **b),
            );
            0.0
        }
        Some(b) => **b,
        None => {
            missing(cx, "daily_budget_usd");
            0.0
        }
    };
    let space = compat(cx, &format!("{path}.space"), e.space.as_ref());
    Some(ExternalRule {
        provider: provider?,
        model: model?,
        data_classes,
        conditions,
        daily_budget_usd: budget,
        space,
    })
}

/// For each data class, the routes through which it can reach an external provider.
pub fn confidentiality_report(policy: &Policy) -> Vec<(DataClass, Vec<String>)> {
    DataClass::ALL
        .into_iter()
        .map(|class| {
            let paths = policy
                .routes
                .iter()
                .filter(|r| r.data_classes.is_empty() || r.data_classes.contains(&class))
                .filter_map(|r| {
                    let e = r.external.as_ref()?;
                    e.data_classes
                        .contains(&class)
                        .then(|| format!("route `{}` → {}/{}", r.name, e.provider, e.model))
                })
                .collect();
            (class, paths)
        })
        .collect()
}
