//! Settling changes whose outcome is not known: `planned` rows a dead process left, and
//! `unknown` rows whose answer was lost. Reads each case back (a comment: the case's
//! comments) once the server can no longer be applying the request, and records what it
//! shows; what it still cannot tell stays open, and is never re-sent while open.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;

use super::PassContext;
use super::comment::{comment_texts, comment_trailer, rule_comment};
use super::send::overridden;
use crate::audit::{AuditError, Lease, Outcome, Unsettled, row};
use crate::plan::{self, Field, FieldNow};
use crate::stellar::Case;

/// Rows settled per audit transaction, so a process killed while reconciling keeps what
/// it had settled.
const BATCH: usize = 50;

/// A case read back: its id, the case, and its comments when a comment is to settle.
type ReadBack = (
    String,
    Result<Case, String>,
    Option<Result<Vec<String>, String>>,
);

/// What reconciliation found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reconciled {
    pub applied: usize,
    /// Interrupted before they took: never sent, or sent and not applied.
    pub skipped: usize,
    pub failed: usize,
    pub unknown: usize,
    /// Left open: the server may still apply them, or could not be asked.
    pub open: usize,
}

/// Settles what is not settled. Call it holding the one-writer claim, as the first pass of
/// its process: `previous` is the lease of a holder that died without releasing it.
pub async fn reconcile(
    ctx: &PassContext,
    previous: Option<&Lease>,
) -> Result<Reconciled, AuditError> {
    let rows = ctx.audit.unsettled().await?;
    if rows.is_empty() {
        ctx.audit.mark_interrupted_passes().await?;
        return Ok(Reconciled::default());
    }
    if rows.iter().any(|r| r.last_outcome.is_none()) {
        wait_for_dead_holder(ctx, previous).await;
    }
    let (summary, _) = settle_rows(ctx, rows).await?;
    // Sealed once their open changes are settled, so their totals count them.
    let interrupted = ctx.audit.mark_interrupted_passes().await?;
    tracing::warn!(
        interrupted_passes = interrupted,
        applied = summary.applied,
        not_applied = summary.skipped,
        failed = summary.failed,
        unknown = summary.unknown,
        still_open = summary.open,
        "reconciled changes left planned by an interrupted pass or answered by no one"
    );
    Ok(summary)
}

/// Settles the changes in doubt (`unknown`: sent, but the answer proved nothing) among
/// `rows` by reading their cases, before a pass plans anything for them; returns the rows
/// still open, which the pass does not plan again.
pub(super) async fn doubts(
    ctx: &PassContext,
    rows: Vec<Unsettled>,
) -> Result<Vec<Unsettled>, AuditError> {
    let (doubts, mut open): (Vec<Unsettled>, Vec<Unsettled>) = rows
        .into_iter()
        .partition(|r| r.last_outcome.as_deref() == Some(Outcome::Unknown.as_str()));
    if doubts.is_empty() {
        return Ok(open);
    }
    let (summary, mut left) = settle_rows(ctx, doubts).await?;
    tracing::info!(
        applied = summary.applied,
        overridden = summary.skipped,
        not_applied = summary.failed,
        still_open = summary.open,
        "settled changes in doubt by reading their cases"
    );
    open.append(&mut left);
    Ok(open)
}

/// Reads the cases of `rows` back and records what they show, a batch at a time; returns
/// the counts and the rows left open.
async fn settle_rows(
    ctx: &PassContext,
    rows: Vec<Unsettled>,
) -> Result<(Reconciled, Vec<Unsettled>), AuditError> {
    let mut summary = Reconciled::default();
    let window = ctx.settings.settle_after;
    let ids: Vec<String> = {
        let mut seen = HashSet::new();
        rows.iter()
            .filter(|r| seen.insert(r.row.case_id.as_str()))
            .map(|r| r.row.case_id.clone())
            .collect()
    };
    let with_comments: HashSet<String> = rows
        .iter()
        .filter(|r| r.row.field == Field::Comment.as_str())
        .map(|r| r.row.case_id.clone())
        .collect();
    let now = chrono::Utc::now();
    let mut pending = rows.into_iter().peekable();
    let mut left = Vec::new();
    let mut cases: HashMap<String, Result<Case, String>> = HashMap::new();
    let mut comments: HashMap<String, Result<Vec<String>, String>> = HashMap::new();
    for chunk in ids.chunks(BATCH) {
        let read = read_back(ctx, chunk, &with_comments).await;
        for (id, case, texts) in read {
            cases.insert(id.clone(), case);
            if let Some(t) = texts {
                comments.insert(id, t);
            }
        }
        let mut events = Vec::new();
        while let Some(r) = pending.next_if(|r| cases.contains_key(&r.row.case_id)) {
            let (outcome, error) = settle(&r, &cases, &comments, now, window);
            match outcome {
                Some(Outcome::Applied) => summary.applied += 1,
                Some(Outcome::Failed) => summary.failed += 1,
                Some(Outcome::Skipped) => summary.skipped += 1,
                Some(_) => summary.unknown += 1,
                None => summary.open += 1,
            }
            match outcome {
                Some(outcome) => events.push(row::reconciled(&r, outcome, error)),
                None => left.push(r),
            }
        }
        ctx.audit.append(&events).await?;
    }
    Ok((summary, left))
}

/// What the case read back says of one unsettled change; None: nothing new to record.
fn settle(
    r: &Unsettled,
    cases: &HashMap<String, Result<Case, String>>,
    comments: &HashMap<String, Result<Vec<String>, String>>,
    now: chrono::DateTime<chrono::Utc>,
    window: Duration,
) -> (Option<Outcome>, Option<String>) {
    let row = &r.row;
    // A change in doubt (`unknown`: no answer, or a gateway's 5xx) may still be applied by
    // the server until the window after its send has passed; a dead process's rows are
    // read only after it has (see `reconcile`).
    let may_still_land = r
        .last_at
        .as_deref()
        .and_then(parse)
        .is_some_and(|at| now < at + window);
    let first = r.last_outcome.is_none();
    let field = Field::parse(&row.field);
    let holds = match (&cases[&row.case_id], field) {
        (Err(e), _) => Err(format!("cannot read the case back: {e}")),
        (Ok(_), None) => Err(format!("not a field casewarden changes: {:?}", row.field)),
        (Ok(_), Some(Field::Comment)) => match &comments[&row.case_id] {
            Ok(texts) => {
                let line = rule_comment(&row.rule, row.new.as_deref());
                let trailer = comment_trailer(&row.run_id);
                Ok(texts
                    .iter()
                    .any(|c| c.contains(&line) && c.ends_with(&trailer)))
            }
            Err(e) => Err(format!("cannot read the case's comments: {e}")),
        },
        (Ok(case), Some(field)) => {
            let (old, new) = (row.old.as_deref(), row.new.as_deref());
            match plan::field_now(case, field, old.unwrap_or(""), new.unwrap_or("")) {
                FieldNow::New => Ok(true),
                FieldNow::Old => Ok(false),
                FieldNow::Other(now) => {
                    return (Some(Outcome::Skipped), Some(overridden(field, old, &now)));
                }
            }
        }
    };
    match holds {
        Ok(true) => (Some(Outcome::Applied), None),
        Ok(false) if may_still_land => (None, None),
        // Left planned by a process that stopped: most were never sent, and none took.
        // Not a failure (no alert): the next pass decides again, as after a clean stop.
        Ok(false) if first => (
            Some(Outcome::Skipped),
            Some(match field {
                Some(Field::Comment) => {
                    "interrupted: the comment is not on the case; the next pass decides again"
                }
                _ => {
                    "interrupted: the case does not hold the planned value; the next pass decides again"
                }
            }
            .into()),
        ),
        Ok(false) => (
            Some(Outcome::Failed),
            Some(
                "not applied: the case does not hold it, and the request can no longer land (stellar.settle_after_secs have passed); the next pass decides again"
                    .into(),
            ),
        ),
        Err(e) if first => (Some(Outcome::Unknown), Some(e)),
        Err(_) => (None, None),
    }
}

/// Waits until the requests of a holder that died or stalled (`previous`) can no longer
/// land: its lease's end (it sends nothing once its lease, by its own clock, has less left
/// than a request may take) plus the longest request.
async fn wait_for_dead_holder(ctx: &PassContext, previous: Option<&Lease>) {
    let Some(last) = previous.and_then(|p| parse(&p.heartbeat_at)) else {
        return;
    };
    let settled_at = last + ctx.audit.quiet_after_heartbeat() + ctx.settings.request_timeout;
    let wait = (settled_at - chrono::Utc::now())
        .to_std()
        .unwrap_or_default();
    if !wait.is_zero() {
        tracing::info!(
            wait_ms = wait.as_millis() as u64,
            holder = %previous.map(ToString::to_string).unwrap_or_default(),
            "waiting until the requests of an interrupted pass can no longer land"
        );
        tokio::time::sleep(wait).await;
    }
}

/// Reads back the cases of `ids` (and the comments of those in `with_comments`).
async fn read_back(
    ctx: &PassContext,
    ids: &[String],
    with_comments: &HashSet<String>,
) -> Vec<ReadBack> {
    futures::stream::iter(ids.iter().cloned())
        .map(|id| async {
            let case = ctx.client.get_case(&id).await.map_err(|e| e.to_string());
            let texts = match with_comments.contains(&id) {
                true => Some(
                    comment_texts(&ctx.client, &id)
                        .await
                        .map_err(|e| e.to_string()),
                ),
                false => None,
            };
            (id, case, texts)
        })
        .buffer_unordered(ctx.settings.max_in_flight.max(1))
        .collect()
        .await
}

fn parse(t: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(t)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}
