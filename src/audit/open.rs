//! Opening a log: creating and migrating a SQLite file (under a lock, so two processes
//! starting on a new file do not both set it up) or a PostgreSQL database, and opening
//! either for reading only. A file that is not a log, or a newer schema, is left untouched.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use super::db::{Pool, describe_open_error, on_pool};
use super::{AuditError, AuditStore, lease};

/// How long opening a PostgreSQL log waits for the server.
const CONNECT: Duration = Duration::from_secs(10);

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
}
