//! Bounds on what agents send. A certificate lets a node speak for itself; it does not
//! let it make the coordinator store, export or repeat without limit. The connection
//! task applies these to every message before the registry sees it.
//!
//! The limits, each well above what a real node sends:
//!
//! | what | limit | why this much |
//! |---|---|---|
//! | GPUs per report | [`MAX_GPUS`] (128) | 16 GPUs split into 7 MIG instances each, plus the 16 parents; each GPU is ~50 metric series |
//! | filesystems per report | [`MAX_FILESYSTEMS`] (256) | each is two metric series and a health check |
//! | per-core readings | [`MAX_CORES`] (4096) | the largest machines Linux schedules on today |
//! | any other list in a report or an announcement (reasons, temperatures, NVLinks, XIDs, plugins, grants...) | [`MAX_ITEMS`] (256) | NVLinks are 18 per GPU, reasons a handful |
//! | every string (node facts, mount points, device names, reason messages, versions, Ray addresses, plugin names, error messages of command results...) | [`MAX_TEXT_BYTES`] (4 KiB) | `PATH_MAX`; a message an operator reads is far shorter |
//! | beat interval (hello) | [`MIN_BEAT`]..=[`MAX_BEAT`] (100 ms to 60 s) | faster floods the coordinator, slower makes liveness meaningless |
//! | agent's frame limit (hello) | at least [`MIN_PEER_FRAME`] (1 KiB), used up to [`MAX_PEER_FRAME`] (64 MiB) | nothing useful fits in less; the coordinator never sends more |
//! | events per node | [`EVENTS_PER_MINUTE`] (60) a minute, in bursts of as many | a flapping node cannot flush the shared event history |
//!
//! Trade-off: a report over a cap is *truncated*, not refused. A refused report would
//! leave the node's last accepted one standing as if it were current, and a node that
//! legitimately outgrew a cap would go blind; a truncated one keeps everything else
//! current. The first items are kept in the agent's order (GPUs by index, filesystems as
//! mounted) and a cut string ends in `…`. The connection task logs what was cut once per
//! connection and counts every truncated report per node
//! (`corral_truncated_reports_total{node}`), so the cut is visible without one log line
//! per report. A hello outside its bounds is refused instead: there is nothing to keep,
//! and the agent's operator can fix the value the refusal names.

use std::time::{Duration, Instant};

use corral_proto::job::{LoadFailure, LoadedPlugin, PluginError};
use corral_proto::model::NodeReport;
use corral_proto::wire::{CommandOutput, RayHead};

pub(crate) const MAX_GPUS: usize = 128;
pub(crate) const MAX_FILESYSTEMS: usize = 256;
pub(crate) const MAX_CORES: usize = 4096;
pub(crate) const MAX_ITEMS: usize = 256;
pub(crate) const MAX_TEXT_BYTES: usize = 4096;
pub(crate) const MIN_BEAT: Duration =
    Duration::from_millis(*corral_proto::wire::BEAT_INTERVAL_MS.start() as u64);
pub(crate) const MAX_BEAT: Duration =
    Duration::from_millis(*corral_proto::wire::BEAT_INTERVAL_MS.end() as u64);
pub(crate) const MIN_PEER_FRAME: usize = 1024;
pub(crate) const MAX_PEER_FRAME: usize = 64 << 20;
pub(crate) const EVENTS_PER_MINUTE: u32 = 60;

/// What was cut from one message: one note per field that was over its cap.
#[derive(Debug, Default)]
pub(crate) struct Cuts(Vec<String>);

impl Cuts {
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The first few notes, for a log line ("gpus: 300 > 128; ...").
    pub(crate) fn summary(&self) -> String {
        const SHOWN: usize = 8;
        let mut s = self.0[..self.0.len().min(SHOWN)].join("; ");
        if self.0.len() > SHOWN {
            s.push_str(&format!("; and {} more", self.0.len() - SHOWN));
        }
        s
    }

    fn text(&mut self, what: &str, s: &mut String) {
        if s.len() <= MAX_TEXT_BYTES {
            return;
        }
        self.0
            .push(format!("{what}: {} bytes > {MAX_TEXT_BYTES}", s.len()));
        let mut end = MAX_TEXT_BYTES - '…'.len_utf8();
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }

    fn opt(&mut self, what: &str, s: &mut Option<String>) {
        if let Some(s) = s {
            self.text(what, s);
        }
    }

    fn list<T>(&mut self, what: &str, v: &mut Vec<T>, max: usize) {
        if v.len() > max {
            self.0.push(format!("{what}: {} > {max}", v.len()));
            v.truncate(max);
        }
    }
}

/// Cuts `r` to the caps in place; says what was cut.
pub(crate) fn report(r: &mut NodeReport) -> Cuts {
    let mut c = Cuts::default();
    c.text("node", &mut r.node);
    let f = &mut r.facts;
    c.text("facts.hostname", &mut f.hostname);
    c.text("facts.os", &mut f.os);
    c.text("facts.kernel", &mut f.kernel);
    c.text("facts.cpu_model", &mut f.cpu_model);
    c.text("facts.agent_version", &mut f.agent_version);
    let h = &mut r.host;
    c.list("host.per_core_percent", &mut h.per_core_percent, MAX_CORES);
    c.list("host.filesystems", &mut h.filesystems, MAX_FILESYSTEMS);
    for fs in &mut h.filesystems {
        c.text("filesystem mount", &mut fs.mount);
        c.text("filesystem device", &mut fs.device);
        c.text("filesystem type", &mut fs.fs_type);
    }
    c.list("host.cpu_temperatures", &mut h.cpu_temperatures, MAX_ITEMS);
    for t in &mut h.cpu_temperatures {
        c.text("temperature label", &mut t.label);
    }
    c.list("gpus", &mut r.gpus, MAX_GPUS);
    for g in &mut r.gpus {
        c.text("gpu uuid", &mut g.uuid);
        c.text("gpu name", &mut g.name);
        c.opt("gpu serial", &mut g.serial);
        c.opt("gpu pci_bus_id", &mut g.pci_bus_id);
        c.opt("gpu driver_version", &mut g.driver_version);
        c.opt("gpu cuda_driver_version", &mut g.cuda_driver_version);
        c.opt("gpu vbios_version", &mut g.vbios_version);
        c.opt("gpu compute_mode", &mut g.compute_mode);
        c.opt("gpu parent_uuid", &mut g.parent_uuid);
        c.opt("gpu lost", &mut g.lost);
        if let Some(reasons) = &mut g.throttle_reasons {
            c.list("gpu throttle_reasons", reasons, MAX_ITEMS);
            for t in reasons {
                c.text("gpu throttle reason", t);
            }
        }
        c.list("gpu nvlinks", &mut g.nvlinks, MAX_ITEMS);
        c.list("gpu xids", &mut g.xids, MAX_ITEMS);
        let d = &mut g.health;
        c.list("gpu health reasons", &mut d.reasons, MAX_ITEMS);
        for reason in &mut d.reasons {
            c.text("gpu reason code", &mut reason.code);
            c.text("gpu reason message", &mut reason.message);
        }
        c.list("gpu xid_counts", &mut d.xid_counts, MAX_ITEMS);
    }
    c.opt("gpu_error", &mut r.gpu_error);
    c.list("health.reasons", &mut r.health.reasons, MAX_ITEMS);
    for reason in &mut r.health.reasons {
        c.text("reason check", &mut reason.check);
        c.text("reason message", &mut reason.message);
    }
    if let Some(ray) = &mut r.ray {
        c.text("ray.venv", &mut ray.venv);
        c.opt("ray.python_version", &mut ray.python_version);
        c.opt("ray.ray_version", &mut ray.ray_version);
        c.opt("ray.head_address", &mut ray.head_address);
        c.opt("ray.message", &mut ray.message);
        c.opt("ray.log_file", &mut ray.log_file);
    }
    c
}

/// Cuts a Ray head announcement to the caps in place.
pub(crate) fn ray_head(h: &mut RayHead) -> Cuts {
    let mut c = Cuts::default();
    c.text("ray head node", &mut h.node);
    c.text("ray head address", &mut h.address);
    c.text("ray head dashboard", &mut h.dashboard);
    c.text("ray head python", &mut h.python);
    c.text("ray head ray", &mut h.ray);
    c.text("ray head venv", &mut h.venv);
    c
}

/// Cuts a plugin announcement to the caps in place.
pub(crate) fn plugins(loaded: &mut Vec<LoadedPlugin>, failed: &mut Vec<LoadFailure>) -> Cuts {
    let mut c = Cuts::default();
    c.list("plugins loaded", loaded, MAX_ITEMS);
    for p in loaded {
        c.text("plugin name", &mut p.info.name);
        c.text("plugin version", &mut p.info.version);
        c.text("plugin scheduler", &mut p.info.scheduler);
        c.list("plugin features", &mut p.info.features, MAX_ITEMS);
        c.text("plugin digest", &mut p.digest);
        let g = &mut p.grants;
        c.list("plugin programs", &mut g.programs, MAX_ITEMS);
        for (name, path) in &mut g.programs {
            c.text("plugin program", name);
            c.text("plugin program path", path);
        }
        c.list("plugin hosts", &mut g.hosts, MAX_ITEMS);
        for h in &mut g.hosts {
            c.text("plugin host", h);
        }
        c.list("plugin config keys", &mut g.config_keys, MAX_ITEMS);
        for k in &mut g.config_keys {
            c.text("plugin config key", k);
        }
    }
    c.list("plugins failed", failed, MAX_ITEMS);
    for f in failed {
        c.text("plugin name", &mut f.name);
        c.text("plugin failure", &mut f.message);
    }
    c
}

/// Cuts the error message of a command result in place (it becomes an API error and a
/// job's recorded message); answers themselves (scripts, logs, statuses) are bounded by
/// the frame limit and by what was asked.
pub(crate) fn command_result(result: &mut Result<CommandOutput, String>) -> Cuts {
    let mut c = Cuts::default();
    match result {
        Err(message) => c.text("command error", message),
        Ok(CommandOutput::Plugin(Err(e))) => {
            let (PluginError::Denied(m)
            | PluginError::Invalid(m)
            | PluginError::Backend(m)
            | PluginError::Timeout(m)
            | PluginError::Unsupported(m)
            | PluginError::Plugin(m)
            | PluginError::NotLoaded(m)) = e;
            c.text("plugin error", m);
        }
        Ok(_) => {}
    }
    c
}

/// The beat interval a hello announces, if within bounds; otherwise the refusal's reason.
pub(crate) fn beat_interval(ms: u32) -> Result<Duration, String> {
    let d = Duration::from_millis(u64::from(ms));
    if (MIN_BEAT..=MAX_BEAT).contains(&d) {
        Ok(d)
    } else {
        Err(format!(
            "beat interval {ms} ms is outside what this coordinator accepts ({} ms to {} s); set agent.beat_interval within that",
            MIN_BEAT.as_millis(),
            MAX_BEAT.as_secs()
        ))
    }
}

/// The largest frame to send to an agent that announced `bytes`, if usable; otherwise
/// the refusal's reason.
pub(crate) fn peer_frame_limit(bytes: u32) -> Result<usize, String> {
    let bytes = bytes as usize;
    if bytes < MIN_PEER_FRAME {
        return Err(format!(
            "the agent accepts frames of at most {bytes} bytes; nothing useful fits in less than {MIN_PEER_FRAME}"
        ));
    }
    Ok(bytes.min(MAX_PEER_FRAME))
}

/// One node's event rate: a bucket of [`EVENTS_PER_MINUTE`] tokens refilled at that
/// rate, one token per event.
#[derive(Debug, Clone)]
pub(crate) struct EventBudget {
    tokens: f64,
    at: Instant,
    /// Suppressed since the last event that was recorded.
    pub(crate) pending: u64,
    /// Suppressed since the coordinator started.
    pub(crate) total: u64,
}

impl EventBudget {
    pub(crate) fn new(now: Instant) -> EventBudget {
        EventBudget {
            tokens: f64::from(EVENTS_PER_MINUTE),
            at: now,
            pending: 0,
            total: 0,
        }
    }

    /// Spends one event's token; false (and counted) when the node is over its rate.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        let rate = f64::from(EVENTS_PER_MINUTE) / 60.0;
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * rate;
        self.tokens = (self.tokens + refill).min(f64::from(EVENTS_PER_MINUTE));
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.pending += 1;
            self.total += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_proto::model::{Filesystem, GpuSample, Reason};

    #[test]
    fn a_report_over_the_caps_is_cut_to_them_and_says_what_was_cut() {
        let mut r = NodeReport {
            node: "n1".into(),
            gpus: (0..200).map(GpuSample::plausible).collect(),
            ..Default::default()
        };
        r.host.filesystems = (0..300)
            .map(|i| Filesystem {
                mount: format!("/m{i}"),
                device: "d".into(),
                fs_type: "ext4".into(),
                total_bytes: 1,
                available_bytes: 1,
            })
            .collect();
        // A multi-byte character straddling the cut must not split.
        r.health.reasons = vec![Reason {
            check: "c".into(),
            status: corral_proto::model::HealthStatus::Degraded,
            message: "é".repeat(5000),
        }];
        let cuts = report(&mut r);
        assert_eq!(r.gpus.len(), MAX_GPUS);
        assert_eq!(
            r.gpus.last().unwrap().index,
            MAX_GPUS as u32 - 1,
            "the first kept"
        );
        assert_eq!(r.host.filesystems.len(), MAX_FILESYSTEMS);
        let message = &r.health.reasons[0].message;
        assert!(message.len() <= MAX_TEXT_BYTES && message.ends_with('…'));
        let summary = cuts.summary();
        for want in [
            "gpus: 200 > 128",
            "host.filesystems: 300 > 256",
            "reason message: 10000 bytes",
        ] {
            assert!(summary.contains(want), "{want} not in {summary}");
        }
    }

    #[test]
    fn a_command_results_error_message_is_cut() {
        let mut failed: Result<CommandOutput, String> = Err("e".repeat(10_000));
        assert!(!command_result(&mut failed).is_empty());
        assert!(failed.unwrap_err().len() <= MAX_TEXT_BYTES);
        let mut plugin = Ok(CommandOutput::Plugin(Err(PluginError::Backend(
            "b".repeat(10_000),
        ))));
        assert!(!command_result(&mut plugin).is_empty());
        let Ok(CommandOutput::Plugin(Err(PluginError::Backend(m)))) = plugin else {
            panic!("the kind changed");
        };
        assert!(m.len() <= MAX_TEXT_BYTES);
    }

    #[test]
    fn a_report_within_the_caps_is_left_alone() {
        let mut r = NodeReport {
            node: "n1".into(),
            gpus: vec![GpuSample::plausible(0)],
            ..Default::default()
        };
        let before = r.clone();
        assert!(report(&mut r).is_empty());
        assert_eq!(r, before);
    }

    #[test]
    fn beat_intervals_and_frame_limits_outside_the_bounds_are_refused_with_the_fix() {
        assert_eq!(beat_interval(1000), Ok(Duration::from_secs(1)));
        assert!(beat_interval(100).is_ok() && beat_interval(60_000).is_ok());
        for ms in [0, 99, 60_001, u32::MAX] {
            let why = beat_interval(ms).unwrap_err();
            assert!(why.contains("agent.beat_interval"), "{why}");
        }
        assert_eq!(peer_frame_limit(1 << 20), Ok(1 << 20));
        assert_eq!(peer_frame_limit(u32::MAX), Ok(MAX_PEER_FRAME));
        assert!(peer_frame_limit(100).is_err());
    }

    #[test]
    fn the_event_budget_allows_a_burst_then_the_rate_and_counts_the_rest() {
        let start = Instant::now();
        let mut b = EventBudget::new(start);
        let allowed = (0..100).filter(|_| b.take(start)).count();
        assert_eq!(allowed, EVENTS_PER_MINUTE as usize);
        assert_eq!((b.pending, b.total), (40, 40));
        // One second later: one more token.
        let later = start + Duration::from_secs(1);
        assert!(b.take(later));
        assert!(!b.take(later));
        // A quiet minute refills the whole burst, no more.
        let much_later = later + Duration::from_secs(600);
        assert_eq!(
            (0..100).filter(|_| b.take(much_later)).count(),
            EVENTS_PER_MINUTE as usize
        );
    }
}
