//! Node pools that heal themselves: each `[pools.NAME]` is kept at `min` nodes by a
//! provider plugin (`wit/provider.wit`: Hetzner Cloud, Cloudera AI, a command), and a
//! node that is down longer than `replace_after`, or never joins, is deleted and
//! replaced. New nodes join with single-use tokens ([`join`]).
//!
//! The policy, one pass per [`TICK`] for each pool that is neither paused, halted nor
//! waiting (on a rate limit, a backoff or its API budget):
//! 1. A created node whose agent connected is a `member`.
//! 2. A member `down` for `replace_after`, a node that did not join within
//!    `join_timeout`, or a machine its provider reports `failed`, is replaced: deleted,
//!    then (the pool being below `min`) another is created; a node being deleted holds
//!    its place until its machine is gone, so a provider at its quota has room. A node
//!    that can still be reached is drained first (the remediation's drain,
//!    [`crate::remediation`]), for at most `drain_timeout`.
//! 3. With `billing_hour` and an hourly-billing provider, an idle member above `min` is
//!    deleted just before its next billed hour starts.
//! 4. While the pool holds fewer than `min` nodes, one more is created, at most
//!    `max_in_flight` at once (one at a time after a failure, as a probe) and never
//!    beyond `max`.
//! 5. Every `list_interval` the provider lists the pool's machines: their states are
//!    shown, a machine created before a restart is adopted by its node name, and one
//!    that vanished twice in a row is forgotten (and so replaced).
//!
//! Invariants:
//! - A node is on disk (its `pool-node` record) before its machine is asked for, and
//!   its record goes only once the provider said it is deleted: a coordinator that
//!   crashes mid-action finds every machine it may have made.
//! - Each node gets a fresh name (`POOL-N`, `N` never reused: the counter is on disk)
//!   and a join token bound to that name that expires with `join_timeout`. A deleted
//!   node's certificates are revoked, and it leaves the node list.
//! - A failed provider call counts against the pool (`max_failures` in a row halt it
//!   until `corral pool NAME resume`, which says why); only a create or delete that
//!   works ends the streak. A rate limit does not count: the pool waits out the time
//!   the API gave. Each failure backs off (1 s, doubling, at most 60 s).
//! - The pool's provider calls send at most `api_calls_per_hour` HTTP requests in any
//!   hour (counted from what each call reports, so a call already running may end a
//!   little beyond it).
//! - Every action is an event (`pool`), a count in `corral_pool_actions_total` and an
//!   entry in the pool's recent actions; none runs while the pool is paused.
//!
//! Trade-off: the policy knows nothing of demand. It keeps `min`, and `max` bounds what
//! replacement and joins by hand may reach; scaling to load is the scheduler's or Ray's
//! autoscaler's call, which can change `min` through the config.

pub mod config;
pub mod join;
mod routes;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::access::unix_ms;
use crate::registry::Registry;
use crate::remediation::Remediation;
use crate::store::{RecordKind, Store};
use config::{JoinSection, PoolSection, ProvidersSection};
use corral_proto::job::PluginError;
use corral_proto::model::Liveness;
use corral_proto::pool::{
    CreatedJoinToken, JoinAnswer, Machine, MachineState, PoolAction, PoolNodePhase, PoolNodeView,
    PoolSummary, PoolView, ProviderInfo,
};
use corral_sandbox::plugins::provider::{
    PoolRef, ProviderCall, ProviderFailure, ProviderHost, ProviderOutcome, ProviderReply,
};
use corral_transport::pki::Ca;
use join::{JoinError, JoinTokenRow, JoinTokens};
pub(crate) use routes::{protected_routes, public_routes};

/// How often the policy looks at every pool.
pub const TICK: Duration = Duration::from_millis(500);
/// Recent actions kept per pool.
const ACTIONS_KEPT: usize = 50;
/// The longest backoff after a failure.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// An idle surplus node is deleted this long (plus its `drain_timeout`) before its next
/// billed hour.
const BILLING_MARGIN: Duration = Duration::from_secs(120);

/// A pool node as stored (the `pool-node` records).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PoolNodeRow {
    pub pool: String,
    pub node: String,
    pub provider_id: Option<String>,
    pub phase: PoolNodePhase,
    pub created_ms: u64,
    #[serde(default)]
    pub joined_ms: Option<u64>,
    #[serde(default)]
    pub reason: Option<String>,
    /// When the replacement decision was made (for where the time goes).
    #[serde(default)]
    pub replace_ms: Option<u64>,
}

/// A pool's counter and pause (the `pool-state` records).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PoolStateRow {
    /// The next node's number: names are never reused.
    pub next_index: u64,
    #[serde(default)]
    pub paused_by: Option<String>,
    #[serde(default)]
    pub paused_ms: Option<u64>,
}

struct PoolNode {
    row: PoolNodeRow,
    machine: Option<Machine>,
    /// A provider call or drain for this node is running.
    busy: bool,
    /// Not before this, the next try of a failed delete.
    next_try: Option<Instant>,
    /// Lists in a row that did not show it.
    missing: u32,
    /// Restored in `creating` at start: its create may or may not have happened, so
    /// the next list decides.
    restored: bool,
    drain_started: Option<Instant>,
}

impl PoolNode {
    fn new(row: PoolNodeRow) -> PoolNode {
        PoolNode {
            row,
            machine: None,
            busy: false,
            next_try: None,
            missing: 0,
            restored: false,
            drain_started: None,
        }
    }

    fn active(&self) -> bool {
        matches!(
            self.row.phase,
            PoolNodePhase::Creating | PoolNodePhase::Joining | PoolNodePhase::Member
        )
    }
}

struct PoolState {
    nodes: BTreeMap<String, PoolNode>,
    state: PoolStateRow,
    failures: u32,
    halted: Option<String>,
    /// Nothing is asked of the provider before this (a rate limit, a backoff, the API
    /// budget), and why.
    wait: Option<(Instant, String)>,
    /// (when, HTTP requests) of recent calls, for the API budget.
    calls: VecDeque<(Instant, u32)>,
    actions: VecDeque<PoolAction>,
    listing: bool,
    last_list: Option<Instant>,
}

impl PoolState {
    fn creating(&self) -> usize {
        self.nodes
            .values()
            .filter(|n| n.row.phase == PoolNodePhase::Creating && !n.restored)
            .count()
    }

    fn active(&self) -> usize {
        self.nodes.values().filter(|n| n.active()).count()
    }

    fn calls_last_hour(&mut self, now: Instant) -> u32 {
        while self
            .calls
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) >= Duration::from_secs(3600))
        {
            self.calls.pop_front();
        }
        self.calls.iter().map(|(_, n)| *n).sum()
    }
}

/// Counts for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct PoolMetrics {
    /// (pool, action, outcome) → count.
    pub actions: BTreeMap<(String, &'static str, &'static str), u64>,
    /// (pool, phase) → nodes.
    pub nodes: BTreeMap<(String, &'static str), u64>,
    /// pool → (min, ready, consecutive failures, halted, paused).
    pub pools: BTreeMap<String, (u32, u32, u32, bool, bool)>,
}

/// Why a pool request was refused.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("no pool {0:?}; the configured pools are: {1}")]
    Unknown(String, String),
    #[error("{0}")]
    Join(#[from] JoinError),
    #[error("recording it failed: {0}; nothing was changed")]
    Store(String),
}

struct Inner {
    pools: BTreeMap<String, PoolState>,
    counts: BTreeMap<(String, &'static str, &'static str), u64>,
}

/// The coordinator's pools: their policy, their provider plugins and the join tokens.
pub struct Pools {
    sections: BTreeMap<String, PoolSection>,
    join: Option<JoinSection>,
    host: ProviderHost,
    /// Provider plugins that did not load, by name, with why.
    load_failures: BTreeMap<String, String>,
    pub(crate) tokens: JoinTokens,
    ca: Option<Arc<Ca>>,
    registry: Arc<Registry>,
    remediation: Arc<Remediation>,
    store: Arc<Store>,
    inner: Mutex<Inner>,
    wake: Notify,
}

/// One thing the policy decided to do, done outside the lock.
enum Work {
    Create { pool: String, node: String },
    Delete { pool: String, node: String },
    Drain { pool: String, node: String },
    List { pool: String },
}

/// What the coordinator starts the pools from.
pub(crate) struct PoolsConfig<'a> {
    pub pools: &'a BTreeMap<String, PoolSection>,
    pub providers: &'a ProvidersSection,
    pub join: Option<&'a JoinSection>,
}

impl Pools {
    /// Loads the provider plugins and the stored pool nodes, join tokens and counters.
    pub(crate) fn new(
        cfg: PoolsConfig<'_>,
        records: Vec<(RecordKind, String, String)>,
        registry: Arc<Registry>,
        remediation: Arc<Remediation>,
        store: Arc<Store>,
    ) -> anyhow::Result<Pools> {
        let ca = match cfg.join {
            Some(j) => Some(Arc::new(Ca::load(&j.ca_dir).map_err(|e| {
                anyhow::anyhow!("join.ca_dir: {e:#}; the coordinator signs joining nodes' certificates with this CA")
            })?)),
            None => None,
        };
        let mut names: Vec<String> = cfg.pools.values().map(|p| p.provider.clone()).collect();
        names.sort();
        names.dedup();
        let (host, failures) = match &cfg.providers.dir {
            Some(dir) => ProviderHost::load(dir, &names, cfg.providers.cache_dir.as_deref(), None),
            None => (ProviderHost::empty(), Vec::new()),
        };
        let load_failures = failures
            .into_iter()
            .map(|f| (f.name, f.message))
            .collect::<BTreeMap<_, _>>();
        let mut tokens = vec![];
        let mut rows: BTreeMap<String, Vec<PoolNodeRow>> = BTreeMap::new();
        let mut states: BTreeMap<String, PoolStateRow> = BTreeMap::new();
        for (kind, key, json) in records {
            let parsed = match kind {
                RecordKind::JoinToken => {
                    serde_json::from_str::<JoinTokenRow>(&json).map(|t| tokens.push(t))
                }
                RecordKind::PoolNode => serde_json::from_str::<PoolNodeRow>(&json)
                    .map(|r| rows.entry(r.pool.clone()).or_default().push(r)),
                RecordKind::PoolState => serde_json::from_str::<PoolStateRow>(&json).map(|s| {
                    states.insert(key.clone(), s);
                }),
            };
            if let Err(e) = parsed {
                warn!(key = %key, error = %e, "skipping an unreadable pool record");
            }
        }
        let mut pools = BTreeMap::new();
        for name in cfg.pools.keys() {
            let mut nodes = BTreeMap::new();
            let mut state = states.remove(name).unwrap_or_default();
            for row in rows.remove(name).unwrap_or_default() {
                if let Some(i) = index_of(name, &row.node) {
                    state.next_index = state.next_index.max(i + 1);
                }
                let mut n = PoolNode::new(row);
                n.restored = n.row.phase == PoolNodePhase::Creating;
                nodes.insert(n.row.node.clone(), n);
            }
            state.next_index = state.next_index.max(1);
            pools.insert(
                name.clone(),
                PoolState {
                    nodes,
                    state,
                    failures: 0,
                    halted: None,
                    wait: None,
                    calls: VecDeque::new(),
                    actions: VecDeque::new(),
                    listing: false,
                    last_list: None,
                },
            );
        }
        for (pool, rows) in rows {
            warn!(pool = %pool, nodes = rows.len(), "stored nodes of a pool that is no longer configured are left alone; delete their machines by hand or configure the pool again");
        }
        let cert_days = cfg.join.map_or(90, |j| j.cert_days);
        Ok(Pools {
            sections: cfg.pools.clone(),
            join: cfg.join.cloned(),
            host,
            load_failures,
            tokens: JoinTokens::new(tokens, store.clone(), ca.clone(), cert_days),
            ca,
            registry,
            remediation,
            store,
            inner: Mutex::new(Inner {
                pools,
                counts: BTreeMap::new(),
            }),
            wake: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn unknown(&self, name: &str) -> PoolError {
        let names: Vec<&str> = self.sections.keys().map(String::as_str).collect();
        PoolError::Unknown(
            name.into(),
            if names.is_empty() {
                "none ([pools.NAME] in the coordinator's config)".into()
            } else {
                names.join(", ")
            },
        )
    }

    /// Runs the policy until `shutdown`.
    pub(crate) async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        if self.sections.is_empty() {
            return;
        }
        for (plugin, why) in &self.load_failures {
            warn!(provider = %plugin, error = %why, "provider plugin did not load; its pools do nothing");
        }
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.wake.notified() => {}
                _ = shutdown.cancelled() => return,
            }
            self.step(Instant::now());
        }
    }

    /// One pass of the policy over every pool; the work it decides runs in tasks.
    pub(crate) fn step(self: &Arc<Self>, now: Instant) {
        let work = self.plan(now, unix_ms());
        for w in work {
            let this = self.clone();
            tokio::spawn(async move { this.perform(w).await });
        }
    }

    fn plan(&self, now: Instant, now_ms: u64) -> Vec<Work> {
        let mut work = vec![];
        let mut events = vec![];
        {
            let mut guard = self.lock();
            let Inner { pools, counts } = &mut *guard;
            for (name, p) in pools.iter_mut() {
                let cfg = &self.sections[name];
                // 1. Who joined.
                for n in p.nodes.values_mut() {
                    if matches!(
                        n.row.phase,
                        PoolNodePhase::Creating | PoolNodePhase::Joining
                    ) && self.registry.get(&n.row.node).is_some_and(|v| v.connected)
                    {
                        n.row.phase = PoolNodePhase::Member;
                        n.row.joined_ms = Some(now_ms);
                        n.restored = false;
                        self.persist(n.row.clone());
                        let took = now_ms.saturating_sub(n.row.created_ms);
                        events.push((
                            n.row.node.clone(),
                            "joined",
                            format!(
                                "pool {name}: {} joined, {} after it was created",
                                n.row.node,
                                fmt_ms(took)
                            ),
                        ));
                        push_action(
                            &mut p.actions,
                            now_ms,
                            "join",
                            Some(&n.row.node),
                            "ok",
                            "joined".into(),
                            Some(took),
                        );
                        count(counts, name, "join", "ok");
                    }
                }
                if p.state.paused_by.is_some() || self.load_failures.contains_key(&cfg.provider) {
                    continue;
                }
                // 2, 3. Who is to go: first the broken, then (their replacements
                // counted) the surplus before its next billed hour.
                let hourly = self
                    .host
                    .details(&cfg.provider)
                    .is_some_and(|d| d.info.hourly_billing);
                // The billing decision comes early enough for the drain to end before
                // the hour does.
                let margin = BILLING_MARGIN + cfg.drain_timeout.min(Duration::from_secs(1800));
                for billing in [false, true] {
                    let mut surplus = p.active().saturating_sub(cfg.min as usize);
                    for n in p.nodes.values_mut() {
                        if n.busy {
                            continue;
                        }
                        let view = self.registry.get(&n.row.node);
                        let why = match n.row.phase {
                            PoolNodePhase::Member => match &view {
                                Some(v)
                                    if !billing
                                        && v.liveness == Liveness::Down
                                        && now_ms.saturating_sub(v.liveness_since_ms)
                                            >= cfg.replace_after.as_millis() as u64 =>
                                {
                                    Some(format!(
                                        "down for {} (replace_after {})",
                                        fmt_ms(now_ms.saturating_sub(v.liveness_since_ms)),
                                        humantime::format_duration(cfg.replace_after)
                                    ))
                                }
                                _ if !billing
                                    && n.machine
                                        .as_ref()
                                        .is_some_and(|m| m.state == MachineState::Failed) =>
                                {
                                    Some("its provider reports the machine failed".into())
                                }
                                Some(v)
                                    if billing
                                        && cfg.billing_hour
                                        && hourly
                                        && surplus > 0
                                        && v.connected
                                        && v.cordon.is_none()
                                        && before_next_hour(
                                            n.machine
                                                .as_ref()
                                                .and_then(|m| m.created_ms)
                                                .unwrap_or(n.row.created_ms),
                                            now_ms,
                                            margin,
                                        ) =>
                                {
                                    surplus -= 1;
                                    Some(format!(
                                        "idle above min ({}) just before its next billed hour",
                                        cfg.min
                                    ))
                                }
                                _ => None,
                            },
                            PoolNodePhase::Joining
                                if !billing
                                    && now_ms.saturating_sub(n.row.created_ms)
                                        >= cfg.join_timeout.as_millis() as u64 =>
                            {
                                Some(format!(
                                    "did not join within {} (join_timeout)",
                                    humantime::format_duration(cfg.join_timeout)
                                ))
                            }
                            PoolNodePhase::Joining
                                if !billing
                                    && n.machine
                                        .as_ref()
                                        .is_some_and(|m| m.state == MachineState::Failed) =>
                            {
                                Some("its provider reports the machine failed".into())
                            }
                            _ => None,
                        };
                        if let Some(why) = why {
                            // A `down` node's connection may linger (QUIC's idle timeout)
                            // but nothing answers on it: not reachable, nothing to drain.
                            let reachable = view
                                .as_ref()
                                .is_some_and(|v| v.connected && v.liveness != Liveness::Down);
                            n.row.phase = if reachable {
                                PoolNodePhase::Draining
                            } else {
                                PoolNodePhase::Deleting
                            };
                            n.row.reason = Some(why.clone());
                            n.row.replace_ms = Some(now_ms);
                            self.persist(n.row.clone());
                            events.push((
                                n.row.node.clone(),
                                "replace",
                                format!(
                                    "pool {name}: {} is to be deleted: {why}{}",
                                    n.row.node,
                                    if reachable { "; draining it first" } else { "" }
                                ),
                            ));
                            push_action(
                                &mut p.actions,
                                now_ms,
                                "replace",
                                Some(&n.row.node),
                                "ok",
                                why,
                                None,
                            );
                            count(counts, name, "replace", "ok");
                        }
                    }
                }
                // Draining: done, timed out, or gone.
                for n in p.nodes.values_mut() {
                    if n.row.phase != PoolNodePhase::Draining || n.busy {
                        continue;
                    }
                    match n.drain_started {
                        None => {
                            n.busy = true;
                            n.drain_started = Some(now);
                            work.push(Work::Drain {
                                pool: name.clone(),
                                node: n.row.node.clone(),
                            });
                        }
                        Some(started) => {
                            let view = self.registry.get(&n.row.node);
                            let drained = view.as_ref().is_none_or(|v| {
                                !v.connected
                                    || v.cordon.as_ref().is_some_and(|c| {
                                        c.drains.iter().all(|d| d.state != "pending")
                                    })
                            });
                            if drained || now.duration_since(started) >= cfg.drain_timeout {
                                n.row.phase = PoolNodePhase::Deleting;
                                self.persist(n.row.clone());
                                let (outcome, message) = if drained {
                                    ("ok", format!("{} is drained; deleting it", n.row.node))
                                } else {
                                    (
                                        "failed",
                                        format!(
                                            "{}'s drains did not finish within {} (drain_timeout); deleting it anyway",
                                            n.row.node,
                                            humantime::format_duration(cfg.drain_timeout)
                                        ),
                                    )
                                };
                                events.push((
                                    n.row.node.clone(),
                                    if drained { "drained" } else { "drain-timeout" },
                                    format!("pool {name}: {message}"),
                                ));
                                push_action(
                                    &mut p.actions,
                                    now_ms,
                                    "drained",
                                    Some(&n.row.node),
                                    outcome,
                                    message,
                                    Some(now.duration_since(started).as_millis() as u64),
                                );
                                count(counts, name, "drained", outcome);
                            }
                        }
                    }
                }
                // 5. Listing: reading, so also while halted (it settles creates that
                // failed half-way), but not while the API asks to wait.
                if !p.listing
                    && p.wait.as_ref().is_none_or(|(t, _)| now >= *t)
                    && p.last_list
                        .is_none_or(|t| now.duration_since(t) >= cfg.list_interval)
                {
                    p.listing = true;
                    work.push(Work::List { pool: name.clone() });
                }
                if p.halted.is_some() {
                    continue;
                }
                if let Some((until, _)) = &p.wait {
                    if now < *until {
                        continue;
                    }
                    p.wait = None;
                }
                if cfg.api_calls_per_hour > 0 && p.calls_last_hour(now) >= cfg.api_calls_per_hour {
                    let until = p
                        .calls
                        .front()
                        .map_or(now, |(t, _)| *t + Duration::from_secs(3600));
                    p.wait = Some((
                        until,
                        format!(
                            "its API budget of {} requests an hour is spent (api_calls_per_hour)",
                            cfg.api_calls_per_hour
                        ),
                    ));
                    continue;
                }
                // Deleting.
                for n in p.nodes.values_mut() {
                    if n.row.phase == PoolNodePhase::Deleting
                        && !n.busy
                        && n.next_try.is_none_or(|t| now >= t)
                    {
                        n.busy = true;
                        work.push(Work::Delete {
                            pool: name.clone(),
                            node: n.row.node.clone(),
                        });
                    }
                }
                // 4. Creating. A node being deleted still holds its place (delete, then
                // create: a provider at its quota needs the room), and after a failure
                // one creation at a time probes the provider.
                let mut held = p.nodes.len();
                let mut creating = p.creating();
                let in_flight = if p.failures > 0 {
                    1
                } else {
                    cfg.max_in_flight as usize
                };
                while held < cfg.min as usize && held < cfg.max as usize && creating < in_flight {
                    let node = next_name(name, p, &self.registry);
                    let mut n = PoolNode::new(PoolNodeRow {
                        pool: name.clone(),
                        node: node.clone(),
                        provider_id: None,
                        phase: PoolNodePhase::Creating,
                        created_ms: now_ms,
                        joined_ms: None,
                        reason: None,
                        replace_ms: None,
                    });
                    n.busy = true;
                    p.nodes.insert(node.clone(), n);
                    work.push(Work::Create {
                        pool: name.clone(),
                        node,
                    });
                    held += 1;
                    creating += 1;
                }
            }
        }
        for (node, action, message) in events {
            info!(node = %node, action, message = %message, "pool");
            self.registry.pool_event(&node, action, message);
        }
        work
    }
}

impl Pools {
    /// Writes a node's row, in its own task (the next change writes it again anyway).
    /// Writes a node's row: queued now, in the order of the changes (see
    /// [`Store::queue_record`]), committed in its own task.
    fn persist(&self, row: PoolNodeRow) {
        let done = self
            .store
            .queue_record(RecordKind::PoolNode, &row.node, Some(&row));
        tokio::spawn(async move {
            if let Err(e) = done.await {
                warn!(node = %row.node, error = %format!("{e:#}"), "writing a pool node failed");
            }
        });
    }

    async fn persist_state(&self, pool: &str) -> anyhow::Result<()> {
        let state = self.lock().pools.get(pool).map(|p| p.state.clone());
        match state {
            Some(s) => {
                self.store
                    .put_record(RecordKind::PoolState, pool, Some(&s))
                    .await
            }
            None => Ok(()),
        }
    }

    fn event(
        &self,
        pool: &str,
        node: Option<&str>,
        action: &'static str,
        outcome: &'static str,
        message: String,
        elapsed: Option<u64>,
    ) {
        let mut inner = self.lock();
        count(&mut inner.counts, pool, action, outcome);
        if let Some(p) = inner.pools.get_mut(pool) {
            push_action(
                &mut p.actions,
                unix_ms(),
                action,
                node,
                outcome,
                message.clone(),
                elapsed,
            );
        }
        drop(inner);
        info!(pool, node = node.unwrap_or(""), action, outcome, message = %message, "pool");
        self.registry.pool_event(
            node.unwrap_or(""),
            action_event(action, outcome),
            format!("pool {pool}: {message}"),
        );
    }

    /// The pool as its plugin sees it; the secret read now, so a rotated one is used.
    fn pool_ref(&self, pool: &str) -> Result<PoolRef, String> {
        let cfg = &self.sections[pool];
        let secret = match &cfg.secret_file {
            Some(f) => Some(read_secret(f)?),
            None => None,
        };
        Ok(PoolRef {
            name: pool.to_string(),
            template: cfg.flat_template(),
            secret,
        })
    }

    /// Calls the pool's provider and books the outcome: the API budget, the failure
    /// count, the halt and the waits (see the module's invariants).
    async fn call(&self, pool: &str, node: Option<&str>, call: ProviderCall) -> ProviderOutcome {
        let cfg = &self.sections[pool];
        let action = call.export();
        let outcome = match self.pool_ref(pool) {
            Ok(p) => self.host.call(&cfg.provider, &p, call).await,
            Err(e) => ProviderOutcome {
                result: Err(ProviderFailure::Failed(PluginError::Invalid(e))),
                http_requests: 0,
                elapsed: Duration::ZERO,
            },
        };
        let now = Instant::now();
        let mut halted = None;
        {
            let mut inner = self.lock();
            let Some(p) = inner.pools.get_mut(pool) else {
                return outcome;
            };
            p.calls.push_back((now, outcome.http_requests));
            p.calls_last_hour(now);
            match &outcome.result {
                // A list that works says little about creating and deleting: only those
                // end a streak of failures.
                Ok(_) if action == "list" => {}
                Ok(_) => p.failures = 0,
                Err(ProviderFailure::RateLimited {
                    retry_after,
                    message,
                }) => {
                    let wait = (*retry_after).clamp(Duration::from_secs(1), MAX_RATE_WAIT);
                    wait_until(
                        p,
                        now + wait,
                        format!("rate limited by the provider's API: {message}"),
                    );
                }
                Err(ProviderFailure::Failed(e)) => {
                    halted = book_failure(p, cfg, pool, action, &e.to_string(), now);
                }
            }
        }
        let ms = Some(outcome.elapsed.as_millis() as u64);
        match &outcome.result {
            Ok(_) => {}
            Err(ProviderFailure::RateLimited { .. }) => self.event(
                pool,
                node,
                action,
                "rate-limited",
                format!(
                    "{action} was rate limited: {}",
                    outcome
                        .result
                        .as_ref()
                        .err()
                        .map(ToString::to_string)
                        .unwrap_or_default()
                ),
                ms,
            ),
            Err(e) => self.event(
                pool,
                node,
                action,
                "failed",
                format!("{action} failed: {e}"),
                ms,
            ),
        }
        if let Some(why) = halted {
            warn!(pool, reason = %why, "pool halted");
            self.event(pool, None, "halt", "ok", why, None);
        }
        outcome
    }

    async fn perform(self: Arc<Self>, w: Work) {
        match w {
            Work::Create { pool, node } => self.create(&pool, &node).await,
            Work::Delete { pool, node } => self.delete(&pool, &node).await,
            Work::Drain { pool, node } => self.drain(&pool, &node).await,
            Work::List { pool } => self.list(&pool).await,
        }
    }

    fn row(&self, pool: &str, node: &str) -> Option<PoolNodeRow> {
        self.lock()
            .pools
            .get(pool)
            .and_then(|p| p.nodes.get(node))
            .map(|n| n.row.clone())
    }

    /// Drops a node that never got a machine (its create failed), with its token.
    async fn drop_node(&self, pool: &str, node: &str) {
        if let Some(p) = self.lock().pools.get_mut(pool) {
            p.nodes.remove(node);
        }
        if let Err(e) = self
            .store
            .put_record::<PoolNodeRow>(RecordKind::PoolNode, node, None)
            .await
        {
            warn!(node, error = %format!("{e:#}"), "removing a pool node's record failed");
        }
        self.revoke_tokens(node).await;
    }

    /// Revokes `node`'s join tokens that were not used.
    async fn revoke_tokens(&self, node: &str) {
        for id in self.tokens.unused_for(node) {
            if let Err(e) = self.tokens.revoke(&id).await {
                warn!(node, token = %id, error = %e, "revoking a node's join token failed");
            }
        }
    }

    async fn create(&self, pool: &str, node: &str) {
        let cfg = &self.sections[pool];
        let Some(row) = self.row(pool, node) else {
            return;
        };
        let recorded = async {
            self.persist_state(pool).await?;
            self.store
                .put_record(RecordKind::PoolNode, node, Some(&row))
                .await
        };
        if let Err(e) = recorded.await {
            self.drop_node(pool, node).await;
            self.local_failure(
                pool,
                node,
                format!("recording {node} failed, so it was not created: {e:#}"),
            );
            return;
        }
        let token = match self
            .tokens
            .create(
                pool,
                Some(node.to_string()),
                cfg.join_timeout,
                &format!("pool {pool}"),
            )
            .await
        {
            Ok(t) => t,
            Err(e) => {
                self.drop_node(pool, node).await;
                self.local_failure(
                    pool,
                    node,
                    format!("making {node}'s join token failed: {e}"),
                );
                return;
            }
        };
        let user_data = self.user_data(cfg, pool, node, &token.secret);
        let outcome = self
            .call(
                pool,
                Some(node),
                ProviderCall::Create {
                    node: node.to_string(),
                    user_data,
                },
            )
            .await;
        let ms = outcome.elapsed.as_millis() as u64;
        match outcome.result {
            Ok(ProviderReply::Created(id)) => {
                {
                    let mut inner = self.lock();
                    let Some(n) = inner
                        .pools
                        .get_mut(pool)
                        .and_then(|p| p.nodes.get_mut(node))
                    else {
                        return;
                    };
                    n.busy = false;
                    n.row.provider_id = Some(id.clone());
                    if n.row.phase == PoolNodePhase::Creating {
                        n.row.phase = PoolNodePhase::Joining;
                    }
                    // Queued under the lock: no older snapshot of this row can follow.
                    self.persist(n.row.clone());
                };
                self.event(
                    pool,
                    Some(node),
                    "create",
                    "ok",
                    format!("{node} created as {id} in {}", fmt_ms(ms)),
                    Some(ms),
                );
            }
            Ok(other) => {
                self.drop_node(pool, node).await;
                self.event(
                    pool,
                    Some(node),
                    "create",
                    "failed",
                    format!("create answered {other:?}, not an id"),
                    Some(ms),
                );
            }
            // Refused outright (a bad template, a grant missing): nothing was made.
            Err(ProviderFailure::Failed(
                PluginError::Invalid(_)
                | PluginError::Denied(_)
                | PluginError::Unsupported(_)
                | PluginError::NotLoaded(_),
            ))
            | Err(ProviderFailure::RateLimited { .. }) => self.drop_node(pool, node).await,
            // A timeout, a trap or the API failing mid-way may have made the machine:
            // the row stays, and the next list adopts the machine or drops the row.
            Err(_) => {
                if let Some(n) = self
                    .lock()
                    .pools
                    .get_mut(pool)
                    .and_then(|p| p.nodes.get_mut(node))
                {
                    n.busy = false;
                    n.restored = true;
                }
            }
        }
    }

    /// A create that failed before the provider was asked: counted and backed off like
    /// a provider failure, so a broken store or CA cannot spin the policy.
    fn local_failure(&self, pool: &str, node: &str, message: String) {
        let cfg = &self.sections[pool];
        let halted = {
            let mut inner = self.lock();
            let Some(p) = inner.pools.get_mut(pool) else {
                return;
            };
            book_failure(p, cfg, pool, "create", &message, Instant::now())
        };
        self.event(pool, Some(node), "create", "failed", message, None);
        if let Some(why) = halted {
            warn!(pool, reason = %why, "pool halted");
            self.event(pool, None, "halt", "ok", why, None);
        }
    }

    async fn drain(&self, pool: &str, node: &str) {
        let reason = self
            .row(pool, node)
            .and_then(|r| r.reason)
            .unwrap_or_else(|| "replaced".into());
        let by = format!("pool-{pool}");
        match self
            .remediation
            .drain_by(node, &format!("pool {pool}: {reason}"), &by)
            .await
        {
            Ok(_) => self.event(
                pool,
                Some(node),
                "drain",
                "ok",
                format!("{node} cordoned and its drains started; it is deleted once they are done, or after drain_timeout"),
                None,
            ),
            Err(e) => self.event(
                pool,
                Some(node),
                "drain",
                "failed",
                format!("draining {node} failed ({e}); deleting it after drain_timeout"),
                None,
            ),
        }
        if let Some(n) = self
            .lock()
            .pools
            .get_mut(pool)
            .and_then(|p| p.nodes.get_mut(node))
        {
            n.busy = false;
        }
    }

    async fn delete(&self, pool: &str, node: &str) {
        let Some(row) = self.row(pool, node) else {
            return;
        };
        if let Some(id) = &row.provider_id {
            let outcome = self
                .call(pool, Some(node), ProviderCall::Delete { id: id.clone() })
                .await;
            if outcome.result.is_err() {
                let mut inner = self.lock();
                if let Some(p) = inner.pools.get_mut(pool) {
                    let backoff = p.wait.as_ref().map_or(Duration::from_secs(1), |(t, _)| {
                        t.saturating_duration_since(Instant::now())
                    });
                    if let Some(n) = p.nodes.get_mut(node) {
                        n.busy = false;
                        n.next_try = Some(Instant::now() + backoff);
                    }
                }
                return;
            }
        }
        // Its credentials go before its record: a crash in between leaves a record to
        // delete again, never a live token or certificate for a machine that is gone.
        self.revoke_tokens(node).await;
        let revoked = self.revoke_certificates(node).await;
        if let Err(e) = self
            .store
            .put_record::<PoolNodeRow>(RecordKind::PoolNode, node, None)
            .await
        {
            warn!(node, error = %format!("{e:#}"), "removing a deleted pool node's record failed; retrying");
            if let Some(n) = self
                .lock()
                .pools
                .get_mut(pool)
                .and_then(|p| p.nodes.get_mut(node))
            {
                n.busy = false;
            }
            return;
        }
        if let Some(p) = self.lock().pools.get_mut(pool) {
            p.nodes.remove(node);
        }
        if let Err(e) = self.remediation.forget(node).await {
            warn!(node, error = %format!("{e:#}"), "forgetting a deleted node's cordon failed");
        }
        self.registry.forget(node);
        self.store.forget_node(node);
        let since = row.replace_ms.map(|t| unix_ms().saturating_sub(t));
        self.event(
            pool,
            Some(node),
            "delete",
            "ok",
            format!(
                "{node}{} deleted{}{}",
                row.provider_id
                    .as_deref()
                    .map(|i| format!(" ({i})"))
                    .unwrap_or_default(),
                since
                    .map(|ms| format!(", {} after the decision", fmt_ms(ms)))
                    .unwrap_or_default(),
                revoked
            ),
            since,
        );
        self.wake.notify_one();
    }

    /// Revokes every certificate issued for `node` (it is gone; its key may not be).
    async fn revoke_certificates(&self, node: &str) -> String {
        let Some(ca) = self.ca.clone() else {
            return String::new();
        };
        let name = node.to_string();
        let done = tokio::task::spawn_blocking(move || {
            let crl = corral_transport::issued::CrlOptions {
                out: corral_transport::issued::default_crl_path(ca.dir()),
                days: 30,
            };
            ca.revoke(
                &corral_transport::issued::RevokeTarget::NameOrSerial(name),
                &crl,
            )
        })
        .await;
        match done {
            Ok(Ok(r)) if !r.revoked.is_empty() => {
                format!("; its certificate revoked ({})", r.crl.path.display())
            }
            Ok(Ok(_)) => String::new(),
            // Nothing on record: it never joined.
            Ok(Err(corral_transport::issued::RevokeError::Unknown { .. })) => String::new(),
            Ok(Err(e)) => {
                warn!(node, error = %e, "revoking a deleted node's certificate failed");
                format!("; revoking its certificate failed: {e}")
            }
            Err(e) => format!("; revoking its certificate failed: {e}"),
        }
    }

    async fn list(&self, pool: &str) {
        let outcome = self.call(pool, None, ProviderCall::List).await;
        let mut gone = vec![];
        let mut lost = vec![];
        {
            let mut inner = self.lock();
            let Some(p) = inner.pools.get_mut(pool) else {
                return;
            };
            p.listing = false;
            p.last_list = Some(Instant::now());
            let Ok(ProviderReply::Machines(machines)) = outcome.result else {
                return;
            };
            for n in p.nodes.values_mut() {
                let found = machines.iter().find(|m| {
                    n.row.provider_id.as_deref() == Some(m.id.as_str())
                        || (n.row.provider_id.is_none() && m.node == n.row.node)
                });
                match found {
                    Some(m) => {
                        n.missing = 0;
                        n.machine = Some(m.clone());
                        // A machine made before a crash or a failed create: adopted by
                        // its node's name, whatever the node's phase, so it can always
                        // be deleted.
                        if n.row.provider_id.is_none() {
                            n.row.provider_id = Some(m.id.clone());
                            if n.row.phase == PoolNodePhase::Creating {
                                n.row.phase = PoolNodePhase::Joining;
                            }
                            n.restored = false;
                            n.busy = false;
                            self.persist(n.row.clone());
                        }
                    }
                    // Two lists in a row without it (one may have started before the
                    // create it should show).
                    None if n.restored => {
                        n.missing += 1;
                        if n.missing >= 2 {
                            lost.push(n.row.node.clone());
                        }
                    }
                    None if n.row.provider_id.is_some()
                        && matches!(
                            n.row.phase,
                            PoolNodePhase::Joining | PoolNodePhase::Member
                        ) =>
                    {
                        n.machine = None;
                        n.missing += 1;
                        // A node whose agent is connected is there, whatever the list
                        // says (a provider's list can lag): it is not given up.
                        let connected = self.registry.get(&n.row.node).is_some_and(|v| v.connected);
                        if n.missing >= 2 && !connected && !n.busy {
                            // Deleted like any other (delete is idempotent): its
                            // tokens and certificates revoked, its entry forgotten.
                            n.row.phase = PoolNodePhase::Deleting;
                            n.row.reason =
                                Some("its machine is gone from the provider's list".into());
                            n.row.replace_ms = Some(unix_ms());
                            self.persist(n.row.clone());
                            gone.push(n.row.node.clone());
                        }
                    }
                    None => {}
                }
            }
        }
        for node in lost {
            self.drop_node(pool, &node).await;
            self.event(
                pool,
                Some(&node),
                "lost",
                "ok",
                format!("{node}'s create did not finish (a failure, or the coordinator stopped), and its provider has no such machine"),
                None,
            );
        }
        for node in gone {
            self.event(
                pool,
                Some(&node),
                "vanish",
                "ok",
                format!("{node}'s machine is gone from its provider's list; deleting what is left and replacing it"),
                None,
            );
        }
        self.wake.notify_one();
    }

    fn user_data(&self, cfg: &PoolSection, pool: &str, node: &str, token: &str) -> String {
        let join = self.join.as_ref();
        let mut out = cfg.user_data.clone();
        for (k, v) in [
            ("join_token", token),
            ("join_url", join.map_or("", |j| j.url.as_str())),
            ("coordinator", join.map_or("", |j| j.coordinator.as_str())),
            ("ca_pem", self.tokens.ca_pem().unwrap_or_default()),
            ("node", node),
            ("pool", pool),
        ] {
            out = out.replace(&format!("{{{k}}}"), v);
        }
        out
    }

    // --- What the API asks ----------------------------------------------------------

    fn summary(&self, name: &str, p: &mut PoolState) -> PoolSummary {
        let cfg = &self.sections[name];
        let ready = p
            .nodes
            .values()
            .filter(|n| {
                n.row.phase == PoolNodePhase::Member
                    && self
                        .registry
                        .get(&n.row.node)
                        .is_some_and(|v| v.liveness == Liveness::Ready)
            })
            .count() as u32;
        let halted = self
            .load_failures
            .get(&cfg.provider)
            .map(|why| format!("its provider plugin {} did not load: {why}", cfg.provider))
            .or_else(|| p.halted.clone())
            .or_else(|| {
                p.wait
                    .as_ref()
                    .filter(|(t, _)| *t > Instant::now())
                    .map(|(t, why)| {
                        format!(
                            "waiting {}: {why}",
                            fmt_ms(t.saturating_duration_since(Instant::now()).as_millis() as u64)
                        )
                    })
            });
        PoolSummary {
            name: name.to_string(),
            provider: cfg.provider.clone(),
            min: cfg.min,
            max: cfg.max,
            size: p.active() as u32,
            ready,
            paused: p.state.paused_by.is_some(),
            failures: p.failures,
            halted,
            api_calls_last_hour: p.calls_last_hour(Instant::now()),
            api_calls_per_hour: cfg.api_calls_per_hour,
        }
    }

    /// Every pool, by name.
    pub fn summaries(&self) -> Vec<PoolSummary> {
        let mut inner = self.lock();
        let names: Vec<String> = inner.pools.keys().cloned().collect();
        names
            .iter()
            .filter_map(|n| inner.pools.get_mut(n).map(|p| self.summary(n, p)))
            .collect()
    }

    /// One pool in full.
    pub fn view(&self, name: &str) -> Result<PoolView, PoolError> {
        let mut inner = self.lock();
        let Some(p) = inner.pools.get_mut(name) else {
            drop(inner);
            return Err(self.unknown(name));
        };
        let summary = self.summary(name, p);
        let nodes = p
            .nodes
            .values()
            .map(|n| PoolNodeView {
                node: n.row.node.clone(),
                provider_id: n.row.provider_id.clone(),
                phase: n.row.phase,
                machine: n.machine.clone(),
                liveness: self
                    .registry
                    .get(&n.row.node)
                    .map(|v| v.liveness.as_str().to_string()),
                created_ms: n.row.created_ms,
                joined_ms: n.row.joined_ms,
                reason: n.row.reason.clone(),
            })
            .collect();
        Ok(PoolView {
            summary,
            provider_info: self
                .host
                .details(&self.sections[name].provider)
                .map(|d| d.info.clone()),
            nodes,
            actions: p.actions.iter().rev().cloned().collect(),
        })
    }

    /// Pauses (`by` set) or resumes a pool. Resuming also lifts a halt and forgets the
    /// failures that caused it.
    pub async fn set_paused(&self, name: &str, by: Option<&str>) -> Result<PoolSummary, PoolError> {
        let previous = {
            let mut inner = self.lock();
            let Some(p) = inner.pools.get_mut(name) else {
                drop(inner);
                return Err(self.unknown(name));
            };
            let previous = (p.state.clone(), p.halted.clone(), p.failures);
            match by {
                Some(user) => {
                    p.state.paused_by = Some(user.to_string());
                    p.state.paused_ms = Some(unix_ms());
                }
                None => {
                    p.state.paused_by = None;
                    p.state.paused_ms = None;
                    p.halted = None;
                    p.failures = 0;
                    p.wait = None;
                }
            }
            previous
        };
        if let Err(e) = self.persist_state(name).await {
            if let Some(p) = self.lock().pools.get_mut(name) {
                (p.state, p.halted, p.failures) = previous;
            }
            return Err(PoolError::Store(format!("{e:#}")));
        }
        let (action, message) = match by {
            Some(user) => (
                "pause",
                format!("paused by {user}: it creates and deletes nothing until resumed"),
            ),
            None => (
                "resume",
                match &previous.1 {
                    Some(h) => format!("resumed; it had {h}"),
                    None => "resumed".into(),
                },
            ),
        };
        self.event(name, None, action, "ok", message, None);
        self.wake.notify_one();
        let mut inner = self.lock();
        let p = inner.pools.get_mut(name).expect("checked above");
        Ok(self.summary(name, p))
    }

    /// `corral tokens create --join --pool POOL`: a token for one node of `pool`.
    pub async fn create_join_token(
        &self,
        pool: &str,
        node: Option<String>,
        ttl: Duration,
        by: &str,
    ) -> Result<CreatedJoinToken, PoolError> {
        if !self.sections.contains_key(pool) {
            return Err(self.unknown(pool));
        }
        if let Some(n) = &node {
            if self.registry.knows(n) {
                return Err(PoolError::Join(JoinError::BadRequest(format!(
                    "--node {n}: a node of that name exists already; leave --node out and the pool names the node"
                ))));
            }
            corral_proto::names::validate_name(n).map_err(|e| {
                PoolError::Join(JoinError::BadRequest(format!("--node {n:?}: {e}")))
            })?;
        }
        Ok(self.tokens.create(pool, node, ttl, by).await?)
    }

    /// `POST /api/v1/join`: a new node's request, authenticated by its join token.
    pub async fn join(&self, token: &str, csr_pem: &str) -> Result<JoinAnswer, PoolError> {
        let (pool, mut answer) = self
            .tokens
            .redeem(token, csr_pem, |pool, node| self.assign(pool, node))
            .await?;
        answer.coordinator = self
            .join
            .as_ref()
            .map(|j| j.coordinator.clone())
            .unwrap_or_default();
        self.event(
            &pool,
            Some(&answer.node),
            "token",
            "ok",
            format!(
                "{} was issued its certificate with a join token",
                answer.node
            ),
            None,
        );
        Ok(answer)
    }

    /// The node a join token admits into `pool`: `requested` (the token's node) when the
    /// pool made or admits it and it has not joined yet, else the pool's next free name
    /// for a node joining by hand, which becomes a member with no machine the pool could
    /// delete. Never a name another node already has.
    fn assign(&self, pool: &str, requested: Option<&str>) -> Result<String, JoinError> {
        let Some(cfg) = self.sections.get(pool) else {
            return Err(JoinError::BadRequest(format!(
                "the token's pool {pool:?} is no longer configured"
            )));
        };
        let mut inner = self.lock();
        let Some(p) = inner.pools.get_mut(pool) else {
            return Err(JoinError::BadRequest(format!("no pool {pool:?}")));
        };
        if let Some(n) = requested {
            match p.nodes.get(n).map(|x| x.row.phase) {
                Some(PoolNodePhase::Creating | PoolNodePhase::Joining) => return Ok(n.to_string()),
                Some(phase) => {
                    return Err(JoinError::BadRequest(format!(
                        "node {n} of pool {pool} is {} already; its join token is spent",
                        phase.as_str()
                    )))
                }
                None if self.registry.knows(n) => {
                    return Err(JoinError::BadRequest(format!(
                        "a node named {n} exists already; a join token cannot give its name to another machine"
                    )))
                }
                None => {}
            }
        }
        if p.active() >= cfg.max as usize {
            return Err(JoinError::BadRequest(format!(
                "pool {pool} already has {} nodes, its max; raise pools.{pool}.max to add more",
                cfg.max
            )));
        }
        let node = match requested {
            Some(n) => n.to_string(),
            None => next_name(pool, p, &self.registry),
        };
        let row = PoolNodeRow {
            pool: pool.to_string(),
            node: node.clone(),
            provider_id: None,
            phase: PoolNodePhase::Joining,
            created_ms: unix_ms(),
            joined_ms: None,
            reason: None,
            replace_ms: None,
        };
        p.nodes.insert(node.clone(), PoolNode::new(row.clone()));
        // Queued under the lock, before the token's use is written: in order.
        let state = self
            .store
            .queue_record(RecordKind::PoolState, pool, Some(&p.state));
        drop(inner);
        let written = self
            .store
            .queue_record(RecordKind::PoolNode, &node, Some(&row));
        tokio::spawn(async move {
            for (what, r) in [("counter", state.await), ("node", written.await)] {
                if let Err(e) = r {
                    warn!(error = %format!("{e:#}"), what, "writing a joined pool node failed");
                }
            }
        });
        Ok(node)
    }

    /// The configured pool names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.sections.keys().map(String::as_str)
    }

    /// The loaded provider plugins' own descriptions.
    pub fn provider_info(&self, plugin: &str) -> Option<ProviderInfo> {
        self.host.details(plugin).map(|d| d.info.clone())
    }

    pub(crate) fn metrics(&self) -> PoolMetrics {
        let mut m = PoolMetrics::default();
        let summaries = self.summaries();
        let inner = self.lock();
        m.actions = inner.counts.clone();
        for (name, p) in &inner.pools {
            for n in p.nodes.values() {
                *m.nodes
                    .entry((name.clone(), n.row.phase.as_str()))
                    .or_default() += 1;
            }
        }
        drop(inner);
        for s in summaries {
            let halted = s
                .halted
                .as_deref()
                .is_some_and(|h| !h.starts_with("waiting"));
            m.pools.insert(
                s.name.clone(),
                (s.min, s.ready, s.failures, halted, s.paused),
            );
        }
        m
    }
}

/// The longest a rate limit is waited out, whatever the API says (a reset in the wrong
/// unit must not stall a pool for days).
const MAX_RATE_WAIT: Duration = Duration::from_secs(3600);

/// Waits until `until` unless a longer wait is already set.
fn wait_until(p: &mut PoolState, until: Instant, why: String) {
    if p.wait.as_ref().is_none_or(|(t, _)| *t < until) {
        p.wait = Some((until, why));
    }
}

/// Books a failed action of the pool: one more in a row, its backoff, and the halt at
/// `max_failures` (returned, to be said once).
fn book_failure(
    p: &mut PoolState,
    cfg: &PoolSection,
    pool: &str,
    action: &str,
    error: &str,
    now: Instant,
) -> Option<String> {
    p.failures += 1;
    let backoff = Duration::from_secs(1)
        .saturating_mul(1u32 << (p.failures - 1).min(6))
        .min(MAX_BACKOFF);
    wait_until(
        p,
        now + backoff,
        format!("backing off after a failed {action}"),
    );
    if p.failures >= cfg.max_failures && p.halted.is_none() {
        let why = format!(
            "stopped after {} provider failures in a row (max_failures); the last: {action}: {error}; fix the cause, then `corral pool {pool} resume`",
            p.failures
        );
        p.halted = Some(why.clone());
        return Some(why);
    }
    None
}

fn read_secret(path: &Path) -> Result<std::sync::Arc<str>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the pool's secret_file {}: {e}", path.display()))?;
    let t = text.trim();
    if t.is_empty() {
        return Err(format!(
            "the pool's secret_file {} is empty; write the provider's API token there",
            path.display()
        ));
    }
    Ok(t.into())
}

/// The pool's next node name that no node has: `POOL-N`, `N` counting up and never
/// reused (a node added by hand may already hold a name the counter reaches).
fn next_name(pool: &str, p: &mut PoolState, registry: &Registry) -> String {
    loop {
        let node = format!("{pool}-{}", p.state.next_index);
        p.state.next_index += 1;
        if !p.nodes.contains_key(&node) && !registry.knows(&node) {
            return node;
        }
    }
}

/// `N` of a node named `POOL-N`.
fn index_of(pool: &str, node: &str) -> Option<u64> {
    node.strip_prefix(pool)?.strip_prefix('-')?.parse().ok()
}

/// Whether a machine created at `created_ms` starts a new billed hour within `margin`
/// of `now_ms` (at most half an hour).
fn before_next_hour(created_ms: u64, now_ms: u64, margin: Duration) -> bool {
    let hour = 3_600_000u64;
    let margin = (margin.as_millis() as u64).min(hour / 2);
    let age = now_ms.saturating_sub(created_ms);
    let into = age % hour;
    age >= hour - margin && into >= hour - margin
}

fn fmt_ms(ms: u64) -> String {
    if ms < 10_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        humantime::format_duration(Duration::from_secs(ms / 1000)).to_string()
    }
}

fn push_action(
    actions: &mut VecDeque<PoolAction>,
    at_ms: u64,
    action: &str,
    node: Option<&str>,
    outcome: &str,
    message: String,
    elapsed_ms: Option<u64>,
) {
    if actions.len() >= ACTIONS_KEPT {
        actions.pop_front();
    }
    actions.push_back(PoolAction {
        at_ms,
        action: action.to_string(),
        node: node.map(str::to_string),
        outcome: outcome.to_string(),
        message,
        elapsed_ms,
    });
}

fn count(
    counts: &mut BTreeMap<(String, &'static str, &'static str), u64>,
    pool: &str,
    action: &'static str,
    outcome: &'static str,
) {
    *counts
        .entry((pool.to_string(), action, outcome))
        .or_default() += 1;
}

/// The event's `to` for an action and its outcome: `create`, `create-failed`...
fn action_event(action: &'static str, outcome: &'static str) -> &'static str {
    match (action, outcome) {
        (a, "ok") => a,
        ("create", "failed") => "create-failed",
        ("delete", "failed") => "delete-failed",
        ("list", "failed") => "list-failed",
        ("drain", "failed") => "drain-failed",
        (_, "rate-limited") => "rate-limited",
        (_, _) => "failed",
    }
}
