//! Turning a host sample and GPU readings into a [`Health`] verdict.
//!
//! Invariants and trade-offs:
//! - [`evaluate`] is a pure function: the same thresholds and samples always give the
//!   same `Health`, reasons included and in the same order (worst status first, then by
//!   check name, then by message). Health changes trigger immediate reports, so an order
//!   that depended on sensor or mount enumeration would make a node look as if it
//!   flapped.
//! - Messages carry the live value ("disk / 97% full > 95%"), so they change from sample
//!   to sample while the condition stays the same. Whether health *changed* is therefore
//!   a question about status and `(check, status)` pairs, answered by [`condition_changed`],
//!   not about `Health` equality.
//! - Each check compares strictly: a value equal to a threshold does not trip it. There is
//!   no hysteresis; a value hovering at a threshold can flip the status between samples.
//! - A reading the machine cannot give (`None`, no sensor, zero-sized filesystem, no
//!   cores) is skipped, never treated as zero.
//! - Load is judged on the 5-minute average per logical core: the 1-minute average
//!   spikes with every short job and would make nodes flap.
//! - CPU temperature is judged on the hottest sensor only, so a 64-core package over its
//!   limit gives one reason, not 64.
//! - GPUs are judged per device, statefully, by [`super::device_health`] (XIDs, counters
//!   that grow, temperatures against `gpu_temperature_*` here); this module only folds
//!   each device's reasons into the node's, one node reason per device reason, with check
//!   `gpu_<code>:<index>` (`gpu_temperature:0`, `gpu_xid:3`) and a message that names
//!   the GPU and its UUID. A `fail`ed device makes the node unhealthy, a `warn` degraded.
//! - Host checks that run elsewhere (required mounts, custom check executables in
//!   [`super::checks`]) arrive as ready-made reasons through [`evaluate_with`].
//! - Thresholds arrive from the operator's TOML; [`Thresholds::validate`] rejects values
//!   that cannot be meant (a percent outside 0–100, a warn level past its fail level,
//!   non-finite numbers) and names the offending key, so mistakes surface at start-up.

use serde::{Deserialize, Serialize};

use super::checks::CheckConfig;
use corral_proto::model::{GpuSample, Health, HealthStatus, HostSample, Reason};

pub use corral_base::config::ConfigIssue;

/// Health thresholds, the `[health]` table of the agent configuration.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Thresholds {
    /// A filesystem more than this percent full makes the node degraded.
    pub disk_warn_percent: f64,
    /// A filesystem more than this percent full makes the node unhealthy.
    pub disk_fail_percent: f64,
    /// Less than this percent of memory available makes the node degraded.
    pub memory_available_warn_percent: f64,
    /// Less than this percent of memory available makes the node unhealthy.
    pub memory_available_fail_percent: f64,
    /// 5-minute load average per logical core above which the node is degraded.
    pub load_per_core_warn: f64,
    /// 5-minute load average per logical core above which the node is unhealthy.
    pub load_per_core_fail: f64,
    pub cpu_temperature_warn_celsius: f64,
    pub cpu_temperature_fail_celsius: f64,
    pub gpu_temperature_warn_celsius: f64,
    pub gpu_temperature_fail_celsius: f64,
    /// Mount points never checked (scratch space that is meant to fill up).
    pub ignore_mounts: Vec<String>,
    /// Mount points that must be mounted (shared filesystems jobs depend on); a missing
    /// one makes the node unhealthy.
    pub required_mounts: Vec<String>,
    /// Custom check executables (`[[health.checks]]`, see [`super::checks`]).
    pub checks: Vec<CheckConfig>,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            disk_warn_percent: 90.0,
            disk_fail_percent: 95.0,
            memory_available_warn_percent: 10.0,
            memory_available_fail_percent: 5.0,
            load_per_core_warn: 2.0,
            load_per_core_fail: 4.0,
            cpu_temperature_warn_celsius: 85.0,
            cpu_temperature_fail_celsius: 95.0,
            gpu_temperature_warn_celsius: 85.0,
            gpu_temperature_fail_celsius: 90.0,
            ignore_mounts: Vec::new(),
            required_mounts: Vec::new(),
            checks: Vec::new(),
        }
    }
}

/// Which side of a threshold is bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bad {
    /// Values above the threshold are bad (disk use, load, temperature).
    Above,
    /// Values below the threshold are bad (memory available).
    Below,
}

/// A warn/fail pair of thresholds and how to read it.
struct Limits {
    /// Key suffix shared by both thresholds: `disk` for `disk_warn_percent`.
    name: &'static str,
    /// `_percent`, `_celsius` or empty.
    unit: &'static str,
    warn: f64,
    fail: f64,
    bad: Bad,
    percent: bool,
}

impl Limits {
    fn key(&self, level: &str) -> String {
        format!("health.{}_{level}{}", self.name, self.unit)
    }

    /// The status `value` earns and the threshold it crossed, if any.
    fn grade(&self, value: f64) -> Option<(HealthStatus, f64)> {
        let crosses = |limit: f64| match self.bad {
            Bad::Above => value > limit,
            Bad::Below => value < limit,
        };
        if crosses(self.fail) {
            Some((HealthStatus::Unhealthy, self.fail))
        } else if crosses(self.warn) {
            Some((HealthStatus::Degraded, self.warn))
        } else {
            None
        }
    }

    fn validate(&self) -> Result<(), ConfigIssue> {
        for (level, value) in [("warn", self.warn), ("fail", self.fail)] {
            if !value.is_finite() || value < 0.0 {
                return Err(ConfigIssue::new(
                    self.key(level),
                    format!("must be a finite number ≥ 0, got {value}"),
                ));
            }
            if self.percent && value > 100.0 {
                return Err(ConfigIssue::new(
                    self.key(level),
                    format!("must be a percent between 0 and 100, got {value}"),
                ));
            }
        }
        let (past, word) = match self.bad {
            Bad::Above => (self.warn > self.fail, "above"),
            Bad::Below => (self.warn < self.fail, "below"),
        };
        if past {
            return Err(ConfigIssue::new(
                self.key("warn"),
                format!(
                    "warn level {} is {word} the fail level {} ({}); a node would fail before it warned",
                    self.warn,
                    self.fail,
                    self.key("fail")
                ),
            ));
        }
        Ok(())
    }
}

impl Thresholds {
    fn disk(&self) -> Limits {
        Limits {
            name: "disk",
            unit: "_percent",
            warn: self.disk_warn_percent,
            fail: self.disk_fail_percent,
            bad: Bad::Above,
            percent: true,
        }
    }

    fn memory(&self) -> Limits {
        Limits {
            name: "memory_available",
            unit: "_percent",
            warn: self.memory_available_warn_percent,
            fail: self.memory_available_fail_percent,
            bad: Bad::Below,
            percent: true,
        }
    }

    fn load(&self) -> Limits {
        Limits {
            name: "load_per_core",
            unit: "",
            warn: self.load_per_core_warn,
            fail: self.load_per_core_fail,
            bad: Bad::Above,
            percent: false,
        }
    }

    fn cpu_temperature(&self) -> Limits {
        Limits {
            name: "cpu_temperature",
            unit: "_celsius",
            warn: self.cpu_temperature_warn_celsius,
            fail: self.cpu_temperature_fail_celsius,
            bad: Bad::Above,
            percent: false,
        }
    }

    fn gpu_temperature(&self) -> Limits {
        Limits {
            name: "gpu_temperature",
            unit: "_celsius",
            warn: self.gpu_temperature_warn_celsius,
            fail: self.gpu_temperature_fail_celsius,
            bad: Bad::Above,
            percent: false,
        }
    }

    /// Checks every threshold; the first problem found names its key.
    pub fn validate(&self) -> Result<(), ConfigIssue> {
        [
            self.disk(),
            self.memory(),
            self.load(),
            self.cpu_temperature(),
            self.gpu_temperature(),
        ]
        .iter()
        .try_for_each(Limits::validate)?;
        for (key, mounts) in [
            ("health.ignore_mounts", &self.ignore_mounts),
            ("health.required_mounts", &self.required_mounts),
        ] {
            if let Some(m) = mounts.iter().find(|m| !m.starts_with('/')) {
                return Err(ConfigIssue::new(
                    key,
                    format!("{m:?} is not an absolute mount point"),
                ));
            }
        }
        for (i, c) in self.checks.iter().enumerate() {
            c.validate(i)?;
            if self.checks[..i].iter().any(|o| o.name == c.name) {
                return Err(ConfigIssue::new(
                    format!("health.checks[{i}].name"),
                    format!(
                        "{:?} is used by another check; names must be unique",
                        c.name
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Formats a value and the threshold it crossed with `decimals` decimals, adding one more
/// to the value when both would otherwise read the same ("95.3% > 95%", not "95% > 95%").
fn show(value: f64, limit: f64, decimals: usize) -> (String, String) {
    let limit = format!("{limit:.decimals$}");
    let mut shown = format!("{value:.decimals$}");
    if shown == limit {
        shown = format!("{value:.prec$}", prec = decimals + 1);
    }
    (shown, limit)
}

/// Grades `value` against `limits`; on a crossing, builds the reason with
/// `message(value, limit)` already formatted.
fn check(
    limits: &Limits,
    check: String,
    value: f64,
    decimals: usize,
    message: impl FnOnce(String, String) -> String,
) -> Option<Reason> {
    let (status, limit) = limits.grade(value)?;
    let (value, limit) = show(value, limit, decimals);
    Some(Reason {
        check,
        status,
        message: message(value, limit),
    })
}

/// Judges a node. `gpu_error` is the GPU source's failure, if it failed (then `gpus` is
/// empty). GPUs count through their `health`, already judged by
/// [`super::device_health::DeviceTracker`].
pub fn evaluate(
    t: &Thresholds,
    host: &HostSample,
    gpus: &[GpuSample],
    gpu_error: Option<&str>,
) -> Health {
    evaluate_with(t, host, gpus, gpu_error, Vec::new())
}

/// [`evaluate`] plus reasons from host checks judged elsewhere ([`super::checks`]).
pub fn evaluate_with(
    t: &Thresholds,
    host: &HostSample,
    gpus: &[GpuSample],
    gpu_error: Option<&str>,
    extra: Vec<Reason>,
) -> Health {
    let mut reasons = extra;

    let disk = t.disk();
    reasons.extend(
        host.filesystems
            .iter()
            .filter(|fs| fs.total_bytes > 0 && !t.ignore_mounts.contains(&fs.mount))
            .filter_map(|fs| {
                check(
                    &disk,
                    format!("disk:{}", fs.mount),
                    fs.used_percent(),
                    0,
                    |v, l| format!("disk {} {v}% full > {l}%", fs.mount),
                )
            }),
    );

    let memory = &host.memory;
    if memory.total_bytes > 0 {
        let available = memory.available_bytes as f64 * 100.0 / memory.total_bytes as f64;
        reasons.extend(check(&t.memory(), "memory".into(), available, 0, |v, l| {
            format!("memory available {v}% < {l}%")
        }));
    }

    let cores = host.per_core_percent.len();
    if cores > 0 {
        let per_core = host.load.five / cores as f64;
        reasons.extend(check(&t.load(), "load".into(), per_core, 1, |v, l| {
            format!("load {v} per core > {l} (5-minute average)")
        }));
    }

    let hottest = host
        .cpu_temperatures
        .iter()
        .filter(|s| s.celsius.is_finite())
        .max_by(|a, b| a.celsius.total_cmp(&b.celsius).then(b.label.cmp(&a.label)));
    if let Some(sensor) = hottest {
        reasons.extend(check(
            &t.cpu_temperature(),
            "cpu_temperature".into(),
            f64::from(sensor.celsius),
            0,
            |v, l| format!("CPU temperature {v} °C > {l} °C ({})", sensor.label),
        ));
    }

    reasons.extend(gpus.iter().flat_map(|gpu| {
        let device = match gpu.mig_index {
            Some(m) if gpu.parent_uuid.is_some() => format!("{}/{m}", gpu.index),
            _ => gpu.index.to_string(),
        };
        let label = if gpu.parent_uuid.is_some() {
            "MIG"
        } else {
            "GPU"
        };
        gpu.health.reasons.iter().map(move |r| Reason {
            check: format!("gpu_{}:{device}", r.code),
            status: r.status.node_status(),
            message: format!("{label} {device} ({}) {}", gpu.uuid, r.message),
        })
    }));

    if let Some(error) = gpu_error {
        reasons.push(Reason {
            check: "gpu".into(),
            status: HealthStatus::Degraded,
            message: format!("GPUs unreadable: {error}"),
        });
    }

    reasons.sort_by(|a, b| {
        b.status
            .cmp(&a.status)
            .then_with(|| a.check.cmp(&b.check))
            .then_with(|| a.message.cmp(&b.message))
    });
    Health::from_reasons(reasons)
}

/// Whether `next` describes a different condition from `prev`: another status, or a
/// check that appeared, cleared or changed severity. Messages are ignored because they
/// carry live values (a disk going from 96% to 97% full is not news).
pub fn condition_changed(prev: &Health, next: &Health) -> bool {
    let key = |h: &Health| -> Vec<(String, HealthStatus)> {
        let mut k: Vec<_> = h
            .reasons
            .iter()
            .map(|r| (r.check.clone(), r.status))
            .collect();
        k.sort();
        k
    };
    prev.status != next.status || key(prev) != key(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_proto::model::{Filesystem, LoadAverage, Memory, Temperature};

    const GIB: u64 = 1 << 30;

    fn fs(mount: &str, total: u64, available: u64) -> Filesystem {
        Filesystem {
            mount: mount.into(),
            device: "/dev/sda1".into(),
            fs_type: "ext4".into(),
            total_bytes: total,
            available_bytes: available,
        }
    }

    /// A calm 8-core host with 64 GiB of memory, half used, and a half-full root.
    fn calm_host() -> HostSample {
        HostSample {
            taken_at_ms: 1,
            uptime_secs: 100,
            cpu_percent: 10.0,
            per_core_percent: vec![10.0; 8],
            load: LoadAverage {
                one: 1.0,
                five: 1.0,
                fifteen: 1.0,
            },
            memory: Memory {
                total_bytes: 64 * GIB,
                used_bytes: 32 * GIB,
                available_bytes: 32 * GIB,
                swap_total_bytes: 0,
                swap_used_bytes: 0,
            },
            filesystems: vec![fs("/", 100 * GIB, 50 * GIB)],
            cpu_temperatures: vec![Temperature {
                label: "coretemp Package id 0".into(),
                celsius: 50.0,
            }],
        }
    }

    /// A GPU as the device tracker judges it under default thresholds.
    fn gpu(index: u32, temperature: Option<u32>) -> GpuSample {
        let mut gpus = vec![GpuSample {
            index,
            uuid: format!("GPU-{index}"),
            name: "Test GPU".into(),
            temperature_celsius: temperature,
            ..GpuSample::default()
        }];
        let t = Thresholds::default();
        crate::health::device_health::DeviceTracker::new(
            crate::health::device_health::DevicePolicy {
                temperature_warn_celsius: t.gpu_temperature_warn_celsius,
                temperature_fail_celsius: t.gpu_temperature_fail_celsius,
                ..Default::default()
            },
        )
        .observe(&mut gpus, std::time::Instant::now());
        gpus.remove(0)
    }

    #[test]
    fn calm_node_is_healthy() {
        let h = evaluate(
            &Thresholds::default(),
            &calm_host(),
            &[gpu(0, Some(40))],
            None,
        );
        assert_eq!(h, Health::default());
    }

    #[test]
    fn disk_over_fail_threshold_makes_node_unhealthy() {
        let mut host = calm_host();
        host.filesystems = vec![fs("/", 100 * GIB, 3 * GIB)];
        let h = evaluate(&Thresholds::default(), &host, &[], None);
        assert_eq!(h.status, HealthStatus::Unhealthy);
        assert_eq!(h.reasons.len(), 1);
        assert_eq!(h.reasons[0].check, "disk:/");
        assert_eq!(h.reasons[0].message, "disk / 97% full > 95%");
    }

    #[test]
    fn disk_over_warn_threshold_makes_node_degraded() {
        let mut host = calm_host();
        host.filesystems = vec![fs("/", 100 * GIB, 8 * GIB)];
        let h = evaluate(&Thresholds::default(), &host, &[], None);
        assert_eq!(h.status, HealthStatus::Degraded);
        assert_eq!(h.reasons[0].message, "disk / 92% full > 90%");
    }

    #[test]
    fn value_rounding_to_threshold_shows_a_decimal() {
        let mut host = calm_host();
        // 95.3% used.
        host.filesystems = vec![fs("/", 1000, 47)];
        let h = evaluate(&Thresholds::default(), &host, &[], None);
        assert_eq!(h.reasons[0].message, "disk / 95.3% full > 95%");
    }

    #[test]
    fn ignored_and_empty_mounts_are_never_checked() {
        let mut host = calm_host();
        host.filesystems = vec![fs("/scratch", 100, 0), fs("/empty", 0, 0)];
        let t = Thresholds {
            ignore_mounts: vec!["/scratch".into()],
            ..Thresholds::default()
        };
        assert_eq!(evaluate(&t, &host, &[], None), Health::default());
    }

    #[test]
    fn low_available_memory_makes_node_unhealthy() {
        let mut host = calm_host();
        host.memory.available_bytes = host.memory.total_bytes * 4 / 100;
        let h = evaluate(&Thresholds::default(), &host, &[], None);
        assert_eq!(h.status, HealthStatus::Unhealthy);
        assert_eq!(h.reasons[0].message, "memory available 4% < 5%");
    }

    #[test]
    fn high_load_per_core_makes_node_unhealthy() {
        let mut host = calm_host();
        host.load.five = 9.1 * 8.0;
        let h = evaluate(&Thresholds::default(), &host, &[], None);
        assert_eq!(h.status, HealthStatus::Unhealthy);
        assert_eq!(
            h.reasons[0].message,
            "load 9.1 per core > 4.0 (5-minute average)"
        );
    }

    #[test]
    fn hottest_cpu_sensor_gives_a_single_reason() {
        let mut host = calm_host();
        host.cpu_temperatures = (0..4)
            .map(|i| Temperature {
                label: format!("coretemp Core {i}"),
                celsius: 96.0 + i as f32,
            })
            .collect();
        let h = evaluate(&Thresholds::default(), &host, &[], None);
        assert_eq!(h.status, HealthStatus::Unhealthy);
        assert_eq!(h.reasons.len(), 1);
        assert_eq!(
            h.reasons[0].message,
            "CPU temperature 99 °C > 95 °C (coretemp Core 3)"
        );
    }

    #[test]
    fn hot_gpu_names_index_and_uuid() {
        let h = evaluate(
            &Thresholds::default(),
            &calm_host(),
            &[gpu(0, Some(93)), gpu(1, Some(86)), gpu(2, None)],
            None,
        );
        assert_eq!(h.status, HealthStatus::Unhealthy);
        let messages: Vec<_> = h.reasons.iter().map(|r| r.message.as_str()).collect();
        assert_eq!(
            messages,
            [
                "GPU 0 (GPU-0) temperature 93 °C > 90 °C",
                "GPU 1 (GPU-1) temperature 86 °C > 85 °C",
            ]
        );
    }

    #[test]
    fn unreadable_gpus_make_node_degraded() {
        let h = evaluate(
            &Thresholds::default(),
            &calm_host(),
            &[],
            Some("GPU 3: device fell off the bus"),
        );
        assert_eq!(h.status, HealthStatus::Degraded);
        assert_eq!(
            h.reasons[0].message,
            "GPUs unreadable: GPU 3: device fell off the bus"
        );
    }

    #[test]
    fn missing_readings_are_skipped_not_zero() {
        let host = HostSample::default();
        let h = evaluate(&Thresholds::default(), &host, &[gpu(0, None)], None);
        assert_eq!(h, Health::default());
    }

    #[test]
    fn reasons_are_ordered_deterministically() {
        let mut host = calm_host();
        host.filesystems = vec![fs("/data", 100, 8), fs("/", 100, 1), fs("/home", 100, 2)];
        host.memory.available_bytes = host.memory.total_bytes * 8 / 100;
        let gpus = [gpu(1, Some(95)), gpu(0, Some(87))];
        let t = Thresholds::default();
        let h = evaluate(&t, &host, &gpus, Some("boom"));

        host.filesystems.reverse();
        let mut reversed = gpus.clone();
        reversed.reverse();
        assert_eq!(evaluate(&t, &host, &reversed, Some("boom")), h);

        let order: Vec<_> = h
            .reasons
            .iter()
            .map(|r| (r.status, r.check.as_str()))
            .collect();
        use HealthStatus::*;
        assert_eq!(
            order,
            [
                (Unhealthy, "disk:/"),
                (Unhealthy, "disk:/home"),
                (Unhealthy, "gpu_temperature:1"),
                (Degraded, "disk:/data"),
                (Degraded, "gpu"),
                (Degraded, "gpu_temperature:0"),
                (Degraded, "memory"),
            ]
        );
    }

    #[test]
    fn changed_values_under_the_same_condition_are_not_a_change() {
        let t = Thresholds::default();
        let mut host = calm_host();
        host.filesystems = vec![fs("/", 100, 3)];
        let before = evaluate(&t, &host, &[], None);
        host.filesystems = vec![fs("/", 100, 2)];
        let after = evaluate(&t, &host, &[], None);
        assert_ne!(before, after);
        assert!(!condition_changed(&before, &after));
        host.filesystems = vec![fs("/", 100, 8)];
        assert!(condition_changed(&after, &evaluate(&t, &host, &[], None)));
    }

    #[test]
    fn default_thresholds_are_valid() {
        assert_eq!(Thresholds::default().validate(), Ok(()));
    }

    #[test]
    fn warn_above_fail_threshold_is_rejected_with_key() {
        let t = Thresholds {
            disk_warn_percent: 96.0,
            ..Thresholds::default()
        };
        let issue = t.validate().unwrap_err();
        assert_eq!(issue.key, "health.disk_warn_percent");
        assert!(
            issue.message.contains("health.disk_fail_percent"),
            "{issue}"
        );

        let t = Thresholds {
            gpu_temperature_warn_celsius: 95.0,
            ..Thresholds::default()
        };
        assert_eq!(
            t.validate().unwrap_err().key,
            "health.gpu_temperature_warn_celsius"
        );
    }

    #[test]
    fn memory_warn_below_fail_threshold_is_rejected_with_key() {
        let t = Thresholds {
            memory_available_warn_percent: 2.0,
            ..Thresholds::default()
        };
        assert_eq!(
            t.validate().unwrap_err().key,
            "health.memory_available_warn_percent"
        );
    }

    #[test]
    fn percent_outside_0_to_100_is_rejected_with_key() {
        for bad in [101.0, -1.0, f64::NAN] {
            let t = Thresholds {
                disk_fail_percent: bad,
                ..Thresholds::default()
            };
            assert_eq!(t.validate().unwrap_err().key, "health.disk_fail_percent");
        }
    }

    #[test]
    fn relative_ignore_mount_is_rejected_with_key() {
        let t = Thresholds {
            ignore_mounts: vec!["scratch".into()],
            ..Thresholds::default()
        };
        assert_eq!(t.validate().unwrap_err().key, "health.ignore_mounts");
    }

    #[test]
    fn thresholds_parse_from_partial_toml_and_reject_unknown_keys() {
        let t: Thresholds =
            toml::from_str("disk_warn_percent = 80\nignore_mounts = [\"/scratch\"]")
                .expect("valid toml");
        assert_eq!(t.disk_warn_percent, 80.0);
        assert_eq!(t.disk_fail_percent, 95.0);
        assert_eq!(t.ignore_mounts, ["/scratch"]);
        assert!(toml::from_str::<Thresholds>("disk_warn = 80").is_err());
    }
}
