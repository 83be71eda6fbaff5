//! Agents speak only for themselves, against a real coordinator over real QUIC with real
//! certificates: announcements are authorized by the coordinator's config, a command's
//! answer counts only from the connection it went on, what agents send is bounded, and
//! an oversized command fails alone. The peers here are hand-driven agent connections
//! (a real agent never sends these messages), each with its own agent certificate.

use corral_test_support as support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use corral_proto::job::{LoadedPlugin, PluginCall, PluginInfo, PluginReply};
use corral_proto::model::{Filesystem, Health, HealthStatus, NodeReport, Reason};
use corral_proto::wire::{
    AgentMsg, Command, CommandOutput, CoordMsg, Hello, RayHead, Refusal, Welcome, PROTOCOL_VERSION,
};
use corral_transport::frame::{self, FrameReader, FrameWriter};
use corral_transport::pki::TlsFiles;
use support::*;

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// A hand-driven agent connection.
struct Peer {
    name: String,
    conn: quinn::Connection,
    w: FrameWriter,
    r: FrameReader,
    _endpoint: quinn::Endpoint,
}

/// A hello as a real agent sends it, beating once a minute (the slowest the coordinator
/// accepts), so a peer that does not beat stays ready for the whole test.
fn hello(name: &str) -> Hello {
    Hello {
        protocol: PROTOCOL_VERSION,
        node: name.into(),
        agent_version: "test".into(),
        beat_interval_ms: 60_000,
        max_frame_bytes: 1 << 20,
    }
}

impl Peer {
    /// Connects as agent `name` (issuing its certificate) with `hello`; the coordinator's
    /// refusal, if it refuses.
    async fn try_connect(c: &Cluster, name: &str, hello: Hello) -> Result<Peer, (Refusal, String)> {
        if !c.tls_dir().join(format!("{name}.pem")).exists() {
            c.issue(name, "agent");
        }
        let tls = c.tls_dir();
        let files = TlsFiles {
            ca: tls.join("ca.pem"),
            cert: tls.join(format!("{name}.pem")),
            key: tls.join(format!("{name}.key")),
            crl: None,
        };
        let material = files.load().unwrap();
        let cfg = corral_transport::pki::quic_client_config(&material, frame::transport_config())
            .unwrap();
        let endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], c.quic_port));
        let conn = endpoint
            .connect_with(cfg, addr, "localhost")
            .unwrap()
            .await
            .unwrap();
        let (s, r) = conn.open_bi().await.unwrap();
        let mut peer = Peer {
            name: name.into(),
            conn,
            w: FrameWriter::new(s, 1 << 20),
            r: FrameReader::new(r, 1 << 20),
            _endpoint: endpoint,
        };
        peer.w.send("hello", &hello).await.unwrap();
        match peer.r.recv::<Welcome>("welcome").await {
            Ok(_) => Ok(peer),
            Err(_) => Err(refusal(&peer.conn).await),
        }
    }

    async fn connect(c: &Cluster, name: &str) -> Peer {
        match Peer::try_connect(c, name, hello(name)).await {
            Ok(p) => p,
            Err(e) => panic!("{name} refused: {e:?}\n{}", c.coordinator_log()),
        }
    }

    async fn send(&mut self, msg: AgentMsg) {
        self.w.send("agent message", &msg).await.unwrap();
    }

    /// The next message from the coordinator, or `None` if none comes within `within`.
    async fn next(&mut self, within: Duration) -> Option<CoordMsg> {
        match tokio::time::timeout(within, self.r.recv::<CoordMsg>("coordinator message")).await {
            Ok(Ok(m)) => Some(m),
            Ok(Err(e)) => panic!("{}: the stream failed: {e}", self.name),
            Err(_) => None,
        }
    }

    /// The next message, which must be a command.
    async fn command(&mut self) -> (u64, Command) {
        match self.next(SECS(10)).await {
            Some(CoordMsg::Command { id, command }) => (id, command),
            other => panic!("{}: expected a command, got {other:?}", self.name),
        }
    }

    async fn answer(&mut self, id: u64, result: Result<CommandOutput, String>) {
        self.send(AgentMsg::CommandResult { id, result }).await;
    }

    /// Announces that it hosts these scheduler plugins.
    async fn announce(&mut self, plugins: &[&str]) {
        let loaded = plugins.iter().map(|p| plugin(p)).collect();
        self.send(AgentMsg::Plugins {
            loaded,
            failed: vec![],
        })
        .await;
    }
}

async fn refusal(conn: &quinn::Connection) -> (Refusal, String) {
    match tokio::time::timeout(SECS(15), conn.closed()).await {
        Ok(quinn::ConnectionError::ApplicationClosed(c)) => (
            frame::refusal_of(c.error_code).expect("a corral refusal code"),
            String::from_utf8_lossy(&c.reason).into_owned(),
        ),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn plugin(name: &str) -> LoadedPlugin {
    LoadedPlugin {
        info: PluginInfo {
            name: name.into(),
            version: "0.1.0".into(),
            scheduler: name.into(),
            features: vec![],
        },
        digest: "00".into(),
        grants: Default::default(),
    }
}

fn ray_head(node: &str, address: &str) -> RayHead {
    RayHead {
        node: node.into(),
        address: address.into(),
        dashboard: format!("http://{address}"),
        python: "3.11.7".into(),
        ray: "2.60.0".into(),
        venv: "/opt/ray".into(),
        started_ms: 1,
    }
}

/// POSTs JSON to the API (through its socket, as the admin running the tests) in the
/// background: a call routed to an agent waits for a peer to answer it.
fn post(c: &Cluster, path: &str, body: Value) -> tokio::task::JoinHandle<(u16, Value)> {
    let request = c
        .http()
        .post(c.url(path))
        .header("content-type", "application/json")
        .body(body.to_string());
    tokio::spawn(async move {
        let r = request.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    })
}

fn submit(c: &Cluster, job: Value) -> tokio::task::JoinHandle<(u16, Value)> {
    post(c, "/api/v1/jobs", job)
}

fn ping(c: &Cluster, node: &str) -> tokio::task::JoinHandle<(u16, Value)> {
    post(c, &format!("/api/v1/nodes/{node}/ping"), json!({}))
}

/// Waits until `node`'s announcement of its plugins is in.
async fn wait_announced(c: &Cluster, node: &str) {
    wait_for(
        c,
        &format!("listing {node}'s plugins"),
        SECS(10),
        || async {
            let plugins = get_json(c, "/api/v1/plugins").await;
            plugins
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["node"] == node && !p["announced_ms"].is_null())
                .then_some(())
        },
    )
    .await
}

async fn get_json(c: &Cluster, path: &str) -> Value {
    c.get(path).await.json().await.unwrap()
}

async fn metrics(c: &Cluster) -> String {
    c.get("/metrics").await.text().await.unwrap()
}

/// Polls `probe` until it gives `Some`, for at most `within`.
async fn wait_for<T, F, Fut>(c: &Cluster, what: &str, within: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            start.elapsed() < within,
            "not {what} within {within:?}\n--- coordinator log ---\n{}",
            c.coordinator_log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_metric(c: &Cluster, series: &str) {
    wait_for(c, &format!("showing {series}"), SECS(10), || async {
        metrics(c).await.contains(series).then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_non_head_nodes_ray_head_announcement_is_refused_and_the_workers_keep_their_head() {
    let mut c = Cluster::new();
    c.authorize_ray_heads(&["head-01"]);
    c.start_coordinator();
    let mut worker = Peer::connect(&c, "worker-01").await;
    let mut head = Peer::connect(&c, "head-01").await;
    head.send(AgentMsg::RayHead(Some(ray_head(
        "head-01",
        "10.0.0.1:6379",
    ))))
    .await;
    match worker.next(SECS(10)).await {
        Some(CoordMsg::HeadChanged { head: Some(h) }) => {
            assert_eq!(
                (h.node.as_str(), h.address.as_str()),
                ("head-01", "10.0.0.1:6379")
            )
        }
        other => panic!("the worker did not learn the real head: {other:?}"),
    }

    // Another agent certificate claims the head, at its own address.
    let mut rogue = Peer::connect(&c, "rogue").await;
    rogue
        .send(AgentMsg::RayHead(Some(ray_head("head-01", "6.6.6.6:6379"))))
        .await;
    wait_metric(
        &c,
        "corral_refused_announcements_total{kind=\"ray_head\"} 1\n",
    )
    .await;
    // Nothing was pushed: the next thing the worker gets is a ping sent after the
    // refusal was counted (pushes and commands share its queue, in order).
    let pinged = ping(&c, "worker-01");
    let (id, command) = worker.command().await;
    let Command::Ping { nonce } = command else {
        panic!("expected a ping, got {command:?}");
    };
    worker.answer(id, Ok(CommandOutput::Pong { nonce })).await;
    let (status, body) = pinged.await.unwrap();
    assert_eq!(status, 200, "{body}");

    // A worker that joins now learns the real head first thing.
    let mut late = Peer::connect(&c, "worker-02").await;
    match late.next(SECS(10)).await {
        Some(CoordMsg::HeadChanged { head: Some(h) }) => assert_eq!(h.address, "10.0.0.1:6379"),
        other => panic!("the late worker did not learn the real head: {other:?}"),
    }
    // The rogue's withdrawal is no withdrawal either.
    rogue.send(AgentMsg::RayHead(None)).await;
    let mut later = Peer::connect(&c, "worker-03").await;
    assert!(matches!(
        later.next(SECS(10)).await,
        Some(CoordMsg::HeadChanged { head: Some(_) })
    ));
    let log = c.coordinator_log();
    assert!(
        log.contains("Ray head announcement refused") && log.contains("coordinator.ray_heads"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agents_answer_to_another_nodes_command_is_ignored() {
    let mut c = Cluster::new();
    c.start_coordinator();
    let mut victim = Peer::connect(&c, "victim").await;
    let mut forger = Peer::connect(&c, "forger").await;
    let pinged = ping(&c, "victim");
    let (id, command) = victim.command().await;
    let Command::Ping { nonce } = command else {
        panic!("expected a ping, got {command:?}");
    };
    // The forger answers the victim's command, with exactly the answer the caller wants.
    forger.answer(id, Ok(CommandOutput::Pong { nonce })).await;
    wait_for(&c, "counting the forged answer", SECS(10), || async {
        let stats = get_json(&c, "/api/v1/stats").await;
        (stats["refused"]["foreign_command_results"] == 1).then_some(())
    })
    .await;
    assert!(
        !pinged.is_finished(),
        "the forged answer completed the ping"
    );
    // Only the victim's own answer counts.
    victim
        .answer(id, Err("the victim's own answer".into()))
        .await;
    let (status, body) = pinged.await.unwrap();
    assert_eq!(status, 502, "{body}");
    assert!(
        body.to_string().contains("the victim's own answer"),
        "{body}"
    );
    wait_metric(&c, "corral_foreign_command_results_total 1\n").await;
    let log = c.coordinator_log();
    assert!(
        log.contains("ignoring a command result from another connection")
            && log.contains("sent_to"),
        "{log}"
    );
    // Ignored, not refused: the forger is still connected.
    assert!(c.node("forger").await.unwrap().connected);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unauthorized_nodes_scheduler_announcement_gets_no_submissions() {
    let mut c = Cluster::new();
    c.authorize_scheduler("slurm", &["login-01", "login-02"]);
    c.start_coordinator();
    // `aaa` sorts first and announces first; it is not authorized.
    let mut aaa = Peer::connect(&c, "aaa").await;
    aaa.announce(&["slurm"]).await;
    wait_for(
        &c,
        "listing aaa's plugin as not authorized",
        SECS(10),
        || async {
            let plugins = get_json(&c, "/api/v1/plugins").await;
            plugins
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["node"] == "aaa" && p["not_authorized"] == json!(["slurm"]))
                .then_some(())
        },
    )
    .await;
    let job = json!({"scheduler": "slurm", "spec": {"executable": "/bin/true", "environment": [["SECRET", "x"]]}});
    let (status, body) = submit(&c, job.clone()).await.unwrap();
    assert_eq!(status, 404, "{body}");
    let err = body["error"].as_str().unwrap();
    assert!(
        err.contains("not authorized") && err.contains("aaa") && err.contains("login-01"),
        "{err}"
    );
    let mut via = job.clone();
    via["via"] = json!("aaa");
    let (status, body) = submit(&c, via).await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("node aaa is not authorized"),
        "{body}"
    );
    let out = run_async(vec!["plugins".into(), "--socket".into(), c.socket()]).await;
    assert!(
        stdout(&out)
            .lines()
            .any(|l| l.starts_with("aaa") && l.contains("loaded, not authorized")),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    wait_metric(
        &c,
        "corral_refused_announcements_total{kind=\"scheduler\"} 1\n",
    )
    .await;

    // The authorized node gets the submission, though it announced last.
    let mut login = Peer::connect(&c, "login-02").await;
    login.announce(&["slurm"]).await;
    wait_announced(&c, "login-02").await;
    let submitted = submit(&c, job);
    let (id, command) = login.command().await;
    assert!(
        matches!(&command, Command::Plugin { plugin, call, .. } if plugin == "slurm" && matches!(**call, PluginCall::Submit(_))),
        "{command:?}"
    );
    login
        .answer(
            id,
            Ok(CommandOutput::Plugin(Ok(PluginReply::Submitted(
                "4242".into(),
            )))),
        )
        .await;
    let (status, body) = submitted.await.unwrap();
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        (body["node"].as_str(), body["native_id"].as_str()),
        (Some("login-02"), Some("4242"))
    );
    assert!(
        aaa.next(Duration::from_millis(500)).await.is_none(),
        "aaa got a command"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pending_command_fails_at_once_when_its_node_disconnects() {
    let mut c = Cluster::new();
    c.authorize_scheduler("slurm", &["flaky"]);
    c.start_coordinator();
    let mut flaky = Peer::connect(&c, "flaky").await;
    flaky.announce(&["slurm"]).await;
    wait_announced(&c, "flaky").await;
    let submitted = submit(
        &c,
        json!({"scheduler": "slurm", "spec": {"executable": "/bin/true"}}),
    );
    let (_, command) = flaky.command().await;
    assert!(matches!(command, Command::Plugin { .. }), "{command:?}");
    // The agent goes away with the submission in flight (jobs.call_timeout is 60 s).
    let gone = Instant::now();
    flaky.conn.close(quinn::VarInt::from_u32(0), b"gone");
    let (status, body) = submitted.await.unwrap();
    let took = gone.elapsed();
    assert!(took < SECS(5), "answered after {took:?}");
    assert_eq!(status, 502, "{body}");
    let err = body["error"].as_str().unwrap();
    assert!(err.contains("node flaky disconnected"), "{err}");
    // The scheduler may have the job: it is recorded orphaned, not rejected.
    let jobs = get_json(&c, "/api/v1/jobs").await;
    let job = &jobs.as_array().unwrap()[0];
    assert_eq!(job["phase"], "orphaned", "{job}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mount_point_built_to_inject_a_label_adds_no_series() {
    let mut c = Cluster::new();
    c.start_coordinator();
    let mut mounty = Peer::connect(&c, "mounty").await;
    let hostile = "/x\"} 1\ncorral_node_up{node=\"victim\"} 1\n# \\";
    let mut report = NodeReport {
        node: "mounty".into(),
        ..Default::default()
    };
    report.host.filesystems.push(Filesystem {
        mount: hostile.into(),
        device: "sda\"\n".into(),
        fs_type: "ext4".into(),
        total_bytes: 10,
        available_bytes: 5,
    });
    mounty.send(AgentMsg::Report(Box::new(report))).await;
    c.wait_node("mounty", "reported", SECS(10), |n| n.report.is_some())
        .await;
    let text = metrics(&c).await;
    let lines_of = |family: &str| {
        text.lines()
            .filter(|l| l.starts_with(&format!("{family}{{")))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        lines_of("corral_node_up"),
        ["corral_node_up{node=\"mounty\"} 1.0"],
        "{text}"
    );
    assert_eq!(
        lines_of("corral_node_filesystem_size_bytes").len(),
        1,
        "{text}"
    );
    assert!(
        text.contains(r#"mount="/x\"} 1\ncorral_node_up{node=\"victim\"} 1\n# \\"}"#),
        "the value is kept, escaped:\n{text}"
    );
    // Every line is a comment or one well-formed series.
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        assert!(
            line.starts_with("corral_"),
            "a line that is not a series: {line:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_one_and_a_half_megabyte_argument_is_refused_and_the_node_stays_connected() {
    let mut c = Cluster::new();
    c.authorize_scheduler("slurm", &["big"]);
    c.start_coordinator();
    let mut big = Peer::connect(&c, "big").await;
    big.announce(&["slurm"]).await;
    wait_announced(&c, "big").await;
    let argument = "x".repeat(1_500_000);
    let (status, body) = submit(
        &c,
        json!({"scheduler": "slurm", "spec": {"executable": "/bin/echo", "arguments": [argument]}}),
    )
    .await
    .unwrap();
    assert_eq!(status, 413, "{body}");
    let err = body["error"].as_str().unwrap();
    assert!(
        err.contains("over node big's frame limit of 1 MiB")
            && err.contains("shorten the arguments"),
        "{err}"
    );
    assert!(
        big.next(Duration::from_millis(300)).await.is_none(),
        "the command was sent"
    );
    let jobs = get_json(&c, "/api/v1/jobs").await;
    assert_eq!(jobs[0]["phase"], "rejected", "it never left: {jobs}");

    // The session is intact: the node is connected and the next command goes through.
    assert!(c.node("big").await.unwrap().connected);
    let small = submit(
        &c,
        json!({"scheduler": "slurm", "spec": {"executable": "/bin/true"}}),
    );
    let (id, _) = big.command().await;
    big.answer(
        id,
        Ok(CommandOutput::Plugin(Ok(PluginReply::Submitted(
            "7".into(),
        )))),
    )
    .await;
    let (status, body) = small.await.unwrap();
    assert_eq!(status, 201, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn events_per_node_are_rate_limited() {
    let mut c = Cluster::new();
    c.start_coordinator();
    let mut flappy = Peer::connect(&c, "flappy").await;
    // 200 reports, each a health change: 200 health events, plus the registration.
    for i in 0..200 {
        let reasons = if i % 2 == 0 {
            vec![Reason {
                check: "disk".into(),
                status: HealthStatus::Unhealthy,
                message: format!("flap {i}"),
            }]
        } else {
            vec![]
        };
        flappy
            .send(AgentMsg::Report(Box::new(NodeReport {
                node: "flappy".into(),
                health: Health::from_reasons(reasons),
                ..Default::default()
            })))
            .await;
    }
    let started = Instant::now();
    let (recorded, suppressed) = wait_for(&c, "accounting for every event", SECS(15), || async {
        let events = get_json(&c, "/api/v1/events?node=flappy&limit=10000").await;
        let recorded = events.as_array().unwrap().len() as u64;
        let stats = get_json(&c, "/api/v1/stats").await;
        let suppressed = stats["refused"]["suppressed_events"]["flappy"]
            .as_u64()
            .unwrap_or(0);
        (recorded + suppressed == 201).then_some((recorded, suppressed))
    })
    .await;
    // A burst of 60, refilled at one a second while the reports arrived.
    let allowed = 60 + started.elapsed().as_secs() + 2;
    assert!(recorded <= allowed, "{recorded} events recorded");
    assert!(suppressed >= 201 - allowed, "{suppressed} suppressed");
    wait_metric(&c, "corral_suppressed_events_total{node=\"flappy\"}").await;
    // Another node's events are still recorded.
    let _quiet = Peer::connect(&c, "quiet").await;
    let events = get_json(&c, "/api/v1/events?node=quiet").await;
    assert_eq!(events.as_array().unwrap().len(), 1, "{events}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_out_of_range_beat_interval_is_refused_with_a_readable_reason() {
    let mut c = Cluster::new();
    c.start_coordinator();
    for (name, ms) in [("hasty", 10), ("sleepy", 3_600_000)] {
        let hello = Hello {
            beat_interval_ms: ms,
            ..hello(name)
        };
        let Err((why, reason)) = Peer::try_connect(&c, name, hello).await else {
            panic!("{name} beating every {ms} ms was welcomed");
        };
        assert_eq!(why, Refusal::ProtocolViolation);
        assert!(
            reason.contains(&format!("beat interval {ms} ms"))
                && reason.contains("100 ms to 60 s")
                && reason.contains("agent.beat_interval"),
            "{reason}"
        );
        assert!(c.node(name).await.is_none(), "{name} was registered");
    }
    let stats = get_json(&c, "/api/v1/stats").await;
    assert_eq!(stats["rejected_total"]["beat_interval"], 2, "{stats}");
    // Within the range, welcome.
    let within = Hello {
        beat_interval_ms: 100,
        ..hello("brisk")
    };
    assert!(Peer::try_connect(&c, "brisk", within).await.is_ok());
}
