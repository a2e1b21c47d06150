//! What a candidate rule set would decide differently from the live one on the same
//! cases: per rule, the cases it gains, loses or changes differently, and whether the
//! blast-radius guard would halt it. Pure; `casewarden diff` lists the cases and prints.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::Serialize;

use super::offline::plan_of;
use super::{EvalEnv, Rule, RuleSet};
use crate::plan::{describe_change, guard_trips};
use crate::stellar::Case;

/// One case a rule treats differently.
#[derive(Debug, Clone, Serialize)]
pub struct CaseDiff {
    pub case_id: String,
    pub ticket_id: Option<i64>,
    /// `field old -> new` of each change, live and candidate.
    pub live: Vec<String>,
    pub candidate: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RuleDiff {
    pub rule: String,
    /// added, removed, modified or unchanged (by the rule file's hash)
    pub status: &'static str,
    pub gained: Vec<CaseDiff>,
    pub lost: Vec<CaseDiff>,
    pub changed: Vec<CaseDiff>,
    /// The blast-radius guard would halt the candidate rule on these cases (nothing of it
    /// would be applied): why.
    pub candidate_halted: Option<String>,
}

impl RuleDiff {
    /// No case is decided differently.
    pub fn is_same(&self) -> bool {
        self.gained.is_empty() && self.lost.is_empty() && self.changed.is_empty()
    }
}

/// The guard settings a pass would apply (`daemon.max_change_fraction`,
/// `daemon.guard_min_cases`).
#[derive(Debug, Clone, Copy)]
pub struct Guard {
    pub max_change_fraction: f64,
    pub min_cases: usize,
}

/// Each rule's planned changes on one case, as `field old -> new` lines.
type Decided = BTreeMap<String, Vec<String>>;

/// The enabled rules of both sets, each rule's differences on `cases`, in name order.
pub fn diff(
    live: &RuleSet,
    candidate: &RuleSet,
    cases: &[Case],
    env: &EvalEnv,
    guard: Guard,
) -> Vec<RuleDiff> {
    let (live_rules, candidate_rules) = (
        live.enabled().cloned().collect::<Vec<_>>(),
        candidate.enabled().cloned().collect::<Vec<_>>(),
    );
    let mut diffs = by_status(&live_rules, &candidate_rules);
    let mut wanted: BTreeMap<String, usize> = BTreeMap::new();
    for case in cases {
        let before = decide(live, &live_rules, case, env);
        let after = decide(candidate, &candidate_rules, case, env);
        for rule in after.keys() {
            *wanted.entry(rule.clone()).or_default() += 1;
        }
        compare(&mut diffs, case, &before, &after);
    }
    mark_halted(&mut diffs, &candidate_rules, &wanted, cases.len(), guard);
    diffs.into_values().collect()
}

fn decide(set: &RuleSet, rules: &[Arc<Rule>], case: &Case, env: &EvalEnv) -> Decided {
    let (plan, _errors) = plan_of(set, rules, case, env);
    let mut out: Decided = BTreeMap::new();
    for d in plan.decisions.iter().filter(|d| d.is_planned()) {
        out.entry(d.rule.clone()).or_default().push(format!(
            "{} {}",
            d.field,
            describe_change(d.field, d.old.as_deref(), d.new.as_deref())
        ));
    }
    out
}

/// An empty diff per rule name of either set, with its status.
fn by_status(live: &[Arc<Rule>], candidate: &[Arc<Rule>]) -> BTreeMap<String, RuleDiff> {
    let names: BTreeSet<&str> = live
        .iter()
        .chain(candidate)
        .map(|r| r.name.as_str())
        .collect();
    let hash_of = |rules: &[Arc<Rule>], name: &str| {
        rules
            .iter()
            .find(|r| r.name == name)
            .map(|r| r.source_hash.clone())
    };
    names
        .into_iter()
        .map(|name| {
            let status = match (hash_of(live, name), hash_of(candidate, name)) {
                (None, _) => "added",
                (_, None) => "removed",
                (a, b) if a == b => "unchanged",
                _ => "modified",
            };
            let diff = RuleDiff {
                rule: name.to_string(),
                status,
                gained: Vec::new(),
                lost: Vec::new(),
                changed: Vec::new(),
                candidate_halted: None,
            };
            (name.to_string(), diff)
        })
        .collect()
}

/// Files `case` under each rule that decides it differently.
fn compare(diffs: &mut BTreeMap<String, RuleDiff>, case: &Case, before: &Decided, after: &Decided) {
    for (name, d) in diffs.iter_mut() {
        let (b, a) = (before.get(name), after.get(name));
        if b == a {
            continue;
        }
        let entry = CaseDiff {
            case_id: case.id.clone(),
            ticket_id: case.ticket_id(),
            live: b.cloned().unwrap_or_default(),
            candidate: a.cloned().unwrap_or_default(),
        };
        match (b, a) {
            (None, Some(_)) => d.gained.push(entry),
            (Some(_), None) => d.lost.push(entry),
            _ => d.changed.push(entry),
        }
    }
}

/// As a pass would: a rule wanting too large a share of the listed cases is halted.
fn mark_halted(
    diffs: &mut BTreeMap<String, RuleDiff>,
    candidate: &[Arc<Rule>],
    wanted: &BTreeMap<String, usize>,
    cases: usize,
    guard: Guard,
) {
    for r in candidate {
        let n = wanted.get(&r.name).copied().unwrap_or(0);
        let limit = r.max_change_fraction.unwrap_or(guard.max_change_fraction);
        if guard_trips(n, cases, limit, guard.min_cases)
            && let Some(d) = diffs.get_mut(&r.name)
        {
            d.candidate_halted = Some(format!(
                "the blast-radius guard would halt it: it wants to change {n} of {cases} cases (limit {:.0}%), so none of its changes would be applied",
                limit * 100.0
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::offline::tests::set;

    fn tagger(name: &str, status: &str) -> String {
        format!(
            "const RULE = #{{ name: \"{name}\" }};\nfn evaluate(c) {{ if c.status == \"{status}\" {{ add_tag(\"{name}\", \"why\"); }} }}\n"
        )
    }

    fn cases() -> Vec<Case> {
        ["New", "New", "Resolved"]
            .iter()
            .enumerate()
            .map(|(i, s)| {
                Case::from_value(
                    serde_json::json!({"_id": format!("c{i}"), "status": s, "tags": []}),
                )
                .unwrap()
            })
            .collect()
    }

    const LAX: Guard = Guard {
        max_change_fraction: 1.0,
        min_cases: 0,
    };

    #[test]
    fn a_modified_rule_gains_and_loses_cases() {
        let live = set(&[
            ("a.rhai", &tagger("a", "New")),
            ("b.rhai", &tagger("b", "New")),
        ]);
        let candidate = set(&[
            ("a.rhai", &tagger("a", "Resolved")),
            ("c.rhai", &tagger("c", "New")),
        ]);
        let diffs = diff(&live, &candidate, &cases(), &EvalEnv::default(), LAX);
        let status: Vec<(&str, &str)> = diffs.iter().map(|d| (d.rule.as_str(), d.status)).collect();
        assert_eq!(
            status,
            [("a", "modified"), ("b", "removed"), ("c", "added")]
        );
        assert_eq!(diffs[0].gained.len(), 1);
        assert_eq!(diffs[0].lost.len(), 2);
        assert_eq!(diffs[0].gained[0].case_id, "c2");
        assert_eq!(diffs[0].gained[0].candidate, ["tags +a"]);
        assert_eq!(diffs[1].lost.len(), 2);
        assert_eq!(diffs[2].gained.len(), 2);
    }

    #[test]
    fn the_same_rules_decide_nothing_differently() {
        let rules = set(&[("a.rhai", &tagger("a", "New"))]);
        let diffs = diff(&rules, &rules, &cases(), &EvalEnv::default(), LAX);
        assert_eq!(diffs[0].status, "unchanged");
        assert!(diffs[0].is_same());
        assert!(diffs[0].candidate_halted.is_none());
    }

    #[test]
    fn a_candidate_wanting_too_many_cases_would_be_halted() {
        let rules = set(&[("a.rhai", &tagger("a", "New"))]);
        let strict = Guard {
            max_change_fraction: 0.5,
            min_cases: 0,
        };
        let diffs = diff(&rules, &rules, &cases(), &EvalEnv::default(), strict);
        assert_eq!(
            diffs[0].candidate_halted.as_deref(),
            Some(
                "the blast-radius guard would halt it: it wants to change 2 of 3 cases (limit 50%), so none of its changes would be applied"
            )
        );
    }
}
