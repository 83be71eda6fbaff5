//! What a plugin author does, end to end, with the real `corral` binary: scaffold a plugin
//! (`corral plugin new`), build it the way `cargo xtask plugins` builds every plugin,
//! check it (`corral plugin check --strict`), run it through the real host against fake
//! scheduler programs, and load it in `corral dev`. Also: the guide's example manifest
//! is the shipped one and passes check, every load warning is printed, and every plugin
//! folder is in the guide.
//!
//! The scaffolds go into a temporary folder outside the workspace, so they never join
//! it (a crate in `plugins/` would, and would change `Cargo.lock` under `--locked`); the
//! build reuses the shared `<target dir>/wasm`, so only the new crate itself compiles.
//! Without a wasm toolchain or the built plugins: a failure under `CI=true`, `SKIPPED`
//! elsewhere.

use corral_test_support as support;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use corral_proto::job::{JobSpec, JobState, PluginCall, PluginReply};
use corral_sandbox::plugins::Manifest;
use support::fake_programs::Fakes;
use support::slurm::{built_plugins_dir, ci, skip};
use support::{corral, stderr, stdout};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the agent crate is inside the workspace")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("running a command")
}

/// `corral ARGS` with `PATH` set to `path`.
fn corral_on(path: &std::ffi::OsStr, args: &[&str]) -> Output {
    run(corral().env("PATH", path).args(args))
}

fn assert_ok(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what} failed ({}):\n{}\n{}",
        o.status,
        stdout(o),
        stderr(o)
    );
}

/// Builds the plugin crates in `crates` into `out` with `cargo xtask plugins --crate`,
/// or says why it cannot (`None`: skipped).
fn xtask_build(crates: &[&Path], out: &Path) -> Option<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace()).args(["xtask", "plugins"]);
    for c in crates {
        cmd.arg("--crate").arg(c);
    }
    let started = Instant::now();
    let o = run(cmd.arg("--out").arg(out));
    let text = format!("{}{}", stdout(&o), stderr(&o));
    if !o.status.success() && text.contains("no toolchain can build") && !ci() {
        return skip(&format!("no wasm toolchain to build plugins with: {text}"));
    }
    assert!(
        o.status.success(),
        "cargo xtask plugins --crate failed:\n{text}"
    );
    println!(
        "built {} scaffolded crates in {:?}",
        crates.len(),
        started.elapsed()
    );
    Some(())
}

fn scaffold(t: &Path, name: &str, kind: &str) -> PathBuf {
    let dir = t.join(name);
    let o = run(corral()
        .current_dir(workspace())
        .args(["plugin", "new", name, "--kind", kind, "--dir"])
        .arg(&dir));
    assert_ok(&o, &format!("corral plugin new {name} --kind {kind}"));
    assert!(
        stdout(&o).contains("It is a workspace of its own"),
        "{}",
        stdout(&o)
    );
    dir
}

#[tokio::test]
async fn a_scaffolded_plugin_of_each_kind_builds_passes_check_strict_and_runs_through_the_host() {
    let t = tempfile::tempdir().unwrap();
    let batch = scaffold(t.path(), "mysched", "batch");
    let http = scaffold(t.path(), "myapi", "http");
    // The scaffold never overwrites.
    let again = run(corral()
        .current_dir(workspace())
        .args(["plugin", "new", "mysched", "--dir"])
        .arg(&batch));
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("already exists and is not empty"),
        "{}",
        stderr(&again)
    );

    let out = t.path().join("out");
    if xtask_build(&[&batch, &http], &out).is_none() {
        return;
    }
    let wasm = |name: &str| out.join(format!("{name}.wasm")).display().to_string();

    // The http plugin grants only an IP literal and writes every limit: no warning.
    let o = corral_on(
        &std::env::var_os("PATH").unwrap(),
        &["plugin", "check", "--strict", &wasm("myapi")],
    );
    assert_ok(&o, "corral plugin check --strict myapi.wasm");
    assert!(stdout(&o).contains("myapi.wasm: ok\n"), "{}", stdout(&o));
    assert!(stdout(&o).contains("  warnings:  none\n"), "{}", stdout(&o));

    // The batch plugin's programs are placeholders: without them, check warns about
    // each and --strict fails; with fakes first on PATH it passes --strict.
    let empty = tempfile::tempdir().unwrap();
    let o = corral_on(
        empty.path().as_os_str(),
        &["plugin", "check", &wasm("mysched")],
    );
    assert_ok(&o, "corral plugin check mysched.wasm");
    for program in [
        "mysched-submit",
        "mysched-queue",
        "mysched-history",
        "mysched-cancel",
    ] {
        assert!(
            stdout(&o).contains(&format!("{program} was not found")),
            "{}",
            stdout(&o)
        );
    }
    let o = corral_on(
        empty.path().as_os_str(),
        &["plugin", "check", "--strict", &wasm("mysched")],
    );
    assert!(!o.status.success(), "--strict must fail:\n{}", stdout(&o));
    assert!(
        stderr(&o).contains("4 load warnings with --strict"),
        "{}",
        stderr(&o)
    );
    let fakes = Fakes::new();
    fakes.install(&[
        "mysched-submit",
        "mysched-queue",
        "mysched-history",
        "mysched-cancel",
    ]);
    let o = corral_on(
        &fakes.env_path(),
        &["plugin", "check", "--strict", &wasm("mysched")],
    );
    assert_ok(
        &o,
        "corral plugin check --strict mysched.wasm (fakes on PATH)",
    );
    assert!(stdout(&o).contains("  warnings:  none\n"), "{}", stdout(&o));

    // End to end through the real host, the fakes scripted from the scaffold's fixtures.
    let fixture = |f: &str| std::fs::read_to_string(batch.join("fixtures").join(f)).unwrap();
    fakes
        .ok("mysched-submit", &fixture("submit.txt"))
        .ok("mysched-queue", &fixture("queue.json"))
        .ok("mysched-history", &fixture("history.json"))
        .fail("mysched-cancel", 1, &fixture("cancel-finished.stderr"));
    let host = fakes.host(&out, "mysched");
    let spec = JobSpec {
        name: Some("it's".into()),
        executable: "/bin/echo".into(),
        arguments: vec!["$(id)".into()],
        ..JobSpec::default()
    };
    let id = match host
        .call("mysched", PluginCall::Submit(spec), Some(support::runner()))
        .await
    {
        Ok(PluginReply::Submitted(id)) => id,
        other => panic!("submit: {other:?}"),
    };
    assert_eq!(id, "42");
    let sub = &fakes.calls("mysched-submit")[0];
    assert_eq!(sub.args, ["--name", "it's"]);
    assert!(
        sub.stdin_text().ends_with("exec '/bin/echo' '$(id)'\n"),
        "{}",
        sub.stdin_text()
    );
    let ids = vec!["41".to_string(), "44".into(), "99".into()];
    let got = match host
        .call("mysched", PluginCall::Status(ids), Some(support::runner()))
        .await
    {
        Ok(PluginReply::Statuses(v)) => v,
        other => panic!("status: {other:?}"),
    };
    let states: Vec<JobState> = got.iter().map(|s| s.state.clone()).collect();
    assert_eq!(
        states,
        [JobState::Running, JobState::Succeeded, JobState::Unknown]
    );
    let done = host
        .call(
            "mysched",
            PluginCall::Cancel("44".into()),
            Some(support::runner()),
        )
        .await;
    assert_eq!(done, Ok(PluginReply::Done));
    fakes.assert_done();
}

/// The ```toml block that follows the line naming `plugins/example/example.toml` in
/// plugins/README.md.
fn guide_example_manifest(guide: &str) -> String {
    let after = guide
        .split_once("`plugins/example/example.toml`")
        .expect("the guide shows plugins/example/example.toml")
        .1;
    let block = after
        .split_once("```toml\n")
        .expect("a ```toml block follows")
        .1;
    block
        .split_once("```")
        .expect("the block ends")
        .0
        .to_string()
}

#[test]
fn the_guides_example_manifest_is_the_shipped_one_and_passes_check() {
    let guide = std::fs::read_to_string(workspace().join("plugins/README.md")).unwrap();
    let text = guide_example_manifest(&guide);
    let shipped = workspace().join("plugins/example/example.toml");
    let shown = Manifest::parse(&text, Path::new("plugins/README.md")).unwrap();
    let real = Manifest::load(&shipped).unwrap();
    assert_eq!(
        (
            &shown.name,
            &shown.programs,
            &shown.hosts,
            &shown.config,
            &shown.limits
        ),
        (
            &real.name,
            &real.programs,
            &real.hosts,
            &real.config,
            &real.limits
        ),
        "the guide's example manifest differs from {}",
        shipped.display()
    );
    let Some(dir) = built_plugins_dir("example") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    std::fs::copy(dir.join("example.wasm"), t.path().join("example.wasm")).unwrap();
    std::fs::write(t.path().join("example.toml"), &text).unwrap();
    let wasm = t.path().join("example.wasm");
    let o = run(corral().args(["plugin", "check"]).arg(&wasm));
    assert_ok(&o, "corral plugin check on the guide's example");
    assert!(
        stdout(&o).contains("plugin:    example 0.1.0 (POSIX at)"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn plugin_check_prints_every_load_warning_and_strict_fails_on_them() {
    let Some(dir) = built_plugins_dir("example") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    std::fs::copy(dir.join("example.wasm"), t.path().join("example.wasm")).unwrap();
    std::fs::write(
        t.path().join("example.toml"),
        "[plugin]\nname = \"example\"\n[grants]\nprograms = [\"at\", \"atq\", \"/nonexistent/atrm\"]\nhosts = [\"no-such-head.invalid:8265\"]\n[limits]\ncall_timeout = \"10s\"\nprogram_timeout = \"5s\"\n",
    )
    .unwrap();
    let wasm = t.path().join("example.wasm").display().to_string();
    let empty = tempfile::tempdir().unwrap();
    let path = empty.path().as_os_str();

    let o = corral_on(path, &["plugin", "check", &wasm]);
    assert_ok(&o, "corral plugin check (warnings only)");
    let text = stdout(&o);
    for key in [
        "grants.programs[0]`: at was not found on the agent's PATH",
        "grants.programs[1]`: atq was not found",
        "grants.programs[2]`: /nonexistent/atrm is not an executable file",
        "grants.hosts[0]`: no-such-head.invalid:8265 does not resolve",
        "limits.memory_mb`: not set, so the default 64 applies",
        "limits.output_max_bytes`: not set",
        "limits.concurrent_calls`: not set, so the default 4 applies",
    ] {
        assert!(text.contains(key), "missing {key:?} in:\n{text}");
    }
    assert_eq!(text.matches("\n  warning:   ").count(), 7, "{text}");

    let o = corral_on(path, &["plugin", "check", "--strict", &wasm]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("7 load warnings with --strict"),
        "{}",
        stderr(&o)
    );

    let o = corral_on(path, &["plugin", "check", "--json", &wasm]);
    assert_ok(&o, "corral plugin check --json");
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["warnings"].as_array().map(Vec::len), Some(7), "{v}");
    assert_eq!(v["info"]["name"], "example", "{v}");
}

/// Every folder under plugins/ with a manifest named like it (the test for "a plugin").
fn plugin_folders() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(workspace().join("plugins"))
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().to_string_lossy().into_owned();
            e.path()
                .join(format!("{name}.toml"))
                .is_file()
                .then_some(name)
        })
        .collect();
    names.sort();
    names
}

#[test]
fn every_plugin_folder_is_in_the_guides_table() {
    let guide = std::fs::read_to_string(workspace().join("plugins/README.md")).unwrap();
    let folders = plugin_folders();
    assert!(folders.contains(&"slurm".to_string()), "{folders:?}");
    assert!(!folders.contains(&"sdk".to_string()));
    for name in folders {
        assert!(
            guide.contains(&format!("\n| `{name}/` |")),
            "plugins/{name} is not in plugins/README.md's table of plugins"
        );
    }
}

#[test]
fn corral_dev_loads_every_plugin_in_a_folder_and_says_which() {
    let (Some(example), Some(htcondor)) =
        (built_plugins_dir("example"), built_plugins_dir("htcondor"))
    else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let plugins = t.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    for (dir, name) in [(&example, "example"), (&htcondor, "htcondor")] {
        for ext in ["wasm", "toml"] {
            let file = format!("{name}.{ext}");
            std::fs::copy(dir.join(&file), plugins.join(&file)).unwrap();
        }
    }
    // `at` and friends are fakes first on PATH; HTCondor's programs are nowhere.
    let fakes = Fakes::new();
    fakes.install(&["at", "atq", "atrm"]);
    let mut child = corral()
        .env("PATH", fakes.env_path())
        .env_remove("CORRAL_PLUGINS_DIR")
        .args([
            "dev",
            "--quic-port",
            "0",
            "--api-port",
            "0",
            "--name",
            "devnode",
            "--state-dir",
        ])
        .arg(t.path().join("state"))
        .arg("--plugins")
        .arg(&plugins)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut seen = Vec::new();
    let mut lines_after_loaded = None;
    while Instant::now() < deadline {
        let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        if line.starts_with("plugins loaded:") {
            lines_after_loaded = Some(0);
        } else if let Some(n) = lines_after_loaded.as_mut() {
            *n += 1;
        }
        seen.push(line);
        if lines_after_loaded == Some(2) {
            break;
        }
    }
    support::signal(&child, libc::SIGTERM);
    let _ = support::wait_timeout(&mut child, Duration::from_secs(20));
    let text = seen.join("\n");
    assert!(
        text.contains(&format!(
            "  plugins:     {} (example, htcondor)",
            plugins.display()
        )),
        "{text}"
    );
    assert!(text.contains("plugins loaded: 2 of 2"), "{text}");
    assert!(text.contains("\n  example 0.1.0 (POSIX at)\n"), "{text}");
    assert!(
        text.contains("htcondor 0.1.0 (HTCondor); not on PATH, so denied: condor_submit, condor_q, condor_history, condor_rm"),
        "{text}"
    );
    assert!(
        text.contains("corral submit --scheduler example --dry-run"),
        "{text}"
    );
}

/// The SDK items `src` names through `corral_plugin_sdk::` paths (the last segment of
/// each path, each member of a `{...}` group; re-exported crates by their own name).
fn sdk_items(src: &str) -> Vec<String> {
    let mut items = Vec::new();
    for (i, _) in src.match_indices("corral_plugin_sdk::") {
        let rest = &src[i + "corral_plugin_sdk::".len()..];
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        let path: Vec<&str> = rest[..end].split("::").filter(|s| !s.is_empty()).collect();
        if let Some(first) = path.first().filter(|f| ["serde", "serde_json"].contains(f)) {
            items.push(first.to_string());
            continue;
        }
        if rest[end..].starts_with('{') {
            let group = &rest[end + 1..rest[end..].find('}').map_or(rest.len(), |j| end + j)];
            for member in group.split(',') {
                let leaf = member.trim().rsplit("::").next().unwrap_or("").trim();
                match leaf {
                    "" => {}
                    "self" => items.extend(path.last().map(|m| m.to_string())),
                    l => items.push(l.to_string()),
                }
            }
        } else if let Some(last) = path.last() {
            items.push(last.to_string());
        }
    }
    items.sort();
    items.dedup();
    items
}

/// Whether `word` occurs in `text` as a whole identifier.
fn mentions(text: &str, word: &str) -> bool {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    text.match_indices(word).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        !before.is_some_and(ident) && !after.is_some_and(ident)
    })
}

#[test]
fn the_guide_documents_every_sdk_item_the_example_and_the_scaffolds_use() {
    let guide = std::fs::read_to_string(workspace().join("plugins/README.md")).unwrap();
    let sources = [
        "plugins/example/src/lib.rs",
        "agent/templates/plugin/batch/lib.rs",
        "agent/templates/plugin/batch/tests.rs",
        "agent/templates/plugin/http/lib.rs",
        "agent/templates/plugin/http/tests.rs",
    ];
    let mut undocumented = Vec::new();
    for rel in sources {
        let src = std::fs::read_to_string(workspace().join(rel)).unwrap();
        let items = sdk_items(&src);
        assert!(
            !items.is_empty(),
            "{rel}: no corral_plugin_sdk:: path found"
        );
        for item in items {
            if !mentions(&guide, &item) {
                undocumented.push(format!("{item} ({rel})"));
            }
        }
    }
    assert!(
        undocumented.is_empty(),
        "plugins/README.md does not mention these SDK items: {}",
        undocumented.join(", ")
    );
}
