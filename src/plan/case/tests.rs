//! Unit tests of one case's planning: ids, no-ops, conflicts, idempotence.

use super::*;
use proptest::prelude::*;

fn case() -> Case {
    Case::from_value(json!({
        "_id": "c1", "ticket_id": 7, "status": "New", "priority": "Medium",
        "assignee": "", "tags": ["vip"], "description": ""
    }))
    .unwrap()
}

pub(in crate::plan) fn rc(rule: &str, kinds: Vec<ChangeKind>) -> RuleChanges {
    RuleChanges {
        rule: rule.into(),
        changes: kinds
            .into_iter()
            .map(|kind| Change {
                kind,
                reason: format!("{rule} says so"),
            })
            .collect(),
    }
}

#[test]
fn every_decision_of_a_pass_has_its_own_id() {
    let one = plan_case(
        &case(),
        &[rc(
            "a",
            vec![
                ChangeKind::Priority("High".into()),
                ChangeKind::AddTag("x".into()),
            ],
        )],
    );
    let two = plan_case(
        &case(),
        &[rc("b", vec![ChangeKind::Status("Escalated".into())])],
    );
    let plans = [one, two];
    let ids: Vec<(usize, usize, Field)> = decisions(&plans)
        .map(|(id, _, d)| (id.case, id.decision, d.field))
        .collect();
    assert_eq!(
        ids,
        [
            (0, 0, Field::Priority),
            (0, 1, Field::Tags),
            (1, 0, Field::Status)
        ]
    );
}

#[test]
fn no_ops_are_dropped() {
    let plan = plan_case(
        &case(),
        &[rc(
            "a",
            vec![
                ChangeKind::Priority("Medium".into()),
                ChangeKind::AddTag("vip".into()),
                ChangeKind::RemoveTag("absent".into()),
                ChangeKind::Status("New".into()),
                ChangeKind::Assign("".into()),
            ],
        )],
    );
    assert!(plan.decisions.is_empty());
    assert_eq!(plan.body(), None);
}

#[test]
fn first_rule_wins_and_the_loser_is_skipped() {
    let plan = plan_case(
        &case(),
        &[
            rc("a", vec![ChangeKind::Priority("High".into())]),
            rc(
                "b",
                vec![
                    ChangeKind::Priority("Critical".into()),
                    ChangeKind::Priority("High".into()),
                ],
            ),
        ],
    );
    assert_eq!(plan.decisions.len(), 2);
    assert_eq!(plan.decisions[0].rule, "a");
    assert!(plan.decisions[0].is_planned());
    assert_eq!(
        plan.decisions[1].skipped.as_deref(),
        Some("conflict with a")
    );
    assert_eq!(plan.body(), Some(json!({"priority": "High"})));
}

#[test]
fn add_and_remove_of_one_tag_conflict() {
    let plan = plan_case(
        &case(),
        &[
            rc("a", vec![ChangeKind::RemoveTag("vip".into())]),
            rc(
                "b",
                vec![
                    ChangeKind::AddTag("x".into()),
                    ChangeKind::AddTag("vip".into()),
                ],
            ),
            rc("c", vec![ChangeKind::RemoveTag("x".into())]),
        ],
    );
    let skipped: Vec<_> = plan
        .decisions
        .iter()
        .filter(|d| !d.is_planned())
        .map(|d| (d.rule.as_str(), d.new.as_deref(), d.skipped.as_deref()))
        .collect();
    assert_eq!(
        skipped,
        [
            ("b", Some("+vip"), Some("conflict with a")),
            ("c", Some("-x"), Some("conflict with b"))
        ]
    );
    assert_eq!(
        plan.body(),
        Some(json!({"tags": {"add": ["x"], "delete": ["vip"]}}))
    );
}

#[test]
fn decisions_carry_old_new_and_reason() {
    let plan = plan_case(
        &case(),
        &[rc(
            "a",
            vec![
                ChangeKind::Resolve("Benign".into()),
                ChangeKind::Comment("hi".into()),
            ],
        )],
    );
    let d = &plan.decisions[0];
    assert_eq!(
        (d.field.as_str(), d.old.as_deref(), d.new.as_deref()),
        ("status", Some("New"), Some("Resolved"))
    );
    assert_eq!(d.reason, "a says so");
    assert_eq!(plan.decisions[1].field, Field::Resolution);
    assert_eq!(plan.comments().count(), 1);
    assert_eq!(
        plan.body(),
        Some(json!({"status": "Resolved", "resolution": "Benign"}))
    );
    assert_eq!(plan.ticket_id, Some(7));
}

fn arb_kind() -> impl Strategy<Value = ChangeKind> {
    let word = prop::sample::select(vec!["a", "b", "vip", "x"]);
    let prio = prop::sample::select(crate::stellar::model::PRIORITIES.to_vec());
    let status = prop::sample::select(crate::stellar::model::STATUSES.to_vec());
    prop_oneof![
        prio.prop_map(|p| ChangeKind::Priority(p.into())),
        status.prop_map(|s| ChangeKind::Status(s.into())),
        word.clone().prop_map(|t| ChangeKind::AddTag(t.into())),
        word.clone().prop_map(|t| ChangeKind::RemoveTag(t.into())),
        word.prop_map(|u| ChangeKind::Assign(u.into())),
    ]
}

fn arb_requests() -> impl Strategy<Value = Vec<RuleChanges>> {
    prop::collection::vec(prop::collection::vec(arb_kind(), 0..5), 0..4).prop_map(|rules| {
        rules
            .into_iter()
            .enumerate()
            .map(|(i, kinds)| rc(&format!("r{i}"), kinds))
            .collect()
    })
}

proptest! {
    #[test]
    fn replanning_after_applying_changes_nothing(requests in arb_requests()) {
        let c = case();
        let plan = plan_case(&c, &requests);
        let after = apply(&c, &plan);
        for d in plan.field_changes() {
            prop_assert!(case_holds(&after, d), "{d:?} not held");
        }
        let again = plan_case(&after, &requests);
        prop_assert_eq!(again.body(), None);
    }

    #[test]
    fn plans_do_not_depend_on_other_cases(requests in arb_requests()) {
        let a = case();
        let b = Case::from_value(json!({"_id": "c2", "status": "Escalated", "priority": "Low"})).unwrap();
        let first = (plan_case(&a, &requests), plan_case(&b, &requests));
        let second = (plan_case(&b, &requests), plan_case(&a, &requests));
        prop_assert_eq!(first.0, second.1);
        prop_assert_eq!(first.1, second.0);
    }
}

#[test]
fn an_assignment_by_email_is_sent_as_the_users_id_and_an_unknown_email_is_dropped() {
    let users = crate::stellar::Directory::new([crate::stellar::User {
        id: "u-desk".into(),
        email: Some("Desk@Example.com".into()),
    }]);
    let assign = |who: &str| ChangeKind::Assign(who.into());
    let mut asked = vec![
        rc("a", vec![assign("desk@example.com"), assign("u-bob")]),
        rc("b", vec![assign("gone@x")]),
    ];
    let unknown = resolve_emails(&mut asked, Some(&users));
    assert_eq!(unknown, [("b".to_string(), "gone@x".to_string())]);
    assert_eq!(asked[0].changes[0].kind, assign("u-desk"));
    assert_eq!(asked[0].changes[1].kind, assign("u-bob"));
    assert!(asked[1].changes.is_empty());
    // Without the users list, every email is unknown; ids still go.
    let mut asked = vec![rc("a", vec![assign("desk@example.com"), assign("u-bob")])];
    assert_eq!(resolve_emails(&mut asked, None).len(), 1);
    assert_eq!(asked[0].changes.len(), 1);
}

#[test]
fn a_field_read_before_sending_is_old_new_or_someone_elses() {
    let c = case();
    let now = |field, old, new| field_now(&c, field, old, new);
    assert_eq!(now(Field::Priority, "Medium", "High"), FieldNow::Old);
    assert_eq!(now(Field::Priority, "Low", "Medium"), FieldNow::New);
    assert_eq!(
        now(Field::Priority, "Low", "High"),
        FieldNow::Other("Medium".into())
    );
    // An empty field read as the empty old value it was planned on.
    assert_eq!(now(Field::Assignee, "", "alice"), FieldNow::Old);
    assert_eq!(now(Field::Resolution, "", "Benign"), FieldNow::Old);
    // A tag change is one while the case does not hold it yet; never a third value.
    assert_eq!(now(Field::Tags, "", "+new"), FieldNow::Old);
    assert_eq!(now(Field::Tags, "", "+vip"), FieldNow::New);
    assert_eq!(now(Field::Tags, "", "-vip"), FieldNow::Old);
    assert_eq!(now(Field::Tags, "", "-gone"), FieldNow::New);
}
