//! Who Ray runs as (`[ray] user`, `[ray] allow_root`).
//!
//! Ray has no authentication of its own: whoever reaches a cluster's ports can run code
//! on every node, as the user Ray runs as. So:
//! - An agent running as root does not run Ray as root. `user` names an unprivileged
//!   account; without it, Ray is not started (state `failed`, a message naming
//!   `ray.user`) unless `allow_root = true` says root is meant. A `user` that is uid 0
//!   (root or an alias of it) needs `allow_root` too.
//! - An agent that is not root can run Ray only as itself: `user` must be unset or name
//!   the agent's own account. Another name is refused, not ignored.
//! - Switching happens in the child before `exec` ([`super::process`]): supplementary
//!   groups (the account's `getgrouplist`), then the primary group, then the uid, and a
//!   check that root cannot be regained. A uid change away from root drops every
//!   capability. `HOME`, `USER`, `LOGNAME` and `SHELL` come from the account's passwd
//!   entry.
//!
//! Trade-off: the account is looked up (through NSS, so LDAP accounts work) each time
//! the supervisor prepares Ray, that is at agent start and while Ray cannot be started;
//! a group membership changed later applies from the next agent restart.

use crate::identity::{LookupError, User};

/// The account Ray runs as, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RayUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Every group of the account, the primary one included.
    pub groups: Vec<u32>,
    /// `HOME`, `USER`, `LOGNAME`, `SHELL` from the passwd entry; empty for an agent
    /// whose own uid has no entry (its environment is then left as it is).
    pub env: Vec<(String, String)>,
    /// Whether the child switches to this account (the agent is root, this is not).
    pub switch: bool,
}

/// Why Ray may not run as configured; each message names the key and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RayUserError {
    #[error("the agent runs as root and ray.user is not set: Ray, and the code of every Ray job, would run as root (Ray's ports accept work from anyone who can reach them). Create an unprivileged account (for example `useradd --system --user-group --create-home --home-dir /var/lib/corral-ray corral-ray`), set ray.user = \"corral-ray\" and restart the agent; or set ray.allow_root = true to run Ray as root knowingly")]
    RootWithoutUser,
    #[error("ray.user = {user:?} is uid 0: Ray, and the code of every Ray job, would run as root; name an unprivileged account, or set ray.allow_root = true to run Ray as root knowingly")]
    RootUser { user: String },
    #[error("ray.user = {user:?}, but this agent runs as {agent} (uid {agent_uid}), not root, so it can run Ray only as {agent}; remove ray.user, or run the agent as root")]
    NotPrivileged {
        user: String,
        agent: String,
        agent_uid: u32,
    },
    #[error("ray.user: {0}")]
    Lookup(LookupError),
}

impl RayUser {
    fn of(user: User, switch: bool) -> RayUser {
        RayUser {
            env: user.identity_env(),
            name: user.name,
            uid: user.uid,
            gid: user.gid,
            groups: user.groups,
            switch,
        }
    }

    /// The agent's own identity, looked up when the user database has it.
    pub fn agent() -> RayUser {
        match User::current() {
            Ok(u) => RayUser::of(u, false),
            Err(_) => {
                // SAFETY: geteuid and getegid cannot fail.
                let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
                RayUser {
                    name: format!("uid {uid}"),
                    uid,
                    gid,
                    groups: vec![gid],
                    env: vec![],
                    switch: false,
                }
            }
        }
    }

    /// Resolves `[ray] user` / `allow_root` for this agent. Blocking: the lookups go
    /// through NSS, which may ask a directory server.
    pub fn resolve(user: Option<&str>, allow_root: bool) -> Result<RayUser, RayUserError> {
        // SAFETY: geteuid cannot fail.
        let euid = unsafe { libc::geteuid() };
        decide(user, allow_root, euid, RayUser::agent, User::lookup)
    }

    /// `name (uid N)`, for messages.
    pub fn describe(&self) -> String {
        if self.name.starts_with("uid ") {
            self.name.clone()
        } else {
            format!("{} (uid {})", self.name, self.uid)
        }
    }
}

/// The rule itself, with the agent's identity and the account lookup passed in.
fn decide(
    user: Option<&str>,
    allow_root: bool,
    euid: u32,
    agent: impl Fn() -> RayUser,
    lookup: impl Fn(&str) -> Result<User, LookupError>,
) -> Result<RayUser, RayUserError> {
    if euid == 0 {
        let Some(name) = user else {
            return if allow_root {
                Ok(agent())
            } else {
                Err(RayUserError::RootWithoutUser)
            };
        };
        let u = lookup(name).map_err(RayUserError::Lookup)?;
        if u.uid == 0 {
            return if allow_root {
                Ok(RayUser::of(u, false))
            } else {
                Err(RayUserError::RootUser { user: name.into() })
            };
        }
        return Ok(RayUser::of(u, true));
    }
    let me = agent();
    match user {
        None => Ok(me),
        Some(name) if name == me.name => Ok(me),
        Some(name) => match lookup(name) {
            Ok(u) if u.uid == euid => Ok(me),
            Ok(_) => Err(RayUserError::NotPrivileged {
                user: name.into(),
                agent: me.name.clone(),
                agent_uid: euid,
            }),
            Err(e) => Err(RayUserError::Lookup(e)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, uid: u32) -> User {
        User {
            name: name.into(),
            uid,
            gid: uid,
            groups: vec![uid, 27],
            home: format!("/home/{name}").into(),
            shell: "/bin/sh".into(),
        }
    }

    fn lookup(name: &str) -> Result<User, LookupError> {
        match name {
            "root" => Ok(user("root", 0)),
            "toor" => Ok(user("toor", 0)),
            "corral-ray" => Ok(user("corral-ray", 990)),
            "dev" => Ok(user("dev", 1000)),
            "dev-alias" => Ok(user("dev-alias", 1000)),
            other => Err(LookupError::Unknown(other.into())),
        }
    }

    fn agent_as(name: &'static str, uid: u32) -> impl Fn() -> RayUser {
        move || RayUser::of(user(name, uid), false)
    }

    #[test]
    fn a_root_agent_without_ray_user_refuses_ray_and_names_the_key() {
        let e = decide(None, false, 0, agent_as("root", 0), lookup).unwrap_err();
        assert_eq!(e, RayUserError::RootWithoutUser);
        let m = e.to_string();
        assert!(
            m.contains("ray.user") && m.contains("ray.allow_root"),
            "{m}"
        );
    }

    #[test]
    fn a_root_agent_runs_ray_as_root_only_when_allowed() {
        let r = decide(None, true, 0, agent_as("root", 0), lookup).unwrap();
        assert_eq!((r.uid, r.switch), (0, false));
        for name in ["root", "toor"] {
            let e = decide(Some(name), false, 0, agent_as("root", 0), lookup).unwrap_err();
            assert_eq!(e, RayUserError::RootUser { user: name.into() });
            let r = decide(Some(name), true, 0, agent_as("root", 0), lookup).unwrap();
            assert_eq!((r.uid, r.switch), (0, false));
        }
    }

    #[test]
    fn a_root_agent_switches_to_the_ray_user_with_its_groups_and_home() {
        let r = decide(Some("corral-ray"), false, 0, agent_as("root", 0), lookup).unwrap();
        assert_eq!((r.uid, r.gid, r.switch), (990, 990, true));
        assert_eq!(r.groups, vec![990, 27]);
        assert!(r.env.contains(&("HOME".into(), "/home/corral-ray".into())));
        assert!(r.env.contains(&("USER".into(), "corral-ray".into())));
        assert!(r.env.contains(&("LOGNAME".into(), "corral-ray".into())));
    }

    #[test]
    fn an_unknown_ray_user_is_an_error_naming_the_key_and_the_user() {
        let e = decide(Some("nobody-here"), false, 0, agent_as("root", 0), lookup).unwrap_err();
        let m = e.to_string();
        assert!(
            m.starts_with("ray.user: ") && m.contains("nobody-here"),
            "{m}"
        );
    }

    #[test]
    fn an_unprivileged_agent_runs_ray_as_itself_and_refuses_another_user() {
        for configured in [None, Some("dev"), Some("dev-alias")] {
            let r = decide(configured, false, 1000, agent_as("dev", 1000), lookup).unwrap();
            assert_eq!((r.name.as_str(), r.uid, r.switch), ("dev", 1000, false));
        }
        let e = decide(
            Some("corral-ray"),
            false,
            1000,
            agent_as("dev", 1000),
            lookup,
        )
        .unwrap_err();
        assert_eq!(
            e,
            RayUserError::NotPrivileged {
                user: "corral-ray".into(),
                agent: "dev".into(),
                agent_uid: 1000
            }
        );
    }

    #[test]
    fn the_agent_itself_is_found_without_switching() {
        let me = RayUser::agent();
        // SAFETY: geteuid cannot fail.
        assert_eq!(me.uid, unsafe { libc::geteuid() });
        assert!(!me.switch);
    }
}
