//! Pools that heal themselves, end to end, with the `command` provider: its programs
//! (`lab-vm`, a script this test writes) "boot a machine" by running the pool's user
//! data, which joins with its single-use token (`corral join`) and starts a real
//! `corral agent` on this host. Real coordinator, real QUIC with real certificates, the
//! real provider plugin in its sandbox; only the machines are processes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use corral_proto::pool::{PoolSummary, PoolView};
use corral_test_support::{
    corral_bin, run_async, slurm::built_plugins_dir, stderr, stdout, Cluster,
};

/// The machines' script (`tests/fixtures/lab-vm`, shared with `corral-bench pools`), copied
/// into `root`: `create NODE` (user data on stdin) boots one, `delete ID`
/// kills and removes it, `list` prints `ID NODE STATE CREATED`. What `create` does is
/// read from `ROOT/create-mode` at each call, so a test can change it while the pool
/// runs: empty, `fail` (exit 1, as a provider out of quota) or `tempfail` (exit 75 with
/// `retry-after: 1`). A machine with a `failed` file is listed `failed`, and one with a
/// `created` file (Unix seconds) as created then.
fn lab_vm(root: &Path) -> PathBuf {
    let machines = root.join("machines");
    std::fs::create_dir_all(&machines).unwrap();
    let script = root.join("lab-vm");
    std::fs::write(&script, include_str!("fixtures/lab-vm")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

/// A cluster with a pool whose machines are process sessions on this host: dropping it
/// kills every machine's session (the agents run detached, as on real machines, so the
/// cluster's own cleanup does not reach them).
struct Lab(Cluster);

impl std::ops::Deref for Lab {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        &self.0
    }
}

impl std::ops::DerefMut for Lab {
    fn deref_mut(&mut self) -> &mut Cluster {
        &mut self.0
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let Ok(dirs) = std::fs::read_dir(self.0.path("machines")) else {
            return;
        };
        for d in dirs.flatten() {
            // Deleted machines were killed then; their pids may be someone else's now.
            if d.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let pid = std::fs::read_to_string(d.path().join("pid")).unwrap_or_default();
            if let Ok(pid) = pid.trim().parse::<i32>() {
                // The machine's session leader: its whole process group goes.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
            }
        }
    }
}

/// What the machines' `create` does from now on (see [`lab_vm`]).
fn set_create_mode(c: &Cluster, mode: &str) {
    std::fs::write(c.path("create-mode"), mode).unwrap();
}

/// A cluster with pool `lab` of `min` nodes through the `command` provider, or `None`
/// (a skip, off CI) when the plugin is not built.
fn lab_cluster(min: u32, create_mode: &str, extra: &str) -> Option<Lab> {
    lab_cluster_with(min, create_mode, extra, "", false)
}

/// [`lab_cluster`] with `manifest_config` added to the command plugin's `[config]`.
fn lab_cluster_with(
    min: u32,
    create_mode: &str,
    extra: &str,
    manifest_config: &str,
    https: bool,
) -> Option<Lab> {
    let plugins = built_plugins_dir("command")?;
    let mut c = Cluster::new();
    let script = lab_vm(c.dir.path());
    set_create_mode(&c, create_mode);
    let providers = c.path("providers");
    std::fs::create_dir_all(&providers).unwrap();
    std::fs::copy(plugins.join("command.wasm"), providers.join("command.wasm")).unwrap();
    let manifest = std::fs::read_to_string(plugins.join("command.toml"))
        .unwrap()
        .replace(
            "programs = [\"/usr/local/lib/corral/pool-machines\"]",
            &format!("programs = [{:?}]", script.display().to_string()),
        )
        .replace("[config]\n", &format!("[config]\n{manifest_config}"));
    std::fs::write(providers.join("command.toml"), manifest).unwrap();
    let corral = corral_bin();
    let user_data = format!(
        "set -e\nprintf '%s' '{{ca_pem}}' > ca.pem\n{corral} join --url {{join_url}} --token {{join_token}} --ca ca.pem --dir \"$PWD/identity\"\nexec {corral} agent --config \"$PWD/identity/agent.toml\"\n",
        corral = corral.display()
    );
    c.coordinator_extra = "down_after = \"3s\"\n".into();
    let scheme = if https {
        c.api_extra =
            "tls_cert = \"tls/coordinator.pem\"\ntls_key = \"tls/coordinator.key\"".into();
        "https"
    } else {
        "http"
    };
    c.sections = format!(
        "[providers]\ndir = \"providers\"\n\n[join]\nca_dir = \"tls\"\nurl = \"{scheme}://127.0.0.1:{api}\"\ncoordinator = \"127.0.0.1:{quic}\"\n\n[pools.lab]\nprovider = \"command\"\nmin = {min}\nmax = 5\nreplace_after = \"2s\"\njoin_timeout = \"90s\"\nlist_interval = \"2s\"\nmax_failures = 3\nuser_data = {user_data:?}\n{extra}[pools.lab.template]\ncreate = [{s:?}, \"create\", \"{{node}}\"]\ndelete = [{s:?}, \"delete\", \"{{id}}\"]\nlist = [{s:?}, \"list\"]\n",
        api = c.api_port,
        quic = c.quic_port,
        s = script.display().to_string(),
    );
    c.start_coordinator();
    Some(Lab(c))
}

async fn pool(c: &Cluster) -> PoolView {
    let r = c.get("/api/v1/pools/lab").await;
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    r.json().await.unwrap()
}

/// Polls the pool until `pred` holds; panics with the pool, the coordinator's log and
/// the machines' boot logs after `within`.
async fn wait_pool(
    c: &Cluster,
    what: &str,
    within: Duration,
    pred: impl Fn(&PoolView) -> bool,
) -> PoolView {
    let start = Instant::now();
    loop {
        let v = pool(c).await;
        if pred(&v) {
            return v;
        }
        if start.elapsed() > within {
            let mut boots = String::new();
            for d in std::fs::read_dir(c.path("machines")).unwrap().flatten() {
                let log = std::fs::read_to_string(d.path().join("boot.log")).unwrap_or_default();
                boots.push_str(&format!(
                    "--- {} ---\n{}\n",
                    d.path().display(),
                    log.lines().rev().take(15).collect::<Vec<_>>().join("\n")
                ));
            }
            panic!(
                "pool lab not {what} within {within:?}: {v:#?}\n--- coordinator log ---\n{}\n{boots}",
                c.coordinator_log()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn members(v: &PoolView) -> Vec<String> {
    v.nodes
        .iter()
        .filter(|n| {
            n.phase == corral_proto::pool::PoolNodePhase::Member
                && n.liveness.as_deref() == Some("ready")
        })
        .map(|n| n.node.clone())
        .collect()
}

fn agent_pid(c: &Cluster, node: &str) -> i32 {
    std::fs::read_to_string(c.path(&format!("machines/{node}/pid")))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pool_of_three_comes_up_from_join_tokens_alone_and_a_killed_node_is_replaced() {
    let Some(c) = lab_cluster(3, "", "") else {
        return;
    };
    // No certificate was issued for any node: each gets its own at join.
    let up = Instant::now();
    let v = wait_pool(&c, "3 ready", Duration::from_secs(90), |v| {
        members(v).len() == 3
    })
    .await;
    eprintln!("pool of 3 ready in {:?}", up.elapsed());
    let mut first = members(&v);
    first.sort();
    assert_eq!(first, ["lab-1", "lab-2", "lab-3"]);
    for n in &v.nodes {
        assert_eq!(
            n.provider_id.as_deref(),
            Some(format!("vm-{}", n.node).as_str()),
            "{n:?}"
        );
    }
    for name in &first {
        let key = c.path(&format!("machines/{name}/identity/{name}.key"));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&key).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{} is private", key.display());
        assert!(
            !c.tls_dir().join(format!("{name}.key")).exists(),
            "the key was made on the node, not by the CA"
        );
    }
    let tokens: Vec<corral_proto::pool::JoinTokenView> =
        c.get("/api/v1/join-tokens").await.json().await.unwrap();
    assert_eq!(tokens.len(), 3, "{tokens:?}");
    assert!(
        tokens
            .iter()
            .all(|t| t.used_by == t.node && t.used_ms.is_some()),
        "{tokens:?}"
    );

    // kill -9 lab-2's agent: down after 3 s, replaced 2 s later.
    let killed = Instant::now();
    let pid = agent_pid(&c, "lab-2");
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let v = wait_pool(&c, "healed", Duration::from_secs(90), |v| {
        let m = members(v);
        m.len() == 3 && !m.iter().any(|n| n == "lab-2")
    })
    .await;
    eprintln!("replaced in {:?}", killed.elapsed());
    let mut now = members(&v);
    now.sort();
    assert_eq!(
        now,
        ["lab-1", "lab-3", "lab-4"],
        "a fresh name, never lab-2 again"
    );
    assert!(
        !c.path("machines/lab-2").exists(),
        "the provider deleted lab-2's machine"
    );
    assert!(c.node("lab-2").await.is_none(), "lab-2 left the node list");
    let actions: Vec<&str> = v.actions.iter().map(|a| a.action.as_str()).collect();
    assert!(
        actions.contains(&"replace") && actions.contains(&"delete"),
        "{actions:?}"
    );
    let replace = v.actions.iter().find(|a| a.action == "replace").unwrap();
    assert!(replace.message.contains("down for"), "{replace:?}");
    // Its certificate is revoked.
    let crl = std::fs::read_to_string(c.tls_dir().join("crl.pem")).unwrap_or_default();
    assert!(crl.contains("BEGIN X509 CRL"), "a CRL was written: {crl}");
    let events: Vec<corral_proto::api::Event> = c
        .get("/api/v1/events?kind=pool&limit=100")
        .await
        .json()
        .await
        .unwrap();
    let said: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e.node.as_str(), e.to.as_str()))
        .collect();
    for want in [
        ("lab-2", "replace"),
        ("lab-2", "delete"),
        ("lab-4", "create"),
        ("lab-4", "joined"),
    ] {
        assert!(said.contains(&want), "{want:?} not in {said:?}");
    }
    let metrics = c.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics
            .contains("corral_pool_actions_total{pool=\"lab\",action=\"delete\",outcome=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("corral_pool_ready{pool=\"lab\"} 3"),
        "{metrics}"
    );

    // The CLI says the same.
    let out = run_async(vec!["pools".into(), "--socket".into(), c.socket()]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("lab") && stdout(&out).contains("3/3"),
        "{}",
        stdout(&out)
    );
    let out = run_async(vec![
        "pool".into(),
        "lab".into(),
        "--socket".into(),
        c.socket(),
    ])
    .await;
    assert!(
        stdout(&out).contains("lab-4") && stdout(&out).contains("vm-lab-4"),
        "{}",
        stdout(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_provider_that_fails_max_failures_times_in_a_row_stops_and_says_why() {
    let Some(c) = lab_cluster(2, "fail", "") else {
        return;
    };
    // Halted, and the failed creates settled by the lists that follow (a create that
    // fails may have made a machine: the row stays until two lists show none).
    let v = wait_pool(&c, "halted", Duration::from_secs(60), |v| {
        v.summary
            .halted
            .as_deref()
            .is_some_and(|h| h.starts_with("stopped"))
            && v.nodes.is_empty()
    })
    .await;
    let halted = v.summary.halted.clone().unwrap();
    assert!(halted.contains("3 provider failures in a row"), "{halted}");
    assert!(
        halted.contains("quota exceeded"),
        "the provider's own words: {halted}"
    );
    assert!(halted.contains("corral pool lab resume"), "{halted}");
    assert!(
        v.nodes.is_empty(),
        "failed creates leave no nodes: {:?}",
        v.nodes
    );
    let creates = v
        .actions
        .iter()
        .filter(|a| a.action == "create" && a.outcome == "failed")
        .count();
    assert_eq!(creates, 3, "{:?}", v.actions);
    // It stays stopped: no fourth try.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let v = pool(&c).await;
    assert_eq!(v.actions.iter().filter(|a| a.action == "create").count(), 3);
    let metrics = c.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("corral_pool_halted{pool=\"lab\"} 1"),
        "{metrics}"
    );
    let out = run_async(vec!["pools".into(), "--socket".into(), c.socket()]).await;
    assert!(stdout(&out).contains("stopped after 3"), "{}", stdout(&out));
    // The unused join tokens of failed creates are revoked.
    let tokens: Vec<corral_proto::pool::JoinTokenView> =
        c.get("/api/v1/join-tokens").await.json().await.unwrap();
    assert!(tokens.iter().all(|t| t.revoked_ms.is_some()), "{tokens:?}");
    // Resuming tries again (and, the quota still gone, counts afresh).
    let out = run_async(vec![
        "pool".into(),
        "lab".into(),
        "resume".into(),
        "--socket".into(),
        c.socket(),
    ])
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let s: Vec<PoolSummary> = c.get("/api/v1/pools").await.json().await.unwrap();
    assert!(
        s[0].halted.is_none() || !s[0].halted.as_deref().unwrap().starts_with("stopped"),
        "{s:?}"
    );
    wait_pool(&c, "trying again", Duration::from_secs(20), |v| {
        v.actions.iter().filter(|a| a.action == "create").count() > 3
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_used_expired_revoked_or_forged_join_token_is_refused_and_issues_nothing() {
    let Some(c) = lab_cluster(0, "", "") else {
        return;
    };
    let make = |ttl: &str| {
        let socket = c.socket();
        let ttl = ttl.to_string();
        async move {
            let out = run_async(vec![
                "tokens".into(),
                "create".into(),
                "--join".into(),
                "--pool".into(),
                "lab".into(),
                "--ttl".into(),
                ttl,
                "--socket".into(),
                socket,
            ])
            .await;
            assert!(out.status.success(), "{}", stderr(&out));
            stdout(&out).trim().to_string()
        }
    };
    let join = |token: String, dir: &str| {
        let url = c.api();
        let dir = c.path(dir).display().to_string();
        async move {
            run_async(vec![
                "join".into(),
                "--url".into(),
                url,
                "--token".into(),
                token,
                "--dir".into(),
                dir,
            ])
            .await
        }
    };
    let token = make("1h").await;
    let out = join(token.clone(), "a").await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).trim(),
        "lab-1",
        "the pool names a node joined by hand"
    );
    assert!(c.path("a/lab-1.pem").exists() && c.path("a/agent.toml").exists());
    let agent_toml = std::fs::read_to_string(c.path("a/agent.toml")).unwrap();
    assert!(
        agent_toml.contains(&format!("coordinator = \"127.0.0.1:{}\"", c.quic_port)),
        "{agent_toml}"
    );

    let again = join(token, "b").await;
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("already used (by lab-1)"),
        "{}",
        stderr(&again)
    );
    assert!(!c.path("b/lab-2.pem").exists());

    let short = make("1s").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let expired = join(short, "c").await;
    assert!(
        stderr(&expired).contains("has expired"),
        "{}",
        stderr(&expired)
    );

    let revoked = make("1h").await;
    let id = revoked.split('_').nth(1).unwrap().to_string();
    let out = run_async(vec![
        "tokens".into(),
        "revoke".into(),
        id,
        "--socket".into(),
        c.socket(),
    ])
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let r = join(revoked, "d").await;
    assert!(stderr(&r).contains("has been revoked"), "{}", stderr(&r));

    let forged = make("1h").await;
    let mut bad = forged.clone();
    bad.pop();
    bad.push(if forged.ends_with('0') { '1' } else { '0' });
    let f = join(bad, "e").await;
    assert!(
        stderr(&f).contains("not one this coordinator issued"),
        "{}",
        stderr(&f)
    );
    // The forged try did not spend the real one.
    let ok = join(forged, "f").await;
    assert!(ok.status.success(), "{}", stderr(&ok));

    // A request that is no CSR is refused before the token is spent.
    let token = make("1h").await;
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/join", c.api()))
        .json(&serde_json::json!({ "token": token, "csr_pem": "not a CSR" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("certificate request"));
    let ok = join(token, "g").await;
    assert!(ok.status.success(), "{}", stderr(&ok));

    let listed = run_async(vec![
        "tokens".into(),
        "list".into(),
        "--join".into(),
        "--socket".into(),
        c.socket(),
    ])
    .await;
    assert!(
        stdout(&listed).contains("used")
            && stdout(&listed).contains("revoked")
            && stdout(&listed).contains("expired"),
        "{}",
        stdout(&listed)
    );
}

#[test]
fn a_plugin_loaded_as_the_other_kind_is_refused_saying_who_loads_it() {
    let (Some(slurm), Some(command)) = (built_plugins_dir("slurm"), built_plugins_dir("command"))
    else {
        return;
    };
    let (_, failures) = corral_sandbox::plugins::provider::ProviderHost::load(
        &slurm,
        &["slurm".into()],
        None,
        None,
    );
    assert_eq!(failures.len(), 1);
    assert!(
        failures[0].message.contains("plugin.kind")
            && failures[0].message.contains("scheduler plugin"),
        "{}",
        failures[0].message
    );
    let cfg = corral_sandbox::plugins::PluginsConfig {
        dir: Some(command.clone()),
        enable: vec!["command".into()],
        ..Default::default()
    };
    let (_, failures) = corral_sandbox::plugins::PluginHost::load(&cfg);
    assert_eq!(failures.len(), 1);
    assert!(
        failures[0].message.contains("this is a provider plugin")
            && failures[0].message.contains("[pools.NAME]"),
        "{}",
        failures[0].message
    );
    // A manifest that lies about its kind is caught by the component's own exports.
    let t = tempfile::tempdir().unwrap();
    std::fs::copy(command.join("command.wasm"), t.path().join("command.wasm")).unwrap();
    let manifest = std::fs::read_to_string(command.join("command.toml"))
        .unwrap()
        .replace("kind = \"provider\"\n", "");
    std::fs::write(t.path().join("command.toml"), manifest).unwrap();
    let cfg = corral_sandbox::plugins::PluginsConfig {
        dir: Some(t.path().to_path_buf()),
        enable: vec!["command".into()],
        ..Default::default()
    };
    let (_, failures) = corral_sandbox::plugins::PluginHost::load(&cfg);
    assert!(
        failures[0]
            .message
            .contains("exports corral:provider/provider"),
        "{}",
        failures[0].message
    );
}

async fn pool_events(c: &Cluster, node: &str) -> Vec<corral_proto::api::Event> {
    c.get(&format!("/api/v1/events?node={node}&limit=200"))
        .await
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_its_provider_reports_failed_is_drained_while_reachable_then_deleted() {
    // Every scheduler plugin of the harness is configured with no submit host connected,
    // so the drains stay pending: the pool deletes after drain_timeout and says so.
    let Some(c) = lab_cluster(1, "", "drain_timeout = \"3s\"\n") else {
        return;
    };
    wait_pool(&c, "1 ready", Duration::from_secs(60), |v| {
        members(v) == ["lab-1"]
    })
    .await;
    std::fs::write(c.path("machines/lab-1/failed"), "").unwrap();
    let v = wait_pool(&c, "replaced", Duration::from_secs(60), |v| {
        members(v) == ["lab-2"]
    })
    .await;
    let replace = v
        .actions
        .iter()
        .find(|a| a.action == "replace" && a.node.as_deref() == Some("lab-1"))
        .unwrap();
    assert!(replace.message.contains("failed"), "{replace:?}");
    // Still reachable when it was chosen: cordoned and drained first, then deleted.
    let events = pool_events(&c, "lab-1").await;
    let at = |kind: &str, to: &str| {
        events
            .iter()
            .position(|e| e.kind.as_str() == kind && e.to == to)
            .unwrap_or_else(|| panic!("no {kind} {to} event for lab-1: {events:#?}"))
    };
    assert!(
        at("remediation", "cordon") < at("pool", "delete"),
        "{events:#?}"
    );
    assert!(
        at("pool", "drain") < at("pool", "drain-timeout"),
        "{events:#?}"
    );
    assert!(
        at("pool", "drain-timeout") < at("pool", "delete"),
        "{events:#?}"
    );
    let cordon = &events[at("remediation", "cordon")];
    assert!(
        cordon.message.contains("pool-lab"),
        "drained by the pool: {cordon:?}"
    );
    assert!(c.node("lab-1").await.is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rate_limited_provider_is_waited_out_and_never_halts_the_pool() {
    let Some(c) = lab_cluster(1, "tempfail", "") else {
        return;
    };
    let v = wait_pool(&c, "rate limited 4 times", Duration::from_secs(60), |v| {
        v.actions
            .iter()
            .filter(|a| a.outcome == "rate-limited")
            .count()
            >= 4
    })
    .await;
    assert_eq!(
        v.summary.failures, 0,
        "a rate limit is not a failure: {:?}",
        v.summary
    );
    assert!(
        v.summary
            .halted
            .as_deref()
            .is_none_or(|h| !h.starts_with("stopped")),
        "{:?}",
        v.summary
    );
    let limited = v
        .actions
        .iter()
        .find(|a| a.outcome == "rate-limited")
        .unwrap();
    assert!(
        limited.message.contains("exited 75") && limited.message.contains("busy"),
        "{limited:?}"
    );
    set_create_mode(&c, "");
    wait_pool(
        &c,
        "1 ready once the API lets it",
        Duration::from_secs(60),
        |v| members(v).len() == 1,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_coordinator_keeps_its_pool_and_creates_no_second_machine() {
    let Some(mut c) = lab_cluster(2, "", "") else {
        return;
    };
    wait_pool(&c, "2 ready", Duration::from_secs(60), |v| {
        members(v).len() == 2
    })
    .await;
    c.kill_coordinator();
    c.start_coordinator();
    let v = wait_pool(&c, "2 ready again", Duration::from_secs(60), |v| {
        members(v).len() == 2
    })
    .await;
    let mut names = members(&v);
    names.sort();
    assert_eq!(names, ["lab-1", "lab-2"], "the same nodes, reconnected");
    // Give the policy a few ticks and a list: nothing more is created.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let machines: Vec<String> = std::fs::read_dir(c.path("machines"))
        .unwrap()
        .flatten()
        .map(|d| d.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(machines.len(), 2, "{machines:?}");
    let v = pool(&c).await;
    assert!(
        v.actions.iter().all(|a| a.action != "create"),
        "{:?}",
        v.actions
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_node_above_min_goes_just_before_its_next_billed_hour() {
    let Some(mut c) = lab_cluster_with(
        2,
        "",
        "billing_hour = true\ndrain_timeout = \"3s\"\n",
        "hourly_billing = \"true\"\n",
        false,
    ) else {
        return;
    };
    wait_pool(&c, "2 ready", Duration::from_secs(60), |v| {
        members(v).len() == 2
    })
    .await;
    // lab-2's machine has run 59 minutes: its next billed hour starts in one.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    std::fs::write(c.path("machines/lab-2/created"), (now - 3540).to_string()).unwrap();
    // The operator lowers min to 1: lab-2 is surplus, lab-1 (minutes old) is not yet.
    c.sections = c.sections.replace("min = 2\n", "min = 1\n");
    c.stop_coordinator();
    c.start_coordinator();
    let v = wait_pool(&c, "down to lab-1", Duration::from_secs(60), |v| {
        v.nodes.len() == 1 && members(v) == ["lab-1"]
    })
    .await;
    let replace = v
        .actions
        .iter()
        .find(|a| a.action == "replace")
        .unwrap_or_else(|| panic!("{:?}", v.actions));
    assert_eq!(replace.node.as_deref(), Some("lab-2"));
    assert!(
        replace.message.contains("before its next billed hour"),
        "{replace:?}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let v = pool(&c).await;
    assert!(
        v.actions.iter().all(|a| a.action != "create"),
        "at min, nothing is created: {:?}",
        v.actions
    );
    assert!(!c.path("machines/lab-2").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_joins_over_https_trusting_only_the_ca_it_was_given() {
    let Some(c) = lab_cluster_with(1, "", "", "", true) else {
        return;
    };
    // The pool's own node joined over HTTPS with the CA its user data carried.
    wait_pool(&c, "1 ready", Duration::from_secs(60), |v| {
        members(v) == ["lab-1"]
    })
    .await;
    let url = format!("https://127.0.0.1:{}", c.api_port);
    let make = || async {
        let out = run_async(vec![
            "tokens".into(),
            "create".into(),
            "--join".into(),
            "--pool".into(),
            "lab".into(),
            "--ttl".into(),
            "10m".into(),
            "--socket".into(),
            c.socket(),
        ])
        .await;
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out).trim().to_string()
    };
    // Another CA: the coordinator is not trusted, and the token is not spent.
    let other = c.path("other-ca");
    let o = corral_test_support::run(&["certs", "init", "--out", other.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let token = make().await;
    let join = |ca: PathBuf, dir: &str, token: String| {
        let url = url.clone();
        let dir = c.path(dir).display().to_string();
        async move {
            run_async(vec![
                "join".into(),
                "--url".into(),
                url,
                "--token".into(),
                token,
                "--ca".into(),
                ca.display().to_string(),
                "--dir".into(),
                dir,
            ])
            .await
        }
    };
    let bad = join(other.join("ca.pem"), "x", token.clone()).await;
    assert!(!bad.status.success());
    assert!(!c.path("x/agent.toml").exists());
    let good = join(c.tls_dir().join("ca.pem"), "y", token).await;
    assert!(
        good.status.success(),
        "the token was not spent by the refused try: {}",
        stderr(&good)
    );
    // Plain HTTP beyond this host is refused before anything is sent.
    let token = make().await;
    let plain = run_async(vec![
        "join".into(),
        "--url".into(),
        "http://10.255.255.1:7441".into(),
        "--token".into(),
        token,
        "--dir".into(),
        c.path("z").display().to_string(),
    ])
    .await;
    assert!(!plain.status.success());
    assert!(stderr(&plain).contains("needs HTTPS"), "{}", stderr(&plain));
}

#[test]
fn corral_plugin_check_loads_a_provider_plugin_as_the_coordinator_would() {
    let Some(dir) = built_plugins_dir("hetzner") else {
        return;
    };
    let out = corral_test_support::run(&[
        "plugin",
        "check",
        dir.join("hetzner.wasm").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("hetzner")
            && text.contains("a provider plugin")
            && text.contains("by the hour"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn only_an_admin_pauses_a_pool_or_makes_join_tokens_and_a_viewer_reads_them() {
    let Some(c) = lab_cluster(0, "", "") else {
        return;
    };
    let http = reqwest::Client::new();
    let api = c.api();
    for role in ["viewer", "user"] {
        let token = c.token(&format!("someone-{role}"), role).await;
        let read = http
            .get(format!("{api}/api/v1/pools/lab"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(read.status(), 200, "a {role} reads pools");
        for (path, body) in [
            ("/api/v1/pools/lab/pause", serde_json::json!({})),
            ("/api/v1/pools/lab/resume", serde_json::json!({})),
            (
                "/api/v1/join-tokens",
                serde_json::json!({"pool": "lab", "ttl_secs": 60}),
            ),
            (
                "/api/v1/join-tokens/jdeadbeef/revoke",
                serde_json::json!({}),
            ),
        ] {
            let r = http
                .post(format!("{api}{path}"))
                .bearer_auth(&token)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 403, "a {role} is refused {path}");
            assert!(r.text().await.unwrap().contains("needs the admin role"));
        }
        let list = http
            .get(format!("{api}/api/v1/join-tokens"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(list.status(), 403, "a {role} cannot list join tokens");
    }
    // No credential at all: refused, and nothing paused.
    let r = http
        .post(format!("{api}/api/v1/pools/lab/pause"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(!pool(&c).await.summary.paused);
}
