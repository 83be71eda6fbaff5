//! `corral dev`: a coordinator and an agent in one process, on loopback, with their own
//! CA, certificates and database in a state directory.
//!
//! It runs exactly the production code paths (real QUIC, real mutual TLS, real SQLite);
//! only the wiring is automatic. The state directory is reused across runs, so a restart
//! keeps the node and its events, just as a production coordinator does.
//!
//! Scheduler plugins: every `NAME.wasm` with its `NAME.toml` in one folder is enabled
//! (`--enable` narrows that). The folder is `--plugins DIR` (or `CORRAL_PLUGINS_DIR`),
//! else the first of these beside the running binary that holds a plugin:
//! `../plugins` (`target/debug/corral` finds `target/plugins`, where `cargo xtask
//! plugins` writes every plugin crate of the checkout, an author's new one included)
//! and `../lib/corral/plugins` (a package's `/usr/bin/corral` finds the shipped ones).
//! Compiled components are cached in the state directory, so only the first start pays
//! for compiling them. Which plugins loaded (or why not) is printed once the agent has
//! announced them, read back from the dev coordinator's own API: what `corral plugins`
//! would show. Granted programs are looked up on the `PATH` `corral dev` runs with, so
//! fake scheduler programs put first on it stand in for a scheduler that is not there.
//!
//! The dev coordinator authorizes its one node for what it runs: the Ray head and every
//! enabled plugin (a production coordinator authorizes nothing it is not told to).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use tokio_util::sync::CancellationToken;

use corral_coordinator::access::AccessSection;
use corral_coordinator::config::{ApiSection, Authority};
use corral_coordinator::registry::Settings;
use corral_coordinator::CoordinatorOptions;
use corral_node::health::gpu::GpuConfig;
use corral_node::health::verdict::Thresholds;
use corral_node::session::AgentOptions;
use corral_proto::api::{Role as ApiRole, DEFAULT_API_PORT};
use corral_proto::wire::DEFAULT_QUIC_PORT;
use corral_sandbox::plugins::PluginsConfig;
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
    /// The folder of scheduler plugins to load (NAME.wasm + NAME.toml; default: the
    /// built plugins beside this binary, see below).
    #[arg(long, env = "CORRAL_PLUGINS_DIR")]
    plugins: Option<PathBuf>,
    /// Load only these plugins of the folder (comma-separated names; default: all).
    #[arg(long, value_delimiter = ',')]
    enable: Vec<String>,
    /// Load no scheduler plugins.
    #[arg(long)]
    no_plugins: bool,
}

/// Whether `dir` holds at least one plugin.
fn has_plugins(dir: &Path) -> bool {
    !plugin_names(dir).is_empty()
}

/// The plugins in `dir`: each `NAME.wasm` with a `NAME.toml` beside it, sorted.
fn plugin_names(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| {
            let path = e.ok()?.path();
            let name = path.file_stem()?.to_str()?.to_string();
            let manifest = dir.join(format!("{name}.toml"));
            // Provider plugins are the coordinator's, for pools; `corral dev` has none.
            let scheduler = || {
                corral_sandbox::plugins::Manifest::load(&manifest).map_or(true, |m| {
                    m.kind == corral_sandbox::plugins::manifest::PluginKind::Scheduler
                })
            };
            let ok = path.extension()? == "wasm"
                && corral_sandbox::plugins::manifest::valid_name(&name)
                && manifest.is_file()
                && scheduler();
            ok.then_some(name)
        })
        .collect();
    names.sort();
    names
}

/// The built plugins beside the running binary (see the module docs).
fn default_plugins_dir() -> Option<PathBuf> {
    plugins_dir_beside(&std::env::current_exe().ok()?)
}

/// The first folder holding a plugin of `BIN/../plugins` and `BIN/../lib/corral/plugins`,
/// where BIN is the folder of the binary `exe`.
fn plugins_dir_beside(exe: &Path) -> Option<PathBuf> {
    let prefix = exe.parent()?.parent()?;
    [prefix.join("plugins"), prefix.join("lib/corral/plugins")]
        .into_iter()
        .find(|d| has_plugins(d))
}

/// The plugins to load: the folder and the names enabled in it (none: `None`).
fn plugins_config(args: &DevArgs, state: &Path) -> Result<(PluginsConfig, String)> {
    if args.no_plugins {
        return Ok((PluginsConfig::default(), "none (--no-plugins)".into()));
    }
    let Some(dir) = args.plugins.clone().or_else(default_plugins_dir) else {
        return Ok((
            PluginsConfig::default(),
            "none found (build them with `cargo xtask plugins`, or pass --plugins DIR)".into(),
        ));
    };
    let found = plugin_names(&dir);
    if args.plugins.is_some() && found.is_empty() {
        anyhow::bail!(
            "--plugins {}: no plugin there (a plugin is NAME.wasm with its manifest NAME.toml beside it; `cargo xtask plugins --out {}` builds them)",
            dir.display(),
            dir.display()
        );
    }
    for name in &args.enable {
        if !found.contains(name) {
            anyhow::bail!(
                "--enable {name}: {} has no {name}.wasm with {name}.toml (it has: {})",
                dir.display(),
                found.join(", ")
            );
        }
    }
    let enable = if args.enable.is_empty() {
        found
    } else {
        args.enable.clone()
    };
    let shown = format!("{} ({})", dir.display(), enable.join(", "));
    // Status calls run as the packages' `corral` user when this machine has it, else
    // as whoever runs `corral dev` (one user's machine); jobs run as their owners.
    let defaults = PluginsConfig::default();
    let service_user = if corral_sandbox::identity::User::lookup(&defaults.service_user).is_ok() {
        defaults.service_user.clone()
    } else {
        corral_sandbox::identity::User::current()
            .map(|u| u.name)
            .unwrap_or(defaults.service_user.clone())
    };
    let cfg = PluginsConfig {
        dir: Some(dir),
        enable,
        cache_dir: Some(state.join("plugin-cache")),
        service_user,
        ..defaults
    };
    Ok((cfg, shown))
}

/// Waits for the dev agent to announce its plugins and prints what loaded, with the
/// granted programs this `PATH` lacks, and what failed.
async fn report_plugins(socket: PathBuf, node: String, cfg: PluginsConfig) {
    use corral_proto::api::NodePlugins;
    let Ok(client) = super::ApiClient::for_socket(&socket) else {
        return;
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    let ours = loop {
        let nodes: Vec<NodePlugins> = client
            .get_json("/api/v1/plugins", "listing plugins")
            .await
            .unwrap_or_default();
        if let Some(n) = nodes
            .into_iter()
            .find(|n| n.node == node && n.announced_ms.is_some())
        {
            break n;
        }
        if std::time::Instant::now() > deadline {
            println!("plugins: the agent did not announce its plugins within 5 minutes; see the log above");
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let dir = cfg.dir.unwrap_or_default();
    let path = std::env::var_os("PATH");
    println!(
        "plugins loaded: {} of {}",
        ours.loaded.len(),
        ours.loaded.len() + ours.failed.len()
    );
    let mut any_missing = false;
    for p in &ours.loaded {
        let manifest = dir.join(format!("{}.toml", p.info.name));
        let missing: Vec<String> = corral_sandbox::plugins::Manifest::load(&manifest)
            .map(|m| {
                corral_sandbox::plugins::manifest::resolve_programs(&m, path.as_deref())
                    .missing
                    .into_iter()
                    .map(|(name, _)| name)
                    .collect()
            })
            .unwrap_or_default();
        let note = if missing.is_empty() {
            String::new()
        } else {
            any_missing = true;
            format!("; not on PATH, so denied: {}", missing.join(", "))
        };
        println!(
            "  {} {} ({}){note}",
            p.info.name, p.info.version, p.info.scheduler
        );
    }
    if any_missing {
        println!(
            "  (`corral plugin check {}` lists every load warning)",
            dir.join("NAME.wasm").display()
        );
    }
    for f in &ours.failed {
        println!("  {} FAILED: {}", f.name, f.message);
    }
}

/// Makes an admin token for `me` through the socket; its secret.
async fn make_token(client: &super::ApiClient, me: &str, ttl: Option<Duration>) -> Result<String> {
    let made: corral_proto::api::CreatedToken = client
        .post_json(
            "/api/v1/tokens",
            Some(&corral_proto::api::CreateToken {
                user: me.to_string(),
                role: ApiRole::Admin,
                ttl_secs: ttl.map(|t| t.as_secs()),
            }),
            Duration::from_secs(10),
            "creating a dev admin token",
        )
        .await?;
    Ok(made.secret)
}

/// Makes sure `file` holds a working admin token of this dev coordinator (for HTTP
/// clients: curl, scripts), making a new one through the socket when it does not.
async fn admin_token(socket: &Path, file: &Path, me: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let client = super::ApiClient::for_socket(socket)?;
    if let Ok(t) = std::fs::read_to_string(file) {
        if client.whoami_with(t.trim()).await.is_ok() {
            return Ok(());
        }
    }
    let secret = make_token(&client, me, None).await?;
    let _ = std::fs::remove_file(file);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .with_context(|| format!("writing {}", file.display()))?;
    std::io::Write::write_all(&mut f, format!("{secret}\n").as_bytes())?;
    Ok(())
}

/// How long the token in the console link `corral dev` prints lasts.
const CONSOLE_LINK_TTL: Duration = Duration::from_secs(12 * 3600);

/// A link that logs the browser in to the console: a fresh admin token that expires, in
/// the URL's fragment (which browsers send to no server and put in no Referer).
async fn console_link(socket: &Path, api: &str, me: &str) -> Result<String> {
    let client = super::ApiClient::for_socket(socket)?;
    let secret = make_token(&client, me, Some(CONSOLE_LINK_TTL)).await?;
    Ok(format!("{api}/login#token={secret}"))
}

/// `$XDG_STATE_HOME/corral/dev`, else `~/.local/state/corral/dev`. An empty or relative
/// `XDG_STATE_HOME` is ignored, as the XDG spec says: the CLI looks for the dev socket here
/// from any directory, so the path must not depend on where `corral dev` was started.
pub(super) fn default_state_dir() -> PathBuf {
    let absolute = |p: PathBuf| Some(p).filter(|p| p.is_absolute());
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .and_then(absolute)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".local/state"))
                .and_then(absolute)
        })
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
        crl: None,
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
    let state = args.state_dir.clone().unwrap_or_else(default_state_dir);
    std::fs::create_dir_all(&state)
        .with_context(|| format!("creating state directory {}", state.display()))?;
    let node = match args.name.clone() {
        Some(n) => {
            pki::validate_name(&n).map_err(anyhow::Error::msg)?;
            n
        }
        None => corral_node::config::default_node_name()?,
    };
    let (coord_tls, agent_tls) = ensure_certs(&state.join("tls"), &node)?;
    let (plugins, plugins_shown) = plugins_config(&args, &state)?;
    let socket = state.join("api.sock");
    let me = corral_sandbox::identity::User::current()
        .map(|u| u.name)
        .context("the user running `corral dev` has no name in the user database")?;

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
            socket: socket.clone(),
            ..ApiSection::default()
        },
        // Whoever runs `corral dev` administers it.
        access: AccessSection {
            roles: [(me.clone(), ApiRole::Admin)].into_iter().collect(),
            ..AccessSection::default()
        },
        tls: coord_tls,
        jobs: Default::default(),
        // The one node here may be the Ray head and serve every plugin it enables.
        authority: Authority::new(
            vec![node.clone()],
            plugins
                .enable
                .iter()
                .map(|p| (p.clone(), vec![node.clone()]))
                .collect(),
        ),
        // The policy cordons an unhealthy dev node in corral (and its Ray worker, when
        // there is one) but drains it in no scheduler: this machine's scheduler is not
        // corral dev's to change.
        remediation: Default::default(),
        schedulers: Default::default(),
        // No pools: `corral dev` is one machine.
        pools: Default::default(),
        providers: Default::default(),
        join: None,
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
            plugins: plugins.clone(),
        },
        shutdown.clone(),
    ));

    let api = format!("http://{}", coordinator.api_addr);
    // The CLI finds this socket by itself when the state directory is the default one.
    let env = if Some(&socket) == super::client::dev_socket().as_ref() {
        String::new()
    } else {
        format!("CORRAL_SOCKET={} ", socket.display())
    };
    let token_file = state.join("admin-token");
    let token_note = match admin_token(&socket, &token_file, &me).await {
        Ok(()) => format!(
            "an admin token for HTTP clients is in {}",
            token_file.display()
        ),
        Err(e) => format!("no admin token for HTTP clients: {e:#}"),
    };
    let console = match console_link(&socket, &api, &me).await {
        Ok(link) => format!(
            "{api}/\n               log in: open {link}\n               (an admin token of {me} valid for 12 h; or paste the token in {})",
            token_file.display()
        ),
        Err(e) => format!("{api}/ (no login link: {e:#})"),
    };
    let plugin_hints = match plugins.enable.first() {
        Some(first) => format!(
            "  {env}corral plugins\n  {env}corral submit --scheduler {first} --dry-run -- echo hello\n"
        ),
        None => String::new(),
    };
    println!(
        "\ncorral dev is running (Ctrl-C stops it)\n\
         \n  node:        {node}\
         \n  API socket:  {}   (the CLI's way in: you are {me}, admin)\
         \n  console:     {console}\
         \n  HTTP API:    {api}   (GET /api/v1/nodes, /api/v1/events, /metrics)\
         \n               {token_note}\
         \n  QUIC:        {}\
         \n  state:       {}\
         \n  plugins:     {plugins_shown}\
         \n\nIn another terminal:\n  {env}corral whoami\n  {env}corral nodes\n  {env}corral node {node}\n  {env}corral events\n{plugin_hints}  curl -H \"Authorization: Bearer $(cat {})\" {api}/metrics\n",
        socket.display(),
        coordinator.quic_addr,
        state.display(),
        token_file.display(),
    );
    if !plugins.enable.is_empty() {
        tokio::spawn(report_plugins(socket.clone(), node.clone(), plugins));
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_plugins_are_found_beside_a_cargo_build_or_a_package_binary() {
        let t = tempfile::tempdir().unwrap();
        let put = |dir: &str, name: &str| {
            let d = t.path().join(dir);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(format!("{name}.wasm")), b"").unwrap();
            std::fs::write(d.join(format!("{name}.toml")), b"").unwrap();
        };
        // target/debug/corral finds target/plugins.
        put("target/plugins", "slurm");
        let found = plugins_dir_beside(&t.path().join("target/debug/corral"));
        assert_eq!(found, Some(t.path().join("target/plugins")));
        // usr/bin/corral finds usr/lib/corral/plugins.
        put("usr/lib/corral/plugins", "pbs");
        let found = plugins_dir_beside(&t.path().join("usr/bin/corral"));
        assert_eq!(found, Some(t.path().join("usr/lib/corral/plugins")));
        // A .wasm without its manifest is not a plugin.
        std::fs::create_dir_all(t.path().join("x/plugins")).unwrap();
        std::fs::write(t.path().join("x/plugins/lone.wasm"), b"").unwrap();
        assert_eq!(plugins_dir_beside(&t.path().join("x/bin/corral")), None);
        put("target/plugins", "example");
        assert_eq!(
            plugin_names(&t.path().join("target/plugins")),
            ["example", "slurm"]
        );
    }
}
