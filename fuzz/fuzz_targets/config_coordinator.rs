//! The coordinator's sections (crates/coordinator/src/config.rs) as `corral
//! coordinator` reads them (agent/src/config.rs composes them): TOML through
//! `corral_base::config::parse_toml`, then `validate`, `validate_remediation` and
//! `validate_authority`, and the `Authority` built from them. Checked: nothing panics;
//! every error names a key or a line; sections that validate serialize back to TOML
//! that parses to the same sections.
#![no_main]

use std::collections::BTreeMap;

use corral_base::config::parse_toml;
use corral_fuzz::coordinator_config::{
    validate, validate_authority, validate_remediation, ApiSection, Authority, CoordinatorSection,
    JobsSection, ReasonClass, RemediationSection, SchedulerSection,
};
use libfuzzer_sys::fuzz_target;
use serde::{Deserialize, Serialize};

/// The coordinator's sections of a config file (the agent's and shared ones are ignored).
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct File {
    coordinator: Option<CoordinatorSection>,
    #[serde(default)]
    api: ApiSection,
    #[serde(default)]
    jobs: JobsSection,
    #[serde(default)]
    remediation: RemediationSection,
    #[serde(default)]
    schedulers: BTreeMap<String, SchedulerSection>,
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut file: File = match parse_toml(text) {
        Ok(f) => f,
        Err(e) => {
            assert!(!e.key.is_empty(), "an error without a key: {e}");
            return;
        }
    };
    // `validate` opens the TLS files it names; the fuzzer must not open arbitrary
    // paths (a FIFO would block it), so they point at a file that exists.
    for p in [&mut file.api.tls_cert, &mut file.api.tls_key]
        .into_iter()
        .flatten()
    {
        *p = "/dev/null".into();
    }
    let Some(c) = &file.coordinator else { return };
    let checked = validate(c, &file.api, &file.jobs)
        .and_then(|()| validate_remediation(&file.remediation))
        .and_then(|()| validate_authority(c, &file.schedulers));
    if let Err(e) = checked {
        assert!(!e.key.is_empty(), "an error without a key: {e}");
        return;
    }
    let authority = Authority::from_config(c, &file.schedulers);
    for (name, s) in &file.schedulers {
        for node in s.nodes.iter().chain(&s.members) {
            let _ = authority.scheduler_rank(name, node);
            let _ = authority.may_serve(name, node);
            let _ = s.has_member(node);
            let _ = s.native_name(node);
        }
    }
    for check in ["gpu", "disk", "xid", "ecc", "agent", ""] {
        let _ = file.remediation.drain_after.of(ReasonClass::of(check));
    }
    let written = toml::to_string(&file).expect("valid sections serialize");
    let back: File = parse_toml(&written)
        .unwrap_or_else(|e| panic!("written config does not parse: {e}\n{written}"));
    assert_eq!(
        back, file,
        "written config reads back differently:\n{written}"
    );
});
