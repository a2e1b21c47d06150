//! One pass: fetch -> evaluate -> plan -> apply -> audit. Pages are evaluated on all
//! cores while the next page downloads; every change is committed to the audit log as
//! `planned` before its request goes out, and its outcome after the answer.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use tracing::Instrument;

mod apply;
mod comment;
mod evaluate;
mod reconcile;

pub use reconcile::{Reconciled, reconcile};

use apply::Applier;
use evaluate::{Evaluated, evaluate_cases, with_activities};

use crate::audit::{AuditStore, ClaimError, NewEvent, Outcome, PassTotals};
use crate::config::Config;
use crate::plan::{self, CasePlan, ChangeKind, Decision};
use crate::rules::limits::Limits;
use crate::rules::{EvalEnv, EvalError, Rule, RuleSet};
use crate::stellar::Client;

/// Errors logged in full per rule and pass; the rest are counted.
const LOGGED_ERRORS_PER_RULE: usize = 5;

/// The knobs of a pass, from `[daemon]` and `[stellar]`.
#[derive(Debug, Clone)]
pub struct PassSettings {
    pub dry_run: bool,
    pub max_changes: usize,
    pub comment_changes: bool,
    pub max_change_fraction: f64,
    pub guard_min_cases: usize,
    pub max_in_flight: usize,
    /// How long after it was sent a request may still be applied by the server: an
    /// unanswered change is settled only after this.
    pub settle_after: Duration,
    /// After this, a pass sends nothing more and records what it did not send as skipped.
    pub pass_timeout: Duration,
    pub limits: Limits,
}

impl PassSettings {
    pub fn from_config(c: &Config) -> PassSettings {
        PassSettings {
            dry_run: c.daemon.dry_run,
            max_changes: c.daemon.max_changes_per_run,
            comment_changes: c.daemon.comment_changes,
            max_change_fraction: c.daemon.max_change_fraction,
            guard_min_cases: c.daemon.guard_min_cases,
            max_in_flight: c.stellar.max_in_flight,
            settle_after: settle_after(Duration::from_secs(c.stellar.timeout_secs)),
            pass_timeout: Duration::from_secs(c.daemon.pass_timeout_secs),
            limits: c.rule_limits(),
        }
    }
}

/// The settle window for a request timeout: the timeout and a margin for clocks.
pub fn settle_after(timeout: Duration) -> Duration {
    timeout + Duration::from_secs(2)
}

/// One pass under the audit store's one-writer claim, waiting up to `wait` for it: the
/// first pass of the process settles what a dead holder (or a lost answer) left, then the
/// pass runs, then the claim is released. Err: another process holds it.
pub async fn run_claimed(
    ctx: &PassContext,
    set: &RuleSet,
    opts: &PassOptions,
    wait: Duration,
) -> Result<PassReport, ClaimError> {
    let claim = ctx.audit.claim(wait).await?;
    if claim.first
        && let Err(e) = reconcile(ctx, claim.previous.as_ref()).await
    {
        tracing::error!(error = %e, "cannot settle the changes of an earlier pass; they stay open and are not re-sent");
    }
    let report = run_pass(ctx, set, opts).await;
    claim.release().await;
    Ok(report)
}

/// What a pass needs: the API, the log, and the settings.
#[derive(Clone)]
pub struct PassContext {
    pub client: Client,
    pub audit: AuditStore,
    pub settings: PassSettings,
}

/// Per-pass choices: which rules, dry run, what triggered it.
#[derive(Debug, Clone, Default)]
pub struct PassOptions {
    pub dry_run: bool,
    /// Rule names to run; empty = all enabled rules.
    pub only: Vec<String>,
    pub trigger: String,
    /// Set on shutdown: no new page is fetched and no new request is sent; requests
    /// already in flight finish and are recorded.
    pub cancel: Option<Arc<AtomicBool>>,
}

impl PassOptions {
    fn cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::SeqCst))
    }
}

/// How one rule fared in a pass.
#[derive(Debug, Clone, Default)]
pub struct RuleStats {
    pub name: String,
    /// Cases the rule was evaluated on.
    pub seen: usize,
    /// Cases it wanted to change.
    pub matched: usize,
    pub planned: usize,
    pub applied: usize,
    pub failed: usize,
    pub skipped: usize,
    pub errors: usize,
    pub deferred: usize,
    /// Halted by the blast-radius guard.
    pub guard_halted: bool,
}

/// The result of a pass, for the summary and the exit code.
#[derive(Debug, Clone, Default)]
pub struct PassReport {
    pub run_id: String,
    pub dry_run: bool,
    pub cases_seen: usize,
    pub cases_unparsable: usize,
    pub rules: Vec<RuleStats>,
    /// The plans that were (or in a dry run, would be) sent, in order.
    pub plans: Vec<CasePlan>,
    pub applied: usize,
    pub failed: usize,
    pub skipped: usize,
    pub deferred_changes: usize,
    pub budget_exhausted: bool,
    /// Cut short by shutdown.
    pub interrupted: bool,
    pub status: String,
    pub chain_head: String,
    /// A failure that stopped the pass early (listing failed, audit unwritable).
    pub error: Option<String>,
}

impl PassReport {
    /// Whether any change failed or the pass could not finish.
    pub fn has_failures(&self) -> bool {
        self.failed > 0 || self.error.is_some()
    }
}

/// Who casewarden is in case histories: its API user's email and, from the users list, id.
fn own_identities(user: Option<&str>, users: Option<&HashMap<String, String>>) -> Vec<String> {
    let Some(user) = user else {
        return Vec::new();
    };
    let id = users.and_then(|u| u.get(&user.to_lowercase()).cloned());
    std::iter::once(user.to_string()).chain(id).collect()
}

/// Server-side filters: the hints every due rule agrees on (status lists are unioned),
/// so no rule misses a case it would have matched; each rule re-checks its own hints.
fn pushdown(rules: &[Arc<Rule>]) -> Vec<(String, String)> {
    let Some(first) = rules.first() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (key, value) in &first.query {
        if key == "status" || key == "priority" || key == "severity" {
            let mut union: Vec<String> = Vec::new();
            let all = rules
                .iter()
                .all(|r| match r.query.iter().find(|(k, _)| k == key) {
                    Some((_, v)) => {
                        for s in v.split(',').map(str::trim) {
                            if !union.iter().any(|u| u == s) {
                                union.push(s.to_string());
                            }
                        }
                        true
                    }
                    None => false,
                });
            if all {
                out.push((key.clone(), union.join(",")));
            }
        } else if rules
            .iter()
            .all(|r| r.query.iter().any(|(k, v)| k == key && v == value))
        {
            out.push((key.clone(), value.clone()));
        }
    }
    out.push(("sort".into(), "modified_at".into()));
    out.push(("order".into(), "asc".into()));
    out
}

fn event(run_id: &str, rule: &Rule, plan: &CasePlan, d: &Decision, dry_run: bool) -> NewEvent {
    NewEvent {
        run_id: run_id.to_string(),
        rule: d.rule.clone(),
        rule_hash: rule.source_hash.clone(),
        case_id: plan.case_id.clone(),
        ticket_id: plan.ticket_id,
        field: d.field.clone(),
        old: d.old.clone(),
        new: d.new.clone(),
        reason: match &d.skipped {
            Some(why) => format!("{} [skipped: {why}]", d.reason)
                .trim_start()
                .to_string(),
            None => d.reason.clone(),
        },
        dry_run,
        outcome: Some(if d.is_planned() {
            Outcome::Planned
        } else {
            Outcome::Skipped
        }),
        ..NewEvent::default()
    }
}

/// Resolves `assign("someone@x")` to user ids; unknown emails become rule errors.
fn resolve_assignees(
    ev: &mut Evaluated,
    users: &HashMap<String, String>,
    index_of: &HashMap<&str, usize>,
) {
    for rc in &mut ev.requests {
        let mut unknown = Vec::new();
        rc.changes.retain_mut(|c| {
            if let ChangeKind::Assign(who) = &mut c.kind
                && who.contains('@')
            {
                match users.get(&who.to_lowercase()) {
                    Some(id) => *who = id.clone(),
                    None => {
                        unknown.push(who.clone());
                        return false;
                    }
                }
            }
            true
        });
        for who in unknown {
            if let Some(&i) = index_of.get(rc.rule.as_str()) {
                ev.errors.push((
                    i,
                    EvalError {
                        rule: rc.rule.clone(),
                        case_id: ev.case.id.clone(),
                        location: "assign".into(),
                        message: format!("assign: no user with email {who:?} on the server"),
                    },
                ));
            }
        }
    }
}

/// Runs one pass with `rules` and records it.
pub async fn run_pass(ctx: &PassContext, set: &RuleSet, opts: &PassOptions) -> PassReport {
    let dry_run = opts.dry_run || ctx.settings.dry_run;
    let run_id = format!(
        "{}-{:06x}",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
        fastrand::u32(..0x100_0000)
    );
    let span = tracing::info_span!("pass", pass_id = %run_id, dry_run);
    async {
        let mut report = PassReport {
            run_id: run_id.clone(),
            dry_run,
            ..PassReport::default()
        };
        if let Err(e) = run(ctx, set, opts, dry_run, &mut report).await {
            tracing::error!(error = %e, "pass stopped early");
            report.error = Some(e.to_string());
        }
        report.status = if report.error.is_some() {
            "error".into()
        } else if report.interrupted {
            "interrupted".into()
        } else if report.failed > 0 {
            "failed-changes".into()
        } else if report.budget_exhausted {
            "budget-exhausted".into()
        } else if dry_run {
            "dry-run".into()
        } else {
            "ok".into()
        };
        let totals = PassTotals {
            cases_seen: report.cases_seen as i64,
            planned: report.rules.iter().map(|r| r.planned as i64).sum(),
            applied: report.applied as i64,
            failed: report.failed as i64,
            skipped: report.skipped as i64,
            status: report.status.clone(),
            error: report.error.clone(),
        };
        if let Err(e) = ctx.audit.finish_pass(&run_id, &totals).await {
            tracing::error!(error = %e, "cannot record the end of the pass");
        }
        if let Ok((rows, head)) = ctx.audit.head().await {
            tracing::info!(rows, chain_head = %head, status = %report.status, cases = report.cases_seen, applied = report.applied, failed = report.failed, "pass finished");
            report.chain_head = head;
        }
        report
    }
    .instrument(span)
    .await
}

async fn run(
    ctx: &PassContext,
    set: &RuleSet,
    opts: &PassOptions,
    dry_run: bool,
    report: &mut PassReport,
) -> anyhow::Result<()> {
    let rules: Vec<Arc<Rule>> = set
        .rules
        .iter()
        .filter(|r| {
            if opts.only.is_empty() {
                r.enabled
            } else {
                opts.only.contains(&r.name)
            }
        })
        .cloned()
        .collect();
    report.rules = rules
        .iter()
        .map(|r| RuleStats {
            name: r.name.clone(),
            ..RuleStats::default()
        })
        .collect();
    let index_of: HashMap<&str, usize> = rules
        .iter()
        .enumerate()
        .map(|(i, r)| (r.name.as_str(), i))
        .collect();
    ctx.audit
        .start_pass(&report.run_id, &opts.trigger, &set.fingerprint, dry_run)
        .await?;
    if rules.is_empty() {
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + ctx.settings.pass_timeout;
    // Changes whose outcome is not known yet: not planned again until settled.
    let mut open: HashMap<String, std::collections::HashSet<String>> = HashMap::new();
    for u in ctx.audit.unsettled().await? {
        let key = plan::memory_key(&u.row.field, u.row.new.as_deref().unwrap_or(""));
        open.entry(u.row.case_id).or_default().insert(key);
    }
    // The users list is fetched at most once per pass: now if casewarden's own user id is
    // needed to tell its history entries apart, else when a rule first assigns by email.
    let mut users = match ctx.client.user() {
        Some(_) => Some(user_index(&ctx.client).await),
        None => None,
    };
    let own = Arc::new(own_identities(ctx.client.user(), users.as_ref()));
    let env = EvalEnv {
        now_ms: None,
        own_users: own.clone(),
        limits: ctx.settings.limits.clone(),
        prints: Default::default(),
    };
    let mut planner = plan::PassPlanner::new(
        rules.iter().map(|r| r.name.clone()).collect(),
        plan::Budgets {
            max_changes: ctx.settings.max_changes,
            max_change_fraction: ctx.settings.max_change_fraction,
            guard_min_cases: ctx.settings.guard_min_cases,
        },
        own.to_vec(),
    );

    let mut pager = ctx.client.list_cases(pushdown(&rules));
    let mut next = Some(tokio::spawn(async move {
        let page = pager.next_page().await;
        (pager, page)
    }));
    while let Some(fetch) = next.take() {
        if opts.cancelled() {
            report.interrupted = true;
            return Ok(());
        }
        let (mut pager, page) = fetch.await?;
        let Some(page) = page? else { break };
        // Start the next download before evaluating this page.
        next = Some(tokio::spawn(async move {
            let page = pager.next_page().await;
            (pager, page)
        }));
        report.cases_unparsable += page.skipped.len();
        report.cases_seen += page.cases.len();
        let evaluated = evaluate_cases(set, &rules, page.cases, &env).await?;
        let evaluated = with_activities(ctx, set, &rules, &env, evaluated).await?;
        let ids: Vec<&str> = evaluated
            .iter()
            .filter(|ev| !ev.requests.is_empty())
            .map(|ev| ev.case.id.as_str())
            .collect();
        let mut memory: HashMap<String, Vec<(String, String)>> = HashMap::new();
        for row in ctx.audit.applied_changes(&ids).await? {
            memory
                .entry(row.case_id)
                .or_default()
                .push((row.field, row.new.unwrap_or_default()));
        }

        let mut deferred_events = Vec::new();
        for mut ev in evaluated {
            for &i in &ev.seen_by {
                report.rules[i].seen += 1;
            }
            let wants_assign_email = ev
                .requests
                .iter()
                .flat_map(|r| &r.changes)
                .any(|c| matches!(&c.kind, ChangeKind::Assign(w) if w.contains('@')));
            if wants_assign_email && users.is_none() {
                users = Some(user_index(&ctx.client).await);
            }
            if let Some(u) = &users {
                resolve_assignees(&mut ev, u, &index_of);
            }
            for (i, e) in &ev.errors {
                let stats = &mut report.rules[*i];
                stats.errors += 1;
                if stats.errors <= LOGGED_ERRORS_PER_RULE {
                    tracing::warn!(rule = %e.rule, case_id = %e.case_id, location = %e.location, "rule failed on a case: {}", crate::text::for_terminal(&e.message));
                }
            }
            if ev.requests.is_empty() {
                continue;
            }
            let facts = plan::CaseFacts {
                memory: memory
                    .remove(&ev.case.id)
                    .map_or_else(Default::default, |applied| {
                        plan::remember(applied.iter().map(|(f, n)| (f.as_str(), n.as_str())))
                    }),
                open: open.get(&ev.case.id).cloned().unwrap_or_default(),
            };
            if let Some(deferred) = planner.add(&ev.case, &ev.requests, &facts, ctx.client.flavor())
            {
                for d in &deferred.decisions {
                    if let Some(&i) = index_of.get(d.rule.as_str()) {
                        deferred_events.push(event(
                            &report.run_id,
                            &rules[i],
                            &deferred,
                            d,
                            dry_run,
                        ));
                    }
                }
            }
        }
        if !deferred_events.is_empty() {
            report.skipped += deferred_events.len();
            ctx.audit.append(&deferred_events).await?;
        }
    }
    for (rule, dropped) in env.prints.dropped() {
        tracing::warn!(
            %rule,
            dropped,
            "print/debug lines past the limit of {} per rule and pass were dropped (daemon.max_prints_per_rule)",
            ctx.settings.limits.prints_per_pass
        );
    }
    let seen: Vec<usize> = report.rules.iter().map(|r| r.seen).collect();
    let passplan = planner.finish(&seen);
    for (i, stats) in report.rules.iter_mut().enumerate() {
        stats.matched = passplan.matched[i];
        stats.deferred = passplan.deferred[i];
        if let Some(why) = &passplan.halted[i] {
            stats.guard_halted = true;
            tracing::warn!(rule = %stats.name, "rule halted for this pass, none of its changes are applied: {why}");
        }
    }
    report.budget_exhausted = passplan.budget_exhausted;
    report.deferred_changes = passplan.deferred_changes;
    if report.budget_exhausted {
        tracing::warn!(
            deferred = report.deferred_changes,
            budget = ctx.settings.max_changes,
            "change budget exhausted: {} change(s) deferred to the next pass",
            report.deferred_changes
        );
    }
    let retained = passplan.plans;

    if opts.cancelled() {
        report.interrupted = true;
        return Ok(());
    }
    // Write-ahead: every decision is committed before any request goes out.
    let mut events = Vec::new();
    let mut owners = Vec::new();
    for (pi, p) in retained.iter().enumerate() {
        for (di, d) in p.decisions.iter().enumerate() {
            let Some(&ri) = index_of.get(d.rule.as_str()) else {
                continue;
            };
            events.push(event(&report.run_id, &rules[ri], p, d, dry_run));
            owners.push((pi, di, ri));
            if d.is_planned() {
                report.rules[ri].planned += 1;
            } else {
                report.rules[ri].skipped += 1;
                report.skipped += 1;
            }
        }
    }
    let seqs = ctx.audit.append(&events).await?;
    let mut seq_of: HashMap<(usize, usize), i64> = HashMap::new();
    for ((pi, di, _), seq) in owners.iter().zip(seqs) {
        seq_of.insert((*pi, *di), seq);
    }
    if dry_run {
        report.plans = retained;
        return Ok(());
    }

    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<NewEvent>>(256);
    let audit = ctx.audit.clone();
    let audit_broken = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn({
        let audit_broken = audit_broken.clone();
        async move {
            // Batches whatever outcomes have arrived into one transaction. After a failed
            // write no further request is sent (the senders check `audit_broken`); what
            // was in flight stays `planned` for the next start to reconcile.
            let mut failure = None;
            while let Some(mut batch) = rx.recv().await {
                while let Ok(mut more) = rx.try_recv() {
                    batch.append(&mut more);
                }
                if failure.is_none()
                    && let Err(e) = audit.append(&batch).await
                {
                    tracing::error!(error = %e, "cannot record outcomes; no further change is sent this pass");
                    audit_broken.store(true, Ordering::SeqCst);
                    failure = Some(e);
                }
            }
            failure.map_or(Ok(()), Err)
        }
    });
    let work: Vec<(usize, CasePlan)> = retained
        .iter()
        .enumerate()
        .filter(|(_, p)| p.has_work())
        .map(|(i, p)| (i, p.clone()))
        .collect();
    let apply = Arc::new(Applier {
        client: ctx.client.clone(),
        tx,
        seq_of,
        rule_hash: rules
            .iter()
            .map(|r| (r.name.clone(), r.source_hash.clone()))
            .collect(),
        run_id: report.run_id.clone(),
        cancel: opts.cancel.clone(),
        audit_broken,
        wrong_flavor: std::sync::OnceLock::new(),
        deadline,
        comment_changes: ctx.settings.comment_changes,
    });
    let results: Vec<(usize, Vec<(usize, Outcome)>)> = futures::stream::iter(work)
        .map(|(pi, p)| apply.clone().apply(pi, p))
        .buffer_unordered(ctx.settings.max_in_flight.max(1))
        .collect()
        .await;
    if let Some(e) = apply.wrong_flavor.get() {
        tracing::error!(error = %e, "no further change is sent this pass");
        report.error = Some(e.clone());
    }
    drop(apply);
    writer.await??;
    report.interrupted |= opts.cancelled();
    for (pi, outcomes) in results {
        for (di, outcome) in outcomes {
            let d = &retained[pi].decisions[di];
            if let Some(&ri) = index_of.get(d.rule.as_str()) {
                let (by_rule, total) = match outcome {
                    Outcome::Applied => (&mut report.rules[ri].applied, &mut report.applied),
                    Outcome::Skipped => (&mut report.rules[ri].skipped, &mut report.skipped),
                    _ => (&mut report.rules[ri].failed, &mut report.failed),
                };
                *by_rule += 1;
                *total += 1;
            }
        }
    }
    report.plans = retained;
    Ok(())
}

/// The server's users by email (lower case) -> user id; empty, with a warning, on error.
async fn user_index(client: &Client) -> HashMap<String, String> {
    match client.list_users().await {
        Ok(users) => users
            .iter()
            .filter_map(|u| {
                Some((
                    u.get("email")?.as_str()?.to_lowercase(),
                    u.get("user_id")?.as_str()?.to_string(),
                ))
            })
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list users: assignments by email fail this pass, and casewarden's own history entries are matched by email only");
            HashMap::new()
        }
    }
}
