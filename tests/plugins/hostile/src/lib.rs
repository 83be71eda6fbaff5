//! `hostile`: a scheduler plugin that misbehaves on request, to prove the host's sandbox
//! (`tests/plugin_host.rs`). Not a scheduler: nothing here submits real work.
//!
//! `submit` picks a behaviour from the job spec's `name`:
//! - `loop`: spins forever (the host's call timeout must end it);
//! - `memory`: allocates until the allocator fails (the host's memory limit must end it);
//! - `trap`: panics, which aborts the guest (a trap);
//! - `stack`: recurses without end (a stack-overflow trap);
//! - `ungranted`: runs a program its manifest does not grant and returns the host's
//!   answer (which must be `denied`);
//! - `run`: runs `executable` with `arguments` (a granted program) and returns its
//!   stdout, or the host's error;
//! - `http`: sends a GET to the URL in `executable` and returns `STATUS BODY`, or the
//!   host's error;
//! - `config`: returns the `[config]` value named by `executable`;
//! - anything else: `Ok("hostile-<name>")`.
//!
//! `info` works normally. Its `name` is the manifest's `config.name` when set (else
//! `hostile`), so tests can load the same component twice as two plugins.

use corral_plugin_sdk::{
    Backend, Command, Error, Feature, JobSpec, JobStatus, PluginInfo, Request, Scheduler,
};

pub struct Hostile;

/// A program no manifest grants.
pub const UNGRANTED_PROGRAM: &str = "corral-hostile-not-granted";

impl Hostile {
    fn act(b: &dyn Backend, spec: JobSpec) -> Result<String, Error> {
        let name = spec.name.clone().unwrap_or_default();
        match name.as_str() {
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "memory" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![7u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "trap" => panic!("hostile plugin panics on purpose"),
            "stack" => Ok(recurse(std::hint::black_box(1)).to_string()),
            "ungranted" => {
                b.run(&Command::new(UNGRANTED_PROGRAM).arg("--help"))?;
                Ok("the host ran an ungranted program".into())
            }
            "run" => {
                let out = b.run(&Command::new(&spec.executable).args(spec.arguments.clone()))?;
                Ok(String::from_utf8_lossy(&out.stdout).into_owned())
            }
            "http" => {
                let resp = b.send(&Request {
                    method: "GET".into(),
                    url: spec.executable.clone(),
                    headers: Vec::new(),
                    body: None,
                    timeout_ms: Some(5000),
                })?;
                Ok(format!(
                    "{} {}",
                    resp.status,
                    String::from_utf8_lossy(&resp.body)
                ))
            }
            "config" => b
                .config(&spec.executable)
                .ok_or_else(|| Error::Invalid(format!("no config value {:?}", spec.executable))),
            other => {
                b.log(
                    corral_plugin_sdk::Level::Info,
                    &format!("hostile submit {other}"),
                );
                Ok(format!("hostile-{other}"))
            }
        }
    }
}

// Recursing without end is the point (the `stack` behaviour).
#[allow(unconditional_recursion)]
fn recurse(n: u64) -> u64 {
    // Each frame keeps a buffer alive so the recursion cannot become a loop.
    let buf = std::hint::black_box([n; 64]);
    recurse(buf[0].wrapping_add(1)).wrapping_add(buf[63])
}

impl Scheduler for Hostile {
    fn info() -> PluginInfo {
        let name = corral_plugin_sdk::Host
            .config("name")
            .unwrap_or_else(|| "hostile".into());
        PluginInfo {
            name,
            version: env!("CARGO_PKG_VERSION").into(),
            scheduler: "none (sandbox test plugin)".into(),
            features: vec![Feature::List],
        }
    }

    fn render(_b: &dyn Backend, spec: JobSpec) -> Result<String, Error> {
        Ok(format!("hostile would run {}", spec.executable))
    }

    fn submit(b: &dyn Backend, spec: JobSpec) -> Result<String, Error> {
        Hostile::act(b, spec)
    }

    fn status(_b: &dyn Backend, ids: Vec<String>) -> Result<Vec<JobStatus>, Error> {
        Err(Error::Unsupported(format!("status of {} jobs", ids.len())))
    }

    fn cancel(_b: &dyn Backend, _id: String) -> Result<(), Error> {
        Ok(())
    }

    fn list(_b: &dyn Backend) -> Result<Vec<JobStatus>, Error> {
        Ok(Vec::new())
    }
}

corral_plugin_sdk::export_plugin!(Hostile);
