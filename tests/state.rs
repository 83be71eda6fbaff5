//! The coordinator's state when the disk under it fills, and when its database is damaged
//! or newer than the binary: the real binary, a real size-limited tmpfs (root only; under
//! CI=true, which runs as root, these must run), real SQLite files.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use corral_proto::model::Liveness;
use corral_test_support::{corral, skip, stderr, stdout, Cluster};
use serde_json::{json, Value};

/// A tmpfs the test mounted; unmounted (lazily, so a process still holding a file there
/// cannot keep it) when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        if unsafe { libc::geteuid() } != 0 {
            return skip("mounting a size-limited tmpfs needs root");
        }
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return skip("mount -t tmpfs failed (no mount permission in this container?)");
        }
        Some(Tmpfs(dir.to_path_buf()))
    }

    /// Writes zeros to `name` until the file system is full.
    fn fill(&self, name: &str) {
        let mut f = std::fs::File::create(self.0.join(name)).unwrap();
        let chunk = vec![0u8; 16 * 1024];
        loop {
            match f.write_all(&chunk) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", self.0.display()),
            }
        }
        // Whatever fits of a smaller write, so not even a page is left.
        let _ = f.write_all(&chunk[..512]);
        let _ = f.sync_all();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

async fn create_token(c: &Cluster, user: &str) -> (u16, Value) {
    let r = c
        .http()
        .post(c.url("/api/v1/tokens"))
        .header("content-type", "application/json")
        .body(json!({"user": user, "role": "viewer"}).to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn token_users(c: &Cluster) -> Vec<String> {
    let v: Value = c.get("/api/v1/tokens").await.json().await.unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|t| t["user"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_gets_writes_refused_with_503_keeps_reads_and_loses_nothing_acknowledged() {
    let mut c = Cluster::new();
    let Some(disk) = Tmpfs::mount(&c.path("state"), "4m") else {
        return;
    };
    c.start_coordinator();
    c.start_agent("n1", "");
    c.wait_liveness("n1", Liveness::Ready, Duration::from_secs(20))
        .await;
    assert_eq!(create_token(&c, "before-full").await.0, 201);

    disk.fill("filler");
    // SQLite writes into the room its WAL already has until it needs more: keep writing
    // until the database says it is full. Every write acknowledged on the way is kept.
    let mut acknowledged = vec!["before-full".to_string()];
    let mut refusal = None;
    for i in 0..3000 {
        let user = format!("while-full-{i}");
        match create_token(&c, &user).await {
            (201, _) => acknowledged.push(user),
            (503, body) => {
                refusal = Some(body["error"].as_str().unwrap_or_default().to_string());
                break;
            }
            (s, body) => panic!("creating a token on a full disk: {s} {body}"),
        }
    }
    let refusal = refusal.expect("the database never said the disk was full");
    let state = c.path("state");
    assert!(
        refusal.contains(&state.display().to_string()) && refusal.contains("full"),
        "the refusal names the directory and the problem: {refusal}"
    );

    // Every write is now refused, before it acts; reads keep working.
    let submit = c
        .http()
        .post(c.url("/api/v1/nodes/n1/drain"))
        .header("content-type", "application/json")
        .body(json!({"reason": "disk test"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(submit.status().as_u16(), 503);
    assert_eq!(c.get("/api/v1/nodes").await.status().as_u16(), 200);
    assert_eq!(c.get("/api/v1/tokens").await.status().as_u16(), 200);
    let node = c.node("n1").await.unwrap();
    assert!(node.cordon.is_none(), "a refused drain drained nothing");

    // A change made while full (the agent goes away) is kept, not dropped.
    c.signal_agent("n1", libc::SIGKILL);
    c.wait_liveness("n1", Liveness::Disconnected, Duration::from_secs(20))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    std::fs::remove_file(state.join("filler")).unwrap();
    let start = Instant::now();
    loop {
        match create_token(&c, "after-full").await {
            (201, _) => break,
            (503, _) if start.elapsed() < Duration::from_secs(15) => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            (s, body) => panic!("writes did not come back after space returned: {s} {body}"),
        }
    }
    acknowledged.push("after-full".into());

    // A crash now: everything acknowledged, and the change kept while full, is on disk.
    c.kill_coordinator();
    c.start_coordinator();
    let mut users = token_users(&c).await;
    users.sort();
    acknowledged.sort();
    assert_eq!(users, acknowledged, "exactly the acknowledged tokens exist");
    let events = c.events("n1").await;
    assert!(
        events
            .iter()
            .any(|e| e.to == Liveness::Disconnected.as_str()),
        "the disconnection seen while the disk was full was stored: {events:?}"
    );
    drop(c);
    drop(disk);
}

/// Runs `corral coordinator` on `c`'s config and expects it to refuse to start.
fn refused_start(c: &Cluster) -> String {
    let cfg = c.write_coordinator_config();
    let mut child = corral()
        .args(["coordinator", "--config", cfg.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = corral_test_support::wait_timeout(&mut child, Duration::from_secs(20))
        .expect("the coordinator started on a database it must refuse");
    assert!(!status.success());
    let out = child.wait_with_output().unwrap();
    stderr(&out)
}

fn check_db(c: &Cluster) -> std::process::Output {
    let cfg = c.write_coordinator_config();
    corral()
        .args([
            "coordinator",
            "--check-db",
            "--config",
            cfg.to_str().unwrap(),
        ])
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_database_stops_the_coordinator_with_what_to_do() {
    let mut c = Cluster::new();
    c.start_coordinator();
    assert_eq!(create_token(&c, "kept").await.0, 201);
    c.stop_coordinator();
    let ok = check_db(&c);
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert!(stdout(&ok).contains("integrity: ok"), "{}", stdout(&ok));

    // Damage a page in the middle of the file (past the header, inside the tables),
    // after moving everything from the WAL into it.
    let db = c.path("state/coordinator.db");
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.pragma_update(None, "journal_mode", "DELETE").unwrap();
    }
    let mut bytes = std::fs::read(&db).unwrap();
    assert!(
        bytes.len() > 3 * 4096,
        "a database of {} bytes",
        bytes.len()
    );
    for b in &mut bytes[4096..3 * 4096] {
        *b = 0x5a;
    }
    std::fs::write(&db, &bytes).unwrap();

    let err = refused_start(&c);
    for needle in [
        db.display().to_string().as_str(),
        "damaged",
        "move it aside",
        "--check-db",
    ] {
        assert!(err.contains(needle), "{needle:?} missing from: {err}");
    }
    assert_eq!(
        std::fs::read(&db).unwrap(),
        bytes,
        "a refused database is left untouched"
    );
    let checked = check_db(&c);
    assert!(!checked.status.success());
    assert!(stdout(&checked).contains("DAMAGED"), "{}", stdout(&checked));

    // Not a database at all: the same refusal.
    std::fs::write(
        &db,
        b"this is not a database, it is a text file\n".repeat(200),
    )
    .unwrap();
    let _ = std::fs::remove_file(c.path("state/coordinator.db-wal"));
    let _ = std::fs::remove_file(c.path("state/coordinator.db-shm"));
    let err = refused_start(&c);
    assert!(
        err.contains("damaged") && err.contains("move it aside"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_from_a_newer_corral_is_refused_untouched() {
    let mut c = Cluster::new();
    c.start_coordinator();
    c.stop_coordinator();
    let db = c.path("state/coordinator.db");
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
    }
    let before = std::fs::read(&db).unwrap();
    let err = refused_start(&c);
    assert!(
        err.contains("schema version 99") && err.contains("newer corral"),
        "{err}"
    );
    assert_eq!(std::fs::read(&db).unwrap(), before);
    let checked = check_db(&c);
    assert!(!checked.status.success());
    assert!(
        stdout(&checked).contains("newer than this corral"),
        "{}",
        stdout(&checked)
    );
}
