//! The planner: turns the changes rules asked for on one case into at most one update
//! body, with a decision (planned or skipped, and why) for every request. Pure, no I/O.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use crate::stellar::Case;

/// What a rule can ask for. Values are validated by the rule library before they get here.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    Priority(String),
    Status(String),
    /// `status: Resolved` with a resolution.
    Resolve(String),
    Assign(String),
    AddTag(String),
    RemoveTag(String),
    Description(String),
    Comment(String),
}

/// One change a rule asked for, with its reason.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Change {
    pub kind: ChangeKind,
    pub reason: String,
}

/// Everything one rule asked for on one case.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleChanges {
    pub rule: String,
    pub changes: Vec<Change>,
}

/// The decision for one requested change: exactly what the audit log records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub rule: String,
    /// `priority`, `status`, `resolution`, `assignee`, `tags`, `description` or `comment`.
    pub field: String,
    pub old: Option<String>,
    /// For tags: `+tag` (add) or `-tag` (delete).
    pub new: Option<String>,
    pub reason: String,
    /// Why it will not be applied; None means planned.
    pub skipped: Option<String>,
}

impl Decision {
    pub fn is_planned(&self) -> bool {
        self.skipped.is_none()
    }
}

/// The plan for one case.
#[derive(Debug, Clone, PartialEq)]
pub struct CasePlan {
    pub case_id: String,
    pub ticket_id: Option<i64>,
    pub decisions: Vec<Decision>,
}

impl CasePlan {
    /// The update body (`priority` naming; the client renames it for v5), if any field changes.
    pub fn body(&self) -> Option<Value> {
        let mut body = Map::new();
        let (mut add, mut delete) = (Vec::new(), Vec::new());
        for d in self.decisions.iter().filter(|d| d.is_planned()) {
            let new = d.new.clone().unwrap_or_default();
            match d.field.as_str() {
                "tags" => match new.split_at_checked(1) {
                    Some(("+", t)) => add.push(t.to_string()),
                    Some(("-", t)) => delete.push(t.to_string()),
                    _ => {}
                },
                "comment" => {}
                field => {
                    body.insert(field.to_string(), json!(new));
                }
            }
        }
        if !add.is_empty() || !delete.is_empty() {
            body.insert("tags".into(), json!({"add": add, "delete": delete}));
        }
        (!body.is_empty()).then_some(Value::Object(body))
    }

    /// Planned comments, in rule order.
    pub fn comments(&self) -> impl Iterator<Item = &Decision> {
        self.decisions
            .iter()
            .filter(|d| d.is_planned() && d.field == "comment")
    }

    /// Planned field changes (what goes into the update body).
    pub fn field_changes(&self) -> impl Iterator<Item = &Decision> {
        self.decisions
            .iter()
            .filter(|d| d.is_planned() && d.field != "comment")
    }

    /// Whether anything will be sent for this case.
    pub fn has_work(&self) -> bool {
        self.decisions.iter().any(Decision::is_planned)
    }

    /// Marks every planned decision of `rule` skipped with `reason`.
    pub fn skip_rule(&mut self, rule: &str, reason: &str) {
        for d in &mut self.decisions {
            if d.rule == rule && d.is_planned() {
                d.skipped = Some(reason.to_string());
            }
        }
    }
}

/// A change as people read it: `old -> new` for fields (`(none)` for empty), `+tag`/`-tag`
/// for tags, the text for comments. Plans, the audit table and case comments all use it.
pub fn describe_change(field: &str, old: Option<&str>, new: Option<&str>) -> String {
    let new = new.unwrap_or("");
    match (field, old) {
        ("tags" | "comment", _) | (_, None) => new.to_string(),
        (_, Some(old)) => format!("{} -> {new}", if old.is_empty() { "(none)" } else { old }),
    }
}

/// A (field, value) pair used to detect no-ops and conflicts; tags are keyed per tag.
fn target(kind: &ChangeKind) -> (String, String) {
    match kind {
        ChangeKind::Priority(p) => ("priority".into(), p.clone()),
        ChangeKind::Status(s) => ("status".into(), s.clone()),
        ChangeKind::Resolve(_) => ("status".into(), "Resolved".into()),
        ChangeKind::Assign(u) => ("assignee".into(), u.clone()),
        ChangeKind::AddTag(t) => (format!("tag:{t}"), "+".into()),
        ChangeKind::RemoveTag(t) => (format!("tag:{t}"), "-".into()),
        ChangeKind::Description(d) => ("description".into(), d.clone()),
        ChangeKind::Comment(c) => ("comment".into(), c.clone()),
    }
}

/// The decisions one change produces before conflicts: (field, old, new, no-op?).
fn describe(case: &Case, kind: &ChangeKind) -> Vec<(String, Option<String>, String, bool)> {
    let field = |name: &str, old: &str, new: &str| {
        (
            name.to_string(),
            Some(old.to_string()),
            new.to_string(),
            old == new,
        )
    };
    match kind {
        ChangeKind::Priority(p) => vec![field("priority", case.priority(), p)],
        ChangeKind::Status(s) => vec![field("status", case.status(), s)],
        ChangeKind::Resolve(r) => {
            let already = case.status() == "Resolved";
            let old_res = case
                .raw()
                .get("resolution")
                .and_then(Value::as_str)
                .unwrap_or("");
            vec![
                field("status", case.status(), "Resolved"),
                (
                    "resolution".into(),
                    Some(old_res.to_string()),
                    r.clone(),
                    already,
                ),
            ]
        }
        ChangeKind::Assign(u) => vec![field("assignee", case.assignee(), u)],
        ChangeKind::AddTag(t) => vec![("tags".into(), None, format!("+{t}"), case.has_tag(t))],
        ChangeKind::RemoveTag(t) => vec![("tags".into(), None, format!("-{t}"), !case.has_tag(t))],
        ChangeKind::Description(d) => vec![field("description", case.description(), d)],
        ChangeKind::Comment(c) => vec![("comment".into(), None, c.clone(), false)],
    }
}

/// Plans one case. Rules come in file-name order; the first rule to claim a field wins
/// and a later, different claim is skipped as a conflict. No-ops produce no decision.
pub fn plan_case(case: &Case, requests: &[RuleChanges]) -> CasePlan {
    let mut claimed: HashMap<String, (String, String)> = HashMap::new();
    let mut decisions = Vec::new();
    for rc in requests {
        for change in &rc.changes {
            // Claims are taken even by no-ops: a rule whose wish already holds still wins
            // the field, so a later rule cannot undo it and make passes oscillate.
            let (key, value) = target(&change.kind);
            let conflict = if key == "comment" {
                None
            } else {
                match claimed.get(&key) {
                    Some((_, v)) if *v == value => continue,
                    Some((winner, _)) => Some(format!("conflict with {winner}")),
                    None => {
                        claimed.insert(key, (rc.rule.clone(), value));
                        None
                    }
                }
            };
            for (field, old, new, noop) in describe(case, &change.kind) {
                if noop && conflict.is_none() {
                    continue;
                }
                decisions.push(Decision {
                    rule: rc.rule.clone(),
                    field,
                    old,
                    new: Some(new),
                    reason: change.reason.clone(),
                    skipped: conflict.clone(),
                });
            }
        }
    }
    CasePlan {
        case_id: case.id.clone(),
        ticket_id: case.ticket_id(),
        decisions,
    }
}

/// Whether the case already holds what a planned decision sets (used to reconcile after a
/// crash and to check idempotence).
pub fn case_holds(case: &Case, d: &Decision) -> bool {
    let new = d.new.as_deref().unwrap_or("");
    match d.field.as_str() {
        "priority" => case.priority() == new,
        "status" => case.status() == new,
        "assignee" => case.assignee() == new,
        "description" => case.description() == new,
        "resolution" => case.raw().get("resolution").and_then(Value::as_str) == Some(new),
        "tags" => match new.split_at_checked(1) {
            Some(("+", t)) => case.has_tag(t),
            Some(("-", t)) => !case.has_tag(t),
            _ => false,
        },
        _ => false,
    }
}

/// The case as the server would hold it after the plan's update.
pub fn apply(case: &Case, plan: &CasePlan) -> Case {
    let mut out = case.clone();
    let mut tags: Vec<String> = case.tags().map(str::to_string).collect();
    for d in plan.field_changes() {
        let new = d.new.clone().unwrap_or_default();
        match d.field.as_str() {
            "tags" => match new.split_at_checked(1) {
                Some(("+", t)) if !tags.iter().any(|x| x == t) => tags.push(t.to_string()),
                Some(("-", t)) => tags.retain(|x| x != t),
                _ => {}
            },
            field => out = out.with_field(field, json!(new)),
        }
    }
    out.with_field("tags", json!(tags))
}

/// The blast-radius guard: does a rule that wants to change `changed` of the `seen` cases
/// it looked at exceed the allowed fraction? Below `min_cases` seen, never.
pub fn guard_trips(changed: usize, seen: usize, max_fraction: f64, min_cases: usize) -> bool {
    seen >= min_cases.max(1) && changed as f64 > max_fraction * seen as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn case() -> Case {
        Case::from_value(json!({
            "_id": "c1", "ticket_id": 7, "status": "New", "priority": "Medium",
            "assignee": "", "tags": ["vip"], "description": ""
        }))
        .unwrap()
    }

    fn rc(rule: &str, kinds: Vec<ChangeKind>) -> RuleChanges {
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
        assert_eq!(plan.decisions[1].field, "resolution");
        assert_eq!(plan.comments().count(), 1);
        assert_eq!(
            plan.body(),
            Some(json!({"status": "Resolved", "resolution": "Benign"}))
        );
        assert_eq!(plan.ticket_id, Some(7));
    }

    #[test]
    fn guard_threshold() {
        assert!(!guard_trips(30, 39, 0.25, 40));
        assert!(!guard_trips(10, 40, 0.25, 40));
        assert!(guard_trips(11, 40, 0.25, 40));
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
}
