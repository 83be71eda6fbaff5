//! The `cml` provider plugin, built for wasm by `cargo xtask plugins`, loaded by the
//! coordinator's provider host (`ProviderHost`) and driving a stand-in for the Cloudera
//! AI (CML) API v2 on loopback (`tests/support/cml_api.rs`: a harness server, NOT the real
//! service). Each test copies the built `cml.wasm` and `cml.toml` to a temporary
//! directory and rewrites the manifest's `[grants] hosts` to grant exactly the stand-in's
//! `127.0.0.1:PORT`. Without the built plugin: a failure under CI=true, "SKIPPED"
//! elsewhere.

use corral_test_support as support;

use std::collections::BTreeMap;
use std::time::Duration;

use corral_proto::job::PluginError;
use corral_proto::pool::{Machine, MachineState};
use corral_sandbox::plugins::provider::{
    PoolRef, ProviderCall, ProviderFailure, ProviderHost, ProviderReply,
};
use support::cml_api::CmlApi;
use support::slurm::built_plugins_dir;

/// The provider host with the built plugin, granted only `api`'s port.
fn host_for(api: &CmlApi) -> Option<(ProviderHost, tempfile::TempDir)> {
    let built = built_plugins_dir("cml")?;
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(built.join("cml.wasm"), dir.path().join("cml.wasm")).unwrap();
    let manifest = std::fs::read_to_string(built.join("cml.toml")).unwrap();
    let grant = format!("hosts = [\"127.0.0.1:{}\"]", api.port());
    let rewritten: Vec<String> = manifest
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("hosts =") {
                grant.clone()
            } else {
                l.to_string()
            }
        })
        .collect();
    assert!(
        rewritten.contains(&grant),
        "cml.toml has no hosts line:\n{manifest}"
    );
    std::fs::write(dir.path().join("cml.toml"), rewritten.join("\n") + "\n").unwrap();
    let (host, failures) = ProviderHost::load(dir.path(), &["cml".into()], None, None);
    assert!(
        failures.is_empty(),
        "the cml plugin did not load: {failures:?}"
    );
    let info = &host.details("cml").unwrap().info;
    assert_eq!(
        (info.provider.as_str(), info.hourly_billing),
        ("Cloudera AI (CML)", false)
    );
    Some((host, dir))
}

fn pool_with(api: &CmlApi, name: &str, key: &str) -> PoolRef {
    let template: BTreeMap<String, String> = [
        ("api_url", api.url()),
        ("project_id", api.project_id()),
        ("script", "corral-agent.py".into()),
        ("cpu", "2".into()),
        ("memory", "8".into()),
        ("env.RAY_DEDUP_LOGS", "0".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    PoolRef {
        name: name.into(),
        template,
        secret: Some(key.into()),
    }
}

fn pool(api: &CmlApi) -> PoolRef {
    pool_with(api, "cml-gpu", &api.api_key())
}

async fn call(
    host: &ProviderHost,
    pool: &PoolRef,
    c: ProviderCall,
) -> Result<ProviderReply, ProviderFailure> {
    host.call("cml", pool, c).await.result
}

async fn create(host: &ProviderHost, pool: &PoolRef, node: &str, user_data: &str) -> String {
    let c = ProviderCall::Create {
        node: node.into(),
        user_data: user_data.into(),
    };
    match call(host, pool, c).await {
        Ok(ProviderReply::Created(id)) => id,
        other => panic!("create {node}: {other:?}"),
    }
}

async fn list(host: &ProviderHost, pool: &PoolRef) -> Vec<Machine> {
    match call(host, pool, ProviderCall::List).await {
        Ok(ProviderReply::Machines(mut m)) => {
            m.sort_by(|a, b| a.node.cmp(&b.node));
            m
        }
        other => panic!("list: {other:?}"),
    }
}

async fn status(host: &ProviderHost, pool: &PoolRef, id: &str) -> Option<Machine> {
    match call(host, pool, ProviderCall::Status { id: id.into() }).await {
        Ok(ProviderReply::Machine(m)) => m,
        other => panic!("status {id}: {other:?}"),
    }
}

async fn delete(host: &ProviderHost, pool: &PoolRef, id: &str) {
    match call(host, pool, ProviderCall::Delete { id: id.into() }).await {
        Ok(ProviderReply::Deleted) => {}
        other => panic!("delete {id}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_per_node_is_created_with_the_user_data_listed_with_its_state_and_deleted() {
    let api = CmlApi::start();
    let Some((host, _dir)) = host_for(&api) else {
        return;
    };
    let p = pool(&api);
    // A pool whose marker the first one's contains: the API's substring filter returns
    // both, and the plugin keeps only its own.
    let other = pool_with(&api, "cml-gpu-b", &api.api_key());
    let ud = |n: u32| format!("#!/bin/sh\n# join {n}\nexec corral agent --join 'tok-{n}' \"$@\"\n");
    let id1 = create(&host, &p, "cml-gpu-1", &ud(1)).await;
    let id2 = create(&host, &p, "cml-gpu-2", &ud(2)).await;
    let id3 = create(&host, &p, "cml-gpu-3", &ud(3)).await;
    let foreign = create(&host, &other, "cml-gpu-b-1", &ud(9)).await;
    assert_eq!(
        std::collections::HashSet::from([&id1, &id2, &id3, &foreign]).len(),
        4
    );

    let apps = api.applications();
    assert_eq!(apps.len(), 4);
    let a1 = apps.iter().find(|a| a.id == id1).unwrap();
    assert_eq!(a1.name, "cml-gpu-1");
    assert_eq!(a1.description, "corral pool cml-gpu");
    assert_eq!(a1.script, "corral-agent.py");
    assert!(
        a1.subdomain.starts_with("corral-cml-gpu-1-"),
        "{}",
        a1.subdomain
    );
    assert_eq!(a1.user_data().as_deref(), Some(ud(1).as_str()));
    assert_eq!(a1.environment["CORRAL_NODE"], "cml-gpu-1");
    assert_eq!(a1.environment["CORRAL_POOL"], "cml-gpu");
    assert_eq!(a1.environment["RAY_DEDUP_LOGS"], "0");
    assert_eq!(a1.request["cpu"], serde_json::json!(2.0));
    assert_eq!(a1.request["memory"], serde_json::json!(8.0));

    // Three of this pool's applications at two a page: the listing follows the token.
    let before = api.count("GET", "/applications");
    let first = list(&host, &p).await;
    assert_eq!(api.count("GET", "/applications") - before, 2);
    let seen: Vec<(&str, &str, MachineState)> = first
        .iter()
        .map(|m| (m.node.as_str(), m.id.as_str(), m.state))
        .collect();
    assert_eq!(
        seen,
        [
            ("cml-gpu-1", id1.as_str(), MachineState::Pending),
            ("cml-gpu-2", id2.as_str(), MachineState::Pending),
            ("cml-gpu-3", id3.as_str(), MachineState::Pending),
        ]
    );
    assert_eq!(first[0].native_state, "APPLICATION_STARTING");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    for m in &first {
        let created = m.created_ms.expect("created_ms from created_at");
        assert!(created <= now_ms && now_ms - created < 600_000, "{m:?}");
    }
    let again = list(&host, &p).await;
    assert!(
        again.iter().all(|m| m.state == MachineState::Running),
        "{again:?}"
    );
    assert_eq!(again[0].native_state, "APPLICATION_RUNNING");

    let s = status(&host, &p, &id2).await.expect("cml-gpu-2 exists");
    assert_eq!(
        (s.node.as_str(), s.state),
        ("cml-gpu-2", MachineState::Running)
    );

    api.set_status(&id3, "APPLICATION_FAILED");
    let s = status(&host, &p, &id3).await.unwrap();
    assert_eq!(
        (s.state, s.native_state.as_str()),
        (MachineState::Failed, "APPLICATION_FAILED")
    );

    for id in [&id1, &id2, &id3] {
        delete(&host, &p, id).await;
    }
    assert_eq!(api.count("DELETE", &format!("/applications/{id1}")), 1);
    assert_eq!(status(&host, &p, &id1).await, None);
    assert_eq!(list(&host, &p).await, Vec::new());
    // Deleting what is gone is not an error.
    delete(&host, &p, &id1).await;
    let left: Vec<String> = api.applications().into_iter().map(|a| a.id).collect();
    assert_eq!(left, std::slice::from_ref(&foreign));
    assert_eq!(list(&host, &other).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_create_does_not_make_a_second_application() {
    let api = CmlApi::start();
    let Some((host, _dir)) = host_for(&api) else {
        return;
    };
    let p = pool(&api);
    let id = create(&host, &p, "cml-gpu-1", "#!/bin/sh\n").await;
    assert_eq!(create(&host, &p, "cml-gpu-1", "#!/bin/sh\n").await, id);
    assert_eq!(api.applications().len(), 1);
    assert_eq!(api.count("POST", "/applications"), 1);

    // The create is done but its answer is lost: the failed call is retried, and the
    // retry finds the application instead of making another.
    api.lose_next_create_answer();
    let lost = call(
        &host,
        &p,
        ProviderCall::Create {
            node: "cml-gpu-2".into(),
            user_data: "#!/bin/sh\n".into(),
        },
    )
    .await;
    match lost {
        Err(ProviderFailure::Failed(PluginError::Backend(m))) => {
            assert!(m.contains("504"), "{m}")
        }
        other => panic!("a lost create answer: {other:?}"),
    }
    assert_eq!(api.applications().len(), 2);
    let retried = create(&host, &p, "cml-gpu-2", "#!/bin/sh\n").await;
    assert_eq!(retried, api.applications()[1].id);
    assert_eq!(api.applications().len(), 2);
    assert_eq!(api.count("POST", "/applications"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_is_rate_limited_with_the_retry_after_wait_not_a_failure() {
    let api = CmlApi::start();
    let Some((host, _dir)) = host_for(&api) else {
        return;
    };
    let p = pool(&api);
    api.rate_limit_next(1, Some(12));
    match call(&host, &p, ProviderCall::List).await {
        Err(ProviderFailure::RateLimited {
            retry_after,
            message,
        }) => {
            assert_eq!(retry_after, Duration::from_secs(12));
            assert!(
                message.contains("429") && message.contains("rate limit"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    // The limit lifted, the same call succeeds.
    assert_eq!(list(&host, &p).await, Vec::new());

    api.rate_limit_next(1, None);
    let c = ProviderCall::Create {
        node: "cml-gpu-1".into(),
        user_data: "#!/bin/sh\n".into(),
    };
    match call(&host, &p, c).await {
        Err(ProviderFailure::RateLimited { retry_after, .. }) => {
            assert_eq!(retry_after, Duration::from_secs(30))
        }
        other => panic!("{other:?}"),
    }
    assert!(api.applications().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_is_a_backend_error_naming_the_status() {
    let api = CmlApi::start();
    let Some((host, _dir)) = host_for(&api) else {
        return;
    };
    let p = pool(&api);
    api.fail_next(1, 503);
    match call(&host, &p, ProviderCall::List).await {
        Err(ProviderFailure::Failed(PluginError::Backend(m))) => {
            assert!(m.contains("503 Service Unavailable"), "{m}");
            assert!(m.contains("the service is unavailable"), "{m}");
        }
        other => panic!("{other:?}"),
    }
    api.fail_next(1, 500);
    match call(
        &host,
        &p,
        ProviderCall::Delete {
            id: "app0001-x".into(),
        },
    )
    .await
    {
        Err(ProviderFailure::Failed(PluginError::Backend(m))) => {
            assert!(m.contains("DELETE") && m.contains("500"), "{m}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_key_never_appears_in_a_message() {
    let api = CmlApi::start();
    let Some((host, _dir)) = host_for(&api) else {
        return;
    };
    let wrong = "corral-wrong-key-5d41402abc4b2a76";
    let p = pool_with(&api, "cml-gpu", wrong);
    let calls = [
        ProviderCall::List,
        ProviderCall::Status {
            id: "app0001-x".into(),
        },
        ProviderCall::Create {
            node: "cml-gpu-1".into(),
            user_data: "#!/bin/sh\n".into(),
        },
    ];
    for c in calls {
        let export = c.export();
        let outcome = host.call("cml", &p, c).await;
        let shown = format!(
            "{:?} {}",
            outcome.result,
            outcome
                .result
                .as_ref()
                .err()
                .map(ToString::to_string)
                .unwrap_or_default()
        );
        assert!(!shown.contains(wrong), "{export}: {shown}");
        match outcome.result {
            Err(ProviderFailure::Failed(PluginError::Denied(m))) => {
                assert!(
                    m.contains("refused the API key") && m.contains("401"),
                    "{export}: {m}"
                );
                // The stand-in echoes the token it was sent; the plugin hides it.
                assert!(m.contains("[secret]"), "{export}: {m}");
            }
            other => panic!("{export}: {other:?}"),
        }
    }
    assert!(api.applications().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_cml_rejects_is_a_backend_error_quoting_it() {
    let api = CmlApi::start();
    let Some((host, _dir)) = host_for(&api) else {
        return;
    };
    let p = pool(&api);
    api.fail_next_create(
        400,
        serde_json::json!({"code": 3, "message": "runtime ml-runtime-nope is not available", "details": []}),
    );
    let c = ProviderCall::Create {
        node: "cml-gpu-1".into(),
        user_data: "#!/bin/sh\n".into(),
    };
    match call(&host, &p, c).await {
        Err(ProviderFailure::Failed(PluginError::Backend(m))) => {
            assert!(
                m.contains("400 Bad Request: runtime ml-runtime-nope is not available"),
                "{m}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(api.applications().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_application_cml_will_not_delete_is_stopped_then_deleted() {
    let api = CmlApi::start();
    let Some((host, _dir)) = host_for(&api) else {
        return;
    };
    let p = pool(&api);
    api.require_stop_before_delete(true);
    let id = create(&host, &p, "cml-gpu-1", "#!/bin/sh\n").await;
    delete(&host, &p, &id).await;
    assert!(api.applications().is_empty());
    assert_eq!(api.count("POST", &format!("/applications/{id}:stop")), 1);
    assert_eq!(api.count("DELETE", &format!("/applications/{id}")), 2);
}
