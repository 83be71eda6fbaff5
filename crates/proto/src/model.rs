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

/// `part` of `total` in whole percent (`None` for a total of 0), as the console shows
/// memory use.
pub fn whole_percent(part: u64, total: u64) -> Option<u8> {
    (total > 0).then(|| (part.min(total) as f64 * 100.0 / total as f64).round() as u8)
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

/// One GPU (or one MIG instance) as the agent's GPU source sees it, with the health the
/// agent judged it to have. Every reading a device may not support is optional: `None`
/// means "not supported / not available here", never zero. Units follow the module doc;
/// counters are cumulative as NVML reports them. The mapping of each field to NVML and to
/// dcgm-exporter's `DCGM_FI_DEV_*` names is in `docs/gpu-metrics.md`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct GpuSample {
    /// NVML index; for a MIG instance, the index of its parent GPU.
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub memory_used_bytes: Option<u64>,
    pub memory_total_bytes: Option<u64>,
    /// GPU (SM) utilization, percent.
    pub utilization_percent: Option<u32>,
    pub temperature_celsius: Option<u32>,
    pub power_watts: Option<f64>,

    // Identity and configuration.
    pub serial: Option<String>,
    /// PCI bus id as NVML writes it (`00000000:17:00.0`).
    pub pci_bus_id: Option<String>,
    pub driver_version: Option<String>,
    /// Highest CUDA version the driver supports (`12.4`).
    pub cuda_driver_version: Option<String>,
    pub vbios_version: Option<String>,
    pub persistence_mode: Option<bool>,
    /// `default`, `exclusive_thread`, `prohibited` or `exclusive_process`.
    pub compute_mode: Option<String>,
    /// MIG mode currently in effect (`None` on GPUs without MIG).
    pub mig_enabled: Option<bool>,
    /// For a MIG instance, the UUID of its parent GPU; `None` for a whole GPU.
    #[serde(default)]
    pub parent_uuid: Option<String>,
    /// For a MIG instance, its index under the parent.
    #[serde(default)]
    pub mig_index: Option<u32>,

    // Live readings.
    pub memory_free_bytes: Option<u64>,
    /// Memory controller utilization, percent.
    pub memory_utilization_percent: Option<u32>,
    pub encoder_utilization_percent: Option<u32>,
    pub decoder_utilization_percent: Option<u32>,
    /// HBM temperature (data-centre GPUs only).
    pub memory_temperature_celsius: Option<u32>,
    /// Fan 0 speed, percent of maximum (passively cooled GPUs have none).
    pub fan_speed_percent: Option<u32>,
    pub power_limit_watts: Option<f64>,
    /// Energy consumed since the driver was loaded, joules.
    pub energy_joules: Option<f64>,
    pub sm_clock_mhz: Option<u32>,
    pub memory_clock_mhz: Option<u32>,
    /// Active clock throttle reasons by name (`hw_thermal_slowdown`, `sw_power_cap`, ...;
    /// see [`THROTTLE_REASONS`]); `None` when the GPU cannot say, empty when none is
    /// active.
    pub throttle_reasons: Option<Vec<String>>,
    pub pcie_link_gen: Option<u32>,
    pub pcie_link_gen_max: Option<u32>,
    pub pcie_link_width: Option<u32>,
    pub pcie_link_width_max: Option<u32>,
    pub pcie_replay_count: Option<u64>,
    /// ECC mode currently in effect.
    pub ecc_enabled: Option<bool>,
    /// ECC error counts, since the last driver load / GPU reset (volatile) and over the
    /// GPU's life (aggregate).
    pub ecc_corrected_volatile: Option<u64>,
    pub ecc_uncorrected_volatile: Option<u64>,
    pub ecc_corrected_aggregate: Option<u64>,
    pub ecc_uncorrected_aggregate: Option<u64>,
    /// Pages retired for single- and double-bit errors (pre-Ampere GPUs).
    pub retired_pages_single_bit: Option<u64>,
    pub retired_pages_double_bit: Option<u64>,
    /// Pages waiting to be retired at the next GPU reset.
    pub retired_pages_pending: Option<bool>,
    /// Row remapping (Ampere and later).
    pub remapped_rows_correctable: Option<u64>,
    pub remapped_rows_uncorrectable: Option<u64>,
    pub remapped_rows_pending: Option<bool>,
    pub remapped_rows_failure: Option<bool>,
    /// NVLink links the GPU has (empty without NVLink).
    #[serde(default)]
    pub nvlinks: Vec<NvLinkSample>,
    /// XID errors that arrived since the previous sample, in arrival order: from the NVML
    /// event set and from the kernel log (`NVRM: Xid` lines), an XID both reported counted
    /// once. The lasting view is in `health` (`xid_counts`, `xid_last`, `xid_total`).
    #[serde(default)]
    pub xids: Vec<u64>,
    /// Why the device could not be read at all ("GPU is lost", "no longer enumerated by
    /// the driver"); its readings are then all absent.
    #[serde(default)]
    pub lost: Option<String>,
    /// The agent's verdict on this device (see `node::device_health`).
    #[serde(default)]
    pub health: DeviceHealth,
    /// What the driver says the GPU needs (NVML's `NVML_FI_DEV_GET_GPU_RECOVERY_ACTION`:
    /// `none`, `reset`, `reboot`, `drain_p2p` or `drain_and_reset`); `None` where the
    /// driver cannot say (drivers before R565, GPUs without the field, a lost GPU).
    #[serde(default)]
    pub recovery_action: Option<GpuAction>,
}

impl GpuSample {
    /// A healthy, plausible H100 (80 GB, a quarter used, 40 °C, 18 NVLinks) with every
    /// reading present: for fake GPU sources, tests and load harnesses.
    pub fn plausible(index: u32) -> GpuSample {
        const TOTAL: u64 = 80 * 1_000_000_000;
        GpuSample {
            index,
            uuid: format!("GPU-fa4e0000-0000-0000-0000-{index:012x}"),
            name: "Fake H100 80GB".into(),
            memory_used_bytes: Some(TOTAL / 4),
            memory_total_bytes: Some(TOTAL),
            utilization_percent: Some(50),
            temperature_celsius: Some(40),
            power_watts: Some(250.0),
            serial: Some(format!("165{index:010}")),
            pci_bus_id: Some(format!("00000000:{:02X}:00.0", 0x18 + index * 0x10)),
            driver_version: Some("550.54.15".into()),
            cuda_driver_version: Some("12.4".into()),
            vbios_version: Some("96.00.89.00.01".into()),
            persistence_mode: Some(true),
            compute_mode: Some("default".into()),
            mig_enabled: Some(false),
            memory_free_bytes: Some(TOTAL - TOTAL / 4),
            memory_utilization_percent: Some(20),
            encoder_utilization_percent: Some(0),
            decoder_utilization_percent: Some(0),
            memory_temperature_celsius: Some(45),
            power_limit_watts: Some(700.0),
            energy_joules: Some(1.0e6),
            sm_clock_mhz: Some(1980),
            memory_clock_mhz: Some(2619),
            throttle_reasons: Some(vec![]),
            pcie_link_gen: Some(5),
            pcie_link_gen_max: Some(5),
            pcie_link_width: Some(16),
            pcie_link_width_max: Some(16),
            pcie_replay_count: Some(0),
            ecc_enabled: Some(true),
            ecc_corrected_volatile: Some(0),
            ecc_uncorrected_volatile: Some(0),
            ecc_corrected_aggregate: Some(0),
            ecc_uncorrected_aggregate: Some(0),
            retired_pages_single_bit: Some(0),
            retired_pages_double_bit: Some(0),
            retired_pages_pending: Some(false),
            remapped_rows_correctable: Some(0),
            remapped_rows_uncorrectable: Some(0),
            remapped_rows_pending: Some(false),
            remapped_rows_failure: Some(false),
            nvlinks: (0..18)
                .map(|link| NvLinkSample {
                    link,
                    active: true,
                    crc_flit_errors: Some(0),
                    crc_data_errors: Some(0),
                    replay_errors: Some(0),
                    recovery_errors: Some(0),
                })
                .collect(),
            ..GpuSample::default()
        }
    }
}

/// Throttle reason names, in the order NVML defines their bits.
pub const THROTTLE_REASONS: &[&str] = &[
    "gpu_idle",
    "applications_clocks_setting",
    "sw_power_cap",
    "hw_slowdown",
    "sync_boost",
    "sw_thermal_slowdown",
    "hw_thermal_slowdown",
    "hw_power_brake_slowdown",
    "display_clock_setting",
];

/// One NVLink link of a GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NvLinkSample {
    pub link: u32,
    pub active: bool,
    pub crc_flit_errors: Option<u64>,
    pub crc_data_errors: Option<u64>,
    pub replay_errors: Option<u64>,
    pub recovery_errors: Option<u64>,
}

/// A device's health: `ok`, `warn` or `fail`, best first.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum DeviceStatus {
    #[default]
    Ok,
    Warn,
    Fail,
}

impl DeviceStatus {
    pub const ALL: [DeviceStatus; 3] = [DeviceStatus::Ok, DeviceStatus::Warn, DeviceStatus::Fail];

    pub fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Ok => "ok",
            DeviceStatus::Warn => "warn",
            DeviceStatus::Fail => "fail",
        }
    }

    /// The node health a device in this state implies.
    pub fn node_status(self) -> HealthStatus {
        match self {
            DeviceStatus::Ok => HealthStatus::Healthy,
            DeviceStatus::Warn => HealthStatus::Degraded,
            DeviceStatus::Fail => HealthStatus::Unhealthy,
        }
    }
}

impl std::fmt::Display for DeviceStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a device is not `ok`: a stable code for dashboards and a message an operator can
/// act on ("XID 79: GPU has fallen off the bus; reboot the node to clear").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceReason {
    /// `xid`, `recovery_action`, `temperature`, `ecc_uncorrectable`,
    /// `ecc_corrected_growing`, `row_remap_failure`, `row_remap_pending`,
    /// `retired_pages_pending`, `pcie_width`, `pcie_replays_growing`, `throttle_thermal`,
    /// `throttle_hw_slowdown`, `nvlink_down`, `nvlink_errors_growing`, `lost`,
    /// `disappeared`.
    pub code: String,
    pub status: DeviceStatus,
    pub message: String,
    /// True when a GPU reset clears this reason (a node reboot does too).
    pub needs_reset: bool,
    /// True when only a node reboot clears this reason (NVIDIA's catalog says `RESTART_BM`
    /// for the XID, or NVML's recovery action is `reboot`). Never set with `needs_reset`.
    #[serde(default)]
    pub needs_reboot: bool,
    /// What to do about it, where a source says: the XID catalog's action, NVML's
    /// recovery action, or the reset a reading needs. `None` for conditions that clear by
    /// themselves (a temperature, a counter that stops growing).
    #[serde(default)]
    pub action: Option<GpuAction>,
    /// Who decided `action`.
    #[serde(default)]
    pub action_source: Option<ActionSource>,
}

/// A device's verdict, worst reason first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DeviceHealth {
    pub status: DeviceStatus,
    pub reasons: Vec<DeviceReason>,
    /// The most recent XID error seen on this device this boot (across agent restarts
    /// when the agent has a `state_dir`, since the agent started otherwise).
    pub xid_last: Option<u64>,
    /// XID errors seen on this device, over the same span (ignored ones included).
    pub xid_total: u64,
    /// The same XIDs by code, ascending.
    #[serde(default)]
    pub xid_counts: Vec<XidCount>,
    /// What the device needs now, the worst of its reasons' actions, except that NVML's
    /// recovery action, when the driver reports one other than `none`, decides.
    #[serde(default)]
    pub action: GpuAction,
    /// Who decided `action`; `None` while `action` is `none`.
    #[serde(default)]
    pub action_source: Option<ActionSource>,
}

/// How many times one XID was seen on a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct XidCount {
    pub xid: u64,
    pub count: u64,
}

/// What a GPU needs, from nothing to a node reboot, in increasing severity. One
/// vocabulary for NVIDIA's XID catalog (`restart_app`, `investigate`, `reset`,
/// `reboot`; its `IGNORE` is `none`) and NVML's recovery action (`none`, `reset`,
/// `reboot`, `drain_p2p`, `drain_and_reset`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "snake_case")]
pub enum GpuAction {
    /// Nothing to do.
    #[default]
    None,
    /// Restart the application that hit the error; the GPU is fine.
    RestartApp,
    /// Look into it (NVIDIA names a workflow or support for the XID).
    Investigate,
    /// Stop the GPU's peer-to-peer traffic, then read the recovery action again.
    DrainP2p,
    /// Reset the GPU (`nvidia-smi -r`).
    Reset,
    /// Drain peer-to-peer traffic, then reset the GPU.
    DrainAndReset,
    /// Reboot the node.
    Reboot,
}

impl GpuAction {
    pub const ALL: [GpuAction; 7] = [
        GpuAction::None,
        GpuAction::RestartApp,
        GpuAction::Investigate,
        GpuAction::DrainP2p,
        GpuAction::Reset,
        GpuAction::DrainAndReset,
        GpuAction::Reboot,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            GpuAction::None => "none",
            GpuAction::RestartApp => "restart_app",
            GpuAction::Investigate => "investigate",
            GpuAction::DrainP2p => "drain_p2p",
            GpuAction::Reset => "reset",
            GpuAction::DrainAndReset => "drain_and_reset",
            GpuAction::Reboot => "reboot",
        }
    }

    /// NVML's `nvmlDeviceGpuRecoveryAction_t` value (0 none, 1 GPU reset, 2 node reboot,
    /// 3 drain P2P, 4 drain and reset); `None` for a value this build does not know.
    pub fn from_nvml(value: u64) -> Option<GpuAction> {
        match value {
            0 => Some(GpuAction::None),
            1 => Some(GpuAction::Reset),
            2 => Some(GpuAction::Reboot),
            3 => Some(GpuAction::DrainP2p),
            4 => Some(GpuAction::DrainAndReset),
            _ => None,
        }
    }
}

impl std::fmt::Display for GpuAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who decided a device's action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionSource {
    /// NVIDIA's XID catalog, as the agent's table encodes it.
    Catalog,
    /// The driver, through NVML's GPU recovery action.
    Nvml,
    /// The operator's `[gpu.xid]` overrides.
    Operator,
    /// corral's rule for a reading (uncorrectable ECC errors, a pending remap, a lost
    /// GPU).
    Reading,
}

impl ActionSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionSource::Catalog => "catalog",
            ActionSource::Nvml => "nvml",
            ActionSource::Operator => "operator",
            ActionSource::Reading => "reading",
        }
    }
}

impl std::fmt::Display for ActionSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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
    /// This node's Ray process as corral supervises it; `None` when `[ray] role` is
    /// `none` (or absent).
    pub ray: Option<RayStatus>,
}

/// Which Ray process corral runs on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RayRole {
    Head,
    Worker,
}

impl RayRole {
    pub fn as_str(self) -> &'static str {
        match self {
            RayRole::Head => "head",
            RayRole::Worker => "worker",
        }
    }
}

impl std::fmt::Display for RayRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the supervised Ray process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RayState {
    /// Probing the venv, waiting for the head, or started and not yet ready.
    Starting,
    /// Ready: the head answers on its GCS port and dashboard, or the worker has joined.
    Running,
    /// Exited unexpectedly; waiting out the backoff before the next start.
    Restarting,
    /// A worker that will not join its head (Python or Ray versions differ).
    Refused,
    /// The venv is unusable, or the restart budget is spent; `message` says why.
    Failed,
    /// Stopped by corral (agent shutdown).
    Stopped,
    /// A worker whose drain Ray accepted: no new tasks are placed on it, and it still
    /// runs until its work ends or the drain's deadline passes.
    Draining,
    /// A worker stopped by a drain (its work ended, or the deadline passed). Not
    /// restarted until it is resumed.
    Drained,
}

impl RayState {
    pub const ALL: [RayState; 8] = [
        RayState::Starting,
        RayState::Running,
        RayState::Restarting,
        RayState::Refused,
        RayState::Failed,
        RayState::Stopped,
        RayState::Draining,
        RayState::Drained,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RayState::Starting => "starting",
            RayState::Running => "running",
            RayState::Restarting => "restarting",
            RayState::Refused => "refused",
            RayState::Failed => "failed",
            RayState::Stopped => "stopped",
            RayState::Draining => "draining",
            RayState::Drained => "drained",
        }
    }
}

impl std::fmt::Display for RayState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The Ray process a node's agent supervises (see [`crate::ray`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RayStatus {
    pub role: RayRole,
    pub state: RayState,
    /// When `state` last changed (Unix ms).
    pub since_ms: u64,
    pub venv: String,
    /// Exact versions read from the venv (`None` until the probe succeeded).
    pub python_version: Option<String>,
    pub ray_version: Option<String>,
    /// `host:port` of the head's GCS (the head's own address on the head).
    pub head_address: Option<String>,
    /// Restarts after unexpected exits since the agent started.
    pub restarts: u32,
    /// Why the state is what it is, when it is not plainly `running` ("waiting for the
    /// head", the refusal or failure message).
    pub message: Option<String>,
    /// Process id of `ray start --block` (also its process group id).
    pub pid: Option<u32>,
    /// Where Ray's output goes.
    pub log_file: Option<String>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ray_state_is_listed_once_under_its_json_name() {
        let mut seen = std::collections::HashSet::new();
        for st in RayState::ALL {
            assert!(seen.insert(st), "{st} listed twice");
            let json = serde_json::to_string(&st).unwrap();
            assert_eq!(json, format!("\"{}\"", st.as_str()));
            assert_eq!(serde_json::from_str::<RayState>(&json).unwrap(), st);
        }
        // ALL is what the metrics export; a state missing from it is never shown.
        for st in [RayState::Draining, RayState::Drained] {
            assert!(RayState::ALL.contains(&st), "{st}");
        }
    }

    #[test]
    fn nvml_recovery_action_values_map_to_actions() {
        let mapped: Vec<_> = (0..6).map(GpuAction::from_nvml).collect();
        assert_eq!(
            mapped,
            [
                Some(GpuAction::None),
                Some(GpuAction::Reset),
                Some(GpuAction::Reboot),
                Some(GpuAction::DrainP2p),
                Some(GpuAction::DrainAndReset),
                None,
            ]
        );
    }

    #[test]
    fn actions_are_ordered_by_severity_and_named_in_json() {
        assert!(GpuAction::None < GpuAction::RestartApp);
        assert!(GpuAction::Investigate < GpuAction::Reset);
        assert!(GpuAction::Reset < GpuAction::Reboot);
        for a in GpuAction::ALL {
            assert_eq!(
                serde_json::to_string(&a).unwrap(),
                format!("\"{}\"", a.as_str())
            );
        }
    }

    #[test]
    fn reports_stored_before_the_new_fields_still_load() {
        // The coordinator keeps reports as JSON; one written before protocol 3's GPU
        // fields must still deserialize.
        let old = r#"{"code": "xid", "status": "fail", "message": "m", "needs_reset": true}"#;
        let r: DeviceReason = serde_json::from_str(old).unwrap();
        assert!(!r.needs_reboot);
        assert_eq!((r.action, r.action_source), (None, None));
        let h: DeviceHealth = serde_json::from_str(
            r#"{"status": "ok", "reasons": [], "xid_last": null, "xid_total": 0}"#,
        )
        .unwrap();
        assert_eq!(h.action, GpuAction::None);
    }
}
