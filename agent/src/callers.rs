//! Who may call an agent. With mutual TLS on, every caller holds a fleet certificate, but not
//! every holder may run inference here: gateways may, and so may the tenants an operator names
//! in `server.operators` (for `edgewise-agent call`). A tenant service going around the gateway
//! would skip its policy, budget and audit, so it is refused. In plain-text mode (development)
//! there are no identities and nothing to check.

use edgewise_tls::Identity;

use crate::error::AgentError;

/// A rule for who may make a call: (TLS on, the peer's identity, `server.operators`).
pub type Rule = fn(bool, Option<&Identity>, &[String]) -> Result<(), AgentError>;

/// Admits or refuses a caller by the identity in its verified certificate.
pub fn admit(tls: bool, peer: Option<&Identity>, operators: &[String]) -> Result<(), AgentError> {
    if !tls {
        return Ok(());
    }
    match peer {
        Some(Identity::Gateway(_)) => Ok(()),
        Some(Identity::Tenant(t)) if operators.iter().any(|o| o == t) => Ok(()),
        Some(other) => Err(AgentError::CallerNotAllowed(format!(
            "{} may not call this agent: agents serve gateways and the tenants in server.operators",
            other.uri()
        ))),
        None => Err(AgentError::CallerNotAllowed(
            "a caller without a fleet identity may not call this agent".into(),
        )),
    }
}

/// Admits a caller to the operator calls (load, unload, pin, list): the tenants in
/// `server.operators` only; gateways route requests but do not manage models.
pub fn admit_operator(
    tls: bool,
    peer: Option<&Identity>,
    operators: &[String],
) -> Result<(), AgentError> {
    if !tls {
        return Ok(());
    }
    match peer {
        Some(Identity::Tenant(t)) if operators.iter().any(|o| o == t) => Ok(()),
        Some(other) => Err(AgentError::CallerNotAllowed(format!(
            "{} may not manage this agent's models: only the tenants in server.operators may",
            other.uri()
        ))),
        None => Err(AgentError::CallerNotAllowed(
            "a caller without a fleet identity may not manage this agent's models".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateways_and_named_operators_only() {
        let ops = vec!["ops".to_string()];
        let gw = Identity::Gateway("gw-1".into());
        assert!(admit(true, Some(&gw), &[]).is_ok());
        assert!(admit(true, Some(&Identity::Tenant("ops".into())), &ops).is_ok());
        for (peer, says) in [
            (
                Some(Identity::Tenant("shop".into())),
                "spiffe://edgewise/tenant/shop may not",
            ),
            (
                Some(Identity::Node("edge-b".into())),
                "spiffe://edgewise/node/edge-b may not",
            ),
            (None, "without a fleet identity"),
        ] {
            let e = admit(true, peer.as_ref(), &ops)
                .err()
                .map(|e| e.to_string());
            assert!(
                e.as_deref().is_some_and(|e| e.contains(says)),
                "{peer:?}: {e:?}"
            );
        }
        // no identities in plain text: nothing to check
        assert!(admit(false, None, &[]).is_ok());
    }

    #[test]
    fn only_named_operators_manage_models() {
        let ops = vec!["ops".to_string()];
        assert!(admit_operator(true, Some(&Identity::Tenant("ops".into())), &ops).is_ok());
        let e = admit_operator(true, Some(&Identity::Gateway("gw".into())), &ops)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("spiffe://edgewise/gateway/gw may not manage"),
            "{e}"
        );
        assert!(admit_operator(true, None, &ops).is_err());
        assert!(admit_operator(false, None, &[]).is_ok());
    }
}
