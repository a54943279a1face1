//! Making credentials for a fleet: `edgewise certs init` / `certs issue` (the fleet CA and
//! certificates for gateways, nodes and tenants) and `edgewise token new` (a caller's bearer
//! token, written to a file; only its hash goes into `gateway.toml`).

use std::path::{Path, PathBuf};

use edgewise_tls::Identity;
use edgewise_tls::issue::{Ca, Validity, write_new};

use crate::client::CliError;

/// Which certificates to issue.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Subjects {
    /// What to issue certificates for: `gateway:ID`, `node:ID` (an agent; the id it has in
    /// the fleet) or `tenant:NAME` (a calling service's client certificate).
    #[arg(value_name = "KIND:NAME", value_parser = parse_subject)]
    pub subjects: Vec<Identity>,
    /// Host names and IP addresses gateways and nodes are dialled by (repeatable).
    #[arg(long = "host", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
    pub hosts: Vec<String>,
    /// Days the certificates are valid.
    #[arg(long, default_value_t = 365)]
    pub days: u32,
}

fn parse_subject(s: &str) -> Result<Identity, String> {
    let (kind, name) = s
        .split_once(':')
        .ok_or_else(|| format!("`{s}` is not KIND:NAME (gateway:ID, node:ID or tenant:NAME)"))?;
    if !edgewise_tls::valid_name(name) {
        return Err(format!("`{name}`: names are 1-128 of A-Z a-z 0-9 . _ -"));
    }
    match kind {
        "gateway" => Ok(Identity::Gateway(name.into())),
        "node" => Ok(Identity::Node(name.into())),
        "tenant" => Ok(Identity::Tenant(name.into())),
        _ => Err(format!("`{kind}` is not gateway, node or tenant")),
    }
}

fn usage(m: String) -> CliError {
    CliError::Usage(m)
}

fn io(path: &Path, e: std::io::Error) -> CliError {
    CliError::Usage(format!("{}: {e}", path.display()))
}

/// `certs init`: a new CA in `out` and the certificates asked for. Never overwrites a file.
pub fn certs_init(out: &Path, subjects: &Subjects) -> Result<Vec<PathBuf>, CliError> {
    std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
    let ca = Ca::generate(Validity::days(subjects.days.max(1) * 2))
        .map_err(|e| usage(format!("creating the CA: {e}")))?;
    let mut written = Vec::new();
    for (name, contents, private) in [
        ("ca.pem", &ca.cert_pem, false),
        ("ca.key", &ca.key_pem, true),
    ] {
        let p = out.join(name);
        write_new(&p, contents, private).map_err(|e| io(&p, e))?;
        written.push(p);
    }
    written.extend(issue(&ca, out, subjects)?);
    Ok(written)
}

/// `certs issue`: more certificates from the CA in `ca_dir` (ca.pem, ca.key) into `out`.
pub fn certs_issue(
    ca_dir: &Path,
    out: &Path,
    subjects: &Subjects,
) -> Result<Vec<PathBuf>, CliError> {
    let read = |n: &str| {
        let p = ca_dir.join(n);
        std::fs::read_to_string(&p).map_err(|e| io(&p, e))
    };
    let ca = Ca::from_pem(&read("ca.pem")?, &read("ca.key")?)
        .map_err(|e| usage(format!("{}: not a usable CA ({e})", ca_dir.display())))?;
    std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
    issue(&ca, out, subjects)
}

fn issue(ca: &Ca, out: &Path, s: &Subjects) -> Result<Vec<PathBuf>, CliError> {
    let mut written = Vec::new();
    for id in &s.subjects {
        let issued = ca
            .issue(id, &s.hosts, Validity::days(s.days.max(1)))
            .map_err(|e| usage(format!("{id}: {e}")))?;
        let stem = format!("{}-{}", kind(id), id.name());
        let cert = out.join(format!("{stem}.pem"));
        let key = out.join(format!("{stem}.key"));
        write_new(&cert, &issued.cert_pem, false).map_err(|e| io(&cert, e))?;
        write_new(&key, &issued.key_pem, true).map_err(|e| io(&key, e))?;
        written.extend([cert, key]);
    }
    Ok(written)
}

fn kind(id: &Identity) -> &'static str {
    match id {
        Identity::Node(_) => "node",
        Identity::Gateway(_) => "gateway",
        Identity::Tenant(_) => "tenant",
    }
}

/// `token new`: a random token for `tenant`, written to `out` (owner-only, never over an
/// existing file); returns the `gateway.toml` lines that accept it.
pub fn token_new(tenant: &str, out: &Path) -> Result<String, CliError> {
    if !edgewise_tls::valid_name(tenant) {
        return Err(usage(format!(
            "tenant `{tenant}`: names are 1-128 of A-Z a-z 0-9 . _ -"
        )));
    }
    let (token, hash) = edgewise_gateway::auth::new_token();
    write_new(out, &format!("{token}\n"), true).map_err(|e| io(out, e))?;
    Ok(format!(
        "[[auth.tokens]]\ntenant = \"{tenant}\"\nsha256 = \"{hash}\"\n"
    ))
}
