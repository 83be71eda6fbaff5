//! The agent's side of corral: everything `corral agent` does on a node.
//!
//! - [`health`]: sampling (host through sysinfo, GPUs through NVML behind a trait, host
//!   checks) and the health verdict with its reasons.
//! - [`exec`]: the one bounded program runner (argv only, a timeout that kills the
//!   process group, capped output), used by checks, Ray probes and plugins.
//! - [`ray`]: the Ray head or worker started from a venv, supervised and stopped.
//! - [`plugins`]: the sandboxed WebAssembly scheduler plugin host (wasmtime).
//! - [`fsperm`]: ownership and permission checks for the paths the agent trusts (the
//!   Ray venv, the plugin cache) and the files it writes for another user (Ray's).
//! - [`session`]: the daemon itself: connect, beat, report, answer commands.
//! - [`config`]: the `[agent]` section (the other sections live beside what they
//!   configure).
//!
//! Layering: depends on `corral-proto` (what it reports and says), `corral-transport`
//! (how it reaches the coordinator) and `corral-base`; never on the coordinator.

pub mod config;
pub mod exec;
pub mod fsperm;
pub mod health;
pub mod identity;
pub mod plugins;
pub mod ray;
pub mod session;

pub use session::{run, sample_once, AgentOptions};
