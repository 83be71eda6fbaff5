//! Submission and cancel: where a new job goes, its dependencies in the scheduler's own
//! ids, the durable steps of a submission, and cancel requests.
//!
//! Invariants (see the parent module for the whole list):
//! - Durable before answered: the job is committed as `submitting` before the plugin is
//!   called, and its outcome is committed before the id is returned.
//! - A failure that may have reached the scheduler (the agent timed out) is `orphaned`,
//!   one that cannot have (busy, not connected, refused) is `rejected`.
//! - A cancel is a request: the job's state changes only when the scheduler says so at
//!   the next poll, which the cancel makes due at once. It goes through the job's submit
//!   host while that hosts the plugin, else through another host of the same instance;
//!   a host that cannot be asked hands it to the next (a cancel asked twice is still one
//!   cancel to a scheduler).

use std::collections::HashSet;
use std::time::Instant;

use tracing::{info, warn};

use super::table::Job;
use super::{call_error, unexpected, CallError, JobError, Jobs, Submitted};
use crate::commands::CommandError;
use corral_proto::api::{JobId, JobView, NodePlugins, Phase, Rendered, SubmitRequest};
use corral_proto::job::{JobSpec, JobState, PluginCall, PluginReply};

impl Jobs {
    /// Picks the node a new submission goes to: the one named with `via`, if it may
    /// serve `scheduler` and hosts it now; otherwise the first connected authorized host
    /// in the order of `[schedulers.NAME] nodes` ([`crate::registry::Registry::plugin_hosts`]).
    /// A node that announced the plugin without being authorized never gets one.
    ///
    /// The common case (no `via`, a host connected) is one scan of the registry; the
    /// snapshot of every node's plugins, a copy per node, is taken only to explain a
    /// refusal or to check the node `via` names.
    fn route(&self, scheduler: &str, via: Option<&str>) -> Result<String, JobError> {
        if via.is_none() {
            if let Some(node) = self.registry.plugin_hosts(scheduler).into_iter().next() {
                return Ok(node);
            }
        }
        let plugins = self.registry.plugins();
        let announces = |p: &NodePlugins| p.loaded.iter().any(|l| l.info.name == scheduler);
        let configured = || {
            let nodes = self.registry.authority().scheduler_nodes(scheduler);
            if nodes.is_empty() {
                format!("no node may serve it: the coordinator's config has no [schedulers.{scheduler}] nodes")
            } else {
                format!("[schedulers.{scheduler}] nodes = {nodes:?}")
            }
        };
        if let Some(node) = via {
            return match plugins.iter().find(|p| p.node == node) {
                Some(p) if p.hosts(scheduler) => Ok(node.to_string()),
                Some(p) if announces(p) && !p.authorized(scheduler) => Err(JobError::Unavailable(format!(
                    "node {node} is not authorized to serve scheduler plugin {scheduler:?} ({}); nodes and their plugins: {}",
                    configured(),
                    describe_hosts(&plugins)
                ))),
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
        let away: Vec<&str> = plugins
            .iter()
            .filter(|p| !p.connected && announces(p) && p.authorized(scheduler))
            .map(|p| p.node.as_str())
            .collect();
        if !away.is_empty() {
            return Err(JobError::Unavailable(format!(
                "scheduler plugin {scheduler:?} is hosted only by nodes that are not connected now ({}); nodes and their plugins: {}",
                away.join(", "),
                describe_hosts(&plugins)
            )));
        }
        let unauthorized: Vec<&str> = plugins
            .iter()
            .filter(|p| announces(p) && !p.authorized(scheduler))
            .map(|p| p.node.as_str())
            .collect();
        if !unauthorized.is_empty() {
            return Err(JobError::NoScheduler(format!(
                "no authorized node hosts scheduler plugin {scheduler:?}: only nodes not authorized to serve it announce it ({}; {}); nodes and their plugins: {}",
                unauthorized.join(", "),
                configured(),
                describe_hosts(&plugins)
            )));
        }
        Err(JobError::NoScheduler(format!(
            "no connected node hosts a scheduler plugin named {scheduler:?}; nodes and their plugins: {} (`corral plugins` shows them; agents load plugins listed in [plugins] enable)",
            describe_hosts(&plugins)
        )))
    }

    /// The spec the plugin gets: dependencies translated from corral ids to native ids
    /// of jobs of the same scheduler instance (through whichever of its hosts).
    fn translate(&self, spec: &JobSpec, scheduler: &str) -> Result<JobSpec, JobError> {
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
                .table
                .get(id)
                .ok_or_else(|| JobError::Invalid(format!("dependency: no job {id}")))?;
            if other.scheduler != scheduler {
                return Err(JobError::Invalid(format!(
                    "dependency: {id} went to scheduler {}, this job to {scheduler}; a dependency must be on a job of the same scheduler instance",
                    other.scheduler
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

    /// Renders (dry run) or submits a job for `owner`, the authenticated user it will
    /// belong to and run as.
    pub async fn submit(&self, owner: &str, req: SubmitRequest) -> Result<Submitted, JobError> {
        let node = self.route(&req.scheduler, req.via.as_deref())?;
        let native_spec = self.translate(&req.spec, &req.scheduler)?;
        if req.dry_run {
            return match self
                .call(
                    &node,
                    &req.scheduler,
                    PluginCall::Render(native_spec),
                    Some(owner),
                )
                .await
            {
                Ok(PluginReply::Text(script)) => Ok(Submitted::DryRun(Rendered {
                    scheduler: req.scheduler,
                    node,
                    script,
                })),
                Ok(other) => Err(unexpected(&req.scheduler, &node, &other, None)),
                Err(e) => Err(call_error(e, &req.scheduler, &node, None)),
            };
        }

        let mut job = Job::submitting(&req.scheduler, &node, owner, req.spec);
        // Durable before the scheduler hears of it: see the module docs.
        let id = self.store.insert_job(job.row()).await.map_err(|e| {
            JobError::Store(format!(
                "recording the job failed, nothing was submitted: {e:#}"
            ))
        })?;
        job.id = JobId(id);
        self.lock().table.put(job.clone());

        let result = self
            .call(
                &node,
                &job.scheduler,
                PluginCall::Submit(native_spec),
                Some(owner),
            )
            .await;
        let failure = settle(&mut job, result);
        self.lock().table.put(job.clone());
        let written = self.store.put_jobs_durably(vec![job.row()]).await;
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
        Ok(Submitted::Job(Box::new(job.view(true))))
    }

    /// A copy of job `id`.
    fn job(&self, id: JobId) -> Result<Job, JobError> {
        self.lock()
            .table
            .get(id)
            .cloned()
            .ok_or(JobError::NoJob(id))
    }

    /// Cancels a job. A job that already finished is not an error: it is returned as is.
    pub(crate) async fn cancel(&self, id: JobId) -> Result<JobView, JobError> {
        let job = self.job(id)?;
        if job.is_finished() && job.phase != Phase::Orphaned {
            return Ok(job.view(true));
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
        let via = self.cancel_through(&job, &native).await?;
        info!(job = %id, scheduler = %job.scheduler, submit_host = %job.node, %via, owner = %job.owner, native_id = %native, "cancel requested");
        let updated = {
            let mut inner = self.lock();
            if let Some(g) = inner.groups.get_mut(&job.scheduler) {
                // Look again at once: the scheduler's answer is the state, not our wish.
                g.due = Instant::now();
            }
            inner.table.get_mut(id).map(|j| {
                if !j.is_finished() {
                    if via == j.node {
                        j.note("cancel requested");
                    } else {
                        j.note(&format!(
                            "cancel requested through node {via} (submitted through {})",
                            j.node
                        ));
                    }
                }
                j.clone()
            })
        };
        let updated = updated.ok_or(JobError::NoJob(id))?;
        self.store.put_jobs(vec![updated.row()]);
        self.wake.notify_one();
        Ok(updated.view(true))
    }

    /// Asks `job`'s scheduler instance to cancel native job `native` through its hosts in
    /// order ([`Jobs::instance_hosts`]: the submit host first); returns the host that
    /// took the request.
    async fn cancel_through(&self, job: &Job, native: &str) -> Result<String, JobError> {
        let (via, reply) = self
            .call_through(job, PluginCall::Cancel(native.to_string()), "cancelled")
            .await?;
        match reply {
            PluginReply::Done => Ok(via),
            other => Err(unexpected(&job.scheduler, &via, &other, None)),
        }
    }

    /// The last `max_bytes` of a job's output, read by its plugin as the job's owner
    /// (through the same hosts a cancel would go to).
    pub(crate) async fn logs(&self, id: JobId, max_bytes: u32) -> Result<String, JobError> {
        let job = self.job(id)?;
        let Some(native) = job.native_id.clone() else {
            return Err(JobError::Conflict(format!(
                "{id} has no native id ({:?}), so its scheduler cannot say where its output is",
                job.phase
            )));
        };
        let (via, reply) = self
            .call_through(
                &job,
                PluginCall::Logs {
                    id: native,
                    max_bytes,
                },
                "read",
            )
            .await?;
        match reply {
            PluginReply::Text(t) => Ok(t),
            other => Err(unexpected(&job.scheduler, &via, &other, None)),
        }
    }

    /// Makes `call` about `job` through the instance's hosts, its submit host first,
    /// failing over to the next host when one cannot be asked; the host that answered
    /// and its answer.
    async fn call_through(
        &self,
        job: &Job,
        call: PluginCall,
        what: &str,
    ) -> Result<(String, PluginReply), JobError> {
        let hosts = self.instance_hosts(&job.scheduler, &HashSet::from([job.node.clone()]));
        if hosts.is_empty() {
            return Err(JobError::Unavailable(format!(
                "{} cannot be {what} now: no host of scheduler {} is connected (submitted through {}); try again when one is (`corral plugins` shows the hosts)",
                job.id, job.scheduler, job.node
            )));
        }
        let owner = Some(job.owner.as_str()).filter(|o| !o.is_empty());
        let last = hosts.len() - 1;
        for (i, node) in hosts.iter().enumerate() {
            match self.call(node, &job.scheduler, call.clone(), owner).await {
                Ok(reply) => return Ok((node.clone(), reply)),
                Err(CallError::Command(e)) if i < last => {
                    warn!(job = %job.id, scheduler = %job.scheduler, %node, export = call.export(), error = %e, next = %hosts[i + 1], "a host of the scheduler could not be asked; trying the next");
                }
                Err(e) => return Err(call_error(e, &job.scheduler, node, None)),
            }
        }
        // Every host but the last returns or continues above; the last always returns.
        Err(JobError::Unavailable(format!(
            "{} cannot be {what} now: no host of scheduler {} answered",
            job.id, job.scheduler
        )))
    }
}

/// Applies the plugin's answer to a submission to `job`; the error to return, if the
/// submission did not go through.
fn settle(job: &mut Job, result: Result<PluginReply, CallError>) -> Option<JobError> {
    let node = job.node.clone();
    match result {
        Ok(PluginReply::Submitted(native)) => {
            info!(job = %job.id, scheduler = %job.scheduler, %node, native_id = %native, "job submitted");
            job.phase = Phase::Submitted;
            job.native_id = Some(native.clone());
            // PSI/J: a job the scheduler accepted is queued until it says otherwise.
            job.state = Some(JobState::Queued { held: false });
            job.record(Some(format!("submitted: native id {native}")));
            None
        }
        Ok(other) => {
            job.phase = Phase::Orphaned;
            job.message = Some(format!("unexpected answer to submit: {other:?}"));
            job.record(job.message.clone());
            Some(unexpected(&job.scheduler, &node, &other, Some(job.id)))
        }
        Err(CallError::Plugin(e)) => {
            warn!(job = %job.id, scheduler = %job.scheduler, %node, error = %e, "submission refused by the plugin");
            job.phase = Phase::Rejected;
            job.message = Some(e.to_string());
            job.record(job.message.clone());
            Some(call_error(
                CallError::Plugin(e),
                &job.scheduler,
                &node,
                Some(job.id),
            ))
        }
        Err(CallError::Command(e)) => {
            // Busy or not connected: the command never left; a timeout: it may have.
            let sent = matches!(
                e,
                CommandError::Timeout { .. } | CommandError::Disconnected { .. }
            );
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
            job.record(job.message.clone());
            Some(call_error(
                CallError::Command(e),
                &job.scheduler,
                &node,
                Some(job.id),
            ))
        }
    }
}

/// "node-a: slurm, pbs; node-b (disconnected): slurm; node-c: slurm (not authorized);
/// node-d: none (failed to load: pbs)".
fn describe_hosts(plugins: &[NodePlugins]) -> String {
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
                    .map(|l| {
                        let name = l.info.name.as_str();
                        if p.authorized(name) {
                            name.to_string()
                        } else {
                            format!("{name} (not authorized)")
                        }
                    })
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
