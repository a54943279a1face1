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
fn load_pair(
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
