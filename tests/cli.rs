//! The command line's own behaviour: config checks, certificate commands, the client
//! commands' errors, and `corral dev` end to end.

use corral_test_support as support;

use std::time::{Duration, Instant};

use support::*;

fn check(dir: &std::path::Path, body: &str) -> std::process::Output {
    let file = dir.join("c.toml");
    std::fs::write(&file, body).unwrap();
    run(&["config", "check", file.to_str().unwrap()])
}

#[test]
fn config_check_names_the_file_the_key_and_the_problem() {
    let c = Cluster::new();
    let tls = "[tls]\nca = \"tls/ca.pem\"\ncert = \"tls/coordinator.pem\"\nkey = \"tls/coordinator.key\"\n";
    let cases = [
        ("[agent]\ncoordinator = \"head:7440\"\nbeat_interval = \"fast\"\n", "agent.beat_interval"),
        ("[agent]\ncoordinator = \"head\"\n", "agent.coordinator"),
        ("[agent]\ncoordinator = \"h:1\"\ncolour = \"blue\"\n", "agent.colour"),
        ("[coordinator]\nstate_dir = \"s\"\n[api]\nlisten = \"0.0.0.0:7441\"\n", "api.listen"),
        ("[coordinator]\nstate_dir = \"s\"\ndown_after = \"1ms\"\n", "coordinator.down_after"),
        ("[agent]\ncoordinator = \"h:1\"\n[health]\ndisk_warn_percent = 99\ndisk_fail_percent = 90\n", "health.disk_warn_percent"),
    ];
    for (body, key) in cases {
        let out = check(c.dir.path(), &format!("{body}{tls}"));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{body}: {err}");
        assert!(
            err.contains("c.toml") && err.contains(&format!("`{key}`")),
            "expected key {key} in: {err}"
        );
    }
    let out = check(
        c.dir.path(),
        "[agent]\ncoordinator = \"h:1\"\n[tls]\nca = \"missing.pem\"\ncert = \"x\"\nkey = \"y\"\n",
    );
    assert!(
        stderr(&out).contains("`tls.ca`") && stderr(&out).contains("missing.pem"),
        "{}",
        stderr(&out)
    );
    let out = check(
        c.dir.path(),
        &format!("[agent]\ncoordinator = \"head:7440\"\n[coordinator]\nstate_dir = \"s\"\n{tls}"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("ok (agent + coordinator)"));
}

#[test]
fn config_check_of_a_missing_file_says_so() {
    let out = run(&["config", "check", "/nonexistent/corral.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("/nonexistent/corral.toml: cannot read"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn certs_refuse_to_overwrite_and_reject_bad_names() {
    let c = Cluster::new();
    let tls = c.tls_dir();
    let out = run(&["certs", "init", "--out", tls.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    let out = run(&[
        "certs",
        "issue",
        "--ca",
        tls.to_str().unwrap(),
        "--name",
        "bad name",
        "--role",
        "agent",
        "--out",
        tls.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not a valid name"),
        "{}",
        stderr(&out)
    );
    let out = run(&[
        "certs",
        "issue",
        "--ca",
        "/nonexistent",
        "--name",
        "n",
        "--role",
        "agent",
        "--out",
        tls.to_str().unwrap(),
    ]);
    assert!(
        stderr(&out).contains("corral certs init"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn client_commands_without_a_coordinator_explain_and_exit_3() {
    let port = free_tcp_port();
    let out = run(&["nodes", "--api", &format!("http://127.0.0.1:{port}")]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot reach the coordinator API"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn agent_once_prints_this_nodes_report_as_json() {
    let out = run(&["agent", "--once", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["facts"]["cpu_cores"].as_u64().unwrap() > 0);
    assert_eq!(
        v["gpus"].as_array().unwrap().len(),
        0,
        "no GPU here: zero GPUs, not an error"
    );
    assert!(v["gpu_error"].is_null());
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_runs_a_ready_node_keeps_state_across_runs_and_stops_on_ctrl_c() {
    let state = tempfile::tempdir().unwrap();
    let api_port = free_tcp_port();
    let api = format!("http://127.0.0.1:{api_port}");
    let socket = state.path().join("api.sock").to_str().unwrap().to_string();
    let token = state
        .path()
        .join("admin-token")
        .to_str()
        .unwrap()
        .to_string();
    for round in 0..2 {
        let mut dev = corral()
            .args([
                "dev",
                "--state-dir",
                state.path().to_str().unwrap(),
                "--quic-port",
                "0",
                "--api-port",
                &api_port.to_string(),
                "--name",
                "devnode",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = run_async(vec![
                "node".into(),
                "devnode".into(),
                "--json".into(),
                "--socket".into(),
                socket.clone(),
            ])
            .await;
            if out.status.success() {
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                if v["liveness"] == "ready" && !v["report"].is_null() {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "dev node never became ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Over HTTP, with the admin token `corral dev` made (and keeps across runs).
        let events = run_async(vec![
            "events".into(),
            "--json".into(),
            "--api".into(),
            api.clone(),
            "--token-file".into(),
            token.clone(),
        ])
        .await;
        assert!(events.status.success(), "{}", stderr(&events));
        let events: Vec<serde_json::Value> = serde_json::from_slice(&events.stdout).unwrap();
        if round == 1 {
            // The second run starts from the first run's database.
            assert!(
                events
                    .iter()
                    .any(|e| e["message"].as_str().unwrap().contains("new node")),
                "{events:?}"
            );
            assert!(events.len() >= 3, "{events:?}");
        }
        signal(&dev, libc::SIGINT);
        let status =
            wait_timeout(&mut dev, Duration::from_secs(15)).expect("dev did not stop on Ctrl-C");
        assert!(status.success(), "{status}");
        let mut banner = String::new();
        use std::io::Read;
        dev.stdout
            .take()
            .unwrap()
            .read_to_string(&mut banner)
            .unwrap();
        assert!(
            banner.contains("corral nodes") && banner.contains(&api),
            "{banner}"
        );
        // The console's address and a login link with a token in its fragment.
        assert!(
            banner.contains(&format!("{api}/login#token=corral_")),
            "{banner}"
        );
    }
    assert!(state.path().join("coordinator.db").exists());
    assert!(state.path().join("tls/ca.pem").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn api_over_tls_is_reachable_with_the_cluster_ca() {
    let mut c = Cluster::new();
    c.api_extra = "tls_cert = \"tls/coordinator.pem\"\ntls_key = \"tls/coordinator.key\"".into();
    c.start_coordinator();
    c.start_agent("tls-node", "");
    let https = format!("https://127.0.0.1:{}", c.api_port);
    let ca = c.tls_dir().join("ca.pem").to_str().unwrap().to_string();
    let token = c.path("viewer-token");
    std::fs::write(&token, c.token("watcher", "viewer").await).unwrap();
    let token = token.to_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = run_async(vec![
            "nodes".into(),
            "--api".into(),
            https.clone(),
            "--api-ca".into(),
            ca.clone(),
            "--token-file".into(),
            token.clone(),
        ])
        .await;
        assert!(out.status.success(), "{}", stderr(&out));
        if stdout(&out).contains("tls-node") {
            break;
        }
        assert!(Instant::now() < deadline, "node never listed over HTTPS");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Without the cluster CA the server is not trusted.
    let out = run_async(vec!["nodes".into(), "--api".into(), https]).await;
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
}
