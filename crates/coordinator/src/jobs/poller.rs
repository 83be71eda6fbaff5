//! The bulk status poller: one pass asks each due (node, plugin) pair about all its
//! unfinished jobs; the loop runs a pass whenever a pair is due.
//!
//! Invariants (see the parent module for the whole list):
//! - One `status` call per pair per pass, split only beyond `jobs.status_batch` ids.
//! - A pair is in at most one pass at a time: a pass marks the pairs it takes in flight
//!   when it is created, before it runs, and no other pass takes a pair in flight.
//! - The daemon's loop and every other caller run the same pass ([`Jobs::poll`]); they
//!   differ only in [`Scope`].
//! - Backoff is per pair and exact: after `n` failures in a row the pair waits
//!   `min(poll_interval · 2ⁿ, max_backoff)`. Waiting for a node (not connected, plugins
//!   not announced yet) is not a failure and keeps the normal interval.
//! - Only tracked jobs that were asked about are updated: a finished job never moves
//!   back, whatever a late answer says.
//!
//! Trade-offs: the backoff has no jitter (unlike the agents' reconnect backoff in
//! `corral_base`): one coordinator asks each scheduler instance from one place, so there
//! is no herd to spread, and the documented schedule is what `retry_in_ms` shows. A
//! pass polls its pairs concurrently on one task (the work is waiting on agents), and
//! the loop spawns each pass and does not wait for it, so a slow scheduler holds only
//! its own pair; each pair's end wakes the loop to reschedule.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Jobs;
use corral_proto::api::PollReport;
use corral_proto::job::{JobState, JobStatus, PluginCall, PluginReply};
use corral_proto::model::unix_ms;

/// Which (node, plugin) pairs a pass polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Those whose time has come (the daemon's loop).
    Due,
    /// Every pair not in flight, due or not (an operator or a benchmark that wants the
    /// current states now).
    All,
}

/// (node, plugin).
pub(super) type GroupKey = (String, String);

/// One pair's poll schedule.
pub(super) struct Group {
    pub(super) due: Instant,
    failures: u32,
    in_flight: bool,
}

impl Jobs {
    /// Marks the pairs `scope` selects in flight and returns them; creates and drops
    /// schedules to match the tracked jobs.
    fn take_due(&self, now: Instant, scope: Scope) -> Vec<GroupKey> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let keys: HashSet<GroupKey> = inner
            .table
            .iter()
            .filter(|j| j.tracked())
            .map(|j| (j.node.clone(), j.scheduler.clone()))
            .collect();
        inner.groups.retain(|k, g| g.in_flight || keys.contains(k));
        let interval = self.settings.poll_interval;
        let mut due = vec![];
        for k in keys {
            let g = inner.groups.entry(k.clone()).or_insert(Group {
                due: now + interval,
                failures: 0,
                in_flight: false,
            });
            if !g.in_flight && (scope == Scope::All || g.due <= now) {
                g.in_flight = true;
                due.push(k);
            }
        }
        due.sort();
        due
    }

    /// When the next pair is due (None: no tracked job, or all in flight).
    fn next_due(&self) -> Option<Instant> {
        self.lock()
            .groups
            .values()
            .filter(|g| !g.in_flight)
            .map(|g| g.due)
            .min()
    }

    /// One poll pass: takes the pairs `scope` selects at once (when called), then asks
    /// each about all its unfinished jobs, concurrently, and adds up what they did.
    pub fn poll(
        self: &Arc<Self>,
        scope: Scope,
    ) -> impl Future<Output = PollReport> + Send + 'static {
        let keys = self.take_due(Instant::now(), scope);
        let jobs = Arc::clone(self);
        async move {
            let reports =
                futures_util::future::join_all(keys.iter().map(|k| jobs.poll_group(k))).await;
            let mut total = PollReport::default();
            for r in reports {
                total.groups += r.groups;
                total.calls += r.calls;
                total.jobs += r.jobs;
                total.changed += r.changed;
                total.failed_groups += r.failed_groups;
            }
            total
        }
    }

    /// Runs passes when pairs are due, and prunes finished jobs, until `shutdown`.
    pub(crate) async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut passes = JoinSet::new();
        loop {
            while passes.try_join_next().is_some() {}
            passes.spawn(self.poll(Scope::Due));
            self.prune();
            let next = self
                .next_due()
                .unwrap_or_else(|| Instant::now() + self.settings.poll_interval);
            tokio::select! {
                _ = tokio::time::sleep_until(next.into()) => {}
                _ = self.wake.notified() => {}
                _ = shutdown.cancelled() => {
                    passes.abort_all();
                    return;
                }
            }
        }
    }

    /// Asks one (node, plugin) pair about all its unfinished jobs, then reschedules it.
    async fn poll_group(&self, key: &GroupKey) -> PollReport {
        let (node, plugin) = key;
        let mut report = PollReport {
            groups: 1,
            ..Default::default()
        };
        let ids: Vec<String> = {
            let mut inner = self.lock();
            let mut seen = HashSet::new();
            inner
                .table
                .tracked_in(node, plugin)
                .filter_map(|j| j.native_id.clone())
                .filter(|n| seen.insert(n.clone()))
                .collect()
        };
        // Err((why, whether it counts as a failure)).
        let outcome: Result<(), (String, bool)> = async {
            if self.registry.command_channel(node).is_none() {
                return Err((format!("node {node} is not connected; the last known state is shown"), false));
            }
            // Just (re)connected: its agent announces its plugins within moments.
            let announced = self
                .registry
                .plugins()
                .into_iter()
                .any(|p| &p.node == node && p.announced_ms.is_some());
            if !announced {
                return Err((format!("node {node} has not announced its plugins yet"), false));
            }
            if !self.registry.plugin_hosts(plugin).iter().any(|n| n == node) {
                return Err((format!("node {node} does not host the {plugin} plugin now (its agent announced other plugins since it connected)"), true));
            }
            for chunk in ids.chunks(self.settings.status_batch.max(1)) {
                report.calls += 1;
                report.jobs += chunk.len();
                match self
                    .call(node, plugin, PluginCall::Status(chunk.to_vec()), None)
                    .await
                {
                    Ok(PluginReply::Statuses(statuses)) => {
                        report.changed += self.apply(key, chunk, statuses);
                    }
                    Ok(other) => {
                        return Err((format!("unexpected answer to status from {plugin} on node {node}: {other:?}"), true))
                    }
                    Err(e) => {
                        return Err((format!("status from {plugin} on node {node} failed: {e}"), true))
                    }
                }
            }
            Ok(())
        }
        .await;
        let mut guard = self.lock();
        let inner = &mut *guard;
        let interval = self.settings.poll_interval;
        let error = match &outcome {
            Ok(()) => None,
            Err((why, _)) => Some(why.clone()),
        };
        if let Some(g) = inner.groups.get_mut(key) {
            g.in_flight = false;
            match &outcome {
                Ok(()) | Err((_, false)) => {
                    g.failures = 0;
                    g.due = Instant::now() + interval;
                }
                Err((why, true)) => {
                    g.failures = g.failures.saturating_add(1);
                    let delay = corral_base::backoff::ceiling(
                        interval,
                        self.settings.max_backoff,
                        g.failures,
                    );
                    g.due = Instant::now() + delay;
                    report.failed_groups += 1;
                    warn!(%node, %plugin, error = %why, failures = g.failures, retry_in_ms = delay.as_millis() as u64, "job status poll failed");
                }
            }
        }
        for j in inner.table.tracked_in(node, plugin) {
            j.poll_error = error.clone();
        }
        drop(guard);
        // The pair's schedule changed: the loop looks again.
        self.wake.notify_one();
        report
    }

    /// Applies one status answer about `asked`; returns how many jobs changed state.
    pub(super) fn apply(
        &self,
        key: &GroupKey,
        asked: &[String],
        statuses: Vec<JobStatus>,
    ) -> usize {
        let by_id: HashMap<String, JobStatus> =
            statuses.into_iter().map(|s| (s.id.clone(), s)).collect();
        let asked: HashSet<&String> = asked.iter().collect();
        let now = unix_ms();
        let mut changed = vec![];
        let mut inner = self.lock();
        // Finished jobs are never moved back, whatever a late answer says: only tracked
        // ones are looked at.
        for job in inner.table.tracked_in(&key.0, &key.1) {
            let Some(native) = job.native_id.clone() else {
                continue;
            };
            if !asked.contains(&native) {
                continue;
            }
            let status = by_id.get(&native).cloned().unwrap_or_else(|| JobStatus {
                id: native.clone(),
                state: JobState::Unknown,
                native_state: String::new(),
                exit_code: None,
                message: Some(format!(
                    "the plugin's status answer did not mention native id {native}"
                )),
            });
            job.polled_ms = Some(now);
            job.poll_error = None;
            let native_state = (!status.native_state.is_empty()).then_some(status.native_state);
            let moved =
                job.state.as_ref() != Some(&status.state) || job.native_state != native_state;
            job.state = Some(status.state);
            job.native_state = native_state;
            job.exit_code = status.exit_code;
            job.message = status.message;
            if moved {
                job.record(job.message.clone());
                info!(job = %job.id, scheduler = %job.scheduler, native_id = %native, state = job.word(), native_state = job.native_state.as_deref().unwrap_or(""), "job state changed");
                changed.push(job.row());
            }
        }
        drop(inner);
        let n = changed.len();
        self.store.put_jobs(changed);
        n
    }
}
