//! `corral-bench soak`: a coordinator process for an hour (by default) under what a
//! cluster does to it: 1,000 simulated agents of which 1 % reconnect every second, a
//! coordinator restart every 10 minutes (SIGTERM, then a new process on the same state
//! dir), and jobs submitted throughout to the machine's real Slurm through a real
//! `corral agent` hosting the real `slurm.wasm`.
//!
//! What it counts, for BENCHMARKS.md ("Soak"):
//! - nodes lost: nodes the coordinator knew before a restart that the new process does
//!   not know, and at the end simulated agents that are not `ready` (goal: 0);
//! - jobs lost: jobs whose submission was acknowledged (an id came back) that the
//!   coordinator no longer knows, or that never reach an ended state (goal: 0); a
//!   submission refused while the coordinator restarts is counted apart, as refused;
//! - the coordinator's RSS every minute (goal: flat after warm-up, within each process);
//! - the p99 of beat latency (agent's send → applied in the registry) per coordinator
//!   lifetime, that is per restart period.
//!
//! Needs a running Slurm (`sinfo` must answer), as `corral-bench submit` does.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use corral::cli::ApiClient;
use corral_proto::api::{JobView, NodeView, StatsView, SubmitRequest};
use corral_proto::job::JobSpec;
use corral_proto::model::Liveness;
use corral_transport::pki::{self, Role};

use crate::bench::{
    bench_pki, free_port, free_udp_port, local_api_when_up, proc_usage, sim_agent, Beating,
    Counters,
};
use crate::bench_jobs::{default_plugins_dir, run_ok};

#[derive(Args, Debug)]
pub struct SoakArgs {
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// How long the soak runs, minutes.
    #[arg(long, default_value_t = 60)]
    minutes: u64,
    /// Percent of the simulated agents that drop their connection and reconnect, each
    /// second.
    #[arg(long, default_value_t = 1.0)]
    churn_percent: f64,
    /// Restart the coordinator this often, minutes (0: never).
    #[arg(long, default_value_t = 10)]
    restart_every: u64,
    /// Submit one job to Slurm this often, seconds.
    #[arg(long, default_value_t = 5)]
    submit_every: u64,
    /// Where the plugin files are (default: $CORRAL_PLUGINS_DIR, else target/plugins).
    #[arg(long)]
    plugins_dir: Option<PathBuf>,
}

/// The coordinator process, restartable on the same config and state.
struct Coordinator {
    dir: tempfile::TempDir,
    cfg: PathBuf,
    child: Child,
    api: ApiClient,
}

impl Coordinator {
    async fn start(dir: tempfile::TempDir, cfg: PathBuf) -> Result<Coordinator> {
        let child = spawn(&dir, &cfg)?;
        let api = local_api_when_up(&dir.path().join("api.sock")).await?;
        Ok(Coordinator {
            dir,
            cfg,
            child,
            api,
        })
    }

    fn pid(&self) -> Result<u32> {
        self.child.id().context("the coordinator has exited")
    }

    /// SIGTERM, wait for the clean stop, start a new process; returns how long the API
    /// was away.
    async fn restart(&mut self) -> Result<Duration> {
        let t = Instant::now();
        let pid = self.pid()? as i32;
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(status) => ensure!(status?.success(), "the coordinator did not stop cleanly"),
            Err(_) => bail!("the coordinator did not stop within 30 s of SIGTERM"),
        }
        self.child = spawn(&self.dir, &self.cfg)?;
        self.api = local_api_when_up(&self.dir.path().join("api.sock")).await?;
        Ok(t.elapsed())
    }
}

fn spawn(dir: &tempfile::TempDir, cfg: &std::path::Path) -> Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path().join("coordinator.log"))?;
    Command::new(crate::bench::corral_exe()?)
        .args(["coordinator", "--config"])
        .arg(cfg)
        .env("CORRAL_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("starting the coordinator process")
}

/// A simulated agent that reconnects whenever its session ends (churn, a coordinator
/// restart), with the agent's backoff (100 ms doubling to 1 s, reset once connected).
#[allow(clippy::too_many_arguments)]
async fn reconnecting_agent(
    endpoint: quinn::Endpoint,
    cfg: quinn::ClientConfig,
    addr: std::net::SocketAddr,
    name: String,
    beating: Beating,
    session: Arc<Mutex<CancellationToken>>,
    reconnects: Arc<AtomicU64>,
    all_stop: CancellationToken,
    phases: Arc<Phases>,
) {
    let mut attempt = 0u32;
    while !all_stop.is_cancelled() {
        phases.connecting.fetch_add(1, Ordering::Relaxed);
        let stop = all_stop.child_token();
        *session.lock().unwrap_or_else(|p| p.into_inner()) = stop.clone();
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let run = sim_agent(
            endpoint.clone(),
            cfg.clone(),
            addr,
            name.clone(),
            Beating {
                stop: stop.clone(),
                ..beating.clone()
            },
            tx,
        );
        tokio::pin!(run);
        let mut welcomed = false;
        loop {
            tokio::select! {
                _ = &mut run => break,
                c = rx.recv(), if !welcomed => {
                    welcomed = c.is_some();
                    if welcomed {
                        phases.connecting.fetch_sub(1, Ordering::Relaxed);
                        phases.in_session.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        if welcomed {
            phases.in_session.fetch_sub(1, Ordering::Relaxed);
        } else {
            phases.connecting.fetch_sub(1, Ordering::Relaxed);
        }
        if welcomed {
            attempt = 0;
        }
        if all_stop.is_cancelled() {
            return;
        }
        reconnects.fetch_add(1, Ordering::Relaxed);
        let delay = corral_base::backoff::backoff(
            Duration::from_millis(100),
            Duration::from_secs(1),
            attempt,
        );
        attempt = attempt.saturating_add(1);
        tokio::time::sleep(delay).await;
    }
}

/// Where the simulated agents are, now.
#[derive(Default)]
struct Phases {
    /// Handshaking or waiting for the welcome.
    connecting: AtomicU64,
    /// Welcomed and beating.
    in_session: AtomicU64,
}

/// The restart that began a period.
#[derive(Clone, Copy)]
struct Restart {
    /// How long the API was away.
    away: Duration,
    /// From the restart until every simulated agent was `ready` again.
    all_ready_after: Duration,
    /// Nodes the old process knew just before, and the new one right after.
    known_before: usize,
    known_after: usize,
}

/// One period between restarts.
struct Period {
    /// `None` for the first.
    restart: Option<Restart>,
    p50_ms: f64,
    p99_ms: f64,
    beats: u64,
    rss_end: u64,
}

pub async fn run(a: SoakArgs) -> Result<()> {
    ensure!(
        a.agents > 0 && a.minutes > 0,
        "--agents and --minutes must be positive"
    );
    run_ok("sinfo", &["-h", "-o", "%T"])
        .await
        .context("`corral-bench soak` needs a running Slurm on this machine (sinfo must answer)")?;
    let plugins_dir = match a.plugins_dir.clone() {
        Some(d) => d,
        None => default_plugins_dir()?,
    };
    ensure!(
        plugins_dir.join("slurm.wasm").exists(),
        "{} has no slurm.wasm; build the plugins with `cargo xtask plugins` or pass --plugins-dir",
        plugins_dir.display()
    );
    crate::bench::raise_fd_limit();

    let dir = tempfile::tempdir()?;
    let tls = dir.path().join("tls");
    let ca = bench_pki(&tls)?;
    ca.issue_to_dir("soak-slurm", Role::Agent, &[], 2, &tls)?;
    let quic = std::net::SocketAddr::from(([127, 0, 0, 1], free_udp_port()?));
    let cfg = dir.path().join("coordinator.toml");
    std::fs::write(
        &cfg,
        format!(
            "[coordinator]\nlisten = \"{quic}\"\nstate_dir = \"state\"\n[api]\nlisten = \"127.0.0.1:{}\"\nsocket = \"api.sock\"\n[tls]\nca = \"tls/ca.pem\"\ncert = \"tls/coordinator.pem\"\nkey = \"tls/coordinator.key\"\n[jobs]\npoll_interval = \"2s\"\n[schedulers.slurm]\nnodes = [\"soak-slurm\"]\n",
            free_port()?
        ),
    )?;
    let agent_cfg = dir.path().join("agent.toml");
    std::fs::write(
        &agent_cfg,
        format!(
            "[agent]\nname = \"soak-slurm\"\ncoordinator = \"{quic}\"\nserver_name = \"localhost\"\nreconnect_base = \"100ms\"\nreconnect_cap = \"1s\"\n[tls]\nca = \"tls/ca.pem\"\ncert = \"tls/soak-slurm.pem\"\nkey = \"tls/soak-slurm.key\"\n[plugins]\ndir = \"{}\"\nenable = [\"slurm\"]\ncache_dir = \"cache\"\nservice_user = {:?}\nmin_job_uid = 0\nallow_root_jobs = true\n",
            plugins_dir.display(),
            corral_sandbox::identity::User::current()?.name
        ),
    )?;
    let mut coord = Coordinator::start(dir, cfg).await?;
    let root = coord.dir.path().to_path_buf();
    let agent_log = std::fs::File::create(root.join("agent.log"))?;
    let mut agent = Command::new(crate::bench::corral_exe()?)
        .args(["agent", "--config"])
        .arg(&agent_cfg)
        .env("CORRAL_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(agent_log.try_clone()?)
        .stderr(agent_log)
        .kill_on_drop(true)
        .spawn()
        .context("starting the Slurm agent")?;

    // The simulated agents.
    eprintln!("issuing {} agent certificates", a.agents);
    let report = Arc::new(
        tokio::task::spawn_blocking(|| {
            corral_node::session::sample_once("soak", &Default::default(), &Default::default())
        })
        .await??,
    );
    let counters = Arc::new(Counters::default());
    let all_stop = CancellationToken::new();
    let beating = Beating {
        report,
        vary: None,
        period: Duration::from_secs(1),
        report_every: 5,
        spread_reports: true,
        counters: counters.clone(),
        stop: all_stop.clone(),
    };
    let transport = || {
        let mut t = corral_transport::frame::transport_config();
        t.keep_alive_interval(None);
        t
    };
    let endpoints = crate::bench::client_endpoints(a.agents, 500)?;
    let reconnects = Arc::new(AtomicU64::new(0));
    let phases = Arc::new(Phases::default());
    let mut sessions = Vec::with_capacity(a.agents);
    let mut tasks = tokio::task::JoinSet::new();
    let names: Vec<String> = (0..a.agents).map(|i| format!("soak-{i:05}")).collect();
    for (i, name) in names.iter().enumerate() {
        let issued = ca.issue(name, Role::Agent, &[], 2)?;
        let files = crate::bench::write_issued(&root, name, &issued)?;
        let client = pki::quic_client_config(&files.load()?, transport())?;
        let session = Arc::new(Mutex::new(CancellationToken::new()));
        sessions.push(session.clone());
        tasks.spawn(reconnecting_agent(
            endpoints[i % endpoints.len()].clone(),
            client,
            quic,
            name.clone(),
            beating.clone(),
            session,
            reconnects.clone(),
            all_stop.clone(),
            phases.clone(),
        ));
        if i % 64 == 63 {
            // Spread the first handshakes a little, as a fleet booting does.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let first_ready = wait_all_ready(&coord.api, &names, Duration::from_secs(300)).await;
    eprintln!(
        "all {} simulated agents ready after {first_ready:?}",
        a.agents
    );

    // Churn: each second, churn_percent of the agents drop their session. It pauses
    // while the harness waits for every agent to be back after a restart (and at the
    // end), so that "every agent ready" can be true at one moment.
    let churned = Arc::new(AtomicU64::new(0));
    let paused = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = tokio::spawn({
        let (sessions, churned, stop) = (sessions.clone(), churned.clone(), all_stop.clone());
        let paused = paused.clone();
        let per_second = ((a.agents as f64) * a.churn_percent / 100.0).round() as usize;
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.cancelled() => return,
                }
                if paused.load(Ordering::Relaxed) {
                    continue;
                }
                for _ in 0..per_second {
                    let i = rand::random_range(0..sessions.len());
                    sessions[i]
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .cancel();
                    churned.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });

    // Jobs: one every submit_every seconds, as the harness's user (root is allowed here).
    let submitted: Arc<Mutex<Vec<String>>> = Arc::default();
    let refused = Arc::new(AtomicU64::new(0));
    let api_socket = root.join("api.sock");
    let submitter = tokio::spawn({
        let (submitted, refused, stop) = (submitted.clone(), refused.clone(), all_stop.clone());
        let every = Duration::from_secs(a.submit_every.max(1));
        let tmp = std::env::temp_dir();
        async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.cancelled() => return,
                }
                let Ok(api) = ApiClient::for_socket(&api_socket) else {
                    refused.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let req = SubmitRequest {
                    scheduler: "slurm".into(),
                    spec: JobSpec {
                        executable: "/bin/sleep".into(),
                        arguments: vec!["2".into()],
                        directory: Some(tmp.display().to_string()),
                        ..Default::default()
                    },
                    via: None,
                    dry_run: false,
                };
                match api
                    .post_json::<_, JobView>(
                        "/api/v1/jobs",
                        Some(&req),
                        Duration::from_secs(30),
                        "submitting",
                    )
                    .await
                {
                    Ok(job) => submitted
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(job.id.to_string()),
                    Err(e) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(error = %e, "a submission was refused");
                    }
                }
            }
        }
    });

    // The periods.
    let total = Duration::from_secs(a.minutes * 60);
    let period_len = if a.restart_every == 0 {
        total
    } else {
        Duration::from_secs(a.restart_every * 60).min(total)
    };
    let start = Instant::now();
    let mut rss_by_minute: Vec<(u64, u64)> = vec![];
    let mut periods: Vec<Period> = vec![];
    let mut lifetime_start: StatsView = coord.api.stats().await?;
    let mut period_start = Instant::now();
    let mut restart: Option<Restart> = None;
    let mut minute = 1;
    while start.elapsed() < total {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if start.elapsed() >= Duration::from_secs(60 * minute) {
            let (_, _, rss) = proc_usage(coord.pid()?)?;
            rss_by_minute.push((minute, rss));
            eprintln!(
                "minute {minute}: coordinator RSS {:.1} MiB, {} reconnects, {} jobs acknowledged",
                rss as f64 / 1048576.0,
                reconnects.load(Ordering::Relaxed),
                submitted.lock().unwrap_or_else(|p| p.into_inner()).len()
            );
            minute += 1;
        }
        let period_over = period_start.elapsed() >= period_len || start.elapsed() >= total;
        if !period_over {
            continue;
        }
        // The period ends: its latency window, then a restart (unless it was the last).
        let s1 = coord.api.stats().await?;
        let latency = s1.apply_latency_since(&lifetime_start);
        let (_, _, rss_end) = proc_usage(coord.pid()?)?;
        periods.push(Period {
            restart: restart.take(),
            p50_ms: latency.p50_us as f64 / 1000.0,
            p99_ms: latency.p99_us as f64 / 1000.0,
            beats: s1.beats_total.saturating_sub(lifetime_start.beats_total),
            rss_end,
        });
        if start.elapsed() + Duration::from_secs(5) >= total {
            break;
        }
        let known_before = known_nodes(&coord.api).await?;
        paused.store(true, Ordering::Relaxed);
        let away = coord.restart().await?;
        let known_after = known_nodes(&coord.api).await?;
        let all_ready_after = wait_all_ready(&coord.api, &names, Duration::from_secs(120)).await;
        let missing = not_ready(&coord.api, &names).await.unwrap_or(usize::MAX);
        if missing > 0 {
            let nodes: Vec<NodeView> = coord
                .api
                .get_json("/api/v1/nodes", "listing nodes")
                .await
                .unwrap_or_default();
            let mut by_state: std::collections::BTreeMap<String, usize> = Default::default();
            for n in nodes.iter().filter(|n| n.liveness != Liveness::Ready) {
                *by_state
                    .entry(format!("{:?} connected={}", n.liveness, n.connected))
                    .or_default() += 1;
            }
            eprintln!(
                "harness: {} connecting, {} in session; coordinator: {by_state:?}",
                phases.connecting.load(Ordering::Relaxed),
                phases.in_session.load(Ordering::Relaxed)
            );
            let log = std::fs::read_to_string(root.join("coordinator.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            eprintln!(
                "{missing} simulated agents not ready 120 s after restart {}; the coordinator's log ends:\n{}",
                periods.len(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        eprintln!(
            "restart {}: API away {away:?}, {known_after} of {known_before} nodes known at start, every agent ready {all_ready_after:?} after",
            periods.len()
        );
        paused.store(false, Ordering::Relaxed);
        restart = Some(Restart {
            away,
            all_ready_after,
            known_before,
            known_after,
        });
        lifetime_start = coord.api.stats().await?;
        period_start = Instant::now();
    }

    // The end: every agent back, then stop the load, let the jobs finish, count what
    // was lost.
    paused.store(true, Ordering::Relaxed);
    submitter.abort();
    let final_ready = wait_all_ready(&coord.api, &names, Duration::from_secs(60)).await;
    let not_ready = not_ready(&coord.api, &names).await?;
    all_stop.cancel();
    churn.abort();
    while tasks.try_join_next().is_some() {}
    let acknowledged = submitted.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let deadline = Instant::now() + Duration::from_secs(180);
    let (missing, unended) = loop {
        let mut missing = vec![];
        let mut unended = vec![];
        for id in &acknowledged {
            match coord
                .api
                .get_json::<JobView>(&format!("/api/v1/jobs/{id}"), "a job")
                .await
            {
                Ok(j) if j.state.as_ref().is_some_and(|s| s.is_terminal()) => {}
                Ok(j) => unended.push(format!(
                    "{id} ({}, {})",
                    j.state_word,
                    j.poll_error.unwrap_or_default()
                )),
                Err(e) => missing.push(format!("{id} ({e:#})")),
            }
        }
        if (missing.is_empty() && unended.is_empty()) || Instant::now() > deadline {
            break (missing, unended);
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    };
    for j in missing.iter().chain(&unended) {
        eprintln!("lost job: {j}");
    }
    let (missing, unended) = (missing.len(), unended.len());
    let _ = agent.kill().await;

    println!(
        "## bench soak: {} simulated agents + 1 real Slurm agent, {} min, churn {}%/s, restart every {} min, a job every {} s",
        a.agents, a.minutes, a.churn_percent, a.restart_every, a.submit_every
    );
    println!("first connect: every agent ready after {first_ready:?}");
    println!(
        "reconnects: {} ({} churned on purpose, the rest at restarts)",
        reconnects.load(Ordering::Relaxed),
        churned.load(Ordering::Relaxed)
    );
    println!("| period | beats applied | beat p50 | beat p99 | RSS at end | API away at its start | every agent ready after | nodes known before → after the restart |");
    println!("|---|---|---|---|---|---|---|---|");
    for (i, p) in periods.iter().enumerate() {
        let (away, ready, known) = match &p.restart {
            Some(r) => (
                format!("{:.1} s", r.away.as_secs_f64()),
                format!("{:.1} s", r.all_ready_after.as_secs_f64()),
                format!("{} → {}", r.known_before, r.known_after),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        println!(
            "| {} | {} | {:.2} ms | {:.2} ms | {:.1} MiB | {away} | {ready} | {known} |",
            i + 1,
            p.beats,
            p.p50_ms,
            p.p99_ms,
            p.rss_end as f64 / 1048576.0,
        );
    }
    let lost_at_restarts: usize = periods
        .iter()
        .filter_map(|p| p.restart)
        .map(|r| r.known_before.saturating_sub(r.known_after))
        .sum();
    println!(
        "nodes lost: {lost_at_restarts} at restarts; {not_ready} of {} simulated agents not ready at the end (waited {final_ready:?})",
        a.agents
    );
    println!(
        "jobs: {} acknowledged, {} refused while the coordinator restarted; lost: {missing} unknown, {unended} never ended",
        acknowledged.len(),
        refused.load(Ordering::Relaxed)
    );
    println!("coordinator RSS by minute (MiB):");
    println!(
        "{}",
        rss_by_minute
            .iter()
            .map(|(m, r)| format!("{m}:{:.1}", *r as f64 / 1048576.0))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let _ = coord.child.kill().await;
    Ok(())
}

async fn known_nodes(api: &ApiClient) -> Result<usize> {
    let nodes: Vec<NodeView> = api.get_json("/api/v1/nodes", "listing nodes").await?;
    Ok(nodes.len())
}

async fn not_ready(api: &ApiClient, names: &[String]) -> Result<usize> {
    let nodes: Vec<NodeView> = api.get_json("/api/v1/nodes", "listing nodes").await?;
    let ready: std::collections::HashSet<&str> = nodes
        .iter()
        .filter(|n| n.liveness == Liveness::Ready)
        .map(|n| n.name.as_str())
        .collect();
    Ok(names.iter().filter(|n| !ready.contains(n.as_str())).count())
}

/// Waits until every one of `names` is `ready`; returns how long that took (`within` at
/// most).
async fn wait_all_ready(api: &ApiClient, names: &[String], within: Duration) -> Duration {
    let t = Instant::now();
    while t.elapsed() < within {
        if matches!(not_ready(api, names).await, Ok(0)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    t.elapsed()
}
