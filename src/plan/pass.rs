//! The whole pass's policy, pure and I/O-free: per case, the merge of what the rules asked
//! (no-ops, conflicts: see [`super::plan_case`]), the legacy flavour's missing resolution,
//! human override from casewarden's memory, changes whose outcome is still open, and the
//! change budget; over the pass, the blast-radius guard. Facts from the server and the
//! audit log come in as inputs.

use std::collections::{HashMap, HashSet};

use super::case::skip_overridden;
use super::{CasePlan, Field, Memory, RuleChanges, memory_key, plan_case};
use crate::stellar::{ApiFlavor, Case};

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
    used: usize,
    /// Per (rule, customer): cases it wanted to change.
    matched_by_tenant: HashMap<(usize, String), usize>,
    /// Per customer: changes planned so far, against its own budget.
    used_by_tenant: HashMap<String, usize>,
    plan: PassPlan,
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
            used: 0,
            matched_by_tenant: HashMap::new(),
            used_by_tenant: HashMap::new(),
            plan: PassPlan {
                matched: vec![0; n],
                deferred: vec![0; n],
                halted: vec![None; n],
                ..PassPlan::default()
            },
        }
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

    /// Plans one case. Returns the plan of a case the budget deferred or refused (its
    /// decisions skipped with the reason), to be recorded now; a case that fits is kept.
    pub fn add(
        &mut self,
        case: &Case,
        requests: &[RuleChanges],
        facts: &CaseFacts,
        flavor: ApiFlavor,
    ) -> Option<CasePlan> {
        let mut plan = if self.limits.iter().any(|l| l.shadow) {
            // Shadow rules are merged among themselves, after the live ones.
            let (shadow, live): (Vec<RuleChanges>, Vec<RuleChanges>) = requests
                .iter()
                .cloned()
                .partition(|r| self.is_shadow(&r.rule));
            let mut plan = plan_case(case, &live);
            plan.decisions.extend(plan_case(case, &shadow).decisions);
            plan
        } else {
            plan_case(case, requests)
        };
        if flavor == ApiFlavor::Legacy {
            for d in plan
                .decisions
                .iter_mut()
                .filter(|d| d.field == Field::Resolution && d.is_planned())
            {
                d.skipped = Some("the legacy (4.3) update call has no resolution field; the status is set without it".into());
            }
        }
        skip_overridden(&mut plan, case, &facts.memory, &self.own);
        for d in plan.decisions.iter_mut().filter(|d| d.is_planned()) {
            let key = memory_key(d.field, d.new.as_deref().unwrap_or(""));
            if let Some(by) = facts.reverted.get(&key) {
                d.skipped = Some(format!(
                    "reverted by a person (`casewarden revert`, rule {by}): not set again"
                ));
            }
        }
        for d in plan.decisions.iter_mut().filter(|d| d.is_planned()) {
            if facts
                .open
                .contains(&memory_key(d.field, d.new.as_deref().unwrap_or("")))
            {
                d.skipped = Some("an earlier change of this field is not settled yet (its answer was lost); it is read back before a later pass and never sent twice".into());
            }
        }
        for d in plan.decisions.iter_mut().filter(|d| d.is_planned()) {
            let Some(i) = self.index(&d.rule) else {
                continue;
            };
            if let Some(cap) = self.limits[i].max_changes {
                if self.used_by_rule[i] >= cap {
                    self.plan.deferred[i] += 1;
                    d.skipped = Some(format!(
                        "the rule's own cap of {cap} changes per pass (RULE.max_changes) is spent; deferred to the next pass"
                    ));
                } else {
                    self.used_by_rule[i] += 1;
                }
            }
        }
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
        if plan.decisions.is_empty() {
            return None;
        }
        let cost = plan
            .decisions
            .iter()
            .filter(|d| d.is_planned() && !self.is_shadow(&d.rule))
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
            .filter(|(_, cap, used)| cost > 0 && used + cost > *cap);
        // A case that does not fit waits for the next pass while later, smaller ones still
        // go; one that could never fit is refused instead of blocking every pass.
        if cost > 0 && (self.used + cost > budget || over_tenant.is_some()) {
            let why = if let Some((t, cap, _)) = over_tenant {
                format!(
                    "customer {t}'s budget of {cap} changes per pass ([tenants.\"{t}\"] max_changes_per_run) spent; deferred to the next pass"
                )
            } else if cost > budget {
                format!(
                    "this case asks {cost} changes, more than the whole budget of {budget} per pass (daemon.max_changes_per_run): refused"
                )
            } else {
                self.plan.budget_exhausted = true;
                format!("change budget of {budget} per pass spent; deferred to the next pass")
            };
            self.plan.deferred_changes += cost;
            let mut deferred = plan;
            deferred.decisions.retain(|d| d.is_planned());
            for d in &mut deferred.decisions {
                if let Some(i) = self.index(&d.rule) {
                    self.plan.deferred[i] += 1;
                }
                d.skipped = Some(why.clone());
            }
            return Some(deferred);
        }
        self.used += cost;
        if let Some((t, _, used)) = tenant_cap {
            self.used_by_tenant.insert(t, used + cost);
        }
        self.plan.plans.push(plan);
        None
    }

    /// The guard, over `seen` per rule (in the planner's rule order; a pass gives every rule
    /// all the cases it listed, so a precise query does not count against a rule): a rule
    /// that wanted to change too large a share is halted for the pass.
    ///
    /// Then the same guard per customer, over `seen_by_tenant` (the cases listed of each
    /// `cust_id`): a rule changing too large a share of one customer's cases is halted for
    /// that customer only, even when it is a small share of everything listed.
    pub fn finish(mut self, seen: &[usize], seen_by_tenant: &HashMap<String, usize>) -> PassPlan {
        for (i, rule) in self.rules.iter().enumerate() {
            let (wanted, saw) = (self.plan.matched[i], seen.get(i).copied().unwrap_or(0));
            let fraction = self.limits[i]
                .max_change_fraction
                .unwrap_or(self.budgets.max_change_fraction);
            if guard_trips(wanted, saw, fraction, self.budgets.guard_min_cases) {
                let why = format!(
                    "blast-radius guard: rule wanted to change {wanted} of {saw} cases (limit {:.0}%)",
                    fraction * 100.0
                );
                for p in &mut self.plan.plans {
                    p.skip_rule(rule, &why);
                }
                self.plan.halted[i] = Some(why);
            }
        }
        let mut by_tenant: Vec<_> = self.matched_by_tenant.into_iter().collect();
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
                "blast-radius guard for customer {tenant}: rule wanted to change {wanted} of its {saw} cases (limit {:.0}%)",
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
        self.plan
    }
}

/// The blast-radius guard: does a rule that wants to change `changed` of the `seen` cases
/// it looked at exceed the allowed fraction? Below `min_cases` seen, never.
pub fn guard_trips(changed: usize, seen: usize, max_fraction: f64, min_cases: usize) -> bool {
    seen >= min_cases.max(1) && changed as f64 > max_fraction * seen as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_threshold() {
        assert!(!guard_trips(30, 39, 0.25, 40));
        assert!(!guard_trips(10, 40, 0.25, 40));
        assert!(guard_trips(11, 40, 0.25, 40));
    }
    use crate::plan::{Change, ChangeKind, remember};
    use serde_json::json;

    fn case(id: &str) -> Case {
        Case::from_value(json!({"_id": id, "status": "New", "priority": "Medium", "tags": []}))
            .unwrap()
    }

    fn asks(rule: &str, kinds: &[ChangeKind]) -> RuleChanges {
        RuleChanges {
            rule: rule.into(),
            changes: kinds
                .iter()
                .map(|k| Change {
                    kind: k.clone(),
                    reason: String::new(),
                })
                .collect(),
        }
    }

    fn tags(n: usize) -> Vec<ChangeKind> {
        (0..n)
            .map(|i| ChangeKind::AddTag(format!("t{i}")))
            .collect()
    }

    fn planner(budget: usize) -> PassPlanner {
        PassPlanner::new(
            vec!["a".into(), "b".into()],
            Budgets {
                max_changes: budget,
                max_change_fraction: 0.5,
                guard_min_cases: 4,
                tenants: HashMap::new(),
            },
            vec![],
        )
    }

    #[test]
    fn a_rules_own_cap_and_fraction_override_the_pass_wide_ones() {
        let mut p = planner(100);
        p.configure_rule(
            "a",
            RuleSettings {
                max_changes: Some(2),
                ..RuleSettings::default()
            },
        );
        p.configure_rule(
            "b",
            RuleSettings {
                max_change_fraction: Some(1.0),
                ..RuleSettings::default()
            },
        );
        let f = CaseFacts::default();
        for i in 0..4 {
            let asked = [
                asks("a", &tags(1)),
                asks("b", &[ChangeKind::AddTag("b".into())]),
            ];
            assert!(
                p.add(&case(&i.to_string()), &asked, &f, ApiFlavor::V5)
                    .is_none()
            );
        }
        let plan = p.finish(&[4, 4], &HashMap::new());
        let skipped = |rule: &str, why: &str| {
            plan.plans
                .iter()
                .flat_map(|c| &c.decisions)
                .filter(|d| d.rule == rule && d.skipped.as_deref().is_some_and(|s| s.contains(why)))
                .count()
        };
        assert_eq!(
            skipped("a", "RULE.max_changes"),
            2,
            "a's cap of 2 defers the other two"
        );
        assert_eq!(plan.deferred[0], 2);
        assert_eq!(plan.matched, [2, 4]);
        assert!(
            plan.halted[1].is_none(),
            "b changes all 4, as its own fraction of 1.0 allows"
        );
        assert!(
            plan.halted[0].is_none(),
            "a changes 2 of 4, the pass-wide 50%"
        );
    }

    #[test]
    fn a_shadow_rule_takes_no_field_and_no_budget_from_the_live_ones() {
        let mut p = planner(1);
        p.configure_rule(
            "a",
            RuleSettings {
                shadow: true,
                ..RuleSettings::default()
            },
        );
        let f = CaseFacts::default();
        let asked = [
            asks("a", &[ChangeKind::Priority("Low".into())]),
            asks("b", &[ChangeKind::Priority("High".into())]),
        ];
        assert!(
            p.add(&case("1"), &asked, &f, ApiFlavor::V5).is_none(),
            "fits the budget of 1"
        );
        let plan = p.finish(&[1, 1], &HashMap::new());
        let decided: Vec<(&str, &str, bool)> = plan.plans[0]
            .decisions
            .iter()
            .map(|d| (d.rule.as_str(), d.new.as_deref().unwrap(), d.is_planned()))
            .collect();
        assert_eq!(decided, [("b", "High", true), ("a", "Low", true)]);
    }

    #[test]
    fn the_budget_defers_what_does_not_fit_and_goes_on_with_what_does() {
        let mut p = planner(5);
        let f = CaseFacts::default();
        assert!(
            p.add(&case("1"), &[asks("a", &tags(3))], &f, ApiFlavor::V5)
                .is_none()
        );
        let deferred = p
            .add(&case("2"), &[asks("a", &tags(3))], &f, ApiFlavor::V5)
            .unwrap();
        assert!(
            deferred
                .decisions
                .iter()
                .all(|d| d.skipped.as_deref().unwrap().contains("deferred"))
        );
        assert!(
            p.add(&case("3"), &[asks("b", &tags(2))], &f, ApiFlavor::V5)
                .is_none()
        );
        let refused = p
            .add(&case("4"), &[asks("b", &tags(6))], &f, ApiFlavor::V5)
            .unwrap();
        assert!(
            refused.decisions[0]
                .skipped
                .as_deref()
                .unwrap()
                .contains("refused")
        );
        let plan = p.finish(&[1, 1], &HashMap::new());
        let kept: Vec<&str> = plan.plans.iter().map(|p| p.case_id.as_str()).collect();
        assert_eq!(kept, ["1", "3"]);
        assert_eq!((plan.deferred, plan.deferred_changes), (vec![3, 6], 9));
        assert!(plan.budget_exhausted);
    }

    #[test]
    fn the_guard_halts_a_rule_over_its_share_only() {
        let mut p = planner(100);
        let f = CaseFacts::default();
        for id in ["1", "2", "3"] {
            p.add(&case(id), &[asks("a", &tags(1))], &f, ApiFlavor::V5);
        }
        p.add(&case("4"), &[asks("b", &tags(1))], &f, ApiFlavor::V5);
        let plan = p.finish(&[4, 4], &HashMap::new());
        assert!(plan.halted[0].as_deref().unwrap().contains("3 of 4"));
        assert!(plan.halted[1].is_none());
        let planned: Vec<&str> = plan
            .plans
            .iter()
            .flat_map(|p| &p.decisions)
            .filter(|d| d.is_planned())
            .map(|d| d.rule.as_str())
            .collect();
        assert_eq!(planned, ["b"]);
    }

    #[test]
    fn override_revert_open_changes_and_the_legacy_resolution_are_skipped_with_reasons() {
        let mut p = planner(100);
        let c = case("1");
        let facts = CaseFacts {
            memory: remember([(Field::Priority, "High")]),
            open: HashSet::from(["tags:x".to_string()]),
            reverted: HashMap::from([("tags:y".to_string(), "revert:P1".to_string())]),
        };
        let kinds = [
            ChangeKind::Priority("Critical".into()),
            ChangeKind::AddTag("x".into()),
            ChangeKind::AddTag("y".into()),
            ChangeKind::Resolve("Benign".into()),
        ];
        p.add(&c, &[asks("a", &kinds)], &facts, ApiFlavor::Legacy);
        let plan = p.finish(&[1, 0], &HashMap::new());
        let why: Vec<(&str, &str)> = plan.plans[0]
            .decisions
            .iter()
            .map(|d| (d.field.as_str(), d.skipped.as_deref().unwrap_or("planned")))
            .collect();
        assert!(why[0].1.starts_with("overridden by a person"), "{why:?}");
        assert!(why[1].1.contains("not settled yet"), "{why:?}");
        assert!(why[2].1.contains("reverted by a person"), "{why:?}");
        assert_eq!(why[3], ("status", "planned"));
        assert!(why[4].1.contains("no resolution field"), "{why:?}");
    }
}
