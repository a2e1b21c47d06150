//! The two databases a log can live in, behind one SQL text: a SQLite file on one host,
//! or PostgreSQL shared by replicas. Queries use `$N` parameters, which SQLite reads too;
//! [`on_pool!`] compiles a query once per backend, and [`Backend`] holds what differs.

use sqlx::postgres::PgPool;
use sqlx::query::Query;
use sqlx::{Database, Encode, Type};

use super::PassTotals;
use sqlx::sqlite::SqlitePool;

/// Rows per INSERT statement (21 parameters each).
pub(super) const ROWS_PER_INSERT: usize = 100;

/// The database behind the log.
#[derive(Clone)]
pub(super) enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$p` bound to the store's pool, whichever backend it is: the body is
/// compiled once per backend.
macro_rules! on_pool {
    ($pool:expr, |$p:ident| $body:expr) => {
        match $pool {
            $crate::audit::db::Pool::Sqlite($p) => $body,
            $crate::audit::db::Pool::Postgres($p) => $body,
        }
    };
}
pub(super) use on_pool;

/// What differs between the backends beyond the SQL they share.
pub(super) trait Backend {
    type Db: sqlx::Database;
    /// A transaction that holds the log's write lock from its start, so a writer reads the
    /// chain head (or the lease) knowing nobody else, in any process, writes until it ends.
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>;
}

impl Backend for SqlitePool {
    type Db = sqlx::Sqlite;
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        self.begin_with("BEGIN IMMEDIATE").await
    }
}

/// The advisory lock every writer of a PostgreSQL log takes for its transaction.
const PG_WRITE_LOCK: i64 = 0x6361_7365_7761_7264; // "caseward"

impl Backend for PgPool {
    type Db = sqlx::Postgres;
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        let mut tx = self.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(PG_WRITE_LOCK)
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }
}

/// Inserts `$rows` (hashed [`EventRow`]s) through `$conn`, as they are. Multi-row
/// INSERTs: one statement per ROWS_PER_INSERT rows, well under either backend's limit of
/// bound parameters, cut the per-statement cost that dominates otherwise.
macro_rules! insert_events {
    ($conn:expr, $rows:expr) => {
        for chunk in $rows.chunks($crate::audit::db::ROWS_PER_INSERT) {
            let mut q = sqlx::QueryBuilder::new(
                "INSERT INTO events (seq, run_id, recorded_at, rule, rule_hash, case_id, ticket_id, field, old, new, reason, dry_run, outcome, error, http_status, planned_seq, prev_hash, hash, tenant, instance, epoch) ",
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
                    .push_bind(row.outcome.as_str())
                    .push_bind(row.error.clone())
                    .push_bind(row.http_status)
                    .push_bind(row.planned_seq)
                    .push_bind(row.prev_hash.clone())
                    .push_bind(row.hash.clone())
                    .push_bind(row.tenant.clone())
                    .push_bind(row.instance.clone())
                    .push_bind(row.epoch);
            });
            q.build().execute($conn).await?;
        }
    };
}
pub(super) use insert_events;

/// `sql` with its `?` parameters numbered `$1, $2, ...` in order (the form both backends
/// read), for queries put together from optional conditions. `sql` holds no `?` inside a
/// string literal.
pub(super) fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    for ch in sql.chars() {
        if ch == '?' {
            n += 1;
            out.push_str(&format!("${n}"));
        } else {
            out.push(ch);
        }
    }
    out
}

/// `$from, $from+1, ...`: `n` numbered parameters for an `IN (...)` list.
pub(super) fn placeholders(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn describe_open_error(e: &sqlx::Error) -> String {
    let text = super::db_message(e);
    if text.contains("password authentication failed") {
        format!(
            "{text} (set the password in audit.password_file or the systemd credential `audit_password`)"
        )
    } else if text.contains("file is not a database") || text.contains("not a database") {
        "the file exists but is not an SQLite database (was audit.path pointed at another file?); it was not changed".into()
    } else if text.contains("unable to open") {
        format!("cannot open the file ({text}); check that the folder exists and is writable")
    } else if text.contains("readonly") || text.contains("read-only") {
        format!("the database is read-only ({text})")
    } else {
        text
    }
}

/// Binds the totals' columns in the order the passes table has them: `cases_seen`,
/// `planned`, `applied`, `failed`, `skipped`, `status`, `error`.
pub(super) fn bind_totals<'q, DB>(
    q: Query<'q, DB, DB::Arguments>,
    t: &PassTotals,
) -> Query<'q, DB, DB::Arguments>
where
    DB: Database,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
    for<'t> String: Encode<'t, DB> + Type<DB>,
    for<'t> Option<String>: Encode<'t, DB> + Type<DB>,
{
    q.bind(t.cases_seen)
        .bind(t.planned)
        .bind(t.applied)
        .bind(t.failed)
        .bind(t.skipped)
        .bind(t.status.clone())
        .bind(t.error.clone())
}
