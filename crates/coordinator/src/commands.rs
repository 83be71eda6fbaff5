//! Commands to agents: one request sent down a node's connection, one answer matched
//! back to whoever asked.
//!
//! Invariants:
//! - A command goes through the node's bounded per-connection queue (the channel the
//!   registry holds for its current connection) with `try_send`: a caller whose agent
//!   does not drain its queue gets [`CommandError::Busy`] at once and never blocks.
//! - A command is bound to the connection it was sent on. Every command gets an id
//!   unique in this process, and an answer (`AgentMsg::CommandResult`) completes the
//!   waiter with that id only when it arrives on that same connection. The same id from
//!   any other connection (another node's, or an earlier one of the same node) is
//!   ignored, logged with both nodes and counted (`corral_foreign_command_results_total`):
//!   an agent answers only for itself, whatever ids it guesses.
//! - When a connection ends (closed, lost, or replaced by a newer one of its node), every
//!   command pending on it fails at once with [`CommandError::Disconnected`]. The
//!   connection task calls [`Commands::connection_closed`] only after it dropped its
//!   queue's receiver, so a command either was queued before (and is failed by the
//!   close) or finds the queue closed (and fails in [`Commands::send`]); none waits out
//!   its timeout for a connection that is gone.
//! - A command larger than the agent accepts (its hello's `max_frame_bytes`) is never
//!   sent: the connection task fails that command alone with [`CommandError::TooLarge`]
//!   and the session goes on.
//! - A caller that gives up (timeout) forgets its id, so a late answer is dropped.
//!
//! Trade-off: the connection task does the bookkeeping that only it can (an oversized
//! command, its own end) through [`Commands::fail`] and [`Commands::connection_closed`];
//! this module keeps one map of pending commands, each with its node and connection,
//! under one mutex: O(1) per command and answer, O(pending) per closed connection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::oneshot;
use tokio::time::timeout;
use tracing::{debug, warn};

use crate::registry::Registry;
use corral_proto::wire::{Command, CommandOutput, CoordMsg};

/// Why a command got no answer, or a failed one.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("node {0} is not connected")]
    NotConnected(String),
    #[error("node {0} is not draining its command queue")]
    Busy(String),
    #[error("node {node} did not answer within {secs:.1}s")]
    Timeout { node: String, secs: f64 },
    #[error("node {node} failed the command: {message}")]
    Failed { node: String, message: String },
    /// The connection the command went on ended before its answer came: the agent may
    /// or may not have run it.
    #[error("node {node} disconnected before answering ({reason})")]
    Disconnected { node: String, reason: String },
    /// The encoded command is larger than the agent accepts; it was not sent.
    #[error("the command is {}, over node {node}'s frame limit of {}; shorten the arguments", size(*bytes), size(*limit))]
    TooLarge {
        node: String,
        bytes: usize,
        limit: usize,
    },
}

/// `bytes` for a person: "1.4 MiB (1500000 bytes)", "512 bytes".
pub(crate) fn size(bytes: usize) -> String {
    const MIB: f64 = (1 << 20) as f64;
    const KIB: f64 = 1024.0;
    let b = bytes as f64;
    let short = if b >= MIB {
        format!("{:.1} MiB", b / MIB)
    } else if b >= KIB {
        format!("{:.1} KiB", b / KIB)
    } else {
        return format!("{bytes} bytes");
    };
    format!("{} ({bytes} bytes)", short.replace(".0 ", " "))
}

type Waiter = oneshot::Sender<Result<CommandOutput, CommandError>>;

/// A command sent and not yet answered.
struct Pending {
    node: String,
    /// The connection it was sent on: the only one whose answer counts.
    conn: u64,
    waiter: Waiter,
}

/// What became of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// It completed its command.
    Completed,
    /// Its id belongs to a command sent on another connection: ignored and counted.
    Foreign,
    /// Nobody waits for its id (timed out, already failed, or never sent).
    Unknown,
}

/// Sends commands to agents and matches their answers.
pub(crate) struct Commands {
    /// Where each connected node's command queue is.
    registry: Arc<Registry>,
    next_id: AtomicU64,
    pending: Mutex<HashMap<u64, Pending>>,
}

impl Commands {
    pub(crate) fn new(registry: Arc<Registry>) -> Commands {
        Commands {
            registry,
            next_id: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Pending>> {
        // A panic while holding the lock would be a bug; the map stays usable.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends `command` to `node` and waits at most `wait` for its answer.
    pub(crate) async fn send(
        &self,
        node: &str,
        command: Command,
        wait: Duration,
    ) -> Result<CommandOutput, CommandError> {
        let (conn, queue) = self
            .registry
            .command_route(node)
            .ok_or_else(|| CommandError::NotConnected(node.into()))?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (done_tx, done_rx) = oneshot::channel();
        self.pending().insert(
            id,
            Pending {
                node: node.into(),
                conn,
                waiter: done_tx,
            },
        );
        if let Err(e) = queue.try_send(CoordMsg::Command { id, command }) {
            self.pending().remove(&id);
            return Err(match e {
                TrySendError::Full(_) => CommandError::Busy(node.into()),
                // The connection ended between the lookup and the send.
                TrySendError::Closed(_) => CommandError::NotConnected(node.into()),
            });
        }
        match timeout(wait, done_rx).await {
            Ok(Ok(result)) => result,
            // Every path that removes a waiter answers it first; kept total anyway.
            Ok(Err(_)) => Err(CommandError::Disconnected {
                node: node.into(),
                reason: "the command was dropped".into(),
            }),
            Err(_) => {
                self.pending().remove(&id);
                Err(CommandError::Timeout {
                    node: node.into(),
                    secs: wait.as_secs_f64(),
                })
            }
        }
    }

    /// Node `from` answered command `id` on connection `conn`. Only the connection the
    /// command was sent on completes it; an answer from any other is ignored, logged
    /// and counted.
    pub(crate) fn complete(
        &self,
        from: &str,
        conn: u64,
        id: u64,
        result: Result<CommandOutput, String>,
    ) -> Answer {
        let mut pending = self.pending();
        match pending.get(&id) {
            Some(p) if p.conn == conn => {
                let Some(p) = pending.remove(&id) else {
                    return Answer::Unknown;
                };
                drop(pending);
                let node = p.node;
                let _ = p
                    .waiter
                    .send(result.map_err(|message| CommandError::Failed { node, message }));
                Answer::Completed
            }
            Some(p) => {
                let sent_to = p.node.clone();
                drop(pending);
                warn!(
                    node = from,
                    conn,
                    command = id,
                    sent_to = %sent_to,
                    "ignoring a command result from another connection than the command was sent on"
                );
                self.registry.record_foreign_result();
                Answer::Foreign
            }
            None => {
                drop(pending);
                debug!(
                    node = from,
                    command = id,
                    "dropping a result nobody waits for"
                );
                Answer::Unknown
            }
        }
    }

    /// Fails command `id` with `error` if it is pending on connection `conn` (the
    /// connection task could not send it).
    pub(crate) fn fail(&self, conn: u64, id: u64, error: CommandError) {
        let mut pending = self.pending();
        if pending.get(&id).is_some_and(|p| p.conn == conn) {
            if let Some(p) = pending.remove(&id) {
                drop(pending);
                let _ = p.waiter.send(Err(error));
            }
        }
    }

    /// Connection `conn` ended (`reason`): every command pending on it fails now. Call
    /// it only once the connection's queue receiver is dropped (see the module docs).
    pub(crate) fn connection_closed(&self, conn: u64, reason: &str) {
        let ended: Vec<Pending> = {
            let mut pending = self.pending();
            let ids: Vec<u64> = pending
                .iter()
                .filter(|(_, p)| p.conn == conn)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter()
                .filter_map(|id| pending.remove(&id))
                .collect()
        };
        if !ended.is_empty() {
            debug!(conn, commands = ended.len(), %reason, "failing the commands pending on a closed connection");
        }
        for p in ended {
            let _ = p.waiter.send(Err(CommandError::Disconnected {
                node: p.node,
                reason: reason.to_string(),
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Settings;

    fn registry() -> Arc<Registry> {
        Arc::new(Registry::new(
            Settings {
                disconnect_after_beats: 3,
                down_after: Duration::from_secs(60),
                persist_every: Duration::from_secs(60),
                event_retention: 10,
            },
            vec![],
            vec![],
        ))
    }

    fn connect(
        registry: &Registry,
        node: &str,
        depth: usize,
    ) -> (u64, tokio::sync::mpsc::Receiver<CoordMsg>) {
        let (tx, rx) = tokio::sync::mpsc::channel(depth);
        let conn = registry.connect(
            node,
            Duration::from_secs(1),
            "a".into(),
            "v".into(),
            tx,
            Box::new(|| ()),
        );
        (conn, rx)
    }

    #[tokio::test]
    async fn an_answer_completes_the_command_with_its_id_on_its_connection() {
        let registry = registry();
        let (conn, mut rx) = connect(&registry, "n1", 4);
        let commands = Arc::new(Commands::new(registry));
        let answering = commands.clone();
        tokio::spawn(async move {
            if let Some(CoordMsg::Command { id, .. }) = rx.recv().await {
                let other =
                    answering.complete("n1", conn, id + 1000, Ok(CommandOutput::Pong { nonce: 0 }));
                assert_eq!(other, Answer::Unknown);
                let done = answering.complete("n1", conn, id, Ok(CommandOutput::Pong { nonce: 7 }));
                assert_eq!(done, Answer::Completed);
            }
        });
        let out = commands
            .send("n1", Command::Ping { nonce: 7 }, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(matches!(out, CommandOutput::Pong { nonce: 7 }), "{out:?}");
    }

    #[tokio::test]
    async fn an_answer_from_another_nodes_connection_is_ignored_and_counted() {
        let registry = registry();
        let (victim, mut rx) = connect(&registry, "victim", 4);
        let (forger, _frx) = connect(&registry, "forger", 4);
        let commands = Arc::new(Commands::new(registry.clone()));
        let answering = commands.clone();
        tokio::spawn(async move {
            if let Some(CoordMsg::Command { id, .. }) = rx.recv().await {
                let forged =
                    answering.complete("forger", forger, id, Ok(CommandOutput::Pong { nonce: 1 }));
                assert_eq!(forged, Answer::Foreign);
                answering.complete("victim", victim, id, Err("the victim's own answer".into()));
            }
        });
        let err = commands
            .send("victim", Command::Ping { nonce: 1 }, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("the victim's own answer"), "{err}");
        assert_eq!(registry.stats_view().refused.foreign_command_results, 1);
    }

    #[tokio::test]
    async fn pending_commands_fail_at_once_when_their_connection_closes_or_is_replaced() {
        let registry = registry();
        let (old, mut rx) = connect(&registry, "n1", 4);
        let commands = Arc::new(Commands::new(registry.clone()));
        let waiting = {
            let commands = commands.clone();
            tokio::spawn(async move {
                commands
                    .send("n1", Command::ReportNow, Duration::from_secs(60))
                    .await
            })
        };
        assert!(rx.recv().await.is_some(), "the command was queued");
        // A newer connection replaces this one; its task ends and says so.
        let (_new, _rx2) = connect(&registry, "n1", 4);
        drop(rx);
        let started = std::time::Instant::now();
        commands.connection_closed(old, "replaced by a newer connection");
        let err = waiting.await.unwrap().unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(matches!(err, CommandError::Disconnected { .. }), "{err}");
        assert!(err.to_string().contains("node n1 disconnected"), "{err}");
        assert!(commands.pending().is_empty());
    }

    #[tokio::test]
    async fn a_command_on_a_closed_queue_fails_at_once() {
        let registry = registry();
        let (_conn, rx) = connect(&registry, "n1", 4);
        drop(rx);
        let commands = Commands::new(registry);
        let err = commands
            .send("n1", Command::ReportNow, Duration::from_secs(60))
            .await
            .unwrap_err();
        assert!(matches!(err, CommandError::NotConnected(_)), "{err}");
        assert!(commands.pending().is_empty());
    }

    #[tokio::test]
    async fn a_command_failed_by_its_connection_task_gets_that_error() {
        let registry = registry();
        let (conn, mut rx) = connect(&registry, "n1", 4);
        let commands = Arc::new(Commands::new(registry));
        let failing = commands.clone();
        tokio::spawn(async move {
            if let Some(CoordMsg::Command { id, .. }) = rx.recv().await {
                // Another connection cannot fail it; its own can.
                failing.fail(conn + 1, id, CommandError::Busy("x".into()));
                failing.fail(
                    conn,
                    id,
                    CommandError::TooLarge {
                        node: "n1".into(),
                        bytes: 1_500_000,
                        limit: 1 << 20,
                    },
                );
            }
        });
        let err = commands
            .send("n1", Command::ReportNow, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "the command is 1.4 MiB (1500000 bytes), over node n1's frame limit of 1 MiB (1048576 bytes); shorten the arguments"
        );
    }

    #[tokio::test]
    async fn a_full_queue_is_busy_at_once_and_a_silent_agent_times_out() {
        let registry = registry();
        let (_conn, _rx) = connect(&registry, "n1", 1);
        let commands = Commands::new(registry);
        let wait = Duration::from_millis(50);
        let err = commands
            .send("n1", Command::ReportNow, wait)
            .await
            .unwrap_err();
        assert!(matches!(err, CommandError::Timeout { .. }), "{err}");
        let err = commands
            .send("n1", Command::ReportNow, wait)
            .await
            .unwrap_err();
        assert!(matches!(err, CommandError::Busy(_)), "{err}");
        let err = commands
            .send("n2", Command::ReportNow, wait)
            .await
            .unwrap_err();
        assert!(matches!(err, CommandError::NotConnected(_)), "{err}");
        assert!(commands.pending().is_empty(), "nobody waits any more");
    }
}
