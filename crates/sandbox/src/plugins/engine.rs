//! The wasmtime side of the host: one [`Engine`], a pre-instantiated component per
//! plugin, and a fresh [`Store`] per call with a memory limit and an epoch deadline.
//!
//! Invariants and trade-offs:
//! - One engine for every plugin of an agent, with epoch interruption on; one thread
//!   ([`Ticker`]) advances its epoch every [`TICK`]. A call's deadline is
//!   `limits.call_timeout` in ticks, so a plugin spinning in wasm traps within one tick
//!   of its timeout. Host calls (a program run, an HTTP request) are bounded by the same
//!   deadline on their own (see `imports.rs`); the caller adds a wall-clock timeout
//!   around the whole call (`PluginHost::call`).
//! - Each call instantiates the plugin's [`PluginPre`] into a new store: no state
//!   survives between calls, so a trap, a timeout or a blown memory limit cannot leave a
//!   plugin half-updated, and the next call starts clean. The cost is one instantiation
//!   per call (measured by `corral-bench plugin`).
//! - Stores draw their instances from a pooling allocator sized from the manifests
//!   ([`Pool`]: every plugin's `concurrent_calls` plus one, the largest `memory_mb`), so
//!   a call reuses a warm slot instead of mapping fresh memory; a slot is reset to the
//!   component's pristine image before reuse, so nothing leaks from one call to the
//!   next. Since at most `concurrent_calls` stores of a plugin exist at once (the
//!   host's semaphore), the pool cannot run dry.
//! - Linear memory is capped per store by [`Limiter`] (`limits.memory_mb`); growing past
//!   it traps at once with a message naming the limit, rather than returning -1 to the
//!   guest (whose allocator would abort with a less useful trap).
//! - Only granted interfaces are linked: `log`, `config` and `clock` always (they reach
//!   nothing outside the plugin and the agent's log), `process` only when programs are
//!   granted, `http` only when hosts are granted. A component importing anything else
//!   fails at load, naming the import and the manifest key that would grant it
//!   ([`check_imports`]), before wasmtime's own type check.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Engine, Store, Trap};

use super::bindings::corral::scheduler::{clock, config, http, log, process, types};
use super::bindings::PluginPre;
use super::convert::{
    error_from_wit, info_from_wit, node_state_from_wit, spec_to_wit, status_from_wit,
};
use super::imports::{CallState, Granted, RunAs};
use super::manifest::Manifest;
use corral_proto::job::{PluginCall, PluginError, PluginInfo, PluginReply};

/// How often the engine's epoch advances: the resolution of call timeouts.
pub const TICK: Duration = Duration::from_millis(10);

/// The WIT package (without version) every import must come from.
const PACKAGE: &str = "corral:scheduler";
/// The package versions this host serves (semver-compatible with 0.2.0; 0.2.0 added
/// the `node-state` export, see wit/README.md).
pub(crate) const VERSION_PREFIX: &str = "0.2.";

pub fn wt(e: wasmtime::Error) -> anyhow::Error {
    anyhow::anyhow!("{e:#}")
}

/// What the engine's instance pool must hold: the stores alive at once (each call and
/// each load-time `info` has one) and the largest linear memory any of them may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    pub stores: u32,
    pub memory_max: usize,
}

/// Most stores a pool holds; each reserves address space for its memory (not RSS).
const POOL_MAX_STORES: u32 = 1024;
/// Linear memory a pool slot may keep resident between calls, where the kernel can tell
/// which pages a call dirtied (`PAGEMAP_SCAN`, Linux 6.7+): only those are reset (by
/// `memset`), so the next call neither page-faults them in again nor pays an `madvise`
/// with its TLB shootdown. 2 MiB covers a Rust guest's 1 MiB shadow stack, its data and
/// the start of its heap. RSS cost: the pages calls actually touch, per slot in use.
const KEEP_RESIDENT: usize = 2 << 20;

/// Whether this kernel has `PAGEMAP_SCAN` (6.7+) and lets us read our own pagemap.
/// Without it a resident slot would be reset with a `memset` of all of
/// [`KEEP_RESIDENT`], which costs more than it saves, so nothing is kept resident.
fn pagemap_scan_available() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (6, 7) && std::fs::File::open("/proc/self/pagemap").is_ok()
}

impl Pool {
    /// The pool for plugins with these limits: their concurrent calls added up, plus
    /// one store for load-time checks; the largest memory limit.
    pub fn for_limits<'a>(limits: impl IntoIterator<Item = &'a super::manifest::Limits>) -> Pool {
        let (mut stores, mut memory_max) = (1u32, 0usize);
        for l in limits {
            stores = stores.saturating_add(l.concurrent_calls);
            memory_max = memory_max.max(l.memory_bytes());
        }
        if memory_max == 0 {
            memory_max = super::manifest::Limits::default().memory_bytes();
        }
        Pool {
            stores: stores.min(POOL_MAX_STORES),
            memory_max,
        }
    }
}

fn base_config() -> wasmtime::Config {
    let mut cfg = wasmtime::Config::new();
    cfg.epoch_interruption(true);
    cfg.wasm_component_model(true);
    cfg
}

/// The engine all plugins of a host share, with a pooling instance allocator sized by
/// `pool`: instantiating from a warm slot skips the mmap/munmap and page faults a fresh
/// allocation costs on every call (measured with `corral-bench plugin` on a 2-core VM:
/// about 8 µs to instantiate from the pool against 24 µs on demand). If the pool's
/// address space cannot be reserved (a tight `ulimit -v`), the engine allocates on
/// demand instead, with a warning: slower calls, same limits.
pub fn new_engine(pool: Pool) -> anyhow::Result<Engine> {
    let scan = pagemap_scan_available();
    let mut p = wasmtime::PoolingAllocationConfig::new();
    // A wit-component guest is a few core instances (the module, import shims) with one
    // memory and a table each.
    p.total_component_instances(pool.stores)
        .total_core_instances(pool.stores.saturating_mul(8))
        .max_core_instances_per_component(8)
        .total_memories(pool.stores.saturating_add(4))
        .max_memories_per_component(2)
        .total_tables(pool.stores.saturating_mul(8))
        .max_tables_per_component(8)
        .max_memory_size(pool.memory_max)
        .linear_memory_keep_resident(if scan { KEEP_RESIDENT } else { 0 })
        .table_keep_resident(if scan { 64 * 1024 } else { 0 })
        .pagemap_scan(if scan {
            wasmtime::Enabled::Auto
        } else {
            wasmtime::Enabled::No
        })
        .max_unused_warm_slots(0);
    let mut cfg = base_config();
    cfg.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(p));
    match Engine::new(&cfg) {
        Ok(e) => Ok(e),
        Err(e) => {
            tracing::warn!(stores = pool.stores, error = %format!("{e:#}"), "cannot reserve the plugin instance pool; allocating plugin memory on demand");
            Engine::new(&base_config()).map_err(wt)
        }
    }
}

/// Advances an engine's epoch every [`TICK`] until dropped.
pub struct Ticker {
    stop: Arc<AtomicBool>,
}

impl Ticker {
    pub fn start(engine: &Engine) -> std::io::Result<Ticker> {
        let stop = Arc::new(AtomicBool::new(false));
        let (engine, flag) = (engine.clone(), stop.clone());
        std::thread::Builder::new()
            .name("corral-plugin-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    engine.increment_epoch();
                }
            })?;
        Ok(Ticker { stop })
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Caps a store's linear memory and remembers whether the cap was hit.
pub struct Limiter {
    memory_max: usize,
    /// The size a refused growth asked for.
    pub refused: Option<usize>,
}

impl Limiter {
    pub fn new(memory_max: usize) -> Limiter {
        Limiter {
            memory_max,
            refused: None,
        }
    }
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_max {
            self.refused = Some(desired);
            wasmtime::bail!(
                "memory limit reached: asked for {desired} bytes, the limit is {} bytes",
                self.memory_max
            );
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; a million is far beyond any real plugin.
        Ok(desired <= 1_000_000)
    }

    fn instances(&self) -> usize {
        100
    }

    fn tables(&self) -> usize {
        100
    }

    fn memories(&self) -> usize {
        10
    }
}

/// The interface an import names (`corral:scheduler/process`), if it is one of ours.
fn our_interface(import: &str) -> Option<(&str, &str)> {
    let (path, version) = import.split_once('@')?;
    // Provider plugins' own import (`wit/provider.wit`); the provider world links it.
    if path == "corral:provider/wait" && version.starts_with("0.1.") {
        return Some(("wait", VERSION_PREFIX));
    }
    let iface = path.strip_prefix(PACKAGE)?.strip_prefix('/')?;
    Some((iface, version))
}

/// Refuses a component that imports what the manifest does not grant (see module doc).
pub fn check_imports(
    engine: &Engine,
    component: &Component,
    wasm: &Path,
    manifest: &Manifest,
) -> anyhow::Result<()> {
    let ty = component.component_type();
    for (import, _) in ty.imports(engine) {
        let Some((iface, version)) = our_interface(import) else {
            anyhow::bail!(
                "{}: the component imports `{import}`, which corral does not provide; plugins import only {PACKAGE} interfaces (build for wasm32-unknown-unknown, without WASI)",
                wasm.display()
            );
        };
        if !version.starts_with(VERSION_PREFIX) {
            anyhow::bail!(
                "{}: the component imports `{import}`: it was built against {PACKAGE}@{version}, and this agent serves {PACKAGE}@{VERSION_PREFIX}x (see wit/README.md, Versioning); rebuild it with the current corral-plugin-sdk (`cargo xtask plugins`, or `cargo xtask plugins --crate DIR` for your own), or upgrade the agent",
                wasm.display()
            );
        }
        match iface {
            "types" | "log" | "config" | "clock" | "wait" => {}
            "process" if !manifest.programs.is_empty() => {}
            "http" if !manifest.hosts.is_empty() => {}
            "process" => anyhow::bail!(
                "{}: the component imports `{PACKAGE}/process` (it runs programs), but {} grants no programs; list them under [grants] programs",
                wasm.display(),
                manifest.file.display()
            ),
            "http" => anyhow::bail!(
                "{}: the component imports `{PACKAGE}/http` (it sends HTTP requests), but {} grants no hosts; list host:port pairs under [grants] hosts",
                wasm.display(),
                manifest.file.display()
            ),
            _ => anyhow::bail!(
                "{}: the component imports `{import}`, which this agent does not provide",
                wasm.display()
            ),
        }
    }
    Ok(())
}

/// Which world a host loads: agents load scheduler plugins, the coordinator providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum World {
    Scheduler,
    Provider,
}

/// Refuses a plugin of the other kind with what to do instead, before linking would
/// refuse it with a type error that names neither.
pub fn check_world(
    engine: &Engine,
    component: &Component,
    wasm: &Path,
    want: World,
) -> anyhow::Result<()> {
    let ty = component.component_type();
    let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
    let exports_one = |prefix: &str| exports.iter().any(|e| e.starts_with(prefix));
    let scheduler = exports_one("corral:scheduler/scheduler@");
    let provider = exports_one("corral:provider/provider@");
    match want {
        World::Scheduler if provider && !scheduler => anyhow::bail!(
            "{}: this is a provider plugin (it exports corral:provider/provider): the coordinator loads it for a pool (`provider = ...` under [pools.NAME]), not an agent's [plugins] enable",
            wasm.display()
        ),
        World::Provider if scheduler && !provider => anyhow::bail!(
            "{}: this is a scheduler plugin (it exports corral:scheduler/scheduler): agents load it through [plugins] enable; a pool's provider must export corral:provider/provider",
            wasm.display()
        ),
        _ => Ok(()),
    }
}

/// A linker with the interfaces `manifest` grants (see module doc).
pub fn linker(engine: &Engine, manifest: &Manifest) -> anyhow::Result<Linker<CallState>> {
    let mut l = Linker::new(engine);
    types::add_to_linker::<CallState, HasSelf<CallState>>(&mut l, |s| s).map_err(wt)?;
    log::add_to_linker::<CallState, HasSelf<CallState>>(&mut l, |s| s).map_err(wt)?;
    config::add_to_linker::<CallState, HasSelf<CallState>>(&mut l, |s| s).map_err(wt)?;
    clock::add_to_linker::<CallState, HasSelf<CallState>>(&mut l, |s| s).map_err(wt)?;
    if !manifest.programs.is_empty() {
        process::add_to_linker::<CallState, HasSelf<CallState>>(&mut l, |s| s).map_err(wt)?;
    }
    if !manifest.hosts.is_empty() {
        http::add_to_linker::<CallState, HasSelf<CallState>>(&mut l, |s| s).map_err(wt)?;
    }
    Ok(l)
}

/// A plugin ready to be called: its grants and its pre-instantiated component.
pub struct Instance {
    pub granted: Arc<Granted>,
    pub pre: PluginPre<CallState>,
}

impl Instance {
    /// Prepares `component` for calls under `granted`'s manifest.
    pub fn new(
        engine: &Engine,
        component: &Component,
        granted: Arc<Granted>,
    ) -> anyhow::Result<Instance> {
        let linker = linker(engine, &granted.manifest)?;
        let pre = linker.instantiate_pre(component).map_err(wt)?;
        let pre = PluginPre::new(pre).map_err(wt)?;
        Ok(Instance { granted, pre })
    }

    /// The plugin's own `info`, for the load-time checks (no runtime: no HTTP).
    pub fn info(&self) -> Result<PluginInfo, PluginError> {
        match self.call(PluginCall::Info, None, RunAs::agent())? {
            PluginReply::Info(i) => Ok(i),
            other => Err(PluginError::Plugin(format!("info answered {other:?}"))),
        }
    }

    fn store(&self, runtime: Option<tokio::runtime::Handle>, run_as: RunAs) -> Store<CallState> {
        new_store(self.pre.engine(), &self.granted, runtime, run_as, None)
    }

    /// A fresh store and instance, calling nothing (for `corral-bench plugin`).
    #[cfg(feature = "bench")]
    pub fn instantiate_only(&self) -> Result<(), PluginError> {
        let mut store = self.store(None, RunAs::agent());
        self.pre
            .instantiate(&mut store)
            .map(|_| ())
            .map_err(|e| self.failure(&store, "instantiate", e))
    }

    /// Calls one export in a fresh store, on this (blocking) thread.
    pub fn call(
        &self,
        call: PluginCall,
        runtime: Option<tokio::runtime::Handle>,
        run_as: RunAs,
    ) -> Result<PluginReply, PluginError> {
        let mut store = self.store(runtime, run_as);
        let export = call.export();
        let plugin = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| self.failure(&store, export, e))?;
        let s = plugin.corral_scheduler_scheduler();
        let answer = match call {
            PluginCall::Info => s
                .call_info(&mut store)
                .map(|i| Ok(PluginReply::Info(info_from_wit(i)))),
            PluginCall::Render(spec) => s
                .call_render(&mut store, &spec_to_wit(spec))
                .map(|r| r.map(PluginReply::Text)),
            PluginCall::Submit(spec) => s
                .call_submit(&mut store, &spec_to_wit(spec))
                .map(|r| r.map(PluginReply::Submitted)),
            PluginCall::Status(ids) => s.call_status(&mut store, &ids).map(|r| {
                r.map(|v| PluginReply::Statuses(v.into_iter().map(status_from_wit).collect()))
            }),
            PluginCall::Cancel(id) => s
                .call_cancel(&mut store, &id)
                .map(|r| r.map(|()| PluginReply::Done)),
            PluginCall::List => s.call_list(&mut store).map(|r| {
                r.map(|v| PluginReply::Statuses(v.into_iter().map(status_from_wit).collect()))
            }),
            PluginCall::Logs { id, max_bytes } => s
                .call_logs(&mut store, &id, max_bytes)
                .map(|r| r.map(PluginReply::Text)),
            PluginCall::DrainNode { node, reason } => s
                .call_drain_node(&mut store, &node, &reason)
                .map(|r| r.map(|()| PluginReply::Done)),
            PluginCall::ResumeNode { node } => s
                .call_resume_node(&mut store, &node)
                .map(|r| r.map(|()| PluginReply::Done)),
            PluginCall::NodeState { node } => s
                .call_node_state(&mut store, &node)
                .map(|r| r.map(|state| PluginReply::NodeState(state.map(node_state_from_wit)))),
        };
        match answer {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => Err(error_from_wit(e)),
            Err(e) => Err(self.failure(&store, export, e)),
        }
    }

    fn failure(&self, store: &Store<CallState>, export: &str, e: wasmtime::Error) -> PluginError {
        failure(&self.granted, store, export, e)
    }
}

/// A fresh store for one call of a plugin with `granted`'s manifest: memory limit and
/// epoch deadline set; `secret` is what its log lines must not show.
pub fn new_store(
    engine: &Engine,
    granted: &Arc<Granted>,
    runtime: Option<tokio::runtime::Handle>,
    run_as: RunAs,
    secret: Option<Arc<str>>,
) -> Store<CallState> {
    let limits = &granted.manifest.limits;
    let mut store = Store::new(
        engine,
        CallState {
            granted: granted.clone(),
            deadline: Instant::now() + limits.call_timeout,
            runtime,
            limiter: Limiter::new(limits.memory_bytes()),
            run_as,
            secret,
            http_requests: 0,
        },
    );
    store.limiter(|s| &mut s.limiter);
    let ticks = limits
        .call_timeout
        .as_millis()
        .div_ceil(TICK.as_millis())
        .max(1);
    store.set_epoch_deadline(ticks as u64);
    store.epoch_deadline_trap();
    store
}

/// Why a call stopped abnormally (a trap, the memory limit, the call timeout), in words
/// an operator can act on.
pub fn failure(
    g: &Granted,
    store: &Store<CallState>,
    export: &str,
    e: wasmtime::Error,
) -> PluginError {
    let limits = &g.manifest.limits;
    let file = g.manifest.file.display();
    if let Some(asked) = store.data().limiter.refused {
        return PluginError::Plugin(format!(
            "{}.{export} exceeded its memory limit of {} MiB (asked for {} MiB; limits.memory_mb in {file}) and was stopped",
            g.name,
            limits.memory_mb,
            asked.div_ceil(1024 * 1024)
        ));
    }
    if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        return PluginError::Timeout(format!(
            "{}.{export} ran past its call timeout of {} (limits.call_timeout in {file}) and was stopped",
            g.name,
            humantime::format_duration(limits.call_timeout)
        ));
    }
    // The full error (with its wasm backtrace, many lines) goes to the debug log; the
    // caller gets the trap's kind in one line.
    tracing::debug!(plugin = %g.name, export, error = %format!("{e:?}"), "plugin trapped");
    let why = match e.downcast_ref::<Trap>() {
        Some(Trap::UnreachableCodeReached) => {
            "wasm `unreachable` executed (a panic or abort in the plugin)".to_string()
        }
        Some(Trap::StackOverflow) => "call stack exhausted (runaway recursion?)".to_string(),
        Some(t) => t.to_string(),
        None => {
            let root = e.root_cause().to_string();
            let first = root.lines().next().unwrap_or_default();
            first.chars().take(500).collect()
        }
    };
    PluginError::Plugin(format!("{}.{export} trapped: {why}", g.name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::manifest::Limits;

    #[test]
    fn the_pool_holds_every_concurrent_call_plus_one_and_the_largest_memory() {
        let a = Limits {
            concurrent_calls: 4,
            memory_mb: 64,
            ..Limits::default()
        };
        let b = Limits {
            concurrent_calls: 2,
            memory_mb: 256,
            ..Limits::default()
        };
        assert_eq!(
            Pool::for_limits([&a, &b]),
            Pool {
                stores: 7,
                memory_max: 256 << 20
            }
        );
        assert_eq!(Pool::for_limits([]).memory_max, 64 << 20);
        let many = Limits {
            concurrent_calls: 256,
            ..Limits::default()
        };
        assert_eq!(Pool::for_limits([&many; 10]).stores, POOL_MAX_STORES);
    }

    #[test]
    fn the_cache_key_does_not_depend_on_the_pool_size() {
        // Enabling one more plugin must not invalidate every cached component.
        let small = new_engine(Pool::for_limits([])).unwrap();
        let large = new_engine(Pool {
            stores: 64,
            memory_max: 1 << 30,
        })
        .unwrap();
        assert_eq!(
            crate::plugins::cache::engine_key(&small),
            crate::plugins::cache::engine_key(&large)
        );
    }

    #[test]
    fn only_our_package_is_recognised_with_its_version() {
        assert_eq!(
            our_interface("corral:scheduler/process@0.2.0"),
            Some(("process", "0.2.0"))
        );
        assert_eq!(our_interface("wasi:cli/environment@0.2.0"), None);
        assert_eq!(our_interface("corral:scheduler-x/log@0.1.0"), None);
        assert_eq!(our_interface("corral:scheduler/log"), None);
    }
}
