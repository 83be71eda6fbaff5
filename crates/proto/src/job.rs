//! Jobs as corral sees them: the portable job spec and state every scheduler plugin
//! speaks, and the calls the coordinator routes to a plugin on an agent.
//!
//! Invariants:
//! - These types mirror `wit/scheduler.wit` (package `corral:scheduler@0.2.0`) field for
//!   field; the plugin host converts between them and the generated bindings, and
//!   nothing else does. The wire protocol, the coordinator's store and the HTTP API all
//!   use these types, so a job looks the same everywhere.
//! - A state is terminal once it is [`JobState::is_terminal`]; the coordinator stops
//!   polling such jobs and never moves them back.
//! - Strings are data: no layer between the CLI and the scheduler's argv interprets
//!   shell syntax.

use serde::{Deserialize, Serialize};

/// Why a plugin call failed (WIT `types.error`), plus the host's own failures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum PluginError {
    #[error("denied: {0}")]
    Denied(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("scheduler error: {0}")]
    Backend(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("not supported: {0}")]
    Unsupported(String),
    /// The plugin trapped, ran out of fuel/time/memory, or could not be called at all;
    /// the message says which. The agent and other plugins are unaffected.
    #[error("plugin failed: {0}")]
    Plugin(String),
    /// No plugin of that name is loaded on the agent the call reached.
    #[error("no plugin named {0:?} is loaded on this node")]
    NotLoaded(String),
}

impl PluginError {
    /// A short stable word for the kind of failure (metrics labels, logs).
    pub fn kind(&self) -> &'static str {
        match self {
            PluginError::Denied(_) => "denied",
            PluginError::Invalid(_) => "invalid",
            PluginError::Backend(_) => "backend",
            PluginError::Timeout(_) => "timeout",
            PluginError::Unsupported(_) => "unsupported",
            PluginError::Plugin(_) => "plugin",
            PluginError::NotLoaded(_) => "not-loaded",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DependencyKind {
    AfterStart,
    AfterOk,
    AfterNotOk,
    AfterAny,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dependency {
    pub kind: DependencyKind,
    /// The other job's native id.
    pub job: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobArray {
    pub first: u32,
    pub last: u32,
    pub step: u32,
    pub max_running: Option<u32>,
}

/// A portable job description (WIT `types.job-spec`).
///
/// In JSON any field may be left out and takes its default (empty lists, no value), so
/// `{"executable": "/bin/hostname"}` is a whole spec. Postcard always carries every
/// field, so the wire format is unaffected.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct JobSpec {
    pub name: Option<String>,
    pub executable: String,
    pub arguments: Vec<String>,
    pub directory: Option<String>,
    pub environment: Vec<(String, String)>,
    pub stdin_path: Option<String>,
    pub stdout_path: Option<String>,
    pub stderr_path: Option<String>,
    pub nodes: Option<u32>,
    pub tasks_per_node: Option<u32>,
    pub cpus_per_task: Option<u32>,
    pub gpus_per_node: Option<u32>,
    pub memory_mb: Option<u64>,
    pub walltime_seconds: Option<u64>,
    pub queue: Option<String>,
    pub account: Option<String>,
    pub reservation: Option<String>,
    pub array: Option<JobArray>,
    pub dependencies: Vec<Dependency>,
    pub attributes: Vec<(String, String)>,
}

/// A portable job state (WIT `types.job-state`).
///
/// Externally tagged (`"running"`, `{"queued": {"held": true}}`), the one serde enum form
/// both postcard (the wire) and JSON (the store, the API) read: postcard cannot decode
/// internally or adjacently tagged enums.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobState {
    /// `held` is true when held by a user, an admin or a dependency.
    Queued {
        held: bool,
    },
    Running,
    Suspended,
    Completing,
    Succeeded,
    Failed {
        reason: String,
    },
    Cancelled,
    TimedOut,
    Unknown,
}

impl JobState {
    /// Whether the job has ended for good.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            JobState::Succeeded
                | JobState::Failed { .. }
                | JobState::Cancelled
                | JobState::TimedOut
        )
    }

    /// A short lower-case word for tables and metrics labels.
    pub fn word(&self) -> &'static str {
        match self {
            JobState::Queued { held: false } => "queued",
            JobState::Queued { held: true } => "held",
            JobState::Running => "running",
            JobState::Suspended => "suspended",
            JobState::Completing => "completing",
            JobState::Succeeded => "succeeded",
            JobState::Failed { .. } => "failed",
            JobState::Cancelled => "cancelled",
            JobState::TimedOut => "timed-out",
            JobState::Unknown => "unknown",
        }
    }
}

/// One job's status as a plugin reports it (WIT `types.job-status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStatus {
    /// Native id.
    pub id: String,
    pub state: JobState,
    pub native_state: String,
    pub exit_code: Option<i32>,
    pub message: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Feature {
    Arrays,
    Dependencies,
    Gpus,
    Reservations,
    Drain,
    Logs,
    List,
}

/// What a plugin says about itself (WIT `types.plugin-info`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub scheduler: String,
    pub features: Vec<Feature>,
}

/// A node as its scheduler sees it, for draining (WIT `types.node-state`).
///
/// The coordinator reads it before draining a node and before resuming one: a drain
/// whose reason does not carry corral's prefix is a person's, and corral neither
/// overwrites nor lifts it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    /// The scheduler places no new work on the node (Slurm DRAIN, PBS offline, a Grid
    /// Engine queue instance disabled, LSF closed by an admin).
    pub drained: bool,
    /// The reason the scheduler keeps with the drain, as it was given; `None` when it
    /// keeps none (Grid Engine never does) or the node is not drained.
    pub reason: Option<String>,
}

/// What an operator granted a plugin (from its manifest), as agents announce it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grants {
    /// Program names with the absolute paths they resolved to at load.
    pub programs: Vec<(String, String)>,
    /// `host:port` pairs the plugin may reach over HTTP.
    pub hosts: Vec<String>,
    /// Config keys the plugin may read (values are not announced).
    pub config_keys: Vec<String>,
}

/// A loaded plugin, as an agent announces it to the coordinator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadedPlugin {
    pub info: PluginInfo,
    /// sha256 of the component, hex.
    pub digest: String,
    pub grants: Grants,
}

/// A plugin an agent could not load, and why (names the file and what to do).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadFailure {
    pub name: String,
    pub message: String,
}

/// A call to one of a plugin's exports (WIT `scheduler` interface).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PluginCall {
    Info,
    Render(JobSpec),
    Submit(JobSpec),
    Status(Vec<String>),
    Cancel(String),
    List,
    Logs {
        id: String,
        max_bytes: u32,
    },
    DrainNode {
        node: String,
        reason: String,
    },
    ResumeNode {
        node: String,
    },
    /// `node` (the scheduler's name for it) as the scheduler sees it now.
    NodeState {
        node: String,
    },
}

impl PluginCall {
    /// The export's WIT name, for logs and errors.
    pub fn export(&self) -> &'static str {
        match self {
            PluginCall::Info => "info",
            PluginCall::Render(_) => "render",
            PluginCall::Submit(_) => "submit",
            PluginCall::Status(_) => "status",
            PluginCall::Cancel(_) => "cancel",
            PluginCall::List => "list",
            PluginCall::Logs { .. } => "logs",
            PluginCall::DrainNode { .. } => "drain-node",
            PluginCall::ResumeNode { .. } => "resume-node",
            PluginCall::NodeState { .. } => "node-state",
        }
    }
}

/// A plugin call's successful result, one variant per [`PluginCall`] shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PluginReply {
    Info(PluginInfo),
    /// `render` (the script) and `logs` (the text).
    Text(String),
    /// `submit`: the native id.
    Submitted(String),
    /// `status` and `list`.
    Statuses(Vec<JobStatus>),
    /// `cancel`, `drain-node`, `resume-node`.
    Done,
    /// `node-state`: `None` when the scheduler has no node of that name.
    NodeState(Option<NodeState>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_state_is_appended_so_older_calls_and_replies_keep_their_encoding() {
        // Postcard tags a variant by its index: the new call and reply come last, so a
        // peer that predates them still reads every other call and reply alike.
        let call = PluginCall::NodeState { node: "n1".into() };
        assert_eq!(call.export(), "node-state");
        assert_eq!(postcard::to_allocvec(&call).unwrap(), [9, 2, b'n', b'1']);
        let reply = PluginReply::NodeState(Some(NodeState {
            drained: true,
            reason: Some("x".into()),
        }));
        assert_eq!(
            postcard::to_allocvec(&reply).unwrap(),
            [5, 1, 1, 1, 1, b'x']
        );
        assert_eq!(
            postcard::to_allocvec(&PluginReply::NodeState(None)).unwrap(),
            [5, 0]
        );
        assert_eq!(postcard::to_allocvec(&PluginReply::Done).unwrap(), [4]);
    }

    #[test]
    fn a_node_state_reads_the_same_in_json() {
        let s = NodeState {
            drained: true,
            reason: Some("corral: gpu 0 XID 79".into()),
        };
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, r#"{"drained":true,"reason":"corral: gpu 0 XID 79"}"#);
        assert_eq!(serde_json::from_str::<NodeState>(&json).unwrap(), s);
    }
}
