//! TLS to services outside the fleet (hosted providers, telemetry collectors): the system's
//! roots plus, optionally, one extra CA file; no client certificate.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// A client config trusting the system's roots and the certificates in `extra_ca`; the
/// caller sets ALPN. `what` names the peers in the warning when the system has no roots.
pub fn public_client_config(
    extra_ca: Option<&Path>,
    what: &str,
) -> Result<rustls::ClientConfig, String> {
    client_config_with_identity(extra_ca, None, what)
}

/// As `public_client_config`, presenting the certificate chain and key in `identity`
/// (`(cert_file, key_file)`) when the server asks for one (a database that authenticates
/// clients by certificate). The key's contents never reach an error.
pub fn client_config_with_identity(
    extra_ca: Option<&Path>,
    identity: Option<(&Path, &Path)>,
    what: &str,
) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    if let Some(path) = extra_ca {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<_, _>>())
            .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "ca_file {}: no PEM certificate in it",
                path.display()
            ));
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
        }
    } else if added == 0 {
        tracing::warn!(
            "no system CA certificates found; HTTPS to {what} will fail without a ca_file"
        );
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let (chain, key) = crate::config::load_pair(cert, key).map_err(|e| e.to_string())?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("{}: {e}", cert.display()))
        }
    }
}
