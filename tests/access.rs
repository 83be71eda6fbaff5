//! Who may use the API: a real coordinator (its TCP listener, its HTTPS listener with
//! the cluster CA, its Unix socket) driven by the real CLI and by raw HTTP, the way a
//! script, a browser or an attacker on the host would.
//!
//! The test runner is admin on the socket ([`Cluster::access`]); everything else has to
//! authenticate like anyone off the socket.

use corral_test_support as support;

use std::time::Duration;

use serde_json::Value;
use support::*;

async fn started() -> Cluster {
    let mut c = Cluster::new();
    c.start_coordinator();
    c
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unauthenticated_request_on_loopback_is_refused() {
    let c = started().await;
    let http = reqwest::Client::new();
    for path in ["/api/v1/nodes", "/api/v1/jobs", "/metrics"] {
        let r = http.get(format!("{}{path}", c.api())).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
        let body: Value = r.json().await.unwrap();
        assert!(
            body["error"].as_str().unwrap().contains("no credentials"),
            "{body}"
        );
    }
    // The job of the original report: a local user posting a job without credentials.
    let r = http
        .post(format!("{}/api/v1/jobs", c.api()))
        .header("content-type", "application/json")
        .body(r#"{"scheduler":"slurm","spec":{"executable":"/bin/sh","arguments":["-c","id -u > /tmp/out"]}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .get(format!("{}/api/v1/nodes", c.api()))
        .bearer_auth("corral_t000000000000_deadbeef")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        http.get(format!("{}/healthz", c.api()))
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "health checks need no identity"
    );
    // The CLI off the socket says what to do.
    let out = run_async(vec!["nodes".into(), "--api".into(), c.api()]).await;
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("corral tokens create"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_viewer_token_reads_but_cannot_submit_and_a_user_token_cannot_manage_tokens() {
    let c = started().await;
    let viewer = c.token("watcher", "viewer").await;
    let http = reqwest::Client::new();
    let r = http
        .get(format!("{}/api/v1/nodes", c.api()))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .post(format!("{}/api/v1/jobs", c.api()))
        .bearer_auth(&viewer)
        .header("content-type", "application/json")
        .body(r#"{"scheduler":"slurm","spec":{"executable":"/bin/true"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("submitting a job needs the user role; watcher has viewer"),
        "{body}"
    );
    // Node actions need the user role too.
    let r = http
        .post(format!("{}/api/v1/nodes/any/ping", c.api()))
        .bearer_auth(&viewer)
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let user = c.token("alice", "user").await;
    let r = http
        .get(format!("{}/api/v1/tokens", c.api()))
        .bearer_auth(&user)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let me: Value = http
        .get(format!("{}/api/v1/whoami", c.api()))
        .bearer_auth(&user)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (me["user"].as_str(), me["role"].as_str()),
        (Some("alice"), Some("user"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_text_plain_post_is_refused_even_with_a_good_token() {
    let c = started().await;
    let admin = c.token("ops", "admin").await;
    let http = reqwest::Client::new();
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let mut req = http
            .post(format!("{}/api/v1/jobs", c.api()))
            .bearer_auth(&admin)
            .body(r#"{"scheduler":"slurm","spec":{"executable":"/bin/true"}}"#);
        if let Some(t) = content_type {
            req = req.header("content-type", t);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 415, "{content_type:?}");
        let body: Value = r.json().await.unwrap();
        assert!(
            body["error"].as_str().unwrap().contains("application/json"),
            "{body}"
        );
    }
    // Through the socket as well: the rule is about browsers, not about who asks.
    let r = c
        .http()
        .post(c.url("/api/v1/jobs/c1/cancel"))
        .header("content-type", "text/plain")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rebound_host_name_or_a_foreign_origin_is_refused() {
    let c = started().await;
    let admin = c.token("ops", "admin").await;
    let http = reqwest::Client::new();
    let url = format!("{}/api/v1/nodes", c.api());
    // DNS rebinding: the attacker's name resolves to loopback; Host still says it.
    let r = http
        .get(&url)
        .bearer_auth(&admin)
        .header("host", format!("rebind.attacker.example:{}", c.api_port))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 421);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("api.hosts"),
        "{body}"
    );
    // A page on another origin, even one that got hold of a token.
    let r = http
        .get(&url)
        .bearer_auth(&admin)
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.headers().get("access-control-allow-origin").is_none());
    // A preflight gets no CORS grant unless an operator configured the origin.
    let r = http
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Loopback names and IP addresses are fine, and so is the API's own origin.
    for host in ["localhost", "127.0.0.1"] {
        let r = http
            .get(&url)
            .bearer_auth(&admin)
            .header("host", format!("{host}:{}", c.api_port))
            .header("origin", format!("http://{host}:{}", c.api_port))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{host}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_configured_origin_gets_cors_and_others_do_not() {
    let mut c = Cluster::new();
    c.api_extra = "cors_origins = [\"https://dash.example:3000\"]".into();
    c.start_coordinator();
    let http = reqwest::Client::new();
    let url = format!("{}/api/v1/nodes", c.api());
    let r = http
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", "https://dash.example:3000")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://dash.example:3000"
    );
    let token = c.token("dash", "viewer").await;
    let r = http
        .get(&url)
        .bearer_auth(&token)
        .header("origin", "https://dash.example:3000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://dash.example:3000"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_token_stops_working_and_every_change_is_an_audit_event_naming_who() {
    let c = started().await;
    let token = c.token("ci-bot", "user").await;
    let listed = run_async(vec![
        "tokens".into(),
        "list".into(),
        "--json".into(),
        "--socket".into(),
        c.socket(),
    ])
    .await;
    assert!(listed.status.success(), "{}", stderr(&listed));
    let text = stdout(&listed);
    let secret = token.rsplit('_').next().unwrap();
    assert!(!text.contains(secret), "a listing shows no secret: {text}");
    let tokens: Vec<Value> = serde_json::from_str(&text).unwrap();
    let id = tokens.iter().find(|t| t["user"] == "ci-bot").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let whoami = |token: String| {
        let api = c.api();
        async move {
            let file = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(file.path(), token).unwrap();
            run_async(vec![
                "whoami".into(),
                "--api".into(),
                api,
                "--token-file".into(),
                file.path().to_str().unwrap().into(),
            ])
            .await
        }
    };
    let out = whoami(token.clone()).await;
    assert!(
        stdout(&out).starts_with("ci-bot (user), by token"),
        "{}",
        stdout(&out)
    );
    let out = run_async(vec![
        "tokens".into(),
        "revoke".into(),
        id.clone(),
        "--socket".into(),
        c.socket(),
    ])
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = whoami(token).await;
    assert_eq!(out.status.code(), Some(5));
    assert!(
        stderr(&out).contains(&format!("token {id} has been revoked")),
        "{}",
        stderr(&out)
    );

    let events: Vec<Value> = c.get("/api/v1/events").await.json().await.unwrap();
    let audit: Vec<String> = events
        .iter()
        .filter(|e| e["kind"] == "audit")
        .map(|e| {
            format!(
                "{} {}",
                e["to"].as_str().unwrap(),
                e["message"].as_str().unwrap()
            )
        })
        .collect();
    let me = runner();
    assert!(
        audit
            .iter()
            .any(|a| a.starts_with(&format!("token-create {me} (local uid"))
                && a.contains("for ci-bot as user")),
        "{audit:?}"
    );
    assert!(
        audit
            .iter()
            .any(|a| a.starts_with("token-revoke") && a.contains(&id)),
        "{audit:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_certificate_logs_in_on_https_until_revoked_and_an_agent_certificate_does_not()
{
    let mut c = Cluster::new();
    c.api_extra = "tls_cert = \"tls/coordinator.pem\"\ntls_key = \"tls/coordinator.key\"".into();
    c.issue("ops", "operator");
    c.issue("worker-1", "agent");
    c.start_coordinator();
    let https = format!("https://127.0.0.1:{}", c.api_port);
    let tls = c.tls_dir();
    let login = |name: &str| {
        vec![
            "whoami".to_string(),
            "--api".into(),
            https.clone(),
            "--api-ca".into(),
            tls.join("ca.pem").to_str().unwrap().into(),
            "--api-cert".into(),
            tls.join(format!("{name}.pem")).to_str().unwrap().into(),
            "--api-key".into(),
            tls.join(format!("{name}.key")).to_str().unwrap().into(),
        ]
    };
    let out = run_async(login("ops")).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("ops (admin), by operator certificate"),
        "{}",
        stdout(&out)
    );
    let out = run_async(login("worker-1")).await;
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("takes operator certificates"),
        "{}",
        stderr(&out)
    );
    // A revoked operator certificate stops working without a coordinator restart.
    let out = run(&["certs", "revoke", "--ca", tls.to_str().unwrap(), "ops"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let out = run_async(login("ops")).await;
        if !out.status.success() {
            assert!(!stdout(&out).contains("(admin)"), "{}", stdout(&out));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the revoked operator certificate still logs in"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Without any certificate the HTTPS listener still wants a credential.
    let out = run_async(vec![
        "whoami".into(),
        "--api".into(),
        https.clone(),
        "--api-ca".into(),
        tls.join("ca.pem").to_str().unwrap().into(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
}

#[test]
fn a_listener_off_loopback_without_tls_is_refused_at_start_and_by_config_check() {
    let mut c = Cluster::new();
    c.api_extra.clear();
    let cfg = c.write_coordinator_config();
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        &format!("127.0.0.1:{}\"\nsocket", c.api_port),
        &format!("0.0.0.0:{}\"\nsocket", c.api_port),
    );
    std::fs::write(&cfg, text).unwrap();
    let check = run(&["config", "check", cfg.to_str().unwrap()]);
    assert_eq!(check.status.code(), Some(1), "{}", stderr(&check));
    assert!(stderr(&check).contains("api.listen"), "{}", stderr(&check));
    let mut start = corral()
        .args(["coordinator", "--config", cfg.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status =
        wait_timeout(&mut start, Duration::from_secs(10)).expect("coordinator kept running");
    assert!(!status.success());
    let mut err = String::new();
    use std::io::Read;
    start
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(err.contains("in the clear"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn local_root_on_the_socket_is_admin() {
    if runner() != "root" {
        eprintln!("SKIPPED: needs to run as root");
        return;
    }
    let mut c = Cluster::new();
    c.access = String::new();
    c.start_coordinator();
    let out = run_async(vec!["whoami".into(), "--socket".into(), c.socket()]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("root (admin), by the coordinator's socket (local uid 0)"),
        "{}",
        stdout(&out)
    );
}
