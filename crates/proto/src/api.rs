//! The HTTP API's schema: what `/api/v1/...` answers and accepts, as the coordinator
//! serves it and the CLI (or any outside client) reads it.
//!
//! Invariants:
//! - These are the API's types and nothing else's: the coordinator keeps its runtime
//!   state and its database rows in types of its own and converts explicitly, so a
//!   change to how it tracks or stores something never changes the API by accident.
//! - JSON only (serde_json); field names are the API's documented names. New fields are
//!   added with `#[serde(default)]` so an older client keeps reading a newer answer.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::job::{JobSpec, JobState, LoadFailure, LoadedPlugin};
use crate::model::{DeviceStatus, HealthStatus, Liveness, NodeReport, RayRole, RayState, Reason};

/// The HTTP API's default TCP port.
pub const DEFAULT_API_PORT: u16 = 7441;

/// A node as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    pub name: String,
    pub liveness: Liveness,
    pub liveness_since_ms: u64,
    pub health: HealthStatus,
    pub reasons: Vec<Reason>,
    pub connected: bool,
    pub address: Option<String>,
    pub agent_version: Option<String>,
    pub first_seen_ms: u64,
    pub last_beat_ms: Option<u64>,
    pub last_report_ms: Option<u64>,
    pub report: Option<NodeReport>,
    /// Set while the node is cordoned: corral places no work there and has drained it in
    /// its schedulers and in Ray ([`Cordon`]).
    #[serde(default)]
    pub cordon: Option<Cordon>,
}

/// Why and where a node is drained, as the coordinator's remediation holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cordon {
    /// Without corral's prefix: `gpu 0 (GPU-…) XID 79 …` or what a person typed.
    pub reason: String,
    pub since_ms: u64,
    /// `policy`, or the user who drained it by hand.
    pub by: String,
    /// Every place the node is (to be) drained in.
    pub drains: Vec<DrainView>,
    /// Being resumed: the drains are being lifted.
    #[serde(default)]
    pub resuming: bool,
}

/// One drain of a cordoned node: in one scheduler instance, or in Ray.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainView {
    /// `scheduler` or `ray`.
    pub kind: String,
    /// The scheduler instance (`slurm`), or `ray`.
    pub target: String,
    /// The node's name there.
    pub node: String,
    /// `pending` (not done yet, or failed and to be retried), `drained` (corral set
    /// it, and will lift it), `foreign` (someone else's drain was there: corral leaves
    /// it alone, now and on resume), `not-member` (the scheduler has no such node),
    /// `nothing` (no Ray worker to drain), `resumed`.
    pub state: String,
    #[serde(default)]
    pub attempts: u32,
    /// The last failure, or what was found (a foreign drain's reason).
    #[serde(default)]
    pub message: Option<String>,
    /// When the next try is due (pending ones).
    #[serde(default)]
    pub next_try_ms: Option<u64>,
}

/// `GET /api/v1/remediation`: what the remediation policy is doing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemediationView {
    pub enabled: bool,
    pub dry_run: bool,
    /// Who paused it and when; `None`: running.
    pub paused: Option<Paused>,
    /// Why drains are held back now (a limit); `None`: not held back.
    pub blocked: Option<String>,
    /// Cordoned nodes, and how many the cluster-wide limit allows.
    pub cordoned: usize,
    pub limit: usize,
    pub nodes: usize,
    /// Nodes that are unhealthy and waiting out `drain_after` or a limit.
    pub waiting: Vec<Waiting>,
    /// Actions that failed and are being retried.
    pub failing: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Paused {
    pub by: String,
    pub since_ms: u64,
}

/// A node the policy would drain, not drained yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiting {
    pub node: String,
    pub reason: String,
    /// When it becomes due by `drain_after` (it may then still wait for a limit).
    pub due_ms: Option<u64>,
    /// What holds it back once due.
    #[serde(default)]
    pub held_by: Option<String>,
}

/// `POST /api/v1/nodes/{name}/drain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainRequest {
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Liveness,
    Health,
    /// One GPU's health changed (`ok`, `warn`, `fail`); the message names the GPU.
    Gpu,
    /// Someone changed something through the API: `to` is the action (`submit`,
    /// `cancel`, `token-create`, ...), the message names who and what.
    Audit,
    /// The remediation policy or a person drained, resumed or held back a node: `to` is
    /// what happened (`cordon`, `drain`, `drain-failed`, `resuming`, `resume`,
    /// `uncordon`, `blocked`, `would-drain`, ...), the message names the node, reason, scheduler,
    /// outcome and who acted.
    Remediation,
    /// A pool's policy acted on a node or the pool: `to` is what (`create`, `created`,
    /// `joined`, `replace`, `delete`, `deleted`, `create-failed`, `halted`, `resumed`,
    /// `rate-limited`...), the message names the pool, node, provider id and outcome.
    Pool,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Liveness => "liveness",
            EventKind::Health => "health",
            EventKind::Gpu => "gpu",
            EventKind::Audit => "audit",
            EventKind::Remediation => "remediation",
            EventKind::Pool => "pool",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            EventKind::Liveness,
            EventKind::Health,
            EventKind::Gpu,
            EventKind::Audit,
            EventKind::Remediation,
            EventKind::Pool,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: u64,
    pub at_ms: u64,
    pub node: String,
    pub kind: EventKind,
    pub from: Option<String>,
    pub to: String,
    pub message: String,
}

/// A node's scheduler plugins, as the API shows them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodePlugins {
    pub node: String,
    pub connected: bool,
    /// When the node's current (or last) connection announced its plugins; `None`: not
    /// yet (the agent is still loading them, or it just connected).
    pub announced_ms: Option<u64>,
    pub loaded: Vec<LoadedPlugin>,
    pub failed: Vec<LoadFailure>,
    /// Loaded plugins this node is not authorized to serve (the coordinator's
    /// `[schedulers.NAME] nodes` does not list it): shown, never routed to.
    #[serde(default)]
    pub not_authorized: Vec<String>,
}

impl NodePlugins {
    /// Whether a plugin call for `plugin` can be routed to this node now: connected,
    /// loaded and authorized.
    pub fn hosts(&self, plugin: &str) -> bool {
        self.connected
            && self.loaded.iter().any(|p| p.info.name == plugin)
            && self.authorized(plugin)
    }

    /// Whether the coordinator lets this node serve `plugin` (loaded or not).
    pub fn authorized(&self, plugin: &str) -> bool {
        !self.not_authorized.iter().any(|p| p == plugin)
    }
}

/// `GET /api/v1/stats`: the coordinator's counters, all cumulative since it started.
///
/// Apply latency is the time from an agent sending a beat to the coordinator's registry
/// applying it, in microseconds, by the agent's and the coordinator's clocks (only
/// meaningful when they agree, e.g. on one host). The quantiles are over every beat
/// since the start; for a window, take two snapshots and use
/// [`StatsView::apply_latency_since`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatsView {
    pub nodes: usize,
    pub connected: usize,
    pub beats_total: u64,
    pub reports_total: u64,
    pub bytes_in_total: u64,
    pub rejected_total: HashMap<String, u64>,
    /// The bound of the histogram bucket the median falls in.
    pub apply_latency_p50_us: u64,
    /// The bound of the histogram bucket the 99th percentile falls in.
    pub apply_latency_p99_us: u64,
    /// The largest latency seen (exact).
    pub apply_latency_max_us: u64,
    pub apply_latency_samples: u64,
    /// The latency histogram: the buckets holding samples, ascending by bound. Bucket
    /// bounds are fixed (eight per doubling, `ceil(2^(i/8))` µs, the last one open
    /// ended), so two snapshots of one coordinator subtract bucket by bucket.
    #[serde(default)]
    pub apply_latency_buckets: Vec<LatencyBucket>,
    /// What the coordinator refused, cut or ignored of what agents sent.
    #[serde(default)]
    pub refused: RefusedInput,
    /// Whether the coordinator's database takes writes.
    #[serde(default)]
    pub store: StoreView,
}

/// Whether the coordinator's database takes writes (on a full disk it does not: the API
/// then refuses writes, and changes are kept in memory and retried).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StoreView {
    /// Why writes fail, while they do; `None` when the database takes them.
    pub unavailable: Option<String>,
    /// Write-behind rows kept in memory until the database takes them.
    pub pending_rows: u64,
    /// Commits that failed for want of resources since the coordinator started.
    pub failed_commits: u64,
}

/// What the coordinator refused, cut or ignored of what agents sent, cumulative since it
/// started. Agents speak only for themselves, within bounds: these count the times one
/// tried otherwise (or simply sent more than the bounds allow).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RefusedInput {
    /// Announcements from nodes not authorized to make them, by kind: `ray_head` (not
    /// in `coordinator.ray_heads`), `scheduler` (one per plugin not in its
    /// `[schedulers.NAME] nodes`).
    pub announcements: HashMap<String, u64>,
    /// Command results that arrived on another connection than the one the command
    /// was sent on (ignored).
    pub foreign_command_results: u64,
    /// Reports cut to the coordinator's caps (GPUs, filesystems, list and string
    /// lengths), by node.
    pub truncated_reports: HashMap<String, u64>,
    /// Events not recorded because their node was over its rate, by node.
    pub suppressed_events: HashMap<String, u64>,
}

/// One bucket of a latency histogram: `count` samples above the previous bucket's bound
/// and at most `le_us`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencyBucket {
    pub le_us: u64,
    pub count: u64,
}

/// A latency distribution in a few numbers, each the bound of the bucket it falls in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LatencySummary {
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub samples: u64,
}

impl LatencySummary {
    /// Summarises `buckets` (ascending by bound, as [`StatsView`] lists them).
    pub fn of(buckets: &[LatencyBucket]) -> LatencySummary {
        let samples: u64 = buckets.iter().map(|b| b.count).sum();
        let quantile = |q: f64| {
            // The smallest bound with at least ceil(q × samples) samples at or below it.
            let rank = ((q * samples as f64).ceil() as u64).max(1);
            let mut seen = 0;
            for b in buckets {
                seen += b.count;
                if seen >= rank {
                    return b.le_us;
                }
            }
            0
        };
        LatencySummary {
            p50_us: quantile(0.5),
            p99_us: quantile(0.99),
            max_us: buckets
                .iter()
                .rev()
                .find(|b| b.count > 0)
                .map_or(0, |b| b.le_us),
            samples,
        }
    }
}

impl StatsView {
    /// The apply latencies recorded between `earlier` and this snapshot of the same
    /// coordinator (bucket counts subtracted), summarised.
    pub fn apply_latency_since(&self, earlier: &StatsView) -> LatencySummary {
        let before: HashMap<u64, u64> = earlier
            .apply_latency_buckets
            .iter()
            .map(|b| (b.le_us, b.count))
            .collect();
        let window: Vec<LatencyBucket> = self
            .apply_latency_buckets
            .iter()
            .map(|b| LatencyBucket {
                le_us: b.le_us,
                count: b
                    .count
                    .saturating_sub(before.get(&b.le_us).copied().unwrap_or(0)),
            })
            .collect();
        LatencySummary::of(&window)
    }
}

/// A corral job id, written `c17` (a number alone would read like a native id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId(pub u64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}", self.0)
    }
}

impl std::str::FromStr for JobId {
    type Err = String;

    fn from_str(s: &str) -> Result<JobId, String> {
        let digits = s.strip_prefix('c').unwrap_or("");
        match digits.parse::<u64>() {
            Ok(n) if n > 0 && !digits.starts_with('+') => Ok(JobId(n)),
            _ if s.chars().all(|c| c.is_ascii_digit()) && !s.is_empty() => Err(format!(
                "{s:?} is not a corral job id; corral ids look like c{s} (a bare number reads like the scheduler's own id; `corral jobs` lists both)"
            )),
            _ => Err(format!(
                "{s:?} is not a corral job id; corral ids look like c17 (`corral jobs` lists them)"
            )),
        }
    }
}

impl Serialize for JobId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for JobId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<JobId, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Where a job is in corral's hands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Recorded; the plugin's `submit` is running.
    Submitting,
    /// The scheduler accepted it: `native_id` and `state` are set.
    Submitted,
    /// The plugin refused it, or it never reached the plugin (`message` says why).
    Rejected,
    /// The coordinator lost track during `submit` (it stopped, or the agent did not
    /// answer): the scheduler may or may not have the job; no native id is known.
    Orphaned,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Submitting => "submitting",
            Phase::Submitted => "submitted",
            Phase::Rejected => "rejected",
            Phase::Orphaned => "orphaned",
        }
    }
}

/// One entry of a job's state history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    pub at_ms: u64,
    /// [`JobView::state_word`] after the change.
    pub state: String,
    pub native_state: Option<String>,
    pub message: Option<String>,
}

/// A job as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobView {
    pub id: JobId,
    /// The scheduler plugin's name.
    pub scheduler: String,
    /// The node whose plugin took (or is taking) the submission; status and cancel go
    /// there while it is connected, else through another host of the same scheduler.
    pub node: String,
    /// Who submitted it: the user its programs run as. Empty for jobs recorded before
    /// corral knew owners.
    #[serde(default)]
    pub owner: String,
    pub native_id: Option<String>,
    pub phase: Phase,
    /// The scheduler's latest word on it (set once submitted).
    pub state: Option<JobState>,
    /// One word for tables and metrics: the state's ([`JobState::word`]) once submitted,
    /// else the phase's.
    pub state_word: String,
    pub native_state: Option<String>,
    pub exit_code: Option<i32>,
    pub message: Option<String>,
    /// The spec as submitted (dependencies by corral id).
    pub spec: JobSpec,
    pub submitted_ms: u64,
    /// Last change of state.
    pub updated_ms: u64,
    /// Last successful status answer about it.
    pub polled_ms: Option<u64>,
    /// Why its state is not being refreshed, while that lasts.
    pub poll_error: Option<String>,
    /// The host whose plugin gave the last status answer about it: `node` while that is
    /// connected, else another authorized host of the same scheduler instance. Unset
    /// until the first answer (also after a coordinator restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub polled_via: Option<String>,
    /// Oldest first. Left out of listings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Transition>,
    /// The caller may not see this job's detail (another user's): its spec, messages
    /// and history are left out.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub redacted: bool,
}

impl JobView {
    /// Whether corral is done with it: terminal state, rejected or orphaned.
    pub fn is_finished(&self) -> bool {
        match self.phase {
            Phase::Rejected | Phase::Orphaned => true,
            Phase::Submitting => false,
            Phase::Submitted => self.state.as_ref().is_some_and(JobState::is_terminal),
        }
    }
}

/// A submission, as `POST /api/v1/jobs` takes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubmitRequest {
    pub scheduler: String,
    pub spec: JobSpec,
    /// Submit through this node's plugin (default: the first connected host by name).
    #[serde(default)]
    pub via: Option<String>,
    /// Render the script only; nothing is submitted or recorded.
    #[serde(default)]
    pub dry_run: bool,
}

/// What a dry run returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rendered {
    pub scheduler: String,
    pub node: String,
    pub script: String,
}

/// What one pass of the job poller did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollReport {
    /// Scheduler instances asked (one `[schedulers.NAME]` each).
    pub groups: usize,
    /// `status` calls made.
    pub calls: usize,
    /// Jobs asked about.
    pub jobs: usize,
    /// Jobs whose state changed.
    pub changed: usize,
    pub failed_groups: usize,
}

/// What a caller of the API may do. Ordered: each role may do what the ones before it
/// may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read the cluster: nodes, events, plugins, metrics, and jobs without their detail.
    Viewer,
    /// Also submit jobs (as themselves), and see and cancel their own jobs in full.
    User,
    /// Everything: other users' jobs, tokens, and node actions.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::User => "user",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "user" => Ok(Role::User),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "{other:?} is not a role; use viewer, user or admin"
            )),
        }
    }
}

/// How a caller was authenticated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Via {
    /// The coordinator's Unix socket; the kernel named the caller (`SO_PEERCRED`).
    Socket { uid: u32 },
    /// A bearer token (`corral tokens create`).
    Token { id: String },
    /// An operator certificate on the HTTPS listener (CN = user).
    Certificate { serial: String },
}

/// `GET /api/v1/whoami`: who the API takes the caller for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhoAmI {
    pub user: String,
    pub role: Role,
    pub via: Via,
    /// For a web console session only: the token every request that changes something
    /// must carry in `X-CSRF-Token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csrf: Option<String>,
}

/// `POST /api/v1/tokens`: a token to make.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateToken {
    pub user: String,
    pub role: Role,
    /// Seconds until it expires; `None`: never.
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

/// A token as listed (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenView {
    pub id: String,
    pub user: String,
    pub role: Role,
    /// Who made it.
    pub created_by: String,
    pub created_ms: u64,
    pub expires_ms: Option<u64>,
    pub revoked_ms: Option<u64>,
}

/// `POST /api/v1/tokens`' answer: the secret, shown this once, and the token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedToken {
    /// What a client sends as `Authorization: Bearer ...`.
    pub secret: String,
    pub token: TokenView,
}

// --- The web console's feed (`GET /api/v1/console/stream`, crate coordinator::console) ---

/// One node as the console's tables, counters and GPU grid show it: what changes the
/// picture, in whole units, so that a delta is sent only when something visible changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSummary {
    pub name: String,
    pub liveness: Liveness,
    pub health: HealthStatus,
    /// Worst first, as the node reported them (the coordinator's own, such as a stale
    /// report, included).
    pub reasons: Vec<Reason>,
    pub cordoned: bool,
    /// Whole-machine CPU use, percent; `None` before the first report.
    pub cpu: Option<u8>,
    /// Memory in use, percent.
    pub mem: Option<u8>,
    pub ray: Option<RayRole>,
    pub ray_state: Option<RayState>,
    /// The scheduler plugins its current (or last) agent announced and may serve.
    pub schedulers: Vec<String>,
    pub gpus: Vec<GpuCell>,
}

/// One GPU of a [`NodeSummary`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuCell {
    pub index: u32,
    pub model: String,
    /// Percent.
    pub util: Option<u8>,
    /// Memory in use, percent.
    pub mem: Option<u8>,
    /// Degrees Celsius.
    pub temp: Option<u16>,
    /// Watts.
    pub power: Option<u16>,
    pub status: DeviceStatus,
    /// The most recent XID this boot.
    pub xid: Option<u64>,
}

/// The stream's first message (`event: snapshot`): every node and the latest events.
/// Deltas that follow have a higher `seq`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsoleSnapshot {
    pub seq: u64,
    pub nodes: Vec<NodeSummary>,
    /// Oldest first.
    pub events: Vec<Event>,
}

/// `event: delta`: what changed since the message with `seq - 1`: nodes whose summary
/// changed (or that are new), whole, and events recorded since. At most one a second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsoleDelta {
    pub seq: u64,
    pub nodes: Vec<NodeSummary>,
    pub events: Vec<Event>,
}

/// `GET /api/v1/nodes/{name}/history`: the last hour of a node's readings at one point
/// per `step_s`, oldest first; the last point ends at `end_ms`. `None` where no report
/// came in that step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeHistory {
    pub node: String,
    pub step_s: u32,
    pub end_ms: u64,
    /// CPU use, percent.
    pub cpu: Vec<Option<u8>>,
    /// Memory in use, percent.
    pub mem: Vec<Option<u8>>,
    pub gpus: Vec<GpuHistory>,
}

/// One GPU's series in a [`NodeHistory`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuHistory {
    pub index: u32,
    pub uuid: String,
    /// Percent.
    pub util: Vec<Option<u8>>,
    /// Memory in use, percent.
    pub mem: Vec<Option<u8>>,
    /// Degrees Celsius.
    pub temp: Vec<Option<u8>>,
    /// Watts.
    pub power: Vec<Option<u16>>,
}

/// `GET /api/v1/jobs/{id}/logs`: the end of a job's output, read by its scheduler
/// plugin as the job's owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobLogs {
    pub id: JobId,
    /// At most the requested number of bytes, from the end (lossy UTF-8).
    pub text: String,
}

/// `POST /ui/login`: a token, or (on the HTTPS listener) the operator certificate the
/// connection was made with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct LoginRequest {
    pub token: Option<String>,
    pub certificate: bool,
}
