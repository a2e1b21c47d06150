//! The SQL of the users table: the emails of the user ids in assignee rows, as last seen.

use std::collections::HashMap;

use super::db::on_pool;
use super::{AuditError, AuditStore, timestamp};

impl AuditStore {
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
}

/// Adds the users a log being copied knows, keeping any the target knows already.
pub(super) async fn insert_users(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    users: &HashMap<String, String>,
) -> Result<(), sqlx::Error> {
    for (id, email) in users {
        sqlx::query(
            "INSERT INTO users (id, email, seen_at) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(email)
        .bind(timestamp(chrono::Utc::now()))
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}
