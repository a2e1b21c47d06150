//! Settling changes whose outcome is not known: `planned` rows a dead process left, and
//! `unknown` rows whose answer was lost. Reads each case back (a comment: the case's
//! comments) once the server can no longer be applying the request, and records what it
//! shows; what it still cannot tell stays open, and is never re-sent while open.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;

use super::PassContext;
use super::comment::{change_summary, comment_texts, comment_trailer, rule_comment};
use super::send::{in_doubt, overridden};
use crate::audit::{AuditError, Lease, NewEvent, Outcome, Unsettled, row};
use crate::plan::{self, Decision, Field, FieldNow};
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
        .filter(|r| r.row.field == Field::Comment.as_str() || r.row.field == row::SUMMARY)
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
        let (mut events, mut to_post) = (Vec::new(), Vec::new());
        while let Some(r) = pending.next_if(|r| cases.contains_key(&r.row.case_id)) {
            let (outcome, error) = if r.row.field == row::SUMMARY {
                match settle_summary(&r, &comments[&r.row.case_id], now, window) {
                    Summary::Settled(outcome, error) => (Some(outcome), error),
                    Summary::Open => (None, None),
                    Summary::Post => {
                        to_post.push(r);
                        continue;
                    }
                }
            } else {
                settle(&r, &cases, &comments, now, window)
            };
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
        // After the batch's changes are settled: a summary sums up those applied.
        let mut posted = Vec::new();
        for r in &to_post {
            let event = post_summary(ctx, r).await?;
            match event.outcome {
                Outcome::Applied => summary.applied += 1,
                Outcome::Skipped => summary.skipped += 1,
                Outcome::Failed => summary.failed += 1,
                _ => summary.unknown += 1,
            }
            posted.push(event);
        }
        ctx.audit.append(&posted).await?;
    }
    Ok((summary, left))
}

/// What the case's comments say of a summary comment's row.
enum Summary {
    Settled(Outcome, Option<String>),
    /// Its post may still land: looked at again later.
    Open,
    /// Not on the case, and its post (if any) can no longer land: posted now.
    Post,
}

/// A summary comment is on the case when one of its comments ends with the pass's
/// trailer (a pass posts one comment per case).
fn settle_summary(
    r: &Unsettled,
    comments: &Result<Vec<String>, String>,
    now: chrono::DateTime<chrono::Utc>,
    window: Duration,
) -> Summary {
    let trailer = comment_trailer(&r.row.run_id);
    match comments {
        Ok(texts) if texts.iter().any(|c| c.ends_with(&trailer)) => {
            Summary::Settled(Outcome::Applied, None)
        }
        Ok(_) if may_still_land(r, now, window) => Summary::Open,
        Ok(_) => Summary::Post,
        Err(e) if r.last_outcome.is_none() => Summary::Settled(
            Outcome::Unknown,
            Some(format!("cannot read the case's comments: {e}")),
        ),
        Err(_) => Summary::Open,
    }
}

/// Posts the summary comment an interrupted pass meant to post: the changes of that pass
/// to the case that are applied, with its trailer; skipped when none is.
async fn post_summary(ctx: &PassContext, r: &Unsettled) -> Result<NewEvent, AuditError> {
    let (run_id, case_id) = (&r.row.run_id, &r.row.case_id);
    let applied = ctx.audit.applied_in_pass(run_id, case_id).await?;
    let changes: Vec<Decision> = (applied.into_iter())
        .filter_map(|a| {
            let field = Field::parse(&a.field).filter(|f| *f != Field::Comment)?;
            Some(Decision {
                rule: a.rule,
                field,
                old: a.old,
                new: a.new,
                reason: a.reason,
                skipped: None,
            })
        })
        .collect();
    if changes.is_empty() {
        let why = "not posted: none of the pass's changes to the case was applied";
        return Ok(row::reconciled(r, Outcome::Skipped, Some(why.into())));
    }
    let body = format!(
        "{}\n\n{}",
        change_summary(&changes),
        comment_trailer(run_id)
    );
    let (outcome, error) = match ctx.writer().add_comment(case_id, &body).await {
        Ok(()) => (Outcome::Applied, None),
        Err(e) if in_doubt(&e) => (Outcome::Unknown, Some(e.to_string())),
        Err(e) => (Outcome::Failed, Some(e.to_string())),
    };
    Ok(row::summary_posted_later(r, outcome, error))
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
    let may_still_land = may_still_land(r, now, window);
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

/// A change in doubt (`unknown`: no answer, or a gateway's 5xx) may still be applied by the
/// server until `window` after its send; a dead process's rows are read only after it has
/// (see `reconcile`).
fn may_still_land(r: &Unsettled, now: chrono::DateTime<chrono::Utc>, window: Duration) -> bool {
    r.last_at
        .as_deref()
        .and_then(parse)
        .is_some_and(|at| now < at + window)
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
