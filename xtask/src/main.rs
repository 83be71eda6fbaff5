//! `cargo xtask`: the project's build tasks that cargo alone cannot express.
//!
//! `cargo xtask plugins [--out DIR] [--toolchain auto|rustup|debian] [--crate PATH]...
//! [NAME...]` builds every scheduler plugin crate (each folder with a `Cargo.toml` under
//! `plugins/`, except the `sdk`, and under `tests/plugins/`) for `wasm32-unknown-unknown`,
//! turns each core module into a component with `wit-component`, and writes
//! `OUT/NAME.wasm` beside a copy of the crate's manifest `OUT/NAME.toml`, where NAME is the
//! crate's folder name. `--crate PATH` builds a plugin crate outside the workspace (one
//! `corral plugin new --dir` made: its own `[workspace]` and `plugin` profile) the same
//! way, instead of the workspace's plugins unless NAMEs are given too.
//!
//! Invariants and trade-offs:
//! - OUT defaults to `<target dir>/plugins`; the wasm build itself goes to
//!   `<target dir>/wasm`, apart from host builds, so reruns are incremental and a host
//!   `cargo build` never waits on (or invalidates) a wasm one.
//! - Two toolchain routes, chosen in this order and always printed:
//!   1. `rustup`: the running toolchain has the `wasm32-unknown-unknown` std installed
//!      (`rustup target add wasm32-unknown-unknown`); a plain `cargo build --target`.
//!   2. `debian`: Debian's `rustc-web cargo-web rust-web-src lld` (rustc in `/usr/bin`
//!      with its std source): std is built for wasm with `-Zbuild-std`, linked by
//!      `wasm-ld`. When these are missing and we are root with `apt-get`, they are
//!      installed; otherwise the error gives the exact commands for either route.
//! - Each crate is built by its own cargo invocation, so one broken plugin does not
//!   keep the others from being built; the task still fails, naming every failure.
//! - Nothing built is committed: `*.wasm` is ignored by git.
//! - A `--crate` build uses the same `<target dir>/wasm` as the workspace's plugins, so a
//!   crate that pins the same dependency versions (a `corral plugin new` crate starts
//!   with a copy of the workspace's `Cargo.lock`) and the same profile reuses what is
//!   already compiled there instead of building the SDK and its dependencies again.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};

const TARGET: &str = "wasm32-unknown-unknown";
/// The cargo profile plugins are built with (declared in the workspace `Cargo.toml`).
const PROFILE: &str = "plugin";
const DEBIAN_PACKAGES: &[&str] = &["rustc-web", "cargo-web", "rust-web-src", "lld"];
const DEBIAN_CARGO: &str = "/usr/bin/cargo";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_STD_SOURCE: &str = "/usr/lib/rustlib/src/rust/library";

const USAGE: &str = "usage: cargo xtask plugins [--out DIR] [--toolchain auto|rustup|debian] [--crate PATH]... [NAME...]

Builds the scheduler plugins (plugins/*, except sdk, and tests/plugins/*) for
wasm32-unknown-unknown, componentizes them, and writes OUT/NAME.wasm and OUT/NAME.toml.
OUT defaults to <target dir>/plugins (target dir: $CARGO_TARGET_DIR or <workspace>/target).
NAME limits the build to those plugin folders. --crate PATH builds the plugin crate in
PATH (outside the workspace, with its own [workspace] and [profile.plugin]; NAME is its
folder name and PATH/NAME.toml its manifest) instead of the workspace's plugins.";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("plugins") => plugins(Options::parse(args)?),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => bail!("unknown task {other:?}\n{USAGE}"),
        None => bail!("no task given\n{USAGE}"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Rustup,
    Debian,
}

#[derive(Debug)]
struct Options {
    out: Option<PathBuf>,
    route: Option<Route>,
    only: Vec<String>,
    /// Plugin crates outside the workspace (`--crate PATH`).
    crates: Vec<PathBuf>,
}

impl Options {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Options> {
        let mut o = Options {
            out: None,
            route: None,
            only: Vec::new(),
            crates: Vec::new(),
        };
        while let Some(a) = args.next() {
            match a.as_str() {
                "--out" => {
                    let v = args.next().context("--out needs a directory")?;
                    o.out = Some(PathBuf::from(v));
                }
                "--toolchain" => {
                    let v = args
                        .next()
                        .context("--toolchain needs auto, rustup or debian")?;
                    o.route = match v.as_str() {
                        "auto" => None,
                        "rustup" => Some(Route::Rustup),
                        "debian" => Some(Route::Debian),
                        _ => bail!("--toolchain {v:?}: expected auto, rustup or debian"),
                    };
                }
                "--crate" => {
                    let v = args.next().context("--crate needs a plugin crate folder")?;
                    o.crates.push(PathBuf::from(v));
                }
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                s if s.starts_with('-') => bail!("unknown option {s:?}\n{USAGE}"),
                s => o.only.push(s.to_string()),
            }
        }
        Ok(o)
    }
}

/// A plugin crate found in the workspace.
#[derive(Debug)]
struct PluginCrate {
    /// The folder name: the plugin's file name in OUT.
    name: String,
    dir: PathBuf,
    /// The cargo package name.
    package: String,
    /// A crate outside the workspace: built by `--manifest-path` (its own workspace).
    external: bool,
}

impl PluginCrate {
    /// The core module cargo writes for this crate.
    fn artifact(&self, wasm_target_dir: &Path) -> PathBuf {
        wasm_target_dir
            .join(TARGET)
            .join(PROFILE)
            .join(format!("{}.wasm", self.package.replace('-', "_")))
    }

    fn manifest(&self) -> PathBuf {
        self.dir.join(format!("{}.toml", self.name))
    }
}

fn workspace_root() -> PathBuf {
    // xtask lives one level below the workspace root. `cargo run` (the `cargo xtask`
    // alias) says where at run time; the compile-time path is only the fallback, since
    // a build cache shared by two checkouts may hand one the binary built in the other.
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .filter(|d| d.join("Cargo.toml").is_file())
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir
        .parent()
        .expect("xtask has a parent folder")
        .to_path_buf()
}

/// `$CARGO_TARGET_DIR` (relative to the current directory, as cargo reads it) or
/// `<workspace>/target`.
fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                std::env::current_dir()
                    .unwrap_or_else(|_| root.to_path_buf())
                    .join(d)
            }
        }
        _ => root.join("target"),
    }
}

fn plugins(opts: Options) -> Result<()> {
    let root = workspace_root();
    let target = target_dir(&root);
    let out = match &opts.out {
        Some(o) if o.is_absolute() => o.clone(),
        Some(o) => std::env::current_dir()?.join(o),
        None => target.join("plugins"),
    };
    let wasm_target = target.join("wasm");

    let mut crates = discover(&root)?;
    if !opts.crates.is_empty() && opts.only.is_empty() {
        crates.clear();
    }
    if !opts.only.is_empty() {
        for n in &opts.only {
            if !crates.iter().any(|c| &c.name == n) {
                let known: Vec<_> = crates.iter().map(|c| c.name.as_str()).collect();
                bail!("no plugin folder named {n:?} (known: {})", known.join(", "));
            }
        }
        crates.retain(|c| opts.only.contains(&c.name));
    }
    for path in &opts.crates {
        crates.push(external_crate(path)?);
    }
    if crates.is_empty() {
        bail!("no plugin crates found under plugins/ or tests/plugins/");
    }

    let route = choose_route(opts.route)?;
    println!("xtask: toolchain route: {}", route.describe());
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;

    let mut failures = Vec::new();
    for c in &crates {
        match build_one(&root, &wasm_target, &out, route, c) {
            Ok((path, bytes)) => println!(
                "xtask: built {} -> {} ({} bytes)",
                c.name,
                path.display(),
                bytes
            ),
            Err(e) => {
                eprintln!("xtask: {} failed: {e:#}", c.name);
                failures.push(c.name.clone());
            }
        }
    }
    println!("xtask: plugins dir: {}", out.display());
    if !failures.is_empty() {
        bail!("plugins that failed to build: {}", failures.join(", "));
    }
    Ok(())
}

/// Every crate folder under `plugins/` (except `sdk`) and `tests/plugins/`, sorted.
fn discover(root: &Path) -> Result<Vec<PluginCrate>> {
    let mut found = Vec::new();
    for (parent, skip) in [("plugins", Some("sdk")), ("tests/plugins", None)] {
        let parent = root.join(parent);
        let Ok(entries) = std::fs::read_dir(&parent) else {
            continue;
        };
        for e in entries {
            let e = e?;
            let dir = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if Some(name.as_str()) == skip || !dir.join("Cargo.toml").is_file() {
                continue;
            }
            let package = package_name(&dir.join("Cargo.toml"))?;
            found.push(PluginCrate {
                name,
                dir,
                package,
                external: false,
            });
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(found)
}

/// The plugin crate in `path`, a folder outside the workspace (`--crate`).
fn external_crate(path: &Path) -> Result<PluginCrate> {
    let dir = std::fs::canonicalize(path)
        .with_context(|| format!("--crate {}: no such folder", path.display()))?;
    let cargo_toml = dir.join("Cargo.toml");
    if !cargo_toml.is_file() {
        bail!(
            "--crate {}: no Cargo.toml there; pass the folder of a plugin crate (`corral plugin new NAME --dir DIR` makes one)",
            path.display()
        );
    }
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .with_context(|| format!("--crate {}: the folder has no name", path.display()))?;
    let package = package_name(&cargo_toml)?;
    Ok(PluginCrate {
        name,
        dir,
        package,
        external: true,
    })
}

fn package_name(manifest: &Path) -> Result<String> {
    let text = std::fs::read_to_string(manifest)
        .with_context(|| format!("reading {}", manifest.display()))?;
    let doc: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {}", manifest.display()))?;
    doc.get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
        .map(str::to_string)
        .with_context(|| format!("{} has no [package] name", manifest.display()))
}

impl Route {
    fn describe(self) -> String {
        match self {
            Route::Rustup => format!("rustup (installed {TARGET} std, `cargo build --target`)"),
            Route::Debian => format!(
                "debian ({DEBIAN_CARGO} with -Zbuild-std from {DEBIAN_STD_SOURCE}, linked by wasm-ld)"
            ),
        }
    }
}

fn choose_route(wanted: Option<Route>) -> Result<Route> {
    match wanted {
        Some(Route::Rustup) => {
            if rustup_has_target() {
                Ok(Route::Rustup)
            } else {
                bail!("the running toolchain has no {TARGET} std: run `rustup target add {TARGET}`")
            }
        }
        Some(Route::Debian) => {
            ensure_debian()?;
            Ok(Route::Debian)
        }
        None if rustup_has_target() => Ok(Route::Rustup),
        None => {
            ensure_debian()?;
            Ok(Route::Debian)
        }
    }
}

/// Whether the toolchain that runs us has a prebuilt std for the wasm target.
fn rustup_has_target() -> bool {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let Ok(out) = Command::new(rustc).args(["--print", "sysroot"]).output() else {
        return false;
    };
    if !out.status.success() {
        return false;
    }
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Path::new(&sysroot)
        .join("lib/rustlib")
        .join(TARGET)
        .join("lib")
        .is_dir()
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

fn debian_missing() -> Vec<&'static str> {
    let mut missing = Vec::new();
    if !Path::new(DEBIAN_RUSTC).is_file() {
        missing.push("rustc-web");
    }
    if !Path::new(DEBIAN_CARGO).is_file() {
        missing.push("cargo-web");
    }
    if !Path::new(DEBIAN_STD_SOURCE).is_dir() {
        missing.push("rust-web-src");
    }
    if which("wasm-ld").is_none() {
        missing.push("lld");
    }
    missing
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Makes sure Debian's wasm-capable toolchain is there, installing it when we can.
fn ensure_debian() -> Result<()> {
    let missing = debian_missing();
    if missing.is_empty() {
        return Ok(());
    }
    let apt = format!(
        "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {}",
        DEBIAN_PACKAGES.join(" ")
    );
    let how = format!(
        "either `rustup target add {TARGET}` (needs the rustup dist server), or as root: `{apt}`"
    );
    if !is_root() || which("apt-get").is_none() {
        bail!(
            "no toolchain can build {TARGET}: the running toolchain has no {TARGET} std and \
             Debian's packages are missing ({}). Install {how}",
            missing.join(", ")
        );
    }
    println!(
        "xtask: installing Debian's wasm toolchain ({}) with apt-get",
        DEBIAN_PACKAGES.join(" ")
    );
    let status = Command::new("apt-get")
        .arg("update")
        .status()
        .context("running apt-get update")?;
    if !status.success() {
        bail!("`apt-get update` failed ({status}); install {how}");
    }
    let status = Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(DEBIAN_PACKAGES)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get install")?;
    if !status.success() {
        bail!("`apt-get install` failed ({status}); install {how}");
    }
    let still = debian_missing();
    if !still.is_empty() {
        bail!(
            "after apt-get install, still missing: {} (expected {DEBIAN_RUSTC}, {DEBIAN_CARGO}, \
             {DEBIAN_STD_SOURCE} and wasm-ld on PATH)",
            still.join(", ")
        );
    }
    Ok(())
}

fn cargo_command(route: Route, root: &Path, wasm_target: &Path, c: &PluginCrate) -> Command {
    let mut cmd = match route {
        Route::Rustup => Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())),
        Route::Debian => {
            let mut c = Command::new(DEBIAN_CARGO);
            // Debian's cargo and rustc, not the rustup proxies that ran us.
            let path = std::env::var_os("PATH").unwrap_or_default();
            let mut paths = vec![PathBuf::from("/usr/bin")];
            paths.extend(std::env::split_paths(&path));
            c.env(
                "PATH",
                std::env::join_paths(paths).unwrap_or_else(|_| OsString::from("/usr/bin")),
            )
            .env("RUSTC", DEBIAN_RUSTC)
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("RUSTDOC")
            .env("RUSTC_BOOTSTRAP", "1")
            .env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER", "wasm-ld");
            c
        }
    };
    cmd.current_dir(root)
        .env("CARGO_TARGET_DIR", wasm_target)
        .args(["build", "--target", TARGET, "--profile", PROFILE]);
    if c.external {
        cmd.arg("--manifest-path").arg(c.dir.join("Cargo.toml"));
    } else {
        cmd.args(["--package", &c.package]);
    }
    if route == Route::Debian {
        cmd.arg("-Zbuild-std=std,panic_abort");
    }
    cmd
}

fn build_one(
    root: &Path,
    wasm_target: &Path,
    out: &Path,
    route: Route,
    c: &PluginCrate,
) -> Result<(PathBuf, usize)> {
    let manifest = c.manifest();
    if !manifest.is_file() {
        bail!(
            "the plugin's manifest {} is missing (every plugin ships NAME.toml beside its Cargo.toml)",
            manifest.display()
        );
    }
    let status = cargo_command(route, root, wasm_target, c)
        .status()
        .with_context(|| format!("running cargo for {}", c.package))?;
    if !status.success() {
        bail!(
            "cargo build of {} for {TARGET} failed ({status})",
            c.package
        );
    }
    let module_path = c.artifact(wasm_target);
    let module = std::fs::read(&module_path)
        .with_context(|| format!("reading {} (is the crate a cdylib?)", module_path.display()))?;
    let component = wit_component::ComponentEncoder::default()
        .module(&module)
        .with_context(|| {
            format!(
                "{} is not a wit-bindgen guest module",
                module_path.display()
            )
        })?
        .validate(true)
        .encode()
        .with_context(|| format!("componentizing {}", module_path.display()))?;
    let wasm_out = out.join(format!("{}.wasm", c.name));
    write_atomically(&wasm_out, &component)?;
    let toml_out = out.join(format!("{}.toml", c.name));
    let manifest_bytes =
        std::fs::read(&manifest).with_context(|| format!("reading {}", manifest.display()))?;
    write_atomically(&toml_out, &manifest_bytes)?;
    Ok((wasm_out, component.len()))
}

/// Writes beside the destination and renames, so a host loading OUT never sees half a file.
fn write_atomically(dest: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = dest.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, dest).with_context(|| format!("renaming into {}", dest.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_take_out_toolchain_and_names() {
        let o = Options::parse(
            ["--out", "x", "--toolchain", "debian", "slurm", "pbs"]
                .into_iter()
                .map(String::from),
        )
        .unwrap();
        assert_eq!(o.out, Some(PathBuf::from("x")));
        assert_eq!(o.route, Some(Route::Debian));
        assert_eq!(o.only, vec!["slurm", "pbs"]);
        assert!(o.crates.is_empty());
        let o = Options::parse(
            ["--crate", "a/mine", "--crate", "b"]
                .into_iter()
                .map(String::from),
        )
        .unwrap();
        assert_eq!(o.crates, [PathBuf::from("a/mine"), PathBuf::from("b")]);
    }

    #[test]
    fn a_crate_outside_the_workspace_is_named_by_its_folder_and_built_by_manifest_path() {
        let dir = std::env::temp_dir().join(format!("xtask-crate-{}", std::process::id()));
        let krate = dir.join("mine");
        std::fs::create_dir_all(&krate).unwrap();
        std::fs::write(
            krate.join("Cargo.toml"),
            "[package]\nname = \"corral-plugin-mine\"\n",
        )
        .unwrap();
        let c = external_crate(&krate).unwrap();
        assert_eq!((c.name.as_str(), c.external), ("mine", true));
        let cmd = cargo_command(Route::Rustup, &workspace_root(), Path::new("t"), &c);
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(args.contains(&"--manifest-path".to_string()), "{args:?}");
        assert!(!args.contains(&"--package".to_string()), "{args:?}");
        let e = external_crate(&dir).unwrap_err().to_string();
        assert!(e.contains("no Cargo.toml there"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unknown_toolchain_is_refused_with_the_choices() {
        let e = Options::parse(["--toolchain", "nightly"].into_iter().map(String::from))
            .unwrap_err()
            .to_string();
        assert!(e.contains("auto, rustup or debian"), "{e}");
    }

    #[test]
    fn discovery_skips_the_sdk_and_names_plugins_by_folder() {
        let crates = discover(&workspace_root()).unwrap();
        assert!(crates.iter().all(|c| c.name != "sdk"));
        let slurm = crates
            .iter()
            .find(|c| c.name == "slurm")
            .expect("slurm found");
        assert_eq!(slurm.package, "corral-plugin-slurm");
        assert!(slurm
            .artifact(Path::new("t"))
            .ends_with("wasm32-unknown-unknown/plugin/corral_plugin_slurm.wasm"));
    }
}
