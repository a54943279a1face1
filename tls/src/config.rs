//! Loading a node's TLS files into rustls configs, and replacing them in place (SIGHUP):
//! connections already open keep the session they have; new handshakes use the new files.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::identity::Identity;

/// Where a daemon's TLS material lives: the fleet CA, its certificate (chain) and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file that cannot be read or holds no usable item. Never carries file contents.
    #[error("{}: {reason}", path.display())]
    File { path: PathBuf, reason: String },
    #[error("{0}")]
    Invalid(String),
}

/// Whether a server asks its peers for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Every peer must present one the fleet CA issued (agents).
    Required,
    /// Peers may present one; requests without one must authenticate otherwise
    /// (gateways: callers may use bearer tokens instead).
    Optional,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn file_err(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// The CA certificates in `path` as a root store.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| file_err(path, e))?;
    if certs.is_empty() {
        return Err(file_err(path, "no PEM certificate in it"));
    }
    let mut roots = RootCertStore::empty();
    for c in certs {
        roots.add(c).map_err(|e| file_err(path, e))?;
    }
    Ok(roots)
}

/// A certificate chain and its key; the key file's contents never reach an error.
pub(crate) fn load_pair(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| file_err(cert, e))?;
    if chain.is_empty() {
        return Err(file_err(cert, "no PEM certificate in it"));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        file_err(
            key,
            match e {
                rustls::pki_types::pem::Error::Io(io) => io.to_string(),
                _ => "no PEM private key in it".to_string(),
            },
        )
    })?;
    Ok((chain, key_der))
}

/// Checks the leaf is issued by the CA, currently valid and names an identity.
fn check_leaf(
    roots: &Arc<RootCertStore>,
    chain: &[CertificateDer<'static>],
    files: &TlsFiles,
) -> Result<Identity, TlsError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        .build()
        .map_err(|e| TlsError::Invalid(format!("{}: {e}", files.ca.display())))?;
    verifier
        .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
        .map_err(|e| {
            file_err(
                &files.cert,
                format!("not accepted by the CA in {}: {e}", files.ca.display()),
            )
        })?;
    Identity::from_cert(&chain[0]).ok_or_else(|| {
        file_err(
            &files.cert,
            "names no Edgewise identity (one URI name spiffe://edgewise/<node|gateway|tenant>/<name>)",
        )
    })
}

struct Loaded {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    identity: Identity,
}

fn load(files: &TlsFiles, auth: ClientAuth) -> Result<Loaded, TlsError> {
    let roots = Arc::new(load_roots(&files.ca)?);
    let (chain, key) = load_pair(&files.cert, &files.key)?;
    let identity = check_leaf(&roots, &chain, files)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider());
    let verifier = match auth {
        ClientAuth::Required => verifier,
        ClientAuth::Optional => verifier.allow_unauthenticated(),
    }
    .build()
    .map_err(|e| TlsError::Invalid(format!("{}: {e}", files.ca.display())))?;
    let mismatch = |e: rustls::Error| {
        TlsError::Invalid(format!(
            "{} and {}: {e}",
            files.cert.display(),
            files.key.display()
        ))
    };
    let mut server = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(mismatch)?;
    server.alpn_protocols = vec![b"h2".to_vec()];
    let mut client = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(mismatch)?;
    client.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Loaded {
        server: Arc::new(server),
        client: Arc::new(client),
        identity,
    })
}

/// A daemon's TLS: server and client configs from its files, replaceable while running.
pub struct Tls {
    files: TlsFiles,
    auth: ClientAuth,
    current: RwLock<Loaded>,
}

impl Tls {
    pub fn load(files: TlsFiles, auth: ClientAuth) -> Result<Arc<Self>, TlsError> {
        let loaded = load(&files, auth)?;
        Ok(Arc::new(Self {
            files,
            auth,
            current: RwLock::new(loaded),
        }))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Loaded> {
        self.current.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn identity(&self) -> Identity {
        self.read().identity.clone()
    }

    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.read().server.clone()
    }

    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.read().client.clone()
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Reads the files again and, if they are valid and name the same identity, uses them
    /// for every new connection. On error the configs in use stay.
    pub fn reload(&self) -> Result<(), TlsError> {
        let loaded = load(&self.files, self.auth)?;
        let mut cur = self.current.write().unwrap_or_else(|p| p.into_inner());
        if loaded.identity != cur.identity {
            return Err(TlsError::Invalid(format!(
                "{}: names {}, but this process runs as {}; an identity change needs a restart",
                self.files.cert.display(),
                loaded.identity,
                cur.identity
            )));
        }
        *cur = loaded;
        Ok(())
    }
}

/// A client-only config for command-line tools: trusts the fleet CA and, when given a
/// certificate and key, presents them (agents require one; gateways accept one in place
/// of a bearer token).
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = load_roots(ca)?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid(e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => {
            let (chain, key_der) = load_pair(cert, key)?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                TlsError::Invalid(format!("{} and {}: {e}", cert.display(), key.display()))
            })?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issue::{Ca, Validity, write_new};
    use time::{Duration, OffsetDateTime};

    fn write(dir: &Path, name: &str, ca: &Ca, id: &Identity, v: Validity) -> TlsFiles {
        let issued = ca.issue(id, &["localhost".into()], v).unwrap();
        let ca_path = dir.join(format!("{name}-ca.pem"));
        let _ = std::fs::remove_file(&ca_path);
        write_new(&ca_path, &ca.cert_pem, false).unwrap();
        let (cert, key) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        let _ = std::fs::remove_file(&cert);
        let _ = std::fs::remove_file(&key);
        write_new(&cert, &issued.cert_pem, false).unwrap();
        write_new(&key, &issued.key_pem, true).unwrap();
        TlsFiles {
            ca: ca_path,
            cert,
            key,
        }
    }

    #[test]
    fn loads_a_node_certificate_and_names_its_identity() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate(Validity::days(1)).unwrap();
        let files = write(
            dir.path(),
            "a",
            &ca,
            &Identity::Node("edge-a".into()),
            Validity::days(1),
        );
        let tls = Tls::load(files.clone(), ClientAuth::Required).unwrap();
        assert_eq!(tls.identity(), Identity::Node("edge-a".into()));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&files.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "keys are written owner-only");
    }

    #[test]
    fn refuses_a_certificate_from_another_ca_or_expired() {
        let dir = tempfile::tempdir().unwrap();
        let ours = Ca::generate(Validity::days(1)).unwrap();
        let theirs = Ca::generate(Validity::days(1)).unwrap();
        let mut files = write(
            dir.path(),
            "x",
            &theirs,
            &Identity::Node("x".into()),
            Validity::days(1),
        );
        files.ca = write(
            dir.path(),
            "ours",
            &ours,
            &Identity::Node("o".into()),
            Validity::days(1),
        )
        .ca;
        let err = Tls::load(files, ClientAuth::Required)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("not accepted by the CA"), "{err}");

        let past = OffsetDateTime::now_utc() - Duration::days(2);
        let expired = Validity {
            not_before: past,
            not_after: past + Duration::days(1),
        };
        let files = write(
            dir.path(),
            "old",
            &ours,
            &Identity::Node("old".into()),
            expired,
        );
        let err = Tls::load(files, ClientAuth::Required)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("xpired"), "{err}");
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused_without_echoing_it() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate(Validity::days(1)).unwrap();
        let a = write(
            dir.path(),
            "a",
            &ca,
            &Identity::Node("a".into()),
            Validity::days(1),
        );
        let b = write(
            dir.path(),
            "b",
            &ca,
            &Identity::Node("b".into()),
            Validity::days(1),
        );
        let files = TlsFiles {
            key: b.key.clone(),
            ..a
        };
        let err = Tls::load(files, ClientAuth::Required)
            .err()
            .unwrap()
            .to_string();
        let key_text = std::fs::read_to_string(&b.key).unwrap();
        let body: String = key_text
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        assert!(!err.contains(&body[..40]), "{err}");
        assert!(err.contains("b.key"), "{err}");
    }

    #[test]
    fn reload_swaps_files_keeps_the_old_on_error_and_refuses_a_new_identity() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate(Validity::days(1)).unwrap();
        let files = write(
            dir.path(),
            "n",
            &ca,
            &Identity::Node("n".into()),
            Validity::days(1),
        );
        let tls = Tls::load(files.clone(), ClientAuth::Required).unwrap();
        let before = tls.server_config();
        // a renewed certificate for the same node
        write(
            dir.path(),
            "n",
            &ca,
            &Identity::Node("n".into()),
            Validity::days(30),
        );
        tls.reload().unwrap();
        assert!(!Arc::ptr_eq(&before, &tls.server_config()));
        // a broken key file: the configs in use stay
        let current = tls.server_config();
        std::fs::write(&files.key, "not a key").unwrap();
        assert!(tls.reload().is_err());
        assert!(Arc::ptr_eq(&current, &tls.server_config()));
        // a certificate for another node: refused
        write(
            dir.path(),
            "n",
            &ca,
            &Identity::Node("other".into()),
            Validity::days(1),
        );
        let err = tls.reload().err().unwrap().to_string();
        assert!(err.contains("needs a restart"), "{err}");
        assert_eq!(tls.identity(), Identity::Node("n".into()));
    }
}
