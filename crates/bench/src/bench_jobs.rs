//! `corral-bench submit`: what going through corral costs on a real Slurm, in one run.
//!
//! Setup: a coordinator in this process (the real code: API, job table, SQLite, QUIC)
//! and a real `corral agent` child process loading the real scheduler plugin (default
//! `slurm`) from the plugins directory, both on loopback, against the Slurm this machine
//! already runs (`sinfo` must answer; the harness does not start Slurm).
//!
//! 1. *Submission*, interleaved per round so drift hits every method alike (the order
//!    rotates each round, and a first round is a discarded warm-up):
//!    - `corral submit` (the CLI process, through the HTTP API, the coordinator, QUIC,
//!      the agent, the sandboxed plugin, to `sbatch`), end to end;
//!    - the same submission as one HTTP request from this process (no CLI start-up);
//!    - plain `sbatch` fed the very script corral renders for that job (`--dry-run`),
//!      with the arguments the plugin passes (read from the script's `# corral:`
//!      comment line when present, else `--parsable`): the floor.
//!
//!    Reported: median, p90 and mean wall time of each, and corral's overhead. Two
//!    probes share the rotation: `corral --version` and `sbatch --version`, what
//!    starting and ending each client process costs alone.
//! 2. *Polling*: jobs are submitted through the coordinator until `--poll-jobs`
//!    (default 1000) are tracked (every job of the run is a queued `sleep`), then
//!    `--polls` full polls are timed (each must be one `status` call carrying every id),
//!    interleaved with the routed `status` call alone (coordinator, QUIC, agent, plugin,
//!    squeue and back, without applying the answers to the job table) and with plain
//!    `squeue -j ID,...` over the same ids.
//!
//! The machine's load average is printed with the figures: on a busy machine every hop
//! of the corral path waits for a CPU, so compare figures taken under similar load. The
//! in-process coordinator logs like the daemon; `CORRAL_LOG=warn` keeps the output to the
//! figures. Everything submitted is cancelled with `scancel` at the end (by the ids this
//! run got; nothing else in the queue is touched), and the agent and coordinator are
//! stopped.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::bench::bench_pki;
use corral::cli::ApiClient;
use corral_coordinator::config::{ApiSection, JobsSection};
use corral_coordinator::jobs::{Scope, Submitted};
use corral_coordinator::registry::Settings;
use corral_coordinator::CoordinatorOptions;
use corral_proto::api::{JobView, Rendered, SubmitRequest};
use corral_proto::job::JobSpec;
use corral_transport::pki::Role;

#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// Measured submissions per method (after one warm-up round).
    #[arg(long, default_value_t = 30)]
    runs: usize,
    /// Jobs tracked for the poll measurement (0: skip it).
    #[arg(long, default_value_t = 1000)]
    poll_jobs: usize,
    /// Polls measured.
    #[arg(long, default_value_t = 10)]
    polls: usize,
    /// Where PLUGIN.wasm and PLUGIN.toml are (default: $CORRAL_PLUGINS_DIR, else the
    /// `plugins` folder of the target dir this binary was built in).
    #[arg(long, env = "CORRAL_PLUGINS_DIR")]
    plugins_dir: Option<PathBuf>,
    /// The scheduler plugin to measure; the comparison programs are Slurm's.
    #[arg(long, default_value = "slurm")]
    plugin: String,
}

/// `<target>/plugins` for a binary in `<target>/<profile>/corral`.
pub(crate) fn default_plugins_dir() -> Result<PathBuf> {
    let exe = crate::bench::corral_exe()?;
    let target = exe
        .parent()
        .and_then(Path::parent)
        .context("cannot tell the target dir of this binary; pass --plugins-dir")?;
    Ok(target.join("plugins"))
}

/// Runs a scheduler client program; its stdout, or an error naming the command.
pub(crate) async fn run_ok(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {program} (is Slurm installed and on PATH?)"))?;
    ensure!(
        out.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Median, p90 and mean of durations, in milliseconds.
fn summary(samples: &[Duration]) -> (f64, f64, f64) {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    if ms.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.9), ms.iter().sum::<f64>() / ms.len() as f64)
}

fn line(what: &str, samples: &[Duration]) -> String {
    let (p50, p90, mean) = summary(samples);
    format!(
        "{what:<34} median {p50:7.1} ms   p90 {p90:7.1} ms   mean {mean:7.1} ms   (n={})",
        samples.len()
    )
}

pub async fn run(a: SubmitArgs) -> Result<()> {
    ensure!(a.runs > 0, "--runs must be at least 1");
    run_ok("sinfo", &["-h", "-o", "%T"]).await.context(
        "`corral-bench submit` needs a running Slurm on this machine (sinfo must answer)",
    )?;
    let plugins_dir = match a.plugins_dir.clone() {
        Some(d) => d,
        None => default_plugins_dir()?,
    };
    let wasm = plugins_dir.join(format!("{}.wasm", a.plugin));
    ensure!(
        wasm.exists(),
        "{} not found; build the plugins with `cargo xtask plugins` or pass --plugins-dir",
        wasm.display()
    );

    let dir = tempfile::tempdir()?;
    let tls = dir.path().join("tls");
    let ca = bench_pki(&tls)?;
    ca.issue_to_dir("bench-jobs", Role::Agent, &[], 2, &tls)?;
    let coordinator = corral_coordinator::start(CoordinatorOptions {
        listen: "127.0.0.1:0".parse()?,
        state_dir: dir.path().join("state"),
        settings: Settings {
            disconnect_after_beats: 3,
            down_after: Duration::from_secs(15),
            persist_every: Duration::from_secs(60),
            event_retention: 1000,
        },
        max_frame_bytes: corral_proto::wire::DEFAULT_MAX_FRAME_BYTES,
        api: ApiSection {
            listen: "127.0.0.1:0".parse()?,
            socket: dir.path().join("api.sock"),
            ..ApiSection::default()
        },
        access: Default::default(),
        tls: corral_transport::pki::TlsFiles {
            ca: tls.join("ca.pem"),
            cert: tls.join("coordinator.pem"),
            key: tls.join("coordinator.key"),
            crl: None,
        },
        // The poll phase drives polls itself; the background poller stays out of the way.
        jobs: JobsSection {
            poll_interval: Duration::from_secs(3600),
            max_backoff: Duration::from_secs(3600),
            ..JobsSection::default()
        },
        authority: corral_coordinator::config::Authority::new(
            vec![],
            [(a.plugin.clone(), vec!["bench-jobs".to_string()])].into(),
        ),
        remediation: corral_coordinator::config::RemediationSection {
            enabled: false,
            ..Default::default()
        },
        schedulers: Default::default(),
        pools: Default::default(),
        providers: Default::default(),
        join: None,
    })
    .await?;
    let shared = coordinator.shared.clone();
    // The harness is someone on the socket (the CLI's way in on the coordinator host).
    let api_url = dir.path().join("api.sock").display().to_string();

    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "[agent]\nname = \"bench-jobs\"\ncoordinator = \"{}\"\nserver_name = \"localhost\"\n[tls]\nca = \"tls/ca.pem\"\ncert = \"tls/bench-jobs.pem\"\nkey = \"tls/bench-jobs.key\"\n[plugins]\ndir = \"{}\"\nenable = [\"{}\"]\ncache_dir = \"cache\"\n{}",
            coordinator.quic_addr,
            plugins_dir.display(),
            a.plugin,
            // `corral submit` and `sbatch` both run as the harness's user here, root
            // included: the comparison is of the paths, not of who may submit.
            format_args!(
                "service_user = {:?}\nmin_job_uid = 0\nallow_root_jobs = true\n",
                corral_sandbox::identity::User::current()?.name
            )
        ),
    )?;
    let agent_log = dir.path().join("agent.log");
    let log = std::fs::File::create(&agent_log)?;
    let mut agent = Command::new(crate::bench::corral_exe()?)
        .args(["agent", "--config"])
        .arg(&cfg)
        .env("CORRAL_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("starting the agent")?;
    let deadline = Instant::now() + Duration::from_secs(180);
    while shared.registry.plugin_hosts(&a.plugin).is_empty() {
        if Instant::now() > deadline || agent.try_wait()?.is_some() {
            bail!(
                "the agent did not announce the {} plugin within 180s; its log:\n{}",
                a.plugin,
                std::fs::read_to_string(&agent_log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut native_ids: Vec<String> = vec![];
    let outcome = measure(&a, &shared, &api_url, &mut native_ids).await;

    // Clean up whatever happened: every job this run submitted is cancelled.
    native_ids.extend(
        shared
            .jobs
            .list()
            .into_iter()
            .filter_map(|j: JobView| j.native_id),
    );
    for chunk in native_ids.chunks(500) {
        let ids: Vec<&str> = chunk.iter().map(String::as_str).collect();
        if let Err(e) = run_ok("scancel", &ids).await {
            eprintln!("cleanup: {e:#}");
        }
    }
    let _ = agent.kill().await;
    coordinator.stop().await;
    outcome
}

async fn measure(
    a: &SubmitArgs,
    shared: &std::sync::Arc<corral_coordinator::Shared>,
    api_url: &str,
    sbatch_ids: &mut Vec<String>,
) -> Result<()> {
    // Jobs that stay in the queue: one that left it would cost the Slurm plugin extra
    // commands (scontrol, sacct) at every later poll and skew the poll measurement.
    let spec = JobSpec {
        name: Some("corral-bench".into()),
        executable: "/bin/sleep".into(),
        arguments: vec!["600".into()],
        ..Default::default()
    };
    let request = |dry_run| SubmitRequest {
        scheduler: a.plugin.clone(),
        spec: spec.clone(),
        via: None,
        dry_run,
    };
    let api = ApiClient::for_socket(std::path::Path::new(api_url))?;
    let rendered: Rendered = api
        .post_json(
            "/api/v1/jobs",
            Some(&request(true)),
            Duration::from_secs(60),
            "dry run",
        )
        .await?;
    let sbatch_args = sbatch_args_of(&rendered.script);
    let exe = crate::bench::corral_exe()?;

    let mut cli = vec![];
    let mut http = vec![];
    let mut plain = vec![];
    let mut cli_start = vec![];
    let mut sbatch_start = vec![];
    eprintln!(
        "submitting: {} measured rounds of 3 methods (and 2 start-up probes)",
        a.runs
    );
    for round in 0..=a.runs {
        for k in 0..METHODS {
            let method = (round + k) % METHODS;
            let started = Instant::now();
            match method {
                3 | 4 => {
                    // What starting each client program costs alone: the share of an
                    // end-to-end submission that is process start-up and exit.
                    let (program, samples) = if method == 3 {
                        (exe.as_os_str(), &mut cli_start)
                    } else {
                        (std::ffi::OsStr::new("sbatch"), &mut sbatch_start)
                    };
                    let out = Command::new(program)
                        .arg("--version")
                        .env("CORRAL_LOG", "warn")
                        .stdin(Stdio::null())
                        .output()
                        .await
                        .with_context(|| format!("running {program:?} --version"))?;
                    ensure!(out.status.success(), "{program:?} --version failed");
                    if round > 0 {
                        samples.push(started.elapsed());
                    }
                }
                0 => {
                    let out = Command::new(&exe)
                        .args([
                            "submit",
                            "--scheduler",
                            &a.plugin,
                            "--name",
                            "corral-bench",
                            "--socket",
                            api_url,
                            "--",
                            "/bin/sleep",
                            "600",
                        ])
                        .env("CORRAL_LOG", "warn")
                        .stdin(Stdio::null())
                        .output()
                        .await?;
                    ensure!(
                        out.status.success(),
                        "corral submit failed: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    if round > 0 {
                        cli.push(started.elapsed());
                    }
                }
                1 => {
                    let _: JobView = api
                        .post_json(
                            "/api/v1/jobs",
                            Some(&request(false)),
                            Duration::from_secs(60),
                            "submit",
                        )
                        .await?;
                    if round > 0 {
                        http.push(started.elapsed());
                    }
                }
                _ => {
                    let mut child = Command::new("sbatch")
                        .args(&sbatch_args)
                        .stdin(Stdio::piped())
                        .stdout(Stdio::piped())
                        .stderr(Stdio::piped())
                        .spawn()
                        .context("running sbatch")?;
                    let mut stdin = child.stdin.take().context("sbatch stdin")?;
                    stdin.write_all(rendered.script.as_bytes()).await?;
                    drop(stdin);
                    let out = child.wait_with_output().await?;
                    ensure!(
                        out.status.success(),
                        "sbatch failed: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    if round > 0 {
                        plain.push(started.elapsed());
                    }
                    let id = String::from_utf8_lossy(&out.stdout);
                    sbatch_ids.push(id.trim().split(';').next().unwrap_or("").to_string());
                }
            }
        }
    }
    let (cli_p50, _, _) = summary(&cli);
    let (http_p50, _, _) = summary(&http);
    let (plain_p50, _, _) = summary(&plain);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "## bench submit: {} through corral vs plain sbatch, {} rounds (interleaved, after a warm-up); load average {}, {} CPUs",
        a.plugin,
        a.runs,
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("{}", line("corral submit (CLI, end to end)", &cli));
    println!("{}", line("corral API (one HTTP request)", &http));
    println!("{}", line("plain sbatch (same script)", &plain));
    println!("{}", line("  start-up alone: corral --version", &cli_start));
    println!(
        "{}",
        line("  start-up alone: sbatch --version", &sbatch_start)
    );
    println!(
        "corral submit vs sbatch (median):   {:+.1}%  ({:+.1} ms; via the API alone {:+.1}%)",
        (cli_p50 / plain_p50 - 1.0) * 100.0,
        cli_p50 - plain_p50,
        (http_p50 / plain_p50 - 1.0) * 100.0
    );

    if a.poll_jobs == 0 {
        return Ok(());
    }
    // Top the tracked jobs up to --poll-jobs (the submission phase left some).
    let already = shared
        .jobs
        .list()
        .iter()
        .filter(|j| !j.is_finished())
        .count();
    let more = a.poll_jobs.saturating_sub(already);
    eprintln!(
        "submitting {more} more jobs to track {} in all",
        a.poll_jobs
    );
    let sleeper = JobSpec {
        name: Some("corral-bench-poll".into()),
        ..spec.clone()
    };
    let me = corral_sandbox::identity::User::current()?.name;
    let t = Instant::now();
    for i in 0..more {
        let submitted = shared
            .jobs
            .submit(
                &me,
                SubmitRequest {
                    scheduler: a.plugin.clone(),
                    spec: sleeper.clone(),
                    via: None,
                    dry_run: false,
                },
            )
            .await
            .map_err(|e| anyhow::anyhow!("submitting poll job {i}: {e}"))?;
        let Submitted::Job(job) = submitted else {
            bail!("a dry run where a submission was asked");
        };
        ensure!(job.native_id.is_some(), "{} has no native id", job.id);
        if (i + 1) % 250 == 0 {
            eprintln!("  {} submitted ({:.1}s)", i + 1, t.elapsed().as_secs_f64());
        }
    }
    let tracked: Vec<String> = shared
        .jobs
        .list()
        .into_iter()
        .filter(|j| !j.is_finished())
        .filter_map(|j| j.native_id)
        .collect();
    let id_list = tracked.join(",");
    let node = shared
        .registry
        .plugin_hosts(&a.plugin)
        .into_iter()
        .next()
        .context("the agent left")?;
    let mut polls = vec![];
    let mut routed = vec![];
    let mut squeues = vec![];
    let mut calls = vec![];
    for _ in 0..a.polls {
        let started = Instant::now();
        let report = shared.jobs.poll(Scope::All).await;
        polls.push(started.elapsed());
        ensure!(
            report.failed_groups == 0,
            "a poll failed: {:?}",
            shared.jobs.list().iter().find_map(|j| j.poll_error.clone())
        );
        calls.push((report.calls, report.jobs));
        // The same status call alone: coordinator → agent → plugin → squeue and back.
        let started = Instant::now();
        let reply = shared
            .jobs
            .call(
                &node,
                &a.plugin,
                corral_proto::job::PluginCall::Status(tracked.clone()),
                None,
            )
            .await;
        routed.push(started.elapsed());
        ensure!(reply.is_ok(), "the status call failed: {:?}", reply.err());
        let started = Instant::now();
        run_ok("squeue", &["-h", "-j", &id_list, "-o", "%i %T"]).await?;
        squeues.push(started.elapsed());
    }
    println!(
        "## bench submit: one poll of {} tracked jobs ({} polls)",
        tracked.len(),
        a.polls
    );
    println!(
        "status calls per poll:              {:?} (calls, jobs asked)",
        calls.first().copied().unwrap_or_default()
    );
    println!("{}", line("corral poll (status call + apply)", &polls));
    println!("{}", line("  of which: the routed status call", &routed));
    println!("{}", line("plain squeue -j (same ids)", &squeues));
    Ok(())
}

/// Submission methods (0–2) and start-up probes (3, 4) in the rotation of each round.
const METHODS: usize = 5;

/// The sbatch arguments the Slurm plugin put in its script's `# corral: [...]` line, or
/// `--parsable` alone.
fn sbatch_args_of(script: &str) -> Vec<String> {
    script
        .lines()
        .find_map(|l| l.strip_prefix("# corral: "))
        .and_then(|argv| serde_json::from_str::<Vec<String>>(argv).ok())
        .and_then(|argv| {
            (argv.first().map(String::as_str) == Some("sbatch")).then(|| argv[1..].to_vec())
        })
        .unwrap_or_else(|| vec!["--parsable".into()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sbatch_arguments_come_from_the_rendered_script() {
        let script = "#!/bin/sh\n# corral: [\"sbatch\", \"--parsable\", \"--job-name=corral-bench\"]\nexec '/bin/true'\n";
        assert_eq!(
            sbatch_args_of(script),
            ["--parsable", "--job-name=corral-bench"]
        );
        assert_eq!(sbatch_args_of("#!/bin/sh\ntrue\n"), ["--parsable"]);
    }

    #[test]
    fn summary_takes_median_p90_and_mean() {
        let d: Vec<Duration> = (1..=10).map(Duration::from_millis).collect();
        let (p50, p90, mean) = summary(&d);
        assert_eq!((p50.round(), p90, mean), (6.0, 9.0, 5.5));
        assert_eq!(summary(&[]), (0.0, 0.0, 0.0));
    }
}
