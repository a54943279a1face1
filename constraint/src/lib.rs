//! Structured output. A request's [`pb::Constraint`] (a JSON schema, any JSON object, a
//! regular expression, a choice among strings, a Lark grammar) becomes a [`Guide`]: before
//! each sampling step it masks every token that could not continue a matching output, and it
//! follows the tokens sampled. The gateway checks a constraint once with [`check`] (against a
//! byte vocabulary: what compiles there compiles against any model's); an agent compiles it
//! against its model's vocabulary with [`Vocabulary::compile`], cached by the constraint's
//! hash.
//!
//! The engine is llguidance: an Earley parser over a lazily built lexer, so compiling is
//! cheap and each step's mask is computed from the parser's state (bounded by its fuel
//! limits, so a pathological grammar fails instead of stalling a batch).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use edgewise_proto as pb;
use llguidance::api::{ParserLimits, TopLevelGrammar};
use llguidance::toktrie::{
    ApproximateTokEnv, InferenceCapabilities, TokEnv, TokRxInfo, TokTrie, TokenizerEnv,
};
use llguidance::{Matcher, ParserFactory};

mod mask;
#[cfg(test)]
mod tests;

pub use mask::{Candidates, apply, candidates, gather};

/// A constraint the engine cannot take, with the request field it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

fn invalid(field: &str, message: impl Into<String>) -> Invalid {
    Invalid {
        field: field.to_string(),
        message: message.into(),
    }
}

/// Largest schema, pattern or grammar text accepted (bytes).
pub const MAX_SOURCE_BYTES: usize = 256 << 10;
/// Most options in a choice.
pub const MAX_OPTIONS: usize = 4096;
/// Compiled constraints an agent keeps per model.
const CACHE_ENTRIES: usize = 64;

/// The request field a constraint came from (for error messages).
pub fn field(c: &pb::Constraint) -> &'static str {
    use pb::constraint::Kind;
    match c.kind {
        Some(Kind::JsonSchema(_)) => "constraint.json_schema",
        Some(Kind::JsonObject(_)) => "constraint.json_object",
        Some(Kind::Regex(_)) => "constraint.regex",
        Some(Kind::Choice(_)) => "constraint.choice",
        Some(Kind::Lark(_)) => "constraint.lark",
        None => "constraint",
    }
}

/// The grammar a constraint asks for; the checks that need no compiling (sizes, an empty
/// choice, JSON that does not parse).
pub fn grammar(c: &pb::Constraint) -> Result<TopLevelGrammar, Invalid> {
    use pb::constraint::Kind;
    let f = field(c);
    let sized = |s: &str| {
        if s.is_empty() {
            Err(invalid(f, "is empty"))
        } else if s.len() > MAX_SOURCE_BYTES {
            Err(invalid(
                f,
                format!("is {} bytes; at most {MAX_SOURCE_BYTES}", s.len()),
            ))
        } else {
            Ok(())
        }
    };
    match &c.kind {
        None => Err(invalid(
            f,
            "names no kind (json_schema, json_object, regex, choice or lark)",
        )),
        Some(Kind::JsonSchema(s)) => {
            sized(s)?;
            let schema: serde_json::Value = serde_json::from_str(s).map_err(|e| {
                invalid(
                    f,
                    format!("not JSON (line {}, column {}): {e}", e.line(), e.column()),
                )
            })?;
            if !(schema.is_object() || schema.is_boolean()) {
                return Err(invalid(f, "a schema is a JSON object (or true/false)"));
            }
            if let Some((keyword, at)) = unsupported(&schema, String::new()) {
                return Err(invalid(
                    f,
                    format!(
                        "`{keyword}` at {} is not supported",
                        if at.is_empty() { "/" } else { &at }
                    ),
                ));
            }
            Ok(TopLevelGrammar::from_json_schema(compact(schema)))
        }
        Some(Kind::JsonObject(true)) => Ok(TopLevelGrammar::from_json_schema(compact(
            serde_json::json!({"type": "object"}),
        ))),
        Some(Kind::JsonObject(false)) => Err(invalid(f, "is false (leave the constraint unset)")),
        Some(Kind::Regex(r)) => {
            sized(r)?;
            regex_syntax::Parser::new()
                .parse(r)
                .map_err(|e| invalid(f, e.to_string()))?;
            Ok(TopLevelGrammar::from_regex(r))
        }
        Some(Kind::Choice(choice)) => {
            let options = &choice.options;
            if options.is_empty() {
                return Err(invalid(f, "has no options"));
            }
            if options.len() > MAX_OPTIONS {
                return Err(invalid(
                    f,
                    format!("has {} options; at most {MAX_OPTIONS}", options.len()),
                ));
            }
            if let Some(i) = options.iter().position(String::is_empty) {
                return Err(invalid(f, format!("options[{i}] is empty")));
            }
            sized(&options.concat())?;
            let alternatives: Vec<String> =
                options.iter().map(|o| regex_syntax::escape(o)).collect();
            Ok(TopLevelGrammar::from_regex(&format!(
                "(?:{})",
                alternatives.join("|")
            )))
        }
        Some(Kind::Lark(g)) => {
            sized(g)?;
            Ok(TopLevelGrammar::from_lark(g.clone()))
        }
    }
}

/// JSON Schema keywords the engine does not enforce: a schema using one is refused (never
/// silently loosened).
const UNSUPPORTED: [&str; 14] = [
    "if",
    "then",
    "else",
    "not",
    "uniqueItems",
    "contains",
    "minContains",
    "maxContains",
    "dependentRequired",
    "dependentSchemas",
    "dependencies",
    "propertyNames",
    "unevaluatedProperties",
    "unevaluatedItems",
];

/// The first unsupported keyword in `schema` and its JSON pointer, walking the places a
/// schema holds schemas (a property named like a keyword is not one).
fn unsupported(schema: &serde_json::Value, at: String) -> Option<(String, String)> {
    let o = schema.as_object()?;
    if let Some(k) = UNSUPPORTED.iter().find(|k| o.contains_key(**k)) {
        return Some(((*k).to_string(), at));
    }
    let escape = |k: &str| k.replace('~', "~0").replace('/', "~1");
    for (key, value) in o {
        match key.as_str() {
            "properties" | "patternProperties" | "$defs" | "definitions" => {
                for (name, sub) in value.as_object().into_iter().flatten() {
                    let found = unsupported(sub, format!("{at}/{key}/{}", escape(name)));
                    if found.is_some() {
                        return found;
                    }
                }
            }
            "anyOf" | "oneOf" | "allOf" | "prefixItems" => {
                for (i, sub) in value.as_array().into_iter().flatten().enumerate() {
                    let found = unsupported(sub, format!("{at}/{key}/{i}"));
                    if found.is_some() {
                        return found;
                    }
                }
            }
            "items" | "additionalProperties" | "additionalItems" => {
                let found = unsupported(value, format!("{at}/{key}"));
                if found.is_some() {
                    return found;
                }
            }
            _ => {}
        }
    }
    None
}

/// Compact JSON (`{"a": 1, "b": [2, 3]}`, no free whitespace): a small model given the freedom
/// of JSON's whitespace can spend its whole budget on newlines.
fn compact(mut schema: serde_json::Value) -> serde_json::Value {
    if let Some(o) = schema.as_object_mut() {
        o.entry("x-guidance").or_insert_with(|| {
            serde_json::json!({
                "whitespace_flexible": false,
                "item_separator": ", ",
                "key_separator": ": ",
            })
        });
    }
    schema
}

/// A stable key for a constraint (the cache's).
pub fn key(c: &pb::Constraint) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    prost::Message::encode_to_vec(c).hash(&mut h);
    h.finish()
}

/// Checks that a constraint compiles, against a byte vocabulary (every model's tokens are
/// byte strings, so what compiles here compiles for any model). For the gateway: a request
/// the agents would refuse is refused before it is routed.
pub fn check(c: &pb::Constraint) -> Result<(), Invalid> {
    static BYTES: std::sync::OnceLock<Result<Vocabulary, String>> = std::sync::OnceLock::new();
    let vocab = BYTES
        .get_or_init(|| Vocabulary::new(ApproximateTokEnv::single_byte_env()))
        .as_ref()
        .map_err(|e| {
            invalid(
                field(c),
                format!("the constraint engine failed to start: {e}"),
            )
        })?;
    vocab.ensure(c)
}

/// A model's vocabulary, and the constraints compiled against it.
pub struct Vocabulary {
    factory: ParserFactory,
    cache: Mutex<HashMap<u64, Matcher>>,
}

/// The model's own tokenizer, for the few places the engine tokenizes text itself.
pub type Tokenize = Arc<dyn Fn(&[u8]) -> Vec<u32> + Send + Sync>;

struct ModelTokens {
    trie: TokTrie,
    tokenize: Tokenize,
}

impl TokenizerEnv for ModelTokens {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<u32> {
        (self.tokenize)(s)
    }
}

impl Vocabulary {
    fn new(env: TokEnv) -> Result<Self, String> {
        let mut factory = ParserFactory::new(
            &env,
            InferenceCapabilities::default(),
            &llguidance::earley::SlicedBiasComputer::general_slices(),
        )
        .map_err(|e| e.to_string())?;
        factory.quiet();
        *factory.limits_mut() = ParserLimits {
            // errors must not carry the generated text or the grammar (both are the caller's)
            verbose_errors: false,
            ..ParserLimits::default()
        };
        Ok(Self {
            factory,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// From a Hugging Face `tokenizer.json`: every token's bytes, `logits` wide (a model's
    /// output can be wider than its tokenizer: the extra ids are never allowed), with the
    /// model's end-of-sequence ids (allowed exactly when the output is complete).
    pub fn from_tokenizer_json(
        json: &[u8],
        logits: usize,
        eos: &[u32],
        tokenize: Tokenize,
    ) -> Result<Self, String> {
        let value: serde_json::Value =
            serde_json::from_slice(json).map_err(|e| format!("tokenizer.json: {e}"))?;
        let mut tokens = llguidance::token_bytes_from_tokenizer_json(&value)
            .map_err(|e| format!("tokenizer.json: {e}"))?;
        if tokens.len() > logits {
            return Err(format!(
                "the tokenizer has {} tokens, the model's output {logits}",
                tokens.len()
            ));
        }
        tokens.resize(logits, Vec::new());
        let first = eos.first().copied().ok_or("no end-of-sequence token")?;
        let trie =
            TokTrie::from(&TokRxInfo::new(logits as u32, first), &tokens).with_eos_tokens(eos);
        Self::new(Arc::new(ModelTokens { trie, tokenize }))
    }

    /// The constraint compiled for this vocabulary (from the cache when it was seen before).
    pub fn compile(&self, c: &pb::Constraint) -> Result<Guide, Invalid> {
        let cached = self
            .cache
            .lock()
            .ok()
            .and_then(|m| m.get(&key(c)).map(Matcher::deep_clone));
        let matcher = match cached {
            Some(m) => m,
            None => self.build(c)?,
        };
        Ok(Guide {
            matcher,
            field: field(c),
        })
    }

    /// Whether the constraint compiles (from the cache when it was seen before, without
    /// the copy a sequence needs).
    fn ensure(&self, c: &pb::Constraint) -> Result<(), Invalid> {
        if self.cache.lock().is_ok_and(|m| m.contains_key(&key(c))) {
            return Ok(());
        }
        self.build(c).map(drop)
    }

    /// Compiles the constraint and caches it.
    fn build(&self, c: &pb::Constraint) -> Result<Matcher, Invalid> {
        let grammar = grammar(c)?;
        // the engine's own steps catch their panics; compiling is guarded here, so a grammar
        // that trips it is an error for its request, never a crash
        let parser = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.factory.create_parser(grammar)
        }))
        .map_err(|_| invalid(field(c), "the constraint engine failed on it"))?
        .map_err(|e| invalid(field(c), first_line(&e.to_string())))?;
        let mut m = Matcher::new(Ok(parser));
        // a grammar that compiles but allows nothing at the start is no use either
        m.compute_mask()
            .map_err(|e| invalid(field(c), first_line(&e.to_string())))?;
        m.reset()
            .map_err(|e| invalid(field(c), first_line(&e.to_string())))?;
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
            cache.insert(key(c), m.deep_clone());
        }
        Ok(m)
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or(s).chars().take(400).collect()
}

/// One sequence's constraint, following its tokens.
pub struct Guide {
    matcher: Matcher,
    field: &'static str,
}

impl std::fmt::Debug for Guide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guide").field("field", &self.field).finish()
    }
}

impl Guide {
    /// The tokens allowed next (end-of-sequence exactly when the output is complete). Fails
    /// when the engine does (a fuel limit reached): the sequence cannot go on.
    pub fn allowed(&mut self) -> Result<llguidance::toktrie::SimpleVob, String> {
        let m = self
            .matcher
            .compute_mask_or_eos()
            .map_err(|e| format!("{}: {}", self.field, first_line(&e.to_string())))?;
        if m.is_zero() {
            return Err(format!("{}: no token can continue the output", self.field));
        }
        Ok(m)
    }

    /// Follows a sampled token (one `allowed` permitted).
    pub fn accept(&mut self, token: u32) -> Result<(), String> {
        self.matcher
            .consume_token(token)
            .map_err(|e| format!("{}: {}", self.field, first_line(&e.to_string())))
    }

    /// Whether the output so far is complete (matches the constraint as it stands).
    pub fn complete(&mut self) -> bool {
        self.matcher.is_stopped() || self.matcher.is_accepting().unwrap_or(false)
    }
}
