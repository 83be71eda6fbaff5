//! One declaration per batch-scheduler plugin ([`Batch`]): what the plugin is, how it
//! submits, looks jobs up, cancels and drains. [`crate::Scheduler::BATCH`] turns it into
//! the `info`, `render`, `submit`, `status`, `cancel`, `drain-node`, `resume-node` and
//! `node-state` exports, so the plugin writes only its own functions (argv, parsers,
//! lookups) and `list` or `logs` where it has them.
//!
//! Invariants: every piece keeps its own ([`crate::submit::Submit`],
//! [`crate::status::Resolver`], [`crate::status::cancel`], [`crate::nodes::NodeAdmin`]);
//! `status` and `cancel` check every id with the declared check before anything runs;
//! an export whose piece is not declared answers `unsupported`; `info` is exactly the
//! declaration (the host refuses a plugin whose name is not its manifest's).
//!
//! ```rust
//! use corral_plugin_sdk::batch::{Batch, Cancel};
//! use corral_plugin_sdk::ids::{JobId, Tasks};
//! use corral_plugin_sdk::status::Found;
//! use corral_plugin_sdk::submit::Submit;
//! use corral_plugin_sdk::testing::Script;
//! use corral_plugin_sdk::{Backend, Error, JobSpec, JobState, JobStatus, Scheduler};
//!
//! fn check(id: &str) -> Result<(), Error> { JobId::new("at", Tasks::None).check(id) }
//! fn args(_: &JobSpec) -> Result<Vec<String>, Error> { Ok(vec!["now".into()]) }
//! fn id(out: &str) -> Result<String, Error> { Ok(out.trim().to_string()) }
//! /// `atq` lists waiting jobs; one that left it is gone (at keeps no history).
//! fn atq(b: &dyn Backend, ids: &[String]) -> Result<Vec<Found>, Error> {
//!     let queue = corral_plugin_sdk::run_ok(b, &corral_plugin_sdk::Command::new("atq"))?;
//!     Ok(ids.iter().map(|id| match queue.lines().any(|l| l.starts_with(&format!("{id}\t"))) {
//!         true => Found::Parts(vec![JobStatus::new(id, JobState::Queued(false), "a")]),
//!         false => Found::Gone("not in atq: at keeps no record of ended jobs".into()),
//!     }).collect())
//! }
//!
//! struct At;
//! const AT: Batch = Batch::new("at", "0.1.0", "POSIX at")
//!     .submit(Submit::script("at", args, id))
//!     .status(check, atq, None)
//!     .cancel(Cancel::new("atrm", &["Cannot find jobid"]));
//!
//! impl Scheduler for At {
//!     const BATCH: Option<Batch> = Some(AT);
//! }
//!
//! assert_eq!(At::info().scheduler, "POSIX at");
//! let b = Script::new()
//!     .ok("at", "7\n")
//!     .ok("atq", "7\tThu Nov 23 20:30:00 2026 a root\n")
//!     .run("atrm", 1, "", "Cannot find jobid 8\n");
//! assert_eq!(At::submit(&b, JobSpec::command("true", Vec::<String>::new()))?, "7");
//! assert_eq!(At::status(&b, vec!["7".into()])?[0].state, JobState::Queued(false));
//! At::cancel(&b, "8".into())?;
//! assert!(matches!(At::cancel(&b, "8;x".into()), Err(Error::Invalid(_))));
//! # Ok::<(), corral_plugin_sdk::Error>(())
//! ```

use crate::nodes::NodeAdmin;
use crate::status::{self, Found, Resolver};
use crate::submit::Submit;
use crate::{Backend, Command, Error, Feature, JobStatus, PluginInfo};

/// Checks one job id (see [`crate::ids`]).
pub type IdCheck = fn(&str) -> Result<(), Error>;

/// One lookup of a `status` call: given the ids still unresolved, one [`Found`] per id,
/// in order.
pub type Lookup = fn(&dyn Backend, &[String]) -> Result<Vec<Found>, Error>;

/// How a scheduler cancels a job: the program (given the id) and the phrases with which
/// it says the job already ended or is unknown.
#[derive(Debug, Clone, Copy)]
pub struct Cancel {
    pub program: &'static str,
    pub gone: &'static [&'static str],
}

impl Cancel {
    pub const fn new(program: &'static str, gone: &'static [&'static str]) -> Cancel {
        Cancel { program, gone }
    }
}

/// How `status` resolves ids: the id check, the live lookup, and the history lookup
/// for what the live one did not settle ([`Resolver`]).
#[derive(Debug, Clone, Copy)]
pub struct Lookups {
    pub check: IdCheck,
    pub live: Lookup,
    pub history: Option<Lookup>,
}

impl Lookups {
    pub fn resolve(&self, b: &dyn Backend, ids: Vec<String>) -> Result<Vec<JobStatus>, Error> {
        let mut r = Resolver::new(ids, self.check)?.live_all(|ids| (self.live)(b, ids))?;
        if let Some(history) = self.history {
            r = r.history_all(|ids| history(b, ids))?;
        }
        Ok(r.finish())
    }
}

/// A batch-scheduler plugin's declaration (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct Batch {
    /// The plugin's name: the manifest's `[plugin] name`.
    pub name: &'static str,
    /// The plugin crate's version (`env!("CARGO_PKG_VERSION")` in the plugin).
    pub version: &'static str,
    /// The scheduler it drives, for people (`"PBS Professional / OpenPBS"`).
    pub scheduler: &'static str,
    pub features: &'static [Feature],
    pub submit: Option<Submit>,
    pub status: Option<Lookups>,
    pub cancel: Option<Cancel>,
    pub nodes: Option<NodeAdmin>,
}

impl Batch {
    pub const fn new(name: &'static str, version: &'static str, scheduler: &'static str) -> Batch {
        Batch {
            name,
            version,
            scheduler,
            features: &[],
            submit: None,
            status: None,
            cancel: None,
            nodes: None,
        }
    }

    /// What the plugin supports beyond the required exports (`info().features`).
    pub const fn features(mut self, features: &'static [Feature]) -> Batch {
        self.features = features;
        self
    }

    pub const fn submit(mut self, submit: Submit) -> Batch {
        self.submit = Some(submit);
        self
    }

    /// `status`: ids checked by `check`, looked up `live`, then in `history`.
    pub const fn status(mut self, check: IdCheck, live: Lookup, history: Option<Lookup>) -> Batch {
        self.status = Some(Lookups {
            check,
            live,
            history,
        });
        self
    }

    /// `cancel` (with [`Batch::status`] declared: it checks the id, and confirms a
    /// failed cancel program through it).
    pub const fn cancel(mut self, cancel: Cancel) -> Batch {
        self.cancel = Some(cancel);
        self
    }

    pub const fn nodes(mut self, nodes: NodeAdmin) -> Batch {
        self.nodes = Some(nodes);
        self
    }

    pub fn info(&self) -> PluginInfo {
        PluginInfo::new(self.name, self.version, self.scheduler, self.features)
    }

    /// The `cancel` export: checks `id`, runs the cancel program, and confirms a failure
    /// through the declared lookups ([`status::cancel`]).
    pub fn cancel_job(&self, b: &dyn Backend, id: &str) -> Result<(), Error> {
        let (Some(c), Some(st)) = (self.cancel, self.status) else {
            return Err(Error::Unsupported("cancel".into()));
        };
        (st.check)(id)?;
        let cmd = Command::new(c.program).arg(id);
        status::cancel(b, &cmd, c.gone, || st.resolve(b, vec![id.to_string()]))
    }
}
