//! Native tests of the PBS plugin against fixtures in PBS Pro's documented formats
//! (hand-written, not captured: PBS cannot run on the project's machines).

use super::*;
use corral_plugin_sdk::testing::Script;
use corral_plugin_sdk::{Dependency, DependencyKind, JobArray};

const QSTAT: &str = include_str!("../fixtures/qstat-f-json-x.json");
const QSTAT_UNKNOWN: &str = include_str!("../fixtures/qstat-unknown.stderr");
const QSUB: &str = include_str!("../fixtures/qsub.txt");
const QSUB_ARRAY: &str = include_str!("../fixtures/qsub-array.txt");
const QDEL_FINISHED: &str = include_str!("../fixtures/qdel-finished.stderr");
const QDEL_UNKNOWN: &str = include_str!("../fixtures/qdel-unknown.stderr");
const PBSNODES_OFFLINE: &str = include_str!("../fixtures/pbsnodes-offline.json");
const PBSNODES_FREE: &str = include_str!("../fixtures/pbsnodes-free.json");
const PBSNODES_UNKNOWN: &str = include_str!("../fixtures/pbsnodes-unknown.stderr");

fn ids(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn status_of(id: &str) -> JobStatus {
    let recs = parse_qstat(QSTAT).unwrap();
    recs.iter().find(|r| r.id == id).unwrap().status()
}

#[test]
fn the_state_table_maps_every_pbs_state() {
    let rec = |state: &str| Record {
        id: "1.s".into(),
        job_state: state.into(),
        substate: None,
        exit_status: Some(0),
        comment: None,
        walltime_used: None,
        walltime_limit: None,
    };
    assert_eq!(rec("Q").status().state, JobState::Queued(false));
    assert_eq!(rec("W").status().state, JobState::Queued(false));
    assert_eq!(rec("H").status().state, JobState::Queued(true));
    assert_eq!(rec("R").status().state, JobState::Running);
    assert_eq!(rec("B").status().state, JobState::Running);
    assert_eq!(rec("S").status().state, JobState::Suspended);
    assert_eq!(rec("E").status().state, JobState::Completing);
    assert_eq!(rec("F").status().state, JobState::Succeeded);
    assert_eq!(rec("M").status().state, JobState::Unknown);
    assert_eq!(rec("Z").status().state, JobState::Unknown);
    let states: Vec<&str> = STATES.iter().flat_map(|(_, n)| n.iter().copied()).collect();
    for (i, n) in states.iter().enumerate() {
        assert!(!states[..i].contains(n), "{n} listed twice");
    }
}

#[test]
fn finished_jobs_are_read_from_exit_status_and_substate() {
    let ok = status_of("101.pbs-head");
    assert_eq!((ok.state, ok.exit_code), (JobState::Succeeded, Some(0)));
    let failed = status_of("102.pbs-head");
    assert_eq!(
        (failed.state, failed.exit_code),
        (JobState::Failed("exit code 3".into()), Some(3))
    );
    let deleted = status_of("103.pbs-head");
    assert_eq!(
        (deleted.state, deleted.exit_code),
        (JobState::Cancelled, None)
    );
    let too_long = status_of("104.pbs-head");
    assert_eq!(too_long.state, JobState::TimedOut);
}

#[test]
fn a_job_killed_by_a_signal_within_its_walltime_failed() {
    let mut r = parse_qstat(QSTAT)
        .unwrap()
        .into_iter()
        .find(|r| r.id == "104.pbs-head")
        .unwrap();
    r.walltime_used = Some(10);
    assert_eq!(ended(&r), JobState::Failed("killed by signal 15".into()));
}

#[test]
fn a_job_pbs_could_not_run_names_the_pbs_reason() {
    let mut r = parse_qstat(QSTAT)
        .unwrap()
        .into_iter()
        .find(|r| r.id == "102.pbs-head")
        .unwrap();
    r.exit_status = Some(-10);
    assert_eq!(
        ended(&r),
        JobState::Failed("PBS could not run the job: invalid uid/gid for job".into())
    );
}

#[test]
fn live_jobs_are_running_held_or_queued_with_the_scheduler_comment() {
    assert_eq!(status_of("105.pbs-head").state, JobState::Running);
    assert_eq!(status_of("106.pbs-head").state, JobState::Queued(true));
    let q = status_of("107.pbs-head");
    assert_eq!(q.state, JobState::Queued(false));
    assert!(q
        .message
        .unwrap()
        .contains("Insufficient amount of resource"));
}

#[test]
fn arrays_are_running_while_begun_and_failed_when_a_subjob_failed() {
    assert_eq!(status_of("108[].pbs-head").state, JobState::Running);
    let done = status_of("109[].pbs-head");
    assert!(matches!(done.state, JobState::Failed(r) if r.contains("subjob")));
}

#[test]
fn status_asks_qstat_once_and_reports_unknown_jobs_with_its_words() {
    let b = Script::new().run("qstat", 153, QSTAT, QSTAT_UNKNOWN);
    let got = Pbs::status(&b, ids(&["101.pbs-head", "105", "999.pbs-head"])).unwrap();
    b.assert_done();
    let cmd = &b.commands()[0];
    assert_eq!(
        cmd.args,
        [
            "-f",
            "-F",
            "json",
            "-x",
            "101.pbs-head",
            "105",
            "999.pbs-head"
        ]
    );
    assert_eq!(got.len(), 3);
    assert_eq!(got[0].state, JobState::Succeeded);
    assert_eq!(
        (got[1].id.as_str(), &got[1].state),
        ("105", &JobState::Running)
    );
    assert_eq!(got[2].state, JobState::Unknown);
    assert!(got[2]
        .message
        .as_deref()
        .unwrap()
        .contains("Unknown Job Id 999.pbs-head"));
}

#[test]
fn a_qstat_failure_other_than_unknown_jobs_is_an_error() {
    let b = Script::new().run(
        "qstat",
        15010,
        "",
        "Connection refused\nqstat: cannot connect to server pbs-head (errno=15010)\n",
    );
    let e = Pbs::status(&b, ids(&["1"])).unwrap_err();
    assert!(
        matches!(&e, Error::Backend(m) if m.starts_with("qstat exited with status 15010")),
        "{e:?}"
    );
}

#[test]
fn cancel_of_a_finished_or_forgotten_job_is_not_an_error() {
    for stderr in [QDEL_FINISHED, QDEL_UNKNOWN] {
        let b = Script::new().run("qdel", 35, "", stderr);
        Pbs::cancel(&b, "101.pbs-head".into()).unwrap();
    }
    // A refusal of qdel's own, and qstat confirms the job still runs: an error.
    let b = Script::new()
        .run("qdel", 1, "", "qdel: Unauthorized Request  101.pbs-head\n")
        .ok("qstat", r#"{"Jobs":{"101.pbs-head":{"job_state":"R"}}}"#);
    assert!(matches!(
        Pbs::cancel(&b, "101.pbs-head".into()),
        Err(Error::Backend(_))
    ));
}

#[test]
fn qsub_output_gives_the_id_for_jobs_and_arrays() {
    assert_eq!(parse_qsub(QSUB).unwrap(), "110.pbs-head");
    assert_eq!(parse_qsub(QSUB_ARRAY).unwrap(), "111[].pbs-head");
    assert!(parse_qsub("qsub: illegal -l value\n").is_err());
}

#[test]
fn render_is_exactly_what_submit_sends_with_a_literal_name() {
    let mut spec = JobSpec::command("/bin/echo", ["it's", "$(x)", "a b"]);
    spec.name = Some("n'a $(m) & e".into());
    let rendered = Pbs::render(&Script::new(), spec.clone()).unwrap();
    let b = Script::new().ok("qsub", QSUB);
    assert_eq!(Pbs::submit(&b, spec).unwrap(), "110.pbs-head");
    let cmd = &b.commands()[0];
    assert_eq!(cmd.stdin.as_deref(), Some(rendered.as_bytes()));
    assert_eq!(cmd.args[..4], ["-S", "/bin/sh", "-N", "n'a $(m) & e"]);
    assert!(
        rendered.ends_with("exec '/bin/echo' 'it'\\''s' '$(x)' 'a b'\n"),
        "{rendered}"
    );
}

#[test]
fn resources_arrays_and_dependencies_become_qsub_options() {
    let mut spec = JobSpec::command("true", Vec::<String>::new());
    spec.nodes = Some(2);
    spec.tasks_per_node = Some(4);
    spec.cpus_per_task = Some(2);
    spec.gpus_per_node = Some(1);
    spec.memory_mb = Some(1024);
    spec.walltime_seconds = Some(3661);
    spec.reservation = Some("R42.pbs-head".into());
    spec.array = Some(JobArray {
        first: 1,
        last: 10,
        step: 3,
        max_running: Some(2),
    });
    spec.dependencies = vec![
        Dependency {
            kind: DependencyKind::AfterOk,
            job: "5.pbs-head".into(),
        },
        Dependency {
            kind: DependencyKind::AfterNotOk,
            job: "6".into(),
        },
    ];
    spec.attributes = vec![("pbs.place".into(), "scatter".into())];
    assert_eq!(
        qsub_args(&spec).unwrap(),
        [
            "-S",
            "/bin/sh",
            "-q",
            "R42",
            "-l",
            "select=2:ncpus=8:mpiprocs=4:ngpus=1:mem=1024mb",
            "-l",
            "walltime=01:01:01",
            "-J",
            "1-10:3%2",
            "-W",
            "depend=afterok:5.pbs-head,afternotok:6",
            "-l",
            "place=scatter",
        ]
    );
}

#[test]
fn bad_ids_names_and_options_are_refused() {
    let b = Script::new();
    for bad in ["", "1;x", "abc", "1.", "1[x]", "-1"] {
        assert!(
            matches!(Pbs::status(&b, ids(&[bad])), Err(Error::Invalid(_))),
            "{bad:?}"
        );
    }
    let mut spec = JobSpec::command("true", Vec::<String>::new());
    spec.name = Some("a\n#PBS -l ncpus=999".into());
    assert!(matches!(Pbs::render(&b, spec), Err(Error::Invalid(_))));
    let mut spec = JobSpec::command("true", Vec::<String>::new());
    spec.queue = Some("q".into());
    spec.reservation = Some("R1".into());
    assert!(matches!(qsub_args(&spec), Err(Error::Invalid(_))));
    assert!(b.calls().is_empty());
}

#[test]
fn drain_and_resume_use_pbsnodes_offline_and_always_replace_the_comment() {
    let b = Script::new()
        .ok("pbsnodes", "")
        .ok("pbsnodes", "")
        .ok("pbsnodes", "");
    Pbs::drain_node(&b, "node01".into(), "fan; see #7".into()).unwrap();
    Pbs::drain_node(&b, "node01".into(), "".into()).unwrap();
    Pbs::resume_node(&b, "node01".into()).unwrap();
    let c = b.commands();
    assert_eq!(c[0].args, ["-o", "-C", "fan; see #7", "node01"]);
    assert_eq!(c[1].args, ["-o", "-C", "drained by corral", "node01"]);
    assert_eq!(c[2].args, ["-r", "-C", "resumed by corral", "node01"]);
    assert!(matches!(
        Pbs::drain_node(&b, "-r".into(), "".into()),
        Err(Error::Invalid(_))
    ));
}

#[test]
fn resource_names_of_identity_attributes_are_refused() {
    for key in ["u", "group_list", "User_List"] {
        let mut spec = JobSpec::command("true", Vec::<String>::new());
        spec.attributes = vec![(format!("pbs.{key}"), "root".into())];
        assert!(
            matches!(qsub_args(&spec), Err(Error::Invalid(m)) if m.contains("runs as")),
            "{key}"
        );
    }
}

#[test]
fn an_offline_vnode_is_drained_with_its_comment_verbatim() {
    assert_eq!(
        parse_pbsnodes("node01", PBSNODES_OFFLINE).unwrap(),
        Some(NodeState {
            drained: true,
            reason: Some("corral: gpu 0 XID 79; see #7".into()),
        })
    );
}

#[test]
fn a_free_vnode_is_not_drained_and_its_old_comment_is_no_reason() {
    assert_eq!(
        parse_pbsnodes("node01", PBSNODES_FREE).unwrap(),
        Some(NodeState {
            drained: false,
            reason: None,
        })
    );
    let down_offline = r#"{"nodes": {"n2": {"state": "down,offline"}}}"#;
    assert_eq!(
        parse_pbsnodes("n2", down_offline).unwrap(),
        Some(NodeState {
            drained: true,
            reason: None,
        })
    );
}

#[test]
fn node_state_asks_pbsnodes_for_json_and_knows_an_unknown_node() {
    let b = Script::new()
        .ok("pbsnodes", PBSNODES_OFFLINE)
        .run("pbsnodes", 15, "", PBSNODES_UNKNOWN)
        .run(
            "pbsnodes",
            1,
            "",
            "pbsnodes: cannot connect to server pbs-head, error=15010\n",
        );
    assert!(
        Pbs::node_state(&b, "node01".into())
            .unwrap()
            .unwrap()
            .drained
    );
    assert_eq!(b.commands()[0].args, ["-F", "json", "-v", "node01"]);
    assert_eq!(Pbs::node_state(&b, "node99".into()).unwrap(), None);
    assert!(matches!(
        Pbs::node_state(&b, "node01".into()),
        Err(Error::Backend(m)) if m.contains("cannot connect")
    ));
    b.assert_done();
}

#[test]
fn pbsnodes_output_about_other_vnodes_is_an_error() {
    let two = r#"{"nodes": {"a": {"state": "free"}, "b": {"state": "offline"}}}"#;
    assert!(matches!(
        parse_pbsnodes("c", two),
        Err(Error::Backend(m)) if m.contains("none of them")
    ));
    assert_eq!(parse_pbsnodes("c", r#"{"nodes": {}}"#).unwrap(), None);
}
