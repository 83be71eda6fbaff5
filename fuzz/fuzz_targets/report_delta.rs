//! Report deltas (crates/transport/src/delta.rs), both ways.
//!
//! Input: a 2-byte big-endian length, a base report's postcard encoding of that length,
//! and the rest.
//! - First byte of the rest even: the rest is a patch, applied to the base as the
//!   coordinator applies one (a base that does not decode is replaced by an empty
//!   report). Checked: a patch either fails with an error, or yields a report no
//!   larger than the limit that re-encodes to a fixed point.
//! - Odd: the rest is a second report's encoding; the agent's `ReportEncoder` encodes
//!   base then second, the coordinator's `ReportDecoder` reads both. Checked: the
//!   coordinator gets back exactly what the agent encoded, full or delta.
#![no_main]

use corral_fuzz::delta::{ReportDecoder, ReportEncoder};
use corral_proto::model::NodeReport;
use corral_proto::wire::{self, AgentMsg};
use libfuzzer_sys::fuzz_target;

const LIMIT: usize = 64 << 10;

fn decoded(bytes: &[u8]) -> NodeReport {
    wire::decode("report", bytes).unwrap_or_default()
}

fn receive(dec: &mut ReportDecoder, msg: AgentMsg) -> NodeReport {
    match msg {
        AgentMsg::Report(full) => {
            dec.full(&full).expect("a full report is taken");
            *full
        }
        AgentMsg::ReportDelta { patch } => {
            dec.patch(&patch).expect("the agent's own delta applies")
        }
        other => panic!("the encoder made {other:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((len, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let len = usize::from(u16::from_be_bytes(*len)).min(rest.len());
    let (base, rest) = rest.split_at(len);
    let base = decoded(base);
    let Some((&mode, rest)) = rest.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let mut dec = ReportDecoder::new(LIMIT);
        dec.full(&base).expect("a full report is taken");
        if let Ok(r) = dec.patch(rest) {
            let bytes = wire::encode("report", &r).expect("encodes");
            assert!(bytes.len() <= LIMIT, "a patch decoded past the limit");
            corral_fuzz::assert_roundtrip("report", &r);
        }
    } else {
        let second = decoded(rest);
        let mut enc = ReportEncoder::new();
        let mut dec = ReportDecoder::new(usize::MAX);
        let first = receive(&mut dec, enc.encode(&base).expect("encodes"));
        let got = receive(&mut dec, enc.encode(&second).expect("encodes"));
        assert_eq!(
            wire::encode("report", &first).unwrap(),
            wire::encode("report", &base).unwrap()
        );
        assert_eq!(
            wire::encode("report", &got).unwrap(),
            wire::encode("report", &second).unwrap(),
            "a delta rebuilt another report than the agent sent"
        );
    }
});
