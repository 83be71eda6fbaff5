//! The cluster's public-key infrastructure: a private CA, the certificates it issues, and
//! the rustls configurations that make every agent ⇄ coordinator connection mutual TLS.
//!
//! Invariants:
//! - A certificate *is* an identity. Its subject common name (CN) is the node (or
//!   coordinator, or operator) name, and its organisational unit (OU) is the role:
//!   `agent`, `coordinator` or `operator`. The coordinator derives who is talking from
//!   the verified certificate alone, never from what the peer says about itself.
//! - Only certificates chaining to the cluster CA are accepted, in both directions.
//! - The servers that verify client certificates never resume TLS sessions: rustls does
//!   not re-verify a client certificate on resumption, so a ticket would outlive a
//!   revocation.
//! - Private keys are written with mode 0600 and existing files are never overwritten:
//!   re-running `certs init` on a live cluster must not silently replace its CA.
//!
//! - Every certificate written by [`Ca::issue_to_dir`] has a random serial and is
//!   recorded beside the CA ([`crate::issued`]), so it can be revoked by name or serial;
//!   the coordinator refuses revoked certificates at the handshake and closes connections
//!   whose certificate gets revoked ([`crate::crl`]).
//!
//! Trade-off: revocation reaches the coordinator as a file (a CRL it re-reads), not by a
//! protocol such as OCSP: the cluster has one verifier, and a file needs no service that
//! could be down. Leaf certificates still default to a one-year lifetime to bound what a
//! CRL that never reached the coordinator would leave open.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
/// Certificates as rustls hands them over (re-exported for the daemons).
pub use rustls::pki_types::CertificateDer;
use rustls::pki_types::PrivateKeyDer;
use serde::{Deserialize, Serialize};

pub use crate::crl::{refused_as_revoked, Revocations, Serial};
use crate::issued::{IssuedCert, CRL_FILE};

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

/// Why a certificate carries no corral identity or serial.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PkiError {
    #[error("the peer presented no certificate")]
    NoCertificate,
    #[error("unparseable certificate: {0}")]
    Unparseable(String),
    #[error("certificate has no common name")]
    NoCommonName,
    #[error("certificate has no organisational unit (role); issue it with `corral certs issue`")]
    NoRole,
    #[error("certificate role {0:?} is not agent, coordinator or operator")]
    UnknownRole(String),
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
    pub serial: Serial,
    pub not_after: SystemTime,
}

/// A certificate issued to a requester's own key ([`Ca::issue_for_request`]).
pub struct IssuedForRequest {
    pub cert_pem: String,
    pub serial: Serial,
    pub not_after: SystemTime,
}

/// A fresh key and a certificate request for it, in PEM, for a node joining with a
/// bootstrap token: the key stays here, the request goes to the coordinator. The
/// request's subject is only a hint; the coordinator names the certificate.
pub fn new_request(hint: &str) -> Result<(String, String)> {
    let key = KeyPair::generate().context("generating a key")?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = dn(hint, Role::Agent.as_str());
    let csr = params
        .serialize_request(&key)
        .context("making the certificate request")?;
    Ok((
        key.serialize_pem(),
        csr.pem().context("encoding the certificate request")?,
    ))
}

/// Checks that `csr_pem` is a PEM PKCS#10 request whose signature holds, without
/// issuing anything.
pub fn check_request(csr_pem: &str) -> Result<()> {
    rcgen::CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
        anyhow::anyhow!("not a valid PEM certificate request (PKCS#10) with a good signature: {e}")
    })?;
    Ok(())
}

/// A leaf certificate's parameters: CN = `name`, OU = `role`, SANs, usages, a fresh
/// random serial, `days` of validity.
fn leaf_params(
    name: &str,
    role: Role,
    extra_sans: &[String],
    days: u32,
) -> Result<(CertificateParams, Serial, SystemTime)> {
    validate_name(name).map_err(anyhow::Error::msg)?;
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
    let serial = Serial::random()
        .map_err(|_| anyhow::anyhow!("the system random number generator failed"))?;
    params.serial_number = Some(SerialNumber::from_slice(serial.as_bytes()));
    set_validity(&mut params, days);
    let not_after = SystemTime::from(params.not_after);
    Ok((params, serial, not_after))
}

/// Loaded CA material, able to issue many certificates without re-reading files.
pub struct Ca {
    /// The CA directory: `ca.pem`, `ca.key` and the record of what was issued.
    pub(crate) dir: PathBuf,
    pub(crate) cert_pem: String,
    pub(crate) issuer: Issuer<'static, KeyPair>,
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
        Ok(Ca {
            dir: dir.to_path_buf(),
            cert_pem,
            issuer,
        })
    }

    /// The CA directory this was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a leaf certificate for `name` with `role`, with a fresh random serial.
    /// `extra_sans` are additional DNS names or IP addresses the holder answers to
    /// (coordinators need the address agents dial). Nothing is recorded: use
    /// [`Ca::issue_to_dir`] for certificates that must be revocable by name.
    pub fn issue(
        &self,
        name: &str,
        role: Role,
        extra_sans: &[String],
        days: u32,
    ) -> Result<Issued> {
        let key = KeyPair::generate().context("generating a key")?;
        let (params, serial, not_after) = leaf_params(name, role, extra_sans, days)?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .context("signing the certificate")?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial,
            not_after,
        })
    }

    /// Issues an agent certificate for `name` to the key of a PKCS#10 request (TLS
    /// bootstrap: the key never leaves the node), and records it beside the CA so it
    /// can be revoked by name. Only the request's key is used: its signature is checked
    /// (the sender holds the key), and the subject, names and extensions it asks for
    /// are ignored; the certificate says what `name` and [`Role::Agent`] say.
    pub fn issue_for_request(
        &self,
        csr_pem: &str,
        name: &str,
        days: u32,
    ) -> Result<IssuedForRequest> {
        let request = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
            anyhow::anyhow!(
                "not a valid PEM certificate request (PKCS#10) with a good signature: {e}"
            )
        })?;
        let (params, serial, not_after) = leaf_params(name, Role::Agent, &[], days)?;
        let signed = rcgen::CertificateSigningRequestParams {
            params,
            public_key: request.public_key,
        }
        .signed_by(&self.issuer)
        .context("signing the certificate")?;
        self.record(IssuedCert {
            serial: serial.clone(),
            name: name.to_string(),
            role: Role::Agent,
            issued_at: crate::issued::now_s(),
            not_after,
            revoked_at: None,
        })?;
        Ok(IssuedForRequest {
            cert_pem: signed.pem(),
            serial,
            not_after,
        })
    }

    /// Issues a certificate, records it beside the CA ([`crate::issued`]), and writes
    /// `NAME.pem`, `NAME.key` and (if absent) `ca.pem` into `out`. Refuses to overwrite an
    /// existing certificate or key.
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
            crl: None,
        };
        refuse_existing(&[&files.cert, &files.key])?;
        let issued = self.issue(name, role, extra_sans, days)?;
        self.record(IssuedCert {
            serial: issued.serial.clone(),
            name: name.to_string(),
            role,
            issued_at: crate::issued::now_s(),
            not_after: issued.not_after,
            revoked_at: None,
        })?;
        fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        write_file(&files.cert, issued.cert_pem.as_bytes(), 0o644)?;
        write_file(&files.key, issued.key_pem.as_bytes(), 0o600)?;
        if !files.ca.exists() {
            write_file(&files.ca, self.cert_pem.as_bytes(), 0o644)?;
        }
        Ok(files)
    }
}

/// Where a daemon finds its CA certificate, its own certificate and its key, and the
/// coordinator its certificate revocation list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CRL the coordinator applies (written by `corral certs revoke`), re-read while
    /// it runs. Absent: `crl.pem` beside `ca`, if and when that file exists. Set: the file
    /// must exist. Agents do not read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl: Option<PathBuf>,
}

/// Certificates and key loaded from [`TlsFiles`], checked for consistency.
pub struct TlsMaterial {
    pub roots: Arc<rustls::RootCertStore>,
    /// The CA certificates `roots` was made from (CRLs are checked against them).
    pub ca_certs: Vec<CertificateDer<'static>>,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub identity: Identity,
}

impl TlsFiles {
    /// The CRL's path, and whether it was configured (`false`: the default beside `ca`).
    pub fn crl_path(&self) -> (PathBuf, bool) {
        match &self.crl {
            Some(p) => (p.clone(), true),
            None => (
                self.ca
                    .parent()
                    .map(|d| d.join(CRL_FILE))
                    .unwrap_or_else(|| PathBuf::from(CRL_FILE)),
                false,
            ),
        }
    }

    pub fn load(&self) -> Result<TlsMaterial> {
        let ca: Vec<CertificateDer<'static>> = read_certs(&self.ca)?;
        let mut roots = rustls::RootCertStore::empty();
        for c in ca.iter().cloned() {
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
            ca_certs: ca,
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
pub fn identity_of(cert: &CertificateDer<'_>) -> Result<Identity, PkiError> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| PkiError::Unparseable(e.to_string()))?;
    let subject = x509.subject();
    let name = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or(PkiError::NoCommonName)?
        .to_string();
    let role_str = subject
        .iter_organizational_unit()
        .next()
        .and_then(|ou| ou.as_str().ok())
        .ok_or(PkiError::NoRole)?;
    let role = Role::parse(role_str).ok_or_else(|| PkiError::UnknownRole(role_str.into()))?;
    Ok(Identity { name, role })
}

/// The serial number of a DER certificate.
pub fn serial_of(cert: &CertificateDer<'_>) -> Result<Serial, PkiError> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| PkiError::Unparseable(e.to_string()))?;
    Ok(Serial::from_der_integer(x509.raw_serial()))
}

/// The serial number of the (first) certificate in a PEM file.
pub fn serial_of_file(path: &Path) -> Result<Serial> {
    let certs = read_certs(path)?;
    serial_of(&certs[0]).with_context(|| format!("{}", path.display()))
}

/// The identity of a peer from the certificate chain its TLS handshake presented (end
/// entity first, as rustls gives it: `peer_certificates()` of a server connection).
/// The chain must have been verified by the handshake (a verifier from
/// [`Revocations::client_verifier`]); this only reads what it names.
pub fn peer_chain_identity(chain: &[CertificateDer<'_>]) -> Result<Identity, PkiError> {
    identity_of(chain.first().ok_or(PkiError::NoCertificate)?)
}

/// The identity of the peer of an established QUIC connection.
pub fn peer_identity(conn: &quinn::Connection) -> Result<Identity> {
    let certs = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .context("peer presented no certificate")?;
    Ok(peer_chain_identity(&certs)?)
}

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// QUIC server configuration for the coordinator: requires a client certificate from the
/// cluster CA that the revocation lists in force do not revoke (checked at every
/// handshake against the lists of that moment: a reload needs no new configuration).
pub fn quic_server_config(
    tls: &TlsMaterial,
    transport: quinn::TransportConfig,
    revocations: &Revocations,
) -> Result<quinn::ServerConfig> {
    let verifier = revocations.client_verifier(true);
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(tls.chain.clone(), tls.key.clone_key())
        .context("the coordinator certificate and key do not match")?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    no_resumption(&mut cfg);
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

/// rustls server configuration for the HTTPS API that *asks* for a client certificate:
/// one from the cluster CA that the revocation lists in force do not revoke is accepted
/// (read who it is with [`peer_chain_identity`]); any other certificate fails the
/// handshake; a client without one gets through unauthenticated, for the API to demand
/// another credential (a token). Revocations apply to new handshakes as soon as they are
/// reloaded; a connection kept alive keeps the identity it was accepted with, so a server
/// that must drop revoked operators at once checks [`Revocations::revoked`] per request.
pub fn https_server_config_with_clients(
    cert: &Path,
    key: &Path,
    revocations: &Revocations,
) -> Result<rustls::ServerConfig> {
    let chain = read_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("{}: cannot read a PEM private key", key.display()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(revocations.client_verifier(false))
        .with_single_cert(chain, key)
        .context("the API certificate and key do not match")?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    no_resumption(&mut cfg);
    Ok(cfg)
}

/// Turns TLS session resumption off. rustls does not verify the client certificate again
/// when a session resumes: a revoked certificate holding a ticket from before its
/// revocation would be let in (and its hello would replace the real node's connection).
/// Every handshake is a full one, which agents (one connection, reconnecting rarely) and
/// API clients can afford.
fn no_resumption(cfg: &mut rustls::ServerConfig) {
    // No session ids to resume from, and no TLS 1.3 tickets sent (stateful or not).
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
}

fn dn(common_name: &str, unit: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationalUnitName, unit);
    dn.push(DnType::OrganizationName, "corral");
    dn
}

fn set_validity(params: &mut CertificateParams, days: u32) {
    // Whole seconds: what the certificate encodes, and what the record keeps.
    let now = time::OffsetDateTime::now_utc();
    let now = now.replace_nanosecond(0).unwrap_or(now);
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

/// Replaces `path` with `bytes` atomically: a temporary file in the same directory,
/// written, fsynced and renamed over it, then the directory fsynced. Readers see the old
/// content or the new one, never a part.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .with_context(|| format!("{} names no file", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    // Left by a crashed run that had this process id; never anyone's live file.
    let _ = fs::remove_file(&tmp);
    let written = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
    // The rename is durable once the directory is; a failure here loses nothing already
    // visible, so it is not an error.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
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
    fn a_certificate_request_gets_the_assigned_name_not_the_one_it_asks_for() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), "test CA", 30).unwrap();
        let ca = Ca::load(dir.path()).unwrap();
        let (key_pem, csr_pem) = new_request("coordinator").unwrap();
        let issued = ca.issue_for_request(&csr_pem, "pool-7", 30).unwrap();
        let node = dir.path().join("node");
        fs::create_dir_all(&node).unwrap();
        let files = TlsFiles {
            ca: node.join("ca.pem"),
            cert: node.join("pool-7.pem"),
            key: node.join("pool-7.key"),
            crl: None,
        };
        fs::write(&files.ca, ca.cert_pem()).unwrap();
        fs::write(&files.cert, &issued.cert_pem).unwrap();
        write_file(&files.key, key_pem.as_bytes(), 0o600).unwrap();
        let tls = files.load().unwrap();
        assert_eq!(
            tls.identity,
            Identity {
                name: "pool-7".into(),
                role: Role::Agent
            }
        );
        let record = ca.issued().unwrap();
        assert!(record
            .iter()
            .any(|c| c.name == "pool-7" && c.serial == issued.serial));
    }

    #[test]
    fn a_request_that_is_not_one_is_refused_saying_so() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), "test CA", 30).unwrap();
        let ca = Ca::load(dir.path()).unwrap();
        let err = ca
            .issue_for_request(
                "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
                "n1",
                30,
            )
            .err()
            .unwrap();
        assert!(
            format!("{err:#}").contains("not a valid PEM certificate request"),
            "{err:#}"
        );
        let (_, csr) = new_request("n1").unwrap();
        let err = ca.issue_for_request(&csr, "bad name", 30).err().unwrap();
        assert!(!format!("{err:#}").is_empty());
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

    fn crl_to(dir: &Path) -> crate::issued::CrlOptions {
        crate::issued::CrlOptions {
            out: dir.join("crl.pem"),
            days: 30,
        }
    }

    fn crl_lists(dir: &Path) -> Vec<crate::crl::RevocationList> {
        let cas = read_certs(&dir.join("ca.pem")).unwrap();
        let pem = fs::read(dir.join("crl.pem")).unwrap();
        crate::crl::RevocationList::parse_pem(&pem, &cas).unwrap()
    }

    fn file_serial(path: &Path) -> Serial {
        serial_of(&CertificateDer::from_pem_file(path).unwrap()).unwrap()
    }

    #[test]
    fn issued_certificates_are_recorded_with_the_serial_they_carry() {
        use crate::issued::CertStatus;
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), "test CA", 30).unwrap();
        let ca = Ca::load(dir.path()).unwrap();
        let out = dir.path().join("n");
        ca.issue_to_dir("gpu-01", Role::Agent, &[], 30, &out)
            .unwrap();
        ca.issue_to_dir("gpu-01", Role::Agent, &[], 30, &dir.path().join("m"))
            .unwrap();
        let issued = ca.issued().unwrap();
        assert_eq!(issued.len(), 2);
        assert_eq!(issued[0].serial, file_serial(&out.join("gpu-01.pem")));
        assert_ne!(issued[0].serial, issued[1].serial);
        assert_eq!(
            (issued[0].name.as_str(), issued[0].role),
            ("gpu-01", Role::Agent)
        );
        assert_eq!(issued[0].status(SystemTime::now()), CertStatus::Valid);
        // Another process reads the same record.
        assert_eq!(Ca::load(dir.path()).unwrap().issued().unwrap(), issued);
    }

    #[test]
    fn revoking_a_name_revokes_all_its_certificates_and_the_signed_crl_lists_exactly_them() {
        use crate::issued::RevokeTarget;
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), "test CA", 30).unwrap();
        let ca = Ca::load(dir.path()).unwrap();
        ca.issue_to_dir("gpu-01", Role::Agent, &[], 30, &dir.path().join("n"))
            .unwrap();
        ca.issue_to_dir("gpu-01", Role::Agent, &[], 30, &dir.path().join("m"))
            .unwrap();
        ca.issue_to_dir("gpu-02", Role::Agent, &[], 30, &dir.path().join("n"))
            .unwrap();
        let done = ca
            .revoke(
                &RevokeTarget::NameOrSerial("gpu-01".into()),
                &crl_to(dir.path()),
            )
            .unwrap();
        assert_eq!(done.revoked.len(), 2);
        assert!(done.already.is_empty() && done.expired.is_empty());
        assert_eq!((done.crl.number, done.crl.revoked), (1, 2));
        let lists = crl_lists(dir.path());
        assert_eq!(lists.len(), 1);
        assert_eq!(lists[0].number(), 1);
        assert_eq!(lists[0].len(), 2);
        for r in &done.revoked {
            assert_eq!(lists[0].revoked_at(&r.serial), r.revoked_at);
        }
        assert_eq!(
            lists[0].revoked_at(&file_serial(&dir.path().join("n/gpu-02.pem"))),
            None
        );
        let next = lists[0].next_update().unwrap();
        let days = next
            .duration_since(lists[0].this_update())
            .unwrap()
            .as_secs()
            / 86_400;
        assert_eq!(days, 30);
    }

    #[test]
    fn revoking_again_changes_no_record_and_writes_a_newer_crl() {
        use crate::issued::RevokeTarget;
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), "test CA", 30).unwrap();
        let ca = Ca::load(dir.path()).unwrap();
        ca.issue_to_dir("gpu-01", Role::Agent, &[], 30, &dir.path().join("n"))
            .unwrap();
        let target = RevokeTarget::NameOrSerial("gpu-01".into());
        let first = ca.revoke(&target, &crl_to(dir.path())).unwrap();
        let second = ca.revoke(&target, &crl_to(dir.path())).unwrap();
        assert!(second.revoked.is_empty());
        assert_eq!(second.already, first.revoked);
        assert_eq!((second.crl.number, second.crl.revoked), (2, 1));
        assert_eq!(crl_lists(dir.path())[0].number(), 2);
        let written = ca.write_crl(&crl_to(dir.path())).unwrap();
        assert_eq!((written.number, written.revoked), (3, 1));
    }

    #[test]
    fn revoking_a_serial_revokes_that_certificate_only() {
        use crate::issued::RevokeTarget;
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), "test CA", 30).unwrap();
        let ca = Ca::load(dir.path()).unwrap();
        ca.issue_to_dir("gpu-01", Role::Agent, &[], 30, &dir.path().join("n"))
            .unwrap();
        ca.issue_to_dir("gpu-01", Role::Agent, &[], 30, &dir.path().join("m"))
            .unwrap();
        let serial = file_serial(&dir.path().join("m/gpu-01.pem"));
        // Colons and upper case, as other tools print serials.
        let written: String = serial
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":");
        let done = ca
            .revoke(&RevokeTarget::NameOrSerial(written), &crl_to(dir.path()))
            .unwrap();
        assert_eq!(done.revoked.len(), 1);
        assert_eq!(done.revoked[0].serial, serial);
        let lists = crl_lists(dir.path());
        assert_eq!(lists[0].len(), 1);
        assert!(lists[0].revoked_at(&serial).is_some());
    }

    #[test]
    fn revoking_an_unknown_name_is_an_error_that_lists_what_is_on_record() {
        use crate::issued::{RevokeError, RevokeTarget};
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), "test CA", 30).unwrap();
        let ca = Ca::load(dir.path()).unwrap();
        let err = ca
            .revoke(
                &RevokeTarget::NameOrSerial("gpu-09".into()),
                &crl_to(dir.path()),
            )
            .unwrap_err();
        assert!(
            err.to_string().contains("nothing is on record yet"),
            "{err}"
        );
        ca.issue_to_dir("gpu-01", Role::Agent, &[], 30, &dir.path().join("n"))
            .unwrap();
        let err = ca
            .revoke(
                &RevokeTarget::NameOrSerial("gpu-09".into()),
                &crl_to(dir.path()),
            )
            .unwrap_err();
        assert!(matches!(err, RevokeError::Unknown { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("\"gpu-09\"") && msg.contains("gpu-01 (agent: 1 valid)"),
            "{msg}"
        );
        assert!(!dir.path().join("crl.pem").exists(), "an error wrote a CRL");
    }

    #[test]
    fn a_certificate_issued_before_the_record_is_revoked_by_its_file_and_then_recorded() {
        use crate::issued::{RevokeError, RevokeTarget};
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), "test CA", 30).unwrap();
        let ca = Ca::load(dir.path()).unwrap();
        let old = ca.issue("gpu-03", Role::Agent, &[], 30).unwrap();
        let file = dir.path().join("gpu-03.pem");
        fs::write(&file, &old.cert_pem).unwrap();
        let done = ca
            .revoke(&RevokeTarget::Certificate(file), &crl_to(dir.path()))
            .unwrap();
        assert_eq!(done.revoked.len(), 1);
        assert_eq!(done.revoked[0].serial, old.serial);
        assert_eq!(done.revoked[0].name, "gpu-03");
        assert!(crl_lists(dir.path())[0].revoked_at(&old.serial).is_some());
        assert_eq!(ca.issued().unwrap().len(), 1);

        // A certificate of another CA, even one with the same name, is not this CA's to revoke.
        let other = dir.path().join("other");
        init_ca(&other, "test CA", 30).unwrap();
        let foreign = Ca::load(&other)
            .unwrap()
            .issue("gpu-03", Role::Agent, &[], 30)
            .unwrap();
        let file = dir.path().join("foreign.pem");
        fs::write(&file, &foreign.cert_pem).unwrap();
        let err = ca
            .revoke(&RevokeTarget::Certificate(file), &crl_to(dir.path()))
            .unwrap_err();
        assert!(matches!(err, RevokeError::Foreign { .. }), "{err:?}");
        assert!(
            err.to_string().contains("signature does not verify"),
            "{err}"
        );
    }

    #[test]
    fn an_unreadable_record_is_an_error_and_is_left_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), "test CA", 30).unwrap();
        let ca = Ca::load(dir.path()).unwrap();
        let index = crate::issued::index_path(dir.path());
        fs::write(&index, "{ not json").unwrap();
        let err = ca
            .issue_to_dir("gpu-01", Role::Agent, &[], 30, &dir.path().join("n"))
            .unwrap_err();
        assert!(format!("{err:#}").contains("left as it is"), "{err:#}");
        assert_eq!(fs::read_to_string(&index).unwrap(), "{ not json");
        assert!(
            !dir.path().join("n/gpu-01.pem").exists(),
            "issued without a record"
        );
    }

    #[test]
    fn the_identity_of_a_presented_chain_is_its_first_certificate() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), "test CA", 30).unwrap();
        let ca = Ca::load(dir.path()).unwrap();
        let alice = ca.issue("alice", Role::Operator, &[], 30).unwrap();
        let der = CertificateDer::from_pem_slice(alice.cert_pem.as_bytes()).unwrap();
        assert_eq!(
            peer_chain_identity(&[der]).unwrap(),
            Identity {
                name: "alice".into(),
                role: Role::Operator
            }
        );
        assert_eq!(peer_chain_identity(&[]), Err(PkiError::NoCertificate));
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
