//! `corral pools`, `corral pool NAME [pause|resume]` and `corral join`: the node pools
//! the coordinator keeps through provider plugins, and how a new node joins one.
//!
//! `corral join` is TLS bootstrap: it makes the node's key here (it never leaves the
//! node), sends a certificate request with a single-use join token, and writes the
//! certificate it gets back, the cluster CA and an agent config that uses them. The
//! coordinator is trusted by the CA given with `--ca` (the pool's user data carries it).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};

use super::show::{age, listing, Column};
use super::{ApiArgs, ApiClient};
use corral_proto::pool::{JoinAnswer, JoinRequest, PoolNodeView, PoolSummary, PoolView};

#[derive(Args, Debug)]
pub(super) struct PoolsArgs {
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(super) enum PoolAction {
    /// Create and delete nothing until resumed (admin).
    Pause,
    /// Act again; also lifts a halt after max_failures (admin).
    Resume,
}

#[derive(Args, Debug)]
pub(super) struct PoolArgs {
    /// The pool (`[pools.NAME]` in the coordinator's config).
    name: String,
    /// Without one: show the pool, its nodes and recent actions.
    action: Option<PoolAction>,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Args, Debug)]
pub(super) struct JoinArgs {
    /// The coordinator's API, as the pool's user data gives it (`{join_url}`).
    #[arg(long)]
    url: String,
    /// The join token (`{join_token}`; or --token-file).
    #[arg(
        long,
        env = "CORRAL_JOIN_TOKEN",
        required_unless_present = "token_file",
        hide_env_values = true
    )]
    token: Option<String>,
    /// A file holding the join token.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// The cluster CA certificate to trust the coordinator by (HTTPS).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Where to write the key, certificate, CA and `agent.toml`.
    #[arg(long)]
    dir: PathBuf,
}

fn unix_ms() -> u64 {
    corral_proto::model::unix_ms()
}

const POOL_COLUMNS: &[Column<PoolSummary>] = &[
    ("POOL", |p, _| p.name.clone()),
    ("PROVIDER", |p, _| p.provider.clone()),
    ("READY", |p, _| format!("{}/{}", p.ready, p.min)),
    ("SIZE", |p, _| format!("{} (max {})", p.size, p.max)),
    ("API/H", |p, _| {
        if p.api_calls_per_hour == 0 {
            p.api_calls_last_hour.to_string()
        } else {
            format!("{}/{}", p.api_calls_last_hour, p.api_calls_per_hour)
        }
    }),
    ("STATE", |p, _| state(p)),
];

fn state(p: &PoolSummary) -> String {
    match (&p.halted, p.paused) {
        (_, true) => "paused".into(),
        (Some(h), false) => h.clone(),
        (None, false) if p.failures > 0 => format!("{} failures in a row", p.failures),
        (None, false) if p.ready < p.min => "below min".into(),
        _ => "ok".into(),
    }
}

const NODE_COLUMNS: &[Column<PoolNodeView>] = &[
    ("NODE", |n, _| n.node.clone()),
    ("PHASE", |n, _| n.phase.as_str().to_string()),
    ("LIVENESS", |n, _| {
        n.liveness.clone().unwrap_or_else(|| "-".into())
    }),
    ("PROVIDER ID", |n, _| {
        n.provider_id.clone().unwrap_or_else(|| "-".into())
    }),
    ("MACHINE", |n, _| {
        n.machine
            .as_ref()
            .map(|m| format!("{} ({})", m.state.as_str(), m.native_state))
            .unwrap_or_else(|| "-".into())
    }),
    ("AGE", |n, now| age(now, Some(n.created_ms))),
    ("REASON", |n, _| n.reason.clone().unwrap_or_default()),
];

pub(super) async fn pools(a: PoolsArgs) -> Result<()> {
    let all: Vec<PoolSummary> = ApiClient::new(&a.api)?
        .get_json("/api/v1/pools", "listing pools")
        .await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
    } else if all.is_empty() {
        println!("no pools ([pools.NAME] in the coordinator's config)");
    } else {
        print!("{}", listing(POOL_COLUMNS, &all, unix_ms()));
    }
    Ok(())
}

pub(super) async fn pool(a: PoolArgs) -> Result<()> {
    let client = ApiClient::new(&a.api)?;
    let name = super::client::query_value(&a.name);
    if let Some(action) = a.action {
        let (path, what) = match action {
            PoolAction::Pause => ("pause", "pausing"),
            PoolAction::Resume => ("resume", "resuming"),
        };
        let s: PoolSummary = client
            .post_json::<(), _>(
                &format!("/api/v1/pools/{name}/{path}"),
                None,
                Duration::from_secs(10),
                &format!("{what} pool {}", a.name),
            )
            .await?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&s)?);
        } else {
            println!("pool {}: {}", s.name, state(&s));
        }
        return Ok(());
    }
    let v: PoolView = client
        .get_json(
            &format!("/api/v1/pools/{name}"),
            &format!("pool {}", a.name),
        )
        .await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let now = unix_ms();
    let s = &v.summary;
    println!(
        "pool {}: {} ready of min {} (max {}), provider {}{}",
        s.name,
        s.ready,
        s.min,
        s.max,
        s.provider,
        v.provider_info
            .as_ref()
            .map(|i| format!(" ({} {})", i.provider, i.version))
            .unwrap_or_default()
    );
    println!("state: {}", state(s));
    if !v.nodes.is_empty() {
        println!();
        print!("{}", listing(NODE_COLUMNS, &v.nodes, now));
    }
    if !v.actions.is_empty() {
        println!("\nrecent actions (newest first):");
        for a in v.actions.iter().take(15) {
            println!(
                "  {:>8} ago  {:<8} {:<12} {}{}",
                age(now, Some(a.at_ms)),
                a.action,
                a.outcome,
                a.message,
                a.elapsed_ms
                    .map(|ms| format!(" [{:.1} s]", ms as f64 / 1000.0))
                    .unwrap_or_default()
            );
        }
    }
    Ok(())
}

pub(super) async fn join(a: JoinArgs) -> Result<()> {
    let token = match (&a.token, &a.token_file) {
        (Some(t), _) => t.trim().to_string(),
        (None, Some(f)) => std::fs::read_to_string(f)
            .with_context(|| format!("reading --token-file {}", f.display()))?
            .trim()
            .to_string(),
        (None, None) => anyhow::bail!("give the join token with --token or --token-file"),
    };
    if a.url.starts_with("http://") && !loopback(&a.url) {
        anyhow::bail!(
            "--url {}: a join sends a secret and receives the node's identity, so it needs HTTPS beyond this host; give the coordinator's https:// URL and --ca",
            a.url
        );
    }
    // Checked before the token is spent: a join never overwrites an identity.
    if a.dir.join("agent.toml").exists() {
        anyhow::bail!(
            "{} already holds an agent.toml: this node has joined before; give another --dir (the token is not spent)",
            a.dir.display()
        );
    }
    std::fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
    let (key_pem, csr_pem) = corral_transport::pki::new_request("joining-node")?;
    let api = ApiArgs {
        api: Some(a.url.clone()),
        api_ca: a.ca.clone(),
        ..ApiArgs::default()
    };
    let answer: JoinAnswer = ApiClient::new(&api)?
        .post_json(
            "/api/v1/join",
            Some(&JoinRequest { token, csr_pem }),
            Duration::from_secs(30),
            "joining",
        )
        .await?;
    let node = &answer.node;
    // The answer names files and goes into agent.toml: it must be a node name.
    corral_proto::names::validate_name(node)
        .map_err(|e| anyhow::anyhow!("the coordinator answered the node name {node:?}: {e}"))?;
    let write = |name: &str, body: &str, mode: u32| -> Result<PathBuf> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = a.dir.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .with_context(|| {
                format!(
                    "writing {} (it must not exist yet: a join never overwrites an identity)",
                    path.display()
                )
            })?;
        f.write_all(body.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    };
    let key = write(&format!("{node}.key"), &key_pem, 0o600)?;
    let cert = write(&format!("{node}.pem"), &answer.cert_pem, 0o644)?;
    let ca = a.dir.join("ca.pem");
    if !ca.exists() {
        write("ca.pem", &answer.ca_pem, 0o644)?;
    }
    let state = a.dir.join("state");
    let q = |v: &str| toml::Value::String(v.to_string()).to_string();
    let config = format!(
        "# Written by `corral join`: node {node} of its pool.\n[agent]\nname = {}\ncoordinator = {}\nstate_dir = {}\n\n[tls]\nca = {}\ncert = {}\nkey = {}\n",
        q(node),
        q(&answer.coordinator),
        q(&state.display().to_string()),
        q(&ca.display().to_string()),
        q(&cert.display().to_string()),
        q(&key.display().to_string())
    );
    let agent_toml = write("agent.toml", &config, 0o644)?;
    println!("{node}");
    eprintln!(
        "joined as {node}; certificate valid until {} (unix ms); start the agent with `corral agent --config {}`",
        answer.not_after_ms,
        agent_toml.display()
    );
    Ok(())
}

/// Whether a plain-HTTP URL stays on this host.
fn loopback(url: &str) -> bool {
    let rest = url.trim_start_matches("http://");
    ["127.", "localhost:", "localhost/", "[::1]"]
        .iter()
        .any(|p| rest.starts_with(p))
        || rest == "localhost"
}
