//! The mirror's file: a SQLite database beside the audit log, one transaction per merged
//! page (its rows and the checkpoint together), so a crash leaves rows and checkpoint in
//! step.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use futures::TryStreamExt;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Sqlite, SqlitePool};

use super::{Cases, Sync};

/// The open file, shared by every server's mirror.
#[derive(Clone, Debug)]
pub struct MirrorFile {
    pool: SqlitePool,
    pub path: PathBuf,
}

/// What one merged page changes in the file.
#[derive(Default)]
pub(super) struct PageWrite<'a> {
    pub upserts: Vec<(&'a str, i64, &'a str)>,
    pub removes: Vec<&'a str>,
    /// Cases listed in an older version than the one held: only marked as seen.
    pub seen: Vec<&'a str>,
}

#[derive(sqlx::FromRow)]
struct SyncRow {
    scope: String,
    generation: i64,
    checkpoint_ms: Option<i64>,
    last_full_ms: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct CaseRow {
    id: String,
    modified_at: i64,
    generation: i64,
    body: String,
}

/// Rows per INSERT (5 values each, well under SQLite's limit of bound values).
const ROWS_PER_INSERT: usize = 500;

impl MirrorFile {
    /// Opens (creating) the file; Err: why, for a warning (the mirror then lives in memory).
    pub async fn open(path: &Path) -> Result<MirrorFile, String> {
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(|e| e.to_string())?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // A cache: a power loss may lose the last pages, never split a page from its
            // checkpoint.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(std::time::Duration::from_secs(10))
            // Cases are ~1 KB rows: larger pages, fewer of them written per listing, and
            // the WAL folded back into the file less often.
            .page_size(16_384)
            .pragma("cache_size", "-16384")
            .pragma("wal_autocheckpoint", "4000");
        // One writer at a time holds the mirror anyway.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .map_err(|e| crate::audit::db_message(&e))?;
        sqlx::migrate!("./migrations/mirror")
            .run(&pool)
            .await
            .map_err(|e| e.to_string())?;
        Ok(MirrorFile {
            pool,
            path: path.to_path_buf(),
        })
    }

    /// A server's mirror as the file holds it (empty when it holds none).
    pub(super) async fn load(&self, instance: &str) -> Result<(Sync, Cases), sqlx::Error> {
        let sync: Option<SyncRow> = sqlx::query_as(
            "SELECT scope, generation, checkpoint_ms, last_full_ms FROM mirror_sync WHERE instance = ?",
        )
        .bind(instance)
        .fetch_optional(&self.pool)
        .await?;
        let Some(sync) = sync else {
            return Ok((Sync::default(), Cases::default()));
        };
        let mut rows = sqlx::query_as::<_, CaseRow>(
            "SELECT id, modified_at, generation, body FROM mirror_cases WHERE instance = ?",
        )
        .bind(instance)
        .fetch(&self.pool);
        let mut cases = Cases::default();
        while let Some(r) = rows.try_next().await? {
            cases.put(Arc::from(r.id), r.modified_at, r.generation, r.body.into());
        }
        drop(rows);
        let sync = Sync {
            scope: sync.scope,
            generation: sync.generation,
            checkpoint: sync.checkpoint_ms,
            last_full_ms: sync.last_full_ms,
        };
        Ok((sync, cases))
    }

    /// Merges one page and records `sync` in the same transaction.
    pub(super) async fn write(
        &self,
        instance: &str,
        page: PageWrite<'_>,
        sync: &Sync,
        sweep: bool,
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        for chunk in page.upserts.chunks(ROWS_PER_INSERT) {
            let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT INTO mirror_cases (instance, id, modified_at, generation, body) ",
            );
            q.push_values(chunk, |mut b, (id, modified_at, body)| {
                b.push_bind(instance)
                    .push_bind(*id)
                    .push_bind(*modified_at)
                    .push_bind(sync.generation)
                    .push_bind(*body);
            });
            // Another process may have written a newer version meanwhile: it stays.
            q.push(
                " ON CONFLICT (instance, id) DO UPDATE SET generation = excluded.generation, \
                 modified_at = CASE WHEN excluded.modified_at >= modified_at \
                 THEN excluded.modified_at ELSE modified_at END, \
                 body = CASE WHEN excluded.modified_at >= modified_at \
                 THEN excluded.body ELSE body END",
            );
            q.build().execute(&mut *tx).await?;
        }
        for id in page.seen {
            sqlx::query("UPDATE mirror_cases SET generation = ? WHERE instance = ? AND id = ?")
                .bind(sync.generation)
                .bind(instance)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        for id in page.removes {
            sqlx::query("DELETE FROM mirror_cases WHERE instance = ? AND id = ?")
                .bind(instance)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        if sweep {
            sqlx::query("DELETE FROM mirror_cases WHERE instance = ? AND generation < ?")
                .bind(instance)
                .bind(sync.generation)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "INSERT INTO mirror_sync (instance, scope, generation, checkpoint_ms, last_full_ms) \
             VALUES (?, ?, ?, ?, ?) ON CONFLICT (instance) DO UPDATE SET scope = excluded.scope, \
             generation = excluded.generation, checkpoint_ms = excluded.checkpoint_ms, \
             last_full_ms = excluded.last_full_ms",
        )
        .bind(instance)
        .bind(&sync.scope)
        .bind(sync.generation)
        .bind(sync.checkpoint)
        .bind(sync.last_full_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }
}

/// Where the mirror of the audit log at `audit` is kept: `audit.db` -> `audit.mirror.db`.
pub fn path_beside(audit: &Path) -> PathBuf {
    audit.with_extension("mirror.db")
}
