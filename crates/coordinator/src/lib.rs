//! The coordinator daemon: accepts agents over QUIC, keeps the [`registry`], persists it
//! in the [`store`], tracks [`jobs`] submitted through the agents' scheduler plugins, and
//! serves the HTTP [`api`] and Prometheus [`metrics`].
//!
//! Concurrency model and why one agent cannot stall the others:
//! - Every incoming connection gets its own task, from handshake to close. A slow or
//!   silent peer only ever holds its own task; handshakes and hellos have deadlines.
//! - Per-connection work under the registry lock is O(1) and never awaits.
//! - Commands to an agent go through a bounded per-connection channel; a caller whose
//!   agent does not drain it gets "busy" instead of blocking.
//! - Frames are size-checked before they are buffered (see [`corral_proto::wire`]).
//!
//! Background tasks: a sweeper (every 100 ms) applies time-based liveness transitions,
//! a flusher (every second) hands changed nodes and new events to the store, and the
//! job poller ([`jobs::run_poller`]) asks the plugins about unfinished jobs.

pub mod api;
pub mod config;
pub mod jobs;
pub mod metrics;
pub mod registry;
pub mod store;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{ApiSection, JobsSection};
use corral_proto::wire::{
    self, AgentMsg, Command, CommandOutput, CoordMsg, Hello, Refusal, Welcome, WireError,
    MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
use corral_transport::frame::{refusal_code, transport_config, FrameReader, FrameWriter};
use corral_transport::pki::{self, Role, TlsFiles};
use registry::{Registry, Settings};
use store::Store;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct CoordinatorOptions {
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    pub settings: Settings,
    pub max_frame_bytes: usize,
    pub api: ApiSection,
    pub tls: TlsFiles,
    pub jobs: JobsSection,
}

/// Sends commands to agents and matches their results.
pub struct Commands {
    next_id: AtomicU64,
    pending: Mutex<HashMap<u64, oneshot::Sender<Result<CommandOutput, String>>>>,
}

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

impl Commands {
    fn new() -> Self {
        Commands {
            next_id: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
        }
    }

    fn complete(&self, id: u64, result: Result<CommandOutput, String>) {
        let waiter = self.pending.lock().ok().and_then(|mut p| p.remove(&id));
        if let Some(w) = waiter {
            let _ = w.send(result);
        }
    }
}

/// The running coordinator (shared by the API and connection tasks).
pub struct Shared {
    pub registry: Arc<Registry>,
    pub commands: Commands,
    pub started: std::time::Instant,
    pub jobs: jobs::Jobs,
}

impl Shared {
    /// Sends `command` to `node` and waits for its result.
    pub async fn command(
        &self,
        node: &str,
        command: Command,
        wait: Duration,
    ) -> Result<CommandOutput, CommandError> {
        let tx = self
            .registry
            .command_channel(node)
            .ok_or_else(|| CommandError::NotConnected(node.into()))?;
        let id = self.commands.next_id.fetch_add(1, Ordering::Relaxed);
        let (done_tx, done_rx) = oneshot::channel();
        if let Ok(mut p) = self.commands.pending.lock() {
            p.insert(id, done_tx);
        }
        let forget = || {
            if let Ok(mut p) = self.commands.pending.lock() {
                p.remove(&id);
            }
        };
        if tx.try_send(CoordMsg::Command { id, command }).is_err() {
            forget();
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
                forget();
                Err(CommandError::Timeout {
                    node: node.into(),
                    secs: wait.as_secs_f64(),
                })
            }
        }
    }
}

/// A started coordinator.
pub struct Running {
    pub quic_addr: SocketAddr,
    pub api_addr: SocketAddr,
    pub shared: Arc<Shared>,
    pub db_path: PathBuf,
    shutdown: CancellationToken,
    endpoint: quinn::Endpoint,
    tasks: Vec<JoinHandle<()>>,
    store: Arc<Store>,
}

impl Running {
    /// Stops accepting, closes every agent connection, writes everything to disk.
    pub async fn stop(self) {
        corral_base::systemd::stopping("stopping: closing agent connections, writing the database");
        // First, so that closing connections cannot race in a vaguer reason.
        self.shared.registry.shutdown_all();
        self.shutdown.cancel();
        self.endpoint.close(
            refusal_code(Refusal::Shutdown),
            b"coordinator shutting down",
        );
        for t in self.tasks {
            let _ = timeout(Duration::from_secs(5), t).await;
        }
        let (nodes, events) = self.shared.registry.take_dirty();
        self.store.write(nodes, events);
        self.store.flush().await;
        let _ = timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        info!("coordinator stopped");
    }
}

/// Starts the coordinator: database, QUIC endpoint, background tasks and HTTP API.
pub async fn start(opts: CoordinatorOptions) -> Result<Running> {
    let tls = opts
        .tls
        .load()
        .context("loading the coordinator's TLS files")?;
    if tls.identity.role != Role::Coordinator {
        anyhow::bail!(
            "certificate {} has role {}; the coordinator needs one issued with --role coordinator",
            opts.tls.cert.display(),
            tls.identity.role
        );
    }
    let server_cfg = pki::quic_server_config(&tls, transport_config())?;
    let (store, loaded) = Store::open(&opts.state_dir, opts.settings.event_retention as u32)?;
    let db_path = store.path().to_path_buf();
    info!(db = %db_path.display(), nodes = loaded.nodes.len(), "state loaded");
    let store = Arc::new(store);
    let jobs = jobs::Jobs::new(opts.jobs.clone(), store.clone(), loaded.jobs);
    let registry = Arc::new(Registry::new(opts.settings, loaded.nodes, loaded.events));
    let shared = Arc::new(Shared {
        registry: registry.clone(),
        commands: Commands::new(),
        started: std::time::Instant::now(),
        jobs,
    });
    let endpoint = server_endpoint(&opts, server_cfg)?;
    let quic_addr = endpoint.local_addr()?;
    let shutdown = CancellationToken::new();
    let mut tasks = vec![];

    let (api_addr, api_task) = api::serve(&opts.api, shared.clone(), shutdown.clone()).await?;
    tasks.push(api_task);

    tasks.push(tokio::spawn({
        let registry = registry.clone();
        let shutdown = shutdown.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    _ = tick.tick() => registry.sweep(),
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    }));
    tasks.push(tokio::spawn({
        let registry = registry.clone();
        let store = store.clone();
        let shutdown = shutdown.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let (nodes, events) = registry.take_dirty();
                        store.write(nodes, events);
                    }
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    }));
    tasks.push(tokio::spawn(jobs::run_poller(
        shared.clone(),
        shutdown.clone(),
    )));
    tasks.push(tokio::spawn(accept_loop(
        endpoint.clone(),
        shared.clone(),
        opts.max_frame_bytes,
        shutdown.clone(),
    )));
    info!(quic = %quic_addr, api = %api_addr, "coordinator listening");
    corral_base::systemd::ready(
        &format!("listening: QUIC {quic_addr}, API {api_addr}"),
        &shutdown,
    );
    Ok(Running {
        quic_addr,
        api_addr,
        shared,
        db_path,
        shutdown,
        endpoint,
        tasks,
        store,
    })
}

/// The QUIC endpoint, with its stateless-reset key and connection-id key derived from
/// the coordinator's TLS key instead of random ones: a coordinator restarted after a
/// crash then recognises the connection ids its previous process handed out and answers
/// their packets with resets the agents accept, so they reconnect within a beat instead
/// of waiting out QUIC's 30 s idle timeout (during which their nodes would look away and
/// their jobs go unpolled). The keys never leave the process, and a reset only ends a
/// connection whose state the coordinator no longer has.
fn server_endpoint(opts: &CoordinatorOptions, cfg: quinn::ServerConfig) -> Result<quinn::Endpoint> {
    use sha2::{Digest, Sha256};
    let key = std::fs::read(&opts.tls.key)
        .with_context(|| format!("reading {}", opts.tls.key.display()))?;
    let mut material = Sha256::new();
    material.update(b"corral coordinator: QUIC stateless reset key\0");
    material.update(&key);
    let derived = material.finalize();
    let reset = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &derived);
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&derived[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    let mut config = quinn::EndpointConfig::new(Arc::new(reset));
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    let socket = std::net::UdpSocket::bind(opts.listen).with_context(|| {
        format!(
            "binding the QUIC endpoint on UDP {} (is another coordinator running?)",
            opts.listen
        )
    })?;
    let runtime = quinn::default_runtime().context("no async runtime for QUIC")?;
    quinn::Endpoint::new(config, Some(cfg), socket, runtime).context("starting the QUIC endpoint")
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    max_frame: usize,
    shutdown: CancellationToken,
) {
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => i,
            _ = shutdown.cancelled() => return,
        };
        let Some(incoming) = incoming else { return };
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            tokio::select! {
                _ = handle_connection(incoming, shared, max_frame) => {}
                _ = shutdown.cancelled() => {}
            }
            debug!(%remote, "connection task ended");
        });
    }
}

/// Closes `conn` with a refusal, logging and counting it.
fn refuse(
    shared: &Shared,
    conn: &quinn::Connection,
    refusal: Refusal,
    stat: &'static str,
    reason: String,
) {
    warn!(remote = %conn.remote_address(), ?refusal, %reason, "refusing agent connection");
    shared.registry.record_rejection(stat);
    conn.close(refusal_code(refusal), reason.as_bytes());
}

async fn handle_connection(incoming: quinn::Incoming, shared: Arc<Shared>, max_frame: usize) {
    let remote = incoming.remote_address();
    let conn = match timeout(HANDSHAKE_TIMEOUT, async { incoming.accept()?.await }).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            // Most often: no client certificate, or one from another CA.
            warn!(%remote, error = %e, "QUIC/TLS handshake failed");
            shared.registry.record_rejection("handshake");
            return;
        }
        Err(_) => {
            warn!(%remote, "QUIC/TLS handshake timed out");
            shared.registry.record_rejection("handshake_timeout");
            return;
        }
    };
    let identity = match pki::peer_identity(&conn) {
        Ok(id) => id,
        Err(e) => {
            return refuse(
                &shared,
                &conn,
                Refusal::NotAnAgent,
                "identity",
                format!("{e:#}"),
            )
        }
    };
    if identity.role != Role::Agent {
        return refuse(
            &shared,
            &conn,
            Refusal::NotAnAgent,
            "role",
            format!(
                "certificate for {:?} has role {}, only agents may connect here",
                identity.name, identity.role
            ),
        );
    }
    let node = identity.name;
    let (send, recv) = match timeout(HANDSHAKE_TIMEOUT, conn.accept_bi()).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            debug!(%remote, %node, error = %e, "connection closed before the control stream");
            return;
        }
        Err(_) => {
            return refuse(
                &shared,
                &conn,
                Refusal::Timeout,
                "hello_timeout",
                "no control stream within 10s".into(),
            )
        }
    };
    let mut reader = FrameReader::new(recv, max_frame);
    let mut writer = FrameWriter::new(send, max_frame);
    let frame = match timeout(HANDSHAKE_TIMEOUT, reader.next_frame()).await {
        Ok(Ok(f)) => f,
        Ok(Err(WireError::FrameTooLarge { max })) => {
            return refuse(
                &shared,
                &conn,
                Refusal::FrameTooLarge,
                "frame_too_large",
                format!("hello exceeds the {max}-byte frame limit"),
            )
        }
        Ok(Err(e)) => {
            debug!(%remote, %node, error = %e, "no hello");
            return;
        }
        Err(_) => {
            return refuse(
                &shared,
                &conn,
                Refusal::Timeout,
                "hello_timeout",
                "no hello within 10s".into(),
            )
        }
    };
    let version = match wire::peek_version(&frame) {
        Ok(v) => v,
        Err(e) => {
            return refuse(
                &shared,
                &conn,
                Refusal::ProtocolViolation,
                "malformed",
                format!("malformed hello: {e}"),
            )
        }
    };
    if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) {
        return refuse(
            &shared,
            &conn,
            Refusal::UnsupportedVersion,
            "version",
            format!(
                "agent speaks protocol {version}; this coordinator ({}) speaks {MIN_PROTOCOL_VERSION}..={PROTOCOL_VERSION}; upgrade the {}",
                env!("CARGO_PKG_VERSION"),
                if version > PROTOCOL_VERSION { "coordinator" } else { "agent" }
            ),
        );
    }
    let hello: Hello = match wire::decode("hello", &frame) {
        Ok(h) => h,
        Err(e) => {
            return refuse(
                &shared,
                &conn,
                Refusal::ProtocolViolation,
                "malformed",
                format!("malformed hello: {e}"),
            )
        }
    };
    if hello.node != node {
        return refuse(
            &shared,
            &conn,
            Refusal::IdentityMismatch,
            "identity",
            format!(
                "certificate is for node {node:?} but the hello claims {:?}",
                hello.node
            ),
        );
    }
    let welcome = Welcome {
        protocol: PROTOCOL_VERSION,
        coordinator_version: env!("CARGO_PKG_VERSION").into(),
    };
    if writer.send("welcome", &welcome).await.is_err() {
        return;
    }
    let beat_interval = Duration::from_millis(u64::from(hello.beat_interval_ms.max(1)));
    let (cmd_tx, mut cmd_rx) = mpsc::channel::<CoordMsg>(64);
    let registry = shared.registry.clone();
    let conn_id = registry.connect(
        &node,
        beat_interval,
        remote.to_string(),
        hello.agent_version.clone(),
        cmd_tx,
        Some(conn.clone()),
    );
    info!(%node, %remote, agent_version = %hello.agent_version, beat_ms = hello.beat_interval_ms, "agent connected");

    let reason = loop {
        tokio::select! {
            frame = reader.next_frame() => {
                let frame = match frame {
                    Ok(f) => f,
                    Err(WireError::FrameTooLarge { max }) => {
                        let why = format!("frame exceeds the {max}-byte limit");
                        refuse(&shared, &conn, Refusal::FrameTooLarge, "frame_too_large", why.clone());
                        break why;
                    }
                    Err(e) => break close_reason(&conn).unwrap_or_else(|| e.to_string()),
                };
                registry.stats.bytes_in.fetch_add(frame.len() as u64 + 4, Ordering::Relaxed);
                let msg: AgentMsg = match wire::decode("agent message", &frame) {
                    Ok(m) => m,
                    Err(e) => {
                        let why = format!("malformed message: {e}");
                        refuse(&shared, &conn, Refusal::ProtocolViolation, "malformed", why.clone());
                        break why;
                    }
                };
                match msg {
                    AgentMsg::Beat(b) => { registry.beat(&node, conn_id, &b); }
                    AgentMsg::Report(r) => {
                        if r.node != node {
                            let why = format!("report for node {:?} on the connection of {node:?}", r.node);
                            refuse(&shared, &conn, Refusal::IdentityMismatch, "identity", why.clone());
                            break why;
                        }
                        registry.report(&node, conn_id, *r);
                    }
                    AgentMsg::CommandResult { id, result } => shared.commands.complete(id, result),
                    AgentMsg::RayHead(head) => { registry.ray_head_announced(&node, conn_id, head); }
                    AgentMsg::Plugins { loaded, failed } => { registry.plugins_announced(&node, conn_id, loaded, failed); }
                }
            }
            cmd = cmd_rx.recv() => {
                let Some(cmd) = cmd else { break "command channel closed".into() };
                if let Err(e) = writer.send("command", &cmd).await {
                    break e.to_string();
                }
            }
        }
    };
    registry.disconnect(&node, conn_id, &reason);
    info!(%node, %remote, %reason, "agent disconnected");
}

fn close_reason(conn: &quinn::Connection) -> Option<String> {
    conn.close_reason().map(|e| match e {
        quinn::ConnectionError::ApplicationClosed(c) => {
            let why = String::from_utf8_lossy(&c.reason).into_owned();
            if why.is_empty() {
                "agent closed the connection".into()
            } else {
                why
            }
        }
        quinn::ConnectionError::TimedOut => "connection timed out".into(),
        other => other.to_string(),
    })
}
