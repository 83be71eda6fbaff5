//! Draining this node's Ray worker through Ray's GCS, and the control the agent uses to
//! ask the supervisor for a drain or a resume.
//!
//! How a drain reaches Ray: `VENV/bin/python -c SCRIPT` runs as the Ray user (never as
//! the agent, like the probe) and, through `ray._raylet.GcsClient` (what `ray drain-node`
//! calls), finds this worker's Ray node and asks the GCS to drain it with reason
//! `DRAIN_NODE_REASON_PREEMPTION`, the reason message and an absolute deadline. The
//! script prints one JSON line; nothing else is parsed.
//!
//! Which Ray node is this worker's: the live, non-head node whose `temp_dir` (as the GCS
//! records it) is this agent's own Ray temp dir (`TEMP/tmp`). The temp dir is per agent
//! (corral already treats every process naming it as its own), so a head and workers of
//! several agents on one machine, which share an IP address and by default a node name,
//! are told apart; a resumed worker's dead predecessor has the same temp dir but is not
//! alive; two live ones (a restart before the GCS noticed the old raylet's death) are
//! told apart by the newest start time. `ray drain-node` without `--node-id` would
//! instead start a driver on this machine to ask, which is slower and picks whichever
//! raylet it reaches first.
//!
//! What Ray 2.60 does with it (seen against the real venv): new tasks go elsewhere at
//! once; running tasks finish; when the node is idle its raylet exits by itself (exit
//! 0) and the GCS marks the node dead with reason `AUTOSCALER_DRAIN_PREEMPTED`. `ray
//! start --block` does *not* exit then (a clean exit is not "unexpected"), so the
//! supervisor watches for the raylet in its process group. Ray never enforces the
//! deadline: the supervisor stops the worker's process group when it passes.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

use super::user::RayUser;

/// How long the drain program may take: starting Python and importing Ray's client
/// (about a second here), one node listing and one drain call to the GCS.
pub const DRAIN_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest drain deadline accepted; a longer one is a mistake in the caller's
/// config (`ray_drain_deadline`), not a wish to keep a node draining for weeks.
pub const MAX_DRAIN_DEADLINE: Duration = Duration::from_secs(24 * 3600);

/// How long [`RayControl`] waits for the supervisor to answer. It answers between
/// steps, and one step can be a probe of the venv (up to a minute) or a stop of the
/// worker (`ray.stop_grace`).
pub const CONTROL_ANSWER_TIMEOUT: Duration = Duration::from_secs(180);

const SCRIPT: &str = r#"
import json, sys
def say(**kw):
    print(json.dumps(kw))
    sys.exit(0)
try:
    address, temp_dir, message, deadline_ms = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    from ray._raylet import GcsClient
    from ray.core.generated import autoscaler_pb2, gcs_pb2
except Exception as e:
    say(error="import", detail="%s: %s" % (type(e).__name__, e))
try:
    client = GcsClient(address=address)
    nodes = client.get_all_node_info(timeout=10)
except Exception as e:
    say(error="unreachable", detail="%s: %s" % (type(e).__name__, e))
alive = sorted(
    (info.start_time_ms, node.hex())
    for node, info in nodes.items()
    if info.temp_dir == temp_dir
    and info.state == gcs_pb2.GcsNodeInfo.ALIVE
    and not info.is_head_node
)
if not alive:
    say(error="not_found", detail="%d nodes listed" % len(nodes))
node = alive[-1][1]
try:
    accepted, why = client.drain_node(
        node,
        autoscaler_pb2.DrainNodeReason.Value("DRAIN_NODE_REASON_PREEMPTION"),
        message,
        deadline_ms,
    )
except Exception as e:
    say(error="drain", node=node, detail="%s: %s" % (type(e).__name__, e))
say(node=node, accepted=bool(accepted), rejection=why)
"#;

#[derive(Debug, Deserialize)]
struct ScriptOut {
    node: Option<String>,
    accepted: Option<bool>,
    rejection: Option<String>,
    error: Option<String>,
    detail: Option<String>,
}

/// Why a drain did not happen; every message names what failed and what to check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DrainError {
    #[error("cannot ask the Ray GCS at {address} to drain this worker: {detail}; check that the Ray head runs (`corral node <head>`) and that this node reaches {address}")]
    Unreachable { address: String, detail: String },
    #[error("the Ray GCS at {address} lists no live worker node with this worker's temp dir {temp_dir} ({detail}): the worker is not (or no longer) part of the cluster; see its log {log}")]
    NotFound {
        address: String,
        temp_dir: String,
        detail: String,
        log: String,
    },
    #[error("the Ray GCS at {address} did not accept the drain of node {node}: {reason}")]
    Rejected {
        address: String,
        node: String,
        reason: String,
    },
    #[error("draining this worker with {python} failed: {detail}; check the venv (`{venv}/bin/pip install --force-reinstall \"ray[default]==<the head's version>\"`)")]
    Program {
        python: String,
        venv: String,
        detail: String,
    },
    #[error("the Ray GCS at {address} did not answer the drain within {}s; check the head's health, then drain again", DRAIN_CALL_TIMEOUT.as_secs())]
    Timeout { address: String },
}

/// This worker, as a drain finds it.
pub struct Worker<'a> {
    pub venv: &'a Path,
    /// Who the drain program runs as: the Ray user.
    pub user: &'a RayUser,
    /// Entered in turn before the program runs (the agent's Ray temp dir, then the
    /// venv: see [`super::process::command`]).
    pub dirs: &'a [&'a Path],
    /// The head's GCS, `host:port`.
    pub address: &'a str,
    /// Ray's own temp dir of this worker (`TEMP/tmp`), as the GCS records it.
    pub ray_temp_dir: &'a Path,
    /// The worker's log, for messages.
    pub log: &'a Path,
}

/// Asks the GCS to drain `worker`'s live Ray node with `reason`; `deadline_unix_ms` is
/// when its work will be stopped. Returns the Ray node id (hex) whose drain Ray
/// accepted.
pub async fn drain_node(
    worker: &Worker<'_>,
    reason: &str,
    deadline_unix_ms: u64,
) -> Result<String, DrainError> {
    let Worker {
        venv,
        user,
        dirs: cwd_dirs,
        address,
        ray_temp_dir,
        log,
    } = *worker;
    let python = venv.join("bin").join("python");
    let program_err = |detail: String| DrainError::Program {
        python: python.display().to_string(),
        venv: venv.display().to_string(),
        detail,
    };
    let args = vec![
        "-c".to_string(),
        SCRIPT.to_string(),
        address.to_string(),
        ray_temp_dir.display().to_string(),
        reason.to_string(),
        deadline_unix_ms.to_string(),
    ];
    let mut cmd = super::process::command(&python, &args, cwd_dirs, user)
        .map_err(|e| program_err(e.to_string()))?;
    let run = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(DRAIN_CALL_TIMEOUT, run).await {
        Err(_) => {
            return Err(DrainError::Timeout {
                address: address.to_string(),
            })
        }
        Ok(Err(e)) => {
            return Err(program_err(super::process::spawn_failure(
                &e, &python, cwd_dirs, user,
            )))
        }
        Ok(Ok(o)) => o,
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let Some(parsed) = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<ScriptOut>(l.trim()).ok())
    else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().last().unwrap_or("").trim();
        return Err(program_err(format!(
            "exit {}, {}",
            out.status,
            if last.is_empty() { "no output" } else { last }
        )));
    };
    interpret(parsed, address, ray_temp_dir, log, &program_err)
}

fn interpret(
    out: ScriptOut,
    address: &str,
    ray_temp_dir: &Path,
    log: &Path,
    program_err: &dyn Fn(String) -> DrainError,
) -> Result<String, DrainError> {
    let detail = out.detail.unwrap_or_default();
    match out.error.as_deref() {
        Some("unreachable") => {
            return Err(DrainError::Unreachable {
                address: address.to_string(),
                detail,
            })
        }
        Some("not_found") => {
            return Err(DrainError::NotFound {
                address: address.to_string(),
                temp_dir: ray_temp_dir.display().to_string(),
                detail,
                log: log.display().to_string(),
            })
        }
        Some("drain") => {
            return Err(DrainError::Unreachable {
                address: address.to_string(),
                detail: format!(
                    "the drain call for node {} failed: {detail}",
                    out.node.unwrap_or_default()
                ),
            })
        }
        Some(other) => return Err(program_err(format!("{other}: {detail}"))),
        None => {}
    }
    match (out.node, out.accepted) {
        (Some(node), Some(true)) => Ok(node),
        (Some(node), Some(false)) => Err(DrainError::Rejected {
            address: address.to_string(),
            node,
            reason: out
                .rejection
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| "no reason given".into()),
        }),
        _ => Err(program_err(
            "its answer named no node or no outcome".to_string(),
        )),
    }
}

/// What the agent asks of the supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Drain this node's worker; running work gets `deadline` to finish.
    Drain { reason: String, deadline: Duration },
    /// Undo a drain: start the worker again so that it rejoins.
    Resume,
}

/// The supervisor's answer: what it did, in words, or why it could not.
pub type Answer = Result<String, ControlError>;

/// A request and where its answer goes.
pub struct Control {
    pub request: Request,
    pub reply: oneshot::Sender<Answer>,
}

impl Control {
    /// Sends the answer; a caller that gave up waiting is no error.
    pub fn answer(self, answer: Answer) {
        let _ = self.reply.send(answer);
    }
}

/// Why a drain or resume failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Drain(#[from] DrainError),
    #[error("a drain deadline of {given_ms} ms is over the limit of {}h; configure a shorter ray_drain_deadline", MAX_DRAIN_DEADLINE.as_secs() / 3600)]
    DeadlineTooLong { given_ms: u64 },
    #[error("the Ray worker is no longer drained, but it cannot rejoin: {0}")]
    CannotRejoin(String),
    #[error("restarting the Ray worker failed: {0}; it is retried with backoff (see `corral node` for its state)")]
    Restart(String),
    #[error("the Ray supervisor has stopped (the agent is shutting down), so it cannot {0}")]
    Stopped(&'static str),
    #[error("the Ray supervisor did not answer within {}s (it may be probing the venv or stopping Ray); the request may still take effect: look at the node's Ray state, then retry", CONTROL_ANSWER_TIMEOUT.as_secs())]
    NoAnswer,
}

/// The agent's end of the supervisor's control: cloneable, so that a request can be
/// waited for on its own task.
#[derive(Clone)]
pub struct RayControl {
    tx: mpsc::Sender<Control>,
}

impl RayControl {
    /// A control and the supervisor's end of it.
    pub fn channel() -> (RayControl, mpsc::Receiver<Control>) {
        let (tx, rx) = mpsc::channel(8);
        (RayControl { tx }, rx)
    }

    /// Drains this node's worker (see [`Request::Drain`]).
    pub async fn drain(&self, reason: String, deadline: Duration) -> Answer {
        self.ask(Request::Drain { reason, deadline }, "drain the worker")
            .await
    }

    /// Resumes this node's worker (see [`Request::Resume`]).
    pub async fn resume(&self) -> Answer {
        self.ask(Request::Resume, "resume the worker").await
    }

    async fn ask(&self, request: Request, what: &'static str) -> Answer {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Control { request, reply })
            .await
            .map_err(|_| ControlError::Stopped(what))?;
        match tokio::time::timeout(CONTROL_ANSWER_TIMEOUT, answer).await {
            Err(_) => Err(ControlError::NoAnswer),
            Ok(Err(_)) => Err(ControlError::Stopped(what)),
            Ok(Ok(a)) => a,
        }
    }
}

/// The drain deadline `deadline_ms` asks for, or why it is refused.
pub fn deadline(deadline_ms: u64) -> Result<Duration, ControlError> {
    let d = Duration::from_millis(deadline_ms);
    if d > MAX_DRAIN_DEADLINE {
        return Err(ControlError::DeadlineTooLong {
            given_ms: deadline_ms,
        });
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stand_in(dir: &Path, body: &str) {
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        corral_base::testing::write_script(&bin.join("python"), body);
    }

    async fn drain_with(body: &str) -> (Result<String, DrainError>, tempfile::TempDir) {
        let d = tempfile::tempdir().unwrap();
        stand_in(d.path(), body);
        let user = RayUser::agent();
        let (temp, log) = (d.path().join("ray/tmp"), d.path().join("worker.log"));
        let worker = Worker {
            venv: d.path(),
            user: &user,
            dirs: &[d.path()],
            address: "127.0.0.1:6379",
            ray_temp_dir: &temp,
            log: &log,
        };
        let r = drain_node(&worker, "corral: gpu 0 XID 79", 1_700_000_060_000).await;
        (r, d)
    }

    #[tokio::test]
    async fn the_program_gets_the_address_temp_dir_reason_and_deadline_and_an_accepted_drain_names_the_node(
    ) {
        // The stand-in checks its arguments ($1 is the script) and answers as Ray would.
        let (r, d) = drain_with(
            r#"[ "$3" = 127.0.0.1:6379 ] && [ "$5" = "corral: gpu 0 XID 79" ] && [ "$6" = 1700000060000 ] || { echo "bad args: $*" >&2; exit 2; }
echo "$4" > temp-dir-seen
echo 'some import chatter'
echo '{"node": "1a2b", "accepted": true, "rejection": ""}'"#,
        )
        .await;
        assert_eq!(r.unwrap(), "1a2b");
        let seen = std::fs::read_to_string(d.path().join("temp-dir-seen")).unwrap();
        assert_eq!(seen.trim(), d.path().join("ray/tmp").display().to_string());
    }

    #[tokio::test]
    async fn a_rejected_drain_names_the_node_and_rays_reason() {
        let (r, _d) = drain_with(
            r#"echo '{"node": "1a2b", "accepted": false, "rejection": "node is the head"}'"#,
        )
        .await;
        let e = r.unwrap_err();
        assert!(matches!(e, DrainError::Rejected { .. }), "{e}");
        let m = e.to_string();
        assert!(
            m.contains("node 1a2b") && m.contains("node is the head"),
            "{m}"
        );
    }

    #[tokio::test]
    async fn a_worker_the_gcs_does_not_list_points_at_its_log() {
        let (r, d) =
            drain_with(r#"echo '{"error": "not_found", "detail": "2 nodes listed"}'"#).await;
        let m = r.unwrap_err().to_string();
        assert!(m.contains("no live worker node"), "{m}");
        assert!(
            m.contains(&d.path().join("worker.log").display().to_string()),
            "{m}"
        );
    }

    #[tokio::test]
    async fn an_unreachable_gcs_names_the_address() {
        let (r, _d) =
            drain_with(r#"echo '{"error": "unreachable", "detail": "RpcError: connect failed"}'"#)
                .await;
        let m = r.unwrap_err().to_string();
        assert!(
            m.contains("127.0.0.1:6379") && m.contains("connect failed"),
            "{m}"
        );
    }

    #[tokio::test]
    async fn a_program_that_prints_garbage_is_a_failure_with_its_last_error_line() {
        let (r, _d) = drain_with("echo hello; echo 'ModuleNotFoundError: ray' >&2; exit 1").await;
        let e = r.unwrap_err();
        assert!(matches!(e, DrainError::Program { .. }), "{e}");
        assert!(e.to_string().contains("ModuleNotFoundError: ray"), "{e}");
    }

    #[test]
    fn a_deadline_over_a_day_is_refused_not_clamped() {
        assert_eq!(deadline(60_000).unwrap(), Duration::from_secs(60));
        assert_eq!(deadline(0).unwrap(), Duration::ZERO);
        let e = deadline(u64::MAX).unwrap_err();
        assert!(e.to_string().contains("ray_drain_deadline"), "{e}");
    }

    #[tokio::test]
    async fn a_control_whose_supervisor_is_gone_says_so() {
        let (control, rx) = RayControl::channel();
        drop(rx);
        let e = control.resume().await.unwrap_err();
        assert_eq!(e, ControlError::Stopped("resume the worker"));
        // Taken, then dropped unanswered: the same.
        let (control, mut rx) = RayControl::channel();
        let t = tokio::spawn(async move { drop(rx.recv().await) });
        let e = control
            .drain("r".into(), Duration::from_secs(1))
            .await
            .unwrap_err();
        assert_eq!(e, ControlError::Stopped("drain the worker"));
        t.await.unwrap();
    }
}
