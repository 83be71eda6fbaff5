//! Certificate revocation end to end: `corral certs revoke` against a real coordinator and
//! real agents over real QUIC. A revoked certificate is refused at the handshake with a
//! reason the agent can print; a revocation applies without restarting the coordinator
//! and ends the revoked node's open connection; a broken CRL file changes nothing.

use corral_test_support as support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use corral_proto::model::Liveness;
use corral_proto::wire::{Hello, Refusal, PROTOCOL_VERSION};
use corral_transport::frame::{self, FrameReader, FrameWriter};
use corral_transport::pki::{self, TlsFiles};
use support::*;

fn files(tls: &Path, name: &str) -> TlsFiles {
    TlsFiles {
        ca: tls.join("ca.pem"),
        cert: tls.join(format!("{name}.pem")),
        key: tls.join(format!("{name}.key")),
        crl: None,
    }
}

fn serial(c: &Cluster, name: &str) -> String {
    pki::serial_of_file(&c.tls_dir().join(format!("{name}.pem")))
        .unwrap()
        .to_string()
}

/// `corral certs revoke --ca tls NAME`: writes tls/crl.pem, the file the coordinator
/// reads by default (beside its tls.ca).
fn revoke(c: &Cluster, name: &str) -> std::process::Output {
    run(&[
        "certs",
        "revoke",
        "--ca",
        c.tls_dir().to_str().unwrap(),
        name,
    ])
}

fn revoked_ok(c: &Cluster, name: &str) {
    let out = revoke(c, name);
    assert!(out.status.success(), "revoke {name}: {}", stderr(&out));
}

/// A hand-driven agent connection: handshake, control stream, hello, welcome.
struct Raw {
    conn: quinn::Connection,
    _endpoint: quinn::Endpoint,
    _streams: (FrameWriter, FrameReader),
}

async fn handshake(
    c: &Cluster,
    name: &str,
) -> (
    Result<quinn::Connection, quinn::ConnectionError>,
    quinn::Endpoint,
) {
    let material = files(&c.tls_dir(), name).load().unwrap();
    let cfg = pki::quic_client_config(&material, frame::transport_config()).unwrap();
    let endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], c.quic_port));
    let conn = endpoint.connect_with(cfg, addr, "localhost").unwrap().await;
    (conn, endpoint)
}

/// How the coordinator ends a connection attempt with `name`'s certificate (the client
/// side of a TLS 1.3 handshake completes before the server has judged the client's
/// certificate, so the refusal may arrive just after it).
async fn refusal_of_attempt(c: &Cluster, name: &str) -> quinn::ConnectionError {
    let (conn, _endpoint) = handshake(c, name).await;
    let conn = match conn {
        Ok(conn) => conn,
        Err(e) => return e,
    };
    let _ = conn.open_bi().await;
    tokio::time::timeout(Duration::from_secs(10), conn.closed())
        .await
        .expect("the coordinator kept a connection with this certificate open")
}

async fn raw_agent(c: &Cluster, name: &str) -> Raw {
    let (conn, endpoint) = handshake(c, name).await;
    let conn = conn.unwrap();
    let (s, r) = conn.open_bi().await.unwrap();
    let mut w = FrameWriter::new(s, 1 << 20);
    let mut r = FrameReader::new(r, 1 << 20);
    let hello = Hello {
        protocol: PROTOCOL_VERSION,
        node: name.into(),
        agent_version: "test".into(),
        beat_interval_ms: 1000,
        max_frame_bytes: 1 << 20,
    };
    w.send("hello", &hello).await.unwrap();
    let _: corral_proto::wire::Welcome = r.recv("welcome").await.unwrap();
    Raw {
        conn,
        _endpoint: endpoint,
        _streams: (w, r),
    }
}

async fn wait_log(
    what: &str,
    within: Duration,
    log: impl Fn() -> String,
    want: impl Fn(&str) -> bool,
) -> String {
    let start = Instant::now();
    loop {
        let text = log();
        if want(&text) {
            return text;
        }
        assert!(
            start.elapsed() < within,
            "{what} not within {within:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn ready(c: &Cluster, name: &str) {
    c.wait_liveness(name, Liveness::Ready, Duration::from_secs(20))
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_certificate_is_refused_at_the_handshake_and_the_agent_says_why() {
    let mut c = Cluster::new();
    c.issue("gpu-01", "agent");
    c.issue("gpu-02", "agent");
    revoked_ok(&c, "gpu-01");
    c.start_coordinator();
    c.start_agent("gpu-01", "");
    c.start_agent("gpu-02", "");
    ready(&c, "gpu-02").await;

    let serial = serial(&c, "gpu-01");
    let log = wait_log(
        "the agent's refusal",
        Duration::from_secs(20),
        || c.agent_log("gpu-01"),
        |l| l.contains("it has been revoked"),
    )
    .await;
    assert!(
        log.contains(&format!("revoked (serial {serial})")) && log.contains("corral certs issue"),
        "{log}"
    );
    assert!(log.contains("the coordinator refused this agent"), "{log}");

    let err = refusal_of_attempt(&c, "gpu-01").await;
    assert!(
        pki::refused_as_revoked(&err),
        "not a revocation refusal: {err}"
    );
    assert!(
        c.node("gpu-01").await.is_none(),
        "a revoked node was registered"
    );
    let coordinator = c.coordinator_log();
    assert!(
        coordinator.contains("refused a revoked certificate at the handshake")
            && coordinator.contains(&serial),
        "{coordinator}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revocation_applies_without_a_restart_and_ends_the_revoked_nodes_open_connection() {
    let mut c = Cluster::new();
    c.start_coordinator();
    c.start_agent("gpu-01", "");
    c.start_agent("gpu-02", "");
    c.issue("gpu-03", "agent");
    ready(&c, "gpu-01").await;
    ready(&c, "gpu-02").await;
    let raw = raw_agent(&c, "gpu-03").await;

    revoked_ok(&c, "gpu-03");
    let closed = tokio::time::timeout(Duration::from_secs(10), raw.conn.closed())
        .await
        .expect("the open connection of a revoked certificate was not closed");
    let quinn::ConnectionError::ApplicationClosed(close) = closed else {
        panic!("expected an application close, got {closed}");
    };
    assert_eq!(frame::refusal_of(close.error_code), Some(Refusal::Revoked));
    let reason = String::from_utf8_lossy(&close.reason).into_owned();
    assert!(
        reason.contains(&serial(&c, "gpu-03")) && reason.contains("revoked"),
        "{reason}"
    );

    // The real agent: disconnected, then refused at every reconnect, saying why.
    revoked_ok(&c, "gpu-01");
    c.wait_liveness("gpu-01", Liveness::Disconnected, Duration::from_secs(15))
        .await;
    wait_log(
        "the agent's refusal",
        Duration::from_secs(15),
        || c.agent_log("gpu-01"),
        |l| l.contains("it has been revoked"),
    )
    .await;
    assert!(pki::refused_as_revoked(
        &refusal_of_attempt(&c, "gpu-01").await
    ));
    // Its reconnects never get as far as the registry (no TLS session resumption lets an
    // old ticket past the revocation).
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let n = c.node("gpu-01").await.unwrap();
        assert_ne!(n.liveness, Liveness::Ready, "a revoked node came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Only the revoked nodes: gpu-02 keeps beating on the same coordinator.
    let before = c.node("gpu-02").await.unwrap().last_beat_ms;
    c.wait_node("gpu-02", "still beating", Duration::from_secs(5), |n| {
        n.liveness == Liveness::Ready && n.last_beat_ms > before
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn revoking_an_unknown_name_is_a_clear_error_that_lists_what_exists() {
    let c = Cluster::new();
    c.issue("gpu-01", "agent");
    let out = revoke(&c, "gpu-99");
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("\"gpu-99\""), "{err}");
    assert!(
        err.contains("gpu-01 (agent: 1 valid)")
            && err.contains("coordinator (coordinator: 1 valid)"),
        "{err}"
    );
    assert!(
        !c.tls_dir().join("crl.pem").exists(),
        "a failed revoke wrote a CRL"
    );

    // Revoking twice is not an error, and says so.
    revoked_ok(&c, "gpu-01");
    let again = revoke(&c, "gpu-01");
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(
        stdout(&again).contains("already revoked"),
        "{}",
        stdout(&again)
    );
    let list = run(&["certs", "list", "--ca", c.tls_dir().to_str().unwrap()]);
    let listing = stdout(&list);
    assert!(
        listing
            .lines()
            .any(|l| l.contains("gpu-01") && l.contains("revoked")),
        "{listing}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_crl_file_keeps_the_revocations_in_force() {
    let mut c = Cluster::new();
    c.issue("gpu-01", "agent");
    revoked_ok(&c, "gpu-01");
    c.start_coordinator();
    c.start_agent("gpu-02", "");
    ready(&c, "gpu-02").await;
    let crl = c.tls_dir().join("crl.pem");

    std::fs::write(
        &crl,
        "-----BEGIN X509 CRL-----\nbm90IGEgQ1JM\n-----END X509 CRL-----\n",
    )
    .unwrap();
    let log = wait_log(
        "the CRL error",
        Duration::from_secs(10),
        || c.coordinator_log(),
        |l| l.contains("certificate revocation list not applied"),
    )
    .await;
    assert!(log.contains(&crl.display().to_string()), "{log}");
    assert!(pki::refused_as_revoked(
        &refusal_of_attempt(&c, "gpu-01").await
    ));

    // Removing it does not un-revoke either.
    std::fs::remove_file(&crl).unwrap();
    wait_log(
        "the removed CRL",
        Duration::from_secs(10),
        || c.coordinator_log(),
        |l| l.contains("was removed"),
    )
    .await;
    assert!(pki::refused_as_revoked(
        &refusal_of_attempt(&c, "gpu-01").await
    ));

    // A good CRL again (a newer number) is taken, and gpu-02 was never disturbed.
    let out = run(&["certs", "crl", "--ca", c.tls_dir().to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_log(
        "the new CRL",
        Duration::from_secs(10),
        || c.coordinator_log(),
        |l| l.matches("certificate revocation list in force").count() >= 2,
    )
    .await;
    assert!(pki::refused_as_revoked(
        &refusal_of_attempt(&c, "gpu-01").await
    ));
    assert_eq!(c.node("gpu-02").await.unwrap().liveness, Liveness::Ready);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_coordinator_does_not_start_on_a_broken_crl() {
    let c = Cluster::new();
    let crl = c.tls_dir().join("crl.pem");
    std::fs::write(&crl, "not a CRL\n").unwrap();
    let cfg = c.write_coordinator_config();
    let mut child = corral()
        .args(["coordinator", "--config", cfg.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let status =
        wait_timeout(&mut child, Duration::from_secs(20)).expect("coordinator kept running");
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(
        err.contains(&crl.display().to_string()) && err.contains("not usable"),
        "{err}"
    );
}

#[test]
fn only_a_coordinator_config_may_name_a_crl() {
    let c = Cluster::new();
    c.issue("gpu-01", "agent");
    let cfg = c.agent_config("gpu-01", "");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let with_crl = text.replace(
        "key = \"tls/gpu-01.key\"\n",
        "key = \"tls/gpu-01.key\"\ncrl = \"tls/crl.pem\"\n",
    );
    assert_ne!(text, with_crl, "the agent config has no [tls] key line");
    std::fs::write(&cfg, with_crl).unwrap();
    let out = run(&["config", "check", cfg.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("tls.crl") && err.contains("only the coordinator"),
        "{err}"
    );
}
