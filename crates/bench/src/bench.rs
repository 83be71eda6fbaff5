//! Load harnesses (`corral-bench ...`). Figures from them are recorded in BENCHMARKS.md.
//!
//! The harness drives real `corral` processes: the `corral` binary beside this one (the
//! same cargo target dir), or the one `CORRAL_BIN` names.
//!
//! `corral-bench coordinator`: one real `corral coordinator` child process, and N
//! simulated agents in this process, each with its own certificate and QUIC connection,
//! beating at `--rate` Hz and sending a full report every `--report-every` beats (the
//! default ratio of 1 s beats to 5 s reports). Measured over a window after all agents
//! are connected: sustained beats and reports per second, beats sent vs applied (drops),
//! p50/p99 of beat send → registry update (same host, same clock), coordinator CPU and
//! peak RSS from /proc, and wire bytes per beat and per report.
//!
//! `corral-bench agent`: a real coordinator and a real `corral agent` child with default
//! intervals (and the scheduler plugins `--plugins` names, from a warm compiled-plugin
//! cache unless `--cold`); measures the agent's CPU share and RSS over a window, and
//! where that RSS is (`/proc/PID/smaps`), then `kill -9`s it and measures how long the
//! coordinator takes to mark it disconnected.
//!
//! Both drive the machine they run on, loopback only, and stop by themselves.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use tokio::process::{Child, Command};

use corral::cli::ApiClient;
use corral_proto::model::{unix_ns, Liveness, NodeReport};
use corral_proto::wire::{self, AgentMsg, Beat, Hello, Welcome, PROTOCOL_VERSION};
use corral_transport::frame::{FrameReader, FrameWriter};
use corral_transport::pki::{self, Role};

#[derive(Subcommand, Debug)]
pub enum BenchCmd {
    /// N simulated agents against one coordinator process.
    Coordinator(CoordArgs),
    /// One real agent process: CPU, RSS, and kill -9 → disconnected time.
    Agent(AgentArgs),
    /// CPU per sample of N fake GPUs (read + judge) and RSS.
    GpuSample(crate::bench_gpu::GpuSampleArgs),
    /// Ray head and worker start under corral vs plain `ray start` vs a fixed sleep.
    Ray(crate::bench_ray::RayArgs),
    /// `corral submit` vs plain `sbatch` on this machine's Slurm, and one poll of many jobs.
    Submit(crate::bench_jobs::SubmitArgs),
    /// Plugin host: per-call overhead (fresh store + `info`), cold and cached load.
    Plugin(crate::bench_plugin::PluginArgs),
    /// Unhealthy → drained and healthy → resumed in Slurm: corral vs Slurm's health-check hook.
    Remediation(crate::bench_remediation::RemediationArgs),
    /// Web console: page weight, render time at N nodes, feed traffic, coordinator cost vs polling.
    Console(crate::bench_console::ConsoleArgs),
    /// A killed pool node's replacement, phase by phase, vs Ray's autoscaler replacing a dead worker.
    Pools(crate::bench_pools::PoolsArgs),
    /// An hour of churn, coordinator restarts and Slurm jobs: nodes and jobs lost, RSS, beat p99.
    Soak(crate::bench_soak::SoakArgs),
}

#[derive(Args, Debug)]
pub struct CoordArgs {
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Beats per second per agent.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// A full report every this many beats.
    #[arg(long, default_value_t = 5)]
    report_every: u64,
    /// Measurement window after all agents are connected, seconds.
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// Handshakes in flight at once while connecting.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// Simulated agents per client QUIC endpoint (one UDP socket each).
    #[arg(long, default_value_t = 500)]
    agents_per_socket: usize,
    /// Pin the coordinator process to these CPUs (`0` or `0,1`); default: not pinned.
    #[arg(long, value_delimiter = ',')]
    coordinator_cpus: Vec<usize>,
    /// Pin this process (the simulated agents) to these CPUs; default: not pinned.
    #[arg(long, value_delimiter = ',')]
    harness_cpus: Vec<usize>,
    /// Have the simulated agents ask the coordinator (QUIC ACK_FREQUENCY) to acknowledge
    /// only after more than this many ack-eliciting packets (0: at once) or its maximum
    /// ACK delay; default: the agents' own transport settings.
    #[arg(long)]
    ack_threshold: Option<u32>,
}

#[derive(Args, Debug)]
pub struct AgentArgs {
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Give the agent this many scripted fake GPUs.
    #[arg(long, default_value_t = 0)]
    fake_gpus: u32,
    /// Scheduler plugins the agent enables, by name (`slurm,pbs`). None by default.
    #[arg(long, value_delimiter = ',')]
    plugins: Vec<String>,
    /// Where the plugin files are (default: $CORRAL_PLUGINS_DIR, else target/plugins).
    #[arg(long, env = "CORRAL_PLUGINS_DIR", default_value = "target/plugins")]
    plugins_dir: PathBuf,
    /// Start the agent with an empty compiled-plugin cache (it compiles every plugin),
    /// instead of the warm cache a restarted agent finds.
    #[arg(long)]
    cold: bool,
}

pub async fn run(cmd: BenchCmd) -> Result<()> {
    match cmd {
        BenchCmd::Coordinator(a) => coordinator(a).await,
        BenchCmd::Agent(a) => agent(a).await,
        BenchCmd::Ray(a) => crate::bench_ray::run(a).await,
        BenchCmd::Submit(a) => crate::bench_jobs::run(a).await,
        BenchCmd::Plugin(a) => crate::bench_plugin::run(a).await,
        BenchCmd::Remediation(a) => crate::bench_remediation::run(a).await,
        BenchCmd::Console(a) => crate::bench_console::run(a).await,
        BenchCmd::Pools(a) => crate::bench_pools::run(a).await,
        BenchCmd::GpuSample(a) => crate::bench_gpu::run(a),
        BenchCmd::Soak(a) => crate::bench_soak::run(a).await,
    }
}

/// The `corral` binary the harness starts: `$CORRAL_BIN`, else the one beside
/// `corral-bench` (cargo builds both into the same directory).
pub(crate) fn corral_exe() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("CORRAL_BIN") {
        return Ok(PathBuf::from(p));
    }
    let me = std::env::current_exe().context("locating corral-bench")?;
    let exe = me.with_file_name("corral");
    if !exe.exists() {
        bail!(
            "{} not found: build it (`cargo build --release --bin corral`) or set CORRAL_BIN",
            exe.display()
        );
    }
    Ok(exe)
}

/// CPU seconds (user + system), peak RSS and RSS of a process, from /proc.
pub(crate) fn proc_usage(pid: u32) -> Result<(f64, u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are 14th and 15th.
    let after = stat.rsplit_once(')').context("odd /proc stat")?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = 100.0; // USER_HZ on Linux
    let cpu = (f[11].parse::<f64>()? + f[12].parse::<f64>()?) / ticks;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    Ok((cpu, kb("VmHWM:"), kb("VmRSS:")))
}

/// A client for a local coordinator's API through its Unix socket (where the user
/// running the harness is someone), once it answers (20 s at most).
pub(crate) async fn local_api_when_up(socket: &std::path::Path) -> Result<ApiClient> {
    let api = ApiClient::for_socket(socket)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while api.stats().await.is_err() {
        if Instant::now() > deadline {
            bail!(
                "the coordinator on {} did not come up within 20s",
                socket.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(api)
}

pub(crate) fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub(crate) fn free_udp_port() -> Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub(crate) struct Cluster {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) child: Child,
    pub(crate) quic: SocketAddr,
    /// The plain-HTTP API listener (`[api] listen`), where the web console is served.
    pub(crate) http: SocketAddr,
    /// The API through the Unix socket.
    pub(crate) api: ApiClient,
    pub(crate) ca: pki::Ca,
}

/// A short-lived CA in `tls` with a coordinator certificate for loopback.
pub(crate) fn bench_pki(tls: &Path) -> Result<pki::Ca> {
    pki::init_ca(tls, "bench CA", 2)?;
    let ca = pki::Ca::load(tls)?;
    ca.issue_to_dir(
        "coordinator",
        Role::Coordinator,
        &["localhost".into(), "127.0.0.1".into()],
        2,
        tls,
    )?;
    Ok(ca)
}

/// Starts a real coordinator process with a fresh CA in a temp dir.
pub(crate) async fn start_coordinator() -> Result<Cluster> {
    start_coordinator_on(&[]).await
}

/// A CPU set for `sched_setaffinity` (Linux).
fn cpu_set(cpus: &[usize]) -> Result<libc::cpu_set_t> {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        anyhow::ensure!(
            c < libc::CPU_SETSIZE as usize,
            "CPU {c} is beyond what a CPU set holds"
        );
        // SAFETY: c is within the set.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    Ok(set)
}

/// Pins every thread of this process (the runtime's workers exist already) to `cpus`;
/// threads started later inherit it from the thread that starts them.
fn pin_this_process(cpus: &[usize]) -> Result<()> {
    let set = cpu_set(cpus)?;
    for task in std::fs::read_dir("/proc/self/task").context("listing this process's threads")? {
        let tid: libc::pid_t = task?.file_name().to_string_lossy().parse()?;
        // SAFETY: a valid set of the right size for a thread of this process.
        if unsafe { libc::sched_setaffinity(tid, std::mem::size_of_val(&set), &set) } != 0 {
            bail!(
                "pinning the harness to CPUs {cpus:?}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// Starts a real coordinator process with a fresh CA in a temp dir, pinned to `cpus`
/// (every thread: the mask is set before it execs) unless empty.
pub(crate) async fn start_coordinator_on(cpus: &[usize]) -> Result<Cluster> {
    let dir = tempfile::tempdir()?;
    let ca = bench_pki(&dir.path().join("tls"))?;
    let quic = SocketAddr::from(([127, 0, 0, 1], free_udp_port()?));
    let api_port = free_port()?;
    let cfg = dir.path().join("coordinator.toml");
    std::fs::write(
        &cfg,
        format!(
            "[coordinator]\nlisten = \"{quic}\"\nstate_dir = \"state\"\n[api]\nlisten = \"127.0.0.1:{api_port}\"\nsocket = \"api.sock\"\n[tls]\nca = \"tls/ca.pem\"\ncert = \"tls/coordinator.pem\"\nkey = \"tls/coordinator.key\"\n"
        ),
    )?;
    let mut command = Command::new(crate::bench::corral_exe()?);
    command
        .args(["coordinator", "--config"])
        .arg(&cfg)
        .env("CORRAL_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if !cpus.is_empty() {
        let set = cpu_set(cpus)?;
        // SAFETY: between fork and exec the closure makes one async-signal-safe system
        // call on data it owns.
        unsafe {
            command.pre_exec(move || {
                if libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let child = command
        .spawn()
        .context("starting the coordinator process")?;
    let api = local_api_when_up(&dir.path().join("api.sock")).await?;
    Ok(Cluster {
        dir,
        child,
        quic,
        http: SocketAddr::from(([127, 0, 0, 1], api_port)),
        api,
        ca,
    })
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) beats: AtomicU64,
    pub(crate) reports: AtomicU64,
    pub(crate) beat_bytes: AtomicU64,
    pub(crate) report_bytes: AtomicU64,
    pub(crate) failed: AtomicU64,
}

/// Changes a simulated agent's report before each send: called with the report (the
/// shared one with the agent's node name, the first time; what the previous call left
/// after) and how many reports this agent has sent.
pub(crate) type Vary = Arc<dyn Fn(&mut NodeReport, u64) + Send + Sync>;

/// What every simulated agent of a run shares: what it sends, how often, where it
/// counts, and when it stops.
#[derive(Clone)]
pub(crate) struct Beating {
    pub(crate) report: Arc<NodeReport>,
    /// `None`: every report is `report` as it is.
    pub(crate) vary: Option<Vary>,
    pub(crate) period: Duration,
    pub(crate) report_every: u64,
    /// Start each agent's report cycle at a random beat, so that reports are spread
    /// evenly over the report period as a fleet's are (otherwise every agent reports at
    /// its `report_every`-th beat, and the reports bunch up in the connect time).
    pub(crate) spread_reports: bool,
    pub(crate) counters: Arc<Counters>,
    pub(crate) stop: tokio_util::sync::CancellationToken,
}

pub(crate) async fn sim_agent(
    endpoint: quinn::Endpoint,
    cfg: quinn::ClientConfig,
    addr: SocketAddr,
    name: String,
    beating: Beating,
    connected: tokio::sync::mpsc::Sender<quinn::Connection>,
) -> Result<()> {
    let Beating {
        report,
        vary,
        period,
        report_every,
        spread_reports,
        counters,
        stop,
    } = beating;
    let conn = endpoint.connect_with(cfg, addr, "localhost")?.await?;
    let (send, recv) = conn.open_bi().await?;
    let mut w = FrameWriter::new(send, wire::DEFAULT_MAX_FRAME_BYTES);
    let mut r = FrameReader::new(recv, wire::DEFAULT_MAX_FRAME_BYTES);
    let ms = period.as_millis() as u32;
    w.send(
        "hello",
        &Hello {
            protocol: PROTOCOL_VERSION,
            node: name.clone(),
            agent_version: "bench".into(),
            beat_interval_ms: ms.max(1),
            max_frame_bytes: wire::DEFAULT_MAX_FRAME_BYTES as u32,
        },
    )
    .await?;
    let _: Welcome = r.recv("welcome").await?;
    let mut report = (*report).clone();
    report.node = name;
    // Reports go as a real agent's do: the first in full, then deltas.
    let mut deltas = corral_transport::delta::ReportEncoder::new();
    let _ = connected.send(conn.clone()).await;
    // Spread agents evenly over the period.
    tokio::time::sleep(period.mul_f64(rand::random::<f64>())).await;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent = if spread_reports {
        rand::random_range(0..report_every)
    } else {
        0
    };
    let mut reports = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => break,
        }
        let n = w
            .send(
                "beat",
                &AgentMsg::Beat(Beat {
                    sent_at_ns: unix_ns(),
                }),
            )
            .await?;
        counters.beats.fetch_add(1, Ordering::Relaxed);
        counters
            .beat_bytes
            .fetch_add(n as u64 + 4, Ordering::Relaxed);
        sent += 1;
        if sent % report_every == 0 {
            if let Some(vary) = &vary {
                vary(&mut report, reports);
            }
            reports += 1;
            let n = w.send("report", &deltas.encode(&report)?).await?;
            counters.reports.fetch_add(1, Ordering::Relaxed);
            counters
                .report_bytes
                .fetch_add(n as u64 + 4, Ordering::Relaxed);
        }
    }
    // Finish the stream and let the coordinator drain it (it closes the connection when
    // the stream ends), so that beats still in flight are counted, not discarded.
    w.finish();
    if tokio::time::timeout(Duration::from_secs(10), conn.closed())
        .await
        .is_err()
    {
        conn.close(0u32.into(), b"bench done");
    }
    Ok(())
}

/// Client QUIC endpoints on loopback for `n` simulated agents, `per_socket` to each UDP
/// socket. Sockets are sized as the coordinator's are (`bind_udp`), so that a burst of
/// the coordinator's ACKs is not dropped on this side.
pub(crate) fn client_endpoints(n: usize, per_socket: usize) -> Result<Vec<quinn::Endpoint>> {
    (0..n.div_ceil(per_socket.max(1)))
        .map(|_| -> Result<quinn::Endpoint> {
            let (socket, _) =
                corral_transport::frame::bind_udp(SocketAddr::from(([127, 0, 0, 1], 0)))?;
            Ok(quinn::Endpoint::new(
                quinn::EndpointConfig::default(),
                None,
                socket,
                quinn::default_runtime().context("no async runtime for QUIC")?,
            )?)
        })
        .collect()
}

/// Simulated agents started by [`start_agents`], running until their `stop` is cancelled.
pub(crate) struct Agents {
    /// One per agent; each ends after `stop`, once its stream is drained.
    pub(crate) tasks: tokio::task::JoinSet<()>,
    pub(crate) conns: Vec<quinn::Connection>,
    pub(crate) connect_secs: f64,
}

/// Issues `n` agent certificates (`bench-00000`, ...) from `cluster`'s CA and starts one
/// simulated agent for each, `concurrency` handshakes at a time. Returns once every
/// agent is connected or has failed (or no agent connected for 60 s).
pub(crate) async fn start_agents(
    cluster: &Cluster,
    n: usize,
    beating: &Beating,
    concurrency: usize,
) -> Result<Agents> {
    start_agents_per_socket(cluster, n, beating, concurrency, 500, None).await
}

/// [`start_agents`], with `per_socket` agents sharing each client endpoint (UDP socket),
/// and asking the coordinator for `ack_threshold` (see [`CoordArgs`]) when set.
pub(crate) async fn start_agents_per_socket(
    cluster: &Cluster,
    n: usize,
    beating: &Beating,
    concurrency: usize,
    per_socket: usize,
    ack_threshold: Option<u32>,
) -> Result<Agents> {
    eprintln!("issuing {n} agent certificates");
    let t = Instant::now();
    let transport = || {
        let mut t = corral_transport::frame::transport_config();
        t.keep_alive_interval(None);
        if let Some(n) = ack_threshold {
            let mut ack = quinn::AckFrequencyConfig::default();
            ack.ack_eliciting_threshold(quinn::VarInt::from_u32(n));
            t.ack_frequency_config(Some(ack));
        }
        t
    };
    let mut configs = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("bench-{i:05}");
        let issued = cluster.ca.issue(&name, Role::Agent, &[], 2)?;
        let files = write_issued(cluster.dir.path(), &name, &issued)?;
        let tls = files.load()?;
        configs.push((name, pki::quic_client_config(&tls, transport())?));
    }
    eprintln!("issued in {:.1}s; connecting", t.elapsed().as_secs_f64());
    let endpoints = client_endpoints(n, per_socket)?;
    let counters = beating.counters.clone();
    let (conn_tx, mut conn_rx) = tokio::sync::mpsc::channel(n.max(1));
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (name, cfg)) in configs.into_iter().enumerate() {
        let permit = sem.clone().acquire_owned().await?;
        let (ep, conn_tx) = (endpoints[i % endpoints.len()].clone(), conn_tx.clone());
        let beating = beating.clone();
        let counters = counters.clone();
        let addr = cluster.quic;
        tasks.spawn(async move {
            let (tx, mut rx) = tokio::sync::mpsc::channel(1);
            let run = sim_agent(ep, cfg, addr, name, beating, tx);
            tokio::pin!(run);
            let mut permit = Some(permit);
            loop {
                tokio::select! {
                    r = &mut run => {
                        if let Err(e) = r { counters.failed.fetch_add(1, Ordering::Relaxed); tracing::debug!(error = %e, "simulated agent failed"); }
                        return;
                    }
                    c = rx.recv(), if permit.is_some() => {
                        permit.take();
                        if let Some(c) = c { let _ = conn_tx.send(c).await; }
                    }
                }
            }
        });
    }
    drop(conn_tx);
    let mut conns = Vec::with_capacity(n);
    while conns.len() + (counters.failed.load(Ordering::Relaxed) as usize) < n {
        match tokio::time::timeout(Duration::from_secs(60), conn_rx.recv()).await {
            Ok(Some(c)) => conns.push(c),
            _ => break,
        }
    }
    let connect_secs = t.elapsed().as_secs_f64();
    eprintln!(
        "{} agents connected in {connect_secs:.1}s ({} failed); warming up",
        conns.len(),
        counters.failed.load(Ordering::Relaxed)
    );
    Ok(Agents {
        tasks,
        conns,
        connect_secs,
    })
}

async fn coordinator(a: CoordArgs) -> Result<()> {
    anyhow::ensure!(
        a.agents > 0 && a.rate > 0.0 && a.report_every > 0,
        "--agents, --rate and --report-every must be positive"
    );
    raise_fd_limit();
    if !a.harness_cpus.is_empty() {
        pin_this_process(&a.harness_cpus)?;
    }
    let cluster = start_coordinator_on(&a.coordinator_cpus).await?;
    let pid = cluster.child.id().context("coordinator pid")?;
    // What the coordinator costs before any agent: the base of the per-agent figures.
    let (cpu_idle, _, rss_idle) = proc_usage(pid)?;
    let udp_start = udp_counters()?;
    let report = Arc::new(
        tokio::task::spawn_blocking(|| {
            corral_node::session::sample_once("bench", &Default::default(), &Default::default())
        })
        .await??,
    );
    let counters = Arc::new(Counters::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let period = Duration::from_secs_f64(1.0 / a.rate);
    let beating = Beating {
        report,
        vary: None,
        period,
        report_every: a.report_every,
        spread_reports: false,
        counters: counters.clone(),
        stop: stop.clone(),
    };
    let Agents {
        mut tasks,
        conns,
        connect_secs,
    } = start_agents_per_socket(
        &cluster,
        a.agents,
        &beating,
        a.connect_concurrency,
        a.agents_per_socket,
        a.ack_threshold,
    )
    .await?;
    let (cpu_connected, _, _) = proc_usage(pid)?;
    tokio::time::sleep(Duration::from_secs(3).max(period * 2)).await;

    // The latency histogram is cumulative: the window is s1 less s0.
    let s0 = cluster.api.stats().await?;
    let (cpu0, _, _) = proc_usage(pid)?;
    let (own0, _, _) = proc_usage(std::process::id())?;
    let sent0 = (
        counters.beats.load(Ordering::Relaxed),
        counters.reports.load(Ordering::Relaxed),
    );
    let udp0: u64 = conns.iter().map(|c| c.stats().udp_tx.bytes).sum();
    let kernel0 = udp_counters()?;
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(a.duration)).await;
    let window = t0.elapsed().as_secs_f64();
    let (cpu1, hwm, rss) = proc_usage(pid)?;
    let (own1, _, _) = proc_usage(std::process::id())?;
    let sent1 = (
        counters.beats.load(Ordering::Relaxed),
        counters.reports.load(Ordering::Relaxed),
    );
    let udp1: u64 = conns.iter().map(|c| c.stats().udp_tx.bytes).sum();
    let kernel1 = udp_counters()?;
    stop.cancel();
    // Every simulated agent finishes its stream and waits for the coordinator to drain
    // it; then what was sent is compared with what was applied.
    while tasks.join_next().await.is_some() {}
    let s1 = cluster.api.stats().await?;
    let latency = s1.apply_latency_since(&s0);
    let sent_beats_total = counters.beats.load(Ordering::Relaxed);
    let applied_total = s1.beats_total;

    let beats = (sent1.0 - sent0.0) as f64;
    let reports = (sent1.1 - sent0.1) as f64;
    let applied = (s1.beats_total - s0.beats_total) as f64;
    let avg = |bytes: &AtomicU64, n: &AtomicU64| {
        bytes.load(Ordering::Relaxed) as f64 / n.load(Ordering::Relaxed).max(1) as f64
    };
    println!(
        "## bench coordinator: {} agents at {} Hz, report every {} beats, {}s window",
        a.agents, a.rate, a.report_every, a.duration
    );
    println!(
        "connected:               {} of {} in {connect_secs:.1}s",
        conns.len(),
        a.agents
    );
    println!(
        "beats sent/s:            {:.0} (target {:.0})",
        beats / window,
        a.agents as f64 * a.rate
    );
    println!("reports sent/s:          {:.0}", reports / window);
    println!("beats applied/s:         {:.0}", applied / window);
    println!(
        "beats sent vs applied:   {} sent, {} applied overall (dropped: {})",
        sent_beats_total,
        applied_total,
        sent_beats_total.saturating_sub(applied_total)
    );
    println!(
        "send→registry p50/p99:   {:.2} ms / {:.2} ms (max {:.2} ms, {} samples)",
        latency.p50_us as f64 / 1000.0,
        latency.p99_us as f64 / 1000.0,
        latency.max_us as f64 / 1000.0,
        latency.samples
    );
    println!(
        "coordinator CPU:         {:.1}% of one core ({:.1} µs per message received)",
        (cpu1 - cpu0) / window * 100.0,
        (cpu1 - cpu0) * 1e6 / (applied + (s1.reports_total - s0.reports_total) as f64).max(1.0)
    );
    println!(
        "coordinator RSS:         {:.1} MiB now, {:.1} MiB peak; {:.1} MiB before any agent, so {:.1} KiB per connected agent",
        rss as f64 / 1048576.0,
        hwm as f64 / 1048576.0,
        rss_idle as f64 / 1048576.0,
        rss.saturating_sub(rss_idle) as f64 / 1024.0 / conns.len().max(1) as f64
    );
    println!(
        "connecting:              coordinator CPU {:.2} s, {:.0} µs per handshake; refused: {}",
        cpu_connected - cpu_idle,
        (cpu_connected - cpu_idle) * 1e6 / conns.len().max(1) as f64,
        if s1.rejected_total.is_empty() {
            "none".to_string()
        } else {
            format!("{:?}", s1.rejected_total)
        }
    );
    println!(
        "UDP datagrams the kernel dropped (no buffer room; whole machine): {} in the window, {} from the start",
        kernel1.0.saturating_sub(kernel0.0),
        kernel1.0.saturating_sub(udp_start.0)
    );
    println!(
        "UDP datagrams received by the kernel (whole machine): {:.0}/s in the window",
        kernel1.1.saturating_sub(kernel0.1) as f64 / window
    );
    println!(
        "simulated agents CPU:    {:.1}% of one core (this process; {} cores in the machine)",
        (own1 - own0) / window * 100.0,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "frame bytes:             {:.0} per beat, {:.0} per report",
        avg(&counters.beat_bytes, &counters.beats),
        avg(&counters.report_bytes, &counters.reports)
    );
    println!(
        "UDP bytes sent/s:        {:.0} (all agents, incl. QUIC/TLS overhead and ACKs)",
        (udp1 - udp0) as f64 / window
    );
    let mut child = cluster.child;
    let _ = child.kill().await;
    Ok(())
}

/// The machine's UDP counters from /proc/net/snmp: (datagrams dropped for lack of
/// receive buffer room, datagrams received).
fn udp_counters() -> Result<(u64, u64)> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").context("reading /proc/net/snmp")?;
    let mut rows = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (rows.next(), rows.next());
    let (Some(names), Some(values)) = (names, values) else {
        bail!("/proc/net/snmp has no Udp rows");
    };
    let field = |want: &str| -> Result<u64> {
        let i = names
            .split_whitespace()
            .position(|n| n == want)
            .with_context(|| format!("/proc/net/snmp has no Udp {want}"))?;
        Ok(values
            .split_whitespace()
            .nth(i)
            .context("short Udp row in /proc/net/snmp")?
            .parse()?)
    };
    Ok((field("RcvbufErrors")?, field("InDatagrams")?))
}

pub(crate) fn write_issued(dir: &Path, name: &str, issued: &pki::Issued) -> Result<pki::TlsFiles> {
    let files = pki::TlsFiles {
        ca: dir.join("tls/ca.pem"),
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
        crl: None,
    };
    std::fs::write(&files.cert, &issued.cert_pem)?;
    std::fs::write(&files.key, &issued.key_pem)?;
    Ok(files)
}

pub(crate) fn raise_fd_limit() {
    // Each QUIC endpoint is one socket; raising the soft limit is harmless and helps
    // other harness files.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

async fn agent(a: AgentArgs) -> Result<()> {
    let cluster = start_coordinator().await?;
    let dir = cluster.dir.path();
    let files = write_issued(
        dir,
        "bench-agent",
        &cluster.ca.issue("bench-agent", Role::Agent, &[], 2)?,
    )?;
    let mut gpu = String::new();
    if a.fake_gpus > 0 {
        let script = dir.join("gpus.json");
        corral_node::health::gpu::FakeGpuSource::uniform(a.fake_gpus).write_script(&script)?;
        gpu = format!(
            "[gpu]\nbackend = \"fake\"\nfake_script = \"{}\"\n",
            script.display()
        );
    }
    let plugins = crate::bench_plugin::AgentPlugins::prepare(
        &a.plugins,
        &a.plugins_dir,
        &dir.join("plugin-cache"),
        a.cold,
    )?;
    let cfg: PathBuf = dir.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "[agent]\nname = \"bench-agent\"\ncoordinator = \"{}\"\nserver_name = \"localhost\"\n[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n{gpu}{}",
            cluster.quic,
            files.ca.display(),
            files.cert.display(),
            files.key.display(),
            plugins.config()
        ),
    )?;
    let mut child = Command::new(crate::bench::corral_exe()?)
        .args(["agent", "--config"])
        .arg(&cfg)
        .env("CORRAL_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().context("agent pid")?;
    let wait_for = |want: Liveness| {
        let api = &cluster.api;
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if let Ok(n) = api.node("bench-agent").await {
                    if n.liveness == want {
                        return Ok(Instant::now());
                    }
                }
                if Instant::now() > deadline {
                    bail!("bench-agent never became {want}");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_for(Liveness::Ready).await?;
    plugins.wait_loaded(&dir.join("api.sock")).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (c0, _, _) = proc_usage(pid)?;
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(a.duration)).await;
    let (c1, hwm, rss) = proc_usage(pid)?;
    let window = t0.elapsed().as_secs_f64();
    let memory = crate::bench_plugin::memory_breakdown(pid)?;
    let killed = Instant::now();
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
    let _ = child.wait().await;
    let disconnected = wait_for(Liveness::Disconnected).await?;
    println!("## bench agent: default intervals (beat 1s, sample 1s, report 5s), {} fake GPUs, {}s window", a.fake_gpus, a.duration);
    println!(
        "agent CPU:                     {:.3}% of one core",
        (c1 - c0) / window * 100.0
    );
    println!(
        "agent RSS:                     {:.1} MiB now, {:.1} MiB peak",
        rss as f64 / 1048576.0,
        hwm as f64 / 1048576.0
    );
    println!(
        "kill -9 → disconnected:        {:.2}s",
        (disconnected - killed).as_secs_f64()
    );
    plugins.print_summary();
    println!("where the RSS is (at the end of the window, /proc/PID/smaps):");
    for (what, bytes) in memory {
        println!("  {what:<40} {:>7.1} MiB", bytes as f64 / 1048576.0);
    }
    Ok(())
}
