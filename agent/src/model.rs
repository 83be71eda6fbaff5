//! The data a node reports about itself, shared by the agent that samples it, the wire
//! protocol that carries it, the coordinator's registry that keeps it and the HTTP API
//! that shows it.
//!
//! Invariants and trade-offs:
//! - These types cross the wire encoded with postcard, which is not self-describing:
//!   field order *is* the format. Any change here (adding, removing or reordering a
//!   field, adding an enum variant anywhere but the end) must bump
//!   [`crate::wire::PROTOCOL_VERSION`]. For the same reason no serde attribute that skips
//!   fields conditionally (`skip_serializing_if`, `flatten`, `untagged`) may be used.
//! - A reading the machine cannot give is `None` (JSON `null`), never zero: "no GPU
//!   temperature sensor" and "0 °C" must stay distinguishable.
//! - Sizes are bytes, ratios are percent (0–100), times are Unix milliseconds.

use serde::{Deserialize, Serialize};

/// Facts about a host that change rarely (sent with every report; they are small).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct HostFacts {
    pub hostname: String,
    pub os: String,
    pub kernel: String,
    pub cpu_model: String,
    /// Logical CPUs the OS schedules on.
    pub cpu_cores: u32,
    pub physical_cores: Option<u32>,
    pub memory_total_bytes: u64,
    pub agent_version: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct LoadAverage {
    pub one: f64,
    pub five: f64,
    pub fifteen: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Memory {
    pub total_bytes: u64,
    pub used_bytes: u64,
    pub available_bytes: u64,
    pub swap_total_bytes: u64,
    pub swap_used_bytes: u64,
}

/// One mounted filesystem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Filesystem {
    pub mount: String,
    pub device: String,
    pub fs_type: String,
    pub total_bytes: u64,
    pub available_bytes: u64,
}

impl Filesystem {
    /// Percent of the filesystem in use, 0 for an empty (size 0) filesystem.
    pub fn used_percent(&self) -> f64 {
        if self.total_bytes == 0 {
            return 0.0;
        }
        let used = self.total_bytes.saturating_sub(self.available_bytes);
        used as f64 * 100.0 / self.total_bytes as f64
    }
}

/// A temperature sensor the kernel exposes (hwmon / thermal zones).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Temperature {
    pub label: String,
    pub celsius: f32,
}

/// One sample of the host's live state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct HostSample {
    pub taken_at_ms: u64,
    pub uptime_secs: u64,
    /// Whole-machine CPU use, percent of all cores.
    pub cpu_percent: f32,
    pub per_core_percent: Vec<f32>,
    pub load: LoadAverage,
    pub memory: Memory,
    pub filesystems: Vec<Filesystem>,
    pub cpu_temperatures: Vec<Temperature>,
}

/// One GPU as the agent's GPU source sees it. Every reading a device may not support
/// is optional.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct GpuSample {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub memory_used_bytes: Option<u64>,
    pub memory_total_bytes: Option<u64>,
    pub utilization_percent: Option<u32>,
    pub temperature_celsius: Option<u32>,
    pub power_watts: Option<f64>,
}

/// Node health, worst first in severity.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    #[default]
    Healthy,
    Degraded,
    Unhealthy,
}

impl HealthStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Healthy => "healthy",
            HealthStatus::Degraded => "degraded",
            HealthStatus::Unhealthy => "unhealthy",
        }
    }
}

impl std::fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a node is not healthy: which check, how bad, and a message an operator can act on
/// ("disk / 97% full > 95%").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reason {
    pub check: String,
    /// `Degraded` or `Unhealthy`.
    pub status: HealthStatus,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Health {
    pub status: HealthStatus,
    pub reasons: Vec<Reason>,
}

impl Health {
    /// Builds a health value whose status is the worst of its reasons.
    pub fn from_reasons(reasons: Vec<Reason>) -> Self {
        let status = reasons
            .iter()
            .map(|r| r.status)
            .max()
            .unwrap_or(HealthStatus::Healthy);
        Health { status, reasons }
    }
}

/// The full report an agent sends every report interval and whenever health changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct NodeReport {
    /// The node this report is about; must equal the name in the sender's certificate.
    pub node: String,
    pub facts: HostFacts,
    pub host: HostSample,
    pub gpus: Vec<GpuSample>,
    /// Why GPUs could not be read, when a GPU library is present but failing. A node
    /// without an NVIDIA driver has no GPUs and no error.
    pub gpu_error: Option<String>,
    pub health: Health,
}

/// The coordinator's view of whether a node is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Liveness {
    /// Connected and beating.
    Ready,
    /// Connection lost or no beat for the configured number of beat intervals.
    Disconnected,
    /// No beat for `down_after`, or not back since the coordinator restarted.
    Down,
}

impl Liveness {
    pub const ALL: [Liveness; 3] = [Liveness::Ready, Liveness::Disconnected, Liveness::Down];

    pub fn as_str(self) -> &'static str {
        match self {
            Liveness::Ready => "ready",
            Liveness::Disconnected => "disconnected",
            Liveness::Down => "down",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|l| l.as_str() == s)
    }
}

impl std::fmt::Display for Liveness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Milliseconds since the Unix epoch, from the system clock.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Nanoseconds since the Unix epoch, from the system clock.
pub fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
