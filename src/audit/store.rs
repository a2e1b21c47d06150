//! The store: opening and migrating the log (a SQLite file on one host, or PostgreSQL
//! shared by replicas), appending rows in one transaction, the passes table, and the reads
//! the pass itself needs. Both backends run the same SQL (`$N` parameters, which SQLite
//! accepts too); where they differ, [`Backend`] says how.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{AssertSqlSafe, Connection};

use super::db::{Backend, Pool, describe_open_error, insert_events, on_pool, placeholders};

use super::{
    AppliedChange, AuditError, DryRow, EventRow, GENESIS, NewEvent, Outcome, PassRow, PassTotals,
    Unsettled, lease, timestamp,
};

/// How long opening a PostgreSQL log waits for the server.
const CONNECT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct AuditStore {
    pub(super) pool: Pool,
    /// The SQLite file, or the PostgreSQL URL without its password (for messages).
    pub(super) path: PathBuf,
    pub(super) write: std::sync::Arc<tokio::sync::Mutex<()>>,
    pub(super) claim: std::sync::Arc<tokio::sync::Mutex<lease::Slot>>,
    /// The lease this process holds, if any: its rows carry the epoch, and are refused
    /// once the lease is someone else's.
    pub(super) fence: std::sync::Arc<std::sync::Mutex<Option<lease::Fence>>>,
    pub(super) lease_times: lease::LeaseTimes,
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
        let store = AuditStore::over(Pool::Sqlite(pool), path);
        let migrated = store.migrate().await;
        drop(lock);
        migrated?;
        Ok(store)
    }

    /// Opens (creating the tables on first start) and migrates a PostgreSQL log. `url` is
    /// `postgres://user@host/db` without a password; `password` comes apart (a file or a
    /// credential) so it is never shown where the URL is.
    pub async fn open_postgres(
        url: &str,
        password: Option<&str>,
    ) -> Result<AuditStore, AuditError> {
        let store = AuditStore::connect_postgres(url, password, false).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Opens a PostgreSQL log for reading only: every transaction of the connection is
    /// read-only, and nothing is created or migrated.
    pub async fn open_postgres_read_only(
        url: &str,
        password: Option<&str>,
    ) -> Result<AuditStore, AuditError> {
        let store = AuditStore::connect_postgres(url, password, true).await?;
        if !store.has_table("events").await? {
            return Err(AuditError::NoLog { path: store.path });
        }
        Ok(store)
    }

    async fn connect_postgres(
        url: &str,
        password: Option<&str>,
        read_only: bool,
    ) -> Result<AuditStore, AuditError> {
        let shown = crate::secret::redact_url(url);
        let fail = |message: String| AuditError::Open {
            path: PathBuf::from(&shown),
            message,
        };
        let mut options = PgConnectOptions::from_str(url)
            .map_err(|e| fail(format!("not a PostgreSQL URL: {e}")))?
            .application_name("casewarden");
        if let Some(password) = password {
            options = options.password(password);
        }
        if read_only {
            options = options.options([("default_transaction_read_only", "on")]);
        }
        // One connection first: a pool only says it timed out, this says why.
        let first = tokio::time::timeout(CONNECT, PgConnection::connect_with(&options)).await;
        match first {
            Ok(Ok(c)) => {
                let _ = c.close().await;
            }
            Ok(Err(e)) => return Err(fail(describe_open_error(&e))),
            Err(_) => {
                return Err(fail(format!(
                    "no answer within {} s: check the host, the port and any firewall between",
                    CONNECT.as_secs()
                )));
            }
        }
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(CONNECT)
            .connect_with(options)
            .await
            .map_err(|e| fail(describe_open_error(&e)))?;
        Ok(AuditStore::over(Pool::Postgres(pool), Path::new(&shown)))
    }

    /// Whether the log is in PostgreSQL (shared by replicas) rather than a SQLite file.
    pub fn is_shared(&self) -> bool {
        matches!(self.pool, Pool::Postgres(_))
    }

    /// Where the log is: the SQLite file, or the PostgreSQL URL without a password.
    pub fn location(&self) -> String {
        self.path.display().to_string()
    }

    fn over(pool: Pool, path: &Path) -> AuditStore {
        AuditStore {
            pool,
            path: path.to_path_buf(),
            write: Default::default(),
            claim: Default::default(),
            fence: Default::default(),
            lease_times: lease::LeaseTimes::ONE_HOST,
            head_file: None,
            instance: None,
        }
    }

    fn fence(&self) -> Option<lease::Fence> {
        self.fence.lock().expect("fence lock").clone()
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

    /// How long the lease lives and how often it is renewed (replicas on PostgreSQL; a
    /// SQLite file keeps [`lease::LeaseTimes::ONE_HOST`]).
    pub fn with_lease_times(mut self, times: lease::LeaseTimes) -> AuditStore {
        if self.is_shared() {
            self.lease_times = times;
        }
        self
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
        let store = AuditStore::over(Pool::Sqlite(pool), path);
        let has_events = store
            .has_table("events")
            .await
            .map_err(|e| fail(describe_open_error(&e)))?;
        if !has_events {
            return Err(fail("not a casewarden audit log (no events table)".into()));
        }
        Ok(store)
    }

    /// Whether the database has a table called `name`.
    pub(super) async fn has_table(&self, name: &str) -> Result<bool, sqlx::Error> {
        let sql = match self.pool {
            Pool::Sqlite(_) => "SELECT name FROM sqlite_master WHERE type = 'table' AND name = $1",
            Pool::Postgres(_) => {
                "SELECT table_name::text FROM information_schema.tables \
                 WHERE table_schema = current_schema() AND table_name = $1"
            }
        };
        let found: Option<String> = on_pool!(&self.pool, |pool| {
            sqlx::query_scalar(sql)
                .bind(name)
                .fetch_optional(pool)
                .await?
        });
        Ok(found.is_some())
    }

    async fn migrate(&self) -> Result<(), AuditError> {
        let migrator = match self.pool {
            Pool::Sqlite(_) => sqlx::migrate!("./migrations/sqlite"),
            Pool::Postgres(_) => sqlx::migrate!("./migrations/postgres"),
        };
        let known = migrator.iter().map(|m| m.version).max().unwrap_or(0);
        let has_table = self
            .has_table("_sqlx_migrations")
            .await
            .map_err(|e| AuditError::Open {
                path: self.path.clone(),
                message: describe_open_error(&e),
            })?;
        if has_table {
            let found: Option<i64> = on_pool!(&self.pool, |pool| {
                sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations")
                    .fetch_one(pool)
                    .await?
            });
            if let Some(found) = found.filter(|f| *f > known) {
                return Err(AuditError::NewerSchema {
                    path: self.path.clone(),
                    found,
                    known,
                });
            }
        }
        on_pool!(&self.pool, |pool| migrator.run(pool).await).map_err(|e| AuditError::Open {
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
        on_pool!(&self.pool, |pool| {
            // The write lock is taken before reading the head, so two writers (even in two
            // processes, or on two hosts sharing PostgreSQL) can never fork the chain.
            let mut tx = pool.begin_write().await?;
            let head: Option<(i64, String)> =
                sqlx::query_as("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1")
                    .fetch_optional(&mut *tx)
                    .await?;
            // Fencing: a holder that lost the lease (paused past it while another took
            // over) writes nothing more, so it cannot settle what the new holder settles.
            let fence = self.fence();
            if let Some(mine) = &fence {
                let current: Option<(String, i64)> =
                    sqlx::query_as("SELECT holder, epoch FROM lease WHERE id = 1")
                        .fetch_optional(&mut *tx)
                        .await?;
                if current
                    .as_ref()
                    .is_none_or(|(h, e)| *h != mine.holder || *e != mine.epoch)
                {
                    return Err(AuditError::Fenced {
                        epoch: mine.epoch,
                        current: current.map(|c| c.1),
                    });
                }
            }
            let epoch = fence.map(|f| f.epoch);
            let rows = self.rows(events, head, epoch);
            insert_events!(&mut *tx, &rows);
            tx.commit().await?;
            Ok(rows.iter().map(|r| r.seq).collect())
        })
    }

    /// The rows to append after `head`, hashed into the chain.
    fn rows(
        &self,
        events: &[NewEvent],
        head: Option<(i64, String)>,
        epoch: Option<i64>,
    ) -> Vec<EventRow> {
        let (mut seq, mut prev) = head.unwrap_or((0, GENESIS.to_string()));
        let now = timestamp(chrono::Utc::now());
        let mut rows = Vec::with_capacity(events.len());
        for e in events {
            seq += 1;
            let mut row = EventRow {
                seq,
                run_id: e.run_id.clone(),
                recorded_at: now.clone(),
                rule: e.rule.clone(),
                rule_hash: e.rule_hash.clone(),
                case_id: e.case.id().to_string(),
                ticket_id: e.case.ticket_id(),
                field: e.field.clone(),
                old: e.old.clone(),
                new: e.new.clone(),
                reason: e.reason.clone(),
                dry_run: e.dry_run,
                outcome: e.outcome,
                error: e.error.clone(),
                http_status: e.http_status,
                planned_seq: e.planned_seq,
                prev_hash: prev,
                hash: String::new(),
                tenant: e.case.tenant().map(str::to_string),
                instance: self.instance.as_deref().map(str::to_string),
                epoch,
            };
            row.hash = row.compute_hash();
            prev = row.hash.clone();
            rows.push(row);
        }
        rows
    }

    /// The newest row's hash (the chain head) and row count.
    pub async fn head(&self) -> Result<(i64, String), AuditError> {
        let head: Option<(i64, String)> = on_pool!(&self.pool, |pool| {
            sqlx::query_as("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1")
                .fetch_optional(pool)
                .await?
        });
        Ok(head.unwrap_or((0, GENESIS.to_string())))
    }

    pub async fn start_pass(
        &self,
        id: &str,
        trigger: &str,
        fingerprint: &str,
        dry_run: bool,
    ) -> Result<(), AuditError> {
        on_pool!(&self.pool, |pool| {
            sqlx::query(
                "INSERT INTO passes (id, started_at, trigger_kind, rules_fingerprint, dry_run, status, instance) VALUES ($1, $2, $3, $4, $5, 'running', $6)",
            )
            .bind(id)
            .bind(timestamp(chrono::Utc::now()))
            .bind(trigger)
            .bind(fingerprint)
            .bind(dry_run)
            .bind(self.instance.as_deref())
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Records a pass's totals and seals its row (see [`PassRow::compute_hash`]).
    pub async fn finish_pass(&self, id: &str, t: &PassTotals) -> Result<(), AuditError> {
        let _guard = self.write.lock().await;
        let row = on_pool!(&self.pool, |pool| {
            let mut tx = pool.begin_write().await?;
            let mut row: PassRow = sqlx::query_as("SELECT * FROM passes WHERE id = $1")
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
                "UPDATE passes SET finished_at = $1, cases_seen = $2, planned = $3, applied = $4, failed = $5, skipped = $6, status = $7, error = $8, chain_head = $9, hash = $10 WHERE id = $11",
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
            row
        });
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
        Ok(on_pool!(&self.pool, |pool| {
            sqlx::query_as("SELECT * FROM passes ORDER BY started_at, id")
                .fetch_all(pool)
                .await?
        }))
    }

    /// The newest pass of each server (passes recorded before servers were count as
    /// `default`), by server name.
    pub async fn last_passes(&self) -> Result<Vec<PassRow>, AuditError> {
        Ok(on_pool!(&self.pool, |pool| {
            sqlx::query_as(
                "SELECT * FROM passes p WHERE started_at = (SELECT MAX(started_at) FROM passes q \
                 WHERE COALESCE(q.instance, 'default') = COALESCE(p.instance, 'default')) \
                 ORDER BY COALESCE(instance, 'default'), id",
            )
            .fetch_all(pool)
            .await?
        }))
    }

    /// Passes still marked running (a crash or kill interrupted them).
    /// Seals them `interrupted` (this handle's server's only, when it has one), with the
    /// changes their rows record: call it once what they left open is settled.
    pub async fn mark_interrupted_passes(&self) -> Result<u64, AuditError> {
        let sql = format!(
            "SELECT * FROM passes WHERE status = 'running'{}",
            self.instance_filter("")
        );
        let running: Vec<PassRow> = on_pool!(&self.pool, |pool| {
            sqlx::query_as(AssertSqlSafe(sql)).fetch_all(pool).await?
        });
        for p in &running {
            let counts: Vec<(String, i64)> = on_pool!(&self.pool, |pool| {
                sqlx::query_as(
                    "SELECT outcome, COUNT(*) FROM events WHERE run_id = $1 AND NOT dry_run \
                     AND field NOT IN ('rule', 'plan') GROUP BY outcome",
                )
                .bind(&p.id)
                .fetch_all(pool)
                .await?
            });
            let n = |o: Outcome| {
                counts
                    .iter()
                    .find(|(k, _)| o == k.as_str())
                    .map_or(0, |c| c.1)
            };
            let totals = PassTotals {
                status: "interrupted".into(),
                planned: n(Outcome::Planned),
                applied: n(Outcome::Applied),
                failed: n(Outcome::Failed) + n(Outcome::Unknown),
                skipped: n(Outcome::Skipped),
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
             WHERE p.outcome = 'planned' AND NOT p.dry_run AND (o.seq IS NULL OR o.outcome = 'unknown'){} \
             ORDER BY p.seq",
            self.instance_filter("p.")
        );
        Ok(on_pool!(&self.pool, |pool| {
            sqlx::query_as(AssertSqlSafe(sql)).fetch_all(pool).await?
        }))
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
            "SELECT case_id, rule, field, new FROM events WHERE outcome = 'applied' AND NOT dry_run \
             AND case_id IN (",
        );
        sql.push_str(&placeholders(1, case_ids.len()));
        sql.push(')');
        sql.push_str(&self.instance_filter(""));
        sql.push_str(" ORDER BY seq");
        Ok(on_pool!(&self.pool, |pool| {
            let mut q = sqlx::query_as(AssertSqlSafe(sql));
            for id in case_ids {
                q = q.bind(*id);
            }
            q.fetch_all(pool).await?
        }))
    }

    /// For each (case, rule) among `case_ids`, the rows of the newest dry run of that rule
    /// on that case.
    pub async fn last_dry_runs(&self, case_ids: &[&str]) -> Result<Vec<DryRow>, AuditError> {
        let mut out = Vec::new();
        for chunk in case_ids.chunks(500) {
            let mut sql = String::from(
                "WITH last AS (SELECT case_id, rule, MAX(seq) AS seq FROM events \
                 WHERE dry_run AND case_id IN (",
            );
            sql.push_str(&placeholders(1, chunk.len()));
            sql.push(')');
            sql.push_str(&self.instance_filter(""));
            sql.push_str(
                " GROUP BY case_id, rule), \
                 runs AS (SELECT l.case_id, l.rule, e.run_id FROM last l JOIN events e ON e.seq = l.seq) \
                 SELECT e.case_id, e.rule, e.field, e.new, e.outcome FROM events e JOIN runs r \
                 ON e.case_id = r.case_id AND e.rule = r.rule AND e.run_id = r.run_id \
                 WHERE e.dry_run",
            );
            let rows: Vec<DryRow> = on_pool!(&self.pool, |pool| {
                let mut q = sqlx::query_as(AssertSqlSafe(sql));
                for id in chunk {
                    q = q.bind(*id);
                }
                q.fetch_all(pool).await?
            });
            out.extend(rows);
        }
        Ok(out)
    }

    /// Summary counts of one pass's rows by outcome (for reports).
    pub async fn outcome_counts(&self, run_id: &str) -> Result<Vec<(String, i64)>, AuditError> {
        Ok(on_pool!(&self.pool, |pool| {
            sqlx::query_as("SELECT outcome, COUNT(*) AS n FROM events WHERE run_id = $1 GROUP BY outcome ORDER BY outcome")
                .bind(run_id)
                .fetch_all(pool)
                .await?
        }))
    }

    /// Whether a plan with this id and file hash was recorded when it was written (a
    /// chained row: rule and field `plan`, case id the plan id, new the hash).
    pub async fn plan_recorded(&self, plan_id: &str, digest: &str) -> Result<bool, AuditError> {
        let found: Option<(i64,)> = on_pool!(&self.pool, |pool| {
            sqlx::query_as(
                "SELECT seq FROM events WHERE field = 'plan' AND case_id = $1 AND new = $2 LIMIT 1",
            )
            .bind(plan_id)
            .bind(digest)
            .fetch_optional(pool)
            .await?
        });
        Ok(found.is_some())
    }

    /// The newest live pass whose trigger starts with `prefix`, if any.
    pub async fn live_pass_like(&self, prefix: &str) -> Result<Option<PassRow>, AuditError> {
        Ok(on_pool!(&self.pool, |pool| {
            sqlx::query_as(
                "SELECT * FROM passes WHERE substr(trigger_kind, 1, length($1)) = $1 AND NOT dry_run ORDER BY started_at DESC LIMIT 1",
            )
            .bind(prefix)
            .fetch_optional(pool)
            .await?
        }))
    }

    /// The newest pass started by `trigger` that was not a dry run, if any.
    pub async fn live_pass_by(&self, trigger: &str) -> Result<Option<PassRow>, AuditError> {
        Ok(on_pool!(&self.pool, |pool| {
            sqlx::query_as(
                "SELECT * FROM passes WHERE trigger_kind = $1 AND NOT dry_run ORDER BY started_at DESC LIMIT 1",
            )
            .bind(trigger)
            .fetch_optional(pool)
            .await?
        }))
    }

    /// Remembers the users' emails (see the `users` table).
    pub async fn remember_users(
        &self,
        users: &crate::stellar::Directory,
    ) -> Result<(), AuditError> {
        let now = timestamp(chrono::Utc::now());
        on_pool!(&self.pool, |pool| {
            let mut tx = pool.begin().await?;
            for (id, email) in users.pairs() {
                sqlx::query(
                    "INSERT INTO users (id, email, seen_at) VALUES ($1, $2, $3) \
                     ON CONFLICT(id) DO UPDATE SET email = excluded.email, seen_at = excluded.seen_at",
                )
                .bind(id)
                .bind(email)
                .bind(&now)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// User id -> email, as last seen; empty for a log written before emails were kept.
    pub async fn user_emails(&self) -> Result<HashMap<String, String>, AuditError> {
        if !self.has_table("users").await? {
            return Ok(HashMap::new());
        }
        let rows: Vec<(String, String)> = on_pool!(&self.pool, |pool| {
            sqlx::query_as("SELECT id, email FROM users")
                .fetch_all(pool)
                .await?
        });
        Ok(rows.into_iter().collect())
    }

    pub async fn close(&self) {
        on_pool!(&self.pool, |pool| pool.close().await);
    }
}
