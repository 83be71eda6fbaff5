//! GPU health end to end: a real agent replaying a scripted fake GPU source (XIDs from
//! NVML and from the kernel log, growing counters, a GPU that disappears, an agent
//! restart) against a real coordinator, and the host checks of `corral agent --once`.
//! Kernel-log lines come from `tests/fixtures/kmsg/`, in the formats NVIDIA documents,
//! either through `gpu.kernel_log` pointing at a fixture file or as `kmsg` lines of a
//! script step.

use corral_test_support as support;

use std::time::Duration;

use corral_proto::api::{EventKind, NodeView};
use corral_proto::model::{ActionSource, DeviceStatus, GpuAction, GpuSample, HealthStatus};
use support::*;

const SECS: fn(u64) -> Duration = Duration::from_secs;

fn gpu(index: u32, xids: &[u64], replays: u64) -> serde_json::Value {
    serde_json::json!({
        "index": index, "uuid": format!("GPU-fake-{index}"), "name": "Fake H100",
        "pci_bus_id": format!("00000000:{:02X}:00.0", 0x18 + index * 0x10),
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
        "XID 79: GPU has fallen off the bus; reboot the node to clear"
    );
    assert!(g0.health.reasons[0].needs_reboot);
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

    let out = run_async(vec!["nodes".into(), "--socket".into(), c.socket()]).await;
    let table = stdout(&out);
    assert!(
        table.contains("GPU HEALTH") && table.contains("2 fail"),
        "{table}"
    );
    let out = run_async(vec![
        "node".into(),
        "gpu-node".into(),
        "--socket".into(),
        c.socket(),
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

/// Counts change no health condition, so they travel with the periodic report.
const FAST_REPORTS: &str = "sample_interval = \"200ms\"\nreport_interval = \"1s\"";

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/kmsg")
        .join(name)
}

fn fixture_lines(name: &str) -> Vec<String> {
    std::fs::read_to_string(fixture(name))
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

fn calm(n: u32) -> serde_json::Value {
    serde_json::json!({ "gpus": (0..n).map(|i| gpu(i, &[], 0)).collect::<Vec<_>>() })
}

/// The GPUs of the node's latest report.
fn gpus(n: &NodeView) -> Vec<GpuSample> {
    n.report
        .as_ref()
        .map(|r| r.gpus.clone())
        .unwrap_or_default()
}

fn counts(g: &GpuSample) -> Vec<(u64, u64)> {
    g.health
        .xid_counts
        .iter()
        .map(|c| (c.xid, c.count))
        .collect()
}

/// An agent on `n` calm fake GPUs whose kernel log is the fixture `name`.
async fn agent_reading_fixture(c: &mut Cluster, node: &str, n: u32, name: &str) {
    c.start_coordinator();
    c.start_fake_gpu_agent(
        node,
        vec![calm(n)],
        FAST_REPORTS,
        &format!("kernel_log = \"{}\"", fixture(name).display()),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn xid_79_from_the_kernel_log_needs_a_reboot_while_nvml_still_lists_the_gpu() {
    let mut c = Cluster::new();
    agent_reading_fixture(&mut c, "kmsg-79", 2, "xid-79-fallen-off-the-bus.kmsg").await;
    let (n, _) = c
        .wait_node("kmsg-79", "with GPU 0 failed", SECS(30), |n| {
            gpus(n)
                .first()
                .is_some_and(|g| g.health.status == DeviceStatus::Fail)
        })
        .await;
    let g = gpus(&n);
    assert_eq!(g.len(), 2, "the fake source still lists both GPUs");
    assert_eq!(g[0].lost, None);
    let r = &g[0].health.reasons[0];
    assert_eq!(r.code, "xid");
    assert_eq!(
        r.message,
        "XID 79: GPU has fallen off the bus; reboot the node to clear"
    );
    assert!(r.needs_reboot && !r.needs_reset, "{r:?}");
    assert_eq!(
        (g[0].health.action, g[0].health.action_source),
        (GpuAction::Reboot, Some(ActionSource::Catalog))
    );
    assert_eq!(counts(&g[0]), [(79, 1)]);
    assert_eq!(
        g[1].health.status,
        DeviceStatus::Ok,
        "only the GPU at 0000:18:00"
    );
    assert_eq!(n.health, HealthStatus::Unhealthy);
    assert!(
        n.reasons
            .iter()
            .any(|r| r.check == "gpu_xid:0" && r.message.ends_with("reboot the node to clear")),
        "{:?}",
        n.reasons
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn xids_62_and_119_from_the_kernel_log_need_a_gpu_reset() {
    let mut c = Cluster::new();
    agent_reading_fixture(&mut c, "kmsg-reset", 3, "xid-62-119-reset.txt").await;
    let (n, _) = c
        .wait_node("kmsg-reset", "with GPUs 1 and 2 failed", SECS(30), |n| {
            let g = gpus(n);
            g.len() == 3 && g[1..].iter().all(|g| g.health.status == DeviceStatus::Fail)
        })
        .await;
    let g = gpus(&n);
    for (gpu, xid) in [(&g[1], 62), (&g[2], 119)] {
        let r = &gpu.health.reasons[0];
        assert!(r.message.starts_with(&format!("XID {xid}: ")), "{r:?}");
        assert!(r.message.ends_with("reset the GPU to clear"), "{r:?}");
        assert!(r.needs_reset && !r.needs_reboot, "{r:?}");
        assert_eq!(gpu.health.action, GpuAction::Reset);
    }
    assert_eq!(
        counts(&g[2]),
        [(119, 1), (154, 1)],
        "the XID 154 beside it only counts"
    );
    assert_eq!(g[0].health.status, DeviceStatus::Ok);
}

#[tokio::test(flavor = "multi_thread")]
async fn xid_13_from_the_kernel_log_changes_no_health() {
    let mut c = Cluster::new();
    agent_reading_fixture(&mut c, "kmsg-13", 1, "xid-13-application.txt").await;
    let (n, _) = c
        .wait_node("kmsg-13", "with the XID counted", SECS(30), |n| {
            gpus(n).first().is_some_and(|g| g.health.xid_total == 1)
        })
        .await;
    let g = &gpus(&n)[0];
    assert_eq!(g.health.status, DeviceStatus::Ok);
    assert!(g.health.reasons.is_empty(), "{:?}", g.health.reasons);
    assert_eq!(counts(g), [(13, 1)]);
    assert_eq!(g.health.xid_last, Some(13));
}

#[tokio::test(flavor = "multi_thread")]
async fn three_kernel_log_xids_in_one_burst_are_all_counted() {
    let mut c = Cluster::new();
    c.start_coordinator();
    let mut steps = vec![calm(1); 5];
    // The three lines arrive in one sample; NVML, as it does, reports only the last.
    steps.push(serde_json::json!({
        "gpus": [gpu(0, &[13], 0)],
        "kmsg": fixture_lines("burst-13-31-13.kmsg"),
    }));
    steps.push(calm(1));
    c.start_fake_gpu_agent("burst", steps, FAST_REPORTS, "");
    let (n, _) = c
        .wait_node("burst", "with the burst counted", SECS(30), |n| {
            gpus(n).first().is_some_and(|g| g.health.xid_total >= 3)
        })
        .await;
    let g = &gpus(&n)[0];
    assert_eq!(g.health.xid_total, 3);
    assert_eq!(counts(g), [(13, 2), (31, 1)]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_xid_from_nvml_and_the_kernel_log_is_counted_once() {
    let mut c = Cluster::new();
    c.start_coordinator();
    let mut steps = vec![calm(1); 5];
    steps.push(serde_json::json!({
        "gpus": [gpu(0, &[43], 0)],
        "kmsg": ["[ 4242.000001] NVRM: Xid (PCI:0000:18:00): 43, pid=1717, name=python3, Ch 00000010"],
    }));
    steps.push(calm(1));
    c.start_fake_gpu_agent("dedup", steps, FAST_REPORTS, "");
    c.wait_node("dedup", "with the XID counted", SECS(30), |n| {
        gpus(n).first().is_some_and(|g| g.health.xid_total >= 1)
    })
    .await;
    // A second count would land within a sample or two; give it a few.
    tokio::time::sleep(SECS(3)).await;
    let n = c.node("dedup").await.unwrap();
    let g = &gpus(&n)[0];
    assert_eq!(g.health.xid_total, 1, "{:?}", g.health);
    assert_eq!(counts(g), [(43, 1)]);
    assert_eq!(g.health.status, DeviceStatus::Ok);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_critical_xid_survives_an_agent_restart_until_the_gpu_is_reset() {
    let mut c = Cluster::new();
    c.start_coordinator();
    let with_ecc = |ecc: u64| {
        let mut g = gpu(1, &[], 0);
        g["ecc_corrected_volatile"] = ecc.into();
        serde_json::json!({ "gpus": [gpu(0, &[], 0), g] })
    };
    let line_62 = fixture_lines("xid-62-119-reset.txt")[0].clone();
    assert!(
        line_62.contains("(PCI:0000:28:00): 62,"),
        "GPU 1's address: {line_62}"
    );
    let mut first = vec![with_ecc(3); 5];
    let mut hit = with_ecc(3);
    hit["kmsg"] = serde_json::json!([line_62]);
    first.push(hit);
    first.push(with_ecc(3));
    let agent = "sample_interval = \"200ms\"\nstate_dir = \"agent-state\"";
    c.start_fake_gpu_agent("restart", first, agent, "");
    let failing = |n: &NodeView| {
        gpus(n)
            .get(1)
            .is_some_and(|g| g.health.status == DeviceStatus::Fail)
    };
    c.wait_node("restart", "with GPU 1 failed", SECS(30), failing)
        .await;
    assert!(c.path("agent-state/gpu-health.json").exists());

    // Killed, not stopped: nothing is written on the way out.
    c.signal_agent("restart", libc::SIGKILL);
    let restarted_at = corral_proto::model::unix_ms();
    // After the restart the GPU looks healthy for 8 s (no XID, same ECC count), then
    // is reset: its volatile ECC counter goes back to 0.
    let mut second = vec![with_ecc(3); 40];
    second.push(with_ecc(0));
    c.start_fake_gpu_agent("restart", second, agent, "");
    let (n, _) = c
        .wait_node(
            "restart",
            "reporting again, GPU 1 still failed",
            SECS(30),
            |n| {
                n.report
                    .as_ref()
                    .is_some_and(|r| r.host.taken_at_ms > restarted_at)
                    && failing(n)
            },
        )
        .await;
    let g = &gpus(&n)[1];
    let r = &g.health.reasons[0];
    assert_eq!(r.code, "xid");
    assert!(r.needs_reset && r.message.starts_with("XID 62: "), "{r:?}");
    assert_eq!(counts(g), [(62, 1)], "counted once, before the restart");
    c.wait_node("restart", "with GPU 1 reset and healthy", SECS(30), |n| {
        n.report
            .as_ref()
            .is_some_and(|r| r.host.taken_at_ms > restarted_at)
            && gpus(n)
                .get(1)
                .is_some_and(|g| g.health.status == DeviceStatus::Ok)
    })
    .await;
}

/// The value of an unlabelled counter in `/metrics`.
async fn counter(c: &Cluster, name: &str) -> f64 {
    let text = c.get("/metrics").await.text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// An 8-GPU node whose GPUs run warmer and draw more at every step, as busy GPUs do.
fn busy_gpus(steps: u32) -> Vec<serde_json::Value> {
    (0..steps)
        .map(|s| {
            let gpus: Vec<_> = (0..8)
                .map(|i| {
                    let mut g = gpu(i, &[], 0);
                    g["serial"] = format!("1650123456{i:03}").into();
                    g["vbios_version"] = "96.00.89.00.01".into();
                    g["driver_version"] = "550.54.15".into();
                    g["temperature_celsius"] = (40 + (s + i) % 40).into();
                    g["utilization_percent"] = ((s * 7 + i) % 101).into();
                    g["power_watts"] = (300.0 + f64::from((s * 13 + i) % 400) * 0.731).into();
                    g
                })
                .collect();
            serde_json::json!({ "gpus": gpus })
        })
        .collect()
}

fn complete(n: &NodeView, since_ms: u64) -> bool {
    n.report.as_ref().is_some_and(|r| {
        r.host.taken_at_ms > since_ms
            && r.gpus.len() == 8
            && r.gpus.iter().enumerate().all(|(i, g)| {
                g.uuid == format!("GPU-fake-{i}")
                    && g.serial.as_deref() == Some(&format!("1650123456{i:03}"))
                    && g.pci_bus_id.is_some()
                    && g.temperature_celsius.is_some()
            })
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn eight_gpu_reports_travel_as_deltas_and_a_restart_on_either_side_still_gets_the_whole_report(
) {
    let mut c = Cluster::new();
    c.start_coordinator();
    let agent =
        "sample_interval = \"100ms\"\nbeat_interval = \"200ms\"\nreport_interval = \"200ms\"";
    c.start_fake_gpu_agent("deltas", busy_gpus(2000), agent, "");
    let (n, _) = c
        .wait_node("deltas", "with 8 GPUs", SECS(30), |n| complete(n, 0))
        .await;
    let full = corral_proto::wire::encode(
        "report",
        &corral_proto::wire::AgentMsg::Report(Box::new(n.report.unwrap())),
    )
    .unwrap()
    .len() as f64;

    // What reports cost on the wire once the session is going.
    let (r0, b0, t0) = (
        counter(&c, "corral_coordinator_reports_total").await,
        counter(&c, "corral_coordinator_received_bytes_total").await,
        counter(&c, "corral_coordinator_beats_total").await,
    );
    tokio::time::sleep(SECS(4)).await;
    let (r1, b1, t1) = (
        counter(&c, "corral_coordinator_reports_total").await,
        counter(&c, "corral_coordinator_received_bytes_total").await,
        counter(&c, "corral_coordinator_beats_total").await,
    );
    let reports = r1 - r0;
    assert!(reports >= 5.0, "only {reports} reports in 4 s");
    // A beat is a 10-byte message plus its 4-byte length.
    let per_report = (b1 - b0 - (t1 - t0) * 14.0) / reports;
    assert!(
        per_report < full / 3.0,
        "reports cost {per_report:.0} bytes each against {full} for a full one"
    );

    // The coordinator crashes and comes back: the agent's next session starts with a
    // full report, so the new coordinator has every GPU, fresh.
    c.kill_coordinator();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let restarted = corral_proto::model::unix_ms();
    c.start_coordinator();
    c.wait_node(
        "deltas",
        "complete after a coordinator restart",
        SECS(30),
        |n| complete(n, restarted),
    )
    .await;

    // The agent crashes and comes back: the coordinator's new connection starts over.
    c.signal_agent("deltas", libc::SIGKILL);
    let restarted = corral_proto::model::unix_ms();
    c.start_fake_gpu_agent("deltas", busy_gpus(2000), agent, "");
    c.wait_node("deltas", "complete after an agent restart", SECS(30), |n| {
        complete(n, restarted)
    })
    .await;
    // Deltas keep applying on the new session.
    let before = counter(&c, "corral_coordinator_reports_total").await;
    tokio::time::sleep(SECS(2)).await;
    assert!(counter(&c, "corral_coordinator_reports_total").await >= before + 3.0);
    let log = c.coordinator_log();
    assert!(!log.contains("report delta refused"), "{log}");
    assert!(!c.agent_log("deltas").contains("report delta failed"));
}
