//! What a plugin can reach: the host side of the WIT imports `process`, `http`, `log`,
//! `config` and `clock`, each bounded by the plugin's manifest.
//!
//! Invariants:
//! - Every refusal or failure is a WIT `error` value (`denied`, `invalid`, `backend`,
//!   `timeout`), never a trap: a plugin can always tell the caller what went wrong.
//! - `process.run` runs only a program resolved at load ([`ResolvedPrograms`]), by argv
//!   through [`crate::exec`] (never a shell), with its timeout capped by
//!   `limits.program_timeout` and by what is left of the call, and each output stream
//!   capped by `limits.output_max_bytes`. Environment names starting with `LD_` are
//!   refused: through the loader they would let a plugin run code no one granted.
//! - Programs run as the call's [`RunAs`] user (chosen by the host from the call, see
//!   [`crate::identity`]), from a clean environment: the agent's `PATH`, `LANG`,
//!   `LC_ALL` and `TZ`, the variables the manifest grants (`grants.env`), the plugin's
//!   own variables, and last `HOME`/`USER`/`LOGNAME`/`SHELL` of that user, which the
//!   plugin cannot set. A program without a directory starts in that user's home (or
//!   `/`), never in the agent's working directory.
//! - `http.send` checks the URL's scheme, user info and `host:port` against the grants
//!   *after* parsing it, and again at every redirect (a redirect elsewhere is returned
//!   to the plugin, not followed). It never goes through a proxy: a grant names the host
//!   the connection goes to. The body is capped by `limits.output_max_bytes` (a larger
//!   one is a `backend` error, never silently cut). Requests are driven on the agent's
//!   tokio runtime from the call's blocking thread.
//! - `log.write` goes through `tracing` with a `plugin` field, at most 8 KiB a message;
//!   a secret handed to the call (a provider pool's API token) is replaced by `[secret]`
//!   in it.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::bindings::corral::scheduler::{clock, config, http, log, process, types};
use super::engine::Limiter;
use super::manifest::{HostGrant, Manifest, ResolvedPrograms, IDENTITY_ENV};
use crate::exec;
use crate::identity::User;

type WitError = types::Error;

/// What one plugin was granted, shared by all its calls.
pub struct Granted {
    pub name: String,
    pub manifest: Manifest,
    pub programs: ResolvedPrograms,
    /// Present when hosts are granted.
    pub http: Option<reqwest::Client>,
    /// What every program of this plugin starts from: the agent's `PATH`, locale and
    /// time zone, and the variables the manifest grants, as they were at load.
    pub base_env: Vec<(String, String)>,
}

/// The environment a plugin's programs start from (see the module doc), taken from
/// `agent_env` (the agent's own environment). The granted programs themselves were
/// resolved at load; `PATH` is for what they run in turn (a scheduler's wrapper
/// scripts).
pub fn base_env(
    manifest: &Manifest,
    agent_env: impl Fn(&str) -> Option<String>,
) -> Vec<(String, String)> {
    let mut env = Vec::new();
    let path = agent_env("PATH")
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    env.push(("PATH".to_string(), path));
    for name in ["LANG", "LC_ALL", "TZ"]
        .into_iter()
        .chain(manifest.env.iter().map(String::as_str))
    {
        if let Some(v) = agent_env(name) {
            env.push((name.to_string(), v));
        }
    }
    env
}

/// Whom one call's programs run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    /// The user; `None`: the agent itself, unchanged (load-time `info`, benchmarks).
    pub user: Option<User>,
    /// Whether the child must drop to `user` (false when that is the agent's uid).
    pub switch: bool,
}

impl RunAs {
    /// The agent's own identity.
    pub fn agent() -> RunAs {
        RunAs {
            user: None,
            switch: false,
        }
    }

    /// `user`, switched to when it is not `agent_uid`.
    pub fn user(user: User, agent_uid: u32) -> RunAs {
        let switch = user.uid != agent_uid;
        RunAs {
            user: Some(user),
            switch,
        }
    }
}

/// The data of one call's store.
pub struct CallState {
    pub granted: Arc<Granted>,
    /// When the call's time is up; host calls are bounded by it too.
    pub deadline: Instant,
    /// Drives HTTP requests; `None` outside a runtime (then `http.send` is a `backend`
    /// error).
    pub runtime: Option<tokio::runtime::Handle>,
    pub limiter: Limiter,
    /// Whom this call's programs run as.
    pub run_as: RunAs,
    /// A secret handed to this call (a provider pool's API token): replaced by
    /// `[secret]` in whatever the plugin logs.
    pub secret: Option<Arc<str>>,
    /// HTTP requests this call sent (a provider's API budget counts them).
    pub http_requests: u32,
}

impl CallState {
    fn remaining(&self) -> Result<Duration, WitError> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(WitError::Timeout(format!(
                "plugin {}: the call's time (limits.call_timeout) is up",
                self.granted.name
            )));
        }
        Ok(left)
    }
}

fn fmt_duration(d: Duration) -> String {
    humantime::format_duration(Duration::from_millis(d.as_millis() as u64)).to_string()
}

impl types::Host for CallState {}

impl process::Host for CallState {
    fn run(&mut self, cmd: process::Command) -> Result<process::Output, WitError> {
        let g = self.granted.clone();
        let path = match g.programs.lookup(&cmd.program) {
            Ok(p) => p.to_path_buf(),
            Err(Some(why)) => {
                return Err(WitError::Denied(format!(
                    "program {:?} is granted but unavailable: {why}",
                    cmd.program
                )))
            }
            Err(None) => {
                return Err(WitError::Denied(format!(
                    "program {:?} is not granted to plugin {} (the operator grants programs in {} under [grants] programs)",
                    cmd.program,
                    g.name,
                    g.manifest.file.display()
                )))
            }
        };
        for (k, v) in &cmd.env {
            if k.is_empty() || k.contains(['=', '\0']) || v.contains('\0') {
                return Err(WitError::Invalid(format!(
                    "environment variable {k:?} is not a valid NAME=value pair"
                )));
            }
            if k.starts_with("LD_") {
                return Err(WitError::Denied(format!(
                    "environment variable {k} is refused: loader variables would run code no one granted"
                )));
            }
            if IDENTITY_ENV.contains(&k.as_str()) {
                return Err(WitError::Denied(format!(
                    "environment variable {k} is refused: the host sets it from the user the program runs as"
                )));
            }
        }
        if cmd.args.iter().any(|a| a.contains('\0')) {
            return Err(WitError::Invalid("an argument contains a NUL byte".into()));
        }
        let cwd = match &cmd.directory {
            Some(d) if !d.starts_with('/') => {
                return Err(WitError::Invalid(format!(
                    "directory {d:?} must be an absolute path"
                )))
            }
            Some(d) => std::path::PathBuf::from(d),
            None => match &self.run_as.user {
                Some(u) if u.home.is_dir() => u.home.clone(),
                Some(_) => "/".into(),
                None => std::env::current_dir().unwrap_or_else(|_| "/".into()),
            },
        };
        let limits = &g.manifest.limits;
        let mut timeout = limits.program_timeout.min(self.remaining()?);
        if let Some(ms) = cmd.timeout_ms {
            timeout = timeout.min(Duration::from_millis(u64::from(ms)));
        }
        let mut run = exec::Command::new(&path, timeout);
        run.args = cmd.args.into_iter().map(Into::into).collect();
        let identity = self.run_as.user.iter().flat_map(User::identity_env);
        run.env = g
            .base_env
            .iter()
            .cloned()
            .chain(cmd.env)
            .chain(identity)
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        run.clear_env = true;
        if self.run_as.switch {
            run.credentials = self.run_as.user.as_ref().map(User::credentials);
        }
        run.cwd = Some(cwd);
        run.stdin = cmd.stdin;
        run.stdout_max = limits.output_max();
        run.stderr_max = limits.output_max();
        let out = exec::run(&run).map_err(|e| WitError::Backend(e.to_string()))?;
        tracing::debug!(
            plugin = %g.name,
            program = %path.display(),
            user = self.run_as.user.as_ref().map(|u| u.name.as_str()).unwrap_or("(agent)"),
            code = ?out.code,
            timed_out = out.timed_out,
            elapsed_ms = out.elapsed.as_millis() as u64,
            "plugin ran a program"
        );
        if out.timed_out {
            return Err(WitError::Timeout(format!(
                "{} ran past {} and was killed with its process group",
                path.display(),
                fmt_duration(timeout)
            )));
        }
        Ok(process::Output {
            status: out.code,
            truncated: out.truncated(),
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }
}

/// Refuses a URL the grants do not cover; `Ok` is the parsed URL.
pub fn check_url(name: &str, hosts: &[HostGrant], url: &str) -> Result<reqwest::Url, WitError> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| WitError::Invalid(format!("{url:?} is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(WitError::Invalid(format!(
            "{url:?}: only http and https URLs can be requested"
        )));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(WitError::Denied(
            "URLs with user info (user@host) are refused; send credentials in a header".into(),
        ));
    }
    if !hosts.iter().any(|h| h.matches(&parsed)) {
        let target = format!(
            "{}:{}",
            parsed.host_str().unwrap_or_default(),
            parsed
                .port_or_known_default()
                .map(|p| p.to_string())
                .unwrap_or_default()
        );
        return Err(WitError::Denied(format!(
            "{target} is not granted to plugin {name} (granted: {})",
            if hosts.is_empty() {
                "none".to_string()
            } else {
                hosts
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        )));
    }
    Ok(parsed)
}

/// The system's CA bundle for HTTPS to granted hosts (first readable well-known file).
fn system_roots() -> rustls::RootCertStore {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    for bundle in [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/ca-bundle.pem",
        "/etc/ssl/cert.pem",
    ] {
        let Ok(certs) = CertificateDer::pem_file_iter(bundle) else {
            continue;
        };
        for cert in certs.flatten() {
            let _ = roots.add(cert);
        }
        if !roots.is_empty() {
            break;
        }
    }
    roots
}

/// The HTTP client of a plugin granted `hosts`: no proxy, redirects followed only to
/// granted hosts (at most 5).
pub fn http_client(hosts: Vec<HostGrant>) -> anyhow::Result<reqwest::Client> {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(system_roots())
    .with_no_client_auth();
    let policy = reqwest::redirect::Policy::custom(move |attempt| {
        let url = attempt.url();
        let granted = url.username().is_empty()
            && url.password().is_none()
            && hosts.iter().any(|h| h.matches(url));
        if attempt.previous().len() >= 5 || !granted {
            attempt.stop()
        } else {
            attempt.follow()
        }
    });
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .no_proxy()
        .redirect(policy)
        .connect_timeout(Duration::from_secs(10))
        .build()?)
}

impl http::Host for CallState {
    fn send(&mut self, req: http::Request) -> Result<http::Response, WitError> {
        let g = self.granted.clone();
        let Some(client) = &g.http else {
            return Err(WitError::Denied(format!(
                "plugin {} is granted no hosts",
                g.name
            )));
        };
        let url = check_url(&g.name, &g.manifest.hosts, &req.url)?;
        let method = reqwest::Method::from_bytes(req.method.as_bytes())
            .map_err(|_| WitError::Invalid(format!("{:?} is not an HTTP method", req.method)))?;
        let mut timeout = self.remaining()?;
        if let Some(ms) = req.timeout_ms {
            timeout = timeout.min(Duration::from_millis(u64::from(ms)));
        }
        let mut builder = client.request(method.clone(), url.clone()).timeout(timeout);
        for (k, v) in &req.headers {
            let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| WitError::Invalid(format!("{k:?} is not a header name")))?;
            let value = reqwest::header::HeaderValue::from_str(v)
                .map_err(|_| WitError::Invalid(format!("the value of header {k} is not valid")))?;
            builder = builder.header(name, value);
        }
        if let Some(body) = req.body {
            builder = builder.body(body);
        }
        let Some(rt) = &self.runtime else {
            return Err(WitError::Backend(
                "HTTP is unavailable: the call runs outside the agent's runtime".into(),
            ));
        };
        let max = g.manifest.limits.output_max();
        let what = format!("{method} {url}");
        self.http_requests = self.http_requests.saturating_add(1);
        let started = Instant::now();
        let result = rt.block_on(async move {
            let fut = async {
                let mut resp = builder.send().await?;
                let status = resp.status().as_u16();
                let headers = resp
                    .headers()
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.as_str().to_string(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        )
                    })
                    .collect();
                let mut body = Vec::new();
                while let Some(chunk) = resp.chunk().await? {
                    if body.len() + chunk.len() > max {
                        return Ok(Err(max));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok::<_, reqwest::Error>(Ok(http::Response {
                    status,
                    headers,
                    body,
                }))
            };
            tokio::time::timeout(timeout, fut).await
        });
        tracing::debug!(plugin = %g.name, request = %what, elapsed_ms = started.elapsed().as_millis() as u64, "plugin sent an HTTP request");
        match result {
            Ok(Ok(Ok(resp))) => Ok(resp),
            Ok(Ok(Err(max))) => Err(WitError::Backend(format!(
                "{what}: the response body exceeds limits.output_max_bytes ({max} bytes)"
            ))),
            Ok(Err(e)) if e.is_timeout() => Err(WitError::Timeout(format!(
                "{what}: no answer within {}",
                fmt_duration(timeout)
            ))),
            Ok(Err(e)) => Err(WitError::Backend(format!("{what}: {e}"))),
            Err(_) => Err(WitError::Timeout(format!(
                "{what}: no answer within {}",
                fmt_duration(timeout)
            ))),
        }
    }
}

/// Longest log message kept; the rest is cut with a marker.
const LOG_MAX: usize = 8 * 1024;

impl log::Host for CallState {
    fn write(&mut self, level: log::Level, message: String) {
        let mut message = message;
        if message.len() > LOG_MAX {
            let mut cut = LOG_MAX;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str(" [cut]");
        }
        if let Some(secret) = self.secret.as_deref().filter(|s| !s.is_empty()) {
            if message.contains(secret) {
                message = message.replace(secret, "[secret]");
            }
        }
        let plugin = self.granted.name.as_str();
        match level {
            log::Level::Trace => tracing::trace!(plugin, message = %message),
            log::Level::Debug => tracing::debug!(plugin, message = %message),
            log::Level::Info => tracing::info!(plugin, message = %message),
            log::Level::Warn => tracing::warn!(plugin, message = %message),
            log::Level::Error => tracing::error!(plugin, message = %message),
        }
    }
}

impl config::Host for CallState {
    fn get(&mut self, key: String) -> Option<String> {
        self.granted.manifest.config.get(&key).cloned()
    }
}

impl clock::Host for CallState {
    fn now_ms(&mut self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(list: &[&str]) -> Vec<HostGrant> {
        list.iter().map(|h| HostGrant::parse(h).unwrap()).collect()
    }

    #[test]
    fn a_url_outside_the_grants_is_denied_naming_host_and_port() {
        let hosts = grants(&["127.0.0.1:8265"]);
        assert!(check_url("ray", &hosts, "http://127.0.0.1:8265/api/jobs/").is_ok());
        match check_url("ray", &hosts, "http://127.0.0.1:22/") {
            Err(WitError::Denied(m)) => {
                assert!(
                    m.contains("127.0.0.1:22 is not granted to plugin ray"),
                    "{m}"
                );
                assert!(m.contains("granted: 127.0.0.1:8265"), "{m}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            check_url("ray", &[], "http://127.0.0.1:8265/"),
            Err(WitError::Denied(m)) if m.contains("granted: none")
        ));
    }

    #[test]
    fn user_info_tricks_and_other_schemes_are_refused() {
        let hosts = grants(&["127.0.0.1:8265", "head-01:80"]);
        // The real host here is evil.example; the grant's text is only user info.
        assert!(matches!(
            check_url("p", &hosts, "http://127.0.0.1:8265@evil.example/"),
            Err(WitError::Denied(m)) if m.contains("user info")
        ));
        assert!(matches!(
            check_url("p", &hosts, "http://user:pw@head-01/"),
            Err(WitError::Denied(_))
        ));
        assert!(matches!(
            check_url("p", &hosts, "file:///etc/passwd"),
            Err(WitError::Invalid(_))
        ));
        assert!(matches!(
            check_url("p", &hosts, "not a url"),
            Err(WitError::Invalid(_))
        ));
        assert!(matches!(
            check_url("p", &hosts, "http://head-01.evil.example/"),
            Err(WitError::Denied(_))
        ));
    }

    #[test]
    fn programs_start_from_the_agents_path_locale_and_granted_variables_only() {
        let m = Manifest::parse(
            "[plugin]\nname = \"s\"\n[grants]\nenv = [\"SGE_ROOT\", \"SGE_CELL\"]\n",
            std::path::Path::new("s.toml"),
        )
        .unwrap();
        let agent = |k: &str| match k {
            "PATH" => Some("/usr/bin:/bin".to_string()),
            "LANG" => Some("C.UTF-8".to_string()),
            "SGE_ROOT" => Some("/var/lib/gridengine".to_string()),
            "AWS_SECRET_ACCESS_KEY" | "HOME" | "LD_PRELOAD" => Some("agent's".to_string()),
            _ => None,
        };
        let env = base_env(&m, agent);
        assert_eq!(
            env,
            [
                ("PATH".to_string(), "/usr/bin:/bin".to_string()),
                ("LANG".into(), "C.UTF-8".into()),
                ("SGE_ROOT".into(), "/var/lib/gridengine".into()),
            ]
        );
    }

    #[test]
    fn identity_and_loader_variables_cannot_be_granted() {
        for name in ["HOME", "USER", "LD_PRELOAD"] {
            let err = Manifest::parse(
                &format!("[plugin]\nname = \"s\"\n[grants]\nenv = [\"{name}\"]\n"),
                std::path::Path::new("s.toml"),
            )
            .unwrap_err();
            assert_eq!(err.key, "grants.env[0]", "{name}");
        }
    }
}
