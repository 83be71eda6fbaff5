//! `corral completions SHELL` and the hidden `corral man [--out DIR]`: shell completions
//! (clap_complete) and man pages (clap_mangen), generated from the CLI definition itself.
//!
//! Invariants:
//! - Both are derived from [`super::Cli`] at run time, so they can never describe another
//!   CLI than the binary's own; `packaging/build.sh` runs the freshly built binary to
//!   produce what the packages ship.
//! - Man pages: `corral.1` for the whole program plus `corral-SUB.1` (and
//!   `corral-SUB-SUBSUB.1`) for every visible subcommand, like git's. Hidden commands
//!   (this one) get no page.
//! - Output is deterministic (no date in the pages), so rebuilding a package from the
//!   same sources gives the same files.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, CommandFactory};

#[derive(Args, Debug)]
pub(super) struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

#[derive(Args, Debug)]
pub(super) struct ManArgs {
    /// Write corral.1 and one page per subcommand into this directory (created if
    /// missing); without it, print corral.1 to stdout.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Prints the completion script for `args.shell` to stdout.
pub(super) fn completions(args: CompletionsArgs) -> Result<()> {
    let mut out = std::io::stdout().lock();
    clap_complete::generate(args.shell, &mut super::Cli::command(), "corral", &mut out);
    out.flush().context("writing the completions to stdout")
}

/// Prints `corral.1`, or writes every page into `--out`.
pub(super) fn man(args: ManArgs) -> Result<()> {
    match args.out {
        None => {
            let mut out = std::io::stdout().lock();
            page(command())
                .render(&mut out)
                .context("writing the man page to stdout")?;
            out.flush().context("writing the man page to stdout")
        }
        Some(dir) => {
            for file in write_pages(&dir)? {
                println!("{}", file.display());
            }
            Ok(())
        }
    }
}

/// The CLI, built (so subcommands carry their `corral-sub` display names), without the
/// implicit `help` subcommand, which needs no page.
fn command() -> clap::Command {
    let mut cmd = super::Cli::command().disable_help_subcommand(true);
    cmd.build();
    cmd
}

fn page(cmd: clap::Command) -> clap_mangen::Man {
    clap_mangen::Man::new(cmd).manual("corral")
}

/// Writes `corral.1` and a page per visible subcommand into `dir`; returns the files.
fn write_pages(dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = vec![];
    let mut todo = vec![command()];
    while let Some(cmd) = todo.pop() {
        todo.extend(cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
        let man = page(cmd);
        let file = man
            .generate_to(dir)
            .with_context(|| format!("writing a man page into {}", dir.display()))?;
        written.push(file);
    }
    written.sort();
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every visible subcommand, as `corral-sub-subsub` page names.
    fn visible(cmd: &clap::Command, prefix: &str, out: &mut Vec<String>) {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            let name = format!("{prefix}-{}", sub.get_name());
            visible(sub, &name, out);
            out.push(name);
        }
    }

    #[test]
    fn every_visible_subcommand_gets_a_man_page_and_the_hidden_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_pages(dir.path()).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        let mut want = vec![];
        visible(&super::super::Cli::command(), "corral", &mut want);
        assert!(want.contains(&"corral-nodes".to_string()), "{want:?}");
        assert!(want.contains(&"corral-certs-issue".to_string()), "{want:?}");
        for w in &want {
            assert!(
                names.contains(&format!("{w}.1")),
                "no page for {w} in {names:?}"
            );
        }
        assert!(names.contains(&"corral.1".to_string()));
        assert!(
            !names.iter().any(|n| n.starts_with("corral-man")),
            "{names:?}"
        );
        assert_eq!(names.len(), want.len() + 1, "{names:?}");
        let main = std::fs::read_to_string(dir.path().join("corral.1")).unwrap();
        assert!(
            main.starts_with(".ie") || main.contains(".TH corral 1"),
            "{main}"
        );
    }

    #[test]
    fn corral_offers_no_load_harness_not_even_a_hidden_one() {
        // The harnesses are the separate `corral-bench` binary (crates/bench).
        let cmd = command();
        let names: Vec<&str> = cmd.get_subcommands().map(|s| s.get_name()).collect();
        assert!(names.contains(&"nodes"), "{names:?}");
        assert!(
            !names.iter().any(|n| n.contains("bench")),
            "corral has a harness subcommand: {names:?}"
        );
        let mut help = vec![];
        command().write_long_help(&mut help).unwrap();
        let help = String::from_utf8(help).unwrap();
        assert!(!help.to_lowercase().contains("bench"), "{help}");
    }
}
