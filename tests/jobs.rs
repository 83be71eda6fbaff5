//! Jobs through the cluster, end to end: a real coordinator and a real agent process
//! (QUIC, mutual TLS), the real `slurm` plugin (the WebAssembly component built by
//! `cargo xtask plugins`, found in `$CORRAL_PLUGINS_DIR` or `<target dir>/plugins`), and
//! a real single-node Slurm ([`support::slurm`]), driven through the `corral` CLI.
//!
//! Nothing here is faked. Without Slurm or the built plugin the Slurm tests print
//! `SKIPPED: <why>` and pass, except under `CI=true`, where that is a failure. The tests
//! that need neither (errors without any plugin) always run.
//!
//! The Slurm tests hold [`SLURM`] while they run: the harness cancels every job of the
//! test partition when it stops, which must not hit another test's jobs.

use corral_test_support as support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::slurm::{built_plugins_dir, Slurm};
use support::*;

static SLURM: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A coordinator polling every 300 ms and one agent, `node-a`, hosting `plugins` (the
/// built ones in `dir`); returns once the agent announced them.
async fn cluster(dir: Option<&Path>, plugins: &[&str]) -> Cluster {
    let mut c = Cluster::new();
    c.coordinator_extra = "[jobs]\npoll_interval = \"300ms\"\nmax_backoff = \"2s\"".into();
    c.start_coordinator();
    let extra = match dir {
        Some(d) => format!(
            "[plugins]\ndir = \"{}\"\nenable = {:?}\ncache_dir = \"plugin-cache\"\n{}",
            d.display(),
            plugins,
            runs_as_runner_keys()
        ),
        None => String::new(),
    };
    c.start_agent("node-a", &extra);
    c.wait_plugins_announced("node-a", Duration::from_secs(120))
        .await;
    c
}

/// `corral COMMAND --socket PATH ARGS...`, off the async runtime (`--socket` right
/// after the subcommand: after `--` it would be part of the job's command).
async fn cli(c: &Cluster, args: &[&str]) -> std::process::Output {
    let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    v.splice(1..1, ["--socket".to_string(), c.socket()]);
    run_async(v).await
}

async fn cli_json(c: &Cluster, args: &[&str]) -> Value {
    let out = cli(c, args).await;
    assert!(
        out.status.success(),
        "corral {args:?} failed: {}\n--- coordinator log ---\n{}",
        stderr(&out),
        c.coordinator_log()
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("corral {args:?}: {e}: {}", stdout(&out)))
}

/// `corral submit --json ARGS` → the job id.
async fn submit(c: &Cluster, args: &[&str]) -> String {
    let mut all = vec!["submit", "--scheduler", "slurm", "--json"];
    // Slurm writes `slurm-ID.out` in the job's directory: keep it out of the checkout.
    let tmp = std::env::temp_dir().to_string_lossy().into_owned();
    if !args.contains(&"--chdir") {
        all.extend(["--chdir", tmp.as_str()]);
    }
    all.extend(args);
    let job = cli_json(c, &all).await;
    assert_eq!(job["phase"], "submitted", "{job}");
    job["id"].as_str().unwrap().to_string()
}

/// Polls `corral status ID --json` until `pred` holds.
async fn wait_job(
    c: &Cluster,
    id: &str,
    what: &str,
    within: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let start = Instant::now();
    loop {
        let job = cli_json(c, &["status", id, "--json"]).await;
        if pred(&job) {
            return job;
        }
        if start.elapsed() > within {
            panic!(
                "{id} not {what} within {within:?}: {job:#}\n--- coordinator log ---\n{}\n--- agent log ---\n{}",
                c.coordinator_log(),
                c.agent_log("node-a")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn word(job: &Value) -> &str {
    job["state_word"].as_str().unwrap_or("")
}

fn history(job: &Value) -> Vec<String> {
    job["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["state"].as_str().unwrap().to_string())
        .collect()
}

/// The time of the first history entry in one of `states`.
fn first_at(job: &Value, states: &[&str]) -> Option<u64> {
    job["history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| states.contains(&t["state"].as_str().unwrap()))
        .map(|t| t["at_ms"].as_u64().unwrap())
}

fn scontrol_job(native: &str) -> String {
    let out = std::process::Command::new("scontrol")
        .args(["show", "job", native])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Slurm and the built plugin, or `None` (after `SKIPPED`, or a panic under CI).
async fn slurm() -> Option<(
    tokio::sync::MutexGuard<'static, ()>,
    Slurm,
    std::path::PathBuf,
)> {
    let guard = SLURM.lock().await;
    let dir = built_plugins_dir("slurm")?;
    let slurm = Slurm::start()?;
    Some((guard, slurm, dir))
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_go_through_the_cli_to_slurm_literally_and_are_tracked_and_cancelled() {
    let Some((_guard, _slurm, plugins)) = slurm().await else {
        return;
    };
    let c = cluster(Some(&plugins), &["slurm"]).await;
    let work = c.path("work");
    std::fs::create_dir_all(&work).unwrap();
    let work_s = work.to_str().unwrap();

    // The plugins listing shows the plugin and its grants.
    let v = cli_json(&c, &["plugins", "--json"]).await;
    let slurm_plugin = &v[0]["loaded"][0];
    assert_eq!(v[0]["node"], "node-a");
    assert_eq!(slurm_plugin["info"]["name"], "slurm");
    assert!(
        slurm_plugin["grants"]["programs"]
            .to_string()
            .contains("sbatch"),
        "{v}"
    );
    let table = stdout(&cli(&c, &["plugins"]).await);
    assert!(
        table.contains("node-a") && table.contains("slurm") && table.contains("loaded"),
        "{table}"
    );

    // A dry run shows the script and records nothing.
    let out = cli(
        &c,
        &[
            "submit",
            "--scheduler",
            "slurm",
            "--dry-run",
            "--name",
            "dry",
            "--",
            "/bin/echo",
            "dry-run-marker",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let script = stdout(&out);
    assert!(
        script.starts_with("#!") && script.contains("dry-run-marker"),
        "{script}"
    );
    assert_eq!(
        cli_json(&c, &["jobs", "--json"]).await,
        serde_json::json!([])
    );

    // Shell metacharacters in the name and the arguments arrive as data.
    let name = "it's \"quoted\"; $(touch name-pwned) `touch name-pwned2` *";
    let args = [
        "a b",
        "$(touch arg-pwned)",
        "`touch arg-pwned2`",
        "*",
        ";",
        "'\"",
        "$HOME",
        "-n",
    ];
    let mut submit_args = vec![
        "--name",
        name,
        "--chdir",
        work_s,
        "--stdout",
        "out.txt",
        "--time",
        "5m",
        "--env",
        "CORRAL_TEST=x y",
        "--",
        "/usr/bin/printf",
        "%s\\n",
    ];
    submit_args.extend(args);
    let id = submit(&c, &submit_args).await;
    let job = wait_job(&c, &id, "succeeded", Duration::from_secs(60), |j| {
        word(j) == "succeeded"
    })
    .await;
    assert_eq!(job["spec"]["name"], name);
    let h = history(&job);
    assert_eq!(h.first().map(String::as_str), Some("submitting"), "{h:?}");
    assert_eq!(h.last().map(String::as_str), Some("succeeded"), "{h:?}");
    if let Some(code) = job["exit_code"].as_i64() {
        assert_eq!(code, 0, "{job}");
    }
    let printed = std::fs::read_to_string(work.join("out.txt")).unwrap();
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines, args, "arguments reached the program literally");
    for f in ["name-pwned", "name-pwned2", "arg-pwned", "arg-pwned2"] {
        assert!(
            !work.join(f).exists(),
            "{f}: a shell interpreted the job's text"
        );
    }

    // Listed, in JSON and as a table.
    let jobs = cli_json(&c, &["jobs", "--json"]).await;
    let listed = jobs
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["id"] == id.as_str())
        .unwrap();
    assert_eq!(listed["scheduler"], "slurm");
    assert_eq!(listed["node"], "node-a");
    let native = listed["native_id"].as_str().unwrap().to_string();
    assert!(native.chars().all(|c| c.is_ascii_digit()), "{native}");
    let table = stdout(&cli(&c, &["jobs"]).await);
    assert!(
        table.starts_with("JOB") && table.contains(&id) && table.contains(&native),
        "{table}"
    );
    let detail = stdout(&cli(&c, &["status", &id]).await);
    assert!(
        detail.contains("succeeded") && detail.contains("History:"),
        "{detail}"
    );

    // Cancel a running job; Slurm agrees; a second cancel is not an error.
    let id = submit(&c, &["--name", "sleeper", "--", "/bin/sleep", "300"]).await;
    wait_job(&c, &id, "running", Duration::from_secs(60), |j| {
        word(j) == "running"
    })
    .await;
    let out = cli(&c, &["cancel", &id]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("cancel requested"),
        "{}",
        stdout(&out)
    );
    let job = wait_job(&c, &id, "cancelled", Duration::from_secs(30), |j| {
        word(j) == "cancelled"
    })
    .await;
    let native = job["native_id"].as_str().unwrap();
    let sc = scontrol_job(native);
    assert!(sc.is_empty() || sc.contains("JobState=CANCELLED"), "{sc}");
    let out = cli(&c, &["cancel", &id]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("already cancelled"),
        "{}",
        stdout(&out)
    );

    // A scheduler nobody hosts: the error names it and lists who hosts what.
    let out = cli(&c, &["submit", "--scheduler", "pbs", "--", "/bin/true"]).await;
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("\"pbs\"") && err.contains("node-a: slurm"),
        "{err}"
    );

    // The coordinator's metrics count jobs by state and plugin calls by outcome.
    let metrics = c.get("/metrics").await.text().await.unwrap();
    for series in [
        "corral_jobs{scheduler=\"slurm\",state=\"succeeded\"} 1.0\n",
        "corral_jobs{scheduler=\"slurm\",state=\"cancelled\"} 1.0\n",
        "corral_plugins_loaded{node=\"node-a\"} 1.0\n",
        "corral_plugin_calls_total{plugin=\"slurm\",export=\"submit\",outcome=\"ok\"} 2\n",
        "corral_plugin_calls_total{plugin=\"slurm\",export=\"cancel\",outcome=\"ok\"} 1\n",
    ] {
        assert!(metrics.contains(series), "{series} missing:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_is_tracked_to_its_end_across_a_coordinator_crash() {
    let Some((_guard, _slurm, plugins)) = slurm().await else {
        return;
    };
    let mut c = cluster(Some(&plugins), &["slurm"]).await;
    let id = submit(&c, &["--name", "survivor", "--", "/bin/sleep", "6"]).await;
    wait_job(&c, &id, "running", Duration::from_secs(60), |j| {
        word(j) == "running"
    })
    .await;

    // kill -9: nothing is flushed on the way out; the submission was durable already.
    c.kill_coordinator();
    c.start_coordinator();
    // The new process resets the agent's dead connection (same stateless-reset key), so
    // the agent is back within a beat or two, not after QUIC's 30 s idle timeout.
    c.wait_node("node-a", "reconnected", Duration::from_secs(8), |n| {
        n.connected
    })
    .await;
    let job = wait_job(
        &c,
        &id,
        "succeeded after the restart",
        Duration::from_secs(60),
        |j| word(j) == "succeeded",
    )
    .await;
    let h = history(&job);
    assert_eq!(h.first().map(String::as_str), Some("submitting"), "{h:?}");
    assert!(h.contains(&"running".to_string()), "{h:?}");
    assert!(
        c.coordinator_log().contains("job table loaded"),
        "{}",
        c.coordinator_log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dependency_given_by_corral_id_waits_for_its_job() {
    let Some((_guard, _slurm, plugins)) = slurm().await else {
        return;
    };
    let c = cluster(Some(&plugins), &["slurm"]).await;
    let first = submit(&c, &["--name", "first", "--", "/bin/sleep", "4"]).await;
    let second = submit(
        &c,
        &["--name", "second", "--after-ok", &first, "--", "/bin/true"],
    )
    .await;
    let a = cli_json(&c, &["status", &first, "--json"]).await;
    let b = cli_json(&c, &["status", &second, "--json"]).await;
    // Recorded by corral id, sent to Slurm as the native one.
    assert_eq!(b["spec"]["dependencies"][0]["job"], first.as_str());
    let native_a = a["native_id"].as_str().unwrap();
    let sc = scontrol_job(b["native_id"].as_str().unwrap());
    assert!(sc.contains(&format!("afterok:{native_a}")), "{sc}");

    let a = wait_job(&c, &first, "succeeded", Duration::from_secs(60), |j| {
        word(j) == "succeeded"
    })
    .await;
    let b = wait_job(&c, &second, "succeeded", Duration::from_secs(60), |j| {
        word(j) == "succeeded"
    })
    .await;
    let a_done = first_at(&a, &["succeeded"]).unwrap();
    let b_started = first_at(&b, &["running", "completing", "succeeded"]).unwrap();
    assert!(
        b_started >= a_done,
        "the dependent job ran before its dependency ended: {b:#}"
    );
    assert!(
        !history(&b).contains(&"running".to_string()) || first_at(&b, &["running"]) >= Some(a_done),
        "{b:#}"
    );

    // A native id where a corral id belongs is a usage error, before any request.
    let out = cli(
        &c,
        &[
            "submit",
            "--scheduler",
            "slurm",
            "--after-ok",
            native_a,
            "--",
            "/bin/true",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("c{native_a}")),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_plugins_job_requests_fail_clearly() {
    let c = cluster(None, &[]).await;
    let out = cli(&c, &["submit", "--scheduler", "slurm", "--", "/bin/true"]).await;
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("\"slurm\"") && err.contains("node-a: none"),
        "names the scheduler and what each node hosts: {err}"
    );
    let out = cli(&c, &["status", "c5"]).await;
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("no job c5"), "{}", stderr(&out));
    let out = cli(&c, &["status", "5"]).await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "a native-looking id is a usage error"
    );
    assert!(stderr(&out).contains("c5"), "{}", stderr(&out));
    let out = cli(&c, &["cancel", "c5"]).await;
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let table = stdout(&cli(&c, &["jobs"]).await);
    assert_eq!(table.lines().count(), 1, "header only: {table}");
    let table = stdout(&cli(&c, &["plugins"]).await);
    assert!(
        table.contains("node-a") && table.contains("none enabled"),
        "{table}"
    );
    let metrics = c.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("corral_plugins_loaded{node=\"node-a\"} 0.0\n"),
        "{metrics}"
    );

    // The API's own answers for a malformed submission.
    let r = c
        .http()
        .post(c.url("/api/v1/jobs"))
        .header("content-type", "application/json")
        .body("{\"scheduler\": \"slurm\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("missing `spec`"));
}

#[test]
fn plugin_check_of_a_file_that_is_not_a_component_says_which_file() {
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("bogus.wasm");
    std::fs::write(&bogus, b"not a component").unwrap();
    let out = run(&["plugin", "check", bogus.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("bogus.wasm"), "{}", stderr(&out));
}
