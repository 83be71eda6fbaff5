//! `corral-bench ray`: how fast a Ray cluster forms under corral, against plain
//! `ray start` and the fixed-sleep launcher corral replaces, on this machine in one run.
//!
//! Each method starts a head and one worker (`--num-cpus 1`, fresh ports and temp dirs)
//! at the same moment, as nodes booting together would, and measures:
//! - *head ready*: from start to the GCS port accepting and the dashboard answering
//!   `GET /api/version` (corral: until its API shows the head `running`);
//! - *worker joined*: from head ready to Ray's own view (`GET /api/v0/nodes` on the
//!   dashboard) listing two ALIVE nodes.
//!
//! Methods: `corral` (a real coordinator and two real agents), `plain` (`ray start
//! --head`, then `ray start --address` as soon as the head is ready: the floor), and
//! `sleep` (both scripts started together, the worker after a fixed `--sleep`, default
//! 10 s, as the old launcher did). Every Ray process is stopped by process group at the
//! end of each run; nothing else on the machine is touched.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use tokio::process::{Child, Command};

use crate::bench::{free_port, free_udp_port};
use corral_transport::pki::Role;

#[derive(Args, Debug)]
pub struct RayArgs {
    /// The venv with `ray[default]` (default: $CORRAL_RAY_VENV).
    #[arg(long, env = "CORRAL_RAY_VENV")]
    venv: PathBuf,
    /// Runs per method.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The fixed sleep of the launcher being replaced, seconds.
    #[arg(long, default_value_t = 10)]
    sleep: u64,
    /// Give corral's agents a fresh `state_dir` on every run, so that each one probes
    /// its venv with Python (a node's first start); by default the state dirs are kept
    /// across the runs, as a node's are across agent restarts, and only the first run
    /// of corral probes.
    #[arg(long)]
    cold: bool,
    /// Keep the corral agents' logs (at `info`) in this directory, one file per agent
    /// and run, to see where the time goes.
    #[arg(long)]
    logs: Option<PathBuf>,
}

/// Children in their own process groups (ids recorded at spawn: a plain `ray start`
/// exits at once and leaves its daemons in the group), killed group-wide on drop.
#[derive(Default)]
struct Groups(Vec<(Child, i32)>);

impl Groups {
    fn spawn(&mut self, cmd: &mut Command) -> Result<()> {
        self.spawn_to(cmd, None)
    }

    /// As [`Groups::spawn`], its stderr appended to `log` when given.
    fn spawn_to(&mut self, cmd: &mut Command, log: Option<&Path>) -> Result<()> {
        let stderr = match log {
            Some(p) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .with_context(|| format!("opening {}", p.display()))?,
            ),
            None => Stdio::null(),
        };
        let child = cmd
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .context("spawning")?;
        let pgid = child.id().context("child pid")? as i32;
        self.0.push((child, pgid));
        Ok(())
    }

    /// SIGTERM to every group, up to 30 s for them to empty (corral agents stop their
    /// Ray in that time), then SIGKILL (gcs_server ignores SIGTERM from a plain start).
    async fn stop(mut self) {
        for (_, g) in &self.0 {
            // SAFETY: signals only a process group this harness created.
            unsafe {
                libc::kill(-g, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for (c, g) in &mut self.0 {
            let _ = tokio::time::timeout_at(deadline.into(), c.wait()).await;
            while Instant::now() < deadline && corral_node::ray::process::group_alive(*g) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        self.kill();
    }

    fn kill(&mut self) {
        for (_, g) in &self.0 {
            // SAFETY: as above.
            unsafe {
                libc::kill(-g, libc::SIGKILL);
            }
        }
        self.0.clear();
    }
}

impl Drop for Groups {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Ports of one Ray head, plus worker-port ranges that cannot collide.
struct Ports {
    gcs: u16,
    dashboard: u16,
    client: u16,
    agent_head: u16,
    agent_worker: u16,
}

impl Ports {
    fn new() -> Result<Ports> {
        Ok(Ports {
            gcs: free_port()?,
            dashboard: free_port()?,
            client: free_port()?,
            agent_head: free_port()?,
            agent_worker: free_port()?,
        })
    }
}

fn worker_ports(from: u16) -> [String; 2] {
    [
        format!("--min-worker-port={from}"),
        format!("--max-worker-port={}", from + 499),
    ]
}

/// ALIVE nodes in Ray's own view (the dashboard's state API).
async fn alive_nodes(dash_port: u16) -> usize {
    let attempt = async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", dash_port)).await?;
        s.write_all(b"GET /api/v0/nodes?limit=1000 HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await?;
        let mut body = String::new();
        s.read_to_string(&mut body).await?;
        Ok::<usize, std::io::Error>(body.matches("\"state\": \"ALIVE\"").count())
    };
    tokio::time::timeout(Duration::from_secs(3), attempt)
        .await
        .ok()
        .and_then(|r| r.ok())
        .unwrap_or(0)
}

async fn wait_alive(dash_port: u16, want: usize, within: Duration) -> Result<Instant> {
    let deadline = Instant::now() + within;
    loop {
        if alive_nodes(dash_port).await >= want {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!("Ray never showed {want} alive nodes within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_head(p: &Ports, within: Duration) -> Result<Instant> {
    tokio::time::timeout(
        within,
        corral_node::ray::wait_head_ready("127.0.0.1", p.gcs, "127.0.0.1", p.dashboard),
    )
    .await
    .context("the head was never ready")?;
    Ok(Instant::now())
}

/// (start → head ready, head ready → worker joined), seconds.
type Sample = (f64, f64);

fn head_cmd(venv: &Path, p: &Ports, temp: &Path) -> Command {
    let mut c = Command::new(venv.join("bin/ray"));
    c.args(["start", "--head", "--port", &p.gcs.to_string()])
        .args(["--dashboard-host", "127.0.0.1"])
        .args(["--dashboard-port", &p.dashboard.to_string()])
        .args(["--ray-client-server-port", &p.client.to_string()])
        .args(["--dashboard-agent-listen-port", &p.agent_head.to_string()])
        .args(worker_ports(21_000))
        .args(["--num-cpus", "1", "--disable-usage-stats", "--temp-dir"])
        .arg(temp);
    c
}

fn worker_cmd(venv: &Path, p: &Ports, temp: &Path) -> Command {
    let mut c = Command::new(venv.join("bin/ray"));
    c.args(["start", "--address", &format!("127.0.0.1:{}", p.gcs)])
        .args(["--dashboard-agent-listen-port", &p.agent_worker.to_string()])
        .args(worker_ports(22_000))
        .args(["--num-cpus", "1", "--disable-usage-stats", "--temp-dir"])
        .arg(temp);
    c
}

async fn plain(venv: &Path, dir: &Path) -> Result<Sample> {
    let p = Ports::new()?;
    let mut g = Groups::default();
    let t0 = Instant::now();
    g.spawn(&mut head_cmd(venv, &p, &dir.join("ph")))?;
    let ready = wait_head(&p, Duration::from_secs(120)).await?;
    g.spawn(&mut worker_cmd(venv, &p, &dir.join("pw")))?;
    let joined = wait_alive(p.dashboard, 2, Duration::from_secs(120)).await?;
    g.stop().await;
    Ok(((ready - t0).as_secs_f64(), (joined - ready).as_secs_f64()))
}

async fn fixed_sleep(venv: &Path, dir: &Path, sleep: u64) -> Result<Sample> {
    let p = Ports::new()?;
    let mut g = Groups::default();
    let t0 = Instant::now();
    g.spawn(&mut head_cmd(venv, &p, &dir.join("sh")))?;
    // The launcher's worker script: `sleep N; ray start --address HEAD`.
    let w = worker_cmd(venv, &p, &dir.join("sw"));
    let line = format!(
        "sleep {sleep}; exec {}",
        w.as_std().get_args().fold(
            w.as_std().get_program().to_string_lossy().into_owned(),
            |acc, a| { format!("{acc} '{}'", a.to_string_lossy()) }
        )
    );
    g.spawn(Command::new("/bin/sh").args(["-c", &line]))?;
    let ready = wait_head(&p, Duration::from_secs(120)).await?;
    let joined = wait_alive(
        p.dashboard,
        2,
        Duration::from_secs(120) + Duration::from_secs(sleep),
    )
    .await?;
    g.stop().await;
    Ok(((ready - t0).as_secs_f64(), (joined - ready).as_secs_f64()))
}

/// Where a corral run keeps what outlives it.
struct CorralRun<'a> {
    /// The agents' `state_dir`s go under it (the venv probe's cache lives there): the
    /// bench's own directory keeps them across runs, as a node's would be across agent
    /// restarts; a run's own directory makes every start a first one (`--cold`).
    state: &'a Path,
    /// Keep the agents' logs here, named after the run.
    logs: Option<(&'a Path, usize)>,
}

async fn corral(venv: &Path, dir: &Path, run: CorralRun<'_>) -> Result<Sample> {
    let tls = dir.join("tls");
    if !tls.join("ca.pem").exists() {
        let ca = crate::bench::bench_pki(&tls)?;
        for n in ["rhead", "rworker"] {
            ca.issue_to_dir(n, Role::Agent, &[], 2, &tls)?;
        }
    }
    let p = Ports::new()?;
    let quic = free_udp_port()?;
    let api_port = free_port()?;
    let state = tempfile::tempdir_in(dir)?;
    let coord_cfg = dir.join("coordinator.toml");
    std::fs::write(
        &coord_cfg,
        format!(
            "[coordinator]\nlisten = \"127.0.0.1:{quic}\"\nstate_dir = \"{}\"\nray_heads = [\"rhead\"]\n[api]\nlisten = \"127.0.0.1:{api_port}\"\nsocket = \"{}\"\n[tls]\nca = \"tls/ca.pem\"\ncert = \"tls/coordinator.pem\"\nkey = \"tls/coordinator.key\"\n",
            state.path().display(),
            state.path().join("api.sock").display()
        ),
    )?;
    let exe = crate::bench::corral_exe()?;
    let mut g = Groups::default();
    g.spawn(
        Command::new(&exe)
            .args(["coordinator", "--config"])
            .arg(&coord_cfg),
    )?;
    let api = crate::bench::local_api_when_up(&state.path().join("api.sock")).await?;
    let agent_cfg = |name: &str, ray: String| -> Result<PathBuf> {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "[agent]\nname = \"{name}\"\ncoordinator = \"127.0.0.1:{quic}\"\nserver_name = \"localhost\"\nstate_dir = \"{}\"\n[tls]\nca = \"tls/ca.pem\"\ncert = \"tls/{name}.pem\"\nkey = \"tls/{name}.key\"\n{ray}",
                run.state.join(name).display()
            ),
        )?;
        Ok(path)
    };
    // Ray runs as whoever runs the bench, as plain `ray start` does: as root, only
    // with corral's explicit consent.
    // SAFETY: geteuid cannot fail.
    let as_root = if unsafe { libc::geteuid() } == 0 {
        "allow_root = true\n"
    } else {
        ""
    };
    let head = agent_cfg(
        "rhead",
        format!(
            "[ray]\n{as_root}role = \"head\"\nvenv = \"{}\"\nport = {}\ndashboard_port = {}\nclient_server_port = {}\nnum_cpus = 1\ntemp_dir = \"{}\"\nstop_grace = \"5s\"\nextra_args = [\"--dashboard-agent-listen-port={}\", \"{}\", \"{}\"]\n",
            venv.display(),
            p.gcs,
            p.dashboard,
            p.client,
            dir.join("ch").display(),
            p.agent_head,
            worker_ports(21_000)[0],
            worker_ports(21_000)[1],
        ),
    )?;
    let worker = agent_cfg(
        "rworker",
        format!(
            "[ray]\n{as_root}role = \"worker\"\nvenv = \"{}\"\nnum_cpus = 1\ntemp_dir = \"{}\"\nstop_grace = \"5s\"\nextra_args = [\"--dashboard-agent-listen-port={}\", \"{}\", \"{}\"]\n",
            venv.display(),
            dir.join("cw").display(),
            p.agent_worker,
            worker_ports(22_000)[0],
            worker_ports(22_000)[1],
        ),
    )?;
    let mut agents = Groups::default();
    if let Some((d, i)) = run.logs {
        // The agents' log timestamps are UTC wall clock: where this run's clock starts.
        std::fs::write(
            d.join(format!("run{i}-t0")),
            humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
        )?;
    }
    let t0 = Instant::now();
    for (name, cfg) in [("rhead", &head), ("rworker", &worker)] {
        let log = run.logs.map(|(d, i)| d.join(format!("run{i}-{name}.log")));
        agents.spawn_to(
            Command::new(&exe)
                .args(["agent", "--config"])
                .arg(cfg)
                .env("CORRAL_LOG", if log.is_some() { "info" } else { "warn" }),
            log.as_deref(),
        )?;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let ready = loop {
        let running = api.node("rhead").await.ok().and_then(|n| {
            let r = n.report?.ray?;
            Some(r.state == corral_proto::model::RayState::Running)
        });
        if running == Some(true) {
            break Instant::now();
        }
        if Instant::now() > deadline {
            bail!("the corral head never became running");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let joined = wait_alive(p.dashboard, 2, Duration::from_secs(120)).await?;
    // SIGTERM to the agents: they stop their own Ray process groups.
    agents.stop().await;
    g.stop().await;
    Ok(((ready - t0).as_secs_f64(), (joined - ready).as_secs_f64()))
}

fn summary(name: &str, samples: &[Sample]) {
    let total: Vec<Sample> = samples.iter().map(|s| (s.0 + s.1, 0.0)).collect();
    let stat = |f: fn(&Sample) -> f64| {
        let mut v: Vec<f64> = samples.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        let median = v[v.len() / 2];
        let min = v[0];
        let max = v[v.len() - 1];
        format!("median {median:5.2} s (min {min:5.2}, max {max:5.2})")
    };
    let mut v: Vec<f64> = total.iter().map(|s| s.0).collect();
    v.sort_by(f64::total_cmp);
    println!(
        "{name:<9} start → head ready: {}   head ready → worker joined: {}   start → two-node cluster: median {:5.2} s",
        stat(|s| s.0),
        stat(|s| s.1),
        v[v.len() / 2]
    );
}

pub async fn run(a: RayArgs) -> Result<()> {
    if a.runs == 0 {
        bail!("--runs must be at least 1");
    }
    corral_node::ray::probe::probe(&a.venv, true)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // Short: Ray's socket paths under its temp dirs must stay within 107 bytes.
    let dir = tempfile::Builder::new().prefix("crb").tempdir_in("/tmp")?;
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "bench ray: venv {}, {} runs per method, {cpus} CPUs, one head + one worker, --num-cpus 1",
        a.venv.display(),
        a.runs
    );
    if let Some(l) = &a.logs {
        std::fs::create_dir_all(l).with_context(|| format!("creating {}", l.display()))?;
    }
    let (mut c, mut p, mut s) = (vec![], vec![], vec![]);
    // Interleaved, so drift of the machine over the run affects every method alike.
    for i in 0..a.runs {
        let run_dir = dir.path().join(format!("r{i}"));
        std::fs::create_dir_all(&run_dir)?;
        let state = if a.cold { &run_dir } else { dir.path() }.join("state");
        let first = !state.exists();
        let run = CorralRun {
            state: &state,
            logs: a.logs.as_deref().map(|l| (l, i)),
        };
        let x = corral(&a.venv, &run_dir, run).await?;
        println!(
            "run {i}: corral {:.2} s + {:.2} s{}",
            x.0,
            x.1,
            if first {
                " (first start: the agents probe their venv)"
            } else {
                ""
            }
        );
        c.push(x);
        let x = plain(&a.venv, &run_dir).await?;
        println!("run {i}: plain  {:.2} s + {:.2} s", x.0, x.1);
        p.push(x);
        let x = fixed_sleep(&a.venv, &run_dir, a.sleep).await?;
        println!("run {i}: sleep  {:.2} s + {:.2} s", x.0, x.1);
        s.push(x);
    }
    summary("corral", &c);
    summary("plain", &p);
    summary(&format!("sleep {}s", a.sleep), &s);
    Ok(())
}
