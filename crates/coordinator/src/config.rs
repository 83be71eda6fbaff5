//! The coordinator's sections: `[coordinator]` (where it listens and keeps state, when
//! nodes count as disconnected and down, which nodes may be Ray heads), `[api]` (the
//! HTTP listener), `[jobs]` (how submitted jobs are tracked), `[remediation]` (when
//! unhealthy nodes are drained and resumed, and the limits on it) and
//! `[schedulers.NAME]` (one scheduler instance: which nodes may serve plugin NAME, see
//! [`Authority`], and which nodes it schedules on, under what names).
//!
//! Invariant: [`validate`] refuses what the coordinator could not run with, or could
//! only run with unsafely (an API reachable from other machines without a token or
//! TLS), and names the key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use corral_base::config::{check_readable, ConfigIssue};
use corral_proto::api::DEFAULT_API_PORT;
use corral_proto::wire::DEFAULT_QUIC_PORT;

/// The coordinator's `[jobs]` section: how submitted jobs are tracked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsSection {
    /// How often the status of unfinished jobs is asked for: one bulk `status` call per
    /// scheduler plugin instance per poll.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// After failed polls the interval doubles, up to this.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// How long the coordinator waits for an agent's answer to one plugin call.
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
    /// Most job ids in one `status` call; more jobs are asked about in several calls.
    /// Bounds the size of one answer (a frame) whatever the number of jobs.
    pub status_batch: usize,
    /// Finished jobs are forgotten (memory and database) this long after their last
    /// change. "0s": never.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
}

impl Default for JobsSection {
    fn default() -> Self {
        JobsSection {
            poll_interval: Duration::from_secs(5),
            max_backoff: Duration::from_secs(300),
            call_timeout: Duration::from_secs(60),
            status_batch: 2000,
            retention: Duration::from_secs(30 * 86400),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorSection {
    /// UDP address of the QUIC endpoint agents connect to.
    #[serde(default = "default_quic_listen")]
    pub listen: SocketAddr,
    /// Where the database lives.
    pub state_dir: PathBuf,
    /// A node is `disconnected` after this many beat intervals without a beat.
    #[serde(default = "default_missed_beats")]
    pub disconnect_after_beats: u32,
    /// A node is `down` after this long without a beat.
    #[serde(default = "default_down_after", with = "humantime_serde")]
    pub down_after: Duration,
    #[serde(default = "default_max_frame")]
    pub max_frame_bytes: usize,
    /// Events kept in the database (oldest are pruned).
    #[serde(default = "default_event_retention")]
    pub event_retention: u32,
    /// Nodes allowed to announce a Ray head ([`Authority`]); empty: none.
    #[serde(default)]
    pub ray_heads: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSection {
    /// TCP address of the HTTP API. Anything but loopback needs TLS (`tls_cert`,
    /// `tls_key`): tokens never cross a network in the clear.
    pub listen: SocketAddr,
    /// The Unix socket of the API on this host, the CLI's default way in: callers are
    /// named by the kernel (`SO_PEERCRED`), so it needs no token. Created mode 0666 (the
    /// peer credentials are the access control), its directory created if missing.
    pub socket: PathBuf,
    /// Serve the TCP listener over HTTPS with this certificate and key; clients may then
    /// also authenticate with an operator certificate from the cluster CA.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Host names clients may use in URLs, besides `localhost`, the loopback addresses,
    /// the listen address and this machine's host name. Other `Host` headers are refused
    /// (DNS rebinding).
    pub hosts: Vec<String>,
    /// Web origins (`https://dash.example:3000`) allowed to call the API from a browser;
    /// requests from any other origin are refused. Empty: none.
    pub cors_origins: Vec<String>,
    /// Serve `/metrics` without authentication (for a Prometheus that has no token).
    pub public_metrics: bool,
}

/// Where the packages' coordinator puts its API socket (and where the CLI looks first).
pub const DEFAULT_API_SOCKET: &str = "/run/corral/api.sock";

impl Default for ApiSection {
    fn default() -> Self {
        ApiSection {
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_API_PORT)),
            socket: PathBuf::from(DEFAULT_API_SOCKET),
            tls_cert: None,
            tls_key: None,
            hosts: Vec::new(),
            cors_origins: Vec::new(),
            public_metrics: false,
        }
    }
}

fn default_quic_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], DEFAULT_QUIC_PORT))
}
fn default_missed_beats() -> u32 {
    3
}
fn default_down_after() -> Duration {
    Duration::from_secs(15)
}
fn default_max_frame() -> usize {
    corral_proto::wire::DEFAULT_MAX_FRAME_BYTES
}
fn default_event_retention() -> u32 {
    10_000
}

/// Semantic checks of the coordinator's sections beyond types.
pub fn validate(
    c: &CoordinatorSection,
    api: &ApiSection,
    jobs: &JobsSection,
) -> Result<(), ConfigIssue> {
    let issue = |key: &str, message: String| ConfigIssue {
        key: key.into(),
        message,
    };
    if c.disconnect_after_beats == 0 {
        return Err(issue(
            "coordinator.disconnect_after_beats",
            "must be at least 1".into(),
        ));
    }
    if c.down_after < Duration::from_millis(100) {
        return Err(issue(
            "coordinator.down_after",
            "must be at least 100ms".into(),
        ));
    }
    if !(1024..=64 << 20).contains(&c.max_frame_bytes) {
        return Err(issue(
            "coordinator.max_frame_bytes",
            format!(
                "{} is out of range; use 1024 to 67108864",
                c.max_frame_bytes
            ),
        ));
    }
    match (&api.tls_cert, &api.tls_key) {
        (Some(c), Some(k)) => {
            check_readable("api.tls_cert", c)?;
            check_readable("api.tls_key", k)?;
        }
        (None, None) => {}
        (Some(_), None) => {
            return Err(issue(
                "api.tls_key",
                "api.tls_cert is set, so api.tls_key is required".into(),
            ))
        }
        (None, Some(_)) => {
            return Err(issue(
                "api.tls_cert",
                "api.tls_key is set, so api.tls_cert is required".into(),
            ))
        }
    }
    if !api.listen.ip().is_loopback() && api.tls_cert.is_none() {
        return Err(issue(
            "api.listen",
            format!(
                "{} is reachable from other machines, and without TLS its clients' tokens would cross the network in the clear; set api.tls_cert/api.tls_key (clients then authenticate with tokens or operator certificates), or listen on 127.0.0.1",
                api.listen
            ),
        ));
    }
    if api.socket.as_os_str().is_empty() || api.socket.as_os_str().len() > 100 {
        return Err(issue(
            "api.socket",
            format!(
                "{:?} cannot be a Unix socket path (it must be set, and at most 100 bytes long)",
                api.socket.display()
            ),
        ));
    }
    for (i, h) in api.hosts.iter().enumerate() {
        if h.is_empty() || h.contains(['/', ' ', '@']) {
            return Err(issue(
                &format!("api.hosts[{i}]"),
                format!("{h:?} is not a host name; list names as clients type them in URLs, without scheme or port"),
            ));
        }
    }
    for (i, o) in api.cors_origins.iter().enumerate() {
        let ok = (o.starts_with("https://") || o.starts_with("http://"))
            && !o.trim_end_matches('/').contains(['?', '#'])
            && o.matches('/').count() == 2;
        if !ok {
            return Err(issue(
                &format!("api.cors_origins[{i}]"),
                format!("{o:?} is not a web origin; write scheme://host[:port], e.g. \"https://dash.example:3000\""),
            ));
        }
    }
    validate_jobs(jobs)
}

fn validate_jobs(j: &JobsSection) -> Result<(), ConfigIssue> {
    let issue = |key: &str, message: String| ConfigIssue {
        key: key.into(),
        message,
    };
    let fmt = |d: Duration| humantime::format_duration(d).to_string();
    if j.poll_interval < Duration::from_millis(100) {
        return Err(issue(
            "jobs.poll_interval",
            format!(
                "{} is too short; use at least 100ms (every poll runs the scheduler's status command)",
                fmt(j.poll_interval)
            ),
        ));
    }
    if j.max_backoff < j.poll_interval {
        return Err(issue(
            "jobs.max_backoff",
            format!(
                "{} is shorter than jobs.poll_interval ({}); use at least that",
                fmt(j.max_backoff),
                fmt(j.poll_interval)
            ),
        ));
    }
    if j.call_timeout < Duration::from_secs(1) {
        return Err(issue(
            "jobs.call_timeout",
            format!(
                "{} is too short; use at least 1s (a submission runs the scheduler's submit command)",
                fmt(j.call_timeout)
            ),
        ));
    }
    if !(1..=100_000).contains(&j.status_batch) {
        return Err(issue(
            "jobs.status_batch",
            format!("{} is out of range; use 1 to 100000", j.status_batch),
        ));
    }
    if !j.retention.is_zero() && j.retention < Duration::from_secs(60) {
        return Err(issue(
            "jobs.retention",
            format!(
                "{} is too short; use at least 1m, or \"0s\" to keep finished jobs forever",
                fmt(j.retention)
            ),
        ));
    }
    Ok(())
}

// --- Who may announce what: `[coordinator] ray_heads` and `[schedulers.NAME]` ----------

/// The entry that authorizes every node: `ray_heads = ["*"]`, `nodes = ["*"]`. Meant for
/// labs and tests, where every certificate belongs to someone trusted; on a real cluster
/// it hands the Ray head (workers run `ray start --address` against it as root) and every
/// submission to whoever holds any agent certificate.
pub const ANY_NODE: &str = "*";

/// `[schedulers.NAME]`: one scheduler instance (a Slurm cluster), driven by plugin NAME.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerSection {
    /// Its submit hosts: the nodes allowed to serve plugin NAME, in the order
    /// submissions prefer them (the first connected one gets a submission made without
    /// `--via`); `"*"` stands for every node not named before it.
    pub nodes: Vec<String>,
    /// Whether remediation drains and resumes nodes in this instance (default true).
    #[serde(default = "yes")]
    pub drain: bool,
    /// The corral nodes this instance schedules on, for draining and for its
    /// `max_unhealthy_percent`; `"*"` (the default) is every node. A node the scheduler
    /// turns out not to know is left alone there (recorded, not retried).
    #[serde(default = "every_node")]
    pub members: Vec<String>,
    /// The scheduler's name for a corral node where it differs (`gpu-01 = "gpu01"`);
    /// by default a node has the same name in the scheduler as in corral.
    #[serde(default)]
    pub node_names: BTreeMap<String, String>,
}

impl Default for SchedulerSection {
    fn default() -> Self {
        SchedulerSection {
            nodes: Vec::new(),
            drain: true,
            members: every_node(),
            node_names: BTreeMap::new(),
        }
    }
}

impl SchedulerSection {
    /// Whether corral node `node` is one this instance schedules on.
    pub fn has_member(&self, node: &str) -> bool {
        self.members.iter().any(|m| m == node || m == ANY_NODE)
    }

    /// The scheduler's name for corral node `node`.
    pub fn native_name<'a>(&'a self, node: &'a str) -> &'a str {
        self.node_names.get(node).map_or(node, String::as_str)
    }
}

fn yes() -> bool {
    true
}
fn every_node() -> Vec<String> {
    vec![ANY_NODE.to_string()]
}

/// A delay that may be `"never"`: `[remediation.drain_after]` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delay {
    After(Duration),
    Never,
}

impl Serialize for Delay {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Delay::After(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            Delay::Never => s.serialize_str("never"),
        }
    }
}

impl<'de> Deserialize<'de> for Delay {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == "never" {
            return Ok(Delay::Never);
        }
        humantime::parse_duration(&s).map(Delay::After).map_err(|e| {
            serde::de::Error::custom(format!(
                "{s:?} is not a delay ({e}); write a duration such as \"30s\" or \"5m\", or \"never\""
            ))
        })
    }
}

/// How long a node must stay unhealthy for one class of reason before it is drained
/// (`[remediation.drain_after]`). A class left out takes `default`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DrainAfter {
    pub default: Delay,
    /// A GPU failed: fell off the bus, lost, ECC or row-remap failure, too hot.
    pub gpu: Option<Delay>,
    /// An XID that needs a GPU reset or a reboot.
    pub xid: Option<Delay>,
    /// A custom check of severity `fail` failed.
    pub check: Option<Delay>,
    /// A required mount is missing.
    pub mount: Option<Delay>,
    pub disk: Option<Delay>,
    pub memory: Option<Delay>,
}

impl Default for DrainAfter {
    fn default() -> Self {
        DrainAfter {
            default: Delay::After(Duration::from_secs(30)),
            gpu: None,
            xid: None,
            check: None,
            mount: None,
            disk: None,
            memory: None,
        }
    }
}

/// The classes of reasons a node is drained for, each with its own `drain_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ReasonClass {
    Gpu,
    Xid,
    Check,
    Mount,
    Disk,
    Memory,
    /// Any other unhealthy reason (a CPU too hot).
    Other,
}

impl ReasonClass {
    /// The class of a health reason, by its check name (`gpu_xid:0`, `check:ib`,
    /// `mount:/scratch`, `disk:/`, `memory`).
    pub fn of(check: &str) -> ReasonClass {
        let kind = check.split(':').next().unwrap_or(check);
        match kind {
            "gpu_xid" => ReasonClass::Xid,
            k if k == "gpu" || k.starts_with("gpu_") => ReasonClass::Gpu,
            "check" => ReasonClass::Check,
            "mount" => ReasonClass::Mount,
            "disk" => ReasonClass::Disk,
            k if k.starts_with("memory") => ReasonClass::Memory,
            _ => ReasonClass::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ReasonClass::Gpu => "gpu",
            ReasonClass::Xid => "xid",
            ReasonClass::Check => "check",
            ReasonClass::Mount => "mount",
            ReasonClass::Disk => "disk",
            ReasonClass::Memory => "memory",
            ReasonClass::Other => "other",
        }
    }
}

impl DrainAfter {
    pub fn of(&self, class: ReasonClass) -> Delay {
        let specific = match class {
            ReasonClass::Gpu => self.gpu,
            ReasonClass::Xid => self.xid,
            ReasonClass::Check => self.check,
            ReasonClass::Mount => self.mount,
            ReasonClass::Disk => self.disk,
            ReasonClass::Memory => self.memory,
            ReasonClass::Other => None,
        };
        specific.unwrap_or(self.default)
    }
}

/// `[remediation]`: when the coordinator drains unhealthy nodes and resumes them, and
/// the limits that keep an outage of something shared from draining the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RemediationSection {
    /// Off: the coordinator drains and resumes nothing by itself (manual drains still work).
    pub enabled: bool,
    /// Decisions are logged and recorded as events; nothing is changed.
    pub dry_run: bool,
    pub drain_after: DrainAfter,
    /// How long a node corral drained must stay healthy before corral resumes it.
    #[serde(with = "humantime_serde")]
    pub resume_after: Duration,
    /// Drain `down` nodes too (off: an agent can restart while slurmd keeps running).
    pub drain_when_down: bool,
    /// Corral holds at most this share of the nodes cordoned, cluster-wide and in each
    /// scheduler instance (at least one node); beyond it, it drains nothing more and says
    /// why.
    pub max_unhealthy_percent: u32,
    /// At most one automatic drain per this interval per scheduler instance.
    #[serde(with = "humantime_serde")]
    pub drain_interval: Duration,
    /// How long running Ray work on a drained worker gets to finish before the worker
    /// is stopped.
    #[serde(with = "humantime_serde")]
    pub ray_drain_deadline: Duration,
    /// The first retry of a failed action waits this long; each next one twice as
    /// long, up to `max_backoff`.
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
}

impl Default for RemediationSection {
    fn default() -> Self {
        RemediationSection {
            enabled: true,
            dry_run: false,
            drain_after: DrainAfter::default(),
            resume_after: Duration::from_secs(300),
            drain_when_down: false,
            max_unhealthy_percent: 30,
            drain_interval: Duration::from_secs(60),
            ray_drain_deadline: Duration::from_secs(60),
            retry_after: Duration::from_secs(5),
            max_backoff: Duration::from_secs(300),
        }
    }
}

/// Checks `[remediation]` beyond types.
pub fn validate_remediation(r: &RemediationSection) -> Result<(), ConfigIssue> {
    let issue = |key: &str, message: String| ConfigIssue {
        key: key.into(),
        message,
    };
    if !(1..=100).contains(&r.max_unhealthy_percent) {
        return Err(issue(
            "remediation.max_unhealthy_percent",
            format!(
                "{} is out of range; use 1 to 100 (at least one node may always be drained)",
                r.max_unhealthy_percent
            ),
        ));
    }
    if r.retry_after < Duration::from_millis(100) {
        return Err(issue(
            "remediation.retry_after",
            "must be at least 100ms".into(),
        ));
    }
    if r.max_backoff < r.retry_after {
        return Err(issue(
            "remediation.max_backoff",
            "must be at least remediation.retry_after".into(),
        ));
    }
    let fmt = |d: Duration| humantime::format_duration(d).to_string();
    let week = Duration::from_secs(7 * 86400);
    let mut delays: Vec<(String, Duration)> = vec![
        ("remediation.resume_after".into(), r.resume_after),
        ("remediation.drain_interval".into(), r.drain_interval),
        ("remediation.max_backoff".into(), r.max_backoff),
    ];
    let d = &r.drain_after;
    for (class, delay) in [
        ("default", Some(d.default)),
        ("gpu", d.gpu),
        ("xid", d.xid),
        ("check", d.check),
        ("mount", d.mount),
        ("disk", d.disk),
        ("memory", d.memory),
    ] {
        if let Some(Delay::After(t)) = delay {
            delays.push((format!("remediation.drain_after.{class}"), t));
        }
    }
    for (key, t) in delays {
        if t > week {
            return Err(issue(
                &key,
                format!("{} is longer than a week; use at most 7d (or \"never\" for a drain_after class)", fmt(t)),
            ));
        }
    }
    if r.ray_drain_deadline > Duration::from_secs(7 * 86400) {
        return Err(issue(
            "remediation.ray_drain_deadline",
            "must be at most 7 days".into(),
        ));
    }
    Ok(())
}

/// Which nodes the coordinator lets announce what: a Ray head (`[coordinator]
/// ray_heads`) and scheduler plugins (`[schedulers.NAME] nodes`).
///
/// Invariant: nothing is authorized unless configured. The default (no `ray_heads`, no
/// `[schedulers]`) authorizes no node for anything; an agent's announcement is a claim,
/// and only the operator's configuration turns it into trust.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Authority {
    ray_heads: Vec<String>,
    schedulers: BTreeMap<String, Vec<String>>,
}

impl Authority {
    /// `ray_heads` may announce a Ray head; `schedulers[NAME]` may serve plugin NAME, in
    /// that order of preference. Entries are node names or [`ANY_NODE`].
    pub fn new(ray_heads: Vec<String>, schedulers: BTreeMap<String, Vec<String>>) -> Authority {
        Authority {
            ray_heads,
            schedulers,
        }
    }

    /// From the config file's sections.
    pub fn from_config(
        coordinator: &CoordinatorSection,
        schedulers: &BTreeMap<String, SchedulerSection>,
    ) -> Authority {
        Authority::new(
            coordinator.ray_heads.clone(),
            schedulers
                .iter()
                .map(|(name, s)| (name.clone(), s.nodes.clone()))
                .collect(),
        )
    }

    /// Whether `node` may announce the cluster's Ray head.
    pub fn may_announce_head(&self, node: &str) -> bool {
        self.ray_heads.iter().any(|n| n == node || n == ANY_NODE)
    }

    /// Where `node` stands among the nodes allowed to serve `scheduler` (0 first), or
    /// `None` when it is not allowed. A node named explicitly ranks at its position; one
    /// covered by `"*"` at the position of the `"*"`.
    pub fn scheduler_rank(&self, scheduler: &str, node: &str) -> Option<usize> {
        let nodes = self.schedulers.get(scheduler)?;
        nodes
            .iter()
            .position(|n| n == node)
            .or_else(|| nodes.iter().position(|n| n == ANY_NODE))
    }

    /// Whether `node` may serve scheduler plugin `scheduler`.
    pub fn may_serve(&self, scheduler: &str, node: &str) -> bool {
        self.scheduler_rank(scheduler, node).is_some()
    }

    /// The configured nodes for `scheduler` (empty: none, or no section).
    pub fn scheduler_nodes(&self, scheduler: &str) -> &[String] {
        self.schedulers.get(scheduler).map_or(&[], Vec::as_slice)
    }

    /// The nodes that may announce a Ray head, as configured.
    pub fn ray_heads(&self) -> &[String] {
        &self.ray_heads
    }

    /// The scheduler plugins that have a `[schedulers.NAME]` section.
    pub fn schedulers(&self) -> impl Iterator<Item = &str> {
        self.schedulers.keys().map(String::as_str)
    }
}

/// Checks `[coordinator] ray_heads` and every `[schedulers.NAME]`: names are node (and
/// plugin) names or `"*"`, none twice.
pub fn validate_authority(
    c: &CoordinatorSection,
    schedulers: &BTreeMap<String, SchedulerSection>,
) -> Result<(), ConfigIssue> {
    fn check_nodes(key: &str, nodes: &[String]) -> Result<(), ConfigIssue> {
        let issue = |message: String| ConfigIssue {
            key: key.into(),
            message,
        };
        let mut seen = std::collections::BTreeSet::new();
        for n in nodes {
            if n != ANY_NODE {
                corral_proto::names::validate_name(n)
                    .map_err(|e| issue(format!("{e}; or \"*\" for every node (labs only)")))?;
            }
            if !seen.insert(n.as_str()) {
                return Err(issue(format!("{n:?} is listed twice")));
            }
        }
        Ok(())
    }
    check_nodes("coordinator.ray_heads", &c.ray_heads)?;
    for (name, section) in schedulers {
        corral_proto::names::validate_name(name).map_err(|e| ConfigIssue {
            key: format!("schedulers.{name}"),
            message: format!("{e} (the section is named after the scheduler plugin it authorizes)"),
        })?;
        check_nodes(&format!("schedulers.{name}.nodes"), &section.nodes)?;
        check_nodes(&format!("schedulers.{name}.members"), &section.members)?;
        for (node, native) in &section.node_names {
            let key = format!("schedulers.{name}.node_names.{node}");
            corral_proto::names::validate_name(node).map_err(|e| ConfigIssue {
                key: key.clone(),
                message: format!("{e} (keys are corral node names)"),
            })?;
            if native.is_empty() || native.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(ConfigIssue {
                    key,
                    message: format!("{native:?} is not a node name the scheduler could know; write the scheduler's name for {node}"),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod authority_tests {
    use super::*;

    fn authority(heads: &[&str], schedulers: &[(&str, &[&str])]) -> Authority {
        let list = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Authority::new(
            list(heads),
            schedulers
                .iter()
                .map(|(k, v)| (k.to_string(), list(v)))
                .collect(),
        )
    }

    #[test]
    fn nothing_is_authorized_unless_configured() {
        let none = Authority::default();
        assert!(!none.may_announce_head("head-01"));
        assert!(!none.may_serve("slurm", "login-01"));
        let some = authority(&["head-01"], &[("slurm", &["login-01"])]);
        assert!(some.may_announce_head("head-01") && !some.may_announce_head("gpu-01"));
        assert!(some.may_serve("slurm", "login-01"));
        assert!(!some.may_serve("slurm", "aaa"), "another node");
        assert!(!some.may_serve("pbs", "login-01"), "another scheduler");
    }

    #[test]
    fn nodes_rank_in_config_order_and_the_wildcard_ranks_where_it_stands() {
        let a = authority(
            &["*"],
            &[("slurm", &["login-02", "*", "login-01"]), ("pbs", &["*"])],
        );
        assert_eq!(a.scheduler_rank("slurm", "login-02"), Some(0));
        assert_eq!(a.scheduler_rank("slurm", "login-01"), Some(2));
        assert_eq!(a.scheduler_rank("slurm", "aaa"), Some(1));
        assert_eq!(a.scheduler_rank("pbs", "anything"), Some(0));
        assert!(a.may_announce_head("any-node"));
    }

    #[test]
    fn bad_entries_are_named_with_their_key() {
        let coordinator = |heads: &[&str]| CoordinatorSection {
            listen: default_quic_listen(),
            state_dir: "s".into(),
            disconnect_after_beats: 3,
            down_after: default_down_after(),
            max_frame_bytes: default_max_frame(),
            event_retention: 10,
            ray_heads: heads.iter().map(|s| s.to_string()).collect(),
        };
        let err = validate_authority(&coordinator(&["head 01"]), &BTreeMap::new()).unwrap_err();
        assert_eq!(err.key, "coordinator.ray_heads");
        assert!(err.message.contains("\"*\""), "{}", err.message);
        let err = validate_authority(&coordinator(&["h", "h"]), &BTreeMap::new()).unwrap_err();
        assert!(err.message.contains("twice"), "{}", err.message);
        let section = |nodes: &[&str]| SchedulerSection {
            nodes: nodes.iter().map(|s| s.to_string()).collect(),
            ..SchedulerSection::default()
        };
        let err = validate_authority(
            &coordinator(&[]),
            &[("slurm".to_string(), section(&["login-01", "../x"]))].into(),
        )
        .unwrap_err();
        assert_eq!(err.key, "schedulers.slurm.nodes");
        let err = validate_authority(
            &coordinator(&[]),
            &[("sl urm".to_string(), section(&["login-01"]))].into(),
        )
        .unwrap_err();
        assert_eq!(err.key, "schedulers.sl urm");
        validate_authority(
            &coordinator(&["head-01", "*"]),
            &[("slurm".to_string(), section(&["login-01", "*"]))].into(),
        )
        .unwrap();
    }
}
