//! The one bounded program runner: custom health checks and scheduler plugins run their
//! programs through [`run`], and nothing else in corral spawns a short-lived program.
//!
//! A run takes an argument vector (never a shell), extra environment variables on top of
//! the agent's own, an optional working directory and stdin bytes, a timeout and a byte
//! cap per output stream, and always comes back: a finished program, a killed one, or an
//! error saying why it could not start.
//!
//! Invariants and trade-offs:
//! - The program leads a process group of its own. At its timeout the whole group is
//!   killed (`SIGKILL`), so shell pipelines and forked helpers die with it
//!   ([`Output::timed_out`]). When the program exits by itself, whatever it left running
//!   in its group is killed too: a run leaves nothing behind, and a backgrounded helper
//!   cannot hold the output pipes open and stall the caller. Programs that must outlive
//!   the run (daemons) detach with `setsid` and are not corral's to supervise here.
//! - The group is killed while its leader is still an unreaped zombie (the exit is
//!   observed on a pidfd, then confirmed with `waitid(WNOWAIT)`; on kernels without
//!   pidfds, before 5.3, a thread blocks in `waitid(WNOWAIT)`), so the group id cannot
//!   have been reused by an unrelated process when the signal is sent.
//! - stdout and stderr are read on their own threads while the program runs, so a
//!   program that writes more than a pipe holds never deadlocks the runner. Only the
//!   first `*_max` bytes are kept, the rest is read and dropped, and the `*_truncated`
//!   flags say so. A cap of 0 sends the stream to `/dev/null`.
//! - stdin bytes are written and the pipe closed after them: at once when they fit in
//!   the pipe (a write that cannot block), else on their own thread while the program
//!   runs. A program that does not read its stdin is not an error (the broken pipe is
//!   ignored).
//! - A reader signals when it is done, and the run returns at that moment: nothing
//!   polls, so the runner adds no sleep to a program's own time.
//! - A process that escaped the group (its own `setsid`) and still holds a pipe open
//!   cannot stall the caller either: after the program ended, the readers get at most
//!   [`PIPE_GRACE`] more, and the output read so far is returned.
//! - With [`Command::credentials`] the child drops to that user before `exec`:
//!   supplementary groups, then the primary group, then the uid (in that order: each
//!   step needs the privilege the next one gives up). A failed step fails the spawn;
//!   the program never runs with a mix of identities. With [`Command::clear_env`] the
//!   child starts from an empty environment plus [`Command::env`], so nothing of the
//!   agent's environment (root's `HOME`, its credentials' paths, `LD_*`) leaks into a
//!   program run for someone else.
//! - Blocking: call it from a thread that may block (a check's own thread, a plugin
//!   call's blocking thread), never from an async task.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long output readers may still run once the program ended (see the module doc).
pub const PIPE_GRACE: Duration = Duration::from_millis(500);

/// One program run: what to start and its bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The program; a bare name is looked up on the agent's `PATH`.
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// Set on top of the agent's own environment (or of nothing, with `clear_env`).
    pub env: Vec<(OsString, OsString)>,
    /// Start from an empty environment instead of the agent's.
    pub clear_env: bool,
    /// Run as this user instead of the agent's; `None` keeps the agent's identity.
    pub credentials: Option<Credentials>,
    /// Working directory; `None` keeps the agent's.
    pub cwd: Option<PathBuf>,
    /// Bytes written to the program's stdin, which is then closed; `None`: `/dev/null`.
    pub stdin: Option<Vec<u8>>,
    /// The whole process group is killed once this has passed.
    pub timeout: Duration,
    /// Bytes of stdout kept; 0 discards it.
    pub stdout_max: usize,
    /// Bytes of stderr kept; 0 discards it.
    pub stderr_max: usize,
}

impl Command {
    /// A run of `program` with no arguments, no stdin, and 64 KiB kept of each stream.
    pub fn new(program: impl Into<PathBuf>, timeout: Duration) -> Command {
        Command {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            clear_env: false,
            credentials: None,
            cwd: None,
            stdin: None,
            timeout,
            stdout_max: 64 * 1024,
            stderr_max: 64 * 1024,
        }
    }

    /// The program as shown in messages.
    pub fn display_program(&self) -> String {
        self.program.display().to_string()
    }
}

/// The identity a program runs as: what `setgroups`, `setgid` and `setuid` get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (the primary one may be among them).
    pub groups: Vec<u32>,
}

impl Credentials {
    /// Becomes this identity, for good: supplementary groups, then the primary group,
    /// then the uid (each step needs the privilege the next gives up), then a check
    /// that the change is complete and cannot be undone (CERT POS37-C). For a forked
    /// child before `exec` (`CommandExt::pre_exec`): it only calls async-signal-safe
    /// functions and neither allocates nor takes locks. Every program corral runs as
    /// someone else (plugin programs, Ray) drops its privileges here.
    pub fn become_in_child(&self) -> std::io::Result<()> {
        // SAFETY: plain system calls on memory owned by `self` (the groups buffer was
        // allocated before the fork).
        unsafe {
            if libc::setgroups(self.groups.len() as _, self.groups.as_ptr()) != 0
                || libc::setgid(self.gid) != 0
                || libc::setuid(self.uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getuid() != self.uid
                || libc::geteuid() != self.uid
                || libc::getegid() != self.gid
                || (self.uid != 0 && libc::setuid(0) == 0)
            {
                return Err(std::io::Error::from_raw_os_error(libc::EPERM));
            }
        }
        Ok(())
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// The exit code; `None` when the program was killed by a signal.
    pub code: Option<i32>,
    /// The signal that ended the program, if one did.
    pub signal: Option<i32>,
    /// The timeout passed and the process group was killed.
    pub timed_out: bool,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub elapsed: Duration,
}

impl Output {
    /// Whether either stream lost bytes to its cap.
    pub fn truncated(&self) -> bool {
        self.stdout_truncated || self.stderr_truncated
    }
}

/// A program that could not be run at all.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("cannot wait for {program}: {source}")]
    Wait {
        program: String,
        source: std::io::Error,
    },
}

/// What one output reader collected.
#[derive(Default)]
struct Capture {
    bytes: Vec<u8>,
    truncated: bool,
    /// The reader saw the end of the pipe (or an error) and is done.
    done: bool,
}

/// One output reader: its capture, and the signal it gives when it is done.
struct Reader {
    capture: Arc<(Mutex<Capture>, Condvar)>,
    thread: JoinHandle<()>,
}

fn spawn_reader(mut pipe: impl Read + Send + 'static, max: usize) -> Reader {
    let capture = Arc::new((Mutex::new(Capture::default()), Condvar::new()));
    let shared = capture.clone();
    let thread = std::thread::spawn(move || {
        let (lock, ended) = &*shared;
        let mut chunk = [0u8; 8192];
        loop {
            let n = match pipe.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            let Ok(mut c) = lock.lock() else { break };
            let room = max.saturating_sub(c.bytes.len());
            let keep = n.min(room);
            c.bytes.extend_from_slice(&chunk[..keep]);
            if keep < n {
                c.truncated = true;
            }
        }
        if let Ok(mut c) = lock.lock() {
            c.done = true;
        }
        ended.notify_all();
    });
    Reader { capture, thread }
}

/// Takes what `reader` collected, waiting until `until` at most for it to be done. The
/// wait ends the moment the reader signals (no polling: a run's answer is not held up).
fn collect(reader: Option<Reader>, until: Instant) -> (Vec<u8>, bool) {
    let Some(reader) = reader else {
        return (Vec::new(), false);
    };
    let (lock, ended) = &*reader.capture;
    let Ok(guard) = lock.lock() else {
        return (Vec::new(), true);
    };
    let left = until.saturating_duration_since(Instant::now());
    let (mut c, _) = ended
        .wait_timeout_while(guard, left, |c| !c.done)
        .unwrap_or_else(|p| p.into_inner());
    let finished = c.done;
    let mut c = std::mem::take(&mut *c);
    if finished {
        let _ = reader.thread.join();
    } else {
        // A reader still blocked (an escaped process holds the pipe) is left to end on
        // its own when that pipe closes; what it read so far is returned, marked
        // truncated.
        c.truncated = true;
    }
    (c.bytes, c.truncated)
}

/// Writes `bytes` to the child's stdin and closes it. When they fit in the pipe (the
/// usual case: a batch script), the write cannot block and is done here; otherwise a
/// thread writes them while the program runs (it may read them slowly, or never). A
/// program that exits without reading is not an error (the broken pipe is ignored).
fn feed_stdin(mut pipe: std::process::ChildStdin, bytes: Vec<u8>) {
    // SAFETY: F_GETPIPE_SZ reads the capacity of the pipe we own; no memory is passed.
    let room = unsafe { libc::fcntl(pipe.as_raw_fd(), libc::F_GETPIPE_SZ) };
    if room > 0 && bytes.len() <= room as usize {
        // The pipe is new and empty: a write of at most its capacity never waits.
        let _ = pipe.write_all(&bytes);
        return;
    }
    std::thread::spawn(move || {
        let _ = pipe.write_all(&bytes);
    });
}

/// Blocks until `pid` (our unreaped child) has exited, without reaping it.
fn wait_exited_keep_zombie(pid: libc::pid_t) -> std::io::Result<()> {
    loop {
        // SAFETY: waitid writes into the zeroed siginfo we own; WNOWAIT leaves the child
        // reapable by `Child::wait` afterwards.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Waits until `pid` (our unreaped child) has exited, for `timeout` at most, without
/// reaping it: `Ok(true)` when it exited, `Ok(false)` when the time ran out. The wait is
/// on a pidfd in this thread (Linux 5.3 and later); where the kernel has none, a thread
/// blocks in `waitid` and this one waits for its word.
fn wait_exit_within(pid: libc::pid_t, timeout: Duration) -> std::io::Result<bool> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(wait_exited_keep_zombie(pid));
        });
        return match rx.recv_timeout(timeout) {
            Ok(r) => r.map(|()| true),
            Err(_) => Ok(false),
        };
    }
    // SAFETY: the descriptor was just opened by us and is owned from here on.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
    // A timeout too far off to add to now is no deadline at all.
    let deadline = Instant::now().checked_add(timeout);
    loop {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let ts = left.map(|left| libc::timespec {
            tv_sec: left.as_secs().min(i64::MAX as u64) as libc::time_t,
            tv_nsec: left.subsec_nanos() as libc::c_long,
        });
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ts_ptr = ts.as_ref().map_or(std::ptr::null(), |t| t as *const _);
        // SAFETY: one pollfd and at most one timespec that we own, for the length of
        // the call (a null timespec waits without a limit).
        let rc = unsafe { libc::ppoll(&mut pfd, 1, ts_ptr, std::ptr::null()) };
        if rc > 0 {
            // Readable: the process exited. Confirm it, leaving the zombie in place.
            return wait_exited_keep_zombie(pid).map(|()| true);
        }
        if rc == 0 {
            if left.is_some_and(|l| l.is_zero()) {
                return Ok(false);
            }
            continue;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Kills the process group led by `child`, which must not have been reaped yet.
fn kill_group(child: &Child) {
    // SAFETY: kill(2) on the group our unreaped child leads: its id cannot be reused
    // while it is a zombie we have not waited for.
    unsafe {
        libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL);
    }
}

/// Runs `cmd` to its end or its timeout; see the module doc.
pub fn run(cmd: &Command) -> Result<Output, ExecError> {
    let started = Instant::now();
    let program = cmd.display_program();
    let mut c = std::process::Command::new(&cmd.program);
    c.args(&cmd.args)
        .envs(cmd.env.iter().map(|(k, v)| (k, v)))
        .stdin(if cmd.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(if cmd.stdout_max > 0 {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(if cmd.stderr_max > 0 {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .process_group(0);
    if let Some(dir) = &cmd.cwd {
        c.current_dir(dir);
    }
    if cmd.clear_env {
        c.env_clear();
        c.envs(cmd.env.iter().map(|(k, v)| (k, v)));
    }
    if let Some(cred) = cmd.credentials.clone() {
        // SAFETY: the closure runs in the forked child before exec and does only what
        // `become_in_child` does (async-signal-safe, no allocation).
        unsafe {
            c.pre_exec(move || cred.become_in_child());
        }
    }
    let mut child = c.spawn().map_err(|source| ExecError::Spawn {
        program: program.clone(),
        source,
    })?;
    let stdout = child.stdout.take().map(|p| spawn_reader(p, cmd.stdout_max));
    let stderr = child.stderr.take().map(|p| spawn_reader(p, cmd.stderr_max));
    if let (Some(pipe), Some(bytes)) = (child.stdin.take(), cmd.stdin.clone()) {
        feed_stdin(pipe, bytes);
    }

    let pid = child.id() as libc::pid_t;
    let timed_out = match wait_exit_within(pid, cmd.timeout) {
        Ok(exited) => !exited,
        Err(source) => {
            kill_group(&child);
            let _ = child.wait();
            return Err(ExecError::Wait { program, source });
        }
    };
    // Either the leader exited (kill what it left behind) or it ran out of time (kill it
    // and everything it started). Both happen before the leader is reaped.
    kill_group(&child);
    let status = child.wait().map_err(|source| ExecError::Wait {
        program: program.clone(),
        source,
    })?;
    let until = Instant::now() + PIPE_GRACE;
    let (stdout, stdout_truncated) = collect(stdout, until);
    let (stderr, stderr_truncated) = collect(stderr, until);
    Ok(Output {
        code: if timed_out { None } else { status.code() },
        signal: status.signal(),
        timed_out,
        stdout,
        stderr,
        stdout_truncated,
        stderr_truncated,
        elapsed: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, timeout_ms: u64) -> Command {
        let mut c = Command::new("/bin/sh", Duration::from_millis(timeout_ms));
        c.args = vec!["-c".into(), script.into()];
        c
    }

    #[test]
    fn a_program_with_credentials_runs_as_that_user_with_only_its_groups() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: switching users needs root");
            return;
        }
        let mut c = sh("id -u; id -g; id -G; echo \"$HOME|$FROM_AGENT\"", 5000);
        c.credentials = Some(Credentials {
            uid: 65534,
            gid: 65534,
            groups: vec![65534],
        });
        c.clear_env = true;
        c.env = vec![("HOME".into(), "/nonexistent".into())];
        std::env::set_var("FROM_AGENT", "leaked");
        let out = run(&c).unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(text, "65534\n65534\n65534\n/nonexistent|\n", "{out:?}");
    }

    #[test]
    fn a_user_switch_the_agent_may_not_make_fails_the_spawn() {
        if unsafe { libc::geteuid() } == 0 {
            eprintln!("SKIPPED: as root every switch is allowed");
            return;
        }
        let mut c = sh("true", 5000);
        c.credentials = Some(Credentials {
            uid: 0,
            gid: 0,
            groups: vec![0],
        });
        assert!(matches!(run(&c), Err(ExecError::Spawn { .. })));
    }

    #[test]
    fn exit_code_and_both_streams_come_back() {
        let out = run(&sh("echo out; echo err >&2; exit 3", 5000)).unwrap();
        assert_eq!(out.code, Some(3));
        assert_eq!(out.signal, None);
        assert!(!out.timed_out);
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
        assert!(!out.truncated());
    }

    #[test]
    fn arguments_reach_the_program_literally_without_a_shell() {
        let mut c = Command::new("/bin/echo", Duration::from_secs(5));
        c.args = vec!["$(id)".into(), "a b;c".into()];
        let out = run(&c).unwrap();
        assert_eq!(out.stdout, b"$(id) a b;c\n");
    }

    #[test]
    fn stdin_env_and_working_directory_are_applied() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = sh("cat; printf ' %s ' \"$CORRAL_EXEC_T\"; pwd", 5000);
        c.stdin = Some(b"from stdin".to_vec());
        c.env = vec![("CORRAL_EXEC_T".into(), "set".into())];
        c.cwd = Some(dir.path().to_path_buf());
        let out = run(&c).unwrap();
        let want = format!(
            "from stdin set {}\n",
            dir.path().canonicalize().unwrap().display()
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), want);
    }

    #[test]
    fn stdin_larger_than_a_pipe_reaches_the_program_whole() {
        // 1 MiB does not fit in a pipe: it is written while the program reads it.
        let mut c = sh("wc -c", 10_000);
        c.stdin = Some(vec![b'x'; 1 << 20]);
        let out = run(&c).unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1048576");
    }

    #[test]
    fn a_run_ends_when_its_program_does_not_at_its_timeout() {
        let started = Instant::now();
        let out = run(&sh("echo done", 30_000)).unwrap();
        assert!(!out.timed_out);
        assert_eq!(out.stdout, b"done\n");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_program_that_ignores_its_stdin_is_not_an_error() {
        let mut c = sh("exit 0", 5000);
        c.stdin = Some(vec![b'x'; 1 << 20]);
        assert_eq!(run(&c).unwrap().code, Some(0));
    }

    #[test]
    fn output_beyond_the_cap_is_dropped_and_flagged_without_blocking_the_program() {
        // 1 MiB, far more than a pipe holds: the program must still finish.
        let mut c = sh(
            "head -c 1048576 /dev/zero; head -c 10 /dev/zero >&2",
            10_000,
        );
        c.stdout_max = 100;
        c.stderr_max = 10;
        let out = run(&c).unwrap();
        assert_eq!(out.code, Some(0));
        assert_eq!(out.stdout.len(), 100);
        assert!(out.stdout_truncated);
        assert_eq!(out.stderr.len(), 10);
        assert!(!out.stderr_truncated);
    }

    #[test]
    fn timeout_kills_the_whole_process_group() {
        // The grandchild keeps stdout open: only a group kill lets the run end.
        let started = Instant::now();
        let out = run(&sh("sleep 30 | cat; exit 0", 200)).unwrap();
        assert!(out.timed_out);
        assert_eq!(out.code, None);
        assert_eq!(out.signal, Some(libc::SIGKILL));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn helpers_left_running_by_a_finished_program_are_killed() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let script = format!("sleep 30 & echo $! > {}; exit 0", pidfile.display());
        let started = Instant::now();
        let out = run(&sh(&script, 10_000)).unwrap();
        assert_eq!(out.code, Some(0));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The helper was in the group: it is gone (or a zombie awaiting its reaper).
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next());
            if matches!(state, None | Some("Z") | Some("X")) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "helper {pid} still running: {stat}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_missing_program_is_a_spawn_error_naming_it() {
        let err = run(&Command::new(
            "/nonexistent/corral-x",
            Duration::from_secs(1),
        ))
        .unwrap_err();
        assert!(matches!(err, ExecError::Spawn { .. }));
        assert!(
            err.to_string()
                .starts_with("cannot run /nonexistent/corral-x:"),
            "{err}"
        );
    }

    #[test]
    fn a_signal_death_has_no_exit_code() {
        let out = run(&sh("kill -TERM $$", 5000)).unwrap();
        assert_eq!(out.code, None);
        assert_eq!(out.signal, Some(libc::SIGTERM));
        assert!(!out.timed_out);
    }
}
