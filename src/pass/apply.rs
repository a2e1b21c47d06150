//! Stage: send the plan, case by case with bounded concurrency, each case read just before
//! its update; nothing is sent once the pass must stop (shutdown, lease lost, audit
//! unwritable, deadline, a flavour the server refuses).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;

use super::error::PassError;
use super::options::Step;
use super::run::Run;
use super::send::{NotApplied, apply_case};
use super::settle;
use crate::audit::{NewEvent, Outcome, Settled, row};
use crate::plan::{self, CasePlan, DecisionId};
use crate::stellar::Client;

/// Cases read at once before sending, per request in flight: the longest a read waits for
/// its update is this many round trips.
const WAVE_PER_REQUEST: usize = 8;

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

/// Sends every case's update with bounded concurrency, each wave of cases read in one
/// request just before it is sent; outcome rows are written by one writer as they come,
/// each naming its planned row by `seq_of`.
pub(super) async fn send(
    run: &Run<'_>,
    plans: &[CasePlan],
    seq_of: HashMap<DecisionId, i64>,
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
        client: ctx.client.clone(),
        tx,
        seq_of,
        rule_hash: run.hashes(),
        run_id: run.run_id.clone(),
        cancel: run.opts.cancel.clone(),
        audit_broken,
        wrong_flavor: std::sync::OnceLock::new(),
        deadline,
        comment_changes: ctx.settings.comment_changes,
        audit: ctx.audit.clone(),
        read_by_ticket: AtomicBool::new(true),
    });
    let total = work.len() as u64;
    let mut done = 0;
    let in_flight = ctx.settings.max_in_flight.max(1);
    // The next wave's read overlaps the end of this one's updates.
    let wave = in_flight * WAVE_PER_REQUEST;
    let (reader, sender) = (apply.clone(), apply.clone());
    // Boxed: the compiler cannot prove the combined stream `Send` otherwise.
    let sends = futures::stream::iter(work)
        .chunks(wave)
        .then(move |w| {
            let apply = reader.clone();
            async move { apply.read_wave(w).await }
        })
        .flat_map(futures::stream::iter)
        .map(move |(case, p, fresh)| sender.clone().apply(case, p, fresh))
        .buffer_unordered(in_flight)
        .boxed();
    let results: Vec<Vec<(DecisionId, Outcome)>> = sends
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
    Ok(Applied {
        outcomes: results.into_iter().flatten().collect(),
        error,
        interrupted: run.opts.cancelled(),
    })
}

/// What sending one case's changes needs, shared by the sends in flight.
struct Applier {
    client: Client,
    tx: tokio::sync::mpsc::Sender<Vec<NewEvent>>,
    seq_of: HashMap<DecisionId, i64>,
    rule_hash: HashMap<String, String>,
    run_id: String,
    cancel: Option<Arc<AtomicBool>>,
    audit_broken: Arc<AtomicBool>,
    /// Set by the first update refused for the configured flavour: nothing more is sent.
    wrong_flavor: std::sync::OnceLock<String>,
    /// `daemon.pass_timeout_secs` after the pass began: nothing is sent after it.
    deadline: tokio::time::Instant,
    comment_changes: bool,
    /// The log, to ask whether this process still holds its lease before each send.
    audit: crate::audit::AuditStore,
    /// Cleared when the server does not answer a read by ticket numbers with the cases
    /// asked for: the rest of the pass reads each case alone.
    read_by_ticket: AtomicBool,
}

/// A case's [`plan::stamp`] as its wave read it, and when the read was asked for.
struct Fresh {
    stamp: Option<String>,
    asked: tokio::time::Instant,
}

/// A wave's read older than this when a case's update is due (retries, a slow server) is
/// repeated for that case alone.
const FRESH_FOR: std::time::Duration = std::time::Duration::from_secs(1);

impl Applier {
    /// Reads a wave of cases about to be sent in one listing request by ticket number
    /// (`ticket_id=1,2,3`), so each update needs no read of its own. A case the answer
    /// lacks (no ticket number, a server that ignores the filter) is read alone by
    /// [`Applier::apply`].
    async fn read_wave<'p>(
        &self,
        wave: Vec<(usize, &'p CasePlan)>,
    ) -> Vec<(usize, &'p CasePlan, Option<Fresh>)> {
        let tickets: Vec<i64> = wave
            .iter()
            .filter(|(_, p)| needs_read(p))
            .filter_map(|(_, p)| p.ticket_id)
            .collect();
        let mut fresh: HashMap<String, Fresh> = HashMap::new();
        if tickets.len() > 1 && self.read_by_ticket.load(Ordering::Relaxed) && self.stop().is_none()
        {
            let asked = tokio::time::Instant::now();
            match self.client.cases_by_ticket(&tickets).await {
                Ok(cases) => {
                    let wanted: std::collections::HashSet<&str> =
                        wave.iter().map(|(_, p)| p.case_id.as_str()).collect();
                    fresh = cases
                        .iter()
                        .filter(|c| wanted.contains(c.id.as_str()))
                        .map(|c| {
                            let stamp = plan::stamp(c);
                            (c.id.clone(), Fresh { stamp, asked })
                        })
                        .collect();
                    if fresh.is_empty() {
                        tracing::info!(
                            "the server answered a read by ticket numbers with none of the cases asked for; reading each case alone"
                        );
                        self.read_by_ticket.store(false, Ordering::Relaxed);
                    }
                }
                Err(e) => {
                    tracing::info!(error = %e, "cannot read cases by ticket numbers; reading each case alone");
                    self.read_by_ticket.store(false, Ordering::Relaxed);
                }
            }
        }
        wave.into_iter()
            .map(|(i, p)| {
                let f = fresh.remove(&p.case_id);
                (i, p, f)
            })
            .collect()
    }

    /// Whether the case changed since it was listed, from its read in the wave (if recent)
    /// or else read now: a case someone changed is not sent what was decided on the old one (the
    /// next pass decides again).
    async fn changed_since_listed(&self, p: &CasePlan, fresh: Option<Fresh>) -> Option<NotApplied> {
        if !needs_read(p) {
            return None;
        }
        let now = match fresh.filter(|f| f.asked.elapsed() <= FRESH_FOR) {
            Some(f) => f.stamp,
            None => match self.client.get_case(&p.case_id).await {
                Ok(case) => plan::stamp(&case),
                Err(e) => {
                    return Some(NotApplied::failed(
                        format!("not sent: cannot read the case before sending ({e})"),
                        e.http_status(),
                    ));
                }
            },
        };
        (now != p.stamp).then(|| {
            NotApplied::skipped(
                "not sent: the case changed since it was listed; the next pass decides again",
            )
        })
    }

    /// Why nothing may be sent now, if so.
    fn stop(&self) -> Option<NotApplied> {
        if self.audit_broken.load(Ordering::SeqCst) {
            Some(NotApplied::failed(
                "not sent: the audit log cannot be written",
                None,
            ))
        } else if self
            .cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::SeqCst))
        {
            // Not a failure: nothing was sent, and the next pass plans it again.
            Some(NotApplied::skipped(
                "not sent: casewarden is shutting down; the next pass plans it again",
            ))
        } else if self.audit.lease_lost() {
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

    /// Sends (or, once shutdown began, does not send) one case's update and hands the
    /// outcome rows to the audit writer; returns the outcome of each decision it settled.
    /// `case` is the plan's place in the pass (see [`DecisionId`]); `fresh`, the case as
    /// its wave read it, if it did.
    async fn apply(
        self: Arc<Self>,
        case: usize,
        p: &CasePlan,
        fresh: Option<Fresh>,
    ) -> Vec<(DecisionId, Outcome)> {
        let stop = match self.stop() {
            Some(why) => Some(why),
            None => self.changed_since_listed(p, fresh).await,
        };
        // Checked last, right before the request: the read-back above may have waited
        // while this process was paused past its lease.
        let stop = stop.or_else(|| self.audit.lease_lost().then(lease_lost));
        let outcomes = if let Some(why) = stop {
            p.decisions
                .iter()
                .enumerate()
                .filter(|(_, d)| d.is_planned())
                .map(|(i, _)| (i, Err(why.clone())))
                .collect()
        } else {
            let outcomes = apply_case(&self.client, p, self.comment_changes, &self.run_id).await;
            if let Some((_, Err(n))) = outcomes
                .iter()
                .find(|(_, r)| r.as_ref().is_err_and(|n| n.halts))
            {
                let _ = self.wrong_flavor.set(n.why.clone());
            }
            outcomes
        };
        let events: Vec<NewEvent> = outcomes
            .iter()
            .map(|(di, result)| {
                let d = &p.decisions[*di];
                let settled = match result {
                    Ok(()) => Settled::applied(),
                    Err(n) => Settled {
                        outcome: n.outcome,
                        error: Some(n.why.clone()),
                        http_status: n.status,
                    },
                };
                let hash = self.rule_hash.get(&d.rule).map_or("", String::as_str);
                let planned = self.seq_of.get(&DecisionId {
                    case,
                    decision: *di,
                });
                row::outcome(&self.run_id, hash, p, d, planned.copied(), settled)
            })
            .collect();
        let _ = self.tx.send(events).await;
        outcomes
            .into_iter()
            .map(|(decision, r)| {
                let outcome = r.map_or_else(|n| n.outcome, |()| Outcome::Applied);
                (DecisionId { case, decision }, outcome)
            })
            .collect()
    }
}

/// A plan whose field changes wait on the case being as listed (a comment alone does not).
fn needs_read(p: &CasePlan) -> bool {
    p.stamp.is_some() && p.field_changes().next().is_some()
}

fn lease_lost() -> NotApplied {
    NotApplied::skipped(
        "not sent: this process no longer holds the audit log's lease (another replica leads); the leader decides again",
    )
}
