//! The constructors of audit rows: a decision as planned, its outcome, an outcome read
//! back later, and the notes a pass writes about a rule or a plan file. Rows are appended by
//! `events`; the rest of casewarden builds them only through these (tests build raw rows to
//! set up a log as a crash or an older version left it).

use super::{Outcome, PassRow, Unsettled};
use crate::plan::{CasePlan, Decision};

/// What a row is about: a case, or nothing case-shaped (a pass's note about a rule), or a
/// plan file (its id stands where a case id would).
#[derive(Debug, Clone, PartialEq)]
pub enum CaseRef {
    Case {
        id: String,
        ticket_id: Option<i64>,
        /// The customer (`cust_id`) whose case it is, when the case names one.
        tenant: Option<String>,
    },
    Plan(String),
    NoCase,
}

/// The `case_id` stored for a row about no case.
const NO_CASE: &str = "-";

impl CaseRef {
    fn of(plan: &CasePlan) -> CaseRef {
        CaseRef::Case {
            id: plan.case_id.clone(),
            ticket_id: plan.ticket_id,
            tenant: plan.tenant.clone(),
        }
    }

    pub fn id(&self) -> &str {
        match self {
            CaseRef::Case { id, .. } | CaseRef::Plan(id) => id,
            CaseRef::NoCase => NO_CASE,
        }
    }

    pub fn ticket_id(&self) -> Option<i64> {
        match self {
            CaseRef::Case { ticket_id, .. } => *ticket_id,
            _ => None,
        }
    }

    pub fn tenant(&self) -> Option<&str> {
        match self {
            CaseRef::Case { tenant, .. } => tenant.as_deref(),
            _ => None,
        }
    }
}

/// What a pass's note row is about, stored in the `field` column beside the case fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Note {
    /// A rule's errors or its circuit breaker.
    Rule,
    /// A plan file written for review.
    Plan,
    /// A listed case that could not be read.
    Case,
    /// casewarden's comment summing up its changes to a case.
    Summary,
    /// A pass's start and end, chained (the end carries the sealed pass row's hash).
    Pass,
    /// The chain keyed (or its key changed) from this row on.
    Chain,
}

impl Note {
    fn as_str(self) -> &'static str {
        match self {
            Note::Rule => "rule",
            Note::Plan => "plan",
            Note::Case => "case",
            Note::Summary => SUMMARY,
            Note::Pass => PASS,
            Note::Chain => super::key::CHAIN,
        }
    }
}

/// The rule name a written plan's row carries.
const PLAN_ROW: &str = "plan";
/// The rule name of a note about a listed case that could not be read.
const LISTING_ROW: &str = "listing";
/// The field of the rows of casewarden's summary comment on a case (not a case field: not
/// counted among the changes), and their rule name.
pub const SUMMARY: &str = "summary";
/// The field of the chained rows of a pass's start and end (not a case field).
pub const PASS: &str = "pass";
const SUMMARY_ROW: &str = "casewarden";

/// One row to append.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub run_id: String,
    pub rule: String,
    pub rule_hash: String,
    pub case: CaseRef,
    pub field: String,
    pub old: Option<String>,
    pub new: Option<String>,
    pub reason: String,
    pub dry_run: bool,
    pub outcome: Outcome,
    pub error: Option<String>,
    pub http_status: Option<i64>,
    /// For an outcome row: the `seq` of the planned row it settles.
    pub planned_seq: Option<i64>,
}

/// How a sent (or not sent) decision ended: what the outcome row says.
#[derive(Debug, Clone, PartialEq)]
pub struct Settled {
    pub outcome: Outcome,
    pub error: Option<String>,
    pub http_status: Option<u16>,
    /// How an outcome the answer did not prove is known (`confirmed by read: ...`): the
    /// row's reason.
    pub note: Option<String>,
}

impl Settled {
    pub fn applied(note: Option<String>) -> Settled {
        Settled {
            outcome: Outcome::Applied,
            error: None,
            http_status: None,
            note,
        }
    }
}

/// A rule's decision about a case as the pass recorded it before sending: `planned`, or
/// `skipped` with why (conflict, guard, budget, override...) after its reason.
pub fn decision(
    run_id: &str,
    rule_hash: &str,
    plan: &CasePlan,
    d: &Decision,
    dry_run: bool,
) -> NewEvent {
    let (outcome, reason) = match &d.skipped {
        Some(why) => (
            Outcome::Skipped,
            format!("{} [skipped: {why}]", d.reason)
                .trim_start()
                .to_string(),
        ),
        None => (Outcome::Planned, d.reason.clone()),
    };
    NewEvent {
        reason,
        dry_run,
        outcome,
        ..change(run_id, rule_hash, plan, d)
    }
}

/// What became of a planned decision when its case was sent (or held back); `planned_seq`
/// is the row it settles.
pub fn outcome(
    run_id: &str,
    rule_hash: &str,
    plan: &CasePlan,
    d: &Decision,
    planned_seq: Option<i64>,
    settled: Settled,
) -> NewEvent {
    NewEvent {
        outcome: settled.outcome,
        error: settled.error,
        http_status: settled.http_status.map(i64::from),
        planned_seq,
        reason: settled.note.unwrap_or_default(),
        ..change(run_id, rule_hash, plan, d)
    }
}

/// The outcome of a row left open (a crash, a lost answer), read back from the server.
pub fn reconciled(open: &Unsettled, outcome: Outcome, error: Option<String>) -> NewEvent {
    let reason = match outcome {
        Outcome::Applied => "confirmed by read: reconciled from the case as the server holds it",
        _ => "reconciled: read back from the server",
    };
    settled_later(open, outcome, error, reason)
}

/// A summary comment an interrupted pass left unposted, posted (or tried) after reading
/// that the case does not hold it.
pub fn summary_posted_later(open: &Unsettled, outcome: Outcome, error: Option<String>) -> NewEvent {
    let reason =
        "posted after the pass that meant to was interrupted: the case's comments did not hold it";
    settled_later(open, outcome, error, reason)
}

/// The outcome of row `open`, found after its pass: `reason` says how.
fn settled_later(
    open: &Unsettled,
    outcome: Outcome,
    error: Option<String>,
    reason: &str,
) -> NewEvent {
    let row = &open.row;
    NewEvent {
        run_id: row.run_id.clone(),
        rule: row.rule.clone(),
        rule_hash: row.rule_hash.clone(),
        case: CaseRef::Case {
            id: row.case_id.clone(),
            ticket_id: row.ticket_id,
            tenant: row.tenant.clone(),
        },
        field: row.field.clone(),
        old: row.old.clone(),
        new: row.new.clone(),
        reason: reason.into(),
        dry_run: false,
        outcome,
        error,
        http_status: None,
        planned_seq: Some(row.seq),
    }
}

/// A rule that failed on `cases` case(s) this pass (old: the count, error: the first
/// failure), so reports count rule errors from the chained log.
pub fn rule_errors(
    run_id: &str,
    rule: &str,
    rule_hash: &str,
    cases: usize,
    first_error: Option<String>,
    dry_run: bool,
) -> NewEvent {
    NewEvent {
        old: Some(cases.to_string()),
        new: Some("errors".into()),
        error: first_error,
        dry_run,
        outcome: Outcome::Failed,
        ..note(
            run_id,
            rule,
            rule_hash,
            Note::Rule,
            format!("the rule failed on {cases} case(s) this pass"),
        )
    }
}

/// A rule the blast-radius guard halted this pass (for one customer when `tenant` names
/// it): one row per pass, with why and how many changes it wanted (`old`); its held-back
/// changes are recorded once, not every pass.
pub fn rule_halted(
    run_id: &str,
    rule: &str,
    rule_hash: &str,
    tenant: Option<&str>,
    wanted: usize,
    why: &str,
    dry_run: bool,
) -> NewEvent {
    let case = match tenant {
        Some(t) => CaseRef::Case {
            id: NO_CASE.to_string(),
            ticket_id: None,
            tenant: Some(t.to_string()),
        },
        None => CaseRef::NoCase,
    };
    NewEvent {
        case,
        old: Some(wanted.to_string()),
        new: Some(HALTED_ROW.into()),
        dry_run,
        outcome: Outcome::Skipped,
        ..note(run_id, rule, rule_hash, Note::Rule, why.to_string())
    }
}

/// The `new` of a rule's note that the guard halted it.
pub const HALTED_ROW: &str = "halted";

/// Another automation set back what `rule` applied to a case (`what`: `field=value by
/// USER`); `outcome`: `yield` or `fight`. Written once per case, rule, value and user.
pub fn clash(
    run_id: &str,
    rule: &str,
    rule_hash: &str,
    case: CaseRef,
    what: String,
    outcome: &str,
    reason: String,
) -> NewEvent {
    NewEvent {
        case,
        old: Some(what),
        new: Some(outcome.to_string()),
        outcome: Outcome::Skipped,
        ..note(run_id, rule, rule_hash, Note::Rule, reason)
    }
}

/// A rule the circuit breaker disabled after failing on every case `passes` passes running.
pub fn rule_disabled(
    run_id: &str,
    rule: &str,
    rule_hash: &str,
    passes: u32,
    file: &std::path::Path,
) -> NewEvent {
    NewEvent {
        new: Some("disabled".into()),
        outcome: Outcome::Skipped,
        ..note(
            run_id,
            rule,
            rule_hash,
            Note::Rule,
            format!(
                "circuit breaker: failed on every case it saw in {passes} consecutive passes; disabled until {} changes",
                file.display()
            ),
        )
    }
}

/// A pass began: chained, so a pass row nobody recorded starting is a forgery and a
/// deleted pass row leaves this one behind.
pub fn pass_started(id: &str, trigger: &str, fingerprint: &str, dry_run: bool) -> NewEvent {
    NewEvent {
        new: Some("started".into()),
        dry_run,
        outcome: Outcome::Skipped,
        ..note(
            id,
            SUMMARY_ROW,
            "",
            Note::Pass,
            format!("pass started by {trigger} (rules fingerprint {fingerprint})"),
        )
    }
}

/// A pass ended: its sealed row's hash (in `old`) and totals, chained.
pub fn pass_finished(p: &PassRow) -> NewEvent {
    let t = &p.totals;
    NewEvent {
        old: p.hash.clone(),
        new: Some("finished".into()),
        dry_run: p.dry_run,
        outcome: Outcome::Skipped,
        ..note(
            &p.id,
            SUMMARY_ROW,
            "",
            Note::Pass,
            format!(
                "pass finished {}: {} case(s) seen, planned {}, applied {}, failed {}, skipped {}",
                t.status, t.cases_seen, t.planned, t.applied, t.failed, t.skipped
            ),
        )
    }
}

/// From here on the chain is keyed with the key whose id is `id` (`audit.chain_key_file`);
/// `before`: the key it replaces, on a rotation.
pub fn chain_keyed(id: &str, before: Option<&str>) -> NewEvent {
    let reason = match before {
        Some(old) => format!(
            "chain key changed from key id {old} to key id {id}: rows from this one on are HMAC-SHA256 under the new key"
        ),
        None => format!(
            "the chain is keyed from this row on: each row's hash is an HMAC-SHA256 under the key with id {id} (audit.chain_key_file)"
        ),
    };
    NewEvent {
        old: Some(id.to_string()),
        new: Some(super::key::KEYED.into()),
        outcome: Outcome::Skipped,
        ..note("-", SUMMARY_ROW, "", Note::Chain, reason)
    }
}

/// A plan file written for review, by its id and the SHA-256 of its bytes: `apply` takes
/// only the very file whose digest the chained log holds.
pub fn plan_written(run_id: &str, plan_id: &str, digest: String, reason: String) -> NewEvent {
    NewEvent {
        case: CaseRef::Plan(plan_id.to_string()),
        new: Some(digest),
        dry_run: true,
        ..note(run_id, PLAN_ROW, "", Note::Plan, reason)
    }
}

/// The row of decision `d` on `plan`, planned, with no reason yet.
fn change(run_id: &str, rule_hash: &str, plan: &CasePlan, d: &Decision) -> NewEvent {
    NewEvent {
        run_id: run_id.to_string(),
        rule: d.rule.clone(),
        rule_hash: rule_hash.to_string(),
        case: CaseRef::of(plan),
        field: d.field.to_string(),
        old: d.old.clone(),
        new: d.new.clone(),
        reason: String::new(),
        dry_run: false,
        outcome: Outcome::Planned,
        error: None,
        http_status: None,
        planned_seq: None,
    }
}

/// A listed case that could not be read (`id`, when it could be found), skipped while the
/// rest of its page is decided.
pub fn unreadable_case(run_id: &str, id: Option<&str>, problem: &str, dry_run: bool) -> NewEvent {
    let reason = format!("the listed case cannot be read, so no rule saw it: {problem}");
    NewEvent {
        case: id.map_or(CaseRef::NoCase, |id| CaseRef::Case {
            id: id.to_string(),
            ticket_id: None,
            tenant: None,
        }),
        outcome: Outcome::Skipped,
        dry_run,
        ..note(run_id, LISTING_ROW, "", Note::Case, reason)
    }
}

/// The intent to post casewarden's comment summing up the changes it applies to the case
/// of `plan`, written ahead like the changes; settled by [`summary_outcome`] (or, after a
/// crash, by looking for it among the case's comments and posting it only if absent).
pub fn summary_intent(run_id: &str, plan: &CasePlan) -> NewEvent {
    let reason = "a comment telling the analyst what casewarden changed on the case, and why";
    NewEvent {
        case: CaseRef::of(plan),
        ..note(run_id, SUMMARY_ROW, "", Note::Summary, reason.into())
    }
}

/// What became of the summary comment whose intent is row `planned_seq`.
pub fn summary_outcome(
    run_id: &str,
    plan: &CasePlan,
    planned_seq: i64,
    settled: Settled,
) -> NewEvent {
    NewEvent {
        case: CaseRef::of(plan),
        outcome: settled.outcome,
        error: settled.error,
        http_status: settled.http_status.map(i64::from),
        planned_seq: Some(planned_seq),
        ..note(
            run_id,
            SUMMARY_ROW,
            "",
            Note::Summary,
            settled.note.unwrap_or_default(),
        )
    }
}

/// A pass's note about a rule or a plan, about no case.
fn note(run_id: &str, rule: &str, rule_hash: &str, about: Note, reason: String) -> NewEvent {
    NewEvent {
        run_id: run_id.to_string(),
        rule: rule.to_string(),
        rule_hash: rule_hash.to_string(),
        case: CaseRef::NoCase,
        field: about.as_str().to_string(),
        old: None,
        new: None,
        reason,
        dry_run: false,
        outcome: Outcome::Planned,
        error: None,
        http_status: None,
        planned_seq: None,
    }
}
