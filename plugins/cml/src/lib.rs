//! The `cml` provider: one Cloudera AI (formerly Cloudera Machine Learning, CML)
//! *application* per corral node, made, listed and deleted through the workspace's
//! API v2. The application runs a project file (the template's `script`) that starts
//! `corral agent` with the node's user data; it replaces launcher scripts that started
//! Ray heads and workers as CML applications by hand.
//!
//! ```toml
//! [pools.cml-gpu]
//! provider = "cml"
//! secret_file = "/etc/corral/cml-api-key"      # the API key, nothing else
//! [pools.cml-gpu.template]
//! api_url = "https://ml-1a2b3c4d-5e6.env.a1b2-c3d4.cloudera.site"
//! project_id = "abcd-1234-efgh-5678"
//! script = "corral-agent.py"
//! runtime_identifier = "docker.repository.cloudera.com/cloudera/cdsw/ml-runtime-pbj-jupyterlab-python3.11-standard:2025.01.3-b8"
//! cpu = "4"
//! memory = "16"
//! nvidia_gpu = "1"
//! "env.RAY_DEDUP_LOGS" = "0"
//! ```
//!
//! Template keys:
//! - `api_url` (required): the workspace's base URL, `https://ml-....cloudera.site`; the
//!   plugin appends `/api/v2/...` (a trailing `/api/v2` is tolerated). Its `host:port`
//!   must be granted in `cml.toml`'s `[grants] hosts`.
//! - `project_id` (required): the project the applications are made in (its API v2 id,
//!   as `CDSW_PROJECT_ID` shows inside the project).
//! - `script` (required): the project file each application runs, e.g.
//!   `corral-agent.py`, which decodes `CORRAL_USER_DATA` and runs it (the user data
//!   installs corral and starts `corral agent`, joining as `CORRAL_NODE`).
//! - `runtime_identifier`, `kernel` (optional): the ML runtime image, or the legacy
//!   engine's kernel (`python3`); CML's project default when left out.
//! - `cpu`, `memory` (GB) (optional numbers > 0), `nvidia_gpu` (optional whole number):
//!   the application's resources; CML's defaults when left out.
//! - `env.KEY = VALUE`: extra environment variables of the application. `CORRAL_*` names
//!   are the plugin's own and refused.
//!
//! Any other key is refused by `create`, naming it, so a misspelt `memroy` is not
//! silently dropped. The pool's secret is the API key: it goes only into the
//! `Authorization: Bearer` header, and is replaced by `[secret]` in every message built
//! from an answer.
//!
//! What each export sends (`APPS` = `{api_url}/api/v2/projects/{project_id}/applications`):
//! - `create`: `GET APPS?search_filter={"name":NODE}` (all pages) first: an application
//!   of that name carrying this pool's marker is a retried create, and its id is returned
//!   without a second one being made. Else `POST APPS` with `name` = the node, a
//!   `subdomain` made from it ([`subdomain`]), `description` = `corral pool POOL` (the
//!   pool's marker), `script`, the optional keys above, and `environment` holding the
//!   `env.` entries, `CORRAL_USER_DATA` (the user data, standard base64 with padding),
//!   `CORRAL_NODE` and `CORRAL_POOL`. CML starts an application when it is created; the id
//!   is the answer's `id`. A create refused because the application exists (409, or a
//!   4xx saying "already"/"exists"/"in use"/"taken": the first try was accepted but its
//!   answer was lost) is looked up again and its id returned.
//! - `list`: `GET APPS?search_filter={"description":"corral pool POOL"}&page_size=100`,
//!   then `&page_token=` each `next_page_token` until it is empty or missing. The search
//!   filter only narrows: CML matches by substring (`corral pool gpu` would match
//!   `corral pool gpu2`), so the marker is compared exactly here as well.
//! - `status`: `GET APPS/{id}`; 404 is `None`.
//! - `delete`: `DELETE APPS/{id}`; 404 is success. If CML refuses to delete a running
//!   application (a 400/409/412 whose message says "stop" or "running"), the plugin
//!   sends `POST APPS/{id}:stop` and deletes again once; an application still stopping
//!   then fails that call with CML's words, and the coordinator's retry deletes it.
//!
//! States ([`STATES`]): CML's application `status`, compared without case and with an
//! optional `APPLICATION_` prefix: `STARTING` is pending, `RUNNING` running, `STOPPING`
//! stopping, `STOPPED` off, `FAILED` failed; anything else is `unknown`, the native word
//! kept and a message saying it was not recognised. `node` is the application's `name`,
//! `created_ms` its `created_at` (RFC 3339, [`rfc3339_ms`]).
//!
//! Errors: 401/403 are `denied`, saying the API key was refused (CML's message quoted,
//! the key never). 429 is [`ProviderError::RateLimited`] with `Retry-After` (seconds)
//! as the wait, 30 s when it is absent or a date. 5xx and other 4xx are backend errors
//! naming the request and the status and quoting CML's error (`message` of its
//! gRPC-gateway error body `{"code":N,"message":"...","details":[]}`, else the body's
//! start). A 2xx body that is not JSON (a proxy's login page) is a backend error saying
//! so and asking whether `api_url` is the workspace's address.
//!
//! Found in Cloudera's documentation and public clients of `cmlapi` (the API v2 Python
//! client): the paths above (`:stop` and `:restart` are custom methods), Bearer API
//! keys, `search_filter` as a JSON object of field to text, `page_size`, `page_token`,
//! `next_page_token`, and `CreateApplicationRequest`'s fields (`name`, `subdomain`,
//! `description`, `script`, `kernel`, `cpu`, `memory`, `nvidia_gpu`, `environment` as an
//! object, `runtime_identifier`, `bypass_authentication`).
//!
//! Assumed, where the public material does not say:
//! - the status words (taken from this project's brief; public scripts compare
//!   lowercase `running`/`stopped`, which the case-insensitive table also accepts);
//! - that `description` is a `search_filter` key for applications (it is for other
//!   resources); the exact client-side comparison keeps `list` right either way;
//! - that subdomains are unique within the workspace: [`subdomain`] is
//!   `corral-<node as a DNS label>-<8 hex digits of a hash of pool and node>`, at most 63
//!   characters, so nodes that differ only in case or punctuation, or pools of the same
//!   node name, never share one, and a retried create asks for the same subdomain;
//! - that the API answers `Retry-After` with its 429s (30 s otherwise);
//! - that an application that does not serve HTTP on `CDSW_APP_PORT` still runs (the
//!   agent serves nothing there); `bypass_authentication` is not sent, so CML's default
//!   (authentication on) applies to the unused web endpoint.
//!
//! Trade-offs: the user data (with its single-use join token) travels in the
//! application's environment, which the project's collaborators can read in its
//! settings; the token is spent when the agent joins. Not billed by the hour
//! (`hourly_billing = false`): CML charges per workspace, not per application.

use std::collections::HashSet;

use corral_plugin_sdk::provider::{
    bearer, json_request, CreateRequest, Machine, MachineState, Pool, Provider, ProviderError,
    ProviderInfo, RateLimit,
};
use corral_plugin_sdk::script::is_env_name;
use corral_plugin_sdk::serde_json::{self, json, Map, Value};
use corral_plugin_sdk::{log, Backend, Error, Response};

pub struct Cml;

corral_plugin_sdk::export_provider!(Cml);

/// CML application statuses (without case, `APPLICATION_` prefix removed) and their
/// portable meaning: the one place they are interpreted.
pub const STATES: &[(&str, MachineState)] = &[
    ("STARTING", MachineState::Pending),
    ("RUNNING", MachineState::Running),
    ("STOPPING", MachineState::Stopping),
    ("STOPPED", MachineState::Off),
    ("FAILED", MachineState::Failed),
];

/// The wait of a 429 without a usable `Retry-After`.
pub const DEFAULT_RETRY_AFTER_MS: u64 = 30_000;

/// The `page_size` asked for; the server may answer fewer per page.
pub const PAGE_SIZE: u32 = 100;

/// Pages one listing follows before it gives up (a server handing out tokens forever).
const MAX_PAGES: usize = 200;

/// The template keys `create` knows, besides `env.*`.
const KEYS: &[&str] = &[
    "api_url",
    "project_id",
    "script",
    "runtime_identifier",
    "kernel",
    "cpu",
    "memory",
    "nvidia_gpu",
];

/// The marker in an application's `description` that says which pool made it.
pub fn marker(pool: &str) -> String {
    format!("corral pool {pool}")
}

/// The portable state of CML application status `status`, `None` when unrecognised.
pub fn state_of(status: &str) -> Option<MachineState> {
    let upper = status.trim().to_ascii_uppercase();
    let word = upper.strip_prefix("APPLICATION_").unwrap_or(&upper);
    STATES.iter().find(|(n, _)| *n == word).map(|(_, s)| *s)
}

/// Standard base64 (RFC 4648 alphabet, `=` padding).
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `text` percent-encoded for a URL query value (everything but RFC 3986's unreserved
/// characters).
pub fn query_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for &c in text.as_bytes() {
        if c.is_ascii_alphanumeric() || b"-._~".contains(&c) {
            out.push(c as char);
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
    out
}

/// FNV-1a, 32 bits: a short stable hash for subdomains (not for security).
fn fnv1a(bytes: impl Iterator<Item = u8>) -> u32 {
    bytes.fold(0x811c_9dc5, |h, c| {
        (h ^ u32::from(c)).wrapping_mul(0x0100_0193)
    })
}

/// The subdomain of `node`'s application: `corral-<label>-<hash>`, a lowercase DNS label
/// of at most 63 characters, `<label>` the node name with every run of other
/// characters than `a-z0-9` made one `-` (cut to fit), `<hash>` 8 hex digits of a hash
/// of the pool and the exact node name, so it is the same on every try and differs
/// between nodes whose labels would not.
pub fn subdomain(pool: &str, node: &str) -> String {
    let mut label = String::new();
    for c in node.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            label.push(c);
        } else if !label.ends_with('-') {
            label.push('-');
        }
    }
    let hash = fnv1a(pool.bytes().chain([0]).chain(node.bytes()));
    // 63 = "corral-" (7) + label + "-" (1) + hash (8).
    let room = 63 - 7 - 1 - 8;
    let label = label.trim_matches('-');
    let label = label[..label.len().min(room)].trim_end_matches('-');
    if label.is_empty() {
        format!("corral-{hash:08x}")
    } else {
        format!("corral-{label}-{hash:08x}")
    }
}

/// Days from 1970-01-01 to the civil date `y-m-d` (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// An RFC 3339 timestamp (`2024-05-01T12:30:00.123456Z`, `...+02:00`) as ms since the
/// Unix epoch; `None` when it is not one, or before 1970.
pub fn rfc3339_ms(s: &str) -> Option<u64> {
    let s = s.trim().as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let part = s.get(from..from + len)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    let sep = |at: usize, allowed: &[u8]| s.get(at).is_some_and(|c| allowed.contains(c));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&month)
        || day < 1
        || day > month_days[(month - 1) as usize]
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut i = 19;
    let mut millis = 0i64;
    if s.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while s.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
        let digits = &s[start..i.min(start + 3)];
        let mut ms = 0i64;
        for (k, d) in digits.iter().enumerate() {
            ms += i64::from(d - b'0') * [100, 10, 1][k];
        }
        millis = ms;
    }
    let offset_s = match s.get(i) {
        Some(b'Z' | b'z') if s.len() == i + 1 => 0,
        Some(&sign @ (b'+' | b'-')) if s.len() == i + 6 && s[i + 3] == b':' => {
            let (oh, om) = (num(i + 1, 2)?, num(i + 4, 2)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let off = oh * 3600 + om * 60;
            if sign == b'+' {
                off
            } else {
                -off
            }
        }
        _ => return None,
    };
    let secs =
        days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second.min(59)
            - offset_s;
    let ms = secs.checked_mul(1000)?.checked_add(millis)?;
    u64::try_from(ms).ok()
}

/// One application of an answer as a machine.
pub fn parse_application(v: &Value) -> Result<Machine, String> {
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::trim);
    let id = text("id")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| format!("an application without an id: {}", cut(&v.to_string(), 200)))?;
    let native = text("status").unwrap_or("").to_string();
    let state = state_of(&native);
    let message = match state {
        None if native.is_empty() => Some("CML gave the application no status".to_string()),
        None => Some(format!("unrecognised CML application status {native:?}")),
        Some(MachineState::Failed) => Some(
            "CML reports the application failed; its logs are in the project's Applications page"
                .to_string(),
        ),
        Some(_) => None,
    };
    Ok(Machine {
        id: id.to_string(),
        node: text("name").unwrap_or("").to_string(),
        state: state.unwrap_or(MachineState::Unknown),
        native_state: native,
        created_ms: text("created_at").and_then(rfc3339_ms),
        message,
    })
}

/// Whether an application of an answer carries `pool`'s marker.
fn is_pools(v: &Value, pool: &str) -> bool {
    v.get("description").and_then(Value::as_str).map(str::trim) == Some(marker(pool).as_str())
}

fn cut(s: &str, n: usize) -> String {
    let mut out: String = s.chars().take(n).collect();
    if out.len() < s.len() {
        out.push_str("...");
    }
    out.replace(['\n', '\r'], " ")
}

fn scrub(text: &str, secret: &str) -> String {
    if secret.is_empty() {
        text.to_string()
    } else {
        text.replace(secret, "[secret]")
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        412 => "Precondition Failed",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

fn status_text(status: u16) -> String {
    match reason(status) {
        "" => status.to_string(),
        r => format!("{status} {r}"),
    }
}

/// What CML said in an error body: its gRPC-gateway `message` (or `error`), else the
/// JSON or the text it sent, cut short; empty when it sent nothing.
pub fn cml_message(body: &[u8]) -> String {
    if body.iter().all(u8::is_ascii_whitespace) {
        return String::new();
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => {
            let field = |k: &str| {
                v.get(k)
                    .and_then(Value::as_str)
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
            };
            match field("message").or_else(|| field("error")) {
                Some(m) => cut(m, 300),
                None => cut(&v.to_string(), 300),
            }
        }
        Err(_) => cut(String::from_utf8_lossy(body).trim(), 200),
    }
}

/// The wait a 429 asks for: `Retry-After` in seconds, else [`DEFAULT_RETRY_AFTER_MS`].
pub fn retry_after_ms(resp: &Response) -> u64 {
    let Some(v) = resp.header("retry-after").map(str::trim) else {
        return DEFAULT_RETRY_AFTER_MS;
    };
    if let Ok(secs) = v.parse::<u64>() {
        return secs.saturating_mul(1000);
    }
    match v.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs >= 0.0 => {
            (secs * 1000.0).ceil().min(u64::MAX as f64) as u64
        }
        _ => DEFAULT_RETRY_AFTER_MS,
    }
}

/// The error for a non-2xx answer to `what` (`METHOD URL`), the key scrubbed out.
pub fn answer_error(what: &str, resp: &Response, secret: &str) -> ProviderError {
    let said = scrub(&cml_message(&resp.body), secret);
    let said = if said.is_empty() {
        String::new()
    } else {
        format!(": {said}")
    };
    let status = status_text(resp.status);
    match resp.status {
        401 | 403 => ProviderError::Failed(Error::Denied(format!(
            "{what}: CML refused the API key ({status}){said}; check that the pool's secret_file holds a current Cloudera AI API v2 key of a user with access to the project"
        ))),
        429 => ProviderError::RateLimited(RateLimit {
            retry_after_ms: retry_after_ms(resp),
            message: format!("{what}: CML's API rate limit ({status}){said}"),
        }),
        _ => ProviderError::backend(format!("{what}: CML answered {status}{said}")),
    }
}

/// A 4xx refusing a create because the application (or its subdomain) exists.
fn says_exists(resp: &Response) -> bool {
    if resp.status == 409 {
        return true;
    }
    let m = cml_message(&resp.body).to_ascii_lowercase();
    (400..500).contains(&resp.status)
        && ["already", "exists", "in use", "taken", "duplicate"]
            .iter()
            .any(|w| m.contains(w))
}

/// A 4xx refusing to delete an application that must be stopped first.
fn says_stop_first(resp: &Response) -> bool {
    let m = cml_message(&resp.body).to_ascii_lowercase();
    matches!(resp.status, 400 | 409 | 412) && (m.contains("stop") || m.contains("running"))
}

fn ok(status: u16) -> bool {
    (200..300).contains(&status)
}

/// An application id as CML makes them (`x7qq-2mwd-b8g4-r1ja`): it goes into a URL
/// path, so only URL-safe characters.
fn check_id(id: &str) -> Result<(), ProviderError> {
    let fine = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if fine {
        Ok(())
    } else {
        Err(ProviderError::invalid(format!(
            "{id:?} is not a CML application id"
        )))
    }
}

/// The calls of one export: the applications URL and the key.
struct Api<'a> {
    b: &'a dyn Backend,
    /// `{api_url}/api/v2/projects/{project_id}/applications`
    apps: String,
    key: &'a str,
}

impl<'a> Api<'a> {
    fn new(b: &'a dyn Backend, pool: &'a Pool) -> Result<Api<'a>, ProviderError> {
        let raw = pool.require("api_url")?.trim();
        let invalid = |why: &str| {
            ProviderError::invalid(format!(
                "pool {}: template key \"api_url\" = {raw:?} {why}; set it to the workspace's address, e.g. \"https://ml-1234.cloudera.site\"",
                pool.name
            ))
        };
        if !(raw.starts_with("https://") || raw.starts_with("http://")) {
            return Err(invalid("is not an https:// URL"));
        }
        if raw.contains(['?', '#']) || raw.chars().any(char::is_whitespace) {
            return Err(invalid("has a query, a fragment or spaces"));
        }
        let base = raw.trim_end_matches('/');
        let base = base
            .strip_suffix("/api/v2")
            .unwrap_or(base)
            .trim_end_matches('/');
        let project = pool.require("project_id")?.trim();
        if !project
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(ProviderError::invalid(format!(
                "pool {}: template key \"project_id\" = {project:?} is not a CML project id (letters, digits, - _ .)",
                pool.name
            )));
        }
        let key = pool.secret()?;
        Ok(Api {
            b,
            apps: format!("{base}/api/v2/projects/{project}/applications"),
            key,
        })
    }

    fn app_url(&self, id: &str) -> String {
        format!("{}/{id}", self.apps)
    }

    /// Sends a request; the answer whatever its status.
    fn send(
        &self,
        method: &str,
        url: &str,
        body: Option<&Value>,
    ) -> Result<Response, ProviderError> {
        json_request(self.b, method, url, &[bearer(self.key)], body).map_err(|e| {
            ProviderError::Failed(match e {
                Error::Denied(m) => Error::Denied(scrub(&m, self.key)),
                Error::Invalid(m) => Error::Invalid(scrub(&m, self.key)),
                Error::Backend(m) => Error::Backend(scrub(&m, self.key)),
                Error::Timeout(m) => Error::Timeout(scrub(&m, self.key)),
                Error::Unsupported(m) => Error::Unsupported(scrub(&m, self.key)),
            })
        })
    }

    fn what(method: &str, url: &str) -> String {
        format!("{method} {}", url.split('?').next().unwrap_or(url))
    }

    fn error(&self, method: &str, url: &str, resp: &Response) -> ProviderError {
        answer_error(&Self::what(method, url), resp, self.key)
    }

    /// A 2xx answer's JSON (`Null` when empty); any other answer is its error.
    fn answer(&self, method: &str, url: &str, resp: &Response) -> Result<Value, ProviderError> {
        if !ok(resp.status) {
            return Err(self.error(method, url, resp));
        }
        if resp.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&resp.body).map_err(|_| {
            let start = scrub(&cut(String::from_utf8_lossy(&resp.body).trim(), 120), self.key);
            ProviderError::backend(format!(
                "{}: CML answered {} with a body that is not JSON ({start}); is api_url the workspace's address (https://ml-....cloudera.site), not a login or proxy page?",
                Self::what(method, url),
                status_text(resp.status)
            ))
        })
    }

    fn call(&self, method: &str, url: &str, body: Option<&Value>) -> Result<Value, ProviderError> {
        let resp = self.send(method, url, body)?;
        self.answer(method, url, &resp)
    }

    /// Every application `filter` (a `search_filter` object) matches, all pages.
    fn list_all(&self, filter: &Value) -> Result<Vec<Value>, ProviderError> {
        let first = format!(
            "{}?search_filter={}&page_size={PAGE_SIZE}",
            self.apps,
            query_escape(&filter.to_string())
        );
        let mut apps = Vec::new();
        let mut seen = HashSet::new();
        let mut url = first.clone();
        for _ in 0..MAX_PAGES {
            let v = self.call("GET", &url, None)?;
            if !(v.is_object() || v.is_null()) {
                return Err(ProviderError::backend(format!(
                    "{}: the answer is not an application list: {}",
                    Self::what("GET", &url),
                    cut(&v.to_string(), 200)
                )));
            }
            match v.get("applications") {
                Some(Value::Array(page)) => apps.extend(page.iter().cloned()),
                None | Some(Value::Null) => {}
                Some(other) => {
                    return Err(ProviderError::backend(format!(
                        "{}: \"applications\" is not a list: {}",
                        Self::what("GET", &url),
                        cut(&other.to_string(), 200)
                    )))
                }
            }
            let next = v
                .get("next_page_token")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty());
            let Some(token) = next else {
                return Ok(apps);
            };
            if !seen.insert(token.to_string()) {
                return Err(ProviderError::backend(format!(
                    "{}: CML handed out the page token {token:?} twice; stopping rather than listing forever",
                    Self::what("GET", &url)
                )));
            }
            url = format!("{first}&page_token={}", query_escape(token));
        }
        Err(ProviderError::backend(format!(
            "{}: more than {MAX_PAGES} pages of applications; stopping",
            Self::what("GET", &first)
        )))
    }

    /// The id of `node`'s application in `pool`, if it exists.
    fn find(&self, pool: &Pool, node: &str) -> Result<Option<String>, ProviderError> {
        let apps = self.list_all(&json!({ "name": node }))?;
        Ok(apps
            .iter()
            .filter(|a| {
                a.get("name").and_then(Value::as_str) == Some(node) && is_pools(a, &pool.name)
            })
            .find_map(|a| {
                a.get("id")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
            })
            .map(str::to_string))
    }
}

fn number(pool: &Pool, key: &str, whole: bool) -> Result<Option<Value>, ProviderError> {
    let Some(raw) = pool.get(key).map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let bad = |what: &str| {
        ProviderError::invalid(format!(
            "pool {}: template key {key:?} = {raw:?} must be {what}",
            pool.name
        ))
    };
    if whole {
        raw.parse::<u32>()
            .map(|n| Some(json!(n)))
            .map_err(|_| bad("a whole number (0, 1, 2 ...)"))
    } else {
        match raw.parse::<f64>() {
            Ok(n) if n.is_finite() && n > 0.0 => Ok(Some(json!(n))),
            _ => Err(bad("a number above 0")),
        }
    }
}

/// The JSON body `create` posts for `req` in `pool`.
pub fn create_body(pool: &Pool, req: &CreateRequest) -> Result<Value, ProviderError> {
    if req.node.trim().is_empty() || req.node.chars().any(char::is_control) {
        return Err(ProviderError::invalid(format!(
            "{:?} is not a node name for a CML application",
            req.node
        )));
    }
    for (k, _) in &pool.template {
        if !(KEYS.contains(&k.as_str()) || k.starts_with("env.")) {
            return Err(ProviderError::invalid(format!(
                "pool {}: template key {k:?} is not known to the cml provider (it takes {} and env.NAME)",
                pool.name,
                KEYS.join(", ")
            )));
        }
    }
    let script = pool.require("script")?.trim();
    let mut env = Map::new();
    for (k, v) in pool.prefixed("env") {
        if !is_env_name(k) {
            return Err(ProviderError::invalid(format!(
                "pool {}: template key \"env.{k}\": {k:?} is not an environment variable name ([A-Za-z_][A-Za-z0-9_]*)",
                pool.name
            )));
        }
        if k.starts_with("CORRAL_") {
            return Err(ProviderError::invalid(format!(
                "pool {}: template key \"env.{k}\": CORRAL_* variables are set by the cml provider",
                pool.name
            )));
        }
        env.insert(k.to_string(), Value::String(v.to_string()));
    }
    env.insert(
        "CORRAL_USER_DATA".into(),
        Value::String(base64(req.user_data.as_bytes())),
    );
    env.insert("CORRAL_NODE".into(), Value::String(req.node.clone()));
    env.insert("CORRAL_POOL".into(), Value::String(pool.name.clone()));

    let mut body = Map::new();
    body.insert("name".into(), Value::String(req.node.clone()));
    body.insert(
        "subdomain".into(),
        Value::String(subdomain(&pool.name, &req.node)),
    );
    body.insert("description".into(), Value::String(marker(&pool.name)));
    body.insert("script".into(), Value::String(script.to_string()));
    for key in ["kernel", "runtime_identifier"] {
        if let Some(v) = pool.get(key).map(str::trim).filter(|v| !v.is_empty()) {
            body.insert(key.into(), Value::String(v.to_string()));
        }
    }
    for (key, whole) in [("cpu", false), ("memory", false), ("nvidia_gpu", true)] {
        if let Some(n) = number(pool, key, whole)? {
            body.insert(key.into(), n);
        }
    }
    body.insert("environment".into(), Value::Object(env));
    Ok(Value::Object(body))
}

impl Provider for Cml {
    fn info(_b: &dyn Backend) -> ProviderInfo {
        ProviderInfo::new("cml", env!("CARGO_PKG_VERSION"), "Cloudera AI (CML)", false)
    }

    fn create(b: &dyn Backend, pool: &Pool, req: &CreateRequest) -> Result<String, ProviderError> {
        let body = create_body(pool, req)?;
        let api = Api::new(b, pool)?;
        if let Some(id) = api.find(pool, &req.node)? {
            log::info(
                b,
                &format!("node {}: its CML application {id} exists already (a retried create); not making another", req.node),
            );
            return Ok(id);
        }
        let resp = api.send("POST", &api.apps, Some(&body))?;
        if !ok(resp.status) && says_exists(&resp) {
            if let Some(id) = api.find(pool, &req.node)? {
                log::info(
                    b,
                    &format!(
                        "node {}: CML says its application exists ({}); it is {id}",
                        req.node, resp.status
                    ),
                );
                return Ok(id);
            }
        }
        let v = api.answer("POST", &api.apps, &resp)?;
        v.get("id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .ok_or_else(|| {
                ProviderError::backend(format!(
                    "POST {}: CML answered {} without the application's id: {}",
                    api.apps,
                    status_text(resp.status),
                    cut(&v.to_string(), 200)
                ))
            })
    }

    fn delete(b: &dyn Backend, pool: &Pool, id: &str) -> Result<(), ProviderError> {
        check_id(id)?;
        let api = Api::new(b, pool)?;
        let url = api.app_url(id);
        let resp = api.send("DELETE", &url, None)?;
        if ok(resp.status) || resp.status == 404 {
            return Ok(());
        }
        if !says_stop_first(&resp) {
            return Err(api.error("DELETE", &url, &resp));
        }
        log::info(
            b,
            &format!("CML application {id} must be stopped before it is deleted; stopping it"),
        );
        let stop = format!("{url}:stop");
        let stopped = api.send("POST", &stop, Some(&json!({})))?;
        if stopped.status == 404 {
            return Ok(());
        }
        if !ok(stopped.status) {
            return Err(api.error("POST", &stop, &stopped));
        }
        let again = api.send("DELETE", &url, None)?;
        if ok(again.status) || again.status == 404 {
            Ok(())
        } else {
            Err(api.error("DELETE", &url, &again))
        }
    }

    fn list(b: &dyn Backend, pool: &Pool) -> Result<Vec<Machine>, ProviderError> {
        let api = Api::new(b, pool)?;
        let apps = api.list_all(&json!({ "description": marker(&pool.name) }))?;
        apps.iter()
            .filter(|a| is_pools(a, &pool.name))
            .map(|a| {
                parse_application(a)
                    .map_err(|e| ProviderError::backend(format!("GET {}: {e}", api.apps)))
            })
            .collect()
    }

    fn status(b: &dyn Backend, pool: &Pool, id: &str) -> Result<Option<Machine>, ProviderError> {
        check_id(id)?;
        let api = Api::new(b, pool)?;
        let url = api.app_url(id);
        let resp = api.send("GET", &url, None)?;
        if resp.status == 404 {
            return Ok(None);
        }
        let v = api.answer("GET", &url, &resp)?;
        parse_application(&v)
            .map(Some)
            .map_err(|e| ProviderError::backend(format!("GET {url}: {e}")))
    }
}

#[cfg(test)]
mod tests;
