//! What follows each pass of the daemon: its numbers in the metrics, its status for
//! systemd, notifications, and the circuit breaker.

use std::time::Duration;

use super::{Shared, systemd};
use crate::audit::row;
use crate::metrics::{ChangeLabels, Metrics, RuleLabels, StatusLabel};
use crate::notify::events;
use crate::pass::{PassContext, PassReport};
use crate::rules::RuleSet;

/// Metrics, systemd status, notices and the circuit breaker after a pass on the server
/// of `ctx`.
pub(super) async fn pass(
    shared: &Shared,
    ctx: &PassContext,
    set: &RuleSet,
    report: &PassReport,
    took: Duration,
) {
    let m = &shared.metrics;
    count_pass(m, report, took);
    if !report.status.is_broken() {
        let now = std::time::SystemTime::now();
        shared.state().last_good = Some(now);
        let secs = now
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        m.last_success.set(secs as i64);
    }
    count_changes(m, report);
    systemd::status(&format!(
        "last pass {}: {}, {} cases, {} applied, {} failed",
        report.run_id, report.status, report.cases_seen, report.applied, report.failed
    ));
    let newly_disabled = shared.state().breaker.record(&report.rules, |name| {
        set.rules
            .iter()
            .find(|r| r.name == name)
            .map(|r| r.source_hash.clone())
    });
    shared.notifier.tell_pass(ctx, report, true).await;
    for name in newly_disabled {
        disable(shared, ctx, set, report, &name).await;
    }
    m.rules_disabled
        .set(shared.state().breaker.disabled_count() as i64);
}

/// The pass, its duration and its rules' errors.
fn count_pass(m: &Metrics, report: &PassReport, took: Duration) {
    let status = StatusLabel {
        status: report.status.to_string(),
    };
    m.passes.get_or_create(&status).inc();
    m.cases_seen.inc_by(report.cases_seen as u64);
    m.cases_remembered.inc_by(report.cases_remembered as u64);
    m.pass_duration.observe(took.as_secs_f64());
    for s in report.rules.iter().filter(|s| s.errors > 0) {
        let rule = RuleLabels {
            rule: s.name.clone(),
        };
        m.rule_errors.get_or_create(&rule).inc_by(s.errors as u64);
    }
}

/// Changes per rule and outcome, and per customer.
fn count_changes(m: &Metrics, report: &PassReport) {
    for s in &report.rules {
        for (outcome, n) in [
            ("applied", s.applied),
            ("failed", s.failed),
            ("skipped", s.skipped),
            ("deferred", s.deferred),
            ("exempt", s.exempt),
        ] {
            if n > 0 {
                let labels = ChangeLabels {
                    rule: s.name.clone(),
                    outcome: outcome.into(),
                    instance: report.instance.clone(),
                };
                m.changes.get_or_create(&labels).inc_by(n as u64);
            }
        }
    }
    for (tenant, counts) in &report.by_tenant {
        for (outcome, n) in ["applied", "failed", "skipped"].into_iter().zip(counts) {
            if *n > 0 {
                m.tenant_changes(&report.instance, tenant, outcome, *n as u64);
            }
        }
    }
}

/// A rule the circuit breaker just disabled: announced, and recorded (in the log of the
/// server whose pass tripped it) first so whoever reads the log line finds the row.
async fn disable(
    shared: &Shared,
    ctx: &PassContext,
    set: &RuleSet,
    report: &PassReport,
    name: &str,
) {
    let Some(rule) = set.rules.iter().find(|r| r.name == name) else {
        return;
    };
    let limit = shared.config.daemon.breaker_passes;
    shared
        .notifier
        .send(events::breaker_trip(name, &rule.file, limit));
    let event = row::rule_disabled(&report.run_id, name, &rule.source_hash, limit, &rule.file);
    if let Err(e) = ctx.audit.append(&[event]).await {
        tracing::error!(error = %e, "cannot record the disabled rule in the audit log");
    }
    tracing::error!(rule = %name, file = %rule.file.display(), passes = limit, "CIRCUIT BREAKER: rule failed on every case for {limit} passes in a row; disabled until its file changes");
}
