//! How one rule fared in a pass: what each stage counted for it.

use super::run::Run;

/// How one rule fared in a pass.
#[derive(Debug, Clone, Default)]
pub struct RuleStats {
    pub name: String,
    /// Cases the rule was evaluated on.
    pub seen: usize,
    /// Cases its query selected that an exempt or snooze tag kept it off.
    pub exempt: usize,
    /// Cases it wanted to change.
    pub matched: usize,
    pub planned: usize,
    pub applied: usize,
    pub failed: usize,
    pub skipped: usize,
    pub errors: usize,
    /// The first error of the pass: where and what.
    pub first_error: Option<String>,
    /// Distinct errors logged this pass (the same message on many cases is logged once).
    pub logged_errors: usize,
    pub deferred: usize,
    /// Why the blast-radius guard halted it, if it did.
    pub halted: Option<String>,
    /// Customers (`cust_id`) the guard halted it for, with why, while it ran for the others.
    pub tenant_halts: Vec<(String, String)>,
}

/// A count of nothing yet for each actor of the pass, in its order.
pub(super) fn zeroed(run: &Run<'_>) -> Vec<RuleStats> {
    run.actors
        .iter()
        .map(|a| RuleStats {
            name: a.name.clone(),
            ..RuleStats::default()
        })
        .collect()
}
