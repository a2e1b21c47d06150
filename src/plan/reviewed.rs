//! The reviewed plan (`once --dry-run --out PLAN.json`, `casewarden apply PLAN.json`):
//! every decision of a dry run with what a reviewer needs to trust it, and what `apply`
//! needs to refuse a stale or foreign one. Its text and digest are made here; the
//! commands read and write the file.

use serde::{Deserialize, Serialize};

use super::pass::HALTED;
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

/// Whether a dry run's plans hold a change a reviewer could apply: a planned one, or one
/// the guard halted.
pub fn any_pending(plans: &[CasePlan]) -> bool {
    plans
        .iter()
        .flat_map(|p| &p.decisions)
        .any(|d| d.is_planned() || is_halted(d))
}

#[derive(Debug, Serialize, Deserialize)]
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

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlannedCase {
    pub case_id: String,
    pub ticket_id: Option<i64>,
    pub changes: Vec<PlannedChange>,
}

#[derive(Debug, Serialize, Deserialize)]
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
}

impl PlanFile {
    /// The plan `plan_id` of a dry-run pass made `now`: its planned changes and those the
    /// guard halted.
    pub fn of(
        plans: &[CasePlan],
        plan_id: String,
        pass_id: &str,
        server_url: &str,
        fingerprint: &str,
        now: chrono::DateTime<chrono::Utc>,
        valid_for: chrono::Duration,
    ) -> PlanFile {
        let cases = plans
            .iter()
            .filter_map(|p| {
                let changes: Vec<PlannedChange> = p
                    .decisions
                    .iter()
                    .filter_map(|d| {
                        let halted = is_halted(d);
                        (d.is_planned() || halted).then(|| PlannedChange {
                            rule: d.rule.clone(),
                            field: d.field.to_string(),
                            old: d.old.clone(),
                            new: d.new.clone(),
                            reason: d.reason.clone(),
                            halted,
                        })
                    })
                    .collect();
                (!changes.is_empty()).then(|| PlannedCase {
                    case_id: p.case_id.clone(),
                    ticket_id: p.ticket_id,
                    changes,
                })
            })
            .collect();
        PlanFile {
            plan_id,
            pass_id: pass_id.to_string(),
            created_at: crate::time::timestamp(now),
            expires_at: crate::time::timestamp(now + valid_for),
            server_url: server_url.to_string(),
            rules_fingerprint: fingerprint.to_string(),
            cases,
        }
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
        let hour = chrono::Duration::hours(1);
        PlanFile::of(&plans(), "plan-1".into(), "p1", url, "f", now, hour)
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
            changes: vec![PlannedChange {
                rule: "r".into(),
                field: "colour".into(),
                old: None,
                new: None,
                reason: String::new(),
                halted: false,
            }],
        };
        let e = planned.against(&case("Low"), false, "id").unwrap_err();
        assert_eq!(
            e.to_string(),
            "case c1: unknown field \"colour\" in the plan"
        );
    }
}
