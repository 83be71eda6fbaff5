//! `corral-bench gpu-sample`: the CPU cost of reading and judging N GPUs per sample, and
//! the process's memory, with the scripted fake source (every field populated, 18 NVLink
//! links per GPU). It measures corral's own work per sample (building samples, the
//! device-health tracker, node health), not NVML's driver calls, which only a real GPU
//! machine can measure (see `docs/gpu-validation.md`).
//!
//! It also measures what a report costs on the wire in steady state: `--reports` reports
//! five seconds apart, each a fresh sample of this host plus the fake GPUs moved the way
//! busy GPUs move between two reports ([`drift`]), through the agent's delta encoder and
//! the coordinator's decoder (`corral_transport::delta`).

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
    /// Reports to send through the delta encoder, after the session's first.
    #[arg(long, default_value_t = 720)]
    reports: u32,
}

/// A GPU under steady load, five seconds later: utilization, memory-controller load,
/// temperatures, power, energy, SM clock and memory in use move; identity, limits, ECC,
/// retired pages, PCIe and NVLink counters stay (they change on faults, which are rare
/// and then travel as changes too). Deterministic, so runs compare.
fn drift(g: &mut corral_proto::model::GpuSample, step: u64) {
    let n = u64::from(g.index);
    let wobble = |k: u64| {
        (step
            .wrapping_mul(2_654_435_761)
            .wrapping_add(n * 40_503 + k * 977))
            % 1000
    };
    g.utilization_percent = Some(60 + (wobble(1) % 41) as u32);
    g.memory_utilization_percent = Some(20 + (wobble(2) % 50) as u32);
    g.temperature_celsius = Some(55 + (wobble(3) % 12) as u32);
    g.memory_temperature_celsius = Some(60 + (wobble(4) % 10) as u32);
    // NVML reports milliwatts.
    let power = 350.0 + (wobble(5) as f64) * 0.35 + (wobble(6) % 10) as f64 / 1000.0;
    g.power_watts = Some(power);
    g.energy_joules = Some(g.energy_joules.unwrap_or(0.0) + power * 5.0);
    g.sm_clock_mhz = Some(1_755 + (wobble(7) % 225) as u32);
    if let (Some(total), true) = (g.memory_total_bytes, wobble(8) < 300) {
        let used = total / 2 + wobble(9) * (1 << 20);
        g.memory_used_bytes = Some(used);
        g.memory_free_bytes = Some(total - used);
    }
}

/// Steady-state wire cost of reports: (first, mean/p50/max of the rest, encode and decode
/// CPU per report in µs).
fn wire_cost(sampler: &mut Sampler, reports: u32) -> Result<serde_json::Value> {
    use corral_proto::wire::{self, AgentMsg};
    use corral_transport::delta::{ReportDecoder, ReportEncoder};
    let mut enc = ReportEncoder::new();
    let mut dec = ReportDecoder::new(corral_proto::wire::DEFAULT_MAX_FRAME_BYTES);
    let mut sizes = Vec::with_capacity(reports as usize);
    let mut first = 0usize;
    let mut full_sizes = Vec::new();
    let (mut enc_ns, mut dec_ns) = (0u64, 0u64);
    let mut fulls_after_first = 0u32;
    let mut report = sampler.sample("bench");
    for step in 0..=u64::from(reports) {
        let fresh = sampler.sample("bench");
        let gpus = std::mem::take(&mut report.gpus);
        report = fresh;
        report.gpus = gpus;
        report.host.taken_at_ms = 1_700_000_000_000 + step * 5_000;
        for g in &mut report.gpus {
            drift(g, step);
        }
        full_sizes
            .push(wire::encode("report", &AgentMsg::Report(Box::new(report.clone())))?.len() + 4);
        let t = thread_cpu_ns()?;
        let msg = enc.encode(&report)?;
        enc_ns += thread_cpu_ns()? - t;
        let bytes = wire::encode("report", &msg)?.len() + 4;
        let t = thread_cpu_ns()?;
        let decoded = match msg {
            AgentMsg::Report(r) => {
                dec.full(&r)?;
                *r
            }
            AgentMsg::ReportDelta { patch } => dec.patch(&patch)?,
            other => anyhow::bail!("not a report: {other:?}"),
        };
        dec_ns += thread_cpu_ns()? - t;
        anyhow::ensure!(decoded == report, "report {step} did not survive the delta");
        if step == 0 {
            first = bytes;
        } else {
            if bytes + 8 >= full_sizes[step as usize] {
                fulls_after_first += 1;
            }
            sizes.push(bytes);
        }
    }
    let mean = sizes.iter().sum::<usize>() as f64 / sizes.len().max(1) as f64;
    sizes.sort_unstable();
    let n = f64::from(reports + 1);
    Ok(serde_json::json!({
        "reports": reports + 1,
        "full_report_frame_bytes_mean": full_sizes.iter().sum::<usize>() as f64 / full_sizes.len() as f64,
        "first_report_frame_bytes": first,
        "delta_frame_bytes_mean": mean,
        "delta_frame_bytes_p50": sizes.get(sizes.len() / 2),
        "delta_frame_bytes_max": sizes.last(),
        "full_reports_after_the_first": fulls_after_first,
        "encode_cpu_us_per_report": enc_ns as f64 / n / 1000.0,
        "decode_cpu_us_per_report": dec_ns as f64 / n / 1000.0,
    }))
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
        "wire": wire_cost(&mut sampler, a.reports)?,
    });
    println!("{}", serde_json::to_string_pretty(&json)?);
    Ok(())
}
