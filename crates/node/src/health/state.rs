//! GPU failure state that survives agent restarts: `STATE_DIR/gpu-health.json`.
//!
//! Invariants and trade-offs:
//! - The file is keyed by the boot id (`/proc/sys/kernel/random/boot_id`): state written
//!   during another boot is dropped on load, because a reboot clears every GPU fault
//!   corral holds. Without a boot id the agent cannot tell a restart from a reboot, so it
//!   keeps nothing (and says so once).
//! - Per GPU UUID it keeps what a restart would otherwise forget: the critical XIDs held
//!   since this boot, the XID counts, whether the GPU was unreadable, the last volatile
//!   ECC counts of a GPU with a held XID (so a reset while the agent was down is still
//!   seen as the counters going down), and the NVML recovery action last asked for (so
//!   its return to `none` after a restart still counts as recovered). Warn-class XIDs
//!   and growing counters are not kept: they clear by themselves within the quiet period.
//! - It also keeps the last kernel-log sequence number counted, per source path, so
//!   re-reading `/dev/kmsg` from the start after a restart counts nothing twice.
//! - Writes are atomic (a temporary file in the same directory, fsync, rename) and
//!   happen only when the content changed, so a steady node never writes.
//! - A file that cannot be read, does not parse, or has another format is never
//!   overwritten: it is renamed aside (`gpu-health.json.bad-UNIXMS`) with a warning and
//!   the agent starts fresh; if it cannot be renamed, the agent keeps its state in
//!   memory only. Nothing is lost, nothing panics.
//! - Failing writes are logged once at warn (then at debug) and retried on the next
//!   change; the agent keeps judging from memory.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use corral_proto::model::GpuAction;

/// The state file's name inside the agent's `state_dir`.
pub const FILE_NAME: &str = "gpu-health.json";

/// The format this agent writes and reads.
pub const FORMAT: u32 = 1;

/// Where Linux says which boot this is.
pub const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Snapshot {
    pub format: u32,
    pub boot_id: String,
    /// By GPU UUID (whole GPUs; MIG instances carry no XIDs of their own).
    pub gpus: BTreeMap<String, GpuState>,
    pub kernel_log: Option<KernelMark>,
    /// NVSwitch SXids this boot.
    #[serde(default)]
    pub sxids: Vec<SxidTally>,
    /// Kernel-log XIDs this boot for a PCI address no GPU has.
    #[serde(default)]
    pub unmatched_xids: u64,
}

/// What is kept about one GPU.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GpuState {
    pub index: u32,
    pub name: String,
    pub serial: Option<String>,
    pub pci_bus_id: Option<String>,
    /// Lost or no longer enumerated when last seen.
    pub gone: bool,
    /// Critical XIDs held since this boot, until a reset is observed.
    pub critical_xids: Vec<u64>,
    /// XIDs seen this boot, by code.
    pub xid_counts: BTreeMap<u64, u64>,
    pub xid_last: Option<u64>,
    /// Volatile ECC counts, kept only while a critical XID is held.
    pub ecc_corrected_volatile: Option<u64>,
    pub ecc_uncorrected_volatile: Option<u64>,
    /// The last NVML recovery action other than `none`, until it returns to `none`.
    pub recovery_pending: Option<GpuAction>,
}

/// How far a kernel-log source has been counted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelMark {
    pub path: String,
    pub last_seq: u64,
}

/// SXids of one switch and code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SxidTally {
    pub pci_bus_id: String,
    pub sxid: u64,
    pub fatal: bool,
    pub count: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read the boot id from {path}: {source}")]
    BootId {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a GPU state file: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path} has format {found}; this agent reads format {FORMAT}")]
    Format { path: PathBuf, found: u32 },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// This boot's id.
pub fn boot_id() -> Result<String, StateError> {
    std::fs::read_to_string(BOOT_ID_PATH)
        .map(|s| s.trim().to_string())
        .map_err(|source| StateError::BootId {
            path: BOOT_ID_PATH.into(),
            source,
        })
}

/// The state file of one agent.
#[derive(Debug)]
pub struct StateStore {
    path: PathBuf,
    boot_id: String,
    /// What the file holds now (as far as this agent wrote or read it).
    saved: Option<Snapshot>,
    /// A bad file could not be moved aside: never write over it.
    read_only: bool,
    write_warned: bool,
}

impl StateStore {
    /// Opens `dir/gpu-health.json` for this boot. The error is only about the boot id;
    /// everything else is logged and handled (see the module doc).
    pub fn open(dir: &Path) -> Result<(StateStore, Option<Snapshot>), StateError> {
        Ok(Self::open_with_boot_id(dir, boot_id()?))
    }

    /// Opens the state file as if this were boot `boot_id`; returns what it held for
    /// this boot.
    pub fn open_with_boot_id(dir: &Path, boot_id: String) -> (StateStore, Option<Snapshot>) {
        let path = dir.join(FILE_NAME);
        let mut store = StateStore {
            path,
            boot_id,
            saved: None,
            read_only: false,
            write_warned: false,
        };
        let loaded = match store.read() {
            Ok(None) => None,
            Ok(Some(snap)) if snap.boot_id != store.boot_id => {
                tracing::info!(path = %store.path.display(), written_boot = %snap.boot_id, boot = %store.boot_id, "the node rebooted since the GPU state was written; it starts fresh");
                None
            }
            Ok(Some(snap)) => {
                tracing::info!(path = %store.path.display(), gpus = snap.gpus.len(), "GPU failure state restored");
                store.saved = Some(snap.clone());
                Some(snap)
            }
            Err(e) => {
                store.move_aside(&e);
                None
            }
        };
        (store, loaded)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read(&self) -> Result<Option<Snapshot>, StateError> {
        let text = match std::fs::read(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateError::Read {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let snap: Snapshot = serde_json::from_slice(&text).map_err(|source| StateError::Parse {
            path: self.path.clone(),
            source,
        })?;
        if snap.format != FORMAT {
            return Err(StateError::Format {
                path: self.path.clone(),
                found: snap.format,
            });
        }
        Ok(Some(snap))
    }

    /// Keeps a file this agent cannot use, under another name.
    fn move_aside(&mut self, why: &StateError) {
        let aside = self
            .path
            .with_extension(format!("json.bad-{}", corral_proto::model::unix_ms()));
        match std::fs::rename(&self.path, &aside) {
            Ok(()) => {
                tracing::warn!(error = %why, kept_as = %aside.display(), "GPU state file unusable; kept it aside and starting fresh");
            }
            Err(e) => {
                tracing::warn!(error = %why, rename_error = %e, "GPU state file unusable and cannot be moved aside; GPU state will not survive an agent restart");
                self.read_only = true;
            }
        }
    }

    /// Writes `snap` (with this boot's id) if it differs from what the file holds.
    pub fn save(&mut self, mut snap: Snapshot) {
        snap.format = FORMAT;
        snap.boot_id.clone_from(&self.boot_id);
        if self.read_only || self.saved.as_ref() == Some(&snap) {
            return;
        }
        match self.write(&snap) {
            Ok(()) => {
                if self.write_warned {
                    tracing::info!(path = %self.path.display(), "GPU state written again");
                    self.write_warned = false;
                }
                self.saved = Some(snap);
            }
            Err(e) if !self.write_warned => {
                self.write_warned = true;
                tracing::warn!(error = %e, "cannot write the GPU state; it will not survive an agent restart until this works");
            }
            Err(e) => tracing::debug!(error = %e, "GPU state write failed again"),
        }
    }

    fn write(&self, snap: &Snapshot) -> Result<(), StateError> {
        let err = |source| StateError::Write {
            path: self.path.clone(),
            source,
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let tmp = self.path.with_extension("json.tmp");
        let json = serde_json::to_vec_pretty(snap).map_err(|e| err(std::io::Error::other(e)))?;
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(&json)
            .and_then(|()| f.sync_all())
            .map_err(err)?;
        std::fs::rename(&tmp, &self.path).map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap_with_xid(xid: u64) -> Snapshot {
        let mut s = Snapshot::default();
        s.gpus.insert(
            "GPU-0".into(),
            GpuState {
                critical_xids: vec![xid],
                xid_counts: BTreeMap::from([(xid, 1)]),
                ..GpuState::default()
            },
        );
        s
    }

    #[test]
    fn state_written_in_this_boot_is_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, loaded) = StateStore::open_with_boot_id(dir.path(), "boot-a".into());
        assert_eq!(loaded, None);
        store.save(snap_with_xid(62));
        let (_, loaded) = StateStore::open_with_boot_id(dir.path(), "boot-a".into());
        let loaded = loaded.expect("state restored");
        assert_eq!(loaded.gpus["GPU-0"].critical_xids, [62]);
        assert_eq!(loaded.boot_id, "boot-a");
        assert_eq!(loaded.format, FORMAT);
    }

    #[test]
    fn state_of_another_boot_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = StateStore::open_with_boot_id(dir.path(), "boot-a".into());
        store.save(snap_with_xid(79));
        let (_, loaded) = StateStore::open_with_boot_id(dir.path(), "boot-b".into());
        assert_eq!(loaded, None);
    }

    #[test]
    fn an_unreadable_state_file_is_kept_aside_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), "{ not json").unwrap();
        let (mut store, loaded) = StateStore::open_with_boot_id(dir.path(), "b".into());
        assert_eq!(loaded, None);
        let aside: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("gpu-health.json.bad-"))
            .collect();
        assert_eq!(aside.len(), 1, "{aside:?}");
        let kept = std::fs::read_to_string(dir.path().join(&aside[0])).unwrap();
        assert_eq!(kept, "{ not json", "nothing lost");
        store.save(snap_with_xid(62));
        let (_, loaded) = StateStore::open_with_boot_id(dir.path(), "b".into());
        assert!(loaded.is_some(), "a fresh file is written in its place");
    }

    #[test]
    fn a_file_of_another_format_is_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(FILE_NAME),
            r#"{"format": 99, "boot_id": "b", "gpus": {}, "kernel_log": null}"#,
        )
        .unwrap();
        let (_, loaded) = StateStore::open_with_boot_id(dir.path(), "b".into());
        assert_eq!(loaded, None);
        assert!(!dir.path().join(FILE_NAME).exists());
    }

    #[test]
    fn an_unchanged_state_is_not_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = StateStore::open_with_boot_id(dir.path(), "b".into());
        store.save(snap_with_xid(62));
        let path = dir.path().join(FILE_NAME);
        std::fs::write(&path, "sentinel").unwrap();
        store.save(snap_with_xid(62));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "sentinel");
        store.save(snap_with_xid(95));
        assert_ne!(std::fs::read_to_string(&path).unwrap(), "sentinel");
    }

    #[test]
    fn a_state_dir_that_cannot_be_written_is_an_error_logged_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, "x").unwrap();
        let (mut store, loaded) = StateStore::open_with_boot_id(&file, "b".into());
        assert_eq!(loaded, None);
        store.save(snap_with_xid(62));
        store.save(snap_with_xid(95));
        assert!(store.saved.is_none());
    }
}
