//! The coordinator's sections: `[coordinator]` (where it listens and keeps state, when
//! nodes count as disconnected and down), `[api]` (the HTTP listener) and `[jobs]` (how
//! submitted jobs are tracked).
//!
//! Invariant: [`validate`] refuses what the coordinator could not run with, or could
//! only run with unsafely (an API reachable from other machines without a token or
//! TLS), and names the key.

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
    if !api.listen.ip().is_loopback() && api.token_file.is_none() && api.tls_cert.is_none() {
        return Err(issue(
                "api.listen",
                format!(
                    "{} is reachable from other machines; set api.token_file or api.tls_cert/api.tls_key, or listen on 127.0.0.1",
                    api.listen
                ),
            ));
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
