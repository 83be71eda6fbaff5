//! `corral-bench`: the load and speed harnesses behind BENCHMARKS.md, as their own
//! binary so that nothing harness-only ships in `corral`. Every harness drives real
//! `corral` processes or in-process daemons on loopback, and stops by itself.

mod bench;
mod bench_gpu;
mod bench_jobs;
mod bench_plugin;
mod bench_ray;

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

/// Warnings and errors only: the harness prints its own figures on stdout.
fn tracing_subscriber_init() {
    corral::cli::init_logging("text");
}
