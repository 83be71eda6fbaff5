//! A cordon and its drains: the remediation's runtime state, with its conversions to the
//! store's rows and the API's views (each its own type, converted here and nowhere else).
//!
//! Invariants: a drain moves `pending → drained | foreign | not-member | skipped` while
//! the node is cordoned (a Ray drain `drained → pending` again when the agent
//! reconnects) and `drained → resumed | foreign` while it is resumed; a failed try
//! leaves the state as it was, counts an attempt and sets the next try by backoff. A
//! drain that may be in place (made, or tried: a try whose answer was lost may have
//! taken effect) is asked about and lifted if it is corral's; one never tried is not.

use std::fmt;
use std::time::{Duration, Instant};

use corral_base::backoff::backoff;
use corral_proto::api::{Cordon, DrainView};
use corral_proto::model::unix_ms;

use crate::config::RemediationSection;
use crate::store::{CordonRow, DrainRow};

/// Who cordoned a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Actor {
    Policy,
    User(String),
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::Policy => f.write_str("policy"),
            Actor::User(u) => f.write_str(u),
        }
    }
}

impl Actor {
    /// As stored: `policy` or `user:NAME` (so a user called "policy" stays a user).
    fn stored(&self) -> String {
        match self {
            Actor::Policy => "policy".into(),
            Actor::User(u) => format!("user:{u}"),
        }
    }

    fn parse(s: &str) -> Actor {
        match s.strip_prefix("user:") {
            Some(u) => Actor::User(u.to_string()),
            None if s == "policy" => Actor::Policy,
            None => Actor::User(s.to_string()),
        }
    }
}

/// Where a node is drained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// In scheduler instance `instance`, where the node is called `node`.
    Scheduler { instance: String, node: String },
    /// In Ray (the node's agent drains its worker).
    Ray,
}

impl Target {
    /// Its kind (`scheduler`, `ray`), where (the instance, or `ray`), and the node's name
    /// there, as the API and the store write them.
    fn parts(&self, corral_node: &str) -> (&'static str, String, String) {
        match self {
            Target::Scheduler { instance, node } => ("scheduler", instance.clone(), node.clone()),
            Target::Ray => ("ray", "ray".to_string(), corral_node.to_string()),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Scheduler { instance, node } => write!(f, "{instance} (as {node})"),
            Target::Ray => f.write_str("ray"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DrainState {
    Pending,
    Drained,
    Foreign,
    NotMember,
    /// The plugin cannot drain, or refuses the node's name: nothing to lift.
    Skipped,
    Resumed,
}

impl DrainState {
    pub fn as_str(self) -> &'static str {
        match self {
            DrainState::Pending => "pending",
            DrainState::Drained => "drained",
            DrainState::Foreign => "foreign",
            DrainState::NotMember => "not-member",
            DrainState::Skipped => "skipped",
            DrainState::Resumed => "resumed",
        }
    }

    fn parse(s: &str) -> DrainState {
        match s {
            "drained" => DrainState::Drained,
            "foreign" => DrainState::Foreign,
            "not-member" => DrainState::NotMember,
            "skipped" => DrainState::Skipped,
            "resumed" => DrainState::Resumed,
            // Unknown (a newer corral's) or pending: made again, which asks first.
            _ => DrainState::Pending,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Drain {
    pub target: Target,
    pub state: DrainState,
    pub attempts: u32,
    pub message: Option<String>,
    /// When the next try is due; `None`: now (or nothing to do in this state).
    pub next_try: Option<Instant>,
    /// Corral made this drain and has not lifted it since (it may be `pending` again,
    /// to be made anew with another reason or after a reconnect).
    pub made: bool,
    /// A failed try since the last settled outcome may have reached the scheduler (it
    /// failed there or timed out), so the drain may be in place. Tries that found no
    /// host to ask leave it false.
    pub reached: bool,
}

/// One try's outcome: where the drain ended up, or why to try again and whether the
/// try may have reached the scheduler.
pub(crate) type Outcome = Result<(DrainState, Option<String>), (String, bool)>;

impl Drain {
    pub fn new(target: Target) -> Drain {
        Drain {
            target,
            state: DrainState::Pending,
            attempts: 0,
            message: None,
            next_try: None,
            made: false,
            reached: false,
        }
    }

    /// Whether a lift must look at it: made, or tried (a try that failed may still
    /// have taken effect, e.g. an answer lost to a timeout; the lift asks first).
    pub fn may_be_in_place(&self) -> bool {
        self.state == DrainState::Drained
            || (self.state == DrainState::Pending && (self.reached || self.made))
    }

    /// Whether this drain has work now: made (cordoned) or lifted (resuming).
    fn due(&self, resuming: bool, now: Instant) -> bool {
        let wanted = if resuming {
            self.may_be_in_place()
        } else {
            self.state == DrainState::Pending
        };
        wanted && self.next_try.is_none_or(|t| t <= now)
    }

    /// Applies one try's outcome; returns the action and outcome words for counting.
    pub fn settle(
        &mut self,
        outcome: Outcome,
        cfg: &RemediationSection,
        resuming: bool,
    ) -> (&'static str, &'static str) {
        let action = if resuming { "resume" } else { "drain" };
        match outcome {
            Ok((state, message)) => {
                self.state = state;
                self.made = state == DrainState::Drained;
                self.reached = false;
                self.message = message;
                self.attempts = 0;
                self.next_try = None;
                let word = match state {
                    DrainState::Foreign => "foreign",
                    DrainState::NotMember => "not-member",
                    DrainState::Skipped => "skipped",
                    _ => "ok",
                };
                (action, word)
            }
            Err((e, reached)) => {
                self.next_try =
                    Some(Instant::now() + backoff(cfg.retry_after, cfg.max_backoff, self.attempts));
                self.attempts += 1;
                self.reached |= reached;
                self.message = Some(e);
                (action, "failed")
            }
        }
    }

    /// The event text for this drain's last outcome.
    pub fn event_message(&self, node: &str, by: &Actor, resuming: bool) -> String {
        let verb = if resuming { "resume" } else { "drain" };
        let detail = self
            .message
            .as_deref()
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        match (self.state, self.next_try) {
            (_, Some(next)) => format!(
                "{verb} of {node} in {} failed (attempt {}, by {by}){detail}; retrying in {}",
                self.target,
                self.attempts,
                humantime::format_duration(Duration::from_secs(
                    next.saturating_duration_since(Instant::now())
                        .as_secs()
                        .max(1)
                ))
            ),
            (DrainState::Drained, None) => {
                format!("{node} drained in {} (by {by}){detail}", self.target)
            }
            (DrainState::Resumed, None) => {
                format!("{node} resumed in {} (by {by}){detail}", self.target)
            }
            (DrainState::Foreign, None) => format!("{node} in {}{detail}", self.target),
            (DrainState::NotMember | DrainState::Skipped, None) => {
                format!("{node} not drained in {}{detail}", self.target)
            }
            (DrainState::Pending, None) => format!("{node} in {}: pending", self.target),
        }
    }
}

/// A cordoned node.
#[derive(Debug, Clone)]
pub(crate) struct Cordoned {
    pub node: String,
    /// Without [`super::PREFIX`].
    pub reason: String,
    pub since_ms: u64,
    pub by: Actor,
    pub resuming: bool,
    pub drains: Vec<Drain>,
    /// Its first write is committed: only then is anything drained for it.
    pub committed: bool,
    /// Bumped by every change that is not an action's outcome (a person's drain or
    /// resume, the policy's resume, a reconnect): an outcome computed before it is
    /// reconciled with what the cordon wants now.
    pub epoch: u64,
}

impl Cordoned {
    pub fn new(node: &str, reason: &str, by: Actor, drains: Vec<Drain>) -> Cordoned {
        Cordoned {
            node: node.to_string(),
            reason: reason.to_string(),
            since_ms: unix_ms(),
            by,
            resuming: false,
            drains,
            committed: false,
            epoch: 0,
        }
    }

    /// Makes a made Ray drain pending again (see the module docs of
    /// [`super`]: a new agent connection forgets it).
    pub fn redrain_ray(&mut self) {
        self.epoch += 1;
        for d in &mut self.drains {
            if d.target == Target::Ray && d.state == DrainState::Drained {
                d.state = DrainState::Pending;
                d.message = Some("the agent connected again: draining its Ray worker again".into());
                d.next_try = None;
            }
        }
    }

    /// The first drain with work due now.
    pub fn next_due(&self, now: Instant) -> Option<usize> {
        self.drains.iter().position(|d| d.due(self.resuming, now))
    }

    pub fn work_due(&self, now: Instant) -> bool {
        self.committed && (self.next_due(now).is_some() || (self.resuming && self.lifted()))
    }

    /// Nothing of corral's is left to lift.
    pub fn lifted(&self) -> bool {
        !self.drains.iter().any(Drain::may_be_in_place)
    }

    /// A person drains the cordoned node (again): it becomes theirs, with their reason,
    /// and is drained everywhere it should be, `targets` included. Drains made before
    /// are made again (the scheduler then shows the new reason); someone else's, and
    /// places that cannot drain, stay as they are.
    pub fn retake(&mut self, by: Actor, reason: &str, targets: Vec<Drain>) {
        self.epoch += 1;
        self.by = by;
        self.reason = reason.to_string();
        self.resuming = false;
        for d in &mut self.drains {
            if matches!(
                d.state,
                DrainState::Drained | DrainState::Resumed | DrainState::Pending
            ) {
                d.state = DrainState::Pending;
                d.next_try = None;
            }
        }
        for t in targets {
            if !self.drains.iter().any(|d| d.target == t.target) {
                self.drains.push(t);
            }
        }
    }

    pub fn view(&self) -> Cordon {
        Cordon {
            reason: self.reason.clone(),
            since_ms: self.since_ms,
            by: self.by.to_string(),
            resuming: self.resuming,
            drains: self
                .drains
                .iter()
                .map(|d| {
                    let (kind, target, node) = d.target.parts(&self.node);
                    DrainView {
                        kind: kind.into(),
                        target,
                        node,
                        state: d.state.as_str().into(),
                        attempts: d.attempts,
                        message: d.message.clone(),
                        next_try_ms: d.next_try.map(|t| {
                            unix_ms()
                                + t.saturating_duration_since(Instant::now()).as_millis() as u64
                        }),
                    }
                })
                .collect(),
        }
    }

    pub fn row(&self) -> CordonRow {
        CordonRow {
            node: self.node.clone(),
            reason: self.reason.clone(),
            since_ms: self.since_ms,
            by: self.by.stored(),
            resuming: self.resuming,
            drains: self
                .drains
                .iter()
                .map(|d| {
                    let (kind, target, node) = d.target.parts(&self.node);
                    DrainRow {
                        kind: kind.into(),
                        target,
                        node,
                        state: d.state.as_str().into(),
                        attempts: d.attempts,
                        message: d.message.clone(),
                        made: d.made,
                        reached: Some(d.reached),
                    }
                })
                .collect(),
        }
    }

    /// From the database: failed tries are tried again at once.
    pub fn from_row(row: CordonRow) -> Cordoned {
        Cordoned {
            drains: row
                .drains
                .into_iter()
                .map(|d| Drain {
                    target: if d.kind == "ray" {
                        Target::Ray
                    } else {
                        Target::Scheduler {
                            instance: d.target,
                            node: d.node,
                        }
                    },
                    state: DrainState::parse(&d.state),
                    attempts: d.attempts,
                    message: d.message,
                    next_try: None,
                    made: d.made || d.state == "drained",
                    reached: d.reached.unwrap_or(d.attempts > 0),
                })
                .collect(),
            node: row.node,
            reason: row.reason,
            since_ms: row.since_ms,
            by: Actor::parse(&row.by),
            resuming: row.resuming,
            committed: true,
            epoch: 0,
        }
    }
}
