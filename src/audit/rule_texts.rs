//! The SQL of the rule texts: each distinct text of a rule file a pass ran, kept once (its
//! SHA-256 is the `rule_hash` of the chained rows the rule caused), and which text of each
//! rule every pass ran.

use sqlx::FromRow;

use super::db::on_pool;
use super::{AuditError, AuditStore, EventRow, timestamp};

/// A rule file's text as a pass ran it.
#[derive(Debug, Clone, FromRow, PartialEq)]
pub struct RuleText {
    pub hash: String,
    pub rule: String,
    pub file: String,
    pub text: String,
    /// When the log first kept this text.
    pub recorded_at: String,
}

impl RuleText {
    /// Whether the text still hashes to the hash the chained rows carry.
    pub fn matches_hash(&self) -> bool {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(self.text.as_bytes())) == self.hash
    }
}

/// One rule a pass runs: (name, SHA-256 of its text, file, text).
pub type RuleSource<'a> = (&'a str, &'a str, &'a str, &'a str);

impl AuditStore {
    /// Records which text of each rule pass `pass_id` runs, keeping each text not kept yet.
    pub async fn record_rules(
        &self,
        pass_id: &str,
        rules: &[RuleSource<'_>],
    ) -> Result<(), AuditError> {
        let now = timestamp(chrono::Utc::now());
        on_pool!(&self.pool, |pool| {
            let mut tx = pool.begin().await?;
            for (rule, hash, file, text) in rules {
                sqlx::query(
                    "INSERT INTO rule_texts (hash, rule, file, text, recorded_at) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (hash) DO NOTHING",
                )
                .bind(*hash)
                .bind(*rule)
                .bind(*file)
                .bind(*text)
                .bind(&now)
                .execute(&mut *tx)
                .await?;
                sqlx::query("INSERT INTO pass_rules (pass_id, rule, hash) VALUES ($1, $2, $3)")
                    .bind(pass_id)
                    .bind(*rule)
                    .bind(*hash)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// The text whose SHA-256 is `hash`; None when the log never kept it (a row older than
    /// the rule texts, or a command's row).
    pub async fn rule_text(&self, hash: &str) -> Result<Option<RuleText>, AuditError> {
        if hash.is_empty() || !self.has_table("rule_texts").await? {
            return Ok(None);
        }
        Ok(on_pool!(&self.pool, |pool| {
            sqlx::query_as("SELECT * FROM rule_texts WHERE hash = $1")
                .bind(hash)
                .fetch_optional(pool)
                .await?
        }))
    }

    /// Every kept rule text, oldest first (for a copy of the log).
    pub(super) async fn rule_texts(&self) -> Result<Vec<RuleText>, AuditError> {
        if !self.has_table("rule_texts").await? {
            return Ok(Vec::new());
        }
        Ok(on_pool!(&self.pool, |pool| {
            sqlx::query_as("SELECT * FROM rule_texts ORDER BY recorded_at, hash")
                .fetch_all(pool)
                .await?
        }))
    }

    /// Every pass's (pass, rule, hash), for a copy of the log.
    pub(super) async fn pass_rules(&self) -> Result<Vec<(String, String, String)>, AuditError> {
        if !self.has_table("pass_rules").await? {
            return Ok(Vec::new());
        }
        Ok(on_pool!(&self.pool, |pool| {
            sqlx::query_as("SELECT pass_id, rule, hash FROM pass_rules ORDER BY pass_id, rule")
                .fetch_all(pool)
                .await?
        }))
    }

    /// The row with this `seq`.
    pub async fn event(&self, seq: i64) -> Result<Option<EventRow>, AuditError> {
        Ok(on_pool!(&self.pool, |pool| {
            sqlx::query_as("SELECT * FROM events WHERE seq = $1")
                .bind(seq)
                .fetch_optional(pool)
                .await?
        }))
    }
}

/// Adds the rule texts and pass rules of a log being copied, keeping what the target has.
pub(super) async fn insert_rule_texts(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    texts: &[RuleText],
    pass_rules: &[(String, String, String)],
) -> Result<(), sqlx::Error> {
    for t in texts {
        sqlx::query(
            "INSERT INTO rule_texts (hash, rule, file, text, recorded_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (hash) DO NOTHING",
        )
        .bind(&t.hash)
        .bind(&t.rule)
        .bind(&t.file)
        .bind(&t.text)
        .bind(&t.recorded_at)
        .execute(&mut **tx)
        .await?;
    }
    for (pass, rule, hash) in pass_rules {
        sqlx::query(
            "INSERT INTO pass_rules (pass_id, rule, hash) VALUES ($1, $2, $3) \
             ON CONFLICT (pass_id, rule) DO NOTHING",
        )
        .bind(pass)
        .bind(rule)
        .bind(hash)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}
