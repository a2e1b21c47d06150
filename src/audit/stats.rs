//! Aggregates of the log for reports: a few grouped scans, so a report over millions of
//! rows holds only counts, never the rows.

use serde::Serialize;
use sqlx::{AssertSqlSafe, FromRow};

use super::db::{numbered, on_pool};
use super::row::HALTED_ROW;
use super::{AuditError, AuditStore, PassRow};

/// The rows a report covers: `since <= recorded_at <= until`, one rule or all.
#[derive(Debug, Clone, Default)]
pub struct Period {
    pub since: Option<String>,
    pub until: Option<String>,
    pub rule: Option<String>,
}

impl Period {
    /// `WHERE` conditions over `events` (as `alias`) and their values, in order.
    fn conditions(&self, alias: &str) -> (String, Vec<String>) {
        let mut sql = String::from("1 = 1");
        let mut binds = Vec::new();
        for (cond, value) in [
            ("recorded_at >= ?", &self.since),
            ("recorded_at <= ?", &self.until),
            ("rule = ?", &self.rule),
        ] {
            if let Some(v) = value {
                sql.push_str(&format!(" AND {alias}.{cond}"));
                binds.push(v.clone());
            }
        }
        (sql, binds)
    }
}

/// Rows of one rule on one day, of one kind and outcome.
#[derive(Debug, Clone, FromRow, Serialize, PartialEq)]
pub struct DayCount {
    pub rule: String,
    /// `YYYY-MM-DD` (UTC).
    pub day: String,
    /// `change` (a field change), `guard` (the blast-radius guard halted it), `errors`
    /// (the rule failed on cases), `disabled` (the circuit breaker disabled it).
    pub kind: String,
    pub outcome: String,
    pub dry_run: bool,
    pub rows: i64,
    /// Passes these rows belong to.
    pub passes: i64,
    /// For `errors`: the cases the rule failed on.
    pub cases: i64,
}

/// One version of a rule's file, as the rows it caused show it.
#[derive(Debug, Clone, FromRow, Serialize, PartialEq)]
pub struct RuleVersion {
    pub rule: String,
    pub rule_hash: String,
    pub first_seen: String,
    pub last_seen: String,
    pub rows: i64,
}

/// Failed changes of one rule with one error.
#[derive(Debug, Clone, FromRow, Serialize, PartialEq)]
pub struct FailureGroup {
    pub rule: String,
    pub error: String,
    pub rows: i64,
    pub last_at: String,
    pub example_case: String,
    pub ticket_id: Option<i64>,
}

/// Changes to one customer's (or one server's, or one pass's) cases by outcome, counted
/// as a rule's are, so groups add up to the totals.
#[derive(Debug, Clone, Default, FromRow, Serialize, PartialEq)]
pub struct GroupCount {
    /// The customer's `cust_id` (empty: cases that name none), the server's instance name,
    /// or the pass's id.
    pub name: String,
    /// The customer's `cust_name`, as the server's `/tenants` last gave it.
    #[sqlx(default)]
    pub cust_name: Option<String>,
    pub applied: i64,
    pub failed: i64,
    pub unknown: i64,
    pub skipped: i64,
    pub dry_run_planned: i64,
    pub cases: i64,
}

impl GroupCount {
    /// A group of no rows.
    pub fn named(name: &str) -> GroupCount {
        GroupCount {
            name: name.to_string(),
            ..GroupCount::default()
        }
    }

    /// Adds another group's counts (its cases too, counted apart: a case in both counts twice).
    pub fn add(&mut self, o: &GroupCount) {
        self.applied += o.applied;
        self.failed += o.failed;
        self.unknown += o.unknown;
        self.skipped += o.skipped;
        self.dry_run_planned += o.dry_run_planned;
        self.cases += o.cases;
    }
}

/// How many passes one server ran in a period.
#[derive(Debug, Clone, FromRow, Serialize, PartialEq)]
pub struct PassTally {
    pub name: String,
    pub passes: i64,
}

/// A case and how much was done to it.
#[derive(Debug, Clone, FromRow, Serialize, PartialEq)]
pub struct CaseCount {
    pub case_id: String,
    pub ticket_id: Option<i64>,
    /// Changes applied to it (skips and plans are not touches).
    pub rows: i64,
    pub rules: i64,
    pub last_at: String,
}

/// One step of a case's timeline: what a rule wanted and what became of it.
#[derive(Debug, Clone, FromRow, Serialize, PartialEq)]
pub struct Step {
    pub seq: i64,
    pub case_id: String,
    pub ticket_id: Option<i64>,
    pub recorded_at: String,
    pub run_id: String,
    pub rule: String,
    pub field: String,
    pub old: Option<String>,
    pub new: Option<String>,
    pub reason: String,
    pub outcome: String,
    pub dry_run: bool,
    pub error: Option<String>,
}

/// `WHERE` conditions over `passes` by start time, and their values.
fn pass_conditions(p: &Period) -> (String, Vec<String>) {
    let mut sql = String::from("1 = 1");
    let mut binds = Vec::new();
    for (cond, value) in [
        (" AND started_at >= ?", &p.since),
        (" AND started_at <= ?", &p.until),
    ] {
        if let Some(v) = value {
            sql.push_str(cond);
            binds.push(v.clone());
        }
    }
    (sql, binds)
}

/// Rows that say what happened (not intents still open): the outcome rows, dry-run
/// plans, and the rule rows.
const SETTLED: &str = "(e.outcome != 'planned' OR e.dry_run)";

impl AuditStore {
    pub async fn day_counts(&self, p: &Period) -> Result<Vec<DayCount>, AuditError> {
        let (cond, binds) = p.conditions("e");
        let sql = format!(
            "SELECT rule, substr(recorded_at, 1, 10) AS day, \
             CASE WHEN field = 'rule' AND new = '{HALTED_ROW}' THEN 'guard' \
                  WHEN field = 'rule' THEN COALESCE(new, '') \
                  ELSE 'change' END AS kind, \
             outcome, dry_run, COUNT(*) AS rows, COUNT(DISTINCT run_id) AS passes, \
             SUM(CASE WHEN field = 'rule' AND new = 'errors' THEN CAST(old AS INTEGER) ELSE 0 END) AS cases \
             FROM events e WHERE {cond} AND field NOT IN ('plan', 'case', 'summary', 'pass', 'chain') GROUP BY rule, day, kind, outcome, dry_run ORDER BY rule, day"
        );
        self.all(sql, binds).await
    }

    pub async fn rule_versions(&self, p: &Period) -> Result<Vec<RuleVersion>, AuditError> {
        let (cond, binds) = p.conditions("e");
        let sql = format!(
            "SELECT rule, rule_hash, MIN(recorded_at) AS first_seen, MAX(recorded_at) AS last_seen, \
             COUNT(*) AS rows FROM events e WHERE {cond} AND field NOT IN ('plan', 'case', 'summary', 'pass', 'chain') GROUP BY rule, rule_hash ORDER BY rule, first_seen"
        );
        self.all(sql, binds).await
    }

    /// The most frequent (rule, error) pairs of failed changes.
    pub async fn failure_groups(
        &self,
        p: &Period,
        limit: i64,
    ) -> Result<Vec<FailureGroup>, AuditError> {
        let (cond, binds) = p.conditions("e");
        let sql = format!(
            "SELECT rule, COALESCE(error, '') AS error, COUNT(*) AS rows, MAX(recorded_at) AS last_at, \
             MAX(case_id) AS example_case, MAX(ticket_id) AS ticket_id FROM events e \
             WHERE {cond} AND outcome IN ('failed', 'unknown') AND field != 'rule' \
             GROUP BY rule, error ORDER BY rows DESC, rule LIMIT {limit}"
        );
        self.all(sql, binds).await
    }

    /// Per customer: its changes by outcome and the cases they touched; cases that name
    /// no customer are the group with an empty name.
    pub async fn tenant_counts(&self, p: &Period) -> Result<Vec<GroupCount>, AuditError> {
        self.counts_by("COALESCE(tenant, '')", p).await
    }

    /// The same per server (rows from before instances were recorded count as `default`).
    pub async fn instance_counts(&self, p: &Period) -> Result<Vec<GroupCount>, AuditError> {
        self.counts_by("COALESCE(instance, 'default')", p).await
    }

    /// The same per pass.
    pub async fn pass_counts(&self, p: &Period) -> Result<Vec<GroupCount>, AuditError> {
        self.counts_by("run_id", p).await
    }

    /// How many passes each server ran in the period.
    pub async fn passes_by_server(&self, p: &Period) -> Result<Vec<PassTally>, AuditError> {
        let (cond, binds) = pass_conditions(p);
        let sql = format!(
            "SELECT COALESCE(instance, 'default') AS name, COUNT(*) AS passes FROM passes \
             WHERE {cond} GROUP BY 1 ORDER BY 1"
        );
        self.all(sql, binds).await
    }

    /// The passes of the period that failed (stopped on an error, or with failed changes),
    /// newest first.
    pub async fn failed_passes(&self, p: &Period, limit: i64) -> Result<Vec<PassRow>, AuditError> {
        let (cond, binds) = pass_conditions(p);
        let sql = format!(
            "SELECT * FROM passes WHERE {cond} AND status IN ('error', 'failed-changes') \
             ORDER BY started_at DESC, id DESC LIMIT {limit}"
        );
        self.all(sql, binds).await
    }

    async fn counts_by(&self, key: &str, p: &Period) -> Result<Vec<GroupCount>, AuditError> {
        let (cond, binds) = p.conditions("e");
        let sql = format!(
            "SELECT {key} AS name, \
             COUNT(*) FILTER (WHERE outcome = 'applied' AND NOT dry_run) AS applied, \
             COUNT(*) FILTER (WHERE outcome = 'failed' AND NOT dry_run) AS failed, \
             COUNT(*) FILTER (WHERE outcome = 'unknown' AND NOT dry_run) AS unknown, \
             COUNT(*) FILTER (WHERE outcome = 'skipped' AND NOT dry_run) AS skipped, \
             COUNT(*) FILTER (WHERE outcome = 'planned' AND dry_run) AS dry_run_planned, \
             COUNT(DISTINCT case_id) AS cases FROM events e \
             WHERE {cond} AND (outcome != 'planned' OR dry_run) \
             AND field NOT IN ('rule', 'plan', 'case', 'summary', 'pass', 'chain') GROUP BY 1 ORDER BY 1"
        );
        self.all(sql, binds).await
    }

    /// The cases the most was done to.
    pub async fn busiest_cases(
        &self,
        p: &Period,
        limit: i64,
    ) -> Result<Vec<CaseCount>, AuditError> {
        let (cond, binds) = p.conditions("e");
        let sql = format!(
            "SELECT case_id, MAX(ticket_id) AS ticket_id, COUNT(*) AS rows, COUNT(DISTINCT rule) AS rules, \
             MAX(recorded_at) AS last_at FROM events e WHERE {cond} AND field NOT IN ('rule', 'plan', 'case', 'summary', 'pass', 'chain') \
             AND outcome = 'applied' GROUP BY case_id ORDER BY rows DESC, case_id LIMIT {limit}"
        );
        self.all(sql, binds).await
    }

    /// The timelines of `cases`: each outcome with the old, new and reason of the plan it
    /// settles.
    pub async fn timelines(&self, p: &Period, cases: &[String]) -> Result<Vec<Step>, AuditError> {
        let mut out = Vec::new();
        for chunk in cases.chunks(500) {
            let (cond, mut binds) = p.conditions("e");
            let sql = format!(
                "SELECT e.seq, e.case_id, e.ticket_id, e.recorded_at, e.run_id, e.rule, e.field, \
                 COALESCE(e.old, p.old) AS old, COALESCE(e.new, p.new) AS new, \
                 CASE WHEN e.reason = '' THEN COALESCE(p.reason, '') ELSE e.reason END AS reason, \
                 e.outcome, e.dry_run, e.error FROM events e LEFT JOIN events p ON p.seq = e.planned_seq \
                 WHERE {cond} AND {SETTLED} AND e.case_id IN ({}) ORDER BY e.seq",
                vec!["?"; chunk.len()].join(", ")
            );
            binds.extend(chunk.iter().cloned());
            out.extend(self.all::<Step>(sql, binds).await?);
        }
        Ok(out)
    }

    /// Passes that started in the period, newest first, at most `limit`.
    pub async fn passes_in(&self, p: &Period, limit: i64) -> Result<Vec<PassRow>, AuditError> {
        let (cond, binds) = pass_conditions(p);
        let sql = format!(
            "SELECT * FROM passes WHERE {cond} ORDER BY started_at DESC, id DESC LIMIT {limit}"
        );
        self.all(sql, binds).await
    }

    /// How many passes started in the period.
    pub async fn pass_count(&self, p: &Period) -> Result<i64, AuditError> {
        let (cond, binds) = pass_conditions(p);
        let rows: Vec<(i64,)> = self
            .all(format!("SELECT COUNT(*) FROM passes WHERE {cond}"), binds)
            .await?;
        Ok(rows.first().map_or(0, |r| r.0))
    }

    async fn all<T>(&self, sql: String, binds: Vec<String>) -> Result<Vec<T>, AuditError>
    where
        T: for<'r> FromRow<'r, sqlx::sqlite::SqliteRow>
            + for<'r> FromRow<'r, sqlx::postgres::PgRow>
            + Send
            + Unpin,
    {
        let sql = numbered(&sql);
        Ok(on_pool!(&self.pool, |pool| {
            let mut q = sqlx::query_as::<_, T>(AssertSqlSafe(sql));
            for b in binds {
                q = q.bind(b);
            }
            q.fetch_all(pool).await?
        }))
    }
}
