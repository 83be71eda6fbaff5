//! Jobs run as the user who submitted them: real users (alice, bob, made by
//! [`support::users`]), each running the real `corral` CLI against the coordinator's Unix
//! socket, a real agent running as root with its default rules for whom programs run
//! as, the real scheduler plugins, and a real single-node Slurm and Grid Engine. Each
//! job writes who it ran as; the tests read that back.
//!
//! The agent's service user (for `status`, `list`, `logs`) is `nobody` here: the
//! packages create `corral`, which a test machine does not have.
//!
//! Needs root (to switch users); off CI without root, Slurm or Grid Engine the tests
//! print `SKIPPED: <why>` and pass, under `CI=true` that is a failure.

use corral_test_support as support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::slurm::{built_plugins_dir, ci, Slurm};
use support::users::ensure_user;
use support::*;

/// One test at a time touches the shared Slurm and Grid Engine.
static SCHEDULERS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The corral binary where every user can run it (the build's target dir may sit in
/// root's home, which others cannot enter).
fn shared_corral() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("corral-identity-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let bin = dir.join("corral");
        std::fs::copy(env!("CARGO_BIN_EXE_corral"), &bin).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        bin
    })
    .clone()
}

/// `corral ARGS --socket SOCKET` run as `user` (through `runuser`, a login-less switch
/// like a user's own shell would be).
async fn cli_as(c: &Cluster, user: &str, args: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new("runuser");
    cmd.args(["-u", user, "--"])
        .arg(shared_corral())
        .args(&args[..1])
        .args(["--socket", &c.socket()])
        .args(&args[1..])
        .env_remove("CORRAL_API")
        .env_remove("CORRAL_TOKEN")
        .env_remove("CORRAL_SOCKET");
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

async fn json_as(c: &Cluster, user: &str, args: &[&str]) -> Value {
    let out = cli_as(c, user, args).await;
    assert!(
        out.status.success(),
        "{user}: corral {args:?}: {}\n--- coordinator log ---\n{}",
        stderr(&out),
        c.coordinator_log()
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A directory every user may write to, for the jobs' output.
fn shared_dir(c: &Cluster) -> PathBuf {
    let d = c.path("shared");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o1777)).unwrap();
    d
}

/// A coordinator and one root agent, `node-a`, hosting `plugin` with the node's default
/// job rules; other users reach the socket (the cluster's directory is made
/// traversable; the socket itself is open to every local user).
async fn cluster(plugins: &Path, plugin: &str, agent_env: &[(&str, &str)]) -> Cluster {
    let mut c = Cluster::new();
    c.coordinator_extra = "[jobs]\npoll_interval = \"300ms\"\nmax_backoff = \"2s\"".into();
    std::fs::set_permissions(c.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    c.start_coordinator();
    let extra = format!(
        "[plugins]\ndir = \"{}\"\nenable = [\"{plugin}\"]\nservice_user = \"nobody\"\n",
        plugins.display()
    );
    c.start_agent_with_env("node-a", &extra, agent_env);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let v: Value = c.get("/api/v1/plugins").await.json().await.unwrap();
        if v.as_array()
            .unwrap()
            .iter()
            .any(|n| n["node"] == "node-a" && !n["announced_ms"].is_null())
        {
            return c;
        }
        assert!(Instant::now() < deadline, "no plugins announced: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for `file` to hold a line, and returns it.
async fn written(file: &Path, c: &Cluster) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(t) = std::fs::read_to_string(file) {
            if t.ends_with('\n') {
                return t.trim().to_string();
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} never written\n--- agent log ---\n{}",
            file.display(),
            c.agent_log("node-a")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn root_or_skip() -> bool {
    if runner() == "root" {
        return true;
    }
    if ci() {
        panic!("CI=true, so this must run, but it needs root to switch users");
    }
    println!("SKIPPED: running jobs as their owners needs root");
    false
}

/// Submits, as `user`, a job that writes `id -un` and `$HOME` to `out`.
async fn submit_whoami(c: &Cluster, user: &str, scheduler: &str, out: &Path) -> String {
    let script = format!("echo \"$(id -un) $(id -u) $HOME\" > {}", out.display());
    let dir = out.parent().unwrap().to_str().unwrap().to_string();
    let job = json_as(
        c,
        user,
        &[
            "submit",
            "--scheduler",
            scheduler,
            "--json",
            "--chdir",
            &dir,
            "--",
            "/bin/sh",
            "-c",
            &script,
        ],
    )
    .await;
    assert_eq!(job["phase"], "submitted", "{job}");
    assert_eq!(job["owner"], user, "{job}");
    job["id"].as_str().unwrap().to_string()
}

/// The owner checks every scheduler shares: bob neither sees alice's job in full nor
/// cancels it; an admin (root on the socket) does both.
async fn only_owner_and_admin_manage(c: &Cluster, alice_job: &str) {
    let out = cli_as(c, "bob", &["status", alice_job, "--json"]).await;
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("{alice_job} belongs to alice")),
        "{}",
        stderr(&out)
    );
    let out = cli_as(c, "bob", &["cancel", alice_job]).await;
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    // bob's listing shows the job without its detail.
    let listed = json_as(c, "bob", &["jobs", "--json"]).await;
    let seen = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["id"] == alice_job)
        .unwrap();
    assert_eq!(seen["redacted"], true, "{seen}");
    assert_eq!(seen["spec"]["executable"], "", "{seen}");
    let mine = json_as(c, "bob", &["jobs", "--mine", "--json"]).await;
    assert!(
        mine.as_array().unwrap().iter().all(|j| j["owner"] == "bob"),
        "{mine}"
    );
    // alice sees hers in full; root (admin) sees and cancels it.
    let own = json_as(c, "alice", &["status", alice_job, "--json"]).await;
    assert_eq!(own["spec"]["executable"], "/bin/sleep", "{own}");
    let out = run_async(vec![
        "cancel".into(),
        "--socket".into(),
        c.socket(),
        alice_job.into(),
    ])
    .await;
    assert!(out.status.success(), "admin cancel: {}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_owned_by_root_is_refused_by_the_node() {
    if !root_or_skip() {
        return;
    }
    let Some(plugins) = built_plugins_dir("slurm") else {
        return;
    };
    let c = cluster(&plugins, "slurm", &[]).await;
    let out = run_async(vec![
        "submit".into(),
        "--socket".into(),
        c.socket(),
        "--scheduler".into(),
        "slurm".into(),
        "--".into(),
        "/bin/true".into(),
    ])
    .await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("jobs owned by root are refused on this node"),
        "{}",
        stderr(&out)
    );
}

/// alice submits through the socket to `scheduler` on `c`: her job runs as her (uid,
/// home), and a second, long one is hers alone to see and cancel (with admins).
async fn alice_runs_as_alice(c: &Cluster, scheduler: &str, alice: &support::users::TestUser) {
    let shared = shared_dir(c);
    let out = shared.join(format!("{scheduler}-who"));
    let id = submit_whoami(c, "alice", scheduler, &out).await;
    assert_eq!(
        written(&out, c).await,
        format!("alice {} {}", alice.uid, alice.home.display())
    );
    // A job that stays queued or running long enough to be cancelled by someone.
    let long = json_as(
        c,
        "alice",
        &[
            "submit",
            "--scheduler",
            scheduler,
            "--json",
            "--chdir",
            shared.to_str().unwrap(),
            "--",
            "/bin/sleep",
            "300",
        ],
    )
    .await;
    only_owner_and_admin_manage(c, long["id"].as_str().unwrap()).await;
    let done = json_as(c, "alice", &["status", &id, "--json"]).await;
    assert_eq!(done["owner"], "alice", "{done}");
}

#[tokio::test(flavor = "multi_thread")]
async fn job_submitted_by_alice_through_the_socket_runs_as_alice_under_slurm() {
    if !root_or_skip() {
        return;
    }
    let _guard = SCHEDULERS.lock().await;
    let (Some(alice), Some(_bob)) = (ensure_user("alice"), ensure_user("bob")) else {
        return;
    };
    let Some(plugins) = built_plugins_dir("slurm") else {
        return;
    };
    let Some(_slurm) = Slurm::start() else {
        return;
    };
    let c = cluster(&plugins, "slurm", &[]).await;
    alice_runs_as_alice(&c, "slurm", &alice).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn job_submitted_by_alice_through_the_socket_runs_as_alice_under_grid_engine() {
    if !root_or_skip() {
        return;
    }
    let _guard = SCHEDULERS.lock().await;
    let (Some(alice), Some(_bob)) = (ensure_user("alice"), ensure_user("bob")) else {
        return;
    };
    let Some(plugins) = built_plugins_dir("sge") else {
        return;
    };
    let Some(_sge) = support::sge::Sge::start() else {
        return;
    };
    let c = cluster(&plugins, "sge", &support::sge::env()).await;
    alice_runs_as_alice(&c, "sge", &alice).await;
}
