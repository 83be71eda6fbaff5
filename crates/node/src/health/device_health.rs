//! Per-device GPU health: `ok`, `warn` or `fail`, with reasons an operator can act on.
//!
//! [`DeviceTracker::observe`] judges every sample of every GPU and writes the verdict into
//! [`GpuSample::health`]; [`super::verdict::evaluate`] then folds device verdicts into
//! the node's health (one node reason per device reason, check `gpu_<code>:<index>`).
//!
//! Invariants and trade-offs:
//! - Judging is stateful, unlike the host thresholds: an XID is an event, not a level, and
//!   "a counter that grows" needs the previous value. The state is keyed by UUID, so a
//!   re-enumeration that shuffles indices does not move a verdict to another GPU.
//! - Time is an argument ([`Instant`]), never read inside, so tests drive quiet periods
//!   without sleeping.
//! - Three kinds of condition, three ways to recover:
//!   - *levels* (temperature, PCIe width, active thermal or hardware slowdown, pending
//!     row remaps or page retirements, uncorrectable volatile ECC) hold exactly while the
//!     reading says so; the reading itself clears on a GPU reset where that is needed;
//!   - *growth* of a cumulative counter (corrected ECC, PCIe replays, NVLink errors)
//!     warns from the sample it grows in until `quiet_period` has passed without growth;
//!   - *XIDs* follow the [`XidTable`]: `critical` ones fail the device until the GPU is
//!     reset, `warn` ones warn until `quiet_period` passes without a repeat, `ignore`
//!     ones (application faults that say nothing about the hardware) only count.
//! - A GPU reset cannot be observed directly through NVML. It is inferred when a device
//!   that was lost or had disappeared is readable again, or when a volatile ECC counter
//!   goes *down* (volatile counters restart at zero on a reset or driver reload). Either
//!   clears the reset-only reasons. The state lives in the agent's memory: restarting
//!   the agent forgets critical XIDs (the counters-based reasons come back by themselves
//!   on the next sample); `docs/gpu-metrics.md` says so.
//! - A GPU that was seen and is no longer enumerated stays in the report as a `fail`ed
//!   device with `lost` set ("disappeared") until it comes back; otherwise a GPU falling
//!   off the bus would look like a node that simply has one GPU fewer.
//! - An unsupported reading (`None`) never produces a reason.
//! - Reasons are ordered (worst first, then code, then message) so the same condition
//!   always renders the same way.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::verdict::ConfigIssue;
use corral_proto::model::{DeviceHealth, DeviceReason, DeviceStatus, GpuSample};

/// How an XID is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XidClass {
    /// A hardware or driver fault: the device fails until it is reset.
    Critical,
    /// Worth a look: the device warns until `quiet_period` passes without a repeat.
    Warn,
    /// An application error that says nothing about the hardware: counted, not judged.
    Ignore,
}

/// XIDs counted as application errors by default (NVIDIA's XID catalogue: 13 graphics
/// engine exception, 31 GPU memory page fault, 43 GPU stopped processing, 45 preemptive
/// cleanup, 68 video processor exception).
pub const DEFAULT_IGNORED_XIDS: &[u64] = &[13, 31, 43, 45, 68];

/// XIDs that fail a device until it is reset, by default.
pub const DEFAULT_CRITICAL_XIDS: &[u64] = &[48, 62, 64, 74, 79, 95, 119, 120, 140];

/// XIDs that warn by default. Any XID in no list also warns ("unclassified").
pub const DEFAULT_WARN_XIDS: &[u64] = &[61, 63, 92, 94];

/// What an XID means, for messages.
pub fn xid_description(xid: u64) -> &'static str {
    match xid {
        13 => "graphics engine exception (usually an application fault)",
        31 => "GPU memory page fault (usually an application fault)",
        43 => "GPU stopped processing (usually an application fault)",
        45 => "preemptive cleanup after earlier errors",
        48 => "double-bit ECC error",
        61 => "internal micro-controller breakpoint/warning",
        62 => "internal micro-controller halt",
        63 => "ECC page retirement or row remapping recording event",
        64 => "ECC page retirement or row remapper recording failure",
        68 => "video processor exception (usually an application fault)",
        74 => "NVLink error",
        79 => "GPU has fallen off the bus",
        92 => "high single-bit ECC error rate",
        94 => "contained ECC error",
        95 => "uncontained ECC error",
        119 => "GSP RPC timeout",
        120 => "GSP error",
        140 => "unrecovered ECC error",
        _ => "unclassified XID",
    }
}

/// The `[gpu.xid]` table: XIDs whose class the operator changes. A listed XID takes the
/// class of its list; every other XID keeps its default class.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct XidTable {
    pub critical: Vec<u64>,
    pub warn: Vec<u64>,
    pub ignore: Vec<u64>,
}

impl XidTable {
    /// The class of `xid` under this table.
    pub fn classify(&self, xid: u64) -> XidClass {
        if self.critical.contains(&xid) {
            XidClass::Critical
        } else if self.warn.contains(&xid) {
            XidClass::Warn
        } else if self.ignore.contains(&xid) {
            XidClass::Ignore
        } else if DEFAULT_CRITICAL_XIDS.contains(&xid) {
            XidClass::Critical
        } else if DEFAULT_IGNORED_XIDS.contains(&xid) {
            XidClass::Ignore
        } else {
            XidClass::Warn
        }
    }

    /// An XID listed twice would have an ambiguous class.
    pub fn validate(&self) -> Result<(), ConfigIssue> {
        let mut seen = BTreeMap::new();
        for (list, xids) in [
            ("critical", &self.critical),
            ("warn", &self.warn),
            ("ignore", &self.ignore),
        ] {
            for xid in xids {
                if let Some(first) = seen.insert(*xid, list) {
                    return Err(ConfigIssue::new(
                        format!("gpu.xid.{list}"),
                        format!("XID {xid} is also listed in gpu.xid.{first}; list it once"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Everything the tracker judges against.
#[derive(Debug, Clone, PartialEq)]
pub struct DevicePolicy {
    pub xid: XidTable,
    /// How long a growing counter or a `warn` XID keeps warning after it last moved.
    pub quiet_period: Duration,
    /// Warn when the PCIe link runs narrower than the GPU supports.
    pub check_pcie_width: bool,
    pub temperature_warn_celsius: f64,
    pub temperature_fail_celsius: f64,
}

impl Default for DevicePolicy {
    fn default() -> Self {
        DevicePolicy {
            xid: XidTable::default(),
            quiet_period: Duration::from_secs(300),
            check_pcie_width: true,
            temperature_warn_celsius: 85.0,
            temperature_fail_celsius: 90.0,
        }
    }
}

/// Counters whose growth warns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Counter {
    EccCorrected,
    PcieReplays,
    NvLinkErrors,
}

impl Counter {
    fn value(self, g: &GpuSample) -> Option<u64> {
        match self {
            Counter::EccCorrected => g.ecc_corrected_volatile,
            Counter::PcieReplays => g.pcie_replay_count,
            Counter::NvLinkErrors => {
                let mut sum = None;
                for l in &g.nvlinks {
                    for v in [
                        l.crc_flit_errors,
                        l.crc_data_errors,
                        l.replay_errors,
                        l.recovery_errors,
                    ]
                    .into_iter()
                    .flatten()
                    {
                        sum = Some(sum.unwrap_or(0u64).saturating_add(v));
                    }
                }
                sum
            }
        }
    }

    fn code(self) -> &'static str {
        match self {
            Counter::EccCorrected => "ecc_corrected_growing",
            Counter::PcieReplays => "pcie_replays_growing",
            Counter::NvLinkErrors => "nvlink_errors_growing",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Counter::EccCorrected => "corrected ECC errors",
            Counter::PcieReplays => "PCIe replays",
            Counter::NvLinkErrors => "NVLink errors",
        }
    }
}

const COUNTERS: [Counter; 3] = [
    Counter::EccCorrected,
    Counter::PcieReplays,
    Counter::NvLinkErrors,
];

/// What the tracker remembers about one device (by UUID).
#[derive(Debug, Clone)]
struct DeviceState {
    /// The last readable sample, to stand in for the device if it disappears.
    identity: GpuSample,
    /// Lost or disappeared at the previous sample.
    gone: bool,
    /// Critical XIDs since the last reset: XID → first seen.
    critical_xids: BTreeSet<u64>,
    /// Warn XIDs: XID → last seen.
    warn_xids: BTreeMap<u64, Instant>,
    /// Last counter values and when each last grew.
    counters: BTreeMap<Counter, u64>,
    grew_at: BTreeMap<Counter, Instant>,
    ecc_uncorrected_volatile: Option<u64>,
    xid_last: Option<u64>,
    xid_total: u64,
    status: DeviceStatus,
}

impl DeviceState {
    fn new(g: &GpuSample) -> Self {
        DeviceState {
            identity: identity_of(g),
            gone: false,
            critical_xids: BTreeSet::new(),
            warn_xids: BTreeMap::new(),
            counters: BTreeMap::new(),
            grew_at: BTreeMap::new(),
            ecc_uncorrected_volatile: None,
            xid_last: None,
            xid_total: 0,
            status: DeviceStatus::Ok,
        }
    }

    /// A GPU reset was inferred: forget what only a reset clears and re-baseline counters.
    fn reset(&mut self) {
        self.critical_xids.clear();
        self.counters.clear();
        self.grew_at.clear();
        self.ecc_uncorrected_volatile = None;
    }
}

/// The parts of a sample that name a device.
fn identity_of(g: &GpuSample) -> GpuSample {
    GpuSample {
        index: g.index,
        uuid: g.uuid.clone(),
        name: g.name.clone(),
        serial: g.serial.clone(),
        pci_bus_id: g.pci_bus_id.clone(),
        parent_uuid: g.parent_uuid.clone(),
        mig_index: g.mig_index,
        ..GpuSample::default()
    }
}

fn reason(code: &str, status: DeviceStatus, message: String, needs_reset: bool) -> DeviceReason {
    DeviceReason {
        code: code.into(),
        status,
        message,
        needs_reset,
    }
}

fn quiet(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs().max(1))).to_string()
}

/// Judges devices sample after sample. One per agent; see the module doc.
#[derive(Debug)]
pub struct DeviceTracker {
    policy: DevicePolicy,
    devices: HashMap<String, DeviceState>,
}

impl DeviceTracker {
    pub fn new(policy: DevicePolicy) -> Self {
        DeviceTracker {
            policy,
            devices: HashMap::new(),
        }
    }

    pub fn policy(&self) -> &DevicePolicy {
        &self.policy
    }

    /// Judges one sample of every device taken at `now`: fills each device's `health`,
    /// and appends a `fail`ed stand-in for every known device that is no longer listed.
    /// The result is sorted by index (MIG instances after their parent).
    pub fn observe(&mut self, gpus: &mut Vec<GpuSample>, now: Instant) {
        let listed: BTreeSet<String> = gpus.iter().map(|g| g.uuid.clone()).collect();
        for g in gpus.iter_mut() {
            let state = self
                .devices
                .entry(g.uuid.clone())
                .or_insert_with(|| DeviceState::new(g));
            g.health = judge(&self.policy, state, g, now);
        }
        for (uuid, state) in self.devices.iter_mut() {
            if listed.contains(uuid) {
                continue;
            }
            let mut standin = state.identity.clone();
            standin.lost = Some("no longer enumerated by the driver".into());
            standin.health = judge(&self.policy, state, &standin, now);
            gpus.push(standin);
        }
        gpus.sort_by(|a, b| {
            (a.index, a.mig_index.is_some(), a.mig_index, &a.uuid).cmp(&(
                b.index,
                b.mig_index.is_some(),
                b.mig_index,
                &b.uuid,
            ))
        });
    }
}

/// Updates `state` with `g` and returns the device's verdict.
fn judge(p: &DevicePolicy, state: &mut DeviceState, g: &GpuSample, now: Instant) -> DeviceHealth {
    let mut reasons = Vec::new();
    let name = if g.parent_uuid.is_some() {
        format!("MIG {}/{}", g.index, g.mig_index.unwrap_or_default())
    } else {
        format!("GPU {}", g.index)
    };

    if let Some(why) = &g.lost {
        if !state.gone {
            tracing::warn!(gpu = g.index, uuid = %g.uuid, reason = %why, "GPU unreadable");
        }
        state.gone = true;
        let (code, message) = if g.lost.as_deref() == Some("no longer enumerated by the driver") {
            (
                "disappeared",
                format!(
                    "disappeared: {name} is no longer enumerated by the driver; reset the GPU or reboot to clear"
                ),
            )
        } else {
            (
                "lost",
                format!("unreadable: {why}; reset the GPU or reboot to clear"),
            )
        };
        reasons.push(reason(code, DeviceStatus::Fail, message, true));
    } else {
        if state.gone {
            tracing::info!(gpu = g.index, uuid = %g.uuid, "GPU readable again; treating it as reset");
            state.reset();
            state.gone = false;
        }
        state.identity = identity_of(g);
        // Volatile ECC counters restart at zero on a reset or driver reload.
        let went_down = |prev: Option<u64>, now: Option<u64>| matches!((prev, now), (Some(a), Some(b)) if b < a);
        if went_down(
            state.counters.get(&Counter::EccCorrected).copied(),
            g.ecc_corrected_volatile,
        ) || went_down(state.ecc_uncorrected_volatile, g.ecc_uncorrected_volatile)
        {
            tracing::info!(gpu = g.index, uuid = %g.uuid, "volatile ECC counters went down; treating the GPU as reset");
            state.reset();
        }
        state.ecc_uncorrected_volatile = g.ecc_uncorrected_volatile;
        level_reasons(p, g, &mut reasons);
        for c in COUNTERS {
            let Some(v) = c.value(g) else { continue };
            if let Some(prev) = state.counters.insert(c, v) {
                if v > prev {
                    state.grew_at.insert(c, now);
                }
            }
        }
    }

    for &xid in &g.xids {
        state.xid_total += 1;
        state.xid_last = Some(xid);
        let class = p.xid.classify(xid);
        tracing::warn!(gpu = g.index, uuid = %g.uuid, xid, class = ?class, description = xid_description(xid), "XID error");
        match class {
            XidClass::Critical => {
                state.critical_xids.insert(xid);
            }
            XidClass::Warn => {
                state.warn_xids.insert(xid, now);
            }
            XidClass::Ignore => {}
        }
    }
    for &xid in &state.critical_xids {
        reasons.push(reason(
            "xid",
            DeviceStatus::Fail,
            format!(
                "XID {xid}: {}; reset the GPU to clear",
                xid_description(xid)
            ),
            true,
        ));
    }
    state
        .warn_xids
        .retain(|_, seen| now.saturating_duration_since(*seen) < p.quiet_period);
    for &xid in state.warn_xids.keys() {
        reasons.push(reason(
            "xid",
            DeviceStatus::Warn,
            format!(
                "XID {xid}: {}; clears after {} without a repeat",
                xid_description(xid),
                quiet(p.quiet_period)
            ),
            false,
        ));
    }
    state
        .grew_at
        .retain(|_, at| now.saturating_duration_since(*at) < p.quiet_period);
    for (&c, _) in state.grew_at.iter() {
        let total = state.counters.get(&c).copied().unwrap_or_default();
        reasons.push(reason(
            c.code(),
            DeviceStatus::Warn,
            format!(
                "{} growing (now {total}); clears after {} without growth",
                c.what(),
                quiet(p.quiet_period)
            ),
            false,
        ));
    }

    reasons.sort_by(|a, b| {
        b.status
            .cmp(&a.status)
            .then_with(|| a.code.cmp(&b.code))
            .then_with(|| a.message.cmp(&b.message))
    });
    let status = reasons
        .iter()
        .map(|r| r.status)
        .max()
        .unwrap_or(DeviceStatus::Ok);
    if status != state.status {
        let why: Vec<&str> = reasons.iter().map(|r| r.message.as_str()).collect();
        tracing::info!(gpu = g.index, uuid = %g.uuid, from = %state.status, to = %status, reasons = ?why, "GPU health changed");
        state.status = status;
    }
    DeviceHealth {
        status,
        reasons,
        xid_last: state.xid_last,
        xid_total: state.xid_total,
    }
}

/// Reasons that hold exactly while the reading says so.
fn level_reasons(p: &DevicePolicy, g: &GpuSample, out: &mut Vec<DeviceReason>) {
    if let Some(t) = g.temperature_celsius {
        let t = f64::from(t);
        let crossed = if t > p.temperature_fail_celsius {
            Some((DeviceStatus::Fail, p.temperature_fail_celsius))
        } else if t > p.temperature_warn_celsius {
            Some((DeviceStatus::Warn, p.temperature_warn_celsius))
        } else {
            None
        };
        if let Some((status, limit)) = crossed {
            out.push(reason(
                "temperature",
                status,
                format!("temperature {t:.0} °C > {limit:.0} °C"),
                false,
            ));
        }
    }
    if let Some(n) = g.ecc_uncorrected_volatile.filter(|&n| n > 0) {
        out.push(reason(
            "ecc_uncorrectable",
            DeviceStatus::Fail,
            format!("uncorrectable ECC errors: {n} (volatile); reset the GPU to clear"),
            true,
        ));
    }
    if g.remapped_rows_failure == Some(true) {
        out.push(reason(
            "row_remap_failure",
            DeviceStatus::Fail,
            "row remap failure: no spare rows left; the GPU needs service".into(),
            false,
        ));
    }
    if g.remapped_rows_pending == Some(true) {
        out.push(reason(
            "row_remap_pending",
            DeviceStatus::Warn,
            "row remap pending; reset the GPU to apply it".into(),
            true,
        ));
    }
    if g.retired_pages_pending == Some(true) {
        out.push(reason(
            "retired_pages_pending",
            DeviceStatus::Warn,
            "page retirement pending; reset the GPU to apply it".into(),
            true,
        ));
    }
    if p.check_pcie_width {
        if let (Some(now), Some(max)) = (g.pcie_link_width, g.pcie_link_width_max) {
            if now < max {
                out.push(reason(
                    "pcie_width",
                    DeviceStatus::Warn,
                    format!("PCIe link x{now}, expected x{max}"),
                    false,
                ));
            }
        }
    }
    if let Some(active) = &g.throttle_reasons {
        let has = |r: &str| active.iter().any(|a| a == r);
        if has("hw_thermal_slowdown") || has("sw_thermal_slowdown") {
            out.push(reason(
                "throttle_thermal",
                DeviceStatus::Warn,
                "thermal slowdown active".into(),
                false,
            ));
        }
        if has("hw_slowdown") || has("hw_power_brake_slowdown") {
            out.push(reason(
                "throttle_hw_slowdown",
                DeviceStatus::Warn,
                "hardware slowdown active (HW slowdown or power brake)".into(),
                false,
            ));
        }
    }
    if g.nvlinks.iter().any(|l| l.active) {
        let down: Vec<String> = g
            .nvlinks
            .iter()
            .filter(|l| !l.active)
            .map(|l| l.link.to_string())
            .collect();
        if !down.is_empty() {
            out.push(reason(
                "nvlink_down",
                DeviceStatus::Warn,
                format!("NVLink link(s) {} down", down.join(", ")),
                false,
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_proto::model::NvLinkSample;

    fn gpu(index: u32) -> GpuSample {
        GpuSample {
            index,
            uuid: format!("GPU-{index}"),
            name: "Test".into(),
            temperature_celsius: Some(40),
            ecc_corrected_volatile: Some(0),
            ecc_uncorrected_volatile: Some(0),
            pcie_link_width: Some(16),
            pcie_link_width_max: Some(16),
            ..GpuSample::default()
        }
    }

    fn policy() -> DevicePolicy {
        DevicePolicy {
            quiet_period: Duration::from_secs(60),
            ..DevicePolicy::default()
        }
    }

    fn messages(g: &GpuSample) -> Vec<(DeviceStatus, String)> {
        g.health
            .reasons
            .iter()
            .map(|r| (r.status, r.message.clone()))
            .collect()
    }

    fn step(t: &mut DeviceTracker, gpus: Vec<GpuSample>, at: Instant) -> Vec<GpuSample> {
        let mut gpus = gpus;
        t.observe(&mut gpus, at);
        gpus
    }

    #[test]
    fn default_xid_table_ignores_application_xids_and_fails_on_bus_loss() {
        let t = XidTable::default();
        for xid in [13, 31, 43, 45, 68] {
            assert_eq!(t.classify(xid), XidClass::Ignore, "XID {xid}");
        }
        assert_eq!(t.classify(79), XidClass::Critical);
        assert_eq!(t.classify(48), XidClass::Critical);
        assert_eq!(t.classify(94), XidClass::Warn);
        assert_eq!(t.classify(9999), XidClass::Warn);
    }

    #[test]
    fn operator_overrides_reclassify_xids() {
        let t = XidTable {
            critical: vec![13],
            ignore: vec![79],
            warn: vec![],
        };
        assert_eq!(t.classify(13), XidClass::Critical);
        assert_eq!(t.classify(79), XidClass::Ignore);
        assert_eq!(t.validate(), Ok(()));
        let twice = XidTable {
            critical: vec![13],
            ignore: vec![13],
            warn: vec![],
        };
        assert_eq!(twice.validate().unwrap_err().key, "gpu.xid.ignore");
    }

    #[test]
    fn critical_xid_fails_until_the_gpu_is_reset() {
        let mut t = DeviceTracker::new(policy());
        let t0 = Instant::now();
        let mut hit = gpu(0);
        hit.xids = vec![79];
        let g = step(&mut t, vec![hit], t0);
        assert_eq!(g[0].health.status, DeviceStatus::Fail);
        assert_eq!(
            messages(&g[0]),
            [(
                DeviceStatus::Fail,
                "XID 79: GPU has fallen off the bus; reset the GPU to clear".into()
            )]
        );
        assert!(g[0].health.reasons[0].needs_reset);
        assert_eq!(g[0].health.xid_last, Some(79));
        assert_eq!(g[0].health.xid_total, 1);
        // Hours later, no repeat: still failed.
        let g = step(&mut t, vec![gpu(0)], t0 + Duration::from_secs(7200));
        assert_eq!(g[0].health.status, DeviceStatus::Fail);
        // The GPU falls off, then comes back: that is a reset.
        let g = step(&mut t, vec![], t0 + Duration::from_secs(7201));
        assert_eq!(g[0].health.reasons[0].code, "disappeared");
        let g = step(&mut t, vec![gpu(0)], t0 + Duration::from_secs(7202));
        assert_eq!(g[0].health.status, DeviceStatus::Ok, "{:?}", g[0].health);
        assert_eq!(g[0].health.xid_total, 1, "history is kept");
    }

    #[test]
    fn volatile_ecc_counter_going_down_counts_as_a_reset() {
        let mut t = DeviceTracker::new(policy());
        let t0 = Instant::now();
        let mut g0 = gpu(0);
        g0.xids = vec![48];
        g0.ecc_uncorrected_volatile = Some(2);
        let g = step(&mut t, vec![g0], t0);
        assert_eq!(
            messages(&g[0]),
            [
                (
                    DeviceStatus::Fail,
                    "uncorrectable ECC errors: 2 (volatile); reset the GPU to clear".into()
                ),
                (
                    DeviceStatus::Fail,
                    "XID 48: double-bit ECC error; reset the GPU to clear".into()
                ),
            ]
        );
        let g = step(&mut t, vec![gpu(0)], t0 + Duration::from_secs(1));
        assert_eq!(g[0].health.status, DeviceStatus::Ok, "{:?}", g[0].health);
    }

    #[test]
    fn warn_xid_clears_after_the_quiet_period_without_repeats() {
        let mut t = DeviceTracker::new(policy());
        let t0 = Instant::now();
        let mut g0 = gpu(0);
        g0.xids = vec![94];
        let g = step(&mut t, vec![g0.clone()], t0);
        assert_eq!(g[0].health.status, DeviceStatus::Warn);
        assert_eq!(
            g[0].health.reasons[0].message,
            "XID 94: contained ECC error; clears after 1m without a repeat"
        );
        // A repeat at 50 s restarts the quiet period.
        step(&mut t, vec![g0], t0 + Duration::from_secs(50));
        let g = step(&mut t, vec![gpu(0)], t0 + Duration::from_secs(100));
        assert_eq!(g[0].health.status, DeviceStatus::Warn);
        let g = step(&mut t, vec![gpu(0)], t0 + Duration::from_secs(111));
        assert_eq!(g[0].health.status, DeviceStatus::Ok);
    }

    #[test]
    fn ignored_xids_are_counted_but_not_judged() {
        let mut t = DeviceTracker::new(policy());
        let mut g0 = gpu(0);
        g0.xids = vec![13, 43];
        let g = step(&mut t, vec![g0], Instant::now());
        assert_eq!(g[0].health.status, DeviceStatus::Ok);
        assert_eq!(g[0].health.xid_total, 2);
        assert_eq!(g[0].health.xid_last, Some(43));
    }

    #[test]
    fn growing_counter_warns_until_it_stops_for_the_quiet_period() {
        let mut t = DeviceTracker::new(policy());
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let with = |ecc: u64, replays: u64| GpuSample {
            ecc_corrected_volatile: Some(ecc),
            pcie_replay_count: Some(replays),
            ..gpu(0)
        };
        // The first value is a baseline, however large.
        assert_eq!(
            step(&mut t, vec![with(500, 7)], at(0))[0].health.status,
            DeviceStatus::Ok
        );
        let g = step(&mut t, vec![with(503, 9)], at(1));
        assert_eq!(
            messages(&g[0]),
            [
                (
                    DeviceStatus::Warn,
                    "corrected ECC errors growing (now 503); clears after 1m without growth".into()
                ),
                (
                    DeviceStatus::Warn,
                    "PCIe replays growing (now 9); clears after 1m without growth".into()
                ),
            ]
        );
        let g = step(&mut t, vec![with(503, 9)], at(30));
        assert_eq!(
            g[0].health.reasons.len(),
            2,
            "still within the quiet period"
        );
        let g = step(&mut t, vec![with(503, 9)], at(62));
        assert_eq!(g[0].health.status, DeviceStatus::Ok, "{:?}", g[0].health);
    }

    #[test]
    fn level_conditions_hold_exactly_while_the_reading_says_so() {
        let mut t = DeviceTracker::new(policy());
        let t0 = Instant::now();
        let mut bad = gpu(0);
        bad.temperature_celsius = Some(93);
        bad.pcie_link_width = Some(8);
        bad.throttle_reasons = Some(vec!["hw_thermal_slowdown".into(), "sw_power_cap".into()]);
        bad.remapped_rows_failure = Some(true);
        bad.remapped_rows_pending = Some(true);
        bad.retired_pages_pending = Some(true);
        bad.nvlinks = vec![
            NvLinkSample {
                link: 0,
                active: true,
                ..Default::default()
            },
            NvLinkSample {
                link: 1,
                active: false,
                ..Default::default()
            },
        ];
        let g = step(&mut t, vec![bad], t0);
        let codes: Vec<(&str, DeviceStatus)> = g[0]
            .health
            .reasons
            .iter()
            .map(|r| (r.code.as_str(), r.status))
            .collect();
        use DeviceStatus::*;
        assert_eq!(
            codes,
            [
                ("row_remap_failure", Fail),
                ("temperature", Fail),
                ("nvlink_down", Warn),
                ("pcie_width", Warn),
                ("retired_pages_pending", Warn),
                ("row_remap_pending", Warn),
                ("throttle_thermal", Warn),
            ]
        );
        let msg = |code: &str| {
            g[0].health
                .reasons
                .iter()
                .find(|r| r.code == code)
                .map(|r| r.message.clone())
                .unwrap()
        };
        assert_eq!(msg("temperature"), "temperature 93 °C > 90 °C");
        assert_eq!(msg("pcie_width"), "PCIe link x8, expected x16");
        assert_eq!(msg("throttle_thermal"), "thermal slowdown active");
        assert_eq!(msg("nvlink_down"), "NVLink link(s) 1 down");
        let g = step(&mut t, vec![gpu(0)], t0 + Duration::from_secs(1));
        assert_eq!(g[0].health, DeviceHealth::default());
    }

    #[test]
    fn unsupported_readings_never_produce_reasons() {
        let mut t = DeviceTracker::new(policy());
        let bare = GpuSample {
            index: 0,
            uuid: "GPU-bare".into(),
            ..GpuSample::default()
        };
        let t0 = Instant::now();
        step(&mut t, vec![bare.clone()], t0);
        let g = step(&mut t, vec![bare], t0 + Duration::from_secs(1));
        assert_eq!(g[0].health, DeviceHealth::default());
    }

    #[test]
    fn pcie_width_check_can_be_turned_off() {
        let mut t = DeviceTracker::new(DevicePolicy {
            check_pcie_width: false,
            ..policy()
        });
        let mut narrow = gpu(0);
        narrow.pcie_link_width = Some(8);
        assert_eq!(
            step(&mut t, vec![narrow], Instant::now())[0].health.status,
            DeviceStatus::Ok
        );
    }

    #[test]
    fn disappeared_gpu_stays_listed_as_failed_until_it_returns() {
        let mut t = DeviceTracker::new(policy());
        let t0 = Instant::now();
        step(&mut t, vec![gpu(0), gpu(1)], t0);
        let g = step(&mut t, vec![gpu(0)], t0 + Duration::from_secs(1));
        assert_eq!(g.len(), 2);
        assert_eq!(g[1].uuid, "GPU-1");
        assert_eq!(
            g[1].lost.as_deref(),
            Some("no longer enumerated by the driver")
        );
        assert_eq!(g[1].temperature_celsius, None, "no stale readings");
        assert_eq!(
            messages(&g[1]),
            [(
                DeviceStatus::Fail,
                "disappeared: GPU 1 is no longer enumerated by the driver; reset the GPU or reboot to clear".into()
            )]
        );
        let g = step(&mut t, vec![gpu(0), gpu(1)], t0 + Duration::from_secs(2));
        assert!(g.iter().all(|g| g.health.status == DeviceStatus::Ok));
    }

    #[test]
    fn unreadable_gpu_fails_with_the_driver_reason() {
        let mut t = DeviceTracker::new(policy());
        let lost = GpuSample {
            index: 2,
            uuid: "GPU-2".into(),
            lost: Some("GPU is lost".into()),
            ..GpuSample::default()
        };
        let g = step(&mut t, vec![lost], Instant::now());
        assert_eq!(
            messages(&g[0]),
            [(
                DeviceStatus::Fail,
                "unreadable: GPU is lost; reset the GPU or reboot to clear".into()
            )]
        );
    }

    #[test]
    fn mig_instances_sort_after_their_parent() {
        let mut t = DeviceTracker::new(policy());
        let mig = GpuSample {
            index: 0,
            uuid: "MIG-a".into(),
            parent_uuid: Some("GPU-0".into()),
            mig_index: Some(0),
            ..GpuSample::default()
        };
        let g = step(&mut t, vec![gpu(1), mig, gpu(0)], Instant::now());
        let order: Vec<&str> = g.iter().map(|g| g.uuid.as_str()).collect();
        assert_eq!(order, ["GPU-0", "MIG-a", "GPU-1"]);
    }
}
