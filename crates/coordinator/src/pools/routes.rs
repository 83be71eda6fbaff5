//! The pools' HTTP API: reading pools (viewer), pausing and resuming them and making
//! join tokens (admin), and `POST /api/v1/join`, the one route authenticated by a join
//! token instead of a caller's credential.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};

use super::join::JoinError;
use super::PoolError;
use crate::access::Caller;
use crate::api::{audit, error, require, AppState};
use corral_proto::api::Role;
use corral_proto::pool::{CreateJoinToken, JoinRequest};

/// Routes behind the API's authentication.
pub(crate) fn protected_routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/pools", get(pools))
        .route("/api/v1/pools/{name}", get(pool))
        .route("/api/v1/pools/{name}/pause", post(pause))
        .route("/api/v1/pools/{name}/resume", post(resume))
        .route(
            "/api/v1/join-tokens",
            get(join_tokens).post(create_join_token),
        )
        .route("/api/v1/join-tokens/{id}/revoke", post(revoke_join_token))
}

/// Routes a joining node reaches with its token alone.
pub(crate) fn public_routes() -> Router<AppState> {
    Router::new().route("/api/v1/join", post(join))
}

fn pool_error(e: PoolError) -> Response {
    let status = match &e {
        PoolError::Unknown(..) => StatusCode::NOT_FOUND,
        PoolError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        PoolError::Join(j) => join_status(j),
    };
    error(status, e.to_string())
}

fn join_status(e: &JoinError) -> StatusCode {
    match e {
        JoinError::BadToken
        | JoinError::Expired(_)
        | JoinError::Used { .. }
        | JoinError::Revoked(_) => StatusCode::UNAUTHORIZED,
        JoinError::NoCa => StatusCode::NOT_IMPLEMENTED,
        JoinError::BadRequest(_) => StatusCode::BAD_REQUEST,
        JoinError::Unknown(_) => StatusCode::NOT_FOUND,
        JoinError::Failed(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

async fn pools(State(s): State<AppState>) -> Response {
    Json(s.shared.pools.summaries()).into_response()
}

async fn pool(State(s): State<AppState>, Path(name): Path<String>) -> Response {
    match s.shared.pools.view(&name) {
        Ok(v) => Json(v).into_response(),
        Err(e) => pool_error(e),
    }
}

async fn pause(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Response {
    set_paused(s, caller, name, true).await
}

async fn resume(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Response {
    set_paused(s, caller, name, false).await
}

async fn set_paused(s: AppState, caller: Caller, name: String, pause: bool) -> Response {
    let what = if pause {
        "pausing a pool"
    } else {
        "resuming a pool"
    };
    if let Err(r) = require(&caller, Role::Admin, what) {
        return *r;
    }
    let by = caller.describe();
    match s
        .shared
        .pools
        .set_paused(&name, pause.then_some(by.as_str()))
        .await
    {
        Ok(summary) => {
            audit(
                &s,
                &caller,
                "",
                if pause { "pool-pause" } else { "pool-resume" },
                format!("{} pool {name}", if pause { "paused" } else { "resumed" }),
            );
            Json(summary).into_response()
        }
        Err(e) => pool_error(e),
    }
}

async fn join_tokens(State(s): State<AppState>, Extension(caller): Extension<Caller>) -> Response {
    if let Err(r) = require(&caller, Role::Admin, "listing join tokens") {
        return *r;
    }
    Json(s.shared.pools.tokens.list()).into_response()
}

async fn create_join_token(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: String,
) -> Response {
    if let Err(r) = require(&caller, Role::Admin, "creating join tokens") {
        return *r;
    }
    let req: CreateJoinToken = match serde_json::from_str(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                "bad join token request ({{\"pool\": ..., \"ttl_secs\": N, \"node\"?: ...}}): {e}"
            ),
            )
        }
    };
    match s
        .shared
        .pools
        .create_join_token(
            &req.pool,
            req.node,
            Duration::from_secs(req.ttl_secs),
            &caller.describe(),
        )
        .await
    {
        Ok(made) => {
            audit(
                &s,
                &caller,
                made.token.node.as_deref().unwrap_or(""),
                "join-token-create",
                format!(
                    "created join token {} for pool {} ({})",
                    made.token.id,
                    made.token.pool,
                    made.token.node.as_deref().unwrap_or("a node named at join")
                ),
            );
            (StatusCode::CREATED, Json(made)).into_response()
        }
        Err(e) => pool_error(e),
    }
}

async fn revoke_join_token(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = require(&caller, Role::Admin, "revoking join tokens") {
        return *r;
    }
    match s.shared.pools.tokens.revoke(&id).await {
        Ok(v) => {
            audit(
                &s,
                &caller,
                "",
                "join-token-revoke",
                format!("revoked join token {id}"),
            );
            Json(v).into_response()
        }
        Err(e) => error(join_status(&e), e.to_string()),
    }
}

async fn join(State(s): State<AppState>, body: String) -> Response {
    let req: JoinRequest = match serde_json::from_str(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("bad join request ({{\"token\": ..., \"csr_pem\": ...}}): {e}; `corral join` sends one"),
            )
        }
    };
    match s.shared.pools.join(&req.token, &req.csr_pem).await {
        Ok(answer) => Json(answer).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "a join was refused");
            pool_error(e)
        }
    }
}
