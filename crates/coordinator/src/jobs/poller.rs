//! The bulk status poller: one pass asks each due scheduler instance about all its
//! unfinished jobs, through one of its hosts; the loop runs a pass whenever an instance
//! is due.
//!
//! Invariants (see the parent module for the whole list):
//! - One `status` call per instance per pass, split only beyond `jobs.status_batch` ids,
//!   whichever hosts submitted its jobs: a native id names a job of the instance (a Slurm
//!   cluster), not of one login node.
//! - The call goes through the submit host of the instance's jobs while it is connected
//!   and hosts the plugin (the first of them in `[schedulers.NAME] nodes` order, when
//!   several hosts submitted), else through the first other authorized connected host
//!   in that order; hosts that missed their beats come last ([`Jobs::instance_hosts`]).
//!   A host that cannot be asked (the command
//!   did not reach it, or no answer came) hands the rest of the pass to the next host; a
//!   plugin's own error is the scheduler's answer and is not retried elsewhere.
//! - An instance is in at most one pass at a time: a pass marks the instances it takes in
//!   flight when it is created, before it runs, and no other pass takes one in flight.
//! - The daemon's loop and every other caller run the same pass ([`Jobs::poll`]); they
//!   differ only in [`Scope`].
//! - Backoff is per instance and exact: after `n` failures in a row the instance waits
//!   `min(poll_interval · 2ⁿ, max_backoff)`. Waiting for a host (none connected, or
//!   none has announced its plugins yet) is not a failure and keeps the normal interval;
//!   its jobs keep their last known state, and their `poll_error` says why.
//! - Only tracked jobs that were asked about are updated: a finished job never moves
//!   back, whatever a late answer says.
//!
//! Trade-offs: the backoff has no jitter (unlike the agents' reconnect backoff in
//! `corral_base`): one coordinator asks each scheduler instance from one place, so there
//! is no herd to spread, and the documented schedule is what `retry_in_ms` shows. A
//! pass polls its instances concurrently on one task (the work is waiting on agents),
//! and the loop spawns each pass and does not wait for it, so a slow scheduler holds
//! only its own instance; each instance's end wakes the loop to reschedule. Moving to
//! the next host only on a host's failure, never on a plugin error, keeps a broken
//! scheduler from costing one call per host per pass; the price is that a plugin error
//! local to one host (its client programs missing) backs off instead of failing over.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{CallError, Jobs};
use corral_proto::api::PollReport;
use corral_proto::job::{JobState, JobStatus, PluginCall, PluginReply};
use corral_proto::model::unix_ms;

/// Which scheduler instances a pass polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Those whose time has come (the daemon's loop).
    Due,
    /// Every instance not in flight, due or not (an operator or a benchmark that wants
    /// the current states now).
    All,
}

/// A scheduler instance, by its plugin's name (one `[schedulers.NAME]` section).
pub(super) type GroupKey = String;

/// One instance's poll schedule.
pub(super) struct Group {
    pub(super) due: Instant,
    failures: u32,
    in_flight: bool,
}

/// Why a pass did not refresh (all of) an instance's jobs.
#[derive(Debug)]
pub(super) enum Stalled {
    /// No host of the instance can be asked now (none connected, or none announced its
    /// plugins yet): waited for at the normal interval.
    Waiting(String),
    /// The hosts that can be asked failed, or none hosts the plugin now: backs off.
    Failed(String),
}

impl Stalled {
    /// What a job of the instance submitted through `submit_host` shows as its
    /// `poll_error`.
    fn for_job(&self, submit_host: &str) -> String {
        match self {
            Stalled::Waiting(why) => {
                format!("{why} (submitted through {submit_host}); last known state shown")
            }
            Stalled::Failed(why) => format!("{why}; last known state shown"),
        }
    }
}

impl Jobs {
    /// Marks the instances `scope` selects in flight and returns them; creates and drops
    /// schedules to match the tracked jobs.
    fn take_due(&self, now: Instant, scope: Scope) -> Vec<GroupKey> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let keys: HashSet<GroupKey> = inner
            .table
            .iter()
            .filter(|j| j.tracked())
            .map(|j| j.scheduler.clone())
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

    /// When the next instance is due (None: no tracked job, or all in flight).
    fn next_due(&self) -> Option<Instant> {
        self.lock()
            .groups
            .values()
            .filter(|g| !g.in_flight)
            .map(|g| g.due)
            .min()
    }

    /// One poll pass: takes the instances `scope` selects at once (when called), then
    /// asks each about all its unfinished jobs, concurrently, and adds up what they did.
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

    /// Runs passes when instances are due, and prunes finished jobs, until `shutdown`.
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

    /// Asks one scheduler instance about all its unfinished jobs, then reschedules it.
    async fn poll_group(&self, scheduler: &GroupKey) -> PollReport {
        let mut report = PollReport {
            groups: 1,
            ..Default::default()
        };
        let (ids, submitters) = {
            let mut inner = self.lock();
            let mut seen = HashSet::new();
            let mut submitters = HashSet::new();
            let ids: Vec<String> = inner
                .table
                .tracked_in(scheduler)
                .filter_map(|j| {
                    submitters.insert(j.node.clone());
                    j.native_id.clone()
                })
                .filter(|n| seen.insert(n.clone()))
                .collect();
            (ids, submitters)
        };
        let mut answered = HashSet::new();
        let outcome = self
            .ask(scheduler, &ids, &submitters, &mut report, &mut answered)
            .await;
        let mut guard = self.lock();
        let inner = &mut *guard;
        let interval = self.settings.poll_interval;
        if let Some(g) = inner.groups.get_mut(scheduler) {
            g.in_flight = false;
            match &outcome {
                Ok(()) | Err(Stalled::Waiting(_)) => {
                    g.failures = 0;
                    g.due = Instant::now() + interval;
                }
                Err(Stalled::Failed(why)) => {
                    g.failures = g.failures.saturating_add(1);
                    let delay = corral_base::backoff::ceiling(
                        interval,
                        self.settings.max_backoff,
                        g.failures,
                    );
                    g.due = Instant::now() + delay;
                    report.failed_groups += 1;
                    warn!(%scheduler, error = %why, failures = g.failures, retry_in_ms = delay.as_millis() as u64, "job status poll failed");
                }
            }
        }
        if let Err(stalled) = &outcome {
            // Jobs answered before the pass stalled (an earlier batch) are fresh.
            for j in inner.table.tracked_in(scheduler) {
                if !j.native_id.as_ref().is_some_and(|n| answered.contains(n)) {
                    j.poll_error = Some(stalled.for_job(&j.node));
                }
            }
        }
        drop(guard);
        // The instance's schedule changed: the loop looks again.
        self.wake.notify_one();
        report
    }

    /// Asks `scheduler` about `ids`, batch by batch, through its hosts in order
    /// ([`Jobs::instance_hosts`]), moving on to the next host when one cannot be asked;
    /// records the native ids answered in `answered`.
    async fn ask(
        &self,
        scheduler: &str,
        ids: &[String],
        submitters: &HashSet<String>,
        report: &mut PollReport,
        answered: &mut HashSet<String>,
    ) -> Result<(), Stalled> {
        let hosts = self.instance_hosts(scheduler, submitters);
        if hosts.is_empty() {
            return Err(self.no_host(scheduler));
        }
        let mut host = 0;
        for chunk in ids.chunks(self.settings.status_batch.max(1)) {
            report.jobs += chunk.len();
            loop {
                let node = hosts[host].as_str();
                report.calls += 1;
                match self
                    .call(node, scheduler, PluginCall::Status(chunk.to_vec()), None)
                    .await
                {
                    Ok(PluginReply::Statuses(statuses)) => {
                        report.changed += self.apply(scheduler, node, chunk, statuses);
                        answered.extend(chunk.iter().cloned());
                        break;
                    }
                    Ok(other) => {
                        return Err(Stalled::Failed(format!(
                            "unexpected answer to status from {scheduler} on node {node}: {other:?}"
                        )))
                    }
                    Err(CallError::Plugin(e)) => {
                        return Err(Stalled::Failed(format!(
                            "status from {scheduler} on node {node} failed: {e}"
                        )))
                    }
                    Err(CallError::Command(e)) => {
                        let next = hosts.get(host + 1);
                        warn!(%scheduler, %node, error = %e, next = next.map_or("none", String::as_str), "a host of the scheduler could not be asked for job status");
                        if next.is_none() {
                            return Err(Stalled::Failed(format!(
                                "status from {scheduler}: no connected host answered (last, node {node}: {e})"
                            )));
                        }
                        host += 1;
                    }
                }
            }
        }
        Ok(())
    }

    /// Why no host of `scheduler` can be asked, when [`Jobs::instance_hosts`] is empty.
    fn no_host(&self, scheduler: &str) -> Stalled {
        let authority = self.registry.authority();
        let connected: Vec<_> = self
            .registry
            .plugins()
            .into_iter()
            .filter(|p| p.connected && authority.may_serve(scheduler, &p.node))
            .collect();
        if connected.is_empty() {
            return Stalled::Waiting(format!("no host of scheduler {scheduler} is connected"));
        }
        // Just (re)connected: their agents announce their plugins within moments.
        let quiet: Vec<&str> = connected
            .iter()
            .filter(|p| p.announced_ms.is_none())
            .map(|p| p.node.as_str())
            .collect();
        if !quiet.is_empty() {
            return Stalled::Waiting(format!(
                "no host of scheduler {scheduler} can be asked yet: {} connected but has not announced its plugins yet",
                quiet.join(", ")
            ));
        }
        let others = connected
            .iter()
            .map(|p| {
                let loaded: Vec<&str> = p.loaded.iter().map(|l| l.info.name.as_str()).collect();
                if loaded.is_empty() {
                    format!("{} announced none", p.node)
                } else {
                    format!("{} announced {}", p.node, loaded.join(", "))
                }
            })
            .collect::<Vec<_>>()
            .join("; ");
        Stalled::Failed(format!(
            "no connected host of scheduler {scheduler} hosts the {scheduler} plugin now ({others}; agents load plugins listed in [plugins] enable)"
        ))
    }

    /// Applies one status answer about `asked`, given by `scheduler`'s plugin on `via`;
    /// returns how many jobs changed state.
    pub(super) fn apply(
        &self,
        scheduler: &str,
        via: &str,
        asked: &[String],
        statuses: Vec<JobStatus>,
    ) -> usize {
        let by_id: HashMap<String, JobStatus> =
            statuses.into_iter().map(|s| (s.id.clone(), s)).collect();
        let asked: HashSet<&String> = asked.iter().collect();
        let now = unix_ms();
        let mut changed = 0;
        let mut writes = vec![];
        let mut inner = self.lock();
        // Finished jobs are never moved back, whatever a late answer says: only tracked
        // ones are looked at.
        for job in inner.table.tracked_in(scheduler) {
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
            // Which host answers is part of the story when it is not the submit host
            // (or stops being another one): one note each time it changes.
            let previous = job.polled_via.as_deref().unwrap_or(job.node.as_str());
            let rerouted = previous != via;
            if rerouted {
                let note = if via == job.node {
                    format!("status through node {via} again, which submitted it")
                } else {
                    format!(
                        "status through node {via}, another host of {scheduler} (submitted through {})",
                        job.node
                    )
                };
                info!(job = %job.id, %scheduler, native_id = %native, submit_host = %job.node, %via, "job status now through another host");
                job.note(&note);
            }
            job.polled_via = Some(via.to_string());
            let native_state = (!status.native_state.is_empty()).then_some(status.native_state);
            let moved =
                job.state.as_ref() != Some(&status.state) || job.native_state != native_state;
            job.state = Some(status.state);
            job.native_state = native_state;
            job.exit_code = status.exit_code;
            job.message = status.message;
            if moved {
                job.record(job.message.clone());
                info!(job = %job.id, %scheduler, native_id = %native, %via, state = job.word(), native_state = job.native_state.as_deref().unwrap_or(""), "job state changed");
                changed += 1;
            }
            if moved || rerouted {
                writes.push(job.row());
            }
        }
        drop(inner);
        self.store.put_jobs(writes);
        changed
    }
}
