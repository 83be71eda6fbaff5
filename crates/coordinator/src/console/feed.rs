//! The console's live feed: one task turns registry changes into deltas once a second,
//! serializes each once, and fans it out to every open console.
//!
//! Invariants:
//! - A console first gets a snapshot (every node's [`NodeSummary`] and the latest
//!   events) and then every delta after it, in order, with no gap: the snapshot and the
//!   subscription are taken under one lock, and deltas are sent under the same lock.
//! - A delta carries a node only when its summary differs from the one last sent (the
//!   summary is in whole units, so a load moving by a fraction of a percent sends
//!   nothing), and only the events recorded since the last delta.
//! - The cost does not grow with the number of consoles but for the copy into each
//!   socket: a delta is built and serialized once. A console that falls more than
//!   [`LAG`] deltas behind is sent `resync` and closed; its browser reconnects and
//!   starts from a snapshot. No console can make the coordinator buffer without bound.
//! - At most [`MAX_STREAMS`] consoles at once, [`MAX_STREAMS_PER_USER`] per user; the
//!   next is refused with 503. A stream re-checks its caller's credential every
//!   [`RECHECK`] and ends when it no longer holds (logout, revocation, expiry) or the
//!   coordinator stops.
//!
//! Trade-off: one second of latency for changes, in exchange for batching: at 10,000
//! nodes the registry sees thousands of reports a second, and a browser redrawing on
//! each would melt. A second is well under the liveness timeouts that matter.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::registry::Registry;
use corral_proto::api::{ConsoleDelta, ConsoleSnapshot, Event, NodeSummary};

/// How often changes are gathered and sent.
pub(crate) const TICK: Duration = Duration::from_secs(1);
/// Deltas a console may fall behind before it is resynchronized.
pub(crate) const LAG: usize = 32;
/// Consoles streaming at once.
pub(crate) const MAX_STREAMS: usize = 256;
/// Consoles one user streams at once (tabs, windows).
pub(crate) const MAX_STREAMS_PER_USER: usize = 8;
/// How often an open stream re-checks its caller's credential.
pub(crate) const RECHECK: Duration = Duration::from_secs(15);
/// Events a snapshot carries.
const RECENT_EVENTS: usize = 100;
/// Events one delta carries at most (the rest are in `/api/v1/events`).
const EVENTS_PER_DELTA: usize = 1_000;

/// A message for every console: the SSE event name and its JSON.
#[derive(Debug)]
pub(crate) struct Message {
    pub event: &'static str,
    pub data: String,
}

struct State {
    seq: u64,
    /// The snapshot last serialized, and the `seq` it is of: consoles that open between
    /// two changes share it (a reconnect storm serializes it once, not once each).
    snapshot: Option<(u64, Arc<Message>)>,
    /// What every console was last sent of each node.
    sent: HashMap<String, NodeSummary>,
    recent: VecDeque<Event>,
    last_event: u64,
}

/// The feed, shared by the API's stream handler and the feed task.
pub(crate) struct Feed {
    state: Mutex<State>,
    tx: broadcast::Sender<Arc<Message>>,
    streams: AtomicUsize,
    /// Streams open per user.
    per_user: Mutex<HashMap<String, usize>>,
    /// Bytes of deltas, snapshots and resyncs queued to consoles, for `/metrics`.
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) deltas: AtomicU64,
}

/// An open console's place in the feed; dropping it frees the slot.
pub(crate) struct Subscription {
    pub snapshot: Arc<Message>,
    pub rx: broadcast::Receiver<Arc<Message>>,
    feed: Arc<Feed>,
    pub user: String,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.feed.streams.fetch_sub(1, Relaxed);
        let mut per_user = self.feed.per_user.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = per_user.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                per_user.remove(&self.user);
            }
        }
    }
}

/// Why a console could not open the feed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum Full {
    #[error("{MAX_STREAMS} consoles are already open, the most this coordinator serves; close one and reload")]
    All,
    #[error("{0} has {MAX_STREAMS_PER_USER} consoles open already, the most one user may; close one and reload")]
    User(String),
}

impl Feed {
    pub(crate) fn new() -> Feed {
        let (tx, _) = broadcast::channel(LAG);
        Feed {
            state: Mutex::new(State {
                seq: 0,
                snapshot: None,
                sent: HashMap::new(),
                recent: VecDeque::new(),
                last_event: 0,
            }),
            tx,
            streams: AtomicUsize::new(0),
            per_user: Mutex::new(HashMap::new()),
            bytes_sent: AtomicU64::new(0),
            deltas: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Consoles streaming now.
    pub(crate) fn streams(&self) -> usize {
        self.streams.load(Relaxed)
    }

    /// Gathers what changed in `registry` and sends it as one delta (nothing when
    /// nothing visible changed).
    pub(crate) fn tick(&self, registry: &Registry) {
        // Taken under the feed's lock (the order is always feed, then registry), so two
        // ticks cannot send one node's summaries out of order.
        let mut st = self.lock();
        let changed = registry.take_changed();
        let events = registry.events(st.last_event, None, None, EVENTS_PER_DELTA);
        let mut nodes = Vec::new();
        for s in changed {
            if st.sent.get(&s.name) != Some(&s) {
                st.sent.insert(s.name.clone(), s.clone());
                nodes.push(s);
            }
        }
        if let Some(e) = events.last() {
            st.last_event = e.id;
        }
        for e in &events {
            st.recent.push_back(e.clone());
        }
        while st.recent.len() > RECENT_EVENTS {
            st.recent.pop_front();
        }
        if nodes.is_empty() && events.is_empty() {
            return;
        }
        st.seq += 1;
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        let delta = ConsoleDelta {
            seq: st.seq,
            nodes,
            events,
        };
        if self.tx.receiver_count() == 0 {
            return;
        }
        let data = serde_json::to_string(&delta).unwrap_or_default();
        let receivers = self.tx.receiver_count() as u64;
        self.bytes_sent
            .fetch_add(data.len() as u64 * receivers, Relaxed);
        self.deltas.fetch_add(1, Relaxed);
        // Sent under the lock, so no subscriber can see a snapshot newer than a delta
        // it then receives.
        let _ = self.tx.send(Arc::new(Message {
            event: "delta",
            data,
        }));
    }

    /// A new console of `user`: the snapshot to send first and the deltas after it;
    /// refused when [`MAX_STREAMS`], or the user's [`MAX_STREAMS_PER_USER`], are open.
    /// What changed since the last tick goes out first, so the snapshot is current.
    pub(crate) fn subscribe(
        self: &Arc<Self>,
        registry: &Registry,
        user: &str,
    ) -> Result<Subscription, Full> {
        {
            let mut per_user = self.per_user.lock().unwrap_or_else(|p| p.into_inner());
            let mine = per_user.entry(user.to_string()).or_default();
            if *mine >= MAX_STREAMS_PER_USER {
                return Err(Full::User(user.to_string()));
            }
            if self.streams.fetch_add(1, Relaxed) >= MAX_STREAMS {
                self.streams.fetch_sub(1, Relaxed);
                if *mine == 0 {
                    per_user.remove(user);
                }
                return Err(Full::All);
            }
            *mine += 1;
        }
        self.tick(registry);
        let mut st = self.lock();
        let snapshot = match &st.snapshot {
            Some((seq, m)) if *seq == st.seq => m.clone(),
            _ => {
                let mut nodes: Vec<NodeSummary> = st.sent.values().cloned().collect();
                nodes.sort_by(|a, b| a.name.cmp(&b.name));
                let snapshot = ConsoleSnapshot {
                    seq: st.seq,
                    nodes,
                    events: st.recent.iter().cloned().collect(),
                };
                let m = Arc::new(Message {
                    event: "snapshot",
                    data: serde_json::to_string(&snapshot).unwrap_or_default(),
                });
                st.snapshot = Some((st.seq, m.clone()));
                m
            }
        };
        let rx = self.tx.subscribe();
        drop(st);
        self.bytes_sent
            .fetch_add(snapshot.data.len() as u64, Relaxed);
        Ok(Subscription {
            snapshot,
            rx,
            feed: self.clone(),
            user: user.to_string(),
        })
    }

    /// Runs [`Feed::tick`] every [`TICK`] until shut down.
    pub(crate) async fn run(self: Arc<Self>, registry: Arc<Registry>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.tick(&registry),
                _ = shutdown.cancelled() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Settings;

    #[test]
    fn one_user_gets_at_most_max_streams_per_user_and_a_closed_one_frees_its_slot() {
        let registry = Registry::new(
            Settings {
                disconnect_after_beats: 3,
                down_after: Duration::from_secs(60),
                persist_every: Duration::from_secs(60),
                event_retention: 10,
            },
            vec![],
            vec![],
        );
        let feed = Arc::new(Feed::new());
        let mut mine: Vec<Subscription> = (0..MAX_STREAMS_PER_USER)
            .map(|_| feed.subscribe(&registry, "alice").unwrap())
            .collect();
        assert_eq!(
            feed.subscribe(&registry, "alice").err(),
            Some(Full::User("alice".into()))
        );
        assert!(
            feed.subscribe(&registry, "bob").is_ok(),
            "another user is not held back"
        );
        mine.pop();
        let _again = feed.subscribe(&registry, "alice").unwrap();
        assert_eq!(feed.streams(), MAX_STREAMS_PER_USER);
    }
}
