//! `/metrics`: the registry rendered in the Prometheus/OpenMetrics text format
//! (prometheus-client).
//!
//! Metrics are built from a registry snapshot at scrape time rather than kept as live
//! gauges: there is one source of truth (the registry), a node that disappears from the
//! registry can never leave a stale series behind, and scrapes (every 15–60 s) cost far
//! less than updating gauges on every beat would.
//!
//! Every family is one row of a table: its name (as it appears in the exposition,
//! counters with their `_total` suffix), help, label names and the accessor that reads
//! its samples from the snapshot. Rendering walks the table, and [`METRIC_NAMES`] is
//! the table's name column, so the list cannot miss a family that is exported.
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
//!
//! What agents are refused: `corral_refused_announcements_total{kind}` counts Ray head
//! (`ray_head`) and scheduler plugin (`scheduler`) announcements from nodes not
//! authorized to make them, `corral_foreign_command_results_total` command results that
//! came on another connection than their command, `corral_truncated_reports_total{node}`
//! reports cut to the coordinator's caps and `corral_suppressed_events_total{node}`
//! events not recorded because the node was over its event rate.
//!
//! Invariant: every label value is escaped as OpenMetrics requires (`\`, `\"`, `\n`)
//! at the one place series are made ([`Family::register`]): agents report mount points,
//! device names and plugin names, and none of them can end its label, its series or its
//! line (prometheus-client writes label values as given).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family as PromFamily;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry as PromRegistry;

use crate::console::ConsoleMetrics;
use crate::jobs::JobMetrics;
use crate::pools::PoolMetrics;
use crate::remediation::RemediationMetrics;
use corral_proto::api::{NodeView, StatsView};
use corral_proto::model::{
    DeviceStatus, Filesystem, GpuAction, GpuSample, HealthStatus, Liveness, NodeReport, RayState,
    RayStatus, THROTTLE_REASONS,
};

type Labels = Vec<(&'static str, String)>;
type Series<V> = Vec<(Labels, V)>;

/// What one scrape reads from.
struct Scrape<'a> {
    nodes: &'a [NodeView],
    stats: &'a StatsView,
    jobs: &'a JobMetrics,
    remediation: &'a RemediationMetrics,
    console: &'a ConsoleMetrics,
    pools: &'a PoolMetrics,
    now_ms: u64,
}

impl<'a> Scrape<'a> {
    /// Nodes with a report, and the report.
    fn reported(&self) -> impl Iterator<Item = (&'a NodeView, &'a NodeReport)> {
        self.nodes
            .iter()
            .filter_map(|n| n.report.as_ref().map(|r| (n, r)))
    }

    fn gpus(&self) -> impl Iterator<Item = (&'a NodeView, &'a GpuSample)> {
        self.reported()
            .flat_map(|(n, r)| r.gpus.iter().map(move |g| (n, g)))
    }

    fn rays(&self) -> impl Iterator<Item = (&'a NodeView, &'a RayStatus)> {
        self.reported()
            .filter_map(|(n, r)| r.ray.as_ref().map(|ray| (n, ray)))
    }
}

/// Where a family's samples come from.
#[derive(Clone, Copy)]
enum Samples {
    Gauge(fn(&Scrape<'_>) -> Series<f64>),
    Counter(fn(&Scrape<'_>) -> Series<u64>),
}

/// One exported metric family.
struct Family {
    /// As in the exposition: counters end in `_total`.
    name: &'static str,
    help: &'static str,
    /// Label names in the order series carry them; a series may leave one out (`mig`
    /// exists only on MIG instances). No labels: a single series.
    labels: &'static [&'static str],
    samples: Samples,
}

const fn gauge(
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    samples: fn(&Scrape<'_>) -> Series<f64>,
) -> Family {
    Family {
        name,
        help,
        labels,
        samples: Samples::Gauge(samples),
    }
}

const fn counter(
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    samples: fn(&Scrape<'_>) -> Series<u64>,
) -> Family {
    Family {
        name,
        help,
        labels,
        samples: Samples::Counter(samples),
    }
}

const NODE: &[&str] = &["node"];
const GPU: &[&str] = &["node", "gpu", "uuid", "mig"];

/// Every family corral exports, in exposition order.
const FAMILIES: &[Family] = &[
    gauge("corral_nodes", "Nodes known to the coordinator, by liveness", &["liveness"], |s| {
        Liveness::ALL
            .iter()
            .map(|&l| {
                let n = s.nodes.iter().filter(|n| n.liveness == l).count();
                (vec![("liveness", l.as_str().to_string())], n as f64)
            })
            .collect()
    }),
    gauge("corral_node_up", "1 if the node is ready (connected and beating), else 0", NODE, |s| {
        s.nodes
            .iter()
            .map(|n| (node(n), one_if(n.liveness == Liveness::Ready)))
            .collect()
    }),
    gauge(
        "corral_node_liveness",
        "1 for the node's current liveness state (ready, disconnected, down)",
        &["node", "state"],
        |s| {
            s.nodes
                .iter()
                .flat_map(|n| {
                    Liveness::ALL
                        .map(|l| (with(node(n), "state", l.as_str()), one_if(n.liveness == l)))
                })
                .collect()
        },
    ),
    gauge(
        "corral_node_health",
        "1 for the node's current health status (healthy, degraded, unhealthy)",
        &["node", "status"],
        |s| {
            s.nodes
                .iter()
                .flat_map(|n| {
                    [HealthStatus::Healthy, HealthStatus::Degraded, HealthStatus::Unhealthy]
                        .map(|h| (with(node(n), "status", h.as_str()), one_if(n.health == h)))
                })
                .collect()
        },
    ),
    gauge("corral_node_last_beat_age_seconds", "Seconds since the node's last beat", NODE, |s| {
        s.nodes
            .iter()
            .filter_map(|n| {
                n.last_beat_ms
                    .map(|t| (node(n), s.now_ms.saturating_sub(t) as f64 / 1000.0))
            })
            .collect()
    }),
    gauge("corral_node_cpu_usage_percent", "CPU use over all cores, percent", NODE, |s| {
        per_node(s, |r| f64::from(r.host.cpu_percent))
    }),
    gauge("corral_node_load1", "1-minute load average", NODE, |s| {
        per_node(s, |r| r.host.load.one)
    }),
    gauge("corral_node_load5", "5-minute load average", NODE, |s| {
        per_node(s, |r| r.host.load.five)
    }),
    gauge("corral_node_load15", "15-minute load average", NODE, |s| {
        per_node(s, |r| r.host.load.fifteen)
    }),
    gauge("corral_node_memory_total_bytes", "Physical memory", NODE, |s| {
        per_node(s, |r| r.host.memory.total_bytes as f64)
    }),
    gauge("corral_node_memory_available_bytes", "Memory available to new work", NODE, |s| {
        per_node(s, |r| r.host.memory.available_bytes as f64)
    }),
    gauge("corral_node_swap_used_bytes", "Swap in use", NODE, |s| {
        per_node(s, |r| r.host.memory.swap_used_bytes as f64)
    }),
    gauge("corral_node_filesystem_size_bytes", "Filesystem size", &["node", "mount"], |s| {
        per_filesystem(s, |m| m.total_bytes as f64)
    }),
    gauge(
        "corral_node_filesystem_avail_bytes",
        "Filesystem space available",
        &["node", "mount"],
        |s| per_filesystem(s, |m| m.available_bytes as f64),
    ),
    gauge("corral_node_gpus", "GPUs the node reports", NODE, |s| {
        per_node(s, |r| r.gpus.len() as f64)
    }),
    gauge("corral_gpu_utilization_percent", "GPU utilization (DCGM_FI_DEV_GPU_UTIL)", GPU, |s| {
        per_gpu(s, |g| g.utilization_percent.map(f64::from))
    }),
    gauge(
        "corral_gpu_memory_used_bytes",
        "GPU memory used (DCGM_FI_DEV_FB_USED, in bytes)",
        GPU,
        |s| per_gpu(s, |g| g.memory_used_bytes.map(|v| v as f64)),
    ),
    gauge(
        "corral_gpu_memory_total_bytes",
        "GPU memory total (DCGM_FI_DEV_FB_TOTAL, in bytes)",
        GPU,
        |s| per_gpu(s, |g| g.memory_total_bytes.map(|v| v as f64)),
    ),
    gauge(
        "corral_gpu_temperature_celsius",
        "GPU temperature (DCGM_FI_DEV_GPU_TEMP)",
        GPU,
        |s| per_gpu(s, |g| g.temperature_celsius.map(f64::from)),
    ),
    gauge("corral_gpu_power_watts", "GPU power draw (DCGM_FI_DEV_POWER_USAGE)", GPU, |s| {
        per_gpu(s, |g| g.power_watts)
    }),
    gauge(
        "corral_gpu_info",
        "1 per GPU; identity and configuration in labels",
        &[
            "node", "gpu", "uuid", "mig", "name", "serial", "pci_bus_id", "driver_version",
            "cuda_version", "vbios_version", "compute_mode", "persistence_mode", "ecc_enabled",
            "mig_enabled", "parent_uuid",
        ],
        |s| {
            s.gpus()
                .map(|(n, g)| {
                    let text = |v: &Option<String>| v.clone().unwrap_or_default();
                    let yes_no =
                        |v: Option<bool>| v.map(|b| u8::from(b).to_string()).unwrap_or_default();
                    let mut l = gpu_labels(n, g);
                    l.push(("name", g.name.clone()));
                    l.push(("serial", text(&g.serial)));
                    l.push(("pci_bus_id", text(&g.pci_bus_id)));
                    l.push(("driver_version", text(&g.driver_version)));
                    l.push(("cuda_version", text(&g.cuda_driver_version)));
                    l.push(("vbios_version", text(&g.vbios_version)));
                    l.push(("compute_mode", text(&g.compute_mode)));
                    l.push(("persistence_mode", yes_no(g.persistence_mode)));
                    l.push(("ecc_enabled", yes_no(g.ecc_enabled)));
                    l.push(("mig_enabled", yes_no(g.mig_enabled)));
                    l.push(("parent_uuid", text(&g.parent_uuid)));
                    (l, 1.0)
                })
                .collect()
        },
    ),
    gauge(
        "corral_gpu_health",
        "1 for the GPU's current health status (ok, warn, fail)",
        &["node", "gpu", "uuid", "mig", "status"],
        |s| {
            s.gpus()
                .flat_map(|(n, g)| {
                    DeviceStatus::ALL.map(|st| {
                        (
                            with(gpu_labels(n, g), "status", st.as_str()),
                            one_if(g.health.status == st),
                        )
                    })
                })
                .collect()
        },
    ),
    gauge(
        "corral_gpu_memory_free_bytes",
        "GPU memory free (DCGM_FI_DEV_FB_FREE, in bytes)",
        GPU,
        |s| per_gpu(s, |g| g.memory_free_bytes.map(|v| v as f64)),
    ),
    gauge(
        "corral_gpu_memory_utilization_percent",
        "Memory controller utilization (DCGM_FI_DEV_MEM_COPY_UTIL)",
        GPU,
        |s| per_gpu(s, |g| g.memory_utilization_percent.map(f64::from)),
    ),
    gauge(
        "corral_gpu_encoder_utilization_percent",
        "Encoder utilization (DCGM_FI_DEV_ENC_UTIL)",
        GPU,
        |s| per_gpu(s, |g| g.encoder_utilization_percent.map(f64::from)),
    ),
    gauge(
        "corral_gpu_decoder_utilization_percent",
        "Decoder utilization (DCGM_FI_DEV_DEC_UTIL)",
        GPU,
        |s| per_gpu(s, |g| g.decoder_utilization_percent.map(f64::from)),
    ),
    gauge(
        "corral_gpu_memory_temperature_celsius",
        "HBM temperature (DCGM_FI_DEV_MEMORY_TEMP)",
        GPU,
        |s| per_gpu(s, |g| g.memory_temperature_celsius.map(f64::from)),
    ),
    gauge("corral_gpu_fan_speed_percent", "Fan speed (DCGM_FI_DEV_FAN_SPEED)", GPU, |s| {
        per_gpu(s, |g| g.fan_speed_percent.map(f64::from))
    }),
    gauge(
        "corral_gpu_power_limit_watts",
        "Enforced power limit (DCGM_FI_DEV_POWER_MGMT_LIMIT)",
        GPU,
        |s| per_gpu(s, |g| g.power_limit_watts),
    ),
    gauge(
        "corral_gpu_energy_joules",
        "Energy used since the driver loaded, cumulative (DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION, in J)",
        GPU,
        |s| per_gpu(s, |g| g.energy_joules),
    ),
    gauge("corral_gpu_sm_clock_mhz", "SM clock (DCGM_FI_DEV_SM_CLOCK)", GPU, |s| {
        per_gpu(s, |g| g.sm_clock_mhz.map(f64::from))
    }),
    gauge("corral_gpu_memory_clock_mhz", "Memory clock (DCGM_FI_DEV_MEM_CLOCK)", GPU, |s| {
        per_gpu(s, |g| g.memory_clock_mhz.map(f64::from))
    }),
    gauge(
        "corral_gpu_throttle_reason",
        "1 while the clock throttle reason is active (DCGM_FI_DEV_CLOCK_THROTTLE_REASONS, one series per bit)",
        &["node", "gpu", "uuid", "mig", "reason"],
        |s| {
            s.gpus()
                .flat_map(|(n, g)| {
                    g.throttle_reasons.iter().flat_map(move |active| {
                        THROTTLE_REASONS.iter().map(move |r| {
                            (
                                with(gpu_labels(n, g), "reason", r),
                                one_if(active.iter().any(|a| a == r)),
                            )
                        })
                    })
                })
                .collect()
        },
    ),
    gauge(
        "corral_gpu_pcie_link_gen",
        "Current PCIe generation (DCGM_FI_DEV_PCIE_LINK_GEN)",
        GPU,
        |s| per_gpu(s, |g| g.pcie_link_gen.map(f64::from)),
    ),
    gauge(
        "corral_gpu_pcie_link_gen_max",
        "Maximum PCIe generation (DCGM_FI_DEV_PCIE_MAX_LINK_GEN)",
        GPU,
        |s| per_gpu(s, |g| g.pcie_link_gen_max.map(f64::from)),
    ),
    gauge(
        "corral_gpu_pcie_link_width",
        "Current PCIe link width (DCGM_FI_DEV_PCIE_LINK_WIDTH)",
        GPU,
        |s| per_gpu(s, |g| g.pcie_link_width.map(f64::from)),
    ),
    gauge(
        "corral_gpu_pcie_link_width_max",
        "Maximum PCIe link width (DCGM_FI_DEV_PCIE_MAX_LINK_WIDTH)",
        GPU,
        |s| per_gpu(s, |g| g.pcie_link_width_max.map(f64::from)),
    ),
    counter(
        "corral_gpu_pcie_replays_total",
        "PCIe replays (DCGM_FI_DEV_PCIE_REPLAY_COUNTER)",
        GPU,
        |s| per_gpu_count(s, |g| g.pcie_replay_count),
    ),
    counter(
        "corral_gpu_ecc_errors_total",
        "ECC errors by type (corrected, uncorrected) and counter (volatile, aggregate) (DCGM_FI_DEV_ECC_{SBE,DBE}_{VOL,AGG}_TOTAL)",
        &["node", "gpu", "uuid", "mig", "type", "counter"],
        |s| {
            s.gpus()
                .flat_map(|(n, g)| {
                    let volatile = [
                        ("corrected", g.ecc_corrected_volatile),
                        ("uncorrected", g.ecc_uncorrected_volatile),
                    ];
                    let aggregate = [
                        ("corrected", g.ecc_corrected_aggregate),
                        ("uncorrected", g.ecc_uncorrected_aggregate),
                    ];
                    let mut out = split(n, g, "type", volatile);
                    out.iter_mut().for_each(|(l, _)| l.push(("counter", "volatile".into())));
                    let mut agg = split(n, g, "type", aggregate);
                    agg.iter_mut().for_each(|(l, _)| l.push(("counter", "aggregate".into())));
                    out.extend(agg);
                    out
                })
                .collect()
        },
    ),
    gauge(
        "corral_gpu_retired_pages",
        "Retired pages by cause (DCGM_FI_DEV_RETIRED_SBE, DCGM_FI_DEV_RETIRED_DBE)",
        &["node", "gpu", "uuid", "mig", "cause"],
        |s| {
            s.gpus()
                .flat_map(|(n, g)| {
                    let causes = [
                        ("single_bit", g.retired_pages_single_bit),
                        ("double_bit", g.retired_pages_double_bit),
                    ];
                    as_gauge(split(n, g, "cause", causes))
                })
                .collect()
        },
    ),
    gauge(
        "corral_gpu_retired_pages_pending",
        "1 while pages wait for a reset to be retired (DCGM_FI_DEV_RETIRED_PENDING)",
        GPU,
        |s| per_gpu(s, |g| flag(g.retired_pages_pending)),
    ),
    gauge(
        "corral_gpu_remapped_rows",
        "Remapped rows by type (DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS, DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS)",
        &["node", "gpu", "uuid", "mig", "type"],
        |s| {
            s.gpus()
                .flat_map(|(n, g)| {
                    let types = [
                        ("correctable", g.remapped_rows_correctable),
                        ("uncorrectable", g.remapped_rows_uncorrectable),
                    ];
                    as_gauge(split(n, g, "type", types))
                })
                .collect()
        },
    ),
    gauge(
        "corral_gpu_row_remap_pending",
        "1 while a row remap waits for a reset (DCGM_FI_DEV_ROW_REMAP_PENDING)",
        GPU,
        |s| per_gpu(s, |g| flag(g.remapped_rows_pending)),
    ),
    gauge(
        "corral_gpu_row_remap_failure",
        "1 after a row remap failed (DCGM_FI_DEV_ROW_REMAP_FAILURE)",
        GPU,
        |s| per_gpu(s, |g| flag(g.remapped_rows_failure)),
    ),
    gauge(
        "corral_gpu_nvlink_up",
        "1 while the NVLink link is active",
        &["node", "gpu", "uuid", "mig", "link"],
        |s| {
            s.gpus()
                .flat_map(|(n, g)| {
                    g.nvlinks.iter().map(move |link| {
                        (
                            with(gpu_labels(n, g), "link", &link.link.to_string()),
                            one_if(link.active),
                        )
                    })
                })
                .collect()
        },
    ),
    counter(
        "corral_gpu_nvlink_errors_total",
        "NVLink errors by link and type (DCGM_FI_DEV_NVLINK_{CRC_FLIT,CRC_DATA,REPLAY,RECOVERY}_ERROR_COUNT_L<link>)",
        &["node", "gpu", "uuid", "mig", "type", "link"],
        |s| {
            s.gpus()
                .flat_map(|(n, g)| {
                    g.nvlinks.iter().flat_map(move |link| {
                        let types = [
                            ("crc_flit", link.crc_flit_errors),
                            ("crc_data", link.crc_data_errors),
                            ("replay", link.replay_errors),
                            ("recovery", link.recovery_errors),
                        ];
                        let mut out = split(n, g, "type", types);
                        out.iter_mut()
                            .for_each(|(l, _)| l.push(("link", link.link.to_string())));
                        out
                    })
                })
                .collect()
        },
    ),
    counter(
        "corral_gpu_xid_errors_total",
        "XID errors seen this boot (since the agent started when it keeps no state dir), ignored classes included",
        GPU,
        |s| per_gpu_count(s, |g| Some(g.health.xid_total)),
    ),
    gauge(
        "corral_gpu_last_xid",
        "The most recent XID seen this boot (DCGM_FI_DEV_XID_ERRORS)",
        GPU,
        |s| per_gpu(s, |g| g.health.xid_last.map(|x| x as f64)),
    ),
    counter(
        "corral_gpu_xid_errors_by_code_total",
        "XID errors seen this boot by code, NVML and the kernel log merged (since the agent started when it keeps no state dir)",
        &["node", "gpu", "uuid", "mig", "xid"],
        |s| {
            s.gpus()
                .flat_map(|(n, g)| {
                    g.health.xid_counts.iter().map(move |c| {
                        (with(gpu_labels(n, g), "xid", &c.xid.to_string()), c.count)
                    })
                })
                .collect()
        },
    ),
    gauge(
        "corral_gpu_recovery_action",
        "1 for the GPU's current NVML recovery action (none, reset, reboot, drain_p2p, drain_and_reset); no series where the driver reports none",
        &["node", "gpu", "uuid", "mig", "action"],
        |s| {
            s.gpus()
                .flat_map(|(n, g)| {
                    g.recovery_action.into_iter().flat_map(move |current| {
                        [
                            GpuAction::None,
                            GpuAction::Reset,
                            GpuAction::Reboot,
                            GpuAction::DrainP2p,
                            GpuAction::DrainAndReset,
                        ]
                        .map(|a| {
                            (
                                with(gpu_labels(n, g), "action", a.as_str()),
                                one_if(current == a),
                            )
                        })
                    })
                })
                .collect()
        },
    ),
    gauge(
        "corral_ray_state",
        "1 for the state of the node's supervised Ray process (starting, running, restarting, refused, failed, stopped, draining, drained)",
        &["node", "role", "state"],
        |s| {
            s.rays()
                .flat_map(|(n, r)| {
                    RayState::ALL.map(|st| {
                        let labels = with(node(n), "role", r.role.as_str());
                        (with(labels, "state", st.as_str()), one_if(r.state == st))
                    })
                })
                .collect()
        },
    ),
    counter(
        "corral_ray_restarts_total",
        "Restarts of the node's Ray process after unexpected exits, since its agent started",
        &["node", "role"],
        |s| {
            s.rays()
                .map(|(n, r)| (with(node(n), "role", r.role.as_str()), u64::from(r.restarts)))
                .collect()
        },
    ),
    counter("corral_coordinator_beats_total", "Beats received", &[], |s| {
        vec![(vec![], s.stats.beats_total)]
    }),
    counter("corral_coordinator_reports_total", "Reports received", &[], |s| {
        vec![(vec![], s.stats.reports_total)]
    }),
    counter(
        "corral_coordinator_received_bytes_total",
        "Bytes of agent frames received",
        &[],
        |s| vec![(vec![], s.stats.bytes_in_total)],
    ),
    counter(
        "corral_coordinator_rejected_connections_total",
        "Agent connections refused, by reason",
        &["reason"],
        |s| {
            s.stats
                .rejected_total
                .iter()
                .map(|(k, v)| (vec![("reason", k.clone())], *v))
                .collect()
        },
    ),
    gauge(
        "corral_jobs",
        "Jobs the coordinator holds, by scheduler plugin and state",
        &["scheduler", "state"],
        |s| {
            s.jobs
                .jobs
                .iter()
                .map(|((scheduler, state), n)| {
                    (
                        vec![("scheduler", scheduler.clone()), ("state", state.clone())],
                        *n as f64,
                    )
                })
                .collect()
        },
    ),
    counter(
        "corral_plugin_calls_total",
        "Plugin calls routed to agents since the coordinator started, by plugin, export and outcome",
        &["plugin", "export", "outcome"],
        |s| {
            s.jobs
                .plugin_calls
                .iter()
                .map(|((plugin, export, outcome), n)| {
                    (
                        vec![
                            ("plugin", plugin.clone()),
                            ("export", export.to_string()),
                            ("outcome", outcome.to_string()),
                        ],
                        *n,
                    )
                })
                .collect()
        },
    ),
    gauge(
        "corral_plugins_loaded",
        "Scheduler plugins the node's agent loaded (as last announced)",
        NODE,
        |s| {
            s.jobs
                .plugins
                .iter()
                .filter(|p| p.announced_ms.is_some())
                .map(|p| (vec![("node", p.node.clone())], p.loaded.len() as f64))
                .collect()
        },
    ),
    gauge(
        "corral_plugin_load_failures",
        "1 for each plugin the node's agent failed to load (as last announced)",
        &["node", "plugin"],
        |s| {
            s.jobs
                .plugins
                .iter()
                .filter(|p| p.announced_ms.is_some())
                .flat_map(|p| {
                    p.failed.iter().map(|f| {
                        (
                            vec![("node", p.node.clone()), ("plugin", f.name.clone())],
                            1.0,
                        )
                    })
                })
                .collect()
        },
    ),
    counter(
        "corral_refused_announcements_total",
        "Announcements refused because the node is not authorized to make them, by kind (ray_head, scheduler)",
        &["kind"],
        |s| by_key(&s.stats.refused.announcements, "kind"),
    ),
    counter(
        "corral_foreign_command_results_total",
        "Command results ignored because they came on another connection than their command",
        &[],
        |s| vec![(vec![], s.stats.refused.foreign_command_results)],
    ),
    counter(
        "corral_truncated_reports_total",
        "Reports cut to the coordinator's caps (GPUs, filesystems, list and string lengths)",
        NODE,
        |s| by_key(&s.stats.refused.truncated_reports, "node"),
    ),
    gauge(
        "corral_node_cordoned",
        "1 while the node is cordoned (drained by corral's remediation or by hand through corral), else 0",
        NODE,
        |s| s.nodes.iter().map(|n| (node(n), one_if(n.cordon.is_some()))).collect(),
    ),
    counter(
        "corral_remediation_actions_total",
        "Remediation actions since the coordinator started, by action (cordon, drain, resume, uncordon) and outcome (ok, failed, foreign, not-member, blocked, dry-run)",
        &["action", "outcome"],
        |s| {
            s.remediation
                .actions
                .iter()
                .map(|((action, outcome), n)| {
                    (
                        vec![("action", action.to_string()), ("outcome", outcome.to_string())],
                        *n,
                    )
                })
                .collect()
        },
    ),
    gauge(
        "corral_remediation_paused",
        "1 while the remediation policy is paused (corral remediation pause)",
        &[],
        |s| vec![(vec![], one_if(s.remediation.paused))],
    ),
    gauge(
        "corral_remediation_blocked",
        "1 while the remediation holds back drains because max_unhealthy_percent is reached",
        &[],
        |s| vec![(vec![], one_if(s.remediation.blocked))],
    ),
    counter(
        "corral_pool_actions_total",
        "Pool actions since the coordinator started, by pool, action (create, delete, list, drain, replace, join, vanish, halt, pause, resume, token) and outcome (ok, failed, rate-limited)",
        &["pool", "action", "outcome"],
        |s| {
            s.pools
                .actions
                .iter()
                .map(|((pool, action, outcome), n)| {
                    (
                        vec![
                            ("pool", pool.clone()),
                            ("action", action.to_string()),
                            ("outcome", outcome.to_string()),
                        ],
                        *n,
                    )
                })
                .collect()
        },
    ),
    gauge(
        "corral_pool_nodes",
        "A pool's nodes by phase (creating, joining, member, draining, deleting)",
        &["pool", "phase"],
        |s| {
            s.pools
                .nodes
                .iter()
                .map(|((pool, phase), n)| {
                    (vec![("pool", pool.clone()), ("phase", phase.to_string())], *n as f64)
                })
                .collect()
        },
    ),
    gauge(
        "corral_pool_min",
        "The number of nodes a pool keeps (pools.NAME.min)",
        &["pool"],
        |s| pool_series(s, |(min, ..)| f64::from(*min)),
    ),
    gauge(
        "corral_pool_ready",
        "A pool's members that are joined and ready",
        &["pool"],
        |s| pool_series(s, |(_, ready, ..)| f64::from(*ready)),
    ),
    gauge(
        "corral_pool_provider_failures",
        "Provider calls that failed in a row for the pool (it halts at max_failures)",
        &["pool"],
        |s| pool_series(s, |(_, _, failures, ..)| f64::from(*failures)),
    ),
    gauge(
        "corral_pool_halted",
        "1 while a pool has stopped acting after max_failures provider failures in a row (or its provider plugin did not load)",
        &["pool"],
        |s| pool_series(s, |(_, _, _, halted, _)| one_if(*halted)),
    ),
    gauge(
        "corral_pool_paused",
        "1 while a pool is paused (corral pool NAME pause)",
        &["pool"],
        |s| pool_series(s, |(.., paused)| one_if(*paused)),
    ),
    gauge(
        "corral_console_streams",
        "Web consoles streaming the live feed now",
        &[],
        |s| vec![(vec![], s.console.streams as f64)],
    ),
    gauge(
        "corral_console_sessions",
        "Web console sessions open now (in memory; a restart ends them)",
        &[],
        |s| vec![(vec![], s.console.sessions as f64)],
    ),
    counter(
        "corral_console_sent_bytes_total",
        "Bytes of snapshots and deltas queued to web consoles (JSON, before HTTP framing and compression)",
        &[],
        |s| vec![(vec![], s.console.bytes_sent)],
    ),
    counter(
        "corral_console_deltas_total",
        "Deltas the live feed sent (each to every open console)",
        &[],
        |s| vec![(vec![], s.console.deltas)],
    ),
    gauge(
        "corral_console_history_nodes",
        "Nodes with chart history in memory (the last hour, one point a minute)",
        &[],
        |s| vec![(vec![], s.console.history_nodes as f64)],
    ),
    gauge(
        "corral_store_writable",
        "1 while the coordinator's database takes writes; 0 while it does not (a full disk): the API refuses writes then",
        &[],
        |s| vec![(vec![], one_if(s.stats.store.unavailable.is_none()))],
    ),
    gauge(
        "corral_store_pending_rows",
        "Write-behind rows kept in memory because the database has not taken them yet",
        &[],
        |s| vec![(vec![], s.stats.store.pending_rows as f64)],
    ),
    counter(
        "corral_suppressed_events_total",
        "Events not recorded because the node was over its event rate",
        NODE,
        |s| by_key(&s.stats.refused.suppressed_events, "node"),
    ),
];

/// One series per map entry, labelled with its key.
fn by_key(m: &std::collections::HashMap<String, u64>, label: &'static str) -> Series<u64> {
    m.iter()
        .map(|(k, v)| (vec![(label, k.clone())], *v))
        .collect()
}

const fn names<const N: usize>() -> [&'static str; N] {
    let mut out = [""; N];
    let mut i = 0;
    while i < N {
        out[i] = FAMILIES[i].name;
        i += 1;
    }
    out
}

/// Every metric family corral exports (as it appears in the exposition, counters with
/// their `_total` suffix): the name column of the family table.
pub const METRIC_NAMES: &[&str] = &names::<{ FAMILIES.len() }>();

fn one_if(b: bool) -> f64 {
    f64::from(u8::from(b))
}

fn flag(v: Option<bool>) -> Option<f64> {
    v.map(one_if)
}

fn node(n: &NodeView) -> Labels {
    vec![("node", n.name.clone())]
}

/// `labels` and one more.
fn with(mut labels: Labels, name: &'static str, value: &str) -> Labels {
    labels.push((name, value.to_string()));
    labels
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

/// One series per reported node.
fn per_node(s: &Scrape<'_>, f: impl Fn(&NodeReport) -> f64) -> Series<f64> {
    s.reported().map(|(n, r)| (node(n), f(r))).collect()
}

/// One series per reported filesystem.
fn per_filesystem(s: &Scrape<'_>, f: impl Fn(&Filesystem) -> f64) -> Series<f64> {
    s.reported()
        .flat_map(|(n, r)| {
            r.host
                .filesystems
                .iter()
                .map(|m| (with(node(n), "mount", &m.mount), f(m)))
        })
        .collect()
}

/// One series per GPU that has the reading.
fn per_gpu(s: &Scrape<'_>, f: impl Fn(&GpuSample) -> Option<f64>) -> Series<f64> {
    s.gpus()
        .filter_map(|(n, g)| f(g).map(|v| (gpu_labels(n, g), v)))
        .collect()
}

fn per_gpu_count(s: &Scrape<'_>, f: impl Fn(&GpuSample) -> Option<u64>) -> Series<u64> {
    s.gpus()
        .filter_map(|(n, g)| f(g).map(|v| (gpu_labels(n, g), v)))
        .collect()
}

/// One labelled series per `(label value, reading)` pair a GPU has.
fn split<const N: usize>(
    n: &NodeView,
    g: &GpuSample,
    label: &'static str,
    values: [(&'static str, Option<u64>); N],
) -> Series<u64> {
    values
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (with(gpu_labels(n, g), label, k), v)))
        .collect()
}

fn as_gauge(series: Series<u64>) -> Series<f64> {
    series.into_iter().map(|(l, v)| (l, v as f64)).collect()
}

/// A label value as OpenMetrics writes one: backslash, double quote and newline escaped.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Escaped(String);

impl EncodeLabelValue for Escaped {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        for c in self.0.chars() {
            match c {
                '\\' => encoder.write_str("\\\\")?,
                '"' => encoder.write_str("\\\"")?,
                '\n' => encoder.write_str("\\n")?,
                c => encoder.write_char(c)?,
            }
        }
        Ok(())
    }
}

type EscapedLabels = Vec<(&'static str, Escaped)>;

fn escaped(labels: Labels) -> EscapedLabels {
    labels.into_iter().map(|(k, v)| (k, Escaped(v))).collect()
}

impl Family {
    fn register(&self, reg: &mut PromRegistry, s: &Scrape<'_>) {
        match self.samples {
            Samples::Gauge(f) if self.labels.is_empty() => {
                let g = Gauge::<f64, AtomicU64>::default();
                for (_, v) in f(s) {
                    g.set(v);
                }
                reg.register(self.name, self.help, g);
            }
            Samples::Gauge(f) => {
                let fam = PromFamily::<EscapedLabels, Gauge<f64, AtomicU64>>::default();
                for (labels, v) in f(s) {
                    fam.get_or_create(&escaped(labels)).set(v);
                }
                reg.register(self.name, self.help, fam);
            }
            // prometheus-client adds the `_total` suffix itself.
            Samples::Counter(f) if self.labels.is_empty() => {
                let c = Counter::<u64>::default();
                for (_, v) in f(s) {
                    c.inc_by(v);
                }
                reg.register(self.counter_base(), self.help, c);
            }
            Samples::Counter(f) => {
                let fam = PromFamily::<EscapedLabels, Counter>::default();
                for (labels, v) in f(s) {
                    fam.get_or_create(&escaped(labels)).inc_by(v);
                }
                reg.register(self.counter_base(), self.help, fam);
            }
        }
    }

    fn counter_base(&self) -> &'static str {
        self.name.strip_suffix("_total").unwrap_or(self.name)
    }
}

fn pool_series(s: &Scrape<'_>, f: fn(&(u32, u32, u32, bool, bool)) -> f64) -> Series<f64> {
    s.pools
        .pools
        .iter()
        .map(|(name, v)| (vec![("pool", name.clone())], f(v)))
        .collect()
}

/// Renders the exposition text.
pub(crate) fn render(
    nodes: &[NodeView],
    stats: &StatsView,
    jobs: &JobMetrics,
    remediation: &RemediationMetrics,
    console: &ConsoleMetrics,
    pools: &PoolMetrics,
) -> String {
    let scrape = Scrape {
        nodes,
        stats,
        jobs,
        remediation,
        console,
        pools,
        now_ms: corral_proto::model::unix_ms(),
    };
    let mut reg = PromRegistry::default();
    for family in FAMILIES {
        family.register(&mut reg, &scrape);
    }
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &reg);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One node with a report of every kind, a GPU, Ray, jobs and plugins.
    fn fixture() -> (Vec<NodeView>, StatsView, JobMetrics) {
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
            apply_latency_buckets: vec![],
            refused: corral_proto::api::RefusedInput {
                announcements: [("ray_head".to_string(), 1)].into(),
                foreign_command_results: 1,
                truncated_reports: [("n".to_string(), 1)].into(),
                suppressed_events: [("n".to_string(), 1)].into(),
            },
            store: Default::default(),
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
        report.gpus[0].health.xid_counts =
            vec![corral_proto::model::XidCount { xid: 79, count: 1 }];
        report.gpus[0].recovery_action = Some(GpuAction::Reboot);
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
            cordon: None,
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
                not_authorized: vec![],
            }],
        };
        (vec![node], stats, jobs)
    }

    fn remediated() -> RemediationMetrics {
        RemediationMetrics {
            paused: true,
            blocked: false,
            actions: [(("drain", "ok"), 2)].into(),
        }
    }

    fn pooled() -> PoolMetrics {
        PoolMetrics {
            actions: [(("gpu".to_string(), "create", "ok"), 3)].into(),
            nodes: [(("gpu".to_string(), "member"), 3)].into(),
            pools: [("gpu".to_string(), (3, 3, 0, false, false))].into(),
        }
    }

    #[test]
    fn every_documented_name_appears_and_no_other() {
        let (nodes, stats, jobs) = fixture();
        let text = render(
            &nodes,
            &stats,
            &jobs,
            &remediated(),
            &ConsoleMetrics::default(),
            &pooled(),
        );
        for line in [
            "corral_remediation_actions_total{action=\"drain\",outcome=\"ok\"} 2\n",
            "corral_remediation_paused 1.0\n",
            "corral_node_cordoned{node=\"n\"} 0.0\n",
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

    #[test]
    fn series_carry_the_labels_their_family_declares_in_order() {
        let (nodes, stats, jobs) = fixture();
        let scrape = Scrape {
            nodes: &nodes,
            stats: &stats,
            jobs: &jobs,
            remediation: &remediated(),
            console: &ConsoleMetrics::default(),
            pools: &pooled(),
            now_ms: 0,
        };
        for f in FAMILIES {
            let names: Vec<Vec<&str>> = match f.samples {
                Samples::Gauge(g) => g(&scrape)
                    .iter()
                    .map(|(l, _)| l.iter().map(|(k, _)| *k).collect())
                    .collect(),
                Samples::Counter(c) => c(&scrape)
                    .iter()
                    .map(|(l, _)| l.iter().map(|(k, _)| *k).collect())
                    .collect(),
            };
            assert!(!names.is_empty(), "{} has no series in the fixture", f.name);
            for series in names {
                // An ordered subsequence of the declared labels (`mig` may be left out).
                let mut declared = f.labels.iter();
                assert!(
                    series.iter().all(|k| declared.any(|d| d == k)),
                    "{}: series labels {series:?}, declared {:?}",
                    f.name,
                    f.labels
                );
            }
        }
    }

    /// The series of an exposition: every line that is not a comment, up to its value.
    fn series(text: &str) -> Vec<&str> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| l.rsplit_once(' ').map_or(l, |(series, _)| series))
            .collect()
    }

    #[test]
    fn a_mount_point_built_to_inject_a_label_adds_no_series() {
        let (mut nodes, stats, jobs) = fixture();
        let before = series(&render(
            &nodes,
            &stats,
            &jobs,
            &RemediationMetrics::default(),
            &ConsoleMetrics::default(),
            &PoolMetrics::default(),
        ))
        .len();
        let hostile = "/x\"} 1\ncorral_node_up{node=\"victim\"} 1\n# \\";
        let report = nodes[0].report.as_mut().unwrap();
        report.host.filesystems[0].mount = hostile.into();
        let text = render(
            &nodes,
            &stats,
            &jobs,
            &RemediationMetrics::default(),
            &ConsoleMetrics::default(),
            &PoolMetrics::default(),
        );
        assert_eq!(
            series(&text).len(),
            before,
            "one mount, the same number of series:\n{text}"
        );
        assert!(
            !text
                .lines()
                .any(|l| l.starts_with("corral_node_up{node=\"victim\"}")),
            "{text}"
        );
        let escaped = r#"mount="/x\"} 1\ncorral_node_up{node=\"victim\"} 1\n# \\""#;
        assert!(
            text.contains(&format!(
                "corral_node_filesystem_size_bytes{{node=\"n\",{escaped}}} 10.0\n"
            )),
            "the value is kept, escaped:\n{text}"
        );
    }

    #[test]
    fn counters_and_only_counters_end_in_total() {
        for f in FAMILIES {
            let counter = matches!(f.samples, Samples::Counter(_));
            assert_eq!(f.name.ends_with("_total"), counter, "{}", f.name);
        }
    }
}
