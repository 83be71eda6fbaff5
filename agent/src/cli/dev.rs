//! `corral dev`: a coordinator and an agent in one process, on loopback, with their own
//! CA, certificates and database in a state directory.
//!
//! It runs exactly the production code paths (real QUIC, real mutual TLS, real SQLite);
//! only the wiring is automatic. The state directory is reused across runs, so a restart
//! keeps the node and its events, just as a production coordinator does.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use tokio_util::sync::CancellationToken;

use corral_coordinator::config::ApiSection;
use corral_coordinator::registry::Settings;
use corral_coordinator::CoordinatorOptions;
use corral_node::health::gpu::GpuConfig;
use corral_node::health::verdict::Thresholds;
use corral_node::session::AgentOptions;
use corral_proto::api::DEFAULT_API_PORT;
use corral_proto::wire::DEFAULT_QUIC_PORT;
use corral_transport::pki::{self, Role, TlsFiles};

#[derive(Args, Debug)]
pub struct DevArgs {
    /// Where certificates and the database live (default: $XDG_STATE_HOME/corral/dev or
    /// ~/.local/state/corral/dev).
    #[arg(long, env = "CORRAL_DEV_STATE")]
    state_dir: Option<PathBuf>,
    /// UDP port of the coordinator's QUIC endpoint on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = DEFAULT_QUIC_PORT)]
    quic_port: u16,
    /// TCP port of the HTTP API on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = DEFAULT_API_PORT)]
    api_port: u16,
    /// This node's name (default: the hostname).
    #[arg(long)]
    name: Option<String>,
    /// Scripted fake GPUs (a JSON script, see docs) instead of NVML.
    #[arg(long)]
    fake_gpus: Option<PathBuf>,
}

fn default_state_dir() -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("corral").join("dev")
}

/// Creates the dev CA and certificates on first use; reuses them afterwards.
fn ensure_certs(tls_dir: &std::path::Path, node: &str) -> Result<(TlsFiles, TlsFiles)> {
    let (ca_cert, _) = pki::ca_paths(tls_dir);
    if !ca_cert.exists() {
        pki::init_ca(tls_dir, "corral dev CA", 3650)?;
    }
    let ca = pki::Ca::load(tls_dir)?;
    let files = |name: &str| TlsFiles {
        ca: ca_cert.clone(),
        cert: tls_dir.join(format!("{name}.pem")),
        key: tls_dir.join(format!("{name}.key")),
    };
    let coordinator = files("coordinator");
    if !coordinator.cert.exists() {
        let sans = ["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
        ca.issue_to_dir("coordinator", Role::Coordinator, &sans, 3650, tls_dir)?;
    }
    let agent = files(node);
    if !agent.cert.exists() {
        ca.issue_to_dir(node, Role::Agent, &[], 3650, tls_dir)?;
    }
    Ok((coordinator, agent))
}

pub async fn run(args: DevArgs) -> Result<()> {
    let state = args.state_dir.unwrap_or_else(default_state_dir);
    std::fs::create_dir_all(&state)
        .with_context(|| format!("creating state directory {}", state.display()))?;
    let node = match args.name {
        Some(n) => {
            pki::validate_name(&n).map_err(anyhow::Error::msg)?;
            n
        }
        None => corral_node::config::default_node_name()?,
    };
    let (coord_tls, agent_tls) = ensure_certs(&state.join("tls"), &node)?;

    let coordinator = corral_coordinator::start(CoordinatorOptions {
        listen: SocketAddr::from(([127, 0, 0, 1], args.quic_port)),
        state_dir: state.clone(),
        settings: Settings {
            disconnect_after_beats: 3,
            down_after: Duration::from_secs(15),
            persist_every: Duration::from_secs(60),
            event_retention: 10_000,
        },
        max_frame_bytes: corral_proto::wire::DEFAULT_MAX_FRAME_BYTES,
        api: ApiSection {
            listen: SocketAddr::from(([127, 0, 0, 1], args.api_port)),
            ..ApiSection::default()
        },
        tls: coord_tls,
        jobs: Default::default(),
    })
    .await
    .context("starting the dev coordinator (if a port is taken, pass --quic-port / --api-port)")?;

    let gpu = match args.fake_gpus {
        Some(script) => GpuConfig {
            backend: corral_node::health::gpu::GpuBackend::Fake,
            fake_script: Some(script),
            ..GpuConfig::default()
        },
        None => GpuConfig::default(),
    };
    let shutdown = CancellationToken::new();
    let mut agent = tokio::spawn(corral_node::session::run(
        AgentOptions {
            name: node.clone(),
            coordinator: coordinator.quic_addr.to_string(),
            server_name: "localhost".into(),
            beat_interval: Duration::from_secs(1),
            report_interval: Duration::from_secs(5),
            sample_interval: Duration::from_secs(1),
            reconnect_base: Duration::from_millis(250),
            reconnect_cap: Duration::from_secs(5),
            tls: agent_tls,
            ray: None,
            thresholds: Thresholds::default(),
            gpu,
            plugins: Default::default(),
        },
        shutdown.clone(),
    ));

    let api = format!("http://{}", coordinator.api_addr);
    let env = if coordinator.api_addr.port() == DEFAULT_API_PORT {
        String::new()
    } else {
        format!("CORRAL_API={api} ")
    };
    println!(
        "\ncorral dev is running (Ctrl-C stops it)\n\
         \n  node:        {node}\
         \n  HTTP API:    {api}   (GET /api/v1/nodes, /api/v1/events, /metrics)\
         \n  QUIC:        {}\
         \n  state:       {}\
         \n\nIn another terminal:\n  {env}corral nodes\n  {env}corral node {node}\n  {env}corral events\n  curl {api}/metrics\n",
        coordinator.quic_addr,
        state.display(),
    );

    tokio::select! {
        _ = super::shutdown_signal() => {}
        r = &mut agent => {
            // The agent only ends on its own when it cannot start.
            coordinator.stop().await;
            return r.context("agent task")?.context("the dev agent stopped");
        }
    }
    println!("stopping");
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), agent).await;
    coordinator.stop().await;
    Ok(())
}
