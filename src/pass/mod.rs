//! One pass, as a pipeline of typed stages:
//!
//! ```text
//! fetch ─► evaluate ─► plan ──► record ──► apply ──► settle
//! (a page   (rules, on  (guard,   (write-    (read,     (outcome rows,
//!  at a      all cores)  budget)   ahead)     then send) the report)
//!  time)
//! ```
//!
//! The server's cases are synced into the mirror first; then each page of the mirror is
//! read and evaluated on all cores while the page before it is planned. Every change is committed
//! to the audit log as `planned` before its request goes out, and its outcome after the
//! answer. What a pass does is its [`Work`], chosen up front.

use std::time::Duration;

use tracing::Instrument;

mod apply;
mod comment;
mod error;
mod evaluate;
mod fetch;
mod options;
mod plan;
mod reconcile;
mod record;
mod remember;
mod report;
mod run;
mod send;
mod settings;
mod settle;
mod stats;
mod sync;

pub use error::PassError;
pub use options::{Hook, PageHook, PassOptions, Progress, Step, Work};
pub use reconcile::{Reconciled, reconcile};
pub use record::clash_text;
pub use report::{PassReport, PassStatus};
pub use settings::{PassContext, PassSettings};
pub use stats::RuleStats;

use crate::audit::{ClaimError, PassTotals};
use crate::rules::RuleSet;
use evaluate::Evaluated;
use fetch::Fetch;
use plan::{Planned, Planning};
use report::Ran;
use run::Run;

/// One pass under the audit store's one-writer claim, waiting up to `wait` for it: the
/// first pass of the process settles what a dead holder (or a lost answer) left, then the
/// pass runs, then the claim is released. Err: another process holds it.
pub async fn run_claimed(
    ctx: &PassContext,
    set: &RuleSet,
    opts: &PassOptions,
    wait: Duration,
) -> Result<PassReport, ClaimError> {
    with_claim(ctx, wait, async || run_pass(ctx, set, opts).await).await
}

/// Runs `work` under the audit store's one-writer claim, after settling what an earlier
/// process left open: nothing else passes on this store meanwhile.
pub async fn with_claim<T>(
    ctx: &PassContext,
    wait: Duration,
    work: impl AsyncFnOnce() -> T,
) -> Result<T, ClaimError> {
    let claim = ctx.audit.claim(wait).await?;
    if claim.first
        && let Err(e) = reconcile(ctx, claim.previous.as_ref()).await
    {
        tracing::error!(error = %e, "cannot settle the changes of an earlier pass; they stay open and are not re-sent");
    }
    let out = work().await;
    claim.release().await;
    Ok(out)
}

/// A new pass's id: when it started, and a random tail.
fn new_run_id() -> String {
    format!(
        "{}-{:06x}",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
        fastrand::u32(..0x100_0000)
    )
}

/// A pass that could not reach its server (no answer, the key refused), recorded as a pass
/// that stopped on that error, under the one-writer claim (waiting up to `wait`): `status`,
/// the report and the live view show it. Not recorded when the claim is held elsewhere.
pub async fn record_unreachable(
    ctx: &PassContext,
    set: &RuleSet,
    opts: &PassOptions,
    error: crate::stellar::ApiError,
    wait: Duration,
) -> PassReport {
    let run = Run::new(ctx, set, opts, new_run_id());
    let ran = Ran {
        error: Some(error.into()),
        ..Ran::default()
    };
    let report = PassReport::build(&run, ran);
    let claim = match ctx.audit.claim(wait).await {
        Ok(claim) => claim,
        Err(e) => {
            tracing::warn!(error = %e, "the pass that could not reach its server is not recorded");
            return report;
        }
    };
    let started = ctx
        .audit
        .start_pass(&run.run_id, &opts.trigger, &set.fingerprint, run.dry_run)
        .await;
    let report = match started {
        Ok(()) => close(&run, report).await,
        Err(e) => {
            tracing::error!(error = %e, "cannot record the pass that could not reach its server");
            report
        }
    };
    claim.release().await;
    report
}

/// Runs one pass with `set`'s rules and records it.
pub async fn run_pass(ctx: &PassContext, set: &RuleSet, opts: &PassOptions) -> PassReport {
    let run = Run::new(ctx, set, opts, new_run_id());
    let span = tracing::info_span!("pass", pass_id = %run.run_id, dry_run = run.dry_run);
    async {
        let ran = stages(&run).await;
        if let Some(e) = &ran.error {
            tracing::error!(error = %e, "pass stopped early");
        }
        close(&run, PassReport::build(&run, ran)).await
    }
    .instrument(span)
    .await
}

/// fetch -> evaluate -> plan -> record -> apply -> settle, as far as the pass gets.
async fn stages(run: &Run<'_>) -> Ran {
    let mut ran = Ran::default();
    let started = run.ctx.audit.start_pass(
        &run.run_id,
        &run.opts.trigger,
        &run.set.fingerprint,
        run.dry_run,
    );
    if let Err(e) = started.await {
        ran.error = Some(e.into());
        return ran;
    }
    if let Err(e) = record::rule_texts(run).await {
        ran.error = Some(e.into());
        return ran;
    }
    if run.actors.is_empty() {
        return ran;
    }
    let deadline = tokio::time::Instant::now() + run.ctx.settings.pass_timeout;
    let mut planned = match run.opts.work.given() {
        Some(given) => plan::given(run, given),
        None => match plan_listing(run).await {
            Ok(planned) => planned,
            Err((planned, error)) => {
                ran.interrupted = error.is_none();
                ran.error = error;
                ran.planned = Some(planned);
                return ran;
            }
        },
    };
    match record::clashes(run, std::mem::take(&mut planned.clashes)).await {
        Ok(new) => planned.clashes = new,
        Err(e) => {
            ran.error = Some(e.into());
            ran.planned = Some(planned);
            return ran;
        }
    }
    let plans = std::mem::take(&mut planned.plans);
    record::customers(run, &plans).await;
    let halts = record::halts(run, &plans, &planned.rules).await;
    ran.planned = Some(planned);
    if let Err(e) = halts {
        ran.error = Some(e.into());
        return ran;
    }
    let (mut recorded, written) = record::intent(run, plans).await;
    if let Err(e) = written {
        ran.error = Some(e.into());
    } else if !run.dry_run {
        let seq_of = std::mem::take(&mut recorded.seq_of);
        let summary_of = std::mem::take(&mut recorded.summary_of);
        match apply::send(run, &recorded.plans, seq_of, summary_of, deadline).await {
            Ok(applied) => ran.applied = Some(applied),
            Err(e) => ran.error = Some(e),
        }
    }
    // A pass that stopped on an error reports what it counted, not its plans.
    if ran.error.is_some() {
        recorded.plans.clear();
    }
    ran.recorded = Some(recorded);
    ran
}

/// fetch -> evaluate -> plan, a page at a time; the budget is shared once every page was
/// planned. Err: what was counted before something failed (Some: planning could not start, a
/// page could not be listed, evaluated or recorded) or shutdown began (None; once every
/// page was listed, the whole pass's plan is still made, for its counts and warnings).
async fn plan_listing(run: &Run<'_>) -> Result<Planned, (Planned, Option<PassError>)> {
    let mut planning = Planning::start(run)
        .await
        .map_err(|e| (Planned::default(), Some(e.into())))?;
    let mut fetch = match Fetch::start(run, planning.env()).await {
        Ok(fetch) => fetch,
        Err(e) => return Err((planning.abandon(), Some(e.into()))),
    };
    // Users read lazily by `planning.add` (an email to assign) are not needed to evaluate,
    // so a page may be evaluated before the one before it is planned.
    let mut ahead = fetch
        .next(run)
        .map(|p| evaluate::start(run, planning.env(), p));
    let listed = async {
        while let Some(job) = ahead.take() {
            let page = job.await?;
            fetch.remember(page.evaluated.iter().filter_map(Evaluated::quiet));
            ahead = fetch
                .next(run)
                .map(|p| evaluate::start(run, planning.env(), p));
            planning.listed(&page);
            record::unreadable(run, &page.unparsable).await?;
            let evaluated = evaluate::with_activities(run, planning.env(), page.evaluated).await?;
            planning.add(run, evaluated).await?;
        }
        Ok::<_, PassError>(())
    }
    .await;
    // A page read after a failure is not planned; its reading (and page hook) ends first.
    if let Some(job) = ahead.take() {
        let _ = job.await;
    }
    fetch.finish().await;
    match listed {
        Err(e) => Err((planning.abandon(), Some(e))),
        Ok(()) if fetch.cut_short => Err((planning.abandon(), None)),
        Ok(()) if run.opts.cancelled() => Err((planning.finish(run), None)),
        Ok(()) => Ok(planning.finish(run)),
    }
}

/// Records the rules' errors and the end of the pass, and reads the chain head.
async fn close(run: &Run<'_>, mut report: PassReport) -> PassReport {
    record::rule_errors(run, &report.rules).await;
    let totals = PassTotals {
        cases_seen: report.cases_seen as i64,
        planned: report.rules.iter().map(|r| r.planned as i64).sum(),
        applied: report.applied as i64,
        failed: report.failed as i64,
        skipped: report.skipped as i64,
        status: report.status.to_string(),
        error: report.error.clone(),
    };
    // A `once` that ends next leaves the file holding what the pass merged.
    run.ctx.mirror.flush().await;
    let audit = &run.ctx.audit;
    if let Err(e) = audit.finish_pass(&run.run_id, &totals).await {
        tracing::error!(error = %e, "cannot record the end of the pass");
        report.audit_failed = true;
    }
    if let Ok((rows, head)) = audit.head().await {
        tracing::info!(log_rows = rows, chain_head = %head, status = %report.status, cases = report.cases_seen, remembered = report.cases_remembered, applied = report.applied, failed = report.failed, "pass finished");
        report.chain_head = head;
    }
    report
}
