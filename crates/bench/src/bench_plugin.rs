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

    // Calls through the host, as the agent routes them.
    let (host, failures) = PluginHost::load(&PluginsConfig {
        dir: Some(a.dir.clone()),
        enable: vec![a.plugin.clone()],
        ..PluginsConfig::default()
    });
    if let Some(f) = failures.first() {
        anyhow::bail!("{}: {}", f.name, f.message);
    }
    for _ in 0..a.calls.min(1000) {
        host.call(&a.plugin, PluginCall::Info, None).await?;
    }
    let mut host_hist = hdrhistogram::Histogram::<u64>::new(3)?;
    let started = Instant::now();
    for _ in 0..a.calls {
        let t = Instant::now();
        host.call(&a.plugin, PluginCall::Info, None).await?;
        host_hist.record(t.elapsed().as_nanos() as u64)?;
    }
    let host_total = started.elapsed();

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
