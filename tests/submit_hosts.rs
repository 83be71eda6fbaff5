//! Jobs stay tracked when their submit host is away: two login nodes of one real Slurm
//! (tests/support/slurm.rs), two real `corral agent` processes with different node
//! names on this machine, both loading the real `slurm` plugin (the WebAssembly
//! component built by `cargo xtask plugins`) and both authorized for it in the
//! coordinator's `[schedulers.slurm] nodes`, in that order.
//!
//! The agent a job was submitted through is killed with SIGKILL (nothing said on the
//! way out: the coordinator learns it from missed beats), and the job is still polled
//! to its final state, and cancelled, through the other host. With both hosts gone a
//! job keeps its last known state and says why.
//!
//! Nothing here is faked. Without Slurm or the built plugin the test prints
//! `SKIPPED: <why>` and passes, except under `CI=true`, where that is a failure.

use corral_test_support as support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::slurm::{built_plugins_dir, Slurm};
use support::*;

/// The two login nodes, in the order the coordinator's config prefers them.
const FIRST: &str = "login-a";
const SECOND: &str = "login-b";

/// A coordinator polling every 300 ms with `[schedulers.slurm] nodes = [FIRST, SECOND]`
/// and both agents hosting the built slurm plugin; returns once both announced it.
async fn cluster(plugins: &Path) -> Cluster {
    let mut c = Cluster::new();
    // A short call timeout: a host killed outright still looks connected until QUIC's
    // idle timeout, and a call to it fails only when it times out.
    c.coordinator_extra =
        "[jobs]\npoll_interval = \"300ms\"\nmax_backoff = \"2s\"\ncall_timeout = \"3s\"".into();
    c.authorize_scheduler("slurm", &[FIRST, SECOND]);
    c.start_coordinator();
    for name in [FIRST, SECOND] {
        // Each agent its own compile cache: two processes never write one.
        let extra = format!(
            "[plugins]\ndir = \"{}\"\nenable = [\"slurm\"]\ncache_dir = \"plugin-cache-{name}\"\n{}",
            plugins.display(),
            runs_as_runner_keys()
        );
        c.start_agent(name, &extra);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let v: Value = c.get("/api/v1/plugins").await.json().await.unwrap();
        let hosting = |name: &str| {
            v.as_array().unwrap().iter().any(|n| {
                n["node"] == name
                    && n["connected"] == true
                    && n["loaded"]
                        .as_array()
                        .is_some_and(|l| l.iter().any(|p| p["info"]["name"] == "slurm"))
            })
        };
        if hosting(FIRST) && hosting(SECOND) {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "the agents never both announced the slurm plugin: {v}\n--- {FIRST} log ---\n{}\n--- {SECOND} log ---\n{}",
            c.agent_log(FIRST),
            c.agent_log(SECOND)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `corral COMMAND --socket PATH ARGS...`, off the async runtime.
async fn cli(c: &Cluster, args: &[&str]) -> std::process::Output {
    let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    v.splice(1..1, ["--socket".to_string(), c.socket()]);
    run_async(v).await
}

fn logs(c: &Cluster) -> String {
    format!(
        "--- coordinator log ---\n{}\n--- {FIRST} log ---\n{}\n--- {SECOND} log ---\n{}",
        c.coordinator_log(),
        c.agent_log(FIRST),
        c.agent_log(SECOND)
    )
}

async fn cli_json(c: &Cluster, args: &[&str]) -> Value {
    let out = cli(c, args).await;
    assert!(
        out.status.success(),
        "corral {args:?} failed: {}\n{}",
        stderr(&out),
        logs(c)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("corral {args:?}: {e}: {}", stdout(&out)))
}

/// `corral submit --scheduler slurm --via FIRST --json -- CMD...` → the job id.
async fn submit_via_first(c: &Cluster, name: &str, command: &[&str]) -> String {
    // Slurm writes `slurm-ID.out` in the job's directory: keep it out of the checkout.
    let tmp = std::env::temp_dir().to_string_lossy().into_owned();
    let mut args = vec![
        "submit",
        "--scheduler",
        "slurm",
        "--via",
        FIRST,
        "--json",
        "--chdir",
        tmp.as_str(),
        "--name",
        name,
        "--",
    ];
    args.extend(command);
    let job = cli_json(c, &args).await;
    assert_eq!(job["phase"], "submitted", "{job}");
    assert_eq!(job["node"], FIRST, "{job}");
    job["id"].as_str().unwrap().to_string()
}

/// The job as the API shows it (`GET /api/v1/jobs/ID`), with its history.
async fn api_job(c: &Cluster, id: &str) -> Value {
    let r = c.get(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(r.status(), 200, "GET /api/v1/jobs/{id}");
    r.json().await.unwrap()
}

/// Polls the API until `pred` holds for job `id`.
async fn wait_job(
    c: &Cluster,
    id: &str,
    what: &str,
    within: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let start = Instant::now();
    loop {
        let job = api_job(c, id).await;
        if pred(&job) {
            return job;
        }
        if start.elapsed() > within {
            panic!("{id} not {what} within {within:?}: {job:#}\n{}", logs(c));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn word(job: &Value) -> &str {
    job["state_word"].as_str().unwrap_or("")
}

fn notes(job: &Value) -> Vec<String> {
    job["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["message"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_is_polled_to_its_end_through_another_host_when_its_submit_host_is_killed() {
    let Some(plugins) = built_plugins_dir("slurm") else {
        return;
    };
    let Some(_slurm) = Slurm::start() else {
        return;
    };
    let mut c = cluster(&plugins).await;

    // Three jobs through the first login node: one that ends by itself, one to cancel,
    // one still running when every host is gone.
    let ending = submit_via_first(&c, "ends", &["/bin/sleep", "6"]).await;
    let to_cancel = submit_via_first(&c, "cancelled", &["/bin/sleep", "300"]).await;
    let stranded = submit_via_first(&c, "stranded", &["/bin/sleep", "300"]).await;
    for id in [&ending, &to_cancel, &stranded] {
        let job = wait_job(&c, id, "running", Duration::from_secs(60), |j| {
            word(j) == "running"
        })
        .await;
        assert_eq!(
            job["polled_via"], FIRST,
            "polled through its submit host: {job}"
        );
    }

    // kill -9: the agent says nothing; the coordinator finds out from missed beats.
    c.signal_agent(FIRST, libc::SIGKILL);
    let job = wait_job(
        &c,
        &ending,
        "succeeded through the other host",
        Duration::from_secs(60),
        |j| word(j) == "succeeded",
    )
    .await;
    assert_eq!(job["node"], FIRST, "still submitted through {FIRST}: {job}");
    assert_eq!(job["polled_via"], SECOND, "{job}");
    assert!(job["poll_error"].is_null(), "{job}");
    let n = notes(&job);
    assert!(
        n.iter().any(|m| m
            == &format!(
                "status through node {SECOND}, another host of slurm (submitted through {FIRST})"
            )),
        "the history tells the story: {n:?}"
    );
    // `corral jobs` lists it finished; `corral status` says who answered.
    let table = stdout(&cli(&c, &["jobs"]).await);
    let line = table
        .lines()
        .find(|l| l.starts_with(&format!("{ending} ")))
        .unwrap_or_else(|| panic!("{ending} not listed:\n{table}"));
    assert!(line.contains("succeeded") && line.contains(FIRST), "{line}");
    let detail = stdout(&cli(&c, &["status", &ending]).await);
    assert!(
        detail.contains(&format!("Polled via: {SECOND}")),
        "{detail}"
    );

    // A cancel goes through the host that is left, and Slurm agrees.
    let out = cli(&c, &["cancel", &to_cancel]).await;
    assert!(out.status.success(), "{}\n{}", stderr(&out), logs(&c));
    let job = wait_job(&c, &to_cancel, "cancelled", Duration::from_secs(30), |j| {
        word(j) == "cancelled"
    })
    .await;
    assert!(
        notes(&job).contains(&format!(
            "cancel requested through node {SECOND} (submitted through {FIRST})"
        )),
        "{job:#}"
    );

    // Every host of the instance gone: the job keeps its last state and says why.
    c.signal_agent(SECOND, libc::SIGKILL);
    let why = format!(
        "no host of scheduler slurm is connected (submitted through {FIRST}); last known state shown"
    );
    let job = wait_job(
        &c,
        &stranded,
        "shown with the reason it is not refreshed",
        Duration::from_secs(60),
        |j| j["poll_error"] == why.as_str(),
    )
    .await;
    assert_eq!(word(&job), "running", "the last known state: {job}");
    let detail = stdout(&cli(&c, &["status", &stranded]).await);
    assert!(
        detail.contains(&format!("Not refreshed: {why}")),
        "{detail}"
    );
    let out = cli(&c, &["cancel", &stranded]).await;
    assert!(
        !out.status.success(),
        "a cancel with no host cannot succeed"
    );
    assert!(
        stderr(&out).contains("no host of scheduler slurm is connected"),
        "{}",
        stderr(&out)
    );
}
