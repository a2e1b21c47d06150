//! The inverse of a pass's applied changes on one case, checked against the case as it
//! is now: tags it added are removed and removed ones added, fields get their old value
//! back where the case still holds what the pass wrote, and a posted comment gets a note
//! instead of being deleted. Pure; `casewarden revert` reads the log and the cases.

use super::{CasePlan, Decision, Field, describe_change, holds};
use crate::stellar::Case;

/// One change a pass applied, as its audit row records it.
#[derive(Debug, Clone, Copy)]
pub struct Applied<'a> {
    pub rule: &'a str,
    pub field: &'a str,
    pub old: Option<&'a str>,
    pub new: Option<&'a str>,
}

/// Who undoes `pass`, and so the rule its inverse is recorded under.
#[derive(Debug, Clone, Copy)]
pub struct Reverter<'a> {
    pub pass: &'a str,
    pub actor: &'a str,
}

impl Reverter<'_> {
    /// The plan undoing `applied` (the pass's changes of case `case_id`, as the log names
    /// it) on the case as it is now.
    pub fn plan(&self, case_id: &str, now: &Case, applied: &[Applied]) -> CasePlan {
        let mut decisions = Vec::new();
        let mut commented = false;
        for a in applied {
            match Field::parse(a.field) {
                None => {}
                Some(Field::Comment) => commented = true,
                // A resolution goes with its status, which is reverted.
                Some(Field::Resolution) => {}
                Some(field) => decisions.push(self.undo(now, field, a)),
            }
        }
        if commented {
            decisions.push(self.note());
        }
        CasePlan {
            case_id: case_id.to_string(),
            ticket_id: now.ticket_id(),
            decisions,
            tenant: now.tenant().map(str::to_string),
        }
    }

    /// The inverse of one applied change, skipped when the case no longer holds what the
    /// pass wrote.
    fn undo(&self, now: &Case, field: Field, a: &Applied) -> Decision {
        let pass = self.pass;
        let wrote = a.new.unwrap_or_default();
        let reason = format!(
            "revert of pass {pass}: rule {} set {}",
            a.rule,
            describe_change(field, a.old, a.new)
        );
        let (old, new) = match field {
            Field::Tags => {
                let (sign, tag) = wrote.split_at_checked(1).unwrap_or(("", ""));
                let back = if sign == "+" { "-" } else { "+" };
                (None, format!("{back}{tag}"))
            }
            _ => (
                Some(wrote.to_string()),
                a.old.unwrap_or_default().to_string(),
            ),
        };
        Decision {
            rule: self.actor.to_string(),
            field,
            old,
            new: Some(new),
            reason,
            skipped: (!holds(now, field, wrote)).then(|| {
                format!(
                    "the case changed since pass {pass}: it no longer holds {}",
                    describe(field, wrote)
                )
            }),
        }
    }

    /// Comments are not deleted: a note says the one posted then no longer applies.
    fn note(&self) -> Decision {
        let pass = self.pass;
        Decision {
            rule: self.actor.to_string(),
            field: Field::Comment,
            old: None,
            new: Some(format!(
                "casewarden reverted pass {pass} on this case: what it changed is set back where the case still held it; the comment it posted then no longer applies."
            )),
            reason: format!("revert of pass {pass}: a note instead of deleting its comment"),
            skipped: None,
        }
    }
}

fn describe(field: Field, value: &str) -> String {
    match field {
        Field::Tags => match value.split_at_checked(1) {
            Some(("+", t)) => format!("tag {t}"),
            Some((_, t)) => format!("the removal of tag {t}"),
            None => value.to_string(),
        },
        _ => format!("{field} {value:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BY: Reverter = Reverter {
        pass: "p1",
        actor: "revert:p1",
    };

    fn case() -> Case {
        Case::from_value(serde_json::json!({
            "_id": "c1", "ticket_id": 7, "status": "In Progress", "priority": "High",
            "tags": ["auto-escalated", "vip"],
        }))
        .unwrap()
    }

    /// The revert of `applied` (field, old, new) by rule `escalate` on [`case`].
    fn revert(applied: &[(&str, Option<&str>, &str)]) -> CasePlan {
        let applied: Vec<Applied> = applied
            .iter()
            .map(|&(field, old, new)| Applied {
                rule: "escalate",
                field,
                old,
                new: Some(new),
            })
            .collect();
        BY.plan("c1", &case(), &applied)
    }

    #[test]
    fn what_the_case_still_holds_is_set_back() {
        let plan = revert(&[
            ("priority", Some("Medium"), "High"),
            ("tags", None, "+auto-escalated"),
        ]);
        assert_eq!(plan.case_id, "c1");
        assert_eq!(plan.ticket_id, Some(7));
        let d = &plan.decisions;
        assert_eq!(d.len(), 2);
        assert!(d.iter().all(|d| d.is_planned() && d.rule == "revert:p1"));
        assert_eq!(
            (d[0].old.as_deref(), d[0].new.as_deref()),
            (Some("High"), Some("Medium"))
        );
        assert_eq!(d[1].new.as_deref(), Some("-auto-escalated"));
        assert_eq!(
            d[0].reason,
            "revert of pass p1: rule escalate set Medium -> High"
        );
    }

    #[test]
    fn a_case_changed_since_is_skipped_with_why() {
        let plan = revert(&[("status", Some("New"), "Closed"), ("tags", None, "-vip")]);
        let skipped: Vec<&str> = plan
            .decisions
            .iter()
            .filter_map(|d| d.skipped.as_deref())
            .collect();
        assert_eq!(
            skipped,
            [
                "the case changed since pass p1: it no longer holds status \"Closed\"",
                "the case changed since pass p1: it no longer holds the removal of tag vip"
            ]
        );
    }

    #[test]
    fn a_comment_gets_a_note_and_a_resolution_goes_with_its_status() {
        let plan = revert(&[
            ("comment", None, "escalated"),
            ("resolution", None, "False Positive"),
            ("comment", None, "again"),
        ]);
        assert_eq!(plan.decisions.len(), 1);
        assert_eq!(plan.decisions[0].field, Field::Comment);
        assert!(plan.decisions[0].is_planned());
    }
}
