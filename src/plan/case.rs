//! One case: the changes its rules asked for merged into decisions (no-ops dropped, the
//! first rule to claim a field wins, a later different claim is a conflict), at most one
//! update body, and what the case holds before and after it.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use super::field::{DecisionId, Field};
use crate::stellar::{Case, Directory};

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

/// `assign("someone@x")` as it is sent: the user's id from `users`. A change naming an
/// email `users` lacks (every email when the users are unknown: None) is dropped and
/// returned as (rule, email), to be reported as that rule's error.
pub fn resolve_emails(
    requests: &mut [RuleChanges],
    users: Option<&Directory>,
) -> Vec<(String, String)> {
    let mut unknown = Vec::new();
    for rc in requests {
        rc.changes.retain_mut(|c| {
            let ChangeKind::Assign(who) = &mut c.kind else {
                return true;
            };
            if !who.contains('@') {
                return true;
            }
            match users.and_then(|u| u.id_of(who)) {
                Some(id) => {
                    *who = id.to_string();
                    true
                }
                None => {
                    unknown.push((rc.rule.clone(), who.clone()));
                    false
                }
            }
        });
    }
    unknown
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

    /// What `case` holds now in this decision's field (see [`field_now`]).
    pub fn now_in(&self, case: &Case) -> FieldNow {
        let (old, new) = (self.old.as_deref(), self.new.as_deref());
        field_now(case, self.field, old.unwrap_or(""), new.unwrap_or(""))
    }
}

/// The plan for one case.
#[derive(Debug, Clone, PartialEq)]
pub struct CasePlan {
    pub case_id: String,
    pub ticket_id: Option<i64>,
    pub decisions: Vec<Decision>,
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
    #[cfg(test)]
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
        tenant: case.tenant().map(str::to_string),
    }
}

/// What a case read now holds in a planned change's field.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldNow {
    /// What the plan saw (`old`; for a tag, not yet added or removed): the change still is one.
    Old,
    /// What the plan sets: made already.
    New,
    /// A third value (never for a tag), as [`current`] shows it: someone else changed it.
    Other(String),
}

/// What `case` holds now in `field`, against the plan's `old` and `new`.
pub fn field_now(case: &Case, field: Field, old: &str, new: &str) -> FieldNow {
    if holds(case, field, new) {
        return FieldNow::New;
    }
    let now = super::current(case, field, new);
    if field == Field::Tags || field == Field::Comment || now == old || holds(case, field, old) {
        FieldNow::Old
    } else {
        FieldNow::Other(now)
    }
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

/// The case as the server would hold it after the plan's update.
#[cfg(test)]
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
pub(super) mod tests;
