//! Plugin manifests (crates/sandbox/src/plugins/manifest.rs) as the plugin host loads
//! them: `Manifest::parse` (TOML, names, grants, limits), then `defaulted_limits` and
//! the host grants matched against a URL the way the HTTP import matches a request
//! (`unresolved_hosts` is left out: it asks DNS). Checked: nothing panics; every error
//! names a key; a grant shown parses back to itself.
#![no_main]

use std::path::Path;

use corral_fuzz::manifest::{defaulted_limits, HostGrant, Manifest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The last line may be a URL to match the grants against.
    let url = text
        .lines()
        .last()
        .and_then(|l| reqwest::Url::parse(l.trim_start_matches('#')).ok());
    let m = match Manifest::parse(text, Path::new("fuzz.toml")) {
        Ok(m) => m,
        Err(e) => {
            assert!(!e.key.is_empty(), "an error without a key: {e}");
            return;
        }
    };
    let _ = m.limits.memory_bytes();
    let _ = m.limits.output_max();
    let _ = defaulted_limits(&m);
    for h in &m.hosts {
        let shown = h.to_string();
        let again = HostGrant::parse(&shown)
            .unwrap_or_else(|e| panic!("grant {shown:?} does not parse back: {e}"));
        assert_eq!(again.to_string(), shown);
        if let Some(u) = &url {
            let _ = h.matches(u);
        }
    }
});
