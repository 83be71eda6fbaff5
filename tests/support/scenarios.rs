//! A scheduler plugin driven through the real plugin host against a real scheduler,
//! scenario by scenario (tests/slurm.rs, tests/sge.rs): the jobs' directory, the calls
//! with the identity they run as, polling, and running scenarios side by side.
//!
//! Invariants: every scenario runs in its own task, so a panic fails that scenario only
//! and the others still report; a wait that runs out fails with the last status seen.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use corral_proto::job::{JobSpec, JobState, JobStatus, PluginCall, PluginError, PluginReply};
use corral_sandbox::plugins::PluginHost;

/// One plugin's jobs: where they run, who submits and cancels them.
pub struct PluginJobs {
    pub host: PluginHost,
    pub plugin: &'static str,
    /// Who `submit` and `cancel` run as (status and list run as the service user).
    pub owner: String,
    /// The jobs' working directory.
    pub dir: tempfile::TempDir,
    /// The jobs' stdout and stderr files in `dir`, in the scheduler's own patterns
    /// (`slurm-%j.out`); no stderr: with stdout.
    pub stdout: &'static str,
    pub stderr: Option<&'static str>,
}

impl PluginJobs {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `call` with `owner` as the job's owner.
    pub async fn call_as(&self, call: PluginCall, owner: &str) -> Result<PluginReply, PluginError> {
        self.host.call(self.plugin, call, Some(owner)).await
    }

    /// `call` as the fixture's owner.
    pub async fn call(&self, call: PluginCall) -> Result<PluginReply, PluginError> {
        self.call_as(call, &self.owner).await
    }

    /// A spec that runs `sh -c SCRIPT` in the jobs' directory.
    pub fn sh(&self, script: &str) -> JobSpec {
        JobSpec {
            executable: "/bin/sh".into(),
            arguments: vec!["-c".into(), script.into()],
            directory: Some(self.dir.path().display().to_string()),
            stdout_path: Some(self.path(self.stdout).display().to_string()),
            stderr_path: self.stderr.map(|e| self.path(e).display().to_string()),
            ..JobSpec::default()
        }
    }

    pub async fn submit(&self, spec: JobSpec) -> String {
        match self.call(PluginCall::Submit(spec)).await {
            Ok(PluginReply::Submitted(id)) => id,
            other => panic!("submit: {other:?}"),
        }
    }

    pub async fn status(&self, id: &str) -> JobStatus {
        match self.call(PluginCall::Status(vec![id.to_string()])).await {
            Ok(PluginReply::Statuses(mut v)) => {
                assert_eq!(v.len(), 1, "{v:?}");
                v.remove(0)
            }
            other => panic!("status {id}: {other:?}"),
        }
    }

    pub async fn cancel(&self, id: &str) {
        match self.call(PluginCall::Cancel(id.to_string())).await {
            Ok(PluginReply::Done) => {}
            other => panic!("cancel {id}: {other:?}"),
        }
    }

    /// Polls `status` until `pred` holds (or `within` passes: a failure with the last status).
    pub async fn wait(
        &self,
        id: &str,
        what: &str,
        within: Duration,
        pred: impl Fn(&JobStatus) -> bool,
    ) -> JobStatus {
        let start = Instant::now();
        loop {
            let s = self.status(id).await;
            if pred(&s) {
                return s;
            }
            assert!(
                start.elapsed() < within,
                "job {id} not {what} within {within:?}; last: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    pub async fn wait_running(&self, id: &str) -> JobStatus {
        self.wait(id, "running", Duration::from_secs(60), |s| {
            s.state == JobState::Running
        })
        .await
    }

    pub async fn wait_ended(&self, id: &str) -> JobStatus {
        self.wait(id, "ended", Duration::from_secs(90), |s| {
            s.state.is_terminal()
        })
        .await
    }
}

/// One scenario: an async test body over a shared fixture `F`.
pub type Scenario<F> = fn(Arc<F>) -> Pin<Box<dyn Future<Output = ()> + Send>>;

/// Runs each scenario in its own task (a panic fails that scenario only), printing how
/// long each took; returns the names of those that failed.
pub async fn run_all<F: Send + Sync + 'static>(
    f: &Arc<F>,
    scenarios: Vec<(&'static str, Scenario<F>)>,
) -> Vec<&'static str> {
    let tasks: Vec<_> = scenarios
        .into_iter()
        .map(|(name, s)| {
            let run = s(f.clone());
            let task = tokio::spawn(async move {
                let started = Instant::now();
                run.await;
                started.elapsed()
            });
            (name, task)
        })
        .collect();
    let mut failed = Vec::new();
    for (name, t) in tasks {
        match t.await {
            Ok(took) => println!("scenario {name} ... ok ({took:.1?})"),
            Err(e) => {
                println!("scenario {name} ... FAILED ({e})");
                failed.push(name);
            }
        }
    }
    failed
}
