//! The `hetzner` provider plugin, built for wasm by `cargo xtask plugins`, loaded by the
//! coordinator's real provider host and driving a fake Hetzner Cloud API on loopback
//! (tests/support/hetzner_api.rs).
//!
//! What this adds to the plugin's native tests: the component is what runs (wasmtime,
//! the WIT boundary, the sandbox's HTTP import with its host grant, the pool's secret
//! handed through the call, the request count the host reports). What it cannot add:
//! that the real Hetzner Cloud answers like the fake. The fake is NOT the service; it
//! implements the documented endpoints the plugin uses, nothing more.
//!
//! The shipped manifest grants `api.hetzner.cloud:443`; the test's copy grants the
//! fake's `127.0.0.1:PORT` instead, and the pool's `api_url` points there (plain http
//! to a loopback address, which the plugin accepts for exactly this). Without the built
//! plugin: a failure under `CI=true`, `SKIPPED` elsewhere.

use corral_test_support as support;

use std::collections::BTreeMap;
use std::time::Duration;

use corral_proto::job::PluginError;
use corral_proto::pool::MachineState;
use corral_sandbox::plugins::provider::{
    PoolRef, ProviderCall, ProviderFailure, ProviderHost, ProviderOutcome, ProviderReply,
};
use support::hetzner_api::HetznerApi;
use support::slurm::built_plugins_dir;

const NODE_USER_DATA: &str = "#cloud-config\nruncmd:\n  - corral join --token single-use-91f2\n";

/// The fake API and the real plugin loaded against it.
struct Setup {
    api: HetznerApi,
    host: ProviderHost,
    _dir: tempfile::TempDir,
}

fn setup() -> Option<Setup> {
    let built = built_plugins_dir("hetzner")?;
    let api = HetznerApi::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(built.join("hetzner.wasm"), dir.path().join("hetzner.wasm")).unwrap();
    let manifest = std::fs::read_to_string(built.join("hetzner.toml")).unwrap();
    let shipped = "hosts = [\"api.hetzner.cloud:443\"]";
    assert!(
        manifest.contains(shipped),
        "the shipped grant changed:\n{manifest}"
    );
    let granted = manifest.replace(shipped, &format!("hosts = [\"127.0.0.1:{}\"]", api.port()));
    std::fs::write(dir.path().join("hetzner.toml"), granted).unwrap();
    let (host, failures) = ProviderHost::load(dir.path(), &["hetzner".into()], None, None);
    assert!(failures.is_empty(), "{failures:?}");
    let details = host.details("hetzner").expect("loaded");
    assert_eq!(
        (details.info.provider.as_str(), details.info.hourly_billing),
        ("Hetzner Cloud", true)
    );
    Some(Setup {
        api,
        host,
        _dir: dir,
    })
}

impl Setup {
    fn pool(&self, token: &str) -> PoolRef {
        let template: BTreeMap<String, String> = [
            ("api_url", self.api.url()),
            ("server_type", "cx22".into()),
            ("image", "ubuntu-24.04".into()),
            ("location", "fsn1".into()),
            ("ssh_keys", r#"["ops"]"#.into()),
            ("labels.team", "ml".into()),
            ("action_poll_ms", "20".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        PoolRef {
            name: "gpu".into(),
            template,
            secret: Some(token.into()),
        }
    }

    async fn call(&self, pool: &PoolRef, call: ProviderCall) -> ProviderOutcome {
        let before = self.api.requests().len();
        let out = self.host.call("hetzner", pool, call.clone()).await;
        let sent = self.api.requests().len() - before;
        assert_eq!(
            out.http_requests as usize, sent,
            "{call:?}: the host counted {} requests, the API got {sent}",
            out.http_requests
        );
        out
    }

    async fn create(&self, pool: &PoolRef, node: &str) -> ProviderOutcome {
        let call = ProviderCall::Create {
            node: node.into(),
            user_data: NODE_USER_DATA.into(),
        };
        self.call(pool, call).await
    }
}

fn failed(out: &ProviderOutcome) -> &PluginError {
    match &out.result {
        Err(ProviderFailure::Failed(e)) => e,
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pools_server_is_created_listed_with_its_provider_state_and_deleted_through_the_real_plugin(
) {
    let Some(t) = setup() else {
        return;
    };
    let pool = t.pool(t.api.token());
    // Another pool's server and one made by hand: never listed as this pool's.
    t.api
        .add_server("cpu-1", &[("corral-pool", "cpu"), ("corral-node", "cpu-1")]);
    t.api.add_server("bastion", &[]);

    let mut ids = Vec::new();
    for node in ["gpu-1", "gpu-2", "gpu-3"] {
        let out = t.create(&pool, node).await;
        match out.result {
            Ok(ProviderReply::Created(id)) => ids.push(id),
            other => panic!("create {node}: {other:?}"),
        }
        // POST /servers, then one check of its action (the fake finishes it at once).
        assert_eq!(out.http_requests, 2);
    }
    let servers = t.api.servers();
    let made = servers.iter().find(|s| s.name == "gpu-2").unwrap();
    assert_eq!(made.id.to_string(), ids[1]);
    assert_eq!(
        (
            made.server_type.as_str(),
            made.image.as_str(),
            made.location.as_deref()
        ),
        ("cx22", "ubuntu-24.04", Some("fsn1"))
    );
    assert_eq!(made.user_data.as_deref(), Some(NODE_USER_DATA));
    assert_eq!(made.ssh_keys, serde_json::json!(["ops"]));
    assert_eq!(
        made.labels,
        [
            ("corral-node", "gpu-2"),
            ("corral-pool", "gpu"),
            ("team", "ml")
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect::<BTreeMap<_, _>>()
    );
    assert!(t.api.requests().iter().all(|r| r.authorized));

    // Create again (a retry after a lost answer): the same server, no second one.
    let again = t.create(&pool, "gpu-2").await;
    assert_eq!(again.result, Ok(ProviderReply::Created(ids[1].clone())));
    assert_eq!(
        t.api.servers().iter().filter(|s| s.name == "gpu-2").count(),
        1
    );

    // Pages of 2: the pool's three servers take two pages.
    let out = t.call(&pool, ProviderCall::List).await;
    assert_eq!(out.http_requests, 2, "two pages");
    let Ok(ProviderReply::Machines(mut machines)) = out.result else {
        panic!("list: {:?}", out.result);
    };
    machines.sort_by(|a, b| a.node.cmp(&b.node));
    let nodes: Vec<&str> = machines.iter().map(|m| m.node.as_str()).collect();
    assert_eq!(nodes, ["gpu-1", "gpu-2", "gpu-3"]);
    for m in &machines {
        assert_eq!(
            (m.state, m.native_state.as_str()),
            (MachineState::Running, "running")
        );
        let created = m.created_ms.expect("created");
        let server = t
            .api
            .servers()
            .into_iter()
            .find(|s| s.id.to_string() == m.id)
            .unwrap();
        assert_eq!(created, server.created_ms);
    }
    let query = t.api.requests().last().unwrap().query.clone();
    assert!(
        query.contains("label_selector=corral-pool%3Dgpu"),
        "{query}"
    );

    let out = t
        .call(&pool, ProviderCall::Status { id: ids[0].clone() })
        .await;
    match out.result {
        Ok(ProviderReply::Machine(Some(m))) => {
            assert_eq!((m.node.as_str(), m.state), ("gpu-1", MachineState::Running))
        }
        other => panic!("status: {other:?}"),
    }

    let out = t
        .call(&pool, ProviderCall::Delete { id: ids[0].clone() })
        .await;
    assert_eq!(out.result, Ok(ProviderReply::Deleted));
    assert_eq!(out.http_requests, 2, "DELETE, then one check of its action");
    assert!(t.api.servers().iter().all(|s| s.name != "gpu-1"));
    // Deleting again, and asking after it: gone is not an error.
    let out = t
        .call(&pool, ProviderCall::Delete { id: ids[0].clone() })
        .await;
    assert_eq!(out.result, Ok(ProviderReply::Deleted));
    let out = t
        .call(&pool, ProviderCall::Status { id: ids[0].clone() })
        .await;
    assert_eq!(out.result, Ok(ProviderReply::Machine(None)));
    let out = t.call(&pool, ProviderCall::List).await;
    let Ok(ProviderReply::Machines(left)) = out.result else {
        panic!("list: {:?}", out.result);
    };
    assert_eq!(left.len(), 2);
    assert_eq!(out.http_requests, 1, "two servers fit one page");
}

#[tokio::test(flavor = "multi_thread")]
async fn create_checks_a_running_action_again_until_it_finishes() {
    let Some(t) = setup() else {
        return;
    };
    t.api.set_action_running_polls(2);
    let out = t.create(&t.pool(t.api.token()), "gpu-7").await;
    assert!(
        matches!(out.result, Ok(ProviderReply::Created(_))),
        "{:?}",
        out.result
    );
    assert_eq!(
        out.http_requests, 4,
        "POST, two checks answered running, one success"
    );
    assert_eq!(t.api.servers()[0].status, "running");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_429_comes_back_as_rate_limited_with_the_wait_from_the_headers_not_as_a_failure() {
    let Some(t) = setup() else {
        return;
    };
    t.api.rate_limit_next(1, Duration::from_secs(30));
    let pool = t.pool(t.api.token());
    let out = t.call(&pool, ProviderCall::List).await;
    match &out.result {
        Err(ProviderFailure::RateLimited {
            retry_after,
            message,
        }) => {
            assert!(
                (Duration::from_secs(28)..=Duration::from_secs(31)).contains(retry_after),
                "{retry_after:?}"
            );
            assert!(
                message.contains("rate_limit_exceeded")
                    && message.contains("RateLimit-Remaining 0 of RateLimit-Limit 3600"),
                "{message}"
            );
        }
        other => panic!("expected rate limited, got {other:?}"),
    }
    assert_eq!(out.http_requests, 1);
    // The limit lifted, the same call answers.
    let out = t.call(&pool, ProviderCall::List).await;
    assert_eq!(out.result, Ok(ProviderReply::Machines(Vec::new())));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_create_action_is_an_error_naming_the_actions_error_and_leaves_no_server_behind() {
    let Some(t) = setup() else {
        return;
    };
    t.api.fail_next_create(
        "placement_error",
        "No server available in the requested location",
    );
    let out = t.create(&t.pool(t.api.token()), "gpu-4").await;
    let PluginError::Backend(m) = failed(&out) else {
        panic!("{:?}", out.result);
    };
    assert!(
        m.contains("create_server action")
            && m.contains("placement_error: No server available in the requested location")
            && m.contains("the half-made server was deleted"),
        "{m}"
    );
    assert_eq!(
        out.http_requests, 3,
        "POST, the check that saw the error, DELETE"
    );
    assert!(t.api.servers().is_empty(), "{:?}", t.api.servers());
    assert!(
        !m.contains("single-use-91f2"),
        "the user data stays out of messages: {m}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_5xx_is_a_backend_error_naming_the_status() {
    let Some(t) = setup() else {
        return;
    };
    t.api.fail_next(1, 503);
    let out = t.call(&t.pool(t.api.token()), ProviderCall::List).await;
    let PluginError::Backend(m) = failed(&out) else {
        panic!("{:?}", out.result);
    };
    assert!(
        m.contains("answered 503") && m.contains("service_error"),
        "{m}"
    );
    t.api.fail_next(1, 500);
    let out = t.create(&t.pool(t.api.token()), "gpu-5").await;
    assert!(
        matches!(failed(&out), PluginError::Backend(m) if m.contains("answered 500")),
        "{:?}",
        out.result
    );
    assert!(t.api.servers().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_token_is_refused_without_the_token_in_any_message() {
    let Some(t) = setup() else {
        return;
    };
    let wrong = "hcloud-wrong-token-5550123";
    let pool = t.pool(wrong);
    for call in [
        ProviderCall::List,
        ProviderCall::Create {
            node: "gpu-6".into(),
            user_data: NODE_USER_DATA.into(),
        },
        ProviderCall::Delete { id: "101".into() },
    ] {
        let out = t.call(&pool, call.clone()).await;
        let e = failed(&out);
        let PluginError::Denied(m) = e else {
            panic!("{call:?}: {e:?}");
        };
        assert!(m.contains("Hetzner refused pool gpu's API token"), "{m}");
        for shown in [
            m.clone(),
            e.to_string(),
            format!("{:?}", out.result),
            format!("{pool:?}"),
        ] {
            assert!(!shown.contains(wrong), "{shown}");
        }
    }
    assert!(t.api.servers().is_empty());
    // The token went in the Authorization header, each time.
    assert!(t.api.requests().iter().all(|r| r.authorized));
}
