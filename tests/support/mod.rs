//! Test support: a real cluster on loopback. Every process is the real `corral` binary,
//! every connection real QUIC with certificates from a real CA made by `corral certs`.
//! Processes are killed when the cluster value is dropped, so a failing test leaves
//! nothing running.
#![allow(dead_code)]

pub mod fake_programs;
pub mod slurm;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use corral_proto::api::{Event, NodeView};
use corral_proto::model::Liveness;

pub fn corral() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_corral"));
    c.env("CORRAL_LOG", "info,quinn=warn")
        .env_remove("CORRAL_API")
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
    coordinator: Option<Child>,
    agents: HashMap<String, Child>,
    http: reqwest::Client,
}

impl Cluster {
    /// A CA and a coordinator certificate; nothing running yet.
    pub fn new() -> Cluster {
        // reqwest is built without a bundled crypto provider; tests speak plain HTTP but
        // the client still wants one installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
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
            coordinator: None,
            agents: HashMap::new(),
            http: reqwest::Client::new(),
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
                "[coordinator]\nlisten = \"127.0.0.1:{}\"\nstate_dir = \"state\"\n{}\n[api]\nlisten = \"127.0.0.1:{}\"\n{}\n[tls]\nca = \"tls/ca.pem\"\ncert = \"tls/coordinator.pem\"\nkey = \"tls/coordinator.key\"\n",
                self.quic_port, self.coordinator_extra, self.api_port, self.api_extra
            ),
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
        while std::net::TcpStream::connect(("127.0.0.1", self.api_port)).is_err() {
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
                self.quic_port
            ),
        )
        .unwrap();
        cfg
    }

    /// Issues a certificate (first time) and starts `corral agent` for `name`.
    pub fn start_agent(&mut self, name: &str, extra: &str) {
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

    pub fn api(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.api()))
            .send()
            .await
            .unwrap()
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
