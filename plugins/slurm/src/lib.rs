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
//! - Stdout/stderr paths are Slurm filename patterns: `%j`, `%A`, `%a` expand there.

use corral_plugin_sdk::script::{batch_script, check_line, check_text};
use corral_plugin_sdk::{
    aggregate, failure, first_line, log, run, run_ok, Backend, Command, DependencyKind, Error,
    Feature, JobSpec, JobState, JobStatus, PluginInfo, Scheduler,
};

pub struct Slurm;

corral_plugin_sdk::export_plugin!(Slurm);

/// How Slurm's job states map to portable ones: the one place they are interpreted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Queued; held when the reason says so ([`HELD_REASONS`]).
    Pending,
    Queued,
    Held,
    Running,
    Suspended,
    Completing,
    Succeeded,
    /// Failed, with what the state means.
    Failed(&'static str),
    Cancelled,
    TimedOut,
}

pub const STATES: &[(&str, Kind)] = &[
    ("PENDING", Kind::Pending),
    ("CONFIGURING", Kind::Queued),
    ("REQUEUED", Kind::Queued),
    ("REQUEUE_FED", Kind::Queued),
    ("REQUEUE_HOLD", Kind::Held),
    ("RESV_DEL_HOLD", Kind::Held),
    ("RUNNING", Kind::Running),
    ("RESIZING", Kind::Running),
    ("SIGNALING", Kind::Running),
    ("SUSPENDED", Kind::Suspended),
    ("STOPPED", Kind::Suspended),
    ("COMPLETING", Kind::Completing),
    ("STAGE_OUT", Kind::Completing),
    ("COMPLETED", Kind::Succeeded),
    ("FAILED", Kind::Failed("the job failed")),
    ("BOOT_FAIL", Kind::Failed("a node failed to boot")),
    ("NODE_FAIL", Kind::Failed("a node of the job failed")),
    ("OUT_OF_MEMORY", Kind::Failed("out of memory")),
    ("DEADLINE", Kind::Failed("the job's deadline passed")),
    ("PREEMPTED", Kind::Failed("preempted")),
    (
        "SPECIAL_EXIT",
        Kind::Failed("special exit (held for requeue)"),
    ),
    ("CANCELLED", Kind::Cancelled),
    ("REVOKED", Kind::Cancelled),
    ("TIMEOUT", Kind::TimedOut),
];

/// Pending reasons that mean the job waits on a person or another job.
pub const HELD_REASONS: &[&str] = &[
    "JobHeldUser",
    "JobHeldAdmin",
    "Dependency",
    "DependencyNeverSatisfied",
];

/// The squeue format: ids and states only (`|` cannot occur in any of them).
const SQUEUE_FORMAT: &str = "%i|%A|%F|%K|%T|%r";

/// sbatch options a `slurm.*` attribute may not set: they would break this plugin's
/// contract (parsable output, a script on stdin, submit returning at once).
const RESERVED_OPTIONS: &[&str] = &[
    "parsable",
    "wrap",
    "test-only",
    "wait",
    "help",
    "usage",
    "version",
];

/// The portable state of a native one (`reason`: squeue's `%r` / scontrol's `Reason`).
pub fn portable(native: &str, reason: &str) -> JobState {
    // `CANCELLED by 0` (sacct) and `CANCELLED+` (truncated) name the same state.
    let word = native
        .split(|c: char| c.is_whitespace() || c == '+')
        .next()
        .unwrap_or("");
    match STATES.iter().find(|(n, _)| *n == word).map(|(_, k)| *k) {
        Some(Kind::Pending) => JobState::Queued(HELD_REASONS.contains(&reason)),
        Some(Kind::Queued) => JobState::Queued(false),
        Some(Kind::Held) => JobState::Queued(true),
        Some(Kind::Running) => JobState::Running,
        Some(Kind::Suspended) => JobState::Suspended,
        Some(Kind::Completing) => JobState::Completing,
        Some(Kind::Succeeded) => JobState::Succeeded,
        Some(Kind::Failed(what)) => JobState::Failed(what.to_string()),
        Some(Kind::Cancelled) => JobState::Cancelled,
        Some(Kind::TimedOut) => JobState::TimedOut,
        None => JobState::Unknown,
    }
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
        let mut state = portable(&self.native, &self.reason);
        let mut st = JobStatus::new(&self.display, JobState::Unknown, &self.native);
        let mut notes = Vec::new();
        if let Some((code, signal)) = self.exit {
            if signal == 0 {
                if state.is_terminal() || state == JobState::Completing {
                    st.exit_code = Some(code);
                }
            } else {
                notes.push(format!("killed by signal {signal}"));
            }
        }
        if !self.reason.is_empty() && self.reason != "None" {
            notes.insert(0, self.reason.clone());
        }
        if let JobState::Failed(what) = &state {
            let mut r = what.clone();
            if let Some(code) = st.exit_code.filter(|c| *c != 0) {
                r.push_str(&format!(" (exit code {code})"));
            }
            if !notes.is_empty() {
                r.push_str(&format!(": {}", notes.join("; ")));
            }
            state = JobState::Failed(r);
        }
        if state == JobState::Unknown {
            notes.push(format!("unrecognised Slurm state {:?}", self.native));
        }
        if !notes.is_empty() {
            st.message = Some(notes.join("; "));
        }
        st.state = state;
        st
    }

    /// Whether this record is about `id` (a job, an array, or one array task).
    fn is_about(&self, id: &str) -> bool {
        id == self.display || id == self.job_id || id == self.array_id
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

/// A Slurm job id as `submit` returns it, or one array task (`12`, `12_3`).
pub fn is_job_id(id: &str) -> bool {
    let mut parts = id.splitn(2, '_');
    let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    match (parts.next(), parts.next()) {
        (Some(j), None) => digits(j),
        (Some(j), Some(t)) => digits(j) && digits(t),
        _ => false,
    }
}

fn check_id(id: &str) -> Result<(), Error> {
    if is_job_id(id) {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "{id:?} is not a Slurm job id (expected digits, or ARRAYID_TASK)"
        )))
    }
}

/// A node name or hostlist expression (`node[01-04]`), as scontrol takes it.
fn check_node(node: &str) -> Result<(), Error> {
    let ok = !node.is_empty()
        && node
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.[],".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "{node:?} is not a Slurm node name (letters, digits, '-', '_', '.', or a hostlist like node[01-04])"
        )))
    }
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

/// The sbatch argv (after the program name) for `spec`.
pub fn sbatch_args(spec: &JobSpec) -> Result<Vec<String>, Error> {
    let mut a = vec!["--parsable".to_string()];
    let mut opt = |field: &str, flag: &str, v: &str| -> Result<(), Error> {
        check_line(field, v)?;
        a.push(format!("--{flag}={v}"));
        Ok(())
    };
    if let Some(n) = &spec.name {
        opt("job name", "job-name", n)?;
    }
    if let Some(q) = &spec.queue {
        opt("queue", "partition", q)?;
    }
    if let Some(acct) = &spec.account {
        opt("account", "account", acct)?;
    }
    if let Some(r) = &spec.reservation {
        opt("reservation", "reservation", r)?;
    }
    if let Some(d) = &spec.directory {
        opt("directory", "chdir", d)?;
    }
    if let Some(p) = &spec.stdout_path {
        opt("stdout path", "output", p)?;
    }
    if let Some(p) = &spec.stderr_path {
        opt("stderr path", "error", p)?;
    }
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
        if arr.step == 0 || arr.first > arr.last {
            return Err(Error::Invalid(format!(
                "array {}-{} step {}: first must not exceed last and step must be at least 1",
                arr.first, arr.last, arr.step
            )));
        }
        let mut s = format!("--array={}-{}", arr.first, arr.last);
        if arr.step != 1 {
            s.push_str(&format!(":{}", arr.step));
        }
        if let Some(m) = arr.max_running {
            s.push_str(&format!("%{m}"));
        }
        a.push(s);
    }
    if !spec.dependencies.is_empty() {
        let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
        for d in &spec.dependencies {
            check_id(&d.job)?;
            let kind = match d.kind {
                DependencyKind::AfterStart => "after",
                DependencyKind::AfterOk => "afterok",
                DependencyKind::AfterNotOk => "afternotok",
                DependencyKind::AfterAny => "afterany",
            };
            match groups.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, ids)) => ids.push(&d.job),
                None => groups.push((kind, vec![&d.job])),
            }
        }
        let dep = groups
            .iter()
            .map(|(k, ids)| format!("{k}:{}", ids.join(":")))
            .collect::<Vec<_>>()
            .join(",");
        a.push(format!("--dependency={dep}"));
    }
    for (option, value) in spec.attributes_for("slurm") {
        let well_formed = option.starts_with(|c: char| c.is_ascii_lowercase())
            && option
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !well_formed {
            return Err(Error::Invalid(format!(
                "attribute slurm.{option}: {option:?} is not an sbatch long option name"
            )));
        }
        if RESERVED_OPTIONS.contains(&option) {
            return Err(Error::Invalid(format!(
                "attribute slurm.{option}: --{option} is managed by the plugin and cannot be set"
            )));
        }
        check_line(&format!("attribute slurm.{option}"), value)?;
        // An empty value is a flag option (`slurm.hold` = "" → `--hold`).
        if value.is_empty() {
            a.push(format!("--{option}"));
        } else {
            a.push(format!("--{option}={value}"));
        }
    }
    Ok(a)
}

fn sbatch(spec: &JobSpec) -> Result<Command, Error> {
    check_text("executable", &spec.executable)?;
    let args = sbatch_args(spec)?;
    let script = batch_script("sbatch", &args, spec)?;
    Ok(Command::new("sbatch").args(args).stdin(script))
}

/// The job id in `sbatch --parsable` output (`ID` or `ID;CLUSTER`).
pub fn parse_sbatch(stdout: &str) -> Result<String, Error> {
    let id = stdout
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .and_then(|l| l.split(';').next())
        .unwrap_or("")
        .trim();
    if is_job_id(id) {
        Ok(id.to_string())
    } else {
        Err(Error::Backend(format!(
            "sbatch printed no job id (expected `ID` or `ID;CLUSTER`): {:?}",
            stdout.trim()
        )))
    }
}

/// Whether a Slurm command's error output says the job is not (or no longer) known.
fn says_invalid_job(stderr: &str) -> bool {
    stderr.contains("Invalid job id specified")
}

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

/// What scontrol, then sacct, know of a job that is not live in squeue.
enum Resolved {
    Known(Vec<Record>),
    /// Neither knows it; why, for the message.
    Gone(String),
}

fn resolve(b: &dyn Backend, id: &str) -> Result<Resolved, Error> {
    let out = run(b, &Command::new("scontrol").args(["show", "job", id]))?;
    let scontrol_said = if out.success() {
        let recs = parse_scontrol(&out.stdout_text());
        if !recs.is_empty() {
            return Ok(Resolved::Known(recs));
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
            let recs: Vec<Record> = parse_sacct(&out.stdout_text())
                .into_iter()
                .filter(|r| r.is_about(id))
                .collect();
            if !recs.is_empty() {
                return Ok(Resolved::Known(recs));
            }
            "sacct has no record of it".to_string()
        }
        Ok(out) => first_line(&out.stderr_text())
            .or_else(|| first_line(&out.stdout_text()))
            .unwrap_or_else(|| format!("sacct exited with status {:?}", out.status)),
        // sacct may be ungranted (no accounting here): that is an answer, not a failure.
        Err(e) => format!("sacct could not run: {e:?}"),
    };
    Ok(Resolved::Gone(format!(
        "the job left Slurm's queue and its end is not known: scontrol: {scontrol_said}; sacct: {sacct_said}"
    )))
}

fn combine(id: &str, recs: &[Record]) -> JobStatus {
    aggregate(id, recs.iter().map(Record::status).collect())
}

impl Scheduler for Slurm {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "slurm".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            scheduler: "Slurm".into(),
            features: vec![
                Feature::Arrays,
                Feature::Dependencies,
                Feature::Gpus,
                Feature::Reservations,
                Feature::Drain,
                Feature::Logs,
                Feature::List,
            ],
        }
    }

    fn render(_b: &dyn Backend, spec: JobSpec) -> Result<String, Error> {
        let cmd = sbatch(&spec)?;
        Ok(String::from_utf8_lossy(cmd.stdin.as_deref().unwrap_or_default()).into_owned())
    }

    fn submit(b: &dyn Backend, spec: JobSpec) -> Result<String, Error> {
        let cmd = sbatch(&spec)?;
        let id = parse_sbatch(&run_ok(b, &cmd)?)?;
        log::info(b, &format!("submitted Slurm job {id}"));
        Ok(id)
    }

    fn status(b: &dyn Backend, ids: Vec<String>) -> Result<Vec<JobStatus>, Error> {
        let mut unique: Vec<String> = Vec::new();
        for id in ids {
            check_id(&id)?;
            if !unique.contains(&id) {
                unique.push(id);
            }
        }
        if unique.is_empty() {
            return Ok(Vec::new());
        }
        let live = squeue(b, Some(&unique.join(",")))?;
        let mut out = Vec::with_capacity(unique.len());
        for id in &unique {
            let mine: Vec<Record> = live.iter().filter(|r| r.is_about(id)).cloned().collect();
            let now = combine(id, &mine);
            if !mine.is_empty() && !now.state.is_terminal() {
                out.push(now);
                continue;
            }
            // Ended or gone from the queue: the exit code and reason come from scontrol
            // (or sacct); squeue's word is used only if both have forgotten the job.
            match resolve(b, id)? {
                Resolved::Known(recs) => out.push(combine(id, &recs)),
                Resolved::Gone(_) if !mine.is_empty() => out.push(now),
                Resolved::Gone(why) => {
                    let mut s = JobStatus::new(id, JobState::Unknown, "");
                    s.message = Some(why);
                    out.push(s);
                }
            }
        }
        Ok(out)
    }

    fn cancel(b: &dyn Backend, id: String) -> Result<(), Error> {
        check_id(&id)?;
        let out = run(b, &Command::new("scancel").arg(&id))?;
        let err = out.stderr_text();
        // Slurm 22.05 exits 0 even then; others exit 1: either way an ended or purged
        // job is already where cancel wants it.
        if out.success()
            || err.contains("already completing or completed")
            || says_invalid_job(&err)
        {
            Ok(())
        } else {
            Err(failure("scancel", &out))
        }
    }

    fn list(b: &dyn Backend) -> Result<Vec<JobStatus>, Error> {
        Ok(squeue(b, None)?
            .iter()
            .map(|r| {
                let mut s = r.status();
                s.id = r.display.clone();
                s
            })
            .collect())
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

    fn drain_node(b: &dyn Backend, node: String, reason: String) -> Result<(), Error> {
        check_node(&node)?;
        check_line("drain reason", &reason)?;
        // Slurm refuses to drain without a reason.
        let reason = if reason.trim().is_empty() {
            "drained by corral".to_string()
        } else {
            reason
        };
        run_ok(
            b,
            &Command::new("scontrol").args([
                "update".to_string(),
                format!("NodeName={node}"),
                "State=DRAIN".into(),
                format!("Reason={reason}"),
            ]),
        )?;
        Ok(())
    }

    fn resume_node(b: &dyn Backend, node: String) -> Result<(), Error> {
        check_node(&node)?;
        run_ok(
            b,
            &Command::new("scontrol").args([
                "update".to_string(),
                format!("NodeName={node}"),
                "State=RESUME".into(),
            ]),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
