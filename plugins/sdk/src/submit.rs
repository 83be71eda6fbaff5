//! Submission: one program, its argv, and the job description on its stdin, so that
//! `render` returns exactly the bytes `submit` sends ([`Submit`]); and a builder for
//! `key = value` description formats such as HTCondor's submit description
//! ([`Description`]), whose escaping policy is the explicit [`Escaping`].
//!
//! Invariants:
//! - [`Submit::render`] and [`Submit::submit`] build the same [`Command`]: `render`
//!   returns its stdin, `submit` runs it. The stdin text starts with a comment holding the
//!   submit argv (Rust debug quoting, one line), so the request documents itself.
//! - A [`Description`] value is either written under the escaping policy or refused
//!   ([`Error::Invalid`] naming the key): no byte of a value can end its line, start a
//!   new command, continue onto the next line, or be expanded by the format's macros.
//!
//! Trade-off: a [`Description`] writes every word of a list quoted, even those that need
//! no quotes, so the output is uniform and the policy has no special cases.
//!
//! ```rust
//! use corral_plugin_sdk::submit::{Description, Escaping};
//!
//! let mut d = Description::new(Escaping::HTCONDOR);
//! d.value("executable", "/bin/echo")?;
//! d.words("arguments", &["it's".to_string(), "$(HOME)".into(), "a \"b\"".into()])?;
//! d.line("queue");
//! assert_eq!(
//!     d.finish(),
//!     "executable = /bin/echo\n\
//!      arguments = \"'it''s' '$(DOLLAR)(HOME)' 'a \"\"b\"\"'\"\nqueue\n"
//! );
//! assert!(Description::new(Escaping::HTCONDOR).value("output", "out\\").is_err());
//! # Ok::<(), corral_plugin_sdk::Error>(())
//! ```

use crate::script::{check_line, is_env_name};
use crate::spec::{Passthrough, TextFlags};
use crate::{log, run_ok, Backend, Command, Error, JobSpec};

/// Builds the argv (after the program name) for a spec.
pub type ArgsFn = fn(&JobSpec) -> Result<Vec<String>, Error>;
/// Builds the stdin text from the program, its argv and the spec
/// ([`crate::script::batch_script`] for a `/bin/sh` script).
pub type StdinFn = fn(&str, &[String], &JobSpec) -> Result<String, Error>;
/// Reads the job id from the submit program's stdout.
pub type ParseFn = fn(&str) -> Result<String, Error>;

/// How one scheduler takes a job (see the module docs).
///
/// ```rust
/// use corral_plugin_sdk::submit::Submit;
/// use corral_plugin_sdk::testing::Script;
/// use corral_plugin_sdk::{Error, JobSpec};
///
/// fn args(_: &JobSpec) -> Result<Vec<String>, Error> { Ok(vec!["now".into()]) }
/// fn id(out: &str) -> Result<String, Error> { Ok(out.trim().to_string()) }
/// const AT: Submit = Submit::script("at", args, id);
///
/// let spec = JobSpec::command("/bin/echo", ["hi"]);
/// let rendered = AT.render(&spec)?;
/// let b = Script::new().ok("at", "7\n");
/// assert_eq!(AT.submit(&b, &spec)?, "7");
/// assert_eq!(b.commands()[0].stdin.as_deref(), Some(rendered.as_bytes()));
/// assert!(rendered.starts_with("#!/bin/sh\n# corral: [\"at\", \"now\"]\n"));
/// # Ok::<(), corral_plugin_sdk::Error>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Submit {
    /// The granted program (`"sbatch"`).
    pub program: &'static str,
    pub args: ArgsFn,
    pub stdin: StdinFn,
    pub parse: ParseFn,
}

impl Submit {
    /// A scheduler fed a `/bin/sh` batch script ([`crate::script::batch_script`]).
    pub const fn script(program: &'static str, args: ArgsFn, parse: ParseFn) -> Submit {
        Submit::new(program, args, crate::script::batch_script, parse)
    }

    /// A scheduler fed some other description on stdin.
    pub const fn new(
        program: &'static str,
        args: ArgsFn,
        stdin: StdinFn,
        parse: ParseFn,
    ) -> Submit {
        Submit {
            program,
            args,
            stdin,
            parse,
        }
    }

    /// The command `submit` runs.
    pub fn command(&self, spec: &JobSpec) -> Result<Command, Error> {
        let args = (self.args)(spec)?;
        let stdin = (self.stdin)(self.program, &args, spec)?;
        Ok(Command::new(self.program).args(args).stdin(stdin))
    }

    /// What `submit` would send on stdin, unsent.
    pub fn render(&self, spec: &JobSpec) -> Result<String, Error> {
        Ok(self.command(spec)?.stdin_text())
    }

    /// Runs the command and returns the job id it printed.
    pub fn submit(&self, b: &dyn Backend, spec: &JobSpec) -> Result<String, Error> {
        let id = (self.parse)(&run_ok(b, &self.command(spec)?)?)?;
        log::info(b, &format!("{} submitted job {id}", self.program));
        Ok(id)
    }
}

/// How a `key = value` format escapes values: every rule a [`Description`] applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Escaping {
    /// What a literal `$` is written as (the format expands `$(...)` macros); `None`
    /// when `$` is not special.
    pub dollar: Option<&'static str>,
    /// A value may not end with this (it continues the line onto the next).
    pub continuation: Option<char>,
    /// A value may not start with this (it opens a multi-line value).
    pub multi_line: Option<&'static str>,
    /// Surrounds a whole word list (`arguments`, `environment`); itself doubled inside.
    pub list_quote: char,
    /// Surrounds each word; itself doubled inside.
    pub word_quote: char,
    /// Starts a comment line.
    pub comment: &'static str,
}

impl Escaping {
    /// HTCondor's submit description (condor_submit(1)): `$(DOLLAR)` for `$`, `\` at the
    /// end of a line continues it, `@=` starts a multi-line value, and the "new syntax"
    /// word lists: the list in `"`, each word in `'`, both doubled inside.
    pub const HTCONDOR: Escaping = Escaping {
        dollar: Some("$(DOLLAR)"),
        continuation: Some('\\'),
        multi_line: Some("@="),
        list_quote: '"',
        word_quote: '\'',
        comment: "#",
    };
}

/// A `key = value` description built under an [`Escaping`] (see the module docs).
#[derive(Debug, Clone)]
pub struct Description {
    escaping: Escaping,
    text: String,
}

impl Description {
    pub fn new(escaping: Escaping) -> Description {
        Description {
            escaping,
            text: String::new(),
        }
    }

    /// A description that starts with a comment holding the submit argv (Rust debug
    /// quoting, one line), as a batch script's second line does: the stdin builder of a
    /// [`Submit`] for a description format.
    pub fn for_submit(escaping: Escaping, program: &str, args: &[String]) -> Description {
        let mut d = Description::new(escaping);
        let argv = [&[program.to_string()], args].concat();
        d.line(&format!("{} corral: {argv:?}", escaping.comment));
        d
    }

    fn dollars(&self, s: &str) -> String {
        match self.escaping.dollar {
            Some(d) => s.replace('$', d),
            None => s.to_string(),
        }
    }

    /// `key = value`, the value literal to the end of the line. Refused: line breaks
    /// and NUL, white space at either end (the format trims it), a trailing
    /// continuation, a leading multi-line marker.
    pub fn value(&mut self, key: &str, value: &str) -> Result<&mut Description, Error> {
        let field = format!("{key} value");
        check_line(&field, value)?;
        let e = self.escaping;
        let bad_end = e.continuation.is_some_and(|c| value.ends_with(c));
        let bad_start = e.multi_line.is_some_and(|m| value.starts_with(m));
        if value.trim() != value || value.is_empty() || bad_end || bad_start {
            return Err(Error::Invalid(format!(
                "{field} {value:?} cannot be written literally in a submit description (empty, white space at an end, or a line-continuation or multi-line marker); change it"
            )));
        }
        let v = self.dollars(value);
        Ok(self.line(&format!("{key} = {v}")))
    }

    fn quote_word(&self, w: &str) -> String {
        let (l, q) = (self.escaping.list_quote, self.escaping.word_quote);
        let mut s = String::from(q);
        for c in self.dollars(w).chars() {
            s.push(c);
            if c == q || c == l {
                s.push(c);
            }
        }
        s.push(q);
        s
    }

    fn list(&mut self, key: &str, items: Vec<String>) -> &mut Description {
        let l = self.escaping.list_quote;
        self.line(&format!("{key} = {l}{}{l}", items.join(" ")))
    }

    /// `key = "'w1' 'w2' ..."`: each word quoted literally (line breaks and NUL
    /// refused).
    pub fn words(&mut self, key: &str, words: &[String]) -> Result<&mut Description, Error> {
        let mut items = Vec::with_capacity(words.len());
        for (i, w) in words.iter().enumerate() {
            check_line(&format!("{key} word {i}"), w)?;
            items.push(self.quote_word(w));
        }
        Ok(self.list(key, items))
    }

    /// `key = "NAME='value' ..."`: names checked ([`is_env_name`]), values quoted.
    pub fn env(&mut self, key: &str, vars: &[(String, String)]) -> Result<&mut Description, Error> {
        let mut items = Vec::with_capacity(vars.len());
        for (k, v) in vars {
            if !is_env_name(k) {
                return Err(Error::Invalid(format!(
                    "environment variable name {k:?} is not a valid name ([A-Za-z_][A-Za-z0-9_]*)"
                )));
            }
            check_line(&format!("environment variable {k}"), v)?;
            items.push(format!("{k}={}", self.quote_word(v)));
        }
        Ok(self.list(key, items))
    }

    /// The spec's program under this format's keys, in the order `[executable,
    /// arguments, environment, stdin]`: the executable as a value, the arguments as
    /// words, the environment (when set) as a list, stdin (when set) as a value.
    pub fn program(&mut self, spec: &JobSpec, keys: [&str; 4]) -> Result<&mut Description, Error> {
        self.value(keys[0], &spec.executable)?;
        self.words(keys[1], &spec.arguments)?;
        if !spec.environment.is_empty() {
            self.env(keys[2], &spec.environment)?;
        }
        if let Some(path) = &spec.stdin_path {
            self.value(keys[3], path)?;
        }
        Ok(self)
    }

    /// `key = value` ([`Description::value`]) for each one-line text field `spec` sets
    /// that `keys` names (HTCondor: `batch_name` for the name, `output` for stdout...).
    pub fn fields(&mut self, spec: &JobSpec, keys: &TextFlags) -> Result<&mut Description, Error> {
        for (key, value) in keys.pairs(spec)? {
            self.value(key, value)?;
        }
        Ok(self)
    }

    /// `key = N` for the counts `spec` asks for, under this format's keys in the order
    /// `[cpus per node, memory in MiB, gpus per node]` (cpus:
    /// [`crate::spec::cpus_per_node`]); counts of 0 are refused
    /// ([`crate::spec::check_counts`]).
    pub fn counts(&mut self, spec: &JobSpec, keys: [&str; 3]) -> Result<&mut Description, Error> {
        crate::spec::check_counts(spec)?;
        let cpus = crate::spec::cpus_per_node(spec).map(u64::from);
        let counts = [cpus, spec.memory_mb, spec.gpus_per_node.map(u64::from)];
        for (key, n) in keys.into_iter().zip(counts) {
            if let Some(n) = n {
                self.line(&format!("{key} = {n}"));
            }
        }
        Ok(self)
    }

    /// `key = value` for each attribute `passthrough` hands on ([`Passthrough::pairs`]).
    pub fn attributes(
        &mut self,
        spec: &JobSpec,
        passthrough: &Passthrough,
    ) -> Result<&mut Description, Error> {
        for (key, value) in passthrough.pairs(spec)? {
            self.value(key, value)?;
        }
        Ok(self)
    }

    /// A line of the plugin's own, written as given (`queue`, a comment): never user
    /// text.
    pub fn line(&mut self, line: &str) -> &mut Description {
        self.text.push_str(line);
        self.text.push('\n');
        self
    }

    pub fn finish(self) -> String {
        self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn htcondor() -> Description {
        Description::new(Escaping::HTCONDOR)
    }

    #[test]
    fn values_that_would_change_the_description_are_refused() {
        for bad in [
            "a\nqueue 5",
            "a\rb",
            " lead",
            "trail ",
            "cont\\",
            "@=end",
            "",
            "nul\0",
        ] {
            assert!(htcondor().value("output", bad).is_err(), "{bad:?}");
        }
        let mut d = htcondor();
        d.value("output", "/tmp/a b/$(Cluster).out").unwrap();
        assert_eq!(d.finish(), "output = /tmp/a b/$(DOLLAR)(Cluster).out\n");
    }

    #[test]
    fn empty_words_and_quotes_survive_the_word_list() {
        let mut d = htcondor();
        let words = ["".to_string(), "'".into(), "\"\"".into(), "a\tb".into()];
        d.words("arguments", &words).unwrap();
        assert_eq!(d.finish(), "arguments = \"'' '''' '\"\"\"\"' 'a\tb'\"\n");
        assert!(htcondor()
            .words("arguments", &["a\nb".to_string()])
            .is_err());
    }

    #[test]
    fn environment_names_are_checked_and_values_quoted() {
        let mut d = htcondor();
        d.env("environment", &[("GREETING".into(), "it's $HOME".into())])
            .unwrap();
        assert_eq!(
            d.finish(),
            "environment = \"GREETING='it''s $(DOLLAR)HOME'\"\n"
        );
        assert!(htcondor()
            .env("environment", &[("A B".into(), "v".into())])
            .is_err());
    }
}
