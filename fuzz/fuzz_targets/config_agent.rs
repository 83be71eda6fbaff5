//! The agent's `[agent]` section (crates/node/src/config.rs) as `corral agent` reads
//! it: TOML through `corral_base::config::parse_toml` (keyed errors), then
//! `AgentSection::validate`. Checked: nothing panics; every error names a key or a
//! line; a section that validates serializes back to TOML that parses and validates
//! to the same section.
#![no_main]

use corral_base::config::parse_toml;
use corral_fuzz::node_config::AgentSection;
use libfuzzer_sys::fuzz_target;
use serde::{Deserialize, Serialize};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct File {
    agent: AgentSection,
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file: File = match parse_toml(text) {
        Ok(f) => f,
        Err(e) => {
            assert!(!e.key.is_empty(), "an error without a key: {e}");
            return;
        }
    };
    if let Err(e) = file.agent.validate() {
        assert!(
            e.key.starts_with("agent."),
            "an error about another key: {e}"
        );
        return;
    }
    let _ = file.agent.server_name();
    let written = toml::to_string(&file).expect("a valid section serializes");
    let back: File = parse_toml(&written)
        .unwrap_or_else(|e| panic!("written config does not parse: {e}\n{written}"));
    back.agent.validate().expect("written config validates");
    assert_eq!(
        back, file,
        "written config reads back differently:\n{written}"
    );
});
