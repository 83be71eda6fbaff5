//! The provider plugin host: sandboxed WebAssembly plugins implementing
//! `wit/provider.wit` (`corral:provider`), which the coordinator calls to create, list
//! and delete the machines its pools' nodes run on.
//!
//! Invariants:
//! - The sandbox is the scheduler plugins' ([`super::imports`], [`super::engine`]): only
//!   the programs and `host:port`s the manifest grants, its memory limit, call timeout
//!   and concurrent calls; a fresh store per call; a trap fails that call only. The load
//!   checks are the same ([`super::prepare`]), and a scheduler plugin named as a
//!   provider is refused saying so ([`super::engine::check_world`]).
//! - `wait.sleep` (provider plugins only) sleeps the call's own blocking thread, never
//!   past the call's deadline.
//! - Programs run on the coordinator's host as the coordinator's own user, never
//!   switched: a provider acts for the cluster, not for a person.
//! - A pool's secret (its API token) reaches the plugin only inside that call's
//!   [`PoolRef`]; it is never logged here, [`PoolRef`]'s `Debug` hides it, and the
//!   plugin's own log lines have it replaced by `[secret]`.
//! - Every call reports the HTTP requests it sent ([`ProviderOutcome::http_requests`]),
//!   so the coordinator can hold a pool to its API budget.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use wasmtime::component::Component;
use wasmtime::Engine;

use super::bindings::provider::corral::provider::wait;
use super::bindings::provider::exports::corral::provider::provider as wit;
use super::bindings::provider::ProviderPluginPre;
use super::convert::error_from_wit;
use super::engine::{self, Ticker};
use super::imports::{CallState, Granted, RunAs};
use super::{files, prepare, Engines, LoadContext, Manifest};
use crate::identity::User;
use corral_proto::job::{LoadFailure, PluginError};
use corral_proto::pool::{Machine, MachineState, ProviderInfo};

/// The package versions this host serves.
const VERSION_PREFIX: &str = "0.1.";

/// The pool a call is for (the WIT `pool` record).
#[derive(Clone)]
pub struct PoolRef {
    pub name: String,
    /// The pool's `[template]`, sorted by key.
    pub template: BTreeMap<String, String>,
    /// Read from the pool's `secret_file`.
    pub secret: Option<Arc<str>>,
}

impl std::fmt::Debug for PoolRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolRef")
            .field("name", &self.name)
            .field("template", &self.template)
            .field("secret", &self.secret.as_ref().map(|_| "[secret]"))
            .finish()
    }
}

/// One export call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderCall {
    Create { node: String, user_data: String },
    Delete { id: String },
    List,
    Status { id: String },
}

impl ProviderCall {
    pub fn export(&self) -> &'static str {
        match self {
            ProviderCall::Create { .. } => "create",
            ProviderCall::Delete { .. } => "delete",
            ProviderCall::List => "list",
            ProviderCall::Status { .. } => "status",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderReply {
    /// `create`: the provider's id.
    Created(String),
    Deleted,
    Machines(Vec<Machine>),
    Machine(Option<Machine>),
}

/// Why a provider call did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderFailure {
    #[error("{0}")]
    Failed(PluginError),
    /// The API's rate limit: not the provider failing, a wait.
    #[error("rate limited for {}: {message}", humantime::format_duration(*retry_after))]
    RateLimited {
        retry_after: Duration,
        message: String,
    },
}

/// A call's result and what it cost.
#[derive(Debug, Clone)]
pub struct ProviderOutcome {
    pub result: Result<ProviderReply, ProviderFailure>,
    /// HTTP requests the call sent.
    pub http_requests: u32,
    pub elapsed: Duration,
}

/// A loaded provider plugin, as the API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderDetails {
    pub info: ProviderInfo,
    pub digest: String,
    pub wasm: PathBuf,
    pub manifest: PathBuf,
    pub warnings: Vec<String>,
}

struct Loaded {
    granted: Arc<Granted>,
    pre: ProviderPluginPre<CallState>,
    details: ProviderDetails,
    permits: Arc<Semaphore>,
}

struct Inner {
    plugins: BTreeMap<String, Loaded>,
    /// The coordinator's own user, whom programs run as.
    me: User,
    _ticker: Option<Ticker>,
}

/// The coordinator's loaded provider plugins. Cheap to share.
#[derive(Clone)]
pub struct ProviderHost {
    inner: Arc<Inner>,
}

impl ProviderHost {
    /// Loads the provider plugins `names` from `dir` (`NAME.wasm` and `NAME.toml`), bare
    /// program names looked up on `path_var` (the coordinator's `PATH` when `None`). A
    /// plugin that fails to load is reported and does not stop the others.
    pub fn load(
        dir: &Path,
        names: &[String],
        cache_dir: Option<&Path>,
        path_var: Option<&std::ffi::OsStr>,
    ) -> (ProviderHost, Vec<LoadFailure>) {
        if names.is_empty() {
            return (ProviderHost::empty(), Vec::new());
        }
        let limits: Vec<_> = names
            .iter()
            .filter_map(|n| Manifest::load(&files(dir, n).1).ok())
            .map(|m| m.limits)
            .collect();
        let fail_all = |message: String| {
            let failures = names
                .iter()
                .map(|name| LoadFailure {
                    name: name.clone(),
                    message: message.clone(),
                })
                .collect();
            (ProviderHost::empty(), failures)
        };
        let (engine, ticker, engine_key, cache) = match Engines::start(&limits, cache_dir) {
            Ok(started) => started.parts(),
            Err(message) => return fail_all(message),
        };
        let own_path = std::env::var_os("PATH");
        let cx = LoadContext {
            engine: &engine,
            engine_key: &engine_key,
            cache: cache.as_ref(),
            path_var: path_var.or(own_path.as_deref()),
        };
        let (plugins, failures) = super::load_each(names, "provider", |name| {
            let (wasm, manifest) = files(dir, name);
            let loaded = load_provider(&cx, &wasm, &manifest, name)?;
            for w in &loaded.details.warnings {
                tracing::warn!(provider = %name, warning = %w, "provider plugin loaded with a warning");
            }
            tracing::info!(
                provider = %name,
                version = %loaded.details.info.version,
                digest = %loaded.details.digest,
                "provider plugin loaded"
            );
            Ok(loaded)
        });
        let host = ProviderHost {
            inner: Arc::new(Inner {
                plugins,
                me: super::agent_user(),
                _ticker: Some(ticker),
            }),
        };
        (host, failures)
    }

    pub fn empty() -> ProviderHost {
        ProviderHost {
            inner: Arc::new(Inner {
                plugins: BTreeMap::new(),
                me: super::agent_user(),
                _ticker: None,
            }),
        }
    }

    /// A loaded plugin's details.
    pub fn details(&self, plugin: &str) -> Option<&ProviderDetails> {
        self.inner.plugins.get(plugin).map(|p| &p.details)
    }

    /// Calls one export of `plugin` for `pool` in a fresh store, on a blocking thread.
    pub async fn call(&self, plugin: &str, pool: &PoolRef, call: ProviderCall) -> ProviderOutcome {
        let started = Instant::now();
        let done = |result, http_requests| ProviderOutcome {
            result,
            http_requests,
            elapsed: started.elapsed(),
        };
        let Some(p) = self.inner.plugins.get(plugin) else {
            return done(
                Err(ProviderFailure::Failed(PluginError::NotLoaded(
                    plugin.into(),
                ))),
                0,
            );
        };
        let export = call.export();
        let timeout = p.granted.manifest.limits.call_timeout;
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return done(
                Err(ProviderFailure::Failed(PluginError::Plugin(format!(
                    "{plugin}.{export}: provider calls must be made from within the coordinator's tokio runtime"
                )))),
                0,
            );
        };
        let permit = match tokio::time::timeout(timeout, p.permits.clone().acquire_owned()).await
        {
            Ok(Ok(permit)) => permit,
            _ => {
                return done(
                    Err(ProviderFailure::Failed(PluginError::Timeout(format!(
                        "{plugin}.{export}: {} calls already running did not leave room within {} (limits.concurrent_calls)",
                        p.granted.manifest.limits.concurrent_calls,
                        humantime::format_duration(timeout)
                    )))),
                    0,
                )
            }
        };
        let granted = p.granted.clone();
        let pre = p.pre.clone();
        let run_as = RunAs::user(self.inner.me.clone(), self.inner.me.uid);
        let pool = pool.clone();
        let task = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            call_blocking(&pre, &granted, runtime, run_as, &pool, call)
        });
        let (result, http_requests) =
            match tokio::time::timeout(timeout + Duration::from_secs(1), task).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => (
                    Err(ProviderFailure::Failed(PluginError::Plugin(format!(
                        "{plugin}.{export}: the call's thread failed: {e}"
                    )))),
                    0,
                ),
                Err(_) => (
                    Err(ProviderFailure::Failed(PluginError::Timeout(format!(
                        "{plugin}.{export} did not return within {} (limits.call_timeout)",
                        humantime::format_duration(timeout)
                    )))),
                    0,
                ),
            };
        let outcome = done(result, http_requests);
        let elapsed_ms = outcome.elapsed.as_secs_f64() * 1000.0;
        match &outcome.result {
            Ok(_) => tracing::debug!(
                provider = plugin,
                export,
                elapsed_ms,
                http_requests,
                "provider call"
            ),
            Err(e) => {
                tracing::info!(provider = plugin, export, elapsed_ms, http_requests, error = %e, "provider call failed")
            }
        }
        outcome
    }
}

/// Validates a provider plugin `wasm` against `wit/provider.wit` and its manifest
/// (`manifest`, or the `.toml` beside it) as the coordinator would load it, without a
/// cache and without calling anything but `info`. For `corral plugin check`.
pub fn check_file(wasm: &Path, manifest: Option<&Path>) -> anyhow::Result<ProviderDetails> {
    let manifest_file = manifest
        .map(Path::to_path_buf)
        .unwrap_or_else(|| wasm.with_extension("toml"));
    let m = Manifest::load(&manifest_file)?;
    if manifest.is_none() {
        let stem = wasm.file_stem().map(|s| s.to_string_lossy().into_owned());
        if stem.as_deref() != Some(m.name.as_str()) {
            return Err(m
                .error(
                    "plugin.name",
                    format!(
                        "{:?} does not match the plugin's file name {:?}; NAME.wasm, NAME.toml and plugin.name share one name",
                        m.name,
                        stem.unwrap_or_default()
                    ),
                )
                .into());
        }
    }
    let (engine, _ticker, engine_key, _) = Engines::start(std::slice::from_ref(&m.limits), None)
        .map_err(anyhow::Error::msg)?
        .parts();
    let path_var = std::env::var_os("PATH");
    let cx = LoadContext {
        engine: &engine,
        engine_key: &engine_key,
        cache: None,
        path_var: path_var.as_deref(),
    };
    load_provider(&cx, wasm, &manifest_file, &m.name).map(|l| l.details)
}

fn load_provider(
    cx: &LoadContext<'_>,
    wasm: &Path,
    manifest_file: &Path,
    name: &str,
) -> anyhow::Result<Loaded> {
    let p = prepare(
        cx,
        wasm,
        manifest_file,
        Some(name),
        super::manifest::PluginKind::Provider,
    )?;
    let pre = link(cx.engine, &p.component, &p.granted).map_err(|e| {
        anyhow::anyhow!(
            "{}: does not fit the coordinator's provider interface (corral:provider@{VERSION_PREFIX}x): {e:#}",
            wasm.display()
        )
    })?;
    let run_as = RunAs::agent();
    let info = {
        let mut store = engine::new_store(cx.engine, &p.granted, None, run_as, None);
        let plugin = pre.instantiate(&mut store).map_err(|e| {
            anyhow::anyhow!(
                "{}: {}",
                wasm.display(),
                engine::failure(&p.granted, &store, "info", e)
            )
        })?;
        plugin
            .corral_provider_provider()
            .call_info(&mut store)
            .map_err(|e| {
                anyhow::anyhow!(
                    "{}: {}",
                    wasm.display(),
                    engine::failure(&p.granted, &store, "info", e)
                )
            })?
    };
    if info.name != name {
        anyhow::bail!(
            "{}: info().name is {:?} but its manifest {} says plugin.name = {name:?}; they must agree",
            wasm.display(),
            info.name,
            manifest_file.display()
        );
    }
    let permits = Arc::new(Semaphore::new(
        p.granted.manifest.limits.concurrent_calls as usize,
    ));
    Ok(Loaded {
        details: ProviderDetails {
            info: ProviderInfo {
                name: info.name,
                version: info.version,
                provider: info.provider,
                hourly_billing: info.hourly_billing,
            },
            digest: p.digest,
            wasm: wasm.to_path_buf(),
            manifest: manifest_file.to_path_buf(),
            warnings: p.warnings.into_iter().chain(p.defaulted).collect(),
        },
        granted: p.granted,
        pre,
        permits,
    })
}

impl wait::Host for CallState {
    fn sleep(&mut self, ms: u32) {
        let left = self.deadline.saturating_duration_since(Instant::now());
        std::thread::sleep(Duration::from_millis(u64::from(ms)).min(left));
    }
}

fn link(
    engine: &Engine,
    component: &Component,
    granted: &Granted,
) -> anyhow::Result<ProviderPluginPre<CallState>> {
    let mut linker = engine::linker(engine, &granted.manifest)?;
    wait::add_to_linker::<CallState, wasmtime::component::HasSelf<CallState>>(&mut linker, |s| s)
        .map_err(engine::wt)?;
    let pre = linker.instantiate_pre(component).map_err(engine::wt)?;
    ProviderPluginPre::new(pre).map_err(engine::wt)
}

fn call_blocking(
    pre: &ProviderPluginPre<CallState>,
    granted: &Arc<Granted>,
    runtime: tokio::runtime::Handle,
    run_as: RunAs,
    pool: &PoolRef,
    call: ProviderCall,
) -> (Result<ProviderReply, ProviderFailure>, u32) {
    let export = call.export();
    let mut store = engine::new_store(
        pre.engine(),
        granted,
        Some(runtime),
        run_as,
        pool.secret.clone(),
    );
    let trapped = |store: &wasmtime::Store<CallState>, e| {
        ProviderFailure::Failed(engine::failure(granted, store, export, e))
    };
    let plugin = match pre.instantiate(&mut store) {
        Ok(p) => p,
        Err(e) => return (Err(trapped(&store, e)), 0),
    };
    let wit_pool = wit::Pool {
        name: pool.name.clone(),
        template: pool
            .template
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        secret: pool.secret.as_deref().map(str::to_string),
    };
    let p = plugin.corral_provider_provider();
    let answer = match call {
        ProviderCall::Create { node, user_data } => p
            .call_create(
                &mut store,
                &wit_pool,
                &wit::CreateRequest { node, user_data },
            )
            .map(|r| r.map(ProviderReply::Created)),
        ProviderCall::Delete { id } => p
            .call_delete(&mut store, &wit_pool, &id)
            .map(|r| r.map(|()| ProviderReply::Deleted)),
        ProviderCall::List => p.call_list(&mut store, &wit_pool).map(|r| {
            r.map(|v| ProviderReply::Machines(v.into_iter().map(machine_from_wit).collect()))
        }),
        ProviderCall::Status { id } => p
            .call_status(&mut store, &wit_pool, &id)
            .map(|r| r.map(|m| ProviderReply::Machine(m.map(machine_from_wit)))),
    };
    let requests = store.data().http_requests;
    let result = match pool.secret.as_deref().filter(|s| !s.is_empty()) {
        Some(secret) => result_redacted(answer_to_result(answer, &store, granted, export), secret),
        None => answer_to_result(answer, &store, granted, export),
    };
    (result, requests)
}

/// What a plugin's error said, with `secret` (an API token an API echoed back)
/// replaced by `[secret]`: errors reach events and the API.
fn result_redacted(
    r: Result<ProviderReply, ProviderFailure>,
    secret: &str,
) -> Result<ProviderReply, ProviderFailure> {
    let clean = |m: String| m.replace(secret, "[secret]");
    r.map_err(|e| match e {
        ProviderFailure::Failed(p) => ProviderFailure::Failed(match p {
            PluginError::Denied(m) => PluginError::Denied(clean(m)),
            PluginError::Invalid(m) => PluginError::Invalid(clean(m)),
            PluginError::Backend(m) => PluginError::Backend(clean(m)),
            PluginError::Timeout(m) => PluginError::Timeout(clean(m)),
            PluginError::Unsupported(m) => PluginError::Unsupported(clean(m)),
            PluginError::Plugin(m) => PluginError::Plugin(clean(m)),
            PluginError::NotLoaded(m) => PluginError::NotLoaded(m),
        }),
        ProviderFailure::RateLimited {
            retry_after,
            message,
        } => ProviderFailure::RateLimited {
            retry_after,
            message: clean(message),
        },
    })
}

type Answer = wasmtime::Result<Result<ProviderReply, wit::ProviderError>>;

fn answer_to_result(
    answer: Answer,
    store: &wasmtime::Store<CallState>,
    granted: &Granted,
    export: &str,
) -> Result<ProviderReply, ProviderFailure> {
    match answer {
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(wit::ProviderError::Failed(e))) => Err(ProviderFailure::Failed(error_from_wit(e))),
        Ok(Err(wit::ProviderError::RateLimited(r))) => Err(ProviderFailure::RateLimited {
            retry_after: Duration::from_millis(r.retry_after_ms),
            message: r.message,
        }),
        Err(e) => Err(ProviderFailure::Failed(engine::failure(
            granted, store, export, e,
        ))),
    }
}

fn machine_from_wit(m: wit::Machine) -> Machine {
    Machine {
        id: m.id,
        node: m.node,
        state: match m.state {
            wit::MachineState::Pending => MachineState::Pending,
            wit::MachineState::Running => MachineState::Running,
            wit::MachineState::Stopping => MachineState::Stopping,
            wit::MachineState::Off => MachineState::Off,
            wit::MachineState::Deleting => MachineState::Deleting,
            wit::MachineState::Failed => MachineState::Failed,
            wit::MachineState::Unknown => MachineState::Unknown,
        },
        native_state: m.native_state,
        created_ms: m.created_ms,
        message: m.message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pools_secret_never_shows_in_its_debug_form() {
        let pool = PoolRef {
            name: "gpu".into(),
            template: BTreeMap::new(),
            secret: Some("hunter2-token".into()),
        };
        let shown = format!("{pool:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("[secret]"), "{shown}");
    }

    #[test]
    fn a_secret_an_api_echoed_into_an_error_is_hidden() {
        let r = result_redacted(
            Err(ProviderFailure::Failed(PluginError::Backend(
                "401: token hunter2-token is invalid".into(),
            ))),
            "hunter2-token",
        );
        assert_eq!(
            r,
            Err(ProviderFailure::Failed(PluginError::Backend(
                "401: token [secret] is invalid".into()
            )))
        );
    }

    #[test]
    fn an_empty_provider_host_refuses_calls_naming_the_plugin() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let host = ProviderHost::empty();
        let pool = PoolRef {
            name: "gpu".into(),
            template: BTreeMap::new(),
            secret: None,
        };
        let out = rt.block_on(host.call("hetzner", &pool, ProviderCall::List));
        assert_eq!(
            out.result,
            Err(ProviderFailure::Failed(PluginError::NotLoaded(
                "hetzner".into()
            )))
        );
    }
}
