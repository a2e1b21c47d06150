//! Audit review for people: the numbers of a period of the log (per rule, per day, per
//! pass, failures, the busiest cases with their timelines), rendered as one self-contained
//! HTML page (`casewarden report`, the live view at `daemon.listen`) or as JSON with the
//! same numbers.

mod html;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::audit::{
    AuditError, AuditStore, CaseCount, FailureGroup, GroupCount, Keyed, PassRow, Period,
    RuleVersion, Step, Verification,
};

pub use html::render;

/// Most passes a report lists (the newest); the totals count them all.
const MAX_PASSES: i64 = 2_000;
/// The busiest cases listed, each with its timeline.
const BUSIEST: i64 = 100;
/// Failure groups listed.
const FAILURES: i64 = 100;

/// Where a review comes from, for its header.
#[derive(Debug, Clone, Serialize)]
pub struct Source {
    pub server_url: String,
    pub audit_db: String,
}

/// The result of `audit verify` when the review was made.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Integrity {
    pub intact: bool,
    pub rows: u64,
    pub head: Option<String>,
    pub problem: Option<String>,
}

/// Counts of one rule (or of all rules, in [`Review::totals`]).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Counts {
    pub applied: i64,
    pub failed: i64,
    pub skipped: i64,
    pub unknown: i64,
    /// Intents recorded (live passes).
    pub planned: i64,
    /// Changes planned by dry runs and shadow rules, never sent.
    pub dry_run_planned: i64,
    /// Passes in which the blast-radius guard halted the rule.
    pub guard_halts: i64,
    /// Times the circuit breaker disabled the rule.
    pub breaker_trips: i64,
    /// Cases the rule failed on (evaluation errors), over all passes.
    pub rule_errors: i64,
    /// Values another automation set back that casewarden yielded to.
    pub automation_yields: i64,
    /// Fights with another automation casewarden stopped.
    pub fights: i64,
}

/// One day of one rule's changes.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Day {
    pub day: String,
    pub applied: i64,
    pub failed: i64,
    pub skipped: i64,
    pub dry_run_planned: i64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RuleReview {
    pub rule: String,
    #[serde(flatten)]
    pub counts: Counts,
    pub days: Vec<Day>,
    /// Each version of the rule's file (SHA-256) with when its rows started and stopped:
    /// more than one means the rule was edited in the period.
    pub versions: Vec<RuleVersion>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PassReview {
    pub id: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub seconds: Option<f64>,
    pub status: String,
    pub trigger: String,
    pub dry_run: bool,
    pub cases_seen: i64,
    pub applied: i64,
    pub failed: i64,
    pub skipped: i64,
}

/// Everything a report shows.
#[derive(Debug, Clone, Serialize)]
pub struct Review {
    pub generated_at: String,
    pub version: String,
    pub source: Source,
    pub since: Option<String>,
    pub until: Option<String>,
    pub rule: Option<String>,
    pub integrity: Integrity,
    pub totals: Counts,
    pub rules: Vec<RuleReview>,
    /// The newest passes (at most 2,000) and how many there were in all.
    pub passes: Vec<PassReview>,
    pub passes_total: usize,
    pub failures: Vec<FailureGroup>,
    /// Changes per customer, when the rows name customers.
    pub tenants: Vec<GroupCount>,
    /// Changes per server (`tenant` holds the instance name).
    pub instances: Vec<GroupCount>,
    pub busiest_cases: Vec<CaseCount>,
    /// The busiest and failed cases' timelines, by case id.
    pub timelines: BTreeMap<String, Vec<Step>>,
}

impl Review {
    /// Reads the numbers of `period` from `store` and verifies the chain.
    pub async fn build(
        store: &AuditStore,
        period: &Period,
        source: Source,
    ) -> Result<Review, AuditError> {
        let integrity = integrity(store).await?;
        Review::build_with(store, period, source, integrity).await
    }

    /// Reads the numbers of `period` from `store`, with the chain's `integrity` as
    /// verified already.
    pub async fn build_with(
        store: &AuditStore,
        period: &Period,
        source: Source,
        integrity: Integrity,
    ) -> Result<Review, AuditError> {
        let (rules, totals) = rule_reviews(store, period).await?;
        let passes_total = store.pass_count(period).await? as usize;
        let passes = store
            .passes_in(period, MAX_PASSES)
            .await?
            .into_iter()
            .map(PassReview::from)
            .collect();
        let failures = store.failure_groups(period, FAILURES).await?;
        let tenants = store.tenant_counts(period).await?;
        let instances = store.instance_counts(period).await?;
        let busiest_cases = store.busiest_cases(period, BUSIEST).await?;
        let timelines = timelines(store, period, &busiest_cases, &failures).await?;
        Ok(Review {
            generated_at: crate::time::timestamp(chrono::Utc::now()),
            version: env!("CARGO_PKG_VERSION").to_string(),
            source,
            since: period.since.clone(),
            until: period.until.clone(),
            rule: period.rule.clone(),
            integrity,
            totals,
            rules,
            passes,
            passes_total,
            failures,
            tenants,
            instances,
            busiest_cases,
            timelines,
        })
    }
}

impl From<PassRow> for PassReview {
    fn from(p: PassRow) -> PassReview {
        PassReview {
            seconds: p
                .finished_at
                .as_deref()
                .and_then(|f| seconds_between(&p.started_at, f)),
            id: p.id,
            started_at: p.started_at,
            finished_at: p.finished_at,
            status: p.totals.status,
            trigger: p.trigger_kind,
            dry_run: p.dry_run,
            cases_seen: p.totals.cases_seen,
            applied: p.totals.applied,
            failed: p.totals.failed,
            skipped: p.totals.skipped,
        }
    }
}

/// What `audit verify` says of the whole chain now.
pub async fn integrity(store: &AuditStore) -> Result<Integrity, AuditError> {
    Ok(match store.verify().await? {
        Verification::Intact { rows, head, keyed } => Integrity {
            intact: true,
            rows,
            head: Some(head),
            problem: match keyed {
                Keyed::Unproven { from, key, .. } => Some(format!(
                    "rows from {from} on are keyed with key id {key}, which was not given: their content was not checked"
                )),
                _ => None,
            },
        },
        Verification::Broken {
            seq,
            rows_checked,
            problem,
        } => Integrity {
            intact: false,
            rows: rows_checked,
            head: None,
            problem: Some(format!("row {seq}: {problem}")),
        },
        Verification::BrokenPass { id, problem } => Integrity {
            intact: false,
            rows: 0,
            head: store.head().await.ok().map(|(_, h)| h),
            problem: Some(format!("pass {id}: {problem}")),
        },
    })
}

/// The timelines of the busiest cases and of each failure group's example, by case id.
async fn timelines(
    store: &AuditStore,
    period: &Period,
    busiest: &[CaseCount],
    failures: &[FailureGroup],
) -> Result<BTreeMap<String, Vec<Step>>, AuditError> {
    let mut wanted: Vec<String> = busiest.iter().map(|c| c.case_id.clone()).collect();
    for f in failures {
        if !wanted.contains(&f.example_case) {
            wanted.push(f.example_case.clone());
        }
    }
    let mut timelines: BTreeMap<String, Vec<Step>> = BTreeMap::new();
    for step in store.timelines(period, &wanted).await? {
        timelines
            .entry(step.case_id.clone())
            .or_default()
            .push(step);
    }
    Ok(timelines)
}

/// Per rule and in total: changes by outcome and day, guard halts, breaker trips, rule
/// errors and the versions of each rule's file.
pub async fn rule_reviews(
    store: &AuditStore,
    period: &Period,
) -> Result<(Vec<RuleReview>, Counts), AuditError> {
    let mut rules: BTreeMap<String, RuleReview> = BTreeMap::new();
    let mut days: BTreeMap<(String, String), Day> = BTreeMap::new();
    for d in store.day_counts(period).await? {
        let r = rules.entry(d.rule.clone()).or_insert_with(|| RuleReview {
            rule: d.rule.clone(),
            counts: Counts::default(),
            days: Vec::new(),
            versions: Vec::new(),
        });
        let c = &mut r.counts;
        let day = days
            .entry((d.rule.clone(), d.day.clone()))
            .or_insert_with(|| Day {
                day: d.day.clone(),
                ..Day::default()
            });
        match (d.kind.as_str(), d.outcome.as_str(), d.dry_run) {
            ("guard", _, _) => c.guard_halts += d.passes,
            ("disabled", _, _) => c.breaker_trips += d.rows,
            ("errors", _, _) => c.rule_errors += d.cases,
            ("yield", _, _) => c.automation_yields += d.rows,
            ("fight", _, _) => c.fights += d.rows,
            ("change", "planned", true) => {
                c.dry_run_planned += d.rows;
                day.dry_run_planned += d.rows;
            }
            ("change", "planned", false) => c.planned += d.rows,
            ("change", "applied", _) => {
                c.applied += d.rows;
                day.applied += d.rows;
            }
            ("change", "failed", _) => {
                c.failed += d.rows;
                day.failed += d.rows;
            }
            ("change", "skipped", false) => {
                c.skipped += d.rows;
                day.skipped += d.rows;
            }
            ("change", "unknown", _) => c.unknown += d.rows,
            _ => {}
        }
    }
    for ((rule, _), day) in days {
        if let Some(r) = rules.get_mut(&rule) {
            r.days.push(day);
        }
    }
    for v in store.rule_versions(period).await? {
        if let Some(r) = rules.get_mut(&v.rule) {
            r.versions.push(v);
        }
    }
    let mut totals = Counts::default();
    for r in rules.values() {
        let c = &r.counts;
        totals.applied += c.applied;
        totals.failed += c.failed;
        totals.skipped += c.skipped;
        totals.unknown += c.unknown;
        totals.planned += c.planned;
        totals.dry_run_planned += c.dry_run_planned;
        totals.guard_halts += c.guard_halts;
        totals.breaker_trips += c.breaker_trips;
        totals.rule_errors += c.rule_errors;
        totals.automation_yields += c.automation_yields;
        totals.fights += c.fights;
    }
    Ok((rules.into_values().collect(), totals))
}

fn seconds_between(start: &str, end: &str) -> Option<f64> {
    let s = chrono::DateTime::parse_from_rfc3339(start).ok()?;
    let e = chrono::DateTime::parse_from_rfc3339(end).ok()?;
    Some((e - s).num_milliseconds() as f64 / 1000.0)
}
