//! Native tests of the {{name}} plugin against `fixtures/` (replace them with your API's
//! real responses, captured once), run with `cargo test -p {{package}}`. `Script`
//! answers each HTTP request in order and records what the plugin asked.

use super::*;
use corral_plugin_sdk::testing::Script;
use corral_plugin_sdk::JobState;

const CREATED: &str = include_str!("../fixtures/submit-created.json");
const RUNNING: &str = include_str!("../fixtures/job-running.json");
const FINISHED: &str = include_str!("../fixtures/job-finished.json");
const UNKNOWN: &str = include_str!("../fixtures/job-unknown.json");
const CANCEL_FINISHED: &str = include_str!("../fixtures/cancel-finished.json");
const MANIFEST: &str = include_str!("../{{name}}.toml");
const URL: &str = "http://127.0.0.1:8080";

fn api() -> Script {
    Script::new().config("url", URL)
}

fn ids(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn the_state_table_maps_each_api_state_and_lists_it_once() {
    let state = |s: &str, code: Option<i64>| {
        job_status("1", &json!({ "state": s, "exit_code": code })).state
    };
    assert_eq!(state("PENDING", None), JobState::Queued(false));
    assert_eq!(state("RUNNING", None), JobState::Running);
    assert_eq!(state("FINISHED", Some(0)), JobState::Succeeded);
    assert_eq!(
        state("FINISHED", Some(3)),
        JobState::Failed("exit code 3".into())
    );
    // Finished without an exit code is never called success.
    assert_eq!(state("FINISHED", None), JobState::Unknown);
    assert!(matches!(state("FAILED", Some(1)), JobState::Failed(_)));
    assert_eq!(state("CANCELLED", None), JobState::Cancelled);
    assert_eq!(state("SOMETHING_NEW", None), JobState::Unknown);
    assert_eq!(TABLE.duplicate(), None);
}

#[test]
fn submit_posts_what_render_shows_and_reads_the_job_id() {
    let spec = JobSpec::command("/bin/echo", ["it's", "$(not run)"]);
    let rendered = {{Type}}::render(&api(), spec.clone()).unwrap();
    let b = api().http(201, CREATED);
    assert_eq!({{Type}}::submit(&b, spec).unwrap(), "42");
    let req = &b.requests()[0];
    assert_eq!(
        (req.method.as_str(), req.url.as_str()),
        ("POST", "http://127.0.0.1:8080/jobs")
    );
    assert_eq!(req.body.as_deref(), Some(rendered.as_bytes()));
    let sent: Value = corral_plugin_sdk::serde_json::from_str(&rendered).unwrap();
    assert_eq!(sent["command"], json!(["/bin/echo", "it's", "$(not run)"]));
}

#[test]
fn a_field_the_api_cannot_express_is_refused_not_dropped() {
    let mut spec = JobSpec::command("true", Vec::<String>::new());
    spec.queue = Some("short".into());
    let e = {{Type}}::render(&api(), spec).unwrap_err();
    assert!(
        matches!(&e, Error::Unsupported(m) if m.contains("queue")),
        "{e:?}"
    );
}

#[test]
fn a_job_the_api_does_not_know_is_unknown_not_succeeded() {
    let b = api()
        .http(200, RUNNING)
        .http(200, FINISHED)
        .http(404, UNKNOWN);
    let got = {{Type}}::status(&b, ids(&["42", "43", "99", "42"])).unwrap();
    let states: Vec<JobState> = got.iter().map(|s| s.state.clone()).collect();
    assert_eq!(
        states,
        [
            JobState::Running,
            JobState::Failed("exit code 3".into()),
            JobState::Unknown
        ]
    );
    assert!(
        got[2].message.as_deref().unwrap().contains("no job 99"),
        "{:?}",
        got[2]
    );
    let urls: Vec<String> = b.requests().into_iter().map(|r| r.url).collect();
    assert_eq!(
        urls,
        [
            format!("{URL}/jobs/42"),
            format!("{URL}/jobs/43"),
            format!("{URL}/jobs/99")
        ]
    );
}

#[test]
fn a_bad_id_is_refused_before_any_request() {
    let b = api();
    assert!(matches!(
        {{Type}}::status(&b, ids(&["../admin"])),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        {{Type}}::cancel(&b, "1?x=y".into()),
        Err(Error::Invalid(_))
    ));
    assert!(b.requests().is_empty());
}

#[test]
fn cancelling_an_ended_or_unknown_job_is_not_an_error() {
    let b = api()
        .http(409, CANCEL_FINISHED)
        .http(404, UNKNOWN)
        .http(500, "{\"error\": \"down\"}");
    {{Type}}::cancel(&b, "43".into()).unwrap();
    {{Type}}::cancel(&b, "99".into()).unwrap();
    let e = {{Type}}::cancel(&b, "42".into()).unwrap_err();
    assert!(
        matches!(&e, Error::Backend(m) if m.contains("500") && m.contains("down")),
        "{e:?}"
    );
}

#[test]
fn without_a_url_in_the_manifest_the_error_says_what_to_set() {
    let e = {{Type}}::status(&Script::new(), ids(&["42"])).unwrap_err();
    assert!(
        matches!(&e, Error::Invalid(m) if m.contains("`url` in [config]")),
        "{e:?}"
    );
}

#[test]
fn the_manifest_grants_the_configured_host() {
    assert!(MANIFEST.contains("name = \"{{name}}\""), "{MANIFEST}");
    assert!(
        MANIFEST.contains("\"127.0.0.1:8080\"") && MANIFEST.contains(URL),
        "{MANIFEST}"
    );
    assert_eq!({{Type}}::info().name, "{{name}}");
}
