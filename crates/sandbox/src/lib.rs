//! What runs code and programs corral did not write, and under whose name.
//!
//! - [`exec`]: the one bounded program runner (argv only, a timeout that kills the
//!   process group, capped output), used by host checks, Ray probes and plugins.
//! - [`identity`]: local users, and whom a plugin call runs as (a job's owner, the
//!   service user, the daemon itself).
//! - [`fsperm`]: ownership and permission checks for the paths a daemon trusts (the Ray
//!   venv, the plugin cache) and the files it writes for another user.
//! - [`plugins`]: the wasmtime host for the two kinds of WebAssembly plugin: scheduler
//!   plugins (`wit/scheduler.wit`), which agents load, and provider plugins
//!   (`wit/provider.wit`), which the coordinator loads to create and delete nodes. One
//!   sandbox for both: the same grants, limits and imports.
//!
//! Layering: depends on `corral-proto` (the calls and replies it carries) and
//! `corral-base`; both the agent's side (`corral-node`) and the coordinator build on it,
//! and it knows neither.

pub mod exec;
pub mod fsperm;
pub mod identity;
pub mod plugins;
