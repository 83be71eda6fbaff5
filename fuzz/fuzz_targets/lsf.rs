//! The LSF plugin (plugins/lsf) on `bjobs -json`, `bhosts -l` and bsub output: through
//! its exports with a replaying backend (`corral_fuzz::drive`), and each parser
//! directly (ops 5-7).
#![no_main]

use corral_fuzz::{drive, Input};
use corral_plugin_lsf as lsf;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(inp) = Input::parse(data) else {
        return;
    };
    if drive::<lsf::Lsf>(&inp).is_some() {
        return;
    }
    let text = inp.text();
    match inp.op % 16 {
        5 => {
            if let Ok((recs, _missing)) = lsf::parse_bjobs(&text) {
                for r in &recs {
                    let _ = r.status();
                    let _ = r.label();
                    let _ = lsf::exited(r);
                }
            }
        }
        6 => {
            let _ = lsf::parse_bhosts(&inp.arg, &text);
        }
        _ => {
            let _ = lsf::parse_bsub(&text);
        }
    }
});
