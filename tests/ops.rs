//! Operations: what `packaging/` ships against the real binary.
//!
//! - The alert rules and the dashboard use only metric names corral exports: checked
//!   against a live `/metrics` of a real coordinator with real agents (scripted fake GPUs,
//!   since CI has none; a Ray section whose venv is missing, so the node reports a failed
//!   Ray; an enabled plugin that is not there; an agent with another CA's certificate),
//!   and against `METRIC_NAMES`. Job and plugin-call families need a scheduler, and pool
//!   families a pool, so they are checked against `METRIC_NAMES` only ([`CONDITIONAL`]).
//! - `promtool check rules` accepts the rules and `promtool test rules` runs their unit
//!   tests (`packaging/prometheus/corral-alerts.test.yml`): promtool from PATH, or from
//!   Debian's `prometheus` package, unpacked (not installed: no service starts) into
//!   `~/.cache/corral/prometheus` under CI.
//! - The daemons speak systemd's notify protocol (READY, STATUS, WATCHDOG, STOPPING) to a
//!   socket this test binds, exactly as they would to systemd, and shape their logs for
//!   the journal when `JOURNAL_STREAM` names their stderr.
//! - The dashboard is well formed; the shipped configs, and every setting their comments
//!   document, pass `corral config check`.
//! - The man pages and completions mention every subcommand; every command that reads
//!   the API has `--json`.
//!
//! The package build and install itself is `tests/packaging.sh` (it needs root and
//! installs a system package).

use corral_test_support as support;

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::CommandFactory;
use corral_coordinator::metrics::METRIC_NAMES;
use corral_proto::model::Liveness;
use support::*;

const SECS: fn(u64) -> Duration = Duration::from_secs;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(rel: &str) -> String {
    let p = repo().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// Every `corral_...` identifier in `text` (metric names; nothing else in these files
/// spells an identifier with that prefix).
fn corral_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(off) = text[i..].find("corral_") {
        let start = i + off;
        let boundary = start == 0 || {
            let b = bytes[start - 1];
            !(b.is_ascii_alphanumeric() || b == b'_')
        };
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end].is_ascii_digit()
                || bytes[end] == b'_')
        {
            end += 1;
        }
        if boundary {
            out.insert(text[start..end].trim_end_matches('_').to_string());
        }
        i = end.max(start + 1);
    }
    out
}

/// Families with series only under conditions this test does not create, and why.
/// Everything else used must have at least one series in the live scrape.
const CONDITIONAL: &[(&str, &str)] = &[
    (
        "corral_jobs",
        "series only once jobs were submitted, which needs a built plugin and its scheduler",
    ),
    (
        "corral_plugin_calls_total",
        "series only once a plugin call was routed, which needs a built plugin and its scheduler",
    ),
    (
        "corral_pool_ready",
        "series only with [pools.NAME] configured (tests/pools.rs reads them from a live coordinator)",
    ),
    (
        "corral_pool_min",
        "series only with [pools.NAME] configured",
    ),
    (
        "corral_pool_halted",
        "series only with [pools.NAME] configured (tests/pools.rs sees it at 1)",
    ),
    (
        "corral_pool_actions_total",
        "series only once a pool acted (tests/pools.rs)",
    ),
];

/// Metric names of the samples in an exposition (`name{labels} value` or `name value`).
fn series_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

fn full_fake_gpus() -> Vec<serde_json::Value> {
    use corral_node::health::gpu::{FakeGpuSource, GpuSource};
    let mut gpus = FakeGpuSource::uniform(2).sample().expect("fake GPUs");
    for g in &mut gpus {
        g.fan_speed_percent = Some(35);
        g.throttle_reasons = Some(vec![corral_proto::model::THROTTLE_REASONS[2].into()]);
    }
    let calm = serde_json::json!({ "gpus": gpus });
    // One XID on GPU 0 (so the "last XID" family has a series), then calm for good.
    gpus[0].xids = vec![13];
    let xid = serde_json::json!({ "gpus": gpus });
    vec![calm.clone(), xid, calm]
}

#[tokio::test(flavor = "multi_thread")]
async fn alert_rules_and_dashboard_use_only_metrics_a_live_coordinator_exports() {
    let rules = read("packaging/prometheus/corral-alerts.yml");
    let dashboard = read("packaging/grafana/corral-dashboard.json");
    let _: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard is JSON");
    let used: BTreeSet<String> = corral_names(&rules)
        .into_iter()
        .chain(corral_names(&dashboard))
        .collect();
    // Not vacuous: the rules and the dashboard cover nodes, GPUs, Ray and the coordinator.
    assert!(
        used.len() >= 30,
        "only {} names found: {used:?}",
        used.len()
    );

    let exported: BTreeSet<&str> = METRIC_NAMES.iter().copied().collect();
    let unknown: Vec<&String> = used
        .iter()
        .filter(|n| !exported.contains(n.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "metric names used in packaging/ but not in METRIC_NAMES: {unknown:?}"
    );
    for (name, why) in CONDITIONAL {
        assert!(
            exported.contains(name),
            "{name} ({why}) is not in METRIC_NAMES"
        );
    }

    let mut c = Cluster::new();
    c.start_coordinator();
    // A Ray worker whose venv is missing (Ray state `failed`) and a plugin that is not
    // there (a load failure): both are real states the alerts are about.
    std::fs::create_dir(c.path("plugins")).unwrap();
    let extra = format!(
        "sample_interval = \"200ms\"\nreport_interval = \"1s\"\n[ray]\nrole = \"worker\"\nvenv = \"{}\"\nhead_address = \"127.0.0.1:1\"\ntemp_dir = \"{}\"\n[plugins]\ndir = \"{}\"\nenable = [\"nosuch\"]",
        c.path("no-such-venv").display(),
        c.path("ray-tmp").display(),
        c.path("plugins").display()
    );
    c.start_fake_gpu_agent("gpu-node", full_fake_gpus(), &extra, "");
    c.wait_node(
        "gpu-node",
        "reporting GPUs, an XID and Ray",
        SECS(30),
        |n| {
            n.report.as_ref().is_some_and(|r| {
                r.gpus.len() == 2 && r.gpus[0].health.xid_last.is_some() && r.ray.is_some()
            })
        },
    )
    .await;
    // And an agent whose certificate comes from another CA: a refused connection.
    let other_ca = c.path("other-ca");
    let o = run(&["certs", "init", "--out", other_ca.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let tls = c.tls_dir();
    let o = run(&[
        "certs",
        "issue",
        "--ca",
        other_ca.to_str().unwrap(),
        "--name",
        "intruder",
        "--role",
        "agent",
        "--out",
        tls.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    c.start_agent("intruder", "");

    // Plugin announcements and refusals arrive on their own schedule: scrape until every
    // name has a series, for a while.
    let start = Instant::now();
    loop {
        let exposition = c.get("/metrics").await.text().await.unwrap();
        let live = series_names(&exposition);
        let missing: Vec<&String> = used
            .iter()
            .filter(|n| !live.contains(n.as_str()))
            .filter(|n| !CONDITIONAL.iter().any(|(c, _)| c == n))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < SECS(30),
            "used in packaging/ but without a series in a live /metrics: {missing:?}\n{exposition}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A shipped config with `/etc/corral/` pointing into `dir` (where the files it names
/// exist), and, with `uncomment`, every commented-out setting (`#key = ...`,
/// `#[section]`; prose comments are `# ...`) switched on.
fn shipped_config(dir: &Path, name: &str, uncomment: bool) -> PathBuf {
    let text = read(&format!("packaging/config/{name}"));
    let etc = format!("{}/", dir.display());
    let mut out = String::new();
    for line in text.lines() {
        let line = match line.strip_prefix('#') {
            Some(rest)
                if uncomment && rest.starts_with(|c: char| c.is_ascii_lowercase() || c == '[') =>
            {
                rest
            }
            _ => line,
        };
        out.push_str(&line.replace("/etc/corral/", &etc));
        out.push('\n');
    }
    let file = dir.join(format!("{}{name}", if uncomment { "all-" } else { "" }));
    std::fs::write(&file, out).unwrap();
    file
}

#[test]
fn the_shipped_configs_and_every_setting_they_document_are_valid() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("tls")).unwrap();
    for f in [
        "tls/ca.pem",
        "tls/agent.pem",
        "tls/agent.key",
        "tls/coordinator.pem",
        "tls/coordinator.key",
        "tls/api.pem",
        "tls/api.key",
        "api-token",
    ] {
        std::fs::write(dir.path().join(f), "x").unwrap();
    }
    for (name, what) in [("agent.toml", "agent"), ("coordinator.toml", "coordinator")] {
        for uncomment in [false, true] {
            let file = shipped_config(dir.path(), name, uncomment);
            let out = run(&["config", "check", file.to_str().unwrap()]);
            assert!(
                out.status.success(),
                "{name} (uncommented: {uncomment}): {}\n{}",
                stderr(&out),
                std::fs::read_to_string(&file).unwrap()
            );
            assert!(
                stdout(&out).contains(&format!("ok ({what})")),
                "{}",
                stdout(&out)
            );
        }
    }
    // Not vacuous: uncommenting switched on many settings, and they are the documented
    // ones (a misspelt key would have failed above: unknown keys are errors).
    let all = std::fs::read_to_string(dir.path().join("all-agent.toml")).unwrap();
    for key in [
        "\nbeat_interval = ",
        "\n[ray]",
        "\n[[health.checks]]",
        "\nquiet_period = ",
    ] {
        assert!(all.contains(key), "{key} not switched on");
    }
}

/// promtool: PATH, then the cache; under CI, unpacked from Debian's package when absent.
fn promtool() -> Option<PathBuf> {
    if let Ok(o) = Command::new("promtool").arg("--version").output() {
        if o.status.success() {
            return Some("promtool".into());
        }
    }
    let cache = std::env::var_os("CORRAL_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/corral"))
        .join("prometheus");
    let bin = cache.join("usr/bin/promtool");
    if bin.exists() {
        return Some(bin);
    }
    if std::env::var("CI").as_deref() != Ok("true") {
        return None;
    }
    // Download only (no install: the package would start a Prometheus server), then
    // unpack promtool, a static binary.
    std::fs::create_dir_all(&cache).unwrap();
    let sh = format!(
        "set -e; cd '{0}'; apt-get download prometheus >/dev/null 2>&1 || {{ apt-get update -qq && apt-get download prometheus; }}; \
         dpkg-deb --fsys-tarfile prometheus_*.deb | tar -x ./usr/bin/promtool; rm -f prometheus_*.deb",
        cache.display()
    );
    let out = Command::new("sh").args(["-c", &sh]).output().unwrap();
    assert!(
        out.status.success() && bin.exists(),
        "cannot get promtool from Debian's prometheus package: {}",
        stderr(&out)
    );
    Some(bin)
}

#[test]
fn promtool_accepts_the_alert_rules_and_their_unit_tests_pass() {
    let Some(promtool) = promtool() else {
        eprintln!("SKIPPED: promtool not found (install Debian's prometheus package, or run under CI=true)");
        return;
    };
    let rules = repo().join("packaging/prometheus/corral-alerts.yml");
    let out = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("SUCCESS"), "{}", stdout(&out));
    // The unit tests name rule files relative to themselves.
    let out = Command::new(&promtool)
        .args(["test", "rules", "corral-alerts.test.yml"])
        .current_dir(repo().join("packaging/prometheus"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
}

#[test]
fn the_dashboard_is_importable_and_every_panel_queries_the_chosen_datasource() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("packaging/grafana/corral-dashboard.json")).unwrap();
    let vars: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(vars, ["datasource", "node", "gpu"]);
    let panels = dashboard["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    let mut queries = 0;
    for p in panels {
        let title = p["title"].as_str().unwrap();
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "duplicate id at {title}"
        );
        let g = &p["gridPos"];
        let (x, w) = (g["x"].as_u64().unwrap(), g["w"].as_u64().unwrap());
        assert!(x + w <= 24, "{title} is wider than the grid");
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title} has no query");
        for t in targets {
            assert!(
                t["expr"].as_str().is_some_and(|e| e.contains("corral_")),
                "{title}"
            );
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
            queries += 1;
        }
    }
    assert!(queries > 40, "{queries} queries");
    for row in [
        "Cluster overview",
        "Nodes",
        "GPUs",
        "GPU errors",
        "Jobs and scheduler plugins",
    ] {
        assert!(
            panels
                .iter()
                .any(|p| p["type"] == "row" && p["title"] == row),
            "no {row} row"
        );
    }
}

/// Receives notify datagrams until `pred` holds for one or `within` passes.
fn wait_for(sock: &UnixDatagram, within: Duration, pred: impl Fn(&str) -> bool) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut seen = vec![];
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ))
        .unwrap();
        match sock.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                let done = pred(&msg);
                seen.push(msg);
                if done {
                    return seen;
                }
            }
            Err(_) => break,
        }
    }
    panic!("no matching notification within {within:?}; got {seen:?}");
}

/// A daemon this test started itself; killed if the test fails before stopping it.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns `corral ARGS` as systemd would with Type=notify and WatchdogSec: a notify
/// socket, a watchdog timeout, and stderr on a "journal" stream (a file whose device and
/// inode JOURNAL_STREAM names).
fn spawn_under_fake_systemd(
    dir: &Path,
    name: &str,
    args: &[&str],
) -> (Daemon, UnixDatagram, PathBuf) {
    let sock_path = dir.join(format!("{name}.notify"));
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let log = dir.join(format!("{name}.journal"));
    let file = std::fs::File::create(&log).unwrap();
    let meta = file.metadata().unwrap();
    let child = corral()
        .args(args)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "200000")
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap();
    (Daemon(child), sock, log)
}

#[tokio::test(flavor = "multi_thread")]
async fn daemons_notify_systemd_when_ready_ping_the_watchdog_and_say_when_stopping() {
    let c = Cluster::new();
    let cfg = c.write_coordinator_config();
    let (mut coord, coord_sock, coord_log) = spawn_under_fake_systemd(
        c.dir.path(),
        "coordinator",
        &["coordinator", "--config", cfg.to_str().unwrap()],
    );
    let ready = wait_for(&coord_sock, SECS(20), |m| m.contains("READY=1"));
    let ready = ready.last().unwrap();
    assert!(ready.contains("STATUS=listening: QUIC "), "{ready}");
    // READY means bound: the API answers right away.
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", c.api_port)).is_ok(),
        "READY=1 before the API listens"
    );
    // WATCHDOG_USEC=200ms: a ping every 100 ms.
    let start = Instant::now();
    for _ in 0..5 {
        wait_for(&coord_sock, SECS(2), |m| m == "WATCHDOG=1\n");
    }
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "{:?}",
        start.elapsed()
    );

    c.issue("n1", "agent");
    let agent_cfg = c.agent_config("n1", "");
    let (mut agent, agent_sock, _agent_log) = spawn_under_fake_systemd(
        c.dir.path(),
        "agent",
        &["agent", "--config", agent_cfg.to_str().unwrap()],
    );
    let seen = wait_for(&agent_sock, SECS(20), |m| m.contains("READY=1"));
    assert!(
        seen.last()
            .unwrap()
            .contains("STATUS=node n1: connecting to 127.0.0.1:"),
        "{seen:?}"
    );
    wait_for(&agent_sock, SECS(20), |m| {
        m.contains("STATUS=node n1: connected to")
    });
    wait_for(&agent_sock, SECS(2), |m| m == "WATCHDOG=1\n");
    c.wait_liveness("n1", Liveness::Ready, SECS(20)).await;

    signal(&agent.0, libc::SIGTERM);
    let seen = wait_for(&agent_sock, SECS(10), |m| m.contains("STOPPING=1"));
    assert!(seen.last().unwrap().contains("STATUS=stopping"), "{seen:?}");
    let status = wait_timeout(&mut agent.0, SECS(15)).expect("agent stops");
    assert!(status.success(), "{status}");

    signal(&coord.0, libc::SIGTERM);
    wait_for(&coord_sock, SECS(10), |m| m.contains("STOPPING=1"));
    let status = wait_timeout(&mut coord.0, SECS(15)).expect("coordinator stops");
    assert!(status.success(), "{status}");

    // Journal-shaped: syslog priority first, no timestamp, no colour.
    let journal = std::fs::read_to_string(&coord_log).unwrap();
    let first = journal
        .lines()
        .next()
        .expect("coordinator logged something");
    assert!(first.starts_with("<6> INFO "), "{journal}");
    assert!(
        journal.lines().all(|l| l.starts_with('<')),
        "a line without priority:\n{journal}"
    );
    assert!(!journal.contains('\u{1b}'), "{journal:?}");
}

#[test]
fn errors_reach_the_journal_with_error_priority_and_plain_stderr_stays_plain() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("journal");
    let file = std::fs::File::create(&log).unwrap();
    let meta = file.metadata().unwrap();
    let missing = dir.path().join("missing.toml");
    let out = corral()
        .args(["coordinator", "--config", missing.to_str().unwrap()])
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .stderr(file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.starts_with("<3>error: "), "{text}");
    assert!(text.contains("missing.toml"), "{text}");
    // A stale JOURNAL_STREAM (inherited, stderr elsewhere) changes nothing.
    let out = corral()
        .args(["coordinator", "--config", missing.to_str().unwrap()])
        .env("JOURNAL_STREAM", "1:1")
        .output()
        .unwrap();
    assert!(stderr(&out).starts_with("error: "), "{}", stderr(&out));
}

/// Every visible subcommand, as (`corral-sub-subsub`, its own name).
fn subcommands(cmd: &clap::Command, prefix: &str, out: &mut Vec<(String, String)>) {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let page = format!("{prefix}-{}", sub.get_name());
        subcommands(sub, &page, out);
        out.push((page, sub.get_name().to_string()));
    }
}

#[test]
fn man_pages_and_completions_mention_every_subcommand() {
    let mut subs = vec![];
    subcommands(&corral::cli::Cli::command(), "corral", &mut subs);
    assert!(subs.len() > 10, "{subs:?}");
    let dir = tempfile::tempdir().unwrap();
    let out = run(&["man", "--out", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    for (page, _) in &subs {
        let text = std::fs::read_to_string(dir.path().join(format!("{page}.1")))
            .unwrap_or_else(|e| panic!("{page}.1: {e}"));
        assert!(text.contains(".TH"), "{page}.1 is not a man page");
    }
    let main = run(&["man"]);
    assert!(main.status.success(), "{}", stderr(&main));
    let main = stdout(&main);
    let top = corral::cli::Cli::command();
    for sub in top.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = sub.get_name();
        assert!(main.contains(name), "corral.1 does not mention {name}");
    }
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = run(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        let text = stdout(&out);
        for (_, name) in &subs {
            assert!(
                text.contains(name.as_str()),
                "{shell} completion lacks {name}"
            );
        }
    }
    let out = run(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2), "unknown shell is a usage error");
    assert!(stderr(&out).contains("tcsh"), "{}", stderr(&out));
}

#[test]
fn every_command_that_reads_the_api_offers_json_output() {
    fn walk(cmd: &clap::Command, path: &str, gaps: &mut Vec<String>, seen: &mut usize) {
        for sub in cmd.get_subcommands() {
            let path = format!("{path} {}", sub.get_name());
            let has = |id: &str| sub.get_arguments().any(|a| a.get_id() == id);
            if has("api") {
                *seen += 1;
                if !has("json") {
                    gaps.push(path.clone());
                }
            }
            walk(sub, &path, gaps, seen);
        }
    }
    let (mut gaps, mut seen) = (vec![], 0);
    walk(&corral::cli::Cli::command(), "corral", &mut gaps, &mut seen);
    assert!(seen >= 4, "only {seen} API commands found");
    assert!(gaps.is_empty(), "API commands without --json: {gaps:?}");
}
