//! The agent ⇄ coordinator wire protocol.
//!
//! One QUIC connection per agent (mutual TLS, see `corral_transport::pki`) carries one
//! bidirectional stream opened by the agent. On it both sides write *frames*: a 4-byte
//! big-endian length followed by a postcard-encoded message.
//!
//! The framing itself (`FrameReader`, `FrameWriter`) lives in `corral_transport::frame`;
//! this module is only what the frames hold.
//!
//! 1. The agent's first frame is a [`Hello`]. Its first field is the protocol version,
//!    so a coordinator can read the version of *any* agent, past or future, with
//!    [`peek_version`] even when it cannot decode the rest.
//! 2. The coordinator answers with a [`Welcome`], or closes the connection with a
//!    [`Refusal`] code and a human-readable reason (QUIC `CONNECTION_CLOSE` carries both),
//!    so an incompatible or unauthorised peer learns *why*, not just that decoding failed.
//! 3. Then the agent sends [`AgentMsg`]s (small [`Beat`]s every beat interval, full
//!    reports every report interval and on health changes, command results, the
//!    scheduler plugins it hosts) and the coordinator sends [`CoordMsg`]s (commands,
//!    among them plugin calls), interleaved freely.
//!
//! Invariants:
//! - A frame longer than the receiver's limit is never buffered: the length prefix is
//!   checked first and the connection is refused with [`Refusal::FrameTooLarge`].
//! - Any change to these types or to [`crate::model`] bumps [`PROTOCOL_VERSION`]
//!   (postcard is positional). Versions outside
//!   [`MIN_PROTOCOL_VERSION`]`..=`[`PROTOCOL_VERSION`] are refused with both ranges named.
//!
//! - New variants go at the *end* of their enum, so the indexes of the old ones (what
//!   postcard writes) never change.
//!
//! Version history (nothing is released yet; the rule above still holds so that a
//! development build of one side meets a clear refusal, not a decode error):
//! - 1: hello, beats, reports, commands `Ping`/`ReportNow`, Ray head discovery.
//! - 2: scheduler plugins: [`AgentMsg::Plugins`], [`Command::Plugin`],
//!   [`CommandOutput::Plugin`]. Protocol 1 is not accepted: it was never released, and a
//!   protocol-2 coordinator tracks jobs through agents that announce plugins, which a
//!   protocol-1 agent cannot, so accepting it would promise a compatibility nobody needs.
//! - 3: a beat carries only its send time (`seq` and `health` were never read: health
//!   travels in reports), and the hello no longer carries the report interval (unused).
//!   Protocol 2 is not accepted, for the same reason as 1. Also in 3: GPU faults as
//!   NVIDIA classes them: [`crate::model::GpuSample::recovery_action`] (NVML's recovery
//!   action), `needs_reboot`, `action` and `action_source` on
//!   [`crate::model::DeviceReason`], `xid_counts`, `action` and `action_source` on
//!   [`crate::model::DeviceHealth`] (XIDs from the kernel log as well as NVML, classed by
//!   NVIDIA's XID catalog).
//! - 4: identities. [`Command::Plugin`] carries the job's `owner` (the authenticated
//!   user the agent runs `submit` and `cancel` as); [`Hello::max_frame_bytes`] and
//!   [`Welcome::max_frame_bytes`] tell each side the largest frame the other accepts, so
//!   an oversized command or answer fails alone instead of ending the session.
//!   Protocol 3 is not accepted: a protocol-3 agent would run every job as itself.
//! - 5: health that acts. [`Command::RayDrain`] and [`Command::RayResume`], answered by
//!   [`CommandOutput::Ray`]; Ray states `draining` and `drained`
//!   ([`crate::model::RayState`]); the scheduler plugins' `node-state` call
//!   ([`PluginCall::NodeState`], [`PluginReply::NodeState`]). Protocol 4 is not
//!   accepted: the coordinator drains and resumes nodes through these commands, and a
//!   protocol-4 agent would refuse them as undecodable and lose its session, so a
//!   cordoned node would stay in Ray and in its schedulers.
//! - 6: report deltas, [`AgentMsg::ReportDelta`]: after the first report of a session
//!   an agent sends what changed. Protocol 5 is still accepted: a protocol-5 agent only
//!   ever sends full reports, which a protocol-6 coordinator reads as before, and
//!   nothing the coordinator sends changed.
//!
//! The golden-bytes tests at the end of this file pin the encoding of every message:
//! reordering, retyping or inserting a field fails them, which is the reminder to bump
//! the version.
//!
//! Reading the version of a hello, whatever else it carries:
//!
//! ```
//! use corral_proto::wire::{encode, peek_version, Hello, PROTOCOL_VERSION};
//!
//! let hello = Hello {
//!     protocol: PROTOCOL_VERSION,
//!     node: "gpu-01".into(),
//!     agent_version: "0.1.0".into(),
//!     beat_interval_ms: 1000,
//!     max_frame_bytes: 1 << 20,
//! };
//! let frame = encode("hello", &hello).unwrap();
//! assert_eq!(peek_version(&frame).unwrap(), PROTOCOL_VERSION);
//! ```
//!
//! Trade-off: beats share the stream with reports, so a large report can delay a beat by
//! its transmission time (microseconds on a LAN); in exchange ordering is simple and a
//! beat never overtakes the report that changed health.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::job::{LoadFailure, LoadedPlugin, PluginCall, PluginError, PluginReply};
use crate::model::NodeReport;

/// The coordinator's default QUIC (UDP) port.
pub const DEFAULT_QUIC_PORT: u16 = 7440;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 6;
/// The oldest agent protocol this coordinator still accepts.
pub const MIN_PROTOCOL_VERSION: u32 = 5;
/// The beat intervals a coordinator accepts in a hello (faster floods it, slower makes
/// liveness meaningless); an agent's config is checked against the same range.
pub const BEAT_INTERVAL_MS: std::ops::RangeInclusive<u32> = 100..=60_000;
/// Default largest frame accepted (reports of nodes with many filesystems and GPUs fit
/// comfortably; a hostile peer cannot make the coordinator buffer more).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// Must stay the first field: see [`peek_version`].
    pub protocol: u32,
    pub node: String,
    pub agent_version: String,
    /// How often this agent beats; the coordinator's liveness timers scale with it.
    pub beat_interval_ms: u32,
    /// The largest frame this agent accepts: the coordinator sends no larger command.
    pub max_frame_bytes: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    pub protocol: u32,
    pub coordinator_version: String,
    /// The largest frame the coordinator accepts: the agent sends no larger message
    /// (an oversized command result becomes an error result instead).
    pub max_frame_bytes: u32,
}

/// The small liveness signal.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Beat {
    /// Agent clock at send time, for latency measurement on one host (benchmarks).
    pub sent_at_ns: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AgentMsg {
    Beat(Beat),
    Report(Box<NodeReport>),
    CommandResult {
        id: u64,
        result: Result<CommandOutput, String>,
    },
    /// This node's Ray head is ready (`Some`), or no longer is (`None`: stopped,
    /// restarting, failed). Sent on every change and again after each (re)connect.
    RayHead(Option<RayHead>),
    /// The scheduler plugins this agent hosts (`loaded`, with their grants) and those
    /// it could not load, and why. Sent once loading is done, again after each
    /// (re)connect, and whenever the set changes. Until the first one arrives the
    /// coordinator routes no plugin call to this agent.
    Plugins {
        loaded: Vec<LoadedPlugin>,
        failed: Vec<LoadFailure>,
    },
    /// A report as a delta: the postcard encoding of the [`NodeReport`], compressed with
    /// zstd using the encoding of the previous report on this session (full or delta) as
    /// the dictionary. Never the first report of a session. The codec and its invariants
    /// are in `corral_transport::delta`.
    ReportDelta {
        patch: Vec<u8>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CoordMsg {
    Command {
        id: u64,
        command: Command,
    },
    /// The cluster's Ray head changed (`None`: there is no ready head). Pushed to every
    /// connected agent on a change and to each agent when it connects.
    HeadChanged {
        head: Option<RayHead>,
    },
}

/// A ready Ray head, as its agent announces it and workers need it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RayHead {
    /// The node whose agent runs the head.
    pub node: String,
    /// `host:port` of the head's GCS, what `ray start --address` takes.
    pub address: String,
    /// `http://host:port` of the dashboard (and Jobs API).
    pub dashboard: String,
    /// Exact versions of the head's venv, for the workers' match check.
    pub python: String,
    pub ray: String,
    pub venv: String,
    /// When this head process became ready (Unix ms): a new value means a new head
    /// process (restart), which workers must rejoin even at the same address.
    pub started_ms: u64,
}

/// What the coordinator can ask of an agent. Later capabilities add variants at the end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Round-trip check of the command path.
    Ping { nonce: u64 },
    /// Sample now and send a full report.
    ReportNow,
    /// Call one export of one of the agent's scheduler plugins. The agent runs it beside
    /// its session (a slow scheduler never delays beats) and answers with
    /// [`CommandOutput::Plugin`] when it is done.
    /// (Boxed: a job spec is large, the other commands are small.)
    Plugin {
        plugin: String,
        call: Box<PluginCall>,
        /// The user the job belongs to (who submitted it, as the coordinator
        /// authenticated them). The agent runs `submit` and `cancel` as this user and
        /// every other export as its service user; the plugin never chooses.
        owner: Option<String>,
    },
    /// Drain this node's Ray worker: Ray places no new tasks on it and its running work
    /// gets `deadline_ms` to finish, after which the agent stops the worker. A drained
    /// worker is not restarted until [`Command::RayResume`]. Idempotent; on a node that
    /// runs no Ray worker (a head, or no Ray) it succeeds with a detail saying there was
    /// nothing to drain. Answered by [`CommandOutput::Ray`] once Ray accepted the drain
    /// (or the worker, not yet joined, was stopped); the outer `Err` says what failed.
    RayDrain {
        /// Why, as Ray records it (`ray list nodes` shows it with the node's death).
        reason: String,
        /// How long running work may take before the worker is stopped; 0 stops it as
        /// soon as Ray accepted the drain.
        deadline_ms: u64,
    },
    /// Undo a [`Command::RayDrain`]: a draining worker is stopped, and a drained one is
    /// started again, so that it rejoins as a new Ray node. A no-op success when nothing
    /// is drained.
    RayResume,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CommandOutput {
    Pong {
        nonce: u64,
    },
    ReportQueued,
    /// The plugin's answer; a plugin's own failure is an `Err` here, while the outer
    /// command result's `Err` is kept for the agent failing to run the command at all.
    Plugin(Result<PluginReply, PluginError>),
    /// What [`Command::RayDrain`] or [`Command::RayResume`] did, in words ("drained Ray
    /// node 1a2b…; running work has 1m to finish", "not a Ray worker: nothing to drain").
    Ray {
        detail: String,
    },
}

/// Why a coordinator closes an agent's connection; the QUIC application error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Refusal {
    /// Normal close (shutdown of either side).
    Shutdown = 0,
    UnsupportedVersion = 1,
    /// The certificate names another node than the hello or a report.
    IdentityMismatch = 2,
    /// The certificate's role is not `agent`.
    NotAnAgent = 3,
    /// Undecodable or unexpected message.
    ProtocolViolation = 4,
    FrameTooLarge = 5,
    /// A newer connection from the same node took over.
    Replaced = 6,
    /// The handshake or hello did not arrive in time.
    Timeout = 7,
    /// The certificate was revoked while the connection was open (a revoked certificate
    /// is refused at the handshake itself, by TLS's `certificate_revoked` alert).
    Revoked = 8,
}

impl Refusal {
    /// The QUIC application error code (`corral_transport` turns it into a `VarInt`).
    pub fn code(self) -> u32 {
        self as u32
    }

    pub fn from_code(code: u64) -> Option<Refusal> {
        use Refusal::*;
        [
            Shutdown,
            UnsupportedVersion,
            IdentityMismatch,
            NotAnAgent,
            ProtocolViolation,
            FrameTooLarge,
            Replaced,
            Timeout,
            Revoked,
        ]
        .into_iter()
        .find(|r| u64::from(r.code()) == code)
    }

    /// Whether retrying without operator action can help.
    pub fn is_permanent(self) -> bool {
        matches!(
            self,
            Refusal::UnsupportedVersion
                | Refusal::IdentityMismatch
                | Refusal::NotAnAgent
                | Refusal::Revoked
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("frame exceeds the limit of {max} bytes")]
    FrameTooLarge { max: usize },
    #[error("undecodable {what}: {source}")]
    Decode {
        what: &'static str,
        source: postcard::Error,
    },
    #[error("encoding {what}: {source}")]
    Encode {
        what: &'static str,
        source: postcard::Error,
    },
    #[error("stream error: {0}")]
    Io(#[from] std::io::Error),
    #[error("peer closed the stream")]
    Closed,
}

/// Reads the protocol version from a hello frame of any version.
pub fn peek_version(frame: &[u8]) -> Result<u32, WireError> {
    postcard::take_from_bytes::<u32>(frame)
        .map(|(v, _)| v)
        .map_err(|source| WireError::Decode {
            what: "hello",
            source,
        })
}

pub fn encode<T: Serialize>(what: &'static str, msg: &T) -> Result<Vec<u8>, WireError> {
    postcard::to_allocvec(msg).map_err(|source| WireError::Encode { what, source })
}

pub fn decode<T: DeserializeOwned>(what: &'static str, frame: &[u8]) -> Result<T, WireError> {
    postcard::from_bytes(frame).map_err(|source| WireError::Decode { what, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Health, NodeReport};

    #[test]
    fn version_is_readable_from_a_hello_of_any_later_layout() {
        #[derive(Serialize)]
        struct FutureHello {
            protocol: u32,
            something_new: Vec<u64>,
        }
        let frame = encode(
            "hello",
            &FutureHello {
                protocol: 42,
                something_new: vec![1, 2, 3],
            },
        )
        .unwrap();
        assert_eq!(peek_version(&frame).unwrap(), 42);
    }

    #[test]
    fn messages_round_trip() {
        let msg = AgentMsg::Report(Box::new(NodeReport {
            node: "n1".into(),
            health: Health::default(),
            ..Default::default()
        }));
        let bytes = encode("report", &msg).unwrap();
        assert_eq!(decode::<AgentMsg>("report", &bytes).unwrap(), msg);
    }

    #[test]
    fn ray_head_messages_round_trip() {
        let head = RayHead {
            node: "h".into(),
            address: "10.0.0.1:6379".into(),
            dashboard: "http://10.0.0.1:8265".into(),
            python: "3.11.7".into(),
            ray: "2.60.0".into(),
            venv: "/opt/ray".into(),
            started_ms: 7,
        };
        for msg in [
            AgentMsg::RayHead(Some(head.clone())),
            AgentMsg::RayHead(None),
        ] {
            let bytes = encode("ray head", &msg).unwrap();
            assert_eq!(decode::<AgentMsg>("ray head", &bytes).unwrap(), msg);
        }
        let msg = CoordMsg::HeadChanged { head: Some(head) };
        let bytes = encode("head", &msg).unwrap();
        assert_eq!(decode::<CoordMsg>("head", &bytes).unwrap(), msg);
    }

    fn sample_spec() -> crate::job::JobSpec {
        use crate::job::{Dependency, DependencyKind, JobArray, JobSpec};
        JobSpec {
            name: Some("it's a \"test\"; rm -rf / `id` $(id)".into()),
            executable: "/bin/sh".into(),
            arguments: vec!["-c".into(), "echo \"$1\" >&2".into(), "a b".into()],
            directory: Some("/tmp/work dir".into()),
            environment: vec![("A".into(), "1 2".into())],
            stdout_path: Some("/tmp/out-%j".into()),
            nodes: Some(2),
            gpus_per_node: Some(8),
            memory_mb: Some(4096),
            walltime_seconds: Some(5400),
            queue: Some("debug".into()),
            array: Some(JobArray {
                first: 1,
                last: 10,
                step: 2,
                max_running: Some(3),
            }),
            dependencies: vec![Dependency {
                kind: DependencyKind::AfterOk,
                job: "123".into(),
            }],
            attributes: vec![("slurm.constraint".into(), "a100".into())],
            ..Default::default()
        }
    }

    #[test]
    fn plugin_calls_and_answers_round_trip() {
        use crate::job::{JobState, JobStatus, PluginInfo};
        let calls = [
            PluginCall::Info,
            PluginCall::Render(sample_spec()),
            PluginCall::Submit(sample_spec()),
            PluginCall::Status(vec!["1".into(), "2_3".into()]),
            PluginCall::Cancel("42".into()),
            PluginCall::List,
            PluginCall::Logs {
                id: "42".into(),
                max_bytes: 4096,
            },
            PluginCall::DrainNode {
                node: "n1".into(),
                reason: "bad GPU".into(),
            },
            PluginCall::ResumeNode { node: "n1".into() },
        ];
        for call in calls {
            let msg = CoordMsg::Command {
                id: 7,
                command: Command::Plugin {
                    plugin: "slurm".into(),
                    call: Box::new(call),
                    owner: Some("alice".into()),
                },
            };
            let bytes = encode("command", &msg).unwrap();
            assert_eq!(decode::<CoordMsg>("command", &bytes).unwrap(), msg);
        }
        let statuses = [
            JobState::Queued { held: true },
            JobState::Queued { held: false },
            JobState::Running,
            JobState::Suspended,
            JobState::Completing,
            JobState::Succeeded,
            JobState::Failed {
                reason: "exit 3".into(),
            },
            JobState::Cancelled,
            JobState::TimedOut,
            JobState::Unknown,
        ]
        .into_iter()
        .enumerate()
        .map(|(i, state)| JobStatus {
            id: i.to_string(),
            state,
            native_state: "PENDING".into(),
            exit_code: Some(-1),
            message: None,
        })
        .collect();
        let answers = [
            Ok(PluginReply::Info(PluginInfo {
                name: "slurm".into(),
                version: "0.1.0".into(),
                scheduler: "Slurm".into(),
                features: vec![crate::job::Feature::Arrays, crate::job::Feature::List],
            })),
            Ok(PluginReply::Text("#!/bin/sh\n".into())),
            Ok(PluginReply::Submitted("42".into())),
            Ok(PluginReply::Statuses(statuses)),
            Ok(PluginReply::Done),
            Err(PluginError::Invalid("bad spec".into())),
            Err(PluginError::NotLoaded("pbs".into())),
        ];
        for answer in answers {
            let msg = AgentMsg::CommandResult {
                id: 9,
                result: Ok(CommandOutput::Plugin(answer)),
            };
            let bytes = encode("command result", &msg).unwrap();
            assert_eq!(decode::<AgentMsg>("command result", &bytes).unwrap(), msg);
        }
    }

    #[test]
    fn plugin_announcements_round_trip() {
        use crate::job::{Feature, Grants, PluginInfo};
        let msg = AgentMsg::Plugins {
            loaded: vec![LoadedPlugin {
                info: PluginInfo {
                    name: "slurm".into(),
                    version: "0.1.0".into(),
                    scheduler: "Slurm".into(),
                    features: vec![Feature::Arrays, Feature::Dependencies],
                },
                digest: "ab".repeat(32),
                grants: Grants {
                    programs: vec![("sbatch".into(), "/usr/bin/sbatch".into())],
                    hosts: vec!["127.0.0.1:8265".into()],
                    config_keys: vec!["partition".into()],
                },
            }],
            failed: vec![LoadFailure {
                name: "pbs".into(),
                message: "pbs.wasm: no such file".into(),
            }],
        };
        let bytes = encode("plugins", &msg).unwrap();
        assert_eq!(decode::<AgentMsg>("plugins", &bytes).unwrap(), msg);
        let empty = AgentMsg::Plugins {
            loaded: vec![],
            failed: vec![],
        };
        let bytes = encode("plugins", &empty).unwrap();
        assert_eq!(decode::<AgentMsg>("plugins", &bytes).unwrap(), empty);
    }

    #[test]
    fn variants_of_protocol_1_keep_their_encoding() {
        // Appending variants must not renumber the old ones: postcard writes the index.
        assert_eq!(
            encode("c", &Command::ReportNow).unwrap().as_slice(),
            &[1u8][..]
        );
        assert_eq!(
            encode("m", &AgentMsg::RayHead(None)).unwrap().as_slice(),
            &[3u8, 0][..]
        );
        assert_eq!(
            encode("o", &CommandOutput::ReportQueued)
                .unwrap()
                .as_slice(),
            &[1u8][..]
        );
    }

    #[test]
    fn garbage_is_a_decode_error_not_a_panic() {
        let err =
            decode::<AgentMsg>("agent message", &[0xff, 0xff, 0xff, 0xff, 0xff, 0x01]).unwrap_err();
        assert!(matches!(err, WireError::Decode { .. }), "{err}");
    }

    #[test]
    fn a_beat_is_small() {
        let beat = AgentMsg::Beat(Beat {
            sent_at_ns: crate::model::unix_ns(),
        });
        assert!(encode("beat", &beat).unwrap().len() <= 16);
    }

    /// One of every message and variant the protocol has, with every field set where the
    /// type allows, so that a reordered, retyped or inserted field changes the bytes.
    fn golden_cases() -> Vec<(&'static str, Vec<u8>)> {
        use crate::job::{Feature, Grants, JobState, JobStatus, PluginInfo};
        use crate::model::*;
        let mut gpu = GpuSample::plausible(0);
        gpu.nvlinks.truncate(1);
        let report = NodeReport {
            node: "gpu-01".into(),
            facts: HostFacts {
                hostname: "gpu-01".into(),
                os: "Debian 12".into(),
                kernel: "6.1".into(),
                cpu_model: "EPYC".into(),
                cpu_cores: 64,
                physical_cores: Some(32),
                memory_total_bytes: 1 << 40,
                agent_version: "0.1.0".into(),
            },
            host: HostSample {
                taken_at_ms: 1_700_000_000_000,
                uptime_secs: 3600,
                cpu_percent: 12.5,
                per_core_percent: vec![10.0, 15.0],
                load: LoadAverage {
                    one: 1.0,
                    five: 2.0,
                    fifteen: 3.0,
                },
                memory: Memory {
                    total_bytes: 1 << 40,
                    used_bytes: 1 << 30,
                    available_bytes: 1 << 39,
                    swap_total_bytes: 0,
                    swap_used_bytes: 0,
                },
                filesystems: vec![Filesystem {
                    mount: "/".into(),
                    device: "nvme0n1p1".into(),
                    fs_type: "ext4".into(),
                    total_bytes: 1 << 36,
                    available_bytes: 1 << 35,
                }],
                cpu_temperatures: vec![Temperature {
                    label: "Tctl".into(),
                    celsius: 45.5,
                }],
            },
            gpus: vec![gpu],
            gpu_error: Some("nvml: driver busy".into()),
            health: Health::from_reasons(vec![Reason {
                check: "disk:/".into(),
                status: HealthStatus::Degraded,
                message: "disk / 91% full > 90%".into(),
            }]),
            ray: Some(RayStatus {
                role: RayRole::Worker,
                state: RayState::Running,
                since_ms: 1_700_000_000_000,
                venv: "/opt/ray".into(),
                python_version: Some("3.11.7".into()),
                ray_version: Some("2.60.0".into()),
                head_address: Some("10.0.0.1:6379".into()),
                restarts: 1,
                message: Some("joined".into()),
                pid: Some(4242),
                log_file: Some("/var/lib/corral/ray/worker.log".into()),
            }),
        };
        let head = RayHead {
            node: "head-01".into(),
            address: "10.0.0.1:6379".into(),
            dashboard: "http://10.0.0.1:8265".into(),
            python: "3.11.7".into(),
            ray: "2.60.0".into(),
            venv: "/opt/ray".into(),
            started_ms: 7,
        };
        let status = JobStatus {
            id: "42".into(),
            state: JobState::Failed {
                reason: "exit 3".into(),
            },
            native_state: "FAILED".into(),
            exit_code: Some(3),
            message: Some("NonZeroExitCode".into()),
        };
        let info = PluginInfo {
            name: "slurm".into(),
            version: "0.1.0".into(),
            scheduler: "Slurm".into(),
            features: vec![Feature::Arrays, Feature::Dependencies],
        };
        let e = |m: &dyn erased::Encode| m.bytes();
        vec![
            (
                "hello",
                e(&Hello {
                    protocol: PROTOCOL_VERSION,
                    node: "gpu-01".into(),
                    agent_version: "0.1.0".into(),
                    beat_interval_ms: 1000,
                    max_frame_bytes: 1 << 20,
                }),
            ),
            (
                "welcome",
                e(&Welcome {
                    protocol: PROTOCOL_VERSION,
                    coordinator_version: "0.1.0".into(),
                    max_frame_bytes: 1 << 20,
                }),
            ),
            (
                "agent beat",
                e(&AgentMsg::Beat(Beat {
                    sent_at_ns: 1_700_000_000_000_000_000,
                })),
            ),
            ("agent report", e(&AgentMsg::Report(Box::new(report)))),
            (
                "agent report delta",
                e(&AgentMsg::ReportDelta {
                    patch: vec![0x28, 0xb5, 0x2f, 0xfd, 0x20, 0x01],
                }),
            ),
            (
                "agent command result ok",
                e(&AgentMsg::CommandResult {
                    id: 9,
                    result: Ok(CommandOutput::Pong { nonce: 5 }),
                }),
            ),
            (
                "agent command result err",
                e(&AgentMsg::CommandResult {
                    id: 9,
                    result: Err("no such plugin".into()),
                }),
            ),
            ("agent ray head", e(&AgentMsg::RayHead(Some(head.clone())))),
            (
                "agent plugins",
                e(&AgentMsg::Plugins {
                    loaded: vec![LoadedPlugin {
                        info: info.clone(),
                        digest: "ab".into(),
                        grants: Grants {
                            programs: vec![("sbatch".into(), "/usr/bin/sbatch".into())],
                            hosts: vec!["127.0.0.1:8265".into()],
                            config_keys: vec!["partition".into()],
                        },
                    }],
                    failed: vec![LoadFailure {
                        name: "pbs".into(),
                        message: "pbs.wasm: no such file".into(),
                    }],
                }),
            ),
            (
                "coord ping",
                e(&CoordMsg::Command {
                    id: 1,
                    command: Command::Ping { nonce: 5 },
                }),
            ),
            (
                "coord report now",
                e(&CoordMsg::Command {
                    id: 2,
                    command: Command::ReportNow,
                }),
            ),
            (
                "coord plugin submit",
                e(&CoordMsg::Command {
                    id: 3,
                    command: Command::Plugin {
                        plugin: "slurm".into(),
                        call: Box::new(PluginCall::Submit(sample_spec())),
                        owner: Some("alice".into()),
                    },
                }),
            ),
            (
                "coord head changed",
                e(&CoordMsg::HeadChanged { head: Some(head) }),
            ),
            (
                "coord ray drain",
                e(&CoordMsg::Command {
                    id: 4,
                    command: Command::RayDrain {
                        reason: "corral: gpu 0 XID 79".into(),
                        deadline_ms: 60_000,
                    },
                }),
            ),
            (
                "coord ray resume",
                e(&CoordMsg::Command {
                    id: 5,
                    command: Command::RayResume,
                }),
            ),
            ("output report queued", e(&CommandOutput::ReportQueued)),
            (
                "output plugin statuses",
                e(&CommandOutput::Plugin(Ok(PluginReply::Statuses(vec![
                    status,
                ])))),
            ),
            (
                "output plugin info",
                e(&CommandOutput::Plugin(Ok(PluginReply::Info(info)))),
            ),
            (
                "output ray",
                e(&CommandOutput::Ray {
                    detail: "drained Ray node 1a2b".into(),
                }),
            ),
            (
                "output plugin error",
                e(&CommandOutput::Plugin(Err(PluginError::Invalid(
                    "bad spec".into(),
                )))),
            ),
        ]
    }

    mod erased {
        pub trait Encode {
            fn bytes(&self) -> Vec<u8>;
        }
        impl<T: serde::Serialize> Encode for T {
            fn bytes(&self) -> Vec<u8> {
                super::encode("golden", self).expect("encodes")
            }
        }
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The postcard bytes of every message, pinned. A failure here means the encoding
    /// changed: bump `PROTOCOL_VERSION` (and say why in the history above), then update
    /// the pinned bytes from the `actual` lines this test prints.
    #[test]
    fn every_message_keeps_its_golden_encoding() {
        let pinned: &[(&str, &str)] = GOLDEN;
        let cases = golden_cases();
        let mut changed = vec![];
        for (name, bytes) in &cases {
            let actual = hex(bytes);
            match pinned.iter().find(|(n, _)| n == name) {
                Some((_, want)) if *want == actual => {}
                _ => changed.push(format!("(\"{name}\", \"{actual}\"),")),
            }
        }
        assert!(
            changed.is_empty(),
            "wire encoding changed for:\n{}",
            changed.join("\n")
        );
        assert_eq!(pinned.len(), cases.len(), "a golden case was removed");
    }

    #[rustfmt::skip]
    const GOLDEN: &[(&str, &str)] = &[
        ("hello", "06066770752d303105302e312e30e807808040"),
        ("welcome", "0605302e312e30808040"),
        ("agent beat", "008080a8b1e39fe7cb17"),
        ("agent report", "01066770752d3031066770752d30310944656269616e20313203362e31044550594340012080808080802005302e312e3080d095ffbc31901c00004841020000204100007041000000000000f03f000000000000004000000000000008408080808080208080808004808080808010000001012f096e766d65306e317031046578743480808080800280808080800101045463746c000036420100284750552d66613465303030302d303030302d303030302d303030302d3030303030303030303030300e46616b6520483130302038304742018090dfc04a0180c0fc82aa0201320128010000000000406f40010d31363530303030303030303030011030303030303030303a31383a30302e3001093535302e35342e3135010431322e34010e39362e30302e38392e30302e30310101010764656661756c74010000000180b09dc2df01011401000100012d00010000000000e08540010000000080842e4101bc0f01bb1401000105010501100110010001010100010001000100010001000100010001000100010001000101000100010001000000000000000000000001116e766d6c3a2064726976657220627573790101066469736b3a2f01156469736b202f203931252066756c6c203e2039302501010180d095ffbc31082f6f70742f7261790106332e31312e370106322e36302e30010d31302e302e302e313a363337390101066a6f696e6564019221011e2f7661722f6c69622f636f7272616c2f7261792f776f726b65722e6c6f67"),
        ("agent report delta", "050628b52ffd2001"),
        ("agent command result ok", "0209000005"),
        ("agent command result err", "0209010e6e6f207375636820706c7567696e"),
        ("agent ray head", "030107686561642d30310d31302e302e302e313a3633373914687474703a2f2f31302e302e302e313a3832363506332e31312e3706322e36302e30082f6f70742f72617907"),
        ("agent plugins", "040105736c75726d05302e312e3005536c75726d02000102616201067362617463680f2f7573722f62696e2f736261746368010e3132372e302e302e313a383236350109706172746974696f6e0103706273167062732e7761736d3a206e6f20737563682066696c65"),
        ("coord ping", "00010005"),
        ("coord report now", "000201"),
        ("coord plugin submit", "00030205736c75726d020122697427732061202274657374223b20726d202d7266202f2060696460202428696429072f62696e2f736803022d630d6563686f2022243122203e263203612062010d2f746d702f776f726b206469720101410331203200010b2f746d702f6f75742d256a0001020000010801802001982a01056465627567000001010a0201030101033132330110736c75726d2e636f6e73747261696e7404613130300105616c696365"),
        ("coord head changed", "010107686561642d30310d31302e302e302e313a3633373914687474703a2f2f31302e302e302e313a3832363506332e31312e3706322e36302e30082f6f70742f72617907"),
        ("coord ray drain", "00040314636f7272616c3a20677075203020584944203739e0d403"),
        ("coord ray resume", "000504"),
        ("output report queued", "01"),
        ("output plugin statuses", "020003010234320506657869742033064641494c45440106010f4e6f6e5a65726f45786974436f6465"),
        ("output plugin info", "02000005736c75726d05302e312e3005536c75726d020001"),
        ("output ray", "0315647261696e656420526179206e6f64652031613262"),
        ("output plugin error", "020101086261642073706563"),
    ];
}
