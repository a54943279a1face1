//! The gateway's own configuration (`gateway.toml`): raw shape → validated `GatewayFile`.
//! `EDGEWISE_SECTION__KEY` environment variables override the file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use edgewise_diag::{Diagnostics, Layered};
use serde::Deserialize;

use crate::providers::{Kind, ProviderConfig, Secret};
use crate::routing::ProviderPrice;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGatewayConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub policies: RawPolicies,
    #[serde(default)]
    pub routing: RawRouting,
    #[serde(default)]
    pub state: RawState,
    #[serde(default)]
    pub providers: BTreeMap<String, RawProvider>,
    pub tls: Option<edgewise_tls::RawTls>,
    #[serde(default)]
    pub auth: RawAuth,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub metrics: edgewise_ops::metrics::RawMetrics,
    #[serde(default)]
    pub http: RawHttp,
    #[serde(default)]
    pub telemetry: edgewise_ops::otlp::RawTelemetry,
    #[serde(default)]
    pub store: crate::store::config::RawStore,
}

/// `[limits]`: what one request may ask for (hostile or mistaken input is refused early).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_message_bytes: Option<usize>,
    pub max_texts: Option<usize>,
    pub max_prompt_tokens: Option<u32>,
    pub max_tokens: Option<u32>,
    pub max_in_flight_per_tenant: Option<u32>,
}

/// `[http]`: the OpenAI-compatible API (not served unless `listen` is set).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    pub listen: Option<String>,
    /// How long a client may take to send its headers, then its body (default 10 s).
    pub client_timeout_ms: Option<u64>,
}

/// Validates `[http]`, placing problems in the file.
fn http(
    raw: RawHttp,
    at: &Layered<()>,
    problems: &mut Vec<edgewise_diag::Diagnostic>,
) -> Option<crate::http::HttpConfig> {
    let timeout = match raw.client_timeout_ms {
        None => Some(crate::http::HttpConfig::DEFAULT_CLIENT_TIMEOUT),
        Some(ms) if (50..=600_000).contains(&ms) => Some(Duration::from_millis(ms)),
        Some(ms) => {
            problems.push(at.problem(
                "http.client_timeout_ms",
                format!("{ms} is out of range 50..=600000"),
            ));
            None
        }
    };
    let listen = match raw.listen?.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(e) => {
            problems.push(at.problem(
                "http.listen",
                format!("is not an address like 127.0.0.1:7480 ({e})"),
            ));
            None
        }
    };
    Some(crate::http::HttpConfig {
        listen: listen?,
        client_timeout: timeout?,
    })
}

/// `[auth]`: callers' bearer tokens (by hash) and the operator tenants.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    #[serde(default)]
    pub tokens: Vec<RawToken>,
    #[serde(default)]
    pub operators: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawToken {
    pub tenant: Option<String>,
    /// SHA-256 of the token, 64 hex digits (`edgewise token new` prints one).
    pub sha256: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawState {
    pub dir: Option<PathBuf>,
    /// How long a request waits for the ledger and audit store before UNAVAILABLE.
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    pub kind: Option<String>,
    pub base_url: Option<String>,
    /// A file holding the API key (relative paths are taken from the config file's folder).
    pub key_file: Option<PathBuf>,
    /// A systemd credential name: the key is read from `$CREDENTIALS_DIRECTORY/NAME`.
    pub key_credential: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub input_usd_per_million: Option<f64>,
    pub output_usd_per_million: Option<f64>,
    pub timeout_ms: Option<u64>,
    pub max_retries: Option<u32>,
    pub default_max_tokens: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<String>,
    pub id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicies {
    #[serde(default)]
    pub paths: Vec<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouting {
    pub retry_budget: Option<u32>,
}

/// Validated `gateway.toml`.
#[derive(Debug, Clone)]
pub struct GatewayFile {
    pub listen: SocketAddr,
    pub gateway: crate::GatewayConfig,
}

impl GatewayFile {
    pub fn load(path: &Path, env: &[(String, String)]) -> Result<Self, Diagnostics> {
        let (raw, at) = Layered::<RawGatewayConfig>::load(path, env, &["policies.paths"])?.split();
        let mut problems = Vec::new();
        let listen = match raw
            .server
            .listen
            .as_deref()
            .unwrap_or("127.0.0.1:7400")
            .parse()
        {
            Ok(a) => a,
            Err(e) => {
                problems.push(at.problem(
                    "server.listen",
                    format!("not an address like 127.0.0.1:7400 ({e})"),
                ));
                SocketAddr::from(([127, 0, 0, 1], 7400))
            }
        };
        let id = raw.server.id.unwrap_or_else(|| "gateway".into());
        if id.is_empty() || id.len() > 64 {
            problems.push(at.problem("server.id", "must be 1 to 64 characters"));
        }
        let policies: Vec<PathBuf> = if raw.policies.paths.is_empty() {
            vec![PathBuf::from("/etc/edgewise/policies")]
        } else {
            raw.policies
                .paths
                .iter()
                .map(|p| at.base().join(p))
                .collect()
        };
        for (i, p) in policies.iter().enumerate() {
            if !p.exists() {
                problems.push(at.problem(
                    &format!("policies.paths[{i}]"),
                    format!("{} does not exist", p.display()),
                ));
            }
        }
        let retry_budget = raw.routing.retry_budget.unwrap_or(2);
        if retry_budget > 10 {
            problems.push(at.problem(
                "routing.retry_budget",
                format!("{retry_budget} is more than 10"),
            ));
        }
        let store_timeout_ms = raw
            .state
            .timeout_ms
            .unwrap_or(crate::store::DEFAULT_WRITE_TIMEOUT.as_millis() as u64);
        if !(10..=60_000).contains(&store_timeout_ms) {
            problems.push(at.problem(
                "state.timeout_ms",
                format!("{store_timeout_ms} is not in 10..=60000"),
            ));
        }
        let state_dir = raw
            .state
            .dir
            .map(|d| at.base().join(d))
            .unwrap_or_else(|| PathBuf::from("/var/lib/edgewise/gateway"));
        let credentials = env
            .iter()
            .find(|(k, _)| k == "CREDENTIALS_DIRECTORY")
            .map(|(_, v)| PathBuf::from(v));
        let tls = edgewise_tls::validate(raw.tls, &at, credentials.as_deref(), &mut problems);
        let mut tokens = Vec::new();
        for (i, t) in raw.auth.tokens.into_iter().enumerate() {
            let tenant = match t.tenant {
                Some(n) if edgewise_tls::valid_name(&n) => Some(n),
                Some(n) => {
                    problems.push(at.problem(
                        &format!("auth.tokens[{i}].tenant"),
                        format!("`{n}` is not a tenant name (1-128 of A-Z a-z 0-9 . _ -)"),
                    ));
                    None
                }
                None => {
                    problems.push(at.problem(&format!("auth.tokens[{i}]"), "`tenant` is required"));
                    None
                }
            };
            let hash = match t.sha256.as_deref().map(crate::auth::parse_hash) {
                Some(Some(h)) => Some(h),
                Some(None) => {
                    problems.push(at.problem(
                        &format!("auth.tokens[{i}].sha256"),
                        "must be 64 hex digits: the SHA-256 of the token, never the token itself (`edgewise token new` prints both)",
                    ));
                    None
                }
                None => {
                    problems.push(at.problem(&format!("auth.tokens[{i}]"), "`sha256` is required"));
                    None
                }
            };
            if let (Some(t), Some(h)) = (tenant, hash) {
                tokens.push((h, t));
            }
        }
        let metrics_listen = edgewise_ops::metrics::validate(raw.metrics, &at, &mut problems);
        let http = http(raw.http, &at, &mut problems);
        let otlp = edgewise_ops::otlp::validate(raw.telemetry, &at, &mut problems);
        let mut limits = crate::validate::Limits::default();
        let mut bounded = |key: &str, v: Option<u64>, lo: u64, hi: u64| -> Option<u64> {
            let v = v?;
            if (lo..=hi).contains(&v) {
                Some(v)
            } else {
                problems.push(at.problem(
                    &format!("limits.{key}"),
                    format!("{v} is out of range {lo}..={hi}"),
                ));
                None
            }
        };
        let l = &raw.limits;
        if let Some(v) = bounded(
            "max_message_bytes",
            l.max_message_bytes.map(|v| v as u64),
            1024,
            256 << 20,
        ) {
            limits.max_message_bytes = v as usize;
        }
        if let Some(v) = bounded("max_texts", l.max_texts.map(|v| v as u64), 1, 100_000) {
            limits.max_texts = v as usize;
        }
        if let Some(v) = bounded(
            "max_prompt_tokens",
            l.max_prompt_tokens.map(u64::from),
            1,
            10_000_000,
        ) {
            limits.max_prompt_tokens = v as u32;
        }
        if let Some(v) = bounded("max_tokens", l.max_tokens.map(u64::from), 1, 1_000_000) {
            limits.max_tokens = v as u32;
        }
        if let Some(v) = bounded(
            "max_in_flight_per_tenant",
            l.max_in_flight_per_tenant.map(u64::from),
            1,
            1_000_000,
        ) {
            limits.max_in_flight_per_tenant = v as u32;
        }
        for (i, o) in raw.auth.operators.iter().enumerate() {
            if !edgewise_tls::valid_name(o) {
                problems.push(at.problem(
                    &format!("auth.operators[{i}]"),
                    format!("`{o}` is not a tenant name"),
                ));
            }
        }
        let mut providers = Vec::new();
        for (name, p) in raw.providers {
            if let Some(p) = provider(&at, &name, p, credentials.as_deref(), &mut problems) {
                providers.push(p);
            }
        }
        let shared_ledger = crate::store::config::validate(
            raw.store,
            &at,
            &id,
            credentials.as_deref(),
            &mut problems,
        );
        if !problems.is_empty() {
            return Err(Diagnostics(problems));
        }
        Ok(Self {
            listen,
            gateway: crate::GatewayConfig {
                policies,
                id,
                retry_budget: retry_budget as usize,
                state_dir: Some(state_dir),
                store_timeout: Duration::from_millis(store_timeout_ms),
                providers,
                tls,
                tokens: crate::auth::Tokens::new(tokens),
                operators: raw.auth.operators,
                limits,
                metrics_listen,
                http,
                otlp,
                shared_ledger,
            },
        })
    }
}

/// Validates one `[providers.NAME]` block and reads its key (never echoing it).
fn provider(
    at: &Layered<()>,
    name: &str,
    p: RawProvider,
    credentials: Option<&Path>,
    problems: &mut Vec<edgewise_diag::Diagnostic>,
) -> Option<ProviderConfig> {
    let path = |key: &str| format!("providers.{name}.{key}");
    let before = problems.len();
    let kind = match p.kind.as_deref() {
        Some(k) => Kind::parse(k).or_else(|| {
            problems.push(at.problem(
                &path("kind"),
                format!("`{k}` is not one of openai, anthropic"),
            ));
            None
        }),
        None => {
            problems.push(at.problem(
                &format!("providers.{name}"),
                "`kind` is required (openai or anthropic)",
            ));
            None
        }
    };
    let base_url = match p.base_url.as_deref().map(reqwest::Url::parse) {
        Some(Ok(u)) if u.scheme() == "https" => Some(u),
        Some(Ok(u)) => {
            problems.push(at.problem(
                &path("base_url"),
                format!(
                    "must be https:// (got {}://); keys are never sent in clear text",
                    u.scheme()
                ),
            ));
            None
        }
        Some(Err(e)) => {
            problems.push(at.problem(&path("base_url"), format!("not a URL ({e})")));
            None
        }
        None => {
            problems.push(at.problem(
                &format!("providers.{name}"),
                "`base_url` is required, e.g. https://api.openai.com/v1",
            ));
            None
        }
    };
    let key_path = match (&p.key_file, &p.key_credential) {
        (Some(f), None) => Some((path("key_file"), at.base().join(f))),
        (None, Some(c)) => match credentials {
            Some(dir) if !c.contains('/') && !c.is_empty() => {
                Some((path("key_credential"), dir.join(c)))
            }
            Some(_) => {
                problems
                    .push(at.problem(&path("key_credential"), "must be a plain credential name"));
                None
            }
            None => {
                problems.push(at.problem(
                    &path("key_credential"),
                    "CREDENTIALS_DIRECTORY is not set (use LoadCredential= in the unit, or key_file)",
                ));
                None
            }
        },
        (Some(_), Some(_)) => {
            problems.push(at.problem(
                &path("key_credential"),
                "set key_file or key_credential, not both",
            ));
            None
        }
        (None, None) => {
            problems.push(at.problem(
                &format!("providers.{name}"),
                "an API key is required: key_file or key_credential",
            ));
            None
        }
    };
    let key = key_path.and_then(|(at_path, file)| match std::fs::read_to_string(&file) {
        Ok(k) if !k.trim().is_empty() => Some(Secret::new(k.trim().to_string())),
        Ok(_) => {
            problems.push(at.problem(&at_path, format!("{} is empty", file.display())));
            None
        }
        Err(e) => {
            problems.push(at.problem(&at_path, format!("cannot read {}: {e}", file.display())));
            None
        }
    });
    let ca_file = p.ca_file.map(|f| at.base().join(f));
    if let Some(f) = &ca_file
        && !f.is_file()
    {
        problems.push(at.problem(&path("ca_file"), format!("{} does not exist", f.display())));
    }
    let mut price = |key: &str, v: Option<f64>| match v {
        Some(x) if x.is_finite() && x >= 0.0 => x,
        Some(x) => {
            problems.push(at.problem(&path(key), format!("{x} is not a price >= 0")));
            0.0
        }
        None => {
            problems.push(at.problem(
                &format!("providers.{name}"),
                format!("`{key}` is required (USD per million tokens)"),
            ));
            0.0
        }
    };
    let input = price("input_usd_per_million", p.input_usd_per_million);
    let output = price("output_usd_per_million", p.output_usd_per_million);
    let timeout_ms = p.timeout_ms.unwrap_or(120_000);
    if !(100..=3_600_000).contains(&timeout_ms) {
        problems.push(at.problem(
            &path("timeout_ms"),
            format!("{timeout_ms} is not in 100..=3600000"),
        ));
    }
    let max_retries = p.max_retries.unwrap_or(2);
    if max_retries > 10 {
        problems.push(at.problem(
            &path("max_retries"),
            format!("{max_retries} is more than 10"),
        ));
    }
    let default_max_tokens = p.default_max_tokens.unwrap_or(1024);
    if default_max_tokens == 0 {
        problems.push(at.problem(&path("default_max_tokens"), "must be at least 1"));
    }
    if problems.len() > before {
        return None;
    }
    Some(ProviderConfig {
        name: name.to_string(),
        kind: kind?,
        base_url: base_url?,
        key: key?,
        ca_file,
        price: ProviderPrice {
            input_per_million_usd: input,
            output_per_million_usd: output,
        },
        timeout: Duration::from_millis(timeout_ms),
        max_retries,
        default_max_tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_are_located_and_the_environment_overrides() {
        let dir = std::env::temp_dir().join(format!("edgewise-gw-config-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("policies")).ok();
        let file = dir.join("gateway.toml");
        std::fs::write(&file, "[server]\nlisten = \"here\"\n\n[policies]\npaths = [\"policies\", \"missing\"]\n\n[routing]\nretry_budget = 50\n\n[tls]\nplaintext = true\n\n[state]\ntimeout_ms = 0\n").ok();
        let err = GatewayFile::load(&file, &[])
            .err()
            .map(|d| d.to_string())
            .unwrap_or_default();
        let f = file.display();
        let missing = dir.join("missing");
        assert_eq!(
            err,
            format!(
                "{f}:2:10: server.listen: not an address like 127.0.0.1:7400 (invalid socket address syntax)\n\
                 {f}:5:22: policies.paths[1]: {} does not exist\n\
                 {f}:8:16: routing.retry_budget: 50 is more than 10\n\
                 {f}:14:14: state.timeout_ms: 0 is not in 10..=60000",
                missing.display()
            )
        );
        std::fs::write(
            &file,
            "[policies]\npaths = [\"policies\"]\n[tls]\nplaintext = true\n",
        )
        .ok();
        let env = [(
            "EDGEWISE_SERVER__LISTEN".to_string(),
            "127.0.0.1:9999".to_string(),
        )];
        let ok = GatewayFile::load(&file, &env)
            .map(|g| g.listen.port())
            .map_err(|d| d.to_string());
        assert_eq!(ok, Ok(9999));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn telemetry_settings_are_checked_where_written() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir_all(dir.path().join("policies")).ok();
        let file = dir.path().join("gateway.toml");
        let load = |text: &str| {
            std::fs::write(&file, text).ok();
            GatewayFile::load(&file, &[])
                .map(|g| g.gateway.otlp)
                .map_err(|d| d.to_string())
        };
        let head = "[policies]\npaths = [\"policies\"]\n[tls]\nplaintext = true\n[telemetry]\n";
        let f = file.display();
        let missing = dir.path().join("missing.pem");
        assert_eq!(
            load(&format!(
                "{head}otlp_endpoint = \"grpc://collector:4317\"\n"
            )),
            Err(format!(
                "{f}:6:17: telemetry.otlp_endpoint: `grpc://collector:4317` must be a URL like http://127.0.0.1:4317 or https://collector:4317"
            ))
        );
        assert_eq!(
            load(&format!(
                "{head}otlp_endpoint = \"https://collector:4317\"\nca_file = \"missing.pem\"\nmetrics_interval_ms = 5\n"
            )),
            Err(format!(
                "{f}:7:11: telemetry.ca_file: {} is not a file\n\
                 {f}:8:23: telemetry.metrics_interval_ms: 5 is out of range 100..=3600000",
                missing.display()
            ))
        );
        std::fs::write(&missing, "").ok();
        assert_eq!(
            load(&format!(
                "{head}otlp_endpoint = \"http://127.0.0.1:4317\"\nca_file = \"missing.pem\"\n"
            )),
            Err(format!(
                "{f}:7:11: telemetry.ca_file: applies to https:// collectors; `http://127.0.0.1:4317` is plain"
            ))
        );
        let ok = load(&format!(
            "{head}otlp_endpoint = \"https://collector:4317\"\nca_file = \"missing.pem\"\nmetrics_interval_ms = 500\n"
        ));
        let ok = ok.map(|o| o.map(|o| (o.ca_file, o.metrics_interval)));
        assert_eq!(
            ok,
            Ok(Some((Some(missing.clone()), Duration::from_millis(500))))
        );
    }

    #[test]
    fn providers_are_validated_and_keys_never_echoed() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir_all(dir.path().join("policies")).ok();
        std::fs::write(dir.path().join("key"), "sk-canary-123\n").ok();
        let file = dir.path().join("gateway.toml");
        let text = "[policies]\npaths = [\"policies\"]\n\n[tls]\nplaintext = true\n\n[providers.openai]\nkind = \"openai\"\nbase_url = \"https://api.example.com/v1\"\nkey_file = \"key\"\ninput_usd_per_million = 0.15\noutput_usd_per_million = 0.6\n\n[providers.claude]\nkind = \"antropic\"\nbase_url = \"http://api.example.com\"\nkey_credential = \"claude-key\"\ninput_usd_per_million = -1\noutput_usd_per_million = 15\n";
        std::fs::write(&file, text).ok();
        let err = GatewayFile::load(&file, &[])
            .err()
            .map(|d| d.to_string())
            .unwrap_or_default();
        let f = file.display();
        assert_eq!(
            err,
            format!(
                "{f}:15:8: providers.claude.kind: `antropic` is not one of openai, anthropic\n\
                 {f}:16:12: providers.claude.base_url: must be https:// (got http://); keys are never sent in clear text\n\
                 {f}:17:18: providers.claude.key_credential: CREDENTIALS_DIRECTORY is not set (use LoadCredential= in the unit, or key_file)\n\
                 {f}:18:25: providers.claude.input_usd_per_million: -1 is not a price >= 0"
            )
        );
        let creds = dir.path().join("creds");
        std::fs::create_dir_all(&creds).ok();
        std::fs::write(creds.join("claude-key"), "sk-canary-456").ok();
        let fixed = text
            .replace("antropic", "anthropic")
            .replace("http://", "https://")
            .replace("= -1", "= 3");
        std::fs::write(&file, fixed).ok();
        let env = [(
            "CREDENTIALS_DIRECTORY".to_string(),
            creds.display().to_string(),
        )];
        let g = GatewayFile::load(&file, &env).unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<&str> = g
            .gateway
            .providers
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(names, ["claude", "openai"]);
        assert_eq!(g.gateway.providers[1].key.expose(), "sk-canary-123");
        assert!(!format!("{:?}", g.gateway).contains("canary"));
    }

    #[test]
    fn tls_and_auth_are_explicit_and_located() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir_all(dir.path().join("policies")).ok();
        let file = dir.path().join("gateway.toml");
        let load = |text: &str| {
            std::fs::write(&file, text).ok();
            GatewayFile::load(&file, &[])
                .err()
                .map(|d| d.to_string())
                .unwrap_or_default()
        };
        let f = file.display();
        // no [tls] at all: plain text is never the silent default
        let err = load("[policies]\npaths = [\"policies\"]\n");
        assert!(err.starts_with(&format!("{f}: no [tls] section")), "{err}");
        assert!(err.contains("plaintext = true"), "{err}");
        // both at once, a missing file, a token in clear instead of its hash
        let err = load(
            "[policies]\npaths = [\"policies\"]\n\n[tls]\nplaintext = true\nca_file = \"ca.pem\"\n\n\
             [auth]\noperators = [\"ops team\"]\n[[auth.tokens]]\ntenant = \"shop\"\nsha256 = \"ew_0123secret\"\n",
        );
        assert_eq!(
            err,
            format!(
                "{f}:5:13: tls.plaintext: plaintext = true with certificate files set: choose one\n\
                 {f}:12:10: auth.tokens[0].sha256: must be 64 hex digits: the SHA-256 of the token, never the token itself (`edgewise token new` prints both)\n\
                 {f}:9:14: auth.operators[0]: `ops team` is not a tenant name"
            )
        );
        assert!(!err.contains("ew_0123secret"));
        let err = load(
            "[policies]\npaths = [\"policies\"]\n\n[tls]\nca_file = \"ca.pem\"\ncert_file = \"gw.pem\"\n",
        );
        assert!(
            err.contains("tls.key_file or tls.key_credential is required"),
            "{err}"
        );
        assert!(err.contains(&format!("{f}:5:11: tls.ca_file: ")), "{err}");
    }

    #[test]
    fn limits_are_bounded_and_located() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir_all(dir.path().join("policies")).ok();
        let file = dir.path().join("gateway.toml");
        std::fs::write(
            &file,
            "[policies]\npaths = [\"policies\"]\n[tls]\nplaintext = true\n[limits]\nmax_texts = 0\nmax_tokens = 64\n",
        )
        .ok();
        let err = GatewayFile::load(&file, &[])
            .err()
            .map(|d| d.to_string())
            .unwrap_or_default();
        assert_eq!(
            err,
            format!(
                "{}:6:13: limits.max_texts: 0 is out of range 1..=100000",
                file.display()
            )
        );
        std::fs::write(
            &file,
            "[policies]\npaths = [\"policies\"]\n[tls]\nplaintext = true\n[limits]\nmax_tokens = 64\n",
        )
        .ok();
        let g = GatewayFile::load(&file, &[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(g.gateway.limits.max_tokens, 64);
        assert_eq!(g.gateway.limits.max_texts, 256);
    }

    #[test]
    fn the_shared_ledger_is_validated_and_its_password_never_shown() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir_all(dir.path().join("policies")).ok();
        let file = dir.path().join("gateway.toml");
        let head = "[policies]\npaths = [\"policies\"]\n[tls]\nplaintext = true\n[store]\nbackend = \"postgres\"\n";
        let load = |body: &str| {
            std::fs::write(&file, format!("{head}{body}")).ok();
            GatewayFile::load(&file, &[])
        };
        let err = |body: &str| load(body).err().map(|d| d.to_string()).unwrap_or_default();
        // a password written into the parameters is refused, and not echoed
        let e = err("postgres = \"host=db user=edgewise password=hunter2 dbname=ledger\"\n");
        assert_eq!(
            e,
            format!(
                "{}:7:12: store.postgres: holds a password: put it in password_file or password_credential instead",
                file.display()
            )
        );
        assert!(!e.contains("hunter2"));
        let e = err("postgres = \"host=db\"\npassword_file = \"missing\"\npool_size = 0\n");
        assert!(e.contains(":8:17: store.password_file: cannot read"), "{e}");
        assert!(
            e.contains(":9:13: store.pool_size: 0 is not in 1..=64"),
            "{e}"
        );
        assert!(err("").contains(":6:11: store.backend: the postgres backend needs"));
        std::fs::write(&file, "[policies]\npaths = [\"policies\"]\n[tls]\nplaintext = true\n[store]\nbackend = \"redis\"\n").ok();
        let e = GatewayFile::load(&file, &[])
            .err()
            .map(|d| d.to_string())
            .unwrap_or_default();
        assert!(
            e.contains(":6:11: store.backend: `redis` is not one of sled, postgres"),
            "{e}"
        );
        std::fs::write(dir.path().join("pw"), "s3cret\n").ok();
        let g = load("postgres = \"host=/run/postgresql user=edgewise dbname=ledger\"\npassword_file = \"pw\"\nlease_ms = 30000\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let shared = g
            .gateway
            .shared_ledger
            .unwrap_or_else(|| panic!("no shared ledger"));
        assert_eq!(shared.options.password.as_deref(), Some("s3cret"));
        assert_eq!(shared.lease, Duration::from_secs(30));
        assert!(!format!("{:?}", shared.options).contains("s3cret"));
        // sled stays the default
        std::fs::write(
            &file,
            "[policies]\npaths = [\"policies\"]\n[tls]\nplaintext = true\n",
        )
        .ok();
        let g = GatewayFile::load(&file, &[]).unwrap_or_else(|e| panic!("{e}"));
        assert!(g.gateway.shared_ledger.is_none());
    }
}
