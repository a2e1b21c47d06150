//! One case's update and comment: sent, and each planned decision's outcome worked out
//! from the answer (a lost answer is read back, never re-sent).

use tracing::Instrument;

use super::comment::{change_summary, comment_texts, comment_trailer, rule_comment};
use crate::audit::Outcome;
use crate::plan::{self, CasePlan, Field};
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

pub(super) type DecisionResult = Result<(), NotApplied>;

/// Sends one case's update, then its comment; returns the outcome of every planned decision.
pub(super) async fn apply_case(
    client: &Client,
    plan: &CasePlan,
    comment_changes: bool,
    run_id: &str,
) -> Vec<(usize, DecisionResult)> {
    let span = tracing::info_span!("case", case_id = %plan.case_id);
    async {
        let planned = (0..plan.decisions.len()).filter(|&i| plan.decisions[i].is_planned());
        let (comments, fields): (Vec<usize>, Vec<usize>) =
            planned.partition(|&i| plan.decisions[i].field == Field::Comment);
        let update = match plan.body() {
            Some(body) => update(client, plan, &body).await,
            None => Ok(()),
        };
        let mut out: Vec<(usize, DecisionResult)> =
            fields.iter().map(|&i| (i, update.clone())).collect();
        let mut text = Vec::new();
        if update.is_ok() && comment_changes && !fields.is_empty() {
            text.push(change_summary(plan, &fields));
        }
        for &i in &comments {
            let d = &plan.decisions[i];
            text.push(rule_comment(&d.rule, d.new.as_deref()));
        }
        let posted = match &update {
            // Never sent, so known: failed with its update, or skipped.
            Err(n) => {
                let why = "not sent: the case update did not succeed";
                Err(match n.outcome {
                    Outcome::Failed => NotApplied::failed(why, None),
                    _ => NotApplied::skipped(why),
                })
            }
            Ok(()) if text.is_empty() => return out,
            Ok(()) => post_comment(client, plan, text, run_id).await,
        };
        out.extend(comments.iter().map(|&i| (i, posted.clone())));
        out
    }
    .instrument(span)
    .await
}

/// Sends the update and works out from the answer (or a read back) whether it took.
async fn update(client: &Client, plan: &CasePlan, body: &serde_json::Value) -> DecisionResult {
    match client.update_case(&plan.case_id, body).await {
        Ok(Ok(case)) => holds(&case, plan),
        // Only a case holding the planned values proves the update.
        Ok(Err(_)) => {
            let not_held = NotApplied::failed(
                "the server accepted the update but the case does not hold it",
                None,
            );
            let what = "the server's answer to the update is not a case";
            read_back(client, plan, what, not_held).await
        }
        // No answer: the request may still be applied, so a case without the
        // change is not settled yet.
        Err(e @ ApiError::Transport { .. }) => {
            let why = format!(
                "{e}; the case does not hold the change yet and the server may still apply it: settled before the next pass, never re-sent while open"
            );
            read_back(client, plan, &e.to_string(), NotApplied::unknown(why)).await
        }
        // A 2xx whose body is not JSON proves nothing either way.
        Err(e @ ApiError::BadResponse { .. }) => {
            let why = format!("{e}; the case does not hold the change");
            read_back(client, plan, &e.to_string(), NotApplied::failed(why, None)).await
        }
        Err(e) if e.http_status().is_some_and(|s| s >= 500) => {
            let answered = read_back(client, plan, &e.to_string(), failure(&e)).await;
            // The server answered: nothing of it can land later.
            answered.map_err(|n| NotApplied {
                status: n.status.or(e.http_status()),
                ..n
            })
        }
        Err(e) => Err(failure(&e)),
    }
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
    // A comment is not idempotent, so it is never re-sent; whether a lost answer's
    // comment landed is read from the case's comments (the trailer makes it unique).
    let posted = match client.add_comment(&plan.case_id, &body).await {
        Ok(()) => Ok(()),
        Err(e)
            if may_have_landed(&e)
                && comment_texts(client, &plan.case_id)
                    .await
                    .is_ok_and(|t| t.contains(&body)) =>
        {
            tracing::info!(error = %e, "the comment's answer was lost, but the case's comments show it was posted");
            Ok(())
        }
        Err(e) => Err(failure(&e)),
    };
    if let Err(n) = &posted {
        tracing::warn!(error = %n.why, "the case was updated but its explanatory comment could not be posted");
    }
    posted
}

/// An error after which the server may still have applied the comment: the request
/// went out but no (good) answer came back.
fn may_have_landed(e: &ApiError) -> bool {
    match e {
        ApiError::Transport { .. } => true,
        other => other.http_status().is_some_and(|s| s >= 500),
    }
}

/// After an update whose answer does not prove it (`what` went wrong), reads the case
/// back: applied if it holds every planned field, else `not_held`; `unknown` when it cannot
/// be read.
async fn read_back(
    client: &Client,
    plan: &CasePlan,
    what: &str,
    not_held: NotApplied,
) -> DecisionResult {
    match client.get_case(&plan.case_id).await {
        Ok(case) if unheld_fields(&case, plan).is_empty() => {
            tracing::info!(error = %what, "the update's answer was no proof, but reading the case back shows it was applied");
            Ok(())
        }
        Ok(_) => Err(not_held),
        Err(e) => Err(NotApplied::unknown(format!(
            "{what}; reading the case back failed too ({e}): settled before the next pass, never re-sent while open"
        ))),
    }
}

/// The fields of the plan's changes that `case` does not hold.
fn unheld_fields(case: &Case, plan: &CasePlan) -> Vec<Field> {
    plan.field_changes()
        .filter(|d| !plan::case_holds(case, d))
        .map(|d| d.field)
        .collect()
}

/// A request that went wrong; a call refused for the configured API flavour was never
/// taken by the server, and is recorded as skipped.
fn failure(e: &ApiError) -> NotApplied {
    match e {
        ApiError::WrongFlavor { .. } => NotApplied {
            halts: true,
            ..NotApplied::skipped(e.to_string())
        },
        _ => NotApplied::failed(e.to_string(), e.http_status()),
    }
}

/// The server answered with the case: does it hold what was sent?
fn holds(case: &Case, plan: &CasePlan) -> DecisionResult {
    let missing = unheld_fields(case, plan);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(NotApplied::failed(
            format!(
                "the server accepted the update but the case does not hold the new {}",
                missing
                    .iter()
                    .map(|f| f.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None,
        ))
    }
}
