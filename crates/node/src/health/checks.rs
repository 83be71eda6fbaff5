//! Host checks beyond the thresholds: required mounts, and custom check executables in
//! the node-problem-detector style.
//!
//! A custom check is any executable: exit 0 means ok, 1 a problem, 2 (or any other code,
//! a signal, a failure to start, a timeout) unknown. The first line of its standard
//! output is the reason shown to operators. Configured as `[[health.checks]]`:
//! ```toml
//! [[health.checks]]
//! name = "ib0"
//! command = ["/usr/local/lib/corral/check-ib", "ib0"]
//! interval = "30s"
//! timeout = "10s"
//! severity = "fail"      # what exit 1 means for the node: "fail" or "warn"
//! ```
//!
//! Invariants and trade-offs:
//! - Every check runs on its own thread, on its own schedule, never on the sampler
//!   thread: a slow or hung check can never delay a sample or a report. The sampler only
//!   reads the latest finished results ([`CheckRunner::results`]), which is O(checks).
//! - Checks run through [`crate::exec`]: a check that outlives its `timeout` is killed
//!   together with its process group (shell pipelines die too) and counts as unknown
//!   ("timed out after 10s"); a check that fills its pipe cannot deadlock the runner;
//!   only the first 4 KiB of stdout are kept.
//! - A check that has not finished its first run contributes nothing (neither ok nor a
//!   problem), so a slow check does not make every agent start degraded.
//! - Problem → the configured severity; unknown → degraded, always: the check could
//!   not tell, which an operator should see but which must not take a node out of
//!   service.
//! - Required mounts are read from `/proc/self/mountinfo` (no `statvfs`), so a
//!   hard-mounted, unreachable NFS share still counts as present and never hangs the
//!   sampler; whether it answers is a job for a custom check with a timeout.
//! - Runner threads stop when the [`CheckRunner`] is dropped (they wake within 100 ms).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::verdict::ConfigIssue;
use crate::exec;
use corral_proto::model::{HealthStatus, Reason};

/// What a problem reported by a check means for the node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warn,
    #[default]
    Fail,
}

impl Severity {
    fn status(self) -> HealthStatus {
        match self {
            Severity::Warn => HealthStatus::Degraded,
            Severity::Fail => HealthStatus::Unhealthy,
        }
    }
}

/// One `[[health.checks]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckConfig {
    /// Shown in reasons as `check:NAME`; unique.
    pub name: String,
    /// Program and arguments (no shell). A relative program is taken from the config
    /// file's directory.
    pub command: Vec<String>,
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default)]
    pub severity: Severity,
}

fn default_interval() -> Duration {
    Duration::from_secs(60)
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

impl CheckConfig {
    pub fn validate(&self, i: usize) -> Result<(), ConfigIssue> {
        let key = |k: &str| format!("health.checks[{i}].{k}");
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(ConfigIssue::new(
                key("name"),
                format!(
                    "{:?} must be non-empty letters, digits, '-', '_' or '.'",
                    self.name
                ),
            ));
        }
        if self.command.first().is_none_or(|p| p.is_empty()) {
            return Err(ConfigIssue::new(
                key("command"),
                "must name a program: command = [\"/path/to/check\", \"arg\"]",
            ));
        }
        if self.timeout < Duration::from_millis(10) {
            return Err(ConfigIssue::new(key("timeout"), "must be at least 10ms"));
        }
        if self.interval < Duration::from_millis(100) {
            return Err(ConfigIssue::new(key("interval"), "must be at least 100ms"));
        }
        Ok(())
    }

    /// Resolves a relative program against `base` (the config file's directory). A bare
    /// name without a slash is left to `PATH`.
    pub fn resolve_paths(&mut self, base: &std::path::Path) {
        if let Some(program) = self.command.first_mut() {
            if program.contains('/') && PathBuf::from(&*program).is_relative() {
                *program = base.join(&*program).to_string_lossy().into_owned();
            }
        }
    }
}

/// How a check run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Problem(String),
    Unknown(String),
}

/// The first line of `out`, trimmed, or `fallback`.
fn first_line(out: &[u8], fallback: String) -> String {
    String::from_utf8_lossy(out)
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
        .unwrap_or(fallback)
}

/// Runs `check` once through [`crate::exec`], which kills its process group at the
/// timeout and keeps the first 4 KiB of stdout (stderr is discarded).
pub fn run_once(check: &CheckConfig) -> Outcome {
    let mut cmd = exec::Command::new(&check.command[0], check.timeout);
    cmd.args = check.command[1..].iter().map(Into::into).collect();
    cmd.stdout_max = 4096;
    cmd.stderr_max = 0;
    let out = match exec::run(&cmd) {
        Ok(out) => out,
        Err(e) => return Outcome::Unknown(e.to_string()),
    };
    if out.timed_out {
        return Outcome::Unknown(format!(
            "timed out after {}",
            humantime::format_duration(check.timeout)
        ));
    }
    match (out.code, out.signal) {
        (Some(0), _) => Outcome::Ok,
        (Some(1), _) => {
            Outcome::Problem(first_line(&out.stdout, "problem (no reason given)".into()))
        }
        (Some(2), _) => {
            Outcome::Unknown(first_line(&out.stdout, "unknown (no reason given)".into()))
        }
        (Some(code), _) => Outcome::Unknown(first_line(
            &out.stdout,
            format!("exited with status {code}"),
        )),
        (None, Some(sig)) => Outcome::Unknown(format!("killed by a signal ({sig})")),
        (None, None) => Outcome::Unknown("ended without an exit status".into()),
    }
}

/// The node reason a check's outcome gives, if any.
pub fn reason_of(check: &CheckConfig, outcome: &Outcome) -> Option<Reason> {
    let (status, message) = match outcome {
        Outcome::Ok => return None,
        Outcome::Problem(why) => (check.severity.status(), format!("{}: {why}", check.name)),
        Outcome::Unknown(why) => (
            HealthStatus::Degraded,
            format!("{} unknown: {why}", check.name),
        ),
    };
    Some(Reason {
        check: format!("check:{}", check.name),
        status,
        message,
    })
}

type Results = Arc<Mutex<Vec<Option<Reason>>>>;

/// Runs every configured check on its own thread; see the module doc.
pub struct CheckRunner {
    results: Results,
    finished: Arc<Mutex<Vec<bool>>>,
    stop: Arc<AtomicBool>,
}

impl CheckRunner {
    pub fn start(checks: &[CheckConfig]) -> Self {
        let results: Results = Arc::new(Mutex::new(vec![None; checks.len()]));
        let finished = Arc::new(Mutex::new(vec![false; checks.len()]));
        let stop = Arc::new(AtomicBool::new(false));
        for (i, check) in checks.iter().cloned().enumerate() {
            let name = check.name.clone();
            let (results_t, finished_t, stop_t) = (results.clone(), finished.clone(), stop.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("corral-check-{name}"))
                .spawn(move || {
                    let (results, finished, stop) = (results_t, finished_t, stop_t);
                    while !stop.load(Ordering::Relaxed) {
                        let started = Instant::now();
                        let outcome = run_once(&check);
                        tracing::debug!(check = %check.name, ?outcome, elapsed_ms = started.elapsed().as_millis() as u64, "health check ran");
                        let reason = reason_of(&check, &outcome);
                        if let Ok(mut r) = results.lock() {
                            if r[i] != reason {
                                tracing::info!(check = %check.name, ?outcome, "health check result changed");
                            }
                            r[i] = reason;
                        }
                        if let Ok(mut f) = finished.lock() {
                            f[i] = true;
                        }
                        let next = started + check.interval;
                        while !stop.load(Ordering::Relaxed) && Instant::now() < next {
                            std::thread::sleep(
                                next.saturating_duration_since(Instant::now())
                                    .min(Duration::from_millis(100)),
                            );
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(check = %name, error = %e, "cannot start the health check thread");
                if let Ok(mut r) = results.lock() {
                    r[i] = Some(Reason {
                        check: format!("check:{name}"),
                        status: HealthStatus::Degraded,
                        message: format!("{name} unknown: cannot start its thread: {e}"),
                    });
                }
            }
        }
        CheckRunner {
            results,
            finished,
            stop,
        }
    }

    /// The reasons of the latest finished runs.
    pub fn results(&self) -> Vec<Reason> {
        self.results
            .lock()
            .map(|r| r.iter().flatten().cloned().collect())
            .unwrap_or_default()
    }

    /// Blocks until every check has finished once, or `within` passes (for `--once`).
    pub fn wait_first(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self
                .finished
                .lock()
                .map(|f| f.iter().all(|&d| d))
                .unwrap_or(true)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for CheckRunner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Mount points listed in a `/proc/*/mountinfo` text (field 5, with `\040`-style
/// escapes undone).
pub fn mount_points(mountinfo: &str) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_octal)
        .collect()
}

fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let digits = &b[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let v = digits.iter().fold(0u32, |v, d| v * 8 + u32::from(d - b'0'));
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reasons for required mounts missing from `mounted`.
pub fn missing_mounts(required: &[String], mounted: &[String]) -> Vec<Reason> {
    required
        .iter()
        .filter(|r| !mounted.contains(r))
        .map(|m| Reason {
            check: format!("mount:{m}"),
            status: HealthStatus::Unhealthy,
            message: format!("required mount {m} is not mounted"),
        })
        .collect()
}

/// This process's mount points, or `None` when `/proc` cannot be read.
pub fn current_mount_points() -> Option<Vec<String>> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .map(|t| mount_points(&t))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(dir: &tempfile::TempDir, name: &str, body: &str) -> String {
        let p = dir.path().join(name);
        corral_base::testing::write_script(&p, body);
        p.to_string_lossy().into_owned()
    }

    fn check(command: String, timeout_ms: u64) -> CheckConfig {
        CheckConfig {
            name: "t".into(),
            command: vec![command],
            interval: Duration::from_millis(200),
            timeout: Duration::from_millis(timeout_ms),
            severity: Severity::Fail,
        }
    }

    #[test]
    fn exit_codes_map_to_ok_problem_and_unknown_with_first_line_as_reason() {
        let dir = tempfile::tempdir().unwrap();
        let ok = check(script(&dir, "ok", "echo fine; exit 0"), 5000);
        assert_eq!(run_once(&ok), Outcome::Ok);
        let bad = check(
            script(&dir, "bad", "echo '  ib0 link down  '; echo more; exit 1"),
            5000,
        );
        assert_eq!(run_once(&bad), Outcome::Problem("ib0 link down".into()));
        assert_eq!(
            reason_of(&bad, &run_once(&bad)),
            Some(Reason {
                check: "check:t".into(),
                status: HealthStatus::Unhealthy,
                message: "t: ib0 link down".into()
            })
        );
        let unknown = check(script(&dir, "unk", "echo no sensor; exit 2"), 5000);
        assert_eq!(run_once(&unknown), Outcome::Unknown("no sensor".into()));
        assert_eq!(
            reason_of(&unknown, &run_once(&unknown)).unwrap().status,
            HealthStatus::Degraded
        );
        let silent = check(script(&dir, "silent", "exit 7"), 5000);
        assert_eq!(
            run_once(&silent),
            Outcome::Unknown("exited with status 7".into())
        );
        let missing = check(dir.path().join("nope").to_string_lossy().into(), 5000);
        assert!(matches!(run_once(&missing), Outcome::Unknown(m) if m.starts_with("cannot run")));
    }

    #[test]
    fn hung_check_is_killed_at_its_timeout_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        // A pipeline whose grandchild keeps stdout open: only a group kill ends it.
        let hung = check(script(&dir, "hung", "sleep 30 | cat; exit 0"), 200);
        let started = Instant::now();
        assert_eq!(
            run_once(&hung),
            Outcome::Unknown("timed out after 200ms".into())
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn runner_reports_results_without_blocking_the_caller() {
        let dir = tempfile::tempdir().unwrap();
        let checks = vec![
            CheckConfig {
                name: "slow".into(),
                ..check(script(&dir, "slow", "sleep 30"), 60_000)
            },
            CheckConfig {
                name: "bad".into(),
                severity: Severity::Warn,
                ..check(script(&dir, "bad", "echo disk smart failing; exit 1"), 5000)
            },
        ];
        let runner = CheckRunner::start(&checks);
        let asked = Instant::now();
        // The slow check has not finished: it contributes nothing, and reading is instant.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = runner.results();
        while seen.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            seen = runner.results();
        }
        assert_eq!(
            seen,
            [Reason {
                check: "check:bad".into(),
                status: HealthStatus::Degraded,
                message: "bad: disk smart failing".into()
            }]
        );
        assert!(asked.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn required_mounts_are_read_from_mountinfo() {
        let info = "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n\
                    30 22 0:40 / /mnt/my\\040data rw - nfs srv:/x rw\n";
        let mounted = mount_points(info);
        assert_eq!(mounted, ["/", "/mnt/my data"]);
        let missing = missing_mounts(&["/mnt/my data".into(), "/scratch".into()], &mounted);
        assert_eq!(
            missing,
            [Reason {
                check: "mount:/scratch".into(),
                status: HealthStatus::Unhealthy,
                message: "required mount /scratch is not mounted".into()
            }]
        );
        assert!(current_mount_points().is_some_and(|m| m.contains(&"/".to_string())));
    }

    #[test]
    fn invalid_check_configs_are_rejected_with_keys() {
        let mut c = check("/bin/true".into(), 1000);
        assert_eq!(c.validate(0), Ok(()));
        c.name = "bad name".into();
        assert_eq!(c.validate(3).unwrap_err().key, "health.checks[3].name");
        let mut c = check(String::new(), 1000);
        assert_eq!(c.validate(0).unwrap_err().key, "health.checks[0].command");
        c = check("/bin/true".into(), 1);
        assert_eq!(c.validate(0).unwrap_err().key, "health.checks[0].timeout");
    }
}
