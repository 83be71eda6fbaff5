//! The CLI's client for the coordinator HTTP API. Every failure names the URL and says
//! what to do; "cannot connect" and "no such node" get their own exit codes.
//!
//! Invariants:
//! - Answers decode into `corral_proto::api` types (or plain JSON), never into a
//!   daemon's own types: the CLI depends on the API's schema, not on the coordinator.
//! - [`ApiClient`] is public (`corral::cli::ApiClient`) because `corral-bench` drives
//!   the API with it; what only the CLI's own commands call stays private to `cli`.

use std::time::Duration;

use anyhow::{Context, Result};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;

use super::{ApiArgs, Exit};
use corral_proto::api::{Event, NodeView};

pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    /// How the client reaches the API, for messages: the URL or the socket.
    target: String,
}

/// Where the packages' coordinator serves its Unix socket.
pub const DEFAULT_SOCKET: &str = "/run/corral/api.sock";

/// Where `corral dev` with its default state directory serves its socket, which the CLI
/// tries after [`DEFAULT_SOCKET`]: the quick start needs no setting.
pub(super) fn dev_socket() -> Option<std::path::PathBuf> {
    Some(super::dev::default_state_dir().join("api.sock"))
}

impl ApiClient {
    /// A client for the API the arguments name: `--api URL` (HTTP or HTTPS, with a token
    /// or an operator certificate), else the Unix socket (`--socket`, default
    /// [`DEFAULT_SOCKET`]) when it is there, else `http://127.0.0.1:7441`.
    pub fn new(args: &ApiArgs) -> Result<ApiClient> {
        let token = match (&args.token_file, std::env::var("CORRAL_TOKEN").ok()) {
            (Some(p), _) => Some(
                std::fs::read_to_string(p)
                    .with_context(|| format!("reading token file {}", p.display()))?
                    .trim()
                    .to_string(),
            ),
            (None, t) => t.filter(|t| !t.is_empty()),
        };
        let socket = match (&args.api, &args.socket) {
            (Some(_), _) => None,
            (None, Some(s)) => Some(s.clone()),
            (None, None) => [Some(std::path::PathBuf::from(DEFAULT_SOCKET)), dev_socket()]
                .into_iter()
                .flatten()
                .find(|p| p.exists()),
        };
        let mut roots = rustls::RootCertStore::empty();
        if let Some(ca) = &args.api_ca {
            use rustls::pki_types::{pem::PemObject, CertificateDer};
            for cert in CertificateDer::pem_file_iter(ca)
                .with_context(|| format!("reading {}", ca.display()))?
            {
                roots.add(
                    cert.with_context(|| format!("{}: not a PEM certificate", ca.display()))?,
                )?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
        let tls = match (&args.api_cert, &args.api_key) {
            (Some(cert), Some(key)) => {
                use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
                let chain = CertificateDer::pem_file_iter(cert)
                    .with_context(|| format!("reading --api-cert {}", cert.display()))?
                    .collect::<Result<Vec<_>, _>>()
                    .with_context(|| {
                        format!("--api-cert {}: not a PEM certificate", cert.display())
                    })?;
                let key = PrivateKeyDer::from_pem_file(key).with_context(|| {
                    format!("--api-key {}: not a PEM private key", key.display())
                })?;
                tls.with_client_auth_cert(chain, key)
                    .context("--api-cert and --api-key do not belong together")?
            }
            _ => tls.with_no_client_auth(),
        };
        let mut http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(30));
        let (base, target) = match &socket {
            Some(path) => {
                http = http.unix_socket(path.as_path());
                (
                    "http://localhost".to_string(),
                    format!("the socket {}", path.display()),
                )
            }
            None => {
                let url = args
                    .api
                    .clone()
                    .unwrap_or_else(|| "http://127.0.0.1:7441".into());
                let url = url.trim_end_matches('/').to_string();
                (url.clone(), url)
            }
        };
        let http = http.build().context("building the HTTP client")?;
        Ok(ApiClient {
            http,
            base,
            token,
            target,
        })
    }

    /// Who the API takes the holder of bearer `token` for (this client's way in, with
    /// that token instead of its own credentials).
    pub(super) async fn whoami_with(&self, token: &str) -> Result<corral_proto::api::WhoAmI> {
        let req = self
            .http
            .get(format!("{}/api/v1/whoami", self.base))
            .bearer_auth(token);
        let resp = req.send().await.context("asking who the token is")?;
        anyhow::ensure!(
            resp.status().is_success(),
            "the token is refused: {}",
            resp.status()
        );
        Ok(resp.json().await?)
    }

    /// A client for the Unix socket at `path`.
    pub fn for_socket(path: &std::path::Path) -> Result<ApiClient> {
        ApiClient::new(&ApiArgs {
            socket: Some(path.to_path_buf()),
            ..ApiArgs::default()
        })
    }

    async fn send<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<T> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req.send().await.map_err(|e| {
            anyhow::Error::new(Exit {
                code: 3,
                message: format!(
                    "cannot reach the coordinator API at {} ({e}); is `corral coordinator` or `corral dev` running? (on its host the CLI uses its socket, --socket or CORRAL_SOCKET; elsewhere set --api or CORRAL_API)",
                    self.target
                ),
            })
        })?;
        let status = resp.status();
        if status.is_success() {
            return resp
                .json()
                .await
                .with_context(|| format!("unreadable answer for {what} from {}", self.target));
        }
        let message = resp
            .json::<serde_json::Value>()
            .await
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or_else(|| status.to_string());
        let code = match status {
            StatusCode::NOT_FOUND => 4,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => 5,
            _ => 1,
        };
        Err(Exit {
            code,
            message: format!("{what}: {message}"),
        }
        .into())
    }

    /// `GET {base}{path}` as JSON; `what` names the request in errors.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str, what: &str) -> Result<T> {
        self.send(self.http.get(format!("{}{path}", self.base)), what)
            .await
    }

    /// `POST {base}{path}` with an optional JSON body, waiting up to `wait` for the
    /// answer (calls that run a scheduler command take longer than reads).
    pub async fn post_json<B: serde::Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<&B>,
        wait: Duration,
        what: &str,
    ) -> Result<T> {
        let mut req = self.http.post(format!("{}{path}", self.base)).timeout(wait);
        req = match body {
            Some(b) => req.json(b),
            // The API takes only JSON requests, empty ones included.
            None => req.header(reqwest::header::CONTENT_TYPE, "application/json"),
        };
        self.send(req, what).await
    }

    pub(super) async fn nodes(&self) -> Result<Vec<NodeView>> {
        self.send(
            self.http.get(format!("{}/api/v1/nodes", self.base)),
            "listing nodes",
        )
        .await
    }

    pub async fn node(&self, name: &str) -> Result<NodeView> {
        self.send(
            self.http.get(format!("{}/api/v1/nodes/{name}", self.base)),
            &format!("node {name}"),
        )
        .await
    }

    pub(super) async fn events(&self, node: Option<&str>, limit: usize) -> Result<Vec<Event>> {
        let mut req = self
            .http
            .get(format!("{}/api/v1/events", self.base))
            .query(&[("limit", limit.to_string())]);
        if let Some(n) = node {
            req = req.query(&[("node", n)]);
        }
        self.send(req, "listing events").await
    }

    pub(super) async fn ping(&self, name: &str) -> Result<u64> {
        let v: serde_json::Value = self
            .send(
                self.http
                    .post(format!("{}/api/v1/nodes/{name}/ping", self.base))
                    .header(reqwest::header::CONTENT_TYPE, "application/json"),
                &format!("ping {name}"),
            )
            .await?;
        v.get("rtt_us")
            .and_then(|v| v.as_u64())
            .context("answer without rtt_us")
    }

    /// Who the API takes this client for.
    pub async fn whoami(&self) -> Result<corral_proto::api::WhoAmI> {
        self.get_json("/api/v1/whoami", "asking who you are").await
    }

    pub async fn stats(&self) -> Result<corral_proto::api::StatsView> {
        self.send(
            self.http.get(format!("{}/api/v1/stats", self.base)),
            "stats",
        )
        .await
    }
}

/// `value` percent-encoded for a URL query (user names are plain, but say so safely).
pub(super) fn query_value(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
