//! corral's plugin SDK: the `corral:scheduler` bindings, one trait to implement, and the
//! helpers every plugin needs. Provider plugins (`wit/provider.wit`, feature `provider`)
//! implement [`provider::Provider`] instead and use the same [`Backend`] and helpers.
//!
//! A plugin implements [`Scheduler`] (associated functions that take a [`Backend`]) and
//! exports it with `corral_plugin_sdk::export_plugin!(MyPlugin);`. On wasm the backend is
//! [`Host`], the imports the agent grants; in native unit tests it is
//! [`testing::Script`], which answers scripted program runs and HTTP requests and records
//! what was asked. So every decision a plugin makes (argv, scripts, parsing, fallbacks)
//! is tested natively, against fixtures of real scheduler output.
//!
//! Invariants:
//! - Plugins import nothing but `wit/scheduler.wit`'s interfaces: they are built for
//!   `wasm32-unknown-unknown` (`cargo xtask plugins`), so there is no WASI, no files, no
//!   sockets, no clock but the host's.
//! - Programs run by argument vector, never through a shell. Text that must pass through
//!   a shell script (a batch script's body) is quoted by [`script::sh_quote`]; text in a
//!   `key = value` submit description is written under that format's
//!   [`submit::Escaping`]. Plugins quote by no other means.
//! - A program that exits non-zero becomes [`Error::Backend`] naming the program, its exit
//!   status and the first line of what it printed ([`run_ok`]); plugins that treat some
//!   failures as answers (an already-finished job) look at [`run`]'s output themselves.
//! - The generated import functions exist only on wasm; off wasm they are unreachable, so
//!   native code must reach the host only through a [`Backend`].
//!
//! A batch-scheduler plugin keeps only what is its own (its argv, its parsers, its state
//! table) and takes the rest from here:
//! - [`batch::Batch`] ([`Scheduler::BATCH`]): the one declaration from which `info`,
//!   `render`, `submit`, `status`, `cancel` and node draining follow; [`batch::Cancel`]
//!   cancels, confirming through `status` when the cancel program fails.
//! - [`submit::Submit`]: `render` and `submit` from one argv builder, one stdin builder
//!   and one id parser; [`submit::Description`] for `key = value` submit descriptions
//!   under an explicit [`submit::Escaping`].
//! - [`states::StateTable`]: native states (names, numbers, letters) to portable ones,
//!   with [`states::Facts`] for holds, exit codes, signals and removal reasons.
//! - [`status::Resolver`]: live query, then history, de-duplication, aggregation,
//!   `unknown` with the reasons.
//! - [`nodes::NodeAdmin`]: `drain_node`/`resume_node` as argv templates, and
//!   `node_state` as a query ([`nodes::StateQuery`]: a template, the scheduler's words
//!   for "no such node", a parser into [`NodeState`]).
//! - [`ids`]: job id and node name checks; [`spec`]: standard refusals, counts, arrays,
//!   dependency lists and attribute pass-through that never changes identity;
//!   [`records`]: typed JSON and XML output.

// The imports every plugin may be granted (world `sandbox`): generated once, here, and
// shared by both export worlds below through `with`, so `Error`, `Command` and the rest
// are one type whichever kind of plugin this is.
wit_bindgen::generate!({
    world: "corral:scheduler/sandbox",
    path: "../../wit/scheduler.wit",
    additional_derives: [PartialEq, Eq],
});

/// The `corral:scheduler` world's export (feature `scheduler`).
#[cfg(feature = "scheduler")]
#[doc(hidden)]
pub mod scheduler_world {
    wit_bindgen::generate!({
        world: "corral:scheduler/plugin",
        path: "../../wit/scheduler.wit",
        with: {
            "corral:scheduler/types@0.2.0": crate::corral::scheduler::types,
            "corral:scheduler/process@0.2.0": crate::corral::scheduler::process,
            "corral:scheduler/http@0.2.0": crate::corral::scheduler::http,
            "corral:scheduler/log@0.2.0": crate::corral::scheduler::log,
            "corral:scheduler/config@0.2.0": crate::corral::scheduler::config,
            "corral:scheduler/clock@0.2.0": crate::corral::scheduler::clock,
        },
        pub_export_macro: true,
        export_macro_name: "__export_plugin_component",
        default_bindings_module: "corral_plugin_sdk::scheduler_world",
        additional_derives: [PartialEq, Eq],
    });
}

pub use corral::scheduler::http::{Request, Response};
pub use corral::scheduler::log::Level;
pub use corral::scheduler::process::{Command, Output};
pub use corral::scheduler::types::{
    Dependency, DependencyKind, Error, Feature, JobArray, JobSpec, JobState, JobStatus, NodeState,
    PluginInfo,
};
pub use status::unique_ids;
pub use {serde, serde_json};

pub mod batch;
pub mod ids;
pub mod nodes;
#[cfg(feature = "provider")]
pub mod provider;
pub mod records;
pub mod script;
pub mod spec;
pub mod states;
pub mod status;
pub mod submit;
pub mod testing;

/// Exports a [`Scheduler`] as the component's `scheduler` interface:
/// `corral_plugin_sdk::export_plugin!(MyPlugin);` at the plugin crate's root.
///
/// Only on wasm: the export symbols' names (`corral:scheduler/scheduler@0.2.0#info`)
/// are not valid in a native shared library, and native builds exist for unit tests.
#[cfg(feature = "scheduler")]
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ident) => {
        #[cfg(target_arch = "wasm32")]
        $crate::scheduler_world::__export_plugin_component!($plugin);
    };
}

/// What a plugin reaches the outside world through.
pub trait Backend {
    /// Runs a granted program (by its bare granted name).
    fn run(&self, cmd: &Command) -> Result<Output, Error>;
    /// Sends an HTTP request to a granted host.
    fn send(&self, req: &Request) -> Result<Response, Error>;
    /// A value from the manifest's `[config]` table.
    fn config(&self, key: &str) -> Option<String>;
    /// Logs through the agent, tagged with the plugin's name.
    fn log(&self, level: Level, message: &str);
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
    /// Waits `ms` milliseconds (at most what is left of the call). Only provider
    /// plugins' hosts can wait (`corral:provider/wait`); for a scheduler plugin this
    /// returns at once.
    fn sleep_ms(&self, _ms: u32) {}
}

/// The real backend: the imports the host provides. Only usable on wasm.
///
/// `run` and `send` reach the `process` and `http` imports only with the SDK features
/// of those names: the component then imports only what the plugin uses, which is all
/// its manifest must grant.
pub struct Host;

impl Backend for Host {
    fn run(&self, cmd: &Command) -> Result<Output, Error> {
        #[cfg(feature = "process")]
        {
            corral::scheduler::process::run(cmd)
        }
        #[cfg(not(feature = "process"))]
        {
            Err(Error::Denied(format!(
                "this plugin was built without the SDK's `process` feature, so it cannot run {}",
                cmd.program
            )))
        }
    }
    fn send(&self, req: &Request) -> Result<Response, Error> {
        #[cfg(feature = "http")]
        {
            corral::scheduler::http::send(req)
        }
        #[cfg(not(feature = "http"))]
        {
            Err(Error::Denied(format!(
                "this plugin was built without the SDK's `http` feature, so it cannot reach {}",
                req.url
            )))
        }
    }
    fn config(&self, key: &str) -> Option<String> {
        corral::scheduler::config::get(key)
    }
    fn log(&self, level: Level, message: &str) {
        corral::scheduler::log::write(level, message)
    }
    fn now_ms(&self) -> u64 {
        corral::scheduler::clock::now_ms()
    }
    #[cfg(feature = "provider")]
    fn sleep_ms(&self, ms: u32) {
        provider::provider_world::corral::provider::wait::sleep(ms)
    }
}

/// A scheduler plugin. Export one with `corral_plugin_sdk::export_plugin!(MyPlugin);`.
/// Optional exports default to [`Error::Unsupported`]; say what is supported in
/// `info().features`.
///
/// A batch-scheduler plugin declares [`Scheduler::BATCH`] ([`batch::Batch`]: its name,
/// features, submit program, status lookups, cancel program, node admin program) and
/// writes only `list`/`logs` where it has them; `info`, `render`, `submit`, `status`,
/// `cancel`, `drain_node`, `resume_node` and `node_state` follow from the declaration. A plugin that
/// works otherwise (over HTTP) implements those itself. Without either, `info` names no
/// plugin (so the host refuses to load it) and the others answer `unsupported`.
pub trait Scheduler {
    /// The plugin's declaration, for a plugin that drives a batch scheduler's programs.
    const BATCH: Option<batch::Batch> = None;
    fn info() -> PluginInfo {
        match Self::BATCH {
            Some(b) => b.info(),
            None => PluginInfo::new("", "", "", &[]),
        }
    }
    /// Exactly what `submit` would send (the script, or the request body), unsent.
    fn render(_b: &dyn Backend, spec: JobSpec) -> Result<String, Error> {
        match Self::BATCH.and_then(|b| b.submit) {
            Some(s) => s.render(&spec),
            None => Err(Error::Unsupported("render".into())),
        }
    }
    fn submit(b: &dyn Backend, spec: JobSpec) -> Result<String, Error> {
        match Self::BATCH.and_then(|b| b.submit) {
            Some(s) => s.submit(b, &spec),
            None => Err(Error::Unsupported("submit".into())),
        }
    }
    /// One status per id; a job gone from the live queue is resolved to its real final
    /// state or reported unknown with the reason, never assumed to have succeeded.
    fn status(b: &dyn Backend, ids: Vec<String>) -> Result<Vec<JobStatus>, Error> {
        match Self::BATCH.and_then(|b| b.status) {
            Some(lookups) => lookups.resolve(b, ids),
            None => Err(Error::Unsupported("status".into())),
        }
    }
    /// Idempotent: cancelling a job that already ended is not an error.
    fn cancel(b: &dyn Backend, id: String) -> Result<(), Error> {
        match Self::BATCH {
            Some(batch) => batch.cancel_job(b, &id),
            None => Err(Error::Unsupported("cancel".into())),
        }
    }
    fn list(_b: &dyn Backend) -> Result<Vec<JobStatus>, Error> {
        Err(Error::Unsupported("list".into()))
    }
    fn logs(_b: &dyn Backend, _id: String, _max_bytes: u32) -> Result<String, Error> {
        Err(Error::Unsupported("logs".into()))
    }
    fn drain_node(b: &dyn Backend, node: String, reason: String) -> Result<(), Error> {
        match Self::BATCH.and_then(|b| b.nodes) {
            Some(n) => n.drain_node(b, &node, &reason),
            None => Err(Error::Unsupported("drain-node".into())),
        }
    }
    fn resume_node(b: &dyn Backend, node: String) -> Result<(), Error> {
        match Self::BATCH.and_then(|b| b.nodes) {
            Some(n) => n.resume_node(b, &node),
            None => Err(Error::Unsupported("resume-node".into())),
        }
    }
    /// `node` as the scheduler sees it now (drained, and the reason it keeps), `None`
    /// when the scheduler has no node of that name.
    fn node_state(b: &dyn Backend, node: String) -> Result<Option<NodeState>, Error> {
        match Self::BATCH.and_then(|b| b.nodes) {
            Some(n) => n.node_state(b, &node),
            None => Err(Error::Unsupported("node-state".into())),
        }
    }
}

#[cfg(feature = "scheduler")]
impl<T: Scheduler> scheduler_world::exports::corral::scheduler::scheduler::Guest for T {
    fn info() -> PluginInfo {
        T::info()
    }
    fn render(spec: JobSpec) -> Result<String, Error> {
        T::render(&Host, spec)
    }
    fn submit(spec: JobSpec) -> Result<String, Error> {
        T::submit(&Host, spec)
    }
    fn status(ids: Vec<String>) -> Result<Vec<JobStatus>, Error> {
        T::status(&Host, ids)
    }
    fn cancel(id: String) -> Result<(), Error> {
        T::cancel(&Host, id)
    }
    fn list() -> Result<Vec<JobStatus>, Error> {
        T::list(&Host)
    }
    fn logs(id: String, max_bytes: u32) -> Result<String, Error> {
        T::logs(&Host, id, max_bytes)
    }
    fn drain_node(node: String, reason: String) -> Result<(), Error> {
        T::drain_node(&Host, node, reason)
    }
    fn resume_node(node: String) -> Result<(), Error> {
        T::resume_node(&Host, node)
    }
    fn node_state(node: String) -> Result<Option<NodeState>, Error> {
        T::node_state(&Host, node)
    }
}

impl Command {
    /// A command for a granted program with no arguments, environment or stdin.
    pub fn new(program: &str) -> Command {
        Command {
            program: program.to_string(),
            args: Vec::new(),
            env: Vec::new(),
            directory: None,
            stdin: None,
            timeout_ms: None,
        }
    }

    pub fn arg(mut self, a: impl Into<String>) -> Command {
        self.args.push(a.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Command {
        self.env.push((k.to_string(), v.to_string()));
        self
    }

    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Command {
        self.stdin = Some(bytes.into());
        self
    }

    /// The stdin this command sends, as text: what a batch plugin's `render` returns, so
    /// that `render` shows exactly the script `submit` sends.
    pub fn stdin_text(&self) -> String {
        String::from_utf8_lossy(self.stdin.as_deref().unwrap_or_default()).into_owned()
    }

    /// `program arg...` for messages (arguments in Rust debug quoting, one line).
    pub fn display(&self) -> String {
        let mut s = self.program.clone();
        for a in &self.args {
            s.push(' ');
            if a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_=.,:/%@+".contains(c))
            {
                s.push_str(a);
            } else {
                s.push_str(&format!("{a:?}"));
            }
        }
        s
    }
}

impl Output {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    pub fn success(&self) -> bool {
        self.status == Some(0)
    }
}

/// Runs `cmd`; a non-zero exit is returned as output, not as an error.
pub fn run(b: &dyn Backend, cmd: &Command) -> Result<Output, Error> {
    b.run(cmd)
}

/// Runs `cmd` and returns its stdout, or [`Error::Backend`] naming the program, its exit
/// status and the first line it printed when it did not exit 0.
pub fn run_ok(b: &dyn Backend, cmd: &Command) -> Result<String, Error> {
    let out = b.run(cmd)?;
    if out.success() {
        Ok(out.stdout_text())
    } else {
        Err(failure(&cmd.program, &out))
    }
}

/// The error for a program that did not succeed.
pub fn failure(program: &str, out: &Output) -> Error {
    let status = match out.status {
        Some(code) => format!("exited with status {code}"),
        None => "was killed by a signal".to_string(),
    };
    let line = first_line(&out.stderr_text())
        .or_else(|| first_line(&out.stdout_text()))
        .unwrap_or_else(|| "(no output)".into());
    Error::Backend(format!("{program} {status}: {line}"))
}

/// The first non-blank line of `text`, trimmed.
pub fn first_line(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
}

/// The last `max_bytes` of `bytes` as text, cut forward to a character boundary.
pub fn tail(bytes: &[u8], max_bytes: u32) -> String {
    let max = max_bytes as usize;
    let mut start = bytes.len().saturating_sub(max);
    // Skip UTF-8 continuation bytes so the cut does not split a character.
    while start < bytes.len() && start > 0 && (bytes[start] & 0xC0) == 0x80 {
        start += 1;
    }
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

/// Sends a JSON request (`body` serialized when given) and returns the status and the
/// parsed JSON body (`Null` for an empty body). A success (2xx) whose body is not JSON
/// is a backend error quoting its start; an error status with a plain-text body comes
/// back as that text in a JSON string, for the caller to quote.
pub fn http_json(
    b: &dyn Backend,
    method: &str,
    url: &str,
    body: Option<&serde_json::Value>,
) -> Result<(u16, serde_json::Value), Error> {
    let mut headers = vec![("accept".to_string(), "application/json".to_string())];
    if body.is_some() {
        headers.push(("content-type".to_string(), "application/json".to_string()));
    }
    let req = Request {
        method: method.to_string(),
        url: url.to_string(),
        headers,
        body: body.map(|v| v.to_string().into_bytes()),
        timeout_ms: None,
    };
    let resp = b.send(&req)?;
    if resp.body.iter().all(|c| c.is_ascii_whitespace()) {
        return Ok((resp.status, serde_json::Value::Null));
    }
    match serde_json::from_slice(&resp.body) {
        Ok(v) => Ok((resp.status, v)),
        Err(_) if !(200..300).contains(&resp.status) => Ok((
            resp.status,
            serde_json::Value::String(String::from_utf8_lossy(&resp.body).trim().to_string()),
        )),
        Err(e) => Err(Error::Backend(format!(
            "{method} {url} answered {} with a body that is not JSON ({e}): {}",
            resp.status,
            tail_start(&resp.body, 200)
        ))),
    }
}

fn tail_start(bytes: &[u8], n: usize) -> String {
    let s = String::from_utf8_lossy(&bytes[..bytes.len().min(n)]).into_owned();
    s.replace('\n', " ")
}

/// Logging shorthands.
pub mod log {
    use super::{Backend, Level};

    pub fn debug(b: &dyn Backend, message: &str) {
        b.log(Level::Debug, message)
    }
    pub fn info(b: &dyn Backend, message: &str) {
        b.log(Level::Info, message)
    }
    pub fn warn(b: &dyn Backend, message: &str) {
        b.log(Level::Warn, message)
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JobState::Queued(false) => f.write_str("queued"),
            JobState::Queued(true) => f.write_str("held"),
            JobState::Running => f.write_str("running"),
            JobState::Suspended => f.write_str("suspended"),
            JobState::Completing => f.write_str("completing"),
            JobState::Succeeded => f.write_str("succeeded"),
            JobState::Failed(r) => write!(f, "failed ({r})"),
            JobState::Cancelled => f.write_str("cancelled"),
            JobState::TimedOut => f.write_str("timed-out"),
            JobState::Unknown => f.write_str("unknown"),
        }
    }
}

impl JobState {
    /// Whether the job has ended for good.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed(_) | JobState::Cancelled | JobState::TimedOut
        )
    }
}

impl PluginInfo {
    /// `info()` in one line: `PluginInfo::new("slurm", env!("CARGO_PKG_VERSION"),
    /// "Slurm", &[Feature::Arrays])` (the version is the plugin crate's, hence the
    /// caller's `env!`).
    pub fn new(name: &str, version: &str, scheduler: &str, features: &[Feature]) -> Self {
        PluginInfo {
            name: name.to_string(),
            version: version.to_string(),
            scheduler: scheduler.to_string(),
            features: features.to_vec(),
        }
    }
}

impl NodeState {
    /// A node's state as a plugin reports it. The reason is kept only while the node is
    /// drained, and only when it has more than white space; otherwise it is verbatim.
    pub fn new(drained: bool, reason: Option<&str>) -> NodeState {
        NodeState {
            drained,
            reason: reason
                .filter(|r| drained && !r.trim().is_empty())
                .map(str::to_string),
        }
    }
}

impl JobStatus {
    pub fn new(id: &str, state: JobState, native_state: &str) -> JobStatus {
        JobStatus {
            id: id.to_string(),
            state,
            native_state: native_state.to_string(),
            exit_code: None,
            message: None,
        }
    }
}

impl JobSpec {
    /// A spec that runs `executable` with `arguments` and nothing else set.
    pub fn command<S: Into<String>>(
        executable: &str,
        arguments: impl IntoIterator<Item = S>,
    ) -> JobSpec {
        JobSpec {
            name: None,
            executable: executable.to_string(),
            arguments: arguments.into_iter().map(Into::into).collect(),
            directory: None,
            environment: Vec::new(),
            stdin_path: None,
            stdout_path: None,
            stderr_path: None,
            nodes: None,
            tasks_per_node: None,
            cpus_per_task: None,
            gpus_per_node: None,
            memory_mb: None,
            walltime_seconds: None,
            queue: None,
            account: None,
            reservation: None,
            array: None,
            dependencies: Vec::new(),
            attributes: Vec::new(),
        }
    }

    /// The value of attribute `key` (e.g. `"slurm.constraint"`).
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Attributes for `scheduler` (`"slurm"` takes `slurm.*`), prefix stripped.
    pub fn attributes_for<'a>(
        &'a self,
        scheduler: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.attributes.iter().filter_map(move |(k, v)| {
            k.strip_prefix(scheduler)
                .and_then(|rest| rest.strip_prefix('.'))
                .map(|opt| (opt, v.as_str()))
        })
    }
}

/// One status for a job made of parts (an array's tasks), under the id that names them
/// all. Live beats ended: any running part makes the whole running (then completing,
/// suspended, queued; held only when every queued part is held). Once every part ended:
/// failed if any failed, else timed out, else cancelled, else succeeded. A part the
/// plugin could not tell about makes an ended whole unknown: never assumed to succeed.
/// The message counts the parts by native state.
pub fn aggregate(id: &str, parts: Vec<JobStatus>) -> JobStatus {
    if parts.len() == 1 {
        let mut only = parts.into_iter().next().expect("one part");
        only.id = id.to_string();
        return only;
    }
    if parts.is_empty() {
        let mut s = JobStatus::new(id, JobState::Unknown, "");
        s.message = Some("the scheduler reported no tasks for this job".into());
        return s;
    }
    let rank = |s: &JobState| match s {
        JobState::Running => 0,
        JobState::Completing => 1,
        JobState::Suspended => 2,
        JobState::Queued(_) => 3,
        JobState::Unknown => 4,
        JobState::Failed(_) => 5,
        JobState::TimedOut => 6,
        JobState::Cancelled => 7,
        JobState::Succeeded => 8,
    };
    let all_queued_held = parts
        .iter()
        .filter(|p| matches!(p.state, JobState::Queued(_)))
        .all(|p| p.state == JobState::Queued(true));
    let mut counts: Vec<(String, usize)> = Vec::new();
    for p in &parts {
        match counts.iter_mut().find(|(n, _)| *n == p.native_state) {
            Some((_, c)) => *c += 1,
            None => counts.push((p.native_state.clone(), 1)),
        }
    }
    let summary = counts
        .iter()
        .map(|(n, c)| format!("{c} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let total = parts.len();
    let best = parts
        .into_iter()
        .min_by_key(|p| rank(&p.state))
        .expect("non-empty");
    let state = match best.state {
        JobState::Queued(_) => JobState::Queued(all_queued_held),
        JobState::Failed(r) => JobState::Failed(format!("task {}: {r}", best.id)),
        s => s,
    };
    let mut detail = format!("{total} tasks: {summary}");
    if let Some(m) = &best.message {
        detail.push_str(&format!("; task {}: {m}", best.id));
    }
    JobStatus {
        id: id.to_string(),
        state,
        native_state: best.native_state,
        exit_code: best.exit_code,
        message: Some(detail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(id: &str, state: JobState, native: &str) -> JobStatus {
        JobStatus::new(id, state, native)
    }

    #[test]
    fn an_array_is_running_while_any_task_runs() {
        let s = aggregate(
            "7",
            vec![
                part("7_1", JobState::Succeeded, "COMPLETED"),
                part("7_2", JobState::Running, "RUNNING"),
                part("7_3", JobState::Queued(false), "PENDING"),
            ],
        );
        assert_eq!(s.state, JobState::Running);
        assert_eq!(s.id, "7");
        assert_eq!(
            s.message.as_deref(),
            Some("3 tasks: 1 COMPLETED, 1 RUNNING, 1 PENDING")
        );
    }

    #[test]
    fn an_ended_array_fails_if_any_task_failed_and_names_it() {
        let s = aggregate(
            "7",
            vec![
                part("7_1", JobState::Succeeded, "COMPLETED"),
                part("7_2", JobState::Failed("exit code 1".into()), "FAILED"),
                part("7_3", JobState::Cancelled, "CANCELLED"),
            ],
        );
        assert_eq!(s.state, JobState::Failed("task 7_2: exit code 1".into()));
        assert_eq!(s.native_state, "FAILED");
    }

    #[test]
    fn an_ended_array_with_an_unknown_task_is_not_called_succeeded() {
        let s = aggregate(
            "7",
            vec![
                part("7_1", JobState::Succeeded, "COMPLETED"),
                part("7_2", JobState::Unknown, ""),
            ],
        );
        assert_eq!(s.state, JobState::Unknown);
    }

    #[test]
    fn an_array_is_held_only_when_every_queued_task_is_held() {
        let held = |h| {
            aggregate(
                "7",
                vec![
                    part("7_1", JobState::Queued(true), "PENDING"),
                    part("7_2", JobState::Queued(h), "PENDING"),
                ],
            )
            .state
        };
        assert_eq!(held(true), JobState::Queued(true));
        assert_eq!(held(false), JobState::Queued(false));
    }

    #[test]
    fn a_failed_program_is_named_with_its_status_and_first_stderr_line() {
        let out = Output {
            status: Some(1),
            stdout: Vec::new(),
            stderr: b"\nsbatch: error: Batch job submission failed: Invalid account\nmore\n"
                .to_vec(),
            truncated: false,
        };
        match failure("sbatch", &out) {
            Error::Backend(m) => assert_eq!(
                m,
                "sbatch exited with status 1: sbatch: error: Batch job submission failed: Invalid account"
            ),
            e => panic!("unexpected {e:?}"),
        }
    }

    #[test]
    fn a_program_killed_by_a_signal_says_so() {
        let out = Output {
            status: None,
            stdout: Vec::new(),
            stderr: Vec::new(),
            truncated: false,
        };
        match failure("squeue", &out) {
            Error::Backend(m) => assert_eq!(m, "squeue was killed by a signal: (no output)"),
            e => panic!("unexpected {e:?}"),
        }
    }

    #[test]
    fn a_node_state_keeps_a_reason_only_while_drained_and_verbatim() {
        let drained = NodeState::new(true, Some(" corral: gpu 0 [x] "));
        assert_eq!(drained.reason.as_deref(), Some(" corral: gpu 0 [x] "));
        assert_eq!(NodeState::new(true, Some("  ")).reason, None);
        assert_eq!(NodeState::new(false, Some("old comment")).reason, None);
    }

    #[test]
    fn tail_never_splits_a_character() {
        let text = "héllo wörld".as_bytes();
        for n in 0..=text.len() as u32 + 2 {
            let t = tail(text, n);
            assert!(t.len() <= n as usize, "{t:?} longer than {n}");
            assert!(!t.contains('\u{fffd}'), "{t:?}");
            assert!("héllo wörld".ends_with(&t));
        }
    }

    #[test]
    fn attributes_are_selected_by_scheduler_prefix() {
        let mut spec = JobSpec::command("true", Vec::<String>::new());
        spec.attributes = vec![
            ("slurm.constraint".into(), "a100".into()),
            ("pbs.place".into(), "scatter".into()),
            ("slurmx.bad".into(), "no".into()),
        ];
        let got: Vec<_> = spec.attributes_for("slurm").collect();
        assert_eq!(got, vec![("constraint", "a100")]);
    }

    #[test]
    fn http_json_reports_a_body_that_is_not_json() {
        let s = testing::Script::new().http(200, "<html>oops</html>");
        let e = http_json(&s, "GET", "http://h:1/api", None).unwrap_err();
        assert!(
            matches!(&e, Error::Backend(m) if m.contains("not JSON") && m.contains("oops")),
            "{e:?}"
        );
    }
}
