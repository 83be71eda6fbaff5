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
//!   stays in place. A scheduler that keeps no reasons (Grid Engine) makes a drain found
//!   in place someone else's unless corral already tried it. Several corral nodes mapped
//!   onto one scheduler node: the drain is lifted by the last of them to resume.
//!   (Between the question and the drain a person may drain the node too; the scheduler
//!   then keeps corral's reason, and the person's intent is lost. The window is one
//!   plugin call.)
//! - A cordon is written to the database, and committed, before any drain is made, and
//!   after every change of one of its drains: a crash never forgets a drain. Every change
//!   to a cordon is made in place under the lock and its write queued under the same
//!   lock, so writes commit in the order of the changes; an action's outcome is applied
//!   only if its drain is still in the state the action started from (a person's drain
//!   or resume in between wins, and the next pass asks the scheduler again). After a
//!   restart the pending ones are made again (a scheduler drain found already set with
//!   corral's prefix counts as done), and the nodes are watched afresh: a node's
//!   unhealthy and healthy clocks start at the coordinator's start.
//! - Limits apply to the policy, never to a person: at most `max_unhealthy_percent` of
//!   the nodes (at least one) cordoned, cluster-wide and among each scheduler instance's
//!   members, counting every cordon; and at most one automatic drain per
//!   `drain_interval` per instance (nodes in no instance share one "cluster" interval).
//!   A node held back by a percent limit makes the remediation `blocked`: an event when
//!   it starts and one when it ends (per limit, not per count), a metric, and the reason
//!   in `corral remediation status`.
//! - Paused (`corral remediation pause`, kept across restarts): the policy cordons and
//!   resumes nothing, and its resumes under way wait; the drains of nodes already
//!   cordoned go on (keeping a node out is no new action). What a person asks for
//!   (`corral drain`, `corral resume`) still runs.
//! - `dry_run`: every decision is made, limited (the nodes it would have cordoned count
//!   against the limits), logged and recorded once as an event (`would-drain`,
//!   `would-resume`), and nothing is changed: no cordon is shown, no plugin or agent is
//!   asked for the policy (a person's `corral drain` still acts). Policy cordons made
//!   before `dry_run` was turned on are left as they are, neither worked nor resumed,
//!   until a person resumes them or dry run is turned off.
//! - A node whose agent reconnects holding its Ray worker drained while corral holds no
//!   cordon for it (a lift that counted a cut-off agent's drain as ended) is resumed.
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
//! - Scheduler calls go through the instance's authorized, connected submit hosts in
//!   their configured order, the next one when a host cannot be reached or its
//!   scheduler client fails (only "unsupported" and "invalid" end the try at once), not
//!   through the node: a node that is broken, or gone, can still be drained.
//! - The policy evaluates every [`TICK`] over a registry snapshot of the nodes' health
//!   (O(nodes); no reports, so it copies little); actions
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
use crate::registry::{NodeHealth, Registry};
use crate::store::{PauseRow, Store};
use corral_proto::api::{Cordon, Paused, RemediationView, Waiting};
use corral_proto::job::{PluginCall, PluginError, PluginReply};
use corral_proto::model::{unix_ms, Liveness, RayRole, RayState};
use corral_proto::wire::Command;

pub(crate) use state::{Actor, Cordoned, Drain, DrainState, Outcome, Target};

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
    /// Whether `node`'s agent is connected now.
    fn connected(&self, node: &str) -> bool;
}

/// Why a scheduler call failed, and whether trying again can help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The plugin cannot do it (no drain support) or calls the request invalid (a node
    /// name it refuses): not retried; the drain is `skipped`, with the message.
    Final(String),
    /// The request may have reached the scheduler (it failed there, or timed out):
    /// retried, and until it succeeds the drain may be in place.
    Retry(String),
    /// Nothing that drains was sent (no host of the instance is connected, or the
    /// read before the drain failed): retried, but a drain tried only this way is known
    /// not to be in place.
    Unreached(String),
}

/// A drain's or lift's outcome: where it ended up, or (`Err`) why to try again and
/// whether the try may have reached the scheduler.
fn settled(r: Result<(DrainState, Option<String>), Failure>) -> Outcome {
    match r {
        Ok(v) => Ok(v),
        Err(Failure::Final(m)) => Ok((DrainState::Skipped, Some(m))),
        Err(Failure::Retry(m)) => Err((m, true)),
        Err(Failure::Unreached(m)) => Err((m, false)),
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
    ("resume", "skipped"),
    ("resume", "shared"),
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
    /// The connection seen at the last evaluation (a new entry: none yet).
    conn: Option<u64>,
}

struct Inner {
    cordons: BTreeMap<String, Cordoned>,
    watch: HashMap<String, Watch>,
    paused: Option<PauseRow>,
    /// Last automatic drain per scheduler instance (or [`CLUSTER`]).
    last_drain: HashMap<String, Instant>,
    /// The limit holding drains back (its key: [`CLUSTER`] or an instance) and why.
    blocked: Option<(String, String)>,
    /// Nodes a dry run would have cordoned (counted against the limits like cordons).
    dry: BTreeSet<String>,
    waiting: Vec<Waiting>,
    in_flight: BTreeSet<String>,
    counts: ActionCounts,
}

/// Clears a node's in-flight mark when its work ends, however it ends.
struct InFlight(Arc<Remediation>, String);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.lock().in_flight.remove(&self.1);
    }
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
        /// The rate-limit entries this drain took, with what they held before (put
        /// back when the cordon cannot be recorded).
        rate_keys: Vec<(String, Option<Instant>)>,
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
    /// Resume the Ray worker of a node corral holds no cordon for.
    ResumeRay {
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
                dry: BTreeSet::new(),
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
        let nodes = self.registry.health_snapshot();
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

    fn evaluate(&self, nodes: &[NodeHealth], now: Instant) -> Vec<Decision> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let mut out = vec![];
        // Clocks.
        let known: BTreeSet<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        inner.watch.retain(|k, _| known.contains(k.as_str()));
        let mut due: Vec<(Instant, String, String)> = vec![];
        let mut waiting = vec![];
        for n in nodes {
            let conn = n.conn;
            let seen = inner.watch.get(&n.name).and_then(|w| w.conn);
            let reconnected = conn.is_some() && conn != seen;
            if reconnected {
                // A Ray drain lives in the agent process that made it: a restarted
                // agent (or this coordinator restarted) starts its worker again, so a
                // cordoned node is drained in Ray again on every new connection (the
                // agent answers an existing drain as done).
                if let Some(c) = inner.cordons.get_mut(&n.name).filter(|c| !c.resuming) {
                    c.redrain_ray();
                    // Queued now; the write needs no waiting for here.
                    drop(self.queue(inner, &n.name));
                } else if !inner.cordons.contains_key(&n.name) && ray_held(n) && !self.cfg.dry_run {
                    // No cordon, yet the agent holds its worker drained: a resume that
                    // counted a gone agent's drain as ended (it was only cut off), or
                    // one that raced a coordinator restart. The agent answers a resume
                    // with nothing drained as done.
                    out.push(Decision::ResumeRay {
                        node: n.name.clone(),
                    });
                }
            }
            let w = inner.watch.entry(n.name.clone()).or_default();
            w.conn = conn;
            let down = n.liveness == Liveness::Down && self.cfg.drain_when_down;
            if n.liveness == Liveness::Ready {
                let mut present: BTreeMap<ReasonClass, String> = BTreeMap::new();
                for r in &n.unhealthy {
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
                } else {
                    w.good_since = None;
                }
            } else {
                w.bad.clear();
                w.good_since = None;
            }
            if inner.cordons.contains_key(&n.name)
                || inner.dry.contains(&n.name)
                || !self.cfg.enabled
            {
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
        // A dry run counts the cordons it would have made, so its limits are the real ones.
        let mut cordoned: BTreeSet<String> = inner
            .cordons
            .keys()
            .chain(inner.dry.iter())
            .cloned()
            .collect();
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
            let limit = self.limit(total);
            if cordoned.len() + 1 > limit {
                let why = format!(
                    "{} of {total} nodes are cordoned, the most remediation.max_unhealthy_percent ({}%) allows; draining no more (an outage of something shared is not {} broken nodes)",
                    cordoned.len(),
                    self.cfg.max_unhealthy_percent,
                    cordoned.len() + 1
                );
                held(why.clone(), &mut waiting);
                blocked.get_or_insert((CLUSTER.to_string(), why));
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
                    blocked.get_or_insert((inst.to_string(), why.clone()));
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
            let rate_keys: Vec<(String, Option<Instant>)> = keys
                .into_iter()
                .map(|k| {
                    let previous = inner.last_drain.insert(k.clone(), now);
                    (k, previous)
                })
                .collect();
            cordoned.insert(node.clone());
            let view = nodes.iter().find(|n| n.name == node);
            let drains = self.targets(&node, view);
            if self.cfg.dry_run {
                inner.dry.insert(node.clone());
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
                    rate_keys,
                });
            }
        }
        // Which limit holds drains back, by its key (the message carries counts that
        // change): one event when it starts, one when it ends. Paused, nothing is
        // evaluated against the limits, so the state stands.
        if inner.paused.is_none() {
            let key = |b: &Option<(String, String)>| b.as_ref().map(|(k, _)| k.clone());
            if key(&blocked) != key(&inner.blocked) {
                out.push(Decision::Blocked(
                    blocked.as_ref().map(|(_, why)| why.clone()),
                ));
            }
            inner.blocked = blocked;
        }
        inner.waiting = waiting;

        // Resumes.
        let healthy_for = |inner: &Inner, name: &str| {
            inner
                .watch
                .get(name)
                .and_then(|w| w.good_since)
                .is_some_and(|since| since + self.cfg.resume_after <= now)
        };
        if inner.paused.is_none() && self.cfg.enabled {
            if self.cfg.dry_run {
                let recovered: Vec<String> = inner
                    .dry
                    .iter()
                    .filter(|n| healthy_for(inner, n))
                    .cloned()
                    .collect();
                for name in recovered {
                    inner.dry.remove(&name);
                    out.push(Decision::WouldResume { node: name });
                }
            } else {
                for (name, c) in &inner.cordons {
                    if c.by == Actor::Policy
                        && !c.resuming
                        && c.committed
                        && healthy_for(inner, name)
                    {
                        out.push(Decision::Resume { node: name.clone() });
                    }
                }
            }
        }
        inner.dry.retain(|n| known.contains(n.as_str()));
        out
    }

    /// Where `node` is to be drained: every draining instance it is a member of (by its
    /// name there), and Ray when it runs a Ray worker.
    fn targets(&self, node: &str, view: Option<&NodeHealth>) -> Vec<Drain> {
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
            .and_then(|v| v.ray)
            .is_some_and(|(role, _)| role == RayRole::Worker);
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
                rate_keys,
            } => {
                let c = Cordoned::new(&node, &reason, Actor::Policy, drains);
                let targets = describe_targets(&c.drains);
                // A person may have cordoned it since the evaluation: theirs stands.
                let Some(ack) = self.insert_new(c) else {
                    let mut inner = self.lock();
                    for (key, previous) in rate_keys {
                        match previous {
                            Some(t) => inner.last_drain.insert(key, t),
                            None => inner.last_drain.remove(&key),
                        };
                    }
                    return;
                };
                if let Err(e) = ack.await {
                    warn!(node = %node, error = format!("{e:#}"), "could not record a cordon; not draining, and trying again");
                    let mut inner = self.lock();
                    if inner.cordons.get(&node).is_some_and(|c| !c.committed) {
                        inner.cordons.remove(&node);
                        self.registry.set_cordon(&node, None);
                    }
                    for (key, previous) in rate_keys {
                        match previous {
                            Some(t) => inner.last_drain.insert(key, t),
                            None => inner.last_drain.remove(&key),
                        };
                    }
                    return;
                }
                self.committed(&node);
                warn!(node = %node, reason = %reason, targets = %targets, "cordoning an unhealthy node");
                self.registry.remediation_event(
                    &node,
                    "cordon",
                    format!("{node} cordoned by policy: {reason}; draining in {targets}"),
                );
                self.count("cordon", "ok");
            }
            Decision::Resume { node } => {
                let (ack, targets) = {
                    let mut inner = self.lock();
                    // A person may have taken the cordon over since the evaluation.
                    let Some(c) = inner
                        .cordons
                        .get_mut(&node)
                        .filter(|c| c.by == Actor::Policy && !c.resuming && c.committed)
                    else {
                        return;
                    };
                    c.resuming = true;
                    c.epoch += 1;
                    let targets = describe_targets(&c.drains);
                    (self.queue(&inner, &node), targets)
                };
                if let Err(e) = ack.await {
                    warn!(node = %node, error = format!("{e:#}"), "could not record a resume; lifting anyway (after a restart the policy decides again)");
                }
                info!(node = %node, "resuming a node that has been healthy for remediation.resume_after");
                self.registry.remediation_event(
                    &node,
                    "resuming",
                    format!(
                        "{node} healthy for {}: resuming what corral drained ({targets})",
                        humantime::format_duration(self.cfg.resume_after),
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
            Decision::ResumeRay { node } => {
                let outcome = self.act.agent(&node, Command::RayResume).await;
                let (word, msg) = match outcome {
                    Ok(detail) => ("ok", format!("{node}'s Ray worker was still drained with no cordon left: resumed ({detail})")),
                    Err(e) => ("failed", format!("{node}'s Ray worker is still drained with no cordon left, and resuming it failed: {e}; it is tried again when its agent reconnects")),
                };
                self.count("resume", word);
                self.registry.remediation_event(
                    &node,
                    if word == "ok" {
                        "resume"
                    } else {
                        "resume-failed"
                    },
                    msg,
                );
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

    /// Shows `node`'s cordon as it is now and queues its write (`None`: its removal),
    /// under the caller's lock: writes commit in the order of the changes they carry.
    fn queue(
        &self,
        inner: &Inner,
        node: &str,
    ) -> impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static {
        let c = inner.cordons.get(node);
        self.registry.set_cordon(node, c.map(Cordoned::view));
        self.store.queue_cordon(node, c.map(Cordoned::row))
    }

    /// Inserts a new cordon and queues its first write; `None` when the node is
    /// cordoned already.
    fn insert_new(
        &self,
        c: Cordoned,
    ) -> Option<impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static> {
        let mut inner = self.lock();
        if inner.cordons.contains_key(&c.node) {
            return None;
        }
        let node = c.node.clone();
        inner.cordons.insert(node.clone(), c);
        Some(self.queue(&inner, &node))
    }

    /// The first write of `node`'s cordon is on disk: its drains may be made.
    fn committed(&self, node: &str) {
        if let Some(c) = self.lock().cordons.get_mut(node) {
            c.committed = true;
        }
        self.wake.notify_one();
    }

    fn count(&self, action: &'static str, outcome: &'static str) {
        *self.lock().counts.entry((action, outcome)).or_default() += 1;
    }

    // --- Actions ------------------------------------------------------------------

    /// Starts a task for every cordon with work due, one per node at a time. Paused,
    /// the policy's lifts wait (its drains of cordoned nodes go on: keeping a node out
    /// is no new action); in a dry run the policy's cordons are left as they are.
    fn dispatch(self: &Arc<Self>, now: Instant) {
        let mut inner = self.lock();
        let paused = inner.paused.is_some();
        let dry = self.cfg.dry_run;
        let due: Vec<String> = inner
            .cordons
            .values()
            .filter(|c| !inner.in_flight.contains(&c.node))
            .filter(|c| c.by != Actor::Policy || !(dry || (paused && c.resuming)))
            .filter(|c| c.work_due(now))
            .map(|c| c.node.clone())
            .collect();
        for node in due {
            inner.in_flight.insert(node.clone());
            let this = self.clone();
            tokio::spawn(async move {
                // Cleared however the work ends (a panic included).
                let _guard = InFlight(this.clone(), node.clone());
                this.work(&node).await;
            });
        }
    }

    /// Does what is due for `node`'s cordon: each due drain (or lift) in turn, the
    /// cordon written after each; a cordon whose lifts are all done is removed.
    ///
    /// An outcome is applied only if its drain is still in the state it was in when
    /// the try began (a person's drain or resume may have changed it meanwhile: then
    /// the next pass works from the new state, and asks the scheduler first).
    async fn work(self: &Arc<Self>, node: &str) {
        let paused_policy = |inner: &Inner, c: &Cordoned| {
            c.by == Actor::Policy && c.resuming && inner.paused.is_some()
        };
        loop {
            // The next due drain, taken under the lock. A lift of a scheduler node that
            // another cordon may still need (several corral nodes mapped onto it) is
            // settled right here, in the same critical section as the check, so two
            // nodes resuming at once cannot both leave it to the other.
            let picked = {
                let mut inner = self.lock();
                let inner = &mut *inner;
                let Some(c) = inner.cordons.get(node) else {
                    return;
                };
                if paused_policy(inner, c) {
                    break;
                }
                let Some(i) = c.next_due(Instant::now()) else {
                    break;
                };
                let (drain, resuming, reason, epoch) =
                    (c.drains[i].clone(), c.resuming, c.reason.clone(), c.epoch);
                let sibling = (resuming && matches!(drain.target, Target::Scheduler { .. }))
                    .then(|| also_drained(inner, node, &drain.target))
                    .flatten();
                match sibling {
                    Some(other) => {
                        let c = inner.cordons.get_mut(node).expect("looked up above");
                        let d = &mut c.drains[i];
                        d.state = DrainState::Resumed;
                        d.made = false;
                        d.next_try = None;
                        d.message = Some(format!(
                            "left drained there: {other} is cordoned too and maps onto the same node; it lifts the drain when it resumes"
                        ));
                        let msg = d.event_message(node, &c.by, true);
                        *inner.counts.entry(("resume", "shared")).or_default() += 1;
                        let ack = self.queue(inner, node);
                        Err((ack, msg))
                    }
                    None => Ok((drain, resuming, reason, epoch)),
                }
            };
            let (drain, resuming, reason, epoch) = match picked {
                Ok(p) => p,
                Err((ack, msg)) => {
                    self.registry.remediation_event(node, "resume", msg);
                    let _ = ack.await;
                    continue;
                }
            };
            let outcome = if resuming {
                self.lift(node, &drain).await
            } else {
                self.drain(node, &drain, &reason).await
            };
            let (ack, event) = {
                let mut inner = self.lock();
                let inner = &mut *inner;
                let Some(c) = inner.cordons.get_mut(node) else {
                    return;
                };
                let changed = c.epoch != epoch;
                let (now_resuming, now_reason) = (c.resuming, c.reason.clone());
                let by = c.by.clone();
                let Some(d) = c.drains.iter_mut().find(|d| d.target == drain.target) else {
                    continue;
                };
                // What happened is applied whatever changed meanwhile: it did happen.
                let (action, word) = d.settle(outcome, &self.cfg, resuming);
                let msg = d.event_message(node, &by, resuming);
                if changed && !now_resuming && d.next_try.is_none() {
                    // A person (or a reconnect) changed the cordon while this ran: a
                    // lift that went through, a drain with the old reason or to the
                    // old connection, is made again as the cordon now wants it.
                    if d.state == DrainState::Resumed
                        || (d.state == DrainState::Drained
                            && (now_reason != reason || d.target == Target::Ray))
                    {
                        d.state = DrainState::Pending;
                    }
                }
                *inner.counts.entry((action, word)).or_default() += 1;
                let ack = self.queue(inner, node);
                let to = format!("{action}{}", if word == "failed" { "-failed" } else { "" });
                (ack, (to, msg))
            };
            self.registry.remediation_event(node, &event.0, event.1);
            if let Err(e) = ack.await {
                warn!(node, error = format!("{e:#}"), "could not record a drain's outcome; it is kept in memory and written with the next change");
            }
        }
        // All lifted: the cordon goes, in memory and (queued in order) on disk.
        let removed = {
            let mut inner = self.lock();
            let done = inner
                .cordons
                .get(node)
                .is_some_and(|c| c.resuming && c.committed && c.lifted());
            if done {
                let c = inner.cordons.remove(node);
                if let Some(w) = inner.watch.get_mut(node) {
                    // A fresh drain_after if it fails again at once.
                    w.bad.clear();
                }
                *inner.counts.entry(("uncordon", "ok")).or_default() += 1;
                Some((c, self.queue(&inner, node)))
            } else {
                None
            }
        };
        if let Some((c, ack)) = removed {
            let by = c.map(|c| c.by.to_string()).unwrap_or_default();
            info!(node, "node uncordoned");
            self.registry.remediation_event(
                node,
                "uncordon",
                format!("{node} uncordoned (cordoned by {by}); corral's drains are lifted"),
            );
            if let Err(e) = ack.await {
                warn!(node, error = format!("{e:#}"), "could not remove a cordon from the database; after a restart it is resumed again");
            }
        }
    }

    /// Drains `node` at one target. `Ok(state)` is where the drain ended up.
    async fn drain(&self, node: &str, d: &Drain, reason: &str) -> Outcome {
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
                // A failed read drained nothing, whatever went wrong.
                let state = self
                    .node_state(instance, native)
                    .await
                    .map_err(|f| match f {
                        Failure::Retry(m) => Failure::Unreached(m),
                        other => other,
                    })?;
                match state {
                    None => Ok((DrainState::NotMember, Some(format!("scheduler {instance} has no node {native}")))),
                    Some(s) if s.drained => match s.reason {
                        Some(r) if !r.starts_with(PREFIX.trim_end()) => Ok((
                            DrainState::Foreign,
                            Some(format!("already drained by someone else ({r:?}): left alone, and not resumed by corral")),
                        )),
                        // Corral's, with this reason: nothing to do (an earlier try whose
                        // answer was lost, or another corral node mapped onto it).
                        Some(r) if r == text => Ok((DrainState::Drained, None)),
                        // Corral's with another reason (`corral drain` gave the cordon a
                        // person's reason, or another corral node mapped onto it drained it
                        // first): written again with the current one.
                        Some(_) => self
                            .act
                            .scheduler(instance, PluginCall::DrainNode { node: native.clone(), reason: text })
                            .await
                            .map(|_| (DrainState::Drained, None)),
                        // The scheduler keeps no reasons (Grid Engine): corral's only if
                        // corral already tried; otherwise someone else's, left alone.
                        None if d.reached || d.made => Ok((DrainState::Drained, None)),
                        None => Ok((
                            DrainState::Foreign,
                            Some(format!("already drained, and scheduler {instance} keeps no reason: taken as someone else's, left alone and not resumed by corral")),
                        )),
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
    async fn lift(&self, node: &str, d: &Drain) -> Outcome {
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
            } => self.lift_scheduler(instance, native).await,
            Target::Ray if !self.act.connected(node) => Ok((
                DrainState::Resumed,
                Some("the agent is not connected: its Ray drain ended with its process".into()),
            )),
            Target::Ray => self
                .act
                .agent(node, Command::RayResume)
                .await
                .map(|detail| (DrainState::Resumed, Some(detail)))
                .map_err(Failure::Retry),
        }
    }

    async fn lift_scheduler(
        &self,
        instance: &str,
        native: &str,
    ) -> Result<(DrainState, Option<String>), Failure> {
        match self.node_state(instance, native).await? {
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
                            node: native.to_string(),
                        },
                    )
                    .await
                    .map(|_| (DrainState::Resumed, None)),
            },
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
    /// limits and a pause. A node cordoned already becomes `user`'s (never resumed by
    /// the policy) and is drained again everywhere with their reason, even while it was
    /// being resumed.
    pub async fn drain_by(
        self: &Arc<Self>,
        node: &str,
        reason: &str,
        user: &str,
    ) -> Result<Cordon, RemediationError> {
        let reason = one_line(reason)?;
        let Some(view) = self.registry.health_of(node) else {
            return Err(RemediationError::UnknownNode(node.into()));
        };
        let full = format!("{reason} ({user})");
        let targets = self.targets(node, Some(&view));
        let (ack, shown, fresh) = {
            let mut inner = self.lock();
            let fresh = !inner.cordons.contains_key(node);
            match inner.cordons.get_mut(node) {
                Some(c) => c.retake(Actor::User(user.into()), &full, targets),
                None => {
                    let c = Cordoned::new(node, &full, Actor::User(user.into()), targets);
                    inner.cordons.insert(node.into(), c);
                }
            }
            inner.dry.remove(node);
            let shown = inner.cordons[node].view();
            (self.queue(&inner, node), shown, fresh)
        };
        let what = format!(
            "{node} {} by {user}: {reason}; draining in {}",
            if fresh { "cordoned" } else { "taken over" },
            describe_targets_view(&shown)
        );
        // Finished in its own task: a client that goes away mid-request (its handler's
        // future dropped) must not leave the cordon shown and never worked.
        let this = self.clone();
        let name = node.to_string();
        let done = tokio::spawn(async move {
            if let Err(e) = ack.await {
                let mut inner = this.lock();
                if fresh && inner.cordons.get(&name).is_some_and(|c| !c.committed) {
                    inner.cordons.remove(&name);
                    this.registry.set_cordon(&name, None);
                }
                return Err(RemediationError::Store(format!("{e:#}")));
            }
            this.registry.remediation_event(&name, "cordon", what);
            if fresh {
                this.count("cordon", "ok");
            }
            this.committed(&name);
            Ok(())
        });
        done.await
            .map_err(|e| RemediationError::Store(format!("the drain's task failed: {e}")))??;
        warn!(node, user, reason = %reason, "node drained by hand");
        Ok(shown)
    }

    /// Forgets `node`'s cordon without lifting any drain: its pool deleted the machine,
    /// so there is nothing left to resume. Returns once the removal is on disk.
    pub(crate) async fn forget(&self, node: &str) -> anyhow::Result<()> {
        let ack = {
            let mut inner = self.lock();
            inner.watch.remove(node);
            inner.dry.remove(node);
            if inner.cordons.remove(node).is_none() {
                return Ok(());
            }
            self.queue(&inner, node)
        };
        ack.await
    }

    /// `corral resume NODE` by `user`: lifts corral's drains of the node now.
    pub async fn resume_by(
        self: &Arc<Self>,
        node: &str,
        user: &str,
    ) -> Result<Cordon, RemediationError> {
        let (ack, shown) = {
            let mut inner = self.lock();
            let Some(c) = inner.cordons.get_mut(node) else {
                drop(inner);
                return Err(if self.registry.health_of(node).is_some() {
                    RemediationError::NotCordoned(node.into())
                } else {
                    RemediationError::UnknownNode(node.into())
                });
            };
            c.resuming = true;
            c.epoch += 1;
            c.by = Actor::User(user.into());
            let shown = c.view();
            if let Some(w) = inner.watch.get_mut(node) {
                // A fresh drain_after if it is still unhealthy.
                w.bad.clear();
            }
            (self.queue(&inner, node), shown)
        };
        let what = format!(
            "{node} resumed by {user}: lifting what corral drained ({})",
            describe_targets_view(&shown)
        );
        // As for a drain: finished even if the client goes away.
        let this = self.clone();
        let name = node.to_string();
        let done = tokio::spawn(async move {
            if let Err(e) = ack.await {
                warn!(node = %name, error = format!("{e:#}"), "could not record a resume by hand; lifting anyway");
            }
            this.registry.remediation_event(&name, "resuming", what);
            this.committed(&name);
        });
        let _ = done.await;
        info!(node, user, "node resumed by hand");
        Ok(shown)
    }

    /// `corral remediation pause` (`Some(user)`) or `resume` (`None`). Memory follows
    /// the database: only a committed change takes effect, in its own task (a client
    /// that goes away cannot leave the two apart).
    pub async fn set_paused(
        self: &Arc<Self>,
        by: Option<&str>,
        user: &str,
    ) -> Result<RemediationView, RemediationError> {
        let row = by.map(|u| PauseRow {
            by: u.into(),
            since_ms: unix_ms(),
        });
        let this = self.clone();
        let user = user.to_string();
        let done = tokio::spawn(async move {
            this.store
                .put_pause(row.clone())
                .await
                .map_err(|e| RemediationError::Store(format!("{e:#}")))?;
            let was = std::mem::replace(&mut this.lock().paused, row.clone());
            if was.is_some() != row.is_some() {
                let (action, what) = if row.is_some() {
                    ("paused", "paused")
                } else {
                    ("unpaused", "running again")
                };
                warn!(user = %user, "remediation {what}");
                this.registry.remediation_event(
                    "",
                    action,
                    format!("remediation {what} by {user}"),
                );
            }
            this.wake.notify_one();
            Ok(())
        });
        done.await
            .map_err(|e| RemediationError::Store(format!("the pause's task failed: {e}")))??;
        Ok(self.view())
    }

    /// `GET /api/v1/remediation`.
    pub fn view(&self) -> RemediationView {
        let nodes = self.registry.len();
        let inner = self.lock();
        RemediationView {
            enabled: self.cfg.enabled,
            dry_run: self.cfg.dry_run,
            paused: inner.paused.as_ref().map(|p| Paused {
                by: p.by.clone(),
                since_ms: p.since_ms,
            }),
            blocked: inner.blocked.as_ref().map(|(_, why)| why.clone()),
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

/// Whether `n`'s last report shows its Ray worker held drained by its agent.
fn ray_held(n: &NodeHealth) -> bool {
    n.ray
        .is_some_and(|(_, state)| matches!(state, RayState::Draining | RayState::Drained))
}

/// Another cordoned node that may need `target` (several corral nodes mapped onto one
/// scheduler node) kept drained: its drain there may be in place, or it is still to be
/// made.
fn also_drained(inner: &Inner, node: &str, target: &Target) -> Option<String> {
    inner
        .cordons
        .values()
        .filter(|c| c.node != node)
        .find(|c| {
            c.drains.iter().any(|d| {
                &d.target == target
                    && (d.may_be_in_place() || (!c.resuming && d.state == DrainState::Pending))
            })
        })
        .map(|c| c.node.clone())
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

fn describe_targets_view(c: &Cordon) -> String {
    let mut v: Vec<String> = c
        .drains
        .iter()
        .map(|d| match d.kind.as_str() {
            "ray" => "ray".to_string(),
            _ => format!("{} (as {})", d.target, d.node),
        })
        .collect();
    v.insert(0, "corral".into());
    v.join(", ")
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
                return Err(Failure::Unreached(format!(
                    "no authorized host of scheduler {instance} is connected (see [schedulers.{instance}] nodes and `corral plugins`)"
                )));
            }
            let mut errors = vec![];
            for host in &hosts {
                match jobs.call(host, &instance, call.clone(), None).await {
                    Ok(reply) => return Ok(reply),
                    // The plugin cannot do it anywhere: not retried.
                    Err(crate::jobs::CallError::Plugin(
                        e @ (PluginError::Unsupported(_) | PluginError::Invalid(_)),
                    )) => {
                        return Err(Failure::Final(format!(
                            "scheduler {instance} through {host}: {e}"
                        )))
                    }
                    // This host's scheduler client failed (munge down, a timeout, a
                    // trap): the next host may well succeed.
                    Err(crate::jobs::CallError::Plugin(e)) => errors.push(format!("{host}: {e}")),
                    Err(crate::jobs::CallError::Command(e)) => errors.push(format!("{host}: {e}")),
                }
            }
            Err(Failure::Retry(format!(
                "no host of scheduler {instance} could do it: {}",
                errors.join("; ")
            )))
        })
    }

    fn connected(&self, node: &str) -> bool {
        self.registry.command_route(node).is_some()
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
