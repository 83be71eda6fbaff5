//! Ray supervision end to end, with real Ray from the venv in `CORRAL_RAY_VENV`
//! (scripts/test.sh creates one with `ray[default]` pinned). Without it: a loud failure
//! under CI=true, a "SKIPPED" line elsewhere.
//!
//! Real Ray is heavy (a head is a dozen processes), so the suite starts one corral-run
//! cluster and walks it through several behaviours in sequence, plus one plain
//! `ray start` that corral must not touch; and a second cluster, a head and a worker on
//! a fake GPU, for the remediation: a failing GPU drains the worker in Ray, a reboot
//! brings it back. Every Ray here has its own ports, worker-port range and temp dir, and
//! `--num-cpus 1`.
//!
//! Who Ray runs as: when the tests run as root (CI), every agent is given
//! `ray.user = "corral-ray-test"`, an ordinary account the harness creates
//! (`support::users`), and the tests check that Ray's processes really run as it. The
//! venv must then be one that account can reach and cannot change: scripts/test.sh
//! keeps it under /var/cache/corral-test when root, since /root is 0700. Otherwise Ray
//! runs as the user running the tests.

use corral_test_support as support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use corral_proto::api::NodeView;
use corral_proto::model::{HealthStatus, Liveness, RayState, RayStatus};
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

/// The account Ray runs as in these tests: `corral-ray-test` when they run as root (the
/// agent refuses to run Ray as root), else `None`: Ray runs as the user running them.
fn ray_user() -> Option<users::TestUser> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    Some(users::ensure_user("corral-ray-test").expect("root can create the Ray test user"))
}

/// The uid Ray's processes must have.
fn expected_ray_uid(user: &Option<users::TestUser>) -> u32 {
    // SAFETY: geteuid cannot fail.
    user.as_ref().map_or(unsafe { libc::geteuid() }, |u| u.uid)
}

/// A cluster whose directory the Ray user may pass through (tempfile makes it 0700),
/// to reach the agents' state dirs; nothing in it becomes readable by being listed.
fn ray_cluster() -> Cluster {
    use std::os::unix::fs::PermissionsExt;
    let c = Cluster::new();
    std::fs::set_permissions(c.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    c
}

/// Fails early, with the fix, when the Ray user cannot reach the venv.
fn check_venv_reachable(venv: &Path, user: &Option<users::TestUser>) {
    let Some(u) = user else { return };
    if let Some((dir, mode, _)) = corral_sandbox::fsperm::first_unsearchable(venv, u.uid, &[u.gid])
    {
        panic!(
            "the Ray test user {} cannot reach the venv {}: {} is mode {mode:04o}; run the tests through scripts/test.sh, which keeps the venv under /var/cache/corral-test when root, or set CORRAL_RAY_VENV to a venv outside it",
            u.name,
            venv.display(),
            dir.display()
        );
    }
}

/// One agent's `[agent] state_dir` and `[ray]` section: its own ports, its temp dir the
/// default one (`STATE/ray`), run as `user`.
fn ray_section(
    venv: &Path,
    role: &str,
    state: &Path,
    user: &Option<users::TestUser>,
    head_ports: Option<(u16, u16, u16)>,
    workers_from: u16,
) -> String {
    let (port, dash, client) = head_ports.unwrap_or((6379, 8265, 10001));
    let agent_port = free_tcp_port();
    let metrics_port = free_tcp_port();
    // Two raylets on one machine must not draw worker ports from the same range, and
    // the ranges stay below the ephemeral ports the other ports above come from.
    let base = workers_from;
    let user_line = user
        .as_ref()
        .map(|u| format!("user = \"{}\"\n", u.name))
        .unwrap_or_default();
    format!(
        "state_dir = \"{}\"\n[ray]\nrole = \"{role}\"\nvenv = \"{}\"\n{user_line}port = {port}\ndashboard_port = {dash}\nclient_server_port = {client}\nnum_cpus = 1\nrestart_base = \"200ms\"\nrestart_cap = \"2s\"\nstop_grace = \"5s\"\nextra_args = [\"--dashboard-agent-listen-port={agent_port}\", \"--metrics-export-port={metrics_port}\", \"--min-worker-port={base}\", \"--max-worker-port={}\"]\n",
        state.display(),
        venv.display(),
        base + 499
    )
}

/// A field of /proc/PID/status (`Uid`, `Gid`, `CapEff`, ...), split on whitespace.
fn proc_status(pid: i32, field: &str) -> Vec<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// A variable of /proc/PID/environ.
fn proc_env(pid: i32, key: &str) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    raw.split(|b| *b == 0).find_map(|kv| {
        let kv = String::from_utf8_lossy(kv);
        kv.strip_prefix(&format!("{key}=")).map(str::to_string)
    })
}

fn mode_and_owner(p: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (m.mode() & 0o7777, m.uid())
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
    let user = ray_user();
    check_venv_reachable(&venv, &user);
    let mut c = ray_cluster();
    c.start_coordinator();
    let (port, dash, client) = (free_tcp_port(), free_tcp_port(), free_tcp_port());
    let address = format!("127.0.0.1:{port}");
    let (head_state, worker_state) = (c.path("sh"), c.path("sw"));
    let head_tmp = head_state.join("ray");
    let worker_tmp = worker_state.join("ray");
    let _cleanup = KillOnDrop(vec![head_tmp.clone(), worker_tmp.clone()]);

    // 1. A head, ready by probing, announced with its versions.
    c.start_agent(
        "head",
        &ray_section(
            &venv,
            "head",
            &head_state,
            &user,
            Some((port, dash, client)),
            21_000,
        ),
    );
    let (head, took) = wait_ray(&c, "head", "running a Ray head", SECS(120), |r| {
        r.state == RayState::Running
    })
    .await;
    println!("head ready after {took:?}");
    assert_eq!(head.head_address.as_deref(), Some(address.as_str()));
    assert!(head.python_version.is_some() && head.ray_version.is_some());
    ray_runs_as_its_user(&head_tmp, &user).await;

    // 2. A worker learns the head from the coordinator and joins; Ray agrees.
    c.start_agent(
        "worker",
        &ray_section(&venv, "worker", &worker_state, &user, None, 22_000),
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
        &ray_section(&odd, "worker", &c.path("so"), &user, None, 23_000),
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
    let out = run_async(vec!["nodes".into(), "--socket".into(), c.socket()]).await;
    let table = stdout(&out);
    assert!(table.lines().next().unwrap().contains("RAY"), "{table}");
    for want in ["head running", "worker running", "worker refused"] {
        assert!(table.contains(want), "{want:?} not in\n{table}");
    }
    let out = run_async(vec![
        "node".into(),
        "odd".into(),
        "--socket".into(),
        c.socket(),
    ])
    .await;
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

/// The head's raylet and gcs_server run as the Ray user, with its groups and home and
/// no capabilities; the temp dir under the state dir and the log in it are that user's
/// alone.
async fn ray_runs_as_its_user(temp: &Path, user: &Option<users::TestUser>) {
    let uid = expected_ray_uid(user).to_string();
    // The head is ready when its GCS and dashboard answer; its raylet may come just after.
    let deadline = Instant::now() + SECS(60);
    let procs = loop {
        let procs = processes_naming(temp);
        let has = |n: &str| procs.iter().any(|(_, comm)| comm == n);
        if (has("raylet") && has("gcs_server")) || Instant::now() > deadline {
            break procs;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for name in ["raylet", "gcs_server"] {
        let (pid, _) = procs
            .iter()
            .find(|(_, comm)| comm == name)
            .unwrap_or_else(|| panic!("no {name} naming {}: {procs:?}", temp.display()));
        // Real, effective, saved and filesystem uid.
        assert_eq!(
            proc_status(*pid, "Uid"),
            vec![uid.clone(); 4],
            "{name} {pid}"
        );
        assert_eq!(
            proc_status(*pid, "CapEff"),
            vec!["0000000000000000".to_string()],
            "{name} {pid} holds capabilities"
        );
        if let Some(u) = user {
            assert_eq!(
                proc_status(*pid, "Gid"),
                vec![u.gid.to_string(); 4],
                "{name}"
            );
            assert_eq!(
                proc_status(*pid, "Groups"),
                vec![u.gid.to_string()],
                "{name}"
            );
            assert_eq!(proc_env(*pid, "HOME"), Some(u.home.display().to_string()));
            assert_eq!(proc_env(*pid, "USER").as_deref(), Some(u.name.as_str()));
            assert_eq!(proc_env(*pid, "LOGNAME").as_deref(), Some(u.name.as_str()));
        }
    }
    let want = expected_ray_uid(user);
    assert_eq!(mode_and_owner(temp), (0o700, want), "{}", temp.display());
    // Ray's own temp dir inside, which Ray makes 0777 (unreachable through TEMP).
    assert_eq!(mode_and_owner(&temp.join("tmp")).1, want);
    assert_eq!(
        mode_and_owner(&temp.join("corral-ray-head.log")),
        (0o600, want)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_venv_and_venv_without_ray_fail_with_the_fix_named() {
    let Some(_) = ray_venv() else { return };
    let user = ray_user();
    let mut c = ray_cluster();
    c.start_coordinator();
    let missing = c.path("no-such-venv");
    c.start_agent(
        "nov",
        &ray_section(&missing, "worker", &c.path("s1"), &user, None, 24_000),
    );
    let bare = c.path("bare-venv");
    // The venv's Python links to the one it is made from, which the Ray user must
    // reach: the system's, not one under /root (pyenv).
    let python = if user.is_some() && Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let made = Command::new(python)
        .args(["-m", "venv", "--without-pip", bare.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(made.success());
    c.start_agent(
        "bare",
        &ray_section(&bare, "head", &c.path("s2"), &user, None, 25_000),
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
    let out = run_async(vec!["nodes".into(), "--socket".into(), c.socket()]).await;
    assert!(stdout(&out).contains("head failed"), "{}", stdout(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_venv_others_can_write_is_refused_naming_the_path_and_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    let user = ray_user();
    let mut c = ray_cluster();
    c.start_coordinator();
    // A stand-in venv is enough: nothing may run from it, not even its Python.
    let open = c.path("open-venv");
    stand_in_venv(&open, "3.11.7", "2.60.0");
    let bin = open.join("bin");
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o777)).unwrap();
    c.start_agent(
        "open",
        &ray_section(&open, "worker", &c.path("s3"), &user, None, 26_000),
    );
    let (r, _) = wait_ray(&c, "open", "failed", SECS(30), |r| {
        r.state == RayState::Failed
    })
    .await;
    assert!(r.python_version.is_none(), "the venv's Python ran: {r:?}");
    let m = r.message.unwrap();
    assert!(
        m.contains(&format!("refusing the Ray venv {}", open.display())),
        "{m}"
    );
    assert!(
        m.contains(&format!(
            "{} is writable by its group and all users",
            bin.display()
        )),
        "{m}"
    );
    assert!(m.contains(&format!("chmod go-w {}", bin.display())), "{m}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_temp_dir_owned_by_another_user_is_refused() {
    let Some(user) = ray_user() else {
        println!("SKIPPED: a temp dir that is not the Ray user's needs a Ray user other than the one running the tests, so root");
        return;
    };
    let mut c = ray_cluster();
    c.start_coordinator();
    // The directory exists already, made by root, who is not the Ray user.
    let state = c.path("s4");
    let theirs = state.join("ray");
    std::fs::create_dir_all(&theirs).unwrap();
    let venv = c.path("stand-in-venv");
    stand_in_venv(&venv, "3.11.7", "2.60.0");
    c.start_agent(
        "squatted",
        &ray_section(&venv, "worker", &state, &Some(user), None, 27_000),
    );
    let (r, _) = wait_ray(&c, "squatted", "failed", SECS(30), |r| {
        r.state == RayState::Failed
    })
    .await;
    let m = r.message.unwrap();
    assert!(m.contains("Ray's temp dir"), "{m}");
    assert!(
        m.contains(&format!("{} is owned by root (uid 0)", theirs.display())),
        "{m}"
    );
    assert!(m.contains("corral-ray-test"), "{m}");
    // Refused as it was: not handed over, not narrowed.
    assert_eq!(mode_and_owner(&theirs), (0o755, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn ray_user_is_required_of_a_root_agent_and_refused_to_an_unprivileged_one() {
    let mut c = ray_cluster();
    c.start_coordinator();
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    // As root: no ray.user. Otherwise: a ray.user that is not the agent's own account.
    let user_lines = if root {
        ""
    } else {
        "user = \"root\"\nallow_root = true\n"
    };
    let state = c.path("s5");
    c.start_agent(
        "who",
        &format!(
            "state_dir = \"{}\"\n[ray]\nrole = \"worker\"\nvenv = \"{}\"\n{user_lines}restart_cap = \"2s\"\n",
            state.display(),
            c.path("no-venv-needed").display()
        ),
    );
    let (r, _) = wait_ray(&c, "who", "failed", SECS(30), |r| {
        r.state == RayState::Failed
    })
    .await;
    let m = r.message.unwrap();
    if root {
        assert!(
            m.contains("the agent runs as root and ray.user is not set"),
            "{m}"
        );
        assert!(m.contains("ray.allow_root = true"), "{m}");
    } else {
        assert!(
            m.contains("ray.user = \"root\", but this agent runs as"),
            "{m}"
        );
    }
    // Nothing was started, and no temp dir was made.
    assert!(!state.join("ray").exists());
    let log = c.agent_log("who");
    assert!(!log.contains("ray process started"), "{log}");
}

// --- Remediation: a failing GPU drains the node's Ray worker; a reboot brings it back ---

/// The remediation timings of the drain test: short, so that the whole life of a cordon
/// fits in a test, and in the order a real config has them.
const DRAIN_AFTER: Duration = Duration::from_secs(2);
const RESUME_AFTER: Duration = Duration::from_secs(3);

/// A driver that connects to the cluster at ADDR and prints one JSON line: the live head
/// node, the live worker node whose temp dir is TEMP (the newest, as the agent finds its
/// own), how many nodes are alive, how many nodes (live or dead) the worker's temp dir
/// has had, where a task pinned to that worker ran (unless it is
/// OLD: Ray refuses a task pinned to a draining node), where twenty 0-CPU SPREAD tasks
/// ran, and OLD's state (and reason of death) in the GCS.
/// `DRIVER ADDR TEMP [OLD]`
const PLACEMENT_DRIVER: &str = r#"
import json, sys
import ray
from ray._raylet import GcsClient
from ray.core.generated import gcs_pb2
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
address, temp = sys.argv[1], sys.argv[2]
old = sys.argv[3] if len(sys.argv) > 3 else None
ray.init(address=address, logging_level="ERROR", log_to_driver=False)

@ray.remote(num_cpus=0)
def where():
    return ray.get_runtime_context().get_node_id()

gcs = GcsClient(address=address)
nodes = gcs.get_all_node_info(timeout=10)
alive = [(i.start_time_ms, n.hex(), i) for n, i in nodes.items() if i.state == gcs_pb2.GcsNodeInfo.ALIVE]
heads = [h for _, h, i in alive if i.is_head_node]
workers = sorted((t, h) for t, h, i in alive if i.temp_dir == temp and not i.is_head_node)
out = {"head": heads[0] if heads else None, "worker": workers[-1][1] if workers else None,
       "alive": len(alive), "worker_nodes": sum(1 for i in nodes.values() if i.temp_dir == temp),
       "pinned": None, "old_state": None, "old_death": None}
if out["worker"] and out["worker"] != old:
    s = NodeAffinitySchedulingStrategy(out["worker"], soft=False)
    out["pinned"] = ray.get(where.options(scheduling_strategy=s).remote(), timeout=60)
out["spread"] = ray.get([where.options(scheduling_strategy="SPREAD").remote() for _ in range(20)], timeout=60)
if old:
    info = nodes[ray.NodeID.from_hex(old)]
    out["old_state"] = gcs_pb2.GcsNodeInfo.GcsNodeState.Name(info.state)
    if info.state == gcs_pb2.GcsNodeInfo.DEAD:
        field = info.death_info.DESCRIPTOR.fields_by_name["reason"]
        out["old_death"] = field.enum_type.values_by_number[info.death_info.reason].name
print(json.dumps(out))
"#;

/// What [`PLACEMENT_DRIVER`] saw.
#[derive(Debug, serde::Deserialize)]
struct Placement {
    head: Option<String>,
    worker: Option<String>,
    alive: usize,
    worker_nodes: usize,
    pinned: Option<String>,
    spread: Vec<String>,
    old_state: Option<String>,
    old_death: Option<String>,
}

/// Runs [`PLACEMENT_DRIVER`] as the Ray user (Ray's session dir is that user's alone)
/// from `venv`, in `cwd`, against the head at `address`.
async fn placement(
    venv: &Path,
    user: &corral_node::ray::user::RayUser,
    cwd: &Path,
    address: &str,
    worker_temp: &Path,
    old: Option<&str>,
) -> Placement {
    let mut args = vec![
        "-c".to_string(),
        PLACEMENT_DRIVER.to_string(),
        address.to_string(),
        worker_temp.display().to_string(),
    ];
    args.extend(old.map(str::to_string));
    let mut cmd = corral_node::ray::process::command(&venv.join("bin/python"), &args, &[cwd], user)
        .expect("the driver's command");
    let out = tokio::time::timeout(
        SECS(180),
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the driver finished within 180s")
    .expect("the driver ran");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .rev()
        .find_map(|l| serde_json::from_str(l.trim()).ok())
        .unwrap_or_else(|| {
            panic!(
                "the driver gave no answer ({}): {text}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

/// One healthy fake GPU at PCI 0000:18:00 (where the kernel-log line below points).
fn calm_gpu() -> Vec<serde_json::Value> {
    vec![serde_json::json!({ "gpus": [{
        "index": 0, "uuid": "GPU-fake-0", "name": "Fake H100",
        "pci_bus_id": "00000000:18:00.0", "temperature_celsius": 50,
        "pcie_link_width": 16, "pcie_link_width_max": 16, "pcie_replay_count": 0,
        "ecc_corrected_volatile": 0, "ecc_uncorrected_volatile": 0, "xids": []
    }]})]
}

/// XID 79 as the NVIDIA driver logs it (`dmesg` form): the GPU fell off the bus.
const XID_79: &str = "[ 4213.885200] NVRM: Xid (PCI:0000:18:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus.\n";

/// The `to` of `node`'s remediation events, oldest first.
async fn remediation_events(c: &Cluster, node: &str) -> Vec<(String, String)> {
    c.events(node)
        .await
        .into_iter()
        .filter(|e| e.kind == corral_proto::api::EventKind::Remediation)
        .map(|e| (e.to, e.message))
        .collect()
}

/// The cordon's Ray drain, if the node is cordoned and has one.
fn ray_drain_of(n: &NodeView) -> Option<corral_proto::api::DrainView> {
    n.cordon
        .as_ref()?
        .drains
        .iter()
        .find(|d| d.kind == "ray")
        .cloned()
}

/// The whole life of a remediation cordon with real Ray: the worker's GPU logs XID 79
/// (the fault arrives when the test writes it into the kernel log the agent reads, so it
/// comes only once the worker has been seen taking tasks); after `drain_after` the
/// coordinator cordons the node and has its agent drain the Ray worker through the GCS;
/// Ray shuts the node down and new tasks run on the head. XID 79 holds until a reboot,
/// so the node stays cordoned and drained. The "reboot" is the agent stopped and started
/// again with what a new boot gives it: its GPU state file gone (the file is keyed by
/// boot id, which a test cannot change), an empty kernel log and a healthy GPU. The
/// agent starts its worker as usual; after `resume_after` of health the coordinator
/// lifts the cordon, its `RayResume` finds nothing drained (the agent's drain state did
/// not survive the restart) and leaves the running worker alone, and Ray has both nodes
/// alive, the new worker taking tasks.
#[tokio::test(flavor = "multi_thread")]
async fn a_ray_worker_on_a_node_with_a_failing_gpu_is_drained_and_rejoins_after_recovery() {
    let Some(venv) = ray_venv() else { return };
    let user = ray_user();
    check_venv_reachable(&venv, &user);
    let driver_user =
        corral_node::ray::user::RayUser::resolve(user.as_ref().map(|u| u.name.as_str()), false)
            .expect("the Ray user resolves for the driver");
    let mut c = ray_cluster();
    c.authorize_ray_heads(&["head"]);
    // Ray is the only place this node is drained in: no scheduler instance here.
    c.schedulers.clear();
    c.coordinator_extra = format!(
        "[remediation]\nresume_after = \"{}s\"\ndrain_interval = \"0s\"\nretry_after = \"200ms\"\nray_drain_deadline = \"2s\"\n[remediation.drain_after]\ndefault = \"{}s\"\n",
        RESUME_AFTER.as_secs(),
        DRAIN_AFTER.as_secs()
    );
    c.start_coordinator();
    let (port, dash, client) = (free_tcp_port(), free_tcp_port(), free_tcp_port());
    let address = format!("127.0.0.1:{port}");
    let (head_state, worker_state) = (c.path("state-head"), c.path("state-worker"));
    let worker_ray_temp = worker_state.join("ray").join("tmp");
    let _cleanup = KillOnDrop(vec![head_state.join("ray"), worker_state.join("ray")]);

    c.start_agent(
        "head",
        &ray_section(
            &venv,
            "head",
            &head_state,
            &user,
            Some((port, dash, client)),
            31_000,
        ),
    );
    wait_ray(&c, "head", "running a Ray head", SECS(120), |r| {
        r.state == RayState::Running
    })
    .await;

    // The worker's agent reads its GPU's XIDs from a kernel log the test writes.
    let kmsg = c.path("kmsg-worker");
    std::fs::write(&kmsg, "").unwrap();
    let worker_extra = format!(
        "sample_interval = \"500ms\"\n{}",
        ray_section(&venv, "worker", &worker_state, &user, None, 31_500)
    );
    let gpu_extra = format!("kernel_log = \"{}\"", kmsg.display());
    c.start_fake_gpu_agent("worker", calm_gpu(), &worker_extra, &gpu_extra);
    wait_ray(&c, "worker", "joined", SECS(120), |r| {
        r.state == RayState::Running
    })
    .await;
    wait_ray_nodes(&venv, &address, 2, SECS(60)).await;

    // 1. Healthy: the worker takes tasks, pinned and spread.
    let before = placement(
        &venv,
        &driver_user,
        c.dir.path(),
        &address,
        &worker_ray_temp,
        None,
    )
    .await;
    let first = before.worker.clone().expect("the GCS lists the worker");
    let head = before.head.clone().expect("the GCS lists the head");
    assert_eq!(before.pinned.as_deref(), Some(first.as_str()), "{before:?}");
    assert!(
        before.spread.contains(&first),
        "no spread task ran on the worker before the fault: {before:?}"
    );
    let n = c.node("worker").await.unwrap();
    assert_eq!(n.health, HealthStatus::Healthy, "{:?}", n.reasons);
    assert!(n.cordon.is_none(), "{:?}", n.cordon);

    // 2. The GPU falls off the bus.
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&kmsg)
            .unwrap();
        f.write_all(XID_79.as_bytes()).unwrap();
    }
    let (_, to_unhealthy) = c
        .wait_node("worker", "unhealthy", SECS(30), |n| {
            n.health == HealthStatus::Unhealthy
        })
        .await;
    let unhealthy_at = Instant::now();
    let (n, _) = c
        .wait_node("worker", "cordoned and drained in Ray", SECS(60), |n| {
            ray_drain_of(n).is_some_and(|d| d.state == "drained")
                && ray_of(n).is_some_and(|r| r.state == RayState::Drained)
        })
        .await;
    let drained_after = unhealthy_at.elapsed();
    println!(
        "XID 79 seen as unhealthy after {to_unhealthy:?}; unhealthy → cordoned and Ray drained after {drained_after:?}"
    );
    assert!(
        drained_after + Duration::from_millis(500) >= DRAIN_AFTER,
        "drained {drained_after:?} after turning unhealthy, before drain_after ({DRAIN_AFTER:?})"
    );
    let cordon = n.cordon.clone().unwrap();
    assert_eq!(cordon.by, "policy");
    assert!(cordon.reason.contains("XID 79"), "{cordon:?}");
    assert!(!cordon.resuming, "{cordon:?}");
    assert_eq!(
        cordon.drains.len(),
        1,
        "only Ray drains this node: {cordon:?}"
    );
    let ray = ray_of(&n).unwrap();
    assert_eq!((ray.pid, ray.restarts), (None, 0), "{ray:?}");
    let events = remediation_events(&c, "worker").await;
    let kinds: Vec<&str> = events.iter().map(|(to, _)| to.as_str()).collect();
    assert_eq!(kinds, ["cordon", "drain"], "{events:?}");
    assert!(
        events[0].1.contains("XID 79") && events[0].1.contains("ray"),
        "{events:?}"
    );
    // The agent drained exactly the Ray node the driver saw taking tasks.
    assert!(
        events[1].1.contains(&format!("drained Ray node {first}")),
        "{events:?}"
    );
    assert!(c.node("head").await.unwrap().cordon.is_none());

    // 3. Drained: Ray shut the worker's node down, and new tasks run on the head only.
    let during = placement(
        &venv,
        &driver_user,
        c.dir.path(),
        &address,
        &worker_ray_temp,
        Some(&first),
    )
    .await;
    assert_eq!(
        during.worker, None,
        "a live worker node while drained: {during:?}"
    );
    assert_eq!(during.alive, 1, "{during:?}");
    assert_eq!(during.old_state.as_deref(), Some("DEAD"), "{during:?}");
    assert_eq!(
        during.old_death.as_deref(),
        Some("AUTOSCALER_DRAIN_PREEMPTED"),
        "{during:?}"
    );
    assert!(
        !during.spread.is_empty() && during.spread.iter().all(|n| *n == head),
        "a task ran elsewhere than the head ({head}) while the worker was drained: {during:?}"
    );
    assert!(
        processes_naming(&worker_state.join("ray")).is_empty(),
        "the drained worker left processes: {:?}",
        processes_naming(&worker_state.join("ray"))
    );

    // XID 79 holds: well past resume_after the node is still cordoned, its worker drained.
    tokio::time::sleep(RESUME_AFTER + SECS(1)).await;
    let n = c.node("worker").await.unwrap();
    assert_eq!(n.health, HealthStatus::Unhealthy, "{:?}", n.reasons);
    assert!(
        ray_drain_of(&n).is_some_and(|d| d.state == "drained"),
        "{:?}",
        n.cordon
    );
    assert_eq!(ray_of(&n).map(|r| r.state), Some(RayState::Drained));

    // 4. The reboot.
    let status = c.signal_agent("worker", libc::SIGTERM);
    assert!(status.success(), "the worker's agent exited with {status}");
    let gpu_state = worker_state.join(corral_node::health::state::FILE_NAME);
    let held = std::fs::read_to_string(&gpu_state).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (the agent keeps a held XID there)",
            gpu_state.display()
        )
    });
    assert!(
        held.contains("79"),
        "the GPU state file does not hold XID 79: {held}"
    );
    std::fs::remove_file(&gpu_state).unwrap();
    std::fs::write(&kmsg, "").unwrap();
    c.start_fake_gpu_agent("worker", calm_gpu(), &worker_extra, &gpu_extra);
    let (_, to_healthy) = c
        .wait_node("worker", "back and healthy", SECS(60), |n| {
            n.connected && n.liveness == Liveness::Ready && n.health == HealthStatus::Healthy
        })
        .await;
    let healthy_at = Instant::now();
    let (n, _) = c
        .wait_node("worker", "uncordoned", SECS(120), |n| n.cordon.is_none())
        .await;
    let uncordoned_after = healthy_at.elapsed();
    println!(
        "rebooted node healthy after {to_healthy:?}; healthy → uncordoned after {uncordoned_after:?}"
    );
    assert!(
        uncordoned_after + Duration::from_millis(500) >= RESUME_AFTER,
        "uncordoned {uncordoned_after:?} after turning healthy, before resume_after ({RESUME_AFTER:?})"
    );
    assert_eq!(n.health, HealthStatus::Healthy, "{:?}", n.reasons);
    let events = remediation_events(&c, "worker").await;
    let kinds: Vec<&str> = events.iter().map(|(to, _)| to.as_str()).collect();
    assert_eq!(
        kinds,
        ["cordon", "drain", "drain", "resuming", "resume", "uncordon"],
        "{events:?}"
    );
    // The restarted agent forgot its drain; the coordinator drained its worker again on
    // the new connection, so the worker stayed out until the resume restarted it.
    assert!(events[2].1.contains("drained in ray"), "{events:?}");
    assert!(events[4].1.contains("restarted"), "{events:?}");
    for (to, message) in &events {
        println!("remediation event {to}: {message}");
    }

    // 5. The worker runs (the resume restarted it) and Ray has it back as a new node.
    let (r, _) = wait_ray(&c, "worker", "running again", SECS(120), |r| {
        r.state == RayState::Running
    })
    .await;
    wait_ray_nodes(&venv, &address, 2, SECS(60)).await;
    let after = placement(
        &venv,
        &driver_user,
        c.dir.path(),
        &address,
        &worker_ray_temp,
        Some(&first),
    )
    .await;
    let second = after
        .worker
        .clone()
        .expect("a live worker node after the reboot");
    assert_ne!(second, first, "{after:?}");
    assert_eq!(after.alive, 2, "{after:?}");
    // The drained node and the resumed one (and one more if the rebooted agent's worker
    // joined before the coordinator drained it again).
    assert!((2..=3).contains(&after.worker_nodes), "{after:?}");
    assert_eq!(after.pinned.as_deref(), Some(second.as_str()), "{after:?}");
    assert!(
        after.spread.contains(&second),
        "no spread task ran on the rejoined worker: {after:?}"
    );
    let n = c.node("worker").await.unwrap();
    let now = ray_of(&n).unwrap();
    assert_eq!(
        (now.state, now.pid, now.restarts),
        (RayState::Running, r.pid, r.restarts),
        "the worker was restarted after it was running again"
    );
    assert!(n.cordon.is_none() && c.node("head").await.unwrap().cordon.is_none());

    for name in ["worker", "head"] {
        let status = c.signal_agent(name, libc::SIGTERM);
        assert!(status.success(), "{name} exited with {status}");
    }
}
