//! Ray on a node: the agent starts a Ray head or worker from a configured venv,
//! supervises it, and stops exactly what it started. It replaces launcher scripts that
//! ran `ray start` after a fixed sleep and `ray stop` on the way out.
//!
//! Life of the supervisor ([`start`] spawns it as one task):
//! 1. Decide who Ray runs as ([`user`]: `ray.user`, never root unless `ray.allow_root`)
//!    and give it its temp dir (`STATE_DIR/ray` by default), 0700 and owned by that
//!    user; an existing one owned by someone else, or that others can write, is refused
//!    ([`crate::fsperm::PrivateDir`]).
//! 2. Kill what a previous agent with the same Ray temp dir left behind
//!    ([`process::sweep_leftovers`]): a head that outlived a `kill -9` of its agent would
//!    otherwise hold the ports and the persisted session name.
//! 3. [`probe::probe_cached`] the venv as the Ray user: only root or that user may be able
//!    to change it ([`probe::check_venv`], at every start), its Python runs, `ray` imports
//!    (with the dashboard extras on a head), the user can reach the temp dir; and read the
//!    exact Python and Ray versions. A venv unchanged since its last successful probe is
//!    answered from [`cache`] (in `agent.state_dir`, else in the temp dir when Ray runs
//!    as the agent's own user) without starting Python. A failure of any step so far is
//!    state `failed` with a message naming the path or key and the fix, retried every
//!    `restart_cap`, so fixing it needs no agent restart (a changed `[ray]` section does).
//! 4. Head: `VENV/bin/ray start --head --block ...` as the Ray user, in its own process
//!    group, its output appended to `TEMP/corral-ray-head.log` (opened through the temp
//!    dir's descriptor, never through a symlink), Ray's own temp dir `TEMP/tmp` (which Ray
//!    makes world-writable; TEMP keeps everyone else out). Ready when the GCS port accepts a
//!    connection *and* the dashboard answers `GET /api/version` (polled every 25 ms,
//!    never a fixed sleep). Then the head is announced to the coordinator
//!    ([`corral_proto::wire::AgentMsg::RayHead`]), which pushes it to every agent.
//! 5. Worker: waits for a ready head from the coordinator (or probes an explicit
//!    `head_address`), compares versions ([`versions_match`]) and either refuses, a
//!    visible `refused` state whose message names both versions and both venvs, or runs
//!    `VENV/bin/ray start --address HEAD --block ...`; running once Ray prints
//!    "Ray runtime started.". A head with another address or start time (a restart)
//!    makes the worker stop and rejoin.
//! 6. An unexpected exit is cleaned up (the whole group, and leftovers naming the temp
//!    dir: a half-started head leaves gcs_server behind), then restarted after
//!    exponential backoff with jitter, at most `max_restarts` times per
//!    `restart_window`; one more is state `failed`.
//! 7. On shutdown: SIGTERM to the group, `stop_grace`, SIGKILL, sweep. Never `ray stop`,
//!    which kills every Ray process on the machine, other clusters' included.
//!
//! Drain and resume ([`RayControl`], which the session hands the coordinator's
//! `RayDrain` and `RayResume` to; the GCS side is in [`drain`]):
//! - A drain of a joined worker asks Ray's GCS to drain this worker's node (reason
//!   PREEMPTION, the coordinator's reason message, the deadline), and answers once Ray
//!   accepted it: state `draining`, Ray places no new tasks there. When the worker's
//!   raylet exits by itself (Ray shuts a drained node down once its work ended), or
//!   `ray start` exits, or the deadline passes (corral then stops the process group as
//!   on shutdown, and the work left on it with it), the state is `drained`. None of
//!   that is a crash: no restart, no restart budget used. A drained worker stays stopped
//!   until resumed; a head change does not restart it.
//! - A drain while the worker does not run (waiting for a head, refused, in backoff,
//!   failed) or has not joined yet (the process is stopped) makes it `drained` at once:
//!   it would otherwise join later and undo the drain.
//! - A resume stops a draining worker and starts a drained one fresh (a new Ray node;
//!   `running` once joined), clears the restart budget, and answers once the new
//!   `ray start` runs (or why it cannot start).
//! - Idempotent: a drain while draining or drained, and a resume with nothing drained,
//!   succeed and say so. On a head, every request answers that there is nothing to drain
//!   or resume (a head is never drained: its node is the cluster).
//! - The drained state lives in this process only: an agent restarted while drained
//!   starts its worker normally. That is deliberate: the coordinator keeps the node
//!   cordoned and sends the drain again when the node reconnects, and a worker that
//!   rejoins for those seconds is the lesser harm than one stranded by stale local state.
//!
//! Trade-offs:
//! - The coordinator keeps the last announced head when the head's agent merely loses
//!   its connection (the Ray head may well still be running); a head agent that shuts
//!   down, or whose head exits, withdraws it explicitly.
//! - With an explicit `head_address` and no head announced by the coordinator, the
//!   versions of the head are unknown to corral; Ray's own version check then applies.

pub mod cache;
pub mod config;
pub mod drain;
pub mod probe;
pub mod process;
pub mod user;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub use config::{PythonMatch, RayConfig, RoleConfig};
use corral_proto::model::{unix_ms, NodeReport, RayRole, RayState, RayStatus};
use corral_proto::wire::RayHead;
use drain::{Control, Request};
pub use drain::{ControlError, RayControl};
use probe::VenvInfo;
use process::RayProcess;
use user::RayUser;

/// SIGTERM → SIGKILL grace for a worker leaving a head that is gone.
const LEAVE_GRACE: Duration = Duration::from_secs(1);

/// How often a draining worker is checked for its raylet (a `/proc` scan).
const RAYLET_CHECK: Duration = Duration::from_millis(500);

/// What the agent holds of a running supervisor.
pub struct RayHandles {
    /// This node's Ray status, for its reports.
    pub status: watch::Receiver<Option<RayStatus>>,
    /// The head this node runs, once ready (heads only), for the coordinator.
    pub own_head: watch::Receiver<Option<RayHead>>,
    /// The cluster's head as the coordinator announces it; the agent writes here.
    pub cluster_head: watch::Sender<Option<RayHead>>,
    /// Drain and resume this node's worker.
    pub control: RayControl,
    pub task: JoinHandle<()>,
}

/// Whether a worker with `mine` (python, ray) may join a head with `head`.
pub fn versions_match(level: PythonMatch, mine: (&str, &str), head: (&str, &str)) -> bool {
    if mine.1 != head.1 {
        return false;
    }
    match level {
        PythonMatch::Patch => mine.0 == head.0,
        PythonMatch::Minor => {
            let mm = |v: &str| v.split('.').take(2).collect::<Vec<_>>().join(".");
            mm(mine.0) == mm(head.0)
        }
    }
}

/// The refusal message: both versions, both venvs, and what to do.
pub fn refusal_message(level: PythonMatch, me: &VenvInfo, head: &RayHead) -> String {
    let level = match level {
        PythonMatch::Patch => "patch",
        PythonMatch::Minor => "minor",
    };
    format!(
        "refusing to join the Ray head at {} (node {}): the head runs Python {} and Ray {} from {}, this worker has Python {} and Ray {} from {}; Ray and Python (to the {level} version, ray.python_match) must match. Recreate {} with Python {} and `{}/bin/pip install \"ray[default]=={}\"`",
        head.address,
        head.node,
        head.python,
        head.ray,
        head.venv,
        me.python,
        me.ray,
        me.venv.display(),
        me.venv.display(),
        head.python,
        me.venv.display(),
        head.ray
    )
}

/// Starts the supervisor for `cfg` (role head or worker; `None` for role none).
///
/// `coordinator` is the coordinator's `host:port`, used to pick the address Ray
/// advertises when `node_ip` is not set; `reports` gives the detected GPUs.
pub fn start(
    cfg: &RayConfig,
    node: &str,
    coordinator: &str,
    reports: watch::Receiver<Option<Arc<NodeReport>>>,
    shutdown: CancellationToken,
) -> Option<RayHandles> {
    let role = match cfg.role {
        RoleConfig::Head => RayRole::Head,
        RoleConfig::Worker => RayRole::Worker,
        RoleConfig::None => return None,
    };
    let venv = cfg.venv.clone()?;
    let temp_dir = cfg.temp_dir_for(node);
    let status = RayStatus {
        role,
        state: RayState::Starting,
        since_ms: unix_ms(),
        venv: venv.display().to_string(),
        python_version: None,
        ray_version: None,
        head_address: None,
        restarts: 0,
        message: Some("probing the venv".into()),
        pid: None,
        log_file: Some(
            temp_dir
                .join(format!("corral-ray-{role}.log"))
                .display()
                .to_string(),
        ),
    };
    let (status_tx, status_rx) = watch::channel(Some(status));
    let (own_tx, own_rx) = watch::channel(None);
    let (cluster_tx, cluster_rx) = watch::channel(None);
    let (control, mut control_rx) = RayControl::channel();
    let control_rx = match role {
        RayRole::Worker => Some(control_rx),
        // A head has nothing to drain in any state: answered beside it, so that its
        // supervisor never has to.
        RayRole::Head => {
            tokio::spawn(async move {
                while let Some(c) = control_rx.recv().await {
                    let what = match c.request {
                        Request::Drain { .. } => "drain",
                        Request::Resume => "resume",
                    };
                    c.answer(Ok(format!(
                        "this node runs the Ray head, not a worker: nothing to {what}"
                    )));
                }
            });
            None
        }
    };
    let sup = Supervisor {
        cfg: cfg.clone(),
        node: node.to_string(),
        coordinator: coordinator.to_string(),
        role,
        venv,
        temp_dir,
        status: status_tx,
        own_head: own_tx,
        cluster_head: cluster_rx,
        reports,
        shutdown,
        failures: VecDeque::new(),
        attempt: 0,
        user: None,
        control: control_rx,
        drain: None,
        resume_reply: None,
    };
    let task = tokio::spawn(sup.run());
    Some(RayHandles {
        status: status_rx,
        own_head: own_rx,
        cluster_head: cluster_tx,
        control,
        task,
    })
}

struct Supervisor {
    cfg: RayConfig,
    node: String,
    coordinator: String,
    role: RayRole,
    venv: PathBuf,
    temp_dir: PathBuf,
    status: watch::Sender<Option<RayStatus>>,
    own_head: watch::Sender<Option<RayHead>>,
    cluster_head: watch::Receiver<Option<RayHead>>,
    reports: watch::Receiver<Option<Arc<NodeReport>>>,
    shutdown: CancellationToken,
    /// Unexpected exits inside the restart window.
    failures: VecDeque<Instant>,
    attempt: u32,
    /// Who Ray runs as; set by [`Supervisor::prepare`] before anything starts.
    user: Option<RayUser>,
    /// Drain and resume requests (workers only; `None` once the agent dropped its end).
    control: Option<tokio::sync::mpsc::Receiver<Control>>,
    /// The drain in force: the worker is draining or drained while this is set.
    drain: Option<DrainState>,
    /// A resume waiting to be answered by the next start of the worker.
    resume_reply: Option<tokio::sync::oneshot::Sender<drain::Answer>>,
}

/// A drain in force.
struct DrainState {
    reason: String,
    deadline: Duration,
    /// The Ray node Ray accepted the drain of (`None`: the worker was not running).
    node: Option<String>,
    since_ms: u64,
    /// How the drained worker ended, once it did.
    ended: Option<String>,
}

impl DrainState {
    fn new(reason: String, deadline: Duration) -> Self {
        DrainState {
            reason,
            deadline,
            node: None,
            since_ms: unix_ms(),
            ended: None,
        }
    }

    fn node_text(&self) -> String {
        self.node
            .as_ref()
            .map(|n| format!("Ray node {n}"))
            .unwrap_or_else(|| "the worker".into())
    }

    /// The state message of a drained worker.
    fn drained_message(&self) -> String {
        format!(
            "drained ({}): {}; not restarted until resumed",
            self.reason,
            self.ended.as_deref().unwrap_or("stopped")
        )
    }

    /// The answer to a drain while this one is in force.
    fn already(&self) -> String {
        let ago = Duration::from_millis(unix_ms().saturating_sub(self.since_ms) / 1000 * 1000);
        match &self.ended {
            Some(ended) => format!(
                "already drained {} ago ({}): {ended}",
                humantime::format_duration(ago),
                self.reason
            ),
            None => format!(
                "already draining {} since {} ago ({}); it stops when its work ends or at the deadline of {}",
                self.node_text(),
                humantime::format_duration(ago),
                self.reason,
                humantime::format_duration(self.deadline)
            ),
        }
    }
}

/// The next drain or resume request; never resolves when there is no control (a head,
/// or the agent dropped its end).
async fn next_control(rx: &mut Option<tokio::sync::mpsc::Receiver<Control>>) -> Control {
    if let Some(r) = rx.as_mut() {
        if let Some(c) = r.recv().await {
            return c;
        }
        *rx = None;
    }
    std::future::pending().await
}

/// Resolves at `at`; never when there is no such instant.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// How one run of the Ray process ended.
enum Ended {
    Shutdown,
    /// Exited (or failed to start) on its own: restart within budget.
    Crashed(String),
    /// Worker: the head changed; rejoin at once.
    HeadChanged,
    /// Worker: stopped by a drain (why, in words); not restarted until resumed.
    Drained(String),
    /// Worker: a resume of a draining worker; start it again at once.
    Resumed,
}

impl Supervisor {
    fn set(&self, state: RayState, message: Option<String>) {
        self.status.send_modify(|s| {
            if let Some(s) = s {
                if s.state != state {
                    info!(node = %self.node, role = %self.role, from = %s.state, to = %state, message = message.as_deref().unwrap_or(""), "ray state changed");
                    s.since_ms = unix_ms();
                }
                s.state = state;
                s.message = message;
            }
        });
    }

    fn update(&self, f: impl FnOnce(&mut RayStatus)) {
        self.status.send_modify(|s| {
            if let Some(s) = s {
                f(s)
            }
        });
    }

    fn log_name(&self) -> String {
        format!("corral-ray-{}.log", self.role)
    }

    fn log_file(&self) -> PathBuf {
        self.temp_dir.join(self.log_name())
    }

    async fn run(mut self) {
        // The default temp dir carries the node name, so check it here too.
        if let Err(m) = config::check_temp_dir(&self.temp_dir) {
            let m = format!("{m}; set ray.temp_dir");
            self.set(RayState::Failed, Some(m.clone()));
            loop {
                tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    c = next_control(&mut self.control) => {
                        self.on_idle(c);
                        self.settle_resume(Err(ControlError::CannotRejoin(m.clone())));
                    }
                }
            }
        }
        let info = loop {
            match self.prepare().await {
                Ok(i) => break i,
                Err(reason) => {
                    error!(venv = %self.venv.display(), temp_dir = %self.temp_dir.display(), %reason, "Ray cannot be started");
                    self.set(RayState::Failed, Some(reason.clone()));
                    let retry = tokio::time::sleep(self.cfg.restart_cap);
                    tokio::pin!(retry);
                    loop {
                        tokio::select! {
                            _ = &mut retry => break,
                            _ = self.shutdown.cancelled() => return,
                            c = next_control(&mut self.control) => {
                                self.on_idle(c);
                                self.settle_resume(Ok(format!("no longer drained; the worker starts once its venv can be used ({reason})")));
                            }
                        }
                    }
                }
            }
        };
        info!(venv = %info.venv.display(), python = %info.python, ray = %info.ray, "Ray venv probed");
        self.update(|s| {
            s.python_version = Some(info.python.clone());
            s.ray_version = Some(info.ray.clone());
        });
        match self.role {
            RayRole::Head => self.run_head(&info).await,
            RayRole::Worker => self.run_worker(&info).await,
        }
        self.own_head.send_replace(None);
        self.set(RayState::Stopped, None);
    }

    /// Steps 1 to 3 of the module docs: who Ray runs as, its temp dir, an earlier
    /// agent's leftovers, and the venv. `Err` is the message of state `failed`.
    async fn prepare(&mut self) -> Result<VenvInfo, String> {
        let (name, allow_root, temp) = (
            self.cfg.user.clone(),
            self.cfg.allow_root,
            self.temp_dir.clone(),
        );
        // Account lookups go through NSS, which may ask a directory server: not on an
        // async worker.
        let state_dir = self.cfg.state_dir.clone();
        let (user, cache) = tokio::task::spawn_blocking(move || {
            let user = RayUser::resolve(name.as_deref(), allow_root).map_err(|e| e.to_string())?;
            crate::fsperm::PrivateDir::create(&temp, user.uid, user.gid).map_err(|e| {
                format!("Ray's temp dir (ray.temp_dir; by default under agent.state_dir): {e}")
            })?;
            let cache = probe_cache(state_dir.as_deref(), &temp, &user);
            Ok::<_, String>((user, cache))
        })
        .await
        .map_err(|e| format!("preparing Ray failed: {e}"))??;
        let swept = process::sweep_leftovers(None, &self.temp_dir, user.uid).await;
        if swept > 0 {
            warn!(count = swept, temp_dir = %self.temp_dir.display(), "killed Ray processes left behind by an earlier agent");
        }
        let probed = Instant::now();
        let (info, source) = probe::probe_cached(
            &self.venv,
            self.role == RayRole::Head,
            &user,
            &[self.temp_dir.as_path()],
            cache.as_ref(),
        )
        .await
        .map_err(|e| e.to_string())?;
        let ms = probed.elapsed().as_millis() as u64;
        match source {
            probe::ProbeSource::Cached => {
                info!(ms, "Ray venv unchanged since its last probe: versions from the cache, no Python started")
            }
            probe::ProbeSource::Probed(why) => {
                info!(ms, reason = %why, "Ray venv probed with Python")
            }
        }
        info!(user = %user.describe(), switched = user.switch, temp_dir = %self.temp_dir.display(), "Ray runs as its own user");
        self.user = Some(user);
        Ok(info)
    }

    /// Records an unexpected exit; `false` when the restart budget is spent.
    fn budget_left(&mut self) -> bool {
        let now = Instant::now();
        while self
            .failures
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.cfg.restart_window)
        {
            self.failures.pop_front();
        }
        self.failures.push_back(now);
        self.failures.len() as u32 <= self.cfg.max_restarts
    }

    /// After a crash: backoff (Restarting) or Failed. Returns false on shutdown.
    async fn after_crash(&mut self, why: String) -> bool {
        warn!(node = %self.node, role = %self.role, reason = %why, "ray exited unexpectedly");
        if !self.budget_left() {
            let msg = format!(
                "{why}; gave up after {} restarts within {} (ray.max_restarts, ray.restart_window); see {}",
                self.cfg.max_restarts,
                humantime::format_duration(self.cfg.restart_window),
                self.log_file().display()
            );
            error!(node = %self.node, role = %self.role, "{msg}");
            self.set(RayState::Failed, Some(msg));
            self.update(|s| s.pid = None);
            // Workers try again when a new head appears, or when drained (and then
            // resumed); heads wait for the operator.
            loop {
                tokio::select! {
                    _ = self.shutdown.cancelled() => return false,
                    c = next_control(&mut self.control) => {
                        if self.on_idle(c) {
                            return true;
                        }
                    }
                    c = self.cluster_head.changed(), if self.role == RayRole::Worker => {
                        if c.is_err() { self.shutdown.cancelled().await; return false; }
                        if self.cluster_head.borrow().is_some() {
                            self.failures.clear();
                            self.attempt = 0;
                            return true;
                        }
                    }
                }
            }
        }
        let delay = corral_base::backoff::backoff(
            self.cfg.restart_base,
            self.cfg.restart_cap,
            self.attempt,
        );
        self.attempt = self.attempt.saturating_add(1);
        self.update(|s| {
            s.restarts += 1;
            s.pid = None;
        });
        self.set(
            RayState::Restarting,
            Some(format!(
                "{why}; restarting in {}",
                humantime::format_duration(Duration::from_millis(delay.as_millis() as u64))
            )),
        );
        let wait = tokio::time::sleep(delay);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                _ = &mut wait => return true,
                _ = self.shutdown.cancelled() => return false,
                c = next_control(&mut self.control) => {
                    if self.on_idle(c) {
                        return true;
                    }
                }
            }
        }
    }

    /// Answers `c` while no worker process runs. `true` when it drained or resumed the
    /// worker, so that the caller plans again; a resume is then answered by
    /// [`Supervisor::settle_resume`] once the caller knows what happens next.
    fn on_idle(&mut self, c: Control) -> bool {
        match &c.request {
            Request::Drain { reason, deadline } => {
                if let Some(d) = &self.drain {
                    c.answer(Ok(d.already()));
                    return false;
                }
                let (state, message) = self
                    .status
                    .borrow()
                    .as_ref()
                    .map(|s| (s.state, s.message.clone()))
                    .unwrap_or((RayState::Starting, None));
                let mut d = DrainState::new(reason.clone(), *deadline);
                d.ended = Some(format!("drained while not running ({state})"));
                info!(node = %self.node, %state, reason = %d.reason, "ray worker drained while not running");
                self.drain = Some(d);
                let message = message.map(|m| format!(": {m}")).unwrap_or_default();
                c.answer(Ok(format!(
                    "the Ray worker was not running ({state}{message}); it stays stopped until resumed"
                )));
                true
            }
            Request::Resume => {
                if self.drain.take().is_none() {
                    c.answer(Ok("nothing is drained: nothing to resume".into()));
                    return false;
                }
                info!(node = %self.node, "ray worker resumed");
                self.failures.clear();
                self.attempt = 0;
                self.resume_reply = Some(c.reply);
                true
            }
        }
    }

    /// Answers the resume waiting for the worker's next start, if any.
    fn settle_resume(&mut self, answer: drain::Answer) {
        if let Some(reply) = self.resume_reply.take() {
            let _ = reply.send(answer);
        }
    }

    /// A drained worker: waits for a resume (`true`) or shutdown (`false`), answering
    /// drains meanwhile.
    async fn wait_resumed(&mut self) -> bool {
        let message = self.drain.as_ref().map(DrainState::drained_message);
        self.update(|s| s.pid = None);
        self.set(RayState::Drained, message);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return false,
                c = next_control(&mut self.control) => {
                    if self.on_idle(c) && self.drain.is_none() {
                        return true;
                    }
                }
            }
        }
    }

    /// Answers `c` while the worker's process runs (`joined`: Ray said it started).
    /// `Some` ends this run of the worker.
    async fn on_running(
        &mut self,
        c: Control,
        joined: bool,
        head: &RayHead,
        draining_until: &mut Option<tokio::time::Instant>,
    ) -> Option<Ended> {
        match &c.request {
            Request::Resume => {
                if self.drain.take().is_none() {
                    c.answer(Ok(
                        "the Ray worker is running and not drained: nothing to resume".into(),
                    ));
                    return None;
                }
                info!(node = %self.node, "draining ray worker resumed; starting it again");
                self.failures.clear();
                self.attempt = 0;
                self.resume_reply = Some(c.reply);
                Some(Ended::Resumed)
            }
            Request::Drain { .. } if self.drain.is_some() => {
                let already = self.drain.as_ref().map(DrainState::already);
                c.answer(Ok(already.unwrap_or_default()));
                None
            }
            Request::Drain { reason, deadline } if !joined => {
                let mut d = DrainState::new(reason.clone(), *deadline);
                d.ended = Some("stopped before it had joined the head".into());
                self.drain = Some(d);
                c.answer(Ok("the Ray worker had not joined the head yet: stopped it; it stays stopped until resumed".into()));
                Some(Ended::Drained(
                    "stopped before it had joined the head".into(),
                ))
            }
            Request::Drain { reason, deadline } => {
                let (reason, deadline) = (reason.clone(), *deadline);
                let Some(user) = self.user.clone() else {
                    c.answer(Err(ControlError::Restart(
                        "Ray's user was not decided before its start".into(),
                    )));
                    return None;
                };
                let ray_temp = self.temp_dir.join(config::RAY_OWN_TEMP_DIR);
                let log = self.log_file();
                let dirs = [self.temp_dir.as_path(), self.venv.as_path()];
                let worker = drain::Worker {
                    venv: &self.venv,
                    user: &user,
                    dirs: &dirs,
                    address: &head.address,
                    ray_temp_dir: &ray_temp,
                    log: &log,
                };
                let until_ms = unix_ms().saturating_add(deadline.as_millis() as u64);
                let started = Instant::now();
                let result = tokio::select! {
                    r = drain::drain_node(&worker, &reason, until_ms) => r,
                    _ = self.shutdown.cancelled() => return Some(Ended::Shutdown),
                };
                match result {
                    Ok(node) => {
                        info!(node = %self.node, ray_node = %node, reason = %reason, deadline_ms = deadline.as_millis() as u64, ms = started.elapsed().as_millis() as u64, "ray accepted the drain of this worker");
                        let mut d = DrainState::new(reason, deadline);
                        d.node = Some(node.clone());
                        let deadline_text = humantime::format_duration(deadline).to_string();
                        self.set(
                            RayState::Draining,
                            Some(format!(
                                "draining Ray node {node} ({}): no new tasks; stopped when its work ends, or in {deadline_text} at the latest",
                                d.reason
                            )),
                        );
                        self.drain = Some(d);
                        *draining_until = Some(tokio::time::Instant::now() + deadline);
                        c.answer(Ok(format!(
                            "drained Ray node {node}: Ray places no new tasks there, and its running work has {deadline_text} to finish"
                        )));
                        None
                    }
                    Err(e) => {
                        warn!(node = %self.node, error = %e, "draining the ray worker failed");
                        c.answer(Err(e.into()));
                        None
                    }
                }
            }
        }
    }

    /// The address Ray advertises: configured, else the local address that routes to the
    /// coordinator. The name lookup is tokio's (on its blocking pool), never a blocking
    /// `getaddrinfo` on an async worker; UDP `connect` only picks a route and sends nothing.
    async fn node_ip(&self) -> String {
        if let Some(ip) = &self.cfg.node_ip {
            return ip.clone();
        }
        let target = match tokio::net::lookup_host(self.coordinator.as_str()).await {
            Ok(mut addrs) => addrs.next(),
            Err(_) => None,
        };
        let routed = target.and_then(|target| {
            let bind = if target.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            };
            let s = std::net::UdpSocket::bind(bind).ok()?;
            s.connect(target).ok()?;
            Some(s.local_addr().ok()?.ip().to_string())
        });
        routed.unwrap_or_else(|| "127.0.0.1".into())
    }

    async fn common_args(&self) -> Vec<String> {
        let cpus = self.cfg.num_cpus.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1)
        });
        let mut a = vec![
            "--node-ip-address".to_string(),
            self.node_ip().await,
            "--num-cpus".into(),
            cpus.to_string(),
        ];
        let gpus = match self.cfg.num_gpus {
            Some(g) => Some(g),
            None => {
                let mut r = self.reports.clone();
                let _ =
                    tokio::time::timeout(Duration::from_secs(2), r.wait_for(|x| x.is_some())).await;
                let n = r.borrow().as_ref().map(|r| r.gpus.len() as u32);
                n
            }
        };
        if let Some(g) = gpus {
            a.extend(["--num-gpus".into(), g.to_string()]);
        }
        if !self.cfg.resources.is_empty() {
            a.extend([
                "--resources".into(),
                serde_json::to_string(&self.cfg.resources).unwrap_or_else(|_| "{}".into()),
            ]);
        }
        a.extend([
            "--temp-dir".into(),
            self.temp_dir
                .join(config::RAY_OWN_TEMP_DIR)
                .display()
                .to_string(),
            "--disable-usage-stats".into(),
        ]);
        a.extend(self.cfg.extra_args.iter().cloned());
        a
    }

    fn spawn(&self, info: &VenvInfo, args: Vec<String>) -> anyhow::Result<RayProcess> {
        let user = self
            .user
            .as_ref()
            .context("Ray's user was not decided before its start")?;
        // The Ray user owns the temp dir and may have changed it since the last start:
        // check it again, and open the log through it.
        let dir = crate::fsperm::PrivateDir::create(&self.temp_dir, user.uid, user.gid)
            .map_err(|e| anyhow::anyhow!("Ray's temp dir: {e}"))?;
        let log = match dir.open_append(&self.log_name()) {
            Ok(f) => Some(f),
            Err(e) => {
                warn!(log = %self.log_file().display(), error = %e, "not writing the Ray log file; Ray output goes to the agent log only");
                None
            }
        };
        let p = process::spawn_as(
            &info.ray_bin(),
            &args,
            &self.temp_dir,
            log,
            &self.log_file(),
            self.role.as_str(),
            user,
        )?;
        self.update(|s| s.pid = Some(p.pid));
        Ok(p)
    }

    async fn stop(&self, p: RayProcess) {
        self.stop_within(p, self.cfg.stop_grace).await
    }

    async fn stop_within(&self, p: RayProcess, grace: Duration) {
        let pid = p.pid;
        let stragglers = p.stop(grace, &self.temp_dir).await;
        info!(node = %self.node, role = %self.role, pid, stragglers, "ray process group stopped");
        self.update(|s| s.pid = None);
    }

    fn dashboard_addr(&self) -> (String, u16) {
        let host = if self.cfg.dashboard_host == "0.0.0.0" || self.cfg.dashboard_host == "::" {
            "127.0.0.1".to_string()
        } else {
            self.cfg.dashboard_host.clone()
        };
        (host, self.cfg.dashboard_port)
    }

    async fn run_head(&mut self, info: &VenvInfo) {
        let ip = self.node_ip().await;
        let address = join_host_port(&ip, self.cfg.port);
        self.update(|s| s.head_address = Some(address.clone()));
        loop {
            self.set(RayState::Starting, Some("starting the Ray head".into()));
            let mut args = vec![
                "start".to_string(),
                "--head".into(),
                "--block".into(),
                "--port".into(),
                self.cfg.port.to_string(),
                "--dashboard-host".into(),
                self.cfg.dashboard_host.clone(),
                "--dashboard-port".into(),
                self.cfg.dashboard_port.to_string(),
                "--ray-client-server-port".into(),
                self.cfg.client_server_port.to_string(),
            ];
            args.extend(self.common_args().await);
            let ended = match self.spawn(info, args) {
                Err(e) => Ended::Crashed(format!("{e:#}")),
                Ok(mut p) => {
                    let started = Instant::now();
                    let (dash_host, dash_port) = self.dashboard_addr();
                    let ready = tokio::select! {
                        r = wait_head_ready(&ip, self.cfg.port, &dash_host, dash_port) => Ok(r),
                        st = p.wait() => Err(Ended::Crashed(format!("ray start exited before the head was ready ({})", exit_text(st)))),
                        _ = tokio::time::sleep(self.cfg.start_timeout) => Err(Ended::Crashed(format!("the head was not ready within {} (ray.start_timeout)", humantime::format_duration(self.cfg.start_timeout)))),
                        _ = self.shutdown.cancelled() => Err(Ended::Shutdown),
                    };
                    match ready {
                        Err(end) => {
                            let end = with_tail(end, &p).await;
                            self.stop(p).await;
                            end
                        }
                        Ok(()) => {
                            let ready_ms = started.elapsed().as_millis() as u64;
                            let head = RayHead {
                                node: self.node.clone(),
                                address: address.clone(),
                                dashboard: format!(
                                    "http://{}",
                                    join_host_port(&dash_host, dash_port)
                                ),
                                python: info.python.clone(),
                                ray: info.ray.clone(),
                                venv: info.venv.display().to_string(),
                                started_ms: unix_ms(),
                            };
                            info!(node = %self.node, address = %address, ready_ms, "ray head ready");
                            self.set(RayState::Running, None);
                            self.own_head.send_replace(Some(head));
                            let up = Instant::now();
                            let end = tokio::select! {
                                st = p.wait() => Ended::Crashed(format!("ray start --head exited ({})", exit_text(st))),
                                _ = self.shutdown.cancelled() => Ended::Shutdown,
                            };
                            self.own_head.send_replace(None);
                            if up.elapsed() > self.cfg.restart_cap {
                                self.attempt = 0;
                            }
                            let end = with_tail(end, &p).await;
                            self.stop(p).await;
                            end
                        }
                    }
                }
            };
            match ended {
                Ended::Shutdown => return,
                Ended::Crashed(why) => {
                    if !self.after_crash(why).await {
                        return;
                    }
                }
                // A head is never drained (its requests are answered beside it).
                Ended::HeadChanged | Ended::Drained(_) | Ended::Resumed => {}
            }
        }
    }

    /// The head to join: the coordinator's, at the configured address if one is set.
    fn target_head(&self) -> Option<RayHead> {
        let announced = self.cluster_head.borrow().clone();
        match (&self.cfg.head_address, announced) {
            (Some(addr), Some(h)) => Some(RayHead {
                address: addr.clone(),
                ..h
            }),
            (None, h) => h,
            (Some(addr), None) => Some(RayHead {
                node: "(configured)".into(),
                address: addr.clone(),
                dashboard: String::new(),
                python: String::new(),
                ray: String::new(),
                venv: "(unknown)".into(),
                started_ms: 0,
            }),
        }
    }

    async fn run_worker(&mut self, info: &VenvInfo) {
        loop {
            if self.drain.is_some() {
                if !self.wait_resumed().await {
                    return;
                }
                self.set(
                    RayState::Starting,
                    Some("resumed: starting the worker again".into()),
                );
                continue;
            }
            let Some(head) = self.target_head() else {
                self.update(|s| s.head_address = None);
                self.set(
                    RayState::Starting,
                    Some("waiting for the coordinator to announce a ready Ray head".into()),
                );
                self.settle_resume(Ok(
                    "no longer drained; the worker starts once the coordinator announces a ready Ray head".into(),
                ));
                tokio::select! {
                    c = self.cluster_head.changed() => if c.is_err() { self.shutdown.cancelled().await; return; },
                    c = next_control(&mut self.control) => { self.on_idle(c); }
                    _ = self.shutdown.cancelled() => return,
                }
                continue;
            };
            self.update(|s| s.head_address = Some(head.address.clone()));
            // Versions are known when the coordinator announced the head.
            if !head.ray.is_empty()
                && !versions_match(
                    self.cfg.python_match,
                    (&info.python, &info.ray),
                    (&head.python, &head.ray),
                )
            {
                let msg = refusal_message(self.cfg.python_match, info, &head);
                error!(node = %self.node, head = %head.address, "{msg}");
                self.set(RayState::Refused, Some(msg.clone()));
                self.settle_resume(Err(ControlError::CannotRejoin(msg)));
                tokio::select! {
                    c = self.cluster_head.changed() => if c.is_err() { self.shutdown.cancelled().await; return; },
                    c = next_control(&mut self.control) => { self.on_idle(c); }
                    _ = self.shutdown.cancelled() => return,
                }
                continue;
            }
            if head.started_ms == 0 {
                // Configured address without an announcement: probe its GCS port.
                self.set(
                    RayState::Starting,
                    Some(format!(
                        "waiting for the Ray head at {} to accept connections",
                        head.address
                    )),
                );
                self.settle_resume(Ok(format!(
                    "no longer drained; the worker joins the Ray head at {} once it accepts connections",
                    head.address
                )));
                tokio::select! {
                    _ = wait_tcp(&head.address) => {}
                    c = self.cluster_head.changed() => { if c.is_err() { self.shutdown.cancelled().await; return; } continue; }
                    c = next_control(&mut self.control) => { self.on_idle(c); continue; }
                    _ = self.shutdown.cancelled() => return,
                }
            }
            self.set(
                RayState::Starting,
                Some(format!("joining the Ray head at {}", head.address)),
            );
            let mut args = vec![
                "start".to_string(),
                "--address".into(),
                head.address.clone(),
                "--block".into(),
            ];
            args.extend(self.common_args().await);
            let spawned = self.spawn(info, args);
            match &spawned {
                Ok(p) => self.settle_resume(Ok(format!(
                    "restarted the Ray worker (pid {}): it rejoins the Ray head at {} as a new Ray node",
                    p.pid, head.address
                ))),
                Err(e) => self.settle_resume(Err(ControlError::Restart(format!("{e:#}")))),
            }
            let ended = match spawned {
                Err(e) => Ended::Crashed(format!("{e:#}")),
                Ok(mut p) => {
                    let mut joined = false;
                    let started = Instant::now();
                    let mut started_rx =
                        std::mem::replace(&mut p.started, tokio::sync::mpsc::channel(1).1);
                    let deadline = tokio::time::sleep(self.cfg.start_timeout);
                    tokio::pin!(deadline);
                    // Set while a drain Ray accepted is in progress: when its deadline is.
                    let mut draining_until: Option<tokio::time::Instant> = None;
                    let mut raylet_check = tokio::time::interval(RAYLET_CHECK);
                    raylet_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    // The head went away under a draining worker: nothing to wait for.
                    let mut head_gone = false;
                    let end = loop {
                        tokio::select! {
                            s = started_rx.recv(), if !joined => {
                                if s.is_some() {
                                    joined = true;
                                    info!(node = %self.node, head = %head.address, join_ms = started.elapsed().as_millis() as u64, "ray worker joined the head");
                                    self.set(RayState::Running, None);
                                }
                            }
                            st = p.wait() => {
                                if draining_until.is_some() {
                                    break Ended::Drained(format!("`ray start` exited while draining ({})", exit_text(st)));
                                }
                                break Ended::Crashed(format!("ray start --address {} exited ({})", head.address, exit_text(st)));
                            }
                            _ = &mut deadline, if !joined => break Ended::Crashed(format!("not joined within {} (ray.start_timeout)", humantime::format_duration(self.cfg.start_timeout))),
                            _ = sleep_until(draining_until), if draining_until.is_some() => {
                                let grace = self.drain.as_ref().map(|d| d.deadline).unwrap_or_default();
                                break Ended::Drained(format!("its work had not ended by the drain deadline ({}), so corral stopped it", humantime::format_duration(grace)));
                            }
                            _ = raylet_check.tick(), if draining_until.is_some() => {
                                if !process::group_runs_off_runtime(p.pid as i32, "raylet").await {
                                    break Ended::Drained("Ray shut the drained node down once its work had ended".into());
                                }
                            }
                            c = self.cluster_head.changed() => {
                                if c.is_err() { break Ended::Shutdown; }
                                let new = self.target_head();
                                if new.as_ref().map(|h| (&h.address, h.started_ms)) != Some((&head.address, head.started_ms)) {
                                    info!(node = %self.node, old = %head.address, new = ?new.as_ref().map(|h| &h.address), "the Ray head changed; leaving the old one");
                                    if draining_until.is_some() {
                                        head_gone = true;
                                        break Ended::Drained("the Ray head changed while the worker was draining".into());
                                    }
                                    break Ended::HeadChanged;
                                }
                            }
                            c = next_control(&mut self.control) => {
                                if let Some(end) = self.on_running(c, joined, &head, &mut draining_until).await {
                                    break end;
                                }
                            }
                            _ = self.shutdown.cancelled() => break Ended::Shutdown,
                        }
                    };
                    if joined && started.elapsed() > self.cfg.restart_cap {
                        self.attempt = 0;
                    }
                    let end = with_tail(end, &p).await;
                    if matches!(end, Ended::HeadChanged) {
                        self.set(
                            RayState::Starting,
                            Some("the head changed; rejoining".into()),
                        );
                    }
                    if matches!(end, Ended::HeadChanged) || head_gone {
                        // The old head is gone: there is nothing to drain (Ray would wait
                        // 30 s for it), and its restart cannot bind its port while this
                        // raylet still names it ("already running").
                        self.stop_within(p, self.cfg.stop_grace.min(LEAVE_GRACE))
                            .await;
                    } else {
                        self.stop(p).await;
                    }
                    end
                }
            };
            match ended {
                Ended::Shutdown => return,
                Ended::HeadChanged => {}
                Ended::Drained(why) => {
                    info!(node = %self.node, reason = %why, "ray worker drained");
                    if let Some(d) = &mut self.drain {
                        d.ended = Some(why);
                    }
                }
                Ended::Resumed => {
                    self.set(
                        RayState::Starting,
                        Some("resumed: starting the worker again".into()),
                    );
                }
                Ended::Crashed(why) => {
                    if !self.after_crash(why).await {
                        return;
                    }
                }
            }
        }
    }
}

/// Adds Ray's last output lines to a crash reason.
async fn with_tail(end: Ended, p: &RayProcess) -> Ended {
    match end {
        Ended::Crashed(why) => {
            let tail = p.last_output().await;
            if tail.is_empty() {
                Ended::Crashed(why)
            } else {
                Ended::Crashed(format!("{why}; last output: {tail}"))
            }
        }
        other => other,
    }
}

fn exit_text(st: std::io::Result<std::process::ExitStatus>) -> String {
    match st {
        Ok(s) => s.to_string(),
        Err(e) => format!("wait failed: {e}"),
    }
}

/// Where the venv probe's answer may be kept ([`cache`]): the agent's state dir, else
/// Ray's temp dir when Ray runs as the agent's own user (then it is the agent's, 0700);
/// nowhere when Ray runs as another user without a state dir. Blocking.
fn probe_cache(
    state_dir: Option<&std::path::Path>,
    temp_dir: &std::path::Path,
    user: &RayUser,
) -> Option<cache::ProbeCache> {
    let dir = match state_dir {
        Some(d) => d,
        None if !user.switch => temp_dir,
        None => {
            info!(user = %user.describe(), "no agent.state_dir, and Ray's temp dir is its user's: the Ray venv is probed with Python at every start");
            return None;
        }
    };
    match cache::ProbeCache::open(dir) {
        Ok(c) => Some(c),
        Err(e) => {
            warn!(error = %e, "not caching the Ray venv probe; it runs Python at every start");
            None
        }
    }
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// How often a starting head is polled for readiness: a refused connection costs
/// microseconds, and every poll period is waited out on the way to a running cluster
/// (half of it on average, twice: GCS port, then dashboard).
const READY_POLL: Duration = Duration::from_millis(25);

/// Polls until `addr` accepts a TCP connection.
async fn wait_tcp(addr: &str) {
    loop {
        if let Ok(Ok(_)) = tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            return;
        }
        tokio::time::sleep(READY_POLL).await;
    }
}

/// One `GET path` over plain HTTP/1.0; whether the answer is a 200.
async fn http_ok(host: &str, port: u16, path: &str) -> bool {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(join_host_port(host, port)).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
            .await?;
        let mut buf = [0u8; 32];
        let n = s.read(&mut buf).await?;
        let head = String::from_utf8_lossy(&buf[..n]).to_string();
        Ok::<bool, std::io::Error>(
            head.starts_with("HTTP/1.") && head.split_whitespace().nth(1) == Some("200"),
        )
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), attempt).await,
        Ok(Ok(true))
    )
}

/// Polls until the head's GCS port accepts and its dashboard answers.
pub async fn wait_head_ready(gcs_host: &str, gcs_port: u16, dash_host: &str, dash_port: u16) {
    wait_tcp(&join_host_port(gcs_host, gcs_port)).await;
    while !http_ok(dash_host, dash_port, "/api/version").await {
        tokio::time::sleep(READY_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// A stand-in venv whose `ray start` runs a `raylet` (a copy of sleep) beside
    /// itself and outlives it, as Ray does, and whose Python answers the probe and drains: every drain's
    /// arguments are appended to `drains` in the venv, and its node is `fake-N`.
    fn fake_venv(dir: &Path) {
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::copy("/bin/sleep", bin.join("raylet")).unwrap();
        corral_base::testing::write_script(
            &bin.join("python"),
            r#"venv=$(dirname "$(dirname "$0")")
if [ $# -le 2 ]; then echo '{"python": "3.11.7", "ray": "2.60.0", "dashboard": true}'; exit 0; fi
shift 2
echo "$*" >> "$venv/drains"
printf '{"node": "fake-%s", "accepted": true, "rejection": ""}\n' "$(wc -l < "$venv/drains" | tr -d ' ')""#,
        );
        corral_base::testing::write_script(
            &bin.join("ray"),
            r#""$(dirname "$0")/raylet" 600 &
echo $! > raylet.pid
echo 'Ray runtime started.'
# Like `ray start --block`, it outlives a raylet that exits cleanly.
wait
sleep 600"#,
        );
    }

    fn worker_config(venv: &Path, temp: &Path) -> RayConfig {
        toml::from_str(&format!(
            "role = \"worker\"\nvenv = \"{}\"\ntemp_dir = \"{}\"\nallow_root = true\nnode_ip = \"127.0.0.1\"\nnum_cpus = 1\nnum_gpus = 0\nrestart_base = \"100ms\"\nrestart_cap = \"1s\"\nstop_grace = \"1s\"\nstart_timeout = \"10s\"\n",
            venv.display(),
            temp.display()
        ))
        .unwrap()
    }

    /// A head as the coordinator announces it, at `address`.
    fn announced(address: String) -> Option<RayHead> {
        Some(RayHead {
            node: "h".into(),
            address,
            dashboard: String::new(),
            python: "3.11.7".into(),
            ray: "2.60.0".into(),
            venv: "/opt/ray".into(),
            started_ms: 1,
        })
    }

    async fn wait_state(
        h: &RayHandles,
        what: &str,
        pred: impl Fn(&RayStatus) -> bool,
    ) -> RayStatus {
        let mut rx = h.status.clone();
        let got = tokio::time::timeout(
            Duration::from_secs(10),
            rx.wait_for(|s| s.as_ref().is_some_and(&pred)),
        )
        .await;
        match got {
            Ok(Ok(s)) => s.clone().unwrap(),
            _ => panic!("not {what}: {:?}", h.status.borrow()),
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_drained_worker_stays_stopped_without_using_its_restart_budget_until_resumed() {
        let d = tempfile::tempdir().unwrap();
        let (venv, temp) = (d.path().join("venv"), d.path().join("ray"));
        fake_venv(&venv);
        // The head's GCS port, as far as the worker can tell (Ray's `ray start` is a
        // stand-in, so nothing connects to it).
        let head = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let head_addr = head.local_addr().unwrap().to_string();
        let cfg = worker_config(&venv, &temp);
        let shutdown = CancellationToken::new();
        let (_reports_tx, reports) = watch::channel(None);
        let h = start(&cfg, "w1", "127.0.0.1:7440", reports, shutdown.clone()).unwrap();
        h.cluster_head.send_replace(announced(head_addr.clone()));
        let first = wait_state(&h, "running", |s| s.state == RayState::Running).await;
        let raylet_pid = || -> i32 {
            std::fs::read_to_string(temp.join("raylet.pid"))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };

        // Nothing drained: a resume changes nothing.
        let r = h.control.resume().await.unwrap();
        assert!(r.contains("nothing to resume"), "{r}");

        // A drain reaches Ray with this worker's own Ray temp dir, the reason and a
        // deadline in the future; the worker keeps running its work.
        let before = unix_ms();
        let r = h
            .control
            .drain("corral: gpu 0 XID 79".into(), Duration::from_secs(30))
            .await
            .unwrap();
        assert!(r.contains("drained Ray node fake-1"), "{r}");
        let s = wait_state(&h, "draining", |s| s.state == RayState::Draining).await;
        assert!(s.message.unwrap().contains("corral: gpu 0 XID 79"));
        assert_eq!(s.pid, first.pid, "the draining worker was restarted");
        let drains = std::fs::read_to_string(venv.join("drains")).unwrap();
        let args: Vec<&str> = drains.trim().splitn(3, ' ').collect();
        assert_eq!(args[0], head_addr);
        assert_eq!(args[1], temp.join("tmp").display().to_string());
        let deadline_ms: u64 = args[2].rsplit(' ').next().unwrap().parse().unwrap();
        assert!(deadline_ms >= before + 30_000 && deadline_ms <= unix_ms() + 30_000);
        assert!(drains.contains("corral: gpu 0 XID 79"), "{drains}");

        // Again while draining: nothing new is asked of Ray.
        let r = h
            .control
            .drain("corral: again".into(), Duration::from_secs(30))
            .await
            .unwrap();
        assert!(r.contains("already draining Ray node fake-1"), "{r}");
        assert_eq!(
            std::fs::read_to_string(venv.join("drains")).unwrap(),
            drains
        );

        // Ray shuts the idle drained node down: the raylet exits, `ray start` does not.
        unsafe {
            libc::kill(raylet_pid(), libc::SIGTERM);
        }
        let s = wait_state(&h, "drained", |s| s.state == RayState::Drained).await;
        assert!(
            s.message
                .as_deref()
                .unwrap()
                .contains("Ray shut the drained node down"),
            "{s:?}"
        );
        assert_eq!(s.restarts, 0, "a drain is not a crash");
        // Well past restart_base, it is still stopped and nothing of it runs.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let s = h.status.borrow().clone().unwrap();
        assert_eq!((s.state, s.pid, s.restarts), (RayState::Drained, None, 0));
        assert!(!process::group_alive(first.pid.unwrap() as i32));
        let r = h
            .control
            .drain("corral: again".into(), Duration::from_secs(30))
            .await
            .unwrap();
        assert!(r.contains("already drained"), "{r}");

        // A resume starts it fresh.
        let r = h.control.resume().await.unwrap();
        assert!(r.contains("restarted the Ray worker"), "{r}");
        let second = wait_state(&h, "running again", |s| s.state == RayState::Running).await;
        assert_ne!(second.pid, first.pid);

        // Work that outlasts the deadline: corral stops the worker when it passes.
        let r = h
            .control
            .drain("corral: disk".into(), Duration::from_millis(300))
            .await
            .unwrap();
        assert!(r.contains("drained Ray node fake-2"), "{r}");
        let s = wait_state(&h, "drained at the deadline", |s| {
            s.state == RayState::Drained
        })
        .await;
        assert!(
            s.message.as_deref().unwrap().contains("drain deadline"),
            "{s:?}"
        );
        assert_eq!(s.restarts, 0);
        assert!(!process::group_alive(second.pid.unwrap() as i32));

        // A resume of a draining worker stops it and starts it again.
        h.control.resume().await.unwrap();
        let third = wait_state(&h, "running", |s| s.state == RayState::Running).await;
        h.control
            .drain("corral: memory".into(), Duration::from_secs(60))
            .await
            .unwrap();
        wait_state(&h, "draining", |s| s.state == RayState::Draining).await;
        let r = h.control.resume().await.unwrap();
        assert!(r.contains("restarted the Ray worker"), "{r}");
        let fourth = wait_state(&h, "running", |s| s.state == RayState::Running).await;
        assert_ne!(fourth.pid, third.pid);
        assert!(!process::group_alive(third.pid.unwrap() as i32));
        assert_eq!(fourth.restarts, 0);

        shutdown.cancel();
        h.task.await.unwrap();
        assert!(!process::group_alive(fourth.pid.unwrap() as i32));
        drop(head);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_worker_drained_while_it_waits_for_its_head_does_not_start_until_resumed() {
        let d = tempfile::tempdir().unwrap();
        let (venv, temp) = (d.path().join("venv"), d.path().join("ray"));
        fake_venv(&venv);
        // No head address and no head announced: it waits for the coordinator.
        let cfg = worker_config(&venv, &temp);
        let shutdown = CancellationToken::new();
        let (_reports_tx, reports) = watch::channel(None);
        let h = start(&cfg, "w2", "127.0.0.1:7440", reports, shutdown.clone()).unwrap();
        wait_state(&h, "waiting for a head", |s| {
            s.message
                .as_deref()
                .is_some_and(|m| m.contains("waiting for the coordinator"))
        })
        .await;
        let r = h
            .control
            .drain("corral: disk".into(), Duration::from_secs(30))
            .await
            .unwrap();
        assert!(
            r.contains("was not running") && r.contains("stays stopped"),
            "{r}"
        );
        wait_state(&h, "drained", |s| s.state == RayState::Drained).await;
        // A head appears: a drained worker does not join it.
        let head = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        h.cluster_head
            .send_replace(announced(head.local_addr().unwrap().to_string()));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let s = h.status.borrow().clone().unwrap();
        assert_eq!((s.state, s.pid), (RayState::Drained, None));
        assert!(
            !venv.join("drains").exists(),
            "Ray was asked to drain a worker it never had"
        );
        // Resumed, it joins.
        let r = h.control.resume().await.unwrap();
        assert!(r.contains("restarted the Ray worker"), "{r}");
        wait_state(&h, "running", |s| s.state == RayState::Running).await;
        shutdown.cancel();
        h.task.await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_restarted_worker_with_an_unchanged_venv_starts_no_python() {
        let d = tempfile::tempdir().unwrap();
        let (venv, temp) = (d.path().join("venv"), d.path().join("ray"));
        fake_venv(&venv);
        // Its Python counts its starts, outside the venv.
        let probes = d.path().join("probes");
        corral_base::testing::write_script(
            &venv.join("bin/python"),
            &format!(
                "echo probe >> '{}'\necho '{{\"python\": \"3.11.7\", \"ray\": \"2.60.0\", \"dashboard\": true}}'",
                probes.display()
            ),
        );
        let mut cfg = worker_config(&venv, &temp);
        cfg.state_dir = Some(d.path().join("state"));
        for _ in 0..2 {
            let shutdown = CancellationToken::new();
            let (_reports_tx, reports) = watch::channel(None);
            let h = start(&cfg, "w3", "127.0.0.1:7440", reports, shutdown.clone()).unwrap();
            let s = wait_state(&h, "waiting for a head", |s| {
                s.message
                    .as_deref()
                    .is_some_and(|m| m.contains("waiting for the coordinator"))
            })
            .await;
            assert_eq!(
                (s.python_version.as_deref(), s.ray_version.as_deref()),
                (Some("3.11.7"), Some("2.60.0"))
            );
            shutdown.cancel();
            h.task.await.unwrap();
        }
        let runs = std::fs::read_to_string(&probes).unwrap();
        assert_eq!(
            runs.lines().count(),
            1,
            "Python started again for an unchanged venv"
        );
        assert!(d.path().join("state").join(cache::FILE_NAME).is_file());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_head_answers_that_it_has_nothing_to_drain_or_resume() {
        let d = tempfile::tempdir().unwrap();
        let venv = d.path().join("venv");
        fake_venv(&venv);
        let mut cfg = worker_config(&venv, &d.path().join("ray"));
        cfg.role = RoleConfig::Head;
        let shutdown = CancellationToken::new();
        let (_reports_tx, reports) = watch::channel(None);
        let h = start(&cfg, "h1", "127.0.0.1:7440", reports, shutdown.clone()).unwrap();
        let r = h
            .control
            .drain("corral: disk".into(), Duration::from_secs(30))
            .await
            .unwrap();
        assert!(
            r.contains("runs the Ray head") && r.contains("nothing to drain"),
            "{r}"
        );
        let r = h.control.resume().await.unwrap();
        assert!(r.contains("nothing to resume"), "{r}");
        assert_ne!(h.status.borrow().as_ref().unwrap().state, RayState::Drained);
        shutdown.cancel();
        h.task.await.unwrap();
    }

    #[test]
    fn patch_level_demands_the_same_python_and_ray() {
        let p = PythonMatch::Patch;
        assert!(versions_match(
            p,
            ("3.11.7", "2.60.0"),
            ("3.11.7", "2.60.0")
        ));
        assert!(!versions_match(
            p,
            ("3.11.6", "2.60.0"),
            ("3.11.7", "2.60.0")
        ));
        assert!(!versions_match(
            p,
            ("3.11.7", "2.59.0"),
            ("3.11.7", "2.60.0")
        ));
    }

    #[test]
    fn minor_level_accepts_another_python_patch_but_never_another_ray() {
        let m = PythonMatch::Minor;
        assert!(versions_match(
            m,
            ("3.11.6", "2.60.0"),
            ("3.11.7", "2.60.0")
        ));
        assert!(!versions_match(
            m,
            ("3.10.7", "2.60.0"),
            ("3.11.7", "2.60.0")
        ));
        assert!(!versions_match(
            m,
            ("3.11.7", "2.60.1"),
            ("3.11.7", "2.60.0")
        ));
    }

    #[test]
    fn refusal_names_both_versions_and_both_venvs() {
        let me = VenvInfo {
            venv: "/opt/w".into(),
            python: "3.10.1".into(),
            ray: "2.60.0".into(),
            dashboard: true,
        };
        let head = RayHead {
            node: "h".into(),
            address: "h:6379".into(),
            dashboard: String::new(),
            python: "3.11.7".into(),
            ray: "2.60.0".into(),
            venv: "/opt/h".into(),
            started_ms: 1,
        };
        let m = refusal_message(PythonMatch::Patch, &me, &head);
        for want in [
            "3.10.1",
            "3.11.7",
            "/opt/w",
            "/opt/h",
            "h:6379",
            "pip install",
        ] {
            assert!(m.contains(want), "{want} missing: {m}");
        }
    }
}
