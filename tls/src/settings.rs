//! The `[tls]` section both daemons' config files share, validated with errors that point
//! at the file, line and column.
//!
//! ```toml
//! [tls]
//! ca_file = "/etc/edgewise/tls/ca.pem"
//! cert_file = "/etc/edgewise/tls/node.pem"
//! key_file = "/etc/edgewise/tls/node.key"   # or key_credential = "node.key"
//! ```
//!
//! or, for local development only, `plaintext = true` (no TLS, no certificates).

use std::path::{Path, PathBuf};

use edgewise_diag::{Diagnostic, Layered};
use serde::Deserialize;

use crate::TlsFiles;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// A systemd credential name: the key is read from `$CREDENTIALS_DIRECTORY/NAME`.
    pub key_credential: Option<String>,
    pub plaintext: Option<bool>,
}

/// How a daemon talks to its peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsMode {
    /// Mutual TLS with the fleet CA.
    Mutual(TlsFiles),
    /// No TLS: only when a config says `plaintext = true` (local development).
    Plaintext,
}

impl TlsMode {
    pub fn is_plaintext(&self) -> bool {
        matches!(self, TlsMode::Plaintext)
    }
}

/// Validates `[tls]` (`raw` is `None` when the section is absent). Relative paths are
/// against the config file's folder; `credentials` is `$CREDENTIALS_DIRECTORY`.
pub fn validate(
    raw: Option<RawTls>,
    at: &Layered<()>,
    credentials: Option<&Path>,
    problems: &mut Vec<Diagnostic>,
) -> TlsMode {
    let Some(raw) = raw else {
        problems.push(at.problem(
            "",
            "no [tls] section: set tls.ca_file, tls.cert_file and tls.key_file (see `edgewise certs init`), \
             or `plaintext = true` under [tls] for local development",
        ));
        return TlsMode::Plaintext;
    };
    let any_file = raw.ca_file.is_some()
        || raw.cert_file.is_some()
        || raw.key_file.is_some()
        || raw.key_credential.is_some();
    match raw.plaintext {
        Some(true) if any_file => {
            problems.push(at.problem(
                "tls.plaintext",
                "plaintext = true with certificate files set: choose one",
            ));
            return TlsMode::Plaintext;
        }
        Some(true) => return TlsMode::Plaintext,
        _ => {}
    }
    let mut need = |key: &str, v: Option<PathBuf>| match v {
        Some(p) => Some(at.base().join(p)),
        None => {
            problems.push(at.problem("tls", format!("tls.{key} is required")));
            None
        }
    };
    let ca = need("ca_file", raw.ca_file);
    let cert = need("cert_file", raw.cert_file);
    let key = match (raw.key_file, raw.key_credential) {
        (Some(f), None) => Some(at.base().join(f)),
        (None, Some(c)) => match credentials {
            Some(dir) if !c.is_empty() && !c.contains('/') => Some(dir.join(c)),
            Some(_) => {
                problems.push(at.problem("tls.key_credential", "must be a plain credential name"));
                None
            }
            None => {
                problems.push(at.problem(
                    "tls.key_credential",
                    "CREDENTIALS_DIRECTORY is not set (use LoadCredential= in the unit, or key_file)",
                ));
                None
            }
        },
        (Some(_), Some(_)) => {
            problems.push(at.problem(
                "tls.key_credential",
                "set key_file or key_credential, not both",
            ));
            None
        }
        (None, None) => {
            problems.push(at.problem("tls", "tls.key_file or tls.key_credential is required"));
            None
        }
    };
    for (k, p) in [
        ("tls.ca_file", &ca),
        ("tls.cert_file", &cert),
        ("tls", &key),
    ] {
        if let Some(p) = p
            && !p.is_file()
        {
            problems.push(at.problem(k, format!("{} does not exist", p.display())));
        }
    }
    match (ca, cert, key) {
        (Some(ca), Some(cert), Some(key)) => TlsMode::Mutual(TlsFiles { ca, cert, key }),
        _ => TlsMode::Plaintext,
    }
}
