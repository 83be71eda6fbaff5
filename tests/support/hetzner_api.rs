//! A stand-in for the Hetzner Cloud API (harness only; NOT the real service).
//!
//! An axum server on `127.0.0.1:0` with the few endpoints the `hetzner` provider plugin
//! uses, shaped after the API's documentation: `POST /v1/servers`, `GET /v1/servers`
//! (`label_selector`, `name`, `page`, `per_page`, with `meta.pagination`),
//! `GET /v1/servers/{id}`, `DELETE /v1/servers/{id}` and `GET /v1/actions/{id}`, errors
//! as `{"error":{"code","message","details"}}`, and the `RateLimit-*` headers on every
//! answer. Servers and actions live in memory; an action answers `running` for
//! [`HetznerApi::set_action_running_polls`] checks, then finishes (a create's server
//! then turns `running`). Everything else about the real service (prices, images,
//! networks that exist, real rate limits, eventual consistency) is not modelled: what
//! passes here says the plugin speaks the documented protocol, not that Hetzner answers
//! this way in every case.
//!
//! The test sets faults at runtime: the next N requests answer 429 (with
//! `RateLimit-Limit`, `RateLimit-Remaining: 0`, `RateLimit-Reset`), the next N answer a
//! 5xx, the next create's action fails with an error code and message. Every request is
//! recorded (method, path, query, whether it carried an `Authorization` header), faulted
//! ones too, for assertions on what the plugin sent.
//!
//! The server runs on its own thread with its own tokio runtime, so it serves a plain
//! `#[test]` and a `#[tokio::test(flavor = "multi_thread")]` alike; it stops when the
//! [`HetznerApi`] is dropped.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::{json, Value};

/// The API token the fake accepts (`Authorization: Bearer TOKEN`).
pub const TOKEN: &str = "fake-hcloud-token-7c41d09e";
/// `RateLimit-Limit` on every answer.
pub const RATE_LIMIT: u64 = 3600;

/// A server as the fake keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeServer {
    pub id: u64,
    pub name: String,
    /// Hetzner's status word (`initializing`, `running`, ...).
    pub status: String,
    pub server_type: String,
    pub image: String,
    pub location: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub user_data: Option<String>,
    /// The create body's `ssh_keys`, `networks`, `firewalls` (JSON `null` when absent).
    pub ssh_keys: Value,
    pub networks: Value,
    pub firewalls: Value,
    /// RFC 3339, as the API writes it.
    pub created: String,
    pub created_ms: u64,
}

/// One request the fake received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub method: String,
    /// The path, `/v1/...`, without the query.
    pub path: String,
    pub query: String,
    /// Whether an `Authorization` header came with it (its value is not kept).
    pub authorized: bool,
}

#[derive(Debug, Clone)]
struct FakeAction {
    id: u64,
    command: String,
    server: u64,
    started: String,
    /// Checks still answered `running`.
    running_polls: u32,
    /// `Some` once finished: `Ok` success, `Err((code, message))` error.
    finished: Option<Result<(), (String, String)>>,
    fail_with: Option<(String, String)>,
}

#[derive(Debug)]
struct Inner {
    servers: BTreeMap<u64, FakeServer>,
    actions: BTreeMap<u64, FakeAction>,
    next_id: u64,
    requests: Vec<Recorded>,
    rate_limited: u32,
    rate_limit_reset: Duration,
    failing: u32,
    failing_status: u16,
    fail_next_create: Option<(String, String)>,
    action_running_polls: u32,
    page_size: usize,
}

type Shared = Arc<Mutex<Inner>>;

/// The running fake. Dropping it stops the server.
pub struct HetznerApi {
    addr: SocketAddr,
    state: Shared,
    _server: super::stub_http::StubServer,
}

impl HetznerApi {
    /// Starts the fake on `127.0.0.1:0`: no servers, no faults, list pages of 2.
    pub fn start() -> HetznerApi {
        let state: Shared = Arc::new(Mutex::new(Inner {
            servers: BTreeMap::new(),
            actions: BTreeMap::new(),
            next_id: 100,
            requests: Vec::new(),
            rate_limited: 0,
            rate_limit_reset: Duration::from_secs(30),
            failing: 0,
            failing_status: 503,
            fail_next_create: None,
            action_running_polls: 0,
            page_size: 2,
        }));
        let app = Router::new().fallback(handle).with_state(state.clone());
        let server = super::stub_http::StubServer::start("fake-hetzner-api", app);
        let addr = SocketAddr::from(([127, 0, 0, 1], server.port()));
        HetznerApi {
            addr,
            state,
            _server: server,
        }
    }

    /// The API's base URL (`http://127.0.0.1:PORT/v1`), the plugin's `api_url`.
    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The token the fake accepts.
    pub fn token(&self) -> &'static str {
        TOKEN
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    /// The next `n` requests answer 429 `rate_limit_exceeded`, `RateLimit-Remaining: 0`
    /// and `RateLimit-Reset` `reset_in` from now (Unix seconds).
    pub fn rate_limit_next(&self, n: u32, reset_in: Duration) {
        self.with(|s| {
            s.rate_limited = n;
            s.rate_limit_reset = reset_in;
        })
    }

    /// The next `n` requests answer `status` (a 5xx) with Hetzner's error JSON.
    pub fn fail_next(&self, n: u32, status: u16) {
        self.with(|s| {
            s.failing = n;
            s.failing_status = status;
        })
    }

    /// The next create's `create_server` action ends in `error` with `code`/`message`.
    pub fn fail_next_create(&self, code: &str, message: &str) {
        self.with(|s| s.fail_next_create = Some((code.into(), message.into())))
    }

    /// How many checks of an action answer `running` before it finishes (default 0: the
    /// first check finishes it).
    pub fn set_action_running_polls(&self, n: u32) {
        self.with(|s| s.action_running_polls = n)
    }

    /// The most servers a list page holds, whatever `per_page` asks (default 2).
    pub fn set_page_size(&self, n: usize) {
        self.with(|s| s.page_size = n.max(1))
    }

    /// Adds a server that did not come through the API (another pool's, one made by
    /// hand), `running`; returns its id.
    pub fn add_server(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.with(|s| {
            let id = s.new_id();
            let server = FakeServer {
                id,
                name: name.into(),
                status: "running".into(),
                server_type: "cx22".into(),
                image: "ubuntu-24.04".into(),
                location: Some("fsn1".into()),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                user_data: None,
                ssh_keys: Value::Null,
                networks: Value::Null,
                firewalls: Value::Null,
                created: rfc3339(now_ms()),
                created_ms: now_ms() / 1000 * 1000,
            };
            s.servers.insert(id, server);
            id
        })
    }

    /// The servers that exist now, by id.
    pub fn servers(&self) -> Vec<FakeServer> {
        self.with(|s| s.servers.values().cloned().collect())
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.with(|s| s.requests.clone())
    }
}

impl Inner {
    fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn new_action(
        &mut self,
        command: &str,
        server: u64,
        fail_with: Option<(String, String)>,
    ) -> u64 {
        let id = self.new_id();
        let action = FakeAction {
            id,
            command: command.into(),
            server,
            started: rfc3339(now_ms()),
            running_polls: self.action_running_polls,
            finished: None,
            fail_with,
        };
        self.actions.insert(id, action);
        id
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `ms` since the epoch as the API writes times: `2016-01-30T23:50:00+00:00`.
fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}+00:00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn error(status: StatusCode, code: &str, message: &str) -> (StatusCode, Value) {
    (
        status,
        json!({"error": {"code": code, "message": message, "details": null}}),
    )
}

fn server_json(s: &FakeServer) -> Value {
    json!({
        "id": s.id,
        "name": s.name,
        "status": s.status,
        "created": s.created,
        "labels": s.labels,
        "locked": false,
        "protection": {"delete": false, "rebuild": false},
        "server_type": {"name": s.server_type, "architecture": "x86"},
        "image": {"name": s.image, "type": "system"},
        "datacenter": {"location": {"name": s.location.clone().unwrap_or_else(|| "fsn1".into())}},
        "public_net": {
            "ipv4": {"id": s.id, "ip": "192.0.2.10", "blocked": false},
            "ipv6": {"id": s.id, "ip": "2001:db8::/64", "blocked": false},
            "floating_ips": [],
            "firewalls": []
        },
        "private_net": [],
        "volumes": [],
        "load_balancers": [],
        "backup_window": null,
        "rescue_enabled": false,
        "primary_disk_size": 40
    })
}

fn action_json(a: &FakeAction) -> Value {
    let (status, progress, error, finished) = match &a.finished {
        None => ("running", 50, Value::Null, Value::Null),
        Some(Ok(())) => ("success", 100, Value::Null, json!(rfc3339(now_ms()))),
        Some(Err((code, message))) => (
            "error",
            100,
            json!({"code": code, "message": message}),
            json!(rfc3339(now_ms())),
        ),
    };
    json!({
        "id": a.id,
        "command": a.command,
        "status": status,
        "progress": progress,
        "started": a.started,
        "finished": finished,
        "resources": [{"id": a.server, "type": "server"}],
        "error": error
    })
}

/// Whether `labels` satisfy a Hetzner label selector (`k=v`, `k==v`, `k!=v`, `k`, `!k`,
/// comma-separated, all must hold).
fn selected(labels: &BTreeMap<String, String>, selector: &str) -> bool {
    selector
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .all(|e| {
            if let Some((k, v)) = e.split_once("!=") {
                labels.get(k.trim()).map(String::as_str) != Some(v.trim())
            } else if let Some((k, v)) = e.split_once("==").or_else(|| e.split_once('=')) {
                labels.get(k.trim()).map(String::as_str) == Some(v.trim())
            } else if let Some(k) = e.strip_prefix('!') {
                !labels.contains_key(k.trim())
            } else {
                labels.contains_key(e)
            }
        })
}

async fn handle(
    State(state): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let now_secs = now_ms() / 1000;
    let mut s = state.lock().unwrap();
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    s.requests.push(Recorded {
        method: method.to_string(),
        path: uri.path().to_string(),
        query: uri.query().unwrap_or("").to_string(),
        authorized: auth.is_some(),
    });
    let mut remaining = RATE_LIMIT - 1;
    let mut reset = now_secs + 1;
    let (status, value) = if s.rate_limited > 0 {
        s.rate_limited -= 1;
        remaining = 0;
        reset = now_secs + s.rate_limit_reset.as_secs();
        error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_exceeded",
            "limit of 3600 requests per hour reached",
        )
    } else if s.failing > 0 {
        s.failing -= 1;
        let status =
            StatusCode::from_u16(s.failing_status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        error(
            status,
            "service_error",
            "the fake Hetzner API was told to fail this request",
        )
    } else if auth.as_deref() != Some(&format!("Bearer {TOKEN}")) {
        error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "unable to authenticate",
        )
    } else {
        let query: Vec<(String, String)> = Query::try_from_uri(&uri)
            .map(|Query(q)| q)
            .unwrap_or_default();
        route(&mut s, &method, uri.path(), &query, &body)
    };
    drop(s);
    let mut resp = (status, Json(value)).into_response();
    let h = resp.headers_mut();
    h.insert("ratelimit-limit", HeaderValue::from(RATE_LIMIT));
    h.insert("ratelimit-remaining", HeaderValue::from(remaining));
    h.insert("ratelimit-reset", HeaderValue::from(reset));
    resp
}

fn route(
    s: &mut Inner,
    method: &Method,
    path: &str,
    query: &[(String, String)],
    body: &[u8],
) -> (StatusCode, Value) {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let id = |p: &str| p.parse::<u64>().ok();
    match (method.as_str(), parts.as_slice()) {
        ("GET", ["v1", "servers"]) => list(s, query),
        ("POST", ["v1", "servers"]) => create(s, body),
        ("GET", ["v1", "servers", sid]) => match id(sid).and_then(|i| s.servers.get(&i)) {
            Some(server) => (StatusCode::OK, json!({"server": server_json(server)})),
            None => not_found("server", sid),
        },
        ("DELETE", ["v1", "servers", sid]) => match id(sid).filter(|i| s.servers.contains_key(i)) {
            Some(i) => {
                s.servers.remove(&i);
                let a = s.new_action("delete_server", i, None);
                (
                    StatusCode::OK,
                    json!({"action": action_json(&s.actions[&a])}),
                )
            }
            None => not_found("server", sid),
        },
        ("GET", ["v1", "actions", aid]) => match id(aid).filter(|i| s.actions.contains_key(i)) {
            Some(i) => {
                let a = s.actions.get_mut(&i).unwrap();
                if a.finished.is_none() {
                    if a.running_polls > 0 {
                        a.running_polls -= 1;
                    } else {
                        a.finished = Some(match a.fail_with.clone() {
                            Some(e) => Err(e),
                            None => Ok(()),
                        });
                    }
                }
                let a = a.clone();
                if a.command == "create_server" && a.finished == Some(Ok(())) {
                    if let Some(server) = s.servers.get_mut(&a.server) {
                        server.status = "running".into();
                    }
                }
                (StatusCode::OK, json!({"action": action_json(&a)}))
            }
            None => not_found("action", aid),
        },
        _ => error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no route {method} {path}"),
        ),
    }
}

fn not_found(what: &str, id: &str) -> (StatusCode, Value) {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        &format!("{what} with ID '{id}' not found"),
    )
}

fn list(s: &Inner, query: &[(String, String)]) -> (StatusCode, Value) {
    let q = |k: &str| query.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let num = |k: &str, d: usize| q(k).and_then(|v| v.parse::<usize>().ok()).unwrap_or(d);
    let per_page = num("per_page", 25).clamp(1, 50).min(s.page_size);
    let page = num("page", 1).max(1);
    let all: Vec<&FakeServer> = s
        .servers
        .values()
        .filter(|srv| q("label_selector").is_none_or(|sel| selected(&srv.labels, sel)))
        .filter(|srv| q("name").is_none_or(|n| srv.name == n))
        .collect();
    let last = all.len().div_ceil(per_page).max(1);
    let servers: Vec<Value> = all
        .iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .map(|srv| server_json(srv))
        .collect();
    (
        StatusCode::OK,
        json!({
            "servers": servers,
            "meta": {"pagination": {
                "page": page,
                "per_page": per_page,
                "previous_page": if page > 1 { json!(page - 1) } else { Value::Null },
                "next_page": if page < last { json!(page + 1) } else { Value::Null },
                "last_page": last,
                "total_entries": all.len()
            }}
        }),
    )
}

fn create(s: &mut Inner, body: &[u8]) -> (StatusCode, Value) {
    let Ok(req) = serde_json::from_slice::<Value>(body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "json_error",
            "invalid JSON in request body",
        );
    };
    let text = |k: &str| req.get(k).and_then(Value::as_str).map(str::to_string);
    let (Some(name), Some(server_type), Some(image)) =
        (text("name"), text("server_type"), text("image"))
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_input",
            "name, server_type and image are required",
        );
    };
    let mut labels = BTreeMap::new();
    if let Some(map) = req.get("labels") {
        let Some(map) = map.as_object() else {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_input",
                "labels must be an object",
            );
        };
        for (k, v) in map {
            let Some(v) = v.as_str() else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_input",
                    "label values must be strings",
                );
            };
            labels.insert(k.clone(), v.to_string());
        }
    }
    if s.servers.values().any(|srv| srv.name == name) {
        return (
            StatusCode::CONFLICT,
            json!({"error": {
                "code": "uniqueness_error",
                "message": "server name is already used",
                "details": {"fields": [{"name": "name"}]}
            }}),
        );
    }
    let id = s.new_id();
    let ms = now_ms();
    let server = FakeServer {
        id,
        name,
        status: "initializing".into(),
        server_type,
        image,
        location: text("location"),
        labels,
        user_data: text("user_data"),
        ssh_keys: req.get("ssh_keys").cloned().unwrap_or(Value::Null),
        networks: req.get("networks").cloned().unwrap_or(Value::Null),
        firewalls: req.get("firewalls").cloned().unwrap_or(Value::Null),
        created: rfc3339(ms),
        created_ms: ms / 1000 * 1000,
    };
    let fail = s.fail_next_create.take();
    let create = s.new_action("create_server", id, fail);
    let start = s.new_action("start_server", id, None);
    let answer = json!({
        "server": server_json(&server),
        "action": action_json(&s.actions[&create]),
        "next_actions": [action_json(&s.actions[&start])],
        "root_password": null
    });
    s.servers.insert(id, server);
    (StatusCode::CREATED, answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_written_as_the_api_writes_them() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00+00:00");
        assert_eq!(rfc3339(1_454_197_800_000), "2016-01-30T23:50:00+00:00");
        assert_eq!(rfc3339(1_709_208_000_500), "2024-02-29T12:00:00+00:00");
    }

    #[test]
    fn label_selectors_select_as_hetzner_documents() {
        let labels: BTreeMap<String, String> = [("corral-pool", "gpu"), ("team", "ml")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert!(selected(&labels, "corral-pool=gpu"));
        assert!(selected(&labels, "corral-pool==gpu,team"));
        assert!(!selected(&labels, "corral-pool=cpu"));
        assert!(selected(&labels, "corral-pool!=cpu,!owner"));
        assert!(!selected(&labels, "!team"));
    }
}
