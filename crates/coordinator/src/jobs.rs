//! Jobs through the cluster: the coordinator's job table, the routing of plugin calls to
//! agents, the bulk status poller, and recovery after a restart.
//!
//! A job is submitted to a *scheduler plugin* (by its name, e.g. `slurm`) that some
//! connected agent hosts (`AgentMsg::Plugins`). The coordinator records it under its own
//! id (`c17`), with the scheduler, the node whose plugin took it, the native id the
//! scheduler gave it, the spec and every state it went through.
//!
//! Invariants:
//! - **Durable before answered.** A submission is first written to the database as
//!   `submitting` (the write is committed before the plugin is called), then the plugin
//!   is called, then the native id is committed, and only then is the corral id
//!   returned. A coordinator that dies between the first write and the last leaves the
//!   job `submitting`; at the next start it becomes `orphaned`: corral cannot know
//!   whether the scheduler accepted it, and says so instead of guessing.
//! - **A job belongs to the node that submitted it.** Its status and cancel calls go to
//!   that node's plugin only: a native id means something only to the scheduler instance
//!   behind that plugin, and corral cannot tell whether two agents' `slurm` plugins
//!   front the same cluster. While that node is away the job keeps its last known state
//!   (with `poll_error` saying why it is not being refreshed) and is polled again when
//!   the node returns. New submissions go to the connected host of the plugin first in
//!   name order, or to the node named with `via`.
//! - **One status call per poll per scheduler instance.** Every poll asks each (node,
//!   plugin) pair about all its unfinished jobs in one `status` call (split only beyond
//!   `jobs.status_batch` ids, which bounds one answer's size), never one call per job.
//! - **Terminal states never move back.** A job whose state is terminal
//!   ([`JobState::is_terminal`]), `rejected` or `orphaned` is no longer polled, and an
//!   answer that arrives for it later is ignored.
//! - **Unknown is not an answer.** A job the plugin reports `unknown`, or leaves out of
//!   its answer, is shown `unknown` with the reason and stays tracked: it is asked about
//!   again at every poll until the plugin resolves it.
//! - **Backoff per scheduler instance.** A failed poll (plugin error, no answer, plugin
//!   no longer loaded there) doubles that pair's interval up to `jobs.max_backoff`; a
//!   successful one restores `jobs.poll_interval`. A node that is simply not connected
//!   is not a failure: its jobs wait for it at the normal interval.
//! - Dependencies name corral jobs (`c17`) and are translated to native ids here; the
//!   job depended on must have been submitted through the same scheduler instance.
//!
//! Trade-offs: the table lives in memory (a `BTreeMap` under one mutex, never held across
//! an await) with the database as its durable copy; submissions and their outcomes are
//! written synchronously, poll results write-behind (a crash loses at most the states
//! seen since the last write, which the next poll sees again). Finished jobs are
//! forgotten after `jobs.retention`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::store::Store;
use super::{CommandError, Shared};
use crate::config::JobsSection;
use corral_base::backoff::backoff;
use corral_proto::api::{
    JobId, JobView, NodePlugins, Phase, PollReport, Rendered, SubmitRequest, Transition,
};
use corral_proto::job::{JobSpec, JobState, JobStatus, PluginCall, PluginError, PluginReply};
use corral_proto::model::unix_ms;
use corral_proto::wire::{Command, CommandOutput};

/// The coordinator's bookkeeping on a tracked job.
trait Tracking {
    fn word(&self) -> &'static str;
    fn push_history(&mut self, message: Option<String>);
    fn tracked(&self) -> bool;
}

impl Tracking for JobView {
    fn word(&self) -> &'static str {
        match (&self.phase, &self.state) {
            (Phase::Submitted, Some(s)) => s.word(),
            (p, _) => p.as_str(),
        }
    }

    /// Records the current state as a history entry (and `state_word`, `updated_ms`).
    fn push_history(&mut self, message: Option<String>) {
        let now = unix_ms();
        self.state_word = self.word().to_string();
        self.updated_ms = now;
        self.history.push(Transition {
            at_ms: now,
            state: self.state_word.clone(),
            native_state: self.native_state.clone(),
            message,
        });
    }

    /// Whether the poller should ask about it.
    fn tracked(&self) -> bool {
        self.phase == Phase::Submitted && !self.is_finished() && self.native_id.is_some()
    }
}

/// What went wrong with a job request; each kind maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// No node hosts, or ever announced, that plugin (404).
    #[error("{0}")]
    NoScheduler(String),
    /// Hosted only by nodes that are not connected now, or not by the node asked for (503).
    #[error("{0}")]
    Unavailable(String),
    #[error("no job {0}; `corral jobs` lists them")]
    NoJob(JobId),
    /// The request itself is wrong (400).
    #[error("{0}")]
    Invalid(String),
    /// Not possible in the job's current phase (409).
    #[error("{0}")]
    Conflict(String),
    /// The plugin answered with an error.
    #[error("{scheduler} on node {node}: {error}{}", job.map(|j| format!(" (recorded as {j}, rejected)")).unwrap_or_default())]
    Plugin {
        scheduler: String,
        node: String,
        error: PluginError,
        job: Option<JobId>,
    },
    /// The agent could not be asked, or did not answer.
    #[error("{error}{}", job.map(|j| format!(" (recorded as {j})")).unwrap_or_default())]
    Command {
        error: CommandError,
        job: Option<JobId>,
    },
    /// The database refused a write that must be durable (500).
    #[error("{0}")]
    Store(String),
}

/// Why one routed plugin call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Plugin(PluginError),
    #[error(transparent)]
    Command(CommandError),
}

/// Counts for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct JobMetrics {
    /// (scheduler, state word) → jobs.
    pub jobs: BTreeMap<(String, String), u64>,
    /// (plugin, export, outcome) → calls routed since the coordinator started.
    pub plugin_calls: BTreeMap<(String, &'static str, &'static str), u64>,
    /// Every node's announced plugins.
    pub plugins: Vec<NodePlugins>,
}

type GroupKey = (String, String);

struct Group {
    due: Instant,
    failures: u32,
    in_flight: bool,
}

struct Inner {
    jobs: BTreeMap<u64, JobView>,
    /// (node, plugin) → poll schedule.
    groups: HashMap<GroupKey, Group>,
    last_prune: Instant,
}

pub struct Jobs {
    settings: JobsSection,
    store: Arc<Store>,
    inner: Mutex<Inner>,
    wake: Notify,
    calls: Mutex<BTreeMap<(String, &'static str, &'static str), u64>>,
}

impl Jobs {
    /// The job table, from what the database held. Jobs found `submitting` become
    /// `orphaned` (and that is written back).
    pub fn new(settings: JobsSection, store: Arc<Store>, loaded: Vec<JobView>) -> Jobs {
        let mut jobs = BTreeMap::new();
        let mut orphaned = vec![];
        for mut job in loaded {
            if job.phase == Phase::Submitting {
                job.phase = Phase::Orphaned;
                job.message = Some(format!(
                    "the coordinator stopped while {} on node {} was submitting it: whether the scheduler has it is unknown (look for it with the scheduler's own tools)",
                    job.scheduler, job.node
                ));
                job.push_history(job.message.clone());
                warn!(job = %job.id, scheduler = %job.scheduler, node = %job.node, "job was being submitted when the coordinator stopped; marked orphaned");
                orphaned.push(job.clone());
            }
            jobs.insert(job.id.0, job);
        }
        store.put_jobs(orphaned);
        let tracked = jobs.values().filter(|j| j.tracked()).count();
        info!(jobs = jobs.len(), tracked, "job table loaded");
        Jobs {
            settings,
            store,
            inner: Mutex::new(Inner {
                jobs,
                groups: HashMap::new(),
                last_prune: Instant::now(),
            }),
            wake: Notify::new(),
            calls: Mutex::new(BTreeMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn settings(&self) -> &JobsSection {
        &self.settings
    }

    /// Every job, oldest first, without histories.
    pub fn list(&self) -> Vec<JobView> {
        self.lock()
            .jobs
            .values()
            .map(|j| JobView {
                history: vec![],
                ..j.clone()
            })
            .collect()
    }

    /// One job with its history.
    pub fn get(&self, id: JobId) -> Option<JobView> {
        self.lock().jobs.get(&id.0).cloned()
    }

    /// Calls `call` on `plugin` at `node` and waits for the answer (at most
    /// `jobs.call_timeout`); counts the outcome for `/metrics`.
    pub async fn call(
        &self,
        shared: &Shared,
        node: &str,
        plugin: &str,
        call: PluginCall,
    ) -> Result<PluginReply, CallError> {
        let export = call.export();
        let started = Instant::now();
        let result = match shared
            .command(
                node,
                Command::Plugin {
                    plugin: plugin.to_string(),
                    call: Box::new(call),
                },
                self.settings.call_timeout,
            )
            .await
        {
            Ok(CommandOutput::Plugin(Ok(reply))) => Ok(reply),
            Ok(CommandOutput::Plugin(Err(e))) => Err(CallError::Plugin(e)),
            Ok(other) => Err(CallError::Command(CommandError::Failed {
                node: node.into(),
                message: format!("unexpected answer to a plugin call: {other:?}"),
            })),
            Err(e) => Err(CallError::Command(e)),
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(CallError::Plugin(e)) => e.kind(),
            Err(CallError::Command(_)) => "unreachable",
        };
        debug!(%node, %plugin, export, outcome, ms = started.elapsed().as_millis() as u64, "plugin call");
        if let Ok(mut c) = self.calls.lock() {
            *c.entry((plugin.to_string(), export, outcome)).or_default() += 1;
        }
        result
    }

    /// Picks the node a new submission goes to.
    fn route(
        &self,
        shared: &Shared,
        scheduler: &str,
        via: Option<&str>,
    ) -> Result<String, JobError> {
        let plugins = shared.registry.plugins();
        if let Some(node) = via {
            return match plugins.iter().find(|p| p.node == node) {
                Some(p) if p.hosts(scheduler) => Ok(node.to_string()),
                Some(p) if !p.connected => Err(JobError::Unavailable(format!(
                    "node {node} is not connected; nodes and their plugins: {}",
                    describe_hosts(&plugins)
                ))),
                _ => Err(JobError::Unavailable(format!(
                    "node {node} does not host a scheduler plugin named {scheduler:?}; nodes and their plugins: {}",
                    describe_hosts(&plugins)
                ))),
            };
        }
        if let Some(node) = plugins.iter().find(|p| p.hosts(scheduler)) {
            return Ok(node.node.clone());
        }
        let away: Vec<&str> = plugins
            .iter()
            .filter(|p| !p.connected && p.loaded.iter().any(|l| l.info.name == scheduler))
            .map(|p| p.node.as_str())
            .collect();
        if !away.is_empty() {
            return Err(JobError::Unavailable(format!(
                "scheduler plugin {scheduler:?} is hosted only by nodes that are not connected now ({}); nodes and their plugins: {}",
                away.join(", "),
                describe_hosts(&plugins)
            )));
        }
        Err(JobError::NoScheduler(format!(
            "no connected node hosts a scheduler plugin named {scheduler:?}; nodes and their plugins: {} (`corral plugins` shows them; agents load plugins listed in [plugins] enable)",
            describe_hosts(&plugins)
        )))
    }

    /// The spec the plugin gets: dependencies translated from corral ids to native ids
    /// of jobs submitted through the same scheduler instance.
    fn translate(&self, spec: &JobSpec, scheduler: &str, node: &str) -> Result<JobSpec, JobError> {
        if spec.executable.trim().is_empty() {
            return Err(JobError::Invalid(
                "the job has no executable; give the command after `--`".into(),
            ));
        }
        let mut out = spec.clone();
        let inner = self.lock();
        for dep in &mut out.dependencies {
            let id: JobId = dep
                .job
                .parse()
                .map_err(|e: String| JobError::Invalid(format!("dependency: {e}")))?;
            let other = inner
                .jobs
                .get(&id.0)
                .ok_or_else(|| JobError::Invalid(format!("dependency: no job {id}")))?;
            if other.scheduler != scheduler || other.node != node {
                return Err(JobError::Invalid(format!(
                    "dependency: {id} went to {} on node {}, this job to {scheduler} on node {node}; a dependency must be on a job of the same scheduler instance (submit with --via {})",
                    other.scheduler, other.node, other.node
                )));
            }
            dep.job = match (&other.phase, &other.native_id) {
                (Phase::Submitted, Some(native)) => native.clone(),
                _ => {
                    return Err(JobError::Invalid(format!(
                        "dependency: {id} is {} and has no native id to depend on",
                        other.word()
                    )))
                }
            };
        }
        Ok(out)
    }

    /// Renders (dry run) or submits a job.
    pub async fn submit(
        &self,
        shared: &Shared,
        req: SubmitRequest,
    ) -> Result<Result<JobView, Rendered>, JobError> {
        let node = self.route(shared, &req.scheduler, req.via.as_deref())?;
        let native_spec = self.translate(&req.spec, &req.scheduler, &node)?;
        if req.dry_run {
            return match self
                .call(
                    shared,
                    &node,
                    &req.scheduler,
                    PluginCall::Render(native_spec),
                )
                .await
            {
                Ok(PluginReply::Text(script)) => Ok(Err(Rendered {
                    scheduler: req.scheduler,
                    node,
                    script,
                })),
                Ok(other) => Err(unexpected(&req.scheduler, &node, &other, None)),
                Err(e) => Err(call_error(e, &req.scheduler, &node, None)),
            };
        }

        let now = unix_ms();
        let mut job = JobView {
            id: JobId(0),
            scheduler: req.scheduler.clone(),
            node: node.clone(),
            native_id: None,
            phase: Phase::Submitting,
            state: None,
            state_word: Phase::Submitting.as_str().into(),
            native_state: None,
            exit_code: None,
            message: None,
            spec: req.spec,
            submitted_ms: now,
            updated_ms: now,
            polled_ms: None,
            poll_error: None,
            history: vec![],
        };
        job.push_history(Some(format!(
            "submitting through {} on node {node}",
            req.scheduler
        )));
        // Durable before the scheduler hears of it: see the module docs.
        let id = self.store.insert_job(job.clone()).await.map_err(|e| {
            JobError::Store(format!(
                "recording the job failed, nothing was submitted: {e:#}"
            ))
        })?;
        job.id = JobId(id);
        self.lock().jobs.insert(id, job.clone());

        let result = self
            .call(
                shared,
                &node,
                &req.scheduler,
                PluginCall::Submit(native_spec),
            )
            .await;
        let mut failure = None;
        match result {
            Ok(PluginReply::Submitted(native)) => {
                info!(job = %job.id, scheduler = %job.scheduler, %node, native_id = %native, "job submitted");
                job.phase = Phase::Submitted;
                job.native_id = Some(native.clone());
                // PSI/J: a job the scheduler accepted is queued until it says otherwise.
                job.state = Some(JobState::Queued { held: false });
                job.push_history(Some(format!("submitted: native id {native}")));
            }
            Ok(other) => {
                job.phase = Phase::Orphaned;
                job.message = Some(format!("unexpected answer to submit: {other:?}"));
                job.push_history(job.message.clone());
                failure = Some(unexpected(&job.scheduler, &node, &other, Some(job.id)));
            }
            Err(CallError::Plugin(e)) => {
                warn!(job = %job.id, scheduler = %job.scheduler, %node, error = %e, "submission refused by the plugin");
                job.phase = Phase::Rejected;
                job.message = Some(e.to_string());
                job.push_history(job.message.clone());
                failure = Some(call_error(
                    CallError::Plugin(e),
                    &job.scheduler,
                    &node,
                    Some(job.id),
                ));
            }
            Err(CallError::Command(e)) => {
                // Busy or not connected: the command never left; a timeout: it may have.
                let sent = matches!(e, CommandError::Timeout { .. });
                job.phase = if sent {
                    Phase::Orphaned
                } else {
                    Phase::Rejected
                };
                job.message = Some(if sent {
                    format!("{e}; the scheduler may or may not have the job (look for it with the scheduler's own tools)")
                } else {
                    format!("not submitted: {e}")
                });
                warn!(job = %job.id, scheduler = %job.scheduler, %node, error = %e, phase = job.phase.as_str(), "submission did not complete");
                job.push_history(job.message.clone());
                failure = Some(call_error(
                    CallError::Command(e),
                    &job.scheduler,
                    &node,
                    Some(job.id),
                ));
            }
        }
        self.lock().jobs.insert(id, job.clone());
        let written = self.store.put_jobs_durably(vec![job.clone()]).await;
        if let Some(f) = failure {
            return Err(f);
        }
        if let Err(e) = written {
            return Err(JobError::Store(format!(
                "{} was submitted as {} job {} but recording that failed ({e:#}); it is tracked until the coordinator restarts",
                job.id,
                job.scheduler,
                job.native_id.as_deref().unwrap_or("?")
            )));
        }
        self.wake.notify_one();
        Ok(Ok(job))
    }

    /// Cancels a job. A job that already finished is not an error: it is returned as is.
    pub async fn cancel(&self, shared: &Shared, id: JobId) -> Result<JobView, JobError> {
        let job = self.get(id).ok_or(JobError::NoJob(id))?;
        if job.is_finished() && job.phase != Phase::Orphaned {
            return Ok(job);
        }
        let native = match (job.phase, &job.native_id) {
            (Phase::Submitted, Some(n)) => n.clone(),
            (Phase::Submitting, _) => {
                return Err(JobError::Conflict(format!(
                    "{id} is still being submitted; try again in a moment"
                )))
            }
            _ => {
                return Err(JobError::Conflict(format!(
                    "{id} is orphaned: no native id is known, so corral cannot cancel it; look for it with {}'s own tools on node {}{}",
                    job.scheduler,
                    job.node,
                    job.spec.name.as_ref().map(|n| format!(" (its name is {n:?})")).unwrap_or_default()
                )))
            }
        };
        match self
            .call(
                shared,
                &job.node,
                &job.scheduler,
                PluginCall::Cancel(native.clone()),
            )
            .await
        {
            Ok(PluginReply::Done) => {}
            Ok(other) => return Err(unexpected(&job.scheduler, &job.node, &other, None)),
            Err(e) => return Err(call_error(e, &job.scheduler, &job.node, None)),
        }
        info!(job = %id, scheduler = %job.scheduler, node = %job.node, native_id = %native, "cancel requested");
        let updated = {
            let mut inner = self.lock();
            let key = (job.node.clone(), job.scheduler.clone());
            if let Some(g) = inner.groups.get_mut(&key) {
                // Look again at once: the scheduler's answer is the state, not our wish.
                g.due = Instant::now();
            }
            inner.jobs.get_mut(&id.0).map(|j| {
                if !j.is_finished() {
                    let now = unix_ms();
                    j.history.push(Transition {
                        at_ms: now,
                        state: j.state_word.clone(),
                        native_state: j.native_state.clone(),
                        message: Some("cancel requested".into()),
                    });
                }
                j.clone()
            })
        };
        let updated = updated.ok_or(JobError::NoJob(id))?;
        self.store.put_jobs(vec![updated.clone()]);
        self.wake.notify_one();
        Ok(updated)
    }

    /// Marks due groups in flight and returns them; creates and drops group schedules
    /// to match the tracked jobs. `all`: every idle group, due or not.
    fn take_due(&self, now: Instant, all: bool) -> Vec<GroupKey> {
        let mut inner = self.lock();
        let keys: HashSet<GroupKey> = inner
            .jobs
            .values()
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
            if !g.in_flight && (all || g.due <= now) {
                g.in_flight = true;
                due.push(k);
            }
        }
        due.sort();
        due
    }

    /// When the next group is due (None: no tracked job).
    fn next_due(&self) -> Option<Instant> {
        self.lock()
            .groups
            .values()
            .filter(|g| !g.in_flight)
            .map(|g| g.due)
            .min()
    }

    /// Asks one (node, plugin) pair about all its unfinished jobs.
    async fn poll_group(&self, shared: &Shared, key: &GroupKey) -> PollReport {
        let (node, plugin) = key;
        let mut report = PollReport {
            groups: 1,
            ..Default::default()
        };
        let ids: Vec<String> = {
            let inner = self.lock();
            let mut seen = HashSet::new();
            inner
                .jobs
                .values()
                .filter(|j| j.tracked() && &j.node == node && &j.scheduler == plugin)
                .filter_map(|j| j.native_id.clone())
                .filter(|n| seen.insert(n.clone()))
                .collect()
        };
        let outcome: Result<(), (String, bool)> = async {
            if shared.registry.command_channel(node).is_none() {
                return Err((format!("node {node} is not connected; the last known state is shown"), false));
            }
            // Just (re)connected: its agent announces its plugins within moments.
            let announced = shared
                .registry
                .plugins()
                .into_iter()
                .any(|p| &p.node == node && p.announced_ms.is_some());
            if !announced {
                return Err((format!("node {node} has not announced its plugins yet"), false));
            }
            if !shared.registry.plugin_hosts(plugin).iter().any(|n| n == node) {
                return Err((format!("node {node} does not host the {plugin} plugin now (its agent announced other plugins since it connected)"), true));
            }
            for chunk in ids.chunks(self.settings.status_batch.max(1)) {
                report.calls += 1;
                report.jobs += chunk.len();
                match self
                    .call(shared, node, plugin, PluginCall::Status(chunk.to_vec()))
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
        let mut inner = self.lock();
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
                    let delay = backoff(interval, self.settings.max_backoff, g.failures);
                    g.due = Instant::now() + delay;
                    report.failed_groups += 1;
                    warn!(%node, %plugin, error = %why, failures = g.failures, retry_in_ms = delay.as_millis() as u64, "job status poll failed");
                }
            }
        }
        for j in inner.jobs.values_mut() {
            if j.tracked() && &j.node == node && &j.scheduler == plugin {
                j.poll_error = error.clone();
            }
        }
        report
    }

    /// Applies one status answer about `asked`; returns how many jobs changed state.
    fn apply(&self, key: &GroupKey, asked: &[String], statuses: Vec<JobStatus>) -> usize {
        let by_id: HashMap<String, JobStatus> =
            statuses.into_iter().map(|s| (s.id.clone(), s)).collect();
        let asked: HashSet<&String> = asked.iter().collect();
        let now = unix_ms();
        let mut changed = vec![];
        let mut inner = self.lock();
        for job in inner.jobs.values_mut() {
            // Finished jobs are never moved back, whatever a late answer says.
            if !job.tracked() || job.node != key.0 || job.scheduler != key.1 {
                continue;
            }
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
                job.push_history(job.message.clone());
                info!(job = %job.id, scheduler = %job.scheduler, native_id = %native, state = %job.state_word, native_state = job.native_state.as_deref().unwrap_or(""), "job state changed");
                changed.push(job.clone());
            }
        }
        drop(inner);
        let n = changed.len();
        self.store.put_jobs(changed);
        n
    }

    /// Polls every idle (node, plugin) pair now, one after the other, and waits for the
    /// answers (the poll benchmark; the daemon uses [`run_poller`]).
    pub async fn poll_now(&self, shared: &Shared) -> PollReport {
        let mut total = PollReport::default();
        for key in self.take_due(Instant::now(), true) {
            let r = self.poll_group(shared, &key).await;
            total.groups += r.groups;
            total.calls += r.calls;
            total.jobs += r.jobs;
            total.changed += r.changed;
            total.failed_groups += r.failed_groups;
        }
        total
    }

    /// Forgets finished jobs older than `jobs.retention` (at most once a minute).
    fn prune(&self) {
        let retention = self.settings.retention;
        if retention.is_zero() {
            return;
        }
        let mut inner = self.lock();
        if inner.last_prune.elapsed() < Duration::from_secs(60) {
            return;
        }
        inner.last_prune = Instant::now();
        let cutoff = unix_ms().saturating_sub(retention.as_millis() as u64);
        let old: Vec<u64> = inner
            .jobs
            .values()
            .filter(|j| j.is_finished() && j.updated_ms < cutoff)
            .map(|j| j.id.0)
            .collect();
        for id in &old {
            inner.jobs.remove(id);
        }
        drop(inner);
        if !old.is_empty() {
            info!(jobs = old.len(), "forgot finished jobs past jobs.retention");
            self.store.delete_jobs(old);
        }
    }

    /// Counts for `/metrics`.
    pub fn metrics(&self, shared: &Shared) -> JobMetrics {
        let mut jobs = BTreeMap::new();
        for j in self.lock().jobs.values() {
            *jobs
                .entry((j.scheduler.clone(), j.state_word.clone()))
                .or_default() += 1;
        }
        JobMetrics {
            jobs,
            plugin_calls: self.calls.lock().map(|c| c.clone()).unwrap_or_default(),
            plugins: shared.registry.plugins(),
        }
    }
}

/// The poller: polls each (node, plugin) pair when due, concurrently, until `shutdown`.
pub async fn run_poller(shared: Arc<Shared>, shutdown: CancellationToken) {
    let jobs = &shared.jobs;
    let mut running = JoinSet::new();
    loop {
        for key in jobs.take_due(Instant::now(), false) {
            let shared = shared.clone();
            running.spawn(async move {
                shared.jobs.poll_group(&shared, &key).await;
            });
        }
        jobs.prune();
        let next = jobs
            .next_due()
            .unwrap_or_else(|| Instant::now() + jobs.settings.poll_interval);
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = jobs.wake.notified() => {}
            Some(_) = running.join_next(), if !running.is_empty() => {}
            _ = shutdown.cancelled() => {
                running.abort_all();
                return;
            }
        }
    }
}

/// The delay after `failures` failed polls in a row.
/// "node-a: slurm, pbs; node-b (disconnected): slurm; node-c: none (pbs failed: ...)".
pub fn describe_hosts(plugins: &[NodePlugins]) -> String {
    if plugins.is_empty() {
        return "no node is connected".into();
    }
    plugins
        .iter()
        .map(|p| {
            let state = if p.connected { "" } else { " (disconnected)" };
            let loaded = if p.announced_ms.is_none() {
                "not announced yet".to_string()
            } else if p.loaded.is_empty() {
                "none".to_string()
            } else {
                p.loaded
                    .iter()
                    .map(|l| l.info.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let failed = if p.failed.is_empty() {
                String::new()
            } else {
                format!(
                    " (failed to load: {})",
                    p.failed
                        .iter()
                        .map(|f| f.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            format!("{}{state}: {loaded}{failed}", p.node)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn call_error(e: CallError, scheduler: &str, node: &str, job: Option<JobId>) -> JobError {
    match e {
        CallError::Plugin(error) => JobError::Plugin {
            scheduler: scheduler.into(),
            node: node.into(),
            error,
            job,
        },
        CallError::Command(error) => JobError::Command { error, job },
    }
}

fn unexpected(scheduler: &str, node: &str, reply: &PluginReply, job: Option<JobId>) -> JobError {
    JobError::Plugin {
        scheduler: scheduler.into(),
        node: node.into(),
        error: PluginError::Plugin(format!("unexpected answer {reply:?}")),
        job,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Registry, Settings};
    use crate::Commands;
    use corral_proto::job::{Dependency, DependencyKind, LoadedPlugin, PluginInfo};
    use corral_proto::wire::CoordMsg;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A scheduler behind a fake agent: what it answers, and what it was asked. The
    /// agent side is the only fake here; routing, commands, the table and the database
    /// are the real ones.
    #[derive(Default)]
    struct FakeScheduler {
        jobs: Mutex<BTreeMap<String, JobStatus>>,
        next: AtomicUsize,
        status_calls: AtomicUsize,
        asked: Mutex<Vec<Vec<String>>>,
        submitted: Mutex<Vec<JobSpec>>,
        /// Answer status with this error while set.
        failing: Mutex<Option<PluginError>>,
        /// Leave these ids out of status answers.
        omit: Mutex<HashSet<String>>,
    }

    impl FakeScheduler {
        fn set(&self, id: &str, state: JobState) {
            self.jobs.lock().unwrap().insert(
                id.into(),
                JobStatus {
                    id: id.into(),
                    state,
                    native_state: "X".into(),
                    exit_code: None,
                    message: None,
                },
            );
        }

        fn answer(&self, call: PluginCall) -> Result<PluginReply, PluginError> {
            match call {
                PluginCall::Render(spec) => Ok(PluginReply::Text(format!(
                    "#!/bin/sh\n{}\n",
                    spec.executable
                ))),
                PluginCall::Submit(spec) => {
                    if spec.executable == "refuse" {
                        return Err(PluginError::Invalid("no such program".into()));
                    }
                    let id = (1000 + self.next.fetch_add(1, Ordering::SeqCst)).to_string();
                    self.submitted.lock().unwrap().push(spec);
                    self.set(&id, JobState::Queued { held: false });
                    Ok(PluginReply::Submitted(id))
                }
                PluginCall::Status(ids) => {
                    self.status_calls.fetch_add(1, Ordering::SeqCst);
                    self.asked.lock().unwrap().push(ids.clone());
                    if let Some(e) = self.failing.lock().unwrap().clone() {
                        return Err(e);
                    }
                    let jobs = self.jobs.lock().unwrap();
                    let omit = self.omit.lock().unwrap();
                    Ok(PluginReply::Statuses(
                        ids.iter()
                            .filter(|i| !omit.contains(*i))
                            .map(|i| {
                                jobs.get(i).cloned().unwrap_or(JobStatus {
                                    id: i.clone(),
                                    state: JobState::Unknown,
                                    native_state: String::new(),
                                    exit_code: None,
                                    message: Some("not in the queue".into()),
                                })
                            })
                            .collect(),
                    ))
                }
                PluginCall::Cancel(id) => {
                    let mut jobs = self.jobs.lock().unwrap();
                    if let Some(j) = jobs.get_mut(&id) {
                        if !j.state.is_terminal() {
                            j.state = JobState::Cancelled;
                        }
                    }
                    Ok(PluginReply::Done)
                }
                other => Err(PluginError::Unsupported(other.export().into())),
            }
        }
    }

    struct Rig {
        shared: Arc<Shared>,
        store: Arc<Store>,
        dir: tempfile::TempDir,
        conns: Vec<(String, u64)>,
    }

    fn plugin(name: &str) -> LoadedPlugin {
        LoadedPlugin {
            info: PluginInfo {
                name: name.into(),
                version: "0.1.0".into(),
                scheduler: name.into(),
                features: vec![],
            },
            digest: "00".into(),
            grants: Default::default(),
        }
    }

    fn settings() -> JobsSection {
        JobsSection {
            poll_interval: Duration::from_millis(100),
            max_backoff: Duration::from_millis(800),
            call_timeout: Duration::from_secs(2),
            status_batch: 2000,
            retention: Duration::ZERO,
        }
    }

    fn rig_in(dir: tempfile::TempDir, jobs: JobsSection) -> Rig {
        let (store, loaded) = Store::open(dir.path(), 100).unwrap();
        let store = Arc::new(store);
        let registry = Arc::new(Registry::new(
            Settings {
                disconnect_after_beats: 3,
                down_after: Duration::from_secs(60),
                persist_every: Duration::from_secs(60),
                event_retention: 100,
            },
            vec![],
            vec![],
        ));
        let shared = Arc::new(Shared {
            registry,
            commands: Commands::new(),
            started: Instant::now(),
            jobs: Jobs::new(jobs, store.clone(), loaded.jobs),
        });
        Rig {
            shared,
            store,
            dir,
            conns: vec![],
        }
    }

    fn rig() -> Rig {
        rig_in(tempfile::tempdir().unwrap(), settings())
    }

    impl Rig {
        /// Connects a fake agent `node` hosting `plugins`, all answered by `sched`.
        fn agent(&mut self, node: &str, plugins: &[&str], sched: Arc<FakeScheduler>) {
            let (tx, mut rx) = tokio::sync::mpsc::channel::<CoordMsg>(64);
            let conn = self.shared.registry.connect(
                node,
                Duration::from_secs(1),
                "127.0.0.1:1".into(),
                "test".into(),
                tx,
                None,
            );
            self.shared.registry.plugins_announced(
                node,
                conn,
                plugins.iter().map(|p| plugin(p)).collect(),
                vec![],
            );
            self.conns.push((node.into(), conn));
            let shared = self.shared.clone();
            tokio::spawn(async move {
                while let Some(msg) = rx.recv().await {
                    if let CoordMsg::Command {
                        id,
                        command: Command::Plugin { call, .. },
                    } = msg
                    {
                        let answer = sched.answer(*call);
                        shared
                            .commands
                            .complete(id, Ok(CommandOutput::Plugin(answer)));
                    }
                }
            });
        }

        fn disconnect(&self, node: &str) {
            let conn = self.conns.iter().rev().find(|(n, _)| n == node).unwrap().1;
            self.shared.registry.disconnect(node, conn, "test");
        }

        async fn submit(&self, scheduler: &str, spec: JobSpec) -> Result<JobView, JobError> {
            self.shared
                .jobs
                .submit(
                    &self.shared,
                    SubmitRequest {
                        scheduler: scheduler.into(),
                        spec,
                        via: None,
                        dry_run: false,
                    },
                )
                .await
                .map(|r| r.expect("not a dry run"))
        }

        async fn poll(&self) -> PollReport {
            self.shared.jobs.poll_now(&self.shared).await
        }

        fn job(&self, id: JobId) -> JobView {
            self.shared.jobs.get(id).unwrap()
        }
    }

    fn spec(exe: &str) -> JobSpec {
        JobSpec {
            executable: exe.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_poll_asks_each_scheduler_once_about_all_its_jobs() {
        let mut r = rig();
        let sched = Arc::new(FakeScheduler::default());
        r.agent("n1", &["slurm"], sched.clone());
        let mut ids = vec![];
        for _ in 0..250 {
            ids.push(r.submit("slurm", spec("/bin/true")).await.unwrap().id);
        }
        let report = r.poll().await;
        assert_eq!(sched.status_calls.load(Ordering::SeqCst), 1);
        assert_eq!(sched.asked.lock().unwrap()[0].len(), 250);
        assert_eq!((report.groups, report.calls, report.jobs), (1, 1, 250));
        assert_eq!(
            report.changed, 250,
            "the native state is news for every job"
        );
        sched.set("1003", JobState::Running);
        let report = r.poll().await;
        assert_eq!(sched.status_calls.load(Ordering::SeqCst), 2);
        assert_eq!(report.changed, 1, "only the running one changed");
        assert_eq!(r.job(ids[3]).state, Some(JobState::Running));
        assert_eq!(r.job(ids[3]).state_word, "running");
    }

    #[tokio::test]
    async fn status_batch_splits_only_beyond_its_size() {
        let mut s = settings();
        s.status_batch = 100;
        let mut r = rig_in(tempfile::tempdir().unwrap(), s);
        let sched = Arc::new(FakeScheduler::default());
        r.agent("n1", &["slurm"], sched.clone());
        for _ in 0..250 {
            r.submit("slurm", spec("/bin/true")).await.unwrap();
        }
        let report = r.poll().await;
        assert_eq!(report.calls, 3);
        let sizes: Vec<usize> = sched.asked.lock().unwrap().iter().map(Vec::len).collect();
        assert_eq!(sizes, [100, 100, 50]);
    }

    #[tokio::test]
    async fn terminal_states_never_move_back() {
        let mut r = rig();
        let sched = Arc::new(FakeScheduler::default());
        r.agent("n1", &["slurm"], sched.clone());
        let job = r.submit("slurm", spec("/bin/true")).await.unwrap();
        let native = job.native_id.clone().unwrap();
        sched.set(&native, JobState::Succeeded);
        r.poll().await;
        assert_eq!(r.job(job.id).state, Some(JobState::Succeeded));
        // The scheduler changes its mind (or a late answer arrives): ignored.
        sched.set(&native, JobState::Running);
        let report = r.poll().await;
        assert_eq!(report.calls, 0, "a finished job is not asked about");
        r.shared.jobs.apply(
            &("n1".into(), "slurm".into()),
            std::slice::from_ref(&native),
            vec![JobStatus {
                id: native.clone(),
                state: JobState::Running,
                native_state: "RUNNING".into(),
                exit_code: None,
                message: None,
            }],
        );
        let after = r.job(job.id);
        assert_eq!(after.state, Some(JobState::Succeeded));
        let words: Vec<&str> = after.history.iter().map(|t| t.state.as_str()).collect();
        assert_eq!(words, ["submitting", "queued", "succeeded"]);
    }

    #[tokio::test]
    async fn a_job_missing_from_the_answer_is_unknown_and_stays_tracked() {
        let mut r = rig();
        let sched = Arc::new(FakeScheduler::default());
        r.agent("n1", &["slurm"], sched.clone());
        let job = r.submit("slurm", spec("/bin/true")).await.unwrap();
        let native = job.native_id.clone().unwrap();
        sched.omit.lock().unwrap().insert(native.clone());
        r.poll().await;
        let seen = r.job(job.id);
        assert_eq!(seen.state, Some(JobState::Unknown));
        assert!(
            seen.message.unwrap().contains("did not mention"),
            "reason given"
        );
        // Still asked about; resolved when the plugin knows again.
        sched.omit.lock().unwrap().clear();
        sched.set(
            &native,
            JobState::Failed {
                reason: "exit 3".into(),
            },
        );
        let report = r.poll().await;
        assert_eq!(report.jobs, 1);
        assert_eq!(
            r.job(job.id).state,
            Some(JobState::Failed {
                reason: "exit 3".into()
            })
        );
    }

    #[tokio::test]
    async fn unknown_from_the_plugin_stays_tracked() {
        let mut r = rig();
        let sched = Arc::new(FakeScheduler::default());
        r.agent("n1", &["slurm"], sched.clone());
        let job = r.submit("slurm", spec("/bin/true")).await.unwrap();
        sched.jobs.lock().unwrap().clear();
        for _ in 0..3 {
            r.poll().await;
        }
        let seen = r.job(job.id);
        assert_eq!(seen.state, Some(JobState::Unknown));
        assert!(!seen.is_finished());
        assert_eq!(sched.status_calls.load(Ordering::SeqCst), 3);
        let unknowns = seen.history.iter().filter(|t| t.state == "unknown").count();
        assert_eq!(unknowns, 1, "an unchanged state is not a new history entry");
    }

    #[tokio::test]
    async fn failed_polls_back_off_up_to_the_cap_and_recover() {
        let mut r = rig();
        let sched = Arc::new(FakeScheduler::default());
        r.agent("n1", &["slurm"], sched.clone());
        let job = r.submit("slurm", spec("/bin/true")).await.unwrap();
        *sched.failing.lock().unwrap() = Some(PluginError::Backend("slurmctld down".into()));
        let key: GroupKey = ("n1".into(), "slurm".into());
        let delay = |r: &Rig| {
            let inner = r.shared.jobs.lock();
            inner.groups[&key]
                .due
                .saturating_duration_since(Instant::now())
        };
        let mut delays = vec![];
        for _ in 0..5 {
            let report = r.poll().await;
            assert_eq!(report.failed_groups, 1);
            delays.push(delay(&r));
        }
        // 100 ms doubling: 200, 400, 800 (cap), 800, 800.
        let ms: Vec<u64> = delays
            .iter()
            .map(|d| (d.as_millis() as u64 + 50) / 100 * 100)
            .collect();
        assert_eq!(ms, [200, 400, 800, 800, 800]);
        assert!(r.job(job.id).poll_error.unwrap().contains("slurmctld down"));
        *sched.failing.lock().unwrap() = None;
        let report = r.poll().await;
        assert_eq!(report.failed_groups, 0);
        assert!(delay(&r) <= Duration::from_millis(100));
        assert_eq!(r.job(job.id).poll_error, None);
    }

    #[tokio::test]
    async fn the_poller_polls_on_its_own_and_backs_off() {
        let mut r = rig();
        let sched = Arc::new(FakeScheduler::default());
        r.agent("n1", &["slurm"], sched.clone());
        let job = r.submit("slurm", spec("/bin/true")).await.unwrap();
        let stop = CancellationToken::new();
        let poller = tokio::spawn(run_poller(r.shared.clone(), stop.clone()));
        sched.set(job.native_id.as_deref().unwrap(), JobState::Running);
        tokio::time::sleep(Duration::from_millis(550)).await;
        let healthy = sched.status_calls.swap(0, Ordering::SeqCst);
        assert!(
            (3..=7).contains(&healthy),
            "about one call per 100 ms: {healthy}"
        );
        assert_eq!(r.job(job.id).state, Some(JobState::Running));
        *sched.failing.lock().unwrap() = Some(PluginError::Timeout("squeue".into()));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let failing = sched.status_calls.load(Ordering::SeqCst);
        // 200 + 400 + 800 ms of backoff fit about 3 attempts into 1.5 s, not 15.
        assert!((2..=4).contains(&failing), "backed off: {failing}");
        stop.cancel();
        poller.await.unwrap();
    }

    #[tokio::test]
    async fn a_disconnected_node_keeps_its_jobs_without_backoff() {
        let mut r = rig();
        let sched = Arc::new(FakeScheduler::default());
        r.agent("n1", &["slurm"], sched.clone());
        let job = r.submit("slurm", spec("/bin/true")).await.unwrap();
        r.disconnect("n1");
        let report = r.poll().await;
        assert_eq!(report.calls, 0);
        assert_eq!(report.failed_groups, 0);
        let seen = r.job(job.id);
        assert_eq!(seen.state, Some(JobState::Queued { held: false }));
        assert!(seen.poll_error.unwrap().contains("not connected"));
        // Back (a new connection announcing the plugin): polled again.
        r.agent("n1", &["slurm"], sched.clone());
        sched.set(job.native_id.as_deref().unwrap(), JobState::Succeeded);
        r.poll().await;
        assert_eq!(r.job(job.id).state, Some(JobState::Succeeded));
        assert_eq!(r.job(job.id).poll_error, None);
    }

    #[tokio::test]
    async fn a_reconnected_node_is_waited_for_until_it_announces_then_a_missing_plugin_backs_off() {
        let mut r = rig();
        let sched = Arc::new(FakeScheduler::default());
        r.agent("n1", &["slurm"], sched.clone());
        let job = r.submit("slurm", spec("/bin/true")).await.unwrap();
        // A new connection that has not announced yet: waited for, no backoff.
        let (tx, _rx) = tokio::sync::mpsc::channel::<CoordMsg>(8);
        let conn = r.shared.registry.connect(
            "n1",
            Duration::from_secs(1),
            "127.0.0.1:2".into(),
            "test".into(),
            tx,
            None,
        );
        let report = r.poll().await;
        assert_eq!((report.calls, report.failed_groups), (0, 0));
        assert!(r.job(job.id).poll_error.unwrap().contains("not announced"));
        // It announces, without the plugin: that is a failure, and backs off.
        r.shared
            .registry
            .plugins_announced("n1", conn, vec![plugin("pbs")], vec![]);
        let report = r.poll().await;
        assert_eq!((report.calls, report.failed_groups), (0, 1));
        assert!(r
            .job(job.id)
            .poll_error
            .unwrap()
            .contains("does not host the slurm plugin"));
    }

    #[tokio::test]
    async fn status_and_cancel_go_to_the_node_that_submitted() {
        let mut r = rig();
        let a = Arc::new(FakeScheduler::default());
        let b = Arc::new(FakeScheduler::default());
        r.agent("a", &["slurm"], a.clone());
        let job = r.submit("slurm", spec("/bin/true")).await.unwrap();
        assert_eq!(job.node, "a");
        r.agent("b", &["slurm"], b.clone());
        r.disconnect("a");
        r.poll().await;
        r.shared.jobs.cancel(&r.shared, job.id).await.unwrap_err();
        assert_eq!(
            b.status_calls.load(Ordering::SeqCst),
            0,
            "b's scheduler is not a's"
        );
        // New submissions go to the connected host.
        let second = r.submit("slurm", spec("/bin/true")).await.unwrap();
        assert_eq!(second.node, "b");
    }

    #[tokio::test]
    async fn cancel_of_a_finished_job_is_not_an_error() {
        let mut r = rig();
        let sched = Arc::new(FakeScheduler::default());
        r.agent("n1", &["slurm"], sched.clone());
        let job = r.submit("slurm", spec("/bin/sleep")).await.unwrap();
        let cancelled = r.shared.jobs.cancel(&r.shared, job.id).await.unwrap();
        assert_eq!(
            cancelled.history.last().unwrap().message.as_deref(),
            Some("cancel requested")
        );
        r.poll().await;
        assert_eq!(r.job(job.id).state, Some(JobState::Cancelled));
        let again = r.shared.jobs.cancel(&r.shared, job.id).await.unwrap();
        assert_eq!(again.state, Some(JobState::Cancelled));
        let err = r
            .shared
            .jobs
            .cancel(&r.shared, JobId(999))
            .await
            .unwrap_err();
        assert!(matches!(err, JobError::NoJob(JobId(999))), "{err}");
    }

    #[tokio::test]
    async fn a_submission_is_durable_before_its_id_is_returned() {
        let mut r = rig();
        let sched = Arc::new(FakeScheduler::default());
        r.agent("n1", &["slurm"], sched.clone());
        let job = r.submit("slurm", spec("/bin/true")).await.unwrap();
        // Read the database from another connection, without flushing anything.
        let (_other, loaded) = Store::open(r.dir.path(), 100).unwrap();
        let stored = loaded.jobs.iter().find(|j| j.id == job.id).unwrap();
        assert_eq!(stored.phase, Phase::Submitted);
        assert_eq!(stored.native_id, job.native_id);
        assert_eq!(stored.spec, job.spec);
        let words: Vec<&str> = stored.history.iter().map(|t| t.state.as_str()).collect();
        assert_eq!(words, ["submitting", "queued"]);
    }

    #[tokio::test]
    async fn a_job_left_submitting_by_a_crash_is_orphaned_at_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, _) = Store::open(dir.path(), 100).unwrap();
            let now = unix_ms();
            let mut job = JobView {
                id: JobId(0),
                scheduler: "slurm".into(),
                node: "n1".into(),
                native_id: None,
                phase: Phase::Submitting,
                state: None,
                state_word: "submitting".into(),
                native_state: None,
                exit_code: None,
                message: None,
                spec: spec("/bin/true"),
                submitted_ms: now,
                updated_ms: now,
                polled_ms: None,
                poll_error: None,
                history: vec![],
            };
            job.push_history(None);
            store.insert_job(job).await.unwrap();
            // The coordinator "crashes" here: the plugin never answered.
        }
        let r = rig_in(dir, settings());
        let jobs = r.shared.jobs.list();
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].phase, Phase::Orphaned);
        assert_eq!(jobs[0].state_word, "orphaned");
        assert!(jobs[0].message.as_ref().unwrap().contains("unknown"));
        assert!(jobs[0].is_finished());
        r.store.flush().await;
        let (_s, loaded) = Store::open(r.dir.path(), 100).unwrap();
        assert_eq!(loaded.jobs[0].phase, Phase::Orphaned, "written back");
    }

    #[tokio::test]
    async fn tracked_jobs_survive_a_restart_and_ids_are_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first;
        {
            let mut r = rig_in(dir, settings());
            let sched = Arc::new(FakeScheduler::default());
            r.agent("n1", &["slurm"], sched.clone());
            first = r.submit("slurm", spec("/bin/true")).await.unwrap();
            r.store.flush().await;
            let dir = r.dir;
            drop(r.shared);
            let mut r = rig_in(dir, settings());
            let sched = Arc::new(FakeScheduler::default());
            sched.set(first.native_id.as_deref().unwrap(), JobState::Running);
            r.agent("n1", &["slurm"], sched.clone());
            let report = r.poll().await;
            assert_eq!(report.jobs, 1, "the reloaded job is polled");
            assert_eq!(r.job(first.id).state, Some(JobState::Running));
            let second = r.submit("slurm", spec("/bin/true")).await.unwrap();
            assert!(second.id > first.id);
        }
    }

    #[tokio::test]
    async fn a_refused_submission_is_recorded_as_rejected() {
        let mut r = rig();
        let sched = Arc::new(FakeScheduler::default());
        r.agent("n1", &["slurm"], sched.clone());
        let err = r.submit("slurm", spec("refuse")).await.unwrap_err();
        let JobError::Plugin {
            error,
            job: Some(id),
            ..
        } = &err
        else {
            panic!("{err:?}");
        };
        assert!(matches!(error, PluginError::Invalid(_)));
        assert!(err.to_string().contains("no such program"), "{err}");
        let job = r.job(*id);
        assert_eq!(job.phase, Phase::Rejected);
        assert!(job.is_finished());
        assert_eq!(r.poll().await.calls, 0);
    }

    #[tokio::test]
    async fn an_unknown_scheduler_names_it_and_lists_the_hosts() {
        let mut r = rig();
        let sched = Arc::new(FakeScheduler::default());
        r.agent("n1", &["slurm"], sched.clone());
        r.agent("n2", &["slurm", "ray-jobs"], sched.clone());
        let err = r.submit("pbs", spec("/bin/true")).await.unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, JobError::NoScheduler(_)), "{err:?}");
        assert!(msg.contains("\"pbs\""), "{msg}");
        assert!(msg.contains("n1: slurm; n2: slurm, ray-jobs"), "{msg}");
        assert!(r.shared.jobs.list().is_empty(), "nothing recorded");
        // Hosted, but only by a node that is away: a different answer.
        r.agent("n3", &["pbs"], sched.clone());
        r.disconnect("n3");
        let err = r.submit("pbs", spec("/bin/true")).await.unwrap_err();
        assert!(matches!(err, JobError::Unavailable(_)), "{err:?}");
        assert!(err.to_string().contains("n3"), "{err}");
    }

    #[tokio::test]
    async fn dependencies_by_corral_id_reach_the_plugin_as_native_ids() {
        let mut r = rig();
        let sched = Arc::new(FakeScheduler::default());
        r.agent("n1", &["slurm"], sched.clone());
        let first = r.submit("slurm", spec("/bin/true")).await.unwrap();
        let mut second = spec("/bin/true");
        second.dependencies = vec![Dependency {
            kind: DependencyKind::AfterOk,
            job: first.id.to_string(),
        }];
        let job = r.submit("slurm", second.clone()).await.unwrap();
        assert_eq!(
            job.spec.dependencies[0].job,
            first.id.to_string(),
            "recorded by corral id"
        );
        let sent = sched.submitted.lock().unwrap()[1].clone();
        assert_eq!(sent.dependencies[0].job, first.native_id.clone().unwrap());
        for (bad, words) in [
            ("42", "look like c42"),
            ("c999", "no job c999"),
            ("x", "not a corral job id"),
        ] {
            second.dependencies[0].job = bad.into();
            let err = r.submit("slurm", second.clone()).await.unwrap_err();
            assert!(matches!(err, JobError::Invalid(_)), "{err:?}");
            assert!(err.to_string().contains(words), "{bad}: {err}");
        }
    }

    #[tokio::test]
    async fn a_dry_run_renders_and_records_nothing() {
        let mut r = rig();
        let sched = Arc::new(FakeScheduler::default());
        r.agent("n1", &["slurm"], sched.clone());
        let out = r
            .shared
            .jobs
            .submit(
                &r.shared,
                SubmitRequest {
                    scheduler: "slurm".into(),
                    spec: spec("/bin/hostname"),
                    via: None,
                    dry_run: true,
                },
            )
            .await
            .unwrap();
        let rendered = out.unwrap_err();
        assert!(rendered.script.contains("/bin/hostname"));
        assert_eq!(rendered.node, "n1");
        assert!(r.shared.jobs.list().is_empty());
        assert!(sched.submitted.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn plugin_calls_are_counted_by_export_and_outcome() {
        let mut r = rig();
        let sched = Arc::new(FakeScheduler::default());
        r.agent("n1", &["slurm"], sched.clone());
        r.submit("slurm", spec("/bin/true")).await.unwrap();
        r.submit("slurm", spec("refuse")).await.unwrap_err();
        let m = r.shared.jobs.metrics(&r.shared);
        assert_eq!(m.plugin_calls[&("slurm".to_string(), "submit", "ok")], 1);
        assert_eq!(
            m.plugin_calls[&("slurm".to_string(), "submit", "invalid")],
            1
        );
        assert_eq!(m.jobs[&("slurm".to_string(), "queued".to_string())], 1);
        assert_eq!(m.jobs[&("slurm".to_string(), "rejected".to_string())], 1);
    }

    #[test]
    fn job_ids_read_and_print_as_c_numbers() {
        assert_eq!("c17".parse::<JobId>(), Ok(JobId(17)));
        assert_eq!(JobId(17).to_string(), "c17");
        assert!("17".parse::<JobId>().unwrap_err().contains("c17"));
        for bad in ["", "c", "c0", "c+1", "c-1", "C17", "job17"] {
            assert!(bad.parse::<JobId>().is_err(), "{bad:?}");
        }
        assert_eq!(serde_json::to_string(&JobId(3)).unwrap(), "\"c3\"");
    }
}
