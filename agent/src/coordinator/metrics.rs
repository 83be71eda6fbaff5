//! `/metrics`: the registry rendered in the Prometheus/OpenMetrics text format
//! (prometheus-client).
//!
//! Metrics are built from a registry snapshot at scrape time rather than kept as live
//! gauges: there is one source of truth (the registry), a node that disappears from the
//! registry can never leave a stale series behind, and scrapes (every 15–60 s) cost far
//! less than updating gauges on every beat would.
//!
//! The names are an interface: dashboards and alert rules use them. They are listed in
//! [`METRIC_NAMES`] and documented in the README; changing one is a breaking change.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry as PromRegistry;

use super::registry::{NodeView, StatsView};
use crate::model::{HealthStatus, Liveness};

type Labels = Vec<(&'static str, String)>;

/// Every metric family corral exports (as it appears in the exposition, counters with
/// their `_total` suffix).
pub const METRIC_NAMES: &[&str] = &[
    "corral_nodes",
    "corral_node_up",
    "corral_node_liveness",
    "corral_node_health",
    "corral_node_last_beat_age_seconds",
    "corral_node_cpu_usage_percent",
    "corral_node_load1",
    "corral_node_load5",
    "corral_node_load15",
    "corral_node_memory_total_bytes",
    "corral_node_memory_available_bytes",
    "corral_node_swap_used_bytes",
    "corral_node_filesystem_size_bytes",
    "corral_node_filesystem_avail_bytes",
    "corral_node_gpus",
    "corral_gpu_utilization_percent",
    "corral_gpu_memory_used_bytes",
    "corral_gpu_memory_total_bytes",
    "corral_gpu_temperature_celsius",
    "corral_gpu_power_watts",
    "corral_coordinator_beats_total",
    "corral_coordinator_reports_total",
    "corral_coordinator_received_bytes_total",
    "corral_coordinator_rejected_connections_total",
];

struct Builder {
    reg: PromRegistry,
}

impl Builder {
    fn gauge(&mut self, name: &str, help: &str, samples: impl IntoIterator<Item = (Labels, f64)>) {
        let fam = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        for (labels, v) in samples {
            fam.get_or_create(&labels).set(v);
        }
        self.reg.register(name, help, fam);
    }

    fn total(&mut self, name: &str, help: &str, value: u64) {
        let c = Counter::<u64>::default();
        c.inc_by(value);
        self.reg.register(name, help, c);
    }

    fn counter(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (Labels, u64)>,
    ) {
        let fam = Family::<Labels, Counter>::default();
        for (labels, v) in samples {
            fam.get_or_create(&labels).inc_by(v);
        }
        self.reg.register(name, help, fam);
    }
}

fn node(n: &NodeView) -> Labels {
    vec![("node", n.name.clone())]
}

/// Renders the exposition text.
pub fn render(nodes: &[NodeView], stats: &StatsView) -> String {
    let mut b = Builder {
        reg: PromRegistry::default(),
    };
    let now = crate::model::unix_ms();
    b.gauge(
        "corral_nodes",
        "Nodes known to the coordinator, by liveness",
        Liveness::ALL.map(|l| {
            let n = nodes.iter().filter(|n| n.liveness == l).count();
            (vec![("liveness", l.as_str().to_string())], n as f64)
        }),
    );
    b.gauge(
        "corral_node_up",
        "1 if the node is ready (connected and beating), else 0",
        nodes
            .iter()
            .map(|n| (node(n), f64::from(u8::from(n.liveness == Liveness::Ready)))),
    );
    b.gauge(
        "corral_node_liveness",
        "1 for the node's current liveness state (ready, disconnected, down)",
        nodes.iter().flat_map(|n| {
            Liveness::ALL.map(|l| {
                let mut labels = node(n);
                labels.push(("state", l.as_str().into()));
                (labels, f64::from(u8::from(n.liveness == l)))
            })
        }),
    );
    b.gauge(
        "corral_node_health",
        "1 for the node's current health status (healthy, degraded, unhealthy)",
        nodes.iter().flat_map(|n| {
            [
                HealthStatus::Healthy,
                HealthStatus::Degraded,
                HealthStatus::Unhealthy,
            ]
            .map(|h| {
                let mut labels = node(n);
                labels.push(("status", h.as_str().into()));
                (labels, f64::from(u8::from(n.health == h)))
            })
        }),
    );
    b.gauge(
        "corral_node_last_beat_age_seconds",
        "Seconds since the node's last beat",
        nodes.iter().filter_map(|n| {
            n.last_beat_ms
                .map(|t| (node(n), now.saturating_sub(t) as f64 / 1000.0))
        }),
    );
    let reported: Vec<_> = nodes
        .iter()
        .filter_map(|n| n.report.as_ref().map(|r| (n, r)))
        .collect();
    let per_node = |f: fn(&crate::model::NodeReport) -> f64| {
        reported.iter().map(move |(n, r)| (node(n), f(r)))
    };
    b.gauge(
        "corral_node_cpu_usage_percent",
        "CPU use over all cores, percent",
        per_node(|r| f64::from(r.host.cpu_percent)),
    );
    b.gauge(
        "corral_node_load1",
        "1-minute load average",
        per_node(|r| r.host.load.one),
    );
    b.gauge(
        "corral_node_load5",
        "5-minute load average",
        per_node(|r| r.host.load.five),
    );
    b.gauge(
        "corral_node_load15",
        "15-minute load average",
        per_node(|r| r.host.load.fifteen),
    );
    b.gauge(
        "corral_node_memory_total_bytes",
        "Physical memory",
        per_node(|r| r.host.memory.total_bytes as f64),
    );
    b.gauge(
        "corral_node_memory_available_bytes",
        "Memory available to new work",
        per_node(|r| r.host.memory.available_bytes as f64),
    );
    b.gauge(
        "corral_node_swap_used_bytes",
        "Swap in use",
        per_node(|r| r.host.memory.swap_used_bytes as f64),
    );
    let fs = |f: fn(&crate::model::Filesystem) -> f64| {
        reported.iter().flat_map(move |(n, r)| {
            r.host.filesystems.iter().map(move |m| {
                let mut labels = node(n);
                labels.push(("mount", m.mount.clone()));
                (labels, f(m))
            })
        })
    };
    b.gauge(
        "corral_node_filesystem_size_bytes",
        "Filesystem size",
        fs(|m| m.total_bytes as f64),
    );
    b.gauge(
        "corral_node_filesystem_avail_bytes",
        "Filesystem space available",
        fs(|m| m.available_bytes as f64),
    );
    b.gauge(
        "corral_node_gpus",
        "GPUs the node reports",
        per_node(|r| r.gpus.len() as f64),
    );
    let gpu = |f: fn(&crate::model::GpuSample) -> Option<f64>| {
        reported.iter().flat_map(move |(n, r)| {
            r.gpus.iter().filter_map(move |g| {
                f(g).map(|v| {
                    let mut labels = node(n);
                    labels.push(("gpu", g.index.to_string()));
                    labels.push(("uuid", g.uuid.clone()));
                    (labels, v)
                })
            })
        })
    };
    b.gauge(
        "corral_gpu_utilization_percent",
        "GPU utilization (DCGM_FI_DEV_GPU_UTIL)",
        gpu(|g| g.utilization_percent.map(f64::from)),
    );
    b.gauge(
        "corral_gpu_memory_used_bytes",
        "GPU memory used (DCGM_FI_DEV_FB_USED, in bytes)",
        gpu(|g| g.memory_used_bytes.map(|v| v as f64)),
    );
    b.gauge(
        "corral_gpu_memory_total_bytes",
        "GPU memory total (DCGM_FI_DEV_FB_TOTAL, in bytes)",
        gpu(|g| g.memory_total_bytes.map(|v| v as f64)),
    );
    b.gauge(
        "corral_gpu_temperature_celsius",
        "GPU temperature (DCGM_FI_DEV_GPU_TEMP)",
        gpu(|g| g.temperature_celsius.map(f64::from)),
    );
    b.gauge(
        "corral_gpu_power_watts",
        "GPU power draw (DCGM_FI_DEV_POWER_USAGE)",
        gpu(|g| g.power_watts),
    );
    b.total(
        "corral_coordinator_beats",
        "Beats received",
        stats.beats_total,
    );
    b.total(
        "corral_coordinator_reports",
        "Reports received",
        stats.reports_total,
    );
    b.total(
        "corral_coordinator_received_bytes",
        "Bytes of agent frames received",
        stats.bytes_in_total,
    );
    b.counter(
        "corral_coordinator_rejected_connections",
        "Agent connections refused, by reason",
        stats
            .rejected_total
            .iter()
            .map(|(k, v)| (vec![("reason", k.clone())], *v)),
    );
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &b.reg);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_name_appears_and_no_other() {
        let stats = StatsView {
            nodes: 0,
            connected: 0,
            beats_total: 1,
            reports_total: 1,
            bytes_in_total: 1,
            rejected_total: [("identity".to_string(), 1)].into(),
            apply_latency_p50_us: 0,
            apply_latency_p99_us: 0,
            apply_latency_max_us: 0,
            apply_latency_samples: 0,
        };
        let mut report = crate::model::NodeReport::default();
        report.host.filesystems.push(crate::model::Filesystem {
            mount: "/".into(),
            device: "sda".into(),
            fs_type: "ext4".into(),
            total_bytes: 10,
            available_bytes: 5,
        });
        report.gpus.push(crate::model::GpuSample {
            uuid: "GPU-1".into(),
            memory_used_bytes: Some(1),
            memory_total_bytes: Some(2),
            utilization_percent: Some(3),
            temperature_celsius: Some(4),
            power_watts: Some(5.0),
            ..Default::default()
        });
        let node = NodeView {
            name: "n".into(),
            liveness: Liveness::Ready,
            liveness_since_ms: 0,
            health: HealthStatus::Healthy,
            reasons: vec![],
            connected: true,
            address: None,
            agent_version: None,
            first_seen_ms: 0,
            last_beat_ms: Some(0),
            last_report_ms: Some(0),
            report: Some(report),
        };
        let text = render(&[node], &stats);
        assert!(
            text.contains("corral_coordinator_beats_total 1\n"),
            "{text}"
        );
        let families: std::collections::BTreeSet<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        for name in METRIC_NAMES {
            let family = name.strip_suffix("_total").unwrap_or(name);
            assert!(families.contains(family), "{name} missing from\n{text}");
        }
        assert_eq!(families.len(), METRIC_NAMES.len());
    }
}
