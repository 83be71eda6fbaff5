//! The Grid Engine plugin (plugins/sge) on `qstat -xml`, `qacct -j` and qsub output:
//! through its exports with a replaying backend (`corral_fuzz::drive`), and each parser
//! directly (ops 5-8).
#![no_main]

use corral_fuzz::{drive, Input};
use corral_plugin_sge as sge;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(inp) = Input::parse(data) else {
        return;
    };
    if drive::<sge::Sge>(&inp).is_some() {
        return;
    }
    let text = inp.text();
    match inp.op % 16 {
        5 => {
            if let Ok(live) = sge::parse_qstat(&text) {
                for l in &live {
                    let _ = sge::live_state(&l.state);
                }
            }
        }
        6 => {
            for a in sge::parse_qacct(&text) {
                let _ = sge::ended(&a);
            }
        }
        7 => {
            let _ = sge::parse_host(&inp.arg, &text);
        }
        _ => {
            let _ = sge::parse_qsub(&text);
            let _ = sge::check_name(&text);
        }
    }
});
