//! Native tests of the Grid Engine plugin against output captured from a real cell
//! (Debian's Grid Engine 8.1.9; `fixtures/README.md` says how each was made). The same
//! behaviours run against a live cell in `tests/sge.rs`; these pin the parsers and the
//! states a live test cannot produce on demand (error, suspended, being deleted, a
//! limit, a rerun).

use super::*;
use corral_plugin_sdk::testing::Script;
use corral_plugin_sdk::{Dependency, JobArray};

const QSTAT: &str = include_str!("../fixtures/qstat.xml");
const QACCT_OK: &str = include_str!("../fixtures/qacct-ok.txt");
const QACCT_FAILED: &str = include_str!("../fixtures/qacct-failed.txt");
const QACCT_KILLED: &str = include_str!("../fixtures/qacct-killed.txt");
const QACCT_H_RT: &str = include_str!("../fixtures/qacct-h_rt.txt");
const QACCT_ARRAY: &str = include_str!("../fixtures/qacct-array.txt");
const QACCT_BEFORE_JOB: &str = include_str!("../fixtures/qacct-before-job.txt");
const QACCT_RERUN: &str = include_str!("../fixtures/qacct-rerun.txt");
const QACCT_UNKNOWN: &str = include_str!("../fixtures/qacct-unknown.stderr");
const QSUB: &str = include_str!("../fixtures/qsub-terse.txt");
const QSUB_ARRAY: &str = include_str!("../fixtures/qsub-terse-array.txt");
const QDEL_UNKNOWN: &str = include_str!("../fixtures/qdel-unknown.txt");
const HOST_ENABLED: &str = include_str!("../fixtures/qstat-host-enabled.xml");
const HOST_DISABLED: &str = include_str!("../fixtures/qstat-host-disabled.xml");
const HOST_PARTLY_DISABLED: &str = include_str!("../fixtures/qstat-host-partly-disabled.xml");

fn ids(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn state_letters_map_to_portable_states() {
    assert_eq!(live_state("qw").0, JobState::Queued(false));
    assert_eq!(live_state("hqw").0, JobState::Queued(true));
    assert_eq!(live_state("Eqw").0, JobState::Queued(true));
    assert!(live_state("Eqw").1.unwrap().contains("error"));
    assert_eq!(live_state("r").0, JobState::Running);
    assert_eq!(live_state("t").0, JobState::Running);
    assert_eq!(live_state("Rr").0, JobState::Running);
    assert_eq!(live_state("Rq").0, JobState::Queued(false));
    assert_eq!(live_state("s").0, JobState::Suspended);
    assert_eq!(live_state("S").0, JobState::Suspended);
    assert_eq!(live_state("dr").0, JobState::Completing);
    assert_eq!(live_state("?").0, JobState::Unknown);
}

#[test]
fn qstat_xml_parses_running_pending_and_array_entries() {
    let live = parse_qstat(QSTAT).unwrap();
    assert_eq!(live.len(), 8);
    assert!(live.contains(&Live {
        job: "233".into(),
        state: "qw".into(),
        tasks: Some("2,3".into())
    }));
    assert!(live.contains(&Live {
        job: "229".into(),
        state: "r".into(),
        tasks: None
    }));
}

#[test]
fn qacct_records_give_the_final_state() {
    let one = |t: &str| ended(&parse_qacct(t)[0]);
    assert_eq!(one(QACCT_OK), JobState::Succeeded);
    assert_eq!(one(QACCT_FAILED), JobState::Failed("exit code 3".into()));
    assert_eq!(
        one(QACCT_KILLED),
        JobState::Failed(
            "killed by signal 9 (100 : assumedly after job); Grid Engine records a running job deleted with qdel this way too".into()
        )
    );
    assert_eq!(one(QACCT_H_RT), JobState::TimedOut);
    assert_eq!(
        one(QACCT_BEFORE_JOB),
        JobState::Failed("Grid Engine reports failure 28 : changing into working directory".into())
    );
    let recs = parse_qacct(QACCT_H_RT);
    assert_eq!(
        (recs[0].wallclock_secs, recs[0].h_rt),
        (Some(3.0), Some(2.0))
    );
}

#[test]
fn a_limit_kill_before_the_run_time_limit_is_a_failure_not_a_timeout() {
    // failed 37 also stands for h_cpu and h_vmem.
    let mut a = parse_qacct(QACCT_H_RT).remove(0);
    a.wallclock_secs = Some(1.0);
    assert_eq!(
        ended(&a),
        JobState::Failed(
            "killed by signal 9 (37 : qmaster enforced h_rt, h_cpu, or h_vmem limit)".into()
        )
    );
}

#[test]
fn the_last_accounting_record_of_a_rerun_job_is_the_one_that_counts() {
    let recs = parse_qacct(QACCT_RERUN);
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert_eq!(ended(&recs[0]), JobState::Succeeded);
    let b = Script::new().ok("qstat", QSTAT).ok("qacct", QACCT_RERUN);
    let s = Sge::status(&b, ids(&["252"])).unwrap().remove(0);
    assert_eq!((s.state, s.exit_code), (JobState::Succeeded, Some(0)));
}

#[test]
fn a_job_deleted_by_someone_is_cancelled() {
    let mut a = parse_qacct(QACCT_KILLED).remove(0);
    a.deleted_by = Some("alice@login1".into());
    assert_eq!(ended(&a), JobState::Cancelled);
}

#[test]
fn live_jobs_come_from_one_qstat_call() {
    let b = Script::new().ok("qstat", QSTAT);
    let got = Sge::status(
        &b,
        ids(&[
            "229", "230", "231", "232", "233", "233.1", "233.3", "234", "236",
        ]),
    )
    .unwrap();
    b.assert_done();
    assert_eq!(b.commands()[0].args, ["-xml", "-u", "*"]);
    let state = |id: &str| got.iter().find(|s| s.id == id).unwrap().state.clone();
    assert_eq!(state("229"), JobState::Running);
    assert_eq!(state("230"), JobState::Queued(false));
    assert_eq!(state("231"), JobState::Queued(true));
    assert_eq!(state("232"), JobState::Queued(true));
    assert_eq!(state("233"), JobState::Running);
    assert_eq!(state("233.1"), JobState::Running);
    assert_eq!(state("233.3"), JobState::Queued(false));
    assert_eq!(state("234"), JobState::Suspended);
    assert_eq!(state("236"), JobState::Completing);
}

#[test]
fn a_job_that_left_the_queue_is_resolved_through_qacct() {
    let b = Script::new().ok("qstat", QSTAT).ok("qacct", QACCT_FAILED);
    let s = Sge::status(&b, ids(&["239"])).unwrap().remove(0);
    b.assert_done();
    assert_eq!(
        (s.state, s.exit_code),
        (JobState::Failed("exit code 3".into()), Some(3))
    );
    assert_eq!(b.commands()[1].args, ["-j", "239"]);
}

#[test]
fn an_ended_array_is_failed_when_a_task_failed() {
    let b = Script::new().ok("qstat", QSTAT).ok("qacct", QACCT_ARRAY);
    let s = Sge::status(&b, ids(&["237"])).unwrap().remove(0);
    assert!(
        matches!(&s.state, JobState::Failed(r) if r.starts_with("task 237.2")),
        "{s:?}"
    );
}

#[test]
fn a_job_nobody_remembers_is_unknown_with_qaccts_words() {
    let b = Script::new()
        .ok("qstat", QSTAT)
        .run("qacct", 1, "", QACCT_UNKNOWN);
    let s = Sge::status(&b, ids(&["999"])).unwrap().remove(0);
    assert_eq!(s.state, JobState::Unknown);
    assert!(s.message.unwrap().contains("job id 999 not found"));
}

#[test]
fn cancel_of_a_job_grid_engine_forgot_is_not_an_error() {
    // qdel says so on stdout.
    let b = Script::new().run("qdel", 1, QDEL_UNKNOWN, "");
    Sge::cancel(&b, "999".into()).unwrap();
    // qdel cannot reach the qmaster, and neither can qstat's confirmation: an error.
    let commlib = "error: commlib error: can't connect to service\n";
    let b = Script::new()
        .run("qdel", 1, "", commlib)
        .run("qstat", 1, "", commlib);
    assert!(matches!(
        Sge::cancel(&b, "1".into()),
        Err(Error::Backend(_))
    ));
}

#[test]
fn qsub_terse_output_gives_the_job_id() {
    assert_eq!(parse_qsub(QSUB).unwrap(), "240");
    assert_eq!(parse_qsub(QSUB_ARRAY).unwrap(), "241");
    assert!(parse_qsub("Unable to run job: denied\n").is_err());
}

#[test]
fn render_is_exactly_what_submit_sends() {
    let mut spec = JobSpec::command("/bin/echo", ["$(x)", "it's"]);
    spec.name = Some("a'b'$c".into());
    let rendered = Sge::render(&Script::new(), spec.clone()).unwrap();
    let b = Script::new().ok("qsub", QSUB);
    assert_eq!(Sge::submit(&b, spec).unwrap(), "240");
    let cmd = &b.commands()[0];
    assert_eq!(cmd.stdin.as_deref(), Some(rendered.as_bytes()));
    assert_eq!(
        cmd.args,
        ["-terse", "-C", "", "-S", "/bin/sh", "-N", "a'b'$c"]
    );
}

#[test]
fn resources_arrays_and_dependencies_become_qsub_options() {
    let mut spec = JobSpec::command("true", Vec::<String>::new());
    spec.tasks_per_node = Some(4);
    spec.memory_mb = Some(2048);
    spec.walltime_seconds = Some(90);
    spec.array = Some(JobArray {
        first: 1,
        last: 5,
        step: 2,
        max_running: Some(2),
    });
    spec.dependencies = vec![Dependency {
        kind: DependencyKind::AfterAny,
        job: "7".into(),
    }];
    spec.attributes = vec![
        ("sge.pe".into(), "smp".into()),
        ("sge.arch".into(), "lx-amd64".into()),
    ];
    assert_eq!(
        qsub_args(&spec).unwrap(),
        [
            "-terse",
            "-C",
            "",
            "-S",
            "/bin/sh",
            "-pe",
            "smp",
            "4",
            "-l",
            "h_vmem=2048M,h_rt=00:01:30,arch=lx-amd64",
            "-t",
            "1-5:2",
            "-tc",
            "2",
            "-hold_jid",
            "7",
        ]
    );
}

#[test]
fn unsupported_dependencies_and_missing_pe_are_refused() {
    let mut spec = JobSpec::command("true", Vec::<String>::new());
    spec.dependencies = vec![Dependency {
        kind: DependencyKind::AfterOk,
        job: "7".into(),
    }];
    assert!(matches!(qsub_args(&spec), Err(Error::Unsupported(_))));
    let mut spec = JobSpec::command("true", Vec::<String>::new());
    spec.cpus_per_task = Some(2);
    assert!(matches!(qsub_args(&spec), Err(Error::Invalid(m)) if m.contains("sge.pe")));
}

#[test]
fn drain_disables_every_queue_on_the_host() {
    let b = Script::new().ok("qmod", "").ok("qmod", "");
    Sge::drain_node(&b, "node01".into(), "any".into()).unwrap();
    Sge::resume_node(&b, "node01".into()).unwrap();
    let c = b.commands();
    assert_eq!(c[0].args, ["-d", "*@node01"]);
    assert_eq!(c[1].args, ["-e", "*@node01"]);
    assert!(matches!(
        Sge::drain_node(&b, "*".into(), "".into()),
        Err(Error::Invalid(_))
    ));
}

#[test]
fn task_lists_match_the_tasks_they_name() {
    assert!(tasks_hold("2-6:2", 4));
    assert!(!tasks_hold("2-6:2", 5));
    assert!(tasks_hold("1,3", 3));
    assert!(!tasks_hold("1", 2));
}

#[test]
fn a_resource_value_with_a_comma_cannot_add_resources() {
    let mut spec = JobSpec::command("true", Vec::<String>::new());
    spec.attributes = vec![("sge.arch".into(), "lx-amd64,h_rt=99:00:00".into())];
    assert!(matches!(qsub_args(&spec), Err(Error::Invalid(_))));
}

#[test]
fn embedded_directives_are_off_so_a_value_cannot_add_qsub_options() {
    // Grid Engine reads `#$` lines anywhere in the script; a line break in a value
    // would otherwise start one.
    let mut spec = JobSpec::command("/bin/echo", ["x\n#$ -q other.q"]);
    spec.environment = vec![("V".into(), "y\n#$ -l h_rt=99:00:00".into())];
    let args = qsub_args(&spec).unwrap();
    let c = args.iter().position(|a| a == "-C").expect("-C given");
    assert_eq!(args[c + 1], "", "{args:?}");
    let script = Sge::render(&Script::new(), spec).unwrap();
    assert!(script.lines().any(|l| l.starts_with("#$ -q")), "{script}");
}

#[test]
fn identity_attributes_are_refused_saying_jobs_run_as_their_owner() {
    for key in [
        "sge.u",
        "sge.uid",
        "sge.GID",
        "sge.user",
        "sge.group",
        "sge.owner",
    ] {
        let mut spec = JobSpec::command("true", Vec::<String>::new());
        spec.attributes = vec![(key.into(), "root".into())];
        let e = qsub_args(&spec).unwrap_err();
        assert!(
            matches!(&e, Error::Invalid(m) if m.contains("runs as") && m.contains(key)),
            "{key}: {e:?}"
        );
    }
    // A key that is an option, not a resource name, is refused too.
    let mut spec = JobSpec::command("true", Vec::<String>::new());
    spec.attributes = vec![("sge.-u".into(), "root".into())];
    assert!(matches!(qsub_args(&spec), Err(Error::Invalid(_))));
}

#[test]
fn output_paths_keep_their_colons() {
    let mut spec = JobSpec::command("true", Vec::<String>::new());
    spec.stdout_path = Some("/data/run:1/out".into());
    spec.stderr_path = Some("/data/err".into());
    let args = qsub_args(&spec).unwrap();
    let after = |flag: &str| args[args.iter().position(|a| a == flag).unwrap() + 1].clone();
    assert_eq!(after("-o"), ":/data/run:1/out");
    assert_eq!(after("-e"), ":/data/err");
}

#[test]
fn names_grid_engine_would_refuse_are_refused_before_qsub_runs() {
    for bad in [
        "a b", "ünï", "a*b", "a:b", "a@b", "a/b", "a\\b", "a?b", "1st", "", "a\tb",
    ] {
        let e = check_name(bad).unwrap_err();
        assert!(
            matches!(&e, Error::Invalid(m) if m.contains("Grid Engine takes")),
            "{bad:?}: {e:?}"
        );
    }
    assert!(check_name(&"a".repeat(MAX_NAME)).is_ok());
    assert!(check_name(&"a".repeat(MAX_NAME + 1)).is_err());
    check_name("na'me\"$HOME\"`id`;&|<>$(x)~%#").unwrap();
    let mut spec = JobSpec::command("true", Vec::<String>::new());
    spec.name = Some("two words".into());
    assert!(matches!(qsub_args(&spec), Err(Error::Invalid(_))));
}

const READY: Option<NodeState> = Some(NodeState {
    drained: false,
    reason: None,
});
const DISABLED: Option<NodeState> = Some(NodeState {
    drained: true,
    reason: None,
});

#[test]
fn a_host_is_drained_when_its_queues_are_disabled_and_never_has_a_reason() {
    assert_eq!(parse_host("vm", HOST_ENABLED).unwrap(), READY);
    assert_eq!(parse_host("vm", HOST_DISABLED).unwrap(), DISABLED);
}

#[test]
fn one_disabled_queue_of_several_makes_the_host_drained() {
    // corral.q@vm enabled, corral2.q@vm disabled by hand: resume-node would enable both.
    assert_eq!(parse_host("vm", HOST_PARTLY_DISABLED).unwrap(), DISABLED);
}

#[test]
fn node_state_lists_the_hosts_queue_instances_and_a_silent_failure_is_no_host() {
    let b = Script::new()
        .ok("qstat", HOST_DISABLED)
        .run("qstat", 1, "", "")
        .run(
            "qstat",
            1,
            "",
            "error: commlib error: got select error (Connection refused)\n",
        );
    assert_eq!(Sge::node_state(&b, "vm".into()).unwrap(), DISABLED);
    assert_eq!(b.commands()[0].args, ["-xml", "-f", "-q", "*@vm"]);
    assert_eq!(Sge::node_state(&b, "nosuch".into()).unwrap(), None);
    assert!(matches!(
        Sge::node_state(&b, "vm".into()),
        Err(Error::Backend(m)) if m.contains("commlib error")
    ));
    assert!(matches!(
        Sge::node_state(&b, "*".into()),
        Err(Error::Invalid(_))
    ));
    b.assert_done();
}
