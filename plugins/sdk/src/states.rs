//! State tables: what a scheduler's native job states mean portably, in one table per
//! plugin, and the one function that turns a native record into a [`JobStatus`].
//!
//! A table lists, for each [`Means`], the native keys that mean it (state names like
//! Slurm's `"PENDING"`, numbers like HTCondor's `JobStatus` 1 to 7, or letters like Grid
//! Engine's): "what does this scheduler call queued" is one line of it. What a
//! state alone cannot say comes from the record as [`Facts`]: whether a queued job is
//! held, the exit code, a signal, why it was removed, a note from the scheduler, and,
//! for states whose meaning depends on how the job ended, the plugin's own verdict.
//!
//! Invariants:
//! - A native state the table does not name is `unknown` with a message naming the
//!   scheduler and the state, never guessed.
//! - A job that ended without an exit code is never called succeeded by [`Means::Exited`]:
//!   it is `unknown` with the reason.
//! - The exit code is reported only for a job that ended or is completing; a succeeded
//!   job whose record carries none reports 0 (every scheduler here succeeds only on 0).
//! - The message is the record's own words (`note`, then the signal), with the removal
//!   reason first for a cancelled job and the reason last for an unknown one.
//!
//! Trade-off: lookups are linear scans of a `&'static` slice. Tables have a few dozen
//! keys at most, and a slice keeps them `const`, ordered (Grid Engine's letters are read
//! first-match, in table order) and readable as the documentation of the mapping. A key
//! listed twice is a mistake the table's unit test catches ([`StateTable::duplicate`]).
//!
//! ```rust
//! use corral_plugin_sdk::states::{Facts, Means, StateTable};
//! use corral_plugin_sdk::JobState;
//!
//! const STATES: StateTable<i64> = StateTable::new(
//!     "HTCondor",
//!     &[(Means::Queued, &[1]), (Means::Running, &[2]), (Means::Cancelled, &[3]), (Means::Exited, &[4])],
//! );
//!
//! let done = STATES.status("7", &4, "Completed", Facts { exit_code: Some(3), ..Facts::default() });
//! assert_eq!(done.state, JobState::Failed("exit code 3".into()));
//! assert_eq!(done.exit_code, Some(3));
//!
//! let removed = Facts { removed_because: Some("via condor_rm".into()), ..Facts::default() };
//! let gone = STATES.status("8", &3, "Removed", removed);
//! assert_eq!((gone.state, gone.message.as_deref()), (JobState::Cancelled, Some("via condor_rm")));
//!
//! let odd = STATES.status("9", &9, "9", Facts::default());
//! assert_eq!(odd.state, JobState::Unknown);
//! assert_eq!(odd.message.as_deref(), Some("unrecognised HTCondor state \"9\""));
//! ```

use std::borrow::Borrow;

use crate::{JobState, JobStatus};

/// What a native state means portably.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Means {
    /// Waiting to run; held when [`Facts::held`] says so (a hold, a dependency).
    Queued,
    /// Waiting on a person or another job, whatever the facts say.
    Held,
    Running,
    Suspended,
    /// Ended or being ended, output not yet delivered.
    Completing,
    Succeeded,
    /// Failed, with what the state means (the exit code and the facts are appended).
    Failed(&'static str),
    Cancelled,
    TimedOut,
    /// Ended; the facts decide: a signal fails it, exit code 0 succeeds it, another code
    /// fails it, no code makes it unknown.
    Exited,
    /// Ended; the plugin decides from its record ([`Facts::ended`]; unknown without it).
    Ended,
    /// The scheduler itself cannot tell; why.
    Unknown(&'static str),
    /// Another meaning, with a note that always goes into the message.
    Noted(&'static Means, &'static str),
}

/// What one record says beyond its state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// A queued job waits on a hold or a dependency ([`Means::Queued`] becomes held).
    pub held: bool,
    /// The program's exit code, when the record has one and it is the program's own.
    pub exit_code: Option<i32>,
    /// The signal that killed the program, when it was killed by one.
    pub signal: Option<i32>,
    /// Why the job was removed or cancelled (HTCondor's `RemoveReason`, a `deleted_by`).
    pub removed_because: Option<String>,
    /// Anything else the scheduler says (a pending or hold reason, a comment).
    pub note: Option<String>,
    /// The plugin's verdict for [`Means::Ended`] (how the job ended, from its record).
    pub ended: Option<JobState>,
}

/// The rows of a state table: each meaning with the native keys that mean it.
pub type Rows<K> = &'static [(Means, &'static [K])];

/// One scheduler's native states and their meanings (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct StateTable<K: 'static> {
    /// The scheduler's name, for messages (`"Slurm"`).
    pub scheduler: &'static str,
    pub rows: Rows<K>,
}

impl<K: PartialEq + 'static> StateTable<K> {
    pub const fn new(scheduler: &'static str, rows: Rows<K>) -> Self {
        StateTable { scheduler, rows }
    }

    /// Every key with its meaning, in table order.
    pub fn entries(&self) -> impl Iterator<Item = (&K, Means)> + '_ {
        self.rows
            .iter()
            .flat_map(|(m, keys)| keys.iter().map(move |k| (k, *m)))
    }

    /// The meaning of `key`, if the table names it.
    pub fn means<Q>(&self, key: &Q) -> Option<Means>
    where
        K: Borrow<Q>,
        Q: PartialEq + ?Sized,
    {
        self.first(|k| k.borrow() == key)
    }

    /// The meaning of the first entry whose key satisfies `matches`, in table order.
    pub fn first(&self, matches: impl Fn(&K) -> bool) -> Option<Means> {
        self.entries().find(|(k, _)| matches(k)).map(|(_, m)| m)
    }

    /// A key listed more than once, if any (for the table's own unit test).
    pub fn duplicate(&self) -> Option<&K> {
        let keys: Vec<&K> = self.entries().map(|(k, _)| k).collect();
        (0..keys.len())
            .find(|&i| keys[..i].contains(&keys[i]))
            .map(|i| keys[i])
    }

    /// The status of one record whose state is `key` (shown as `native`).
    pub fn status<Q>(&self, id: &str, key: &Q, native: &str, facts: Facts) -> JobStatus
    where
        K: Borrow<Q>,
        Q: PartialEq + ?Sized,
    {
        self.resolve(id, self.means(key), native, facts)
    }

    /// The status of one record whose meaning the plugin looked up itself (`None`: the
    /// table does not name its state).
    pub fn resolve(&self, id: &str, means: Option<Means>, native: &str, f: Facts) -> JobStatus {
        let mut notes: Vec<String> = f.note.iter().cloned().collect();
        let mut means = means;
        while let Some(Means::Noted(inner, note)) = means {
            notes.insert(0, note.to_string());
            means = Some(*inner);
        }
        if let Some(s) = f.signal {
            notes.push(format!("killed by signal {s}"));
        }
        let detail = |what: String, code: Option<i32>, notes: &[String]| {
            let mut r = what;
            if let Some(c) = code.filter(|c| *c != 0) {
                r.push_str(&format!(" (exit code {c})"));
            }
            if !notes.is_empty() {
                r.push_str(&format!(": {}", notes.join("; ")));
            }
            r
        };
        let mut why = None;
        let state = match means {
            // `Noted` never reaches here: the loop above unwrapped every note.
            None | Some(Means::Noted(..)) => {
                why = Some(format!("unrecognised {} state {native:?}", self.scheduler));
                JobState::Unknown
            }
            Some(Means::Queued) => JobState::Queued(f.held),
            Some(Means::Held) => JobState::Queued(true),
            Some(Means::Running) => JobState::Running,
            Some(Means::Suspended) => JobState::Suspended,
            Some(Means::Completing) => JobState::Completing,
            Some(Means::Succeeded) => JobState::Succeeded,
            Some(Means::Failed(what)) => JobState::Failed(detail(what.into(), f.exit_code, &notes)),
            Some(Means::Cancelled) => JobState::Cancelled,
            Some(Means::TimedOut) => JobState::TimedOut,
            Some(Means::Exited) => match (f.signal, f.exit_code) {
                (Some(s), _) => {
                    JobState::Failed(detail(format!("killed by signal {s}"), None, &[]))
                }
                (None, Some(0)) => JobState::Succeeded,
                (None, Some(c)) => JobState::Failed(detail(format!("exit code {c}"), None, &notes)),
                (None, None) => JobState::Unknown,
            },
            Some(Means::Ended) => f.ended.clone().unwrap_or(JobState::Unknown),
            Some(Means::Unknown(what)) => {
                why = Some(what.to_string());
                JobState::Unknown
            }
        };
        if state == JobState::Unknown && why.is_none() {
            why = Some(format!(
                "{} reports the job finished without an exit status",
                self.scheduler
            ));
        }
        if state == JobState::Cancelled {
            if let Some(r) = &f.removed_because {
                notes.insert(0, r.clone());
            }
        }
        notes.extend(why);
        let mut s = JobStatus::new(id, state, native);
        if s.state.is_terminal() || s.state == JobState::Completing {
            s.exit_code = match (&s.state, f.exit_code) {
                (JobState::Succeeded, None) => Some(0),
                (_, code) => code,
            };
        }
        if !notes.is_empty() {
            s.message = Some(notes.join("; "));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: StateTable<&str> = StateTable::new(
        "Test",
        &[
            (Means::Queued, &["Q"]),
            (Means::Held, &["H"]),
            (Means::Failed("the job failed"), &["F"]),
            (Means::Exited, &["X"]),
            (Means::Ended, &["E"]),
            (Means::Unknown("the job moved"), &["M"]),
            (Means::Noted(&Means::Completing, "being deleted"), &["D"]),
            (Means::Cancelled, &["C"]),
        ],
    );

    fn status(key: &str, facts: Facts) -> JobStatus {
        T.status("1", key, key, facts)
    }

    #[test]
    fn a_queued_job_is_held_only_when_the_facts_say_so() {
        let held = Facts {
            held: true,
            ..Facts::default()
        };
        assert_eq!(status("Q", held).state, JobState::Queued(true));
        assert_eq!(status("Q", Facts::default()).state, JobState::Queued(false));
        assert_eq!(status("H", Facts::default()).state, JobState::Queued(true));
    }

    #[test]
    fn a_failure_names_its_exit_code_and_the_records_words() {
        let f = Facts {
            exit_code: Some(3),
            note: Some("NonZeroExitCode".into()),
            ..Facts::default()
        };
        let s = status("F", f);
        assert_eq!(
            s.state,
            JobState::Failed("the job failed (exit code 3): NonZeroExitCode".into())
        );
        assert_eq!(s.exit_code, Some(3));
    }

    #[test]
    fn an_exit_without_a_code_is_unknown_never_succeeded() {
        let s = status("X", Facts::default());
        assert_eq!(s.state, JobState::Unknown);
        assert!(s.message.unwrap().contains("without an exit status"));
        let killed = Facts {
            signal: Some(9),
            exit_code: Some(0),
            ..Facts::default()
        };
        assert_eq!(
            status("X", killed).state,
            JobState::Failed("killed by signal 9".into())
        );
    }

    #[test]
    fn the_plugin_decides_ended_states_and_unknown_ones_say_why() {
        let f = Facts {
            ended: Some(JobState::TimedOut),
            ..Facts::default()
        };
        assert_eq!(status("E", f).state, JobState::TimedOut);
        let m = status("M", Facts::default());
        assert_eq!(
            (m.state, m.message.as_deref()),
            (JobState::Unknown, Some("the job moved"))
        );
    }

    #[test]
    fn a_noted_state_carries_its_note_and_a_cancelled_one_its_removal_reason() {
        let d = status("D", Facts::default());
        assert_eq!(
            (d.state, d.message.as_deref()),
            (JobState::Completing, Some("being deleted"))
        );
        let c = Facts {
            removed_because: Some("by alice".into()),
            note: Some("exit 143".into()),
            ..Facts::default()
        };
        assert_eq!(
            status("C", c).message.as_deref(),
            Some("by alice; exit 143")
        );
    }

    #[test]
    fn exit_codes_are_reported_only_for_ended_jobs() {
        let f = || Facts {
            exit_code: Some(0),
            ..Facts::default()
        };
        assert_eq!(status("Q", f()).exit_code, None);
        assert_eq!(status("X", f()).exit_code, Some(0));
        assert_eq!(status("D", Facts::default()).exit_code, None);
    }

    #[test]
    fn a_key_listed_twice_is_found() {
        assert_eq!(T.duplicate(), None);
        const TWICE: StateTable<u8> =
            StateTable::new("T", &[(Means::Running, &[1, 2]), (Means::Held, &[1])]);
        assert_eq!(TWICE.duplicate(), Some(&1));
    }
}
