//! What the daemon alone tells the `[[notify]]` targets: start and stop, and the daily
//! digest (a task per target that wants one).

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::task::JoinSet;

use super::Shared;
use crate::audit::Period;
use crate::notify::{EventKind, Notice};

fn notice(event: EventKind, text: String, details: serde_json::Value) -> Notice {
    Notice {
        event,
        text,
        details,
        only: None,
        key: None,
    }
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
        key: None,
    })
}
