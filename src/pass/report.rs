//! The pass report: how each rule fared and how the pass ended, built once from what the
//! stages returned.

use super::apply::Applied;
use super::error::PassError;
use super::plan::Planned;
use super::record::Recorded;
use super::run::Run;
use super::settle;
use super::stats::{self, RuleStats};
use crate::plan::CasePlan;

/// How a pass ended, as the summary, the `passes` table and `/healthz` say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PassStatus {
    #[default]
    Ok,
    DryRun,
    BudgetExhausted,
    FailedChanges,
    /// A rule was halted by the guard or failed on some case; the others ran.
    Degraded,
    Interrupted,
    Error,
}

impl PassStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PassStatus::Ok => "ok",
            PassStatus::DryRun => "dry-run",
            PassStatus::BudgetExhausted => "budget-exhausted",
            PassStatus::FailedChanges => "failed-changes",
            PassStatus::Degraded => "degraded",
            PassStatus::Interrupted => "interrupted",
            PassStatus::Error => "error",
        }
    }

    /// The pass did not get through its work (a failed change is not this).
    pub fn is_broken(self) -> bool {
        matches!(self, PassStatus::Error | PassStatus::Interrupted)
    }
}

impl std::fmt::Display for PassStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The result of a pass, for the summary and the exit code.
#[derive(Debug, Clone, Default)]
pub struct PassReport {
    pub run_id: String,
    /// The server the pass ran on (config instance name).
    pub instance: String,
    pub dry_run: bool,
    pub cases_seen: usize,
    /// Of those, the cases counted from their remembered verdicts, not evaluated again.
    pub cases_remembered: usize,
    pub cases_unparsable: usize,
    pub rules: Vec<RuleStats>,
    /// The plans that were (or in a dry run, would be) sent, in order.
    pub plans: Vec<CasePlan>,
    pub applied: usize,
    pub failed: usize,
    pub skipped: usize,
    pub deferred_changes: usize,
    pub budget_exhausted: bool,
    /// Cut short by shutdown.
    pub interrupted: bool,
    pub status: PassStatus,
    pub chain_head: String,
    /// A failure that stopped the pass early (listing failed, audit unwritable).
    pub error: Option<String>,
    /// The audit log could not be written (the pass stopped, or could not be closed).
    pub audit_failed: bool,
    /// Values another automation set back, seen for the first time this pass.
    pub clashes: Vec<crate::plan::CaseClash>,
    /// Field changes per customer (`cust_id`): applied, failed, skipped.
    pub by_tenant: std::collections::BTreeMap<String, [usize; 3]>,
    /// The people its plans' assignee changes name, by user id, with their emails, for
    /// printing (filled by the command that prints them).
    pub people: std::collections::BTreeMap<String, String>,
}

/// What the stages of a pass returned, as far as it got.
#[derive(Debug, Default)]
pub(super) struct Ran {
    pub planned: Option<Planned>,
    pub recorded: Option<Recorded>,
    pub applied: Option<Applied>,
    /// Shutdown began before the plan was recorded.
    pub interrupted: bool,
    pub error: Option<PassError>,
}

impl PassReport {
    /// Some change failed, the pass stopped, or a rule was halted or errored (exit 1).
    pub fn has_failures(&self) -> bool {
        self.failed > 0 || self.error.is_some() || self.rule_trouble()
    }

    /// A rule was halted by the guard or failed on some case.
    pub fn rule_trouble(&self) -> bool {
        self.rules
            .iter()
            .any(|r| r.halted.is_some() || !r.tenant_halts.is_empty() || r.errors > 0)
    }

    /// The report of a pass from its stages' results.
    pub(super) fn build(run: &Run<'_>, ran: Ran) -> PassReport {
        let mut planned = ran.planned.unwrap_or_default();
        // Planning that could not start counted nothing: every rule is listed at zero.
        if planned.rules.is_empty() {
            planned.rules = stats::zeroed(run);
        }
        let applied = ran.applied.unwrap_or_default();
        let mut report = PassReport {
            run_id: run.run_id.clone(),
            instance: run.ctx.instance.clone(),
            dry_run: run.dry_run,
            cases_seen: planned.cases_seen,
            cases_remembered: planned.cases_remembered,
            cases_unparsable: planned.unparsable,
            rules: planned.rules,
            deferred_changes: planned.deferred_changes,
            clashes: std::mem::take(&mut planned.clashes),
            budget_exhausted: planned.budget_exhausted,
            interrupted: ran.interrupted || applied.interrupted,
            audit_failed: matches!(ran.error, Some(PassError::Audit(_))),
            error: ran.error.map(|e| e.to_string()).or(applied.error.clone()),
            ..PassReport::default()
        };
        if let Some(rec) = ran.recorded {
            report.add_recorded(run, rec, &applied);
        }
        for r in report.rules.iter().filter(|r| r.errors > r.logged_errors) {
            tracing::warn!(rule = %r.name, errors = r.errors, "rule failed on {} case(s) this pass; {} distinct error(s) logged above", r.errors, r.logged_errors);
        }
        report.status = report.status_now();
        report
    }

    /// Adds the recorded decisions and their outcomes.
    fn add_recorded(&mut self, run: &Run<'_>, rec: Recorded, applied: &Applied) {
        for (stats, (planned, skipped)) in self
            .rules
            .iter_mut()
            .zip(rec.planned.iter().zip(&rec.skipped))
        {
            stats.planned += planned;
            stats.skipped += skipped;
            self.skipped += skipped;
        }
        for (t, n) in rec.skipped_by_tenant {
            self.by_tenant.entry(t).or_default()[2] += n;
        }
        let index_of = |name: &str| run.actor(name).map(|(i, _)| i);
        let tally = settle::count(&rec.plans, &applied.outcomes, index_of, &mut self.rules);
        self.applied += tally.applied;
        self.failed += tally.failed;
        self.skipped += tally.skipped;
        for (t, counts) in tally.by_tenant {
            let row = self.by_tenant.entry(t).or_default();
            for (sum, n) in row.iter_mut().zip(counts) {
                *sum += n;
            }
        }
        self.plans = rec.plans;
    }

    /// How the pass ended, worst first.
    fn status_now(&self) -> PassStatus {
        if self.error.is_some() {
            PassStatus::Error
        } else if self.interrupted {
            PassStatus::Interrupted
        } else if self.failed > 0 {
            PassStatus::FailedChanges
        } else if self.rule_trouble() {
            PassStatus::Degraded
        } else if self.budget_exhausted {
            PassStatus::BudgetExhausted
        } else if self.dry_run {
            PassStatus::DryRun
        } else {
            PassStatus::Ok
        }
    }
}
