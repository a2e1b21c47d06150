//! The SQL of the events table: appending rows to the chain in one transaction (fenced by
//! the lease), its head, and the reads the pass itself needs (changes left open, what was
//! applied to cases, the last dry runs, recorded plans).

use sqlx::AssertSqlSafe;

use super::db::{Backend, insert_events, on_pool, placeholders};
use super::key::ChainKeys;
use super::{
    AppliedChange, AuditError, AuditStore, DryRow, EventRow, GENESIS, NewEvent, PassRow,
    PassTotals, RuleErrors, Unsettled, timestamp,
};

impl AuditStore {
    /// Appends rows in one transaction, extending the hash chain; returns their `seq`s.
    /// When this returns Ok the rows are on disk (synchronous=FULL).
    pub async fn append(&self, events: &[NewEvent]) -> Result<Vec<i64>, AuditError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self.write_chained(events, None).await?.0)
    }

    /// Appends `events` to the chain and, with `mark`, starts or seals a pass's row in the
    /// same transaction, with the chained row of its start or end (which carries the sealed
    /// row's hash): a pass row exists exactly when its start is chained, and is sealed
    /// exactly when its end is.
    pub(super) async fn write_chained(
        &self,
        events: &[NewEvent],
        mark: Option<PassMark<'_>>,
    ) -> Result<(Vec<i64>, Option<(PassRow, String)>), AuditError> {
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
            let mut sealed = None;
            let mut end = None;
            if let Some(PassMark::Start {
                id,
                trigger,
                fingerprint,
                dry_run,
            }) = mark
            {
                sqlx::query(
                    "INSERT INTO passes (id, started_at, trigger_kind, rules_fingerprint, dry_run, status, instance) VALUES ($1, $2, $3, $4, $5, 'running', $6)",
                )
                .bind(id)
                .bind(timestamp(chrono::Utc::now()))
                .bind(trigger)
                .bind(fingerprint)
                .bind(dry_run)
                .bind(self.instance.as_deref())
                .execute(&mut *tx)
                .await?;
                end = Some(super::row::pass_started(id, trigger, fingerprint, dry_run));
            }
            if let Some(PassMark::Seal(id, totals)) = mark {
                let mut row: PassRow = sqlx::query_as("SELECT * FROM passes WHERE id = $1")
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?;
                row.finished_at = Some(timestamp(chrono::Utc::now()));
                row.totals = totals.clone();
                let at = head.as_ref().map(|h| h.1.clone());
                row.chain_head = Some(at.unwrap_or_else(|| GENESIS.to_string()));
                row.hash = Some(row.compute_hash());
                let update = sqlx::query(
                    "UPDATE passes SET finished_at = $1, cases_seen = $2, planned = $3, applied = $4, failed = $5, skipped = $6, status = $7, error = $8, chain_head = $9, hash = $10 WHERE id = $11",
                )
                .bind(&row.finished_at);
                super::passes::bind_totals(update, totals)
                    .bind(&row.chain_head)
                    .bind(&row.hash)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                end = Some(super::row::pass_finished(&row));
                sealed = Some(row);
            }
            let epoch = fence.map(|f| f.epoch);
            let rows = self.rows(events.iter().chain(end.as_ref()), head, epoch);
            insert_events!(&mut *tx, &rows);
            tx.commit().await?;
            let head = rows.last().map(|r| r.hash.clone()).unwrap_or_default();
            Ok((
                rows.iter().map(|r| r.seq).collect(),
                sealed.map(|s| (s, head)),
            ))
        })
    }

    /// The rows to append after `head`, hashed into the chain.
    fn rows<'e>(
        &self,
        events: impl Iterator<Item = &'e NewEvent>,
        head: Option<(i64, String)>,
        epoch: Option<i64>,
    ) -> Vec<EventRow> {
        let (mut seq, mut prev) = head.unwrap_or((0, GENESIS.to_string()));
        let now = timestamp(chrono::Utc::now());
        let mut rows = Vec::with_capacity(events.size_hint().0);
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
            row.hash = row.hash_with(self.chain_keys.as_deref().map(ChainKeys::current));
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

/// What [`AuditStore::write_chained`] does to a pass besides appending.
#[derive(Clone, Copy)]
pub(super) enum PassMark<'a> {
    Start {
        id: &'a str,
        trigger: &'a str,
        fingerprint: &'a str,
        dry_run: bool,
    },
    Seal(&'a str, &'a PassTotals),
}
