//! The {{name}} plugin: a scheduler with a REST API, reached through the corral plugin
//! host's HTTP import under the grants of `{{name}}.toml`.
//!
//! Scaffolded by `corral plugin new --kind http`: the endpoints, JSON fields and states
//! below are placeholders for an API that does not exist. Replace each with your
//! scheduler's (one function or constant at a time), replace `fixtures/` with its real
//! responses, and keep `cargo test -p {{package}}` green. plugins/README.md explains
//! every SDK piece used here.
//!
//! Invariants (keep them when you adapt this file):
//! - The base URL is the manifest's `[config] url`; its `host:port` must be granted in
//!   `[grants] hosts`, and nothing else is reached.
//! - The job's program and arguments travel as a JSON list, never as shell text, so
//!   `render` returns exactly the body `submit` posts.
//! - Every job id is checked ([`ID`]) before it is put into a URL.
//! - A job the API does not know (404) is `unknown` with the API's words, never assumed
//!   to have succeeded; cancelling it is not an error, so `cancel` is idempotent.
//! - A spec field the API cannot express is refused ([`UNSUPPORTED`]), never dropped.

use corral_plugin_sdk::ids::{JobId, Tasks};
use corral_plugin_sdk::serde_json::{json, Map, Value};
use corral_plugin_sdk::spec::{refuse, Field};
use corral_plugin_sdk::states::{Facts, Means, Rows, StateTable};
use corral_plugin_sdk::status::{Found, Resolver};
use corral_plugin_sdk::{http_json, Backend, Error, JobSpec, JobStatus, PluginInfo, Scheduler};

pub struct {{Type}};

corral_plugin_sdk::export_plugin!({{Type}});

/// The scheduler, for people and messages.
const SCHEDULER: &str = "{{name}}";

/// The state table to fill in: each portable meaning with the API's states that mean
/// it. A state not listed is `unknown`, naming it.
pub const STATES: Rows<&str> = &[
    (Means::Queued, &["PENDING"]),
    (Means::Running, &["RUNNING"]),
    (Means::Exited, &["FINISHED"]),
    (Means::Failed("the scheduler marked it failed"), &["FAILED"]),
    (Means::Cancelled, &["CANCELLED"]),
];

const TABLE: StateTable<&str> = StateTable::new(SCHEDULER, STATES);

/// Job ids: a number, so it is safe in a URL path.
const ID: JobId = JobId::new(SCHEDULER, Tasks::None);

/// What this API cannot express, with what to do instead.
const UNSUPPORTED: &[(Field, &str)] = &[
    (Field::Nodes, "it runs each job on one machine"),
    (Field::Gpus, "it does not schedule GPUs"),
    (Field::Queue, "it has one queue"),
    (Field::Account, "it has no accounts"),
    (Field::Reservation, "it has no reservations"),
    (Field::Array, "submit one job per task"),
    (
        Field::Dependencies,
        "submit the next job when this one has ended",
    ),
];

/// The API's base URL, from the manifest's `[config] url`.
fn base_url(b: &dyn Backend) -> Result<String, Error> {
    let url = b.config("url").ok_or_else(|| {
        Error::Invalid(format!(
            "the {SCHEDULER} manifest has no `url` in [config]; set it to the API's base URL (e.g. \"http://127.0.0.1:8080\") and grant its host:port in [grants] hosts"
        ))
    })?;
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(Error::Invalid(format!(
            "[config] url = {url:?} is not an http:// or https:// URL"
        )));
    }
    Ok(url.trim_end_matches('/').to_string())
}

/// The JSON body `submit` posts for `spec`.
pub fn body(spec: &JobSpec) -> Result<Value, Error> {
    refuse(spec, SCHEDULER, UNSUPPORTED)?;
    if spec.executable.is_empty() {
        return Err(Error::Invalid(
            "the job spec has an empty executable".into(),
        ));
    }
    let mut command = vec![spec.executable.clone()];
    command.extend(spec.arguments.iter().cloned());
    let env: Map<String, Value> = spec
        .environment
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    Ok(json!({
        "name": spec.name,
        "command": command,
        "env": env,
        "directory": spec.directory,
        "cpus": spec.cpus_per_task,
        "memory_mb": spec.memory_mb,
        "time_limit_s": spec.walltime_seconds,
    }))
}

/// The message of an API error answer: its `error` field, or the text it sent.
fn said(v: &Value) -> String {
    v.get("error")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| v.to_string())
}

/// One job as `GET /jobs/ID` answers.
fn job_status(id: &str, v: &Value) -> JobStatus {
    let state = v.get("state").and_then(Value::as_str).unwrap_or_default();
    let facts = Facts {
        exit_code: v.get("exit_code").and_then(Value::as_i64).map(|c| c as i32),
        note: v
            .get("message")
            .and_then(Value::as_str)
            .filter(|m| !m.is_empty())
            .map(str::to_string),
        ..Facts::default()
    };
    TABLE.status(id, state, state, facts)
}

/// The one lookup: `GET /jobs/ID` for each id (404: the API does not know it).
fn lookup(b: &dyn Backend, url: &str, ids: &[String]) -> Result<Vec<Found>, Error> {
    let one = |id: &String| -> Result<Found, Error> {
        let (code, v) = http_json(b, "GET", &format!("{url}/jobs/{id}"), None)?;
        Ok(match code {
            200 => Found::Parts(vec![job_status(id, &v)]),
            404 => Found::Gone(format!("{SCHEDULER} does not know the job: {}", said(&v))),
            c => {
                return Err(Error::Backend(format!(
                    "GET {url}/jobs/{id} answered {c}: {}",
                    said(&v)
                )))
            }
        })
    };
    ids.iter().map(one).collect()
}

impl Scheduler for {{Type}} {
    fn info() -> PluginInfo {
        PluginInfo::new("{{name}}", env!("CARGO_PKG_VERSION"), SCHEDULER, &[])
    }

    fn render(_b: &dyn Backend, spec: JobSpec) -> Result<String, Error> {
        Ok(body(&spec)?.to_string())
    }

    fn submit(b: &dyn Backend, spec: JobSpec) -> Result<String, Error> {
        let url = format!("{}/jobs", base_url(b)?);
        let (code, v) = http_json(b, "POST", &url, Some(&body(&spec)?))?;
        let id = v.get("id").and_then(Value::as_str).unwrap_or_default();
        match code {
            200 | 201 if ID.check(id).is_ok() => Ok(id.to_string()),
            200 | 201 => Err(Error::Backend(format!(
                "POST {url} answered no job id: {v}"
            ))),
            c => Err(Error::Backend(format!(
                "POST {url} answered {c}: {}",
                said(&v)
            ))),
        }
    }

    fn status(b: &dyn Backend, ids: Vec<String>) -> Result<Vec<JobStatus>, Error> {
        let r = Resolver::new(ids, |id| ID.check(id))?;
        let url = base_url(b)?;
        Ok(r.live_all(|ids| lookup(b, &url, ids))?.finish())
    }

    /// Idempotent: 404 (unknown) and 409 (already ended) are done.
    fn cancel(b: &dyn Backend, id: String) -> Result<(), Error> {
        ID.check(&id)?;
        let url = format!("{}/jobs/{id}/cancel", base_url(b)?);
        match http_json(b, "POST", &url, None)? {
            (200..=299 | 404 | 409, _) => Ok(()),
            (c, v) => Err(Error::Backend(format!(
                "POST {url} answered {c}: {}",
                said(&v)
            ))),
        }
    }
}

#[cfg(test)]
mod tests;
