//! The agent ⇄ coordinator wire protocol.
//!
//! One QUIC connection per agent (mutual TLS, see [`crate::pki`]) carries one
//! bidirectional stream opened by the agent. On it both sides write *frames*: a 4-byte
//! big-endian length followed by a postcard-encoded message.
//!
//! 1. The agent's first frame is a [`Hello`]. Its first field is the protocol version,
//!    so a coordinator can read the version of *any* agent, past or future, with
//!    [`peek_version`] even when it cannot decode the rest.
//! 2. The coordinator answers with a [`Welcome`], or closes the connection with a
//!    [`Refusal`] code and a human-readable reason (QUIC `CONNECTION_CLOSE` carries both),
//!    so an incompatible or unauthorised peer learns *why*, not just that decoding failed.
//! 3. Then the agent sends [`AgentMsg`]s (small [`Beat`]s every beat interval, full
//!    reports every report interval and on health changes, command results) and the
//!    coordinator sends [`CoordMsg`]s (commands), interleaved freely.
//!
//! Invariants:
//! - A frame longer than the receiver's limit is never buffered: the length prefix is
//!   checked first and the connection is refused with [`Refusal::FrameTooLarge`].
//! - Any change to these types or to [`crate::model`] bumps [`PROTOCOL_VERSION`]
//!   (postcard is positional). Versions outside
//!   [`MIN_PROTOCOL_VERSION`]`..=`[`PROTOCOL_VERSION`] are refused with both ranges named.
//!
//! Reading the version of a hello, whatever else it carries:
//!
//! ```
//! use corral::wire::{encode, peek_version, Hello, PROTOCOL_VERSION};
//!
//! let hello = Hello {
//!     protocol: PROTOCOL_VERSION,
//!     node: "gpu-01".into(),
//!     agent_version: "0.1.0".into(),
//!     beat_interval_ms: 1000,
//!     report_interval_ms: 5000,
//! };
//! let frame = encode("hello", &hello).unwrap();
//! assert_eq!(peek_version(&frame).unwrap(), PROTOCOL_VERSION);
//! ```
//!
//! Trade-off: beats share the stream with reports, so a large report can delay a beat by
//! its transmission time (microseconds on a LAN); in exchange ordering is simple and a
//! beat never overtakes the report that changed health.

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

use crate::model::{HealthStatus, NodeReport};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// The oldest agent protocol this coordinator still accepts.
pub const MIN_PROTOCOL_VERSION: u32 = 1;
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
    pub report_interval_ms: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    pub protocol: u32,
    pub coordinator_version: String,
}

/// The small liveness signal.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Beat {
    pub seq: u64,
    /// Agent clock at send time, for latency measurement on one host (benchmarks).
    pub sent_at_ns: u64,
    pub health: HealthStatus,
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

/// What the coordinator can ask of an agent. Later capabilities (Ray head discovery,
/// job requests) add variants at the end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Round-trip check of the command path.
    Ping { nonce: u64 },
    /// Sample now and send a full report.
    ReportNow,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CommandOutput {
    Pong { nonce: u64 },
    ReportQueued,
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
}

impl Refusal {
    pub fn code(self) -> quinn::VarInt {
        quinn::VarInt::from_u32(self as u32)
    }

    pub fn from_code(code: quinn::VarInt) -> Option<Refusal> {
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
        ]
        .into_iter()
        .find(|r| r.code() == code)
    }

    /// Whether retrying without operator action can help.
    pub fn is_permanent(self) -> bool {
        matches!(
            self,
            Refusal::UnsupportedVersion | Refusal::IdentityMismatch | Refusal::NotAnAgent
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

pub fn encode<T: Serialize>(what: &'static str, msg: &T) -> Result<Bytes, WireError> {
    postcard::to_allocvec(msg)
        .map(Bytes::from)
        .map_err(|source| WireError::Encode { what, source })
}

pub fn decode<T: DeserializeOwned>(what: &'static str, frame: &[u8]) -> Result<T, WireError> {
    postcard::from_bytes(frame).map_err(|source| WireError::Decode { what, source })
}

fn codec(max_frame: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .max_frame_length(max_frame)
        .new_codec()
}

/// The receiving half of a framed stream.
pub struct FrameReader {
    inner: FramedRead<quinn::RecvStream, LengthDelimitedCodec>,
    max: usize,
}

impl FrameReader {
    pub fn new(stream: quinn::RecvStream, max_frame: usize) -> Self {
        FrameReader {
            inner: FramedRead::new(stream, codec(max_frame)),
            max: max_frame,
        }
    }

    /// The next raw frame; `Closed` at the end of the stream.
    pub async fn next_frame(&mut self) -> Result<BytesMut, WireError> {
        match self.inner.next().await {
            Some(Ok(frame)) => Ok(frame),
            // tokio-util reports an over-long length prefix as InvalidData, before
            // reading (or buffering) the body.
            Some(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                Err(WireError::FrameTooLarge { max: self.max })
            }
            Some(Err(e)) => Err(WireError::Io(e)),
            None => Err(WireError::Closed),
        }
    }

    pub async fn recv<T: DeserializeOwned>(&mut self, what: &'static str) -> Result<T, WireError> {
        let frame = self.next_frame().await?;
        decode(what, &frame)
    }
}

/// The sending half of a framed stream.
pub struct FrameWriter {
    inner: FramedWrite<quinn::SendStream, LengthDelimitedCodec>,
}

impl FrameWriter {
    pub fn new(stream: quinn::SendStream, max_frame: usize) -> Self {
        FrameWriter {
            inner: FramedWrite::new(stream, codec(max_frame)),
        }
    }

    pub async fn send<T: Serialize>(
        &mut self,
        what: &'static str,
        msg: &T,
    ) -> Result<usize, WireError> {
        let bytes = encode(what, msg)?;
        let len = bytes.len();
        self.send_raw(bytes).await?;
        Ok(len)
    }

    /// Sends bytes as one frame without encoding (tests use this to send garbage).
    pub async fn send_raw(&mut self, frame: Bytes) -> Result<(), WireError> {
        self.inner.send(frame).await.map_err(WireError::Io)
    }

    /// Finishes the stream gracefully.
    pub fn finish(&mut self) {
        let _ = self.inner.get_mut().finish();
    }
}

/// QUIC transport settings shared by both ends.
pub fn transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    // Liveness is decided by beats, not by QUIC's idle timer; the idle timeout only
    // reclaims connections whose peer vanished without a close.
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(std::time::Duration::from_secs(30)).expect("30 s fits"),
    ));
    t.keep_alive_interval(Some(std::time::Duration::from_secs(5)));
    // One control stream per agent; refuse more so a peer cannot open thousands.
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(2));
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    t
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

    #[test]
    fn garbage_is_a_decode_error_not_a_panic() {
        let err =
            decode::<AgentMsg>("agent message", &[0xff, 0xff, 0xff, 0xff, 0xff, 0x01]).unwrap_err();
        assert!(matches!(err, WireError::Decode { .. }), "{err}");
    }

    #[test]
    fn a_beat_is_small() {
        let beat = AgentMsg::Beat(Beat {
            seq: 123_456,
            sent_at_ns: crate::model::unix_ns(),
            health: HealthStatus::Healthy,
        });
        assert!(encode("beat", &beat).unwrap().len() <= 16);
    }
}
