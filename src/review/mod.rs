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
use crate::config::DEFAULT_INSTANCE;

pub use html::render;

/// Most passes a report lists (the newest); the totals count them all.
const MAX_PASSES: i64 = 2_000;
/// The busiest cases listed, each with its timeline.
const BUSIEST: i64 = 100;
/// Failure groups listed.
const FAILURES: i64 = 100;

/// Where a review comes from, for its header, and what the config holds: every server and
/// every rule is listed, with nothing to show or not.
#[derive(Debug, Clone, Serialize)]
pub struct Source {
    pub servers: Vec<ServerRef>,
    pub audit_db: String,
    /// The configured rules (a rule of no row in the period is listed with zeros).
    #[serde(skip)]
    pub rules: Vec<String>,
}

impl Source {
    /// The servers of `config` (none without one), its rules and the log's location.
    pub fn new(
        config: Option<&crate::config::Settings>,
        rules: Vec<String>,
        audit_db: String,
    ) -> Source {
        let servers = config.map(|c| c.servers()).unwrap_or_default();
        Source {
            servers: servers
                .iter()
                .map(|s| ServerRef {
                    name: s.instance_name().to_string(),
                    url: s.url.clone(),
                })
                .collect(),
            audit_db,
            rules,
        }
    }
}

/// A configured server: its instance name and URL.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ServerRef {
    pub name: String,
    pub url: String,
}

/// One server's part of the period: its changes, its passes and the ones that failed.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ServerReview {
    pub name: String,
    /// None: the log names a server the config no longer has.
    pub url: Option<String>,
    #[serde(flatten)]
    pub counts: GroupCount,
    pub passes: i64,
    /// Its failed passes (newest first), each with its error.
    pub failed_passes: Vec<FailedPass>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FailedPass {
    pub id: String,
    pub started_at: String,
    pub status: String,
    pub error: Option<String>,
    pub failed: i64,
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
    /// The server it ran on.
    pub instance: String,
    pub cases_seen: i64,
    /// Its rows in the period, counted as the totals are.
    pub applied: i64,
    pub failed: i64,
    pub unknown: i64,
    pub skipped: i64,
    pub dry_run_planned: i64,
    pub error: Option<String>,
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
    /// The rows of the period's passes not listed (beyond the newest 2,000, or started
    /// before the period): with `passes` they add up to the totals.
    pub passes_not_listed: GroupCount,
    pub failures: Vec<FailureGroup>,
    /// Changes per customer (`name` the `cust_id`, empty for cases naming none).
    pub tenants: Vec<GroupCount>,
    /// Changes per server.
    pub instances: Vec<GroupCount>,
    /// Each server: its changes, passes and failed passes with their errors.
    pub servers: Vec<ServerReview>,
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
        let (mut rules, totals) = rule_reviews(store, period).await?;
        add_idle_rules(&mut rules, &source.rules, period);
        let passes_total = store.pass_count(period).await? as usize;
        let (passes, passes_not_listed) = pass_reviews(store, period).await?;
        let failures = store.failure_groups(period, FAILURES).await?;
        let mut tenants = store.tenant_counts(period).await?;
        let names = store.customer_names().await?;
        for t in &mut tenants {
            t.cust_name = names.get(&t.name).filter(|n| !n.is_empty()).cloned();
        }
        let instances = store.instance_counts(period).await?;
        let servers = server_reviews(store, period, &source.servers, &instances).await?;
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
            passes_not_listed,
            failures,
            tenants,
            instances,
            servers,
            busiest_cases,
            timelines,
        })
    }
}

/// The newest passes of the period, each with its rows' counts, and the counts of the rows
/// of passes not listed.
async fn pass_reviews(
    store: &AuditStore,
    period: &Period,
) -> Result<(Vec<PassReview>, GroupCount), AuditError> {
    let mut counts: BTreeMap<String, GroupCount> = store
        .pass_counts(period)
        .await?
        .into_iter()
        .map(|c| (c.name.clone(), c))
        .collect();
    let listed: Vec<PassRow> = store.passes_in(period, MAX_PASSES).await?;
    let reviews = listed
        .iter()
        .map(|p| review_of(p, counts.get(&p.id)))
        .collect();
    for p in &listed {
        counts.remove(&p.id);
    }
    let mut rest = GroupCount::named("(not listed)");
    for c in counts.values() {
        rest.add(c);
    }
    Ok((reviews, rest))
}

/// A pass as the review lists it, with its rows' counts.
fn review_of(p: &PassRow, c: Option<&GroupCount>) -> PassReview {
    let n = |f: fn(&GroupCount) -> i64| c.map_or(0, f);
    PassReview {
        seconds: p
            .finished_at
            .as_deref()
            .and_then(|f| seconds_between(&p.started_at, f)),
        applied: n(|c| c.applied),
        failed: n(|c| c.failed),
        unknown: n(|c| c.unknown),
        skipped: n(|c| c.skipped),
        dry_run_planned: n(|c| c.dry_run_planned),
        instance: p
            .instance
            .clone()
            .unwrap_or_else(|| DEFAULT_INSTANCE.to_string()),
        id: p.id.clone(),
        started_at: p.started_at.clone(),
        finished_at: p.finished_at.clone(),
        status: p.totals.status.clone(),
        trigger: p.trigger_kind.clone(),
        dry_run: p.dry_run,
        cases_seen: p.totals.cases_seen,
        error: p.totals.error.clone(),
    }
}

/// Every configured server, then any other the period's rows or passes name.
async fn server_reviews(
    store: &AuditStore,
    period: &Period,
    configured: &[ServerRef],
    counts: &[GroupCount],
) -> Result<Vec<ServerReview>, AuditError> {
    let passes = store.passes_by_server(period).await?;
    let failed = store.failed_passes(period, FAILURES).await?;
    let mut names: Vec<String> = configured.iter().map(|s| s.name.clone()).collect();
    let seen = counts
        .iter()
        .map(|c| &c.name)
        .chain(passes.iter().map(|p| &p.name));
    for name in seen {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    Ok(names
        .into_iter()
        .map(|name| {
            let of = |p: &PassRow| p.instance.as_deref().unwrap_or(DEFAULT_INSTANCE) == name;
            ServerReview {
                url: configured
                    .iter()
                    .find(|s| s.name == name)
                    .map(|s| s.url.clone()),
                counts: counts
                    .iter()
                    .find(|c| c.name == name)
                    .cloned()
                    .unwrap_or_else(|| GroupCount::named(&name)),
                passes: passes
                    .iter()
                    .find(|p| p.name == name)
                    .map_or(0, |p| p.passes),
                failed_passes: failed
                    .iter()
                    .filter(|p| of(p))
                    .map(|p| FailedPass {
                        id: p.id.clone(),
                        started_at: p.started_at.clone(),
                        status: p.totals.status.clone(),
                        error: p.totals.error.clone(),
                        failed: p.totals.failed,
                    })
                    .collect(),
                name,
            }
        })
        .collect())
}

/// The configured rules that left no row in the period, listed with zeros (unless the
/// review is of one rule).
fn add_idle_rules(rules: &mut Vec<RuleReview>, configured: &[String], period: &Period) {
    for name in configured {
        let asked = period.rule.as_ref().is_none_or(|r| r == name);
        if asked && !rules.iter().any(|r| &r.rule == name) {
            rules.push(RuleReview {
                rule: name.clone(),
                counts: Counts::default(),
                days: Vec::new(),
                versions: Vec::new(),
            });
        }
    }
    rules.sort_by(|a, b| a.rule.cmp(&b.rule));
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
            ("change", "failed", false) => {
                c.failed += d.rows;
                day.failed += d.rows;
            }
            ("change", "skipped", false) => {
                c.skipped += d.rows;
                day.skipped += d.rows;
            }
            ("change", "unknown", false) => c.unknown += d.rows,
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
