//! Health sampling on the agent: what this machine looks like right now and whether it
//! is fit for work.
//!
//! - [`sample`] reads the host (CPU, load, memory, filesystems, CPU temperatures).
//! - [`gpu`] reads GPUs through a [`gpu::GpuSource`] (NVML, none, or a scripted fake).
//! - [`kmsg`] reads XIDs from the kernel log (`/dev/kmsg`), beside NVML's events.
//! - [`xid_catalog`] is NVIDIA's XID catalog as one table: each XID's action and class.
//! - [`device_health`] judges each GPU statefully (XIDs, growing counters, levels,
//!   NVML's recovery action); [`state`] keeps its failure state across agent restarts.
//! - [`checks`] runs host checks: required mounts and custom check executables.
//! - [`health`] judges the readings against operator [`health::Thresholds`].
//! - [`Sampler`] ties them into one [`NodeReport`].
//!
//! Invariants and trade-offs:
//! - Sampling is blocking: sysinfo reads `/proc` and `/sys`, may sleep out the minimum
//!   CPU-measurement interval (~200 ms), and NVML calls go to the driver. Callers on an
//!   async runtime must run [`Sampler::sample`] on a blocking thread
//!   (`tokio::task::spawn_blocking`), moving the `Sampler` in and back out.
//! - A GPU source failure never hides the host sample: the report then has no GPUs,
//!   `gpu_error` set and a degraded health, while the host readings stay current.
//! - The same host readings always give the same `Health`; see [`health`] for how to
//!   tell a changed condition from changed values. GPU verdicts carry state between
//!   samples (see [`device_health`]), which is why the [`Sampler`] owns the tracker.
//! - Custom checks run on their own threads ([`checks::CheckRunner`]); a sample only
//!   reads their latest results, so a hung check never stalls sampling.
//! - Kernel-log records are drained before the GPUs are read, so the GPU readings
//!   (NVML's recovery action above all) are never older than the XIDs they are judged
//!   with; records read while the GPU source fails wait for the next good sample
//!   (at most [`MAX_PENDING_KERNEL_RECORDS`], oldest dropped first, with a warning), so
//!   an XID logged while NVML is unreadable still lands on its GPU.

pub mod checks;
pub mod device_health;
pub mod gpu;
pub mod kmsg;
pub mod sample;
pub mod state;
pub mod verdict;
pub mod xid_catalog;

use std::time::{Duration, Instant};

use corral_proto::model::{GpuSample, HostFacts, NodeReport};

use device_health::{DevicePolicy, DeviceTracker};
use gpu::GpuSource;
use kmsg::{KernelLogStatus, KernelRecord};
use sample::HostSampler;
use verdict::Thresholds;

/// Host sampler, GPU source, device tracker, host checks and thresholds: everything
/// needed to build a report.
pub struct Sampler {
    host: HostSampler,
    gpu: Box<dyn GpuSource>,
    devices: DeviceTracker,
    checks: Option<checks::CheckRunner>,
    thresholds: Thresholds,
    /// Kernel-log records not yet judged (the GPU source failed since they arrived).
    kernel_pending: Vec<KernelRecord>,
    /// The kernel-log source's latest status; `None` without one.
    kernel_status: Option<KernelLogStatus>,
}

/// Kernel-log records kept while the GPU source fails.
pub const MAX_PENDING_KERNEL_RECORDS: usize = 10_000;

impl Sampler {
    /// Starts sampling this host (takes the first CPU reading) with the given GPU source
    /// and the default GPU policy (see [`Sampler::with_gpu_policy`]); starts the custom
    /// checks `thresholds` lists.
    pub fn new(thresholds: Thresholds, gpu: Box<dyn GpuSource>) -> Self {
        let policy = gpu::GpuConfig::default().policy(&thresholds);
        let checks =
            (!thresholds.checks.is_empty()).then(|| checks::CheckRunner::start(&thresholds.checks));
        Sampler {
            host: HostSampler::new(),
            gpu,
            devices: DeviceTracker::new(policy),
            checks,
            thresholds,
            kernel_pending: Vec::new(),
            kernel_status: None,
        }
    }

    /// Judges GPUs under `policy` (from [`gpu::GpuConfig::policy`]) from now on; with
    /// `policy.state_dir`, starting from the failure state kept there for this boot.
    pub fn with_gpu_policy(mut self, policy: DevicePolicy) -> Self {
        self.devices = DeviceTracker::new(policy);
        self
    }

    /// Waits until every custom check has run once, at most `within` (for `--once`).
    pub fn wait_for_checks(&self, within: Duration) {
        if let Some(c) = &self.checks {
            c.wait_first(within);
        }
    }

    /// Reads and judges the GPUs only: the devices with their health, or why the GPU
    /// source failed. Blocking.
    pub fn sample_gpus(&mut self) -> (Vec<GpuSample>, Option<String>) {
        if let Some(batch) = self.gpu.kernel_log() {
            self.kernel_pending.extend(batch.records);
            if self.kernel_pending.len() > MAX_PENDING_KERNEL_RECORDS {
                let dropped = self.kernel_pending.len() - MAX_PENDING_KERNEL_RECORDS;
                tracing::warn!(dropped, "too many kernel-log records while the GPUs are unreadable; dropping the oldest");
                self.kernel_pending.drain(..dropped);
            }
            self.kernel_status = Some(batch.status);
        }
        match self.gpu.sample() {
            Ok(mut gpus) => {
                let records = std::mem::take(&mut self.kernel_pending);
                let path = self
                    .kernel_status
                    .as_ref()
                    .map(|s| s.path.as_str())
                    .unwrap_or_default();
                self.devices
                    .observe_with(&mut gpus, path, &records, Instant::now());
                (gpus, None)
            }
            Err(e) => {
                tracing::warn!(source = self.gpu.name(), error = %e, "GPU sample failed");
                (Vec::new(), Some(e.to_string()))
            }
        }
    }

    pub fn facts(&self) -> HostFacts {
        self.host.facts()
    }

    /// The kernel-log XID source's status; `None` when the GPU source reads no kernel
    /// log.
    pub fn kernel_log_status(&self) -> Option<KernelLogStatus> {
        self.kernel_status.clone()
    }

    /// NVSwitch SXids counted this boot, and kernel-log XIDs for no GPU of this node.
    pub fn kernel_log_tallies(&self) -> (Vec<state::SxidTally>, u64) {
        (self.devices.sxids(), self.devices.unmatched_xids())
    }

    /// Reads the host and GPUs and judges them. Blocking; see the module doc.
    pub fn sample(&mut self, node: &str) -> NodeReport {
        let host = self.host.sample();
        let (gpus, gpu_error) = self.sample_gpus();
        let mut extra = self
            .checks
            .as_ref()
            .map(checks::CheckRunner::results)
            .unwrap_or_default();
        if !self.thresholds.required_mounts.is_empty() {
            match checks::current_mount_points() {
                Some(mounted) => extra.extend(checks::missing_mounts(
                    &self.thresholds.required_mounts,
                    &mounted,
                )),
                None => {
                    tracing::warn!("cannot read /proc/self/mountinfo; required mounts not checked")
                }
            }
        }
        let health =
            verdict::evaluate_with(&self.thresholds, &host, &gpus, gpu_error.as_deref(), extra);
        NodeReport {
            node: node.to_string(),
            facts: self.facts(),
            host,
            gpus,
            gpu_error,
            health,
            // Filled in by the agent from its Ray supervisor (crate::ray).
            ray: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_proto::model::HealthStatus;
    use gpu::{FakeGpuSource, FakeScript, FakeStep, NoGpus};

    #[test]
    fn report_carries_node_facts_host_and_gpus() {
        let mut sampler = Sampler::new(Thresholds::default(), Box::new(FakeGpuSource::uniform(2)));
        let report = sampler.sample("gpu-07");
        assert_eq!(report.node, "gpu-07");
        assert_eq!(report.facts, sampler.facts());
        assert!(report.host.memory.total_bytes > 0);
        assert_eq!(report.gpus.len(), 2);
        assert_eq!(report.gpu_error, None);
        assert!(report.health.reasons.iter().all(|r| r.check != "gpu"));
    }

    #[test]
    fn gpu_failure_empties_gpus_and_degrades_health() {
        let script = FakeScript {
            steps: vec![FakeStep::error("NVML device_count failed: GPU is lost")],
            repeat_last: true,
        };
        // Thresholds nothing on this machine can trip, so only the GPU error counts.
        let lenient = Thresholds {
            disk_warn_percent: 100.0,
            disk_fail_percent: 100.0,
            memory_available_warn_percent: 0.0,
            memory_available_fail_percent: 0.0,
            load_per_core_warn: 1e9,
            load_per_core_fail: 1e9,
            cpu_temperature_warn_celsius: 1e9,
            cpu_temperature_fail_celsius: 1e9,
            ..Thresholds::default()
        };
        let mut sampler = Sampler::new(lenient, Box::new(FakeGpuSource::new(script)));
        let report = sampler.sample("n1");
        assert!(report.gpus.is_empty());
        assert_eq!(
            report.gpu_error.as_deref(),
            Some("NVML device_count failed: GPU is lost")
        );
        assert_eq!(report.health.status, HealthStatus::Degraded);
        assert_eq!(
            report.health.reasons[0].message,
            "GPUs unreadable: NVML device_count failed: GPU is lost"
        );
    }

    #[test]
    fn node_without_gpus_has_no_gpu_error() {
        let report = Sampler::new(Thresholds::default(), Box::new(NoGpus)).sample("cpu-01");
        assert!(report.gpus.is_empty());
        assert_eq!(report.gpu_error, None);
    }

    #[test]
    fn kernel_log_xids_read_while_the_gpus_fail_land_on_the_next_good_sample() {
        let gpu = GpuSample {
            index: 0,
            uuid: "GPU-0".into(),
            pci_bus_id: Some("00000000:18:00.0".into()),
            ..GpuSample::default()
        };
        let script = FakeScript {
            steps: vec![
                FakeStep::gpus(vec![gpu.clone()]),
                FakeStep::error("NVML: unknown error").with_kmsg(vec![
                    "[ 9.0] NVRM: Xid (PCI:0000:18:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus.".into(),
                ]),
                FakeStep::gpus(vec![gpu]),
            ],
            repeat_last: true,
        };
        let mut sampler = Sampler::new(Thresholds::default(), Box::new(FakeGpuSource::new(script)));
        assert_eq!(sampler.sample_gpus().0[0].health.xid_total, 0);
        assert!(sampler.sample_gpus().1.is_some(), "the error step");
        let (gpus, error) = sampler.sample_gpus();
        assert_eq!(error, None);
        assert_eq!(gpus[0].xids, [79]);
        assert!(gpus[0].health.reasons[0].needs_reboot);
        assert_eq!(
            sampler.kernel_log_status().map(|s| s.path),
            Some("fake script".into())
        );
    }
}
