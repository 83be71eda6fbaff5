//! The `corral` command line: daemons, `corral dev`, certificates, config checks, and the
//! client commands that read the coordinator's HTTP API (with `corral_proto::api`
//! types only). The load harnesses are the separate `corral-bench` binary.
//!
//! Exit codes (stable, for scripts): 0 success; 1 error; 2 usage error (from clap);
//! 3 the coordinator API cannot be reached; 4 the named node, job, scheduler or
//! certificate (`corral certs revoke`) does not exist.

mod access;
mod authoring;
mod certs;
mod client;
mod dev;
mod generate;
mod jobs;
mod pools;
mod remediation;
mod show;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::Config;

pub use client::ApiClient;

#[derive(Parser, Debug)]
#[command(
    name = "corral",
    version,
    about = "Node agent and coordinator for GPU and HPC clusters"
)]
pub struct Cli {
    /// Log format of the daemons (text for terminals, json for log shippers).
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Args, Debug, Clone, Default)]
pub struct ApiArgs {
    /// Coordinator HTTP API base URL, e.g. https://head-01:7441 (default: the Unix
    /// socket, see --socket).
    #[arg(long, env = "CORRAL_API", global = true)]
    pub api: Option<String>,
    /// The coordinator's Unix socket on this host: the kernel tells the coordinator who
    /// you are, so no token is needed (default: /run/corral/api.sock).
    #[arg(long, env = "CORRAL_SOCKET", global = true)]
    pub socket: Option<PathBuf>,
    /// File holding an API bearer token (or set CORRAL_TOKEN); see `corral tokens`.
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
    /// CA certificate to trust for an HTTPS API.
    #[arg(long, global = true)]
    pub api_ca: Option<PathBuf>,
    /// Operator certificate to log in to an HTTPS API with (`corral certs issue --role
    /// operator`); needs --api-key.
    #[arg(long, global = true, requires = "api_key")]
    pub api_cert: Option<PathBuf>,
    /// The operator certificate's key.
    #[arg(long, global = true, requires = "api_cert")]
    pub api_key: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Coordinator and agent in one process on this machine, with fresh certificates and
    /// an embedded database (like `nomad agent -dev`).
    Dev(dev::DevArgs),
    /// Run the coordinator daemon (or check its database with --check-db).
    Coordinator {
        #[arg(long, short)]
        config: PathBuf,
        /// Run the full integrity check of the database in `state_dir` (read-only, safe
        /// beside a running coordinator), print what it found, and exit: 0 when a
        /// coordinator of this version would start on it, 1 when not.
        #[arg(long)]
        check_db: bool,
    },
    /// Run the agent daemon (or sample once with --once).
    Agent {
        #[arg(long, short, required_unless_present = "once")]
        config: Option<PathBuf>,
        /// Sample this node once, print the report as JSON, and exit (no coordinator needed).
        #[arg(long)]
        once: bool,
        /// With --once: the output is JSON (the only format; accepted for scripts that say so).
        #[arg(long, requires = "once")]
        json: bool,
    },
    /// Configuration files.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Cluster CA and certificates.
    #[command(subcommand)]
    Certs(certs::CertsCmd),
    /// List every node.
    Nodes {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Show one node in full.
    Node {
        name: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Liveness and health events, oldest first.
    Events {
        /// Only this node's events.
        #[arg(long)]
        node: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Cordon a node and drain it in its schedulers and Ray, now (admin).
    Drain(remediation::DrainArgs),
    /// Lift what corral drained of a node, now (admin).
    Resume(remediation::ResumeArgs),
    /// The remediation policy: status, pause, resume.
    #[command(subcommand)]
    Remediation(remediation::RemediationCmd),
    /// Node pools: their size, state and provider (`corral pool NAME` for one).
    Pools(pools::PoolsArgs),
    /// One pool: its nodes, their provider states and recent actions; or pause/resume it.
    Pool(pools::PoolArgs),
    /// Join a pool with a join token: make this node's key, get its certificate, write
    /// an agent config (`corral tokens create --join` makes tokens).
    Join(pools::JoinArgs),
    /// Round trip through a node's command channel.
    Ping {
        name: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Who the API takes you for (user, role, and how you were recognised).
    Whoami(access::WhoamiArgs),
    /// API bearer tokens (admin): create, list, revoke.
    #[command(subcommand)]
    Tokens(access::TokensCmd),
    /// Submit a job through a scheduler plugin: `corral submit --scheduler slurm -- CMD ARGS...`.
    Submit(Box<jobs::SubmitArgs>),
    /// List the jobs the coordinator tracks.
    Jobs(jobs::JobsArgs),
    /// Show one job with its state history.
    Status(jobs::JobArgs),
    /// Cancel a job (one that already ended is not an error).
    Cancel(jobs::JobArgs),
    /// List every node's scheduler plugins, with their grants and load failures.
    Plugins(jobs::PluginsArgs),
    /// Scheduler plugin files.
    #[command(subcommand)]
    Plugin(jobs::PluginCmd),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(generate::CompletionsArgs),
    /// Man pages: corral.1 on stdout, or every page into --out DIR (for packaging).
    #[command(hide = true)]
    Man(generate::ManArgs),
}

#[derive(Subcommand, Debug)]
enum ConfigCmd {
    /// Validate a config file; exits non-zero naming the file, key and problem.
    Check { file: PathBuf },
}

/// An error with a specific exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Exit {
    pub code: u8,
    pub message: String,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    // A client command makes one request or two: one thread, no hand-offs between
    // threads, is the quickest start and answer (`corral submit` is timed against
    // `sbatch` in `corral-bench submit`).
    let client = matches!(
        cli.command,
        Cmd::Nodes { .. }
            | Cmd::Node { .. }
            | Cmd::Events { .. }
            | Cmd::Ping { .. }
            | Cmd::Submit(_)
            | Cmd::Jobs(_)
            | Cmd::Status(_)
            | Cmd::Cancel(_)
            | Cmd::Plugins(_)
            | Cmd::Whoami(_)
            | Cmd::Tokens(_)
            | Cmd::Drain(_)
            | Cmd::Resume(_)
            | Cmd::Remediation(_)
            | Cmd::Pools(_)
            | Cmd::Pool(_)
            | Cmd::Join(_)
    );
    let mut builder = if client {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    // The agent's async work is a handful of timers and one connection: two workers are
    // plenty, and a 128-core node should not get 128 idle threads from its health agent.
    if matches!(cli.command, Cmd::Agent { .. }) {
        builder.worker_threads(2);
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = e.downcast_ref::<Exit>().map_or(1, |x| x.code);
            // Under journald, `<3>` makes this an error-priority entry.
            let prefix = if corral_base::systemd::stderr_is_journal() {
                "<3>"
            } else {
                ""
            };
            eprintln!("{prefix}error: {e:#}");
            ExitCode::from(code)
        }
    }
}

/// Logs to stderr through tracing (`CORRAL_LOG` filters; journal-shaped under systemd).
pub fn init_logging(format: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("CORRAL_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // journald stamps and prioritises lines itself; colours only help a terminal.
    let journal = corral_base::systemd::stderr_is_journal();
    let colour = !journal
        && std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour);
    if format == "json" {
        builder.json().init();
    } else if journal {
        builder
            .event_format(corral_base::systemd::JournalFormat::default())
            .init();
    } else {
        builder.init();
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// `corral coordinator --check-db`: prints the database's version, integrity, row
/// counts and backups; fails when a coordinator would not start on it.
fn check_database(state_dir: &std::path::Path) -> Result<()> {
    let r = corral_coordinator::check_database(state_dir)?;
    println!("database: {}", r.path.display());
    let version_note = match r.version.cmp(&r.known) {
        std::cmp::Ordering::Less => " (older: migrated at the next start, after a backup)",
        std::cmp::Ordering::Equal => "",
        std::cmp::Ordering::Greater => " (newer than this corral: it will not start on it)",
    };
    println!(
        "schema version: {} (this corral writes {}){version_note}",
        r.version, r.known
    );
    if r.problems.is_empty() {
        println!("integrity: ok");
    } else {
        println!("integrity: DAMAGED");
        for p in &r.problems {
            println!("  {p}");
        }
    }
    for (table, n) in &r.counts {
        println!("{table}: {n} rows");
    }
    match r.backups.as_slice() {
        [] => println!("backups: none beside it"),
        all => {
            println!("backups (newest first):");
            for b in all {
                println!("  {}", b.display());
            }
        }
    }
    if !r.usable() {
        anyhow::bail!(
            "a coordinator will not start on {}: {}",
            r.path.display(),
            if r.problems.is_empty() {
                "it was written by a newer corral; run that version or restore a backup"
            } else {
                "restore a backup over it, or move it aside (with its -wal and -shm files) to start with an empty state"
            }
        );
    }
    Ok(())
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Cmd::Dev(args) => dev::run(args).await,
        Cmd::Coordinator { config, check_db } => {
            let cfg = Config::load(&config)?;
            let opts = cfg.coordinator_options()?;
            if check_db {
                return check_database(&opts.state_dir);
            }
            let running = corral_coordinator::start(opts).await?;
            shutdown_signal().await;
            tracing::info!("shutting down");
            running.stop().await;
            Ok(())
        }
        Cmd::Agent { config, once, .. } => {
            let cfg = config.as_deref().map(Config::load).transpose()?;
            if once {
                let name = match cfg.as_ref().and_then(|c| c.agent.as_ref()) {
                    Some(a) => a.node_name()?,
                    None => corral_node::config::default_node_name()?,
                };
                let (health, gpu) = cfg.map(|c| (c.health, c.gpu)).unwrap_or_default();
                let report = tokio::task::spawn_blocking(move || {
                    corral_node::session::sample_once(&name, &health, &gpu)
                })
                .await??;
                println!("{}", serde_json::to_string_pretty(&report)?);
                return Ok(());
            }
            let cfg = cfg.context("--config is required")?;
            let opts = cfg.agent_options()?;
            // Time to close the connection, plus time for Ray to stop (SIGTERM, grace,
            // SIGKILL, sweep) so no process of ours outlives the agent.
            let stop_within = std::time::Duration::from_secs(5)
                + opts.ray.as_ref().map_or(std::time::Duration::ZERO, |r| {
                    r.stop_grace + std::time::Duration::from_secs(10)
                });
            let shutdown = CancellationToken::new();
            let mut agent = tokio::spawn(corral_node::session::run(opts, shutdown.clone()));
            tokio::select! {
                _ = shutdown_signal() => {
                    tracing::info!("shutting down");
                    shutdown.cancel();
                    // Let the agent tell the coordinator it is leaving (a clean close is
                    // seen at once; a vanished agent only after missed beats).
                    match tokio::time::timeout(stop_within, &mut agent).await {
                        Ok(r) => r.context("agent task")?,
                        Err(_) => Ok(()),
                    }
                }
                r = &mut agent => r.context("agent task")?,
            }
        }
        Cmd::Config(ConfigCmd::Check { file }) => {
            let cfg = Config::load(&file)?;
            println!("{}: ok ({})", file.display(), cfg.describe());
            Ok(())
        }
        Cmd::Certs(cmd) => certs::run(cmd),
        Cmd::Drain(a) => remediation::drain(a).await,
        Cmd::Resume(a) => remediation::resume(a).await,
        Cmd::Remediation(cmd) => remediation::run(cmd).await,
        Cmd::Pools(a) => pools::pools(a).await,
        Cmd::Pool(a) => pools::pool(a).await,
        Cmd::Join(a) => pools::join(a).await,
        Cmd::Nodes { json, api } => {
            let nodes = ApiClient::new(&api)?.nodes().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&nodes)?);
            } else {
                print!(
                    "{}",
                    show::nodes_table(&nodes, corral_proto::model::unix_ms())
                );
            }
            Ok(())
        }
        Cmd::Node { name, json, api } => {
            let node = ApiClient::new(&api)?.node(&name).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&node)?);
            } else {
                print!(
                    "{}",
                    show::node_detail(&node, corral_proto::model::unix_ms())
                );
            }
            Ok(())
        }
        Cmd::Events {
            node,
            limit,
            json,
            api,
        } => {
            let events = ApiClient::new(&api)?.events(node.as_deref(), limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&events)?);
            } else {
                print!("{}", show::events_table(&events));
            }
            Ok(())
        }
        Cmd::Ping { name, json, api } => {
            let rtt_us = ApiClient::new(&api)?.ping(&name).await?;
            if json {
                println!("{}", serde_json::json!({ "node": name, "rtt_us": rtt_us }));
            } else {
                println!(
                    "{name}: command round trip {:.2} ms",
                    rtt_us as f64 / 1000.0
                );
            }
            Ok(())
        }
        Cmd::Whoami(a) => access::whoami(a).await,
        Cmd::Tokens(cmd) => access::tokens(cmd).await,
        Cmd::Submit(a) => jobs::submit(*a).await,
        Cmd::Jobs(a) => jobs::jobs(a).await,
        Cmd::Status(a) => jobs::status(a).await,
        Cmd::Cancel(a) => jobs::cancel(a).await,
        Cmd::Plugins(a) => jobs::plugins(a).await,
        Cmd::Plugin(cmd) => jobs::plugin(cmd).await,
        Cmd::Completions(args) => generate::completions(args),
        Cmd::Man(args) => generate::man(args),
    }
}
