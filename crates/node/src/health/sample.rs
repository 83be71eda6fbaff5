//! Host sampling with `sysinfo`: facts that rarely change and the live [`HostSample`].
//!
//! Invariants and trade-offs:
//! - [`HostSampler`] keeps one `System`, `Disks` and `Components` for its whole life:
//!   CPU use is a difference between two refreshes, and re-discovering everything per
//!   sample would cost more than the sample itself.
//! - CPU use is only meaningful when the two refreshes are at least
//!   [`sysinfo::MINIMUM_CPU_UPDATE_INTERVAL`] apart. `new()` takes the first refresh;
//!   `sample()` sleeps out whatever remains of that interval, so even the first sample
//!   after start-up is real. Sampling is therefore blocking (at most ~200 ms, only when
//!   called in quick succession) and belongs on a blocking thread.
//! - Filesystems are the ones that hold real storage an operator can fill:
//!   - pseudo and virtual filesystems (proc, sysfs, cgroup, devpts, tracefs, squashfs
//!     snaps, ...) and anything reporting a size of 0 are dropped;
//!   - `tmpfs` is dropped except at [`TMPFS_KEPT`] (`/dev/shm`, `/tmp`, `/var/tmp`):
//!     a full `/dev/shm` breaks NCCL and MPI jobs, a full RAM-backed `/tmp` breaks
//!     everything else, while the many small tmpfs under `/run` are the system's own.
//!     sysinfo on Linux lists tmpfs only with its `linux-tmpfs` feature;
//!   - network filesystems (NFS, CIFS) are not listed: sysinfo leaves them out by
//!     default because `statvfs` on a hard-mounted, unreachable share hangs, which
//!     would stall every report of the node;
//!   - a mount point listed more than once (stacked mounts) appears once, as the last
//!     listed mount, which is the one a path resolves to;
//!   - the list is sorted by mount point, so it does not reorder between samples.
//! - CPU temperatures are the kernel's sensors that belong to the CPU (coretemp,
//!   k10temp, ..., anything labelled "cpu"), sorted by label; NVMe, GPU and board
//!   sensors are left out. A kernel (or VM) that exposes none gives an empty list.

use std::thread;
use std::time::Instant;

use sysinfo::{
    Components, CpuRefreshKind, DiskRefreshKind, Disks, MemoryRefreshKind, RefreshKind, System,
    MINIMUM_CPU_UPDATE_INTERVAL,
};

use corral_proto::model::{
    unix_ms, Filesystem, HostFacts, HostSample, LoadAverage, Memory, Temperature,
};

/// tmpfs mount points that are kept because filling them breaks jobs.
pub const TMPFS_KEPT: &[&str] = &["/dev/shm", "/tmp", "/var/tmp"];

/// Filesystem types that never hold user data.
const PSEUDO_FS: &[&str] = &[
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "debugfs",
    "devfs",
    "devpts",
    "devtmpfs",
    "efivarfs",
    "fusectl",
    "fuse.lxcfs",
    "hugetlbfs",
    "mqueue",
    "nsfs",
    "proc",
    "pstore",
    "ramfs",
    "rootfs",
    "rpc_pipefs",
    "securityfs",
    "squashfs",
    "sysfs",
    "tracefs",
];

/// Kernel drivers (hwmon names, thermal zone types) whose sensors measure the CPU.
const CPU_SENSOR_DRIVERS: &[&str] = &[
    "coretemp",
    "k10temp",
    "k8temp",
    "zenpower",
    "cpu_thermal",
    "cpu-thermal",
    "x86_pkg_temp",
    "soc_thermal",
];

fn disk_refresh() -> DiskRefreshKind {
    DiskRefreshKind::nothing().with_storage()
}

/// Reads this machine. One per process; see the module doc.
pub struct HostSampler {
    system: System,
    disks: Disks,
    components: Components,
    last_cpu_refresh: Instant,
}

impl Default for HostSampler {
    fn default() -> Self {
        Self::new()
    }
}

impl HostSampler {
    /// Discovers CPUs, memory, filesystems and sensors and takes the first CPU reading.
    pub fn new() -> Self {
        let system = System::new_with_specifics(
            RefreshKind::nothing()
                .with_cpu(CpuRefreshKind::everything())
                .with_memory(MemoryRefreshKind::everything()),
        );
        HostSampler {
            system,
            disks: Disks::new_with_refreshed_list_specifics(disk_refresh()),
            components: Components::new_with_refreshed_list(),
            last_cpu_refresh: Instant::now(),
        }
    }

    pub fn facts(&self) -> HostFacts {
        let hostname = hostname::get()
            .ok()
            .and_then(|h| h.into_string().ok())
            .or_else(System::host_name)
            .unwrap_or_default();
        let os = [System::name(), System::os_version()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
        let cpus = self.system.cpus();
        HostFacts {
            hostname,
            os,
            kernel: System::kernel_version().unwrap_or_default(),
            cpu_model: cpus
                .first()
                .map(|c| c.brand().trim().to_string())
                .unwrap_or_default(),
            cpu_cores: saturating_u32(cpus.len()),
            physical_cores: System::physical_core_count().map(saturating_u32),
            memory_total_bytes: self.system.total_memory(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    /// Takes one sample. Blocks for up to [`MINIMUM_CPU_UPDATE_INTERVAL`] when the
    /// previous CPU reading is more recent than that.
    pub fn sample(&mut self) -> HostSample {
        let since = self.last_cpu_refresh.elapsed();
        if since < MINIMUM_CPU_UPDATE_INTERVAL {
            thread::sleep(MINIMUM_CPU_UPDATE_INTERVAL - since);
        }
        self.system.refresh_cpu_usage();
        self.last_cpu_refresh = Instant::now();
        self.system.refresh_memory();
        self.disks.refresh_specifics(true, disk_refresh());
        self.components.refresh(true);

        let load = System::load_average();
        let s = &self.system;
        HostSample {
            taken_at_ms: unix_ms(),
            uptime_secs: System::uptime(),
            cpu_percent: s.global_cpu_usage(),
            per_core_percent: s.cpus().iter().map(|c| c.cpu_usage()).collect(),
            load: LoadAverage {
                one: load.one,
                five: load.five,
                fifteen: load.fifteen,
            },
            memory: Memory {
                total_bytes: s.total_memory(),
                used_bytes: s.used_memory(),
                available_bytes: s.available_memory(),
                swap_total_bytes: s.total_swap(),
                swap_used_bytes: s.used_swap(),
            },
            filesystems: real_filesystems(self.disks.list().iter().map(|d| Filesystem {
                mount: d.mount_point().to_string_lossy().into_owned(),
                device: d.name().to_string_lossy().into_owned(),
                fs_type: d.file_system().to_string_lossy().into_owned(),
                total_bytes: d.total_space(),
                available_bytes: d.available_space(),
            })),
            cpu_temperatures: cpu_temperatures(
                self.components
                    .list()
                    .iter()
                    .filter_map(|c| Some((c.label(), c.temperature()?))),
            ),
        }
    }
}

fn saturating_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Applies the filesystem policy of the module doc to mounts in mount-table order.
fn real_filesystems(mounts: impl Iterator<Item = Filesystem>) -> Vec<Filesystem> {
    let mut kept: Vec<Filesystem> = Vec::new();
    for fs in mounts {
        let wanted = fs.total_bytes > 0
            && !PSEUDO_FS.contains(&fs.fs_type.as_str())
            && (fs.fs_type != "tmpfs" || TMPFS_KEPT.contains(&fs.mount.as_str()));
        if !wanted {
            continue;
        }
        // A later mount at the same point hides the earlier one.
        kept.retain(|k| k.mount != fs.mount);
        kept.push(fs);
    }
    kept.sort_by(|a, b| a.mount.cmp(&b.mount));
    kept
}

fn is_cpu_sensor(label: &str) -> bool {
    let label = label.to_ascii_lowercase();
    let driver = label.split_whitespace().next().unwrap_or_default();
    CPU_SENSOR_DRIVERS.contains(&driver) || label.contains("cpu")
}

/// CPU sensors with a real reading, sorted by label.
fn cpu_temperatures<'a>(sensors: impl Iterator<Item = (&'a str, f32)>) -> Vec<Temperature> {
    let mut temps: Vec<Temperature> = sensors
        .filter(|(label, celsius)| celsius.is_finite() && is_cpu_sensor(label))
        .map(|(label, celsius)| Temperature {
            label: label.to_string(),
            celsius,
        })
        .collect();
    temps.sort_by(|a, b| a.label.cmp(&b.label));
    temps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fs(mount: &str, fs_type: &str, total: u64) -> Filesystem {
        Filesystem {
            mount: mount.into(),
            device: format!("dev-{fs_type}"),
            fs_type: fs_type.into(),
            total_bytes: total,
            available_bytes: total / 2,
        }
    }

    #[test]
    fn host_sampler_reads_this_machine() {
        let mut sampler = HostSampler::new();
        let facts = sampler.facts();
        assert!(facts.cpu_cores > 0, "{facts:?}");
        assert!(facts.memory_total_bytes > 0, "{facts:?}");
        assert!(!facts.hostname.is_empty(), "{facts:?}");
        assert_eq!(facts.agent_version, env!("CARGO_PKG_VERSION"));

        let sample = sampler.sample();
        assert!(sample.taken_at_ms > 0);
        assert_eq!(sample.per_core_percent.len(), facts.cpu_cores as usize);
        assert!((0.0..=100.0).contains(&sample.cpu_percent), "{sample:?}");
        assert!(sample.memory.total_bytes > 0, "{sample:?}");
        assert!(
            sample.memory.available_bytes <= sample.memory.total_bytes,
            "{sample:?}"
        );
        assert!(!sample.filesystems.is_empty(), "{sample:?}");
        assert!(sample.filesystems.iter().all(|f| f.total_bytes > 0));
        // A second sample right away still works (it waits out the CPU interval).
        assert!(sampler.sample().taken_at_ms >= sample.taken_at_ms);
    }

    #[test]
    fn pseudo_empty_and_duplicate_mounts_are_dropped_and_sorted() {
        let kept = real_filesystems(
            [
                fs("/var", "xfs", 10),
                fs("/proc", "proc", 10),
                fs("/", "ext4", 10),
                fs("/snap/core/1", "squashfs", 10),
                fs("/boot/efi", "vfat", 0),
                fs("/var", "overlay", 20),
            ]
            .into_iter(),
        );
        let seen: Vec<_> = kept
            .iter()
            .map(|f| (f.mount.as_str(), f.fs_type.as_str()))
            .collect();
        assert_eq!(seen, [("/", "ext4"), ("/var", "overlay")]);
    }

    #[test]
    fn tmpfs_is_kept_only_where_operators_care() {
        let kept = real_filesystems(
            [
                fs("/run/user/1000", "tmpfs", 10),
                fs("/dev/shm", "tmpfs", 10),
                fs("/tmp", "tmpfs", 10),
                fs("/sys/fs/cgroup", "tmpfs", 10),
            ]
            .into_iter(),
        );
        let mounts: Vec<_> = kept.iter().map(|f| f.mount.as_str()).collect();
        assert_eq!(mounts, ["/dev/shm", "/tmp"]);
    }

    #[test]
    fn only_cpu_sensors_with_readings_count_as_cpu_temperatures() {
        let temps = cpu_temperatures(
            [
                ("nvme Composite", 40.0),
                ("coretemp Package id 0", 55.0),
                ("k10temp Tctl", 60.0),
                ("amdgpu edge", 50.0),
                ("acpitz temp1", 30.0),
                ("cpu_thermal temp1", f32::NAN),
                ("CPU Die", 45.0),
            ]
            .into_iter(),
        );
        let labels: Vec<_> = temps.iter().map(|t| t.label.as_str()).collect();
        assert_eq!(labels, ["CPU Die", "coretemp Package id 0", "k10temp Tctl"]);
        assert!(cpu_temperatures(std::iter::empty()).is_empty());
    }
}
