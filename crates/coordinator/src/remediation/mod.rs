//! Remediation: the coordinator drains nodes that stay unhealthy, in every scheduler
//! instance they belong to and in Ray, cordons them in corral, and resumes exactly what
//! it drained once they have been healthy long enough. Node Health Check and draino do
//! this on one node or in one scheduler; here one policy covers every scheduler and Ray,
//! with the limits Medik8s and draino have.
//!
//! The life of a cordon:
//! ```text
//!   unhealthy for drain_after ──▶ cordoned (drains pending) ──▶ drained everywhere
//!   (per reason class)            │  recorded before acting       │ healthy for resume_after
//!                                 ▼                               ▼
//!                         retried with backoff          resuming: lift our drains ──▶ gone
//! ```
//!
//! Invariants:
//! - Corral lifts only what it set. A drain is made only after the scheduler is asked
//!   about the node (`node-state`): a node already drained with a reason that lacks
//!   [`PREFIX`] is someone else's (`foreign`), left alone and never resumed. At resume
//!   the scheduler is asked again, and a drain whose reason a person has since replaced
//!   stays in place. (Between the question and the drain a person may drain the node
//!   too; the scheduler then keeps corral's reason, and the person's intent is lost. The
//!   window is one plugin call.)
//! - A cordon is written to the database, and committed, before any drain is made, and
//!   after every change of one of its drains: a crash never forgets a drain. After a
//!   restart the pending ones are made again (a scheduler drain found already set with
//!   corral's prefix counts as done), and the nodes are watched afresh: a node's
//!   unhealthy and healthy clocks start at the coordinator's start.
//! - Limits apply to the policy, never to a person: at most `max_unhealthy_percent` of
//!   the nodes (at least one) cordoned, cluster-wide and among each scheduler instance's
//!   members, counting every cordon; and at most one automatic drain per
//!   `drain_interval` per instance (nodes in no instance share one "cluster" interval).
//!   A node held back by a percent limit makes the remediation `blocked`: an event when
//!   it starts and ends, a metric, and the reason in `corral remediation status`.
//! - Paused (`corral remediation pause`, kept across restarts): the policy starts
//!   nothing, drains and resumes included, and lets its own pending actions wait. What a
//!   person asks for (`corral drain`, `corral resume`) still runs.
//! - `dry_run`: every decision is made, limited, logged and recorded as an event
//!   (`would-drain`, `would-resume`), and nothing is changed: no cordon is shown, no
//!   plugin or agent is asked.
//! - Only `ready` nodes' health counts: a disconnected node's last report is old news.
//!   `down` nodes are drained only with `drain_when_down` (an agent can restart while
//!   slurmd keeps running) and then at once, `down_after` having been the wait.
//! - A cordon a person made is lifted only by a person (`corral resume`); one the
//!   policy made becomes a person's when they drain the node by hand.
//! - A Ray drain is made again whenever a cordoned node's agent connects anew (its
//!   restart, or the coordinator's, forgets it and would let the worker rejoin); the
//!   agent answers a drain it already holds as done.
//!
//! Trade-offs:
//! - Scheduler calls go through the instance's authorized submit hosts in their
//!   configured order (the first that answers), not through the node: a node that is
//!   broken, or gone, can still be drained.
//! - The policy evaluates every [`TICK`] over a registry snapshot (O(nodes)); actions
//!   run beside it, one task per node at a time, so a slow scheduler delays only the
//!   node it is about.

mod state;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{Delay, ReasonClass, RemediationSection, SchedulerSection};
use crate::registry::Registry;
use crate::store::{PauseRow, Store};
use corral_proto::api::{Cordon, NodeView, Paused, RemediationView, Waiting};
use corral_proto::job::{PluginCall, PluginError, PluginReply};
use corral_proto::model::{unix_ms, HealthStatus, Liveness, RayRole};
use corral_proto::wire::Command;

pub(crate) use state::{Actor, Cordoned, Drain, DrainState, Target};

/// What corral puts before every drain reason it sets, and looks for before lifting one.
pub const PREFIX: &str = "corral: ";

/// How often the policy looks at the nodes.
pub const TICK: Duration = Duration::from_millis(250);

/// The longest reason corral writes into a scheduler (after the prefix).
const MAX_REASON: usize = 200;

/// How the remediation reaches schedulers and agents. The coordinator's is [`Live`];
/// tests script one.
pub(crate) trait Actuator: Send + Sync + 'static {
    /// Calls `call` on scheduler instance `instance` through one of its authorized
    /// submit hosts; `Err` names what failed.
    fn scheduler(
        &self,
        instance: &str,
        call: PluginCall,
    ) -> BoxFuture<'static, Result<PluginReply, Failure>>;
    /// Sends `command` (a Ray drain or resume) to `node`'s agent; `Ok` is what it did.
    fn agent(&self, node: &str, command: Command) -> BoxFuture<'static, Result<String, String>>;
}

/// Why a scheduler call failed, and whether trying again can help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The plugin cannot do it (no drain support) or calls the request invalid (a node
    /// name it refuses): not retried; the drain is `skipped`, with the message.
    Final(String),
    /// Anything else (no host connected, the scheduler failed, a timeout): retried.
    Retry(String),
}

/// A drain's or lift's outcome: where it ended up, or (`Err`) why to try again.
fn settled(
    r: Result<(DrainState, Option<String>), Failure>,
) -> Result<(DrainState, Option<String>), String> {
    match r {
        Ok(v) => Ok(v),
        Err(Failure::Final(m)) => Ok((DrainState::Skipped, Some(m))),
        Err(Failure::Retry(m)) => Err(m),
    }
}

/// Every (action, outcome) the remediation counts.
const KNOWN_ACTIONS: &[(&str, &str)] = &[
    ("cordon", "ok"),
    ("cordon", "blocked"),
    ("cordon", "dry-run"),
    ("drain", "ok"),
    ("drain", "failed"),
    ("drain", "foreign"),
    ("drain", "not-member"),
    ("drain", "skipped"),
    ("resume", "ok"),
    ("resume", "failed"),
    ("resume", "foreign"),
    ("resume", "dry-run"),
    ("uncordon", "ok"),
];

/// Counts of actions by (action, outcome), for `/metrics`.
pub(crate) type ActionCounts = BTreeMap<(&'static str, &'static str), u64>;

/// What `/metrics` reads.
#[derive(Debug, Default)]
pub(crate) struct RemediationMetrics {
    pub paused: bool,
    pub blocked: bool,
    pub actions: ActionCounts,
}

/// Why a person's request was refused.
#[derive(Debug, thiserror::Error)]
pub enum RemediationError {
    #[error("no node {0:?} is known to the coordinator; see `corral nodes`")]
    UnknownNode(String),
    #[error("node {0} is not cordoned; nothing to resume")]
    NotCordoned(String),
    #[error("{0}")]
    BadReason(String),
    #[error("recording it in the database failed: {0}; nothing was changed")]
    Store(String),
}

/// A node's clocks: since when each unhealthy class has been present, and since when
/// it has been healthy.
#[derive(Default)]
struct Watch {
    bad: BTreeMap<ReasonClass, (Instant, String)>,
    good_since: Option<Instant>,
    /// A dry run announced this node's decision already.
    announced: bool,
    /// Connected at the last evaluation (a new entry: not yet seen connected).
    connected: bool,
}

struct Inner {
    cordons: BTreeMap<String, Cordoned>,
    watch: HashMap<String, Watch>,
    paused: Option<PauseRow>,
    /// Last automatic drain per scheduler instance (or [`CLUSTER`]).
    last_drain: HashMap<String, Instant>,
    blocked: Option<String>,
    waiting: Vec<Waiting>,
    in_flight: BTreeSet<String>,
    counts: ActionCounts,
}

/// The rate-limit key of nodes that are members of no scheduler instance.
const CLUSTER: &str = "";

/// The coordinator's remediation (see the module docs).
pub struct Remediation {
    cfg: RemediationSection,
    /// The `[schedulers.NAME]` instances that drain (`drain = true`).
    instances: BTreeMap<String, SchedulerSection>,
    registry: Arc<Registry>,
    store: Arc<Store>,
    act: Arc<dyn Actuator>,
    inner: Mutex<Inner>,
    wake: Notify,
}

/// What one evaluation decided.
enum Decision {
    Cordon {
        node: String,
        reason: String,
        drains: Vec<Drain>,
    },
    Resume {
        node: String,
    },
    WouldDrain {
        node: String,
        reason: String,
        targets: String,
    },
    WouldResume {
        node: String,
    },
    Blocked(Option<String>),
}

impl Remediation {
    pub(crate) fn new(
        cfg: RemediationSection,
        schedulers: &BTreeMap<String, SchedulerSection>,
        registry: Arc<Registry>,
        store: Arc<Store>,
        act: Arc<dyn Actuator>,
        loaded: Vec<crate::store::CordonRow>,
        paused: Option<PauseRow>,
    ) -> Remediation {
        let mut cordons = BTreeMap::new();
        for row in loaded {
            let c = Cordoned::from_row(row);
            if !registry.set_cordon(&c.node, Some(c.view())) {
                warn!(node = %c.node, "a cordon is recorded for a node the registry does not know; kept");
            }
            cordons.insert(c.node.clone(), c);
        }
        if let Some(p) = &paused {
            warn!(by = %p.by, "remediation is paused (corral remediation resume to run it)");
        }
        info!(
            cordoned = cordons.len(),
            enabled = cfg.enabled,
            dry_run = cfg.dry_run,
            "remediation loaded"
        );
        Remediation {
            instances: schedulers
                .iter()
                .filter(|(_, s)| s.drain)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            cfg,
            registry,
            store,
            act,
            inner: Mutex::new(Inner {
                cordons,
                watch: HashMap::new(),
                paused,
                last_drain: HashMap::new(),
                blocked: None,
                waiting: vec![],
                in_flight: BTreeSet::new(),
                // Every known series from the start, so the first failure is an
                // increase (a counter that appears at 1 is missed by `increase()`).
                counts: KNOWN_ACTIONS.iter().map(|k| (*k, 0)).collect(),
            }),
            wake: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock would be a bug; the data stays usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs the policy and the actions until `shutdown`.
    pub(crate) async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.wake.notified() => {}
                _ = shutdown.cancelled() => return,
            }
            self.step(Instant::now()).await;
        }
    }

    /// One evaluation and the actions it makes due (tests call it with their clock).
    pub(crate) async fn step(self: &Arc<Self>, now: Instant) {
        let nodes = self.registry.snapshot();
        let decisions = self.evaluate(&nodes, now);
        for d in decisions {
            self.apply(d).await;
        }
        self.dispatch(now);
    }

    // --- The policy ---------------------------------------------------------------

    fn delay(&self, class: ReasonClass) -> Delay {
        self.cfg.drain_after.of(class)
    }

    fn limit(&self, members: usize) -> usize {
        (members * self.cfg.max_unhealthy_percent as usize / 100).max(1)
    }

    fn evaluate(&self, nodes: &[NodeView], now: Instant) -> Vec<Decision> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let mut out = vec![];
        // Clocks.
        let known: BTreeSet<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        inner.watch.retain(|k, _| known.contains(k.as_str()));
        let mut due: Vec<(Instant, String, String)> = vec![];
        let mut waiting = vec![];
        for n in nodes {
            let w = inner.watch.entry(n.name.clone()).or_default();
            let reconnected = n.connected && !w.connected;
            w.connected = n.connected;
            if reconnected {
                // A Ray drain lives in the agent process that made it: a restarted
                // agent (or this coordinator restarted) starts its worker again, so a
                // cordoned node is drained in Ray again on every new connection (the
                // agent answers an existing drain as done).
                if let Some(c) = inner.cordons.get_mut(&n.name).filter(|c| !c.resuming) {
                    c.redrain_ray();
                }
            }
            let down = n.liveness == Liveness::Down && self.cfg.drain_when_down;
            if n.liveness == Liveness::Ready {
                let mut present: BTreeMap<ReasonClass, String> = BTreeMap::new();
                for r in n
                    .reasons
                    .iter()
                    .filter(|r| r.status == HealthStatus::Unhealthy)
                {
                    present
                        .entry(ReasonClass::of(&r.check))
                        .or_insert_with(|| health_reason(&r.message));
                }
                w.bad.retain(|c, _| present.contains_key(c));
                for (c, msg) in present {
                    w.bad.entry(c).or_insert_with(|| (now, String::new())).1 = msg;
                }
                if w.bad.is_empty() {
                    w.good_since.get_or_insert(now);
                    w.announced = false;
                } else {
                    w.good_since = None;
                }
            } else {
                w.bad.clear();
                w.good_since = None;
            }
            if inner.cordons.contains_key(&n.name) || !self.cfg.enabled {
                continue;
            }
            if down {
                due.push((
                    now,
                    n.name.clone(),
                    "node down (no beat from its agent)".into(),
                ));
                continue;
            }
            // The earliest due class decides, with its message.
            let next = w
                .bad
                .iter()
                .filter_map(|(c, (since, msg))| match self.delay(*c) {
                    Delay::After(d) => Some((*since + d, msg)),
                    Delay::Never => None,
                })
                .min_by_key(|(at, _)| *at);
            if let Some((at, msg)) = next {
                if at <= now {
                    due.push((at, n.name.clone(), msg.clone()));
                } else {
                    waiting.push(Waiting {
                        node: n.name.clone(),
                        reason: msg.clone(),
                        due_ms: Some(unix_ms() + (at - now).as_millis() as u64),
                        held_by: None,
                    });
                }
            }
        }
        due.sort();

        // Drains, within the limits.
        let total = nodes.len();
        let mut cordoned: BTreeSet<String> = inner.cordons.keys().cloned().collect();
        let mut blocked = None;
        for (_, node, reason) in due {
            let held = |why: String, waiting: &mut Vec<Waiting>| {
                waiting.push(Waiting {
                    node: node.clone(),
                    reason: reason.clone(),
                    due_ms: None,
                    held_by: Some(why),
                });
            };
            if let Some(p) = &inner.paused {
                held(format!("remediation paused by {}", p.by), &mut waiting);
                continue;
            }
            if inner.watch.get(&node).is_some_and(|w| w.announced) {
                continue;
            }
            let limit = self.limit(total);
            if cordoned.len() + 1 > limit {
                let why = format!(
                    "{} of {total} nodes are cordoned, the most remediation.max_unhealthy_percent ({}%) allows; draining no more (an outage of something shared is not {} broken nodes)",
                    cordoned.len(),
                    self.cfg.max_unhealthy_percent,
                    cordoned.len() + 1
                );
                held(why.clone(), &mut waiting);
                blocked.get_or_insert(why);
                continue;
            }
            let instances: Vec<&String> = self
                .instances
                .iter()
                .filter(|(_, s)| s.has_member(&node))
                .map(|(k, _)| k)
                .collect();
            let mut refused = None;
            for inst in &instances {
                let section = &self.instances[inst.as_str()];
                let members = nodes.iter().filter(|n| section.has_member(&n.name)).count();
                let drained = cordoned.iter().filter(|c| section.has_member(c)).count();
                if drained + 1 > self.limit(members) {
                    let why = format!(
                        "{drained} of the {members} nodes of scheduler {inst} are cordoned, the most remediation.max_unhealthy_percent ({}%) allows",
                        self.cfg.max_unhealthy_percent
                    );
                    blocked.get_or_insert(why.clone());
                    refused = Some(why);
                    break;
                }
            }
            let keys: Vec<String> = if instances.is_empty() {
                vec![CLUSTER.to_string()]
            } else {
                instances.iter().map(|s| s.to_string()).collect()
            };
            if refused.is_none() {
                for k in &keys {
                    if let Some(last) = inner.last_drain.get(k) {
                        let next = *last + self.cfg.drain_interval;
                        if next > now {
                            refused = Some(format!(
                                "at most one automatic drain per remediation.drain_interval ({}) in {}; next in {}",
                                humantime::format_duration(self.cfg.drain_interval),
                                if k.is_empty() { "the cluster".to_string() } else { format!("scheduler {k}") },
                                humantime::format_duration(Duration::from_secs((next - now).as_secs().max(1)))
                            ));
                            break;
                        }
                    }
                }
            }
            if let Some(why) = refused {
                held(why, &mut waiting);
                continue;
            }
            for k in keys {
                inner.last_drain.insert(k, now);
            }
            cordoned.insert(node.clone());
            let view = nodes.iter().find(|n| n.name == node);
            let drains = self.targets(&node, view);
            if self.cfg.dry_run {
                if let Some(w) = inner.watch.get_mut(&node) {
                    w.announced = true;
                }
                let targets = describe_targets(&drains);
                out.push(Decision::WouldDrain {
                    node,
                    reason,
                    targets,
                });
            } else {
                out.push(Decision::Cordon {
                    node,
                    reason,
                    drains,
                });
            }
        }
        if blocked != inner.blocked {
            inner.blocked = blocked.clone();
            out.push(Decision::Blocked(blocked));
        }
        inner.waiting = waiting;

        // Resumes.
        if inner.paused.is_none() && self.cfg.enabled {
            for (name, c) in &inner.cordons {
                if c.by != Actor::Policy || c.resuming {
                    continue;
                }
                let healthy = inner
                    .watch
                    .get(name)
                    .and_then(|w| w.good_since)
                    .is_some_and(|since| since + self.cfg.resume_after <= now);
                if healthy {
                    out.push(if self.cfg.dry_run {
                        Decision::WouldResume { node: name.clone() }
                    } else {
                        Decision::Resume { node: name.clone() }
                    });
                }
            }
        }
        out
    }

    /// Where `node` is to be drained: every draining instance it is a member of (by its
    /// name there), and Ray when it runs a Ray worker.
    fn targets(&self, node: &str, view: Option<&NodeView>) -> Vec<Drain> {
        let mut v: Vec<Drain> = self
            .instances
            .iter()
            .filter(|(_, s)| s.has_member(node))
            .map(|(inst, s)| {
                Drain::new(Target::Scheduler {
                    instance: inst.clone(),
                    node: s.native_name(node).to_string(),
                })
            })
            .collect();
        let worker = view
            .and_then(|v| v.report.as_ref())
            .and_then(|r| r.ray.as_ref())
            .is_some_and(|r| r.role == RayRole::Worker);
        if worker {
            v.push(Drain::new(Target::Ray));
        }
        v
    }

    async fn apply(self: &Arc<Self>, d: Decision) {
        match d {
            Decision::Cordon {
                node,
                reason,
                drains,
            } => {
                let c = Cordoned::new(&node, &reason, Actor::Policy, drains);
                let targets = describe_targets(&c.drains);
                if let Err(e) = self.record(&c).await {
                    warn!(node = %node, error = %e, "could not record a cordon; not draining");
                    self.lock().last_drain.clear();
                    return;
                }
                warn!(node = %node, reason = %reason, targets = %targets, "cordoning an unhealthy node");
                self.registry.remediation_event(
                    &node,
                    "cordon",
                    format!("{node} cordoned by policy: {reason}; draining in {targets}"),
                );
                self.count("cordon", "ok");
                self.lock().cordons.insert(node, c);
            }
            Decision::Resume { node } => {
                let snapshot = {
                    let mut inner = self.lock();
                    let Some(c) = inner.cordons.get_mut(&node) else {
                        return;
                    };
                    c.resuming = true;
                    c.clone()
                };
                if let Err(e) = self.record(&snapshot).await {
                    warn!(node = %node, error = %e, "could not record a resume; retrying next tick");
                    if let Some(c) = self.lock().cordons.get_mut(&node) {
                        c.resuming = false;
                    }
                    return;
                }
                info!(node = %node, "resuming a node that has been healthy for remediation.resume_after");
                self.registry.remediation_event(
                    &node,
                    "resuming",
                    format!(
                        "{node} healthy for {}: resuming what corral drained ({})",
                        humantime::format_duration(self.cfg.resume_after),
                        describe_targets(&snapshot.drains)
                    ),
                );
            }
            Decision::WouldDrain {
                node,
                reason,
                targets,
            } => {
                info!(node = %node, reason = %reason, targets = %targets, "dry run: would cordon and drain");
                self.registry.remediation_event(
                    &node,
                    "would-drain",
                    format!("dry run: {node} would be cordoned and drained in {targets}: {reason}"),
                );
                self.count("cordon", "dry-run");
            }
            Decision::WouldResume { node } => {
                self.registry.remediation_event(
                    &node,
                    "would-resume",
                    format!("dry run: {node} would be resumed"),
                );
                self.count("resume", "dry-run");
            }
            Decision::Blocked(Some(why)) => {
                warn!(reason = %why, "remediation blocked by a limit");
                self.registry.remediation_event("", "blocked", why);
                self.count("cordon", "blocked");
            }
            Decision::Blocked(None) => {
                info!("remediation no longer blocked");
                self.registry.remediation_event(
                    "",
                    "unblocked",
                    "remediation is within its limits again".into(),
                );
            }
        }
    }

    /// Writes `c` to the database (committed) and shows it.
    async fn record(&self, c: &Cordoned) -> Result<(), String> {
        self.store
            .put_cordon(&c.node, Some(c.row()))
            .await
            .map_err(|e| format!("{e:#}"))?;
        self.registry.set_cordon(&c.node, Some(c.view()));
        Ok(())
    }

    fn count(&self, action: &'static str, outcome: &'static str) {
        *self.lock().counts.entry((action, outcome)).or_default() += 1;
    }

    // --- Actions ------------------------------------------------------------------

    /// Starts a task for every cordon with work due, one per node at a time.
    fn dispatch(self: &Arc<Self>, now: Instant) {
        let mut inner = self.lock();
        let paused = inner.paused.is_some();
        let due: Vec<String> = inner
            .cordons
            .values()
            .filter(|c| !inner.in_flight.contains(&c.node))
            .filter(|c| !(paused && c.by == Actor::Policy))
            .filter(|c| c.work_due(now))
            .map(|c| c.node.clone())
            .collect();
        for node in due {
            inner.in_flight.insert(node.clone());
            let this = self.clone();
            tokio::spawn(async move {
                this.work(&node).await;
                this.lock().in_flight.remove(&node);
            });
        }
    }

    /// Does what is due for `node`'s cordon: each due drain (or lift) in turn, the
    /// cordon written after each; a cordon whose lifts are all done is removed.
    async fn work(self: &Arc<Self>, node: &str) {
        let next = |this: &Self| {
            let inner = this.lock();
            inner.cordons.get(node).and_then(|c| {
                c.next_due(Instant::now())
                    .map(|i| (i, c.drains[i].clone(), c.resuming, c.reason.clone()))
            })
        };
        while let Some((index, drain, resuming, reason)) = next(self) {
            let outcome = if resuming {
                self.lift(node, &drain).await
            } else {
                self.drain(node, &drain, &reason).await
            };
            let snapshot = {
                let mut inner = self.lock();
                let Some(c) = inner.cordons.get_mut(node) else {
                    return;
                };
                let d = &mut c.drains[index];
                let (action, word) = d.settle(outcome, &self.cfg, resuming);
                let msg = d.event_message(node, &c.by, resuming);
                let snapshot = c.clone();
                inner
                    .counts
                    .entry((action, word))
                    .and_modify(|n| *n += 1)
                    .or_insert(1);
                drop(inner);
                self.registry.remediation_event(
                    node,
                    &format!("{action}{}", if word == "failed" { "-failed" } else { "" }),
                    msg,
                );
                snapshot
            };
            if let Err(e) = self.record(&snapshot).await {
                warn!(node, error = %e, "could not record a drain's outcome; it is kept in memory and written with the next change");
            }
        }
        // All lifted: the cordon goes.
        let done = self
            .lock()
            .cordons
            .get(node)
            .is_some_and(|c| c.resuming && c.lifted());
        if done {
            match self.store.put_cordon(node, None).await {
                Ok(()) => {
                    let c = self.lock().cordons.remove(node);
                    self.registry.set_cordon(node, None);
                    if let Some(w) = self.lock().watch.get_mut(node) {
                        // A fresh drain_after if it fails again at once.
                        w.bad.clear();
                    }
                    self.count("uncordon", "ok");
                    let by = c.map(|c| c.by.to_string()).unwrap_or_default();
                    info!(node, "node uncordoned");
                    self.registry.remediation_event(
                        node,
                        "uncordon",
                        format!("{node} uncordoned (cordoned by {by}); corral's drains are lifted"),
                    );
                }
                Err(e) => warn!(
                    node,
                    error = format!("{e:#}"),
                    "could not remove a cordon from the database; retrying"
                ),
            }
        }
    }

    /// Drains `node` at one target. `Ok(state)` is where the drain ended up.
    async fn drain(
        &self,
        node: &str,
        d: &Drain,
        reason: &str,
    ) -> Result<(DrainState, Option<String>), String> {
        settled(self.drain_at(node, d, reason).await)
    }

    async fn drain_at(
        &self,
        node: &str,
        d: &Drain,
        reason: &str,
    ) -> Result<(DrainState, Option<String>), Failure> {
        let text = format!("{PREFIX}{reason}");
        match &d.target {
            Target::Scheduler {
                instance,
                node: native,
            } => {
                match self.node_state(instance, native).await? {
                    None => Ok((DrainState::NotMember, Some(format!("scheduler {instance} has no node {native}")))),
                    Some(s) if s.drained => match s.reason {
                        Some(r) if !r.starts_with(PREFIX.trim_end()) => Ok((
                            DrainState::Foreign,
                            Some(format!("already drained by someone else ({r:?}): left alone, and not resumed by corral")),
                        )),
                        // Ours (an earlier try that was not recorded), or a scheduler that
                        // keeps no reasons: drained either way.
                        _ => Ok((DrainState::Drained, None)),
                    },
                    Some(_) => {
                        self.act
                            .scheduler(instance, PluginCall::DrainNode { node: native.clone(), reason: text })
                            .await
                            .map(|_| (DrainState::Drained, None))
                    }
                }
            }
            Target::Ray => self
                .act
                .agent(
                    node,
                    Command::RayDrain {
                        reason: text,
                        deadline_ms: self.cfg.ray_drain_deadline.as_millis() as u64,
                    },
                )
                .await
                .map(|detail| (DrainState::Drained, Some(detail)))
                .map_err(Failure::Retry),
        }
    }

    /// Lifts corral's drain of `node` at one target, unless someone else's replaced it.
    async fn lift(&self, node: &str, d: &Drain) -> Result<(DrainState, Option<String>), String> {
        settled(self.lift_at(node, d).await)
    }

    async fn lift_at(
        &self,
        node: &str,
        d: &Drain,
    ) -> Result<(DrainState, Option<String>), Failure> {
        match &d.target {
            Target::Scheduler {
                instance,
                node: native,
            } => match self.node_state(instance, native).await? {
                None => Ok((
                    DrainState::Resumed,
                    Some(format!("scheduler {instance} no longer has node {native}")),
                )),
                Some(s) if !s.drained => Ok((
                    DrainState::Resumed,
                    Some("already resumed (by someone else)".into()),
                )),
                Some(s) => match s.reason {
                    Some(r) if !r.starts_with(PREFIX.trim_end()) => Ok((
                        DrainState::Foreign,
                        Some(format!(
                            "the drain reason is now {r:?}, set by someone else: left in place"
                        )),
                    )),
                    _ => self
                        .act
                        .scheduler(
                            instance,
                            PluginCall::ResumeNode {
                                node: native.clone(),
                            },
                        )
                        .await
                        .map(|_| (DrainState::Resumed, None)),
                },
            },
            Target::Ray => self
                .act
                .agent(node, Command::RayResume)
                .await
                .map(|detail| (DrainState::Resumed, Some(detail)))
                .map_err(Failure::Retry),
        }
    }

    async fn node_state(
        &self,
        instance: &str,
        native: &str,
    ) -> Result<Option<corral_proto::job::NodeState>, Failure> {
        match self
            .act
            .scheduler(
                instance,
                PluginCall::NodeState {
                    node: native.to_string(),
                },
            )
            .await?
        {
            PluginReply::NodeState(s) => Ok(s),
            other => Err(Failure::Retry(format!(
                "scheduler {instance} answered node-state with {other:?}"
            ))),
        }
    }

    // --- What people ask for ---------------------------------------------------------

    /// `corral drain NODE --reason TEXT` by `user`: cordons and drains now, whatever the
    /// limits and a pause. A node the policy cordoned becomes `user`'s (never resumed
    /// by the policy).
    pub async fn drain_by(
        &self,
        node: &str,
        reason: &str,
        user: &str,
    ) -> Result<Cordon, RemediationError> {
        let reason = one_line(reason)?;
        let Some(view) = self.registry.get(node) else {
            return Err(RemediationError::UnknownNode(node.into()));
        };
        let existing = self.lock().cordons.get(node).cloned();
        let c = match existing {
            Some(mut c) => {
                c.by = Actor::User(user.into());
                c.resuming = false;
                c.reason = format!("{reason} ({user})");
                c
            }
            None => Cordoned::new(
                node,
                &format!("{reason} ({user})"),
                Actor::User(user.into()),
                self.targets(node, Some(&view)),
            ),
        };
        self.record(&c).await.map_err(RemediationError::Store)?;
        let view = c.view();
        warn!(node, user, reason = %reason, "node drained by hand");
        self.registry.remediation_event(
            node,
            "cordon",
            format!(
                "{node} cordoned by {user}: {reason}; draining in {}",
                describe_targets(&c.drains)
            ),
        );
        self.count("cordon", "ok");
        self.lock().cordons.insert(node.into(), c);
        self.wake.notify_one();
        Ok(view)
    }

    /// `corral resume NODE` by `user`: lifts corral's drains of the node now.
    pub async fn resume_by(&self, node: &str, user: &str) -> Result<Cordon, RemediationError> {
        let Some(mut c) = self.lock().cordons.get(node).cloned() else {
            return Err(if self.registry.get(node).is_some() {
                RemediationError::NotCordoned(node.into())
            } else {
                RemediationError::UnknownNode(node.into())
            });
        };
        c.resuming = true;
        c.by = Actor::User(user.into());
        self.record(&c).await.map_err(RemediationError::Store)?;
        info!(node, user, "node resumed by hand");
        self.registry.remediation_event(
            node,
            "resuming",
            format!(
                "{node} resumed by {user}: lifting what corral drained ({})",
                describe_targets(&c.drains)
            ),
        );
        let view = c.view();
        let mut inner = self.lock();
        inner.cordons.insert(node.into(), c);
        if let Some(w) = inner.watch.get_mut(node) {
            w.bad.clear();
        }
        drop(inner);
        self.wake.notify_one();
        Ok(view)
    }

    /// `corral remediation pause` (`Some(user)`) or `resume` (`None`).
    pub async fn set_paused(
        &self,
        by: Option<&str>,
        user: &str,
    ) -> Result<RemediationView, RemediationError> {
        let row = by.map(|u| PauseRow {
            by: u.into(),
            since_ms: unix_ms(),
        });
        self.store
            .put_pause(row.clone())
            .await
            .map_err(|e| RemediationError::Store(format!("{e:#}")))?;
        let was = std::mem::replace(&mut self.lock().paused, row.clone());
        if was.is_some() != row.is_some() {
            let (action, what) = if row.is_some() {
                ("paused", "paused")
            } else {
                ("unpaused", "running again")
            };
            warn!(user, "remediation {what}");
            self.registry
                .remediation_event("", action, format!("remediation {what} by {user}"));
        }
        self.wake.notify_one();
        Ok(self.view())
    }

    /// `GET /api/v1/remediation`.
    pub fn view(&self) -> RemediationView {
        let nodes = self.registry.snapshot().len();
        let inner = self.lock();
        RemediationView {
            enabled: self.cfg.enabled,
            dry_run: self.cfg.dry_run,
            paused: inner.paused.as_ref().map(|p| Paused {
                by: p.by.clone(),
                since_ms: p.since_ms,
            }),
            blocked: inner.blocked.clone(),
            cordoned: inner.cordons.len(),
            limit: self.limit(nodes),
            nodes,
            waiting: inner.waiting.clone(),
            failing: inner
                .cordons
                .values()
                .flat_map(|c| &c.drains)
                .filter(|d| d.attempts > 0 && d.next_try.is_some())
                .count(),
        }
    }

    pub(crate) fn metrics(&self) -> RemediationMetrics {
        let inner = self.lock();
        RemediationMetrics {
            paused: inner.paused.is_some(),
            blocked: inner.blocked.is_some(),
            actions: inner.counts.clone(),
        }
    }
}

/// A reason as corral writes it into a scheduler: one line, at most [`MAX_REASON`].
fn one_line(reason: &str) -> Result<String, RemediationError> {
    let r = reason.trim();
    if r.is_empty() {
        return Err(RemediationError::BadReason(
            "a drain needs a reason (--reason TEXT): the scheduler shows it to everyone who looks at the node".into(),
        ));
    }
    if r.chars().any(char::is_control) {
        return Err(RemediationError::BadReason(
            "the reason must be one line of text, without control characters".into(),
        ));
    }
    if r.chars().count() > MAX_REASON {
        return Err(RemediationError::BadReason(format!(
            "the reason is longer than {MAX_REASON} characters; shorten it"
        )));
    }
    Ok(r.to_string())
}

/// The reason a health message becomes: one line, cut to [`MAX_REASON`].
pub(crate) fn health_reason(message: &str) -> String {
    let flat: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    match flat.char_indices().nth(MAX_REASON) {
        Some((i, _)) => format!("{}…", &flat[..i]),
        None => flat,
    }
}

fn describe_targets(drains: &[Drain]) -> String {
    let mut v: Vec<String> = drains.iter().map(|d| d.target.to_string()).collect();
    v.insert(0, "corral".into());
    v.join(", ")
}

/// The coordinator's actuator: scheduler calls through the instance's authorized
/// submit hosts (the first that answers), Ray commands to the node's own agent.
pub(crate) struct Live {
    pub jobs: Arc<crate::jobs::Jobs>,
    pub registry: Arc<Registry>,
    pub commands: Arc<crate::commands::Commands>,
    pub timeout: Duration,
}

impl Actuator for Live {
    fn scheduler(
        &self,
        instance: &str,
        call: PluginCall,
    ) -> BoxFuture<'static, Result<PluginReply, Failure>> {
        let hosts = self.registry.plugin_hosts(instance);
        let jobs = self.jobs.clone();
        let instance = instance.to_string();
        Box::pin(async move {
            if hosts.is_empty() {
                return Err(Failure::Retry(format!(
                    "no authorized host of scheduler {instance} is connected (see [schedulers.{instance}] nodes and `corral plugins`)"
                )));
            }
            let mut errors = vec![];
            for host in &hosts {
                match jobs.call(host, &instance, call.clone(), None).await {
                    Ok(reply) => return Ok(reply),
                    Err(crate::jobs::CallError::Plugin(e)) => {
                        let message = format!("scheduler {instance} through {host}: {e}");
                        return Err(match e {
                            PluginError::Unsupported(_) | PluginError::Invalid(_) => {
                                Failure::Final(message)
                            }
                            _ => Failure::Retry(message),
                        });
                    }
                    Err(crate::jobs::CallError::Command(e)) => errors.push(format!("{host}: {e}")),
                }
            }
            Err(Failure::Retry(format!(
                "no host of scheduler {instance} answered: {}",
                errors.join("; ")
            )))
        })
    }

    fn agent(&self, node: &str, command: Command) -> BoxFuture<'static, Result<String, String>> {
        let commands = self.commands.clone();
        let node = node.to_string();
        let timeout = self.timeout;
        Box::pin(async move {
            match commands.send(&node, command, timeout).await {
                Ok(corral_proto::wire::CommandOutput::Ray { detail }) => Ok(detail),
                Ok(other) => Err(format!("{node} answered {other:?}")),
                Err(e) => Err(e.to_string()),
            }
        })
    }
}
