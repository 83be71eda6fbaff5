//! The PBS plugin (PBS Professional / OpenPBS): `qsub`, `qstat -f -F json -x`, `qdel`,
//! `pbsnodes`, run by their bare granted names through the host.
//!
//! Tested against fixtures only: PBS cannot run on the project's machines, so
//! `fixtures/` holds output in the documented PBS Pro 2022 / OpenPBS formats (JSON
//! `qstat` and `pbsnodes`, `qsub` and `qdel` messages), written by hand from those
//! formats, not captured from a live server. A site should check the plugin against its own PBS
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
//! - `pbs.*` attributes become `-l resource=value`; names of PBS's identity attributes
//!   (`-u`'s `User_List`, `group_list`) are refused, so none can change who a job runs as.
//! - Nodes: `drain-node` is `pbsnodes -o -C REASON NODE` (offline: running jobs finish),
//!   `resume-node` is `pbsnodes -r -C "resumed by corral" NODE`. PBS keeps a vnode's
//!   comment until something replaces it, so both always set one: otherwise a person's
//!   later `pbsnodes -o` without `-C` would show corral's old comment, and corral would
//!   take that person's drain for its own. `node-state` reads `pbsnodes -F json -v
//!   NODE` ([`parse_pbsnodes`]): drained when `state` lists `offline`, the reason being
//!   the `comment`. Written from the documented format, tested against that only.
//! - What is PBS's own is here (argv, parsers, table, lookup); the rest is the SDK's,
//!   wired by the one declaration `PBS` ([`corral_plugin_sdk::batch::Batch`]).
//! - Torque differs: its `qstat -x` means XML, it has no `-F json`, arrays use `-t` and
//!   ids `123[]` differently, and states include `C`. Torque is therefore not supported
//!   by this plugin (its state table still names `C` for completeness).

use std::collections::BTreeMap;

use corral_plugin_sdk::batch::{Batch, Cancel};
use corral_plugin_sdk::ids::is_number;
use corral_plugin_sdk::nodes::{Arg, NodeAdmin, StateQuery, Unknown};
use corral_plugin_sdk::records::{self, Deserialize};
use corral_plugin_sdk::script::check_line;
use corral_plugin_sdk::spec::{self, check_array, check_counts, is_word, Passthrough, TextFlags};
use corral_plugin_sdk::states::{Facts, Means, Rows, StateTable};
use corral_plugin_sdk::status::Found;
use corral_plugin_sdk::submit::Submit;
use corral_plugin_sdk::Feature::{Arrays, Dependencies, Drain, Gpus, List, Reservations};
use corral_plugin_sdk::{
    failure, first_line, run, run_ok, Backend, Command, Error, JobSpec, JobState, JobStatus,
    NodeState, Scheduler,
};

pub struct Pbs;

corral_plugin_sdk::export_plugin!(Pbs);

/// PBS job states (`job_state`) and what they mean portably; `Ended` ones are read by
/// [`ended`]. The one place PBS states are interpreted.
pub const STATES: Rows<&str> = &[
    (Means::Queued, &["Q", "T", "W"]),
    (Means::Held, &["H"]),
    (Means::Running, &["R", "B"]),
    (Means::Suspended, &["S", "U"]),
    (Means::Completing, &["E"]),
    // `C` is Torque's "completed".
    (Means::Ended, &["F", "X", "C"]),
    (
        Means::Unknown("the job moved to another PBS server"),
        &["M"],
    ),
];

const TABLE: StateTable<&str> = StateTable::new("PBS", STATES);

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

/// `pbs.*` attributes become `-l resource=value`, which can ask for resources only.
/// qsub's `-u` (the job's `User_List`) and `-W group_list` pick the user and group a job
/// runs as: those names are refused as resource names too, so no attribute ever names
/// them, whatever qsub makes of it.
const ATTRIBUTES: Passthrough = Passthrough::new("pbs", is_word)
    .form("a PBS resource name")
    .identity("u user_list group_list")
    .fold_case();

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

/// `qstat -f -F json`: the `Jobs` object (absent when there are none), by job id.
#[derive(Deserialize)]
#[serde(crate = "corral_plugin_sdk::serde")]
struct Qstat {
    #[serde(rename = "Jobs", default)]
    jobs: BTreeMap<String, Job>,
}

#[derive(Deserialize)]
#[serde(crate = "corral_plugin_sdk::serde")]
struct Job {
    #[serde(default)]
    job_state: String,
    #[serde(default, deserialize_with = "records::int")]
    substate: Option<i64>,
    #[serde(rename = "Exit_status", default, deserialize_with = "records::int")]
    exit_status: Option<i64>,
    comment: Option<String>,
    #[serde(default)]
    resources_used: Walltime,
    #[serde(rename = "Resource_List", default)]
    resource_list: Walltime,
}

#[derive(Default, Deserialize)]
#[serde(crate = "corral_plugin_sdk::serde")]
struct Walltime {
    walltime: Option<String>,
}

/// Seconds from `HH:MM:SS`.
fn hms(s: Option<&str>) -> Option<u64> {
    let mut total = 0u64;
    for part in s?.split(':') {
        total = total
            .checked_mul(60)?
            .checked_add(part.trim().parse().ok()?)?;
    }
    Some(total)
}

/// Parses `qstat -f -F json` output.
pub fn parse_qstat(text: &str) -> Result<Vec<Record>, Error> {
    let doc: Qstat = records::json("qstat", text)?;
    Ok(doc
        .jobs
        .into_iter()
        .map(|(id, j)| Record {
            id,
            job_state: j.job_state,
            substate: j.substate,
            exit_status: j.exit_status,
            comment: j.comment,
            walltime_used: hms(j.resources_used.walltime.as_deref()),
            walltime_limit: hms(j.resource_list.walltime.as_deref()),
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
        let facts = Facts {
            exit_code: self
                .exit_status
                .filter(|c| (0..=255).contains(c))
                .map(|c| c as i32),
            note: self.comment.clone(),
            ended: Some(ended(self)),
            ..Facts::default()
        };
        TABLE.status(&self.id, self.job_state.as_str(), &self.job_state, facts)
    }
}

/// A PBS job id as qsub prints it: `123`, `123.server`, `123[]`, `123[4].server`.
pub fn is_job_id(id: &str) -> bool {
    let (seq, server) = match id.split_once('.') {
        Some((a, b)) => (a, Some(b)),
        None => (id, None),
    };
    let seq_ok = match seq.split_once('[') {
        Some((n, rest)) => {
            is_number(n)
                && rest
                    .strip_suffix(']')
                    .is_some_and(|i| i.is_empty() || is_number(i))
        }
        None => is_number(seq),
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

/// The options for the spec's one-line fields but the queue and reservation (one `-q`,
/// below). PBS has no working-directory option: the script `cd`s.
const TEXT: TextFlags = TextFlags::new("-N", "", "-A", "", "", "-o", "-e");

/// The qsub argv (after the program name) for `spec`.
pub fn qsub_args(spec: &JobSpec) -> Result<Vec<String>, Error> {
    check_counts(spec)?;
    let mut a: Vec<String> = vec!["-S".into(), "/bin/sh".into()];
    a.extend(TEXT.argv(spec)?);
    let queue = match (&spec.queue, &spec.reservation) {
        (Some(_), Some(_)) => {
            return Err(Error::Invalid(
                "PBS runs a reservation's jobs in the reservation's own queue: set queue or reservation, not both".into(),
            ))
        }
        (Some(q), None) => Some(("queue", q.as_str())),
        // A PBS reservation (R123.server) is a queue named R123.
        (None, Some(r)) => Some(("reservation", r.split('.').next().unwrap_or(r))),
        (None, None) => None,
    };
    if let Some((field, q)) = queue {
        check_line(field, q)?;
        a.extend(["-q".into(), q.into()]);
    }
    let mut select = format!("select={}", spec.nodes.unwrap_or(1));
    if let Some(cpus) = spec::cpus_per_node(spec) {
        select.push_str(&format!(":ncpus={cpus}"));
    }
    if let Some(t) = spec.tasks_per_node {
        select.push_str(&format!(":mpiprocs={t}"));
    }
    if let Some(g) = spec.gpus_per_node {
        select.push_str(&format!(":ngpus={g}"));
    }
    if let Some(mb) = spec.memory_mb {
        select.push_str(&format!(":mem={mb}mb"));
    }
    if spec.nodes.is_some() || select.contains(':') {
        a.extend(["-l".into(), select]);
    }
    if let Some(s) = spec.walltime_seconds {
        a.extend(["-l".into(), format!("walltime={}", spec::hhmmss(s))]);
    }
    if let Some(arr) = &spec.array {
        check_array(arr, 0, "PBS")?;
        a.extend(["-J".into(), spec::array_range(arr)]);
    }
    if !spec.dependencies.is_empty() {
        let deps = spec::dependency_list(&spec.dependencies, check_id)?;
        a.extend(["-W".into(), format!("depend={deps}")]);
    }
    for (resource, value) in ATTRIBUTES.pairs(spec)? {
        a.extend(["-l".into(), format!("{resource}={value}")]);
    }
    Ok(a)
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

const UNKNOWN_JOB: &str = "Unknown Job Id";

fn unknown_job(line: &str) -> bool {
    line.contains(UNKNOWN_JOB)
}

/// The one lookup: `qstat -f -F json -x` for every id (`-x`: finished jobs too, from the
/// server's job history).
fn qstat(b: &dyn Backend, ids: &[String]) -> Result<Vec<Found>, Error> {
    let cmd = Command::new("qstat")
        .args(["-f", "-F", "json", "-x"])
        .args(ids.iter().cloned());
    let out = run(b, &cmd)?;
    let stderr = out.stderr_text();
    // qstat exits non-zero when any id is unknown, and still prints the others.
    let other_errors = stderr
        .lines()
        .any(|l| !l.trim().is_empty() && !unknown_job(l));
    if !out.success() && other_errors {
        return Err(failure("qstat", &out));
    }
    let recs = parse_qstat(&out.stdout_text())?;
    Ok(ids.iter().map(|id| found(&recs, &stderr, id)).collect())
}

/// What qstat said of `id`: its record, or its own words about not knowing it.
fn found(recs: &[Record], stderr: &str, id: &str) -> Found {
    if let Some(r) = recs.iter().find(|r| same_job(id, &r.id)) {
        return Found::Parts(vec![r.status()]);
    }
    let said = stderr.lines().find(|l| unknown_job(l) && l.contains(id));
    Found::Gone(format!(
        "PBS no longer knows the job (job history disabled or expired): {}",
        said.map(str::trim).unwrap_or("qstat did not report it")
    ))
}

/// This plugin: `qsub` submits, `qstat` looks up, `qdel` cancels, `pbsnodes` drains.
const PBS: Batch = Batch::new("pbs", env!("CARGO_PKG_VERSION"), SCHEDULER)
    .features(&[Arrays, Dependencies, Gpus, Reservations, Drain, List])
    .submit(Submit::script("qsub", qsub_args, parse_qsub))
    .status(check_id, qstat, None)
    .cancel(Cancel::new("qdel", &["Job has finished", UNKNOWN_JOB]))
    .nodes(ADMIN);

const SCHEDULER: &str = "PBS Professional / OpenPBS";

impl Scheduler for Pbs {
    const BATCH: Option<Batch> = Some(PBS);

    fn list(b: &dyn Backend) -> Result<Vec<JobStatus>, Error> {
        let text = run_ok(b, &Command::new("qstat").args(["-f", "-F", "json"]))?;
        Ok(parse_qstat(&text)?.iter().map(Record::status).collect())
    }
}

/// `pbsnodes -F json -v NODE`: the `nodes` object, by vnode name.
#[derive(Deserialize)]
#[serde(crate = "corral_plugin_sdk::serde")]
struct Pbsnodes {
    #[serde(default)]
    nodes: BTreeMap<String, Vnode>,
}

#[derive(Deserialize)]
#[serde(crate = "corral_plugin_sdk::serde")]
struct Vnode {
    /// Comma-separated: `free`, `offline,job-busy`, `down,offline`.
    #[serde(default)]
    state: String,
    comment: Option<String>,
}

/// Parses `pbsnodes -F json -v NODE` for `node-state`: drained when the vnode's state
/// lists `offline` (what `pbsnodes -o` sets), with its comment as the reason. The vnode
/// is the one named `node`, or the only one printed; none printed is no such node.
pub fn parse_pbsnodes(node: &str, json: &str) -> Result<Option<NodeState>, Error> {
    let parsed: Pbsnodes = records::json("pbsnodes", json)?;
    let vnode = match parsed.nodes.get(node) {
        Some(v) => v,
        None if parsed.nodes.is_empty() => return Ok(None),
        None if parsed.nodes.len() == 1 => parsed.nodes.values().next().expect("one vnode"),
        None => {
            return Err(Error::Backend(format!(
                "pbsnodes -v {node} printed {} vnodes, none of them {node:?}: {}",
                parsed.nodes.len(),
                parsed.nodes.keys().cloned().collect::<Vec<_>>().join(", ")
            )))
        }
    };
    let drained = vnode.state.split(',').any(|s| s.trim() == "offline");
    Ok(Some(NodeState::new(drained, vnode.comment.as_deref())))
}

/// `pbsnodes -o -C COMMENT NODE` marks a vnode offline (running jobs finish),
/// `pbsnodes -r -C COMMENT NODE` clears it; both replace the comment (see the module
/// docs). `pbsnodes -F json -v NODE` reads it back; of a vnode it does not have,
/// pbsnodes says `Unknown node`.
const ADMIN: NodeAdmin = NodeAdmin::new("pbsnodes", "[]", "PBS vnode name")
    .drain(&[
        Arg::Text("-o"),
        Arg::Text("-C"),
        Arg::Reason("", "drained by corral"),
        Arg::Node(""),
    ])
    .resume(&[
        Arg::Text("-r"),
        Arg::Text("-C"),
        Arg::Text("resumed by corral"),
        Arg::Node(""),
    ])
    .state(StateQuery::new(
        "pbsnodes",
        &[
            Arg::Text("-F"),
            Arg::Text("json"),
            Arg::Text("-v"),
            Arg::Node(""),
        ],
        Unknown::Says(&["Unknown node"]),
        parse_pbsnodes,
    ));

#[cfg(test)]
mod tests;
