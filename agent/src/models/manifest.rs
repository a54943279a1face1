//! `model.toml`: what a model folder holds and how to run it. Raw shape, then validated.

use std::fmt;
use std::path::Path;

use serde::Deserialize;

use edgewise_diag::{Diagnostics, TomlSource};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: String,
    task: String,
    parameters: u64,
    quantization: String,
    quality: f64,
    context_length: u32,
    description: Option<String>,
    generate: Option<RawGenerate>,
    embed: Option<RawEmbed>,
    classify: Option<RawClassify>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGenerate {
    /// The graph's input/output layout (the engine refuses one it cannot drive).
    interface: Option<String>,
    eos_token_ids: Vec<u32>,
    #[serde(default)]
    add_bos: bool,
    bos_token_id: Option<u32>,
    default_max_tokens: Option<u32>,
    chat_template: Option<RawChatTemplate>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChatTemplate {
    message: String,
    generation_prompt: String,
    default_system: Option<String>,
    tools: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEmbed {
    output: String,
    pooling: String,
    #[serde(default)]
    normalize: bool,
    dimensions: Option<u32>,
    #[serde(default)]
    truncate: bool,
    /// The vector space the embeddings are in (default: the model's own name).
    space: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClassify {
    output: String,
    labels: Vec<String>,
    #[serde(default)]
    truncate: bool,
    /// The label set the scores are over (default: the model's own name).
    label_set: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    Generate,
    Embed,
    Classify,
}

impl Task {
    pub fn as_str(self) -> &'static str {
        match self {
            Task::Generate => "generate",
            Task::Embed => "embed",
            Task::Classify => "classify",
        }
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an encoder's output becomes one vector per text (the engine's).
pub use crate::engine::encoder::Pooling;

#[derive(Debug, Clone)]
pub struct ChatTemplate {
    /// One rendered turn; `{role}` and `{content}` are substituted.
    pub message: String,
    /// Appended after the last turn to cue the assistant.
    pub generation_prompt: String,
    /// Used when the conversation has no system turn.
    pub default_system: Option<String>,
    /// The tool-call format the model was trained on (`hermes`), if any.
    pub tools: Option<String>,
}

#[derive(Debug, Clone)]
pub struct GenerateSpec {
    pub interface: String,
    pub eos_token_ids: Vec<u32>,
    pub add_bos: bool,
    pub bos_token_id: Option<u32>,
    pub default_max_tokens: u32,
    pub chat_template: Option<ChatTemplate>,
}

#[derive(Debug, Clone)]
pub struct EncodeSpec {
    pub output: String,
    pub pooling: Pooling,
    pub normalize: bool,
    pub dimensions: Option<u32>,
    /// Truncate inputs longer than the context instead of refusing them.
    pub truncate: bool,
    /// The vector space: models in one space (an int8 and an fp32 export of the same
    /// weights, say) give comparable vectors; models in different spaces never do.
    pub space: String,
}

#[derive(Debug, Clone)]
pub struct ClassifySpec {
    pub output: String,
    pub labels: Vec<String>,
    pub truncate: bool,
    /// The label set: classifiers are interchangeable only within one.
    pub label_set: String,
}

#[derive(Debug, Clone)]
pub enum TaskSpec {
    Generate(GenerateSpec),
    Embed(EncodeSpec),
    Classify(ClassifySpec),
}

/// A validated manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub name: String,
    pub parameters: u64,
    pub quantization: String,
    pub quality: f32,
    pub context_length: u32,
    pub description: String,
    pub spec: TaskSpec,
}

impl Manifest {
    /// Embed: (vector space, dimensions); classify: (label set, number of labels).
    pub fn space(&self) -> Option<(&str, u32)> {
        match &self.spec {
            TaskSpec::Embed(e) => Some((&e.space, e.dimensions.unwrap_or(0))),
            TaskSpec::Classify(c) => Some((&c.label_set, c.labels.len() as u32)),
            TaskSpec::Generate(_) => None,
        }
    }

    pub fn task(&self) -> Task {
        match self.spec {
            TaskSpec::Generate(_) => Task::Generate,
            TaskSpec::Embed(_) => Task::Embed,
            TaskSpec::Classify(_) => Task::Classify,
        }
    }

    pub fn load(path: &Path) -> Result<Self, Diagnostics> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Diagnostics(vec![edgewise_diag::Diagnostic {
                file: path.to_path_buf(),
                position: None,
                path: String::new(),
                message: format!("cannot read: {e}"),
            }])
        })?;
        Self::parse(path, text)
    }

    pub fn parse(path: &Path, text: String) -> Result<Self, Diagnostics> {
        let src = TomlSource::new(path, text);
        let raw: RawManifest =
            toml::from_str(src.text()).map_err(|e| Diagnostics(vec![src.from_toml_error(&e)]))?;
        validate(raw, &src)
    }
}

const QUANTIZATIONS: &[&str] = &["fp32", "fp16", "bf16", "int8", "q8", "q4", "q4f16"];

/// A vector space or label set name (`key`), defaulting to the model's own name: a model
/// that names none is interchangeable with no other.
fn compat_name(
    p: &mut Vec<edgewise_diag::Diagnostic>,
    src: &TomlSource,
    key: &str,
    given: Option<String>,
    model: &str,
) -> String {
    match given {
        None => model.to_string(),
        Some(n)
            if !n.is_empty()
                && n.len() <= 128
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) =>
        {
            n
        }
        Some(n) => {
            p.push(src.diag(
                key,
                format!("`{n}` must be 1 to 128 letters, digits, `-`, `_` or `.`"),
            ));
            model.to_string()
        }
    }
}

fn validate(raw: RawManifest, src: &TomlSource) -> Result<Manifest, Diagnostics> {
    let mut p = Vec::new();
    if raw.name.is_empty()
        || !raw
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        p.push(src.diag(
            "name",
            format!(
                "`{}` must be non-empty and use only letters, digits, `-`, `_` and `.`",
                raw.name
            ),
        ));
    }
    if !QUANTIZATIONS.contains(&raw.quantization.as_str()) {
        p.push(src.diag(
            "quantization",
            format!(
                "`{}` is not one of {}",
                raw.quantization,
                QUANTIZATIONS.join(", ")
            ),
        ));
    }
    if !(0.0..=1.0).contains(&raw.quality) || raw.quality.is_nan() {
        p.push(src.diag("quality", format!("{} must be in 0..=1", raw.quality)));
    }
    if raw.context_length == 0 {
        p.push(src.diag("context_length", "must be at least 1"));
    }
    if raw.parameters == 0 {
        p.push(src.diag("parameters", "must be at least 1"));
    }
    let sections = [
        ("generate", raw.generate.is_some()),
        ("embed", raw.embed.is_some()),
        ("classify", raw.classify.is_some()),
    ];
    for (section, present) in sections {
        if present && section != raw.task {
            p.push(src.diag(
                section,
                format!(
                    "section [{section}] does not belong to a `{}` model",
                    raw.task
                ),
            ));
        }
    }
    let spec = match raw.task.as_str() {
        "generate" => match raw.generate {
            None => {
                p.push(src.diag("task", "a `generate` model needs a [generate] section"));
                None
            }
            Some(g) => {
                if g.eos_token_ids.is_empty() {
                    p.push(src.diag("generate.eos_token_ids", "must list at least one token id"));
                }
                if g.add_bos && g.bos_token_id.is_none() {
                    p.push(src.diag("generate.bos_token_id", "is required when add_bos = true"));
                }
                let max = g.default_max_tokens.unwrap_or(raw.context_length.min(256));
                if max == 0 || max > raw.context_length {
                    p.push(src.diag(
                        "generate.default_max_tokens",
                        format!("{max} must be in 1..={}", raw.context_length),
                    ));
                }
                let chat = g.chat_template.map(|t| {
                    for key in ["{role}", "{content}"] {
                        if !t.message.contains(key) {
                            p.push(src.diag(
                                "generate.chat_template.message",
                                format!("must contain `{key}`"),
                            ));
                        }
                    }
                    if let Some(f) = &t.tools
                        && f != super::tools::HERMES
                    {
                        p.push(src.diag(
                            "generate.chat_template.tools",
                            format!("`{f}` is not a tool format this agent knows (`hermes`)"),
                        ));
                    }
                    ChatTemplate {
                        message: t.message,
                        generation_prompt: t.generation_prompt,
                        default_system: t.default_system,
                        tools: t.tools,
                    }
                });
                let interface = g.interface.unwrap_or_else(|| {
                    p.push(src.diag(
                        "generate",
                        "needs `interface` (the graph layout, e.g. \"fused-gqa\"); models prepared before it was recorded must be prepared again",
                    ));
                    String::new()
                });
                Some(TaskSpec::Generate(GenerateSpec {
                    interface,
                    eos_token_ids: g.eos_token_ids,
                    add_bos: g.add_bos,
                    bos_token_id: g.bos_token_id,
                    default_max_tokens: max,
                    chat_template: chat,
                }))
            }
        },
        "embed" => match raw.embed {
            None => {
                p.push(src.diag("task", "an `embed` model needs an [embed] section"));
                None
            }
            Some(e) => {
                let pooling = match e.pooling.as_str() {
                    "mean" => Pooling::Mean,
                    "cls" => Pooling::Cls,
                    "none" => Pooling::None,
                    other => {
                        p.push(src.diag(
                            "embed.pooling",
                            format!("`{other}` is not one of mean, cls, none"),
                        ));
                        Pooling::Mean
                    }
                };
                if e.output.is_empty() {
                    p.push(src.diag("embed.output", "must name the model output"));
                }
                let space = compat_name(&mut p, src, "embed.space", e.space, &raw.name);
                if space != raw.name && e.dimensions.is_none() {
                    p.push(src.diag(
                        "embed.space",
                        "a shared vector space needs `dimensions` too (models of one space must agree on it)",
                    ));
                }
                Some(TaskSpec::Embed(EncodeSpec {
                    output: e.output,
                    pooling,
                    normalize: e.normalize,
                    dimensions: e.dimensions,
                    truncate: e.truncate,
                    space,
                }))
            }
        },
        "classify" => match raw.classify {
            None => {
                p.push(src.diag("task", "a `classify` model needs a [classify] section"));
                None
            }
            Some(c) => {
                if c.labels.len() < 2 {
                    p.push(src.diag("classify.labels", "must list at least two labels"));
                }
                for (i, l) in c.labels.iter().enumerate() {
                    if l.trim().is_empty() {
                        p.push(src.diag(&format!("classify.labels[{i}]"), "must not be empty"));
                    } else if c.labels[..i].contains(l) {
                        p.push(src.diag(
                            &format!("classify.labels[{i}]"),
                            format!("`{l}` is listed twice"),
                        ));
                    }
                }
                let label_set =
                    compat_name(&mut p, src, "classify.label_set", c.label_set, &raw.name);
                Some(TaskSpec::Classify(ClassifySpec {
                    output: c.output,
                    labels: c.labels,
                    truncate: c.truncate,
                    label_set,
                }))
            }
        },
        other => {
            p.push(src.diag(
                "task",
                format!("`{other}` is not one of generate, embed, classify"),
            ));
            None
        }
    };
    match spec {
        Some(spec) if p.is_empty() => Ok(Manifest {
            name: raw.name,
            parameters: raw.parameters,
            quantization: raw.quantization,
            quality: raw.quality as f32,
            context_length: raw.context_length,
            description: raw.description.unwrap_or_default(),
            spec,
        }),
        _ => Err(Diagnostics(p)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Manifest, String> {
        Manifest::parse(Path::new("m/model.toml"), text.to_string()).map_err(|d| d.to_string())
    }

    #[test]
    fn valid_generate_manifest() -> Result<(), String> {
        let m = parse(
            "name = \"lm\"\ntask = \"generate\"\nparameters = 10\nquantization = \"int8\"\nquality = 0.5\n\
             context_length = 64\n[generate]\ninterface = \"fused-gqa\"\neos_token_ids = [2]\n[generate.chat_template]\n\
             message = \"<{role}>{content}\"\ngeneration_prompt = \"<assistant>\"\n",
        )?;
        assert_eq!(m.task(), Task::Generate);
        Ok(())
    }

    #[test]
    fn every_problem_is_reported_with_file_line_and_field() {
        let err = parse(
            "name = \"bad name\"\ntask = \"classify\"\nparameters = 10\nquantization = \"int3\"\nquality = 1.5\n\
             context_length = 64\n[classify]\noutput = \"logits\"\nlabels = [\"a\", \"a\"]\n",
        )
        .err();
        assert_eq!(
            err.as_deref(),
            Some(
                "m/model.toml:1:8: name: `bad name` must be non-empty and use only letters, digits, `-`, `_` and `.`\n\
                 m/model.toml:4:16: quantization: `int3` is not one of fp32, fp16, bf16, int8, q8, q4, q4f16\n\
                 m/model.toml:5:11: quality: 1.5 must be in 0..=1\n\
                 m/model.toml:9:16: classify.labels[1]: `a` is listed twice"
            )
        );
    }

    #[test]
    fn an_encoder_names_its_space_or_label_set_and_a_shared_space_its_dimensions() {
        let head = "name = \"e\"\ntask = \"embed\"\nparameters = 10\nquantization = \"int8\"\nquality = 0.5\ncontext_length = 64\n";
        let m = parse(&format!(
            "{head}[embed]\noutput = \"o\"\npooling = \"mean\"\ndimensions = 384\nspace = \"all-minilm-l6-v2\"\n"
        ))
        .unwrap();
        assert_eq!(m.space(), Some(("all-minilm-l6-v2", 384)));
        // none named: its own name, interchangeable with no other model
        let m = parse(&format!(
            "{head}[embed]\noutput = \"o\"\npooling = \"mean\"\n"
        ))
        .unwrap();
        assert_eq!(m.space(), Some(("e", 0)));
        let err = parse(&format!(
            "{head}[embed]\noutput = \"o\"\npooling = \"mean\"\nspace = \"s\"\n"
        ))
        .err()
        .unwrap_or_default();
        assert!(
            err.contains("embed.space: a shared vector space needs `dimensions` too"),
            "{err}"
        );
    }

    #[test]
    fn missing_and_unknown_fields_are_located() {
        let err = parse("name = \"x\"\ntask = \"embed\"\n")
            .err()
            .unwrap_or_default();
        assert!(
            err.starts_with("m/model.toml:1:1: missing field `parameters`"),
            "{err}"
        );
        let err = parse(
            "name = \"x\"\ntask = \"embed\"\nparameters = 1\nquantization = \"fp32\"\nquality = 0.1\ncontext_length = 8\n\
             [embed]\noutput = \"y\"\npooling = \"max\"\nnormalise = true\n",
        )
        .err()
        .unwrap_or_default();
        assert!(
            err.starts_with("m/model.toml:10:1: unknown field `normalise`"),
            "{err}"
        );
    }
}
