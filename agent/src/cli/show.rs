//! Human-readable rendering of nodes and events for the terminal. Pure functions of the
//! API's data and the current time, so they are tested without a coordinator.

use std::fmt::Write;

use corral_proto::api::{Event, NodeView};
use corral_proto::model::{DeviceStatus, GpuSample, NodeReport};

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// Left-aligned columns separated by two spaces.
pub(super) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                let _ = write!(l, "{cell:<w$}  ");
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

pub fn age(now_ms: u64, then_ms: Option<u64>) -> String {
    let Some(then) = then_ms else {
        return "never".into();
    };
    let secs = now_ms.saturating_sub(then) as f64 / 1000.0;
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else if secs < 3600.0 {
        format!("{:.0}m", secs / 60.0)
    } else if secs < 86400.0 {
        format!("{:.1}h", secs / 3600.0)
    } else {
        format!("{:.1}d", secs / 86400.0)
    }
}

fn gib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / GIB)
}

/// "2x NVIDIA H100 util 45% max 62°C" — or "-" without GPUs.
pub fn gpu_summary(r: &NodeReport) -> String {
    if let Some(e) = &r.gpu_error {
        return format!("error: {e}");
    }
    if r.gpus.is_empty() {
        return "-".into();
    }
    let mut names: Vec<&str> = r.gpus.iter().map(|g| g.name.as_str()).collect();
    names.dedup();
    let model = if names.len() == 1 {
        names[0].to_string()
    } else {
        "mixed".into()
    };
    let utils: Vec<u32> = r
        .gpus
        .iter()
        .filter_map(|g| g.utilization_percent)
        .collect();
    let mut s = format!("{}x {model}", r.gpus.len());
    if !utils.is_empty() {
        let _ = write!(
            s,
            " util {}%",
            utils.iter().sum::<u32>() / utils.len() as u32
        );
    }
    if let Some(t) = r.gpus.iter().filter_map(|g| g.temperature_celsius).max() {
        let _ = write!(s, " max {t}°C");
    }
    s
}

/// "8 ok", "1 fail 7 ok", or "-" without GPUs: worst first.
pub fn gpu_health_summary(r: &NodeReport) -> String {
    if r.gpus.is_empty() {
        return "-".into();
    }
    let parts: Vec<String> = [DeviceStatus::Fail, DeviceStatus::Warn, DeviceStatus::Ok]
        .into_iter()
        .filter_map(|st| {
            let n = r.gpus.iter().filter(|g| g.health.status == st).count();
            (n > 0).then(|| format!("{n} {st}"))
        })
        .collect();
    parts.join(" ")
}

/// Every device with each reading it has and its health reasons.
fn gpu_details(gpus: &[GpuSample]) -> String {
    let mut s = String::new();
    for g in gpus {
        let device = match (&g.parent_uuid, g.mig_index) {
            (Some(parent), Some(m)) => format!("MIG {}/{m} (parent {parent})", g.index),
            _ => format!("GPU {}", g.index),
        };
        let _ = writeln!(s, "\n{device}: {} {} — {}", g.name, g.uuid, g.health.status);
        for r in &g.health.reasons {
            let _ = writeln!(
                s,
                "  - [{}] {}{}",
                r.status,
                r.message,
                if r.needs_reset { " (needs reset)" } else { "" }
            );
        }
        if let Some(lost) = &g.lost {
            let _ = writeln!(s, "  unreadable: {lost}");
            continue;
        }
        let mut field = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                let _ = writeln!(s, "  {k:<22}{v}");
            }
        };
        let yn = |b: Option<bool>| b.map(|b| if b { "yes" } else { "no" }.to_string());
        field("serial", g.serial.clone());
        field("pci bus id", g.pci_bus_id.clone());
        field(
            "driver / cuda",
            g.driver_version.as_ref().map(|d| {
                format!(
                    "{d} / {}",
                    g.cuda_driver_version.as_deref().unwrap_or("n/a")
                )
            }),
        );
        field("vbios", g.vbios_version.clone());
        field("persistence mode", yn(g.persistence_mode));
        field("compute mode", g.compute_mode.clone());
        field("mig enabled", yn(g.mig_enabled));
        field(
            "utilization",
            g.utilization_percent.map(|u| {
                format!(
                    "gpu {u}%  memory {}  enc {}  dec {}",
                    opt(g.memory_utilization_percent, "%"),
                    opt(g.encoder_utilization_percent, "%"),
                    opt(g.decoder_utilization_percent, "%")
                )
            }),
        );
        field(
            "memory",
            match (g.memory_used_bytes, g.memory_total_bytes) {
                (Some(u), Some(t)) => Some(format!(
                    "{}/{} GiB used, {} GiB free",
                    gib(u),
                    gib(t),
                    g.memory_free_bytes.map_or("n/a".into(), gib)
                )),
                _ => None,
            },
        );
        field(
            "temperature",
            g.temperature_celsius
                .map(|t| format!("{t}°C (memory {})", opt(g.memory_temperature_celsius, "°C"))),
        );
        field("fan", g.fan_speed_percent.map(|f| format!("{f}%")));
        field(
            "power",
            g.power_watts.map(|p| {
                format!(
                    "{p:.0} W of {}",
                    opt(g.power_limit_watts.map(|l| format!("{l:.0}")), " W")
                )
            }),
        );
        field(
            "energy",
            g.energy_joules.map(|e| format!("{:.1} kJ", e / 1000.0)),
        );
        field(
            "clocks",
            g.sm_clock_mhz
                .map(|c| format!("sm {c} MHz, memory {}", opt(g.memory_clock_mhz, " MHz"))),
        );
        field(
            "throttle reasons",
            g.throttle_reasons.as_ref().map(|t| {
                if t.is_empty() {
                    "none".into()
                } else {
                    t.join(", ")
                }
            }),
        );
        field(
            "pcie",
            g.pcie_link_gen.map(|gen| {
                let x = |w: Option<u32>| w.map_or("n/a".into(), |w| format!("x{w}"));
                format!(
                    "gen {gen} (max {}), width {} (max {}), replays {}",
                    opt(g.pcie_link_gen_max, ""),
                    x(g.pcie_link_width),
                    x(g.pcie_link_width_max),
                    opt(g.pcie_replay_count, "")
                )
            }),
        );
        field("ecc enabled", yn(g.ecc_enabled));
        field(
            "ecc volatile",
            g.ecc_corrected_volatile.map(|c| {
                format!(
                    "corrected {c}, uncorrected {}",
                    opt(g.ecc_uncorrected_volatile, "")
                )
            }),
        );
        field(
            "ecc aggregate",
            g.ecc_corrected_aggregate.map(|c| {
                format!(
                    "corrected {c}, uncorrected {}",
                    opt(g.ecc_uncorrected_aggregate, "")
                )
            }),
        );
        field(
            "retired pages",
            g.retired_pages_single_bit.map(|sb| {
                format!(
                    "single-bit {sb}, double-bit {}, pending {}",
                    opt(g.retired_pages_double_bit, ""),
                    yn(g.retired_pages_pending).unwrap_or_else(|| "n/a".into())
                )
            }),
        );
        field(
            "remapped rows",
            g.remapped_rows_correctable.map(|c| {
                format!(
                    "correctable {c}, uncorrectable {}, pending {}, failure {}",
                    opt(g.remapped_rows_uncorrectable, ""),
                    yn(g.remapped_rows_pending).unwrap_or_else(|| "n/a".into()),
                    yn(g.remapped_rows_failure).unwrap_or_else(|| "n/a".into())
                )
            }),
        );
        if !g.nvlinks.is_empty() {
            let up = g.nvlinks.iter().filter(|l| l.active).count();
            let errors: u64 = g
                .nvlinks
                .iter()
                .flat_map(|l| {
                    [
                        l.crc_flit_errors,
                        l.crc_data_errors,
                        l.replay_errors,
                        l.recovery_errors,
                    ]
                })
                .flatten()
                .sum();
            field(
                "nvlink",
                Some(format!(
                    "{up}/{} links up, {errors} errors",
                    g.nvlinks.len()
                )),
            );
        }
        field(
            "xid",
            g.health
                .xid_last
                .map(|x| format!("last {x}, {} since agent start", g.health.xid_total)),
        );
    }
    s
}

/// The fullest filesystem: "87% /data".
fn fullest_disk(r: &NodeReport) -> String {
    r.host
        .filesystems
        .iter()
        .max_by(|a, b| a.used_percent().total_cmp(&b.used_percent()))
        .map(|f| format!("{:.0}% {}", f.used_percent(), f.mount))
        .unwrap_or_else(|| "-".into())
}

/// The Ray column: "head running", "worker restarting (2 restarts)", or "-" without Ray.
pub fn ray_summary(r: &NodeReport) -> String {
    let Some(ray) = &r.ray else {
        return "-".into();
    };
    let mut s = format!("{} {}", ray.role, ray.state);
    if ray.restarts > 0 {
        let _ = write!(s, " ({} restarts)", ray.restarts);
    }
    s
}

/// The Ray section of `corral node NAME`.
fn ray_section(s: &mut String, r: &NodeReport, now_ms: u64) {
    let Some(ray) = &r.ray else {
        return;
    };
    let _ = writeln!(
        s,
        "\nRay:         {} {} (for {})",
        ray.role,
        ray.state,
        age(now_ms, Some(ray.since_ms))
    );
    let _ = writeln!(
        s,
        "  venv:      {} (Python {}, Ray {})",
        ray.venv,
        ray.python_version.as_deref().unwrap_or("unknown"),
        ray.ray_version.as_deref().unwrap_or("unknown")
    );
    let _ = writeln!(
        s,
        "  head:      {}",
        ray.head_address.as_deref().unwrap_or("not known yet")
    );
    let _ = writeln!(s, "  restarts:  {}", ray.restarts);
    if let Some(pid) = ray.pid {
        let _ = writeln!(s, "  pid:       {pid} (process group)");
    }
    if let Some(log) = &ray.log_file {
        let _ = writeln!(s, "  log:       {log}");
    }
    if let Some(m) = &ray.message {
        let _ = writeln!(s, "  message:   {m}");
    }
}

pub fn nodes_table(nodes: &[NodeView], now_ms: u64) -> String {
    if nodes.is_empty() {
        return "no nodes have registered yet\n".into();
    }
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            let r = n.report.as_ref();
            vec![
                n.name.clone(),
                n.liveness.to_string(),
                n.health.to_string(),
                r.map_or("-".into(), |r| format!("{:.0}%", r.host.cpu_percent)),
                r.map_or("-".into(), |r| format!("{:.2}", r.host.load.one)),
                r.map_or("-".into(), |r| {
                    let m = &r.host.memory;
                    format!(
                        "{}/{} GiB",
                        gib(m.total_bytes.saturating_sub(m.available_bytes)),
                        gib(m.total_bytes)
                    )
                }),
                r.map_or("-".into(), fullest_disk),
                r.map_or("-".into(), |r| r.gpus.len().to_string()),
                r.map_or("-".into(), gpu_summary),
                r.map_or("-".into(), gpu_health_summary),
                r.map_or("-".into(), ray_summary),
                age(now_ms, n.last_beat_ms),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "LIVENESS",
            "HEALTH",
            "CPU",
            "LOAD",
            "MEMORY",
            "DISK",
            "GPUS",
            "GPU SUMMARY",
            "GPU HEALTH",
            "RAY",
            "LAST BEAT",
        ],
        &rows,
    )
}

fn opt<T: std::fmt::Display>(v: Option<T>, unit: &str) -> String {
    v.map_or("n/a".into(), |v| format!("{v}{unit}"))
}

fn gpu_rows(gpus: &[GpuSample]) -> Vec<Vec<String>> {
    gpus.iter()
        .map(|g| {
            vec![
                g.index.to_string(),
                g.name.clone(),
                g.uuid.clone(),
                opt(g.utilization_percent, "%"),
                match (g.memory_used_bytes, g.memory_total_bytes) {
                    (Some(u), Some(t)) => format!("{}/{} GiB", gib(u), gib(t)),
                    _ => "n/a".into(),
                },
                opt(g.temperature_celsius, "°C"),
                opt(g.power_watts.map(|w| format!("{w:.0}")), " W"),
                g.health.status.to_string(),
            ]
        })
        .collect()
}

pub fn node_detail(n: &NodeView, now_ms: u64) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Node:        {}", n.name);
    let _ = writeln!(
        s,
        "Liveness:    {} (for {})",
        n.liveness,
        age(now_ms, Some(n.liveness_since_ms))
    );
    let _ = writeln!(s, "Health:      {}", n.health);
    for r in &n.reasons {
        let _ = writeln!(s, "  - [{}] {}: {}", r.status, r.check, r.message);
    }
    let _ = writeln!(
        s,
        "Connected:   {}{}",
        if n.connected { "yes" } else { "no" },
        n.address
            .as_deref()
            .map(|a| format!(" from {a}"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        s,
        "Agent:       {}",
        n.agent_version.as_deref().unwrap_or("unknown")
    );
    let _ = writeln!(s, "Last beat:   {} ago", age(now_ms, n.last_beat_ms));
    let _ = writeln!(s, "Last report: {} ago", age(now_ms, n.last_report_ms));
    let Some(r) = &n.report else {
        s.push_str("\nNo report received yet.\n");
        return s;
    };
    ray_section(&mut s, r, now_ms);
    let f = &r.facts;
    let _ = writeln!(
        s,
        "\nHost:        {} — {} (kernel {})",
        f.hostname, f.os, f.kernel
    );
    let _ = writeln!(
        s,
        "CPU:         {} — {} logical cores{}",
        f.cpu_model,
        f.cpu_cores,
        f.physical_cores
            .map(|p| format!(", {p} physical"))
            .unwrap_or_default()
    );
    let h = &r.host;
    let _ = writeln!(s, "Uptime:      {}", age(h.uptime_secs * 1000, Some(0)));
    let _ = writeln!(
        s,
        "CPU use:     {:.1}%  load {:.2} {:.2} {:.2}",
        h.cpu_percent, h.load.one, h.load.five, h.load.fifteen
    );
    if !h.per_core_percent.is_empty() {
        let cores: Vec<String> = h
            .per_core_percent
            .iter()
            .map(|c| format!("{c:.0}"))
            .collect();
        let _ = writeln!(s, "Per core %:  {}", cores.join(" "));
    }
    let m = &h.memory;
    let _ = writeln!(
        s,
        "Memory:      {} GiB available of {} GiB; swap {}/{} GiB",
        gib(m.available_bytes),
        gib(m.total_bytes),
        gib(m.swap_used_bytes),
        gib(m.swap_total_bytes)
    );
    if !h.cpu_temperatures.is_empty() {
        let temps: Vec<String> = h
            .cpu_temperatures
            .iter()
            .map(|t| format!("{} {:.0}°C", t.label, t.celsius))
            .collect();
        let _ = writeln!(s, "Temps:       {}", temps.join(", "));
    }
    s.push_str("\nFilesystems:\n");
    let rows: Vec<Vec<String>> = h
        .filesystems
        .iter()
        .map(|f| {
            vec![
                f.mount.clone(),
                f.device.clone(),
                f.fs_type.clone(),
                format!("{} GiB", gib(f.total_bytes)),
                format!("{} GiB", gib(f.available_bytes)),
                format!("{:.0}%", f.used_percent()),
            ]
        })
        .collect();
    s.push_str(&table(
        &["MOUNT", "DEVICE", "TYPE", "SIZE", "AVAIL", "USED"],
        &rows,
    ));
    match (&r.gpu_error, r.gpus.is_empty()) {
        (Some(e), _) => {
            let _ = writeln!(s, "\nGPUs: unreadable: {e}");
        }
        (None, true) => s.push_str("\nGPUs: none\n"),
        (None, false) => {
            s.push_str("\nGPUs:\n");
            s.push_str(&table(
                &[
                    "GPU", "NAME", "UUID", "UTIL", "MEMORY", "TEMP", "POWER", "HEALTH",
                ],
                &gpu_rows(&r.gpus),
            ));
            s.push_str(&gpu_details(&r.gpus));
        }
    }
    s
}

pub fn events_table(events: &[Event]) -> String {
    if events.is_empty() {
        return "no events\n".into();
    }
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            let at =
                time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(e.at_ms) * 1_000_000)
                    .map(|t| {
                        format!(
                            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}Z",
                            t.year(),
                            u8::from(t.month()),
                            t.day(),
                            t.hour(),
                            t.minute(),
                            t.second()
                        )
                    })
                    .unwrap_or_default();
            vec![
                e.id.to_string(),
                at,
                e.node.clone(),
                e.kind.as_str().into(),
                format!("{} → {}", e.from.as_deref().unwrap_or("-"), e.to),
                e.message.clone(),
            ]
        })
        .collect();
    table(&["ID", "TIME", "NODE", "KIND", "CHANGE", "MESSAGE"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_proto::model::{Filesystem, HealthStatus, Liveness};

    fn view() -> NodeView {
        let mut report = NodeReport::default();
        report.host.filesystems = vec![
            Filesystem {
                mount: "/".into(),
                device: "sda1".into(),
                fs_type: "ext4".into(),
                total_bytes: 100,
                available_bytes: 50,
            },
            Filesystem {
                mount: "/data".into(),
                device: "sdb".into(),
                fs_type: "xfs".into(),
                total_bytes: 100,
                available_bytes: 3,
            },
        ];
        report.gpus = (0..2)
            .map(|i| GpuSample {
                index: i,
                uuid: format!("GPU-{i}"),
                name: "NVIDIA H100".into(),
                utilization_percent: Some(40 + i * 10),
                temperature_celsius: Some(60 + i),
                ..Default::default()
            })
            .collect();
        NodeView {
            name: "gpu-01".into(),
            liveness: Liveness::Ready,
            liveness_since_ms: 0,
            health: HealthStatus::Healthy,
            reasons: vec![],
            connected: true,
            address: None,
            agent_version: None,
            first_seen_ms: 0,
            last_beat_ms: Some(1_000),
            last_report_ms: None,
            report: Some(report),
        }
    }

    #[test]
    fn nodes_table_shows_fullest_disk_and_gpu_summary() {
        let t = nodes_table(&[view()], 1_500);
        assert!(t.starts_with("NAME"));
        assert!(t.contains("97% /data"), "{t}");
        assert!(t.contains("2x NVIDIA H100 util 45% max 61°C"), "{t}");
        assert!(t.contains("0.5s"), "{t}");
    }

    #[test]
    fn unsupported_gpu_readings_show_as_not_available() {
        let mut v = view();
        v.report.as_mut().unwrap().gpus[0].power_watts = None;
        let d = node_detail(&v, 2_000);
        assert!(d.contains("n/a W") || d.contains("n/a"), "{d}");
    }

    #[test]
    fn gpu_health_shows_in_the_table_and_every_reason_in_the_detail() {
        use corral_proto::model::{DeviceHealth, DeviceReason};
        let mut v = view();
        let gpus = &mut v.report.as_mut().unwrap().gpus;
        gpus[1].health = DeviceHealth {
            status: DeviceStatus::Fail,
            reasons: vec![DeviceReason {
                code: "xid".into(),
                status: DeviceStatus::Fail,
                message: "XID 79: GPU has fallen off the bus; reset the GPU to clear".into(),
                needs_reset: true,
            }],
            xid_last: Some(79),
            xid_total: 1,
        };
        gpus[1].pcie_link_gen = Some(4);
        gpus[1].pcie_link_width = Some(8);
        let t = nodes_table(&[v.clone()], 2_000);
        assert!(t.contains("GPU HEALTH") && t.contains("1 fail 1 ok"), "{t}");
        let d = node_detail(&v, 2_000);
        assert!(
            d.contains(
                "[fail] XID 79: GPU has fallen off the bus; reset the GPU to clear (needs reset)"
            ),
            "{d}"
        );
        assert!(d.contains("last 79, 1 since agent start"), "{d}");
        assert!(d.contains("gen 4 (max n/a), width x8 (max n/a)"), "{d}");
    }

    #[test]
    fn node_without_gpus_says_none() {
        let mut v = view();
        v.report.as_mut().unwrap().gpus.clear();
        assert!(node_detail(&v, 2_000).contains("GPUs: none"));
        assert!(nodes_table(&[v], 2_000).contains("  -"));
    }
}
