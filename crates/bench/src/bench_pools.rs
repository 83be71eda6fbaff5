//! `corral-bench pools`: how long a pool takes to replace a node whose agent died, phase
//! by phase, and how long Ray's autoscaler takes to replace a dead worker, in one run on
//! this machine.
//!
//! Corral, `--rounds` times: a `corral coordinator` process with `[pools.lab]` (the
//! `command` provider plugin, `min` = `--nodes`, `replace_after` = `--replace-after`,
//! `list_interval` 2 s) and `[coordinator] down_after` = `--down-after`, set up as
//! tests/pools.rs does: the pool's programs are a script (`lab-vm`) that "boots a
//! machine" by running the pool's user data detached in its own session, and the user
//! data runs `corral join` with the node's single-use token and then `exec corral
//! agent`. No certificate is issued by hand: every node makes its key and gets its
//! certificate at join. Once the pool has `--nodes` ready members, the harness
//! `kill -9`s one member's agent and measures, from the kill (this host's clock, the
//! coordinator's own timestamps for its events):
//! 1. `down`: the node's liveness event (after `disconnected`: three missed 1 s beats);
//! 2. the pool's decision to replace it (pool event `replace`), `replace_after` later;
//! 3. its delete done (`delete`: the provider's `delete`, its record, its certificate
//!    revoked);
//! 4. the new node's create returned (`create`);
//! 5. its join token redeemed (`token`: the coordinator signed its certificate request);
//! 6. it connected: the registry's own liveness event for the new node (`ready`, "new
//!    node, connected from ..."). The pool's `joined` event says the same later: the
//!    policy records it at its next tick, so it is shown apart, as the tick's lag;
//! 7. it is `ready` with its first report: the first `GET /api/v1/nodes/NEW` (polled
//!    every [`POLL`], as are the events) that shows `liveness == ready` and
//!    `last_report_ms`.
//!
//! Where the time goes, measured beside the phases: the disconnect detection (three
//! missed beats) and `down_after` (counted from the last beat, so with the defaults it
//! ends almost with the disconnect), `replace_after`, the policy's [`TICK`] (the
//! decision waits for a tick; a delete that finishes wakes the policy at once, a
//! connection does not), the provider calls (their own durations, from the pool's
//! actions), `corral join` (timestamps the user data writes before and after it: key
//! generation, CSR, the HTTP round trip with the signing, the files), the agent's start
//! and QUIC handshake (join done → the registry's own `ready` event for the new node),
//! and its first report.
//!
//! The reference, in the same run after corral's rounds: Ray's autoscaler (v2) replacing
//! a dead worker with its fake multi-node provider, started from the Ray venv the tests
//! use (`--ray-venv`). A Python driver ([`DRIVER`], written to a temp dir and run with
//! the venv's Python) starts a head with the cluster config of Ray's own test utility
//! `ray.cluster_utils.AutoscalingCluster(autoscaler_v2=True)` and one worker type at
//! `min_workers = max_workers = --nodes`, then `--rounds` times SIGKILLs one worker's
//! raylet and records when GCS marks the node dead (`ray.nodes()`, polled every
//! [`POLL`]) and when a replacement is alive, plus the autoscaler's own log times
//! (giving up on the node, starting and finishing the replacement's create). It builds
//! that config itself rather than calling `AutoscalingCluster.start`, which runs
//! `ray stop --force` (every Ray process on the machine, anyone's) and needs the
//! provider's `example.yaml`, which the pip wheel does not ship; autoscaler v1 is not
//! used because with this provider it never replaces a dead worker (the node keeps the
//! launch's `uninitialized` status tag, and v1 only terminates `up-to-date` nodes that
//! stopped heartbeating: seen here, nothing replaced in 300 s). The GCS health-check
//! settings that govern the detection are printed as Ray reports them. Without a venv
//! the reference is skipped, saying how to make one.
//!
//! What the harness changes: nothing outside its temp dirs. Every process it starts is
//! its own child or in a session it started: the coordinator (killed on drop), each
//! "machine" (a session of its own; what is left of them is killed by process group at
//! the end, on an error too), and the Ray driver, whose head leads a session that the
//! driver kills when it ends and the harness kills again if anything of it is left. It
//! uses loopback ports it asks the kernel for; Ray's fake nodes listen on the host's
//! address.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use serde_json::Value;
use tokio::process::{Child, Command};

use crate::bench::{bench_pki, free_port, free_udp_port};
use crate::bench_remediation::spread;
use corral_coordinator::pools::TICK;
use corral_proto::api::{Event, EventKind, NodeView};
use corral_proto::model::Liveness;
use corral_proto::pool::{PoolNodePhase, PoolView};

/// Where the test harness keeps its Ray venv when it runs as root (scripts/test.sh).
const DEFAULT_RAY_VENV: &str = "/var/cache/corral-test/ray-2.60.0";

#[derive(Args, Debug)]
pub struct PoolsArgs {
    /// Kill → replaced rounds, for corral and for the reference each.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// The pool's `min` (and the reference's workers).
    #[arg(long, default_value_t = 3)]
    nodes: u32,
    /// The coordinator's `[coordinator] down_after`.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    down_after: Duration,
    /// The pool's `replace_after`.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    replace_after: Duration,
    /// Where command.wasm and command.toml are (default: $CORRAL_PLUGINS_DIR, else the
    /// `plugins` folder of the target dir this binary was built in).
    #[arg(long, env = "CORRAL_PLUGINS_DIR")]
    plugins_dir: Option<PathBuf>,
    /// The venv with `ray[default]` for the reference.
    #[arg(long, env = "CORRAL_RAY_VENV", default_value = DEFAULT_RAY_VENV)]
    ray_venv: PathBuf,
    /// Measure corral only.
    #[arg(long)]
    no_reference: bool,
}

/// How often the coordinator's API (and, in the reference, `ray.nodes()`) is polled.
const POLL: Duration = Duration::from_millis(50);
const POOL: &str = "lab";
/// How long one round may take before the harness gives up on it.
const ROUND_LIMIT: Duration = Duration::from_secs(120);

/// Wall-clock now, in milliseconds since the epoch: the coordinator's event times are
/// on the same clock (same host).
fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// The last `n` lines of a log file.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// --- Corral: a coordinator whose pool boots "machines" on this host --------------------

/// The machines' script the pool tests use (`tests/fixtures/lab-vm`): `create NODE`
/// (user data on stdin) boots one, `delete ID` kills and removes it, `list` prints
/// `ID NODE STATE CREATED`. Its machines live in `machines/` beside it.
const LAB_VM: &str = include_str!("../../../tests/fixtures/lab-vm");

/// The pool's user data: tests/pools.rs's, with a timestamp (ns) before and after
/// `corral join`, into `times` in the machine's directory.
fn user_data(corral: &Path) -> String {
    format!(
        "set -e\nprintf '%s' '{{ca_pem}}' > ca.pem\necho \"join $(date +%s%N)\" >> times\n{corral} join --url {{join_url}} --token {{join_token}} --ca ca.pem --dir \"$PWD/identity\"\necho \"agent $(date +%s%N)\" >> times\nexec {corral} agent --config \"$PWD/identity/agent.toml\"\n",
        corral = corral.display()
    )
}

struct Lab {
    dir: tempfile::TempDir,
    http: reqwest::Client,
    coordinator: Child,
    /// The newest event seen, for `events?since=`.
    last_event: u64,
    /// How long each API poll took (the events and, while it is awaited, the new node).
    calls: Vec<Duration>,
}

/// One round's times, epoch milliseconds (the coordinator's for its events).
#[derive(Debug, Clone, Default)]
struct Round {
    victim: String,
    new: String,
    killed: f64,
    disconnected: Option<f64>,
    down: Option<f64>,
    replace: Option<f64>,
    deleted: Option<f64>,
    created: Option<f64>,
    token: Option<f64>,
    /// The registry's own `ready` event for the new node: its connection.
    registered: Option<f64>,
    joined: Option<f64>,
    /// The first poll that showed it ready with a report.
    ready: Option<f64>,
    /// The coordinator's time of that first report.
    first_report: Option<f64>,
    /// From the machine's `times`: `corral join` started and returned (the agent is
    /// exec'd right after).
    join_start: Option<f64>,
    join_done: Option<f64>,
    /// The provider's `create` call alone (the pool's action), ms.
    create_call_ms: Option<f64>,
    /// Token and connection events seen before the new node's `create` event: the
    /// node can join while its create call is still returning.
    early: Vec<(String, &'static str, f64)>,
}

impl Round {
    fn complete(&self) -> bool {
        self.down.is_some()
            && self.replace.is_some()
            && self.deleted.is_some()
            && self.created.is_some()
            && self.token.is_some()
            && self.registered.is_some()
            && self.joined.is_some()
            && self.ready.is_some()
    }
}

impl Lab {
    async fn start(a: &PoolsArgs, plugins: &Path) -> Result<Lab> {
        let dir = tempfile::Builder::new().prefix("corral-pools").tempdir()?;
        let root = dir.path();
        bench_pki(&root.join("tls"))?;
        let machines = root.join("machines");
        std::fs::create_dir_all(&machines)?;
        let script = root.join("lab-vm");
        std::fs::write(&script, LAB_VM)?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
        }
        let providers = root.join("providers");
        std::fs::create_dir_all(&providers)?;
        std::fs::copy(plugins.join("command.wasm"), providers.join("command.wasm"))?;
        let manifest = std::fs::read_to_string(plugins.join("command.toml"))?;
        ensure!(
            manifest.contains("programs = [\"/usr/local/lib/corral/pool-machines\"]"),
            "{} grants programs already; expected the plugin's own manifest (granting only its placeholder program)",
            plugins.join("command.toml").display()
        );
        std::fs::write(
            providers.join("command.toml"),
            manifest.replace(
                "programs = [\"/usr/local/lib/corral/pool-machines\"]",
                &format!("programs = [{:?}]", script.display().to_string()),
            ),
        )?;
        let exe = crate::bench::corral_exe()?;
        let quic = free_udp_port()?;
        let api = free_port()?;
        let s = script.display().to_string();
        let cfg = root.join("coordinator.toml");
        std::fs::write(
            &cfg,
            format!(
                "[coordinator]\nlisten = \"127.0.0.1:{quic}\"\nstate_dir = \"state\"\ndown_after = \"{down}\"\n\
                 [api]\nlisten = \"127.0.0.1:{api}\"\nsocket = \"api.sock\"\n\
                 [tls]\nca = \"tls/ca.pem\"\ncert = \"tls/coordinator.pem\"\nkey = \"tls/coordinator.key\"\n\
                 [providers]\ndir = \"providers\"\n\
                 [join]\nca_dir = \"tls\"\nurl = \"http://127.0.0.1:{api}\"\ncoordinator = \"127.0.0.1:{quic}\"\ncert_days = 1\n\
                 [pools.{POOL}]\nprovider = \"command\"\nmin = {min}\nmax = {max}\nreplace_after = \"{replace}\"\njoin_timeout = \"90s\"\nlist_interval = \"2s\"\nmax_failures = 3\nuser_data = {ud:?}\n\
                 [pools.{POOL}.template]\ncreate = [{s:?}, \"create\", \"{{node}}\"]\ndelete = [{s:?}, \"delete\", \"{{id}}\"]\nlist = [{s:?}, \"list\"]\n",
                down = humantime::format_duration(a.down_after),
                min = a.nodes,
                max = a.nodes + 2,
                replace = humantime::format_duration(a.replace_after),
                ud = user_data(&exe),
            ),
        )?;
        let log = std::fs::File::create(root.join("coordinator.log"))?;
        let coordinator = Command::new(&exe)
            .args(["coordinator", "--config"])
            .arg(&cfg)
            .current_dir(root)
            .env("CORRAL_LOG", "info,quinn=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting the coordinator")?;
        // reqwest wants a process-wide rustls provider even for plain HTTP.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let socket = root.join("api.sock");
        let http = reqwest::Client::builder()
            .unix_socket(socket.clone())
            .timeout(Duration::from_secs(10))
            .build()
            .context("building the API client")?;
        crate::bench::local_api_when_up(&socket).await?;
        Ok(Lab {
            dir,
            http,
            coordinator,
            last_event: 0,
            calls: vec![],
        })
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// `GET path`; `None` for a 404.
    async fn get_opt<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<Option<T>> {
        let r = self
            .http
            .get(format!("http://localhost{path}"))
            .send()
            .await
            .with_context(|| format!("GET {path} on the coordinator"))?;
        if r.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let r = r
            .error_for_status()
            .with_context(|| format!("GET {path} on the coordinator"))?;
        Ok(Some(r.json().await.with_context(|| {
            format!("reading the answer to GET {path}")
        })?))
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.get_opt(path)
            .await?
            .with_context(|| format!("GET {path}: not found"))
    }

    async fn pool(&self) -> Result<PoolView> {
        self.get(&format!("/api/v1/pools/{POOL}")).await
    }

    /// The pool's members that are ready, by name.
    fn members(v: &PoolView) -> Vec<String> {
        let mut m: Vec<String> = v
            .nodes
            .iter()
            .filter(|n| n.phase == PoolNodePhase::Member && n.liveness.as_deref() == Some("ready"))
            .map(|n| n.node.clone())
            .collect();
        m.sort_by_key(|n| {
            n.rsplit('-')
                .next()
                .and_then(|i| i.parse::<u64>().ok())
                .unwrap_or(u64::MAX)
        });
        m
    }

    /// Waits until the pool holds `n` nodes, all ready members.
    async fn wait_members(&self, n: u32, within: Duration) -> Result<Vec<String>> {
        let deadline = Instant::now() + within;
        loop {
            let v = self.pool().await?;
            let m = Self::members(&v);
            if m.len() == n as usize && v.nodes.len() == n as usize {
                return Ok(m);
            }
            if Instant::now() > deadline {
                bail!(
                    "pool {POOL} does not have {n} ready members within {within:?}: {:?}\n{}",
                    v.nodes,
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The newest event's id, so that a round reads only its own.
    async fn skip_events(&mut self) -> Result<()> {
        let events: Vec<Event> = self
            .get(&format!(
                "/api/v1/events?since={}&limit=100000",
                self.last_event
            ))
            .await?;
        if let Some(e) = events.last() {
            self.last_event = e.id;
        }
        Ok(())
    }

    fn logs(&self) -> String {
        let mut out = format!(
            "--- coordinator log (last lines) ---\n{}\n",
            tail(&self.path("coordinator.log"), 30)
        );
        if let Ok(dirs) = std::fs::read_dir(self.path("machines")) {
            for d in dirs.flatten() {
                out.push_str(&format!(
                    "--- {} ---\n{}\n",
                    d.path().display(),
                    tail(&d.path().join("boot.log"), 10)
                ));
            }
        }
        out
    }

    /// Kills `victim`'s agent and follows its replacement until the new node is ready.
    async fn round(&mut self, victim: &str, before: &[String]) -> Result<Round> {
        self.skip_events().await?;
        let pid: i32 = std::fs::read_to_string(self.path(&format!("machines/{victim}/pid")))
            .with_context(|| format!("reading {victim}'s pid"))?
            .trim()
            .parse()
            .with_context(|| format!("{victim}'s pid file"))?;
        let mut r = Round {
            victim: victim.to_string(),
            killed: now_ms(),
            ..Round::default()
        };
        // SAFETY: signals the agent process the pool's machine started (its pid file).
        ensure!(
            unsafe { libc::kill(pid, libc::SIGKILL) } == 0,
            "kill -9 {pid} ({victim}'s agent): {}",
            std::io::Error::last_os_error()
        );
        let deadline = Instant::now() + ROUND_LIMIT;
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !r.complete() {
            tick.tick().await;
            let started = Instant::now();
            let events: Vec<Event> = self
                .get(&format!(
                    "/api/v1/events?since={}&limit=1000",
                    self.last_event
                ))
                .await?;
            for e in events {
                self.last_event = e.id;
                self.note(&mut r, &e, before);
            }
            if !r.new.is_empty() && r.ready.is_none() {
                let node: Option<NodeView> =
                    self.get_opt(&format!("/api/v1/nodes/{}", r.new)).await?;
                if let Some(n) =
                    node.filter(|n| n.liveness == Liveness::Ready && n.last_report_ms.is_some())
                {
                    r.ready = Some(now_ms());
                    r.first_report = n.last_report_ms.map(|t| t as f64);
                }
            }
            self.calls.push(started.elapsed());
            if Instant::now() > deadline {
                bail!(
                    "{victim} was not replaced within {ROUND_LIMIT:?}; so far: {r:?}\n{}",
                    self.logs()
                );
            }
        }
        // What the create call took, as the pool recorded it (a delete's `elapsed_ms`
        // is from the decision: the phase itself).
        let v = self.pool().await?;
        r.create_call_ms = v
            .actions
            .iter()
            .find(|act| {
                act.action == "create" && act.outcome == "ok" && act.node.as_deref() == Some(&r.new)
            })
            .and_then(|act| act.elapsed_ms.map(|m| m as f64));
        let times = std::fs::read_to_string(self.path(&format!("machines/{}/times", r.new)))
            .unwrap_or_default();
        for line in times.lines() {
            let mut f = line.split_whitespace();
            let (Some(k), Some(t)) = (f.next(), f.next().and_then(|t| t.parse::<f64>().ok()))
            else {
                continue;
            };
            let t = t / 1e6;
            match k {
                "join" => r.join_start = Some(t),
                "agent" => r.join_done = Some(t),
                _ => {}
            }
        }
        Ok(r)
    }

    /// Takes what a round needs from one event.
    fn note(&self, r: &mut Round, e: &Event, before: &[String]) {
        let at = Some(e.at_ms as f64);
        let victim = e.node == r.victim;
        match (e.kind, e.to.as_str()) {
            (EventKind::Liveness, "disconnected") if victim => {
                r.disconnected = r.disconnected.or(at)
            }
            (EventKind::Liveness, "down") if victim => r.down = r.down.or(at),
            (EventKind::Pool, "replace") if victim => r.replace = r.replace.or(at),
            (EventKind::Pool, "delete") if victim => r.deleted = r.deleted.or(at),
            (EventKind::Pool, "create")
                if r.new.is_empty() && !victim && !before.contains(&e.node) =>
            {
                r.new = e.node.clone();
                r.created = at;
                for (node, what, t) in std::mem::take(&mut r.early) {
                    if node == r.new {
                        match what {
                            "token" => r.token = r.token.or(Some(t)),
                            "ready" => r.registered = r.registered.or(Some(t)),
                            _ => r.joined = r.joined.or(Some(t)),
                        }
                    }
                }
            }
            (EventKind::Pool, "token")
            | (EventKind::Liveness, "ready")
            | (EventKind::Pool, "joined")
                if r.new.is_empty() && !victim && !before.contains(&e.node) =>
            {
                let what = match e.to.as_str() {
                    "token" => "token",
                    "ready" => "ready",
                    _ => "joined",
                };
                r.early.push((e.node.clone(), what, e.at_ms as f64));
            }
            (EventKind::Pool, "token") if !r.new.is_empty() && e.node == r.new => {
                r.token = r.token.or(at)
            }
            (EventKind::Liveness, "ready") if !r.new.is_empty() && e.node == r.new => {
                r.registered = r.registered.or(at)
            }
            (EventKind::Pool, "joined") if !r.new.is_empty() && e.node == r.new => {
                r.joined = r.joined.or(at)
            }
            _ => {}
        }
    }

    /// The coordinator stopped, then every machine still running killed (its session
    /// is its process group: `setsid` made the user data's shell its leader).
    async fn stop(mut self) {
        stop_child(&mut self.coordinator, Duration::from_secs(10)).await;
        self.kill_machines();
    }

    fn kill_machines(&self) {
        let Ok(dirs) = std::fs::read_dir(self.path("machines")) else {
            return;
        };
        for d in dirs.flatten() {
            if d.file_name().to_string_lossy().starts_with('.') {
                continue; // deleted: the provider's delete killed it
            }
            let pid = std::fs::read_to_string(d.path().join("pid"))
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok());
            if let Some(pid) = pid.filter(|p| *p > 1) {
                // SAFETY: signals the process group this harness's machine started.
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                }
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // On an error too: no agent outlives the run.
        self.kill_machines();
    }
}

/// SIGTERM, up to `grace` to exit, then SIGKILL.
async fn stop_child(child: &mut Child, grace: Duration) {
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

/// Corral's rounds, the API polls' durations, how long the pool took to form (s), and
/// the killed nodes still in the node list at the end.
struct Corral {
    rounds: Vec<Round>,
    calls: Vec<Duration>,
    formed: f64,
    lingering: Vec<String>,
}

async fn corral(a: &PoolsArgs, plugins: &Path) -> Result<Corral> {
    eprintln!(
        "corral: a coordinator with pool {POOL} of {} through the command provider",
        a.nodes
    );
    let mut lab = Lab::start(a, plugins).await?;
    let up = Instant::now();
    let mut members = lab.wait_members(a.nodes, Duration::from_secs(180)).await?;
    let formed = up.elapsed().as_secs_f64();
    eprintln!("corral: {} ready members in {formed:.1} s", members.len());
    let mut rounds = vec![];
    for i in 0..a.rounds {
        // Kill the oldest member each round.
        let victim = members[0].clone();
        let r = lab.round(&victim, &members).await?;
        eprintln!(
            "corral round {}: {} killed, {} ready {:.2} s later",
            i + 1,
            r.victim,
            r.new,
            (r.ready.unwrap_or(r.killed) - r.killed) / 1000.0
        );
        rounds.push(r);
        members = lab.wait_members(a.nodes, Duration::from_secs(60)).await?;
        // The pool lists its machines every 2 s; let a round not start inside one.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // A deleted node leaves the node list, unless it was still connected when it was
    // deleted (a killed agent's QUIC connection lingers until its idle timeout, or until
    // the revocation closes it).
    let mut lingering = vec![];
    for r in &rounds {
        if lab
            .get_opt::<NodeView>(&format!("/api/v1/nodes/{}", r.victim))
            .await?
            .is_some()
        {
            lingering.push(r.victim.clone());
        }
    }
    let calls = std::mem::take(&mut lab.calls);
    lab.stop().await;
    Ok(Corral {
        rounds,
        calls,
        formed,
        lingering,
    })
}

// --- The reference: Ray's autoscaler and its fake multi-node provider ------------------

/// The reference's driver, run with the Ray venv's Python (see the module doc).
const DRIVER: &str = r##""""corral-bench pools, the reference: Ray's autoscaler replacing a dead worker.

Written and run by `corral-bench pools` with the Ray venv's Python:
`driver.py NODES ROUNDS WORKDIR POLL_S`. Starts a Ray head whose autoscaler (v2) uses
Ray's fake multi-node provider, with the cluster config Ray's own test utility
`ray.cluster_utils.AutoscalingCluster(autoscaler_v2=True)` generates (built here, see
`cluster_config`), one worker type at min_workers = max_workers = NODES. Then, ROUNDS
times: waits for NODES alive workers, SIGKILLs one worker's raylet and records when GCS
marks that node dead (`ray.nodes()`, polled every POLL_S) and when a replacement is
alive, plus what the autoscaler's log says it did in between. One JSON object per line
in WORKDIR/results.jsonl (`config`, `round`, `error`); progress on stderr. Every
process it starts is in one session (the head's `ray start` leads it), which it kills
when done; the session id is written to WORKDIR/ray-session-id first, so that the
harness can kill the session too if this driver dies.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

NODES = int(sys.argv[1])
ROUNDS = int(sys.argv[2])
WORKDIR = sys.argv[3]
POLL_S = float(sys.argv[4])
SID_FILE = os.path.join(WORKDIR, "ray-session-id")
RESULTS = os.path.join(WORKDIR, "results.jsonl")

import ray  # noqa: E402
import psutil  # noqa: E402  (Ray's own copy: `import ray` puts its thirdparty_files on the path)
import ray._private.services  # noqa: E402
from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_ID  # noqa: E402

WORKER_TYPE = "ray.worker.cpu"
HEAD_RESOURCE = "node:__internal_head__"


def log(msg):
    print(f"ray reference: {msg}", file=sys.stderr, flush=True)


def emit(obj):
    # A file of its own: Ray's driver prints its own messages on stdout.
    with open(RESULTS, "a") as f:
        f.write(json.dumps(obj) + "\n")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster_config(ip, gcs_port):
    # What AutoscalingCluster(head_resources={"CPU": 0},
    # worker_node_types={WORKER_TYPE: ...}, autoscaler_v2=True) generates from the fake
    # provider's example.yaml (which this pip-installed Ray does not ship), plus the GCS
    # address: the fake provider assumes port 6379 unless the provider config names one.
    return {
        "cluster_name": "corral-bench-pools",
        "max_workers": NODES,
        "provider": {
            # `type: fake_multinode` makes autoscaler v2 read the provider's defaults
            # from example.yaml, which the wheel lacks: the same class as an external
            # provider needs no defaults file.
            "type": "external",
            "module": "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": f"{ip}:{gcs_port}",
            # What AutoscalingCluster(autoscaler_v2=True) adds.
            "launch_multiple": True,
            "head_node_id": FAKE_HEAD_NODE_ID,
        },
        "available_node_types": {
            "ray.head.default": {
                "resources": {"CPU": 0},
                "node_config": {},
                "max_workers": 0,
            },
            WORKER_TYPE: {
                "resources": {"CPU": 1, "object_store_memory": 100 * 1024 * 1024},
                "node_config": {},
                "min_workers": NODES,
                "max_workers": NODES,
            },
        },
        "head_node_type": "ray.head.default",
        "auth": {},
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 0.1,
        "docker": {},
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
    }


def session_pids(sid):
    """The live processes of session `sid` (zombies wait for PID 1 to reap them)."""
    out = []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if os.getsid(p.pid) == sid and p.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except (ProcessLookupError, PermissionError, psutil.Error, OSError):
            pass
    return out


def kill_session(sid):
    for _ in range(3):
        pids = [p for p in session_pids(sid) if p != os.getpid()]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)


def workers(nodes):
    return [n for n in nodes if HEAD_RESOURCE not in n.get("Resources", {})]


def alive_workers():
    return [n for n in workers(ray.nodes()) if n["Alive"]]


def raylet_pid(node):
    """The raylet process of a node: the one started with its node id."""
    want = f"--node_id={node['NodeID']}"
    for p in psutil.process_iter(["pid", "name", "cmdline"]):
        try:
            cmd = p.info["cmdline"] or []
            if p.info["name"] == "raylet" or (cmd and cmd[0].endswith("/raylet")):
                if want in cmd:
                    return p.pid
        except psutil.Error:
            pass
    return None


def log_time(line):
    """Epoch seconds of a Ray log line (`2026-12-01 22:56:53,571<TAB>INFO ...`, local time)."""
    try:
        stamp, ms = line[:23].split(",")
        return time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(ms) / 1000
    except ValueError:
        return None


def autoscaler_times(monitor_log, victim, since):
    """From the autoscaler's log: when it gave up on `victim` (its instance
    RAY_RUNNING->RAY_STOPPED), when it started the replacement's create (`Launching`)
    and when that create returned (`Launched`: the fake provider's create starts the
    node's raylet and waits for it to register), and when the victim's instance was
    terminated."""
    out = {"stopped": None, "launching": None, "launched": None, "terminated": None}
    try:
        lines = open(monitor_log).read().splitlines()
    except OSError:
        return out
    for line in lines:
        t = log_time(line)
        if t is None or t < since - 1:
            continue
        if victim in line and "->RAY_STOPPED" in line and out["stopped"] is None:
            out["stopped"] = t
        elif victim in line and "->TERMINATED" in line and out["terminated"] is None:
            out["terminated"] = t
        elif out["stopped"] is not None and " -- Launching " in line and out["launching"] is None:
            out["launching"] = t
        elif out["launching"] is not None and " -- Launched " in line and out["launched"] is None:
            out["launched"] = t
    return out


def wait_workers(deadline_s):
    """Polls until NODES workers are alive; returns them and when (epoch s)."""
    end = time.time() + deadline_s
    while True:
        alive = alive_workers()
        if len(alive) >= NODES:
            return alive, time.time()
        if time.time() > end:
            raise RuntimeError(
                f"only {len(alive)} of {NODES} workers alive after {deadline_s:.0f} s"
            )
        time.sleep(POLL_S)


def main():
    temp = tempfile.mkdtemp(prefix="ray-", dir=WORKDIR)
    ip = ray._private.services.get_node_ip_address()
    gcs_port = free_port()
    cfg_path = os.path.join(WORKDIR, "autoscaling.json")
    with open(cfg_path, "w") as f:
        json.dump(cluster_config(ip, gcs_port), f)
    env = dict(os.environ)
    # As AutoscalingCluster.start sets them.
    env.update({"AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_FAKE_CLUSTER": "1"})
    # And, for autoscaler v2 (v1 never replaces a dead worker of this provider: the
    # node keeps the launch's `uninitialized` status tag, and v1 only terminates
    # `up-to-date` nodes that stopped heartbeating):
    env.update({
        "RAY_enable_autoscaler_v2": "1",
        "RAY_CLOUD_INSTANCE_ID": FAKE_HEAD_NODE_ID,
        "RAY_OVERRIDE_NODE_ID_FOR_TESTING": FAKE_HEAD_NODE_ID,
    })
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    cmd = [
        ray_bin, "start", "--head", "--block",
        f"--port={gcs_port}",
        f"--autoscaling-config={cfg_path}",
        "--num-cpus=0",
        f"--object-store-memory={100 * 1024 * 1024}",
        "--include-dashboard=false",
        f"--ray-client-server-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--temp-dir={temp}",
        "--disable-usage-stats",
    ]
    started = time.time()
    head_log = open(os.path.join(WORKDIR, "ray-head.log"), "w")
    head = subprocess.Popen(
        cmd, env=env, stdin=subprocess.DEVNULL, stdout=head_log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    sid = head.pid
    with open(SID_FILE, "w") as f:
        f.write(str(sid))
    try:
        # The head answers once its GCS does.
        end = time.time() + 120
        while True:
            if head.poll() is not None:
                raise RuntimeError(f"ray start --head exited with {head.returncode}; see {head_log.name}")
            try:
                ray.init(address=f"{ip}:{gcs_port}", logging_level="ERROR", log_to_driver=False)
                break
            except Exception as e:  # noqa: BLE001
                if time.time() > end:
                    raise RuntimeError(f"the head did not answer within 120 s: {e}")
                time.sleep(0.5)
        cfg = ray._config
        emit({
            "event": "config",
            "ray_version": ray.__version__,
            "health_check_period_ms": cfg.health_check_period_ms(),
            "health_check_failure_threshold": cfg.health_check_failure_threshold(),
            "health_check_timeout_ms": cfg.health_check_timeout_ms(),
            "health_check_initial_delay_ms": cfg.health_check_initial_delay_ms(),
            "autoscaler": "v2",
            "autoscaler_update_interval_s": float(env["AUTOSCALER_UPDATE_INTERVAL_S"]),
            "poll_s": POLL_S,
        })
        alive, at = wait_workers(300)
        log(f"{len(alive)} workers alive {at - started:.1f} s after ray start")
        emit({"event": "formed", "seconds": at - started})
        seen = {n["NodeID"] for n in alive}
        for r in range(ROUNDS):
            # Let the autoscaler settle a moment (it lists, then sees the nodes up).
            time.sleep(2)
            alive = alive_workers()
            victim = sorted(alive, key=lambda n: n["NodeID"])[0]
            pid = raylet_pid(victim)
            if pid is None:
                raise RuntimeError(f"no raylet process was started with --node_id={victim['NodeID']}")
            killed = time.time()
            os.kill(pid, signal.SIGKILL)
            dead = None
            replaced = None
            registered = None
            end = killed + 300
            while replaced is None:
                nodes = workers(ray.nodes())
                now = time.time()
                by_id = {n["NodeID"]: n for n in nodes}
                if dead is None and not by_id.get(victim["NodeID"], {}).get("Alive", False):
                    dead = now
                new = [n for n in nodes if n["NodeID"] not in seen and n["Alive"]]
                if new and registered is None:
                    registered = now
                if dead is not None and new and len([n for n in nodes if n["Alive"]]) >= NODES:
                    replaced = now
                    seen.update(n["NodeID"] for n in new)
                    break
                if now > end:
                    raise RuntimeError(
                        f"round {r + 1}: no replacement within 300 s (dead: {dead is not None})"
                    )
                time.sleep(POLL_S)
            death = by_id.get(victim["NodeID"], {})
            # The autoscaler logs what it did a moment after it did it.
            time.sleep(1.5)
            auto = autoscaler_times(
                os.path.join(temp, "session_latest", "logs", "monitor.log"),
                victim["NodeID"],
                killed,
            )
            emit({
                "event": "round",
                "round": r + 1,
                "killed": killed,
                "dead": dead,
                "replacement_alive": registered,
                "all_alive": replaced,
                "autoscaler_stopped": auto["stopped"],
                "autoscaler_launching": auto["launching"],
                "autoscaler_launched": auto["launched"],
                "autoscaler_terminated": auto["terminated"],
                "death_reason": death.get("DeathReasonMessage", ""),
            })
            log(
                f"round {r + 1}: kill -> dead {dead - killed:.2f} s, -> replacement alive {registered - killed:.2f} s"
            )
    except Exception as e:  # noqa: BLE001
        emit({"event": "error", "message": str(e)})
        raise
    finally:
        try:
            ray.shutdown()
        except Exception:  # noqa: BLE001
            pass
        kill_session(sid)
        head_log.close()


if __name__ == "__main__":
    main()
"##;

/// What the reference measured, or why it did not.
enum Reference {
    NotMeasured(String),
    Measured {
        config: Value,
        formed: Option<f64>,
        rounds: Vec<Value>,
        /// Set when the driver stopped before all rounds (with what it said).
        failed: Option<String>,
    },
}

/// The state and session (fields 3 and 6 of /proc/PID/stat) of a process, if readable.
fn state_and_session(pid: u32) -> Option<(String, i64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    Some((f.first()?.to_string(), f.get(3)?.parse().ok()?))
}

/// SIGKILLs every live process in session `sid` (one this harness's driver started).
fn kill_session(sid: i64) -> usize {
    let me = std::process::id();
    let mut killed = 0;
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return 0;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Some((state, session)) = state_and_session(pid) else {
            continue;
        };
        // A zombie is dead already; PID 1 reaps it.
        if pid != me && session == sid && state != "Z" {
            // SAFETY: a process of the Ray session this harness's driver started.
            if unsafe { libc::kill(pid as i32, libc::SIGKILL) } == 0 {
                killed += 1;
            }
        }
    }
    killed
}

async fn reference(a: &PoolsArgs) -> Result<Reference> {
    let python = a.ray_venv.join("bin/python");
    let how = "make one with scripts/test.sh (as root it creates /var/cache/corral-test/ray-2.60.0), or `python3 -m venv V && V/bin/pip install \"ray[default]==2.60.0\"`, and pass --ray-venv V (or CORRAL_RAY_VENV=V)";
    if !python.is_file() {
        return Ok(Reference::NotMeasured(format!(
            "no Ray venv at {} ({} is missing): {how}",
            a.ray_venv.display(),
            python.display()
        )));
    }
    let probe = Command::new(&python)
        .args([
            "-c",
            "import ray, ray.autoscaler.v2; print(ray.__version__)",
        ])
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {}", python.display()))?;
    if !probe.status.success() {
        return Ok(Reference::NotMeasured(format!(
            "{} cannot import ray ({}): {how}",
            python.display(),
            String::from_utf8_lossy(&probe.stderr)
                .lines()
                .last()
                .unwrap_or("")
        )));
    }
    let dir = tempfile::Builder::new()
        .prefix("corral-pools-ray")
        .tempdir()?;
    let work = dir.path();
    std::fs::write(work.join("driver.py"), DRIVER)?;
    let log_path = work.join("driver.log");
    let log = std::fs::File::create(&log_path)?;
    eprintln!(
        "reference: Ray {} (autoscaler v2, fake multi-node provider), {} workers; driver log {}",
        String::from_utf8_lossy(&probe.stdout).trim(),
        a.nodes,
        log_path.display()
    );
    let mut driver = Command::new(&python)
        .arg(work.join("driver.py"))
        .args([
            a.nodes.to_string(),
            a.rounds.to_string(),
            work.display().to_string(),
            format!("{}", POLL.as_secs_f64()),
        ])
        .current_dir(work)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .context("starting the Ray driver")?;
    let limit = Duration::from_secs(180 + 120 * a.rounds as u64);
    let status = tokio::time::timeout(limit, driver.wait()).await;
    let mut failed = match &status {
        Ok(Ok(s)) if s.success() => None,
        Ok(Ok(s)) => Some(format!("the driver exited with {s}")),
        Ok(Err(e)) => Some(format!("waiting for the driver: {e}")),
        Err(_) => {
            let _ = driver.kill().await;
            Some(format!("the driver did not finish within {limit:?}"))
        }
    };
    // Whatever the driver did: nothing of its Ray is left.
    if let Some(sid) = std::fs::read_to_string(work.join("ray-session-id"))
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .filter(|s| *s > 1)
    {
        let n = kill_session(sid);
        if n > 0 {
            eprintln!("reference: killed {n} leftover processes of Ray session {sid}");
        }
    }
    let results = std::fs::read_to_string(work.join("results.jsonl")).unwrap_or_default();
    let mut config = None;
    let mut formed = None;
    let mut rounds = vec![];
    for line in results.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        match v["event"].as_str() {
            Some("config") => config = Some(v),
            Some("formed") => formed = v["seconds"].as_f64(),
            Some("round") => rounds.push(v),
            Some("error") => {
                failed = Some(format!(
                    "{}{}",
                    v["message"].as_str().unwrap_or("?"),
                    failed.map(|f| format!(" ({f})")).unwrap_or_default()
                ))
            }
            _ => {}
        }
    }
    if let Some(f) = &mut failed {
        f.push_str(&format!(
            "; driver log (last lines; the whole log and Ray's are kept in {}):\n{}",
            work.display(),
            tail(&log_path, 15)
        ));
        let _ = dir.keep();
    }
    Ok(match config {
        None => {
            Reference::NotMeasured(failed.unwrap_or_else(|| "the driver reported nothing".into()))
        }
        Some(config) => Reference::Measured {
            config,
            formed,
            rounds,
            failed,
        },
    })
}

// --- The run ---------------------------------------------------------------------------

/// `what`'s median and max, seconds, over the rounds that have it.
fn row(what: &str, v: &[f64]) -> String {
    match spread(v) {
        Some((_, median, max)) => {
            format!("{what:<58} {median:8.3} s {max:8.3} s   (n={})", v.len())
        }
        None => format!("{what:<58} {:>8}   {:>8}     (n=0)", "-", "-"),
    }
}

/// Seconds from `from` to `to` (both epoch ms) in each round that has both.
fn phase(
    rounds: &[Round],
    from: fn(&Round) -> Option<f64>,
    to: fn(&Round) -> Option<f64>,
) -> Vec<f64> {
    rounds
        .iter()
        .filter_map(|r| Some((to(r)? - from(r)?) / 1000.0))
        .collect()
}

/// The same for the reference's rounds (epoch seconds, by key).
fn ray_phase(rounds: &[Value], from: &str, to: &str) -> Vec<f64> {
    rounds
        .iter()
        .filter_map(|r| Some(r[to].as_f64()? - r[from].as_f64()?))
        .collect()
}

pub async fn run(a: PoolsArgs) -> Result<()> {
    ensure!(a.rounds > 0, "--rounds must be at least 1");
    ensure!(a.nodes > 0, "--nodes must be at least 1");
    let plugins = match a.plugins_dir.clone() {
        Some(d) => d,
        None => crate::bench_jobs::default_plugins_dir()?,
    };
    let plugins = std::path::absolute(&plugins).unwrap_or(plugins);
    ensure!(
        plugins.join("command.wasm").is_file() && plugins.join("command.toml").is_file(),
        "{} not found; build the plugin with `cargo xtask plugins --out target/plugins command` or pass --plugins-dir",
        plugins.join("command.wasm").display()
    );
    let load0 = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let Corral {
        rounds,
        calls,
        formed,
        lingering,
    } = corral(&a, &plugins).await?;
    let reference = if a.no_reference {
        Reference::NotMeasured("--no-reference".into())
    } else {
        reference(&a).await?
    };
    let load1 = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = |s: &str| s.split_whitespace().take(3).collect::<Vec<_>>().join(" ");

    let secs = |d: Duration| humantime::format_duration(d).to_string();
    let call_s: Vec<f64> = calls.iter().map(Duration::as_secs_f64).collect();
    let (_, call_median, call_max) = spread(&call_s).unwrap_or_default();
    println!(
        "## bench pools: a killed node's replacement, {} nodes, {} rounds each; load average {} at the start, {} at the end; {} CPUs",
        a.nodes,
        a.rounds,
        load(&load0),
        load(&load1),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "corral: down_after {}, replace_after {}, policy tick {} ms, beats 1 s (disconnected after 3 missed); pool of {} formed in {formed:.1} s",
        secs(a.down_after),
        secs(a.replace_after),
        TICK.as_millis(),
        a.nodes
    );
    println!(
        "API polled every {} ms (one poll: median {:.1} ms, max {:.1} ms): event times are the coordinator's; `ready` is late by at most one poll",
        POLL.as_millis(),
        call_median * 1000.0,
        call_max * 1000.0
    );
    println!("{:<58} {:>10} {:>10}", "", "median", "max");
    type At = fn(&Round) -> Option<f64>;
    let killed: At = |r| Some(r.killed);
    let rows: [(&str, At, At); 8] = [
        ("corral: kill -9 → down", killed, |r| r.down),
        ("  down → replace decision", |r| r.down, |r| r.replace),
        ("  decision → deleted", |r| r.replace, |r| r.deleted),
        ("  deleted → new node created", |r| r.deleted, |r| r.created),
        (
            "  created → join token redeemed",
            |r| r.created,
            |r| r.token,
        ),
        ("  token → connected", |r| r.token, |r| r.registered),
        (
            "  connected → ready with its first report",
            |r| r.registered,
            |r| r.ready,
        ),
        (
            "corral: total, kill -9 → replacement ready",
            killed,
            |r| r.ready,
        ),
    ];
    for (what, from, to) in rows {
        println!("{}", row(what, &phase(&rounds, from, to)));
    }
    println!("where the time goes (corral):");
    let detail: [(&str, At, At); 9] = [
        ("  kill → disconnected (3 missed beats)", killed, |r| {
            r.disconnected
        }),
        ("  disconnected → down", |r| r.disconnected, |r| r.down),
        (
            "  down → decision, beyond replace_after",
            |r| r.down,
            |r| r.replace,
        ),
        (
            "  create: the provider call alone",
            |_| Some(0.0),
            |r| r.create_call_ms,
        ),
        (
            "  `corral join` alone (key, CSR, signing, files)",
            |r| r.join_start,
            |r| r.join_done,
        ),
        (
            "  token redeemed → `corral join` returned",
            |r| r.token,
            |r| r.join_done,
        ),
        (
            "  join returned → connected (agent start, QUIC, hello)",
            |r| r.join_done,
            |r| r.registered,
        ),
        (
            "  connected → `joined` recorded (policy tick)",
            |r| r.registered,
            |r| r.joined,
        ),
        (
            "  connected → first report (coordinator's time)",
            |r| r.registered,
            |r| r.first_report,
        ),
    ];
    for (what, from, to) in detail {
        let mut v = phase(&rounds, from, to);
        if what.contains("beyond replace_after") {
            let ra = a.replace_after.as_secs_f64();
            v.iter_mut().for_each(|x| *x -= ra);
        }
        println!("{}", row(what, &v));
    }
    match &reference {
        Reference::NotMeasured(why) => {
            println!("reference (Ray's autoscaler): NOT MEASURED: {why}");
        }
        Reference::Measured {
            config,
            formed,
            rounds,
            failed,
        } => {
            let n = |k: &str| config[k].as_f64().unwrap_or(f64::NAN);
            println!(
                "reference: Ray {} autoscaler {} with its fake multi-node provider, {} workers (formed in {}); GCS health check every {} ms, failure threshold {}, timeout {} ms, initial delay {} ms (dead within period × threshold = {:.0} s); autoscaler update every {} s; ray.nodes() polled every {} ms",
                config["ray_version"].as_str().unwrap_or("?"),
                config["autoscaler"].as_str().unwrap_or("?"),
                a.nodes,
                formed.map_or("?".into(), |f| format!("{f:.1} s")),
                n("health_check_period_ms"),
                n("health_check_failure_threshold"),
                n("health_check_timeout_ms"),
                n("health_check_initial_delay_ms"),
                n("health_check_period_ms") * n("health_check_failure_threshold") / 1000.0,
                n("autoscaler_update_interval_s"),
                (n("poll_s") * 1000.0).round()
            );
            let rows: [(&str, &str, &str); 6] = [
                (
                    "reference: kill -9 raylet → GCS marks it dead",
                    "killed",
                    "dead",
                ),
                (
                    "  dead → autoscaler gives up on it (RAY_STOPPED)",
                    "dead",
                    "autoscaler_stopped",
                ),
                (
                    "  gave up → replacement's create started",
                    "autoscaler_stopped",
                    "autoscaler_launching",
                ),
                (
                    "  create started → replacement alive in GCS",
                    "autoscaler_launching",
                    "replacement_alive",
                ),
                (
                    "  (create started → create returned)",
                    "autoscaler_launching",
                    "autoscaler_launched",
                ),
                (
                    "reference: total, kill -9 → replacement alive",
                    "killed",
                    "replacement_alive",
                ),
            ];
            for (what, from, to) in rows {
                println!("{}", row(what, &ray_phase(rounds, from, to)));
            }
            if let Some(r) = rounds.first() {
                println!(
                    "Ray's reason for the death: {:?}",
                    r["death_reason"].as_str().unwrap_or("")
                );
            }
            if let Some(f) = failed {
                println!("reference stopped early: {f}");
            }
        }
    }
    println!(
        "killed nodes still in the node list after the last round: {}",
        if lingering.is_empty() {
            "none".to_string()
        } else {
            lingering.join(", ")
        }
    );
    let mut names = BTreeMap::new();
    for r in &rounds {
        names.insert(r.victim.clone(), r.new.clone());
    }
    println!(
        "replaced: {}",
        names
            .iter()
            .map(|(k, v)| format!("{k} → {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_data_keeps_the_pools_placeholders_and_stamps_the_join() {
        let ud = user_data(Path::new("/opt/corral"));
        for p in ["{ca_pem}", "{join_url}", "{join_token}"] {
            assert!(ud.contains(p), "{p} in {ud}");
        }
        let join = ud.find("/opt/corral join").unwrap();
        assert!(ud.find("echo \"join").unwrap() < join && join < ud.find("echo \"agent").unwrap());
        assert!(ud
            .trim_end()
            .ends_with("exec /opt/corral agent --config \"$PWD/identity/agent.toml\""));
    }

    #[test]
    fn phases_are_seconds_between_the_times_a_round_has() {
        let r = Round {
            killed: 1000.0,
            down: Some(4100.0),
            replace: Some(6500.0),
            ..Round::default()
        };
        assert_eq!(
            phase(std::slice::from_ref(&r), |r| Some(r.killed), |r| r.down),
            [3.1]
        );
        assert_eq!(
            phase(std::slice::from_ref(&r), |r| r.down, |r| r.replace),
            [2.4]
        );
        assert!(phase(&[r], |r| r.replace, |r| r.deleted).is_empty());
    }

    #[test]
    fn the_driver_is_the_one_the_docs_describe() {
        assert!(DRIVER.contains("autoscaler_v2=True"));
        assert!(DRIVER.contains("start_new_session=True"));
        assert!(
            !DRIVER.contains("ray stop"),
            "never stops anyone else's Ray"
        );
    }
}
