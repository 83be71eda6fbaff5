//! The Slurm scheduler plugin: `sbatch`, `squeue`, `scontrol`, `sacct`, `scancel` (and
//! `tail` for logs), run by their bare granted names through the host.
//!
//! Invariants and trade-offs:
//! - Submission: every scheduler option (name, partition, resources, array,
//!   dependencies, `slurm.*` attributes) is an `sbatch` argv element, and the batch
//!   script goes on stdin. Nothing passes through a shell but the script body, whose
//!   every value is single-quoted by the SDK ([`corral_plugin_sdk::script`]). `--wrap`
//!   is not used: sbatch hands its string to `sh -c`, so literalness would rest on our
//!   quoting *and* on sbatch not re-parsing it; with a stdin script only our quoting
//!   matters, and it is tested against the real `sh`. `#SBATCH` directives are not used
//!   either: sbatch's own tokenizer of those lines has quoting rules of its own.
//!   The script's second line is a comment with the sbatch argv (Rust-escaped, one
//!   line), so `render` returns exactly the bytes `submit` sends, and the whole request
//!   is visible in it (and in `scontrol write batch_script`).
//! - Status is one `squeue` call for all ids (`--states=all --array`, a format of ids
//!   and states only, so no user text is parsed). A job that is not live there, or has
//!   ended, is resolved through `scontrol show job` (exit code, reason) and then
//!   `sacct`; when neither knows it, it is `unknown` with both answers as the message,
//!   never assumed to have succeeded. `sacct` is optional: without accounting storage
//!   it fails, and the plugin says so in that message.
//! - An array's id (what `submit` returned) stands for all its tasks; their states are
//!   combined by [`corral_plugin_sdk::aggregate`]. A task id (`12_3`) is its own job.
//! - Native-to-portable states are the table [`STATES`], the one place they are read.
//! - `slurm.*` attributes pass through as `--option[=value]`, except those this plugin
//!   manages and `--uid`/`--gid` (jobs run as the submitting user), abbreviations
//!   included, since sbatch's getopt_long expands them.
//! - Stdout/stderr paths are Slurm filename patterns: `%j`, `%A`, `%a` expand there.
//! - Nodes: `drain-node` is `scontrol update ... State=DRAIN Reason=R` with the reason
//!   verbatim; `node-state` reads `scontrol show node NODE` ([`parse_node`]) in its
//!   multi-line form, where every field Slurm writes begins a line and the reason runs
//!   to the end of its own line: with `--oneliner` the end of a reason could only be
//!   guessed from the key that follows it, and a reason is free text. Slurm's
//!   ` [user@time]` suffix is removed, so the reason reads back as it was given. One node
//!   per call: a hostlist is refused.
//! - What is Slurm's own is here (argv, parsers, table, lookups); the rest is the SDK's,
//!   wired by the one declaration `SLURM` ([`corral_plugin_sdk::batch::Batch`]).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, DefaultHasher};

use corral_plugin_sdk::batch::{Batch, Cancel};
use corral_plugin_sdk::ids::{JobId, Tasks};
use corral_plugin_sdk::nodes::{Arg, NodeAdmin, StateQuery, Unknown};
use corral_plugin_sdk::spec::{array_range, check_array, dependency_list, Passthrough, TextFlags};
use corral_plugin_sdk::states::{Facts, Means, Rows, StateTable};
use corral_plugin_sdk::status::Found;
use corral_plugin_sdk::submit::Submit;
use corral_plugin_sdk::Feature::{Arrays, Dependencies, Drain, Gpus, List, Logs, Reservations};
use corral_plugin_sdk::{
    failure, first_line, run, Backend, Command, Error, JobSpec, JobState, JobStatus, NodeState,
    Scheduler,
};

pub struct Slurm;

corral_plugin_sdk::export_plugin!(Slurm);

/// How Slurm's job states map to portable ones: the one place they are interpreted. A
/// queued state is held when its reason is one of [`HELD_REASONS`].
pub const STATES: Rows<&str> = &[
    (
        Means::Queued,
        &["PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_FED"],
    ),
    (Means::Held, &["REQUEUE_HOLD", "RESV_DEL_HOLD"]),
    (Means::Running, &["RUNNING", "RESIZING", "SIGNALING"]),
    (Means::Suspended, &["SUSPENDED", "STOPPED"]),
    (Means::Completing, &["COMPLETING", "STAGE_OUT"]),
    (Means::Succeeded, &["COMPLETED"]),
    (Means::Failed("the job failed"), &["FAILED"]),
    (Means::Failed("a node failed to boot"), &["BOOT_FAIL"]),
    (Means::Failed("a node of the job failed"), &["NODE_FAIL"]),
    (Means::Failed("out of memory"), &["OUT_OF_MEMORY"]),
    (Means::Failed("the job's deadline passed"), &["DEADLINE"]),
    (Means::Failed("preempted"), &["PREEMPTED"]),
    (
        Means::Failed("special exit (held for requeue)"),
        &["SPECIAL_EXIT"],
    ),
    (Means::Cancelled, &["CANCELLED", "REVOKED"]),
    (Means::TimedOut, &["TIMEOUT"]),
];

const TABLE: StateTable<&str> = StateTable::new("Slurm", STATES);

/// Pending reasons that mean the job waits on a person or another job.
pub const HELD_REASONS: &[&str] = &[
    "JobHeldUser",
    "JobHeldAdmin",
    "Dependency",
    "DependencyNeverSatisfied",
];

const ID: JobId = JobId::new("Slurm", Tasks::Joined('_'));

/// The squeue format: ids and states only (`|` cannot occur in any of them).
const SQUEUE_FORMAT: &str = "%i|%A|%F|%K|%T|%r";

/// `slurm.*` attributes become `--option[=value]`. Refused: options that would break
/// this plugin's contract (parsable output, a script on stdin, submit returning at
/// once), and `--uid`/`--gid`, which pick the user the job runs as. sbatch parses with
/// getopt_long, which expands abbreviations (`--ui=0` is `--uid=0`), so those are
/// refused too.
const ATTRIBUTES: Passthrough = Passthrough::new("slurm", |o| {
    o.starts_with(|c: char| c.is_ascii_lowercase())
        && o.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
})
.form("an sbatch long option name")
.managed("parsable wrap test-only wait help usage version")
.identity("uid gid")
.abbreviations();

/// The state word of a native state: `CANCELLED by 0` (sacct) and `CANCELLED+`
/// (truncated) name the same state.
fn state_word(native: &str) -> &str {
    let mut words = native.split(|c: char| c.is_whitespace() || c == '+');
    words.next().unwrap_or("")
}

/// The portable state of a native one (`reason`: squeue's `%r` / scontrol's `Reason`).
pub fn portable(native: &str, reason: &str) -> JobState {
    let facts = Facts {
        held: HELD_REASONS.contains(&reason),
        ..Facts::default()
    };
    let means = TABLE.means(state_word(native));
    TABLE.resolve("", means, native, facts).state
}

/// One job (or array task) as a Slurm command reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// `12`, or `10_3` for an array task.
    pub display: String,
    /// The job's own id (an array task's own id once it started).
    pub job_id: String,
    /// The array's id for an array task, else the job id.
    pub array_id: String,
    pub native: String,
    pub reason: String,
    /// `ExitCode=code:signal`, when the command reports it.
    pub exit: Option<(i32, i32)>,
}

impl Record {
    fn status(&self) -> JobStatus {
        let (exit_code, signal) = match self.exit {
            Some((code, 0)) => (Some(code), None),
            Some((_, signal)) => (None, Some(signal)),
            None => (None, None),
        };
        let facts = Facts {
            held: HELD_REASONS.contains(&self.reason.as_str()),
            exit_code,
            signal,
            note: Some(self.reason.clone()).filter(|r| !r.is_empty() && r != "None"),
            ..Facts::default()
        };
        let means = TABLE.means(state_word(&self.native));
        TABLE.resolve(&self.display, means, &self.native, facts)
    }

    /// Whether this record is about `id` (a job, an array, or one array task).
    fn is_about(&self, id: &str) -> bool {
        id == self.display || id == self.job_id || id == self.array_id
    }

    /// The ids this record is about ([`Record::is_about`]), each once.
    fn keys(&self) -> impl Iterator<Item = &str> {
        let (d, j, a) = (
            self.display.as_str(),
            self.job_id.as_str(),
            self.array_id.as_str(),
        );
        [
            Some(d),
            (j != d).then_some(j),
            (a != d && a != j).then_some(a),
        ]
        .into_iter()
        .flatten()
    }
}

/// Parses `squeue --noheader --format=%i|%A|%F|%K|%T|%r`. Lines that do not have the
/// six fields are skipped (none are expected).
pub fn parse_squeue(text: &str) -> Vec<Record> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.trim().splitn(6, '|').collect();
            if f.len() != 6 {
                return None;
            }
            Some(Record {
                display: f[0].to_string(),
                job_id: f[1].to_string(),
                array_id: f[2].to_string(),
                native: f[4].to_string(),
                reason: f[5].to_string(),
                exit: None,
            })
        })
        .collect()
}

/// Parses `scontrol show job ID` (one record per job or array task, blank-line
/// separated). Only Slurm-written fields are read: the first line is cut at `JobName=`
/// and the first occurrence of a key wins, so user text (names, paths, commands, which
/// come later) cannot pose as a field.
pub fn parse_scontrol(text: &str) -> Vec<Record> {
    let mut out = Vec::new();
    for chunk in text.split("\n\n") {
        let fields = scontrol_fields(chunk);
        let get = |k: &str| {
            fields
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        let Some(job_id) = get("JobId") else { continue };
        let native = get("JobState").unwrap_or_default();
        let (display, array_id) = match (get("ArrayJobId"), get("ArrayTaskId")) {
            (Some(a), Some(t)) => (format!("{a}_{t}"), a),
            _ => (job_id.clone(), job_id.clone()),
        };
        out.push(Record {
            display,
            job_id,
            array_id,
            native,
            reason: get("Reason").unwrap_or_default(),
            exit: get("ExitCode").and_then(|e| parse_exit(&e)),
        });
    }
    out
}

/// `key=value` pairs of one `scontrol show` record, in order (see [`parse_scontrol`]).
fn scontrol_fields(chunk: &str) -> Vec<(String, String)> {
    let mut fields = Vec::new();
    for (i, line) in chunk.lines().enumerate() {
        let line = if i == 0 {
            match line.find(" JobName=") {
                Some(at) => &line[..at],
                None => line,
            }
        } else {
            line
        };
        for tok in line.split_whitespace() {
            if let Some((k, v)) = tok.split_once('=') {
                if !fields.iter().any(|(key, _): &(String, String)| key == k) {
                    fields.push((k.to_string(), v.to_string()));
                }
            }
        }
    }
    fields
}

/// The value of `key` on the record's own line (`StdOut=...`, to the end of the line).
fn scontrol_line_value(text: &str, key: &str) -> Option<String> {
    let prefix = format!("{key}=");
    text.lines()
        .map(str::trim_start)
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim_end().to_string())
}

/// Parses `sacct --noheader --parsable2 --format=JobID,State,ExitCode`.
pub fn parse_sacct(text: &str) -> Vec<Record> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.trim().split('|').collect();
            if f.len() < 3 || f[0].is_empty() {
                return None;
            }
            let array_id = f[0].split('_').next().unwrap_or(f[0]).to_string();
            Some(Record {
                display: f[0].to_string(),
                job_id: f[0].to_string(),
                array_id,
                native: f[1].to_string(),
                reason: String::new(),
                exit: parse_exit(f[2]),
            })
        })
        .collect()
}

/// `3:0` → (3, 0): exit code and signal.
pub fn parse_exit(s: &str) -> Option<(i32, i32)> {
    let (code, signal) = s.trim().split_once(':')?;
    Some((code.parse().ok()?, signal.parse().ok()?))
}

fn check_id(id: &str) -> Result<(), Error> {
    ID.check(id)
}

/// `--time` from seconds: `D-HH:MM:SS`.
fn slurm_time(secs: u64) -> String {
    let (d, rem) = (secs / 86_400, secs % 86_400);
    format!(
        "{d}-{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The options for the spec's one-line fields.
const TEXT: TextFlags = TextFlags::new(
    "--job-name=",
    "--partition=",
    "--account=",
    "--reservation=",
    "--chdir=",
    "--output=",
    "--error=",
)
.joined();

/// The sbatch argv (after the program name) for `spec`.
pub fn sbatch_args(spec: &JobSpec) -> Result<Vec<String>, Error> {
    let mut a = vec!["--parsable".to_string()];
    a.extend(TEXT.argv(spec)?);
    for (field, flag, v) in [
        ("nodes", "nodes", spec.nodes),
        ("tasks per node", "ntasks-per-node", spec.tasks_per_node),
        ("cpus per task", "cpus-per-task", spec.cpus_per_task),
        ("gpus per node", "gpus-per-node", spec.gpus_per_node),
    ] {
        if let Some(n) = v {
            if n == 0 {
                return Err(Error::Invalid(format!("{field} must be at least 1")));
            }
            a.push(format!("--{flag}={n}"));
        }
    }
    if let Some(mb) = spec.memory_mb {
        a.push(format!("--mem={mb}M"));
    }
    if let Some(s) = spec.walltime_seconds {
        a.push(format!("--time={}", slurm_time(s)));
    }
    if let Some(arr) = &spec.array {
        check_array(arr, 0, "Slurm")?;
        a.push(format!("--array={}", array_range(arr)));
    }
    if !spec.dependencies.is_empty() {
        let deps = dependency_list(&spec.dependencies, check_id)?;
        a.push(format!("--dependency={deps}"));
    }
    for (option, value) in ATTRIBUTES.pairs(spec)? {
        // An empty value is a flag option (`slurm.hold` = "" → `--hold`).
        if value.is_empty() {
            a.push(format!("--{option}"));
        } else {
            a.push(format!("--{option}={value}"));
        }
    }
    Ok(a)
}

/// The job id in `sbatch --parsable` output (`ID` or `ID;CLUSTER`).
pub fn parse_sbatch(stdout: &str) -> Result<String, Error> {
    let line = first_line(stdout).unwrap_or_default();
    let id = line.split(';').next().unwrap_or("").trim();
    match ID.split(id) {
        Some(_) => Ok(id.to_string()),
        None => Err(Error::Backend(format!(
            "sbatch printed no job id (expected `ID` or `ID;CLUSTER`): {:?}",
            stdout.trim()
        ))),
    }
}

/// Whether a Slurm command's error output says the job is not (or no longer) known.
fn says_invalid_job(stderr: &str) -> bool {
    stderr.contains(INVALID_JOB)
}

const INVALID_JOB: &str = "Invalid job id specified";

fn squeue(b: &dyn Backend, jobs: Option<&str>) -> Result<Vec<Record>, Error> {
    let mut cmd = Command::new("squeue").args(["--noheader", "--array", "--states=all"]);
    if let Some(j) = jobs {
        cmd = cmd.arg(format!("--jobs={j}"));
    }
    let cmd = cmd.arg(format!("--format={SQUEUE_FORMAT}"));
    let out = run(b, &cmd)?;
    if out.success() {
        Ok(parse_squeue(&out.stdout_text()))
    } else if jobs.is_some() && says_invalid_job(&out.stderr_text()) {
        // squeue refuses a job list in which it knows no job at all.
        Ok(Vec::new())
    } else {
        Err(failure("squeue", &out))
    }
}

/// The live lookup: one `squeue` for every id (an array's id finds all its tasks).
/// The records are indexed once by every id they answer to ([`Record::keys`]), so a
/// poll of n ids over m records costs O(n + m), not O(n × m).
fn live(b: &dyn Backend, ids: &[String]) -> Result<Vec<Found>, Error> {
    let recs = squeue(b, Some(&ids.join(",")))?;
    let index = index_by_id(&recs);
    let about = |id: &str| match index.get(id) {
        Some(at) => at.iter().map(|&i| recs[i].status()).collect(),
        None => Vec::new(),
    };
    Ok(ids.iter().map(|id| Found::Parts(about(id))).collect())
}

/// Record positions by each id a record is about, in the records' order. Fixed hash
/// keys: `wasm32-unknown-unknown` has no randomness source, and the ids are Slurm's,
/// checked before the squeue ran.
fn index_by_id(recs: &[Record]) -> HashMap<&str, Vec<usize>, BuildHasherDefault<DefaultHasher>> {
    let mut index: HashMap<&str, Vec<usize>, _> =
        HashMap::with_capacity_and_hasher(recs.len(), Default::default());
    for (i, r) in recs.iter().enumerate() {
        for key in r.keys() {
            index.entry(key).or_default().push(i);
        }
    }
    index
}

/// The history, for each job that ended or left squeue: scontrol (exit code, reason),
/// then sacct. squeue's word stands only if both have forgotten the job.
fn history(b: &dyn Backend, ids: &[String]) -> Result<Vec<Found>, Error> {
    ids.iter().map(|id| history_of(b, id)).collect()
}

/// What scontrol, then sacct, know of a job that is not live in squeue.
fn history_of(b: &dyn Backend, id: &str) -> Result<Found, Error> {
    let out = run(b, &Command::new("scontrol").args(["show", "job", id]))?;
    let scontrol_said = if out.success() {
        let recs = parse_scontrol(&out.stdout_text());
        if !recs.is_empty() {
            return Ok(Found::Parts(recs.iter().map(Record::status).collect()));
        }
        "scontrol printed no job record".to_string()
    } else if says_invalid_job(&out.stderr_text()) {
        first_line(&out.stderr_text()).unwrap_or_default()
    } else {
        return Err(failure("scontrol", &out));
    };
    let cmd = Command::new("sacct").args([
        "--noheader",
        "--parsable2",
        "--allocations",
        &format!("--jobs={id}"),
        "--format=JobID,State,ExitCode",
    ]);
    let sacct_said = match run(b, &cmd) {
        Ok(out) if out.success() => {
            let recs = parse_sacct(&out.stdout_text());
            let mine: Vec<JobStatus> = recs
                .iter()
                .filter(|r| r.is_about(id))
                .map(Record::status)
                .collect();
            if !mine.is_empty() {
                return Ok(Found::Parts(mine));
            }
            "sacct has no record of it".to_string()
        }
        Ok(out) => first_line(&out.stderr_text())
            .or_else(|| first_line(&out.stdout_text()))
            .unwrap_or_else(|| format!("sacct exited with status {:?}", out.status)),
        // sacct may be ungranted (no accounting here): that is an answer, not a failure.
        Err(e) => format!("sacct could not run: {e:?}"),
    };
    Ok(Found::Gone(format!(
        "the job left Slurm's queue and its end is not known: scontrol: {scontrol_said}; sacct: {sacct_said}"
    )))
}

/// What scancel says of a job that already ended or that Slurm forgot (Slurm 22.05
/// exits 0 even then, others 1): either way the job is where cancel wants it.
const SCANCEL_GONE: &[&str] = &["already completing or completed", INVALID_JOB];

/// The node state flags under which Slurm places no new work on a node (`IDLE+DRAIN`,
/// `MIXED+DRAIN`: what sinfo calls drained and draining).
const DRAIN_FLAGS: &[&str] = &["DRAIN", "DRAINING", "DRAINED"];

/// Parses `scontrol show node NODE` (the multi-line form) for `node-state`: drained when
/// a `+` flag of `State=` is one of [`DRAIN_FLAGS`]; the reason is the `Reason=` line
/// without Slurm's ` [user@time]` suffix, with the lines of a reason that had line
/// breaks joined back by `\n`. Fields are the lines Slurm indents by exactly three
/// spaces (the record's first line is `NodeName=`); a reason's further lines are
/// indented deeper, so nothing in a reason can pose as a field, and the first
/// `State=`/`Reason=` line wins.
pub fn parse_node(node: &str, text: &str) -> Result<Option<NodeState>, Error> {
    let records = text.lines().filter(|l| l.starts_with("NodeName=")).count();
    match records {
        0 => {
            return Err(Error::Backend(format!(
                "scontrol printed no node record for {node:?}: {:?}",
                first_line(text).unwrap_or_default()
            )))
        }
        1 => {}
        n => {
            return Err(Error::Invalid(format!(
                "{node:?} names {n} Slurm nodes; node-state reads one node"
            )))
        }
    }
    let state = text
        .lines()
        .filter_map(node_field)
        .find_map(|f| f.split_whitespace().next()?.strip_prefix("State="))
        .ok_or_else(|| Error::Backend(format!("scontrol shows no State for node {node:?}")))?;
    let drained = state.split('+').any(|flag| DRAIN_FLAGS.contains(&flag));
    let mut lines = text
        .lines()
        .skip_while(|l| node_field(l).is_none_or(|f| !f.starts_with("Reason=")));
    let reason = lines.next().and_then(node_field).map(|f| {
        let first = f.strip_prefix("Reason=").unwrap_or(f).trim_end();
        let mut reason = without_user_and_time(first).to_string();
        // Slurm writes a reason's further lines indented by ten spaces.
        for more in lines.take_while(|l| l.starts_with("    ")) {
            reason.push('\n');
            reason.push_str(more.strip_prefix("          ").unwrap_or(more.trim_start()));
        }
        reason
    });
    Ok(Some(NodeState::new(drained, reason.as_deref())))
}

/// A field line of `scontrol show` without its three-space indent; `None` for any other
/// line (a record's first line, a reason's further lines).
fn node_field(line: &str) -> Option<&str> {
    line.strip_prefix("   ").filter(|f| !f.starts_with(' '))
}

/// `maint x [root@2026-12-01T16:08:13]` → `maint x`: the suffix Slurm adds to the first
/// line of a reason (who set it, and when). Text that does not end in one is returned
/// as it is.
fn without_user_and_time(line: &str) -> &str {
    let Some(body) = line.strip_suffix(']') else {
        return line;
    };
    match body.rsplit_once(" [") {
        Some((reason, who_when))
            if who_when.contains('@')
                && !who_when.contains(|c: char| c.is_whitespace() || c == '[') =>
        {
            reason
        }
        _ => line,
    }
}

/// This plugin: `sbatch` submits, `scancel` cancels, `scontrol` drains.
const SLURM: Batch = Batch::new("slurm", env!("CARGO_PKG_VERSION"), "Slurm")
    .features(&[Arrays, Dependencies, Gpus, Reservations, Drain, Logs, List])
    .submit(Submit::script("sbatch", sbatch_args, parse_sbatch))
    .status(check_id, live, Some(history))
    .cancel(Cancel::new("scancel", SCANCEL_GONE))
    .nodes(ADMIN);

impl Scheduler for Slurm {
    const BATCH: Option<Batch> = Some(SLURM);

    fn list(b: &dyn Backend) -> Result<Vec<JobStatus>, Error> {
        Ok(squeue(b, None)?.iter().map(Record::status).collect())
    }

    /// One node: a hostlist (which `drain-node` takes) is refused before scontrol runs.
    fn node_state(b: &dyn Backend, node: String) -> Result<Option<NodeState>, Error> {
        if node.contains(['[', ']', ',']) {
            return Err(Error::Invalid(format!(
                "{node:?} is a hostlist; node-state reads one Slurm node"
            )));
        }
        ADMIN.node_state(b, &node)
    }

    fn logs(b: &dyn Backend, id: String, max_bytes: u32) -> Result<String, Error> {
        check_id(&id)?;
        let out = run(b, &Command::new("scontrol").args(["show", "job", &id]))?;
        if !out.success() {
            if says_invalid_job(&out.stderr_text()) {
                return Err(Error::Backend(format!(
                    "Slurm no longer knows job {id}, so its output file is not known"
                )));
            }
            return Err(failure("scontrol", &out));
        }
        let text = out.stdout_text();
        // An array's records each name their own file: the last task's is shown.
        let last = text
            .split("\n\n")
            .filter(|c| c.contains("JobId="))
            .last()
            .unwrap_or("");
        let path = scontrol_line_value(last, "StdOut")
            .filter(|p| !p.is_empty())
            .ok_or_else(|| Error::Backend(format!("scontrol shows no StdOut for job {id}")))?;
        let cmd = Command::new("tail").args([format!("--bytes={max_bytes}"), "--".into(), path]);
        let out = run(b, &cmd)?;
        if !out.success() {
            return Err(failure("tail", &out));
        }
        Ok(corral_plugin_sdk::tail(&out.stdout, max_bytes))
    }
}

/// `scontrol update NodeName=N State=DRAIN Reason=R` (Slurm refuses to drain without a
/// reason, so an empty one becomes "drained by corral") and `State=RESUME`; a node may
/// be a hostlist (`node[01-04]`). `scontrol show node N` reads one back; Slurm says
/// `Node N not found` (on stdout, exit 1) of a node it does not have.
const ADMIN: NodeAdmin = NodeAdmin::new("scontrol", "[],", "Slurm node name or hostlist")
    .drain(&[
        Arg::Text("update"),
        Arg::Node("NodeName="),
        Arg::Text("State=DRAIN"),
        Arg::Reason("Reason=", "drained by corral"),
    ])
    .resume(&[
        Arg::Text("update"),
        Arg::Node("NodeName="),
        Arg::Text("State=RESUME"),
    ])
    .state(StateQuery::new(
        "scontrol",
        &[Arg::Text("show"), Arg::Text("node"), Arg::Node("")],
        Unknown::Says(&[" not found"]),
        parse_node,
    ));

#[cfg(test)]
mod tests;
