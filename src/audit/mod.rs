//! The audit log: an append-only, hash-chained SQLite record of every decision casewarden
//! makes (planned, applied, failed, skipped), plus one row per pass.

mod lease;
pub mod report;

pub use lease::{Claim, ClaimError, HEARTBEAT, Held, Lease};

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use futures::{Stream, StreamExt};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, FromRow, Row};

/// Rows per INSERT statement (18 parameters each).
const ROWS_PER_INSERT: usize = 100;

/// The `prev_hash` of the first row.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit DB {path}: {message}")]
    Open { path: PathBuf, message: String },
    #[error(
        "audit DB {path} was written by a newer casewarden (schema version {found}, this build knows up to {known}); upgrade casewarden or set audit.path to another file — the file was not changed"
    )]
    NewerSchema {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("audit DB: {}", with_hint(.0))]
    Db(#[from] sqlx::Error),
}

/// The database's message plus what the operator can do about it.
fn with_hint(e: &sqlx::Error) -> String {
    let text = e.to_string();
    let hint = if text.contains("full") {
        " (the disk or audit.max_size_mb is full: nothing further is sent until the log can be written; archive the file or raise the limit)"
    } else if text.contains("locked") || text.contains("busy") {
        " (another process holds the database lock; nothing is sent until it is released)"
    } else if text.contains("readonly") {
        " (the file or its folder is read-only for this user)"
    } else {
        ""
    };
    format!("{text}{hint}")
}

/// What happened to a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, sqlx::Type)]
#[serde(rename_all = "lowercase")]
#[sqlx(rename_all = "lowercase")]
pub enum Outcome {
    Planned,
    Applied,
    Failed,
    Skipped,
    /// A crash left a planned row whose result could not be read back.
    Unknown,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Planned => "planned",
            Outcome::Applied => "applied",
            Outcome::Failed => "failed",
            Outcome::Skipped => "skipped",
            Outcome::Unknown => "unknown",
        }
    }

    pub const ALL: [Outcome; 5] = [
        Outcome::Planned,
        Outcome::Applied,
        Outcome::Failed,
        Outcome::Skipped,
        Outcome::Unknown,
    ];
}

impl FromStr for Outcome {
    type Err = String;

    fn from_str(s: &str) -> Result<Outcome, String> {
        Outcome::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| {
                format!("{s:?} is not an outcome: planned, applied, failed, skipped or unknown")
            })
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Rows read back compare with the names scripts and tests know them by.
impl PartialEq<&str> for Outcome {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// One row to append.
#[derive(Debug, Clone, Default)]
pub struct NewEvent {
    pub run_id: String,
    pub rule: String,
    pub rule_hash: String,
    pub case_id: String,
    pub ticket_id: Option<i64>,
    pub field: String,
    pub old: Option<String>,
    pub new: Option<String>,
    pub reason: String,
    pub dry_run: bool,
    pub outcome: Option<Outcome>,
    pub error: Option<String>,
    pub http_status: Option<i64>,
    /// For an outcome row: the `seq` of the planned row it settles.
    pub planned_seq: Option<i64>,
}

/// One stored row, as the audit command prints it.
#[derive(Debug, Clone, FromRow, Serialize, PartialEq)]
pub struct EventRow {
    pub seq: i64,
    pub run_id: String,
    pub recorded_at: String,
    pub rule: String,
    pub rule_hash: String,
    pub case_id: String,
    pub ticket_id: Option<i64>,
    pub field: String,
    pub old: Option<String>,
    pub new: Option<String>,
    pub reason: String,
    pub dry_run: bool,
    pub outcome: Outcome,
    pub error: Option<String>,
    pub http_status: Option<i64>,
    pub planned_seq: Option<i64>,
    pub prev_hash: String,
    pub hash: String,
}

impl EventRow {
    /// SHA-256 of the previous hash and this row's content in a fixed order.
    pub fn compute_hash(&self) -> String {
        let canonical = serde_json::json!([
            self.seq,
            self.run_id,
            self.recorded_at,
            self.rule,
            self.rule_hash,
            self.case_id,
            self.ticket_id,
            self.field,
            self.old,
            self.new,
            self.reason,
            self.dry_run,
            self.outcome,
            self.error,
            self.http_status,
            self.planned_seq,
        ]);
        let mut h = Sha256::new();
        h.update(self.prev_hash.as_bytes());
        h.update(b"\n");
        h.update(canonical.to_string().as_bytes());
        hex::encode(h.finalize())
    }
}

/// A planned change without a final outcome, and its newest outcome so far.
#[derive(Debug, Clone, FromRow, PartialEq)]
pub struct Unsettled {
    #[sqlx(flatten)]
    pub row: EventRow,
    /// None: no outcome at all; else `unknown`.
    pub last_outcome: Option<String>,
    pub last_at: Option<String>,
    /// The HTTP status of the answer the `unknown` outcome got, if the server answered.
    pub last_status: Option<i64>,
}

/// A field change casewarden applied to a case.
#[derive(Debug, Clone, FromRow, PartialEq)]
pub struct AppliedChange {
    pub case_id: String,
    pub field: String,
    pub new: Option<String>,
}

/// One row of the passes table.
#[derive(Debug, Clone, FromRow, Serialize, PartialEq)]
pub struct PassRow {
    pub id: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub trigger_kind: String,
    pub rules_fingerprint: String,
    pub dry_run: bool,
    #[sqlx(flatten)]
    #[serde(flatten)]
    pub totals: PassTotals,
    /// The events chain head when the pass finished.
    pub chain_head: Option<String>,
    /// SHA-256 over the finished row (chain head included); None while it runs.
    pub hash: Option<String>,
}

impl PassRow {
    /// SHA-256 of every field of the finished row, in a fixed order.
    pub fn compute_hash(&self) -> String {
        let t = &self.totals;
        let canonical = serde_json::json!([
            self.id,
            self.started_at,
            self.finished_at,
            self.trigger_kind,
            self.rules_fingerprint,
            self.dry_run,
            t.cases_seen,
            t.planned,
            t.applied,
            t.failed,
            t.skipped,
            t.status,
            t.error,
            self.chain_head,
        ]);
        hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
    }
}

/// Totals of a finished pass.
#[derive(Debug, Clone, Default, Serialize, FromRow, PartialEq)]
pub struct PassTotals {
    pub cases_seen: i64,
    pub planned: i64,
    pub applied: i64,
    pub failed: i64,
    pub skipped: i64,
    pub status: String,
    pub error: Option<String>,
}

/// Filters for `casewarden audit`.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub case_id: Option<String>,
    pub ticket_id: Option<i64>,
    pub rule: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub outcome: Option<Outcome>,
    pub run_id: Option<String>,
    pub limit: Option<i64>,
}

/// The result of walking the chain.
#[derive(Debug, Clone, PartialEq)]
pub enum Verification {
    Intact {
        rows: u64,
        head: String,
    },
    Broken {
        seq: i64,
        rows_checked: u64,
        problem: String,
    },
    /// The events chain is intact, but a sealed pass row is not.
    BrokenPass {
        id: String,
        problem: String,
    },
}

pub use crate::time::timestamp;

#[derive(Clone)]
pub struct AuditStore {
    pool: SqlitePool,
    path: PathBuf,
    write: std::sync::Arc<tokio::sync::Mutex<()>>,
    claim: std::sync::Arc<tokio::sync::Mutex<lease::Slot>>,
    /// `audit.head_file`: every finished pass appends its chain head there.
    head_file: Option<std::sync::Arc<PathBuf>>,
}

impl AuditStore {
    /// Opens (creating folders and file on first start) and migrates the log. A file that
    /// is not SQLite, or a newer schema, is an error and is left untouched.
    pub async fn open(path: &Path) -> Result<AuditStore, AuditError> {
        AuditStore::open_with(path, Duration::from_secs(10), None).await
    }

    /// Like [`AuditStore::open`], waiting at most `busy` for another process's lock and
    /// refusing to grow the file beyond `max_size_mb`.
    pub async fn open_with(
        path: &Path,
        busy: Duration,
        max_size_mb: Option<u64>,
    ) -> Result<AuditStore, AuditError> {
        let fail = |message: String| AuditError::Open {
            path: path.to_path_buf(),
            message,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| fail(format!("cannot create folder {}: {e}", dir.display())))?;
        }
        // Two processes starting on a new file must not both set it up (WAL, tables).
        // (A folder this user cannot write to cannot be migrated either: no lock needed.)
        let lock = match std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(lease::lock_path(path).with_extension("migrate.lock"))
        {
            Ok(lock) => Some(
                tokio::task::spawn_blocking(move || lock.lock().map(|()| lock))
                    .await
                    .map_err(|e| fail(e.to_string()))?
                    .map_err(|e| fail(format!("cannot take the migration lock: {e}")))?,
            ),
            Err(_) => None,
        };
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(|e| fail(e.to_string()))?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(busy)
            .foreign_keys(false);
        // SQLite's default page size is 4 KiB; max_page_count is per connection.
        let options = match max_size_mb {
            Some(mb) => options.pragma("max_page_count", (mb * 256).max(1).to_string()),
            None => options,
        };
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(|e| fail(describe_open_error(&e)))?;
        let store = AuditStore::over(pool, path);
        let migrated = store.migrate().await;
        drop(lock);
        migrated?;
        Ok(store)
    }

    fn over(pool: SqlitePool, path: &Path) -> AuditStore {
        AuditStore {
            pool,
            path: path.to_path_buf(),
            write: Default::default(),
            claim: Default::default(),
            head_file: None,
        }
    }

    /// Appends the chain head of every finished pass to `file` (a second place to check
    /// the log against; keep it where the database's writers cannot rewrite it).
    pub fn with_head_file(mut self, file: Option<PathBuf>) -> AuditStore {
        self.head_file = file.map(std::sync::Arc::new);
        self
    }

    /// Opens an existing log for reading only, never writing to it or beside it (an
    /// evidence copy may sit in a read-only folder): read-only, and `immutable` unless a
    /// write-ahead file beside it may hold rows not yet in the database file.
    pub async fn open_read_only(path: &Path) -> Result<AuditStore, AuditError> {
        let fail = |message: String| AuditError::Open {
            path: path.to_path_buf(),
            message,
        };
        if !path.is_file() {
            return Err(fail("no such file".into()));
        }
        let mut wal = path.as_os_str().to_os_string();
        wal.push("-wal");
        let live = std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0);
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(|e| fail(e.to_string()))?
            .filename(path)
            .read_only(true)
            .immutable(!live);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .map_err(|e| fail(describe_open_error(&e)))?;
        let store = AuditStore::over(pool, path);
        let has_events: Option<(String,)> = sqlx::query_as(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'events'",
        )
        .fetch_optional(&store.pool)
        .await
        .map_err(|e| fail(describe_open_error(&e)))?;
        if has_events.is_none() {
            return Err(fail("not a casewarden audit log (no events table)".into()));
        }
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), AuditError> {
        let migrator = sqlx::migrate!("./migrations");
        let known = migrator.iter().map(|m| m.version).max().unwrap_or(0);
        let has_table: Option<(String,)> = sqlx::query_as(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| AuditError::Open {
            path: self.path.clone(),
            message: describe_open_error(&e),
        })?;
        if has_table.is_some() {
            let found: Option<i64> =
                sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations")
                    .fetch_one(&self.pool)
                    .await?;
            if let Some(found) = found.filter(|f| *f > known) {
                return Err(AuditError::NewerSchema {
                    path: self.path.clone(),
                    found,
                    known,
                });
            }
        }
        migrator
            .run(&self.pool)
            .await
            .map_err(|e| AuditError::Open {
                path: self.path.clone(),
                message: format!("migration failed: {e}"),
            })
    }

    /// Appends rows in one transaction, extending the hash chain; returns their `seq`s.
    /// When this returns Ok the rows are on disk (synchronous=FULL).
    pub async fn append(&self, events: &[NewEvent]) -> Result<Vec<i64>, AuditError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let _guard = self.write.lock().await;
        // IMMEDIATE takes the write lock before reading the head, so two writers (even in
        // two processes) can never fork the chain.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let head: Option<(i64, String)> =
            sqlx::query_as("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1")
                .fetch_optional(&mut *tx)
                .await?;
        let (mut seq, mut prev) = head.unwrap_or((0, GENESIS.to_string()));
        let now = timestamp(chrono::Utc::now());
        let mut seqs = Vec::with_capacity(events.len());
        let mut rows = Vec::with_capacity(events.len());
        for e in events {
            seq += 1;
            let mut row = EventRow {
                seq,
                run_id: e.run_id.clone(),
                recorded_at: now.clone(),
                rule: e.rule.clone(),
                rule_hash: e.rule_hash.clone(),
                case_id: e.case_id.clone(),
                ticket_id: e.ticket_id,
                field: e.field.clone(),
                old: e.old.clone(),
                new: e.new.clone(),
                reason: e.reason.clone(),
                dry_run: e.dry_run,
                outcome: e.outcome.unwrap_or(Outcome::Planned),
                error: e.error.clone(),
                http_status: e.http_status,
                planned_seq: e.planned_seq,
                prev_hash: prev,
                hash: String::new(),
            };
            row.hash = row.compute_hash();
            prev = row.hash.clone();
            seqs.push(seq);
            rows.push(row);
        }
        // Multi-row INSERTs: one statement per ROWS_PER_INSERT rows, well under SQLite's
        // limit of bound parameters, cuts the per-statement cost that dominates otherwise.
        for chunk in rows.chunks(ROWS_PER_INSERT) {
            let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO events (seq, run_id, recorded_at, rule, rule_hash, case_id, ticket_id, field, old, new, reason, dry_run, outcome, error, http_status, planned_seq, prev_hash, hash) ",
            );
            q.push_values(chunk, |mut b, row| {
                b.push_bind(row.seq)
                    .push_bind(row.run_id.clone())
                    .push_bind(row.recorded_at.clone())
                    .push_bind(row.rule.clone())
                    .push_bind(row.rule_hash.clone())
                    .push_bind(row.case_id.clone())
                    .push_bind(row.ticket_id)
                    .push_bind(row.field.clone())
                    .push_bind(row.old.clone())
                    .push_bind(row.new.clone())
                    .push_bind(row.reason.clone())
                    .push_bind(row.dry_run)
                    .push_bind(row.outcome)
                    .push_bind(row.error.clone())
                    .push_bind(row.http_status)
                    .push_bind(row.planned_seq)
                    .push_bind(row.prev_hash.clone())
                    .push_bind(row.hash.clone());
            });
            q.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(seqs)
    }

    /// The newest row's hash (the chain head) and row count.
    pub async fn head(&self) -> Result<(i64, String), AuditError> {
        let head: Option<(i64, String)> =
            sqlx::query_as("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1")
                .fetch_optional(&self.pool)
                .await?;
        Ok(head.unwrap_or((0, GENESIS.to_string())))
    }

    pub async fn start_pass(
        &self,
        id: &str,
        trigger: &str,
        fingerprint: &str,
        dry_run: bool,
    ) -> Result<(), AuditError> {
        sqlx::query(
            "INSERT INTO passes (id, started_at, trigger_kind, rules_fingerprint, dry_run, status) VALUES (?, ?, ?, ?, ?, 'running')",
        )
        .bind(id)
        .bind(timestamp(chrono::Utc::now()))
        .bind(trigger)
        .bind(fingerprint)
        .bind(dry_run)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records a pass's totals and seals its row (see [`PassRow::compute_hash`]).
    pub async fn finish_pass(&self, id: &str, t: &PassTotals) -> Result<(), AuditError> {
        let _guard = self.write.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let mut row: PassRow = sqlx::query_as("SELECT * FROM passes WHERE id = ?")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        let head: Option<String> =
            sqlx::query_scalar("SELECT hash FROM events ORDER BY seq DESC LIMIT 1")
                .fetch_optional(&mut *tx)
                .await?;
        row.finished_at = Some(timestamp(chrono::Utc::now()));
        row.totals = t.clone();
        row.chain_head = Some(head.unwrap_or_else(|| GENESIS.to_string()));
        row.hash = Some(row.compute_hash());
        sqlx::query(
            "UPDATE passes SET finished_at = ?, cases_seen = ?, planned = ?, applied = ?, failed = ?, skipped = ?, status = ?, error = ?, chain_head = ?, hash = ? WHERE id = ?",
        )
        .bind(&row.finished_at)
        .bind(t.cases_seen)
        .bind(t.planned)
        .bind(t.applied)
        .bind(t.failed)
        .bind(t.skipped)
        .bind(&t.status)
        .bind(&t.error)
        .bind(&row.chain_head)
        .bind(&row.hash)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        if let Some(file) = &self.head_file {
            let line = format!(
                "{} pass {} {} head {}\n",
                row.finished_at.as_deref().unwrap_or(""),
                row.id,
                row.totals.status,
                row.chain_head.as_deref().unwrap_or(GENESIS)
            );
            let written = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(file.as_path())
                .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()));
            if let Err(e) = written {
                tracing::error!(file = %file.display(), error = %e, "cannot append the chain head to audit.head_file");
            }
        }
        Ok(())
    }

    /// Every pass, oldest first.
    pub async fn passes(&self) -> Result<Vec<PassRow>, AuditError> {
        Ok(
            sqlx::query_as::<_, PassRow>("SELECT * FROM passes ORDER BY started_at, id")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Passes still marked running (a crash or kill interrupted them).
    pub async fn mark_interrupted_passes(&self) -> Result<u64, AuditError> {
        let running: Vec<PassRow> = sqlx::query_as("SELECT * FROM passes WHERE status = 'running'")
            .fetch_all(&self.pool)
            .await?;
        for p in &running {
            let totals = PassTotals {
                status: "interrupted".into(),
                ..p.totals.clone()
            };
            self.finish_pass(&p.id, &totals).await?;
        }
        Ok(running.len() as u64)
    }

    /// Planned (non-dry-run) changes not settled yet: with no outcome (left by a crash) or
    /// whose newest outcome is `unknown` (the answer was lost), oldest first.
    pub async fn unsettled(&self) -> Result<Vec<Unsettled>, AuditError> {
        Ok(sqlx::query_as::<_, Unsettled>(
            "SELECT p.*, o.outcome AS last_outcome, o.recorded_at AS last_at, o.http_status AS last_status FROM events p \
             LEFT JOIN events o ON o.seq = (SELECT MAX(x.seq) FROM events x WHERE x.planned_seq = p.seq) \
             WHERE p.outcome = 'planned' AND p.dry_run = 0 AND (o.seq IS NULL OR o.outcome = 'unknown') \
             ORDER BY p.seq",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// casewarden's memory of what it applied to these cases: every applied field change
    /// (not comments), oldest first, for the planner to keep the newest per field.
    pub async fn applied_changes(
        &self,
        case_ids: &[&str],
    ) -> Result<Vec<AppliedChange>, AuditError> {
        if case_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut sql = String::from(
            "SELECT case_id, field, new FROM events WHERE outcome = 'applied' AND dry_run = 0 \
             AND field <> 'comment' AND case_id IN (?",
        );
        sql.push_str(&", ?".repeat(case_ids.len() - 1));
        sql.push_str(") ORDER BY seq");
        let mut q = sqlx::query_as::<_, AppliedChange>(AssertSqlSafe(sql));
        for id in case_ids {
            q = q.bind(*id);
        }
        Ok(q.fetch_all(&self.pool).await?)
    }

    /// Rows matching `filter`, oldest first, streamed from the database.
    pub fn query<'a>(
        &'a self,
        filter: &'a Filter,
    ) -> impl Stream<Item = Result<EventRow, AuditError>> + 'a {
        let mut sql = String::from("SELECT * FROM events WHERE 1 = 1");
        let conds: [(&str, bool); 7] = [
            (" AND case_id = ?", filter.case_id.is_some()),
            (" AND ticket_id = ?", filter.ticket_id.is_some()),
            (" AND rule = ?", filter.rule.is_some()),
            (" AND recorded_at >= ?", filter.since.is_some()),
            (" AND recorded_at <= ?", filter.until.is_some()),
            (" AND outcome = ?", filter.outcome.is_some()),
            (" AND run_id = ?", filter.run_id.is_some()),
        ];
        for (cond, on) in conds {
            if on {
                sql.push_str(cond);
            }
        }
        sql.push_str(" ORDER BY seq");
        if filter.limit.is_some() {
            sql.push_str(" LIMIT ?");
        }
        let mut q = sqlx::query_as::<_, EventRow>(AssertSqlSafe(sql));
        if let Some(v) = &filter.case_id {
            q = q.bind(v);
        }
        if let Some(v) = filter.ticket_id {
            q = q.bind(v);
        }
        if let Some(v) = &filter.rule {
            q = q.bind(v);
        }
        if let Some(v) = &filter.since {
            q = q.bind(v);
        }
        if let Some(v) = &filter.until {
            q = q.bind(v);
        }
        if let Some(v) = filter.outcome {
            q = q.bind(v.as_str());
        }
        if let Some(v) = &filter.run_id {
            q = q.bind(v);
        }
        if let Some(v) = filter.limit {
            q = q.bind(v);
        }
        q.fetch(&self.pool).map(|r| r.map_err(AuditError::from))
    }

    /// Walks the whole chain in order, recomputing every hash.
    pub async fn verify(&self) -> Result<Verification, AuditError> {
        // Sealed passes name the chain head they saw; each must be a row of the chain.
        let passes = sqlx::query("SELECT * FROM passes ORDER BY started_at, id")
            .fetch_all(&self.pool)
            .await?;
        let mut sealed = Vec::new();
        for p in &passes {
            if p.try_get::<Option<String>, _>("hash")
                .ok()
                .flatten()
                .is_some()
            {
                sealed.push(PassRow::from_row(p)?);
            }
        }
        let mut heads: std::collections::HashSet<String> = sealed
            .iter()
            .filter_map(|p| p.chain_head.clone())
            .filter(|h| h != GENESIS)
            .collect();
        let mut rows = sqlx::query("SELECT * FROM events ORDER BY seq").fetch(&self.pool);
        let mut prev = GENESIS.to_string();
        let mut count = 0u64;
        let mut last_seq = 0i64;
        while let Some(row) = rows.next().await {
            let row = EventRow::from_row(&row?)?;
            let broken = |problem: String| Verification::Broken {
                seq: row.seq,
                rows_checked: count,
                problem,
            };
            if row.prev_hash != prev {
                return Ok(broken(format!(
                    "row {} does not follow row {last_seq}: its prev_hash does not match (a row was deleted or inserted before it)",
                    row.seq
                )));
            }
            if row.compute_hash() != row.hash {
                return Ok(broken(format!(
                    "row {}'s content does not match its hash (the row was edited or forged)",
                    row.seq
                )));
            }
            heads.remove(&row.hash);
            prev = row.hash.clone();
            last_seq = row.seq;
            count += 1;
        }
        for p in &sealed {
            let problem = if p.hash.as_deref() != Some(p.compute_hash().as_str()) {
                "its row does not match its hash (its totals, status or times were edited)"
            } else if p.chain_head.as_ref().is_some_and(|h| heads.contains(h)) {
                "the chain head it recorded is not a row of the chain (the events were rebuilt)"
            } else {
                continue;
            };
            return Ok(Verification::BrokenPass {
                id: p.id.clone(),
                problem: problem.into(),
            });
        }
        Ok(Verification::Intact {
            rows: count,
            head: prev,
        })
    }

    /// The `seq` of the row whose hash is `hash`, if any.
    pub async fn seq_of_hash(&self, hash: &str) -> Result<Option<i64>, AuditError> {
        Ok(sqlx::query_scalar("SELECT seq FROM events WHERE hash = ?")
            .bind(hash.to_ascii_lowercase())
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Summary counts of one pass's rows by outcome (for reports).
    pub async fn outcome_counts(&self, run_id: &str) -> Result<Vec<(String, i64)>, AuditError> {
        let rows = sqlx::query("SELECT outcome, COUNT(*) AS n FROM events WHERE run_id = ? GROUP BY outcome ORDER BY outcome")
            .bind(run_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("outcome")?, r.try_get("n")?)))
            .collect()
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn describe_open_error(e: &sqlx::Error) -> String {
    let text = e.to_string();
    if text.contains("file is not a database") || text.contains("not a database") {
        "the file exists but is not an SQLite database (was audit.path pointed at another file?); it was not changed".into()
    } else if text.contains("unable to open") {
        format!("cannot open the file ({text}); check that the folder exists and is writable")
    } else if text.contains("readonly") || text.contains("read-only") {
        format!("the database is read-only ({text})")
    } else {
        text
    }
}
