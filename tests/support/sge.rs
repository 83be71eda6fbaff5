//! A real single-host Grid Engine on loopback (Debian's `gridengine-master`,
//! `gridengine-exec` and `gridengine-client`, Son of Grid Engine 8.1.9), for the sge
//! plugin's tests. The recipe is `../shared/notes/toolchain.md` section 3.
//!
//! Invariants and trade-offs:
//! - The cell is Debian's: `SGE_ROOT=/var/lib/gridengine`, `SGE_CELL=default`, spooled
//!   in Berkeley DB under `/var/spool/gridengine`, configured through `qconf` like any
//!   cell. The harness configures a cell only when it is the harness's: it carries
//!   [`MARK`], or it was never configured (`act_qmaster` empty, as the package leaves
//!   it). Any other cell is a real cluster's and is never touched (the test fails
//!   under CI and skips elsewhere, saying so).
//! - Host names: Grid Engine refuses a client whose address resolves to a name other
//!   than the one it claims; on loopback 127.0.0.1 resolves to `localhost`. The cell's
//!   `host_aliases` makes `localhost` an alias of this host's name (as Grid Engine's own
//!   `gethostname -name` reports it), so nothing in `/etc/hosts` changes.
//! - Speed: the scheduler runs every second and on every submission and job end
//!   (`flush_submit_sec`, `flush_finish_sec`), and accounting is written at once
//!   (`accounting_flush_time=00:00:00`; Debian's default waits up to 15 s, during which
//!   a job that just ended is in neither `qstat` nor `qacct`). The queue [`QUEUE`] has
//!   [`SLOTS`] slots whatever the machine has and no load thresholds, so a busy 2-core
//!   machine does not put it in alarm and tests' jobs run side by side.
//! - Daemons: `sge_qmaster` and `sge_execd` run in the foreground (`SGE_ND=1`) as
//!   children of the test, so they are exactly the processes stopped later. A daemon
//!   that already runs (its pid file names a live process of that name: a run that was
//!   killed, or an operator's) is reused and left running. A qmaster the harness starts
//!   first deletes every job left in its spool (the cell is the harness's, so they are
//!   an aborted run's): each run starts clean.
//! - One Grid Engine per test binary: [`Sge::start`] hands out clones of one
//!   `Arc<Sge>` while any is alive, so tests of one binary share it; when the last
//!   clone drops, the jobs of a qmaster the harness started are deleted and the daemons
//!   it started are stopped, by pid: SIGTERM, then SIGKILL after 20 s.
//! - Under `CI=true` a missing Grid Engine is installed with apt-get; elsewhere the
//!   harness returns `None` after printing `SKIPPED: <why>`. Starting the daemons needs
//!   root; jobs cannot be submitted by root (Grid Engine's `min_uid` is 1000), so tests
//!   submit as users from [`super::users`].

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

pub const SGE_ROOT: &str = "/var/lib/gridengine";
pub const SGE_CELL: &str = "default";
/// The cell's shared files (`act_qmaster`, `host_aliases`, `accounting`, ...).
pub const COMMON: &str = "/var/lib/gridengine/default/common";
/// A cell carrying this file was configured by this harness.
pub const MARK: &str = "/var/lib/gridengine/default/common/corral-test-harness";
const SPOOL: &str = "/var/spool/gridengine";
/// Grid Engine's own host name lookup (what its daemons and clients call this host).
const GETHOSTNAME: &str = "/usr/lib/gridengine/gethostname";
/// The cluster queue tests' jobs run in.
pub const QUEUE: &str = "corral.q";
pub const SLOTS: u32 = 8;

/// The environment every Grid Engine client needs, for programs started with a clean
/// environment (Debian's wrappers default to these same values).
pub fn env() -> [(&'static str, &'static str); 2] {
    [("SGE_ROOT", SGE_ROOT), ("SGE_CELL", SGE_CELL)]
}

use super::{ci, skip};

fn client(program: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args).envs(env()).stdin(Stdio::null());
    cmd
}

/// Runs a Grid Engine client; `(success, stdout, stderr)`.
pub fn sge(program: &str, args: &[&str]) -> (bool, String, String) {
    match client(program, args).output() {
        Ok(o) => (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        ),
        Err(e) => (false, String::new(), format!("running {program}: {e}")),
    }
}

fn must(program: &str, args: &[&str]) -> String {
    let (ok, out, err) = sge(program, args);
    assert!(
        ok,
        "{program} {args:?} failed: {}{}",
        err.trim(),
        out.trim()
    );
    out
}

fn installed() -> bool {
    [
        "/usr/bin/qsub",
        "/usr/bin/qstat",
        "/usr/bin/qacct",
        "/usr/bin/qconf",
        "/usr/sbin/sge_qmaster",
        "/usr/sbin/sge_execd",
        GETHOSTNAME,
    ]
    .iter()
    .all(|p| Path::new(p).is_file())
}

fn install() {
    super::apt_install(&["gridengine-master", "gridengine-exec", "gridengine-client"]);
}

/// The pid in `file` when it names a live (not zombie) process called `name`.
fn running(file: &Path, name: &str) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(file).ok()?.trim().parse().ok()?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat.rsplit_once(") ")?.1.chars().next()?;
    (comm.trim() == name && state != 'Z').then_some(pid)
}

fn qmaster_running() -> Option<i32> {
    running(&Path::new(SPOOL).join("qmaster/qmaster.pid"), "sge_qmaster")
}

/// The execd spools under the name it resolved for itself, which may be an alias.
fn execd_running() -> Option<i32> {
    std::fs::read_dir(Path::new(SPOOL).join("execd"))
        .ok()?
        .flatten()
        .find_map(|d| running(&d.path().join("execd.pid"), "sge_execd"))
}

/// `text` with each `key value` line of `set` replaced (Grid Engine's configuration
/// format; `\`-continued lines are joined first).
fn with_values(text: &str, set: &[(&str, &str)]) -> String {
    let joined = text.replace("\\\n", " ");
    let mut out = String::new();
    for line in joined.lines() {
        let key = line.split_whitespace().next().unwrap_or("");
        match set.iter().find(|(k, _)| *k == key) {
            Some((k, v)) => out.push_str(&format!("{k} {v}\n")),
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

fn queue_conf(host: &str) -> String {
    let mut q = format!(
        "qname {QUEUE}\nhostlist {host}\nseq_no 0\nload_thresholds NONE\nsuspend_thresholds NONE\n\
nsuspend 1\nsuspend_interval 00:05:00\npriority 0\nmin_cpu_interval 00:05:00\n\
processors UNDEFINED\nqtype BATCH INTERACTIVE\nckpt_list NONE\npe_list NONE\nrerun FALSE\n\
slots {SLOTS}\ntmpdir /tmp\nshell /bin/sh\nprolog NONE\nepilog NONE\n\
shell_start_mode posix_compliant\nstarter_method NONE\nsuspend_method NONE\n\
resume_method NONE\nterminate_method NONE\nnotify 00:00:60\nowner_list NONE\n\
user_lists NONE\nxuser_lists NONE\nsubordinate_list NONE\ncomplex_values NONE\n\
projects NONE\nxprojects NONE\ncalendar NONE\ninitial_state default\n"
    );
    for limit in ["rt", "cpu", "fsize", "data", "stack", "core", "rss", "vmem"] {
        q.push_str(&format!("s_{limit} INFINITY\nh_{limit} INFINITY\n"));
    }
    q
}

pub struct Sge {
    /// This host as Grid Engine names it (the queue instance is `QUEUE@host`).
    pub host: String,
    /// Daemons this value started: (name, child), stopped on drop in reverse order.
    started: Vec<(&'static str, Child)>,
    logs: tempfile::TempDir,
}

static SHARED: Mutex<Weak<Sge>> = Mutex::new(Weak::new());

impl Sge {
    /// A running Grid Engine whose queue [`QUEUE`] takes jobs, shared with every other
    /// caller in this process while any holds it; or `None` (see the module docs).
    pub fn start() -> Option<Arc<Sge>> {
        let mut shared = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = shared.upgrade() {
            return Some(s);
        }
        let s = Arc::new(Sge::start_one()?);
        *shared = Arc::downgrade(&s);
        Some(s)
    }

    fn start_one() -> Option<Sge> {
        if !installed() {
            if !ci() {
                return skip(
                    "Grid Engine is not installed (apt-get install gridengine-master gridengine-exec gridengine-client; under CI=true the test installs it)",
                );
            }
            install();
        }
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return skip("starting Grid Engine's daemons needs root");
        }
        let host = must(GETHOSTNAME, &["-name"]).trim().to_string();
        assert!(
            !host.is_empty() && !host.contains(char::is_whitespace),
            "{GETHOSTNAME} -name printed {host:?}"
        );
        let act = Path::new(COMMON).join("act_qmaster");
        let current = std::fs::read_to_string(&act).unwrap_or_default();
        if !Path::new(MARK).exists() && !current.trim().is_empty() {
            return skip(&format!(
                "the Grid Engine cell {SGE_ROOT}/{SGE_CELL} is configured (act_qmaster {:?}) and was not by this harness; not touching a real cluster's cell",
                current.trim()
            ));
        }
        std::fs::write(
            MARK,
            "Configured by corral's test harness (tests/support/sge.rs); delete this file and the harness leaves the cell alone.\n",
        )
        .unwrap();
        std::fs::write(&act, format!("{host}\n")).unwrap();
        let aliases = Path::new(COMMON).join("host_aliases");
        let want = format!("{host} localhost\n");
        if host != "localhost" && std::fs::read_to_string(&aliases).ok().as_deref() != Some(&want) {
            std::fs::write(&aliases, want).unwrap();
        }

        let mut me = Sge {
            host,
            started: Vec::new(),
            logs: tempfile::Builder::new()
                .prefix("corral-sge")
                .tempdir()
                .unwrap(),
        };
        match qmaster_running() {
            Some(pid) => println!("reusing the sge_qmaster already running (pid {pid})"),
            None => {
                me.spawn("qmaster", "/usr/sbin/sge_qmaster");
                me.wait_qmaster();
                // The spool is the harness's: jobs in it are an aborted run's.
                let _ = sge("qdel", &["-f", "-u", "*"]);
            }
        }
        me.configure();
        match execd_running() {
            Some(pid) => println!("reusing the sge_execd already running (pid {pid})"),
            None => me.spawn("execd", "/usr/sbin/sge_execd"),
        }
        me.wait_queue();
        Some(me)
    }

    fn spawn(&mut self, name: &'static str, program: &str) {
        let log = std::fs::File::create(self.logs.path().join(format!("{name}.log"))).unwrap();
        let child = client(program, &[])
            .env("SGE_ND", "1")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {program}: {e}"));
        self.started.push((name, child));
    }

    fn wait_qmaster(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if sge("qconf", &["-sh"]).0 {
                return;
            }
            if let Some((_, c)) = self.started.iter_mut().find(|(n, _)| *n == "qmaster") {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!("sge_qmaster exited ({status}):\n{}", self.log("qmaster"));
                }
            }
            assert!(
                Instant::now() < deadline,
                "sge_qmaster did not answer within 60 s:\n{}",
                self.log("qmaster")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The scheduler, accounting, submit host and queue this harness wants; each step
    /// is a no-op when already so.
    fn configure(&self) {
        let dir = tempfile::tempdir().unwrap();
        let sched = must("qconf", &["-ssconf"]);
        let want = with_values(
            &sched,
            &[
                ("schedule_interval", "0:0:1"),
                ("flush_submit_sec", "1"),
                ("flush_finish_sec", "1"),
            ],
        );
        if with_values(&sched, &[]) != want {
            let f = dir.path().join("sched");
            std::fs::write(&f, want).unwrap();
            must("qconf", &["-Msconf", f.to_str().unwrap()]);
        }
        let global = must("qconf", &["-sconf", "global"]);
        let reporting = with_values(&global, &[])
            .lines()
            .find_map(|l| l.strip_prefix("reporting_params"))
            .unwrap_or_default()
            .split_whitespace()
            .filter(|w| !w.starts_with("accounting_flush_time="))
            .chain(["accounting_flush_time=00:00:00"])
            .collect::<Vec<_>>()
            .join(" ");
        let want = with_values(&global, &[("reporting_params", &reporting)]);
        if with_values(&global, &[]) != want {
            // -Mconf takes the configuration's name from the file's name.
            let f = dir.path().join("global");
            std::fs::write(&f, want).unwrap();
            must("qconf", &["-Mconf", f.to_str().unwrap()]);
        }
        if !sge("qconf", &["-ss"])
            .1
            .lines()
            .any(|h| h.trim() == self.host)
        {
            must("qconf", &["-as", &self.host]);
        }
        let f = dir.path().join(QUEUE);
        std::fs::write(&f, queue_conf(&self.host)).unwrap();
        let exists = sge("qconf", &["-sql"]).1.lines().any(|q| q.trim() == QUEUE);
        must(
            "qconf",
            &[if exists { "-Mq" } else { "-Aq" }, f.to_str().unwrap()],
        );
    }

    /// Waits (60 s at most) for `QUEUE@host` to report with no state letter; enables it
    /// or clears its error state if an aborted run left it so.
    fn wait_queue(&self) {
        let instance = format!("{QUEUE}@{}", self.host);
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut fixed = false;
        loop {
            let states = self.queue_states();
            match states.as_deref() {
                Some("") => return,
                Some(s) if !fixed && (s.contains('d') || s.contains('E')) => {
                    let _ = sge("qmod", &["-e", &instance]);
                    let _ = sge("qmod", &["-c", &instance]);
                    fixed = true;
                }
                _ => {}
            }
            if Instant::now() > deadline {
                panic!(
                    "{instance} never took jobs (states {states:?})\n{}",
                    self.messages()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The state letters of `QUEUE@host` in `qstat -f` (`""`: ready, `u`: its execd
    /// has not reported, `d`: disabled, ...); `None` while qstat does not list it.
    pub fn queue_states(&self) -> Option<String> {
        let instance = format!("{QUEUE}@{}", self.host);
        let (ok, out, _) = sge("qstat", &["-f", "-q", QUEUE]);
        if !ok {
            return None;
        }
        out.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // queuename qtype resv/used/tot. load_avg arch [states]
            (f.first() == Some(&instance.as_str()) && f.len() >= 5)
                .then(|| f.get(5).copied().unwrap_or("").to_string())
        })
    }

    /// What a started daemon printed.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.logs.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// The last lines of the qmaster's and execds' `messages` files, for failures.
    pub fn messages(&self) -> String {
        let mut files: Vec<PathBuf> = vec![Path::new(SPOOL).join("qmaster/messages")];
        if let Ok(dirs) = std::fs::read_dir(Path::new(SPOOL).join("execd")) {
            files.extend(dirs.flatten().map(|d| d.path().join("messages")));
        }
        let mut out = String::new();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- {} ---\n", f.display()));
            for l in &lines[lines.len().saturating_sub(30)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Sge {
    fn drop(&mut self) {
        if self.started.iter().any(|(n, _)| *n == "qmaster") {
            // Every job of this qmaster is a test's: let none outlive it.
            let _ = sge("qdel", &["-f", "-u", "*"]);
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline
                && sge("qstat", &["-u", "*"])
                    .1
                    .lines()
                    .any(|l| !l.trim().is_empty())
            {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        while let Some((_, child)) = self.started.pop() {
            super::stop_child(child, Duration::from_secs(20));
        }
    }
}
