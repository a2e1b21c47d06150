//! One case's update and comment: sent, and each planned decision's outcome worked out
//! from the answer. An answer that proves nothing (5xx, timeout, reset, cut short) is
//! settled by reading the case, never by sending again.

use tracing::Instrument;

use super::comment::{change_summary, comment_texts, comment_trailer, rule_comment};
use crate::audit::Outcome;
use crate::plan::{self, CasePlan, Field, FieldNow};
use crate::stellar::{ApiError, Case, Client};

/// Why a planned decision was not applied, and whether that is a failure or a skip.
#[derive(Debug, Clone)]
pub(super) struct NotApplied {
    pub why: String,
    pub status: Option<u16>,
    pub outcome: Outcome,
    /// The server refused the configured API flavour: nothing more is sent this pass.
    pub halts: bool,
}

impl NotApplied {
    pub fn failed(why: impl Into<String>, status: Option<u16>) -> NotApplied {
        NotApplied {
            why: why.into(),
            status,
            outcome: Outcome::Failed,
            halts: false,
        }
    }

    /// A change the server may or may not have made: settled by reading it back later.
    pub fn unknown(why: impl Into<String>) -> NotApplied {
        NotApplied {
            why: why.into(),
            status: None,
            outcome: Outcome::Unknown,
            halts: false,
        }
    }

    /// A change the server was never asked to make, for a reason of configuration.
    pub fn skipped(why: impl Into<String>) -> NotApplied {
        NotApplied {
            why: why.into(),
            status: None,
            outcome: Outcome::Skipped,
            halts: false,
        }
    }
}

/// Applied (with how it is known, when the answer did not prove it), or why not.
pub(super) type DecisionResult = Result<Option<String>, NotApplied>;

/// What an unproven change waits for before it may be sent again.
const IN_DOUBT: &str = "settled by a read at the start of the next pass, and sent again only once stellar.settle_after_secs have passed since this send";

/// What sending one case came to.
#[derive(Debug, Default)]
pub(super) struct Sent {
    /// The outcome of each planned decision, by its place in the plan.
    pub decisions: Vec<(usize, DecisionResult)>,
    /// The summary comment's, when `comment_changes` asked for one and a field was sent.
    pub summary: Option<DecisionResult>,
    /// The case as the server last showed it (the update's answer or a read), for the mirror.
    pub latest: Option<Case>,
}

/// Sends one case's update, then its comment (the summary of the changes applied, when
/// `comment_changes`, and the rules' comments, in one post).
pub(super) async fn apply_case(
    client: &Client,
    plan: &CasePlan,
    comment_changes: bool,
    run_id: &str,
) -> Sent {
    let span = tracing::info_span!("case", case_id = %plan.case_id);
    async {
        let planned = (0..plan.decisions.len()).filter(|&i| plan.decisions[i].is_planned());
        let (comments, fields): (Vec<usize>, Vec<usize>) =
            planned.partition(|&i| plan.decisions[i].field == Field::Comment);
        let (updated, latest) = match plan.body() {
            Some(body) => update(client, plan, &fields, &body).await,
            None => (Vec::new(), None),
        };
        let applied: Vec<usize> = (fields.iter().zip(&updated))
            .filter(|(_, r)| r.is_ok())
            .map(|(&i, _)| i)
            .collect();
        let unsent = (!fields.is_empty() && applied.is_empty())
            .then(|| updated.iter().find_map(|r| r.clone().err()))
            .flatten();
        let mut out = Sent {
            decisions: fields.iter().copied().zip(updated).collect(),
            summary: None,
            latest,
        };
        let mut text = Vec::new();
        if comment_changes && !applied.is_empty() {
            text.push(change_summary(applied.iter().map(|&i| &plan.decisions[i])));
        }
        for &i in &comments {
            let d = &plan.decisions[i];
            text.push(rule_comment(&d.rule, d.new.as_deref()));
        }
        let posted = match unsent {
            // Not sent: the changes it explains did not take (or are not known to).
            Some(n) => {
                let why = "not sent: the case update did not succeed";
                Err(match n.outcome {
                    Outcome::Failed => NotApplied::failed(why, None),
                    _ => NotApplied::skipped(why),
                })
            }
            None if text.is_empty() => return out,
            None => post_comment(client, plan, text, run_id).await,
        };
        let decisions = comments.iter().map(|&i| (i, posted.clone()));
        out.decisions.extend(decisions);
        out.summary = (comment_changes && !fields.is_empty()).then_some(posted);
        out
    }
    .instrument(span)
    .await
}

/// Sends the update and works out each field's outcome from the answer, or, when the answer
/// proves nothing, from a read of the case; with the case as the server last showed it.
async fn update(
    client: &Client,
    plan: &CasePlan,
    fields: &[usize],
    body: &serde_json::Value,
) -> (Vec<DecisionResult>, Option<Case>) {
    let (what, in_flight, status) = match client.update_case(&plan.case_id, body).await {
        Ok(Ok(case)) if unheld_fields(&case, plan).is_empty() => {
            return (fields.iter().map(|_| Ok(None)).collect(), Some(case));
        }
        Ok(Ok(_)) => (
            "the server accepted the update but its answer does not hold every change".into(),
            false,
            None,
        ),
        Ok(Err(_)) => (
            "the server's answer to the update is not a case".into(),
            false,
            None,
        ),
        Err(e) if in_doubt(&e) => (e.to_string(), true, e.http_status()),
        Err(e) => return (fields.iter().map(|_| Err(failure(&e))).collect(), None),
    };
    let (results, read) = settle_by_read(client, plan, fields, &what, in_flight).await;
    let results = results
        .into_iter()
        .map(|r| r.map_err(|n| NotApplied { status, ..n }))
        .collect();
    (results, read)
}

/// An answer after which the server may have applied the update, or may still: no answer
/// (timeout, reset), one cut short or not JSON, or a 5xx (a gateway's, after the server
/// applied it). 429 and the other statuses mean it was not applied.
pub(super) fn in_doubt(e: &ApiError) -> bool {
    match e {
        ApiError::Transport { .. } | ApiError::BadResponse { .. } => true,
        other => other.http_status().is_some_and(|s| s >= 500),
    }
}

/// After an update whose answer does not prove it (`what`), reads the case: a field holding
/// the new value is applied (confirmed by read); one holding a third value was changed by
/// someone else, and is left alone; one still holding the old value failed if the server
/// answered (`in_flight` false), else is unknown until a later read settles it.
async fn settle_by_read(
    client: &Client,
    plan: &CasePlan,
    fields: &[usize],
    what: &str,
    in_flight: bool,
) -> (Vec<DecisionResult>, Option<Case>) {
    let case = match client.get_case(&plan.case_id).await {
        Ok(case) => case,
        Err(e) => {
            let why = format!("{what}; reading the case back failed too ({e}): {IN_DOUBT}");
            let results = fields
                .iter()
                .map(|_| Err(NotApplied::unknown(why.clone())))
                .collect();
            return (results, None);
        }
    };
    let results = fields
        .iter()
        .map(|&i| {
            let d = &plan.decisions[i];
            match d.now_in(&case) {
                FieldNow::New => {
                    tracing::info!(error = %what, field = %d.field, "the update's answer was no proof, but reading the case back shows it was applied");
                    Ok(Some(format!("confirmed by read: {what}")))
                }
                FieldNow::Other(now) => {
                    let why = overridden(d.field, d.old.as_deref(), &now);
                    Err(NotApplied::skipped(why))
                }
                FieldNow::Old if in_flight => Err(NotApplied::unknown(format!(
                    "{what}; the case does not hold it yet and the server may still apply the request: {IN_DOUBT}"
                ))),
                FieldNow::Old => Err(NotApplied::failed(
                    format!("{what}; reading the case back shows it was not applied"),
                    None,
                )),
            }
        })
        .collect();
    (results, Some(case))
}

/// Why a change found a third value in its field is left alone.
pub(super) fn overridden(field: Field, old: Option<&str>, now: &str) -> String {
    format!(
        "overridden: {field} is now {now:?}, not {:?} as planned on: someone else changed it; left alone",
        old.unwrap_or("")
    )
}

/// Posts the case's comment: `text`'s parts and the pass's trailer.
async fn post_comment(
    client: &Client,
    plan: &CasePlan,
    mut text: Vec<String>,
    run_id: &str,
) -> DecisionResult {
    text.push(comment_trailer(run_id));
    let body = text.join("\n\n");
    // A comment posted twice is a duplicate, so it is never re-sent; whether a lost
    // answer's comment landed is read from the case's comments (the trailer makes it unique).
    let posted = match client.add_comment(&plan.case_id, &body).await {
        Ok(()) => Ok(None),
        Err(e) if in_doubt(&e) => match comment_texts(client, &plan.case_id).await {
            Ok(texts) if texts.contains(&body) => {
                tracing::info!(error = %e, "the comment's answer was lost, but the case's comments show it was posted");
                Ok(Some(format!("confirmed by read: {e}")))
            }
            _ => Err(NotApplied::unknown(format!(
                "{e}; the comment is not on the case yet and the server may still post it: {IN_DOUBT}"
            ))),
        },
        Err(e) => Err(failure(&e)),
    };
    if let Err(n) = &posted {
        tracing::warn!(error = %n.why, "the case was updated but its explanatory comment could not be posted");
    }
    posted
}

/// The fields of the plan's changes that `case` does not hold.
fn unheld_fields(case: &Case, plan: &CasePlan) -> Vec<Field> {
    plan.field_changes()
        .filter(|d| !plan::case_holds(case, d))
        .map(|d| d.field)
        .collect()
}

/// A request that went wrong; a call refused for the configured API flavour, or held back
/// by the fence, was never taken by the server, and is recorded as skipped.
fn failure(e: &ApiError) -> NotApplied {
    match e {
        ApiError::WrongFlavor { .. } => NotApplied {
            halts: true,
            ..NotApplied::skipped(e.to_string())
        },
        ApiError::Fenced { .. } => NotApplied::skipped(e.to_string()),
        _ => NotApplied::failed(e.to_string(), e.http_status()),
    }
}
