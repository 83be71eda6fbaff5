//! Configuration of `corral agent` and `corral coordinator` (TOML).
//!
//! One file format for both daemons: a file holds an `[agent]` section, a
//! `[coordinator]` section, or both (as `corral dev` writes), plus the shared `[tls]`,
//! and the agent's `[health]` thresholds, `[gpu]` source, `[ray]` process
//! ([`crate::ray::RayConfig`]) and `[plugins]` ([`crate::plugins::PluginsConfig`]), and
//! the coordinator's `[api]` and `[jobs]` ([`JobsSection`]).
//!
//! Invariants:
//! - Unknown keys are errors, so a typo never silently falls back to a default.
//! - Every error names the file, the dotted key and what to do ([`ConfigError`]).
//! - Relative paths are resolved against the directory of the config file, so a config
//!   means the same thing whatever the daemon's working directory.
//! - [`Config::load`] returns only validated configs: the daemons never see a value that
//!   `corral config check` would reject.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::node::gpu::GpuConfig;
use crate::node::health::{ConfigIssue, Thresholds};
use crate::pki::TlsFiles;
use crate::plugins::PluginsConfig;

pub const DEFAULT_QUIC_PORT: u16 = 7440;
pub const DEFAULT_API_PORT: u16 = 7441;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub agent: Option<AgentSection>,
    pub coordinator: Option<CoordinatorSection>,
    #[serde(default)]
    pub api: ApiSection,
    pub tls: Option<TlsFiles>,
    #[serde(default)]
    pub health: Thresholds,
    #[serde(default)]
    pub gpu: GpuConfig,
    /// The Ray process this agent supervises (absent: none).
    pub ray: Option<crate::ray::RayConfig>,
    /// The scheduler plugins this agent loads (absent: none).
    #[serde(default)]
    pub plugins: PluginsConfig,
    /// How the coordinator tracks jobs.
    #[serde(default)]
    pub jobs: JobsSection,
}

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
pub struct AgentSection {
    /// This node's name; must equal the CN of `tls.cert`. Default: the hostname.
    pub name: Option<String>,
    /// `host:port` of the coordinator's QUIC endpoint.
    pub coordinator: String,
    /// The name in the coordinator's certificate. Default: the host part of
    /// `coordinator`.
    pub server_name: Option<String>,
    #[serde(default = "default_beat", with = "humantime_serde")]
    pub beat_interval: Duration,
    #[serde(default = "default_report", with = "humantime_serde")]
    pub report_interval: Duration,
    /// How often health is re-evaluated (a change is reported at once).
    #[serde(default = "default_sample", with = "humantime_serde")]
    pub sample_interval: Duration,
    /// Reconnect backoff: first delay and cap (full jitter in between).
    #[serde(default = "default_backoff_base", with = "humantime_serde")]
    pub reconnect_base: Duration,
    #[serde(default = "default_backoff_cap", with = "humantime_serde")]
    pub reconnect_cap: Duration,
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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSection {
    /// TCP address of the HTTP API. Anything but loopback needs `token_file` or TLS.
    pub listen: SocketAddr,
    /// A file holding the bearer token clients must send (`Authorization: Bearer ...`).
    pub token_file: Option<PathBuf>,
    /// Serve the API over HTTPS with this certificate and key.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

impl Default for ApiSection {
    fn default() -> Self {
        ApiSection {
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_API_PORT)),
            token_file: None,
            tls_cert: None,
            tls_key: None,
        }
    }
}

fn default_beat() -> Duration {
    Duration::from_secs(1)
}
fn default_report() -> Duration {
    Duration::from_secs(5)
}
fn default_sample() -> Duration {
    Duration::from_secs(1)
}
fn default_backoff_base() -> Duration {
    Duration::from_millis(250)
}
fn default_backoff_cap() -> Duration {
    Duration::from_secs(30)
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
    crate::wire::DEFAULT_MAX_FRAME_BYTES
}
fn default_event_retention() -> u32 {
    10_000
}

/// A config that could not be used, with where and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: key `{key}`: {message}")]
    Invalid {
        file: PathBuf,
        key: String,
        message: String,
    },
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, base).map_err(|issue| ConfigError::Invalid {
            file: path.to_path_buf(),
            key: issue.key,
            message: issue.message,
        })
    }

    /// Parses and validates config text; relative paths are taken from `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Config, ConfigIssue> {
        let mut cfg: Config = parse_toml(text)?;
        cfg.resolve_paths(base);
        cfg.validate()?;
        Ok(cfg)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(tls) = &mut self.tls {
            fix(&mut tls.ca);
            fix(&mut tls.cert);
            fix(&mut tls.key);
        }
        if let Some(c) = &mut self.coordinator {
            fix(&mut c.state_dir);
        }
        for p in [
            &mut self.api.token_file,
            &mut self.api.tls_cert,
            &mut self.api.tls_key,
            &mut self.gpu.fake_script,
        ]
        .into_iter()
        .flatten()
        {
            fix(p);
        }
        if let Some(r) = &mut self.ray {
            r.resolve_paths(base);
        }
        for p in [&mut self.plugins.dir, &mut self.plugins.cache_dir]
            .into_iter()
            .flatten()
        {
            fix(p);
        }
        for check in &mut self.health.checks {
            check.resolve_paths(base);
        }
    }

    /// Semantic checks beyond types.
    pub fn validate(&self) -> Result<(), ConfigIssue> {
        let issue = |key: &str, message: String| ConfigIssue {
            key: key.into(),
            message,
        };
        if self.agent.is_none() && self.coordinator.is_none() {
            return Err(issue(
                "(top level)",
                "the file has neither an [agent] nor a [coordinator] section; add the one this daemon needs".into(),
            ));
        }
        let tls = self.tls.as_ref().ok_or_else(|| {
            issue(
                "tls",
                "missing [tls] section with `ca`, `cert` and `key` (create them with `corral certs`)".into(),
            )
        })?;
        for (key, path) in [
            ("tls.ca", &tls.ca),
            ("tls.cert", &tls.cert),
            ("tls.key", &tls.key),
        ] {
            check_readable(key, path)?;
        }
        if let Some(a) = &self.agent {
            if let Some(name) = &a.name {
                crate::pki::validate_name(name).map_err(|m| issue("agent.name", m))?;
            }
            if split_host_port(&a.coordinator).is_none() {
                return Err(issue(
                    "agent.coordinator",
                    format!(
                        "{:?} is not HOST:PORT (for example \"head-01:{DEFAULT_QUIC_PORT}\")",
                        a.coordinator
                    ),
                ));
            }
            for (key, d) in [
                ("agent.beat_interval", a.beat_interval),
                ("agent.report_interval", a.report_interval),
                ("agent.sample_interval", a.sample_interval),
                ("agent.reconnect_base", a.reconnect_base),
            ] {
                if d < Duration::from_millis(10) {
                    return Err(issue(
                        key,
                        format!(
                            "{} is too short; use at least 10ms",
                            humantime::format_duration(d)
                        ),
                    ));
                }
            }
            if a.report_interval < a.beat_interval {
                return Err(issue(
                    "agent.report_interval",
                    "must not be shorter than agent.beat_interval (reports are the heavier message)".into(),
                ));
            }
            if a.beat_interval > Duration::from_secs(3600) {
                return Err(issue("agent.beat_interval", "must be at most 1h".into()));
            }
            if a.reconnect_cap < a.reconnect_base {
                return Err(issue(
                    "agent.reconnect_cap",
                    "must be at least agent.reconnect_base".into(),
                ));
            }
        }
        if let Some(c) = &self.coordinator {
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
            let api = &self.api;
            if let Some(p) = &api.token_file {
                check_readable("api.token_file", p)?;
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
            if !api.listen.ip().is_loopback() && api.token_file.is_none() && api.tls_cert.is_none()
            {
                return Err(issue(
                    "api.listen",
                    format!(
                        "{} is reachable from other machines; set api.token_file or api.tls_cert/api.tls_key, or listen on 127.0.0.1",
                        api.listen
                    ),
                ));
            }
        }
        self.health.validate()?;
        self.gpu.validate()?;
        if let Some(r) = &self.ray {
            r.validate()?;
        }
        validate_plugins(&self.plugins)?;
        validate_jobs(&self.jobs)?;
        Ok(())
    }

    /// The sections present, for `corral config check`.
    pub fn describe(&self) -> String {
        let mut parts = vec![];
        if self.agent.is_some() {
            parts.push("agent");
        }
        if self.coordinator.is_some() {
            parts.push("coordinator");
        }
        parts.join(" + ")
    }
}

/// `[plugins]`: names are plain words, listed once, and need a directory to load from.
/// Whether each plugin's files exist is *not* checked here: a plugin that cannot load is
/// reported by the agent (and to the coordinator) without keeping the agent from running.
fn validate_plugins(p: &PluginsConfig) -> Result<(), ConfigIssue> {
    let issue = |key: &str, message: String| ConfigIssue {
        key: key.into(),
        message,
    };
    let mut seen = std::collections::HashSet::new();
    for name in &p.enable {
        let plain = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !plain {
            return Err(issue(
                "plugins.enable",
                format!("{name:?} is not a plugin name; use the file name without .wasm (letters, digits, '-' and '_'), e.g. \"slurm\""),
            ));
        }
        if !seen.insert(name) {
            return Err(issue("plugins.enable", format!("{name:?} is listed twice")));
        }
    }
    if !p.enable.is_empty() && p.dir.is_none() {
        return Err(issue(
            "plugins.dir",
            "required when plugins.enable lists plugins: the directory holding NAME.wasm and NAME.toml".into(),
        ));
    }
    Ok(())
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

impl AgentSection {
    /// The node name: configured, or this machine's hostname.
    pub fn node_name(&self) -> anyhow::Result<String> {
        match &self.name {
            Some(n) => Ok(n.clone()),
            None => default_node_name(),
        }
    }

    /// The name expected in the coordinator's certificate.
    pub fn server_name(&self) -> String {
        self.server_name.clone().unwrap_or_else(|| {
            split_host_port(&self.coordinator)
                .map(|(h, _)| h.to_string())
                .unwrap_or_default()
        })
    }
}

/// The hostname, as a node name (first label only, so `gpu01.example.org` → `gpu01`).
pub fn default_node_name() -> anyhow::Result<String> {
    let host = hostname::get()?.to_string_lossy().into_owned();
    let short = host.split('.').next().unwrap_or(&host).to_string();
    crate::pki::validate_name(&short)
        .map_err(|m| anyhow::anyhow!("the hostname cannot be a node name ({m}); set agent.name"))?;
    Ok(short)
}

/// Splits `host:port` (also `[v6]:port`).
pub fn split_host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = port.parse().ok()?;
    (!host.is_empty()).then_some((host, port))
}

fn check_readable(key: &str, path: &Path) -> Result<(), ConfigIssue> {
    std::fs::File::open(path)
        .map(|_| ())
        .map_err(|e| ConfigIssue {
            key: key.into(),
            message: format!("cannot read {}: {e}", path.display()),
        })
}

/// Deserializes TOML `text` into `T`; an error names the dotted key (or the line of a
/// syntax error) and says what is wrong. Shared by every TOML file corral reads (this
/// config, plugin manifests), so their errors read alike.
pub fn parse_toml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ConfigIssue> {
    let de = toml::Deserializer::parse(text).map_err(|e| ConfigIssue {
        key: e
            .span()
            .map(|s| format!("(line {})", line_of(text, s.start)))
            .unwrap_or_else(|| "(file)".into()),
        message: e.message().to_string(),
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        let line = inner
            .span()
            .map(|s| format!(" (line {})", line_of(text, s.start)))
            .unwrap_or_default();
        ConfigIssue {
            key: if key == "." {
                "(top level)".into()
            } else {
                key
            },
            message: format!("{}{line}", inner.message()),
        }
    })
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for f in ["ca.pem", "n.pem", "n.key"] {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        dir
    }

    const TLS: &str = "[tls]\nca = \"ca.pem\"\ncert = \"n.pem\"\nkey = \"n.key\"\n";

    fn parse(body: &str) -> Result<Config, ConfigIssue> {
        let dir = tls_dir();
        Config::parse(&format!("{body}\n{TLS}"), dir.path())
    }

    #[test]
    fn minimal_agent_config_gets_defaults_and_absolute_paths() {
        let dir = tls_dir();
        let cfg = Config::parse(
            &format!("[agent]\ncoordinator = \"head:7440\"\n{TLS}"),
            dir.path(),
        )
        .unwrap();
        let a = cfg.agent.unwrap();
        assert_eq!(a.beat_interval, Duration::from_secs(1));
        assert_eq!(a.report_interval, Duration::from_secs(5));
        assert_eq!(a.server_name(), "head");
        assert_eq!(cfg.tls.unwrap().ca, dir.path().join("ca.pem"));
    }

    #[test]
    fn unknown_key_is_named_with_its_section() {
        let err = parse("[agent]\ncoordinator = \"h:1\"\nbeat_intervall = \"1s\"").unwrap_err();
        assert_eq!(err.key, "agent.beat_intervall");
        assert!(err.message.contains("unknown field"), "{}", err.message);
    }

    #[test]
    fn bad_duration_is_named() {
        let err = parse("[agent]\ncoordinator = \"h:1\"\nbeat_interval = \"often\"").unwrap_err();
        assert_eq!(err.key, "agent.beat_interval");
    }

    #[test]
    fn coordinator_address_without_port_is_refused() {
        let err = parse("[agent]\ncoordinator = \"head\"").unwrap_err();
        assert_eq!(err.key, "agent.coordinator");
        assert!(err.message.contains("HOST:PORT"));
    }

    #[test]
    fn api_beyond_loopback_without_token_or_tls_is_refused() {
        let err = parse("[coordinator]\nstate_dir = \"s\"\n[api]\nlisten = \"0.0.0.0:7441\"")
            .unwrap_err();
        assert_eq!(err.key, "api.listen");
        assert!(err.message.contains("token_file"));
    }

    #[test]
    fn missing_certificate_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = Config::parse(
            &format!("[agent]\ncoordinator = \"h:1\"\n{TLS}"),
            dir.path(),
        )
        .unwrap_err();
        assert_eq!(err.key, "tls.ca");
    }

    #[test]
    fn file_without_a_daemon_section_is_refused() {
        let err = parse("").unwrap_err();
        assert!(err.message.contains("[agent]"));
    }

    #[test]
    fn syntax_error_reports_the_line() {
        let err = parse("[agent]\ncoordinator = ").unwrap_err();
        assert!(err.key.contains("line 2"), "{err:?}");
    }

    #[test]
    fn ray_section_problems_are_named_with_their_key() {
        let err = parse("[agent]\ncoordinator = \"h:1\"\n[ray]\nrole = \"worker\"\nvenv = \"v\"\nhead_address = \"nohost\"").unwrap_err();
        assert_eq!(err.key, "ray.head_address");
        let err = parse("[agent]\ncoordinator = \"h:1\"\n[ray]\nrole = \"boss\"").unwrap_err();
        assert_eq!(err.key, "ray.role");
        let dir = tls_dir();
        let cfg = Config::parse(
            &format!(
                "[agent]\ncoordinator = \"h:1\"\n[ray]\nrole = \"head\"\nvenv = \"venv\"\n{TLS}"
            ),
            dir.path(),
        )
        .unwrap();
        assert_eq!(cfg.ray.unwrap().venv, Some(dir.path().join("venv")));
    }

    #[test]
    fn plugins_section_gets_absolute_paths() {
        let dir = tls_dir();
        let cfg = Config::parse(
            &format!(
                "[agent]\ncoordinator = \"h:1\"\n[plugins]\ndir = \"plugins\"\nenable = [\"slurm\", \"ray-jobs\"]\ncache_dir = \"/var/cache/corral\"\n{TLS}"
            ),
            dir.path(),
        )
        .unwrap();
        assert_eq!(cfg.plugins.dir, Some(dir.path().join("plugins")));
        assert_eq!(cfg.plugins.enable, ["slurm", "ray-jobs"]);
        assert_eq!(
            cfg.plugins.cache_dir,
            Some(PathBuf::from("/var/cache/corral"))
        );
        let none = parse("[agent]\ncoordinator = \"h:1\"").unwrap();
        assert!(none.plugins.enable.is_empty());
    }

    #[test]
    fn bad_plugins_values_are_named() {
        let agent = "[agent]\ncoordinator = \"h:1\"\n[plugins]\n";
        for (body, key, words) in [
            ("enable = [\"slurm\"]", "plugins.dir", "required"),
            (
                "dir = \"p\"\nenable = [\"../slurm\"]",
                "plugins.enable",
                "not a plugin name",
            ),
            (
                "dir = \"p\"\nenable = [\"slurm.wasm\"]",
                "plugins.enable",
                "without .wasm",
            ),
            (
                "dir = \"p\"\nenable = [\"slurm\", \"slurm\"]",
                "plugins.enable",
                "twice",
            ),
            (
                "dir = \"p\"\nenable = \"slurm\"",
                "plugins.enable",
                "invalid type",
            ),
            ("directory = \"p\"", "plugins.directory", "unknown field"),
        ] {
            let err = parse(&format!("{agent}{body}")).unwrap_err();
            assert_eq!(err.key, key, "{body}: {err:?}");
            assert!(err.message.contains(words), "{body}: {}", err.message);
        }
    }

    #[test]
    fn jobs_section_defaults_and_values() {
        let cfg = parse("[coordinator]\nstate_dir = \"s\"").unwrap();
        assert_eq!(cfg.jobs, JobsSection::default());
        assert_eq!(cfg.jobs.poll_interval, Duration::from_secs(5));
        let cfg = parse("[coordinator]\nstate_dir = \"s\"\n[jobs]\npoll_interval = \"500ms\"\nmax_backoff = \"1m\"\nstatus_batch = 10\nretention = \"0s\"").unwrap();
        assert_eq!(cfg.jobs.poll_interval, Duration::from_millis(500));
        assert_eq!(cfg.jobs.max_backoff, Duration::from_secs(60));
        assert_eq!(cfg.jobs.status_batch, 10);
        assert!(cfg.jobs.retention.is_zero());
    }

    #[test]
    fn bad_jobs_values_are_named() {
        let coord = "[coordinator]\nstate_dir = \"s\"\n[jobs]\n";
        for (body, key, words) in [
            (
                "poll_interval = \"10ms\"",
                "jobs.poll_interval",
                "at least 100ms",
            ),
            ("poll_interval = \"often\"", "jobs.poll_interval", "invalid"),
            (
                "poll_interval = \"10s\"\nmax_backoff = \"5s\"",
                "jobs.max_backoff",
                "shorter than jobs.poll_interval",
            ),
            (
                "call_timeout = \"100ms\"",
                "jobs.call_timeout",
                "at least 1s",
            ),
            ("status_batch = 0", "jobs.status_batch", "1 to 100000"),
            ("status_batch = -1", "jobs.status_batch", "invalid value"),
            ("retention = \"10s\"", "jobs.retention", "at least 1m"),
            ("poll = \"1s\"", "jobs.poll", "unknown field"),
        ] {
            let err = parse(&format!("{coord}{body}")).unwrap_err();
            assert_eq!(err.key, key, "{body}: {err:?}");
            assert!(err.message.contains(words), "{body}: {}", err.message);
        }
    }

    #[test]
    fn report_shorter_than_beat_is_refused() {
        let err = parse(
            "[agent]\ncoordinator = \"h:1\"\nbeat_interval = \"2s\"\nreport_interval = \"1s\"",
        )
        .unwrap_err();
        assert_eq!(err.key, "agent.report_interval");
    }
}
