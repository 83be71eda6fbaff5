//! Checks of the ids and names a plugin puts into argv: job ids (a plain number, or a
//! number with an array task) and node names.
//!
//! Invariants: an id that passes is at most 20 ASCII digits per number, so it cannot be
//! an option (`-1`), a list (`1,2`), a glob or anything but one job; a node name that
//! passes is letters, digits and `-_.` (plus what the plugin allows, e.g. hostlist
//! brackets) and never starts with `-`. Refusals are [`Error::Invalid`] naming the
//! scheduler and the form expected.
//!
//! ```rust
//! use corral_plugin_sdk::ids::{JobId, Tasks};
//!
//! const SLURM: JobId = JobId::new("Slurm", Tasks::Joined('_'));
//! assert_eq!(SLURM.split("12_3"), Some(("12", Some("3"))));
//! assert!(SLURM.check("12").is_ok());
//! assert!(SLURM.check("12,13").is_err());
//!
//! const LSF: JobId = JobId::new("LSF", Tasks::Bracketed);
//! assert_eq!(LSF.split("12[3]"), Some(("12", Some("3"))));
//! assert!(LSF.check("12[").is_err());
//! assert!(LSF.covers("12", "12", "3") && LSF.covers("12[3]", "12", "3"));
//! assert!(!LSF.covers("12[4]", "12", "3"));
//! ```

use crate::Error;

/// Whether `s` is a job number: 1 to 20 ASCII digits.
pub fn is_number(s: &str) -> bool {
    !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit())
}

/// How a scheduler writes an array task after its job number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tasks {
    /// No task ids: a plain number only.
    None,
    /// `JOB<sep>TASK`: Slurm `12_3`, Grid Engine and HTCondor `12.3`.
    Joined(char),
    /// `JOB[TASK]`: LSF `12[3]`.
    Bracketed,
}

/// One scheduler's job id form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobId {
    pub scheduler: &'static str,
    pub tasks: Tasks,
}

impl JobId {
    pub const fn new(scheduler: &'static str, tasks: Tasks) -> JobId {
        JobId { scheduler, tasks }
    }

    /// The job number and the task, if `id` has this form.
    pub fn split<'a>(&self, id: &'a str) -> Option<(&'a str, Option<&'a str>)> {
        let (job, task) = match self.tasks {
            Tasks::None => (id, None),
            Tasks::Joined(sep) => match id.split_once(sep) {
                Some((j, t)) => (j, Some(t)),
                None => (id, None),
            },
            Tasks::Bracketed => match id.split_once('[') {
                Some((j, rest)) => (j, Some(rest.strip_suffix(']')?)),
                None => (id, None),
            },
        };
        (is_number(job) && task.is_none_or(is_number)).then_some((job, task))
    }

    /// Whether `id` names the record of job `job`, task `task`: `id` is the job (all its
    /// tasks) or that one task.
    pub fn covers(&self, id: &str, job: &str, task: &str) -> bool {
        matches!(self.split(id), Some((j, t)) if j == job && t.is_none_or(|t| t == task))
    }

    /// `Ok` for an id of this form, else [`Error::Invalid`] saying what was expected.
    pub fn check(&self, id: &str) -> Result<(), Error> {
        if self.split(id).is_some() {
            return Ok(());
        }
        let expected = match self.tasks {
            Tasks::None => "digits".to_string(),
            Tasks::Joined(sep) => format!("digits, or JOB{sep}TASK for an array task"),
            Tasks::Bracketed => "digits, or JOB[TASK] for an array task".to_string(),
        };
        Err(Error::Invalid(format!(
            "{id:?} is not a {} job id (expected {expected})",
            self.scheduler
        )))
    }
}

/// Refuses a node name that is empty, starts with `-`, or has characters other than
/// letters, digits, `-_.` and those in `extra`; `what` names the kind in the message.
///
/// ```rust
/// use corral_plugin_sdk::ids::check_node;
/// assert!(check_node("node[01-04]", "[],", "Slurm node name").is_ok());
/// assert!(check_node("-r", "", "PBS vnode name").is_err());
/// ```
pub fn check_node(node: &str, extra: &str, what: &str) -> Result<(), Error> {
    let ok = !node.is_empty()
        && !node.starts_with('-')
        && node
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c) || extra.contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!("{node:?} is not a {what}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_could_be_options_lists_or_globs_are_refused() {
        let sge = JobId::new("Grid Engine", Tasks::Joined('.'));
        for bad in [
            "",
            "-1",
            "1,2",
            "1.",
            ".1",
            "1.2.3",
            "*",
            "1 2",
            &"9".repeat(21),
        ] {
            assert!(sge.check(bad).is_err(), "{bad:?}");
        }
        assert_eq!(sge.split("7.3"), Some(("7", Some("3"))));
        let plain = JobId::new("at", Tasks::None);
        assert!(plain.check("7.3").is_err());
    }

    #[test]
    fn the_refusal_names_the_scheduler_and_the_form() {
        let e = JobId::new("LSF", Tasks::Bracketed).check("x").unwrap_err();
        assert!(
            matches!(&e, Error::Invalid(m) if m.contains("LSF job id") && m.contains("JOB[TASK]")),
            "{e:?}"
        );
    }
}
