//! Certificate revocation as the coordinator applies it: the CRL file the cluster CA signs
//! (`corral certs revoke`, see [`crate::issued`]), checked and held as the live list that
//! every handshake and every open connection is judged by.
//!
//! Invariants:
//! - A CRL is put in force only if it parses, is a v2 CRL with a CRL number, and is issued
//!   *and signed* by a CA of the cluster's trust roots. The signature is checked here,
//!   before rustls sees the list: webpki would otherwise refuse *every* client of that CA
//!   on a list signed by another key.
//! - Once a CA's list is in force it is replaced only by a list of that CA with a CRL
//!   number not lower: an older file put back cannot un-revoke a certificate, and a file
//!   that no longer holds that CA's list (or was removed) changes nothing.
//! - A list that is refused never replaces the one in force; [`Revocations::reload`]
//!   returns why (naming the file), and reports each distinct file content once.
//!   Revocation is never dropped silently.
//! - One source of truth: handshakes (through [`Revocations::client_verifier`], which
//!   reads the current list at every handshake) and open connections (through
//!   [`Revocations::watch`]) see the same list, so a reload applies to both at once and
//!   the QUIC endpoint's configuration never needs to be swapped.
//!
//! Trade-offs:
//! - `nextUpdate` is written but not enforced: a CRL past it still revokes. A stale list
//!   is better than none, and enforcing it would lock every node out on the day nobody
//!   refreshed it; the coordinator warns instead ([`RevocationList::is_stale`]).
//! - Certificates of a CA without a loaded list are accepted without a revocation check
//!   (webpki's "unknown status" allowed), so a second CA in `ca.pem` during a CA
//!   rotation keeps working. A certificate is always checked against the list of the CA
//!   that issued it; a list is authoritative for every certificate of its CA because
//!   corral's certificates carry no distribution points.
//! - Only end-entity certificates are checked: the cluster PKI has no intermediates.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio::sync::watch;

use crate::pki::{self, TlsFiles, TlsMaterial};

/// A certificate serial number: the big-endian magnitude of its DER INTEGER without
/// leading zero bytes, written as lowercase hex (`corral certs list` shows it; `corral
/// certs revoke` accepts it with or without colons, in either case).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Serial(Vec<u8>);

impl Serial {
    /// RFC 5280 §4.1.2.2: at most 20 octets.
    pub const MAX_LEN: usize = 20;

    /// A fresh random serial: 16 bytes (128 bits, twice the entropy the CA/Browser forum
    /// asks for), the first in `0x01..=0x7f` so the DER INTEGER is exactly these bytes.
    pub fn random() -> Result<Serial, ring::error::Unspecified> {
        use ring::rand::SecureRandom;
        let rng = ring::rand::SystemRandom::new();
        let mut bytes = [0u8; 16];
        loop {
            rng.fill(&mut bytes)?;
            bytes[0] &= 0x7f;
            if bytes[0] != 0 {
                return Ok(Serial(bytes.to_vec()));
            }
        }
    }

    /// From the content octets of a DER INTEGER (as x509-parser's `raw_serial` gives
    /// them, possibly with a leading zero byte that keeps the number positive).
    pub fn from_der_integer(raw: &[u8]) -> Serial {
        let start = raw
            .iter()
            .position(|b| *b != 0)
            .unwrap_or(raw.len().saturating_sub(1));
        Serial(raw.get(start..).unwrap_or_default().to_vec())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Serial({self})")
    }
}

/// A string that is not a certificate serial.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a certificate serial (hex digits, colons allowed, at most 20 bytes)")]
pub struct SerialError(pub String);

impl FromStr for Serial {
    type Err = SerialError;

    fn from_str(s: &str) -> Result<Serial, SerialError> {
        let err = || SerialError(s.to_string());
        let hex: String = s.trim().chars().filter(|c| *c != ':').collect();
        if hex.is_empty() || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(err());
        }
        let padded = if hex.len() % 2 == 1 {
            format!("0{hex}")
        } else {
            hex
        };
        let bytes = (0..padded.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&padded[i..i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| err())?;
        let serial = Serial::from_der_integer(&bytes);
        if serial.0.len() > Serial::MAX_LEN {
            return Err(err());
        }
        Ok(serial)
    }
}

impl serde::Serialize for Serial {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Serial {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Serial, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Why a CRL file is not (or no longer) what the coordinator applies. Every variant names
/// the file.
#[derive(Debug, thiserror::Error)]
pub enum CrlError {
    #[error("cannot read the CRL {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the CRL {} named by `[tls] crl` does not exist; write it with `corral certs crl --ca CA_DIR --crl-out {}`, or remove `crl` to use crl.pem beside the CA certificate when there is one",
        path.display(), path.display()
    )]
    Missing { path: PathBuf },
    #[error(
        "the CRL {} was removed; the {kept} revocations in force stay (restore it, or write a new one with `corral certs crl`)",
        path.display()
    )]
    Vanished { path: PathBuf, kept: usize },
    #[error("the CRL {} is not usable: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error(
        "the CRL {} from {issuer} has number {found}, lower than the {in_force} in force (an older file put back?); only a newer list from `corral certs revoke` or `corral certs crl` replaces it",
        path.display()
    )]
    Rollback {
        path: PathBuf,
        issuer: String,
        found: u64,
        in_force: u64,
    },
    #[error(
        "the CRL {} no longer holds the list of {issuer} (number {in_force} is in force); a CA's list can only be replaced, not dropped",
        path.display()
    )]
    Dropped {
        path: PathBuf,
        issuer: String,
        in_force: u64,
    },
}

/// One CRL, parsed and checked against the CA that signed it.
#[derive(Debug, Clone)]
pub struct RevocationList {
    der: CertificateRevocationListDer<'static>,
    issuer_der: Vec<u8>,
    issuer: String,
    number: u64,
    this_update: SystemTime,
    next_update: Option<SystemTime>,
    revoked: BTreeMap<Serial, SystemTime>,
}

impl RevocationList {
    /// Parses one DER CRL and checks it against `cas` (see the module invariants).
    pub fn from_der(
        der: CertificateRevocationListDer<'static>,
        cas: &[CertificateDer<'_>],
    ) -> Result<RevocationList, String> {
        let (rest, crl) = x509_parser::parse_x509_crl(der.as_ref())
            .map_err(|e| format!("not an X.509 CRL ({e})"))?;
        if !rest.is_empty() {
            return Err("trailing bytes after the CRL".into());
        }
        if crl.version() != Some(x509_parser::x509::X509Version::V2) {
            return Err("not a version 2 CRL".into());
        }
        let issuer = crl.issuer().to_string();
        let issuer_der = crl.issuer().as_raw().to_vec();
        let ca = cas
            .iter()
            .filter_map(|c| x509_parser::parse_x509_certificate(c.as_ref()).ok())
            .map(|(_, c)| c)
            .find(|c| c.subject().as_raw() == issuer_der.as_slice())
            .ok_or_else(|| format!("it is issued by {issuer:?}, which is not a CA this coordinator trusts (tls.ca)"))?;
        crl.verify_signature(ca.public_key()).map_err(|e| {
            format!("its signature does not verify with the key of {issuer:?} ({e}): it was not signed by this cluster's CA")
        })?;
        let number = crl
            .crl_number()
            .ok_or("it has no CRL number (RFC 5280 requires one)")?;
        let number =
            u64::try_from(number).map_err(|_| format!("CRL number {number} is too large"))?;
        let mut revoked = BTreeMap::new();
        for r in crl.iter_revoked_certificates() {
            revoked.insert(
                Serial::from_der_integer(r.raw_serial()),
                asn1_time(r.revocation_date),
            );
        }
        Ok(RevocationList {
            issuer_der,
            issuer,
            number,
            this_update: asn1_time(crl.last_update()),
            next_update: crl.next_update().map(asn1_time),
            revoked,
            der,
        })
    }

    /// Every CRL of a PEM file (one per CA at most), each checked against `cas`.
    pub fn parse_pem(
        pem: &[u8],
        cas: &[CertificateDer<'_>],
    ) -> Result<Vec<RevocationList>, String> {
        let ders = CertificateRevocationListDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("not a PEM file of X.509 CRLs ({e})"))?;
        if ders.is_empty() && !pem.iter().all(u8::is_ascii_whitespace) {
            return Err("it holds no `-----BEGIN X509 CRL-----` block".into());
        }
        let mut lists: Vec<RevocationList> = vec![];
        for der in ders {
            let list = RevocationList::from_der(der, cas)?;
            if lists.iter().any(|l| l.issuer_der == list.issuer_der) {
                return Err(format!(
                    "it holds two lists of {:?}; keep the newer one",
                    list.issuer
                ));
            }
            lists.push(list);
        }
        Ok(lists)
    }

    /// The issuing CA's subject, as text.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The CRL number (increases with every list the CA signs).
    pub fn number(&self) -> u64 {
        self.number
    }

    pub fn this_update(&self) -> SystemTime {
        self.this_update
    }

    pub fn next_update(&self) -> Option<SystemTime> {
        self.next_update
    }

    /// Whether the list is past the next update its CA promised. It still applies.
    pub fn is_stale(&self, now: SystemTime) -> bool {
        self.next_update.is_some_and(|n| n < now)
    }

    /// How many certificates it revokes.
    pub fn len(&self) -> usize {
        self.revoked.len()
    }

    pub fn is_empty(&self) -> bool {
        self.revoked.is_empty()
    }

    /// When the certificate with `serial` was revoked, if it was.
    pub fn revoked_at(&self, serial: &Serial) -> Option<SystemTime> {
        self.revoked.get(serial).copied()
    }

    pub fn der(&self) -> &CertificateRevocationListDer<'static> {
        &self.der
    }
}

fn asn1_time(t: x509_parser::time::ASN1Time) -> SystemTime {
    let secs = t.timestamp();
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// A certificate that a list in force revokes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    pub serial: Serial,
    pub revoked_at: SystemTime,
    /// The number of the CRL that says so.
    pub crl_number: u64,
}

/// The lists in force and the verifiers built from them.
struct Current {
    lists: Vec<Arc<RevocationList>>,
    required: Arc<dyn ClientCertVerifier>,
    optional: Arc<dyn ClientCertVerifier>,
}

impl Current {
    fn build(
        roots: &Arc<rustls::RootCertStore>,
        lists: Vec<RevocationList>,
    ) -> Result<Current, String> {
        let verifier = |optional: bool| {
            let mut b = WebPkiClientVerifier::builder_with_provider(roots.clone(), pki::provider());
            if !lists.is_empty() {
                b = b
                    .with_crls(lists.iter().map(|l| l.der.clone()))
                    .only_check_end_entity_revocation()
                    .allow_unknown_revocation_status();
            }
            if optional {
                b = b.allow_unauthenticated();
            }
            b.build()
                .map_err(|e| format!("rustls does not accept it ({e})"))
        };
        Ok(Current {
            required: verifier(false)?,
            optional: verifier(true)?,
            lists: lists.into_iter().map(Arc::new).collect(),
        })
    }

    fn revoked(&self, cert: &CertificateDer<'_>) -> Option<Revoked> {
        let (_, x509) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
        let issuer = x509.issuer().as_raw();
        let serial = Serial::from_der_integer(x509.raw_serial());
        let list = self.lists.iter().find(|l| l.issuer_der == issuer)?;
        Some(Revoked {
            revoked_at: list.revoked_at(&serial)?,
            serial,
            crl_number: list.number,
        })
    }

    fn revoked_count(&self) -> usize {
        self.lists.iter().map(|l| l.len()).sum()
    }
}

/// What the CRL file looked like when last read: each distinct content (or absence) is
/// acted on, and reported, once.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Missing,
    Unreadable(std::io::ErrorKind),
    Content(Vec<u8>),
}

impl Seen {
    fn content(bytes: &[u8]) -> Seen {
        Seen::Content(
            ring::digest::digest(&ring::digest::SHA256, bytes)
                .as_ref()
                .to_vec(),
        )
    }
}

/// What a [`Revocations::reload`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// The file is as it was when last read.
    Unchanged,
    /// A new list is in force.
    Applied,
}

/// The revocation lists in force, shared by the handshake verifiers and the guards of
/// open connections. Cloning is cheap (one `Arc`).
#[derive(Clone)]
pub struct Revocations {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    cas: Vec<CertificateDer<'static>>,
    roots: Arc<rustls::RootCertStore>,
    hints: Vec<DistinguishedName>,
    current: watch::Sender<Arc<Current>>,
    seen: Mutex<Seen>,
}

impl Revocations {
    /// Loads the CRL that `files` names ([`TlsFiles::crl_path`]) against the trust roots
    /// of `tls`. An explicitly configured file must exist; the default one (`crl.pem`
    /// beside the CA certificate) may be absent: nothing is revoked until it appears.
    /// A file that exists but is not a usable CRL is an error: the coordinator must not
    /// start with revocations silently missing.
    pub fn open(files: &TlsFiles, tls: &TlsMaterial) -> Result<Revocations, CrlError> {
        let (path, explicit) = files.crl_path();
        let (lists, seen) = match std::fs::read(&path) {
            Ok(bytes) => (
                RevocationList::parse_pem(&bytes, &tls.ca_certs).map_err(|reason| {
                    CrlError::Invalid {
                        path: path.clone(),
                        reason,
                    }
                })?,
                Seen::content(&bytes),
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                (vec![], Seen::Missing)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CrlError::Missing { path })
            }
            Err(source) => return Err(CrlError::Read { path, source }),
        };
        Revocations::with_lists(path, tls, lists, seen)
    }

    fn with_lists(
        path: PathBuf,
        tls: &TlsMaterial,
        lists: Vec<RevocationList>,
        seen: Seen,
    ) -> Result<Revocations, CrlError> {
        let current = Current::build(&tls.roots, lists).map_err(|reason| CrlError::Invalid {
            path: path.clone(),
            reason,
        })?;
        let (current, _) = watch::channel(Arc::new(current));
        Ok(Revocations {
            inner: Arc::new(Inner {
                hints: tls.roots.subjects(),
                path,
                cas: tls.ca_certs.clone(),
                roots: tls.roots.clone(),
                current,
                seen: Mutex::new(seen),
            }),
        })
    }

    /// The file reloads read.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The lists in force, one per CA that has one.
    pub fn lists(&self) -> Vec<Arc<RevocationList>> {
        self.inner.current.borrow().lists.clone()
    }

    /// How many certificates the lists in force revoke.
    pub fn revoked_count(&self) -> usize {
        self.inner.current.borrow().revoked_count()
    }

    /// Whether a list in force revokes `cert`.
    pub fn revoked(&self, cert: &CertificateDer<'_>) -> Option<Revoked> {
        self.inner.current.borrow().revoked(cert)
    }

    /// Reads the file again and puts its lists in force if they pass every check (module
    /// invariants). Blocking file I/O: call it off the async runtime's worker threads.
    /// An error means the lists in force stay; it is returned once per distinct file
    /// content, [`Reload::Unchanged`] after that.
    pub fn reload(&self) -> Result<Reload, CrlError> {
        let path = &self.inner.path;
        let read = std::fs::read(path);
        let now_seen = match &read {
            Ok(bytes) => Seen::content(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Seen::Missing,
            Err(e) => Seen::Unreadable(e.kind()),
        };
        {
            let mut seen = self.inner.seen.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == now_seen {
                return Ok(Reload::Unchanged);
            }
            *seen = now_seen;
        }
        let in_force = self.inner.current.borrow().lists.clone();
        let bytes = match read {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if in_force.is_empty() {
                    return Ok(Reload::Unchanged);
                }
                return Err(CrlError::Vanished {
                    path: path.clone(),
                    kept: self.revoked_count(),
                });
            }
            Err(source) => {
                return Err(CrlError::Read {
                    path: path.clone(),
                    source,
                })
            }
        };
        let invalid = |reason| CrlError::Invalid {
            path: path.clone(),
            reason,
        };
        let lists = RevocationList::parse_pem(&bytes, &self.inner.cas).map_err(invalid)?;
        for old in &in_force {
            match lists.iter().find(|l| l.issuer_der == old.issuer_der) {
                None => {
                    return Err(CrlError::Dropped {
                        path: path.clone(),
                        issuer: old.issuer.clone(),
                        in_force: old.number,
                    })
                }
                Some(new) if new.number < old.number => {
                    return Err(CrlError::Rollback {
                        path: path.clone(),
                        issuer: new.issuer.clone(),
                        found: new.number,
                        in_force: old.number,
                    })
                }
                Some(_) => {}
            }
        }
        let current = Current::build(&self.inner.roots, lists).map_err(invalid)?;
        self.inner.current.send_replace(Arc::new(current));
        Ok(Reload::Applied)
    }

    /// A rustls client-certificate verifier for the cluster CA that applies the lists in
    /// force at every handshake (a reload needs no new server configuration).
    /// `required`: a client without a certificate is refused (QUIC); otherwise it is let
    /// through unauthenticated for the server to decide (HTTPS, where a token may do).
    pub fn client_verifier(&self, required: bool) -> Arc<dyn ClientCertVerifier> {
        Arc::new(LiveClientVerifier {
            inner: self.inner.clone(),
            required,
        })
    }

    /// A handle that wakes when the lists in force change, for closing a connection whose
    /// certificate gets revoked while it is open.
    pub fn watch(&self) -> RevocationWatch {
        RevocationWatch {
            rx: self.inner.current.subscribe(),
        }
    }
}

impl fmt::Debug for Revocations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Revocations")
            .field("path", &self.inner.path)
            .field("revoked", &self.revoked_count())
            .finish()
    }
}

/// See [`Revocations::watch`].
pub struct RevocationWatch {
    rx: watch::Receiver<Arc<Current>>,
}

impl RevocationWatch {
    /// Waits for the next change of the lists in force; `false` once no change can come.
    pub async fn changed(&mut self) -> bool {
        self.rx.changed().await.is_ok()
    }

    /// Whether the lists in force now revoke `cert`.
    pub fn revoked(&self, cert: &CertificateDer<'_>) -> Option<Revoked> {
        self.rx.borrow().revoked(cert)
    }
}

/// Delegates to the verifier built from the lists in force at the time of each call.
struct LiveClientVerifier {
    inner: Arc<Inner>,
    required: bool,
}

impl LiveClientVerifier {
    fn current(&self) -> Arc<dyn ClientCertVerifier> {
        let current = self.inner.current.borrow();
        if self.required {
            current.required.clone()
        } else {
            current.optional.clone()
        }
    }
}

impl fmt::Debug for LiveClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiveClientVerifier")
            .field("crl", &self.inner.path)
            .field("required", &self.required)
            .finish()
    }
}

impl ClientCertVerifier for LiveClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.required
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.inner.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let result = self
            .current()
            .verify_client_cert(end_entity, intermediates, now);
        if let Err(rustls::Error::InvalidCertificate(CertificateError::Revoked)) = &result {
            let who = pki::identity_of(end_entity)
                .map(|i| format!("{} ({})", i.name, i.role))
                .unwrap_or_else(|e| format!("(no corral identity: {e})"));
            let serial = pki::serial_of(end_entity)
                .map(|s| s.to_string())
                .unwrap_or_default();
            tracing::warn!(certificate = %who, %serial, crl = %self.inner.path.display(), "refused a revoked certificate at the handshake");
        }
        result
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}

/// Whether a QUIC connection ended because the peer holds this side's certificate
/// revoked: rustls's `certificate_revoked` alert, which QUIC carries as the crypto error
/// `0x100 + 44`. (A connection revoked while open is closed with the application code
/// `Refusal::Revoked` instead.)
pub fn refused_as_revoked(err: &quinn::ConnectionError) -> bool {
    let revoked =
        quinn::TransportErrorCode::crypto(u8::from(rustls::AlertDescription::CertificateRevoked));
    match err {
        quinn::ConnectionError::ConnectionClosed(close) => close.error_code == revoked,
        quinn::ConnectionError::TransportError(e) => e.code == revoked,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issued::{CrlOptions, RevokeTarget};
    use crate::pki::{init_ca, Ca, Role};

    /// A CA with a coordinator and an agent `gpu-01`, and the coordinator's revocations
    /// (default CRL path: crl.pem beside ca.pem, absent).
    struct Pki {
        dir: tempfile::TempDir,
        ca: Ca,
        files: TlsFiles,
        tls: TlsMaterial,
    }

    impl Pki {
        fn new() -> Pki {
            let dir = tempfile::tempdir().unwrap();
            init_ca(dir.path(), "test CA", 30).unwrap();
            let ca = Ca::load(dir.path()).unwrap();
            let files = ca
                .issue_to_dir("coordinator", Role::Coordinator, &[], 30, dir.path())
                .unwrap();
            ca.issue_to_dir("gpu-01", Role::Agent, &[], 30, dir.path())
                .unwrap();
            let tls = files.load().unwrap();
            Pki {
                dir,
                ca,
                files,
                tls,
            }
        }

        fn crl(&self) -> PathBuf {
            self.dir.path().join("crl.pem")
        }

        fn revoke(&self, name: &str) {
            let out = CrlOptions {
                out: self.crl(),
                days: 30,
            };
            self.ca
                .revoke(&RevokeTarget::NameOrSerial(name.into()), &out)
                .unwrap();
        }

        fn agent(&self) -> CertificateDer<'static> {
            CertificateDer::from_pem_file(self.dir.path().join("gpu-01.pem")).unwrap()
        }

        fn handshake(&self, r: &Revocations) -> Result<ClientCertVerified, rustls::Error> {
            r.client_verifier(true)
                .verify_client_cert(&self.agent(), &[], UnixTime::now())
        }
    }

    fn is_revoked(r: Result<ClientCertVerified, rustls::Error>) -> bool {
        matches!(
            r,
            Err(rustls::Error::InvalidCertificate(CertificateError::Revoked))
        )
    }

    #[test]
    fn a_revocation_applies_to_a_verifier_built_before_it_once_reloaded() {
        let p = Pki::new();
        let r = Revocations::open(&p.files, &p.tls).unwrap();
        assert!(r.lists().is_empty());
        let verifier_first = r.client_verifier(true);
        assert!(p.handshake(&r).is_ok());
        let watch = r.watch();
        p.revoke("gpu-01");
        assert_eq!(r.reload().unwrap(), Reload::Applied);
        assert!(is_revoked(verifier_first.verify_client_cert(
            &p.agent(),
            &[],
            UnixTime::now()
        )));
        assert!(watch.rx.has_changed().unwrap());
        let revoked = watch.revoked(&p.agent()).unwrap();
        assert_eq!(revoked.serial, pki::serial_of(&p.agent()).unwrap());
        assert_eq!(revoked.crl_number, 1);
        // The coordinator's own certificate is not revoked.
        let own = p.tls.chain[0].clone();
        assert!(r.revoked(&own).is_none());
        assert_eq!(r.reload().unwrap(), Reload::Unchanged);
    }

    #[test]
    fn a_broken_crl_keeps_the_revocations_in_force_and_is_reported_once() {
        let p = Pki::new();
        p.revoke("gpu-01");
        let r = Revocations::open(&p.files, &p.tls).unwrap();
        assert!(is_revoked(p.handshake(&r)));
        std::fs::write(
            p.crl(),
            "-----BEGIN X509 CRL-----\nbm90IGEgQ1JM\n-----END X509 CRL-----\n",
        )
        .unwrap();
        let err = r.reload().unwrap_err();
        assert!(matches!(err, CrlError::Invalid { .. }), "{err:?}");
        assert!(
            err.to_string().contains(&p.crl().display().to_string()),
            "{err}"
        );
        assert_eq!(r.reload().unwrap(), Reload::Unchanged);
        assert!(is_revoked(p.handshake(&r)));
        // Removing the file does not un-revoke either.
        std::fs::remove_file(p.crl()).unwrap();
        assert!(matches!(
            r.reload().unwrap_err(),
            CrlError::Vanished { kept: 1, .. }
        ));
        assert!(is_revoked(p.handshake(&r)));
    }

    #[test]
    fn an_older_crl_put_back_cannot_un_revoke() {
        let p = Pki::new();
        let r = Revocations::open(&p.files, &p.tls).unwrap();
        p.ca.write_crl(&CrlOptions {
            out: p.crl(),
            days: 30,
        })
        .unwrap();
        let old = std::fs::read(p.crl()).unwrap();
        assert_eq!(r.reload().unwrap(), Reload::Applied);
        p.revoke("gpu-01");
        assert_eq!(r.reload().unwrap(), Reload::Applied);
        std::fs::write(p.crl(), old).unwrap();
        let err = r.reload().unwrap_err();
        assert!(
            matches!(
                err,
                CrlError::Rollback {
                    found: 1,
                    in_force: 2,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(is_revoked(p.handshake(&r)));
    }

    #[test]
    fn a_crl_signed_by_another_key_under_the_same_name_is_refused() {
        let p = Pki::new();
        // Same subject ("test CA"), another key: only the signature tells them apart.
        let other = p.dir.path().join("other");
        init_ca(&other, "test CA", 30).unwrap();
        let forger = Ca::load(&other).unwrap();
        forger
            .write_crl(&CrlOptions {
                out: p.crl(),
                days: 30,
            })
            .unwrap();
        let err = Revocations::open(&p.files, &p.tls).unwrap_err();
        assert!(
            err.to_string().contains("signature does not verify"),
            "{err}"
        );
    }

    #[test]
    fn a_configured_crl_must_exist_the_default_one_may_be_absent() {
        let p = Pki::new();
        assert!(Revocations::open(&p.files, &p.tls).is_ok());
        let files = TlsFiles {
            crl: Some(p.dir.path().join("missing.pem")),
            ..p.files.clone()
        };
        let err = Revocations::open(&files, &p.tls).unwrap_err();
        assert!(matches!(err, CrlError::Missing { .. }), "{err:?}");
        assert!(err.to_string().contains("corral certs crl"), "{err}");
    }

    #[test]
    fn the_optional_verifier_lets_clients_without_a_certificate_through() {
        let p = Pki::new();
        let r = Revocations::open(&p.files, &p.tls).unwrap();
        assert!(!r.client_verifier(false).client_auth_mandatory());
        assert!(r.client_verifier(true).client_auth_mandatory());
        p.revoke("gpu-01");
        r.reload().unwrap();
        assert!(is_revoked(r.client_verifier(false).verify_client_cert(
            &p.agent(),
            &[],
            UnixTime::now()
        )));
    }

    #[test]
    fn serials_print_as_hex_and_parse_back_with_or_without_colons() {
        let s = Serial(vec![0x0a, 0xff, 0x01]);
        assert_eq!(s.to_string(), "0aff01");
        assert_eq!("0aff01".parse::<Serial>().unwrap(), s);
        assert_eq!("0A:FF:01".parse::<Serial>().unwrap(), s);
        assert_eq!("aff01".parse::<Serial>().unwrap(), s);
        // A DER INTEGER's sign byte is not part of the number.
        assert_eq!(Serial::from_der_integer(&[0, 0x0a, 0xff, 0x01]), s);
        for bad in ["", "xyz", "0a:zz", &"ab".repeat(21)] {
            assert!(bad.parse::<Serial>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn random_serials_are_positive_sixteen_bytes_and_distinct() {
        let a = Serial::random().unwrap();
        let b = Serial::random().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.as_bytes().len(), 16);
        assert!(a.as_bytes()[0] > 0 && a.as_bytes()[0] < 0x80);
        assert_eq!(Serial::from_der_integer(a.as_bytes()), a);
    }
}
