//! Stage: turn each page's evaluated cases into case plans (what casewarden applied before,
//! what is still open, emails resolved to users), then the whole pass's plan: budget, guard.
//! The decisions are made by the pure planner (`crate::plan`); this stage feeds it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::evaluate::{Evaluated, Page};
use super::reconcile;
use super::run::Run;
use super::stats::{self, RuleStats};
use crate::audit::AuditError;
use crate::plan::{self, CasePlan, ChangeKind, Field};
use crate::rules::{EvalEnv, EvalError};
use crate::stellar::{Case, Directory};

/// Errors logged in full per rule and pass; the rest are counted.
pub(super) const LOGGED_ERRORS_PER_RULE: usize = 5;

/// The pass's plan and what planning saw on the way.
#[derive(Debug, Default)]
pub(super) struct Planned {
    /// Cases with something to record, in the order they were listed.
    pub plans: Vec<CasePlan>,
    /// Per actor: seen, exempt, errors, matched, deferred, halts.
    pub rules: Vec<RuleStats>,
    pub cases_seen: usize,
    /// Of those, the cases counted from their remembered verdicts.
    pub cases_remembered: usize,
    pub unparsable: usize,
    pub budget_exhausted: bool,
    pub deferred_changes: usize,
    /// Values another automation set back this pass (after recording: the ones seen for
    /// the first time).
    pub clashes: Vec<plan::CaseClash>,
}

/// The planning state carried from page to page.
pub(super) struct Planning {
    planner: plan::PassPlanner,
    /// Its `users` are fetched at most once per pass (see [`Planning::start`]).
    env: EvalEnv,
    users_read: bool,
    /// Changes whose outcome is not known yet, per case: not planned again until settled.
    open: HashMap<String, HashSet<String>>,
    seen_by_tenant: HashMap<String, usize>,
    /// Per case: rules whose changes the budget deferred last pass.
    deferred_before: HashMap<String, HashSet<String>>,
    /// (rule, message) of the errors logged this pass: a value the server refuses fails
    /// the rule on every case it occurs on, and is logged once.
    logged: HashSet<(usize, String)>,
    tally: Planned,
}

impl Planning {
    /// Settles the changes in doubt by reading their cases (a live pass), reads what is
    /// still open and, when needed, the server's users.
    pub async fn start(run: &Run<'_>) -> Result<Planning, AuditError> {
        let ctx = run.ctx;
        let mut open: HashMap<String, HashSet<String>> = HashMap::new();
        let mut unsettled = ctx.audit.unsettled().await?;
        if !run.dry_run {
            unsettled = reconcile::doubts(ctx, unsettled).await?;
        }
        for u in unsettled {
            if let Some(field) = Field::parse(&u.row.field) {
                let key = plan::memory_key(field, u.row.new.as_deref().unwrap_or(""));
                open.entry(u.row.case_id).or_default().insert(key);
            }
        }
        // The users list is fetched at most once per pass: now if casewarden's own user
        // id is needed to tell its changes apart or a rule looks people up, else when a
        // rule first assigns by email.
        let users_read = ctx.client.user().is_some() || run.set.needs_users;
        let users = match users_read {
            true => user_directory(run).await,
            false => None,
        };
        let own = Arc::new(own_identities(ctx.client.user(), users.as_deref()));
        let env = EvalEnv {
            now_ms: None,
            own_users: own.clone(),
            limits: ctx.settings.limits.clone(),
            prints: Default::default(),
            users,
            calendars: ctx.settings.calendars.clone(),
            exempt_tags: ctx.settings.exempt_tags.clone(),
        };
        let mut deferred_before: HashMap<String, HashSet<String>> = HashMap::new();
        if !run.dry_run {
            for (case_id, rule) in ctx.audit.deferred_last_pass().await? {
                deferred_before.entry(case_id).or_default().insert(rule);
            }
        }
        let mut planner = planner(run, own.to_vec());
        planner.know_people(env.users.clone());
        Ok(Planning {
            planner,
            env,
            users_read,
            open,
            seen_by_tenant: HashMap::new(),
            deferred_before,
            logged: HashSet::new(),
            tally: Planned {
                rules: stats::zeroed(run),
                ..Planned::default()
            },
        })
    }

    /// What the rules are evaluated with.
    pub fn env(&self) -> &EvalEnv {
        &self.env
    }

    /// Counts a listed page; the cases counted from their verdicts in full, as the rules
    /// made of them.
    pub fn listed(&mut self, page: &Page) {
        self.tally.unparsable += page.unparsable.len();
        self.tally.cases_seen += page.evaluated.len() + page.known.len();
        self.tally.cases_remembered += page.known.len();
        let evaluated = page.evaluated.iter().filter_map(|ev| ev.case.tenant());
        let known = page.known.iter().filter_map(|k| k.tenant.as_deref());
        for t in evaluated.chain(known) {
            *self.seen_by_tenant.entry(t.to_string()).or_default() += 1;
        }
        for k in &page.known {
            self.seen(&k.seen_by, &k.exempt_from);
        }
    }

    /// Plans one page's evaluated cases.
    pub async fn add(
        &mut self,
        run: &Run<'_>,
        evaluated: Vec<Evaluated>,
    ) -> Result<(), AuditError> {
        let mut memory = applied_before(run, &evaluated).await?;
        for mut ev in evaluated {
            self.resolve_emails(run, &mut ev).await;
            self.count(&ev);
            if ev.requests.is_empty() {
                continue;
            }
            let applied = memory.remove(&ev.case.id).unwrap_or_default();
            let mut applied_times: HashMap<String, usize> = HashMap::new();
            for (field, new, _) in applied.iter().filter(|(_, _, r)| !r.starts_with("revert:")) {
                *applied_times
                    .entry(plan::memory_key(*field, new))
                    .or_default() += 1;
            }
            let facts = plan::CaseFacts {
                applied_times,
                memory: plan::remember(applied.iter().map(|(f, n, _)| (*f, n.as_str()))),
                open: self.open.get(&ev.case.id).cloned().unwrap_or_default(),
                reverted: reverted(&applied),
                deferred_before: self.deferred_before.remove(&ev.case.id).unwrap_or_default(),
            };
            if plan::sets_back(&ev.case, &ev.requests, &facts.memory) {
                who_set_back(run, &mut ev.case).await;
            }
            let flavor = run.ctx.client.flavor();
            self.planner.add(&ev.case, &ev.requests, &facts, flavor);
        }
        Ok(())
    }

    /// Counts the rules that looked at a case, and the ones an exemption kept off it.
    fn seen(&mut self, seen_by: &[usize], exempt_from: &[usize]) {
        let rules = &mut self.tally.rules;
        for &i in seen_by {
            rules[i].seen += 1;
        }
        for &i in exempt_from {
            rules[i].exempt += 1;
        }
    }

    /// Counts what the rules made of one case.
    fn count(&mut self, ev: &Evaluated) {
        self.seen(&ev.seen_by, &ev.exempt_from);
        let rules = &mut self.tally.rules;
        for (i, e) in &ev.errors {
            let stats = &mut rules[*i];
            stats.errors += 1;
            if stats.first_error.is_none() {
                stats.first_error = Some(format!(
                    "case {} ({}): {}",
                    e.case_id, e.location, e.message
                ));
            }
            if stats.logged_errors < LOGGED_ERRORS_PER_RULE
                && self.logged.insert((*i, e.message.clone()))
            {
                stats.logged_errors += 1;
                tracing::warn!(rule = %e.rule, case_id = %e.case_id, location = %e.location, "rule failed on a case: {}", crate::text::for_terminal(&e.message));
            }
        }
    }

    /// Resolves `assign("someone@x")` to user ids, reading the users list the first time;
    /// an email nobody has is the rule's error on the case.
    async fn resolve_emails(&mut self, run: &Run<'_>, ev: &mut Evaluated) {
        let wants_email = ev
            .requests
            .iter()
            .flat_map(|r| &r.changes)
            .any(|c| matches!(&c.kind, ChangeKind::Assign(w) if w.contains('@')));
        if !wants_email {
            return;
        }
        if !self.users_read {
            self.env.users = user_directory(run).await;
            self.planner.know_people(self.env.users.clone());
            self.users_read = true;
        }
        let users = self.env.users.as_deref();
        for (rule, who) in plan::resolve_emails(&mut ev.requests, users) {
            let Some((i, _)) = run.actor(&rule) else {
                continue;
            };
            let message = match users {
                Some(_) => format!("assign: no user with email {who:?} on the server"),
                None => format!(
                    "assign: cannot look up {who:?}: the server's users list could not be read this pass"
                ),
            };
            let case_id = ev.case.id.clone();
            let location = "assign".into();
            ev.errors.push((
                i,
                EvalError {
                    rule,
                    case_id,
                    location,
                    message,
                },
            ));
        }
    }

    /// The whole pass's plan, once every page was seen: the guard and the budget's totals.
    pub fn finish(self, run: &Run<'_>) -> Planned {
        self.log_dropped_prints(run);
        // The guard measures each rule against every case the pass listed, not only the
        // ones its query selected: a precise rule changing all of its few cases is fine.
        let seen = vec![self.tally.cases_seen; self.tally.rules.len()];
        let passplan = self.planner.finish(&seen, &self.seen_by_tenant);
        let mut planned = self.tally;
        for (i, stats) in planned.rules.iter_mut().enumerate() {
            stats.matched = passplan.matched[i];
            stats.deferred = passplan.deferred[i];
            if let Some(why) = &passplan.halted[i] {
                stats.halted = Some(why.clone());
                tracing::warn!(rule = %stats.name, "rule halted for this pass, none of its changes are applied: {why}");
            }
        }
        for (i, tenant, why) in passplan.tenant_halts {
            let stats = &mut planned.rules[i];
            tracing::warn!(rule = %stats.name, %tenant, "rule halted for one customer this pass, its changes to the others go ahead: {why}");
            stats.tenant_halts.push((tenant, why));
        }
        planned.clashes = passplan.clashes;
        planned.budget_exhausted = passplan.budget_exhausted;
        planned.deferred_changes = passplan.deferred_changes;
        if planned.budget_exhausted {
            tracing::warn!(
                deferred = planned.deferred_changes,
                budget = run.ctx.settings.max_changes,
                "change budget exhausted: {} change(s) deferred to the next pass",
                planned.deferred_changes
            );
        }
        planned.plans = passplan.plans;
        planned
    }

    /// What was counted before the pass stopped (shutdown, a failed listing): no plans,
    /// and none of the whole pass's counts (matched, deferred, halts, budget).
    pub fn abandon(self) -> Planned {
        self.tally
    }

    fn log_dropped_prints(&self, run: &Run<'_>) {
        for (rule, dropped) in self.env.prints.dropped() {
            tracing::warn!(
                %rule,
                dropped,
                "print/debug lines past the limit of {} per rule and pass were dropped (daemon.max_prints_per_rule)",
                run.ctx.settings.limits.prints_per_pass
            );
        }
    }
}

/// The plan of given case plans (`apply`, `revert`): every actor's cases, nothing listed.
pub(super) fn given(run: &Run<'_>, given: &[CasePlan]) -> Planned {
    let mut rules = stats::zeroed(run);
    for p in given {
        let mut actors: Vec<(&str, bool)> = Vec::new();
        for d in &p.decisions {
            match actors.iter_mut().find(|(a, _)| *a == d.rule) {
                Some((_, planned)) => *planned |= d.is_planned(),
                None => actors.push((&d.rule, d.is_planned())),
            }
        }
        for (actor, planned) in actors {
            if let Some((i, _)) = run.actor(actor) {
                rules[i].seen += 1;
                rules[i].matched += usize::from(planned);
            }
        }
    }
    Planned {
        plans: given.to_vec(),
        rules,
        cases_seen: given.len(),
        ..Planned::default()
    }
}

/// The pure planner, with each rule's own limits.
fn planner(run: &Run<'_>, own: Vec<String>) -> plan::PassPlanner {
    let s = &run.ctx.settings;
    let budgets = plan::Budgets {
        max_changes: s.max_changes,
        max_change_fraction: s.max_change_fraction,
        guard_min_cases: s.guard_min_cases,
        tenants: s.tenant_limits.clone(),
    };
    let names = run.rules.iter().map(|r| r.name.clone()).collect();
    let mut planner = plan::PassPlanner::new(names, budgets, own);
    for r in &run.rules {
        let settings = plan::RuleSettings {
            max_change_fraction: r.max_change_fraction,
            max_changes: r.max_changes,
            shadow: r.dry_run,
            reapply: r.reapply_over_automation,
        };
        planner.configure_rule(&r.name, settings);
    }
    planner
}

/// A case where someone set back what casewarden applied, on a server that sends no
/// `history`: its activities say who (a person, or another automation). Kept in the
/// mirror until the case changes; unreadable, the change counts as a person's.
async fn who_set_back(run: &Run<'_>, case: &mut Case) {
    if case.activities.is_some() || case.raw().get("history").is_some() {
        return;
    }
    match super::evaluate::activities_of(run.ctx, case).await {
        Ok(read) => case.activities = Some(read),
        Err(e) => {
            tracing::warn!(case_id = %case.id, error = %e, "cannot read the case's activities to tell who set back casewarden's change; taken as a person");
        }
    }
}

/// What casewarden applied before to the cases a rule wants to change: (field, value, rule).
async fn applied_before(
    run: &Run<'_>,
    evaluated: &[Evaluated],
) -> Result<HashMap<String, Vec<(Field, String, String)>>, AuditError> {
    let ids: Vec<&str> = evaluated
        .iter()
        .filter(|ev| !ev.requests.is_empty())
        .map(|ev| ev.case.id.as_str())
        .collect();
    let mut memory: HashMap<String, Vec<(Field, String, String)>> = HashMap::new();
    for row in run.ctx.audit.applied_changes(&ids).await? {
        if let Some(field) = Field::parse(&row.field) {
            let change = (field, row.new.unwrap_or_default(), row.rule);
            memory.entry(row.case_id).or_default().push(change);
        }
    }
    Ok(memory)
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

/// Who casewarden is in case histories: its API user's email and, from the users list, id.
fn own_identities(user: Option<&str>, users: Option<&Directory>) -> Vec<String> {
    let Some(user) = user else {
        return Vec::new();
    };
    let id = users.and_then(|u| u.id_of(user)).map(str::to_string);
    std::iter::once(user.to_string()).chain(id).collect()
}

/// The server's users, remembered in the audit DB so `casewarden audit` can show emails
/// beside ids; None, with a warning, when they cannot be listed.
async fn user_directory(run: &Run<'_>) -> Option<Arc<Directory>> {
    match run.ctx.client.list_users().await {
        Ok(users) => {
            let directory = Directory::new(users);
            if let Err(e) = run.ctx.audit.remember_users(&directory).await {
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
