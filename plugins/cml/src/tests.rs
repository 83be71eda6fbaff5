use super::*;
use corral_plugin_sdk::testing::Script;
use corral_plugin_sdk::Request;

const KEY: &str = "cml-key-7f3a9c2e-SECRET";
const APPS: &str = "https://ml-1234.cloudera.site/api/v2/projects/abcd-1234-efgh-5678/applications";

fn fixture(name: &str) -> String {
    let path = format!("{}/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn pool() -> Pool {
    Pool {
        name: "cml-gpu".into(),
        template: vec![
            ("api_url".into(), "https://ml-1234.cloudera.site/".into()),
            ("cpu".into(), "4".into()),
            ("env.RAY_DEDUP_LOGS".into(), "0".into()),
            ("memory".into(), "16.5".into()),
            ("nvidia_gpu".into(), "1".into()),
            ("project_id".into(), "abcd-1234-efgh-5678".into()),
            ("runtime_identifier".into(), "docker.repository.cloudera.com/cloudera/cdsw/ml-runtime-pbj-jupyterlab-python3.11-standard:2025.01.3-b8".into()),
            ("script".into(), "corral-agent.py".into()),
        ],
        secret: Some(KEY.into()),
    }
}

fn req() -> CreateRequest {
    CreateRequest {
        node: "cml-gpu-3".into(),
        user_data: "#!/bin/sh\ncorral agent --join 'tok3n'\n".into(),
    }
}

fn header<'a>(r: &'a Request, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn body(r: &Request) -> Value {
    serde_json::from_slice(r.body.as_deref().expect("a body")).unwrap()
}

/// The decoded `search_filter` of a list request.
fn search_filter(url: &str) -> Value {
    let q = url.split_once("search_filter=").expect("a search_filter").1;
    let q = q.split('&').next().unwrap();
    let mut bytes = Vec::new();
    let mut it = q.bytes();
    while let Some(c) = it.next() {
        if c == b'%' {
            let hex = [it.next().unwrap(), it.next().unwrap()];
            bytes.push(u8::from_str_radix(std::str::from_utf8(&hex).unwrap(), 16).unwrap());
        } else {
            bytes.push(c);
        }
    }
    serde_json::from_slice(&bytes).unwrap()
}

fn message(e: &ProviderError) -> String {
    match e {
        ProviderError::Failed(
            Error::Denied(m)
            | Error::Invalid(m)
            | Error::Backend(m)
            | Error::Timeout(m)
            | Error::Unsupported(m),
        ) => m.clone(),
        ProviderError::RateLimited(r) => r.message.clone(),
    }
}

#[test]
fn info_names_the_provider_and_bills_not_by_the_hour() {
    let i = Cml::info(&Script::new());
    assert_eq!(
        (i.name.as_str(), i.provider.as_str(), i.hourly_billing),
        ("cml", "Cloudera AI (CML)", false)
    );
}

#[test]
fn base64_is_the_standard_alphabet_with_padding() {
    assert_eq!(base64(b""), "");
    assert_eq!(base64(b"f"), "Zg==");
    assert_eq!(base64(b"fo"), "Zm8=");
    assert_eq!(base64(b"foo"), "Zm9v");
    assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    assert_eq!(base64(&[0xfb, 0xff, 0xfe]), "+//+");
    assert_eq!(base64(b"#!/bin/sh\n"), "IyEvYmluL3NoCg==");
}

#[test]
fn rfc3339_times_become_ms_since_the_epoch() {
    assert_eq!(rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
    assert_eq!(
        rfc3339_ms("2024-05-01T12:30:00.123456Z"),
        Some(1_714_566_600_123)
    );
    assert_eq!(
        rfc3339_ms("2024-05-01T14:30:00.1+02:00"),
        Some(1_714_566_600_100)
    );
    assert_eq!(rfc3339_ms("2024-02-29T00:00:00z"), Some(1_709_164_800_000));
    assert_eq!(
        rfc3339_ms("2000-03-01 00:00:00-00:30"),
        Some(951_870_600_000)
    );
    for bad in [
        "",
        "yesterday",
        "2023-02-29T00:00:00Z",
        "2024-05-01T12:30:00",
        "2024-05-01T25:00:00Z",
        "1969-12-31T23:59:59Z",
        "2024-05-01T12:30:00.Z",
        "2024-05-01T12:30:00Zjunk",
    ] {
        assert_eq!(rfc3339_ms(bad), None, "{bad:?}");
    }
}

#[test]
fn subdomains_are_dns_labels_unique_per_node_and_the_same_on_every_try() {
    let a = subdomain("cml-gpu", "cml-gpu-3");
    assert!(a.starts_with("corral-cml-gpu-3-"), "{a}");
    assert_eq!(a, subdomain("cml-gpu", "cml-gpu-3"));
    let label_ok = |s: &str| {
        s.len() <= 63
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !s.starts_with('-')
            && !s.ends_with('-')
            && !s.contains("--")
    };
    let long = "A".repeat(200);
    let names = [
        "cml-gpu-3",
        "CML_GPU.3",
        "cml-gpu-3 ",
        "---",
        "ünïcode-node-1",
        long.as_str(),
    ];
    let subs: Vec<String> = names.iter().map(|n| subdomain("cml-gpu", n)).collect();
    for s in &subs {
        assert!(label_ok(s), "{s:?}");
    }
    let distinct: HashSet<&String> = subs.iter().collect();
    assert_eq!(distinct.len(), subs.len(), "{subs:?}");
    assert_ne!(subdomain("cml-gpu", "n-1"), subdomain("cml-cpu", "n-1"));
}

#[test]
fn states_map_with_or_without_the_prefix_and_case_and_keep_unknown_words() {
    assert_eq!(
        state_of("APPLICATION_STARTING"),
        Some(MachineState::Pending)
    );
    assert_eq!(state_of("APPLICATION_RUNNING"), Some(MachineState::Running));
    assert_eq!(state_of("running"), Some(MachineState::Running));
    assert_eq!(
        state_of("APPLICATION_STOPPING"),
        Some(MachineState::Stopping)
    );
    assert_eq!(state_of("Stopped"), Some(MachineState::Off));
    assert_eq!(state_of("APPLICATION_FAILED"), Some(MachineState::Failed));
    assert_eq!(state_of("APPLICATION_RESTARTING"), None);
    let m =
        parse_application(&json!({"id": "a-1", "name": "n", "status": "APPLICATION_RESTARTING"}))
            .unwrap();
    assert_eq!(
        (m.state, m.native_state.as_str()),
        (MachineState::Unknown, "APPLICATION_RESTARTING")
    );
    assert!(m.message.unwrap().contains("unrecognised"));
}

#[test]
fn an_application_answer_parses_into_a_machine() {
    let v: Value = serde_json::from_str(&fixture("application-running.json")).unwrap();
    let m = parse_application(&v).unwrap();
    assert_eq!(m.id, "x7qq-2mwd-b8g4-r1ja");
    assert_eq!(m.node, "cml-gpu-1");
    assert_eq!(
        (m.state, m.native_state.as_str()),
        (MachineState::Running, "APPLICATION_RUNNING")
    );
    assert_eq!(m.created_ms, Some(1_714_566_600_123));
    assert_eq!(m.message, None);
    assert!(parse_application(&json!({"name": "x"}))
        .unwrap_err()
        .contains("without an id"));
}

#[test]
fn create_looks_for_a_retried_create_then_posts_the_application_with_user_data_in_its_environment()
{
    let b = Script::new()
        .http(200, &fixture("list-empty.json"))
        .http(200, &fixture("create-response.json"));
    let id = Cml::create(&b, &pool(), &req()).unwrap();
    assert_eq!(id, "k3vd-9aq1-zz07-m2pe");
    b.assert_done();
    let r = b.requests();

    assert_eq!(r[0].method, "GET");
    assert!(
        r[0].url.starts_with(&format!("{APPS}?search_filter=")),
        "{}",
        r[0].url
    );
    assert_eq!(search_filter(&r[0].url), json!({"name": "cml-gpu-3"}));

    assert_eq!((r[1].method.as_str(), r[1].url.as_str()), ("POST", APPS));
    for q in &r {
        assert_eq!(
            header(q, "authorization"),
            Some(format!("Bearer {KEY}").as_str())
        );
        assert_eq!(header(q, "accept"), Some("application/json"));
    }
    assert_eq!(header(&r[1], "content-type"), Some("application/json"));
    let sent = body(&r[1]);
    assert_eq!(
        sent,
        json!({
            "name": "cml-gpu-3",
            "subdomain": subdomain("cml-gpu", "cml-gpu-3"),
            "description": "corral pool cml-gpu",
            "script": "corral-agent.py",
            "runtime_identifier": "docker.repository.cloudera.com/cloudera/cdsw/ml-runtime-pbj-jupyterlab-python3.11-standard:2025.01.3-b8",
            "cpu": 4.0,
            "memory": 16.5,
            "nvidia_gpu": 1,
            "environment": {
                "RAY_DEDUP_LOGS": "0",
                "CORRAL_USER_DATA": base64(req().user_data.as_bytes()),
                "CORRAL_NODE": "cml-gpu-3",
                "CORRAL_POOL": "cml-gpu",
            },
        })
    );
    assert_eq!(
        sent["environment"]["CORRAL_USER_DATA"],
        "IyEvYmluL3NoCmNvcnJhbCBhZ2VudCAtLWpvaW4gJ3RvazNuJwo="
    );
    // The key travels in the header only.
    assert!(!sent.to_string().contains(KEY));
    assert!(r.iter().all(|q| !q.url.contains(KEY)));
}

#[test]
fn a_retried_create_returns_the_existing_application_without_posting() {
    let page = json!({"applications": [
        {"id": "other-pool-0001", "name": "cml-gpu-3", "description": "corral pool cml-gpu-old"},
        {"id": "longer-name-0001", "name": "cml-gpu-33", "description": "corral pool cml-gpu"},
    ], "next_page_token": "t2"});
    let b = Script::new()
        .http(200, &page.to_string())
        .http(200, r#"{"applications":[{"id":"k3vd-9aq1-zz07-m2pe","name":"cml-gpu-3","description":"corral pool cml-gpu","status":"APPLICATION_STARTING"}]}"#);
    assert_eq!(
        Cml::create(&b, &pool(), &req()).unwrap(),
        "k3vd-9aq1-zz07-m2pe"
    );
    b.assert_done();
    let r = b.requests();
    assert!(r.iter().all(|q| q.method == "GET"));
    assert!(r[1].url.ends_with("&page_token=t2"), "{}", r[1].url);
    assert!(
        b.logs().iter().any(|l| l.contains("retried create")),
        "{:?}",
        b.logs()
    );
}

#[test]
fn a_create_refused_because_the_application_exists_returns_the_one_made_by_the_lost_first_try() {
    let b = Script::new()
        .http(200, "{}")
        .http(400, &fixture("error-subdomain-taken.json"))
        .http(200, r#"{"applications":[{"id":"k3vd-9aq1-zz07-m2pe","name":"cml-gpu-3","description":"corral pool cml-gpu"}]}"#);
    assert_eq!(
        Cml::create(&b, &pool(), &req()).unwrap(),
        "k3vd-9aq1-zz07-m2pe"
    );
    b.assert_done();
}

#[test]
fn a_rejected_create_is_a_backend_error_quoting_cml() {
    let b = Script::new()
        .http(200, "{}")
        .http(400, &fixture("error-invalid-runtime.json"));
    let err = Cml::create(&b, &pool(), &req()).unwrap_err();
    assert_eq!(
        err,
        ProviderError::backend(format!(
            "POST {APPS}: CML answered 400 Bad Request: runtime docker.repository.cloudera.com/cloudera/cdsw/no-such-runtime:1 is not available in this workspace"
        ))
    );
}

#[test]
fn create_refuses_a_bad_template_before_sending_anything() {
    let cases: &[(&str, &str, &str)] = &[
        ("memroy", "16", "\"memroy\" is not known"),
        ("cpu", "lots", "a number above 0"),
        ("cpu", "0", "a number above 0"),
        ("nvidia_gpu", "0.5", "a whole number"),
        ("env.CORRAL_NODE", "x", "set by the cml provider"),
        ("env.2BAD", "x", "not an environment variable name"),
        ("api_url", "ml-1234.cloudera.site", "not an https:// URL"),
        ("project_id", "../etc", "not a CML project id"),
    ];
    for (key, value, says) in cases {
        let mut p = pool();
        p.template.retain(|(k, _)| k != key);
        p.template.push((key.to_string(), value.to_string()));
        let b = Script::new();
        let err = Cml::create(&b, &p, &req()).unwrap_err();
        assert!(
            matches!(err, ProviderError::Failed(Error::Invalid(_))),
            "{key}: {err:?}"
        );
        assert!(message(&err).contains(says), "{key}={value}: {err:?}");
        assert!(b.requests().is_empty());
    }
    let mut p = pool();
    p.template.retain(|(k, _)| k != "script");
    assert!(
        message(&Cml::create(&Script::new(), &p, &req()).unwrap_err())
            .contains("\"script\" is required")
    );
    p = pool();
    p.secret = None;
    assert!(message(&Cml::create(&Script::new(), &p, &req()).unwrap_err()).contains("secret_file"));
}

#[test]
fn a_trailing_api_v2_in_api_url_is_not_doubled() {
    let mut p = pool();
    p.template.retain(|(k, _)| k != "api_url");
    p.template.push((
        "api_url".into(),
        "https://ml-1234.cloudera.site/api/v2/".into(),
    ));
    let b = Script::new().http(200, "{}");
    Cml::list(&b, &p).unwrap();
    assert!(b.requests()[0].url.starts_with(&format!("{APPS}?")));
}

#[test]
fn list_follows_every_page_and_keeps_only_this_pools_applications() {
    let b = Script::new()
        .http(200, &fixture("list-page-1.json"))
        .http(200, &fixture("list-page-2.json"));
    let m = Cml::list(&b, &pool()).unwrap();
    b.assert_done();
    let r = b.requests();
    assert_eq!(
        search_filter(&r[0].url),
        json!({"description": "corral pool cml-gpu"})
    );
    assert!(
        r[0].url.contains(&format!("&page_size={PAGE_SIZE}")),
        "{}",
        r[0].url
    );
    assert!(!r[0].url.contains("page_token"));
    assert!(
        r[1].url.ends_with("&page_token=AAAAAg%3D%3D"),
        "{}",
        r[1].url
    );

    let got: Vec<(&str, &str, MachineState)> = m
        .iter()
        .map(|m| (m.id.as_str(), m.node.as_str(), m.state))
        .collect();
    assert_eq!(
        got,
        [
            ("x7qq-2mwd-b8g4-r1ja", "cml-gpu-1", MachineState::Running),
            ("k3vd-9aq1-zz07-m2pe", "cml-gpu-3", MachineState::Pending),
            ("s5t6-u7v8-w9x0-y1z2", "cml-gpu-4", MachineState::Off),
            ("f4f4-e3e3-d2d2-c1c1", "cml-gpu-5", MachineState::Failed),
            ("q1q1-r2r2-s3s3-t4t4", "cml-gpu-6", MachineState::Unknown),
        ]
    );
    assert_eq!(m[1].created_ms, Some(1_714_568_400_000));
    assert_eq!(m[4].native_state, "APPLICATION_RESTARTING");
    assert_eq!(m[4].created_ms, None);
}

#[test]
fn an_empty_list_answer_is_no_machines() {
    let b = Script::new().http(200, &fixture("list-empty.json"));
    assert_eq!(Cml::list(&b, &pool()).unwrap(), Vec::new());
}

#[test]
fn a_page_token_handed_out_twice_stops_the_listing() {
    let page = r#"{"applications":[],"next_page_token":"again"}"#;
    let b = Script::new().http(200, page).http(200, page);
    let err = Cml::list(&b, &pool()).unwrap_err();
    assert!(message(&err).contains("twice"), "{err:?}");
}

#[test]
fn status_gets_one_application_and_a_404_is_none() {
    let b = Script::new()
        .http(200, &fixture("application-running.json"))
        .http(
            404,
            r#"{"code":5,"message":"application not found","details":[]}"#,
        );
    let m = Cml::status(&b, &pool(), "x7qq-2mwd-b8g4-r1ja")
        .unwrap()
        .unwrap();
    assert_eq!(
        (m.node.as_str(), m.state),
        ("cml-gpu-1", MachineState::Running)
    );
    assert_eq!(Cml::status(&b, &pool(), "gone-0000").unwrap(), None);
    let r = b.requests();
    assert_eq!(
        (r[0].method.as_str(), r[0].url.clone()),
        ("GET", format!("{APPS}/x7qq-2mwd-b8g4-r1ja"))
    );
    assert!(r[0].body.is_none());
}

#[test]
fn an_id_that_is_not_url_safe_is_refused_without_a_request() {
    for id in ["", "../x", "a/b", "a?b", "a b"] {
        let b = Script::new();
        let err = Cml::status(&b, &pool(), id).unwrap_err();
        assert!(
            matches!(err, ProviderError::Failed(Error::Invalid(_))),
            "{id:?}: {err:?}"
        );
        assert!(Cml::delete(&b, &pool(), id).is_err());
        assert!(b.requests().is_empty());
    }
}

#[test]
fn delete_is_idempotent() {
    let b = Script::new()
        .http(200, "{}")
        .http(404, r#"{"code":5,"message":"not found"}"#);
    Cml::delete(&b, &pool(), "k3vd-9aq1-zz07-m2pe").unwrap();
    Cml::delete(&b, &pool(), "k3vd-9aq1-zz07-m2pe").unwrap();
    b.assert_done();
    let r = b.requests();
    assert_eq!(
        (r[0].method.as_str(), r[0].url.clone()),
        ("DELETE", format!("{APPS}/k3vd-9aq1-zz07-m2pe"))
    );
    assert_eq!(
        header(&r[0], "authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
}

#[test]
fn a_delete_refused_while_running_stops_the_application_then_deletes_it() {
    let b = Script::new()
        .http(400, &fixture("error-delete-running.json"))
        .http(200, "{}")
        .http(200, "");
    Cml::delete(&b, &pool(), "x7qq-2mwd-b8g4-r1ja").unwrap();
    b.assert_done();
    let r: Vec<(String, String)> = b
        .requests()
        .iter()
        .map(|q| (q.method.clone(), q.url.clone()))
        .collect();
    let app = format!("{APPS}/x7qq-2mwd-b8g4-r1ja");
    assert_eq!(
        r,
        [
            ("DELETE".into(), app.clone()),
            ("POST".into(), format!("{app}:stop")),
            ("DELETE".into(), app)
        ]
    );
}

#[test]
fn a_429_is_a_rate_limit_with_the_retry_after_wait() {
    let b = Script::new()
        .http_with(
            429,
            &[("Retry-After", "7")],
            r#"{"code":8,"message":"too many requests"}"#,
        )
        .http_with(429, &[], "")
        .http_with(429, &[("retry-after", "Wed, 21 Oct 2026 07:28:00 GMT")], "");
    match Cml::list(&b, &pool()).unwrap_err() {
        ProviderError::RateLimited(r) => {
            assert_eq!(r.retry_after_ms, 7_000);
            assert!(
                r.message.contains("429") && r.message.contains("too many requests"),
                "{}",
                r.message
            );
        }
        other => panic!("{other:?}"),
    }
    for _ in 0..2 {
        match Cml::status(&b, &pool(), "x7qq-2mwd-b8g4-r1ja").unwrap_err() {
            ProviderError::RateLimited(r) => assert_eq!(r.retry_after_ms, DEFAULT_RETRY_AFTER_MS),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_5xx_is_a_backend_error_naming_the_status() {
    let b = Script::new()
        .http(503, &fixture("error-unavailable.json"))
        .http(500, "");
    let err = Cml::list(&b, &pool()).unwrap_err();
    assert_eq!(
        err,
        ProviderError::backend(format!(
            "GET {APPS}: CML answered 503 Service Unavailable: upstream connect error or disconnect/reset before headers"
        ))
    );
    let err = Cml::delete(&b, &pool(), "x7qq-2mwd-b8g4-r1ja").unwrap_err();
    assert_eq!(
        err,
        ProviderError::backend(format!(
            "DELETE {APPS}/x7qq-2mwd-b8g4-r1ja: CML answered 500 Internal Server Error"
        ))
    );
}

#[test]
fn a_refused_key_is_denied_and_never_echoed() {
    let echoing =
        format!(r#"{{"code":16,"message":"invalid API key {KEY} (Bearer {KEY})","details":[]}}"#);
    let b = Script::new()
        .http(401, &fixture("error-unauthenticated.json"))
        .http(403, &echoing);
    let err = Cml::list(&b, &pool()).unwrap_err();
    let ProviderError::Failed(Error::Denied(m)) = &err else {
        panic!("{err:?}")
    };
    assert!(
        m.contains("refused the API key")
            && m.contains("401 Unauthorized")
            && m.contains("invalid API key"),
        "{m}"
    );
    let err = Cml::status(&b, &pool(), "x7qq-2mwd-b8g4-r1ja").unwrap_err();
    let shown = format!("{err:?} {}", message(&err));
    assert!(!shown.contains(KEY), "{shown}");
    assert!(
        shown.contains("[secret]") && shown.contains("403 Forbidden"),
        "{shown}"
    );
}

#[test]
fn a_body_that_is_not_json_is_a_clear_backend_error() {
    let html = "<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>Please sign in.</body></html>\n";
    let b = Script::new().http(200, html);
    let err = Cml::list(&b, &pool()).unwrap_err();
    let m = message(&err);
    assert!(matches!(err, ProviderError::Failed(Error::Backend(_))));
    assert!(
        m.contains("not JSON") && m.contains("<!DOCTYPE html>") && m.contains("api_url"),
        "{m}"
    );
}

#[test]
fn an_error_that_is_not_json_is_quoted_as_text() {
    let b = Script::new().http(502, "<html>502 Bad Gateway</html>");
    let m = message(&Cml::list(&b, &pool()).unwrap_err());
    assert!(
        m.ends_with("CML answered 502 Bad Gateway: <html>502 Bad Gateway</html>"),
        "{m}"
    );
}

#[test]
fn a_create_answer_without_an_id_is_an_error() {
    let b = Script::new()
        .http(200, "{}")
        .http(200, r#"{"name":"cml-gpu-3"}"#);
    let m = message(&Cml::create(&b, &pool(), &req()).unwrap_err());
    assert!(m.contains("without the application's id"), "{m}");
}

#[test]
fn a_transport_failure_passes_through() {
    let b = Script::new().http_err(Error::Timeout("no answer within 60s".into()));
    assert_eq!(
        Cml::list(&b, &pool()).unwrap_err(),
        ProviderError::Failed(Error::Timeout("no answer within 60s".into()))
    );
}
