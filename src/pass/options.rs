//! What a pass is asked to do ([`Work`], chosen up front) and the hooks it reports through.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::plan::CasePlan;
use crate::stellar::Case;

/// What a pass does; the stages read it, never a flag of their own.
#[derive(Debug, Clone, Default)]
pub enum Work {
    /// List, plan and send (a dry run when `daemon.dry_run` is set).
    #[default]
    Live,
    /// List and plan, record the plan as a dry run, send nothing (`once --dry-run`, whose
    /// `--out` writes the plans to a file for review).
    DryRun,
    /// Exactly these case plans, made by a person's review (`apply PLAN.json`) or by
    /// `revert`: no listing, no guard and no budget, the review took their place; `dry_run`
    /// records them without sending (`apply --dry-run`).
    Given {
        plans: Arc<Vec<CasePlan>>,
        dry_run: bool,
    },
}

impl Work {
    /// Nothing is sent, whatever the settings say.
    pub fn is_dry_run(&self) -> bool {
        match self {
            Work::Live => false,
            Work::DryRun => true,
            Work::Given { dry_run, .. } => *dry_run,
        }
    }

    /// The plans a person reviewed, if the pass applies given plans.
    pub fn given(&self) -> Option<&[CasePlan]> {
        match self {
            Work::Given { plans, .. } => Some(plans),
            _ => None,
        }
    }
}

/// Per-pass choices: what to do, which rules, what triggered it.
#[derive(Debug, Clone, Default)]
pub struct PassOptions {
    pub work: Work,
    /// Rule names to run; empty = all enabled rules.
    pub only: Vec<String>,
    pub trigger: String,
    /// Set on shutdown: no new page is fetched and no new request is sent; requests
    /// already in flight finish and are recorded.
    pub cancel: Option<Arc<AtomicBool>>,
    /// Told how far listing and applying have got (a progress bar on a terminal).
    pub progress: Option<Progress>,
    /// Given every page of cases as listed (`once --save-cases`).
    pub on_page: Option<PageHook>,
}

impl PassOptions {
    pub(super) fn tell(&self, step: Step) {
        if let Some(p) = &self.progress {
            (p.0)(&step);
        }
    }

    pub(super) fn cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::SeqCst))
    }
}

/// A callback of a pass (progress, listed pages), called on the pass's task or, for pages,
/// on the thread that reads them (in page order): it must be quick.
pub struct Hook<A: ?Sized>(pub Arc<dyn Fn(&A) + Send + Sync>);

impl<A: ?Sized> Clone for Hook<A> {
    fn clone(&self) -> Self {
        Hook(self.0.clone())
    }
}

impl<A: ?Sized> std::fmt::Debug for Hook<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hook")
    }
}

/// Given every page of cases as listed.
pub type PageHook = Hook<[Case]>;
/// Told how far a pass has got.
pub type Progress = Hook<Step>;

/// How far a pass has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Cases listed so far to bring the mirror up to date (`full`: every case).
    Synced { cases: u64, full: bool },
    /// Cases handed to the rules so far, of the mirror's total.
    Listed { cases: u64, total: Option<u64> },
    /// Cases whose changes were sent (or settled without sending), of those with work.
    Applied { cases: u64, total: u64 },
}
