//! Native tests of the Hetzner provider against answers shaped like the Hetzner Cloud
//! API's documented examples (fixtures/).

use super::*;
use corral_plugin_sdk::testing::Script;
use corral_plugin_sdk::{Level, Request, Response};
use std::cell::Cell;

const CREATED: &str = include_str!("../fixtures/create-server.json");
const RUNNING: &str = include_str!("../fixtures/action-running.json");
const SUCCESS: &str = include_str!("../fixtures/action-success.json");
const FAILED: &str = include_str!("../fixtures/action-error.json");
const DELETING: &str = include_str!("../fixtures/delete-server.json");
const DELETED: &str = include_str!("../fixtures/delete-action-success.json");
const PAGE1: &str = include_str!("../fixtures/servers-page1.json");
const PAGE2: &str = include_str!("../fixtures/servers-page2.json");
const SERVER: &str = include_str!("../fixtures/server.json");
const BY_NAME: &str = include_str!("../fixtures/servers-by-name.json");
const TAKEN: &str = include_str!("../fixtures/error-uniqueness.json");
const NOT_FOUND: &str = include_str!("../fixtures/error-not-found.json");
const UNAUTHORIZED: &str = include_str!("../fixtures/error-unauthorized.json");
const RATE_LIMITED: &str = include_str!("../fixtures/error-rate-limit.json");
const INVALID_INPUT: &str = include_str!("../fixtures/error-invalid-input.json");
const UNAVAILABLE: &str = include_str!("../fixtures/error-service.json");

const TOKEN: &str = "jEheVytlAoFl7F8MqUQ7jAo2hOXASztX";
const API: &str = "https://api.hetzner.cloud/v1";

/// A pool whose actions are checked back to back (the script's clock stands still).
fn pool() -> Pool {
    Pool {
        name: "gpu".into(),
        template: vec![
            ("action_poll_ms".into(), "0".into()),
            ("image".into(), "ubuntu-24.04".into()),
            ("server_type".into(), "cx22".into()),
        ],
        secret: Some(TOKEN.into()),
    }
}

fn with(mut p: Pool, key: &str, value: &str) -> Pool {
    p.template.retain(|(k, _)| k != key);
    p.template.push((key.into(), value.into()));
    p.template.sort();
    p
}

fn req() -> CreateRequest {
    CreateRequest {
        node: "gpu-3".into(),
        user_data: "#cloud-config\nruncmd: [corral join --token single-use-7]\n".into(),
    }
}

fn body(r: &Request) -> Value {
    corral_plugin_sdk::serde_json::from_slice(r.body.as_deref().expect("a body")).unwrap()
}

fn header<'a>(r: &'a Request, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn message(e: &ProviderError) -> String {
    describe(e)
}

/// A script whose clock moves 1 ms every time it is read, and by what the plugin
/// sleeps.
struct Ticking {
    script: Script,
    now: Cell<u64>,
}

impl Backend for Ticking {
    fn run(&self, cmd: &corral_plugin_sdk::Command) -> Result<corral_plugin_sdk::Output, Error> {
        Backend::run(&self.script, cmd)
    }
    fn send(&self, req: &Request) -> Result<Response, Error> {
        Backend::send(&self.script, req)
    }
    fn config(&self, key: &str) -> Option<String> {
        Backend::config(&self.script, key)
    }
    fn log(&self, level: Level, message: &str) {
        Backend::log(&self.script, level, message)
    }
    fn now_ms(&self) -> u64 {
        self.now.set(self.now.get() + 1);
        self.now.get()
    }
    fn sleep_ms(&self, ms: u32) {
        self.now.set(self.now.get() + u64::from(ms));
    }
}

#[test]
fn info_names_hetzner_cloud_billed_by_the_hour() {
    let i = Hetzner::info(&Script::new());
    assert_eq!(
        (i.name.as_str(), i.provider.as_str(), i.hourly_billing),
        ("hetzner", "Hetzner Cloud", true)
    );
}

#[test]
fn create_labels_the_server_with_its_pool_and_follows_the_action_to_success() {
    let b = Script::new().http(201, CREATED).http(200, SUCCESS);
    assert_eq!(Hetzner::create(&b, &pool(), &req()).unwrap(), "42");
    b.assert_done();
    let sent = b.requests();
    let post = &sent[0];
    assert_eq!(
        (post.method.as_str(), post.url.as_str()),
        ("POST", "https://api.hetzner.cloud/v1/servers")
    );
    assert_eq!(
        header(post, "authorization"),
        Some(&*format!("Bearer {TOKEN}"))
    );
    assert_eq!(header(post, "content-type"), Some("application/json"));
    assert_eq!(header(post, "accept"), Some("application/json"));
    assert_eq!(
        body(post),
        json!({
            "name": "gpu-3",
            "server_type": "cx22",
            "image": "ubuntu-24.04",
            "user_data": "#cloud-config\nruncmd: [corral join --token single-use-7]\n",
            "labels": {"corral-pool": "gpu", "corral-node": "gpu-3"},
            "start_after_create": true
        })
    );
    let poll = &sent[1];
    assert_eq!(
        (poll.method.as_str(), poll.url.as_str()),
        ("GET", "https://api.hetzner.cloud/v1/actions/1")
    );
    assert_eq!(
        header(poll, "authorization"),
        Some(&*format!("Bearer {TOKEN}"))
    );
    assert!(poll.body.is_none());
    assert!(
        b.logs()
            .iter()
            .all(|l| !l.contains(TOKEN) && !l.contains("single-use-7")),
        "{:?}",
        b.logs()
    );
}

#[test]
fn create_passes_location_ssh_keys_networks_firewalls_and_extra_labels_from_the_template() {
    let mut p = pool();
    for (k, v) in [
        ("location", "fsn1"),
        ("ssh_keys", r#"["ops", 4711]"#),
        ("networks", "[1234, \"5678\"]"),
        ("firewalls", "[38]"),
        ("labels.team", "ml"),
        ("labels.example.com/owner", "lab-3"),
    ] {
        p = with(p, k, v);
    }
    let b = Script::new().http(201, CREATED).http(200, SUCCESS);
    Hetzner::create(&b, &p, &req()).unwrap();
    let sent = body(&b.requests()[0]);
    assert_eq!(sent["location"], "fsn1");
    assert_eq!(sent["ssh_keys"], json!(["ops", 4711]));
    assert_eq!(sent["networks"], json!([1234, 5678]));
    assert_eq!(sent["firewalls"], json!([{"firewall": 38}]));
    assert_eq!(
        sent["labels"],
        json!({"team": "ml", "example.com/owner": "lab-3", "corral-pool": "gpu", "corral-node": "gpu-3"})
    );
}

#[test]
fn create_checks_the_action_until_it_succeeds() {
    let b = Script::new()
        .http(201, CREATED)
        .http(200, RUNNING)
        .http(200, RUNNING)
        .http(200, SUCCESS);
    assert_eq!(Hetzner::create(&b, &pool(), &req()).unwrap(), "42");
    b.assert_done();
    assert_eq!(b.requests().len(), 4);
}

#[test]
fn create_returns_the_id_when_the_action_still_runs_after_its_last_check_waiting_on_the_clock() {
    let mut p = with(pool(), "action_polls", "3");
    p.template.retain(|(k, _)| k != "action_poll_ms");
    let b = Ticking {
        script: Script::new()
            .http(201, CREATED)
            .http(200, RUNNING)
            .http(200, RUNNING)
            .http(200, RUNNING),
        now: Cell::new(1_000),
    };
    assert_eq!(Hetzner::create(&b, &p, &req()).unwrap(), "42");
    b.script.assert_done();
    assert!(
        b.now.get() >= 1_000 + 3 * 1_000,
        "three checks 1 s apart by the host's clock, got to {}",
        b.now.get()
    );
    assert!(
        b.script
            .logs()
            .iter()
            .any(|l| l.contains("still running (60%)")),
        "{:?}",
        b.script.logs()
    );
}

#[test]
fn with_no_action_checks_create_returns_once_hetzner_accepted_the_server() {
    let b = Script::new().http(201, CREATED);
    let p = with(pool(), "action_polls", "0");
    assert_eq!(Hetzner::create(&b, &p, &req()).unwrap(), "42");
    b.assert_done();
}

#[test]
fn action_checks_that_could_outlast_the_call_are_refused() {
    let p = with(with(pool(), "action_polls", "60"), "action_poll_ms", "5000");
    let err = Hetzner::create(&Script::new(), &p, &req()).unwrap_err();
    assert!(message(&err).contains("more than 60 s"), "{err:?}");
    let p = with(pool(), "action_polls", "lots");
    assert!(
        message(&Hetzner::create(&Script::new(), &p, &req()).unwrap_err()).contains("whole number")
    );
}

#[test]
fn a_failed_create_action_is_an_error_quoting_its_code_and_message_and_deletes_the_server() {
    let b = Script::new()
        .http(201, CREATED)
        .http(200, FAILED)
        .http(200, DELETING);
    let err = Hetzner::create(&b, &pool(), &req()).unwrap_err();
    b.assert_done();
    assert_eq!(
        err,
        ProviderError::backend(
            "Hetzner could not create server gpu-3 (id 42): its create_server action 1 failed with placement_error: No server available in the requested location; the half-made server was deleted"
        )
    );
    let del = &b.requests()[2];
    assert_eq!(
        (del.method.as_str(), del.url.as_str()),
        ("DELETE", "https://api.hetzner.cloud/v1/servers/42")
    );
}

#[test]
fn a_failed_create_whose_cleanup_fails_too_says_to_delete_by_hand() {
    let b = Script::new().http(201, CREATED).http(200, FAILED).http(
        423,
        r#"{"error":{"code":"locked","message":"server is locked"}}"#,
    );
    let err = Hetzner::create(&b, &pool(), &req()).unwrap_err();
    let m = message(&err);
    assert!(
        m.contains("placement_error")
            && m.contains("locked: server is locked")
            && m.contains("by hand"),
        "{m}"
    );
}

#[test]
fn a_create_retried_after_it_went_through_returns_the_existing_server_of_the_pool() {
    let b = Script::new().http(409, TAKEN).http(200, BY_NAME);
    assert_eq!(Hetzner::create(&b, &pool(), &req()).unwrap(), "42");
    b.assert_done();
    let lookup = &b.requests()[1];
    assert_eq!(
        (lookup.method.as_str(), lookup.url.as_str()),
        ("GET", "https://api.hetzner.cloud/v1/servers?name=gpu-3")
    );
}

#[test]
fn a_name_taken_by_a_server_outside_the_pool_is_an_error_and_never_adopted() {
    let other = BY_NAME.replace("\"corral-pool\": \"gpu\"", "\"corral-pool\": \"cpu\"");
    let b = Script::new().http(409, TAKEN).http(200, &other);
    let m = message(&Hetzner::create(&b, &pool(), &req()).unwrap_err());
    assert!(m.contains("not pool gpu's") && m.contains("\"cpu\""), "{m}");
    let b = Script::new().http(409, TAKEN).http(
        200,
        r#"{"servers": [], "meta": {"pagination": {"next_page": null}}}"#,
    );
    let m = message(&Hetzner::create(&b, &pool(), &req()).unwrap_err());
    assert!(
        m.contains("409 uniqueness_error: server name is already used"),
        "{m}"
    );
}

#[test]
fn the_template_needs_server_type_and_image_and_cannot_set_the_pool_labels() {
    let mut p = pool();
    p.template.retain(|(k, _)| k != "image");
    let m = message(&Hetzner::create(&Script::new(), &p, &req()).unwrap_err());
    assert!(m.contains("\"image\" is required"), "{m}");
    let p = with(pool(), "labels.corral-pool", "other");
    let m = message(&Hetzner::create(&Script::new(), &p, &req()).unwrap_err());
    assert!(m.contains("set by the plugin"), "{m}");
    let p = with(pool(), "labels.team", "has spaces");
    assert!(
        message(&Hetzner::create(&Script::new(), &p, &req()).unwrap_err())
            .contains("not a valid Hetzner label")
    );
    let p = with(pool(), "ssh_keys", "ops");
    assert!(
        message(&Hetzner::create(&Script::new(), &p, &req()).unwrap_err())
            .contains("ssh_keys = [\"ops\"]")
    );
    let p = with(pool(), "networks", "[\"net-a\"]");
    assert!(
        message(&Hetzner::create(&Script::new(), &p, &req()).unwrap_err()).contains("list of ids")
    );
}

#[test]
fn a_refused_create_quotes_hetzners_error_code_and_message() {
    let b = Script::new().http(422, INVALID_INPUT);
    let err = Hetzner::create(&b, &pool(), &req()).unwrap_err();
    assert_eq!(
        err,
        ProviderError::backend(
            "Hetzner API: POST https://api.hetzner.cloud/v1/servers answered 422 invalid_input: invalid input in field 'server_type'"
        )
    );
}

#[test]
fn delete_sends_delete_and_follows_its_action() {
    let b = Script::new().http(200, DELETING).http(200, DELETED);
    Hetzner::delete(&b, &pool(), "42").unwrap();
    b.assert_done();
    let r = b.requests();
    assert_eq!(
        (r[0].method.as_str(), r[0].url.as_str()),
        ("DELETE", "https://api.hetzner.cloud/v1/servers/42")
    );
    assert_eq!(r[1].url, "https://api.hetzner.cloud/v1/actions/7");
}

#[test]
fn deleting_a_server_already_gone_is_success() {
    let b = Script::new().http(404, NOT_FOUND);
    Hetzner::delete(&b, &pool(), "42").unwrap();
    b.assert_done();
}

#[test]
fn a_failed_delete_action_is_an_error_quoting_it() {
    let failed = FAILED.replace("create_server", "delete_server");
    let b = Script::new().http(200, DELETING).http(200, &failed);
    let m = message(&Hetzner::delete(&b, &pool(), "42").unwrap_err());
    assert!(
        m.contains("could not delete server 42") && m.contains("placement_error"),
        "{m}"
    );
}

#[test]
fn delete_and_status_refuse_an_id_that_is_not_a_number() {
    for id in ["", "42/../../servers", "abc", "1 2"] {
        let err = Hetzner::delete(&Script::new(), &pool(), id).unwrap_err();
        assert!(
            matches!(err, ProviderError::Failed(Error::Invalid(_))),
            "{id:?}: {err:?}"
        );
        assert!(Hetzner::status(&Script::new(), &pool(), id).is_err());
    }
}

#[test]
fn list_follows_every_page_of_the_pools_label_and_maps_states_nodes_and_times() {
    let b = Script::new().http(200, PAGE1).http(200, PAGE2);
    let m = Hetzner::list(&b, &pool()).unwrap();
    b.assert_done();
    let urls: Vec<String> = b.requests().into_iter().map(|r| r.url).collect();
    assert_eq!(
        urls,
        [
            format!("{API}/servers?label_selector=corral-pool%3Dgpu&per_page=50&page=1"),
            format!("{API}/servers?label_selector=corral-pool%3Dgpu&per_page=50&page=2"),
        ]
    );
    assert_eq!(m.len(), 3);
    assert_eq!(
        (
            m[0].id.as_str(),
            m[0].node.as_str(),
            m[0].state,
            m[0].native_state.as_str()
        ),
        ("42", "gpu-1", MachineState::Running, "running")
    );
    assert_eq!(m[0].created_ms, Some(1_454_197_800_000));
    assert_eq!(
        (m[1].state, m[1].created_ms),
        (MachineState::Pending, Some(1_714_644_930_250))
    );
    // No corral-node label: the server's name is the node.
    assert_eq!(
        (m[2].node.as_str(), m[2].state, m[2].created_ms),
        (
            "renamed-by-hand",
            MachineState::Pending,
            Some(1_714_644_930_000)
        )
    );
}

#[test]
fn the_state_table_maps_every_hetzner_status() {
    let state = |s: &str| machine(&json!({"id": 1, "name": "n", "status": s})).unwrap();
    for (native, want) in [
        ("initializing", MachineState::Pending),
        ("starting", MachineState::Pending),
        ("running", MachineState::Running),
        ("stopping", MachineState::Stopping),
        ("off", MachineState::Off),
        ("deleting", MachineState::Deleting),
        ("migrating", MachineState::Pending),
        ("rebuilding", MachineState::Pending),
        ("unknown", MachineState::Unknown),
    ] {
        let m = state(native);
        assert_eq!((m.state, m.native_state.as_str()), (want, native));
    }
    let odd = state("hibernating");
    assert_eq!(odd.state, MachineState::Unknown);
    assert!(odd.message.unwrap().contains("\"hibernating\""));
}

#[test]
fn status_answers_the_server_or_none_when_hetzner_does_not_know_it() {
    let b = Script::new().http(200, SERVER).http(404, NOT_FOUND);
    let m = Hetzner::status(&b, &pool(), "42").unwrap().unwrap();
    assert_eq!(
        (m.id.as_str(), m.node.as_str(), m.state),
        ("42", "gpu-1", MachineState::Off)
    );
    assert_eq!(m.message, None);
    assert_eq!(Hetzner::status(&b, &pool(), "9999").unwrap(), None);
    assert_eq!(b.requests()[0].url, format!("{API}/servers/42"));
}

#[test]
fn a_429_is_rate_limited_until_the_reset_with_the_limit_headers_in_the_message() {
    // The script's clock reads 1_700_000_000_000 ms.
    let b = Script::new().http_with(
        429,
        &[
            ("RateLimit-Limit", "3600"),
            ("RateLimit-Remaining", "0"),
            ("RateLimit-Reset", "1700000030"),
        ],
        RATE_LIMITED,
    );
    match Hetzner::list(&b, &pool()).unwrap_err() {
        ProviderError::RateLimited(r) => {
            assert_eq!(r.retry_after_ms, 30_000);
            assert!(
                r.message
                    .contains("rate_limit_exceeded: limit of 3600 requests per hour reached")
                    && r.message
                        .contains("RateLimit-Remaining 0 of RateLimit-Limit 3600"),
                "{}",
                r.message
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_429_waits_at_least_a_second_and_a_default_without_a_reset() {
    let b = Script::new()
        .http_with(429, &[("ratelimit-reset", "1699999990")], RATE_LIMITED)
        .http(429, RATE_LIMITED);
    let wait = |e| match e {
        ProviderError::RateLimited(r) => r.retry_after_ms,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        wait(Hetzner::create(&b, &pool(), &req()).unwrap_err()),
        1_000
    );
    assert_eq!(
        wait(Hetzner::delete(&b, &pool(), "42").unwrap_err()),
        10_000
    );
}

#[test]
fn a_5xx_is_a_backend_error_naming_the_status() {
    let b = Script::new()
        .http(503, UNAVAILABLE)
        .http(502, "<html><body>Bad Gateway</body></html>");
    let m = message(&Hetzner::list(&b, &pool()).unwrap_err());
    assert!(
        m.contains("answered 503") && m.contains("service_error: service temporarily unavailable"),
        "{m}"
    );
    let m = message(&Hetzner::status(&b, &pool(), "42").unwrap_err());
    assert!(
        m.contains("answered 502") && m.contains("Bad Gateway"),
        "{m}"
    );
}

#[test]
fn a_401_is_denied_saying_the_token_was_refused_and_never_echoes_it() {
    let echo =
        format!(r#"{{"error":{{"code":"unauthorized","message":"token {TOKEN} unknown"}}}}"#);
    let b = Script::new().http(401, UNAUTHORIZED).http(401, &echo);
    for err in [
        Hetzner::list(&b, &pool()).unwrap_err(),
        Hetzner::create(&b, &pool(), &req()).unwrap_err(),
    ] {
        let ProviderError::Failed(Error::Denied(m)) = &err else {
            panic!("{err:?}");
        };
        assert!(m.contains("Hetzner refused pool gpu's API token"), "{m}");
        assert!(!m.contains(TOKEN), "{m}");
    }
}

#[test]
fn a_success_whose_body_is_not_json_is_a_clear_backend_error() {
    let b = Script::new().http(200, "<html>maintenance</html>");
    let m = message(&Hetzner::list(&b, &pool()).unwrap_err());
    assert!(
        m.contains("answered 200 with a body that is not JSON") && m.contains("maintenance"),
        "{m}"
    );
}

#[test]
fn without_a_token_calls_are_refused_saying_where_to_put_it() {
    let mut p = pool();
    p.secret = None;
    let m = message(&Hetzner::list(&Script::new(), &p).unwrap_err());
    assert!(m.contains("secret_file"), "{m}");
}

#[test]
fn api_url_must_be_https_except_to_a_loopback_fake() {
    let b = Script::new().http(200, PAGE2);
    let p = with(pool(), "api_url", "http://127.0.0.1:8080/v1/");
    Hetzner::list(&b, &p).unwrap();
    assert!(b.requests()[0]
        .url
        .starts_with("http://127.0.0.1:8080/v1/servers?"));
    for bad in [
        "http://api.hetzner.cloud/v1",
        "http://127.evil.example/v1",
        "ftp://127.0.0.1/v1",
        "https://user@api.hetzner.cloud/v1",
        "api.hetzner.cloud",
    ] {
        let err = Hetzner::list(&Script::new(), &with(pool(), "api_url", bad)).unwrap_err();
        assert!(message(&err).contains("api_url"), "{bad}: {err:?}");
    }
    for ok in [
        "https://api.hetzner.cloud/v1",
        "http://localhost:9/v1",
        "http://[::1]:9/v1",
    ] {
        assert!(base_url(&with(pool(), "api_url", ok)).is_ok(), "{ok}");
    }
}

#[test]
fn rfc3339_times_parse_to_milliseconds_since_the_epoch() {
    assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
    assert_eq!(
        parse_rfc3339("2016-01-30T23:50:00+00:00"),
        Some(1_454_197_800_000)
    );
    assert_eq!(
        parse_rfc3339("2016-01-31T01:50:00+02:00"),
        Some(1_454_197_800_000)
    );
    assert_eq!(
        parse_rfc3339("2016-01-30T20:50:00-03:00"),
        Some(1_454_197_800_000)
    );
    assert_eq!(
        parse_rfc3339("2024-02-29T12:00:00.5Z"),
        Some(1_709_208_000_500)
    );
    assert_eq!(
        parse_rfc3339("2024-02-29T12:00:00.123456789Z"),
        Some(1_709_208_000_123)
    );
    for bad in [
        "",
        "2016-01-30",
        "2016-01-30T23:50:00",
        "2016-13-01T00:00:00Z",
        "2016-01-30T23:50:00+0000",
        "yesterday",
    ] {
        assert_eq!(parse_rfc3339(bad), None, "{bad}");
    }
}

#[test]
fn labels_follow_hetzners_rules() {
    for ok in ["gpu", "gpu-3", "a.b_c", "", "x"] {
        assert!(label_value_ok(ok), "{ok:?}");
    }
    for bad in ["-gpu", "gpu-", "has space", "ü", &"a".repeat(64)] {
        assert!(!label_value_ok(bad), "{bad:?}");
    }
    assert!(label_key_ok("example.com/owner") && label_key_ok("team"));
    assert!(!label_key_ok("/team") && !label_key_ok("") && !label_key_ok("a..b/x"));
}
