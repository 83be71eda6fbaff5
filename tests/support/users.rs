//! Test users: ordinary local accounts (alice, bob, ...) that jobs run as, created by the
//! harness where it may.
//!
//! Invariants and trade-offs:
//! - A test user is an ordinary user: uid and primary gid at least [`MIN_ID`] (Grid
//!   Engine refuses lower ids, and so does the agent's `[plugins] min_job_uid` default).
//!   An existing account with lower ids is never used or changed.
//! - A missing user is created with `useradd --create-home --user-group` under
//!   `CI=true` (which must then be root: a failure otherwise), and off CI only when the
//!   tests run as root; elsewhere the caller gets `None` after `SKIPPED: <why>`. Users
//!   are never deleted: they are cheap, and a later run (or another test binary running
//!   at the same time) reuses them.
//! - Creation is serialized by an exclusive `flock` on a file in cargo's
//!   `target/tmp` ([`super::target_tmp`], shared by every test binary of this target dir, owned by
//!   whoever builds, never a world-writable directory that root would open through a
//!   planted symlink), plus a process-wide mutex for threads of one binary. `useradd`
//!   racing anyone else is caught by looking the user up again when it fails.

use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

/// The lowest uid and gid a test user may have.
pub const MIN_ID: u32 = 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

use super::skip;

/// The user as the node's user database (NSS, through `getent`) knows them.
pub fn lookup(name: &str) -> Option<TestUser> {
    let out = Command::new("getent")
        .args(["passwd", name])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let line = String::from_utf8_lossy(&out.stdout);
    let f: Vec<&str> = line.trim_end().split(':').collect();
    if f.len() < 7 || f[0] != name {
        return None;
    }
    Some(TestUser {
        name: name.to_string(),
        uid: f[2].parse().ok()?,
        gid: f[3].parse().ok()?,
        home: PathBuf::from(f[5]),
    })
}

fn ordinary(u: TestUser) -> Option<TestUser> {
    if u.uid < MIN_ID || u.gid < MIN_ID {
        return skip(&format!(
            "user {} exists with uid {} gid {}, under {MIN_ID}: not an ordinary user, so not usable as a test user",
            u.name, u.uid, u.gid
        ));
    }
    Some(u)
}

static IN_PROCESS: Mutex<()> = Mutex::new(());

/// An exclusive lock shared by every test process using this target dir; released when
/// the file is dropped.
fn cross_process_lock() -> std::fs::File {
    let path = super::target_tmp().join("corral-test-users.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("opening the test users' lock {}: {e}", path.display()));
    // SAFETY: flock(2) on a descriptor we own for the file's lifetime.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(
        rc,
        0,
        "locking {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    file
}

/// The local user `name`, created when missing where the harness may (module docs);
/// `None` after `SKIPPED: <why>` where the test cannot have it.
pub fn ensure_user(name: &str) -> Option<TestUser> {
    if let Some(u) = lookup(name) {
        return ordinary(u);
    }
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        return skip(&format!(
            "test user {name} does not exist and creating it needs root (useradd --create-home --user-group {name})"
        ));
    }
    let _threads = IN_PROCESS.lock().unwrap_or_else(|p| p.into_inner());
    let _processes = cross_process_lock();
    if let Some(u) = lookup(name) {
        return ordinary(u);
    }
    let out = Command::new("useradd")
        .args([
            "--create-home",
            "--user-group",
            "--shell",
            "/bin/sh",
            "--comment",
            "corral test user",
            name,
        ])
        .output()
        .unwrap_or_else(|e| panic!("running useradd for test user {name}: {e}"));
    match lookup(name) {
        Some(u) => {
            if out.status.success() {
                println!("created test user {name} (uid {}, gid {})", u.uid, u.gid);
            }
            ordinary(u)
        }
        None => panic!(
            "useradd {name} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    }
}
