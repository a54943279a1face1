//! Who is calling: the tenant comes only from a credential — a client certificate the fleet
//! CA issued for a tenant, or a bearer token whose SHA-256 is in `gateway.toml`. Tokens are
//! never stored or logged in clear; a request carries one as `authorization: Bearer <token>`.
//!
//! The one exception is development: a plaintext gateway with no tokens configured takes the
//! tenant from the `x-edgewise-tenant` header, and says so at start.

use std::collections::HashMap;

use sha2::{Digest, Sha256};
use tonic::Request;

use crate::error::GatewayError;

/// How many bytes of randomness a token carries.
const TOKEN_BYTES: usize = 32;

#[derive(Debug, Clone, Default)]
pub struct Tokens {
    /// SHA-256 of the token → tenant.
    by_hash: HashMap<[u8; 32], String>,
}

impl Tokens {
    pub fn new(entries: impl IntoIterator<Item = ([u8; 32], String)>) -> Self {
        Self {
            by_hash: entries.into_iter().collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    fn tenant(&self, token: &str) -> Option<&str> {
        self.by_hash.get(&hash(token)).map(String::as_str)
    }
}

pub fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses 64 hex digits.
pub fn parse_hash(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// A new random token (`ew_` + 64 hex digits) and its hash for `gateway.toml`.
pub fn new_token() -> (String, String) {
    let bytes: [u8; TOKEN_BYTES] = rand::random();
    let token = format!("ew_{}", hex(&bytes));
    let h = hex(&hash(&token));
    (token, h)
}

/// How callers prove who they are.
#[derive(Debug, Clone)]
pub enum CallerAuth {
    /// A tenant certificate (when TLS is on) or a configured bearer token. `operators` are
    /// the tenants that may see the whole fleet, every tenant's spend and the audit log.
    Credentials {
        tokens: Tokens,
        certificates: bool,
        operators: Vec<String>,
    },
    /// Development (plaintext, no tokens): the tenant is whatever the header says.
    Header,
}

impl CallerAuth {
    /// The tenant a request speaks for.
    pub fn tenant<T>(&self, req: &Request<T>) -> Result<String, GatewayError> {
        match self {
            CallerAuth::Header => {
                crate::requests::contract::once(req.metadata(), "x-edgewise-tenant")?;
                req.metadata()
                    .get("x-edgewise-tenant")
                    .and_then(|v| v.to_str().ok())
                    .filter(|t| !t.is_empty())
                    .map(str::to_string)
                    .ok_or(GatewayError::NoTenant)
            }
            CallerAuth::Credentials {
                tokens,
                certificates,
                ..
            } => {
                if crate::requests::contract::sent_twice(req.metadata(), "authorization") {
                    return Err(GatewayError::Unauthenticated(
                        "the authorization header was sent more than once",
                    ));
                }
                if let Some(v) = req.metadata().get("authorization") {
                    let token = v
                        .to_str()
                        .ok()
                        .and_then(|v| v.strip_prefix("Bearer "))
                        .map(str::trim)
                        .ok_or(GatewayError::Unauthenticated(
                            "the authorization header is not `Bearer <token>`",
                        ))?;
                    return tokens.tenant(token).map(str::to_string).ok_or(
                        GatewayError::Unauthenticated(
                            "the bearer token is not one this gateway knows",
                        ),
                    );
                }
                match edgewise_tls::net::peer_identity(req) {
                    Some(edgewise_tls::Identity::Tenant(t)) if *certificates => Ok(t),
                    Some(other) => Err(GatewayError::WrongIdentity(other.to_string())),
                    None => Err(GatewayError::Unauthenticated(
                        "no credentials: present a tenant certificate or `authorization: Bearer <token>`",
                    )),
                }
            }
        }
    }
}

impl CallerAuth {
    /// Checks the caller may use the operator calls (fleet status, audit export, every
    /// tenant's spend). Development mode has no credentials, so only callers on this box
    /// (loopback) may.
    pub fn operator<T>(&self, req: &Request<T>) -> Result<(), GatewayError> {
        match self {
            CallerAuth::Header => loopback_only(req),
            CallerAuth::Credentials { operators, .. } => {
                let tenant = self.tenant(req)?;
                if operators.contains(&tenant) {
                    Ok(())
                } else {
                    Err(GatewayError::NotOperator(tenant))
                }
            }
        }
    }

    /// Checks the caller may read `tenant`'s spend (empty: everyone's): its own, or any as
    /// an operator.
    pub fn may_read_spend<T>(&self, req: &Request<T>, tenant: &str) -> Result<(), GatewayError> {
        match self {
            CallerAuth::Header if !tenant.is_empty() && self.tenant(req)? == tenant => Ok(()),
            CallerAuth::Header => loopback_only(req),
            CallerAuth::Credentials { .. } if self.tenant(req)? == tenant => Ok(()),
            CallerAuth::Credentials { .. } => self.operator(req),
        }
    }
}

/// Development mode's operator rule: the caller must be on this box.
fn loopback_only<T>(req: &Request<T>) -> Result<(), GatewayError> {
    match req.remote_addr() {
        Some(a) if a.ip().is_loopback() => Ok(()),
        other => Err(GatewayError::NotLoopback(other.map_or_else(
            || "an unknown address".to_string(),
            |a| a.ip().to_string(),
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(token: &str, tenant: &str) -> CallerAuth {
        CallerAuth::Credentials {
            tokens: Tokens::new([(hash(token), tenant.to_string())]),
            certificates: true,
            operators: vec!["ops".into()],
        }
    }

    fn req(header: Option<(&'static str, &str)>) -> Request<()> {
        let mut r = Request::new(());
        if let Some((k, v)) = header {
            r.metadata_mut().insert(k, v.parse().unwrap());
        }
        r
    }

    #[test]
    fn the_tenant_comes_from_the_token_not_the_header() {
        let a = auth("ew_secret", "shop");
        let mut r = req(Some(("authorization", "Bearer ew_secret")));
        r.metadata_mut()
            .insert("x-edgewise-tenant", "billing".parse().unwrap());
        assert_eq!(a.tenant(&r).ok().as_deref(), Some("shop"));
    }

    #[test]
    fn missing_wrong_or_malformed_credentials_are_unauthenticated() {
        let a = auth("ew_secret", "shop");
        for r in [
            req(None),
            req(Some(("x-edgewise-tenant", "shop"))),
            req(Some(("authorization", "Bearer ew_other"))),
            req(Some(("authorization", "Basic ew_secret"))),
        ] {
            let e = a.tenant(&r).err().unwrap();
            assert!(matches!(e, GatewayError::Unauthenticated(_)), "{e}");
            assert!(!e.to_string().contains("ew_"), "never echo a token: {e}");
        }
    }

    #[test]
    fn only_operators_reach_operator_calls() {
        let a = CallerAuth::Credentials {
            tokens: Tokens::new([
                (hash("ew_shop"), "shop".to_string()),
                (hash("ew_ops"), "ops".to_string()),
            ]),
            certificates: false,
            operators: vec!["ops".into()],
        };
        let shop = req(Some(("authorization", "Bearer ew_shop")));
        assert!(matches!(a.operator(&shop), Err(GatewayError::NotOperator(t)) if t == "shop"));
        let ops = req(Some(("authorization", "Bearer ew_ops")));
        assert!(a.operator(&ops).is_ok());
        assert!(a.may_read_spend(&shop, "shop").is_ok());
        assert!(matches!(
            a.may_read_spend(&shop, ""),
            Err(GatewayError::NotOperator(_))
        ));
        assert!(a.may_read_spend(&ops, "shop").is_ok());
    }

    #[test]
    fn without_credentials_operator_calls_are_for_loopback_callers_only() {
        let from = |addr: &str, tenant: &str| {
            let mut r = req(Some(("x-edgewise-tenant", tenant)));
            r.extensions_mut()
                .insert(tonic::transport::server::TcpConnectInfo {
                    local_addr: None,
                    remote_addr: Some(addr.parse().unwrap()),
                });
            r
        };
        let dev = CallerAuth::Header;
        assert!(dev.operator(&from("127.0.0.1:5000", "dev")).is_ok());
        assert!(dev.operator(&from("[::1]:5000", "dev")).is_ok());
        let far = from("192.0.2.7:5000", "shop");
        let e = dev.operator(&far).unwrap_err();
        assert!(
            matches!(&e, GatewayError::NotLoopback(a) if a == "192.0.2.7"),
            "{e}"
        );
        assert!(e.to_string().contains("only to callers on this box"), "{e}");
        // a tenant's own spend is its own; everyone's or another's is an operator call
        assert!(dev.may_read_spend(&far, "shop").is_ok());
        assert!(dev.may_read_spend(&far, "billing").is_err());
        assert!(dev.may_read_spend(&far, "").is_err());
        assert!(dev.may_read_spend(&from("127.0.0.1:1", "shop"), "").is_ok());
        // no peer address at all is not loopback
        assert!(dev.operator(&req(None)).is_err());
    }

    #[test]
    fn tokens_round_trip_through_their_hash() {
        let (token, h) = new_token();
        assert!(token.starts_with("ew_") && token.len() == 67);
        assert_eq!(parse_hash(&h), Some(hash(&token)));
        assert_eq!(parse_hash("zz"), None);
    }
}
