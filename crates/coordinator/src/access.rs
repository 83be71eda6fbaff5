//! Who is asking, and what they may do: every API request but `/healthz` is made by an
//! authenticated [`Caller`] with a [`Role`].
//!
//! Three ways to be someone:
//! - the Unix socket: the kernel names the caller (`SO_PEERCRED`); root is `admin`,
//!   other local users take `[access] local_role` (default `user`);
//! - a bearer token made by `corral tokens create`: its user and role are the token's;
//! - an operator certificate from the cluster CA on the HTTPS listener: CN = user, role
//!   `[access] certificate_role` (default `admin`: operators run the cluster).
//!
//! `[access] roles` names a role per user and overrides both defaults (root on the
//! socket stays `admin`: it can read the database anyway).
//!
//! Invariants:
//! - Tokens are stored as the SHA-256 of their secret only; the secret is shown once,
//!   at creation. A token is `corral_<id>_<secret>`: the id finds the row, the secret's
//!   hash is compared in constant time, and expiry and revocation are checked on every
//!   use. A token is usable (or revoked) only once its row is committed.
//! - A failed authentication says which credential was wrong and what to do, never
//!   whether another user's token exists.
//! - The rules of who may see or change a job live here ([`Caller::may_manage`]), not
//!   in each handler.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::{Store, TokenRow};
use corral_proto::api::{CreateToken, CreatedToken, Role, TokenView, Via};

/// The coordinator's `[access]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessSection {
    /// Roles by user name; they override `local_role` and `certificate_role`.
    pub roles: BTreeMap<String, Role>,
    /// Local users on the Unix socket other than root.
    pub local_role: Role,
    /// Operator certificates on the HTTPS listener.
    pub certificate_role: Role,
}

impl Default for AccessSection {
    fn default() -> Self {
        AccessSection {
            roles: BTreeMap::new(),
            local_role: Role::User,
            certificate_role: Role::Admin,
        }
    }
}

/// An authenticated caller of the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user: String,
    pub role: Role,
    pub via: Via,
}

impl Caller {
    /// Whether the caller has at least `role`.
    pub fn has(&self, role: Role) -> bool {
        self.role >= role
    }

    /// Whether the caller may see in full, and cancel, a job owned by `owner`: its
    /// owner (with at least the `user` role) or an admin.
    pub fn may_manage(&self, owner: &str) -> bool {
        self.role == Role::Admin
            || (self.role >= Role::User && !owner.is_empty() && owner == self.user)
    }

    /// How the caller is named in events and logs: `alice (token t-1a2b)`.
    pub fn describe(&self) -> String {
        match &self.via {
            Via::Socket { uid } => format!("{} (local uid {uid})", self.user),
            Via::Token { id } => format!("{} (token {id})", self.user),
            Via::Certificate { serial } => format!("{} (certificate {serial})", self.user),
        }
    }
}

/// Why a request is not anyone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no credentials: use the Unix socket on the coordinator host, a bearer token (`corral tokens create`; CLI: CORRAL_TOKEN or --token-file) or an operator certificate")]
    Missing,
    #[error("the bearer token is not one this coordinator issued (malformed, unknown or wrong); ask an admin for a new one (`corral tokens create`)")]
    BadToken,
    #[error("token {0} has expired; ask an admin for a new one (`corral tokens create`)")]
    Expired(String),
    #[error("token {0} has been revoked; ask an admin for a new one (`corral tokens create`)")]
    Revoked(String),
    #[error("local uid {0} has no user name on the coordinator host (`getent passwd {0}`)")]
    UnknownUid(u32),
}

/// Why a token could not be made or revoked.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{0:?} is not a user name; use letters, digits, '-', '_' and '.'")]
    BadUser(String),
    #[error("no token {0}; `corral tokens list` shows them")]
    Unknown(String),
    #[error("recording the token failed: {0:#}")]
    Store(anyhow::Error),
}

const PREFIX: &str = "corral_";

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(crate) fn hash(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `name` can name a user (what tokens and roles may carry).
pub fn valid_user(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn view(t: &TokenRow) -> TokenView {
    TokenView {
        id: t.id.clone(),
        user: t.user.clone(),
        role: t.role.parse().unwrap_or(Role::Viewer),
        created_by: t.created_by.clone(),
        created_ms: t.created_ms,
        expires_ms: t.expires_ms,
        revoked_ms: t.revoked_ms,
    }
}

/// Authentication and the token table.
pub struct Access {
    section: AccessSection,
    /// By token id.
    tokens: Mutex<HashMap<String, TokenRow>>,
    store: Arc<Store>,
}

impl Access {
    pub(crate) fn new(section: AccessSection, tokens: Vec<TokenRow>, store: Arc<Store>) -> Access {
        Access {
            section,
            tokens: Mutex::new(tokens.into_iter().map(|t| (t.id.clone(), t)).collect()),
            store,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, TokenRow>> {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A caller on the Unix socket, named by the kernel.
    pub fn local(&self, uid: u32) -> Result<Caller, AuthError> {
        let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|u| u.name)
            .ok_or(AuthError::UnknownUid(uid))?;
        let role = if uid == 0 {
            Role::Admin
        } else {
            self.section
                .roles
                .get(&user)
                .copied()
                .unwrap_or(self.section.local_role)
        };
        Ok(Caller {
            user,
            role,
            via: Via::Socket { uid },
        })
    }

    /// A caller with an operator certificate whose common name is `user`.
    pub fn certificate(&self, user: &str, serial: String) -> Caller {
        let role = self
            .section
            .roles
            .get(user)
            .copied()
            .unwrap_or(self.section.certificate_role);
        Caller {
            user: user.to_string(),
            role,
            via: Via::Certificate { serial },
        }
    }

    /// The caller a bearer token stands for.
    pub fn bearer(&self, token: &str) -> Result<Caller, AuthError> {
        let (id, secret) = token
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split_once('_'))
            .ok_or(AuthError::BadToken)?;
        let tokens = self.lock();
        let row = tokens.get(id).ok_or(AuthError::BadToken)?;
        if !constant_time_eq(hash(secret).as_bytes(), row.hash.as_bytes()) {
            return Err(AuthError::BadToken);
        }
        if row.revoked_ms.is_some() {
            return Err(AuthError::Revoked(row.id.clone()));
        }
        if row.expires_ms.is_some_and(|e| e <= unix_ms()) {
            return Err(AuthError::Expired(row.id.clone()));
        }
        let role = row.role.parse().map_err(|_| AuthError::BadToken)?;
        Ok(Caller {
            user: row.user.clone(),
            role,
            via: Via::Token { id: row.id.clone() },
        })
    }

    /// Whether the credential a caller was authenticated with still holds: a token not
    /// revoked or expired since (console sessions outlive the request that proved it).
    /// Other credentials are re-checked where they are presented.
    pub fn still_valid(&self, via: &Via) -> Result<(), AuthError> {
        let Via::Token { id } = via else {
            return Ok(());
        };
        let tokens = self.lock();
        let row = tokens.get(id).ok_or(AuthError::BadToken)?;
        if row.revoked_ms.is_some() {
            return Err(AuthError::Revoked(row.id.clone()));
        }
        if row.expires_ms.is_some_and(|e| e <= unix_ms()) {
            return Err(AuthError::Expired(row.id.clone()));
        }
        Ok(())
    }

    /// Makes a token for `req.user` with `req.role`; `by` is who asked (an admin).
    pub async fn create_token(
        &self,
        by: &Caller,
        req: CreateToken,
    ) -> Result<CreatedToken, TokenError> {
        if !valid_user(&req.user) {
            return Err(TokenError::BadUser(req.user));
        }
        let id = format!("t{}", hex(&rand::random::<[u8; 6]>()));
        let secret = hex(&rand::random::<[u8; 32]>());
        let now = unix_ms();
        let row = TokenRow {
            id: id.clone(),
            user: req.user,
            role: req.role.as_str().to_string(),
            hash: hash(&secret),
            created_by: by.user.clone(),
            created_ms: now,
            expires_ms: req
                .ttl_secs
                .map(|s| now.saturating_add(s.saturating_mul(1000))),
            revoked_ms: None,
        };
        self.store
            .put_token(row.clone())
            .await
            .map_err(TokenError::Store)?;
        let token = view(&row);
        self.lock().insert(id.clone(), row);
        Ok(CreatedToken {
            secret: format!("{PREFIX}{id}_{secret}"),
            token,
        })
    }

    /// Every token, oldest first.
    pub fn list_tokens(&self) -> Vec<TokenView> {
        let mut all: Vec<TokenView> = self.lock().values().map(view).collect();
        all.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        all
    }

    /// Revokes token `id` (again: no change). It stops working once this returns.
    pub async fn revoke_token(&self, id: &str) -> Result<TokenView, TokenError> {
        let row = self
            .lock()
            .get(id)
            .cloned()
            .ok_or_else(|| TokenError::Unknown(id.to_string()))?;
        if row.revoked_ms.is_some() {
            return Ok(view(&row));
        }
        let revoked = TokenRow {
            revoked_ms: Some(unix_ms()),
            ..row
        };
        self.store
            .put_token(revoked.clone())
            .await
            .map_err(TokenError::Store)?;
        let out = view(&revoked);
        self.lock().insert(id.to_string(), revoked);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(user: &str, role: Role) -> Caller {
        Caller {
            user: user.into(),
            role,
            via: Via::Token { id: "t1".into() },
        }
    }

    fn access(dir: &std::path::Path, section: AccessSection) -> Access {
        let (store, loaded) = Store::open(dir, 100).unwrap();
        Access::new(section, loaded.tokens, Arc::new(store))
    }

    #[test]
    fn owners_and_admins_manage_a_job_and_nobody_else_does() {
        assert!(caller("alice", Role::User).may_manage("alice"));
        assert!(!caller("bob", Role::User).may_manage("alice"));
        assert!(!caller("alice", Role::Viewer).may_manage("alice"));
        assert!(caller("ops", Role::Admin).may_manage("alice"));
        // A job from before owners were recorded belongs to no user.
        assert!(!caller("", Role::User).may_manage(""));
        assert!(caller("ops", Role::Admin).may_manage(""));
    }

    #[test]
    fn local_root_is_admin_and_other_local_users_take_the_configured_role() {
        let dir = tempfile::tempdir().unwrap();
        let a = access(dir.path(), AccessSection::default());
        assert_eq!(a.local(0).unwrap().role, Role::Admin);
        // nobody exists on every Debian machine.
        let nobody = a.local(65534).unwrap();
        assert_eq!((nobody.user.as_str(), nobody.role), ("nobody", Role::User));
        let mut section = AccessSection::default();
        section.roles.insert("nobody".into(), Role::Viewer);
        section.roles.insert("root".into(), Role::Viewer);
        let dir = tempfile::tempdir().unwrap();
        let a = access(dir.path(), section);
        assert_eq!(a.local(65534).unwrap().role, Role::Viewer);
        assert_eq!(a.local(0).unwrap().role, Role::Admin, "root stays admin");
        assert_eq!(a.local(4_000_000), Err(AuthError::UnknownUid(4_000_000)));
    }

    #[tokio::test]
    async fn a_token_works_until_it_is_revoked_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let admin = caller("ops", Role::Admin);
        let secret = {
            let a = access(dir.path(), AccessSection::default());
            let made = a
                .create_token(
                    &admin,
                    CreateToken {
                        user: "alice".into(),
                        role: Role::User,
                        ttl_secs: None,
                    },
                )
                .await
                .unwrap();
            let who = a.bearer(&made.secret).unwrap();
            assert_eq!((who.user.as_str(), who.role), ("alice", Role::User));
            assert_eq!(made.token.created_by, "ops");
            a.store.flush().await;
            made.secret
        };
        // A new process: the token is read back (as a hash) and still works.
        let a = access(dir.path(), AccessSection::default());
        let id = a.bearer(&secret).unwrap();
        let Via::Token { id } = id.via else {
            panic!("not a token caller")
        };
        assert!(a
            .list_tokens()
            .iter()
            .all(|t| !format!("{t:?}").contains(secret.rsplit('_').next().unwrap())));
        a.revoke_token(&id).await.unwrap();
        assert_eq!(a.bearer(&secret), Err(AuthError::Revoked(id.clone())));
        // Revoking again changes nothing; an unknown id is named.
        assert!(a.revoke_token(&id).await.is_ok());
        assert!(matches!(
            a.revoke_token("tnope").await,
            Err(TokenError::Unknown(_))
        ));
    }

    #[tokio::test]
    async fn a_wrong_expired_or_malformed_token_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = access(dir.path(), AccessSection::default());
        let made = a
            .create_token(
                &caller("ops", Role::Admin),
                CreateToken {
                    user: "alice".into(),
                    role: Role::Viewer,
                    ttl_secs: Some(0),
                },
            )
            .await
            .unwrap();
        assert_eq!(
            a.bearer(&made.secret),
            Err(AuthError::Expired(made.token.id.clone()))
        );
        let forged = format!("corral_{}_{}", made.token.id, "0".repeat(64));
        assert_eq!(a.bearer(&forged), Err(AuthError::BadToken));
        for bad in ["", "corral_", "Bearer x", "corral_nounderscore"] {
            assert_eq!(a.bearer(bad), Err(AuthError::BadToken), "{bad:?}");
        }
        let err = a
            .create_token(
                &caller("ops", Role::Admin),
                CreateToken {
                    user: "a b".into(),
                    role: Role::User,
                    ttl_secs: None,
                },
            )
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not a user name"));
    }
}
