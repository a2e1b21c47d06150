//! The SQL of the passes table: a pass's row from its start to its sealed totals (and the
//! chain head appended to `audit.head_file`), sealing passes a crash interrupted, and
//! finding passes.

use sqlx::AssertSqlSafe;

use super::db::bind_totals;
use super::db::on_pool;
use super::write::PassMark;
use super::{AuditError, AuditStore, Outcome, PassRow, PassTotals};

impl AuditStore {
    /// Records a pass's start: its row, `running`, and the chained row of its start.
    pub async fn start_pass(
        &self,
        id: &str,
        trigger: &str,
        fingerprint: &str,
        dry_run: bool,
    ) -> Result<(), AuditError> {
        let mark = PassMark::Start {
            id,
            trigger,
            fingerprint,
            dry_run,
        };
        self.write_chained(&[], Some(mark)).await?;
        Ok(())
    }

    /// Records a pass's totals and seals its row (see [`PassRow::compute_hash`]), with the
    /// chained row that carries the sealed row's hash.
    pub async fn finish_pass(&self, id: &str, t: &PassTotals) -> Result<(), AuditError> {
        if let (_, Some((row, head))) = self.write_chained(&[], Some(PassMark::Seal(id, t))).await?
        {
            self.append_head_line(&row, &head);
        }
        Ok(())
    }

    /// Appends a sealed pass's chain head to `audit.head_file`, if one is set; a failure
    /// is logged, not returned: the pass and its rows are already recorded.
    fn append_head_line(&self, row: &PassRow, head: &str) {
        let Some(file) = &self.head_file else {
            return;
        };
        let line = format!(
            "{} pass {} {} head {}\n",
            row.finished_at.as_deref().unwrap_or(""),
            row.id,
            row.totals.status,
            head
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

    /// The newest pass of each server that stopped on an error (the server unreachable, the
    /// listing failed, the log unwritable).
    pub async fn last_errors(&self) -> Result<Vec<PassRow>, AuditError> {
        Ok(on_pool!(&self.pool, |pool| {
            sqlx::query_as(
                "SELECT * FROM passes p WHERE started_at = (SELECT MAX(started_at) FROM passes q \
                 WHERE q.error IS NOT NULL AND COALESCE(q.instance, 'default') = COALESCE(p.instance, 'default')) \
                 AND p.error IS NOT NULL ORDER BY COALESCE(instance, 'default'), id",
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
        // A running row whose start the chain never recorded is no pass of casewarden's:
        // it is left for `audit verify` to flag, not settled.
        let chained: Option<i64> = on_pool!(&self.pool, |pool| {
            sqlx::query_scalar("SELECT seq FROM events WHERE field = 'pass' LIMIT 1")
                .fetch_optional(pool)
                .await?
        });
        let mut sealed = 0;
        for p in &running {
            let start: Option<i64> = on_pool!(&self.pool, |pool| {
                sqlx::query_scalar(
                    "SELECT seq FROM events WHERE run_id = $1 AND field = 'pass' AND new = 'started'",
                )
                .bind(&p.id)
                .fetch_optional(pool)
                .await?
            });
            if chained.is_some() && start.is_none() {
                tracing::error!(pass_id = %p.id, "a pass row marked running was never started by casewarden (the chain holds no start for it): left as it is; `casewarden audit verify` reports it");
                continue;
            }
            sealed += 1;
            let counts: Vec<(String, i64)> = on_pool!(&self.pool, |pool| {
                sqlx::query_as(
                    "SELECT outcome, COUNT(*) FROM events WHERE run_id = $1 AND NOT dry_run \
                     AND field NOT IN ('rule', 'plan', 'case', 'summary', 'pass', 'chain') GROUP BY outcome",
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
        Ok(sealed)
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

    /// What live passes with this trigger decided, by (case, rule, field, value): applied,
    /// left in doubt or still open (never sent twice), or skipped because the case had moved
    /// on (when checked against the plan, or read right before sending). An `apply` of a
    /// plan takes what earlier ones of it did not; a change not sent for a passing reason
    /// (shutdown, timeout, the lease, a failed read) or that failed is tried again.
    pub async fn made_by(
        &self,
        trigger: &str,
    ) -> Result<Vec<(String, String, String, Option<String>)>, AuditError> {
        Ok(on_pool!(&self.pool, |pool| {
            sqlx::query_as(
                "SELECT e.case_id, e.rule, e.field, e.new FROM events e JOIN passes p ON p.id = e.run_id \
                 WHERE p.trigger_kind = $1 AND NOT p.dry_run \
                 AND e.field NOT IN ('rule', 'plan', 'case', 'summary', 'pass', 'chain') AND ( \
                 e.outcome IN ('applied', 'unknown') \
                 OR (e.outcome = 'skipped' AND (e.planned_seq IS NULL OR e.reason NOT LIKE 'not sent:%' \
                     OR e.reason LIKE 'not sent: the case already holds it%' \
                     OR e.reason LIKE 'not sent: the changes this comment explains%')) \
                 OR (e.outcome = 'planned' AND NOT EXISTS (SELECT 1 FROM events o WHERE o.planned_seq = e.seq)))",
            )
            .bind(trigger)
            .fetch_all(pool)
            .await?
        }))
    }
}

/// Inserts a pass's row as it is (sealed or not): a copy of the log keeps its hash.
pub(super) async fn insert_pass(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    p: &PassRow,
) -> Result<(), sqlx::Error> {
    let insert = sqlx::query(
        "INSERT INTO passes (id, started_at, finished_at, trigger_kind, rules_fingerprint, dry_run, \
         cases_seen, planned, applied, failed, skipped, status, error, chain_head, hash, instance) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
    )
    .bind(&p.id)
    .bind(&p.started_at)
    .bind(&p.finished_at)
    .bind(&p.trigger_kind)
    .bind(&p.rules_fingerprint)
    .bind(p.dry_run);
    bind_totals(insert, &p.totals)
        .bind(&p.chain_head)
        .bind(&p.hash)
        .bind(&p.instance)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
