//! `corral-bench`: the load and speed harnesses behind BENCHMARKS.md, as their own
//! binary so that nothing harness-only ships in `corral`. Every harness drives real
//! `corral` processes or in-process daemons on loopback, and stops by itself.

mod bench;
mod bench_console;
mod bench_gpu;
mod bench_jobs;
mod bench_plugin;
mod bench_pools;
mod bench_ray;
mod bench_remediation;
mod bench_soak;

use std::process::ExitCode;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "corral-bench",
    version,
    about = "corral's load and speed harnesses (figures in BENCHMARKS.md)"
)]
struct Cli {
    #[command(subcommand)]
    command: bench::BenchCmd,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber_init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("corral-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(bench::run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("corral-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr like the daemons' (`CORRAL_LOG` filters, `info` by default; set
/// `CORRAL_LOG=warn` for the figures alone); the figures go to stdout.
fn tracing_subscriber_init() {
    corral::cli::init_logging("text");
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// The `corral-bench ...` command lines of BENCHMARKS.md's code blocks, as argument
    /// vectors. A leading `VAR=value` that one of the harness's options reads from the
    /// environment becomes that option (so the check does not depend on this process's
    /// environment); other assignments (`CORRAL_LOG`) are left out.
    fn documented_invocations() -> Vec<Vec<String>> {
        let doc = include_str!("../../../BENCHMARKS.md");
        let mut fenced = false;
        let mut out = vec![];
        for line in doc.lines() {
            if line.trim_start().starts_with("```") {
                fenced = !fenced;
                continue;
            }
            if !fenced {
                continue;
            }
            let line = line.split('#').next().unwrap_or("");
            for command in line.split("&&") {
                let words: Vec<&str> = command.split_whitespace().collect();
                let Some(at) = words.iter().position(|w| w.ends_with("corral-bench")) else {
                    continue;
                };
                let mut argv: Vec<String> = words[at..].iter().map(|w| w.to_string()).collect();
                let sub = Cli::command();
                let sub = sub
                    .find_subcommand(&argv[1])
                    .unwrap_or_else(|| panic!("BENCHMARKS.md runs {command:?}: no such harness"));
                for assignment in &words[..at] {
                    let (var, value) = assignment.split_once('=').expect("VAR=value");
                    if let Some(arg) = sub
                        .get_arguments()
                        .find(|a| a.get_env().is_some_and(|e| e == var))
                    {
                        let long = arg.get_long().expect("env options are long options");
                        argv.extend([format!("--{long}"), value.to_string()]);
                    }
                }
                out.push(argv);
            }
        }
        out
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_invocation_in_benchmarks_md_parses_and_every_harness_is_documented() {
        let runs = documented_invocations();
        assert!(runs.len() >= 6, "{runs:?}");
        for argv in &runs {
            if let Err(e) = Cli::try_parse_from(argv) {
                panic!(
                    "BENCHMARKS.md runs `{}`, which corral-bench refuses:\n{e}",
                    argv.join(" ")
                );
            }
        }
        for harness in Cli::command().get_subcommands() {
            let name = harness.get_name();
            assert!(
                name == "help" || runs.iter().any(|argv| argv[1] == name),
                "BENCHMARKS.md never runs `corral-bench {name}`"
            );
        }
    }
}
