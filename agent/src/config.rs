//! Configuration of `corral agent` and `corral coordinator` (TOML).
//!
//! One file format for both daemons: a file holds an `[agent]` section, a
//! `[coordinator]` section, or both (as `corral dev` writes), plus the shared `[tls]`,
//! and the agent's `[health]` thresholds, `[gpu]` source, `[ray]` process
//! ([`corral_node::ray::RayConfig`]) and `[plugins]`
//! ([`corral_sandbox::plugins::PluginsConfig`]), and the coordinator's `[api]`, `[jobs]`
//! and `[schedulers.NAME]` ([`corral_coordinator::config`]).
//!
//! This module only composes the file: each section's type and its checks live in the
//! crate that uses it, and [`Config::agent_options`] / [`Config::coordinator_options`]
//! turn a validated file into what each daemon starts from.
//!
//! Invariants:
//! - Unknown keys are errors, so a typo never silently falls back to a default.
//! - Every error names the file, the dotted key and what to do ([`ConfigError`]).
//! - Relative paths are resolved against the directory of the config file, so a config
//!   means the same thing whatever the daemon's working directory.
//! - [`Config::load`] returns only validated configs: the daemons never see a value that
//!   `corral config check` would reject.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use corral_base::config::{check_readable, parse_toml, ConfigIssue};
use corral_coordinator::access::AccessSection;
use corral_coordinator::config::{
    ApiSection, Authority, CoordinatorSection, JobsSection, RemediationSection, SchedulerSection,
};
use corral_coordinator::pools::config::{JoinSection, PoolSection, ProvidersSection};
use corral_coordinator::registry::Settings;
use corral_coordinator::CoordinatorOptions;
use corral_node::config::AgentSection;
use corral_node::health::gpu::GpuConfig;
use corral_node::health::verdict::Thresholds;
use corral_node::ray::RayConfig;
use corral_node::AgentOptions;
use corral_sandbox::plugins::PluginsConfig;
use corral_transport::pki::TlsFiles;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub agent: Option<AgentSection>,
    pub coordinator: Option<CoordinatorSection>,
    #[serde(default)]
    pub api: ApiSection,
    /// Who may do what through the API (roles by user, defaults per way in).
    #[serde(default)]
    pub access: AccessSection,
    pub tls: Option<TlsFiles>,
    #[serde(default)]
    pub health: Thresholds,
    #[serde(default)]
    pub gpu: GpuConfig,
    /// The Ray process this agent supervises (absent: none).
    pub ray: Option<RayConfig>,
    /// The scheduler plugins this agent loads (absent: none).
    #[serde(default)]
    pub plugins: PluginsConfig,
    /// How the coordinator tracks jobs.
    #[serde(default)]
    pub jobs: JobsSection,
    /// When the coordinator drains unhealthy nodes and resumes them.
    #[serde(default)]
    pub remediation: RemediationSection,
    /// `[schedulers.NAME]`: one scheduler instance: which nodes may serve plugin NAME,
    /// and which nodes it schedules on (absent: none).
    #[serde(default)]
    pub schedulers: BTreeMap<String, SchedulerSection>,
    /// `[pools.NAME]`: node pools the coordinator keeps through provider plugins.
    #[serde(default)]
    pub pools: BTreeMap<String, PoolSection>,
    /// `[providers]`: where the pools' provider plugins live.
    #[serde(default)]
    pub providers: ProvidersSection,
    /// `[join]`: how new nodes join with bootstrap tokens (the coordinator's CA).
    pub join: Option<JoinSection>,
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
            if let Some(crl) = &mut tls.crl {
                fix(crl);
            }
        }
        if let Some(c) = &mut self.coordinator {
            fix(&mut c.state_dir);
        }
        fix(&mut self.api.socket);
        if let Some(dir) = self.agent.as_mut().and_then(|a| a.state_dir.as_mut()) {
            fix(dir);
        }
        // An empty `gpu.kernel_log` turns the source off; it is not a relative path.
        if let Some(log) = self
            .gpu
            .kernel_log
            .as_mut()
            .filter(|p| !p.as_os_str().is_empty())
        {
            fix(log);
        }
        for p in [
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
        for p in [&mut self.providers.dir, &mut self.providers.cache_dir]
            .into_iter()
            .flatten()
        {
            fix(p);
        }
        if let Some(j) = &mut self.join {
            fix(&mut j.ca_dir);
        }
        for pool in self.pools.values_mut() {
            if let Some(f) = &mut pool.secret_file {
                fix(f);
            }
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
        // The CRL is the coordinator's; the default one (beside tls.ca) may not exist yet.
        if let Some(crl) = &tls.crl {
            if self.coordinator.is_none() {
                return Err(issue(
                    "tls.crl",
                    "only the coordinator applies a revocation list; remove `crl` from an agent's config".into(),
                ));
            }
            check_readable("tls.crl", crl)?;
        }
        if let Some(a) = &self.agent {
            a.validate()?;
        }
        if let Some(c) = &self.coordinator {
            corral_coordinator::config::validate(c, &self.api, &self.jobs)?;
            corral_coordinator::config::validate_remediation(&self.remediation)?;
        }
        match &self.coordinator {
            Some(c) => corral_coordinator::config::validate_authority(c, &self.schedulers)?,
            None if !self.schedulers.is_empty() => {
                return Err(issue(
                    "schedulers",
                    "only the coordinator reads [schedulers.NAME]; put it in the file with the [coordinator] section".into(),
                ))
            }
            None => {}
        }
        if self.coordinator.is_some() {
            corral_coordinator::pools::config::validate(
                &self.pools,
                &self.providers,
                self.join.as_ref(),
            )?;
        } else if !self.pools.is_empty() || self.join.is_some() {
            return Err(issue(
                if self.pools.is_empty() { "join" } else { "pools" },
                "only the coordinator reads [pools.NAME] and [join]; put them in the file with the [coordinator] section".into(),
            ));
        }
        self.health.validate()?;
        self.gpu.validate()?;
        if let Some(r) = &self.ray {
            r.validate()?;
        }
        self.plugins.validate()?;
        Ok(())
    }

    /// What `corral agent` starts from.
    pub fn agent_options(&self) -> Result<AgentOptions> {
        let a = self
            .agent
            .as_ref()
            .context("the config has no [agent] section")?;
        Ok(AgentOptions {
            name: a.node_name()?,
            coordinator: a.coordinator.clone(),
            server_name: a.server_name(),
            beat_interval: a.beat_interval,
            report_interval: a.report_interval,
            sample_interval: a.sample_interval,
            reconnect_base: a.reconnect_base,
            reconnect_cap: a.reconnect_cap,
            tls: self
                .tls
                .clone()
                .context("the config has no [tls] section")?,
            thresholds: self.health.clone(),
            gpu: GpuConfig {
                // The GPU failure state lives in the agent's state dir.
                state_dir: a.state_dir.clone(),
                ..self.gpu.clone()
            },
            // Ray's default temp dir lives in the agent's state dir.
            ray: self.ray.clone().map(|r| RayConfig {
                state_dir: a.state_dir.clone(),
                ..r
            }),
            plugins: self.plugins.clone(),
        })
    }

    /// What `corral coordinator` starts from.
    pub fn coordinator_options(&self) -> Result<CoordinatorOptions> {
        let c = self
            .coordinator
            .as_ref()
            .context("the config has no [coordinator] section")?;
        Ok(CoordinatorOptions {
            listen: c.listen,
            state_dir: c.state_dir.clone(),
            settings: Settings {
                disconnect_after_beats: c.disconnect_after_beats,
                down_after: c.down_after,
                persist_every: Duration::from_secs(60),
                event_retention: c.event_retention as usize,
            },
            max_frame_bytes: c.max_frame_bytes,
            api: self.api.clone(),
            access: self.access.clone(),
            tls: self
                .tls
                .clone()
                .context("the config has no [tls] section")?,
            jobs: self.jobs.clone(),
            authority: Authority::from_config(c, &self.schedulers),
            remediation: self.remediation.clone(),
            schedulers: self.schedulers.clone(),
            pools: self.pools.clone(),
            providers: self.providers.clone(),
            join: self.join.clone(),
        })
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
    fn api_beyond_loopback_without_tls_is_refused() {
        let err = parse("[coordinator]\nstate_dir = \"s\"\n[api]\nlisten = \"0.0.0.0:7441\"")
            .unwrap_err();
        assert_eq!(err.key, "api.listen");
        assert!(err.message.contains("tls_cert"), "{}", err.message);
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
    fn agent_state_dir_and_kernel_log_get_absolute_paths() {
        let dir = tls_dir();
        let cfg = Config::parse(
            &format!("[agent]\nname = \"n1\"\ncoordinator = \"h:1\"\nstate_dir = \"state\"\n[gpu]\nbackend = \"nvml\"\nkernel_log = \"kmsg.fifo\"\n{TLS}"),
            dir.path(),
        )
        .unwrap();
        let opts = cfg.agent_options().unwrap();
        assert_eq!(opts.gpu.state_dir, Some(dir.path().join("state")));
        assert_eq!(opts.gpu.kernel_log, Some(dir.path().join("kmsg.fifo")));
        let off = parse("[agent]\ncoordinator = \"h:1\"\n[gpu]\nkernel_log = \"\"").unwrap();
        assert_eq!(
            off.gpu.kernel_log,
            Some(PathBuf::new()),
            "empty stays empty: off"
        );
        assert_eq!(off.gpu.kernel_log_path(), None);
    }

    #[test]
    fn who_may_announce_what_comes_from_ray_heads_and_scheduler_sections() {
        let cfg = parse("[coordinator]\nstate_dir = \"s\"\nray_heads = [\"head-01\"]\n[schedulers.slurm]\nnodes = [\"login-02\", \"login-01\"]\n[schedulers.ray-jobs]\nnodes = [\"*\"]").unwrap();
        let a = cfg.coordinator_options().unwrap().authority;
        assert!(a.may_announce_head("head-01") && !a.may_announce_head("gpu-01"));
        assert_eq!(a.scheduler_rank("slurm", "login-02"), Some(0));
        assert_eq!(a.scheduler_rank("slurm", "login-01"), Some(1));
        assert!(!a.may_serve("slurm", "aaa") && a.may_serve("ray-jobs", "aaa"));
        // Unconfigured: nothing.
        let none = parse("[coordinator]\nstate_dir = \"s\"").unwrap();
        let a = none.coordinator_options().unwrap().authority;
        assert!(!a.may_announce_head("head-01") && !a.may_serve("slurm", "login-01"));
    }

    #[test]
    fn bad_authority_values_are_named() {
        let coord = "[coordinator]\nstate_dir = \"s\"\n";
        for (body, key, words) in [
            (
                "ray_heads = [\"a b\"]",
                "coordinator.ray_heads",
                "not a valid name",
            ),
            (
                "[schedulers.slurm]\nnodes = [\"x\", \"x\"]",
                "schedulers.slurm.nodes",
                "twice",
            ),
            (
                "[schedulers.slurm]\nnode = [\"x\"]",
                "schedulers.slurm.node",
                "unknown field",
            ),
            (
                "[schedulers.slurm]\nnodes = \"x\"",
                "schedulers.slurm.nodes",
                "invalid type",
            ),
        ] {
            let err = parse(&format!("{coord}{body}")).unwrap_err();
            assert_eq!(err.key, key, "{body}: {err:?}");
            assert!(err.message.contains(words), "{body}: {}", err.message);
        }
        let err = parse("[agent]\ncoordinator = \"h:1\"\n[schedulers.slurm]\nnodes = [\"x\"]")
            .unwrap_err();
        assert_eq!(err.key, "schedulers");
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
