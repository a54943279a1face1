//! The gateway's own configuration (`gateway.toml`): raw shape → validated `GatewayFile`.
//! `EDGEWISE_SECTION__KEY` environment variables override the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use edgewise_diag::{Diagnostics, Layered};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGatewayConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub policies: RawPolicies,
    #[serde(default)]
    pub routing: RawRouting,
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
        if !problems.is_empty() {
            return Err(Diagnostics(problems));
        }
        Ok(Self {
            listen,
            gateway: crate::GatewayConfig {
                policies,
                id,
                retry_budget: retry_budget as usize,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_are_located_and_the_environment_overrides() {
        let dir = std::env::temp_dir().join(format!("edgewise-gw-config-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("policies")).ok();
        let file = dir.join("gateway.toml");
        std::fs::write(&file, "[server]\nlisten = \"here\"\n\n[policies]\npaths = [\"policies\", \"missing\"]\n\n[routing]\nretry_budget = 50\n").ok();
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
                 {f}:8:16: routing.retry_budget: 50 is more than 10",
                missing.display()
            )
        );
        std::fs::write(&file, "[policies]\npaths = [\"policies\"]\n").ok();
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
}
