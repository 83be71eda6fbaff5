//! What the cluster CA has issued, and the revocation list made from it.
//!
//! `issued.json` beside `ca.pem` records every certificate [`Ca::issue_to_dir`] writes:
//! serial, name, role, validity, and when it was revoked. [`Ca::revoke`] marks records
//! revoked and writes the CRL (`crl.pem` beside the CA unless told otherwise), signed by
//! the CA, from the record alone: the CRL is a function of the record, so writing it again
//! is always safe.
//!
//! Invariants:
//! - A certificate is recorded before its files are written: none leaves `corral certs
//!   issue` without a record to revoke it by.
//! - Serials are random (128 bits) and checked unique against the record.
//! - The record is read, changed and written under an exclusive `flock(2)` of the CA key,
//!   and written atomically (temporary file, fsync, rename): concurrent `corral certs`
//!   runs lose no record, and a crash leaves the old record or the new one, never half.
//!   The record is written before the CRL, so a crash in between is mended by running
//!   the command again.
//! - Revoking is idempotent: what is revoked stays revoked, with its first date. Every
//!   CRL written gets the next CRL number, so the coordinator takes it as the newer one.
//! - The CRL lists every revoked certificate that has not expired; an expired one is
//!   refused on its dates alone.
//! - A record this version cannot read is an error and is left as it is, never replaced.
//!
//! Certificates issued before the record existed are not on it: they are revoked by their
//! file ([`RevokeTarget::Certificate`]), which is checked to come from this CA and is then
//! recorded.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

use crate::crl::Serial;
use crate::pki::{self, ca_paths, Ca, Role};

/// The record's file name, beside `ca.pem`.
pub const INDEX_FILE: &str = "issued.json";
/// The CRL's file name: beside `ca.pem` where the CA writes it, and beside `tls.ca` where
/// the coordinator looks for it unless `[tls] crl` says otherwise.
pub const CRL_FILE: &str = "crl.pem";
/// How long a CRL says it stays current (its `nextUpdate`), unless told otherwise.
pub const DEFAULT_CRL_DAYS: u32 = 365;
/// The record's layout version.
const FORMAT: u32 = 1;

/// The record of issued certificates of the CA in `ca_dir`.
pub fn index_path(ca_dir: &Path) -> PathBuf {
    ca_dir.join(INDEX_FILE)
}

/// Where the CA writes its CRL unless told otherwise.
pub fn default_crl_path(ca_dir: &Path) -> PathBuf {
    ca_dir.join(CRL_FILE)
}

/// One certificate on record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuedCert {
    pub serial: Serial,
    pub name: String,
    pub role: Role,
    #[serde(with = "rfc3339")]
    pub issued_at: SystemTime,
    #[serde(with = "rfc3339")]
    pub not_after: SystemTime,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "rfc3339_opt")]
    pub revoked_at: Option<SystemTime>,
}

/// Where a certificate on record stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CertStatus {
    Valid,
    Expired,
    Revoked,
}

impl CertStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CertStatus::Valid => "valid",
            CertStatus::Expired => "expired",
            CertStatus::Revoked => "revoked",
        }
    }
}

impl std::fmt::Display for CertStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl IssuedCert {
    /// Revoked wins over expired: a revoked certificate stays "revoked" in listings.
    pub fn status(&self, now: SystemTime) -> CertStatus {
        if self.revoked_at.is_some() {
            CertStatus::Revoked
        } else if self.not_after <= now {
            CertStatus::Expired
        } else {
            CertStatus::Valid
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IndexFile {
    format: u32,
    /// The number of the last CRL written.
    crl_number: u64,
    certificates: Vec<IssuedCert>,
}

/// What to revoke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeTarget {
    /// Every unexpired certificate issued for a name, or the one with a serial. A serial
    /// written with colons (`3f:a0:...`) is only ever a serial: names cannot hold colons.
    NameOrSerial(String),
    /// The certificate in this PEM file (it must come from this CA).
    Certificate(PathBuf),
}

/// Where and for how long a CRL is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlOptions {
    pub out: PathBuf,
    /// Days until the CRL's `nextUpdate`; at least 1.
    pub days: u32,
}

/// A CRL as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlWritten {
    pub path: PathBuf,
    pub number: u64,
    /// How many certificates it revokes.
    pub revoked: usize,
    pub next_update: SystemTime,
}

/// What [`Ca::revoke`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// Revoked by this call.
    pub revoked: Vec<IssuedCert>,
    /// Revoked before; unchanged.
    pub already: Vec<IssuedCert>,
    /// Expired and not revoked: refused on their dates already, left as they are.
    pub expired: Vec<IssuedCert>,
    pub crl: CrlWritten,
}

/// A name on record, for telling an operator what exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownName {
    pub name: String,
    pub role: Role,
    pub valid: usize,
    pub revoked: usize,
    pub expired: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    #[error("no certificate on record in {} has the name or serial {target:?}; {}", index.display(), describe_known(known))]
    Unknown {
        target: String,
        index: PathBuf,
        known: Vec<KnownName>,
    },
    #[error("{target:?} is both a name and a serial on record in {}; write the serial with colons (for example {}) to mean the serial", index.display(), with_colons(target))]
    Ambiguous { target: String, index: PathBuf },
    #[error("{} was not issued by the CA in {}: {reason}", cert.display(), ca_dir.display())]
    Foreign {
        cert: PathBuf,
        ca_dir: PathBuf,
        reason: String,
    },
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

fn describe_known(known: &[KnownName]) -> String {
    let hint = "a certificate issued before this record existed is revoked by its file: `corral certs revoke --ca DIR --cert FILE`";
    if known.is_empty() {
        return format!("nothing is on record yet ({hint})");
    }
    let names: Vec<String> = known
        .iter()
        .map(|k| {
            let mut parts = vec![];
            for (n, what) in [
                (k.valid, "valid"),
                (k.revoked, "revoked"),
                (k.expired, "expired"),
            ] {
                if n > 0 {
                    parts.push(format!("{n} {what}"));
                }
            }
            format!("{} ({}: {})", k.name, k.role, parts.join(", "))
        })
        .collect();
    format!("on record: {}; {hint}", names.join(", "))
}

fn with_colons(s: &str) -> String {
    s.parse::<Serial>()
        .map(|serial| {
            serial
                .as_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        })
        .unwrap_or_else(|_| s.to_string())
}

/// The record, locked for this process until dropped.
struct Locked {
    _lock: nix::fcntl::Flock<File>,
    path: PathBuf,
    index: IndexFile,
}

impl Locked {
    fn open(ca_dir: &Path) -> Result<Locked> {
        let (_, key) = ca_paths(ca_dir);
        let file = File::open(&key)
            .with_context(|| format!("opening {} to lock the CA's record", key.display()))?;
        let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| anyhow::anyhow!("locking {}: {e}", key.display()))?;
        let path = index_path(ca_dir);
        let index = read_index(&path)?;
        Ok(Locked {
            _lock: lock,
            path,
            index,
        })
    }

    fn save(&self) -> Result<()> {
        let mut json = serde_json::to_vec_pretty(&self.index).context("encoding the record")?;
        json.push(b'\n');
        pki::write_atomic(&self.path, &json, 0o644)
    }
}

fn read_index(path: &Path) -> Result<IndexFile> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(IndexFile {
                format: FORMAT,
                crl_number: 0,
                certificates: vec![],
            })
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let index: IndexFile = serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "{} is not a record of issued certificates this version of corral can read; it was left as it is",
            path.display()
        )
    })?;
    if index.format != FORMAT {
        bail!(
            "{} has record format {}, this version of corral reads {FORMAT}; it was left as it is",
            path.display(),
            index.format
        );
    }
    Ok(index)
}

/// Now, to the second (what certificates and CRLs can encode).
pub(crate) fn now_s() -> SystemTime {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    UNIX_EPOCH + Duration::from_secs(secs)
}

impl Ca {
    /// Every certificate on record, in the order issued.
    pub fn issued(&self) -> Result<Vec<IssuedCert>> {
        Ok(read_index(&index_path(&self.dir))?.certificates)
    }

    /// Adds a certificate to the record.
    pub(crate) fn record(&self, cert: IssuedCert) -> Result<()> {
        let mut locked = Locked::open(&self.dir)?;
        if locked
            .index
            .certificates
            .iter()
            .any(|c| c.serial == cert.serial)
        {
            bail!(
                "serial {} is already on record in {}; issue again (every certificate draws a new serial)",
                cert.serial,
                locked.path.display()
            );
        }
        locked.index.certificates.push(cert);
        locked.save()
    }

    /// Revokes `target` and writes the CRL (see the module invariants).
    pub fn revoke(
        &self,
        target: &RevokeTarget,
        crl: &CrlOptions,
    ) -> Result<Revocation, RevokeError> {
        let mut locked = Locked::open(&self.dir)?;
        let now = now_s();
        let picked = match target {
            RevokeTarget::NameOrSerial(t) => pick(&locked, t, now)?,
            RevokeTarget::Certificate(path) => vec![self.pick_file(&mut locked, path)?],
        };
        let (mut revoked, mut already, mut expired) = (vec![], vec![], vec![]);
        for i in picked {
            let c = &mut locked.index.certificates[i];
            match c.status(now) {
                CertStatus::Revoked => already.push(c.clone()),
                CertStatus::Expired => expired.push(c.clone()),
                CertStatus::Valid => {
                    c.revoked_at = Some(now);
                    revoked.push(c.clone());
                }
            }
        }
        let crl = self.sign_and_write(&mut locked, crl, now)?;
        Ok(Revocation {
            revoked,
            already,
            expired,
            crl,
        })
    }

    /// Writes the CRL from the record with a fresh `nextUpdate`; revokes nothing.
    pub fn write_crl(&self, crl: &CrlOptions) -> Result<CrlWritten> {
        let mut locked = Locked::open(&self.dir)?;
        self.sign_and_write(&mut locked, crl, now_s())
    }

    /// The index of the certificate in `path`, recording it first if it predates the
    /// record.
    fn pick_file(&self, locked: &mut Locked, path: &Path) -> Result<usize, RevokeError> {
        let foreign = |reason: String| RevokeError::Foreign {
            cert: path.to_path_buf(),
            ca_dir: self.dir.clone(),
            reason,
        };
        let der = CertificateDer::from_pem_file(path)
            .with_context(|| format!("{}: cannot read a PEM certificate", path.display()))?;
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| foreign(format!("unparseable certificate ({e})")))?;
        let ca_der = CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
            .context("re-reading the CA certificate")?;
        let (_, ca) = x509_parser::parse_x509_certificate(ca_der.as_ref())
            .map_err(|e| anyhow::anyhow!("unparseable CA certificate: {e}"))?;
        if cert.issuer().as_raw() != ca.subject().as_raw() {
            return Err(foreign(format!(
                "it is issued by {:?}, this CA is {:?}",
                cert.issuer().to_string(),
                ca.subject().to_string()
            )));
        }
        cert.verify_signature(Some(ca.public_key())).map_err(|e| {
            foreign(format!(
                "its signature does not verify with this CA's key ({e})"
            ))
        })?;
        let serial = Serial::from_der_integer(cert.raw_serial());
        if let Some(i) = locked
            .index
            .certificates
            .iter()
            .position(|c| c.serial == serial)
        {
            return Ok(i);
        }
        let identity = pki::identity_of(&der)
            .map_err(|e| foreign(format!("it carries no corral identity ({e})")))?;
        let secs = |t: x509_parser::time::ASN1Time| {
            UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0).unsigned_abs())
        };
        locked.index.certificates.push(IssuedCert {
            serial,
            name: identity.name,
            role: identity.role,
            issued_at: secs(cert.validity().not_before),
            not_after: secs(cert.validity().not_after),
            revoked_at: None,
        });
        Ok(locked.index.certificates.len() - 1)
    }

    fn sign_and_write(
        &self,
        locked: &mut Locked,
        crl: &CrlOptions,
        now: SystemTime,
    ) -> Result<CrlWritten> {
        if crl.days == 0 {
            bail!("a CRL must stay current for at least one day");
        }
        let number = locked.index.crl_number + 1;
        let next_update = now + Duration::from_secs(u64::from(crl.days) * 86_400);
        let revoked_certs: Vec<RevokedCertParams> = locked
            .index
            .certificates
            .iter()
            .filter(|c| c.not_after > now)
            .filter_map(|c| {
                Some(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(c.serial.as_bytes()),
                    revocation_time: c.revoked_at?.into(),
                    reason_code: None,
                    invalidity_date: None,
                })
            })
            .collect();
        let revoked = revoked_certs.len();
        let params = CertificateRevocationListParams {
            this_update: now.into(),
            next_update: next_update.into(),
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let pem = params
            .signed_by(&self.issuer)
            .context("signing the CRL with the CA key")?
            .pem()
            .context("encoding the CRL")?;
        locked.index.crl_number = number;
        locked.save()?;
        pki::write_atomic(&crl.out, pem.as_bytes(), 0o644)?;
        Ok(CrlWritten {
            path: crl.out.clone(),
            number,
            revoked,
            next_update,
        })
    }
}

/// The record indexes `target` names (module docs of [`RevokeTarget::NameOrSerial`]).
fn pick(locked: &Locked, target: &str, now: SystemTime) -> Result<Vec<usize>, RevokeError> {
    let certs = &locked.index.certificates;
    let by_serial: Vec<usize> = match target.parse::<Serial>() {
        Ok(s) => certs
            .iter()
            .enumerate()
            .filter(|(_, c)| c.serial == s)
            .map(|(i, _)| i)
            .collect(),
        Err(_) => vec![],
    };
    let by_name: Vec<usize> = if target.contains(':') {
        vec![]
    } else {
        certs
            .iter()
            .enumerate()
            .filter(|(_, c)| c.name == target)
            .map(|(i, _)| i)
            .collect()
    };
    match (by_name.is_empty(), by_serial.is_empty()) {
        (false, false) if by_name != by_serial => Err(RevokeError::Ambiguous {
            target: target.to_string(),
            index: locked.path.clone(),
        }),
        (false, _) => Ok(by_name),
        (true, false) => Ok(by_serial),
        (true, true) => Err(RevokeError::Unknown {
            target: target.to_string(),
            index: locked.path.clone(),
            known: known_names(certs, now),
        }),
    }
}

fn known_names(certs: &[IssuedCert], now: SystemTime) -> Vec<KnownName> {
    let mut known: Vec<KnownName> = vec![];
    for c in certs {
        let i = match known
            .iter()
            .position(|k| k.name == c.name && k.role == c.role)
        {
            Some(i) => i,
            None => {
                known.push(KnownName {
                    name: c.name.clone(),
                    role: c.role,
                    valid: 0,
                    revoked: 0,
                    expired: 0,
                });
                known.len() - 1
            }
        };
        let k = &mut known[i];
        match c.status(now) {
            CertStatus::Valid => k.valid += 1,
            CertStatus::Revoked => k.revoked += 1,
            CertStatus::Expired => k.expired += 1,
        }
    }
    known.sort_by(|a, b| a.name.cmp(&b.name));
    known
}

/// RFC 3339 timestamps (UTC, whole seconds) in the record.
mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_seconds(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_rfc3339(&s).map_err(serde::de::Error::custom)
    }
}

mod rfc3339_opt {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => super::rfc3339::serialize(t, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| humantime::parse_rfc3339(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}
