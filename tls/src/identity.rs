//! Who a certificate speaks for. Every certificate the fleet CA issues carries exactly one
//! SPIFFE-style URI name, `spiffe://edgewise/<kind>/<name>`: a node (agent), a gateway, or a
//! tenant (a calling service). A node's id is the name in its certificate, so a node cannot
//! report as another.

use std::fmt;

use rustls::pki_types::CertificateDer;

const PREFIX: &str = "spiffe://edgewise/";

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    Node(String),
    Gateway(String),
    Tenant(String),
}

impl Identity {
    pub fn uri(&self) -> String {
        let (kind, name) = self.parts();
        format!("{PREFIX}{kind}/{name}")
    }

    pub fn name(&self) -> &str {
        self.parts().1
    }

    fn parts(&self) -> (&'static str, &str) {
        match self {
            Identity::Node(n) => ("node", n),
            Identity::Gateway(n) => ("gateway", n),
            Identity::Tenant(n) => ("tenant", n),
        }
    }

    /// Parses `spiffe://edgewise/<kind>/<name>`.
    pub fn from_uri(uri: &str) -> Option<Identity> {
        let (kind, name) = uri.strip_prefix(PREFIX)?.split_once('/')?;
        if !valid_name(name) {
            return None;
        }
        let name = name.to_string();
        match kind {
            "node" => Some(Identity::Node(name)),
            "gateway" => Some(Identity::Gateway(name)),
            "tenant" => Some(Identity::Tenant(name)),
            _ => None,
        }
    }

    /// The identity a (verified) certificate names; `None` if it names none or several.
    pub fn from_cert(der: &CertificateDer<'_>) -> Option<Identity> {
        use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
        let (_, cert) = X509Certificate::from_der(der.as_ref()).ok()?;
        let san = cert.subject_alternative_name().ok()??;
        let mut found = san.value.general_names.iter().filter_map(|n| match n {
            GeneralName::URI(u) if u.starts_with(PREFIX) => Some(Identity::from_uri(u)),
            _ => None,
        });
        match (found.next(), found.next()) {
            (Some(id), None) => id,
            _ => None,
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, name) = self.parts();
        write!(f, "{kind} `{name}`")
    }
}

/// Names are what node ids and tenants may be: 1–128 of `[A-Za-z0-9._-]`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_round_trip_and_reject_strangers() {
        for id in [
            Identity::Node("edge-01".into()),
            Identity::Gateway("gw".into()),
            Identity::Tenant("billing.svc".into()),
        ] {
            assert_eq!(Identity::from_uri(&id.uri()), Some(id));
        }
        for bad in [
            "spiffe://other/node/a",
            "spiffe://edgewise/robot/a",
            "spiffe://edgewise/node/",
            "spiffe://edgewise/node/a/b",
            "spiffe://edgewise/node/a b",
        ] {
            assert_eq!(Identity::from_uri(bad), None, "{bad}");
        }
    }
}
