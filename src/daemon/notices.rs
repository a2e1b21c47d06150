//! What the daemon tells the `[[notify]]` targets: notices made from a pass's report and
//! the breaker, start and stop, and the daily digest (a task per target that wants one).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::task::JoinSet;

use super::Shared;
use crate::audit::Period;
use crate::notify::{EventKind, Notice};
use crate::pass::{PassReport, PassStatus};

fn notice(event: EventKind, text: String, details: serde_json::Value) -> Notice {
    Notice {
        event,
        text,
        details,
        only: None,
    }
}

/// Guard halts, a failed pass, an exhausted budget, an audit log that cannot be written.
pub(super) fn after_pass(r: &PassReport) -> Vec<Notice> {
    let mut out = Vec::new();
    for rule in r.rules.iter().filter(|s| s.halted.is_some()) {
        out.push(notice(
            EventKind::GuardHalt,
            format!(
                "rule {} was halted by the blast-radius guard in pass {}: it wanted to change {} of {} cases; nothing it asked for was applied",
                rule.name, r.run_id, rule.matched, r.cases_seen
            ),
            json!({"rule": rule.name, "pass": r.run_id, "matched": rule.matched, "cases_seen": r.cases_seen}),
        ));
    }
    for rule in &r.rules {
        for (tenant, why) in &rule.tenant_halts {
            out.push(notice(
                EventKind::GuardHalt,
                format!(
                    "rule {} was halted for customer {tenant} in pass {}: {why}",
                    rule.name, r.run_id
                ),
                json!({"rule": rule.name, "pass": r.run_id, "tenant": tenant, "why": why}),
            ));
        }
    }
    if matches!(r.status, PassStatus::Error | PassStatus::FailedChanges) {
        let why = match &r.error {
            Some(e) => format!("stopped: {e}"),
            None => format!("{} change(s) failed", r.failed),
        };
        out.push(notice(
            EventKind::PassFailed,
            format!("pass {} ended {}: {why}", r.run_id, r.status),
            json!({"pass": r.run_id, "status": r.status, "applied": r.applied, "failed": r.failed, "error": r.error}),
        ));
    }
    if r.budget_exhausted {
        out.push(notice(
            EventKind::BudgetExhausted,
            format!(
                "pass {}: the change budget ran out; {} change(s) wait for the next pass",
                r.run_id, r.deferred_changes
            ),
            json!({"pass": r.run_id, "deferred": r.deferred_changes}),
        ));
    }
    for c in &r.clashes {
        out.push(notice(
            EventKind::Fight,
            format!("pass {}: {}", r.run_id, crate::pass::clash_text(c)),
            json!({"pass": r.run_id, "rule": c.clash.rule, "case_id": c.case_id, "ticket_id": c.ticket_id,
                   "field": c.clash.field.as_str(), "value": c.clash.value, "by": c.clash.by,
                   "outcome": c.clash.outcome.as_str()}),
        ));
    }
    if r.audit_failed {
        out.push(notice(
            EventKind::AuditFailure,
            format!(
                "pass {}: the audit log could not be written; no further change is sent until it can",
                r.run_id
            ),
            json!({"pass": r.run_id, "error": r.error}),
        ));
    }
    out
}

pub(super) fn breaker_trip(rule: &str, file: &Path, passes: u32) -> Notice {
    notice(
        EventKind::BreakerTrip,
        format!(
            "rule {rule} failed on every case it saw in {passes} passes in a row; the circuit breaker disabled it until {} changes",
            file.display()
        ),
        json!({"rule": rule, "file": file.display().to_string(), "passes": passes}),
    )
}

pub(super) fn started(shared: &Shared) -> Notice {
    let c = &shared.config;
    let mode = if c.daemon.dry_run { "dry run" } else { "live" };
    let rules = shared.state().rules.rules.len();
    notice(
        EventKind::DaemonStart,
        format!(
            "casewarden {} started ({mode}, {rules} rule(s)) for {}",
            env!("CARGO_PKG_VERSION"),
            c.stellar.url
        ),
        json!({"version": env!("CARGO_PKG_VERSION"), "mode": mode, "rules": rules, "server": c.stellar.url}),
    )
}

pub(super) fn stopped(code: u8) -> Notice {
    notice(
        EventKind::DaemonStop,
        format!("casewarden stopped (exit {code})"),
        json!({"exit_code": code}),
    )
}

/// One task per target with `daily_digest`: at each `digest_schedule` time, the counts of
/// the last 24 hours per rule.
pub(super) fn digests(shared: &Arc<Shared>) -> JoinSet<()> {
    let mut tasks = JoinSet::new();
    for (i, n) in shared.config.notify.iter().enumerate() {
        if !n.events.contains(&EventKind::DailyDigest) {
            continue;
        }
        let cron = n.digest_schedule.cron().clone();
        let shared = shared.clone();
        tasks.spawn(async move {
            loop {
                let now = chrono::Utc::now();
                let Ok(next) = cron.find_next_occurrence(&now, false) else {
                    return;
                };
                let wait = (next - now).to_std().unwrap_or(Duration::ZERO);
                tokio::time::sleep(wait).await;
                // Replicas share one log: the leader alone tells about it.
                if !shared.leader.may_run() {
                    continue;
                }
                match digest(&shared, i).await {
                    Ok(n) => shared.notifier.send(n),
                    Err(e) => tracing::error!(error = %e, "cannot read the audit log for the daily digest"),
                }
            }
        });
    }
    tasks
}

async fn digest(shared: &Shared, target: usize) -> Result<Notice, crate::audit::AuditError> {
    let now = chrono::Utc::now();
    let period = Period {
        since: Some(crate::time::timestamp(now - chrono::Duration::hours(24))),
        until: Some(crate::time::timestamp(now)),
        rule: None,
    };
    let (rules, totals) = crate::review::rule_reviews(&shared.ctx.audit, &period).await?;
    let passes = shared.ctx.audit.pass_count(&period).await?;
    let link = shared
        .config
        .daemon
        .listen
        .as_ref()
        .map(|l| format!("http://{l}/?since=24h"));
    let per_rule: Vec<String> = rules
        .iter()
        .map(|r| {
            let c = &r.counts;
            format!(
                "{}: {} applied, {} failed, {} skipped{}{}{}",
                r.rule,
                c.applied,
                c.failed,
                c.skipped,
                if c.guard_halts > 0 {
                    format!(", halted in {} pass(es)", c.guard_halts)
                } else {
                    String::new()
                },
                if c.breaker_trips > 0 {
                    ", disabled by the breaker".to_string()
                } else {
                    String::new()
                },
                if c.rule_errors > 0 {
                    format!(", failed on {} case(s)", c.rule_errors)
                } else {
                    String::new()
                },
            )
        })
        .collect();
    let text = format!(
        "daily digest, last 24h: {} change(s) applied, {} failed, over {passes} pass(es).{}{}",
        totals.applied,
        totals.failed,
        if per_rule.is_empty() {
            String::new()
        } else {
            format!("\n{}", per_rule.join("\n"))
        },
        link.as_ref()
            .map(|l| format!("\nLive view: {l}"))
            .unwrap_or_default()
    );
    let rules_json: Vec<serde_json::Value> = rules
        .iter()
        .map(|r| {
            let mut v = serde_json::to_value(&r.counts).unwrap_or_default();
            v["rule"] = json!(r.rule);
            v
        })
        .collect();
    Ok(Notice {
        event: EventKind::DailyDigest,
        text,
        details: json!({
            "since": period.since, "until": period.until, "passes": passes,
            "totals": totals, "rules": rules_json, "link": link,
        }),
        only: Some(target),
    })
}
