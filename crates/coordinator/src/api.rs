//! The coordinator's HTTP API (axum), which the `corral` CLI, dashboards and scripts use.
//!
//! | route | what |
//! |---|---|
//! | `GET /healthz` | `ok` while the coordinator runs (never needs a token) |
//! | `GET /api/v1/nodes` | every node ([`NodeView`](corral_proto::api::NodeView)), sorted by name |
//! | `GET /api/v1/nodes/{name}` | one node, 404 if unknown |
//! | `POST /api/v1/nodes/{name}/ping` | round trip through the agent's command path |
//! | `POST /api/v1/nodes/{name}/report` | ask the agent to sample and report now |
//! | `GET /api/v1/events?since=ID&node=NAME&limit=N` | liveness and health events, oldest first |
//! | `GET /api/v1/stats` | coordinator counters and the beat latency histogram, cumulative since start ([`StatsView`](corral_proto::api::StatsView)) |
//! | `POST /api/v1/jobs` | submit `{"scheduler", "spec", "via"?, "dry_run"?}`: 201 and the job, or 200 and the rendered script for a dry run |
//! | `GET /api/v1/jobs` | every job, oldest first, without histories |
//! | `GET /api/v1/jobs/{id}` | one job (`c17`) with its state history, 404 if unknown |
//! | `POST /api/v1/jobs/{id}/cancel` | cancel; a job that already ended is returned as is |
//! | `GET /api/v1/plugins` | every node's scheduler plugins (loaded, with grants, and failed) |
//! | `GET /metrics` | Prometheus / OpenMetrics text |
//!
//! Invariants: binds to loopback unless the config provides a token or TLS (checked in
//! [`crate::config`]); with a token, every route but `/healthz` requires
//! `Authorization: Bearer TOKEN` (compared in constant time). Errors are JSON
//! `{"error": "..."}` with a status code that says what kind of failure it is (for jobs:
//! 404 unknown job or scheduler, 400 a bad request or one the plugin calls invalid, 403
//! denied by the plugin's grants, 409 not possible in the job's phase, 501 unsupported by
//! the plugin, 502/504 the scheduler failed or timed out, 503 no connected host).
//! A submission's `spec` may leave out any field: missing fields take their defaults
//! (empty lists, no value; `JobSpec` is `#[serde(default)]`), so
//! `{"executable": "/bin/hostname"}` is a whole spec.
//!
//! Every route serves clients of the API; none exists for one tool (a client that
//! wants a window of a cumulative counter takes two snapshots).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::commands::CommandError;
use crate::config::ApiSection;
use crate::jobs::{JobError, Submitted};
use crate::Shared;
use corral_proto::api::{JobId, SubmitRequest};
use corral_proto::job::PluginError;
use corral_proto::wire::{Command, CommandOutput};

struct ApiState {
    shared: Arc<Shared>,
    token: Option<String>,
}

type AppState = Arc<ApiState>;

/// Binds and serves the API; returns the bound address and the server task.
pub(crate) async fn serve(
    cfg: &ApiSection,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, JoinHandle<()>)> {
    let token = match &cfg.token_file {
        Some(p) => {
            let t = std::fs::read_to_string(p)
                .with_context(|| format!("reading api.token_file {}", p.display()))?
                .trim()
                .to_string();
            anyhow::ensure!(!t.is_empty(), "api.token_file {} is empty", p.display());
            Some(t)
        }
        None => None,
    };
    let app = router(Arc::new(ApiState { shared, token }));
    let listener = std::net::TcpListener::bind(cfg.listen).with_context(|| {
        format!(
            "binding the HTTP API on {} (set api.listen to a free port)",
            cfg.listen
        )
    })?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let task = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(cert), Some(key)) => {
            let tls = corral_transport::pki::https_server_config(cert, key)?;
            let tls = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(tls));
            let handle = axum_server::Handle::new();
            let server = axum_server::from_tcp_rustls(listener, tls).handle(handle.clone());
            tokio::spawn(async move {
                tokio::spawn(async move {
                    shutdown.cancelled().await;
                    handle.graceful_shutdown(Some(Duration::from_secs(2)));
                });
                if let Err(e) = server.serve(app.into_make_service()).await {
                    tracing::error!(error = %e, "HTTPS API server failed");
                }
            })
        }
        _ => {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            tokio::spawn(async move {
                let served = axum::serve(listener, app)
                    .with_graceful_shutdown(async move { shutdown.cancelled().await })
                    .await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "HTTP API server failed");
                }
            })
        }
    };
    Ok((addr, task))
}

fn router(state: AppState) -> Router {
    let protected = Router::new()
        .route("/api/v1/nodes", get(nodes))
        .route("/api/v1/nodes/{name}", get(node))
        .route("/api/v1/nodes/{name}/ping", post(ping))
        .route("/api/v1/nodes/{name}/report", post(report_now))
        .route("/api/v1/events", get(events))
        .route("/api/v1/stats", get(stats))
        .route("/api/v1/jobs", get(jobs).post(submit))
        .route("/api/v1/jobs/{id}", get(job))
        .route("/api/v1/jobs/{id}/cancel", post(cancel))
        .route("/api/v1/plugins", get(plugins))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(protected)
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such route; see /api/v1/nodes, /api/v1/events, /api/v1/jobs, /api/v1/plugins, /metrics".into(),
            )
        })
        .with_state(state)
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(expected) = &state.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !constant_time_eq(given.as_bytes(), expected.as_bytes()) {
            return error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token (CLI: set CORRAL_TOKEN or --token-file)".into(),
            );
        }
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn nodes(State(s): State<AppState>) -> Response {
    Json(s.shared.registry.snapshot()).into_response()
}

fn unknown(name: &str) -> Response {
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

async fn ping(State(s): State<AppState>, Path(name): Path<String>) -> Response {
    if s.shared.registry.get(&name).is_none() {
        return unknown(&name);
    }
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

async fn report_now(State(s): State<AppState>, Path(name): Path<String>) -> Response {
    if s.shared.registry.get(&name).is_none() {
        return unknown(&name);
    }
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
    limit: Option<usize>,
}

async fn events(State(s): State<AppState>, Query(q): Query<EventQuery>) -> Response {
    let limit = q.limit.unwrap_or(1000).min(100_000);
    Json(s.shared.registry.events(q.since, q.node.as_deref(), limit)).into_response()
}

async fn stats(State(s): State<AppState>) -> Response {
    Json(s.shared.registry.stats_view()).into_response()
}

fn job_error(e: JobError) -> Response {
    let status = match &e {
        JobError::NoScheduler(_) | JobError::NoJob(_) => StatusCode::NOT_FOUND,
        JobError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        JobError::Invalid(_) => StatusCode::BAD_REQUEST,
        JobError::Conflict(_) => StatusCode::CONFLICT,
        JobError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
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

async fn submit(State(s): State<AppState>, body: String) -> Response {
    let req = match serde_json::from_str::<serde_json::Value>(&body)
        .map_err(|e| format!("the body is not JSON: {e}"))
        .and_then(submit_request)
    {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match s.shared.jobs.submit(req).await {
        Ok(Submitted::Job(job)) => (StatusCode::CREATED, Json(job)).into_response(),
        Ok(Submitted::DryRun(rendered)) => Json(rendered).into_response(),
        Err(e) => job_error(e),
    }
}

async fn jobs(State(s): State<AppState>) -> Response {
    Json(s.shared.jobs.list()).into_response()
}

async fn job(State(s): State<AppState>, Path(id): Path<String>) -> Response {
    let id = match parse_job_id(&id) {
        Ok(id) => id,
        Err(e) => return error(StatusCode::NOT_FOUND, e),
    };
    match s.shared.jobs.get(id) {
        Some(j) => Json(j).into_response(),
        None => job_error(JobError::NoJob(id)),
    }
}

async fn cancel(State(s): State<AppState>, Path(id): Path<String>) -> Response {
    let id = match parse_job_id(&id) {
        Ok(id) => id,
        Err(e) => return error(StatusCode::NOT_FOUND, e),
    };
    match s.shared.jobs.cancel(id).await {
        Ok(j) => Json(j).into_response(),
        Err(e) => job_error(e),
    }
}

async fn plugins(State(s): State<AppState>) -> Response {
    Json(s.shared.registry.plugins()).into_response()
}

async fn metrics(State(s): State<AppState>) -> Response {
    let body = crate::metrics::render(
        &s.shared.registry.snapshot(),
        &s.shared.registry.stats_view(),
        &s.shared.jobs.metrics(),
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
