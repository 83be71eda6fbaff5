//! Reading a [`JobSpec`] for a batch scheduler: the checks every plugin makes, the
//! standard refusal of fields a scheduler cannot express, and attribute pass-through.
//!
//! Invariants:
//! - A field the scheduler cannot express is refused ([`Error::Unsupported`]) naming the
//!   scheduler, the field and what to do instead ([`refuse`]); it is never dropped.
//! - Counts (nodes, tasks per node, cpus per task) are at least 1 and arrays run forward
//!   with a step of at least 1 ([`check_counts`], [`check_array`]).
//! - Attribute pass-through ([`Passthrough`]) hands on `PREFIX.key` attributes only
//!   when the key is well formed, not managed by the plugin, and not one of the
//!   scheduler's identity options. Jobs run as the user the agent submits as: no
//!   attribute may name another user or group, and a refusal says so. Where the
//!   scheduler's option parser accepts abbreviations (getopt_long: `--ui` means
//!   `--uid`), a key that abbreviates a refused option is refused too.
//! - Every value handed on is one line ([`crate::script::check_line`]).

use crate::script::check_line;
use crate::{Dependency, DependencyKind, Error, JobArray, JobSpec};

/// A spec field that a scheduler may not support.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// More than one node (one node is what every scheduler does).
    Nodes,
    Gpus,
    Memory,
    Walltime,
    Queue,
    Account,
    Reservation,
    Array,
    Dependencies,
}

impl Field {
    /// The field's name in a refusal.
    pub fn name(self) -> &'static str {
        match self {
            Field::Nodes => "more than one node",
            Field::Gpus => "gpus per node",
            Field::Memory => "memory",
            Field::Walltime => "walltime",
            Field::Queue => "queue",
            Field::Account => "account",
            Field::Reservation => "reservation",
            Field::Array => "array",
            Field::Dependencies => "dependencies",
        }
    }

    /// Whether `spec` asks for this field.
    pub fn is_set(self, spec: &JobSpec) -> bool {
        match self {
            Field::Nodes => spec.nodes.is_some_and(|n| n > 1),
            Field::Gpus => spec.gpus_per_node.is_some(),
            Field::Memory => spec.memory_mb.is_some(),
            Field::Walltime => spec.walltime_seconds.is_some(),
            Field::Queue => spec.queue.is_some(),
            Field::Account => spec.account.is_some(),
            Field::Reservation => spec.reservation.is_some(),
            Field::Array => spec.array.is_some(),
            Field::Dependencies => !spec.dependencies.is_empty(),
        }
    }
}

/// Refuses the first field of `unsupported` that `spec` sets, as
/// `Unsupported("SCHEDULER has no FIELD: WHY")`.
///
/// ```rust
/// use corral_plugin_sdk::spec::{refuse, Field};
/// use corral_plugin_sdk::{Error, JobSpec};
///
/// let mut spec = JobSpec::command("true", Vec::<String>::new());
/// spec.queue = Some("short".into());
/// let e = refuse(&spec, "HTCondor", &[(Field::Queue, "match machines with htcondor.requirements")]);
/// assert_eq!(
///     e.unwrap_err(),
///     Error::Unsupported("HTCondor has no queue: match machines with htcondor.requirements".into())
/// );
/// ```
pub fn refuse(spec: &JobSpec, scheduler: &str, unsupported: &[(Field, &str)]) -> Result<(), Error> {
    match unsupported.iter().find(|(f, _)| f.is_set(spec)) {
        Some((f, why)) => Err(Error::Unsupported(format!(
            "{scheduler} has no {}: {why}",
            f.name()
        ))),
        None => Ok(()),
    }
}

/// A one-line text field of a spec that batch schedulers take as an option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Text {
    Name,
    Queue,
    Account,
    Reservation,
    Directory,
    Stdout,
    Stderr,
}

impl Text {
    /// The field's name in a refusal.
    pub fn name(self) -> &'static str {
        match self {
            Text::Name => "job name",
            Text::Queue => "queue",
            Text::Account => "account",
            Text::Reservation => "reservation",
            Text::Directory => "directory",
            Text::Stdout => "stdout path",
            Text::Stderr => "stderr path",
        }
    }

    pub fn value(self, spec: &JobSpec) -> Option<&str> {
        let v = match self {
            Text::Name => &spec.name,
            Text::Queue => &spec.queue,
            Text::Account => &spec.account,
            Text::Reservation => &spec.reservation,
            Text::Directory => &spec.directory,
            Text::Stdout => &spec.stdout_path,
            Text::Stderr => &spec.stderr_path,
        };
        v.as_deref()
    }
}

/// How an option takes its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// `-N value`: two argv elements.
    Separate,
    /// `--job-name=value`: one (the flag includes the `=`).
    Joined,
}

/// Which option (or description key, [`crate::submit::Description::fields`]) carries
/// each one-line text field of a spec. The flags are given in the order of
/// [`TextFlags::FIELDS`]; `""` where the plugin passes the field itself (LSF's name
/// carries the array) or the scheduler has no such option (PBS has no working directory
/// option: the script `cd`s).
///
/// ```rust
/// use corral_plugin_sdk::spec::TextFlags;
/// use corral_plugin_sdk::JobSpec;
///
/// const QSUB: TextFlags = TextFlags::new("-N", "-q", "-A", "-ar", "-wd", "-o", "-e");
/// let mut spec = JobSpec::command("true", Vec::<String>::new());
/// spec.name = Some("it's $x".into());
/// spec.stdout_path = Some("/tmp/out".into());
/// assert_eq!(QSUB.argv(&spec)?, ["-N", "it's $x", "-o", "/tmp/out"]);
///
/// const SBATCH: TextFlags = TextFlags::new("--job-name=", "", "", "", "", "", "").joined();
/// assert_eq!(SBATCH.argv(&spec)?, ["--job-name=it's $x"]);
/// spec.name = Some("a\nb".into());
/// assert!(SBATCH.argv(&spec).is_err());
/// # Ok::<(), corral_plugin_sdk::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextFlags {
    pub flags: [&'static str; 7],
    pub style: Style,
}

impl TextFlags {
    /// The fields, in the order their flags are given.
    pub const FIELDS: [Text; 7] = [
        Text::Name,
        Text::Queue,
        Text::Account,
        Text::Reservation,
        Text::Directory,
        Text::Stdout,
        Text::Stderr,
    ];

    /// Options taking their value as the next argv element (`-N name`).
    pub const fn new(
        name: &'static str,
        queue: &'static str,
        account: &'static str,
        reservation: &'static str,
        directory: &'static str,
        stdout: &'static str,
        stderr: &'static str,
    ) -> TextFlags {
        let flags = [name, queue, account, reservation, directory, stdout, stderr];
        TextFlags {
            flags,
            style: Style::Separate,
        }
    }

    /// The same options with the value joined on (`--job-name=name`; each flag ends
    /// with its `=`).
    pub const fn joined(mut self) -> TextFlags {
        self.style = Style::Joined;
        self
    }

    /// `(flag, value)` for the fields `spec` sets that have a flag, in field order, each
    /// value checked to be one line (a refusal names the field).
    pub fn pairs<'a>(&self, spec: &'a JobSpec) -> Result<Vec<(&'static str, &'a str)>, Error> {
        let mut out = Vec::new();
        for (field, flag) in Self::FIELDS.iter().zip(self.flags) {
            if let Some(v) = field.value(spec).filter(|_| !flag.is_empty()) {
                check_line(field.name(), v)?;
                out.push((flag, v));
            }
        }
        Ok(out)
    }

    /// The options for those fields, as argv elements in this style.
    pub fn argv(&self, spec: &JobSpec) -> Result<Vec<String>, Error> {
        let mut a = Vec::new();
        for (flag, v) in self.pairs(spec)? {
            match self.style {
                Style::Separate => a.extend([flag.to_string(), v.to_string()]),
                Style::Joined => a.push(format!("{flag}{v}")),
            }
        }
        Ok(a)
    }
}

/// Refuses a count of 0 for nodes, tasks per node or cpus per task.
pub fn check_counts(spec: &JobSpec) -> Result<(), Error> {
    if [spec.nodes, spec.tasks_per_node, spec.cpus_per_task].contains(&Some(0)) {
        return Err(Error::Invalid(
            "nodes, tasks per node and cpus per task must be at least 1".into(),
        ));
    }
    Ok(())
}

/// The cpus a job asks for on each node (tasks per node times cpus per task), when it
/// asks for either.
pub fn cpus_per_node(spec: &JobSpec) -> Option<u32> {
    let cpus = spec.tasks_per_node.unwrap_or(1) * spec.cpus_per_task.unwrap_or(1);
    spec.tasks_per_node.or(spec.cpus_per_task).map(|_| cpus)
}

/// Refuses an array whose first index exceeds its last, whose step is 0, or (with
/// `first_index` 1, as Grid Engine and LSF number tasks) that starts below
/// `first_index`.
pub fn check_array(arr: &JobArray, first_index: u32, scheduler: &str) -> Result<(), Error> {
    if arr.step == 0 || arr.first > arr.last || arr.first < first_index {
        return Err(Error::Invalid(format!(
            "array {}-{} step {}: {scheduler} task ids start at {first_index}, first must not exceed last and step must be at least 1",
            arr.first, arr.last, arr.step
        )));
    }
    Ok(())
}

/// `first-last[:step][%max]`, the range syntax Slurm and PBS share.
pub fn array_range(arr: &JobArray) -> String {
    let mut s = format!("{}-{}", arr.first, arr.last);
    if arr.step != 1 {
        s.push_str(&format!(":{}", arr.step));
    }
    if let Some(m) = arr.max_running {
        s.push_str(&format!("%{m}"));
    }
    s
}

/// Each dependency as (the scheduler's word for its kind, the job id), in order, every
/// id checked by `check`. `words` names after-start, after-ok, after-not-ok and
/// after-any, in that order (Slurm: `after`, `afterok`, `afternotok`, `afterany`).
pub fn dependencies<'a>(
    deps: &'a [Dependency],
    words: [&'static str; 4],
    check: impl Fn(&str) -> Result<(), Error>,
) -> Result<Vec<(&'static str, &'a str)>, Error> {
    deps.iter()
        .map(|d| {
            check(&d.job)?;
            let word = match d.kind {
                DependencyKind::AfterStart => words[0],
                DependencyKind::AfterOk => words[1],
                DependencyKind::AfterNotOk => words[2],
                DependencyKind::AfterAny => words[3],
            };
            Ok((word, d.job.as_str()))
        })
        .collect()
}

/// `afterok:5:6,afterany:7`, the dependency list Slurm and PBS share: one group per
/// kind, in first-seen order, every id checked by `check`.
pub fn dependency_list(
    deps: &[Dependency],
    check: impl Fn(&str) -> Result<(), Error>,
) -> Result<String, Error> {
    let words = ["after", "afterok", "afternotok", "afterany"];
    let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
    for (kind, job) in dependencies(deps, words, check)? {
        match groups.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, ids)) => ids.push(job),
            None => groups.push((kind, vec![job])),
        }
    }
    let groups: Vec<String> = groups
        .iter()
        .map(|(k, ids)| format!("{k}:{}", ids.join(":")))
        .collect();
    Ok(groups.join(","))
}

/// `HH:MM:SS` (hours unbounded), as PBS and Grid Engine take a walltime.
pub fn hhmmss(secs: u64) -> String {
    format!(
        "{:02}:{:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Whether `key` is one word: ASCII letters, digits and `_`, not empty (the key form of
/// most schedulers' resource and option names).
pub fn is_word(key: &str) -> bool {
    !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Which `PREFIX.key` attributes a plugin hands on to its scheduler, and which it
/// refuses (see the module docs).
///
/// ```rust
/// use corral_plugin_sdk::spec::Passthrough;
/// use corral_plugin_sdk::{Error, JobSpec};
///
/// const SLURM: Passthrough =
///     Passthrough::new("slurm", |k| k.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
///         .form("an sbatch long option name")
///         .managed("parsable wrap")
///         .identity("uid gid")
///         .abbreviations();
/// let mut spec = JobSpec::command("true", Vec::<String>::new());
/// spec.attributes = vec![("slurm.constraint".into(), "a100".into())];
/// assert_eq!(SLURM.pairs(&spec).unwrap(), [("constraint", "a100")]);
///
/// spec.attributes = vec![("slurm.ui".into(), "0".into())];
/// let e = SLURM.pairs(&spec).unwrap_err();
/// assert!(matches!(e, Error::Invalid(m) if m.contains("submitting user")));
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Passthrough {
    /// `"slurm"` hands on `slurm.*` (the prefix and its dot are stripped).
    pub prefix: &'static str,
    /// Whether a key is well formed for this scheduler.
    pub key_ok: fn(&str) -> bool,
    /// What a well-formed key is, for the refusal (`"a PBS resource name"`).
    pub key_form: &'static str,
    /// Keys the plugin sets itself, or that would break its contract (white-space
    /// separated).
    pub managed: &'static str,
    /// Keys that would change the user or group the job runs as: always refused
    /// (white-space separated).
    pub identity: &'static str,
    /// The scheduler accepts unambiguous abbreviations of these keys (getopt_long).
    pub abbreviations: bool,
    /// The scheduler reads keys case-insensitively.
    pub fold_case: bool,
}

impl Passthrough {
    /// Hands on `prefix.*` attributes whose key satisfies `key_ok`; nothing managed, no
    /// identity keys, exact and case-sensitive matching until the builders below say
    /// otherwise.
    pub const fn new(prefix: &'static str, key_ok: fn(&str) -> bool) -> Passthrough {
        Passthrough {
            prefix,
            key_ok,
            key_form: "an option name",
            managed: "",
            identity: "",
            abbreviations: false,
            fold_case: false,
        }
    }

    /// What a well-formed key is, for the refusal.
    pub const fn form(mut self, key_form: &'static str) -> Passthrough {
        self.key_form = key_form;
        self
    }

    /// Keys the plugin manages, white-space separated (`"parsable wrap"`).
    pub const fn managed(mut self, keys: &'static str) -> Passthrough {
        self.managed = keys;
        self
    }

    /// The scheduler's options that pick the job's user or group, white-space separated
    /// (refused, with that reason). Every plugin lists its scheduler's, or says in a
    /// comment why it has none.
    pub const fn identity(mut self, keys: &'static str) -> Passthrough {
        self.identity = keys;
        self
    }

    /// The scheduler expands unambiguous abbreviations of long options (getopt_long).
    pub const fn abbreviations(mut self) -> Passthrough {
        self.abbreviations = true;
        self
    }

    /// The scheduler reads keys case-insensitively.
    pub const fn fold_case(mut self) -> Passthrough {
        self.fold_case = true;
        self
    }

    fn names(&self, key: &str, listed: &str) -> bool {
        let (key, listed) = match self.fold_case {
            true => (key.to_ascii_lowercase(), listed.to_ascii_lowercase()),
            false => (key.to_string(), listed.to_string()),
        };
        key == listed || (self.abbreviations && !key.is_empty() && listed.starts_with(&key))
    }

    /// The attributes to hand on, as `(key, value)` in spec order; the first refused one
    /// is the error ([`Error::Invalid`], naming the attribute and why).
    pub fn pairs<'a>(&self, spec: &'a JobSpec) -> Result<Vec<(&'a str, &'a str)>, Error> {
        let mut out = Vec::new();
        for (key, value) in spec.attributes_for(self.prefix) {
            let attr = format!("attribute {}.{key}", self.prefix);
            if self.identity.split_whitespace().any(|i| self.names(key, i)) {
                return Err(Error::Invalid(format!(
                    "{attr}: {key:?} would change the user or group the job runs as; jobs run as the submitting user, so no attribute may set it"
                )));
            }
            if !(self.key_ok)(key) {
                return Err(Error::Invalid(format!(
                    "{attr}: {key:?} is not {}",
                    self.key_form
                )));
            }
            if self.managed.split_whitespace().any(|m| self.names(key, m)) {
                return Err(Error::Invalid(format!(
                    "{attr}: {key:?} is managed by the plugin and cannot be set"
                )));
            }
            check_line(&attr, value)?;
            out.push((key, value));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Passthrough = Passthrough::new("x", |k| {
        !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric())
    })
    .managed("queue")
    .identity("Owner")
    .fold_case();

    fn with(attrs: &[(&str, &str)]) -> JobSpec {
        let mut spec = JobSpec::command("true", Vec::<String>::new());
        spec.attributes = attrs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        spec
    }

    #[test]
    fn identity_keys_are_refused_in_any_case_with_the_reason() {
        for key in ["x.owner", "x.OWNER", "x.Owner"] {
            let e = P.pairs(&with(&[(key, "root")])).unwrap_err();
            assert!(
                matches!(&e, Error::Invalid(m) if m.contains("runs as")),
                "{key}: {e:?}"
            );
        }
    }

    #[test]
    fn managed_malformed_and_multi_line_attributes_are_refused() {
        assert!(P.pairs(&with(&[("x.Queue", "1")])).is_err());
        assert!(P.pairs(&with(&[("x.a b", "1")])).is_err());
        assert!(P.pairs(&with(&[("x.ok", "a\nqueue 9")])).is_err());
        let spec = with(&[("x.ok", "1"), ("y.other", "2")]);
        assert_eq!(P.pairs(&spec).unwrap(), [("ok", "1")]);
    }

    #[test]
    fn an_abbreviation_of_an_identity_option_is_refused_where_the_parser_expands_it() {
        let getopt = Passthrough::new("x", |_| true)
            .identity("uid gid")
            .abbreviations();
        for key in ["x.u", "x.ui", "x.uid", "x.gi"] {
            assert!(getopt.pairs(&with(&[(key, "0")])).is_err(), "{key}");
        }
        assert!(getopt.pairs(&with(&[("x.uidx", "0")])).is_ok());
    }

    #[test]
    fn refusals_name_the_first_unsupported_field_set() {
        let mut spec = JobSpec::command("true", Vec::<String>::new());
        spec.nodes = Some(1);
        let fields = [(Field::Nodes, "one node only"), (Field::Array, "no arrays")];
        assert!(refuse(&spec, "S", &fields).is_ok());
        spec.nodes = Some(2);
        assert_eq!(
            refuse(&spec, "S", &fields),
            Err(Error::Unsupported(
                "S has no more than one node: one node only".into()
            ))
        );
    }

    #[test]
    fn dependencies_group_by_kind_in_first_seen_order() {
        let dep = |kind, job: &str| Dependency {
            kind,
            job: job.into(),
        };
        let deps = [
            dep(DependencyKind::AfterOk, "5"),
            dep(DependencyKind::AfterAny, "7"),
            dep(DependencyKind::AfterOk, "6"),
        ];
        assert_eq!(
            dependency_list(&deps, |_| Ok(())).unwrap(),
            "afterok:5:6,afterany:7"
        );
    }

    #[test]
    fn arrays_must_run_forward_from_the_first_index() {
        let arr = |first, last, step| JobArray {
            first,
            last,
            step,
            max_running: None,
        };
        assert!(check_array(&arr(0, 3, 1), 1, "LSF").is_err());
        assert!(check_array(&arr(3, 1, 1), 0, "Slurm").is_err());
        assert!(check_array(&arr(1, 3, 0), 0, "Slurm").is_err());
        assert_eq!(
            array_range(&JobArray {
                max_running: Some(3),
                ..arr(1, 9, 2)
            }),
            "1-9:2%3"
        );
    }
}
