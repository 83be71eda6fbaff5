//! The `command` provider: a pool's machines made, listed and removed by programs the
//! operator names, run by argv on the coordinator's host. For anything without a
//! provider plugin of its own: libvirt (`virsh`), a site's script, a test harness.
//!
//! The pool's template names the programs, each an argv as a JSON array (the
//! coordinator writes a TOML array that way), with `{node}`, `{pool}` and `{id}`
//! replaced in each argument:
//!
//! ```toml
//! [pools.lab.template]
//! create = ["/usr/local/bin/lab-vm", "create", "{node}"]   # user data on stdin
//! delete = ["/usr/local/bin/lab-vm", "delete", "{id}"]
//! list   = ["/usr/local/bin/lab-vm", "list", "{pool}"]
//! ```
//!
//! Contract with the programs:
//! - `create` gets the user data on stdin and `CORRAL_NODE`, `CORRAL_POOL` in its
//!   environment; it exits 0 once the machine exists, and its last non-blank line of
//!   stdout is the machine's id (no output: the id is the node name).
//! - `delete` gets `CORRAL_ID` and `CORRAL_POOL`; exit 0 means gone, including
//!   "was already gone".
//! - `list` prints one machine per line: `ID NODE STATE [CREATED]`, whitespace
//!   separated, STATE one of `pending running stopping off deleting failed` (anything
//!   else is `unknown`, kept as the native state), CREATED in Unix seconds. Blank lines
//!   and lines starting with `#` are skipped.
//! - A program exiting 75 (`EX_TEMPFAIL`) says "not now" (the system behind it is rate
//!   limited or busy): the pool waits what a `retry-after: SECONDS` line of its output
//!   says (else 30 s) and does not count it as a failure.
//! - Any other non-zero exit is a backend error naming the program, its status and the
//!   first line it printed. Every program must be granted in `command.toml`.

use corral_plugin_sdk::provider::{
    CreateRequest, Machine, MachineState, Pool, Provider, ProviderError, ProviderInfo, RateLimit,
};
use corral_plugin_sdk::{Backend, Command};

pub struct CommandProvider;

corral_plugin_sdk::export_provider!(CommandProvider);

/// The argv the template gives for `key`, placeholders filled.
fn argv(pool: &Pool, key: &str, fill: &[(&str, &str)]) -> Result<Vec<String>, ProviderError> {
    let raw = pool.require(key)?;
    let parsed: Vec<String> = corral_plugin_sdk::serde_json::from_str(raw).map_err(|_| {
        ProviderError::invalid(format!(
            "pool {}: template key {key:?} must be an argument list, e.g. {key} = [\"/usr/local/bin/lab-vm\", \"{key}\", \"{{node}}\"]; got {raw:?}",
            pool.name
        ))
    })?;
    if parsed.is_empty() || parsed[0].is_empty() {
        return Err(ProviderError::invalid(format!(
            "pool {}: template key {key:?} is an empty argument list; name the program first",
            pool.name
        )));
    }
    Ok(parsed
        .into_iter()
        .map(|a| {
            fill.iter().fold(a, |a, (name, value)| {
                a.replace(&format!("{{{name}}}"), value)
            })
        })
        .collect())
}

fn command(argv: Vec<String>, env: &[(&str, &str)]) -> Command {
    let mut it = argv.into_iter();
    let mut c = Command::new(&it.next().unwrap_or_default()).args(it);
    for (k, v) in env {
        c = c.env(k, v);
    }
    c
}

/// A `list` line: `ID NODE STATE [CREATED]`.
pub fn parse_line(line: &str) -> Option<Result<Machine, String>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 3 {
        return Some(Err(format!(
            "{line:?}: a list line is ID NODE STATE [CREATED]"
        )));
    }
    let state = match f[2] {
        "pending" => MachineState::Pending,
        "running" => MachineState::Running,
        "stopping" => MachineState::Stopping,
        "off" => MachineState::Off,
        "deleting" => MachineState::Deleting,
        "failed" => MachineState::Failed,
        _ => MachineState::Unknown,
    };
    let created_ms = match f.get(3) {
        Some(s) => match s.parse::<u64>() {
            Ok(secs) => Some(secs.saturating_mul(1000)),
            Err(_) => {
                return Some(Err(format!(
                    "{line:?}: CREATED must be Unix seconds, got {s:?}"
                )))
            }
        },
        None => None,
    };
    Some(Ok(Machine {
        id: f[0].to_string(),
        node: f[1].to_string(),
        state,
        native_state: f[2].to_string(),
        created_ms,
        message: None,
    }))
}

/// A program's exit status that means "not now": the provider behind it is rate
/// limited or busy (`EX_TEMPFAIL` from sysexits.h).
pub const TEMPFAIL: i32 = 75;
/// The wait when a program exiting [`TEMPFAIL`] does not say how long.
const DEFAULT_RETRY_MS: u64 = 30_000;

/// Runs `cmd`: its stdout when it exits 0; [`ProviderError::RateLimited`] when it exits
/// [`TEMPFAIL`] (waiting what a `retry-after: SECONDS` line of its output says, else 30
/// s); else a backend error naming it, its status and what it printed.
fn run_checked(b: &dyn Backend, cmd: &Command) -> Result<String, ProviderError> {
    let out = corral_plugin_sdk::run(b, cmd)?;
    if out.success() {
        return Ok(out.stdout_text());
    }
    if out.status == Some(TEMPFAIL) {
        let text = format!("{}\n{}", out.stderr_text(), out.stdout_text());
        let retry_after_ms = text
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("retry-after:")
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
            .map_or(DEFAULT_RETRY_MS, |s| s.saturating_mul(1000).max(1000));
        let said = corral_plugin_sdk::first_line(&text).unwrap_or_else(|| "(no output)".into());
        return Err(ProviderError::RateLimited(RateLimit {
            retry_after_ms,
            message: format!("{} exited {TEMPFAIL} (try later): {said}", cmd.program),
        }));
    }
    Err(corral_plugin_sdk::failure(&cmd.program, &out).into())
}

impl Provider for CommandProvider {
    /// Billed by the hour only when the manifest's `[config]` says
    /// `hourly_billing = "true"` (a site whose machines are rented by the hour).
    fn info(b: &dyn Backend) -> ProviderInfo {
        ProviderInfo::new(
            "command",
            env!("CARGO_PKG_VERSION"),
            "programs on the coordinator host",
            b.config("hourly_billing").as_deref() == Some("true"),
        )
    }

    fn create(b: &dyn Backend, pool: &Pool, req: &CreateRequest) -> Result<String, ProviderError> {
        let args = argv(pool, "create", &[("node", &req.node), ("pool", &pool.name)])?;
        let cmd = command(
            args,
            &[("CORRAL_NODE", &req.node), ("CORRAL_POOL", &pool.name)],
        )
        .stdin(req.user_data.as_bytes().to_vec());
        let out = run_checked(b, &cmd)?;
        let id = out
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .unwrap_or(&req.node);
        if id.chars().any(char::is_whitespace) {
            return Err(ProviderError::backend(format!(
                "{}: its last line {id:?} is not an id (one word)",
                cmd.program
            )));
        }
        Ok(id.to_string())
    }

    fn delete(b: &dyn Backend, pool: &Pool, id: &str) -> Result<(), ProviderError> {
        let args = argv(pool, "delete", &[("id", id), ("pool", &pool.name)])?;
        run_checked(
            b,
            &command(args, &[("CORRAL_ID", id), ("CORRAL_POOL", &pool.name)]),
        )?;
        Ok(())
    }

    fn list(b: &dyn Backend, pool: &Pool) -> Result<Vec<Machine>, ProviderError> {
        let args = argv(pool, "list", &[("pool", &pool.name)])?;
        let cmd = command(args, &[("CORRAL_POOL", &pool.name)]);
        let out = run_checked(b, &cmd)?;
        out.lines()
            .filter_map(parse_line)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ProviderError::backend(format!("{}: {e}", cmd.program)))
    }
}

#[cfg(test)]
mod tests;
