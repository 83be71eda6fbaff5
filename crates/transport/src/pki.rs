//! The cluster's public-key infrastructure: a private CA, the certificates it issues, and
//! the rustls configurations that make every agent ⇄ coordinator connection mutual TLS.
//!
//! Invariants:
//! - A certificate *is* an identity. Its subject common name (CN) is the node (or
//!   coordinator, or operator) name, and its organisational unit (OU) is the role:
//!   `agent`, `coordinator` or `operator`. The coordinator derives who is talking from
//!   the verified certificate alone, never from what the peer says about itself.
//! - Only certificates chaining to the cluster CA are accepted, in both directions.
//! - Private keys are written with mode 0600 and existing files are never overwritten:
//!   re-running `certs init` on a live cluster must not silently replace its CA.
//!
//! Trade-off: there is no revocation list yet; a lost node key is handled by rotating the
//! CA. Leaf certificates default to a one-year lifetime to bound that exposure.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

/// ALPN protocol id of the agent ⇄ coordinator protocol. Versioning happens inside the
/// protocol (see `corral_proto::wire`), so that an old peer gets a readable refusal instead of
/// a TLS handshake failure.
pub const ALPN: &[u8] = b"corral";

/// What a certificate allows its holder to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Agent,
    Coordinator,
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Coordinator => "coordinator",
            Role::Operator => "operator",
        }
    }

    pub const ALL: [Role; 3] = [Role::Agent, Role::Coordinator, Role::Operator];

    fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Role, String> {
        Role::parse(s)
            .ok_or_else(|| format!("{s:?} is not a role; use agent, coordinator or operator"))
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name and role read from a verified certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub role: Role,
}

pub use corral_proto::names::validate_name;

/// Paths of the CA files inside a CA directory.
pub fn ca_paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("ca.pem"), dir.join("ca.key"))
}

/// Creates a new cluster CA in `out` (`ca.pem`, `ca.key`). Refuses to overwrite.
pub fn init_ca(out: &Path, common_name: &str, days: u32) -> Result<(PathBuf, PathBuf)> {
    let (cert_path, key_path) = ca_paths(out);
    refuse_existing(&[&cert_path, &key_path])?;
    let key = KeyPair::generate().context("generating the CA key")?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = dn(common_name, "ca");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, days);
    let cert = params.self_signed(&key).context("self-signing the CA")?;
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    write_file(&cert_path, cert.pem().as_bytes(), 0o644)?;
    write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    Ok((cert_path, key_path))
}

/// A certificate and key issued by the CA, in PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Loaded CA material, able to issue many certificates without re-reading files.
pub struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    pub fn load(dir: &Path) -> Result<Ca> {
        let (cert_path, key_path) = ca_paths(dir);
        let cert_pem = fs::read_to_string(&cert_path).with_context(|| {
            format!(
                "reading CA certificate {} (create one with `corral certs init --out {}`)",
                cert_path.display(),
                dir.display()
            )
        })?;
        let key_pem = fs::read_to_string(&key_path)
            .with_context(|| format!("reading CA key {}", key_path.display()))?;
        let key = KeyPair::from_pem(&key_pem)
            .with_context(|| format!("{} is not a PEM private key", key_path.display()))?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)
            .with_context(|| format!("{} is not a CA certificate", cert_path.display()))?;
        Ok(Ca { cert_pem, issuer })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a leaf certificate for `name` with `role`. `extra_sans` are additional DNS
    /// names or IP addresses the holder answers to (coordinators need the address agents
    /// dial).
    pub fn issue(
        &self,
        name: &str,
        role: Role,
        extra_sans: &[String],
        days: u32,
    ) -> Result<Issued> {
        validate_name(name).map_err(anyhow::Error::msg)?;
        let key = KeyPair::generate().context("generating a key")?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = dn(name, role.as_str());
        let mut sans = vec![name.to_string()];
        sans.extend(extra_sans.iter().cloned());
        sans.dedup();
        for san in sans {
            params
                .subject_alt_names
                .push(match san.parse::<std::net::IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName(
                        san.clone()
                            .try_into()
                            .with_context(|| format!("{san:?} is not a valid DNS name"))?,
                    ),
                });
        }
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = match role {
            Role::Coordinator => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            Role::Agent | Role::Operator => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, days);
        let cert = params
            .signed_by(&key, &self.issuer)
            .context("signing the certificate")?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues a certificate and writes `NAME.pem`, `NAME.key` and (if absent) `ca.pem`
    /// into `out`. Refuses to overwrite an existing certificate or key.
    pub fn issue_to_dir(
        &self,
        name: &str,
        role: Role,
        extra_sans: &[String],
        days: u32,
        out: &Path,
    ) -> Result<TlsFiles> {
        let files = TlsFiles {
            ca: out.join("ca.pem"),
            cert: out.join(format!("{name}.pem")),
            key: out.join(format!("{name}.key")),
        };
        refuse_existing(&[&files.cert, &files.key])?;
        let issued = self.issue(name, role, extra_sans, days)?;
        fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        write_file(&files.cert, issued.cert_pem.as_bytes(), 0o644)?;
        write_file(&files.key, issued.key_pem.as_bytes(), 0o600)?;
        if !files.ca.exists() {
            write_file(&files.ca, self.cert_pem.as_bytes(), 0o644)?;
        }
        Ok(files)
    }
}

/// Where a daemon finds its CA certificate, its own certificate and its key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Certificates and key loaded from [`TlsFiles`], checked for consistency.
pub struct TlsMaterial {
    pub roots: Arc<rustls::RootCertStore>,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub identity: Identity,
}

impl TlsFiles {
    pub fn load(&self) -> Result<TlsMaterial> {
        let ca: Vec<CertificateDer<'static>> = read_certs(&self.ca)?;
        let mut roots = rustls::RootCertStore::empty();
        for c in ca {
            roots
                .add(c)
                .with_context(|| format!("{}: not a usable CA certificate", self.ca.display()))?;
        }
        let chain = read_certs(&self.cert)?;
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .with_context(|| format!("{}: cannot read a PEM private key", self.key.display()))?;
        let identity = identity_of(&chain[0])
            .with_context(|| format!("{}: no corral identity", self.cert.display()))?;
        Ok(TlsMaterial {
            roots: Arc::new(roots),
            chain,
            key,
            identity,
        })
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read certificate file {}", path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("{}: not a PEM certificate file", path.display()))?;
    if certs.is_empty() {
        bail!("{}: holds no certificate", path.display());
    }
    Ok(certs)
}

/// Reads the corral identity (CN = name, OU = role) from a DER certificate.
pub fn identity_of(cert: &CertificateDer<'_>) -> Result<Identity> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| anyhow::anyhow!("unparseable certificate: {e}"))?;
    let subject = x509.subject();
    let name = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .context("certificate has no common name")?
        .to_string();
    let role_str = subject
        .iter_organizational_unit()
        .next()
        .and_then(|ou| ou.as_str().ok())
        .context(
            "certificate has no organisational unit (role); issue it with `corral certs issue`",
        )?;
    let role = Role::parse(role_str).with_context(|| {
        format!("certificate role {role_str:?} is not agent, coordinator or operator")
    })?;
    Ok(Identity { name, role })
}

/// The identity of the peer of an established QUIC connection.
pub fn peer_identity(conn: &quinn::Connection) -> Result<Identity> {
    let certs = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .context("peer presented no certificate")?;
    identity_of(
        certs
            .first()
            .context("peer presented an empty certificate chain")?,
    )
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// QUIC server configuration for the coordinator: requires a client certificate from the
/// cluster CA.
pub fn quic_server_config(
    tls: &TlsMaterial,
    transport: quinn::TransportConfig,
) -> Result<quinn::ServerConfig> {
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(tls.roots.clone(), provider())
            .build()
            .context("building the client certificate verifier")?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(tls.chain.clone(), tls.key.clone_key())
        .context("the coordinator certificate and key do not match")?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(cfg)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(transport));
    Ok(server)
}

/// QUIC client configuration for an agent: presents its certificate and trusts only the
/// cluster CA.
pub fn quic_client_config(
    tls: &TlsMaterial,
    transport: quinn::TransportConfig,
) -> Result<quinn::ClientConfig> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(tls.roots.clone())
        .with_client_auth_cert(tls.chain.clone(), tls.key.clone_key())
        .context("the agent certificate and key do not match")?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(cfg)?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(Arc::new(transport));
    Ok(client)
}

/// rustls server configuration for the HTTP API when it is served over TLS.
pub fn https_server_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig> {
    let chain = read_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("{}: cannot read a PEM private key", key.display()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the API certificate and key do not match")?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

fn dn(common_name: &str, unit: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationalUnitName, unit);
    dn.push(DnType::OrganizationName, "corral");
    dn
}

fn set_validity(params: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
}

fn refuse_existing(paths: &[&Path]) -> Result<()> {
    for p in paths {
        if p.exists() {
            bail!(
                "{} already exists; refusing to overwrite it (move it away first if you mean to replace it)",
                p.display()
            );
        }
    }
    Ok(())
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificate_carries_name_and_role() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), "test CA", 30).unwrap();
        let ca = Ca::load(dir.path()).unwrap();
        let files = ca
            .issue_to_dir("gpu-07", Role::Agent, &[], 30, &dir.path().join("n"))
            .unwrap();
        let tls = files.load().unwrap();
        assert_eq!(
            tls.identity,
            Identity {
                name: "gpu-07".into(),
                role: Role::Agent
            }
        );
    }

    #[test]
    fn init_refuses_to_overwrite_an_existing_ca() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), "test CA", 30).unwrap();
        let err = init_ca(dir.path(), "test CA", 30).unwrap_err().to_string();
        assert!(err.contains("already exists"), "{err}");
    }

    #[test]
    fn invalid_node_names_are_refused_with_the_rule() {
        for bad in ["", "-x", "a b", "x/y", &"n".repeat(64)] {
            let err = validate_name(bad).unwrap_err();
            assert!(err.contains("letters, digits"), "{err}");
        }
        validate_name("gpu-node_01.rack3").unwrap();
    }

    #[test]
    fn key_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (_, key) = init_ca(dir.path(), "test CA", 30).unwrap();
        let mode = fs::metadata(key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
