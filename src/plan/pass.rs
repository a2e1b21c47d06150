//! The whole pass's policy, pure and I/O-free: per case, the merge of what the rules asked
//! (no-ops, conflicts: see [`super::plan_case`]), the legacy flavour's missing resolution,
//! human override from casewarden's memory, changes whose outcome is still open, and the
//! change budget; over the pass, the blast-radius guard. Facts from the server and the
//! audit log come in as inputs.

use std::collections::{HashMap, HashSet};

use std::sync::Arc;

use super::memory::{Clash, Overrides, skip_overridden};
use super::{CasePlan, Field, Memory, RuleChanges, memory_key, plan_case};
use crate::stellar::{ApiFlavor, Case, Directory};

/// A customer's own limits, stricter (or looser) than the pass-wide ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantLimits {
    /// At most this many changes to the customer's cases per pass; the rest wait.
    pub max_changes_per_run: Option<usize>,
    /// The blast-radius guard for this customer: a rule changing more than this share of
    /// its cases is halted for it (the stricter of this and the rule's own limit).
    pub max_change_fraction: Option<f64>,
}

/// The pass-wide limits, from `[daemon]`, and each customer's own (`[tenants."ID"]`).
#[derive(Debug, Clone)]
pub struct Budgets {
    pub max_changes: usize,
    pub max_change_fraction: f64,
    pub guard_min_cases: usize,
    pub tenants: HashMap<String, TenantLimits>,
}

/// What a rule sets for itself in `RULE`, overriding the pass-wide settings for it.
#[derive(Debug, Clone, Copy, Default)]
pub struct RuleSettings {
    pub max_change_fraction: Option<f64>,
    pub max_changes: Option<usize>,
    /// `RULE.dry_run`: its decisions are recorded, never sent, and take nothing from the
    /// live rules: no field claim (a shadow rule loses no conflict for them) and no budget.
    pub shadow: bool,
    /// `RULE.on_automation_revert = "reapply"`.
    pub reapply: bool,
}

/// What casewarden knows of one case besides the case itself.
#[derive(Debug, Clone, Default)]
pub struct CaseFacts {
    /// What casewarden last applied to each field.
    pub memory: Memory,
    /// Keys ([`memory_key`]) of changes whose outcome is not settled yet.
    pub open: HashSet<String>,
    /// Keys whose last applied change was a `casewarden revert` (key -> `revert:PASS`):
    /// a person undid what a rule did there, so no rule does it again.
    pub reverted: HashMap<String, String>,
    /// Rules whose changes to this case the budget deferred last pass: first in line now.
    pub deferred_before: HashSet<String>,
    /// How often casewarden applied each value ([`memory_key`]) to this case.
    pub applied_times: HashMap<String, usize>,
}

/// Another automation set back what a rule applied to a case.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseClash {
    pub case_id: String,
    pub ticket_id: Option<i64>,
    pub tenant: Option<String>,
    pub clash: Clash,
}

/// The plans of a pass, once every case was seen.
#[derive(Debug, Default)]
pub struct PassPlan {
    /// Cases with something to record, in the order they were listed.
    pub plans: Vec<CasePlan>,
    /// Per rule (the planner's order): cases it wanted to change.
    pub matched: Vec<usize>,
    /// Per rule: changes deferred (or refused) by the budget.
    pub deferred: Vec<usize>,
    /// Per rule: why the guard halted it, if it did.
    pub halted: Vec<Option<String>>,
    /// Rules the guard halted for one customer only: (rule index, cust_id, why).
    pub tenant_halts: Vec<(usize, String, String)>,
    pub budget_exhausted: bool,
    pub deferred_changes: usize,
    /// Values another automation set back, and what casewarden did about it.
    pub clashes: Vec<CaseClash>,
}

/// Plans a pass case by case (pages arrive one at a time), then applies the guard.
pub struct PassPlanner {
    rules: Vec<String>,
    budgets: Budgets,
    /// Per rule: what it sets for itself.
    limits: Vec<RuleSettings>,
    /// Per rule: changes planned so far, against its cap.
    used_by_rule: Vec<usize>,
    own: Vec<String>,
    /// The server's users, when read: an API user they list is a person.
    people: Option<Arc<Directory>>,
    used: usize,
    /// Per (rule, customer): cases it wanted to change.
    matched_by_tenant: HashMap<(usize, String), usize>,
    /// Per customer: changes planned so far, against its own budget.
    used_by_tenant: HashMap<String, usize>,
    /// Per plan of `plan.plans`: its place in each rule's line for the budget.
    lines: Vec<Line>,
    plan: PassPlan,
}

/// Where a case stands in line for the budget: changes deferred last pass first, then the
/// oldest case, then the listing's order.
#[derive(Debug, Clone)]
struct Line {
    created_at: i64,
    deferred_before: HashSet<String>,
}

impl PassPlanner {
    /// `rules`: the pass's rule names in order; `own`: casewarden's user id and email.
    pub fn new(rules: Vec<String>, budgets: Budgets, own: Vec<String>) -> PassPlanner {
        let n = rules.len();
        PassPlanner {
            rules,
            budgets,
            limits: vec![RuleSettings::default(); n],
            used_by_rule: vec![0; n],
            own,
            people: None,
            used: 0,
            matched_by_tenant: HashMap::new(),
            used_by_tenant: HashMap::new(),
            lines: Vec::new(),
            plan: PassPlan {
                matched: vec![0; n],
                deferred: vec![0; n],
                halted: vec![None; n],
                ..PassPlan::default()
            },
        }
    }

    /// The server's users, to tell a person using the API from another automation.
    pub fn know_people(&mut self, people: Option<Arc<Directory>>) {
        self.people = people;
    }

    /// A rule's own settings (see [`RuleSettings`]).
    pub fn configure_rule(&mut self, rule: &str, settings: RuleSettings) {
        if let Some(i) = self.index(rule) {
            self.limits[i] = settings;
        }
    }

    fn is_shadow(&self, rule: &str) -> bool {
        self.index(rule).is_some_and(|i| self.limits[i].shadow)
    }

    fn index(&self, rule: &str) -> Option<usize> {
        self.rules.iter().position(|r| r == rule)
    }

    /// Plans one case; the budget is shared out once every case was seen ([`Self::finish`]).
    pub fn add(
        &mut self,
        case: &Case,
        requests: &[RuleChanges],
        facts: &CaseFacts,
        flavor: ApiFlavor,
    ) {
        let mut plan = self.merge(case, requests);
        if flavor == ApiFlavor::Legacy {
            skip_resolution(&mut plan);
        }
        let reapplies = |rule: &str| self.index(rule).is_some_and(|i| self.limits[i].reapply);
        let who = Overrides {
            own: &self.own,
            people: self.people.as_deref(),
            reapplies: &reapplies,
        };
        let clashes = skip_overridden(&mut plan, case, &facts.memory, &facts.applied_times, &who);
        self.plan
            .clashes
            .extend(clashes.into_iter().map(|clash| CaseClash {
                case_id: plan.case_id.clone(),
                ticket_id: plan.ticket_id,
                tenant: plan.tenant.clone(),
                clash,
            }));
        skip_reverted_and_open(&mut plan, facts);
        self.apply_rule_caps(&mut plan);
        self.count_matches(&plan);
        if plan.decisions.is_empty() {
            return;
        }
        self.lines.push(Line {
            created_at: case.created_at().unwrap_or(i64::MAX),
            deferred_before: facts.deferred_before.clone(),
        });
        self.plan.plans.push(plan);
    }

    /// The case's plan, with shadow rules merged among themselves after the live ones.
    fn merge(&self, case: &Case, requests: &[RuleChanges]) -> CasePlan {
        if !self.limits.iter().any(|l| l.shadow) {
            return plan_case(case, requests);
        }
        let (shadow, live): (Vec<RuleChanges>, Vec<RuleChanges>) = requests
            .iter()
            .cloned()
            .partition(|r| self.is_shadow(&r.rule));
        let mut plan = plan_case(case, &live);
        plan.decisions.extend(plan_case(case, &shadow).decisions);
        plan
    }

    /// Defers what a rule plans beyond its own cap (`RULE.max_changes`).
    fn apply_rule_caps(&mut self, plan: &mut CasePlan) {
        for d in plan.decisions.iter_mut().filter(|d| d.is_planned()) {
            let Some(i) = self.index(&d.rule) else {
                continue;
            };
            if let Some(cap) = self.limits[i].max_changes {
                if self.used_by_rule[i] >= cap {
                    self.plan.deferred[i] += 1;
                    d.skipped = Some(format!(
                        "the rule's own cap of {cap} changes per pass (RULE.max_changes) is spent; {DEFERRED}"
                    ));
                } else {
                    self.used_by_rule[i] += 1;
                }
            }
        }
    }

    /// Counts the case once for each rule that still wants to change it (the guard's input),
    /// overall and for its customer.
    fn count_matches(&mut self, plan: &CasePlan) {
        let mut wanted: Vec<usize> = plan
            .decisions
            .iter()
            .filter(|d| d.is_planned())
            .filter_map(|d| self.index(&d.rule))
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        for i in wanted {
            self.plan.matched[i] += 1;
            if let Some(t) = &plan.tenant {
                *self.matched_by_tenant.entry((i, t.clone())).or_default() += 1;
            }
        }
    }

    /// Shares the pass's budget (and each customer's) out in rounds over the rules: each
    /// rule in turn takes the changes of its next case (a rule's changes to one case go
    /// together), so no rule can take it all. Halted and shadow rules take nothing; what
    /// does not fit is deferred to the next pass, where it is first in line.
    fn share_budget(&mut self) {
        let lines = self.rule_lines();
        let mut turn = vec![0; lines.len()];
        loop {
            let mut took = false;
            for i in 0..lines.len() {
                if let Some(&p) = lines[i].get(turn[i]) {
                    turn[i] += 1;
                    took = true;
                    self.charge(i, p);
                }
            }
            if !took {
                break;
            }
        }
    }

    /// Per rule, the plans it has live changes in, in line order.
    fn rule_lines(&self) -> Vec<Vec<usize>> {
        let mut lines = vec![Vec::new(); self.rules.len()];
        for (p, plan) in self.plan.plans.iter().enumerate() {
            let mut wants: Vec<usize> = plan
                .decisions
                .iter()
                .filter(|d| d.is_planned())
                .filter_map(|d| self.index(&d.rule))
                .filter(|&i| !self.limits[i].shadow)
                .collect();
            wants.sort_unstable();
            wants.dedup();
            for i in wants {
                lines[i].push(p);
            }
        }
        for (i, line) in lines.iter_mut().enumerate() {
            let rule = &self.rules[i];
            line.sort_by_key(|&p| {
                let l = &self.lines[p];
                (!l.deferred_before.contains(rule), l.created_at, p)
            });
        }
        lines
    }

    /// Takes rule `i`'s changes to plan `p` from the pass's budget and its customer's, or
    /// defers them.
    fn charge(&mut self, i: usize, p: usize) {
        let rule = &self.rules[i];
        let plan = &self.plan.plans[p];
        let cost = plan
            .decisions
            .iter()
            .filter(|d| d.is_planned() && &d.rule == rule)
            .count();
        let budget = self.budgets.max_changes;
        let tenant_cap = plan.tenant.as_ref().and_then(|t| {
            let cap = self.budgets.tenants.get(t)?.max_changes_per_run?;
            Some((
                t.clone(),
                cap,
                self.used_by_tenant.get(t).copied().unwrap_or(0),
            ))
        });
        let over_tenant = tenant_cap
            .as_ref()
            .filter(|(_, cap, used)| used + cost > *cap);
        if self.used + cost <= budget && over_tenant.is_none() {
            self.used += cost;
            if let Some((t, _, used)) = tenant_cap {
                self.used_by_tenant.insert(t, used + cost);
            }
            return;
        }
        // What does not fit waits for the next pass while smaller changes still go; what
        // could never fit is refused instead of blocking every pass.
        let why = if let Some((t, cap, _)) = over_tenant {
            format!(
                "customer {t}'s budget of {cap} changes per pass ([tenants.\"{t}\"] max_changes_per_run) spent; {DEFERRED}"
            )
        } else if cost > budget {
            format!(
                "the rule asks {cost} changes of this case, more than the whole budget of {budget} per pass (daemon.max_changes_per_run): refused"
            )
        } else {
            self.plan.budget_exhausted = true;
            format!("change budget of {budget} per pass spent; {DEFERRED}")
        };
        self.plan.deferred[i] += cost;
        self.plan.deferred_changes += cost;
        let rule = self.rules[i].clone();
        self.plan.plans[p].skip_rule(&rule, &why);
    }

    /// The guard, over `seen` per rule (in the planner's rule order; a pass gives every rule
    /// all the cases it listed, so a precise query does not count against a rule): a rule
    /// that wanted to change too large a share is halted for the pass.
    ///
    /// Then the same guard per customer, over `seen_by_tenant` (the cases listed of each
    /// `cust_id`): a rule changing too large a share of one customer's cases is halted for
    /// that customer only, even when it is a small share of everything listed.
    ///
    /// Then the budget, over what the guard let through (see [`Self::share_budget`]).
    pub fn finish(mut self, seen: &[usize], seen_by_tenant: &HashMap<String, usize>) -> PassPlan {
        for (i, rule) in self.rules.iter().enumerate() {
            let (wanted, saw) = (self.plan.matched[i], seen.get(i).copied().unwrap_or(0));
            let fraction = self.limits[i]
                .max_change_fraction
                .unwrap_or(self.budgets.max_change_fraction);
            if guard_trips(wanted, saw, fraction, self.budgets.guard_min_cases) {
                let why = format!(
                    "{HALTED}: rule wanted to change {wanted} of {saw} cases (limit {:.0}%)",
                    fraction * 100.0
                );
                for p in &mut self.plan.plans {
                    p.skip_rule(rule, &why);
                }
                self.plan.halted[i] = Some(why);
            }
        }
        let mut by_tenant: Vec<_> = std::mem::take(&mut self.matched_by_tenant)
            .into_iter()
            .collect();
        by_tenant.sort();
        for ((i, tenant), wanted) in by_tenant {
            let saw = seen_by_tenant.get(&tenant).copied().unwrap_or(0);
            let own = self
                .budgets
                .tenants
                .get(&tenant)
                .and_then(|t| t.max_change_fraction);
            let fraction = self.limits[i]
                .max_change_fraction
                .unwrap_or(self.budgets.max_change_fraction)
                .min(own.unwrap_or(1.0));
            if self.plan.halted[i].is_some()
                || !guard_trips(wanted, saw, fraction, self.budgets.guard_min_cases)
            {
                continue;
            }
            let why = format!(
                "{HALTED} for customer {tenant}: rule wanted to change {wanted} of its {saw} cases (limit {:.0}%)",
                fraction * 100.0
            );
            for p in self
                .plan
                .plans
                .iter_mut()
                .filter(|p| p.tenant.as_deref() == Some(&tenant))
            {
                p.skip_rule(&self.rules[i], &why);
            }
            self.plan.tenant_halts.push((i, tenant, why));
        }
        self.share_budget();
        self.plan
    }
}

/// How the skip note of a change the budget deferred ends; the next pass puts it first.
pub const DEFERRED: &str = "deferred to the next pass";

/// How the skip note of a change the blast-radius guard held back begins (for the whole
/// pass, or for one customer); a reviewed plan tells such changes by it.
pub const HALTED: &str = "blast-radius guard";

/// The blast-radius guard: does a rule that wants to change `changed` of the `seen` cases
/// it looked at exceed the allowed fraction? Below `min_cases` seen, never.
pub fn guard_trips(changed: usize, seen: usize, max_fraction: f64, min_cases: usize) -> bool {
    seen >= min_cases.max(1) && changed as f64 > max_fraction * seen as f64
}

/// The legacy (4.3) update call cannot set a resolution: its status goes alone.
fn skip_resolution(plan: &mut CasePlan) {
    for d in plan
        .decisions
        .iter_mut()
        .filter(|d| d.field == Field::Resolution && d.is_planned())
    {
        d.skipped = Some(
            "the legacy (4.3) update call has no resolution field; the status is set without it"
                .into(),
        );
    }
}

/// A change a person reverted with `casewarden revert` is not made again, and one whose
/// earlier outcome is still open is not sent a second time.
fn skip_reverted_and_open(plan: &mut CasePlan, facts: &CaseFacts) {
    for d in plan.decisions.iter_mut().filter(|d| d.is_planned()) {
        let key = memory_key(d.field, d.new.as_deref().unwrap_or(""));
        if let Some(by) = facts.reverted.get(&key) {
            d.skipped = Some(format!(
                "reverted by a person (`casewarden revert`, rule {by}): not set again"
            ));
        } else if facts.open.contains(&key) {
            d.skipped = Some("an earlier change of this field is not settled yet (its answer was lost); it is read back before a later pass and never sent twice".into());
        }
    }
}

#[cfg(test)]
mod tests;
