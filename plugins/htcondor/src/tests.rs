//! Native tests of the HTCondor plugin against fixtures written by hand from HTCondor's
//! documented formats (job ClassAds as `condor_q -json` / `condor_history -json` print
//! them, `condor_submit -terse` id ranges): no HTCondor runs on the project's machines.

use super::*;
use corral_plugin_sdk::testing::Script;
use corral_plugin_sdk::{Dependency, DependencyKind, JobArray, JobState, Scheduler};

const CONDOR_Q: &str = include_str!("../fixtures/condor_q.json");
const CONDOR_HISTORY: &str = include_str!("../fixtures/condor_history.json");
const TERSE_OUT: &str = include_str!("../fixtures/condor_submit-terse.txt");
/// What condor_rm prints is not documented and not read: any failure is confirmed.
const CONDOR_RM_GONE: &str = include_str!("../fixtures/condor_rm-gone.stderr");

fn ids(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn state_of(got: &[JobStatus], id: &str) -> JobStatus {
    got.iter().find(|s| s.id == id).unwrap().clone()
}

#[test]
fn the_state_table_maps_every_job_status_number() {
    let ad = |n| Ad {
        job_status: n,
        exit_code: Some(0),
        ..Ad::default()
    };
    assert_eq!(ad(1).status().state, JobState::Queued(false));
    assert_eq!(ad(2).status().state, JobState::Running);
    assert_eq!(ad(3).status().state, JobState::Cancelled);
    assert_eq!(ad(4).status().state, JobState::Succeeded);
    assert_eq!(ad(5).status().state, JobState::Queued(true));
    assert_eq!(ad(6).status().state, JobState::Completing);
    assert_eq!(ad(7).status().state, JobState::Suspended);
    let odd = ad(9).status();
    assert_eq!(odd.state, JobState::Unknown);
    assert!(odd
        .message
        .unwrap()
        .contains("unrecognised HTCondor state \"9\""));
    assert_eq!(TABLE.duplicate(), None);
}

#[test]
fn a_completed_job_is_read_from_its_exit_code_or_signal() {
    let ads: Vec<Ad> = records::json("condor_history", CONDOR_HISTORY).unwrap();
    let st: Vec<JobStatus> = ads.iter().map(Ad::status).collect();
    assert_eq!(
        (st[0].state.clone(), st[0].exit_code),
        (JobState::Succeeded, Some(0))
    );
    assert_eq!(
        (st[1].state.clone(), st[1].exit_code),
        (JobState::Failed("exit code 3".into()), Some(3))
    );
    assert_eq!(st[2].state, JobState::Failed("killed by signal 9".into()));
    assert_eq!(st[2].exit_code, None);
    assert_eq!(st[3].state, JobState::Cancelled);
    assert_eq!(
        st[3].message.as_deref(),
        Some("via condor_rm (by user alice)")
    );
    // Completed without an exit code is never called success.
    let bare = Ad {
        job_status: 4,
        ..Ad::default()
    };
    assert_eq!(bare.status().state, JobState::Unknown);
}

#[test]
fn status_asks_condor_q_once_and_the_history_only_for_the_rest() {
    let b = Script::new()
        .ok("condor_q", CONDOR_Q)
        .ok("condor_history", CONDOR_HISTORY);
    let asked = [
        "101", "102.0", "103", "104", "105", "108", "110", "111", "112", "113", "101",
    ];
    let got = HtCondor::status(&b, ids(&asked)).unwrap();
    b.assert_done();
    let cmds = b.commands();
    assert_eq!(cmds[0].args[..3], ["-json", "-attributes", ATTRS]);
    assert_eq!(
        cmds[0].args[3..],
        ["101", "102.0", "103", "104", "105", "108", "110", "111", "112", "113"]
    );
    assert_eq!(cmds[1].args[3..], ["110", "111", "112", "113"]);
    assert_eq!(got.len(), 10);
    assert_eq!(state_of(&got, "101").state, JobState::Queued(false));
    assert_eq!(state_of(&got, "102.0").state, JobState::Running);
    let held = state_of(&got, "103");
    assert_eq!(held.state, JobState::Queued(true));
    assert!(held.message.unwrap().contains("Failed to execute"));
    assert_eq!(state_of(&got, "104").state, JobState::Completing);
    assert_eq!(state_of(&got, "105").state, JobState::Suspended);
    let cluster = state_of(&got, "108");
    assert_eq!(cluster.state, JobState::Running);
    assert!(cluster.message.unwrap().starts_with("2 tasks: "));
    assert_eq!(state_of(&got, "110").state, JobState::Succeeded);
    assert!(matches!(state_of(&got, "111").state, JobState::Failed(_)));
    assert!(matches!(state_of(&got, "112").state, JobState::Failed(_)));
    assert_eq!(state_of(&got, "113").state, JobState::Cancelled);
}

#[test]
fn a_job_that_ended_in_the_queue_keeps_its_answer_when_the_history_has_none() {
    let b = Script::new()
        .ok("condor_q", CONDOR_Q)
        .ok("condor_history", "");
    let got = HtCondor::status(&b, ids(&["106", "107"])).unwrap();
    b.assert_done();
    assert_eq!(
        (got[0].state.clone(), got[0].exit_code),
        (JobState::Succeeded, Some(0))
    );
    assert_eq!(got[1].state, JobState::Cancelled);
}

#[test]
fn a_job_neither_the_queue_nor_the_history_knows_is_unknown_with_the_reason() {
    let b = Script::new()
        .ok("condor_q", "")
        .ok("condor_history", "[\n]\n");
    let got = HtCondor::status(&b, ids(&["999"])).unwrap();
    assert_eq!(got[0].state, JobState::Unknown);
    assert!(got[0]
        .message
        .as_deref()
        .unwrap()
        .contains("condor_history"));
}

#[test]
fn a_schedd_that_cannot_be_reached_is_a_backend_error() {
    let b = Script::new().run(
        "condor_q",
        1,
        "",
        "-- Failed to fetch ads from: <127.0.0.1:9618> : node01\n",
    );
    let e = HtCondor::status(&b, ids(&["101"])).unwrap_err();
    assert!(
        matches!(&e, Error::Backend(m) if m.starts_with("condor_q exited with status 1")),
        "{e:?}"
    );
}

#[test]
fn malformed_ids_are_refused_before_anything_runs() {
    let b = Script::new();
    for bad in ["", "1;x", "1.2.3", "-1", "1.", "x"] {
        let status = HtCondor::status(&b, ids(&[bad]));
        assert!(matches!(status, Err(Error::Invalid(_))), "{bad:?}");
        let cancel = HtCondor::cancel(&b, bad.into());
        assert!(matches!(cancel, Err(Error::Invalid(_))), "{bad:?}");
    }
    assert!(b.calls().is_empty());
}

#[test]
fn a_failed_condor_rm_of_a_job_that_ended_is_a_cancel() {
    let b = Script::new()
        .run("condor_rm", 1, "", CONDOR_RM_GONE)
        .ok("condor_q", "")
        .ok("condor_history", CONDOR_HISTORY);
    HtCondor::cancel(&b, "110".into()).unwrap();
    b.assert_done();
    assert_eq!(b.commands()[0].args, ["110"]);
}

#[test]
fn a_failed_condor_rm_of_a_running_job_is_an_error() {
    let b = Script::new()
        .run("condor_rm", 1, "", "Permission denied for job 102.0\n")
        .ok("condor_q", CONDOR_Q);
    let e = HtCondor::cancel(&b, "102".into()).unwrap_err();
    assert!(
        matches!(&e, Error::Backend(m) if m.contains("Permission denied")),
        "{e:?}"
    );
}

fn nasty_spec() -> JobSpec {
    let mut spec = JobSpec::command(
        "/bin/echo",
        ["it's", "$(HOME)", "a \"b\"", "", "tab\there", "back\\"],
    );
    spec.environment = vec![("GREETING".into(), "it's $USER".into())];
    spec.name = Some("n $(x)".into());
    spec.directory = Some("/tmp/a b".into());
    spec
}

#[test]
fn render_is_exactly_what_submit_sends_and_submit_returns_the_cluster() {
    let spec = nasty_spec();
    let rendered = HtCondor::render(&Script::new(), spec.clone()).unwrap();
    let b = Script::new().ok("condor_submit", TERSE_OUT);
    assert_eq!(HtCondor::submit(&b, spec).unwrap(), "120");
    let cmd = &b.commands()[0];
    assert_eq!(cmd.args, ["-terse", "-"]);
    assert_eq!(cmd.stdin.as_deref(), Some(rendered.as_bytes()));
    assert!(rendered.starts_with("# corral: [\"condor_submit\", \"-terse\", \"-\"]\n"));
    assert!(rendered.ends_with("queue 1\n"));
}

#[test]
fn every_value_reaches_the_description_literally() {
    let d = description("condor_submit", &[], &nasty_spec()).unwrap();
    let lines: Vec<&str> = d.lines().collect();
    assert!(lines.contains(&"executable = /bin/echo"), "{d}");
    assert!(
        lines.contains(
            &"arguments = \"'it''s' '$(DOLLAR)(HOME)' 'a \"\"b\"\"' '' 'tab\there' 'back\\'\""
        ),
        "{d}"
    );
    assert!(
        lines.contains(&"environment = \"GREETING='it''s $(DOLLAR)USER'\""),
        "{d}"
    );
    assert!(lines.contains(&"batch_name = n $(DOLLAR)(x)"), "{d}");
    assert!(lines.contains(&"initialdir = /tmp/a b"), "{d}");
    // Exactly one queue statement, last.
    assert_eq!(lines.iter().filter(|l| l.starts_with("queue")).count(), 1);
}

#[test]
fn a_value_that_would_add_a_command_or_continue_a_line_is_refused() {
    for name in ["x\nqueue 100", "x\\", " x"] {
        let mut spec = JobSpec::command("/bin/true", Vec::<String>::new());
        spec.name = Some(name.into());
        assert!(
            matches!(
                description("condor_submit", &[], &spec),
                Err(Error::Invalid(_))
            ),
            "{name:?}"
        );
    }
    let spec = JobSpec::command("/bin/echo", ["a\nqueue 5"]);
    assert!(description("condor_submit", &[], &spec).is_err());
}

#[test]
fn resources_and_attributes_become_submit_commands() {
    let mut spec = JobSpec::command("/bin/true", Vec::<String>::new());
    spec.tasks_per_node = Some(2);
    spec.cpus_per_task = Some(3);
    spec.memory_mb = Some(2048);
    spec.gpus_per_node = Some(1);
    spec.nodes = Some(1);
    spec.attributes = vec![
        (
            "htcondor.requirements".into(),
            "(OpSys == \"LINUX\")".into(),
        ),
        ("htcondor.+ProjectName".into(), "\"physics\"".into()),
        ("slurm.constraint".into(), "x".into()),
    ];
    let d = description("condor_submit", &[], &spec).unwrap();
    for want in [
        "request_cpus = 6",
        "request_memory = 2048",
        "request_gpus = 1",
        "requirements = (OpSys == \"LINUX\")",
        "+ProjectName = \"physics\"",
    ] {
        assert!(d.lines().any(|l| l == want), "{want}: {d}");
    }
    assert!(!d.contains("constraint"));
}

#[test]
fn attributes_that_change_identity_or_what_the_plugin_writes_are_refused() {
    let refused = |key: &str| {
        let mut spec = JobSpec::command("/bin/true", Vec::<String>::new());
        spec.attributes = vec![(format!("htcondor.{key}"), "root".into())];
        match description("condor_submit", &[], &spec) {
            Err(Error::Invalid(m)) => m,
            other => panic!("{key}: {other:?}"),
        }
    };
    for key in [
        "+Owner",
        "+owner",
        "accounting_group_user",
        "Run_As_Owner",
        "+User",
    ] {
        assert!(refused(key).contains("runs as"), "{key}");
    }
    for key in ["queue", "Executable", "universe", "include", "getenv"] {
        assert!(refused(key).contains("managed by the plugin"), "{key}");
    }
    // `MY.Owner` is the same attribute as `+Owner`: custom attributes are `+Attr` only.
    assert!(refused("MY.Owner").contains("+Attribute"));
}

#[test]
fn what_htcondor_cannot_express_here_is_refused_not_dropped() {
    let base = JobSpec::command("/bin/true", Vec::<String>::new());
    let mut cases = Vec::new();
    let mut s = base.clone();
    s.array = Some(JobArray {
        first: 1,
        last: 3,
        step: 1,
        max_running: None,
    });
    cases.push(s);
    let mut s = base.clone();
    s.dependencies = vec![Dependency {
        kind: DependencyKind::AfterOk,
        job: "5".into(),
    }];
    cases.push(s);
    let mut s = base.clone();
    s.queue = Some("short".into());
    cases.push(s);
    let mut s = base.clone();
    s.walltime_seconds = Some(60);
    cases.push(s);
    let mut s = base;
    s.nodes = Some(2);
    cases.push(s);
    for spec in cases {
        let e = HtCondor::render(&Script::new(), spec).unwrap_err();
        assert!(
            matches!(&e, Error::Unsupported(m) if m.starts_with("HTCondor has no")),
            "{e:?}"
        );
    }
}

#[test]
fn terse_output_gives_the_cluster_id() {
    assert_eq!(parse_terse(TERSE_OUT).unwrap(), "120");
    assert_eq!(parse_terse("121.0 - 121.4\n").unwrap(), "121");
    assert!(parse_terse("ERROR: Failed to connect to local queue manager\n").is_err());
}

#[test]
fn info_names_the_plugin_as_its_manifest_does() {
    let info = HtCondor::info();
    assert_eq!(
        (info.name.as_str(), info.scheduler.as_str()),
        ("htcondor", "HTCondor")
    );
    let manifest = include_str!("../htcondor.toml");
    assert!(manifest.contains("name = \"htcondor\""));
    for program in ["condor_submit", "condor_q", "condor_history", "condor_rm"] {
        assert!(manifest.contains(&format!("\"{program}\"")), "{program}");
    }
}

#[test]
fn node_state_is_unsupported_without_running_anything() {
    // HTCondor has no drain here (no Drain feature): the SDK's default answers.
    let b = Script::new();
    assert!(matches!(
        HtCondor::node_state(&b, "node01".into()),
        Err(Error::Unsupported(m)) if m == "node-state"
    ));
    assert!(b.calls().is_empty());
}
