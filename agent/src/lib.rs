//! corral: a node agent and coordinator for GPU and HPC clusters.
//!
//! Where things live (one concept, one place):
//! - [`model`]: what a node reports (host and GPU samples, health, liveness).
//! - [`job`]: the portable job spec and state, and the plugin calls routed to agents.
//! - [`node`]: health sampling on the agent (sysinfo, NVML behind a trait, thresholds).
//! - [`wire`]: the agent ⇄ coordinator protocol (messages, versions, framing).
//! - [`pki`]: the cluster CA, certificates and the mutual-TLS configurations.
//! - [`ray`]: the Ray head or worker an agent starts from a venv, supervises and stops.
//! - [`exec`]: the one bounded program runner (argv, timeout killing the process group, output caps).
//! - [`plugins`]: the sandboxed WebAssembly scheduler plugin host (wasmtime).
//! - [`agent`]: the agent daemon (connect, beat, report, answer commands).
//! - [`coordinator`]: the coordinator daemon (registry, liveness, store, HTTP API, metrics).
//! - [`config`]: the TOML configuration of both daemons and its validation.
//! - [`systemd`]: readiness, watchdog and status notifications, and journal-shaped logs.
//! - [`cli`]: the `corral` command line, including `corral dev` and the load harness.

pub mod agent;
pub mod cli;
pub mod config;
pub mod coordinator;
pub mod exec;
pub mod job;
pub mod model;
pub mod node;
pub mod pki;
pub mod plugins;
pub mod ray;
pub mod systemd;
#[doc(hidden)]
pub mod testing;
pub mod wire;
