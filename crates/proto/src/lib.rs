//! corral's schema: the types every layer agrees on, and nothing that runs.
//!
//! - [`model`]: what a node reports (host and GPU samples, health, liveness, Ray state).
//! - [`job`]: the portable job spec and state, and the plugin calls routed to agents.
//! - [`wire`]: the agent ⇄ coordinator messages, protocol versions and refusal codes.
//! - [`api`]: the HTTP API's requests and answers, shared by the coordinator and the CLI.
//! - [`names`]: what a node name may be.
//! - [`pool`]: node pools, the machines provider plugins make for them, join tokens.
//!
//! Invariant: no async runtime, QUIC, wasm engine or database in this crate's
//! dependency tree (`cargo tree -p corral-proto` shows serde, postcard, serde_json and
//! thiserror). The CLI, outside clients and the plugins' tooling depend on it cheaply,
//! and a change to a daemon's internals cannot change the schema.

pub mod api;
pub mod job;
pub mod model;
pub mod names;
pub mod pool;
pub mod wire;
