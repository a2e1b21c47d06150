//! The reviewed plan (`once --dry-run --out PLAN.json`, `casewarden apply PLAN.json`):
//! every decision of a dry run with what a reviewer needs to trust it, and what `apply`
//! needs to refuse a stale or foreign one. Its text and digest are made here; the
//! commands read and write the file.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::pass::{DEFERRED, HALTED};
use super::{CasePlan, Decision, Field, FieldNow, current, field_now};
use crate::stellar::Case;

/// A plan file `apply` cannot use.
#[derive(Debug, thiserror::Error)]
pub enum PlanFileError {
    #[error("not a plan written by `casewarden once --dry-run --out` ({0})")]
    NotAPlan(serde_json::Error),
    #[error("case {case_id}: unknown field {field:?} in the plan")]
    UnknownField { case_id: String, field: String },
}

fn digest(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

fn is_halted(d: &Decision) -> bool {
    d.skipped.as_deref().is_some_and(|s| s.contains(HALTED))
}

/// A change a reviewer could apply: planned, halted by the guard, or deferred by the
/// budget (the plan holds them all; `apply` spends the budget).
fn is_pending(d: &Decision) -> bool {
    d.is_planned() || is_halted(d) || d.skipped.as_deref().is_some_and(|s| s.ends_with(DEFERRED))
}

/// Whether a dry run's plans hold a change a reviewer could apply.
pub fn any_pending(plans: &[CasePlan]) -> bool {
    plans.iter().flat_map(|p| &p.decisions).any(is_pending)
}

/// Where and when a plan was made.
pub struct Made<'a> {
    pub plan_id: String,
    pub pass_id: &'a str,
    pub server_url: &'a str,
    pub fingerprint: &'a str,
    pub now: chrono::DateTime<chrono::Utc>,
    pub valid_for: chrono::Duration,
}

/// What a reviewer reads beside the ids: people's emails by user id, customers' names by
/// `cust_id`.
#[derive(Debug, Default)]
pub struct Names {
    pub people: BTreeMap<String, String>,
    pub customers: HashMap<String, String>,
}

/// A change's key, to tell the ones an earlier `apply` of the plan made.
pub type ChangeKey = (String, String, String, Option<String>);

/// Which changes of a plan one `apply` takes.
#[derive(Debug, Default)]
pub struct Approval {
    /// Only these rules (all when empty).
    pub rules: Vec<String>,
    /// Only these cases, by id or ticket number (all when empty).
    pub cases: Vec<String>,
    pub exclude_rules: Vec<String>,
    pub include_halted: bool,
    /// At most this many changes, comments included (a case's changes go together).
    pub budget: usize,
}

/// What an approval took from a plan, and what it left.
#[derive(Debug, Default, PartialEq)]
pub struct Taken {
    /// Changes an earlier `apply` of the plan made.
    pub done: usize,
    /// Changes the filters left out.
    pub not_approved: usize,
    /// Changes the guard halted, left out without `include_halted`.
    pub halted: usize,
    /// Approved changes beyond the budget: a later `apply` takes them.
    pub over_budget: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanFile {
    pub plan_id: String,
    /// The dry-run pass that made it.
    pub pass_id: String,
    pub created_at: String,
    pub expires_at: String,
    pub server_url: String,
    pub rules_fingerprint: String,
    pub cases: Vec<PlannedCase>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlannedCase {
    pub case_id: String,
    pub ticket_id: Option<i64>,
    /// The customer (`cust_id`) and its name, for the reviewer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_name: Option<String>,
    pub changes: Vec<PlannedChange>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlannedChange {
    pub rule: String,
    pub field: String,
    pub old: Option<String>,
    pub new: Option<String>,
    pub reason: String,
    /// Held back by the blast-radius guard: applied only with `apply --include-halted`.
    #[serde(default)]
    pub halted: bool,
    /// For an assignee: the people `old` and `new` name, by email (the ids are what is sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_email: Option<String>,
}

impl PlanFile {
    /// The plan of a dry-run pass: every change a reviewer could apply (planned, halted by
    /// the guard, deferred by the budget), people and customers named for reading.
    pub fn of(plans: &[CasePlan], made: Made<'_>, names: &Names) -> PlanFile {
        let email = |field: Field, id: &Option<String>| match field {
            Field::Assignee => id.as_ref().and_then(|i| names.people.get(i)).cloned(),
            _ => None,
        };
        let cases = plans
            .iter()
            .filter_map(|p| {
                let changes: Vec<PlannedChange> = p
                    .decisions
                    .iter()
                    .filter(|d| is_pending(d))
                    .map(|d| PlannedChange {
                        rule: d.rule.clone(),
                        field: d.field.to_string(),
                        old: d.old.clone(),
                        new: d.new.clone(),
                        reason: d.reason.clone(),
                        halted: is_halted(d),
                        old_email: email(d.field, &d.old),
                        new_email: email(d.field, &d.new),
                    })
                    .collect();
                (!changes.is_empty()).then(|| PlannedCase {
                    case_id: p.case_id.clone(),
                    ticket_id: p.ticket_id,
                    tenant_name: p
                        .tenant
                        .as_ref()
                        .and_then(|t| names.customers.get(t))
                        .filter(|n| !n.is_empty())
                        .cloned(),
                    tenant: p.tenant.clone(),
                    changes,
                })
            })
            .collect();
        PlanFile {
            plan_id: made.plan_id,
            pass_id: made.pass_id.to_string(),
            created_at: crate::time::timestamp(made.now),
            expires_at: crate::time::timestamp(made.now + made.valid_for),
            server_url: made.server_url.to_string(),
            rules_fingerprint: made.fingerprint.to_string(),
            cases,
        }
    }

    /// Keeps what `approval` takes of the changes not in `done`: the approved ones, up to the
    /// budget, whole cases at a time (a case's comment goes with its changes).
    pub fn take(&mut self, approval: &Approval, done: &HashSet<ChangeKey>) -> Taken {
        let mut taken = Taken::default();
        let mut used = 0;
        for case in &mut self.cases {
            let before = case.changes.len();
            case.changes
                .retain(|c| !done.contains(&c.key(&case.case_id)));
            taken.done += before - case.changes.len();
            let case_ok = approval.takes_case(&case.case_id, case.ticket_id);
            let before = case.changes.len();
            case.changes
                .retain(|c| case_ok && approval.takes_rule(&c.rule));
            taken.not_approved += before - case.changes.len();
            let before = case.changes.len();
            case.changes
                .retain(|c| approval.include_halted || !c.halted);
            taken.halted += before - case.changes.len();
            // Counted as a pass counts them: comments too.
            let cost = case.changes.len();
            if used > 0 && used + cost > approval.budget {
                taken.over_budget += cost;
                case.changes.clear();
            } else {
                used += cost;
            }
        }
        self.cases.retain(|c| !c.changes.is_empty());
        taken
    }

    /// The file's text, and its SHA-256, which `once` records in the audit log so `apply`
    /// can tell the reviewed file from an edited one.
    pub fn to_text(&self) -> Result<(String, String), serde_json::Error> {
        let text = serde_json::to_string_pretty(self)? + "\n";
        let digest = digest(text.as_bytes());
        Ok((text, digest))
    }

    /// The plan in a file's bytes, and their SHA-256.
    pub fn from_bytes(bytes: &[u8]) -> Result<(PlanFile, String), PlanFileError> {
        let plan = serde_json::from_slice(bytes).map_err(PlanFileError::NotAPlan)?;
        Ok((plan, digest(bytes)))
    }

    /// Whether the plan was made on the server at `url` (a trailing slash and case aside).
    pub fn is_for(&self, url: &str) -> bool {
        self.server_url
            .trim_end_matches('/')
            .eq_ignore_ascii_case(url.trim_end_matches('/'))
    }

    /// Whether the plan's validity ended before `now`.
    pub fn expired(&self, now: chrono::DateTime<chrono::Utc>) -> Result<bool, chrono::ParseError> {
        Ok(chrono::DateTime::parse_from_rfc3339(&self.expires_at)? < now)
    }

    /// The rules whose changes the plan holds, in name order.
    pub fn rules(&self) -> Vec<String> {
        let mut rules: Vec<String> = self
            .cases
            .iter()
            .flat_map(|c| c.changes.iter().map(|ch| ch.rule.clone()))
            .collect();
        rules.sort();
        rules.dedup();
        rules
    }

    /// Changes that will be offered for applying (halted ones only when asked).
    pub fn pending(&self, include_halted: bool) -> usize {
        self.cases
            .iter()
            .flat_map(|c| &c.changes)
            .filter(|c| include_halted || !c.halted)
            .count()
    }
}

impl Approval {
    /// Whether the approval takes changes of the case with this id and ticket number.
    fn takes_case(&self, id: &str, ticket: Option<i64>) -> bool {
        let ticket = ticket.map(|t| t.to_string());
        self.cases.is_empty()
            || self
                .cases
                .iter()
                .any(|c| c == id || Some(c) == ticket.as_ref())
    }

    /// Whether it takes changes of this rule.
    fn takes_rule(&self, rule: &str) -> bool {
        (self.rules.is_empty() || self.rules.iter().any(|r| r == rule))
            && !self.exclude_rules.iter().any(|r| r == rule)
    }
}

impl PlannedChange {
    fn key(&self, case_id: &str) -> ChangeKey {
        (
            case_id.to_string(),
            self.rule.clone(),
            self.field.clone(),
            self.new.clone(),
        )
    }
}

impl PlannedCase {
    /// The case's plan against the case as it is now: a change whose `old` no longer holds
    /// is skipped ("case changed since the plan"), as is a halted one unless included.
    pub fn against(
        &self,
        now: &Case,
        include_halted: bool,
        plan_id: &str,
    ) -> Result<CasePlan, PlanFileError> {
        let decisions = self
            .changes
            .iter()
            .map(|c| {
                let field =
                    Field::parse(&c.field).ok_or_else(|| PlanFileError::UnknownField {
                        case_id: self.case_id.clone(),
                        field: c.field.clone(),
                    })?;
                let skipped = if c.halted && !include_halted {
                    Some("halted by the blast-radius guard when planned; apply --include-halted applies it".to_string())
                } else {
                    still_holds(now, field, c).err()
                };
                Ok(Decision {
                    rule: c.rule.clone(),
                    field,
                    old: c.old.clone(),
                    new: c.new.clone(),
                    reason: format!("{} [plan {plan_id}]", c.reason),
                    skipped,
                })
            })
            .collect::<Result<Vec<Decision>, PlanFileError>>()?;
        let mut plan = CasePlan {
            case_id: self.case_id.clone(),
            ticket_id: self.ticket_id,
            decisions,
            tenant: now.tenant().map(str::to_string),
        };
        plan.skip_unexplained_comments(
            |_| true,
            "the changes this comment explains are not applied",
        );
        Ok(plan)
    }
}

/// Whether the case still holds what the plan saw (`old`), so the change means what the
/// reviewer approved; why not, if not.
fn still_holds(case: &Case, field: Field, c: &PlannedChange) -> Result<(), String> {
    let new = c.new.as_deref().unwrap_or("");
    let old = c.old.as_deref().unwrap_or("");
    if field_now(case, field, old, new) == FieldNow::Old {
        return Ok(());
    }
    Err(match field {
        Field::Tags => format!(
            "case changed since the plan: tag {} is already {}",
            new.get(1..).unwrap_or(""),
            if new.starts_with('+') {
                "there"
            } else {
                "gone"
            }
        ),
        _ => format!(
            "case changed since the plan: {field} was {old:?} when planned, now {:?}",
            current(case, field, new)
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(field: Field, old: &str, new: &str, skipped: Option<&str>) -> Decision {
        Decision {
            rule: "r".into(),
            field,
            old: Some(old.into()),
            new: Some(new.into()),
            reason: "why".into(),
            skipped: skipped.map(str::to_string),
        }
    }

    fn plans() -> Vec<CasePlan> {
        let guard = "blast-radius guard: rule wanted to change 9 of 10 cases (limit 50%)";
        vec![
            CasePlan {
                case_id: "c1".into(),
                ticket_id: Some(1),
                decisions: vec![
                    decision(Field::Priority, "Low", "High", None),
                    decision(Field::Status, "New", "Closed", Some(guard)),
                    decision(Field::Assignee, "a", "b", Some("no-op")),
                ],
                tenant: None,
            },
            CasePlan {
                case_id: "c2".into(),
                ticket_id: None,
                decisions: vec![decision(Field::Priority, "Low", "Low", Some("no-op"))],
                tenant: None,
            },
        ]
    }

    /// The plan of [`plans`] for `url`, made `now`, valid an hour.
    fn plan_file(url: &str, now: chrono::DateTime<chrono::Utc>) -> PlanFile {
        let made = Made {
            plan_id: "plan-1".into(),
            pass_id: "p1",
            server_url: url,
            fingerprint: "f",
            now,
            valid_for: chrono::Duration::hours(1),
        };
        PlanFile::of(&plans(), made, &Names::default())
    }

    fn case(priority: &str) -> Case {
        Case::from_value(serde_json::json!({"_id": "c1", "priority": priority, "status": "New"}))
            .unwrap()
    }

    #[test]
    fn a_plan_keeps_planned_and_halted_changes_only() {
        let plan = plan_file("https://x", chrono::Utc::now());
        assert_eq!(plan.cases.len(), 1);
        let halted: Vec<bool> = plan.cases[0].changes.iter().map(|c| c.halted).collect();
        assert_eq!(halted, [false, true]);
        assert_eq!((plan.pending(true), plan.pending(false)), (2, 1));
        assert!(any_pending(&plans()));
        assert!(!any_pending(&plans()[1..]));
    }

    #[test]
    fn a_plan_names_its_server_expiry_and_rules() {
        let now = chrono::Utc::now();
        let plan = plan_file("https://X/", now);
        assert!(plan.is_for("https://x"));
        assert!(!plan.is_for("https://y"));
        assert!(!plan.expired(now).unwrap());
        assert!(plan.expired(now + chrono::Duration::hours(2)).unwrap());
        assert_eq!(plan.rules(), ["r"]);
    }

    #[test]
    fn the_digest_is_of_the_files_bytes() {
        let plan = plan_file("https://x", chrono::Utc::now());
        let (text, digest) = plan.to_text().unwrap();
        let (read, again) = PlanFile::from_bytes(text.as_bytes()).unwrap();
        assert_eq!((read.plan_id, again), (plan.plan_id, digest.clone()));
        let edited = text.replace("High", "Critical");
        assert_ne!(PlanFile::from_bytes(edited.as_bytes()).unwrap().1, digest);
        assert!(matches!(
            PlanFile::from_bytes(b"{}"),
            Err(PlanFileError::NotAPlan(_))
        ));
    }

    #[test]
    fn a_change_whose_case_moved_on_is_skipped_and_a_halted_one_waits() {
        let plan = plan_file("https://x", chrono::Utc::now());
        let planned = &plan.cases[0];
        let now = planned.against(&case("Low"), false, "id").unwrap();
        assert!(now.decisions[0].is_planned());
        assert_eq!(now.decisions[0].reason, "why [plan id]");
        assert!(
            now.decisions[1]
                .skipped
                .as_deref()
                .unwrap()
                .starts_with("halted")
        );
        let with_halted = planned.against(&case("Low"), true, "id").unwrap();
        assert!(with_halted.decisions[1].is_planned());
        let moved = planned.against(&case("Medium"), false, "id").unwrap();
        assert_eq!(
            moved.decisions[0].skipped.as_deref(),
            Some("case changed since the plan: priority was \"Low\" when planned, now \"Medium\"")
        );
    }

    #[test]
    fn an_unknown_field_is_refused() {
        let planned = PlannedCase {
            case_id: "c1".into(),
            ticket_id: None,
            tenant: None,
            tenant_name: None,
            changes: vec![PlannedChange {
                rule: "r".into(),
                field: "colour".into(),
                old: None,
                new: None,
                reason: String::new(),
                halted: false,
                old_email: None,
                new_email: None,
            }],
        };
        let e = planned.against(&case("Low"), false, "id").unwrap_err();
        assert_eq!(
            e.to_string(),
            "case c1: unknown field \"colour\" in the plan"
        );
    }
}
