//! Batch scripts: POSIX `sh` quoting and the script body every batch plugin shares.
//!
//! Invariants:
//! - [`sh_quote`] is the only way plugin text enters a shell script: single quotes, with
//!   each `'` written as `'\''`. Inside single quotes `sh` interprets nothing (no `$`,
//!   backquote, backslash, glob or newline handling), so any string without NUL arrives
//!   byte for byte. NUL cannot be passed in argv at all and is refused as invalid.
//! - Scheduler options never go into the script body: plugins pass them as argv
//!   elements or directives they validate themselves; the body only sets the
//!   environment, changes directory and `exec`s the job's program, so the job's exit
//!   status is the program's.

use crate::{Error, JobSpec};

/// `s` as one `sh` word, literally.
pub fn sh_quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('\'');
    for c in s.chars() {
        if c == '\'' {
            q.push_str("'\\''");
        } else {
            q.push(c);
        }
    }
    q.push('\'');
    q
}

/// Refuses text that cannot reach a program literally (NUL), naming the field.
pub fn check_text(field: &str, s: &str) -> Result<(), Error> {
    if s.contains('\0') {
        return Err(Error::Invalid(format!(
            "{field} contains a NUL byte, which no program can receive; remove it"
        )));
    }
    Ok(())
}

/// Refuses text that would break a one-line directive or option (NUL, newline, CR).
pub fn check_line(field: &str, s: &str) -> Result<(), Error> {
    check_text(field, s)?;
    if s.contains('\n') || s.contains('\r') {
        return Err(Error::Invalid(format!(
            "{field} {s:?} contains a line break, which this scheduler cannot take; remove it"
        )));
    }
    Ok(())
}

/// Whether `name` is a portable environment variable name (`[A-Za-z_][A-Za-z0-9_]*`).
pub fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The script body after a plugin's shebang and directives: `export`s for the spec's
/// environment, `cd` to its directory, and `exec` of its program with its arguments
/// (and stdin redirected when set), every value quoted by [`sh_quote`].
pub fn body(spec: &JobSpec) -> Result<String, Error> {
    let mut s = String::new();
    for (k, v) in &spec.environment {
        if !is_env_name(k) {
            return Err(Error::Invalid(format!(
                "environment variable name {k:?} is not a valid name ([A-Za-z_][A-Za-z0-9_]*)"
            )));
        }
        check_text(&format!("environment variable {k}"), v)?;
        s.push_str(&format!("export {k}={}\n", sh_quote(v)));
    }
    if let Some(dir) = &spec.directory {
        check_text("directory", dir)?;
        s.push_str(&format!("cd {} || exit 1\n", sh_quote(dir)));
    }
    s.push_str(&exec_line(spec)?);
    s.push('\n');
    Ok(s)
}

/// `exec 'program' 'arg'... [< 'stdin']`: the spec's program, arguments and stdin as one
/// `sh` command, each value quoted by [`sh_quote`].
pub fn exec_line(spec: &JobSpec) -> Result<String, Error> {
    if spec.executable.is_empty() {
        return Err(Error::Invalid(
            "the job spec has an empty executable".into(),
        ));
    }
    check_text("executable", &spec.executable)?;
    let mut s = String::from("exec ");
    s.push_str(&sh_quote(&spec.executable));
    for (i, a) in spec.arguments.iter().enumerate() {
        check_text(&format!("argument {i}"), a)?;
        s.push(' ');
        s.push_str(&sh_quote(a));
    }
    if let Some(p) = &spec.stdin_path {
        check_text("stdin path", p)?;
        s.push_str(" < ");
        s.push_str(&sh_quote(p));
    }
    Ok(s)
}

/// One `sh -c` command line for the spec: `cd 'dir' && exec ...` (the environment is
/// left to the caller, e.g. a runtime environment of its own).
pub fn command_line(spec: &JobSpec) -> Result<String, Error> {
    let exec = exec_line(spec)?;
    match &spec.directory {
        Some(dir) => {
            check_text("directory", dir)?;
            Ok(format!("cd {} && {exec}", sh_quote(dir)))
        }
        None => Ok(exec),
    }
}

/// The batch script a plugin sends on its submit program's stdin: a `/bin/sh` shebang,
/// a comment holding the submit argv (Rust debug quoting: one line, so no text in it can
/// become a directive or a command), then [`body`]. With the argv inside, `render`
/// returns exactly the bytes `submit` sends and the script documents its own request.
pub fn batch_script(program: &str, args: &[String], spec: &JobSpec) -> Result<String, Error> {
    let mut argv = vec![program.to_string()];
    argv.extend(args.iter().cloned());
    Ok(format!("#!/bin/sh\n# corral: {argv:?}\n{}", body(spec)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `script` with the real `sh` and returns what the `exec`ed program saw.
    fn argv_through_sh(args: &[&str]) -> Vec<String> {
        let spec = JobSpec::command("printf", ["%s\\0"].into_iter().chain(args.iter().copied()));
        let script = body(&spec).unwrap();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .output()
            .unwrap();
        assert!(out.status.success(), "{script}");
        let mut v: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .split('\0')
            .map(str::to_string)
            .collect();
        v.pop();
        v
    }

    #[test]
    fn shell_metacharacters_reach_the_program_literally() {
        let nasty = [
            "it's",
            "$(touch /tmp/pwned)",
            "`id`",
            "a b\tc",
            "line1\nline2",
            "\\n\\'",
            "*?[a-z]",
            "; rm -rf / #",
            "$HOME ${PATH}",
            "'''",
            "",
            "ünïcødé ✓",
            "-n",
        ];
        assert_eq!(argv_through_sh(&nasty), nasty);
    }

    #[test]
    fn a_nul_byte_is_refused_naming_the_argument() {
        let spec = JobSpec::command("echo", ["ok", "bad\0"]);
        let e = body(&spec).unwrap_err();
        assert!(
            matches!(&e, Error::Invalid(m) if m.contains("argument 1")),
            "{e:?}"
        );
    }

    #[test]
    fn a_bad_environment_name_is_refused() {
        let mut spec = JobSpec::command("true", Vec::<String>::new());
        spec.environment = vec![("A=B; x".into(), "v".into())];
        assert!(matches!(body(&spec), Err(Error::Invalid(_))));
    }

    #[test]
    fn environment_values_and_directory_are_quoted() {
        let mut spec = JobSpec::command("true", Vec::<String>::new());
        spec.environment = vec![("GREETING".into(), "it's $HOME".into())];
        spec.directory = Some("/tmp/a b".into());
        spec.stdin_path = Some("/in put".into());
        assert_eq!(
            body(&spec).unwrap(),
            "export GREETING='it'\\''s $HOME'\ncd '/tmp/a b' || exit 1\nexec 'true' < '/in put'\n"
        );
    }

    #[test]
    fn line_breaks_are_refused_in_one_line_fields() {
        assert!(check_line("job name", "a\nb").is_err());
        assert!(check_line("job name", "a b;$(x)").is_ok());
    }
}
