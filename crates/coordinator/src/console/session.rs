//! Browser sessions: what a console login turns into, so that a token or an operator
//! certificate is presented once and the browser then holds only a session cookie.
//!
//! Invariants:
//! - The cookie (`corral_session`) is 256 random bits, `HttpOnly` (no script reads it),
//!   `SameSite=Strict` (no other site's page makes the browser send it), `Path=/`, and
//!   on the HTTPS listener `Secure` and named `__Host-corral_session` (so no sibling
//!   domain or plain-HTTP page can plant one). The coordinator keeps only its SHA-256.
//!   Cookies are not scoped by port: give the console a host name of its own rather
//!   than sharing one with other web services.
//! - Every session has its own CSRF token, handed to the page at login and by
//!   `whoami`; a request that changes something must carry it in `X-CSRF-Token`
//!   ([`Sessions::check_csrf`], compared in constant time), on top of the API's JSON
//!   content type and Origin checks.
//! - A session is the caller its login proved, no more: same user, same role. It ends
//!   at logout, after [`TTL`], when the credential it came from expires or is revoked
//!   (checked on every request by the API), and when the coordinator restarts
//!   (sessions live in memory only: logging in again is cheap, a stolen database
//!   holds no live session).
//! - At most [`PER_CREDENTIAL`] sessions per token or certificate: another login with it
//!   ends its own oldest session, never someone else's. At most [`MAX_SESSIONS`] in all:
//!   beyond that a login is refused (503), so no caller can log others out by logging in.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::access::Caller;

/// The session cookie's name over plain HTTP (loopback, `corral dev`).
pub(crate) const COOKIE: &str = "corral_session";
/// Its name over HTTPS: the `__Host-` prefix makes the browser refuse one that is not
/// `Secure`, host-only and for `/`.
pub(crate) const SECURE_COOKIE: &str = "__Host-corral_session";
/// The header a changing request carries its CSRF token in.
pub(crate) const CSRF_HEADER: &str = "x-csrf-token";
/// How long a session lasts, however active.
pub(crate) const TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at once.
pub(crate) const MAX_SESSIONS: usize = 10_000;
/// Sessions one token or certificate holds at once.
pub(crate) const PER_CREDENTIAL: usize = 16;

/// What a credential needs re-checked while its session lasts.
#[derive(Debug, Clone)]
pub(crate) enum Proof {
    /// A token: still not revoked or expired.
    Token,
    /// An operator certificate (its DER): still not revoked.
    Certificate(rustls::pki_types::CertificateDer<'static>),
}

#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub caller: Caller,
    pub csrf: String,
    pub proof: Proof,
    created: Instant,
}

/// The live sessions, by the hash of their cookie.
pub(crate) struct Sessions {
    by_hash: Mutex<HashMap<[u8; 32], Session>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn digest(cookie: &str) -> [u8; 32] {
    Sha256::digest(cookie.as_bytes()).into()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Why a session-authenticated request is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum SessionError {
    #[error("the console session has ended (logged out, expired or the coordinator restarted); log in again")]
    Unknown,
    #[error("this request changes something and needs the console's CSRF token in X-CSRF-Token; reload the console page and try again")]
    Csrf,
    #[error("{MAX_SESSIONS} console sessions are open, the most this coordinator keeps; try again later or restart the coordinator to end them all")]
    Full,
}

impl Sessions {
    pub(crate) fn new() -> Sessions {
        Sessions {
            by_hash: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        self.by_hash.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a session for `caller`; returns the cookie value and the session.
    pub(crate) fn create(
        &self,
        caller: Caller,
        proof: Proof,
    ) -> Result<(String, Session), SessionError> {
        let cookie = hex(&rand::random::<[u8; 32]>());
        let session = Session {
            caller,
            csrf: hex(&rand::random::<[u8; 32]>()),
            proof,
            created: Instant::now(),
        };
        let mut all = self.lock();
        all.retain(|_, s| s.created.elapsed() < TTL);
        let same = |s: &Session| s.caller.via == session.caller.via;
        if all.values().filter(|s| same(s)).count() >= PER_CREDENTIAL {
            let oldest = all
                .iter()
                .filter(|(_, s)| same(s))
                .min_by_key(|(_, s)| s.created)
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                all.remove(&k);
            }
        }
        if all.len() >= MAX_SESSIONS {
            return Err(SessionError::Full);
        }
        all.insert(digest(&cookie), session.clone());
        Ok((cookie, session))
    }

    /// The live session of `cookie`.
    pub(crate) fn get(&self, cookie: &str) -> Result<Session, SessionError> {
        let key = digest(cookie);
        let mut all = self.lock();
        match all.get(&key) {
            Some(s) if s.created.elapsed() < TTL => Ok(s.clone()),
            Some(_) => {
                all.remove(&key);
                Err(SessionError::Unknown)
            }
            None => Err(SessionError::Unknown),
        }
    }

    /// Refuses a changing request whose `X-CSRF-Token` is not `session`'s.
    pub(crate) fn check_csrf(session: &Session, header: Option<&str>) -> Result<(), SessionError> {
        match header {
            Some(h) if constant_time_eq(h.trim().as_bytes(), session.csrf.as_bytes()) => Ok(()),
            _ => Err(SessionError::Csrf),
        }
    }

    /// Ends the session of `cookie` (no error if it had already ended).
    pub(crate) fn end(&self, cookie: &str) {
        self.lock().remove(&digest(cookie));
    }

    /// Sessions open now.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// The `corral_session` value of a `Cookie` header.
pub(crate) fn cookie_of(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE || *k == SECURE_COOKIE)
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// The `Set-Cookie` value that starts (`Some(cookie)`) or ends (`None`) a session.
pub(crate) fn set_cookie(cookie: Option<&str>, secure: bool) -> String {
    let (name, flag) = if secure {
        (SECURE_COOKIE, "; Secure")
    } else {
        (COOKIE, "")
    };
    match cookie {
        Some(c) => format!(
            "{name}={c}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{flag}",
            TTL.as_secs()
        ),
        None => format!("{name}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{flag}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_proto::api::{Role, Via};

    fn alice() -> Caller {
        Caller {
            user: "alice".into(),
            role: Role::Viewer,
            via: Via::Token { id: "t1".into() },
        }
    }

    #[test]
    fn a_session_is_found_by_its_cookie_only_until_it_ends() {
        let s = Sessions::new();
        let (cookie, made) = s.create(alice(), Proof::Token).unwrap();
        assert_eq!(cookie.len(), 64);
        assert_eq!(s.get(&cookie).unwrap().caller, alice());
        assert_eq!(
            s.get("0".repeat(64).as_str()).unwrap_err(),
            SessionError::Unknown
        );
        assert_eq!(Sessions::check_csrf(&made, Some(&made.csrf)), Ok(()));
        assert_eq!(Sessions::check_csrf(&made, None), Err(SessionError::Csrf));
        assert_eq!(
            Sessions::check_csrf(&made, Some(&cookie)),
            Err(SessionError::Csrf),
            "the cookie is not the CSRF token"
        );
        s.end(&cookie);
        assert_eq!(s.get(&cookie).unwrap_err(), SessionError::Unknown);
    }

    #[test]
    fn logging_in_again_and_again_ends_only_the_same_credentials_oldest_sessions() {
        let s = Sessions::new();
        let bob = Caller {
            user: "bob".into(),
            role: Role::Admin,
            via: Via::Token { id: "t2".into() },
        };
        let (bobs, _) = s.create(bob, Proof::Token).unwrap();
        let (first, _) = s.create(alice(), Proof::Token).unwrap();
        for _ in 0..3 * PER_CREDENTIAL {
            s.create(alice(), Proof::Token).unwrap();
        }
        assert_eq!(s.len(), PER_CREDENTIAL + 1);
        assert!(s.get(&first).is_err(), "alice's oldest session ended");
        assert!(s.get(&bobs).is_ok(), "bob's session is untouched");
    }

    #[test]
    fn the_cookie_is_httponly_samesite_strict_and_secure_over_https() {
        let c = set_cookie(Some("abc"), true);
        assert!(c.starts_with("__Host-corral_session=abc; Path=/; HttpOnly; SameSite=Strict"));
        assert!(c.ends_with("; Secure"));
        assert!(!set_cookie(Some("abc"), false).contains("Secure"));
        assert!(set_cookie(None, false).contains("Max-Age=0"));
        let mut h = axum::http::HeaderMap::new();
        h.insert(
            axum::http::header::COOKIE,
            "theme=dark; corral_session=abc ; x=1".parse().unwrap(),
        );
        assert_eq!(cookie_of(&h).as_deref(), Some("abc"));
    }
}
