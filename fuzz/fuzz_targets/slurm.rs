//! The Slurm plugin (plugins/slurm) on squeue, scontrol, sacct and sbatch output:
//! through its exports with a replaying backend (`corral_fuzz::drive`: status, list,
//! node-state, cancel, logs), and each parser directly (ops 5-9).
#![no_main]

use corral_fuzz::{drive, Input};
use corral_plugin_slurm as slurm;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(inp) = Input::parse(data) else {
        return;
    };
    if drive::<slurm::Slurm>(&inp).is_some() {
        return;
    }
    let text = inp.text();
    match inp.op % 16 {
        5 => {
            for r in slurm::parse_squeue(&text) {
                let _ = slurm::portable(&r.native, &r.reason);
            }
        }
        6 => {
            let _ = slurm::parse_scontrol(&text);
        }
        7 => {
            let _ = slurm::parse_sacct(&text);
        }
        8 => {
            let _ = slurm::parse_node(&inp.arg, &text);
        }
        _ => {
            let _ = slurm::parse_sbatch(&text);
            let _ = slurm::parse_exit(&text);
        }
    }
});
