//! A real single-node Slurm on loopback (Debian's `slurm-wlm` 22.05 and `munge`), for
//! the Slurm plugin's tests; and where the built plugins are found.
//!
//! Invariants and trade-offs:
//! - The configuration is the system one, `/etc/slurm/slurm.conf`, not a `SLURM_CONF`
//!   file: the agent's plugin host may not pass its environment on to the programs it
//!   runs, and every Slurm client finds the system file by itself. The harness writes it
//!   only when it is absent or was written by the harness (first line [`MARK`]); a
//!   foreign configuration is never overwritten (the test fails under CI and skips
//!   elsewhere, saying so).
//! - `MinJobAge=2`: an ended job leaves slurmctld's memory within seconds (plus the
//!   controller's purge interval) so "a job that left the queue" is tested quickly.
//!   There is no accounting storage, so `sacct` fails, as on many real clusters.
//! - `munged` is started (as the `munge` user) only when no munged answers; slurmctld
//!   (with `-c`: a clean state each run, so a node drained by an aborted run comes back
//!   idle) and slurmd are started in the foreground as children. A controller that
//!   already answers with the harness's configuration is reused instead, and then left
//!   running. Drop cancels the jobs of the test partition and stops exactly the daemons
//!   this value started, by pid: SIGTERM, then SIGKILL after 10 s.
//! - Under `CI=true` a missing Slurm is installed with apt-get; elsewhere the harness
//!   returns `None` after printing `SKIPPED: <why>`.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const CONF: &str = "/etc/slurm/slurm.conf";
pub const MARK: &str = "# Written by corral's test harness (tests/support/slurm.rs).";
/// The one node, and the partition jobs go to.
pub const NODE: &str = "localhost";
pub const PARTITION: &str = "debug";

fn config() -> String {
    format!(
        "{MARK}\n\
ClusterName=corraltest\n\
SlurmctldHost=localhost\n\
NodeName={NODE} CPUs=4 State=UNKNOWN\n\
PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP\n\
# Four schedulable CPUs whatever the machine has, so tests' jobs can run side by side.\n\
SlurmdParameters=config_overrides\n\
ProctrackType=proctrack/pgid\n\
TaskPlugin=task/none\n\
ReturnToService=2\n\
SelectType=select/cons_tres\n\
SelectTypeParameters=CR_CPU\n\
StateSaveLocation=/var/spool/slurmctld\n\
SlurmdSpoolDir=/var/spool/slurmd\n\
SlurmctldPidFile=/run/slurmctld.pid\n\
SlurmdPidFile=/run/slurmd.pid\n\
AccountingStorageType=accounting_storage/none\n\
JobAcctGatherType=jobacct_gather/none\n\
JobCompType=jobcomp/none\n\
MpiDefault=none\n\
SlurmUser=root\n\
MinJobAge=2\n"
    )
}

pub use super::{ci, skip};

/// Where `cargo xtask plugins` put the built plugins: `$CORRAL_PLUGINS_DIR`, else
/// `<target dir>/plugins`. `None` (failing under CI) when `NAME.wasm` is not there.
pub fn built_plugins_dir(name: &str) -> Option<PathBuf> {
    let dir = match std::env::var_os("CORRAL_PLUGINS_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            // This crate is tests/support in the workspace.
            let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
                .ancestors()
                .nth(2)
                .expect("tests/support is inside the workspace")
                .to_path_buf();
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .map(|t| {
                    if t.is_absolute() {
                        t
                    } else {
                        workspace.join(t)
                    }
                })
                .unwrap_or_else(|| workspace.join("target"));
            target.join("plugins")
        }
    };
    if dir.join(format!("{name}.wasm")).is_file() && dir.join(format!("{name}.toml")).is_file() {
        Some(dir)
    } else {
        skip(&format!(
            "the {name} plugin is not built in {} (run `cargo xtask plugins`, or set CORRAL_PLUGINS_DIR)",
            dir.display()
        ))
    }
}

fn on_path(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|d| d.join(program).is_file())
}

fn quiet(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn must(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn id_of(flag: &str, user: &str) -> u32 {
    quiet("id", &[flag, user])
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no user {user} (is munge installed?)"))
}

pub struct Slurm {
    /// Daemons this value started: (name, child), stopped on drop in reverse order.
    started: Vec<(&'static str, Child)>,
    pub logs: tempfile::TempDir,
}

impl Slurm {
    /// A running single-node Slurm whose node is idle, or `None` (see the module docs).
    pub fn start() -> Option<Slurm> {
        if !["sbatch", "slurmctld", "slurmd", "munged"]
            .iter()
            .all(|p| on_path(p))
        {
            if !ci() {
                return skip(
                    "Slurm is not installed (apt-get install slurm-wlm munge; under CI=true the test installs it)",
                );
            }
            install();
        }
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return skip("starting Slurm's daemons needs root");
        }
        match std::fs::read_to_string(CONF) {
            Ok(s) if s == config() => {}
            Ok(s) if !s.starts_with(MARK) => {
                return skip(&format!(
                    "{CONF} exists and was not written by this harness; not overwriting a real cluster's configuration"
                ))
            }
            _ => {
                std::fs::create_dir_all("/etc/slurm").unwrap();
                std::fs::write(CONF, config()).unwrap();
            }
        }
        for d in [
            "/var/spool/slurmd",
            "/var/spool/slurmctld",
            "/var/log/slurm",
        ] {
            std::fs::create_dir_all(d).unwrap();
        }
        let mut me = Slurm {
            started: Vec::new(),
            logs: tempfile::Builder::new()
                .prefix("corral-slurm")
                .tempdir()
                .unwrap(),
        };
        me.ensure_munge();
        if controller_up() {
            println!("reusing the Slurm controller already running with {CONF}");
        } else {
            me.spawn("slurmctld", "slurmctld", &["-D", "-c"], None);
            me.spawn("slurmd", "slurmd", &["-D", "-N", NODE], None);
        }
        me.wait_idle();
        Some(me)
    }

    fn spawn(&mut self, name: &'static str, program: &str, args: &[&str], user: Option<&str>) {
        let log = std::fs::File::create(self.logs.path().join(format!("{name}.log"))).unwrap();
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(u) = user {
            cmd.uid(id_of("-u", u)).gid(id_of("-g", u));
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {program}: {e}"));
        self.started.push((name, child));
    }

    fn ensure_munge(&mut self) {
        if munge_works() {
            return;
        }
        let key = Path::new("/etc/munge/munge.key");
        if !key.exists() {
            must(
                "mungekey",
                &["--create", "--keyfile", "/etc/munge/munge.key"],
            );
        }
        for d in ["/run/munge", "/var/lib/munge", "/var/log/munge"] {
            std::fs::create_dir_all(d).unwrap();
        }
        must(
            "chown",
            &[
                "munge:munge",
                "/etc/munge/munge.key",
                "/run/munge",
                "/var/lib/munge",
                "/var/log/munge",
            ],
        );
        must("chmod", &["0400", "/etc/munge/munge.key"]);
        self.spawn("munged", "munged", &["-F"], Some("munge"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !munge_works() {
            assert!(
                Instant::now() < deadline,
                "munged did not come up:\n{}",
                self.log("munged")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits (30 s at most) for the node to be idle; resumes it if an earlier run left it
    /// drained.
    fn wait_idle(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut resumed = false;
        loop {
            let state = node_state();
            if state.as_deref() == Some("idle") {
                return;
            }
            if !resumed && state.as_deref().is_some_and(|s| s.starts_with("drain")) {
                let _ = quiet(
                    "scontrol",
                    &["update", &format!("NodeName={NODE}"), "State=RESUME"],
                );
                resumed = true;
            }
            if Instant::now() > deadline {
                panic!(
                    "Slurm's node never became idle (state {state:?})\n--- slurmctld ---\n{}\n--- slurmd ---\n{}",
                    self.log("slurmctld"),
                    self.log("slurmd")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.logs.path().join(format!("{name}.log"))).unwrap_or_default()
    }
}

fn install() {
    super::apt_install(&["slurm-wlm", "munge"]);
}

fn munge_works() -> bool {
    Command::new("sh")
        .args(["-c", "munge -n | unmunge"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn controller_up() -> bool {
    quiet("scontrol", &["ping"]).is_some_and(|s| s.contains("is UP"))
}

/// The node's state as `sinfo` prints it (`idle`, `mixed`, `drained`, ...).
pub fn node_state() -> Option<String> {
    quiet("sinfo", &["--noheader", "--nodes", NODE, "--format=%T"])
        .map(|s| {
            s.trim()
                .trim_end_matches(['*', '~', '#', '$', '@', '^', '-', '!', '%'])
                .to_string()
        })
        .filter(|s| !s.is_empty())
}

impl Drop for Slurm {
    fn drop(&mut self) {
        if self.started.iter().any(|(n, _)| *n == "slurmctld") {
            // Every job of this controller is a test's: let none outlive it.
            let _ = quiet("scancel", &["--partition", PARTITION]);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline
                && quiet("squeue", &["--noheader", "--format=%i"])
                    .is_some_and(|s| !s.trim().is_empty())
            {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        while let Some((_, child)) = self.started.pop() {
            super::stop_child(child, Duration::from_secs(10));
        }
    }
}
