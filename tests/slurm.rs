//! The Slurm plugin, built for wasm by `cargo xtask plugins`, loaded by the real plugin
//! host and driving a real single-node Slurm (tests/support/slurm.rs).
//!
//! One Slurm serves the whole file, so the behaviours run as scenarios of one test:
//! those that share the node run side by side (the node has four schedulable CPUs),
//! then drain/resume runs alone, since a drained node holds everyone's jobs, and then
//! reading the node's drain state back (`node-state`) runs alone too. Every
//! scenario runs even when another fails; the test fails naming each failed one.
//! Without Slurm or the built plugin: a failure under CI=true, "SKIPPED" elsewhere.

use corral_test_support as support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use corral_proto::job::{
    Dependency, DependencyKind, JobArray, JobState, NodeState, PluginCall, PluginError, PluginReply,
};
use corral_sandbox::plugins::{PluginHost, PluginsConfig};
use support::scenarios::{run_all, PluginJobs};
use support::slurm::{built_plugins_dir, node_state, Slurm, NODE};

const NASTY: &[&str] = &[
    "it's",
    "$(touch /tmp/corral-pwned)",
    "`id`",
    "a  b\tc",
    "line1\nline2",
    "\\n \\' \\\\",
    "*?[a-z]",
    "; rm -rf / #",
    "$HOME ${PATH}",
    "\"quoted\"",
    "",
    "-x",
    "ünï ✓",
];

/// The Slurm plugin's jobs, submitted and cancelled as the test runner.
type Fixture = PluginJobs;

/// Runs a Slurm client program directly (for what the plugin does not do: releasing a
/// hold, reading a job's name or script back) and returns its stdout.
async fn slurm(program: &str, args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

type Scenario = support::scenarios::Scenario<Fixture>;

async fn a_held_job_is_queued_then_runs_and_succeeds(f: Arc<Fixture>) {
    let mut spec = f.sh("sleep 3");
    spec.attributes = vec![("slurm.hold".into(), String::new())];
    let id = f.submit(spec).await;
    let s = f.status(&id).await;
    assert_eq!(s.state, JobState::Queued { held: true }, "{s:?}");
    assert_eq!(s.native_state, "PENDING");
    assert!(slurm("scontrol", &["release", &id]).await.0);
    f.wait(&id, "running", Duration::from_secs(60), |s| {
        s.state == JobState::Running
    })
    .await;
    let s = f.wait_ended(&id).await;
    assert_eq!((s.state, s.exit_code), (JobState::Succeeded, Some(0)));
}

async fn a_failing_job_reports_its_exit_code(f: Arc<Fixture>) {
    let id = f.submit(f.sh("exit 3")).await;
    let s = f.wait_ended(&id).await;
    assert!(matches!(&s.state, JobState::Failed { .. }), "{s:?}");
    assert_eq!(s.exit_code, Some(3));
}

async fn cancel_stops_a_running_job_and_cancelling_again_is_fine(f: Arc<Fixture>) {
    let id = f.submit(f.sh("sleep 300")).await;
    f.wait(&id, "running", Duration::from_secs(60), |s| {
        s.state == JobState::Running
    })
    .await;
    f.cancel(&id).await;
    let s = f.wait_ended(&id).await;
    assert_eq!(s.state, JobState::Cancelled, "{s:?}");
    f.cancel(&id).await;
}

async fn a_job_that_left_the_queue_is_never_assumed_to_have_succeeded(f: Arc<Fixture>) {
    let id = f.submit(f.sh("exit 0")).await;
    let s = f.wait_ended(&id).await;
    assert_eq!(s.state, JobState::Succeeded);
    // MinJobAge=2: slurmctld forgets the job soon after; wait until squeue has.
    let start = Instant::now();
    while slurm(
        "squeue",
        &[
            "--noheader",
            "--states=all",
            &format!("--jobs={id}"),
            "--format=%i",
        ],
    )
    .await
    .1
    .contains(&id)
    {
        assert!(
            start.elapsed() < Duration::from_secs(150),
            "slurmctld kept job {id} for 150 s"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let s = f.status(&id).await;
    assert_eq!(s.state, JobState::Unknown, "{s:?}");
    let m = s.message.unwrap_or_default();
    assert!(
        m.contains("left Slurm's queue") && m.contains("sacct"),
        "{m}"
    );
    // Cancelling a job Slurm forgot is not an error either.
    f.cancel(&id).await;
}

async fn an_array_runs_every_task(f: Arc<Fixture>) {
    let mut spec = f.sh("echo $SLURM_ARRAY_TASK_ID > task-$SLURM_ARRAY_TASK_ID");
    spec.array = Some(JobArray {
        first: 1,
        last: 3,
        step: 1,
        max_running: None,
    });
    spec.stdout_path = Some(f.path("slurm-%A_%a.out").display().to_string());
    let id = f.submit(spec).await;
    let s = f.wait_ended(&id).await;
    assert_eq!(s.state, JobState::Succeeded, "{s:?}");
    for t in 1..=3 {
        assert_eq!(read(&f.path(&format!("task-{t}"))).trim(), t.to_string());
    }
}

async fn a_dependent_job_waits_for_its_dependency(f: Arc<Fixture>) {
    let first = f.submit(f.sh("sleep 8; touch first-done")).await;
    let mut spec = f.sh("test -f first-done");
    spec.dependencies = vec![Dependency {
        kind: DependencyKind::AfterOk,
        job: first.clone(),
    }];
    let second = f.submit(spec).await;
    f.wait(
        &second,
        "held on its dependency",
        Duration::from_secs(6),
        |s| s.state == JobState::Queued { held: true },
    )
    .await;
    assert_eq!(f.wait_ended(&first).await.state, JobState::Succeeded);
    let s = f.wait_ended(&second).await;
    assert_eq!(
        s.state,
        JobState::Succeeded,
        "the dependent job ran before its dependency ended: {s:?}"
    );
}

async fn metacharacters_reach_the_job_literally(f: Arc<Fixture>) {
    let mut spec = f.sh("printf '%s\\0' \"$@\" > argv; printf '%s' \"$NASTY\" > env");
    spec.arguments.push("sh".into());
    spec.arguments.extend(NASTY.iter().map(|s| s.to_string()));
    spec.environment = vec![("NASTY".into(), NASTY.join(" | "))];
    let name = "na'me \"$HOME\" `id` ; & | * $(x)";
    spec.name = Some(name.into());
    spec.attributes = vec![("slurm.hold".into(), String::new())];
    let rendered = match f.call(PluginCall::Render(spec.clone())).await {
        Ok(PluginReply::Text(t)) => t,
        other => panic!("render: {other:?}"),
    };
    let id = f.submit(spec).await;
    // While held: Slurm has the name and the very script render showed.
    let (_, got_name) = slurm(
        "squeue",
        &[
            "--noheader",
            "--states=all",
            &format!("--jobs={id}"),
            "--format=%j",
        ],
    )
    .await;
    assert_eq!(got_name.trim_end_matches('\n'), name);
    let (ok, script) = slurm("scontrol", &["write", "batch_script", &id, "-"]).await;
    assert!(ok);
    assert_eq!(script, rendered);
    assert!(slurm("scontrol", &["release", &id]).await.0);
    let s = f.wait_ended(&id).await;
    assert_eq!(s.state, JobState::Succeeded, "{s:?}");
    let argv = read(&f.path("argv"));
    let got: Vec<&str> = argv.split('\0').collect();
    assert_eq!(&got[..got.len() - 1], NASTY);
    assert_eq!(read(&f.path("env")), NASTY.join(" | "));
    assert!(
        !Path::new("/tmp/corral-pwned").exists(),
        "a command substitution ran"
    );
}

async fn logs_and_list_show_a_running_job(f: Arc<Fixture>) {
    let mut spec = f.sh("echo hello from the job; sleep 60");
    spec.stdout_path = Some(f.path("logs.out").display().to_string());
    let id = f.submit(spec).await;
    f.wait(&id, "running", Duration::from_secs(60), |s| {
        s.state == JobState::Running
    })
    .await;
    let start = Instant::now();
    loop {
        match f
            .call(PluginCall::Logs {
                id: id.clone(),
                max_bytes: 1000,
            })
            .await
        {
            Ok(PluginReply::Text(t)) if t.contains("hello from the job") => break,
            other => assert!(start.elapsed() < Duration::from_secs(20), "logs: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    match f.call(PluginCall::List).await {
        Ok(PluginReply::Statuses(all)) => assert!(
            all.iter()
                .any(|s| s.id == id && s.state == JobState::Running),
            "{all:?}"
        ),
        other => panic!("list: {other:?}"),
    }
    f.cancel(&id).await;
}

async fn a_drained_node_takes_no_new_jobs_until_resumed(f: Arc<Fixture>) {
    let reason = "maintenance; $(x) #1 'q'";
    let r = f
        .call(PluginCall::DrainNode {
            node: NODE.into(),
            reason: reason.into(),
        })
        .await;
    assert!(matches!(r, Ok(PluginReply::Done)), "{r:?}");
    let state = node_state().unwrap_or_default();
    assert!(
        state.starts_with("drain"),
        "node state after drain: {state:?}"
    );
    let (_, why) = slurm("sinfo", &["--noheader", "--list-reasons", "--format=%E"]).await;
    assert_eq!(why.trim_end_matches('\n'), reason);
    let id = f.submit(f.sh("exit 0")).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = f.status(&id).await;
    assert_eq!(
        s.state,
        JobState::Queued { held: false },
        "a job started on a drained node: {s:?}"
    );
    let r = f.call(PluginCall::ResumeNode { node: NODE.into() }).await;
    assert!(matches!(r, Ok(PluginReply::Done)), "{r:?}");
    let s = f.wait_ended(&id).await;
    assert_eq!(s.state, JobState::Succeeded);
}

/// `node-state` through a host whose service user is `nobody`, as an agent's would be:
/// reading a node's state needs no privilege.
async fn node_state_as_nobody(node: &str) -> Result<PluginReply, PluginError> {
    let (host, failures) = PluginHost::load(&PluginsConfig {
        dir: built_plugins_dir("slurm"),
        enable: vec!["slurm".into()],
        service_user: "nobody".into(),
        ..PluginsConfig::default()
    });
    assert!(failures.is_empty(), "{failures:?}");
    host.call("slurm", PluginCall::NodeState { node: node.into() }, None)
        .await
}

fn reply(state: NodeState) -> PluginReply {
    PluginReply::NodeState(Some(state))
}

async fn node_state_reports_a_drain_and_its_reason_verbatim(f: Arc<Fixture>) {
    let ready = reply(NodeState {
        drained: false,
        reason: None,
    });
    assert_eq!(node_state_as_nobody(NODE).await, Ok(ready.clone()));

    // corral's drain, through the plugin: the reason reads back exactly as given.
    let reason = "corral: gpu 0 (GPU-1c2d) XID 79 [fell off the bus]; $(x) 'q'";
    let r = f
        .call(PluginCall::DrainNode {
            node: NODE.into(),
            reason: reason.into(),
        })
        .await;
    assert_eq!(r, Ok(PluginReply::Done));
    let drained = |reason: &str| {
        reply(NodeState {
            drained: true,
            reason: Some(reason.into()),
        })
    };
    assert_eq!(node_state_as_nobody(NODE).await, Ok(drained(reason)));
    let r = f.call(PluginCall::ResumeNode { node: NODE.into() }).await;
    assert_eq!(r, Ok(PluginReply::Done));
    assert_eq!(node_state_as_nobody(NODE).await, Ok(ready.clone()));

    // A person's drain, made with scontrol itself, reads back as theirs.
    let update = |state: &'static str, reason: Option<&'static str>| async move {
        let mut args = vec!["update", "NodeName=localhost", state];
        args.extend(reason);
        let (ok, _) = slurm("scontrol", &args).await;
        assert!(ok, "scontrol update {args:?}");
    };
    update("State=DRAIN", Some("Reason=maint x")).await;
    let person = node_state_as_nobody(NODE).await;
    update("State=RESUME", None).await;
    assert_eq!(person, Ok(drained("maint x")));

    // Slurm has no such node: none, not an error; a hostlist is refused.
    let none = node_state_as_nobody("no-such-node-corral").await;
    assert_eq!(none, Ok(PluginReply::NodeState(None)));
    let list = node_state_as_nobody("localhost,localhost").await;
    assert!(matches!(list, Err(PluginError::Invalid(_))), "{list:?}");
    // Not tested here: `drain-node` of a node Slurm does not have. With a single node
    // named `localhost`, slurmctld applies an update of any node name to that node (its
    // lookup falls back to `localhost`; seen with 22.05: `update_node: node nosuch state
    // set to DRAINED`, and localhost drained), while `scontrol show node` still says
    // `Node nosuch not found`.
    assert_eq!(node_state_as_nobody(NODE).await, Ok(ready));
}

macro_rules! scenario {
    ($f:ident) => {
        (stringify!($f), (|fx| Box::pin($f(fx))) as Scenario)
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slurm_plugin_drives_a_real_slurm() {
    let Some(plugins) = built_plugins_dir("slurm") else {
        return;
    };
    let Some(slurm_daemons) = Slurm::start() else {
        return;
    };
    let (host, failures) = PluginHost::load(&support::runs_as_runner(PluginsConfig {
        dir: Some(plugins),
        enable: vec!["slurm".into()],
        ..PluginsConfig::default()
    }));
    assert!(
        failures.is_empty(),
        "the slurm plugin did not load: {failures:?}"
    );
    let dir = tempfile::Builder::new()
        .prefix("corral-slurm-jobs")
        .tempdir()
        .unwrap();
    let f = Arc::new(PluginJobs {
        host,
        plugin: "slurm",
        owner: support::runner().to_string(),
        dir,
        stdout: "slurm-%j.out",
        stderr: None,
    });

    let mut failed = run_all(
        &f,
        vec![
            scenario!(a_held_job_is_queued_then_runs_and_succeeds),
            scenario!(a_failing_job_reports_its_exit_code),
            scenario!(cancel_stops_a_running_job_and_cancelling_again_is_fine),
            scenario!(a_job_that_left_the_queue_is_never_assumed_to_have_succeeded),
            scenario!(an_array_runs_every_task),
            scenario!(a_dependent_job_waits_for_its_dependency),
            scenario!(metacharacters_reach_the_job_literally),
            scenario!(logs_and_list_show_a_running_job),
        ],
    )
    .await;
    failed.extend(
        run_all(
            &f,
            vec![scenario!(a_drained_node_takes_no_new_jobs_until_resumed)],
        )
        .await,
    );
    failed.extend(
        run_all(
            &f,
            vec![scenario!(
                node_state_reports_a_drain_and_its_reason_verbatim
            )],
        )
        .await,
    );
    if !failed.is_empty() {
        panic!(
            "failed scenarios: {failed:?}\n--- slurmctld ---\n{}",
            slurm_daemons
                .log("slurmctld")
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}
