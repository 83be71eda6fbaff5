//! The Grid Engine plugin (Son of Grid Engine 8.1 / Open Grid Scheduler and kin):
//! `qsub -terse`, `qstat -xml`, `qacct -j`, `qdel`, `qmod`, run by their bare granted
//! names through the host.
//!
//! Tested against fixtures only: a Grid Engine qmaster was not made to run on the
//! project's machines (it refuses clients whose host name and address disagree), so
//! `fixtures/` holds output in Grid Engine's formats (`qstat -xml`, `qacct -j`, `qsub
//! -terse`, `qdel` messages), written by hand from those formats, not captured from a
//! live cell.
//!
//! Invariants and trade-offs:
//! - Submission: options are `qsub` argv elements and the script goes on stdin (`-S
//!   /bin/sh`); the script's comment line holds the argv, so `render` is exactly what
//!   `submit` sends. Grid Engine's only dependency is "after the other job ended"
//!   (`-hold_jid`), so other kinds are refused as unsupported. Parallel jobs need a site
//!   parallel environment: `nodes`/`tasks_per_node`/`cpus_per_task` ask for
//!   `-pe PE SLOTS` with PE from the `sge.pe` attribute and are refused without it.
//! - Status is one `qstat -xml -u *` call (live jobs of every user); a job not in it
//!   is resolved through `qacct -j` (the accounting file), and when qacct does not know
//!   it either, it is `unknown` with qacct's words, never assumed to have succeeded.
//! - Live states are read letter by letter ([`LETTERS`], the one place), ended ones by
//!   [`ended`]: `failed` 0 with `exit_status` 0 succeeded; a `deleted_by` other than
//!   NONE is cancelled; exit 137 (SIGKILL) after `ru_wallclock` reached the `h_rt` of
//!   the job's `category` timed out; anything else failed, with qacct's reason. A job
//!   deleted while still queued never reaches accounting, so it ends `unknown`.

use corral_plugin_sdk::script::{batch_script, check_line};
use corral_plugin_sdk::{
    aggregate, failure, first_line, log, run, run_ok, Backend, Command, DependencyKind, Error,
    Feature, JobSpec, JobState, JobStatus, PluginInfo, Scheduler,
};

pub struct Sge;

corral_plugin_sdk::export_plugin!(Sge);

/// What each letter of a Grid Engine state code means; the first letter found in this
/// order decides (`Eqw` is in error, `hqw` held, `dr` being deleted).
pub const LETTERS: &[(char, Letter)] = &[
    ('d', Letter::Deleting),
    ('E', Letter::Error),
    ('h', Letter::Held),
    ('s', Letter::Suspended),
    ('S', Letter::Suspended),
    ('T', Letter::Suspended),
    ('r', Letter::Running),
    ('t', Letter::Running),
    ('q', Letter::Queued),
    ('w', Letter::Queued),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Letter {
    Deleting,
    Error,
    Held,
    Suspended,
    Running,
    Queued,
}

/// The portable state of a live Grid Engine state code, with a note when it needs one.
pub fn live_state(code: &str) -> (JobState, Option<&'static str>) {
    let letter = LETTERS
        .iter()
        .find(|(c, _)| code.contains(*c))
        .map(|(_, l)| *l);
    match letter {
        Some(Letter::Deleting) => (JobState::Completing, Some("being deleted")),
        Some(Letter::Error) => (
            JobState::Queued(true),
            Some("in error state: see `qstat -j` for why, `qmod -cj` clears it"),
        ),
        Some(Letter::Held) => (JobState::Queued(true), None),
        Some(Letter::Suspended) => (JobState::Suspended, None),
        Some(Letter::Running) => (JobState::Running, None),
        Some(Letter::Queued) => (JobState::Queued(false), None),
        None => (JobState::Unknown, Some("unrecognised Grid Engine state")),
    }
}

/// One `job_list` entry of `qstat -xml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Live {
    pub job: String,
    pub state: String,
    /// Array task(s) of this entry (`1`, `2-3:1`), if an array.
    pub tasks: Option<String>,
}

/// Parses `qstat -xml` (running jobs under `queue_info`, pending under `job_info`).
pub fn parse_qstat(xml: &str) -> Result<Vec<Live>, Error> {
    let doc = roxmltree::Document::parse(xml)
        .map_err(|e| Error::Backend(format!("qstat printed XML that does not parse: {e}")))?;
    let text = |n: roxmltree::Node, tag: &str| {
        n.children()
            .find(|c| c.has_tag_name(tag))
            .and_then(|c| c.text())
            .map(|t| t.trim().to_string())
    };
    Ok(doc
        .descendants()
        .filter(|n| n.has_tag_name("job_list"))
        .filter_map(|n| {
            Some(Live {
                job: text(n, "JB_job_number")?,
                state: text(n, "state").unwrap_or_default(),
                tasks: text(n, "tasks").filter(|t| !t.is_empty()),
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

/// Parses `qacct -j` output: records separated by lines of `=`.
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
                "failed" => a.failed = value.to_string(),
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
        (_, Some(c)) if c > 128 => {
            JobState::Failed(format!("killed by signal {} ({})", c - 128, a.failed))
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

/// A job id as `submit` returns it (`123`) or one array task (`123.4`).
pub fn is_job_id(id: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    match id.split_once('.') {
        Some((j, t)) => digits(j) && digits(t),
        None => digits(id),
    }
}

fn check_id(id: &str) -> Result<(), Error> {
    if is_job_id(id) {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "{id:?} is not a Grid Engine job id (expected digits, or JOB.TASK)"
        )))
    }
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

fn hms(secs: u64) -> String {
    format!(
        "{:02}:{:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// The qsub argv (after the program name) for `spec`.
pub fn qsub_args(spec: &JobSpec) -> Result<Vec<String>, Error> {
    let mut a: Vec<String> = vec!["-terse".into(), "-S".into(), "/bin/sh".into()];
    let mut pair = |field: &str, flag: &str, v: &str| -> Result<(), Error> {
        check_line(field, v)?;
        a.push(flag.into());
        a.push(v.into());
        Ok(())
    };
    if let Some(n) = &spec.name {
        pair("job name", "-N", n)?;
    }
    if let Some(q) = &spec.queue {
        pair("queue", "-q", q)?;
    }
    if let Some(acct) = &spec.account {
        pair("account", "-A", acct)?;
    }
    if let Some(r) = &spec.reservation {
        pair("reservation", "-ar", r)?;
    }
    if let Some(d) = &spec.directory {
        pair("directory", "-wd", d)?;
    }
    if let Some(p) = &spec.stdout_path {
        pair("stdout path", "-o", p)?;
    }
    if let Some(p) = &spec.stderr_path {
        pair("stderr path", "-e", p)?;
    }
    let slots = spec.nodes.unwrap_or(1)
        * spec.tasks_per_node.unwrap_or(1)
        * spec.cpus_per_task.unwrap_or(1);
    let wants_pe =
        spec.nodes.is_some() || spec.tasks_per_node.is_some() || spec.cpus_per_task.is_some();
    if wants_pe {
        if slots == 0 {
            return Err(Error::Invalid(
                "nodes, tasks per node and cpus per task must be at least 1".into(),
            ));
        }
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
        resources.push(format!("h_rt={}", hms(s)));
    }
    if let Some(g) = spec.gpus_per_node {
        resources.push(format!("gpu={g}"));
    }
    for (resource, value) in spec.attributes_for("sge") {
        if resource == "pe" {
            continue;
        }
        let ok = !resource.is_empty()
            && resource
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok || value.contains(',') {
            return Err(Error::Invalid(format!(
                "attribute sge.{resource}: expected a resource name and a value without ','"
            )));
        }
        check_line(&format!("attribute sge.{resource}"), value)?;
        resources.push(format!("{resource}={value}"));
    }
    if !resources.is_empty() {
        a.push("-l".into());
        a.push(resources.join(","));
    }
    if let Some(arr) = &spec.array {
        if arr.step == 0 || arr.first == 0 || arr.first > arr.last {
            return Err(Error::Invalid(format!(
                "array {}-{} step {}: Grid Engine task ids start at 1, first must not exceed last, step at least 1",
                arr.first, arr.last, arr.step
            )));
        }
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

fn qsub(spec: &JobSpec) -> Result<Command, Error> {
    let args = qsub_args(spec)?;
    let script = batch_script("qsub", &args, spec)?;
    Ok(Command::new("qsub").args(args).stdin(script))
}

/// The job id in `qsub -terse` output (`123`, or `123.1-3:1` for an array).
pub fn parse_qsub(stdout: &str) -> Result<String, Error> {
    let line = first_line(stdout).unwrap_or_default();
    let id = line.split('.').next().unwrap_or("");
    if is_job_id(id) {
        Ok(id.to_string())
    } else {
        Err(Error::Backend(format!(
            "qsub -terse printed no job id: {:?}",
            stdout.trim()
        )))
    }
}

fn qacct(b: &dyn Backend, id: &str) -> Result<Result<Vec<Accounted>, String>, Error> {
    let (job, task) = match id.split_once('.') {
        Some((j, t)) => (j, Some(t)),
        None => (id, None),
    };
    let mut cmd = Command::new("qacct").args(["-j", job]);
    if let Some(t) = task {
        cmd = cmd.args(["-t", t]);
    }
    let out = run(b, &cmd)?;
    if out.success() {
        let recs = parse_qacct(&out.stdout_text());
        if recs.is_empty() {
            return Ok(Err("qacct printed no record".into()));
        }
        return Ok(Ok(recs));
    }
    let said = first_line(&out.stderr_text())
        .or_else(|| first_line(&out.stdout_text()))
        .unwrap_or_default();
    if said.contains("not found") {
        Ok(Err(said))
    } else {
        Err(failure("qacct", &out))
    }
}

impl Scheduler for Sge {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "sge".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            scheduler: "Grid Engine (SGE, Son of Grid Engine, Open Grid Scheduler)".into(),
            features: vec![
                Feature::Arrays,
                Feature::Dependencies,
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
        log::info(b, &format!("submitted Grid Engine job {id}"));
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
        let live = parse_qstat(&run_ok(
            b,
            &Command::new("qstat").args(["-xml", "-u", "*"]),
        )?)?;
        let mut out = Vec::new();
        for id in &unique {
            let (job, task) = match id.split_once('.') {
                Some((j, t)) => (j, t.parse::<u64>().ok()),
                None => (id.as_str(), None),
            };
            let mine: Vec<JobStatus> = live
                .iter()
                .filter(|l| l.job == job)
                .filter(|l| match (task, &l.tasks) {
                    (None, _) => true,
                    (Some(t), Some(ts)) => tasks_hold(ts, t),
                    (Some(_), None) => false,
                })
                .map(|l| {
                    let (state, note) = live_state(&l.state);
                    let label = match &l.tasks {
                        Some(t) => format!("{}.{t}", l.job),
                        None => l.job.clone(),
                    };
                    let mut s = JobStatus::new(&label, state, &l.state);
                    s.message = note.map(str::to_string);
                    s
                })
                .collect();
            if !mine.is_empty() {
                // Tasks of an array that already ended are in accounting, not in
                // qstat; while any task is live the array is live, so qstat suffices.
                out.push(aggregate(id, mine));
                continue;
            }
            match qacct(b, id)? {
                Ok(recs) => out.push(aggregate(id, recs.iter().map(Accounted::status).collect())),
                Err(said) => {
                    let mut s = JobStatus::new(id, JobState::Unknown, "");
                    s.message = Some(format!(
                        "the job is neither queued nor in Grid Engine's accounting (deleted before it ran, or accounting rotated): {said}"
                    ));
                    out.push(s);
                }
            }
        }
        Ok(out)
    }

    fn cancel(b: &dyn Backend, id: String) -> Result<(), Error> {
        check_id(&id)?;
        let out = run(b, &Command::new("qdel").arg(&id))?;
        let text = format!("{}{}", out.stdout_text(), out.stderr_text());
        if out.success() || text.contains("does not exist") {
            Ok(())
        } else {
            Err(failure("qdel", &out))
        }
    }

    fn list(b: &dyn Backend) -> Result<Vec<JobStatus>, Error> {
        let live = parse_qstat(&run_ok(
            b,
            &Command::new("qstat").args(["-xml", "-u", "*"]),
        )?)?;
        Ok(live
            .iter()
            .map(|l| {
                let (state, note) = live_state(&l.state);
                let id = match &l.tasks {
                    Some(t) => format!("{}.{t}", l.job),
                    None => l.job.clone(),
                };
                let mut s = JobStatus::new(&id, state, &l.state);
                s.message = note.map(str::to_string);
                s
            })
            .collect())
    }

    fn drain_node(b: &dyn Backend, node: String, _reason: String) -> Result<(), Error> {
        check_node(&node)?;
        // Disabling every queue instance on the host: running jobs finish, no new ones
        // start. Grid Engine keeps no reason with it.
        run_ok(
            b,
            &Command::new("qmod").args(["-d".to_string(), format!("*@{node}")]),
        )?;
        Ok(())
    }

    fn resume_node(b: &dyn Backend, node: String) -> Result<(), Error> {
        check_node(&node)?;
        run_ok(
            b,
            &Command::new("qmod").args(["-e".to_string(), format!("*@{node}")]),
        )?;
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
        Err(Error::Invalid(format!("{node:?} is not a host name")))
    }
}

#[cfg(test)]
mod tests;
