//! casewarden's memory of what it applied to a case, and human override: a field that no
//! longer holds what casewarden last set there was changed by a person, so no rule sets it
//! again (and the comments explaining it are not posted again).

use std::collections::HashMap;

use serde_json::Value;

use super::case::{CasePlan, Decision, case_holds};
use super::field::{Field, describe_value, memory_key};
use crate::stellar::Case;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::case::tests::rc;
    use crate::plan::{ChangeKind, plan_case};
    use serde_json::json;

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
}
