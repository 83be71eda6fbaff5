//! Rust bindings generated from `wit/scheduler.wit` (world `plugin`), host side.
//!
//! Sync bindings: a plugin call runs on a blocking thread with its own store, so host
//! imports may block (a program run, an HTTP request driven on the agent's runtime).
//! Imports are not trappable: every failure a plugin can cause or meet is a WIT
//! `error` value, never a trap.

wasmtime::component::bindgen!({
    world: "plugin",
    path: "../../wit/scheduler.wit",
});
