//! The venv probe's answer kept on disk, so that an agent restarted over an unchanged
//! venv starts no Python before `ray start` (a probe imports `ray` and its dashboard
//! extras: about a second of CPU, which on a small node also slows the head or worker
//! starting beside it).
//!
//! Invariants:
//! - An entry is the answer of a *successful* probe (Python and Ray versions, whether
//!   the dashboard extras import) with the [`Fingerprint`] of the venv taken *before*
//!   that probe ran, so a venv changed while it was probed misses next time. A failed
//!   probe is never kept: a venv that does not work is probed again at every try.
//! - The fingerprint is what decides the probe's answer: the venv's path, the uid it was
//!   probed as, and the identity and change times (device, inode, size, mode, owner,
//!   mtime and ctime in ns) of `pyvenv.cfg`, `bin/python` and `bin/ray` and what they
//!   resolve to (the interpreter: a system Python upgraded under the venv is a new
//!   file), each `lib*/python*/site-packages` directory, Ray's `_version.py` and
//!   `__init__.py` in it; and the names of the installed distributions (`*.dist-info`,
//!   `*.egg-info`: a `pip install` or upgrade of any package renames one). Anything
//!   different is a miss, probed again with Python and rewritten. The ctime cannot be
//!   set back by anyone, so a change cannot be dressed up as the old file.
//! - The file (`ray-venv-probe.json`) lives only where no other user can write: the
//!   agent's `state_dir` when it has one, otherwise Ray's temp dir when Ray runs as the
//!   agent's own user (a 0700 directory of the agent's); with neither (a root agent
//!   running Ray as another user, without a state dir) there is no cache and every
//!   start probes. A directory owned by another user or writable by group or others is
//!   not used.
//! - Read without following a symlink, it must be a regular file of the agent's user
//!   that group and others cannot write, at most 1 MiB, parse, and carry this format;
//!   otherwise it is ignored with a warning (never trusted) and replaced by the next
//!   probe's answer. Written to a temporary file (0600) in the same directory, then
//!   renamed into place: a reader never sees half an entry.
//! - The cache is an optimisation only: a failure to read or write it is a warning, and
//!   the probe runs as without it. The venv's permission check
//!   ([`super::probe::check_venv`]) runs at every start, cached or not.
//!
//! Trade-offs: an edit inside an installed package that neither pip nor a reinstall made
//! (no distribution renamed, `ray/_version.py` untouched) is not noticed, nor a shared
//! `libpython` replaced without its interpreter; both would also get past Ray's own
//! checks until something failed. With a cached answer the Ray user's access to its
//! temp dir is not tried before `ray start`; a start that cannot enter it fails with
//! the same explanation ([`super::process::spawn_failure`]).

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::probe::VenvInfo;
use crate::fsperm;

/// The cache file's name in its directory.
pub const FILE_NAME: &str = "ray-venv-probe.json";

/// The format this agent writes and reads.
const FORMAT: u32 = 1;

/// A larger file is not read (an entry is a few KiB).
const MAX_BYTES: u64 = 1 << 20;

/// What a file looked like: enough that a replaced or changed file differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mode: u32,
    uid: u32,
    mtime: i64,
    mtime_ns: i64,
    ctime: i64,
    ctime_ns: i64,
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Stamp {
        Stamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mode: m.mode(),
            uid: m.uid(),
            mtime: m.mtime(),
            mtime_ns: m.mtime_nsec(),
            ctime: m.ctime(),
            ctime_ns: m.ctime_nsec(),
        }
    }
}

/// The state of a venv that decides what its probe answers (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    venv: PathBuf,
    uid: u32,
    /// Each path with its stamp (`None`: missing or unreadable), in a fixed order.
    paths: Vec<(PathBuf, Option<Stamp>)>,
    /// The installed distributions' metadata directories, sorted.
    dists: Vec<String>,
}

impl Fingerprint {
    /// Takes the fingerprint of `venv` as probed by `uid`: a few dozen `stat`s and a
    /// directory listing per `site-packages`; blocking.
    pub fn of(venv: &Path, uid: u32) -> Fingerprint {
        let mut paths = vec![];
        let mut stamp = |p: PathBuf, follow: bool| {
            let m = if follow {
                std::fs::metadata(&p)
            } else {
                std::fs::symlink_metadata(&p)
            };
            paths.push((p, m.ok().map(|m| Stamp::of(&m))));
        };
        stamp(venv.join("pyvenv.cfg"), false);
        for bin in ["bin/python", "bin/ray"] {
            let p = venv.join(bin);
            stamp(p.clone(), false);
            // What the link chain ends at: the interpreter itself.
            if let Ok(real) = std::fs::canonicalize(&p) {
                stamp(real, true);
            }
        }
        let mut site: Vec<PathBuf> = vec![];
        for lib in ["lib", "lib64"] {
            let Ok(dir) = std::fs::read_dir(venv.join(lib)) else {
                continue;
            };
            let mut found: Vec<PathBuf> = dir
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("python"))
                .filter_map(|e| std::fs::canonicalize(e.path().join("site-packages")).ok())
                .collect();
            found.sort();
            for f in found {
                if !site.contains(&f) {
                    site.push(f);
                }
            }
        }
        let mut dists = vec![];
        for sp in &site {
            stamp(sp.clone(), true);
            stamp(sp.join("ray").join("_version.py"), true);
            stamp(sp.join("ray").join("__init__.py"), true);
            if let Ok(dir) = std::fs::read_dir(sp) {
                dists.extend(dir.flatten().filter_map(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    (n.ends_with(".dist-info") || n.ends_with(".egg-info")).then_some(n)
                }));
            }
        }
        dists.sort();
        Fingerprint {
            venv: venv.to_path_buf(),
            uid,
            paths,
            dists,
        }
    }
}

/// The file as written.
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    format: u32,
    fingerprint: Fingerprint,
    python: String,
    ray: String,
    dashboard: bool,
}

/// What the cache had for a fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The venv is as it was when probed: the probe's answer.
    Hit(VenvInfo),
    /// Nothing to use, for an ordinary reason (none yet, the venv changed).
    Miss(String),
    /// The file exists but may not or cannot be used (why); worth a warning.
    Unusable(String),
}

/// The probe cache in one directory.
#[derive(Debug, Clone)]
pub struct ProbeCache {
    dir: PathBuf,
}

fn euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

impl ProbeCache {
    /// The cache in `dir`, created (0700) if missing; `Err` says why it cannot be used.
    /// Blocking.
    pub fn open(dir: &Path) -> Result<ProbeCache, String> {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let meta =
            std::fs::metadata(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        if !meta.is_dir() {
            return Err(format!("{} is not a directory", dir.display()));
        }
        let me = euid();
        fsperm::check_trusted(dir, &[me]).map_err(|e| {
            format!(
                "{e}: the Ray venv's probe answer is kept there, so only the agent's user ({}) may be able to write it",
                fsperm::describe_uid(me)
            )
        })?;
        Ok(ProbeCache {
            dir: dir.to_path_buf(),
        })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    /// The cached answer for `fp`, if the file holds one for exactly that fingerprint.
    /// Blocking.
    pub fn load(&self, fp: &Fingerprint) -> Lookup {
        let path = self.path();
        let shown = path.display();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path);
        let mut file = match file {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Lookup::Miss("no probe cached yet".into())
            }
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Lookup::Unusable(format!("{shown} is a symbolic link"))
            }
            Err(e) => return Lookup::Unusable(format!("cannot open {shown}: {e}")),
        };
        let meta = match file.metadata() {
            Ok(m) => m,
            Err(e) => return Lookup::Unusable(format!("cannot inspect {shown}: {e}")),
        };
        if !meta.is_file() {
            return Lookup::Unusable(format!("{shown} is not a regular file"));
        }
        let me = euid();
        if meta.uid() != me {
            return Lookup::Unusable(format!(
                "{shown} is owned by {}, not by the agent's user ({})",
                fsperm::describe_uid(meta.uid()),
                fsperm::describe_uid(me)
            ));
        }
        if meta.mode() & 0o022 != 0 {
            return Lookup::Unusable(format!(
                "{shown} is writable by others than its owner (mode {:04o})",
                meta.mode() & 0o7777
            ));
        }
        if meta.len() > MAX_BYTES {
            return Lookup::Unusable(format!(
                "{shown} is {} bytes, more than an entry can be",
                meta.len()
            ));
        }
        let mut text = String::new();
        if let Err(e) = (&mut file).take(MAX_BYTES).read_to_string(&mut text) {
            return Lookup::Unusable(format!("cannot read {shown}: {e}"));
        }
        let entry: Entry = match serde_json::from_str(&text) {
            Ok(e) => e,
            Err(e) => return Lookup::Unusable(format!("{shown} does not parse: {e}")),
        };
        if entry.format != FORMAT {
            return Lookup::Unusable(format!("{shown} has format {}, not {FORMAT}", entry.format));
        }
        if entry.fingerprint != *fp {
            return Lookup::Miss(if entry.fingerprint.venv != fp.venv {
                format!(
                    "the cached probe is of another venv ({})",
                    entry.fingerprint.venv.display()
                )
            } else {
                "the venv changed since it was probed".into()
            });
        }
        Lookup::Hit(VenvInfo {
            venv: fp.venv.clone(),
            python: entry.python,
            ray: entry.ray,
            dashboard: entry.dashboard,
        })
    }

    /// Keeps `info`, the answer of a probe of the venv as `fp` found it. Blocking.
    pub fn store(&self, fp: &Fingerprint, info: &VenvInfo) -> Result<(), String> {
        let entry = Entry {
            format: FORMAT,
            fingerprint: fp.clone(),
            python: info.python.clone(),
            ray: info.ray.clone(),
            dashboard: info.dashboard,
        };
        let path = self.path();
        let err = |what: &str, e: &dyn std::fmt::Display| {
            format!("cannot {what} {}: {e}", path.display())
        };
        let body = serde_json::to_vec(&entry).map_err(|e| err("encode", &e))?;
        // NamedTempFile creates its file 0600, exclusively, in the same directory.
        let mut tmp = tempfile::Builder::new()
            .prefix(".ray-venv-probe")
            .tempfile_in(&self.dir)
            .map_err(|e| err("write", &e))?;
        tmp.write_all(&body).map_err(|e| err("write", &e))?;
        tmp.as_file().sync_all().map_err(|e| err("write", &e))?;
        tmp.persist(&path).map_err(|e| err("replace", &e.error))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn venv(dir: &Path) -> PathBuf {
        let v = dir.join("venv");
        let sp = v.join("lib/python3.11/site-packages");
        std::fs::create_dir_all(sp.join("ray")).unwrap();
        std::fs::create_dir_all(sp.join("ray-2.60.0.dist-info")).unwrap();
        std::fs::write(sp.join("ray/_version.py"), "version = \"2.60.0\"\n").unwrap();
        std::fs::create_dir_all(v.join("bin")).unwrap();
        std::fs::write(v.join("pyvenv.cfg"), "version = 3.11.7\n").unwrap();
        corral_base::testing::write_script(&v.join("bin/python"), "exit 0");
        corral_base::testing::write_script(&v.join("bin/ray"), "exit 0");
        v
    }

    fn info(v: &Path) -> VenvInfo {
        VenvInfo {
            venv: v.to_path_buf(),
            python: "3.11.7".into(),
            ray: "2.60.0".into(),
            dashboard: true,
        }
    }

    #[test]
    fn an_unchanged_venv_is_a_hit_with_what_was_stored() {
        let d = tempfile::tempdir().unwrap();
        let v = venv(d.path());
        let c = ProbeCache::open(&d.path().join("state")).unwrap();
        let fp = Fingerprint::of(&v, 1000);
        assert!(matches!(c.load(&fp), Lookup::Miss(_)));
        c.store(&fp, &info(&v)).unwrap();
        assert_eq!(c.load(&Fingerprint::of(&v, 1000)), Lookup::Hit(info(&v)));
        let mode = std::fs::metadata(c.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "mode {mode:o}");
    }

    #[test]
    fn another_user_or_venv_is_a_miss() {
        let d = tempfile::tempdir().unwrap();
        let v = venv(d.path());
        let c = ProbeCache::open(d.path()).unwrap();
        c.store(&Fingerprint::of(&v, 1000), &info(&v)).unwrap();
        assert!(matches!(
            c.load(&Fingerprint::of(&v, 1001)),
            Lookup::Miss(_)
        ));
        let other = d.path().join("other");
        std::fs::create_dir_all(&other).unwrap();
        let w = venv(&other);
        let Lookup::Miss(why) = c.load(&Fingerprint::of(&w, 1000)) else {
            panic!("a hit for another venv")
        };
        assert!(why.contains("another venv"), "{why}");
    }

    #[test]
    fn each_change_that_decides_the_probe_is_a_miss() {
        type Change = fn(&Path);
        let changes: [(&str, Change); 6] = [
            ("a package installed", |v| {
                std::fs::create_dir(v.join("lib/python3.11/site-packages/aiohttp-3.9.dist-info"))
                    .unwrap()
            }),
            ("ray upgraded", |v| {
                let sp = v.join("lib/python3.11/site-packages");
                std::fs::rename(
                    sp.join("ray-2.60.0.dist-info"),
                    sp.join("ray-2.61.0.dist-info"),
                )
                .unwrap();
            }),
            ("ray's version file rewritten", |v| {
                let f = v.join("lib/python3.11/site-packages/ray/_version.py");
                let tmp = f.with_extension("new");
                std::fs::write(&tmp, "version = \"2.61.0\"\n").unwrap();
                std::fs::rename(tmp, f).unwrap();
            }),
            ("the interpreter replaced", |v| {
                let p = v.join("bin/python");
                std::fs::remove_file(&p).unwrap();
                corral_base::testing::write_script(&p, "exit 1");
            }),
            ("pyvenv.cfg edited", |v| {
                // Same size, same mtime: the ctime still moves.
                let p = v.join("pyvenv.cfg");
                let m = std::fs::metadata(&p).unwrap();
                std::fs::write(&p, "version = 3.11.8\n").unwrap();
                let f = std::fs::File::options().write(true).open(&p).unwrap();
                f.set_modified(m.modified().unwrap()).unwrap();
            }),
            ("bin/ray removed", |v| {
                std::fs::remove_file(v.join("bin/ray")).unwrap()
            }),
        ];
        for (what, change) in changes {
            let d = tempfile::tempdir().unwrap();
            let v = venv(d.path());
            let c = ProbeCache::open(d.path()).unwrap();
            c.store(&Fingerprint::of(&v, 0), &info(&v)).unwrap();
            // The kernel's file times tick at most every few ms: leave one tick, so that
            // only the change itself can tell the two apart.
            std::thread::sleep(std::time::Duration::from_millis(20));
            change(&v);
            let got = c.load(&Fingerprint::of(&v, 0));
            assert!(matches!(got, Lookup::Miss(_)), "{what}: {got:?}");
        }
    }

    #[test]
    fn a_corrupt_truncated_or_foreign_format_file_is_unusable_not_trusted() {
        let d = tempfile::tempdir().unwrap();
        let v = venv(d.path());
        let c = ProbeCache::open(d.path()).unwrap();
        let fp = Fingerprint::of(&v, 0);
        c.store(&fp, &info(&v)).unwrap();
        let good = std::fs::read_to_string(c.path()).unwrap();
        for (what, body) in [
            ("garbage", "not json at all".to_string()),
            ("truncated", good[..good.len() / 2].to_string()),
            (
                "another format",
                good.replacen("\"format\":1", "\"format\":99", 1),
            ),
        ] {
            std::fs::write(c.path(), &body).unwrap();
            let got = c.load(&fp);
            assert!(matches!(got, Lookup::Unusable(_)), "{what}: {got:?}");
        }
        // The next probe's answer replaces it.
        c.store(&fp, &info(&v)).unwrap();
        assert_eq!(c.load(&fp), Lookup::Hit(info(&v)));
    }

    #[test]
    fn a_cache_file_others_can_write_or_a_symlink_is_not_trusted() {
        let d = tempfile::tempdir().unwrap();
        let v = venv(d.path());
        let c = ProbeCache::open(d.path()).unwrap();
        let fp = Fingerprint::of(&v, 0);
        c.store(&fp, &info(&v)).unwrap();
        std::fs::set_permissions(c.path(), std::fs::Permissions::from_mode(0o666)).unwrap();
        let Lookup::Unusable(why) = c.load(&fp) else {
            panic!("a group- and world-writable cache was trusted")
        };
        assert!(why.contains("writable"), "{why}");
        let real = d.path().join("elsewhere.json");
        std::fs::rename(c.path(), &real).unwrap();
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink(&real, c.path()).unwrap();
        let Lookup::Unusable(why) = c.load(&fp) else {
            panic!("a symlinked cache was followed")
        };
        assert!(why.contains("symbolic link"), "{why}");
        std::fs::remove_file(c.path()).unwrap();
        // Another user's file, where the agent is root and can make one.
        if euid() == 0 {
            c.store(&fp, &info(&v)).unwrap();
            std::os::unix::fs::chown(c.path(), Some(65534), None).unwrap();
            let Lookup::Unusable(why) = c.load(&fp) else {
                panic!("another user's cache file was trusted")
            };
            assert!(why.contains("owned by"), "{why}");
        }
    }

    #[test]
    fn a_cache_directory_others_can_write_is_not_used() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("shared");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = ProbeCache::open(&dir).unwrap_err();
        assert!(
            e.contains("chmod go-w") && e.contains("only the agent's user"),
            "{e}"
        );
    }
}
