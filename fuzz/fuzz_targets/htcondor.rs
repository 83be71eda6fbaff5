//! The HTCondor plugin (plugins/htcondor) on `condor_q -json`, `condor_history -json`
//! and `condor_submit -terse` output: through its exports with a replaying backend
//! (`corral_fuzz::drive`), and the parsers directly (ops 5-6).
#![no_main]

use corral_fuzz::{drive, Input};
use corral_plugin_htcondor as htcondor;
use corral_plugin_sdk::records;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(inp) = Input::parse(data) else {
        return;
    };
    if drive::<htcondor::HtCondor>(&inp).is_some() {
        return;
    }
    let text = inp.text();
    match inp.op % 16 {
        5 => {
            if let Ok(ads) = records::json::<Vec<htcondor::Ad>>("condor_q", &text) {
                for a in &ads {
                    let _ = a.status();
                }
            }
        }
        _ => {
            let _ = htcondor::parse_terse(&text);
        }
    }
});
