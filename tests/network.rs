//! Agents and the coordinator through packet loss, delay and partitions: real QUIC with
//! real certificates on loopback; the faults come from nftables rules (loss, partitions)
//! and a UDP relay in the harness (delay and jitter), since this kernel has no netem
//! ([`support::netfault`]). They need root and nftables: under CI=true (root) nftables is
//! installed with apt and every test runs; elsewhere a test without them prints SKIPPED.
//!
//! Each test prints what it measured (`figure:` lines); BENCHMARKS.md ("Network faults")
//! records them.

use corral_test_support as support;

use std::time::{Duration, Instant};

use corral_proto::model::Liveness;
use serde_json::Value;
use support::netfault::{nft_ready, Nft, Relay};
use support::slurm::{built_plugins_dir, Slurm};
use support::*;

fn faults_possible() -> bool {
    match nft_ready() {
        Ok(()) => true,
        Err(why) => skip::<()>(&why).is_some(),
    }
}

fn now_ms() -> u64 {
    corral_proto::model::unix_ms()
}

/// Liveness events of `node` at or after `since_ms`.
async fn liveness_changes(c: &Cluster, node: &str, since_ms: u64) -> Vec<String> {
    c.events(node)
        .await
        .into_iter()
        .filter(|e| e.kind == corral_proto::api::EventKind::Liveness && e.at_ms >= since_ms)
        .map(|e| format!("{} -> {}", e.from.unwrap_or_default(), e.to))
        .collect()
}

/// Watches `nodes` for `span`: every node must stay `ready`; returns, per node, the
/// longest time between two beats the coordinator recorded.
async fn watch_ready(c: &Cluster, nodes: &[&str], span: Duration) -> Vec<Duration> {
    let start = Instant::now();
    let mut last: Vec<(u64, Instant)> = vec![(0, Instant::now()); nodes.len()];
    let mut longest = vec![Duration::ZERO; nodes.len()];
    while start.elapsed() < span {
        for (i, name) in nodes.iter().enumerate() {
            let n = c.node(name).await.expect("node known");
            assert_eq!(
                n.liveness,
                Liveness::Ready,
                "{name} flapped after {:?}\n--- agent log ---\n{}",
                start.elapsed(),
                c.agent_log(name)
            );
            let beat = n.last_beat_ms.unwrap_or(0);
            if beat != last[i].0 {
                if last[i].0 != 0 {
                    longest[i] = longest[i].max(last[i].1.elapsed());
                }
                last[i] = (beat, Instant::now());
            }
            // Beats keep arriving: none is ever missing for three intervals.
            assert!(
                last[i].1.elapsed() < Duration::from_secs(3),
                "{name}: no beat for {:?}",
                last[i].1.elapsed()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    longest
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_percent_loss_both_ways_for_two_minutes_flaps_no_node() {
    if !faults_possible() {
        return;
    }
    let mut c = Cluster::new();
    c.start_coordinator();
    for n in ["loss-1", "loss-2"] {
        c.start_agent(n, "");
    }
    for n in ["loss-1", "loss-2"] {
        c.wait_liveness(n, Liveness::Ready, Duration::from_secs(30))
            .await;
    }
    let nft = Nft::new(c.quic_port);
    nft.drop_percent(c.quic_port, 20);
    let since = now_ms();
    let gaps = watch_ready(&c, &["loss-1", "loss-2"], Duration::from_secs(120)).await;
    for n in ["loss-1", "loss-2"] {
        assert_eq!(liveness_changes(&c, n, since).await, Vec::<String>::new());
    }
    // Still under loss, an agent that dies is noticed as fast as without loss: three
    // beats after its last one.
    c.signal_agent("loss-2", libc::SIGKILL);
    let to_disconnected = c
        .wait_liveness("loss-2", Liveness::Disconnected, Duration::from_secs(10))
        .await;
    assert!(
        to_disconnected < Duration::from_millis(4500),
        "disconnected {to_disconnected:?} after the kill"
    );
    nft.heal();
    assert_eq!(c.node("loss-1").await.unwrap().liveness, Liveness::Ready);
    println!(
        "figure: 20% loss both ways, 120 s: longest beat gap {gaps:?} (beats every 1 s); a killed agent disconnected {to_disconnected:?} after the kill, under the same loss"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn three_hundred_ms_delay_with_jitter_flaps_no_node() {
    let mut c = Cluster::new();
    c.start_coordinator();
    let upstream = format!("127.0.0.1:{}", c.quic_port).parse().unwrap();
    let relay = Relay::start(
        upstream,
        Duration::from_millis(300),
        Duration::from_millis(50),
    )
    .await;
    c.route_agent_through("slow-1", relay.port);
    c.start_agent("slow-1", "");
    let (_, took) = c
        .wait_node("slow-1", "ready", Duration::from_secs(30), |n| {
            n.liveness == Liveness::Ready
        })
        .await;
    let since = now_ms();
    let gaps = watch_ready(&c, &["slow-1"], Duration::from_secs(60)).await;
    assert_eq!(
        liveness_changes(&c, "slow-1", since).await,
        Vec::<String>::new()
    );
    assert!(relay.forwarded.load(std::sync::atomic::Ordering::Relaxed) > 60);
    println!(
        "figure: 300 ms ± 50 ms each way, 60 s: ready {took:?} after start, longest beat gap {gaps:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partitioned_agent_is_disconnected_after_three_beats_down_after_down_after_and_ready_one_backoff_step_after_the_heal(
) {
    if !faults_possible() {
        return;
    }
    let mut c = Cluster::new();
    c.coordinator_extra = "down_after = \"6s\"".into();
    c.start_coordinator();
    let upstream = format!("127.0.0.1:{}", c.quic_port).parse().unwrap();
    let relay = Relay::start(upstream, Duration::ZERO, Duration::ZERO).await;
    c.route_agent_through("cut-1", relay.port);
    c.start_agent("cut-1", "");
    c.start_agent("whole-1", "");
    for n in ["cut-1", "whole-1"] {
        c.wait_liveness(n, Liveness::Ready, Duration::from_secs(30))
            .await;
    }
    let before = c.node("cut-1").await.unwrap();
    let since = now_ms();

    let nft = Nft::new(relay.port);
    nft.drop_all(relay.port);
    let cut = Instant::now();
    let to_disconnected = c
        .wait_liveness("cut-1", Liveness::Disconnected, Duration::from_secs(10))
        .await;
    let to_down = c
        .wait_liveness("cut-1", Liveness::Down, Duration::from_secs(15))
        .await
        + to_disconnected;
    // About three beats (1 s each) after the last one that got through; the sweeper runs
    // every 100 ms.
    assert!(
        (Duration::from_millis(1900)..Duration::from_millis(4500)).contains(&to_disconnected),
        "disconnected {to_disconnected:?} after the cut"
    );
    assert!(
        (Duration::from_millis(5000)..Duration::from_millis(8000)).contains(&to_down),
        "down {to_down:?} after the cut (down_after 6 s)"
    );
    // Held a while longer: the agent's connection attempts now fail too.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let partitioned_for = cut.elapsed();

    nft.heal();
    let to_ready = c
        .wait_liveness("cut-1", Liveness::Ready, Duration::from_secs(30))
        .await;
    // One reconnect backoff step (reconnect_cap is 1 s in the harness's agents), plus the
    // handshake.
    assert!(
        to_ready < Duration::from_millis(2500),
        "ready {to_ready:?} after the heal\n--- agent log ---\n{}",
        c.agent_log("cut-1")
    );
    // Nothing lost: the node is the same node with its history, and the other agent
    // never noticed.
    let after = c.node("cut-1").await.unwrap();
    assert_eq!(after.first_seen_ms, before.first_seen_ms);
    let changes = liveness_changes(&c, "cut-1", since).await;
    assert_eq!(
        changes,
        [
            "ready -> disconnected",
            "disconnected -> down",
            "down -> ready"
        ],
        "{changes:?}"
    );
    c.wait_node("cut-1", "reporting again", Duration::from_secs(15), |n| {
        n.last_report_ms > before.last_report_ms && n.report.is_some()
    })
    .await;
    assert_eq!(
        liveness_changes(&c, "whole-1", since).await,
        Vec::<String>::new()
    );
    println!(
        "figure: partition of one agent: disconnected after {to_disconnected:?}, down after {to_down:?} (down_after 6 s), ready {to_ready:?} after a heal {partitioned_for:?} into the partition"
    );
}

/// `corral ARGS --socket` for the cluster, as JSON.
async fn cli_json(c: &Cluster, args: &[&str]) -> Value {
    let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    v.splice(1..1, ["--socket".to_string(), c.socket()]);
    let out = run_async(v).await;
    assert!(out.status.success(), "corral {args:?}: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

static SLURM: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread")]
async fn the_coordinator_cut_off_from_every_agent_for_30_s_gets_every_node_back_ready_and_loses_no_job(
) {
    if !faults_possible() {
        return;
    }
    let _guard = SLURM.lock().await;
    let Some(plugins) = built_plugins_dir("slurm") else {
        return;
    };
    let Some(_slurm) = Slurm::start() else {
        return;
    };
    let mut c = Cluster::new();
    c.coordinator_extra = "[jobs]\npoll_interval = \"500ms\"\nmax_backoff = \"2s\"".into();
    c.start_coordinator();
    let nodes = ["far-1", "far-2", "far-3"];
    let slurm_agent = format!(
        "[plugins]\ndir = \"{}\"\nenable = [\"slurm\"]\ncache_dir = \"plugin-cache\"\n{}",
        plugins.display(),
        runs_as_runner_keys()
    );
    c.start_agent(nodes[0], &slurm_agent);
    for n in &nodes[1..] {
        c.start_agent(n, "");
    }
    for n in nodes {
        c.wait_liveness(n, Liveness::Ready, Duration::from_secs(30))
            .await;
    }
    c.wait_plugins_announced(nodes[0], Duration::from_secs(120))
        .await;
    let tmp = std::env::temp_dir().to_string_lossy().into_owned();
    let job = cli_json(
        &c,
        &[
            "submit",
            "--scheduler",
            "slurm",
            "--json",
            "--chdir",
            &tmp,
            "--",
            "/bin/sh",
            "-c",
            "sleep 35",
        ],
    )
    .await;
    let id = job["id"].as_str().unwrap().to_string();

    let nft = Nft::new(c.quic_port);
    nft.drop_all(c.quic_port);
    for n in nodes {
        c.wait_liveness(n, Liveness::Down, Duration::from_secs(25))
            .await;
    }
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(Duration::from_secs(15))).await;
    nft.heal();
    let healed = Instant::now();
    for n in nodes {
        c.wait_liveness(n, Liveness::Ready, Duration::from_secs(30))
            .await;
    }
    let all_ready = healed.elapsed();
    let start = Instant::now();
    let done = loop {
        let j = cli_json(&c, &["status", &id, "--json"]).await;
        if j["state_word"] == "succeeded" {
            break j;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "the job lost track after the cut: {j:#}\n--- coordinator log ---\n{}",
            c.coordinator_log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(done["native_id"], job["native_id"]);
    println!("figure: coordinator cut off 30 s: every node ready {all_ready:?} after the heal");
}
