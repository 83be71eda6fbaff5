//! GPU health end to end: a real agent replaying a scripted fake GPU source (XIDs,
//! growing counters, a GPU that disappears) against a real coordinator, and the host
//! checks of `corral agent --once`.

#[path = "support/mod.rs"]
mod support;

use std::time::Duration;

use corral_proto::api::EventKind;
use corral_proto::model::{DeviceStatus, HealthStatus};
use support::*;

const SECS: fn(u64) -> Duration = Duration::from_secs;

fn gpu(index: u32, xids: &[u64], replays: u64) -> serde_json::Value {
    serde_json::json!({
        "index": index, "uuid": format!("GPU-fake-{index}"), "name": "Fake H100",
        "temperature_celsius": 50, "pcie_link_width": 16, "pcie_link_width_max": 16,
        "pcie_replay_count": replays, "ecc_corrected_volatile": 0,
        "ecc_uncorrected_volatile": 0, "xids": xids
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn xids_growing_counters_and_a_vanishing_gpu_drive_device_health() {
    let mut c = Cluster::new();
    c.start_coordinator();
    let step = |gpus: Vec<serde_json::Value>| serde_json::json!({ "gpus": gpus });
    // 200 ms per step: 5 s calm (time to connect), an ignored and a critical XID on GPU 0
    // while GPU 1's PCIe replays grow once, 3 s without growth (quiet period 1 s), then
    // GPU 1 disappears for good.
    let mut steps = vec![step(vec![gpu(0, &[], 0), gpu(1, &[], 0)]); 25];
    steps.push(step(vec![gpu(0, &[13], 0), gpu(1, &[], 0)]));
    steps.push(step(vec![gpu(0, &[79], 0), gpu(1, &[], 5)]));
    steps.extend(vec![step(vec![gpu(0, &[], 0), gpu(1, &[], 5)]); 15]);
    steps.push(step(vec![gpu(0, &[], 0)]));
    c.start_fake_gpu_agent(
        "gpu-node",
        steps,
        "sample_interval = \"200ms\"\nreport_interval = \"30s\"",
        "quiet_period = \"1s\"",
    );
    let (n, _) = c
        .wait_node("gpu-node", "with GPU 1 gone", SECS(30), |n| {
            n.report
                .as_ref()
                .is_some_and(|r| r.gpus.len() == 2 && r.gpus[1].lost.is_some())
        })
        .await;
    assert_eq!(n.health, HealthStatus::Unhealthy);
    let r = n.report.unwrap();
    let g0 = &r.gpus[0];
    assert_eq!(g0.health.status, DeviceStatus::Fail);
    assert_eq!(
        g0.health.reasons[0].message,
        "XID 79: GPU has fallen off the bus; reset the GPU to clear"
    );
    assert_eq!((g0.health.xid_total, g0.health.xid_last), (2, Some(79)));
    let g1 = &r.gpus[1];
    assert_eq!(g1.uuid, "GPU-fake-1");
    assert_eq!(g1.health.reasons[0].code, "disappeared");
    assert!(n
        .reasons
        .iter()
        .any(|r| r.check == "gpu_xid:0" && r.message.starts_with("GPU 0 (GPU-fake-0) XID 79")));

    // Every device transition became one coordinator event, in order.
    let gpu_events: Vec<(String, String)> = c
        .events("gpu-node")
        .await
        .into_iter()
        .filter(|e| e.kind == EventKind::Gpu)
        .map(|e| {
            (
                e.message.split(':').next().unwrap_or_default().to_string(),
                e.to,
            )
        })
        .collect();
    let of = |gpu: &str| -> Vec<&str> {
        gpu_events
            .iter()
            .filter(|(g, _)| g.starts_with(gpu))
            .map(|(_, to)| to.as_str())
            .collect()
    };
    assert_eq!(of("GPU 0 "), ["fail"], "{gpu_events:?}");
    assert_eq!(of("GPU 1 "), ["warn", "ok", "fail"], "{gpu_events:?}");

    let metrics = c.get("/metrics").await.text().await.unwrap();
    for line in [
        "corral_gpu_health{node=\"gpu-node\",gpu=\"0\",uuid=\"GPU-fake-0\",status=\"fail\"} 1",
        "corral_gpu_last_xid{node=\"gpu-node\",gpu=\"0\",uuid=\"GPU-fake-0\"} 79",
        "corral_gpu_xid_errors_total{node=\"gpu-node\",gpu=\"0\",uuid=\"GPU-fake-0\"} 2",
        "corral_gpu_pcie_link_width_max{node=\"gpu-node\",gpu=\"0\",uuid=\"GPU-fake-0\"} 16",
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
    // Unsupported readings have no series at all.
    assert!(
        !metrics.contains("corral_gpu_fan_speed_percent{"),
        "{metrics}"
    );

    let out = run_async(vec!["nodes".into(), "--api".into(), c.api()]).await;
    let table = stdout(&out);
    assert!(
        table.contains("GPU HEALTH") && table.contains("2 fail"),
        "{table}"
    );
    let out = run_async(vec![
        "node".into(),
        "gpu-node".into(),
        "--api".into(),
        c.api(),
    ])
    .await;
    let detail = stdout(&out);
    assert!(
        detail.contains("disappeared: GPU 1 is no longer enumerated by the driver"),
        "{detail}"
    );
}

#[test]
fn agent_once_runs_custom_checks_and_required_mounts() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["ca.pem", "n.pem", "n.key"] {
        std::fs::write(dir.path().join(f), "x").unwrap();
    }
    let check = dir.path().join("check-ib.sh");
    corral_base::testing::write_script(&check, "echo 'ib0: port state DOWN'\nexit 1");
    let hung = dir.path().join("hung.sh");
    corral_base::testing::write_script(&hung, "sleep 60");
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        "[agent]\nname = \"n1\"\ncoordinator = \"127.0.0.1:7440\"\n\
         [tls]\nca = \"ca.pem\"\ncert = \"n.pem\"\nkey = \"n.key\"\n\
         [health]\nrequired_mounts = [\"/\", \"/corral-not-mounted\"]\n\
         [[health.checks]]\nname = \"ib\"\ncommand = [\"./check-ib.sh\"]\n\
         [[health.checks]]\nname = \"hung\"\ncommand = [\"./hung.sh\"]\ntimeout = \"300ms\"\nseverity = \"warn\"\n\
         [gpu]\nbackend = \"none\"\n",
    )
    .unwrap();
    let started = std::time::Instant::now();
    let out = run(&["agent", "--once", "--config", cfg.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        started.elapsed() < SECS(30),
        "a hung check must not hang --once"
    );
    let report: corral_proto::model::NodeReport = serde_json::from_slice(&out.stdout).unwrap();
    let reasons: Vec<(&str, HealthStatus, &str)> = report
        .health
        .reasons
        .iter()
        .filter(|r| r.check.starts_with("check:") || r.check.starts_with("mount:"))
        .map(|r| (r.check.as_str(), r.status, r.message.as_str()))
        .collect();
    assert_eq!(
        reasons,
        [
            (
                "check:ib",
                HealthStatus::Unhealthy,
                "ib: ib0: port state DOWN"
            ),
            (
                "mount:/corral-not-mounted",
                HealthStatus::Unhealthy,
                "required mount /corral-not-mounted is not mounted"
            ),
            (
                "check:hung",
                HealthStatus::Degraded,
                "hung unknown: timed out after 300ms"
            ),
        ]
    );
}
