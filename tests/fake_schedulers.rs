//! The shipped batch plugins that cannot run against a real scheduler here (PBS, LSF,
//! HTCondor), built for wasm by `cargo xtask plugins`, run end to end through the real
//! plugin host against fake scheduler programs (tests/support/fake_programs.rs)
//! scripted from each plugin's own fixtures: render, submit, status and cancel as an
//! agent runs them, with the argv and stdin each program got checked.
//!
//! What this adds to the plugins' native tests: the component, not the crate, is what
//! runs (wasmtime, the WIT boundary, grants resolved on a search path, real processes
//! with real argv and stdin). What it cannot add: that the fixtures match a live
//! scheduler's output; they are written from the documented formats.
//!
//! Without the built plugins: a failure under `CI=true`, `SKIPPED` elsewhere.

use corral_test_support as support;

use std::path::Path;

use corral_proto::job::{JobSpec, JobState, JobStatus, PluginCall, PluginError, PluginReply};
use corral_sandbox::plugins::PluginHost;
use support::fake_programs::{Fakes, Reply};
use support::slurm::built_plugins_dir;

/// Arguments a shell would expand, split or run: each must reach the job unchanged.
const NASTY: &[&str] = &["it's", "$(touch /tmp/corral-pwned)", "`id`", "a  b", "*"];

fn fixture(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins")
        .join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn spec() -> JobSpec {
    JobSpec {
        name: Some("hello".into()),
        executable: "/bin/echo".into(),
        arguments: NASTY.iter().map(|s| s.to_string()).collect(),
        ..JobSpec::default()
    }
}

async fn call(host: &PluginHost, plugin: &str, c: PluginCall) -> Result<PluginReply, PluginError> {
    host.call(plugin, c, Some(support::runner())).await
}

async fn render(host: &PluginHost, plugin: &str) -> String {
    match call(host, plugin, PluginCall::Render(spec())).await {
        Ok(PluginReply::Text(s)) => s,
        other => panic!("{plugin} render: {other:?}"),
    }
}

async fn submit(host: &PluginHost, plugin: &str) -> String {
    match call(host, plugin, PluginCall::Submit(spec())).await {
        Ok(PluginReply::Submitted(id)) => id,
        other => panic!("{plugin} submit: {other:?}"),
    }
}

async fn status(host: &PluginHost, plugin: &str, ids: &[&str]) -> Vec<JobStatus> {
    let ids = ids.iter().map(|s| s.to_string()).collect();
    match call(host, plugin, PluginCall::Status(ids)).await {
        Ok(PluginReply::Statuses(v)) => v,
        other => panic!("{plugin} status: {other:?}"),
    }
}

async fn cancel(host: &PluginHost, plugin: &str, id: &str) -> Result<PluginReply, PluginError> {
    call(host, plugin, PluginCall::Cancel(id.into())).await
}

fn state_of(got: &[JobStatus], id: &str) -> JobState {
    got.iter()
        .find(|s| s.id == id)
        .unwrap_or_else(|| panic!("no status for {id} in {got:?}"))
        .state
        .clone()
}

/// Runs the submitted script (what the fake got on stdin) through the real `sh`, with
/// `/bin/echo` as the job: every argument must arrive as one literal word.
fn assert_script_runs_the_job_literally(script: &str) {
    let out = std::process::Command::new("sh")
        .args(["-c", script])
        .output()
        .expect("run sh");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}\n", NASTY.join(" ")),
        "{script}"
    );
}

#[tokio::test]
async fn pbs_submits_polls_and_cancels_through_the_host_against_fake_qsub_qstat_qdel() {
    let Some(dir) = built_plugins_dir("pbs") else {
        return;
    };
    let fakes = Fakes::new();
    fakes.install(&["qsub", "qstat", "qdel", "pbsnodes"]);
    fakes
        .ok("qsub", &fixture("pbs/fixtures/qsub.txt"))
        // qstat exits 153 for the unknown id and still prints the others.
        .reply(
            "qstat",
            Reply::new(
                153,
                &fixture("pbs/fixtures/qstat-f-json-x.json"),
                &fixture("pbs/fixtures/qstat-unknown.stderr"),
            ),
        )
        .fail("qdel", 35, &fixture("pbs/fixtures/qdel-finished.stderr"))
        .fail("qdel", 1, "qdel: Unauthorized Request  105.pbs-head\n")
        .ok("qstat", &fixture("pbs/fixtures/qstat-f-json-x.json"));
    let host = fakes.host(&dir, "pbs");

    let rendered = render(&host, "pbs").await;
    assert_eq!(submit(&host, "pbs").await, "110.pbs-head");
    let qsub = &fakes.calls("qsub")[0];
    assert_eq!(qsub.args, ["-S", "/bin/sh", "-N", "hello"]);
    assert_eq!(
        qsub.stdin_text(),
        rendered,
        "submit sends exactly what render shows"
    );
    assert_script_runs_the_job_literally(&rendered);

    let got = status(
        &host,
        "pbs",
        &["101.pbs-head", "102", "103", "105", "106", "999.pbs-head"],
    )
    .await;
    assert_eq!(state_of(&got, "101.pbs-head"), JobState::Succeeded);
    assert!(matches!(state_of(&got, "102"), JobState::Failed { .. }));
    assert_eq!(state_of(&got, "103"), JobState::Cancelled);
    assert_eq!(state_of(&got, "105"), JobState::Running);
    assert_eq!(state_of(&got, "106"), JobState::Queued { held: true });
    let gone = got.iter().find(|s| s.id == "999.pbs-head").unwrap();
    assert_eq!(gone.state, JobState::Unknown, "never assumed succeeded");
    assert!(
        gone.message.as_deref().unwrap().contains("Unknown Job Id"),
        "{gone:?}"
    );
    assert_eq!(
        fakes.calls("qstat")[0].args,
        [
            "-f",
            "-F",
            "json",
            "-x",
            "101.pbs-head",
            "102",
            "103",
            "105",
            "106",
            "999.pbs-head"
        ]
    );

    // A job that already finished: cancelled. A refusal while qstat says it runs: an error.
    assert_eq!(
        cancel(&host, "pbs", "101.pbs-head").await,
        Ok(PluginReply::Done)
    );
    let refused = cancel(&host, "pbs", "105.pbs-head").await;
    assert!(
        matches!(&refused, Err(PluginError::Backend(m)) if m.contains("Unauthorized")),
        "{refused:?}"
    );
    assert_eq!(fakes.calls("qdel")[0].args, ["101.pbs-head"]);
    fakes.assert_done();
}

#[tokio::test]
async fn lsf_submits_polls_and_cancels_through_the_host_against_fake_bsub_bjobs_bkill() {
    let Some(dir) = built_plugins_dir("lsf") else {
        return;
    };
    let fakes = Fakes::new();
    fakes.install(&["bsub", "bjobs", "bkill", "bpeek", "badmin", "bhosts"]);
    let bjobs = fixture("lsf/fixtures/bjobs.json");
    fakes
        .ok("bsub", &fixture("lsf/fixtures/bsub.txt"))
        // bjobs exits 255 when an id is not found; its JSON still says which.
        .reply("bjobs", Reply::new(255, &bjobs, ""))
        .fail("bkill", 255, &fixture("lsf/fixtures/bkill-finished.stderr"))
        .fail("bkill", 255, &fixture("lsf/fixtures/bkill-unknown.stderr"));
    let host = fakes.host(&dir, "lsf");

    let rendered = render(&host, "lsf").await;
    assert_eq!(submit(&host, "lsf").await, "310");
    let bsub = &fakes.calls("bsub")[0];
    assert_eq!(bsub.args, ["-J", "hello"]);
    assert_eq!(
        bsub.stdin_text(),
        rendered,
        "submit sends exactly what render shows"
    );
    assert_script_runs_the_job_literally(&rendered);

    let got = status(&host, "lsf", &["301", "302", "304", "305", "308", "999"]).await;
    assert_eq!(state_of(&got, "301"), JobState::Succeeded);
    assert_eq!(
        state_of(&got, "302"),
        JobState::Failed {
            reason: "exit code 3".into(),
        }
    );
    assert_eq!(state_of(&got, "304"), JobState::TimedOut);
    assert_eq!(state_of(&got, "305"), JobState::Running);
    assert_eq!(
        state_of(&got, "308"),
        JobState::Running,
        "an array runs while a task does"
    );
    assert_eq!(
        state_of(&got, "999"),
        JobState::Unknown,
        "never assumed succeeded"
    );
    let args = &fakes.calls("bjobs")[0].args;
    assert_eq!(args[..3], ["-json", "-a", "-o"]);
    assert_eq!(args[4..], ["301", "302", "304", "305", "308", "999"]);

    assert_eq!(cancel(&host, "lsf", "301").await, Ok(PluginReply::Done));
    assert_eq!(cancel(&host, "lsf", "999").await, Ok(PluginReply::Done));
    assert_eq!(fakes.calls("bkill")[1].args, ["999"]);
    fakes.assert_done();
}

#[tokio::test]
async fn htcondor_submits_polls_and_cancels_through_the_host_against_fake_condor_programs() {
    let Some(dir) = built_plugins_dir("htcondor") else {
        return;
    };
    let fakes = Fakes::new();
    fakes.install(&["condor_submit", "condor_q", "condor_history", "condor_rm"]);
    fakes
        .ok(
            "condor_submit",
            &fixture("htcondor/fixtures/condor_submit-terse.txt"),
        )
        .ok("condor_q", &fixture("htcondor/fixtures/condor_q.json"))
        .ok(
            "condor_history",
            &fixture("htcondor/fixtures/condor_history.json"),
        )
        // condor_rm's messages are not documented: a failure is confirmed by status.
        .fail(
            "condor_rm",
            1,
            &fixture("htcondor/fixtures/condor_rm-gone.stderr"),
        )
        .ok("condor_q", "")
        .ok(
            "condor_history",
            &fixture("htcondor/fixtures/condor_history.json"),
        );
    let host = fakes.host(&dir, "htcondor");

    let rendered = render(&host, "htcondor").await;
    assert_eq!(submit(&host, "htcondor").await, "120");
    let sub = &fakes.calls("condor_submit")[0];
    assert_eq!(sub.args, ["-terse", "-"]);
    assert_eq!(
        sub.stdin_text(),
        rendered,
        "submit sends exactly what render shows"
    );
    assert!(rendered.contains("executable = /bin/echo\n"), "{rendered}");
    assert!(
        rendered.contains("$(DOLLAR)(touch"),
        "`$` is escaped: {rendered}"
    );
    assert!(rendered.ends_with("queue 1\n"), "{rendered}");

    let got = status(
        &host,
        "htcondor",
        &["101", "102.0", "103", "110", "111", "113", "999"],
    )
    .await;
    assert_eq!(state_of(&got, "101"), JobState::Queued { held: false });
    assert_eq!(state_of(&got, "102.0"), JobState::Running);
    assert_eq!(state_of(&got, "103"), JobState::Queued { held: true });
    assert_eq!(state_of(&got, "110"), JobState::Succeeded);
    assert!(matches!(state_of(&got, "111"), JobState::Failed { .. }));
    assert_eq!(state_of(&got, "113"), JobState::Cancelled);
    assert_eq!(
        state_of(&got, "999"),
        JobState::Unknown,
        "never assumed succeeded"
    );
    // The history is asked only about what the queue did not settle.
    assert_eq!(
        fakes.calls("condor_history")[0].args[3..],
        ["110", "111", "113", "999"]
    );

    // 110 already ended: condor_rm fails, status confirms, the cancel is done.
    assert_eq!(
        cancel(&host, "htcondor", "110").await,
        Ok(PluginReply::Done)
    );
    assert_eq!(fakes.calls("condor_rm")[0].args, ["110"]);
    fakes.assert_done();
}

#[tokio::test]
async fn a_run_the_test_did_not_script_fails_the_call_naming_the_fake() {
    let Some(dir) = built_plugins_dir("pbs") else {
        return;
    };
    let fakes = Fakes::new();
    fakes.install(&["qsub", "qstat", "qdel", "pbsnodes"]);
    let host = fakes.host(&dir, "pbs");
    let e = call(&host, "pbs", PluginCall::Submit(spec()))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, PluginError::Backend(m) if m.contains("fake qsub: no reply scripted for run 1")),
        "{e:?}"
    );
    assert_eq!(fakes.calls("qsub").len(), 1);
}
