//! The `corral` binary's library half: the command line ([`cli`]) and the config file
//! both daemons read ([`config`]). The daemons themselves live in their own crates:
//!
//! - `corral-proto`: the schema (node reports, wire messages, job types, HTTP API types).
//! - `corral-base`: config errors, backoff, systemd notifications.
//! - `corral-transport`: frames over QUIC and the cluster PKI.
//! - `corral-node`: the agent (sampling, Ray, plugin host, session).
//! - `corral-coordinator`: registry, store, jobs, HTTP API, metrics.
//!
//! Client commands (`corral nodes`, `corral jobs`, ...) speak to the coordinator's HTTP
//! API with `corral_proto::api` types only. The load harnesses are a separate binary,
//! `corral-bench`.

pub mod cli;
pub mod config;
