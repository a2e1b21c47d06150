//! Unit tests of the pass planner: rule caps, shadow rules, the budget, the guard and
//! the skips with their reasons.

use super::*;
use crate::plan::{Change, ChangeKind, remember};
use serde_json::json;

#[test]
fn guard_threshold() {
    assert!(!guard_trips(30, 39, 0.25, 40));
    assert!(!guard_trips(10, 40, 0.25, 40));
    assert!(guard_trips(11, 40, 0.25, 40));
}

fn case(id: &str) -> Case {
    Case::from_value(json!({"_id": id, "status": "New", "priority": "Medium", "tags": []})).unwrap()
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
