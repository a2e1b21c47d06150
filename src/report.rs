//! Pass summaries and plans as people read them; the CLI and the demo both print with these.

use std::collections::BTreeMap;
use std::io::Write;

use crate::pass::PassReport;
use crate::plan::{CasePlan, Field};
use crate::stellar::Client;

/// A dry run's report gets the people its plans name, by email, for printing.
pub async fn name_people(client: &Client, report: &mut PassReport) {
    if report.dry_run {
        report.people = people_of(client, &report.plans).await;
    }
}

/// The people the plans' assignee changes name, by user id, with their emails: the server's
/// users are read once, and only when a plan names someone. Empty when they cannot be read
/// (the ids are shown then).
async fn people_of(client: &Client, plans: &[CasePlan]) -> BTreeMap<String, String> {
    let ids: Vec<&str> = plans
        .iter()
        .flat_map(|p| &p.decisions)
        .filter(|d| d.field == Field::Assignee)
        .flat_map(|d| [d.old.as_deref(), d.new.as_deref()])
        .flatten()
        .filter(|v| !v.is_empty() && !v.contains('@'))
        .collect();
    if ids.is_empty() {
        return BTreeMap::new();
    }
    match client.list_users().await {
        Ok(users) => users
            .into_iter()
            .filter(|u| ids.contains(&u.id.as_str()))
            .filter_map(|u| Some((u.id, u.email?)))
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the server's users: people are shown by id");
            BTreeMap::new()
        }
    }
}

/// The pass summary: the plan (for dry runs), per-rule counts, and what to look at.
pub fn print_report(out: &mut impl Write, r: &PassReport) -> std::io::Result<()> {
    if r.dry_run {
        writeln!(
            out,
            "DRY RUN: nothing was sent to the server. These are the changes a real run would make:"
        )?;
        print_plans_naming(out, &r.plans, &r.people)?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "pass {}: {} case(s) seen{}, status {}",
        r.run_id,
        r.cases_seen,
        if r.cases_unparsable > 0 {
            format!(" ({} skipped: not parseable, see log)", r.cases_unparsable)
        } else {
            String::new()
        },
        r.status
    )?;
    print_rules(out, r)?;
    print_tenants(out, r)?;
    print_warnings(out, r)?;
    if !r.chain_head.is_empty() {
        writeln!(out, "  audit chain head: {}", r.chain_head)?;
    }
    Ok(())
}

/// The per-rule table, and the customers a rule was halted for.
fn print_rules(out: &mut impl Write, r: &PassReport) -> std::io::Result<()> {
    // Two units side by side, named in the header: cases (seen, exempt, matched, errors)
    // and the field changes those cases lead to (applied .. deferred).
    writeln!(
        out,
        "  {:<26} {:>31} {:>7}   {:<42}",
        "", "---------- cases ----------", "", "----------- field changes -----------"
    )?;
    writeln!(
        out,
        "  {:<26} {:>6} {:>6} {:>8} {:>8} {:>7} {:>8} {:>7} {:>9}  guard",
        "RULE", "SEEN", "EXEMPT", "MATCHED", "ERRORS", "APPLIED", "FAILED", "SKIPPED", "DEFERRED"
    )?;
    for s in &r.rules {
        writeln!(
            out,
            "  {:<26} {:>6} {:>6} {:>8} {:>8} {:>7} {:>8} {:>7} {:>9}  {}",
            s.name,
            s.seen,
            s.exempt,
            s.matched,
            s.errors,
            if r.dry_run {
                "-".to_string()
            } else {
                s.applied.to_string()
            },
            s.failed,
            s.skipped,
            s.deferred,
            if s.halted.is_some() {
                "HALTED".to_string()
            } else if !s.tenant_halts.is_empty() {
                format!("HALTED for {} customer(s)", s.tenant_halts.len())
            } else {
                "ok".to_string()
            }
        )?;
    }
    for s in &r.rules {
        for (tenant, why) in &s.tenant_halts {
            writeln!(
                out,
                "  ! rule {}, customer {tenant}: {why}; nothing it asked for that customer was applied, its changes to the others were.",
                s.name
            )?;
        }
    }
    Ok(())
}

/// Changes per customer, when the pass touched more than one.
fn print_tenants(out: &mut impl Write, r: &PassReport) -> std::io::Result<()> {
    if r.by_tenant.len() <= 1 {
        return Ok(());
    }
    writeln!(
        out,
        "  {:<34} {:>8} {:>8} {:>8}",
        "CUSTOMER (cust_id)", "APPLIED", "FAILED", "SKIPPED"
    )?;
    for (tenant, [applied, failed, skipped]) in &r.by_tenant {
        let applied = if r.dry_run {
            "-".to_string()
        } else {
            applied.to_string()
        };
        writeln!(out, "  {tenant:<34} {applied:>8} {failed:>8} {skipped:>8}")?;
    }
    Ok(())
}

/// What to look at: guard halts, a spent budget, rule errors, an early stop.
fn print_warnings(out: &mut impl Write, r: &PassReport) -> std::io::Result<()> {
    for s in r.rules.iter().filter(|s| s.halted.is_some()) {
        writeln!(
            out,
            "  ! rule {} wanted to change {} of the {} cases the pass listed; the blast-radius guard halted it, nothing it asked for was applied. Check the rule, or raise daemon.max_change_fraction (or its RULE.max_change_fraction) if this is intended.",
            s.name, s.matched, r.cases_seen
        )?;
    }
    if r.budget_exhausted {
        writeln!(
            out,
            "  ! change budget (daemon.max_changes_per_run) spent: {} change(s) deferred to the next pass.",
            r.deferred_changes
        )?;
    }
    for c in &r.clashes {
        writeln!(
            out,
            "  ! {}",
            crate::text::for_terminal(&crate::pass::clash_text(c))
        )?;
    }
    if r.rules.iter().any(|s| s.errors > 0) {
        writeln!(
            out,
            "  ! some rules failed on some cases; the log names each rule, case and position."
        )?;
    }
    if let Some(e) = &r.error {
        writeln!(out, "  ! the pass stopped early: {e}")?;
    }
    Ok(())
}

/// One line per decision, grouped by case.
pub fn print_plans(out: &mut impl Write, plans: &[CasePlan]) -> std::io::Result<()> {
    print_plans_naming(out, plans, &BTreeMap::new())
}

/// The same, with the people `people` names shown by email.
fn print_plans_naming(
    out: &mut impl Write,
    plans: &[CasePlan],
    people: &BTreeMap<String, String>,
) -> std::io::Result<()> {
    let named = |field: Field, v: Option<&str>| -> Option<String> {
        let v = v?;
        Some(match field {
            Field::Assignee => people.get(v).cloned().unwrap_or_else(|| v.to_string()),
            _ => v.to_string(),
        })
    };
    if plans.is_empty() {
        writeln!(out, "  (no changes)")?;
    }
    for p in plans {
        writeln!(
            out,
            "  case {} (ticket {})",
            p.case_id,
            p.ticket_id
                .map(|t| t.to_string())
                .unwrap_or_else(|| "-".into())
        )?;
        for d in &p.decisions {
            let (old, new) = (
                named(d.field, d.old.as_deref()),
                named(d.field, d.new.as_deref()),
            );
            let change = crate::plan::describe_change(d.field, old.as_deref(), new.as_deref());
            let status = match &d.skipped {
                Some(why) => format!("  SKIPPED: {why}"),
                None => String::new(),
            };
            let safe = crate::text::for_terminal;
            writeln!(
                out,
                "    {:<24} {:<12} {:<36} {}{}",
                d.rule,
                d.field,
                safe(&change),
                safe(&d.reason),
                safe(&status)
            )?;
        }
    }
    Ok(())
}
