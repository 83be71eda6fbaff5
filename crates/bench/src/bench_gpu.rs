//! `corral-bench gpu-sample`: the CPU cost of reading and judging N GPUs per sample, and
//! the process's memory, with the scripted fake source (every field populated, 18 NVLink
//! links per GPU). It measures corral's own work per sample (building samples, the
//! device-health tracker, node health), not NVML's driver calls, which only a real GPU
//! machine can measure (see `docs/gpu-validation.md`).

use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;

use corral_node::health::gpu::FakeGpuSource;
use corral_node::health::verdict::Thresholds;
use corral_node::health::Sampler;

#[derive(Args, Debug)]
pub struct GpuSampleArgs {
    /// Fake GPUs per sample.
    #[arg(long, default_value_t = 8)]
    gpus: u32,
    /// Samples to time.
    #[arg(long, default_value_t = 10_000)]
    samples: u32,
}

/// CPU time of this thread, nanoseconds.
fn thread_cpu_ns() -> Result<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    anyhow::ensure!(rc == 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    Ok(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// (VmRSS, VmHWM) of this process in KiB.
fn rss_kib() -> Result<(u64, u64)> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

pub fn run(a: GpuSampleArgs) -> Result<()> {
    anyhow::ensure!(a.samples > 0, "--samples must be at least 1");
    let mut sampler = Sampler::new(
        Thresholds::default(),
        Box::new(FakeGpuSource::uniform(a.gpus)),
    );
    // Warm up (first sample allocates the tracker's state).
    let (gpus, _) = sampler.sample_gpus();
    anyhow::ensure!(
        gpus.len() == a.gpus as usize,
        "fake source gave {} GPUs",
        gpus.len()
    );
    let wall = Instant::now();
    let cpu0 = thread_cpu_ns()?;
    let mut reasons = 0usize;
    for _ in 0..a.samples {
        let (gpus, _) = sampler.sample_gpus();
        reasons += gpus.iter().map(|g| g.health.reasons.len()).sum::<usize>();
    }
    let cpu = thread_cpu_ns()? - cpu0;
    let wall = wall.elapsed();
    // One full node sample too (host + GPUs + health), as the agent takes it.
    let cpu1 = thread_cpu_ns()?;
    let report = sampler.sample("bench");
    let full = thread_cpu_ns()? - cpu1;
    let (rss, hwm) = rss_kib()?;
    let per_sample_us = cpu as f64 / f64::from(a.samples) / 1000.0;
    let json = serde_json::json!({
        "gpus": a.gpus,
        "samples": a.samples,
        "cpu_per_sample_us": per_sample_us,
        "cpu_per_gpu_per_sample_us": per_sample_us / f64::from(a.gpus.max(1)),
        "wall_per_sample_us": wall.as_secs_f64() * 1e6 / f64::from(a.samples),
        "full_node_sample_cpu_us": full as f64 / 1000.0,
        "rss_kib": rss,
        "rss_peak_kib": hwm,
        "report_json_bytes": serde_json::to_vec(&report)?.len(),
        "report_postcard_bytes": postcard::to_stdvec(&report)?.len(),
        "reasons_seen": reasons,
    });
    println!("{}", serde_json::to_string_pretty(&json)?);
    Ok(())
}
