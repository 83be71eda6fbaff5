//! Native tests of the LSF plugin against fixtures in LSF 10.1's documented formats
//! (hand-written, not captured: LSF cannot run on the project's machines).

use super::*;
use corral_plugin_sdk::testing::Script;
use corral_plugin_sdk::{Dependency, DependencyKind, JobArray};

const BJOBS: &str = include_str!("../fixtures/bjobs.json");
const BSUB: &str = include_str!("../fixtures/bsub.txt");
const BKILL_FINISHED: &str = include_str!("../fixtures/bkill-finished.stderr");
const BKILL_UNKNOWN: &str = include_str!("../fixtures/bkill-unknown.stderr");
const BPEEK: &str = include_str!("../fixtures/bpeek.txt");
const BHOSTS_CLOSED: &str = include_str!("../fixtures/bhosts-l-closed.txt");
const BHOSTS_OK: &str = include_str!("../fixtures/bhosts-l-ok.txt");
const BHOSTS_UNKNOWN: &str = include_str!("../fixtures/bhosts-unknown.stderr");

fn ids(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn the_state_table_maps_every_lsf_state() {
    let rec = |stat: &str| Record {
        job: "1".into(),
        index: "0".into(),
        stat: stat.into(),
        exit_code: Some(2),
        reason: String::new(),
        pend_reason: String::new(),
    };
    assert_eq!(rec("PEND").status().state, JobState::Queued(false));
    assert_eq!(rec("PSUSP").status().state, JobState::Queued(true));
    assert_eq!(rec("RUN").status().state, JobState::Running);
    assert_eq!(rec("USUSP").status().state, JobState::Suspended);
    assert_eq!(rec("SSUSP").status().state, JobState::Suspended);
    assert_eq!(rec("DONE").status().state, JobState::Succeeded);
    assert_eq!(
        rec("EXIT").status().state,
        JobState::Failed("exit code 2".into())
    );
    assert_eq!(rec("UNKWN").status().state, JobState::Unknown);
    assert_eq!(rec("NEW").status().state, JobState::Unknown);
    let states: Vec<&str> = STATES.iter().flat_map(|(_, n)| n.iter().copied()).collect();
    for (i, n) in states.iter().enumerate() {
        assert!(!states[..i].contains(n), "{n} listed twice");
    }
}

#[test]
fn bjobs_json_gives_final_states_from_exit_reasons() {
    let b = Script::new().run("bjobs", 255, BJOBS, "");
    let got = Lsf::status(
        &b,
        ids(&[
            "301", "302", "303", "304", "305", "306", "307", "308", "308[1]", "999",
        ]),
    )
    .unwrap();
    b.assert_done();
    assert_eq!(b.commands()[0].args[..4], ["-json", "-a", "-o", FIELDS]);
    let st = |id: &str| got.iter().find(|s| s.id == id).unwrap().clone();
    assert_eq!(
        (st("301").state, st("301").exit_code),
        (JobState::Succeeded, Some(0))
    );
    assert_eq!(
        (st("302").state, st("302").exit_code),
        (JobState::Failed("exit code 3".into()), Some(3))
    );
    assert_eq!(st("303").state, JobState::Cancelled);
    assert_eq!(st("304").state, JobState::TimedOut);
    assert_eq!(st("305").state, JobState::Running);
    assert_eq!(st("306").state, JobState::Queued(true));
    assert_eq!(st("307").state, JobState::Queued(true));
    assert_eq!(st("308").state, JobState::Running);
    assert_eq!(st("308[1]").state, JobState::Succeeded);
    let gone = st("999");
    assert_eq!(gone.state, JobState::Unknown);
    assert!(gone.message.unwrap().contains("Job <999> is not found"));
}

#[test]
fn a_bjobs_failure_without_json_is_an_error() {
    let b = Script::new().run("bjobs", 255, "", "LSF is down. Please wait ...\n");
    assert!(
        matches!(Lsf::status(&b, ids(&["1"])), Err(Error::Backend(m)) if m.contains("LSF is down"))
    );
}

#[test]
fn cancel_of_a_finished_or_forgotten_job_is_not_an_error() {
    for stderr in [BKILL_FINISHED, BKILL_UNKNOWN] {
        let b = Script::new().run("bkill", 255, "", stderr);
        Lsf::cancel(&b, "301".into()).unwrap();
    }
    // A refusal of bkill's own, and bjobs confirms the job still runs: an error.
    let b = Script::new()
        .run("bkill", 255, "", "Job <301>: User permission denied\n")
        .ok("bjobs", r#"{"RECORDS":[{"JOBID":"301","STAT":"RUN"}]}"#);
    assert!(matches!(
        Lsf::cancel(&b, "301".into()),
        Err(Error::Backend(_))
    ));
}

#[test]
fn bsub_output_gives_the_job_id() {
    assert_eq!(parse_bsub(BSUB).unwrap(), "310");
    assert!(parse_bsub("Request aborted by esub. Job not submitted.\n").is_err());
}

#[test]
fn render_is_exactly_what_submit_sends() {
    let mut spec = JobSpec::command("/bin/echo", ["$(x)", "it's", "a b"]);
    spec.name = Some("n 'x' $y & z".into());
    let rendered = Lsf::render(&Script::new(), spec.clone()).unwrap();
    let b = Script::new().ok("bsub", BSUB);
    assert_eq!(Lsf::submit(&b, spec).unwrap(), "310");
    let cmd = &b.commands()[0];
    assert_eq!(cmd.stdin.as_deref(), Some(rendered.as_bytes()));
    assert_eq!(cmd.args, ["-J", "n 'x' $y & z"]);
    assert!(!rendered.contains("#BSUB"));
}

#[test]
fn arrays_resources_and_dependencies_become_bsub_options() {
    let mut spec = JobSpec::command("true", Vec::<String>::new());
    spec.name = Some("sweep".into());
    spec.array = Some(JobArray {
        first: 1,
        last: 9,
        step: 2,
        max_running: Some(3),
    });
    spec.nodes = Some(2);
    spec.tasks_per_node = Some(4);
    spec.memory_mb = Some(512);
    spec.walltime_seconds = Some(3601);
    spec.gpus_per_node = Some(1);
    spec.dependencies = vec![
        Dependency {
            kind: DependencyKind::AfterOk,
            job: "5".into(),
        },
        Dependency {
            kind: DependencyKind::AfterAny,
            job: "6[2]".into(),
        },
    ];
    spec.attributes = vec![("lsf.R".into(), "select[type==X86_64]".into())];
    assert_eq!(
        bsub_args(&spec).unwrap(),
        [
            "-J",
            "sweep[1-9:2]%3",
            "-n",
            "8",
            "-R",
            "span[ptile=4]",
            "-M",
            "512MB",
            "-R",
            "rusage[mem=512MB]",
            "-W",
            "1:01",
            "-gpu",
            "num=1",
            "-w",
            "done(5) && ended(6[2])",
            "-R",
            "select[type==X86_64]",
        ]
    );
}

#[test]
fn names_that_lsf_would_read_as_arrays_are_refused() {
    let mut spec = JobSpec::command("true", Vec::<String>::new());
    spec.name = Some("run[1-3]".into());
    assert!(matches!(bsub_args(&spec), Err(Error::Invalid(m)) if m.contains("array")));
    let mut spec = JobSpec::command("true", Vec::<String>::new());
    spec.attributes = vec![("lsf.K".into(), "".into())];
    assert!(matches!(bsub_args(&spec), Err(Error::Invalid(_))));
}

#[test]
fn logs_are_the_tail_of_bpeek_without_its_header() {
    let b = Script::new().ok("bpeek", BPEEK);
    assert_eq!(Lsf::logs(&b, "305".into(), 7).unwrap(), "step 2\n");
}

#[test]
fn drain_closes_the_host_with_a_literal_comment_and_resume_replaces_it() {
    let b = Script::new()
        .ok("badmin", "")
        .ok("badmin", "")
        .ok("badmin", "");
    Lsf::drain_node(&b, "host1".into(), "disk; #4".into()).unwrap();
    Lsf::drain_node(&b, "host1".into(), " ".into()).unwrap();
    Lsf::resume_node(&b, "host1".into()).unwrap();
    let c = b.commands();
    assert_eq!(c[0].args, ["hclose", "-C", "disk; #4", "host1"]);
    assert_eq!(c[1].args, ["hclose", "-C", "drained by corral", "host1"]);
    assert_eq!(c[2].args, ["hopen", "-C", "resumed by corral", "host1"]);
}

#[test]
fn a_host_closed_by_an_admin_is_drained_with_the_comment_verbatim() {
    assert_eq!(
        parse_bhosts("host1", BHOSTS_CLOSED).unwrap(),
        Some(NodeState {
            drained: true,
            reason: Some("corral: gpu 0 XID 79; see #7".into()),
        })
    );
    // An open host's comment (the last admin action's) is no drain reason.
    assert_eq!(
        parse_bhosts("host1", BHOSTS_OK).unwrap(),
        Some(NodeState {
            drained: false,
            reason: None,
        })
    );
    // closed_Full and the like are LSF's own and lift by themselves.
    let full = BHOSTS_OK.replacen("ok        ", "closed_Full", 1);
    assert!(full.contains("\nclosed_Full "), "{full}");
    assert!(!parse_bhosts("host1", &full).unwrap().unwrap().drained);
}

#[test]
fn node_state_reads_bhosts_and_knows_a_bad_host_name() {
    let b = Script::new()
        .ok("bhosts", BHOSTS_CLOSED)
        .run("bhosts", 255, "", BHOSTS_UNKNOWN)
        .run("bhosts", 255, "", "LSF is down. Please wait ...\n");
    assert!(
        Lsf::node_state(&b, "host1".into())
            .unwrap()
            .unwrap()
            .drained
    );
    assert_eq!(b.commands()[0].args, ["-l", "host1"]);
    assert_eq!(Lsf::node_state(&b, "host99".into()).unwrap(), None);
    assert!(matches!(
        Lsf::node_state(&b, "host1".into()),
        Err(Error::Backend(m)) if m.contains("LSF is down")
    ));
    b.assert_done();
}

#[test]
fn a_host_group_is_refused_by_node_state() {
    let two = format!("{BHOSTS_CLOSED}\n{BHOSTS_OK}");
    assert!(matches!(
        parse_bhosts("groupA", &two),
        Err(Error::Invalid(m)) if m.contains("host group")
    ));
    assert_eq!(parse_bhosts("h", "").unwrap(), None);
}

#[test]
fn malformed_ids_are_refused() {
    let b = Script::new();
    for bad in ["", "1;x", "1[", "1[a]", "[1]"] {
        assert!(
            matches!(Lsf::cancel(&b, bad.into()), Err(Error::Invalid(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn the_reservation_option_is_managed_not_passed_through() {
    let mut spec = JobSpec::command("true", Vec::<String>::new());
    spec.attributes = vec![("lsf.U".into(), "other#0".into())];
    assert!(
        matches!(bsub_args(&spec), Err(Error::Invalid(m)) if m.contains("managed by the plugin"))
    );
    spec.attributes = vec![("lsf.u".into(), "ops@example.org".into())];
    assert_eq!(bsub_args(&spec).unwrap(), ["-u", "ops@example.org"]);
}
