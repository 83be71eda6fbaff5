//! Human-readable rendering of nodes and events for the terminal. Pure functions of the
//! API's data and the current time, so they are tested without a coordinator.
//!
//! Every view is driven by a table, in screen order: a detail view (`corral node NAME`)
//! by [`Field`]s, a label and a formatter each; a listing (`corral nodes`, `corral
//! events`) by [`Column`]s, a header and a formatter each. Adding a field or a column is
//! one entry in its table; nothing else knows the list.
//!
//! Invariants:
//! - The text is for people (scripts read `--json`), but it stays stable: operators and
//!   tests grep it. Labels end in `:` where the old hand-written lines had one, and a
//!   view's values start in one column ([`Layout`]), so the output is the same as before
//!   the tables existed.
//! - A reading the node did not report leaves its detail line out (the formatter returns
//!   `None`); inside a line that combines several readings it shows as `n/a`; a listing
//!   cell without a report shows `-`.
//!
//! Trade-off: formatters are plain `fn` pointers (non-capturing closures), so a table is
//! a `const` with no allocation or dispatch to build, at the price of every formatter
//! taking the current time whether it reads it or not.

use std::fmt::Write;

use corral_proto::api::{Event, NodeView};
use corral_proto::model::{DeviceStatus, GpuSample, NodeReport, RayStatus};

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// One line of a detail view: its label, and its value for a `T` at `now_ms` (`None`
/// leaves the line out). A value may run over several lines (a node's health reasons).
pub(super) type Field<T> = (&'static str, fn(&T, u64) -> Option<String>);

/// One column of a listing: its header, and its cell for a `T` at `now_ms`.
pub(super) type Column<T> = (&'static str, fn(&T, u64) -> String);

/// Where a detail view's values start: after `indent`, the label padded to `width`, and
/// one space (a longer label pushes its value right rather than touching it).
#[derive(Debug, Clone, Copy)]
pub(super) struct Layout {
    pub indent: &'static str,
    pub width: usize,
}

/// Writes the lines of `fields` that `item` has.
pub(super) fn write_fields<T>(
    out: &mut String,
    layout: Layout,
    fields: &[Field<T>],
    item: &T,
    now_ms: u64,
) {
    let Layout { indent, width } = layout;
    for (label, value) in fields {
        if let Some(v) = value(item, now_ms) {
            let _ = writeln!(out, "{indent}{label:<width$} {v}");
        }
    }
}

/// `items` as a table of `columns`.
pub(super) fn listing<T>(columns: &[Column<T>], items: &[T], now_ms: u64) -> String {
    let header: Vec<&str> = columns.iter().map(|(h, _)| *h).collect();
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|item| columns.iter().map(|(_, cell)| cell(item, now_ms)).collect())
        .collect();
    table(&header, &rows)
}

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

/// How long ago `then_ms` was: "4.2s", "12m", "3.5h", "2.0d", or "never".
pub(super) fn age(now_ms: u64, then_ms: Option<u64>) -> String {
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

/// A reading with its unit, or "n/a".
fn opt<T: std::fmt::Display>(v: Option<T>, unit: &str) -> String {
    v.map_or("n/a".into(), |v| format!("{v}{unit}"))
}

fn yes_no(b: Option<bool>) -> Option<String> {
    b.map(|b| if b { "yes" } else { "no" }.to_string())
}

/// A listing cell from the node's latest report, or "-" before the first one.
fn reported(n: &NodeView, cell: impl FnOnce(&NodeReport) -> String) -> String {
    n.report.as_ref().map_or("-".into(), cell)
}

/// "2x NVIDIA H100 util 45% max 62°C" — or "-" without GPUs.
fn gpu_summary(r: &NodeReport) -> String {
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
fn gpu_health_summary(r: &NodeReport) -> String {
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
fn ray_summary(r: &NodeReport) -> String {
    let Some(ray) = &r.ray else {
        return "-".into();
    };
    let mut s = format!("{} {}", ray.role, ray.state);
    if ray.restarts > 0 {
        let _ = write!(s, " ({} restarts)", ray.restarts);
    }
    s
}

/// `corral nodes`, one row per node.
const NODE_COLUMNS: &[Column<NodeView>] = &[
    ("NAME", |n, _| n.name.clone()),
    // Like kubectl's `Ready,SchedulingDisabled`: a cordon is part of the node's state.
    ("LIVENESS", |n, _| match &n.cordon {
        Some(c) if c.resuming => format!("{},resuming", n.liveness),
        Some(_) => format!("{},cordoned", n.liveness),
        None => n.liveness.to_string(),
    }),
    ("HEALTH", |n, _| n.health.to_string()),
    ("CPU", |n, _| {
        reported(n, |r| format!("{:.0}%", r.host.cpu_percent))
    }),
    ("LOAD", |n, _| {
        reported(n, |r| format!("{:.2}", r.host.load.one))
    }),
    ("MEMORY", |n, _| {
        reported(n, |r| {
            let m = &r.host.memory;
            format!(
                "{}/{} GiB",
                gib(m.total_bytes.saturating_sub(m.available_bytes)),
                gib(m.total_bytes)
            )
        })
    }),
    ("DISK", |n, _| reported(n, fullest_disk)),
    ("GPUS", |n, _| reported(n, |r| r.gpus.len().to_string())),
    ("GPU SUMMARY", |n, _| reported(n, gpu_summary)),
    ("GPU HEALTH", |n, _| reported(n, gpu_health_summary)),
    ("RAY", |n, _| reported(n, ray_summary)),
    ("LAST BEAT", |n, now| age(now, n.last_beat_ms)),
];

pub(super) fn nodes_table(nodes: &[NodeView], now_ms: u64) -> String {
    if nodes.is_empty() {
        return "no nodes have registered yet\n".into();
    }
    listing(NODE_COLUMNS, nodes, now_ms)
}

/// The node detail's sections: values in column 13.
const DETAIL: Layout = Layout {
    indent: "",
    width: 12,
};

/// What the coordinator knows of a node, report or not.
const NODE_FIELDS: &[Field<NodeView>] = &[
    ("Node:", |n, _| Some(n.name.clone())),
    ("Liveness:", |n, now| {
        Some(format!(
            "{} (for {})",
            n.liveness,
            age(now, Some(n.liveness_since_ms))
        ))
    }),
    ("Health:", |n, _| {
        let mut s = n.health.to_string();
        for r in &n.reasons {
            let _ = write!(s, "\n  - [{}] {}: {}", r.status, r.check, r.message);
        }
        Some(s)
    }),
    ("Cordoned:", |n, now| {
        let c = n.cordon.as_ref()?;
        let mut s = format!(
            "{} ago by {}{}: {}",
            age(now, Some(c.since_ms)),
            c.by,
            if c.resuming { ", resuming" } else { "" },
            c.reason
        );
        for d in &c.drains {
            let _ = write!(s, "\n  - {} {} ({}): {}", d.kind, d.target, d.node, d.state);
            if d.attempts > 0 {
                let _ = write!(s, " after {} failed tries", d.attempts);
            }
            if let Some(m) = &d.message {
                let _ = write!(s, "; {m}");
            }
        }
        Some(s)
    }),
    ("Connected:", |n, _| {
        Some(format!(
            "{}{}",
            if n.connected { "yes" } else { "no" },
            n.address
                .as_deref()
                .map(|a| format!(" from {a}"))
                .unwrap_or_default()
        ))
    }),
    ("Agent:", |n, _| {
        Some(n.agent_version.as_deref().unwrap_or("unknown").into())
    }),
    ("Last beat:", |n, now| {
        Some(format!("{} ago", age(now, n.last_beat_ms)))
    }),
    ("Last report:", |n, now| {
        Some(format!("{} ago", age(now, n.last_report_ms)))
    }),
];

/// The Ray process the node's agent supervises.
const RAY_FIELDS: &[Field<RayStatus>] = &[
    ("Ray:", |ray, now| {
        Some(format!(
            "{} {} (for {})",
            ray.role,
            ray.state,
            age(now, Some(ray.since_ms))
        ))
    }),
    ("  venv:", |ray, _| {
        Some(format!(
            "{} (Python {}, Ray {})",
            ray.venv,
            ray.python_version.as_deref().unwrap_or("unknown"),
            ray.ray_version.as_deref().unwrap_or("unknown")
        ))
    }),
    ("  head:", |ray, _| {
        Some(
            ray.head_address
                .as_deref()
                .unwrap_or("not known yet")
                .into(),
        )
    }),
    ("  restarts:", |ray, _| Some(ray.restarts.to_string())),
    ("  pid:", |ray, _| {
        ray.pid.map(|pid| format!("{pid} (process group)"))
    }),
    ("  log:", |ray, _| ray.log_file.clone()),
    ("  message:", |ray, _| ray.message.clone()),
];

/// The host: its facts and its latest sample.
const HOST_FIELDS: &[Field<NodeReport>] = &[
    ("Host:", |r, _| {
        let f = &r.facts;
        Some(format!("{} — {} (kernel {})", f.hostname, f.os, f.kernel))
    }),
    ("CPU:", |r, _| {
        let f = &r.facts;
        Some(format!(
            "{} — {} logical cores{}",
            f.cpu_model,
            f.cpu_cores,
            f.physical_cores
                .map(|p| format!(", {p} physical"))
                .unwrap_or_default()
        ))
    }),
    ("Uptime:", |r, _| {
        Some(age(r.host.uptime_secs * 1000, Some(0)))
    }),
    ("CPU use:", |r, _| {
        let h = &r.host;
        Some(format!(
            "{:.1}%  load {:.2} {:.2} {:.2}",
            h.cpu_percent, h.load.one, h.load.five, h.load.fifteen
        ))
    }),
    ("Per core %:", |r, _| {
        let cores = &r.host.per_core_percent;
        (!cores.is_empty()).then(|| {
            cores
                .iter()
                .map(|c| format!("{c:.0}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
    }),
    ("Memory:", |r, _| {
        let m = &r.host.memory;
        Some(format!(
            "{} GiB available of {} GiB; swap {}/{} GiB",
            gib(m.available_bytes),
            gib(m.total_bytes),
            gib(m.swap_used_bytes),
            gib(m.swap_total_bytes)
        ))
    }),
    ("Temps:", |r, _| {
        let temps = &r.host.cpu_temperatures;
        (!temps.is_empty()).then(|| {
            temps
                .iter()
                .map(|t| format!("{} {:.0}°C", t.label, t.celsius))
                .collect::<Vec<_>>()
                .join(", ")
        })
    }),
];

/// The node detail's filesystem table.
const FILESYSTEM_COLUMNS: &[Column<corral_proto::model::Filesystem>] = &[
    ("MOUNT", |f, _| f.mount.clone()),
    ("DEVICE", |f, _| f.device.clone()),
    ("TYPE", |f, _| f.fs_type.clone()),
    ("SIZE", |f, _| format!("{} GiB", gib(f.total_bytes))),
    ("AVAIL", |f, _| format!("{} GiB", gib(f.available_bytes))),
    ("USED", |f, _| format!("{:.0}%", f.used_percent())),
];

/// The node detail's GPU table, one row per device.
const GPU_COLUMNS: &[Column<GpuSample>] = &[
    ("GPU", |g, _| g.index.to_string()),
    ("NAME", |g, _| g.name.clone()),
    ("UUID", |g, _| g.uuid.clone()),
    ("UTIL", |g, _| opt(g.utilization_percent, "%")),
    ("MEMORY", |g, _| {
        match (g.memory_used_bytes, g.memory_total_bytes) {
            (Some(u), Some(t)) => format!("{}/{} GiB", gib(u), gib(t)),
            _ => "n/a".into(),
        }
    }),
    ("TEMP", |g, _| opt(g.temperature_celsius, "°C")),
    ("POWER", |g, _| {
        opt(g.power_watts.map(|w| format!("{w:.0}")), " W")
    }),
    ("HEALTH", |g, _| g.health.status.to_string()),
];

/// Each device's readings under its heading: values in column 25.
const GPU_DETAIL: Layout = Layout {
    indent: "  ",
    width: 21,
};

/// Every reading a device can have, in the order the detail shows them.
const GPU_FIELDS: &[Field<GpuSample>] = &[
    ("serial", |g, _| g.serial.clone()),
    ("pci bus id", |g, _| g.pci_bus_id.clone()),
    ("driver / cuda", |g, _| {
        g.driver_version.as_ref().map(|d| {
            format!(
                "{d} / {}",
                g.cuda_driver_version.as_deref().unwrap_or("n/a")
            )
        })
    }),
    ("vbios", |g, _| g.vbios_version.clone()),
    ("persistence mode", |g, _| yes_no(g.persistence_mode)),
    ("compute mode", |g, _| g.compute_mode.clone()),
    ("mig enabled", |g, _| yes_no(g.mig_enabled)),
    ("utilization", |g, _| {
        g.utilization_percent.map(|u| {
            format!(
                "gpu {u}%  memory {}  enc {}  dec {}",
                opt(g.memory_utilization_percent, "%"),
                opt(g.encoder_utilization_percent, "%"),
                opt(g.decoder_utilization_percent, "%")
            )
        })
    }),
    ("memory", |g, _| {
        let (u, t) = (g.memory_used_bytes?, g.memory_total_bytes?);
        Some(format!(
            "{}/{} GiB used, {} GiB free",
            gib(u),
            gib(t),
            g.memory_free_bytes.map_or("n/a".into(), gib)
        ))
    }),
    ("temperature", |g, _| {
        g.temperature_celsius
            .map(|t| format!("{t}°C (memory {})", opt(g.memory_temperature_celsius, "°C")))
    }),
    ("fan", |g, _| g.fan_speed_percent.map(|f| format!("{f}%"))),
    ("power", |g, _| {
        g.power_watts.map(|p| {
            format!(
                "{p:.0} W of {}",
                opt(g.power_limit_watts.map(|l| format!("{l:.0}")), " W")
            )
        })
    }),
    ("energy", |g, _| {
        g.energy_joules.map(|e| format!("{:.1} kJ", e / 1000.0))
    }),
    ("clocks", |g, _| {
        g.sm_clock_mhz
            .map(|c| format!("sm {c} MHz, memory {}", opt(g.memory_clock_mhz, " MHz")))
    }),
    ("throttle reasons", |g, _| {
        g.throttle_reasons.as_ref().map(|t| {
            if t.is_empty() {
                "none".into()
            } else {
                t.join(", ")
            }
        })
    }),
    ("pcie", |g, _| {
        g.pcie_link_gen.map(|gen| {
            let x = |w: Option<u32>| w.map_or("n/a".into(), |w| format!("x{w}"));
            format!(
                "gen {gen} (max {}), width {} (max {}), replays {}",
                opt(g.pcie_link_gen_max, ""),
                x(g.pcie_link_width),
                x(g.pcie_link_width_max),
                opt(g.pcie_replay_count, "")
            )
        })
    }),
    ("ecc enabled", |g, _| yes_no(g.ecc_enabled)),
    ("ecc volatile", |g, _| {
        g.ecc_corrected_volatile.map(|c| {
            format!(
                "corrected {c}, uncorrected {}",
                opt(g.ecc_uncorrected_volatile, "")
            )
        })
    }),
    ("ecc aggregate", |g, _| {
        g.ecc_corrected_aggregate.map(|c| {
            format!(
                "corrected {c}, uncorrected {}",
                opt(g.ecc_uncorrected_aggregate, "")
            )
        })
    }),
    ("retired pages", |g, _| {
        g.retired_pages_single_bit.map(|sb| {
            format!(
                "single-bit {sb}, double-bit {}, pending {}",
                opt(g.retired_pages_double_bit, ""),
                yes_no(g.retired_pages_pending).unwrap_or_else(|| "n/a".into())
            )
        })
    }),
    ("remapped rows", |g, _| {
        g.remapped_rows_correctable.map(|c| {
            format!(
                "correctable {c}, uncorrectable {}, pending {}, failure {}",
                opt(g.remapped_rows_uncorrectable, ""),
                yes_no(g.remapped_rows_pending).unwrap_or_else(|| "n/a".into()),
                yes_no(g.remapped_rows_failure).unwrap_or_else(|| "n/a".into())
            )
        })
    }),
    ("nvlink", |g, _| {
        if g.nvlinks.is_empty() {
            return None;
        }
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
        Some(format!(
            "{up}/{} links up, {errors} errors",
            g.nvlinks.len()
        ))
    }),
    ("xid", |g, _| {
        g.health
            .xid_last
            .map(|x| format!("last {x}, {} since agent start", g.health.xid_total))
    }),
];

/// Every device: a heading with its verdict, each health reason, then each reading it
/// has (or why it could not be read at all).
fn gpu_details(s: &mut String, gpus: &[GpuSample], now_ms: u64) {
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
        match &g.lost {
            Some(lost) => {
                let _ = writeln!(s, "  unreadable: {lost}");
            }
            None => write_fields(s, GPU_DETAIL, GPU_FIELDS, g, now_ms),
        }
    }
}

/// `corral node NAME`: the coordinator's view, then the latest report's Ray, host,
/// filesystems and GPUs.
pub(super) fn node_detail(n: &NodeView, now_ms: u64) -> String {
    let mut s = String::new();
    write_fields(&mut s, DETAIL, NODE_FIELDS, n, now_ms);
    let Some(r) = &n.report else {
        s.push_str("\nNo report received yet.\n");
        return s;
    };
    if let Some(ray) = &r.ray {
        s.push('\n');
        write_fields(&mut s, DETAIL, RAY_FIELDS, ray, now_ms);
    }
    s.push('\n');
    write_fields(&mut s, DETAIL, HOST_FIELDS, r, now_ms);
    s.push_str("\nFilesystems:\n");
    s.push_str(&listing(FILESYSTEM_COLUMNS, &r.host.filesystems, now_ms));
    match (&r.gpu_error, r.gpus.is_empty()) {
        (Some(e), _) => {
            let _ = writeln!(s, "\nGPUs: unreadable: {e}");
        }
        (None, true) => s.push_str("\nGPUs: none\n"),
        (None, false) => {
            s.push_str("\nGPUs:\n");
            s.push_str(&listing(GPU_COLUMNS, &r.gpus, now_ms));
            gpu_details(&mut s, &r.gpus, now_ms);
        }
    }
    s
}

/// An event's time as UTC, "2026-11-23 09:14:03Z".
fn utc(at_ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(at_ms) * 1_000_000)
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
        .unwrap_or_default()
}

/// `corral events`, one row per event.
const EVENT_COLUMNS: &[Column<Event>] = &[
    ("ID", |e, _| e.id.to_string()),
    ("TIME", |e, _| utc(e.at_ms)),
    ("NODE", |e, _| e.node.clone()),
    ("KIND", |e, _| e.kind.as_str().into()),
    ("CHANGE", |e, _| {
        format!("{} → {}", e.from.as_deref().unwrap_or("-"), e.to)
    }),
    ("MESSAGE", |e, _| e.message.clone()),
];

pub(super) fn events_table(events: &[Event]) -> String {
    if events.is_empty() {
        return "no events\n".into();
    }
    listing(EVENT_COLUMNS, events, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_proto::model::{DeviceReason, Filesystem, HealthStatus, Liveness};

    /// A device reason with what this view shows of it; the fields it does not show keep
    /// their defaults.
    fn reason(code: &str, status: &str, message: &str, needs_reset: bool) -> DeviceReason {
        serde_json::from_value(serde_json::json!({
            "code": code,
            "status": status,
            "message": message,
            "needs_reset": needs_reset,
        }))
        .expect("a device reason")
    }

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
            cordon: None,
        }
    }

    /// Every field of the detail view populated, plus the variants that take other
    /// branches: a MIG device, an unreadable GPU, a GPU that reports next to nothing.
    fn full_view() -> NodeView {
        use corral_proto::model::{NvLinkSample, RayRole, RayState, Reason, Temperature};
        let mut v = view();
        v.reasons = vec![Reason {
            check: "disk".into(),
            status: HealthStatus::Degraded,
            message: "/data is 97% full".into(),
        }];
        v.health = HealthStatus::Degraded;
        v.address = Some("10.0.0.7:40123".into());
        v.agent_version = Some("0.1.0".into());
        v.last_report_ms = Some(500);
        v.cordon = Some(corral_proto::api::Cordon {
            reason: "GPU 0 XID 79".into(),
            since_ms: 1_000,
            by: "policy".into(),
            drains: vec![corral_proto::api::DrainView {
                kind: "scheduler".into(),
                target: "slurm".into(),
                node: "gpu01".into(),
                state: "pending".into(),
                attempts: 2,
                message: Some("slurmctld not responding".into()),
                next_try_ms: None,
            }],
            resuming: false,
        });
        let r = v.report.as_mut().unwrap();
        r.facts.hostname = "gpu-01.example".into();
        r.facts.os = "Debian 12".into();
        r.facts.kernel = "6.1.0".into();
        r.facts.cpu_model = "AMD EPYC 9654".into();
        r.facts.cpu_cores = 4;
        r.facts.physical_cores = Some(2);
        r.host.uptime_secs = 90_000;
        r.host.cpu_percent = 12.34;
        r.host.per_core_percent = vec![1.0, 50.4, 99.6, 0.0];
        r.host.load.one = 0.5;
        r.host.load.five = 1.25;
        r.host.load.fifteen = 2.0;
        r.host.memory.total_bytes = 64 << 30;
        r.host.memory.available_bytes = 32 << 30;
        r.host.memory.swap_total_bytes = 8 << 30;
        r.host.memory.swap_used_bytes = 1 << 30;
        r.host.cpu_temperatures = vec![Temperature {
            label: "Tctl".into(),
            celsius: 54.6,
        }];
        r.ray = Some(RayStatus {
            role: RayRole::Head,
            state: RayState::Restarting,
            since_ms: 1_000,
            venv: "/opt/ray".into(),
            python_version: Some("3.11.2".into()),
            ray_version: None,
            head_address: Some("10.0.0.7:6379".into()),
            restarts: 2,
            message: Some("exited with status 1".into()),
            pid: Some(4242),
            log_file: Some("/var/log/corral/ray.log".into()),
        });
        let g = &mut r.gpus[0];
        g.serial = Some("1650123".into());
        g.pci_bus_id = Some("00000000:17:00.0".into());
        g.driver_version = Some("550.54".into());
        g.cuda_driver_version = Some("12.4".into());
        g.vbios_version = Some("96.00.89".into());
        g.persistence_mode = Some(true);
        g.compute_mode = Some("default".into());
        g.mig_enabled = Some(false);
        g.memory_used_bytes = Some(10 << 30);
        g.memory_total_bytes = Some(80 << 30);
        g.memory_free_bytes = Some(70 << 30);
        g.memory_utilization_percent = Some(20);
        g.encoder_utilization_percent = Some(0);
        g.decoder_utilization_percent = None;
        g.memory_temperature_celsius = Some(70);
        g.fan_speed_percent = Some(35);
        g.power_watts = Some(312.4);
        g.power_limit_watts = Some(700.0);
        g.energy_joules = Some(123_456.0);
        g.sm_clock_mhz = Some(1980);
        g.memory_clock_mhz = Some(2619);
        g.throttle_reasons = Some(vec!["sw_power_cap".into(), "hw_slowdown".into()]);
        g.pcie_link_gen = Some(5);
        g.pcie_link_gen_max = Some(5);
        g.pcie_link_width = Some(16);
        g.pcie_link_width_max = Some(16);
        g.pcie_replay_count = Some(3);
        g.ecc_enabled = Some(true);
        g.ecc_corrected_volatile = Some(1);
        g.ecc_uncorrected_volatile = Some(0);
        g.ecc_corrected_aggregate = Some(5);
        g.ecc_uncorrected_aggregate = None;
        g.retired_pages_single_bit = Some(0);
        g.retired_pages_double_bit = Some(0);
        g.retired_pages_pending = Some(false);
        g.remapped_rows_correctable = Some(2);
        g.remapped_rows_uncorrectable = Some(0);
        g.remapped_rows_pending = None;
        g.remapped_rows_failure = Some(false);
        g.nvlinks = (0..4)
            .map(|link| NvLinkSample {
                link,
                active: link != 3,
                crc_flit_errors: Some(u64::from(link)),
                crc_data_errors: None,
                replay_errors: Some(1),
                recovery_errors: Some(0),
            })
            .collect();
        g.health.status = DeviceStatus::Warn;
        g.health.reasons = vec![reason("ecc", "warn", "1 corrected ECC error", false)];
        (g.health.xid_last, g.health.xid_total) = (Some(31), 4);
        r.gpus[1].throttle_reasons = Some(vec![]);
        r.gpus[1].power_watts = Some(100.0);
        r.gpus.push(GpuSample {
            index: 2,
            uuid: "MIG-2".into(),
            name: "NVIDIA H100".into(),
            parent_uuid: Some("GPU-0".into()),
            mig_index: Some(1),
            memory_used_bytes: Some(1 << 30),
            memory_total_bytes: Some(10 << 30),
            ..Default::default()
        });
        r.gpus.push(GpuSample {
            index: 3,
            uuid: "GPU-3".into(),
            name: "NVIDIA H100".into(),
            lost: Some("GPU 3 is no longer enumerated by the driver".into()),
            ..Default::default()
        });
        v
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
        let mut v = view();
        let gpus = &mut v.report.as_mut().unwrap().gpus;
        let h = &mut gpus[1].health;
        h.status = DeviceStatus::Fail;
        h.reasons = vec![reason(
            "xid",
            "fail",
            "XID 79: GPU has fallen off the bus; reset the GPU to clear",
            true,
        )];
        (h.xid_last, h.xid_total) = (Some(79), 1);
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
    fn a_cordoned_node_shows_it_in_the_table_and_its_drains_in_the_detail() {
        let v = full_view();
        assert!(nodes_table(std::slice::from_ref(&v), 2_000).contains("ready,cordoned"));
        let d = node_detail(&v, 2_000);
        assert!(
            d.contains("Cordoned:    1.0s ago by policy: GPU 0 XID 79"),
            "{d}"
        );
        assert!(
            d.contains("  - scheduler slurm (gpu01): pending after 2 failed tries; slurmctld not responding"),
            "{d}"
        );
    }

    #[test]
    fn node_without_gpus_says_none() {
        let mut v = view();
        v.report.as_mut().unwrap().gpus.clear();
        assert!(node_detail(&v, 2_000).contains("GPUs: none"));
        assert!(nodes_table(&[v], 2_000).contains("  -"));
    }

    #[test]
    fn every_field_in_the_tables_shows_for_a_fully_reported_node_in_its_column() {
        let d = node_detail(&full_view(), 2_000);
        let lines: Vec<&str> = d.lines().collect();
        let labelled = |label: &str, layout: Layout| {
            let start = format!("{}{label}", layout.indent);
            let line = lines
                .iter()
                .find(|l| l.starts_with(&start))
                .unwrap_or_else(|| panic!("no {label:?} line in\n{d}"));
            let value_at = layout.indent.len() + layout.width + 1;
            let (pad, value) = line.split_at(value_at);
            assert!(
                pad.ends_with(' ') && !value.starts_with(' '),
                "{label:?}: value not in column {value_at}: {line:?}"
            );
        };
        for (label, _) in NODE_FIELDS {
            labelled(label, DETAIL);
        }
        for (label, _) in RAY_FIELDS {
            labelled(label, DETAIL);
        }
        for (label, _) in HOST_FIELDS {
            labelled(label, DETAIL);
        }
        for (label, _) in GPU_FIELDS {
            labelled(label, GPU_DETAIL);
        }
        let headers = GPU_COLUMNS.iter().map(|(h, _)| h);
        for header in headers.chain(FILESYSTEM_COLUMNS.iter().map(|(h, _)| h)) {
            assert!(d.contains(header), "no {header} column in\n{d}");
        }
    }

    #[test]
    fn detail_lines_keep_their_text() {
        let d = node_detail(&full_view(), 2_000);
        for line in [
            "Node:        gpu-01\n",
            "Health:      degraded\n  - [degraded] disk: /data is 97% full\nCordoned:    1.0s ago by policy: GPU 0 XID 79\n",
            "\nConnected:   yes from 10.0.0.7:40123\n",
            "Last report: 1.5s ago\n\nRay:         head restarting (for 1.0s)\n",
            "  venv:      /opt/ray (Python 3.11.2, Ray unknown)\n",
            "  restarts:  2\n  pid:       4242 (process group)\n",
            "\nHost:        gpu-01.example — Debian 12 (kernel 6.1.0)\n",
            "Per core %:  1 50 100 0\n",
            "Temps:       Tctl 55°C\n\nFilesystems:\nMOUNT  DEVICE",
            "  driver / cuda         550.54 / 12.4\n",
            "  nvlink                3/4 links up, 10 errors\n",
            "  xid                   last 31, 4 since agent start\n",
            "\nMIG 2/1 (parent GPU-0): NVIDIA H100 MIG-2 — ok\n  memory                1.0/10.0 GiB used, n/a GiB free\n",
        ] {
            assert!(d.contains(line), "{line:?} missing from\n{d}");
        }
    }

    #[test]
    fn readings_a_device_lacks_leave_their_lines_out_and_a_lost_device_shows_why() {
        let d = node_detail(&full_view(), 2_000);
        let section = |heading: &str| {
            let start = d.find(heading).unwrap_or_else(|| panic!("{heading}\n{d}"));
            let rest = &d[start..];
            rest[..rest[1..].find("\n\n").map_or(rest.len(), |e| e + 1)].to_string()
        };
        let sparse = section("GPU 1:");
        assert!(sparse.contains("  throttle reasons      none"), "{sparse}");
        for absent in ["serial", "pcie", "nvlink", "xid", "memory    "] {
            assert!(!sparse.contains(absent), "{absent} in {sparse}");
        }
        let lost = section("GPU 3:");
        assert_eq!(
            lost.lines().skip(1).collect::<Vec<_>>(),
            ["  unreadable: GPU 3 is no longer enumerated by the driver"]
        );
        let mut v = full_view();
        v.report.as_mut().unwrap().ray = None;
        v.report.as_mut().unwrap().host.cpu_temperatures.clear();
        let d = node_detail(&v, 2_000);
        assert!(!d.contains("Ray:") && !d.contains("Temps:"), "{d}");
        v.report = None;
        assert!(
            node_detail(&v, 2_000).ends_with("Last report: 1.5s ago\n\nNo report received yet.\n")
        );
    }

    #[test]
    fn listings_have_one_column_per_table_entry() {
        let t = nodes_table(&[full_view(), view()], 2_000);
        let header: Vec<&str> = t
            .lines()
            .next()
            .unwrap()
            .split("  ")
            .filter(|c| !c.is_empty())
            .map(str::trim)
            .collect();
        let want: Vec<&str> = NODE_COLUMNS.iter().map(|(h, _)| *h).collect();
        assert_eq!(header, want);
        assert!(t.contains("head restarting (2 restarts)"), "{t}");
        let mut bare = view();
        bare.report = None;
        let row = nodes_table(&[bare], 2_000)
            .lines()
            .nth(1)
            .unwrap()
            .to_string();
        assert_eq!(row.matches("  -").count(), 8, "{row}");
    }
}
