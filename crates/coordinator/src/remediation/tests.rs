//! The policy and its actions against a scripted scheduler and Ray: the registry, the
//! database and the remediation are the real ones; only what the actuator reaches is
//! scripted. Time is the test's: every step is given its `now`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;
use crate::config::{DrainAfter, RemediationSection, SchedulerSection};
use crate::registry::Settings;
use crate::store::Store;
use corral_proto::api::EventKind;
use corral_proto::job::NodeState;
use corral_proto::model::{Health, HealthStatus, NodeReport, RayStatus, Reason};

/// A scheduler's nodes (native name → its drain reason, `None` when it takes work) and
/// what was asked of it and of the agents.
#[derive(Default)]
struct Script {
    nodes: Mutex<BTreeMap<String, Option<String>>>,
    calls: Mutex<Vec<String>>,
    /// Scheduler calls fail while this many remain.
    fail: Mutex<u32>,
    /// No host of any instance is connected: calls reach nothing.
    no_host: std::sync::atomic::AtomicBool,
    /// `drain-node` calls (only) fail at the scheduler while this many remain.
    fail_drain: Mutex<u32>,
}

impl Script {
    fn drain_reason(&self, node: &str) -> Option<String> {
        self.nodes.lock().unwrap().get(node).cloned().flatten()
    }
    fn set(&self, node: &str, reason: Option<&str>) {
        self.nodes
            .lock()
            .unwrap()
            .insert(node.into(), reason.map(str::to_string));
    }
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

struct Act(Arc<Script>);

impl Actuator for Act {
    fn scheduler(
        &self,
        instance: &str,
        call: PluginCall,
    ) -> BoxFuture<'static, Result<PluginReply, Failure>> {
        let s = self.0.clone();
        let instance = instance.to_string();
        Box::pin(async move {
            s.calls
                .lock()
                .unwrap()
                .push(format!("{instance} {}", call.export()));
            if s.no_host.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(Failure::Unreached(format!(
                    "no authorized host of scheduler {instance} is connected"
                )));
            }
            {
                let mut fail = s.fail.lock().unwrap();
                if *fail > 0 {
                    *fail -= 1;
                    return Err(Failure::Retry("scontrol: slurmctld not responding".into()));
                }
            }
            if instance == "htcondor" {
                return Err(Failure::Final("not supported: node-state".into()));
            }
            let mut nodes = s.nodes.lock().unwrap();
            Ok(match call {
                PluginCall::NodeState { node } => {
                    PluginReply::NodeState(nodes.get(&node).map(|r| NodeState {
                        drained: r.is_some(),
                        // "" stands for a scheduler that keeps no reason.
                        reason: r.clone().filter(|r| !r.is_empty()),
                    }))
                }
                PluginCall::DrainNode { node, reason } => {
                    let mut fail = s.fail_drain.lock().unwrap();
                    if *fail > 0 {
                        *fail -= 1;
                        return Err(Failure::Retry("scontrol: timed out".into()));
                    }
                    nodes.insert(node, Some(reason));
                    PluginReply::Done
                }
                PluginCall::ResumeNode { node } => {
                    nodes.insert(node, None);
                    PluginReply::Done
                }
                other => panic!("unexpected call {other:?}"),
            })
        })
    }

    fn connected(&self, _node: &str) -> bool {
        true
    }

    fn agent(&self, node: &str, command: Command) -> BoxFuture<'static, Result<String, String>> {
        let s = self.0.clone();
        let what = match command {
            Command::RayDrain { deadline_ms, .. } => format!("{node} ray-drain {deadline_ms}"),
            Command::RayResume => format!("{node} ray-resume"),
            other => panic!("unexpected command {other:?}"),
        };
        Box::pin(async move {
            s.calls.lock().unwrap().push(what);
            Ok("done".into())
        })
    }
}

struct Rig {
    registry: Arc<Registry>,
    store: Arc<Store>,
    rem: Arc<Remediation>,
    script: Arc<Script>,
    conns: BTreeMap<String, u64>,
    _rx: Vec<tokio::sync::mpsc::Receiver<corral_proto::wire::CoordMsg>>,
    dir: tempfile::TempDir,
    t0: Instant,
}

fn cfg() -> RemediationSection {
    RemediationSection {
        drain_interval: Duration::ZERO,
        retry_after: Duration::from_millis(100),
        max_backoff: Duration::from_millis(400),
        ..RemediationSection::default()
    }
}

fn slurm() -> BTreeMap<String, SchedulerSection> {
    [(
        "slurm".to_string(),
        SchedulerSection {
            nodes: vec!["*".into()],
            ..SchedulerSection::default()
        },
    )]
    .into()
}

fn rig_with(
    cfg: RemediationSection,
    schedulers: BTreeMap<String, SchedulerSection>,
    nodes: &[&str],
) -> Rig {
    rig_in(
        tempfile::tempdir().unwrap(),
        cfg,
        schedulers,
        nodes,
        Arc::default(),
    )
}

fn rig_in(
    dir: tempfile::TempDir,
    cfg: RemediationSection,
    schedulers: BTreeMap<String, SchedulerSection>,
    nodes: &[&str],
    script: Arc<Script>,
) -> Rig {
    let (store, loaded) = Store::open(dir.path(), 1000).unwrap();
    let store = Arc::new(store);
    let registry = Arc::new(Registry::new(
        Settings {
            disconnect_after_beats: 3,
            // Short: a test makes a node down by disconnecting it, waiting this out and
            // sweeping (the registry is swept by the coordinator's loop otherwise).
            down_after: Duration::from_millis(300),
            persist_every: Duration::from_secs(60),
            event_retention: 1000,
        },
        loaded.nodes,
        loaded.events,
    ));
    let mut conns = BTreeMap::new();
    let mut rxs = vec![];
    for n in nodes {
        let (conn, rx) = new_connection(&registry, n);
        rxs.push(rx);
        conns.insert(n.to_string(), conn);
        script.set(n, None);
    }
    let rem = Arc::new(Remediation::new(
        cfg,
        &schedulers,
        registry.clone(),
        store.clone(),
        Arc::new(Act(script.clone())),
        loaded.cordons,
        loaded.paused,
    ));
    Rig {
        registry,
        store,
        rem,
        script,
        conns,
        _rx: rxs,
        dir,
        t0: Instant::now(),
    }
}

fn gpu_xid(message: &str) -> Reason {
    Reason {
        check: "gpu_xid:0".into(),
        status: HealthStatus::Unhealthy,
        message: message.into(),
    }
}

/// A new connection of `node`, as its agent makes when it (re)connects.
fn new_connection(
    registry: &Registry,
    node: &str,
) -> (
    u64,
    tokio::sync::mpsc::Receiver<corral_proto::wire::CoordMsg>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let conn = registry.connect(
        node,
        S,
        "127.0.0.1:1".into(),
        "test".into(),
        tx,
        Box::new(|| ()),
    );
    (conn, rx)
}

/// A Ray worker in `state`, as a report shows it.
fn worker(state: corral_proto::model::RayState) -> RayStatus {
    RayStatus {
        role: RayRole::Worker,
        state,
        since_ms: 0,
        venv: "/opt/ray".into(),
        python_version: None,
        ray_version: None,
        head_address: None,
        restarts: 0,
        message: None,
        pid: None,
        log_file: None,
    }
}

/// Two corral nodes, both `n1` in the slurm instance, the limit out of the way.
fn sharing_n1() -> Rig {
    let mut schedulers = slurm();
    schedulers.get_mut("slurm").unwrap().node_names = [("gpu-01", "n1"), ("gpu-02", "n1")]
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .into();
    let r = rig_with(
        RemediationSection {
            max_unhealthy_percent: 100,
            ..cfg()
        },
        schedulers,
        &["gpu-01", "gpu-02"],
    );
    r.script.set("n1", None);
    r
}

impl Rig {
    /// `node`'s agent connects anew (its old connection replaced, not closed).
    fn connect(&mut self, node: &str) {
        let (conn, rx) = new_connection(&self.registry, node);
        self._rx.push(rx);
        self.conns.insert(node.into(), conn);
    }

    fn report(&self, node: &str, reasons: Vec<Reason>, ray_worker: bool) {
        let report = NodeReport {
            node: node.into(),
            health: Health::from_reasons(reasons),
            ray: ray_worker.then(|| worker(corral_proto::model::RayState::Running)),
            ..NodeReport::default()
        };
        assert!(self.registry.report(node, self.conns[node], report));
    }

    fn sick(&self, node: &str) {
        self.report(
            node,
            vec![gpu_xid("GPU 0 (GPU-1) XID 79: fell off the bus")],
            false,
        );
    }

    fn well(&self, node: &str) {
        self.report(node, vec![], false);
    }

    /// One policy step at `t0 + at`, then waits for the actions it started.
    async fn step(&self, at: Duration) {
        self.rem.step(self.t0 + at).await;
        for _ in 0..200 {
            if self.rem.lock().in_flight.is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("actions did not finish");
    }

    fn cordon(&self, node: &str) -> Option<Cordon> {
        self.registry.get(node).unwrap().cordon
    }

    fn events(&self, action: &str) -> Vec<String> {
        self.registry
            .events(0, None, None, 1000)
            .into_iter()
            .filter(|e| e.kind == EventKind::Remediation && e.to == action)
            .map(|e| e.message)
            .collect()
    }
}

const S: Duration = Duration::from_secs(1);

#[tokio::test]
async fn a_node_unhealthy_for_drain_after_is_drained_and_resumed_after_resume_after() {
    let r = rig_with(cfg(), slurm(), &["gpu-01", "gpu-02", "gpu-03", "gpu-04"]);
    r.sick("gpu-01");
    r.step(Duration::ZERO).await;
    r.step(29 * S).await;
    assert!(r.cordon("gpu-01").is_none(), "not before drain_after");
    assert!(r.script.calls().is_empty());
    r.step(30 * S).await;
    let c = r.cordon("gpu-01").expect("cordoned at drain_after");
    assert_eq!(c.by, "policy");
    assert_eq!(c.drains[0].state, "drained", "{c:?}");
    assert_eq!(
        r.script.drain_reason("gpu-01").as_deref(),
        Some("corral: GPU 0 (GPU-1) XID 79: fell off the bus")
    );
    assert_eq!(r.script.calls(), ["slurm node-state", "slurm drain-node"]);
    assert_eq!(r.events("cordon").len(), 1);
    assert!(
        r.events("drain")[0].contains("drained in slurm (as gpu-01)"),
        "{:?}",
        r.events("drain")
    );

    r.well("gpu-01");
    r.step(31 * S).await;
    r.step(31 * S + 299 * S).await;
    assert!(r.cordon("gpu-01").is_some(), "not before resume_after");
    r.step(31 * S + 300 * S).await;
    assert!(r.cordon("gpu-01").is_none(), "resumed");
    assert_eq!(
        r.script.drain_reason("gpu-01"),
        None,
        "the scheduler drain is lifted"
    );
    assert_eq!(r.events("uncordon").len(), 1);
    assert!(r.store.path().exists());
    let m = r.rem.metrics();
    assert_eq!(m.actions[&("drain", "ok")], 1);
    assert_eq!(m.actions[&("resume", "ok")], 1);
}

#[tokio::test]
async fn a_drain_a_person_set_is_never_lifted() {
    let r = rig_with(cfg(), slurm(), &["gpu-01", "gpu-02", "gpu-03", "gpu-04"]);
    r.script.set("gpu-01", Some("maint"));
    r.sick("gpu-01");
    r.step(Duration::ZERO).await;
    r.step(30 * S).await;
    let c = r.cordon("gpu-01").unwrap();
    assert_eq!(c.drains[0].state, "foreign");
    assert!(c.drains[0]
        .message
        .as_deref()
        .unwrap()
        .contains("\"maint\""));
    assert_eq!(
        r.script.drain_reason("gpu-01").as_deref(),
        Some("maint"),
        "not overwritten"
    );
    r.well("gpu-01");
    r.step(31 * S).await;
    r.step(400 * S).await;
    assert!(
        r.cordon("gpu-01").is_none(),
        "corral's own cordon is lifted"
    );
    assert_eq!(
        r.script.drain_reason("gpu-01").as_deref(),
        Some("maint"),
        "the person's drain stays"
    );
    assert!(
        !r.script.calls().iter().any(|c| c.ends_with("resume-node")),
        "{:?}",
        r.script.calls()
    );
}

#[tokio::test]
async fn a_drain_a_person_took_over_is_left_in_place_on_resume() {
    let r = rig_with(cfg(), slurm(), &["gpu-01", "gpu-02", "gpu-03", "gpu-04"]);
    r.sick("gpu-01");
    r.step(Duration::ZERO).await;
    r.step(30 * S).await;
    assert_eq!(r.cordon("gpu-01").unwrap().drains[0].state, "drained");
    // An admin looks at the node and keeps it out with a reason of their own.
    r.script.set("gpu-01", Some("RMA ticket 4711"));
    r.well("gpu-01");
    r.step(31 * S).await;
    r.step(400 * S).await;
    assert!(r.cordon("gpu-01").is_none());
    assert_eq!(
        r.script.drain_reason("gpu-01").as_deref(),
        Some("RMA ticket 4711")
    );
    assert!(
        r.events("resume")
            .iter()
            .any(|m| m.contains("set by someone else")),
        "{:?}",
        r.events("resume")
    );
}

#[tokio::test]
async fn a_storm_drains_only_what_the_limit_allows_and_says_why() {
    let names: Vec<String> = (1..=10).map(|i| format!("gpu-{i:02}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let r = rig_with(cfg(), slurm(), &refs);
    for n in &refs {
        r.sick(n);
    }
    r.step(Duration::ZERO).await;
    r.step(30 * S).await;
    let cordoned = refs.iter().filter(|n| r.cordon(n).is_some()).count();
    assert_eq!(cordoned, 3, "30% of 10");
    let view = r.rem.view();
    assert_eq!((view.cordoned, view.limit, view.nodes), (3, 3, 10));
    assert!(
        view.blocked
            .as_deref()
            .unwrap()
            .contains("max_unhealthy_percent (30%)"),
        "{view:?}"
    );
    assert_eq!(
        view.waiting.iter().filter(|w| w.held_by.is_some()).count(),
        7
    );
    assert_eq!(
        r.events("blocked").len(),
        1,
        "one event when the limit is reached"
    );
    assert!(r.rem.metrics().blocked);
    r.step(31 * S).await;
    assert_eq!(r.events("blocked").len(), 1, "not one per tick");
}

#[tokio::test]
async fn at_most_one_automatic_drain_per_drain_interval_per_scheduler() {
    let r = rig_with(
        RemediationSection {
            drain_interval: 60 * S,
            max_unhealthy_percent: 100,
            ..cfg()
        },
        slurm(),
        &["gpu-01", "gpu-02"],
    );
    r.sick("gpu-01");
    r.sick("gpu-02");
    r.step(Duration::ZERO).await;
    r.step(30 * S).await;
    assert!(r.cordon("gpu-01").is_some() && r.cordon("gpu-02").is_none());
    let held = r.rem.view().waiting;
    assert!(
        held[0]
            .held_by
            .as_deref()
            .unwrap()
            .contains("drain_interval"),
        "{held:?}"
    );
    r.step(89 * S).await;
    assert!(r.cordon("gpu-02").is_none());
    r.step(90 * S).await;
    assert!(r.cordon("gpu-02").is_some());
}

#[tokio::test]
async fn a_dry_run_decides_and_records_but_changes_nothing() {
    let r = rig_with(
        RemediationSection {
            dry_run: true,
            ..cfg()
        },
        slurm(),
        &["gpu-01", "gpu-02", "gpu-03", "gpu-04"],
    );
    r.sick("gpu-01");
    r.step(Duration::ZERO).await;
    r.step(30 * S).await;
    r.step(31 * S).await;
    assert!(r.cordon("gpu-01").is_none());
    assert!(r.script.calls().is_empty(), "{:?}", r.script.calls());
    let would = r.events("would-drain");
    assert_eq!(would.len(), 1, "announced once: {would:?}");
    assert!(
        would[0].contains("slurm (as gpu-01)") && would[0].contains("XID 79"),
        "{would:?}"
    );
}

#[tokio::test]
async fn pause_stops_the_policy_and_a_person_still_drains_and_resumes() {
    let r = rig_with(cfg(), slurm(), &["gpu-01", "gpu-02", "gpu-03", "gpu-04"]);
    r.rem.set_paused(Some("alice"), "alice").await.unwrap();
    r.sick("gpu-01");
    r.step(Duration::ZERO).await;
    r.step(60 * S).await;
    assert!(r.cordon("gpu-01").is_none(), "paused");
    assert!(r.rem.view().waiting[0]
        .held_by
        .as_deref()
        .unwrap()
        .contains("paused by alice"));
    assert!(r.rem.metrics().paused);

    let c = r.rem.drain_by("gpu-02", "swap PSU", "alice").await.unwrap();
    assert_eq!(c.by, "alice");
    r.step(61 * S).await;
    assert_eq!(
        r.script.drain_reason("gpu-02").as_deref(),
        Some("corral: swap PSU (alice)")
    );
    // A person's cordon is not the policy's to lift, however healthy the node.
    r.rem.set_paused(None, "alice").await.unwrap();
    r.well("gpu-02");
    r.step(62 * S).await;
    r.step(1000 * S).await;
    assert!(r.cordon("gpu-02").is_some());
    r.rem.resume_by("gpu-02", "alice").await.unwrap();
    r.step(1001 * S).await;
    assert!(r.cordon("gpu-02").is_none());
    assert_eq!(r.script.drain_reason("gpu-02"), None);
    assert!(matches!(
        r.rem.resume_by("gpu-02", "alice").await,
        Err(RemediationError::NotCordoned(_))
    ));
    assert!(matches!(
        r.rem.drain_by("nope", "x", "alice").await,
        Err(RemediationError::UnknownNode(_))
    ));
    assert!(matches!(
        r.rem.drain_by("gpu-03", " ", "alice").await,
        Err(RemediationError::BadReason(_))
    ));
    assert!(matches!(
        r.rem.drain_by("gpu-03", "a\nb", "alice").await,
        Err(RemediationError::BadReason(_))
    ));
}

#[tokio::test]
async fn a_failed_drain_is_retried_with_backoff_and_visible() {
    let r = rig_with(cfg(), slurm(), &["gpu-01", "gpu-02", "gpu-03", "gpu-04"]);
    *r.script.fail.lock().unwrap() = 2;
    r.sick("gpu-01");
    r.step(Duration::ZERO).await;
    r.step(30 * S).await;
    let d = &r.cordon("gpu-01").unwrap().drains[0];
    assert_eq!((d.state.as_str(), d.attempts), ("pending", 1));
    assert!(d
        .message
        .as_deref()
        .unwrap()
        .contains("slurmctld not responding"));
    assert!(d.next_try_ms.is_some());
    assert_eq!(r.rem.view().failing, 1);
    assert!(r.events("drain-failed")[0].contains("attempt 1"));
    // The retry is due only after the backoff (the real clock; retry_after = 100ms).
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        r.step(30 * S).await;
        if r.cordon("gpu-01").unwrap().drains[0].state == "drained" {
            break;
        }
    }
    assert_eq!(r.cordon("gpu-01").unwrap().drains[0].state, "drained");
    assert_eq!(r.rem.metrics().actions[&("drain", "failed")], 2);
}

#[tokio::test]
async fn a_cordon_whose_drains_reached_no_host_resumes_at_once_and_one_that_failed_there_is_checked(
) {
    let r = rig_with(cfg(), slurm(), &["gpu-01", "gpu-02"]);
    r.script
        .no_host
        .store(true, std::sync::atomic::Ordering::Relaxed);
    r.rem.drain_by("gpu-01", "fan", "alice").await.unwrap();
    r.step(Duration::ZERO).await;
    let d = &r.cordon("gpu-01").unwrap().drains[0];
    assert_eq!((d.state.as_str(), d.attempts), ("pending", 1));
    // Nothing reached Slurm, so nothing there can need lifting: the resume is done
    // without a host.
    r.rem.resume_by("gpu-01", "alice").await.unwrap();
    r.step(S).await;
    assert!(r.cordon("gpu-01").is_none(), "{:?}", r.cordon("gpu-01"));
    // A drain that failed at the scheduler (a timeout) may be in place: the lift waits
    // for a host. A failed read before it drained nothing: like no host at all.
    r.script
        .no_host
        .store(false, std::sync::atomic::Ordering::Relaxed);
    *r.script.fail_drain.lock().unwrap() = 1;
    r.rem.drain_by("gpu-02", "fan", "alice").await.unwrap();
    r.step(2 * S).await;
    r.script
        .no_host
        .store(true, std::sync::atomic::Ordering::Relaxed);
    r.rem.resume_by("gpu-02", "alice").await.unwrap();
    r.step(3 * S).await;
    assert!(r.cordon("gpu-02").is_some(), "lifted without asking Slurm");
    // A read that failed before the drain was sent leaves nothing to lift.
    let r = rig_with(cfg(), slurm(), &["gpu-03", "gpu-04"]);
    *r.script.fail.lock().unwrap() = 1;
    r.rem.drain_by("gpu-03", "fan", "alice").await.unwrap();
    r.step(Duration::ZERO).await;
    assert_eq!(r.cordon("gpu-03").unwrap().drains[0].attempts, 1);
    r.script
        .no_host
        .store(true, std::sync::atomic::Ordering::Relaxed);
    r.rem.resume_by("gpu-03", "alice").await.unwrap();
    r.step(S).await;
    assert!(r.cordon("gpu-03").is_none(), "{:?}", r.cordon("gpu-03"));
}

#[tokio::test]
async fn a_cordon_survives_a_restart_and_is_resumed_by_the_new_process() {
    let script: Arc<Script> = Arc::default();
    let nodes = ["gpu-01", "gpu-02", "gpu-03", "gpu-04"];
    let r = rig_in(
        tempfile::tempdir().unwrap(),
        cfg(),
        slurm(),
        &nodes,
        script.clone(),
    );
    r.sick("gpu-01");
    r.step(Duration::ZERO).await;
    r.step(30 * S).await;
    assert_eq!(
        script
            .drain_reason("gpu-01")
            .as_deref()
            .map(|s| s.starts_with(PREFIX)),
        Some(true)
    );
    r.store.flush().await;
    let dir = r.dir;
    drop(r.rem);
    let r = rig_in(dir, cfg(), slurm(), &nodes, script.clone());
    let c = r.cordon("gpu-01").expect("the cordon is loaded");
    assert_eq!(c.drains[0].state, "drained");
    r.well("gpu-01");
    r.step(Duration::ZERO).await;
    r.step(300 * S).await;
    assert!(r.cordon("gpu-01").is_none());
    assert_eq!(script.drain_reason("gpu-01"), None);
}

#[tokio::test]
async fn a_ray_worker_is_drained_with_the_deadline_and_resumed() {
    let r = rig_with(
        RemediationSection {
            ray_drain_deadline: 45 * S,
            ..cfg()
        },
        BTreeMap::new(),
        &["gpu-01", "gpu-02", "gpu-03", "gpu-04"],
    );
    r.report("gpu-01", vec![gpu_xid("GPU 0 XID 79")], true);
    r.step(Duration::ZERO).await;
    r.step(30 * S).await;
    assert_eq!(r.script.calls(), ["gpu-01 ray-drain 45000"]);
    r.report("gpu-01", vec![], true);
    r.step(31 * S).await;
    r.step(331 * S).await;
    assert_eq!(
        r.script.calls(),
        ["gpu-01 ray-drain 45000", "gpu-01 ray-resume"]
    );
    assert!(r.cordon("gpu-01").is_none());
}

#[tokio::test]
async fn each_reason_class_has_its_drain_after_and_never_means_never() {
    let r = rig_with(
        RemediationSection {
            drain_after: DrainAfter {
                xid: Some(Delay::After(5 * S)),
                disk: Some(Delay::Never),
                ..DrainAfter::default()
            },
            max_unhealthy_percent: 100,
            ..cfg()
        },
        slurm(),
        &["gpu-01", "gpu-02"],
    );
    r.sick("gpu-01");
    r.report(
        "gpu-02",
        vec![Reason {
            check: "disk:/".into(),
            status: HealthStatus::Unhealthy,
            message: "disk / 99% full > 95%".into(),
        }],
        false,
    );
    r.step(Duration::ZERO).await;
    r.step(5 * S).await;
    assert!(r.cordon("gpu-01").is_some(), "xid after 5s");
    r.step(3600 * S).await;
    assert!(r.cordon("gpu-02").is_none(), "disk: never");
}

#[tokio::test]
async fn down_nodes_are_drained_only_when_configured_and_not_in_their_absence_from_the_members() {
    // Not configured: a disconnected node's old report does not count.
    let r = rig_with(cfg(), slurm(), &["gpu-01", "gpu-02", "gpu-03", "gpu-04"]);
    r.sick("gpu-01");
    r.step(Duration::ZERO).await;
    r.registry.disconnect("gpu-01", r.conns["gpu-01"], "test");
    r.step(60 * S).await;
    assert!(r.cordon("gpu-01").is_none());

    // A node the instance does not list as a member is not drained there.
    let mut schedulers = slurm();
    schedulers.get_mut("slurm").unwrap().members = vec!["gpu-02".into()];
    schedulers.get_mut("slurm").unwrap().node_names =
        [("gpu-02".to_string(), "node02".to_string())].into();
    let r = rig_with(
        RemediationSection {
            max_unhealthy_percent: 100,
            ..cfg()
        },
        schedulers,
        &["gpu-01", "gpu-02"],
    );
    r.script.set("node02", None);
    r.sick("gpu-01");
    r.sick("gpu-02");
    r.step(Duration::ZERO).await;
    r.step(30 * S).await;
    assert!(r.cordon("gpu-01").unwrap().drains.is_empty(), "corral only");
    assert_eq!(
        r.script
            .drain_reason("node02")
            .as_deref()
            .map(|s| s.starts_with(PREFIX)),
        Some(true),
        "by its name there"
    );
}

#[tokio::test]
async fn a_scheduler_whose_plugin_cannot_drain_is_skipped_not_retried() {
    let mut schedulers = slurm();
    schedulers.insert(
        "htcondor".into(),
        SchedulerSection {
            nodes: vec!["*".into()],
            ..SchedulerSection::default()
        },
    );
    let r = rig_with(cfg(), schedulers, &["gpu-01", "gpu-02", "gpu-03", "gpu-04"]);
    r.sick("gpu-01");
    r.step(Duration::ZERO).await;
    r.step(30 * S).await;
    let c = r.cordon("gpu-01").unwrap();
    let states: Vec<(&str, &str)> = c
        .drains
        .iter()
        .map(|d| (d.target.as_str(), d.state.as_str()))
        .collect();
    assert_eq!(states, [("htcondor", "skipped"), ("slurm", "drained")]);
    assert_eq!(r.rem.view().failing, 0);
    r.step(31 * S).await;
    assert_eq!(
        r.script
            .calls()
            .iter()
            .filter(|c| c.starts_with("htcondor"))
            .count(),
        1,
        "asked once"
    );
}

#[tokio::test]
async fn a_cordoned_nodes_ray_worker_is_drained_again_when_its_agent_reconnects() {
    let mut r = rig_with(
        cfg(),
        BTreeMap::new(),
        &["gpu-01", "gpu-02", "gpu-03", "gpu-04"],
    );
    r.report("gpu-01", vec![gpu_xid("GPU 0 XID 79")], true);
    r.step(Duration::ZERO).await;
    r.step(30 * S).await;
    assert_eq!(r.script.calls().len(), 1);
    r.step(31 * S).await;
    assert_eq!(
        r.script.calls().len(),
        1,
        "not again while the same agent stays connected"
    );
    // The agent restarts (its drain gone with the old process) and comes back.
    r.registry.disconnect("gpu-01", r.conns["gpu-01"], "test");
    r.step(32 * S).await;
    r.connect("gpu-01");
    r.report("gpu-01", vec![gpu_xid("GPU 0 XID 79")], true);
    r.step(33 * S).await;
    let calls = r.script.calls();
    assert_eq!(calls, ["gpu-01 ray-drain 60000", "gpu-01 ray-drain 60000"]);
    assert_eq!(r.cordon("gpu-01").unwrap().drains[0].state, "drained");
}

#[tokio::test]
async fn a_down_node_is_drained_only_with_drain_when_down() {
    for drain_when_down in [false, true] {
        let r = rig_with(
            RemediationSection {
                drain_when_down,
                ..cfg()
            },
            slurm(),
            &["gpu-01", "gpu-02", "gpu-03", "gpu-04"],
        );
        r.well("gpu-01");
        r.step(Duration::ZERO).await;
        r.registry.disconnect("gpu-01", r.conns["gpu-01"], "test");
        tokio::time::sleep(Duration::from_millis(400)).await;
        r.registry.sweep();
        assert_eq!(r.registry.get("gpu-01").unwrap().liveness, Liveness::Down);
        r.step(S).await;
        let c = r.cordon("gpu-01");
        assert_eq!(
            c.is_some(),
            drain_when_down,
            "drain_when_down = {drain_when_down}"
        );
        if let Some(c) = c {
            assert!(c.reason.contains("node down"), "{c:?}");
            assert_eq!(
                c.drains[0].state, "drained",
                "drained through the submit host"
            );
        }
    }
}

#[tokio::test]
async fn an_agent_that_reconnects_before_its_old_connection_closes_is_drained_again() {
    let mut r = rig_with(
        cfg(),
        BTreeMap::new(),
        &["gpu-01", "gpu-02", "gpu-03", "gpu-04"],
    );
    r.report("gpu-01", vec![gpu_xid("GPU 0 XID 79")], true);
    r.step(Duration::ZERO).await;
    r.step(30 * S).await;
    assert_eq!(r.script.calls().len(), 1);
    // systemd restarts a crashed agent in seconds: the new connection replaces the old
    // one, which never closes on its own.
    r.connect("gpu-01");
    r.report("gpu-01", vec![gpu_xid("GPU 0 XID 79")], true);
    r.step(31 * S).await;
    assert_eq!(r.script.calls().len(), 2, "{:?}", r.script.calls());
}

#[tokio::test]
async fn a_person_draining_a_node_being_resumed_drains_it_again_with_their_reason() {
    let r = rig_with(cfg(), slurm(), &["gpu-01", "gpu-02", "gpu-03", "gpu-04"]);
    r.sick("gpu-01");
    r.step(Duration::ZERO).await;
    r.step(30 * S).await;
    r.well("gpu-01");
    r.step(31 * S).await;
    r.step(331 * S).await;
    assert!(r.cordon("gpu-01").is_none(), "resumed");
    // Drained by the policy again, then a person takes it over with their reason.
    r.sick("gpu-01");
    r.step(332 * S).await;
    r.step(362 * S).await;
    assert!(r.script.drain_reason("gpu-01").unwrap().contains("XID 79"));
    let c = r.rem.drain_by("gpu-01", "RMA 4711", "alice").await.unwrap();
    assert_eq!(c.by, "alice");
    r.step(363 * S).await;
    assert_eq!(
        r.script.drain_reason("gpu-01").as_deref(),
        Some("corral: RMA 4711 (alice)")
    );
    // Resumed by hand while a resume runs, then drained by hand again: drained again.
    r.rem.resume_by("gpu-01", "alice").await.unwrap();
    r.rem
        .drain_by("gpu-01", "still broken", "alice")
        .await
        .unwrap();
    r.step(364 * S).await;
    let c = r.cordon("gpu-01").expect("still cordoned");
    assert!(!c.resuming);
    assert_eq!(
        r.script.drain_reason("gpu-01").as_deref(),
        Some("corral: still broken (alice)")
    );
}

#[tokio::test]
async fn a_drain_found_without_a_reason_is_someone_elses_unless_corral_made_it() {
    // Grid Engine keeps no reasons: a disabled host corral never touched is a person's.
    let r = rig_with(cfg(), slurm(), &["gpu-01", "gpu-02", "gpu-03", "gpu-04"]);
    r.script.set("gpu-01", Some(""));
    r.sick("gpu-01");
    r.step(Duration::ZERO).await;
    r.step(30 * S).await;
    let d = &r.cordon("gpu-01").unwrap().drains[0];
    assert_eq!(d.state, "foreign", "{d:?}");
}

#[tokio::test]
async fn corral_nodes_sharing_a_scheduler_node_lift_it_only_when_the_last_one_resumes() {
    let r = sharing_n1();
    r.sick("gpu-01");
    r.sick("gpu-02");
    r.step(Duration::ZERO).await;
    r.step(30 * S).await;
    assert!(r.cordon("gpu-01").is_some() && r.cordon("gpu-02").is_some());
    assert!(r.script.drain_reason("n1").is_some());
    r.well("gpu-01");
    r.step(31 * S).await;
    r.step(331 * S).await;
    assert!(r.cordon("gpu-01").is_none());
    assert!(
        r.script.drain_reason("n1").is_some(),
        "gpu-02 still needs n1 drained"
    );
    r.well("gpu-02");
    r.step(332 * S).await;
    r.step(632 * S).await;
    assert!(r.cordon("gpu-02").is_none());
    assert_eq!(r.script.drain_reason("n1"), None, "lifted by the last one");
}

#[tokio::test]
async fn a_dry_run_storm_reports_the_limit_as_the_real_run_would() {
    let names: Vec<String> = (1..=10).map(|i| format!("gpu-{i:02}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let r = rig_with(
        RemediationSection {
            dry_run: true,
            ..cfg()
        },
        slurm(),
        &refs,
    );
    for n in &refs {
        r.sick(n);
    }
    r.step(Duration::ZERO).await;
    r.step(30 * S).await;
    r.step(31 * S).await;
    assert_eq!(r.events("would-drain").len(), 3, "30% of 10, once each");
    assert_eq!(r.events("blocked").len(), 1);
    assert!(r.script.calls().is_empty());
    for n in &refs[..3] {
        r.well(n);
    }
    r.step(32 * S).await;
    r.step(332 * S).await;
    assert_eq!(r.events("would-resume").len(), 3);
}

#[tokio::test]
async fn pausing_does_not_end_a_block_and_one_limit_is_one_blocked_event() {
    let names: Vec<String> = (1..=10).map(|i| format!("gpu-{i:02}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let r = rig_with(cfg(), slurm(), &refs);
    for n in &refs[..5] {
        r.sick(n);
    }
    r.step(Duration::ZERO).await;
    r.step(30 * S).await;
    assert_eq!(r.events("blocked").len(), 1);
    // A person's cordon changes the counts, not the limit that holds drains back.
    r.rem.drain_by("gpu-09", "maint", "alice").await.unwrap();
    r.step(31 * S).await;
    r.rem.set_paused(Some("alice"), "alice").await.unwrap();
    r.step(32 * S).await;
    assert_eq!(r.events("blocked").len(), 1);
    assert!(
        r.events("unblocked").is_empty(),
        "a pause is not the end of a block"
    );
    assert!(r.rem.metrics().blocked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corral_nodes_sharing_a_scheduler_node_that_resume_together_lift_it() {
    let r = sharing_n1();
    r.sick("gpu-01");
    r.sick("gpu-02");
    r.step(Duration::ZERO).await;
    r.step(30 * S).await;
    r.well("gpu-01");
    r.well("gpu-02");
    r.step(31 * S).await;
    // Both resume in one step, their tasks side by side: one leaves it, the other lifts.
    r.step(331 * S).await;
    r.step(332 * S).await;
    assert!(r.cordon("gpu-01").is_none() && r.cordon("gpu-02").is_none());
    assert_eq!(
        r.script.drain_reason("n1"),
        None,
        "not left drained with no cordon"
    );
}

#[tokio::test]
async fn a_worker_still_drained_with_no_cordon_left_is_resumed_when_its_agent_reconnects() {
    let mut r = rig_with(
        cfg(),
        BTreeMap::new(),
        &["gpu-01", "gpu-02", "gpu-03", "gpu-04"],
    );
    r.step(Duration::ZERO).await;
    // The agent comes back holding a drain (a resume counted it as ended while the agent
    // was only cut off).
    r.connect("gpu-01");
    let mut report = NodeReport {
        node: "gpu-01".into(),
        ..NodeReport::default()
    };
    report.ray = Some(worker(corral_proto::model::RayState::Drained));
    assert!(r.registry.report("gpu-01", r.conns["gpu-01"], report));
    r.step(S).await;
    assert_eq!(r.script.calls(), ["gpu-01 ray-resume"]);
    assert!(r.events("resume")[0].contains("no cordon left"));
}
