//! The agent daemon: samples this node, keeps one QUIC connection to the coordinator,
//! beats, reports, and answers the coordinator's commands.
//!
//! Shape:
//! - A dedicated *sampler thread* owns the [`Sampler`] (sysinfo and NVML calls block and
//!   some take milliseconds). It samples every `sample_interval`, or at once when asked,
//!   and publishes the newest report through a `watch` channel. The async side never
//!   blocks on sampling, and a slow GPU driver delays reports, never beats.
//! - The *session* task runs one connection: hello, welcome, then a `select!` over the
//!   beat timer, the report timer, new samples, commands from the coordinator and
//!   shutdown. A report goes out every `report_interval`, and at once when a new sample's
//!   health differs from the last one reported: another status, or a check that appeared,
//!   cleared or changed severity ([`condition_changed`]; live values alone are not news).
//! - The *reconnect loop* wraps sessions with exponential backoff and jitter
//!   (`reconnect_base` doubling to `reconnect_cap`); the backoff resets after a session
//!   that got as far as the coordinator's welcome. An attempt that failed counts against
//!   its wait: attempts start one backoff step apart, however long each took to fail
//!   (a handshake that got no answer waits up to 5 s), so after a partition heals the
//!   next attempt is at most one step away. A refusal the agent cannot fix by
//!   retrying (wrong certificate, incompatible protocol) is logged as an error with the
//!   coordinator's reason and retried at the cap, so fixing the coordinator side needs
//!   no agent restart.
//! - The *Ray supervisor* ([`crate::ray`]), when `[ray]` asks for a head or worker, runs
//!   beside the sessions and outlives them: losing the coordinator does not stop Ray. The
//!   session carries its status in every report (a change is reported at once), relays
//!   its head to the coordinator (again after each reconnect) and the coordinator's head
//!   to it. On shutdown the session withdraws this node's head before closing, and the
//!   agent waits for the supervisor to stop its process group. `Command::RayDrain` and
//!   `Command::RayResume` go to the supervisor's control ([`crate::ray::RayControl`]) on
//!   their own task, like plugin calls: a drain waits for Ray's GCS and a resume for a
//!   stop of the worker, neither of which may delay beats. Without `[ray]` (or on a
//!   head) they succeed saying there is nothing to drain or resume.
//! - *Scheduler plugins* ([`crate::plugins`]) listed in `[plugins]` are loaded on a
//!   blocking thread while the agent already connects and beats (compiling a component
//!   can take seconds; liveness must not wait for it). Once loaded, every session
//!   announces them (`AgentMsg::Plugins`: loaded ones with their grants, failures with
//!   their reasons), again after each reconnect and whenever the set changes. A
//!   `Command::Plugin` is run on its own task and its result sent when it is done, so a
//!   slow scheduler command never delays beats, reports or other commands; a result
//!   whose session ended meanwhile is dropped (the coordinator fails the command when
//!   the connection ends).
//! - *Frame limits* are negotiated: the hello says the largest frame this agent reads,
//!   the welcome the largest the coordinator reads. Nothing over the coordinator's limit
//!   is sent ([`frame_within`]): a command result over it is replaced by an error result
//!   for the same command that says so, so the coordinator's caller learns why and the
//!   session goes on; any other message over it is not sent and logged (the coordinator
//!   would refuse the frame and end the session).
//!
//! - A *silent coordinator* ends the session: when nothing at all (not even an ACK of a
//!   beat) has come from the coordinator for [`silent_after`] (three beats, what the
//!   coordinator waits before calling the node disconnected), the agent closes the
//!   connection and reconnects. QUIC alone would keep retransmitting into a partition
//!   with its backoff growing to many seconds, and give up only at the 30 s idle
//!   timeout; after a heal the node would wait for QUIC's next probe to be `ready`.
//!   Loss is not silence: under 20 % loss each way beats and their ACKs are retried
//!   within milliseconds (tests/network.rs).
//!
//! Invariant: the agent checks its own certificate against its configured name at start,
//! so a mis-issued certificate is a start-up error on the node, not a mystery refusal.

use std::net::SocketAddr;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::sync::watch;
use tokio::time::{interval, timeout, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::health::gpu::{self, GpuConfig};
use crate::health::verdict::{condition_changed, Thresholds};
use crate::health::Sampler;
use crate::plugins::{PluginHost, PluginsConfig};
use corral_base::backoff::backoff;
use corral_proto::job::LoadFailure;
use corral_proto::job::{LoadedPlugin, PluginError};
use corral_proto::model::{unix_ns, Health, NodeReport};
use corral_proto::wire::{
    self, AgentMsg, Beat, Command, CommandOutput, CoordMsg, Hello, Refusal, Welcome, WireError,
    DEFAULT_MAX_FRAME_BYTES, PROTOCOL_VERSION,
};
use corral_transport::delta::ReportEncoder;
use corral_transport::frame::{self, refusal_code, Bytes, FrameReader, FrameWriter};
use corral_transport::pki::{self, Role, TlsFiles};

/// Everything the agent daemon needs, resolved from its config.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub name: String,
    /// `host:port` of the coordinator.
    pub coordinator: String,
    pub server_name: String,
    pub beat_interval: Duration,
    pub report_interval: Duration,
    pub sample_interval: Duration,
    pub reconnect_base: Duration,
    pub reconnect_cap: Duration,
    pub tls: TlsFiles,
    pub thresholds: Thresholds,
    pub gpu: GpuConfig,
    /// `[ray]`, when present.
    pub ray: Option<crate::ray::RayConfig>,
    /// `[plugins]`: the scheduler plugins to load.
    pub plugins: PluginsConfig,
}

/// Samples this node once (for `corral agent --once`).
pub fn sample_once(name: &str, thresholds: &Thresholds, gpu: &GpuConfig) -> Result<NodeReport> {
    let source = gpu::open(gpu)?;
    let mut sampler =
        Sampler::new(thresholds.clone(), source).with_gpu_policy(gpu.policy(thresholds));
    // CPU use is a difference between two readings; give it one interval. Custom checks
    // get their first run (bounded by their timeouts) in the meantime.
    std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
    let longest = thresholds.checks.iter().map(|c| c.timeout).max();
    sampler.wait_for_checks(longest.unwrap_or_default() + Duration::from_millis(100));
    Ok(sampler.sample(name))
}

/// Runs the agent until `shutdown` is cancelled. Everything it logs is inside one `agent`
/// span (node, coordinator), each connection inside a `session` span (attempt, and the
/// coordinator's address once resolved), so events carry no repeated fields.
pub async fn run(opts: AgentOptions, shutdown: CancellationToken) -> Result<()> {
    let span = info_span!("agent", node = %opts.name, coordinator = %opts.coordinator);
    run_agent(opts, shutdown).instrument(span).await
}

async fn run_agent(opts: AgentOptions, shutdown: CancellationToken) -> Result<()> {
    let tls = opts.tls.load().context("loading the agent's TLS files")?;
    if tls.identity.name != opts.name {
        bail!(
            "certificate {} is for {:?} but this agent is named {:?}; issue one with `corral certs issue --name {} --role agent` or set agent.name",
            opts.tls.cert.display(),
            tls.identity.name,
            opts.name,
            opts.name
        );
    }
    if tls.identity.role != Role::Agent {
        bail!(
            "certificate {} has role {}, not agent",
            opts.tls.cert.display(),
            tls.identity.role
        );
    }
    let client_cfg = pki::quic_client_config(&tls, corral_transport::frame::transport_config())?;
    let endpoint = client_endpoint()?;

    let source = gpu::open(&opts.gpu)?;
    let (reports, sample_now) = spawn_sampler(
        opts.name.clone(),
        Sampler::new(opts.thresholds.clone(), source)
            .with_gpu_policy(opts.gpu.policy(&opts.thresholds)),
        opts.sample_interval,
    )?;
    let plugins = load_plugins(&opts.name, &opts.plugins);
    let ray = opts.ray.as_ref().and_then(|cfg| {
        crate::ray::start(
            cfg,
            &opts.name,
            &opts.coordinator,
            reports.clone(),
            shutdown.clone(),
        )
    });

    corral_base::systemd::ready(
        &format!("node {}: connecting to {}", opts.name, opts.coordinator),
        &shutdown,
    );
    let mut attempt: u32 = 0;
    loop {
        let began = tokio::time::Instant::now();
        // The session watches `shutdown` itself, so that it can close its connection
        // with a reason; this outer branch only covers the connect phase.
        let outcome = tokio::select! {
            biased;
            r = session(&opts, &endpoint, &client_cfg, reports.clone(), &sample_now, ray.as_ref(), plugins.clone(), &shutdown)
                .instrument(info_span!("session", attempt, address = tracing::field::Empty)) => r,
            _ = shutdown.cancelled() => Ok(SessionEnd::Shutdown),
        };
        // Time this attempt spent failing counts against the wait (module docs).
        let mut spent = began.elapsed();
        match outcome {
            Ok(SessionEnd::Shutdown) => break,
            Ok(SessionEnd::Lost { welcomed, reason }) => {
                if welcomed {
                    attempt = 0;
                    spent = Duration::ZERO;
                }
                warn!(%reason, "connection to the coordinator lost");
            }
            Err(SessionError::Refused { refusal, reason }) => {
                error!(?refusal, %reason, "the coordinator refused this agent");
                if refusal.is_permanent() {
                    attempt = u32::MAX / 2;
                }
            }
            Err(SessionError::Other(e)) => {
                warn!(error = format!("{e:#}"), "cannot reach the coordinator");
            }
        }
        corral_base::systemd::status(&format!(
            "node {}: no coordinator session, reconnecting to {}",
            opts.name, opts.coordinator
        ));
        let delay = backoff(opts.reconnect_base, opts.reconnect_cap, attempt).saturating_sub(spent);
        attempt = attempt.saturating_add(1);
        debug!(
            delay_ms = delay.as_millis() as u64,
            attempt, "reconnecting after backoff"
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    corral_base::systemd::stopping("stopping: leaving the coordinator, stopping Ray");
    endpoint.close(refusal_code(Refusal::Shutdown), b"agent shutting down");
    let _ = timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    if let Some(ray) = ray {
        // The supervisor saw `shutdown` too and is stopping its process group.
        let _ = ray.task.await;
    }
    info!("agent stopped");
    Ok(())
}

fn client_endpoint() -> Result<quinn::Endpoint> {
    // Dual-stack where the kernel has IPv6, plain IPv4 where it does not.
    quinn::Endpoint::client(SocketAddr::from(([0u16; 8], 0)))
        .or_else(|_| quinn::Endpoint::client(SocketAddr::from(([0, 0, 0, 0], 0))))
        .context("opening a UDP socket for QUIC")
}

/// The newest report, as the sampler thread publishes it (`None` before the first).
type Reports = watch::Receiver<Option<Arc<NodeReport>>>;

/// The sampler thread; returns the report channel and the "sample now" trigger.
fn spawn_sampler(
    name: String,
    mut sampler: Sampler,
    every: Duration,
) -> Result<(Reports, std_mpsc::Sender<()>)> {
    let (tx, rx) = watch::channel(None);
    let (now_tx, now_rx) = std_mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("corral-sampler".into())
        .spawn(move || loop {
            let report = sampler.sample(&name);
            if tx.send(Some(Arc::new(report))).is_err() {
                return;
            }
            match now_rx.recv_timeout(every) {
                Ok(()) | Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
            }
        })
        .context("starting the sampler thread")?;
    Ok((rx, now_tx))
}

/// The loaded plugin host and what the agent announces about it.
struct Plugins {
    host: PluginHost,
    loaded: Vec<LoadedPlugin>,
    failed: Vec<LoadFailure>,
}

impl Plugins {
    fn announcement(&self) -> AgentMsg {
        AgentMsg::Plugins {
            loaded: self.loaded.clone(),
            failed: self.failed.clone(),
        }
    }
}

type PluginsRx = watch::Receiver<Option<Arc<Plugins>>>;

/// Loads the enabled plugins on a blocking thread; the channel holds `None` until done.
fn load_plugins(node: &str, cfg: &PluginsConfig) -> PluginsRx {
    let (tx, rx) = watch::channel(None);
    if cfg.enable.is_empty() {
        tx.send_replace(Some(Arc::new(Plugins {
            host: PluginHost::empty(),
            loaded: vec![],
            failed: vec![],
        })));
        return rx;
    }
    let cfg = cfg.clone();
    let node = node.to_string();
    tokio::spawn(async move {
        let started = std::time::Instant::now();
        let enabled = cfg.enable.clone();
        let plugins = match tokio::task::spawn_blocking(move || PluginHost::load(&cfg)).await {
            Ok((host, failed)) => Plugins {
                loaded: host.loaded(),
                host,
                failed,
            },
            // A bug in the host must not take the agent down: every plugin is reported
            // failed, with the reason.
            Err(e) => Plugins {
                host: PluginHost::empty(),
                loaded: vec![],
                failed: enabled
                    .into_iter()
                    .map(|name| LoadFailure {
                        name,
                        message: format!("the plugin host failed while loading: {e}"),
                    })
                    .collect(),
            },
        };
        for p in &plugins.loaded {
            info!(%node, plugin = %p.info.name, version = %p.info.version, scheduler = %p.info.scheduler, digest = %p.digest, "plugin loaded");
        }
        for f in &plugins.failed {
            warn!(%node, plugin = %f.name, error = %f.message, "plugin failed to load");
        }
        info!(%node, loaded = plugins.loaded.len(), failed = plugins.failed.len(), ms = started.elapsed().as_millis() as u64, "plugins ready");
        tx.send_replace(Some(Arc::new(plugins)));
    });
    rx
}

/// How long the coordinator may send nothing before the agent takes the connection for
/// dead: three beats, what the coordinator waits before calling the node disconnected
/// (its default), and never less than three seconds, so that a short beat interval on a
/// slow link does not turn delay into reconnects.
pub fn silent_after(beat_interval: Duration) -> Duration {
    (beat_interval * 3).max(Duration::from_secs(3))
}

enum SessionEnd {
    Shutdown,
    Lost { welcomed: bool, reason: String },
}

enum SessionError {
    Refused { refusal: Refusal, reason: String },
    Other(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for SessionError {
    fn from(e: E) -> Self {
        SessionError::Other(e.into())
    }
}

/// Turns "the connection went away" into the coordinator's refusal when it sent one.
fn refusal_of(conn: &quinn::Connection) -> Option<(Refusal, String)> {
    match conn.close_reason()? {
        quinn::ConnectionError::ApplicationClosed(close) => {
            let refusal = frame::refusal_of(close.error_code)?;
            Some((refusal, String::from_utf8_lossy(&close.reason).into_owned()))
        }
        _ => None,
    }
}

/// A connection that ended before the session began: the coordinator's refusal when it
/// sent one, the revoked-certificate refusal when TLS says so (the coordinator judges
/// this node's certificate after the agent's side of the handshake completed, so either
/// can land at any of the first steps), else `what` failed with `e`.
fn handshake_error(opts: &AgentOptions, e: &quinn::ConnectionError, what: String) -> SessionError {
    if pki::refused_as_revoked(e) {
        return revoked(opts);
    }
    if let quinn::ConnectionError::ApplicationClosed(close) = e {
        if let Some(refusal) = frame::refusal_of(close.error_code) {
            return SessionError::Refused {
                refusal,
                reason: String::from_utf8_lossy(&close.reason).into_owned(),
            };
        }
    }
    SessionError::Other(anyhow::anyhow!("{what}: {e}"))
}

/// The coordinator holds this node's certificate revoked: which one, and what to do.
fn revoked(opts: &AgentOptions) -> SessionError {
    let serial = opts
        .tls
        .load()
        .ok()
        .and_then(|t| t.chain.first().and_then(|c| pki::serial_of(c).ok()))
        .map(|s| s.to_string())
        .unwrap_or_else(|| "unknown".into());
    SessionError::Refused {
        refusal: Refusal::Revoked,
        reason: format!(
            "the coordinator refused this node's certificate {}: it has been revoked (serial {serial}); issue a new one with `corral certs issue --ca CA_DIR --name {} --role agent --out DIR`, install it as [tls] cert and key, and restart the agent",
            opts.tls.cert.display(),
            opts.name
        ),
    }
}

// The session's inputs are distinct channels and handles; bundling them into a struct
// would only rename the list.
#[allow(clippy::too_many_arguments)]
async fn session(
    opts: &AgentOptions,
    endpoint: &quinn::Endpoint,
    client_cfg: &quinn::ClientConfig,
    mut reports: watch::Receiver<Option<Arc<NodeReport>>>,
    sample_now: &std_mpsc::Sender<()>,
    ray: Option<&crate::ray::RayHandles>,
    plugins: PluginsRx,
    shutdown: &CancellationToken,
) -> Result<SessionEnd, SessionError> {
    let addr = tokio::net::lookup_host(&opts.coordinator)
        .await
        .with_context(|| format!("resolving {}", opts.coordinator))?
        .next()
        .with_context(|| format!("{} resolves to no address", opts.coordinator))?;
    tracing::Span::current().record("address", tracing::field::display(addr));
    let connecting = endpoint
        .connect_with(client_cfg.clone(), addr, &opts.server_name)
        .context("starting the QUIC handshake")?;
    // QUIC retransmits the initial packet with backoff inside this window, so a
    // coordinator that comes up during it is reached without waiting for the next attempt.
    let conn = timeout(Duration::from_secs(5), connecting)
        .await
        .with_context(|| {
            format!(
                "no answer from {addr} within 5s (is the coordinator running and UDP reachable?)"
            )
        })?
        .map_err(|e| handshake_error(opts, &e, format!("QUIC handshake with {addr} failed")))?;
    let (send, recv) = conn
        .open_bi()
        .await
        .map_err(|e| handshake_error(opts, &e, "opening the control stream".into()))?;
    let mut writer = FrameWriter::new(send, DEFAULT_MAX_FRAME_BYTES);
    let mut reader = FrameReader::new(recv, DEFAULT_MAX_FRAME_BYTES);
    let hello = Hello {
        protocol: PROTOCOL_VERSION,
        node: opts.name.clone(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        beat_interval_ms: opts.beat_interval.as_millis().min(u32::MAX as u128) as u32,
        max_frame_bytes: DEFAULT_MAX_FRAME_BYTES as u32,
    };
    let welcome: Result<Welcome, WireError> = async {
        writer.send("hello", &hello).await?;
        reader.recv("welcome").await
    }
    .await;
    let welcome = match welcome {
        Ok(w) => w,
        Err(e) => {
            // A refusal arrives as a connection close; give it a moment to land.
            let _ = timeout(Duration::from_millis(500), conn.closed()).await;
            if let Some((refusal, reason)) = refusal_of(&conn) {
                return Err(SessionError::Refused { refusal, reason });
            }
            if let Some(closed) = conn.close_reason() {
                if pki::refused_as_revoked(&closed) {
                    return Err(revoked(opts));
                }
            }
            return Err(anyhow::anyhow!("no welcome from the coordinator: {e}").into());
        }
    };
    // The most this agent may send: what the coordinator reads, and what this agent's
    // writer frames.
    let limit = (welcome.max_frame_bytes as usize).min(DEFAULT_MAX_FRAME_BYTES);
    info!(protocol = welcome.protocol, coordinator_version = %welcome.coordinator_version, frame_limit = limit, "connected to the coordinator");
    corral_base::systemd::status(&format!("node {}: connected to {addr}", opts.name));

    let mut beat_tick = interval(opts.beat_interval);
    beat_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut report_tick = interval(opts.report_interval);
    report_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // Health as last reported to the coordinator on this connection.
    let mut last_health: Option<Health> = None;
    let mut forced_report = false;
    // Report what we have at once, so a (re)connected node is complete immediately.
    reports.mark_changed();
    let mut ray_status = ray.map(|r| r.status.clone());
    let mut own_head = ray.map(|r| r.own_head.clone());
    // A head tells a (re)connected coordinator where it is, or that it has none yet.
    let is_head = ray.and_then(|r| r.status.borrow().as_ref().map(|s| s.role))
        == Some(corral_proto::model::RayRole::Head);
    if let (true, Some(h)) = (is_head, &mut own_head) {
        let head = h.borrow_and_update().clone();
        if let Err(e) = send_within(&mut writer, "ray head", &AgentMsg::RayHead(head), limit).await
        {
            return Err(anyhow::anyhow!("sending the Ray head: {e}").into());
        }
    }
    // The sampler's report with this node's Ray status.
    let with_ray = |report: &NodeReport, ray_status: &Option<watch::Receiver<_>>| {
        let mut r = report.clone();
        r.ray = ray_status.as_ref().and_then(
            |s: &watch::Receiver<Option<corral_proto::model::RayStatus>>| s.borrow().clone(),
        );
        r
    };
    // After this session's first report, reports go as deltas.
    let mut deltas = ReportEncoder::new();

    // Plugins: announced now if loaded, else as soon as they are. Calls run on their own
    // tasks and hand their results back through `results`.
    let mut plugins = Some(plugins);
    let current = plugins.as_mut().and_then(|p| p.borrow_and_update().clone());
    if let Some(p) = current {
        if let Err(e) = send_within(&mut writer, "plugins", &p.announcement(), limit).await {
            return Err(anyhow::anyhow!("announcing the plugins: {e}").into());
        }
    }
    let (results_tx, mut results) = tokio::sync::mpsc::channel::<AgentMsg>(64);

    let lost = |e: WireError, conn: &quinn::Connection| {
        let reason = refusal_of(conn)
            .map(|(r, why)| format!("{r:?}: {why}"))
            .unwrap_or_else(|| e.to_string());
        Ok(SessionEnd::Lost {
            welcomed: true,
            reason,
        })
    };

    // What has come from the coordinator: any datagram (an ACK of a beat will do).
    let silent_limit = silent_after(opts.beat_interval);
    let mut heard = (conn.stats().udp_rx.datagrams, tokio::time::Instant::now());
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                if is_head {
                    // Workers leave at once instead of waiting for Ray's own timeouts.
                    let _ = timeout(Duration::from_millis(500), writer.send("ray head", &AgentMsg::RayHead(None))).await;
                }
                writer.finish();
                conn.close(refusal_code(Refusal::Shutdown), b"agent shutting down");
                return Ok(SessionEnd::Shutdown);
            }
            _ = beat_tick.tick() => {
                let received = conn.stats().udp_rx.datagrams;
                if received != heard.0 {
                    heard = (received, tokio::time::Instant::now());
                } else if heard.1.elapsed() >= silent_limit {
                    let silent = heard.1.elapsed();
                    conn.close(quinn::VarInt::from_u32(0), b"the coordinator went silent");
                    return Ok(SessionEnd::Lost {
                        welcomed: true,
                        reason: format!("nothing from the coordinator for {} ms; reconnecting", silent.as_millis()),
                    });
                }
                let beat = Beat { sent_at_ns: unix_ns() };
                if let Err(e) = writer.send("beat", &AgentMsg::Beat(beat)).await {
                    return lost(e, &conn);
                }
            }
            _ = report_tick.tick() => {
                let report = reports.borrow().clone();
                if let Some(report) = report {
                    last_health = Some(report.health.clone());
                    if let Err(e) = send_report(&mut writer, &mut deltas, &with_ray(&report, &ray_status), limit).await {
                        return lost(e, &conn);
                    }
                }
            }
            changed = reports.changed() => {
                if changed.is_err() {
                    return Err(anyhow::anyhow!("the sampler thread stopped").into());
                }
                let report = reports.borrow_and_update().clone();
                let Some(report) = report else { continue };
                let changed = last_health.as_ref().is_none_or(|h| condition_changed(h, &report.health));
                if forced_report || changed {
                    if let (true, Some(prev)) = (changed, &last_health) {
                        info!(from = %prev.status, to = %report.health.status, reasons = report.health.reasons.len(), "health changed; reporting now");
                    }
                    forced_report = false;
                    last_health = Some(report.health.clone());
                    if let Err(e) = send_report(&mut writer, &mut deltas, &with_ray(&report, &ray_status), limit).await {
                        return lost(e, &conn);
                    }
                    report_tick.reset();
                }
            }
            _ = watch_changed(&mut ray_status) => {
                let report = reports.borrow().clone();
                if let Some(report) = report {
                    if let Err(e) = send_report(&mut writer, &mut deltas, &with_ray(&report, &ray_status), limit).await {
                        return lost(e, &conn);
                    }
                    report_tick.reset();
                }
            }
            _ = watch_changed(&mut plugins) => {
                let current = plugins.as_mut().and_then(|p| p.borrow_and_update().clone());
                if let Some(p) = current {
                    if let Err(e) = send_within(&mut writer, "plugins", &p.announcement(), limit).await {
                        return lost(e, &conn);
                    }
                }
            }
            Some(result) = results.recv() => {
                if let Err(e) = send_within(&mut writer, "command result", &result, limit).await {
                    return lost(e, &conn);
                }
            }
            _ = watch_changed(&mut own_head) => {
                let head = own_head.as_mut().and_then(|h| h.borrow_and_update().clone());
                if let Err(e) = send_within(&mut writer, "ray head", &AgentMsg::RayHead(head), limit).await {
                    return lost(e, &conn);
                }
            }
            msg = reader.recv::<CoordMsg>("coordinator message") => {
                let msg = match msg {
                    Ok(m) => m,
                    Err(e) => return lost(e, &conn),
                };
                let (id, command) = match msg {
                    CoordMsg::Command { id, command } => (id, command),
                    CoordMsg::HeadChanged { head } => {
                        debug!(head = ?head.as_ref().map(|h| &h.address), "Ray head announced by the coordinator");
                        if let Some(r) = ray {
                            r.cluster_head.send_replace(head);
                        }
                        continue;
                    }
                };
                debug!(id, ?command, "command from the coordinator");
                let result = match command {
                    Command::Ping { nonce } => Ok(CommandOutput::Pong { nonce }),
                    Command::ReportNow => {
                        forced_report = true;
                        sample_now.send(()).map(|_| CommandOutput::ReportQueued).map_err(|_| "the sampler thread stopped".to_string())
                    }
                    Command::Plugin { plugin, call, owner } => {
                        let host = plugins.as_ref().and_then(|p| p.borrow().as_ref().map(|p| p.host.clone()));
                        let results = results_tx.clone();
                        tokio::spawn(async move {
                            let export = call.export();
                            let started = std::time::Instant::now();
                            let answer = match host {
                                Some(h) => h.call(&plugin, *call, owner.as_deref()).await,
                                None => Err(PluginError::NotLoaded(plugin.clone())),
                            };
                            match &answer {
                                Ok(_) => debug!(id, %plugin, export, ms = started.elapsed().as_millis() as u64, "plugin call done"),
                                Err(e) => debug!(id, %plugin, export, error = %e, ms = started.elapsed().as_millis() as u64, "plugin call failed"),
                            }
                            let msg = AgentMsg::CommandResult { id, result: Ok(CommandOutput::Plugin(answer)) };
                            // The session may have ended meanwhile; then nobody waits for it.
                            let _ = results.send(msg).await;
                        });
                        continue;
                    }
                    Command::RayDrain { .. } | Command::RayResume => {
                        // A drain waits for Ray's GCS, a resume for a stop of the worker:
                        // beside the session, like plugin calls.
                        let control = ray.map(|r| r.control.clone());
                        let results = results_tx.clone();
                        tokio::spawn(async move {
                            let result = ray_command(control, command).await;
                            match &result {
                                Ok(CommandOutput::Ray { detail }) => info!(id, %detail, "ray command done"),
                                Ok(_) => {}
                                Err(e) => warn!(id, error = %e, "ray command failed"),
                            }
                            let _ = results.send(AgentMsg::CommandResult { id, result }).await;
                        });
                        continue;
                    }
                };
                if let Err(e) = send_within(&mut writer, "command result", &AgentMsg::CommandResult { id, result }, limit).await {
                    return lost(e, &conn);
                }
            }
        }
    }
}

/// Runs a [`Command::RayDrain`] or [`Command::RayResume`] through this node's Ray
/// supervisor (`None`: Ray is not configured here, so there is nothing to drain).
async fn ray_command(
    control: Option<crate::ray::RayControl>,
    command: Command,
) -> Result<CommandOutput, String> {
    let answer = match (command, control) {
        (Command::RayDrain { .. }, None) => {
            Ok("Ray is not configured on this node ([ray] role): nothing to drain".into())
        }
        (Command::RayResume, None) => {
            Ok("Ray is not configured on this node ([ray] role): nothing to resume".into())
        }
        (
            Command::RayDrain {
                reason,
                deadline_ms,
            },
            Some(c),
        ) => match crate::ray::drain::deadline(deadline_ms) {
            Ok(deadline) => c.drain(reason, deadline).await,
            Err(e) => Err(e),
        },
        (Command::RayResume, Some(c)) => c.resume().await,
        (other, _) => return Err(format!("not a Ray command: {other:?}")),
    };
    answer
        .map(|detail| CommandOutput::Ray { detail })
        .map_err(|e| e.to_string())
}

/// Sends `msg` unless it is over `limit` bytes (see [`frame_within`]).
async fn send_within(
    writer: &mut FrameWriter,
    what: &'static str,
    msg: &AgentMsg,
    limit: usize,
) -> Result<(), WireError> {
    match frame_within(what, msg, limit)? {
        Some(frame) => writer.send_raw(frame).await,
        None => Ok(()),
    }
}

/// `report` as a delta against this session's previous report, or in full (see
/// `corral_transport::delta`). A report that is not sent (over `limit`) or cannot be
/// delta-encoded starts the deltas over, so the coordinator's base never drifts from ours.
async fn send_report(
    writer: &mut FrameWriter,
    deltas: &mut ReportEncoder,
    report: &NodeReport,
    limit: usize,
) -> Result<(), WireError> {
    let msg = match deltas.encode(report) {
        Ok(msg) => msg,
        Err(e) => {
            warn!(error = %e, "report delta failed; sending the full report");
            *deltas = ReportEncoder::new();
            AgentMsg::Report(Box::new(report.clone()))
        }
    };
    match frame_within("report", &msg, limit)? {
        Some(frame) => writer.send_raw(frame).await,
        None => {
            *deltas = ReportEncoder::new();
            Ok(())
        }
    }
}

/// `msg` as one frame of at most `limit` bytes (the coordinator's limit), or `None` when
/// it cannot be sent. A command result over the limit becomes an error result for the
/// same command id that says so; any other message over it is not sent (and logged).
fn frame_within(
    what: &'static str,
    msg: &AgentMsg,
    limit: usize,
) -> Result<Option<Bytes>, WireError> {
    let frame = wire::encode(what, msg)?;
    if frame.len() <= limit {
        return Ok(Some(Bytes::from(frame)));
    }
    let bytes = frame.len();
    if let AgentMsg::CommandResult { id, .. } = msg {
        let instead = AgentMsg::CommandResult {
            id: *id,
            result: Err(format!(
                "the answer is {}, over the coordinator's frame limit of {}, so the agent did not send it; ask for less (fewer job ids per status call, fewer log bytes)",
                size(bytes),
                size(limit)
            )),
        };
        let frame = wire::encode(what, &instead)?;
        if frame.len() <= limit {
            warn!(command = id, bytes, limit, "command result over the coordinator's frame limit; sending an error result instead");
            return Ok(Some(Bytes::from(frame)));
        }
    }
    error!(
        message_kind = what,
        bytes, limit, "message over the coordinator's frame limit not sent"
    );
    Ok(None)
}

/// `bytes` for a person: "1.4 MiB (1500000 bytes)", "512 bytes".
fn size(bytes: usize) -> String {
    const MIB: f64 = (1 << 20) as f64;
    let b = bytes as f64;
    let short = if b >= MIB {
        format!("{:.1} MiB", b / MIB)
    } else if b >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        return format!("{bytes} bytes");
    };
    format!("{} ({bytes} bytes)", short.replace(".0 ", " "))
}

/// Resolves when the watched value changes; never when there is nothing to watch or its
/// sender is gone.
async fn watch_changed<T>(rx: &mut Option<watch::Receiver<T>>) {
    match rx {
        Some(r) => {
            if r.changed().await.is_err() {
                std::future::pending::<()>().await
            }
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_proto::job::PluginReply;

    fn decode(frame: &Bytes) -> AgentMsg {
        wire::decode("agent message", frame).unwrap()
    }

    #[test]
    fn a_result_over_the_coordinators_limit_becomes_an_error_result_for_its_command() {
        let big = AgentMsg::CommandResult {
            id: 42,
            result: Ok(CommandOutput::Plugin(Ok(PluginReply::Text(
                "x".repeat(2000),
            )))),
        };
        let frame = frame_within("command result", &big, 1024).unwrap().unwrap();
        assert!(frame.len() <= 1024);
        let AgentMsg::CommandResult {
            id,
            result: Err(why),
        } = decode(&frame)
        else {
            panic!("not an error result");
        };
        assert_eq!(id, 42);
        assert!(
            why.contains("over the coordinator's frame limit of 1 KiB (1024 bytes)"),
            "{why}"
        );
        // Within the limit, the answer goes as it is.
        let frame = frame_within("command result", &big, 1 << 20)
            .unwrap()
            .unwrap();
        assert_eq!(decode(&frame), big);
    }

    #[tokio::test]
    async fn ray_commands_without_ray_succeed_saying_there_is_nothing_to_drain_or_resume() {
        let drain = Command::RayDrain {
            reason: "corral: gpu 0 XID 79".into(),
            deadline_ms: 60_000,
        };
        for (command, want) in [
            (drain, "nothing to drain"),
            (Command::RayResume, "nothing to resume"),
        ] {
            let Ok(CommandOutput::Ray { detail }) = ray_command(None, command).await else {
                panic!("not a Ray answer");
            };
            assert!(
                detail.contains(want) && detail.contains("not configured"),
                "{detail}"
            );
        }
    }

    #[tokio::test]
    async fn ray_commands_reach_the_supervisor_and_its_failure_is_the_commands_error() {
        use crate::ray::drain::Request;
        let (control, mut rx) = crate::ray::RayControl::channel();
        let supervisor = tokio::spawn(async move {
            let mut seen = vec![];
            while let Some(c) = rx.recv().await {
                seen.push(c.request.clone());
                let answer = match c.request {
                    Request::Drain { .. } => Ok("drained Ray node 1a2b".to_string()),
                    Request::Resume => Err(crate::ray::ControlError::Restart("no venv".into())),
                };
                c.answer(answer);
            }
            seen
        });
        let drain = |deadline_ms| Command::RayDrain {
            reason: "corral: disk".into(),
            deadline_ms,
        };
        let out = ray_command(Some(control.clone()), drain(60_000))
            .await
            .unwrap();
        assert_eq!(
            out,
            CommandOutput::Ray {
                detail: "drained Ray node 1a2b".into()
            }
        );
        let e = ray_command(Some(control.clone()), Command::RayResume)
            .await
            .unwrap_err();
        assert!(
            e.contains("restarting the Ray worker failed: no venv"),
            "{e}"
        );
        // A deadline past the limit is refused here, before the supervisor sees it.
        let e = ray_command(Some(control.clone()), drain(u64::MAX))
            .await
            .unwrap_err();
        assert!(e.contains("ray_drain_deadline"), "{e}");
        drop(control);
        let seen = supervisor.await.unwrap();
        assert_eq!(
            seen,
            vec![
                Request::Drain {
                    reason: "corral: disk".into(),
                    deadline: Duration::from_secs(60)
                },
                Request::Resume
            ]
        );
    }

    #[test]
    fn another_message_over_the_limit_is_not_sent() {
        let report = AgentMsg::Report(Box::new(NodeReport {
            node: "x".repeat(5000),
            ..Default::default()
        }));
        assert!(frame_within("report", &report, 1024).unwrap().is_none());
    }
}
