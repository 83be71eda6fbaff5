//! The ray-jobs plugin, built for wasm by `cargo xtask plugins`, loaded by the real plugin
//! host and driving the Ray Jobs REST API of a real Ray head.
//!
//! The head is started here as `ray start --head --block` from the Ray venv
//! (`$CORRAL_RAY_VENV`, else `~/.cache/corral/ray-2.60.0` as scripts/test.sh makes it)
//! through corral's own Ray process helper: its own process group, ports and short temp
//! dir; stopped as a group at the end, and killed with everything naming its temp dir if
//! the test fails first. The manifest is written here to grant exactly that head's
//! dashboard. Without the venv or the built plugin: a failure under CI=true, "SKIPPED"
//! elsewhere.

use corral_test_support as support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use corral_node::ray::process::{leftovers, spawn, RayProcess};
use corral_proto::job::{JobSpec, JobState, JobStatus, PluginCall, PluginError, PluginReply};
use corral_sandbox::plugins::{PluginHost, PluginsConfig};
use support::free_tcp_port;
use support::slurm::{built_plugins_dir, skip};

fn ray_venv() -> Option<PathBuf> {
    let venv = std::env::var_os("CORRAL_RAY_VENV")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/corral/ray-2.60.0"))
        })?;
    if venv.join("bin/ray").is_file() {
        Some(venv)
    } else {
        skip(&format!(
            "no Ray venv at {} (set CORRAL_RAY_VENV; scripts/test.sh makes one with ray[default])",
            venv.display()
        ))
    }
}

/// Kills what is left of the head if the test ends before stopping it.
struct Cleanup {
    pgid: i32,
    temp: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        // SAFETY: kill(2) of the process group this test created.
        unsafe {
            libc::kill(-self.pgid, libc::SIGKILL);
        }
        for pid in leftovers(Some(self.pgid), &self.temp) {
            // SAFETY: plain kill(2) of a leftover of this test's head.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

async fn start_head(venv: &Path, temp: &Path, dashboard_port: u16) -> RayProcess {
    let args: Vec<String> = [
        "start",
        "--head",
        "--block",
        "--port",
        &free_tcp_port().to_string(),
        "--dashboard-host",
        "127.0.0.1",
        "--dashboard-port",
        &dashboard_port.to_string(),
        "--ray-client-server-port",
        &free_tcp_port().to_string(),
        "--dashboard-agent-listen-port",
        &free_tcp_port().to_string(),
        "--min-worker-port=29500",
        "--max-worker-port=29999",
        "--num-cpus",
        "1",
        "--temp-dir",
        temp.to_str().unwrap(),
        "--disable-usage-stats",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let cwd = temp.join("cwd");
    spawn(
        &venv.join("bin/ray"),
        &args,
        &cwd,
        &temp.join("head.log"),
        "head",
    )
    .expect("starting ray")
}

async fn call(host: &PluginHost, c: PluginCall) -> Result<PluginReply, PluginError> {
    host.call("ray-jobs", c, Some(support::runner())).await
}

async fn status(host: &PluginHost, id: &str) -> JobStatus {
    match call(host, PluginCall::Status(vec![id.into()])).await {
        Ok(PluginReply::Statuses(mut v)) if v.len() == 1 => v.remove(0),
        other => panic!("status {id}: {other:?}"),
    }
}

async fn wait(
    host: &PluginHost,
    id: &str,
    what: &str,
    pred: impl Fn(&JobStatus) -> bool,
) -> JobStatus {
    let start = Instant::now();
    loop {
        let s = status(host, id).await;
        if pred(&s) {
            return s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "Ray job {id} not {what} within 120 s: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn submit(host: &PluginHost, spec: JobSpec) -> String {
    match call(host, PluginCall::Submit(spec)).await {
        Ok(PluginReply::Submitted(id)) => id,
        other => panic!("submit: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ray_jobs_plugin_submits_follows_reads_and_stops_real_ray_jobs() {
    let Some(venv) = ray_venv() else { return };
    let Some(built) = built_plugins_dir("ray-jobs") else {
        return;
    };
    // Ray's socket paths must stay short: a temp dir directly under /tmp.
    let temp = tempfile::Builder::new()
        .prefix("rj")
        .tempdir_in("/tmp")
        .unwrap();
    let dash = free_tcp_port();

    // The plugin with a manifest granting exactly this head's dashboard.
    let plugins = temp.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::copy(built.join("ray-jobs.wasm"), plugins.join("ray-jobs.wasm")).unwrap();
    std::fs::write(
        plugins.join("ray-jobs.toml"),
        format!(
            "[plugin]\nname = \"ray-jobs\"\n[grants]\nprograms = []\nhosts = [\"127.0.0.1:{dash}\"]\n[config]\ndashboard = \"http://127.0.0.1:{dash}\"\n[limits]\ncall_timeout = \"30s\"\n"
        ),
    )
    .unwrap();
    let (host, failures) = PluginHost::load(&support::runs_as_runner(PluginsConfig {
        dir: Some(plugins),
        enable: vec!["ray-jobs".into()],
        ..PluginsConfig::default()
    }));
    assert!(
        failures.is_empty(),
        "the ray-jobs plugin did not load: {failures:?}"
    );

    let ray_temp = temp.path().join("ray");
    let mut head = start_head(&venv, &ray_temp, dash).await;
    let cleanup = Cleanup {
        pgid: head.pid as i32,
        temp: ray_temp.clone(),
    };
    tokio::time::timeout(Duration::from_secs(90), head.started.recv())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "ray head did not start: {}",
                std::fs::read_to_string(ray_temp.join("head.log")).unwrap_or_default()
            )
        });
    // The dashboard answers a little after Ray says it started.
    let start = Instant::now();
    while !matches!(
        call(&host, PluginCall::List).await,
        Ok(PluginReply::Statuses(_))
    ) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the Ray dashboard never answered"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // 1. Arguments full of shell syntax reach the program literally; the job succeeds
    //    and its output is in the logs.
    let args = [
        "it's",
        "$(touch /tmp/corral-ray-pwned)",
        "a  b",
        "`id`",
        "; exit 7",
    ];
    let mut spec = JobSpec {
        executable: "printf".into(),
        arguments: vec!["<%s>\\n".into()],
        directory: Some(std::env::temp_dir().display().to_string()),
        name: Some("literal $(x)".into()),
        ..JobSpec::default()
    };
    spec.arguments.extend(args.iter().map(|s| s.to_string()));
    let id = submit(&host, spec).await;
    let s = wait(&host, &id, "ended", |s| s.state.is_terminal()).await;
    assert_eq!((s.state, s.exit_code), (JobState::Succeeded, Some(0)));
    let logs = match call(
        &host,
        PluginCall::Logs {
            id: id.clone(),
            max_bytes: 64 * 1024,
        },
    )
    .await
    {
        Ok(PluginReply::Text(t)) => t,
        other => panic!("logs: {other:?}"),
    };
    for a in args {
        assert!(
            logs.contains(&format!("<{a}>\n")),
            "{a:?} not literal in the logs:\n{logs}"
        );
    }
    assert!(
        !Path::new("/tmp/corral-ray-pwned").exists(),
        "a command substitution ran"
    );

    // 2. A failing entrypoint is failed, with its exit code.
    let id = submit(
        &host,
        JobSpec {
            executable: "sh".into(),
            arguments: vec!["-c".into(), "exit 3".into()],
            ..JobSpec::default()
        },
    )
    .await;
    let s = wait(&host, &id, "ended", |s| s.state.is_terminal()).await;
    assert!(matches!(s.state, JobState::Failed { .. }), "{s:?}");
    assert_eq!(s.exit_code, Some(3));

    // 3. A long job runs, is stopped, and stopping it again is not an error.
    let id = submit(
        &host,
        JobSpec {
            executable: "sleep".into(),
            arguments: vec!["300".into()],
            ..JobSpec::default()
        },
    )
    .await;
    wait(&host, &id, "running", |s| s.state == JobState::Running).await;
    assert!(matches!(
        call(&host, PluginCall::Cancel(id.clone())).await,
        Ok(PluginReply::Done)
    ));
    let s = wait(&host, &id, "stopped", |s| s.state.is_terminal()).await;
    assert_eq!(s.state, JobState::Cancelled, "{s:?}");
    assert!(matches!(
        call(&host, PluginCall::Cancel(id.clone())).await,
        Ok(PluginReply::Done)
    ));

    // 4. An id the head never issued is unknown, not an error and not a success.
    let s = status(&host, "raysubmit_nosuchjob").await;
    assert_eq!(s.state, JobState::Unknown, "{s:?}");

    let killed = head.stop(Duration::from_secs(15), &ray_temp).await;
    println!("ray head stopped ({killed} stragglers killed)");
    drop(cleanup);
}
