//! The `status` and `cancel` logic every batch scheduler shares: look a set of ids up in
//! the live queue, then in the scheduler's history for the rest, and say `unknown`, with
//! every reason gathered, for what neither knows; cancel, and when the cancel program
//! fails, confirm through `status` whether the job is gone anyway.
//!
//! Invariants:
//! - Ids are checked before anything runs and de-duplicated in O(n), first occurrence
//!   first ([`unique_ids`]); the answer has one status per unique id, in that order.
//! - A lookup reports each id's parts ([`Found::Parts`]: one record for a plain job, one
//!   per task for an array), combined under the id by [`crate::aggregate`].
//! - The live answer settles an id only while the job is not finished: an ended or
//!   missing job goes on to the history, whose answer wins (it holds the exit code and
//!   the reason). When the history does not know a job the live queue saw end, the live
//!   answer stands; when nobody knows it, it is `unknown` with every lookup's words and
//!   an empty native state, never assumed to have succeeded.
//! - A lookup that has nothing to do (no ids left) is not run.
//!
//! Trade-off: the live query gets every id at once (one program run for the whole
//! poll), the history gets the rest at once; a plugin whose history program takes one
//! id runs it per id inside its lookup.
//!
//! ```rust
//! use corral_plugin_sdk::status::{Found, Resolver};
//! use corral_plugin_sdk::{JobState, JobStatus};
//!
//! // A live queue that knows job 1, a history that knows job 2.
//! let got = Resolver::new(vec!["1".into(), "2".into(), "1".into(), "3".into()], |_| Ok(()))?
//!     .live(
//!         |_ids| Ok(vec!["1"]),
//!         |queue, id| Ok(match queue.contains(&id) {
//!             true => Found::Parts(vec![JobStatus::new(id, JobState::Running, "R")]),
//!             false => Found::Parts(Vec::new()),
//!         }),
//!     )?
//!     .history(
//!         |ids| Ok(ids.len()),
//!         |_, id| Ok(match id {
//!             "2" => Found::Parts(vec![JobStatus::new(id, JobState::Succeeded, "F")]),
//!             _ => Found::Gone(format!("history has no job {id}")),
//!         }),
//!     )?
//!     .finish();
//! let states: Vec<_> = got.iter().map(|s| (s.id.as_str(), s.state.clone())).collect();
//! assert_eq!(
//!     states,
//!     [("1", JobState::Running), ("2", JobState::Succeeded), ("3", JobState::Unknown)]
//! );
//! assert_eq!(got[2].message.as_deref(), Some("history has no job 3"));
//! # Ok::<(), corral_plugin_sdk::Error>(())
//! ```

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, DefaultHasher};

use crate::{aggregate, failure, log, run, Backend, Command, Error, JobState, JobStatus};

/// The ids of a bulk `status` call, each checked by `check` (the first bad one is the
/// error), duplicates dropped, in the order given. O(n): a hash set of the ids seen.
///
/// The set hashes with fixed keys: there is no randomness source on
/// `wasm32-unknown-unknown`, and ids are checked, short and few.
///
/// ```rust
/// use corral_plugin_sdk::status::unique_ids;
/// let ids = vec!["7".to_string(), "5".into(), "7".into()];
/// assert_eq!(unique_ids(ids, |_| Ok(())).unwrap(), ["7", "5"]);
/// ```
pub fn unique_ids(
    ids: Vec<String>,
    check: impl Fn(&str) -> Result<(), Error>,
) -> Result<Vec<String>, Error> {
    let mut seen: HashSet<String, BuildHasherDefault<DefaultHasher>> =
        HashSet::with_capacity_and_hasher(ids.len(), Default::default());
    let mut unique = Vec::with_capacity(ids.len());
    for id in ids {
        check(&id)?;
        if seen.insert(id.clone()) {
            unique.push(id);
        }
    }
    Ok(unique)
}

/// What one lookup learned about one id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// The job's records: one for a plain job, one per task for an array. Empty: this
    /// lookup does not know the job and has nothing to say about it.
    Parts(Vec<JobStatus>),
    /// This lookup does not know the job; its words, for the `unknown` message.
    Gone(String),
}

impl Found {
    /// `parts`, or `Gone(why)` when there are none and a reason is given (a history
    /// lookup's answer: the last word on the job).
    pub fn or_gone(parts: Vec<JobStatus>, why: Option<&str>) -> Found {
        match why {
            Some(why) if parts.is_empty() => Found::Gone(why.to_string()),
            _ => Found::Parts(parts),
        }
    }
}

struct Slot {
    id: String,
    settled: Option<JobStatus>,
    /// What the live queue said of a job it saw end (the history's answer wins).
    ended: Option<JobStatus>,
    reasons: Vec<String>,
}

/// One `status` call being resolved (see the module docs).
pub struct Resolver {
    slots: Vec<Slot>,
}

impl Resolver {
    /// Checks and de-duplicates `ids` ([`unique_ids`]); nothing runs yet.
    pub fn new(
        ids: Vec<String>,
        check: impl Fn(&str) -> Result<(), Error>,
    ) -> Result<Resolver, Error> {
        let slots = unique_ids(ids, check)?
            .into_iter()
            .map(|id| Slot {
                id,
                settled: None,
                ended: None,
                reasons: Vec::new(),
            })
            .collect();
        Ok(Resolver { slots })
    }

    fn open(&self) -> Vec<String> {
        let open = self.slots.iter().filter(|s| s.settled.is_none());
        open.map(|s| s.id.clone()).collect()
    }

    fn lookup(
        mut self,
        live: bool,
        answers: impl FnOnce(&[String]) -> Result<Vec<Found>, Error>,
    ) -> Result<Resolver, Error> {
        let open = self.open();
        if open.is_empty() {
            return Ok(self);
        }
        let found = answers(&open)?;
        let slots = self.slots.iter_mut().filter(|s| s.settled.is_none());
        for (slot, found) in slots.zip(found) {
            match found {
                Found::Parts(parts) if parts.is_empty() => {}
                Found::Parts(parts) => {
                    let whole = aggregate(&slot.id, parts);
                    if live && whole.state.is_terminal() {
                        slot.ended = Some(whole);
                    } else {
                        slot.settled = Some(whole);
                    }
                }
                Found::Gone(why) => slot.reasons.push(why),
            }
        }
        Ok(self)
    }

    /// Asks the live queue: `query` runs once with every unresolved id, `each` reads its
    /// answer for one id. Jobs it reports as not finished are settled.
    pub fn live<T>(
        self,
        query: impl FnOnce(&[String]) -> Result<T, Error>,
        each: impl FnMut(&T, &str) -> Result<Found, Error>,
    ) -> Result<Resolver, Error> {
        self.lookup(true, per_id(query, each))
    }

    /// Asks the history about the ids still unresolved; whatever it reports settles them.
    pub fn history<T>(
        self,
        query: impl FnOnce(&[String]) -> Result<T, Error>,
        each: impl FnMut(&T, &str) -> Result<Found, Error>,
    ) -> Result<Resolver, Error> {
        self.lookup(false, per_id(query, each))
    }

    /// [`Resolver::live`] with a lookup that answers every id it is given at once: one
    /// [`Found`] per id, in order (ids it gives no answer for stay unresolved).
    pub fn live_all(
        self,
        answers: impl FnOnce(&[String]) -> Result<Vec<Found>, Error>,
    ) -> Result<Resolver, Error> {
        self.lookup(true, answers)
    }

    /// [`Resolver::history`] with a lookup that answers every id at once.
    pub fn history_all(
        self,
        answers: impl FnOnce(&[String]) -> Result<Vec<Found>, Error>,
    ) -> Result<Resolver, Error> {
        self.lookup(false, answers)
    }

    /// One status per unique id: what a lookup settled, else what the live queue saw
    /// end, else `unknown` with every reason gathered (and an empty native state).
    pub fn finish(self) -> Vec<JobStatus> {
        self.slots
            .into_iter()
            .map(|s| {
                s.settled.or(s.ended).unwrap_or_else(|| {
                    let mut u = JobStatus::new(&s.id, JobState::Unknown, "");
                    u.message = Some(match s.reasons.is_empty() {
                        true => "no query of the scheduler reported the job".into(),
                        false => s.reasons.join("; "),
                    });
                    u
                })
            })
            .collect()
    }
}

/// One query for all ids, then `each` for each id: a lookup's answers in id order.
fn per_id<T>(
    query: impl FnOnce(&[String]) -> Result<T, Error>,
    mut each: impl FnMut(&T, &str) -> Result<Found, Error>,
) -> impl FnOnce(&[String]) -> Result<Vec<Found>, Error> {
    move |ids| {
        let answer = query(ids)?;
        ids.iter().map(|id| each(&answer, id)).collect()
    }
}

/// Whether a status says the job is no longer there to cancel: it ended, or no query
/// reported it at all (the resolver's `unknown`, whose native state is empty).
pub fn is_gone(s: &JobStatus) -> bool {
    s.state.is_terminal() || (s.state == JobState::Unknown && s.native_state.is_empty())
}

/// An idempotent cancel: runs `cmd`; success, or output containing one of the `gone`
/// phrases (the scheduler saying the job already ended or is unknown), is done. Any
/// other failure is confirmed through `confirm` (the plugin's own `status` of the job):
/// when every status it returns [`is_gone`], the cancel succeeded after all; otherwise,
/// or when `confirm` itself fails, the error is the cancel program's failure.
///
/// ```rust
/// use corral_plugin_sdk::status::cancel;
/// use corral_plugin_sdk::testing::Script;
/// use corral_plugin_sdk::{Command, JobState, JobStatus};
///
/// let b = Script::new().run("condor_rm", 1, "", "Couldn't find/remove all jobs\n");
/// let ended = || Ok(vec![JobStatus::new("7", JobState::Succeeded, "4")]);
/// cancel(&b, &Command::new("condor_rm").arg("7"), &[], ended).unwrap();
///
/// let b = Script::new().run("condor_rm", 1, "", "Permission denied\n");
/// let running = || Ok(vec![JobStatus::new("7", JobState::Running, "2")]);
/// assert!(cancel(&b, &Command::new("condor_rm").arg("7"), &[], running).is_err());
/// ```
pub fn cancel(
    b: &dyn Backend,
    cmd: &Command,
    gone: &[&str],
    confirm: impl FnOnce() -> Result<Vec<JobStatus>, Error>,
) -> Result<(), Error> {
    let out = run(b, cmd)?;
    if out.success() {
        return Ok(());
    }
    let said = format!("{}{}", out.stdout_text(), out.stderr_text());
    if gone.iter().any(|g| said.contains(g)) {
        return Ok(());
    }
    match confirm() {
        Ok(st) if !st.is_empty() && st.iter().all(is_gone) => {
            log::info(
                b,
                &format!(
                    "{} failed, but the job is no longer there to cancel ({})",
                    cmd.display(),
                    st[0].state
                ),
            );
            Ok(())
        }
        _ => Err(failure(&cmd.program, &out)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(id: &str, state: JobState) -> JobStatus {
        JobStatus::new(id, state, "x")
    }

    #[test]
    fn the_first_bad_id_is_refused_before_any_lookup() {
        let bad = |id: &str| match id {
            "x" => Err(Error::Invalid("x".into())),
            _ => Ok(()),
        };
        assert!(Resolver::new(vec!["1".into(), "x".into()], bad).is_err());
    }

    #[test]
    fn a_job_the_live_queue_saw_end_is_asked_of_the_history_which_wins() {
        let ids = vec!["1".into(), "2".into()];
        let got = Resolver::new(ids, |_| Ok(()))
            .unwrap()
            .live(
                |_| Ok(()),
                |_, id| Ok(Found::Parts(vec![st(id, JobState::Succeeded)])),
            )
            .unwrap()
            .history(
                |ids| Ok(ids.to_vec()),
                |asked, id| {
                    assert_eq!(asked, &["1", "2"]);
                    Ok(match id {
                        "1" => Found::Parts(vec![st(id, JobState::Failed("exit 3".into()))]),
                        _ => Found::Gone("forgotten".into()),
                    })
                },
            )
            .unwrap()
            .finish();
        assert_eq!(got[0].state, JobState::Failed("exit 3".into()));
        // The history forgot job 2: what the live queue saw stands.
        assert_eq!(got[1].state, JobState::Succeeded);
    }

    #[test]
    fn a_lookup_with_nothing_left_to_resolve_does_not_run() {
        let got = Resolver::new(vec!["1".into()], |_| Ok(()))
            .unwrap()
            .live(
                |_| Ok(()),
                |_, id| Ok(Found::Parts(vec![st(id, JobState::Running)])),
            )
            .unwrap()
            .history(
                |_| -> Result<(), Error> { panic!("the history must not be asked") },
                |_, _| Ok(Found::Parts(Vec::new())),
            )
            .unwrap()
            .finish();
        assert_eq!(got[0].state, JobState::Running);
        let none = Resolver::new(Vec::new(), |_| Ok(())).unwrap();
        let none = none
            .live(
                |_| -> Result<(), Error> { panic!("nothing to ask") },
                |_, _| Ok(Found::Parts(Vec::new())),
            )
            .unwrap();
        assert!(none.finish().is_empty());
    }

    #[test]
    fn a_job_nobody_knows_is_unknown_with_every_reason_and_no_native_state() {
        let got = Resolver::new(vec!["9".into()], |_| Ok(()))
            .unwrap()
            .live(|_| Ok(()), |_, _| Ok(Found::Gone("not queued".into())))
            .unwrap()
            .history(|_| Ok(()), |_, _| Ok(Found::Gone("not in history".into())))
            .unwrap()
            .finish();
        assert_eq!(got[0].state, JobState::Unknown);
        assert_eq!(
            got[0].message.as_deref(),
            Some("not queued; not in history")
        );
        assert!(is_gone(&got[0]));
        assert!(!is_gone(&st("9", JobState::Unknown)));
    }

    #[test]
    fn an_arrays_parts_are_aggregated_under_its_id() {
        let got = Resolver::new(vec!["5".into()], |_| Ok(()))
            .unwrap()
            .live(
                |_| Ok(()),
                |_, _| {
                    Ok(Found::Parts(vec![
                        st("5.1", JobState::Running),
                        st("5.2", JobState::Queued(false)),
                    ]))
                },
            )
            .unwrap()
            .finish();
        assert_eq!(
            (got[0].id.as_str(), &got[0].state),
            ("5", &JobState::Running)
        );
    }

    #[test]
    fn unique_ids_keeps_first_occurrences_in_order() {
        let ids: Vec<String> = ["3", "1", "3", "2", "1"].map(String::from).to_vec();
        assert_eq!(unique_ids(ids, |_| Ok(())).unwrap(), ["3", "1", "2"]);
    }

    #[test]
    fn a_failed_cancel_whose_status_lookup_fails_reports_the_cancel_failure() {
        let b = crate::testing::Script::new().run("qdel", 1, "", "qdel: connection refused\n");
        let e = cancel(&b, &Command::new("qdel").arg("1"), &[], || {
            Err(Error::Backend("qstat is down".into()))
        })
        .unwrap_err();
        assert!(
            matches!(&e, Error::Backend(m) if m.contains("qdel exited with status 1")),
            "{e:?}"
        );
    }
}
