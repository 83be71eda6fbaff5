//! `corral plugin new` and `corral plugin check`: what a plugin author runs, from nothing
//! to a component an agent loads.
//!
//! Invariants:
//! - `new` writes a crate that builds with `cargo xtask plugins`, passes its own native
//!   tests and passes `corral plugin check` before its author changes anything; it never
//!   overwrites: a destination that exists and is not empty is refused.
//! - The crate's form follows where it goes. In the checkout's `plugins/` it joins the
//!   workspace (the `plugins/*` member glob; the next cargo command adds it to
//!   `Cargo.lock`) and inherits the workspace's package fields, like every built-in
//!   plugin. Anywhere else it is a workspace of its own: the checkout's `[profile.*]`
//!   tables copied in (so `cargo xtask plugins --crate DIR` builds it with the `plugin`
//!   profile) and a copy of the checkout's `Cargo.lock` (so it resolves the versions
//!   corral is tested with, offline, and the wasm build reuses what the shared target
//!   directory already compiled).
//! - The plugin's name is its folder's name, its manifest's file name, `plugin.name` and
//!   `info().name`: one name, checked here once.
//! - `check` prints every load warning (a granted program not found, a granted host that
//!   does not resolve, a limit left to its default); `--strict` fails when there is any.
//!
//! Trade-off: the templates (`agent/templates/plugin/`) are compiled into the binary, so
//! `new` needs nothing at run time but the SDK the crate depends on, which is found in
//! the corral checkout around the destination, the current directory or the running
//! binary (`target/debug/corral`), or given with `--sdk`: the SDK is not published, so
//! a plugin is built against a checkout.

use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use serde::Serialize;

use corral_proto::job::LoadedPlugin;

/// What a scaffolded plugin drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(super) enum Kind {
    /// A batch scheduler's programs (qsub, qstat, ...), run by argv.
    Batch,
    /// A scheduler's REST API, over HTTP.
    Http,
}

#[derive(Args, Debug)]
pub(super) struct NewArgs {
    /// The plugin's name: lower-case letters, digits, '-' and '_', starting with a letter
    /// (e.g. mysched). The folder, the manifest, the .wasm and info().name all carry it.
    name: String,
    /// What it drives: batch (programs run by argv) or http (a REST API).
    #[arg(long, value_enum, default_value_t = Kind::Batch)]
    kind: Kind,
    /// The crate's folder, ending in NAME (default: plugins/NAME of the corral checkout
    /// around the current directory). Outside that plugins/ folder the crate is its own
    /// workspace; build it with `cargo xtask plugins --crate DIR`.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The plugin SDK to depend on (default: plugins/sdk of the corral checkout around
    /// --dir or the current directory).
    #[arg(long)]
    sdk: Option<PathBuf>,
}

/// One template file: where it goes in the crate, and its text.
type Template = (&'static str, &'static str);

const BATCH: &[Template] = &[
    (
        "src/lib.rs",
        include_str!("../../templates/plugin/batch/lib.rs"),
    ),
    (
        "src/tests.rs",
        include_str!("../../templates/plugin/batch/tests.rs"),
    ),
    (
        "{{name}}.toml",
        include_str!("../../templates/plugin/batch/manifest.toml"),
    ),
    (
        "fixtures/submit.txt",
        include_str!("../../templates/plugin/batch/fixtures/submit.txt"),
    ),
    (
        "fixtures/queue.json",
        include_str!("../../templates/plugin/batch/fixtures/queue.json"),
    ),
    (
        "fixtures/history.json",
        include_str!("../../templates/plugin/batch/fixtures/history.json"),
    ),
    (
        "fixtures/cancel-finished.stderr",
        include_str!("../../templates/plugin/batch/fixtures/cancel-finished.stderr"),
    ),
    (
        "fixtures/cancel-unknown.stderr",
        include_str!("../../templates/plugin/batch/fixtures/cancel-unknown.stderr"),
    ),
];

const HTTP: &[Template] = &[
    (
        "src/lib.rs",
        include_str!("../../templates/plugin/http/lib.rs"),
    ),
    (
        "src/tests.rs",
        include_str!("../../templates/plugin/http/tests.rs"),
    ),
    (
        "{{name}}.toml",
        include_str!("../../templates/plugin/http/manifest.toml"),
    ),
    (
        "fixtures/submit-created.json",
        include_str!("../../templates/plugin/http/fixtures/submit-created.json"),
    ),
    (
        "fixtures/job-running.json",
        include_str!("../../templates/plugin/http/fixtures/job-running.json"),
    ),
    (
        "fixtures/job-finished.json",
        include_str!("../../templates/plugin/http/fixtures/job-finished.json"),
    ),
    (
        "fixtures/job-unknown.json",
        include_str!("../../templates/plugin/http/fixtures/job-unknown.json"),
    ),
    (
        "fixtures/cancel-finished.json",
        include_str!("../../templates/plugin/http/fixtures/cancel-finished.json"),
    ),
];

const CARGO_TOML: &str = include_str!("../../templates/plugin/Cargo.toml.in");

/// Whether `name` can name a plugin crate: see [`NewArgs::name`].
fn check_name(name: &str) -> Result<()> {
    let ok = name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with(['-', '_'])
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !ok {
        bail!("{name:?} is not a plugin name: use lower-case letters, digits, '-' and '_', starting with a letter (e.g. \"mysched\")");
    }
    if name == "sdk" {
        bail!("\"sdk\" is the plugin SDK's folder; choose another name");
    }
    Ok(())
}

/// `my-sched` is `MySchedPlugin`: never one of the names the templates import.
fn type_name(name: &str) -> String {
    let mut s: String = name
        .split(['-', '_'])
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect();
    s.push_str("Plugin");
    s
}

/// The corral checkout at or above `start`: the folder holding `plugins/sdk/Cargo.toml`
/// under a `Cargo.toml` with a `[workspace]` table.
fn find_checkout(start: &Path) -> Option<PathBuf> {
    start.ancestors().find_map(|dir| {
        let root = std::fs::read_to_string(dir.join("Cargo.toml")).ok()?;
        let has_sdk = dir.join("plugins/sdk/Cargo.toml").is_file();
        (has_sdk && root.lines().any(|l| l.trim() == "[workspace]")).then(|| dir.to_path_buf())
    })
}

/// `path` made absolute against the current directory, with `.` and `..` folded away
/// (it need not exist yet).
fn absolute(path: &Path) -> Result<PathBuf> {
    let joined = std::env::current_dir()
        .context("reading the current directory")?
        .join(path);
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    Ok(out)
}

/// The nearest existing ancestor of `path`, canonicalized, with the rest re-attached:
/// symlinks resolved where they exist, so comparisons and relative paths are exact.
fn canonical(path: &Path) -> Result<PathBuf> {
    let abs = absolute(path)?;
    let mut rest = Vec::new();
    let mut base = abs.as_path();
    loop {
        if let Ok(c) = std::fs::canonicalize(base) {
            return Ok(rest.iter().rev().fold(c, |p, part| p.join(part)));
        }
        match (base.file_name(), base.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name.to_os_string());
                base = parent;
            }
            _ => return Ok(abs),
        }
    }
}

/// `to` relative to the folder `from` (both absolute), for a path dependency; `to` as
/// it is when they share nothing but the root (a crate in a temporary folder).
fn relative(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<_> = from.components().collect();
    let to_parts: Vec<_> = to.components().collect();
    let common = from
        .iter()
        .zip(&to_parts)
        .take_while(|(a, b)| a == b)
        .count();
    if common <= 1 {
        return to.to_path_buf();
    }
    let to = to_parts;
    let mut out = PathBuf::new();
    for _ in common..from.len() {
        out.push("..");
    }
    for c in &to[common..] {
        out.push(c);
    }
    out
}

/// The `[profile.*]` tables of the checkout's `Cargo.toml` (keys and headers; comments
/// dropped), for a crate that is its own workspace.
fn profiles(workspace_toml: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in workspace_toml.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            inside = t.starts_with("[profile.");
            if inside {
                out.push('\n');
            }
        }
        if inside && !t.is_empty() && !t.starts_with('#') {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Where the new crate goes and what it is built against.
struct Plan {
    dest: PathBuf,
    sdk: PathBuf,
    checkout: PathBuf,
    /// In the checkout's `plugins/`: a workspace member.
    member: bool,
}

fn plan(a: &NewArgs) -> Result<Plan> {
    let cwd = std::env::current_dir().context("reading the current directory")?;
    let dest = match &a.dir {
        Some(d) => canonical(d)?,
        None => {
            let checkout = find_checkout(&canonical(&cwd)?).with_context(|| {
                format!(
                    "no corral checkout around {} (a folder with plugins/sdk): run `corral plugin new` inside one, or pass --dir PATH/{} and --sdk CHECKOUT/plugins/sdk",
                    cwd.display(),
                    a.name
                )
            })?;
            checkout.join("plugins").join(&a.name)
        }
    };
    if dest.file_name().and_then(|n| n.to_str()) != Some(a.name.as_str()) {
        bail!(
            "--dir {}: the folder's name must be the plugin's name ({}), since the build names NAME.wasm after it; use --dir {}",
            dest.display(),
            a.name,
            dest.with_file_name(&a.name).display()
        );
    }
    let (sdk, checkout) = match &a.sdk {
        Some(s) => {
            let sdk = canonical(s)?;
            let text = std::fs::read_to_string(sdk.join("Cargo.toml")).unwrap_or_default();
            if !text.contains("name = \"corral-plugin-sdk\"") {
                bail!(
                    "--sdk {}: not the plugin SDK (its Cargo.toml names no corral-plugin-sdk); pass the plugins/sdk folder of a corral checkout",
                    s.display()
                );
            }
            let checkout = find_checkout(&sdk)
                .with_context(|| format!("--sdk {}: not inside a corral checkout", s.display()))?;
            (sdk, checkout)
        }
        None => {
            let exe = std::env::current_exe().ok();
            let checkout = find_checkout(dest.parent().unwrap_or(&dest))
                .or_else(|| find_checkout(&canonical(&cwd).ok()?))
                .or_else(|| find_checkout(exe.as_deref()?.parent()?))
                .with_context(|| {
                    format!(
                        "cannot find the plugin SDK: neither {}, the current directory nor this corral binary is inside a corral checkout; pass --sdk CHECKOUT/plugins/sdk",
                        dest.display()
                    )
                })?;
            (checkout.join("plugins/sdk"), checkout)
        }
    };
    if let Ok(mut entries) = std::fs::read_dir(&dest) {
        if entries.next().is_some() {
            bail!(
                "{} already exists and is not empty; choose another name or --dir (nothing was written)",
                dest.display()
            );
        }
    } else if dest.exists() {
        bail!("{} exists and is not a folder", dest.display());
    }
    let member = dest.parent() == Some(checkout.join("plugins").as_path());
    Ok(Plan {
        dest,
        sdk,
        checkout,
        member,
    })
}

/// The files of the new crate, path (relative to the crate) and text.
fn render(a: &NewArgs, p: &Plan) -> Result<Vec<(PathBuf, String)>> {
    let templates = match a.kind {
        Kind::Batch => BATCH,
        Kind::Http => HTTP,
    };
    let features = match a.kind {
        Kind::Batch => "\"scheduler\", \"process\"",
        Kind::Http => "\"scheduler\", \"http\"",
    };
    let (fields, standalone) = if p.member {
        (
            "version.workspace = true\nedition.workspace = true\nlicense.workspace = true"
                .to_string(),
            String::new(),
        )
    } else {
        let root = p.checkout.join("Cargo.toml");
        let text = std::fs::read_to_string(&root)
            .with_context(|| format!("reading {}", root.display()))?;
        (
            "version = \"0.1.0\"\nedition = \"2021\"".to_string(),
            format!(
                "\n# Outside corral's workspace: a workspace of its own, built with corral's profiles\n# (`cargo xtask plugins --crate DIR` uses `plugin`), and Cargo.lock started as a copy\n# of corral's.\n[workspace]\n{}",
                profiles(&text)
            ),
        )
    };
    let sdk = relative(&p.dest, &p.sdk);
    let fill = |text: &str| {
        text.replace("{{name}}", &a.name)
            .replace("{{Type}}", &type_name(&a.name))
            .replace("{{package}}", &format!("corral-plugin-{}", a.name))
            .replace("{{package_fields}}", &fields)
            .replace("{{sdk}}", &sdk.to_string_lossy())
            .replace("{{features}}", features)
            .replace("{{standalone}}", &standalone)
    };
    let mut files = vec![(PathBuf::from("Cargo.toml"), fill(CARGO_TOML))];
    for (path, text) in templates {
        files.push((PathBuf::from(fill(path)), fill(text)));
    }
    if !p.member {
        let lock = p.checkout.join("Cargo.lock");
        if let Ok(text) = std::fs::read_to_string(&lock) {
            files.push((PathBuf::from("Cargo.lock"), text));
        }
    }
    Ok(files)
}

/// `corral plugin new`.
pub(super) fn new(a: NewArgs) -> Result<()> {
    check_name(&a.name)?;
    let p = plan(&a)?;
    let files = render(&a, &p)?;
    for (rel, text) in &files {
        let path = p.dest.join(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    let shown = std::env::current_dir()
        .ok()
        .and_then(|cwd| p.dest.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| p.dest.clone());
    let kind = match a.kind {
        Kind::Batch => "batch",
        Kind::Http => "http",
    };
    println!(
        "created the {kind} plugin {} in {}:",
        a.name,
        shown.display()
    );
    for (rel, _) in &files {
        println!("  {}", rel.display());
    }
    let package = format!("corral-plugin-{}", a.name);
    if p.member {
        println!(
            "\nIt joins the workspace through the plugins/* glob: the next cargo command adds\n{package} to Cargo.lock (commit that change with the plugin).\n\nNext, from the checkout:\n  cargo test -p {package}\n  cargo xtask plugins {name}\n  corral plugin check target/plugins/{name}.wasm\n  corral dev                      # loads every plugin in target/plugins",
            name = a.name
        );
    } else {
        println!(
            "\nIt is a workspace of its own. Next, from the checkout ({}):\n  cargo test --manifest-path {dir}/Cargo.toml\n  cargo xtask plugins --crate {dir}\n  corral plugin check target/plugins/{name}.wasm\n  corral dev                      # loads every plugin in target/plugins",
            p.checkout.display(),
            dir = p.dest.display(),
            name = a.name
        );
    }
    Ok(())
}

/// `corral plugin check --json`: what loading would announce, and the warnings.
#[derive(Serialize)]
struct CheckReport<'a> {
    #[serde(flatten)]
    loaded: &'a LoadedPlugin,
    warnings: Vec<&'a str>,
}

/// `corral plugin check`: loads `file` as an agent would and prints what it would
/// announce and every load warning; with `strict`, any warning is an error.
pub(super) async fn check(
    file: PathBuf,
    manifest: Option<PathBuf>,
    json: bool,
    strict: bool,
) -> Result<()> {
    let manifest_file = manifest
        .clone()
        .unwrap_or_else(|| file.with_extension("toml"));
    let provider = corral_sandbox::plugins::Manifest::load(&manifest_file)
        .is_ok_and(|m| m.kind == corral_sandbox::plugins::manifest::PluginKind::Provider);
    if provider {
        return check_provider(file, manifest, json, strict).await;
    }
    let f = file.clone();
    let details = tokio::task::spawn_blocking(move || {
        corral_sandbox::plugins::check_file_details(&f, manifest.as_deref())
    })
    .await
    .context("the plugin check stopped")?
    .with_context(|| format!("{} is not a usable plugin", file.display()))?;
    let warnings: Vec<&str> = details.all_warnings().collect();
    if json {
        let report = CheckReport {
            loaded: &details.loaded,
            warnings: warnings.clone(),
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", check_text(&file, &details.loaded, &warnings));
    }
    if strict && !warnings.is_empty() {
        bail!(
            "{}: {} load warning{} with --strict (above); fix each, or check without --strict",
            file.display(),
            warnings.len(),
            if warnings.len() == 1 { "" } else { "s" }
        );
    }
    Ok(())
}

/// `corral plugin check` of a provider plugin (`plugin.kind = "provider"`): loaded as the
/// coordinator loads one for a pool.
async fn check_provider(
    file: PathBuf,
    manifest: Option<PathBuf>,
    json: bool,
    strict: bool,
) -> Result<()> {
    let f = file.clone();
    let details = tokio::task::spawn_blocking(move || {
        corral_sandbox::plugins::provider::check_file(&f, manifest.as_deref())
    })
    .await
    .context("the plugin check stopped")?
    .with_context(|| format!("{} is not a usable provider plugin", file.display()))?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "kind": "provider",
                "info": details.info,
                "digest": details.digest,
                "warnings": details.warnings,
            }))?
        );
    } else {
        let i = &details.info;
        let mut s = format!(
            "{}: ok\n  plugin:    {} {} ({}), a provider plugin for [pools.NAME]\n  billing:   {}\n  digest:    {}\n",
            file.display(),
            i.name,
            i.version,
            i.provider,
            if i.hourly_billing { "by the hour" } else { "not by the hour" },
            details.digest
        );
        if details.warnings.is_empty() {
            s.push_str("  warnings:  none\n");
        }
        for w in &details.warnings {
            s.push_str(&format!("  warning:   {w}\n"));
        }
        print!("{s}");
    }
    if strict && !details.warnings.is_empty() {
        bail!(
            "{}: {} load warning{} with --strict (above); fix each, or check without --strict",
            file.display(),
            details.warnings.len(),
            if details.warnings.len() == 1 { "" } else { "s" }
        );
    }
    Ok(())
}

/// The summary `corral plugin check` prints, then one `warning:` line per warning (or
/// `warnings: none`), in the summary's value column.
fn check_text(file: &Path, loaded: &LoadedPlugin, warnings: &[&str]) -> String {
    let mut s = super::jobs::plugin_summary(file, loaded);
    if warnings.is_empty() {
        s.push_str("  warnings:  none\n");
    }
    for w in warnings {
        s.push_str(&format!("  warning:   {w}\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_names_are_lower_case_words_starting_with_a_letter() {
        for ok in ["mysched", "my-sched", "pbs_pro2"] {
            check_name(ok).unwrap();
        }
        for bad in ["", "MySched", "2x", "-x", "x-", "a b", "a/b", "sdk", "ünï"] {
            assert!(check_name(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn the_plugin_type_is_camel_case_and_never_an_imported_name() {
        assert_eq!(type_name("my-sched"), "MySchedPlugin");
        assert_eq!(type_name("error"), "ErrorPlugin");
        assert_eq!(type_name("pbs_pro2"), "PbsPro2Plugin");
    }

    #[test]
    fn a_path_dependency_is_written_relative_to_the_crate() {
        let r = |a: &str, b: &str| relative(Path::new(a), Path::new(b));
        assert_eq!(r("/w/plugins/x", "/w/plugins/sdk"), Path::new("../sdk"));
        assert_eq!(
            r("/w/a/x", "/w/plugins/sdk"),
            Path::new("../../plugins/sdk")
        );
        assert_eq!(r("/tmp/a/x", "/w/plugins/sdk"), Path::new("/w/plugins/sdk"));
    }

    #[test]
    fn only_the_profile_tables_are_copied_for_a_crate_of_its_own() {
        let ws = "[workspace]\nmembers = [\"a\"]\n\n# why\n[profile.dev]\nopt-level = 1\n\n[workspace.lints.rust]\nx = \"deny\"\n[profile.plugin]\ninherits = \"release\"\n";
        assert_eq!(
            profiles(ws),
            "\n[profile.dev]\nopt-level = 1\n\n[profile.plugin]\ninherits = \"release\"\n"
        );
    }

    #[test]
    fn every_template_placeholder_is_filled() {
        let checkout = find_checkout(Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap();
        for (kind, member) in [(Kind::Batch, true), (Kind::Http, false)] {
            let a = NewArgs {
                name: "my-sched".into(),
                kind,
                dir: None,
                sdk: None,
            };
            let folder = if member { "plugins" } else { "elsewhere" };
            let p = Plan {
                dest: checkout.join(folder).join("my-sched"),
                sdk: checkout.join("plugins/sdk"),
                checkout: checkout.clone(),
                member,
            };
            for (path, text) in render(&a, &p).unwrap() {
                assert!(
                    !text.contains("{{"),
                    "{} keeps a placeholder",
                    path.display()
                );
                assert!(!path.to_string_lossy().contains("{{"), "{}", path.display());
            }
        }
    }
}
