//! The job table: every job the coordinator holds, with its phase, its scheduler's
//! latest word and the history of its changes, and how long finished jobs are kept.
//!
//! Invariants:
//! - A job's one-word state ([`Job::word`]) is derived from its phase and state, never
//!   stored beside them, so the two cannot disagree; rows and views carry a copy.
//! - Every change of state is one history entry ([`Job::record`]); an answer that
//!   repeats the state adds nothing. A note ([`Job::note`], e.g. "cancel requested")
//!   is an entry that changes no state.
//! - A job left `submitting` by a stopped coordinator becomes `orphaned` when the table
//!   is loaded: whether its scheduler has it is unknown.
//! - Finished jobs ([`Job::is_finished`]) are forgotten `jobs.retention` after their
//!   last change, at most once a minute; unfinished ones never are.
//!
//! The runtime [`Job`] converts explicitly to the store's [`JobRow`] and to the API's
//! [`JobView`]; neither is kept in the table.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tracing::warn;

use crate::store::{HistoryRow, JobRow};
use corral_proto::api::{JobId, JobView, Phase, Transition};
use corral_proto::job::{JobSpec, JobState};
use corral_proto::model::unix_ms;

/// A job as the coordinator tracks it.
#[derive(Debug, Clone)]
pub(super) struct Job {
    pub(super) id: JobId,
    /// The scheduler plugin's name.
    pub(super) scheduler: String,
    /// The node whose plugin took (or is taking) the submission: its submit host, the one
    /// its status and cancel calls prefer.
    pub(super) node: String,
    /// Who submitted it (the authenticated user); its programs run as this user. Empty
    /// for jobs recorded before owners were: only admins see those in full.
    pub(super) owner: String,
    pub(super) native_id: Option<String>,
    pub(super) phase: Phase,
    pub(super) state: Option<JobState>,
    pub(super) native_state: Option<String>,
    pub(super) exit_code: Option<i32>,
    pub(super) message: Option<String>,
    /// As submitted (dependencies by corral id).
    pub(super) spec: JobSpec,
    pub(super) submitted_ms: u64,
    pub(super) updated_ms: u64,
    pub(super) polled_ms: Option<u64>,
    pub(super) poll_error: Option<String>,
    /// The host whose plugin gave the last status answer about it (any authorized host of
    /// its scheduler instance). Kept in memory only: unset after a restart until the next
    /// answer.
    pub(super) polled_via: Option<String>,
    pub(super) history: Vec<Step>,
}

/// One history entry.
#[derive(Debug, Clone)]
pub(super) struct Step {
    at_ms: u64,
    /// [`Job::word`] at the time.
    state: String,
    native_state: Option<String>,
    message: Option<String>,
}

impl Job {
    /// A submission about to be recorded: `submitting`, id not yet assigned.
    pub(super) fn submitting(scheduler: &str, node: &str, owner: &str, spec: JobSpec) -> Job {
        let now = unix_ms();
        let mut job = Job {
            id: JobId(0),
            scheduler: scheduler.to_string(),
            node: node.to_string(),
            owner: owner.to_string(),
            native_id: None,
            phase: Phase::Submitting,
            state: None,
            native_state: None,
            exit_code: None,
            message: None,
            spec,
            submitted_ms: now,
            updated_ms: now,
            polled_ms: None,
            poll_error: None,
            polled_via: None,
            history: vec![],
        };
        job.record(Some(format!(
            "submitting through {scheduler} on node {node}"
        )));
        job
    }

    /// One word for tables and metrics: the state's once submitted, else the phase's.
    pub(super) fn word(&self) -> &'static str {
        match (&self.phase, &self.state) {
            (Phase::Submitted, Some(s)) => s.word(),
            (p, _) => p.as_str(),
        }
    }

    /// Whether corral is done with it: terminal state, rejected or orphaned.
    pub(super) fn is_finished(&self) -> bool {
        match self.phase {
            Phase::Rejected | Phase::Orphaned => true,
            Phase::Submitting => false,
            Phase::Submitted => self.state.as_ref().is_some_and(JobState::is_terminal),
        }
    }

    /// Whether the poller asks about it.
    pub(super) fn tracked(&self) -> bool {
        self.phase == Phase::Submitted && !self.is_finished() && self.native_id.is_some()
    }

    /// Records the current state as a history entry and as the last change.
    pub(super) fn record(&mut self, message: Option<String>) {
        let now = unix_ms();
        self.updated_ms = now;
        self.note_at(now, message);
    }

    /// A history entry that changes nothing (the state stays, so does `updated_ms`).
    pub(super) fn note(&mut self, message: &str) {
        self.note_at(unix_ms(), Some(message.to_string()));
    }

    fn note_at(&mut self, at_ms: u64, message: Option<String>) {
        self.history.push(Step {
            at_ms,
            state: self.word().to_string(),
            native_state: self.native_state.clone(),
            message,
        });
    }

    /// The API's view; listings leave the history out.
    pub(super) fn view(&self, with_history: bool) -> JobView {
        JobView {
            id: self.id,
            scheduler: self.scheduler.clone(),
            node: self.node.clone(),
            owner: self.owner.clone(),
            native_id: self.native_id.clone(),
            phase: self.phase,
            state: self.state.clone(),
            state_word: self.word().to_string(),
            native_state: self.native_state.clone(),
            exit_code: self.exit_code,
            message: self.message.clone(),
            spec: self.spec.clone(),
            submitted_ms: self.submitted_ms,
            updated_ms: self.updated_ms,
            polled_ms: self.polled_ms,
            poll_error: self.poll_error.clone(),
            polled_via: self.polled_via.clone(),
            history: if with_history {
                self.history
                    .iter()
                    .map(|s| Transition {
                        at_ms: s.at_ms,
                        state: s.state.clone(),
                        native_state: s.native_state.clone(),
                        message: s.message.clone(),
                    })
                    .collect()
            } else {
                vec![]
            },
            redacted: false,
        }
    }

    /// What the store keeps of it.
    pub(super) fn row(&self) -> JobRow {
        JobRow {
            id: self.id,
            scheduler: self.scheduler.clone(),
            node: self.node.clone(),
            owner: self.owner.clone(),
            native_id: self.native_id.clone(),
            phase: self.phase,
            state: self.state.clone(),
            state_word: self.word().to_string(),
            native_state: self.native_state.clone(),
            exit_code: self.exit_code,
            message: self.message.clone(),
            spec: self.spec.clone(),
            submitted_ms: self.submitted_ms,
            updated_ms: self.updated_ms,
            polled_ms: self.polled_ms,
            poll_error: self.poll_error.clone(),
            history: self
                .history
                .iter()
                .map(|s| HistoryRow {
                    at_ms: s.at_ms,
                    state: s.state.clone(),
                    native_state: s.native_state.clone(),
                    message: s.message.clone(),
                })
                .collect(),
        }
    }

    /// A job loaded from the store (its stored state word is not needed: it is derived).
    pub(super) fn from_row(row: JobRow) -> Job {
        Job {
            id: row.id,
            scheduler: row.scheduler,
            node: row.node,
            owner: row.owner,
            native_id: row.native_id,
            phase: row.phase,
            state: row.state,
            native_state: row.native_state,
            exit_code: row.exit_code,
            message: row.message,
            spec: row.spec,
            submitted_ms: row.submitted_ms,
            updated_ms: row.updated_ms,
            polled_ms: row.polled_ms,
            poll_error: row.poll_error,
            polled_via: None,
            history: row
                .history
                .into_iter()
                .map(|h| Step {
                    at_ms: h.at_ms,
                    state: h.state,
                    native_state: h.native_state,
                    message: h.message,
                })
                .collect(),
        }
    }
}

/// Every job by id (ids ascend with submission), and when finished ones were last
/// pruned.
pub(super) struct Table {
    jobs: BTreeMap<u64, Job>,
    last_prune: Instant,
}

impl Table {
    /// The table from what the database held. Jobs found `submitting` become `orphaned`;
    /// they are returned too, to be written back.
    pub(super) fn load(rows: Vec<JobRow>) -> (Table, Vec<JobRow>) {
        let mut jobs = BTreeMap::new();
        let mut orphaned = vec![];
        for row in rows {
            let mut job = Job::from_row(row);
            if job.phase == Phase::Submitting {
                job.phase = Phase::Orphaned;
                job.message = Some(format!(
                    "the coordinator stopped while {} on node {} was submitting it: whether the scheduler has it is unknown (look for it with the scheduler's own tools)",
                    job.scheduler, job.node
                ));
                job.record(job.message.clone());
                warn!(job = %job.id, scheduler = %job.scheduler, node = %job.node, "job was being submitted when the coordinator stopped; marked orphaned");
                orphaned.push(job.row());
            }
            jobs.insert(job.id.0, job);
        }
        let table = Table {
            jobs,
            last_prune: Instant::now(),
        };
        (table, orphaned)
    }

    pub(super) fn len(&self) -> usize {
        self.jobs.len()
    }

    pub(super) fn get(&self, id: JobId) -> Option<&Job> {
        self.jobs.get(&id.0)
    }

    pub(super) fn get_mut(&mut self, id: JobId) -> Option<&mut Job> {
        self.jobs.get_mut(&id.0)
    }

    /// Adds or replaces `job` (by its id).
    pub(super) fn put(&mut self, job: Job) {
        self.jobs.insert(job.id.0, job);
    }

    /// Oldest first.
    pub(super) fn iter(&self) -> impl Iterator<Item = &Job> {
        self.jobs.values()
    }

    /// The tracked jobs of scheduler instance `scheduler`, whichever host submitted them.
    pub(super) fn tracked_in<'a>(
        &'a mut self,
        scheduler: &'a str,
    ) -> impl Iterator<Item = &'a mut Job> {
        self.jobs
            .values_mut()
            .filter(move |j| j.tracked() && j.scheduler == scheduler)
    }

    /// Removes finished jobs whose last change is older than `retention` ("0s": never)
    /// and returns their ids; does nothing if it last ran less than a minute ago.
    pub(super) fn prune(&mut self, retention: Duration) -> Vec<u64> {
        if retention.is_zero() || self.last_prune.elapsed() < Duration::from_secs(60) {
            return vec![];
        }
        self.last_prune = Instant::now();
        let cutoff = unix_ms().saturating_sub(retention.as_millis() as u64);
        let old: Vec<u64> = self
            .jobs
            .values()
            .filter(|j| j.is_finished() && j.updated_ms < cutoff)
            .map(|j| j.id.0)
            .collect();
        for id in &old {
            self.jobs.remove(id);
        }
        old
    }

    /// Makes the next [`Table::prune`] run regardless of when the last one did (tests).
    #[cfg(test)]
    pub(super) fn prune_due(&mut self) {
        self.last_prune = Instant::now() - Duration::from_secs(61);
    }
}
