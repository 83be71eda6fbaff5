//! Probing a venv before anything is started from it: that it exists, that its Python
//! runs, that `ray` imports (with the dashboard extras when the role needs them), and
//! which exact Python and Ray versions it holds.
//!
//! The probe runs `VENV/bin/python -c SCRIPT` with a deadline; the script prints one JSON
//! line. A stand-in `bin/python` that prints such a line is therefore a valid venv for
//! tests of the version check (only for those: nothing is started from it).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;

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

/// Probes `venv`; `need_dashboard` for the head.
pub async fn probe(venv: &Path, need_dashboard: bool) -> Result<VenvInfo, ProbeError> {
    let v = venv.display().to_string();
    if !venv.is_dir() {
        return Err(ProbeError::Missing { venv: v });
    }
    let python = venv.join("bin").join("python");
    let py = python.display().to_string();
    if !is_executable(&python) {
        return Err(ProbeError::NoPython {
            venv: v,
            python: py,
        });
    }
    let run = tokio::process::Command::new(&python)
        .args(["-c", SCRIPT])
        // A folder named `ray` in the working directory would shadow the package.
        .current_dir(venv)
        .stdin(Stdio::null())
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
            return Err(ProbeError::PythonBroken {
                venv: v,
                python: py,
                detail: e.to_string(),
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
    async fn python_that_prints_garbage_is_broken_not_a_panic() {
        let d = tempfile::tempdir().unwrap();
        script(d.path(), "python", "echo hello; exit 3");
        let e = probe(d.path(), false).await.unwrap_err();
        assert!(matches!(e, ProbeError::PythonBroken { .. }), "{e}");
    }
}
