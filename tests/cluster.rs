//! End-to-end behaviour of a real coordinator and real agents over QUIC with mutual TLS
//! on loopback: registration, reports, liveness transitions, restarts, commands.

use corral_test_support as support;

use std::time::Duration;

use corral_proto::model::{HealthStatus, Liveness};
use support::*;

const SECS: fn(u64) -> Duration = Duration::from_secs;

#[tokio::test(flavor = "multi_thread")]
async fn agent_registers_reports_and_shows_in_cli_api_and_metrics() {
    let mut c = Cluster::new();
    c.start_coordinator();
    c.start_agent("node-a", "");
    let (n, _) = c
        .wait_node("node-a", "reported", SECS(20), |n| {
            n.liveness == Liveness::Ready && n.report.is_some()
        })
        .await;
    let r = n.report.unwrap();
    assert_eq!(r.node, "node-a");
    assert!(r.facts.cpu_cores > 0 && r.facts.memory_total_bytes > 0);
    assert!(!r.host.filesystems.is_empty());
    assert!(n.connected);

    let out = run_async(vec!["nodes".into(), "--socket".into(), c.socket()]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    assert!(table.lines().next().unwrap().starts_with("NAME"), "{table}");
    assert!(
        table.contains("node-a") && table.contains("ready"),
        "{table}"
    );

    let out = run_async(vec![
        "node".into(),
        "node-a".into(),
        "--json".into(),
        "--socket".into(),
        c.socket(),
    ])
    .await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["name"], "node-a");
    let out = run_async(vec![
        "node".into(),
        "node-a".into(),
        "--socket".into(),
        c.socket(),
    ])
    .await;
    assert!(stdout(&out).contains("Filesystems:"), "{}", stdout(&out));

    let out = run_async(vec![
        "node".into(),
        "no-such".into(),
        "--socket".into(),
        c.socket(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(4), "unknown node exits 4");
    assert!(
        stderr(&out).contains("no node named \"no-such\""),
        "{}",
        stderr(&out)
    );

    let metrics = c.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("corral_node_up{node=\"node-a\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("corral_node_filesystem_size_bytes{node=\"node-a\",mount=\"/\"}"),
        "{metrics}"
    );

    let events = c.events("node-a").await;
    assert_eq!(events[0].to, "ready");
    assert!(events[0].message.contains("new node"), "{events:?}");
    assert_eq!(c.get("/healthz").await.text().await.unwrap().trim(), "ok");
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_agent_goes_disconnected_then_down_and_returns_ready() {
    let mut c = Cluster::new();
    c.coordinator_extra = "down_after = \"4s\"".into();
    c.start_coordinator();
    c.start_agent("node-k", "");
    c.wait_liveness("node-k", Liveness::Ready, SECS(20)).await;
    // Let a few beats flow so the measurement starts from steady state.
    tokio::time::sleep(SECS(2)).await;
    c.signal_agent("node-k", libc::SIGKILL);
    let to_disconnected = c
        .wait_liveness("node-k", Liveness::Disconnected, SECS(10))
        .await;
    println!(
        "kill -9 → disconnected: {:.2}s (default beat 1s × 3)",
        to_disconnected.as_secs_f64()
    );
    let n = c.node("node-k").await.unwrap();
    assert!(!n.connected || n.liveness == Liveness::Disconnected);
    let to_down = c.wait_liveness("node-k", Liveness::Down, SECS(10)).await;
    println!(
        "disconnected → down: {:.2}s (down_after 4s)",
        to_down.as_secs_f64()
    );

    c.start_agent("node-k", "");
    c.wait_liveness("node-k", Liveness::Ready, SECS(20)).await;
    let changes: Vec<String> = c.events("node-k").await.into_iter().map(|e| e.to).collect();
    assert_eq!(changes, ["ready", "disconnected", "down", "ready"]);
    let reasons: Vec<String> = c
        .events("node-k")
        .await
        .into_iter()
        .map(|e| e.message)
        .collect();
    assert!(reasons[1].contains("no beat for"), "{reasons:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn coordinator_restart_loses_no_node_and_absent_nodes_go_down() {
    let mut c = Cluster::new();
    c.coordinator_extra = "down_after = \"3s\"".into();
    c.start_coordinator();
    c.start_agent("stays", "");
    c.start_agent("leaves", "");
    c.wait_node("stays", "reported", SECS(20), |n| n.report.is_some())
        .await;
    c.wait_node("leaves", "reported", SECS(20), |n| n.report.is_some())
        .await;
    let before = c.events("stays").await.len();

    c.stop_coordinator();
    c.signal_agent("leaves", libc::SIGKILL);
    c.start_coordinator();

    // Both are known at once, from the database.
    let leaves = c.node("leaves").await.expect("node kept across restart");
    assert_ne!(leaves.liveness, Liveness::Ready);
    assert!(leaves.report.is_some(), "last report kept");
    // The surviving agent reconnects by itself.
    c.wait_liveness("stays", Liveness::Ready, SECS(20)).await;
    // The one that does not come back is shown as down, not forgotten.
    c.wait_liveness("leaves", Liveness::Down, SECS(10)).await;
    let events = c.events("stays").await;
    assert!(
        events.len() > before,
        "events persisted and continued: {events:?}"
    );
    let ids: Vec<u64> = events.iter().map(|e| e.id).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "event ids keep increasing across restarts: {ids:?}"
    );
    let leaves = c.events("leaves").await;
    assert!(
        leaves
            .iter()
            .any(|e| e.message.contains("coordinator shutting down")),
        "{leaves:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_started_before_coordinator_connects_without_operator_action() {
    let mut c = Cluster::new();
    c.start_agent("early", "");
    let deadline = std::time::Instant::now() + SECS(15);
    while !c
        .agent_log("early")
        .contains("cannot reach the coordinator")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no clear log line: {}",
            c.agent_log("early")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        c.agent_log("early").contains("within 5s"),
        "{}",
        c.agent_log("early")
    );
    c.start_coordinator();
    c.wait_liveness("early", Liveness::Ready, SECS(20)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn coordinator_sends_commands_to_agents() {
    let mut c = Cluster::new();
    c.start_coordinator();
    c.start_agent("cmd", "");
    c.wait_liveness("cmd", Liveness::Ready, SECS(20)).await;
    let out = run_async(vec![
        "ping".into(),
        "cmd".into(),
        "--json".into(),
        "--socket".into(),
        c.socket(),
    ])
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["rtt_us"].as_u64().unwrap() > 0);

    let before = c.node("cmd").await.unwrap().last_report_ms;
    let resp = c
        .http()
        .post(c.url("/api/v1/nodes/cmd/report"))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    c.wait_node("cmd", "re-reported", SECS(5), |n| n.last_report_ms > before)
        .await;

    c.signal_agent("cmd", libc::SIGTERM);
    c.wait_liveness("cmd", Liveness::Disconnected, SECS(5))
        .await;
    let out = run_async(vec![
        "ping".into(),
        "cmd".into(),
        "--socket".into(),
        c.socket(),
    ])
    .await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not connected"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn health_follows_thresholds_and_gpu_changes_become_events() {
    let mut c = Cluster::new();
    c.start_coordinator();
    // A scripted GPU that heats past the fail threshold, then cools down.
    let gpu = |t: u32| serde_json::json!({"gpus": [{"index": 0, "uuid": "GPU-fake-0", "name": "Fake H100", "memory_used_bytes": 1, "memory_total_bytes": 80, "utilization_percent": 50, "temperature_celsius": t, "power_watts": 300.0}]});
    let mut steps = vec![gpu(60), gpu(60)];
    steps.extend(std::iter::repeat_n(gpu(95), 3));
    steps.push(gpu(60));
    c.start_fake_gpu_agent("hot", steps, "report_interval = \"30s\"", "");
    let (n, _) = c
        .wait_node("hot", "unhealthy", SECS(20), |n| {
            n.health == HealthStatus::Unhealthy
        })
        .await;
    assert!(
        n.reasons
            .iter()
            .any(|r| r.message.contains("95 °C > 90 °C")),
        "{:?}",
        n.reasons
    );
    // Reported at once on the change, not at the 30 s report interval.
    c.wait_node("hot", "healthy again", SECS(20), |n| {
        n.health == HealthStatus::Healthy
    })
    .await;
    let health: Vec<(Option<String>, String)> = c
        .events("hot")
        .await
        .into_iter()
        .filter(|e| e.kind == corral_proto::api::EventKind::Health)
        .map(|e| (e.from, e.to))
        .collect();
    assert_eq!(
        health,
        [
            (Some("healthy".into()), "unhealthy".into()),
            (Some("unhealthy".into()), "healthy".into())
        ]
    );
    let metrics = c.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics
            .contains("corral_gpu_temperature_celsius{node=\"hot\",gpu=\"0\",uuid=\"GPU-fake-0\"}"),
        "{metrics}"
    );
}
