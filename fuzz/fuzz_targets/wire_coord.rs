//! Coordinator → agent: a control stream as the agent reads it
//! (crates/node/src/session.rs): frames cut at their length prefix, the welcome, then
//! coordinator messages (commands, among them plugin calls with whole job specs, and
//! Ray head changes). Checked: nothing panics; every decoded message re-encodes to a
//! fixed point.
#![no_main]

use corral_fuzz::{assert_roundtrip, frames};
use corral_proto::wire::{self, CoordMsg, Welcome};
use libfuzzer_sys::fuzz_target;

const MAX_FRAME: usize = 64 << 10;

fuzz_target!(|data: &[u8]| {
    let mut frames = frames(data, MAX_FRAME).into_iter();
    let Some(Ok(welcome)) = frames.next() else {
        return;
    };
    let Ok(w) = wire::decode::<Welcome>("welcome", welcome) else {
        return;
    };
    assert_roundtrip("welcome", &w);
    for frame in frames {
        let Ok(frame) = frame else { return };
        let Ok(msg) = wire::decode::<CoordMsg>("coordinator message", frame) else {
            return;
        };
        assert_roundtrip("coordinator message", &msg);
    }
});
