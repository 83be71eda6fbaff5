//! Native tests of the Ray Jobs plugin against responses captured from a real Ray 2.60
//! head's dashboard (fixtures/).

use super::*;
use corral_plugin_sdk::testing::Script;
use corral_plugin_sdk::JobArray;

const SUBMITTED: &str = include_str!("../fixtures/submit-response.json");
const PENDING: &str = include_str!("../fixtures/job-pending.json");
const RUNNING: &str = include_str!("../fixtures/job-running.json");
const SUCCEEDED: &str = include_str!("../fixtures/job-succeeded.json");
const FAILED: &str = include_str!("../fixtures/job-failed.json");
const STOPPED: &str = include_str!("../fixtures/job-stopped.json");
const UNKNOWN: &str = include_str!("../fixtures/job-unknown.txt");
const LOGS: &str = include_str!("../fixtures/logs.json");
const LIST: &str = include_str!("../fixtures/list.json");
const STOP_RUNNING: &str = include_str!("../fixtures/stop-running.json");
const STOP_STOPPED: &str = include_str!("../fixtures/stop-stopped.json");

const DASH: &str = "http://127.0.0.1:8265";

fn ray() -> Script {
    Script::new().config("dashboard", DASH)
}

fn job(text: &str) -> JobStatus {
    parse_job("x", &corral_plugin_sdk::serde_json::from_str(text).unwrap())
}

#[test]
fn the_status_table_maps_every_ray_status() {
    assert_eq!(job(PENDING).state, JobState::Queued(false));
    assert_eq!(job(RUNNING).state, JobState::Running);
    let ok = job(SUCCEEDED);
    assert_eq!((ok.state, ok.exit_code), (JobState::Succeeded, Some(0)));
    let failed = job(FAILED);
    assert_eq!(failed.exit_code, Some(3));
    assert_eq!(
        failed.state,
        JobState::Failed(
            "JOB_ENTRYPOINT_COMMAND_ERROR: Job entrypoint command failed with exit code 3, last available logs (truncated to 20,000 chars):".into()
        )
    );
    assert_eq!(job(STOPPED).state, JobState::Cancelled);
    assert_eq!(job(r#"{"status": "ARCHIVED"}"#).state, JobState::Unknown);
}

#[test]
fn submit_posts_a_quoted_entrypoint_and_returns_the_submission_id() {
    let mut spec = JobSpec::command(
        "python3",
        ["-c", "import sys; print(sys.argv)", "it's $(x)", "a b"],
    );
    spec.name = Some("n $x".into());
    spec.directory = Some("/tmp/w d".into());
    spec.environment = vec![("GREETING".into(), "hi there".into())];
    spec.cpus_per_task = Some(1);
    let rendered = RayJobs::render(&ray(), spec.clone()).unwrap();
    let b = ray().http(200, SUBMITTED);
    assert_eq!(
        RayJobs::submit(&b, spec).unwrap(),
        "raysubmit_zFkjHBzpKxdRHr9H"
    );
    let req = &b.requests()[0];
    assert_eq!(
        (req.method.as_str(), req.url.as_str()),
        ("POST", "http://127.0.0.1:8265/api/jobs/")
    );
    assert_eq!(req.body.as_deref(), Some(rendered.as_bytes()));
    let body: Value = corral_plugin_sdk::serde_json::from_str(&rendered).unwrap();
    assert_eq!(
        body["entrypoint"],
        "cd '/tmp/w d' && exec 'python3' '-c' 'import sys; print(sys.argv)' 'it'\\''s $(x)' 'a b'"
    );
    assert_eq!(body["runtime_env"]["env_vars"]["GREETING"], "hi there");
    assert_eq!(body["metadata"]["job_name"], "n $x");
    assert_eq!(body["entrypoint_num_cpus"], 1);
}

#[test]
fn what_ray_jobs_cannot_express_is_refused_naming_it() {
    let mut spec = JobSpec::command("true", Vec::<String>::new());
    spec.array = Some(JobArray {
        first: 1,
        last: 2,
        step: 1,
        max_running: None,
    });
    assert!(matches!(submit_body(&spec), Err(Error::Unsupported(m)) if m.contains("array")));
    let mut spec = JobSpec::command("true", Vec::<String>::new());
    spec.walltime_seconds = Some(5);
    assert!(matches!(submit_body(&spec), Err(Error::Unsupported(m)) if m.contains("walltime")));
}

#[test]
fn a_runtime_env_attribute_is_merged_with_the_environment() {
    let mut spec = JobSpec::command("true", Vec::<String>::new());
    spec.attributes = vec![(
        "ray.runtime_env".into(),
        r#"{"pip": ["emoji"], "env_vars": {"A": "1"}}"#.into(),
    )];
    spec.environment = vec![("B".into(), "2".into())];
    let body = submit_body(&spec).unwrap();
    assert_eq!(body["runtime_env"]["pip"][0], "emoji");
    assert_eq!(body["runtime_env"]["env_vars"]["A"], "1");
    assert_eq!(body["runtime_env"]["env_vars"]["B"], "2");
    spec.attributes = vec![("ray.runtime_env".into(), "[1]".into())];
    assert!(matches!(submit_body(&spec), Err(Error::Invalid(_))));
}

#[test]
fn status_of_a_job_ray_forgot_is_unknown_with_rays_words() {
    let b = ray().http(200, RUNNING).http(404, UNKNOWN);
    let got = RayJobs::status(
        &b,
        vec![
            "raysubmit_b6vc2msfTvxiE3F4".into(),
            "raysubmit_doesnotexist".into(),
        ],
    )
    .unwrap();
    b.assert_done();
    assert_eq!(
        b.requests()[0].url,
        "http://127.0.0.1:8265/api/jobs/raysubmit_b6vc2msfTvxiE3F4"
    );
    assert_eq!(got[0].state, JobState::Running);
    assert_eq!(got[1].state, JobState::Unknown);
    assert!(got[1]
        .message
        .as_deref()
        .unwrap()
        .contains("does not exist"));
}

#[test]
fn a_server_error_is_a_backend_error_naming_the_request() {
    let b = ray().http(500, "Internal Server Error");
    let e = RayJobs::status(&b, vec!["raysubmit_a".into()]).unwrap_err();
    assert!(
        matches!(&e, Error::Backend(m) if m.starts_with("GET http://127.0.0.1:8265/api/jobs/raysubmit_a answered 500")),
        "{e:?}"
    );
}

#[test]
fn cancel_is_idempotent() {
    for (code, body) in [(200, STOP_RUNNING), (200, STOP_STOPPED), (404, UNKNOWN)] {
        let b = ray().http(code, body);
        RayJobs::cancel(&b, "raysubmit_b6vc2msfTvxiE3F4".into()).unwrap();
        assert_eq!(
            b.requests()[0].url,
            "http://127.0.0.1:8265/api/jobs/raysubmit_b6vc2msfTvxiE3F4/stop"
        );
    }
}

#[test]
fn logs_are_the_tail_of_the_jobs_output() {
    let b = ray().http(200, LOGS);
    let text = RayJobs::logs(&b, "raysubmit_zFkjHBzpKxdRHr9H".into(), 10_000).unwrap();
    assert!(text.contains("\nhello\n"), "{text:?}");
    let b = ray().http(200, LOGS);
    assert_eq!(
        RayJobs::logs(&b, "raysubmit_zFkjHBzpKxdRHr9H".into(), 5).unwrap(),
        "it 0\n"
    );
}

#[test]
fn list_reports_every_job_the_head_knows() {
    let b = ray().http(200, LIST);
    let all = RayJobs::list(&b).unwrap();
    assert_eq!(all.len(), 3);
    assert!(all.iter().all(|s| s.id.starts_with("raysubmit_")));
}

#[test]
fn a_missing_dashboard_setting_says_what_to_configure() {
    let e = RayJobs::status(&Script::new(), vec!["raysubmit_a".into()]).unwrap_err();
    assert!(
        matches!(&e, Error::Invalid(m) if m.contains("[config]") && m.contains("dashboard")),
        "{e:?}"
    );
}

#[test]
fn ids_that_are_not_url_safe_are_refused() {
    for bad in ["", "../x", "a/b", "a b", "..", "a?b"] {
        assert!(
            matches!(RayJobs::cancel(&ray(), bad.into()), Err(Error::Invalid(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn node_state_is_unsupported_without_a_request() {
    // Ray's own drain is the agent's (it supervises Ray), not this plugin's.
    let b = Script::new();
    assert!(matches!(
        RayJobs::node_state(&b, "node01".into()),
        Err(Error::Unsupported(m)) if m == "node-state"
    ));
    assert!(b.calls().is_empty());
}
