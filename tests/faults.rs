//! Bad peers and bad input against a real coordinator: each gets a clear refusal, and the
//! coordinator keeps serving a well-behaved agent throughout.

use corral_test_support as support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use corral_proto::model::{Liveness, NodeReport};
use corral_proto::wire::{AgentMsg, Hello, Refusal, Welcome, PROTOCOL_VERSION};
use corral_transport::frame::{self, Bytes, FrameReader, FrameWriter};
use corral_transport::pki::TlsFiles;
use support::*;

/// A hand-driven agent connection, for sending what a real agent never would.
struct Raw {
    conn: quinn::Connection,
    w: FrameWriter,
    r: FrameReader,
    _endpoint: quinn::Endpoint,
}

fn files(tls: &Path, name: &str) -> TlsFiles {
    TlsFiles {
        ca: tls.join("ca.pem"),
        cert: tls.join(format!("{name}.pem")),
        key: tls.join(format!("{name}.key")),
        crl: None,
    }
}

/// The QUIC handshake alone (a coordinator may refuse right after it, before any stream).
async fn raw_handshake(
    c: &Cluster,
    tls: TlsFiles,
) -> Result<(quinn::Connection, quinn::Endpoint), String> {
    let material = tls.load().map_err(|e| format!("{e:#}"))?;
    let cfg =
        corral_transport::pki::quic_client_config(&material, frame::transport_config()).unwrap();
    let endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], c.quic_port));
    let conn = endpoint
        .connect_with(cfg, addr, "localhost")
        .unwrap()
        .await
        .map_err(|e| e.to_string())?;
    Ok((conn, endpoint))
}

async fn raw_connect(c: &Cluster, tls: TlsFiles) -> Result<Raw, String> {
    let (conn, endpoint) = raw_handshake(c, tls).await?;
    let (s, r) = conn.open_bi().await.map_err(|e| e.to_string())?;
    Ok(Raw {
        conn,
        w: FrameWriter::new(s, 1 << 20),
        r: FrameReader::new(r, 1 << 20),
        _endpoint: endpoint,
    })
}

fn hello(node: &str, protocol: u32) -> Hello {
    Hello {
        protocol,
        node: node.into(),
        agent_version: "test".into(),
        beat_interval_ms: 1000,
        max_frame_bytes: 1 << 20,
    }
}

/// Waits for the coordinator to close the connection; returns the refusal and reason.
async fn refusal(raw: &Raw) -> (Refusal, String) {
    refusal_on(&raw.conn).await
}

async fn refusal_on(conn: &quinn::Connection) -> (Refusal, String) {
    let err = tokio::time::timeout(Duration::from_secs(15), conn.closed())
        .await
        .expect("connection not closed");
    match err {
        quinn::ConnectionError::ApplicationClosed(c) => (
            frame::refusal_of(c.error_code).expect("known code"),
            String::from_utf8_lossy(&c.reason).into_owned(),
        ),
        other => panic!("expected an application close, got {other}"),
    }
}

/// A cluster with a healthy agent `good` running, to check the coordinator keeps serving.
async fn cluster_with_good_agent() -> Cluster {
    let mut c = Cluster::new();
    c.coordinator_extra = "max_frame_bytes = 65536".into();
    c.start_coordinator();
    c.start_agent("good", "");
    c.wait_node("good", "reported", Duration::from_secs(20), |n| {
        n.liveness == Liveness::Ready && n.report.is_some()
    })
    .await;
    c
}

async fn assert_good_agent_unharmed(c: &Cluster) {
    let before = c.node("good").await.unwrap().last_beat_ms;
    c.wait_node("good", "still beating", Duration::from_secs(5), |n| {
        n.liveness == Liveness::Ready && n.last_beat_ms > before
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn certificate_from_another_ca_is_refused_at_the_handshake() {
    let c = cluster_with_good_agent().await;
    let other = c.path("other-ca");
    assert!(run(&["certs", "init", "--out", other.to_str().unwrap()])
        .status
        .success());
    assert!(run(&[
        "certs",
        "issue",
        "--ca",
        other.to_str().unwrap(),
        "--name",
        "intruder",
        "--role",
        "agent",
        "--out",
        other.to_str().unwrap()
    ])
    .status
    .success());
    // Trust the real cluster CA (so the client side would accept the coordinator), but
    // present a certificate the cluster CA never signed.
    let tls = TlsFiles {
        ca: c.tls_dir().join("ca.pem"),
        cert: other.join("intruder.pem"),
        key: other.join("intruder.key"),
        crl: None,
    };
    let result = raw_connect(&c, tls).await;
    if let Ok(raw) = result {
        // TLS 1.3 may finish the client side before the server's verdict arrives.
        let err = tokio::time::timeout(Duration::from_secs(5), raw.conn.closed())
            .await
            .expect("must be closed");
        assert!(
            err.to_string().to_lowercase().contains("certificate")
                || err.to_string().contains("crypto"),
            "{err}"
        );
    }
    assert!(c.node("intruder").await.is_none());
    assert_good_agent_unharmed(&c).await;
    let stats: serde_json::Value = c.get("/api/v1/stats").await.json().await.unwrap();
    assert!(
        stats["rejected_total"]["handshake"].as_u64().unwrap_or(0) >= 1,
        "{stats}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hello_for_another_name_than_the_certificate_is_refused() {
    let c = cluster_with_good_agent().await;
    c.issue("alpha", "agent");
    let mut raw = raw_connect(&c, files(&c.tls_dir(), "alpha")).await.unwrap();
    raw.w
        .send("hello", &hello("beta", PROTOCOL_VERSION))
        .await
        .unwrap();
    let (why, reason) = refusal(&raw).await;
    assert_eq!(why, Refusal::IdentityMismatch);
    assert!(
        reason.contains("\"alpha\"") && reason.contains("\"beta\""),
        "{reason}"
    );
    assert!(c.node("beta").await.is_none() && c.node("alpha").await.is_none());
    assert_good_agent_unharmed(&c).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn report_about_another_node_is_rejected() {
    let c = cluster_with_good_agent().await;
    c.issue("mallory", "agent");
    let mut raw = raw_connect(&c, files(&c.tls_dir(), "mallory"))
        .await
        .unwrap();
    raw.w
        .send("hello", &hello("mallory", PROTOCOL_VERSION))
        .await
        .unwrap();
    let _: Welcome = raw.r.recv("welcome").await.unwrap();
    let forged = NodeReport {
        node: "good".into(),
        ..Default::default()
    };
    raw.w
        .send("report", &AgentMsg::Report(Box::new(forged)))
        .await
        .unwrap();
    let (why, reason) = refusal(&raw).await;
    assert_eq!(why, Refusal::IdentityMismatch);
    assert!(reason.contains("report for node \"good\""), "{reason}");
    // The forged report did not land on the real node.
    let good = c.node("good").await.unwrap();
    assert_eq!(good.report.map(|r| r.facts.cpu_cores > 0), Some(true));
    assert_good_agent_unharmed(&c).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn report_delta_before_any_full_report_is_refused_as_a_protocol_violation() {
    let c = cluster_with_good_agent().await;
    c.issue("eager", "agent");
    let mut raw = raw_connect(&c, files(&c.tls_dir(), "eager")).await.unwrap();
    raw.w
        .send("hello", &hello("eager", PROTOCOL_VERSION))
        .await
        .unwrap();
    let _: Welcome = raw.r.recv("welcome").await.unwrap();
    // A delta made against a base this coordinator never saw.
    let mut deltas = corral_transport::delta::ReportEncoder::new();
    let report = NodeReport {
        node: "eager".into(),
        ..Default::default()
    };
    deltas.encode(&report).unwrap();
    let delta = deltas.encode(&report).unwrap();
    assert!(matches!(delta, AgentMsg::ReportDelta { .. }), "{delta:?}");
    raw.w.send("report", &delta).await.unwrap();
    let (why, reason) = refusal(&raw).await;
    assert_eq!(why, Refusal::ProtocolViolation);
    assert!(reason.contains("before any full report"), "{reason}");
    assert!(c.node("eager").await.and_then(|n| n.report).is_none());
    assert_good_agent_unharmed(&c).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn report_delta_about_another_node_is_rejected() {
    let c = cluster_with_good_agent().await;
    c.issue("sneaky", "agent");
    let mut raw = raw_connect(&c, files(&c.tls_dir(), "sneaky"))
        .await
        .unwrap();
    raw.w
        .send("hello", &hello("sneaky", PROTOCOL_VERSION))
        .await
        .unwrap();
    let _: Welcome = raw.r.recv("welcome").await.unwrap();
    let mut deltas = corral_transport::delta::ReportEncoder::new();
    let own = NodeReport {
        node: "sneaky".into(),
        ..Default::default()
    };
    raw.w
        .send("report", &deltas.encode(&own).unwrap())
        .await
        .unwrap();
    // The next report, as a delta, claims to be the good node.
    let forged = deltas
        .encode(&NodeReport {
            node: "good".into(),
            ..own
        })
        .unwrap();
    assert!(matches!(forged, AgentMsg::ReportDelta { .. }), "{forged:?}");
    raw.w.send("report", &forged).await.unwrap();
    let (why, reason) = refusal(&raw).await;
    assert_eq!(why, Refusal::IdentityMismatch);
    assert!(reason.contains("report for node \"good\""), "{reason}");
    let good = c.node("good").await.unwrap();
    assert_eq!(good.report.map(|r| r.facts.cpu_cores > 0), Some(true));
    assert_good_agent_unharmed(&c).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_frame_is_refused_as_a_protocol_violation() {
    let c = cluster_with_good_agent().await;
    c.issue("garbler", "agent");
    let mut raw = raw_connect(&c, files(&c.tls_dir(), "garbler"))
        .await
        .unwrap();
    raw.w
        .send("hello", &hello("garbler", PROTOCOL_VERSION))
        .await
        .unwrap();
    let _: Welcome = raw.r.recv("welcome").await.unwrap();
    raw.w
        .send_raw(Bytes::from_static(&[
            0xff, 0xff, 0xff, 0xff, 0xff, 0x07, 0x00,
        ]))
        .await
        .unwrap();
    let (why, reason) = refusal(&raw).await;
    assert_eq!(why, Refusal::ProtocolViolation);
    assert!(reason.contains("malformed message"), "{reason}");
    assert_eq!(
        c.node("garbler").await.unwrap().liveness,
        Liveness::Disconnected
    );
    assert_good_agent_unharmed(&c).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_frame_is_refused_before_it_is_buffered() {
    let c = cluster_with_good_agent().await;
    c.issue("bloater", "agent");
    let mut raw = raw_connect(&c, files(&c.tls_dir(), "bloater"))
        .await
        .unwrap();
    raw.w
        .send("hello", &hello("bloater", PROTOCOL_VERSION))
        .await
        .unwrap();
    let _: Welcome = raw.r.recv("welcome").await.unwrap();
    // A 100 KB frame, over this cluster's 64 KiB limit.
    raw.w
        .send_raw(Bytes::from(vec![0u8; 100_000]))
        .await
        .unwrap();
    let (why, reason) = refusal(&raw).await;
    assert_eq!(why, Refusal::FrameTooLarge);
    assert!(reason.contains("65536"), "{reason}");
    assert_good_agent_unharmed(&c).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_protocol_version_gets_a_readable_refusal() {
    let c = cluster_with_good_agent().await;
    c.issue("future", "agent");
    let mut raw = raw_connect(&c, files(&c.tls_dir(), "future"))
        .await
        .unwrap();
    // A future hello: same first field, a layout this build cannot decode.
    #[derive(serde::Serialize)]
    struct FutureHello {
        protocol: u32,
        shiny: Vec<u64>,
    }
    raw.w
        .send(
            "hello",
            &FutureHello {
                protocol: 99,
                shiny: vec![1, 2, 3],
            },
        )
        .await
        .unwrap();
    let (why, reason) = refusal(&raw).await;
    assert_eq!(why, Refusal::UnsupportedVersion);
    assert!(
        reason.contains("protocol 99") && reason.contains("upgrade the coordinator"),
        "{reason}"
    );
    assert_good_agent_unharmed(&c).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn operator_certificate_cannot_pose_as_an_agent() {
    let c = cluster_with_good_agent().await;
    c.issue("alice", "operator");
    // The refusal may come before the control stream could be opened: wait on the
    // connection itself.
    let (conn, _endpoint) = raw_handshake(&c, files(&c.tls_dir(), "alice"))
        .await
        .unwrap();
    let (why, reason) = refusal_on(&conn).await;
    assert_eq!(why, Refusal::NotAnAgent);
    assert!(reason.contains("role operator"), "{reason}");
    assert_good_agent_unharmed(&c).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_peers_do_not_stall_other_agents() {
    let mut c = cluster_with_good_agent().await;
    // Ten authenticated peers that open the control stream and then say nothing.
    let mut silent = vec![];
    for i in 0..10 {
        let name = format!("mute-{i}");
        c.issue(&name, "agent");
        silent.push(raw_connect(&c, files(&c.tls_dir(), &name)).await.unwrap());
    }
    // A new agent still registers promptly, and the existing one keeps beating.
    c.start_agent("late", "");
    c.wait_liveness("late", Liveness::Ready, Duration::from_secs(10))
        .await;
    assert_good_agent_unharmed(&c).await;
    drop(silent);
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_with_a_certificate_for_another_name_fails_at_start_with_the_fix() {
    let c = Cluster::new();
    c.issue("right-name", "agent");
    let cfg = c.agent_config("wrong-name", "");
    // Point the config at the other node's certificate.
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("tls/wrong-name.", "tls/right-name.");
    std::fs::write(&cfg, text).unwrap();
    let out = run(&["agent", "--config", cfg.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("is for \"right-name\"")
            && err.contains("corral certs issue --name wrong-name"),
        "{err}"
    );
}
