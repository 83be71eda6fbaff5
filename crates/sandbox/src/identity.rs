//! Who a program runs as: local users looked up by name, and the rule that picks the
//! user for each plugin call.
//!
//! The agent runs as root on most nodes, so every program it starts for someone else
//! must drop to that someone before it runs. This module decides *who*; [`crate::exec`]
//! does the dropping (supplementary groups, then the primary group, then the uid, in
//! the child before `exec`).
//!
//! Invariants:
//! - The user is chosen by the host from what the call is, never by the plugin:
//!   `submit`, `cancel` and `logs` (a job's output is the owner's to read) run as the
//!   job's owner (the user the coordinator authenticated), `info`, `render`, `status`,
//!   `list` and `node-state` as the configured service user (they only read), `drain-node` and `resume-node` as the
//!   agent itself (they change the scheduler's view of a node, which the coordinator
//!   asks for only on its remediation policy's or an admin's behalf).
//! - A job owner that is root, or whose uid is under `[plugins] min_job_uid`, is refused
//!   unless the operator allowed it (`allow_root_jobs`, a lower `min_job_uid`). A job
//!   without an owner is refused on an agent that could run it as anyone.
//! - An agent that is not root can only run programs as itself: a job owned by another
//!   user is refused with the reason, rather than run as the agent's user.
//! - A user unknown on this node is a clear error naming the user and the node's user
//!   database; nothing falls back to another user.
//!
//! Trade-off: users are looked up at every call (through NSS, so LDAP/SSSD users work
//! and a changed group membership applies to the next job) rather than cached; a call
//! already runs at least one scheduler program, which costs far more than a lookup.

use std::ffi::CString;
use std::path::PathBuf;

use corral_proto::job::PluginCall;

/// A local user, as the node's user database (NSS) knows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    /// Primary group.
    pub gid: u32,
    /// Every group the user is in, the primary one included (`getgrouplist`).
    pub groups: Vec<u32>,
    pub home: PathBuf,
    pub shell: PathBuf,
}

/// A user lookup that found no usable user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("user {0:?} does not exist on this node (create it, or check NSS/LDAP: `getent passwd {0}`)")]
    Unknown(String),
    #[error("uid {0} has no entry in this node's user database (`getent passwd {0}`)")]
    UnknownUid(u32),
    #[error("looking up user {user:?}: {message}")]
    Failed { user: String, message: String },
}

impl User {
    /// Looks `name` up in the node's user database, with its groups.
    pub fn lookup(name: &str) -> Result<User, LookupError> {
        let failed = |e: nix::Error| LookupError::Failed {
            user: name.into(),
            message: e.to_string(),
        };
        if name.is_empty() || name.contains(['\0', '/', ':']) {
            return Err(LookupError::Unknown(name.into()));
        }
        let pw = nix::unistd::User::from_name(name)
            .map_err(failed)?
            .ok_or_else(|| LookupError::Unknown(name.into()))?;
        User::from_passwd(pw).map_err(failed)
    }

    /// The user this process runs as (its effective uid).
    pub fn current() -> Result<User, LookupError> {
        let uid = nix::unistd::geteuid();
        let pw = nix::unistd::User::from_uid(uid)
            .map_err(|e| LookupError::Failed {
                user: uid.to_string(),
                message: e.to_string(),
            })?
            .ok_or(LookupError::UnknownUid(uid.as_raw()))?;
        let name = pw.name.clone();
        User::from_passwd(pw).map_err(|e| LookupError::Failed {
            user: name,
            message: e.to_string(),
        })
    }

    fn from_passwd(pw: nix::unistd::User) -> Result<User, nix::Error> {
        let cname = CString::new(pw.name.as_bytes()).map_err(|_| nix::Error::EINVAL)?;
        let mut groups: Vec<u32> = nix::unistd::getgrouplist(&cname, pw.gid)?
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
        groups.sort_unstable();
        groups.dedup();
        Ok(User {
            name: pw.name,
            uid: pw.uid.as_raw(),
            gid: pw.gid.as_raw(),
            groups,
            home: pw.dir,
            shell: pw.shell,
        })
    }

    /// What [`crate::exec::Command::credentials`] takes to run a program as this user.
    pub fn credentials(&self) -> crate::exec::Credentials {
        crate::exec::Credentials {
            uid: self.uid,
            gid: self.gid,
            groups: self.groups.clone(),
        }
    }

    /// `HOME`, `USER`, `LOGNAME` and `SHELL` for this user.
    pub fn identity_env(&self) -> Vec<(String, String)> {
        vec![
            ("HOME".into(), self.home.display().to_string()),
            ("USER".into(), self.name.clone()),
            ("LOGNAME".into(), self.name.clone()),
            ("SHELL".into(), self.shell.display().to_string()),
        ]
    }
}

/// The operator's rules for whom plugin programs run as (`[plugins]` keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAsPolicy {
    /// Who `info`, `render`, `status`, `list` and `node-state` run as (`submit`, `cancel`
    /// and `logs` run as the job's owner).
    pub service_user: String,
    /// Job owners with a lower uid are refused (root has its own switch).
    pub min_job_uid: u32,
    /// Whether a job may be owned by root.
    pub allow_root_jobs: bool,
}

/// Why a call's programs may not run: the caller gets this as the plugin error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunAsError {
    #[error("{export} needs the job's owner, and none was given (the coordinator names who submitted the job; an older coordinator does not)")]
    NoOwner { export: &'static str },
    #[error("jobs owned by root are refused on this node (set [plugins] allow_root_jobs = true to allow them; submit as an ordinary user instead)")]
    Root,
    #[error("user {user} has uid {uid}, under [plugins] min_job_uid = {min}: system accounts do not run jobs (lower min_job_uid to allow it)")]
    LowUid { user: String, uid: u32, min: u32 },
    #[error("this agent runs as {agent} (uid {agent_uid}), not root, so it can only run jobs as {agent}; {owner}'s job needs an agent that runs as root")]
    NotPrivileged {
        agent: String,
        agent_uid: u32,
        owner: String,
    },
    #[error("job owner: {0}")]
    Owner(LookupError),
    #[error("[plugins] service_user: {0}")]
    Service(LookupError),
}

impl RunAsPolicy {
    /// The user `call`'s programs run as, on an agent running as `agent`.
    pub fn resolve(
        &self,
        call: &PluginCall,
        owner: Option<&str>,
        agent: &User,
    ) -> Result<User, RunAsError> {
        let privileged = agent.uid == 0;
        match call {
            // A job's output is read as its owner too: the path comes from the job, and
            // the owner may read only what they could read themselves.
            PluginCall::Submit(_) | PluginCall::Cancel(_) | PluginCall::Logs { .. } => {
                let owner = owner.ok_or(RunAsError::NoOwner {
                    export: call.export(),
                })?;
                let user = if owner == agent.name {
                    agent.clone()
                } else {
                    User::lookup(owner).map_err(RunAsError::Owner)?
                };
                if user.uid == 0 {
                    if !self.allow_root_jobs {
                        return Err(RunAsError::Root);
                    }
                } else if user.uid < self.min_job_uid {
                    return Err(RunAsError::LowUid {
                        user: user.name,
                        uid: user.uid,
                        min: self.min_job_uid,
                    });
                }
                if !privileged && user.uid != agent.uid {
                    return Err(RunAsError::NotPrivileged {
                        agent: agent.name.clone(),
                        agent_uid: agent.uid,
                        owner: user.name,
                    });
                }
                Ok(user)
            }
            PluginCall::DrainNode { .. } | PluginCall::ResumeNode { .. } => Ok(agent.clone()),
            PluginCall::Info
            | PluginCall::Render(_)
            | PluginCall::Status(_)
            | PluginCall::List
            | PluginCall::NodeState { .. } => {
                if !privileged || self.service_user == agent.name {
                    // An unprivileged agent is already as unprivileged as it can make
                    // these calls.
                    return Ok(agent.clone());
                }
                User::lookup(&self.service_user).map_err(RunAsError::Service)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_proto::job::JobSpec;

    fn user(name: &str, uid: u32) -> User {
        User {
            name: name.into(),
            uid,
            gid: uid,
            groups: vec![uid],
            home: format!("/home/{name}").into(),
            shell: "/bin/sh".into(),
        }
    }

    fn policy() -> RunAsPolicy {
        RunAsPolicy {
            service_user: "corral".into(),
            min_job_uid: 1000,
            allow_root_jobs: false,
        }
    }

    #[test]
    fn root_itself_is_found_with_its_groups() {
        let root = User::lookup("root").unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(root.groups.contains(&0));
        assert_eq!(root.identity_env()[1], ("USER".into(), "root".into()));
    }

    #[test]
    fn an_unknown_user_is_an_error_that_names_them() {
        let err = User::lookup("no-such-user-corral-test").unwrap_err();
        assert!(err
            .to_string()
            .contains("\"no-such-user-corral-test\" does not exist"));
        assert!(matches!(User::lookup("a/b"), Err(LookupError::Unknown(_))));
    }

    #[test]
    fn a_submission_without_an_owner_is_refused() {
        let call = PluginCall::Submit(JobSpec::default());
        let err = policy().resolve(&call, None, &user("root", 0)).unwrap_err();
        assert_eq!(err, RunAsError::NoOwner { export: "submit" });
    }

    #[test]
    fn a_job_owned_by_root_is_refused_unless_allowed() {
        let call = PluginCall::Cancel("1".into());
        let root = user("root", 0);
        assert_eq!(
            policy().resolve(&call, Some("root"), &root),
            Err(RunAsError::Root)
        );
        let allowed = RunAsPolicy {
            allow_root_jobs: true,
            ..policy()
        };
        assert_eq!(allowed.resolve(&call, Some("root"), &root).unwrap().uid, 0);
    }

    #[test]
    fn a_jobs_output_is_read_as_its_owner_and_never_without_one() {
        let dev = user("dev", 1000);
        let logs = PluginCall::Logs {
            id: "7".into(),
            max_bytes: 100,
        };
        assert_eq!(policy().resolve(&logs, Some("dev"), &dev).unwrap(), dev);
        assert_eq!(
            policy().resolve(&logs, None, &user("root", 0)),
            Err(RunAsError::NoOwner { export: "logs" })
        );
        assert_eq!(
            policy().resolve(&logs, Some("root"), &user("root", 0)),
            Err(RunAsError::Root)
        );
    }

    #[test]
    fn a_job_owned_by_a_system_account_is_refused() {
        // The agent's own user is taken as it is, without a lookup.
        let daemon = user("daemon", 1);
        let call = PluginCall::Submit(JobSpec::default());
        let err = policy()
            .resolve(&call, Some("daemon"), &daemon)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("uid 1, under [plugins] min_job_uid = 1000"),
            "{err}"
        );
    }

    #[test]
    fn an_unprivileged_agent_runs_only_its_own_users_jobs() {
        let dev = user("dev", 1000);
        let call = PluginCall::Submit(JobSpec::default());
        assert_eq!(policy().resolve(&call, Some("dev"), &dev).unwrap(), dev);
        let err = policy().resolve(&call, Some("root"), &dev).unwrap_err();
        // root is refused as a job owner before the privilege question comes up.
        assert_eq!(err, RunAsError::Root);
        let lenient = RunAsPolicy {
            allow_root_jobs: true,
            ..policy()
        };
        let err = lenient.resolve(&call, Some("root"), &dev).unwrap_err();
        assert!(matches!(err, RunAsError::NotPrivileged { .. }), "{err}");
    }

    #[test]
    fn status_runs_as_the_service_user_and_drains_as_the_agent() {
        let root = user("root", 0);
        let p = RunAsPolicy {
            service_user: "root".into(),
            ..policy()
        };
        assert_eq!(p.resolve(&PluginCall::List, None, &root).unwrap(), root);
        let missing = RunAsPolicy {
            service_user: "no-such-user-corral-test".into(),
            ..policy()
        };
        let err = missing
            .resolve(&PluginCall::Status(vec![]), Some("alice"), &root)
            .unwrap_err();
        assert!(
            err.to_string().starts_with("[plugins] service_user: user"),
            "{err}"
        );
        let drain = PluginCall::DrainNode {
            node: "n".into(),
            reason: "r".into(),
        };
        assert_eq!(missing.resolve(&drain, None, &root).unwrap(), root);
    }

    #[test]
    fn a_node_state_query_runs_as_the_service_user_like_any_read() {
        let root = user("root", 0);
        let p = RunAsPolicy {
            service_user: "no-such-user-corral-test".into(),
            ..policy()
        };
        let query = PluginCall::NodeState { node: "n".into() };
        // The service user is looked up (and here missing), never replaced by the agent.
        let err = p.resolve(&query, None, &root).unwrap_err();
        assert!(
            matches!(err, RunAsError::Service(LookupError::Unknown(ref u)) if u == "no-such-user-corral-test"),
            "{err}"
        );
        let as_root = RunAsPolicy {
            service_user: "root".into(),
            ..policy()
        };
        assert_eq!(as_root.resolve(&query, None, &root).unwrap(), root);
    }
}
