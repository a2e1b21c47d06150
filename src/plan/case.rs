//! One case: the changes its rules asked for merged into decisions (no-ops dropped, the
//! first rule to claim a field wins, a later different claim is a conflict), at most one
//! update body, and human override from casewarden's memory.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use super::field::{DecisionId, Field, describe_value, memory_key};
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
    pub field: Field,
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
    /// The case's [`stamp`] when it was listed: a different one before sending means
    /// someone changed it since.
    pub stamp: Option<String>,
    /// The customer the case belongs to (`cust_id`), recorded with its audit rows.
    pub tenant: Option<String>,
}

impl CasePlan {
    /// The update body (`priority` naming; the client renames it for v5), if any field changes.
    pub fn body(&self) -> Option<Value> {
        let mut body = Map::new();
        let (mut add, mut delete) = (Vec::new(), Vec::new());
        for d in self.decisions.iter().filter(|d| d.is_planned()) {
            let new = d.new.clone().unwrap_or_default();
            match d.field {
                Field::Tags => match new.split_at_checked(1) {
                    Some(("+", t)) => add.push(t.to_string()),
                    Some(("-", t)) => delete.push(t.to_string()),
                    _ => {}
                },
                Field::Comment => {}
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
            .filter(|d| d.is_planned() && d.field == Field::Comment)
    }

    /// Planned field changes (what goes into the update body).
    pub fn field_changes(&self) -> impl Iterator<Item = &Decision> {
        self.decisions
            .iter()
            .filter(|d| d.is_planned() && d.field != Field::Comment)
    }

    /// Whether anything will be sent for this case.
    pub fn has_work(&self) -> bool {
        self.decisions.iter().any(Decision::is_planned)
    }

    /// A comment explains its rule's changes: the planned comments of a rule (among those
    /// `among` picks) whose field changes are all skipped are skipped too, with `why`.
    pub fn skip_unexplained_comments(&mut self, among: impl Fn(&str) -> bool, why: &str) {
        let silent: Vec<String> = self
            .decisions
            .iter()
            .filter(|d| d.field != Field::Comment && among(&d.rule))
            .map(|d| d.rule.clone())
            .filter(|r| !self.field_changes().any(|d| &d.rule == r))
            .collect();
        for d in self.decisions.iter_mut() {
            if d.field == Field::Comment && d.is_planned() && silent.contains(&d.rule) {
                d.skipped = Some(why.into());
            }
        }
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

/// Every decision of a pass's plans with its id, in order.
pub fn decisions(plans: &[CasePlan]) -> impl Iterator<Item = (DecisionId, &CasePlan, &Decision)> {
    plans.iter().enumerate().flat_map(|(case, p)| {
        p.decisions
            .iter()
            .enumerate()
            .map(move |(decision, d)| (DecisionId { case, decision }, p, d))
    })
}

/// What a change claims, to detect conflicts (tags are claimed per tag), and the value it
/// claims it with; None for comments, which never conflict.
fn target(kind: &ChangeKind) -> Option<((Field, &str), &str)> {
    Some(match kind {
        ChangeKind::Priority(p) => ((Field::Priority, ""), p),
        ChangeKind::Status(s) => ((Field::Status, ""), s),
        ChangeKind::Resolve(_) => ((Field::Status, ""), "Resolved"),
        ChangeKind::Assign(u) => ((Field::Assignee, ""), u),
        ChangeKind::AddTag(t) => ((Field::Tags, t), "+"),
        ChangeKind::RemoveTag(t) => ((Field::Tags, t), "-"),
        ChangeKind::Description(d) => ((Field::Description, ""), d),
        ChangeKind::Comment(_) => return None,
    })
}

/// The decisions one change produces before conflicts: (field, old, new, no-op?).
fn describe(case: &Case, kind: &ChangeKind) -> Vec<(Field, Option<String>, String, bool)> {
    let field = |name: Field, old: &str, new: &str| {
        (name, Some(old.to_string()), new.to_string(), old == new)
    };
    match kind {
        ChangeKind::Priority(p) => vec![field(Field::Priority, case.priority(), p)],
        ChangeKind::Status(s) => vec![field(Field::Status, case.status(), s)],
        ChangeKind::Resolve(r) => {
            let already = case.status() == "Resolved";
            let old_res = case
                .raw()
                .get("resolution")
                .and_then(Value::as_str)
                .unwrap_or("");
            vec![
                field(Field::Status, case.status(), "Resolved"),
                (
                    Field::Resolution,
                    Some(old_res.to_string()),
                    r.clone(),
                    already,
                ),
            ]
        }
        ChangeKind::Assign(u) => vec![field(Field::Assignee, case.assignee(), u)],
        ChangeKind::AddTag(t) => vec![(Field::Tags, None, format!("+{t}"), case.has_tag(t))],
        ChangeKind::RemoveTag(t) => vec![(Field::Tags, None, format!("-{t}"), !case.has_tag(t))],
        ChangeKind::Description(d) => vec![field(Field::Description, case.description(), d)],
        ChangeKind::Comment(c) => vec![(Field::Comment, None, c.clone(), false)],
    }
}

/// Plans one case. Rules come in file-name order; the first rule to claim a field wins
/// and a later, different claim is skipped as a conflict. No-ops produce no decision.
pub fn plan_case(case: &Case, requests: &[RuleChanges]) -> CasePlan {
    let mut claimed: HashMap<(Field, &str), (&str, &str)> = HashMap::new();
    let mut decisions = Vec::new();
    for rc in requests {
        for change in &rc.changes {
            // Claims are taken even by no-ops: a rule whose wish already holds still wins
            // the field, so a later rule cannot undo it and make passes oscillate.
            let conflict = match target(&change.kind) {
                None => None,
                Some((key, value)) => match claimed.get(&key) {
                    Some((_, v)) if *v == value => continue,
                    Some((winner, _)) => Some(format!("conflict with {winner}")),
                    None => {
                        claimed.insert(key, (&rc.rule, value));
                        None
                    }
                },
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
        stamp: stamp(case),
        tenant: case.tenant().map(str::to_string),
    }
}

/// What changes whenever anyone changes the case: `modified_at` and, where the server
/// keeps one, `version`. None when the case carries neither.
pub fn stamp(case: &Case) -> Option<String> {
    let raw = case.raw();
    let (modified, version) = (raw.get("modified_at"), raw.get("version"));
    (modified.is_some() || version.is_some()).then(|| {
        format!(
            "{}/{}",
            modified.unwrap_or(&Value::Null),
            version.unwrap_or(&Value::Null)
        )
    })
}

/// Whether the case already holds what a planned decision sets (used to reconcile after a
/// crash and to check idempotence).
pub fn case_holds(case: &Case, d: &Decision) -> bool {
    holds(case, d.field, d.new.as_deref().unwrap_or(""))
}

/// Whether the case holds `value` in `field` (`+tag`/`-tag` for tags: there / not there).
pub fn holds(case: &Case, field: Field, new: &str) -> bool {
    match field {
        Field::Priority => case.priority() == new,
        Field::Status => case.status() == new,
        Field::Assignee => case.assignee() == new,
        Field::Description => case.description() == new,
        Field::Resolution => case.raw().get("resolution").and_then(Value::as_str) == Some(new),
        Field::Tags => match new.split_at_checked(1) {
            Some(("+", t)) => case.has_tag(t),
            Some(("-", t)) => !case.has_tag(t),
            _ => false,
        },
        Field::Comment => false,
    }
}

/// What casewarden last applied to one case: field (per tag for tags, `tags:NAME`) ->
/// the value it set (`+NAME`/`-NAME` for tags).
pub type Memory = HashMap<String, String>;

/// The memory of one case from the field changes casewarden applied to it, oldest first.
pub fn remember<'a>(applied: impl IntoIterator<Item = (Field, &'a str)>) -> Memory {
    applied
        .into_iter()
        .map(|(field, new)| (memory_key(field, new), new.to_string()))
        .collect()
}

/// Human override, from casewarden's own memory rather than the case's history (which
/// 5.x servers do not send): a field that no longer holds the value casewarden last applied
/// there was changed by someone else, so no rule sets it again. The skip names who and
/// when when the case's history or activities tell. A resolution goes with its status.
pub(super) fn skip_overridden(plan: &mut CasePlan, case: &Case, memory: &Memory, own: &[String]) {
    let mut overridden_status: Vec<String> = Vec::new();
    let mut overridden: Vec<String> = Vec::new();
    for d in plan.decisions.iter_mut().filter(|d| d.is_planned()) {
        let new = d.new.as_deref().unwrap_or("");
        let Some(last) = memory.get(&memory_key(d.field, new)) else {
            continue;
        };
        let ours = Decision {
            new: Some(last.clone()),
            ..d.clone()
        };
        if matches!(d.field, Field::Comment | Field::Resolution) || case_holds(case, &ours) {
            continue;
        }
        d.skipped = Some(format!(
            "overridden by a person: casewarden set {} {}, the case now holds {}{}",
            d.field,
            describe_value(d.field, last),
            describe_value(d.field, &current(case, d.field, new)),
            who_changed(case, d.field, own)
        ));
        if d.field == Field::Status {
            overridden_status.push(d.rule.clone());
        }
        overridden.push(d.rule.clone());
    }
    for d in plan.decisions.iter_mut() {
        if d.field == Field::Resolution && d.is_planned() && overridden_status.contains(&d.rule) {
            d.skipped = Some("overridden by a person: the status it goes with was".into());
        }
    }
    // A comment explains its rule's changes: with all of them reverted by a person it would
    // be posted again every pass; the same text casewarden posted last is not posted twice.
    plan.skip_unexplained_comments(
        |rule| overridden.iter().any(|r| r == rule),
        "overridden by a person: the changes this comment explains were reverted",
    );
    let last_comment = memory.get(&memory_key(Field::Comment, ""));
    for d in plan.decisions.iter_mut() {
        if d.field == Field::Comment
            && d.is_planned()
            && last_comment.is_some()
            && last_comment == d.new.as_ref()
        {
            d.skipped =
                Some("already posted: casewarden's last comment on this case says the same".into());
        }
    }
}

/// The case's current value of `field`, in the memory's form.
pub fn current(case: &Case, field: Field, new: &str) -> String {
    match field {
        Field::Tags => {
            let tag = new.get(1..).unwrap_or("");
            format!("{}{tag}", if case.has_tag(tag) { "+" } else { "-" })
        }
        Field::Priority => case.priority().to_string(),
        other => case
            .raw()
            .get(other.as_str())
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
    }
}

/// " (by USER at TIME)" from the newest history or activity entry of `field` that is not
/// casewarden's own, when there is one.
fn who_changed(case: &Case, field: Field, own: &[String]) -> String {
    let same = |f: &str| f == field.as_str() || (field == Field::Priority && f == "severity");
    let history = case.history();
    let entries = history
        .iter()
        .chain(case.activities.iter().flat_map(|a| a.iter()));
    entries
        .filter(|h| same(&h.field) && !crate::stellar::is_own_entry(h.api, &h.user, own))
        .max_by_key(|h| h.timestamp)
        .and_then(|h| {
            let at = chrono::DateTime::from_timestamp_millis(h.timestamp)?;
            Some(format!(
                " (by {} at {})",
                h.user,
                at.format("%Y-%m-%dT%H:%M:%SZ")
            ))
        })
        .unwrap_or_default()
}

/// The case as the server would hold it after the plan's update.
pub fn apply(case: &Case, plan: &CasePlan) -> Case {
    let mut out = case.clone();
    let mut tags: Vec<String> = case.tags().map(str::to_string).collect();
    for d in plan.field_changes() {
        let new = d.new.clone().unwrap_or_default();
        match d.field {
            Field::Tags => match new.split_at_checked(1) {
                Some(("+", t)) if !tags.iter().any(|x| x == t) => tags.push(t.to_string()),
                Some(("-", t)) => tags.retain(|x| x != t),
                _ => {}
            },
            field => out = out.with_field(field.as_str(), json!(new)),
        }
    }
    out.with_field("tags", json!(tags))
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

    #[test]
    fn a_field_a_person_changed_after_casewarden_is_not_set_again() {
        // casewarden set High and added tag x; a person set Low and removed x.
        let memory = remember([
            (Field::Priority, "High"),
            (Field::Tags, "+x"),
            (Field::Status, "Resolved"),
        ]);
        let c = Case::from_value(json!({
            "_id": "c1", "status": "In Progress", "priority": "Low", "tags": [],
            "history": [{"field": "priority", "timestamp": 1_700_000_000_000i64, "user": "alice"}]
        }))
        .unwrap();
        let mut plan = plan_case(
            &c,
            &[rc(
                "a",
                vec![
                    ChangeKind::Priority("High".into()),
                    ChangeKind::AddTag("x".into()),
                    ChangeKind::AddTag("y".into()),
                    ChangeKind::Resolve("Benign".into()),
                ],
            )],
        );
        skip_overridden(&mut plan, &c, &memory, &["me".into()]);
        let skipped: Vec<(&str, &str)> = plan
            .decisions
            .iter()
            .map(|d| {
                (
                    d.new.as_deref().unwrap(),
                    d.skipped.as_deref().unwrap_or("planned"),
                )
            })
            .collect();
        assert_eq!(
            skipped[0],
            (
                "High",
                "overridden by a person: casewarden set priority \"High\", the case now holds \"Low\" (by alice at 2023-11-14T22:13:20Z)"
            )
        );
        assert!(skipped[1].1.starts_with("overridden by a person: casewarden set tags tag x added, the case now holds tag x removed"));
        assert_eq!(skipped[2], ("+y", "planned"));
        assert!(skipped[3].1.starts_with("overridden by a person"));
        assert_eq!(
            skipped[4],
            (
                "Benign",
                "overridden by a person: the status it goes with was"
            )
        );
        // Where the case still holds what casewarden set, nothing is overridden.
        let held =
            Case::from_value(json!({"_id": "c1", "priority": "High", "tags": ["x"]})).unwrap();
        let mut plan = plan_case(
            &held,
            &[rc("a", vec![ChangeKind::Priority("Critical".into())])],
        );
        skip_overridden(&mut plan, &held, &memory, &[]);
        assert!(plan.decisions[0].is_planned());
    }

    /// A person removed the tag casewarden added: the rule fires again, the tag is not set
    /// again, and the comment explaining it is not posted again either (each pass would).
    #[test]
    fn comments_follow_their_reverted_changes_and_are_not_repeated() {
        let memory = remember([(Field::Tags, "+sla"), (Field::Comment, "SLA breached")]);
        let c = Case::from_value(json!({"_id": "c1", "priority": "Low", "tags": []})).unwrap();
        let mut plan = plan_case(
            &c,
            &[
                rc(
                    "sla",
                    vec![
                        ChangeKind::AddTag("sla".into()),
                        ChangeKind::Comment("SLA breached for 3h".into()),
                    ],
                ),
                rc("nag", vec![ChangeKind::Comment("SLA breached".into())]),
                rc(
                    "other",
                    vec![
                        ChangeKind::Priority("High".into()),
                        ChangeKind::Comment("raised".into()),
                    ],
                ),
            ],
        );
        skip_overridden(&mut plan, &c, &memory, &[]);
        let notes: Vec<(&str, Option<&str>)> = plan
            .decisions
            .iter()
            .map(|d| (d.rule.as_str(), d.skipped.as_deref()))
            .collect();
        assert!(notes[0].1.unwrap().starts_with("overridden by a person"));
        assert!(
            notes[1]
                .1
                .unwrap()
                .contains("the changes this comment explains were reverted")
        );
        assert!(notes[2].1.unwrap().starts_with("already posted"));
        assert_eq!(notes[3], ("other", None));
        assert_eq!(notes[4], ("other", None));
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
