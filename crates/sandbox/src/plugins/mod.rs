//! The plugin host: sandboxed WebAssembly scheduler plugins (wasmtime component model),
//! and through [`provider`] the coordinator's provider plugins, in the same sandbox.
//!
//! A plugin is a component implementing `wit/scheduler.wit` (world `plugin`), shipped as
//! `NAME.wasm` with its manifest `NAME.toml` ([`manifest`]) in `[plugins] dir`. The agent
//! loads the plugins listed in `[plugins] enable` at start, announces them to the
//! coordinator ([`PluginHost::loaded`]) and runs the calls routed to it
//! ([`PluginHost::call`]).
//!
//! Invariants:
//! - A plugin reaches only what its manifest grants: the programs, the `host:port`s, its
//!   own config values, the agent's log and the clock ([`imports`]). Anything else is a
//!   `denied` error value, never a trap; a component importing an interface it was not
//!   granted fails at load, naming the interface ([`engine::check_imports`]).
//! - Every call runs in a fresh store, bounded by the plugin's memory limit and an epoch
//!   deadline. A trap, a timeout or a blown memory limit fails that call with a message
//!   saying which (as [`PluginError::Plugin`] or [`PluginError::Timeout`]); the agent,
//!   the plugin's next call and every other plugin are unaffected.
//! - A call never blocks the runtime's other tasks. On a multi-threaded runtime (the
//!   agent's, the coordinator's) it runs on the calling task's own thread inside
//!   [`tokio::task::block_in_place`]: tokio hands that worker's other tasks to another
//!   thread, and the call starts at once instead of waiting for a blocking thread to
//!   wake up and then for the caller to be woken in turn (those two wake-ups were most
//!   of a short call's cost: see BENCHMARKS.md). The trade-off: the caller waits for
//!   the call to end, so the call's bound is its epoch deadline and the deadlines its
//!   host calls honour (`imports.rs`), not a separate wall clock. Elsewhere (a
//!   current-thread runtime, as in tests) the call runs on a blocking thread, with a
//!   wall-clock timeout of `limits.call_timeout` plus a grace second around it.
//! - A plugin that fails to load is reported ([`LoadFailure`], naming the file and what
//!   to do) and does not stop the others or the agent.
//! - Load checks, in order: the manifest parses, its `plugin.name` is the file name and
//!   its `plugin.kind` is what this host loads (`scheduler` here, `provider` in
//!   [`provider`]); the component is valid (compiled, or taken from the disk cache,
//!   [`cache`]) and exports that kind's world; its imports are granted; it links
//!   against this host's WIT; its `info().name` is the manifest's name. [`check_file`]
//!   runs the same checks for `corral plugin check` (scheduler plugins).
//! - Granted programs are resolved once, at load, on the agent's `PATH` (or the `PATH`
//!   given to [`PluginHost::load_on_path`]). One not found still lets the plugin
//!   load: calls to it are `denied` saying it was not found, and the load reports it as
//!   a warning ([`PluginDetails::warnings`], also logged) naming the manifest and key.
//!   An operator would rather keep `sbatch` working on a node without `sacct` than lose
//!   the whole plugin, and a plugin can fall back when an optional program is missing.
//!   A granted host name that does not resolve is a warning the same way; `[limits]`
//!   keys left to their defaults are listed apart ([`PluginDetails::defaulted`]), as
//!   they are a choice rather than a fault ([`manifest`] has the rules).
//! - At most `limits.concurrent_calls` calls of one plugin run at once (each holds up to
//!   `limits.memory_mb`); further calls wait, within their own timeout.

mod bindings;
pub mod cache;
mod convert;
mod engine;
mod imports;
pub mod manifest;
pub mod provider;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use wasmtime::Engine;

pub use cache::ComponentSource;
pub use manifest::{Limits, Manifest, ManifestError};

use crate::identity::{RunAsError, RunAsPolicy, User};
use corral_base::config::ConfigIssue;
use corral_proto::job::{Grants, LoadFailure, LoadedPlugin, PluginCall, PluginError, PluginReply};
use engine::{Instance, Ticker};
use imports::{Granted, RunAs};

/// The agent's `[plugins]` config section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    /// Where `NAME.wasm` and its manifest `NAME.toml` live.
    pub dir: Option<PathBuf>,
    /// Which plugins to load from `dir`, by name. Empty: none.
    pub enable: Vec<String>,
    /// Where compiled components are cached. None: no disk cache.
    pub cache_dir: Option<PathBuf>,
    /// Who `info`, `render`, `status`, `list` and `node-state` run as when the agent is
    /// root (`submit`, `cancel` and `logs` run as the job's owner; see
    /// [`crate::identity`]). The
    /// packages create the `corral` system user.
    pub service_user: String,
    /// Job owners with a uid under this are refused (system accounts).
    pub min_job_uid: u32,
    /// Whether root may own jobs.
    pub allow_root_jobs: bool,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            dir: None,
            enable: Vec::new(),
            cache_dir: None,
            service_user: "corral".into(),
            min_job_uid: 1000,
            allow_root_jobs: false,
        }
    }
}

impl PluginsConfig {
    /// `[plugins]`: names are plain words, listed once, and need a directory to load from.
    /// Whether each plugin's files exist is *not* checked here: a plugin that cannot load is
    /// reported by the agent (and to the coordinator) without keeping the agent from running.
    pub fn validate(&self) -> Result<(), ConfigIssue> {
        let p = self;
        let issue = |key: &str, message: String| ConfigIssue {
            key: key.into(),
            message,
        };
        let mut seen = std::collections::HashSet::new();
        for name in &p.enable {
            let plain = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !plain {
                return Err(issue(
                    "plugins.enable",
                    format!("{name:?} is not a plugin name; use the file name without .wasm (letters, digits, '-' and '_'), e.g. \"slurm\""),
                ));
            }
            if !seen.insert(name) {
                return Err(issue("plugins.enable", format!("{name:?} is listed twice")));
            }
        }
        if !manifest::valid_user_name(&p.service_user) {
            return Err(issue(
                "plugins.service_user",
                format!("{:?} is not a user name; name an unprivileged local user (the packages create \"corral\")", p.service_user),
            ));
        }
        if !p.enable.is_empty() && p.dir.is_none() {
            return Err(issue(
                "plugins.dir",
                "required when plugins.enable lists plugins: the directory holding NAME.wasm and NAME.toml".into(),
            ));
        }
        Ok(())
    }
}

/// A loaded plugin in full: what is announced, and what the operator may want to know.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginDetails {
    /// What the agent announces to the coordinator.
    pub loaded: LoadedPlugin,
    pub wasm: PathBuf,
    pub manifest: PathBuf,
    pub limits: Limits,
    /// Where the compiled component came from.
    pub source: ComponentSource,
    /// How long loading took (read, compile or cache, link, `info`).
    pub load_ms: f64,
    /// Problems that did not stop the load (a granted program not found, a granted host
    /// name that does not resolve), each naming the manifest and key.
    pub warnings: Vec<String>,
    /// The `[limits]` keys the manifest leaves to their defaults, each naming the
    /// manifest, the key and the default. Printed by `corral plugin check`.
    #[serde(default)]
    pub defaulted: Vec<String>,
}

impl PluginDetails {
    /// Every load warning: [`PluginDetails::warnings`], then [`PluginDetails::defaulted`].
    pub fn all_warnings(&self) -> impl Iterator<Item = &str> {
        self.warnings
            .iter()
            .chain(&self.defaulted)
            .map(String::as_str)
    }
}

/// One loaded plugin.
struct Plugin {
    instance: Arc<Instance>,
    details: PluginDetails,
    permits: Arc<Semaphore>,
}

struct Inner {
    plugins: BTreeMap<String, Plugin>,
    /// Whom calls run as ([`crate::identity`]).
    policy: RunAsPolicy,
    /// The user this agent runs as.
    agent: User,
    /// Advances the engine's epoch while the host lives.
    _ticker: Option<Ticker>,
}

/// The loaded plugins of one agent. Cheap to share (`Arc` inside); calls never block the
/// caller's runtime (see the module doc).
#[derive(Clone)]
pub struct PluginHost {
    inner: Arc<Inner>,
}

/// Extra wall-clock time a call gets beyond `limits.call_timeout` before the caller stops
/// waiting; the epoch deadline normally ends it first, with a better message.
const WALL_GRACE: Duration = Duration::from_secs(1);

/// The files of plugin `name` in `dir`.
fn files(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{name}.wasm")),
        dir.join(format!("{name}.toml")),
    )
}

/// Where to find what a load needs.
pub(crate) struct LoadContext<'a> {
    engine: &'a Engine,
    engine_key: &'a str,
    cache: Option<&'a cache::Cache>,
    /// Where bare program names are looked up (the agent's `PATH`).
    path_var: Option<&'a std::ffi::OsStr>,
}

/// Loads each of `names` once with `load`, in order: the loaded by name, and a failure
/// (logged, naming the plugin) for each that did not load. One plugin's failure never
/// stops the others.
pub(crate) fn load_each<T>(
    names: &[String],
    what: &str,
    mut load: impl FnMut(&str) -> anyhow::Result<T>,
) -> (BTreeMap<String, T>, Vec<LoadFailure>) {
    let mut loaded = BTreeMap::new();
    let mut failures: Vec<LoadFailure> = Vec::new();
    for name in names {
        if loaded.contains_key(name) || failures.iter().any(|f| &f.name == name) {
            continue;
        }
        match load(name) {
            Ok(t) => {
                loaded.insert(name.clone(), t);
            }
            Err(e) => {
                let message = format!("{e:#}");
                tracing::warn!(plugin = %name, kind = what, error = %message, "plugin failed to load");
                failures.push(LoadFailure {
                    name: name.clone(),
                    message,
                });
            }
        }
    }
    (loaded, failures)
}

/// A started engine for a set of plugins: the engine sized for their limits, its epoch
/// ticker, the key its compiled code is cached under and the disk cache, if usable.
pub(crate) struct Engines {
    engine: Engine,
    ticker: Ticker,
    key: String,
    cache: Option<cache::Cache>,
}

impl Engines {
    /// A failure is the message to report for every plugin that was to be loaded. A
    /// cache directory that cannot be used is a warning: plugins compile in memory.
    pub(crate) fn start(limits: &[Limits], cache_dir: Option<&Path>) -> Result<Engines, String> {
        let engine = engine::new_engine(engine::Pool::for_limits(limits))
            .map_err(|e| format!("cannot start the WebAssembly engine: {e:#}"))?;
        let ticker = Ticker::start(&engine)
            .map_err(|e| format!("cannot start the plugin epoch thread: {e}"))?;
        let key = cache::engine_key(&engine);
        let cache = cache_dir.and_then(|d| match cache::Cache::open(d) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(dir = %d.display(), error = %e, "plugin cache unusable; compiling plugins in memory");
                None
            }
        });
        Ok(Engines {
            engine,
            ticker,
            key,
            cache,
        })
    }

    pub(crate) fn parts(self) -> (Engine, Ticker, String, Option<cache::Cache>) {
        (self.engine, self.ticker, self.key, self.cache)
    }
}

/// A component checked against its manifest and ready to link: what every load does
/// before the world-specific part (linking the scheduler or provider world, `info`).
pub(crate) struct Prepared {
    pub component: wasmtime::component::Component,
    pub granted: Arc<Granted>,
    pub grants: Grants,
    pub digest: String,
    pub source: ComponentSource,
    pub warnings: Vec<String>,
    pub defaulted: Vec<String>,
    pub started: Instant,
    /// Whether the component is mapped from its cache entry ([`cache`]).
    pub mapped: bool,
}

/// Reads, compiles (or takes from the cache) and checks the plugin in `wasm` against
/// `manifest_file`; `expect_name` is the name it was enabled under (the file name),
/// which the manifest must carry, and `kind` what the loader loads.
pub(crate) fn prepare(
    cx: &LoadContext<'_>,
    wasm: &Path,
    manifest_file: &Path,
    expect_name: Option<&str>,
    kind: manifest::PluginKind,
) -> anyhow::Result<Prepared> {
    let started = Instant::now();
    let manifest = Manifest::load(manifest_file)?;
    if manifest.kind != kind {
        let how = match manifest.kind {
            manifest::PluginKind::Provider => "the coordinator loads it for a pool (`provider = ...` under [pools.NAME]), not an agent's [plugins] enable",
            manifest::PluginKind::Scheduler => "agents load it through [plugins] enable; a pool's provider says kind = \"provider\"",
        };
        return Err(manifest
            .error(
                "plugin.kind",
                format!("this is a {} plugin: {how}", manifest.kind.as_str()),
            )
            .into());
    }
    if let Some(expected) = expect_name {
        if manifest.name != expected {
            return Err(manifest
                .error(
                    "plugin.name",
                    format!(
                        "{:?} does not match the plugin's file name {expected:?}; NAME.wasm, NAME.toml and plugin.name share one name",
                        manifest.name
                    ),
                )
                .into());
        }
    }
    let bytes = std::fs::read(wasm)
        .map_err(|e| anyhow::anyhow!("{}: cannot read the plugin: {e}", wasm.display()))?;
    let digest = cache::sha256_hex(&bytes);
    let (component, source, mapped) = match cx.cache {
        Some(c) => c.load(cx.engine, cx.engine_key, &manifest.name, &bytes, &digest),
        None => cache::compile(cx.engine, &bytes).map(|c| (c, ComponentSource::Compiled, false)),
    }
    .map_err(|e| {
        anyhow::anyhow!(
            "{}: not a valid WebAssembly component: {e:#}; build plugins with `cargo xtask plugins`",
            wasm.display()
        )
    })?;
    let world = match kind {
        manifest::PluginKind::Scheduler => engine::World::Scheduler,
        manifest::PluginKind::Provider => engine::World::Provider,
    };
    engine::check_world(cx.engine, &component, wasm, world)?;
    engine::check_imports(cx.engine, &component, wasm, &manifest)?;
    let programs = manifest::resolve_programs(&manifest, cx.path_var);
    let warnings: Vec<String> = programs
        .missing
        .iter()
        .map(|(_, e)| e.to_string())
        .chain(
            manifest::unresolved_hosts(&manifest)
                .iter()
                .map(ToString::to_string),
        )
        .collect();
    let defaulted: Vec<String> = manifest::defaulted_limits(&manifest)
        .iter()
        .map(ToString::to_string)
        .collect();
    let http = if manifest.hosts.is_empty() {
        None
    } else {
        Some(imports::http_client(manifest.hosts.clone()).map_err(|e| {
            anyhow::anyhow!(
                "plugin {}: cannot build its HTTP client: {e:#}",
                manifest.name
            )
        })?)
    };
    let grants = Grants {
        programs: programs
            .found
            .iter()
            .map(|(n, p)| (n.clone(), p.display().to_string()))
            .collect(),
        hosts: manifest.hosts.iter().map(ToString::to_string).collect(),
        config_keys: manifest.config.keys().cloned().collect(),
    };
    let name = manifest.name.clone();
    let base_env = imports::base_env(&manifest, |k| std::env::var(k).ok());
    let granted = Arc::new(Granted {
        name,
        manifest,
        programs,
        http,
        base_env,
    });
    Ok(Prepared {
        component,
        granted,
        grants,
        digest,
        source,
        warnings,
        defaulted,
        started,
        mapped,
    })
}

/// Loads one scheduler plugin (see [`prepare`]).
fn load_one(
    cx: &LoadContext<'_>,
    wasm: &Path,
    manifest_file: &Path,
    expect_name: Option<&str>,
) -> anyhow::Result<(Arc<Instance>, PluginDetails)> {
    let p = prepare(
        cx,
        wasm,
        manifest_file,
        expect_name,
        manifest::PluginKind::Scheduler,
    )?;
    let name = p.granted.name.clone();
    let limits = p.granted.manifest.limits.clone();
    let instance = Instance::new(cx.engine, &p.component, p.granted).map_err(|e| {
        anyhow::anyhow!(
            "{}: does not fit this agent's plugin interface (corral:scheduler@{}x): {e:#}",
            wasm.display(),
            engine::VERSION_PREFIX
        )
    })?;
    let info = instance
        .info()
        .map_err(|e| anyhow::anyhow!("{}: its info() call failed: {e}", wasm.display()))?;
    if info.name != name {
        anyhow::bail!(
            "{}: info().name is {:?} but its manifest {} says plugin.name = {name:?}; they must agree",
            wasm.display(),
            info.name,
            manifest_file.display()
        );
    }
    if p.mapped {
        cache::release_mapped_pages(&p.component);
    }
    let details = PluginDetails {
        loaded: LoadedPlugin {
            info,
            digest: p.digest,
            grants: p.grants,
        },
        wasm: wasm.to_path_buf(),
        manifest: manifest_file.to_path_buf(),
        limits,
        source: p.source,
        load_ms: p.started.elapsed().as_secs_f64() * 1000.0,
        warnings: p.warnings,
        defaulted: p.defaulted,
    };
    Ok((Arc::new(instance), details))
}

impl PluginHost {
    /// Loads every enabled plugin, its programs looked up on this process's `PATH`. A
    /// plugin that fails to load is reported in the second element and does not stop
    /// the others.
    pub fn load(cfg: &PluginsConfig) -> (PluginHost, Vec<LoadFailure>) {
        PluginHost::load_on_path(cfg, std::env::var_os("PATH").as_deref())
    }

    /// [`PluginHost::load`] with bare program names looked up on `path_var` instead of
    /// this process's `PATH`: what an agent started with that `PATH` would load. Tests
    /// put fake scheduler programs there without changing the test process's
    /// environment, which other threads read.
    pub fn load_on_path(
        cfg: &PluginsConfig,
        path_var: Option<&std::ffi::OsStr>,
    ) -> (PluginHost, Vec<LoadFailure>) {
        if cfg.enable.is_empty() {
            return (PluginHost::empty(), Vec::new());
        }
        let fail_all = |message: String| {
            let failures = cfg
                .enable
                .iter()
                .map(|name| LoadFailure {
                    name: name.clone(),
                    message: message.clone(),
                })
                .collect();
            (PluginHost::empty(), failures)
        };
        let Some(dir) = &cfg.dir else {
            return fail_all(
                "plugins.dir is not set: the directory holding NAME.wasm and NAME.toml".into(),
            );
        };
        // Manifests are read once more by each load; here only their limits count, to
        // size the engine's instance pool (a bad manifest is reported by its load).
        let limits: Vec<Limits> = cfg
            .enable
            .iter()
            .filter_map(|name| Manifest::load(&files(dir, name).1).ok())
            .map(|m| m.limits)
            .collect();
        let (engine, ticker, engine_key, cache) =
            match Engines::start(&limits, cfg.cache_dir.as_deref()) {
                Ok(started) => started.parts(),
                Err(message) => return fail_all(message),
            };
        let cx = LoadContext {
            engine: &engine,
            engine_key: &engine_key,
            cache: cache.as_ref(),
            path_var,
        };
        let (plugins, failures) = load_each(&cfg.enable, "plugin", |name| {
            let (wasm, manifest) = files(dir, name);
            let (instance, details) = load_one(&cx, &wasm, &manifest, Some(name))?;
            for w in &details.warnings {
                tracing::warn!(plugin = %name, warning = %w, "plugin loaded with a warning");
            }
            for d in &details.defaulted {
                tracing::debug!(plugin = %name, limit = %d, "plugin limit defaulted");
            }
            tracing::info!(
                plugin = %name,
                version = %details.loaded.info.version,
                digest = %details.loaded.digest,
                source = ?details.source,
                load_ms = details.load_ms,
                "plugin loaded"
            );
            let permits = Arc::new(Semaphore::new(details.limits.concurrent_calls as usize));
            Ok(Plugin {
                instance,
                details,
                permits,
            })
        });
        let host = PluginHost {
            inner: Arc::new(Inner {
                plugins,
                policy: policy(cfg),
                agent: agent_user(),
                _ticker: Some(ticker),
            }),
        };
        release_freed_memory();
        (host, failures)
    }

    /// A host with no plugins.
    pub fn empty() -> PluginHost {
        PluginHost {
            inner: Arc::new(Inner {
                plugins: BTreeMap::new(),
                policy: policy(&PluginsConfig::default()),
                agent: agent_user(),
                _ticker: None,
            }),
        }
    }

    /// What is loaded, as announced to the coordinator.
    pub fn loaded(&self) -> Vec<LoadedPlugin> {
        self.inner
            .plugins
            .values()
            .map(|p| p.details.loaded.clone())
            .collect()
    }

    /// What is loaded, in full (source, limits, load time, warnings).
    pub fn details(&self) -> Vec<PluginDetails> {
        self.inner
            .plugins
            .values()
            .map(|p| p.details.clone())
            .collect()
    }

    /// Calls one export of one plugin in a fresh store. `owner` is the user the job
    /// belongs to: `submit` and `cancel` run their programs as that user, `drain-node`
    /// and `resume-node` as the agent, the other exports (`node-state` among them) as the
    /// service user ([`crate::identity`] has the rule); a call whose user cannot be used
    /// is refused before the plugin runs.
    ///
    /// On a multi-threaded runtime the call runs in this task, on its thread (module
    /// doc): the runtime's other tasks go on, but this task's other futures (a
    /// `join!`, a `select!` or a timeout around the call) wait for it. Calls meant to
    /// overlap each get a task, as the agent gives every routed call.
    pub async fn call(
        &self,
        plugin: &str,
        call: PluginCall,
        owner: Option<&str>,
    ) -> Result<PluginReply, PluginError> {
        let p = self
            .inner
            .plugins
            .get(plugin)
            .ok_or_else(|| PluginError::NotLoaded(plugin.into()))?;
        let timeout = p.details.limits.call_timeout;
        let export = call.export();
        let started = Instant::now();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Err(PluginError::Plugin(format!(
                "{plugin}.{export}: plugin calls must be made from within the agent's tokio runtime"
            )));
        };
        let permit = match tokio::time::timeout(timeout, p.permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return Err(PluginError::Plugin(format!("plugin {plugin} is shutting down"))),
            Err(_) => {
                return Err(PluginError::Timeout(format!(
                    "{plugin}.{export}: {} calls already running did not leave room within {} (limits.concurrent_calls)",
                    p.details.limits.concurrent_calls,
                    humantime::format_duration(timeout)
                )))
            }
        };
        let inline = runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread;
        let run = {
            let (instance, inner) = (p.instance.clone(), self.inner.clone());
            let owner = owner.map(str::to_string);
            move || {
                let _permit = permit;
                // User lookups may block (NSS, LDAP): like the call, never on a thread
                // the runtime is using.
                let user = inner
                    .policy
                    .resolve(&call, owner.as_deref(), &inner.agent)
                    .map_err(|e| match e {
                        RunAsError::Owner(_) | RunAsError::Service(_) => {
                            PluginError::Invalid(e.to_string())
                        }
                        _ => PluginError::Denied(e.to_string()),
                    })?;
                let run_as = RunAs::user(user, inner.agent.uid);
                instance.call(call, Some(runtime), run_as)
            }
        };
        let result = if inline {
            tokio::task::block_in_place(run)
        } else {
            match tokio::time::timeout(timeout + WALL_GRACE, tokio::task::spawn_blocking(run))
                .await
            {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => Err(PluginError::Plugin(format!(
                    "{plugin}.{export}: the call's thread failed: {e}"
                ))),
                Err(_) => Err(PluginError::Timeout(format!(
                    "{plugin}.{export} did not return within {} (limits.call_timeout); its thread ends when its current host call does",
                    humantime::format_duration(timeout)
                ))),
            }
        };
        let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        match &result {
            Ok(_) => tracing::debug!(plugin, export, elapsed_ms, "plugin call"),
            Err(e @ (PluginError::Plugin(_) | PluginError::Timeout(_))) => {
                tracing::warn!(plugin, export, elapsed_ms, error = %e, "plugin call failed")
            }
            Err(e) => {
                tracing::debug!(plugin, export, elapsed_ms, error = %e, "plugin call returned an error")
            }
        }
        result
    }
}

/// Hands the memory a load freed back to the kernel. Loading allocates far more than
/// it keeps (a cold start's Cranelift compilation above all: tens of MB for the shipped
/// plugins), and glibc keeps freed memory in its arenas, the load thread's among them,
/// for reuse that never comes: an agent allocates little after start. Elsewhere (musl,
/// other allocators) there is nothing to do.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the kernel; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn policy(cfg: &PluginsConfig) -> RunAsPolicy {
    RunAsPolicy {
        service_user: cfg.service_user.clone(),
        min_job_uid: cfg.min_job_uid,
        allow_root_jobs: cfg.allow_root_jobs,
    }
}

/// The user this agent runs as; a uid without a passwd entry (some containers) is
/// taken as it is, named by its number.
pub(crate) fn agent_user() -> User {
    User::current().unwrap_or_else(|e| {
        let uid = nix::unistd::geteuid().as_raw();
        tracing::warn!(uid, error = %e, "the agent's own user has no passwd entry");
        User {
            name: uid.to_string(),
            uid,
            gid: nix::unistd::getegid().as_raw(),
            groups: Vec::new(),
            home: "/".into(),
            shell: "/bin/sh".into(),
        }
    })
}

/// Validates `wasm` against the WIT world and its manifest (`manifest`, or the `.toml`
/// beside it) and returns what loading it would announce. For `corral plugin check`.
pub fn check_file(wasm: &Path, manifest: Option<&Path>) -> anyhow::Result<LoadedPlugin> {
    check_file_details(wasm, manifest).map(|d| d.loaded)
}

/// [`check_file`] with everything a load reports (warnings, defaulted limits, load time),
/// programs looked up on this process's `PATH`. No disk cache is used or written.
/// Without an explicit manifest, the wasm's file name must be the plugin's name, as it
/// must be in `[plugins] dir`.
pub fn check_file_details(wasm: &Path, manifest: Option<&Path>) -> anyhow::Result<PluginDetails> {
    let (manifest_file, expect_name) = match manifest {
        Some(m) => (m.to_path_buf(), None),
        None => (
            wasm.with_extension("toml"),
            wasm.file_stem().map(|s| s.to_string_lossy().into_owned()),
        ),
    };
    let limits = Manifest::load(&manifest_file)
        .map(|m| m.limits)
        .unwrap_or_default();
    let engine = engine::new_engine(engine::Pool::for_limits([&limits]))?;
    // The epoch must advance for call timeouts to fire during the `info` check.
    let _ticker = Ticker::start(&engine)?;
    let engine_key = cache::engine_key(&engine);
    let path_var = std::env::var_os("PATH");
    let cx = LoadContext {
        engine: &engine,
        engine_key: &engine_key,
        cache: None,
        path_var: path_var.as_deref(),
    };
    load_one(&cx, wasm, &manifest_file, expect_name.as_deref()).map(|(_, d)| d)
}

/// Timings of the host's own work, for `corral-bench plugin`. Compiled only with the
/// `bench` feature, which `corral-bench` turns on: the daemon ships without it.
#[cfg(feature = "bench")]
pub mod bench {
    use std::path::Path;
    use std::time::{Duration, Instant};

    use super::*;

    /// One plugin loaded outside an agent, to time calls and loads.
    pub struct Bench {
        instance: Arc<Instance>,
        _ticker: Ticker,
    }

    /// How long a load took and where the component came from.
    pub struct LoadTiming {
        pub elapsed: Duration,
        pub source: ComponentSource,
    }

    impl Bench {
        /// Loads `wasm` with its manifest beside it, with a disk cache in `cache_dir`
        /// (each call makes a fresh engine, as an agent start does).
        pub fn load(wasm: &Path, cache_dir: Option<&Path>) -> anyhow::Result<(Bench, LoadTiming)> {
            let limits = Manifest::load(&wasm.with_extension("toml"))?.limits;
            let engine = engine::new_engine(engine::Pool::for_limits([&limits]))?;
            let ticker = Ticker::start(&engine)?;
            let engine_key = cache::engine_key(&engine);
            let cache = cache_dir.map(cache::Cache::open).transpose()?;
            let path_var = std::env::var_os("PATH");
            let cx = LoadContext {
                engine: &engine,
                engine_key: &engine_key,
                cache: cache.as_ref(),
                path_var: path_var.as_deref(),
            };
            let started = Instant::now();
            let name = wasm.file_stem().map(|s| s.to_string_lossy().into_owned());
            let (instance, details) =
                load_one(&cx, wasm, &wasm.with_extension("toml"), name.as_deref())?;
            let elapsed = started.elapsed();
            Ok((
                Bench {
                    instance,
                    _ticker: ticker,
                },
                LoadTiming {
                    elapsed,
                    source: details.source,
                },
            ))
        }

        /// One `info` call in a fresh store, on this thread (what every call pays).
        pub fn call_info(&self) -> Result<(), PluginError> {
            self.instance
                .call(PluginCall::Info, None, RunAs::agent())
                .map(|_| ())
        }

        /// A fresh store and instance without a call (the part of a call's cost that
        /// is instantiation).
        pub fn instantiate_only(&self) -> Result<(), PluginError> {
            self.instance.instantiate_only()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_host_has_nothing_loaded_and_refuses_calls_by_name() {
        let host = PluginHost::empty();
        assert!(host.loaded().is_empty());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let err = rt
            .block_on(host.call("slurm", PluginCall::Info, None))
            .unwrap_err();
        assert_eq!(err, PluginError::NotLoaded("slurm".into()));
    }

    #[test]
    fn plugins_that_cannot_load_are_reported_each_naming_its_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bad.toml"), "[plugin]\nname = \"bad\"\n").unwrap();
        std::fs::write(dir.path().join("bad.wasm"), b"\0asm not really").unwrap();
        std::fs::write(
            dir.path().join("other.toml"),
            "[plugin]\nname = \"wrong\"\n",
        )
        .unwrap();
        let cfg = PluginsConfig {
            dir: Some(dir.path().to_path_buf()),
            enable: vec!["missing".into(), "bad".into(), "other".into()],
            ..PluginsConfig::default()
        };
        let (host, failures) = PluginHost::load(&cfg);
        assert!(host.loaded().is_empty());
        let names: Vec<&str> = failures.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["missing", "bad", "other"]);
        assert!(
            failures[0].message.contains("missing.toml"),
            "{}",
            failures[0].message
        );
        assert!(
            failures[0].message.contains("needs its NAME.toml"),
            "{}",
            failures[0].message
        );
        assert!(
            failures[1]
                .message
                .contains("bad.wasm: not a valid WebAssembly component"),
            "{}",
            failures[1].message
        );
        assert!(
            failures[2]
                .message
                .contains("other.toml: key `plugin.name`"),
            "{}",
            failures[2].message
        );
    }

    #[test]
    fn enabling_plugins_without_a_directory_fails_each_with_the_key_to_set() {
        let cfg = PluginsConfig {
            dir: None,
            enable: vec!["slurm".into()],
            ..PluginsConfig::default()
        };
        let (_, failures) = PluginHost::load(&cfg);
        assert_eq!(failures.len(), 1);
        assert!(failures[0].message.contains("plugins.dir"));
    }
}
