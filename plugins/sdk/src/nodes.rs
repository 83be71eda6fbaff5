//! Draining, resuming and reading nodes through the scheduler's admin programs, declared
//! as argv templates ([`NodeAdmin`]); declared in a plugin's [`crate::batch::Batch`], it
//! is the plugin's `drain-node`, `resume-node` and `node-state` exports.
//!
//! Invariants:
//! - The node name is checked ([`crate::ids::check_node`]) before anything runs, the
//!   reason is one line ([`crate::script::check_line`]), and each reaches the program as
//!   (part of) one argv element: a template places them, it never splits them.
//! - The reason reaches the scheduler verbatim (an empty one becomes the template's
//!   stand-in where the scheduler requires a reason), so `node-state` reads back what
//!   `drain-node` was given: that is how corral tells its own drains (reasons with its
//!   prefix) from a person's, which it never lifts.
//! - `node-state` ([`StateQuery`]) answers `None` only when the scheduler says it has no
//!   such node, in the words the query declares ([`Unknown`]); any other failure of the
//!   program is an error naming it, never "no such node". A [`NodeState`]'s reason is
//!   kept only while the node is drained ([`NodeState::new`]): a comment left from an
//!   earlier drain is no reason for anything now.
//!
//! Trade-off: the state query has a program of its own, since schedulers read node
//! state with another program than the one that changes it (Grid Engine: `qstat` and
//! `qmod`; LSF: `bhosts` and `badmin`).
//!
//! ```rust
//! use corral_plugin_sdk::nodes::{Arg, NodeAdmin, StateQuery, Unknown};
//! use corral_plugin_sdk::testing::Script;
//! use corral_plugin_sdk::{Error, NodeState};
//!
//! /// `pbsnodes -v NODE` prints `state = ...` and `comment = ...` lines (simplified).
//! fn parse(_node: &str, out: &str) -> Result<Option<NodeState>, Error> {
//!     let value = |key: &str| {
//!         out.lines()
//!             .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix(" = "))
//!     };
//!     let drained = value("state").is_some_and(|s| s.split(',').any(|w| w == "offline"));
//!     Ok(Some(NodeState::new(drained, value("comment"))))
//! }
//!
//! const PBS: NodeAdmin = NodeAdmin::new("pbsnodes", "[]", "PBS vnode name")
//!     .drain(&[Arg::Text("-o"), Arg::ReasonFlag("-C"), Arg::Node("")])
//!     .resume(&[Arg::Text("-r"), Arg::Node("")])
//!     .state(StateQuery::new(
//!         "pbsnodes",
//!         &[Arg::Text("-v"), Arg::Node("")],
//!         Unknown::Says(&["Unknown node"]),
//!         parse,
//!     ));
//!
//! let b = Script::new()
//!     .ok("pbsnodes", "")
//!     .ok("pbsnodes", "")
//!     .ok("pbsnodes", "node01\n     state = offline\n     comment = fan; see #7\n")
//!     .run("pbsnodes", 1, "", "pbsnodes: Unknown node  node99\n");
//! PBS.drain_node(&b, "node01", "fan; see #7")?;
//! PBS.drain_node(&b, "node01", "")?;
//! assert_eq!(b.commands()[0].args, ["-o", "-C", "fan; see #7", "node01"]);
//! assert_eq!(b.commands()[1].args, ["-o", "node01"]);
//! assert!(PBS.resume_node(&b, "-r").is_err());
//! assert_eq!(
//!     PBS.node_state(&b, "node01")?,
//!     Some(NodeState::new(true, Some("fan; see #7")))
//! );
//! assert_eq!(PBS.node_state(&b, "node99")?, None);
//! # Ok::<(), corral_plugin_sdk::Error>(())
//! ```

use crate::ids::check_node;
use crate::script::check_line;
use crate::{failure, run, run_ok, Backend, Command, Error, NodeState};

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

/// How a state query's program says the scheduler has no node of that name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unknown {
    /// It exits non-zero printing one of these phrases (on stdout or stderr): Slurm's
    /// `Node X not found`.
    Says(&'static [&'static str]),
    /// It exits non-zero printing nothing at all: Grid Engine's `qstat -q '*@HOST'` for
    /// a host without queue instances. A failure that prints anything is an error.
    Silent,
}

impl Unknown {
    fn matches(&self, stdout: &str, stderr: &str) -> bool {
        match self {
            Unknown::Says(phrases) => phrases
                .iter()
                .any(|p| stdout.contains(p) || stderr.contains(p)),
            Unknown::Silent => stdout.trim().is_empty() && stderr.trim().is_empty(),
        }
    }
}

/// Reads what a successful state query printed, given the node asked about: the node's
/// state, or `None` where the output itself says the scheduler has no such node.
pub type StateParser = fn(node: &str, stdout: &str) -> Result<Option<NodeState>, Error>;

/// How one scheduler shows one node: the program and its argv template (which places
/// the node; a reason has no place in it), how it says it has no such node, and the
/// parser of what it prints.
#[derive(Debug, Clone, Copy)]
pub struct StateQuery {
    pub program: &'static str,
    pub args: &'static [Arg],
    pub unknown: Unknown,
    pub parse: StateParser,
}

impl StateQuery {
    pub const fn new(
        program: &'static str,
        args: &'static [Arg],
        unknown: Unknown,
        parse: StateParser,
    ) -> StateQuery {
        StateQuery {
            program,
            args,
            unknown,
            parse,
        }
    }
}

/// How one scheduler drains, resumes and shows a node (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct NodeAdmin {
    /// The program that drains and resumes.
    pub program: &'static str,
    /// Characters a node name may have beyond letters, digits and `-_.`.
    pub node_chars: &'static str,
    /// What a node is called, for the refusal (`"Slurm node name"`).
    pub node_kind: &'static str,
    pub drain: &'static [Arg],
    pub resume: &'static [Arg],
    /// `node-state`; without it the export answers `unsupported`.
    pub state: Option<StateQuery>,
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
            state: None,
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

    pub const fn state(mut self, query: StateQuery) -> NodeAdmin {
        self.state = Some(query);
        self
    }

    fn command(program: &str, template: &[Arg], node: &str, reason: &str) -> Command {
        let mut cmd = Command::new(program);
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
        run_ok(b, &Self::command(self.program, self.drain, node, reason)).map(drop)
    }

    /// Runs the resume template for `node`.
    pub fn resume_node(&self, b: &dyn Backend, node: &str) -> Result<(), Error> {
        check_node(node, self.node_chars, self.node_kind)?;
        run_ok(b, &Self::command(self.program, self.resume, node, "")).map(drop)
    }

    /// Runs the state query for `node`: its state, `None` when the scheduler has no such
    /// node, [`Error::Unsupported`] when no query is declared.
    pub fn node_state(&self, b: &dyn Backend, node: &str) -> Result<Option<NodeState>, Error> {
        let Some(q) = self.state else {
            return Err(Error::Unsupported(
                "node-state: this plugin cannot read a node's drain state".into(),
            ));
        };
        check_node(node, self.node_chars, self.node_kind)?;
        let out = run(b, &Self::command(q.program, q.args, node, ""))?;
        if out.success() {
            (q.parse)(node, &out.stdout_text())
        } else if q.unknown.matches(&out.stdout_text(), &out.stderr_text()) {
            Ok(None)
        } else {
            Err(failure(q.program, &out))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Script;

    fn first_word(_node: &str, out: &str) -> Result<Option<NodeState>, Error> {
        match out.split_whitespace().next() {
            Some("drained") => Ok(Some(NodeState::new(true, Some("why")))),
            Some("ready") => Ok(Some(NodeState::new(false, Some("old comment")))),
            Some("none") => Ok(None),
            _ => Err(Error::Backend(format!("unexpected {out:?}"))),
        }
    }

    const ADMIN: NodeAdmin = NodeAdmin::new("admin", "", "node name").state(StateQuery::new(
        "show",
        &[Arg::Text("node"), Arg::Node("@")],
        Unknown::Says(&["no such node"]),
        first_word,
    ));

    #[test]
    fn the_state_query_runs_its_own_program_with_the_node_in_one_element() {
        let b = Script::new().ok("show", "drained\n");
        assert_eq!(
            ADMIN.node_state(&b, "n1").unwrap(),
            Some(NodeState::new(true, Some("why")))
        );
        assert_eq!(b.commands()[0].program, "show");
        assert_eq!(b.commands()[0].args, ["node", "@n1"]);
        b.assert_done();
    }

    #[test]
    fn a_node_that_is_not_drained_has_no_reason() {
        let b = Script::new().ok("show", "ready\n");
        assert_eq!(
            ADMIN.node_state(&b, "n1").unwrap(),
            Some(NodeState {
                drained: false,
                reason: None
            })
        );
    }

    #[test]
    fn only_the_declared_words_mean_no_such_node() {
        let b = Script::new()
            .run("show", 1, "", "show: no such node n9\n")
            .run("show", 1, "", "show: cannot reach the controller\n")
            .ok("show", "none");
        assert_eq!(ADMIN.node_state(&b, "n9").unwrap(), None);
        let e = ADMIN.node_state(&b, "n9").unwrap_err();
        assert_eq!(
            e,
            Error::Backend("show exited with status 1: show: cannot reach the controller".into())
        );
        assert_eq!(ADMIN.node_state(&b, "n9").unwrap(), None);
    }

    #[test]
    fn a_silent_failure_is_no_such_node_only_when_it_prints_nothing() {
        const SILENT: NodeAdmin = NodeAdmin::new("admin", "", "host name").state(StateQuery::new(
            "show",
            &[Arg::Node("")],
            Unknown::Silent,
            first_word,
        ));
        let b = Script::new().run("show", 1, "", "").run(
            "show",
            1,
            "",
            "error: commlib error: got select error\n",
        );
        assert_eq!(SILENT.node_state(&b, "h").unwrap(), None);
        assert!(matches!(
            SILENT.node_state(&b, "h"),
            Err(Error::Backend(m)) if m.contains("commlib error")
        ));
    }

    #[test]
    fn a_bad_node_name_is_refused_before_anything_runs() {
        let b = Script::new();
        for bad in ["", "-v", "a b", "n1;reboot"] {
            assert!(
                matches!(ADMIN.node_state(&b, bad), Err(Error::Invalid(_))),
                "{bad:?}"
            );
        }
        assert!(b.commands().is_empty());
    }

    #[test]
    fn without_a_query_node_state_is_unsupported() {
        let plain = NodeAdmin::new("admin", "", "node name");
        let b = Script::new();
        assert!(matches!(
            plain.node_state(&b, "n1"),
            Err(Error::Unsupported(m)) if m.starts_with("node-state")
        ));
        assert!(b.commands().is_empty());
    }
}
