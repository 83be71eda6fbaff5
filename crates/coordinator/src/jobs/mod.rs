//! Jobs through the cluster: the coordinator's job table, the routing of plugin calls to
//! agents, the bulk status poller, and recovery after a restart.
//!
//! Parts: `table` (the jobs, their states, transitions and retention), `submit`
//! (routing, submission and cancel) and `poller` (one poll pass, and the loop that
//! runs passes when they are due). [`Jobs`] holds what they share: the table, the
//! registry (who hosts which plugin), the command path to the agents and the store.
//!
//! A job is submitted to a *scheduler plugin* (by its name, e.g. `slurm`) that some
//! connected agent hosts (`AgentMsg::Plugins`). The coordinator records it under its own
//! id (`c17`), with the scheduler, the node whose plugin took it (its *submit host*), the
//! native id the scheduler gave it, the spec and every state it went through.
//!
//! A *scheduler instance* is one `[schedulers.NAME]` section of the coordinator's config
//! (NAME is the plugin's name): one scheduler (a Slurm cluster) and the nodes authorized
//! to reach it, its *hosts* (login nodes), in order of preference. A native id means
//! something to the instance, not to the host that happened to submit the job.
//!
//! Invariants:
//! - **Durable before answered.** A submission is first written to the database as
//!   `submitting` (the write is committed before the plugin is called), then the plugin
//!   is called, then the native id is committed, and only then is the corral id
//!   returned. A coordinator that dies between the first write and the last leaves the
//!   job `submitting`; at the next start it becomes `orphaned`: corral cannot know
//!   whether the scheduler accepted it, and says so instead of guessing.
//! - **A job belongs to its scheduler instance.** Its status and cancel calls go
//!   through its submit host while that is connected and hosts the plugin, else through
//!   the first other authorized connected host of the instance
//!   ([`Jobs::instance_hosts`]); the host that answered last is recorded
//!   (`polled_via`, and a history note whenever it changes). Only when no host of the
//!   instance can be asked does the job keep its last known state, with `poll_error`
//!   saying why ("no host of scheduler slurm is connected (submitted through login-01);
//!   last known state shown"), cleared by the next answer. The config is the operator's
//!   word that the hosts it names front one scheduler: corral does not check it. New
//!   submissions go only to authorized hosts: the first connected one in that order, or
//!   the node named with `via` if it is one; a node that merely announced the plugin
//!   gets none.
//! - **One status call per poll per scheduler instance.** Every poll asks each instance
//!   about all its unfinished jobs, whichever hosts submitted them, in one `status` call
//!   (split only beyond `jobs.status_batch` ids, which bounds one answer's size), never
//!   one call per job or per submit host.
//! - **Terminal states never move back.** A job whose state is terminal
//!   ([`JobState::is_terminal`](corral_proto::job::JobState::is_terminal)), `rejected`
//!   or `orphaned` is no longer polled, and an answer that arrives for it later is
//!   ignored.
//! - **Unknown is not an answer.** A job the plugin reports `unknown`, or leaves out of
//!   its answer, is shown `unknown` with the reason and stays tracked: it is asked about
//!   again at every poll until the plugin resolves it.
//! - **Backoff per scheduler instance.** A failed poll (plugin error, no host answered,
//!   no connected host hosts the plugin now) doubles that instance's interval up to
//!   `jobs.max_backoff`; a successful one restores `jobs.poll_interval`. An instance
//!   with no host connected (or none announced yet) is not a failure: its jobs wait at
//!   the normal interval.
//! - Dependencies name corral jobs (`c17`) and are translated to native ids here; the
//!   job depended on must belong to the same scheduler instance (any of its hosts).
//!
//! Trade-offs: the table lives in memory (a `BTreeMap` under one mutex with the poll
//! schedule, never held across an await) with the database as its durable copy;
//! submissions and their outcomes are written synchronously, poll results write-behind
//! (a crash loses at most the states seen since the last write, which the next poll
//! sees again). Finished jobs are forgotten after `jobs.retention`.

mod poller;
mod submit;
mod table;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::Notify;
use tracing::{debug, info};

use crate::commands::{CommandError, Commands};
use crate::config::JobsSection;
use crate::registry::Registry;
use crate::store::{JobRow, Store};
use corral_proto::api::{JobId, JobView, NodePlugins, Rendered};
use corral_proto::job::{PluginCall, PluginError, PluginReply};
use corral_proto::model::Liveness;
use corral_proto::wire::{Command, CommandOutput};

pub use poller::Scope;
use poller::{Group, GroupKey};
use table::Table;

/// What a submission request came to.
#[derive(Debug)]
pub enum Submitted {
    /// The scheduler accepted the job; corral tracks it under this id. (Boxed: a job
    /// with its spec and history is large, a rendered script small.)
    Job(Box<JobView>),
    /// A dry run: the script the plugin would submit. Nothing was submitted or recorded.
    DryRun(Rendered),
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

/// (plugin, export, outcome).
type CallKey = (String, &'static str, &'static str);

/// Counts for `/metrics`.
#[derive(Debug, Clone, Default)]
pub(crate) struct JobMetrics {
    /// (scheduler, state word) → jobs.
    pub(crate) jobs: BTreeMap<(String, String), u64>,
    /// (plugin, export, outcome) → calls routed since the coordinator started.
    pub(crate) plugin_calls: BTreeMap<CallKey, u64>,
    /// Every node's announced plugins.
    pub(crate) plugins: Vec<NodePlugins>,
}

/// The table and the poll schedule, under one lock.
struct Inner {
    table: Table,
    /// Scheduler instance → poll schedule.
    groups: HashMap<GroupKey, Group>,
}

/// The coordinator's jobs.
pub struct Jobs {
    settings: JobsSection,
    store: Arc<Store>,
    registry: Arc<Registry>,
    commands: Arc<Commands>,
    inner: Mutex<Inner>,
    /// Wakes the poller loop: a job to track, or a schedule that changed.
    wake: Notify,
    calls: Mutex<BTreeMap<CallKey, u64>>,
}

impl Jobs {
    /// The job table, from what the database held. Jobs found `submitting` become
    /// `orphaned` (and that is written back).
    pub(crate) fn new(
        settings: JobsSection,
        store: Arc<Store>,
        registry: Arc<Registry>,
        commands: Arc<Commands>,
        loaded: Vec<JobRow>,
    ) -> Jobs {
        let (table, orphaned) = Table::load(loaded);
        store.put_jobs(orphaned);
        let tracked = table.iter().filter(|j| j.tracked()).count();
        info!(jobs = table.len(), tracked, "job table loaded");
        Jobs {
            settings,
            store,
            registry,
            commands,
            inner: Mutex::new(Inner {
                table,
                groups: HashMap::new(),
            }),
            wake: Notify::new(),
            calls: Mutex::new(BTreeMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock would be a bug; the data stays usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every job, oldest first, without histories.
    pub fn list(&self) -> Vec<JobView> {
        self.lock().table.iter().map(|j| j.view(false)).collect()
    }

    /// One job with its history.
    pub(crate) fn get(&self, id: JobId) -> Option<JobView> {
        self.lock().table.get(id).map(|j| j.view(true))
    }

    /// Calls `call` on `plugin` at `node` and waits for the answer (at most
    /// `jobs.call_timeout`); counts the outcome for `/metrics`. Submission, cancel and
    /// the poller route every plugin call through here. `owner` is the user the job
    /// belongs to (the agent runs `submit` and `cancel` as them); `None` for calls about
    /// no one job (`status` of many, `list`).
    pub async fn call(
        &self,
        node: &str,
        plugin: &str,
        call: PluginCall,
        owner: Option<&str>,
    ) -> Result<PluginReply, CallError> {
        let export = call.export();
        let started = Instant::now();
        let command = Command::Plugin {
            plugin: plugin.to_string(),
            call: Box::new(call),
            owner: owner.map(str::to_string),
        };
        let result = match self
            .commands
            .send(node, command, self.settings.call_timeout)
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

    /// The hosts a call about jobs of `scheduler` goes through, in the order to try them:
    /// the connected authorized hosts that announced the plugin
    /// ([`Registry::plugin_hosts`]); those beating (`ready`) before those that missed
    /// their beats (an agent killed outright keeps its connection until QUIC's idle
    /// timeout, and a call to it only times out), and within each, those in `submitters`
    /// (the jobs' submit hosts) first; otherwise in `[schedulers.NAME] nodes` order.
    /// Empty: no host can be asked now.
    pub(crate) fn instance_hosts(
        &self,
        scheduler: &str,
        submitters: &HashSet<String>,
    ) -> Vec<String> {
        let mut hosts: Vec<(bool, bool, String)> = self
            .registry
            .plugin_hosts(scheduler)
            .into_iter()
            .map(|h| {
                let silent = self
                    .registry
                    .get(&h)
                    .is_none_or(|n| n.liveness != Liveness::Ready);
                (silent, !submitters.contains(&h), h)
            })
            .collect();
        // Stable: the configured order stays within each part.
        hosts.sort_by_key(|(silent, other, _)| (*silent, *other));
        hosts.into_iter().map(|(_, _, h)| h).collect()
    }

    /// Forgets finished jobs past `jobs.retention`, in memory and in the database (at
    /// most once a minute).
    fn prune(&self) {
        let old = self.lock().table.prune(self.settings.retention);
        if !old.is_empty() {
            info!(jobs = old.len(), "forgot finished jobs past jobs.retention");
            self.store.delete_jobs(old);
        }
    }

    /// Counts for `/metrics`.
    pub(crate) fn metrics(&self) -> JobMetrics {
        let mut jobs = BTreeMap::new();
        for j in self.lock().table.iter() {
            *jobs
                .entry((j.scheduler.clone(), j.word().to_string()))
                .or_default() += 1;
        }
        JobMetrics {
            jobs,
            plugin_calls: self.calls.lock().map(|c| c.clone()).unwrap_or_default(),
            plugins: self.registry.plugins(),
        }
    }
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
