//! The {{name}} plugin: a batch scheduler driven through its programs by the corral plugin
//! host, each run by argv under the grants of `{{name}}.toml`.
//!
//! Scaffolded by `corral plugin new`: the program names, options, output formats and
//! states below are placeholders for a scheduler that does not exist. Replace each with
//! your scheduler's (one function or constant at a time), replace `fixtures/` with its
//! real output, and keep `cargo test -p {{package}}` green. plugins/README.md explains
//! every SDK piece used here.
//!
//! Invariants (keep them when you adapt this file):
//! - Programs run by argv, never through a shell; the job script goes on the submit
//!   program's stdin with every value quoted by the SDK, so `render` is exactly what
//!   `submit` sends.
//! - Every job id is checked ([`ID`]) before it is put into an argv.
//! - A job that left the live queue is looked up in the history; a job neither knows is
//!   `unknown` with the reason, never assumed to have succeeded.
//! - A spec field the scheduler cannot express is refused ([`UNSUPPORTED`]), never
//!   silently dropped.
//! - `cancel` is idempotent: a job that already ended or that the scheduler forgot is
//!   cancelled; any other failure is confirmed through `status` first.

use corral_plugin_sdk::batch::{Batch, Cancel};
use corral_plugin_sdk::ids::{JobId, Tasks};
use corral_plugin_sdk::records::{self, Deserialize};
use corral_plugin_sdk::spec::{check_counts, refuse, Field, TextFlags};
use corral_plugin_sdk::states::{Facts, Means, Rows, StateTable};
use corral_plugin_sdk::status::Found;
use corral_plugin_sdk::submit::Submit;
use corral_plugin_sdk::{first_line, run_ok, Backend, Command, Error, JobSpec, JobStatus};

pub struct {{Type}};

corral_plugin_sdk::export_plugin!({{Type}});

/// The scheduler, for people and messages.
const SCHEDULER: &str = "{{name}}";

/// The programs this plugin runs, by their bare names: `{{name}}.toml` grants exactly
/// these (a unit test checks).
pub const PROGRAMS: [&str; 4] = [SUBMIT, QUEUE, HISTORY, CANCEL];
const SUBMIT: &str = "{{name}}-submit";
const QUEUE: &str = "{{name}}-queue";
const HISTORY: &str = "{{name}}-history";
const CANCEL: &str = "{{name}}-cancel";

/// The state table to fill in: each portable meaning with the native states that mean
/// it. A state not listed is `unknown`, naming it. `Means::Exited` lets the exit code
/// decide (0 succeeded, another code failed, none unknown).
pub const STATES: Rows<&str> = &[
    (Means::Queued, &["PENDING"]),
    (Means::Held, &["HELD"]),
    (Means::Running, &["RUNNING"]),
    (Means::Suspended, &["SUSPENDED"]),
    (Means::Completing, &["COMPLETING"]),
    (Means::Exited, &["COMPLETED"]),
    (Means::Failed("the scheduler marked it failed"), &["FAILED"]),
    (Means::Cancelled, &["CANCELLED"]),
    (Means::TimedOut, &["TIMEOUT"]),
];

const TABLE: StateTable<&str> = StateTable::new(SCHEDULER, STATES);

/// Job ids: a number (`Tasks::Joined('_')` or `Tasks::Bracketed` for array tasks).
const ID: JobId = JobId::new(SCHEDULER, Tasks::None);

/// What this scheduler cannot express, with what to do instead.
const UNSUPPORTED: &[(Field, &str)] = &[
    (Field::Nodes, "it runs each job on one machine"),
    (Field::Gpus, "it does not schedule GPUs"),
    (Field::Reservation, "it has no reservations"),
    (Field::Array, "submit one job per task"),
    (
        Field::Dependencies,
        "submit the next job when this one has ended",
    ),
];

/// The options for the spec's one-line fields: name, queue, account, reservation,
/// directory, stdout, stderr (`""`: none; the script `cd`s to the directory itself).
const TEXT: TextFlags = TextFlags::new(
    "--name",
    "--queue",
    "--account",
    "",
    "",
    "--output",
    "--error",
);

/// The submit program's argv (after its name) for `spec`; the script goes on stdin.
pub fn submit_args(spec: &JobSpec) -> Result<Vec<String>, Error> {
    refuse(spec, SCHEDULER, UNSUPPORTED)?;
    check_counts(spec)?;
    let mut a = TEXT.argv(spec)?;
    if let Some(cpus) = spec.cpus_per_task {
        a.extend(["--cpus".into(), cpus.to_string()]);
    }
    if let Some(mb) = spec.memory_mb {
        a.extend(["--memory-mb".into(), mb.to_string()]);
    }
    if let Some(s) = spec.walltime_seconds {
        a.extend(["--time".into(), s.to_string()]);
    }
    Ok(a)
}

/// The job id in the submit program's output (`Submitted job 42`).
pub fn parse_submit(stdout: &str) -> Result<String, Error> {
    let line = first_line(stdout).unwrap_or_default();
    let id = line.strip_prefix("Submitted job ").map(str::trim);
    match id {
        Some(id) if ID.check(id).is_ok() => Ok(id.to_string()),
        _ => Err(Error::Backend(format!(
            "{SUBMIT} printed no job id: {:?}",
            stdout.trim()
        ))),
    }
}

/// One job as the queue and history programs print it (`--json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(crate = "corral_plugin_sdk::serde", default)]
pub struct Record {
    pub id: String,
    pub state: String,
    pub exit_code: Option<i32>,
    pub reason: String,
}

#[derive(Deserialize)]
#[serde(crate = "corral_plugin_sdk::serde")]
struct Listing {
    #[serde(default)]
    jobs: Vec<Record>,
}

impl Record {
    pub fn status(&self) -> JobStatus {
        let facts = Facts {
            exit_code: self.exit_code,
            note: Some(self.reason.clone()).filter(|r| !r.is_empty()),
            ..Facts::default()
        };
        TABLE.status(&self.id, self.state.as_str(), &self.state, facts)
    }
}

/// Runs `program --json IDS...` and reads its records.
fn records(b: &dyn Backend, program: &str, ids: &[String]) -> Result<Vec<Record>, Error> {
    let cmd = Command::new(program)
        .arg("--json")
        .args(ids.iter().cloned());
    let listing: Listing = records::json(program, &run_ok(b, &cmd)?)?;
    Ok(listing.jobs)
}

/// `id`'s record in `recs`, or `why` (a history's last word) when there is none.
fn found(recs: &[Record], id: &str, why: Option<&str>) -> Found {
    let mine = recs
        .iter()
        .filter(|r| r.id == id)
        .map(Record::status)
        .collect();
    Found::or_gone(mine, why)
}

/// The live lookup: one queue query for every id.
fn live(b: &dyn Backend, ids: &[String]) -> Result<Vec<Found>, Error> {
    let recs = records(b, QUEUE, ids)?;
    Ok(ids.iter().map(|id| found(&recs, id, None)).collect())
}

/// The history lookup, for the ids the queue did not settle.
fn history(b: &dyn Backend, ids: &[String]) -> Result<Vec<Found>, Error> {
    let recs = records(b, HISTORY, ids)?;
    let why = "the job left the queue and the history has no record of it";
    Ok(ids.iter().map(|id| found(&recs, id, Some(why))).collect())
}

/// What the cancel program says of a job that already ended or that it does not know.
const CANCEL_GONE: &[&str] = &["already finished", "no such job"];

/// This plugin: its name (the manifest's), how it submits, looks up and cancels.
const PLUGIN: Batch = Batch::new("{{name}}", env!("CARGO_PKG_VERSION"), SCHEDULER)
    .submit(Submit::script(SUBMIT, submit_args, parse_submit))
    .status(|id| ID.check(id), live, Some(history))
    .cancel(Cancel::new(CANCEL, CANCEL_GONE));

impl corral_plugin_sdk::Scheduler for {{Type}} {
    const BATCH: Option<Batch> = Some(PLUGIN);
}

#[cfg(test)]
mod tests;
