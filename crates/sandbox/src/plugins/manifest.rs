//! A plugin's manifest: `NAME.toml` beside `NAME.wasm`, written by the plugin's author and
//! read by the operator, who grants through it what the plugin may reach.
//!
//! ```toml
//! [plugin]
//! name = "slurm"                 # must equal the file name and info().name
//! kind = "scheduler"             # or "provider" (wit/provider.wit); default scheduler
//! [grants]
//! programs = ["sbatch", "squeue"] # bare names (looked up on the agent's PATH at load) or absolute paths
//! hosts = ["head-01:8265"]        # host:port pairs for http ([v6::addr]:port for IPv6)
//! env = ["SLURM_CONF"]            # agent environment variables its programs see
//! [config]                        # string values, read by the plugin with config.get
//! partition = "gpu"
//! [limits]                        # all optional; defaults below
//! memory_mb = 64                  # linear memory of one call's instance
//! call_timeout = "30s"            # one export call, host calls included
//! program_timeout = "20s"         # one program run (also capped by what is left of the call)
//! output_max_bytes = 4194304      # per stream of a program run; an HTTP response body
//! concurrent_calls = 4            # calls of this plugin running at once; more wait
//! ```
//!
//! Invariants:
//! - Unknown keys are errors, and every error names the file and the dotted key (the
//!   same reporting as the agent's config, [`corral_base::config::parse_toml`]).
//! - A parsed [`Manifest`] holds only valid values: grants are parsed (`host:port`
//!   checked), limits are within their bounds.
//! - Programs are resolved once, at load ([`resolve_programs`]): a call names a granted
//!   program by its bare name or the absolute path it resolved to, and runs exactly
//!   that file. A granted program that is not found does not stop the plugin from
//!   loading (a Slurm site without `sacct` still wants `sbatch`); it is reported as a
//!   warning naming the file and key, and calls to it are `denied` with that reason.
//! - Host grants are matched after the request's URL is parsed
//!   ([`HostGrant::matches`]): the host as the URL parser understood it (IP literals
//!   normalised, names lower-cased) and the port, explicit or the scheme's default.
//! - Load warnings are everything that lets a plugin load but not as its manifest
//!   reads: a granted program not found ([`resolve_programs`]), a granted host name that
//!   does not resolve ([`unresolved_hosts`]), a `[limits]` key left to its default
//!   ([`defaulted_limits`]). Each names the file and key.
//!   `corral plugin check` prints them all (`--strict` fails on any); an agent logs the
//!   first two at `warn` and the defaulted limits at `debug`, since leaving a limit at
//!   its default is a choice, not a fault.
//!
//! Trade-off: a host name is resolved once at load, with the system resolver, to warn
//! early; requests resolve it again each time (a name that resolves later still works,
//! and one that stops resolving fails that request). On an agent without working DNS
//! that lookup can delay the plugin's load by the resolver's timeout; IP literals are
//! never looked up.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use corral_base::config::parse_toml;
use corral_base::config::ConfigIssue;

/// A manifest that cannot be used: the file, the dotted key and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: key `{key}`: {message}", file.display())]
pub struct ManifestError {
    pub file: PathBuf,
    pub key: String,
    pub message: String,
}

/// `[limits]`, with the defaults documented in the module doc.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub memory_mb: u64,
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub program_timeout: Duration,
    pub output_max_bytes: u64,
    pub concurrent_calls: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_mb: 64,
            call_timeout: Duration::from_secs(30),
            program_timeout: Duration::from_secs(20),
            output_max_bytes: 4 * 1024 * 1024,
            concurrent_calls: 4,
        }
    }
}

impl Limits {
    /// Bytes of linear memory one call may use.
    pub fn memory_bytes(&self) -> usize {
        usize::try_from(self.memory_mb.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX)
    }

    /// Bytes kept of a program's stdout (and of its stderr), or of a response body.
    pub fn output_max(&self) -> usize {
        usize::try_from(self.output_max_bytes).unwrap_or(usize::MAX)
    }

    fn validate(&self) -> Result<(), ConfigIssue> {
        let fmt = |d: Duration| humantime::format_duration(d).to_string();
        if !(1..=4096).contains(&self.memory_mb) {
            return Err(ConfigIssue::new(
                "limits.memory_mb",
                format!("{} is out of range; use 1 to 4096 (MiB)", self.memory_mb),
            ));
        }
        let timeouts = Duration::from_millis(10)..=Duration::from_secs(3600);
        if !timeouts.contains(&self.call_timeout) {
            return Err(ConfigIssue::new(
                "limits.call_timeout",
                format!("{} is out of range; use 10ms to 1h", fmt(self.call_timeout)),
            ));
        }
        if !timeouts.contains(&self.program_timeout) {
            return Err(ConfigIssue::new(
                "limits.program_timeout",
                format!(
                    "{} is out of range; use 10ms to 1h",
                    fmt(self.program_timeout)
                ),
            ));
        }
        if self.program_timeout > self.call_timeout {
            return Err(ConfigIssue::new(
                "limits.program_timeout",
                format!(
                    "{} is longer than limits.call_timeout ({}); a program cannot outlive the call that runs it",
                    fmt(self.program_timeout),
                    fmt(self.call_timeout)
                ),
            ));
        }
        if !(1..=256 * 1024 * 1024).contains(&self.output_max_bytes) {
            return Err(ConfigIssue::new(
                "limits.output_max_bytes",
                format!(
                    "{} is out of range; use 1 to 268435456",
                    self.output_max_bytes
                ),
            ));
        }
        if !(1..=256).contains(&self.concurrent_calls) {
            return Err(ConfigIssue::new(
                "limits.concurrent_calls",
                format!("{} is out of range; use 1 to 256", self.concurrent_calls),
            ));
        }
        Ok(())
    }
}

/// `[limits]` as written: `None` for a key left to its default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct LimitsSection {
    memory_mb: Option<u64>,
    #[serde(with = "humantime_serde")]
    call_timeout: Option<Duration>,
    #[serde(with = "humantime_serde")]
    program_timeout: Option<Duration>,
    output_max_bytes: Option<u64>,
    concurrent_calls: Option<u32>,
}

impl LimitsSection {
    /// The limits, defaults filled in, and the keys that were left to their defaults
    /// (in the order of the module doc's table).
    fn resolve(self) -> (Limits, Vec<&'static str>) {
        let d = Limits::default();
        let mut defaulted = Vec::new();
        let mut take = |key: &'static str, set: bool| {
            if !set {
                defaulted.push(key);
            }
        };
        take("memory_mb", self.memory_mb.is_some());
        take("call_timeout", self.call_timeout.is_some());
        take("program_timeout", self.program_timeout.is_some());
        take("output_max_bytes", self.output_max_bytes.is_some());
        take("concurrent_calls", self.concurrent_calls.is_some());
        let limits = Limits {
            memory_mb: self.memory_mb.unwrap_or(d.memory_mb),
            call_timeout: self.call_timeout.unwrap_or(d.call_timeout),
            program_timeout: self.program_timeout.unwrap_or(d.program_timeout),
            output_max_bytes: self.output_max_bytes.unwrap_or(d.output_max_bytes),
            concurrent_calls: self.concurrent_calls.unwrap_or(d.concurrent_calls),
        };
        (limits, defaulted)
    }
}

impl Limits {
    /// The default of `key` (a `[limits]` key), as a manifest would write it.
    pub fn default_text(key: &str) -> Option<String> {
        let d = Limits::default();
        let fmt = |t: Duration| format!("{:?}", humantime::format_duration(t).to_string());
        Some(match key {
            "memory_mb" => d.memory_mb.to_string(),
            "call_timeout" => fmt(d.call_timeout),
            "program_timeout" => fmt(d.program_timeout),
            "output_max_bytes" => d.output_max_bytes.to_string(),
            "concurrent_calls" => d.concurrent_calls.to_string(),
            _ => return None,
        })
    }
}

/// One `host:port` a plugin may reach over HTTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostGrant {
    host: GrantHost,
    port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum GrantHost {
    Ip(IpAddr),
    /// Lower case, without a trailing dot.
    Name(String),
}

impl fmt::Display for HostGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            GrantHost::Ip(IpAddr::V6(a)) => write!(f, "[{a}]:{}", self.port),
            GrantHost::Ip(a) => write!(f, "{a}:{}", self.port),
            GrantHost::Name(n) => write!(f, "{n}:{}", self.port),
        }
    }
}

impl HostGrant {
    /// Parses `host:port`, `1.2.3.4:port` or `[v6::addr]:port`.
    pub fn parse(s: &str) -> Result<HostGrant, String> {
        let how =
            "write it as host:port, e.g. \"head-01:8265\", \"10.0.0.5:443\" or \"[fd00::1]:80\"";
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (addr, port) = rest
                .split_once("]:")
                .ok_or_else(|| format!("{s:?} is not a host:port pair; {how}"))?;
            let ip: std::net::Ipv6Addr = addr
                .parse()
                .map_err(|_| format!("{addr:?} is not an IPv6 address; {how}"))?;
            (GrantHost::Ip(IpAddr::V6(ip)), port)
        } else {
            let (host, port) = s
                .rsplit_once(':')
                .ok_or_else(|| format!("{s:?} has no port; {how}"))?;
            if host.contains(':') {
                return Err(format!("{s:?}: an IPv6 address goes in brackets; {how}"));
            }
            let host = match host.parse::<IpAddr>() {
                Ok(ip) => GrantHost::Ip(ip),
                Err(_) => {
                    let name = host.trim_end_matches('.').to_ascii_lowercase();
                    let valid = !name.is_empty()
                        && name.split('.').all(|label| {
                            !label.is_empty()
                                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                        });
                    if !valid {
                        return Err(format!("{host:?} is not a host name or IP address; {how}"));
                    }
                    GrantHost::Name(name)
                }
            };
            (host, port)
        };
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{port:?} is not a port (1 to 65535); {how}"))?;
        Ok(HostGrant { host, port })
    }

    /// Whether a parsed URL's host and port (explicit, or the scheme's default) are this
    /// grant's.
    pub fn matches(&self, url: &reqwest::Url) -> bool {
        let Some(port) = url.port_or_known_default() else {
            return false;
        };
        if port != self.port {
            return false;
        }
        // `host_str` is the parsed host: IPv4 normalised ("0x7f.1" is "127.0.0.1"), IPv6
        // in brackets, names lower-cased (and IDNA-encoded).
        let Some(host) = url.host_str() else {
            return false;
        };
        let ip = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .parse::<IpAddr>();
        match (ip, &self.host) {
            (Ok(a), GrantHost::Ip(g)) => a == *g,
            (Err(_), GrantHost::Name(g)) => host.trim_end_matches('.').eq_ignore_ascii_case(g),
            _ => false,
        }
    }
}

/// A parsed, validated manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The file it was read from.
    pub file: PathBuf,
    pub name: String,
    pub kind: PluginKind,
    /// `grants.programs` as written.
    pub programs: Vec<String>,
    pub hosts: Vec<HostGrant>,
    /// `grants.env`: names of the agent's environment variables passed to the plugin's
    /// programs (which otherwise start from a clean environment).
    pub env: Vec<String>,
    pub config: BTreeMap<String, String>,
    pub limits: Limits,
    /// The `[limits]` keys the manifest leaves to their defaults.
    pub defaulted_limits: Vec<&'static str>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestFile {
    plugin: PluginSection,
    #[serde(default)]
    grants: GrantsSection,
    #[serde(default)]
    config: BTreeMap<String, String>,
    #[serde(default)]
    limits: LimitsSection,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PluginSection {
    name: String,
    #[serde(default)]
    kind: PluginKind,
}

/// `plugin.kind`: which world the component implements, and so who loads it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginKind {
    /// `corral:scheduler` (the default): agents load it through `[plugins] enable`.
    #[default]
    Scheduler,
    /// `corral:provider`: the coordinator loads it for a pool (`[pools.NAME] provider`).
    Provider,
}

impl PluginKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PluginKind::Scheduler => "scheduler",
            PluginKind::Provider => "provider",
        }
    }
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct GrantsSection {
    programs: Vec<String>,
    hosts: Vec<String>,
    env: Vec<String>,
}

/// Variables the host sets for every program from the user it runs as; a plugin can
/// neither be granted nor set them.
pub const IDENTITY_ENV: [&str; 4] = ["HOME", "USER", "LOGNAME", "SHELL"];

/// Whether `name` can be a local user name (what `useradd` accepts, loosely).
pub fn valid_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '$'))
}

/// Whether `name` is a plugin name: letters, digits, '-' and '_' (as `plugins.enable`).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl Manifest {
    /// Reads and validates the manifest at `file`.
    pub fn load(file: &Path) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(file).map_err(|e| ManifestError {
            file: file.to_path_buf(),
            key: "(file)".into(),
            message: format!(
                "cannot read the plugin manifest: {e}; every NAME.wasm needs its NAME.toml beside it"
            ),
        })?;
        Manifest::parse(&text, file)
    }

    /// Parses and validates manifest `text`; `file` is where it came from, for messages.
    pub fn parse(text: &str, file: &Path) -> Result<Manifest, ManifestError> {
        let err = |issue: ConfigIssue| ManifestError {
            file: file.to_path_buf(),
            key: issue.key,
            message: issue.message,
        };
        let raw: ManifestFile = parse_toml(text).map_err(err)?;
        if !valid_name(&raw.plugin.name) {
            return Err(err(ConfigIssue::new(
                "plugin.name",
                format!(
                    "{:?} is not a plugin name; use letters, digits, '-' and '_' (the file name without .toml)",
                    raw.plugin.name
                ),
            )));
        }
        for (i, p) in raw.grants.programs.iter().enumerate() {
            if p.is_empty() || (p.contains('/') && !p.starts_with('/')) {
                return Err(err(ConfigIssue::new(
                    format!("grants.programs[{i}]"),
                    format!("{p:?} must be a bare program name (looked up on the agent's PATH) or an absolute path"),
                )));
            }
        }
        for (i, name) in raw.grants.env.iter().enumerate() {
            let plain = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if !plain {
                return Err(err(ConfigIssue::new(
                    format!("grants.env[{i}]"),
                    format!(
                        "{name:?} is not an environment variable name (letters, digits and '_')"
                    ),
                )));
            }
            if name.starts_with("LD_") || IDENTITY_ENV.contains(&name.as_str()) {
                return Err(err(ConfigIssue::new(
                    format!("grants.env[{i}]"),
                    format!("{name} cannot be granted: the host sets it (identity variables) or refuses it (loader variables)"),
                )));
            }
        }
        let hosts = raw
            .grants
            .hosts
            .iter()
            .enumerate()
            .map(|(i, h)| {
                HostGrant::parse(h)
                    .map_err(|m| err(ConfigIssue::new(format!("grants.hosts[{i}]"), m)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (limits, defaulted_limits) = raw.limits.resolve();
        limits.validate().map_err(err)?;
        Ok(Manifest {
            file: file.to_path_buf(),
            name: raw.plugin.name,
            kind: raw.plugin.kind,
            programs: raw.grants.programs,
            hosts,
            env: raw.grants.env,
            config: raw.config,
            limits,
            defaulted_limits,
        })
    }

    /// An error about this manifest's `key`.
    pub fn error(&self, key: impl Into<String>, message: impl Into<String>) -> ManifestError {
        ManifestError {
            file: self.file.clone(),
            key: key.into(),
            message: message.into(),
        }
    }
}

/// The granted programs after resolution at load.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvedPrograms {
    /// Granted name (as written) and the absolute path it resolved to.
    pub found: Vec<(String, PathBuf)>,
    /// Granted programs that were not found, each with the warning naming file and key.
    pub missing: Vec<(String, ManifestError)>,
}

impl ResolvedPrograms {
    /// The path a call's `program` (a granted name or its resolved path) runs, or why
    /// not: the reason a missing program was not found, or `None` when never granted.
    pub fn lookup(&self, program: &str) -> Result<&Path, Option<&ManifestError>> {
        if let Some((_, path)) = self
            .found
            .iter()
            .find(|(name, path)| name == program || path.as_os_str() == program)
        {
            return Ok(path);
        }
        Err(self
            .missing
            .iter()
            .find(|(name, _)| name == program)
            .map(|(_, e)| e))
    }
}

/// Warnings for the granted host names that do not resolve on this machine now (IP
/// literals are not looked up), each naming the file and key.
pub fn unresolved_hosts(manifest: &Manifest) -> Vec<ManifestError> {
    use std::net::ToSocketAddrs;
    let mut out = Vec::new();
    for (i, h) in manifest.hosts.iter().enumerate() {
        let GrantHost::Name(name) = &h.host else {
            continue;
        };
        let why = match (name.as_str(), h.port)
            .to_socket_addrs()
            .map(Iterator::count)
        {
            Ok(n) if n > 0 => continue,
            Ok(_) => "it resolves to no address".to_string(),
            Err(e) => e.to_string(),
        };
        out.push(manifest.error(
            format!("grants.hosts[{i}]"),
            format!("{h} does not resolve on this machine ({why}); requests to it fail until it does (check the name and this machine's DNS, or grant the IP address)"),
        ));
    }
    out
}

/// Warnings for the `[limits]` keys the manifest leaves to their defaults, each naming
/// the file, the key and the default.
pub fn defaulted_limits(manifest: &Manifest) -> Vec<ManifestError> {
    manifest
        .defaulted_limits
        .iter()
        .map(|key| {
            manifest.error(
                format!("limits.{key}"),
                format!(
                    "not set, so the default {} applies; write it to say what this plugin needs",
                    Limits::default_text(key).unwrap_or_default()
                ),
            )
        })
        .collect()
}

fn is_executable_file(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Resolves `manifest`'s programs: bare names on `path_var` (the agent's `PATH`),
/// absolute paths as they are (they must be executable files).
pub fn resolve_programs(
    manifest: &Manifest,
    path_var: Option<&std::ffi::OsStr>,
) -> ResolvedPrograms {
    let mut out = ResolvedPrograms::default();
    for (i, program) in manifest.programs.iter().enumerate() {
        let key = format!("grants.programs[{i}]");
        if program.starts_with('/') {
            let p = PathBuf::from(program);
            if is_executable_file(&p) {
                out.found.push((program.clone(), p));
            } else {
                out.missing.push((
                    program.clone(),
                    manifest.error(
                        key,
                        format!("{program} is not an executable file; calls to it are denied"),
                    ),
                ));
            }
            continue;
        }
        let found = path_var
            .map(std::env::split_paths)
            .into_iter()
            .flatten()
            .filter(|dir| dir.is_absolute())
            .map(|dir| dir.join(program))
            .find(|p| is_executable_file(p));
        match found {
            Some(p) => out.found.push((program.clone(), p)),
            None => out.missing.push((
                program.clone(),
                manifest.error(
                    key,
                    format!(
                        "{program} was not found on the agent's PATH ({}) at load; calls to it are denied (install it, or grant its absolute path)",
                        path_var.map(|p| p.to_string_lossy().into_owned()).unwrap_or_default()
                    ),
                ),
            )),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(text, Path::new("plugins/slurm.toml"))
    }

    #[test]
    fn a_full_manifest_parses_with_its_grants_config_and_limits() {
        let m = parse(
            r#"
[plugin]
name = "slurm"
[grants]
programs = ["sbatch", "/usr/bin/squeue"]
hosts = ["Head-01.example:8265", "10.0.0.5:443", "[fd00::1]:80"]
[config]
partition = "gpu"
[limits]
memory_mb = 128
call_timeout = "45s"
program_timeout = "10s"
output_max_bytes = 1024
concurrent_calls = 2
"#,
        )
        .unwrap();
        assert_eq!(m.name, "slurm");
        assert_eq!(m.programs, ["sbatch", "/usr/bin/squeue"]);
        let hosts: Vec<String> = m.hosts.iter().map(ToString::to_string).collect();
        assert_eq!(
            hosts,
            ["head-01.example:8265", "10.0.0.5:443", "[fd00::1]:80"]
        );
        assert_eq!(m.config.get("partition").map(String::as_str), Some("gpu"));
        assert_eq!(
            m.limits,
            Limits {
                memory_mb: 128,
                call_timeout: Duration::from_secs(45),
                program_timeout: Duration::from_secs(10),
                output_max_bytes: 1024,
                concurrent_calls: 2,
            }
        );
    }

    #[test]
    fn only_the_plugin_name_is_required_and_limits_default() {
        let m = parse("[plugin]\nname = \"ray-jobs\"\n").unwrap();
        assert!(m.programs.is_empty() && m.hosts.is_empty() && m.config.is_empty());
        assert_eq!(m.limits, Limits::default());
        assert_eq!(
            m.defaulted_limits,
            [
                "memory_mb",
                "call_timeout",
                "program_timeout",
                "output_max_bytes",
                "concurrent_calls"
            ]
        );
    }

    #[test]
    fn each_limit_left_to_its_default_is_a_warning_naming_key_and_default() {
        let m = parse(
            "[plugin]\nname = \"s\"\n[limits]\nmemory_mb = 32\ncall_timeout = \"10s\"\nprogram_timeout = \"5s\"\noutput_max_bytes = 1024\n",
        )
        .unwrap();
        let w = defaulted_limits(&m);
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].key, "limits.concurrent_calls");
        assert!(w[0].message.contains("the default 4 applies"), "{}", w[0]);
        let all = parse("[plugin]\nname = \"s\"\n").unwrap();
        let text: Vec<String> = defaulted_limits(&all)
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert!(
            text[1].contains("`limits.call_timeout`: not set, so the default \"30s\""),
            "{text:?}"
        );
    }

    #[test]
    fn host_names_that_do_not_resolve_are_warnings_and_ip_literals_are_not_looked_up() {
        // `.invalid` never resolves (RFC 6761); IP literals are taken as they are.
        let m = parse(
            "[plugin]\nname = \"s\"\n[grants]\nhosts = [\"127.0.0.1:8265\", \"[::1]:80\", \"no-such-head.invalid:8265\"]\n",
        )
        .unwrap();
        let w = unresolved_hosts(&m);
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].key, "grants.hosts[2]");
        assert!(
            w[0].message
                .starts_with("no-such-head.invalid:8265 does not resolve on this machine"),
            "{}",
            w[0]
        );
    }

    /// Found by the `manifest` fuzz target (fuzz/regressions/manifest/empty-key): a
    /// dotted key whose first part is the empty key `''` made an error whose key was
    /// empty (`key ``: unknown field ``...`), naming nothing to fix.
    #[test]
    fn an_unknown_empty_or_dotted_key_is_named_quoted() {
        let input = include_bytes!("../../../../fuzz/regressions/manifest/empty-key");
        let e = parse(std::str::from_utf8(input).unwrap()).unwrap_err();
        assert_eq!(e.key, "\"\"", "{e}");
        assert!(e.message.contains("unknown field"), "{e}");
        let e = parse("[plugin]\nname = \"s\"\n[grants]\n\"a.b\" = 1\n").unwrap_err();
        assert_eq!(e.key, "grants.\"a.b\"", "{e}");
    }

    #[test]
    fn errors_name_the_file_and_the_dotted_key() {
        let cases = [
            (
                "[plugin]\nname = \"s\"\n[grants]\nprogram = [\"x\"]\n",
                "grants.program",
                "unknown field `program`, expected one of `programs`, `hosts`, `env`",
            ),
            (
                "[plugin]\nname = \"s\"\n[limits]\nmemory_mb = 0\n",
                "limits.memory_mb",
                "out of range",
            ),
            (
                "[plugin]\nname = \"s\"\n[limits]\ncall_timeout = \"soon\"\n",
                "limits.call_timeout",
                "soon",
            ),
            (
                "[plugin]\nname = \"s\"\n[limits]\nprogram_timeout = \"1m\"\n",
                "limits.program_timeout",
                "longer than limits.call_timeout",
            ),
            (
                "[plugin]\nname = \"s\"\n[grants]\nprograms = [\"bin/sbatch\"]\n",
                "grants.programs[0]",
                "absolute path",
            ),
            (
                "[plugin]\nname = \"s\"\n[grants]\nhosts = [\"a:1\", \"head\"]\n",
                "grants.hosts[1]",
                "has no port",
            ),
            (
                "[plugin]\nname = \"s\"\n[config]\nn = 3\n",
                "config.n",
                "invalid type",
            ),
            (
                "[plugin]\nname = \"a b\"\n",
                "plugin.name",
                "not a plugin name",
            ),
            (
                "[grants]\nprograms = []\n",
                "(top level)",
                "missing field `plugin`",
            ),
        ];
        for (text, key, message) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e.file, Path::new("plugins/slurm.toml"));
            assert_eq!(e.key, key, "{text}: {e}");
            assert!(e.message.contains(message), "{text}: {e}");
            assert!(
                e.to_string().starts_with("plugins/slurm.toml: key `"),
                "{e}"
            );
        }
    }

    #[test]
    fn host_grants_parse_names_ips_and_bracketed_ipv6_and_refuse_the_rest() {
        assert_eq!(
            HostGrant::parse("LocalHost.:80").unwrap().to_string(),
            "localhost:80"
        );
        assert_eq!(
            HostGrant::parse("127.0.0.1:8265").unwrap().to_string(),
            "127.0.0.1:8265"
        );
        assert_eq!(
            HostGrant::parse("[::1]:443").unwrap().to_string(),
            "[::1]:443"
        );
        for bad in [
            "head",
            "head:",
            "head:0",
            "head:70000",
            "::1:80",
            "[::1]80",
            "a b:80",
            "user@head:80",
            ":80",
        ] {
            assert!(HostGrant::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn a_url_matches_a_grant_by_parsed_host_and_effective_port() {
        let m = |grant: &str, url: &str| {
            HostGrant::parse(grant)
                .unwrap()
                .matches(&reqwest::Url::parse(url).unwrap())
        };
        assert!(m("127.0.0.1:8265", "http://127.0.0.1:8265/api/jobs/"));
        assert!(m("head-01:80", "http://HEAD-01/x"));
        assert!(m("head-01:443", "https://head-01./x"));
        assert!(m("[::1]:80", "http://[0:0:0:0:0:0:0:1]/"));
        // The URL parser's reading of the host counts, not the text.
        assert!(m("127.0.0.1:80", "http://0x7f.0.0.1/"));
        assert!(!m("127.0.0.1:8265", "http://127.0.0.1:8266/"));
        assert!(!m("127.0.0.1:80", "https://127.0.0.1/"));
        assert!(!m("head-01:80", "http://head-01.evil.example/"));
        assert!(!m("head-01:80", "http://evil.example/?head-01:80"));
        // Userinfo does not change the host: the request goes to evil.example.
        assert!(!m("head-01:80", "http://head-01:80@evil.example/"));
        assert!(!m("127.0.0.1:80", "http://localhost/"));
    }

    #[test]
    fn programs_resolve_on_path_or_as_absolute_paths_and_missing_ones_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        corral_base::testing::write_script(&dir.path().join("sbatch"), "exit 0");
        std::fs::write(dir.path().join("not-exec"), "x").unwrap();
        let text = format!(
            "[plugin]\nname = \"s\"\n[grants]\nprograms = [\"sbatch\", \"sacct\", \"{0}/not-exec\", \"/bin/sh\"]\n",
            dir.path().display()
        );
        let m = parse(&text).unwrap();
        let path = std::env::join_paths(["relative/dir".into(), dir.path().to_path_buf()]).unwrap();
        let r = resolve_programs(&m, Some(&path));
        assert_eq!(
            r.found,
            [
                ("sbatch".to_string(), dir.path().join("sbatch")),
                ("/bin/sh".to_string(), PathBuf::from("/bin/sh"))
            ]
        );
        let missing: Vec<&str> = r.missing.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(missing.len(), 2);
        assert_eq!(missing[0], "sacct");
        assert_eq!(r.missing[0].1.key, "grants.programs[1]");
        assert!(r.missing[0]
            .1
            .message
            .contains("not found on the agent's PATH"));
        assert_eq!(r.missing[1].1.key, "grants.programs[2]");
        // Calls name a program by its granted name or the path it resolved to.
        assert_eq!(r.lookup("sbatch").unwrap(), dir.path().join("sbatch"));
        assert_eq!(
            r.lookup(&dir.path().join("sbatch").to_string_lossy())
                .unwrap(),
            dir.path().join("sbatch")
        );
        assert_eq!(
            r.lookup("sacct").unwrap_err().unwrap().key,
            "grants.programs[1]"
        );
        assert_eq!(r.lookup("rm").unwrap_err(), None);
    }
}
