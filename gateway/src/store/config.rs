//! `[store]` in gateway.toml: the shared ledger's connection, password and TLS, validated with
//! the file's line and column.

use std::path::{Path, PathBuf};
use std::time::Duration;

use edgewise_diag::Layered;
use serde::Deserialize;

/// `[store]`: the budget ledger several gateways share (PostgreSQL); absent: this gateway's
/// own (sled, in `state.dir`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// `sled` (the default) or `postgres`.
    pub backend: Option<String>,
    /// libpq-style parameters without the password: `host=db port=5432 user=edgewise
    /// dbname=edgewise` (a `host` starting with `/` is a unix socket directory).
    pub postgres: Option<String>,
    /// The password, from a file or a systemd credential (never in this file).
    pub password_file: Option<PathBuf>,
    pub password_credential: Option<String>,
    /// TLS to the database, trusting this CA besides the system's (`tls = true` with the
    /// system roots alone).
    pub tls: Option<bool>,
    pub ca_file: Option<PathBuf>,
    /// A client certificate for a database that authenticates by certificate (TLS on).
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub pool_size: Option<u32>,
    /// The longest one ledger operation may take before the hosted call is refused.
    pub timeout_ms: Option<u64>,
    /// A reservation's lease before any gateway may charge it at its worst case.
    pub lease_ms: Option<u64>,
    pub sweep_interval_ms: Option<u64>,
}

/// Validates `[store]`: the shared ledger's parameters, password and TLS.
pub(crate) fn validate(
    raw: RawStore,
    at: &Layered<()>,
    gateway: &str,
    credentials: Option<&Path>,
    problems: &mut Vec<edgewise_diag::Diagnostic>,
) -> Option<crate::SharedLedgerConfig> {
    match raw.backend.as_deref().unwrap_or("sled") {
        "sled" => {
            if raw.postgres.is_some() {
                problems.push(at.problem(
                    "store.postgres",
                    "set `backend = \"postgres\"` to use it (the default backend is sled)",
                ));
            }
            return None;
        }
        "postgres" => {}
        other => {
            problems.push(at.problem(
                "store.backend",
                format!("`{other}` is not one of sled, postgres"),
            ));
            return None;
        }
    }
    let before = problems.len();
    let Some(params) = raw.postgres else {
        problems.push(at.problem(
            "store.backend",
            "the postgres backend needs `postgres = \"host=… user=… dbname=…\"`",
        ));
        return None;
    };
    match params.parse::<tokio_postgres::Config>() {
        Ok(c) if c.get_password().is_some() => problems.push(at.problem(
            "store.postgres",
            "holds a password: put it in password_file or password_credential instead",
        )),
        Ok(c) if c.get_hosts().is_empty() => {
            problems.push(at.problem("store.postgres", "names no host"))
        }
        Ok(_) => {}
        Err(e) => problems.push(at.problem(
            "store.postgres",
            format!("not libpq connection parameters ({e})"),
        )),
    }
    let password_path = match (&raw.password_file, &raw.password_credential) {
        (Some(f), None) => Some(("store.password_file", at.base().join(f))),
        (None, Some(c)) => match credentials {
            Some(dir) if !c.contains('/') && !c.is_empty() => {
                Some(("store.password_credential", dir.join(c)))
            }
            Some(_) => {
                problems.push(at.problem(
                    "store.password_credential",
                    "must be a plain credential name",
                ));
                None
            }
            None => {
                problems.push(at.problem(
                    "store.password_credential",
                    "CREDENTIALS_DIRECTORY is not set (use LoadCredential= in the unit, or password_file)",
                ));
                None
            }
        },
        (Some(_), Some(_)) => {
            problems.push(at.problem(
                "store.password_credential",
                "set password_file or password_credential, not both",
            ));
            None
        }
        (None, None) => None,
    };
    let password = password_path.and_then(|(key, file)| match std::fs::read_to_string(&file) {
        Ok(p) if !p.trim_end_matches(['\r', '\n']).is_empty() => {
            Some(p.trim_end_matches(['\r', '\n']).to_string())
        }
        Ok(_) => {
            problems.push(at.problem(key, format!("{} is empty", file.display())));
            None
        }
        Err(e) => {
            problems.push(at.problem(key, format!("cannot read {}: {e}", file.display())));
            None
        }
    });
    let ca = raw.ca_file.map(|f| at.base().join(f));
    let identity = match (raw.cert_file, raw.key_file) {
        (Some(c), Some(k)) => Some((at.base().join(c), at.base().join(k))),
        (None, None) => None,
        (Some(_), None) => {
            problems.push(at.problem("store.cert_file", "needs key_file too"));
            None
        }
        (None, Some(_)) => {
            problems.push(at.problem("store.key_file", "needs cert_file too"));
            None
        }
    };
    let tls = if raw.tls.unwrap_or(false) || ca.is_some() || identity.is_some() {
        let id = identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
        match edgewise_tls::client_config_with_identity(ca.as_deref(), id, "the shared ledger") {
            Ok(c) => Some(c),
            Err(e) => {
                let key = if identity.is_some() && !e.starts_with("ca_file") {
                    "store.cert_file"
                } else {
                    "store.ca_file"
                };
                problems.push(at.problem(key, e));
                None
            }
        }
    } else {
        None
    };
    let mut bounded = |key: &str, v: Option<u64>, default: u64, lo: u64, hi: u64| -> u64 {
        let v = v.unwrap_or(default);
        if !(lo..=hi).contains(&v) {
            problems.push(at.problem(
                &format!("store.{key}"),
                format!("{v} is not in {lo}..={hi}"),
            ));
        }
        v
    };
    let pool_size = bounded("pool_size", raw.pool_size.map(u64::from), 8, 1, 64);
    let timeout_ms = bounded("timeout_ms", raw.timeout_ms, 1500, 100, 10_000);
    let lease_ms = bounded("lease_ms", raw.lease_ms, 120_000, 1_000, 86_400_000);
    let sweep_ms = bounded(
        "sweep_interval_ms",
        raw.sweep_interval_ms,
        5_000,
        100,
        600_000,
    );
    if problems.len() > before {
        return None;
    }
    // the password goes into the parameters here, after validation, and is never echoed
    let mut options = crate::store::postgres::PgOptions::new(params, gateway);
    options.password = password;
    options.pool_size = pool_size as usize;
    options.timeout = Duration::from_millis(timeout_ms);
    Some(crate::SharedLedgerConfig {
        options,
        tls,
        lease: Duration::from_millis(lease_ms),
        sweep_every: Duration::from_millis(sweep_ms),
    })
}
