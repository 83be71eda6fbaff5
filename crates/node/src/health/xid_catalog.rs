//! NVIDIA's XID catalog as one table: every XID code the catalog lists, with its mnemonic,
//! what it means, and NVIDIA's resolution bucket (the immediate action).
//!
//! Source: NVIDIA, "Analyzing Xid Errors with the Xid Catalog"
//! (<https://docs.nvidia.com/deploy/xid-errors/analyzing-xid-catalog.html>) and the
//! `Xid-Catalog.xlsx` spreadsheet published with it, edition [`CATALOG_VERSION`]: Ampere
//! and newer GPUs, XIDs 1–172, column "Resolution Bucket (Immediate Action)" for
//! [`XidEntry::bucket`] and column "Xid 154 linkage" for [`XidEntry::linked_154`].
//!
//! Invariants and trade-offs:
//! - The table is the only place an XID's meaning lives. [`XidEntry::action`] derives the
//!   action from the bucket ([`action_of`]), and [`XidEntry::default_class`] the class
//!   corral judges by from the action, so a catalog update is a table edit.
//! - Buckets map to actions as NVIDIA names them: `RESTART_BM` (restart the bare-metal
//!   node) is a reboot, `RESET_GPU` a reset, `RESTART_APP` an application restart,
//!   `IGNORE` nothing; every other bucket (`CONTACT_SUPPORT`, the `WORKFLOW_*` flows,
//!   `CHECK_MECHANICALS`, `UPDATE_SWFW`, `RESTART_VM`, `CHECK_UVM`, `XID_154`, and the
//!   XIDs 162–172 the catalog gives no bucket yet) is "investigate".
//! - Classes: reset and reboot XIDs are `critical` (the GPU fails until a reset is
//!   observed or the node reboots), application-restart and ignore XIDs only count,
//!   investigate XIDs `warn` for the quiet period, except the few in
//!   [`QUIET_INVESTIGATE`] that only accompany other XIDs. Operators override classes
//!   per XID (`[gpu.xid]`, see [`super::device_health::XidTable`]).
//! - XID 160 (`CHANNEL_RETIREMENT_EVENT`) is a node reboot here, as the catalog's node
//!   reboot bucket is given for this work (79 and 160). The R575-era copy of the catalog
//!   read while writing this table still listed it as `IGNORE`; newer drivers log 160
//!   for LTS/channel repairs that are pending until the next boot. Check this row
//!   against the live catalog when updating the table.
//! - An XID the table does not know (a newer driver) is judged like an investigate
//!   XID: `warn`, with a message saying it is not in the catalog.

use super::device_health::XidClass;
use corral_proto::model::GpuAction;

/// Which edition of the catalog the table encodes.
pub const CATALOG_VERSION: &str = "v580 (XIDs 1-172, driver notes up to R575)";

/// Where the catalog is published.
pub const CATALOG_SOURCE: &str =
    "https://docs.nvidia.com/deploy/xid-errors/analyzing-xid-catalog.html";

/// One XID as the catalog lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XidEntry {
    pub code: u64,
    /// NVIDIA's mnemonic (`ROBUST_CHANNEL_GPU_HAS_FALLEN_OFF_THE_BUS`).
    pub mnemonic: &'static str,
    /// What it means, for messages ("GPU has fallen off the bus").
    pub message: &'static str,
    /// The catalog's immediate-action resolution bucket (`RESET_GPU`, `WORKFLOW_XID_48`,
    /// empty where the catalog gives none).
    pub bucket: &'static str,
    /// The catalog links the XID to XID 154: a driver that has NVML's recovery action
    /// updates it for this XID (see [`super::device_health`] for what that changes).
    pub linked_154: bool,
}

/// XIDs whose bucket is "investigate" but which only accompany other XIDs, so they count
/// without a verdict of their own: 45 (preemptive cleanup: an application torn down
/// after another error, or by Ctrl-C), 154 (recovery action changed: the recovery action
/// itself is read from NVML), 162 (power smoothing re-engaged: good news), 171 and 172
/// (details of an XID 48).
pub const QUIET_INVESTIGATE: &[u64] = &[45, 154, 162, 171, 172];

/// The action a resolution bucket asks for.
pub fn action_of(bucket: &str) -> GpuAction {
    match bucket {
        "RESTART_BM" => GpuAction::Reboot,
        "RESET_GPU" => GpuAction::Reset,
        "RESTART_APP" => GpuAction::RestartApp,
        "IGNORE" => GpuAction::None,
        _ => GpuAction::Investigate,
    }
}

impl XidEntry {
    /// What NVIDIA says to do (see [`action_of`]).
    pub fn action(&self) -> GpuAction {
        action_of(self.bucket)
    }

    /// The class corral judges this XID by when the operator does not say otherwise.
    pub fn default_class(&self) -> XidClass {
        match self.action() {
            GpuAction::Reboot | GpuAction::Reset | GpuAction::DrainAndReset => XidClass::Critical,
            GpuAction::None | GpuAction::RestartApp => XidClass::Ignore,
            GpuAction::Investigate | GpuAction::DrainP2p => {
                if QUIET_INVESTIGATE.contains(&self.code) {
                    XidClass::Ignore
                } else {
                    XidClass::Warn
                }
            }
        }
    }

    /// What an operator should do, for `warn` messages ("investigate (NVIDIA:
    /// WORKFLOW_XID_48)").
    pub fn hint(&self) -> String {
        if self.bucket.is_empty() {
            "investigate".into()
        } else {
            format!("investigate (NVIDIA: {})", self.bucket)
        }
    }
}

/// The catalog entry of `xid`, if the table has one.
pub fn lookup(xid: u64) -> Option<&'static XidEntry> {
    // The table is sorted by code and dense from 1 (a test checks it).
    let i = usize::try_from(xid).ok()?.checked_sub(1)?;
    CATALOG.get(i).filter(|e| e.code == xid)
}

/// What `xid` means, for messages; an XID the table lacks says so.
pub fn describe(xid: u64) -> &'static str {
    lookup(xid).map_or("not in NVIDIA's XID catalog", |e| e.message)
}

const fn x(
    code: u64,
    mnemonic: &'static str,
    bucket: &'static str,
    linked_154: bool,
    message: &'static str,
) -> XidEntry {
    XidEntry {
        code,
        mnemonic,
        message,
        bucket,
        linked_154,
    }
}

const UNUSED: &str = "unused by current drivers";
const CONTACT: &str = "CONTACT_SUPPORT";
const APP: &str = "RESTART_APP";
const RESET: &str = "RESET_GPU";
const IGNORE: &str = "IGNORE";
const NVLINK5: &str = "WORKFLOW_NVLINK5_ERR";

/// Every XID of the catalog, by code (1–172, no gaps).
#[rustfmt::skip]
pub static CATALOG: [XidEntry; 172] = [
    x(1, "ROBUST_CHANNEL_FIFO_ERROR_FIFO_METHOD", CONTACT, false, UNUSED),
    x(2, "ROBUST_CHANNEL_FIFO_ERROR_SW_METHOD", CONTACT, false, UNUSED),
    x(3, "ROBUST_CHANNEL_FIFO_ERROR_UNK_METHOD", CONTACT, false, UNUSED),
    x(4, "ROBUST_CHANNEL_FIFO_ERROR_CHANNEL_BUSY", CONTACT, false, UNUSED),
    x(5, "ROBUST_CHANNEL_FIFO_ERROR_RUNOUT_OVERFLOW", CONTACT, false, UNUSED),
    x(6, "ROBUST_CHANNEL_FIFO_ERROR_PARSE_ERR", CONTACT, false, UNUSED),
    x(7, "ROBUST_CHANNEL_FIFO_ERROR_PTE_ERR", CONTACT, false, UNUSED),
    x(8, "ROBUST_CHANNEL_FIFO_ERROR_IDLE_TIMEOUT", APP, false, "GPU stopped processing"),
    x(9, "ROBUST_CHANNEL_GR_ERROR_INSTANCE", CONTACT, false, UNUSED),
    x(10, "ROBUST_CHANNEL_GR_ERROR_SINGLE_STEP", CONTACT, false, UNUSED),
    x(11, "ROBUST_CHANNEL_GR_ERROR_MISSING_HW", APP, false, "invalid or corrupted push buffer stream"),
    x(12, "ROBUST_CHANNEL_GR_ERROR_SW_METHOD", CONTACT, false, UNUSED),
    x(13, "ROBUST_CHANNEL_GR_EXCEPTION", APP, false, "graphics engine exception (usually an application fault)"),
    x(14, "ROBUST_CHANNEL_FAKE_ERROR", IGNORE, false, "fake or injected error"),
    x(15, "ROBUST_CHANNEL_SCANLINE_TIMEOUT", CONTACT, false, UNUSED),
    x(16, "ROBUST_CHANNEL_VBLANK_CALLBACK_TIMEOUT", CONTACT, false, UNUSED),
    x(17, "ROBUST_CHANNEL_PARAMETER_ERROR", CONTACT, false, UNUSED),
    x(18, "ROBUST_CHANNEL_BUS_MASTER_TIMEOUT_ERROR", CONTACT, false, UNUSED),
    x(19, "ROBUST_CHANNEL_DISP_MISSED_NOTIFIER", CONTACT, false, UNUSED),
    x(20, "ROBUST_CHANNEL_MPEG_ERROR_SW_METHOD", CONTACT, false, UNUSED),
    x(21, "ROBUST_CHANNEL_ME_ERROR_SW_METHOD", CONTACT, false, UNUSED),
    x(22, "ROBUST_CHANNEL_VP_ERROR_SW_METHOD", CONTACT, false, UNUSED),
    x(23, "ROBUST_CHANNEL_RC_LOGGING_ENABLED", CONTACT, false, UNUSED),
    x(24, "ROBUST_CHANNEL_GR_SEMAPHORE_TIMEOUT", CONTACT, false, UNUSED),
    x(25, "ROBUST_CHANNEL_GR_ILLEGAL_NOTIFY", APP, false, "invalid or illegal push buffer stream"),
    x(26, "ROBUST_CHANNEL_FIFO_ERROR_FBISTATE_TIMEOUT", CONTACT, false, UNUSED),
    x(27, "ROBUST_CHANNEL_VP_ERROR", CONTACT, false, UNUSED),
    x(28, "ROBUST_CHANNEL_VP2_ERROR", CONTACT, false, UNUSED),
    x(29, "ROBUST_CHANNEL_BSP_ERROR", CONTACT, false, UNUSED),
    x(30, "ROBUST_CHANNEL_BAD_ADDR_ACCESS", CONTACT, false, UNUSED),
    x(31, "ROBUST_CHANNEL_FIFO_ERROR_MMU_ERR_FLT", APP, false, "GPU memory page fault (usually an application fault)"),
    x(32, "ROBUST_CHANNEL_PBDMA_ERROR", APP, false, "invalid or corrupted push buffer stream"),
    x(33, "ROBUST_CHANNEL_SEC_ERROR", CONTACT, false, UNUSED),
    x(34, "ROBUST_CHANNEL_MSVLD_ERROR", CONTACT, false, UNUSED),
    x(35, "ROBUST_CHANNEL_MSPDEC_ERROR", CONTACT, false, UNUSED),
    x(36, "ROBUST_CHANNEL_MSPPP_ERROR", CONTACT, false, UNUSED),
    x(37, "ROBUST_CHANNEL_FECS_ERR_UNIMP_FIRMWARE_METHOD", IGNORE, false, "driver firmware error"),
    x(38, "ROBUST_CHANNEL_FECS_ERR_WATCHDOG_TIMEOUT", IGNORE, false, "driver firmware error"),
    x(39, "ROBUST_CHANNEL_CE0_ERROR", APP, false, "copy engine exception"),
    x(40, "ROBUST_CHANNEL_CE1_ERROR", APP, false, "copy engine exception"),
    x(41, "ROBUST_CHANNEL_CE2_ERROR", APP, false, "copy engine exception"),
    x(42, "ROBUST_CHANNEL_VIC_ERROR", CONTACT, false, UNUSED),
    x(43, "ROBUST_CHANNEL_RESETCHANNEL_VERIF_ERROR", IGNORE, false, "GPU stopped processing (an application fault)"),
    x(44, "ROBUST_CHANNEL_GR_FAULT_DURING_CTXSW", IGNORE, false, "graphics engine fault during a context switch"),
    x(45, "ROBUST_CHANNEL_PREEMPTIVE_REMOVAL", "WORKFLOW_XID_45", false, "preemptive cleanup after earlier errors or an aborted application"),
    x(46, "ROBUST_CHANNEL_GPU_TIMEOUT_ERROR", RESET, false, "GPU stopped processing"),
    x(47, "ROBUST_CHANNEL_NVENC0_ERROR", CONTACT, false, UNUSED),
    x(48, "ROBUST_CHANNEL_GPU_ECC_DBE", "WORKFLOW_XID_48", true, "double-bit ECC error"),
    x(49, "SILENT_RUNNING_CONSTANT_LEVEL_SET_BY_REGISTRY", CONTACT, false, UNUSED),
    x(50, "SILENT_RUNNING_LEVEL_TRANSITION_DUE_TO_RC_ERROR", CONTACT, false, UNUSED),
    x(51, "SILENT_RUNNING_STRESS_TEST_FAILURE", CONTACT, false, UNUSED),
    x(52, "SILENT_RUNNING_LEVEL_TRANS_DUE_TO_TEMP_RISE", CONTACT, false, UNUSED),
    x(53, "SILENT_RUNNING_TEMP_REDUCED_CLOCKING", CONTACT, false, UNUSED),
    x(54, "SILENT_RUNNING_PWR_REDUCED_CLOCKING", "CHECK_MECHANICALS", false, "auxiliary power is not connected to the GPU board"),
    x(55, "SILENT_RUNNING_TEMPERATURE_READ_ERROR", CONTACT, false, UNUSED),
    x(56, "DISPLAY_CHANNEL_EXCEPTION", CONTACT, false, UNUSED),
    x(57, "FB_LINK_TRAINING_FAILURE_ERROR", CONTACT, false, UNUSED),
    x(58, "FB_MEMORY_ERROR", CONTACT, false, UNUSED),
    x(59, "PMU_ERROR", CONTACT, false, UNUSED),
    x(60, "ROBUST_CHANNEL_SEC2_ERROR", APP, false, "video processor exception"),
    x(61, "PMU_BREAKPOINT", CONTACT, false, UNUSED),
    x(62, "PMU_HALT_ERROR", RESET, true, "internal micro-controller halt"),
    x(63, "INFOROM_DRAM_RETIREMENT_EVENT", IGNORE, true, "GPU memory remapping event"),
    x(64, "INFOROM_DRAM_RETIREMENT_FAILURE", RESET, true, "GPU memory remapping failure"),
    x(65, "ROBUST_CHANNEL_NVENC1_ERROR", CONTACT, false, UNUSED),
    x(66, "ROBUST_CHANNEL_FECS_ERR_REG_ACCESS_VIOLATION", IGNORE, false, "illegal access by the driver"),
    x(67, "ROBUST_CHANNEL_FECS_ERR_VERIF_VIOLATION", IGNORE, false, "illegal access by the driver"),
    x(68, "ROBUST_CHANNEL_NVDEC0_ERROR", APP, false, "video decoder (NVDEC0) exception"),
    x(69, "ROBUST_CHANNEL_GR_CLASS_ERROR", APP, false, "graphics engine class error"),
    x(70, "ROBUST_CHANNEL_CE3_ERROR", APP, false, "copy engine 3 error"),
    x(71, "ROBUST_CHANNEL_CE4_ERROR", APP, false, "copy engine 4 error"),
    x(72, "ROBUST_CHANNEL_CE5_ERROR", APP, false, "copy engine 5 error"),
    x(73, "ROBUST_CHANNEL_NVENC2_ERROR", CONTACT, false, UNUSED),
    x(74, "NVLINK_ERROR", "WORKFLOW_NVLINK_ERR", true, "NVLink error"),
    x(75, "ROBUST_CHANNEL_CE6_ERROR", APP, false, "copy engine 6 error"),
    x(76, "ROBUST_CHANNEL_CE7_ERROR", APP, false, "copy engine 7 error"),
    x(77, "ROBUST_CHANNEL_CE8_ERROR", APP, false, "copy engine 8 error"),
    x(78, "VGPU_START_ERROR", "UPDATE_SWFW", false, "vGPU start error"),
    x(79, "ROBUST_CHANNEL_GPU_HAS_FALLEN_OFF_THE_BUS", "RESTART_BM", true, "GPU has fallen off the bus"),
    x(80, "PBDMA_PUSHBUFFER_CRC_MISMATCH", APP, false, "corrupted data sent to the GPU"),
    x(81, "ROBUST_CHANNEL_VGA_SUBSYSTEM_ERROR", CONTACT, false, UNUSED),
    x(82, "ROBUST_CHANNEL_NVJPG0_ERROR", APP, false, "JPEG engine (NVJPG0) error"),
    x(83, "ROBUST_CHANNEL_NVDEC1_ERROR", APP, false, "video decoder (NVDEC1) error"),
    x(84, "ROBUST_CHANNEL_NVDEC2_ERROR", APP, false, "video decoder (NVDEC2) error"),
    x(85, "ROBUST_CHANNEL_CE9_ERROR", APP, false, "copy engine 9 error"),
    x(86, "ROBUST_CHANNEL_OFA0_ERROR", APP, false, "optical flow accelerator (OFA) exception"),
    x(87, "NVTELEMETRY_DRIVER_REPORT", CONTACT, false, UNUSED),
    x(88, "ROBUST_CHANNEL_NVDEC3_ERROR", APP, false, "video decoder (NVDEC3) error"),
    x(89, "ROBUST_CHANNEL_NVDEC4_ERROR", APP, false, "video decoder (NVDEC4) error"),
    x(90, "LTC_ERROR", CONTACT, false, UNUSED),
    x(91, "RESERVED_XID", CONTACT, false, UNUSED),
    x(92, "EXCESSIVE_SBE_INTERRUPTS", IGNORE, false, "high single-bit ECC error rate"),
    x(93, "INFOROM_ERASE_LIMIT_EXCEEDED", IGNORE, false, "InfoROM wear limit reached (non-fatal)"),
    x(94, "ROBUST_CHANNEL_CONTAINED_ERROR", APP, true, "contained memory error"),
    x(95, "ROBUST_CHANNEL_UNCONTAINED_ERROR", RESET, true, "uncontained memory error"),
    x(96, "ROBUST_CHANNEL_NVDEC5_ERROR", APP, false, "video decoder (NVDEC5) error"),
    x(97, "ROBUST_CHANNEL_NVDEC6_ERROR", APP, false, "video decoder (NVDEC6) error"),
    x(98, "ROBUST_CHANNEL_NVDEC7_ERROR", APP, false, "video decoder (NVDEC7) error"),
    x(99, "ROBUST_CHANNEL_NVJPG1_ERROR", APP, false, "JPEG engine (NVJPG1) error"),
    x(100, "ROBUST_CHANNEL_NVJPG2_ERROR", APP, false, "JPEG engine (NVJPG2) error"),
    x(101, "ROBUST_CHANNEL_NVJPG3_ERROR", APP, false, "JPEG engine (NVJPG3) error"),
    x(102, "ROBUST_CHANNEL_NVJPG4_ERROR", APP, false, "JPEG engine (NVJPG4) error"),
    x(103, "ROBUST_CHANNEL_NVJPG5_ERROR", APP, false, "JPEG engine (NVJPG5) error"),
    x(104, "ROBUST_CHANNEL_NVJPG6_ERROR", APP, false, "JPEG engine (NVJPG6) error"),
    x(105, "ROBUST_CHANNEL_NVJPG7_ERROR", APP, false, "JPEG engine (NVJPG7) error"),
    x(106, "SMBPBI_TEST_MESSAGE", IGNORE, false, "SMBPBI test message"),
    x(107, "SMBPBI_TEST_MESSAGE_SILENT", IGNORE, false, "SMBPBI test message (silent)"),
    x(108, "NVLINK_REMOTE_TRANSLATION_ERROR", IGNORE, false, UNUSED),
    x(109, "ROBUST_CHANNEL_CTXSW_TIMEOUT_ERROR", RESET, true, "context switch timeout"),
    x(110, "SEC_FAULT_ERROR", RESET, true, "security fault"),
    x(111, "BUNDLE_ERROR_EVENT", CONTACT, false, UNUSED),
    x(112, "DISP_SUPERVISOR_ERROR", CONTACT, false, UNUSED),
    x(113, "DP_LT_FAILURE", CONTACT, false, UNUSED),
    x(114, "HEAD_RG_UNDERFLOW", CONTACT, false, UNUSED),
    x(115, "CORE_CHANNEL_REGS", CONTACT, false, UNUSED),
    x(116, "WINDOW_CHANNEL_REGS", CONTACT, false, UNUSED),
    x(117, "CURSOR_CHANNEL_REGS", CONTACT, false, UNUSED),
    x(118, "HEAD_REGS", CONTACT, false, UNUSED),
    x(119, "GSP_RPC_TIMEOUT", RESET, false, "GSP RPC timeout"),
    x(120, "GSP_ERROR", RESET, true, "GSP error"),
    x(121, "C2C_ERROR", IGNORE, false, "corrected errors on the C2C link to the CPU"),
    x(122, "SPI_PMU_RPC_READ_FAIL", CONTACT, false, UNUSED),
    x(123, "SPI_PMU_RPC_WRITE_FAIL", CONTACT, false, UNUSED),
    x(124, "SPI_PMU_RPC_ERASE_FAIL", CONTACT, false, UNUSED),
    x(125, "INFOROM_FS_ERROR", CONTACT, false, UNUSED),
    x(126, "ROBUST_CHANNEL_CE10_ERROR", APP, false, "copy engine 10 error"),
    x(127, "ROBUST_CHANNEL_CE11_ERROR", APP, false, "copy engine 11 error"),
    x(128, "ROBUST_CHANNEL_CE12_ERROR", APP, false, "copy engine 12 error"),
    x(129, "ROBUST_CHANNEL_CE13_ERROR", APP, false, "copy engine 13 error"),
    x(130, "ROBUST_CHANNEL_CE14_ERROR", APP, false, "copy engine 14 error"),
    x(131, "ROBUST_CHANNEL_CE15_ERROR", APP, false, "copy engine 15 error"),
    x(132, "ROBUST_CHANNEL_CE16_ERROR", APP, false, "copy engine 16 error"),
    x(133, "ROBUST_CHANNEL_CE17_ERROR", APP, false, "copy engine 17 error"),
    x(134, "ROBUST_CHANNEL_CE18_ERROR", APP, false, "copy engine 18 error"),
    x(135, "ROBUST_CHANNEL_CE19_ERROR", APP, false, "copy engine 19 error"),
    x(136, "ALI_TRAINING_FAIL", RESET, true, "NVLink link training failed"),
    x(137, "NVLINK_PRIV_ERR", IGNORE, false, "NVLink privilege error (usually an application fault)"),
    x(138, "ROBUST_CHANNEL_DLA_ERROR", CONTACT, false, UNUSED),
    x(139, "ROBUST_CHANNEL_OFA1_ERROR", APP, false, "optical flow accelerator (OFA1) error"),
    x(140, "UNRECOVERABLE_ECC_ERROR_ESCAPE", RESET, false, "unrecovered ECC error"),
    x(141, "ROBUST_CHANNEL_FAST_PATH_ERROR", IGNORE, false, "CUDA fast path error"),
    x(142, "ROBUST_CHANNEL_NVENC3_ERROR", CONTACT, false, "video encoder (NVENC3) error"),
    x(143, "GPU_INIT_ERROR", RESET, true, "GPU initialization error"),
    x(144, "NVLINK_SAW_ERROR", NVLINK5, true, "NVLink SAW error"),
    x(145, "NVLINK_RLW_ERROR", NVLINK5, true, "NVLink RLW error"),
    x(146, "NVLINK_TLW_ERROR", NVLINK5, true, "NVLink TLW error"),
    x(147, "NVLINK_TREX_ERROR", NVLINK5, true, "NVLink TREX error"),
    x(148, "NVLINK_NVLPW_CTRL_ERROR", NVLINK5, true, "NVLink NVLPW_CTRL error"),
    x(149, "NVLINK_NETIR_ERROR", NVLINK5, true, "NVLink NETIR error"),
    x(150, "NVLINK_MSE_ERROR", NVLINK5, true, "NVLink MSE error"),
    x(151, "ROBUST_CHANNEL_KEY_ROTATION_ERROR", "RESTART_VM", false, "key rotation error (confidential computing)"),
    x(152, "ROBUST_CHANNEL_DLA_SMMU_ERROR", IGNORE, false, "DLA SMMU error"),
    x(153, "ROBUST_CHANNEL_DLA_TIMEOUT", IGNORE, false, "DLA timeout"),
    x(154, "GPU_RECOVERY_ACTION_CHANGED", "XID_154", false, "GPU recovery action changed"),
    x(155, "NVLINK_SW_DEFINED_ERROR", RESET, true, "NVLink link brought down on purpose (software-defined error)"),
    x(156, "RESOURCE_RETIREMENT_EVENT", RESET, true, "resource retirement event"),
    x(157, "RESOURCE_RETIREMENT_FAILURE", IGNORE, false, "resource retirement failure (no spare resources left)"),
    x(158, "GPU_FATAL_TIMEOUT", RESET, true, "GPU fatal timeout"),
    x(159, "ROBUST_CHANNEL_CHI_NON_DATA_ERROR", "CHECK_UVM", true, "CHI non-data error"),
    // See the module doc: the reading of the current catalog (node reboot); the
    // R575-era copy said IGNORE.
    x(160, "CHANNEL_RETIREMENT_EVENT", "RESTART_BM", true, "channel retirement event (repair pending until the node reboots)"),
    x(161, "CHANNEL_RETIREMENT_FAILURE", IGNORE, true, "channel retirement failure"),
    x(162, "PSHC_REENGAGED", "", false, "power smoothing circuitry re-engaged"),
    x(163, "PSHC_DISENGAGED", "", false, "power smoothing circuitry disengaged"),
    x(164, "PSHC_LOW_LIFETIME", "", false, "power smoothing circuitry near the end of its lifetime"),
    x(165, "PSHC_ZERO_LIFETIME", "", false, "power smoothing circuitry lifetime exhausted"),
    x(166, "NVLINK_SECURE_CRYPTO_ERR", "", false, "confidential-computing traffic before the link was set up for encryption"),
    x(167, "PCIE_FATAL_TIMEOUT", "", false, "PCIe fatal timeout"),
    x(168, "REDUCED_GPU_MEMORY_CAPACITY", "", false, "errors in the write-protected region; GPU memory capacity reduced"),
    x(169, "SEC2_HALT_ERROR", "", false, "internal micro-controller (SEC2) halt"),
    x(170, "NVLINK_SECURE_OTHER", "", false, "interrupt seen in confidential-computing mode"),
    x(171, "UNCORRECTABLE_DRAM_ERROR", "", false, "uncorrectable DRAM error (details of an XID 48)"),
    x(172, "UNCORRECTABLE_SRAM_ERROR", "", false, "uncorrectable SRAM error (details of an XID 48)"),
];

/// The table as Markdown, as `docs/gpu-metrics.md` lists it (a test keeps them equal).
pub fn markdown() -> String {
    let mut out = String::from(
        "| XID | mnemonic | meaning | NVIDIA bucket | action | class | 154 |\n|---|---|---|---|---|---|---|\n",
    );
    for e in CATALOG.iter() {
        let class = match e.default_class() {
            XidClass::Critical => "critical",
            XidClass::Warn => "warn",
            XidClass::Ignore => "ignore",
        };
        out.push_str(&format!(
            "| {} | `{}` | {} | {} | {} | {} | {} |\n",
            e.code,
            e.mnemonic,
            e.message,
            if e.bucket.is_empty() { "—" } else { e.bucket },
            e.action(),
            class,
            if e.linked_154 { "yes" } else { "" },
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn with_action(a: GpuAction) -> BTreeSet<u64> {
        CATALOG
            .iter()
            .filter(|e| e.action() == a)
            .map(|e| e.code)
            .collect()
    }

    #[test]
    fn the_table_is_dense_sorted_and_unique() {
        for (i, e) in CATALOG.iter().enumerate() {
            assert_eq!(e.code, i as u64 + 1, "{e:?}");
            assert!(!e.mnemonic.is_empty() && !e.message.is_empty(), "{e:?}");
        }
        assert_eq!(
            lookup(79).map(|e| e.mnemonic),
            Some("ROBUST_CHANNEL_GPU_HAS_FALLEN_OFF_THE_BUS")
        );
        assert_eq!(lookup(0), None);
        assert_eq!(lookup(173), None);
        assert_eq!(describe(9999), "not in NVIDIA's XID catalog");
    }

    #[test]
    fn node_reboot_bucket_is_exactly_79_and_160() {
        assert_eq!(with_action(GpuAction::Reboot), BTreeSet::from([79, 160]));
    }

    #[test]
    fn gpu_reset_bucket_is_exactly_the_catalogs_list() {
        assert_eq!(
            with_action(GpuAction::Reset),
            BTreeSet::from([46, 62, 64, 95, 109, 110, 119, 120, 136, 140, 143, 155, 156, 158])
        );
    }

    #[test]
    fn workflow_xids_are_investigated_and_app_xids_restart_the_application() {
        for code in [45, 48, 74, 144, 145, 146, 147, 148, 149, 150] {
            let e = lookup(code).unwrap();
            assert!(e.bucket.starts_with("WORKFLOW_"), "{e:?}");
            assert_eq!(e.action(), GpuAction::Investigate, "{e:?}");
        }
        for code in [13, 31, 94] {
            assert_eq!(
                lookup(code).unwrap().action(),
                GpuAction::RestartApp,
                "XID {code}"
            );
        }
    }

    #[test]
    fn classes_follow_the_actions() {
        let class = |c| lookup(c).unwrap().default_class();
        for c in [79, 160, 46, 62, 119, 158] {
            assert_eq!(class(c), XidClass::Critical, "XID {c}");
        }
        for c in [13, 31, 43, 63, 92, 94, 45, 154] {
            assert_eq!(class(c), XidClass::Ignore, "XID {c}");
        }
        for c in [48, 74, 144, 54, 167] {
            assert_eq!(class(c), XidClass::Warn, "XID {c}");
        }
    }

    #[test]
    fn the_docs_list_the_same_table() {
        let doc = include_str!("../../../../docs/gpu-metrics.md");
        assert!(
            doc.contains(&markdown()),
            "docs/gpu-metrics.md is out of date; paste this table into it:\n{}",
            markdown()
        );
        assert!(
            doc.contains(CATALOG_VERSION),
            "docs name the catalog version"
        );
    }
}
