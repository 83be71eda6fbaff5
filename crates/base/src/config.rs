//! Config plumbing every corral TOML file shares: keyed errors, parsing that names the
//! key (or line) at fault, and small value checks.
//!
//! Invariant: every error an operator sees for a config value names the dotted key to
//! fix and what to do ([`ConfigIssue`]); the daemons' config crates build on
//! [`parse_toml`], so the agent's, the coordinator's and the plugin manifests' errors
//! read alike.

use std::path::Path;

/// A configuration value that cannot be used, with the dotted key an operator must fix
/// (`health.disk_fail_percent`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigIssue {
    pub key: String,
    pub message: String,
}

impl ConfigIssue {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigIssue {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Splits `host:port` (also `[v6]:port`).
pub fn split_host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = port.parse().ok()?;
    (!host.is_empty()).then_some((host, port))
}

/// That `path` can be opened for reading; the error names `key` and the OS error.
pub fn check_readable(key: &str, path: &Path) -> Result<(), ConfigIssue> {
    std::fs::File::open(path)
        .map(|_| ())
        .map_err(|e| ConfigIssue {
            key: key.into(),
            message: format!("cannot read {}: {e}", path.display()),
        })
}

/// Deserializes TOML `text` into `T`; an error names the dotted key (or the line of a
/// syntax error) and says what is wrong. Shared by every TOML file corral reads (this
/// config, plugin manifests), so their errors read alike.
pub fn parse_toml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ConfigIssue> {
    let de = toml::Deserializer::parse(text).map_err(|e| ConfigIssue {
        key: e
            .span()
            .map(|s| format!("(line {})", line_of(text, s.start)))
            .unwrap_or_else(|| "(file)".into()),
        message: e.message().to_string(),
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        let line = inner
            .span()
            .map(|s| format!(" (line {})", line_of(text, s.start)))
            .unwrap_or_default();
        ConfigIssue {
            key: if key == "." {
                "(top level)".into()
            } else {
                key
            },
            message: format!("{}{line}", inner.message()),
        }
    })
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}
