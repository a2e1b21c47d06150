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
        p.add(&case(&i.to_string()), &asked, &f, ApiFlavor::V5);
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
    p.add(&case("1"), &asked, &f, ApiFlavor::V5);
    let plan = p.finish(&[1, 1], &HashMap::new());
    assert!(
        !plan.budget_exhausted,
        "b's one change fits the budget of 1"
    );
    let decided: Vec<(&str, &str, bool)> = plan.plans[0]
        .decisions
        .iter()
        .map(|d| (d.rule.as_str(), d.new.as_deref().unwrap(), d.is_planned()))
        .collect();
    assert_eq!(decided, [("b", "High", true), ("a", "Low", true)]);
}

fn aged(id: &str, created_at: i64) -> Case {
    Case::from_value(json!({"_id": id, "created_at": created_at, "status": "New", "tags": []}))
        .unwrap()
}

/// Per case id, the decisions' outcome: "planned" or the start of the skip note.
fn outcomes(plan: &PassPlan) -> Vec<(String, String, String)> {
    plan.plans
        .iter()
        .flat_map(|p| p.decisions.iter().map(move |d| (p, d)))
        .map(|(p, d)| {
            let why = d.skipped.as_deref().unwrap_or("planned");
            let word = why.split([' ', ':']).next().unwrap_or("").to_string();
            (p.case_id.clone(), d.rule.clone(), word)
        })
        .collect()
}

#[test]
fn the_budget_defers_what_does_not_fit_and_goes_on_with_what_does() {
    let mut p = planner(5);
    let f = CaseFacts::default();
    p.add(&aged("1", 1), &[asks("a", &tags(3))], &f, ApiFlavor::V5);
    p.add(&aged("2", 2), &[asks("a", &tags(3))], &f, ApiFlavor::V5);
    p.add(&aged("3", 3), &[asks("b", &tags(2))], &f, ApiFlavor::V5);
    p.add(&aged("4", 4), &[asks("b", &tags(6))], &f, ApiFlavor::V5);
    let plan = p.finish(&[1, 1], &HashMap::new());
    let planned = |id: &str| {
        plan.plans
            .iter()
            .filter(|p| p.case_id == id)
            .flat_map(|p| &p.decisions)
            .all(|d| d.is_planned())
    };
    assert!(planned("1") && planned("3"), "{:?}", outcomes(&plan));
    let note = |id: &str| {
        let p = plan.plans.iter().find(|p| p.case_id == id).unwrap();
        p.decisions[0].skipped.clone().unwrap()
    };
    assert!(note("2").contains("deferred to the next pass"));
    assert!(note("4").contains("refused"));
    assert_eq!((plan.deferred, plan.deferred_changes), (vec![3, 6], 9));
    assert!(plan.budget_exhausted);
}

#[test]
fn rules_take_turns_oldest_case_first_so_none_takes_the_whole_budget() {
    let mut p = planner(4);
    let f = CaseFacts::default();
    // a asks first for many cases; b's two come last in the listing.
    for i in 0..6 {
        p.add(
            &aged(&format!("a{i}"), 100 - i),
            &[asks("a", &tags(1))],
            &f,
            ApiFlavor::V5,
        );
    }
    p.add(&aged("b0", 50), &[asks("b", &tags(1))], &f, ApiFlavor::V5);
    p.add(&aged("b1", 40), &[asks("b", &tags(1))], &f, ApiFlavor::V5);
    let plan = p.finish(&[100, 100], &HashMap::new());
    let mut went: Vec<String> = outcomes(&plan)
        .into_iter()
        .filter(|(_, _, w)| w == "planned")
        .map(|(c, _, _)| c)
        .collect();
    went.sort();
    assert_eq!(
        went,
        ["a4", "a5", "b0", "b1"],
        "a's two oldest cases and both of b's"
    );
    assert_eq!(plan.deferred, [4, 0]);
}

#[test]
fn a_halted_rule_takes_nothing_from_the_budget() {
    let mut p = planner(3);
    let f = CaseFacts::default();
    for i in 0..10 {
        p.add(
            &aged(&format!("a{i}"), i),
            &[asks("a", &tags(1))],
            &f,
            ApiFlavor::V5,
        );
    }
    p.add(&aged("b0", 99), &[asks("b", &tags(2))], &f, ApiFlavor::V5);
    let plan = p.finish(&[12, 12], &HashMap::new());
    assert!(plan.halted[0].is_some());
    assert!(!plan.budget_exhausted, "{:?}", outcomes(&plan));
    let b: Vec<_> = outcomes(&plan)
        .into_iter()
        .filter(|(_, r, _)| r == "b")
        .collect();
    assert!(b.iter().all(|(_, _, w)| w == "planned"), "{b:?}");
    assert_eq!(plan.deferred, [0, 0]);
}

#[test]
fn a_change_deferred_last_pass_is_first_in_line() {
    let mut p = planner(1);
    p.add(
        &aged("old", 1),
        &[asks("a", &tags(1))],
        &CaseFacts::default(),
        ApiFlavor::V5,
    );
    let waited = CaseFacts {
        deferred_before: HashSet::from(["a".to_string()]),
        ..CaseFacts::default()
    };
    p.add(
        &aged("young", 9),
        &[asks("a", &tags(1))],
        &waited,
        ApiFlavor::V5,
    );
    let plan = p.finish(&[100, 100], &HashMap::new());
    let went: Vec<_> = outcomes(&plan)
        .into_iter()
        .filter(|(_, _, w)| w == "planned")
        .collect();
    assert_eq!(went, [("young".into(), "a".into(), "planned".into())]);
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
        ..CaseFacts::default()
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
