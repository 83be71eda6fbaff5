//! What both corral daemons stand on, below the agent and coordinator crates:
//!
//! - [`config`]: keyed config errors ([`config::ConfigIssue`]) and TOML parsing that
//!   names the key at fault, shared by every file corral reads.
//! - [`backoff`]: the one jittered exponential retry delay (agent reconnects, Ray
//!   restarts, the coordinator's job polls).
//! - [`systemd`]: readiness, watchdog and status notifications, and journal-shaped logs.
//! - `testing`: helpers for tests (hidden; not an API).

pub mod backoff;
pub mod config;
pub mod systemd;
#[doc(hidden)]
pub mod testing;
