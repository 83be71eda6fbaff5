//! Native tests of the Slurm plugin's logic against output captured from a real Slurm
//! 22.05 (fixtures/, captured from the single-node Slurm of tests/support/slurm.rs).

use super::*;
use corral_plugin_sdk::testing::Script;
use corral_plugin_sdk::{Dependency, DependencyKind, JobArray};

const SQUEUE_MIXED: &str = include_str!("../fixtures/squeue-mixed.txt");
const SQUEUE_ARRAY_DONE: &str = include_str!("../fixtures/squeue-array-done.txt");
const SQUEUE_INVALID: &str = include_str!("../fixtures/squeue-invalid.stderr");
const SCONTROL_COMPLETED: &str = include_str!("../fixtures/scontrol-completed.txt");
const SCONTROL_FAILED: &str = include_str!("../fixtures/scontrol-failed.txt");
const SCONTROL_CANCELLED: &str = include_str!("../fixtures/scontrol-cancelled.txt");
const SCONTROL_TIMEOUT: &str = include_str!("../fixtures/scontrol-timeout.txt");
const SCONTROL_RUNNING: &str = include_str!("../fixtures/scontrol-running.txt");
const SCONTROL_PENDING_DEP: &str = include_str!("../fixtures/scontrol-pending-dependency.txt");
const SCONTROL_ARRAY: &str = include_str!("../fixtures/scontrol-array.txt");
const SCONTROL_INVALID: &str = include_str!("../fixtures/scontrol-invalid.stderr");
const SACCT_DISABLED: &str = include_str!("../fixtures/sacct-disabled.stderr");
const SBATCH_PARSABLE: &str = include_str!("../fixtures/sbatch-parsable.txt");
const NODE_IDLE: &str = include_str!("../fixtures/scontrol-node-idle.txt");
const NODE_DRAINED: &str = include_str!("../fixtures/scontrol-node-drained.txt");
const NODE_DRAINING: &str = include_str!("../fixtures/scontrol-node-draining.txt");
const NODE_MULTILINE_REASON: &str = include_str!("../fixtures/scontrol-node-multiline-reason.txt");
const NODE_UNKNOWN: &str = include_str!("../fixtures/scontrol-node-unknown.txt");

fn ids(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// One status for a job's records, as `status` combines them.
fn combine(id: &str, recs: &[Record]) -> JobStatus {
    corral_plugin_sdk::aggregate(id, recs.iter().map(Record::status).collect())
}

fn one(statuses: Vec<JobStatus>) -> JobStatus {
    assert_eq!(statuses.len(), 1, "{statuses:?}");
    statuses.into_iter().next().unwrap()
}

#[test]
fn the_state_table_maps_every_slurm_state() {
    let want = |native: &str| portable(native, "None");
    assert_eq!(want("PENDING"), JobState::Queued(false));
    assert_eq!(want("CONFIGURING"), JobState::Queued(false));
    assert_eq!(want("REQUEUE_HOLD"), JobState::Queued(true));
    assert_eq!(want("RUNNING"), JobState::Running);
    assert_eq!(want("SUSPENDED"), JobState::Suspended);
    assert_eq!(want("COMPLETING"), JobState::Completing);
    assert_eq!(want("COMPLETED"), JobState::Succeeded);
    assert!(matches!(want("FAILED"), JobState::Failed(_)));
    assert!(matches!(want("NODE_FAIL"), JobState::Failed(r) if r.contains("node")));
    assert!(matches!(want("OUT_OF_MEMORY"), JobState::Failed(r) if r.contains("memory")));
    assert_eq!(want("CANCELLED"), JobState::Cancelled);
    assert_eq!(want("CANCELLED by 0"), JobState::Cancelled);
    assert_eq!(want("TIMEOUT"), JobState::TimedOut);
    assert_eq!(want("SOMETHING_NEW"), JobState::Unknown);
    // Every entry is reachable and no state is listed twice.
    let states: Vec<&str> = STATES.iter().flat_map(|(_, n)| n.iter().copied()).collect();
    for (i, n) in states.iter().enumerate() {
        assert!(!states[..i].contains(n), "{n} listed twice");
        assert_ne!(portable(n, "None"), JobState::Unknown, "{n}");
    }
}

#[test]
fn a_pending_job_waiting_on_a_hold_or_dependency_is_held() {
    assert_eq!(portable("PENDING", "JobHeldUser"), JobState::Queued(true));
    assert_eq!(portable("PENDING", "Dependency"), JobState::Queued(true));
    assert_eq!(portable("PENDING", "Resources"), JobState::Queued(false));
    assert_eq!(portable("PENDING", "Priority"), JobState::Queued(false));
}

#[test]
fn squeue_output_parses_into_jobs_and_array_tasks() {
    let recs = parse_squeue(SQUEUE_MIXED);
    assert_eq!(recs.len(), 9, "{recs:?}");
    let task = recs.iter().find(|r| r.display == "15_2").unwrap();
    assert_eq!(
        (task.array_id.as_str(), task.native.as_str()),
        ("15", "PENDING")
    );
    let held = recs.iter().find(|r| r.display == "13").unwrap();
    assert_eq!(held.status().state, JobState::Queued(true));
    let failed = recs.iter().find(|r| r.display == "11").unwrap();
    assert!(matches!(failed.status().state, JobState::Failed(r) if r.contains("NonZeroExitCode")));
}

#[test]
fn scontrol_of_a_completed_job_is_success_with_exit_code_zero() {
    let s = combine("10", &parse_scontrol(SCONTROL_COMPLETED));
    assert_eq!(
        (s.state, s.exit_code, s.native_state.as_str()),
        (JobState::Succeeded, Some(0), "COMPLETED")
    );
}

#[test]
fn scontrol_of_a_failed_job_gives_its_exit_code_and_reason() {
    let recs = parse_scontrol(SCONTROL_FAILED);
    // The job's name holds `$(metachars) & spaces`: it is not read as fields.
    assert_eq!(recs.len(), 1);
    let s = combine("11", &recs);
    assert_eq!(s.exit_code, Some(3));
    assert_eq!(
        s.state,
        JobState::Failed("the job failed (exit code 3): NonZeroExitCode".into())
    );
}

#[test]
fn scontrol_of_a_cancelled_job_is_cancelled_and_names_the_signal() {
    let s = combine("12", &parse_scontrol(SCONTROL_CANCELLED));
    assert_eq!(s.state, JobState::Cancelled);
    assert_eq!(s.exit_code, None);
    assert!(s.message.unwrap().contains("signal 15"));
}

#[test]
fn scontrol_of_a_job_past_its_time_limit_is_timed_out() {
    let s = combine("9", &parse_scontrol(SCONTROL_TIMEOUT));
    assert_eq!(s.state, JobState::TimedOut);
    assert!(s.message.unwrap().contains("TimeLimit"));
}

#[test]
fn scontrol_of_a_pending_dependent_job_is_held() {
    let s = combine("14", &parse_scontrol(SCONTROL_PENDING_DEP));
    assert_eq!(s.state, JobState::Queued(true));
    assert_eq!(s.exit_code, None);
}

#[test]
fn an_array_with_failing_tasks_is_failed_and_names_a_task() {
    let recs = parse_scontrol(SCONTROL_ARRAY);
    assert_eq!(recs.len(), 3);
    let mut displays: Vec<_> = recs.iter().map(|r| r.display.as_str()).collect();
    displays.sort();
    assert_eq!(displays, ["15_1", "15_2", "15_3"]);
    let s = combine("15", &recs);
    assert!(
        matches!(&s.state, JobState::Failed(r) if r.starts_with("task 15_")),
        "{s:?}"
    );
    assert_eq!(s.exit_code, Some(1));
    assert!(s.message.unwrap().starts_with("3 tasks: "));
}

#[test]
fn status_asks_squeue_once_for_every_live_job() {
    let b = Script::new().ok("squeue", SQUEUE_MIXED);
    let got = Slurm::status(&b, ids(&["12", "13", "14", "15", "12"])).unwrap();
    b.assert_done();
    let cmds = b.commands();
    assert_eq!(cmds.len(), 1);
    assert!(
        cmds[0].args.contains(&"--jobs=12,13,14,15".to_string()),
        "{:?}",
        cmds[0].args
    );
    let state = |id: &str| got.iter().find(|s| s.id == id).unwrap().state.clone();
    assert_eq!(got.len(), 4);
    assert_eq!(state("12"), JobState::Running);
    assert_eq!(state("13"), JobState::Queued(true));
    assert_eq!(state("14"), JobState::Queued(true));
    assert_eq!(state("15"), JobState::Queued(false));
}

#[test]
fn a_started_array_task_answers_to_its_task_id_its_own_id_and_its_array() {
    // Task 10_3 started and got job id 23 of its own; 10_4 still pends under the array.
    let b = Script::new().ok(
        "squeue",
        "10_3|23|10|3|RUNNING|None\n10_4|10|10|4|PENDING|Resources\n7|7|7|N/A|RUNNING|None\n",
    );
    let got = Slurm::status(&b, ids(&["10", "10_3", "23", "7"])).unwrap();
    b.assert_done();
    let state = |id: &str| got.iter().find(|s| s.id == id).unwrap().state.clone();
    // The array is the sum of both tasks (one runs); the task and its own id are one record.
    assert_eq!(state("10"), JobState::Running);
    assert_eq!(state("10_3"), JobState::Running);
    assert_eq!(state("23"), JobState::Running);
    assert_eq!(state("7"), JobState::Running);
    assert_eq!(got.len(), 4);
}

#[test]
fn a_poll_of_thousands_of_ids_matches_each_record_to_its_own_job() {
    let n = 5000;
    let text: String = (1..=n)
        .map(|i| {
            let state = if i % 2 == 0 { "RUNNING" } else { "PENDING" };
            format!("{i}|{i}|{i}|N/A|{state}|None\n")
        })
        .collect();
    let b = Script::new().ok("squeue", &text);
    let asked: Vec<String> = (1..=n).map(|i| i.to_string()).collect();
    let got = Slurm::status(&b, asked.clone()).unwrap();
    b.assert_done();
    assert_eq!(b.commands().len(), 1);
    let got_ids: Vec<&str> = got.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(got_ids, asked);
    for (i, s) in (1..=n).zip(&got) {
        let want = if i % 2 == 0 {
            JobState::Running
        } else {
            JobState::Queued(false)
        };
        assert_eq!(s.state, want, "{s:?}");
    }
}

#[test]
fn a_job_that_ended_in_squeue_gets_its_exit_code_from_scontrol() {
    let b = Script::new()
        .ok("squeue", SQUEUE_MIXED)
        .ok("scontrol", SCONTROL_FAILED);
    let s = one(Slurm::status(&b, ids(&["11"])).unwrap());
    b.assert_done();
    assert_eq!(s.exit_code, Some(3));
    assert!(matches!(s.state, JobState::Failed(_)));
    assert_eq!(b.commands()[1].args, ["show", "job", "11"]);
}

#[test]
fn a_job_that_left_the_queue_is_resolved_through_scontrol() {
    let b = Script::new()
        .run("squeue", 1, "", SQUEUE_INVALID)
        .ok("scontrol", SCONTROL_COMPLETED);
    let s = one(Slurm::status(&b, ids(&["10"])).unwrap());
    b.assert_done();
    assert_eq!((s.state, s.exit_code), (JobState::Succeeded, Some(0)));
}

#[test]
fn a_job_scontrol_forgot_is_resolved_through_sacct() {
    let b = Script::new()
        .ok("squeue", "")
        .run("scontrol", 1, "", SCONTROL_INVALID)
        .ok("sacct", "10|FAILED|2:0\n10.batch|FAILED|2:0\n");
    let s = one(Slurm::status(&b, ids(&["10"])).unwrap());
    b.assert_done();
    assert_eq!(s.exit_code, Some(2));
    assert!(matches!(s.state, JobState::Failed(_)));
}

#[test]
fn a_job_nobody_remembers_is_unknown_with_the_reason_never_succeeded() {
    let b = Script::new()
        .run("squeue", 1, "", SQUEUE_INVALID)
        .run("scontrol", 1, "", SCONTROL_INVALID)
        .run("sacct", 1, "", SACCT_DISABLED);
    let s = one(Slurm::status(&b, ids(&["10"])).unwrap());
    b.assert_done();
    assert_eq!(s.state, JobState::Unknown);
    let m = s.message.unwrap();
    assert!(m.contains("Invalid job id specified"), "{m}");
    assert!(m.contains("accounting storage is disabled"), "{m}");
}

#[test]
fn an_ungranted_sacct_is_reported_not_fatal() {
    let b = Script::new()
        .ok("squeue", "")
        .run("scontrol", 1, "", SCONTROL_INVALID)
        .run_err(
            "sacct",
            Error::Denied("program sacct is not granted".into()),
        );
    let s = one(Slurm::status(&b, ids(&["10"])).unwrap());
    assert_eq!(s.state, JobState::Unknown);
    assert!(s.message.unwrap().contains("not granted"));
}

#[test]
fn a_finished_array_is_resolved_as_a_whole() {
    let b = Script::new()
        .ok("squeue", SQUEUE_ARRAY_DONE)
        .ok("scontrol", SCONTROL_ARRAY);
    let s = one(Slurm::status(&b, ids(&["15"])).unwrap());
    b.assert_done();
    assert!(matches!(s.state, JobState::Failed(_)), "{s:?}");
}

#[test]
fn a_squeue_failure_is_a_backend_error_naming_squeue() {
    let b = Script::new().run(
        "squeue",
        1,
        "",
        "squeue: error: Unable to contact slurm controller (connect failure)\n",
    );
    let e = Slurm::status(&b, ids(&["10"])).unwrap_err();
    assert!(
        matches!(&e, Error::Backend(m) if m.starts_with("squeue exited with status 1: squeue: error: Unable to contact")),
        "{e:?}"
    );
}

#[test]
fn a_malformed_job_id_is_refused_before_anything_runs() {
    let b = Script::new();
    for bad in ["", "1;rm -rf /", "12,13", "-1", "abc", "1_", "_1", "1_2_3"] {
        let e = Slurm::status(&b, ids(&[bad])).unwrap_err();
        assert!(matches!(e, Error::Invalid(_)), "{bad:?}");
        assert!(
            matches!(Slurm::cancel(&b, bad.into()), Err(Error::Invalid(_))),
            "{bad:?}"
        );
    }
    assert!(b.calls().is_empty());
}

#[test]
fn cancel_of_a_finished_job_is_not_an_error() {
    for stderr in [
        "scancel: error: Kill job error on job id 4: Job/step already completing or completed\n",
        "scancel: error: Kill job error on job id 99: Invalid job id specified\n",
    ] {
        let b = Script::new().run("scancel", 1, "", stderr);
        Slurm::cancel(&b, "4".into()).unwrap();
    }
    let b = Script::new().ok("scancel", "");
    Slurm::cancel(&b, "4".into()).unwrap();
    assert_eq!(b.commands()[0].args, ["4"]);
}

#[test]
fn cancel_reports_a_real_failure() {
    // scancel fails for a reason of its own; squeue confirms the job still runs.
    let b = Script::new()
        .run(
            "scancel",
            1,
            "",
            "scancel: error: Kill job error on job id 4: Access/permission denied\n",
        )
        .ok("squeue", "4|4|4|N/A|RUNNING|None\n");
    let e = Slurm::cancel(&b, "4".into()).unwrap_err();
    assert!(
        matches!(&e, Error::Backend(m) if m.contains("permission denied")),
        "{e:?}"
    );
}

fn nasty_spec() -> JobSpec {
    let mut spec = JobSpec::command(
        "/bin/echo",
        [
            "it's",
            "$(touch /tmp/pwned)",
            "`id`",
            "a b",
            "x\ny",
            "\\",
            "*",
            ";|&<>",
            "",
        ],
    );
    spec.name = Some("na'me \"$HOME\" `x` ; & | *".into());
    spec
}

#[test]
fn render_is_exactly_what_submit_sends() {
    let spec = nasty_spec();
    let rendered = Slurm::render(&Script::new(), spec.clone()).unwrap();
    let b = Script::new().ok("sbatch", SBATCH_PARSABLE);
    let id = Slurm::submit(&b, spec).unwrap();
    assert_eq!(id, SBATCH_PARSABLE.trim());
    let cmd = &b.commands()[0];
    assert_eq!(cmd.stdin.as_deref(), Some(rendered.as_bytes()));
    assert!(
        rendered.starts_with("#!/bin/sh\n# corral: [\"sbatch\", \"--parsable\", "),
        "{rendered}"
    );
    // The argv line in the script is the argv sbatch got.
    let mut argv = vec!["sbatch".to_string()];
    argv.extend(cmd.args.iter().cloned());
    assert!(rendered.contains(&format!("# corral: {argv:?}\n")));
}

#[test]
fn a_job_name_full_of_metacharacters_is_one_literal_argv_element() {
    let b = Script::new().ok("sbatch", "77\n");
    Slurm::submit(&b, nasty_spec()).unwrap();
    let args = &b.commands()[0].args;
    assert!(
        args.contains(&"--job-name=na'me \"$HOME\" `x` ; & | *".to_string()),
        "{args:?}"
    );
}

#[test]
fn the_batch_script_gives_the_program_its_arguments_literally() {
    let want = [
        "it's",
        "$(touch /tmp/pwned)",
        "`id`",
        "a b",
        "x\ny",
        "\\",
        "*",
        ";|&<>",
        "",
    ];
    let mut spec = JobSpec::command("printf", ["%s\\0"].into_iter().chain(want));
    spec.name = Some("n".into());
    let script = Slurm::render(&Script::new(), spec).unwrap();
    let mut child = std::process::Command::new("sh")
        .arg("-s")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let got: Vec<&str> = std::str::from_utf8(&out.stdout)
        .unwrap()
        .split('\0')
        .collect();
    assert_eq!(&got[..got.len() - 1], want);
}

#[test]
fn a_line_break_in_a_one_line_option_is_refused() {
    let mut spec = JobSpec::command("true", Vec::<String>::new());
    spec.name = Some("a\n#SBATCH --uid=0".into());
    let e = Slurm::render(&Script::new(), spec).unwrap_err();
    assert!(
        matches!(&e, Error::Invalid(m) if m.contains("job name")),
        "{e:?}"
    );
}

#[test]
fn resources_arrays_and_dependencies_become_sbatch_options() {
    let mut spec = JobSpec::command("true", Vec::<String>::new());
    spec.queue = Some("debug".into());
    spec.nodes = Some(2);
    spec.tasks_per_node = Some(4);
    spec.cpus_per_task = Some(2);
    spec.gpus_per_node = Some(1);
    spec.memory_mb = Some(512);
    spec.walltime_seconds = Some(90_061);
    spec.array = Some(JobArray {
        first: 1,
        last: 9,
        step: 2,
        max_running: Some(3),
    });
    spec.dependencies = vec![
        Dependency {
            kind: DependencyKind::AfterOk,
            job: "5".into(),
        },
        Dependency {
            kind: DependencyKind::AfterAny,
            job: "7_1".into(),
        },
        Dependency {
            kind: DependencyKind::AfterOk,
            job: "6".into(),
        },
    ];
    spec.attributes = vec![
        ("slurm.constraint".into(), "a100".into()),
        ("slurm.hold".into(), "".into()),
        ("pbs.place".into(), "x".into()),
    ];
    let a = sbatch_args(&spec).unwrap();
    assert_eq!(
        a,
        [
            "--parsable",
            "--partition=debug",
            "--nodes=2",
            "--ntasks-per-node=4",
            "--cpus-per-task=2",
            "--gpus-per-node=1",
            "--mem=512M",
            "--time=1-01:01:01",
            "--array=1-9:2%3",
            "--dependency=afterok:5:6,afterany:7_1",
            "--constraint=a100",
            "--hold",
        ]
    );
}

#[test]
fn bad_arrays_dependencies_and_attributes_are_refused() {
    let base = JobSpec::command("true", Vec::<String>::new());
    let mut s = base.clone();
    s.array = Some(JobArray {
        first: 5,
        last: 1,
        step: 1,
        max_running: None,
    });
    assert!(matches!(sbatch_args(&s), Err(Error::Invalid(_))));
    let mut s = base.clone();
    s.dependencies = vec![Dependency {
        kind: DependencyKind::AfterOk,
        job: "5,afterany:6".into(),
    }];
    assert!(matches!(sbatch_args(&s), Err(Error::Invalid(_))));
    let mut s = base.clone();
    s.attributes = vec![("slurm.wrap".into(), "id".into())];
    assert!(
        matches!(sbatch_args(&s), Err(Error::Invalid(m)) if m.contains("managed by the plugin"))
    );
    let mut s = base;
    s.attributes = vec![("slurm.x y".into(), "1".into())];
    assert!(matches!(sbatch_args(&s), Err(Error::Invalid(_))));
}

#[test]
fn sbatch_output_with_a_cluster_name_gives_the_id() {
    assert_eq!(parse_sbatch("42;cluster\n").unwrap(), "42");
    assert!(matches!(
        parse_sbatch("Submitted batch job 42\n"),
        Err(Error::Backend(_))
    ));
}

#[test]
fn drain_and_resume_are_scontrol_updates_with_literal_reason() {
    let b = Script::new().ok("scontrol", "").ok("scontrol", "");
    Slurm::drain_node(
        &b,
        "node[01-02]".into(),
        "disk failing; see ticket #4".into(),
    )
    .unwrap();
    Slurm::resume_node(&b, "node[01-02]".into()).unwrap();
    let c = b.commands();
    assert_eq!(
        c[0].args,
        [
            "update",
            "NodeName=node[01-02]",
            "State=DRAIN",
            "Reason=disk failing; see ticket #4"
        ]
    );
    assert_eq!(
        c[1].args,
        ["update", "NodeName=node[01-02]", "State=RESUME"]
    );
    assert!(matches!(
        Slurm::drain_node(&b, "a b".into(), "r".into()),
        Err(Error::Invalid(_))
    ));
}

#[test]
fn logs_tail_the_file_scontrol_names() {
    let b = Script::new()
        .ok("scontrol", SCONTROL_RUNNING)
        .ok("tail", "héllo\n");
    let text = Slurm::logs(&b, "12".into(), 100).unwrap();
    assert_eq!(text, "héllo\n");
    assert_eq!(b.commands()[1].args, ["--bytes=100", "--", "/dev/null"]);
}

#[test]
fn list_reports_every_job_squeue_knows() {
    let b = Script::new().ok("squeue", SQUEUE_MIXED);
    let all = Slurm::list(&b).unwrap();
    assert_eq!(all.len(), 9);
    assert!(!b.commands()[0].args.iter().any(|a| a.starts_with("--jobs")));
}

#[test]
fn attributes_that_would_change_the_user_are_refused_even_abbreviated() {
    for key in ["uid", "gid", "ui", "gi"] {
        let mut spec = JobSpec::command("true", Vec::<String>::new());
        spec.attributes = vec![(format!("slurm.{key}"), "0".into())];
        let e = sbatch_args(&spec).unwrap_err();
        assert!(
            matches!(&e, Error::Invalid(m) if m.contains("submitting user")),
            "{key}: {e:?}"
        );
    }
    // An abbreviation of a managed option is managed too (`--wr` is `--wrap`).
    let mut spec = JobSpec::command("true", Vec::<String>::new());
    spec.attributes = vec![("slurm.wr".into(), "id".into())];
    assert!(
        matches!(sbatch_args(&spec), Err(Error::Invalid(m)) if m.contains("managed by the plugin"))
    );
}

#[test]
fn a_failed_scancel_of_a_job_that_already_ended_is_confirmed_and_succeeds() {
    let b = Script::new()
        .run("scancel", 1, "", "scancel: error: Unexpected error\n")
        .ok("squeue", "")
        .ok("scontrol", SCONTROL_COMPLETED);
    Slurm::cancel(&b, "10".into()).unwrap();
    b.assert_done();
}

fn drained(reason: &str) -> Option<NodeState> {
    Some(NodeState {
        drained: true,
        reason: Some(reason.into()),
    })
}

#[test]
fn node_state_reads_a_drain_and_its_reason_without_slurms_suffix() {
    assert_eq!(
        parse_node("localhost", NODE_DRAINED).unwrap(),
        drained("maint x")
    );
    assert_eq!(
        parse_node("localhost", NODE_IDLE).unwrap(),
        Some(NodeState {
            drained: false,
            reason: None
        })
    );
}

#[test]
fn a_node_still_running_jobs_is_drained_and_brackets_in_a_reason_are_kept() {
    // State=ALLOCATED+DRAIN (sinfo: draining), Reason=disk check [ops] [root@...].
    assert_eq!(
        parse_node("localhost", NODE_DRAINING).unwrap(),
        drained("disk check [ops]")
    );
}

#[test]
fn a_reason_of_several_lines_reads_back_whole_and_cannot_pose_as_a_field() {
    // Set with a line break: "corral: gpu 0 XID 79\nReason=State=IDLE".
    assert_eq!(
        parse_node("localhost", NODE_MULTILINE_REASON).unwrap(),
        drained("corral: gpu 0 XID 79\nReason=State=IDLE")
    );
}

#[test]
fn only_slurms_own_suffix_is_removed_from_a_reason() {
    assert_eq!(without_user_and_time("a [root@2026-12-01T16:08:13]"), "a");
    assert_eq!(without_user_and_time("see [ops]"), "see [ops]");
    assert_eq!(without_user_and_time("mail [a b@c]"), "mail [a b@c]");
    assert_eq!(
        without_user_and_time("x [y@z] [slurm@2026-01-01T00:00:00]"),
        "x [y@z]"
    );
}

#[test]
fn node_state_asks_scontrol_for_one_node_and_knows_its_not_found() {
    let b = Script::new()
        .ok("scontrol", NODE_DRAINED)
        .run("scontrol", 1, NODE_UNKNOWN, "")
        .run(
            "scontrol",
            1,
            "",
            "slurm_load_node error: Unable to contact slurm controller (connect failure)\n",
        );
    assert_eq!(
        Slurm::node_state(&b, "localhost".into()).unwrap(),
        drained("maint x")
    );
    assert_eq!(b.commands()[0].args, ["show", "node", "localhost"]);
    assert_eq!(Slurm::node_state(&b, "nosuch".into()).unwrap(), None);
    let e = Slurm::node_state(&b, "localhost".into()).unwrap_err();
    assert!(
        matches!(&e, Error::Backend(m) if m.contains("Unable to contact slurm controller")),
        "{e:?}"
    );
    b.assert_done();
}

#[test]
fn node_state_refuses_a_hostlist_and_output_with_other_than_one_node() {
    let b = Script::new();
    for list in ["node[01-02]", "a,b"] {
        assert!(
            matches!(Slurm::node_state(&b, list.into()), Err(Error::Invalid(m)) if m.contains("hostlist")),
            "{list}"
        );
    }
    assert!(b.commands().is_empty());
    let two = format!("{NODE_IDLE}\n{NODE_DRAINED}");
    assert!(matches!(parse_node("n", &two), Err(Error::Invalid(_))));
    assert!(matches!(parse_node("n", ""), Err(Error::Backend(_))));
}
