//! The hash chain: every row's hash covers the previous row's hash and its own content,
//! sealed pass rows name the chain head they saw, and `verify` walks it all.

use futures::StreamExt;
use sha2::{Digest, Sha256};
use sqlx::{FromRow, Row};

use super::{AuditError, AuditStore, EventRow, PassRow};

/// The `prev_hash` of the first row.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

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

impl AuditStore {
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
}
