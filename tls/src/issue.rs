//! Issuing the fleet's certificates (`edgewise certs init`): one CA, and for every gateway,
//! node and tenant a key and a certificate naming its identity (and, for servers, the host
//! names and addresses peers dial).

use std::net::IpAddr;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

use crate::identity::Identity;

pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub cert_pem: String,
    pub key_pem: String,
}

/// A key and the certificate for it, PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From an hour ago (clock skew between boxes) for `days` days.
    pub fn days(days: u32) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(i64::from(days)),
        }
    }
}

fn serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // a positive integer
    SerialNumber::from_slice(&bytes)
}

impl Ca {
    pub fn generate(validity: Validity) -> Result<Self, rcgen::Error> {
        let mut p = CertificateParams::default();
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.distinguished_name
            .push(DnType::CommonName, "Edgewise fleet CA");
        p.not_before = validity.not_before;
        p.not_after = validity.not_after;
        p.serial_number = Some(serial());
        let key = KeyPair::generate()?;
        let key_pem = key.serialize_pem();
        let ca = CertifiedIssuer::self_signed(p.clone(), key)?;
        let cert_pem = ca.pem();
        Ok(Self {
            issuer: Issuer::new(p, KeyPair::from_pem(&key_pem)?),
            cert_pem,
            key_pem,
        })
    }

    /// An existing CA, to issue more certificates from it.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, rcgen::Error> {
        let issuer = Issuer::from_ca_cert_pem(cert_pem, KeyPair::from_pem(key_pem)?)?;
        Ok(Self {
            issuer,
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
        })
    }

    /// A certificate for `id`. `hosts` (DNS names or IP addresses) are the names a server is
    /// dialled by; a tenant's certificate is for clients only and takes none.
    pub fn issue(
        &self,
        id: &Identity,
        hosts: &[String],
        validity: Validity,
    ) -> Result<Issued, rcgen::Error> {
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, id.name());
        p.subject_alt_names = vec![SanType::URI(id.uri().try_into()?)];
        if !matches!(id, Identity::Tenant(_)) {
            for h in hosts {
                p.subject_alt_names.push(match h.parse::<IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName(h.clone().try_into()?),
                });
            }
        }
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = match id {
            Identity::Tenant(_) => vec![ExtendedKeyUsagePurpose::ClientAuth],
            // nodes and gateways both serve and dial each other
            _ => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        };
        p.not_before = validity.not_before;
        p.not_after = validity.not_after;
        p.serial_number = Some(serial());
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Writes `contents` to a new file (never over an existing one), readable by the owner only
/// when `private`; written to a temporary name first, so a crash leaves no half file.
pub fn write_new(path: &Path, contents: &str, private: bool) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if path.exists() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("{} already exists (not overwritten)", path.display()),
        ));
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&tmp)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
