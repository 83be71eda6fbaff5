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
}

impl ApiClient {
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
        .with_root_certificates(roots)
        .with_no_client_auth();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(30))
            .build()
            .context("building the HTTP client")?;
        Ok(ApiClient {
            http,
            base: args.api.trim_end_matches('/').to_string(),
            token,
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
                    "cannot reach the coordinator API at {} ({e}); is `corral coordinator` or `corral dev` running? (set --api or CORRAL_API)",
                    self.base
                ),
            })
        })?;
        let status = resp.status();
        if status.is_success() {
            return resp
                .json()
                .await
                .with_context(|| format!("unreadable answer for {what} from {}", self.base));
        }
        let message = resp
            .json::<serde_json::Value>()
            .await
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or_else(|| status.to_string());
        let code = if status == StatusCode::NOT_FOUND {
            4
        } else {
            1
        };
        Err(Exit {
            code,
            message: format!("{what}: {message}"),
        }
        .into())
    }

    /// `GET {base}{path}` as JSON; `what` names the request in errors.
    pub(super) async fn get_json<T: DeserializeOwned>(&self, path: &str, what: &str) -> Result<T> {
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
        if let Some(b) = body {
            req = req.json(b);
        }
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
                    .post(format!("{}/api/v1/nodes/{name}/ping", self.base)),
                &format!("ping {name}"),
            )
            .await?;
        v.get("rtt_us")
            .and_then(|v| v.as_u64())
            .context("answer without rtt_us")
    }

    pub async fn stats(&self) -> Result<corral_proto::api::StatsView> {
        self.send(
            self.http.get(format!("{}/api/v1/stats", self.base)),
            "stats",
        )
        .await
    }
}
