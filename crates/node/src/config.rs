//! The agent's `[agent]` section: who this node is, where its coordinator is, and how
//! often it beats, reports and samples. The other agent sections live beside what they
//! configure: `[health]` ([`crate::health::verdict::Thresholds`]), `[gpu]`
//! ([`crate::health::gpu::GpuConfig`]), `[ray]` ([`crate::ray::RayConfig`]) and
//! `[plugins]` ([`crate::plugins::PluginsConfig`]).
//!
//! Invariant: [`AgentSection::validate`] refuses what the agent could not run with, and
//! names the key.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use corral_base::config::{split_host_port, ConfigIssue};
use corral_proto::wire::DEFAULT_QUIC_PORT;

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
    /// Where the agent keeps what must survive its own restart: GPU failure state
    /// (`gpu-health.json`, see `crate::health::state`), keyed by boot id so a reboot
    /// clears it. Created if missing. Default: none (kept in memory only).
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
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

impl AgentSection {
    /// Semantic checks beyond types.
    pub fn validate(&self) -> Result<(), ConfigIssue> {
        let issue = |key: &str, message: String| ConfigIssue {
            key: key.into(),
            message,
        };
        let a = self;
        if let Some(name) = &a.name {
            corral_proto::names::validate_name(name).map_err(|m| issue("agent.name", m))?;
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
                "must not be shorter than agent.beat_interval (reports are the heavier message)"
                    .into(),
            ));
        }
        let range = &corral_proto::wire::BEAT_INTERVAL_MS;
        let ms = a.beat_interval.as_millis();
        if ms < u128::from(*range.start()) || ms > u128::from(*range.end()) {
            return Err(issue(
                "agent.beat_interval",
                format!(
                    "{} is outside what coordinators accept; use 100ms to 60s",
                    humantime::format_duration(a.beat_interval)
                ),
            ));
        }
        if a.state_dir
            .as_ref()
            .is_some_and(|d| d.as_os_str().is_empty())
        {
            return Err(issue(
                "agent.state_dir",
                "is empty; remove the key to keep GPU state in memory only".into(),
            ));
        }
        if a.reconnect_cap < a.reconnect_base {
            return Err(issue(
                "agent.reconnect_cap",
                "must be at least agent.reconnect_base".into(),
            ));
        }
        Ok(())
    }
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
    corral_proto::names::validate_name(&short)
        .map_err(|m| anyhow::anyhow!("the hostname cannot be a node name ({m}); set agent.name"))?;
    Ok(short)
}
