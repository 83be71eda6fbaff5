//! The PBS plugin (plugins/pbs) on `qstat -f -F json -x`, `pbsnodes -F json` and qsub
//! output: through its exports with a replaying backend (`corral_fuzz::drive`), and
//! each parser directly (ops 5-7).
#![no_main]

use corral_fuzz::{drive, Input};
use corral_plugin_pbs as pbs;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(inp) = Input::parse(data) else {
        return;
    };
    if drive::<pbs::Pbs>(&inp).is_some() {
        return;
    }
    let text = inp.text();
    match inp.op % 16 {
        5 => {
            if let Ok(recs) = pbs::parse_qstat(&text) {
                for r in &recs {
                    let _ = r.status();
                    let _ = pbs::ended(r);
                }
            }
        }
        6 => {
            let _ = pbs::parse_pbsnodes(&inp.arg, &text);
        }
        _ => {
            let _ = pbs::parse_qsub(&text);
            let _ = pbs::is_job_id(&text);
        }
    }
});
