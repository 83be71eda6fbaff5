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
        let key = dotted_key(e.path());
        let inner = e.into_inner();
        let line = inner
            .span()
            .map(|s| format!(" (line {})", line_of(text, s.start)))
            .unwrap_or_default();
        ConfigIssue {
            key,
            message: format!("{}{line}", inner.message()),
        }
    })
}

/// The dotted key of a deserialization error's path, as TOML writes it: a key that is
/// not a bare key (empty, or with a dot, space or quote in it) is quoted, so that the
/// key an error names is never empty and never ambiguous (`""`, `"a.b"`, not `` or
/// `a.b`). The path of an error about the file as a whole is `(top level)`.
fn dotted_key(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        let part = match segment {
            Segment::Seq { index } => {
                out.push_str(&format!("[{index}]"));
                continue;
            }
            Segment::Map { key } | Segment::Enum { variant: key } => {
                let bare = !key.is_empty()
                    && key
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                if bare {
                    key.clone()
                } else {
                    format!("{key:?}")
                }
            }
            Segment::Unknown => "?".to_string(),
        };
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(&part);
    }
    if out.is_empty() {
        "(top level)".into()
    } else {
        out
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}
