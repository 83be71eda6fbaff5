//! The Grid Engine plugin (Son of Grid Engine 8.1 / Open Grid Scheduler and kin):
//! `qsub -terse`, `qstat -xml`, `qacct -j`, `qdel`, `qmod`, run by their bare granted
//! names through the host.
//!
//! Tested against a real cell: `tests/sge.rs` drives Debian's Grid Engine 8.1.9 through
//! the plugin host, as the job's owner. `fixtures/` holds output captured from that
//! cell (`fixtures/README.md` says how), for the native tests of the parsers and of
//! states a test cannot produce on demand.
//!
//! Invariants and trade-offs:
//! - Submission: options are `qsub` argv elements and the script goes on stdin (`-S
//!   /bin/sh`); the script's comment line holds the argv, so `render` is exactly what
//!   `submit` sends. `-C ''` turns off qsub's embedded directives: Grid Engine reads
//!   `#$` lines anywhere in a script, so without it a job's argument or environment
//!   value holding a line break and `#$ -q other` would add qsub options. Grid
//!   Engine's only dependency is "after the other job ended" (`-hold_jid`), so other
//!   kinds are refused as unsupported. Parallel jobs need a site parallel environment:
//!   `nodes`/`tasks_per_node`/`cpus_per_task` ask for `-pe PE SLOTS` with PE from the
//!   `sge.pe` attribute and are refused without it.
//! - Identity: the host runs `qsub` and `qdel` as the job's owner, and nothing the
//!   spec says reaches an option that picks a user (qsub has none; `sge.*` attributes
//!   become `-l` resources, and keys named like identity options are refused, saying
//!   why). Grid Engine itself refuses another user's `qdel`.
//! - Values Grid Engine reads its own way are written so it reads them literally or
//!   refused before qsub runs: `-o`/`-e` paths are given as `:PATH` (a bare path
//!   holding `:` is read as `HOST:PATH`), and a job name must be what the qmaster
//!   accepts ([`check_name`]; qsub answers a space with only "Error reading answer
//!   list from qmaster").
//! - Status is one `qstat -xml -u *` call (live jobs of every user); a job not in it
//!   is resolved through `qacct -j` (the accounting file), and when qacct does not know
//!   it either, it is `unknown` with qacct's words, never assumed to have succeeded.
//!   The accounting file keeps every record ever written, so a job number used again
//!   (after the sequence wraps, or a new spool) or a rerun job has several: the last
//!   record of each job or task is the one that counts.
//! - Live states are read letter by letter ([`LETTERS`], the one place), ended ones by
//!   [`ended`]: `failed` 0 with `exit_status` 0 succeeded; a `deleted_by` other than
//!   NONE (Univa/Altair Grid Engine's qacct) is cancelled; exit 137 (SIGKILL) after
//!   `ru_wallclock` reached the `h_rt` of the job's `category` timed out; anything else
//!   failed, with qacct's reason. Son of Grid Engine's accounting does not record a
//!   deletion: a running job deleted with `qdel` ends as killed by signal 9, which the
//!   reason says may be a `qdel`. A job deleted while still queued never reaches
//!   accounting, so it ends `unknown`.
//! - Nodes: `drain-node` disables every queue instance on the host (`qmod -d '*@HOST'`),
//!   `resume-node` enables them all. `node-state` reads `qstat -xml -f -q '*@HOST'`
//!   ([`parse_host`]): the host is drained when *any* of its queue instances is
//!   disabled (`d`), since a person may have disabled one queue and `resume-node` would
//!   enable it again; corral must leave such a host alone. Grid Engine keeps no reason
//!   with a disabled queue, so the reason is always `None`: from Grid Engine alone a
//!   drain corral set cannot be told from a person's. A host without queue instances
//!   (unknown to Grid Engine, or in no queue) is `None`.
//! - What is Grid Engine's own is here (argv, parsers, letters, lookups); the rest is the
//!   SDK's, wired by the one declaration `SGE` ([`corral_plugin_sdk::batch::Batch`]).

use corral_plugin_sdk::batch::{Batch, Cancel};
use corral_plugin_sdk::ids::{JobId, Tasks};
use corral_plugin_sdk::nodes::{Arg, NodeAdmin, StateQuery, Unknown};
use corral_plugin_sdk::records;
use corral_plugin_sdk::script::check_line;
use corral_plugin_sdk::spec::{self, check_array, check_counts, is_word, Passthrough, TextFlags};
use corral_plugin_sdk::states::{Facts, Means, Rows, StateTable};
use corral_plugin_sdk::status::Found;
use corral_plugin_sdk::submit::Submit;
use corral_plugin_sdk::Feature::{Arrays, Dependencies, Drain, List, Reservations};
use corral_plugin_sdk::{
    failure, first_line, run, run_ok, Backend, Command, DependencyKind, Error, JobSpec, JobState,
    JobStatus, NodeState, Scheduler,
};

pub struct Sge;

corral_plugin_sdk::export_plugin!(Sge);

/// What each letter of a Grid Engine state code means; the first letter found in this
/// order decides (`Eqw` is in error, `hqw` held, `dr` being deleted).
pub const LETTERS: Rows<char> = &[
    (Means::Noted(&Means::Completing, "being deleted"), &['d']),
    (Means::Noted(&Means::Held, ERROR_STATE), &['E']),
    (Means::Held, &['h']),
    (Means::Suspended, &['s', 'S', 'T']),
    (Means::Running, &['r', 't']),
    (Means::Queued, &['q', 'w']),
];

const ERROR_STATE: &str = "in error state: see `qstat -j` for why, `qmod -cj` clears it";

const TABLE: StateTable<char> = StateTable::new("Grid Engine", LETTERS);

const ID: JobId = JobId::new("Grid Engine", Tasks::Joined('.'));

/// `sge.*` attributes become `-l resource=value` (`sge.pe` names the parallel
/// environment instead), so no attribute can become a qsub option. Grid Engine's qsub
/// has no option that picks the user a job runs as (its `-u` exists for qalter only)
/// and no resource does either; keys named like the identity options of qalter and of
/// other schedulers are refused all the same, so that `sge.u=root` is answered with
/// why it cannot work rather than with "unknown resource".
const ATTRIBUTES: Passthrough = Passthrough::new("sge", is_word)
    .form("a Grid Engine resource name")
    .identity("u uid gid user group owner")
    .fold_case();

/// The portable state of a live Grid Engine state code, with a note when it needs one.
pub fn live_state(code: &str) -> (JobState, Option<String>) {
    let means = TABLE.first(|c| code.contains(*c));
    let s = TABLE.resolve("", means, code, Facts::default());
    (s.state, s.message)
}

/// One `job_list` entry of `qstat -xml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Live {
    pub job: String,
    pub state: String,
    /// Array task(s) of this entry (`1`, `2-3:1`), if an array.
    pub tasks: Option<String>,
}

impl Live {
    fn status(&self) -> JobStatus {
        let id = match &self.tasks {
            Some(t) => format!("{}.{t}", self.job),
            None => self.job.clone(),
        };
        let means = TABLE.first(|c| self.state.contains(*c));
        TABLE.resolve(&id, means, &self.state, Facts::default())
    }
}

/// Parses `qstat -xml` (running jobs under `queue_info`, pending under `job_info`).
pub fn parse_qstat(xml: &str) -> Result<Vec<Live>, Error> {
    Ok(records::xml("qstat", xml, "job_list")?
        .iter()
        .filter_map(|r| {
            Some(Live {
                job: r.get("JB_job_number")?.to_string(),
                state: r.get("state").unwrap_or_default().to_string(),
                tasks: r.get("tasks").map(str::to_string),
            })
        })
        .collect())
}

/// One record of `qacct -j`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Accounted {
    pub job: String,
    pub task: Option<String>,
    pub failed: String,
    pub exit_status: Option<i32>,
    pub wallclock_secs: Option<f64>,
    pub h_rt: Option<f64>,
    pub deleted_by: Option<String>,
}

/// Seconds from `61s`, `61`, `61.000` or `1:01` (Grid Engine time formats).
fn seconds(s: &str) -> Option<f64> {
    let s = s.trim().trim_end_matches('s');
    if s.contains(':') {
        let mut total = 0f64;
        for p in s.split(':') {
            total = total * 60.0 + p.parse::<f64>().ok()?;
        }
        return Some(total);
    }
    s.parse().ok()
}

/// Parses `qacct -j` output: records separated by lines of `=`. Of several records for
/// one job or task (a job number used again, a rerun) only the last is kept: qacct
/// prints them in the order the accounting file has them, the order jobs ended.
pub fn parse_qacct(text: &str) -> Vec<Accounted> {
    let mut out = Vec::new();
    for chunk in text.split("\n=") {
        let mut a = Accounted::default();
        for line in chunk.lines() {
            let line = line.trim_end();
            let Some((key, value)) = line.split_once(char::is_whitespace) else {
                continue;
            };
            let value = value.trim();
            match key {
                "jobnumber" => a.job = value.to_string(),
                "taskid" if value != "undefined" => a.task = Some(value.to_string()),
                // `28  : changing into working directory`: the code is padded.
                "failed" => a.failed = value.split_whitespace().collect::<Vec<_>>().join(" "),
                "exit_status" => {
                    a.exit_status = value.split_whitespace().next().and_then(|v| v.parse().ok())
                }
                "ru_wallclock" => a.wallclock_secs = seconds(value),
                "deleted_by" if value != "NONE" => a.deleted_by = Some(value.to_string()),
                "category" => {
                    a.h_rt = value
                        .split(|c: char| c.is_whitespace() || c == ',')
                        .find_map(|w| w.strip_prefix("h_rt="))
                        .and_then(seconds)
                }
                _ => {}
            }
        }
        if !a.job.is_empty() {
            out.retain(|b: &Accounted| (&b.job, &b.task) != (&a.job, &a.task));
            out.push(a);
        }
    }
    out
}

/// The portable state of an accounted (ended) job or task.
pub fn ended(a: &Accounted) -> JobState {
    let failed_code = a.failed.split_whitespace().next().unwrap_or("0");
    if a.deleted_by.is_some() {
        return JobState::Cancelled;
    }
    let killed = a.exit_status == Some(137);
    let over = matches!((a.wallclock_secs, a.h_rt), (Some(w), Some(l)) if w >= l);
    match (failed_code, a.exit_status) {
        ("0", Some(0)) => JobState::Succeeded,
        ("0", Some(c)) => JobState::Failed(format!("exit code {c}")),
        _ if killed && over => JobState::TimedOut,
        (code, Some(c)) if c > 128 => {
            // 100 "assumedly after job": the job ended by a signal that Grid Engine did
            // not send for a limit (those are 37 and up), e.g. qdel's SIGKILL.
            let qdel = if c == 137 && code == "100" {
                "; Grid Engine records a running job deleted with qdel this way too"
            } else {
                ""
            };
            JobState::Failed(format!("killed by signal {} ({}){qdel}", c - 128, a.failed))
        }
        (_, Some(c)) if c != 0 => JobState::Failed(format!("exit code {c} ({})", a.failed)),
        _ => JobState::Failed(format!("Grid Engine reports failure {}", a.failed)),
    }
}

impl Accounted {
    fn status(&self) -> JobStatus {
        let label = match &self.task {
            Some(t) => format!("{}.{t}", self.job),
            None => self.job.clone(),
        };
        let state = ended(self);
        let mut s = JobStatus::new(&label, state, &format!("failed {}", self.failed));
        s.exit_code = self.exit_status.filter(|c| *c <= 128);
        if let Some(by) = &self.deleted_by {
            s.message = Some(format!("deleted by {by}"));
        }
        s
    }
}

fn check_id(id: &str) -> Result<(), Error> {
    ID.check(id)
}

/// Whether the task list of a `qstat` entry (`2-6:2`, `1`, `1,3`) holds `task`.
// `is_multiple_of` is newer than the workspace's rust-version (1.85).
#[allow(clippy::manual_is_multiple_of)]
fn tasks_hold(tasks: &str, task: u64) -> bool {
    tasks.split(',').any(|part| {
        let (range, step) = part.split_once(':').unwrap_or((part, "1"));
        let step: u64 = step.parse().unwrap_or(1).max(1);
        match range.split_once('-') {
            Some((a, b)) => match (a.parse::<u64>(), b.parse::<u64>()) {
                (Ok(a), Ok(b)) => task >= a && task <= b && (task - a) % step == 0,
                _ => false,
            },
            None => range.parse::<u64>() == Ok(task),
        }
    })
}

/// The options for the spec's one-line fields (`-ar`: an advance reservation, `-wd`:
/// the working directory).
const TEXT: TextFlags = TextFlags::new("-N", "-q", "-A", "-ar", "-wd", "-o", "-e");

/// The longest job name the qmaster takes (it refuses 512 characters, though its
/// message says 512 is the maximum).
pub const MAX_NAME: usize = 511;

/// Refuses a job name Grid Engine's qmaster would refuse (1 to [`MAX_NAME`] printable
/// ASCII characters, none of them white space or `/ : @ \ * ?`, the first not a
/// digit), saying what it takes: qsub itself answers some of these (a space, a
/// non-ASCII letter) with only "Error reading answer list from qmaster".
pub fn check_name(name: &str) -> Result<(), Error> {
    let bad = |why: &str| {
        Err(Error::Invalid(format!(
            "job name {name:?} {why}; Grid Engine takes 1 to {MAX_NAME} printable ASCII characters without spaces or any of / : @ \\ * ?, not starting with a digit"
        )))
    };
    if name.is_empty() {
        return bad("is empty");
    }
    if name.len() > MAX_NAME {
        return bad(&format!("is {} bytes long", name.len()));
    }
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        return bad("starts with a digit");
    }
    match name
        .chars()
        .find(|&c| !c.is_ascii_graphic() || "/:@\\*?".contains(c))
    {
        Some(c) => bad(&format!("contains {c:?}")),
        None => Ok(()),
    }
}

/// The qsub argv (after the program name) for `spec`.
pub fn qsub_args(spec: &JobSpec) -> Result<Vec<String>, Error> {
    // `-C ''`: no embedded `#$` directives (module docs).
    let mut a: Vec<String> = ["-terse", "-C", "", "-S", "/bin/sh"]
        .map(String::from)
        .into();
    if let Some(name) = &spec.name {
        check_name(name)?;
    }
    for (flag, value) in TEXT.pairs(spec)? {
        // `-o`/`-e` take `[[HOST]:]PATH`: an empty host keeps a `:` in the path a `:`.
        let value = match flag {
            "-o" | "-e" => format!(":{value}"),
            _ => value.to_string(),
        };
        a.extend([flag.to_string(), value]);
    }
    check_counts(spec)?;
    let slots = spec.nodes.unwrap_or(1)
        * spec.tasks_per_node.unwrap_or(1)
        * spec.cpus_per_task.unwrap_or(1);
    let wants_pe =
        spec.nodes.is_some() || spec.tasks_per_node.is_some() || spec.cpus_per_task.is_some();
    if wants_pe {
        let Some(pe) = spec.attribute("sge.pe") else {
            return Err(Error::Invalid(
                "Grid Engine needs a parallel environment for more than one slot: set the attribute sge.pe to the site's PE name (e.g. smp)".into(),
            ));
        };
        check_line("attribute sge.pe", pe)?;
        a.extend(["-pe".to_string(), pe.to_string(), slots.to_string()]);
    }
    let mut resources = Vec::new();
    if let Some(mb) = spec.memory_mb {
        resources.push(format!("h_vmem={mb}M"));
    }
    if let Some(s) = spec.walltime_seconds {
        resources.push(format!("h_rt={}", spec::hhmmss(s)));
    }
    if let Some(g) = spec.gpus_per_node {
        resources.push(format!("gpu={g}"));
    }
    for (resource, value) in ATTRIBUTES.pairs(spec)? {
        if resource == "pe" {
            continue;
        }
        if value.contains(',') {
            return Err(Error::Invalid(format!(
                "attribute sge.{resource}: a value cannot hold ',', which separates resources"
            )));
        }
        resources.push(format!("{resource}={value}"));
    }
    if !resources.is_empty() {
        a.push("-l".into());
        a.push(resources.join(","));
    }
    if let Some(arr) = &spec.array {
        check_array(arr, 1, "Grid Engine")?;
        a.push("-t".into());
        a.push(format!("{}-{}:{}", arr.first, arr.last, arr.step));
        if let Some(m) = arr.max_running {
            a.push("-tc".into());
            a.push(m.to_string());
        }
    }
    if !spec.dependencies.is_empty() {
        let mut ids = Vec::new();
        for d in &spec.dependencies {
            if d.kind != DependencyKind::AfterAny {
                return Err(Error::Unsupported(format!(
                    "Grid Engine can only wait for another job to end (after-any), not {:?}",
                    d.kind
                )));
            }
            check_id(&d.job)?;
            ids.push(d.job.clone());
        }
        a.push("-hold_jid".into());
        a.push(ids.join(","));
    }
    Ok(a)
}

/// The job id in `qsub -terse` output (`123`, or `123.1-3:1` for an array).
pub fn parse_qsub(stdout: &str) -> Result<String, Error> {
    let line = first_line(stdout).unwrap_or_default();
    let id = line.split('.').next().unwrap_or("");
    if ID.split(id).is_some() {
        Ok(id.to_string())
    } else {
        Err(Error::Backend(format!(
            "qsub -terse printed no job id: {:?}",
            stdout.trim()
        )))
    }
}

/// What the accounting file knows of a job that is not in qstat.
fn qacct(b: &dyn Backend, id: &str) -> Result<Found, Error> {
    let (job, task) = match id.split_once('.') {
        Some((j, t)) => (j, Some(t)),
        None => (id, None),
    };
    let mut cmd = Command::new("qacct").args(["-j", job]);
    if let Some(t) = task {
        cmd = cmd.args(["-t", t]);
    }
    let out = run(b, &cmd)?;
    let said = if out.success() {
        let recs = parse_qacct(&out.stdout_text());
        if !recs.is_empty() {
            return Ok(Found::Parts(recs.iter().map(Accounted::status).collect()));
        }
        "qacct printed no record".to_string()
    } else {
        let said = first_line(&out.stderr_text())
            .or_else(|| first_line(&out.stdout_text()))
            .unwrap_or_default();
        if !said.contains("not found") {
            return Err(failure("qacct", &out));
        }
        said
    };
    Ok(Found::Gone(format!(
        "the job is neither queued nor in Grid Engine's accounting (deleted before it ran, or accounting rotated): {said}"
    )))
}

/// Every live job (`qstat -xml -u *`: all users').
fn qstat(b: &dyn Backend) -> Result<Vec<Live>, Error> {
    parse_qstat(&run_ok(
        b,
        &Command::new("qstat").args(["-xml", "-u", "*"]),
    )?)
}

/// The live lookup: one `qstat` for every id. Tasks of an array that already ended are
/// in accounting, not in qstat; while any task is live the array is live, so qstat
/// suffices.
fn live(b: &dyn Backend, ids: &[String]) -> Result<Vec<Found>, Error> {
    let live = qstat(b)?;
    Ok(ids
        .iter()
        .map(|id| Found::Parts(live_parts(&live, id)))
        .collect())
}

/// The history: `qacct` for each job not in qstat.
fn accounting(b: &dyn Backend, ids: &[String]) -> Result<Vec<Found>, Error> {
    ids.iter().map(|id| qacct(b, id)).collect()
}

/// The live entries about `id`: a job, or one task of an array.
fn live_parts(live: &[Live], id: &str) -> Vec<JobStatus> {
    let (job, task) = match ID.split(id) {
        Some((j, t)) => (j, t.and_then(|t| t.parse::<u64>().ok())),
        None => (id, None),
    };
    live.iter()
        .filter(|l| l.job == job)
        .filter(|l| match (task, &l.tasks) {
            (None, _) => true,
            (Some(t), Some(ts)) => tasks_hold(ts, t),
            (Some(_), None) => false,
        })
        .map(Live::status)
        .collect()
}

/// This plugin: `qsub` submits, `qdel` cancels, `qmod` disables a host's queues.
const SGE: Batch = Batch::new("sge", env!("CARGO_PKG_VERSION"), SCHEDULER)
    .features(&[Arrays, Dependencies, Reservations, Drain, List])
    .submit(Submit::script("qsub", qsub_args, parse_qsub))
    .status(check_id, live, Some(accounting))
    .cancel(Cancel::new("qdel", &["does not exist"]))
    .nodes(ADMIN);

const SCHEDULER: &str = "Grid Engine (SGE, Son of Grid Engine, Open Grid Scheduler)";

impl Scheduler for Sge {
    const BATCH: Option<Batch> = Some(SGE);

    fn list(b: &dyn Backend) -> Result<Vec<JobStatus>, Error> {
        Ok(qstat(b)?.iter().map(Live::status).collect())
    }
}

/// Parses `qstat -xml -f -q '*@HOST'` for `node-state`: drained when any queue instance
/// listed is disabled (state letter `d`; `D`, disabled by a calendar, is the site's
/// schedule, not a drain), never with a reason (Grid Engine keeps none). No queue
/// instance at all: Grid Engine has no such host to schedule on.
pub fn parse_host(_node: &str, xml: &str) -> Result<Option<NodeState>, Error> {
    let queues = records::xml("qstat", xml, "Queue-List")?;
    if queues.is_empty() {
        return Ok(None);
    }
    let drained = queues
        .iter()
        .any(|q| q.get("state").is_some_and(|s| s.contains('d')));
    Ok(Some(NodeState::new(drained, None)))
}

/// `qmod -d '*@HOST'` disables every queue instance on the host (running jobs finish,
/// no new ones start; Grid Engine keeps no reason with it), `qmod -e` enables them.
/// `qstat -xml -f -q '*@HOST'` lists them; for a host with none, qstat exits 1 and
/// prints nothing.
const ADMIN: NodeAdmin = NodeAdmin::new("qmod", "", "host name")
    .drain(&[Arg::Text("-d"), Arg::Node("*@")])
    .resume(&[Arg::Text("-e"), Arg::Node("*@")])
    .state(StateQuery::new(
        "qstat",
        &[
            Arg::Text("-xml"),
            Arg::Text("-f"),
            Arg::Text("-q"),
            Arg::Node("*@"),
        ],
        Unknown::Silent,
        parse_host,
    ));

#[cfg(test)]
mod tests;
