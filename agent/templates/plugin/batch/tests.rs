//! Native tests of the {{name}} plugin against `fixtures/` (replace them with your
//! scheduler's real output, captured once), run with `cargo test -p {{package}}`.
//! `Script` answers each program run in order and records what the plugin asked.

use super::*;
use corral_plugin_sdk::testing::Script;
use corral_plugin_sdk::{JobState, Scheduler};

const SUBMIT_OUT: &str = include_str!("../fixtures/submit.txt");
const QUEUE_OUT: &str = include_str!("../fixtures/queue.json");
const HISTORY_OUT: &str = include_str!("../fixtures/history.json");
const CANCEL_FINISHED: &str = include_str!("../fixtures/cancel-finished.stderr");
const CANCEL_UNKNOWN: &str = include_str!("../fixtures/cancel-unknown.stderr");
const MANIFEST: &str = include_str!("../{{name}}.toml");

/// Arguments a shell would expand, split or run: they must reach the job unchanged.
const NASTY: &[&str] = &["it's", "$(touch /tmp/pwned)", "`id`", "a  b", "*", "-x", ""];

fn ids(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn the_state_table_maps_each_native_state_and_lists_it_once() {
    let state = |native: &str, exit_code| {
        let r = Record {
            id: "1".into(),
            state: native.into(),
            exit_code,
            reason: String::new(),
        };
        r.status().state
    };
    assert_eq!(state("PENDING", None), JobState::Queued(false));
    assert_eq!(state("HELD", None), JobState::Queued(true));
    assert_eq!(state("RUNNING", None), JobState::Running);
    assert_eq!(state("SUSPENDED", None), JobState::Suspended);
    assert_eq!(state("COMPLETING", None), JobState::Completing);
    assert_eq!(state("COMPLETED", Some(0)), JobState::Succeeded);
    assert_eq!(
        state("COMPLETED", Some(2)),
        JobState::Failed("exit code 2".into())
    );
    // Completed without an exit code is never called success.
    assert_eq!(state("COMPLETED", None), JobState::Unknown);
    assert!(matches!(state("FAILED", Some(1)), JobState::Failed(_)));
    assert_eq!(state("CANCELLED", None), JobState::Cancelled);
    assert_eq!(state("TIMEOUT", None), JobState::TimedOut);
    assert_eq!(state("SOMETHING_NEW", None), JobState::Unknown);
    assert_eq!(TABLE.duplicate(), None);
}

#[test]
fn submit_sends_what_render_shows_and_reads_the_job_id() {
    let mut spec = JobSpec::command("/bin/echo", NASTY.iter().copied());
    spec.name = Some("it's $x".into());
    spec.cpus_per_task = Some(2);
    let rendered = {{Type}}::render(&Script::new(), spec.clone()).unwrap();
    let b = Script::new().ok(SUBMIT, SUBMIT_OUT);
    assert_eq!({{Type}}::submit(&b, spec).unwrap(), "42");
    let cmd = &b.commands()[0];
    assert_eq!(cmd.program, SUBMIT);
    assert_eq!(cmd.args, ["--name", "it's $x", "--cpus", "2"]);
    assert_eq!(cmd.stdin.as_deref(), Some(rendered.as_bytes()));
    assert!(rendered.starts_with("#!/bin/sh\n# corral: "), "{rendered}");
}

#[test]
fn the_rendered_script_hands_every_argument_to_the_job_unchanged() {
    let spec = JobSpec::command("printf", ["%s\\n"].iter().chain(NASTY).copied());
    let script = {{Type}}::render(&Script::new(), spec).unwrap();
    let out = std::process::Command::new("sh")
        .args(["-c", &script])
        .output()
        .expect("run sh");
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(printed.lines().collect::<Vec<_>>(), NASTY);
}

#[test]
fn output_without_a_job_id_is_a_backend_error_quoting_it() {
    let e = parse_submit("error: queue closed\n").unwrap_err();
    assert!(
        matches!(&e, Error::Backend(m) if m.contains("queue closed")),
        "{e:?}"
    );
}

#[test]
fn a_field_the_scheduler_cannot_express_is_refused_not_dropped() {
    let mut spec = JobSpec::command("true", Vec::<String>::new());
    spec.gpus_per_node = Some(1);
    let e = {{Type}}::render(&Script::new(), spec).unwrap_err();
    assert!(
        matches!(&e, Error::Unsupported(m) if m.contains("gpus per node")),
        "{e:?}"
    );
}

#[test]
fn status_asks_the_queue_once_and_the_history_only_for_the_rest() {
    let b = Script::new().ok(QUEUE, QUEUE_OUT).ok(HISTORY, HISTORY_OUT);
    let asked = ids(&["41", "42", "43", "44", "45", "46", "47", "99", "41"]);
    let got = {{Type}}::status(&b, asked).unwrap();
    let states: Vec<(&str, JobState)> = got
        .iter()
        .map(|s| (s.id.as_str(), s.state.clone()))
        .collect();
    assert_eq!(
        states,
        [
            ("41", JobState::Running),
            ("42", JobState::Queued(false)),
            ("43", JobState::Queued(true)),
            ("44", JobState::Succeeded),
            ("45", JobState::Failed("exit code 3".into())),
            ("46", JobState::Cancelled),
            ("47", JobState::TimedOut),
            ("99", JobState::Unknown),
        ]
    );
    // A job nobody remembers is unknown with the reason, never succeeded.
    assert!(
        got[7].message.as_deref().unwrap().contains("no record"),
        "{:?}",
        got[7]
    );
    assert_eq!(got[5].message.as_deref(), Some("cancelled by alice"));
    let cmds = b.commands();
    assert_eq!(
        cmds[0].args,
        ["--json", "41", "42", "43", "44", "45", "46", "47", "99"]
    );
    // 44 ended in the queue: its final word is the history's.
    assert_eq!(cmds[1].args, ["--json", "44", "45", "46", "47", "99"]);
}

#[test]
fn a_bad_id_is_refused_before_anything_runs() {
    let b = Script::new();
    let e = {{Type}}::status(&b, ids(&["41", "-x"])).unwrap_err();
    assert!(matches!(e, Error::Invalid(_)), "{e:?}");
    assert!(matches!(
        {{Type}}::cancel(&b, "1;id".into()),
        Err(Error::Invalid(_))
    ));
    assert!(b.commands().is_empty());
}

#[test]
fn cancelling_an_ended_or_forgotten_job_is_not_an_error() {
    let b = Script::new()
        .run(CANCEL, 1, "", CANCEL_FINISHED)
        .run(CANCEL, 1, "", CANCEL_UNKNOWN);
    {{Type}}::cancel(&b, "44".into()).unwrap();
    {{Type}}::cancel(&b, "99".into()).unwrap();
    assert_eq!(b.commands()[0].args, ["44"]);
}

#[test]
fn a_failed_cancel_is_confirmed_through_status() {
    // The job ended meanwhile: the cancel is done.
    let b = Script::new()
        .run(CANCEL, 1, "", "lost the connection\n")
        .ok(QUEUE, "")
        .ok(HISTORY, HISTORY_OUT);
    {{Type}}::cancel(&b, "44".into()).unwrap();
    // The job still runs: the cancel program's failure is the error.
    let b = Script::new()
        .run(CANCEL, 1, "", "permission denied\n")
        .ok(QUEUE, QUEUE_OUT);
    let e = {{Type}}::cancel(&b, "41".into()).unwrap_err();
    assert!(
        matches!(&e, Error::Backend(m) if m.contains("permission denied")),
        "{e:?}"
    );
}

#[test]
fn the_manifest_grants_every_program_the_plugin_runs() {
    assert!(MANIFEST.contains("name = \"{{name}}\""), "{MANIFEST}");
    for p in PROGRAMS {
        assert!(
            MANIFEST.contains(&format!("\"{p}\"")),
            "{p} is not granted in {MANIFEST}"
        );
    }
    assert_eq!({{Type}}::info().name, "{{name}}");
}
