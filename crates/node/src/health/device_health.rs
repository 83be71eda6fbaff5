//! Per-device GPU health: `ok`, `warn` or `fail`, with reasons an operator can act on and
//! the action each needs (reset the GPU, reboot the node, ...).
//!
//! [`DeviceTracker::observe_with`] judges every sample of every GPU, together with the
//! kernel-log records read since the previous one, and writes the verdict into
//! [`GpuSample::health`]; [`super::verdict::evaluate`] then folds device verdicts into
//! the node's health (one node reason per device reason, check `gpu_<code>:<index>`).
//!
//! Invariants and trade-offs:
//! - Judging is stateful, unlike the host thresholds: an XID is an event, not a level, and
//!   "a counter that grows" needs the previous value. The state is keyed by UUID, so a
//!   re-enumeration that shuffles indices does not move a verdict to another GPU.
//! - Time is an argument ([`Instant`]), never read inside, so tests drive quiet periods
//!   without sleeping.
//! - XIDs come from two sources: NVML events (in [`GpuSample::xids`]) and the kernel log
//!   ([`super::kmsg`]), mapped to a GPU by PCI address (a GPU that is no longer listed is
//!   still found by the address it had). The same XID from both within
//!   [`DUPLICATE_WINDOW`] is one XID: each NVML event absorbs at most one kernel-log line
//!   of the same code and device, and the other way round, so a burst of three lines that
//!   NVML reports as one event (NVML keeps only the latest XID between two waits) counts
//!   three. Kernel-log lines already in the log when the reader started may match an
//!   NVML event that is already here, but never wait to absorb a later one.
//! - Classes come from NVIDIA's XID catalog ([`super::xid_catalog`]), overridden per XID
//!   by the operator's [`XidTable`]. Three kinds of condition, three ways to recover:
//!   - *levels* (temperature, PCIe width, active thermal or hardware slowdown, pending
//!     row remaps or page retirements, uncorrectable volatile ECC, NVML's recovery
//!     action) hold exactly while the reading says so; the reading itself clears on a
//!     GPU reset where that is needed;
//!   - *growth* of a cumulative counter (corrected ECC, PCIe replays, NVLink errors)
//!     warns from the sample it grows in until `quiet_period` has passed without growth;
//!   - *XIDs*: `critical` ones (the catalog's reset and reboot buckets) fail the device
//!     with `needs_reset` or `needs_reboot` until a reset is observed or the node
//!     reboots, `warn` ones (investigate) warn until `quiet_period` passes without a
//!     repeat, `ignore` ones (application restarts, informational) only count.
//! - NVML's recovery action takes precedence over the catalog: when the driver reports
//!   one other than `none`, it is the device's action (with a `recovery_action` reason)
//!   whatever the XIDs say; when it reports `none`, a critical XID the catalog links to
//!   XID 154 (the driver updates the recovery action for it) is held as `warn` only,
//!   since the driver says nothing is needed. XIDs the catalog does not link (46, 119,
//!   140, ...) keep the catalog's verdict, and operator overrides are never demoted.
//!   Each reason and the device say which source decided ([`ActionSource`]).
//! - A GPU reset cannot be observed directly through NVML. It is inferred when a device
//!   that was lost or had disappeared is readable again, when a volatile ECC counter
//!   goes *down* (volatile counters restart at zero on a reset or driver reload), or when
//!   NVML's recovery action returns to `none` after asking for something. Any of these
//!   clears the reset-only reasons, critical XIDs included.
//! - With a `state_dir` ([`DevicePolicy::state_dir`]), the critical XIDs, XID counts and
//!   what a reset is inferred from survive an agent restart ([`super::state`]); a reboot
//!   (another boot id) clears them. Without one, restarting the agent forgets them.
//! - A GPU that was seen and is no longer enumerated stays in the report as a `fail`ed
//!   device with `lost` set ("disappeared") until it comes back; otherwise a GPU falling
//!   off the bus would look like a node that simply has one GPU fewer.
//! - An unsupported reading (`None`) never produces a reason.
//! - Reasons are ordered (worst first, then code, then message) so the same condition
//!   always renders the same way.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::kmsg::{KernelEvent, KernelRecord, PciAddr};
use super::state::{GpuState, KernelMark, Snapshot, StateStore, SxidTally};
use super::verdict::ConfigIssue;
use super::xid_catalog;
use corral_proto::model::{
    ActionSource, DeviceHealth, DeviceReason, DeviceStatus, GpuAction, GpuSample, XidCount,
};

/// An NVML event and a kernel-log line of the same XID on the same GPU this close
/// together are one XID.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(5);

/// How an XID is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XidClass {
    /// A hardware or driver fault: the device fails until it is reset (or the node
    /// reboots).
    Critical,
    /// Worth a look: the device warns until `quiet_period` passes without a repeat.
    Warn,
    /// An application error or a note that says nothing about the hardware: counted,
    /// not judged.
    Ignore,
}

/// What an XID means, for messages (from [`xid_catalog`]).
pub fn xid_description(xid: u64) -> &'static str {
    xid_catalog::describe(xid)
}

/// The `[gpu.xid]` table: XIDs whose class the operator changes. A listed XID takes the
/// class of its list; every other XID keeps its class from the catalog
/// ([`xid_catalog::XidEntry::default_class`]; `warn` for an XID the catalog lacks).
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
        self.classify_with_source(xid).0
    }

    /// The class of `xid` and who set it: the operator for a listed XID, the catalog
    /// otherwise.
    pub fn classify_with_source(&self, xid: u64) -> (XidClass, ActionSource) {
        if self.critical.contains(&xid) {
            (XidClass::Critical, ActionSource::Operator)
        } else if self.warn.contains(&xid) {
            (XidClass::Warn, ActionSource::Operator)
        } else if self.ignore.contains(&xid) {
            (XidClass::Ignore, ActionSource::Operator)
        } else {
            let class = xid_catalog::lookup(xid).map_or(XidClass::Warn, |e| e.default_class());
            (class, ActionSource::Catalog)
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
    /// Where the failure state survives agent restarts (`agent.state_dir`); `None`:
    /// memory only.
    pub state_dir: Option<PathBuf>,
}

impl Default for DevicePolicy {
    fn default() -> Self {
        DevicePolicy {
            xid: XidTable::default(),
            quiet_period: Duration::from_secs(300),
            check_pcie_width: true,
            temperature_warn_celsius: 85.0,
            temperature_fail_celsius: 90.0,
            state_dir: None,
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

/// Where an XID came from, for merging duplicates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Nvml,
    KernelLog,
}

/// An XID counted recently, that a report of it from the other source would duplicate.
#[derive(Debug, Clone, Copy)]
struct Seen {
    xid: u64,
    origin: Origin,
    at: Instant,
}

/// Why a held XID warns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WarnWhy {
    /// Its class is `warn`.
    Class,
    /// It is critical by the catalog, but NVML's recovery action says nothing is needed.
    NvmlSaysNone,
}

/// What the tracker remembers about one device (by UUID).
#[derive(Debug, Clone)]
struct DeviceState {
    /// The last readable sample, to stand in for the device if it disappears.
    identity: GpuSample,
    /// Lost or disappeared at the previous sample.
    gone: bool,
    /// Critical XIDs since the last reset.
    critical_xids: BTreeSet<u64>,
    /// Warn XIDs: XID → last seen, and why.
    warn_xids: BTreeMap<u64, (Instant, WarnWhy)>,
    /// Last counter values and when each last grew.
    counters: BTreeMap<Counter, u64>,
    grew_at: BTreeMap<Counter, Instant>,
    ecc_uncorrected_volatile: Option<u64>,
    xid_last: Option<u64>,
    xid_counts: BTreeMap<u64, u64>,
    /// NVML's last recovery action other than `none`, until it returns to `none`.
    recovery_pending: Option<GpuAction>,
    /// XIDs counted within [`DUPLICATE_WINDOW`], for merging.
    recent: Vec<Seen>,
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
            xid_counts: BTreeMap::new(),
            recovery_pending: None,
            recent: Vec::new(),
            status: DeviceStatus::Ok,
        }
    }

    /// A GPU reset was inferred: forget what only a reset clears and re-baseline counters.
    fn reset(&mut self) {
        self.critical_xids.clear();
        self.warn_xids
            .retain(|_, (_, why)| *why != WarnWhy::NvmlSaysNone);
        self.counters.clear();
        self.grew_at.clear();
        self.ecc_uncorrected_volatile = None;
        self.recovery_pending = None;
    }

    /// The state as the state file keeps it.
    fn persisted(&self) -> GpuState {
        let holding = !self.critical_xids.is_empty();
        GpuState {
            index: self.identity.index,
            name: self.identity.name.clone(),
            serial: self.identity.serial.clone(),
            pci_bus_id: self.identity.pci_bus_id.clone(),
            gone: self.gone,
            critical_xids: self.critical_xids.iter().copied().collect(),
            xid_counts: self.xid_counts.clone(),
            xid_last: self.xid_last,
            ecc_corrected_volatile: self
                .counters
                .get(&Counter::EccCorrected)
                .copied()
                .filter(|_| holding),
            ecc_uncorrected_volatile: self.ecc_uncorrected_volatile.filter(|_| holding),
            recovery_pending: self.recovery_pending,
        }
    }

    /// A device as the state file kept it; critical XIDs the current policy does not
    /// call critical are dropped.
    fn restored(uuid: &str, kept: &GpuState, policy: &DevicePolicy) -> Self {
        let identity = GpuSample {
            index: kept.index,
            uuid: uuid.to_string(),
            name: kept.name.clone(),
            serial: kept.serial.clone(),
            pci_bus_id: kept.pci_bus_id.clone(),
            ..GpuSample::default()
        };
        let mut state = DeviceState::new(&identity);
        state.gone = kept.gone;
        state.critical_xids = kept
            .critical_xids
            .iter()
            .copied()
            .filter(|&x| policy.xid.classify(x) == XidClass::Critical)
            .collect();
        state.xid_counts = kept.xid_counts.clone();
        state.xid_last = kept.xid_last;
        if let Some(v) = kept.ecc_corrected_volatile {
            state.counters.insert(Counter::EccCorrected, v);
        }
        state.ecc_uncorrected_volatile = kept.ecc_uncorrected_volatile;
        state.recovery_pending = kept.recovery_pending;
        state
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

/// A reason; one a reset clears carries the reset as its action.
fn reason(code: &str, status: DeviceStatus, message: String, needs_reset: bool) -> DeviceReason {
    DeviceReason {
        code: code.into(),
        status,
        message,
        needs_reset,
        needs_reboot: false,
        action: needs_reset.then_some(GpuAction::Reset),
        action_source: needs_reset.then_some(ActionSource::Reading),
    }
}

/// A reason with an action decided by `source`.
fn reason_with(
    code: &str,
    status: DeviceStatus,
    message: String,
    action: GpuAction,
    source: ActionSource,
) -> DeviceReason {
    DeviceReason {
        code: code.into(),
        status,
        message,
        needs_reset: matches!(action, GpuAction::Reset | GpuAction::DrainAndReset),
        needs_reboot: action == GpuAction::Reboot,
        action: Some(action),
        action_source: Some(source),
    }
}

fn quiet(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs().max(1))).to_string()
}

/// "reset the GPU" / "reboot the node", for messages.
fn todo(action: GpuAction) -> &'static str {
    match action {
        GpuAction::Reboot => "reboot the node",
        GpuAction::DrainAndReset => "drain peer-to-peer traffic, then reset the GPU",
        _ => "reset the GPU",
    }
}

/// Judges devices sample after sample. One per agent; see the module doc.
#[derive(Debug)]
pub struct DeviceTracker {
    policy: DevicePolicy,
    devices: HashMap<String, DeviceState>,
    store: Option<StateStore>,
    /// How far each kernel-log source has been counted.
    kernel_mark: Option<KernelMark>,
    /// NVSwitch SXids: (switch, code) → (fatal seen, count).
    sxids: BTreeMap<(String, u64), (bool, u64)>,
    unmatched_xids: u64,
    /// PCI addresses already warned about (once each).
    unmatched_warned: BTreeSet<PciAddr>,
}

impl DeviceTracker {
    /// A tracker for `policy`; with `policy.state_dir`, it starts from the state kept
    /// there for this boot.
    pub fn new(policy: DevicePolicy) -> Self {
        let store = policy
            .state_dir
            .as_deref()
            .and_then(|dir| match StateStore::open(dir) {
                Ok(opened) => Some(opened),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot tell reboots from agent restarts; GPU failure state will not survive a restart");
                    None
                }
            });
        match store {
            Some((store, kept)) => Self::with_store(policy, store, kept),
            None => DeviceTracker {
                policy,
                devices: HashMap::new(),
                store: None,
                kernel_mark: None,
                sxids: BTreeMap::new(),
                unmatched_xids: 0,
                unmatched_warned: BTreeSet::new(),
            },
        }
    }

    /// A tracker that keeps its state in `store`, starting from `kept` (what the store
    /// held for this boot).
    pub fn with_store(policy: DevicePolicy, store: StateStore, kept: Option<Snapshot>) -> Self {
        let kept = kept.unwrap_or_default();
        let devices = kept
            .gpus
            .iter()
            .map(|(uuid, g)| (uuid.clone(), DeviceState::restored(uuid, g, &policy)))
            .collect();
        DeviceTracker {
            devices,
            store: Some(store),
            kernel_mark: kept.kernel_log,
            sxids: kept
                .sxids
                .into_iter()
                .map(|s| ((s.pci_bus_id, s.sxid), (s.fatal, s.count)))
                .collect(),
            unmatched_xids: kept.unmatched_xids,
            unmatched_warned: BTreeSet::new(),
            policy,
        }
    }

    pub fn policy(&self) -> &DevicePolicy {
        &self.policy
    }

    /// NVSwitch SXids counted this boot, by switch and code.
    pub fn sxids(&self) -> Vec<SxidTally> {
        self.sxids
            .iter()
            .map(|((pci, sxid), (fatal, count))| SxidTally {
                pci_bus_id: pci.clone(),
                sxid: *sxid,
                fatal: *fatal,
                count: *count,
            })
            .collect()
    }

    /// Kernel-log XIDs this boot for a PCI address no GPU has.
    pub fn unmatched_xids(&self) -> u64 {
        self.unmatched_xids
    }

    /// Judges one sample of every device taken at `now` (no kernel-log records).
    pub fn observe(&mut self, gpus: &mut Vec<GpuSample>, now: Instant) {
        self.observe_with(gpus, "", &[], now);
    }

    /// Judges one sample of every device taken at `now`, with the kernel-log records
    /// read from `kernel_path` since the previous sample: fills each device's `health`
    /// and `xids` (both sources, duplicates merged), and appends a `fail`ed stand-in for
    /// every known device that is no longer listed. The result is sorted by index (MIG
    /// instances after their parent). With a state store, the state is written when it
    /// changed.
    pub fn observe_with(
        &mut self,
        gpus: &mut Vec<GpuSample>,
        kernel_path: &str,
        records: &[KernelRecord],
        now: Instant,
    ) {
        let mut kernel = self.kernel_xids(gpus, kernel_path, records);
        let listed: BTreeSet<String> = gpus.iter().map(|g| g.uuid.clone()).collect();
        for g in gpus.iter_mut() {
            let state = self
                .devices
                .entry(g.uuid.clone())
                .or_insert_with(|| DeviceState::new(g));
            let from_kernel = kernel.remove(&g.uuid).unwrap_or_default();
            let (health, xids) = judge(&self.policy, state, g, &from_kernel, now);
            g.health = health;
            g.xids = xids;
        }
        for (uuid, state) in self.devices.iter_mut() {
            if listed.contains(uuid) {
                continue;
            }
            let mut standin = state.identity.clone();
            standin.lost = Some("no longer enumerated by the driver".into());
            let from_kernel = kernel.remove(uuid).unwrap_or_default();
            let (health, xids) = judge(&self.policy, state, &standin, &from_kernel, now);
            standin.health = health;
            standin.xids = xids;
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
        self.persist();
    }

    /// Maps kernel-log XIDs to device UUIDs by PCI address (listed GPUs first, then the
    /// addresses known devices had), tallies SXids, and skips records an earlier run
    /// already counted. Returns UUID → (XID, backlog) in log order.
    fn kernel_xids(
        &mut self,
        gpus: &[GpuSample],
        path: &str,
        records: &[KernelRecord],
    ) -> HashMap<String, Vec<(u64, bool)>> {
        let mut out: HashMap<String, Vec<(u64, bool)>> = HashMap::new();
        if records.is_empty() {
            return out;
        }
        let whole = |g: &GpuSample| g.mig_index.is_none() && !g.uuid.is_empty();
        let mut by_pci: HashMap<PciAddr, String> = HashMap::new();
        for s in self
            .devices
            .values()
            .map(|s| &s.identity)
            .filter(|g| whole(g))
        {
            if let Some(pci) = s.pci_bus_id.as_deref().and_then(PciAddr::parse) {
                by_pci.insert(pci, s.uuid.clone());
            }
        }
        // The current listing wins over remembered addresses.
        for g in gpus.iter().filter(|g| whole(g)) {
            if let Some(pci) = g.pci_bus_id.as_deref().and_then(PciAddr::parse) {
                by_pci.insert(pci, g.uuid.clone());
            }
        }
        let counted_to = self
            .kernel_mark
            .as_ref()
            .filter(|m| m.path == path)
            .map(|m| m.last_seq);
        let mut last = counted_to;
        for r in records {
            if let (Some(seq), Some(done)) = (r.seq, counted_to) {
                if seq <= done {
                    continue;
                }
            }
            if let Some(seq) = r.seq {
                last = Some(last.map_or(seq, |l| l.max(seq)));
            }
            match &r.event {
                KernelEvent::Xid { pci, xid, message } => match by_pci.get(pci) {
                    Some(uuid) => out.entry(uuid.clone()).or_default().push((*xid, r.backlog)),
                    None => {
                        self.unmatched_xids += 1;
                        if self.unmatched_warned.insert(*pci) {
                            tracing::warn!(%pci, xid, %message, "kernel-log XID for a PCI address no GPU of this node has");
                        }
                    }
                },
                KernelEvent::Sxid {
                    pci,
                    sxid,
                    fatal,
                    message,
                } => {
                    let e = self.sxids.entry((pci.clone(), *sxid)).or_default();
                    e.0 |= *fatal;
                    e.1 += 1;
                    if *fatal {
                        tracing::warn!(switch = %pci, sxid, %message, "fatal NVSwitch SXid");
                    } else {
                        tracing::info!(switch = %pci, sxid, %message, "NVSwitch SXid");
                    }
                }
            }
        }
        if let Some(last_seq) = last {
            self.kernel_mark = Some(KernelMark {
                path: path.to_string(),
                last_seq,
            });
        }
        out
    }

    /// Writes the state file when the state changed.
    fn persist(&mut self) {
        if self.store.is_none() {
            return;
        }
        let snap = Snapshot {
            gpus: self
                .devices
                .iter()
                .filter(|(uuid, s)| !uuid.is_empty() && s.identity.mig_index.is_none())
                .map(|(uuid, s)| (uuid.clone(), s.persisted()))
                .collect(),
            kernel_log: self.kernel_mark.clone(),
            sxids: self.sxids(),
            unmatched_xids: self.unmatched_xids,
            ..Snapshot::default()
        };
        if let Some(store) = &mut self.store {
            store.save(snap);
        }
    }
}

/// Counts the XIDs of this sample, merging an NVML event and a kernel-log line of the
/// same XID (see the module doc). Returns the XIDs counted, NVML's first.
fn merge(state: &mut DeviceState, nvml: &[u64], kernel: &[(u64, bool)], now: Instant) -> Vec<u64> {
    state
        .recent
        .retain(|s| now.saturating_duration_since(s.at) <= DUPLICATE_WINDOW);
    fn take(recent: &mut Vec<Seen>, xid: u64, other: Origin) -> bool {
        match recent
            .iter()
            .position(|s| s.xid == xid && s.origin == other)
        {
            Some(i) => {
                recent.remove(i);
                true
            }
            None => false,
        }
    }
    let mut counted = Vec::new();
    let mut seen = Vec::new();
    for &xid in nvml {
        if take(&mut state.recent, xid, Origin::KernelLog) {
            tracing::debug!(xid, "XID seen by the kernel log and NVML; counted once");
        } else {
            counted.push(xid);
            seen.push(Seen {
                xid,
                origin: Origin::Nvml,
                at: now,
            });
        }
    }
    // NVML events of this sample are matchable by this sample's kernel lines.
    state.recent.append(&mut seen);
    for &(xid, backlog) in kernel {
        if take(&mut state.recent, xid, Origin::Nvml) {
            tracing::debug!(xid, "XID seen by NVML and the kernel log; counted once");
        } else {
            counted.push(xid);
            if !backlog {
                seen.push(Seen {
                    xid,
                    origin: Origin::KernelLog,
                    at: now,
                });
            }
        }
    }
    state.recent.append(&mut seen);
    counted
}

/// Updates `state` with `g` (and the kernel-log XIDs for it) and returns the device's
/// verdict and the XIDs counted in this sample.
fn judge(
    p: &DevicePolicy,
    state: &mut DeviceState,
    g: &GpuSample,
    kernel: &[(u64, bool)],
    now: Instant,
) -> (DeviceHealth, Vec<u64>) {
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
        // NVML's recovery action back to `none` after asking for something: recovered.
        match g.recovery_action {
            Some(GpuAction::None) if state.recovery_pending.is_some() => {
                tracing::info!(gpu = g.index, uuid = %g.uuid, was = ?state.recovery_pending, "NVML recovery action back to none; treating the GPU as reset");
                state.reset();
            }
            Some(a) if a != GpuAction::None => state.recovery_pending = Some(a),
            _ => {}
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

    let counted = merge(state, &g.xids, kernel, now);
    for &xid in &counted {
        *state.xid_counts.entry(xid).or_default() += 1;
        state.xid_last = Some(xid);
        let (class, source) = p.xid.classify_with_source(xid);
        tracing::warn!(gpu = g.index, uuid = %g.uuid, xid, class = ?class, %source, description = xid_description(xid), "XID error");
        match class {
            XidClass::Critical => {
                state.critical_xids.insert(xid);
            }
            XidClass::Warn => {
                state.warn_xids.insert(xid, (now, WarnWhy::Class));
            }
            XidClass::Ignore => {}
        }
    }
    if g.recovery_action == Some(GpuAction::None) {
        let demoted: Vec<u64> = state
            .critical_xids
            .iter()
            .copied()
            .filter(|&x| {
                p.xid.classify_with_source(x).1 == ActionSource::Catalog
                    && xid_catalog::lookup(x).is_some_and(|e| e.linked_154)
            })
            .collect();
        for xid in demoted {
            tracing::info!(gpu = g.index, uuid = %g.uuid, xid, "NVML reports no recovery action needed for a critical XID; holding it as warn");
            state.critical_xids.remove(&xid);
            state.warn_xids.insert(xid, (now, WarnWhy::NvmlSaysNone));
        }
    }
    for &xid in &state.critical_xids {
        let (_, source) = p.xid.classify_with_source(xid);
        let action = match xid_catalog::lookup(xid).map(|e| e.action()) {
            Some(a @ (GpuAction::Reboot | GpuAction::Reset | GpuAction::DrainAndReset)) => a,
            _ => GpuAction::Reset,
        };
        let by = if source == ActionSource::Operator {
            " (critical by gpu.xid.critical)"
        } else {
            ""
        };
        reasons.push(reason_with(
            "xid",
            DeviceStatus::Fail,
            format!(
                "XID {xid}: {}{by}; {} to clear",
                xid_description(xid),
                todo(action)
            ),
            action,
            source,
        ));
    }
    state
        .warn_xids
        .retain(|_, (seen, _)| now.saturating_duration_since(*seen) < p.quiet_period);
    for (&xid, &(_, why)) in state.warn_xids.iter() {
        let (message, action, source) = match why {
            WarnWhy::Class => {
                let hint = xid_catalog::lookup(xid).map_or("investigate".into(), |e| e.hint());
                (
                    format!(
                        "XID {xid}: {}; {hint}; clears after {} without a repeat",
                        xid_description(xid),
                        quiet(p.quiet_period)
                    ),
                    GpuAction::Investigate,
                    p.xid.classify_with_source(xid).1,
                )
            }
            WarnWhy::NvmlSaysNone => {
                let catalog = xid_catalog::lookup(xid).map_or(GpuAction::Reset, |e| e.action());
                (
                    format!(
                        "XID {xid}: {}; the catalog says {}, but NVML reports no recovery action needed; clears after {} without a repeat",
                        xid_description(xid),
                        todo(catalog),
                        quiet(p.quiet_period)
                    ),
                    GpuAction::None,
                    ActionSource::Nvml,
                )
            }
        };
        reasons.push(reason_with(
            "xid",
            DeviceStatus::Warn,
            message,
            action,
            source,
        ));
    }
    if let Some(action) = g.recovery_action.filter(|a| *a != GpuAction::None) {
        let (status, what) = match action {
            GpuAction::Reboot => (DeviceStatus::Fail, "reboot the node"),
            GpuAction::Reset => (DeviceStatus::Fail, "reset the GPU"),
            GpuAction::DrainAndReset => (
                DeviceStatus::Fail,
                "drain peer-to-peer traffic, then reset the GPU",
            ),
            GpuAction::DrainP2p => (
                DeviceStatus::Warn,
                "stop the GPU's peer-to-peer traffic, then read the recovery action again",
            ),
            GpuAction::RestartApp => (DeviceStatus::Warn, "restart the application"),
            GpuAction::Investigate | GpuAction::None => (DeviceStatus::Warn, "investigate"),
        };
        reasons.push(reason_with(
            "recovery_action",
            status,
            format!("NVML recovery action: {what}"),
            action,
            ActionSource::Nvml,
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
    // NVML's recovery action decides when it asks for something; otherwise the worst
    // action of the reasons (the first of equals, reasons being worst first).
    let (action, action_source) = match g.recovery_action {
        Some(a) if a != GpuAction::None => (a, Some(ActionSource::Nvml)),
        _ => reasons
            .iter()
            .filter_map(|r| Some((r.action?, r.action_source)))
            .fold((GpuAction::None, None), |best, next| {
                if next.0 > best.0 {
                    next
                } else {
                    best
                }
            }),
    };
    if status != state.status {
        let why: Vec<&str> = reasons.iter().map(|r| r.message.as_str()).collect();
        tracing::info!(gpu = g.index, uuid = %g.uuid, from = %state.status, to = %status, %action, reasons = ?why, "GPU health changed");
        state.status = status;
    }
    let health = DeviceHealth {
        status,
        reasons,
        xid_last: state.xid_last,
        xid_total: state.xid_counts.values().sum(),
        xid_counts: state
            .xid_counts
            .iter()
            .map(|(&xid, &count)| XidCount { xid, count })
            .collect(),
        action,
        action_source,
    };
    (health, counted)
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
        out.push(reason_with(
            "row_remap_failure",
            DeviceStatus::Fail,
            "row remap failure: no spare rows left; the GPU needs service".into(),
            GpuAction::Investigate,
            ActionSource::Reading,
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
            pci_bus_id: Some(format!("00000000:{:02X}:00.0", 0x18 + index * 0x10)),
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
        for xid in [13, 31, 43, 45, 68, 94] {
            assert_eq!(t.classify(xid), XidClass::Ignore, "XID {xid}");
        }
        assert_eq!(t.classify(79), XidClass::Critical);
        assert_eq!(t.classify(46), XidClass::Critical);
        // The catalog sends 48 (double-bit ECC) through its own workflow; the ECC
        // counters themselves fail the GPU (`ecc_uncorrectable`).
        assert_eq!(t.classify(48), XidClass::Warn);
        assert_eq!(t.classify(9999), XidClass::Warn);
        assert_eq!(
            t.classify_with_source(79),
            (XidClass::Critical, ActionSource::Catalog)
        );
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
                "XID 79: GPU has fallen off the bus; reboot the node to clear".into()
            )]
        );
        let r = &g[0].health.reasons[0];
        assert!(r.needs_reboot && !r.needs_reset, "{r:?}");
        assert_eq!(
            (g[0].health.action, g[0].health.action_source),
            (GpuAction::Reboot, Some(ActionSource::Catalog))
        );
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
        g0.xids = vec![95];
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
                    "XID 95: uncontained memory error; reset the GPU to clear".into()
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
        g0.xids = vec![74];
        let g = step(&mut t, vec![g0.clone()], t0);
        assert_eq!(g[0].health.status, DeviceStatus::Warn);
        assert_eq!(
            g[0].health.reasons[0].message,
            "XID 74: NVLink error; investigate (NVIDIA: WORKFLOW_NVLINK_ERR); clears after 1m without a repeat"
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

    fn xid_line(index: u32, xid: u64, seq: Option<u64>, backlog: bool) -> KernelRecord {
        KernelRecord {
            seq,
            event: KernelEvent::Xid {
                pci: PciAddr::parse(&format!("0000:{:02x}:00", 0x18 + index * 0x10)).unwrap(),
                xid,
                message: "test".into(),
            },
            backlog,
        }
    }

    fn step_kmsg(
        t: &mut DeviceTracker,
        gpus: Vec<GpuSample>,
        lines: &[KernelRecord],
        at: Instant,
    ) -> Vec<GpuSample> {
        let mut gpus = gpus;
        t.observe_with(&mut gpus, "/dev/kmsg", lines, at);
        gpus
    }

    fn counts(g: &GpuSample) -> Vec<(u64, u64)> {
        g.health
            .xid_counts
            .iter()
            .map(|c| (c.xid, c.count))
            .collect()
    }

    #[test]
    fn xid_79_from_the_kernel_log_needs_a_reboot_while_nvml_still_lists_the_gpu() {
        let mut t = DeviceTracker::new(policy());
        let g = step_kmsg(
            &mut t,
            vec![gpu(0), gpu(1)],
            &[xid_line(0, 79, Some(7), true)],
            Instant::now(),
        );
        assert_eq!(g[0].health.status, DeviceStatus::Fail);
        let r = &g[0].health.reasons[0];
        assert_eq!(r.code, "xid");
        assert!(r.needs_reboot && !r.needs_reset);
        assert_eq!(g[0].xids, [79]);
        assert_eq!(
            g[1].health.status,
            DeviceStatus::Ok,
            "only the GPU at that address"
        );
    }

    #[test]
    fn xids_62_and_119_from_the_kernel_log_need_a_reset() {
        let mut t = DeviceTracker::new(policy());
        let lines = [xid_line(0, 62, None, false), xid_line(1, 119, None, false)];
        let g = step_kmsg(&mut t, vec![gpu(0), gpu(1)], &lines, Instant::now());
        for (g, xid) in g.iter().zip([62, 119]) {
            let r = &g.health.reasons[0];
            assert_eq!(
                (g.health.status, r.needs_reset, r.needs_reboot),
                (DeviceStatus::Fail, true, false),
                "XID {xid}: {r:?}"
            );
            assert_eq!(g.health.action, GpuAction::Reset);
        }
    }

    #[test]
    fn xid_13_from_the_kernel_log_changes_no_health() {
        let mut t = DeviceTracker::new(policy());
        let g = step_kmsg(
            &mut t,
            vec![gpu(0)],
            &[xid_line(0, 13, None, false)],
            Instant::now(),
        );
        assert_eq!(g[0].health.status, DeviceStatus::Ok);
        assert_eq!(counts(&g[0]), [(13, 1)]);
    }

    #[test]
    fn a_burst_nvml_reports_once_counts_every_kernel_line() {
        let mut t = DeviceTracker::new(policy());
        let mut g0 = gpu(0);
        g0.xids = vec![13]; // NVML keeps only the latest XID between two waits
        let lines = [
            xid_line(0, 13, None, false),
            xid_line(0, 31, None, false),
            xid_line(0, 13, None, false),
        ];
        let g = step_kmsg(&mut t, vec![g0], &lines, Instant::now());
        assert_eq!(g[0].health.xid_total, 3);
        assert_eq!(counts(&g[0]), [(13, 2), (31, 1)]);
    }

    #[test]
    fn the_same_xid_from_nvml_and_the_kernel_log_is_counted_once() {
        let mut t = DeviceTracker::new(policy());
        let t0 = Instant::now();
        // Kernel line first, NVML event a sample later: still one XID.
        step_kmsg(&mut t, vec![gpu(0)], &[xid_line(0, 43, None, false)], t0);
        let mut g0 = gpu(0);
        g0.xids = vec![43];
        let g = step(&mut t, vec![g0.clone()], t0 + Duration::from_secs(1));
        assert_eq!(g[0].health.xid_total, 1);
        assert!(g[0].xids.is_empty(), "the NVML event was the same XID");
        // Outside the window they are two.
        let g = step(
            &mut t,
            vec![g0],
            t0 + DUPLICATE_WINDOW + Duration::from_secs(2),
        );
        assert_eq!(g[0].health.xid_total, 2);
    }

    #[test]
    fn backlog_lines_never_absorb_a_later_nvml_event() {
        let mut t = DeviceTracker::new(policy());
        let t0 = Instant::now();
        step_kmsg(&mut t, vec![gpu(0)], &[xid_line(0, 43, Some(1), true)], t0);
        let mut g0 = gpu(0);
        g0.xids = vec![43];
        let g = step(&mut t, vec![g0], t0 + Duration::from_secs(1));
        assert_eq!(g[0].health.xid_total, 2);
    }

    #[test]
    fn a_kernel_xid_for_a_vanished_gpu_lands_on_its_stand_in() {
        let mut t = DeviceTracker::new(policy());
        let t0 = Instant::now();
        step(&mut t, vec![gpu(0), gpu(1)], t0);
        let g = step_kmsg(
            &mut t,
            vec![gpu(0)],
            &[xid_line(1, 79, None, false)],
            t0 + Duration::from_secs(1),
        );
        assert_eq!(g[1].uuid, "GPU-1");
        assert_eq!(counts(&g[1]), [(79, 1)]);
        assert!(g[1]
            .health
            .reasons
            .iter()
            .any(|r| r.code == "xid" && r.needs_reboot));
    }

    #[test]
    fn xids_for_an_unknown_pci_address_are_counted_as_unmatched() {
        let mut t = DeviceTracker::new(policy());
        let g = step_kmsg(
            &mut t,
            vec![gpu(0)],
            &[xid_line(7, 79, None, false)],
            Instant::now(),
        );
        assert_eq!(g[0].health.status, DeviceStatus::Ok);
        assert_eq!(t.unmatched_xids(), 1);
    }

    #[test]
    fn nvswitch_sxids_are_tallied_by_switch_and_code() {
        let mut t = DeviceTracker::new(policy());
        let sxid = |code, fatal| KernelRecord {
            seq: None,
            event: KernelEvent::Sxid {
                pci: "0000:c6:00.0".into(),
                sxid: code,
                fatal,
                message: "m".into(),
            },
            backlog: false,
        };
        step_kmsg(
            &mut t,
            vec![gpu(0)],
            &[sxid(12028, false), sxid(12028, false), sxid(24007, true)],
            Instant::now(),
        );
        let tally: Vec<_> = t
            .sxids()
            .into_iter()
            .map(|s| (s.sxid, s.fatal, s.count))
            .collect();
        assert_eq!(tally, [(12028, false, 2), (24007, true, 1)]);
    }

    #[test]
    fn nvml_recovery_action_decides_over_the_catalog() {
        let mut t = DeviceTracker::new(policy());
        let mut g0 = gpu(0);
        g0.xids = vec![62];
        g0.recovery_action = Some(GpuAction::Reboot);
        let g = step(&mut t, vec![g0], Instant::now());
        assert_eq!(
            (g[0].health.action, g[0].health.action_source),
            (GpuAction::Reboot, Some(ActionSource::Nvml))
        );
        let rec = g[0]
            .health
            .reasons
            .iter()
            .find(|r| r.code == "recovery_action")
            .unwrap();
        assert_eq!(rec.message, "NVML recovery action: reboot the node");
        assert!(rec.needs_reboot);
        let xid = g[0]
            .health
            .reasons
            .iter()
            .find(|r| r.code == "xid")
            .unwrap();
        assert_eq!(
            xid.action_source,
            Some(ActionSource::Catalog),
            "the XID still says what the catalog says"
        );
    }

    #[test]
    fn nvml_saying_none_holds_a_linked_critical_xid_as_warn_only() {
        let mut t = DeviceTracker::new(policy());
        let t0 = Instant::now();
        let mut g0 = gpu(0);
        g0.xids = vec![62, 119];
        g0.recovery_action = Some(GpuAction::None);
        let g = step(&mut t, vec![g0], t0);
        let by_xid = |x: &str| {
            g[0].health
                .reasons
                .iter()
                .find(|r| r.message.starts_with(x))
                .map(|r| (r.status, r.action_source))
                .unwrap()
        };
        // 62 is linked to XID 154: the driver says nothing is needed.
        assert_eq!(
            by_xid("XID 62:"),
            (DeviceStatus::Warn, Some(ActionSource::Nvml))
        );
        // 119 is not: the driver does not update the recovery action for it.
        assert_eq!(
            by_xid("XID 119:"),
            (DeviceStatus::Fail, Some(ActionSource::Catalog))
        );
        let mut later = gpu(0);
        later.recovery_action = Some(GpuAction::None);
        let g = step(&mut t, vec![later], t0 + Duration::from_secs(61));
        assert_eq!(
            messages(&g[0]).len(),
            1,
            "the warn expired, the reset XID holds"
        );
    }

    #[test]
    fn operator_critical_xids_are_never_demoted_by_nvml() {
        let mut t = DeviceTracker::new(DevicePolicy {
            xid: XidTable {
                critical: vec![13],
                ..XidTable::default()
            },
            ..policy()
        });
        let mut g0 = gpu(0);
        g0.xids = vec![13];
        g0.recovery_action = Some(GpuAction::None);
        let g = step(&mut t, vec![g0], Instant::now());
        let r = &g[0].health.reasons[0];
        assert_eq!(r.status, DeviceStatus::Fail);
        assert_eq!(r.action_source, Some(ActionSource::Operator));
        assert_eq!(
            r.message,
            "XID 13: graphics engine exception (usually an application fault) (critical by gpu.xid.critical); reset the GPU to clear"
        );
    }

    #[test]
    fn nvml_recovery_action_back_to_none_counts_as_a_reset() {
        let mut t = DeviceTracker::new(policy());
        let t0 = Instant::now();
        let mut g0 = gpu(0);
        g0.xids = vec![119];
        g0.recovery_action = Some(GpuAction::Reset);
        assert_eq!(
            step(&mut t, vec![g0], t0)[0].health.status,
            DeviceStatus::Fail
        );
        let mut after = gpu(0);
        after.recovery_action = Some(GpuAction::None);
        let g = step(&mut t, vec![after], t0 + Duration::from_secs(1));
        assert_eq!(g[0].health.status, DeviceStatus::Ok, "{:?}", g[0].health);
    }

    fn kept_tracker(dir: &std::path::Path, boot: &str) -> DeviceTracker {
        let (store, kept) = StateStore::open_with_boot_id(dir, boot.into());
        DeviceTracker::with_store(policy(), store, kept)
    }

    #[test]
    fn a_critical_xid_survives_an_agent_restart_until_the_gpu_is_reset() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        {
            let mut t = kept_tracker(dir.path(), "boot-1");
            let mut g0 = gpu(0);
            g0.xids = vec![62];
            g0.ecc_corrected_volatile = Some(4);
            assert_eq!(
                step(&mut t, vec![g0], t0)[0].health.status,
                DeviceStatus::Fail
            );
        }
        // The agent restarts: same boot, the GPU looks fine.
        let mut t = kept_tracker(dir.path(), "boot-1");
        let mut g0 = gpu(0);
        g0.ecc_corrected_volatile = Some(4);
        let g = step(&mut t, vec![g0], t0 + Duration::from_secs(5));
        assert_eq!(g[0].health.status, DeviceStatus::Fail, "{:?}", g[0].health);
        assert!(g[0].health.reasons[0].needs_reset);
        assert_eq!(counts(&g[0]), [(62, 1)], "counts survive too");
        // A reset: the volatile counter went down.
        let g = step(&mut t, vec![gpu(0)], t0 + Duration::from_secs(6));
        assert_eq!(g[0].health.status, DeviceStatus::Ok, "{:?}", g[0].health);
        // And the reset is kept as well.
        let mut t = kept_tracker(dir.path(), "boot-1");
        let g = step(&mut t, vec![gpu(0)], t0 + Duration::from_secs(7));
        assert_eq!(g[0].health.status, DeviceStatus::Ok);
    }

    #[test]
    fn a_reset_while_the_agent_was_down_is_seen_from_the_kept_counters() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        {
            let mut t = kept_tracker(dir.path(), "boot-1");
            let mut g0 = gpu(0);
            g0.xids = vec![95];
            g0.ecc_corrected_volatile = Some(9);
            step(&mut t, vec![g0], t0);
        }
        let mut t = kept_tracker(dir.path(), "boot-1");
        let g = step(&mut t, vec![gpu(0)], t0 + Duration::from_secs(5));
        assert_eq!(g[0].health.status, DeviceStatus::Ok, "{:?}", g[0].health);
    }

    #[test]
    fn a_reboot_clears_the_kept_failure_state() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        {
            let mut t = kept_tracker(dir.path(), "boot-1");
            let mut g0 = gpu(0);
            g0.xids = vec![79];
            step(&mut t, vec![g0], t0);
        }
        let mut t = kept_tracker(dir.path(), "boot-2");
        let g = step(&mut t, vec![gpu(0)], t0 + Duration::from_secs(5));
        assert_eq!(g[0].health.status, DeviceStatus::Ok);
        assert_eq!(g[0].health.xid_total, 0);
    }

    #[test]
    fn a_gpu_gone_before_a_restart_is_still_reported_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        {
            let mut t = kept_tracker(dir.path(), "boot-1");
            step(&mut t, vec![gpu(0), gpu(1)], t0);
            step(&mut t, vec![gpu(0)], t0 + Duration::from_secs(1));
        }
        let mut t = kept_tracker(dir.path(), "boot-1");
        let g = step(&mut t, vec![gpu(0)], t0 + Duration::from_secs(5));
        assert_eq!(g.len(), 2);
        assert_eq!(g[1].health.reasons[0].code, "disappeared");
    }

    #[test]
    fn kernel_lines_counted_before_a_restart_are_not_counted_again() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        let lines = [
            xid_line(0, 13, Some(10), true),
            xid_line(0, 31, Some(11), true),
        ];
        {
            let mut t = kept_tracker(dir.path(), "boot-1");
            let g = step_kmsg(&mut t, vec![gpu(0)], &lines, t0);
            assert_eq!(g[0].health.xid_total, 2);
        }
        // After a restart, /dev/kmsg is read from its start again, plus one new line.
        let mut t = kept_tracker(dir.path(), "boot-1");
        let mut again = lines.to_vec();
        again.push(xid_line(0, 43, Some(12), true));
        let g = step_kmsg(&mut t, vec![gpu(0)], &again, t0 + Duration::from_secs(5));
        assert_eq!(counts(&g[0]), [(13, 1), (31, 1), (43, 1)]);
    }
}
