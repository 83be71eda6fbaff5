//! Rust bindings generated from `wit/`, host side: the scheduler world (`plugin`, at
//! this module's root) and the provider world ([`provider`]), which shares the
//! scheduler world's import interfaces (`with`), so one set of host imports
//! (`imports.rs`) serves both.
//!
//! Sync bindings: a plugin call runs on a blocking thread with its own store, so host
//! imports may block (a program run, an HTTP request driven on the daemon's runtime).
//! Imports are not trappable: every failure a plugin can cause or meet is a WIT
//! `error` value, never a trap.

wasmtime::component::bindgen!({
    world: "corral:scheduler/plugin",
    path: "../../wit/scheduler.wit",
});

/// `corral:provider/provider-plugin`.
pub mod provider {
    wasmtime::component::bindgen!({
        world: "corral:provider/provider-plugin",
        path: ["../../wit/scheduler.wit", "../../wit/provider.wit"],
        with: {
            "corral:scheduler/types": super::corral::scheduler::types,
            "corral:scheduler/process": super::corral::scheduler::process,
            "corral:scheduler/http": super::corral::scheduler::http,
            "corral:scheduler/log": super::corral::scheduler::log,
            "corral:scheduler/config": super::corral::scheduler::config,
            "corral:scheduler/clock": super::corral::scheduler::clock,
        },
    });
}
