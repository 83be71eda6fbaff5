//! The IBM Spectrum LSF plugin: `bsub`, `bjobs -json -o ...`, `bkill`, `bpeek`, `badmin`,
//! `bhosts`, run by their bare granted names through the host.
//!
//! Tested against fixtures only: LSF cannot run on the project's machines, so
//! `fixtures/` holds output in LSF 10.1's documented formats (`bjobs -json` records,
//! `bhosts -l`, `bsub`/`bkill` messages), written by hand from those formats, not
//! captured from a live cluster.
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
//! - `lsf.*` attributes pass through as `-FLAG [value]`, but not the managed ones
//!   (interactive modes, `-K`, `-J`, `-U`); bsub has no option that changes who a job
//!   runs as.
//! - Hosts: `drain-node` is `badmin hclose -C REASON HOST` (running jobs finish),
//!   `resume-node` is `badmin hopen -C "resumed by corral" HOST`: both always leave a
//!   comment of their own, so an older comment of corral's cannot be read as the
//!   reason of a close someone makes later without `-C`. `node-state` reads `bhosts -l
//!   HOST` ([`parse_bhosts`]): drained when the status is `closed_Adm` (closed by an
//!   administrator; the other `closed_*` statuses are LSF's own and lift by
//!   themselves), the reason being the `ADMIN ACTION COMMENT`. Written from the
//!   documented format, tested against that only.
//! - What is LSF's own is here (argv, parsers, table, lookup); the rest is the SDK's,
//!   wired by the one declaration `LSF` ([`corral_plugin_sdk::batch::Batch`]).

use corral_plugin_sdk::batch::{Batch, Cancel};
use corral_plugin_sdk::ids::{JobId, Tasks};
use corral_plugin_sdk::nodes::{Arg, NodeAdmin, StateQuery, Unknown};
use corral_plugin_sdk::records::{self, Deserialize};
use corral_plugin_sdk::script::check_line;
use corral_plugin_sdk::spec::{check_array, check_counts, cpus_per_node, dependencies};
use corral_plugin_sdk::spec::{is_word, Passthrough, TextFlags};
use corral_plugin_sdk::states::{Facts, Means, Rows, StateTable};
use corral_plugin_sdk::status::Found;
use corral_plugin_sdk::submit::Submit;
use corral_plugin_sdk::Feature::{Arrays, Dependencies, Drain, Gpus, List, Logs, Reservations};
use corral_plugin_sdk::{
    failure, run, run_ok, Backend, Command, Error, JobSpec, JobState, JobStatus, NodeState,
    Scheduler,
};

pub struct Lsf;

corral_plugin_sdk::export_plugin!(Lsf);

/// The `bjobs -o` fields the plugin reads.
pub const FIELDS: &str = "jobid jobindex stat exit_code exit_reason kill_reason pend_reason";

/// LSF job states and their portable meaning: the one place they are interpreted
/// (`EXIT` by [`exited`]).
pub const STATES: Rows<&str> = &[
    (Means::Queued, &["PEND", "WAIT", "PROV"]),
    (Means::Held, &["PSUSP"]),
    (Means::Running, &["RUN"]),
    (Means::Suspended, &["USUSP", "SSUSP"]),
    (Means::Completing, &["ZOMBI"]),
    (Means::Succeeded, &["DONE"]),
    (Means::Ended, &["EXIT"]),
    (
        Means::Unknown("mbatchd lost contact with the job's host"),
        &["UNKWN"],
    ),
];

const TABLE: StateTable<&str> = StateTable::new("LSF", STATES);

const ID: JobId = JobId::new("LSF", Tasks::Bracketed);

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

/// `lsf.*` attributes become `-FLAG [value]`. Managed: interactive modes and waiting
/// would block the call, the name carries the array (`-J`), and `-U` is the spec's
/// reservation. bsub has no option that picks the user a job runs as (submitting as
/// another user takes a separate setuid wrapper, `bsubmit`), so no key is refused for
/// identity; LSF options are case-sensitive (`-u` mails, `-U` reserves).
const ATTRIBUTES: Passthrough = Passthrough::new("lsf", is_word)
    .form("a bsub option name")
    .managed("I Ip Is IS ISp ISs IX K J U");

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

/// `bjobs -json`: every field a string, absent ones empty.
#[derive(Deserialize)]
#[serde(crate = "corral_plugin_sdk::serde")]
struct Bjobs {
    #[serde(rename = "RECORDS", default)]
    records: Vec<Raw>,
}

#[derive(Default, Deserialize)]
#[serde(
    crate = "corral_plugin_sdk::serde",
    rename_all = "SCREAMING_SNAKE_CASE",
    default
)]
struct Raw {
    jobid: String,
    jobindex: String,
    stat: String,
    exit_code: String,
    exit_reason: String,
    kill_reason: String,
    pend_reason: String,
    error: String,
}

/// Parses `bjobs -json` output into records and "not found" errors.
pub fn parse_bjobs(text: &str) -> Result<(Vec<Record>, Vec<NotFound>), Error> {
    let doc: Bjobs = records::json("bjobs", text)?;
    let mut recs = Vec::new();
    let mut missing = Vec::new();
    for r in doc.records {
        let error = r.error.trim().to_string();
        if !error.is_empty() {
            let job = match r.jobid.trim() {
                j if !j.is_empty() => j.to_string(),
                _ => error
                    .split_once('<')
                    .and_then(|(_, rest)| rest.split_once('>'))
                    .map(|(j, _)| j.to_string())
                    .unwrap_or_default(),
            };
            missing.push(NotFound { job, error });
            continue;
        }
        let reason = [r.exit_reason.trim(), r.kill_reason.trim()]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        recs.push(Record {
            job: r.jobid.trim().to_string(),
            index: match r.jobindex.trim() {
                "" => "0".into(),
                i => i.to_string(),
            },
            stat: r.stat.trim().to_string(),
            exit_code: r.exit_code.trim().parse().ok(),
            reason,
            pend_reason: r.pend_reason.trim().to_string(),
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
        let note = [&self.pend_reason, &self.reason]
            .into_iter()
            .find(|n| !n.is_empty())
            .cloned();
        let facts = Facts {
            held: self.pend_reason.contains("dependency"),
            exit_code: self.exit_code,
            note,
            ended: Some(exited(self)),
            ..Facts::default()
        };
        TABLE.status(&self.label(), self.stat.as_str(), &self.stat, facts)
    }
}

fn check_id(id: &str) -> Result<(), Error> {
    ID.check(id)
}

/// The options for the spec's one-line fields but the name (which carries the array):
/// `-P` project (LSF's account), `-U` advance reservation, `-cwd` working directory.
const TEXT: TextFlags = TextFlags::new("", "-q", "-P", "-U", "-cwd", "-o", "-e");

/// The bsub argv (after the program name) for `spec`.
pub fn bsub_args(spec: &JobSpec) -> Result<Vec<String>, Error> {
    check_counts(spec)?;
    let mut a: Vec<String> = Vec::new();
    let name = spec.name.clone().unwrap_or_default();
    if name.contains('[') || name.contains(']') {
        return Err(Error::Invalid(format!(
            "job name {name:?}: LSF reads [ ] in a job name as an array range; remove them"
        )));
    }
    let job_name = match &spec.array {
        Some(arr) => {
            check_array(arr, 1, "LSF")?;
            let base = if name.is_empty() { "corral" } else { &name };
            let mut j = format!("{base}[{}-{}", arr.first, arr.last);
            if arr.step != 1 {
                j.push_str(&format!(":{}", arr.step));
            }
            j.push(']');
            if let Some(m) = arr.max_running {
                j.push_str(&format!("%{m}"));
            }
            Some(j)
        }
        None => Some(name).filter(|n| !n.is_empty()),
    };
    if let Some(j) = job_name {
        check_line("job name", &j)?;
        a.extend(["-J".into(), j]);
    }
    a.extend(TEXT.argv(spec)?);
    if spec.nodes.is_some() || spec.tasks_per_node.is_some() || spec.cpus_per_task.is_some() {
        let per_node = cpus_per_node(spec).unwrap_or(1);
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
        let words = ["started", "done", "exit", "ended"];
        let deps = dependencies(&spec.dependencies, words, check_id)?;
        let terms: Vec<String> = deps.iter().map(|(f, job)| format!("{f}({job})")).collect();
        a.extend(["-w".into(), terms.join(" && ")]);
    }
    for (flag, value) in ATTRIBUTES.pairs(spec)? {
        a.push(format!("-{flag}"));
        if !value.is_empty() {
            a.push(value.to_string());
        }
    }
    Ok(a)
}

/// The id in `Job <123> is submitted to queue <normal>.`
pub fn parse_bsub(stdout: &str) -> Result<String, Error> {
    let id = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("Job <"))
        .and_then(|rest| rest.split_once('>'))
        .map(|(id, _)| id.to_string())
        .filter(|id| ID.split(id).is_some());
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

/// The one lookup: `bjobs -a` for every id (`-a`: jobs finished within `CLEAN_PERIOD`
/// too); an array's id finds all its elements.
fn lookup(b: &dyn Backend, ids: &[String]) -> Result<Vec<Found>, Error> {
    let (recs, missing) = bjobs(b, ids)?;
    Ok(ids.iter().map(|id| found(&recs, &missing, id)).collect())
}

/// What bjobs said of `id`: its records, or LSF's words about not knowing it.
fn found(recs: &[Record], missing: &[NotFound], id: &str) -> Found {
    let mine = recs.iter().filter(|r| ID.covers(id, &r.job, &r.index));
    let job = ID.split(id).map_or(id, |(job, _)| job);
    let said = missing.iter().find(|m| m.job == job);
    let said = said.map_or("bjobs did not report it", |m| m.error.as_str());
    let why =
        format!("LSF no longer knows the job (finished longer ago than CLEAN_PERIOD): {said}");
    Found::or_gone(mine.map(Record::status).collect(), Some(&why))
}

/// What bkill says of a job that already ended or that LSF forgot.
const BKILL_GONE: &[&str] = &["already finished", "No matching job found"];

/// This plugin: `bsub` submits, `bkill` cancels, `badmin` closes hosts.
const LSF: Batch = Batch::new("lsf", env!("CARGO_PKG_VERSION"), "IBM Spectrum LSF")
    .features(&[Arrays, Dependencies, Gpus, Reservations, Drain, Logs, List])
    .submit(Submit::script("bsub", bsub_args, parse_bsub))
    .status(check_id, lookup, None)
    .cancel(Cancel::new("bkill", BKILL_GONE))
    .nodes(ADMIN);

impl Scheduler for Lsf {
    const BATCH: Option<Batch> = Some(LSF);

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
}

/// `badmin hclose -C COMMENT HOST` closes a host to new jobs, `badmin hopen -C COMMENT
/// HOST` reopens it (see the module docs for why both leave a comment); `bhosts -l
/// HOST` reads it back, and says `Bad host name` of a host LSF does not have.
const ADMIN: NodeAdmin = NodeAdmin::new("badmin", "", "LSF host name")
    .drain(&[
        Arg::Text("hclose"),
        Arg::Text("-C"),
        Arg::Reason("", "drained by corral"),
        Arg::Node(""),
    ])
    .resume(&[
        Arg::Text("hopen"),
        Arg::Text("-C"),
        Arg::Text("resumed by corral"),
        Arg::Node(""),
    ])
    .state(StateQuery::new(
        "bhosts",
        &[Arg::Text("-l"), Arg::Node("")],
        Unknown::Says(&["Bad host name"]),
        parse_bhosts,
    ));

/// Parses `bhosts -l HOST` for `node-state`: the status is the first word of the line
/// after the `STATUS` header, `closed_Adm` is drained, and the reason is the text of
/// ` ADMIN ACTION COMMENT: "..."` (without the quotes LSF puts around it). One host
/// record is expected: a host group's name prints one per member, and is refused; no
/// record is no such host.
pub fn parse_bhosts(node: &str, text: &str) -> Result<Option<NodeState>, Error> {
    match text.lines().filter(|l| l.starts_with("HOST ")).count() {
        0 => return Ok(None),
        1 => {}
        n => {
            return Err(Error::Invalid(format!(
                "{node:?} names {n} LSF hosts (a host group?); node-state reads one host"
            )))
        }
    }
    let mut lines = text.lines().skip_while(|l| !l.starts_with("HOST "));
    let status = lines
        .by_ref()
        .skip_while(|l| !l.starts_with("STATUS "))
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .ok_or_else(|| Error::Backend(format!("bhosts -l {node} printed no STATUS")))?;
    let drained = status == "closed_Adm";
    let comment = lines
        .find_map(|l| l.trim_start().strip_prefix("ADMIN ACTION COMMENT:"))
        .map(|c| {
            let c = c.trim();
            c.strip_prefix('"')
                .and_then(|c| c.strip_suffix('"'))
                .unwrap_or(c)
        });
    Ok(Some(NodeState::new(drained, comment)))
}

#[cfg(test)]
mod tests;
