//! The Grid Engine plugin, built for wasm by `cargo xtask plugins`, loaded by the real
//! plugin host and driving a real single-host Grid Engine (tests/support/sge.rs), with
//! jobs owned by real local users (tests/support/users.rs): Grid Engine refuses root's
//! jobs, so every submission runs `qsub` as its owner, as the agent does.
//!
//! One Grid Engine serves the whole file, so the behaviours run as scenarios of one
//! test: those that share the queue run side by side (it has eight slots), then
//! disable/enable runs alone, since a disabled queue holds everyone's jobs, and so does
//! reading the host's drain state back (`node-state`, as the service user). Every
//! scenario runs even when another fails; the test fails naming each failed one.
//! Without Grid Engine, root or the built plugin: a failure under CI=true, "SKIPPED"
//! elsewhere.

use corral_test_support as support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use corral_proto::job::{
    Dependency, DependencyKind, JobArray, JobState, JobStatus, NodeState, PluginCall, PluginError,
    PluginReply,
};
use corral_sandbox::plugins::{PluginHost, PluginsConfig};
use support::scenarios::{run_all, PluginJobs};
use support::sge::{sge, Sge};
use support::slurm::built_plugins_dir;
use support::users::{ensure_user, TestUser};

/// Arguments that a shell would interpret; the last ones are lines that Grid Engine
/// would read as `#$` directives if qsub parsed the script for them.
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
    "x\n#$ -N injected\n#$ -q nowhere.q",
];

/// The service user `status` and `list` run as: not the owner, not root.
const SERVICE_USER: &str = "nobody";

/// The sge plugin's jobs (submitted and cancelled as alice), the Grid Engine they go
/// to, and the users.
struct Fixture {
    jobs: PluginJobs,
    sge: Arc<Sge>,
    alice: TestUser,
    bob: TestUser,
}

impl std::ops::Deref for Fixture {
    type Target = PluginJobs;
    fn deref(&self) -> &PluginJobs {
        &self.jobs
    }
}

/// Runs a Grid Engine client directly, as root (for what the plugin does not do:
/// reading a job back); returns `(success, stdout)`.
async fn client(program: &'static str, args: Vec<String>) -> (bool, String) {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, out, err) = sge(program, &args);
        (ok, format!("{out}{err}"))
    })
    .await
    .unwrap()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn failed_reason(s: &JobStatus) -> &str {
    match &s.state {
        JobState::Failed { reason } => reason,
        _ => panic!("not failed: {s:?}"),
    }
}

type Scenario = support::scenarios::Scenario<Fixture>;

async fn a_job_runs_as_its_owner_and_succeeds(f: Arc<Fixture>) {
    let id = f
        .submit(f.sh("id -u > whoami; id -g >> whoami; sleep 3"))
        .await;
    f.wait_running(&id).await;
    let s = f.wait_ended(&id).await;
    assert_eq!((s.state, s.exit_code), (JobState::Succeeded, Some(0)));
    assert_eq!(
        read(&f.path("whoami")),
        format!("{}\n{}\n", f.alice.uid, f.alice.gid),
        "the job did not run as alice"
    );
}

async fn a_failing_job_reports_its_exit_code(f: Arc<Fixture>) {
    let id = f.submit(f.sh("exit 3")).await;
    let s = f.wait_ended(&id).await;
    assert_eq!(failed_reason(&s), "exit code 3", "{s:?}");
    assert_eq!(s.exit_code, Some(3));
}

async fn cancel_stops_a_running_job_and_cancelling_again_is_fine(f: Arc<Fixture>) {
    let id = f
        .submit(f.sh("echo $$ > cancelled.pid; exec sleep 300"))
        .await;
    f.wait_running(&id).await;
    f.cancel(&id).await;
    let s = f.wait_ended(&id).await;
    // Son of Grid Engine's accounting does not record a deletion (plugin docs).
    let why = failed_reason(&s);
    assert!(why.contains("signal 9") && why.contains("qdel"), "{s:?}");
    assert_eq!(s.exit_code, None);
    let pid: i32 = read(&f.path("cancelled.pid")).trim().parse().unwrap();
    // SAFETY: kill(2) with signal 0 only asks whether the process exists.
    let alive = unsafe { libc::kill(pid, 0) } == 0;
    assert!(!alive, "the cancelled job's process {pid} still runs");
    f.cancel(&id).await;
}

async fn another_user_cannot_cancel_a_job_grid_engine_refuses_them(f: Arc<Fixture>) {
    let id = f.submit(f.sh("sleep 300")).await;
    f.wait_running(&id).await;
    let r = f.call_as(PluginCall::Cancel(id.clone()), &f.bob.name).await;
    assert!(
        matches!(&r, Err(PluginError::Backend(m)) if m.contains("privileges")),
        "bob's cancel of alice's job: {r:?}"
    );
    assert_eq!(f.status(&id).await.state, JobState::Running);
    f.cancel(&id).await;
}

async fn a_job_that_left_the_queue_is_answered_from_accounting_never_assumed(f: Arc<Fixture>) {
    let id = f.submit(f.sh("exit 0")).await;
    let s = f.wait_ended(&id).await;
    assert_eq!(s.state, JobState::Succeeded);
    let (known, said) = client("qstat", vec!["-j".into(), id.clone()]).await;
    assert!(
        !known && said.contains("do not exist"),
        "qstat still knows job {id}: {said}"
    );
    let s = f.status(&id).await;
    assert_eq!(
        (s.state, s.native_state.as_str()),
        (JobState::Succeeded, "failed 0")
    );

    // A job deleted before it ran never reaches accounting: unknown, not done.
    let gate = f.submit(f.sh("sleep 30")).await;
    let mut spec = f.sh("exit 0");
    spec.dependencies = vec![Dependency {
        kind: DependencyKind::AfterAny,
        job: gate.clone(),
    }];
    let never = f.submit(spec).await;
    assert_eq!(
        f.status(&never).await.state,
        JobState::Queued { held: true }
    );
    f.cancel(&never).await;
    let s = f
        .wait(&never, "gone", Duration::from_secs(30), |s| {
            s.state == JobState::Unknown
        })
        .await;
    let m = s.message.unwrap_or_default();
    assert!(
        m.contains("neither queued nor in Grid Engine's accounting") && m.contains("not found"),
        "{m}"
    );
    f.cancel(&never).await;
    f.cancel(&gate).await;
}

async fn an_array_runs_every_task_and_reports_each(f: Arc<Fixture>) {
    let mut spec = f.sh("echo $SGE_TASK_ID > task-$SGE_TASK_ID; test $SGE_TASK_ID != 2 || exit 4");
    spec.array = Some(JobArray {
        first: 1,
        last: 3,
        step: 1,
        max_running: None,
    });
    let id = f.submit(spec).await;
    let s = f.wait_ended(&id).await;
    assert!(
        failed_reason(&s).starts_with(&format!("task {id}.2")),
        "{s:?}"
    );
    for t in 1..=3 {
        assert_eq!(read(&f.path(&format!("task-{t}"))).trim(), t.to_string());
    }
    assert_eq!(
        f.status(&format!("{id}.1")).await.state,
        JobState::Succeeded
    );
    let two = f.status(&format!("{id}.2")).await;
    assert_eq!(
        (failed_reason(&two), two.exit_code),
        ("exit code 4", Some(4))
    );
}

async fn a_dependent_job_waits_for_its_dependency(f: Arc<Fixture>) {
    let first = f.submit(f.sh("sleep 8; touch first-done")).await;
    let mut spec = f.sh("test -f first-done");
    spec.dependencies = vec![Dependency {
        kind: DependencyKind::AfterAny,
        job: first.clone(),
    }];
    let second = f.submit(spec.clone()).await;
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
    // Grid Engine only knows "after the other ended".
    spec.dependencies[0].kind = DependencyKind::AfterOk;
    let r = f.call_as(PluginCall::Submit(spec), &f.alice.name).await;
    assert!(matches!(r, Err(PluginError::Unsupported(_))), "{r:?}");
}

async fn metacharacters_reach_the_job_literally(f: Arc<Fixture>) {
    let mut spec = f.sh("printf '%s\\0' \"$@\" > argv; printf '%s' \"$NASTY\" > env; sleep 4");
    spec.arguments.push("sh".into());
    spec.arguments.extend(NASTY.iter().map(|s| s.to_string()));
    spec.environment = vec![("NASTY".into(), NASTY.join(" | "))];
    // Everything a Grid Engine job name may hold that a shell would not take literally.
    let name = "na'me\"$HOME\"`id`;&|<>$(x)";
    spec.name = Some(name.into());
    let rendered = match f
        .host
        .call("sge", PluginCall::Render(spec.clone()), None)
        .await
    {
        Ok(PluginReply::Text(t)) => t,
        other => panic!("render: {other:?}"),
    };
    let id = f.submit(spec).await;
    f.wait_running(&id).await;
    // While it runs: Grid Engine has the name, and its execd the very script render showed.
    let (ok, job) = client("qstat", vec!["-j".into(), id.clone()]).await;
    assert!(ok, "{job}");
    let got_name = job
        .lines()
        .find_map(|l| l.strip_prefix("job_name:"))
        .map(str::trim);
    assert_eq!(got_name, Some(name), "{job}");
    let script = std::fs::read_dir("/var/spool/gridengine/execd")
        .unwrap()
        .flatten()
        .find_map(|d| std::fs::read_to_string(d.path().join("job_scripts").join(&id)).ok())
        .expect("the execd's copy of the job script");
    assert_eq!(script, rendered);
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

async fn a_name_grid_engine_cannot_take_is_refused_before_qsub_runs(f: Arc<Fixture>) {
    let mut spec = f.sh("exit 0");
    spec.name = Some("two words".into());
    let r = f.call_as(PluginCall::Submit(spec), &f.alice.name).await;
    assert!(
        matches!(&r, Err(PluginError::Invalid(m)) if m.contains("Grid Engine takes")),
        "{r:?}"
    );
}

async fn list_shows_a_running_job(f: Arc<Fixture>) {
    let id = f.submit(f.sh("sleep 60")).await;
    f.wait_running(&id).await;
    match f.host.call("sge", PluginCall::List, None).await {
        Ok(PluginReply::Statuses(all)) => assert!(
            all.iter()
                .any(|s| s.id == id && s.state == JobState::Running),
            "{all:?}"
        ),
        other => panic!("list: {other:?}"),
    }
    f.cancel(&id).await;
}

async fn a_disabled_host_takes_no_new_jobs_until_enabled(f: Arc<Fixture>) {
    let node = f.sge.host.clone();
    let r = f
        .host
        .call(
            "sge",
            PluginCall::DrainNode {
                node: node.clone(),
                reason: "maintenance".into(),
            },
            None,
        )
        .await;
    assert!(matches!(r, Ok(PluginReply::Done)), "{r:?}");
    let states = f.sge.queue_states().unwrap_or_default();
    assert!(states.contains('d'), "queue states after drain: {states:?}");
    let id = f.submit(f.sh("exit 0")).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = f.status(&id).await;
    assert_eq!(
        s.state,
        JobState::Queued { held: false },
        "a job started on a disabled host: {s:?}"
    );
    let r = f
        .host
        .call("sge", PluginCall::ResumeNode { node }, None)
        .await;
    assert!(matches!(r, Ok(PluginReply::Done)), "{r:?}");
    let s = f.wait_ended(&id).await;
    assert_eq!(s.state, JobState::Succeeded);
}

/// `node-state` of `node`, run as the service user (`nobody`).
async fn node_state(f: &Fixture, node: &str) -> Result<PluginReply, PluginError> {
    f.host
        .call("sge", PluginCall::NodeState { node: node.into() }, None)
        .await
}

async fn node_state_reports_disabled_queues_and_no_reason(f: Arc<Fixture>) {
    let node = f.sge.host.clone();
    let host_state = |drained| {
        Ok(PluginReply::NodeState(Some(NodeState {
            drained,
            reason: None,
        })))
    };
    assert_eq!(node_state(&f, &node).await, host_state(false));
    let r = f
        .host
        .call(
            "sge",
            PluginCall::DrainNode {
                node: node.clone(),
                reason: "corral: gpu 0 XID 79".into(),
            },
            None,
        )
        .await;
    assert_eq!(r, Ok(PluginReply::Done));
    // Disabled, and Grid Engine keeps no reason: none comes back.
    let drained = node_state(&f, &node).await;
    let r = f
        .host
        .call("sge", PluginCall::ResumeNode { node: node.clone() }, None)
        .await;
    assert_eq!(r, Ok(PluginReply::Done));
    assert_eq!(drained, host_state(true));
    assert_eq!(node_state(&f, &node).await, host_state(false));

    // A person disabling the queue with qmod reads the same: drained.
    let instance = format!("{}@{node}", support::sge::QUEUE);
    assert!(client("qmod", vec!["-d".into(), instance.clone()]).await.0);
    let by_hand = node_state(&f, &node).await;
    assert!(client("qmod", vec!["-e".into(), instance]).await.0);
    assert_eq!(by_hand, host_state(true));

    // A host Grid Engine has no queue on: none, not an error; draining it fails.
    assert_eq!(
        node_state(&f, "no-such-host-corral").await,
        Ok(PluginReply::NodeState(None))
    );
    let r = f
        .host
        .call(
            "sge",
            PluginCall::DrainNode {
                node: "no-such-host-corral".into(),
                reason: String::new(),
            },
            None,
        )
        .await;
    assert!(matches!(&r, Err(PluginError::Backend(_))), "{r:?}");
    assert_eq!(node_state(&f, &node).await, host_state(false));
}

macro_rules! scenario {
    ($f:ident) => {
        (stringify!($f), (|fx| Box::pin($f(fx))) as Scenario)
    };
}

#[test]
fn sge_plugin_drives_a_real_grid_engine() {
    let Some(plugins) = built_plugins_dir("sge") else {
        return;
    };
    let Some(sge_daemons) = Sge::start() else {
        return;
    };
    let (Some(alice), Some(bob)) = (ensure_user("alice"), ensure_user("bob")) else {
        return;
    };
    // The plugin host hands its programs the agent's SGE_ROOT and SGE_CELL (the
    // manifest grants them), read when it loads the plugin. They are set here, before
    // any runtime thread exists and in the only test of this binary, so no other
    // thread reads the environment meanwhile. (Debian's client wrappers would find the
    // cell without them too.)
    for (k, v) in support::sge::env() {
        std::env::set_var(k, v);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let (host, failures) = PluginHost::load(&PluginsConfig {
            dir: Some(plugins),
            enable: vec!["sge".into()],
            service_user: SERVICE_USER.into(),
            ..PluginsConfig::default()
        });
        assert!(
            failures.is_empty(),
            "the sge plugin did not load: {failures:?}"
        );
        let dir = tempfile::Builder::new()
            .prefix("corral-sge-jobs")
            .tempdir()
            .unwrap();
        std::os::unix::fs::chown(dir.path(), Some(alice.uid), Some(alice.gid)).unwrap();
        let f = Arc::new(Fixture {
            jobs: PluginJobs {
                host,
                plugin: "sge",
                owner: alice.name.clone(),
                dir,
                stdout: "sge.o$JOB_ID.$TASK_ID",
                stderr: Some("sge.e$JOB_ID.$TASK_ID"),
            },
            sge: sge_daemons.clone(),
            alice,
            bob,
        });

        let started = Instant::now();
        let mut failed = run_all(
            &f,
            vec![
                scenario!(a_job_runs_as_its_owner_and_succeeds),
                scenario!(a_failing_job_reports_its_exit_code),
                scenario!(cancel_stops_a_running_job_and_cancelling_again_is_fine),
                scenario!(another_user_cannot_cancel_a_job_grid_engine_refuses_them),
                scenario!(a_job_that_left_the_queue_is_answered_from_accounting_never_assumed),
                scenario!(an_array_runs_every_task_and_reports_each),
                scenario!(a_dependent_job_waits_for_its_dependency),
                scenario!(metacharacters_reach_the_job_literally),
                scenario!(a_name_grid_engine_cannot_take_is_refused_before_qsub_runs),
                scenario!(list_shows_a_running_job),
            ],
        )
        .await;
        failed.extend(
            run_all(
                &f,
                vec![scenario!(a_disabled_host_takes_no_new_jobs_until_enabled)],
            )
            .await,
        );
        failed.extend(
            run_all(
                &f,
                vec![scenario!(node_state_reports_disabled_queues_and_no_reason)],
            )
            .await,
        );
        println!("scenarios took {:.1?}", started.elapsed());
        if !failed.is_empty() {
            panic!("failed scenarios: {failed:?}\n{}", sge_daemons.messages());
        }
    });
}
