//! Stage: record each outcome as it comes (one writer, in batches), and count what the
//! pass's outcomes add up to per rule and customer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::stats::RuleStats;
use crate::audit::{AuditError, AuditStore, NewEvent, Outcome};
use crate::plan::{CasePlan, DecisionId};

/// Outcome rows are committed at most this long after they arrive, this many at a time.
/// Each commit rewrites the index pages its rows touch (case ids are random), so a few
/// large transactions cost far less than one per answer; an outcome lost to a crash in
/// between leaves its `planned` row, which the next pass settles by reading the case.
const OUTCOME_WINDOW: Duration = Duration::from_millis(250);
const OUTCOME_ROWS: usize = 5000;

/// Collects outcomes for up to [`OUTCOME_WINDOW`] into one transaction. After a failed
/// write no further request is sent (the senders check `audit_broken`); what was in
/// flight stays `planned` for the next pass to settle.
pub(super) async fn write_outcomes(
    audit: AuditStore,
    mut rx: tokio::sync::mpsc::Receiver<Vec<NewEvent>>,
    audit_broken: Arc<AtomicBool>,
) -> Result<(), AuditError> {
    let mut failure = None;
    while let Some(mut batch) = rx.recv().await {
        let until = tokio::time::Instant::now() + OUTCOME_WINDOW;
        while batch.len() < OUTCOME_ROWS {
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(mut more)) => batch.append(&mut more),
                _ => break,
            }
        }
        if failure.is_none()
            && let Err(e) = audit.append(&batch).await
        {
            tracing::error!(error = %e, "cannot record outcomes; no further change is sent this pass");
            audit_broken.store(true, Ordering::SeqCst);
            failure = Some(e);
        }
    }
    failure.map_or(Ok(()), Err)
}

/// The pass's outcomes added up: per rule, in total, per customer.
#[derive(Debug, Default)]
pub(super) struct Tally {
    pub applied: usize,
    pub failed: usize,
    pub skipped: usize,
    /// Field changes per customer: applied, failed, skipped.
    pub by_tenant: BTreeMap<String, [usize; 3]>,
}

/// Adds `outcomes` to `rules` (by the actor of each decision) and returns the totals.
pub(super) fn count(
    plans: &[CasePlan],
    outcomes: &[(DecisionId, Outcome)],
    index_of: impl Fn(&str) -> Option<usize>,
    rules: &mut [RuleStats],
) -> Tally {
    let mut tally = Tally::default();
    for (id, outcome) in outcomes {
        let plan = &plans[id.case];
        let Some(ri) = index_of(&plan.decisions[id.decision].rule) else {
            continue;
        };
        let stats = &mut rules[ri];
        let (by_rule, total, column) = match outcome {
            Outcome::Applied => (&mut stats.applied, &mut tally.applied, 0),
            Outcome::Skipped => (&mut stats.skipped, &mut tally.skipped, 2),
            _ => (&mut stats.failed, &mut tally.failed, 1),
        };
        *by_rule += 1;
        *total += 1;
        if let Some(t) = &plan.tenant {
            tally.by_tenant.entry(t.clone()).or_default()[column] += 1;
        }
    }
    tally
}
