//! The SQL of the events table: appending rows to the chain in one transaction (fenced by
//! the lease), its head, and the reads the pass itself needs (changes left open, what was
//! applied to cases, the last dry runs, recorded plans).

use sqlx::AssertSqlSafe;

use super::db::{on_pool, placeholders};
use super::{
    AppliedChange, AuditError, AuditStore, DryRow, EventRow, GENESIS, LastChange, RuleErrors,
    Unsettled,
};

impl AuditStore {
    /// The newest row's hash (the chain head) and row count.
    pub async fn head(&self) -> Result<(i64, String), AuditError> {
        let head: Option<(i64, String)> = on_pool!(&self.pool, |pool| {
            sqlx::query_as("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1")
                .fetch_optional(pool)
                .await?
        });
        Ok(head.unwrap_or((0, GENESIS.to_string())))
    }

    /// Planned (non-dry-run) changes not settled yet: with no outcome (left by a crash) or
    /// whose newest outcome is `unknown` (the answer was lost), oldest first.
    pub async fn unsettled(&self) -> Result<Vec<Unsettled>, AuditError> {
        let sql = format!(
            "SELECT p.*, o.outcome AS last_outcome, o.recorded_at AS last_at FROM events p \
             LEFT JOIN events o ON o.seq = (SELECT MAX(x.seq) FROM events x WHERE x.planned_seq = p.seq) \
             WHERE p.outcome = 'planned' AND NOT p.dry_run AND (o.seq IS NULL OR o.outcome = 'unknown'){} \
             ORDER BY p.seq",
            self.instance_filter("p.")
        );
        Ok(on_pool!(&self.pool, |pool| {
            sqlx::query_as(AssertSqlSafe(sql)).fetch_all(pool).await?
        }))
    }

    /// The planned rows of pass `run_id` on case `case_id` whose newest outcome is
    /// `applied`, in the order they were planned: what a summary comment of that pass sums up.
    pub async fn applied_in_pass(
        &self,
        run_id: &str,
        case_id: &str,
    ) -> Result<Vec<EventRow>, AuditError> {
        let sql = format!(
            "SELECT p.* FROM events p WHERE p.run_id = $1 AND p.case_id = $2 AND p.outcome = 'planned' \
             AND (SELECT o.outcome FROM events o WHERE o.planned_seq = p.seq ORDER BY o.seq DESC LIMIT 1) = 'applied'{} \
             ORDER BY p.seq",
            self.instance_filter("p.")
        );
        Ok(on_pool!(&self.pool, |pool| {
            sqlx::query_as(AssertSqlSafe(sql))
                .bind(run_id)
                .bind(case_id)
                .fetch_all(pool)
                .await?
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

    /// The rules that failed on some case in these passes: (pass, rule, cases, first error),
    /// from the rows [`super::row::rule_errors`] writes.
    pub async fn rule_errors_in(&self, passes: &[&str]) -> Result<Vec<RuleErrors>, AuditError> {
        if passes.is_empty() {
            return Ok(Vec::new());
        }
        let mut sql = String::from(
            "SELECT run_id, rule, old, error FROM events WHERE field = 'rule' AND new = 'errors' AND run_id IN (",
        );
        sql.push_str(&placeholders(1, passes.len()));
        sql.push_str(") ORDER BY seq");
        Ok(on_pool!(&self.pool, |pool| {
            let mut q = sqlx::query_as(AssertSqlSafe(sql));
            for p in passes {
                q = q.bind(*p);
            }
            q.fetch_all(pool).await?
        }))
    }

    /// The clash notes ([`super::row::clash`]) recorded for these cases: (case, rule, what,
    /// outcome).
    pub async fn clash_notes(
        &self,
        case_ids: &[&str],
    ) -> Result<Vec<(String, String, String, String)>, AuditError> {
        self.for_cases(case_ids, |ids| {
            format!(
                "SELECT case_id, rule, old, new FROM events WHERE field = 'rule' \
                 AND new IN ('yield', 'fight') AND case_id IN ({ids})"
            )
        })
        .await
    }

    /// The rows of `sql(placeholders)` for `case_ids`, asked 500 ids at a time (the
    /// placeholders stand for them, `$1` on).
    async fn for_cases<T>(
        &self,
        case_ids: &[&str],
        sql: impl Fn(&str) -> String,
    ) -> Result<Vec<T>, AuditError>
    where
        T: Send
            + Unpin
            + for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>
            + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
    {
        let mut out = Vec::new();
        for chunk in case_ids.chunks(500) {
            let sql = sql(&placeholders(1, chunk.len()));
            let rows: Vec<T> = on_pool!(&self.pool, |pool| {
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

    /// The newest clash notes with other automations, newest first.
    pub async fn recent_clashes(&self, limit: i64) -> Result<Vec<EventRow>, AuditError> {
        Ok(on_pool!(&self.pool, |pool| {
            sqlx::query_as(
                "SELECT * FROM events WHERE field = 'rule' AND new IN ('yield', 'fight') \
                 ORDER BY seq DESC LIMIT $1",
            )
            .bind(limit)
            .fetch_all(pool)
            .await?
        }))
    }

    /// The (case, rule) pairs whose changes the budget (or a rule's own cap) deferred in
    /// the last live pass that ended: first in line in the next one.
    pub async fn deferred_last_pass(&self) -> Result<Vec<(String, String)>, AuditError> {
        let sql = format!(
            "SELECT DISTINCT case_id, rule FROM events WHERE run_id = \
             (SELECT id FROM passes WHERE NOT dry_run AND status <> 'running'{} \
              ORDER BY started_at DESC LIMIT 1) \
             AND outcome = 'skipped' AND NOT dry_run AND case_id IS NOT NULL \
             AND reason LIKE '%deferred to the next pass%'",
            self.instance_filter("")
        );
        Ok(on_pool!(&self.pool, |pool| {
            sqlx::query_as(AssertSqlSafe(sql)).fetch_all(pool).await?
        }))
    }

    /// For each (case, rule) among `case_ids`, the rows of the newest dry run of that rule
    /// on that case. (`|| ''` keeps SQLite from walking every row of the run or the rule,
    /// once per case, by their indexes: the rows are looked up by case.)
    pub async fn last_dry_runs(&self, case_ids: &[&str]) -> Result<Vec<DryRow>, AuditError> {
        let instance = self.instance_filter("");
        self.for_cases(case_ids, |ids| {
            format!(
                "WITH last AS (SELECT case_id, rule, MAX(seq) AS seq FROM events \
                 WHERE dry_run AND case_id IN ({ids}){instance} GROUP BY case_id, rule), \
                 runs AS (SELECT l.case_id, l.rule, e.run_id FROM last l JOIN events e ON e.seq = l.seq) \
                 SELECT e.case_id, e.rule, e.field, e.new, e.outcome FROM events e JOIN runs r \
                 ON e.case_id = r.case_id AND e.rule || '' = r.rule AND e.run_id || '' = r.run_id \
                 WHERE e.dry_run"
            )
        })
        .await
    }

    /// For each (case, rule, field, value) among `case_ids`, the newest live row of it
    /// (planned, outcome or skip).
    pub async fn last_changes(&self, case_ids: &[&str]) -> Result<Vec<LastChange>, AuditError> {
        let instance = self.instance_filter("");
        self.for_cases(case_ids, |ids| {
            format!(
                "SELECT case_id, rule, rule_hash, field, old, new, reason, outcome FROM events \
                 WHERE seq IN (SELECT MAX(seq) FROM events WHERE NOT dry_run AND case_id IN ({ids}){instance} \
                 AND field NOT IN ('rule', 'plan', 'case', 'summary', 'pass', 'chain') \
                 GROUP BY case_id, rule, field, new)"
            )
        })
        .await
    }

    /// Summary counts of one pass's rows by outcome (for reports).
    pub async fn outcome_counts(&self, run_id: &str) -> Result<Vec<(String, i64)>, AuditError> {
        Ok(on_pool!(&self.pool, |pool| {
            sqlx::query_as("SELECT outcome, COUNT(*) AS n FROM events WHERE run_id = $1 AND field NOT IN ('pass', 'chain') GROUP BY outcome ORDER BY outcome")
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
}
