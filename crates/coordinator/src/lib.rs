//! The coordinator daemon: accepts agents over QUIC, keeps the [`registry`], persists it
//! in the store, tracks [`jobs`] submitted through the agents' scheduler plugins, and
//! serves the HTTP API and Prometheus [`metrics`].
//!
//! Concurrency model and why one agent cannot stall the others:
//! - Every incoming connection gets its own task, from handshake to close. A slow or
//!   silent peer only ever holds its own task; handshakes and hellos have deadlines.
//! - Per-connection work under the registry lock is O(1) and never awaits.
//! - Commands to an agent go through a bounded per-connection channel; a caller whose
//!   agent does not drain it gets "busy" instead of blocking.
//! - Frames are size-checked before they are buffered (see [`corral_proto::wire`]).
//!
//! Ownership: [`Shared`] is what the API and the connection tasks share; each part holds
//! `Arc`s to exactly what it uses (the command path holds the registry, for its command
//! channels; [`jobs::Jobs`] holds the registry, the command path and the store) and none
//! reaches back into `Shared`. Runtime state, stored rows and the API's schema are
//! separate types: the registry and the job table convert to the store's rows and to
//! [`corral_proto::api`] explicitly.
//!
//! Background tasks: a sweeper (every 100 ms) applies time-based liveness transitions,
//! a flusher (every second) hands changed nodes and new events to the store, and the
//! job poller ([`jobs::Jobs::poll`], run by its loop) asks the plugins about unfinished
//! jobs, the [`remediation`] drains and resumes nodes, the [`pools`] keep their sizes
//! through provider plugins, and the [`console`]'s feed sends what changed to open web
//! consoles once a second.

pub mod access;
mod api;
mod bounds;
mod commands;
pub mod config;
mod connection;
pub mod console;
pub mod jobs;
mod latency;
pub mod metrics;
pub mod pools;
pub mod registry;
pub mod remediation;
mod revocation;
mod store;

pub use store::{check as check_database, CheckReport};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use commands::CommandError;
use commands::Commands;
use config::{ApiSection, Authority, JobsSection, RemediationSection, SchedulerSection};
use corral_proto::wire::Refusal;
use corral_transport::frame::{refusal_code, transport_config};
use corral_transport::pki::{self, Role, TlsFiles};
use jobs::Jobs;
use registry::{Registry, Settings};
use store::Store;

#[derive(Debug, Clone)]
pub struct CoordinatorOptions {
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    pub settings: Settings,
    pub max_frame_bytes: usize,
    pub api: ApiSection,
    pub access: access::AccessSection,
    pub tls: TlsFiles,
    pub jobs: JobsSection,
    /// Which nodes may announce a Ray head and serve which scheduler plugin
    /// (`Authority::default()`: none).
    pub authority: Authority,
    /// When unhealthy nodes are drained, and the limits.
    pub remediation: RemediationSection,
    /// The scheduler instances, for draining (members, their names there).
    pub schedulers: std::collections::BTreeMap<String, SchedulerSection>,
    /// `[pools.NAME]`: node pools kept by provider plugins.
    pub pools: std::collections::BTreeMap<String, pools::config::PoolSection>,
    /// `[providers]`: where provider plugins live.
    pub providers: pools::config::ProvidersSection,
    /// `[join]`: how new nodes join with bootstrap tokens.
    pub join: Option<pools::config::JoinSection>,
}

/// The running coordinator's parts, shared by the API and the connection tasks.
pub struct Shared {
    pub registry: Arc<Registry>,
    pub jobs: Arc<Jobs>,
    pub remediation: Arc<remediation::Remediation>,
    /// Node pools, their provider plugins and join tokens.
    pub pools: Arc<pools::Pools>,
    /// The web console's sessions, feed and chart history.
    pub(crate) console: Arc<console::Console>,
    commands: Arc<Commands>,
    /// Whether the database is taking writes: the API refuses writes while it is not.
    pub(crate) store: store::Health,
    /// The certificate revocation lists in force ([`revocation`]): the QUIC and HTTPS
    /// client verifiers read them at every handshake.
    pub(crate) revocations: pki::Revocations,
}

/// A started coordinator.
pub struct Running {
    pub quic_addr: SocketAddr,
    pub api_addr: SocketAddr,
    pub shared: Arc<Shared>,
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
    let revocations = pki::Revocations::open(&opts.tls, &tls)
        .context("loading the certificate revocation list")?;
    revocation::log_in_force(&revocations);
    let server_cfg = pki::quic_server_config(&tls, transport_config(), &revocations)?;
    let (store, loaded) = Store::open(&opts.state_dir, opts.settings.event_retention as u32)?;
    info!(db = %store.path().display(), nodes = loaded.nodes.len(), "state loaded");
    let store = Arc::new(store);
    let loaded_tokens = loaded.tokens;
    log_authority(&opts.authority);
    let registry = Arc::new(
        Registry::new(opts.settings, loaded.nodes, loaded.events)
            .with_authority(opts.authority.clone()),
    );
    let commands = Arc::new(Commands::new(registry.clone()));
    let jobs = Arc::new(Jobs::new(
        opts.jobs.clone(),
        store.clone(),
        registry.clone(),
        commands.clone(),
        loaded.jobs,
    ));
    let remediation = Arc::new(remediation::Remediation::new(
        opts.remediation.clone(),
        &opts.schedulers,
        registry.clone(),
        store.clone(),
        Arc::new(remediation::Live {
            jobs: jobs.clone(),
            registry: registry.clone(),
            commands: commands.clone(),
            timeout: opts.jobs.call_timeout,
        }),
        loaded.cordons,
        loaded.paused,
    ));
    let pools = Arc::new(
        pools::Pools::new(
            pools::PoolsConfig {
                pools: &opts.pools,
                providers: &opts.providers,
                join: opts.join.as_ref(),
            },
            loaded.records,
            registry.clone(),
            remediation.clone(),
            store.clone(),
        )
        .context("starting the node pools")?,
    );
    let shared = Arc::new(Shared {
        registry: registry.clone(),
        jobs: jobs.clone(),
        remediation: remediation.clone(),
        pools: pools.clone(),
        console: Arc::new(console::Console::new()),
        commands,
        store: store.health(),
        revocations: revocations.clone(),
    });
    let endpoint = server_endpoint(&opts, server_cfg)?;
    let quic_addr = endpoint.local_addr()?;
    let shutdown = CancellationToken::new();
    let mut tasks = vec![];

    let access = Arc::new(access::Access::new(
        opts.access.clone(),
        loaded_tokens,
        store.clone(),
    ));
    let served = api::serve(
        &opts.api,
        shared.clone(),
        access,
        Some(&shared.revocations),
        shutdown.clone(),
    )
    .await?;
    let api_addr = served.addr;
    tasks.extend(served.tasks);

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
    tasks.push(tokio::spawn(jobs.run(shutdown.clone())));
    tasks.push(tokio::spawn(remediation.run(shutdown.clone())));
    tasks.push(tokio::spawn(pools.run(shutdown.clone())));
    tasks.push(tokio::spawn(console::run(
        shared.console.clone(),
        registry.clone(),
        shutdown.clone(),
    )));
    tasks.push(tokio::spawn(revocation::watch_crl(
        revocations,
        shutdown.clone(),
    )));
    tasks.push(tokio::spawn(connection::accept_loop(
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
        shutdown,
        endpoint,
        tasks,
        store,
    })
}

/// Says at start who may announce what, and warns, naming the key, about what nobody may.
fn log_authority(a: &Authority) {
    if a.ray_heads().is_empty() {
        tracing::warn!(
            key = "coordinator.ray_heads",
            "no node may announce a Ray head, so workers learn none from this coordinator; list the head nodes in coordinator.ray_heads"
        );
    } else {
        info!(ray_heads = ?a.ray_heads(), "nodes that may announce a Ray head");
    }
    let schedulers: Vec<&str> = a.schedulers().collect();
    if schedulers.is_empty() {
        tracing::warn!(
            key = "schedulers",
            "no node may serve a scheduler plugin, so job submissions have nowhere to go; add a [schedulers.NAME] section with nodes = [...] for each plugin"
        );
    }
    for s in schedulers {
        info!(scheduler = s, nodes = ?a.scheduler_nodes(s), "nodes that may serve a scheduler plugin");
    }
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
    // Socket buffers sized for every agent's beats (`corral_transport::frame::bind_udp`).
    let (socket, _) = corral_transport::frame::bind_udp(opts.listen).with_context(|| {
        format!(
            "binding the QUIC endpoint on UDP {} (is another coordinator running?)",
            opts.listen
        )
    })?;
    let runtime = quinn::default_runtime().context("no async runtime for QUIC")?;
    quinn::Endpoint::new(config, Some(cfg), socket, runtime).context("starting the QUIC endpoint")
}
