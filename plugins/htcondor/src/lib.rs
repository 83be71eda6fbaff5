//! The HTCondor plugin: `condor_submit -terse` (the description on stdin), `condor_q -json`,
//! `condor_history -json` and `condor_rm`. Tested against fixtures only: no HTCondor runs on
//! the project's machines; `fixtures/` is written from HTCondor's documented formats.
//!
//! Invariants: one vanilla job per submission, every value written under
//! [`Escaping::HTCONDOR`]; what HTCondor cannot express here is refused. Ids are `CLUSTER`
//! (what `submit` returns) or `CLUSTER.PROC`. Status asks `condor_q`, then `condor_history`;
//! a failed `condor_rm` (its messages are undocumented) is confirmed through `status`.
//! `htcondor.KEY` attributes become `KEY = VALUE` lines (keys case-insensitive, as HTCondor
//! reads them), never one this plugin writes, a keyword, or one choosing who the job runs as.

use corral_plugin_sdk::batch::{Batch, Cancel};
use corral_plugin_sdk::ids::{JobId, Tasks};
use corral_plugin_sdk::records::{self, Deserialize};
use corral_plugin_sdk::spec::{is_word, refuse, Field, Passthrough, TextFlags};
use corral_plugin_sdk::states::{Facts, Means, Rows, StateTable};
use corral_plugin_sdk::status::Found;
use corral_plugin_sdk::submit::{ArgsFn, Description, Escaping, Submit};
use corral_plugin_sdk::Feature::Gpus;
use corral_plugin_sdk::{run_ok, Backend, Command, Error, JobSpec, JobStatus};

pub struct HtCondor;
corral_plugin_sdk::export_plugin!(HtCondor);

/// JobStatus: 1 Idle, 2 Running, 3 Removed, 4 Completed, 5 Held, 6 Transferring Output, 7 Suspended
pub const STATES: Rows<i64> = &[
    (Means::Queued, &[1]),
    (Means::Running, &[2]),
    (Means::Cancelled, &[3]),
    (Means::Exited, &[4]),
    (Means::Held, &[5]),
    (Means::Completing, &[6]),
    (Means::Suspended, &[7]),
];

const TABLE: StateTable<i64> = StateTable::new("HTCondor", STATES);
const ID: JobId = JobId::new("HTCondor", Tasks::Joined('.'));
const ATTRS: &str =
    "ClusterId,ProcId,JobStatus,ExitCode,ExitBySignal,ExitSignal,HoldReason,RemoveReason";

const UNSUPPORTED: &[(Field, &str)] = &[
    (Field::Nodes, "a vanilla job runs on one machine"),
    (Field::Account, "use htcondor.accounting_group"),
    (Field::Queue, "use htcondor.requirements"),
    (Field::Reservation, "use htcondor.requirements"),
    (Field::Walltime, "use htcondor.periodic_remove"),
    (Field::Array, "submit one job per task"),
    (Field::Dependencies, "that takes DAGMan"),
];

/// Submit commands for the spec's name, directory, stdout and stderr.
const KEYS: TextFlags = TextFlags::new("batch_name", "", "", "", "initialdir", "output", "error");
/// What this plugin writes, and the submit language's keywords.
const MANAGED: &str = "universe executable transfer_executable arguments environment getenv initialdir input output error batch_name request_cpus request_memory request_gpus queue include if elif else endif warning";

const ATTRIBUTES: Passthrough =
    Passthrough::new("htcondor", |k| is_word(k.trim_start_matches('+')))
        .form("a submit command or +Attribute name")
        .fold_case()
        .identity("+Owner +User run_as_owner +RunAsOwner accounting_group_user +AcctGroupUser")
        .managed(MANAGED);

/// One job ClassAd from `condor_q -json` or `condor_history -json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(crate = "corral_plugin_sdk::serde", rename_all = "PascalCase", default)]
pub struct Ad {
    pub cluster_id: u64,
    pub proc_id: u64,
    pub job_status: i64,
    pub exit_by_signal: bool,
    pub exit_code: Option<i32>,
    pub exit_signal: Option<i32>,
    pub hold_reason: String,
    pub remove_reason: String,
}

impl Ad {
    pub fn status(&self) -> JobStatus {
        let facts = Facts {
            exit_code: self.exit_code.filter(|_| !self.exit_by_signal),
            signal: self.exit_signal.filter(|_| self.exit_by_signal),
            removed_because: Some(self.remove_reason.clone()).filter(|r| !r.is_empty()),
            note: Some(self.hold_reason.clone()).filter(|r| !r.is_empty()),
            ..Facts::default()
        };
        let id = format!("{}.{}", self.cluster_id, self.proc_id);
        TABLE.status(&id, &self.job_status, &self.job_status.to_string(), facts)
    }
}

fn ads(b: &dyn Backend, program: &str, ids: &[String]) -> Result<Vec<Ad>, Error> {
    let cmd = Command::new(program).args(["-json", "-attributes", ATTRS]);
    records::json(program, &run_ok(b, &cmd.args(ids.iter().cloned()))?)
}

/// `id`'s jobs in `ads` (a cluster's, or one job's); `why` if there are none.
fn found(ads: &[Ad], id: &str, why: Option<&str>) -> Found {
    let mine = |a: &&Ad| ID.covers(id, &a.cluster_id.to_string(), &a.proc_id.to_string());
    Found::or_gone(ads.iter().filter(mine).map(Ad::status).collect(), why)
}

fn live(b: &dyn Backend, ids: &[String]) -> Result<Vec<Found>, Error> {
    let ads = ads(b, "condor_q", ids)?;
    Ok(ids.iter().map(|id| found(&ads, id, None)).collect())
}

/// The history (kept by default), for the jobs that ended or left the queue.
fn history(b: &dyn Backend, ids: &[String]) -> Result<Vec<Found>, Error> {
    let ads = ads(b, "condor_history", ids)?;
    let why = "the job left HTCondor's queue and condor_history has no record of it";
    Ok(ids.iter().map(|id| found(&ads, id, Some(why))).collect())
}

/// The submit description: one vanilla job, the executable a path on the execute node.
pub fn description(program: &str, args: &[String], spec: &JobSpec) -> Result<String, Error> {
    refuse(spec, "HTCondor", UNSUPPORTED)?;
    let mut d = Description::for_submit(Escaping::HTCONDOR, program, args);
    d.line("universe = vanilla");
    d.line("transfer_executable = false");
    d.program(spec, ["executable", "arguments", "environment", "input"])?;
    d.fields(spec, &KEYS)?;
    d.counts(spec, ["request_cpus", "request_memory", "request_gpus"])?;
    d.attributes(spec, &ATTRIBUTES)?.line("queue 1");
    Ok(d.finish())
}

/// The cluster id in `condor_submit -terse` output (`23.0 - 23.0`).
pub fn parse_terse(stdout: &str) -> Result<String, Error> {
    let cluster = stdout.trim_start().split(['.', ' ']).next().unwrap_or("");
    let bad = Error::Backend(format!("condor_submit printed no job id: {stdout:?}"));
    ID.split(cluster).map(|_| cluster.to_string()).ok_or(bad)
}

/// `condor_submit -terse -`: the description on stdin, job id ranges on stdout.
const TERSE: ArgsFn = |_| Ok(vec!["-terse".into(), "-".into()]);
const SUBMIT: Submit = Submit::new("condor_submit", TERSE, description, parse_terse);

/// This plugin: `condor_submit`, `condor_q` then `condor_history`, `condor_rm`.
const HTCONDOR: Batch = Batch::new("htcondor", env!("CARGO_PKG_VERSION"), "HTCondor")
    .features(&[Gpus])
    .submit(SUBMIT)
    .status(|id| ID.check(id), live, Some(history))
    .cancel(Cancel::new("condor_rm", &[]));

impl corral_plugin_sdk::Scheduler for HtCondor {
    const BATCH: Option<Batch> = Some(HTCONDOR);
}

#[cfg(test)]
mod tests;
