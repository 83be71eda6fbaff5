//! Report deltas: after the first report of a session, an agent sends only what changed.
//!
//! A node's report is mostly what does not change between two reports five seconds apart
//! (GPU names, UUIDs, serials, driver and VBIOS versions, NVLink counters, filesystems),
//! and a few counters and gauges that do. So the agent encodes each report with postcard
//! as before, and compresses that encoding with zstd, using the *previous report's
//! encoding* on the same session as the dictionary ([`AgentMsg::ReportDelta`]). Whatever
//! repeats costs a back-reference of a byte or two; what changed travels as literals.
//!
//! Invariants:
//! - **Both ends hold the same base.** The base is the postcard encoding of the last
//!   report sent on this session, delta or full. The control stream is one reliable,
//!   ordered QUIC stream, so both ends see the same reports in the same order and no
//!   acknowledgement is needed. The coordinator's base is what the agent *sent*: the
//!   coordinator applies its own caps to the decoded report afterwards, so a truncated
//!   report never desynchronises the two.
//! - **A session starts from nothing.** A new connection means a new [`ReportEncoder`]
//!   and a new [`ReportDecoder`], so the first report of every session is complete: a
//!   reconnecting agent or a restarted coordinator gets the whole picture at once.
//! - **A delta is never trusted blindly.** It names its decoded size in the zstd frame
//!   header; a frame without it, or one larger than the receiver's frame limit, is
//!   refused before anything is allocated (no decompression bombs). A delta before any
//!   base, or one that does not decode, is an error that ends the session, which the
//!   agent answers by reconnecting with a full report. Each delta carries zstd's
//!   content checksum, so one applied to any other base fails instead of yielding a
//!   plausible wrong report.
//! - **A report not sent restarts the deltas.** The encoder's base moves at every
//!   [`ReportEncoder::encode`]; an agent that then does not send the message (over the
//!   coordinator's frame limit) must start a new encoder, so that its next report is
//!   full.
//! - **Never bigger than the full report.** When the delta is not smaller than the plain
//!   encoding (a first report, a wholesale change), the plain [`AgentMsg::Report`] goes
//!   instead, and it becomes the base all the same.
//!
//! Trade-offs: a generic byte-level delta needs no per-field diff code that would have
//! to follow every change of [`NodeReport`]; the price is that a changed number costs its
//! whole encoding (4 bytes for an `f32`, 8 for an `f64`) rather than the difference, and
//! the coordinator keeps one encoded report per connection (the report's own size:
//! ~200 bytes for a node without GPUs, ~3.6 KB with 8). Compression runs once per report
//! on the agent (tens of microseconds); decompression runs on the coordinator's worker
//! thread with one reused context per thread.
//!
//! ```
//! use corral_proto::model::NodeReport;
//! use corral_proto::wire::AgentMsg;
//! use corral_transport::delta::{ReportDecoder, ReportEncoder};
//!
//! let mut report = NodeReport { node: "gpu-01".into(), ..Default::default() };
//! let mut agent = ReportEncoder::new();
//! let mut coordinator = ReportDecoder::new(1 << 20);
//!
//! // The first report of a session is complete.
//! let AgentMsg::Report(first) = agent.encode(&report).unwrap() else { panic!() };
//! coordinator.full(&first).unwrap();
//!
//! // Later ones carry what changed.
//! report.host.uptime_secs = 3600;
//! match agent.encode(&report).unwrap() {
//!     AgentMsg::ReportDelta { patch } => assert_eq!(coordinator.patch(&patch).unwrap(), report),
//!     AgentMsg::Report(full) => coordinator.full(&full).unwrap(),
//!     _ => unreachable!(),
//! }
//! ```

use std::cell::RefCell;

use corral_proto::model::NodeReport;
use corral_proto::wire::{self, AgentMsg, WireError};

/// zstd's level for deltas: level 3 (zstd's default) finds the long matches a report
/// makes against its predecessor; higher levels gain a few bytes for much more CPU.
const LEVEL: i32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error("a report delta arrived before any full report on this session")]
    NoBase,
    #[error("a report delta does not say its decoded size, so it is refused unread")]
    NoSize,
    #[error("a report delta decodes to {bytes} bytes, over the {limit}-byte frame limit")]
    TooLarge { bytes: u64, limit: usize },
    #[error("a report delta does not decompress against this session's last report: {0}")]
    Corrupt(std::io::Error),
    #[error("compressing a report: {0}")]
    Compress(std::io::Error),
    #[error(transparent)]
    Wire(#[from] WireError),
}

/// The agent's half: one per session.
#[derive(Debug)]
pub struct ReportEncoder {
    base: Option<Vec<u8>>,
}

impl Default for ReportEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ReportEncoder {
    pub fn new() -> Self {
        ReportEncoder { base: None }
    }

    /// The message that carries `report` on this session: a delta against the previous
    /// report, or the full report when that is smaller or there is no previous one.
    pub fn encode(&mut self, report: &NodeReport) -> Result<AgentMsg, DeltaError> {
        let bytes = wire::encode("report", report)?;
        let msg = match &self.base {
            Some(base) => {
                let patch = COMPRESSOR.with(|cell| -> Result<Vec<u8>, DeltaError> {
                    let mut slot = cell.borrow_mut();
                    let c = match &mut *slot {
                        Some(c) => c,
                        None => slot.insert(new_compressor()?),
                    };
                    c.set_dictionary(LEVEL, base)
                        .map_err(DeltaError::Compress)?;
                    c.compress(&bytes).map_err(DeltaError::Compress)
                })?;
                // Varint length prefix + variant tag: a delta must beat the full report.
                (patch.len() + 4 < bytes.len()).then_some(AgentMsg::ReportDelta { patch })
            }
            None => None,
        };
        let msg = msg.unwrap_or_else(|| AgentMsg::Report(Box::new(report.clone())));
        self.base = Some(bytes);
        Ok(msg)
    }
}

fn new_compressor() -> Result<zstd::bulk::Compressor<'static>, DeltaError> {
    let mut c = zstd::bulk::Compressor::new(LEVEL).map_err(DeltaError::Compress)?;
    // 4 bytes that turn a delta applied to the wrong base into an error instead of a
    // plausible wrong report (the frame names no dictionary: the base is raw content).
    c.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))
        .map_err(DeltaError::Compress)?;
    Ok(c)
}

thread_local! {
    /// One compression context per thread, shared by the sessions on it (an agent has
    /// one; a harness simulating thousands must not hold a context for each).
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { RefCell::new(None) };
    /// One decompression context per coordinator worker thread (a context is ~100 KB;
    /// one per connection would cost more than the connection itself).
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

/// The coordinator's half: one per session.
#[derive(Debug)]
pub struct ReportDecoder {
    base: Option<Vec<u8>>,
    limit: usize,
}

impl ReportDecoder {
    /// `limit`: the largest decoded report accepted (the session's frame limit).
    pub fn new(limit: usize) -> Self {
        ReportDecoder { base: None, limit }
    }

    /// A full report arrived: it is the base of the next delta.
    pub fn full(&mut self, report: &NodeReport) -> Result<(), DeltaError> {
        // postcard is positional and deterministic, and the report types hold no maps
        // or conditionally skipped fields, so this is byte for byte what the agent
        // encoded (pinned by `a_full_report_reencodes_to_the_agents_bytes`).
        self.base = Some(wire::encode("report", report)?);
        Ok(())
    }

    /// A delta arrived: the report it carries, which becomes the next base.
    pub fn patch(&mut self, patch: &[u8]) -> Result<NodeReport, DeltaError> {
        let base = self.base.as_deref().ok_or(DeltaError::NoBase)?;
        let size = zstd::zstd_safe::get_frame_content_size(patch)
            .map_err(|_| DeltaError::Corrupt(std::io::Error::other("not a zstd frame")))?
            .ok_or(DeltaError::NoSize)?;
        if size > self.limit as u64 {
            return Err(DeltaError::TooLarge {
                bytes: size,
                limit: self.limit,
            });
        }
        let mut bytes = Vec::with_capacity(size as usize);
        DECOMPRESSOR.with(|cell| -> Result<(), DeltaError> {
            let mut slot = cell.borrow_mut();
            let d = match &mut *slot {
                Some(d) => d,
                None => slot.insert(zstd::bulk::Decompressor::new().map_err(DeltaError::Corrupt)?),
            };
            d.set_dictionary(base).map_err(DeltaError::Corrupt)?;
            d.decompress_to_buffer(patch, &mut bytes)
                .map_err(DeltaError::Corrupt)?;
            Ok(())
        })?;
        let report = wire::decode("report", &bytes)?;
        self.base = Some(bytes);
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_proto::model::{Filesystem, GpuSample, HostFacts};

    fn gpu_node() -> NodeReport {
        let mut r = NodeReport {
            node: "gpu-01".into(),
            facts: HostFacts {
                hostname: "gpu-01".into(),
                os: "Debian GNU/Linux 12".into(),
                kernel: "6.1.0-27-amd64".into(),
                cpu_model: "AMD EPYC 9654 96-Core Processor".into(),
                cpu_cores: 192,
                physical_cores: Some(96),
                memory_total_bytes: 2 << 40,
                agent_version: "0.1.0".into(),
            },
            gpus: (0..8).map(GpuSample::plausible).collect(),
            ..Default::default()
        };
        r.host.filesystems = vec![Filesystem {
            mount: "/".into(),
            device: "/dev/nvme0n1p2".into(),
            fs_type: "ext4".into(),
            total_bytes: 3 << 40,
            available_bytes: 1 << 40,
        }];
        r
    }

    fn step(r: &mut NodeReport, i: u64) {
        r.host.taken_at_ms += 5000;
        r.host.uptime_secs += 5;
        r.host.cpu_percent = (i % 97) as f32 * 1.01;
        for (n, g) in r.gpus.iter_mut().enumerate() {
            g.utilization_percent = Some(((i + n as u64) * 37 % 101) as u32);
            g.power_watts = Some(300.0 + ((i * 13 + n as u64) % 400) as f64 * 0.731);
            g.energy_joules = g.energy_joules.map(|e| e + 2500.125);
        }
    }

    #[test]
    fn a_sequence_of_deltas_rebuilds_every_report_exactly() {
        let mut r = gpu_node();
        let mut enc = ReportEncoder::new();
        let mut dec = ReportDecoder::new(1 << 20);
        let mut deltas = 0;
        for i in 0..50 {
            match enc.encode(&r).unwrap() {
                AgentMsg::Report(full) => {
                    assert_eq!(*full, r);
                    dec.full(&full).unwrap();
                }
                AgentMsg::ReportDelta { patch } => {
                    deltas += 1;
                    assert_eq!(dec.patch(&patch).unwrap(), r);
                }
                other => panic!("not a report: {other:?}"),
            }
            step(&mut r, i);
        }
        assert_eq!(deltas, 49, "every report after the first is a delta");
    }

    #[test]
    fn the_first_report_of_a_session_is_full_and_a_new_session_starts_over() {
        let r = gpu_node();
        let mut enc = ReportEncoder::new();
        assert!(matches!(enc.encode(&r).unwrap(), AgentMsg::Report(_)));
        assert!(matches!(
            enc.encode(&r).unwrap(),
            AgentMsg::ReportDelta { .. }
        ));
        // A reconnect (or a restarted coordinator) is a new session: full again.
        let mut enc = ReportEncoder::new();
        assert!(matches!(enc.encode(&r).unwrap(), AgentMsg::Report(_)));
    }

    #[test]
    fn an_unchanged_8_gpu_report_costs_a_few_dozen_bytes() {
        let r = gpu_node();
        let full = wire::encode("report", &r).unwrap().len();
        let mut enc = ReportEncoder::new();
        enc.encode(&r).unwrap();
        let AgentMsg::ReportDelta { patch } = enc.encode(&r).unwrap() else {
            panic!("expected a delta")
        };
        assert!(full > 2000, "the full report is {full} bytes");
        assert!(
            patch.len() < 64,
            "an unchanged report took {} bytes",
            patch.len()
        );
    }

    #[test]
    fn a_full_report_reencodes_to_the_agents_bytes() {
        let mut r = gpu_node();
        step(&mut r, 3);
        r.gpus[2].power_watts = Some(f64::NAN);
        let sent = wire::encode("report", &r).unwrap();
        let received: NodeReport = wire::decode("report", &sent).unwrap();
        assert_eq!(wire::encode("report", &received).unwrap(), sent);
    }

    #[test]
    fn a_delta_before_any_full_report_is_refused() {
        let r = gpu_node();
        let mut enc = ReportEncoder::new();
        enc.encode(&r).unwrap();
        let AgentMsg::ReportDelta { patch } = enc.encode(&r).unwrap() else {
            panic!("expected a delta")
        };
        let err = ReportDecoder::new(1 << 20).patch(&patch).unwrap_err();
        assert!(matches!(err, DeltaError::NoBase), "{err}");
    }

    #[test]
    fn a_delta_against_another_base_or_garbage_is_an_error_not_a_wrong_report() {
        let r = gpu_node();
        let mut enc = ReportEncoder::new();
        enc.encode(&r).unwrap();
        let AgentMsg::ReportDelta { patch } = enc.encode(&r).unwrap() else {
            panic!("expected a delta")
        };
        let mut other = ReportDecoder::new(1 << 20);
        other
            .full(&NodeReport {
                node: "x".into(),
                ..Default::default()
            })
            .unwrap();
        let err = other.patch(&patch).unwrap_err();
        assert!(matches!(err, DeltaError::Corrupt(_)), "{err}");
        for garbage in [
            &b""[..],
            b"\x28\xb5\x2f\xfd",
            b"not zstd at all",
            &patch[..patch.len() / 2],
        ] {
            assert!(other.patch(garbage).is_err(), "{garbage:?} decoded");
        }
    }

    #[test]
    fn a_delta_claiming_more_than_the_frame_limit_is_refused_unread() {
        let mut r = gpu_node();
        let mut enc = ReportEncoder::new();
        let mut dec = ReportDecoder::new(1000);
        let AgentMsg::Report(full) = enc.encode(&r).unwrap() else {
            panic!()
        };
        dec.full(&full).unwrap();
        step(&mut r, 1);
        let AgentMsg::ReportDelta { patch } = enc.encode(&r).unwrap() else {
            panic!()
        };
        let err = dec.patch(&patch).unwrap_err();
        assert!(
            matches!(err, DeltaError::TooLarge { limit: 1000, .. }),
            "{err}"
        );
    }
}
