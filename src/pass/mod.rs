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
use crate::calendar::Calendar;
use crate::config::Config;
use crate::plan::{self, CasePlan, ChangeKind, Decision, DecisionId, Field};
use crate::rules::limits::Limits;
use crate::rules::{EvalEnv, EvalError, Rule, RuleSet};
use crate::stellar::{Case, Client, Directory};

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
    pub calendars: Arc<HashMap<String, Calendar>>,
    pub exempt_tags: Arc<Vec<String>>,
    pub tenant_limits: HashMap<String, crate::plan::TenantLimits>,
}

impl PassSettings {
    pub fn from_config(c: &Config) -> PassSettings {
        PassSettings::for_server(c, &c.stellar)
    }

    /// The settings of a pass on server `s` of config `c`.
    pub fn for_server(c: &Config, s: &crate::config::StellarConfig) -> PassSettings {
        PassSettings {
            dry_run: c.daemon.dry_run,
            max_changes: c.daemon.max_changes_per_run,
            comment_changes: c.daemon.comment_changes,
            max_change_fraction: c.daemon.max_change_fraction,
            guard_min_cases: c.daemon.guard_min_cases,
            max_in_flight: s.max_in_flight,
            settle_after: settle_after(Duration::from_secs(s.timeout_secs)),
            pass_timeout: Duration::from_secs(c.daemon.pass_timeout_secs),
            limits: c.rule_limits(),
            // Checked when the config was loaded.
            calendars: Arc::new(c.calendars().unwrap_or_default()),
            exempt_tags: Arc::new(c.daemon.exempt_tags.clone()),
            tenant_limits: c.tenants.clone().into_iter().collect(),
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
    with_claim(ctx, wait, async || run_pass(ctx, set, opts).await).await
}

/// Runs `work` under the audit store's one-writer claim, after settling what an earlier
/// process left open: nothing else passes on this store meanwhile.
pub async fn with_claim<T>(
    ctx: &PassContext,
    wait: Duration,
    work: impl AsyncFnOnce() -> T,
) -> Result<T, ClaimError> {
    let claim = ctx.audit.claim(wait).await?;
    if claim.first
        && let Err(e) = reconcile(ctx, claim.previous.as_ref()).await
    {
        tracing::error!(error = %e, "cannot settle the changes of an earlier pass; they stay open and are not re-sent");
    }
    let out = work().await;
    claim.release().await;
    Ok(out)
}

/// What a pass needs: the API, the log, and the settings.
#[derive(Clone)]
pub struct PassContext {
    pub client: Client,
    /// The log, as this server's handle (its rows carry the instance name).
    pub audit: AuditStore,
    pub settings: PassSettings,
    /// The server's name in the config (`default` for `[stellar]`).
    pub instance: String,
    /// Only these customers' cases on this server (`tenants` of its section); empty: all.
    pub tenants: Arc<Vec<String>>,
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
    /// Told how far listing and applying have got (a progress bar on a terminal).
    pub progress: Option<Progress>,
    /// Given every page of cases as listed (`once --save-cases`).
    pub on_page: Option<PageHook>,
    /// Apply exactly these reviewed case plans (`casewarden apply`) instead of listing and
    /// planning: no guard and no budget, the review took their place.
    pub plans: Option<Arc<Vec<CasePlan>>>,
}

/// A callback of a pass (progress, listed pages), called on the pass's task: it must be
/// quick.
pub struct Hook<A: ?Sized>(pub Arc<dyn Fn(&A) + Send + Sync>);

impl<A: ?Sized> Clone for Hook<A> {
    fn clone(&self) -> Self {
        Hook(self.0.clone())
    }
}

impl<A: ?Sized> std::fmt::Debug for Hook<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hook")
    }
}

/// Given every page of cases as listed.
pub type PageHook = Hook<[Case]>;
/// Told how far listing and applying have got.
pub type Progress = Hook<Step>;

/// How far a pass has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Cases listed so far, of the total the server announced.
    Listed { cases: u64, total: Option<u64> },
    /// Cases whose changes were sent (or settled without sending), of those with work.
    Applied { cases: u64, total: u64 },
}

impl PassOptions {
    fn tell(&self, step: Step) {
        if let Some(p) = &self.progress {
            (p.0)(&step);
        }
    }

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
    /// Cases its query selected that an exempt or snooze tag kept it off.
    pub exempt: usize,
    /// Cases it wanted to change.
    pub matched: usize,
    pub planned: usize,
    pub applied: usize,
    pub failed: usize,
    pub skipped: usize,
    pub errors: usize,
    /// The first error of the pass: where and what.
    pub first_error: Option<String>,
    pub deferred: usize,
    /// Halted by the blast-radius guard.
    pub guard_halted: bool,
    /// Customers (`cust_id`) the guard halted it for, with why, while it ran for the others.
    pub tenant_halts: Vec<(String, String)>,
}

/// How a pass ended, as the summary, the `passes` table and `/healthz` say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PassStatus {
    #[default]
    Ok,
    DryRun,
    BudgetExhausted,
    FailedChanges,
    /// A rule was halted by the guard or failed on some case; the others ran.
    Degraded,
    Interrupted,
    Error,
}

impl PassStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PassStatus::Ok => "ok",
            PassStatus::DryRun => "dry-run",
            PassStatus::BudgetExhausted => "budget-exhausted",
            PassStatus::FailedChanges => "failed-changes",
            PassStatus::Degraded => "degraded",
            PassStatus::Interrupted => "interrupted",
            PassStatus::Error => "error",
        }
    }

    /// The pass did not get through its work (a failed change is not this).
    pub fn is_broken(self) -> bool {
        matches!(self, PassStatus::Error | PassStatus::Interrupted)
    }
}

impl std::fmt::Display for PassStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The result of a pass, for the summary and the exit code.
#[derive(Debug, Clone, Default)]
pub struct PassReport {
    pub run_id: String,
    /// The server the pass ran on (config instance name).
    pub instance: String,
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
    pub status: PassStatus,
    pub chain_head: String,
    /// A failure that stopped the pass early (listing failed, audit unwritable).
    pub error: Option<String>,
    /// The audit log could not be written (the pass stopped, or could not be closed).
    pub audit_failed: bool,
    /// Field changes per customer (`cust_id`): applied, failed, skipped.
    pub by_tenant: std::collections::BTreeMap<String, [usize; 3]>,
}

impl PassReport {
    /// Whether any change failed or the pass could not finish.
    /// Some change failed, the pass stopped, or a rule was halted or errored (exit 1).
    pub fn has_failures(&self) -> bool {
        self.failed > 0 || self.error.is_some() || self.rule_trouble()
    }

    /// A rule was halted by the guard or failed on some case.
    pub fn rule_trouble(&self) -> bool {
        self.rules
            .iter()
            .any(|r| r.guard_halted || !r.tenant_halts.is_empty() || r.errors > 0)
    }
}

/// Who casewarden is in case histories: its API user's email and, from the users list, id.
fn own_identities(user: Option<&str>, users: Option<&Directory>) -> Vec<String> {
    let Some(user) = user else {
        return Vec::new();
    };
    let id = users.and_then(|u| u.id_of(user)).map(str::to_string);
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

fn event(run_id: &str, actor: &Actor, plan: &CasePlan, d: &Decision, dry_run: bool) -> NewEvent {
    NewEvent {
        run_id: run_id.to_string(),
        rule: d.rule.clone(),
        rule_hash: actor.hash.clone(),
        case_id: plan.case_id.clone(),
        ticket_id: plan.ticket_id,
        field: d.field.to_string(),
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
        tenant: plan.tenant.clone(),
        ..NewEvent::default()
    }
}

/// The keys whose last applied change was a revert, oldest change first in `applied`.
fn reverted(applied: &[(Field, String, String)]) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for (field, new, rule) in applied {
        // Undoing `+tag` writes `-tag`: both are the tag's key.
        let key = plan::memory_key(*field, new);
        if rule.starts_with("revert:") {
            out.insert(key, rule.clone());
        } else {
            out.remove(&key);
        }
    }
    out
}

/// Resolves `assign("someone@x")` to user ids; unknown emails become rule errors, and so
/// does every email when the users list could not be read (`users` None).
fn resolve_assignees(
    ev: &mut Evaluated,
    users: Option<&Directory>,
    index_of: &HashMap<String, usize>,
) {
    for rc in &mut ev.requests {
        let mut unknown = Vec::new();
        rc.changes.retain_mut(|c| {
            if let ChangeKind::Assign(who) = &mut c.kind
                && who.contains('@')
            {
                match users.and_then(|u| u.id_of(who)) {
                    Some(id) => *who = id.to_string(),
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
                        message: match users {
                            Some(_) => format!("assign: no user with email {who:?} on the server"),
                            None => format!(
                                "assign: cannot look up {who:?}: the server's users list could not be read this pass"
                            ),
                        },
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
            instance: ctx.instance.clone(),
            dry_run,
            ..PassReport::default()
        };
        if let Err(e) = run(ctx, set, opts, dry_run, &mut report).await {
            tracing::error!(error = %e, "pass stopped early");
            report.audit_failed = e.downcast_ref::<crate::audit::AuditError>().is_some();
            report.error = Some(e.to_string());
        }
        for r in report.rules.iter().filter(|r| r.errors > LOGGED_ERRORS_PER_RULE) {
            tracing::warn!(rule = %r.name, errors = r.errors, "rule failed on {} more case(s) this pass than logged above", r.errors - LOGGED_ERRORS_PER_RULE);
        }
        report.status = if report.error.is_some() {
            PassStatus::Error
        } else if report.interrupted {
            PassStatus::Interrupted
        } else if report.failed > 0 {
            PassStatus::FailedChanges
        } else if report.rule_trouble() {
            PassStatus::Degraded
        } else if report.budget_exhausted {
            PassStatus::BudgetExhausted
        } else if dry_run {
            PassStatus::DryRun
        } else {
            PassStatus::Ok
        };
        record_rule_errors(ctx, set, &report).await;
        let totals = PassTotals {
            cases_seen: report.cases_seen as i64,
            planned: report.rules.iter().map(|r| r.planned as i64).sum(),
            applied: report.applied as i64,
            failed: report.failed as i64,
            skipped: report.skipped as i64,
            status: report.status.to_string(),
            error: report.error.clone(),
        };
        if let Err(e) = ctx.audit.finish_pass(&run_id, &totals).await {
            tracing::error!(error = %e, "cannot record the end of the pass");
            report.audit_failed = true;
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

/// One row per rule that failed on some case this pass (field `rule`, new `errors`, old
/// the number of cases, error the first failure), so reports count rule errors from the
/// chained log.
async fn record_rule_errors(ctx: &PassContext, set: &RuleSet, report: &PassReport) {
    let rows: Vec<NewEvent> = report
        .rules
        .iter()
        .filter(|r| r.errors > 0)
        .map(|r| NewEvent {
            run_id: report.run_id.clone(),
            rule: r.name.clone(),
            rule_hash: set
                .rules
                .iter()
                .find(|x| x.name == r.name)
                .map(|x| x.source_hash.clone())
                .unwrap_or_default(),
            case_id: "-".into(),
            field: "rule".into(),
            old: Some(r.errors.to_string()),
            new: Some("errors".into()),
            reason: format!("the rule failed on {} case(s) this pass", r.errors),
            error: r.first_error.clone(),
            dry_run: report.dry_run,
            outcome: Some(Outcome::Failed),
            ..NewEvent::default()
        })
        .collect();
    if !rows.is_empty()
        && let Err(e) = ctx.audit.append(&rows).await
    {
        tracing::error!(error = %e, "cannot record the rules' errors in the audit log");
    }
}

/// fetch -> evaluate -> plan -> record intent -> apply -> record outcomes.
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
        .filter(|r| r.instances.is_empty() || r.instances.contains(&ctx.instance))
        .cloned()
        .collect();
    // Who changes cases this pass: the rules, and for given plans also the names they
    // carry that are no rule (`revert:PASS`).
    let mut actors: Vec<Actor> = rules
        .iter()
        .map(|r| Actor {
            name: r.name.clone(),
            hash: r.source_hash.clone(),
            shadow: r.dry_run,
        })
        .collect();
    for p in opts.plans.iter().flat_map(|p| p.iter()) {
        for d in &p.decisions {
            if !actors.iter().any(|a| a.name == d.rule) {
                actors.push(Actor {
                    name: d.rule.clone(),
                    hash: String::new(),
                    shadow: false,
                });
            }
        }
    }
    report.rules = actors
        .iter()
        .map(|a| RuleStats {
            name: a.name.clone(),
            ..RuleStats::default()
        })
        .collect();
    ctx.audit
        .start_pass(&report.run_id, &opts.trigger, &set.fingerprint, dry_run)
        .await?;
    if actors.is_empty() {
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + ctx.settings.pass_timeout;
    let stage = Stage {
        ctx,
        set,
        opts,
        dry_run,
        index_of: actors
            .iter()
            .enumerate()
            .map(|(i, a)| (a.name.clone(), i))
            .collect(),
        rules,
        actors,
    };
    let plans = match &opts.plans {
        Some(given) => {
            report.cases_seen = given.len();
            for p in given.iter() {
                let mut actors: Vec<(&str, bool)> = Vec::new();
                for d in &p.decisions {
                    match actors.iter_mut().find(|(a, _)| *a == d.rule) {
                        Some((_, planned)) => *planned |= d.is_planned(),
                        None => actors.push((&d.rule, d.is_planned())),
                    }
                }
                for (actor, planned) in actors {
                    if let Some((i, _)) = stage.rule_of(actor) {
                        report.rules[i].seen += 1;
                        report.rules[i].matched += usize::from(planned);
                    }
                }
            }
            given.to_vec()
        }
        None => match stage.plan(report).await? {
            Some(plans) => plans,
            None => {
                report.interrupted = true;
                return Ok(());
            }
        },
    };
    let seq_of = stage.record_intent(&plans, report).await?;
    let plans = stage.hold_back_shadow_rules(plans);
    if !dry_run {
        let outcomes = stage.apply(&plans, seq_of, deadline, report).await?;
        stage.count(&plans, outcomes, report);
    }
    report.plans = plans;
    Ok(())
}

/// What the stages of one pass share: its context and the rules that run.
struct Stage<'a> {
    ctx: &'a PassContext,
    set: &'a RuleSet,
    opts: &'a PassOptions,
    dry_run: bool,
    rules: Vec<Arc<Rule>>,
    /// The rules first, in the same order, then any other name a given plan carries.
    actors: Vec<Actor>,
    index_of: HashMap<String, usize>,
}

/// Whose decisions a pass records: a rule, or a command acting like one (`revert:PASS`).
struct Actor {
    name: String,
    /// The rule file's SHA-256 (empty for a command).
    hash: String,
    /// A shadow rule: recorded, never sent.
    shadow: bool,
}

/// The planning state carried from page to page.
struct Planning {
    planner: plan::PassPlanner,
    /// Its `users` are fetched at most once per pass (see [`Stage::plan`]).
    env: EvalEnv,
    users_read: bool,
    /// Changes whose outcome is not known yet, per case: not planned again until settled.
    open: HashMap<String, std::collections::HashSet<String>>,
}

impl Stage<'_> {
    fn rule_of(&self, name: &str) -> Option<(usize, &Actor)> {
        let &i = self.index_of.get(name)?;
        Some((i, &self.actors[i]))
    }

    /// fetch -> evaluate -> plan, a page at a time (the next page downloads while this one
    /// is evaluated); the budget's deferrals are recorded per page. None: shut down.
    async fn plan(&self, report: &mut PassReport) -> anyhow::Result<Option<Vec<CasePlan>>> {
        let ctx = self.ctx;
        let mut open: HashMap<String, std::collections::HashSet<String>> = HashMap::new();
        for u in ctx.audit.unsettled().await? {
            if let Some(field) = Field::parse(&u.row.field) {
                let key = plan::memory_key(field, u.row.new.as_deref().unwrap_or(""));
                open.entry(u.row.case_id).or_default().insert(key);
            }
        }
        // The users list is fetched at most once per pass: now if casewarden's own user
        // id is needed to tell its changes apart or a rule looks people up, else when a
        // rule first assigns by email.
        let users_read = ctx.client.user().is_some() || self.set.needs_users;
        let users = match users_read {
            true => user_directory(ctx).await,
            false => None,
        };
        let own = Arc::new(own_identities(ctx.client.user(), users.as_deref()));
        let budgets = plan::Budgets {
            max_changes: ctx.settings.max_changes,
            max_change_fraction: ctx.settings.max_change_fraction,
            guard_min_cases: ctx.settings.guard_min_cases,
            tenants: ctx.settings.tenant_limits.clone(),
        };
        let names = self.rules.iter().map(|r| r.name.clone()).collect();
        let mut planner = plan::PassPlanner::new(names, budgets, own.to_vec());
        for r in &self.rules {
            let settings = plan::RuleSettings {
                max_change_fraction: r.max_change_fraction,
                max_changes: r.max_changes,
                shadow: r.dry_run,
            };
            planner.configure_rule(&r.name, settings);
        }
        let mut state = Planning {
            planner,
            env: EvalEnv {
                now_ms: None,
                own_users: own,
                limits: ctx.settings.limits.clone(),
                prints: Default::default(),
                users,
                calendars: ctx.settings.calendars.clone(),
                exempt_tags: ctx.settings.exempt_tags.clone(),
            },
            users_read,
            open,
        };
        let tenant_names = match self.set.needs_tenants {
            true => tenant_names(ctx).await,
            false => HashMap::new(),
        };
        let mut seen_by_tenant: HashMap<String, usize> = HashMap::new();
        let mut filters = pushdown(&self.rules);
        // A server limited to some customers lists only theirs (and checks each case).
        if !ctx.tenants.is_empty() && !filters.iter().any(|(k, _)| k == "tenantid") {
            filters.push(("tenantid".into(), ctx.tenants.join(",")));
        }
        // Pages download while the one before is evaluated.
        let mut pager = ctx
            .client
            .list_cases(filters)
            .ahead(ctx.settings.max_in_flight);
        while let Some(mut page) = pager.next_page().await? {
            if self.opts.cancelled() {
                return Ok(None);
            }
            if !ctx.tenants.is_empty() {
                let before = page.cases.len();
                page.cases.retain(|c| {
                    c.tenant()
                        .is_some_and(|t| ctx.tenants.iter().any(|x| x == t))
                });
                if page.cases.len() < before {
                    tracing::debug!(
                        left_out = before - page.cases.len(),
                        "cases of customers this instance is not limited to"
                    );
                }
            }
            if !tenant_names.is_empty() {
                page.cases
                    .iter_mut()
                    .for_each(|c| c.name_tenant(&tenant_names));
            }
            report.cases_unparsable += page.skipped.len();
            report.cases_seen += page.cases.len();
            for t in page.cases.iter().filter_map(Case::tenant) {
                *seen_by_tenant.entry(t.to_string()).or_default() += 1;
            }
            if let Some(hook) = &self.opts.on_page {
                (hook.0)(&page.cases);
            }
            self.opts.tell(Step::Listed {
                cases: (report.cases_seen + report.cases_unparsable) as u64,
                total: page.total,
            });
            self.plan_page(page.cases, &mut state, report).await?;
        }
        for (rule, dropped) in state.env.prints.dropped() {
            tracing::warn!(
                %rule,
                dropped,
                "print/debug lines past the limit of {} per rule and pass were dropped (daemon.max_prints_per_rule)",
                ctx.settings.limits.prints_per_pass
            );
        }
        // The guard measures each rule against every case the pass listed, not only the
        // ones its query selected: a precise rule changing all of its few cases is fine.
        let seen = vec![report.cases_seen; report.rules.len()];
        let passplan = state.planner.finish(&seen, &seen_by_tenant);
        for (i, stats) in report.rules.iter_mut().enumerate() {
            stats.matched = passplan.matched[i];
            stats.deferred = passplan.deferred[i];
            if let Some(why) = &passplan.halted[i] {
                stats.guard_halted = true;
                tracing::warn!(rule = %stats.name, "rule halted for this pass, none of its changes are applied: {why}");
            }
        }
        for (i, tenant, why) in &passplan.tenant_halts {
            let stats = &mut report.rules[*i];
            tracing::warn!(rule = %stats.name, %tenant, "rule halted for one customer this pass, its changes to the others go ahead: {why}");
            stats.tenant_halts.push((tenant.clone(), why.clone()));
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
        Ok((!self.opts.cancelled()).then_some(passplan.plans))
    }

    /// Evaluates one page and plans its cases; records what the budget deferred.
    async fn plan_page(
        &self,
        cases: Vec<Case>,
        state: &mut Planning,
        report: &mut PassReport,
    ) -> anyhow::Result<()> {
        let ctx = self.ctx;
        let evaluated = evaluate_cases(self.set, &self.rules, cases, &state.env).await?;
        let evaluated = with_activities(ctx, self.set, &self.rules, &state.env, evaluated).await?;
        let ids: Vec<&str> = evaluated
            .iter()
            .filter(|ev| !ev.requests.is_empty())
            .map(|ev| ev.case.id.as_str())
            .collect();
        let mut memory: HashMap<String, Vec<(Field, String, String)>> = HashMap::new();
        for row in ctx.audit.applied_changes(&ids).await? {
            if let Some(field) = Field::parse(&row.field) {
                memory.entry(row.case_id).or_default().push((
                    field,
                    row.new.unwrap_or_default(),
                    row.rule,
                ));
            }
        }
        let mut deferred_events = Vec::new();
        for mut ev in evaluated {
            for &i in &ev.seen_by {
                report.rules[i].seen += 1;
            }
            for &i in &ev.exempt_from {
                report.rules[i].exempt += 1;
            }
            let wants_assign_email = ev
                .requests
                .iter()
                .flat_map(|r| &r.changes)
                .any(|c| matches!(&c.kind, ChangeKind::Assign(w) if w.contains('@')));
            if wants_assign_email && !state.users_read {
                state.env.users = user_directory(ctx).await;
                state.users_read = true;
            }
            if wants_assign_email {
                resolve_assignees(&mut ev, state.env.users.as_deref(), &self.index_of);
            }
            for (i, e) in &ev.errors {
                let stats = &mut report.rules[*i];
                stats.errors += 1;
                if stats.first_error.is_none() {
                    stats.first_error = Some(format!(
                        "case {} ({}): {}",
                        e.case_id, e.location, e.message
                    ));
                }
                if stats.errors <= LOGGED_ERRORS_PER_RULE {
                    tracing::warn!(rule = %e.rule, case_id = %e.case_id, location = %e.location, "rule failed on a case: {}", crate::text::for_terminal(&e.message));
                }
            }
            if ev.requests.is_empty() {
                continue;
            }
            let applied = memory.remove(&ev.case.id).unwrap_or_default();
            let facts = plan::CaseFacts {
                memory: plan::remember(applied.iter().map(|(f, n, _)| (*f, n.as_str()))),
                open: state.open.get(&ev.case.id).cloned().unwrap_or_default(),
                reverted: reverted(&applied),
            };
            let flavor = ctx.client.flavor();
            if let Some(deferred) = state.planner.add(&ev.case, &ev.requests, &facts, flavor) {
                for d in &deferred.decisions {
                    if let Some((_, rule)) = self.rule_of(&d.rule) {
                        let row = event(&report.run_id, rule, &deferred, d, self.dry_run);
                        deferred_events.push(row);
                    }
                }
            }
        }
        if !deferred_events.is_empty() {
            report.skipped += deferred_events.len();
            ctx.audit.append(&deferred_events).await?;
        }
        Ok(())
    }

    /// Write-ahead: every decision is committed before any request goes out. Returns the
    /// `seq` of each decision's row.
    async fn record_intent(
        &self,
        plans: &[CasePlan],
        report: &mut PassReport,
    ) -> anyhow::Result<HashMap<DecisionId, i64>> {
        let repeated = self.repeated_dry_runs(plans).await?;
        let mut events = Vec::new();
        let mut owners = Vec::new();
        let mut seqs = Vec::new();
        let mut not_again = 0;
        for (id, p, d) in plan::decisions(plans) {
            if events.len() == INTENT_ROWS {
                seqs.extend(self.ctx.audit.append(&events).await?);
                events.clear();
            }
            let Some((ri, rule)) = self.rule_of(&d.rule) else {
                continue;
            };
            if repeated.contains(&(p.case_id.as_str(), d.rule.as_str())) {
                not_again += 1;
            } else {
                let dry = self.dry_run || rule.shadow;
                events.push(event(&report.run_id, rule, p, d, dry));
                owners.push(id);
            }
            if d.is_planned() {
                report.rules[ri].planned += 1;
            } else {
                report.rules[ri].skipped += 1;
                report.skipped += 1;
                if let Some(t) = &p.tenant {
                    report.by_tenant.entry(t.clone()).or_default()[2] += 1;
                }
            }
        }
        if not_again > 0 {
            tracing::info!(
                rows = not_again,
                "dry-run rows not recorded again: the same plan as the last dry run of that rule on that case"
            );
        }
        seqs.extend(self.ctx.audit.append(&events).await?);
        Ok(owners.into_iter().zip(seqs).collect())
    }

    /// The (case, rule) pairs of dry-run decisions that plan exactly what the last dry run
    /// of that rule on that case recorded (fields, values, planned or skipped): recording
    /// them again every pass would fill the log with copies.
    async fn repeated_dry_runs<'p>(
        &self,
        plans: &'p [CasePlan],
    ) -> anyhow::Result<std::collections::HashSet<(&'p str, &'p str)>> {
        // A reviewed plan checked with `apply --dry-run` is an event of its own.
        if self.opts.plans.is_some() {
            return Ok(Default::default());
        }
        type Sig = Vec<(String, String, Outcome)>;
        let mut now: HashMap<(&str, &str), Sig> = HashMap::new();
        for (_, p, d) in plan::decisions(plans) {
            if !self
                .rule_of(&d.rule)
                .is_some_and(|(_, r)| self.dry_run || r.shadow)
            {
                continue;
            }
            let outcome = if d.is_planned() {
                Outcome::Planned
            } else {
                Outcome::Skipped
            };
            now.entry((p.case_id.as_str(), d.rule.as_str()))
                .or_default()
                .push((
                    d.field.to_string(),
                    d.new.clone().unwrap_or_default(),
                    outcome,
                ));
        }
        if now.is_empty() {
            return Ok(Default::default());
        }
        let ids: Vec<&str> = now
            .keys()
            .map(|(c, _)| *c)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut last: HashMap<(String, String), Sig> = HashMap::new();
        for r in self.ctx.audit.last_dry_runs(&ids).await? {
            last.entry((r.case_id, r.rule)).or_default().push((
                r.field,
                r.new.unwrap_or_default(),
                r.outcome,
            ));
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

    /// Shadow rules (`RULE.dry_run`) were recorded as dry-run rows; nothing of theirs is
    /// sent while the other rules' changes are.
    fn hold_back_shadow_rules(&self, mut plans: Vec<CasePlan>) -> Vec<CasePlan> {
        let shadow: Vec<&str> = self
            .actors
            .iter()
            .filter(|a| a.shadow)
            .map(|a| a.name.as_str())
            .collect();
        if !shadow.is_empty() {
            for p in &mut plans {
                for rule in &shadow {
                    p.skip_rule(
                        rule,
                        "shadow rule (RULE.dry_run): recorded as a dry run, not sent",
                    );
                }
            }
        }
        plans
    }

    /// Sends every case's update with bounded concurrency; outcome rows are written by one
    /// writer as they come. Returns the outcome of every decision it settled.
    async fn apply(
        &self,
        plans: &[CasePlan],
        seq_of: HashMap<DecisionId, i64>,
        deadline: tokio::time::Instant,
        report: &mut PassReport,
    ) -> anyhow::Result<Vec<(DecisionId, Outcome)>> {
        let ctx = self.ctx;
        let (tx, rx) = tokio::sync::mpsc::channel::<Vec<NewEvent>>(256);
        let audit_broken = Arc::new(AtomicBool::new(false));
        let writer = tokio::spawn(write_outcomes(ctx.audit.clone(), rx, audit_broken.clone()));
        let work: Vec<(usize, &CasePlan)> = plans
            .iter()
            .enumerate()
            .filter(|(_, p)| p.has_work())
            .collect();
        let apply = Arc::new(Applier {
            client: ctx.client.clone(),
            tx,
            seq_of,
            rule_hash: self
                .actors
                .iter()
                .map(|a| (a.name.clone(), a.hash.clone()))
                .collect(),
            run_id: report.run_id.clone(),
            cancel: self.opts.cancel.clone(),
            audit_broken,
            wrong_flavor: std::sync::OnceLock::new(),
            deadline,
            comment_changes: ctx.settings.comment_changes,
            audit: ctx.audit.clone(),
            read_by_ticket: AtomicBool::new(true),
        });
        let total = work.len() as u64;
        let mut done = 0;
        let in_flight = ctx.settings.max_in_flight.max(1);
        // Each wave is read in one request just before it is sent; the next wave's read
        // overlaps the end of this one's updates.
        let wave = in_flight * WAVE_PER_REQUEST;
        let (reader, sender) = (apply.clone(), apply.clone());
        // Boxed: the compiler cannot prove the combined stream `Send` otherwise.
        let sends = futures::stream::iter(work)
            .chunks(wave)
            .then(move |w| {
                let apply = reader.clone();
                async move { apply.read_wave(w).await }
            })
            .flat_map(futures::stream::iter)
            .map(move |(case, p, fresh)| sender.clone().apply(case, p, fresh))
            .buffer_unordered(in_flight)
            .boxed();
        let results: Vec<Vec<(DecisionId, Outcome)>> = sends
            .inspect(|_| {
                done += 1;
                self.opts.tell(Step::Applied { cases: done, total });
            })
            .collect()
            .await;
        if let Some(e) = apply.wrong_flavor.get() {
            tracing::error!(error = %e, "no further change is sent this pass");
            report.error = Some(e.clone());
        }
        drop(apply);
        writer.await??;
        report.interrupted |= self.opts.cancelled();
        Ok(results.into_iter().flatten().collect())
    }

    /// Adds the outcomes to the report, per rule and in total.
    fn count(
        &self,
        plans: &[CasePlan],
        outcomes: Vec<(DecisionId, Outcome)>,
        report: &mut PassReport,
    ) {
        for (id, outcome) in outcomes {
            let Some((ri, _)) = self.rule_of(&plans[id.case].decisions[id.decision].rule) else {
                continue;
            };
            let (by_rule, total, column) = match outcome {
                Outcome::Applied => (&mut report.rules[ri].applied, &mut report.applied, 0),
                Outcome::Skipped => (&mut report.rules[ri].skipped, &mut report.skipped, 2),
                _ => (&mut report.rules[ri].failed, &mut report.failed, 1),
            };
            *by_rule += 1;
            *total += 1;
            if let Some(t) = &plans[id.case].tenant {
                report.by_tenant.entry(t.clone()).or_default()[column] += 1;
            }
        }
    }
}

/// Planned rows committed per transaction: every one of them is committed before the first
/// request either way; a large plan is not built as one list of rows, and the lease's
/// heartbeat is not kept waiting behind one long transaction.
const INTENT_ROWS: usize = 10_000;

/// Cases read at once before sending, per request in flight: the longest a read waits for
/// its update is this many round trips.
const WAVE_PER_REQUEST: usize = 8;

/// Outcome rows are committed at most this long after they arrive, this many at a time.
/// Each commit rewrites the index pages its rows touch (case ids are random), so a few
/// large transactions cost far less than one per answer; an outcome lost to a crash in
/// between leaves its `planned` row, which the next pass settles by reading the case.
const OUTCOME_WINDOW: Duration = Duration::from_millis(250);
const OUTCOME_ROWS: usize = 5000;

/// Collects outcomes for up to [`OUTCOME_WINDOW`] into one transaction. After a failed
/// write no further request is sent (the senders check `audit_broken`); what was in
/// flight stays `planned` for the next pass to settle.
async fn write_outcomes(
    audit: AuditStore,
    mut rx: tokio::sync::mpsc::Receiver<Vec<NewEvent>>,
    audit_broken: Arc<AtomicBool>,
) -> Result<(), crate::audit::AuditError> {
    let mut failure = None;
    while let Some(mut batch) = rx.recv().await {
        let until = tokio::time::Instant::now() + OUTCOME_WINDOW;
        while batch.len() < OUTCOME_ROWS {
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(mut more)) => batch.append(&mut more),
                _ => break,
            }
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

/// Customer names by `cust_id`, from the server's tenants list; empty, with a warning, when
/// it cannot be read (rules then see no `tenant_name` on cases that do not carry one).
async fn tenant_names(ctx: &PassContext) -> HashMap<String, String> {
    match ctx.client.list_tenants().await {
        Ok(tenants) => tenants
            .into_iter()
            .filter_map(|t| Some((t.id, t.name?)))
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list tenants: cases that do not carry tenant_name have none this pass");
            HashMap::new()
        }
    }
}

/// The server's users, remembered in the audit DB so `casewarden audit` can show emails
/// beside ids; None, with a warning, when they cannot be listed.
async fn user_directory(ctx: &PassContext) -> Option<Arc<Directory>> {
    match ctx.client.list_users().await {
        Ok(users) => {
            let directory = Directory::new(users);
            if let Err(e) = ctx.audit.remember_users(&directory).await {
                tracing::warn!(error = %e, "cannot record the users' emails in the audit DB");
            }
            Some(Arc::new(directory))
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot list users: assignments by email and user_email/user_id fail this pass, and casewarden's own history entries are matched by email only");
            None
        }
    }
}
