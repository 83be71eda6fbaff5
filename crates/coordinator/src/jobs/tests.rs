//! The job table, submission and the poller against fake agents: a scheduler behind
//! each fake agent is the only fake; routing, commands, the table and the database are
//! the real ones.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::poller::GroupKey;
use super::table::Job;
use super::*;
use crate::registry::Settings;
use corral_proto::api::{Phase, PollReport, SubmitRequest};
use corral_proto::job::{
    Dependency, DependencyKind, JobSpec, JobState, JobStatus, LoadedPlugin, PluginInfo,
};
use corral_proto::wire::CoordMsg;

/// A scheduler behind a fake agent: what it answers, and what it was asked. The
/// agent side is the only fake here; routing, commands, the table and the database
/// are the real ones.
#[derive(Default)]
struct FakeScheduler {
    jobs: Mutex<BTreeMap<String, JobStatus>>,
    next: AtomicUsize,
    status_calls: AtomicUsize,
    asked: Mutex<Vec<Vec<String>>>,
    submitted: Mutex<Vec<JobSpec>>,
    /// Answer status with this error while set.
    failing: Mutex<Option<PluginError>>,
    /// Leave these ids out of status answers.
    omit: Mutex<HashSet<String>>,
}

impl FakeScheduler {
    fn set(&self, id: &str, state: JobState) {
        self.jobs.lock().unwrap().insert(
            id.into(),
            JobStatus {
                id: id.into(),
                state,
                native_state: "X".into(),
                exit_code: None,
                message: None,
            },
        );
    }

    fn answer(&self, call: PluginCall) -> Result<PluginReply, PluginError> {
        match call {
            PluginCall::Render(spec) => Ok(PluginReply::Text(format!(
                "#!/bin/sh\n{}\n",
                spec.executable
            ))),
            PluginCall::Submit(spec) => {
                if spec.executable == "refuse" {
                    return Err(PluginError::Invalid("no such program".into()));
                }
                let id = (1000 + self.next.fetch_add(1, Ordering::SeqCst)).to_string();
                self.submitted.lock().unwrap().push(spec);
                self.set(&id, JobState::Queued { held: false });
                Ok(PluginReply::Submitted(id))
            }
            PluginCall::Status(ids) => {
                self.status_calls.fetch_add(1, Ordering::SeqCst);
                self.asked.lock().unwrap().push(ids.clone());
                if let Some(e) = self.failing.lock().unwrap().clone() {
                    return Err(e);
                }
                let jobs = self.jobs.lock().unwrap();
                let omit = self.omit.lock().unwrap();
                Ok(PluginReply::Statuses(
                    ids.iter()
                        .filter(|i| !omit.contains(*i))
                        .map(|i| {
                            jobs.get(i).cloned().unwrap_or(JobStatus {
                                id: i.clone(),
                                state: JobState::Unknown,
                                native_state: String::new(),
                                exit_code: None,
                                message: Some("not in the queue".into()),
                            })
                        })
                        .collect(),
                ))
            }
            PluginCall::Cancel(id) => {
                let mut jobs = self.jobs.lock().unwrap();
                if let Some(j) = jobs.get_mut(&id) {
                    if !j.state.is_terminal() {
                        j.state = JobState::Cancelled;
                    }
                }
                Ok(PluginReply::Done)
            }
            other => Err(PluginError::Unsupported(other.export().into())),
        }
    }
}

struct Rig {
    registry: Arc<Registry>,
    commands: Arc<Commands>,
    jobs: Arc<Jobs>,
    store: Arc<Store>,
    dir: tempfile::TempDir,
    conns: Vec<(String, u64)>,
    /// (node, export) of every plugin call a fake agent answered, in order.
    calls: Arc<Mutex<Vec<(String, &'static str)>>>,
}

fn plugin(name: &str) -> LoadedPlugin {
    LoadedPlugin {
        info: PluginInfo {
            name: name.into(),
            version: "0.1.0".into(),
            scheduler: name.into(),
            features: vec![],
        },
        digest: "00".into(),
        grants: Default::default(),
    }
}

fn settings() -> JobsSection {
    JobsSection {
        poll_interval: Duration::from_millis(100),
        max_backoff: Duration::from_millis(800),
        call_timeout: Duration::from_secs(2),
        status_batch: 2000,
        retention: Duration::ZERO,
    }
}

fn rig_in(dir: tempfile::TempDir, jobs: JobsSection) -> Rig {
    let (store, loaded) = Store::open(dir.path(), 100).unwrap();
    let store = Arc::new(store);
    let registry = Arc::new(
        Registry::new(
            Settings {
                disconnect_after_beats: 3,
                down_after: Duration::from_secs(60),
                persist_every: Duration::from_secs(60),
                event_retention: 100,
            },
            vec![],
            vec![],
        )
        // Every node may serve the plugins these tests use (routing by authority is tested
        // in the registry).
        .with_authority(crate::config::Authority::new(
            vec![],
            ["slurm", "ray-jobs", "pbs"]
                .map(|p| (p.to_string(), vec![crate::config::ANY_NODE.to_string()]))
                .into(),
        )),
    );
    let commands = Arc::new(Commands::new(registry.clone()));
    let jobs = Arc::new(Jobs::new(
        jobs,
        store.clone(),
        registry.clone(),
        commands.clone(),
        loaded.jobs,
    ));
    Rig {
        registry,
        commands,
        jobs,
        store,
        dir,
        conns: vec![],
        calls: Arc::default(),
    }
}

fn rig() -> Rig {
    rig_in(tempfile::tempdir().unwrap(), settings())
}

impl Rig {
    /// Connects a fake agent `node` hosting `plugins`, all answered by `sched`.
    fn agent(&mut self, node: &str, plugins: &[&str], sched: Arc<FakeScheduler>) {
        let (conn, mut rx) = self.connect(node, plugins);
        let commands = self.commands.clone();
        let answerer = node.to_string();
        let calls = self.calls.clone();
        tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                if let CoordMsg::Command {
                    id,
                    command: Command::Plugin { call, .. },
                } = msg
                {
                    calls
                        .lock()
                        .unwrap()
                        .push((answerer.clone(), call.export()));
                    let answer = sched.answer(*call);
                    commands.complete(&answerer, conn, id, Ok(CommandOutput::Plugin(answer)));
                }
            }
        });
    }

    /// A new connection for `node` that announces `plugins` and whose agent is gone
    /// before it reads anything: the registry still lists it, but no command reaches it.
    fn mute(&mut self, node: &str, plugins: &[&str]) {
        drop(self.connect(node, plugins));
    }

    /// A new connection for `node` announcing `plugins`, and its command queue.
    fn connect(
        &mut self,
        node: &str,
        plugins: &[&str],
    ) -> (u64, tokio::sync::mpsc::Receiver<CoordMsg>) {
        let (tx, rx) = tokio::sync::mpsc::channel::<CoordMsg>(64);
        let conn = self.registry.connect(
            node,
            Duration::from_secs(1),
            "127.0.0.1:1".into(),
            "test".into(),
            tx,
            Box::new(|| ()),
        );
        self.registry.plugins_announced(
            node,
            conn,
            plugins.iter().map(|p| plugin(p)).collect(),
            vec![],
        );
        self.conns.push((node.into(), conn));
        (conn, rx)
    }

    fn disconnect(&self, node: &str) {
        let conn = self.conns.iter().rev().find(|(n, _)| n == node).unwrap().1;
        self.registry.disconnect(node, conn, "test");
    }

    /// How many `export` calls `node`'s fake agent answered.
    fn calls_to(&self, node: &str, export: &str) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, e)| n == node && *e == export)
            .count()
    }

    async fn submit(&self, scheduler: &str, spec: JobSpec) -> Result<JobView, JobError> {
        self.submit_via(scheduler, spec, None).await
    }

    async fn submit_via(
        &self,
        scheduler: &str,
        spec: JobSpec,
        via: Option<&str>,
    ) -> Result<JobView, JobError> {
        self.jobs
            .submit(
                "alice",
                SubmitRequest {
                    scheduler: scheduler.into(),
                    spec,
                    via: via.map(str::to_string),
                    dry_run: false,
                },
            )
            .await
            .map(|r| match r {
                Submitted::Job(job) => *job,
                Submitted::DryRun(r) => panic!("not a dry run: {r:?}"),
            })
    }

    async fn poll(&self) -> PollReport {
        self.jobs.poll(Scope::All).await
    }

    fn job(&self, id: JobId) -> JobView {
        self.jobs.get(id).unwrap()
    }
}

fn spec(exe: &str) -> JobSpec {
    JobSpec {
        executable: exe.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_poll_asks_each_scheduler_once_about_all_its_jobs() {
    let mut r = rig();
    let sched = Arc::new(FakeScheduler::default());
    r.agent("n1", &["slurm"], sched.clone());
    let mut ids = vec![];
    for _ in 0..250 {
        ids.push(r.submit("slurm", spec("/bin/true")).await.unwrap().id);
    }
    let report = r.poll().await;
    assert_eq!(sched.status_calls.load(Ordering::SeqCst), 1);
    assert_eq!(sched.asked.lock().unwrap()[0].len(), 250);
    assert_eq!((report.groups, report.calls, report.jobs), (1, 1, 250));
    assert_eq!(
        report.changed, 250,
        "the native state is news for every job"
    );
    sched.set("1003", JobState::Running);
    let report = r.poll().await;
    assert_eq!(sched.status_calls.load(Ordering::SeqCst), 2);
    assert_eq!(report.changed, 1, "only the running one changed");
    assert_eq!(r.job(ids[3]).state, Some(JobState::Running));
    assert_eq!(r.job(ids[3]).state_word, "running");
}

#[tokio::test]
async fn status_batch_splits_only_beyond_its_size() {
    let mut s = settings();
    s.status_batch = 100;
    let mut r = rig_in(tempfile::tempdir().unwrap(), s);
    let sched = Arc::new(FakeScheduler::default());
    r.agent("n1", &["slurm"], sched.clone());
    for _ in 0..250 {
        r.submit("slurm", spec("/bin/true")).await.unwrap();
    }
    let report = r.poll().await;
    assert_eq!(report.calls, 3);
    let sizes: Vec<usize> = sched.asked.lock().unwrap().iter().map(Vec::len).collect();
    assert_eq!(sizes, [100, 100, 50]);
}

#[tokio::test]
async fn terminal_states_never_move_back() {
    let mut r = rig();
    let sched = Arc::new(FakeScheduler::default());
    r.agent("n1", &["slurm"], sched.clone());
    let job = r.submit("slurm", spec("/bin/true")).await.unwrap();
    let native = job.native_id.clone().unwrap();
    sched.set(&native, JobState::Succeeded);
    r.poll().await;
    assert_eq!(r.job(job.id).state, Some(JobState::Succeeded));
    // The scheduler changes its mind (or a late answer arrives): ignored.
    sched.set(&native, JobState::Running);
    let report = r.poll().await;
    assert_eq!(report.calls, 0, "a finished job is not asked about");
    r.jobs.apply(
        "slurm",
        "n1",
        std::slice::from_ref(&native),
        vec![JobStatus {
            id: native.clone(),
            state: JobState::Running,
            native_state: "RUNNING".into(),
            exit_code: None,
            message: None,
        }],
    );
    let after = r.job(job.id);
    assert_eq!(after.state, Some(JobState::Succeeded));
    let words: Vec<&str> = after.history.iter().map(|t| t.state.as_str()).collect();
    assert_eq!(words, ["submitting", "queued", "succeeded"]);
}

#[tokio::test]
async fn a_job_missing_from_the_answer_is_unknown_and_stays_tracked() {
    let mut r = rig();
    let sched = Arc::new(FakeScheduler::default());
    r.agent("n1", &["slurm"], sched.clone());
    let job = r.submit("slurm", spec("/bin/true")).await.unwrap();
    let native = job.native_id.clone().unwrap();
    sched.omit.lock().unwrap().insert(native.clone());
    r.poll().await;
    let seen = r.job(job.id);
    assert_eq!(seen.state, Some(JobState::Unknown));
    assert!(
        seen.message.unwrap().contains("did not mention"),
        "reason given"
    );
    // Still asked about; resolved when the plugin knows again.
    sched.omit.lock().unwrap().clear();
    sched.set(
        &native,
        JobState::Failed {
            reason: "exit 3".into(),
        },
    );
    let report = r.poll().await;
    assert_eq!(report.jobs, 1);
    assert_eq!(
        r.job(job.id).state,
        Some(JobState::Failed {
            reason: "exit 3".into()
        })
    );
}

#[tokio::test]
async fn unknown_from_the_plugin_stays_tracked() {
    let mut r = rig();
    let sched = Arc::new(FakeScheduler::default());
    r.agent("n1", &["slurm"], sched.clone());
    let job = r.submit("slurm", spec("/bin/true")).await.unwrap();
    sched.jobs.lock().unwrap().clear();
    for _ in 0..3 {
        r.poll().await;
    }
    let seen = r.job(job.id);
    assert_eq!(seen.state, Some(JobState::Unknown));
    assert!(!seen.is_finished());
    assert_eq!(sched.status_calls.load(Ordering::SeqCst), 3);
    let unknowns = seen.history.iter().filter(|t| t.state == "unknown").count();
    assert_eq!(unknowns, 1, "an unchanged state is not a new history entry");
}

#[tokio::test]
async fn failed_polls_back_off_up_to_the_cap_and_recover() {
    let mut r = rig();
    let sched = Arc::new(FakeScheduler::default());
    r.agent("n1", &["slurm"], sched.clone());
    let job = r.submit("slurm", spec("/bin/true")).await.unwrap();
    *sched.failing.lock().unwrap() = Some(PluginError::Backend("slurmctld down".into()));
    let key: GroupKey = "slurm".into();
    let delay = |r: &Rig| {
        let inner = r.jobs.lock();
        inner.groups[&key]
            .due
            .saturating_duration_since(Instant::now())
    };
    let mut delays = vec![];
    for _ in 0..5 {
        let report = r.poll().await;
        assert_eq!(report.failed_groups, 1);
        delays.push(delay(&r));
    }
    // 100 ms doubling: 200, 400, 800 (cap), 800, 800.
    let ms: Vec<u64> = delays
        .iter()
        .map(|d| (d.as_millis() as u64 + 50) / 100 * 100)
        .collect();
    assert_eq!(ms, [200, 400, 800, 800, 800]);
    assert!(r.job(job.id).poll_error.unwrap().contains("slurmctld down"));
    *sched.failing.lock().unwrap() = None;
    let report = r.poll().await;
    assert_eq!(report.failed_groups, 0);
    assert!(delay(&r) <= Duration::from_millis(100));
    assert_eq!(r.job(job.id).poll_error, None);
}

#[tokio::test]
async fn the_poller_polls_on_its_own_and_backs_off() {
    let mut r = rig();
    let sched = Arc::new(FakeScheduler::default());
    r.agent("n1", &["slurm"], sched.clone());
    let job = r.submit("slurm", spec("/bin/true")).await.unwrap();
    let stop = CancellationToken::new();
    let poller = tokio::spawn(r.jobs.clone().run(stop.clone()));
    sched.set(job.native_id.as_deref().unwrap(), JobState::Running);
    tokio::time::sleep(Duration::from_millis(550)).await;
    let healthy = sched.status_calls.swap(0, Ordering::SeqCst);
    assert!(
        (3..=7).contains(&healthy),
        "about one call per 100 ms: {healthy}"
    );
    assert_eq!(r.job(job.id).state, Some(JobState::Running));
    *sched.failing.lock().unwrap() = Some(PluginError::Timeout("squeue".into()));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let failing = sched.status_calls.load(Ordering::SeqCst);
    // 200 + 400 + 800 ms of backoff fit about 3 attempts into 1.5 s, not 15.
    assert!((2..=4).contains(&failing), "backed off: {failing}");
    stop.cancel();
    poller.await.unwrap();
}

#[tokio::test]
async fn with_no_host_of_the_instance_a_job_keeps_its_last_state_and_says_why() {
    let mut r = rig();
    let sched = Arc::new(FakeScheduler::default());
    r.agent("n1", &["slurm"], sched.clone());
    r.agent("n2", &["slurm"], sched.clone());
    let job = r.submit("slurm", spec("/bin/true")).await.unwrap();
    assert_eq!(job.node, "n1");
    sched.set(job.native_id.as_deref().unwrap(), JobState::Running);
    r.poll().await;
    assert_eq!(r.job(job.id).state, Some(JobState::Running));
    // Every host of the instance away: nothing to ask, which is not a failure.
    r.disconnect("n1");
    r.disconnect("n2");
    sched.set(job.native_id.as_deref().unwrap(), JobState::Succeeded);
    let report = r.poll().await;
    assert_eq!(
        (report.groups, report.calls, report.failed_groups),
        (1, 0, 0)
    );
    let seen = r.job(job.id);
    assert_eq!(seen.state, Some(JobState::Running), "the last known state");
    assert_eq!(
        seen.poll_error.as_deref(),
        Some("no host of scheduler slurm is connected (submitted through n1); last known state shown")
    );
    {
        let inner = r.jobs.lock();
        let wait = inner.groups["slurm"]
            .due
            .saturating_duration_since(Instant::now());
        assert!(wait <= Duration::from_millis(100), "no backoff: {wait:?}");
    }
    // Another host of the instance comes back: polled through it, and the reason goes.
    r.agent("n2", &["slurm"], sched.clone());
    r.poll().await;
    let seen = r.job(job.id);
    assert_eq!(seen.state, Some(JobState::Succeeded));
    assert_eq!(seen.poll_error, None);
    assert_eq!(seen.polled_via.as_deref(), Some("n2"));
}

#[tokio::test]
async fn a_reconnected_node_is_waited_for_until_it_announces_then_a_missing_plugin_backs_off() {
    let mut r = rig();
    let sched = Arc::new(FakeScheduler::default());
    r.agent("n1", &["slurm"], sched.clone());
    let job = r.submit("slurm", spec("/bin/true")).await.unwrap();
    // A new connection that has not announced yet: waited for, no backoff.
    let (tx, _rx) = tokio::sync::mpsc::channel::<CoordMsg>(8);
    let conn = r.registry.connect(
        "n1",
        Duration::from_secs(1),
        "127.0.0.1:2".into(),
        "test".into(),
        tx,
        Box::new(|| ()),
    );
    let report = r.poll().await;
    assert_eq!((report.calls, report.failed_groups), (0, 0));
    assert!(r.job(job.id).poll_error.unwrap().contains("not announced"));
    // It announces, without the plugin: that is a failure, and backs off.
    r.registry
        .plugins_announced("n1", conn, vec![plugin("pbs")], vec![]);
    let report = r.poll().await;
    assert_eq!((report.calls, report.failed_groups), (0, 1));
    let why = r.job(job.id).poll_error.unwrap();
    assert!(
        why.contains("no connected host of scheduler slurm hosts the slurm plugin now")
            && why.contains("n1 announced pbs"),
        "{why}"
    );
}

#[tokio::test]
async fn a_job_is_polled_through_another_host_of_its_instance_when_its_submit_host_is_gone() {
    let mut r = rig();
    // Two login nodes of one Slurm: one scheduler behind both.
    let sched = Arc::new(FakeScheduler::default());
    r.agent("a", &["slurm"], sched.clone());
    r.agent("b", &["slurm"], sched.clone());
    let job = r
        .submit_via("slurm", spec("/bin/true"), Some("b"))
        .await
        .unwrap();
    let native = job.native_id.clone().unwrap();
    // Both connected: the submit host is asked, though a comes first in the config.
    r.poll().await;
    assert_eq!(
        (r.calls_to("a", "status"), r.calls_to("b", "status")),
        (0, 1)
    );
    assert_eq!(r.job(job.id).polled_via.as_deref(), Some("b"));

    r.disconnect("b");
    sched.set(&native, JobState::Running);
    let report = r.poll().await;
    assert_eq!((report.calls, report.failed_groups), (1, 0));
    assert_eq!(r.calls_to("a", "status"), 1);
    let seen = r.job(job.id);
    assert_eq!(seen.state, Some(JobState::Running));
    assert_eq!(seen.node, "b", "still submitted through b");
    assert_eq!(seen.polled_via.as_deref(), Some("a"));
    assert_eq!(seen.poll_error, None);
    let notes: Vec<&str> = seen
        .history
        .iter()
        .filter_map(|t| t.message.as_deref())
        .collect();
    assert!(
        notes.contains(&"status through node a, another host of slurm (submitted through b)"),
        "{notes:?}"
    );

    // The submit host returns and is preferred again.
    r.agent("b", &["slurm"], sched.clone());
    sched.set(&native, JobState::Succeeded);
    r.poll().await;
    assert_eq!(
        (r.calls_to("a", "status"), r.calls_to("b", "status")),
        (1, 2)
    );
    let seen = r.job(job.id);
    assert_eq!(seen.state, Some(JobState::Succeeded));
    assert_eq!(seen.polled_via.as_deref(), Some("b"));
}

#[tokio::test]
async fn one_status_call_covers_the_jobs_of_every_submit_host_of_an_instance() {
    let mut r = rig();
    let sched = Arc::new(FakeScheduler::default());
    r.agent("a", &["slurm"], sched.clone());
    r.agent("b", &["slurm"], sched.clone());
    for via in ["a", "b", "a", "b"] {
        r.submit_via("slurm", spec("/bin/true"), Some(via))
            .await
            .unwrap();
    }
    let report = r.poll().await;
    assert_eq!((report.groups, report.calls, report.jobs), (1, 1, 4));
    // Through the first submit host in the configured order.
    assert_eq!(
        (r.calls_to("a", "status"), r.calls_to("b", "status")),
        (1, 0)
    );
    assert_eq!(sched.asked.lock().unwrap()[0].len(), 4);
}

#[tokio::test]
async fn a_host_that_cannot_be_asked_hands_the_poll_to_the_next_host() {
    let mut r = rig();
    let sched = Arc::new(FakeScheduler::default());
    r.agent("a", &["slurm"], sched.clone());
    r.agent("b", &["slurm"], sched.clone());
    let job = r.submit("slurm", spec("/bin/true")).await.unwrap();
    assert_eq!(job.node, "a");
    // a's agent is gone but its connection not yet noticed: the call cannot reach it.
    r.mute("a", &["slurm"]);
    sched.set(job.native_id.as_deref().unwrap(), JobState::Running);
    let report = r.poll().await;
    assert_eq!((report.calls, report.jobs, report.failed_groups), (2, 1, 0));
    let seen = r.job(job.id);
    assert_eq!(seen.state, Some(JobState::Running));
    assert_eq!(seen.polled_via.as_deref(), Some("b"));
    // With no other host, the same is a failure of the instance, which backs off.
    r.disconnect("b");
    let report = r.poll().await;
    assert_eq!((report.calls, report.failed_groups), (1, 1));
    let why = r.job(job.id).poll_error.unwrap();
    assert!(
        why.contains("no connected host answered") && why.contains("node a"),
        "{why}"
    );
}

#[tokio::test]
async fn a_job_is_cancelled_through_another_host_of_its_instance_when_its_submit_host_is_gone() {
    let mut r = rig();
    let sched = Arc::new(FakeScheduler::default());
    r.agent("a", &["slurm"], sched.clone());
    r.agent("b", &["slurm"], sched.clone());
    let job = r.submit("slurm", spec("/bin/sleep")).await.unwrap();
    assert_eq!(job.node, "a");
    r.disconnect("a");
    let cancelled = r.jobs.cancel(job.id).await.unwrap();
    assert_eq!(r.calls_to("b", "cancel"), 1);
    assert_eq!(
        cancelled.history.last().unwrap().message.as_deref(),
        Some("cancel requested through node b (submitted through a)")
    );
    r.poll().await;
    assert_eq!(r.job(job.id).state, Some(JobState::Cancelled));

    // No host at all: refused, saying why, and nothing changes.
    let other = r.submit("slurm", spec("/bin/sleep")).await.unwrap();
    r.disconnect("b");
    let err = r.jobs.cancel(other.id).await.unwrap_err();
    assert!(matches!(err, JobError::Unavailable(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("no host of scheduler slurm is connected (submitted through b)"),
        "{err}"
    );
    assert_eq!(
        r.job(other.id).state,
        Some(JobState::Queued { held: false })
    );
}

#[tokio::test]
async fn a_dependency_may_name_a_job_submitted_through_another_host_of_the_instance() {
    let mut r = rig();
    let sched = Arc::new(FakeScheduler::default());
    r.agent("a", &["slurm"], sched.clone());
    r.agent("b", &["slurm"], sched.clone());
    r.agent("c", &["pbs"], sched.clone());
    let first = r
        .submit_via("slurm", spec("/bin/true"), Some("a"))
        .await
        .unwrap();
    let mut second = spec("/bin/true");
    second.dependencies = vec![Dependency {
        kind: DependencyKind::AfterOk,
        job: first.id.to_string(),
    }];
    r.submit_via("slurm", second.clone(), Some("b"))
        .await
        .unwrap();
    let sent = sched.submitted.lock().unwrap()[1].clone();
    assert_eq!(sent.dependencies[0].job, first.native_id.unwrap());
    // Another scheduler's job is no dependency.
    let err = r.submit("pbs", second).await.unwrap_err();
    assert!(
        matches!(err, JobError::Invalid(_)) && err.to_string().contains("same scheduler instance"),
        "{err}"
    );
}

#[tokio::test]
async fn cancel_of_a_finished_job_is_not_an_error() {
    let mut r = rig();
    let sched = Arc::new(FakeScheduler::default());
    r.agent("n1", &["slurm"], sched.clone());
    let job = r.submit("slurm", spec("/bin/sleep")).await.unwrap();
    let cancelled = r.jobs.cancel(job.id).await.unwrap();
    assert_eq!(
        cancelled.history.last().unwrap().message.as_deref(),
        Some("cancel requested")
    );
    r.poll().await;
    assert_eq!(r.job(job.id).state, Some(JobState::Cancelled));
    let again = r.jobs.cancel(job.id).await.unwrap();
    assert_eq!(again.state, Some(JobState::Cancelled));
    let err = r.jobs.cancel(JobId(999)).await.unwrap_err();
    assert!(matches!(err, JobError::NoJob(JobId(999))), "{err}");
}

#[tokio::test]
async fn a_submission_is_durable_before_its_id_is_returned() {
    let mut r = rig();
    let sched = Arc::new(FakeScheduler::default());
    r.agent("n1", &["slurm"], sched.clone());
    let job = r.submit("slurm", spec("/bin/true")).await.unwrap();
    // Read the database from another connection, without flushing anything.
    let (_other, loaded) = Store::open(r.dir.path(), 100).unwrap();
    let stored = loaded.jobs.iter().find(|j| j.id == job.id).unwrap();
    assert_eq!(stored.phase, Phase::Submitted);
    assert_eq!(stored.native_id, job.native_id);
    assert_eq!(stored.spec, job.spec);
    let words: Vec<&str> = stored.history.iter().map(|t| t.state.as_str()).collect();
    assert_eq!(words, ["submitting", "queued"]);
}

#[tokio::test]
async fn a_job_left_submitting_by_a_crash_is_orphaned_at_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, _) = Store::open(dir.path(), 100).unwrap();
        let job = Job::submitting("slurm", "n1", "alice", spec("/bin/true"));
        store.insert_job(job.row()).await.unwrap();
        // The coordinator "crashes" here: the plugin never answered.
    }
    let r = rig_in(dir, settings());
    let jobs = r.jobs.list();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].phase, Phase::Orphaned);
    assert_eq!(jobs[0].state_word, "orphaned");
    assert!(jobs[0].message.as_ref().unwrap().contains("unknown"));
    assert!(jobs[0].is_finished());
    r.store.flush().await;
    let (_s, loaded) = Store::open(r.dir.path(), 100).unwrap();
    assert_eq!(loaded.jobs[0].phase, Phase::Orphaned, "written back");
}

#[tokio::test]
async fn tracked_jobs_survive_a_restart_and_ids_are_never_reused() {
    let dir = tempfile::tempdir().unwrap();
    let first;
    {
        let mut r = rig_in(dir, settings());
        let sched = Arc::new(FakeScheduler::default());
        r.agent("n1", &["slurm"], sched.clone());
        first = r.submit("slurm", spec("/bin/true")).await.unwrap();
        r.store.flush().await;
        let dir = r.dir;
        drop((r.jobs, r.commands, r.registry));
        let mut r = rig_in(dir, settings());
        let sched = Arc::new(FakeScheduler::default());
        sched.set(first.native_id.as_deref().unwrap(), JobState::Running);
        r.agent("n1", &["slurm"], sched.clone());
        let report = r.poll().await;
        assert_eq!(report.jobs, 1, "the reloaded job is polled");
        assert_eq!(r.job(first.id).state, Some(JobState::Running));
        let second = r.submit("slurm", spec("/bin/true")).await.unwrap();
        assert!(second.id > first.id);
    }
}

#[tokio::test]
async fn a_refused_submission_is_recorded_as_rejected() {
    let mut r = rig();
    let sched = Arc::new(FakeScheduler::default());
    r.agent("n1", &["slurm"], sched.clone());
    let err = r.submit("slurm", spec("refuse")).await.unwrap_err();
    let JobError::Plugin {
        error,
        job: Some(id),
        ..
    } = &err
    else {
        panic!("{err:?}");
    };
    assert!(matches!(error, PluginError::Invalid(_)));
    assert!(err.to_string().contains("no such program"), "{err}");
    let job = r.job(*id);
    assert_eq!(job.phase, Phase::Rejected);
    assert!(job.is_finished());
    assert_eq!(r.poll().await.calls, 0);
}

#[tokio::test]
async fn an_unknown_scheduler_names_it_and_lists_the_hosts() {
    let mut r = rig();
    let sched = Arc::new(FakeScheduler::default());
    r.agent("n1", &["slurm"], sched.clone());
    r.agent("n2", &["slurm", "ray-jobs"], sched.clone());
    let err = r.submit("pbs", spec("/bin/true")).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, JobError::NoScheduler(_)), "{err:?}");
    assert!(msg.contains("\"pbs\""), "{msg}");
    assert!(msg.contains("n1: slurm; n2: slurm, ray-jobs"), "{msg}");
    assert!(r.jobs.list().is_empty(), "nothing recorded");
    // Hosted, but only by a node that is away: a different answer.
    r.agent("n3", &["pbs"], sched.clone());
    r.disconnect("n3");
    let err = r.submit("pbs", spec("/bin/true")).await.unwrap_err();
    assert!(matches!(err, JobError::Unavailable(_)), "{err:?}");
    assert!(err.to_string().contains("n3"), "{err}");
}

#[tokio::test]
async fn dependencies_by_corral_id_reach_the_plugin_as_native_ids() {
    let mut r = rig();
    let sched = Arc::new(FakeScheduler::default());
    r.agent("n1", &["slurm"], sched.clone());
    let first = r.submit("slurm", spec("/bin/true")).await.unwrap();
    let mut second = spec("/bin/true");
    second.dependencies = vec![Dependency {
        kind: DependencyKind::AfterOk,
        job: first.id.to_string(),
    }];
    let job = r.submit("slurm", second.clone()).await.unwrap();
    assert_eq!(
        job.spec.dependencies[0].job,
        first.id.to_string(),
        "recorded by corral id"
    );
    let sent = sched.submitted.lock().unwrap()[1].clone();
    assert_eq!(sent.dependencies[0].job, first.native_id.clone().unwrap());
    for (bad, words) in [
        ("42", "look like c42"),
        ("c999", "no job c999"),
        ("x", "not a corral job id"),
    ] {
        second.dependencies[0].job = bad.into();
        let err = r.submit("slurm", second.clone()).await.unwrap_err();
        assert!(matches!(err, JobError::Invalid(_)), "{err:?}");
        assert!(err.to_string().contains(words), "{bad}: {err}");
    }
}

#[tokio::test]
async fn a_dry_run_renders_and_records_nothing() {
    let mut r = rig();
    let sched = Arc::new(FakeScheduler::default());
    r.agent("n1", &["slurm"], sched.clone());
    let out = r
        .jobs
        .submit(
            "alice",
            SubmitRequest {
                scheduler: "slurm".into(),
                spec: spec("/bin/hostname"),
                via: None,
                dry_run: true,
            },
        )
        .await
        .unwrap();
    let Submitted::DryRun(rendered) = out else {
        panic!("not rendered: {out:?}");
    };
    assert!(rendered.script.contains("/bin/hostname"));
    assert_eq!(rendered.node, "n1");
    assert!(r.jobs.list().is_empty());
    assert!(sched.submitted.lock().unwrap().is_empty());
}

#[tokio::test]
async fn plugin_calls_are_counted_by_export_and_outcome() {
    let mut r = rig();
    let sched = Arc::new(FakeScheduler::default());
    r.agent("n1", &["slurm"], sched.clone());
    r.submit("slurm", spec("/bin/true")).await.unwrap();
    r.submit("slurm", spec("refuse")).await.unwrap_err();
    let m = r.jobs.metrics();
    assert_eq!(m.plugin_calls[&("slurm".to_string(), "submit", "ok")], 1);
    assert_eq!(
        m.plugin_calls[&("slurm".to_string(), "submit", "invalid")],
        1
    );
    assert_eq!(m.jobs[&("slurm".to_string(), "queued".to_string())], 1);
    assert_eq!(m.jobs[&("slurm".to_string(), "rejected".to_string())], 1);
}

#[tokio::test]
async fn an_instance_in_flight_is_not_taken_by_another_pass() {
    let mut r = rig();
    let sched = Arc::new(FakeScheduler::default());
    r.agent("n1", &["slurm"], sched.clone());
    r.submit("slurm", spec("/bin/true")).await.unwrap();
    // Created, not yet run: the instance is already in flight.
    let first = r.jobs.poll(Scope::All);
    let second = r.jobs.poll(Scope::All).await;
    assert_eq!((second.groups, second.calls), (0, 0));
    let first = first.await;
    assert_eq!((first.groups, first.calls), (1, 1));
    assert_eq!(sched.status_calls.load(Ordering::SeqCst), 1);
    // An instance polled just now is not due yet.
    assert_eq!(r.jobs.poll(Scope::Due).await.groups, 0);
}

#[tokio::test]
async fn finished_jobs_are_forgotten_after_the_retention_and_unfinished_ones_never() {
    let mut s = settings();
    s.retention = Duration::from_secs(3600);
    let mut r = rig_in(tempfile::tempdir().unwrap(), s);
    let sched = Arc::new(FakeScheduler::default());
    r.agent("n1", &["slurm"], sched.clone());
    let done = r.submit("slurm", spec("/bin/true")).await.unwrap();
    let waiting = r.submit("slurm", spec("/bin/true")).await.unwrap();
    sched.set(done.native_id.as_deref().unwrap(), JobState::Succeeded);
    r.poll().await;
    {
        let mut inner = r.jobs.lock();
        for id in [done.id, waiting.id] {
            inner.table.get_mut(id).unwrap().updated_ms -= 2 * 3600 * 1000;
        }
        inner.table.prune_due();
    }
    r.jobs.prune();
    let left: Vec<JobId> = r.jobs.list().iter().map(|j| j.id).collect();
    assert_eq!(left, [waiting.id]);
    r.store.flush().await;
    let (_s, loaded) = Store::open(r.dir.path(), 100).unwrap();
    let stored: Vec<JobId> = loaded.jobs.iter().map(|j| j.id).collect();
    assert_eq!(stored, [waiting.id], "deleted from the database too");
}

#[test]
fn job_ids_read_and_print_as_c_numbers() {
    assert_eq!("c17".parse::<JobId>(), Ok(JobId(17)));
    assert_eq!(JobId(17).to_string(), "c17");
    assert!("17".parse::<JobId>().unwrap_err().contains("c17"));
    for bad in ["", "c", "c0", "c+1", "c-1", "C17", "job17"] {
        assert!(bad.parse::<JobId>().is_err(), "{bad:?}");
    }
    assert_eq!(serde_json::to_string(&JobId(3)).unwrap(), "\"c3\"");
}
