//! The plugin host's sandbox, end to end, with the real `hostile` test plugin
//! (`tests/plugins/hostile`, built to a component by `cargo xtask plugins`) in the real
//! wasmtime host: an infinite loop, a memory bomb, a trap and an ungranted program each
//! fail their own call, and the next call and other plugins keep working; grants are
//! enforced at load and at call; manifests are checked; the compiled-component cache is
//! used, invalidated and repaired.
//!
//! The component is found in `$CORRAL_PLUGINS_DIR`, else `<target dir>/plugins`. Without
//! it these tests fail under `CI=true` and print `SKIPPED` otherwise.

use corral_test_support as support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use corral_proto::job::{JobSpec, PluginCall, PluginError, PluginReply};
use corral_sandbox::plugins::{ComponentSource, PluginHost, PluginsConfig};

/// The hostile component, or `None` (after printing why) when it is not built.
fn hostile_wasm() -> Option<PathBuf> {
    let dir = std::env::var_os("CORRAL_PLUGINS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
                .join("plugins")
        });
    let wasm = dir.join("hostile.wasm");
    if wasm.is_file() {
        return Some(wasm);
    }
    let why = format!(
        "{} is missing; build the plugins with `cargo xtask plugins`",
        wasm.display()
    );
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{why}");
    }
    eprintln!("SKIPPED: {why}");
    None
}

/// The shipped manifest's text, with `[grants]` programs/hosts, `[limits]` and extra
/// `[config]` lines chosen by the test.
struct ManifestText {
    name: String,
    programs: String,
    hosts: String,
    config: String,
    limits: String,
}

impl ManifestText {
    fn new(name: &str) -> ManifestText {
        ManifestText {
            name: name.into(),
            programs: r#"["echo", "sleep"]"#.into(),
            hosts: r#"["127.0.0.1:9"]"#.into(),
            config: if name == "hostile" {
                String::new()
            } else {
                format!("name = \"{name}\"\n")
            },
            limits: "memory_mb = 32\ncall_timeout = \"2s\"\nprogram_timeout = \"1s\"\n".into(),
        }
    }

    fn text(&self) -> String {
        format!(
            "[plugin]\nname = \"{}\"\n[grants]\nprograms = {}\nhosts = {}\n[config]\ngreeting = \"hello from the manifest\"\n{}[limits]\n{}",
            self.name, self.programs, self.hosts, self.config, self.limits
        )
    }
}

/// A plugins directory holding copies of the hostile component under chosen names.
struct Plugins {
    dir: tempfile::TempDir,
    wasm: PathBuf,
}

impl Plugins {
    fn new(wasm: PathBuf) -> Plugins {
        Plugins {
            dir: tempfile::tempdir().unwrap(),
            wasm,
        }
    }

    fn add(&self, m: &ManifestText) -> &Self {
        std::fs::copy(&self.wasm, self.dir.path().join(format!("{}.wasm", m.name))).unwrap();
        std::fs::write(self.dir.path().join(format!("{}.toml", m.name)), m.text()).unwrap();
        self
    }

    fn config(&self, enable: &[&str], cache_dir: Option<&Path>) -> PluginsConfig {
        support::runs_as_runner(PluginsConfig {
            dir: Some(self.dir.path().to_path_buf()),
            enable: enable.iter().map(|s| s.to_string()).collect(),
            cache_dir: cache_dir.map(Path::to_path_buf),
            ..PluginsConfig::default()
        })
    }

    fn load(&self, enable: &[&str]) -> PluginHost {
        let (host, failures) = PluginHost::load(&self.config(enable, None));
        assert!(failures.is_empty(), "{failures:?}");
        host
    }

    /// The load failure message of the single plugin `name`.
    fn load_failure(&self, name: &str) -> String {
        let (host, failures) = PluginHost::load(&self.config(&[name], None));
        assert!(host.loaded().is_empty());
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert_eq!(failures[0].name, name);
        failures[0].message.clone()
    }
}

fn submit(name: &str) -> PluginCall {
    submit_with(name, "", &[])
}

fn submit_with(name: &str, executable: &str, args: &[&str]) -> PluginCall {
    PluginCall::Submit(JobSpec {
        name: Some(name.into()),
        executable: executable.into(),
        arguments: args.iter().map(|s| s.to_string()).collect(),
        ..JobSpec::default()
    })
}

async fn healthy(host: &PluginHost, plugin: &str) {
    match host
        .call(plugin, PluginCall::Info, Some(support::runner()))
        .await
    {
        Ok(PluginReply::Info(info)) => assert_eq!(info.name, plugin),
        other => panic!("{plugin}.info after a failure: {other:?}"),
    }
    assert_eq!(
        host.call(plugin, submit("after"), Some(support::runner()))
            .await,
        Ok(PluginReply::Submitted("hostile-after".into()))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn node_state_reaches_the_export_and_a_plugin_without_it_says_unsupported() {
    let Some(wasm) = hostile_wasm() else { return };
    let plugins = Plugins::new(wasm);
    plugins.add(&ManifestText::new("hostile"));
    let host = plugins.load(&["hostile"]);
    // The hostile plugin declares no node admin: the SDK's default answers through the
    // host's `node-state` export, as an error value, not a trap.
    let r = host
        .call(
            "hostile",
            PluginCall::NodeState {
                node: "node01".into(),
            },
            None,
        )
        .await;
    assert_eq!(r, Err(PluginError::Unsupported("node-state".into())));
    healthy(&host, "hostile").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn each_hostile_call_fails_alone_and_the_next_call_and_other_plugins_work() {
    let Some(wasm) = hostile_wasm() else { return };
    let plugins = Plugins::new(wasm);
    plugins
        .add(&ManifestText::new("hostile"))
        .add(&ManifestText::new("bystander"));
    let host = plugins.load(&["hostile", "bystander"]);
    assert_eq!(host.loaded().len(), 2);

    // An infinite loop: stopped at its 2 s call timeout by the epoch deadline.
    let started = Instant::now();
    let err = host
        .call("hostile", submit("loop"), Some(support::runner()))
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(&err, PluginError::Timeout(m) if m.contains("call timeout of 2s") && m.contains("hostile.toml")),
        "{err:?}"
    );
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_millis(3500),
        "{took:?}"
    );
    healthy(&host, "hostile").await;
    healthy(&host, "bystander").await;

    // A memory bomb: stopped when it grows past 32 MiB.
    let err = host
        .call("hostile", submit("memory"), Some(support::runner()))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PluginError::Plugin(m) if m.contains("exceeded its memory limit of 32 MiB")),
        "{err:?}"
    );
    healthy(&host, "hostile").await;
    healthy(&host, "bystander").await;

    // A panic (abort, a wasm trap) and runaway recursion.
    for (behaviour, why) in [("trap", "a panic or abort in the plugin"), ("stack", "")] {
        let err = host
            .call("hostile", submit(behaviour), Some(support::runner()))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, PluginError::Plugin(m) if m.starts_with("hostile.submit trapped: ") && m.contains(why) && !m.contains('\n')),
            "{behaviour}: {err:?}"
        );
        healthy(&host, "hostile").await;
        healthy(&host, "bystander").await;
    }

    // A program not in the grant: the host answers `denied`, the plugin passes it on.
    let err = host
        .call("hostile", submit("ungranted"), Some(support::runner()))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PluginError::Denied(m) if m.contains("\"corral-hostile-not-granted\" is not granted to plugin hostile")),
        "{err:?}"
    );
    healthy(&host, "hostile").await;
    healthy(&host, "bystander").await;

    // Failures of one plugin run alongside the other's calls, each in its own task as
    // the agent makes them, without disturbing them or the runtime: the bystander's
    // calls and a timer all finish while the loop is still running.
    let looping = tokio::spawn({
        let host = host.clone();
        async move {
            let r = host
                .call("hostile", submit("loop"), Some(support::runner()))
                .await;
            (r, Instant::now())
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut answers = Vec::new();
    for _ in 0..20 {
        answers.push(
            host.call("bystander", submit("meanwhile"), Some(support::runner()))
                .await,
        );
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    let others_done = Instant::now();
    let (looping, loop_done) = looping.await.unwrap();
    assert!(
        matches!(looping, Err(PluginError::Timeout(_))),
        "{looping:?}"
    );
    assert!(answers
        .iter()
        .all(|a| a == &Ok(PluginReply::Submitted("hostile-meanwhile".into()))));
    assert!(
        others_done + Duration::from_millis(500) < loop_done,
        "the bystander's calls waited for the loop: done {:?} before it",
        loop_done.saturating_duration_since(others_done)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn granted_programs_run_by_argv_and_one_outliving_its_timeout_is_killed() {
    let Some(wasm) = hostile_wasm() else { return };
    let plugins = Plugins::new(wasm);
    plugins.add(&ManifestText::new("hostile"));
    let host = plugins.load(&["hostile"]);
    assert_eq!(
        host.call(
            "hostile",
            submit_with("run", "echo", &["$(id)", "a b"]),
            Some(support::runner())
        )
        .await,
        Ok(PluginReply::Submitted("$(id) a b\n".into()))
    );
    let started = Instant::now();
    let err = host
        .call(
            "hostile",
            submit_with("run", "sleep", &["30"]),
            Some(support::runner()),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PluginError::Timeout(m) if m.contains("ran past 1s and was killed")),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // The plugin reads its own config values.
    assert_eq!(
        host.call(
            "hostile",
            submit_with("config", "greeting", &[]),
            Some(support::runner())
        )
        .await,
        Ok(PluginReply::Submitted("hello from the manifest".into()))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_without_a_process_grant_fails_at_load_naming_the_interface() {
    let Some(wasm) = hostile_wasm() else { return };
    let plugins = Plugins::new(wasm);
    let mut m = ManifestText::new("hostile");
    m.programs = "[]".into();
    plugins.add(&m);
    let message = plugins.load_failure("hostile");
    assert!(message.contains("corral:scheduler/process"), "{message}");
    assert!(
        message.contains("hostile.toml grants no programs"),
        "{message}"
    );

    let mut m = ManifestText::new("hostile");
    m.hosts = "[]".into();
    plugins.add(&m);
    let message = plugins.load_failure("hostile");
    assert!(message.contains("corral:scheduler/http"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn manifest_errors_name_the_file_and_key_and_a_missing_program_is_a_warning() {
    let Some(wasm) = hostile_wasm() else { return };
    let plugins = Plugins::new(wasm);
    type Edit = Box<dyn Fn(&mut ManifestText)>;
    let cases: Vec<(Edit, &str)> = vec![
        (
            Box::new(|m| m.limits.push_str("memory_gb = 1\n")),
            "hostile.toml: key `limits.memory_gb`: unknown field `memory_gb`",
        ),
        (
            Box::new(|m| m.limits.push_str("output_max_bytes = 0\n")),
            "hostile.toml: key `limits.output_max_bytes`: 0 is out of range",
        ),
        (
            Box::new(|m| m.hosts = r#"["127.0.0.1"]"#.into()),
            "hostile.toml: key `grants.hosts[0]`",
        ),
        (
            Box::new(|m| m.name = "slurm".into()),
            "hostile.toml: key `plugin.name`: \"slurm\" does not match the plugin's file name \"hostile\"",
        ),
    ];
    for (change, expected) in cases {
        let mut m = ManifestText::new("hostile");
        change(&mut m);
        std::fs::copy(&plugins.wasm, plugins.dir.path().join("hostile.wasm")).unwrap();
        std::fs::write(plugins.dir.path().join("hostile.toml"), m.text()).unwrap();
        let message = plugins.load_failure("hostile");
        assert!(message.contains(expected), "want {expected:?} in {message}");
    }

    // info().name must agree with the manifest too: `bystander`'s config renames it.
    let mut m = ManifestText::new("hostile");
    m.config = "name = \"impostor\"\n".into();
    plugins.add(&m);
    let message = plugins.load_failure("hostile");
    assert!(message.contains("info().name is \"impostor\""), "{message}");

    // A granted program that is not installed: the plugin loads, says so, and denies it.
    let mut m = ManifestText::new("hostile");
    m.programs = r#"["echo", "sleep", "corral-no-such-program"]"#.into();
    plugins.add(&m);
    let host = plugins.load(&["hostile"]);
    let details = host.details();
    assert_eq!(details[0].warnings.len(), 1, "{:?}", details[0].warnings);
    assert!(
        details[0].warnings[0].contains(
            "hostile.toml: key `grants.programs[2]`: corral-no-such-program was not found"
        ),
        "{}",
        details[0].warnings[0]
    );
    let granted: Vec<&str> = details[0]
        .loaded
        .grants
        .programs
        .iter()
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(granted, ["echo", "sleep"]);
    let err = host
        .call(
            "hostile",
            submit_with("run", "corral-no-such-program", &[]),
            Some(support::runner()),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PluginError::Denied(m) if m.contains("granted but unavailable") && m.contains("not found")),
        "{err:?}"
    );
}

/// The single cache entry in `dir`.
fn cache_entry(dir: &Path) -> PathBuf {
    let entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    entries.into_iter().next().unwrap()
}

fn source_of(plugins: &Plugins, cache: &Path) -> ComponentSource {
    let (host, failures) = PluginHost::load(&plugins.config(&["hostile"], Some(cache)));
    assert!(failures.is_empty(), "{failures:?}");
    host.details()[0].source.clone()
}

#[test]
fn the_disk_cache_is_used_on_a_second_load_and_a_changed_component_recompiles() {
    let Some(wasm) = hostile_wasm() else { return };
    let plugins = Plugins::new(wasm);
    plugins.add(&ManifestText::new("hostile"));
    let cache = plugins.dir.path().join("cache");
    assert_eq!(source_of(&plugins, &cache), ComponentSource::Compiled);
    let first = cache_entry(&cache);
    assert_eq!(source_of(&plugins, &cache), ComponentSource::Cached);

    // Appending a custom section changes the component's digest, not its meaning.
    let path = plugins.dir.path().join("hostile.wasm");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(&[0, 6, 5, b'c', b'h', b'a', b'n', b'g']);
    std::fs::write(&path, bytes).unwrap();
    assert_eq!(source_of(&plugins, &cache), ComponentSource::Compiled);
    let second = cache_entry(&cache);
    assert_ne!(
        first, second,
        "the old entry is replaced, not kept beside the new one"
    );
    assert_eq!(source_of(&plugins, &cache), ComponentSource::Cached);
}

#[test]
fn a_corrupt_cache_entry_is_recompiled_and_replaced() {
    let Some(wasm) = hostile_wasm() else { return };
    let plugins = Plugins::new(wasm);
    plugins.add(&ManifestText::new("hostile"));
    let cache = plugins.dir.path().join("cache");
    assert_eq!(source_of(&plugins, &cache), ComponentSource::Compiled);
    let entry = cache_entry(&cache);
    let mut bytes = std::fs::read(&entry).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&entry, &bytes).unwrap();
    match source_of(&plugins, &cache) {
        ComponentSource::Recompiled(reason) => assert!(reason.contains("checksum"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(source_of(&plugins, &cache), ComponentSource::Cached);
    // A truncated entry too.
    std::fs::write(&entry, &bytes[..10]).unwrap();
    assert!(matches!(
        source_of(&plugins, &cache),
        ComponentSource::Recompiled(_)
    ));
}

/// A one-shot-per-connection HTTP server on loopback answering `200 hello`.
fn http_server() -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
            );
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread")]
async fn http_reaches_a_granted_loopback_host_and_nothing_else() {
    let Some(wasm) = hostile_wasm() else { return };
    let port = http_server();
    let other = http_server();
    let plugins = Plugins::new(wasm);
    let mut m = ManifestText::new("hostile");
    m.hosts = format!(r#"["127.0.0.1:{port}"]"#);
    plugins.add(&m);
    let host = plugins.load(&["hostile"]);
    assert_eq!(
        host.call(
            "hostile",
            submit_with("http", &format!("http://127.0.0.1:{port}/x"), &[]),
            Some(support::runner())
        )
        .await,
        Ok(PluginReply::Submitted("200 hello".into()))
    );
    for (url, why) in [
        (format!("http://127.0.0.1:{other}/"), "is not granted"),
        (format!("http://localhost:{port}/"), "is not granted"),
        (
            format!("http://127.0.0.1:{port}@127.0.0.2:{other}/"),
            "user info",
        ),
    ] {
        let err = host
            .call(
                "hostile",
                submit_with("http", &url, &[]),
                Some(support::runner()),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&err, PluginError::Denied(m) if m.contains(why)),
            "{url}: {err:?}"
        );
    }
}

#[test]
fn check_file_validates_a_component_against_its_manifest() {
    let Some(wasm) = hostile_wasm() else { return };
    let plugins = Plugins::new(wasm);
    plugins.add(&ManifestText::new("hostile"));
    let path = plugins.dir.path().join("hostile.wasm");
    let loaded = corral_sandbox::plugins::check_file(&path, None).unwrap();
    assert_eq!(loaded.info.name, "hostile");
    assert_eq!(loaded.grants.hosts, ["127.0.0.1:9"]);
    assert_eq!(loaded.digest.len(), 64);
    let mut m = ManifestText::new("hostile");
    m.programs = "[]".into();
    let other = plugins.dir.path().join("other.toml");
    std::fs::write(&other, m.text()).unwrap();
    let err = corral_sandbox::plugins::check_file(&path, Some(&other)).unwrap_err();
    assert!(
        format!("{err:#}").contains("corral:scheduler/process"),
        "{err:#}"
    );
}
