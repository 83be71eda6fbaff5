//! Join tokens and TLS bootstrap: how a new node gets its certificate without anyone
//! copying one to it, as kubelet TLS bootstrap does.
//!
//! `corral tokens create --join --pool P --ttl 1h` (or the pool policy, for each node
//! it creates) makes a token `corral-join_<id>_<secret>`. The new node's `corral join`
//! generates its key locally and sends `POST /api/v1/join` with the token and a PKCS#10
//! request for that key; the coordinator answers with a certificate for the node name
//! the token assigns, signed by the cluster CA and recorded beside it (so `corral certs
//! revoke NAME` works on it).
//!
//! Invariants:
//! - Only the SHA-256 of a token's secret is stored; the secret is shown once. The
//!   secret's hash is compared in constant time.
//! - A token works once: it is marked used, and that is on disk, before the
//!   certificate is signed. A second use, an expired or a revoked token is refused,
//!   saying which, and nothing is issued.
//! - The certificate names what the token says (its node, or the next name of its
//!   pool), never what the request asks for, and has the `agent` role only.
//! - A request that is not a valid CSR is refused before the token is spent, so a
//!   broken client cannot burn a token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::access::{constant_time_eq, hash, hex, unix_ms};
use crate::store::{RecordKind, Store};
use corral_proto::pool::{CreatedJoinToken, JoinAnswer, JoinTokenView};
use corral_transport::pki::Ca;

const PREFIX: &str = "corral-join_";

/// Longest a join token may live: it is a bootstrap secret, not a credential.
pub const MAX_TTL: Duration = Duration::from_secs(7 * 86400);

/// A join token as stored (the `join-token` records).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct JoinTokenRow {
    pub id: String,
    pub pool: String,
    pub node: Option<String>,
    /// Hex SHA-256 of the secret.
    pub hash: String,
    pub created_by: String,
    pub created_ms: u64,
    pub expires_ms: u64,
    #[serde(default)]
    pub used_ms: Option<u64>,
    #[serde(default)]
    pub used_by: Option<String>,
    #[serde(default)]
    pub revoked_ms: Option<u64>,
}

impl JoinTokenRow {
    pub fn view(&self) -> JoinTokenView {
        JoinTokenView {
            id: self.id.clone(),
            pool: self.pool.clone(),
            node: self.node.clone(),
            created_by: self.created_by.clone(),
            created_ms: self.created_ms,
            expires_ms: self.expires_ms,
            used_ms: self.used_ms,
            used_by: self.used_by.clone(),
            revoked_ms: self.revoked_ms,
        }
    }
}

/// Why a join was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    #[error("the join token is not one this coordinator issued (malformed, unknown or wrong); make a new one with `corral tokens create --join --pool POOL --ttl 1h`")]
    BadToken,
    #[error("join token {0} has expired; make a new one with `corral tokens create --join --pool POOL --ttl 1h`")]
    Expired(String),
    #[error("join token {id} was already used (by {by}); a join token works once: make a new one with `corral tokens create --join --pool POOL --ttl 1h`")]
    Used { id: String, by: String },
    #[error("join token {0} has been revoked; make a new one with `corral tokens create --join --pool POOL --ttl 1h`")]
    Revoked(String),
    #[error("this coordinator signs no join requests: it has no [join] section with the cluster CA (ca_dir)")]
    NoCa,
    #[error("{0}")]
    BadRequest(String),
    #[error("no join token {0}; `corral tokens list --join` shows them")]
    Unknown(String),
    #[error("{0}")]
    Failed(String),
}

/// The join tokens and the CA that signs for them.
pub(crate) struct JoinTokens {
    tokens: Mutex<HashMap<String, JoinTokenRow>>,
    store: Arc<Store>,
    ca: Option<Arc<Ca>>,
    cert_days: u32,
}

impl JoinTokens {
    pub fn new(
        rows: Vec<JoinTokenRow>,
        store: Arc<Store>,
        ca: Option<Arc<Ca>>,
        cert_days: u32,
    ) -> JoinTokens {
        JoinTokens {
            tokens: Mutex::new(rows.into_iter().map(|t| (t.id.clone(), t)).collect()),
            store,
            ca,
            cert_days,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, JoinTokenRow>> {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cluster CA's certificate, for user data (`{ca_pem}`).
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca.as_deref().map(Ca::cert_pem)
    }

    /// Makes a token for one node of `pool` (`node` fixed, or assigned at join), valid
    /// for `ttl`; returns once it is on disk.
    pub async fn create(
        &self,
        pool: &str,
        node: Option<String>,
        ttl: Duration,
        by: &str,
    ) -> Result<CreatedJoinToken, JoinError> {
        if ttl.is_zero() || ttl > MAX_TTL {
            return Err(JoinError::BadRequest(format!(
                "a join token lives between 1 s and {}; ask for --ttl 1h, say",
                humantime::format_duration(MAX_TTL)
            )));
        }
        let id = format!("j{}", hex(&rand::random::<[u8; 6]>()));
        let secret = hex(&rand::random::<[u8; 32]>());
        let now = unix_ms();
        let row = JoinTokenRow {
            id: id.clone(),
            pool: pool.to_string(),
            node,
            hash: hash(&secret),
            created_by: by.to_string(),
            created_ms: now,
            expires_ms: now.saturating_add(ttl.as_millis() as u64),
            used_ms: None,
            used_by: None,
            revoked_ms: None,
        };
        self.store
            .put_record(RecordKind::JoinToken, &id, Some(&row))
            .await
            .map_err(|e| JoinError::Failed(format!("recording the token failed: {e:#}")))?;
        let token = row.view();
        self.lock().insert(id.clone(), row);
        Ok(CreatedJoinToken {
            secret: format!("{PREFIX}{id}_{secret}"),
            token,
        })
    }

    /// The ids of `node`'s join tokens that were neither used nor revoked.
    pub fn unused_for(&self, node: &str) -> Vec<String> {
        self.lock()
            .values()
            .filter(|t| {
                t.node.as_deref() == Some(node) && t.used_ms.is_none() && t.revoked_ms.is_none()
            })
            .map(|t| t.id.clone())
            .collect()
    }

    /// Every join token, newest first.
    pub fn list(&self) -> Vec<JoinTokenView> {
        let mut all: Vec<JoinTokenView> = self.lock().values().map(JoinTokenRow::view).collect();
        all.sort_by(|a, b| (b.created_ms, &b.id).cmp(&(a.created_ms, &a.id)));
        all
    }

    /// Revokes `id` (again: no change); it stops working once this returns.
    pub async fn revoke(&self, id: &str) -> Result<JoinTokenView, JoinError> {
        let row = self
            .lock()
            .get(id)
            .cloned()
            .ok_or_else(|| JoinError::Unknown(id.to_string()))?;
        if row.revoked_ms.is_some() || row.used_ms.is_some() {
            return Ok(row.view());
        }
        let revoked = JoinTokenRow {
            revoked_ms: Some(unix_ms()),
            ..row
        };
        self.store
            .put_record(RecordKind::JoinToken, id, Some(&revoked))
            .await
            .map_err(|e| JoinError::Failed(format!("recording the revocation failed: {e:#}")))?;
        let view = revoked.view();
        self.lock().insert(id.to_string(), revoked);
        Ok(view)
    }

    /// Redeems `secret` for a certificate for `csr_pem`'s key. `assign` names the node,
    /// given the token's pool and its node (if it names one), once the token is claimed;
    /// a refusal there gives the token back.
    pub async fn redeem(
        &self,
        secret: &str,
        csr_pem: &str,
        assign: impl FnOnce(&str, Option<&str>) -> Result<String, JoinError>,
    ) -> Result<(String, JoinAnswer), JoinError> {
        let Some(ca) = self.ca.clone() else {
            return Err(JoinError::NoCa);
        };
        let (id, given) = secret
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split_once('_'))
            .ok_or(JoinError::BadToken)?;
        // Checked before the token is spent (see the module doc).
        if let Err(e) = rcgen_check(csr_pem) {
            return Err(JoinError::BadRequest(e));
        }
        // Claimed under the lock, so two joins racing with one token cannot both pass:
        // the loser sees it used.
        let row = {
            let mut tokens = self.lock();
            let row = tokens.get(id).ok_or(JoinError::BadToken)?;
            if !constant_time_eq(hash(given).as_bytes(), row.hash.as_bytes()) {
                return Err(JoinError::BadToken);
            }
            if row.revoked_ms.is_some() {
                return Err(JoinError::Revoked(id.into()));
            }
            if let Some(by) = &row.used_by {
                return Err(JoinError::Used {
                    id: id.into(),
                    by: by.clone(),
                });
            }
            if unix_ms() >= row.expires_ms {
                return Err(JoinError::Expired(id.into()));
            }
            let row = row.clone();
            let claimed = JoinTokenRow {
                used_ms: Some(unix_ms()),
                used_by: Some(
                    row.node
                        .clone()
                        .unwrap_or_else(|| "a node joining now".into()),
                ),
                ..row.clone()
            };
            tokens.insert(id.to_string(), claimed);
            row
        };
        let give_back = |row: JoinTokenRow| {
            self.lock().insert(row.id.clone(), row);
        };
        let node = match assign(&row.pool, row.node.as_deref()) {
            Ok(n) => n,
            Err(e) => {
                give_back(row);
                return Err(e);
            }
        };
        let used = JoinTokenRow {
            used_ms: Some(unix_ms()),
            used_by: Some(node.clone()),
            ..row.clone()
        };
        self.lock().insert(id.to_string(), used.clone());
        if let Err(e) = self
            .store
            .put_record(RecordKind::JoinToken, id, Some(&used))
            .await
        {
            // Not on disk: not spent, so it must not be usable twice after a restart
            // either; refuse and put it back as it was.
            give_back(row);
            return Err(JoinError::Failed(format!(
                "recording the token's use failed: {e:#}; nothing was issued, try again"
            )));
        }
        let days = self.cert_days;
        let csr = csr_pem.to_string();
        let name = node.clone();
        let issued = tokio::task::spawn_blocking(move || ca.issue_for_request(&csr, &name, days))
            .await
            .map_err(|e| JoinError::Failed(format!("signing failed: {e}")))?
            .map_err(|e| JoinError::Failed(format!("signing the certificate failed: {e:#}")))?;
        let not_after_ms = issued
            .not_after
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Ok((
            row.pool,
            JoinAnswer {
                node,
                cert_pem: issued.cert_pem,
                ca_pem: self.ca_pem().unwrap_or_default().to_string(),
                not_after_ms,
                coordinator: String::new(),
            },
        ))
    }
}

/// Whether `csr_pem` is a PKCS#10 request with a good signature.
fn rcgen_check(csr_pem: &str) -> Result<(), String> {
    if csr_pem.len() > 16 * 1024 {
        return Err("the certificate request is larger than 16 KiB; send one PEM CSR".into());
    }
    corral_transport::pki::check_request(csr_pem).map_err(|e| format!("{e:#}"))
}
