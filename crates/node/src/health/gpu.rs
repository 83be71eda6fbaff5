//! Where GPU readings come from: NVML on NVIDIA nodes, nothing elsewhere, a script in
//! tests and benchmarks. All behind [`GpuSource`]; what the readings mean for health is
//! [`super::device_health`]'s business.
//!
//! Invariants and trade-offs:
//! - A node without an NVIDIA driver is a normal node with zero GPUs, not a failing one:
//!   with `backend = "auto"` a missing `libnvidia-ml.so.1` (or a driver that is not
//!   loaded) selects [`NoGpus`] and logs once at info. Only `backend = "nvml"` turns a
//!   missing driver into a start-up error.
//! - A driver that is present but refuses to initialise (permissions, a library/kernel
//!   version mismatch after an upgrade) is a GPU *fault*, not an absence: [`open`] still
//!   returns an NVML source, which retries initialisation on every sample and reports the
//!   failure as an error until it succeeds, so the node shows up degraded with the reason
//!   instead of silently having no GPUs.
//! - A reading a device does not support (NVML `NotSupported`, `NoData`, a symbol the
//!   installed driver lacks, ...) is `None`, never an error and never zero.
//! - A device NVML reports as lost (`GpuLost`: fallen off the bus) stays in the list with
//!   `lost` set and every reading absent, under the UUID it had when last readable, so
//!   the node shows *which* GPU failed. Any other failure of any device fails the whole
//!   sample: a partial list would look like a node with fewer GPUs.
//! - XID errors are events, not readings: a dedicated thread (`corral-nvml-xid`) with its
//!   own NVML handle registers every device that supports it in an NVML event set and
//!   blocks in `EventSet::wait` (1 s timeout, so it notices shutdown); events go through a
//!   channel that [`GpuSource::sample`] drains into each device's `xids`. Nothing polls
//!   for XIDs. Devices without event support (NVML `NotSupported`: GeForce, some VMs) are
//!   skipped with a log line and still report every other reading. NVML reports only the
//!   last XID per device when several arrive between two waits, and some XIDs (79, 119,
//!   120, 62) not at all: the NVML backends therefore also read the kernel log
//!   ([`super::kmsg`], `gpu.kernel_log`, `/dev/kmsg` by default), handed to the sampler
//!   through [`GpuSource::kernel_log`]; duplicates are merged in
//!   [`super::device_health`]. The events of a sample are drained *before* its devices are
//!   read, so the recovery action read below follows any XID 154 the sample carries.
//! - NVML's GPU recovery action (`NVML_FI_DEV_GET_GPU_RECOVERY_ACTION`, field 230 in
//!   nvml.h, drivers from R565) is read on every sample through the field-value API,
//!   which nvml-wrapper wraps for any field id, in a call of its own: a driver that does
//!   not know the field gives `None` without failing the other readings.
//! - Static facts (driver and CUDA versions) are read once per NVML initialisation.
//! - MIG: the mode in effect is reported, and on a GPU with MIG enabled every MIG
//!   instance is reported as its own device (`parent_uuid`, `mig_index`, its UUID, name
//!   and memory) right after its parent. nvml-wrapper 0.11 wraps no MIG handle API, so
//!   [`MigLister`] calls NVML's two entry points for it directly (the only `unsafe` here).
//!   An instance NVML will not give is left out; it never fails the sample. Not yet
//!   checked on real MIG hardware (no GPU machine has been available).
//! - The fake source replays a JSON script (see [`FakeScript`]) in which every
//!   [`GpuSample`] field may be given, XIDs as `"xids": [79]` on the sample they arrive
//!   with (NVML events), the recovery action as `"recovery_action": "reset"`, a lost
//!   device as `"lost": "GPU is lost"`, a device that disappears by leaving it out of a
//!   step, and kernel-log lines as `"kmsg": ["NVRM: Xid (PCI:0000:18:00): 79, ..."]` on
//!   the step (beside `"gpus"` or `"error"`) they arrive with. With `gpu.kernel_log` set
//!   it also reads that file, as the NVML backends do.
//! - NVML is loaded at run time by `nvml-wrapper` (libloading), so the agent binary runs
//!   on machines without the driver.
//! - Every call is blocking; NVML calls can take milliseconds per device.

use std::fs;
use std::path::{Path, PathBuf};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use nvml_wrapper::bitmasks::device::ThrottleReasons;
use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::{
    Clock, ComputeMode, EccCounter, MemoryError, RetirementCause, TemperatureSensor,
};
use nvml_wrapper::enum_wrappers::nv_link::ErrorCounter;
use nvml_wrapper::enums::device::SampleValue;
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::structs::device::FieldId;
use nvml_wrapper::sys_exports::field_id::{
    NVML_FI_DEV_GET_GPU_RECOVERY_ACTION, NVML_FI_DEV_MEMORY_TEMP, NVML_FI_DEV_REMAPPED_COR,
    NVML_FI_DEV_REMAPPED_FAILURE, NVML_FI_DEV_REMAPPED_PENDING, NVML_FI_DEV_REMAPPED_UNC,
};
use nvml_wrapper::{Device, Nvml};
use serde::{Deserialize, Serialize};

use super::device_health::{DevicePolicy, XidTable};
use super::kmsg::{self, KernelBatch, KernelLog};
use super::verdict::{ConfigIssue, Thresholds};
use corral_proto::model::{GpuAction, GpuSample, NvLinkSample, THROTTLE_REASONS};

/// A provider of GPU readings.
pub trait GpuSource: Send {
    /// Short name for logs and diagnostics (`nvml`, `none`, `fake`).
    fn name(&self) -> &'static str;
    /// Reads every GPU, in index order. An error means the GPUs could not be read at all.
    fn sample(&mut self) -> Result<Vec<GpuSample>, GpuError>;
    /// The kernel-log records read since the last call and the kernel-log source's
    /// status; `None` when this source reads no kernel log. Called before
    /// [`GpuSource::sample`], so that what the sample reads (NVML's recovery action)
    /// is never older than the XIDs it comes with.
    fn kernel_log(&mut self) -> Option<KernelBatch> {
        None
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error(
        "gpu.backend = \"nvml\" but NVML cannot be loaded ({cause}); \
         is the NVIDIA driver installed and loaded, with libnvidia-ml.so.1 on the library path?"
    )]
    NvmlMissing { cause: NvmlError },
    #[error("NVML failed to initialise: {cause}")]
    NvmlInit { cause: NvmlError },
    #[error("NVML {call} failed: {cause}")]
    Nvml {
        call: &'static str,
        cause: NvmlError,
    },
    #[error("GPU {index}: NVML {call} failed: {cause}")]
    NvmlDevice {
        index: u32,
        call: &'static str,
        cause: NvmlError,
    },
    #[error("gpu.backend = \"fake\" requires gpu.fake_script")]
    FakeScriptMissing,
    #[error("cannot read fake GPU script {path}: {cause}")]
    FakeScriptRead {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("fake GPU script {path} is invalid: {cause}")]
    FakeScriptInvalid {
        path: PathBuf,
        cause: serde_json::Error,
    },
    #[error("cannot write fake GPU script {path}: {cause}")]
    FakeScriptWrite {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// An error step of a fake script.
    #[error("{0}")]
    Scripted(String),
}

/// The `[gpu]` table of the agent configuration.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GpuConfig {
    #[serde(default)]
    pub backend: GpuBackend,
    /// JSON script for `backend = "fake"` (see [`FakeScript`]).
    #[serde(default)]
    pub fake_script: Option<PathBuf>,
    /// How long a growing error counter or a `warn` XID keeps a device in `warn` after it
    /// last moved.
    #[serde(default = "default_quiet_period", with = "humantime_serde")]
    pub quiet_period: Duration,
    /// Warn when a GPU's PCIe link runs narrower than it supports.
    #[serde(default = "yes")]
    pub check_pcie_width: bool,
    /// `[gpu.xid]`: XIDs whose class (critical, warn, ignore) the operator changes.
    #[serde(default)]
    pub xid: XidTable,
    /// Where kernel-log XIDs are read from: `/dev/kmsg`, or a file or FIFO in the same
    /// formats. Unset: `/dev/kmsg` with the NVML backends, nothing with `fake`. An empty
    /// path turns the kernel-log source off.
    #[serde(default)]
    pub kernel_log: Option<PathBuf>,
    /// Where GPU failure state survives agent restarts. Not a `[gpu]` key: the agent's
    /// config fills it from `agent.state_dir`.
    #[serde(skip)]
    pub state_dir: Option<PathBuf>,
}

fn default_quiet_period() -> Duration {
    Duration::from_secs(300)
}

impl Default for GpuConfig {
    fn default() -> Self {
        GpuConfig {
            backend: GpuBackend::default(),
            fake_script: None,
            quiet_period: default_quiet_period(),
            check_pcie_width: true,
            xid: XidTable::default(),
            kernel_log: None,
            state_dir: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum GpuBackend {
    /// NVML when the driver is there, otherwise no GPUs.
    #[default]
    Auto,
    /// NVML, and refuse to start without it.
    Nvml,
    /// Never look for GPUs.
    None,
    /// Replay `fake_script`.
    Fake,
}

impl GpuConfig {
    /// The device-health policy this config and the node's thresholds give.
    pub fn policy(&self, thresholds: &Thresholds) -> DevicePolicy {
        DevicePolicy {
            xid: self.xid.clone(),
            quiet_period: self.quiet_period,
            check_pcie_width: self.check_pcie_width,
            temperature_warn_celsius: thresholds.gpu_temperature_warn_celsius,
            temperature_fail_celsius: thresholds.gpu_temperature_fail_celsius,
            state_dir: self.state_dir.clone(),
        }
    }

    /// The kernel log this config reads, if any (see [`GpuConfig::kernel_log`]).
    pub fn kernel_log_path(&self) -> Option<PathBuf> {
        match &self.kernel_log {
            Some(p) if p.as_os_str().is_empty() => None,
            Some(p) => Some(p.clone()),
            None => match self.backend {
                GpuBackend::Auto | GpuBackend::Nvml => Some(PathBuf::from(kmsg::DEFAULT_PATH)),
                GpuBackend::Fake | GpuBackend::None => None,
            },
        }
    }

    pub fn validate(&self) -> Result<(), ConfigIssue> {
        self.xid.validate()?;
        if self.quiet_period > Duration::from_secs(7 * 24 * 3600) {
            return Err(ConfigIssue::new(
                "gpu.quiet_period",
                "must be at most 7 days",
            ));
        }
        if self.backend == GpuBackend::None
            && self
                .kernel_log
                .as_ref()
                .is_some_and(|p| !p.as_os_str().is_empty())
        {
            return Err(ConfigIssue::new(
                "gpu.kernel_log",
                "not read when gpu.backend = \"none\"; remove it or set the backend",
            ));
        }
        match (self.backend, &self.fake_script) {
            (GpuBackend::Fake, None) => Err(ConfigIssue::new(
                "gpu.fake_script",
                "required when gpu.backend = \"fake\"",
            )),
            (GpuBackend::Auto | GpuBackend::Nvml | GpuBackend::None, Some(_)) => {
                Err(ConfigIssue::new(
                    "gpu.fake_script",
                    "only used when gpu.backend = \"fake\"; remove it or set the backend",
                ))
            }
            _ => Ok(()),
        }
    }
}

/// Opens the source `cfg` asks for (see the module doc for what `auto` does).
pub fn open(cfg: &GpuConfig) -> Result<Box<dyn GpuSource>, GpuError> {
    let kernel = || cfg.kernel_log_path().map(|p| KernelLog::start(&p));
    match cfg.backend {
        GpuBackend::None => Ok(Box::new(NoGpus)),
        GpuBackend::Fake => {
            let path = cfg
                .fake_script
                .as_deref()
                .ok_or(GpuError::FakeScriptMissing)?;
            let mut fake = FakeGpuSource::load(path)?;
            fake.kernel = kernel();
            Ok(Box::new(fake))
        }
        GpuBackend::Nvml => match Nvml::init() {
            Ok(nvml) => Ok(Box::new(NvmlSource::ready(nvml).with_kernel_log(kernel()))),
            Err(cause) if driver_absent(&cause) => Err(GpuError::NvmlMissing { cause }),
            Err(cause) => Ok(Box::new(
                NvmlSource::failing(cause).with_kernel_log(kernel()),
            )),
        },
        GpuBackend::Auto => match NvmlSource::open() {
            Ok(Some(source)) => Ok(Box::new(source.with_kernel_log(kernel()))),
            Ok(None) => Ok(Box::new(NoGpus)),
            Err(GpuError::NvmlInit { cause }) => Ok(Box::new(
                NvmlSource::failing(cause).with_kernel_log(kernel()),
            )),
            Err(other) => Err(other),
        },
    }
}

/// Whether an `Nvml::init` failure means "this node has no NVIDIA driver".
fn driver_absent(e: &NvmlError) -> bool {
    matches!(
        e,
        NvmlError::LibloadingError(_) | NvmlError::LibraryNotFound | NvmlError::DriverNotLoaded
    )
}

/// Whether a per-field failure means "this device cannot give this reading".
fn unsupported(e: &NvmlError) -> bool {
    matches!(
        e,
        NvmlError::NotSupported
            | NvmlError::NoData
            | NvmlError::NoPermission
            | NvmlError::FunctionNotFound
            | NvmlError::FailedToLoadSymbol(_)
    )
}

/// A reading that may be unsupported: `None` then, an error for any other failure.
fn optional<T>(
    index: u32,
    call: &'static str,
    r: Result<T, NvmlError>,
) -> Result<Option<T>, GpuError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if unsupported(&e) => Ok(None),
        Err(cause) => Err(GpuError::NvmlDevice { index, call, cause }),
    }
}

/// Throttle reason bits, in [`THROTTLE_REASONS`] order.
const THROTTLE_BITS: [ThrottleReasons; 9] = [
    ThrottleReasons::GPU_IDLE,
    ThrottleReasons::APPLICATIONS_CLOCKS_SETTING,
    ThrottleReasons::SW_POWER_CAP,
    ThrottleReasons::HW_SLOWDOWN,
    ThrottleReasons::SYNC_BOOST,
    ThrottleReasons::SW_THERMAL_SLOWDOWN,
    ThrottleReasons::HW_THERMAL_SLOWDOWN,
    ThrottleReasons::HW_POWER_BRAKE_SLOWDOWN,
    ThrottleReasons::DISPLAY_CLOCK_SETTING,
];

/// Names of the active throttle reasons.
pub fn throttle_names(active: ThrottleReasons) -> Vec<String> {
    THROTTLE_BITS
        .iter()
        .zip(THROTTLE_REASONS)
        .filter(|(bit, _)| active.contains(**bit))
        .map(|(_, name)| name.to_string())
        .collect()
}

fn compute_mode_name(m: ComputeMode) -> &'static str {
    match m {
        ComputeMode::Default => "default",
        ComputeMode::ExclusiveThread => "exclusive_thread",
        ComputeMode::Prohibited => "prohibited",
        ComputeMode::ExclusiveProcess => "exclusive_process",
    }
}

fn sample_u64(v: &SampleValue) -> Option<u64> {
    match *v {
        SampleValue::U32(v) => Some(u64::from(v)),
        SampleValue::U64(v) => Some(v),
        SampleValue::I64(v) => u64::try_from(v).ok(),
        SampleValue::F64(v) if v.is_finite() && v >= 0.0 => Some(v as u64),
        SampleValue::F64(_) => None,
    }
}

/// NVML links a GPU can have at most (NVML_NVLINK_MAX_LINKS).
const MAX_NVLINKS: u32 = 18;

/// GPUs read through NVML.
pub struct NvmlSource {
    /// `None` while initialisation keeps failing; retried on every sample.
    nvml: Option<Nvml>,
    init_error: Option<String>,
    /// Driver and CUDA versions, read once per initialisation.
    versions: Option<(Option<String>, Option<String>)>,
    /// Identity of each index when it was last readable, for lost devices: UUID, name,
    /// PCI bus id (so kernel-log XIDs still find a lost GPU).
    known: HashMap<u32, (String, String, Option<String>)>,
    xids: Option<XidListener>,
    mig: Option<MigLister>,
    kernel: Option<KernelLog>,
}

/// Lists MIG instances through NVML's own entry points, which nvml-wrapper 0.11 does not
/// wrap. It holds a second handle on the already-loaded library (the dynamic loader
/// returns the same one), so it shares the NVML state `Nvml::init` set up.
struct MigLister {
    lib: nvml_wrapper_sys::bindings::NvmlLib,
}

impl MigLister {
    fn open() -> Option<Self> {
        // SAFETY: loading the NVML library runs no initialisers beyond the driver's own,
        // which `Nvml::init` already ran in this process.
        match unsafe { nvml_wrapper_sys::bindings::NvmlLib::new("libnvidia-ml.so.1") } {
            Ok(lib) => Some(MigLister { lib }),
            Err(e) => {
                tracing::warn!(error = %e, "cannot resolve NVML's MIG entry points; MIG instances will not be listed");
                None
            }
        }
    }

    /// The MIG devices of `parent`, with their MIG index. An NVML error for one instance
    /// (an empty slot, a driver without MIG) leaves that instance out.
    fn instances<'n>(&self, nvml: &'n Nvml, parent: &Device<'n>) -> Vec<(u32, Device<'n>)> {
        use nvml_wrapper_sys::bindings::{nvmlDevice_t, nvmlReturn_enum_NVML_SUCCESS as OK};
        let (Ok(max_count), Ok(by_index)) = (
            &self.lib.nvmlDeviceGetMaxMigDeviceCount,
            &self.lib.nvmlDeviceGetMigDeviceHandleByIndex,
        ) else {
            return Vec::new();
        };
        // SAFETY: `parent` is a live handle of this initialised NVML; both out-pointers
        // point to locals valid for writes; a MIG handle NVML returns stays valid while
        // NVML is initialised, which `nvml` (borrowed for 'n) guarantees.
        unsafe {
            let handle = parent.handle();
            let mut max = 0;
            if max_count(handle, &mut max) != OK {
                return Vec::new();
            }
            (0..max)
                .filter_map(|i| {
                    let mut mig: nvmlDevice_t = std::ptr::null_mut();
                    (by_index(handle, i, &mut mig) == OK && !mig.is_null())
                        .then(|| (i, Device::new(mig, nvml)))
                })
                .collect()
        }
    }
}

/// A MIG instance as a device of its own. MIG devices answer few NVML queries
/// (utilization, power and clocks belong to the parent), so only identity and memory are
/// read, and any error leaves that reading absent.
fn read_mig(parent: &GpuSample, mig_index: u32, device: &Device) -> GpuSample {
    let memory = device.memory_info().ok();
    GpuSample {
        index: parent.index,
        mig_index: Some(mig_index),
        parent_uuid: Some(parent.uuid.clone()),
        uuid: device.uuid().unwrap_or_default(),
        name: device
            .name()
            .unwrap_or_else(|_| format!("{} MIG {mig_index}", parent.name)),
        memory_used_bytes: memory.as_ref().map(|m| m.used),
        memory_free_bytes: memory.as_ref().map(|m| m.free),
        memory_total_bytes: memory.as_ref().map(|m| m.total),
        driver_version: parent.driver_version.clone(),
        cuda_driver_version: parent.cuda_driver_version.clone(),
        ..GpuSample::default()
    }
}

/// The XID event thread and its channel.
struct XidListener {
    events: mpsc::Receiver<(String, u64)>,
    stop: Arc<AtomicBool>,
}

impl Drop for XidListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl XidListener {
    /// Starts the event thread; `None` (logged) when the thread cannot start.
    fn start() -> Option<Self> {
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        match std::thread::Builder::new()
            .name("corral-nvml-xid".into())
            .spawn(move || xid_thread(tx, flag))
        {
            Ok(_) => Some(XidListener { events: rx, stop }),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the NVML XID event thread; XIDs will not be seen");
                None
            }
        }
    }
}

/// Body of the XID event thread: its own NVML handle, one event set for every device that
/// supports critical XID events, and a blocking wait.
fn xid_thread(tx: mpsc::Sender<(String, u64)>, stop: Arc<AtomicBool>) {
    let nvml = match Nvml::init() {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "NVML XID event thread cannot initialise NVML; XIDs will not be seen");
            return;
        }
    };
    let count = nvml.device_count().unwrap_or(0);
    let mut registered: Vec<u32> = Vec::new();
    let mut set = match nvml.create_event_set() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot create an NVML event set; XIDs will not be seen");
            return;
        }
    };
    for index in 0..count {
        let Ok(device) = nvml.device_by_index(index) else {
            continue;
        };
        match device.supported_event_types() {
            Ok(types) if types.contains(EventTypes::CRITICAL_XID_ERROR) => {}
            Ok(_) | Err(NvmlError::NotSupported) => {
                tracing::info!(
                    gpu = index,
                    "GPU does not support XID events; XIDs on it will not be seen"
                );
                continue;
            }
            Err(e) => {
                tracing::warn!(gpu = index, error = %e, "cannot read the GPU's event types; XIDs on it will not be seen");
                continue;
            }
        }
        match device.register_events(EventTypes::CRITICAL_XID_ERROR, set) {
            Ok(s) => {
                set = s;
                registered.push(index);
            }
            Err(e) => {
                // nvml-wrapper frees the set when registration fails: rebuild it with the
                // devices registered so far.
                tracing::warn!(gpu = index, error = %e.error, "cannot register the GPU for XID events; XIDs on it will not be seen");
                let rebuilt = nvml.create_event_set().ok().and_then(|mut s| {
                    for &i in &registered {
                        let d = nvml.device_by_index(i).ok()?;
                        s = d.register_events(EventTypes::CRITICAL_XID_ERROR, s).ok()?;
                    }
                    Some(s)
                });
                match rebuilt {
                    Some(s) => set = s,
                    None => {
                        tracing::warn!("cannot rebuild the NVML event set; XIDs will not be seen");
                        return;
                    }
                }
            }
        }
    }
    if registered.is_empty() {
        tracing::info!("no GPU supports XID events; the XID thread stops");
        return;
    }
    tracing::info!(gpus = ?registered, "listening for XID events");
    while !stop.load(Ordering::Relaxed) {
        match set.wait(1000) {
            Ok(event) => {
                if !event.event_type.contains(EventTypes::CRITICAL_XID_ERROR) {
                    continue;
                }
                let uuid = event.device.uuid().unwrap_or_default();
                match event.event_data {
                    Some(XidError::Value(xid)) => {
                        if tx.send((uuid, xid)).is_err() {
                            return;
                        }
                    }
                    Some(XidError::Unknown) | None => {
                        tracing::warn!(%uuid, "XID event without an XID value");
                    }
                }
            }
            Err(NvmlError::Timeout) => {}
            Err(e) => {
                // GpuLost and friends: the sampler reports the device; do not spin.
                tracing::warn!(error = %e, "waiting for NVML events failed");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

impl NvmlSource {
    /// Initialises NVML. `Ok(None)` when the node has no NVIDIA driver; an error when the
    /// driver is there but NVML will not initialise.
    pub fn open() -> Result<Option<Self>, GpuError> {
        match Nvml::init() {
            Ok(nvml) => Ok(Some(Self::ready(nvml))),
            Err(e) if driver_absent(&e) => {
                tracing::info!(reason = %e, "no NVIDIA driver; this node reports zero GPUs");
                Ok(None)
            }
            Err(cause) => Err(GpuError::NvmlInit { cause }),
        }
    }

    fn ready(nvml: Nvml) -> Self {
        NvmlSource {
            nvml: Some(nvml),
            init_error: None,
            versions: None,
            known: HashMap::new(),
            xids: XidListener::start(),
            mig: MigLister::open(),
            kernel: None,
        }
    }

    /// Reads kernel-log XIDs through `kernel` as well.
    fn with_kernel_log(mut self, kernel: Option<KernelLog>) -> Self {
        self.kernel = kernel;
        self
    }

    fn failing(cause: NvmlError) -> Self {
        tracing::warn!(error = %cause, "NVML failed to initialise; will retry on every sample");
        NvmlSource {
            nvml: None,
            init_error: Some(cause.to_string()),
            versions: None,
            known: HashMap::new(),
            xids: None,
            mig: None,
            kernel: None,
        }
    }

    /// Initialises NVML if it is not yet (retrying a failed start-up).
    fn ensure_init(&mut self) -> Result<(), GpuError> {
        if self.nvml.is_none() {
            let nvml = Nvml::init().map_err(|cause| GpuError::NvmlInit { cause })?;
            tracing::info!(previous_error = ?self.init_error.take(), "NVML initialised");
            self.versions = None;
            self.xids = XidListener::start();
            self.nvml = Some(nvml);
        }
        Ok(())
    }
}

/// Reads everything about one device; see [`GpuSample`] for the fields.
fn read_device(
    index: u32,
    device: &Device,
    versions: &(Option<String>, Option<String>),
) -> Result<GpuSample, GpuError> {
    let opt = |call, r| optional(index, call, r);
    let memory = optional(index, "memory_info", device.memory_info())?;
    let utilization = optional(index, "utilization_rates", device.utilization_rates())?;
    let fields = optional(
        index,
        "field_values_for",
        device.field_values_for(&[
            FieldId(NVML_FI_DEV_MEMORY_TEMP),
            FieldId(NVML_FI_DEV_REMAPPED_COR),
            FieldId(NVML_FI_DEV_REMAPPED_UNC),
            FieldId(NVML_FI_DEV_REMAPPED_PENDING),
            FieldId(NVML_FI_DEV_REMAPPED_FAILURE),
        ]),
    )?
    .unwrap_or_default();
    // A field the device lacks comes back as an error inside its slot: absent.
    let field = |i: usize| -> Option<u64> {
        let sample = fields.get(i)?.as_ref().ok()?;
        sample.value.as_ref().ok().and_then(sample_u64)
    };
    let ecc = |error, counter| {
        optional(
            index,
            "total_ecc_errors",
            device.total_ecc_errors(error, counter),
        )
    };
    let mut nvlinks = Vec::new();
    for link in 0..MAX_NVLINKS {
        let l = device.link_wrapper_for(link);
        let active = match l.is_active() {
            Ok(a) => a,
            Err(NvmlError::InvalidArg) => break,
            Err(e) if unsupported(&e) => break,
            Err(cause) => {
                return Err(GpuError::NvmlDevice {
                    index,
                    call: "nvlink is_active",
                    cause,
                })
            }
        };
        let counter = |c| match l.error_counter(c) {
            Ok(v) => Ok(Some(v)),
            Err(e) if unsupported(&e) || matches!(e, NvmlError::InvalidArg) => Ok(None),
            Err(cause) => Err(GpuError::NvmlDevice {
                index,
                call: "nvlink error_counter",
                cause,
            }),
        };
        nvlinks.push(NvLinkSample {
            link,
            active,
            crc_flit_errors: counter(ErrorCounter::DlCrcFlit)?,
            crc_data_errors: counter(ErrorCounter::DlCrcData)?,
            replay_errors: counter(ErrorCounter::DlReplay)?,
            recovery_errors: counter(ErrorCounter::DlRecovery)?,
        });
    }
    let watts = |milli: Option<u32>| milli.map(|mw| f64::from(mw) / 1000.0);
    Ok(GpuSample {
        index,
        uuid: opt("uuid", device.uuid())?.unwrap_or_default(),
        name: opt("name", device.name())?.unwrap_or_default(),
        memory_used_bytes: memory.as_ref().map(|m| m.used),
        memory_total_bytes: memory.as_ref().map(|m| m.total),
        utilization_percent: utilization.as_ref().map(|u| u.gpu),
        temperature_celsius: optional(
            index,
            "temperature",
            device.temperature(TemperatureSensor::Gpu),
        )?,
        power_watts: watts(optional(index, "power_usage", device.power_usage())?),
        serial: opt("serial", device.serial())?,
        pci_bus_id: optional(index, "pci_info", device.pci_info())?.map(|p| p.bus_id),
        driver_version: versions.0.clone(),
        cuda_driver_version: versions.1.clone(),
        vbios_version: opt("vbios_version", device.vbios_version())?,
        persistence_mode: optional(
            index,
            "is_in_persistent_mode",
            device.is_in_persistent_mode(),
        )?,
        compute_mode: optional(index, "compute_mode", device.compute_mode())?
            .map(|m| compute_mode_name(m).to_string()),
        mig_enabled: optional(index, "mig_mode", device.mig_mode())?.map(|m| m.current == 1),
        parent_uuid: None,
        mig_index: None,
        memory_free_bytes: memory.as_ref().map(|m| m.free),
        memory_utilization_percent: utilization.as_ref().map(|u| u.memory),
        encoder_utilization_percent: optional(
            index,
            "encoder_utilization",
            device.encoder_utilization(),
        )?
        .map(|u| u.utilization),
        decoder_utilization_percent: optional(
            index,
            "decoder_utilization",
            device.decoder_utilization(),
        )?
        .map(|u| u.utilization),
        memory_temperature_celsius: field(0).and_then(|t| u32::try_from(t).ok()),
        fan_speed_percent: optional(index, "fan_speed", device.fan_speed(0))?,
        power_limit_watts: watts(optional(
            index,
            "enforced_power_limit",
            device.enforced_power_limit(),
        )?),
        energy_joules: optional(
            index,
            "total_energy_consumption",
            device.total_energy_consumption(),
        )?
        .map(|mj| mj as f64 / 1000.0),
        sm_clock_mhz: optional(index, "clock_info", device.clock_info(Clock::SM))?,
        memory_clock_mhz: optional(index, "clock_info", device.clock_info(Clock::Memory))?,
        throttle_reasons: optional(
            index,
            "current_throttle_reasons",
            device.current_throttle_reasons(),
        )?
        .map(throttle_names),
        pcie_link_gen: optional(
            index,
            "current_pcie_link_gen",
            device.current_pcie_link_gen(),
        )?,
        pcie_link_gen_max: optional(index, "max_pcie_link_gen", device.max_pcie_link_gen())?,
        pcie_link_width: optional(
            index,
            "current_pcie_link_width",
            device.current_pcie_link_width(),
        )?,
        pcie_link_width_max: optional(index, "max_pcie_link_width", device.max_pcie_link_width())?,
        pcie_replay_count: optional(index, "pcie_replay_counter", device.pcie_replay_counter())?
            .map(u64::from),
        ecc_enabled: optional(index, "is_ecc_enabled", device.is_ecc_enabled())?
            .map(|e| e.currently_enabled),
        ecc_corrected_volatile: ecc(MemoryError::Corrected, EccCounter::Volatile)?,
        ecc_uncorrected_volatile: ecc(MemoryError::Uncorrected, EccCounter::Volatile)?,
        ecc_corrected_aggregate: ecc(MemoryError::Corrected, EccCounter::Aggregate)?,
        ecc_uncorrected_aggregate: ecc(MemoryError::Uncorrected, EccCounter::Aggregate)?,
        retired_pages_single_bit: optional(
            index,
            "retired_pages",
            device.retired_pages(RetirementCause::MultipleSingleBitEccErrors),
        )?
        .map(|p| p.len() as u64),
        retired_pages_double_bit: optional(
            index,
            "retired_pages",
            device.retired_pages(RetirementCause::DoubleBitEccError),
        )?
        .map(|p| p.len() as u64),
        retired_pages_pending: optional(
            index,
            "are_pages_pending_retired",
            device.are_pages_pending_retired(),
        )?,
        remapped_rows_correctable: field(1),
        remapped_rows_uncorrectable: field(2),
        remapped_rows_pending: field(3).map(|v| v != 0),
        remapped_rows_failure: field(4).map(|v| v != 0),
        nvlinks,
        xids: Vec::new(),
        lost: None,
        health: Default::default(),
        recovery_action: recovery_action(index, device),
    })
}

/// NVML's GPU recovery action (`NVML_FI_DEV_GET_GPU_RECOVERY_ACTION`, field 230 in
/// nvml.h since R565), read through the field-value API on its own so that a driver
/// that does not know the field cannot fail the other readings. Any error, and a value
/// this build does not know, is "the driver cannot say".
fn recovery_action(index: u32, device: &Device) -> Option<GpuAction> {
    let fields = device
        .field_values_for(&[FieldId(NVML_FI_DEV_GET_GPU_RECOVERY_ACTION)])
        .ok()?;
    let sample = fields.into_iter().next()?.ok()?;
    let value = sample.value.ok().as_ref().and_then(sample_u64)?;
    let action = GpuAction::from_nvml(value);
    if action.is_none() {
        tracing::debug!(gpu = index, value, "unknown NVML recovery action value");
    }
    action
}

impl GpuSource for NvmlSource {
    fn name(&self) -> &'static str {
        "nvml"
    }

    fn kernel_log(&mut self) -> Option<KernelBatch> {
        self.kernel.as_mut().map(KernelLog::drain)
    }

    fn sample(&mut self) -> Result<Vec<GpuSample>, GpuError> {
        self.ensure_init()?;
        // XID events first, devices after: the recovery action read below is then never
        // older than an XID 154 this sample carries (the re-read the catalog asks for).
        let events: Vec<(String, u64)> = self
            .xids
            .as_ref()
            .map(|l| l.events.try_iter().collect())
            .unwrap_or_default();
        let Some(nvml) = self.nvml.as_ref() else {
            return Err(GpuError::NvmlInit {
                cause: NvmlError::Uninitialized,
            });
        };
        let versions = self.versions.clone().unwrap_or_else(|| {
            (
                nvml.sys_driver_version().ok(),
                nvml.sys_cuda_driver_version().ok().map(|v| {
                    format!(
                        "{}.{}",
                        nvml_wrapper::cuda_driver_version_major(v),
                        nvml_wrapper::cuda_driver_version_minor(v)
                    )
                }),
            )
        });
        let count = nvml.device_count().map_err(|cause| GpuError::Nvml {
            call: "device_count",
            cause,
        })?;
        let mut gpus = Vec::with_capacity(count as usize);
        for index in 0..count {
            let read = match nvml.device_by_index(index) {
                Ok(device) => read_device(index, &device, &versions).map(|g| {
                    let migs: Vec<GpuSample> = match (&self.mig, g.mig_enabled) {
                        (Some(lister), Some(true)) => lister
                            .instances(nvml, &device)
                            .iter()
                            .map(|(i, d)| read_mig(&g, *i, d))
                            .collect(),
                        _ => Vec::new(),
                    };
                    (g, migs)
                }),
                Err(cause) => Err(GpuError::NvmlDevice {
                    index,
                    call: "device_by_index",
                    cause,
                }),
            };
            match read {
                Ok((g, migs)) => {
                    gpus.push(g);
                    gpus.extend(migs);
                }
                Err(GpuError::NvmlDevice {
                    cause: NvmlError::GpuLost,
                    call,
                    ..
                }) => {
                    let (uuid, name, pci_bus_id) =
                        self.known.get(&index).cloned().unwrap_or_default();
                    gpus.push(GpuSample {
                        index,
                        uuid,
                        name,
                        pci_bus_id,
                        lost: Some(format!("{} (NVML {call})", NvmlError::GpuLost)),
                        ..GpuSample::default()
                    });
                }
                Err(e) => return Err(e),
            }
        }
        self.versions = Some(versions);
        for g in &gpus {
            // MIG instances share their parent's index; the parent's identity is kept.
            if g.lost.is_none() && g.mig_index.is_none() {
                self.known.insert(
                    g.index,
                    (g.uuid.clone(), g.name.clone(), g.pci_bus_id.clone()),
                );
            }
        }
        for (uuid, xid) in events {
            match gpus.iter_mut().find(|g| g.uuid == uuid) {
                Some(g) => {
                    if xid == 154 {
                        tracing::info!(%uuid, recovery_action = ?g.recovery_action, "XID 154: the GPU's recovery action changed");
                    }
                    g.xids.push(xid);
                }
                None => tracing::warn!(%uuid, xid, "XID for a GPU not in this sample"),
            }
        }
        Ok(gpus)
    }
}

/// A node without GPUs.
pub struct NoGpus;

impl GpuSource for NoGpus {
    fn name(&self) -> &'static str {
        "none"
    }

    fn sample(&mut self) -> Result<Vec<GpuSample>, GpuError> {
        Ok(Vec::new())
    }
}

/// One step of a fake script: `{"gpus": [...]}` or `{"error": "message"}`, either with
/// `"kmsg": ["line", ...]`: kernel-log lines (any format [`kmsg::parse_line`] reads) that
/// arrive with the step, as if the kernel had logged them just then.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(try_from = "RawStep", into = "RawStep")]
pub struct FakeStep {
    /// The GPUs this step lists, or the error the sample fails with.
    pub gpus: Result<Vec<GpuSample>, String>,
    pub kmsg: Vec<String>,
}

impl FakeStep {
    pub fn gpus(gpus: Vec<GpuSample>) -> Self {
        FakeStep {
            gpus: Ok(gpus),
            kmsg: Vec::new(),
        }
    }

    pub fn error(message: impl Into<String>) -> Self {
        FakeStep {
            gpus: Err(message.into()),
            kmsg: Vec::new(),
        }
    }

    /// The same step, with kernel-log lines arriving with it.
    pub fn with_kmsg(mut self, lines: Vec<String>) -> Self {
        self.kmsg = lines;
        self
    }
}

/// A step as JSON writes it.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gpus: Option<Vec<GpuSample>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    kmsg: Vec<String>,
}

impl TryFrom<RawStep> for FakeStep {
    type Error = String;

    fn try_from(raw: RawStep) -> Result<Self, String> {
        let gpus = match (raw.gpus, raw.error) {
            (Some(g), None) => Ok(g),
            (None, Some(e)) => Err(e),
            _ => return Err("a step has either \"gpus\" or \"error\"".into()),
        };
        Ok(FakeStep {
            gpus,
            kmsg: raw.kmsg,
        })
    }
}

impl From<FakeStep> for RawStep {
    fn from(step: FakeStep) -> Self {
        let (gpus, error) = match step.gpus {
            Ok(g) => (Some(g), None),
            Err(e) => (None, Some(e)),
        };
        RawStep {
            gpus,
            error,
            kmsg: step.kmsg,
        }
    }
}

/// A fake GPU script: `{"steps": [{"gpus": [...]}, {"error": "..."}], "repeat_last": true}`.
/// With `repeat_last` (the default) the source stays on the last step once the script is
/// exhausted (its `kmsg` lines arrive once, not on every repeat); without it the script
/// starts over. A script without steps means no GPUs.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FakeScript {
    pub steps: Vec<FakeStep>,
    #[serde(default = "yes")]
    pub repeat_last: bool,
}

fn yes() -> bool {
    true
}

/// Replays a [`FakeScript`], one step per sample; reads a kernel log as well when the
/// config names one (`gpu.kernel_log`).
#[derive(Debug)]
pub struct FakeGpuSource {
    script: FakeScript,
    next: usize,
    /// The step whose `kmsg` lines were last handed out (they arrive once).
    kmsg_from: Option<usize>,
    kernel: Option<KernelLog>,
    skipped: u64,
}

impl FakeGpuSource {
    pub fn new(script: FakeScript) -> Self {
        FakeGpuSource {
            script,
            next: 0,
            kmsg_from: None,
            kernel: None,
            skipped: 0,
        }
    }

    /// Reads a JSON script from `path`.
    pub fn load(path: &Path) -> Result<Self, GpuError> {
        let text = fs::read_to_string(path).map_err(|cause| GpuError::FakeScriptRead {
            path: path.to_path_buf(),
            cause,
        })?;
        let script = serde_json::from_str(&text).map_err(|cause| GpuError::FakeScriptInvalid {
            path: path.to_path_buf(),
            cause,
        })?;
        Ok(Self::new(script))
    }

    /// Writes this source's script as JSON, for an agent started with
    /// `gpu.fake_script` pointing at `path`.
    pub fn write_script(&self, path: &Path) -> Result<(), GpuError> {
        serde_json::to_vec_pretty(&self.script)
            .map_err(std::io::Error::other)
            .and_then(|json| fs::write(path, json))
            .map_err(|cause| GpuError::FakeScriptWrite {
                path: path.to_path_buf(),
                cause,
            })
    }

    /// `n` healthy, plausible GPUs (80 GB cards, a quarter used, 40 °C) on every sample,
    /// for benchmarks and load tests.
    pub fn uniform(n: u32) -> Self {
        let gpus = (0..n).map(GpuSample::plausible).collect();
        Self::new(FakeScript {
            steps: vec![FakeStep::gpus(gpus)],
            repeat_last: true,
        })
    }

    /// The scripted lines of the step the next sample replays, parsed (once per step).
    fn scripted_kmsg(&mut self) -> Vec<kmsg::KernelRecord> {
        if self.kmsg_from == Some(self.next) {
            return Vec::new();
        }
        let Some(step) = self.script.steps.get(self.next) else {
            return Vec::new();
        };
        self.kmsg_from = Some(self.next);
        let mut out = Vec::new();
        for line in &step.kmsg {
            match kmsg::parse_line(line) {
                Ok(Some((seq, event))) => out.push(kmsg::KernelRecord {
                    seq,
                    event,
                    backlog: false,
                }),
                Ok(None) => {}
                Err(e) => {
                    self.skipped += 1;
                    tracing::warn!(%line, error = %e, "skipping a scripted kernel-log line that names an XID but cannot be read");
                }
            }
        }
        out
    }
}

impl GpuSource for FakeGpuSource {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn kernel_log(&mut self) -> Option<KernelBatch> {
        let scripted = self.scripted_kmsg();
        let scripts_kmsg = self.script.steps.iter().any(|s| !s.kmsg.is_empty());
        let mut batch = match &mut self.kernel {
            Some(k) => k.drain(),
            None if scripts_kmsg => KernelBatch {
                records: Vec::new(),
                status: kmsg::KernelLogStatus {
                    path: "fake script".into(),
                    reading: true,
                    ..Default::default()
                },
            },
            None => return None,
        };
        batch.records.extend(scripted);
        batch.status.skipped_lines += self.skipped;
        Some(batch)
    }

    fn sample(&mut self) -> Result<Vec<GpuSample>, GpuError> {
        let steps = &self.script.steps;
        let Some(step) = steps.get(self.next) else {
            return Ok(Vec::new());
        };
        self.next = match self.next + 1 {
            n if n < steps.len() => n,
            _ if self.script.repeat_last => self.next,
            _ => {
                // Starting over: the next round's lines arrive again.
                self.kmsg_from = None;
                0
            }
        };
        match &step.gpus {
            Ok(gpus) => Ok(gpus.clone()),
            Err(message) => Err(GpuError::Scripted(message.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script_file(json: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        fs::write(file.path(), json).expect("write script");
        file
    }

    fn outcome(r: Result<Vec<GpuSample>, GpuError>) -> Result<Vec<u32>, String> {
        r.map(|gpus| gpus.iter().map(|g| g.index).collect())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn fake_source_steps_through_script_then_repeats_last() {
        let file = script_file(
            r#"{"steps": [
                {"gpus": [{"index": 0, "uuid": "GPU-a", "name": "A"}]},
                {"error": "GPU 0: device fell off the bus"},
                {"gpus": [{"index": 0, "uuid": "GPU-a", "name": "A"},
                          {"index": 1, "uuid": "GPU-b", "name": "B"}]}
            ], "repeat_last": true}"#,
        );
        let cfg = GpuConfig {
            backend: GpuBackend::Fake,
            fake_script: Some(file.path().to_path_buf()),
            ..GpuConfig::default()
        };
        let mut source = open(&cfg).expect("fake source opens");
        assert_eq!(source.name(), "fake");
        let seen: Vec<_> = (0..5).map(|_| outcome(source.sample())).collect();
        assert_eq!(
            seen,
            [
                Ok(vec![0]),
                Err("GPU 0: device fell off the bus".to_string()),
                Ok(vec![0, 1]),
                Ok(vec![0, 1]),
                Ok(vec![0, 1]),
            ]
        );
    }

    #[test]
    fn written_script_replays_the_same_gpus() {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        let mut uniform = FakeGpuSource::uniform(3);
        uniform.write_script(file.path()).expect("written");
        let mut loaded = FakeGpuSource::load(file.path()).expect("loaded");
        assert_eq!(
            loaded.sample().expect("gpus"),
            uniform.sample().expect("gpus")
        );
    }

    #[test]
    fn fake_source_without_repeat_last_starts_over() {
        let mut source = FakeGpuSource::new(FakeScript {
            steps: vec![FakeStep::gpus(vec![]), FakeStep::error("x")],
            repeat_last: false,
        });
        let seen: Vec<_> = (0..4).map(|_| source.sample().is_ok()).collect();
        assert_eq!(seen, [true, false, true, false]);
    }

    #[test]
    fn empty_fake_script_means_no_gpus() {
        let mut source = FakeGpuSource::new(FakeScript {
            steps: vec![],
            repeat_last: true,
        });
        assert_eq!(source.sample().expect("no error"), vec![]);
    }

    #[test]
    fn unsupported_gpu_fields_are_absent_not_zero() {
        for e in [
            NvmlError::NotSupported,
            NvmlError::NoData,
            NvmlError::FunctionNotFound,
        ] {
            assert_eq!(optional::<u32>(0, "temperature", Err(e)).ok(), Some(None));
        }
        assert_eq!(optional(0, "temperature", Ok(0u32)).ok(), Some(Some(0)));
        let lost = optional::<u32>(3, "temperature", Err(NvmlError::GpuLost)).unwrap_err();
        assert!(
            lost.to_string()
                .starts_with("GPU 3: NVML temperature failed: device fell off the bus"),
            "{lost}"
        );

        // A scripted device without readings keeps them absent end to end.
        let file =
            script_file(r#"{"steps": [{"gpus": [{"index": 0, "uuid": "GPU-a", "name": "A"}]}]}"#);
        let gpus = FakeGpuSource::load(file.path())
            .expect("valid script")
            .sample()
            .expect("gpus");
        assert_eq!(gpus[0].temperature_celsius, None);
        assert_eq!(gpus[0].power_watts, None);
        assert_eq!(gpus[0].memory_total_bytes, None);
    }

    #[test]
    fn node_without_nvml_reports_zero_gpus_not_an_error() {
        let mut source = open(&GpuConfig {
            backend: GpuBackend::None,
            ..GpuConfig::default()
        })
        .expect("none backend opens");
        assert_eq!(source.name(), "none");
        assert_eq!(source.sample().expect("no error"), vec![]);
        // The classification `auto` relies on: a missing library is absence, not failure.
        assert!(driver_absent(&NvmlError::LibraryNotFound));
        assert!(driver_absent(&NvmlError::DriverNotLoaded));
        assert!(!driver_absent(&NvmlError::NoPermission));
    }

    #[test]
    fn auto_backend_opens_on_any_node() {
        // Without a driver this is NoGpus; with one it reads the real GPUs.
        let mut source = open(&GpuConfig::default()).expect("auto never fails to open");
        match source.name() {
            "none" => assert_eq!(source.sample().expect("no error"), vec![]),
            "nvml" => {
                for gpu in source.sample().expect("GPUs readable") {
                    assert!(!gpu.uuid.is_empty());
                    assert!(gpu.memory_total_bytes.unwrap_or(0) > 0, "{gpu:?}");
                }
            }
            other => panic!("unexpected source {other}"),
        }
    }

    #[test]
    fn uniform_fake_builds_n_distinct_gpus() {
        let gpus = FakeGpuSource::uniform(8).sample().expect("gpus");
        assert_eq!(gpus.len(), 8);
        let uuids: std::collections::BTreeSet<_> = gpus.iter().map(|g| &g.uuid).collect();
        assert_eq!(uuids.len(), 8);
    }

    #[test]
    fn fake_backend_without_script_is_rejected_with_key() {
        let cfg = GpuConfig {
            backend: GpuBackend::Fake,
            ..GpuConfig::default()
        };
        assert_eq!(cfg.validate().unwrap_err().key, "gpu.fake_script");
        assert!(matches!(open(&cfg), Err(GpuError::FakeScriptMissing)));
        let stray = GpuConfig {
            backend: GpuBackend::Auto,
            fake_script: Some("x.json".into()),
            ..GpuConfig::default()
        };
        assert_eq!(stray.validate().unwrap_err().key, "gpu.fake_script");
    }

    #[test]
    fn invalid_fake_script_names_the_file() {
        let file = script_file(r#"{"steps": [{"gpu": []}]}"#);
        let e = FakeGpuSource::load(file.path()).unwrap_err();
        assert!(matches!(e, GpuError::FakeScriptInvalid { .. }));
        assert!(
            e.to_string().contains(&file.path().display().to_string()),
            "{e}"
        );
    }

    #[test]
    fn gpu_config_parses_lowercase_backend() {
        let cfg: GpuConfig = toml::from_str("backend = \"nvml\"").expect("valid");
        assert_eq!(cfg.backend, GpuBackend::Nvml);
        assert_eq!(
            toml::from_str::<GpuConfig>("").expect("valid"),
            GpuConfig::default()
        );
        assert!(toml::from_str::<GpuConfig>("backend = \"cuda\"").is_err());
    }

    #[test]
    fn scripted_kernel_log_lines_arrive_once_with_their_step() {
        let file = script_file(
            r#"{"steps": [
                {"gpus": []},
                {"gpus": [], "kmsg": ["NVRM: Xid (PCI:0000:18:00): 79, GPU has fallen off the bus.",
                                     "NVRM: Xid (PCI:0000:18:00): seventy-nine"]},
                {"error": "NVML: GPU is lost", "kmsg": ["NVRM: Xid (PCI:0000:18:00): 154, changed"]}
            ], "repeat_last": true}"#,
        );
        let mut source = FakeGpuSource::load(file.path()).expect("valid script");
        let mut seen = vec![];
        for _ in 0..5 {
            let batch = source
                .kernel_log()
                .expect("the script has kernel-log lines");
            assert_eq!(batch.status.path, "fake script");
            seen.push((
                batch.records.len(),
                batch.status.skipped_lines,
                source.sample().is_ok(),
            ));
        }
        assert_eq!(
            seen,
            [
                (0, 0, true),
                (1, 1, true),
                (1, 1, false),
                (0, 1, false),
                (0, 1, false)
            ],
            "lines once per step, the bad one skipped and counted"
        );
    }

    #[test]
    fn a_script_without_kernel_log_lines_reads_no_kernel_log() {
        assert!(FakeGpuSource::uniform(1).kernel_log().is_none());
    }

    #[test]
    fn steps_with_kernel_log_lines_round_trip_and_need_gpus_or_an_error() {
        let step = FakeStep::gpus(vec![]).with_kmsg(vec!["a".into()]);
        let json = serde_json::to_string(&step).unwrap();
        assert_eq!(json, r#"{"gpus":[],"kmsg":["a"]}"#);
        assert_eq!(serde_json::from_str::<FakeStep>(&json).unwrap(), step);
        assert_eq!(
            serde_json::to_string(&FakeStep::error("x")).unwrap(),
            r#"{"error":"x"}"#
        );
        for bad in [r#"{"kmsg": ["a"]}"#, r#"{"gpus": [], "error": "x"}"#] {
            let e = serde_json::from_str::<FakeStep>(bad).unwrap_err();
            assert!(e.to_string().contains("either"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_kernel_log_defaults_to_dev_kmsg_on_nvml_nodes_only() {
        let with = |backend, kernel_log: Option<&str>| GpuConfig {
            backend,
            kernel_log: kernel_log.map(PathBuf::from),
            ..GpuConfig::default()
        };
        let kmsg = Some(PathBuf::from("/dev/kmsg"));
        assert_eq!(with(GpuBackend::Auto, None).kernel_log_path(), kmsg);
        assert_eq!(with(GpuBackend::Nvml, None).kernel_log_path(), kmsg);
        assert_eq!(with(GpuBackend::Fake, None).kernel_log_path(), None);
        assert_eq!(
            with(GpuBackend::Nvml, Some("")).kernel_log_path(),
            None,
            "\"\" turns it off"
        );
        assert_eq!(
            with(GpuBackend::Fake, Some("/tmp/k")).kernel_log_path(),
            Some(PathBuf::from("/tmp/k"))
        );
        assert_eq!(
            with(GpuBackend::None, Some("/tmp/k"))
                .validate()
                .unwrap_err()
                .key,
            "gpu.kernel_log"
        );
        let cfg: GpuConfig = toml::from_str("kernel_log = \"/var/log/kmsg.fifo\"").expect("valid");
        assert_eq!(cfg.kernel_log, Some(PathBuf::from("/var/log/kmsg.fifo")));
        assert!(
            toml::from_str::<GpuConfig>("state_dir = \"/x\"").is_err(),
            "state_dir is an [agent] key, not a [gpu] one"
        );
    }
}
