//! The Ray Jobs plugin (plugins/ray-jobs) on the Jobs REST API's JSON: through its
//! exports with a replaying backend (`corral_fuzz::drive`: status, list, cancel, logs
//! over HTTP), and `parse_job` directly on a parsed body (op 5).
#![no_main]

use corral_fuzz::{drive, Input};
use corral_plugin_ray_jobs as ray;
use corral_plugin_sdk::serde_json::{self, Value};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(inp) = Input::parse(data) else {
        return;
    };
    if drive::<ray::RayJobs>(&inp).is_some() {
        return;
    }
    if let Ok(v) = serde_json::from_str::<Value>(&inp.text()) {
        let s = ray::parse_job(&inp.arg, &v);
        assert_eq!(s.id, inp.arg);
        if let Some(list) = v.as_array() {
            for j in list {
                let _ = ray::parse_job(&inp.arg, j);
            }
        }
    }
});
