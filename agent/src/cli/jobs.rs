//! `corral submit`, `jobs`, `status`, `cancel`, `plugins` and `plugin check`: jobs
//! through the coordinator's HTTP API, and the scheduler plugins the agents host.
//!
//! Invariants:
//! - The command after `--` reaches the scheduler as an argument vector, literally: no
//!   layer between here and the scheduler's argv interprets shell syntax, so names and
//!   arguments with quotes, `$`, `;` or backticks are data.
//! - Job options mirror [`JobSpec`]; sizes and durations accept the forms people type
//!   (`4G`, `512M`; `1h30m`, `01:30:00`, `2-00:00:00`) and refuse the ambiguous ones (a
//!   bare `30` is minutes to Slurm and seconds to PBS) with the fix in the message.
//! - Job ids are corral's (`c17`); `--after-ok c17` is translated to the native id by the
//!   coordinator. A malformed id is a usage error (exit 2), an unknown one exit 4.
//! - Every listing takes `--json` (the API's own JSON, for scripts).
//! - The text views are tables of columns and fields, as in `show` (`corral jobs` is
//!   [`JOB_COLUMNS`], `corral status` is [`JOB_FIELDS`] and [`HISTORY_COLUMNS`]): adding
//!   a field is one entry. `corral plugins` stays hand-built: a node has a row per plugin,
//!   and rows of different kinds have different cells.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};

use super::show::{age, listing, table, write_fields, Column, Field, Layout};
use super::{ApiArgs, ApiClient};
use corral_proto::api::{JobId, JobView, NodePlugins, Rendered, SubmitRequest, Transition};
use corral_proto::job::{Dependency, DependencyKind, JobArray, JobSpec, JobState, LoadedPlugin};
use corral_proto::model::unix_ms;

/// How long the CLI waits for calls that run a scheduler command (the coordinator's own
/// `jobs.call_timeout` ends them sooner).
const CALL_WAIT: Duration = Duration::from_secs(600);

#[derive(Args, Debug)]
pub(super) struct SubmitArgs {
    /// The scheduler plugin to submit through, as `corral plugins` lists them (e.g. slurm).
    #[arg(long)]
    scheduler: String,
    /// Job name.
    #[arg(long)]
    name: Option<String>,
    /// Number of nodes.
    #[arg(long)]
    nodes: Option<u32>,
    #[arg(long)]
    tasks_per_node: Option<u32>,
    #[arg(long)]
    cpus_per_task: Option<u32>,
    /// GPUs per node.
    #[arg(long)]
    gpus: Option<u32>,
    /// Memory per node: 4G, 512M, 1.5T, or a plain number of MiB (binary units, as
    /// schedulers count them).
    #[arg(long, value_parser = parse_memory_mb, value_name = "SIZE")]
    memory: Option<u64>,
    /// Wall-clock limit: 1h30m, 90m, 2d, or HH:MM:SS, D-HH:MM:SS.
    #[arg(long, value_parser = parse_walltime, value_name = "DURATION")]
    time: Option<u64>,
    /// Queue (Slurm: partition).
    #[arg(long)]
    queue: Option<String>,
    #[arg(long)]
    account: Option<String>,
    #[arg(long)]
    reservation: Option<String>,
    /// A job array: FIRST[-LAST[:STEP]][%MAX_RUNNING], e.g. 1-10:2%3.
    #[arg(long, value_parser = parse_array, value_name = "RANGE")]
    array: Option<JobArray>,
    /// Start after corral job JOB started (repeatable).
    #[arg(long, value_parser = parse_job_id, value_name = "JOB")]
    after_start: Vec<JobId>,
    /// Start after corral job JOB succeeded (repeatable).
    #[arg(long, value_parser = parse_job_id, value_name = "JOB")]
    after_ok: Vec<JobId>,
    /// Start after corral job JOB failed (repeatable).
    #[arg(long, value_parser = parse_job_id, value_name = "JOB")]
    after_not_ok: Vec<JobId>,
    /// Start after corral job JOB ended, however it ended (repeatable).
    #[arg(long, value_parser = parse_job_id, value_name = "JOB")]
    after_any: Vec<JobId>,
    /// An environment variable for the job (repeatable).
    #[arg(long, value_parser = parse_kv, value_name = "K=V")]
    env: Vec<(String, String)>,
    /// A scheduler-specific setting passed through (repeatable), e.g. slurm.constraint=a100.
    #[arg(long, value_parser = parse_kv, value_name = "K=V")]
    attr: Vec<(String, String)>,
    /// Working directory of the job (a path on the cluster).
    #[arg(long, value_name = "DIR")]
    chdir: Option<String>,
    /// File the job reads as stdin.
    #[arg(long, value_name = "FILE")]
    stdin: Option<String>,
    /// File for the job's stdout (scheduler patterns such as %j allowed).
    #[arg(long, value_name = "FILE")]
    stdout: Option<String>,
    /// File for the job's stderr.
    #[arg(long, value_name = "FILE")]
    stderr: Option<String>,
    /// Submit through this node's plugin (default: the first connected node hosting it).
    #[arg(long, value_name = "NODE")]
    via: Option<String>,
    /// Print the script the scheduler would get; submit and record nothing.
    #[arg(long)]
    dry_run: bool,
    #[arg(long)]
    json: bool,
    /// The program and its arguments, after `--`, passed literally (never through a shell).
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Args, Debug)]
pub(super) struct JobsArgs {
    /// Only the jobs you submitted.
    #[arg(long, conflicts_with = "owner")]
    mine: bool,
    /// Only the jobs USER submitted.
    #[arg(long, value_name = "USER")]
    owner: Option<String>,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Args, Debug)]
pub(super) struct JobArgs {
    /// A corral job id, e.g. c17.
    #[arg(value_parser = parse_job_id)]
    job: JobId,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Args, Debug)]
pub(super) struct PluginsArgs {
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Subcommand, Debug)]
pub(super) enum PluginCmd {
    /// Validate a plugin component against the WIT contract and its manifest (no
    /// coordinator needed): prints what loading it would announce and every load warning.
    Check {
        /// The component, NAME.wasm.
        file: PathBuf,
        /// Its manifest (default: NAME.toml beside the component).
        #[arg(long)]
        manifest: Option<PathBuf>,
        #[arg(long)]
        json: bool,
        /// Fail (exit 1) when there is any load warning: a granted program not found, a
        /// granted host that does not resolve, a limit left to its default.
        #[arg(long)]
        strict: bool,
    },
    /// Scaffold a plugin crate (manifest, state table, fixtures, native tests) that
    /// builds with `cargo xtask plugins` and passes `corral plugin check` as it is.
    New(super::authoring::NewArgs),
}

/// Sizes as schedulers count them: `4G` is 4096 MiB. Returns MiB.
fn parse_memory_mb(s: &str) -> Result<u64, String> {
    let bad = || {
        format!("{s:?} is not a size; use a number with a unit, like 4G, 512M or 1.5T (binary units), or a plain number of MiB")
    };
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| bad())?;
    let per_mib = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "m" | "mb" | "mib" => 1.0,
        "k" | "kb" | "kib" => 1.0 / 1024.0,
        "g" | "gb" | "gib" => 1024.0,
        "t" | "tb" | "tib" => 1024.0 * 1024.0,
        _ => return Err(bad()),
    };
    let mib = (n * per_mib).ceil();
    if !mib.is_finite() || mib < 1.0 || mib > u64::MAX as f64 {
        return Err(format!(
            "{s:?} is not a usable amount of memory; give at least 1M"
        ));
    }
    Ok(mib as u64)
}

/// A wall-clock limit in seconds: `1h30m` (any humantime duration), `HH:MM:SS`, or
/// Slurm's `D-HH[:MM[:SS]]`. A bare number or `MM:SS` is refused: schedulers disagree on
/// what they mean.
fn parse_walltime(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let hint = "use a unit (90m, 1h30m, 2d) or HH:MM:SS (01:30:00) or D-HH:MM:SS";
    let secs = if t.chars().all(|c| c.is_ascii_digit()) && !t.is_empty() {
        return Err(format!(
            "{s:?} has no unit (Slurm reads minutes, PBS seconds); {hint}"
        ));
    } else if t.contains(':') || t.contains('-') {
        let (days, rest) = match t.split_once('-') {
            Some((d, rest)) => (
                Some(
                    d.parse::<u64>()
                        .map_err(|_| format!("{s:?}: bad days; {hint}"))?,
                ),
                rest,
            ),
            None => (None, t),
        };
        let fields: Vec<u64> = rest
            .split(':')
            .map(|f| f.parse::<u64>())
            .collect::<Result<_, _>>()
            .map_err(|_| format!("{s:?} is not a duration; {hint}"))?;
        let (h, m, sec) = match (days.is_some(), fields.as_slice()) {
            (_, [h, m, sec]) => (*h, *m, *sec),
            (true, [h, m]) => (*h, *m, 0),
            (true, [h]) => (*h, 0, 0),
            (false, [_, _]) => {
                return Err(format!(
                    "{s:?} is ambiguous (minutes:seconds to Slurm, hours:minutes to people); {hint}"
                ))
            }
            _ => return Err(format!("{s:?} is not a duration; {hint}")),
        };
        if m >= 60 || sec >= 60 {
            return Err(format!(
                "{s:?}: minutes and seconds must be below 60; {hint}"
            ));
        }
        days.unwrap_or(0) * 86400 + h * 3600 + m * 60 + sec
    } else {
        let d = humantime::parse_duration(t).map_err(|e| format!("{s:?}: {e}; {hint}"))?;
        d.as_secs() + u64::from(d.subsec_nanos() > 0)
    };
    if secs == 0 {
        return Err(format!("{s:?} is no time at all; {hint}"));
    }
    Ok(secs)
}

/// `FIRST[-LAST[:STEP]][%MAX_RUNNING]`.
fn parse_array(s: &str) -> Result<JobArray, String> {
    let bad =
        |why: &str| format!("{s:?}: {why}; write FIRST[-LAST[:STEP]][%MAX_RUNNING], e.g. 1-10:2%3");
    let (range, max) = match s.split_once('%') {
        Some((r, m)) => (
            r,
            Some(m.parse::<u32>().map_err(|_| bad("bad %MAX_RUNNING"))?),
        ),
        None => (s, None),
    };
    let (span, step) = match range.split_once(':') {
        Some((r, st)) => (r, st.parse::<u32>().map_err(|_| bad("bad :STEP"))?),
        None => (range, 1),
    };
    let (first, last) = match span.split_once('-') {
        Some((a, b)) => (
            a.parse::<u32>().map_err(|_| bad("bad FIRST"))?,
            b.parse::<u32>().map_err(|_| bad("bad LAST"))?,
        ),
        None => {
            let n = span.parse::<u32>().map_err(|_| bad("bad FIRST"))?;
            (n, n)
        }
    };
    if last < first {
        return Err(bad("LAST is below FIRST"));
    }
    if step == 0 || max == Some(0) {
        return Err(bad("STEP and MAX_RUNNING must be at least 1"));
    }
    Ok(JobArray {
        first,
        last,
        step,
        max_running: max,
    })
}

/// `KEY=VALUE` (the value may hold `=`).
fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

fn parse_job_id(s: &str) -> Result<JobId, String> {
    s.parse()
}

impl SubmitArgs {
    fn spec(&self) -> JobSpec {
        let deps = [
            (DependencyKind::AfterStart, &self.after_start),
            (DependencyKind::AfterOk, &self.after_ok),
            (DependencyKind::AfterNotOk, &self.after_not_ok),
            (DependencyKind::AfterAny, &self.after_any),
        ];
        JobSpec {
            name: self.name.clone(),
            executable: self.command[0].clone(),
            arguments: self.command[1..].to_vec(),
            directory: self.chdir.clone(),
            environment: self.env.clone(),
            stdin_path: self.stdin.clone(),
            stdout_path: self.stdout.clone(),
            stderr_path: self.stderr.clone(),
            nodes: self.nodes,
            tasks_per_node: self.tasks_per_node,
            cpus_per_task: self.cpus_per_task,
            gpus_per_node: self.gpus,
            memory_mb: self.memory,
            walltime_seconds: self.time,
            queue: self.queue.clone(),
            account: self.account.clone(),
            reservation: self.reservation.clone(),
            array: self.array.clone(),
            dependencies: deps
                .into_iter()
                .flat_map(|(kind, ids)| {
                    ids.iter().map(move |id| Dependency {
                        kind,
                        job: id.to_string(),
                    })
                })
                .collect(),
            attributes: self.attr.clone(),
        }
    }
}

pub(super) async fn submit(a: SubmitArgs) -> Result<()> {
    let req = SubmitRequest {
        scheduler: a.scheduler.clone(),
        spec: a.spec(),
        via: a.via.clone(),
        dry_run: a.dry_run,
    };
    let api = ApiClient::new(&a.api)?;
    let what = format!("submitting to {}", a.scheduler);
    if a.dry_run {
        let r: Rendered = api
            .post_json("/api/v1/jobs", Some(&req), CALL_WAIT, &what)
            .await?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&r)?);
        } else {
            print!("{}", r.script);
            if !r.script.ends_with('\n') {
                println!();
            }
        }
        return Ok(());
    }
    let job: JobView = api
        .post_json("/api/v1/jobs", Some(&req), CALL_WAIT, &what)
        .await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&job)?);
    } else {
        println!(
            "{}: submitted to {} on node {} as job {}",
            job.id,
            job.scheduler,
            job.node,
            job.native_id.as_deref().unwrap_or("?")
        );
    }
    Ok(())
}

pub(super) async fn jobs(a: JobsArgs) -> Result<()> {
    let api = ApiClient::new(&a.api)?;
    let owner = match (a.mine, a.owner) {
        (true, _) => Some(api.whoami().await?.user),
        (false, o) => o,
    };
    let path = match &owner {
        Some(o) => format!("/api/v1/jobs?owner={}", super::client::query_value(o)),
        None => "/api/v1/jobs".into(),
    };
    let jobs: Vec<JobView> = api.get_json(&path, "listing jobs").await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&jobs)?);
    } else {
        print!("{}", jobs_table(&jobs, unix_ms()));
    }
    Ok(())
}

pub(super) async fn status(a: JobArgs) -> Result<()> {
    let job: JobView = ApiClient::new(&a.api)?
        .get_json(
            &format!("/api/v1/jobs/{}", a.job),
            &format!("job {}", a.job),
        )
        .await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&job)?);
    } else {
        print!("{}", job_detail(&job, unix_ms()));
    }
    Ok(())
}

pub(super) async fn cancel(a: JobArgs) -> Result<()> {
    let job: JobView = ApiClient::new(&a.api)?
        .post_json::<(), _>(
            &format!("/api/v1/jobs/{}/cancel", a.job),
            None,
            CALL_WAIT,
            &format!("cancelling {}", a.job),
        )
        .await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&job)?);
    } else if job.is_finished() {
        println!("{}: already {}; nothing to cancel", job.id, job.state_word);
    } else {
        println!(
            "{}: cancel requested ({} job {} on node {})",
            job.id,
            job.scheduler,
            job.native_id.as_deref().unwrap_or("?"),
            job.node
        );
    }
    Ok(())
}

pub(super) async fn plugins(a: PluginsArgs) -> Result<()> {
    let nodes: Vec<NodePlugins> = ApiClient::new(&a.api)?
        .get_json("/api/v1/plugins", "listing plugins")
        .await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&nodes)?);
    } else {
        print!("{}", plugins_table(&nodes));
    }
    Ok(())
}

pub(super) async fn plugin(cmd: PluginCmd) -> Result<()> {
    match cmd {
        PluginCmd::Check {
            file,
            manifest,
            json,
            strict,
        } => super::authoring::check(file, manifest, json, strict).await,
        PluginCmd::New(a) => super::authoring::new(a),
    }
}

fn or_dash(s: Option<&str>) -> String {
    s.filter(|s| !s.is_empty()).unwrap_or("-").to_string()
}

/// The command line of a spec, each word quoted when it needs to be (for display only).
fn command_line(spec: &JobSpec) -> String {
    std::iter::once(&spec.executable)
        .chain(&spec.arguments)
        .map(|w| {
            let plain = !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
            if plain {
                w.clone()
            } else {
                format!("'{}'", w.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `corral jobs`, one row per job.
const JOB_COLUMNS: &[Column<JobView>] = &[
    ("JOB", |j, _| j.id.to_string()),
    ("OWNER", |j, _| {
        or_dash(Some(j.owner.as_str()).filter(|o| !o.is_empty()))
    }),
    ("SCHEDULER", |j, _| j.scheduler.clone()),
    ("NATIVE", |j, _| or_dash(j.native_id.as_deref())),
    ("STATE", |j, _| j.state_word.clone()),
    ("NAME", |j, _| {
        if j.redacted {
            // Another user's job: its spec is not shown to this caller.
            return "-".into();
        }
        j.spec
            .name
            .clone()
            .unwrap_or_else(|| j.spec.executable.clone())
    }),
    ("NODE", |j, _| j.node.clone()),
    ("SUBMITTED", |j, now| age(now, Some(j.submitted_ms))),
    ("CHANGED", |j, now| age(now, Some(j.updated_ms))),
];

fn jobs_table(jobs: &[JobView], now_ms: u64) -> String {
    listing(JOB_COLUMNS, jobs, now_ms)
}

/// The job detail's lines under its heading: values in column 13.
const JOB_DETAIL: Layout = Layout {
    indent: "",
    width: 11,
};

/// `corral status JOB`, after the heading and before the history.
const JOB_FIELDS: &[Field<JobView>] = &[
    ("Owner:", |j, _| {
        Some(j.owner.clone()).filter(|o| !o.is_empty())
    }),
    ("State:", |j, now| {
        let native = j
            .native_state
            .as_deref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default();
        Some(format!(
            "{}{native}, for {}",
            j.state_word,
            age(now, Some(j.updated_ms))
        ))
    }),
    ("Reason:", |j, _| match &j.state {
        Some(JobState::Failed { reason }) => Some(reason.clone()),
        _ => None,
    }),
    ("Message:", |j, _| j.message.clone()),
    ("Exit code:", |j, _| j.exit_code.map(|c| c.to_string())),
    ("Name:", |j, _| j.spec.name.clone()),
    ("Command:", |j, _| Some(command_line(&j.spec))),
    ("After:", |j, _| {
        let deps = &j.spec.dependencies;
        (!deps.is_empty()).then(|| {
            deps.iter()
                .map(|d| format!("{} {}", dependency_word(d.kind), d.job))
                .collect::<Vec<_>>()
                .join(", ")
        })
    }),
    ("Submitted:", |j, now| {
        Some(format!("{} ago", age(now, Some(j.submitted_ms))))
    }),
    ("Last poll:", |j, now| {
        Some(match j.polled_ms {
            Some(t) => format!("{} ago", age(now, Some(t))),
            None => "never".into(),
        })
    }),
    ("Polled via:", |j, _| j.polled_via.clone()),
    ("Not refreshed:", |j, _| j.poll_error.clone()),
];

/// A job's state history, oldest first.
const HISTORY_COLUMNS: &[Column<Transition>] = &[
    ("WHEN", |t, now| format!("{} ago", age(now, Some(t.at_ms)))),
    ("STATE", |t, _| t.state.clone()),
    ("NATIVE", |t, _| or_dash(t.native_state.as_deref())),
    ("MESSAGE", |t, _| or_dash(t.message.as_deref())),
];

fn job_detail(j: &JobView, now_ms: u64) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{}  {} job {} on node {}",
        j.id,
        j.scheduler,
        or_dash(j.native_id.as_deref()),
        j.node
    );
    write_fields(&mut s, JOB_DETAIL, JOB_FIELDS, j, now_ms);
    if !j.history.is_empty() {
        s.push_str("\nHistory:\n");
        for line in listing(HISTORY_COLUMNS, &j.history, now_ms).lines() {
            let _ = writeln!(s, "  {line}");
        }
    }
    s
}

fn dependency_word(k: DependencyKind) -> &'static str {
    match k {
        DependencyKind::AfterStart => "after-start",
        DependencyKind::AfterOk => "after-ok",
        DependencyKind::AfterNotOk => "after-not-ok",
        DependencyKind::AfterAny => "after-any",
    }
}

fn grants_summary(p: &LoadedPlugin) -> String {
    let g = &p.grants;
    let mut parts = vec![];
    if !g.programs.is_empty() {
        parts.push(format!(
            "programs: {}",
            g.programs
                .iter()
                .map(|(name, path)| format!("{name}={path}"))
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }
    if !g.hosts.is_empty() {
        parts.push(format!("hosts: {}", g.hosts.join(" ")));
    }
    if !g.config_keys.is_empty() {
        parts.push(format!("config: {}", g.config_keys.join(" ")));
    }
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join("; ")
    }
}

fn plugins_table(nodes: &[NodePlugins]) -> String {
    let mut rows = vec![];
    for n in nodes {
        let node = if n.connected {
            n.node.clone()
        } else {
            format!("{} (disconnected)", n.node)
        };
        if n.announced_ms.is_none() {
            rows.push(vec![node.clone(), "-".into(), "not announced yet".into()]);
            continue;
        }
        if n.loaded.is_empty() && n.failed.is_empty() {
            rows.push(vec![node.clone(), "-".into(), "none enabled".into()]);
        }
        for p in &n.loaded {
            let status = if n.authorized(&p.info.name) {
                "loaded"
            } else {
                // The coordinator routes nothing to it: see [schedulers.NAME] nodes.
                "loaded, not authorized"
            };
            rows.push(vec![
                node.clone(),
                p.info.name.clone(),
                status.into(),
                p.info.version.clone(),
                p.info.scheduler.clone(),
                p.digest.chars().take(12).collect(),
                grants_summary(p),
            ]);
        }
        for f in &n.failed {
            rows.push(vec![
                node.clone(),
                f.name.clone(),
                format!("failed: {}", f.message),
            ]);
        }
    }
    table(
        &[
            "NODE",
            "PLUGIN",
            "STATUS",
            "VERSION",
            "SCHEDULER",
            "DIGEST",
            "GRANTS",
        ],
        &rows,
    )
}

/// `corral plugin check FILE`'s lines under "FILE: ok": values in column 14.
const PLUGIN_DETAIL: Layout = Layout {
    indent: "  ",
    width: 10,
};

/// What loading a plugin would announce.
const PLUGIN_FIELDS: &[Field<LoadedPlugin>] = &[
    ("plugin:", |p, _| {
        Some(format!(
            "{} {} ({})",
            p.info.name, p.info.version, p.info.scheduler
        ))
    }),
    ("features:", |p, _| {
        let features: Vec<String> = p
            .info
            .features
            .iter()
            .map(|f| {
                serde_json::to_value(f)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            })
            .collect();
        Some(if features.is_empty() {
            "none".into()
        } else {
            features.join(", ")
        })
    }),
    ("digest:", |p, _| Some(p.digest.clone())),
    ("grants:", |p, _| Some(grants_summary(p))),
];

/// `corral plugin check FILE`'s answer for a usable plugin (`authoring` adds its
/// warnings below).
pub(super) fn plugin_summary(file: &std::path::Path, p: &LoadedPlugin) -> String {
    let mut s = format!("{}: ok\n", file.display());
    write_fields(&mut s, PLUGIN_DETAIL, PLUGIN_FIELDS, p, 0);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn memory_takes_binary_units_and_refuses_nonsense() {
        for (s, mib) in [
            ("4G", 4096),
            ("4g", 4096),
            ("4GiB", 4096),
            ("512M", 512),
            ("512", 512),
            ("1.5T", 1_572_864),
            ("1536K", 2),
            ("1K", 1),
            (" 2G ", 2048),
        ] {
            assert_eq!(parse_memory_mb(s), Ok(mib), "{s}");
        }
        for s in ["", "G", "4X", "-1G", "0", "0M", "4 G B", "1e9G"] {
            let err = parse_memory_mb(s).unwrap_err();
            assert!(err.contains("4G") || err.contains("1M"), "{s}: {err}");
        }
    }

    #[test]
    fn walltime_takes_units_and_clock_forms_but_not_bare_numbers() {
        for (s, secs) in [
            ("1h30m", 5400),
            ("90m", 5400),
            ("45s", 45),
            ("2d", 172_800),
            ("01:30:00", 5400),
            ("100:00:00", 360_000),
            ("2-00:00:00", 172_800),
            ("1-12", 129_600),
            ("1-00:30", 88_200),
            ("1500ms", 2),
        ] {
            assert_eq!(parse_walltime(s), Ok(secs), "{s}");
        }
        for (s, words) in [
            ("30", "no unit"),
            ("1:30", "ambiguous"),
            ("00:00:00", "no time"),
            ("01:61:00", "below 60"),
            ("soon", "HH:MM:SS"),
            ("x-01:00:00", "bad days"),
            ("1:2:3:4", "not a duration"),
        ] {
            let err = parse_walltime(s).unwrap_err();
            assert!(err.contains(words), "{s}: {err}");
        }
    }

    #[test]
    fn arrays_read_like_slurm() {
        let a = |first, last, step, max_running| JobArray {
            first,
            last,
            step,
            max_running,
        };
        assert_eq!(parse_array("1-10:2%3"), Ok(a(1, 10, 2, Some(3))));
        assert_eq!(parse_array("0-99"), Ok(a(0, 99, 1, None)));
        assert_eq!(parse_array("7"), Ok(a(7, 7, 1, None)));
        assert_eq!(parse_array("1-4%2"), Ok(a(1, 4, 1, Some(2))));
        for bad in ["", "5-1", "1-10:0", "1-10%0", "1,3,5", "a-b", "1-10:2%"] {
            let err = parse_array(bad).unwrap_err();
            assert!(err.contains("FIRST[-LAST"), "{bad}: {err}");
        }
    }

    #[test]
    fn key_values_keep_later_equals_signs() {
        assert_eq!(parse_kv("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert_eq!(parse_kv("A="), Ok(("A".into(), String::new())));
        assert!(parse_kv("=x").is_err() && parse_kv("A").is_err());
    }

    fn submit_args(args: &[&str]) -> Result<SubmitArgs, clap::Error> {
        #[derive(clap::Parser)]
        struct T {
            #[command(flatten)]
            a: SubmitArgs,
        }
        T::try_parse_from(std::iter::once("submit").chain(args.iter().copied())).map(|t| t.a)
    }

    #[test]
    fn submit_options_become_a_spec_and_the_command_stays_literal() {
        let a = submit_args(&[
            "--scheduler",
            "slurm",
            "--name",
            "it's; `id` $(x)",
            "--nodes",
            "2",
            "--gpus",
            "8",
            "--memory",
            "4G",
            "--time",
            "1h30m",
            "--array",
            "1-10:2%3",
            "--after-ok",
            "c3",
            "--after-any",
            "c4",
            "--env",
            "A=1 2",
            "--attr",
            "slurm.constraint=a100",
            "--chdir",
            "/work",
            "--stdout",
            "out-%j",
            "--",
            "/bin/sh",
            "-c",
            "echo \"$1\"; rm -rf /",
            "--not-an-option",
        ])
        .unwrap();
        let spec = a.spec();
        assert_eq!(spec.name.as_deref(), Some("it's; `id` $(x)"));
        assert_eq!(spec.executable, "/bin/sh");
        assert_eq!(
            spec.arguments,
            ["-c", "echo \"$1\"; rm -rf /", "--not-an-option"]
        );
        assert_eq!((spec.nodes, spec.gpus_per_node), (Some(2), Some(8)));
        assert_eq!(spec.memory_mb, Some(4096));
        assert_eq!(spec.walltime_seconds, Some(5400));
        assert_eq!(spec.array.unwrap().max_running, Some(3));
        assert_eq!(
            spec.dependencies,
            [
                Dependency {
                    kind: DependencyKind::AfterOk,
                    job: "c3".into()
                },
                Dependency {
                    kind: DependencyKind::AfterAny,
                    job: "c4".into()
                },
            ]
        );
        assert_eq!(spec.environment, [("A".to_string(), "1 2".to_string())]);
        assert_eq!(spec.directory.as_deref(), Some("/work"));
        assert_eq!(spec.stdout_path.as_deref(), Some("out-%j"));
    }

    #[test]
    fn submit_usage_errors_are_clap_errors() {
        // No command, a native id where a corral id belongs, a bad size.
        for args in [
            &["--scheduler", "slurm"][..],
            &["--scheduler", "slurm", "--after-ok", "42", "--", "true"][..],
            &["--scheduler", "slurm", "--memory", "lots", "--", "true"][..],
            &["--", "true"][..],
        ] {
            let err = submit_args(args)
                .err()
                .unwrap_or_else(|| panic!("{args:?} accepted"));
            assert_eq!(err.exit_code(), 2, "{args:?}: {err}");
        }
    }

    #[test]
    fn command_lines_are_quoted_for_display() {
        let spec = JobSpec {
            executable: "/bin/sh".into(),
            arguments: vec!["-c".into(), "echo 'hi'; id".into(), "".into()],
            ..Default::default()
        };
        assert_eq!(command_line(&spec), r"/bin/sh -c 'echo '\''hi'\''; id' ''");
    }

    fn full_job() -> JobView {
        use corral_proto::api::Phase;
        JobView {
            id: JobId(17),
            scheduler: "slurm".into(),
            node: "node-a".into(),
            owner: "alice".into(),
            native_id: Some("4242".into()),
            phase: Phase::Submitted,
            state: Some(JobState::Failed {
                reason: "NodeFail".into(),
            }),
            state_word: "failed".into(),
            native_state: Some("NODE_FAIL".into()),
            exit_code: Some(137),
            message: Some("node went away".into()),
            spec: JobSpec {
                name: Some("train".into()),
                executable: "/bin/sh".into(),
                arguments: vec!["-c".into(), "echo hi".into()],
                dependencies: vec![
                    Dependency {
                        kind: DependencyKind::AfterOk,
                        job: "c3".into(),
                    },
                    Dependency {
                        kind: DependencyKind::AfterAny,
                        job: "c4".into(),
                    },
                ],
                ..Default::default()
            },
            submitted_ms: 1_000,
            updated_ms: 50_000,
            polled_ms: Some(60_000),
            poll_error: Some("agent node-a is not connected".into()),
            polled_via: Some("node-b".into()),
            history: vec![
                Transition {
                    at_ms: 1_000,
                    state: "queued".into(),
                    native_state: Some("PENDING".into()),
                    message: None,
                },
                Transition {
                    at_ms: 50_000,
                    state: "failed".into(),
                    native_state: None,
                    message: Some("node went away".into()),
                },
            ],
            redacted: false,
        }
    }

    #[test]
    fn job_detail_shows_every_field_the_job_has_with_values_in_one_column() {
        let d = job_detail(&full_job(), 61_000);
        assert_eq!(
            d,
            "c17  slurm job 4242 on node node-a\n\
             Owner:      alice\n\
             State:      failed (NODE_FAIL), for 11.0s\n\
             Reason:     NodeFail\n\
             Message:    node went away\n\
             Exit code:  137\n\
             Name:       train\n\
             Command:    /bin/sh -c 'echo hi'\n\
             After:      after-ok c3, after-any c4\n\
             Submitted:  1m ago\n\
             Last poll:  1.0s ago\n\
             Polled via: node-b\n\
             Not refreshed: agent node-a is not connected\n\
             \n\
             History:\n\
             \x20 WHEN       STATE   NATIVE   MESSAGE\n\
             \x20 1m ago     queued  PENDING  -\n\
             \x20 11.0s ago  failed  -        node went away\n"
        );
        for (label, _) in JOB_FIELDS {
            assert!(d.contains(&format!("\n{label} ")), "no {label} line");
        }
    }

    #[test]
    fn job_detail_leaves_out_what_a_job_being_submitted_lacks() {
        use corral_proto::api::Phase;
        let job = JobView {
            owner: String::new(),
            native_id: None,
            phase: Phase::Submitting,
            state: None,
            state_word: "submitting".into(),
            native_state: None,
            exit_code: None,
            message: None,
            spec: JobSpec {
                executable: "true".into(),
                ..Default::default()
            },
            updated_ms: 1_000,
            polled_ms: None,
            poll_error: None,
            polled_via: None,
            history: vec![],
            ..full_job()
        };
        assert_eq!(
            job_detail(&job, 61_000),
            "c17  slurm job - on node node-a\n\
             State:      submitting, for 1m\n\
             Command:    true\n\
             Submitted:  1m ago\n\
             Last poll:  never\n"
        );
        let t = jobs_table(&[full_job(), job], 61_000);
        let want: Vec<&str> = JOB_COLUMNS.iter().map(|(h, _)| *h).collect();
        assert_eq!(
            t.lines()
                .next()
                .unwrap()
                .split_whitespace()
                .collect::<Vec<_>>(),
            want
        );
        assert!(
            t.contains("c17  -      slurm      -       submitting  true"),
            "{t}"
        );
    }

    #[test]
    fn plugin_check_summary_names_features_digest_and_grants() {
        use corral_proto::job::{Feature, Grants, PluginInfo};
        let p = LoadedPlugin {
            info: PluginInfo {
                name: "slurm".into(),
                version: "1.0".into(),
                scheduler: "Slurm".into(),
                features: vec![Feature::Arrays, Feature::Gpus],
            },
            digest: "0123abcd".into(),
            grants: Grants {
                programs: vec![("sbatch".into(), "/usr/bin/sbatch".into())],
                ..Default::default()
            },
        };
        assert_eq!(
            plugin_summary(std::path::Path::new("/x/slurm.wasm"), &p),
            "/x/slurm.wasm: ok\n  \
             plugin:    slurm 1.0 (Slurm)\n  \
             features:  arrays, gpus\n  \
             digest:    0123abcd\n  \
             grants:    programs: sbatch=/usr/bin/sbatch\n"
        );
    }
}
