//! The notices a pass, the circuit breaker or a reload makes, the same from `run`, `once`,
//! `apply` and `revert`. Each names the server (instance and host), the rule and the pass;
//! lasting conditions carry an [`AlertKey`] so they are sent once per `realert` window and
//! resolved when they clear.

use std::path::Path;

use serde_json::{Value, json};

use super::{EventKind, Notice};
use crate::audit::AlertKey;
use crate::pass::{PassContext, PassReport, PassStatus};

/// Which server a pass ran on (its instance name and host), and the pass.
pub struct Server<'a> {
    pub instance: &'a str,
    pub host: &'a str,
    pub pass: &'a str,
}

impl Server<'_> {
    fn key(&self, event: EventKind, rule: &str) -> Option<AlertKey> {
        Some(AlertKey {
            event: event.as_str().to_string(),
            rule: rule.to_string(),
            instance: self.instance.to_string(),
        })
    }

    /// Where a notice happened: the text's prefix, and the details that carry it.
    pub fn mark(&self, text: &str, details: &mut Value) -> String {
        details["instance"] = json!(self.instance);
        details["server"] = json!(self.host);
        details["pass"] = json!(self.pass);
        format!("[{} {}] {text}", self.instance, self.host)
    }

    /// A notice about a pass on this server: the text begins with where it happened and
    /// the details carry it.
    fn notice(&self, event: EventKind, rule: &str, text: String, mut details: Value) -> Notice {
        let text = self.mark(&text, &mut details);
        if !rule.is_empty() {
            details["rule"] = json!(rule);
        }
        let key = match event {
            EventKind::Fight => None,
            _ => self.key(event, rule),
        };
        Notice {
            event,
            text,
            details,
            only: None,
            key,
        }
    }
}

/// Guard halts, a failed pass, an exhausted budget, an audit log that cannot be written,
/// another automation's fight.
pub fn after_pass(r: &PassReport, server: &Server<'_>) -> Vec<Notice> {
    let mut out = Vec::new();
    for rule in &r.rules {
        if rule.halted.is_some() {
            out.push(server.notice(
                EventKind::GuardHalt,
                &rule.name,
                format!(
                    "rule {} was halted by the blast-radius guard in pass {}: it wanted to change {} of {} cases; nothing it asked for was applied",
                    rule.name, r.run_id, rule.matched, r.cases_seen
                ),
                json!({"pass": r.run_id, "matched": rule.matched, "cases_seen": r.cases_seen}),
            ));
        } else if !rule.tenant_halts.is_empty() {
            let tenants: Vec<&str> = rule.tenant_halts.iter().map(|(t, _)| t.as_str()).collect();
            let why: Vec<&str> = rule.tenant_halts.iter().map(|(_, w)| w.as_str()).collect();
            out.push(server.notice(
                EventKind::GuardHalt,
                &rule.name,
                format!(
                    "rule {} was halted for customer(s) {} in pass {}: {}",
                    rule.name,
                    tenants.join(", "),
                    r.run_id,
                    why.join("; ")
                ),
                json!({"pass": r.run_id, "tenants": tenants, "why": why}),
            ));
        }
    }
    if matches!(r.status, PassStatus::Error | PassStatus::FailedChanges) {
        let why = match &r.error {
            Some(e) => format!("stopped: {e}"),
            None => format!("{} change(s) failed", r.failed),
        };
        out.push(server.notice(
            EventKind::PassFailed,
            "",
            format!("pass {} ended {}: {why}", r.run_id, r.status),
            json!({"pass": r.run_id, "status": r.status, "applied": r.applied, "failed": r.failed, "error": r.error}),
        ));
    }
    if r.budget_exhausted {
        out.push(server.notice(
            EventKind::BudgetExhausted,
            "",
            format!(
                "pass {}: the change budget ran out; {} change(s) wait for the next pass",
                r.run_id, r.deferred_changes
            ),
            json!({"pass": r.run_id, "deferred": r.deferred_changes}),
        ));
    }
    for c in &r.clashes {
        out.push(server.notice(
            EventKind::Fight,
            &c.clash.rule,
            format!("pass {}: {}", r.run_id, crate::pass::clash_text(c)),
            json!({"pass": r.run_id, "case_id": c.case_id, "ticket_id": c.ticket_id,
                   "field": c.clash.field.as_str(), "value": c.clash.value, "by": c.clash.by,
                   "outcome": c.clash.outcome.as_str()}),
        ));
    }
    if r.audit_failed {
        out.push(server.notice(
            EventKind::AuditFailure,
            "",
            format!(
                "pass {}: the audit log could not be written; no further change is sent until it can",
                r.run_id
            ),
            json!({"pass": r.run_id, "error": r.error}),
        ));
    }
    out
}

/// The conditions a pass looked at, so those that were firing and are no more are
/// resolved. Whether it failed, every pass says. Only a pass that planned a listing to its
/// end (`listed`, no error, not cut short) says whether its rules were halted, the budget
/// sufficed and the log took its rows; a pass of given plans (`apply`, `revert`) runs no
/// guard or budget.
pub fn evaluated(r: &PassReport, server: &Server<'_>, listed: bool) -> Vec<AlertKey> {
    let failed = server.key(EventKind::PassFailed, "");
    if !listed || r.error.is_some() || r.interrupted {
        return failed.into_iter().collect();
    }
    let whole = [EventKind::BudgetExhausted, EventKind::AuditFailure];
    let rules = r
        .rules
        .iter()
        .map(|s| (EventKind::GuardHalt, s.name.as_str()));
    let others = whole.into_iter().map(|e| (e, "")).chain(rules);
    failed
        .into_iter()
        .chain(others.filter_map(|(e, rule)| server.key(e, rule)))
        .collect()
}

impl super::Notifier {
    /// What a pass on `ctx` has to tell, and the alerts it found cleared (`listed`: a pass
    /// over the server's listing, not one of given plans).
    pub async fn tell_pass(&self, ctx: &PassContext, report: &PassReport, listed: bool) {
        let server = Server {
            instance: &ctx.instance,
            host: ctx.client.host(),
            pass: &report.run_id,
        };
        let notices = after_pass(report, &server);
        let evaluated = evaluated(report, &server, listed);
        self.settle(&ctx.audit, notices, &evaluated, Some(&server))
            .await;
    }
}

pub fn breaker_trip(rule: &str, file: &Path, passes: u32) -> Notice {
    Notice {
        event: EventKind::BreakerTrip,
        text: format!(
            "rule {rule} failed on every case it saw in {passes} passes in a row; the circuit breaker disabled it until {} changes",
            file.display()
        ),
        details: json!({"rule": rule, "file": file.display().to_string(), "passes": passes}),
        only: None,
        key: None,
    }
}

/// The key of a failed reload (the daemon's, on no server in particular).
pub fn reload_key() -> AlertKey {
    AlertKey {
        event: EventKind::ReloadFailed.as_str().to_string(),
        rule: String::new(),
        instance: String::new(),
    }
}

pub fn reload_failed(errors: usize, first: &str) -> Notice {
    Notice {
        event: EventKind::ReloadFailed,
        text: format!(
            "the rules could not be reloaded ({errors} error(s), first: {first}); the previous rules keep running"
        ),
        details: json!({"errors": errors, "first": first}),
        only: None,
        key: Some(reload_key()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pass::RuleStats;

    fn report(error: Option<&str>) -> PassReport {
        PassReport {
            rules: vec![RuleStats {
                name: "r".into(),
                ..RuleStats::default()
            }],
            error: error.map(str::to_string),
            ..PassReport::default()
        }
    }

    fn events(keys: Vec<AlertKey>) -> Vec<String> {
        keys.into_iter()
            .map(|k| format!("{} {}", k.event, k.rule))
            .collect()
    }

    #[test]
    fn only_a_pass_that_planned_its_listing_clears_guard_and_budget_alerts() {
        let server = Server {
            instance: "eu",
            host: "eu.example.com:443",
            pass: "p1",
        };
        let all = events(evaluated(&report(None), &server, true));
        assert_eq!(
            all,
            [
                "pass_failed ",
                "budget_exhausted ",
                "audit_failure ",
                "guard_halt r"
            ]
        );
        // A pass that stopped on an error, or one of given plans, ran no guard or budget.
        for (r, listed) in [
            (report(Some("listing failed")), true),
            (report(None), false),
        ] {
            assert_eq!(events(evaluated(&r, &server, listed)), ["pass_failed "]);
        }
    }
}
