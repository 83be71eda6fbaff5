//! Provider plugins (`wit/provider.wit`, SDK feature `provider`): what creates, lists and
//! deletes the machines a pool's nodes run on.
//!
//! A provider plugin implements [`Provider`] (associated functions that take a
//! [`Backend`], as [`crate::Scheduler`] does) and exports it with
//! `corral_plugin_sdk::export_provider!(MyProvider);`. Everything a call needs about its
//! pool (template, secret) arrives in the call's [`Pool`], so one plugin serves any
//! number of pools, and native tests drive it with [`crate::testing::Script`].
//!
//! Invariants:
//! - `delete` is idempotent (a machine already gone is `Ok`), and `status` answers
//!   `None` for an id the provider does not know: the coordinator's policy retries both
//!   freely.
//! - A rate limit is [`ProviderError::RateLimited`] with the wait the API asked for, not
//!   a failure: the coordinator waits it out without counting it against the provider.
//! - The secret is never put into a log line or an error message by these helpers
//!   ([`bearer`] builds the header, nothing else sees it); the host removes it from the
//!   plugin's log lines as well.

#[doc(hidden)]
pub mod provider_world {
    wit_bindgen::generate!({
        world: "corral:provider/provider-plugin",
        path: ["../../wit/scheduler.wit", "../../wit/provider.wit"],
        with: {
            "corral:scheduler/types@0.2.0": crate::corral::scheduler::types,
            "corral:scheduler/process@0.2.0": crate::corral::scheduler::process,
            "corral:scheduler/http@0.2.0": crate::corral::scheduler::http,
            "corral:scheduler/log@0.2.0": crate::corral::scheduler::log,
            "corral:scheduler/config@0.2.0": crate::corral::scheduler::config,
            "corral:scheduler/clock@0.2.0": crate::corral::scheduler::clock,
        },
        pub_export_macro: true,
        export_macro_name: "__export_provider_component",
        default_bindings_module: "corral_plugin_sdk::provider::provider_world",
        additional_derives: [PartialEq, Eq],
    });
}

use crate::{Backend, Error, Host, Request, Response};
pub use provider_world::exports::corral::provider::provider::{
    CreateRequest, Machine, MachineState, Pool, ProviderError, ProviderInfo, RateLimit,
};

/// Exports a [`Provider`] as the component's `provider` interface:
/// `corral_plugin_sdk::export_provider!(MyProvider);` at the plugin crate's root. Only
/// on wasm, as [`crate::export_plugin!`].
#[macro_export]
macro_rules! export_provider {
    ($plugin:ident) => {
        #[cfg(target_arch = "wasm32")]
        $crate::provider::provider_world::__export_provider_component!($plugin);
    };
}

/// A provider plugin. Export one with `corral_plugin_sdk::export_provider!(MyProvider);`.
pub trait Provider {
    /// What the plugin is; `b` reads its manifest's `[config]` (a plugin whose billing
    /// depends on the site says so there).
    fn info(b: &dyn Backend) -> ProviderInfo;
    /// Creates a machine for `req.node` from the pool's template; the provider's id once
    /// the provider accepted it (its create action finished, where the API has actions).
    fn create(b: &dyn Backend, pool: &Pool, req: &CreateRequest) -> Result<String, ProviderError>;
    /// Deletes a machine; one already gone is `Ok`.
    fn delete(b: &dyn Backend, pool: &Pool, id: &str) -> Result<(), ProviderError>;
    /// The pool's machines.
    fn list(b: &dyn Backend, pool: &Pool) -> Result<Vec<Machine>, ProviderError>;
    /// One machine; `None` when the provider knows no such id. By default, found in
    /// [`Provider::list`].
    fn status(b: &dyn Backend, pool: &Pool, id: &str) -> Result<Option<Machine>, ProviderError> {
        Ok(Self::list(b, pool)?.into_iter().find(|m| m.id == id))
    }
}

impl<T: Provider> provider_world::exports::corral::provider::provider::Guest for T {
    fn info() -> ProviderInfo {
        T::info(&Host)
    }
    fn create(pool: Pool, req: CreateRequest) -> Result<String, ProviderError> {
        T::create(&Host, &pool, &req)
    }
    fn delete(pool: Pool, id: String) -> Result<(), ProviderError> {
        T::delete(&Host, &pool, &id)
    }
    fn list(pool: Pool) -> Result<Vec<Machine>, ProviderError> {
        T::list(&Host, &pool)
    }
    fn status(pool: Pool, id: String) -> Result<Option<Machine>, ProviderError> {
        T::status(&Host, &pool, &id)
    }
}

impl From<Error> for ProviderError {
    fn from(e: Error) -> ProviderError {
        ProviderError::Failed(e)
    }
}

impl ProviderError {
    /// A backend failure with `message`.
    pub fn backend(message: impl Into<String>) -> ProviderError {
        ProviderError::Failed(Error::Backend(message.into()))
    }

    /// A request the plugin refuses (a bad template, a bad id).
    pub fn invalid(message: impl Into<String>) -> ProviderError {
        ProviderError::Failed(Error::Invalid(message.into()))
    }
}

impl ProviderInfo {
    pub fn new(name: &str, version: &str, provider: &str, hourly_billing: bool) -> ProviderInfo {
        ProviderInfo {
            name: name.into(),
            version: version.into(),
            provider: provider.into(),
            hourly_billing,
        }
    }
}

impl Pool {
    /// A template value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.template
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A template value that must be there: else [`ProviderError::invalid`] naming the
    /// pool and the key to set.
    pub fn require(&self, key: &str) -> Result<&str, ProviderError> {
        self.get(key).filter(|v| !v.is_empty()).ok_or_else(|| {
            ProviderError::invalid(format!(
                "pool {}: template key {key:?} is required; set it under [pools.{}.template]",
                self.name, self.name
            ))
        })
    }

    /// The template's entries under `prefix.` (`labels.team = "ml"` under `labels`),
    /// prefix removed, sorted by key.
    pub fn prefixed<'a>(&'a self, prefix: &str) -> Vec<(&'a str, &'a str)> {
        let p = format!("{prefix}.");
        self.template
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(&p).map(|k| (k, v.as_str())))
            .collect()
    }

    /// The pool's secret, or [`ProviderError::invalid`] saying where to put it.
    pub fn secret(&self) -> Result<&str, ProviderError> {
        self.secret.as_deref().filter(|s| !s.is_empty()).ok_or_else(|| {
            ProviderError::invalid(format!(
                "pool {}: this provider needs an API token; name the file holding it with secret_file under [pools.{}]",
                self.name, self.name
            ))
        })
    }
}

/// `Authorization: Bearer <token>`.
pub fn bearer(token: &str) -> (String, String) {
    ("authorization".to_string(), format!("Bearer {token}"))
}

/// A JSON request with `headers` (an [`bearer`] among them), the body serialized when
/// given. The response comes back whole, for the plugin to read its status, headers
/// (rate limits) and body.
pub fn json_request(
    b: &dyn Backend,
    method: &str,
    url: &str,
    headers: &[(String, String)],
    body: Option<&serde_json::Value>,
) -> Result<Response, Error> {
    let mut all = vec![("accept".to_string(), "application/json".to_string())];
    if body.is_some() {
        all.push(("content-type".to_string(), "application/json".to_string()));
    }
    all.extend(headers.iter().cloned());
    b.send(&Request {
        method: method.to_string(),
        url: url.to_string(),
        headers: all,
        body: body.map(|v| v.to_string().into_bytes()),
        timeout_ms: None,
    })
}

impl Response {
    /// A header's value (names compared without case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`Null` when empty), or a backend error quoting its start.
    pub fn json(&self) -> Result<serde_json::Value, Error> {
        if self.body.iter().all(|c| c.is_ascii_whitespace()) {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_slice(&self.body).map_err(|e| {
            let start =
                String::from_utf8_lossy(&self.body[..self.body.len().min(200)]).replace('\n', " ");
            Error::Backend(format!(
                "the answer ({}) is not JSON ({e}): {start}",
                self.status
            ))
        })
    }
}
