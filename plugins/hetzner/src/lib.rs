//! The `hetzner` provider: a pool's machines are Hetzner Cloud servers, made, listed and
//! deleted through the Hetzner Cloud API (`POST /servers`, `GET /servers`,
//! `GET /servers/{id}`, `DELETE /servers/{id}`, `GET /actions/{id}`) with the pool's API
//! token, sent only as `Authorization: Bearer`.
//!
//! The pool's template (every value a string; a TOML array arrives as its JSON text):
//!
//! ```toml
//! [pools.gpu.template]
//! server_type = "cx22"                 # required: the server type's name
//! image = "ubuntu-24.04"               # required: an image name or id
//! location = "fsn1"                    # optional: where; Hetzner picks when unset
//! ssh_keys = ["ops", 4711]             # optional: SSH key names or ids
//! networks = [1234]                    # optional: private network ids to attach
//! firewalls = [38]                     # optional: firewall ids to apply
//! "labels.team" = "ml"                 # optional: extra labels, any number
//! api_url = "https://api.hetzner.cloud/v1"  # optional: the API's base URL
//! action_polls = "10"                  # optional: checks of a create/delete action (0-60)
//! action_poll_ms = "1000"              # optional: the wait before each check (0-10000)
//! ```
//!
//! Invariants and trade-offs:
//! - Pool membership is labels: every server this plugin creates carries
//!   `corral-pool=<pool>` and `corral-node=<node>` (the template cannot set either), and
//!   `list` is `GET /servers?label_selector=corral-pool=<pool>`, every page
//!   (`meta.pagination.next_page`, 50 a page). A server's node is its `corral-node`
//!   label, else its name; the server's name is the node's name.
//! - `create` is safe to retry: Hetzner server names are unique in a project, so a
//!   second create of the same node answers 409 `uniqueness_error`, and the plugin then
//!   finds the server by name and returns its id when it carries this pool's label
//!   (one that is not this pool's is an error naming it, never adopted).
//! - `create` follows the returned `create_server` action with `GET /actions/{id}`. The
//!   wait before each check is a sleep (`corral:provider/wait`, the call's thread on the
//!   coordinator, no CPU): at most `action_polls` checks (default 10), `action_poll_ms`
//!   apart (default 1000), together at most 60 s (the manifest's call timeout is 120 s).
//!   `success` returns the server's id; `error` deletes the half-made server (best
//!   effort) and is a backend error quoting the action's error code and message. An
//!   action still running after the last check returns the id all the same: Hetzner
//!   accepted the server, and its agent joining (or not) says the rest, as the
//!   contract asks. The `next_actions` (`start_server`, network attachments) are not
//!   followed: they are the boot, which the join confirms.
//! - `delete` is idempotent: 404 `not_found` is success. It follows its
//!   `delete_server` action the same way; one still running is success (`list` shows
//!   the server `deleting`).
//! - Errors: Hetzner's `{"error":{"code","message"}}` is quoted as a backend error with
//!   the request and status; 401 is `denied` saying the token was refused; 429 is
//!   [`ProviderError::RateLimited`], waiting until `RateLimit-Reset` (at least 1 s, 10 s
//!   when the header is missing) with `RateLimit-Remaining`/`RateLimit-Limit` in the
//!   message; 5xx names the status; a body that is not JSON is a backend error quoting
//!   its start. The token never appears in a message or a log line (any text the API
//!   echoes has it replaced by `[secret]`), nor does the user data.
//! - `api_url` must be `https://`; plain `http://` is accepted only to a loopback
//!   address (a test's fake API), so the token never crosses a network in clear text.

use corral_plugin_sdk::provider::{
    bearer, json_request, CreateRequest, Machine, MachineState, Pool, Provider, ProviderError,
    ProviderInfo, RateLimit,
};
use corral_plugin_sdk::serde_json::{json, Map, Value};
use corral_plugin_sdk::{log, Backend, Error};

pub struct Hetzner;

corral_plugin_sdk::export_provider!(Hetzner);

pub const DEFAULT_API: &str = "https://api.hetzner.cloud/v1";
/// The label naming the pool a server belongs to.
pub const POOL_LABEL: &str = "corral-pool";
/// The label naming the corral node a server was created for.
pub const NODE_LABEL: &str = "corral-node";
/// Servers asked for per list page (Hetzner's maximum).
pub const PER_PAGE: u32 = 50;
/// List pages followed at most (10 000 servers), against a `next_page` that never ends.
const MAX_PAGES: u64 = 200;
/// The wait asked for when a 429 has no usable `RateLimit-Reset`.
const DEFAULT_RETRY_MS: u64 = 10_000;
/// The longest `action_polls` × `action_poll_ms` may be.
const MAX_ACTION_WAIT_MS: u64 = 60_000;

/// Hetzner server statuses and their portable meaning: the one place they are read.
pub const STATES: &[(&str, MachineState)] = &[
    ("initializing", MachineState::Pending),
    ("starting", MachineState::Pending),
    ("running", MachineState::Running),
    ("stopping", MachineState::Stopping),
    ("off", MachineState::Off),
    ("deleting", MachineState::Deleting),
    // Moving to another host or being reinstalled: it comes back by itself.
    ("migrating", MachineState::Pending),
    ("rebuilding", MachineState::Pending),
    ("unknown", MachineState::Unknown),
];

/// One pool's view of the API: base URL, token, how actions are followed.
struct Api<'a> {
    b: &'a dyn Backend,
    pool: &'a Pool,
    base: String,
    token: &'a str,
    polls: u64,
    poll_ms: u64,
}

/// An answer the caller reads itself (2xx, 404, 409, other 4xx); 401, 429 and 5xx
/// never reach it.
struct Answer {
    status: u16,
    body: Value,
    what: String,
}

/// Where a followed action ended.
#[derive(Debug, PartialEq, Eq)]
enum Followed {
    Success,
    Failed {
        id: u64,
        code: String,
        message: String,
    },
    Running {
        id: u64,
        progress: u64,
    },
}

fn invalid(pool: &Pool, msg: impl std::fmt::Display) -> ProviderError {
    ProviderError::invalid(format!("pool {}: {msg}", pool.name))
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host == "[::1]"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|a| a.is_loopback())
}

/// The base URL from `api_url`: https, or http to a loopback address.
fn base_url(pool: &Pool) -> Result<String, ProviderError> {
    let url = pool
        .get("api_url")
        .filter(|u| !u.is_empty())
        .unwrap_or(DEFAULT_API)
        .trim_end_matches('/');
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = if authority.starts_with('[') {
        authority.split_inclusive(']').next().unwrap_or("")
    } else {
        authority.split(':').next().unwrap_or("")
    };
    let ok = !host.is_empty()
        && !authority.contains('@')
        && match scheme {
            "https" => true,
            "http" => is_loopback(host),
            _ => false,
        };
    if ok {
        Ok(url.to_string())
    } else {
        Err(invalid(
            pool,
            format!(
                "template key \"api_url\" = {url:?} must be an https:// URL (plain http:// only to a loopback address), e.g. {DEFAULT_API:?}"
            ),
        ))
    }
}

/// A whole-number template value in `range`, or its default.
fn number(pool: &Pool, key: &str, default: u64, max: u64) -> Result<u64, ProviderError> {
    match pool.get(key).map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(default),
        Some(v) => v.parse::<u64>().ok().filter(|n| *n <= max).ok_or_else(|| {
            invalid(
                pool,
                format!("template key {key:?} = {v:?} must be a whole number from 0 to {max}"),
            )
        }),
    }
}

impl<'a> Api<'a> {
    fn new(b: &'a dyn Backend, pool: &'a Pool) -> Result<Api<'a>, ProviderError> {
        let base = base_url(pool)?;
        let polls = number(pool, "action_polls", 10, 60)?;
        let poll_ms = number(pool, "action_poll_ms", 1000, 10_000)?;
        if polls * poll_ms > MAX_ACTION_WAIT_MS {
            return Err(invalid(
                pool,
                format!(
                    "action_polls ({polls}) x action_poll_ms ({poll_ms}) is more than {} s; a call must end well within the manifest's call timeout",
                    MAX_ACTION_WAIT_MS / 1000
                ),
            ));
        }
        let token = pool.secret()?;
        Ok(Api {
            b,
            pool,
            base,
            token,
            polls,
            poll_ms,
        })
    }

    /// `text` with the token, wherever the API echoed it, replaced.
    fn scrub(&self, text: &str) -> String {
        if self.token.is_empty() {
            text.to_string()
        } else {
            text.replace(self.token, "[secret]")
        }
    }

    fn backend(&self, msg: String) -> ProviderError {
        ProviderError::backend(self.scrub(&msg))
    }

    /// Sends one request. 401, 403 for the token, 429, 5xx and a body that is not JSON
    /// are errors here; every other answer is the caller's to read.
    fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer, ProviderError> {
        let url = format!("{}{path}", self.base);
        let what = format!("{method} {url}");
        let headers = [bearer(self.token)];
        let resp = json_request(self.b, method, &url, &headers, body).map_err(|e| match e {
            Error::Backend(m) => self.backend(format!("Hetzner API: {m}")),
            Error::Timeout(m) => ProviderError::Failed(Error::Timeout(self.scrub(&m))),
            Error::Denied(m) => ProviderError::Failed(Error::Denied(self.scrub(&m))),
            Error::Invalid(m) => ProviderError::Failed(Error::Invalid(self.scrub(&m))),
            Error::Unsupported(m) => ProviderError::Failed(Error::Unsupported(self.scrub(&m))),
        })?;
        let status = resp.status;
        let parsed = if resp.body.iter().all(|c| c.is_ascii_whitespace()) {
            Value::Null
        } else {
            match corral_plugin_sdk::serde_json::from_slice::<Value>(&resp.body) {
                Ok(v) => v,
                Err(_) if !(200..300).contains(&status) => {
                    Value::String(String::from_utf8_lossy(&resp.body).trim().to_string())
                }
                Err(e) => {
                    return Err(self.backend(format!(
                    "Hetzner API: {what} answered {status} with a body that is not JSON ({e}): {}",
                    start_of(&String::from_utf8_lossy(&resp.body))
                )))
                }
            }
        };
        let answer = Answer {
            status,
            body: parsed,
            what,
        };
        match status {
            401 => Err(ProviderError::Failed(Error::Denied(self.scrub(&format!(
                "Hetzner refused pool {}'s API token: {} answered 401 {}; put a valid read & write token of the project in the pool's secret_file",
                self.pool.name,
                answer.what,
                error_text(&answer.body)
            ))))),
            403 if matches!(error_code(&answer.body), "forbidden" | "token_readonly") => {
                Err(ProviderError::Failed(Error::Denied(self.scrub(&format!(
                    "Hetzner did not allow pool {}'s API token to do this: {} answered 403 {}; the pool needs a read & write token",
                    self.pool.name,
                    answer.what,
                    error_text(&answer.body)
                )))))
            }
            429 => Err(self.rate_limited(&resp, &answer)),
            500..=599 => Err(self.backend(format!(
                "Hetzner API: {} answered {status} (a server error on Hetzner's side; retry later): {}",
                answer.what,
                error_text(&answer.body)
            ))),
            _ => Ok(answer),
        }
    }

    fn rate_limited(&self, resp: &corral_plugin_sdk::Response, answer: &Answer) -> ProviderError {
        let header = |name: &str| resp.header(name).map(str::trim).filter(|v| !v.is_empty());
        let reset = header("RateLimit-Reset").and_then(|v| v.parse::<u64>().ok());
        let retry_after_ms = match reset {
            Some(secs) => secs
                .saturating_mul(1000)
                .saturating_sub(self.b.now_ms())
                .max(1000),
            None => DEFAULT_RETRY_MS,
        };
        let mut message = format!(
            "Hetzner API rate limit reached: {} answered 429 {}",
            answer.what,
            error_text(&answer.body)
        );
        message.push_str(&format!(
            "; RateLimit-Remaining {} of RateLimit-Limit {}",
            header("RateLimit-Remaining").unwrap_or("?"),
            header("RateLimit-Limit").unwrap_or("?")
        ));
        match reset {
            Some(secs) => message.push_str(&format!(", resets at Unix time {secs}")),
            None => message.push_str(", no RateLimit-Reset given"),
        }
        ProviderError::RateLimited(RateLimit {
            retry_after_ms,
            message: self.scrub(&message),
        })
    }

    /// The error for an answer the caller did not expect.
    fn unexpected(&self, a: &Answer) -> ProviderError {
        self.backend(format!(
            "Hetzner API: {} answered {} {}",
            a.what,
            a.status,
            error_text(&a.body)
        ))
    }

    /// Sleeps until the host's clock reads `until_ms` (`corral:provider/wait`).
    fn wait_until(&self, until_ms: u64) {
        let now = self.b.now_ms();
        if until_ms > now {
            self.b
                .sleep_ms(u32::try_from(until_ms - now).unwrap_or(u32::MAX));
        }
    }

    /// Follows `action` (as the create or delete answer gave it) with `GET
    /// /actions/{id}`: at most `polls` checks, each after `poll_ms`.
    fn follow(&self, action: &Value) -> Result<Followed, ProviderError> {
        let mut action = action.clone();
        let mut checks = 0;
        loop {
            let id = action.get("id").and_then(Value::as_u64).ok_or_else(|| {
                self.backend(format!(
                    "Hetzner API: an action without an id: {}",
                    start_of(&action.to_string())
                ))
            })?;
            match action.get("status").and_then(Value::as_str).unwrap_or("") {
                "success" => return Ok(Followed::Success),
                "error" => {
                    let err = action.get("error").unwrap_or(&Value::Null);
                    let text =
                        |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                    return Ok(Followed::Failed {
                        id,
                        code: text("code"),
                        message: text("message"),
                    });
                }
                _ if checks >= self.polls => {
                    return Ok(Followed::Running {
                        id,
                        progress: action.get("progress").and_then(Value::as_u64).unwrap_or(0),
                    })
                }
                _ => {}
            }
            let until = self.b.now_ms().saturating_add(self.poll_ms);
            self.wait_until(until);
            checks += 1;
            let a = self.send("GET", &format!("/actions/{id}"), None)?;
            if !(200..300).contains(&a.status) {
                return Err(self.unexpected(&a));
            }
            action = a.body.get("action").cloned().ok_or_else(|| {
                self.backend(format!(
                    "Hetzner API: {} answered without an action",
                    a.what
                ))
            })?;
        }
    }

    /// The server named `name`, if there is one (`GET /servers?name=`).
    fn server_named(&self, name: &str) -> Result<Option<Value>, ProviderError> {
        let a = self.send("GET", &format!("/servers?name={}", encode(name)), None)?;
        if !(200..300).contains(&a.status) {
            return Err(self.unexpected(&a));
        }
        Ok(a.body
            .get("servers")
            .and_then(Value::as_array)
            .and_then(|s| {
                s.iter()
                    .find(|s| s.get("name").and_then(Value::as_str) == Some(name))
            })
            .cloned())
    }
}

/// The first 300 characters of `text`, on one line.
fn start_of(text: &str) -> String {
    text.chars()
        .take(300)
        .collect::<String>()
        .replace(['\n', '\r'], " ")
}

fn error_code(body: &Value) -> &str {
    body.pointer("/error/code")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// Hetzner's error as `code: message`, or the start of whatever the body was.
pub fn error_text(body: &Value) -> String {
    let message = body.pointer("/error/message").and_then(Value::as_str);
    match (error_code(body), message) {
        ("", None) => match body {
            Value::Null => "(no body)".to_string(),
            Value::String(s) => start_of(s),
            other => start_of(&other.to_string()),
        },
        (code, Some(m)) if !code.is_empty() => format!("{code}: {m}"),
        (code, None) => code.to_string(),
        (_, Some(m)) => m.to_string(),
    }
}

/// Percent-encodes a query value.
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A label value as Hetzner takes them: at most 63 characters, alphanumerics with
/// `-`, `_` and `.` inside; empty is allowed.
pub fn label_value_ok(v: &str) -> bool {
    let inner = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
    v.is_empty()
        || (v.len() <= 63
            && v.chars().all(inner)
            && v.starts_with(|c: char| c.is_ascii_alphanumeric())
            && v.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

/// A label key: a label value that is not empty, optionally after a DNS-name prefix
/// and `/`.
pub fn label_key_ok(k: &str) -> bool {
    let (prefix, name) = k.rsplit_once('/').unwrap_or(("", k));
    let prefix_ok = prefix.is_empty()
        || (prefix.len() <= 253
            && prefix.split('.').all(|p| {
                !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            }));
    prefix_ok
        && !name.is_empty()
        && label_value_ok(name)
        && (!k.contains('/') || !prefix.is_empty())
}

/// A template value that must be a JSON array of ids (numbers, or numbers as text).
fn id_list(pool: &Pool, key: &str) -> Result<Option<Vec<u64>>, ProviderError> {
    let Some(raw) = pool.get(key).filter(|v| !v.trim().is_empty()) else {
        return Ok(None);
    };
    let bad = || {
        invalid(
            pool,
            format!("template key {key:?} must be a list of ids, e.g. {key} = [1234]; got {raw:?}"),
        )
    };
    let parsed: Value = corral_plugin_sdk::serde_json::from_str(raw).map_err(|_| bad())?;
    let items = parsed.as_array().ok_or_else(bad)?;
    items
        .iter()
        .map(|v| match v {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        })
        .collect::<Option<Vec<u64>>>()
        .map(Some)
        .ok_or_else(bad)
}

/// The `POST /servers` body for `req` from the pool's template.
pub fn create_body(pool: &Pool, req: &CreateRequest) -> Result<Value, ProviderError> {
    let server_type = pool.require("server_type")?;
    let image = pool.require("image")?;
    for (what, v) in [
        ("pool name", pool.name.as_str()),
        ("node name", req.node.as_str()),
    ] {
        if v.is_empty() || !label_value_ok(v) {
            return Err(invalid(
                pool,
                format!(
                    "the {what} {v:?} cannot be a Hetzner label value (at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit)"
                ),
            ));
        }
    }
    let mut labels = Map::new();
    for (k, v) in pool.prefixed("labels") {
        if k == POOL_LABEL || k == NODE_LABEL {
            return Err(invalid(
                pool,
                format!("template key \"labels.{k}\" is set by the plugin (it marks the pool's servers); remove it"),
            ));
        }
        if !label_key_ok(k) || !label_value_ok(v) {
            return Err(invalid(
                pool,
                format!(
                    "label {k:?} = {v:?} is not a valid Hetzner label (keys and values: at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit)"
                ),
            ));
        }
        labels.insert(k.to_string(), Value::String(v.to_string()));
    }
    labels.insert(POOL_LABEL.into(), Value::String(pool.name.clone()));
    labels.insert(NODE_LABEL.into(), Value::String(req.node.clone()));

    let mut body = Map::new();
    body.insert("name".into(), Value::String(req.node.clone()));
    body.insert("server_type".into(), Value::String(server_type.into()));
    body.insert("image".into(), Value::String(image.into()));
    if let Some(loc) = pool.get("location").filter(|l| !l.is_empty()) {
        body.insert("location".into(), Value::String(loc.into()));
    }
    if let Some(raw) = pool.get("ssh_keys").filter(|v| !v.trim().is_empty()) {
        let bad = || {
            invalid(
                pool,
                format!("template key \"ssh_keys\" must be a list of SSH key names or ids, e.g. ssh_keys = [\"ops\"]; got {raw:?}"),
            )
        };
        let parsed: Value = corral_plugin_sdk::serde_json::from_str(raw).map_err(|_| bad())?;
        let keys = parsed.as_array().ok_or_else(bad)?;
        if !keys.iter().all(|k| k.is_string() || k.is_u64()) {
            return Err(bad());
        }
        body.insert("ssh_keys".into(), Value::Array(keys.clone()));
    }
    if let Some(ids) = id_list(pool, "networks")? {
        body.insert("networks".into(), json!(ids));
    }
    if let Some(ids) = id_list(pool, "firewalls")? {
        let list: Vec<Value> = ids.iter().map(|id| json!({ "firewall": id })).collect();
        body.insert("firewalls".into(), Value::Array(list));
    }
    body.insert("user_data".into(), Value::String(req.user_data.clone()));
    body.insert("labels".into(), Value::Object(labels));
    body.insert("start_after_create".into(), Value::Bool(true));
    Ok(Value::Object(body))
}

/// Milliseconds since the Unix epoch of an RFC 3339 time (`2016-01-30T23:50:00+00:00`,
/// `...Z`, fractions of a second allowed); `None` when it is not one.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let digits = |from: usize, n: usize| -> Option<i64> {
        let part = b.get(from..from + n)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    let sep = |at: usize, c: &[u8]| b.get(at).is_some_and(|x| c.contains(x));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (year, month, day) = (digits(0, 4)?, digits(5, 2)?, digits(8, 2)?);
    let (hour, min, sec) = (digits(11, 2)?, digits(14, 2)?, digits(17, 2)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut millis = 0i64;
    if sep(i, b".") {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            if i - start < 3 {
                millis = millis * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        if i == start {
            return None;
        }
        for _ in (i - start)..3 {
            millis *= 10;
        }
    }
    let offset_min = match b.get(i) {
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if i + 6 == b.len() && sep(i + 3, b":") => {
            let (h, m) = (digits(i + 1, 2)?, digits(i + 4, 2)?);
            let off = h * 60 + m;
            if *sign == b'-' {
                -off
            } else {
                off
            }
        }
        _ => return None,
    };
    // Days from 1970-01-01 to the civil date (Howard Hinnant's days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + min * 60 + sec - offset_min * 60;
    u64::try_from(secs * 1000 + millis).ok()
}

/// A machine from one Hetzner server object (`GET /servers` entry, `GET /servers/{id}`).
pub fn machine(server: &Value) -> Option<Machine> {
    let id = server.get("id").and_then(Value::as_u64)?;
    let name = server.get("name").and_then(Value::as_str).unwrap_or("");
    let label = |k: &str| {
        server
            .pointer(&format!("/labels/{k}"))
            .and_then(Value::as_str)
    };
    let node = label(NODE_LABEL).filter(|n| !n.is_empty()).unwrap_or(name);
    let native = server.get("status").and_then(Value::as_str).unwrap_or("");
    let state = STATES.iter().find(|(n, _)| *n == native).map(|(_, s)| *s);
    let message = match state {
        None => Some(format!("unrecognised Hetzner server status {native:?}")),
        Some(MachineState::Unknown) => {
            Some("Hetzner reports the server's status as unknown".to_string())
        }
        Some(_) => None,
    };
    Some(Machine {
        id: id.to_string(),
        node: node.to_string(),
        state: state.unwrap_or(MachineState::Unknown),
        native_state: native.to_string(),
        created_ms: server
            .get("created")
            .and_then(Value::as_str)
            .and_then(parse_rfc3339),
        message,
    })
}

/// A provider error in words, for a message that carries another.
fn describe(e: &ProviderError) -> String {
    match e {
        ProviderError::Failed(
            Error::Denied(m)
            | Error::Invalid(m)
            | Error::Backend(m)
            | Error::Timeout(m)
            | Error::Unsupported(m),
        ) => m.clone(),
        ProviderError::RateLimited(r) => r.message.clone(),
    }
}

/// A server id as Hetzner makes them: a number. It goes into a URL path.
fn check_id(pool: &Pool, id: &str) -> Result<(), ProviderError> {
    if !id.is_empty() && id.len() <= 20 && id.chars().all(|c| c.is_ascii_digit()) {
        Ok(())
    } else {
        Err(invalid(
            pool,
            format!("{id:?} is not a Hetzner server id (a number)"),
        ))
    }
}

impl Provider for Hetzner {
    fn info(_b: &dyn Backend) -> ProviderInfo {
        ProviderInfo::new("hetzner", env!("CARGO_PKG_VERSION"), "Hetzner Cloud", true)
    }

    fn create(b: &dyn Backend, pool: &Pool, req: &CreateRequest) -> Result<String, ProviderError> {
        let api = Api::new(b, pool)?;
        let body = create_body(pool, req)?;
        let a = api.send("POST", "/servers", Some(&body))?;
        if a.status == 409 && error_code(&a.body) == "uniqueness_error" {
            return match api.server_named(&req.node)? {
                Some(s) => {
                    let owner = s
                        .pointer(&format!("/labels/{POOL_LABEL}"))
                        .and_then(Value::as_str);
                    let id = s.get("id").and_then(Value::as_u64);
                    match (owner, id) {
                        (Some(p), Some(id)) if p == pool.name => {
                            log::info(
                                b,
                                &format!("server {} already exists as id {id} (an earlier create of node {}); using it", req.node, req.node),
                            );
                            Ok(id.to_string())
                        }
                        _ => Err(api.backend(format!(
                            "Hetzner already has a server named {:?} that is not pool {}'s (its {POOL_LABEL} label is {}); delete or rename it, or rename the pool",
                            req.node,
                            pool.name,
                            owner.map(|o| format!("{o:?}")).unwrap_or_else(|| "not set".into())
                        ))),
                    }
                }
                None => Err(api.unexpected(&a)),
            };
        }
        if !(200..300).contains(&a.status) {
            return Err(api.unexpected(&a));
        }
        let id = a
            .body
            .pointer("/server/id")
            .and_then(Value::as_u64)
            .ok_or_else(|| {
                api.backend(format!(
                    "Hetzner API: {} answered {} without a server id",
                    a.what, a.status
                ))
            })?;
        let Some(action) = a.body.get("action") else {
            return Ok(id.to_string());
        };
        match api.follow(action)? {
            Followed::Success => {
                log::info(
                    b,
                    &format!(
                        "created server {} (id {id}) for pool {}",
                        req.node, pool.name
                    ),
                );
                Ok(id.to_string())
            }
            Followed::Running {
                id: action_id,
                progress,
            } => {
                log::info(
                    b,
                    &format!(
                        "server {} (id {id}) accepted; its create_server action {action_id} is still running ({progress}%) after {} checks, so create returns now and the node's join confirms the rest",
                        req.node, api.polls
                    ),
                );
                Ok(id.to_string())
            }
            Followed::Failed {
                id: action_id,
                code,
                message,
            } => {
                let cleanup = match api.send("DELETE", &format!("/servers/{id}"), None) {
                    Ok(d) if (200..300).contains(&d.status) || d.status == 404 => {
                        "the half-made server was deleted".to_string()
                    }
                    Ok(d) => format!(
                        "deleting the half-made server failed too ({} {}); delete it by hand",
                        d.status,
                        error_text(&d.body)
                    ),
                    Err(e) => format!(
                        "deleting the half-made server failed too ({}); delete it by hand",
                        describe(&e)
                    ),
                };
                Err(api.backend(format!(
                    "Hetzner could not create server {} (id {id}): its create_server action {action_id} failed with {code}: {message}; {cleanup}",
                    req.node
                )))
            }
        }
    }

    fn delete(b: &dyn Backend, pool: &Pool, id: &str) -> Result<(), ProviderError> {
        check_id(pool, id)?;
        let api = Api::new(b, pool)?;
        let a = api.send("DELETE", &format!("/servers/{id}"), None)?;
        if a.status == 404 {
            log::debug(b, &format!("server {id} is already gone"));
            return Ok(());
        }
        if !(200..300).contains(&a.status) {
            return Err(api.unexpected(&a));
        }
        let Some(action) = a.body.get("action") else {
            return Ok(());
        };
        match api.follow(action)? {
            Followed::Success | Followed::Running { .. } => Ok(()),
            Followed::Failed { id: action_id, code, message } => Err(api.backend(format!(
                "Hetzner could not delete server {id}: its delete_server action {action_id} failed with {code}: {message}"
            ))),
        }
    }

    fn list(b: &dyn Backend, pool: &Pool) -> Result<Vec<Machine>, ProviderError> {
        let api = Api::new(b, pool)?;
        let selector = encode(&format!("{POOL_LABEL}={}", pool.name));
        let mut machines = Vec::new();
        let mut page = 1u64;
        for _ in 0..MAX_PAGES {
            let a = api.send(
                "GET",
                &format!("/servers?label_selector={selector}&per_page={PER_PAGE}&page={page}"),
                None,
            )?;
            if !(200..300).contains(&a.status) {
                return Err(api.unexpected(&a));
            }
            let servers = a
                .body
                .get("servers")
                .and_then(Value::as_array)
                .ok_or_else(|| {
                    api.backend(format!(
                        "Hetzner API: {} answered without a servers list: {}",
                        a.what,
                        start_of(&a.body.to_string())
                    ))
                })?;
            for s in servers {
                machines.push(machine(s).ok_or_else(|| {
                    api.backend(format!(
                        "Hetzner API: {} listed a server without an id: {}",
                        a.what,
                        start_of(&s.to_string())
                    ))
                })?);
            }
            match a
                .body
                .pointer("/meta/pagination/next_page")
                .and_then(Value::as_u64)
            {
                Some(next) if next > page => page = next,
                _ => return Ok(machines),
            }
        }
        Err(api.backend(format!(
            "Hetzner API: the server list of pool {} has more than {MAX_PAGES} pages of {PER_PAGE}; stopped there",
            pool.name
        )))
    }

    fn status(b: &dyn Backend, pool: &Pool, id: &str) -> Result<Option<Machine>, ProviderError> {
        check_id(pool, id)?;
        let api = Api::new(b, pool)?;
        let a = api.send("GET", &format!("/servers/{id}"), None)?;
        if a.status == 404 {
            return Ok(None);
        }
        if !(200..300).contains(&a.status) {
            return Err(api.unexpected(&a));
        }
        let server = a.body.get("server").unwrap_or(&Value::Null);
        let mut m = machine(server).ok_or_else(|| {
            api.backend(format!(
                "Hetzner API: {} answered without a server: {}",
                a.what,
                start_of(&a.body.to_string())
            ))
        })?;
        let owner = server
            .pointer(&format!("/labels/{POOL_LABEL}"))
            .and_then(Value::as_str);
        if owner != Some(pool.name.as_str()) {
            m.message = Some(format!(
                "the server is not labelled {POOL_LABEL}={} (its label: {})",
                pool.name,
                owner.unwrap_or("not set")
            ));
        }
        Ok(Some(m))
    }
}

#[cfg(test)]
mod tests;
