//! Conversions between [`corral_proto::job`]'s types and the generated WIT bindings: the one
//! place where the two meet (see `job.rs`'s invariants). Field for field, no defaults.

use super::bindings::corral::scheduler::types as wit;
use corral_proto::job::{
    DependencyKind, Feature, JobSpec, JobState, JobStatus, NodeState, PluginError, PluginInfo,
};

pub fn error_from_wit(e: wit::Error) -> PluginError {
    match e {
        wit::Error::Denied(m) => PluginError::Denied(m),
        wit::Error::Invalid(m) => PluginError::Invalid(m),
        wit::Error::Backend(m) => PluginError::Backend(m),
        wit::Error::Timeout(m) => PluginError::Timeout(m),
        wit::Error::Unsupported(m) => PluginError::Unsupported(m),
    }
}

pub fn spec_to_wit(s: JobSpec) -> wit::JobSpec {
    wit::JobSpec {
        name: s.name,
        executable: s.executable,
        arguments: s.arguments,
        directory: s.directory,
        environment: s.environment,
        stdin_path: s.stdin_path,
        stdout_path: s.stdout_path,
        stderr_path: s.stderr_path,
        nodes: s.nodes,
        tasks_per_node: s.tasks_per_node,
        cpus_per_task: s.cpus_per_task,
        gpus_per_node: s.gpus_per_node,
        memory_mb: s.memory_mb,
        walltime_seconds: s.walltime_seconds,
        queue: s.queue,
        account: s.account,
        reservation: s.reservation,
        array: s.array.map(|a| wit::JobArray {
            first: a.first,
            last: a.last,
            step: a.step,
            max_running: a.max_running,
        }),
        dependencies: s
            .dependencies
            .into_iter()
            .map(|d| wit::Dependency {
                kind: match d.kind {
                    DependencyKind::AfterStart => wit::DependencyKind::AfterStart,
                    DependencyKind::AfterOk => wit::DependencyKind::AfterOk,
                    DependencyKind::AfterNotOk => wit::DependencyKind::AfterNotOk,
                    DependencyKind::AfterAny => wit::DependencyKind::AfterAny,
                },
                job: d.job,
            })
            .collect(),
        attributes: s.attributes,
    }
}

pub fn state_from_wit(s: wit::JobState) -> JobState {
    match s {
        wit::JobState::Queued(held) => JobState::Queued { held },
        wit::JobState::Running => JobState::Running,
        wit::JobState::Suspended => JobState::Suspended,
        wit::JobState::Completing => JobState::Completing,
        wit::JobState::Succeeded => JobState::Succeeded,
        wit::JobState::Failed(reason) => JobState::Failed { reason },
        wit::JobState::Cancelled => JobState::Cancelled,
        wit::JobState::TimedOut => JobState::TimedOut,
        wit::JobState::Unknown => JobState::Unknown,
    }
}

pub fn status_from_wit(s: wit::JobStatus) -> JobStatus {
    JobStatus {
        id: s.id,
        state: state_from_wit(s.state),
        native_state: s.native_state,
        exit_code: s.exit_code,
        message: s.message,
    }
}

pub fn node_state_from_wit(s: wit::NodeState) -> NodeState {
    NodeState {
        drained: s.drained,
        reason: s.reason,
    }
}

pub fn info_from_wit(i: wit::PluginInfo) -> PluginInfo {
    PluginInfo {
        name: i.name,
        version: i.version,
        scheduler: i.scheduler,
        features: i
            .features
            .into_iter()
            .map(|f| match f {
                wit::Feature::Arrays => Feature::Arrays,
                wit::Feature::Dependencies => Feature::Dependencies,
                wit::Feature::Gpus => Feature::Gpus,
                wit::Feature::Reservations => Feature::Reservations,
                wit::Feature::Drain => Feature::Drain,
                wit::Feature::Logs => Feature::Logs,
                wit::Feature::List => Feature::List,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_proto::job::{Dependency, JobArray};

    #[test]
    fn a_full_job_spec_keeps_every_field_across_the_boundary() {
        let spec = JobSpec {
            name: Some("n".into()),
            executable: "/bin/x".into(),
            arguments: vec!["a".into()],
            directory: Some("/d".into()),
            environment: vec![("K".into(), "V".into())],
            stdin_path: Some("/in".into()),
            stdout_path: Some("/out".into()),
            stderr_path: Some("/err".into()),
            nodes: Some(2),
            tasks_per_node: Some(3),
            cpus_per_task: Some(4),
            gpus_per_node: Some(5),
            memory_mb: Some(6),
            walltime_seconds: Some(7),
            queue: Some("q".into()),
            account: Some("acc".into()),
            reservation: Some("r".into()),
            array: Some(JobArray {
                first: 1,
                last: 9,
                step: 2,
                max_running: Some(3),
            }),
            dependencies: vec![Dependency {
                kind: DependencyKind::AfterNotOk,
                job: "12".into(),
            }],
            attributes: vec![("slurm.constraint".into(), "a100".into())],
        };
        let w = spec_to_wit(spec);
        assert_eq!(w.name.as_deref(), Some("n"));
        assert_eq!(w.gpus_per_node, Some(5));
        assert_eq!(w.walltime_seconds, Some(7));
        assert_eq!(
            w.array
                .as_ref()
                .map(|a| (a.first, a.last, a.step, a.max_running)),
            Some((1, 9, 2, Some(3)))
        );
        assert!(matches!(
            w.dependencies[0].kind,
            wit::DependencyKind::AfterNotOk
        ));
        assert_eq!(
            w.attributes,
            [("slurm.constraint".to_string(), "a100".to_string())]
        );
        assert_eq!(w.stderr_path.as_deref(), Some("/err"));
    }

    #[test]
    fn states_and_errors_map_to_their_namesakes() {
        assert_eq!(
            state_from_wit(wit::JobState::Queued(true)),
            JobState::Queued { held: true }
        );
        assert_eq!(
            state_from_wit(wit::JobState::Failed("oom".into())),
            JobState::Failed {
                reason: "oom".into()
            }
        );
        assert_eq!(state_from_wit(wit::JobState::TimedOut), JobState::TimedOut);
        assert_eq!(
            error_from_wit(wit::Error::Denied("x".into())),
            PluginError::Denied("x".into())
        );
        assert_eq!(
            error_from_wit(wit::Error::Unsupported("logs".into())),
            PluginError::Unsupported("logs".into())
        );
    }

    #[test]
    fn a_node_state_keeps_its_reason_verbatim() {
        let reason = " corral: gpu 0 \u{2014} XID 79 [ops] ";
        assert_eq!(
            node_state_from_wit(wit::NodeState {
                drained: true,
                reason: Some(reason.into()),
            }),
            NodeState {
                drained: true,
                reason: Some(reason.into()),
            }
        );
        assert_eq!(
            node_state_from_wit(wit::NodeState {
                drained: false,
                reason: None,
            }),
            NodeState {
                drained: false,
                reason: None,
            }
        );
    }
}
