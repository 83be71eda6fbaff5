//! Ray supervision end to end, with real Ray from the venv in `CORRAL_RAY_VENV`
//! (scripts/test.sh creates one with `ray[default]` pinned). Without it: a loud failure
//! under CI=true, a "SKIPPED" line elsewhere.
//!
//! Real Ray is heavy (a head is a dozen processes), so the suite starts one corral-run
//! cluster and walks it through several behaviours in sequence, plus one plain
//! `ray start` that corral must not touch. Every Ray here has its own ports and temp dir,
//! and `--num-cpus 1`.

#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use corral_proto::api::NodeView;
use corral_proto::model::{RayState, RayStatus};
use support::*;

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// The venv to test with, or `None` (after saying so) when the tests should skip.
fn ray_venv() -> Option<PathBuf> {
    match std::env::var_os("CORRAL_RAY_VENV") {
        Some(v) => Some(PathBuf::from(v)),
        None if std::env::var("CI").as_deref() == Ok("true") => panic!(
            "CI=true but CORRAL_RAY_VENV is not set: run the tests through scripts/test.sh, which creates the Ray venv"
        ),
        None => {
            println!("SKIPPED: set CORRAL_RAY_VENV to a venv with ray[default] (scripts/test.sh makes one) to run the Ray tests");
            None
        }
    }
}

fn ray_of(n: &NodeView) -> Option<RayStatus> {
    n.report.as_ref()?.ray.clone()
}

/// The `[ray]` section for one agent: its own ports and temp dir.
fn ray_section(
    venv: &Path,
    role: &str,
    temp: &Path,
    head_ports: Option<(u16, u16, u16)>,
    workers_from: u16,
) -> String {
    let (port, dash, client) = head_ports.unwrap_or((6379, 8265, 10001));
    let agent_port = free_tcp_port();
    let metrics_port = free_tcp_port();
    // Two raylets on one machine must not draw worker ports from the same range, and
    // the ranges stay below the ephemeral ports the other ports above come from.
    let base = workers_from;
    format!(
        "[ray]\nrole = \"{role}\"\nvenv = \"{}\"\nport = {port}\ndashboard_port = {dash}\nclient_server_port = {client}\nnum_cpus = 1\ntemp_dir = \"{}\"\nrestart_base = \"200ms\"\nrestart_cap = \"2s\"\nstop_grace = \"5s\"\nextra_args = [\"--dashboard-agent-listen-port={agent_port}\", \"--metrics-export-port={metrics_port}\", \"--min-worker-port={base}\", \"--max-worker-port={}\"]\n",
        venv.display(),
        temp.display(),
        base + 499
    )
}

async fn wait_ray(
    c: &Cluster,
    node: &str,
    what: &str,
    within: Duration,
    pred: impl Fn(&RayStatus) -> bool,
) -> (RayStatus, Duration) {
    let (n, took) = c
        .wait_node(node, what, within, |n| ray_of(n).is_some_and(|r| pred(&r)))
        .await;
    (ray_of(&n).expect("checked"), took)
}

/// Active nodes in Ray's own view (`ray status`), or None when it cannot tell.
fn ray_active_nodes(venv: &Path, address: &str) -> Option<usize> {
    let out = Command::new(venv.join("bin/ray"))
        .args(["status", "--address", address])
        .current_dir(std::env::temp_dir())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let active = text.split("Active:").nth(1)?.split("Pending:").next()?;
    Some(active.lines().filter(|l| l.contains("node_")).count())
}

async fn wait_ray_nodes(venv: &Path, address: &str, want: usize, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let (v, a) = (venv.to_path_buf(), address.to_string());
        let got = tokio::task::spawn_blocking(move || ray_active_nodes(&v, &a))
            .await
            .unwrap();
        if got == Some(want) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "Ray's own view: {got:?} active nodes at {address}, wanted {want} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Live processes whose command line names `dir` (zombies excluded).
fn processes_naming(dir: &Path) -> Vec<(i32, String)> {
    let needle = dir.display().to_string();
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat
            .rsplit_once(')')
            .is_some_and(|(_, a)| a.trim_start().starts_with('Z'))
        {
            continue;
        }
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmd.contains(&needle) {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            out.push((pid, comm.trim().to_string()));
        }
    }
    out
}

fn stand_in_venv(dir: &Path, python: &str, ray: &str) {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for (name, body) in [
        (
            "python",
            format!("echo '{{\"python\": \"{python}\", \"ray\": \"{ray}\", \"dashboard\": true}}'"),
        ),
        (
            "ray",
            "echo 'the stand-in ray must never be started' >&2; exit 1".to_string(),
        ),
    ] {
        corral_base::testing::write_script(&bin.join(name), &body);
    }
}

/// Kills, on drop, every process naming one of these dirs: a failing test must not leave
/// Ray behind (the cluster's drop SIGKILLs agents, which gives them no time to stop Ray).
struct KillOnDrop(Vec<PathBuf>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for dir in &self.0 {
            for (pid, _) in processes_naming(dir) {
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}

/// A plain `ray start --head --block` that corral does not know about, in its own
/// process group (killed with it on drop).
struct Outsider {
    child: Child,
}

impl Outsider {
    fn start(venv: &Path, temp: &Path) -> Outsider {
        use std::os::unix::process::CommandExt;
        let child = Command::new(venv.join("bin/ray"))
            .args([
                "start",
                "--head",
                "--block",
                "--port",
                &free_tcp_port().to_string(),
                "--dashboard-port",
                &free_tcp_port().to_string(),
                "--ray-client-server-port",
                &free_tcp_port().to_string(),
                "--dashboard-agent-listen-port",
                &free_tcp_port().to_string(),
                "--min-worker-port=29000",
                "--max-worker-port=29499",
                "--num-cpus",
                "1",
                "--include-dashboard=false",
                "--temp-dir",
                temp.to_str().unwrap(),
                "--disable-usage-stats",
            ])
            .current_dir(std::env::temp_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        Outsider { child }
    }

    fn gcs_alive(&self, temp: &Path) -> bool {
        processes_naming(temp)
            .iter()
            .any(|(_, c)| c == "gcs_server")
    }
}

impl Drop for Outsider {
    fn drop(&mut self) {
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn head_and_worker_form_a_cluster_recover_from_kill_9_refuse_mismatch_and_stop_only_their_own(
) {
    let Some(venv) = ray_venv() else { return };
    let mut c = Cluster::new();
    c.start_coordinator();
    let (port, dash, client) = (free_tcp_port(), free_tcp_port(), free_tcp_port());
    let address = format!("127.0.0.1:{port}");
    let head_tmp = c.path("rh");
    let worker_tmp = c.path("rw");
    let _cleanup = KillOnDrop(vec![head_tmp.clone(), worker_tmp.clone()]);

    // 1. A head, ready by probing, announced with its versions.
    c.start_agent(
        "head",
        &ray_section(&venv, "head", &head_tmp, Some((port, dash, client)), 21_000),
    );
    let (head, took) = wait_ray(&c, "head", "running a Ray head", SECS(120), |r| {
        r.state == RayState::Running
    })
    .await;
    println!("head ready after {took:?}");
    assert_eq!(head.head_address.as_deref(), Some(address.as_str()));
    assert!(head.python_version.is_some() && head.ray_version.is_some());

    // 2. A worker learns the head from the coordinator and joins; Ray agrees.
    c.start_agent(
        "worker",
        &ray_section(&venv, "worker", &worker_tmp, None, 22_000),
    );
    let (w, took) = wait_ray(&c, "worker", "joined", SECS(120), |r| {
        r.state == RayState::Running
    })
    .await;
    println!("worker joined after {took:?}");
    assert_eq!(w.head_address.as_deref(), Some(address.as_str()));
    wait_ray_nodes(&venv, &address, 2, SECS(60)).await;

    // 3. A worker whose Python differs is refused, visibly.
    let odd = c.path("odd-venv");
    stand_in_venv(&odd, "3.10.99", head.ray_version.as_deref().unwrap());
    c.start_agent(
        "odd",
        &ray_section(&odd, "worker", &c.path("ro"), None, 23_000),
    );
    let (r, _) = wait_ray(&c, "odd", "refused", SECS(30), |r| {
        r.state == RayState::Refused
    })
    .await;
    let msg = r.message.unwrap();
    for want in [
        "3.10.99",
        head.python_version.as_deref().unwrap(),
        odd.to_str().unwrap(),
        venv.to_str().unwrap(),
    ] {
        assert!(msg.contains(want), "refusal lacks {want:?}: {msg}");
    }
    let out = run_async(vec!["nodes".into(), "--api".into(), c.api()]).await;
    let table = stdout(&out);
    assert!(table.lines().next().unwrap().contains("RAY"), "{table}");
    for want in ["head running", "worker running", "worker refused"] {
        assert!(table.contains(want), "{want:?} not in\n{table}");
    }
    let out = run_async(vec!["node".into(), "odd".into(), "--api".into(), c.api()]).await;
    assert!(stdout(&out).contains("3.10.99"), "{}", stdout(&out));
    let metrics = c.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("corral_ray_state{node=\"odd\",role=\"worker\",state=\"refused\"} 1"),
        "{metrics}"
    );

    // 4. kill -9 of the head's raylet: corral restarts the head, the worker rejoins.
    let raylet = processes_naming(&head_tmp)
        .into_iter()
        .find(|(_, comm)| comm == "raylet")
        .expect("the head has a raylet");
    unsafe {
        libc::kill(raylet.0, libc::SIGKILL);
    }
    let (h, _) = wait_ray(&c, "head", "restarted", SECS(120), |r| {
        r.restarts >= 1 && r.state == RayState::Running
    })
    .await;
    // A start can fail while the worker's raylet still names the dead head ("already
    // running"); that is a restart too, and the budget allows it.
    assert!(h.restarts >= 1, "{h:?}");
    println!("head back after {} restarts", h.restarts);
    wait_ray_nodes(&venv, &address, 2, SECS(120)).await;
    wait_ray(&c, "worker", "rejoined", SECS(60), |r| {
        r.state == RayState::Running
    })
    .await;

    // 5. Shutdown stops exactly corral's processes; a plain `ray start` survives.
    let outsider_tmp = c.path("rx");
    let outsider = Outsider::start(&venv, &outsider_tmp);
    let deadline = Instant::now() + SECS(60);
    while !outsider.gcs_alive(&outsider_tmp) {
        assert!(Instant::now() < deadline, "the outsider Ray never started");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for name in ["worker", "head"] {
        let status = c.signal_agent(name, libc::SIGTERM);
        assert!(status.success(), "{name} exited with {status}");
    }
    for dir in [&head_tmp, &worker_tmp] {
        let left = processes_naming(dir);
        assert!(
            left.is_empty(),
            "left behind from {}: {left:?}",
            dir.display()
        );
    }
    assert!(
        outsider.gcs_alive(&outsider_tmp),
        "corral killed a Ray process it did not start"
    );
    let log = c.agent_log("head");
    assert!(log.contains("ray process group stopped"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_venv_and_venv_without_ray_fail_with_the_fix_named() {
    let Some(_) = ray_venv() else { return };
    let mut c = Cluster::new();
    c.start_coordinator();
    let missing = c.path("no-such-venv");
    c.start_agent(
        "nov",
        &ray_section(&missing, "worker", &c.path("r1"), None, 24_000),
    );
    let bare = c.path("bare-venv");
    let made = Command::new("python3")
        .args(["-m", "venv", "--without-pip", bare.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(made.success());
    c.start_agent(
        "bare",
        &ray_section(&bare, "head", &c.path("r2"), None, 25_000),
    );

    let (r, _) = wait_ray(&c, "nov", "failed", SECS(30), |r| {
        r.state == RayState::Failed
    })
    .await;
    let m = r.message.unwrap();
    assert!(
        m.contains(&format!("{} does not exist", missing.display())),
        "{m}"
    );
    assert!(m.contains("python3 -m venv"), "{m}");

    let (r, _) = wait_ray(&c, "bare", "failed", SECS(60), |r| {
        r.state == RayState::Failed
    })
    .await;
    let m = r.message.unwrap();
    assert!(m.contains("cannot import ray"), "{m}");
    assert!(
        m.contains(&format!(
            "{}/bin/pip install \"ray[default]\"",
            bare.display()
        )),
        "{m}"
    );
    let out = run_async(vec!["nodes".into(), "--api".into(), c.api()]).await;
    assert!(stdout(&out).contains("head failed"), "{}", stdout(&out));
}
