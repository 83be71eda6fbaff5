//! One `ray start --block` child in its own process group, its output, and its stop.
//!
//! Invariants:
//! - The child is the leader of a new process group (`setpgid(0, 0)` before exec), and
//!   everything Ray starts (gcs_server, raylet, dashboard, workers) inherits that group.
//!   Stopping signals the *group*: SIGTERM, `grace`, then SIGKILL. Nothing is ever looked
//!   up by name and `ray stop` is never run, so other clusters' Ray processes on the same
//!   machine are untouched.
//! - After a stop or an exit, [`sweep_leftovers`] kills what remains of *this agent's*
//!   Ray: processes in the group, and processes of the Ray user whose command line names
//!   this agent's Ray temp dir (which is per agent). That covers a half-started head
//!   whose gcs_server outlived `ray start`, and leftovers of an agent killed with -9.
//! - The child runs as the [`RayUser`]: when that is another account than the agent's,
//!   it sets the account's groups, primary group and uid in the forked child before
//!   `exec`, checks that root cannot be regained, and only then enters its working
//!   directory, so a directory the account cannot reach fails the start instead of being
//!   entered with the agent's rights. A failed step fails the spawn; Ray never runs with
//!   a mix of identities. [`spawn_failure`] explains such a failure by the first
//!   directory the account cannot search.
//! - Environment: the agent's, which is how a site passes CUDA, proxy or `RAY_*`
//!   settings to Ray, less what belongs to the agent alone ([`AGENT_ONLY_ENV`] and every
//!   `CORRAL_*`), with `HOME`, `USER`, `LOGNAME` and `SHELL` from the Ray user's passwd
//!   entry.
//! - Output (stdout and stderr) goes to one log file per process and to tracing at a
//!   bounded rate ([`LINES_PER_WINDOW`] lines per [`WINDOW`], then one "suppressed" line),
//!   so a crash-looping Ray cannot flood the agent's log. The log file is opened by the
//!   caller without following symlinks ([`crate::fsperm`]).

use std::collections::VecDeque;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::user::RayUser;
use crate::fsperm;

pub const LINES_PER_WINDOW: u32 = 20;
pub const WINDOW: Duration = Duration::from_secs(10);

/// Ray prints this when `ray start` has started everything.
pub const STARTED_LINE: &str = "Ray runtime started.";

/// Variables of the agent's environment that a Ray child does not get (besides every
/// `CORRAL_*`): systemd's channels to the agent (notify socket, watchdog, socket
/// activation, credentials) and the agent's own session directory.
pub const AGENT_ONLY_ENV: &[&str] = &[
    "NOTIFY_SOCKET",
    "WATCHDOG_PID",
    "WATCHDOG_USEC",
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "CREDENTIALS_DIRECTORY",
    "XDG_RUNTIME_DIR",
    "MAIL",
];

/// A running `ray start --block`.
pub struct RayProcess {
    child: Child,
    pub pid: u32,
    /// The uid its processes run as (what [`sweep_leftovers`] looks for).
    pub uid: u32,
    pub log_file: PathBuf,
    /// Receives a unit when Ray prints [`STARTED_LINE`].
    pub started: mpsc::Receiver<()>,
    /// The last [`TAIL_LINES`] lines of output (the error of a failed start is at the
    /// end, past what the rate limit lets through to tracing).
    tail: Arc<Mutex<VecDeque<String>>>,
}

pub const TAIL_LINES: usize = 3;

/// A command for `program args` as `user`, in a new process group. The child enters
/// each of `dirs` in turn after taking on `user`'s identity, ending in the last one (its
/// working directory; a folder named `ray` there would shadow the package, so it is
/// never a user's directory). stdin is `/dev/null`; stdout and stderr are the caller's
/// to set.
pub fn command(
    program: &Path,
    args: &[String],
    dirs: &[&Path],
    user: &RayUser,
) -> std::io::Result<Command> {
    // The child changes directory before exec, so the program's path must not depend on
    // the working directory.
    let program = std::path::absolute(program)?;
    let mut cmd = Command::new(&program);
    cmd.args(args).stdin(Stdio::null()).process_group(0);
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("CORRAL_") || AGENT_ONLY_ENV.contains(&k.as_ref()) {
            cmd.env_remove(&key);
        }
    }
    for (k, v) in &user.env {
        cmd.env(k, v);
    }
    cmd.env("PYTHONUNBUFFERED", "1")
        .env("RAY_USAGE_STATS_ENABLED", "0");
    let dirs: Vec<CString> = dirs
        .iter()
        .map(|d| std::path::absolute(d).and_then(|d| Ok(CString::new(d.as_os_str().as_bytes())?)))
        .collect::<std::io::Result<_>>()?;
    let ids = user.switch.then(|| crate::exec::Credentials {
        uid: user.uid,
        gid: user.gid,
        groups: user.groups.clone(),
    });
    // SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe functions (those of `become_in_child`, and chdir) on memory
    // allocated before the fork; it neither allocates nor takes locks.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(cred) = &ids {
                cred.become_in_child()?;
            }
            for d in &dirs {
                if libc::chdir(d.as_ptr()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    Ok(cmd)
}

/// Why `program` could not be started as `user` from `dirs` (see [`command`]), in
/// words: the first of those paths the user cannot search by its mode bits, or else
/// the error as the kernel gave it.
pub fn spawn_failure(e: &std::io::Error, program: &Path, dirs: &[&Path], user: &RayUser) -> String {
    let mut paths: Vec<PathBuf> = dirs.iter().map(|d| d.to_path_buf()).collect();
    if let Some(parent) = program.parent() {
        paths.push(parent.to_path_buf());
    }
    // A venv's `bin/python` links to the interpreter it was made from, which may lie
    // where the user cannot go (a pyenv Python under /root, say).
    if let Some(parent) = std::fs::canonicalize(program)
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    {
        paths.push(parent);
    }
    for p in &paths {
        if let Some((dir, mode, owner)) = fsperm::first_unsearchable(p, user.uid, &user.groups) {
            return format!(
                "{} cannot reach {}: {} is mode {mode:04o}, owned by {}; let {} search it (for example `chmod o+x {}`) or choose a path it can reach",
                user.describe(),
                p.display(),
                dir.display(),
                fsperm::describe_uid(owner),
                user.name,
                dir.display()
            );
        }
    }
    format!(
        "starting {} as {}: {e} (check that the venv is intact and readable by {})",
        program.display(),
        user.describe(),
        user.name
    )
}

/// Starts `program args` as the agent itself in a new process group, with `cwd` as its
/// working directory (created if missing), output to `log_file` (appended, never
/// through a symlink) and to tracing under `role`.
pub fn spawn(
    program: &Path,
    args: &[String],
    cwd: &Path,
    log_file: &Path,
    role: &'static str,
) -> Result<RayProcess> {
    std::fs::create_dir_all(cwd).with_context(|| format!("creating {}", cwd.display()))?;
    let log = match fsperm::open_append_nofollow(log_file) {
        Ok(f) => Some(f),
        Err(e) => {
            warn!(log = %log_file.display(), error = %e, "cannot open the Ray log file; Ray output goes to the agent log only");
            None
        }
    };
    spawn_as(program, args, cwd, log, log_file, role, &RayUser::agent())
}

/// Starts `program args` as `user` (see [`command`]) in `cwd`, which the caller has
/// prepared; output to `log` (opened by the caller, `log_file` is its path for
/// messages) and to tracing under `role`.
pub fn spawn_as(
    program: &Path,
    args: &[String],
    cwd: &Path,
    log: Option<std::fs::File>,
    log_file: &Path,
    role: &'static str,
    user: &RayUser,
) -> Result<RayProcess> {
    let mut cmd = command(program, args, &[cwd], user)
        .with_context(|| format!("preparing to start {}", program.display()))?;
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(false);
    let mut child = cmd
        .spawn()
        .map_err(|e| anyhow::anyhow!(spawn_failure(&e, program, &[cwd], user)))?;
    let pid = child
        .id()
        .context("the child exited before its pid was read")?;
    let (started_tx, started) = mpsc::channel(1);
    let (line_tx, line_rx) = mpsc::channel::<String>(1024);
    if let Some(out) = child.stdout.take() {
        tokio::spawn(read_lines(out, line_tx.clone()));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(read_lines(err, line_tx));
    }
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    tokio::spawn(pump(
        line_rx,
        log.map(tokio::fs::File::from_std),
        log_file.to_path_buf(),
        role,
        pid,
        started_tx,
        tail.clone(),
    ));
    info!(pid, role, user = %user.describe(), log = %log_file.display(), cmd = %format!("{} {}", program.display(), args.join(" ")), "ray process started");
    Ok(RayProcess {
        child,
        pid,
        uid: user.uid,
        log_file: log_file.to_path_buf(),
        started,
        tail,
    })
}

async fn read_lines<R: tokio::io::AsyncRead + Unpin>(r: R, tx: mpsc::Sender<String>) {
    let mut lines = BufReader::new(r).lines();
    while let Ok(Some(l)) = lines.next_line().await {
        if tx.send(l).await.is_err() {
            return;
        }
    }
}

/// Strips ANSI colour sequences Ray puts in its console output.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// Admits at most `per_window` events per `window`; counts the rest.
pub struct RateLimit {
    per_window: u32,
    window: Duration,
    start: Instant,
    used: u32,
    pub suppressed: u64,
}

impl RateLimit {
    pub fn new(per_window: u32, window: Duration) -> Self {
        RateLimit {
            per_window,
            window,
            start: Instant::now(),
            used: 0,
            suppressed: 0,
        }
    }

    /// Whether to log this event now; on a new window, also how many were suppressed in
    /// the last one.
    pub fn admit(&mut self, now: Instant) -> (bool, u64) {
        let mut dropped = 0;
        if now.duration_since(self.start) >= self.window {
            self.start = now;
            self.used = 0;
            dropped = std::mem::take(&mut self.suppressed);
        }
        if self.used < self.per_window {
            self.used += 1;
            (true, dropped)
        } else {
            self.suppressed += 1;
            (false, dropped)
        }
    }
}

async fn pump(
    mut lines: mpsc::Receiver<String>,
    mut file: Option<tokio::fs::File>,
    log_file: PathBuf,
    role: &'static str,
    pid: u32,
    started: mpsc::Sender<()>,
    tail: Arc<Mutex<VecDeque<String>>>,
) {
    let mut limit = RateLimit::new(LINES_PER_WINDOW, WINDOW);
    while let Some(line) = lines.recv().await {
        let clean = strip_ansi(&line);
        if let Some(f) = &mut file {
            let _ = f.write_all(clean.as_bytes()).await;
            let _ = f.write_all(b"\n").await;
        }
        if !clean.trim().is_empty() {
            if let Ok(mut t) = tail.lock() {
                if t.len() == TAIL_LINES {
                    t.pop_front();
                }
                t.push_back(clean.trim().chars().take(300).collect());
            }
        }
        if clean.contains(STARTED_LINE) {
            let _ = started.try_send(());
        }
        let (log, dropped) = limit.admit(Instant::now());
        if dropped > 0 {
            info!(role, pid, suppressed = dropped, log = %log_file.display(), "ray output lines not shown here");
        }
        if log && !clean.trim().is_empty() {
            info!(role, pid, "ray: {}", clean.trim_end());
        }
    }
    if let Some(f) = &mut file {
        let _ = f.flush().await;
    }
    if limit.suppressed > 0 {
        info!(role, pid, suppressed = limit.suppressed, log = %log_file.display(), "ray output lines not shown here");
    }
}

impl RayProcess {
    /// Waits for the process to exit.
    pub async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.child.wait().await
    }

    /// The last lines of output, joined with " | ", after giving the output readers a
    /// moment to drain (call after the process exited).
    pub async fn last_output(&self) -> String {
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.tail
            .lock()
            .map(|t| t.iter().cloned().collect::<Vec<_>>().join(" | "))
            .unwrap_or_default()
    }

    /// Stops the whole group: SIGTERM, up to `grace`, SIGKILL; then sweeps leftovers
    /// naming `temp_dir`. Returns how many stragglers had to be SIGKILLed.
    pub async fn stop(mut self, grace: Duration, temp_dir: &Path) -> usize {
        let pgid = self.pid as i32;
        signal_group(pgid, libc::SIGTERM);
        let deadline = Instant::now() + grace;
        // Wait for the leader, then for the rest of the group.
        let _ = tokio::time::timeout(grace, self.child.wait()).await;
        while Instant::now() < deadline && group_alive_off_runtime(pgid).await {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut killed = 0;
        if group_alive_off_runtime(pgid).await {
            warn!(
                pgid,
                grace_ms = grace.as_millis() as u64,
                "ray did not stop within the grace period; sending SIGKILL to its process group"
            );
            signal_group(pgid, libc::SIGKILL);
            killed += 1;
        }
        let _ = self.child.wait().await;
        killed + sweep_leftovers(Some(pgid), temp_dir, self.uid).await
    }
}

fn signal_group(pgid: i32, sig: i32) {
    if pgid > 1 {
        // SAFETY: kill(2) with a negative pid signals that process group only.
        unsafe {
            libc::kill(-pgid, sig);
        }
    }
}

/// Whether any process is still in group `pgid` (zombies do not count).
pub fn group_alive(pgid: i32) -> bool {
    !procs_where(|p| p.pgid == pgid).is_empty()
}

/// Whether a live process of group `pgid` has the command name `comm` (as the kernel
/// keeps it: the executable's file name, at most 15 bytes), e.g. whether a worker's
/// `raylet` still runs beside its `ray start --block`.
pub fn group_runs(pgid: i32, comm: &str) -> bool {
    procs_where(|p| p.pgid == pgid).into_iter().any(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == comm)
    })
}

/// [`group_runs`] on a blocking thread (see [`group_alive_off_runtime`]); `true` when
/// the scan itself could not run, so that a failed scan never reads as an exit.
pub async fn group_runs_off_runtime(pgid: i32, comm: &'static str) -> bool {
    tokio::task::spawn_blocking(move || group_runs(pgid, comm))
        .await
        .unwrap_or(true)
}

/// [`group_alive`] on a blocking thread: a `/proc` scan reads a file per process, which
/// on a busy node is milliseconds of blocking I/O the async workers must not do.
async fn group_alive_off_runtime(pgid: i32) -> bool {
    tokio::task::spawn_blocking(move || group_alive(pgid))
        .await
        .unwrap_or(false)
}

/// [`leftovers_of`] on a blocking thread (see [`group_alive_off_runtime`]).
async fn leftovers_off_runtime(pgid: Option<i32>, temp_dir: &Path, uid: u32) -> Vec<i32> {
    let dir = temp_dir.to_path_buf();
    tokio::task::spawn_blocking(move || leftovers_of(pgid, &dir, uid))
        .await
        .unwrap_or_default()
}

struct ProcInfo {
    pid: i32,
    pgid: i32,
    uid: u32,
}

/// Processes of this machine matching `pred`, skipping zombies and this process.
fn procs_where(pred: impl Fn(&ProcInfo) -> bool) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    let mut out = vec![];
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the parenthesised command: state ppid pgrp ...
        let Some((_, after)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = after.split_whitespace().collect();
        if f.len() < 3 || f[0] == "Z" || f[0] == "X" {
            continue;
        }
        let Ok(pgid) = f[2].parse::<i32>() else {
            continue;
        };
        let uid = std::fs::metadata(format!("/proc/{pid}"))
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
            .unwrap_or(u32::MAX);
        let p = ProcInfo { pid, pgid, uid };
        if pred(&p) {
            out.push(pid);
        }
    }
    out
}

/// Whether some argument of `pid` names `dir` or a path below it (`--temp-dir DIR`,
/// `--log_dir=DIR/session_x/logs`).
fn cmdline_names(pid: i32, dir: &str) -> bool {
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    raw.split(|b| *b == 0)
        .any(|arg| names_dir(&String::from_utf8_lossy(arg), dir))
}

fn names_dir(arg: &str, dir: &str) -> bool {
    let dir = dir.trim_end_matches('/');
    if dir.is_empty() {
        return false;
    }
    arg.match_indices(dir).any(|(i, _)| {
        let after = arg[i + dir.len()..].chars().next();
        let before = arg[..i].chars().last();
        matches!(after, None | Some('/'))
            && matches!(before, None | Some('=') | Some(' ') | Some(':') | Some(','))
    })
}

/// This agent's Ray processes still alive, when Ray runs as the agent's own user: in
/// `pgid`, or (same user) naming `temp_dir` on their command line.
pub fn leftovers(pgid: Option<i32>, temp_dir: &Path) -> Vec<i32> {
    // SAFETY: geteuid cannot fail.
    leftovers_of(pgid, temp_dir, unsafe { libc::geteuid() })
}

/// Processes still alive in `pgid`, or of `uid` and naming `temp_dir` on their command
/// line.
pub fn leftovers_of(pgid: Option<i32>, temp_dir: &Path, uid: u32) -> Vec<i32> {
    let dir = temp_dir.display().to_string();
    procs_where(|p| Some(p.pgid) == pgid || (p.uid == uid && cmdline_names(p.pid, &dir)))
}

/// SIGKILLs [`leftovers_of`] and waits briefly for them to go; returns how many there
/// were.
pub async fn sweep_leftovers(pgid: Option<i32>, temp_dir: &Path, uid: u32) -> usize {
    let found = leftovers_off_runtime(pgid, temp_dir, uid).await;
    if found.is_empty() {
        return 0;
    }
    warn!(pids = ?found, temp_dir = %temp_dir.display(), "killing Ray processes this agent left behind");
    for pid in &found {
        // SAFETY: plain kill(2) of a pid we just found to be ours.
        unsafe {
            libc::kill(*pid, libc::SIGKILL);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && !leftovers_off_runtime(pgid, temp_dir, uid).await.is_empty()
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    found.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_temp_dir_is_recognised_in_arguments_but_not_as_a_prefix() {
        assert!(names_dir("/tmp/corral-ray-a", "/tmp/corral-ray-a"));
        assert!(names_dir(
            "--log_dir=/tmp/corral-ray-a/session_1/logs",
            "/tmp/corral-ray-a"
        ));
        assert!(!names_dir(
            "--temp-dir=/tmp/corral-ray-ab",
            "/tmp/corral-ray-a"
        ));
        assert!(!names_dir("/x/tmp/corral-ray-a", "/tmp/corral-ray-a"));
    }

    #[test]
    fn ansi_colours_are_stripped() {
        assert_eq!(
            strip_ansi("\u{1b}[32mRay runtime started.\u{1b}[39m"),
            "Ray runtime started."
        );
    }

    #[test]
    fn rate_limit_admits_a_window_then_counts_the_rest() {
        let mut l = RateLimit::new(2, Duration::from_secs(10));
        let t = Instant::now();
        assert_eq!(l.admit(t), (true, 0));
        assert_eq!(l.admit(t), (true, 0));
        assert_eq!(l.admit(t), (false, 0));
        assert_eq!(l.admit(t), (false, 0));
        assert_eq!(l.admit(t + Duration::from_secs(11)), (true, 2));
    }

    #[tokio::test]
    async fn a_group_member_is_found_by_its_command_name_until_it_exits() {
        let d = tempfile::tempdir().unwrap();
        // A copy of sleep named like Ray's raylet, started by the group's leader.
        let raylet = d.path().join("raylet");
        std::fs::copy("/bin/sleep", &raylet).unwrap();
        // One of the same name outside the group, which must never count.
        let mut outsider = std::process::Command::new(&raylet)
            .arg("30")
            .spawn()
            .unwrap();
        let mut p = spawn(
            Path::new("/bin/sh"),
            &[
                "-c".into(),
                format!(
                    "{} 30 & echo 'Ray runtime started.'; wait",
                    raylet.display()
                ),
            ],
            d.path(),
            &d.path().join("out.log"),
            "test",
        )
        .unwrap();
        tokio::time::timeout(Duration::from_secs(5), p.started.recv())
            .await
            .unwrap();
        let pgid = p.pid as i32;
        let deadline = Instant::now() + Duration::from_secs(5);
        while !group_runs(pgid, "raylet") {
            assert!(Instant::now() < deadline, "the raylet stand-in never ran");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(!group_runs(pgid, "gcs_server"));
        p.stop(Duration::from_millis(300), &d.path().join("t"))
            .await;
        assert!(!group_runs(pgid, "raylet"));
        assert!(
            outsider.try_wait().unwrap().is_none(),
            "the outsider was stopped"
        );
        let _ = outsider.kill();
        let _ = outsider.wait();
    }

    #[tokio::test]
    async fn stop_ends_the_whole_group_and_spares_other_processes() {
        let d = tempfile::tempdir().unwrap();
        let outsider = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        // A shell that ignores SIGTERM, with a child: only SIGKILL of the group ends both.
        let p = spawn(
            Path::new("/bin/sh"),
            &[
                "-c".into(),
                "trap '' TERM; sleep 30 & echo 'Ray runtime started.'; wait".into(),
            ],
            d.path(),
            &d.path().join("out.log"),
            "test",
        )
        .unwrap();
        let pgid = p.pid as i32;
        let mut started = p;
        tokio::time::timeout(Duration::from_secs(5), started.started.recv())
            .await
            .unwrap();
        assert!(group_alive(pgid));
        started
            .stop(Duration::from_millis(300), &d.path().join("t"))
            .await;
        assert!(!group_alive(pgid));
        let mut outsider = outsider;
        assert!(outsider.try_wait().unwrap().is_none(), "outsider survived");
        let _ = outsider.kill();
        let _ = outsider.wait();
        let log = std::fs::read_to_string(d.path().join("out.log")).unwrap();
        assert!(log.contains("Ray runtime started."), "{log}");
    }
}
