//! The detectors: the project's own table of what identifies a person or unlocks a system.
//! A token format is a public fact (providers document their prefixes and lengths); each row
//! is an id, a category, the keywords that must occur for the rule to run at all, a byte
//! pattern, which capture is the value (and the key, for assignments), and a check.
//!
//! Adding a detector is adding a row (and a test in `tests.rs` with a value it must find and
//! one it must not). Patterns are `regex::bytes` with ASCII classes (`(?-u)`): a Unicode `\b`
//! would disable the fast engines on non-ASCII text.

use super::validators as v;
use crate::routing::Category;

/// What a rule's check sees: the value and, for an assignment, its key.
pub type Check = fn(value: &[u8], key: &[u8]) -> bool;

/// Where in a text a rule is worth running: a cheap pass finds those places first, and the
/// rule's pattern runs only around them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Near {
    /// Around any of the rule's keywords (ASCII case ignored).
    Keywords,
    /// Around a run of at least this many digits (spaces, dots, dashes and brackets between).
    Digits(usize),
    /// Around two letters followed by two digits (an IBAN's country and check digits).
    LettersDigits,
}

pub struct Rule {
    pub id: &'static str,
    pub category: Category,
    /// The keywords of a `Near::Keywords` rule.
    pub keywords: &'static [&'static str],
    pub near: Near,
    /// How far past a keyword a match may end (a JWT's payload can be long).
    pub reach: usize,
    pub pattern: &'static str,
    /// The capture holding the value checked (0: the whole match).
    pub value: usize,
    /// The capture holding an assignment's key, if any.
    pub key: Option<usize>,
    pub check: Check,
}

const fn rule(
    id: &'static str,
    category: Category,
    keywords: &'static [&'static str],
    pattern: &'static str,
    check: Check,
) -> Rule {
    Rule {
        id,
        category,
        keywords,
        near: Near::Keywords,
        reach: 256,
        pattern,
        value: 0,
        key: None,
        check,
    }
}

/// A token with a documented prefix: real ones are random, placeholders are not.
fn random(value: &[u8], _: &[u8]) -> bool {
    v::entropy(value) >= 3.0 && !v::placeholder(value) && !contains(value, b"EXAMPLE")
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn aws_secret(value: &[u8], _: &[u8]) -> bool {
    v::entropy(value) >= 4.0 && !contains(value, b"EXAMPLE")
}

fn openai(value: &[u8], k: &[u8]) -> bool {
    !value.starts_with(b"sk-ant-") && v::entropy(value) >= 3.5 && random(value, k)
}

fn pem_body(value: &[u8], _: &[u8]) -> bool {
    let body: Vec<u8> = value
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    body.len() >= 64 && v::entropy(&body) >= 4.5
}

fn not_placeholder(value: &[u8], _: &[u8]) -> bool {
    !v::placeholder(value)
}

fn bearer(value: &[u8], _: &[u8]) -> bool {
    v::entropy(value) >= 3.5 && !v::placeholder(value)
}

/// Keys that name a secret's neighbours, not a secret.
const NOT_SECRET_KEYS: &[&str] = &[
    "public",
    "author",
    "_id",
    "_url",
    "_uri",
    "_type",
    "_name",
    "_path",
    "_file",
    "_length",
    "_count",
    "_size",
    "_policy",
    "_endpoint",
    "_header",
    "_field",
    "tokens",
    "tokenizer",
    "_prefix",
    "_format",
    "_expir",
    "_ttl",
    "_timeout",
    "less",
];

const PASSWORD_KEYS: &[&str] = &["password", "passwd", "pwd", "passphrase"];

/// `key = value` where the key names a secret: a password-like key with any real-looking
/// value of 6 or more characters, or another secret-like key with a random value holding a
/// digit. The key is read from its secret-like word on (the pattern starts at the word, so
/// that its literal drives the search).
fn assignment(value: &[u8], key: &[u8]) -> bool {
    let key = String::from_utf8_lossy(key).to_ascii_lowercase();
    if NOT_SECRET_KEYS.iter().any(|k| key.contains(k)) || v::placeholder(value) {
        return false;
    }
    let digits_only = value
        .iter()
        .all(|b| b.is_ascii_digit() || *b == b'.' || *b == b'-');
    if digits_only {
        return false;
    }
    if PASSWORD_KEYS.iter().any(|k| key.contains(k)) {
        return value.len() >= 6;
    }
    v::entropy(value) >= 3.5 && value.iter().any(u8::is_ascii_digit)
}

pub const RULES: &[Rule] = &[
    // --- identifiers
    // not after `:` or `/`: that is a URL's user and password (`postgres://svc:pw@db.internal`)
    Rule {
        value: 1,
        ..rule(
            "email",
            Category::Email,
            &["@"],
            r"(?-u)(?i)(?:^|[^:/a-z0-9._%+-])([a-z0-9._%+-]{1,64}@[a-z0-9-]{1,63}(?:\.[a-z0-9-]{1,63})*\.[a-z]{2,24})\b",
            |s, _| v::email(s),
        )
    },
    rule(
        "phone-e164",
        Category::Phone,
        &["+"],
        r"(?-u)\+[1-9](?:[ ().-]{0,2}[0-9]){7,14}\b",
        |s, _| v::phone(s, 8, 15),
    ),
    Rule {
        near: Near::Digits(10),
        ..rule(
            "phone-nanp",
            Category::Phone,
            &[],
            r"(?-u)(?:\b|\()[2-9][0-9]{2}\)?[ .-][2-9][0-9]{2}[ .-][0-9]{4}\b",
            |s, _| v::nanp(s),
        )
    },
    Rule {
        value: 1,
        ..rule(
            "phone-cue",
            Category::Phone,
            // `tel` alone is in every "tell" and "hotel": the cue is written `tel:`, `tel.`, `tel `
            &["phone", "tel:", "tel.", "tel ", "fax", "mobile", "cell"],
            r"(?-u)(?i)\b(?:phone|tel|telephone|fax|mobile|cell)\b[^0-9+\n]{0,16}(\+?[0-9][0-9 ().-]{5,18}[0-9])\b",
            |s, _| v::phone(s, 7, 15),
        )
    },
    Rule {
        near: Near::Digits(12),
        ..rule(
            "payment-card",
            Category::Card,
            &[],
            r"(?-u)\b[0-9](?:[ -]?[0-9]){11,18}\b",
            |s, _| v::card(s),
        )
    },
    Rule {
        near: Near::LettersDigits,
        ..rule(
            "iban",
            Category::Iban,
            &[],
            r"(?-u)(?i)\b[a-z]{2}[0-9]{2}[a-z0-9 ]{11,40}",
            |s, _| v::iban(s),
        )
    },
    Rule {
        near: Near::Digits(9),
        ..rule(
            "us-ssn",
            Category::NationalId,
            &[],
            r"(?-u)\b[0-9]{3}[- ][0-9]{2}[- ][0-9]{4}\b",
            |s, _| v::ssn(s),
        )
    },
    Rule {
        value: 1,
        ..rule(
            "us-ssn-cue",
            Category::NationalId,
            &["ssn", "social security"],
            r"(?-u)(?i)\b(?:ssn|social security(?: number| no\.?)?)\b[^0-9\n]{0,12}\b([0-9]{9})\b",
            |s, _| v::ssn(s),
        )
    },
    // --- secrets
    rule(
        "aws-access-key-id",
        Category::Secret,
        &["AKIA", "ASIA", "ABIA", "ACCA"],
        r"(?-u)\b(?:AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16}\b",
        random,
    ),
    Rule {
        value: 1,
        ..rule(
            "aws-secret-access-key",
            Category::Secret,
            &["aws"],
            r#"(?-u)(?i)aws[a-z0-9_. -]{0,20}secret[a-z0-9_. -]{0,20}["']?\s*[:=]\s*["']?([A-Za-z0-9/+]{40})\b"#,
            aws_secret,
        )
    },
    rule(
        "gcp-api-key",
        Category::Secret,
        &["AIza"],
        r"(?-u)AIza[0-9A-Za-z_-]{35}",
        random,
    ),
    rule(
        "github-token",
        Category::Secret,
        &["ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"],
        r"(?-u)\b(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{82})\b",
        random,
    ),
    rule(
        "gitlab-token",
        Category::Secret,
        &["glpat-"],
        r"(?-u)glpat-[A-Za-z0-9_-]{20}",
        random,
    ),
    rule(
        "npm-token",
        Category::Secret,
        &["npm_"],
        r"(?-u)\bnpm_[A-Za-z0-9]{36}\b",
        random,
    ),
    rule(
        "pypi-token",
        Category::Secret,
        &["pypi-"],
        r"(?-u)pypi-AgEIcHlwaS5vcmc[A-Za-z0-9_-]{50,}",
        random,
    ),
    rule(
        "slack-token",
        Category::Secret,
        &["xox"],
        r"(?-u)\bxox[baprs]-[0-9]{6,}-[0-9A-Za-z-]{8,}",
        random,
    ),
    rule(
        "slack-webhook",
        Category::Secret,
        &["hooks.slack.com"],
        r"(?-u)https://hooks\.slack\.com/services/T[A-Z0-9]{6,}/B[A-Z0-9]{6,}/[A-Za-z0-9]{20,}",
        random,
    ),
    rule(
        "stripe-key",
        Category::Secret,
        &["sk_live", "rk_live", "sk_test", "rk_test"],
        r"(?-u)\b[sr]k_(?:live|test)_[0-9A-Za-z]{20,}\b",
        random,
    ),
    rule(
        "openai-key",
        Category::Secret,
        &["sk-"],
        r"(?-u)\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{40,}",
        openai,
    ),
    rule(
        "anthropic-key",
        Category::Secret,
        &["sk-ant-"],
        r"(?-u)sk-ant-(?:api|admin)[0-9]{2}-[A-Za-z0-9_-]{80,}",
        random,
    ),
    Rule {
        value: 1,
        ..rule(
            "private-key",
            Category::Secret,
            &["PRIVATE KEY"],
            r"(?-u)-----BEGIN[A-Z0-9 ]{0,20} PRIVATE KEY(?: BLOCK)?-----\s*([A-Za-z0-9+/=\s]{64,})",
            pem_body,
        )
    },
    Rule {
        reach: 8192,
        ..rule(
            "jwt",
            Category::Secret,
            &["eyJ"],
            r"(?-u)\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{16,}",
            |s, _| v::jwt(s),
        )
    },
    Rule {
        value: 1,
        ..rule(
            "connection-string-password",
            Category::Secret,
            &["://"],
            r"(?-u)(?i)\b[a-z][a-z0-9+.-]{1,20}://[^\s:/@]{1,64}:([^\s@/]{3,128})@[^\s/@]{2,255}",
            not_placeholder,
        )
    },
    Rule {
        value: 1,
        ..rule(
            "bearer-token",
            Category::Secret,
            &["bearer"],
            r"(?-u)(?i)\bbearer\s+([A-Za-z0-9._~+/-]{20,}=*)",
            bearer,
        )
    },
    Rule {
        value: 2,
        key: Some(1),
        ..rule(
            "secret-assignment",
            Category::Secret,
            &[
                "password",
                "passwd",
                "pwd",
                "passphrase",
                "secret",
                "token",
                "apikey",
                "api_key",
                "api-key",
                "access_key",
                "accesskey",
                "private_key",
                "credential",
            ],
            r#"(?-u)(?i)((?:password|passwd|pwd|passphrase|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|credentials?)[a-z0-9_.-]{0,30})["']?\s*(?:=|:=|=>|:)\s*["']?([^\s"',;<>]{6,200})"#,
            assignment,
        )
    },
];
