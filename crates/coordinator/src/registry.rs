//! The coordinator's registry: every node ever seen, its liveness, health and latest
//! report, and the events that record how those changed.
//!
//! Liveness state machine (per node):
//! ```text
//!            beat                       no beat for N × beat_interval,
//!   (new) ──────────▶ ready ──────────────────────────────────────────▶ disconnected
//!                       ▲      or the connection is lost                   │
//!                       │ beat                                             │ no beat for
//!                       └──────────────── disconnected / down ◀────────────┘ down_after
//! ```
//! Invariants:
//! - The registry is the source of truth while the coordinator runs; the database
//!   (the coordinator's store) is a write-behind copy. A node enters the database on its first
//!   report or liveness change and never leaves it: a node that does not come back is
//!   `down`, not forgotten.
//! - After a restart, nodes loaded from the database are `disconnected` (they are not
//!   connected to *this* process) with their liveness clock started at load, so they
//!   become `down` after `down_after` unless they return; nodes already `down` stay down.
//! - Only the connection that currently owns a node may change it: a late message or
//!   close from a replaced connection is ignored (connection ids).
//! - Every liveness or health change produces exactly one [`Event`].
//! - The cluster's Ray head is the last one an *authorized* node announced
//!   (`AgentMsg::RayHead` from a node in `coordinator.ray_heads`, see [`Authority`]);
//!   only the node that announced it can withdraw it. An announcement from any other
//!   node is refused (logged, counted), changes nothing and is pushed to no one: the
//!   workers keep their head. Every change is pushed to every connected agent, and a
//!   connecting agent gets the current head first, so workers never poll for it. Pushes
//!   use `try_send`: a full command queue drops the push, and the next change or
//!   reconnect brings the agent up to date.
//! - A node's scheduler plugins are what its *current* connection announced
//!   (`AgentMsg::Plugins`): a new connection starts with none announced, so the
//!   coordinator never routes a plugin call on the strength of what an earlier agent
//!   process had loaded. The last announcement is kept after a disconnect, for display.
//!   A plugin the node is not authorized to serve (`[schedulers.NAME] nodes`) is kept
//!   in the announcement as not authorized (shown, logged, counted) and never hosted:
//!   [`Registry::plugin_hosts`] lists only authorized hosts, in the configured order,
//!   so nothing is routed by who announced first or by name.
//! - Events about a node are rate-limited per node ([`crate::bounds::EVENTS_PER_MINUTE`]):
//!   one node cannot flush the shared event history. State still changes; only the event
//!   is not recorded, counted per node, and the node's next recorded event says how many
//!   were not. Audit events (what someone did through the API) and remediation events
//!   (what was drained and why) are never limited.
//! - The registry holds no transport: a connection is its command queue and a close
//!   handle the connection task gives it (`OnReplaced`), called once when a newer
//!   connection of the same node takes over.
//! - Its node state is its own type; the API's [`NodeView`] and the store's `NodeRow`
//!   are made from it (and a `NodeRow` loaded back into it) by explicit conversions.
//!
//! Trade-off: one mutex guards the map. Every operation under it is O(1) except
//! the sweep and snapshots, which are O(nodes) and run a few times a second;
//! measured in BENCHMARKS.md this is far from the limit at 10,000 nodes, and it keeps
//! transitions atomic without lock ordering puzzles.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::bounds::{EventBudget, EVENTS_PER_MINUTE};
use crate::config::Authority;
use crate::latency::LatencyHistogram;
use crate::store::{EventRow, NodeRow};
use corral_proto::api::{
    Cordon, Event, EventKind, GpuCell, LatencySummary, NodePlugins, NodeSummary, NodeView,
    RefusedInput, StatsView,
};
use corral_proto::job::{LoadFailure, LoadedPlugin};
use corral_proto::model::{
    unix_ms, unix_ns, HealthStatus, Liveness, NodeReport, RayRole, RayState, Reason,
};
use corral_proto::wire::{Beat, CoordMsg, RayHead};

/// Liveness timing.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub disconnect_after_beats: u32,
    pub down_after: Duration,
    /// A node's report is re-persisted at most this often unless its state changed.
    pub persist_every: Duration,
    /// Events kept in memory for the API (the database keeps the same number).
    pub event_retention: usize,
}

/// What a node's connection announced.
struct Announced {
    at_ms: u64,
    loaded: Vec<LoadedPlugin>,
    failed: Vec<LoadFailure>,
    /// Loaded plugins this node is not authorized to serve.
    refused: Vec<String>,
}

/// Ends a connection that a newer one of the same node replaced (the connection task
/// knows how: for QUIC, a close with the `Replaced` code).
pub(crate) type OnReplaced = Box<dyn FnOnce() + Send>;

/// What the remediation reads of a node each policy tick: no report, so that four
/// looks a second at 10,000 nodes copy their health and nothing else.
#[derive(Debug, Clone)]
pub(crate) struct NodeHealth {
    pub name: String,
    pub liveness: Liveness,
    /// The current connection's id: a new id is a new agent connection, even one that
    /// replaced the old before it closed.
    pub conn: Option<u64>,
    /// The node's `unhealthy` reasons.
    pub unhealthy: Vec<Reason>,
    /// Its Ray process's role and state, from its last report.
    pub ray: Option<(RayRole, RayState)>,
}

/// A node's live connection.
struct Conn {
    id: u64,
    beat_interval: Duration,
    commands: mpsc::Sender<CoordMsg>,
    on_replaced: OnReplaced,
}

/// A node as the registry tracks it.
struct Node {
    name: String,
    liveness: Liveness,
    liveness_since_ms: u64,
    health: HealthStatus,
    reasons: Vec<Reason>,
    /// Of the current or last connection.
    address: Option<String>,
    agent_version: Option<String>,
    first_seen_ms: u64,
    last_beat_ms: Option<u64>,
    last_report_ms: Option<u64>,
    report: Option<NodeReport>,
    /// Monotonic time of the last beat (or of load / connect), for liveness.
    last_alive: Instant,
    last_persisted: Option<Instant>,
    conn: Option<Conn>,
    plugins: Option<Announced>,
    /// This node's event rate.
    events: EventBudget,
    /// Reports cut to the caps since the coordinator started.
    truncated_reports: u64,
    /// Set by the remediation ([`crate::remediation`], which keeps it in the database).
    cordon: Option<Cordon>,
}

impl Node {
    fn new(name: &str, now_ms: u64) -> Node {
        Node {
            name: name.to_string(),
            liveness: Liveness::Ready,
            liveness_since_ms: now_ms,
            health: HealthStatus::Healthy,
            reasons: vec![],
            address: None,
            agent_version: None,
            first_seen_ms: now_ms,
            last_beat_ms: None,
            last_report_ms: None,
            report: None,
            last_alive: Instant::now(),
            last_persisted: None,
            conn: None,
            plugins: None,
            events: EventBudget::new(Instant::now()),
            truncated_reports: 0,
            cordon: None,
        }
    }

    /// A node loaded from the database: not connected to this process, liveness clock
    /// started `now`.
    fn from_row(row: NodeRow, now: Instant) -> Node {
        Node {
            name: row.name,
            liveness: row.liveness,
            liveness_since_ms: row.liveness_since_ms,
            health: row.health,
            reasons: row.reasons,
            address: row.address,
            agent_version: row.agent_version,
            first_seen_ms: row.first_seen_ms,
            last_beat_ms: row.last_beat_ms,
            last_report_ms: row.last_report_ms,
            report: row.report,
            last_alive: now,
            last_persisted: Some(now),
            conn: None,
            plugins: None,
            events: EventBudget::new(now),
            truncated_reports: 0,
            cordon: None,
        }
    }

    fn row(&self) -> NodeRow {
        NodeRow {
            name: self.name.clone(),
            liveness: self.liveness,
            liveness_since_ms: self.liveness_since_ms,
            health: self.health,
            reasons: self.reasons.clone(),
            connected: self.conn.is_some(),
            address: self.address.clone(),
            agent_version: self.agent_version.clone(),
            first_seen_ms: self.first_seen_ms,
            last_beat_ms: self.last_beat_ms,
            last_report_ms: self.last_report_ms,
            report: self.report.clone(),
        }
    }

    fn view(&self) -> NodeView {
        NodeView {
            name: self.name.clone(),
            liveness: self.liveness,
            liveness_since_ms: self.liveness_since_ms,
            health: self.health,
            reasons: self.reasons.clone(),
            connected: self.conn.is_some(),
            address: self.address.clone(),
            agent_version: self.agent_version.clone(),
            first_seen_ms: self.first_seen_ms,
            last_beat_ms: self.last_beat_ms,
            last_report_ms: self.last_report_ms,
            report: self.report.clone(),
            cordon: self.cordon.clone(),
        }
    }

    /// What the web console shows of it ([`crate::console`]), in whole units.
    fn summary(&self) -> NodeSummary {
        let report = self.report.as_ref();
        let pct = corral_proto::model::whole_percent;
        NodeSummary {
            name: self.name.clone(),
            liveness: self.liveness,
            health: self.health,
            reasons: self.reasons.clone(),
            cordoned: self.cordon.is_some(),
            cpu: report.map(|r| r.host.cpu_percent.clamp(0.0, 100.0).round() as u8),
            mem: report.and_then(|r| pct(r.host.memory.used_bytes, r.host.memory.total_bytes)),
            ray: report.and_then(|r| r.ray.as_ref()).map(|r| r.role),
            ray_state: report.and_then(|r| r.ray.as_ref()).map(|r| r.state),
            schedulers: self
                .plugins
                .as_ref()
                .map(|a| {
                    a.loaded
                        .iter()
                        .map(|p| p.info.name.clone())
                        .filter(|p| !a.refused.contains(p))
                        .collect()
                })
                .unwrap_or_default(),
            gpus: report
                .map(|r| {
                    r.gpus
                        .iter()
                        .map(|g| GpuCell {
                            index: g.index,
                            model: g.name.clone(),
                            util: g.utilization_percent.map(|u| u.min(100) as u8),
                            mem: match (g.memory_used_bytes, g.memory_total_bytes) {
                                (Some(u), Some(t)) => pct(u, t),
                                _ => None,
                            },
                            temp: g.temperature_celsius.map(|t| t.min(u16::MAX as u32) as u16),
                            power: g
                                .power_watts
                                .map(|w| w.clamp(0.0, u16::MAX as f64).round() as u16),
                            status: g.health.status,
                            xid: g.health.xid_last,
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    fn health(&self) -> NodeHealth {
        NodeHealth {
            name: self.name.clone(),
            liveness: self.liveness,
            conn: self.conn.as_ref().map(|c| c.id),
            unhealthy: self
                .reasons
                .iter()
                .filter(|r| r.status == HealthStatus::Unhealthy)
                .cloned()
                .collect(),
            ray: self
                .report
                .as_ref()
                .and_then(|r| r.ray.as_ref())
                .map(|r| (r.role, r.state)),
        }
    }

    fn owned_by(&self, conn: u64) -> bool {
        self.conn.as_ref().map(|c| c.id) == Some(conn)
    }
}

fn event_row(e: &Event) -> EventRow {
    EventRow {
        id: e.id,
        at_ms: e.at_ms,
        node: e.node.clone(),
        kind: e.kind.as_str().to_string(),
        from: e.from.clone(),
        to: e.to.clone(),
        message: e.message.clone(),
    }
}

fn event_from_row(row: EventRow) -> Event {
    Event {
        id: row.id,
        at_ms: row.at_ms,
        node: row.node,
        // A kind this version does not know (a newer corral wrote it) reads as liveness.
        kind: EventKind::parse(&row.kind).unwrap_or(EventKind::Liveness),
        from: row.from,
        to: row.to,
        message: row.message,
    }
}

struct Inner {
    /// Boxed: a node is about a kilobyte, and a hash table keeps up to half its slots
    /// empty after it grows; empty slots of boxes cost 8 bytes, not a node each.
    nodes: HashMap<String, Box<Node>>,
    dirty: HashSet<String>,
    /// Nodes whose [`NodeSummary`] may have changed since the console feed last looked
    /// (a superset: the feed sends only real changes).
    changed: HashSet<String>,
    events: VecDeque<Event>,
    unpersisted_events: Vec<Event>,
    next_event_id: u64,
    next_conn_id: u64,
    event_retention: usize,
    ray_head: Option<RayHead>,
}

/// Counters for the API and `/metrics`, cumulative since the coordinator started.
struct Stats {
    beats: AtomicU64,
    reports: AtomicU64,
    bytes_in: AtomicU64,
    rejected: Mutex<HashMap<&'static str, u64>>,
    /// Announcements refused for lack of authority, by kind.
    refused_announcements: Mutex<HashMap<&'static str, u64>>,
    /// Command results that came on another connection than their command.
    foreign_results: AtomicU64,
    /// Beat send → registry update (agent and coordinator clocks; only meaningful when
    /// they share a host, as in the load harness).
    apply_latency: LatencyHistogram,
}

pub struct Registry {
    inner: Mutex<Inner>,
    settings: Settings,
    stats: Stats,
    /// Who may announce what; nothing unless configured.
    authority: Authority,
}

impl Registry {
    pub(crate) fn new(settings: Settings, loaded: Vec<NodeRow>, events: Vec<EventRow>) -> Registry {
        let now = Instant::now();
        let now_ms = unix_ms();
        let next_event_id = events.iter().map(|e| e.id).max().unwrap_or(0) + 1;
        let mut inner = Inner {
            nodes: HashMap::new(),
            dirty: HashSet::new(),
            changed: HashSet::new(),
            events: events.into_iter().map(event_from_row).collect(),
            unpersisted_events: vec![],
            next_event_id,
            next_conn_id: 1,
            event_retention: settings.event_retention.max(1),
            ray_head: None,
        };
        for row in loaded {
            let mut node = Node::from_row(row, now);
            let name = node.name.clone();
            if node.liveness == Liveness::Ready {
                let from = node.liveness;
                node.liveness = Liveness::Disconnected;
                node.liveness_since_ms = now_ms;
                push_event(
                    &mut inner,
                    &name,
                    EventKind::Liveness,
                    Some(from.as_str()),
                    Liveness::Disconnected.as_str(),
                    "coordinator restarted; waiting for the node to reconnect".into(),
                );
                inner.dirty.insert(name.clone());
            }
            inner.changed.insert(name.clone());
            inner.nodes.insert(name, Box::new(node));
        }
        Registry {
            inner: Mutex::new(inner),
            settings,
            stats: Stats {
                beats: AtomicU64::new(0),
                reports: AtomicU64::new(0),
                bytes_in: AtomicU64::new(0),
                rejected: Mutex::new(HashMap::new()),
                refused_announcements: Mutex::new(HashMap::new()),
                foreign_results: AtomicU64::new(0),
                apply_latency: LatencyHistogram::new(),
            },
            authority: Authority::default(),
        }
    }

    /// This registry, letting nodes announce what `authority` allows (a new registry
    /// allows nothing).
    pub(crate) fn with_authority(mut self, authority: Authority) -> Registry {
        self.authority = authority;
        self
    }

    /// Who may announce what.
    pub(crate) fn authority(&self) -> &Authority {
        &self.authority
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock would be a bug; the data stays usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a new connection for `name`; returns its id. A previous connection of
    /// the same node is ended as replaced (its `on_replaced` is called).
    pub(crate) fn connect(
        &self,
        name: &str,
        beat_interval: Duration,
        address: String,
        agent_version: String,
        commands: mpsc::Sender<CoordMsg>,
        on_replaced: OnReplaced,
    ) -> u64 {
        let mut inner = self.lock();
        let id = inner.next_conn_id;
        inner.next_conn_id += 1;
        let now_ms = unix_ms();
        let is_new = !inner.nodes.contains_key(name);
        // The current Ray head goes first, before anything else queued for this agent.
        if let Some(head) = &inner.ray_head {
            let _ = commands.try_send(CoordMsg::HeadChanged {
                head: Some(head.clone()),
            });
        }
        let node = inner
            .nodes
            .entry(name.to_string())
            .or_insert_with(|| Box::new(Node::new(name, now_ms)));
        if let Some(old) = node.conn.take() {
            (old.on_replaced)();
        }
        // What this agent process hosts is known once it says so.
        node.plugins = None;
        node.address = Some(address.clone());
        node.agent_version = Some(agent_version);
        node.conn = Some(Conn {
            id,
            beat_interval,
            commands,
            on_replaced,
        });
        node.last_alive = Instant::now();
        inner.dirty.insert(name.to_string());
        inner.changed.insert(name.to_string());
        let why = format!("connected from {address}");
        if is_new {
            tracing::info!(node = name, %address, "new node registered");
            push_event(
                &mut inner,
                name,
                EventKind::Liveness,
                None,
                Liveness::Ready.as_str(),
                format!("new node, {why}"),
            );
        } else {
            self.set_liveness(&mut inner, name, Liveness::Ready, why);
        }
        id
    }

    /// Applies a beat. Returns false if `conn` no longer owns the node.
    pub(crate) fn beat(&self, name: &str, conn: u64, beat: &Beat) -> bool {
        let mut inner = self.lock();
        let Some(node) = inner.nodes.get_mut(name) else {
            return false;
        };
        if !node.owned_by(conn) {
            return false;
        }
        node.last_alive = Instant::now();
        node.last_beat_ms = Some(unix_ms());
        let was = node.liveness;
        if was != Liveness::Ready {
            self.set_liveness(&mut inner, name, Liveness::Ready, "beating".into());
        }
        drop(inner);
        self.stats.beats.fetch_add(1, Relaxed);
        let latency_us = unix_ns().saturating_sub(beat.sent_at_ns) / 1000;
        self.stats.apply_latency.record(latency_us.max(1));
        true
    }

    /// Applies a full report (already checked to be about `name`).
    pub(crate) fn report(&self, name: &str, conn: u64, report: NodeReport) -> bool {
        let mut inner = self.lock();
        let persist_every = self.settings.persist_every;
        let Some(node) = inner.nodes.get_mut(name) else {
            return false;
        };
        if !node.owned_by(conn) {
            return false;
        }
        let now_ms = unix_ms();
        node.last_alive = Instant::now();
        node.last_report_ms = Some(now_ms);
        node.last_beat_ms = Some(now_ms);
        let old_health = node.health;
        let first_report = node.report.is_none();
        let new_health = report.health.status;
        let gpu_changes = gpu_health_changes(node.report.as_ref(), &report);
        node.reasons = report.health.reasons.clone();
        node.health = new_health;
        node.report = Some(report);
        let stale = node
            .last_persisted
            .is_none_or(|t| t.elapsed() >= persist_every);
        let was = node.liveness;
        if first_report || stale || old_health != new_health || !gpu_changes.is_empty() {
            inner.dirty.insert(name.to_string());
        }
        inner.changed.insert(name.to_string());
        for (from, to, message) in gpu_changes {
            tracing::info!(node = name, from = from.as_deref().unwrap_or("-"), to = %to, %message, "GPU health changed");
            push_event(
                &mut inner,
                name,
                EventKind::Gpu,
                from.as_deref(),
                &to,
                message,
            );
        }
        if old_health != new_health || (first_report && new_health != HealthStatus::Healthy) {
            let reasons = inner.nodes[name]
                .reasons
                .iter()
                .map(|r| r.message.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            let message = if reasons.is_empty() {
                "all checks pass".into()
            } else {
                reasons
            };
            push_event(
                &mut inner,
                name,
                EventKind::Health,
                Some(old_health.as_str()),
                new_health.as_str(),
                message,
            );
        }
        if was != Liveness::Ready {
            self.set_liveness(&mut inner, name, Liveness::Ready, "reporting".into());
        }
        drop(inner);
        self.stats.reports.fetch_add(1, Relaxed);
        true
    }

    /// `name` announces its Ray head ready (`Some`) or gone (`None`). Returns false when
    /// ignored (stale connection, a withdrawal of another node's head) or refused (a
    /// node not in `coordinator.ray_heads`).
    pub(crate) fn ray_head_announced(&self, name: &str, conn: u64, head: Option<RayHead>) -> bool {
        let mut inner = self.lock();
        let owns = inner.nodes.get(name).is_some_and(|n| n.owned_by(conn));
        if !owns {
            return false;
        }
        if let (Some(h), false) = (&head, self.authority.may_announce_head(name)) {
            drop(inner);
            tracing::warn!(
                node = name,
                address = %h.address,
                key = "coordinator.ray_heads",
                "Ray head announcement refused: the node is not authorized to be a Ray head; workers keep their head (list the node in coordinator.ray_heads if it should be one)"
            );
            self.count_refused_announcement("ray_head", 1);
            return false;
        }
        let head = head.map(|mut h| {
            // The certificate's name, whatever the message says.
            h.node = name.to_string();
            h
        });
        let current_is_ours = inner.ray_head.as_ref().is_some_and(|h| h.node == name);
        if head.is_none() && !current_is_ours {
            return false;
        }
        if inner.ray_head == head {
            return true;
        }
        match &head {
            Some(h) => {
                tracing::info!(node = name, address = %h.address, python = %h.python, ray = %h.ray, "ray head ready")
            }
            None => tracing::info!(node = name, "ray head withdrawn"),
        }
        inner.ray_head = head.clone();
        for n in inner.nodes.values() {
            if let Some(c) = &n.conn {
                let _ = c
                    .commands
                    .try_send(CoordMsg::HeadChanged { head: head.clone() });
            }
        }
        true
    }

    /// `name`'s current connection announces its scheduler plugins. Returns false when
    /// ignored (a replaced connection).
    pub(crate) fn plugins_announced(
        &self,
        name: &str,
        conn: u64,
        loaded: Vec<LoadedPlugin>,
        failed: Vec<LoadFailure>,
    ) -> bool {
        let mut inner = self.lock();
        let Some(node) = inner.nodes.get_mut(name) else {
            return false;
        };
        if !node.owned_by(conn) {
            return false;
        }
        let mut refused = vec![];
        for p in &loaded {
            let plugin = p.info.name.as_str();
            if self.authority.may_serve(plugin, name) {
                tracing::info!(node = name, plugin, version = %p.info.version, digest = %p.digest, "node hosts scheduler plugin");
            } else {
                tracing::warn!(
                    node = name,
                    plugin,
                    version = %p.info.version,
                    digest = %p.digest,
                    key = %format!("schedulers.{plugin}.nodes"),
                    "scheduler plugin announcement refused: the node is not authorized to serve it, so it gets no calls (list the node in [schedulers.{plugin}] nodes if it should)"
                );
                refused.push(p.info.name.clone());
            }
        }
        for f in &failed {
            tracing::warn!(node = name, plugin = %f.name, error = %f.message, "plugin failed to load on node");
        }
        let refused_count = refused.len() as u64;
        node.plugins = Some(Announced {
            at_ms: unix_ms(),
            loaded,
            failed,
            refused,
        });
        inner.changed.insert(name.to_string());
        drop(inner);
        self.count_refused_announcement("scheduler", refused_count);
        true
    }

    fn count_refused_announcement(&self, kind: &'static str, n: u64) {
        if n == 0 {
            return;
        }
        if let Ok(mut m) = self.stats.refused_announcements.lock() {
            *m.entry(kind).or_default() += n;
        }
    }

    /// Every node that is connected or has announced plugins, sorted by name.
    pub(crate) fn plugins(&self) -> Vec<NodePlugins> {
        let inner = self.lock();
        let mut v: Vec<NodePlugins> = inner
            .nodes
            .iter()
            .filter(|(_, n)| n.conn.is_some() || n.plugins.is_some())
            .map(|(name, n)| NodePlugins {
                node: name.clone(),
                connected: n.conn.is_some(),
                announced_ms: n.plugins.as_ref().map(|a| a.at_ms),
                loaded: n
                    .plugins
                    .as_ref()
                    .map(|a| a.loaded.clone())
                    .unwrap_or_default(),
                failed: n
                    .plugins
                    .as_ref()
                    .map(|a| a.failed.clone())
                    .unwrap_or_default(),
                not_authorized: n
                    .plugins
                    .as_ref()
                    .map(|a| a.refused.clone())
                    .unwrap_or_default(),
            })
            .collect();
        drop(inner);
        v.sort_by(|a, b| a.node.cmp(&b.node));
        v
    }

    /// Connected nodes authorized to serve `plugin` whose current connection announced
    /// it, in the order of preference: the order of `[schedulers.PLUGIN] nodes`, nodes
    /// covered by the same `"*"` by name. New submissions go to the first.
    pub fn plugin_hosts(&self, plugin: &str) -> Vec<String> {
        let inner = self.lock();
        let mut v: Vec<(usize, String)> = inner
            .nodes
            .iter()
            .filter(|(_, n)| {
                n.conn.is_some()
                    && n.plugins
                        .as_ref()
                        .is_some_and(|a| a.loaded.iter().any(|p| p.info.name == plugin))
            })
            .filter_map(|(name, _)| {
                self.authority
                    .scheduler_rank(plugin, name)
                    .map(|rank| (rank, name.clone()))
            })
            .collect();
        drop(inner);
        v.sort();
        v.into_iter().map(|(_, name)| name).collect()
    }

    /// The cluster's current Ray head.
    #[cfg(test)]
    fn ray_head(&self) -> Option<RayHead> {
        self.lock().ray_head.clone()
    }

    /// The connection `conn` of `name` ended.
    pub(crate) fn disconnect(&self, name: &str, conn: u64, reason: &str) {
        let mut inner = self.lock();
        let Some(node) = inner.nodes.get_mut(name) else {
            return;
        };
        if !node.owned_by(conn) {
            return;
        }
        node.conn = None;
        inner.dirty.insert(name.to_string());
        inner.changed.insert(name.to_string());
        if inner.nodes[name].liveness == Liveness::Ready {
            self.set_liveness(
                &mut inner,
                name,
                Liveness::Disconnected,
                format!("connection lost: {reason}"),
            );
        }
    }

    /// Marks every connected node disconnected because this coordinator is stopping, so
    /// the database records why they were last seen.
    pub(crate) fn shutdown_all(&self) {
        let mut inner = self.lock();
        let connected: Vec<String> = inner
            .nodes
            .iter_mut()
            .filter_map(|(name, n)| n.conn.take().map(|_| name.clone()))
            .collect();
        for name in connected {
            inner.dirty.insert(name.clone());
            self.set_liveness(
                &mut inner,
                &name,
                Liveness::Disconnected,
                "coordinator shutting down".into(),
            );
        }
    }

    /// Applies time-based transitions; call a few times per second.
    pub(crate) fn sweep(&self) {
        let mut inner = self.lock();
        let mut changes = vec![];
        // One clock read for the whole sweep: it visits every node ten times a second.
        let now = Instant::now();
        for (name, node) in &inner.nodes {
            let silent = now.saturating_duration_since(node.last_alive);
            match node.liveness {
                Liveness::Ready => {
                    let interval = node
                        .conn
                        .as_ref()
                        .map(|c| c.beat_interval)
                        .unwrap_or(Duration::from_secs(1));
                    let limit = interval * self.settings.disconnect_after_beats;
                    if silent > limit {
                        changes.push((
                            name.clone(),
                            Liveness::Disconnected,
                            format!(
                                "no beat for {:.1}s ({} beat intervals)",
                                silent.as_secs_f64(),
                                self.settings.disconnect_after_beats
                            ),
                        ));
                    }
                }
                Liveness::Disconnected if silent > self.settings.down_after => {
                    changes.push((
                        name.clone(),
                        Liveness::Down,
                        format!(
                            "no beat for {:.1}s (down_after {}s)",
                            silent.as_secs_f64(),
                            self.settings.down_after.as_secs_f64()
                        ),
                    ));
                }
                _ => {}
            }
        }
        for (name, to, why) in changes {
            self.set_liveness(&mut inner, &name, to, why);
        }
    }

    fn set_liveness(&self, inner: &mut Inner, name: &str, to: Liveness, why: String) {
        let Some(node) = inner.nodes.get_mut(name) else {
            return;
        };
        let from = node.liveness;
        if from == to {
            return;
        }
        node.liveness = to;
        node.liveness_since_ms = unix_ms();
        inner.dirty.insert(name.to_string());
        inner.changed.insert(name.to_string());
        tracing::info!(node = name, from = %from, to = %to, reason = %why, "node liveness changed");
        push_event(
            inner,
            name,
            EventKind::Liveness,
            Some(from.as_str()),
            to.as_str(),
            why,
        );
    }

    /// All nodes, sorted by name.
    pub(crate) fn snapshot(&self) -> Vec<NodeView> {
        let inner = self.lock();
        let mut v: Vec<NodeView> = inner.nodes.values().map(|n| n.view()).collect();
        drop(inner);
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    pub(crate) fn get(&self, name: &str) -> Option<NodeView> {
        self.lock().nodes.get(name).map(|n| n.view())
    }

    /// Events after `since` (by id), optionally for one node and of one kind, oldest first, at most `limit`
    /// (the newest ones when more match).
    pub(crate) fn events(
        &self,
        since: u64,
        node: Option<&str>,
        kind: Option<EventKind>,
        limit: usize,
    ) -> Vec<Event> {
        let inner = self.lock();
        let matching: Vec<&Event> = inner
            .events
            .iter()
            .filter(|e| {
                e.id > since && node.is_none_or(|n| e.node == n) && kind.is_none_or(|k| e.kind == k)
            })
            .collect();
        let skip = matching.len().saturating_sub(limit);
        matching.into_iter().skip(skip).cloned().collect()
    }

    /// Records that someone changed something through the API (an `audit` event;
    /// `node` is the node it concerns, or empty). `action` names what was done.
    pub(crate) fn audit(&self, node: &str, action: &str, message: String) {
        let mut inner = self.lock();
        push_event(&mut inner, node, EventKind::Audit, None, action, message);
    }

    /// Records what the remediation did or decided about `node` (a `remediation`
    /// event; `action` is what happened). Like audit events, never rate-limited: a
    /// drain is the story an operator reads afterwards.
    pub(crate) fn remediation_event(&self, node: &str, action: &str, message: String) {
        let mut inner = self.lock();
        push_event(
            &mut inner,
            node,
            EventKind::Remediation,
            None,
            action,
            message,
        );
    }

    /// Whether a node of that name is known (connected or not).
    pub(crate) fn knows(&self, name: &str) -> bool {
        self.lock().nodes.contains_key(name)
    }

    /// Records what a pool's policy did about `node` (a `pool` event; `node` may be
    /// empty for the pool as a whole). Never rate-limited, as remediation events.
    pub(crate) fn pool_event(&self, node: &str, action: &str, message: String) {
        let mut inner = self.lock();
        push_event(&mut inner, node, EventKind::Pool, None, action, message);
    }

    /// Forgets `name` (a pool node whose machine its provider deleted): it leaves the
    /// node list, the console and the store; its events stay. A connection still open
    /// (the machine's end has not been noticed yet) is closed: the node is gone, and
    /// its certificate revoked before this is called.
    pub(crate) fn forget(&self, name: &str) {
        let mut inner = self.lock();
        if let Some(mut node) = inner.nodes.remove(name) {
            if let Some(conn) = node.conn.take() {
                (conn.on_replaced)();
            }
            inner.dirty.remove(name);
            inner.changed.insert(name.to_string());
        }
    }

    /// What the remediation reads of every node, each policy tick (see [`NodeHealth`]).
    pub(crate) fn health_snapshot(&self) -> Vec<NodeHealth> {
        self.lock().nodes.values().map(|n| n.health()).collect()
    }

    /// [`Registry::health_snapshot`] of one node.
    pub(crate) fn health_of(&self, name: &str) -> Option<NodeHealth> {
        self.lock().nodes.get(name).map(|n| n.health())
    }

    /// How many nodes are known.
    pub(crate) fn len(&self) -> usize {
        self.lock().nodes.len()
    }

    /// Sets or clears `name`'s cordon as the API and metrics show it; false when no
    /// such node is known.
    pub(crate) fn set_cordon(&self, name: &str, cordon: Option<Cordon>) -> bool {
        let mut inner = self.lock();
        match inner.nodes.get_mut(name) {
            Some(n) => {
                n.cordon = cordon;
                inner.changed.insert(name.to_string());
                true
            }
            None => false,
        }
    }

    /// The summaries of the nodes that may have changed since the last call (the
    /// console feed's input; O(changed nodes) under the lock).
    pub(crate) fn take_changed(&self) -> Vec<NodeSummary> {
        let mut inner = self.lock();
        let names: Vec<String> = inner.changed.drain().collect();
        names
            .iter()
            .filter_map(|n| inner.nodes.get(n).map(|n| n.summary()))
            .collect()
    }

    /// A connected node's current connection id and its command queue: a command is
    /// bound to the connection it is sent on.
    pub(crate) fn command_route(&self, name: &str) -> Option<(u64, mpsc::Sender<CoordMsg>)> {
        self.lock()
            .nodes
            .get(name)
            .and_then(|n| n.conn.as_ref().map(|c| (c.id, c.commands.clone())))
    }

    /// Counts a report of `name` that was cut to the caps.
    pub(crate) fn record_truncated_report(&self, name: &str) {
        if let Some(n) = self.lock().nodes.get_mut(name) {
            n.truncated_reports += 1;
        }
    }

    /// Counts a command result that came on another connection than its command.
    pub(crate) fn record_foreign_result(&self) {
        self.stats.foreign_results.fetch_add(1, Relaxed);
    }

    /// Takes what changed since the last call, as rows for the store.
    pub(crate) fn take_dirty(&self) -> (Vec<NodeRow>, Vec<EventRow>) {
        let mut inner = self.lock();
        let names: Vec<String> = inner.dirty.drain().collect();
        let now = Instant::now();
        let mut nodes = Vec::with_capacity(names.len());
        for name in names {
            if let Some(n) = inner.nodes.get_mut(&name) {
                n.last_persisted = Some(now);
                nodes.push(n.row());
            }
        }
        let events = std::mem::take(&mut inner.unpersisted_events);
        (nodes, events.iter().map(event_row).collect())
    }

    /// Counts a refused connection under `reason`.
    pub(crate) fn record_rejection(&self, reason: &'static str) {
        if let Ok(mut m) = self.stats.rejected.lock() {
            *m.entry(reason).or_default() += 1;
        }
    }

    /// Counts bytes of agent frames received.
    pub(crate) fn received(&self, bytes: u64) {
        self.stats.bytes_in.fetch_add(bytes, Relaxed);
    }

    pub(crate) fn stats_view(&self) -> StatsView {
        let (nodes, connected, truncated_reports, suppressed_events) = {
            let inner = self.lock();
            let per_node = |f: fn(&Node) -> u64| {
                inner
                    .nodes
                    .values()
                    .filter(|n| f(n) > 0)
                    .map(|n| (n.name.clone(), f(n)))
                    .collect::<HashMap<String, u64>>()
            };
            (
                inner.nodes.len(),
                inner.nodes.values().filter(|n| n.conn.is_some()).count(),
                per_node(|n| n.truncated_reports),
                per_node(|n| n.events.total),
            )
        };
        let buckets = self.stats.apply_latency.buckets();
        let latency = LatencySummary::of(&buckets);
        StatsView {
            nodes,
            connected,
            beats_total: self.stats.beats.load(Relaxed),
            reports_total: self.stats.reports.load(Relaxed),
            bytes_in_total: self.stats.bytes_in.load(Relaxed),
            rejected_total: self
                .stats
                .rejected
                .lock()
                .map(|m| m.iter().map(|(k, v)| (k.to_string(), *v)).collect())
                .unwrap_or_default(),
            apply_latency_p50_us: latency.p50_us,
            apply_latency_p99_us: latency.p99_us,
            apply_latency_max_us: self.stats.apply_latency.max_us(),
            apply_latency_samples: latency.samples,
            apply_latency_buckets: buckets,
            refused: RefusedInput {
                announcements: self
                    .stats
                    .refused_announcements
                    .lock()
                    .map(|m| m.iter().map(|(k, v)| (k.to_string(), *v)).collect())
                    .unwrap_or_default(),
                foreign_command_results: self.stats.foreign_results.load(Relaxed),
                truncated_reports,
                suppressed_events,
            },
            // The registry does not know the store; the API fills this in.
            store: Default::default(),
        }
    }
}

/// GPU health changes between two reports of a node, by UUID: `(from, to, message)`. A GPU
/// seen for the first time makes an event only when it is not `ok`.
fn gpu_health_changes(
    old: Option<&NodeReport>,
    new: &NodeReport,
) -> Vec<(Option<String>, String, String)> {
    let before: HashMap<&str, corral_proto::model::DeviceStatus> = old
        .map(|r| {
            r.gpus
                .iter()
                .map(|g| (g.uuid.as_str(), g.health.status))
                .collect()
        })
        .unwrap_or_default();
    new.gpus
        .iter()
        .filter_map(|g| {
            let from = before.get(g.uuid.as_str()).copied();
            let to = g.health.status;
            let changed = match from {
                Some(f) => f != to,
                None => to != corral_proto::model::DeviceStatus::Ok,
            };
            if !changed {
                return None;
            }
            let reasons: Vec<&str> = g
                .health
                .reasons
                .iter()
                .map(|r| r.message.as_str())
                .collect();
            let why = if reasons.is_empty() {
                "all checks pass".to_string()
            } else {
                reasons.join("; ")
            };
            Some((
                from.map(|f| f.as_str().to_string()),
                to.as_str().to_string(),
                format!("GPU {} ({}): {why}", g.index, g.uuid),
            ))
        })
        .collect()
}

/// Records an event, unless it is about a node over its event rate (then it is counted
/// instead). Audit events are what people did, not what a node caused: never limited.
fn push_event(
    inner: &mut Inner,
    node: &str,
    kind: EventKind,
    from: Option<&str>,
    to: &str,
    mut message: String,
) {
    if let Some(n) = inner
        .nodes
        .get_mut(node)
        .filter(|_| !matches!(kind, EventKind::Audit | EventKind::Remediation))
    {
        if !n.events.take(Instant::now()) {
            if n.events.pending == 1 {
                tracing::warn!(
                    node,
                    limit_per_minute = EVENTS_PER_MINUTE,
                    "node's events are over the rate limit; not recording them until the rate drops (counted in corral_suppressed_events_total)"
                );
            }
            return;
        }
        if n.events.pending > 0 {
            message = format!(
                "{message} ({} earlier events of this node not recorded: more than {EVENTS_PER_MINUTE} a minute)",
                n.events.pending
            );
            n.events.pending = 0;
        }
    }
    let event = Event {
        id: inner.next_event_id,
        at_ms: unix_ms(),
        node: node.to_string(),
        kind,
        from: from.map(str::to_string),
        to: to.to_string(),
        message,
    };
    inner.next_event_id += 1;
    inner.unpersisted_events.push(event.clone());
    inner.events.push_back(event);
    // The in-memory window is bounded like the database's.
    while inner.events.len() > inner.event_retention {
        inner.events.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_proto::model::{Health, Reason};

    fn settings() -> Settings {
        Settings {
            disconnect_after_beats: 3,
            down_after: Duration::from_millis(300),
            persist_every: Duration::from_secs(60),
            event_retention: 1000,
        }
    }

    fn connect(r: &Registry, name: &str, beat_ms: u64) -> u64 {
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        r.connect(
            name,
            Duration::from_millis(beat_ms),
            "127.0.0.1:1".into(),
            "0.1.0".into(),
            tx,
            Box::new(|| ()),
        )
    }

    fn beat() -> Beat {
        Beat {
            sent_at_ns: unix_ns(),
        }
    }

    #[test]
    fn silent_node_goes_disconnected_then_down_then_ready_again() {
        let r = Registry::new(settings(), vec![], vec![]);
        let c = connect(&r, "n1", 20);
        assert!(r.beat("n1", c, &beat()));
        assert_eq!(r.get("n1").unwrap().liveness, Liveness::Ready);
        std::thread::sleep(Duration::from_millis(80));
        r.sweep();
        assert_eq!(r.get("n1").unwrap().liveness, Liveness::Disconnected);
        std::thread::sleep(Duration::from_millis(300));
        r.sweep();
        assert_eq!(r.get("n1").unwrap().liveness, Liveness::Down);
        r.beat("n1", c, &beat());
        assert_eq!(r.get("n1").unwrap().liveness, Liveness::Ready);
        let kinds: Vec<_> = r
            .events(0, Some("n1"), None, 10)
            .into_iter()
            .map(|e| e.to)
            .collect();
        assert_eq!(kinds, ["ready", "disconnected", "down", "ready"]);
        assert_eq!(
            r.events(0, Some("n1"), None, 10)[0].from,
            None,
            "first event registers the node"
        );
    }

    #[test]
    fn a_replaced_connection_is_closed_once_and_only_it() {
        use std::sync::atomic::AtomicUsize;
        use std::sync::Arc;
        let r = Registry::new(settings(), vec![], vec![]);
        let closed: Vec<Arc<AtomicUsize>> = (0..2).map(|_| Arc::default()).collect();
        for c in &closed {
            let (tx, _rx) = tokio::sync::mpsc::channel(1);
            let c = c.clone();
            r.connect(
                "n1",
                Duration::from_secs(1),
                "a".into(),
                "v".into(),
                tx,
                Box::new(move || {
                    c.fetch_add(1, Relaxed);
                }),
            );
        }
        let counts: Vec<usize> = closed.iter().map(|c| c.load(Relaxed)).collect();
        assert_eq!(
            counts,
            [1, 0],
            "the first was replaced, the second is current"
        );
        assert!(r.get("n1").unwrap().connected);
    }

    #[test]
    fn messages_from_a_replaced_connection_are_ignored() {
        let r = Registry::new(settings(), vec![], vec![]);
        let old = connect(&r, "n1", 1000);
        let new = connect(&r, "n1", 1000);
        assert!(!r.beat("n1", old, &beat()));
        r.disconnect("n1", old, "late close");
        assert!(r.beat("n1", new, &beat()));
        assert_eq!(r.get("n1").unwrap().liveness, Liveness::Ready);
        assert!(r.get("n1").unwrap().connected);
    }

    fn head(node: &str, started_ms: u64) -> corral_proto::wire::RayHead {
        corral_proto::wire::RayHead {
            node: node.into(),
            address: "10.0.0.1:6379".into(),
            dashboard: "http://10.0.0.1:8265".into(),
            python: "3.11.7".into(),
            ray: "2.60.0".into(),
            venv: "/opt/ray".into(),
            started_ms,
        }
    }

    fn authorizing(heads: &[&str], schedulers: &[(&str, &[&str])]) -> Registry {
        let list = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Registry::new(settings(), vec![], vec![]).with_authority(Authority::new(
            list(heads),
            schedulers
                .iter()
                .map(|(k, v)| (k.to_string(), list(v)))
                .collect(),
        ))
    }

    #[test]
    fn ray_head_is_pushed_to_every_agent_and_to_late_joiners() {
        let r = authorizing(&["h1"], &[]);
        let (wtx, mut wrx) = tokio::sync::mpsc::channel(8);
        r.connect(
            "w1",
            Duration::from_secs(1),
            "a".into(),
            "v".into(),
            wtx,
            Box::new(|| ()),
        );
        let h = connect(&r, "h1", 1000);
        assert!(r.ray_head_announced("h1", h, Some(head("claimed-other", 1))));
        let Ok(CoordMsg::HeadChanged { head: Some(got) }) = wrx.try_recv() else {
            panic!("worker got no head");
        };
        assert_eq!(got.node, "h1", "the certificate name wins over the message");
        // An agent that connects later learns the head first thing.
        let (ltx, mut lrx) = tokio::sync::mpsc::channel(8);
        r.connect(
            "w2",
            Duration::from_secs(1),
            "a".into(),
            "v".into(),
            ltx,
            Box::new(|| ()),
        );
        assert!(matches!(
            lrx.try_recv(),
            Ok(CoordMsg::HeadChanged { head: Some(_) })
        ));
        // Another node cannot withdraw it; its own node can.
        let w1c = connect(&r, "w3", 1000);
        assert!(!r.ray_head_announced("w3", w1c, None));
        assert!(
            r.stats_view().refused.announcements.is_empty(),
            "a withdrawal is no claim"
        );
        assert!(r.ray_head().is_some());
        assert!(r.ray_head_announced("h1", h, None));
        assert!(matches!(
            wrx.try_recv(),
            Ok(CoordMsg::HeadChanged { head: None })
        ));
        assert!(r.ray_head().is_none());
    }

    fn loaded(name: &str) -> LoadedPlugin {
        LoadedPlugin {
            info: corral_proto::job::PluginInfo {
                name: name.into(),
                version: "0.1.0".into(),
                scheduler: name.into(),
                features: vec![],
            },
            digest: "00".into(),
            grants: Default::default(),
        }
    }

    #[test]
    fn a_ray_head_from_a_node_not_in_ray_heads_is_refused_and_pushed_to_no_one() {
        let r = authorizing(&["head-01"], &[]);
        let (wtx, mut wrx) = tokio::sync::mpsc::channel(8);
        r.connect(
            "worker",
            Duration::from_secs(1),
            "a".into(),
            "v".into(),
            wtx,
            Box::new(|| ()),
        );
        let real = connect(&r, "head-01", 1000);
        assert!(r.ray_head_announced("head-01", real, Some(head("head-01", 1))));
        assert!(matches!(
            wrx.try_recv(),
            Ok(CoordMsg::HeadChanged { head: Some(_) })
        ));
        let rogue = connect(&r, "rogue", 1000);
        let mut evil = head("rogue", 2);
        evil.address = "6.6.6.6:6379".into();
        assert!(!r.ray_head_announced("rogue", rogue, Some(evil)));
        assert!(wrx.try_recv().is_err(), "nothing pushed to the worker");
        assert_eq!(
            r.ray_head().unwrap().node,
            "head-01",
            "the workers keep their head"
        );
        assert_eq!(r.stats_view().refused.announcements["ray_head"], 1);
        // Unconfigured, nobody is a head.
        let none = Registry::new(settings(), vec![], vec![]);
        let c = connect(&none, "head-01", 1000);
        assert!(!none.ray_head_announced("head-01", c, Some(head("head-01", 1))));
        assert!(none.ray_head().is_none());
    }

    #[test]
    fn only_authorized_hosts_are_routable_and_in_the_configured_order() {
        let r = authorizing(
            &[],
            &[("slurm", &["login-02", "login-01"]), ("pbs", &["*"])],
        );
        for n in ["aaa", "login-01", "login-02", "zzz"] {
            let c = connect(&r, n, 1000);
            assert!(r.plugins_announced(n, c, vec![loaded("slurm"), loaded("pbs")], vec![]));
        }
        assert_eq!(
            r.plugin_hosts("slurm"),
            ["login-02", "login-01"],
            "config order, not names"
        );
        assert_eq!(
            r.plugin_hosts("pbs"),
            ["aaa", "login-01", "login-02", "zzz"]
        );
        let view = r.plugins();
        let aaa = view.iter().find(|p| p.node == "aaa").unwrap();
        assert_eq!(aaa.not_authorized, ["slurm"]);
        assert!(!aaa.hosts("slurm") && aaa.hosts("pbs"));
        assert_eq!(
            r.stats_view().refused.announcements["scheduler"],
            2,
            "aaa and zzz"
        );
        // Unconfigured, nobody serves anything.
        let none = Registry::new(settings(), vec![], vec![]);
        let c = connect(&none, "login-01", 1000);
        none.plugins_announced("login-01", c, vec![loaded("slurm")], vec![]);
        assert!(none.plugin_hosts("slurm").is_empty());
    }

    #[test]
    fn events_over_a_nodes_rate_are_counted_not_recorded_and_others_are_unaffected() {
        let r = Registry::new(settings(), vec![], vec![]);
        let quiet = connect(&r, "quiet", 1000);
        let loud = connect(&r, "loud", 1000);
        let report = |status: HealthStatus| NodeReport {
            node: "loud".into(),
            health: Health::from_reasons(match status {
                HealthStatus::Healthy => vec![],
                s => vec![Reason {
                    check: "disk".into(),
                    status: s,
                    message: "flapping".into(),
                }],
            }),
            ..Default::default()
        };
        for i in 0..500 {
            let s = if i % 2 == 0 {
                HealthStatus::Unhealthy
            } else {
                HealthStatus::Healthy
            };
            r.report("loud", loud, report(s));
        }
        let loud_events = r.events(0, Some("loud"), None, 10_000).len();
        assert_eq!(
            loud_events, EVENTS_PER_MINUTE as usize,
            "the registration and the burst"
        );
        let suppressed = r.stats_view().refused.suppressed_events["loud"];
        assert_eq!(loud_events as u64 + suppressed, 501);
        // What people do about the node is still recorded, as are other nodes' events.
        r.audit("loud", "ping", "alice pinged loud".into());
        assert!(r
            .events(0, Some("loud"), None, 10_000)
            .iter()
            .any(|e| e.kind == EventKind::Audit));
        r.disconnect("quiet", quiet, "gone");
        assert!(r
            .events(0, Some("quiet"), None, 10)
            .iter()
            .any(|e| e.to == "disconnected"));
        assert!(!r
            .stats_view()
            .refused
            .suppressed_events
            .contains_key("quiet"));
    }

    #[test]
    fn plugins_are_routable_only_while_the_announcing_connection_lasts() {
        let r = authorizing(&[], &[("slurm", &["n1"])]);
        let c = connect(&r, "n1", 1000);
        assert!(r.plugin_hosts("slurm").is_empty(), "nothing announced yet");
        let failed = vec![LoadFailure {
            name: "pbs".into(),
            message: "pbs.wasm: missing".into(),
        }];
        assert!(r.plugins_announced("n1", c, vec![loaded("slurm")], failed.clone()));
        assert_eq!(r.plugin_hosts("slurm"), ["n1"]);
        assert!(r.plugin_hosts("pbs").is_empty());
        let view = r.plugins();
        assert_eq!(view.len(), 1);
        assert!(view[0].hosts("slurm") && !view[0].hosts("pbs"));
        assert_eq!(view[0].failed, failed);

        // A replaced connection's late announcement is ignored, and a new connection
        // starts with nothing routable until it announces.
        let c2 = connect(&r, "n1", 1000);
        assert!(!r.plugins_announced("n1", c, vec![loaded("slurm")], vec![]));
        assert!(r.plugin_hosts("slurm").is_empty());
        assert!(r.plugins_announced("n1", c2, vec![loaded("slurm")], vec![]));
        assert_eq!(r.plugin_hosts("slurm"), ["n1"]);

        // After a disconnect the last announcement is shown but not routable.
        r.disconnect("n1", c2, "gone");
        assert!(r.plugin_hosts("slurm").is_empty());
        let view = r.plugins();
        assert!(!view[0].connected && view[0].announced_ms.is_some());
        assert_eq!(view[0].loaded.len(), 1);
    }

    #[test]
    fn lost_connection_is_disconnected_at_once() {
        let r = Registry::new(settings(), vec![], vec![]);
        let c = connect(&r, "n1", 1000);
        r.beat("n1", c, &beat());
        r.disconnect("n1", c, "peer closed");
        let v = r.get("n1").unwrap();
        assert_eq!(v.liveness, Liveness::Disconnected);
        assert!(!v.connected);
        assert!(r
            .events(0, None, None, 10)
            .last()
            .unwrap()
            .message
            .contains("peer closed"));
    }

    #[test]
    fn health_change_is_one_event_with_reasons() {
        let r = Registry::new(settings(), vec![], vec![]);
        let c = connect(&r, "n1", 1000);
        let bad = NodeReport {
            node: "n1".into(),
            health: Health::from_reasons(vec![Reason {
                check: "disk".into(),
                status: HealthStatus::Unhealthy,
                message: "disk / 97% full > 95%".into(),
            }]),
            ..Default::default()
        };
        r.report("n1", c, bad.clone());
        r.report("n1", c, bad);
        let health: Vec<_> = r
            .events(0, None, None, 10)
            .into_iter()
            .filter(|e| e.kind == EventKind::Health)
            .collect();
        assert_eq!(health.len(), 1);
        assert_eq!(health[0].to, "unhealthy");
        assert!(health[0].message.contains("97%"));
    }

    #[test]
    fn reloaded_nodes_wait_as_disconnected_and_then_go_down() {
        let r = Registry::new(settings(), vec![], vec![]);
        let c = connect(&r, "n1", 1000);
        r.beat("n1", c, &beat());
        let (nodes, events) = r.take_dirty();
        let r2 = Registry::new(settings(), nodes, events);
        let v = r2.get("n1").unwrap();
        assert_eq!(v.liveness, Liveness::Disconnected);
        assert!(!v.connected);
        std::thread::sleep(Duration::from_millis(350));
        r2.sweep();
        assert_eq!(r2.get("n1").unwrap().liveness, Liveness::Down);
        assert!(r2
            .events(0, None, None, 100)
            .iter()
            .any(|e| e.message.contains("coordinator restarted")));
    }
}
