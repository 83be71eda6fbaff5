//! Commands to agents: one request sent down a node's connection, one answer matched
//! back to whoever asked.
//!
//! Invariants:
//! - A command goes through the node's bounded per-connection queue (the channel the
//!   registry holds for its current connection) with `try_send`: a caller whose agent
//!   does not drain its queue gets [`CommandError::Busy`] at once and never blocks.
//! - Every command gets an id unique in this process; an answer
//!   (`AgentMsg::CommandResult`) completes the waiter with that id and nothing else. A
//!   caller that gives up (timeout) forgets its id, so a late answer is dropped.
//!
//! Trade-off: waiters are not tied to a connection. A command whose connection ends
//! before it is answered fails by its own timeout rather than at once; callers choose
//! that timeout, and tying waiters to connections would put this module into the
//! connection task's bookkeeping.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::timeout;

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
}

type Waiter = oneshot::Sender<Result<CommandOutput, String>>;

/// Sends commands to agents and matches their answers.
pub(crate) struct Commands {
    /// Where each connected node's command queue is.
    registry: Arc<Registry>,
    next_id: AtomicU64,
    pending: Mutex<HashMap<u64, Waiter>>,
}

impl Commands {
    pub(crate) fn new(registry: Arc<Registry>) -> Commands {
        Commands {
            registry,
            next_id: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Waiter>> {
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
        let queue = self
            .registry
            .command_channel(node)
            .ok_or_else(|| CommandError::NotConnected(node.into()))?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (done_tx, done_rx) = oneshot::channel();
        self.pending().insert(id, done_tx);
        if queue.try_send(CoordMsg::Command { id, command }).is_err() {
            self.pending().remove(&id);
            return Err(CommandError::Busy(node.into()));
        }
        match timeout(wait, done_rx).await {
            Ok(Ok(Ok(out))) => Ok(out),
            Ok(Ok(Err(message))) => Err(CommandError::Failed {
                node: node.into(),
                message,
            }),
            Ok(Err(_)) => Err(CommandError::NotConnected(node.into())),
            Err(_) => {
                self.pending().remove(&id);
                Err(CommandError::Timeout {
                    node: node.into(),
                    secs: wait.as_secs_f64(),
                })
            }
        }
    }

    /// An agent answered command `id`. An answer nobody waits for (any more) is dropped.
    pub(crate) fn complete(&self, id: u64, result: Result<CommandOutput, String>) {
        let waiter = self.pending().remove(&id);
        if let Some(w) = waiter {
            let _ = w.send(result);
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

    #[tokio::test]
    async fn an_answer_completes_the_command_with_its_id() {
        let registry = registry();
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        registry.connect(
            "n1",
            Duration::from_secs(1),
            "a".into(),
            "v".into(),
            tx,
            Box::new(|| ()),
        );
        let commands = Arc::new(Commands::new(registry));
        let answering = commands.clone();
        tokio::spawn(async move {
            if let Some(CoordMsg::Command { id, .. }) = rx.recv().await {
                answering.complete(id + 1000, Ok(CommandOutput::Pong { nonce: 0 }));
                answering.complete(id, Ok(CommandOutput::Pong { nonce: 7 }));
            }
        });
        let out = commands
            .send("n1", Command::Ping { nonce: 7 }, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(matches!(out, CommandOutput::Pong { nonce: 7 }), "{out:?}");
    }

    #[tokio::test]
    async fn a_full_queue_is_busy_at_once_and_a_silent_agent_times_out() {
        let registry = registry();
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        registry.connect(
            "n1",
            Duration::from_secs(1),
            "a".into(),
            "v".into(),
            tx,
            Box::new(|| ()),
        );
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
