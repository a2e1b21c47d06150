//! Stage: send the plan, case by case with bounded concurrency, each case read by id just
//! before its update (a listing may trail writes by seconds) and each field sent only while
//! it still holds what the plan saw; nothing is sent once the pass must stop (shutdown,
//! lease lost or about to end, audit unwritable, deadline, a flavour the server refuses).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;

use super::error::PassError;
use super::options::Step;
use super::run::Run;
use super::send::{DecisionResult, NotApplied, Sent, apply_case, overridden};
use super::settle;
use crate::audit::{NewEvent, Outcome, Settled, row};
use crate::plan::{CasePlan, DecisionId, FieldNow};
use crate::stellar::{Case, Client};

/// What sending the plan came to.
#[derive(Debug, Default)]
pub(super) struct Applied {
    /// The outcome of every decision it settled.
    pub outcomes: Vec<(DecisionId, Outcome)>,
    /// Why sending stopped for the rest of the pass (the server refused the flavour).
    pub error: Option<String>,
    /// Shutdown began while sending.
    pub interrupted: bool,
}

/// Sends every case's update with bounded concurrency, each case read right before it is
/// sent; outcome rows are written by one writer as they come, each naming its planned row
/// by `seq_of` (a summary comment's, by `summary_of`).
pub(super) async fn send(
    run: &Run<'_>,
    plans: &[CasePlan],
    seq_of: HashMap<DecisionId, i64>,
    summary_of: HashMap<usize, i64>,
    deadline: tokio::time::Instant,
) -> Result<Applied, PassError> {
    let ctx = run.ctx;
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<NewEvent>>(256);
    let audit_broken = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(settle::write_outcomes(
        ctx.audit.clone(),
        rx,
        audit_broken.clone(),
    ));
    let work: Vec<(usize, &CasePlan)> = plans
        .iter()
        .enumerate()
        .filter(|(_, p)| p.has_work())
        .collect();
    let apply = Arc::new(Applier {
        run,
        client: ctx.writer(),
        tx,
        seq_of,
        summary_of,
        audit_broken,
        wrong_flavor: std::sync::OnceLock::new(),
        deadline,
    });
    let total = work.len() as u64;
    let mut done = 0;
    let in_flight = ctx.settings.max_in_flight.max(1);
    let sender = apply.clone();
    // Boxed: the compiler cannot prove the combined stream `Send` otherwise.
    let sends = futures::stream::iter(work)
        .map(move |(case, p)| sender.clone().apply(case, p))
        .buffer_unordered(in_flight)
        .boxed();
    let results: Vec<CaseSent> = sends
        .inspect(|_| {
            done += 1;
            run.opts.tell(Step::Applied { cases: done, total });
        })
        .collect()
        .await;
    let error = apply.wrong_flavor.get().cloned();
    if let Some(e) = &error {
        tracing::error!(error = %e, "no further change is sent this pass");
    }
    drop(apply);
    writer.await??;
    let (outcomes, latest): (Vec<_>, Vec<_>) = results.into_iter().unzip();
    // The mirror learns the cases as this pass left them: its next delta need not list
    // casewarden's own changes.
    let latest: Vec<Case> = latest.into_iter().flatten().collect();
    ctx.mirror.lock().await.learn(&latest).await;
    Ok(Applied {
        outcomes: outcomes.into_iter().flatten().collect(),
        error,
        interrupted: run.opts.cancelled(),
    })
}

/// One case's outcomes, and the case as the server last showed it.
type CaseSent = (Vec<(DecisionId, Outcome)>, Option<Case>);

/// What sending one case's changes needs, shared by the sends in flight.
struct Applier<'r> {
    run: &'r Run<'r>,
    /// The server's client, every write passed by the fence first.
    client: Client,
    tx: tokio::sync::mpsc::Sender<Vec<NewEvent>>,
    seq_of: HashMap<DecisionId, i64>,
    summary_of: HashMap<usize, i64>,
    audit_broken: Arc<AtomicBool>,
    /// Set by the first update refused for the configured flavour: nothing more is sent.
    wrong_flavor: std::sync::OnceLock<String>,
    /// `daemon.pass_timeout_secs` after the pass began: nothing is sent after it.
    deadline: tokio::time::Instant,
}

impl Applier<'_> {
    /// Why nothing may be sent now, if so.
    fn stop(&self) -> Option<NotApplied> {
        if self.audit_broken.load(Ordering::SeqCst) {
            Some(NotApplied::failed(
                "not sent: the audit log cannot be written",
                None,
            ))
        } else if self.run.opts.cancelled() {
            // Not a failure: nothing was sent, and the next pass plans it again.
            Some(NotApplied::skipped(
                "not sent: casewarden is shutting down; the next pass plans it again",
            ))
        } else if self.run.ctx.audit.lease_lost() {
            Some(lease_lost())
        } else if tokio::time::Instant::now() > self.deadline {
            Some(NotApplied::skipped(
                "not sent: the pass ran past daemon.pass_timeout_secs",
            ))
        } else {
            self.wrong_flavor
                .get()
                .map(|e| NotApplied::skipped(format!("not sent: {e}")))
        }
    }

    /// Reads the case by id (real time, unlike the listing), then sends what still applies
    /// to it; the fence is checked again after the read, which may have waited while this
    /// process was paused.
    async fn read_then_send(&self, p: &CasePlan) -> Sent {
        let mut read = None;
        let (live, mut held) = match p.field_changes().next() {
            None => (p.clone(), Vec::new()),
            Some(_) => match self.client.get_case(&p.case_id).await {
                Ok(now) => {
                    let live = still_to_send(p, &now);
                    read = Some(now);
                    live
                }
                Err(e) => {
                    let why = format!("not sent: cannot read the case right before sending ({e})");
                    return not_sent(p, &NotApplied::failed(why, e.http_status()));
                }
            },
        };
        if let Some(why) = self.stop() {
            return not_sent(p, &why);
        }
        let comment_changes = self.run.ctx.settings.comment_changes;
        let mut sent = apply_case(&self.client, &live, comment_changes, &self.run.run_id).await;
        if let Some((_, Err(n))) =
            (sent.decisions.iter()).find(|(_, r)| r.as_ref().is_err_and(|n| n.halts))
        {
            let _ = self.wrong_flavor.set(n.why.clone());
        }
        sent.decisions.append(&mut held);
        sent.latest = sent.latest.or(read);
        sent
    }

    /// Sends (or, once the pass must stop, does not send) one case's update and hands the
    /// outcome rows to the audit writer; returns the outcome of each decision it settled.
    /// `case` is the plan's place in the pass (see [`DecisionId`]).
    async fn apply(self: Arc<Self>, case: usize, p: &CasePlan) -> CaseSent {
        let sent = match self.stop() {
            Some(why) => not_sent(p, &why),
            None => self.read_then_send(p).await,
        };
        let run_id = &self.run.run_id;
        let mut events: Vec<NewEvent> = (sent.decisions.iter())
            .map(|(di, result)| {
                let d = &p.decisions[*di];
                let hash = self.run.hash_of(&d.rule);
                let planned = self.seq_of.get(&DecisionId {
                    case,
                    decision: *di,
                });
                row::outcome(run_id, hash, p, d, planned.copied(), settled(result))
            })
            .collect();
        if let Some(&seq) = self.summary_of.get(&case) {
            let summary = sent.summary.unwrap_or_else(|| {
                Err(NotApplied::skipped(
                    "not posted: no change of the case was sent",
                ))
            });
            events.push(row::summary_outcome(run_id, p, seq, settled(&summary)));
        }
        let _ = self.tx.send(events).await;
        let outcomes = (sent.decisions.into_iter())
            .map(|(decision, r)| {
                let outcome = r.map_or_else(|n| n.outcome, |_| Outcome::Applied);
                (DecisionId { case, decision }, outcome)
            })
            .collect();
        (outcomes, sent.latest)
    }
}

/// Every planned decision of `p`, and its summary comment, not sent for `why`.
fn not_sent(p: &CasePlan, why: &NotApplied) -> Sent {
    Sent {
        decisions: (p.decisions.iter().enumerate())
            .filter(|(_, d)| d.is_planned())
            .map(|(i, _)| (i, Err(why.clone())))
            .collect(),
        summary: Some(Err(why.clone())),
        latest: None,
    }
}

/// What an outcome row says of `result`.
fn settled(result: &DecisionResult) -> Settled {
    match result {
        Ok(note) => Settled::applied(note.clone()),
        Err(n) => Settled {
            outcome: n.outcome,
            error: Some(n.why.clone()),
            http_status: n.status,
            note: None,
        },
    }
}

/// `p` as it still applies to `now`, the case read just before sending: a field that holds
/// the new value already, or a third value someone set since the plan saw it, is not sent
/// (and a comment explaining only such fields neither); returns the outcomes of those.
fn still_to_send(p: &CasePlan, now: &Case) -> (CasePlan, Vec<(usize, DecisionResult)>) {
    let mut live = p.clone();
    let mut screened = Vec::new();
    for d in live.decisions.iter_mut().filter(|d| d.is_planned()) {
        d.skipped = match d.now_in(now) {
            FieldNow::Old => continue,
            FieldNow::New => Some("not sent: the case already holds it (someone made the same change since the plan saw it)".into()),
            FieldNow::Other(value) => Some(overridden(d.field, d.old.as_deref(), &value)),
        };
        screened.push(d.rule.clone());
    }
    live.skip_unexplained_comments(
        |rule| screened.iter().any(|r| r == rule),
        "not sent: the changes this comment explains were made or overridden by someone else",
    );
    let held = (p.decisions.iter().zip(&live.decisions).enumerate())
        .filter(|(_, (was, is))| was.is_planned() && !is.is_planned())
        .map(|(i, (_, is))| {
            let why = is.skipped.clone().unwrap_or_default();
            (i, Err(NotApplied::skipped(why)))
        })
        .collect();
    (live, held)
}

fn lease_lost() -> NotApplied {
    NotApplied::skipped(
        "not sent: this process no longer holds the audit log's lease (another replica leads); the leader decides again",
    )
}
