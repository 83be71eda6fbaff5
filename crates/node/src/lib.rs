//! The agent's side of corral: everything `corral agent` does on a node.
//!
//! - [`health`]: sampling (host through sysinfo, GPUs through NVML behind a trait, host
//!   checks) and the health verdict with its reasons.
//! - [`ray`]: the Ray head or worker started from a venv, supervised and stopped.
//! - [`plugins`]: the sandboxed WebAssembly scheduler plugin host (wasmtime).
//! - [`fsperm`]: ownership and permission checks for the paths the agent trusts (the
//!   Ray venv, the plugin cache) and the files it writes for another user (Ray's).
//! - [`session`]: the daemon itself: connect, beat, report, answer commands.
//! - [`config`]: the `[agent]` section (the other sections live beside what they
//!   configure).
//!
//! The program runner, local users and the plugin host it uses live in `corral-sandbox`
//! (shared with the coordinator, which hosts provider plugins there).
//!
//! Layering: depends on `corral-proto` (what it reports and says), `corral-transport`
//! (how it reaches the coordinator), `corral-sandbox` and `corral-base`; never on the
//! coordinator.

pub mod config;
pub mod health;
pub mod ray;
pub mod session;

use corral_sandbox::{exec, fsperm, identity, plugins};

pub use session::{run, sample_once, AgentOptions};
