//! casewarden's memory of what it applied to a case, and human override: a field that no
//! longer holds what casewarden last set there was changed by a person, so no rule sets it
//! again (and the comments explaining it are not posted again).

use std::collections::HashMap;

use serde_json::Value;

use super::case::{CasePlan, Decision, RuleChanges, case_holds, plan_case};
use super::field::{Field, describe_value, memory_key};
use crate::stellar::{Case, Directory};

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

/// Who set back a value casewarden had applied, as far as the case tells: a person, or
/// another automation (an API user that is not casewarden).
pub struct Overrides<'a> {
    /// casewarden's user id and email.
    pub own: &'a [String],
    /// The server's users, when read: an API user they list is a person using the API.
    pub people: Option<&'a Directory>,
    /// Whether a rule sets again what another automation set back
    /// (`RULE.on_automation_revert = "reapply"`).
    pub reapplies: &'a dyn Fn(&str) -> bool,
}

/// Another automation set back a value a rule of casewarden's had applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Clash {
    pub rule: String,
    pub field: Field,
    /// The value casewarden set, in the memory's form.
    pub value: String,
    /// The API user that set it back.
    pub by: String,
    pub outcome: ClashOutcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClashOutcome {
    /// casewarden leaves the other automation's value (`"yield"`).
    Yielded,
    /// casewarden sets its value again (`"reapply"`, the first time).
    Reapplied,
    /// Set back again after casewarden reapplied: casewarden stops.
    Fight,
}

impl ClashOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ClashOutcome::Yielded => "yield",
            ClashOutcome::Reapplied => "reapply",
            ClashOutcome::Fight => "fight",
        }
    }
}

/// The value casewarden last applied where `d` wants to write, when the case no longer
/// holds it: someone else changed the field since.
fn set_back<'m>(d: &Decision, case: &Case, memory: &'m Memory) -> Option<&'m String> {
    let last = memory.get(&memory_key(d.field, d.new.as_deref().unwrap_or("")))?;
    let ours = Decision {
        new: Some(last.clone()),
        ..d.clone()
    };
    let comment = matches!(d.field, Field::Comment | Field::Resolution);
    (!comment && !case_holds(case, &ours)).then_some(last)
}

/// Whether some change the rules ask for meets a value casewarden applied that the case no
/// longer holds: who set it back is then worth reading (a 5.x case's activities).
pub fn sets_back(case: &Case, requests: &[RuleChanges], memory: &Memory) -> bool {
    !memory.is_empty()
        && plan_case(case, requests)
            .decisions
            .iter()
            .any(|d| set_back(d, case, memory).is_some())
}

/// Human override, from casewarden's own memory rather than the case's history (which
/// 5.x servers do not send): a field that no longer holds the value casewarden last applied
/// there was changed by someone else, so no rule sets it again. The skip names who and
/// when when the case's history or activities tell. A resolution goes with its status.
///
/// When the case says another automation set it back (an API user that is not casewarden
/// nor a person `/users` lists), the rule yields to it, saying so, or with
/// `on_automation_revert = "reapply"` sets it again once (`applied_times`: how often
/// casewarden applied each value); set back once more, casewarden stops: a fight. Returns
/// those clashes.
pub(super) fn skip_overridden(
    plan: &mut CasePlan,
    case: &Case,
    memory: &Memory,
    applied_times: &HashMap<String, usize>,
    who: &Overrides<'_>,
) -> Vec<Clash> {
    // The rules whose change was set back and left so, and its field.
    let mut overridden: Vec<(String, Field)> = Vec::new();
    let mut clashes = Vec::new();
    for d in plan.decisions.iter_mut().filter(|d| d.is_planned()) {
        let Some(last) = set_back(d, case, memory) else {
            continue;
        };
        let new = d.new.as_deref().unwrap_or("");
        let changer = last_changer(case, d.field, who.own);
        let now_holds = describe_value(d.field, &current(case, d.field, new));
        let set = format!(
            "casewarden set {} {}, the case now holds {now_holds}",
            d.field,
            describe_value(d.field, last)
        );
        let automation = changer.as_ref().filter(|c| {
            c.api
                && !who
                    .people
                    .is_some_and(|p| p.id_of(&c.user).is_some() || p.email_of(&c.user).is_some())
        });
        let Some(by) = automation else {
            d.skipped = Some(format!(
                "overridden by a person: {set}{}",
                changer.as_ref().map(Changer::describe).unwrap_or_default()
            ));
            overridden.push((d.rule.clone(), d.field));
            continue;
        };
        let times = applied_times
            .get(&memory_key(d.field, new))
            .copied()
            .unwrap_or(1);
        let outcome = answer_automation(d, &set, by, times, (who.reapplies)(&d.rule));
        if outcome != ClashOutcome::Reapplied {
            overridden.push((d.rule.clone(), d.field));
        }
        clashes.push(Clash {
            rule: d.rule.clone(),
            field: d.field,
            value: last.clone(),
            by: by.user.clone(),
            outcome,
        });
    }
    follow_overrides(plan, memory, &overridden);
    clashes
}

/// What a rule does about a value another automation (`by`) set back after casewarden set
/// it `times` times: yields, sets it again once (`reapply`), or stops: a fight. Notes it on
/// the decision.
fn answer_automation(
    d: &mut Decision,
    set: &str,
    by: &Changer,
    times: usize,
    reapply: bool,
) -> ClashOutcome {
    let by_text = by.describe();
    let outcome = match (reapply, times) {
        (false, _) => ClashOutcome::Yielded,
        (true, 0 | 1) => ClashOutcome::Reapplied,
        (true, _) => ClashOutcome::Fight,
    };
    match outcome {
        ClashOutcome::Reapplied => {
            d.reason = format!(
                "{} [set again: another automation set it back{by_text}; RULE.on_automation_revert = \"reapply\"]",
                d.reason
            )
            .trim_start()
            .to_string();
        }
        ClashOutcome::Yielded => {
            d.skipped = Some(format!(
                "set back by another automation, not a person: {set}{by_text}; yielding (RULE.on_automation_revert = \"yield\")"
            ));
        }
        ClashOutcome::Fight => {
            d.skipped = Some(format!(
                "fight with another automation: {set}{by_text} again after casewarden set it {times} times; stopped (RULE.on_automation_revert = \"reapply\" sets it at most twice)"
            ));
        }
    }
    outcome
}

/// What follows a change left set back: the resolution that goes with a status, and the
/// comments explaining it (with all of a rule's changes set back a comment would be posted
/// again every pass); the same text casewarden posted last is not posted twice.
fn follow_overrides(plan: &mut CasePlan, memory: &Memory, overridden: &[(String, Field)]) {
    for d in plan.decisions.iter_mut() {
        let status_left = overridden.contains(&(d.rule.clone(), Field::Status));
        if d.field == Field::Resolution && d.is_planned() && status_left {
            d.skipped = Some("overridden: the status it goes with was".into());
        }
    }
    plan.skip_unexplained_comments(
        |rule| overridden.iter().any(|(r, _)| r == rule),
        "overridden: the changes this comment explains were set back",
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

/// Who made the newest change of a field, from the case's history or activities.
struct Changer {
    user: String,
    api: bool,
    at: i64,
}

impl Changer {
    /// " (by USER at TIME)".
    fn describe(&self) -> String {
        let at = chrono::DateTime::from_timestamp_millis(self.at)
            .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_default();
        format!(" (by {} at {at})", self.user)
    }
}

/// The newest history or activity entry of `field` that is not casewarden's own.
fn last_changer(case: &Case, field: Field, own: &[String]) -> Option<Changer> {
    let same = |f: &str| f == field.as_str() || (field == Field::Priority && f == "severity");
    let history = case.history();
    let entries = history
        .iter()
        .chain(case.activities.iter().flat_map(|a| a.iter()));
    entries
        .filter(|h| same(&h.field) && !crate::stellar::is_own_entry(h.api, &h.user, own))
        .max_by_key(|h| h.timestamp)
        .map(|h| Changer {
            user: h.user.clone(),
            api: h.api,
            at: h.timestamp,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::case::tests::rc;
    use crate::plan::{ChangeKind, plan_case};
    use serde_json::json;

    /// Override as a pass without the users list sees it, no rule reapplying.
    fn skip(plan: &mut CasePlan, c: &Case, memory: &Memory, own: &[String]) -> Vec<Clash> {
        let who = Overrides {
            own,
            people: None,
            reapplies: &|_| false,
        };
        skip_overridden(plan, c, memory, &HashMap::new(), &who)
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
        skip(&mut plan, &c, &memory, &["me".into()]);
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
            ("Benign", "overridden: the status it goes with was")
        );
        // Where the case still holds what casewarden set, nothing is overridden.
        let held =
            Case::from_value(json!({"_id": "c1", "priority": "High", "tags": ["x"]})).unwrap();
        let mut plan = plan_case(
            &held,
            &[rc("a", vec![ChangeKind::Priority("Critical".into())])],
        );
        skip(&mut plan, &held, &memory, &[]);
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
        skip(&mut plan, &c, &memory, &[]);
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
                .contains("the changes this comment explains were set back")
        );
        assert!(notes[2].1.unwrap().starts_with("already posted"));
        assert_eq!(notes[3], ("other", None));
        assert_eq!(notes[4], ("other", None));
    }
}
