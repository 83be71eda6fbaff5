//! The IBM Spectrum LSF plugin: `bsub`, `bjobs -json -o ...`, `bkill`, `bpeek`, `badmin`,
//! run by their bare granted names through the host.
//!
//! Tested against fixtures only: LSF cannot run on the project's machines, so
//! `fixtures/` holds output in LSF 10.1's documented formats (`bjobs -json` records,
//! `bsub`/`bkill` messages), written by hand from those formats, not captured from a
//! live cluster.
//!
//! Invariants and trade-offs:
//! - Submission: options are `bsub` argv elements and the script goes on stdin (LSF
//!   reads a job script from stdin when no command is given); the script's comment line
//!   holds the argv, so `render` is exactly what `submit` sends. LSF writes an array's
//!   range into the job name (`-J "name[1-9:2]%3"`), so names with `[` or `]` are
//!   refused rather than misread as arrays.
//! - Status is one `bjobs -json -a -o FIELDS IDS...` call (`-a`: jobs finished within
//!   `CLEAN_PERIOD` too). A job LSF no longer knows is `unknown` with LSF's words, never
//!   assumed to have succeeded.
//! - States are the table [`STATES`] (the one place); `EXIT` is read by [`exited`]:
//!   killed by its owner or an administrator is cancelled, `TERM_RUNLIMIT` timed out,
//!   anything else failed with the exit code and reason.

use corral_plugin_sdk::script::{batch_script, check_line};
use corral_plugin_sdk::serde_json::{self, Value};
use corral_plugin_sdk::{
    aggregate, failure, log, run, run_ok, Backend, Command, DependencyKind, Error, Feature,
    JobSpec, JobState, JobStatus, PluginInfo, Scheduler,
};

pub struct Lsf;

corral_plugin_sdk::export_plugin!(Lsf);

/// The `bjobs -o` fields the plugin reads.
pub const FIELDS: &str = "jobid jobindex stat exit_code exit_reason kill_reason pend_reason";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Queued,
    Held,
    Running,
    Suspended,
    Completing,
    Succeeded,
    Exited,
    Unknown,
}

/// LSF job states and their portable meaning: the one place they are interpreted.
pub const STATES: &[(&str, Kind)] = &[
    ("PEND", Kind::Queued),
    ("WAIT", Kind::Queued),
    ("PROV", Kind::Queued),
    ("PSUSP", Kind::Held),
    ("RUN", Kind::Running),
    ("USUSP", Kind::Suspended),
    ("SSUSP", Kind::Suspended),
    ("ZOMBI", Kind::Completing),
    ("DONE", Kind::Succeeded),
    ("EXIT", Kind::Exited),
    ("UNKWN", Kind::Unknown),
];

/// `EXIT_REASON`/`KILL_REASON` markers of a job someone killed.
const CANCELLED_BY: &[&str] = &[
    "TERM_OWNER",
    "TERM_ADMIN",
    "TERM_FORCE_OWNER",
    "TERM_FORCE_ADMIN",
    "killed by owner",
    "killed by root or LSF administrator",
];
/// ...and of a job LSF killed at its run limit.
const RUN_LIMIT: &[&str] = &["TERM_RUNLIMIT", "run time limit"];

/// One `bjobs -json` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub job: String,
    /// `0` for a plain job, the element index for an array element.
    pub index: String,
    pub stat: String,
    pub exit_code: Option<i32>,
    pub reason: String,
    pub pend_reason: String,
}

/// A `bjobs -json` record that says a job is not known (`Job <N> is not found`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotFound {
    pub job: String,
    pub error: String,
}

/// Parses `bjobs -json` output into records and "not found" errors.
pub fn parse_bjobs(text: &str) -> Result<(Vec<Record>, Vec<NotFound>), Error> {
    if text.trim().is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let doc: Value = serde_json::from_str(text)
        .map_err(|e| Error::Backend(format!("bjobs printed JSON that does not parse: {e}")))?;
    let field = |r: &Value, k: &str| {
        r.get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .trim()
            .to_string()
    };
    let mut recs = Vec::new();
    let mut missing = Vec::new();
    for r in doc
        .get("RECORDS")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let error = field(r, "ERROR");
        if !error.is_empty() {
            let job = match field(r, "JOBID") {
                j if !j.is_empty() => j,
                _ => error
                    .split_once('<')
                    .and_then(|(_, rest)| rest.split_once('>'))
                    .map(|(j, _)| j.to_string())
                    .unwrap_or_default(),
            };
            missing.push(NotFound { job, error });
            continue;
        }
        let reason = [field(r, "EXIT_REASON"), field(r, "KILL_REASON")]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        recs.push(Record {
            job: field(r, "JOBID"),
            index: match field(r, "JOBINDEX") {
                i if i.is_empty() => "0".into(),
                i => i,
            },
            stat: field(r, "STAT"),
            exit_code: field(r, "EXIT_CODE").parse().ok(),
            reason,
            pend_reason: field(r, "PEND_REASON"),
        });
    }
    Ok((recs, missing))
}

/// The portable state of an `EXIT` record.
pub fn exited(r: &Record) -> JobState {
    let has = |markers: &[&str]| markers.iter().any(|m| r.reason.contains(m));
    if has(CANCELLED_BY) {
        JobState::Cancelled
    } else if has(RUN_LIMIT) {
        JobState::TimedOut
    } else {
        let mut why = match r.exit_code {
            Some(c) => format!("exit code {c}"),
            None => "exited".to_string(),
        };
        if !r.reason.is_empty() {
            why.push_str(&format!(": {}", r.reason));
        }
        JobState::Failed(why)
    }
}

impl Record {
    /// `301`, or `308[2]` for an array element.
    pub fn label(&self) -> String {
        if self.index == "0" {
            self.job.clone()
        } else {
            format!("{}[{}]", self.job, self.index)
        }
    }

    pub fn status(&self) -> JobStatus {
        let kind = STATES
            .iter()
            .find(|(n, _)| *n == self.stat)
            .map(|(_, k)| *k);
        let state = match kind {
            Some(Kind::Queued) => JobState::Queued(self.pend_reason.contains("dependency")),
            Some(Kind::Held) => JobState::Queued(true),
            Some(Kind::Running) => JobState::Running,
            Some(Kind::Suspended) => JobState::Suspended,
            Some(Kind::Completing) => JobState::Completing,
            Some(Kind::Succeeded) => JobState::Succeeded,
            Some(Kind::Exited) => exited(self),
            Some(Kind::Unknown) | None => JobState::Unknown,
        };
        let mut s = JobStatus::new(&self.label(), state, &self.stat);
        s.exit_code = match kind {
            Some(Kind::Succeeded) => Some(0),
            Some(Kind::Exited) => self.exit_code,
            _ => None,
        };
        let note = match kind {
            Some(Kind::Unknown) => Some("mbatchd lost contact with the job's host".to_string()),
            None => Some(format!("unrecognised LSF state {:?}", self.stat)),
            _ if !self.pend_reason.is_empty() => Some(self.pend_reason.clone()),
            _ if !self.reason.is_empty() => Some(self.reason.clone()),
            _ => None,
        };
        s.message = note;
        s
    }
}

/// `123` or `123[4]`.
pub fn is_job_id(id: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    match id.split_once('[') {
        Some((j, rest)) => digits(j) && rest.strip_suffix(']').is_some_and(digits),
        None => digits(id),
    }
}

fn check_id(id: &str) -> Result<(), Error> {
    if is_job_id(id) {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "{id:?} is not an LSF job id (expected digits, or JOB[INDEX])"
        )))
    }
}

/// bsub options an `lsf.*` attribute may not set: interactive modes and waiting would
/// block the call; the name carries the array.
const RESERVED: &[&str] = &["I", "Ip", "Is", "IS", "ISp", "ISs", "IX", "K", "J"];

/// The bsub argv (after the program name) for `spec`.
pub fn bsub_args(spec: &JobSpec) -> Result<Vec<String>, Error> {
    let mut a: Vec<String> = Vec::new();
    let mut pair = |field: &str, flag: &str, v: &str| -> Result<(), Error> {
        check_line(field, v)?;
        a.push(flag.into());
        a.push(v.into());
        Ok(())
    };
    let name = spec.name.clone().unwrap_or_default();
    if name.contains('[') || name.contains(']') {
        return Err(Error::Invalid(format!(
            "job name {name:?}: LSF reads [ ] in a job name as an array range; remove them"
        )));
    }
    match &spec.array {
        Some(arr) => {
            if arr.step == 0 || arr.first == 0 || arr.first > arr.last {
                return Err(Error::Invalid(format!(
                    "array {}-{} step {}: LSF indices start at 1, first must not exceed last, step at least 1",
                    arr.first, arr.last, arr.step
                )));
            }
            let base = if name.is_empty() {
                "corral"
            } else {
                name.as_str()
            };
            let mut j = format!("{base}[{}-{}", arr.first, arr.last);
            if arr.step != 1 {
                j.push_str(&format!(":{}", arr.step));
            }
            j.push(']');
            if let Some(m) = arr.max_running {
                j.push_str(&format!("%{m}"));
            }
            pair("job name", "-J", &j)?;
        }
        None if !name.is_empty() => pair("job name", "-J", &name)?,
        None => {}
    }
    if let Some(q) = &spec.queue {
        pair("queue", "-q", q)?;
    }
    if let Some(p) = &spec.account {
        pair("account", "-P", p)?;
    }
    if let Some(r) = &spec.reservation {
        pair("reservation", "-U", r)?;
    }
    if let Some(d) = &spec.directory {
        pair("directory", "-cwd", d)?;
    }
    if let Some(p) = &spec.stdout_path {
        pair("stdout path", "-o", p)?;
    }
    if let Some(p) = &spec.stderr_path {
        pair("stderr path", "-e", p)?;
    }
    if [spec.nodes, spec.tasks_per_node, spec.cpus_per_task].contains(&Some(0)) {
        return Err(Error::Invalid(
            "nodes, tasks per node and cpus per task must be at least 1".into(),
        ));
    }
    if spec.nodes.is_some() || spec.tasks_per_node.is_some() || spec.cpus_per_task.is_some() {
        let per_node = spec.tasks_per_node.unwrap_or(1) * spec.cpus_per_task.unwrap_or(1);
        a.push("-n".into());
        a.push((spec.nodes.unwrap_or(1) * per_node).to_string());
        a.push("-R".into());
        a.push(format!("span[ptile={per_node}]"));
    }
    if let Some(mb) = spec.memory_mb {
        a.extend([
            "-M".into(),
            format!("{mb}MB"),
            "-R".into(),
            format!("rusage[mem={mb}MB]"),
        ]);
    }
    if let Some(s) = spec.walltime_seconds {
        let minutes = s.div_ceil(60);
        a.extend(["-W".into(), format!("{}:{:02}", minutes / 60, minutes % 60)]);
    }
    if let Some(g) = spec.gpus_per_node {
        a.extend(["-gpu".into(), format!("num={g}")]);
    }
    if !spec.dependencies.is_empty() {
        let mut terms = Vec::new();
        for d in &spec.dependencies {
            check_id(&d.job)?;
            let f = match d.kind {
                DependencyKind::AfterStart => "started",
                DependencyKind::AfterOk => "done",
                DependencyKind::AfterNotOk => "exit",
                DependencyKind::AfterAny => "ended",
            };
            terms.push(format!("{f}({})", d.job));
        }
        a.extend(["-w".into(), terms.join(" && ")]);
    }
    for (flag, value) in spec.attributes_for("lsf") {
        let ok = !flag.is_empty() && flag.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok || RESERVED.contains(&flag) {
            return Err(Error::Invalid(format!(
                "attribute lsf.{flag}: not a bsub option this plugin passes on (interactive, waiting and -J are managed)"
            )));
        }
        check_line(&format!("attribute lsf.{flag}"), value)?;
        a.push(format!("-{flag}"));
        if !value.is_empty() {
            a.push(value.to_string());
        }
    }
    Ok(a)
}

fn bsub(spec: &JobSpec) -> Result<Command, Error> {
    let args = bsub_args(spec)?;
    let script = batch_script("bsub", &args, spec)?;
    Ok(Command::new("bsub").args(args).stdin(script))
}

/// The id in `Job <123> is submitted to queue <normal>.`
pub fn parse_bsub(stdout: &str) -> Result<String, Error> {
    let id = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("Job <"))
        .and_then(|rest| rest.split_once('>'))
        .map(|(id, _)| id.to_string())
        .filter(|id| is_job_id(id));
    id.ok_or_else(|| Error::Backend(format!("bsub printed no job id: {:?}", stdout.trim())))
}

fn bjobs(b: &dyn Backend, ids: &[String]) -> Result<(Vec<Record>, Vec<NotFound>), Error> {
    let mut cmd = Command::new("bjobs").args(["-json", "-a", "-o", FIELDS]);
    if ids.is_empty() {
        cmd = cmd.args(["-u", "all"]);
    }
    let out = run(b, &cmd.args(ids.iter().cloned()))?;
    // bjobs exits non-zero when some ids are not found; the JSON still says which.
    let parsed = parse_bjobs(&out.stdout_text());
    match parsed {
        Ok(p) if out.success() || !p.0.is_empty() || !p.1.is_empty() => Ok(p),
        Ok(_) if out.stderr_text().contains("No unfinished job found") => {
            Ok((Vec::new(), Vec::new()))
        }
        Ok(_) => Err(failure("bjobs", &out)),
        Err(e) if out.success() => Err(e),
        Err(_) => Err(failure("bjobs", &out)),
    }
}

impl Scheduler for Lsf {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "lsf".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            scheduler: "IBM Spectrum LSF".into(),
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
        let cmd = bsub(&spec)?;
        Ok(String::from_utf8_lossy(cmd.stdin.as_deref().unwrap_or_default()).into_owned())
    }

    fn submit(b: &dyn Backend, spec: JobSpec) -> Result<String, Error> {
        let id = parse_bsub(&run_ok(b, &bsub(&spec)?)?)?;
        log::info(b, &format!("submitted LSF job {id}"));
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
        let (recs, missing) = bjobs(b, &unique)?;
        Ok(unique
            .iter()
            .map(|id| {
                let (job, index) = match id.split_once('[') {
                    Some((j, rest)) => (j, Some(rest.trim_end_matches(']'))),
                    None => (id.as_str(), None),
                };
                let mine: Vec<JobStatus> = recs
                    .iter()
                    .filter(|r| r.job == job && index.is_none_or(|i| r.index == i))
                    .map(Record::status)
                    .collect();
                if !mine.is_empty() {
                    return aggregate(id, mine);
                }
                let said = missing
                    .iter()
                    .find(|m| m.job == job)
                    .map(|m| m.error.clone())
                    .unwrap_or_else(|| "bjobs did not report it".into());
                let mut s = JobStatus::new(id, JobState::Unknown, "");
                s.message = Some(format!(
                    "LSF no longer knows the job (finished longer ago than CLEAN_PERIOD): {said}"
                ));
                s
            })
            .collect())
    }

    fn cancel(b: &dyn Backend, id: String) -> Result<(), Error> {
        check_id(&id)?;
        let out = run(b, &Command::new("bkill").arg(&id))?;
        let text = format!("{}{}", out.stdout_text(), out.stderr_text());
        if out.success()
            || text.contains("already finished")
            || text.contains("No matching job found")
        {
            Ok(())
        } else {
            Err(failure("bkill", &out))
        }
    }

    fn list(b: &dyn Backend) -> Result<Vec<JobStatus>, Error> {
        let (recs, _) = bjobs(b, &[])?;
        Ok(recs.iter().map(Record::status).collect())
    }

    fn logs(b: &dyn Backend, id: String, max_bytes: u32) -> Result<String, Error> {
        check_id(&id)?;
        let text = run_ok(b, &Command::new("bpeek").arg(&id))?;
        let body = match text.split_once('\n') {
            Some((first, rest)) if first.starts_with("<< output from") => rest,
            _ => text.as_str(),
        };
        Ok(corral_plugin_sdk::tail(body.as_bytes(), max_bytes))
    }

    fn drain_node(b: &dyn Backend, node: String, reason: String) -> Result<(), Error> {
        check_node(&node)?;
        check_line("drain reason", &reason)?;
        let mut cmd = Command::new("badmin").arg("hclose");
        if !reason.is_empty() {
            cmd = cmd.args(["-C", reason.as_str()]);
        }
        run_ok(b, &cmd.arg(node))?;
        Ok(())
    }

    fn resume_node(b: &dyn Backend, node: String) -> Result<(), Error> {
        check_node(&node)?;
        run_ok(b, &Command::new("badmin").args(["hopen", &node]))?;
        Ok(())
    }
}

fn check_node(node: &str) -> Result<(), Error> {
    let ok = !node.is_empty()
        && !node.starts_with('-')
        && node
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!("{node:?} is not an LSF host name")))
    }
}

#[cfg(test)]
mod tests;
