//! The `corral` binary: see [`corral::cli`].

fn main() -> std::process::ExitCode {
    corral::cli::main()
}
