//! Draining and resuming nodes with one admin program, declared as argv templates
//! ([`NodeAdmin`]); declared in a plugin's [`crate::batch::Batch`], it is the plugin's
//! `drain-node` and `resume-node` exports.
//!
//! Invariants: the node name is checked ([`crate::ids::check_node`]) before anything
//! runs, the reason is one line ([`crate::script::check_line`]), and each reaches the
//! program as (part of) one argv element: a template places them, it never splits them.
//!
//! ```rust
//! use corral_plugin_sdk::nodes::{Arg, NodeAdmin};
//! use corral_plugin_sdk::testing::Script;
//!
//! const PBS: NodeAdmin = NodeAdmin::new("pbsnodes", "[]", "PBS vnode name")
//!     .drain(&[Arg::Text("-o"), Arg::ReasonFlag("-C"), Arg::Node("")])
//!     .resume(&[Arg::Text("-r"), Arg::Node("")]);
//!
//! let b = Script::new().ok("pbsnodes", "").ok("pbsnodes", "");
//! PBS.drain_node(&b, "node01", "fan; see #7")?;
//! PBS.drain_node(&b, "node01", "")?;
//! assert_eq!(b.commands()[0].args, ["-o", "-C", "fan; see #7", "node01"]);
//! assert_eq!(b.commands()[1].args, ["-o", "node01"]);
//! assert!(PBS.resume_node(&b, "-r").is_err());
//! # Ok::<(), corral_plugin_sdk::Error>(())
//! ```

use crate::ids::check_node;
use crate::script::check_line;
use crate::{run_ok, Backend, Command, Error};

/// One argv element (or two, or none) of a node command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arg {
    /// This text.
    Text(&'static str),
    /// The node name after this prefix (`Node("*@")` is `*@node01`).
    Node(&'static str),
    /// The flag and the reason as two elements, left out when the reason is empty.
    ReasonFlag(&'static str),
    /// The reason after this prefix; the second text stands in for an empty reason.
    Reason(&'static str, &'static str),
}

/// How one scheduler drains and resumes a node (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct NodeAdmin {
    pub program: &'static str,
    /// Characters a node name may have beyond letters, digits and `-_.`.
    pub node_chars: &'static str,
    /// What a node is called, for the refusal (`"Slurm node name"`).
    pub node_kind: &'static str,
    pub drain: &'static [Arg],
    pub resume: &'static [Arg],
}

impl NodeAdmin {
    pub const fn new(
        program: &'static str,
        node_chars: &'static str,
        node_kind: &'static str,
    ) -> NodeAdmin {
        NodeAdmin {
            program,
            node_chars,
            node_kind,
            drain: &[],
            resume: &[],
        }
    }

    pub const fn drain(mut self, args: &'static [Arg]) -> NodeAdmin {
        self.drain = args;
        self
    }

    pub const fn resume(mut self, args: &'static [Arg]) -> NodeAdmin {
        self.resume = args;
        self
    }

    fn command(&self, template: &[Arg], node: &str, reason: &str) -> Command {
        let mut cmd = Command::new(self.program);
        for arg in template {
            cmd = match *arg {
                Arg::Text(t) => cmd.arg(t),
                Arg::Node(prefix) => cmd.arg(format!("{prefix}{node}")),
                Arg::ReasonFlag(_) if reason.is_empty() => cmd,
                Arg::ReasonFlag(flag) => cmd.args([flag, reason]),
                Arg::Reason(prefix, _) if !reason.trim().is_empty() => {
                    cmd.arg(format!("{prefix}{reason}"))
                }
                Arg::Reason(prefix, empty) => cmd.arg(format!("{prefix}{empty}")),
            };
        }
        cmd
    }

    /// Runs the drain template for `node` with `reason`.
    pub fn drain_node(&self, b: &dyn Backend, node: &str, reason: &str) -> Result<(), Error> {
        check_node(node, self.node_chars, self.node_kind)?;
        check_line("drain reason", reason)?;
        run_ok(b, &self.command(self.drain, node, reason)).map(drop)
    }

    /// Runs the resume template for `node`.
    pub fn resume_node(&self, b: &dyn Backend, node: &str) -> Result<(), Error> {
        check_node(node, self.node_chars, self.node_kind)?;
        run_ok(b, &self.command(self.resume, node, "")).map(drop)
    }
}
