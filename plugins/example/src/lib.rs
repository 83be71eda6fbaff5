//! The smallest complete scheduler plugin, for plugins/README.md: POSIX `at` as the
//! "scheduler" (`at now` to submit, `atq` to see the queue, `atrm` to cancel).
//!
//! Invariants: the job runs through a script on `at`'s stdin whose every value the SDK
//! quotes, so `render` is exactly what `submit` sends; `at` keeps no record of ended
//! jobs, so a job that left `atq` is `unknown` with that reason, never assumed to have
//! succeeded.

use corral_plugin_sdk::script::batch_script;
use corral_plugin_sdk::{
    failure, run, Backend, Command, Error, JobSpec, JobState, JobStatus, PluginInfo, Scheduler,
};

pub struct Example;

corral_plugin_sdk::export_plugin!(Example);

fn at(spec: &JobSpec) -> Result<Command, Error> {
    let args = vec!["now".to_string()];
    let script = batch_script("at", &args, spec)?;
    Ok(Command::new("at").args(args).stdin(script))
}

fn check_id(id: &str) -> Result<(), Error> {
    if !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(Error::Invalid(format!("{id:?} is not an at job number")))
    }
}

impl Scheduler for Example {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "example".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            scheduler: "POSIX at".into(),
            features: vec![],
        }
    }

    fn render(_b: &dyn Backend, spec: JobSpec) -> Result<String, Error> {
        let cmd = at(&spec)?;
        Ok(String::from_utf8_lossy(&cmd.stdin.unwrap_or_default()).into_owned())
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
            Some(id) if out.success() && check_id(id).is_ok() => Ok(id.to_string()),
            _ => Err(failure("at", &out)),
        }
    }

    fn status(b: &dyn Backend, ids: Vec<String>) -> Result<Vec<JobStatus>, Error> {
        let out = run(b, &Command::new("atq"))?;
        if !out.success() {
            return Err(failure("atq", &out));
        }
        let queue = out.stdout_text();
        ids.iter()
            .map(|id| {
                check_id(id)?;
                // `atq`: "7<TAB>Thu Nov 23 20:30:00 2026 a root"; queue "=" is running.
                let line = queue
                    .lines()
                    .find(|l| l.split('\t').next() == Some(id.as_str()));
                let queue_letter = line.and_then(|l| l.split_whitespace().rev().nth(1));
                Ok(match queue_letter {
                    Some("=") => JobStatus::new(id, JobState::Running, "="),
                    Some(q) => JobStatus::new(id, JobState::Queued(false), q),
                    None => {
                        let mut s = JobStatus::new(id, JobState::Unknown, "");
                        s.message = Some("not in atq: at keeps no record of ended jobs".into());
                        s
                    }
                })
            })
            .collect()
    }

    fn cancel(b: &dyn Backend, id: String) -> Result<(), Error> {
        check_id(&id)?;
        let out = run(b, &Command::new("atrm").arg(&id))?;
        if out.success() || out.stderr_text().contains("Cannot find jobid") {
            Ok(())
        } else {
            Err(failure("atrm", &out))
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
