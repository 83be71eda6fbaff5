//! Probing a venv before anything is started from it: that it exists, that its Python
//! runs, that `ray` imports (with the dashboard extras when the role needs them), and
//! which exact Python and Ray versions it holds.
//!
//! The probe runs `VENV/bin/python -c SCRIPT` with a deadline, as the Ray user (the
//! agent never runs code from the venv as itself, unless Ray runs as the agent); the
//! script prints one JSON line. A stand-in `bin/python` that prints such a line is
//! therefore a valid venv for tests of the version check (only for those: nothing is
//! started from it).
//!
//! Before anything runs, the venv must be one only root or the Ray user can change
//! ([`check_venv`]): whoever can write `bin/python`, `bin/ray`, `pyvenv.cfg` (which names
//! the interpreter), `site-packages` (where a `.pth` file runs at start-up), or a
//! directory holding them, runs code as the Ray user on every start.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;

use tracing::warn;

use super::cache::{Fingerprint, Lookup, ProbeCache};
use super::user::RayUser;
use crate::fsperm::{self, PermError};

/// What the probe found in a usable venv.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VenvInfo {
    pub venv: PathBuf,
    pub python: String,
    pub ray: String,
    /// `ray[default]` extras present (dashboard, Jobs API).
    pub dashboard: bool,
}

impl VenvInfo {
    pub fn ray_bin(&self) -> PathBuf {
        self.venv.join("bin").join("ray")
    }
}

/// Why a venv cannot be used; every message names the path and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("Ray venv {venv} does not exist; create it with `python3 -m venv {venv} && {venv}/bin/pip install \"ray[default]\"` or fix ray.venv")]
    Missing { venv: String },
    #[error("{python} is missing or not executable, so {venv} is not a usable venv; recreate it with `python3 -m venv --clear {venv} && {venv}/bin/pip install \"ray[default]\"`")]
    NoPython { venv: String, python: String },
    #[error("{python} does not run ({detail}); recreate the venv with `python3 -m venv --clear {venv} && {venv}/bin/pip install \"ray[default]\"`")]
    PythonBroken {
        venv: String,
        python: String,
        detail: String,
    },
    #[error("{python} cannot import ray ({detail}); install it with `{venv}/bin/pip install \"ray[default]\"`")]
    NoRay {
        venv: String,
        python: String,
        detail: String,
    },
    #[error("{venv} has ray {ray} without the dashboard extras ({detail}), which the head's dashboard and Jobs API need; install them with `{venv}/bin/pip install \"ray[default]=={ray}\"`")]
    NoDashboard {
        venv: String,
        ray: String,
        detail: String,
    },
    #[error("{path} is missing, although {venv}/bin/python imports ray {ray}; reinstall with `{venv}/bin/pip install --force-reinstall \"ray[default]=={ray}\"`")]
    NoRayScript {
        venv: String,
        path: String,
        ray: String,
    },
    #[error("refusing the Ray venv {venv}: Ray runs its code as {user}, so only {allowed} may be able to change it, but {detail} (for the whole venv: `chmod -R go-w {venv}`)")]
    Unsafe {
        venv: String,
        user: String,
        /// Who may change it, in words.
        allowed: String,
        detail: PermError,
    },
    #[error("{python} cannot be started as the Ray user: {detail}")]
    Unreachable {
        venv: String,
        python: String,
        detail: String,
    },
}

/// The paths of `venv` that decide what its Python runs (see the module docs).
fn venv_paths(venv: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = ["", "bin", "bin/python", "bin/ray", "pyvenv.cfg", "lib"]
        .iter()
        .map(|p| {
            if p.is_empty() {
                venv.to_path_buf()
            } else {
                venv.join(p)
            }
        })
        .collect();
    for lib in ["lib", "lib64"] {
        if let Ok(dir) = std::fs::read_dir(venv.join(lib)) {
            let mut found: Vec<PathBuf> = dir
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("python"))
                .map(|e| e.path().join("site-packages"))
                .collect();
            found.sort();
            paths.extend(found);
        }
    }
    paths
}

/// Refuses `venv` unless only root and `uid` can change what its Python runs: the
/// directories above it and the paths [`venv_paths`] names.
pub fn check_venv(venv: &Path, uid: u32) -> Result<(), PermError> {
    // The fix suggested for a wrong owner is root: a venv the Ray user cannot change is
    // one a Ray job cannot change either.
    let owners: &[u32] = if uid == 0 { &[0] } else { &[uid, 0] };
    fsperm::check_ancestors(venv, owners)?;
    for p in venv_paths(venv) {
        fsperm::check_trusted(&p, owners)?;
    }
    Ok(())
}

const SCRIPT: &str = r#"
import json, platform, sys
out = {"python": platform.python_version()}
try:
    import ray
    out["ray"] = ray.__version__
except Exception as e:
    out["error"] = "%s: %s" % (type(e).__name__, e)
try:
    import ray.dashboard.optional_deps
    out["dashboard"] = True
except Exception as e:
    out["dashboard"] = False
    out["dashboard_error"] = "%s: %s" % (type(e).__name__, e)
print(json.dumps(out))
"#;

#[derive(Deserialize)]
struct ProbeOut {
    python: String,
    ray: Option<String>,
    error: Option<String>,
    #[serde(default)]
    dashboard: bool,
    dashboard_error: Option<String>,
}

/// Probes `venv` as the agent itself; `need_dashboard` for the head.
pub async fn probe(venv: &Path, need_dashboard: bool) -> Result<VenvInfo, ProbeError> {
    probe_as(venv, need_dashboard, &RayUser::agent(), &[]).await
}

/// Probes `venv` as `user`, who must also be able to enter each of `reach` (Ray's temp
/// dir: found out here rather than half-way through a start); `need_dashboard` for the
/// head. Blocks briefly for the permission checks (a few `stat`s).
pub async fn probe_as(
    venv: &Path,
    need_dashboard: bool,
    user: &RayUser,
    reach: &[&Path],
) -> Result<VenvInfo, ProbeError> {
    probe_cached(venv, need_dashboard, user, reach, None)
        .await
        .map(|(info, _)| info)
}

/// Where a probe's answer came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeSource {
    /// The cache ([`super::cache`]): the venv is as it was when probed; no Python ran.
    Cached,
    /// Python ran (why the cache did not answer), and its answer is cached when there is
    /// a cache.
    Probed(String),
}

/// [`probe_as`], answered from `cache` when the venv has not changed since its last
/// successful probe. The permission check runs either way; a cache that cannot be read
/// is logged and probed past, never trusted.
pub async fn probe_cached(
    venv: &Path,
    need_dashboard: bool,
    user: &RayUser,
    reach: &[&Path],
    cache: Option<&ProbeCache>,
) -> Result<(VenvInfo, ProbeSource), ProbeError> {
    let v = venv.display().to_string();
    if !venv.is_dir() {
        return Err(ProbeError::Missing { venv: v });
    }
    check_venv(venv, user.uid).map_err(|detail| ProbeError::Unsafe {
        venv: v.clone(),
        user: user.describe(),
        allowed: if user.uid == 0 {
            "root".into()
        } else {
            format!("root or {}", user.name)
        },
        detail,
    })?;
    let python = venv.join("bin").join("python");
    let py = python.display().to_string();
    if !is_executable(&python) {
        return Err(ProbeError::NoPython {
            venv: v,
            python: py,
        });
    }
    // Taken before Python runs: a venv changed while it is probed misses next time.
    let cached = cache.map(|c| {
        let fp = Fingerprint::of(venv, user.uid);
        let found = c.load(&fp);
        (c, fp, found)
    });
    let why = match &cached {
        None => "no probe cache".to_string(),
        Some((_, _, Lookup::Hit(info))) if need_dashboard && !info.dashboard => {
            "the cached probe found no dashboard extras, which a head needs".into()
        }
        Some((_, _, Lookup::Hit(info))) => {
            let ray_bin = info.ray_bin();
            if !is_executable(&ray_bin) {
                return Err(ProbeError::NoRayScript {
                    venv: v,
                    path: ray_bin.display().to_string(),
                    ray: info.ray.clone(),
                });
            }
            return Ok((info.clone(), ProbeSource::Cached));
        }
        Some((_, _, Lookup::Miss(why))) => why.clone(),
        Some((c, _, Lookup::Unusable(why))) => {
            warn!(cache = %c.path().display(), reason = %why, "ignoring the Ray venv probe cache; probing the venv with Python");
            format!("the cache was unusable ({why})")
        }
    };
    let info = run_probe(venv, need_dashboard, user, reach).await?;
    if let Some((c, fp, _)) = &cached {
        if let Err(e) = c.store(fp, &info) {
            warn!(error = %e, "cannot cache the Ray venv probe; the next start probes with Python again");
        }
    }
    Ok((info, ProbeSource::Probed(why)))
}

/// The probe itself: the venv's Python, as `user`, after [`probe_cached`]'s checks.
async fn run_probe(
    venv: &Path,
    need_dashboard: bool,
    user: &RayUser,
    reach: &[&Path],
) -> Result<VenvInfo, ProbeError> {
    let v = venv.display().to_string();
    let python = venv.join("bin").join("python");
    let py = python.display().to_string();
    // The child enters each of `reach`, then the venv: a folder named `ray` in the
    // working directory would shadow the package.
    let mut dirs: Vec<&Path> = reach.to_vec();
    dirs.push(venv);
    let mut cmd = super::process::command(&python, &["-c".into(), SCRIPT.into()], &dirs, user)
        .map_err(|e| ProbeError::PythonBroken {
            venv: v.clone(),
            python: py.clone(),
            detail: e.to_string(),
        })?;
    let run = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(Duration::from_secs(60), run).await {
        Err(_) => {
            return Err(ProbeError::PythonBroken {
                venv: v,
                python: py,
                detail: "no answer within 60s".into(),
            })
        }
        Ok(Err(e)) => {
            return Err(ProbeError::Unreachable {
                venv: v,
                detail: super::process::spawn_failure(&e, &python, &dirs, user),
                python: py,
            })
        }
        Ok(Ok(o)) => o,
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let parsed = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<ProbeOut>(l.trim()).ok());
    let Some(p) = parsed else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().last().unwrap_or("").trim();
        return Err(ProbeError::PythonBroken {
            venv: v,
            python: py,
            detail: format!(
                "exit {}, {}",
                out.status,
                if last.is_empty() { "no output" } else { last }
            ),
        });
    };
    let Some(ray) = p.ray else {
        return Err(ProbeError::NoRay {
            venv: v,
            python: py,
            detail: p.error.unwrap_or_else(|| "no version".into()),
        });
    };
    if need_dashboard && !p.dashboard {
        return Err(ProbeError::NoDashboard {
            venv: v,
            ray,
            detail: p.dashboard_error.unwrap_or_else(|| "not importable".into()),
        });
    }
    let info = VenvInfo {
        venv: venv.to_path_buf(),
        python: p.python,
        ray,
        dashboard: p.dashboard,
    };
    let ray_bin = info.ray_bin();
    if !is_executable(&ray_bin) {
        return Err(ProbeError::NoRayScript {
            venv: v,
            path: ray_bin.display().to_string(),
            ray: info.ray,
        });
    }
    Ok(info)
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, name: &str, body: &str) {
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        corral_base::testing::write_script(&bin.join(name), body);
    }

    #[tokio::test]
    async fn missing_venv_names_the_path_and_the_venv_command() {
        let e = probe(Path::new("/nonexistent/venv"), false)
            .await
            .unwrap_err();
        let m = e.to_string();
        assert!(m.contains("/nonexistent/venv does not exist"), "{m}");
        assert!(m.contains("python3 -m venv /nonexistent/venv"), "{m}");
    }

    #[tokio::test]
    async fn venv_without_ray_names_the_pip_line() {
        let d = tempfile::tempdir().unwrap();
        script(
            d.path(),
            "python",
            "echo '{\"python\": \"3.11.7\", \"error\": \"ModuleNotFoundError: No module named ray\"}'",
        );
        let m = probe(d.path(), false).await.unwrap_err().to_string();
        assert!(m.contains("cannot import ray"), "{m}");
        assert!(
            m.contains(&format!("{}/bin/pip install", d.path().display())),
            "{m}"
        );
    }

    #[tokio::test]
    async fn head_needs_the_dashboard_extras() {
        let d = tempfile::tempdir().unwrap();
        script(
            d.path(),
            "python",
            "echo '{\"python\": \"3.11.7\", \"ray\": \"2.60.0\", \"dashboard\": false}'",
        );
        script(d.path(), "ray", "exit 1");
        let m = probe(d.path(), true).await.unwrap_err().to_string();
        assert!(m.contains("ray[default]==2.60.0"), "{m}");
        let ok = probe(d.path(), false).await.unwrap();
        assert_eq!((ok.python.as_str(), ok.ray.as_str()), ("3.11.7", "2.60.0"));
    }

    #[tokio::test]
    async fn a_venv_others_can_write_is_refused_with_the_path_and_the_fix() {
        let d = tempfile::tempdir().unwrap();
        script(
            d.path(),
            "python",
            "echo '{\"python\": \"3.11.7\", \"ray\": \"2.60.0\", \"dashboard\": true}'",
        );
        script(d.path(), "ray", "exit 1");
        probe(d.path(), false).await.unwrap();
        for rel in ["", "bin", "bin/python", "bin/ray"] {
            let p = if rel.is_empty() {
                d.path().to_path_buf()
            } else {
                d.path().join(rel)
            };
            let before = std::fs::metadata(&p).unwrap().permissions();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o777)).unwrap();
            let e = probe(d.path(), false).await.unwrap_err();
            std::fs::set_permissions(&p, before).unwrap();
            assert!(matches!(e, ProbeError::Unsafe { .. }), "{rel}: {e}");
            let m = e.to_string();
            assert!(m.contains(&format!("chmod go-w {}", p.display())), "{m}");
            assert!(
                m.contains(&format!("chmod -R go-w {}", d.path().display())),
                "{m}"
            );
        }
        probe(d.path(), false).await.unwrap();
    }

    #[tokio::test]
    async fn a_venv_owned_by_another_user_is_refused() {
        let d = tempfile::tempdir().unwrap();
        script(d.path(), "python", "exit 1");
        // SAFETY: geteuid cannot fail.
        let me = unsafe { libc::geteuid() };
        // The venv's owner must be neither root nor the Ray user: as root, hand it to
        // another account; otherwise it is ours, and the Ray user is another.
        let (ray_uid, owner) = if me == 0 {
            std::os::unix::fs::chown(d.path(), Some(65534), None).unwrap();
            (65533, 65534)
        } else {
            (me + 1, me)
        };
        let e = check_venv(d.path(), ray_uid).unwrap_err();
        match &e {
            PermError::Owner { path, owner: o, .. } => {
                assert_eq!(path, d.path());
                assert!(o.contains(&format!("uid {owner}")), "{e}");
            }
            other => panic!("{other}"),
        }
        assert!(e.to_string().contains("chown root"), "{e}");
    }

    /// A stand-in venv whose Python answers `python` and appends a line to `runs` (outside
    /// the venv) each time it is started.
    fn counted_venv(dir: &Path, runs: &Path, python: &str) -> PathBuf {
        let v = dir.join("venv");
        let sp = v.join("lib/python3.11/site-packages");
        std::fs::create_dir_all(sp.join("ray-2.60.0.dist-info")).unwrap();
        write_counted_python(&v, runs, python);
        script(&v, "ray", "exit 1");
        v
    }

    fn write_counted_python(venv: &Path, runs: &Path, python: &str) {
        let p = venv.join("bin/python");
        let _ = std::fs::remove_file(&p);
        script(
            venv,
            "python",
            &format!(
                "echo run >> '{}'\necho '{{\"python\": \"{python}\", \"ray\": \"2.60.0\", \"dashboard\": true}}'",
                runs.display()
            ),
        );
    }

    fn runs(path: &Path) -> usize {
        std::fs::read_to_string(path).map_or(0, |s| s.lines().count())
    }

    #[tokio::test]
    async fn a_worker_with_an_unchanged_venv_starts_no_python() {
        let d = tempfile::tempdir().unwrap();
        let count = d.path().join("runs");
        let v = counted_venv(d.path(), &count, "3.11.7");
        let cache = ProbeCache::open(&d.path().join("state")).unwrap();
        let me = RayUser::agent();
        let (first, source) = probe_cached(&v, false, &me, &[], Some(&cache))
            .await
            .unwrap();
        assert!(matches!(source, ProbeSource::Probed(_)), "{source:?}");
        assert_eq!(runs(&count), 1);
        for _ in 0..3 {
            let (again, source) = probe_cached(&v, false, &me, &[], Some(&cache))
                .await
                .unwrap();
            assert_eq!(source, ProbeSource::Cached);
            assert_eq!(again, first);
        }
        assert_eq!(runs(&count), 1, "Python ran for an unchanged venv");
        // Without a cache, it always runs.
        probe_as(&v, false, &me, &[]).await.unwrap();
        assert_eq!(runs(&count), 2);
    }

    #[tokio::test]
    async fn a_changed_venv_is_probed_again_and_its_new_answer_cached() {
        let d = tempfile::tempdir().unwrap();
        let count = d.path().join("runs");
        let v = counted_venv(d.path(), &count, "3.11.7");
        let cache = ProbeCache::open(d.path()).unwrap();
        let me = RayUser::agent();
        probe_cached(&v, false, &me, &[], Some(&cache))
            .await
            .unwrap();
        // Python upgraded under the venv: a new interpreter file.
        write_counted_python(&v, &count, "3.11.9");
        let (info, source) = probe_cached(&v, false, &me, &[], Some(&cache))
            .await
            .unwrap();
        assert_eq!(info.python, "3.11.9");
        let ProbeSource::Probed(why) = source else {
            panic!("a changed venv was answered from the cache")
        };
        assert!(why.contains("changed"), "{why}");
        let (info, source) = probe_cached(&v, false, &me, &[], Some(&cache))
            .await
            .unwrap();
        assert_eq!(
            (info.python.as_str(), source),
            ("3.11.9", ProbeSource::Cached)
        );
        assert_eq!(runs(&count), 2);
    }

    #[tokio::test]
    async fn a_corrupt_cache_is_ignored_and_replaced_by_a_fresh_probe() {
        let d = tempfile::tempdir().unwrap();
        let count = d.path().join("runs");
        let v = counted_venv(d.path(), &count, "3.11.7");
        let cache = ProbeCache::open(d.path()).unwrap();
        let me = RayUser::agent();
        probe_cached(&v, false, &me, &[], Some(&cache))
            .await
            .unwrap();
        // A forged answer that does not even parse: never trusted.
        std::fs::write(cache.path(), "{\"format\": 1, \"python\": \"3.9.0\"").unwrap();
        let (info, source) = probe_cached(&v, false, &me, &[], Some(&cache))
            .await
            .unwrap();
        assert_eq!(info.python, "3.11.7");
        let ProbeSource::Probed(why) = source else {
            panic!("a corrupt cache was trusted")
        };
        assert!(why.contains("unusable") && why.contains("parse"), "{why}");
        let (_, source) = probe_cached(&v, false, &me, &[], Some(&cache))
            .await
            .unwrap();
        assert_eq!(source, ProbeSource::Cached);
        assert_eq!(runs(&count), 2);
    }

    #[tokio::test]
    async fn a_cached_venv_is_still_refused_when_others_can_write_it() {
        let d = tempfile::tempdir().unwrap();
        let count = d.path().join("runs");
        let v = counted_venv(d.path(), &count, "3.11.7");
        let cache = ProbeCache::open(d.path()).unwrap();
        let me = RayUser::agent();
        probe_cached(&v, false, &me, &[], Some(&cache))
            .await
            .unwrap();
        let bin = v.join("bin");
        let before = std::fs::metadata(&bin).unwrap().permissions();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = probe_cached(&v, false, &me, &[], Some(&cache))
            .await
            .unwrap_err();
        std::fs::set_permissions(&bin, before).unwrap();
        assert!(matches!(e, ProbeError::Unsafe { .. }), "{e}");
    }

    #[tokio::test]
    async fn a_head_is_probed_again_when_the_cached_probe_had_no_dashboard() {
        let d = tempfile::tempdir().unwrap();
        let v = d.path().join("venv");
        script(
            &v,
            "python",
            "echo '{\"python\": \"3.11.7\", \"ray\": \"2.60.0\", \"dashboard\": false, \"dashboard_error\": \"ModuleNotFoundError: aiohttp\"}'",
        );
        script(&v, "ray", "exit 1");
        let cache = ProbeCache::open(&d.path().join("state")).unwrap();
        let me = RayUser::agent();
        // A worker needs no dashboard: cached.
        probe_cached(&v, false, &me, &[], Some(&cache))
            .await
            .unwrap();
        let (_, source) = probe_cached(&v, false, &me, &[], Some(&cache))
            .await
            .unwrap();
        assert_eq!(source, ProbeSource::Cached);
        // A head needs it: Python says what is missing, as without a cache.
        let e = probe_cached(&v, true, &me, &[], Some(&cache))
            .await
            .unwrap_err();
        assert!(matches!(e, ProbeError::NoDashboard { .. }), "{e}");
        assert!(e.to_string().contains("aiohttp"), "{e}");
    }

    #[tokio::test]
    async fn a_failed_probe_is_not_cached() {
        let d = tempfile::tempdir().unwrap();
        script(d.path(), "python", "echo hello; exit 3");
        script(d.path(), "ray", "exit 1");
        let cache = ProbeCache::open(&d.path().join("state")).unwrap();
        for _ in 0..2 {
            let e = probe_cached(d.path(), false, &RayUser::agent(), &[], Some(&cache))
                .await
                .unwrap_err();
            assert!(matches!(e, ProbeError::PythonBroken { .. }), "{e}");
        }
        assert!(!cache.path().exists());
    }

    #[tokio::test]
    async fn python_that_prints_garbage_is_broken_not_a_panic() {
        let d = tempfile::tempdir().unwrap();
        script(d.path(), "python", "echo hello; exit 3");
        let e = probe(d.path(), false).await.unwrap_err();
        assert!(matches!(e, ProbeError::PythonBroken { .. }), "{e}");
    }
}
