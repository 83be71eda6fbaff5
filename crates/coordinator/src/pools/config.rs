//! `[pools.NAME]`, `[providers]` and `[join]`: the node pools the coordinator keeps
//! (see [`super`]), where their provider plugins live, and how new nodes join.
//!
//! ```toml
//! [providers]
//! dir = "/usr/lib/corral/plugins"     # NAME.wasm and NAME.toml of provider plugins
//!
//! [join]
//! ca_dir = "/etc/corral/ca"           # the cluster CA: signs joining nodes' certificates
//! url = "https://coord-01:7441"       # where new agents send their request ({join_url})
//! coordinator = "coord-01:7440"       # the QUIC address they then dial ({coordinator})
//! cert_days = 90
//!
//! [pools.gpu]
//! provider = "hetzner"
//! min = 4
//! max = 8
//! secret_file = "/etc/corral/hetzner.token"
//! replace_after = "5m"                # a node down this long is replaced
//! user_data = """#cloud-config ... corral join --url {join_url} --token {join_token} ..."""
//! [pools.gpu.template]                # handed to the plugin, keys as it documents them
//! server_type = "gx11"
//! image = "ubuntu-24.04"
//! labels.team = "ml"
//! ```
//!
//! Invariants: every value is checked here, with the key named, before the coordinator
//! starts; a pool's name is a node-name prefix (`gpu-1`, `gpu-2` ...), so it follows the
//! node-name rule; the secret file is read at start (and on every call, so a rotated
//! token is picked up), never logged.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use corral_base::config::ConfigIssue;

/// `[providers]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProvidersSection {
    /// Where provider plugins' `NAME.wasm` and `NAME.toml` live.
    pub dir: Option<PathBuf>,
    /// Where compiled plugins are cached. None: no disk cache.
    pub cache_dir: Option<PathBuf>,
}

/// `[join]`: how nodes join with a bootstrap token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinSection {
    /// The cluster CA directory (`ca.pem`, `ca.key`): the coordinator signs joining
    /// nodes' certificates with it and records them there, revocable by name.
    pub ca_dir: PathBuf,
    /// The API URL new agents send their certificate request to (`{join_url}`).
    pub url: String,
    /// The QUIC address (`host:port`) joined agents dial (`{coordinator}`).
    pub coordinator: String,
    /// Lifetime of a joined node's certificate.
    #[serde(default = "default_cert_days")]
    pub cert_days: u32,
}

fn default_cert_days() -> u32 {
    90
}

/// `[pools.NAME]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSection {
    /// The provider plugin (`NAME.wasm` in `[providers] dir`).
    pub provider: String,
    #[serde(default)]
    pub min: u32,
    pub max: u32,
    /// Handed to the plugin with every call; tables become dotted keys
    /// (`labels.team`), arrays JSON text.
    #[serde(default)]
    pub template: BTreeMap<String, serde_json::Value>,
    /// What a new machine runs first, with `{join_token}`, `{join_url}`,
    /// `{coordinator}`, `{ca_pem}`, `{node}` and `{pool}` filled in.
    #[serde(default)]
    pub user_data: String,
    /// A file holding the provider's secret (an API token), handed to the plugin.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// A pool node `down` this long is deleted and replaced.
    #[serde(default = "default_replace_after", with = "humantime_serde")]
    pub replace_after: Duration,
    /// A created node whose agent has not joined after this long is replaced (its join
    /// token expires then too).
    #[serde(default = "default_join_timeout", with = "humantime_serde")]
    pub join_timeout: Duration,
    /// How long a reachable node being deleted gets to drain first.
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// At most this many creations at once.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: u32,
    /// After this many provider failures in a row the pool stops acting until `corral
    /// pool NAME resume`, as Ray's autoscaler does.
    #[serde(default = "default_max_failures")]
    pub max_failures: u32,
    /// HTTP requests the provider plugin may send per hour (Hetzner allows 3,600 per
    /// project); 0: no budget.
    #[serde(default = "default_api_budget")]
    pub api_calls_per_hour: u32,
    /// How often the provider is asked for the pool's machines.
    #[serde(default = "default_list_interval", with = "humantime_serde")]
    pub list_interval: Duration,
    /// For providers that bill by the started hour: delete an idle node above `min`
    /// just before its next hour starts, instead of keeping it.
    #[serde(default)]
    pub billing_hour: bool,
}

fn default_replace_after() -> Duration {
    Duration::from_secs(300)
}
fn default_join_timeout() -> Duration {
    Duration::from_secs(900)
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(600)
}
fn default_in_flight() -> u32 {
    2
}
fn default_max_failures() -> u32 {
    5
}
fn default_api_budget() -> u32 {
    3600
}
fn default_list_interval() -> Duration {
    Duration::from_secs(30)
}

/// The placeholders `user_data` may use.
pub const USER_DATA_KEYS: &[&str] = &[
    "join_token",
    "join_url",
    "coordinator",
    "ca_pem",
    "node",
    "pool",
];

impl PoolSection {
    /// The template as the plugin gets it: dotted keys, strings as they are, numbers
    /// and booleans as written, arrays as JSON.
    pub fn flat_template(&self) -> BTreeMap<String, String> {
        fn walk(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, String>) {
            match v {
                serde_json::Value::Object(m) => {
                    for (k, v) in m {
                        walk(&format!("{prefix}.{k}"), v, out);
                    }
                }
                serde_json::Value::String(s) => {
                    out.insert(prefix.to_string(), s.clone());
                }
                other => {
                    out.insert(prefix.to_string(), other.to_string());
                }
            }
        }
        let mut out = BTreeMap::new();
        for (k, v) in &self.template {
            walk(k, v, &mut out);
        }
        out
    }
}

/// Checks `[pools]`, `[providers]` and `[join]` together: each is useless without the
/// others.
pub fn validate(
    pools: &BTreeMap<String, PoolSection>,
    providers: &ProvidersSection,
    join: Option<&JoinSection>,
) -> Result<(), ConfigIssue> {
    let issue = |key: String, message: String| ConfigIssue { key, message };
    if pools.is_empty() {
        return Ok(());
    }
    if providers.dir.is_none() {
        return Err(issue(
            "providers.dir".into(),
            "required with [pools]: the directory holding each pool's provider plugin (NAME.wasm and NAME.toml)".into(),
        ));
    }
    let Some(join) = join else {
        return Err(issue(
            "join".into(),
            "required with [pools]: new pool nodes join through it; set ca_dir, url and coordinator".into(),
        ));
    };
    if !(join.url.starts_with("https://") || join.url.starts_with("http://")) {
        return Err(issue(
            "join.url".into(),
            format!("{:?} is not an http(s) URL; write the API address new nodes reach, e.g. \"https://coord-01:7441\"", join.url),
        ));
    }
    if join
        .coordinator
        .rsplit_once(':')
        .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
    {
        return Err(issue(
            "join.coordinator".into(),
            format!(
                "{:?} is not host:port; write the QUIC address agents dial, e.g. \"coord-01:7440\"",
                join.coordinator
            ),
        ));
    }
    if join.cert_days == 0 || join.cert_days > 825 {
        return Err(issue(
            "join.cert_days".into(),
            "must be between 1 and 825".into(),
        ));
    }
    for (name, p) in pools {
        let key = |k: &str| format!("pools.{name}.{k}");
        corral_proto::names::validate_name(name).map_err(|e| {
            issue(
                format!("pools.{name}"),
                format!("{e} (a pool's name starts its nodes' names: {name}-1, {name}-2 ...)"),
            )
        })?;
        if name.len() > 40 {
            return Err(issue(
                format!("pools.{name}"),
                "at most 40 characters, so that its nodes' names fit".into(),
            ));
        }
        corral_proto::names::validate_name(&p.provider).map_err(|e| {
            issue(
                key("provider"),
                format!("{e}; name a provider plugin, e.g. \"hetzner\""),
            )
        })?;
        if p.max == 0 || p.min > p.max {
            return Err(issue(
                key("max"),
                format!(
                    "min ({}) must not exceed max ({}), and max must be at least 1",
                    p.min, p.max
                ),
            ));
        }
        if p.max > 10_000 {
            return Err(issue(key("max"), "at most 10000".into()));
        }
        if p.max_in_flight == 0 {
            return Err(issue(key("max_in_flight"), "must be at least 1".into()));
        }
        if p.max_failures == 0 {
            return Err(issue(key("max_failures"), "must be at least 1".into()));
        }
        for (k, d) in [
            ("replace_after", p.replace_after),
            ("join_timeout", p.join_timeout),
            ("list_interval", p.list_interval),
        ] {
            if d < Duration::from_secs(1) {
                return Err(issue(key(k), "must be at least 1s".into()));
            }
        }
        if p.join_timeout > super::join::MAX_TTL {
            return Err(issue(
                key("join_timeout"),
                "at most 7d: a new node's join token expires with it, and join tokens live a week at most".into(),
            ));
        }
        if !p.user_data.contains("{join_token}") {
            return Err(issue(
                key("user_data"),
                "must contain {join_token}: a new node joins with it (`corral join --url {join_url} --token {join_token} ...`)".into(),
            ));
        }
        let mut rest = p.user_data.as_str();
        while let Some(start) = rest.find('{') {
            let after = &rest[start + 1..];
            let Some(end) = after.find('}') else { break };
            let word = &after[..end];
            let plain =
                !word.is_empty() && word.chars().all(|c| c.is_ascii_lowercase() || c == '_');
            if plain && !USER_DATA_KEYS.contains(&word) {
                return Err(issue(
                    key("user_data"),
                    format!(
                        "{{{word}}} is not a placeholder; use {}",
                        USER_DATA_KEYS
                            .iter()
                            .map(|k| format!("{{{k}}}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
            rest = &after[end + 1..];
        }
        if let Some(f) = &p.secret_file {
            if let Err(e) = std::fs::metadata(f) {
                return Err(issue(
                    key("secret_file"),
                    format!(
                        "{}: {e}; write the provider's API token there (mode 0600)",
                        f.display()
                    ),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(toml_text: &str) -> PoolSection {
        toml::from_str(toml_text).unwrap()
    }

    const OK: &str = "provider = \"command\"\nmin = 1\nmax = 3\nuser_data = \"join {join_token} at {join_url}\"\n";

    fn join() -> JoinSection {
        JoinSection {
            ca_dir: "/ca".into(),
            url: "https://c:7441".into(),
            coordinator: "c:7440".into(),
            cert_days: 90,
        }
    }

    fn providers() -> ProvidersSection {
        ProvidersSection {
            dir: Some("/p".into()),
            cache_dir: None,
        }
    }

    fn check(text: &str) -> Result<(), ConfigIssue> {
        validate(
            &[("gpu".to_string(), pool(text))].into(),
            &providers(),
            Some(&join()),
        )
    }

    #[test]
    fn a_pool_gets_its_defaults_and_a_flat_template() {
        let p = pool(&format!("{OK}[template]\nserver_type = \"cx22\"\ncount = 2\nssh_keys = [\"a\", \"b\"]\nlabels.team = \"ml\"\n"));
        assert_eq!(p.replace_after, Duration::from_secs(300));
        assert_eq!(p.max_failures, 5);
        assert_eq!(p.api_calls_per_hour, 3600);
        let flat = p.flat_template();
        assert_eq!(flat["server_type"], "cx22");
        assert_eq!(flat["count"], "2");
        assert_eq!(flat["ssh_keys"], r#"["a","b"]"#);
        assert_eq!(flat["labels.team"], "ml");
        check(OK).unwrap();
    }

    #[test]
    fn bad_pool_values_are_named_with_their_key() {
        for (text, key, words) in [
            ("provider = \"command\"\nmin = 4\nmax = 3\nuser_data = \"{join_token}\"", "pools.gpu.max", "must not exceed"),
            ("provider = \"command\"\nmax = 3\nuser_data = \"no token\"", "pools.gpu.user_data", "{join_token}"),
            ("provider = \"command\"\nmax = 3\nuser_data = \"{join_token} {nodename}\"", "pools.gpu.user_data", "{nodename} is not a placeholder"),
            ("provider = \"com mand\"\nmax = 3\nuser_data = \"{join_token}\"", "pools.gpu.provider", "provider plugin"),
            ("provider = \"command\"\nmax = 3\nuser_data = \"{join_token}\"\nmax_failures = 0", "pools.gpu.max_failures", "at least 1"),
            ("provider = \"command\"\nmax = 3\nuser_data = \"{join_token}\"\nsecret_file = \"/nonexistent/token\"", "pools.gpu.secret_file", "/nonexistent/token"),
        ] {
            let err = check(text).unwrap_err();
            assert_eq!(err.key, key, "{text}: {}", err.message);
            assert!(err.message.contains(words), "{text}: {}", err.message);
        }
    }

    #[test]
    fn pools_need_a_provider_directory_and_a_join_section() {
        let pools = [("gpu".to_string(), pool(OK))].into();
        let err = validate(&pools, &ProvidersSection::default(), Some(&join())).unwrap_err();
        assert_eq!(err.key, "providers.dir");
        let err = validate(&pools, &providers(), None).unwrap_err();
        assert_eq!(err.key, "join");
        let mut j = join();
        j.coordinator = "c".into();
        assert_eq!(
            validate(&pools, &providers(), Some(&j)).unwrap_err().key,
            "join.coordinator"
        );
        let err = validate(
            &[("bad name".to_string(), pool(OK))].into(),
            &providers(),
            Some(&join()),
        )
        .unwrap_err();
        assert_eq!(err.key, "pools.bad name");
    }
}
