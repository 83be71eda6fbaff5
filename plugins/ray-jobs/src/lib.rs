//! The Ray Jobs plugin: the Ray Jobs REST API on a Ray head's dashboard port
//! (`POST /api/jobs/`, `GET /api/jobs/{id}`, `GET /api/jobs/{id}/logs`,
//! `POST /api/jobs/{id}/stop`, `GET /api/jobs/`), through the host's HTTP import.
//!
//! Invariants and trade-offs:
//! - The dashboard URL comes from the manifest's `[config] dashboard` (for example
//!   `http://127.0.0.1:8265`), and its `host:port` must be in the manifest's `hosts`
//!   grant; nothing else is reached.
//! - Ray runs an entrypoint through a shell, so the entrypoint is built by the SDK's
//!   quoting ([`corral_plugin_sdk::script::command_line`]): the program and every
//!   argument arrive literally. The environment goes into the runtime environment's
//!   `env_vars`, not into the command line. `render` returns the exact JSON body
//!   `submit` posts.
//! - What Ray Jobs cannot express (arrays, dependencies, queues, accounts,
//!   reservations, walltime, output paths, more than one node or task) is refused as
//!   unsupported, naming the field, rather than silently dropped.
//! - States are the table [`STATES`]; `STOPPED` is cancelled. A submission id Ray does
//!   not know (404: the head restarted, or the job was deleted) is `unknown` with Ray's
//!   words; stopping it is not an error, so `cancel` stays idempotent.

use corral_plugin_sdk::script::{check_text, command_line, is_env_name};
use corral_plugin_sdk::serde_json::{json, Map, Value};
use corral_plugin_sdk::{
    first_line, http_json, log, Backend, Error, Feature, JobSpec, JobState, JobStatus, PluginInfo,
    Scheduler,
};

pub struct RayJobs;

corral_plugin_sdk::export_plugin!(RayJobs);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

/// Ray job statuses and their portable meaning: the one place they are interpreted.
pub const STATES: &[(&str, Kind)] = &[
    ("PENDING", Kind::Queued),
    ("RUNNING", Kind::Running),
    ("SUCCEEDED", Kind::Succeeded),
    ("FAILED", Kind::Failed),
    ("STOPPED", Kind::Cancelled),
];

/// The dashboard's base URL, from the manifest's `[config] dashboard`.
fn dashboard(b: &dyn Backend) -> Result<String, Error> {
    let url = b.config("dashboard").ok_or_else(|| {
        Error::Invalid(
            "the ray-jobs manifest has no `dashboard` in [config]; set it to the head's dashboard URL (e.g. \"http://127.0.0.1:8265\") and grant its host:port in [grants] hosts".into(),
        )
    })?;
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(Error::Invalid(format!(
            "[config] dashboard = {url:?} is not an http:// or https:// URL"
        )));
    }
    Ok(url.trim_end_matches('/').to_string())
}

/// A submission id as Ray makes them (`raysubmit_...`) or a caller chose them: it goes
/// into a URL path, so only URL-safe characters.
fn check_id(id: &str) -> Result<(), Error> {
    let ok = !id.is_empty()
        && id.len() <= 256
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        && id != "."
        && id != "..";
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "{id:?} is not a Ray job submission id"
        )))
    }
}

fn unsupported(field: &str) -> Error {
    Error::Unsupported(format!(
        "Ray Jobs has no equivalent of the job spec's {field}"
    ))
}

/// The JSON body `POST /api/jobs/` gets for `spec`.
pub fn submit_body(spec: &JobSpec) -> Result<Value, Error> {
    if spec.array.is_some() {
        return Err(unsupported("array"));
    }
    if !spec.dependencies.is_empty() {
        return Err(unsupported("dependencies"));
    }
    for (field, set) in [
        ("queue", spec.queue.is_some()),
        ("account", spec.account.is_some()),
        ("reservation", spec.reservation.is_some()),
        ("walltime", spec.walltime_seconds.is_some()),
        (
            "stdout path (Ray keeps the job's output; read it with logs)",
            spec.stdout_path.is_some(),
        ),
        (
            "stderr path (Ray keeps the job's output; read it with logs)",
            spec.stderr_path.is_some(),
        ),
        ("nodes beyond 1", spec.nodes.is_some_and(|n| n > 1)),
        (
            "tasks per node beyond 1",
            spec.tasks_per_node.is_some_and(|n| n > 1),
        ),
    ] {
        if set {
            return Err(unsupported(field));
        }
    }
    let mut body = Map::new();
    body.insert("entrypoint".into(), Value::String(command_line(spec)?));
    let mut runtime_env = match spec.attribute("ray.runtime_env") {
        Some(text) => match corral_plugin_sdk::serde_json::from_str::<Value>(text) {
            Ok(Value::Object(m)) => m,
            _ => {
                return Err(Error::Invalid(
                    "attribute ray.runtime_env must be a JSON object (Ray's runtime_env)".into(),
                ))
            }
        },
        None => Map::new(),
    };
    if !spec.environment.is_empty() {
        let mut vars = match runtime_env.remove("env_vars") {
            Some(Value::Object(m)) => m,
            _ => Map::new(),
        };
        for (k, v) in &spec.environment {
            if !is_env_name(k) {
                return Err(Error::Invalid(format!(
                    "environment variable name {k:?} is not a valid name ([A-Za-z_][A-Za-z0-9_]*)"
                )));
            }
            check_text(&format!("environment variable {k}"), v)?;
            vars.insert(k.clone(), Value::String(v.clone()));
        }
        runtime_env.insert("env_vars".into(), Value::Object(vars));
    }
    if !runtime_env.is_empty() {
        body.insert("runtime_env".into(), Value::Object(runtime_env));
    }
    if let Some(n) = &spec.name {
        check_text("job name", n)?;
        body.insert("metadata".into(), json!({ "job_name": n }));
    }
    if let Some(c) = spec.cpus_per_task {
        body.insert("entrypoint_num_cpus".into(), json!(c));
    }
    if let Some(g) = spec.gpus_per_node {
        body.insert("entrypoint_num_gpus".into(), json!(g));
    }
    if let Some(mb) = spec.memory_mb {
        body.insert(
            "entrypoint_memory".into(),
            json!(mb.saturating_mul(1024 * 1024)),
        );
    }
    for (key, _) in spec.attributes_for("ray") {
        if key != "runtime_env" {
            return Err(Error::Invalid(format!(
                "attribute ray.{key} is not known (the plugin takes ray.runtime_env)"
            )));
        }
    }
    Ok(Value::Object(body))
}

/// A job's status from `GET /api/jobs/{id}` (or one entry of the list).
pub fn parse_job(id: &str, v: &Value) -> JobStatus {
    let status = v.get("status").and_then(Value::as_str).unwrap_or("");
    let message = v.get("message").and_then(Value::as_str).map(str::to_string);
    let kind = STATES.iter().find(|(n, _)| *n == status).map(|(_, k)| *k);
    let state = match kind {
        Some(Kind::Queued) => JobState::Queued(false),
        Some(Kind::Running) => JobState::Running,
        Some(Kind::Succeeded) => JobState::Succeeded,
        Some(Kind::Cancelled) => JobState::Cancelled,
        Some(Kind::Failed) => {
            let kind = v
                .get("error_type")
                .and_then(Value::as_str)
                .unwrap_or("FAILED");
            let first = message.as_deref().and_then(first_line).unwrap_or_default();
            JobState::Failed(format!("{kind}: {first}"))
        }
        None => JobState::Unknown,
    };
    let mut s = JobStatus::new(id, state, status);
    s.exit_code = v
        .get("driver_exit_code")
        .and_then(Value::as_i64)
        .and_then(|c| i32::try_from(c).ok());
    s.message = match kind {
        None => Some(format!("unrecognised Ray job status {status:?}")),
        _ => message,
    };
    s
}

fn http_error(method: &str, url: &str, status: u16, body: &Value) -> Error {
    let text = match body {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    Error::Backend(format!(
        "{method} {url} answered {status}: {}",
        text.chars().take(300).collect::<String>()
    ))
}

impl Scheduler for RayJobs {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "ray-jobs".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            scheduler: "Ray Jobs (REST API)".into(),
            features: vec![Feature::Gpus, Feature::Logs, Feature::List],
        }
    }

    fn render(_b: &dyn Backend, spec: JobSpec) -> Result<String, Error> {
        Ok(submit_body(&spec)?.to_string())
    }

    fn submit(b: &dyn Backend, spec: JobSpec) -> Result<String, Error> {
        let body = submit_body(&spec)?;
        let url = format!("{}/api/jobs/", dashboard(b)?);
        let (status, v) = http_json(b, "POST", &url, Some(&body))?;
        if !(200..300).contains(&status) {
            return Err(http_error("POST", &url, status, &v));
        }
        let id = v
            .get("submission_id")
            .or_else(|| v.get("job_id"))
            .and_then(Value::as_str)
            .ok_or_else(|| {
                Error::Backend(format!("POST {url} answered without a submission_id: {v}"))
            })?
            .to_string();
        log::info(b, &format!("submitted Ray job {id}"));
        Ok(id)
    }

    fn status(b: &dyn Backend, ids: Vec<String>) -> Result<Vec<JobStatus>, Error> {
        for id in &ids {
            check_id(id)?;
        }
        let base = dashboard(b)?;
        let mut out: Vec<JobStatus> = Vec::new();
        for id in ids {
            if out.iter().any(|s| s.id == id) {
                continue;
            }
            let url = format!("{base}/api/jobs/{id}");
            let (status, v) = http_json(b, "GET", &url, None)?;
            out.push(match status {
                200 => parse_job(&id, &v),
                404 => {
                    let mut s = JobStatus::new(&id, JobState::Unknown, "");
                    s.message = Some(format!(
                        "Ray does not know the job (the head restarted, or the job was deleted): {}",
                        v.as_str().unwrap_or("404")
                    ));
                    s
                }
                _ => return Err(http_error("GET", &url, status, &v)),
            });
        }
        Ok(out)
    }

    fn cancel(b: &dyn Backend, id: String) -> Result<(), Error> {
        check_id(&id)?;
        let url = format!("{}/api/jobs/{id}/stop", dashboard(b)?);
        let (status, v) = http_json(b, "POST", &url, None)?;
        // {"stopped": false} for a job that already ended, 404 for one Ray forgot:
        // either way it is not running, which is what cancel asks.
        match status {
            200 | 404 => Ok(()),
            _ => Err(http_error("POST", &url, status, &v)),
        }
    }

    fn list(b: &dyn Backend) -> Result<Vec<JobStatus>, Error> {
        let url = format!("{}/api/jobs/", dashboard(b)?);
        let (status, v) = http_json(b, "GET", &url, None)?;
        if status != 200 {
            return Err(http_error("GET", &url, status, &v));
        }
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|j| {
                let id = j.get("submission_id").and_then(Value::as_str)?;
                Some(parse_job(id, j))
            })
            .collect())
    }

    fn logs(b: &dyn Backend, id: String, max_bytes: u32) -> Result<String, Error> {
        check_id(&id)?;
        let url = format!("{}/api/jobs/{id}/logs", dashboard(b)?);
        let (status, v) = http_json(b, "GET", &url, None)?;
        if status != 200 {
            return Err(http_error("GET", &url, status, &v));
        }
        let text = v.get("logs").and_then(Value::as_str).unwrap_or("");
        Ok(corral_plugin_sdk::tail(text.as_bytes(), max_bytes))
    }
}

#[cfg(test)]
mod tests;
