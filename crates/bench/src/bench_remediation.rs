//! `corral-bench remediation`: how long a node that turns unhealthy takes to be drained in
//! Slurm, and one that is healthy again to be resumed, under corral and under Slurm's own
//! health-check hook (the way Node Health Check runs), in one run on this machine's Slurm.
//!
//! Corral, `--rounds` times: a `corral coordinator` process (`[remediation]` with
//! `--drain-after` and `--resume-after`, `[schedulers.slurm]` served by a `login` agent
//! that hosts the real `slurm.wasm`) and a fake-GPU agent `gpu-a`, mapped onto the Slurm
//! node with `[schedulers.slurm.node_names]`, whose GPU reports XID 79 a second after it
//! starts. Measured (a) from the coordinator's health event `unhealthy` (its own
//! timestamp) to Slurm showing the node DRAIN with a `corral: ` reason, and (b), after a
//! "reboot" (the agent restarted with a fresh state dir and a healthy GPU, as
//! tests/remediation.rs does), from the coordinator's event `healthy` to Slurm showing
//! the node IDLE. The part beyond `drain_after` / `resume_after` is the reaction overhead:
//! the policy's tick, the plugin calls through the login agent, `scontrol`.
//!
//! The reference, `--rounds` times: Slurm's `HealthCheckProgram`, run by Slurm every
//! `HealthCheckInterval` (set to `drain_after`'s seconds), which is how LBNL NHC is
//! deployed. NHC itself is not packaged for Debian 12, so the harness installs a small
//! stand-in that does what NHC does for this fault: while a fault file exists it drains
//! the node (`State=DRAIN Reason="NHC: <fault>"`), leaving a drain someone else set
//! alone; once the file is gone it resumes the node only if the drain's reason starts with
//! `NHC:`. Measured (a) from the fault file's creation to DRAIN with an `NHC:` reason and
//! (b) from its removal to IDLE. Faults are created and removed at a random moment of the
//! check interval (as a real fault would be), not right after the check that acted.
//!
//! Slurm is read with `sinfo` every 50 ms; a time is taken when the first `sinfo` that
//! shows the new state returns, so every figure is late by at most one poll period and
//! one `sinfo` call (their median and maximum are printed).
//!
//! What the harness changes, and how it puts it back:
//! - It needs a running Slurm whose `slurm.conf` is the test harness's
//!   (`tests/support/slurm.rs`: first line [`HARNESS_MARK`]) and has no
//!   `HealthCheckProgram` of its own: the reference appends three lines to that file,
//!   between [`BLOCK_BEGIN`] and [`BLOCK_END`], and runs `scontrol reconfigure`; they are
//!   removed again (the file written back as it was, then `scontrol reconfigure`) when the
//!   reference ends, fails or is interrupted (Ctrl-C, SIGTERM), and on a panic. Only a
//!   SIGKILL leaves them; the next run removes a block it finds first, and the test
//!   harness rewrites a marked file that is not its own anyway.
//! - The node must be idle at the start. A node drained by an aborted run (reason
//!   `corral: ` or `NHC:`) is resumed at the start and at the end; any other drain is a
//!   person's, and the harness refuses to run rather than touch it.
//! - Every process it starts is its own child and is stopped at the end.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use serde_json::{json, Value};
use tokio::process::{Child, Command};

use crate::bench::{bench_pki, free_port, free_udp_port};
use crate::bench_jobs::run_ok;
use corral_coordinator::remediation::{PREFIX, TICK};
use corral_proto::api::{Event, EventKind, NodePlugins, NodeView};
use corral_transport::pki::Role;

#[derive(Args, Debug)]
pub struct RemediationArgs {
    /// Fault → drain → recovery → resume rounds, for corral and for the reference each.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Corral's `[remediation.drain_after] default`, and the reference's
    /// `HealthCheckInterval` (whole seconds, Slurm's unit).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    drain_after: Duration,
    /// Corral's `[remediation] resume_after` (the reference resumes at its first
    /// passing check).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    resume_after: Duration,
    /// Where slurm.wasm and slurm.toml are (default: $CORRAL_PLUGINS_DIR, else the
    /// `plugins` folder of the target dir this binary was built in).
    #[arg(long, env = "CORRAL_PLUGINS_DIR")]
    plugins_dir: Option<PathBuf>,
    /// The Slurm node the fake-GPU agent is mapped onto.
    #[arg(long, default_value = "localhost")]
    node: String,
    /// The slurm.conf the reference adds its health check to (the test harness's).
    #[arg(long, default_value = "/etc/slurm/slurm.conf")]
    slurm_conf: PathBuf,
}

/// The first line of a slurm.conf written by the test harness (tests/support/slurm.rs
/// `MARK`; a test pins the two together). Only such a file is changed.
const HARNESS_MARK: &str = "# Written by corral's test harness (tests/support/slurm.rs).";
/// The lines the reference adds to slurm.conf sit between these two.
const BLOCK_BEGIN: &str =
    "# corral-bench remediation: begin (the NHC stand-in; removed when the run ends)";
const BLOCK_END: &str = "# corral-bench remediation: end";

/// How often Slurm's view of the node is read.
const POLL: Duration = Duration::from_millis(50);
/// The reason prefix of the reference's drains (NHC's).
const NHC_PREFIX: &str = "NHC:";
/// The fault both methods report.
const FAULT: &str = "check_fake_gpu: GPU 0 XID 79 (needs a reboot)";

const LOGIN: &str = "login";
const GPU_NODE: &str = "gpu-a";

/// Wall-clock now, in seconds since the epoch: the coordinator's event times are on the
/// same clock (same host).
fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

// --- Slurm's view of the node -----------------------------------------------------------

/// One node as `sinfo --format=%T|%E` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SlurmNode {
    /// `idle`, `drained`, `draining`, ... without sinfo's flag suffixes (`*`, `~`, ...).
    state: String,
    /// `None` for sinfo's `none`.
    reason: Option<String>,
}

impl SlurmNode {
    fn parse(out: &str) -> Option<SlurmNode> {
        let line = out.lines().map(str::trim).find(|l| !l.is_empty())?;
        let (state, reason) = line.split_once('|').unwrap_or((line, ""));
        let state = state
            .trim()
            .trim_end_matches(['*', '~', '#', '$', '@', '^', '-', '!', '%'])
            .to_string();
        let reason = reason.trim();
        (!state.is_empty()).then(|| SlurmNode {
            state,
            reason: (!reason.is_empty() && reason != "none").then(|| reason.to_string()),
        })
    }

    fn idle(&self) -> bool {
        self.state == "idle"
    }

    /// Drained or draining with a reason that starts with `prefix`.
    fn drained_by(&self, prefix: &str) -> bool {
        self.state.starts_with("drain")
            && self
                .reason
                .as_deref()
                .is_some_and(|r| r.starts_with(prefix))
    }

    fn describe(&self) -> String {
        match &self.reason {
            Some(r) => format!("{} (reason {r:?})", self.state),
            None => self.state.clone(),
        }
    }
}

/// Reads the node from Slurm every [`POLL`], keeping how long each `sinfo` took.
struct Watch {
    node: String,
    calls: Vec<Duration>,
}

impl Watch {
    async fn read(&mut self) -> Result<SlurmNode> {
        let started = Instant::now();
        let out = run_ok(
            "sinfo",
            &["--noheader", "--nodes", &self.node, "--format=%T|%E"],
        )
        .await?;
        self.calls.push(started.elapsed());
        SlurmNode::parse(&out)
            .with_context(|| format!("sinfo does not know node {:?}: {out:?}", self.node))
    }

    /// Polls until `done`; returns when (epoch seconds) the first `sinfo` that showed it
    /// returned, and what it showed.
    async fn until(
        &mut self,
        what: &str,
        within: Duration,
        done: impl Fn(&SlurmNode) -> bool,
    ) -> Result<(f64, SlurmNode)> {
        let deadline = Instant::now() + within;
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let n = self.read().await?;
            if done(&n) {
                return Ok((now_s(), n));
            }
            if Instant::now() > deadline {
                bail!(
                    "Slurm node {} was not {what} within {within:?}: it is {}",
                    self.node,
                    n.describe()
                );
            }
        }
    }

    /// Leaves the node idle: a drain an earlier run of this harness left (`corral: `,
    /// `NHC:`) is lifted; any other state that is not idle within 30 s is an error.
    async fn settle(&mut self) -> Result<()> {
        let n = self.read().await?;
        if n.drained_by(PREFIX) || n.drained_by(NHC_PREFIX) {
            eprintln!(
                "resuming Slurm node {} ({}), left by this harness",
                self.node,
                n.describe()
            );
            run_ok(
                "scontrol",
                &["update", &format!("NodeName={}", self.node), "State=RESUME"],
            )
            .await?;
        } else if n.state.starts_with("drain") {
            bail!(
                "Slurm node {} is {}: a drain this harness did not set; resume it (scontrol update NodeName={} State=RESUME) if it may be used",
                self.node,
                n.describe(),
                self.node
            );
        }
        self.until("idle", Duration::from_secs(30), SlurmNode::idle)
            .await
            .map(|_| ())
    }
}

// --- Corral: a coordinator, a login agent with the plugin, a fake-GPU agent ------------

fn gpu(xids: &[u64]) -> Value {
    json!({ "gpus": [{
        "index": 0, "uuid": "GPU-fake-0", "name": "Fake H100",
        "pci_bus_id": "00000000:18:00.0", "temperature_celsius": 50,
        "pcie_link_width": 16, "pcie_link_width_max": 16, "pcie_replay_count": 0,
        "ecc_corrected_volatile": 0, "ecc_uncorrected_volatile": 0, "xids": xids
    }]})
}

/// Healthy for five samples (200 ms each), then XID 79, which holds until a reboot.
fn failing() -> Vec<Value> {
    let mut steps = vec![gpu(&[]); 5];
    steps.extend([gpu(&[79]), gpu(&[])]);
    steps
}

/// The host checks out of reach, so that a busy 2-core machine does not make a node
/// unhealthy by itself (the integration tests do the same).
const CALM_HOST: &str = "[health]\nload_per_core_warn = 1000.0\nload_per_core_fail = 1000.0\ndisk_warn_percent = 100\ndisk_fail_percent = 100\nmemory_available_warn_percent = 0\nmemory_available_fail_percent = 0\n";

/// SIGTERM, up to `grace` to exit, then SIGKILL.
async fn stop(child: &mut Child, grace: Duration) {
    if let Some(pid) = child.id() {
        // SAFETY: signals a child of this process that has not been reaped.
        unsafe {
            libc::kill(pid as i32, libc::SIGTERM);
        }
        if tokio::time::timeout(grace, child.wait()).await.is_ok() {
            return;
        }
    }
    let _ = child.kill().await;
}

/// The last `n` lines of a log file.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Starts `corral agent` as `name` with its config and log in `dir` (certificates in
/// `dir/tls`); `extra` goes into `[agent]` and may open further sections.
fn spawn_agent(dir: &Path, exe: &Path, quic: u16, name: &str, extra: &str) -> Result<Child> {
    let cfg = dir.join(format!("agent-{name}.toml"));
    let tls = dir.join("tls");
    std::fs::write(
        &cfg,
        format!(
            "[agent]\nname = \"{name}\"\ncoordinator = \"127.0.0.1:{quic}\"\nserver_name = \"localhost\"\nreconnect_base = \"100ms\"\nreconnect_cap = \"1s\"\n{extra}\n[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n{CALM_HOST}",
            tls.join("ca.pem").display().to_string(),
            tls.join(format!("{name}.pem")).display().to_string(),
            tls.join(format!("{name}.key")).display().to_string(),
        ),
    )?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("agent-{name}.log")))?;
    Command::new(exe)
        .args(["agent", "--config"])
        .arg(&cfg)
        .env("CORRAL_LOG", "info,quinn=warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting agent {name}"))
}

struct Corral {
    dir: tempfile::TempDir,
    exe: PathBuf,
    quic: u16,
    http: reqwest::Client,
    coordinator: Child,
    login: Child,
    gpu: Option<Child>,
    /// The newest event seen, for `events?since=`.
    last_event: u64,
}

impl Corral {
    async fn start(a: &RemediationArgs, plugins_dir: &Path) -> Result<Corral> {
        let dir = tempfile::Builder::new().prefix("corral-remed").tempdir()?;
        let tls = dir.path().join("tls");
        let ca = bench_pki(&tls)?;
        for n in [LOGIN, GPU_NODE] {
            ca.issue_to_dir(n, Role::Agent, &[], 2, &tls)?;
        }
        let quic = free_udp_port()?;
        let socket = dir.path().join("api.sock");
        let cfg = dir.path().join("coordinator.toml");
        std::fs::write(
            &cfg,
            format!(
                "[coordinator]\nlisten = \"127.0.0.1:{quic}\"\nstate_dir = \"state\"\n\
                 [api]\nlisten = \"127.0.0.1:{}\"\nsocket = \"api.sock\"\n\
                 [tls]\nca = \"tls/ca.pem\"\ncert = \"tls/coordinator.pem\"\nkey = \"tls/coordinator.key\"\n\
                 [remediation]\nresume_after = \"{}\"\ndrain_interval = \"0s\"\nretry_after = \"200ms\"\n\
                 [remediation.drain_after]\ndefault = \"{}\"\n\
                 [schedulers.slurm]\nnodes = [\"{LOGIN}\"]\nmembers = [\"{GPU_NODE}\"]\n\
                 [schedulers.slurm.node_names]\n{GPU_NODE} = {:?}\n",
                free_port()?,
                humantime::format_duration(a.resume_after),
                humantime::format_duration(a.drain_after),
                a.node,
            ),
        )?;
        let exe = crate::bench::corral_exe()?;
        let log = std::fs::File::create(dir.path().join("coordinator.log"))?;
        let coordinator = Command::new(&exe)
            .args(["coordinator", "--config"])
            .arg(&cfg)
            .env("CORRAL_LOG", "info,quinn=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting the coordinator")?;
        // reqwest wants a process-wide rustls provider even for plain HTTP.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .unix_socket(socket.clone())
            .timeout(Duration::from_secs(10))
            .build()
            .context("building the API client")?;
        crate::bench::local_api_when_up(&socket).await?;
        let plugins = format!(
            "[plugins]\ndir = {:?}\nenable = [\"slurm\"]\ncache_dir = {:?}\nservice_user = {:?}\nmin_job_uid = 0\nallow_root_jobs = true\n",
            plugins_dir.display().to_string(),
            dir.path().join("cache").display().to_string(),
            corral_sandbox::identity::User::current()?.name
        );
        let login = spawn_agent(dir.path(), &exe, quic, LOGIN, &plugins)?;
        let c = Corral {
            exe,
            quic,
            http,
            coordinator,
            login,
            gpu: None,
            last_event: 0,
            dir,
        };
        c.wait_plugin().await?;
        Ok(c)
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The fake-GPU agent, booted afresh (a new state dir: its GPU state is a new
    /// boot's), its GPU following `steps` (one per 200 ms sample, the last repeating).
    async fn boot_gpu_node(&mut self, steps: Vec<Value>) -> Result<()> {
        if let Some(mut old) = self.gpu.take() {
            stop(&mut old, Duration::from_secs(15)).await;
        }
        let state = self.path("state-gpu");
        if state.exists() {
            std::fs::remove_dir_all(&state)
                .with_context(|| format!("removing {}", state.display()))?;
        }
        let script = self.path("gpus.json");
        std::fs::write(
            &script,
            json!({"steps": steps, "repeat_last": true}).to_string(),
        )?;
        self.gpu = Some(spawn_agent(
            self.dir.path(),
            &self.exe,
            self.quic,
            GPU_NODE,
            &format!(
                "sample_interval = \"200ms\"\nreport_interval = \"1s\"\nstate_dir = {:?}\n[gpu]\nbackend = \"fake\"\nfake_script = {:?}\n",
                state.display().to_string(),
                script.display().to_string()
            ),
        )?);
        Ok(())
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.http
            .get(format!("http://localhost{path}"))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .with_context(|| format!("GET {path} on the coordinator"))?
            .json()
            .await
            .with_context(|| format!("reading the answer to GET {path}"))
    }

    async fn wait_plugin(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let hosts: Vec<NodePlugins> = self.get("/api/v1/plugins").await?;
            if hosts.iter().any(|h| {
                h.node == LOGIN
                    && h.connected
                    && h.not_authorized.is_empty()
                    && h.loaded.iter().any(|p| p.info.name == "slurm")
            }) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the login agent did not announce the slurm plugin within 180s: {hosts:?}\n--- its log ---\n{}",
                    tail(&self.path("agent-login.log"), 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The first health event of `gpu-a` to `to` after the newest one seen.
    async fn health_event(&mut self, to: &str, within: Duration) -> Result<Event> {
        let deadline = Instant::now() + within;
        loop {
            let events: Vec<Event> = self
                .get(&format!(
                    "/api/v1/events?since={}&node={GPU_NODE}&limit=1000",
                    self.last_event
                ))
                .await?;
            for e in events {
                self.last_event = e.id;
                if e.kind == EventKind::Health && e.to == to {
                    return Ok(e);
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "{GPU_NODE} did not turn {to} within {within:?}\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn node(&self) -> Result<NodeView> {
        self.get(&format!("/api/v1/nodes/{GPU_NODE}")).await
    }

    async fn uncordoned(&self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        while self.node().await?.cordon.is_some() {
            if Instant::now() > deadline {
                bail!(
                    "{GPU_NODE} is still cordoned {within:?} after Slurm resumed it: {:?}\n{}",
                    self.node().await?.cordon,
                    self.logs()
                );
            }
            tokio::time::sleep(POLL).await;
        }
        Ok(())
    }

    fn logs(&self) -> String {
        format!(
            "--- coordinator log (last lines) ---\n{}\n--- {GPU_NODE} agent log (last lines) ---\n{}",
            tail(&self.path("coordinator.log"), 30),
            tail(&self.path(&format!("agent-{GPU_NODE}.log")), 15)
        )
    }

    /// One fault and recovery: (unhealthy → DRAIN, healthy → IDLE), seconds; and the
    /// reason Slurm showed.
    async fn round(&mut self, watch: &mut Watch, a: &RemediationArgs) -> Result<Round> {
        self.boot_gpu_node(failing()).await?;
        let bad = self
            .health_event("unhealthy", Duration::from_secs(60))
            .await?;
        let (drained, seen) = watch
            .until(
                "drained by corral",
                a.drain_after + Duration::from_secs(60),
                |n| n.drained_by(PREFIX),
            )
            .await
            .map_err(|e| e.context(self.logs()))?;
        // The reboot: XID 79 clears only with one.
        self.boot_gpu_node(vec![gpu(&[])]).await?;
        let good = self
            .health_event("healthy", Duration::from_secs(60))
            .await?;
        let (idle, _) = watch
            .until(
                "idle again",
                a.resume_after + Duration::from_secs(60),
                SlurmNode::idle,
            )
            .await
            .map_err(|e| e.context(self.logs()))?;
        self.uncordoned(Duration::from_secs(10)).await?;
        Ok(Round {
            drain: drained - bad.at_ms as f64 / 1000.0,
            resume: idle - good.at_ms as f64 / 1000.0,
            drain_acted: None,
            resume_acted: None,
            reason: seen.reason.unwrap_or_default(),
        })
    }

    async fn stop(mut self) {
        if let Some(mut g) = self.gpu.take() {
            stop(&mut g, Duration::from_secs(15)).await;
        }
        stop(&mut self.login, Duration::from_secs(15)).await;
        stop(&mut self.coordinator, Duration::from_secs(15)).await;
    }
}

/// One round's figures, seconds.
#[derive(Debug, Clone)]
struct Round {
    /// Fault seen (corral: the coordinator's `unhealthy` event; reference: the fault
    /// file) → Slurm DRAIN.
    drain: f64,
    /// Healthy again (corral: the `healthy` event; reference: the file removed) → IDLE.
    resume: f64,
    /// Reference only: from the start of the check run that drained / resumed.
    drain_acted: Option<f64>,
    resume_acted: Option<f64>,
    reason: String,
}

// --- The reference: Slurm's HealthCheckProgram with an NHC stand-in ---------------------

/// `s` as one single-quoted shell word.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The stand-in for NHC: a POSIX shell script for `HealthCheckProgram`. `path` is its
/// `PATH` (where it finds `sinfo` and `scontrol`); every run appends its start time
/// (epoch seconds) to `runs`.
fn stand_in(node: &str, fault: &Path, runs: &Path, path: &str) -> String {
    let q = |p: &Path| sh_quote(&p.display().to_string());
    format!(
        r#"#!/bin/sh
# Written by corral-bench remediation: a stand-in for LBNL Node Health Check (NHC),
# which is not packaged for Debian 12. Run by Slurm as HealthCheckProgram, it does what
# NHC does for one failing check: drain the node with reason "NHC: <what failed>" while
# the check fails (here: while the fault file exists), leave a drain someone else set
# alone, and resume the node once the check passes, only if the drain's reason starts
# with "NHC:".
PATH={path}
export PATH
node={node}
fault={fault}
date +%s.%N >> {runs}
line=$(sinfo --noheader --nodes="$node" --format='%T|%E') || exit 0
state=${{line%%|*}}
reason=${{line#*|}}
if [ -e "$fault" ]; then
    case "$state" in
        drain*) exit 0 ;;
    esac
    exec scontrol update NodeName="$node" State=DRAIN Reason="NHC: $(head -c 200 "$fault" | tr -d '\n')"
fi
case "$state" in
    drain*)
        case "$reason" in
            "NHC:"*) exec scontrol update NodeName="$node" State=RESUME ;;
        esac
        ;;
esac
exit 0
"#,
        path = sh_quote(path),
        node = sh_quote(node),
        fault = q(fault),
        runs = q(runs),
    )
}

/// `conf` with the reference's block appended.
fn with_health_check(conf: &str, program: &Path, interval_s: u64) -> String {
    let mut out = conf.to_string();
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&format!(
        "{BLOCK_BEGIN}\nHealthCheckProgram={}\nHealthCheckInterval={interval_s}\nHealthCheckNodeState=ANY\n{BLOCK_END}\n",
        program.display()
    ));
    out
}

/// `conf` without any block of the reference's (a killed run's), or `None` when it has
/// none.
fn without_health_check(conf: &str) -> Option<String> {
    let mut out = String::with_capacity(conf.len());
    let mut inside = false;
    let mut found = false;
    for line in conf.split_inclusive('\n') {
        let l = line.trim_end();
        if l == BLOCK_BEGIN {
            inside = true;
            found = true;
        } else if inside && l == BLOCK_END {
            inside = false;
        } else if !inside {
            out.push_str(line);
        }
    }
    found.then_some(out)
}

/// The setting `key` in slurm.conf text (outside the reference's block), if set.
fn conf_setting<'a>(conf: &'a str, key: &str) -> Option<&'a str> {
    conf.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case(key))
        .map(|(_, v)| v.trim())
}

/// Writes `text` to `path` through a sibling temp file and a rename (never a half file).
fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("corral-bench.tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    let perms = std::fs::metadata(path)
        .map(|m| m.permissions())
        .with_context(|| format!("reading {}", path.display()))?;
    std::fs::set_permissions(&tmp, perms)?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}

/// The controller's `HealthCheckProgram` (`scontrol show config`), `None` when unset.
fn live_health_check() -> Result<Option<String>> {
    let out = std::process::Command::new("scontrol")
        .args(["show", "config"])
        .stdin(Stdio::null())
        .output()
        .context("running scontrol show config")?;
    ensure!(
        out.status.success(),
        "scontrol show config failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == "HealthCheckProgram")
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty() && v != "(null)"))
}

/// `scontrol reconfigure`, then up to 15 s for the controller to show
/// `HealthCheckProgram` as `want`.
fn reconfigure(want: Option<&str>) -> Result<()> {
    let out = std::process::Command::new("scontrol")
        .arg("reconfigure")
        .stdin(Stdio::null())
        .output()
        .context("running scontrol reconfigure")?;
    ensure!(
        out.status.success(),
        "scontrol reconfigure failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let live = live_health_check()?;
        if live.as_deref() == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("after scontrol reconfigure the controller shows HealthCheckProgram {live:?}, not {want:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// slurm.conf with the reference's health check in force; written back as it was (and
/// the controller reconfigured) by [`Configured::restore`] or, on any other way out, on
/// drop.
struct Configured {
    path: PathBuf,
    original: String,
    in_force: bool,
}

impl Configured {
    fn apply(path: &Path, original: String, program: &Path, interval_s: u64) -> Result<Self> {
        write_atomically(path, &with_health_check(&original, program, interval_s))?;
        // From here on, drop restores the file, whatever fails next.
        let me = Configured {
            path: path.to_path_buf(),
            original,
            in_force: true,
        };
        reconfigure(Some(&program.display().to_string()))?;
        Ok(me)
    }

    fn put_back(&mut self) -> Result<()> {
        if !self.in_force {
            return Ok(());
        }
        self.in_force = false;
        write_atomically(&self.path, &self.original)?;
        reconfigure(None)
    }

    fn restore(mut self) -> Result<()> {
        self.put_back()
    }
}

impl Drop for Configured {
    fn drop(&mut self) {
        if let Err(e) = self.put_back() {
            eprintln!(
                "corral-bench: could not restore {} (remove the lines between {BLOCK_BEGIN:?} and {BLOCK_END:?}, then run `scontrol reconfigure`): {e:#}",
                self.path.display()
            );
        }
    }
}

/// Start times (epoch seconds) of the check program's runs, oldest first.
fn runs_of(log: &str) -> Vec<f64> {
    let mut v: Vec<f64> = log.lines().filter_map(|l| l.trim().parse().ok()).collect();
    v.sort_by(f64::total_cmp);
    v
}

/// How long after the start of the latest run at or before `at` the state was seen.
fn after_latest_run(runs: &[f64], at: f64) -> Option<f64> {
    runs.iter().rev().find(|&&r| r <= at).map(|r| at - r)
}

async fn random_phase(interval: Duration) {
    tokio::time::sleep(interval.mul_f64(rand::random::<f64>())).await;
}

async fn reference(
    a: &RemediationArgs,
    watch: &mut Watch,
    original: &str,
) -> Result<(Vec<Round>, Vec<f64>)> {
    let interval = a.drain_after;
    let dir = tempfile::Builder::new().prefix("corral-nhc").tempdir()?;
    let fault = dir.path().join("fault");
    let runs = dir.path().join("runs");
    let program = dir.path().join("nhc-stand-in.sh");
    let path = std::env::var("PATH").unwrap_or_default() + ":/usr/sbin:/usr/bin:/sbin:/bin";
    std::fs::write(&program, stand_in(&a.node, &fault, &runs, &path))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755))?;
    }
    let conf = Configured::apply(
        &a.slurm_conf,
        original.to_string(),
        &program,
        interval.as_secs(),
    )?;
    let within = interval * 2 + Duration::from_secs(30);
    let mut rounds = vec![];
    for i in 0..a.rounds {
        random_phase(interval).await;
        std::fs::write(&fault, FAULT)?;
        let t0 = now_s();
        let (drained, seen) = watch
            .until("drained by the health check", within, |n| {
                n.drained_by(NHC_PREFIX)
            })
            .await?;
        random_phase(interval).await;
        std::fs::remove_file(&fault)?;
        let t1 = now_s();
        let (idle, _) = watch.until("idle again", within, SlurmNode::idle).await?;
        let ran = runs_of(&std::fs::read_to_string(&runs).unwrap_or_default());
        let r = Round {
            drain: drained - t0,
            resume: idle - t1,
            drain_acted: after_latest_run(&ran, drained),
            resume_acted: after_latest_run(&ran, idle),
            reason: seen.reason.unwrap_or_default(),
        };
        eprintln!(
            "reference round {}: fault → DRAIN {:.3} s, gone → IDLE {:.3} s",
            i + 1,
            r.drain,
            r.resume
        );
        rounds.push(r);
    }
    conf.restore()?;
    let ran = runs_of(&std::fs::read_to_string(&runs).unwrap_or_default());
    let gaps = ran.windows(2).map(|w| w[1] - w[0]).collect();
    Ok((rounds, gaps))
}

// --- The run ---------------------------------------------------------------------------

/// Min, median and max.
pub(crate) fn spread(v: &[f64]) -> Option<(f64, f64, f64)> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = match n {
        0 => return None,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    };
    Some((v[0], median, v[n - 1]))
}

fn row(what: &str, v: &[f64]) -> String {
    match spread(v) {
        Some((min, median, max)) => format!(
            "{what:<48} {min:8.3} s {median:8.3} s {max:8.3} s   (n={})",
            v.len()
        ),
        None => format!("{what:<48} {:>8}   {:>8}   {:>8}     (n=0)", "-", "-", "-"),
    }
}

/// Resolves when the harness is asked to stop (Ctrl-C or SIGTERM).
async fn interrupted() -> Result<&'static str> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => { r?; Ok("interrupted (Ctrl-C)") }
        _ = term.recv() => Ok("stopped (SIGTERM)"),
    }
}

pub async fn run(a: RemediationArgs) -> Result<()> {
    ensure!(a.rounds > 0, "--rounds must be at least 1");
    ensure!(
        a.drain_after >= Duration::from_secs(1) && a.drain_after.subsec_nanos() == 0,
        "--drain-after must be whole seconds, at least 1s: it is also the reference's HealthCheckInterval, which Slurm takes in seconds"
    );
    let plugins_dir = match a.plugins_dir.clone() {
        Some(d) => d,
        None => crate::bench_jobs::default_plugins_dir()?,
    };
    ensure!(
        plugins_dir.join("slurm.wasm").is_file(),
        "{} not found; build the plugins with `cargo xtask plugins --out target/plugins` or pass --plugins-dir",
        plugins_dir.join("slurm.wasm").display()
    );
    let version = run_ok("sinfo", &["--version"]).await.context(
        "`corral-bench remediation` needs a running Slurm on this machine (sinfo must answer)",
    )?;
    let text = std::fs::read_to_string(&a.slurm_conf)
        .with_context(|| format!("reading {}", a.slurm_conf.display()))?;
    let original = match without_health_check(&text) {
        Some(cleaned) => {
            eprintln!(
                "removing the health check an interrupted run left in {}",
                a.slurm_conf.display()
            );
            write_atomically(&a.slurm_conf, &cleaned)?;
            reconfigure(None)?;
            cleaned
        }
        None => text,
    };
    ensure!(
        original.starts_with(HARNESS_MARK),
        "{} was not written by the test harness (tests/support/slurm.rs); the reference changes slurm.conf, which this harness does only on that single-node Slurm",
        a.slurm_conf.display()
    );
    if let Some(p) = conf_setting(&original, "HealthCheckProgram") {
        bail!(
            "{} already sets HealthCheckProgram={p}; the reference would replace it",
            a.slurm_conf.display()
        );
    }

    let mut watch = Watch {
        node: a.node.clone(),
        calls: vec![],
    };
    watch.settle().await?;
    let measured = tokio::select! {
        r = measure(&a, &plugins_dir, &mut watch, &original) => r,
        why = interrupted() => Err(match why {
            Ok(why) => anyhow::anyhow!(why),
            Err(e) => e.context("waiting for signals"),
        }),
    };
    // Whatever happened: the children are gone (killed on drop), slurm.conf is back;
    // a drain of ours left behind is lifted.
    let settled = watch.settle().await;
    let (corral, reference, gaps) = measured?;
    settled?;

    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let secs = |d: Duration| humantime::format_duration(d).to_string();
    let calls: Vec<f64> = watch.calls.iter().map(Duration::as_secs_f64).collect();
    let (_, call_median, call_max) = spread(&calls).unwrap_or_default();
    println!(
        "## bench remediation: Slurm node {} ({}), {} rounds each; load average {}, {} CPUs",
        a.node,
        version.trim(),
        a.rounds,
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "corral:    drain_after {}, resume_after {}, policy tick {} ms; coordinator, login agent with slurm.wasm, fake-GPU agent (XID 79)",
        secs(a.drain_after),
        secs(a.resume_after),
        TICK.as_millis()
    );
    println!(
        "reference: Slurm HealthCheckProgram, HealthCheckInterval={} (NHC's docs suggest 300); an NHC stand-in, since LBNL NHC is not packaged for Debian 12",
        a.drain_after.as_secs()
    );
    println!(
        "Slurm read with sinfo every {} ms (one call: median {:.1} ms, max {:.1} ms): each time is late by at most one poll and one call",
        POLL.as_millis(),
        call_median * 1000.0,
        call_max * 1000.0
    );
    println!("{:<48} {:>10} {:>10} {:>10}", "", "min", "median", "max");
    let pick = |v: &[Round], f: fn(&Round) -> Option<f64>| -> Vec<f64> {
        v.iter().filter_map(f).collect()
    };
    let drain_after = a.drain_after.as_secs_f64();
    let resume_after = a.resume_after.as_secs_f64();
    let beyond = |v: &[Round], f: fn(&Round) -> f64, d: f64| -> Vec<f64> {
        v.iter().map(|r| f(r) - d).collect()
    };
    let rows: [(&str, Vec<f64>); 8] = [
        (
            "corral: unhealthy → Slurm DRAIN",
            pick(&corral, |r| Some(r.drain)),
        ),
        (
            "  beyond drain_after (reaction)",
            beyond(&corral, |r| r.drain, drain_after),
        ),
        (
            "corral: healthy again → Slurm IDLE",
            pick(&corral, |r| Some(r.resume)),
        ),
        (
            "  beyond resume_after (reaction)",
            beyond(&corral, |r| r.resume, resume_after),
        ),
        (
            "reference: fault file created → Slurm DRAIN",
            pick(&reference, |r| Some(r.drain)),
        ),
        (
            "  after the start of the check run that drained",
            pick(&reference, |r| r.drain_acted),
        ),
        (
            "reference: fault file removed → Slurm IDLE",
            pick(&reference, |r| Some(r.resume)),
        ),
        (
            "  after the start of the check run that resumed",
            pick(&reference, |r| r.resume_acted),
        ),
    ];
    for (what, values) in &rows {
        println!("{}", row(what, values));
    }
    println!("{}", row("reference: time between check runs", &gaps));
    if let (Some(c), Some(r)) = (corral.first(), reference.first()) {
        println!("Slurm's reasons: {:?} / {:?}", c.reason, r.reason);
    }
    Ok(())
}

async fn measure(
    a: &RemediationArgs,
    plugins_dir: &Path,
    watch: &mut Watch,
    original: &str,
) -> Result<(Vec<Round>, Vec<Round>, Vec<f64>)> {
    eprintln!("corral: starting a coordinator and a login agent with slurm.wasm");
    let mut c = Corral::start(a, plugins_dir).await?;
    let mut corral = vec![];
    for i in 0..a.rounds {
        let r = c.round(watch, a).await?;
        eprintln!(
            "corral round {}: unhealthy → DRAIN {:.3} s, healthy → IDLE {:.3} s",
            i + 1,
            r.drain,
            r.resume
        );
        corral.push(r);
    }
    c.stop().await;
    eprintln!(
        "reference: HealthCheckProgram every {}s",
        a.drain_after.as_secs()
    );
    let (reference, gaps) = reference(a, watch, original).await?;
    Ok((corral, reference, gaps))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mark_is_the_test_harness_one() {
        assert_eq!(HARNESS_MARK, corral_test_support::slurm::MARK);
    }

    #[test]
    fn sinfo_lines_read_as_state_and_reason() {
        assert_eq!(
            SlurmNode::parse("drained*|corral: gpu 0 XID 79\n"),
            Some(SlurmNode {
                state: "drained".into(),
                reason: Some("corral: gpu 0 XID 79".into())
            })
        );
        let idle = SlurmNode::parse("idle|none").unwrap();
        assert!(idle.idle() && idle.reason.is_none());
        let nhc = SlurmNode::parse("draining|NHC: check_fake_gpu").unwrap();
        assert!(nhc.drained_by(NHC_PREFIX) && !nhc.drained_by(PREFIX));
        assert!(!SlurmNode::parse("idle|NHC: stale")
            .unwrap()
            .drained_by(NHC_PREFIX));
        assert_eq!(SlurmNode::parse("\n"), None);
    }

    #[test]
    fn the_health_check_block_comes_out_as_it_went_in() {
        let conf = format!("{HARNESS_MARK}\nClusterName=corraltest\nMinJobAge=2\n");
        let with = with_health_check(&conf, Path::new("/tmp/x/nhc.sh"), 5);
        assert!(with.contains("\nHealthCheckProgram=/tmp/x/nhc.sh\nHealthCheckInterval=5\n"));
        assert_eq!(without_health_check(&with).as_deref(), Some(conf.as_str()));
        assert_eq!(without_health_check(&conf), None);
        // A file without a final newline gains one, and loses only the block.
        let bare = conf.trim_end();
        let back = without_health_check(&with_health_check(bare, Path::new("/p"), 1));
        assert_eq!(back.as_deref(), Some(conf.as_str()));
    }

    #[test]
    fn a_health_check_the_cluster_already_has_is_found() {
        let conf = "ClusterName=c\n# HealthCheckProgram=/commented\n healthcheckprogram = /usr/sbin/nhc # LBNL\n";
        assert_eq!(
            conf_setting(conf, "HealthCheckProgram"),
            Some("/usr/sbin/nhc")
        );
        assert_eq!(conf_setting("ClusterName=c\n", "HealthCheckProgram"), None);
    }

    #[test]
    fn spread_is_min_median_max() {
        assert_eq!(spread(&[3.0, 1.0, 2.0]), Some((1.0, 2.0, 3.0)));
        assert_eq!(spread(&[4.0, 1.0, 2.0, 3.0]), Some((1.0, 2.5, 4.0)));
        assert_eq!(spread(&[]), None);
    }

    #[test]
    fn the_acting_run_is_the_latest_before_the_change_was_seen() {
        let runs = runs_of("12.5\n\n7.5\n17.5\n");
        assert_eq!(runs, [7.5, 12.5, 17.5]);
        assert_eq!(after_latest_run(&runs, 13.0), Some(0.5));
        assert_eq!(after_latest_run(&runs, 7.0), None);
    }

    /// The stand-in run against fake `sinfo` and `scontrol`: what it asks Slurm to do.
    fn run_stand_in(state: &str, fault: bool) -> (String, usize) {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let calls = dir.path().join("calls");
        let fake = |name: &str, body: &str| {
            use std::os::unix::fs::PermissionsExt;
            let p = bin.join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        fake("sinfo", &format!("echo {}", sh_quote(state)));
        fake(
            "scontrol",
            &format!(
                "for a in \"$@\"; do printf '%s;' \"$a\"; done >> {}",
                sh_quote(&calls.display().to_string())
            ),
        );
        let fault_file = dir.path().join("fault");
        if fault {
            std::fs::write(&fault_file, FAULT).unwrap();
        }
        let runs = dir.path().join("it's runs");
        let path = format!("{}:/usr/bin:/bin", bin.display());
        let script = dir.path().join("nhc.sh");
        std::fs::write(&script, stand_in("node-1", &fault_file, &runs, &path)).unwrap();
        let status = std::process::Command::new("/bin/sh")
            .arg(&script)
            .env("PATH", "/nonexistent")
            .status()
            .unwrap();
        assert!(status.success());
        let ran = runs_of(&std::fs::read_to_string(&runs).unwrap()).len();
        (std::fs::read_to_string(&calls).unwrap_or_default(), ran)
    }

    #[test]
    fn the_stand_in_drains_with_an_nhc_reason_while_the_fault_file_exists() {
        let (calls, ran) = run_stand_in("idle|none", true);
        assert_eq!(
            calls,
            format!("update;NodeName=node-1;State=DRAIN;Reason=NHC: {FAULT};")
        );
        assert_eq!(ran, 1, "every run is logged");
        // Already drained (by it or by a person): nothing more.
        assert_eq!(run_stand_in("drained|maint", true).0, "");
        assert_eq!(run_stand_in(&format!("drained|NHC: {FAULT}"), true).0, "");
    }

    #[test]
    fn the_stand_in_resumes_only_a_drain_whose_reason_starts_with_nhc() {
        assert_eq!(
            run_stand_in("drained*|NHC: check_fake_gpu", false).0,
            "update;NodeName=node-1;State=RESUME;"
        );
        assert_eq!(run_stand_in("drained|maint by alice", false).0, "");
        assert_eq!(run_stand_in("drained|corral: gpu 0 XID 79", false).0, "");
        assert_eq!(run_stand_in("idle|none", false).0, "");
    }
}
