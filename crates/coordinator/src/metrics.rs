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
//! GPU series carry `node`, `gpu` (the NVML index) and `uuid` labels (MIG instances add
//! `mig`); `docs/gpu-metrics.md` maps each to its dcgm-exporter `DCGM_FI_DEV_*` name.
//! A reading a GPU does not support has no series at all, never a zero.
//!
//! Jobs and plugins: `corral_jobs{scheduler,state}` counts the jobs the coordinator
//! holds by their state word (`queued`, `running`, ..., `submitting`, `rejected`,
//! `orphaned`); `corral_plugin_calls_total{plugin,export,outcome}` counts plugin calls
//! the coordinator routed since it started (`outcome`: `ok`, the plugin's error kind, or
//! `unreachable` when the agent could not be asked or did not answer);
//! `corral_plugins_loaded{node}` is the number of plugins a node's agent announced and
//! `corral_plugin_load_failures{node,plugin}` is 1 for each plugin that failed to load.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry as PromRegistry;

use super::jobs::JobMetrics;
use corral_proto::api::{NodeView, StatsView};
use corral_proto::model::{
    DeviceStatus, GpuSample, HealthStatus, Liveness, NodeReport, THROTTLE_REASONS,
};

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
    "corral_gpu_info",
    "corral_gpu_health",
    "corral_gpu_memory_free_bytes",
    "corral_gpu_memory_utilization_percent",
    "corral_gpu_encoder_utilization_percent",
    "corral_gpu_decoder_utilization_percent",
    "corral_gpu_memory_temperature_celsius",
    "corral_gpu_fan_speed_percent",
    "corral_gpu_power_limit_watts",
    "corral_gpu_energy_joules",
    "corral_gpu_sm_clock_mhz",
    "corral_gpu_memory_clock_mhz",
    "corral_gpu_throttle_reason",
    "corral_gpu_pcie_link_gen",
    "corral_gpu_pcie_link_gen_max",
    "corral_gpu_pcie_link_width",
    "corral_gpu_pcie_link_width_max",
    "corral_gpu_pcie_replays_total",
    "corral_gpu_ecc_errors_total",
    "corral_gpu_retired_pages",
    "corral_gpu_retired_pages_pending",
    "corral_gpu_remapped_rows",
    "corral_gpu_row_remap_pending",
    "corral_gpu_row_remap_failure",
    "corral_gpu_nvlink_up",
    "corral_gpu_nvlink_errors_total",
    "corral_gpu_xid_errors_total",
    "corral_gpu_last_xid",
    "corral_ray_state",
    "corral_ray_restarts_total",
    "corral_coordinator_beats_total",
    "corral_coordinator_reports_total",
    "corral_coordinator_received_bytes_total",
    "corral_coordinator_rejected_connections_total",
    "corral_jobs",
    "corral_plugin_calls_total",
    "corral_plugins_loaded",
    "corral_plugin_load_failures",
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

/// `node`, `gpu`, `uuid` (and `mig` for a MIG instance).
fn gpu_labels(n: &NodeView, g: &GpuSample) -> Labels {
    let mut labels = node(n);
    labels.push(("gpu", g.index.to_string()));
    labels.push(("uuid", g.uuid.clone()));
    if let (Some(_), Some(m)) = (&g.parent_uuid, g.mig_index) {
        labels.push(("mig", m.to_string()));
    }
    labels
}

/// One labelled series per `(label value, reading)` pair a GPU has.
fn split(
    n: &NodeView,
    g: &GpuSample,
    label: &'static str,
    values: Vec<(&'static str, Option<u64>)>,
) -> Vec<(Labels, u64)> {
    values
        .into_iter()
        .filter_map(|(k, v)| {
            v.map(|v| {
                let mut l = gpu_labels(n, g);
                l.push((label, k.to_string()));
                (l, v)
            })
        })
        .collect()
}

/// The GPU families beyond the first five (see `docs/gpu-metrics.md`).
fn gpu_families(b: &mut Builder, reported: &[(&NodeView, &NodeReport)]) {
    let gpus = || {
        reported
            .iter()
            .flat_map(|(n, r)| r.gpus.iter().map(move |g| (*n, g)))
    };
    let gauge = |f: fn(&GpuSample) -> Option<f64>| {
        gpus().filter_map(move |(n, g)| f(g).map(|v| (gpu_labels(n, g), v)))
    };
    let counter = |f: fn(&GpuSample) -> Option<u64>| {
        gpus().filter_map(move |(n, g)| f(g).map(|v| (gpu_labels(n, g), v)))
    };
    let flag = |v: Option<bool>| v.map(|b| f64::from(u8::from(b)));
    b.gauge(
        "corral_gpu_info",
        "1 per GPU; identity and configuration in labels",
        gpus().map(|(n, g)| {
            let mut l = gpu_labels(n, g);
            let s = |v: &Option<String>| v.clone().unwrap_or_default();
            let yn = |v: Option<bool>| v.map(|b| u8::from(b).to_string()).unwrap_or_default();
            l.push(("name", g.name.clone()));
            l.push(("serial", s(&g.serial)));
            l.push(("pci_bus_id", s(&g.pci_bus_id)));
            l.push(("driver_version", s(&g.driver_version)));
            l.push(("cuda_version", s(&g.cuda_driver_version)));
            l.push(("vbios_version", s(&g.vbios_version)));
            l.push(("compute_mode", s(&g.compute_mode)));
            l.push(("persistence_mode", yn(g.persistence_mode)));
            l.push(("ecc_enabled", yn(g.ecc_enabled)));
            l.push(("mig_enabled", yn(g.mig_enabled)));
            l.push(("parent_uuid", s(&g.parent_uuid)));
            (l, 1.0)
        }),
    );
    b.gauge(
        "corral_gpu_health",
        "1 for the GPU's current health status (ok, warn, fail)",
        gpus().flat_map(|(n, g)| {
            DeviceStatus::ALL.map(|st| {
                let mut l = gpu_labels(n, g);
                l.push(("status", st.as_str().into()));
                (l, f64::from(u8::from(g.health.status == st)))
            })
        }),
    );
    b.gauge(
        "corral_gpu_memory_free_bytes",
        "GPU memory free (DCGM_FI_DEV_FB_FREE, in bytes)",
        gauge(|g| g.memory_free_bytes.map(|v| v as f64)),
    );
    b.gauge(
        "corral_gpu_memory_utilization_percent",
        "Memory controller utilization (DCGM_FI_DEV_MEM_COPY_UTIL)",
        gauge(|g| g.memory_utilization_percent.map(f64::from)),
    );
    b.gauge(
        "corral_gpu_encoder_utilization_percent",
        "Encoder utilization (DCGM_FI_DEV_ENC_UTIL)",
        gauge(|g| g.encoder_utilization_percent.map(f64::from)),
    );
    b.gauge(
        "corral_gpu_decoder_utilization_percent",
        "Decoder utilization (DCGM_FI_DEV_DEC_UTIL)",
        gauge(|g| g.decoder_utilization_percent.map(f64::from)),
    );
    b.gauge(
        "corral_gpu_memory_temperature_celsius",
        "HBM temperature (DCGM_FI_DEV_MEMORY_TEMP)",
        gauge(|g| g.memory_temperature_celsius.map(f64::from)),
    );
    b.gauge(
        "corral_gpu_fan_speed_percent",
        "Fan speed (DCGM_FI_DEV_FAN_SPEED)",
        gauge(|g| g.fan_speed_percent.map(f64::from)),
    );
    b.gauge(
        "corral_gpu_power_limit_watts",
        "Enforced power limit (DCGM_FI_DEV_POWER_MGMT_LIMIT)",
        gauge(|g| g.power_limit_watts),
    );
    b.gauge(
        "corral_gpu_energy_joules",
        "Energy used since the driver loaded, cumulative (DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION, in J)",
        gauge(|g| g.energy_joules),
    );
    b.gauge(
        "corral_gpu_sm_clock_mhz",
        "SM clock (DCGM_FI_DEV_SM_CLOCK)",
        gauge(|g| g.sm_clock_mhz.map(f64::from)),
    );
    b.gauge(
        "corral_gpu_memory_clock_mhz",
        "Memory clock (DCGM_FI_DEV_MEM_CLOCK)",
        gauge(|g| g.memory_clock_mhz.map(f64::from)),
    );
    b.gauge(
        "corral_gpu_throttle_reason",
        "1 while the clock throttle reason is active (DCGM_FI_DEV_CLOCK_THROTTLE_REASONS, one series per bit)",
        gpus().flat_map(|(n, g)| {
            g.throttle_reasons.iter().flat_map(move |active| {
                THROTTLE_REASONS.iter().map(move |r| {
                    let mut l = gpu_labels(n, g);
                    l.push(("reason", r.to_string()));
                    (l, f64::from(u8::from(active.iter().any(|a| a == r))))
                })
            })
        }),
    );
    b.gauge(
        "corral_gpu_pcie_link_gen",
        "Current PCIe generation (DCGM_FI_DEV_PCIE_LINK_GEN)",
        gauge(|g| g.pcie_link_gen.map(f64::from)),
    );
    b.gauge(
        "corral_gpu_pcie_link_gen_max",
        "Maximum PCIe generation (DCGM_FI_DEV_PCIE_MAX_LINK_GEN)",
        gauge(|g| g.pcie_link_gen_max.map(f64::from)),
    );
    b.gauge(
        "corral_gpu_pcie_link_width",
        "Current PCIe link width (DCGM_FI_DEV_PCIE_LINK_WIDTH)",
        gauge(|g| g.pcie_link_width.map(f64::from)),
    );
    b.gauge(
        "corral_gpu_pcie_link_width_max",
        "Maximum PCIe link width (DCGM_FI_DEV_PCIE_MAX_LINK_WIDTH)",
        gauge(|g| g.pcie_link_width_max.map(f64::from)),
    );
    b.counter(
        "corral_gpu_pcie_replays",
        "PCIe replays (DCGM_FI_DEV_PCIE_REPLAY_COUNTER)",
        counter(|g| g.pcie_replay_count),
    );
    b.counter(
        "corral_gpu_ecc_errors",
        "ECC errors by type (corrected, uncorrected) and counter (volatile, aggregate) (DCGM_FI_DEV_ECC_{SBE,DBE}_{VOL,AGG}_TOTAL)",
        gpus().flat_map(|(n, g)| {
            let mut out = split(
                n,
                g,
                "type",
                vec![
                    ("corrected", g.ecc_corrected_volatile),
                    ("uncorrected", g.ecc_uncorrected_volatile),
                ],
            );
            out.iter_mut().for_each(|(l, _)| l.push(("counter", "volatile".into())));
            let mut agg = split(
                n,
                g,
                "type",
                vec![
                    ("corrected", g.ecc_corrected_aggregate),
                    ("uncorrected", g.ecc_uncorrected_aggregate),
                ],
            );
            agg.iter_mut().for_each(|(l, _)| l.push(("counter", "aggregate".into())));
            out.extend(agg);
            out
        }),
    );
    b.gauge(
        "corral_gpu_retired_pages",
        "Retired pages by cause (DCGM_FI_DEV_RETIRED_SBE, DCGM_FI_DEV_RETIRED_DBE)",
        gpus().flat_map(|(n, g)| {
            split(
                n,
                g,
                "cause",
                vec![
                    ("single_bit", g.retired_pages_single_bit),
                    ("double_bit", g.retired_pages_double_bit),
                ],
            )
            .into_iter()
            .map(|(l, v)| (l, v as f64))
        }),
    );
    b.gauge(
        "corral_gpu_retired_pages_pending",
        "1 while pages wait for a reset to be retired (DCGM_FI_DEV_RETIRED_PENDING)",
        gpus().filter_map(|(n, g)| flag(g.retired_pages_pending).map(|v| (gpu_labels(n, g), v))),
    );
    b.gauge(
        "corral_gpu_remapped_rows",
        "Remapped rows by type (DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS, DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS)",
        gpus().flat_map(|(n, g)| {
            split(
                n,
                g,
                "type",
                vec![
                    ("correctable", g.remapped_rows_correctable),
                    ("uncorrectable", g.remapped_rows_uncorrectable),
                ],
            )
            .into_iter()
            .map(|(l, v)| (l, v as f64))
        }),
    );
    b.gauge(
        "corral_gpu_row_remap_pending",
        "1 while a row remap waits for a reset (DCGM_FI_DEV_ROW_REMAP_PENDING)",
        gpus().filter_map(|(n, g)| flag(g.remapped_rows_pending).map(|v| (gpu_labels(n, g), v))),
    );
    b.gauge(
        "corral_gpu_row_remap_failure",
        "1 after a row remap failed (DCGM_FI_DEV_ROW_REMAP_FAILURE)",
        gpus().filter_map(|(n, g)| flag(g.remapped_rows_failure).map(|v| (gpu_labels(n, g), v))),
    );
    b.gauge(
        "corral_gpu_nvlink_up",
        "1 while the NVLink link is active",
        gpus().flat_map(|(n, g)| {
            g.nvlinks.iter().map(move |link| {
                let mut l = gpu_labels(n, g);
                l.push(("link", link.link.to_string()));
                (l, f64::from(u8::from(link.active)))
            })
        }),
    );
    b.counter(
        "corral_gpu_nvlink_errors",
        "NVLink errors by link and type (DCGM_FI_DEV_NVLINK_{CRC_FLIT,CRC_DATA,REPLAY,RECOVERY}_ERROR_COUNT_L<link>)",
        gpus().flat_map(|(n, g)| {
            g.nvlinks.iter().flat_map(move |link| {
                let mut out = split(
                    n,
                    g,
                    "type",
                    vec![
                        ("crc_flit", link.crc_flit_errors),
                        ("crc_data", link.crc_data_errors),
                        ("replay", link.replay_errors),
                        ("recovery", link.recovery_errors),
                    ],
                );
                out.iter_mut().for_each(|(l, _)| l.push(("link", link.link.to_string())));
                out
            })
        }),
    );
    b.counter(
        "corral_gpu_xid_errors",
        "XID errors seen since the agent started, ignored classes included",
        gpus().map(|(n, g)| (gpu_labels(n, g), g.health.xid_total)),
    );
    b.gauge(
        "corral_gpu_last_xid",
        "The most recent XID seen since the agent started (DCGM_FI_DEV_XID_ERRORS)",
        gauge(|g| g.health.xid_last.map(|x| x as f64)),
    );
}

/// Renders the exposition text.
pub fn render(nodes: &[NodeView], stats: &StatsView, jobs: &JobMetrics) -> String {
    let mut b = Builder {
        reg: PromRegistry::default(),
    };
    let now = corral_proto::model::unix_ms();
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
    let per_node = |f: fn(&corral_proto::model::NodeReport) -> f64| {
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
    let fs = |f: fn(&corral_proto::model::Filesystem) -> f64| {
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
    let gpu = |f: fn(&corral_proto::model::GpuSample) -> Option<f64>| {
        reported.iter().flat_map(move |(n, r)| {
            r.gpus
                .iter()
                .filter_map(move |g| f(g).map(|v| (gpu_labels(n, g), v)))
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
    gpu_families(&mut b, &reported);
    let rays: Vec<(&NodeView, &corral_proto::model::RayStatus)> = nodes
        .iter()
        .filter_map(|n| Some((n, n.report.as_ref()?.ray.as_ref()?)))
        .collect();
    b.gauge(
        "corral_ray_state",
        "1 for the state of the node's supervised Ray process (starting, running, restarting, refused, failed, stopped)",
        rays.iter().flat_map(|(n, r)| {
            corral_proto::model::RayState::ALL.map(|st| {
                let mut labels = node(n);
                labels.push(("role", r.role.as_str().into()));
                labels.push(("state", st.as_str().into()));
                (labels, f64::from(u8::from(r.state == st)))
            })
        }),
    );
    b.counter(
        "corral_ray_restarts",
        "Restarts of the node's Ray process after unexpected exits, since its agent started",
        rays.iter().map(|(n, r)| {
            let mut labels = node(n);
            labels.push(("role", r.role.as_str().into()));
            (labels, u64::from(r.restarts))
        }),
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
    b.gauge(
        "corral_jobs",
        "Jobs the coordinator holds, by scheduler plugin and state",
        jobs.jobs.iter().map(|((scheduler, state), n)| {
            (
                vec![("scheduler", scheduler.clone()), ("state", state.clone())],
                *n as f64,
            )
        }),
    );
    b.counter(
        "corral_plugin_calls",
        "Plugin calls routed to agents since the coordinator started, by plugin, export and outcome",
        jobs.plugin_calls.iter().map(|((plugin, export, outcome), n)| {
            (
                vec![
                    ("plugin", plugin.clone()),
                    ("export", export.to_string()),
                    ("outcome", outcome.to_string()),
                ],
                *n,
            )
        }),
    );
    let announced = || jobs.plugins.iter().filter(|p| p.announced_ms.is_some());
    b.gauge(
        "corral_plugins_loaded",
        "Scheduler plugins the node's agent loaded (as last announced)",
        announced().map(|p| (vec![("node", p.node.clone())], p.loaded.len() as f64)),
    );
    b.gauge(
        "corral_plugin_load_failures",
        "1 for each plugin the node's agent failed to load (as last announced)",
        announced().flat_map(|p| {
            p.failed.iter().map(|f| {
                (
                    vec![("node", p.node.clone()), ("plugin", f.name.clone())],
                    1.0,
                )
            })
        }),
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
        let mut report = corral_proto::model::NodeReport::default();
        report
            .host
            .filesystems
            .push(corral_proto::model::Filesystem {
                mount: "/".into(),
                device: "sda".into(),
                fs_type: "ext4".into(),
                total_bytes: 10,
                available_bytes: 5,
            });
        report.gpus = vec![corral_proto::model::GpuSample::plausible(0)];
        report.gpus[0].health.xid_last = Some(79);
        report.gpus[0].fan_speed_percent = Some(30);
        report.ray = Some(corral_proto::model::RayStatus {
            role: corral_proto::model::RayRole::Head,
            state: corral_proto::model::RayState::Running,
            since_ms: 0,
            venv: "/v".into(),
            python_version: None,
            ray_version: None,
            head_address: None,
            restarts: 1,
            message: None,
            pid: None,
            log_file: None,
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
        let jobs = JobMetrics {
            jobs: [(("slurm".to_string(), "running".to_string()), 2)].into(),
            plugin_calls: [(("slurm".to_string(), "status", "ok"), 5)].into(),
            plugins: vec![corral_proto::api::NodePlugins {
                node: "n".into(),
                connected: true,
                announced_ms: Some(1),
                loaded: vec![],
                failed: vec![corral_proto::job::LoadFailure {
                    name: "pbs".into(),
                    message: "missing".into(),
                }],
            }],
        };
        let text = render(&[node], &stats, &jobs);
        for line in [
            "corral_jobs{scheduler=\"slurm\",state=\"running\"} 2.0\n",
            "corral_plugin_calls_total{plugin=\"slurm\",export=\"status\",outcome=\"ok\"} 5\n",
            "corral_plugins_loaded{node=\"n\"} 0.0\n",
            "corral_plugin_load_failures{node=\"n\",plugin=\"pbs\"} 1.0\n",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
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
