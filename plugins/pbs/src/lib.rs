//! The PBS plugin (PBS Professional / OpenPBS): `qsub`, `qstat -f -F json -x`, `qdel`,
//! `pbsnodes`, run by their bare granted names through the host.
//!
//! Tested against fixtures only: PBS cannot run on the project's machines, so
//! `fixtures/` holds output in the documented PBS Pro 2022 / OpenPBS formats (JSON
//! `qstat`, `qsub` and `qdel` messages), written by hand from those formats, not
//! captured from a live server. A site should check the plugin against its own PBS
//! before relying on it.
//!
//! Invariants and trade-offs:
//! - Submission: every option is a `qsub` argv element and the script goes on stdin
//!   (`-S /bin/sh` so no login shell re-reads it); the body is the SDK's quoted body
//!   and the script's comment line holds the argv, so `render` is exactly what `submit`
//!   sends. PBS has no working-directory option (Torque's `-d` is not PBS Pro's): the
//!   body `cd`s.
//! - Status is one `qstat -f -F json -x` call for all ids (`-x`: finished jobs too, from
//!   the server's job history). A job PBS no longer knows (history disabled or expired)
//!   is `unknown` with qstat's own words, never assumed to have succeeded.
//! - A finished job's portable state comes from [`ended`] (the one place exit values are
//!   read): substate 91 (terminated by `qdel`) is cancelled; `Exit_status` 0 succeeded,
//!   1–255 the program's failure, above 256 killed by signal `N - 256` (timed out when
//!   `resources_used.walltime` reached `Resource_List.walltime`), negative values PBS's
//!   own `JOB_EXEC_*` failures. An array (`123[]`) ends with 0 (all subjobs succeeded),
//!   1 (some failed) or 2 (some deleted or requeued).
//! - Torque differs: its `qstat -x` means XML, it has no `-F json`, arrays use `-t` and
//!   ids `123[]` differently, and states include `C`. Torque is therefore not supported
//!   by this plugin (its state table still names `C` for completeness).

use corral_plugin_sdk::script::{batch_script, check_line};
use corral_plugin_sdk::serde_json::{self, Value};
use corral_plugin_sdk::{
    failure, first_line, log, run, run_ok, Backend, Command, DependencyKind, Error, Feature,
    JobSpec, JobState, JobStatus, PluginInfo, Scheduler,
};

pub struct Pbs;

corral_plugin_sdk::export_plugin!(Pbs);

/// PBS job states (`job_state`) and what they mean portably; `Ended` ones are read by
/// [`ended`]. The one place PBS states are interpreted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Queued,
    Held,
    Running,
    Suspended,
    Completing,
    Ended,
    /// Moved to another server: this server cannot tell.
    Moved,
}

pub const STATES: &[(&str, Kind)] = &[
    ("Q", Kind::Queued),
    ("T", Kind::Queued),
    ("W", Kind::Queued),
    ("H", Kind::Held),
    ("R", Kind::Running),
    ("B", Kind::Running),
    ("S", Kind::Suspended),
    ("U", Kind::Suspended),
    ("E", Kind::Completing),
    ("F", Kind::Ended),
    ("X", Kind::Ended),
    // Torque's "completed".
    ("C", Kind::Ended),
    ("M", Kind::Moved),
];

/// `JOB_EXEC_*` values PBS puts in `Exit_status` when it could not run the job.
pub const EXEC_FAILURES: &[(i64, &str)] = &[
    (-1, "job exec failed, before files, no retry"),
    (-2, "job exec failed, after files, no retry"),
    (-3, "job execution failed, will retry"),
    (-4, "job aborted on MoM initialization"),
    (-5, "job aborted on MoM init, checkpoint, no migrate"),
    (-6, "job aborted on MoM init, checkpoint, ok migrate"),
    (-7, "job restart failed"),
    (-10, "invalid uid/gid for job"),
    (-11, "job was rerun"),
    (-12, "job was checkpointed and killed"),
    (-13, "job failed due to a bad password"),
    (-14, "job rerun after a sister failed"),
    (-15, "job requeued for restart from checkpoint"),
    (-16, "a hook rejected the job, requeued"),
    (-17, "a hook rejected the job, deleted"),
    (-18, "a hook requeued the job"),
    (-19, "a hook deleted the job"),
    (-20, "the connection to mother superior failed"),
    (-21, "security breach in a PBS directory"),
    (-22, "a hook failed or timed out"),
    (-23, "no Kerberos credentials supplied"),
];

/// The substate of a job terminated by `qdel` (`JOB_SUBSTATE_TERMINATED`).
pub const SUBSTATE_TERMINATED: i64 = 91;

/// One job as `qstat -f -F json` reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub id: String,
    pub job_state: String,
    pub substate: Option<i64>,
    pub exit_status: Option<i64>,
    pub comment: Option<String>,
    pub walltime_used: Option<u64>,
    pub walltime_limit: Option<u64>,
}

fn hms(v: Option<&Value>) -> Option<u64> {
    let s = v?.as_str()?;
    let mut total = 0u64;
    for part in s.split(':') {
        total = total
            .checked_mul(60)?
            .checked_add(part.trim().parse().ok()?)?;
    }
    Some(total)
}

fn int(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Parses `qstat -f -F json` output (the `Jobs` object; absent when there are none).
pub fn parse_qstat(text: &str) -> Result<Vec<Record>, Error> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let doc: Value = serde_json::from_str(text)
        .map_err(|e| Error::Backend(format!("qstat printed JSON that does not parse: {e}")))?;
    let Some(jobs) = doc.get("Jobs").and_then(Value::as_object) else {
        return Ok(Vec::new());
    };
    Ok(jobs
        .iter()
        .map(|(id, j)| Record {
            id: id.clone(),
            job_state: j
                .get("job_state")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            substate: int(j.get("substate")),
            exit_status: int(j.get("Exit_status")),
            comment: j.get("comment").and_then(Value::as_str).map(str::to_string),
            walltime_used: hms(j.pointer("/resources_used/walltime")),
            walltime_limit: hms(j.pointer("/Resource_List/walltime")),
        })
        .collect())
}

/// Whether `id` names a job array (`123[]`, as qsub returns it for `-J`).
fn is_array(id: &str) -> bool {
    id.split('.').next().is_some_and(|s| s.ends_with("[]"))
}

/// The portable state of a job that ended (see the module docs).
pub fn ended(r: &Record) -> JobState {
    if r.substate == Some(SUBSTATE_TERMINATED) {
        return JobState::Cancelled;
    }
    let Some(code) = r.exit_status else {
        return JobState::Unknown;
    };
    if is_array(&r.id) {
        return match code {
            0 => JobState::Succeeded,
            1 => JobState::Failed("at least one subjob failed".into()),
            2 => JobState::Cancelled,
            c => JobState::Failed(format!("array exit status {c}")),
        };
    }
    match code {
        0 => JobState::Succeeded,
        c if c < 0 => JobState::Failed(
            EXEC_FAILURES
                .iter()
                .find(|(n, _)| *n == c)
                .map(|(_, what)| format!("PBS could not run the job: {what}"))
                .unwrap_or_else(|| format!("PBS could not run the job (exit status {c})")),
        ),
        c if c > 256 => {
            let over_limit =
                matches!((r.walltime_used, r.walltime_limit), (Some(u), Some(l)) if u >= l);
            if over_limit {
                JobState::TimedOut
            } else {
                JobState::Failed(format!("killed by signal {}", c - 256))
            }
        }
        c => JobState::Failed(format!("exit code {c}")),
    }
}

impl Record {
    pub fn status(&self) -> JobStatus {
        let kind = STATES
            .iter()
            .find(|(n, _)| *n == self.job_state)
            .map(|(_, k)| *k);
        let state = match kind {
            Some(Kind::Queued) => JobState::Queued(false),
            Some(Kind::Held) => JobState::Queued(true),
            Some(Kind::Running) => JobState::Running,
            Some(Kind::Suspended) => JobState::Suspended,
            Some(Kind::Completing) => JobState::Completing,
            Some(Kind::Ended) => ended(self),
            Some(Kind::Moved) | None => JobState::Unknown,
        };
        let mut s = JobStatus::new(&self.id, state, &self.job_state);
        if kind == Some(Kind::Ended) {
            s.exit_code = self
                .exit_status
                .filter(|c| (0..=255).contains(c))
                .map(|c| c as i32);
        }
        s.message = match kind {
            Some(Kind::Moved) => Some("the job moved to another PBS server".into()),
            None => Some(format!("unrecognised PBS job state {:?}", self.job_state)),
            _ if s.state == JobState::Unknown => {
                Some("PBS reports the job finished without an exit status".into())
            }
            _ => self.comment.clone(),
        };
        s
    }
}

/// A PBS job id as qsub prints it: `123`, `123.server`, `123[]`, `123[4].server`.
pub fn is_job_id(id: &str) -> bool {
    let (seq, server) = match id.split_once('.') {
        Some((a, b)) => (a, Some(b)),
        None => (id, None),
    };
    let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    let seq_ok = match seq.split_once('[') {
        Some((n, rest)) => {
            digits(n)
                && rest
                    .strip_suffix(']')
                    .is_some_and(|i| i.is_empty() || digits(i))
        }
        None => digits(seq),
    };
    let server_ok = server.is_none_or(|s| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    });
    seq_ok && server_ok
}

fn check_id(id: &str) -> Result<(), Error> {
    if is_job_id(id) {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "{id:?} is not a PBS job id (expected SEQ[.SERVER] or SEQ[].SERVER)"
        )))
    }
}

/// Whether a qstat answer about `id` (`123` or `123.server`) is the record `rec_id`.
fn same_job(id: &str, rec_id: &str) -> bool {
    id == rec_id || rec_id.split_once('.').is_some_and(|(seq, _)| seq == id)
}

fn hhmmss(secs: u64) -> String {
    format!(
        "{:02}:{:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// The qsub argv (after the program name) for `spec`.
pub fn qsub_args(spec: &JobSpec) -> Result<Vec<String>, Error> {
    let mut a: Vec<String> = vec!["-S".into(), "/bin/sh".into()];
    let mut pair = |field: &str, flag: &str, v: &str| -> Result<(), Error> {
        check_line(field, v)?;
        a.push(flag.into());
        a.push(v.into());
        Ok(())
    };
    if let Some(n) = &spec.name {
        pair("job name", "-N", n)?;
    }
    match (&spec.queue, &spec.reservation) {
        (Some(_), Some(_)) => {
            return Err(Error::Invalid(
                "PBS runs a reservation's jobs in the reservation's own queue: set queue or reservation, not both".into(),
            ))
        }
        (Some(q), None) => pair("queue", "-q", q)?,
        // A PBS reservation (R123.server) is a queue named R123.
        (None, Some(r)) => pair("reservation", "-q", r.split('.').next().unwrap_or(r))?,
        (None, None) => {}
    }
    if let Some(acct) = &spec.account {
        pair("account", "-A", acct)?;
    }
    if let Some(p) = &spec.stdout_path {
        pair("stdout path", "-o", p)?;
    }
    if let Some(p) = &spec.stderr_path {
        pair("stderr path", "-e", p)?;
    }
    let mut chunk = Vec::new();
    let tasks = spec.tasks_per_node.unwrap_or(1);
    if spec.cpus_per_task.is_some() || spec.tasks_per_node.is_some() {
        chunk.push(format!("ncpus={}", tasks * spec.cpus_per_task.unwrap_or(1)));
    }
    if let Some(t) = spec.tasks_per_node {
        chunk.push(format!("mpiprocs={t}"));
    }
    if let Some(g) = spec.gpus_per_node {
        chunk.push(format!("ngpus={g}"));
    }
    if let Some(mb) = spec.memory_mb {
        chunk.push(format!("mem={mb}mb"));
    }
    if spec.nodes.is_some() || !chunk.is_empty() {
        let n = spec.nodes.unwrap_or(1);
        if n == 0 || spec.tasks_per_node == Some(0) || spec.cpus_per_task == Some(0) {
            return Err(Error::Invalid(
                "nodes, tasks per node and cpus per task must be at least 1".into(),
            ));
        }
        let mut select = format!("select={n}");
        for c in chunk {
            select.push(':');
            select.push_str(&c);
        }
        a.push("-l".into());
        a.push(select);
    }
    if let Some(s) = spec.walltime_seconds {
        a.push("-l".into());
        a.push(format!("walltime={}", hhmmss(s)));
    }
    if let Some(arr) = &spec.array {
        if arr.step == 0 || arr.first > arr.last {
            return Err(Error::Invalid(format!(
                "array {}-{} step {}: first must not exceed last and step must be at least 1",
                arr.first, arr.last, arr.step
            )));
        }
        let mut j = format!("{}-{}", arr.first, arr.last);
        if arr.step != 1 {
            j.push_str(&format!(":{}", arr.step));
        }
        if let Some(m) = arr.max_running {
            j.push_str(&format!("%{m}"));
        }
        a.push("-J".into());
        a.push(j);
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
        a.push("-W".into());
        a.push(format!("depend={dep}"));
    }
    for (resource, value) in spec.attributes_for("pbs") {
        let ok = !resource.is_empty()
            && resource
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(Error::Invalid(format!(
                "attribute pbs.{resource}: {resource:?} is not a PBS resource name"
            )));
        }
        check_line(&format!("attribute pbs.{resource}"), value)?;
        a.push("-l".into());
        a.push(format!("{resource}={value}"));
    }
    Ok(a)
}

fn qsub(spec: &JobSpec) -> Result<Command, Error> {
    let args = qsub_args(spec)?;
    let script = batch_script("qsub", &args, spec)?;
    Ok(Command::new("qsub").args(args).stdin(script))
}

/// The job id qsub printed.
pub fn parse_qsub(stdout: &str) -> Result<String, Error> {
    let id = first_line(stdout).unwrap_or_default();
    if is_job_id(&id) {
        Ok(id)
    } else {
        Err(Error::Backend(format!(
            "qsub printed no job id: {:?}",
            stdout.trim()
        )))
    }
}

fn unknown_job(line: &str) -> bool {
    line.contains("Unknown Job Id")
}

impl Scheduler for Pbs {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "pbs".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            scheduler: "PBS Professional / OpenPBS".into(),
            features: vec![
                Feature::Arrays,
                Feature::Dependencies,
                Feature::Gpus,
                Feature::Reservations,
                Feature::Drain,
                Feature::List,
            ],
        }
    }

    fn render(_b: &dyn Backend, spec: JobSpec) -> Result<String, Error> {
        let cmd = qsub(&spec)?;
        Ok(String::from_utf8_lossy(cmd.stdin.as_deref().unwrap_or_default()).into_owned())
    }

    fn submit(b: &dyn Backend, spec: JobSpec) -> Result<String, Error> {
        let id = parse_qsub(&run_ok(b, &qsub(&spec)?)?)?;
        log::info(b, &format!("submitted PBS job {id}"));
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
        let cmd = Command::new("qstat")
            .args(["-f", "-F", "json", "-x"])
            .args(unique.iter().cloned());
        let out = run(b, &cmd)?;
        let stderr = out.stderr_text();
        // qstat exits non-zero when any id is unknown, and still prints the others.
        let other_errors: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.trim().is_empty() && !unknown_job(l))
            .collect();
        if !out.success() && !other_errors.is_empty() {
            return Err(failure("qstat", &out));
        }
        let recs = parse_qstat(&out.stdout_text())?;
        Ok(unique
            .iter()
            .map(|id| match recs.iter().find(|r| same_job(id, &r.id)) {
                Some(r) => {
                    let mut s = r.status();
                    s.id = id.clone();
                    s
                }
                None => {
                    let said = stderr
                        .lines()
                        .find(|l| unknown_job(l) && l.contains(id.as_str()))
                        .map(str::trim)
                        .unwrap_or("qstat did not report it");
                    let mut s = JobStatus::new(id, JobState::Unknown, "");
                    s.message = Some(format!(
                        "PBS no longer knows the job (job history disabled or expired): {said}"
                    ));
                    s
                }
            })
            .collect())
    }

    fn cancel(b: &dyn Backend, id: String) -> Result<(), Error> {
        check_id(&id)?;
        let out = run(b, &Command::new("qdel").arg(&id))?;
        let err = out.stderr_text();
        if out.success() || err.contains("Job has finished") || unknown_job(&err) {
            Ok(())
        } else {
            Err(failure("qdel", &out))
        }
    }

    fn list(b: &dyn Backend) -> Result<Vec<JobStatus>, Error> {
        let text = run_ok(b, &Command::new("qstat").args(["-f", "-F", "json"]))?;
        Ok(parse_qstat(&text)?.iter().map(Record::status).collect())
    }

    fn drain_node(b: &dyn Backend, node: String, reason: String) -> Result<(), Error> {
        check_node(&node)?;
        check_line("drain reason", &reason)?;
        let mut cmd = Command::new("pbsnodes").arg("-o");
        if !reason.is_empty() {
            cmd = cmd.args(["-C", reason.as_str()]);
        }
        run_ok(b, &cmd.arg(node))?;
        Ok(())
    }

    fn resume_node(b: &dyn Backend, node: String) -> Result<(), Error> {
        check_node(&node)?;
        run_ok(b, &Command::new("pbsnodes").args(["-r", &node]))?;
        Ok(())
    }
}

fn check_node(node: &str) -> Result<(), Error> {
    let ok = !node.is_empty()
        && !node.starts_with('-')
        && node
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.[]".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!("{node:?} is not a PBS vnode name")))
    }
}

#[cfg(test)]
mod tests;
