//! Write-behind changes the database has not taken yet, and whether it is taking writes.
//!
//! Invariants:
//! - A write-behind change (node rows, events, poll results, deletions) is kept here
//!   until a commit holding it succeeds: a full disk or an I/O error delays it, never
//!   drops it. Changes are merged by key as they come (the newest row of a node or job
//!   wins, a deletion replaces the row), so what is kept is bounded by the number of
//!   nodes and jobs, not by how long the disk stays full; applying the merged set gives
//!   the same database as applying every change in order, because each key's last
//!   change is all that survives either way.
//! - Events are the exception to "never dropped": beyond the retention count the oldest
//!   go, as the prune would have taken them from the database anyway.
//! - Only resource failures are retried (a full disk, I/O errors, a locked or read-only
//!   file). Any other failure is a bug in what was written: it is logged with the
//!   rows' count and dropped, so one bad row cannot block every later write.
//! - While changes are kept, an acknowledged write (a job, a token, a drain) is refused
//!   without being tried: it would otherwise commit ahead of older changes to the same
//!   rows, and a caller must hear that the database is not taking writes.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::ErrorCode;

use super::{EventRow, JobRow, NodeRow};

/// Write-behind changes waiting for a commit.
#[derive(Debug, Default)]
pub(super) struct Pending {
    /// `None`: the node's row is to be deleted.
    pub nodes: BTreeMap<String, Option<NodeRow>>,
    pub events: VecDeque<EventRow>,
    /// `None`: the job and its history are to be deleted.
    pub jobs: BTreeMap<u64, Option<JobRow>>,
    /// Events dropped at the retention cap while waiting.
    pub dropped_events: u64,
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty() && self.events.is_empty() && self.jobs.is_empty()
    }

    /// How many rows are waiting.
    pub fn len(&self) -> usize {
        self.nodes.len() + self.events.len() + self.jobs.len()
    }

    pub fn nodes(&mut self, rows: Vec<NodeRow>) {
        for n in rows {
            self.nodes.insert(n.name.clone(), Some(n));
        }
    }

    pub fn forget_node(&mut self, name: String) {
        self.nodes.insert(name, None);
    }

    pub fn events(&mut self, rows: Vec<EventRow>, retention: u32) {
        self.events.extend(rows);
        while self.events.len() > retention.max(1) as usize {
            self.events.pop_front();
            self.dropped_events += 1;
        }
    }

    pub fn jobs(&mut self, rows: Vec<JobRow>) {
        for j in rows {
            self.jobs.insert(j.id.0, Some(j));
        }
    }

    pub fn delete_jobs(&mut self, ids: Vec<u64>) {
        for id in ids {
            self.jobs.insert(id, None);
        }
    }
}

/// Whether an error is the database's resources failing (worth retrying when they come
/// back) rather than something wrong with what was written.
pub(super) fn is_resource_failure(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<rusqlite::Error>())
        .any(|e| {
            matches!(
                e.sqlite_error_code(),
                Some(
                    ErrorCode::DiskFull
                        | ErrorCode::SystemIoFailure
                        | ErrorCode::CannotOpen
                        | ErrorCode::ReadOnly
                        | ErrorCode::DatabaseBusy
                        | ErrorCode::DatabaseLocked
                        | ErrorCode::OutOfMemory
                )
            )
        })
}

/// What a caller is told while the database is not taking writes.
pub(super) fn unavailable_message(db: &Path, e: &anyhow::Error) -> String {
    let dir = db.parent().unwrap_or(db);
    let full = e
        .chain()
        .filter_map(|c| c.downcast_ref::<rusqlite::Error>())
        .any(|e| e.sqlite_error_code() == Some(ErrorCode::DiskFull));
    let fix = if full {
        format!(
            "the disk holding {} is full: free space there",
            dir.display()
        )
    } else {
        format!("check the disk and the permissions of {}", dir.display())
    };
    format!(
        "the coordinator cannot write its database {} ({e:#}); {fix}. Reads keep working, and changes not yet stored are kept and written once it can; retry this then",
        db.display()
    )
}

/// Whether the store is taking writes; shared with the API, which refuses writes while
/// it is not, and with the metrics.
#[derive(Debug, Clone, Default)]
pub(crate) struct Health(Arc<Mutex<HealthState>>);

#[derive(Debug, Default)]
struct HealthState {
    /// Why writes fail, while they do.
    failing: Option<String>,
    pending: usize,
    failed_commits: u64,
}

impl Health {
    /// `Some(message)` while the database is not taking writes.
    pub(crate) fn unavailable(&self) -> Option<String> {
        self.lock().failing.clone()
    }

    /// What the API's stats and the metrics show.
    pub(crate) fn view(&self) -> corral_proto::api::StoreView {
        let s = self.lock();
        corral_proto::api::StoreView {
            unavailable: s.failing.clone(),
            pending_rows: s.pending as u64,
            failed_commits: s.failed_commits,
        }
    }

    /// Records a failed commit; returns whether this starts a failing spell.
    pub(super) fn failed(&self, message: String, pending: usize) -> bool {
        let mut s = self.lock();
        s.failed_commits += 1;
        s.pending = pending;
        s.failing.replace(message).is_none()
    }

    /// Records a commit that worked; returns whether this ends a failing spell.
    pub(super) fn ok(&self, pending: usize) -> bool {
        let mut s = self.lock();
        s.pending = pending;
        s.failing.take().is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HealthState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: u64) -> EventRow {
        EventRow {
            id,
            at_ms: id,
            node: "n".into(),
            kind: "liveness".into(),
            from: None,
            to: "ready".into(),
            message: String::new(),
        }
    }

    #[test]
    fn kept_changes_keep_the_newest_of_each_row_and_the_newest_events() {
        let mut p = Pending::default();
        let job = |state: &str| {
            let mut j = crate::store::tests_support::job_row();
            j.id = corral_proto::api::JobId(7);
            j.state_word = state.into();
            j
        };
        p.jobs(vec![job("queued")]);
        p.jobs(vec![job("running")]);
        p.delete_jobs(vec![8]);
        assert_eq!(p.jobs.len(), 2);
        assert_eq!(p.jobs[&7].as_ref().unwrap().state_word, "running");
        assert!(p.jobs[&8].is_none(), "a deletion is kept as one");
        p.forget_node("gone".into());
        assert!(p.nodes["gone"].is_none());
        p.events((0..5).map(event).collect(), 3);
        p.events((5..7).map(event).collect(), 3);
        let ids: Vec<u64> = p.events.iter().map(|e| e.id).collect();
        assert_eq!(ids, [4, 5, 6], "only the retention count, newest kept");
        assert_eq!(p.dropped_events, 4);
    }

    #[test]
    fn only_resource_failures_are_retried() {
        let full = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            None,
        );
        assert!(is_resource_failure(
            &anyhow::Error::from(full).context("writing")
        ));
        let constraint = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT),
            None,
        );
        assert!(!is_resource_failure(&anyhow::Error::from(constraint)));
        let message = unavailable_message(
            Path::new("/var/lib/corral/coordinator.db"),
            &anyhow::Error::from(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
                None,
            )),
        );
        assert!(
            message.contains("/var/lib/corral/coordinator.db")
                && message.contains("the disk holding /var/lib/corral is full"),
            "{message}"
        );
    }
}
