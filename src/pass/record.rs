//! Stage: write-ahead. Every decision of the plan is committed to the audit log before any
//! request goes out, the changes the budget deferred among them; so are the rules' errors.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::run::Run;
use super::stats::RuleStats;
use crate::audit::{AuditError, LastChange, Outcome, row};
use crate::plan::{self, CasePlan, DecisionId};

/// Planned rows committed per transaction: every one of them is committed before the first
/// request either way; a large plan is not built as one list of rows, and the lease's
/// heartbeat is not kept waiting behind one long transaction.
const INTENT_ROWS: usize = 10_000;

/// The plan as recorded, ready to send.
#[derive(Debug, Default)]
pub(super) struct Recorded {
    /// The plans, shadow rules' decisions held back.
    pub plans: Vec<CasePlan>,
    /// The `seq` of each decision's row as written (a dry run's repeated rows are not
    /// written again): the outcome row of a sent decision names it. Taken by `apply`.
    pub seq_of: HashMap<DecisionId, i64>,
    /// The `seq` of the summary comment's intent row, by the plan's place in `plans`.
    /// Taken by `apply`.
    pub summary_of: HashMap<usize, i64>,
    /// Per actor: decisions planned, and skipped (counted whether or not a dry run's
    /// repeated row was written again).
    pub planned: Vec<usize>,
    pub skipped: Vec<usize>,
    /// Skipped decisions per customer.
    pub skipped_by_tenant: BTreeMap<String, usize>,
}

/// Records every decision of `plans` (a dry run's rows only when they differ from the
/// last dry run's) and returns the plans with the shadow rules held back; when the log
/// cannot be written, what was counted until then and no plans.
pub(super) async fn intent(
    run: &Run<'_>,
    plans: Vec<CasePlan>,
) -> (Recorded, Result<(), AuditError>) {
    let mut rec = Recorded {
        planned: vec![0; run.actors.len()],
        skipped: vec![0; run.actors.len()],
        ..Recorded::default()
    };
    let mut written = write_intent(run, &plans, &mut rec).await;
    if written.is_ok() {
        rec.plans = hold_back_shadow_rules(run, plans);
        written = write_summaries(run, &mut rec).await;
    }
    if written.is_err() {
        rec.plans.clear();
    }
    (rec, written)
}

/// A live pass that comments its changes writes ahead, for each case it will change, the
/// intent to post the summary comment.
async fn write_summaries(run: &Run<'_>, rec: &mut Recorded) -> Result<(), AuditError> {
    if run.dry_run || !run.ctx.settings.comment_changes {
        return Ok(());
    }
    let cases: Vec<usize> = (0..rec.plans.len())
        .filter(|&i| rec.plans[i].field_changes().next().is_some())
        .collect();
    for chunk in cases.chunks(INTENT_ROWS) {
        let rows: Vec<_> = chunk
            .iter()
            .map(|&i| row::summary_intent(&run.run_id, &rec.plans[i]))
            .collect();
        let seqs = run.ctx.audit.append(&rows).await?;
        rec.summary_of.extend(chunk.iter().copied().zip(seqs));
    }
    Ok(())
}

/// Appends the decisions' rows and counts them into `rec` as they go.
async fn write_intent(
    run: &Run<'_>,
    plans: &[CasePlan],
    rec: &mut Recorded,
) -> Result<(), AuditError> {
    let repeated = repeated_dry_runs(run, plans).await?;
    let recorded_skips = repeated_skips(run, plans).await?;
    let (mut rows, mut owners, mut seqs) = (Vec::new(), Vec::new(), Vec::new());
    let (mut not_again, mut skips_not_again) = (0, 0);
    for (id, p, d) in plan::decisions(plans) {
        if rows.len() == INTENT_ROWS {
            seqs.extend(run.ctx.audit.append(&rows).await?);
            rows.clear();
        }
        let Some((ri, actor)) = run.actor(&d.rule) else {
            continue;
        };
        if repeated.contains(&(p.case_id.as_str(), d.rule.as_str())) {
            not_again += 1;
        } else if recorded_skips.contains(&id) {
            skips_not_again += 1;
        } else {
            rows.push(decision_row(run, actor, p, d));
            owners.push(id);
        }
        if d.is_planned() {
            rec.planned[ri] += 1;
        } else {
            rec.skipped[ri] += 1;
            if let Some(t) = &p.tenant {
                *rec.skipped_by_tenant.entry(t.clone()).or_default() += 1;
            }
        }
    }
    if skips_not_again > 0 {
        tracing::debug!(
            rows = skips_not_again,
            "skips not recorded again: the log holds each as it stands"
        );
    }
    if not_again > 0 {
        tracing::info!(
            rows = not_again,
            "dry-run rows not recorded again: the same plan as the last dry run of that rule on that case"
        );
    }
    seqs.extend(run.ctx.audit.append(&rows).await?);
    rec.seq_of = owners.into_iter().zip(seqs).collect();
    Ok(())
}

/// The skipped decisions of a live pass over the listing that the log already holds as
/// they stand: the newest row of the same rule, case, field and value is the same skip
/// (the same note: a person's override names who and when, so a new override is a new
/// row), of the same rule text, while the case held the same value. A person's override, a
/// halted rule's held-back changes or a conflict are recorded once, not every pass; a skip
/// that the budget deferred is recorded each time (the next pass puts it first in line).
/// A pass of given plans (`apply`, `revert`) records every decision: each is its own.
async fn repeated_skips(
    run: &Run<'_>,
    plans: &[CasePlan],
) -> Result<HashSet<DecisionId>, AuditError> {
    if run.dry_run || run.opts.work.given().is_some() {
        return Ok(HashSet::new());
    }
    let skips: Vec<(DecisionId, &CasePlan, &plan::Decision)> = plan::decisions(plans)
        .filter(|(_, _, d)| {
            d.skipped
                .as_deref()
                .is_some_and(|why| !why.contains(plan::DEFERRED))
                && run.actor(&d.rule).is_some_and(|(_, a)| !a.shadow)
        })
        .collect();
    if skips.is_empty() {
        return Ok(HashSet::new());
    }
    let ids: Vec<&str> = skips
        .iter()
        .map(|(_, p, _)| p.case_id.as_str())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let last: HashMap<(String, String, String, Option<String>), LastChange> = run
        .ctx
        .audit
        .last_changes(&ids)
        .await?
        .into_iter()
        .map(|r| {
            (
                (
                    r.case_id.clone(),
                    r.rule.clone(),
                    r.field.clone(),
                    r.new.clone(),
                ),
                r,
            )
        })
        .collect();
    Ok(skips
        .into_iter()
        .filter(|(_, p, d)| {
            let key = (
                p.case_id.clone(),
                d.rule.clone(),
                d.field.to_string(),
                d.new.clone(),
            );
            last.get(&key).is_some_and(|r| {
                r.outcome == Outcome::Skipped
                    && r.rule_hash == run.hash_of(&d.rule)
                    && r.old == d.old
                    && r.reason
                        .rsplit_once("[skipped: ")
                        .map(|(_, w)| same_skip(w.strip_suffix(']').unwrap_or(w)))
                        == d.skipped.as_deref().map(same_skip)
            })
        })
        .map(|(id, _, _)| id)
        .collect())
}

/// What of a skip note stays the same while the skip does: all of it, but for the guard's,
/// whose counts move from pass to pass (`blast-radius guard[ for customer X]`).
fn same_skip(why: &str) -> &str {
    match why.starts_with(plan::HALTED) {
        true => why.split(':').next().unwrap_or(why),
        false => why,
    }
}

/// One note per rule the guard halted this pass (and per customer it was halted for), with
/// how many of its changes were held back: the changes themselves are recorded once.
pub(super) async fn halts(
    run: &Run<'_>,
    plans: &[CasePlan],
    rules: &[RuleStats],
) -> Result<(), AuditError> {
    let held = |rule: &str, tenant: Option<&str>, why: &str| {
        plans
            .iter()
            .filter(|p| tenant.is_none() || p.tenant.as_deref() == tenant)
            .flat_map(|p| &p.decisions)
            .filter(|d| d.rule == rule && d.skipped.as_deref() == Some(why))
            .count()
    };
    let mut rows = Vec::new();
    for s in rules {
        let dry = run.dry_run || run.actor(&s.name).is_some_and(|(_, a)| a.shadow);
        let hash = run.hash_of(&s.name);
        let halts = s.halted.iter().map(|why| (None, why));
        let for_tenants = s
            .tenant_halts
            .iter()
            .map(|(t, why)| (Some(t.as_str()), why));
        for (tenant, why) in halts.chain(for_tenants) {
            let n = held(&s.name, tenant, why);
            rows.push(row::rule_halted(
                &run.run_id,
                &s.name,
                hash,
                tenant,
                n,
                why,
                dry,
            ));
        }
    }
    if !rows.is_empty() {
        run.ctx.audit.append(&rows).await?;
    }
    Ok(())
}

/// Which text of each rule the pass runs; each distinct text is kept once.
pub(super) async fn rule_texts(run: &Run<'_>) -> Result<(), AuditError> {
    let files: Vec<(&str, &str, String, &str)> = run
        .actors
        .iter()
        .filter_map(|a| {
            let (file, text) = a.source.as_ref()?;
            Some((
                a.name.as_str(),
                a.hash.as_str(),
                file.display().to_string(),
                &**text,
            ))
        })
        .collect();
    let rules: Vec<crate::audit::RuleSource<'_>> = files
        .iter()
        .map(|(rule, hash, file, text)| (*rule, *hash, file.as_str(), *text))
        .collect();
    run.ctx.audit.record_rules(&run.run_id, &rules).await
}

/// Records each clash with another automation the first time it is seen (yielded to, or
/// a fight casewarden stopped); returns the ones seen for the first time. A dry run
/// records none and returns all.
pub(super) async fn clashes(
    run: &Run<'_>,
    clashes: Vec<plan::CaseClash>,
) -> Result<Vec<plan::CaseClash>, AuditError> {
    let clashes: Vec<_> = clashes
        .into_iter()
        .filter(|c| c.clash.outcome != plan::ClashOutcome::Reapplied)
        .collect();
    if clashes.is_empty() || run.dry_run {
        return Ok(clashes);
    }
    let ids: Vec<&str> = clashes.iter().map(|c| c.case_id.as_str()).collect();
    let seen: HashSet<(String, String, String, String)> =
        run.ctx.audit.clash_notes(&ids).await?.into_iter().collect();
    let what =
        |c: &plan::CaseClash| format!("{}={} by {}", c.clash.field, c.clash.value, c.clash.by);
    let new: Vec<plan::CaseClash> = clashes
        .into_iter()
        .filter(|c| {
            let key = (
                c.case_id.clone(),
                c.clash.rule.clone(),
                what(c),
                c.clash.outcome.as_str().to_string(),
            );
            !seen.contains(&key)
        })
        .collect();
    let rows: Vec<_> = new
        .iter()
        .map(|c| {
            let case = crate::audit::CaseRef::Case {
                id: c.case_id.clone(),
                ticket_id: c.ticket_id,
                tenant: c.tenant.clone(),
            };
            let rule = &c.clash.rule;
            row::clash(
                &run.run_id,
                rule,
                run.hash_of(rule),
                case,
                what(c),
                c.clash.outcome.as_str(),
                clash_text(c),
            )
        })
        .collect();
    if !rows.is_empty() {
        run.ctx.audit.append(&rows).await?;
    }
    Ok(new)
}

/// What a clash note, the summary and the `fight` notification say of it.
pub fn clash_text(c: &plan::CaseClash) -> String {
    let value = format!(
        "{} {}",
        c.clash.field,
        plan::describe_value(c.clash.field, &c.clash.value)
    );
    match c.clash.outcome {
        plan::ClashOutcome::Fight => format!(
            "fight with another automation: API user {} set back {value} on case {} again after rule {} set it twice; casewarden stopped setting it",
            c.clash.by, c.case_id, c.clash.rule
        ),
        _ => format!(
            "another automation, API user {} (not a person), set back {value} on case {} that rule {} set; casewarden yields to it (RULE.on_automation_revert = \"yield\")",
            c.clash.by, c.case_id, c.clash.rule
        ),
    }
}

/// The customers the pass's plans name whose names the log lacks: read from the server's
/// `/tenants` (once, when there is one) and remembered for the reports. Not knowing them
/// only costs the reports their names.
pub(super) async fn customers(run: &Run<'_>, plans: &[CasePlan]) {
    let named: BTreeSet<&str> = plans.iter().filter_map(|p| p.tenant.as_deref()).collect();
    if named.is_empty() {
        return;
    }
    let audit = &run.ctx.audit;
    let known = match audit.customer_names().await {
        Ok(known) => known,
        Err(e) => return tracing::warn!(error = %e, "cannot read the customers' names"),
    };
    if named.iter().all(|t| known.contains_key(*t)) {
        return;
    }
    match read_customers(run).await {
        // An id the server does not name is remembered as such: not asked for every pass.
        Ok(listed) => {
            let unnamed: Vec<(String, String)> = named
                .iter()
                .filter(|t| !listed.iter().any(|(id, _)| id == *t))
                .map(|t| (t.to_string(), String::new()))
                .collect();
            if let Err(e) = audit.remember_customers(&run.ctx.instance, &unnamed).await {
                tracing::warn!(error = %e, "cannot remember the customers' names");
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the server's customers: reports show their ids only");
        }
    }
}

/// The server's customers by `cust_id`, remembered in the log for the reports.
pub(super) async fn read_customers(
    run: &Run<'_>,
) -> Result<Vec<(String, String)>, crate::stellar::ApiError> {
    let names: Vec<(String, String)> = run
        .ctx
        .client
        .list_tenants()
        .await?
        .into_iter()
        .filter_map(|t| Some((t.id, t.name?)))
        .collect();
    if let Err(e) = run
        .ctx
        .audit
        .remember_customers(&run.ctx.instance, &names)
        .await
    {
        tracing::warn!(error = %e, "cannot remember the customers' names");
    }
    Ok(names)
}

/// A note per listed case that could not be read, naming it and what was wrong.
pub(super) async fn unreadable(
    run: &Run<'_>,
    cases: &[crate::stellar::CaseParseError],
) -> Result<(), AuditError> {
    let rows: Vec<_> = cases
        .iter()
        .map(|e| row::unreadable_case(&run.run_id, e.id.as_deref(), &e.reason, run.dry_run))
        .collect();
    if !rows.is_empty() {
        run.ctx.audit.append(&rows).await?;
    }
    Ok(())
}

/// One row per rule that failed on some case this pass, so reports count rule errors from
/// the chained log.
pub(super) async fn rule_errors(run: &Run<'_>, rules: &[RuleStats]) {
    let rows: Vec<_> = rules
        .iter()
        .filter(|r| r.errors > 0)
        .map(|r| {
            let hash = run.hash_of(&r.name);
            let first = r.first_error.clone();
            row::rule_errors(&run.run_id, &r.name, hash, r.errors, first, run.dry_run)
        })
        .collect();
    if !rows.is_empty()
        && let Err(e) = run.ctx.audit.append(&rows).await
    {
        tracing::error!(error = %e, "cannot record the rules' errors in the audit log");
    }
}

/// A decision's fields, value and outcome, to compare a dry run with the last one.
type Sig = Vec<(String, String, Outcome)>;

/// The (case, rule) pairs of dry-run decisions that plan exactly what the last dry run
/// of that rule on that case recorded (fields, values, planned or skipped): recording
/// them again every pass would fill the log with copies.
async fn repeated_dry_runs<'p>(
    run: &Run<'_>,
    plans: &'p [CasePlan],
) -> Result<HashSet<(&'p str, &'p str)>, AuditError> {
    // A reviewed plan checked with `apply --dry-run` is an event of its own.
    if run.opts.work.given().is_some() {
        return Ok(HashSet::new());
    }
    let now = dry_signatures(run, plans);
    if now.is_empty() {
        return Ok(HashSet::new());
    }
    let ids: Vec<&str> = now
        .keys()
        .map(|(c, _)| *c)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut last: HashMap<(String, String), Sig> = HashMap::new();
    for r in run.ctx.audit.last_dry_runs(&ids).await? {
        let sig = (r.field, r.new.unwrap_or_default(), r.outcome);
        last.entry((r.case_id, r.rule)).or_default().push(sig);
    }
    Ok(now
        .into_iter()
        .filter_map(|(key, mut sig)| {
            let mut before = last.remove(&(key.0.to_string(), key.1.to_string()))?;
            sig.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
            before.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
            (sig == before).then_some(key)
        })
        .collect())
}

/// The signature of each (case, rule) pair's dry-run decisions in `plans`.
fn dry_signatures<'p>(run: &Run<'_>, plans: &'p [CasePlan]) -> HashMap<(&'p str, &'p str), Sig> {
    let mut now: HashMap<(&str, &str), Sig> = HashMap::new();
    for (_, p, d) in plan::decisions(plans) {
        if !run
            .actor(&d.rule)
            .is_some_and(|(_, a)| run.dry_run || a.shadow)
        {
            continue;
        }
        let outcome = match d.is_planned() {
            true => Outcome::Planned,
            false => Outcome::Skipped,
        };
        let sig = (
            d.field.to_string(),
            d.new.clone().unwrap_or_default(),
            outcome,
        );
        now.entry((p.case_id.as_str(), d.rule.as_str()))
            .or_default()
            .push(sig);
    }
    now
}

/// Shadow rules (`RULE.dry_run`) were recorded as dry-run rows; nothing of theirs is
/// sent while the other rules' changes are.
fn hold_back_shadow_rules(run: &Run<'_>, mut plans: Vec<CasePlan>) -> Vec<CasePlan> {
    let shadow: Vec<&str> = run
        .actors
        .iter()
        .filter(|a| a.shadow)
        .map(|a| a.name.as_str())
        .collect();
    if shadow.is_empty() {
        return plans;
    }
    for p in &mut plans {
        for rule in &shadow {
            p.skip_rule(
                rule,
                "shadow rule (RULE.dry_run): recorded as a dry run, not sent",
            );
        }
    }
    plans
}

/// The row of decision `d` on `p` by `actor`: a dry run when the pass is one or the
/// actor is a shadow rule.
fn decision_row(
    run: &Run<'_>,
    actor: &super::run::Actor,
    p: &CasePlan,
    d: &plan::Decision,
) -> crate::audit::NewEvent {
    let dry = run.dry_run || actor.shadow;
    row::decision(&run.run_id, &actor.hash, p, d, dry)
}
