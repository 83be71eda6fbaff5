//! Agent → coordinator: a control stream as the coordinator reads it
//! (crates/coordinator/src/connection.rs): frames cut at their length prefix, the hello
//! (its version peeked first), then agent messages, full reports and report deltas
//! applied to the session's `ReportDecoder` as the coordinator applies them.
//! Checked: nothing panics; every decoded message re-encodes to a fixed point; a delta
//! that applies yields a report that re-encodes to exactly the bytes it decompressed to
//! (what becomes the next base on both ends).
#![no_main]

use corral_fuzz::{assert_roundtrip, delta::ReportDecoder, frames};
use corral_proto::wire::{self, AgentMsg, Hello};
use libfuzzer_sys::fuzz_target;

/// A small frame limit, so that the limit check is reached without megabyte inputs.
const MAX_FRAME: usize = 64 << 10;

fuzz_target!(|data: &[u8]| {
    let mut frames = frames(data, MAX_FRAME).into_iter();
    let Some(Ok(hello)) = frames.next() else {
        return;
    };
    let version = wire::peek_version(hello);
    match wire::decode::<Hello>("hello", hello) {
        Ok(h) => {
            assert_eq!(
                version.ok(),
                Some(h.protocol),
                "peek_version disagrees with the hello"
            );
            assert_roundtrip("hello", &h);
        }
        Err(_) => return,
    }
    let mut reports = ReportDecoder::new(MAX_FRAME);
    for frame in frames {
        let Ok(frame) = frame else { return };
        let Ok(msg) = wire::decode::<AgentMsg>("agent message", frame) else {
            return; // the coordinator ends the session: ProtocolViolation
        };
        assert_roundtrip("agent message", &msg);
        let applied = match &msg {
            AgentMsg::Report(r) => reports.full(r).map(|()| Some((**r).clone())),
            AgentMsg::ReportDelta { patch } => reports.patch(patch).map(Some),
            _ => Ok(None),
        };
        match applied {
            Ok(Some(r)) => assert_roundtrip("report", &r),
            Ok(None) => {}
            Err(_) => return, // ends the session
        }
    }
});
