//! Draining and resuming a Ray worker with real Ray, from the venv in `CORRAL_RAY_VENV`
//! (scripts/test.sh creates one). Without it: a loud failure under CI=true, a "SKIPPED"
//! line elsewhere.
//!
//! Two supervisors run in this process, a head and a worker, as two agents would on one
//! machine (the head's announcement is handed to the worker as the coordinator would).
//! The drain and resume go through the supervisor's control, which is exactly what the
//! agent's session calls for the coordinator's `RayDrain` and `RayResume` (the session's
//! own dispatch is unit-tested in `session.rs`; the coordinator has no API route for it
//! to drive end to end yet). Everything Ray-side is real: Ray's GCS accepts the drain,
//! Ray stops placing tasks on the node, the raylet shuts down once its work is done, and
//! a driver checks where tasks ran (`ray.get_runtime_context().get_node_id()`).
//!
//! Who Ray runs as: as root, the ordinary account `corral-ray-test` (created if
//! missing), so the drain program's switch to the Ray user is exercised too; otherwise
//! the user running the tests.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use corral_node::ray::process;
use corral_node::ray::user::RayUser;
use corral_node::ray::{self, RayConfig, RayHandles};
use corral_proto::model::{RayState, RayStatus};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const RAY_USER: &str = "corral-ray-test";

/// The venv to test with, or `None` (after saying so) when the test should skip.
fn ray_venv() -> Option<PathBuf> {
    match std::env::var_os("CORRAL_RAY_VENV") {
        Some(v) => Some(PathBuf::from(v)),
        None if std::env::var("CI").as_deref() == Ok("true") => panic!(
            "CI=true but CORRAL_RAY_VENV is not set: run the tests through scripts/test.sh, which creates the Ray venv"
        ),
        None => {
            println!("SKIPPED: set CORRAL_RAY_VENV to a venv with ray[default] (scripts/test.sh makes one) to run the Ray drain test");
            None
        }
    }
}

/// `[ray] user` for these tests: the test account as root (created when missing), else
/// none (Ray runs as the user running the tests).
fn ray_user_name() -> Option<&'static str> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let known = std::process::Command::new("getent")
        .args(["passwd", RAY_USER])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !known {
        let made = std::process::Command::new("useradd")
            .args(["--create-home", "--user-group", RAY_USER])
            .status()
            .expect("running useradd");
        // Another test binary may have made it meanwhile.
        assert!(
            made.success()
                || std::process::Command::new("getent")
                    .args(["passwd", RAY_USER])
                    .status()
                    .is_ok_and(|s| s.success()),
            "could not create the Ray test user {RAY_USER}"
        );
    }
    Some(RAY_USER)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `[ray]` section with its own ports and worker-port range (two raylets on one
/// machine must not share one; this test uses 30000-30999, tests/ray.rs and
/// tests/ray_jobs.rs stay below), `--num-cpus 1`, no GPUs.
fn config(
    venv: &Path,
    role: &str,
    temp: &Path,
    user: Option<&str>,
    head_port: u16,
    workers_from: u16,
) -> RayConfig {
    let user_line = user
        .map(|u| format!("user = \"{u}\"\n"))
        .unwrap_or_default();
    let text = format!(
        "role = \"{role}\"\nvenv = \"{}\"\n{user_line}temp_dir = \"{}\"\nport = {head_port}\ndashboard_port = {}\nclient_server_port = {}\nnode_ip = \"127.0.0.1\"\nnum_cpus = 1\nnum_gpus = 0\nrestart_base = \"200ms\"\nrestart_cap = \"2s\"\nstop_grace = \"5s\"\nextra_args = [\"--dashboard-agent-listen-port={}\", \"--metrics-export-port={}\", \"--min-worker-port={workers_from}\", \"--max-worker-port={}\"]\n",
        venv.display(),
        temp.display(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        workers_from + 499
    );
    let cfg: RayConfig = toml::from_str(&text).unwrap();
    cfg
}

async fn wait_state(
    h: &RayHandles,
    what: &str,
    within: Duration,
    pred: impl Fn(&RayStatus) -> bool,
) -> RayStatus {
    let mut rx = h.status.clone();
    let got = tokio::time::timeout(within, rx.wait_for(|s| s.as_ref().is_some_and(&pred)))
        .await
        .ok()
        .and_then(|r| r.ok().and_then(|s| s.clone()));
    got.unwrap_or_else(|| {
        panic!(
            "not {what} within {within:?}: {:?}",
            h.status.borrow().clone()
        )
    })
}

/// The driver: connects to the cluster, finds the worker's live Ray node by its temp dir
/// (as the agent does), and reports where tasks ran, as one JSON line.
/// `check ADDR WORKER_RAY_TEMP [NODE]`: the live worker node, where a task pinned to it
/// ran (unless it is NODE), where ten 0-CPU SPREAD tasks ran, and NODE's state in the
/// GCS.
/// `long ADDR NODE SECS MARK`: one task pinned to NODE that writes MARK, sleeps SECS and
/// returns the node it ran on.
const DRIVER: &str = r#"
import json, sys, time
import ray
from ray._raylet import GcsClient
from ray.core.generated import gcs_pb2
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
mode, address = sys.argv[1], sys.argv[2]
ray.init(address=address, logging_level="ERROR", log_to_driver=False)

@ray.remote(num_cpus=0)
def where():
    return ray.get_runtime_context().get_node_id()

@ray.remote(num_cpus=1)
def long(secs, mark):
    open(mark, "w").close()
    time.sleep(secs)
    return ray.get_runtime_context().get_node_id()

if mode == "long":
    node, secs, mark = sys.argv[3], float(sys.argv[4]), sys.argv[5]
    s = NodeAffinitySchedulingStrategy(node, soft=False)
    print(json.dumps({"ran_on": ray.get(long.options(scheduling_strategy=s).remote(secs, mark))}))
    sys.exit(0)

temp, old = sys.argv[3], (sys.argv[4] if len(sys.argv) > 4 else None)
gcs = GcsClient(address=address)
nodes = gcs.get_all_node_info(timeout=10)
alive = sorted((i.start_time_ms, n.hex()) for n, i in nodes.items()
               if i.temp_dir == temp and i.state == gcs_pb2.GcsNodeInfo.ALIVE)
worker = alive[-1][1] if alive else None
out = {"worker": worker, "pinned": None, "old_state": None, "old_death": None}
# Ray refuses a task pinned to a draining node outright; only a new node is pinned to.
if worker and worker != old:
    s = NodeAffinitySchedulingStrategy(worker, soft=False)
    out["pinned"] = ray.get(where.options(scheduling_strategy=s).remote(), timeout=60)
out["spread"] = ray.get([where.options(scheduling_strategy="SPREAD").remote() for _ in range(10)], timeout=60)
if old:
    info = nodes[ray.NodeID.from_hex(old)]
    out["old_state"] = gcs_pb2.GcsNodeInfo.GcsNodeState.Name(info.state)
    if info.state == gcs_pb2.GcsNodeInfo.DEAD:
        field = info.death_info.DESCRIPTOR.fields_by_name["reason"]
        out["old_death"] = field.enum_type.values_by_number[info.death_info.reason].name
print(json.dumps(out))
"#;

#[derive(Debug, serde::Deserialize)]
struct Check {
    worker: Option<String>,
    pinned: Option<String>,
    spread: Vec<String>,
    old_state: Option<String>,
    old_death: Option<String>,
}

/// Runs the driver as the Ray user from `venv`, in `cwd`; its last JSON line.
async fn driver<T: serde::de::DeserializeOwned>(
    venv: &Path,
    user: &RayUser,
    cwd: &Path,
    args: &[String],
) -> T {
    let mut all = vec!["-c".to_string(), DRIVER.to_string()];
    all.extend(args.iter().cloned());
    let mut cmd = process::command(&venv.join("bin/python"), &all, &[cwd], user).unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(180),
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the driver finished within 180s")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l.trim()).ok())
        .unwrap_or_else(|| {
            panic!(
                "driver {args:?} gave no answer ({}): {stdout}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

/// Live processes whose command line names `dir`.
fn processes_naming(dir: &Path) -> Vec<i32> {
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
        let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&raw).contains(&needle) {
            out.push(pid);
        }
    }
    out
}

/// Kills, on drop, every process naming one of these dirs: a failing test must not leave
/// Ray behind.
struct KillOnDrop(Vec<PathBuf>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for dir in &self.0 {
            for pid in processes_naming(dir) {
                // SAFETY: kill(2) of a process naming this test's own temp dir.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drained_worker_takes_no_new_tasks_finishes_its_work_stays_down_and_rejoins_when_resumed()
{
    let Some(venv) = ray_venv() else { return };
    let user_name = ray_user_name();
    let user = tokio::task::spawn_blocking(move || RayUser::resolve(user_name, false))
        .await
        .unwrap()
        .expect("the Ray user resolves");
    // Ray's temp dirs must be short (Unix socket paths), and reachable by the Ray user.
    let d = tempfile::Builder::new().prefix("crd").tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let (head_tmp, worker_tmp) = (d.path().join("h"), d.path().join("w"));
    let _cleanup = KillOnDrop(vec![head_tmp.clone(), worker_tmp.clone()]);
    // Where the long task marks that it started: a directory the Ray user owns.
    let marks = d.path().join("m");
    std::fs::create_dir(&marks).unwrap();
    std::os::unix::fs::chown(&marks, Some(user.uid), Some(user.gid)).unwrap();

    let shutdown = CancellationToken::new();
    let (_reports_tx, reports) = watch::channel(None);
    let head_port = free_port();
    let address = format!("127.0.0.1:{head_port}");
    let head = ray::start(
        &config(&venv, "head", &head_tmp, user_name, head_port, 30_000),
        "head",
        "127.0.0.1:7440",
        reports.clone(),
        shutdown.clone(),
    )
    .unwrap();
    let worker = ray::start(
        &config(&venv, "worker", &worker_tmp, user_name, head_port, 30_500),
        "worker",
        "127.0.0.1:7440",
        reports,
        shutdown.clone(),
    )
    .unwrap();
    // What the coordinator does: the head's announcement reaches the worker.
    let mut own_head = head.own_head.clone();
    let announce = worker.cluster_head.clone();
    let relay = tokio::spawn(async move {
        loop {
            let h = own_head.borrow_and_update().clone();
            announce.send_replace(h);
            if own_head.changed().await.is_err() {
                return;
            }
        }
    });
    wait_state(&head, "a running head", Duration::from_secs(120), |s| {
        s.state == RayState::Running
    })
    .await;
    let joined = wait_state(&worker, "a joined worker", Duration::from_secs(120), |s| {
        s.state == RayState::Running
    })
    .await;

    // A head has nothing to drain.
    let r = head
        .control
        .drain("corral: test".into(), Duration::from_secs(60))
        .await
        .unwrap();
    assert!(r.contains("nothing to drain"), "{r}");

    let ray_temp = worker_tmp.join("tmp").display().to_string();
    let check = |old: Option<&str>| {
        let mut args = vec!["check".to_string(), address.clone(), ray_temp.clone()];
        args.extend(old.map(str::to_string));
        args
    };

    // 1. The worker takes tasks: pinned ones, and some of those spread over the cluster.
    let before: Check = driver(&venv, &user, d.path(), &check(None)).await;
    let first = before.worker.clone().expect("the GCS lists the worker");
    assert_eq!(before.pinned.as_deref(), Some(first.as_str()));
    assert!(
        before.spread.contains(&first),
        "no spread task ran on the worker before the drain: {before:?}"
    );

    // 2. Work running on it when the drain comes.
    let mark = marks.join("long-started");
    let long = {
        let (venv, user, cwd) = (venv.clone(), user.clone(), d.path().to_path_buf());
        let args = vec![
            "long".to_string(),
            address.clone(),
            first.clone(),
            "8".into(),
            mark.display().to_string(),
        ];
        tokio::spawn(async move { driver::<serde_json::Value>(&venv, &user, &cwd, &args).await })
    };
    let started = Instant::now();
    while !mark.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the long task never started"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // 3. The drain: Ray accepts it for this worker's node, and new tasks go elsewhere.
    let r = worker
        .control
        .drain(
            "corral: gpu 0 XID 79 (drain test)".into(),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert!(r.contains(&format!("drained Ray node {first}")), "{r}");
    let s = wait_state(&worker, "draining", Duration::from_secs(5), |s| {
        s.state == RayState::Draining
    })
    .await;
    assert_eq!(s.pid, joined.pid, "the draining worker was restarted");
    let during: Check = driver(&venv, &user, d.path(), &check(Some(&first))).await;
    assert!(
        !during.spread.contains(&first),
        "a new task ran on the draining worker: {during:?}"
    );

    // 4. Its work finishes on it; then Ray shuts the node down, and corral keeps it down.
    let ran: serde_json::Value = long.await.unwrap();
    assert_eq!(ran["ran_on"].as_str(), Some(first.as_str()), "{ran}");
    let s = wait_state(&worker, "drained", Duration::from_secs(60), |s| {
        s.state == RayState::Drained
    })
    .await;
    assert!(
        s.message
            .as_deref()
            .unwrap()
            .contains("Ray shut the drained node down"),
        "{s:?}"
    );
    assert_eq!(s.restarts, 0, "a drain is not a crash");
    let after: Check = driver(&venv, &user, d.path(), &check(Some(&first))).await;
    assert_eq!(
        after.worker, None,
        "a live worker node after the drain: {after:?}"
    );
    assert_eq!(after.old_state.as_deref(), Some("DEAD"), "{after:?}");
    assert_eq!(
        after.old_death.as_deref(),
        Some("AUTOSCALER_DRAIN_PREEMPTED"),
        "{after:?}"
    );
    assert!(!after.spread.contains(&first), "{after:?}");
    let s = worker.status.borrow().clone().unwrap();
    assert_eq!((s.state, s.pid), (RayState::Drained, None));
    assert!(
        processes_naming(&worker_tmp).is_empty(),
        "the drained worker left processes: {:?}",
        processes_naming(&worker_tmp)
    );
    let r = worker
        .control
        .drain("corral: again".into(), Duration::from_secs(60))
        .await
        .unwrap();
    assert!(r.contains("already drained"), "{r}");

    // 5. Resumed, it rejoins as a new node, ALIVE, and takes tasks again.
    let r = worker.control.resume().await.unwrap();
    assert!(r.contains("restarted the Ray worker"), "{r}");
    wait_state(&worker, "rejoined", Duration::from_secs(120), |s| {
        s.state == RayState::Running
    })
    .await;
    let back: Check = driver(&venv, &user, d.path(), &check(Some(&first))).await;
    let second = back
        .worker
        .clone()
        .expect("a live worker node after the resume");
    assert_ne!(second, first);
    assert_eq!(back.pinned.as_deref(), Some(second.as_str()));
    let r = worker.control.resume().await.unwrap();
    assert!(r.contains("nothing to resume"), "{r}");

    shutdown.cancel();
    worker.task.await.unwrap();
    head.task.await.unwrap();
    relay.abort();
    for dir in [&head_tmp, &worker_tmp] {
        let left = processes_naming(dir);
        assert!(
            left.is_empty(),
            "left behind from {}: {left:?}",
            dir.display()
        );
    }
}
