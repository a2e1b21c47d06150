//! The SQLite store: opening and migrating the file, appending rows in one transaction,
//! the passes table, and the reads the pass itself needs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Row};

use super::{
    AppliedChange, AuditError, DryRow, EventRow, GENESIS, NewEvent, Outcome, PassRow, PassTotals,
    Unsettled, lease, timestamp,
};

/// Rows per INSERT statement (18 parameters each).
const ROWS_PER_INSERT: usize = 100;

#[derive(Clone)]
pub struct AuditStore {
    pub(super) pool: SqlitePool,
    pub(super) path: PathBuf,
    pub(super) write: std::sync::Arc<tokio::sync::Mutex<()>>,
    pub(super) claim: std::sync::Arc<tokio::sync::Mutex<lease::Slot>>,
    /// `audit.head_file`: every finished pass appends its chain head there.
    pub(super) head_file: Option<std::sync::Arc<PathBuf>>,
    /// The server this handle writes for: recorded in its rows, and its lookups of earlier
    /// rows see only that server's.
    pub(super) instance: Option<std::sync::Arc<str>>,
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
            .foreign_keys(false)
            // Lookups by many case ids build a temporary index per query: in memory, not
            // as a file in /var/tmp written page by page.
            .pragma("temp_store", "memory");
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
            instance: None,
        }
    }

    /// The same log, writing and remembering for the server named `name` (a config
    /// instance name: letters, digits, `-` and `_`).
    pub fn for_instance(&self, name: &str) -> AuditStore {
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "instance names are checked with the config"
        );
        AuditStore {
            instance: Some(name.into()),
            ..self.clone()
        }
    }

    /// The SQL condition keeping a lookup to this handle's server; rows from before
    /// instances were recorded belong to `default`.
    fn instance_filter(&self, alias: &str) -> String {
        match self.instance.as_deref() {
            None => String::new(),
            Some(crate::config::DEFAULT_INSTANCE) => {
                format!(" AND ({alias}instance IS NULL OR {alias}instance = 'default')")
            }
            Some(name) => format!(" AND {alias}instance = '{name}'"),
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
                tenant: e.tenant.clone(),
                instance: self.instance.as_deref().map(str::to_string),
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
                "INSERT INTO events (seq, run_id, recorded_at, rule, rule_hash, case_id, ticket_id, field, old, new, reason, dry_run, outcome, error, http_status, planned_seq, prev_hash, hash, tenant, instance) ",
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
                    .push_bind(row.hash.clone())
                    .push_bind(row.tenant.clone())
                    .push_bind(row.instance.clone());
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
        let sql = format!(
            "SELECT p.*, o.outcome AS last_outcome, o.recorded_at AS last_at, o.http_status AS last_status FROM events p \
             LEFT JOIN events o ON o.seq = (SELECT MAX(x.seq) FROM events x WHERE x.planned_seq = p.seq) \
             WHERE p.outcome = 'planned' AND p.dry_run = 0 AND (o.seq IS NULL OR o.outcome = 'unknown'){} \
             ORDER BY p.seq",
            self.instance_filter("p.")
        );
        Ok(sqlx::query_as::<_, Unsettled>(AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?)
    }

    /// casewarden's memory of what it applied to these cases: every applied change
    /// (comments too, so the same comment is not posted twice), oldest first, for the
    /// planner to keep the newest per field.
    pub async fn applied_changes(
        &self,
        case_ids: &[&str],
    ) -> Result<Vec<AppliedChange>, AuditError> {
        if case_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut sql = String::from(
            "SELECT case_id, rule, field, new FROM events WHERE outcome = 'applied' AND dry_run = 0 \
             AND case_id IN (?",
        );
        sql.push_str(&", ?".repeat(case_ids.len() - 1));
        sql.push(')');
        sql.push_str(&self.instance_filter(""));
        sql.push_str(" ORDER BY seq");
        let mut q = sqlx::query_as::<_, AppliedChange>(AssertSqlSafe(sql));
        for id in case_ids {
            q = q.bind(*id);
        }
        Ok(q.fetch_all(&self.pool).await?)
    }

    /// For each (case, rule) among `case_ids`, the rows of the newest dry run of that rule
    /// on that case.
    pub async fn last_dry_runs(&self, case_ids: &[&str]) -> Result<Vec<DryRow>, AuditError> {
        let mut out = Vec::new();
        for chunk in case_ids.chunks(500) {
            let mut sql = String::from(
                "WITH last AS (SELECT case_id, rule, MAX(seq) AS seq FROM events \
                 WHERE dry_run = 1 AND case_id IN (?",
            );
            sql.push_str(&", ?".repeat(chunk.len() - 1));
            sql.push(')');
            sql.push_str(&self.instance_filter(""));
            sql.push_str(
                " GROUP BY case_id, rule), \
                 runs AS (SELECT l.case_id, l.rule, e.run_id FROM last l JOIN events e ON e.seq = l.seq) \
                 SELECT e.case_id, e.rule, e.field, e.new, e.outcome FROM events e JOIN runs r \
                 ON e.case_id = r.case_id AND e.rule = r.rule AND e.run_id = r.run_id \
                 WHERE e.dry_run = 1",
            );
            let mut q = sqlx::query_as::<_, DryRow>(AssertSqlSafe(sql));
            for id in chunk {
                q = q.bind(*id);
            }
            out.extend(q.fetch_all(&self.pool).await?);
        }
        Ok(out)
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

    /// Whether a plan with this id and file hash was recorded when it was written (a
    /// chained row: rule and field `plan`, case id the plan id, new the hash).
    pub async fn plan_recorded(&self, plan_id: &str, digest: &str) -> Result<bool, AuditError> {
        let found: Option<(i64,)> = sqlx::query_as(
            "SELECT seq FROM events WHERE field = 'plan' AND case_id = ? AND new = ? LIMIT 1",
        )
        .bind(plan_id)
        .bind(digest)
        .fetch_optional(&self.pool)
        .await?;
        Ok(found.is_some())
    }

    /// The newest live pass whose trigger starts with `prefix`, if any.
    pub async fn live_pass_like(&self, prefix: &str) -> Result<Option<PassRow>, AuditError> {
        Ok(sqlx::query_as::<_, PassRow>(
            "SELECT * FROM passes WHERE substr(trigger_kind, 1, length(?1)) = ?1 AND dry_run = 0 ORDER BY started_at DESC LIMIT 1",
        )
        .bind(prefix)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// The newest pass started by `trigger` that was not a dry run, if any.
    pub async fn live_pass_by(&self, trigger: &str) -> Result<Option<PassRow>, AuditError> {
        Ok(sqlx::query_as::<_, PassRow>(
            "SELECT * FROM passes WHERE trigger_kind = ? AND dry_run = 0 ORDER BY started_at DESC LIMIT 1",
        )
        .bind(trigger)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Remembers the users' emails (see the `users` table).
    pub async fn remember_users(
        &self,
        users: &crate::stellar::Directory,
    ) -> Result<(), AuditError> {
        let now = timestamp(chrono::Utc::now());
        let mut tx = self.pool.begin().await?;
        for (id, email) in users.pairs() {
            sqlx::query(
                "INSERT INTO users (id, email, seen_at) VALUES (?, ?, ?) \
                 ON CONFLICT(id) DO UPDATE SET email = excluded.email, seen_at = excluded.seen_at",
            )
            .bind(id)
            .bind(email)
            .bind(&now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// User id -> email, as last seen; empty for a log written before emails were kept.
    pub async fn user_emails(&self) -> Result<HashMap<String, String>, AuditError> {
        let has_table: Option<(String,)> = sqlx::query_as(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'users'",
        )
        .fetch_optional(&self.pool)
        .await?;
        if has_table.is_none() {
            return Ok(HashMap::new());
        }
        let rows: Vec<(String, String)> = sqlx::query_as("SELECT id, email FROM users")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().collect())
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
