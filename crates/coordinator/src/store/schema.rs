//! Opening the database: its integrity, its schema version and the migrations between
//! versions.
//!
//! Invariants:
//! - The schema's version is SQLite's `PRAGMA user_version`. Version 1 is the layout
//!   every corral wrote before versions were kept (`user_version` 0 with tables in it);
//!   an empty file is version 0. [`MIGRATIONS`] takes a database from each version to
//!   the next, each step in its own transaction together with the new `user_version`,
//!   so a crash mid-way leaves a database at one version or the next, never between.
//! - A database with data is copied (`VACUUM INTO`, a consistent copy even with a WAL)
//!   next to itself before the first migration step: `coordinator.db.vN.TIME.bak`, N the
//!   version it had. A backup that cannot be written stops the start: migrating without
//!   one would leave no way back.
//! - A database newer than this corral is refused untouched, with what to do: it holds
//!   columns and rows this version cannot keep correct.
//! - A damaged database is refused untouched at start. `PRAGMA quick_check` runs at
//!   every open: it reads every page (tens of milliseconds for the few megabytes a
//!   coordinator keeps) but skips the index-to-table cross-checks of the full
//!   `integrity_check`, which `corral coordinator --check-db` runs.
//! - Commits are `synchronous = FULL` in WAL mode: every commit is on stable storage
//!   before it returns, so an acknowledged job, token or drain survives a power cut, not
//!   only a crash. Write-behind batches come once a second, so the cost is one fsync per
//!   second plus one per acknowledged change (BENCHMARKS.md, "Durable commits").

use std::path::{Path, PathBuf};

use rusqlite::{Connection, ErrorCode, OpenFlags};

/// The schema version this corral writes.
pub(crate) const VERSION: u32 = 2;

/// Version 1: what corral wrote before schema versions (and still the base a new
/// database starts from, so that a new database and an upgraded one are made by the same
/// statements).
const V1: &str = "
CREATE TABLE IF NOT EXISTS nodes (
    name TEXT PRIMARY KEY,
    view TEXT NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    node TEXT NOT NULL,
    kind TEXT NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_node ON events(node, id);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    scheduler TEXT NOT NULL,
    node TEXT NOT NULL,
    native_id TEXT,
    state TEXT NOT NULL,
    submitted_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS job_history (
    job INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    state TEXT NOT NULL,
    native_state TEXT,
    message TEXT,
    PRIMARY KEY (job, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    role TEXT NOT NULL,
    hash TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER,
    revoked_ms INTEGER
);
CREATE TABLE IF NOT EXISTS cordons (
    node TEXT PRIMARY KEY,
    record TEXT NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS records (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    record TEXT NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (kind, key)
) WITHOUT ROWID;
";

/// One step: from version `to - 1` to `to`.
struct Migration {
    to: u32,
    what: &'static str,
    sql: &'static str,
}

/// Every step after version 1, in order.
const MIGRATIONS: &[Migration] = &[Migration {
    to: 2,
    what:
        "jobs get an owner column (for sqlite3 users and per-user queries), filled from the records",
    sql: "
ALTER TABLE jobs ADD COLUMN owner TEXT NOT NULL DEFAULT '';
UPDATE jobs SET owner = coalesce(json_extract(record, '$.owner'), '') WHERE json_valid(record);
CREATE INDEX jobs_owner ON jobs(owner, id);
",
}];

/// Why a database was not opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    #[error(
        "the database {path} is damaged ({detail}); the coordinator will not start on it. \
         Stop anything using it, then either restore a backup over it ({backups}), or move \
         it aside together with its -wal and -shm files to start with an empty state (nodes \
         come back on their next connection; the jobs, tokens and drains recorded in it are \
         lost). `corral coordinator --check-db --config FILE` runs the full check"
    )]
    Damaged {
        path: PathBuf,
        detail: String,
        backups: String,
    },
    #[error(
        "the database {path} has schema version {found}, and this corral knows versions up \
         to {known}: it was written by a newer corral. Run that version, or, to go back on \
         purpose, restore the backup the newer one made before migrating ({backups})"
    )]
    Newer {
        path: PathBuf,
        found: u32,
        known: u32,
        backups: String,
    },
    #[error("backing up {path} before migrating it from schema version {from} failed (nothing was changed; free space in its directory and start again): {detail}")]
    Backup {
        path: PathBuf,
        from: u32,
        detail: String,
    },
    #[error("{what} in {path}: {source}")]
    Sqlite {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
}

/// Whether `e` says the file is not a database or is damaged.
fn is_damage(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
    )
}

/// Backups of the database at `path`, newest first (by name: the time is in it).
pub(crate) fn backups(path: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return vec![];
    };
    let prefix = format!("{}.v", name.to_string_lossy());
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with(&prefix) && n.ends_with(".bak")
        })
        .map(|e| {
            let t = e
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            (t, e.path())
        })
        .collect();
    found.sort();
    found.into_iter().rev().map(|(_, p)| p).collect()
}

fn backups_text(path: &Path) -> String {
    match backups(path).first() {
        Some(b) => format!("newest backup: {}", b.display()),
        None => "no backup found beside it".into(),
    }
}

/// What opening found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Opened {
    /// The version the file had (0: new).
    pub from: u32,
    /// The copy made before migrating, if one was.
    pub backup: Option<PathBuf>,
}

/// Opens the database at `path` for the coordinator: checks it, backs it up and migrates
/// it when it is older, refuses it when it is newer or damaged.
pub(crate) fn open(path: &Path) -> Result<(Connection, Opened), OpenError> {
    let sql = |what: &'static str| {
        let path = path.to_path_buf();
        move |source: rusqlite::Error| {
            if is_damage(&source) {
                OpenError::Damaged {
                    detail: source.to_string(),
                    backups: backups_text(&path),
                    path,
                }
            } else {
                OpenError::Sqlite { what, path, source }
            }
        }
    };
    let mut conn = Connection::open(path).map_err(sql("opening the database"))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(sql("setting the busy timeout"))?;
    // The first read of the file: a file that is not a database fails here.
    let found: u32 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(sql("reading the schema version"))?;
    let problems = quick_check(&conn).map_err(sql("checking the database"))?;
    if !problems.is_empty() {
        return Err(OpenError::Damaged {
            path: path.to_path_buf(),
            detail: problems.join("; "),
            backups: backups_text(path),
        });
    }
    let has_tables: bool = conn
        .query_row(
            "SELECT count(*) > 0 FROM sqlite_schema WHERE type = 'table' AND name = 'nodes'",
            [],
            |r| r.get(0),
        )
        .map_err(sql("reading the schema"))?;
    let from = match (found, has_tables) {
        (0, false) => 0,
        (0, true) => 1,
        (v, _) => v,
    };
    if from > VERSION {
        return Err(OpenError::Newer {
            path: path.to_path_buf(),
            found: from,
            known: VERSION,
            backups: backups_text(path),
        });
    }
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(sql("switching to WAL"))?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(sql("setting synchronous = FULL"))?;
    let backup = if (1..VERSION).contains(&from) {
        Some(backup(&conn, path, from)?)
    } else {
        None
    };
    if from == 0 {
        let tx = conn.transaction().map_err(sql("creating the schema"))?;
        tx.execute_batch(V1).map_err(sql("creating the schema"))?;
        tx.pragma_update(None, "user_version", 1)
            .map_err(sql("creating the schema"))?;
        tx.commit().map_err(sql("creating the schema"))?;
    }
    for m in MIGRATIONS.iter().filter(|m| m.to > from.max(1)) {
        let tx = conn.transaction().map_err(sql("migrating"))?;
        tx.execute_batch(m.sql).map_err(sql("migrating"))?;
        tx.pragma_update(None, "user_version", m.to)
            .map_err(sql("migrating"))?;
        tx.commit().map_err(sql("migrating"))?;
        if from > 0 {
            tracing::info!(db = %path.display(), to = m.to, what = m.what, "database migrated");
        }
    }
    Ok((conn, Opened { from, backup }))
}

/// Copies the database to `PATH.vFROM.TIME.bak` and returns that path.
fn backup(conn: &Connection, path: &Path, from: u32) -> Result<PathBuf, OpenError> {
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace(':', "-");
    let mut to = PathBuf::from(format!("{}.v{from}.{stamp}.bak", path.display()));
    let mut n = 1;
    while to.exists() {
        to = PathBuf::from(format!("{}.v{from}.{stamp}-{n}.bak", path.display()));
        n += 1;
    }
    let err = |detail: String| OpenError::Backup {
        path: path.to_path_buf(),
        from,
        detail,
    };
    let target = to
        .to_str()
        .ok_or_else(|| err(format!("{} is not valid UTF-8", to.display())))?;
    if let Err(e) = conn.execute("VACUUM INTO ?1", [target]) {
        let _ = std::fs::remove_file(&to);
        return Err(err(format!("writing {}: {e}", to.display())));
    }
    tracing::info!(db = %path.display(), backup = %to.display(), version = from, "database backed up before migrating");
    Ok(to)
}

/// `PRAGMA quick_check`: the problems found, none when the database is sound.
fn quick_check(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    problems(conn, "quick_check")
}

fn problems(conn: &Connection, pragma: &str) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare(&format!("PRAGMA {pragma}(20)"))?;
    let rows: Vec<String> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(rows.into_iter().filter(|r| r != "ok").collect())
}

/// What `corral coordinator --check-db` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    pub path: PathBuf,
    /// The schema version in the file (1 for the layout before versions).
    pub version: u32,
    /// The version this corral writes.
    pub known: u32,
    /// What the full integrity check found; empty when the database is sound.
    pub problems: Vec<String>,
    /// Rows in the main tables, as (table, count); empty when the check failed.
    pub counts: Vec<(&'static str, u64)>,
    /// Backups beside the database, newest first.
    pub backups: Vec<PathBuf>,
}

impl CheckReport {
    /// Whether a coordinator of this version would start on this database.
    pub fn usable(&self) -> bool {
        self.problems.is_empty() && self.version <= self.known
    }
}

/// Runs the full `PRAGMA integrity_check` on the database in `state_dir`, read-only:
/// nothing is migrated or written, so it is safe beside a running coordinator.
pub fn check(state_dir: &Path) -> anyhow::Result<CheckReport> {
    use anyhow::Context;
    let path = super::db_path(state_dir);
    anyhow::ensure!(
        path.exists(),
        "there is no database at {} (a coordinator with this state_dir has not run yet)",
        path.display()
    );
    let conn = Connection::open_with_flags(
        &path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening {} read-only", path.display()))?;
    let damaged = |e: rusqlite::Error| -> anyhow::Result<Vec<String>> {
        if is_damage(&e) {
            Ok(vec![e.to_string()])
        } else {
            Err(e).with_context(|| format!("checking {}", path.display()))
        }
    };
    let version = conn.pragma_query_value(None, "user_version", |r| r.get::<_, u32>(0));
    let (version, mut problems) = match version {
        Ok(v) => (v, vec![]),
        Err(e) => (0, damaged(e)?),
    };
    if problems.is_empty() {
        problems = problems_or(&conn, damaged)?;
    }
    let has_tables = problems.is_empty()
        && conn
            .query_row(
                "SELECT count(*) > 0 FROM sqlite_schema WHERE type = 'table' AND name = 'nodes'",
                [],
                |r| r.get::<_, bool>(0),
            )
            .unwrap_or(false);
    let version = if version == 0 && has_tables {
        1
    } else {
        version
    };
    let mut counts = vec![];
    if problems.is_empty() {
        for table in ["nodes", "events", "jobs", "tokens", "cordons", "records"] {
            let n: rusqlite::Result<u64> =
                conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0));
            if let Ok(n) = n {
                counts.push((table, n));
            }
        }
    }
    Ok(CheckReport {
        backups: backups(&path),
        path,
        version,
        known: VERSION,
        problems,
        counts,
    })
}

fn problems_or(
    conn: &Connection,
    damaged: impl Fn(rusqlite::Error) -> anyhow::Result<Vec<String>>,
) -> anyhow::Result<Vec<String>> {
    match problems(conn, "integrity_check") {
        Ok(p) => Ok(p),
        Err(e) => damaged(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database as the previous release (schema version 1, no `user_version`) left it:
    /// dumped with `sqlite3 .dump` from one that release's coordinator wrote (nodes,
    /// events, a token, a cordon, the pause), with a job row as that release wrote them.
    const PREVIOUS_RELEASE: &str = include_str!("fixtures/v1.sql");

    fn previous_release_db(dir: &Path) -> PathBuf {
        let path = dir.join("coordinator.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(PREVIOUS_RELEASE).unwrap();
        assert_eq!(
            conn.pragma_query_value(None, "user_version", |r| r.get::<_, u32>(0))
                .unwrap(),
            0
        );
        path
    }

    #[test]
    fn a_database_of_the_previous_release_is_backed_up_then_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = previous_release_db(dir.path());
        let (conn, opened) = open(&path).unwrap();
        assert_eq!(opened.from, 1);
        let version: u32 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, VERSION);
        // The new column is filled from the records.
        let owners: Vec<(u64, String)> = conn
            .prepare("SELECT id, owner FROM jobs ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(owners, [(1, "alice".to_string()), (2, String::new())]);
        // The backup is the database as it was, at version 1, beside it.
        let backup = opened.backup.expect("a backup");
        assert_eq!(backup.parent(), path.parent());
        assert!(backup
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("coordinator.db.v1."));
        let old = Connection::open(&backup).unwrap();
        let cols: Vec<String> = old
            .prepare("SELECT name FROM pragma_table_info('jobs')")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(!cols.contains(&"owner".to_string()), "{cols:?}");
        assert_eq!(backups(&path), std::slice::from_ref(&backup));
        drop(conn);
        // Opening again migrates nothing and backs up nothing.
        let (_c, again) = open(&path).unwrap();
        assert_eq!(
            again,
            Opened {
                from: VERSION,
                backup: None
            }
        );
    }

    #[test]
    fn a_new_database_is_made_at_the_current_version_without_a_backup() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("coordinator.db");
        let (conn, opened) = open(&path).unwrap();
        assert_eq!(
            opened,
            Opened {
                from: 0,
                backup: None
            }
        );
        let v: u32 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, VERSION);
        let sync: i64 = conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2, "synchronous = FULL");
        assert!(backups(&path).is_empty());
    }

    #[test]
    fn a_database_from_a_newer_corral_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("coordinator.db");
        {
            let (conn, _) = open(&path).unwrap();
            conn.pragma_update(None, "user_version", VERSION + 1)
                .unwrap();
            conn.pragma_update(None, "journal_mode", "DELETE").unwrap();
        }
        let before = std::fs::read(&path).unwrap();
        let err = open(&path).err().unwrap();
        assert!(matches!(err, OpenError::Newer { found, .. } if found == VERSION + 1));
        let text = err.to_string();
        assert!(
            text.contains(&path.display().to_string()) && text.contains("newer corral"),
            "{text}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }

    #[test]
    fn a_file_that_is_not_a_database_is_refused_as_damaged_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("coordinator.db");
        std::fs::write(&path, "not a database\n".repeat(500)).unwrap();
        let err = open(&path).err().unwrap();
        assert!(matches!(err, OpenError::Damaged { .. }), "{err}");
        let text = err.to_string();
        for needle in ["damaged", "move it aside", "--check-db", "no backup found"] {
            assert!(text.contains(needle), "{needle:?} in {text}");
        }
        let report = check(dir.path()).unwrap();
        assert!(
            !report.usable() && !report.problems.is_empty(),
            "{report:?}"
        );
    }

    #[test]
    fn damaged_pages_are_found_at_open_and_by_the_full_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = previous_release_db(dir.path());
        drop(open(&path).unwrap());
        {
            // Checkpointed into the main file, so the damage below is what is read.
            let c = Connection::open(&path).unwrap();
            c.pragma_update(None, "journal_mode", "DELETE").unwrap();
        }
        let sound = check(dir.path()).unwrap();
        assert!(sound.usable(), "{sound:?}");
        assert_eq!(sound.version, VERSION);
        let mut bytes = std::fs::read(&path).unwrap();
        let page = 4096;
        assert!(bytes.len() >= 3 * page, "{} bytes", bytes.len());
        for b in &mut bytes[page + 100..2 * page] {
            *b = 0xa5;
        }
        std::fs::write(&path, &bytes).unwrap();
        let err = open(&path).err().unwrap();
        assert!(matches!(err, OpenError::Damaged { .. }), "{err}");
        assert!(err.to_string().contains("newest backup"), "{err}");
        let report = check(dir.path()).unwrap();
        assert!(!report.problems.is_empty(), "{report:?}");
    }
}
