//! The agent's `[ray]` section: which Ray process to run, from which venv, on which
//! ports, and how to restart it. Validated by [`RayConfig::validate`] (and so by
//! `corral config check`): every problem names its dotted key and what to write instead.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::health::verdict::ConfigIssue;

/// `role` in `[ray]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RoleConfig {
    Head,
    Worker,
    #[default]
    None,
}

/// How much of the Python version a worker must share with the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PythonMatch {
    /// `3.11.x` joins `3.11.y`.
    Minor,
    /// Exactly the same version, as Ray itself demands by default.
    #[default]
    Patch,
}

/// Flags corral sets itself; giving them in `extra_args` would contradict the config.
const MANAGED_FLAGS: &[&str] = &[
    "--head",
    "--address",
    "--block",
    "--port",
    "--dashboard-host",
    "--dashboard-port",
    "--ray-client-server-port",
    "--num-cpus",
    "--num-gpus",
    "--resources",
    "--temp-dir",
    "--node-ip-address",
    "--include-dashboard",
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RayConfig {
    pub role: RoleConfig,
    /// The virtual environment Ray runs from: `VENV/bin/python` and `VENV/bin/ray`.
    pub venv: Option<PathBuf>,
    /// The head's GCS port.
    #[serde(default = "default_port")]
    pub port: u16,
    #[serde(default = "default_dashboard_host")]
    pub dashboard_host: String,
    #[serde(default = "default_dashboard_port")]
    pub dashboard_port: u16,
    #[serde(default = "default_client_port")]
    pub client_server_port: u16,
    /// The address Ray advertises for this node. Default: the local address this machine
    /// uses to reach the coordinator.
    pub node_ip: Option<String>,
    /// Default: the logical CPUs the agent sees.
    pub num_cpus: Option<u32>,
    /// Default: the GPUs the agent's GPU source reports (none: Ray's own detection).
    pub num_gpus: Option<u32>,
    /// Custom resources, e.g. `{ ib = 1 }`.
    #[serde(default)]
    pub resources: BTreeMap<String, f64>,
    /// Ray's temp dir, mode 0700, owned by the Ray user: corral's log of Ray's output,
    /// and Ray's own temp dir (sessions, sockets, logs) as [`RAY_OWN_TEMP_DIR`].
    /// Default: `STATE_DIR/ray` under `agent.state_dir`, else `/tmp/corral-ray-NODE`.
    /// corral treats every process of the Ray user whose command line names it as its
    /// own.
    pub temp_dir: Option<PathBuf>,
    /// The account Ray runs as ([`super::user`]). Required when the agent runs as root
    /// (unless `allow_root`); an agent that is not root runs Ray as itself, and this
    /// must then be unset or name that same account.
    pub user: Option<String>,
    /// Let a root agent run Ray as root (no `user`, or a `user` with uid 0).
    #[serde(default)]
    pub allow_root: bool,
    /// `agent.state_dir`, filled in by the agent's config (not a `[ray]` key): the
    /// default temp dir lives under it.
    #[serde(skip)]
    pub state_dir: Option<PathBuf>,
    /// More `ray start` arguments, passed as given.
    #[serde(default)]
    pub extra_args: Vec<String>,
    /// Workers: the head's `host:port`, instead of learning it from the coordinator.
    pub head_address: Option<String>,
    #[serde(default)]
    pub python_match: PythonMatch,
    /// Restart backoff after an unexpected exit: first delay and cap (with jitter).
    #[serde(default = "default_restart_base", with = "humantime_serde")]
    pub restart_base: Duration,
    #[serde(default = "default_restart_cap", with = "humantime_serde")]
    pub restart_cap: Duration,
    /// At most this many restarts within `restart_window`; one more is `failed`.
    #[serde(default = "default_max_restarts")]
    pub max_restarts: u32,
    #[serde(default = "default_restart_window", with = "humantime_serde")]
    pub restart_window: Duration,
    /// How long a start may take before it counts as a failed start.
    #[serde(default = "default_start_timeout", with = "humantime_serde")]
    pub start_timeout: Duration,
    /// SIGTERM → SIGKILL grace when stopping.
    #[serde(default = "default_stop_grace", with = "humantime_serde")]
    pub stop_grace: Duration,
}

fn default_port() -> u16 {
    6379
}
fn default_dashboard_host() -> String {
    "127.0.0.1".into()
}
fn default_dashboard_port() -> u16 {
    8265
}
fn default_client_port() -> u16 {
    10001
}
fn default_restart_base() -> Duration {
    Duration::from_secs(1)
}
fn default_restart_cap() -> Duration {
    Duration::from_secs(60)
}
fn default_max_restarts() -> u32 {
    5
}
fn default_restart_window() -> Duration {
    Duration::from_secs(600)
}
fn default_start_timeout() -> Duration {
    Duration::from_secs(120)
}
fn default_stop_grace() -> Duration {
    Duration::from_secs(10)
}

/// What Ray gets as its `--temp-dir`: this directory inside corral's temp dir. Ray makes
/// its temp dir, session, socket and log directories world-writable (mode 0777, so that
/// users can share `/tmp/ray`); inside corral's temp dir, which is 0700 and the Ray
/// user's, nobody else can reach them.
pub const RAY_OWN_TEMP_DIR: &str = "tmp";

/// Ray's longest Unix socket path is its temp dir (corral's plus `/tmp`) plus
/// `/session_YYYY-MM-DD_HH-MM-SS_UUUUUU_PID/sockets/plasma_store` (about 66 bytes), and
/// an AF_UNIX path holds at most 107.
pub const MAX_TEMP_DIR_BYTES: usize = 107 - 66 - 1 - RAY_OWN_TEMP_DIR.len();

/// Refuses a temp dir too long for Ray's sockets (Ray itself fails late, half-started),
/// and one that is not Ray's own: corral stops every process of its user whose command
/// line names the temp dir, so `/tmp` or a home directory would take unrelated
/// processes with it.
pub fn check_temp_dir(dir: &Path) -> Result<(), String> {
    const SHARED: &[&str] = &[
        "/tmp", "/var/tmp", "/dev/shm", "/run", "/var", "/home", "/root", "/opt", "/usr", "/srv",
    ];
    let trimmed = dir.to_string_lossy().trim_end_matches('/').to_string();
    let depth = dir
        .components()
        .filter(|c| matches!(c, std::path::Component::Normal(_)))
        .count();
    if depth < 2 || SHARED.contains(&trimmed.as_str()) {
        return Err(format!(
            "{} is a shared directory; corral treats every process naming Ray's temp dir as its own and stops it, so give Ray a directory of its own (for example /tmp/corral-ray)",
            dir.display()
        ));
    }
    let len = dir.as_os_str().len();
    if len > MAX_TEMP_DIR_BYTES {
        return Err(format!(
            "{} is {len} bytes; Ray puts Unix sockets under it and their paths cannot exceed 107 bytes, so use a temp dir of at most {MAX_TEMP_DIR_BYTES} bytes (for example /tmp/corral-ray)",
            dir.display()
        ));
    }
    Ok(())
}

impl RayConfig {
    pub fn resolve_paths(&mut self, base: &Path) {
        for p in [&mut self.venv, &mut self.temp_dir].into_iter().flatten() {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    /// The temp dir for node `node`: configured, else `STATE_DIR/ray`, else
    /// `/tmp/corral-ray-NODE` (an agent without a state dir, such as a development one).
    pub fn temp_dir_for(&self, node: &str) -> PathBuf {
        if let Some(t) = &self.temp_dir {
            return t.clone();
        }
        match &self.state_dir {
            Some(s) => s.join("ray"),
            None => PathBuf::from(format!("/tmp/corral-ray-{node}")),
        }
    }

    pub fn validate(&self) -> Result<(), ConfigIssue> {
        let issue = |key: &str, message: String| ConfigIssue {
            key: format!("ray.{key}"),
            message,
        };
        if self.role == RoleConfig::None {
            return Ok(());
        }
        if self.venv.is_none() {
            return Err(issue(
                "venv",
                "role is head or worker, so a venv is required (create one with `python3 -m venv /opt/ray-venv && /opt/ray-venv/bin/pip install \"ray[default]\"`)".into(),
            ));
        }
        for (key, port) in [
            ("port", self.port),
            ("dashboard_port", self.dashboard_port),
            ("client_server_port", self.client_server_port),
        ] {
            if port == 0 {
                return Err(issue(key, "must be a port number, 1 to 65535".into()));
            }
        }
        if self.role == RoleConfig::Head {
            let ports = [self.port, self.dashboard_port, self.client_server_port];
            if ports[0] == ports[1] || ports[0] == ports[2] || ports[1] == ports[2] {
                return Err(issue(
                    "dashboard_port",
                    format!(
                        "port, dashboard_port and client_server_port must differ (have {}, {}, {})",
                        ports[0], ports[1], ports[2]
                    ),
                ));
            }
        }
        if self.dashboard_host.parse::<std::net::IpAddr>().is_err() {
            return Err(issue(
                "dashboard_host",
                format!(
                    "{:?} is not an IP address (use 127.0.0.1, or 0.0.0.0 for every interface)",
                    self.dashboard_host
                ),
            ));
        }
        if let Some(ip) = &self.node_ip {
            if ip.parse::<std::net::IpAddr>().is_err() {
                return Err(issue("node_ip", format!("{ip:?} is not an IP address")));
            }
        }
        for (name, v) in &self.resources {
            if name.is_empty() || name.contains(['"', '\'', ' ']) {
                return Err(issue(
                    "resources",
                    format!("{name:?} is not a usable resource name"),
                ));
            }
            if !v.is_finite() || *v < 0.0 {
                return Err(issue(
                    "resources",
                    format!("{name} = {v}: amounts must be finite and at least 0"),
                ));
            }
        }
        for a in &self.extra_args {
            let flag = a.split('=').next().unwrap_or(a);
            if MANAGED_FLAGS.contains(&flag) {
                return Err(issue(
                    "extra_args",
                    format!("{flag} is set by corral from the [ray] section; use the matching key instead"),
                ));
            }
        }
        if let Some(t) = &self.temp_dir {
            check_temp_dir(t).map_err(|m| issue("temp_dir", m))?;
        }
        if let Some(u) = &self.user {
            if u.is_empty() || u.contains(['\0', '/', ':', ' ']) {
                return Err(issue(
                    "user",
                    format!("{u:?} is not an account name (for example \"corral-ray\")"),
                ));
            }
            if u == "root" && !self.allow_root {
                return Err(issue(
                    "user",
                    "Ray and the code of every Ray job would run as root; name an unprivileged account, or set ray.allow_root = true to run Ray as root knowingly".into(),
                ));
            }
        }
        if let Some(h) = &self.head_address {
            if self.role != RoleConfig::Worker {
                return Err(issue(
                    "head_address",
                    "only a worker joins a head; remove it or set role = \"worker\"".into(),
                ));
            }
            if corral_base::config::split_host_port(h).is_none() {
                return Err(issue(
                    "head_address",
                    format!("{h:?} is not HOST:PORT (for example \"head-01:6379\")"),
                ));
            }
        }
        if self.restart_base < Duration::from_millis(10) {
            return Err(issue("restart_base", "use at least 10ms".into()));
        }
        if self.restart_cap < self.restart_base {
            return Err(issue(
                "restart_cap",
                "must be at least ray.restart_base".into(),
            ));
        }
        if self.restart_window < Duration::from_secs(1) {
            return Err(issue("restart_window", "use at least 1s".into()));
        }
        if self.start_timeout < Duration::from_secs(1) {
            return Err(issue("start_timeout", "use at least 1s".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<RayConfig, ConfigIssue> {
        let cfg: RayConfig = toml::from_str(body).map_err(|e| ConfigIssue {
            key: "(parse)".into(),
            message: e.to_string(),
        })?;
        cfg.validate().map(|_| cfg)
    }

    #[test]
    fn head_gets_rays_default_ports() {
        let c = parse("role = \"head\"\nvenv = \"/v\"").unwrap();
        assert_eq!(
            (c.port, c.dashboard_port, c.client_server_port),
            (6379, 8265, 10001)
        );
        assert_eq!(c.dashboard_host, "127.0.0.1");
        assert_eq!(c.python_match, PythonMatch::Patch);
    }

    #[test]
    fn head_or_worker_without_venv_is_refused_with_the_pip_line() {
        let e = parse("role = \"worker\"").unwrap_err();
        assert_eq!(e.key, "ray.venv");
        assert!(e.message.contains("pip install"), "{}", e.message);
    }

    #[test]
    fn managed_flags_in_extra_args_are_refused() {
        let e = parse("role = \"head\"\nvenv = \"/v\"\nextra_args = [\"--port=1\"]").unwrap_err();
        assert_eq!(e.key, "ray.extra_args");
    }

    #[test]
    fn head_address_on_a_head_is_refused() {
        let e = parse("role = \"head\"\nvenv = \"/v\"\nhead_address = \"h:6379\"").unwrap_err();
        assert_eq!(e.key, "ray.head_address");
    }

    #[test]
    fn clashing_head_ports_are_refused() {
        let e = parse("role = \"head\"\nvenv = \"/v\"\ndashboard_port = 6379").unwrap_err();
        assert!(e.message.contains("must differ"), "{}", e.message);
    }

    #[test]
    fn negative_resource_is_refused() {
        let e = parse("role = \"head\"\nvenv = \"/v\"\nresources = { ib = -1 }").unwrap_err();
        assert_eq!(e.key, "ray.resources");
    }

    #[test]
    fn shared_temp_dir_is_refused_because_its_processes_would_be_swept() {
        for shared in ["/tmp", "/tmp/", "/", "/var/tmp", "/dev/shm", "/home"] {
            let e = check_temp_dir(Path::new(shared)).unwrap_err();
            assert!(e.contains("shared directory"), "{shared}: {e}");
        }
        check_temp_dir(Path::new("/tmp/corral-ray-gpu01")).unwrap();
    }

    #[test]
    fn temp_dir_too_long_for_rays_sockets_is_refused() {
        let e = parse(&format!(
            "role = \"head\"\nvenv = \"/v\"\ntemp_dir = \"/tmp/{}\"",
            "x".repeat(60)
        ))
        .unwrap_err();
        assert_eq!(e.key, "ray.temp_dir");
        assert!(e.message.contains("107 bytes"), "{}", e.message);
    }

    #[test]
    fn ray_user_root_needs_allow_root_and_an_empty_user_is_refused() {
        let e = parse("role = \"head\"\nvenv = \"/v\"\nuser = \"root\"").unwrap_err();
        assert_eq!(e.key, "ray.user");
        assert!(e.message.contains("ray.allow_root"), "{}", e.message);
        parse("role = \"head\"\nvenv = \"/v\"\nuser = \"root\"\nallow_root = true").unwrap();
        let e = parse("role = \"head\"\nvenv = \"/v\"\nuser = \"\"").unwrap_err();
        assert_eq!(e.key, "ray.user");
        let c = parse("role = \"worker\"\nvenv = \"/v\"\nuser = \"corral-ray\"").unwrap();
        assert_eq!(
            (c.user.as_deref(), c.allow_root),
            (Some("corral-ray"), false)
        );
    }

    #[test]
    fn the_default_temp_dir_lives_under_the_agents_state_dir() {
        let mut c = parse("role = \"head\"\nvenv = \"/v\"").unwrap();
        assert_eq!(c.temp_dir_for("gpu01"), Path::new("/tmp/corral-ray-gpu01"));
        c.state_dir = Some("/var/lib/corral/agent".into());
        assert_eq!(
            c.temp_dir_for("gpu01"),
            Path::new("/var/lib/corral/agent/ray")
        );
        c.temp_dir = Some("/srv/ray-tmp".into());
        assert_eq!(c.temp_dir_for("gpu01"), Path::new("/srv/ray-tmp"));
        assert!(
            toml::from_str::<RayConfig>("role = \"head\"\nstate_dir = \"/x\"").is_err(),
            "state_dir is an [agent] key, not a [ray] one"
        );
    }

    #[test]
    fn unknown_python_match_is_a_parse_error() {
        assert!(parse("role = \"head\"\nvenv = \"/v\"\npython_match = \"major\"").is_err());
    }
}
