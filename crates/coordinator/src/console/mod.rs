//! The web console: the cluster in a browser, served by the coordinator on its API
//! listener.
//!
//! | route | role | what |
//! |---|---|---|
//! | `GET /`, `/nodes`, `/nodes/{name}`, `/gpus`, `/jobs`, `/jobs/{id}`, `/events`, `/login` | none | the page shell (static; every datum comes from the API below) |
//! | `GET /ui/app.js`, `/ui/style.css` | none | the console's script and style, embedded in the binary |
//! | `POST /ui/login` | none | `{"token"}` or `{"certificate": true}` → a session cookie and the CSRF token ([`session`]) |
//! | `POST /ui/logout` | session | ends the session |
//! | `GET /api/v1/console/stream` | viewer | server-sent events: a snapshot of every node, then deltas ([`feed`]) |
//! | `GET /api/v1/nodes/{name}/history` | viewer | the node's last hour for the charts ([`history`]) |
//!
//! The stack, and why: a static shell, one hand-written script and one stylesheet, no
//! framework and no build step. Everything a page shows comes from the same JSON API the
//! CLI uses, plus the feed; the script renders it with the DOM (never `innerHTML` with
//! data: node names, reasons and job names are input from the network). Nothing needs
//! npm or a download at build time, the assets are reviewed like the Rust code, and
//! they weigh tens of kilobytes (BENCHMARKS.md). A 10,000-row table is virtualized and
//! the GPU grid is one canvas, which is what keeps first render under a second, not a
//! framework's diffing.
//!
//! Invariants:
//! - The shell and assets are public (they hold nothing), and everything else is the
//!   API's: authenticated and authorized per request ([`crate::access`]). The console is
//!   one more client of the API and can do nothing the caller's role does not allow;
//!   its buttons are hidden for roles that lack them, and the API refuses a forged one.
//! - Every response the console serves carries a strict Content-Security-Policy (no
//!   inline script or style, no other origin), `X-Frame-Options: DENY` and `nosniff`.
//! - Assets are served with a content hash as their ETag and `no-cache`, so a new
//!   binary's assets are seen at once and an unchanged one costs a 304.
//! - No page polls whole snapshots: the nodes, GPUs and events arrive through the feed,
//!   and a page fetches one node, one job or one filtered list on demand.

pub(crate) mod feed;
pub(crate) mod history;
pub(crate) mod session;

use std::convert::Infallible;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use corral_proto::api::{LoginRequest, Role, WhoAmI};
use futures_util::stream;
use sha2::{Digest, Sha256};

use crate::access::Caller;
use crate::api::{error, require, AppState};
use session::{Proof, Sessions};

/// What the console keeps: sessions, the live feed and the chart history.
pub(crate) struct Console {
    pub sessions: Sessions,
    pub feed: Arc<feed::Feed>,
    pub history: history::History,
}

impl Console {
    pub(crate) fn new() -> Console {
        Console {
            sessions: Sessions::new(),
            feed: Arc::new(feed::Feed::new()),
            history: history::History::new(),
        }
    }
}

/// What `/metrics` shows of the console.
#[derive(Debug, Clone, Default)]
pub(crate) struct ConsoleMetrics {
    pub streams: usize,
    pub sessions: usize,
    pub bytes_sent: u64,
    pub deltas: u64,
    pub history_nodes: usize,
}

impl Console {
    pub(crate) fn metrics(&self) -> ConsoleMetrics {
        use std::sync::atomic::Ordering::Relaxed;
        ConsoleMetrics {
            streams: self.feed.streams(),
            sessions: self.sessions.len(),
            bytes_sent: self.feed.bytes_sent.load(Relaxed),
            deltas: self.feed.deltas.load(Relaxed),
            history_nodes: self.history.len(),
        }
    }
}

/// One embedded asset.
struct Asset {
    body: &'static str,
    content_type: &'static str,
    etag: String,
}

impl Asset {
    fn new(body: &'static str, content_type: &'static str) -> Asset {
        let digest = Sha256::digest(body.as_bytes());
        let etag = format!(
            "\"{}\"",
            digest[..12]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        Asset {
            body,
            content_type,
            etag,
        }
    }
}

static SHELL: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        include_str!("assets/index.html"),
        "text/html; charset=utf-8",
    )
});
static SCRIPT: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        include_str!("assets/app.js"),
        "text/javascript; charset=utf-8",
    )
});
static STYLE: LazyLock<Asset> =
    LazyLock::new(|| Asset::new(include_str!("assets/style.css"), "text/css; charset=utf-8"));

/// The console's Content-Security-Policy: this origin's script, style and API only.
pub(crate) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// Headers every console response carries.
fn harden(resp: &mut Response) {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

fn serve(asset: &Asset, headers: &HeaderMap) -> Response {
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == asset.etag));
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, asset.content_type)], asset.body).into_response()
    };
    if let Ok(etag) = HeaderValue::from_str(&asset.etag) {
        resp.headers_mut().insert(header::ETAG, etag);
    }
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    harden(&mut resp);
    resp
}

async fn shell(headers: HeaderMap) -> Response {
    serve(&SHELL, &headers)
}

/// The bytes of each asset, for BENCHMARKS.md and the size test.
pub fn asset_sizes() -> [(&'static str, usize); 3] {
    [
        ("index.html", SHELL.body.len()),
        ("app.js", SCRIPT.body.len()),
        ("style.css", STYLE.body.len()),
    ]
}

/// Routes anyone may fetch: the shell, the assets and the login.
pub(crate) fn public_routes() -> Router<AppState> {
    let mut r = Router::new();
    for page in [
        "/",
        "/nodes",
        "/nodes/{name}",
        "/gpus",
        "/jobs",
        "/jobs/{id}",
        "/events",
        "/login",
    ] {
        r = r.route(page, get(shell));
    }
    r.route(
        "/ui/app.js",
        get(|h: HeaderMap| async move { serve(&SCRIPT, &h) }),
    )
    .route(
        "/ui/style.css",
        get(|h: HeaderMap| async move { serve(&STYLE, &h) }),
    )
    .route("/ui/login", post(login))
}

/// Routes behind the API's authentication.
pub(crate) fn protected_routes() -> Router<AppState> {
    Router::new()
        .route("/ui/logout", post(logout))
        .route("/api/v1/console/stream", get(stream_feed))
        .route("/api/v1/nodes/{name}/history", get(node_history))
}

fn whoami(caller: &Caller, csrf: Option<String>) -> WhoAmI {
    WhoAmI {
        user: caller.user.clone(),
        role: caller.role,
        via: caller.via.clone(),
        csrf,
    }
}

/// `POST /ui/login`: proves who the browser's user is once and starts a session.
async fn login(State(s): State<AppState>, req: axum::extract::Request) -> Response {
    let chain = crate::api::certified_chain(&req);
    let body = match axum::body::to_bytes(req.into_body(), 16 * 1024).await {
        Ok(b) => b,
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the login body is over 16 KiB; it is a token or {\"certificate\": true}".into(),
            )
        }
    };
    let req: LoginRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("the login body must be {{\"token\": \"corral_...\"}} or {{\"certificate\": true}}: {e}"),
            )
        }
    };
    let (caller, proof) = match (req.token.as_deref().map(str::trim), req.certificate) {
        (Some(token), false) if !token.is_empty() => match s.access.bearer(token) {
            Ok(c) => (c, Proof::Token),
            Err(e) => {
                tracing::info!(error = %e, "console login refused");
                return error(StatusCode::UNAUTHORIZED, e.to_string());
            }
        },
        (None, true) => match chain {
            Some(chain) => match crate::api::certificate_caller(&s, &chain) {
                Ok(c) => (c, Proof::Certificate(chain[0].clone())),
                Err(message) => return error(StatusCode::FORBIDDEN, message),
            },
            None => {
                return error(
                    StatusCode::UNAUTHORIZED,
                    "no operator certificate came with this connection: open the console over the HTTPS listener with your certificate loaded in the browser, or log in with a token".into(),
                )
            }
        },
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "give either a token or \"certificate\": true".into(),
            )
        }
    };
    let (cookie, session) = match s.shared.console.sessions.create(caller.clone(), proof) {
        Ok(made) => made,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    // Logged, not an audit event: a login changes nothing, and events are a bounded
    // history that logins must not be able to flush.
    tracing::info!(user = %caller.user, role = %caller.role, via = %caller.describe(), "console login");
    let mut resp = Json(whoami(&caller, Some(session.csrf))).into_response();
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(Some(&cookie), s.https)) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// `POST /ui/logout`.
async fn logout(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(cookie) = session::cookie_of(&headers) {
        s.shared.console.sessions.end(&cookie);
    }
    let mut resp = Json(serde_json::json!({ "logged_out": true })).into_response();
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(None, s.https)) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

/// `GET /api/v1/console/stream`: the feed as server-sent events. The stream ends when
/// its caller's credential no longer holds (checked every [`feed::RECHECK`]), when the
/// console falls behind (after `resync`), or when the coordinator stops.
async fn stream_feed(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    req: axum::extract::Request,
) -> Response {
    // What EventSource sends; an <img> or <script> pointed here by another page does not.
    let wants_events = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if !wants_events {
        return error(
            StatusCode::NOT_ACCEPTABLE,
            "the console feed is server-sent events: ask with Accept: text/event-stream".into(),
        );
    }
    let credential = crate::api::Credential::of(&req, &caller);
    let sub = match s
        .shared
        .console
        .feed
        .subscribe(&s.shared.registry, &caller.user)
    {
        Ok(sub) => sub,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    let first = sub.snapshot.clone();
    let state = s.clone();
    let mut recheck = tokio::time::interval(feed::RECHECK);
    recheck.reset();
    // The snapshot, then each delta.
    let events = stream::unfold((Some(first), Some((sub, recheck))), move |(first, live)| {
        // Checked before every message after the snapshot, and at least every
        // RECHECK (the tick below sends a comment, which comes back through here).
        let holds = credential.holds(&state);
        let state = state.clone();
        async move {
            if let Some(m) = first {
                return Some((Ok::<_, Infallible>(sse(&m)), (None, live)));
            }
            let (mut sub, mut recheck) = live?;
            if let Err(why) = holds {
                tracing::info!(user = %sub.user, error = %why, "console stream ended: its credential no longer holds");
                return None;
            }
            tokio::select! {
                m = sub.rx.recv() => match m {
                    Ok(m) => Some((Ok(sse(&m)), (None, Some((sub, recheck))))),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::info!(behind = n, user = %sub.user, "console fell behind the feed; asking it to resync");
                        Some((Ok(SseEvent::default().event("resync").data("{}")), (None, None)))
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => None,
                },
                // Also the keep-alive that lets a dead connection be noticed.
                _ = recheck.tick() => {
                    Some((Ok(SseEvent::default().comment("")), (None, Some((sub, recheck)))))
                }
                _ = state.shutdown.cancelled() => None,
            }
        }
    });
    let mut resp = Sse::new(events).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Reverse proxies (nginx) must not buffer the stream.
    resp.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

fn sse(m: &feed::Message) -> SseEvent {
    SseEvent::default().event(m.event).data(&m.data)
}

/// `GET /api/v1/nodes/{name}/history`.
async fn node_history(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Response {
    if let Err(r) = require(&caller, Role::Viewer, "reading a node's history") {
        return *r;
    }
    let now = corral_proto::model::unix_ms();
    match s.shared.console.history.of(&name, now) {
        Some(h) => Json(h).into_response(),
        None if s.shared.registry.get(&name).is_some() => Json(corral_proto::api::NodeHistory {
            node: name,
            step_s: history::STEP_S as u32,
            end_ms: (now / 1000 / history::STEP_S + 1) * history::STEP_S * 1000,
            cpu: vec![None; history::POINTS],
            mem: vec![None; history::POINTS],
            gpus: vec![],
        })
        .into_response(),
        None => crate::api::unknown(&name),
    }
}

/// The console's background work until shutdown: the feed every [`feed::TICK`], and
/// the chart history pruned every minute.
pub(crate) async fn run(
    console: Arc<Console>,
    registry: Arc<crate::registry::Registry>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let pruner = {
        let console = console.clone();
        let shutdown = shutdown.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = tick.tick() => console.history.prune(corral_proto::model::unix_ms()),
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    };
    tokio::join!(console.feed.clone().run(registry, shutdown), pruner);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_script_and_style_stay_under_150_kb() {
        let [(_, html), (_, js), (_, css)] = asset_sizes();
        assert!(html < 4 * 1024, "index.html is {html} bytes");
        assert!(
            js + css < 150 * 1024,
            "app.js + style.css are {} bytes",
            js + css
        );
    }

    #[test]
    fn the_shell_loads_nothing_inline_and_nothing_from_elsewhere() {
        let html = SHELL.body;
        assert!(html.contains("src=\"/ui/app.js\""));
        assert!(html.contains("href=\"/ui/style.css\""));
        for bad in [
            "<script>", "style=\"", "http://", "https://", "onload=", "onclick=",
        ] {
            assert!(!html.contains(bad), "index.html contains {bad:?}");
        }
        for src in [SCRIPT.body, STYLE.body] {
            // The SVG namespace is a name, not a place anything is fetched from.
            let src = src.replace("http://www.w3.org/2000/svg", "");
            assert!(
                !src.contains("http://") && !src.contains("https://"),
                "an asset names another origin"
            );
        }
    }
}
