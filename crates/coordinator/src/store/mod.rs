//! The coordinator's embedded database: SQLite (through rusqlite, SQLite compiled in).
//!
//! Why SQLite rather than redb: the data is relational and small (nodes, events, and
//! jobs with state histories), operators can inspect it with the stock `sqlite3`
//! tool during an incident, its durability story (WAL, atomic transactions) is decades
//! old, and the bundled build removes any dependency on the host's library version.
//! redb would save a C compile but give us a key-value API to build queries on.
//!
//! Invariants:
//! - One thread owns the connection; the async side sends it batches over a channel and
//!   never blocks on disk. A batch (dirty nodes + new events) is one transaction, so a
//!   crash leaves either all of it or none.
//! - Reports are stored as JSON, not postcard: the database outlives wire-protocol
//!   versions, and JSON stays readable with `sqlite3`.
//! - Write-behind: the registry hands over changed nodes every flush interval (1 s).
//!   A crash loses at most that window of *changes*; nodes themselves are written on
//!   first sight, so a node is never lost once its first flush is done.
//! - Events beyond the retention count are pruned, oldest first.
//! - Jobs ([`super::jobs`]) are written in two ways: *durably*
//!   ([`Store::insert_job`], [`Store::put_jobs_durably`]: the call returns once the
//!   transaction is committed, for the steps of a submission) and write-behind
//!   ([`Store::put_jobs`], for poll results). Both go through the same thread in order,
//!   so a later write-behind batch can never be overtaken by an earlier durable one.
//!   Job ids come from SQLite's `AUTOINCREMENT`, so an id is never reused, even after
//!   the job it named was pruned. Committed means on stable storage (WAL,
//!   `synchronous = FULL`, see [`schema`]): an acknowledged write survives a power cut.
//! - Write-behind changes that cannot be stored (a full disk, an I/O error) are kept and
//!   retried every second, never dropped ([`pending`]); while they wait, acknowledged
//!   writes are refused and the API answers writes with 503 ([`Health`]). Reads are
//!   served from memory and keep working.
//! - The schema is versioned and migrated at open, after a backup; a newer or damaged
//!   database is refused with what to do ([`schema`]).
//! - A job row holds the job as JSON (without its history) plus plain columns for
//!   `sqlite3` users; the history is one row per entry, append-only.
//! - What is stored is this module's own row types ([`NodeRow`], [`EventRow`],
//!   [`JobRow`], [`HistoryRow`]), never the registry's or the job table's runtime state
//!   nor the HTTP API's schema: those convert to and from rows explicitly, so a change to
//!   the API or to how something is tracked cannot change the database by accident.
//! - Rows are version-tolerant: their JSON field names are the stored format (the names
//!   the API's `NodeView` and `JobView` had when one type served all three, so
//!   databases written then still load), unknown fields are ignored, and a field added
//!   later must take a default when it is missing.

mod pending;
mod schema;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

pub(crate) use pending::Health;
use pending::Pending;
pub use schema::{check, CheckReport};

use anyhow::{Context, Result};
use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};

use corral_proto::api::{JobId, Phase};
use corral_proto::job::{JobSpec, JobState};
use corral_proto::model::{HealthStatus, Liveness, NodeReport, Reason};

/// A kind of row in `records`: JSON records keyed by name, written one at a time and
/// acknowledged once committed (join tokens, pool nodes, each pool's counter and pause; see
/// [`crate::pools`]). A record the coordinator cannot read is kept, reported and
/// skipped at load, as node rows are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum RecordKind {
    JoinToken,
    PoolNode,
    PoolState,
}

impl RecordKind {
    fn as_str(self) -> &'static str {
        match self {
            RecordKind::JoinToken => "join-token",
            RecordKind::PoolNode => "pool-node",
            RecordKind::PoolState => "pool-state",
        }
    }

    fn parse(s: &str) -> Option<RecordKind> {
        [
            RecordKind::JoinToken,
            RecordKind::PoolNode,
            RecordKind::PoolState,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// A node as stored: the JSON of the `nodes.view` column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct NodeRow {
    pub name: String,
    pub liveness: Liveness,
    #[serde(default)]
    pub liveness_since_ms: u64,
    pub health: HealthStatus,
    #[serde(default)]
    pub reasons: Vec<Reason>,
    /// Whether the node was connected when the row was written. Informational only: a
    /// node loaded at start is not connected to the new process.
    #[serde(default)]
    pub connected: bool,
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub agent_version: Option<String>,
    #[serde(default)]
    pub first_seen_ms: u64,
    #[serde(default)]
    pub last_beat_ms: Option<u64>,
    #[serde(default)]
    pub last_report_ms: Option<u64>,
    #[serde(default)]
    pub report: Option<NodeReport>,
}

/// An event as stored: one row of `events`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct EventRow {
    pub id: u64,
    pub at_ms: u64,
    pub node: String,
    /// `liveness`, `health` or `gpu`.
    pub kind: String,
    pub from: Option<String>,
    pub to: String,
    pub message: String,
}

/// A job as stored: plain columns of `jobs` plus this as the JSON of `jobs.record`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct JobRow {
    /// The `id` column is authoritative; the JSON copy is kept for readers of the record.
    #[serde(default = "unassigned")]
    pub id: JobId,
    pub scheduler: String,
    pub node: String,
    /// Empty in rows written before jobs had owners.
    #[serde(default)]
    pub owner: String,
    #[serde(default)]
    pub native_id: Option<String>,
    pub phase: Phase,
    #[serde(default)]
    pub state: Option<JobState>,
    /// The job's one-word state (also the `state` column).
    pub state_word: String,
    #[serde(default)]
    pub native_state: Option<String>,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub spec: JobSpec,
    pub submitted_ms: u64,
    pub updated_ms: u64,
    #[serde(default)]
    pub polled_ms: Option<u64>,
    #[serde(default)]
    pub poll_error: Option<String>,
    /// Oldest first; stored in `job_history`, one row per entry, never in the record.
    #[serde(skip)]
    pub history: Vec<HistoryRow>,
}

fn unassigned() -> JobId {
    JobId(0)
}

/// One entry of a job's history: one row of `job_history`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HistoryRow {
    pub at_ms: u64,
    pub state: String,
    pub native_state: Option<String>,
    pub message: Option<String>,
}

/// An API token as stored: only the SHA-256 of its secret, never the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TokenRow {
    pub id: String,
    pub user: String,
    pub role: String,
    /// Hex SHA-256 of the secret.
    pub hash: String,
    pub created_by: String,
    pub created_ms: u64,
    pub expires_ms: Option<u64>,
    pub revoked_ms: Option<u64>,
}

/// A cordoned node as stored: the JSON of `cordons.record` (see [`crate::remediation`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CordonRow {
    pub node: String,
    pub reason: String,
    pub since_ms: u64,
    /// `policy` or the user who drained it.
    pub by: String,
    #[serde(default)]
    pub resuming: bool,
    #[serde(default)]
    pub drains: Vec<DrainRow>,
}

/// One drain of a cordoned node, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DrainRow {
    /// `scheduler` or `ray`.
    pub kind: String,
    pub target: String,
    pub node: String,
    pub state: String,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub message: Option<String>,
    /// Corral made it and has not lifted it since.
    #[serde(default)]
    pub made: bool,
    /// A failed try may have reached the scheduler. Rows written before this field
    /// have `None`: then any failed try counts (what those versions assumed).
    #[serde(default)]
    pub reached: Option<bool>,
}

/// Who paused the remediation: the `remediation_paused` row of `settings`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PauseRow {
    pub by: String,
    pub since_ms: u64,
}

const PAUSED_KEY: &str = "remediation_paused";

type Ack<T> = tokio::sync::oneshot::Sender<Result<T, String>>;

enum Op {
    Write(Vec<NodeRow>, Vec<EventRow>),
    Flush(tokio::sync::oneshot::Sender<()>),
    InsertJob(Box<JobRow>, Ack<u64>),
    PutJobs(Vec<JobRow>, Option<Ack<()>>),
    DeleteJobs(Vec<u64>),
    PutToken(TokenRow, Ack<()>),
    /// Writes (`Some`) or deletes (`None`) a node's cordon.
    PutCordon(String, Option<CordonRow>, Ack<()>),
    PutPause(Option<PauseRow>, Ack<()>),
    /// Writes (`Some` JSON) or deletes (`None`) one record.
    PutRecord(RecordKind, String, Option<String>, Ack<()>),
    /// Deletes a node's row (a pool node that was deleted).
    ForgetNode(String),
    /// Tests: caps (`LIMIT`) or uncaps (`UNLIMIT`) the database's size on the writer's
    /// connection, to make commits fail as on a full disk.
    #[cfg(test)]
    Exec(String, Ack<()>),
}

/// Handle to the store thread.
pub(crate) struct Store {
    tx: mpsc::Sender<Op>,
    path: PathBuf,
    health: Health,
}

/// What a coordinator starts from.
pub(crate) struct Loaded {
    pub nodes: Vec<NodeRow>,
    pub events: Vec<EventRow>,
    /// Every job, oldest first, with its history.
    pub jobs: Vec<JobRow>,
    /// Every API token, revoked ones included.
    pub tokens: Vec<TokenRow>,
    /// Cordoned nodes, by name.
    pub cordons: Vec<CordonRow>,
    pub paused: Option<PauseRow>,
    /// Every record of `records`, as (kind, key, JSON), by kind and key.
    pub records: Vec<(RecordKind, String, String)>,
}

fn db_path(state_dir: &Path) -> PathBuf {
    state_dir.join("coordinator.db")
}

impl Store {
    /// Opens (creating if needed) the database in `state_dir`, loads what it holds and
    /// starts the writer thread.
    pub(crate) fn open(state_dir: &Path, event_retention: u32) -> Result<(Store, Loaded)> {
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("creating state directory {}", state_dir.display()))?;
        let path = db_path(state_dir);
        let (conn, opened) = schema::open(&path)?;
        let loaded =
            load(&conn, event_retention).with_context(|| format!("reading {}", path.display()))?;
        let (tx, rx) = mpsc::channel();
        let health = Health::default();
        let writer = Writer {
            conn,
            retention: event_retention,
            path: path.clone(),
            pending: Pending::default(),
            health: health.clone(),
            since_prune: 0,
        };
        std::thread::Builder::new()
            .name("corral-store".into())
            .spawn(move || writer.run(rx))
            .context("starting the store thread")?;
        if let Some(b) = &opened.backup {
            tracing::info!(db = %path.display(), from = opened.from, to = schema::VERSION, backup = %b.display(), "database migrated; the backup is beside it");
        }
        Ok((Store { tx, path, health }, loaded))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the database is taking writes (shared with the API and the metrics).
    pub(crate) fn health(&self) -> Health {
        self.health.clone()
    }

    /// Queues a batch; returns at once.
    pub(crate) fn write(&self, nodes: Vec<NodeRow>, events: Vec<EventRow>) {
        if nodes.is_empty() && events.is_empty() {
            return;
        }
        if self.tx.send(Op::Write(nodes, events)).is_err() {
            tracing::error!(db = %self.path.display(), "the store thread has stopped; state is not being persisted");
        }
    }

    /// Waits until everything queued so far is on disk.
    pub(crate) async fn flush(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.tx.send(Op::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    async fn acked<T>(&self, op: impl FnOnce(Ack<T>) -> Op) -> Result<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(op(tx))
            .map_err(|_| anyhow::anyhow!("the store thread has stopped"))?;
        rx.await
            .map_err(|_| anyhow::anyhow!("the store thread has stopped"))?
            .map_err(|e| anyhow::anyhow!(e))
    }

    /// Records a new job and returns its id once committed (the `id` in `job` is
    /// ignored).
    pub(crate) async fn insert_job(&self, job: JobRow) -> Result<u64> {
        self.acked(|ack| Op::InsertJob(Box::new(job), ack)).await
    }

    /// Writes jobs (and their new history entries) and returns once committed.
    pub(crate) async fn put_jobs_durably(&self, jobs: Vec<JobRow>) -> Result<()> {
        self.acked(|ack| Op::PutJobs(jobs, Some(ack))).await
    }

    /// Queues jobs for writing; returns at once.
    pub(crate) fn put_jobs(&self, jobs: Vec<JobRow>) {
        if jobs.is_empty() {
            return;
        }
        if self.tx.send(Op::PutJobs(jobs, None)).is_err() {
            tracing::error!(db = %self.path.display(), "the store thread has stopped; jobs are not being persisted");
        }
    }

    /// Writes (creates or updates) a token and returns once committed: a token is
    /// usable, or revoked, only once it is on disk.
    pub(crate) async fn put_token(&self, token: TokenRow) -> Result<()> {
        self.acked(|ack| Op::PutToken(token, ack)).await
    }

    /// Writes (`Some`) or deletes (`None`) the cordon of `node`, queued at once (before
    /// this returns) and committed when the returned future resolves: a drain is
    /// recorded before it is made, so a crash can never forget one. Writes queued in
    /// some order commit in that order, so a caller that queues under its own lock never
    /// has an older snapshot overtake a newer one.
    pub(crate) fn queue_cordon(
        &self,
        node: &str,
        cordon: Option<CordonRow>,
    ) -> impl std::future::Future<Output = Result<()>> + Send + 'static {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sent = self
            .tx
            .send(Op::PutCordon(node.to_string(), cordon, tx))
            .is_ok();
        async move {
            if !sent {
                anyhow::bail!("the store thread has stopped");
            }
            rx.await
                .map_err(|_| anyhow::anyhow!("the store thread has stopped"))?
                .map_err(|e| anyhow::anyhow!(e))
        }
    }

    /// Records that the remediation is paused (`Some`) or running (`None`).
    pub(crate) async fn put_pause(&self, pause: Option<PauseRow>) -> Result<()> {
        self.acked(|ack| Op::PutPause(pause, ack)).await
    }

    /// Writes (`Some`) or deletes (`None`) the record `kind`/`key` and returns once
    /// committed.
    pub(crate) async fn put_record<T: Serialize>(
        &self,
        kind: RecordKind,
        key: &str,
        record: Option<&T>,
    ) -> Result<()> {
        self.queue_record(kind, key, record).await
    }

    /// [`Store::put_record`], queued at once (before this returns) and committed when
    /// the returned future resolves: records queued in some order commit in that order,
    /// so a caller that queues under its own lock never has an older snapshot overtake
    /// a newer one.
    pub(crate) fn queue_record<T: Serialize>(
        &self,
        kind: RecordKind,
        key: &str,
        record: Option<&T>,
    ) -> impl std::future::Future<Output = Result<()>> + Send + 'static {
        let json = record.map(serde_json::to_string).transpose();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sent = match json {
            Ok(json) => self
                .tx
                .send(Op::PutRecord(kind, key.to_string(), json, tx))
                .map_err(|_| anyhow::anyhow!("the store thread has stopped")),
            Err(e) => Err(anyhow::anyhow!("encoding the record: {e}")),
        };
        async move {
            sent?;
            rx.await
                .map_err(|_| anyhow::anyhow!("the store thread has stopped"))?
                .map_err(|e| anyhow::anyhow!(e))
        }
    }

    /// Deletes a node's row; returns at once (a node forgotten is re-created by its
    /// next connection anyway).
    pub(crate) fn forget_node(&self, name: &str) {
        let _ = self.tx.send(Op::ForgetNode(name.to_string()));
    }

    /// Deletes jobs and their histories; returns at once.
    pub(crate) fn delete_jobs(&self, ids: Vec<u64>) {
        if !ids.is_empty() {
            let _ = self.tx.send(Op::DeleteJobs(ids));
        }
    }
}

fn load(conn: &Connection, retention: u32) -> Result<Loaded> {
    let mut nodes = vec![];
    let mut stmt = conn.prepare("SELECT name, view FROM nodes ORDER BY name")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let name: String = row.get(0)?;
        let json: String = row.get(1)?;
        match serde_json::from_str::<NodeRow>(&json) {
            Ok(v) => nodes.push(v),
            // A row we cannot read (written by a newer corral, or damaged) is kept in the
            // database, reported, and skipped: losing one node's cache beats refusing
            // to start.
            Err(e) => tracing::warn!(node = %name, error = %e, "skipping unreadable node row"),
        }
    }
    let mut stmt = conn.prepare(
        "SELECT id, at_ms, node, kind, from_state, to_state, message FROM events ORDER BY id DESC LIMIT ?1",
    )?;
    let mut events: Vec<EventRow> = stmt
        .query_map([retention], |r| {
            Ok(EventRow {
                id: r.get(0)?,
                at_ms: r.get(1)?,
                node: r.get(2)?,
                kind: r.get(3)?,
                from: r.get(4)?,
                to: r.get(5)?,
                message: r.get(6)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    events.reverse();
    let jobs = load_jobs(conn)?;
    let mut stmt = conn.prepare(
        "SELECT id, user, role, hash, created_by, created_ms, expires_ms, revoked_ms FROM tokens ORDER BY created_ms, id",
    )?;
    let tokens = stmt
        .query_map([], |r| {
            Ok(TokenRow {
                id: r.get(0)?,
                user: r.get(1)?,
                role: r.get(2)?,
                hash: r.get(3)?,
                created_by: r.get(4)?,
                created_ms: r.get(5)?,
                expires_ms: r.get(6)?,
                revoked_ms: r.get(7)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    let mut cordons = vec![];
    let mut stmt = conn.prepare("SELECT node, record FROM cordons ORDER BY node")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let node: String = row.get(0)?;
        let json: String = row.get(1)?;
        match serde_json::from_str::<CordonRow>(&json) {
            Ok(c) => cordons.push(c),
            // Kept in the database and reported; the node shows as not cordoned, and the
            // drains it recorded must be checked by hand (the log says so).
            Err(e) => {
                tracing::error!(node = %node, error = %e, "unreadable cordon row: this node's drains are not tracked; check its scheduler drains by hand")
            }
        }
    }
    let paused = match conn.query_row(
        "SELECT value FROM settings WHERE key = ?1",
        [PAUSED_KEY],
        |r| r.get::<_, String>(0),
    ) {
        Ok(json) => Some(json),
        Err(rusqlite::Error::QueryReturnedNoRows) => None,
        Err(e) => return Err(e).context("reading the remediation pause"),
    };
    let paused = paused.map(|json| {
        serde_json::from_str::<PauseRow>(&json).unwrap_or_else(|e| {
            // Fails safe: an unreadable pause is a pause.
            tracing::error!(error = %e, "unreadable remediation pause; staying paused");
            PauseRow {
                by: "unknown (unreadable record)".into(),
                since_ms: 0,
            }
        })
    });
    let mut records = vec![];
    let mut stmt = conn.prepare("SELECT kind, key, record FROM records ORDER BY kind, key")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let kind: String = row.get(0)?;
        let key: String = row.get(1)?;
        match RecordKind::parse(&kind) {
            Some(k) => records.push((k, key, row.get(2)?)),
            None => {
                tracing::warn!(kind = %kind, key = %key, "skipping a record of a kind this coordinator does not know")
            }
        }
    }
    Ok(Loaded {
        nodes,
        events,
        jobs,
        tokens,
        cordons,
        paused,
        records,
    })
}

fn load_jobs(conn: &Connection) -> Result<Vec<JobRow>> {
    let mut jobs = std::collections::BTreeMap::new();
    let mut stmt = conn.prepare("SELECT id, record FROM jobs ORDER BY id")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let id: u64 = row.get(0)?;
        let json: String = row.get(1)?;
        match serde_json::from_str::<JobRow>(&json) {
            Ok(mut j) => {
                j.id = JobId(id);
                j.history.clear();
                jobs.insert(id, j);
            }
            // As for nodes: kept in the database, reported, skipped.
            Err(e) => tracing::warn!(job = %JobId(id), error = %e, "skipping unreadable job row"),
        }
    }
    let mut stmt = conn.prepare(
        "SELECT job, at_ms, state, native_state, message FROM job_history ORDER BY job, seq",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let id: u64 = row.get(0)?;
        if let Some(j) = jobs.get_mut(&id) {
            j.history.push(HistoryRow {
                at_ms: row.get(1)?,
                state: row.get(2)?,
                native_state: row.get(3)?,
                message: row.get(4)?,
            });
        }
    }
    Ok(jobs.into_values().collect())
}

/// How often kept changes are retried while the database is not taking writes.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// The store thread: owns the connection and the changes not yet stored.
struct Writer {
    conn: Connection,
    retention: u32,
    path: PathBuf,
    pending: Pending,
    health: Health,
    since_prune: usize,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Op>) {
        loop {
            let waiting = !self.pending.is_empty() || self.health.unavailable().is_some();
            let op = if waiting {
                match rx.recv_timeout(RETRY_EVERY) {
                    Ok(op) => Some(op),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match rx.recv() {
                    Ok(op) => Some(op),
                    Err(_) => break,
                }
            };
            match op {
                Some(op) => {
                    self.take(op);
                    // Whatever else is queued joins the same commit.
                    while let Ok(op) = rx.try_recv() {
                        self.take(op);
                    }
                    self.commit_pending();
                }
                None if self.pending.is_empty() => self.probe(),
                None => self.commit_pending(),
            }
        }
        self.commit_pending();
    }

    fn take(&mut self, op: Op) {
        match op {
            Op::Write(nodes, events) => {
                self.since_prune += events.len();
                self.pending.nodes(nodes);
                self.pending.events(events, self.retention);
            }
            Op::PutJobs(jobs, None) => self.pending.jobs(jobs),
            Op::DeleteJobs(ids) => self.pending.delete_jobs(ids),
            Op::ForgetNode(name) => self.pending.forget_node(name),
            Op::Flush(done) => {
                self.commit_pending();
                let _ = done.send(());
            }
            Op::InsertJob(job, ack) => {
                let r = self.acked("recording a job", |c| insert_job(c, *job));
                let _ = ack.send(r);
            }
            Op::PutJobs(jobs, Some(ack)) => {
                let r = self.acked("writing jobs", |c| put_jobs(c, &jobs));
                let _ = ack.send(r);
            }
            Op::PutToken(t, ack) => {
                let r = self.acked("writing a token", |c| put_token(c, &t));
                let _ = ack.send(r);
            }
            Op::PutCordon(node, cordon, ack) => {
                let r = self.acked("writing a cordon", |c| {
                    put_cordon(c, &node, cordon.as_ref())
                });
                let _ = ack.send(r);
            }
            Op::PutPause(pause, ack) => {
                let r = self.acked("writing the remediation pause", |c| {
                    put_pause(c, pause.as_ref())
                });
                let _ = ack.send(r);
            }
            #[cfg(test)]
            Op::Exec(what, ack) => {
                let sql = if what == "LIMIT" {
                    "PRAGMA max_page_count = 1"
                } else {
                    "PRAGMA max_page_count = 1073741823"
                };
                let r = self
                    .conn
                    .query_row(sql, [], |_| Ok(()))
                    .map_err(|e| e.to_string());
                let _ = ack.send(r);
            }
            Op::PutRecord(kind, key, json, ack) => {
                let r = self.acked("writing a record", |c| {
                    put_record(c, kind, &key, json.as_deref())
                });
                let _ = ack.send(r);
            }
        }
    }

    /// Runs an acknowledged write, after the kept changes (which must commit first, or
    /// it would overtake them): refused untried while they cannot.
    fn acked<T>(
        &mut self,
        what: &'static str,
        f: impl FnOnce(&mut Connection) -> Result<T>,
    ) -> Result<T, String> {
        self.commit_pending();
        if !self.pending.is_empty() {
            return Err(self
                .health
                .unavailable()
                .unwrap_or_else(|| "earlier changes are not stored yet".into()));
        }
        match f(&mut self.conn) {
            Ok(v) => {
                self.recovered(0);
                Ok(v)
            }
            Err(e) if pending::is_resource_failure(&e) => {
                let message = pending::unavailable_message(&self.path, &e);
                self.failed(what, &e, message.clone());
                Err(message)
            }
            Err(e) => {
                tracing::error!(db = %self.path.display(), error = format!("{e:#}"), what, "database write failed");
                Err(format!("{what} in {} failed: {e:#}", self.path.display()))
            }
        }
    }

    /// Commits the kept write-behind changes, if any, in one transaction.
    fn commit_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let prune = (self.since_prune >= 1000).then_some(self.retention);
        match write_pending(&mut self.conn, &self.pending, prune) {
            Ok(()) => {
                if self.pending.dropped_events > 0 {
                    tracing::warn!(db = %self.path.display(), dropped = self.pending.dropped_events, retention = self.retention, "events beyond the retention count were dropped while the database was not taking writes");
                }
                let rows = self.pending.len();
                self.pending = Pending::default();
                if prune.is_some() {
                    self.since_prune = 0;
                }
                if self.recovered(0) {
                    tracing::info!(db = %self.path.display(), rows, "kept changes written");
                }
            }
            Err(e) if pending::is_resource_failure(&e) => {
                let message = pending::unavailable_message(&self.path, &e);
                self.failed("writing changes", &e, message);
            }
            Err(e) => {
                tracing::error!(db = %self.path.display(), error = format!("{e:#}"), rows = self.pending.len(), "writing changes failed for a reason retrying cannot fix; they are dropped");
                self.pending = Pending::default();
            }
        }
    }

    /// With nothing kept but writes failing, tries a one-row write to learn whether the
    /// database takes writes again.
    fn probe(&mut self) {
        let r = self
            .conn
            .execute(
                "INSERT OR REPLACE INTO settings(key, value) VALUES ('write_check_ms', ?1)",
                [corral_proto::model::unix_ms().to_string()],
            )
            .map(|_| ())
            .map_err(anyhow::Error::from);
        match r {
            Ok(()) => {
                self.recovered(0);
            }
            Err(e) => {
                let message = pending::unavailable_message(&self.path, &e);
                self.failed("checking the database takes writes", &e, message);
            }
        }
    }

    fn failed(&self, what: &'static str, e: &anyhow::Error, message: String) {
        if self.health.failed(message, self.pending.len()) {
            tracing::error!(db = %self.path.display(), error = format!("{e:#}"), what, kept = self.pending.len(), "the database is not taking writes; changes are kept and retried every second, and the API refuses writes until it does");
        }
    }

    /// Returns whether this ends a spell of failing writes (and logs that it does).
    fn recovered(&self, pending: usize) -> bool {
        let ended = self.health.ok(pending);
        if ended {
            tracing::info!(db = %self.path.display(), "the database takes writes again");
        }
        ended
    }
}

fn insert_job(conn: &mut Connection, mut job: JobRow) -> Result<u64> {
    let tx = conn.transaction()?;
    tx.execute(
        "INSERT INTO jobs(scheduler, node, native_id, state, submitted_ms, updated_ms, record, owner)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, '{}', ?7)",
        params![
            job.scheduler,
            job.node,
            job.native_id,
            job.state_word,
            job.submitted_ms,
            job.updated_ms,
            job.owner
        ],
    )?;
    let id = tx.last_insert_rowid() as u64;
    job.id = JobId(id);
    write_job(&tx, &job)?;
    tx.commit()?;
    Ok(id)
}

fn put_jobs(conn: &mut Connection, jobs: &[JobRow]) -> Result<()> {
    let tx = conn.transaction()?;
    for j in jobs {
        write_job(&tx, j)?;
    }
    tx.commit()?;
    Ok(())
}

/// Upserts the row and appends the history entries not yet written.
fn write_job(tx: &rusqlite::Transaction<'_>, job: &JobRow) -> Result<()> {
    let record = serde_json::to_string(job)?;
    tx.prepare_cached(
        "INSERT INTO jobs(id, scheduler, node, native_id, state, submitted_ms, updated_ms, record, owner)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT(id) DO UPDATE SET native_id = excluded.native_id, state = excluded.state,
             updated_ms = excluded.updated_ms, record = excluded.record, owner = excluded.owner",
    )?
    .execute(params![
        job.id.0,
        job.scheduler,
        job.node,
        job.native_id,
        job.state_word,
        job.submitted_ms,
        job.updated_ms,
        record,
        job.owner
    ])?;
    let mut hist = tx.prepare_cached(
        "INSERT OR IGNORE INTO job_history(job, seq, at_ms, state, native_state, message)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for (seq, t) in job.history.iter().enumerate() {
        hist.execute(params![
            job.id.0,
            seq as u64,
            t.at_ms,
            t.state,
            t.native_state,
            t.message
        ])?;
    }
    Ok(())
}

fn put_cordon(conn: &mut Connection, node: &str, cordon: Option<&CordonRow>) -> Result<()> {
    match cordon {
        Some(c) => conn.execute(
            "INSERT INTO cordons(node, record, updated_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT(node) DO UPDATE SET record = excluded.record, updated_ms = excluded.updated_ms",
            params![node, serde_json::to_string(c)?, corral_proto::model::unix_ms()],
        )?,
        None => conn.execute("DELETE FROM cordons WHERE node = ?1", [node])?,
    };
    Ok(())
}

fn put_pause(conn: &mut Connection, pause: Option<&PauseRow>) -> Result<()> {
    match pause {
        Some(p) => conn.execute(
            "INSERT OR REPLACE INTO settings(key, value) VALUES (?1, ?2)",
            params![PAUSED_KEY, serde_json::to_string(p)?],
        )?,
        None => conn.execute("DELETE FROM settings WHERE key = ?1", [PAUSED_KEY])?,
    };
    Ok(())
}

fn put_token(conn: &mut Connection, t: &TokenRow) -> Result<()> {
    conn.execute(
        "INSERT OR REPLACE INTO tokens(id, user, role, hash, created_by, created_ms, expires_ms, revoked_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![t.id, t.user, t.role, t.hash, t.created_by, t.created_ms, t.expires_ms, t.revoked_ms],
    )?;
    Ok(())
}

fn put_record(
    conn: &mut Connection,
    kind: RecordKind,
    key: &str,
    json: Option<&str>,
) -> Result<()> {
    match json {
        Some(j) => conn.execute(
            "INSERT INTO records(kind, key, record, updated_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(kind, key) DO UPDATE SET record = excluded.record, updated_ms = excluded.updated_ms",
            params![kind.as_str(), key, j, corral_proto::model::unix_ms()],
        )?,
        None => conn.execute(
            "DELETE FROM records WHERE kind = ?1 AND key = ?2",
            params![kind.as_str(), key],
        )?,
    };
    Ok(())
}

/// Writes the kept changes in one transaction: a crash leaves all of them or none.
fn write_pending(conn: &mut Connection, p: &Pending, prune: Option<u32>) -> Result<()> {
    let tx = conn.transaction()?;
    {
        let now = corral_proto::model::unix_ms();
        let mut put = tx.prepare_cached(
            "INSERT INTO nodes(name, view, updated_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT(name) DO UPDATE SET view = excluded.view, updated_ms = excluded.updated_ms",
        )?;
        let mut forget = tx.prepare_cached("DELETE FROM nodes WHERE name = ?1")?;
        for (name, row) in &p.nodes {
            match row {
                Some(n) => put.execute(params![n.name, serde_json::to_string(n)?, now])?,
                None => forget.execute([name])?,
            };
        }
        let mut ev = tx.prepare_cached(
            "INSERT OR REPLACE INTO events(id, at_ms, node, kind, from_state, to_state, message)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for e in &p.events {
            ev.execute(params![
                e.id, e.at_ms, e.node, e.kind, e.from, e.to, e.message
            ])?;
        }
        if let Some(keep) = prune {
            tx.execute(
                "DELETE FROM events WHERE id <= (SELECT MAX(id) FROM events) - ?1",
                [keep],
            )?;
        }
        for (id, job) in &p.jobs {
            match job {
                Some(j) => write_job(&tx, j)?,
                None => {
                    tx.execute("DELETE FROM job_history WHERE job = ?1", [id])?;
                    tx.execute("DELETE FROM jobs WHERE id = ?1", [id])?;
                }
            }
        }
    }
    tx.commit()?;
    Ok(())
}

/// Rows for the tests of this module and its submodules.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// A finished (rejected) job with one history entry.
    pub(crate) fn job_row() -> JobRow {
        JobRow {
            id: JobId(0),
            scheduler: "slurm".into(),
            node: "n".into(),
            owner: "alice".into(),
            native_id: None,
            phase: Phase::Rejected,
            state: None,
            state_word: "rejected".into(),
            native_state: None,
            exit_code: None,
            message: None,
            spec: Default::default(),
            submitted_ms: 1,
            updated_ms: 1,
            polled_ms: None,
            poll_error: None,
            history: vec![HistoryRow {
                at_ms: 1,
                state: "rejected".into(),
                native_state: None,
                message: Some("no".into()),
            }],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn row(name: &str) -> NodeRow {
        NodeRow {
            name: name.into(),
            liveness: Liveness::Ready,
            liveness_since_ms: 1,
            health: HealthStatus::Healthy,
            reasons: vec![],
            connected: true,
            address: None,
            agent_version: None,
            first_seen_ms: 1,
            last_beat_ms: Some(2),
            last_report_ms: None,
            report: None,
        }
    }

    use super::tests_support::job_row;

    #[tokio::test]
    async fn nodes_and_events_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, loaded) = Store::open(dir.path(), 100).unwrap();
            assert!(loaded.nodes.is_empty());
            let ev = EventRow {
                id: 7,
                at_ms: 3,
                node: "a".into(),
                kind: "liveness".into(),
                from: None,
                to: "ready".into(),
                message: "hi".into(),
            };
            store.write(vec![row("a"), row("b")], vec![ev]);
            store.flush().await;
        }
        let (_store, loaded) = Store::open(dir.path(), 100).unwrap();
        let names: Vec<_> = loaded.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(loaded.events.len(), 1);
        assert_eq!(loaded.events[0].id, 7);
    }

    #[tokio::test]
    async fn unreadable_node_row_is_skipped_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = schema::open(&db_path(dir.path())).unwrap().0;
            conn.execute("INSERT INTO nodes VALUES ('x', '{not json', 0)", [])
                .unwrap();
        }
        let (_s, loaded) = Store::open(dir.path(), 10).unwrap();
        assert!(loaded.nodes.is_empty());
    }

    #[tokio::test]
    async fn job_ids_are_never_reused_after_a_prune() {
        let dir = tempfile::tempdir().unwrap();
        let job = job_row();
        let (store, _) = Store::open(dir.path(), 10).unwrap();
        let a = store.insert_job(job.clone()).await.unwrap();
        let b = store.insert_job(job.clone()).await.unwrap();
        assert!(b > a);
        store.delete_jobs(vec![a, b]);
        store.flush().await;
        let c = store.insert_job(job).await.unwrap();
        assert!(c > b, "{c} after {b}");
        let (_s, loaded) = Store::open(dir.path(), 10).unwrap();
        assert_eq!(loaded.jobs.len(), 1);
        assert_eq!(loaded.jobs[0].id, JobId(c));
        assert_eq!(loaded.jobs[0].history.len(), 1);
    }

    #[tokio::test]
    async fn unreadable_job_row_is_skipped_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = schema::open(&db_path(dir.path())).unwrap().0;
            conn.execute(
                "INSERT INTO jobs(id, scheduler, node, native_id, state, submitted_ms, updated_ms, record) VALUES (1, 's', 'n', NULL, 'queued', 0, 0, '{not json')",
                [],
            )
            .unwrap();
        }
        let (_s, loaded) = Store::open(dir.path(), 10).unwrap();
        assert!(loaded.jobs.is_empty());
    }

    /// Rows exactly as the previous layout wrote them (the API's `NodeView` and
    /// `JobView` serialized as they were), and one from an older corral that lacked
    /// fields added since.
    #[tokio::test]
    async fn rows_written_by_the_previous_layout_still_load() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = schema::open(&db_path(dir.path())).unwrap().0;
            let node = r#"{"name":"n1","liveness":"ready","liveness_since_ms":5,"health":"degraded","reasons":[],"connected":true,"address":"10.0.0.1:4000","agent_version":"0.1.0","first_seen_ms":1,"last_beat_ms":9,"last_report_ms":null,"report":null}"#;
            let sparse =
                r#"{"name":"n2","liveness":"down","health":"healthy","some_future_field":1}"#;
            conn.execute("INSERT INTO nodes VALUES ('n1', ?1, 0)", [node])
                .unwrap();
            conn.execute("INSERT INTO nodes VALUES ('n2', ?1, 0)", [sparse])
                .unwrap();
            let job = r#"{"id":"c3","scheduler":"slurm","node":"n1","native_id":"1001","phase":"submitted","state":{"queued":{"held":true}},"state_word":"held","native_state":"PENDING","exit_code":null,"message":null,"spec":{"executable":"/bin/true","arguments":["a"]},"submitted_ms":1,"updated_ms":2,"polled_ms":3,"poll_error":null}"#;
            conn.execute(
                "INSERT INTO jobs(id, scheduler, node, native_id, state, submitted_ms, updated_ms, record) VALUES (3, 'slurm', 'n1', '1001', 'held', 1, 2, ?1)",
                [job],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO job_history VALUES (3, 0, 1, 'submitting', NULL, 'm')",
                [],
            )
            .unwrap();
        }
        let (_s, loaded) = Store::open(dir.path(), 10).unwrap();
        assert_eq!(loaded.nodes.len(), 2);
        assert_eq!(loaded.nodes[0].health, HealthStatus::Degraded);
        assert_eq!(loaded.nodes[0].address.as_deref(), Some("10.0.0.1:4000"));
        assert_eq!(loaded.nodes[1].liveness, Liveness::Down);
        let job = &loaded.jobs[0];
        assert_eq!(job.id, JobId(3));
        assert_eq!(job.state, Some(JobState::Queued { held: true }));
        assert_eq!(job.spec.arguments, ["a"]);
        assert_eq!(job.history.len(), 1);
    }

    #[test]
    fn stored_rows_keep_the_field_names_of_the_previous_layout() {
        let keys = |v: serde_json::Value| -> BTreeSet<String> {
            v.as_object().unwrap().keys().cloned().collect()
        };
        let node: BTreeSet<&str> = [
            "name",
            "liveness",
            "liveness_since_ms",
            "health",
            "reasons",
            "connected",
            "address",
            "agent_version",
            "first_seen_ms",
            "last_beat_ms",
            "last_report_ms",
            "report",
        ]
        .into();
        let written = keys(serde_json::to_value(row("a")).unwrap());
        assert_eq!(
            written.iter().map(String::as_str).collect::<BTreeSet<_>>(),
            node
        );
        let job: BTreeSet<&str> = [
            "id",
            "scheduler",
            "node",
            // Added with job owners; rows without it load with an empty owner.
            "owner",
            "native_id",
            "phase",
            "state",
            "state_word",
            "native_state",
            "exit_code",
            "message",
            "spec",
            "submitted_ms",
            "updated_ms",
            "polled_ms",
            "poll_error",
        ]
        .into();
        let written = keys(serde_json::to_value(job_row()).unwrap());
        assert_eq!(
            written.iter().map(String::as_str).collect::<BTreeSet<_>>(),
            job
        );
    }

    #[tokio::test]
    async fn a_database_of_the_previous_release_loads_whole_after_its_migration() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(db_path(dir.path())).unwrap();
            conn.execute_batch(include_str!("fixtures/v1.sql")).unwrap();
        }
        let (store, loaded) = Store::open(dir.path(), 100).unwrap();
        assert_eq!(loaded.nodes.len(), 1);
        assert_eq!(loaded.nodes[0].name, "node-a");
        assert_eq!(loaded.events.len(), 7);
        assert_eq!(loaded.tokens.len(), 1);
        assert_eq!(loaded.tokens[0].user, "ops-bot");
        assert_eq!(loaded.cordons.len(), 1);
        assert_eq!(loaded.paused.as_ref().map(|p| p.by.as_str()), Some("root"));
        let owners: Vec<&str> = loaded.jobs.iter().map(|j| j.owner.as_str()).collect();
        assert_eq!(owners, ["alice", ""]);
        assert_eq!(loaded.jobs[0].history.len(), 3);
        // New jobs continue the old ids.
        let id = store.insert_job(job_row()).await.unwrap();
        assert_eq!(id, 3);
    }

    /// Caps the database at its size (`max_page_count`; SQLite never sets it below the
    /// pages in use), so commits that need a new page fail with SQLITE_FULL as on a full
    /// disk; or lifts the cap.
    async fn cap_pages(store: &Store, capped: bool) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let what = if capped { "LIMIT" } else { "UNLIMIT" };
        store.tx.send(Op::Exec(what.into(), tx)).unwrap();
        rx.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn changes_the_database_cannot_take_are_kept_and_written_when_it_can() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path(), 100).unwrap();
        let health = store.health();
        store.insert_job(job_row()).await.unwrap();
        cap_pages(&store, true).await;
        // Enough rows that they cannot fit in the pages there are.
        let big = |name: &str| NodeRow {
            agent_version: Some("x".repeat(20_000)),
            ..row(name)
        };
        store.write((0..20).map(|i| big(&format!("n{i}"))).collect(), vec![]);
        store.flush().await;
        let why = health.unavailable().expect("the database is full");
        assert!(
            why.contains(&dir.path().display().to_string()) && why.contains("full"),
            "{why}"
        );
        assert!(health.view().pending_rows >= 20);
        // An acknowledged write is refused while older changes wait, and says why.
        let err = store.insert_job(job_row()).await.unwrap_err().to_string();
        assert!(err.contains("full"), "{err}");
        cap_pages(&store, false).await;
        // The retry (every second) writes what was kept.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while health.unavailable().is_some() {
            assert!(std::time::Instant::now() < deadline, "never recovered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let id = store.insert_job(job_row()).await.unwrap();
        drop(store);
        let (_s, loaded) = Store::open(dir.path(), 100).unwrap();
        assert_eq!(loaded.nodes.len(), 20, "every kept node row was written");
        let ids: Vec<u64> = loaded.jobs.iter().map(|j| j.id.0).collect();
        assert_eq!(ids, [1, id], "the refused job left nothing behind");
    }

    #[test]
    fn unwritable_state_dir_is_a_clear_error() {
        let err = Store::open(Path::new("/proc/corral-cannot-exist"), 10)
            .err()
            .unwrap();
        assert!(
            format!("{err:#}").contains("/proc/corral-cannot-exist"),
            "{err:#}"
        );
    }
}
