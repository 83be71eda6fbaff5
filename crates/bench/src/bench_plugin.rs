//! `corral-bench plugin`: what the plugin host costs, with a real plugin component.
//!
//! - *per call*: one `info` call as every call runs it: a fresh store from the
//!   pre-instantiated component (memory limit, epoch deadline), instantiate, call,
//!   drop. Timed on one thread (`direct`), and through [`PluginHost::call`] from async
//!   code (`host`), which adds the hop to a blocking thread, the concurrency permit and
//!   the wall-clock timeout: what the agent actually pays per routed call. Instantiation
//!   alone (store + instance, no call) is timed too, to show where the time goes.
//! - *load*: `--loads` loads of the component, each with a fresh engine as an agent
//!   start has: `cold` with an empty cache directory (Cranelift compiles), `cached`
//!   from the entry the cold load wrote (checksum + deserialize).
//!
//! The plugin is `DIR/NAME.wasm` with its manifest beside it (default: the `slurm`
//! plugin in `$CORRAL_PLUGINS_DIR`, else `target/plugins`, as `cargo xtask plugins`
//! writes them). `info` runs no program, so no scheduler is needed.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;

use corral_proto::job::PluginCall;
use corral_sandbox::plugins::bench::Bench;
use corral_sandbox::plugins::{PluginHost, PluginsConfig};

#[derive(Args, Debug)]
pub struct PluginArgs {
    /// The plugin to load (NAME.wasm and NAME.toml in --dir).
    #[arg(long, default_value = "slurm")]
    plugin: String,
    /// Where the plugin files are (default: $CORRAL_PLUGINS_DIR, else target/plugins).
    #[arg(long, env = "CORRAL_PLUGINS_DIR", default_value = "target/plugins")]
    dir: PathBuf,
    /// Calls to time.
    #[arg(long, default_value_t = 20_000)]
    calls: u32,
    /// Cold and cached loads to time.
    #[arg(long, default_value_t = 3)]
    loads: u32,
}

fn percentile_us(h: &hdrhistogram::Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn median_ms(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1000.0
}

fn summary(h: &hdrhistogram::Histogram<u64>, total: Duration, calls: u32) -> serde_json::Value {
    serde_json::json!({
        "mean_us": total.as_secs_f64() * 1e6 / f64::from(calls),
        "p50_us": percentile_us(h, 0.5),
        "p99_us": percentile_us(h, 0.99),
        "max_us": h.max() as f64 / 1000.0,
    })
}

pub async fn run(a: PluginArgs) -> Result<()> {
    anyhow::ensure!(
        a.calls > 0 && a.loads > 0,
        "--calls and --loads must be at least 1"
    );
    let wasm = a.dir.join(format!("{}.wasm", a.plugin));
    anyhow::ensure!(
        wasm.is_file(),
        "{} is missing; build the plugins with `cargo xtask plugins` (or pass --dir/--plugin)",
        wasm.display()
    );

    // Loads: cold (empty cache) then cached, each with a fresh engine.
    let (mut cold, mut cached) = (Vec::new(), Vec::new());
    let mut bench = None;
    for _ in 0..a.loads {
        let cache = tempfile::tempdir()?;
        let w = wasm.clone();
        let dir = cache.path().to_path_buf();
        let (b, cold_t, cached_t) = tokio::task::spawn_blocking(move || -> Result<_> {
            let (_, cold_t) = Bench::load(&w, Some(&dir))?;
            let (b, cached_t) = Bench::load(&w, Some(&dir))?;
            Ok((b, cold_t, cached_t))
        })
        .await??;
        anyhow::ensure!(
            cold_t.source == corral_sandbox::plugins::ComponentSource::Compiled
                && cached_t.source == corral_sandbox::plugins::ComponentSource::Cached,
            "unexpected component sources: cold {:?}, cached {:?}",
            cold_t.source,
            cached_t.source
        );
        cold.push(cold_t.elapsed);
        cached.push(cached_t.elapsed);
        bench = Some(b);
    }
    let bench = bench.context("no load ran")?;

    // Direct calls on one blocking thread; instantiation alone for the breakdown.
    let calls = a.calls;
    let ((direct_hist, direct_total), (inst_hist, inst_total)) =
        tokio::task::spawn_blocking(move || -> Result<_> {
            let time = |f: &dyn Fn() -> Result<(), corral_proto::job::PluginError>| -> Result<_> {
                for _ in 0..calls.min(1000) {
                    f()?;
                }
                let mut h = hdrhistogram::Histogram::<u64>::new(3)?;
                let started = Instant::now();
                for _ in 0..calls {
                    let t = Instant::now();
                    f()?;
                    h.record(t.elapsed().as_nanos() as u64)?;
                }
                Ok((h, started.elapsed()))
            };
            Ok((
                time(&|| bench.call_info())?,
                time(&|| bench.instantiate_only())?,
            ))
        })
        .await??;

    // Calls through the host, as the agent routes them: from a task on the runtime's
    // worker threads (the agent spawns one per routed call), with the service user
    // being the user running the harness, so that `info` needs no user lookup (as on an
    // agent that is not root, or whose service user is its own) and the harness runs
    // as root on a machine without a `corral` user too.
    let me = corral_sandbox::identity::User::current()
        .context("looking up the user running the harness")?;
    let (host, failures) = PluginHost::load(&PluginsConfig {
        dir: Some(a.dir.clone()),
        enable: vec![a.plugin.clone()],
        service_user: me.name,
        ..PluginsConfig::default()
    });
    if let Some(f) = failures.first() {
        anyhow::bail!("{}: {}", f.name, f.message);
    }
    let (plugin, calls) = (a.plugin.clone(), a.calls);
    let (host_hist, host_total) = tokio::spawn(async move {
        for _ in 0..calls.min(1000) {
            host.call(&plugin, PluginCall::Info, None).await?;
        }
        let mut h = hdrhistogram::Histogram::<u64>::new(3)?;
        let started = Instant::now();
        for _ in 0..calls {
            let t = Instant::now();
            host.call(&plugin, PluginCall::Info, None).await?;
            h.record(t.elapsed().as_nanos() as u64)?;
        }
        anyhow::Ok((h, started.elapsed()))
    })
    .await??;

    let json = serde_json::json!({
        "plugin": a.plugin,
        "wasm_bytes": std::fs::metadata(&wasm)?.len(),
        "calls": a.calls,
        "call_info_direct": summary(&direct_hist, direct_total, a.calls),
        "call_info_host": summary(&host_hist, host_total, a.calls),
        "instantiate_only": summary(&inst_hist, inst_total, a.calls),
        "loads": a.loads,
        "load_cold_ms_median": median_ms(cold.clone()),
        "load_cold_ms_min": cold.iter().min().map(|d| d.as_secs_f64() * 1000.0),
        "load_cached_ms_median": median_ms(cached.clone()),
        "load_cached_ms_min": cached.iter().min().map(|d| d.as_secs_f64() * 1000.0),
    });
    println!("{}", serde_json::to_string_pretty(&json)?);
    Ok(())
}

/// The scheduler plugins `corral-bench agent --plugins` starts its agent with: the
/// `[plugins]` section, and the compiled-component cache the agent finds. By default
/// the cache is warm, as after an agent restart: this process loads the same plugins
/// once into it beforehand (same wasmtime, same engine settings, so the same cache
/// key), and [`AgentPlugins::wait_loaded`] checks that the agent used those entries
/// rather than compiling again. With `cold` the cache starts empty.
pub(crate) struct AgentPlugins {
    names: Vec<String>,
    dir: PathBuf,
    cache: PathBuf,
    cold: bool,
    /// The warm cache's entries (name, length, modification time) before the agent
    /// started.
    primed: Vec<(std::ffi::OsString, u64, std::time::SystemTime)>,
}

fn cache_entries(
    dir: &std::path::Path,
) -> Result<Vec<(std::ffi::OsString, u64, std::time::SystemTime)>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let e = e?;
        let m = e.metadata()?;
        v.push((e.file_name(), m.len(), m.modified()?));
    }
    v.sort();
    Ok(v)
}

impl AgentPlugins {
    pub(crate) fn prepare(
        names: &[String],
        dir: &std::path::Path,
        cache: &std::path::Path,
        cold: bool,
    ) -> Result<AgentPlugins> {
        let dir = std::path::absolute(dir)
            .with_context(|| format!("making {} absolute", dir.display()))?;
        for name in names {
            let wasm = dir.join(format!("{name}.wasm"));
            anyhow::ensure!(
                wasm.is_file(),
                "{} is missing; build the plugins with `cargo xtask plugins --out target/plugins` (or pass --plugins-dir)",
                wasm.display()
            );
        }
        let mut primed = Vec::new();
        if !names.is_empty() {
            std::fs::create_dir_all(cache)
                .with_context(|| format!("creating {}", cache.display()))?;
            if !cold {
                let (_, failures) = PluginHost::load(&PluginsConfig {
                    dir: Some(dir.clone()),
                    enable: names.to_vec(),
                    cache_dir: Some(cache.to_path_buf()),
                    ..PluginsConfig::default()
                });
                if let Some(f) = failures.first() {
                    anyhow::bail!("priming the plugin cache: {}: {}", f.name, f.message);
                }
                primed = cache_entries(cache)?;
                anyhow::ensure!(
                    primed.len() == names.len(),
                    "priming the plugin cache wrote {} entries for {} plugins",
                    primed.len(),
                    names.len()
                );
            }
        }
        Ok(AgentPlugins {
            names: names.to_vec(),
            dir,
            cache: cache.to_path_buf(),
            cold,
            primed,
        })
    }

    /// The agent config's `[plugins]` section ("" without plugins).
    pub(crate) fn config(&self) -> String {
        if self.names.is_empty() {
            return String::new();
        }
        format!(
            "[plugins]\ndir = {:?}\nenable = {:?}\ncache_dir = {:?}\n",
            self.dir.display().to_string(),
            self.names,
            self.cache.display().to_string()
        )
    }

    /// Waits (60 s at most) until the agent `bench-agent` has announced every plugin
    /// loaded, through the coordinator's API on `socket`; with a warm cache, checks
    /// that the agent wrote no new entry (it deserialized, it did not compile).
    pub(crate) async fn wait_loaded(&self, socket: &std::path::Path) -> Result<()> {
        if self.names.is_empty() {
            return Ok(());
        }
        // reqwest's rustls needs a process-wide crypto provider, even over a socket.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .unix_socket(socket.to_path_buf())
            .build()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let hosts: Vec<corral_proto::api::NodePlugins> = http
                .get("http://localhost/api/v1/plugins")
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .context("GET /api/v1/plugins on the coordinator")?
                .json()
                .await
                .context("reading /api/v1/plugins")?;
            if let Some(h) = hosts
                .iter()
                .find(|h| h.node == "bench-agent" && h.announced_ms.is_some())
            {
                if let Some(f) = h.failed.first() {
                    anyhow::bail!("the agent failed to load plugin {}: {}", f.name, f.message);
                }
                let mut loaded: Vec<&str> = h.loaded.iter().map(|p| p.info.name.as_str()).collect();
                let mut want: Vec<&str> = self.names.iter().map(String::as_str).collect();
                loaded.sort_unstable();
                want.sort_unstable();
                anyhow::ensure!(loaded == want, "the agent loaded {loaded:?}, not {want:?}");
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the agent did not announce its plugins within 60s: {hosts:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if !self.cold {
            let now = cache_entries(&self.cache)?;
            anyhow::ensure!(
                now == self.primed,
                "the agent did not load its plugins from the warm cache (its entries changed: it compiled them again): before {:?}, after {:?}",
                self.primed,
                now
            );
        }
        Ok(())
    }

    pub(crate) fn print_summary(&self) {
        if self.names.is_empty() {
            println!("plugins:                       none");
        } else {
            println!(
                "plugins:                       {} ({}), {}",
                self.names.len(),
                self.names.join(", "),
                if self.cold {
                    "cold start: compiled at load into an empty cache"
                } else {
                    "warm start: deserialized from the compiled-plugin cache"
                }
            );
        }
    }
}

/// Where a process's resident memory is, from `/proc/PID/smaps`: by kind of mapping,
/// then the largest anonymous mappings one by one (address range, permissions, RSS).
pub(crate) fn memory_breakdown(pid: u32) -> Result<Vec<(String, u64)>> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .with_context(|| format!("reading /proc/{pid}/smaps"))?;
    struct Map {
        header: String,
        perms: String,
        path: String,
        size: u64,
        rss: u64,
        anon: u64,
    }
    let mut maps: Vec<Map> = Vec::new();
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        let first = f.next().unwrap_or_default();
        if first.contains('-') && !first.ends_with(':') {
            let perms = f.next().unwrap_or_default().to_string();
            let path = f.nth(3).unwrap_or_default().to_string();
            maps.push(Map {
                header: first.to_string(),
                perms,
                path,
                size: 0,
                rss: 0,
                anon: 0,
            });
            continue;
        }
        let Some(m) = maps.last_mut() else { continue };
        let kb = f.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) * 1024;
        match first {
            "Size:" => m.size = kb,
            "Rss:" => m.rss = kb,
            "Anonymous:" => m.anon = kb,
            _ => {}
        }
    }
    let is_exe = |p: &str| exe.as_ref().is_some_and(|e| e.as_os_str() == p);
    let mut kinds: Vec<(String, u64)> = vec![
        ("total RSS".into(), maps.iter().map(|m| m.rss).sum()),
        (
            "  of which anonymous".into(),
            maps.iter().map(|m| m.anon).sum(),
        ),
    ];
    let mut add = |what: &str, pick: &dyn Fn(&Map) -> bool| {
        kinds.push((
            what.to_string(),
            maps.iter().filter(|m| pick(m)).map(|m| m.rss).sum(),
        ));
    };
    add("the corral binary, read-only/code", &|m| {
        is_exe(&m.path) && !m.perms.starts_with("rw")
    });
    add("the corral binary, data (relocated)", &|m| {
        is_exe(&m.path) && m.perms.starts_with("rw")
    });
    add("shared libraries and other files", &|m| {
        m.path.starts_with('/') && !is_exe(&m.path)
    });
    add("[heap] (main malloc arena)", &|m| m.path == "[heap]");
    add("[stack] (main thread)", &|m| m.path == "[stack]");
    add("anonymous executable (compiled wasm)", &|m| {
        m.path.is_empty() && m.perms.contains('x')
    });
    add("anonymous read-only (wasm metadata)", &|m| {
        m.path.is_empty() && m.perms.starts_with("r--")
    });
    add("anonymous read-write (arenas, stacks, wasm)", &|m| {
        m.path.is_empty() && m.perms.starts_with("rw")
    });
    let mut anon: Vec<&Map> = maps
        .iter()
        .filter(|m| m.path.is_empty() && m.rss > 0)
        .collect();
    anon.sort_by_key(|m| std::cmp::Reverse(m.rss));
    for m in anon.iter().take(8) {
        kinds.push((
            format!("  {} {} ({} KiB mapped)", m.header, m.perms, m.size / 1024),
            m.rss,
        ));
    }
    Ok(kinds)
}
