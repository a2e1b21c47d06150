//! The reviewed plan (`once --dry-run --out PLAN.json`, `casewarden apply PLAN.json`):
//! every decision of a dry run with what a reviewer needs to trust it, and what `apply`
//! needs to refuse a stale or foreign one.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::Exit;
use crate::plan::{CasePlan, Decision, Field, current, holds};
use crate::stellar::Case;

fn digest(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// The skip note of a change the blast-radius guard held back (for the whole pass, or for
/// one customer).
pub(super) const HALTED: &str = "blast-radius guard";

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
    /// The plan of a dry-run pass: its planned changes and those the guard halted.
    pub fn of(
        plans: &[CasePlan],
        pass_id: &str,
        server_url: &str,
        fingerprint: &str,
        valid_for: chrono::Duration,
    ) -> PlanFile {
        let now = chrono::Utc::now();
        let cases = plans
            .iter()
            .filter_map(|p| {
                let changes: Vec<PlannedChange> = p
                    .decisions
                    .iter()
                    .filter_map(|d| {
                        let halted = d.skipped.as_deref().is_some_and(|s| s.contains(HALTED));
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
            plan_id: uuid::Uuid::new_v4().to_string(),
            pass_id: pass_id.to_string(),
            created_at: crate::time::timestamp(now),
            expires_at: crate::time::timestamp(now + valid_for),
            server_url: server_url.to_string(),
            rules_fingerprint: fingerprint.to_string(),
            cases,
        }
    }

    /// Writes the plan; returns the SHA-256 of the file, which `once` records in the audit
    /// log so `apply` can tell the reviewed file from an edited one.
    pub fn write(&self, path: &Path) -> Result<String, Exit> {
        let text = serde_json::to_string_pretty(self).map_err(Exit::config)? + "\n";
        std::fs::write(path, &text)
            .map_err(|e| Exit::config(format!("--out {}: {e}", path.display())))?;
        Ok(digest(text.as_bytes()))
    }

    /// The plan and the SHA-256 of its file.
    pub fn read(path: &Path) -> Result<(PlanFile, String), Exit> {
        let bytes =
            std::fs::read(path).map_err(|e| Exit::config(format!("{}: {e}", path.display())))?;
        let plan = serde_json::from_slice(&bytes).map_err(|e| {
            Exit::config(format!(
                "{}: not a plan written by `casewarden once --dry-run --out` ({e})",
                path.display()
            ))
        })?;
        Ok((plan, digest(&bytes)))
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
    ) -> Result<CasePlan, Exit> {
        let decisions = self
            .changes
            .iter()
            .map(|c| {
                let field = Field::parse(&c.field).ok_or_else(|| {
                    Exit::config(format!("case {}: unknown field {:?} in the plan", self.case_id, c.field))
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
            .collect::<Result<Vec<Decision>, Exit>>()?;
        let mut plan = CasePlan {
            case_id: self.case_id.clone(),
            ticket_id: self.ticket_id,
            decisions,
            // Checked just now, change by change.
            stamp: None,
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
    let fine = match field {
        Field::Comment => true,
        // A tag change still is one while the case does not hold it yet.
        Field::Tags => !holds(case, field, new),
        _ => holds(case, field, old),
    };
    if fine {
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
