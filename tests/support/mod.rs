//! Test support: a real cluster on loopback. Every process is the real `corral` binary,
//! every connection real QUIC with certificates from a real CA made by `corral certs`.
//! Processes are killed when the cluster value is dropped, so a failing test leaves
//! nothing running.

pub mod browser;
pub mod cml_api;
pub mod fake_programs;
pub mod hetzner_api;
pub mod netfault;
pub mod scenarios;
pub mod sge;
pub mod slurm;
pub mod stub_http;
pub mod users;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use corral_proto::api::{Event, NodeView};
use corral_proto::model::Liveness;

/// Where a [`Cluster`]'s coordinator serves its API socket (`[api] socket`).
fn dir_socket(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("api.sock")
}

/// Whether this run is CI's (`CI=true`), where every test must really run.
pub fn ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Fails under CI, prints `SKIPPED: why` elsewhere; returns `None` for `?`-style use.
pub fn skip<T>(why: &str) -> Option<T> {
    if ci() {
        panic!("CI=true, so this must run, but: {why}");
    }
    println!("SKIPPED: {why}");
    None
}

/// Installs Debian `packages` with apt-get (what the harness does under `CI=true` for a
/// real part that is missing); panics, naming them, when apt-get fails.
pub fn apt_install(packages: &[&str]) {
    let list = packages.join(" ");
    println!("installing {list} with apt-get (CI=true)");
    let ok = |c: &mut Command| {
        c.env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    assert!(
        ok(Command::new("apt-get").arg("update")),
        "apt-get update failed"
    );
    assert!(
        ok(Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(packages)),
        "apt-get install {list} failed"
    );
}

/// Stops a daemon the harness started: SIGTERM, then SIGKILL after `grace`; reaped.
pub fn stop_child(mut child: Child, grace: Duration) {
    signal(&child, libc::SIGTERM);
    let deadline = Instant::now() + grace;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return,
            _ if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// The `corral` binary under test: `$CORRAL_BIN`, else the one cargo built beside the
/// running test binary (`target/<profile>/deps/TEST` → `target/<profile>/corral`, what
/// `CARGO_BIN_EXE_corral` names for the tests of the `corral` package).
pub fn corral_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CORRAL_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("a test binary in target/<profile>/deps");
    profile_dir.join("corral")
}

/// A directory for the harness's own files in cargo's target dir (`target/tmp`, what
/// `CARGO_TARGET_TMPDIR` names for integration tests): owned by whoever builds, never a
/// world-writable directory.
pub fn target_tmp() -> PathBuf {
    let bin = corral_bin();
    let dir = bin
        .parent()
        .and_then(Path::parent)
        .map(|t| t.join("tmp"))
        .expect("corral in target/<profile>/");
    std::fs::create_dir_all(&dir).expect("creating target/tmp");
    dir
}

pub fn corral() -> Command {
    let mut c = Command::new(corral_bin());
    c.env("CORRAL_LOG", "info,quinn=warn")
        .env_remove("CORRAL_API")
        .env_remove("CORRAL_SOCKET")
        .env_remove("CORRAL_TOKEN");
    c
}

/// Runs `corral ARGS` to completion.
pub fn run(args: &[&str]) -> Output {
    corral().args(args).output().expect("running corral")
}

pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub quic_port: u16,
    pub api_port: u16,
    pub coordinator_extra: String,
    /// Extra lines for the coordinator's `[api]` section.
    pub api_extra: String,
    /// `[coordinator] ray_heads`: who may announce a Ray head. Default `["*"]`.
    pub ray_heads: Vec<String>,
    /// `[schedulers.NAME] nodes`, one section each. Default: every plugin of this
    /// checkout ([`PLUGIN_NAMES`]) served by `["*"]`.
    pub schedulers: Vec<(String, Vec<String>)>,
    /// The coordinator's `[access]` section. Default: the user running the tests is
    /// admin (root is anyway; this makes an unprivileged developer one too).
    pub access: String,
    /// Whole sections appended to the coordinator's config (`[pools.NAME]`, `[join]`...).
    pub sections: String,
    coordinator: Option<Child>,
    agents: HashMap<String, Child>,
    /// Agents that reach the coordinator through another port (a relay's), by name.
    via: HashMap<String, u16>,
    http: reqwest::Client,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster::new()
    }
}

impl Cluster {
    /// A CA and a coordinator certificate; nothing running yet.
    pub fn new() -> Cluster {
        // reqwest is built without a bundled crypto provider; tests speak plain HTTP but
        // the client still wants one installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let http = reqwest::Client::builder()
            .unix_socket(dir_socket(&dir))
            .build()
            .unwrap();
        let tls = dir.path().join("tls");
        let ok = |o: Output| assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        ok(run(&["certs", "init", "--out", tls.to_str().unwrap()]));
        ok(run(&[
            "certs",
            "issue",
            "--ca",
            tls.to_str().unwrap(),
            "--name",
            "coordinator",
            "--role",
            "coordinator",
            "--san",
            "localhost",
            "--san",
            "127.0.0.1",
            "--out",
            tls.to_str().unwrap(),
        ]));
        Cluster {
            dir,
            quic_port: free_udp_port(),
            api_port: free_tcp_port(),
            coordinator_extra: String::new(),
            api_extra: String::new(),
            ray_heads: vec![ANY_NODE.into()],
            schedulers: PLUGIN_NAMES
                .iter()
                .map(|p| (p.to_string(), vec![ANY_NODE.into()]))
                .collect(),
            access: format!("roles = {{ {:?} = \"admin\" }}\n", runner()),
            sections: String::new(),
            coordinator: None,
            agents: HashMap::new(),
            via: HashMap::new(),
            http,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn tls_dir(&self) -> PathBuf {
        self.path("tls")
    }

    /// Issues an agent certificate for `name` (into tls/NAME.pem, tls/NAME.key).
    pub fn issue(&self, name: &str, role: &str) {
        let tls = self.tls_dir();
        let o = run(&[
            "certs",
            "issue",
            "--ca",
            tls.to_str().unwrap(),
            "--name",
            name,
            "--role",
            role,
            "--out",
            tls.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }

    pub fn write_coordinator_config(&self) -> PathBuf {
        let cfg = self.path("coordinator.toml");
        std::fs::write(
            &cfg,
            format!(
                "[coordinator]\nlisten = \"127.0.0.1:{}\"\nstate_dir = \"state\"\n{}{}\n[api]\nlisten = \"127.0.0.1:{}\"\nsocket = \"api.sock\"\n{}\n[access]\n{}\n[tls]\nca = \"tls/ca.pem\"\ncert = \"tls/coordinator.pem\"\nkey = \"tls/coordinator.key\"\n",
                self.quic_port,
                self.ray_heads_line(),
                self.coordinator_extra,
                self.api_port,
                self.api_extra,
                self.access
            ) + &self.scheduler_sections()
                + &self.sections,
        )
        .unwrap();
        cfg
    }

    pub fn start_coordinator(&mut self) {
        let cfg = self.write_coordinator_config();
        let log = std::fs::File::create(self.path("coordinator.log")).unwrap();
        let child = corral()
            .args(["coordinator", "--config", cfg.to_str().unwrap()])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.coordinator = Some(child);
        self.wait_api();
    }

    pub fn coordinator_log(&self) -> String {
        std::fs::read_to_string(self.path("coordinator.log")).unwrap_or_default()
    }

    pub fn wait_api(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.api_port)).is_err()
            || std::os::unix::net::UnixStream::connect(dir_socket(&self.dir)).is_err()
        {
            assert!(
                Instant::now() < deadline,
                "coordinator API never came up:\n{}",
                self.coordinator_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL and reap: a crash, nothing flushed on the way out.
    pub fn kill_coordinator(&mut self) {
        if let Some(mut c) = self.coordinator.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait: a clean shutdown.
    pub fn stop_coordinator(&mut self) {
        if let Some(mut c) = self.coordinator.take() {
            signal(&c, libc::SIGTERM);
            let status = wait_timeout(&mut c, Duration::from_secs(15))
                .expect("coordinator did not stop within 15s");
            assert!(status.success(), "coordinator exited with {status}");
        }
    }

    /// Has agent `name` (started after this) reach the coordinator at `port` on loopback
    /// instead of the coordinator's own: a relay's ([`netfault::Relay`]).
    pub fn route_agent_through(&mut self, name: &str, port: u16) {
        self.via.insert(name.to_string(), port);
    }

    /// An agent config for `name`. `extra` lands in the `[agent]` section and may open
    /// further sections. Unless it sets `[health]`, the host's load and disk thresholds
    /// are raised out of reach: a busy 2-core CI machine must not turn a test's node
    /// `degraded` by itself.
    pub fn agent_config(&self, name: &str, extra: &str) -> PathBuf {
        let cfg = self.path(&format!("agent-{name}.toml"));
        let health = if extra.contains("[health") {
            ""
        } else {
            "[health]\nload_per_core_warn = 1000.0\nload_per_core_fail = 1000.0\ndisk_warn_percent = 100\ndisk_fail_percent = 100\nmemory_available_warn_percent = 0\nmemory_available_fail_percent = 0\n"
        };
        std::fs::write(
            &cfg,
            format!(
                "[agent]\nname = \"{name}\"\ncoordinator = \"127.0.0.1:{}\"\nserver_name = \"localhost\"\nreconnect_base = \"100ms\"\nreconnect_cap = \"1s\"\n{extra}\n[tls]\nca = \"tls/ca.pem\"\ncert = \"tls/{name}.pem\"\nkey = \"tls/{name}.key\"\n{health}",
                self.via.get(name).copied().unwrap_or(self.quic_port)
            ),
        )
        .unwrap();
        cfg
    }

    /// Issues a certificate (first time) and starts `corral agent` for `name`.
    pub fn start_agent(&mut self, name: &str, extra: &str) {
        self.start_agent_with_env(name, extra, &[]);
    }

    /// [`Cluster::start_agent`] with `env` set in the agent's environment (what a
    /// scheduler's client programs need, e.g. Grid Engine's `SGE_ROOT`).
    pub fn start_agent_with_env(&mut self, name: &str, extra: &str, env: &[(&str, &str)]) {
        if !self.tls_dir().join(format!("{name}.pem")).exists() {
            self.issue(name, "agent");
        }
        let cfg = self.agent_config(name, extra);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(&format!("agent-{name}.log")))
            .unwrap();
        let child = corral()
            .args(["agent", "--config", cfg.to_str().unwrap()])
            .envs(env.iter().copied())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.agents.insert(name.into(), child);
    }

    /// Starts an agent whose GPUs follow a fake script of `steps` (one per sample; the
    /// last repeats). `extra` goes into `[agent]`; `gpu_extra` into `[gpu]`.
    pub fn start_fake_gpu_agent(
        &mut self,
        name: &str,
        steps: Vec<serde_json::Value>,
        extra: &str,
        gpu_extra: &str,
    ) {
        let script = self.path(&format!("gpus-{name}.json"));
        std::fs::write(
            &script,
            serde_json::json!({"steps": steps, "repeat_last": true}).to_string(),
        )
        .unwrap();
        let extra = format!(
            "{extra}\n[gpu]\nbackend = \"fake\"\nfake_script = \"{}\"\n{gpu_extra}\n",
            script.display()
        );
        self.start_agent(name, &extra);
    }

    pub fn agent_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(&format!("agent-{name}.log"))).unwrap_or_default()
    }

    pub fn agent_pid(&self, name: &str) -> u32 {
        self.agents[name].id()
    }

    /// Sends `sig` to the agent and reaps it.
    pub fn signal_agent(&mut self, name: &str, sig: i32) -> std::process::ExitStatus {
        let mut c = self.agents.remove(name).expect("agent running");
        signal(&c, sig);
        wait_timeout(&mut c, Duration::from_secs(15)).expect("agent did not exit")
    }

    /// The API's TCP listener (which, like any client off the socket, needs a token).
    pub fn api(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    /// The API's Unix socket, where the user running the tests is admin: what CLI calls
    /// in tests use (`--socket`).
    pub fn socket(&self) -> String {
        dir_socket(&self.dir).display().to_string()
    }

    /// An HTTP client that reaches the API through its socket; use it with [`Cluster::url`].
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// `path` on the API, for [`Cluster::http`].
    pub fn url(&self, path: &str) -> String {
        format!("http://localhost{path}")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).send().await.unwrap()
    }

    /// A bearer token for `user` with `role` (`viewer`, `user`, `admin`), made by the
    /// test runner through the socket with `corral tokens create`.
    pub async fn token(&self, user: &str, role: &str) -> String {
        let out = run_async(vec![
            "tokens".into(),
            "create".into(),
            "--user".into(),
            user.into(),
            "--role".into(),
            role.into(),
            "--socket".into(),
            self.socket(),
        ])
        .await;
        assert!(out.status.success(), "tokens create: {}", stderr(&out));
        stdout(&out).trim().to_string()
    }

    pub async fn node(&self, name: &str) -> Option<NodeView> {
        let r = self.get(&format!("/api/v1/nodes/{name}")).await;
        if r.status() == 404 {
            return None;
        }
        Some(r.json().await.unwrap())
    }

    pub async fn events(&self, node: &str) -> Vec<Event> {
        self.get(&format!("/api/v1/events?node={node}"))
            .await
            .json()
            .await
            .unwrap()
    }

    /// Polls until `pred` holds for the node; returns it and the time it took.
    pub async fn wait_node(
        &self,
        name: &str,
        what: &str,
        within: Duration,
        pred: impl Fn(&NodeView) -> bool,
    ) -> (NodeView, Duration) {
        let start = Instant::now();
        loop {
            if let Some(n) = self.node(name).await {
                if pred(&n) {
                    return (n, start.elapsed());
                }
            }
            if start.elapsed() > within {
                panic!(
                    "node {name} not {what} within {within:?}: {:?}\n--- coordinator log ---\n{}\n--- agent log ---\n{}",
                    self.node(name).await.map(|n| (n.liveness, n.health, n.reasons)),
                    self.coordinator_log(),
                    self.agent_log(name)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `node`'s current connection has announced its scheduler plugins
    /// (`GET /api/v1/plugins`); panics with what was seen and the agent's log after
    /// `within`.
    pub async fn wait_plugins_announced(&self, node: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let v: serde_json::Value = self.get("/api/v1/plugins").await.json().await.unwrap();
            let announced = v.as_array().is_some_and(|a| {
                a.iter().any(|n| {
                    n["node"] == node && n["connected"] == true && !n["announced_ms"].is_null()
                })
            });
            if announced {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{node} never announced its plugins: {v}\n--- agent log ---\n{}",
                self.agent_log(node)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn wait_liveness(&self, name: &str, want: Liveness, within: Duration) -> Duration {
        self.wait_node(name, want.as_str(), within, |n| n.liveness == want)
            .await
            .1
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, mut c) in self.agents.drain() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(mut c) = self.coordinator.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn signal(c: &Child, sig: i32) {
    unsafe {
        libc::kill(c.id() as i32, sig);
    }
}

pub fn wait_timeout(c: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(s) = c.try_wait().unwrap() {
            return Some(s);
        }
        if start.elapsed() > within {
            let _ = c.kill();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs a blocking command off the async runtime.
pub async fn run_async(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || corral().args(&args).output().unwrap())
        .await
        .unwrap()
}

pub fn exists(p: &Path) -> bool {
    p.exists()
}

// --- Plugin calls in tests that are not about identities ----------------------------------

/// The user running the tests (root under CI), by name.
pub fn runner() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        corral_sandbox::identity::User::current()
            .map(|u| u.name)
            .expect("the user running the tests has a passwd entry")
    })
}

/// `cfg` with every plugin call run as the user running the tests: the service user is
/// that user, and that user (root under CI) may own jobs. Tests about who runs what
/// (tests/identity.rs) do not use this.
pub fn runs_as_runner(
    cfg: corral_sandbox::plugins::PluginsConfig,
) -> corral_sandbox::plugins::PluginsConfig {
    corral_sandbox::plugins::PluginsConfig {
        service_user: runner().to_string(),
        min_job_uid: 0,
        allow_root_jobs: true,
        ..cfg
    }
}

// --- Who may announce what: the coordinator config's authorizations ---------------------

/// The entry that authorizes every node (a lab setting; tests/trust.rs narrows it).
pub const ANY_NODE: &str = "*";

/// The scheduler plugins of this checkout (`plugins/`), authorized for every node by
/// default: tests about jobs, Ray or metrics run their agents under any name without
/// naming them to the coordinator first.
pub const PLUGIN_NAMES: &[&str] = &[
    "slurm", "ray-jobs", "pbs", "sge", "lsf", "htcondor", "example",
];

impl Cluster {
    /// Lets exactly `nodes` announce a Ray head (before `start_coordinator`).
    pub fn authorize_ray_heads(&mut self, nodes: &[&str]) {
        self.ray_heads = nodes.iter().map(|n| n.to_string()).collect();
    }

    /// Lets exactly `nodes`, in this order of preference, serve `scheduler`, and nobody
    /// else (before `start_coordinator`).
    pub fn authorize_scheduler(&mut self, scheduler: &str, nodes: &[&str]) {
        self.schedulers.retain(|(s, _)| s != scheduler);
        self.schedulers.push((
            scheduler.to_string(),
            nodes.iter().map(|n| n.to_string()).collect(),
        ));
    }

    fn ray_heads_line(&self) -> String {
        format!("ray_heads = {:?}\n", self.ray_heads)
    }

    fn scheduler_sections(&self) -> String {
        self.schedulers
            .iter()
            .map(|(name, nodes)| format!("[schedulers.{name}]\nnodes = {nodes:?}\n"))
            .collect()
    }
}

/// [`runs_as_runner`] as `[plugins]` keys of an agent's config file.
pub fn runs_as_runner_keys() -> String {
    format!(
        "service_user = {:?}\nmin_job_uid = 0\nallow_root_jobs = true\n",
        runner()
    )
}
