//! The smallest complete scheduler plugin, for plugins/README.md: POSIX `at` as the
//! "scheduler" (`at now` to submit, `atq` to see the queue, `atrm` to cancel).
//!
//! Invariants: the job runs through a script on `at`'s stdin whose every value the SDK
//! quotes, so `render` is exactly what `submit` sends; `at` keeps no record of ended
//! jobs, so a job that left `atq` is `unknown` with that reason, never assumed to have
//! succeeded. What fits the SDK's [`Batch`] declaration (`info`, `status`, `cancel`) is
//! declared; `at` reports a new job on stderr, so `render` and `submit` are written here.

use corral_plugin_sdk::batch::{Batch, Cancel};
use corral_plugin_sdk::ids::{JobId, Tasks};
use corral_plugin_sdk::script::batch_script;
use corral_plugin_sdk::status::Found;
use corral_plugin_sdk::{
    failure, run, run_ok, Backend, Command, Error, JobSpec, JobState, JobStatus, Scheduler,
};

pub struct Example;

corral_plugin_sdk::export_plugin!(Example);

/// at's job numbers: digits, no array tasks.
const ID: JobId = JobId::new("at", Tasks::None);

fn at(spec: &JobSpec) -> Result<Command, Error> {
    let args = vec!["now".to_string()];
    let script = batch_script("at", &args, spec)?;
    Ok(Command::new("at").args(args).stdin(script))
}

/// The one lookup: `atq` ("7<TAB>Thu Nov 23 20:30:00 2026 a root"; queue `=` is running).
fn atq(b: &dyn Backend, ids: &[String]) -> Result<Vec<Found>, Error> {
    let queue = run_ok(b, &Command::new("atq"))?;
    let answer = |id: &String| {
        let line = queue.lines().find(|l| l.split('\t').next() == Some(id));
        match line.and_then(|l| l.split_whitespace().rev().nth(1)) {
            Some("=") => Found::Parts(vec![JobStatus::new(id, JobState::Running, "=")]),
            Some(q) => Found::Parts(vec![JobStatus::new(id, JobState::Queued(false), q)]),
            None => Found::Gone("not in atq: at keeps no record of ended jobs".into()),
        }
    };
    Ok(ids.iter().map(answer).collect())
}

const EXAMPLE: Batch = Batch::new("example", env!("CARGO_PKG_VERSION"), "POSIX at")
    .status(|id| ID.check(id), atq, None)
    .cancel(Cancel::new("atrm", &["Cannot find jobid"]));

impl Scheduler for Example {
    const BATCH: Option<Batch> = Some(EXAMPLE);

    fn render(_b: &dyn Backend, spec: JobSpec) -> Result<String, Error> {
        Ok(at(&spec)?.stdin_text())
    }

    fn submit(b: &dyn Backend, spec: JobSpec) -> Result<String, Error> {
        // `at` reports "job 7 at Thu Nov 23 20:30:00 2026" on stderr.
        let out = run(b, &at(&spec)?)?;
        let text = out.stderr_text();
        let id = text
            .lines()
            .find_map(|l| l.strip_prefix("job "))
            .and_then(|rest| rest.split_whitespace().next());
        match id {
            Some(id) if out.success() && ID.check(id).is_ok() => Ok(id.to_string()),
            _ => Err(failure("at", &out)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_plugin_sdk::testing::Script;

    #[test]
    fn submit_sends_what_render_shows_and_reads_the_job_number() {
        let spec = JobSpec::command("/bin/echo", ["$(not run)", "it's"]);
        let rendered = Example::render(&Script::new(), spec.clone()).unwrap();
        let b = Script::new().run(
            "at",
            0,
            "",
            "warning: commands will be executed using /bin/sh\njob 7 at Thu Nov 23 20:30:00 2026\n",
        );
        assert_eq!(Example::submit(&b, spec).unwrap(), "7");
        assert_eq!(b.commands()[0].stdin.as_deref(), Some(rendered.as_bytes()));
        assert!(rendered.ends_with("exec '/bin/echo' '$(not run)' 'it'\\''s'\n"));
    }

    #[test]
    fn a_job_gone_from_atq_is_unknown_not_succeeded() {
        let b = Script::new().ok(
            "atq",
            "7\tThu Nov 23 20:30:00 2026 = root\n8\tThu Nov 23 21:00:00 2026 a root\n",
        );
        let got = Example::status(&b, vec!["7".into(), "8".into(), "9".into()]).unwrap();
        let states: Vec<_> = got.iter().map(|s| s.state.clone()).collect();
        assert_eq!(
            states,
            [
                JobState::Running,
                JobState::Queued(false),
                JobState::Unknown
            ]
        );
    }

    #[test]
    fn cancel_of_a_job_at_forgot_is_not_an_error() {
        let b = Script::new().run("atrm", 1, "", "Cannot find jobid 9\n");
        Example::cancel(&b, "9".into()).unwrap();
    }
}
