//! A stand-in for the Cloudera AI (CML) API v2 (harness only; NOT the real service).
//!
//! An in-memory HTTP server on `127.0.0.1:0` that answers the application endpoints the
//! `cml` provider plugin uses, in the shapes Cloudera documents (and the plugin's
//! fixtures show), so the real plugin can be driven through the real provider host:
//!
//! - `GET    /api/v2/projects/{project_id}/applications?search_filter=&page_size=&page_token=`
//! - `POST   /api/v2/projects/{project_id}/applications`
//! - `GET    /api/v2/projects/{project_id}/applications/{id}`
//! - `DELETE /api/v2/projects/{project_id}/applications/{id}`
//! - `POST   /api/v2/projects/{project_id}/applications/{id}:stop` (and `:restart`)
//!
//! What it models, and how it differs from the real service:
//! - `Authorization: Bearer <key>` is checked on every request ([`CmlApi::api_key`]);
//!   anything else is 401. Its error body deliberately echoes the token it was sent (the
//!   real service is not known to), so a test can prove the plugin never repeats a key.
//! - Errors are gRPC-gateway bodies, `{"code":N,"message":"...","details":[]}`.
//! - An application is `APPLICATION_STARTING` when created and `APPLICATION_RUNNING` from
//!   the second GET (single or list) that shows it; a stop makes it
//!   `APPLICATION_STOPPING`, then `APPLICATION_STOPPED` the same way.
//! - `search_filter` is a JSON object of field to text, matched as a case-insensitive
//!   substring (as the real one narrows, not as an exact match); keys `name`,
//!   `description`, `subdomain`, `script`, `status`. Pages hold at most
//!   [`CmlApi::PAGE_SIZE`] applications whatever `page_size` asks, so listings page;
//!   `next_page_token` is left out on the last page (as gRPC-gateway omits empty fields).
//! - Names may repeat (the plugin must find its own by listing); subdomains may not
//!   (409, gRPC `ALREADY_EXISTS`).
//! - Deleting a starting or running application is refused (400, "stop the application
//!   before deleting it") only after [`CmlApi::require_stop_before_delete`]; by default it
//!   is deleted. Whether the real service refuses is not documented.
//! - Fault injection at run time: the next N requests answer 429 with or without
//!   `Retry-After` ([`CmlApi::rate_limit_next`]), or a 5xx ([`CmlApi::fail_next`]); the
//!   next create fails with a given status and body ([`CmlApi::fail_next_create`]), or
//!   is done but its answer lost as a 504 ([`CmlApi::lose_next_create_answer`]).
//! - Every request is recorded (method, path, query) for assertions
//!   ([`CmlApi::requests`]), faults included.
//!
//! It runs on its own thread and runtime, so any test (a `#[tokio::test(flavor =
//! "multi_thread")]` or a plain one) can start it; it stops when the value is dropped.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::Response;
use axum::Router;
use serde_json::{json, Map, Value};

/// One application as the stand-in keeps it.
#[derive(Debug, Clone)]
pub struct App {
    pub id: String,
    pub name: String,
    pub description: String,
    pub subdomain: String,
    pub script: String,
    pub status: String,
    pub environment: BTreeMap<String, String>,
    pub created_at: String,
    /// The create request's body, as sent.
    pub request: Value,
    /// A GET has shown the current transitional status once.
    shown: bool,
}

impl App {
    /// `CORRAL_USER_DATA` decoded from base64, as the application's script would.
    pub fn user_data(&self) -> Option<String> {
        let text = self.environment.get("CORRAL_USER_DATA")?;
        String::from_utf8(decode_base64(text)?).ok()
    }
}

/// One request the stand-in received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
}

#[derive(Default)]
struct Faults {
    rate_limited: u32,
    retry_after_s: Option<u64>,
    failing: u32,
    failing_status: u16,
    next_create: Option<(u16, String)>,
    lose_next_create: bool,
    require_stop: bool,
}

struct Inner {
    key: String,
    project_id: String,
    apps: Vec<App>,
    next_id: u64,
    requests: Vec<Recorded>,
    faults: Faults,
}

type Shared = Arc<Mutex<Inner>>;

/// The running stand-in. Stopped on drop.
pub struct CmlApi {
    port: u16,
    inner: Shared,
    _server: super::stub_http::StubServer,
}

impl CmlApi {
    /// The most applications one page holds.
    pub const PAGE_SIZE: usize = 2;
    /// The API key it accepts.
    pub const API_KEY: &'static str = "cml-harness-key-0b9e77d2";
    /// The project it serves.
    pub const PROJECT_ID: &'static str = "h4rn-e55p-r0j3-ct01";

    /// Starts the stand-in on a free loopback port.
    pub fn start() -> CmlApi {
        let inner: Shared = Arc::new(Mutex::new(Inner {
            key: Self::API_KEY.into(),
            project_id: Self::PROJECT_ID.into(),
            apps: Vec::new(),
            next_id: 1,
            requests: Vec::new(),
            faults: Faults::default(),
        }));
        let router = Router::new().fallback(handle).with_state(inner.clone());
        let server = super::stub_http::StubServer::start("cml-api", router);
        CmlApi {
            port: server.port(),
            inner,
            _server: server,
        }
    }

    /// `http://127.0.0.1:PORT`: a pool's `api_url`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn project_id(&self) -> String {
        Self::PROJECT_ID.into()
    }

    pub fn api_key(&self) -> String {
        Self::API_KEY.into()
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.inner.lock().unwrap())
    }

    /// The next `n` requests answer 429, with `Retry-After: SECONDS` when given.
    pub fn rate_limit_next(&self, n: u32, retry_after_s: Option<u64>) {
        self.with(|i| {
            i.faults.rate_limited = n;
            i.faults.retry_after_s = retry_after_s;
        })
    }

    /// The next `n` requests answer `status` (a 5xx) with an error body.
    pub fn fail_next(&self, n: u32, status: u16) {
        self.with(|i| {
            i.faults.failing = n;
            i.faults.failing_status = status;
        })
    }

    /// The next create answers `status` with `body` and makes nothing.
    pub fn fail_next_create(&self, status: u16, body: Value) {
        self.with(|i| i.faults.next_create = Some((status, body.to_string())))
    }

    /// The next create is done, but answers 504 as if its answer were lost on the way.
    pub fn lose_next_create_answer(&self) {
        self.with(|i| i.faults.lose_next_create = true)
    }

    /// Whether deleting a starting or running application is refused until it is stopped.
    pub fn require_stop_before_delete(&self, on: bool) {
        self.with(|i| i.faults.require_stop = on)
    }

    /// Sets an application's status (`APPLICATION_FAILED`, say).
    pub fn set_status(&self, id: &str, status: &str) {
        self.with(|i| {
            let app = i
                .apps
                .iter_mut()
                .find(|a| a.id == id)
                .expect("no such application");
            app.status = status.into();
            app.shown = false;
        })
    }

    /// The applications now, in creation order.
    pub fn applications(&self) -> Vec<App> {
        self.with(|i| i.apps.clone())
    }

    /// Every request received, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.with(|i| i.requests.clone())
    }

    /// How many requests had `method` and a path ending in `suffix`.
    pub fn count(&self, method: &str, suffix: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.method == method && r.path.ends_with(suffix))
            .count()
    }
}

fn reply(status: u16, body: &Value, headers: &[(&str, String)]) -> Response {
    let mut b = axum::http::Response::builder()
        .status(status)
        .header("content-type", "application/json");
    for (k, v) in headers {
        b = b.header(*k, v.as_str());
    }
    let text = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    b.body(Body::from(text)).unwrap()
}

/// A gRPC-gateway error answer.
fn error(status: u16, code: u32, message: &str) -> Response {
    reply(
        status,
        &json!({"code": code, "message": message, "details": []}),
        &[],
    )
}

async fn handle(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut inner = shared.lock().unwrap();
    inner.requests.push(Recorded {
        method: method.to_string(),
        path: uri.path().to_string(),
        query: uri.query().map(str::to_string),
    });
    let f = &mut inner.faults;
    if f.rate_limited > 0 {
        f.rate_limited -= 1;
        let headers: Vec<(&str, String)> = f
            .retry_after_s
            .map(|s| vec![("retry-after", s.to_string())])
            .unwrap_or_default();
        return reply(
            429,
            &json!({"code": 8, "message": "rate limit exceeded; slow down", "details": []}),
            &headers,
        );
    }
    if f.failing > 0 {
        f.failing -= 1;
        let status = f.failing_status;
        return error(status, 14, "the service is unavailable; try again later");
    }
    let presented = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if presented != format!("Bearer {}", inner.key) {
        let token = presented.strip_prefix("Bearer ").unwrap_or(presented);
        return error(401, 16, &format!("invalid API key {token:?}"));
    }
    let prefix = format!("/api/v2/projects/{}/applications", inner.project_id);
    let path = uri.path().to_string();
    let Some(rest) = path.strip_prefix(&prefix) else {
        return if path.starts_with("/api/v2/projects/") {
            error(404, 5, "project not found")
        } else {
            error(404, 5, "Not Found")
        };
    };
    let query = parse_query(uri.query().unwrap_or(""));
    match (method.as_str(), rest) {
        ("GET", "" | "/") => list(&mut inner, &query),
        ("POST", "" | "/") => create(&mut inner, &body),
        (m, one) if one.starts_with('/') => {
            let one = &one[1..];
            match (m, one.split_once(':')) {
                ("GET", None) => get(&mut inner, one),
                ("DELETE", None) => delete(&mut inner, one),
                ("POST", Some((id, "stop"))) => action(&mut inner, id, "APPLICATION_STOPPING"),
                ("POST", Some((id, "restart"))) => action(&mut inner, id, "APPLICATION_STARTING"),
                _ => error(404, 5, "Not Found"),
            }
        }
        _ => error(405, 12, "method not allowed"),
    }
}

fn parse_query(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                match std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(c) => {
                        out.push(c);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The application as the API shows it; a transitional status seen once moves on.
fn show(app: &mut App, host: &str) -> Value {
    let next = match app.status.as_str() {
        "APPLICATION_STARTING" => Some("APPLICATION_RUNNING"),
        "APPLICATION_STOPPING" => Some("APPLICATION_STOPPED"),
        _ => None,
    };
    if let Some(next) = next {
        if app.shown {
            app.status = next.into();
            app.shown = false;
        } else {
            app.shown = true;
        }
    }
    render(app, host)
}

fn render(app: &App, host: &str) -> Value {
    let field = |k: &str| app.request.get(k).cloned().unwrap_or(Value::Null);
    let env = serde_json::to_string(&app.environment).unwrap();
    json!({
        "id": app.id,
        "name": app.name,
        "description": app.description,
        "subdomain": app.subdomain,
        "url": format!("https://{}.{host}", app.subdomain),
        "script": app.script,
        "kernel": field("kernel"),
        "cpu": field("cpu"),
        "memory": field("memory"),
        "nvidia_gpu": field("nvidia_gpu"),
        "runtime_identifier": field("runtime_identifier"),
        "bypass_authentication": app.request.get("bypass_authentication").cloned().unwrap_or(json!(false)),
        "status": app.status,
        "creator": {"username": "svc-corral", "name": "corral service", "email": "svc-corral@example.com"},
        "created_at": app.created_at,
        "updated_at": app.created_at,
        "environment": env,
    })
}

const HOST: &str = "ml-harness.example.invalid";

fn list(inner: &mut Inner, query: &BTreeMap<String, String>) -> Response {
    let filter: Map<String, Value> = match query.get("search_filter").map(String::as_str) {
        None | Some("") => Map::new(),
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(m)) => m,
            _ => {
                return error(
                    400,
                    3,
                    &format!("search_filter {text:?} is not a JSON object"),
                )
            }
        },
    };
    for (k, v) in &filter {
        if !["name", "description", "subdomain", "script", "status"].contains(&k.as_str()) {
            return error(400, 3, &format!("unsupported search filter key {k:?}"));
        }
        if !v.is_string() {
            return error(400, 3, &format!("search filter {k:?} must be a string"));
        }
    }
    let asked = match query.get("page_size").map(|s| s.parse::<usize>()) {
        None => CmlApi::PAGE_SIZE,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => return error(400, 3, "page_size must be a positive number"),
    };
    let size = asked.min(CmlApi::PAGE_SIZE);
    let offset = match query.get("page_token").map(String::as_str) {
        None | Some("") => 0,
        Some(t) => match t.strip_prefix("off:").and_then(|n| n.parse::<usize>().ok()) {
            Some(n) => n,
            None => return error(400, 3, &format!("invalid page token {t:?}")),
        },
    };
    let matching: Vec<usize> = inner
        .apps
        .iter()
        .enumerate()
        .filter(|(_, a)| {
            filter.iter().all(|(k, v)| {
                let have = match k.as_str() {
                    "name" => &a.name,
                    "description" => &a.description,
                    "subdomain" => &a.subdomain,
                    "script" => &a.script,
                    _ => &a.status,
                };
                have.to_lowercase()
                    .contains(&v.as_str().unwrap_or("").to_lowercase())
            })
        })
        .map(|(i, _)| i)
        .collect();
    let page: Vec<usize> = matching.iter().skip(offset).take(size).copied().collect();
    let shown: Vec<Value> = page
        .iter()
        .map(|&i| show(&mut inner.apps[i], HOST))
        .collect();
    let mut answer = Map::new();
    answer.insert("applications".into(), Value::Array(shown));
    if offset + size < matching.len() {
        answer.insert(
            "next_page_token".into(),
            json!(format!("off:{}", offset + size)),
        );
    }
    reply(200, &Value::Object(answer), &[])
}

fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn create(inner: &mut Inner, body: &[u8]) -> Response {
    if let Some((status, text)) = inner.faults.next_create.take() {
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        return reply(status, &v, &[]);
    }
    let req: Value = match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => v,
        _ => return error(400, 3, "the request body is not a JSON object"),
    };
    let text = |k: &str| req.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let (name, script, subdomain) = (text("name"), text("script"), text("subdomain"));
    if name.is_empty() {
        return error(400, 3, "name is required");
    }
    if script.is_empty() {
        return error(400, 3, "script is required");
    }
    if !is_label(&subdomain) {
        return error(
            400,
            3,
            &format!("subdomain {subdomain:?} is not a valid DNS label"),
        );
    }
    if inner.apps.iter().any(|a| a.subdomain == subdomain) {
        return error(409, 6, &format!("subdomain {subdomain} is already in use"));
    }
    let mut environment = BTreeMap::new();
    match req.get("environment") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                let Some(v) = v.as_str() else {
                    return error(
                        400,
                        3,
                        &format!("environment variable {k} must be a string"),
                    );
                };
                environment.insert(k.clone(), v.to_string());
            }
        }
        Some(_) => return error(400, 3, "environment must be an object of strings"),
    }
    for key in ["cpu", "memory", "nvidia_gpu"] {
        if let Some(v) = req.get(key) {
            if !v.is_number() {
                return error(400, 3, &format!("{key} must be a number"));
            }
        }
    }
    let n = inner.next_id;
    inner.next_id += 1;
    let app = App {
        id: format!("app{n:04}-h4rn-e55a-pp00"),
        name,
        description: text("description"),
        subdomain,
        script,
        status: "APPLICATION_STARTING".into(),
        environment,
        created_at: rfc3339_now(),
        request: req,
        shown: false,
    };
    let shown = render(&app, HOST);
    inner.apps.push(app);
    if std::mem::take(&mut inner.faults.lose_next_create) {
        return error(504, 4, "upstream request timeout");
    }
    reply(200, &shown, &[])
}

fn get(inner: &mut Inner, id: &str) -> Response {
    match inner.apps.iter_mut().find(|a| a.id == id) {
        Some(app) => {
            let v = show(app, HOST);
            reply(200, &v, &[])
        }
        None => error(404, 5, &format!("application {id} not found")),
    }
}

fn delete(inner: &mut Inner, id: &str) -> Response {
    let Some(at) = inner.apps.iter().position(|a| a.id == id) else {
        return error(404, 5, &format!("application {id} not found"));
    };
    let running = matches!(
        inner.apps[at].status.as_str(),
        "APPLICATION_STARTING" | "APPLICATION_RUNNING"
    );
    if inner.faults.require_stop && running {
        return error(
            400,
            9,
            "application is running; stop the application before deleting it",
        );
    }
    inner.apps.remove(at);
    reply(200, &json!({}), &[])
}

fn action(inner: &mut Inner, id: &str, status: &str) -> Response {
    match inner.apps.iter_mut().find(|a| a.id == id) {
        Some(app) => {
            app.status = status.into();
            app.shown = false;
            reply(200, &json!({}), &[])
        }
        None => error(404, 5, &format!("application {id} not found")),
    }
}

/// Now as RFC 3339 with microseconds, as CML writes `created_at`.
fn rfc3339_now() -> String {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
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
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_micros()
    )
}

/// Standard base64 (with or without padding) decoded; `None` when it is not base64.
pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let t = text.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(t.len() * 3 / 4);
    for chunk in t.chunks(4) {
        if chunk.len() == 1 {
            return None;
        }
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= value(c)? << (18 - 6 * i);
        }
        out.push((n >> 16) as u8);
        if chunk.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if chunk.len() > 3 {
            out.push(n as u8);
        }
    }
    Some(out)
}
