//! The coordinator's HTTP API (axum), which the `corral` CLI, dashboards and scripts use.
//!
//! | route | role | what |
//! |---|---|---|
//! | `GET /healthz` | none | `ok` while the coordinator runs |
//! | `GET /api/v1/whoami` | viewer | who the API takes the caller for ([`WhoAmI`]) |
//! | `GET /api/v1/nodes` | viewer | every node ([`NodeView`](corral_proto::api::NodeView)), sorted by name |
//! | `GET /api/v1/nodes/{name}` | viewer | one node, 404 if unknown |
//! | `POST /api/v1/nodes/{name}/ping` | user | round trip through the agent's command path |
//! | `POST /api/v1/nodes/{name}/report` | user | ask the agent to sample and report now |
//! | `POST /api/v1/nodes/{name}/drain` | admin | cordon `{"reason"}` and drain in its schedulers and Ray, now, whatever the limits ([`crate::remediation`]) |
//! | `POST /api/v1/nodes/{name}/resume` | admin | lift what corral drained of the node, now; 409 if not cordoned |
//! | `GET /api/v1/remediation` | viewer | the policy's state: paused, blocked and why, cordoned and the limit, nodes waiting ([`RemediationView`](corral_proto::api::RemediationView)) |
//! | `POST /api/v1/remediation/pause`, `.../resume` | admin | stop or restart the policy's actions (kept across restarts) |
//! | `GET /api/v1/events?since=ID&node=NAME&kind=KIND&limit=N` | viewer | liveness, health, gpu, audit and remediation events, oldest first |
//! | `GET /api/v1/stats` | viewer | coordinator counters and the beat latency histogram ([`StatsView`](corral_proto::api::StatsView)) |
//! | `POST /api/v1/jobs` | user | submit `{"scheduler", "spec", "via"?, "dry_run"?}` as the caller: 201 and the job, or 200 and the rendered script for a dry run |
//! | `GET /api/v1/jobs?owner=NAME&node=NAME` | viewer | every job (or one owner's), oldest first, without histories; others' jobs without their detail |
//! | `GET /api/v1/jobs/{id}` | owner or admin | one job (`c17`) with its state history |
//! | `POST /api/v1/jobs/{id}/cancel` | owner or admin | cancel; a job that already ended is returned as is |
//! | `GET /api/v1/jobs/{id}/logs?bytes=N` | owner or admin | the last N bytes (default 64 KiB, at most 1 MiB) of its output, read by the plugin as the job's owner ([`JobLogs`]) |
//! | `GET /api/v1/plugins` | viewer | every node's scheduler plugins (loaded, with grants, and failed) |
//! | `GET/POST /api/v1/tokens`, `POST /api/v1/tokens/{id}/revoke` | admin | API tokens ([`crate::access`]) |
//! | `GET /metrics` | viewer (or none: `api.public_metrics`) | Prometheus / OpenMetrics text |
//! | `/`, `/ui/...`, `/api/v1/console/...`, `/api/v1/nodes/{name}/history` | | the web console ([`crate::console`]) |
//!
//! Invariants:
//! - Every route but `/healthz`, the console's static shell and login (and `/metrics`
//!   when made public) needs a [`Caller`]: the Unix socket's peer credentials, a bearer
//!   token, an operator certificate on the HTTPS listener ([`crate::access`]), or a
//!   console session cookie, which a request that changes something must back with the
//!   session's CSRF token ([`crate::console::session`]). Loopback is not trusted: any local user
//!   reaches it, so they authenticate like anyone else (the socket does it for them).
//! - Browsers cannot be made to act for someone: a request that changes something must
//!   say `Content-Type: application/json` (an HTML form or a `text/plain` fetch cannot,
//!   without a CORS preflight, which is refused), a request with an `Origin` that is
//!   not the API's own or in `api.cors_origins` is refused, and the TCP listeners check
//!   `Host` against the names the API is known by (DNS rebinding).
//! - Every request that changes something is an audit event naming who made it.
//! - Errors are JSON `{"error": "..."}` with a status code that says what kind of
//!   failure it is (401 who are you, 403 not allowed, 415 not JSON, 421 wrong host; for
//!   jobs: 404 unknown job or scheduler, 400 a bad request or one the plugin calls
//!   invalid, 403 denied by the plugin's grants or the node's job rules, 409 not
//!   possible in the job's phase, 501 unsupported by the plugin, 502/504 the scheduler
//!   failed or timed out, 503 no connected host).
//! - A submission's `spec` may leave out any field: missing fields take their defaults
//!   (`JobSpec` is `#[serde(default)]`), so `{"executable": "/bin/hostname"}` is a
//!   whole spec.
//!
//! Every route serves clients of the API; none exists for one tool (a client that
//! wants a window of a cumulative counter takes two snapshots).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::IncomingStream;
use axum::{Extension, Json, Router};
use serde::Deserialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::access::{Access, AuthError, Caller, TokenError};
use crate::commands::CommandError;
use crate::config::ApiSection;
use crate::jobs::{JobError, Submitted};
use crate::remediation::RemediationError;
use crate::Shared;
use corral_proto::api::{
    CreateToken, DrainRequest, EventKind, JobId, JobLogs, JobView, Role, SubmitRequest, WhoAmI,
};
use corral_proto::job::{JobSpec, PluginError};
use corral_proto::wire::{Command, CommandOutput};

pub(crate) struct ApiState {
    pub(crate) shared: Arc<Shared>,
    pub(crate) access: Arc<Access>,
    /// Host names (lowercase, without port) the TCP listeners answer to.
    hosts: BTreeSet<String>,
    cors_origins: Vec<String>,
    public_metrics: bool,
    /// The TCP listener is HTTPS (session cookies are then `Secure`).
    pub(crate) https: bool,
    /// Cancelled when the coordinator stops: long-lived responses end with it.
    pub(crate) shutdown: CancellationToken,
}

pub(crate) type AppState = Arc<ApiState>;

/// The CSRF token of the console session a request came with ([`crate::console`]).
#[derive(Debug, Clone)]
struct SessionCsrf(String);

/// Where a request came from, as its listener saw it.
#[derive(Debug, Clone)]
enum Peer {
    /// The Unix socket; the kernel's word on who is at the other end.
    Local { uid: u32 },
    /// A TCP listener (plain, or HTTPS without a client certificate).
    Network,
    /// The HTTPS listener, with the verified chain of the client's certificate.
    Certified {
        chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    },
}

impl Connected<IncomingStream<'_, tokio::net::UnixListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, tokio::net::UnixListener>) -> Self {
        match stream.io().peer_cred() {
            Ok(cred) => Peer::Local { uid: cred.uid() },
            // Without credentials the caller is no one (and is refused as such).
            Err(_) => Peer::Network,
        }
    }
}

impl Connected<IncomingStream<'_, tokio::net::TcpListener>> for Peer {
    fn connect_info(_: IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        Peer::Network
    }
}

impl Connected<SocketAddr> for Peer {
    fn connect_info(_: SocketAddr) -> Self {
        Peer::Network
    }
}

/// The API's listeners, as started.
pub(crate) struct Served {
    pub addr: SocketAddr,
    pub tasks: Vec<JoinHandle<()>>,
}

/// Names the TCP listeners answer to: loopback, the listen address, this host's name,
/// and `api.hosts`.
fn host_names(cfg: &ApiSection) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = ["localhost", "127.0.0.1", "[::1]"]
        .into_iter()
        .map(str::to_string)
        .collect();
    let ip = cfg.listen.ip();
    if !ip.is_unspecified() {
        names.insert(match ip {
            std::net::IpAddr::V4(v4) => v4.to_string(),
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        });
    }
    if let Ok(h) = hostname::get() {
        if let Some(h) = h.to_str() {
            names.insert(h.to_ascii_lowercase());
        }
    }
    names.extend(cfg.hosts.iter().map(|h| h.to_ascii_lowercase()));
    names
}

/// Binds the Unix socket at `path`: its directory is created if missing, a stale socket
/// left by a previous process is replaced (anything else at that path is not touched),
/// and the socket is made connectable by every local user, since the kernel's peer
/// credentials are the access control.
fn bind_socket(path: &FsPath) -> Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating {} for api.socket", dir.display()))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            // A live coordinator still answers on it: do not steal its socket.
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                anyhow::bail!(
                    "api.socket {} is in use by another running coordinator; stop it or set api.socket elsewhere",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing the stale socket {}", path.display()))?;
        }
        Ok(_) => anyhow::bail!(
            "api.socket {} exists and is not a socket; move it away or set api.socket elsewhere",
            path.display()
        ),
        Err(_) => {}
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("binding the API socket {} (api.socket)", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .with_context(|| format!("making {} connectable (api.socket)", path.display()))?;
    Ok(listener)
}

/// The HTTPS acceptor: TLS, then the client's verified certificate chain (if it sent
/// one) handed to the request as its [`Peer`].
#[derive(Clone)]
struct CertAcceptor {
    tls: axum_server::tls_rustls::RustlsAcceptor,
}

impl<I, S> axum_server::accept::Accept<I, S> for CertAcceptor
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: Send + 'static,
{
    type Stream = tokio_rustls::server::TlsStream<I>;
    type Service = axum::middleware::AddExtension<S, Peer>;
    type Future = std::pin::Pin<
        Box<
            dyn std::future::Future<Output = std::io::Result<(Self::Stream, Self::Service)>> + Send,
        >,
    >;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let tls = self.tls.clone();
        Box::pin(async move {
            let (stream, service) = tls.accept(stream, service).await?;
            let peer = match stream.get_ref().1.peer_certificates() {
                Some(chain) if !chain.is_empty() => Peer::Certified {
                    chain: chain.iter().map(|c| c.clone().into_owned()).collect(),
                },
                _ => Peer::Network,
            };
            Ok((stream, tower_layer::Layer::layer(&Extension(peer), service)))
        })
    }
}

/// Binds and serves the API (TCP listener and Unix socket); returns the TCP address and
/// the server tasks.
pub(crate) async fn serve(
    cfg: &ApiSection,
    shared: Arc<Shared>,
    access: Arc<Access>,
    tls_clients: Option<&corral_transport::pki::Revocations>,
    shutdown: CancellationToken,
) -> Result<Served> {
    let state = Arc::new(ApiState {
        shared,
        access,
        hosts: host_names(cfg),
        cors_origins: cfg
            .cors_origins
            .iter()
            .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
            .collect(),
        public_metrics: cfg.public_metrics,
        https: cfg.tls_cert.is_some() && cfg.tls_key.is_some(),
        shutdown: shutdown.clone(),
    });
    let app = router(state);
    let listener = std::net::TcpListener::bind(cfg.listen).with_context(|| {
        format!(
            "binding the HTTP API on {} (set api.listen to a free port)",
            cfg.listen
        )
    })?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let socket = bind_socket(&cfg.socket)?;
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn({
        let app = app.clone();
        let shutdown = shutdown.clone();
        let path = cfg.socket.clone();
        async move {
            let served = axum::serve(socket, app.into_make_service_with_connect_info::<Peer>())
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, socket = %path.display(), "API socket server failed");
            }
            let _ = std::fs::remove_file(&path);
        }
    }));
    let task = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(cert), Some(key)) => {
            let revocations = tls_clients.context(
                "the HTTPS API needs the cluster CA to verify operator certificates ([tls] ca)",
            )?;
            let tls =
                corral_transport::pki::https_server_config_with_clients(cert, key, revocations)?;
            let tls = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(tls));
            let acceptor = CertAcceptor {
                tls: axum_server::tls_rustls::RustlsAcceptor::new(tls),
            };
            let handle = axum_server::Handle::new();
            let server = axum_server::from_tcp(listener)
                .acceptor(acceptor)
                .handle(handle.clone());
            tokio::spawn(async move {
                tokio::spawn(async move {
                    shutdown.cancelled().await;
                    handle.graceful_shutdown(Some(Duration::from_secs(2)));
                });
                if let Err(e) = server
                    .serve(app.into_make_service_with_connect_info::<Peer>())
                    .await
                {
                    tracing::error!(error = %e, "HTTPS API server failed");
                }
            })
        }
        _ => {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            tokio::spawn(async move {
                let served =
                    axum::serve(listener, app.into_make_service_with_connect_info::<Peer>())
                        .with_graceful_shutdown(async move { shutdown.cancelled().await })
                        .await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "HTTP API server failed");
                }
            })
        }
    };
    tasks.push(task);
    Ok(Served { addr, tasks })
}

fn router(state: AppState) -> Router {
    let protected = Router::new()
        .route("/api/v1/whoami", get(whoami))
        .route("/api/v1/nodes", get(nodes))
        .route("/api/v1/nodes/{name}", get(node))
        .route("/api/v1/nodes/{name}/ping", post(ping))
        .route("/api/v1/nodes/{name}/report", post(report_now))
        .route("/api/v1/nodes/{name}/drain", post(drain_node))
        .route("/api/v1/nodes/{name}/resume", post(resume_node))
        .route("/api/v1/remediation", get(remediation))
        .route("/api/v1/remediation/pause", post(pause_remediation))
        .route("/api/v1/remediation/resume", post(unpause_remediation))
        .route("/api/v1/events", get(events))
        .route("/api/v1/stats", get(stats))
        .route("/api/v1/jobs", get(jobs).post(submit))
        .route("/api/v1/jobs/{id}", get(job))
        .route("/api/v1/jobs/{id}/cancel", post(cancel))
        .route("/api/v1/jobs/{id}/logs", get(job_logs))
        .route("/api/v1/plugins", get(plugins))
        .route("/api/v1/tokens", get(tokens).post(create_token))
        .route("/api/v1/tokens/{id}/revoke", post(revoke_token))
        .route("/metrics", get(metrics))
        .merge(crate::console::protected_routes())
        .merge(crate::pools::protected_routes())
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            refuse_writes_while_the_store_fails,
        ))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(crate::console::public_routes())
        .merge(crate::pools::public_routes())
        .merge(protected)
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such route; see /api/v1/nodes, /api/v1/events, /api/v1/jobs, /api/v1/plugins, /metrics".into(),
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), check_request))
        .with_state(state)
}

pub(crate) fn error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

fn peer_of(req: &Request) -> Peer {
    req.extensions()
        .get::<Peer>()
        .or_else(|| req.extensions().get::<ConnectInfo<Peer>>().map(|c| &c.0))
        .cloned()
        .unwrap_or(Peer::Network)
}

/// The verified client certificate chain of the HTTPS connection `req` came on.
pub(crate) fn certified_chain(
    req: &Request,
) -> Option<Vec<rustls::pki_types::CertificateDer<'static>>> {
    match peer_of(req) {
        Peer::Certified { chain } => Some(chain),
        _ => None,
    }
}

/// The host name of a `Host` header, lowercase and without its port.
fn host_name(host: &str) -> String {
    let host = host.trim().to_ascii_lowercase();
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => host[..=end].to_string(),
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name.to_string(),
        _ => host,
    }
}

/// Whether a request for `host` is for this API: an IP address (a browser that was sent
/// there is not being rebound) or one of the names it answers to.
fn host_allowed(state: &ApiState, host: &str) -> bool {
    let name = host_name(host);
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<std::net::IpAddr>().is_ok() || state.hosts.contains(&name)
}

/// Whether `origin` is the API's own (same host as `Host`) or an allowed one.
fn origin_allowed(state: &ApiState, origin: &str, headers: &HeaderMap) -> bool {
    let origin = origin.trim_end_matches('/').to_ascii_lowercase();
    if state.cors_origins.contains(&origin) {
        return true;
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| h.to_ascii_lowercase());
    match (origin.split_once("://"), host) {
        (Some((_, authority)), Some(host)) => authority == host,
        _ => false,
    }
}

/// Checks made before anyone is identified: the request's Host, Origin and, for a
/// request that changes something, its Content-Type. CORS preflights are answered for
/// the configured origins only.
async fn check_request(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let local = matches!(peer_of(&req), Peer::Local { .. });
    let headers = req.headers();
    if !local {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        match host {
            Some(h) if host_allowed(&state, h) => {}
            Some(h) => {
                return error(
                    StatusCode::MISDIRECTED_REQUEST,
                    format!("this API does not answer to the host name {:?}; an operator adds names clients use to api.hosts", host_name(h)),
                )
            }
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "a Host header is required".into(),
                )
            }
        }
    }
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .map(str::to_string);
    if let Some(origin) = &origin {
        if !origin_allowed(&state, origin, headers) {
            return error(
                StatusCode::FORBIDDEN,
                format!("requests from the web origin {origin} are refused; an operator allows origins in api.cors_origins"),
            );
        }
    }
    if req.method() == Method::OPTIONS {
        return match origin {
            Some(o)
                if state
                    .cors_origins
                    .contains(&o.trim_end_matches('/').to_ascii_lowercase()) =>
            {
                (
                    StatusCode::NO_CONTENT,
                    [
                        (header::ACCESS_CONTROL_ALLOW_ORIGIN, o),
                        (
                            header::ACCESS_CONTROL_ALLOW_METHODS,
                            "GET, POST".to_string(),
                        ),
                        (
                            header::ACCESS_CONTROL_ALLOW_HEADERS,
                            "authorization, content-type".to_string(),
                        ),
                        (header::VARY, "origin".to_string()),
                    ],
                )
                    .into_response()
            }
            _ => error(
                StatusCode::FORBIDDEN,
                "cross-origin requests are refused; an operator allows origins in api.cors_origins"
                    .into(),
            ),
        };
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|c| c.to_str().ok())
            .and_then(|c| c.split(';').next())
            .is_some_and(|c| c.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "{} requests must say Content-Type: application/json (even with an empty body)",
                    req.method()
                ),
            );
        }
    }
    let mut resp = next.run(req).await;
    if let Some(o) = origin.filter(|o| {
        state
            .cors_origins
            .contains(&o.trim_end_matches('/').to_ascii_lowercase())
    }) {
        if let Ok(v) = o.parse() {
            resp.headers_mut()
                .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
            resp.headers_mut()
                .insert(header::VARY, header::HeaderValue::from_static("origin"));
        }
    }
    resp
}

/// Who is asking ([`crate::access`]), put on the request for the handlers; refuses a
/// request that is no one.
/// Requests other than GET that change nothing stored: they are served while the
/// database is not taking writes.
const ACTS_WITHOUT_STORING: &[&str] = &["/ping", "/report", "/ui/logout"];

/// While the database is not taking writes (a full disk), every request that would
/// change stored state gets 503 with why and what to do, before it acts: a change that
/// cannot be recorded is not made. Reads are served from memory and keep working.
async fn refuse_writes_while_the_store_fails(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let reads = matches!(*req.method(), Method::GET | Method::HEAD);
    let stores = !reads
        && !ACTS_WITHOUT_STORING
            .iter()
            .any(|s| req.uri().path().ends_with(s));
    if stores {
        if let Some(why) = state.shared.store.unavailable() {
            return error(StatusCode::SERVICE_UNAVAILABLE, why);
        }
    }
    next.run(req).await
}

async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    if state.public_metrics && req.uri().path() == "/metrics" {
        return next.run(req).await;
    }
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.strip_prefix("Bearer ").unwrap_or("").trim().to_string());
    if bearer.is_none() {
        if let Some(cookie) = crate::console::session::cookie_of(req.headers()) {
            return match session_caller(&state, &req, &cookie) {
                Ok((caller, csrf)) => {
                    req.extensions_mut().insert(caller);
                    req.extensions_mut().insert(SessionCsrf(csrf));
                    next.run(req).await
                }
                Err((status, message)) => {
                    tracing::info!(path = %req.uri().path(), error = %message, "console request refused");
                    let mut resp = error(status, message);
                    if status == StatusCode::UNAUTHORIZED {
                        // The session is gone: the browser drops the cookie too.
                        let gone = crate::console::session::set_cookie(None, state.https);
                        if let Ok(v) = header::HeaderValue::from_str(&gone) {
                            resp.headers_mut().insert(header::SET_COOKIE, v);
                        }
                    }
                    resp
                }
            };
        }
    }
    let caller: Result<Caller, AuthError> = match (peer_of(&req), bearer) {
        (_, Some(token)) => state.access.bearer(&token),
        (Peer::Local { uid }, None) => state.access.local(uid),
        (Peer::Certified { chain }, None) => match certificate_caller(&state, &chain) {
            Ok(c) => Ok(c),
            Err(message) => return error(StatusCode::FORBIDDEN, message),
        },
        (Peer::Network, None) => Err(AuthError::Missing),
    };
    match caller {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(e) => {
            tracing::info!(path = %req.uri().path(), error = %e, "API request refused: not authenticated");
            error(StatusCode::UNAUTHORIZED, e.to_string())
        }
    }
}

/// The caller of a console session, its credential re-checked, and (for a request that
/// changes something) its CSRF token checked.
fn session_caller(
    state: &ApiState,
    req: &Request,
    cookie: &str,
) -> Result<(Caller, String), (StatusCode, String)> {
    use crate::console::session::{Sessions, CSRF_HEADER};
    let sessions = &state.shared.console.sessions;
    let session = sessions
        .get(cookie)
        .map_err(|e| (StatusCode::UNAUTHORIZED, e.to_string()))?;
    if let Err(why) = proof_holds(state, &session.proof, &session.caller.via) {
        sessions.end(cookie);
        return Err((
            StatusCode::UNAUTHORIZED,
            format!("{why}; the console session has ended"),
        ));
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let header = req.headers().get(CSRF_HEADER).and_then(|v| v.to_str().ok());
        Sessions::check_csrf(&session, header)
            .map_err(|e| (StatusCode::FORBIDDEN, e.to_string()))?;
    }
    Ok((session.caller, session.csrf))
}

/// Whether the credential a session or stream was opened with still holds: a token not
/// revoked or expired, a certificate not revoked.
fn proof_holds(
    state: &ApiState,
    proof: &crate::console::session::Proof,
    via: &corral_proto::api::Via,
) -> Result<(), String> {
    use crate::console::session::Proof;
    match proof {
        Proof::Token => state.access.still_valid(via).map_err(|e| e.to_string()),
        Proof::Certificate(leaf) => match state.shared.revocations.revoked(leaf) {
            Some(r) => Err(format!(
                "the certificate (serial {}) has been revoked",
                r.serial
            )),
            None => Ok(()),
        },
    }
}

/// What a long-lived request (the console's stream) was authenticated with, to check
/// again while it lasts.
pub(crate) enum Credential {
    Session(String),
    Proof(crate::console::session::Proof, corral_proto::api::Via),
    /// The Unix socket: the kernel's word does not expire.
    Local,
}

impl Credential {
    /// The credential `req` (already authenticated as `caller`) came with.
    pub(crate) fn of(req: &Request, caller: &Caller) -> Credential {
        use crate::console::session::Proof;
        use corral_proto::api::Via;
        if let Some(c) = crate::console::session::cookie_of(req.headers()) {
            if req.headers().get(header::AUTHORIZATION).is_none() {
                return Credential::Session(c);
            }
        }
        match (&caller.via, certified_chain(req)) {
            (Via::Token { .. }, _) => Credential::Proof(Proof::Token, caller.via.clone()),
            (Via::Certificate { .. }, Some(chain)) if !chain.is_empty() => {
                Credential::Proof(Proof::Certificate(chain[0].clone()), caller.via.clone())
            }
            _ => Credential::Local,
        }
    }

    /// Whether it still holds.
    pub(crate) fn holds(&self, state: &ApiState) -> Result<(), String> {
        match self {
            Credential::Session(cookie) => {
                let session = state
                    .shared
                    .console
                    .sessions
                    .get(cookie)
                    .map_err(|e| e.to_string())?;
                proof_holds(state, &session.proof, &session.caller.via)
            }
            Credential::Proof(proof, via) => proof_holds(state, proof, via),
            Credential::Local => Ok(()),
        }
    }
}

pub(crate) fn certificate_caller(
    state: &ApiState,
    chain: &[rustls::pki_types::CertificateDer<'static>],
) -> Result<Caller, String> {
    use corral_transport::pki;
    let identity =
        pki::peer_chain_identity(chain).map_err(|e| format!("client certificate: {e}"))?;
    if identity.role != pki::Role::Operator {
        return Err(format!(
            "the client certificate is a {} certificate for {}; the API takes operator certificates (`corral certs issue --role operator`)",
            identity.role, identity.name
        ));
    }
    let leaf = chain.first().ok_or("no client certificate")?;
    // A kept-alive connection keeps the identity its handshake accepted: a certificate
    // revoked since then is refused here, request by request.
    if let Some(r) = state.shared.revocations.revoked(leaf) {
        return Err(format!(
            "the client certificate of {} (serial {}) has been revoked; ask an admin for a new one",
            identity.name, r.serial
        ));
    }
    let serial = pki::serial_of(leaf)
        .map(|s| s.to_string())
        .unwrap_or_default();
    Ok(state.access.certificate(&identity.name, serial))
}

/// Refuses `caller` unless they have `role`.
pub(crate) fn require(caller: &Caller, role: Role, what: &str) -> Result<(), Box<Response>> {
    if caller.has(role) {
        return Ok(());
    }
    Err(Box::new(error(
        StatusCode::FORBIDDEN,
        format!(
            "{what} needs the {role} role; {} has {} (an admin grants roles in [access] roles, or issues a token with `corral tokens create --role {role}`)",
            caller.user, caller.role
        ),
    )))
}

/// Records who changed what, as an audit event.
pub(crate) fn audit(s: &ApiState, caller: &Caller, node: &str, action: &str, what: String) {
    tracing::info!(user = %caller.user, role = %caller.role, action, node, "{what}");
    s.shared
        .registry
        .audit(node, action, format!("{} {what}", caller.describe()));
}

async fn whoami(
    Extension(caller): Extension<Caller>,
    csrf: Option<Extension<SessionCsrf>>,
) -> Response {
    let mut resp = Json(WhoAmI {
        user: caller.user,
        role: caller.role,
        via: caller.via,
        csrf: csrf.map(|Extension(SessionCsrf(c))| c),
    })
    .into_response();
    // It may carry the CSRF token: never cached.
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
}

async fn nodes(State(s): State<AppState>) -> Response {
    Json(s.shared.registry.snapshot()).into_response()
}

pub(crate) fn unknown(name: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("no node named {name:?}; `corral nodes` lists the known ones"),
    )
}

async fn node(State(s): State<AppState>, Path(name): Path<String>) -> Response {
    match s.shared.registry.get(&name) {
        Some(v) => Json(v).into_response(),
        None => unknown(&name),
    }
}

fn command_error(e: CommandError) -> Response {
    let message = e.to_string();
    command_error_with(&e, message)
}

async fn ping(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Response {
    if let Err(r) = require(&caller, Role::User, "pinging a node") {
        return *r;
    }
    if s.shared.registry.get(&name).is_none() {
        return unknown(&name);
    }
    audit(&s, &caller, &name, "ping", format!("pinged {name}"));
    let nonce = rand::random();
    let started = Instant::now();
    match s
        .shared
        .commands
        .send(&name, Command::Ping { nonce }, Duration::from_secs(5))
        .await
    {
        Ok(CommandOutput::Pong { nonce: n }) if n == nonce => Json(
            serde_json::json!({ "node": name, "rtt_us": started.elapsed().as_micros() as u64 }),
        )
        .into_response(),
        Ok(other) => error(
            StatusCode::BAD_GATEWAY,
            format!("unexpected answer {other:?}"),
        ),
        Err(e) => command_error(e),
    }
}

async fn report_now(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Response {
    if let Err(r) = require(&caller, Role::User, "asking a node for a report") {
        return *r;
    }
    if s.shared.registry.get(&name).is_none() {
        return unknown(&name);
    }
    audit(
        &s,
        &caller,
        &name,
        "report",
        format!("asked {name} for a report"),
    );
    match s
        .shared
        .commands
        .send(&name, Command::ReportNow, Duration::from_secs(5))
        .await
    {
        Ok(_) => (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({ "node": name, "queued": true })),
        )
            .into_response(),
        Err(e) => command_error(e),
    }
}

#[derive(Deserialize)]
struct EventQuery {
    #[serde(default)]
    since: u64,
    node: Option<String>,
    kind: Option<String>,
    limit: Option<usize>,
}

async fn events(State(s): State<AppState>, Query(q): Query<EventQuery>) -> Response {
    let limit = q.limit.unwrap_or(1000).min(100_000);
    let kind = match q.kind.as_deref().filter(|k| !k.is_empty()) {
        None => None,
        Some(k) => match EventKind::parse(k) {
            Some(k) => Some(k),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("no event kind {k:?}; the kinds are liveness, health, gpu, audit and remediation"),
                )
            }
        },
    };
    let node = q.node.as_deref().filter(|n| !n.is_empty());
    Json(s.shared.registry.events(q.since, node, kind, limit)).into_response()
}

async fn stats(State(s): State<AppState>) -> Response {
    Json(stats_view(&s)).into_response()
}

/// The registry's counters with the store's state.
fn stats_view(s: &AppState) -> corral_proto::api::StatsView {
    let mut v = s.shared.registry.stats_view();
    v.store = s.shared.store.view();
    v
}

fn job_error(e: JobError) -> Response {
    let status = match &e {
        JobError::NoScheduler(_) | JobError::NoJob(_) => StatusCode::NOT_FOUND,
        JobError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        JobError::Invalid(_) => StatusCode::BAD_REQUEST,
        JobError::Conflict(_) => StatusCode::CONFLICT,
        JobError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        JobError::Plugin { error, .. } => match error {
            PluginError::Invalid(_) => StatusCode::BAD_REQUEST,
            PluginError::Denied(_) => StatusCode::FORBIDDEN,
            PluginError::Unsupported(_) => StatusCode::NOT_IMPLEMENTED,
            PluginError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            PluginError::NotLoaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            PluginError::Backend(_) | PluginError::Plugin(_) => StatusCode::BAD_GATEWAY,
        },
        JobError::Command { error, .. } => return command_error_with(error, e.to_string()),
    };
    error(status, e.to_string())
}

fn command_error_with(e: &CommandError, message: String) -> Response {
    let status = match e {
        CommandError::NotConnected(_) => StatusCode::CONFLICT,
        CommandError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
        CommandError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        CommandError::Failed { .. } => StatusCode::BAD_GATEWAY,
        CommandError::Disconnected { .. } => StatusCode::BAD_GATEWAY,
        CommandError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
    };
    error(status, message)
}

/// A job id from a path; a malformed one names no job (404, with the right form).
fn parse_job_id(id: &str) -> Result<JobId, String> {
    id.parse::<JobId>()
}

/// A submission. Fields its spec leaves out take their defaults (serde); the checks here
/// only say what the body should look like when its shape is wrong.
fn submit_request(body: serde_json::Value) -> Result<SubmitRequest, String> {
    let obj = body
        .as_object()
        .ok_or("the body must be a JSON object: {\"scheduler\": ..., \"spec\": {...}}")?;
    match obj.get("spec") {
        Some(serde_json::Value::Object(_)) => {}
        Some(_) => return Err("`spec` must be a JSON object".into()),
        None => {
            return Err(
                "missing `spec` (the job: {\"executable\": ..., \"arguments\": [...]})".into(),
            )
        }
    }
    serde_json::from_value::<SubmitRequest>(body).map_err(|e| format!("bad submission: {e}"))
}

async fn submit(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: String,
) -> Response {
    if let Err(r) = require(&caller, Role::User, "submitting a job") {
        return *r;
    }
    let req = match serde_json::from_str::<serde_json::Value>(&body)
        .map_err(|e| format!("the body is not JSON: {e}"))
        .and_then(submit_request)
    {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let (scheduler, dry_run) = (req.scheduler.clone(), req.dry_run);
    match s.shared.jobs.submit(&caller.user, req).await {
        Ok(Submitted::Job(job)) => {
            audit(
                &s,
                &caller,
                &job.node,
                "submit",
                format!(
                    "submitted {} to {scheduler} on {} (native id {})",
                    job.id,
                    job.node,
                    job.native_id.as_deref().unwrap_or("none")
                ),
            );
            (StatusCode::CREATED, Json(job)).into_response()
        }
        Ok(Submitted::DryRun(rendered)) => Json(rendered).into_response(),
        Err(e) => {
            if !dry_run {
                audit(
                    &s,
                    &caller,
                    "",
                    "submit",
                    format!("failed to submit to {scheduler}: {e}"),
                );
            }
            job_error(e)
        }
    }
}

#[derive(Deserialize)]
struct JobsQuery {
    owner: Option<String>,
    /// Submitted through this node.
    node: Option<String>,
}

/// `job` as `caller` may see it: in full for its owner and admins; for anyone else
/// without what the owner submitted (the spec can hold paths, arguments and
/// environment values) nor what the scheduler said about it.
fn visible(caller: &Caller, mut job: JobView) -> JobView {
    if !caller.may_manage(&job.owner) {
        job.spec = JobSpec::default();
        job.message = None;
        job.poll_error = None;
        job.history.clear();
        job.redacted = true;
    }
    job
}

async fn jobs(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<JobsQuery>,
) -> Response {
    let all = s.shared.jobs.list();
    let shown: Vec<JobView> = all
        .into_iter()
        .filter(|j| q.owner.as_ref().is_none_or(|o| *o == j.owner))
        .filter(|j| q.node.as_ref().is_none_or(|n| *n == j.node))
        .map(|j| visible(&caller, j))
        .collect();
    Json(shown).into_response()
}

/// The job `id` names, if `caller` may manage it.
fn managed_job(
    s: &ApiState,
    caller: &Caller,
    id: &str,
    what: &str,
) -> Result<JobId, Box<Response>> {
    let id = parse_job_id(id).map_err(|e| Box::new(error(StatusCode::NOT_FOUND, e)))?;
    let job = s
        .shared
        .jobs
        .get(id)
        .ok_or_else(|| Box::new(job_error(JobError::NoJob(id))))?;
    if !caller.may_manage(&job.owner) {
        let owner = if job.owner.is_empty() {
            "no recorded user (it predates owners)".to_string()
        } else {
            job.owner.clone()
        };
        return Err(Box::new(error(
            StatusCode::FORBIDDEN,
            format!(
                "{id} belongs to {owner}; only its owner or an admin may {what} it ({} is {})",
                caller.user, caller.role
            ),
        )));
    }
    Ok(id)
}

async fn job(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    let id = match managed_job(&s, &caller, &id, "see") {
        Ok(id) => id,
        Err(r) => return *r,
    };
    match s.shared.jobs.get(id) {
        Some(j) => Json(j).into_response(),
        None => job_error(JobError::NoJob(id)),
    }
}

async fn cancel(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    let id = match managed_job(&s, &caller, &id, "cancel") {
        Ok(id) => id,
        Err(r) => return *r,
    };
    match s.shared.jobs.cancel(id).await {
        Ok(j) => {
            audit(
                &s,
                &caller,
                &j.node,
                "cancel",
                format!("cancelled {id} (owner {})", j.owner),
            );
            Json(j).into_response()
        }
        Err(e) => job_error(e),
    }
}

#[derive(Deserialize)]
struct LogsQuery {
    bytes: Option<u32>,
}

/// The most of a job's output one request reads.
const MAX_LOG_BYTES: u32 = 1024 * 1024;

async fn job_logs(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Response {
    let id = match managed_job(&s, &caller, &id, "read the output of") {
        Ok(id) => id,
        Err(r) => return *r,
    };
    let bytes = q.bytes.unwrap_or(64 * 1024).clamp(1, MAX_LOG_BYTES);
    match s.shared.jobs.logs(id, bytes).await {
        Ok(text) => Json(JobLogs { id, text }).into_response(),
        Err(e) => job_error(e),
    }
}

fn token_error(e: TokenError) -> Response {
    let status = match &e {
        TokenError::BadUser(_) => StatusCode::BAD_REQUEST,
        TokenError::Unknown(_) => StatusCode::NOT_FOUND,
        TokenError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(status, e.to_string())
}

async fn tokens(State(s): State<AppState>, Extension(caller): Extension<Caller>) -> Response {
    if let Err(r) = require(&caller, Role::Admin, "listing tokens") {
        return *r;
    }
    Json(s.access.list_tokens()).into_response()
}

async fn create_token(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: String,
) -> Response {
    if let Err(r) = require(&caller, Role::Admin, "creating tokens") {
        return *r;
    }
    let req: CreateToken = match serde_json::from_str(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("bad token request ({{\"user\": ..., \"role\": \"viewer|user|admin\", \"ttl_secs\"?: N}}): {e}"),
            )
        }
    };
    match s.access.create_token(&caller, req).await {
        Ok(made) => {
            audit(
                &s,
                &caller,
                "",
                "token-create",
                format!(
                    "created token {} for {} as {}",
                    made.token.id, made.token.user, made.token.role
                ),
            );
            (StatusCode::CREATED, Json(made)).into_response()
        }
        Err(e) => token_error(e),
    }
}

async fn revoke_token(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = require(&caller, Role::Admin, "revoking tokens") {
        return *r;
    }
    match s.access.revoke_token(&id).await {
        Ok(t) => {
            audit(
                &s,
                &caller,
                "",
                "token-revoke",
                format!("revoked token {} of {}", t.id, t.user),
            );
            Json(t).into_response()
        }
        Err(e) => token_error(e),
    }
}

fn remediation_error(e: RemediationError) -> Response {
    let status = match e {
        RemediationError::UnknownNode(_) => StatusCode::NOT_FOUND,
        RemediationError::NotCordoned(_) => StatusCode::CONFLICT,
        RemediationError::BadReason(_) => StatusCode::BAD_REQUEST,
        RemediationError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(status, e.to_string())
}

async fn drain_node(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: String,
) -> Response {
    if let Err(r) = require(&caller, Role::Admin, "draining a node") {
        return *r;
    }
    let req: DrainRequest = match serde_json::from_str(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("bad drain request (expected {{\"reason\": \"...\"}}): {e}"),
            )
        }
    };
    match s
        .shared
        .remediation
        .drain_by(&name, &req.reason, &caller.user)
        .await
    {
        Ok(c) => {
            audit(
                &s,
                &caller,
                &name,
                "drain",
                format!("drained {name}: {}", req.reason),
            );
            Json(c).into_response()
        }
        Err(e) => remediation_error(e),
    }
}

async fn resume_node(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Response {
    if let Err(r) = require(&caller, Role::Admin, "resuming a node") {
        return *r;
    }
    match s.shared.remediation.resume_by(&name, &caller.user).await {
        Ok(c) => {
            audit(&s, &caller, &name, "resume", format!("resumed {name}"));
            Json(c).into_response()
        }
        Err(e) => remediation_error(e),
    }
}

async fn remediation(State(s): State<AppState>) -> Response {
    Json(s.shared.remediation.view()).into_response()
}

async fn set_paused(s: AppState, caller: Caller, pause: bool) -> Response {
    let what = if pause {
        "pausing remediation"
    } else {
        "resuming remediation"
    };
    if let Err(r) = require(&caller, Role::Admin, what) {
        return *r;
    }
    let by = pause.then_some(caller.user.as_str());
    match s.shared.remediation.set_paused(by, &caller.user).await {
        Ok(v) => {
            let (action, done) = if pause {
                ("remediation-pause", "paused remediation")
            } else {
                ("remediation-resume", "resumed remediation")
            };
            audit(&s, &caller, "", action, done.into());
            Json(v).into_response()
        }
        Err(e) => remediation_error(e),
    }
}

async fn pause_remediation(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Response {
    set_paused(s, caller, true).await
}

async fn unpause_remediation(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Response {
    set_paused(s, caller, false).await
}

async fn plugins(State(s): State<AppState>) -> Response {
    Json(s.shared.registry.plugins()).into_response()
}

async fn metrics(State(s): State<AppState>) -> Response {
    let body = crate::metrics::render(
        &s.shared.registry.snapshot(),
        &stats_view(&s),
        &s.shared.jobs.metrics(),
        &s.shared.remediation.metrics(),
        &s.shared.console.metrics(),
        &s.shared.pools.metrics(),
    );
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_submission_may_leave_spec_fields_out() {
        let body = serde_json::json!({
            "scheduler": "slurm",
            "spec": {"executable": "/bin/hostname", "nodes": 2},
        });
        let req = submit_request(body).unwrap();
        assert_eq!(req.spec.executable, "/bin/hostname");
        assert_eq!(req.spec.nodes, Some(2));
        assert!(req.spec.arguments.is_empty() && req.spec.dependencies.is_empty());
        assert_eq!((req.via, req.dry_run), (None, false));
    }

    #[test]
    fn a_malformed_submission_says_what_the_body_should_look_like() {
        for (body, words) in [
            (serde_json::json!([1]), "must be a JSON object"),
            (serde_json::json!({"scheduler": "slurm"}), "missing `spec`"),
            (
                serde_json::json!({"scheduler": "slurm", "spec": 3}),
                "`spec` must be",
            ),
            (
                serde_json::json!({"spec": {"executable": "x"}}),
                "bad submission: missing field `scheduler`",
            ),
            (
                serde_json::json!({"scheduler": "s", "spec": {"nodes": "two"}}),
                "bad submission",
            ),
        ] {
            let err = submit_request(body.clone()).unwrap_err();
            assert!(err.contains(words), "{body}: {err}");
        }
    }
}
